//! Executes the workload network plan (`cvm_workload::network`): IP forwarding on, one bridge
//! per compose network with the gateway address, one network namespace per bridged service
//! (`/run/netns/<service>`, joined by the container on every start) with a veth pair per
//! network, the addresses and the default route inside it, and the nftables table `ip cvm`
//! (`init_core::net::nft::workload_ruleset`): DNAT for published ports from the uplink,
//! masquerade for egress, nothing else forwarded into the bridges. Everything through
//! rtnetlink / nfnetlink (`init_sys::netlink`); no `ip` or `nft` binary. Done once, before the
//! first container starts; any failure fails the stage (no service runs half-isolated).

use std::net::Ipv4Addr;

use cvm_workload::compose::{App, Protocol};
use cvm_workload::network::{BRIDGE_PREFIX, NetworkPlan, NetworkPlanError, plan};
use init_core::net::{nft, rtnl};
use init_sys::netlink::{NetlinkError, NetlinkSocket};
use init_sys::netns::{self, NetnsError};
use std::os::fd::AsRawFd as _;

/// The VM's own interface, from the network stage's lease.
#[derive(Debug, Clone)]
pub(crate) struct Uplink {
    pub(crate) interface: String,
    pub(crate) address: Ipv4Addr,
    pub(crate) prefix_len: u8,
}

/// Errors of the network setup.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetSetupError {
    #[error("plan the networks")]
    Plan(#[source] NetworkPlanError),
    #[error("enable IPv4 forwarding")]
    Forwarding(#[source] std::io::Error),
    #[error("{what}")]
    Netlink {
        what: String,
        #[source]
        source: NetlinkError,
    },
    #[error("network namespace of {service}")]
    Netns {
        service: String,
        #[source]
        source: NetnsError,
    },
    #[error("find interface {name}")]
    Index {
        name: String,
        #[source]
        source: nix::Error,
    },
}

struct Requests {
    socket: NetlinkSocket,
    seq: u32,
}

impl Requests {
    fn open(what: &str) -> Result<Self, NetSetupError> {
        Ok(Self {
            socket: NetlinkSocket::route().map_err(|source| NetSetupError::Netlink {
                what: what.to_owned(),
                source,
            })?,
            seq: 0,
        })
    }

    fn send(
        &mut self,
        what: String,
        build: impl FnOnce(u32) -> Vec<u8>,
    ) -> Result<(), NetSetupError> {
        self.seq = self.seq.wrapping_add(1);
        self.socket
            .request(&build(self.seq), 1)
            .map_err(|source| NetSetupError::Netlink { what, source })
    }
}

fn index(name: &str) -> Result<u32, NetSetupError> {
    nix::net::if_::if_nametoindex(name).map_err(|source| NetSetupError::Index {
        name: name.to_owned(),
        source,
    })
}

/// Sets up the networks of `app`; returns the plan (namespaces, hosts files).
pub(crate) fn setup(app: &App, uplink: &Uplink) -> Result<NetworkPlan, NetSetupError> {
    let plan = plan(app, Some((uplink.address, uplink.prefix_len))).map_err(NetSetupError::Plan)?;
    if plan.services.is_empty() {
        return Ok(plan);
    }
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(NetSetupError::Forwarding)?;
    let mut rt = Requests::open("open an rtnetlink socket")?;
    let mut bridge_index = Vec::new();
    for b in &plan.bridges {
        rt.send(format!("create bridge {}", b.name), |s| {
            rtnl::new_bridge(&b.name, s)
        })?;
        let i = index(&b.name)?;
        rt.send(
            format!("address {}/{} on {}", b.gateway, b.prefix_len, b.name),
            |s| rtnl::add_address(i, b.gateway, b.prefix_len, s),
        )?;
        rt.send(format!("bring {} up", b.name), |s| rtnl::set_up(i, None, s))?;
        bridge_index.push(i);
    }
    for (service, net) in &plan.services {
        let ns_err = |source| NetSetupError::Netns {
            service: service.clone(),
            source,
        };
        netns::create(&net.netns).map_err(ns_err)?;
        let fd = netns::open_fd(&net.netns).map_err(ns_err)?;
        for a in &net.attachments {
            rt.send(format!("create veth {} for {service}", a.host_veth), |s| {
                rtnl::new_veth(&a.host_veth, &a.peer, fd.as_raw_fd(), s)
            })?;
            let i = index(&a.host_veth)?;
            let controller = bridge_index.get(a.bridge).copied();
            rt.send(format!("attach {} to its bridge", a.host_veth), |s| {
                rtnl::set_up(i, controller, s)
            })?;
        }
        netns::within(&net.netns, || configure_inside(&plan, service)).map_err(ns_err)??;
        log::info!(
            "workloads: {service}: network namespace {} ({})",
            net.netns.display(),
            net.attachments
                .iter()
                .map(|a| format!("{} {}", plan.bridges[a.bridge].network, a.address))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let bridges: Vec<nft::BridgeNet> = plan
        .bridges
        .iter()
        .map(|b| nft::BridgeNet {
            bridge: b.name.clone(),
            network: b.subnet,
            prefix_len: b.prefix_len,
            internal: b.internal,
        })
        .collect();
    let forwards: Vec<nft::Forward> = plan
        .forwards(app, uplink.address)
        .into_iter()
        .map(|f| nft::Forward {
            iif: None,
            protocol: match f.protocol {
                Protocol::Tcp => 6,
                Protocol::Udp => 17,
            },
            daddr: f.daddr,
            published: f.published,
            target: f.target,
            port: f.port,
        })
        .collect();
    // The dstack-gateway tunnel (set up by the gateway stage before this one): the gateway
    // proxies to the VM's tunnel address, so a port published on the VM's own address is
    // forwarded from the tunnel too (as Docker publishes on every interface).
    let mut forwards = forwards;
    if let Some(tunnel) = interface_ipv4(init_core::gateway::INTERFACE) {
        let extra: Vec<nft::Forward> = forwards
            .iter()
            .filter(|f| f.daddr == uplink.address)
            .map(|f| nft::Forward {
                iif: Some(init_core::gateway::INTERFACE.to_owned()),
                daddr: tunnel,
                ..f.clone()
            })
            .collect();
        forwards.extend(extra);
    }
    let ruleset = nft::workload_ruleset(&uplink.interface, BRIDGE_PREFIX, &bridges, &forwards);
    let (batch, acks) = nft::replace_batch(&ruleset, 1);
    let nf_err = |source| NetSetupError::Netlink {
        what: "install the nftables table ip cvm".to_owned(),
        source,
    };
    NetlinkSocket::netfilter()
        .and_then(|s| s.request(&batch, acks))
        .map_err(nf_err)?;
    log::info!(
        "workloads: {} bridge(s), {} published port(s) forwarded from {}",
        plan.bridges.len(),
        forwards.len(),
        uplink.interface
    );
    Ok(plan)
}

/// Inside a service's namespace: `lo` and each `eth<k>` up with its address, the default route.
fn configure_inside(plan: &NetworkPlan, service: &str) -> Result<(), NetSetupError> {
    let mut rt = Requests::open("open an rtnetlink socket in the service's namespace")?;
    let lo = index("lo")?;
    rt.send(format!("bring lo up for {service}"), |s| {
        rtnl::set_up(lo, None, s)
    })?;
    let Some(net) = plan.services.get(service) else {
        return Ok(());
    };
    for a in &net.attachments {
        let i = index(&a.peer)?;
        let prefix = plan.bridges.get(a.bridge).map_or(24, |b| b.prefix_len);
        rt.send(
            format!("address {} on {} of {service}", a.address, a.peer),
            |s| rtnl::add_address(i, a.address, prefix, s),
        )?;
        rt.send(format!("bring {} of {service} up", a.peer), |s| {
            rtnl::set_up(i, None, s)
        })?;
    }
    if let Some(gw) = net.gateway {
        rt.send(format!("default route via {gw} for {service}"), |s| {
            rtnl::add_default_route(gw, s)
        })?;
    }
    Ok(())
}

/// The first IPv4 address of interface `name`, if it exists.
fn interface_ipv4(name: &str) -> Option<std::net::Ipv4Addr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        (a.interface_name == name)
            .then(|| a.address?.as_sockaddr_in().map(|s| s.ip()))
            .flatten()
    })
}
