//! Per-service networking, planned: which bridges exist (one per compose network in use, the
//! `default` network for services that name none), their subnets and gateways, each
//! service's network namespace, veth pairs and addresses, the `/etc/hosts` of each container
//! and the published ports to forward. Pure: PID 1 executes the plan with rtnetlink and
//! nftables (`init_core::net::{rtnl, nft}`) and passes each namespace to the runtime spec.
//!
//! Subnets: a network's declared IPv4 `ipam.config[].subnet` (the first one), else the next
//! free `172.30.N.0/24` that overlaps neither the VM's uplink subnet nor a declared one. The
//! gateway (the bridge's address in the VM) is the first host address; static `ipv4_address`
//! entries are taken first, then every other member gets the next free address in start order.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::compose::{App, Protocol, Service};

/// Bridges are `cvmbr0`, `cvmbr1`, … (the nftables rules match the prefix).
pub const BRIDGE_PREFIX: &str = "cvmbr";
/// Where each service's network namespace is bind-mounted (`/run/netns/<service>`).
pub const NETNS_DIR: &str = "/run/netns";

/// Errors of the plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkPlanError {
    /// A declared subnet is not `a.b.c.d/len` with len 8..=30 and a clean network address.
    #[error("network {network}: subnet {subnet:?} is not an IPv4 network a.b.c.d/8..30")]
    ParseSubnet {
        /// Network.
        network: String,
        /// The text.
        subnet: String,
    },
    /// No `172.30.N.0/24` left.
    #[error("no free 172.30.N.0/24 subnet left for network {network}")]
    NoSubnet {
        /// Network.
        network: String,
    },
    /// A static address outside its network, or the network/gateway/broadcast address.
    #[error(
        "service {service}: ipv4_address {address} is not a usable host address of network {network} ({subnet}, gateway {gateway})"
    )]
    StaticAddress {
        /// Service.
        service: String,
        /// Network.
        network: String,
        /// The address.
        address: String,
        /// The subnet.
        subnet: String,
        /// The gateway.
        gateway: Ipv4Addr,
    },
    /// Two services ask for one static address.
    #[error("services {first} and {second} both ask for {address} on network {network}")]
    AddressTaken {
        /// Network.
        network: String,
        /// Address.
        address: Ipv4Addr,
        /// First service.
        first: String,
        /// Second service.
        second: String,
    },
    /// The subnet is full.
    #[error("network {network} has no free address left for service {service}")]
    Exhausted {
        /// Network.
        network: String,
        /// Service.
        service: String,
    },
}

/// One bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    /// Compose network name.
    pub network: String,
    /// Interface name (`cvmbr<i>`).
    pub name: String,
    /// Network address.
    pub subnet: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// The bridge's own address (the members' default gateway).
    pub gateway: Ipv4Addr,
    /// `internal: true`: no egress from the VM.
    pub internal: bool,
}

/// A service's interface on one bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Index into [`NetworkPlan::bridges`].
    pub bridge: usize,
    /// The veth end in the VM, enslaved to the bridge (`cv<s>n<k>`).
    pub host_veth: String,
    /// The veth end in the service's namespace (`eth<k>`).
    pub peer: String,
    /// The service's address.
    pub address: Ipv4Addr,
    /// Extra names on this network (`aliases`).
    pub aliases: Vec<String>,
}

/// One service's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceNet {
    /// The bind-mounted nsfs file.
    pub netns: PathBuf,
    /// Interfaces, in the service's network order.
    pub attachments: Vec<Attachment>,
    /// Default route (the first non-internal network's gateway), if any.
    pub gateway: Option<Ipv4Addr>,
}

/// A published port to forward from the VM's uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForward {
    /// Service.
    pub service: String,
    /// tcp/udp.
    pub protocol: Protocol,
    /// The VM address it is published on (the uplink's, or the port's host IP).
    pub daddr: Ipv4Addr,
    /// VM port.
    pub published: u16,
    /// The service's address.
    pub target: Ipv4Addr,
    /// Container port.
    pub port: u16,
}

/// The whole plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkPlan {
    /// Bridges in network-name order.
    pub bridges: Vec<Bridge>,
    /// Services with a namespace of their own (not `network_mode: host`), by name.
    pub services: BTreeMap<String, ServiceNet>,
}

/// The network names `service` joins (`default` when it names none).
fn joined(service: &Service) -> Vec<&str> {
    if service.networks.is_empty() {
        vec!["default"]
    } else {
        service.networks.iter().map(|n| n.name.as_str()).collect()
    }
}

fn parse_subnet(network: &str, text: &str) -> Result<(Ipv4Addr, u8), NetworkPlanError> {
    let err = || NetworkPlanError::ParseSubnet {
        network: network.to_owned(),
        subnet: text.to_owned(),
    };
    let (addr, len) = text.split_once('/').ok_or_else(err)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| err())?;
    let len: u8 = len.parse().map_err(|_| err())?;
    if !(8..=30).contains(&len) || u32::from(addr) & !mask(len) != 0 {
        return Err(err());
    }
    Ok((addr, len))
}

fn mask(len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0)
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let m = mask(a.1.min(b.1));
    u32::from(a.0) & m == u32::from(b.0) & m
}

/// Plans the networks of `app`; `uplink` is the VM's own address and prefix (auto subnets
/// avoid it).
pub fn plan(app: &App, uplink: Option<(Ipv4Addr, u8)>) -> Result<NetworkPlan, NetworkPlanError> {
    let bridged: Vec<&Service> = app.services.iter().filter(|s| !s.network_host).collect();
    let used: BTreeSet<&str> = bridged.iter().flat_map(|s| joined(s)).collect();
    let mut taken: Vec<(Ipv4Addr, u8)> = uplink.into_iter().collect();
    let mut declared = BTreeMap::new();
    for name in &used {
        let subnet = app
            .networks
            .get(*name)
            .and_then(|n| n.subnets.iter().find(|s| !s.contains(':')));
        if let Some(text) = subnet {
            let net = parse_subnet(name, text)?;
            taken.push(net);
            declared.insert(*name, net);
        }
    }
    let mut bridges = Vec::new();
    let mut next_auto = 0u8;
    for (i, name) in used.iter().enumerate() {
        let (subnet, prefix_len) = match declared.get(name) {
            Some(net) => *net,
            None => loop {
                let candidate = (Ipv4Addr::new(172, 30, next_auto, 0), 24);
                if !taken.iter().any(|t| overlaps(*t, candidate)) {
                    taken.push(candidate);
                    break candidate;
                }
                next_auto = next_auto.checked_add(1).ok_or(NetworkPlanError::NoSubnet {
                    network: (*name).to_owned(),
                })?;
            },
        };
        bridges.push(Bridge {
            network: (*name).to_owned(),
            name: format!("{BRIDGE_PREFIX}{i}"),
            subnet,
            prefix_len,
            gateway: Ipv4Addr::from(u32::from(subnet) + 1),
            internal: app.networks.get(*name).is_some_and(|n| n.internal),
        });
    }
    // Static addresses first, so the dynamic ones go around them.
    let mut used_addr: BTreeMap<(usize, Ipv4Addr), &str> = BTreeMap::new();
    for service in &bridged {
        for n in &service.networks {
            let Some(text) = &n.ipv4_address else {
                continue;
            };
            let Some(b) = bridges.iter().position(|b| b.network == n.name) else {
                continue;
            };
            let bridge = &bridges[b];
            let address: Option<Ipv4Addr> = text.parse().ok();
            let usable = address.filter(|a| {
                let (a, net) = (u32::from(*a), u32::from(bridge.subnet));
                let broadcast = net | !mask(bridge.prefix_len);
                a & mask(bridge.prefix_len) == net
                    && a != net
                    && a != broadcast
                    && a != u32::from(bridge.gateway)
            });
            let address = usable.ok_or_else(|| NetworkPlanError::StaticAddress {
                service: service.name.clone(),
                network: n.name.clone(),
                address: text.clone(),
                subnet: format!("{}/{}", bridge.subnet, bridge.prefix_len),
                gateway: bridge.gateway,
            })?;
            if let Some(first) = used_addr.insert((b, address), &service.name) {
                return Err(NetworkPlanError::AddressTaken {
                    network: n.name.clone(),
                    address,
                    first: first.to_owned(),
                    second: service.name.clone(),
                });
            }
        }
    }
    let mut services = BTreeMap::new();
    for (s, service) in app.services.iter().enumerate() {
        if service.network_host {
            continue;
        }
        let mut attachments = Vec::new();
        for (k, name) in joined(service).into_iter().enumerate() {
            let Some(b) = bridges.iter().position(|br| br.network == name) else {
                continue;
            };
            let member = service.networks.iter().find(|n| n.name == name);
            let fixed = member
                .and_then(|n| n.ipv4_address.as_deref())
                .and_then(|t| t.parse::<Ipv4Addr>().ok());
            let address = match fixed {
                Some(a) => a,
                None => {
                    let bridge = &bridges[b];
                    let broadcast = u32::from(bridge.subnet) | !mask(bridge.prefix_len);
                    let free = (u32::from(bridge.gateway) + 1..broadcast)
                        .map(Ipv4Addr::from)
                        .find(|a| !used_addr.contains_key(&(b, *a)))
                        .ok_or_else(|| NetworkPlanError::Exhausted {
                            network: name.to_owned(),
                            service: service.name.clone(),
                        })?;
                    used_addr.insert((b, free), &service.name);
                    free
                }
            };
            attachments.push(Attachment {
                bridge: b,
                host_veth: format!("cv{s}n{k}"),
                peer: format!("eth{k}"),
                address,
                aliases: member.map(|n| n.aliases.clone()).unwrap_or_default(),
            });
        }
        let gateway = attachments
            .iter()
            .map(|a| &bridges[a.bridge])
            .find(|b| !b.internal)
            .map(|b| b.gateway);
        services.insert(
            service.name.clone(),
            ServiceNet {
                netns: PathBuf::from(NETNS_DIR).join(&service.name),
                attachments,
                gateway,
            },
        );
    }
    Ok(NetworkPlan { bridges, services })
}

/// The names a service answers to on a network: its name, container name, host name and the
/// network's aliases.
fn names_of<'a>(service: &'a Service, aliases: &'a [String]) -> Vec<&'a str> {
    let mut names: Vec<&str> = Vec::new();
    let all = std::iter::once(&service.name)
        .chain(&service.container_name)
        .chain(&service.hostname)
        .chain(aliases);
    for n in all {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    names
}

impl NetworkPlan {
    /// The address at which `from` reaches `to`: `to`'s address on the first network they
    /// share; a `network_mode: host` service is the gateway of `from`'s first network (the
    /// VM); from a host-mode service, `to`'s first address (the VM routes to every bridge).
    pub fn address_between(&self, from: &Service, to: &Service) -> Option<(Ipv4Addr, &[String])> {
        let (src, dst) = (self.services.get(&from.name), self.services.get(&to.name));
        match (src, dst) {
            (Some(src), Some(dst)) => src.attachments.iter().find_map(|a| {
                dst.attachments
                    .iter()
                    .find(|d| d.bridge == a.bridge)
                    .map(|d| (d.address, d.aliases.as_slice()))
            }),
            (Some(src), None) => src
                .attachments
                .first()
                .map(|a| (self.bridges[a.bridge].gateway, &[][..])),
            (None, Some(dst)) => dst
                .attachments
                .first()
                .map(|d| (d.address, d.aliases.as_slice())),
            (None, None) => Some((Ipv4Addr::LOCALHOST, &[][..])),
        }
    }

    /// `/etc/hosts` of `service`: localhost, the service's own names on its own address, every
    /// other service it can reach (names and aliases on the shared network), its `links`
    /// aliases, its `extra_hosts`.
    pub fn hosts_file(&self, app: &App, service: &Service) -> String {
        let mut text =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        let mut line = |address: Ipv4Addr, names: &[&str]| {
            if !names.is_empty() {
                text.push_str(&format!("{address}\t{}\n", names.join(" ")));
            }
        };
        for other in &app.services {
            if let Some((address, aliases)) = self.address_between(service, other) {
                line(address, &names_of(other, aliases));
            }
        }
        for link in &service.links {
            let linked = app.service(&link.service);
            if let Some((address, _)) = linked.and_then(|l| self.address_between(service, l))
                && app.service(&link.alias).is_none()
            {
                line(address, &[link.alias.as_str()]);
            }
        }
        for (name, address) in &service.extra_hosts {
            text.push_str(&format!("{address}\t{name}\n"));
        }
        text
    }

    /// The published ports of every bridged service, forwarded from `vm_address` (or the
    /// port's own host IP).
    pub fn forwards(&self, app: &App, vm_address: Ipv4Addr) -> Vec<PortForward> {
        let mut out = Vec::new();
        for service in &app.services {
            let Some(net) = self.services.get(&service.name) else {
                continue;
            };
            let Some(first) = net.attachments.first() else {
                continue;
            };
            for port in &service.ports {
                let daddr = port
                    .host_ip
                    .as_deref()
                    .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                    .filter(|ip| !ip.is_unspecified())
                    .unwrap_or(vm_address);
                out.push(PortForward {
                    service: service.name.clone(),
                    protocol: port.protocol,
                    daddr,
                    published: port.published,
                    target: first.address,
                    port: port.port,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
