//! The `network` stage: bring up `lo` and the first Ethernet interface, configure it by DHCP
//! (QEMU's slirp, a dstack VMM's bridge), write `/etc/resolv.conf`, and keep the lease for the
//! stub resolver ([`Network::resolve`]) the KMS and registry clients use. There is no glibc
//! NSS in the static init: names resolve through `init_core::net::dns` over UDP.
//!
//! The stage is required when the configuration needs the network (`kms_urls` is not empty):
//! then no interface or no lease stops the boot. Otherwise a missing interface or lease is
//! logged and the boot goes on offline.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use init_core::net::Ipv4Config;
use init_core::net::dhcp::{self, Client, MessageType, Reply};
use init_core::net::dns::{self, DnsError};
use init_core::net::endpoint::Host;
use init_sys::net::{NetControl, NetError, bind_to_device};

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
    #[error("resolve {name}: no DNS server (no DHCP lease)")]
    NoDnsServer { name: String },
    #[error("resolve {name}")]
    DnsQuery {
        name: String,
        #[source]
        source: DnsError,
    },
    #[error("resolve {name}: no answer from {servers:?} within {timeout:?}")]
    DnsTimeout {
        name: String,
        servers: Vec<Ipv4Addr>,
        timeout: Duration,
    },
    #[error("DNS socket for {name}")]
    DnsSocket {
        name: String,
        #[source]
        source: io::Error,
    },
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

/// Runs the stage: `lo` up, then DHCP on the first Ethernet interface. `Ok(None)` when there
/// is no interface (the caller decides whether that is fatal).
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
impl Network {
    /// The addresses of `host`: a literal as is, a name through the lease's DNS servers (each
    /// tried in turn, 3 rounds, 2 s per query).
    #[allow(dead_code)] // until the KMS stage (issue 5) calls it
    pub(crate) fn resolve(&self, host: &Host) -> Result<Vec<IpAddr>, NetworkStageError> {
        resolve_with(host, &self.config.dns_servers, Duration::from_secs(2), 3)
    }
}

/// [`Network::resolve`] with explicit servers and timing (tests use a loopback server).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn resolve_with(
    host: &Host,
    servers: &[Ipv4Addr],
    per_query: Duration,
    rounds: u32,
) -> Result<Vec<IpAddr>, NetworkStageError> {
    let name = match host {
        Host::Ip(ip) => return Ok(vec![*ip]),
        Host::Name(name) if name == "localhost" => {
            return Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        }
        Host::Name(name) => name,
    };
    resolve_name(name, servers, dns::PORT, per_query, rounds)
}

#[cfg_attr(not(test), allow(dead_code))]
fn resolve_name(
    name: &str,
    servers: &[Ipv4Addr],
    port: u16,
    per_query: Duration,
    rounds: u32,
) -> Result<Vec<IpAddr>, NetworkStageError> {
    if servers.is_empty() {
        return Err(NetworkStageError::NoDnsServer {
            name: name.to_owned(),
        });
    }
    let socket_error = |source| NetworkStageError::DnsSocket {
        name: name.to_owned(),
        source,
    };
    let socket =
        UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).map_err(socket_error)?;
    let mut buf = [0u8; dns::MAX_UDP_RESPONSE + 1];
    let mut id_bytes = [0u8; 2];
    for _ in 0..rounds {
        for server in servers {
            getrandom_fill(&mut id_bytes).map_err(NetworkStageError::Random)?;
            let id = u16::from_ne_bytes(id_bytes);
            let query = dns::query(name, id).map_err(|source| NetworkStageError::DnsQuery {
                name: name.to_owned(),
                source,
            })?;
            let to = SocketAddr::V4(SocketAddrV4::new(*server, port));
            if socket.send_to(&query, to).is_err() {
                continue;
            }
            let deadline = Instant::now() + per_query;
            while let Some(left) = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
            {
                socket.set_read_timeout(Some(left)).map_err(socket_error)?;
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    break;
                };
                // Only the server asked may answer; other datagrams are ignored.
                if from != to {
                    continue;
                }
                match dns::parse_response(buf.get(..len).unwrap_or_default(), id, name) {
                    Ok(addresses) => return Ok(addresses.into_iter().map(IpAddr::V4).collect()),
                    // A definitive answer from the server: do not ask the others.
                    Err(source @ (DnsError::Rcode { .. } | DnsError::NoAddress { .. })) => {
                        return Err(NetworkStageError::DnsQuery {
                            name: name.to_owned(),
                            source,
                        });
                    }
                    // Wrong id (a late answer) or garbage: keep waiting.
                    Err(_) => {}
                }
            }
        }
    }
    Err(NetworkStageError::DnsTimeout {
        name: name.to_owned(),
        servers: servers.to_vec(),
        timeout: per_query * rounds,
    })
}

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

    /// A DNS server on loopback answering one query per datagram with `answer(query)`.
    fn dns_server(answer: impl Fn(&[u8]) -> Vec<u8> + Send + 'static) -> u16 {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((len, from)) = socket.recv_from(&mut buf) {
                let reply = answer(&buf[..len]);
                let _ = socket.send_to(&reply, from);
            }
        });
        port
    }

    fn query_id(query: &[u8]) -> u16 {
        u16::from_be_bytes([query[0], query[1]])
    }

    #[test]
    fn names_resolve_against_a_loopback_server() {
        let port =
            dns_server(|q| dns::response(query_id(q), "kms.test", 0, &[(1, vec![10, 0, 2, 2])]));
        let got = resolve_name(
            "kms.test",
            &[Ipv4Addr::LOCALHOST],
            port,
            Duration::from_secs(2),
            1,
        )
        .unwrap();
        assert_eq!(got, [IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2))]);
    }

    #[test]
    fn nxdomain_is_a_typed_error_and_silence_times_out() {
        let port = dns_server(|q| dns::response(query_id(q), "kms.test", 3, &[]));
        let err = resolve_name(
            "kms.test",
            &[Ipv4Addr::LOCALHOST],
            port,
            Duration::from_secs(2),
            1,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                NetworkStageError::DnsQuery {
                    source: DnsError::Rcode { rcode: 3 },
                    ..
                }
            ),
            "{err:?}"
        );
        // A server that answers with the wrong id is ignored until the timeout.
        let port =
            dns_server(|q| dns::response(query_id(q) ^ 1, "kms.test", 0, &[(1, vec![1, 2, 3, 4])]));
        let err = resolve_name(
            "kms.test",
            &[Ipv4Addr::LOCALHOST],
            port,
            Duration::from_millis(200),
            2,
        )
        .unwrap_err();
        assert!(
            matches!(err, NetworkStageError::DnsTimeout { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn literals_and_localhost_need_no_server() {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(
            resolve_with(&Host::Ip(ip), &[], Duration::ZERO, 0).unwrap(),
            [ip]
        );
        assert!(matches!(
            resolve_with(&Host::Name("kms.test".into()), &[], Duration::ZERO, 1),
            Err(NetworkStageError::NoDnsServer { .. })
        ));
    }
}
