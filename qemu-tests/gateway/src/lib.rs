//! An INSECURE dstack-gateway for QEMU tests: `Gateway.RegisterCvm` over RA-TLS, and a real
//! WireGuard peer in userspace on the host side.
//!
//! * RPC (`POST /prpc/Gateway.RegisterCvm?json`, pRPC JSON): TLS with a server certificate
//!   issued by the test KMS's app CA of the gateway's app id (app-id extension, as a dstack
//!   gateway's), client certificates required and chained to the KMS root (a guest presents
//!   its `SignCert` chain); the app id is read from the client leaf's app-id extension. The
//!   reply carries this gateway's WireGuard key, its tunnel address [`GATEWAY_IP`], the
//!   endpoint the guest reaches it at, and the guest's address [`CLIENT_IP`].
//! * WireGuard: `boringtun`'s Noise state machine ([`boringtun::noise::Tunn`], no TUN device)
//!   on a loopback UDP socket (the guest reaches it as `10.0.2.2:<port>` through QEMU user
//!   networking), and `smoltcp` as the TCP/IP stack over the decrypted packets, so
//!   [`TestGateway::http_get`] fetches a page from the guest through the tunnel without root
//!   or kernel WireGuard on the host. A registration with a new client key replaces the peer;
//!   the same key again (a refresh) keeps the session. Each registration records the client
//!   leaf certificate it presented.
//!
//! Reuses `test-kms`'s keys (app CA), request reader and JSON reply writer.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use cvm_keys::ratls::{CertSpec, RaTlsCert};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use test_kms::KmsKeys;

/// The gateway's tunnel address.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 4, 0, 1);
/// The address every registering guest gets.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 4, 0, 2);
const MAX_INBOUND: usize = 1024;
const BUF: usize = 65_536;

/// Errors of starting the gateway and of fetching through the tunnel.
#[derive(Debug, thiserror::Error)]
pub enum GatewayServerError {
    #[error("issue the gateway's certificate")]
    Certificate(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("configure TLS")]
    Tls(#[source] rustls::Error),
    #[error("configure client authentication")]
    ClientAuth(#[source] rustls::server::VerifierBuilderError),
    #[error("{action}")]
    Socket {
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("through the tunnel: {what}")]
    Tunnel { what: String },
}

/// One accepted `RegisterCvm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The app id of the client certificate (hex).
    pub app_id: String,
    /// The guest's WireGuard public key.
    pub client_public_key: [u8; 32],
    /// The request's `port_policy`, as sent.
    pub port_policy: serde_json::Value,
    /// The client leaf certificate presented (DER): a renewed certificate differs.
    pub client_cert: Vec<u8>,
}

/// One request, accepted or not (status, reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP status answered.
    pub status: u16,
    /// Why, for a refusal.
    pub detail: String,
}

/// What the peer thread and the fetcher share.
struct WgState {
    tunn: Option<Tunn>,
    /// The registered guest key the Noise state is for.
    client_key: Option<[u8; 32]>,
    peer: Option<SocketAddr>,
    inbound: VecDeque<Vec<u8>>,
    handshakes: u32,
}

struct Shared {
    config: Arc<ServerConfig>,
    guest_endpoint: String,
    secret: StaticSecret,
    registrations: Mutex<Vec<Registration>>,
    requests: Mutex<Vec<RequestRecord>>,
    wg: Mutex<WgState>,
    udp: UdpSocket,
    next_index: Mutex<u32>,
}

impl Shared {
    fn wg(&self) -> MutexGuard<'_, WgState> {
        self.wg
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running test gateway.
pub struct TestGateway {
    shared: Arc<Shared>,
    https_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for TestGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestGateway")
            .field("https_addr", &self.https_addr)
            .finish_non_exhaustive()
    }
}

fn server_config(keys: &KmsKeys, app_id: &[u8]) -> Result<ServerConfig, GatewayServerError> {
    let cert_err = |e: cvm_keys::ratls::RaTlsError| GatewayServerError::Certificate(Box::new(e));
    let (app_ca_pem, app_ca) = keys
        .app_ca(app_id)
        .map_err(|e| GatewayServerError::Certificate(Box::new(e)))?;
    let leaf = CertSpec {
        subject: "test-gateway",
        alt_names: vec!["10.0.2.2".into(), "127.0.0.1".into(), "localhost".into()],
        app_id: Some(app_id),
        server_auth: true,
        ..CertSpec::default()
    }
    .signed_by(&app_ca)
    .map_err(cert_err)?;
    let der = |pem: &str| {
        cvm_keys::kms::pem_block(pem, "CERTIFICATE")
            .map(CertificateDer::from)
            .ok_or_else(|| GatewayServerError::Tunnel {
                what: "a certificate is not PEM".into(),
            })
    };
    let chain = vec![
        CertificateDer::from(leaf.cert_der.clone()),
        der(&app_ca_pem)?,
        der(&keys.root_ca_pem)?,
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        leaf.key_der().map_err(cert_err)?.expose().clone(),
    ));
    let provider = cvm_keys::transport::crypto_provider();
    let mut roots = RootCertStore::empty();
    roots
        .add(der(&keys.root_ca_pem)?)
        .map_err(GatewayServerError::Tls)?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(GatewayServerError::ClientAuth)?;
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(GatewayServerError::Tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(GatewayServerError::Tls)
}

fn random_secret() -> Result<StaticSecret, GatewayServerError> {
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").map_err(|source| GatewayServerError::Socket {
            action: "open /dev/urandom",
            source,
        })?,
        &mut bytes,
    )
    .map_err(|source| GatewayServerError::Socket {
        action: "read /dev/urandom",
        source,
    })?;
    Ok(StaticSecret::from(bytes))
}

/// Starts a gateway with a fresh WireGuard key: RPC on `https`, WireGuard on `udp`, telling
/// guests the WireGuard endpoint `guest_endpoint` (e.g. `10.0.2.2:<udp port>`). Its server
/// certificate carries `app_id`, issued by `keys`' app CA for it.
pub fn start(
    keys: &KmsKeys,
    app_id: &[u8],
    https: TcpListener,
    udp: UdpSocket,
    guest_endpoint: &str,
) -> Result<TestGateway, GatewayServerError> {
    let sock = |action| move |source| GatewayServerError::Socket { action, source };
    let https_addr = https.local_addr().map_err(sock("read the RPC address"))?;
    udp.set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(sock("set the UDP timeout"))?;
    let shared = Arc::new(Shared {
        config: Arc::new(server_config(keys, app_id)?),
        guest_endpoint: guest_endpoint.to_owned(),
        secret: random_secret()?,
        registrations: Mutex::new(Vec::new()),
        requests: Mutex::new(Vec::new()),
        wg: Mutex::new(WgState {
            tunn: None,
            client_key: None,
            peer: None,
            inbound: VecDeque::new(),
            handshakes: 0,
        }),
        udp,
        next_index: Mutex::new(1),
    });
    let stop = Arc::new(AtomicBool::new(false));
    https
        .set_nonblocking(true)
        .map_err(sock("make the RPC listener non-blocking"))?;
    let accept = {
        let shared = Arc::clone(&shared);
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("test-gateway-accept".into())
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match https.accept() {
                        Ok((tcp, _)) => {
                            let shared = Arc::clone(&shared);
                            let _ = std::thread::Builder::new()
                                .name("test-gateway-conn".into())
                                .spawn(move || serve_connection(&shared, tcp));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
            .map_err(sock("spawn the accept thread"))?
    };
    let pump = {
        let shared = Arc::clone(&shared);
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("test-gateway-wg".into())
            .spawn(move || pump(&shared, &stop))
            .map_err(sock("spawn the WireGuard thread"))?
    };
    Ok(TestGateway {
        shared,
        https_addr,
        stop,
        threads: vec![accept, pump],
    })
}

fn serve_connection(shared: &Shared, tcp: TcpStream) {
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(30)));
    let Ok(conn) = ServerConnection::new(Arc::clone(&shared.config)) else {
        return;
    };
    let mut stream = StreamOwned::new(conn, tcp);
    let Some((path, body)) = test_kms::read_request(&mut stream) else {
        return;
    };
    let leaf = stream
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec());
    let method = path.split('?').next().unwrap_or("");
    let (status, reply) = if method.trim_end_matches('/') != "/prpc/Gateway.RegisterCvm" {
        (404, Err(format!("no such method {method}")))
    } else {
        match register(shared, leaf.as_deref(), &body) {
            Ok(json) => (200, Ok(json)),
            Err(reason) => (400, Err(reason)),
        }
    };
    let (json, detail) = match reply {
        Ok(json) => (json, String::new()),
        Err(reason) => (serde_json::json!({ "error": reason }), reason),
    };
    eprintln!("test-gateway: RegisterCvm {status} {detail}");
    if let Ok(mut r) = shared.requests.lock() {
        r.push(RequestRecord { status, detail });
    }
    test_kms::write_json_response(&mut stream, status, &json);
}

fn register(
    shared: &Shared,
    leaf: Option<&[u8]>,
    body: &[u8],
) -> Result<serde_json::Value, String> {
    let leaf = leaf.ok_or("no client certificate")?;
    let cert = RaTlsCert::parse(leaf).map_err(|e| format!("client certificate: {e}"))?;
    let app_id = cert
        .app_id
        .ok_or("the client certificate carries no app id")?;
    let request: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("request JSON: {e}"))?;
    let key = request["client_public_key"]
        .as_str()
        .and_then(init_core::gateway::decode_key)
        .ok_or("client_public_key is not base64 of 32 bytes")?;
    let index = {
        let mut next = shared
            .next_index
            .lock()
            .map_err(|_| "index lock poisoned".to_owned())?;
        *next = next.wrapping_add(1);
        *next
    };
    {
        let mut wg = shared.wg();
        // The same key again (a refresh) keeps the session, as a kernel WireGuard peer whose
        // key is set again does; a new key replaces the peer.
        if wg.tunn.is_some() && wg.client_key == Some(key) {
            drop(wg);
            return Ok(record_and_reply(shared, &app_id, key, &request, leaf));
        }
        wg.client_key = Some(key);
        wg.tunn = Some(Tunn::new(
            shared.secret.clone(),
            PublicKey::from(key),
            None,
            None,
            index,
            None,
        ));
        wg.peer = None;
        wg.inbound.clear();
    }
    Ok(record_and_reply(shared, &app_id, key, &request, leaf))
}

/// Records an accepted registration and builds its reply.
fn record_and_reply(
    shared: &Shared,
    app_id: &[u8],
    key: [u8; 32],
    request: &serde_json::Value,
    leaf: &[u8],
) -> serde_json::Value {
    if let Ok(mut r) = shared.registrations.lock() {
        r.push(Registration {
            app_id: hex::encode(app_id),
            client_public_key: key,
            port_policy: request["port_policy"].clone(),
            client_cert: leaf.to_vec(),
        });
    }
    serde_json::json!({
        "wg": {
            "client_ip": CLIENT_IP.to_string(),
            "servers": [{
                "pk": init_core::gateway::encode_key(PublicKey::from(&shared.secret).as_bytes()),
                "ip": GATEWAY_IP.to_string(),
                "endpoint": shared.guest_endpoint,
            }],
        },
        "agent": {
            "external_port": 443,
            "internal_port": 8090,
            "domain": "gateway.test",
            "app_address_ns_prefix": "",
        },
        "gateways": [],
    })
}

/// Moves datagrams between the UDP socket and the Noise state: decrypted IPv4 packets go to
/// `inbound`, handshake replies and timers' packets to the peer.
fn pump(shared: &Shared, stop: &AtomicBool) {
    let mut datagram = vec![0u8; BUF];
    let mut out = vec![0u8; BUF];
    let mut last_timers = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if let Ok((len, from)) = shared.udp.recv_from(&mut datagram) {
            let mut wg = shared.wg();
            let state = &mut *wg;
            if let Some(tunn) = state.tunn.as_mut() {
                let mut input: &[u8] = &datagram[..len];
                loop {
                    match tunn.decapsulate(Some(from.ip()), input, &mut out) {
                        TunnResult::WriteToNetwork(packet) => {
                            let _ = shared.udp.send_to(packet, from);
                            state.peer = Some(from);
                            state.handshakes = state.handshakes.saturating_add(1);
                            input = &[];
                        }
                        TunnResult::WriteToTunnelV4(packet, _) => {
                            state.peer = Some(from);
                            if state.inbound.len() < MAX_INBOUND {
                                state.inbound.push_back(packet.to_vec());
                            }
                            break;
                        }
                        TunnResult::Done | TunnResult::Err(_) | TunnResult::WriteToTunnelV6(..) => {
                            break;
                        }
                    }
                }
            }
        }
        if last_timers.elapsed() >= Duration::from_millis(250) {
            last_timers = Instant::now();
            let mut wg = shared.wg();
            let peer = wg.peer;
            if let (Some(tunn), Some(peer)) = (wg.tunn.as_mut(), peer)
                && let TunnResult::WriteToNetwork(packet) = tunn.update_timers(&mut out)
            {
                let _ = shared.udp.send_to(packet, peer);
            }
        }
    }
}

/// smoltcp's view of the tunnel: received packets are the decrypted inbound queue; sent ones
/// are encrypted for the current peer.
struct TunnelDevice<'a> {
    shared: &'a Shared,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a Shared);

impl smoltcp::phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0u8; len];
        let result = f(&mut packet);
        let mut out = vec![0u8; len + 256];
        let mut wg = self.0.wg();
        let peer = wg.peer;
        if let (Some(tunn), Some(peer)) = (wg.tunn.as_mut(), peer)
            && let TunnResult::WriteToNetwork(bytes) = tunn.encapsulate(&packet, &mut out)
        {
            let _ = self.0.udp.send_to(bytes, peer);
        }
        result
    }
}

impl smoltcp::phy::Device for TunnelDevice<'_> {
    type RxToken<'b>
        = Rx
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b>
    where
        Self: 'b;

    fn receive(
        &mut self,
        _: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.shared.wg().inbound.pop_front()?;
        Some((Rx(packet), Tx(self.shared)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(Tx(self.shared))
    }

    fn capabilities(&self) -> smoltcp::phy::DeviceCapabilities {
        let mut caps = smoltcp::phy::DeviceCapabilities::default();
        caps.medium = smoltcp::phy::Medium::Ip;
        caps.max_transmission_unit = 1380;
        caps
    }
}

impl TestGateway {
    /// The RPC address on the host.
    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }

    /// Every accepted registration, in order.
    pub fn registrations(&self) -> Vec<Registration> {
        self.shared
            .registrations
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Every request with its status.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// The WireGuard UDP port on the host.
    pub fn udp_port(&self) -> u16 {
        self.shared.udp.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// This gateway's WireGuard public key.
    pub fn wg_public_key(&self) -> [u8; 32] {
        *PublicKey::from(&self.shared.secret).as_bytes()
    }

    /// Whether a WireGuard peer has sent anything (a handshake) since the last registration.
    pub fn peer_seen(&self) -> bool {
        self.shared.wg().peer.is_some()
    }

    /// `GET path` from `CLIENT_IP:port` through the tunnel (HTTP/1.1, `Connection: close`):
    /// the status and body. Waits for the guest's handshake up to `timeout`.
    pub fn http_get(
        &self,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> Result<(u16, String), GatewayServerError> {
        use smoltcp::iface::{Config, Interface, SocketSet};
        use smoltcp::socket::tcp;
        use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
        let fail = |what: String| GatewayServerError::Tunnel { what };
        let deadline = Instant::now() + timeout;
        while !self.peer_seen() {
            if Instant::now() > deadline {
                return Err(fail("no WireGuard handshake from the guest".into()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let start = Instant::now();
        let now = || {
            smoltcp::time::Instant::from_micros(
                i64::try_from(start.elapsed().as_micros()).unwrap_or(i64::MAX),
            )
        };
        let mut device = TunnelDevice {
            shared: &self.shared,
        };
        let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut device, now());
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(GATEWAY_IP), 24));
        });
        let mut sockets = SocketSet::new(Vec::new());
        let socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; BUF]),
            tcp::SocketBuffer::new(vec![0; 4096]),
        );
        let handle = sockets.add(socket);
        sockets
            .get_mut::<tcp::Socket>(handle)
            .connect(iface.context(), (IpAddress::Ipv4(CLIENT_IP), port), 49_152)
            .map_err(|e| fail(format!("connect: {e}")))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {CLIENT_IP}\r\nConnection: close\r\n\r\n");
        let mut sent = false;
        let mut reply = Vec::new();
        loop {
            iface.poll(now(), &mut device, &mut sockets);
            let socket = sockets.get_mut::<tcp::Socket>(handle);
            if !sent && socket.can_send() {
                socket
                    .send_slice(request.as_bytes())
                    .map_err(|e| fail(format!("send: {e}")))?;
                sent = true;
            }
            while socket.can_recv() {
                let _ = socket.recv(|data| {
                    reply.extend_from_slice(data);
                    (data.len(), ())
                });
            }
            if sent && !socket.is_active() {
                break;
            }
            if sent && !socket.may_recv() && !reply.is_empty() {
                socket.close();
            }
            if Instant::now() > deadline {
                return Err(fail(format!(
                    "no complete HTTP reply (state {}, {} bytes)",
                    socket.state(),
                    reply.len()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let text = String::from_utf8_lossy(&reply).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| fail(format!("no HTTP reply: {} bytes", reply.len())))?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| fail(format!("bad status line {head:?}")))?;
        Ok((status, body.to_owned()))
    }

    /// Stops serving (the sockets close when the threads end).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The X25519 public key of a WireGuard private key.
pub fn public_key_of(private: [u8; 32]) -> [u8; 32] {
    *PublicKey::from(&StaticSecret::from(private)).as_bytes()
}

/// The guest's WireGuard private key from the `gateway-wg-key-masked` test dump (hex of the
/// key XOR `init_core::cmdline::gateway_wg_key_mask`).
pub fn unmask_wg_key(masked_hex: &str) -> Option<[u8; 32]> {
    let masked: [u8; 32] = hex::decode(masked_hex).ok()?.try_into().ok()?;
    let mask = init_core::cmdline::gateway_wg_key_mask();
    let mut key = [0u8; 32];
    for ((k, m), x) in key.iter_mut().zip(masked).zip(mask) {
        *k = m ^ x;
    }
    Some(key)
}

/// The app id a test gateway uses unless told otherwise.
pub const DEFAULT_APP_ID: [u8; 20] = [0x6a; 20];

/// `app_id` as the KMS's `gateway_app_id` (hex).
pub fn app_id_hex(app_id: &[u8]) -> String {
    hex::encode(app_id)
}
