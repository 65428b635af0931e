//! The `network` stage: bring up `lo` and the first Ethernet interface, configure it by DHCP
//! (QEMU's slirp, a dstack VMM's bridge), write `/etc/resolv.conf`, and keep the lease; the KMS
//! client resolves names against the lease's DNS servers with cvm-keys' stub resolver
//! (`init_core::net::dns` over UDP; there is no glibc NSS in the static init).
//!
//! The stage is required when the configuration needs the network (`kms_urls` is not empty):
//! then no interface or no lease stops the boot. Otherwise a missing interface or lease is
//! logged and the boot goes on offline.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use init_core::host_share::HostShare;
use init_core::net::Ipv4Config;
use init_core::net::dhcp::{self, Client, MessageType, Reply};
use init_core::results::Record;
use init_sys::net::{NetControl, NetError, bind_to_device};

use crate::results::Results;

/// ARPHRD_ETHER in `/sys/class/net/<if>/type`.
const ETHERNET_TYPE: &str = "1";

/// Errors of the network stage and the resolver.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetworkStageError {
    #[error("configure interface")]
    Interface(#[source] NetError),
    #[error("open the DHCP socket")]
    DhcpSocket(#[source] io::Error),
    #[error("send a DHCP {message:?}")]
    DhcpSend {
        message: MessageType,
        #[source]
        source: io::Error,
    },
    #[error("no DHCP {expected:?} on {interface} within {timeout:?} ({attempts} attempts)")]
    DhcpTimeout {
        interface: String,
        expected: MessageType,
        timeout: Duration,
        attempts: u32,
    },
    #[error("DHCP server {server} refused the request (NAK)")]
    DhcpNak { server: String },
    #[error("DHCP lease")]
    DhcpLease(#[source] dhcp::DhcpError),
    #[error("read random bytes for the DHCP transaction id")]
    Random(#[source] io::Error),
    #[error("write {path}")]
    WriteResolvConf {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no network interface, but kms_urls needs the network")]
    Required,
}

/// Runs the stage for `share` (required when it names KMS URLs); `Ok(None)` offline. Writes
/// the `network` record.
pub(crate) fn run(
    share: &HostShare,
    results: &mut Results,
) -> Result<Option<Network>, NetworkStageError> {
    let required = !share.sys_config.kms_urls.is_empty();
    let mono_us = init_sys::clock::monotonic_us;
    match bring_up(&NetworkOptions::default()) {
        Ok(Some(network)) => {
            let config = &network.config;
            log::info!(
                "network: {} {}/{} via {:?}, dns {:?}, lease {} s",
                network.interface,
                config.address,
                config.prefix_len,
                config.gateway,
                config.dns_servers,
                config.lease_secs
            );
            results.record(&Record::Network {
                interface: network.interface.clone(),
                address: format!("{}/{}", config.address, config.prefix_len),
                gateway: config.gateway.map(|g| g.to_string()).unwrap_or_default(),
                dns: config.dns_servers.iter().map(ToString::to_string).collect(),
                mono_us: mono_us(),
            });
            Ok(Some(network))
        }
        Ok(None) if required => Err(NetworkStageError::Required),
        Ok(None) => {
            log::info!("network: no Ethernet interface; offline");
            results.record(&Record::Network {
                interface: "none".into(),
                address: String::new(),
                gateway: String::new(),
                dns: Vec::new(),
                mono_us: mono_us(),
            });
            Ok(None)
        }
        Err(e) if required => Err(e),
        Err(e) => {
            log::warn!(
                "network: {} (offline; nothing in the configuration needs it)",
                init_core::error_chain::one_line(&e)
            );
            Ok(None)
        }
    }
}

/// Knobs of the stage (paths are overridable for tests).
#[derive(Debug, Clone)]
pub(crate) struct NetworkOptions {
    pub(crate) sys_class_net: PathBuf,
    pub(crate) resolv_conf: PathBuf,
    /// Per-attempt wait for a DHCP reply; doubled each retry up to 8 s.
    pub(crate) dhcp_first_wait: Duration,
    /// Total DHCP budget per phase (DISCOVER→OFFER, REQUEST→ACK).
    pub(crate) dhcp_budget: Duration,
    /// Host name sent in DHCP option 12.
    pub(crate) hostname: String,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        Self {
            sys_class_net: PathBuf::from("/sys/class/net"),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            dhcp_first_wait: Duration::from_secs(1),
            dhcp_budget: Duration::from_secs(30),
            hostname: "cvm".to_owned(),
        }
    }
}

/// The configured network: interface and lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Network {
    pub(crate) interface: String,
    pub(crate) config: Ipv4Config,
}

/// The Ethernet interfaces under `sys_class_net`, sorted by name (`eth0` first with
/// `net.ifnames=0`, as dstack boots).
pub(crate) fn ethernet_interfaces(sys_class_net: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(sys_class_net) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name != "lo")
        .filter(|name| {
            fs::read_to_string(sys_class_net.join(name).join("type"))
                .is_ok_and(|t| t.trim() == ETHERNET_TYPE)
        })
        .collect();
    names.sort();
    names
}

/// `lo` up, then DHCP on the first Ethernet interface. `Ok(None)` when there is no interface
/// ([`run`] decides whether that is fatal).
pub(crate) fn bring_up(options: &NetworkOptions) -> Result<Option<Network>, NetworkStageError> {
    let control = NetControl::open().map_err(NetworkStageError::Interface)?;
    control.set_up("lo").map_err(NetworkStageError::Interface)?;
    let Some(interface) = ethernet_interfaces(&options.sys_class_net)
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    control
        .set_up(&interface)
        .map_err(NetworkStageError::Interface)?;
    let mac = control
        .hardware_address(&interface)
        .map_err(NetworkStageError::Interface)?;
    let client = Client::new(mac, random_u32().map_err(NetworkStageError::Random)?)
        .with_hostname(&options.hostname);
    let config = run_dhcp(&client, &interface, options)?;
    control
        .set_address(&interface, config.address, config.netmask())
        .map_err(NetworkStageError::Interface)?;
    if let Some(gateway) = config.gateway {
        control
            .add_default_route(&interface, gateway)
            .map_err(NetworkStageError::Interface)?;
    }
    write_resolv_conf(&options.resolv_conf, &config.dns_servers)?;
    Ok(Some(Network { interface, config }))
}

fn random_u32() -> io::Result<u32> {
    let mut bytes = [0u8; 4];
    getrandom_fill(&mut bytes)?;
    Ok(u32::from_ne_bytes(bytes))
}

fn getrandom_fill(buf: &mut [u8]) -> io::Result<()> {
    use std::io::Read;
    fs::File::open("/dev/urandom")?.read_exact(buf)
}

fn run_dhcp(
    client: &Client,
    interface: &str,
    options: &NetworkOptions,
) -> Result<Ipv4Config, NetworkStageError> {
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, dhcp::CLIENT_PORT))
        .map_err(NetworkStageError::DhcpSocket)?;
    socket
        .set_broadcast(true)
        .map_err(NetworkStageError::DhcpSocket)?;
    bind_to_device(&socket, interface).map_err(NetworkStageError::Interface)?;
    let server = SocketAddrV4::new(Ipv4Addr::BROADCAST, dhcp::SERVER_PORT);

    let offer = exchange(
        &socket,
        server,
        &client.discover(),
        MessageType::Discover,
        MessageType::Offer,
        client,
        interface,
        options,
    )?;
    let ack = exchange(
        &socket,
        server,
        &client.request(&offer),
        MessageType::Request,
        MessageType::Ack,
        client,
        interface,
        options,
    )?;
    ack.to_config().map_err(NetworkStageError::DhcpLease)
}

/// Sends `message` and waits for a reply of type `expected` (or a NAK), retransmitting with
/// exponential backoff within the phase budget. Replies for other clients or transactions and
/// malformed packets are skipped.
#[allow(clippy::too_many_arguments)]
fn exchange(
    socket: &UdpSocket,
    server: SocketAddrV4,
    message: &[u8],
    kind: MessageType,
    expected: MessageType,
    client: &Client,
    interface: &str,
    options: &NetworkOptions,
) -> Result<Reply, NetworkStageError> {
    let deadline = Instant::now() + options.dhcp_budget;
    let mut wait = options.dhcp_first_wait;
    let mut attempts = 0u32;
    let mut buf = vec![0u8; dhcp::MAX_MESSAGE_LEN + 1];
    while Instant::now() < deadline {
        attempts += 1;
        socket
            .send_to(message, server)
            .map_err(|source| NetworkStageError::DhcpSend {
                message: kind,
                source,
            })?;
        let attempt_end = (Instant::now() + wait).min(deadline);
        while let Some(left) = attempt_end
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            socket
                .set_read_timeout(Some(left))
                .map_err(NetworkStageError::DhcpSocket)?;
            let Ok((len, _from)) = socket.recv_from(&mut buf) else {
                break;
            };
            let Ok(reply) = client.parse_reply(buf.get(..len).unwrap_or_default()) else {
                continue;
            };
            if reply.message_type == MessageType::Nak {
                return Err(NetworkStageError::DhcpNak {
                    server: reply
                        .server_id
                        .map_or_else(|| "?".to_owned(), |s| s.to_string()),
                });
            }
            if reply.message_type == expected {
                return Ok(reply);
            }
        }
        wait = (wait * 2).min(Duration::from_secs(8));
    }
    Err(NetworkStageError::DhcpTimeout {
        interface: interface.to_owned(),
        expected,
        timeout: options.dhcp_budget,
        attempts,
    })
}

fn write_resolv_conf(path: &Path, servers: &[Ipv4Addr]) -> Result<(), NetworkStageError> {
    let mut text = String::from("# written by cvm-init from the DHCP lease\n");
    for server in servers.iter().take(3) {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|source| NetworkStageError::WriteResolvConf {
            path: path.to_owned(),
            source,
        })?;
    }
    fs::write(path, text).map_err(|source| NetworkStageError::WriteResolvConf {
        path: path.to_owned(),
        source,
    })
}

// The KMS and registry clients (issues 5 and 7) call the resolver; until the KMS stage lands
// only the tests do.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethernet_interfaces_are_found_in_sysfs_order() {
        let dir = tempfile::tempdir().unwrap();
        for (name, ty) in [
            ("lo", "772"),
            ("eth1", "1"),
            ("eth0", "1"),
            ("wg0", "65534"),
        ] {
            fs::create_dir(dir.path().join(name)).unwrap();
            fs::write(dir.path().join(name).join("type"), format!("{ty}\n")).unwrap();
        }
        assert_eq!(ethernet_interfaces(dir.path()), ["eth0", "eth1"]);
        assert!(ethernet_interfaces(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn resolv_conf_lists_the_lease_servers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/resolv.conf");
        write_resolv_conf(&path, &[Ipv4Addr::new(10, 0, 2, 3)]).unwrap();
        assert!(
            fs::read_to_string(&path)
                .unwrap()
                .ends_with("nameserver 10.0.2.3\n")
        );
    }
}
