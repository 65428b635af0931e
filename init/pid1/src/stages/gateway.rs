//! The `gateway` stage: dstack-gateway registration over WireGuard (dstack `dstack-util`
//! `setup_dstack_gateway`, after `system-ready`; nothing is measured, as in dstack).
//!
//! When app-compose enables the gateway (`gateway_enabled`, alias `tproxy_enabled`, or feature
//! `tproxy-net`) and sys-config lists `gateway_urls`:
//! 1. a client certificate from the KMS (`SignCert`: subject `dstack-guest-agent`, clientAuth,
//!    app info, valid 10 days), quoted with the sealed TEE over the whole RTMR3 log;
//! 2. a WireGuard X25519 key generated here (never logged, never in argv, zeroized);
//! 3. `RegisterCvm` over RA-TLS (`cvm_keys::gateway`): the gateway's certificate must chain to
//!    the KMS root and carry the KMS's `gateway_app_id`; URLs tried in order (failover);
//! 4. `dstack-wg0` through netlink (`init_sys::wg_netlink`): link, address `/32`, up, key and
//!    peers (`WG_CMD_SET_DEVICE`, listen port 9182, keepalive 25 s, allowed IP peer/32),
//!    routes to the peers;
//! 5. the refresher: `cvm-init gateway-refresh` (a child process, so PID 1 stays
//!    single-threaded), handed its state over a pipe on stdin, registers again every
//!    [`init_core::gateway::RefreshSchedule`] period (the last accepting URL first, backoff
//!    after failures) and re-applies the interface when the reply changed (a restarted gateway
//!    with a new key). Once two thirds of the client certificate's validity are gone
//!    ([`init_core::gateway::renewal_due`]) it renews it before the round: the same request
//!    ([`client_cert_config`]) as the guest API's `GetTlsKey` over `/var/run/dstack.sock`,
//!    i.e. a fresh `SignCert` from the KMS with a fresh quote. It cannot quote itself: after
//!    boot the guest API process owns the event log (apps extend RTMR3 through it), so only it
//!    can send a log that replays to the quote's RTMR3 (and PID 1 must not block on a KMS).
//!    PID 1 keeps the state (serialized, zeroized on drop, never logged) and restarts a dead
//!    refresher like the guest API ([`crate::supervisor`]), handing the state over again; a
//!    restarted refresher registers at once (renewing first when due). Exit status
//!    [`init_core::gateway::EXIT_MISCONFIGURED`] (its state cannot work) is not restarted, as
//!    dstack's checker unit.
//!
//! A failure follows dstack HEAD: reported as `boot.error` and the boot goes on, unless
//! app-compose sets the cvm-init extension `require_gateway` (then the boot stops).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cvm_keys::gateway::{GatewayClientError, GatewayCredentials, client_cert_config};
use cvm_keys::kms::KmsTransport;
use cvm_keys::secret::Secret;
use cvm_keys::sign_cert::{KmsAccess, SignCertError, TlsKey, request_tls_key};
use cvm_keys::transport::{ResolvConfResolver, Resolve, TlsTransport};
use init_core::gateway::{
    CERT_VALIDITY_SECS, EXIT_MISCONFIGURED, GatewayPlan, INTERFACE, KEEPALIVE_SECS, LISTEN_PORT,
    RefreshSchedule, RegisterCvmRequest, TunnelConfig, renewal_due,
};
use init_core::host_share::HostShare;
use init_sys::wg_netlink::{Netlink, WgDevice, WgNetlinkError, WgPeer};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::results::Results;
use crate::stages::keys::Keys;
use crate::stages::network::Network;
use crate::stages::system_ready::Sealed;

/// The argument that selects the refresher mode of the binary.
pub(crate) const SUBCOMMAND: &str = "gateway-refresh";
/// Refresher argument: PID 1 restarted it (register at once).
const ARG_RESTARTED: &str = "--restarted";
/// Refresher argument (test builds, `cvm.test_fault=gateway-refresher`): exit after the first
/// successful round.
const ARG_TEST_EXIT: &str = "--test-exit-after-round";
/// The default Linux pipe capacity: the state is written whole before the child runs, so it
/// must fit (PID 1 must not block on a child that does not read).
const MAX_STATE_LEN: usize = 64 * 1024;
/// How long a renewal through the guest API may take (it waits for the KMS).
const RENEW_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of the gateway stage.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GatewayStageError {
    #[error("the gateway needs app keys from a KMS (key provider is not kms)")]
    NoKms,
    #[error("the gateway needs the network")]
    NoNetwork,
    #[error("request the gateway client certificate")]
    ClientCertificate(#[source] SignCertError),
    #[error("gateway client credentials")]
    Credentials(#[source] GatewayClientError),
    #[error("generate the WireGuard key")]
    Random(#[source] std::io::Error),
    #[error(transparent)]
    Register(GatewayClientError),
    #[error("resolve the WireGuard endpoint {host}")]
    Endpoint {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bring up {INTERFACE}")]
    Netlink(#[source] WgNetlinkError),
    #[error("configure {INTERFACE}")]
    Address(#[source] init_sys::net::NetError),
    #[error("start the gateway refresher")]
    Refresher(#[source] std::io::Error),
    #[error("the gateway refresher's state is {len} bytes (at most {MAX_STATE_LEN})")]
    StateTooLarge { len: usize },
}

/// What the stage did.
#[derive(Debug)]
pub(crate) enum Gateway {
    /// Not enabled (or no URLs).
    Disabled,
    /// Registered, `dstack-wg0` up, the refresher running (the supervisor keeps it alive).
    Registered { child: Child, refresher: Refresher },
    /// Registration failed and is not required: reported, the boot goes on.
    Failed,
}

impl Gateway {
    /// The running refresher and how to restart it, if registered.
    pub(crate) fn into_refresher(self) -> Option<(Child, Refresher)> {
        match self {
            Self::Registered { child, refresher } => Some((child, refresher)),
            Self::Disabled | Self::Failed => None,
        }
    }
}

/// What PID 1 keeps to start the refresher again: its state, serialized (zeroized on drop;
/// `Debug` shows only its length).
pub(crate) struct Refresher {
    state: Zeroizing<Vec<u8>>,
    /// Test builds (`cvm.test_fault=gateway-refresher`): the next start is told to exit after
    /// its first round; only the first start is.
    test_exit_once: bool,
    starts: u32,
}

impl std::fmt::Debug for Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresher")
            .field("state_len", &self.state.len())
            .field("starts", &self.starts)
            .finish_non_exhaustive()
    }
}

impl Refresher {
    fn new(state: &RefreshState, test_exit_once: bool) -> Result<Self, GatewayStageError> {
        // Written into a buffer of the final capacity, so no reallocation leaves a copy of the
        // keys behind; strings, integers and addresses always serialize.
        let mut buf = Zeroizing::new(Vec::with_capacity(MAX_STATE_LEN + 1));
        let _ = serde_json::to_writer(&mut *buf, state);
        let state = buf;
        if state.len() > MAX_STATE_LEN {
            return Err(GatewayStageError::StateTooLarge { len: state.len() });
        }
        Ok(Self {
            state,
            test_exit_once,
            starts: 0,
        })
    }

    /// A refresher over an empty state (supervisor tests).
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Self {
            state: Zeroizing::new(Vec::new()),
            test_exit_once: false,
            starts: 0,
        }
    }

    /// The arguments of the next start (after [`SUBCOMMAND`]): every start after the first is
    /// a restart; the test exit only ever goes to the first.
    fn next_args(&mut self) -> Vec<&'static str> {
        let mut args = Vec::new();
        if self.starts > 0 {
            args.push(ARG_RESTARTED);
        }
        if std::mem::take(&mut self.test_exit_once) {
            args.push(ARG_TEST_EXIT);
        }
        self.starts = self.starts.saturating_add(1);
        args
    }

    /// Start the refresher process and hand it the state over its stdin.
    pub(crate) fn start(&mut self) -> Result<Child, GatewayStageError> {
        let args = self.next_args();
        let mut child = Command::new("/proc/self/exe")
            .env_clear()
            .arg(SUBCOMMAND)
            .args(&args)
            .stdin(Stdio::piped())
            .spawn()
            .map_err(GatewayStageError::Refresher)?;
        let written = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no stdin pipe"))
            .and_then(|mut stdin| stdin.write_all(&self.state));
        if let Err(e) = written {
            let _ = child.kill();
            let _ = child.wait();
            return Err(GatewayStageError::Refresher(e));
        }
        log::info!("gateway: refresher started (pid {})", child.id());
        Ok(child)
    }
}

/// The refresher's state (over stdin, JSON; the secrets are zeroized once read).
#[derive(Serialize, Deserialize)]
struct RefreshState {
    urls: Vec<String>,
    last_url: String,
    gateway_app_id: String,
    root_ca_pem: String,
    chain: Vec<String>,
    key_pem: String,
    /// The client certificate's issue time and notAfter (Unix seconds) and the validity a
    /// renewal asks for.
    issued_at: u64,
    not_after: u64,
    validity_secs: u64,
    wg_private_key: String,
    request: RegisterCvmRequest,
    client_ip: Ipv4Addr,
    peers: Vec<(String, Ipv4Addr, String, u16)>,
    interval_secs: u64,
}

impl Drop for RefreshState {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key_pem);
        zeroize::Zeroize::zeroize(&mut self.wg_private_key);
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn resolver(network: &Network) -> ResolvConfResolver {
    ResolvConfResolver {
        servers: network
            .config
            .dns_servers
            .iter()
            .map(|ip| SocketAddr::new(IpAddr::V4(*ip), init_core::net::dns::PORT))
            .collect(),
        per_query: Duration::from_secs(2),
        rounds: 3,
    }
}

/// A fresh WireGuard private key (32 random bytes; the kernel and X25519 clamp it).
fn generate_wg_key() -> Result<Zeroizing<[u8; 32]>, std::io::Error> {
    let mut key = Zeroizing::new([0u8; 32]);
    std::fs::File::open("/dev/urandom")?.read_exact(key.as_mut())?;
    Ok(key)
}

fn public_key(private: &[u8; 32]) -> [u8; 32] {
    let secret = x25519_dalek::StaticSecret::from(*private);
    *x25519_dalek::PublicKey::from(&secret).as_bytes()
}

/// Runs the stage. A non-required failure is logged, sent as `boot.error` and returned as
/// [`Gateway::Failed`].
pub(crate) fn run(
    share: &HostShare,
    sealed: Sealed,
    keys: &Keys,
    network: Option<&Network>,
    config: &init_core::cmdline::Config,
    results: &mut Results,
) -> Result<Gateway, GatewayStageError> {
    let compose = share.app_compose.compose();
    let plan = GatewayPlan::from_config(compose, &share.sys_config.gateway_urls);
    let GatewayPlan::Enabled { urls, required } = plan else {
        if init_core::gateway::gateway_enabled(compose) {
            log::warn!("gateway: enabled in app-compose but sys-config has no gateway_urls");
        }
        return Ok(Gateway::Disabled);
    };
    crate::stages::host_api::boot_progress("setting up dstack-gateway");
    match register(share, sealed, keys, network, &urls, config, results) {
        Ok((url, client_ip, child, refresher)) => {
            log::info!("gateway: registered at {url}; {INTERFACE} up as {client_ip}");
            Ok(Gateway::Registered { child, refresher })
        }
        Err(e) if !required => {
            let line = init_core::error_chain::one_line(&e);
            log::warn!("gateway: registration failed (not required, the boot goes on): {line}");
            crate::stages::host_api::boot_error(init_core::plan::Stage::Gateway, &line);
            Ok(Gateway::Failed)
        }
        Err(e) => Err(e),
    }
}

fn register(
    share: &HostShare,
    mut sealed: Sealed,
    keys: &Keys,
    network: Option<&Network>,
    urls: &[String],
    config: &init_core::cmdline::Config,
    results: &mut Results,
) -> Result<(String, Ipv4Addr, Child, Refresher), GatewayStageError> {
    let app_keys = keys.app_keys().ok_or(GatewayStageError::NoKms)?;
    let network = network.ok_or(GatewayStageError::NoNetwork)?;
    let mut transport = TlsTransport::new(Box::new(resolver(network)));
    let test_fault = refresher_test_fault(config);
    let validity_secs = if test_fault {
        log::warn!(
            "test fault: a {} s gateway client certificate; the first refresher exits after one round",
            init_core::gateway::TEST_CERT_VALIDITY_SECS
        );
        init_core::gateway::TEST_CERT_VALIDITY_SECS
    } else {
        CERT_VALIDITY_SECS
    };
    let now = now_unix();
    let not_after = now.saturating_add(validity_secs);
    let access = KmsAccess {
        url: app_keys.kms_url.clone(),
        root_ca_pem: app_keys.ca_cert_pem.clone(),
        temp_ca_cert_pem: app_keys.temp_ca_cert_pem.clone(),
        temp_ca_key_pem: Secret::new(app_keys.temp_ca_key_pem.expose().clone()),
    };
    let tls = request_tls_key(
        &mut transport,
        sealed.tee.as_mut(),
        &sealed.events,
        &access,
        &share.sys_config.vm_config_raw,
        client_cert_config(not_after),
        now,
    )
    .map_err(GatewayStageError::ClientCertificate)?;
    drop(sealed);
    let creds = GatewayCredentials::new(
        &tls,
        &app_keys.ca_cert_pem,
        &app_keys.gateway_app_id,
        not_after,
    )
    .map_err(GatewayStageError::Credentials)?;
    let wg_key = generate_wg_key().map_err(GatewayStageError::Random)?;
    test_dump_masked_key(&wg_key, config, results);
    let request = RegisterCvmRequest::new(&public_key(&wg_key), share.app_compose.compose());
    let (url, tunnel) = creds
        .register_any(&mut transport, urls, None, &request)
        .map_err(GatewayStageError::Register)?;
    apply(&wg_key, &tunnel, &resolver(network))?;
    let mut refresher = Refresher::new(
        &RefreshState {
            urls: urls.to_vec(),
            last_url: url.clone(),
            gateway_app_id: app_keys.gateway_app_id.clone(),
            root_ca_pem: app_keys.ca_cert_pem.clone(),
            chain: tls.certificate_chain.clone(),
            key_pem: tls.key_pem.expose().clone(),
            issued_at: now,
            not_after,
            validity_secs,
            wg_private_key: hex::encode(wg_key.as_ref()),
            request: request.clone(),
            client_ip: tunnel.client_ip,
            peers: peer_list(&tunnel),
            interval_secs: RefreshSchedule::default().interval.as_secs(),
        },
        test_fault,
    )?;
    let child = refresher.start()?;
    Ok((url, tunnel.client_ip, child, refresher))
}

/// Test builds: `cvm.test_fault=gateway-refresher`.
#[cfg(feature = "insecure-test-hooks")]
fn refresher_test_fault(config: &init_core::cmdline::Config) -> bool {
    config.test_fault == Some(init_core::cmdline::TestFault::GatewayRefresher)
}

#[cfg(not(feature = "insecure-test-hooks"))]
fn refresher_test_fault(_: &init_core::cmdline::Config) -> bool {
    false
}

/// Test hook (`cvm.test_dump=gateway-wg-key-masked`): the key XOR a public mask as a
/// `test_dump` record, so the secrets scan knows the key without the key's bytes leaving.
#[cfg(feature = "insecure-test-hooks")]
fn test_dump_masked_key(
    key: &[u8; 32],
    config: &init_core::cmdline::Config,
    results: &mut Results,
) {
    use init_core::cmdline::{TestDump, gateway_wg_key_mask};
    if !config.test_dump.contains(&TestDump::GatewayWgKeyMasked) {
        return;
    }
    let mut masked = Zeroizing::new(gateway_wg_key_mask());
    for (m, k) in masked.iter_mut().zip(key) {
        *m ^= k;
    }
    log::warn!("test hook: recording the masked WireGuard key");
    results.record(&init_core::results::Record::TestDump {
        name: TestDump::GatewayWgKeyMasked.name().into(),
        hex: hex::encode(masked.as_ref()),
        mono_us: init_sys::clock::monotonic_us(),
    });
}

#[cfg(not(feature = "insecure-test-hooks"))]
fn test_dump_masked_key(_: &[u8; 32], _: &init_core::cmdline::Config, _: &mut Results) {}

fn peer_list(tunnel: &TunnelConfig) -> Vec<(String, Ipv4Addr, String, u16)> {
    tunnel
        .peers
        .iter()
        .map(|p| {
            (
                init_core::gateway::encode_key(&p.public_key),
                p.ip,
                p.endpoint_host.clone(),
                p.endpoint_port,
            )
        })
        .collect()
}

/// Brings `dstack-wg0` to `tunnel`: link (kept if it exists), address /32, up, key and peers
/// (replacing the old ones), routes to the peers.
fn apply(
    private_key: &[u8; 32],
    tunnel: &TunnelConfig,
    resolver: &dyn Resolve,
) -> Result<(), GatewayStageError> {
    let mut peers = Vec::with_capacity(tunnel.peers.len());
    for p in &tunnel.peers {
        let addrs = resolver
            .resolve(&p.endpoint_host, p.endpoint_port)
            .map_err(|source| GatewayStageError::Endpoint {
                host: p.endpoint_host.clone(),
                source,
            })?;
        let endpoint = init_core::gateway::choose_endpoint(&addrs).ok_or_else(|| {
            GatewayStageError::Endpoint {
                host: p.endpoint_host.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
            }
        })?;
        peers.push(WgPeer {
            public_key: p.public_key,
            endpoint,
            keepalive_secs: KEEPALIVE_SECS,
            allowed_ips: vec![(p.ip, 32)],
        });
    }
    let mut route = Netlink::route().map_err(GatewayStageError::Netlink)?;
    route
        .create_wireguard_link(INTERFACE)
        .map_err(GatewayStageError::Netlink)?;
    let ctl = init_sys::net::NetControl::open().map_err(GatewayStageError::Address)?;
    ctl.set_address(INTERFACE, tunnel.client_ip, Ipv4Addr::BROADCAST)
        .map_err(GatewayStageError::Address)?;
    ctl.set_up(INTERFACE).map_err(GatewayStageError::Address)?;
    // Up before the peers are set: the kernel then sends the first keepalive (and with it the
    // handshake) right away.
    let mut genl = Netlink::generic().map_err(GatewayStageError::Netlink)?;
    let family = genl
        .wireguard_family()
        .map_err(GatewayStageError::Netlink)?;
    genl.set_wireguard_device(
        family,
        &WgDevice {
            name: INTERFACE,
            private_key,
            listen_port: LISTEN_PORT,
            peers: &peers,
        },
    )
    .map_err(GatewayStageError::Netlink)?;
    let index =
        init_sys::wg_netlink::interface_index(INTERFACE).map_err(GatewayStageError::Netlink)?;
    for p in &peers {
        for (ip, prefix) in &p.allowed_ips {
            route
                .add_route(*ip, *prefix, index)
                .map_err(GatewayStageError::Netlink)?;
        }
    }
    Ok(())
}

/// Errors of the refresher process.
#[derive(Debug, thiserror::Error)]
enum RefreshError {
    #[error("arguments: {0:?} is not an argument of {SUBCOMMAND}")]
    Argument(String),
    #[error("read the state from stdin")]
    ReadState(#[source] std::io::Error),
    #[error("the state on stdin is malformed")]
    DecodeState(#[source] serde_json::Error),
    #[error("the WireGuard key in the state is malformed")]
    Key,
    #[error("gateway client credentials")]
    Credentials(#[source] GatewayClientError),
}

/// Errors of renewing the client certificate through the guest API.
#[derive(Debug, thiserror::Error)]
enum RenewError {
    #[error("GetTlsKey over {}", crate::stages::guest_api::DSTACK_SOCKET)]
    Io(#[source] std::io::Error),
    #[error("GetTlsKey reply")]
    Http(#[source] cvm_keys::kms::TransportError),
    #[error("GetTlsKey was refused with HTTP {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("the renewed client certificate")]
    Reply(#[source] GatewayClientError),
}

/// The refresher's arguments (after [`SUBCOMMAND`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct RefreshArgs {
    /// PID 1 restarted it: the first round at once.
    restarted: bool,
    /// Test builds: exit after the first successful round.
    test_exit: bool,
}

impl RefreshArgs {
    fn parse(args: impl Iterator<Item = std::ffi::OsString>) -> Result<Self, RefreshError> {
        let mut out = Self::default();
        for arg in args {
            match arg.to_str() {
                Some(ARG_RESTARTED) => out.restarted = true,
                Some(ARG_TEST_EXIT) if cfg!(feature = "insecure-test-hooks") => {
                    out.test_exit = true;
                }
                _ => return Err(RefreshError::Argument(arg.to_string_lossy().into_owned())),
            }
        }
        Ok(out)
    }
}

/// The `gateway-refresh` mode of the binary (not PID 1): register again forever. A state that
/// cannot work exits [`EXIT_MISCONFIGURED`] (PID 1 does not restart it).
pub(crate) fn main(args: impl Iterator<Item = std::ffi::OsString>) -> ! {
    let error = match refresh_forever(args) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    log::error!(
        "gateway-refresh: {}",
        init_core::error_chain::one_line(&error)
    );
    #[allow(clippy::exit)]
    std::process::exit(EXIT_MISCONFIGURED)
}

/// The client certificate in use and its lifetime.
struct ClientCert {
    creds: GatewayCredentials,
    issued_at: u64,
}

fn refresh_forever(
    args: impl Iterator<Item = std::ffi::OsString>,
) -> Result<std::convert::Infallible, RefreshError> {
    let _ = init_sys::signals::reset_inherited();
    let args = RefreshArgs::parse(args)?;
    let mut raw = Zeroizing::new(Vec::new());
    std::io::stdin()
        .take(1 << 20)
        .read_to_end(&mut raw)
        .map_err(RefreshError::ReadState)?;
    let state: RefreshState = serde_json::from_slice(&raw).map_err(RefreshError::DecodeState)?;
    drop(raw);
    let mut wg_key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(&state.wg_private_key, wg_key.as_mut()).map_err(|_| RefreshError::Key)?;
    let tls = TlsKey {
        key_pem: Secret::new(state.key_pem.clone()),
        certificate_chain: state.chain.clone(),
    };
    let mut cert = ClientCert {
        creds: GatewayCredentials::new(
            &tls,
            &state.root_ca_pem,
            &state.gateway_app_id,
            state.not_after,
        )
        .map_err(RefreshError::Credentials)?,
        issued_at: state.issued_at,
    };
    drop(tls);
    let request = RegisterCvmRequest {
        client_public_key: init_core::gateway::encode_key(&public_key(&wg_key)),
        port_policy: state.request.port_policy.clone(),
    };
    let resolver = ResolvConfResolver::from_file(std::path::Path::new("/etc/resolv.conf"));
    let mut transport = TlsTransport::new(Box::new(resolver.clone()));
    let mut schedule = RefreshSchedule::new(
        Duration::from_secs(state.interval_secs.max(1)),
        Duration::from_secs(5),
    );
    let mut last_url = state.last_url.clone();
    let mut applied = (state.client_ip, state.peers.clone());
    let mut wait = schedule.first_wait(args.restarted);
    loop {
        std::thread::sleep(wait);
        let now = now_unix();
        if renewal_due(cert.issued_at, cert.creds.not_after, now) {
            match renew(&state, now) {
                Ok(creds) => {
                    log::info!(
                        "gateway-refresh: client certificate renewed through the guest API (valid {} s)",
                        state.validity_secs
                    );
                    cert = ClientCert {
                        creds,
                        issued_at: now,
                    };
                }
                Err(e) => log::warn!(
                    "gateway-refresh: renew the client certificate: {}; keeping the current one ({} s left)",
                    init_core::error_chain::one_line(&e),
                    cert.creds.not_after.saturating_sub(now)
                ),
            }
        }
        wait = match refresh_once(
            &cert.creds,
            &mut transport,
            &state.urls,
            &last_url,
            &request,
        ) {
            Ok((url, tunnel)) => {
                let now = (tunnel.client_ip, peer_list(&tunnel));
                if now != applied {
                    match apply(&wg_key, &tunnel, &resolver) {
                        Ok(()) => {
                            log::info!("gateway-refresh: {INTERFACE} re-applied for {url}");
                            applied = now;
                        }
                        Err(e) => {
                            log::warn!("gateway-refresh: {}", init_core::error_chain::one_line(&e))
                        }
                    }
                }
                last_url = url;
                if args.test_exit {
                    log::warn!("test fault: the gateway refresher exits after its first round");
                    #[allow(clippy::exit)]
                    std::process::exit(0);
                }
                schedule.on_success()
            }
            Err(e) => {
                log::warn!("gateway-refresh: {}", init_core::error_chain::one_line(&e));
                schedule.on_failure()
            }
        };
    }
}

/// A new client certificate valid for the state's validity from `now`: the guest API's
/// `GetTlsKey` with the gateway stage's request ([`client_cert_config`]), i.e. the KMS
/// `SignCert` with a quote over the current event log.
fn renew(state: &RefreshState, now: u64) -> Result<GatewayCredentials, RenewError> {
    let not_after = now.saturating_add(state.validity_secs);
    let body = cvm_keys::gateway::get_tls_key_body(&client_cert_config(not_after));
    let response = guest_api_post("/GetTlsKey", &body)?;
    if response.status != 200 {
        return Err(RenewError::Refused {
            status: response.status,
            message: response.refusal_message(),
        });
    }
    let tls =
        cvm_keys::gateway::parse_get_tls_key_reply(&response.body).map_err(RenewError::Reply)?;
    GatewayCredentials::new(&tls, &state.root_ca_pem, &state.gateway_app_id, not_after)
        .map_err(RenewError::Reply)
}

/// One pRPC POST to the guest API's dstack socket (the reply, which holds a private key, is
/// zeroized).
fn guest_api_post(path: &str, body: &[u8]) -> Result<cvm_keys::kms::HttpResponse, RenewError> {
    let raw = guest_api_exchange(path, body).map_err(RenewError::Io)?;
    cvm_keys::transport::parse_response(&raw).map_err(RenewError::Http)
}

fn guest_api_exchange(path: &str, body: &[u8]) -> Result<Zeroizing<Vec<u8>>, std::io::Error> {
    let mut stream =
        std::os::unix::net::UnixStream::connect(crate::stages::guest_api::DSTACK_SOCKET)?;
    stream.set_read_timeout(Some(RENEW_TIMEOUT))?;
    stream.set_write_timeout(Some(RENEW_TIMEOUT))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Zeroizing::new(Vec::new());
    (&mut stream)
        .take(u64::try_from(init_core::gateway::MAX_RESPONSE_LEN).unwrap_or(u64::MAX))
        .read_to_end(&mut raw)?;
    Ok(raw)
}

fn refresh_once(
    creds: &GatewayCredentials,
    transport: &mut dyn KmsTransport,
    urls: &[String],
    last_url: &str,
    request: &RegisterCvmRequest,
) -> Result<(String, TunnelConfig), GatewayClientError> {
    creds.register_any(transport, urls, Some(last_url), request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> RefreshState {
        RefreshState {
            urls: vec!["https://gw:1".into()],
            last_url: "https://gw:1".into(),
            gateway_app_id: "any".into(),
            root_ca_pem: String::new(),
            chain: Vec::new(),
            key_pem: "secret key pem".into(),
            issued_at: 1,
            not_after: 2,
            validity_secs: 1,
            wg_private_key: "00".repeat(32),
            request: RegisterCvmRequest {
                client_public_key: String::new(),
                port_policy: Default::default(),
            },
            client_ip: Ipv4Addr::new(10, 4, 0, 2),
            peers: Vec::new(),
            interval_secs: 60,
        }
    }

    /// The first start gets no `--restarted` and (under the test fault) the test exit; every
    /// later start is a restart and never gets the test exit again.
    #[test]
    fn restarts_are_flagged_and_the_test_exit_goes_to_the_first_start_only() {
        let mut r = Refresher::new(&state(), true).unwrap();
        assert_eq!(r.next_args(), [ARG_TEST_EXIT]);
        assert_eq!(r.next_args(), [ARG_RESTARTED]);
        assert_eq!(r.next_args(), [ARG_RESTARTED]);
        let mut plain = Refresher::new(&state(), false).unwrap();
        assert!(plain.next_args().is_empty());
        assert_eq!(plain.next_args(), [ARG_RESTARTED]);
    }

    #[test]
    fn state_is_kept_whole_and_never_shown() {
        let r = Refresher::new(&state(), false).unwrap();
        let back: RefreshState = serde_json::from_slice(&r.state).unwrap();
        assert_eq!(back.key_pem, "secret key pem");
        assert_eq!(back.validity_secs, 1);
        let shown = format!("{r:?}");
        assert!(!shown.contains("secret"), "{shown}");
        let mut big = state();
        big.chain = vec!["c".repeat(MAX_STATE_LEN)];
        assert!(matches!(
            Refresher::new(&big, false),
            Err(GatewayStageError::StateTooLarge { .. })
        ));
    }

    #[test]
    fn refresher_arguments() {
        let parse = |a: &[&str]| RefreshArgs::parse(a.iter().map(std::ffi::OsString::from));
        assert_eq!(parse(&[]).unwrap(), RefreshArgs::default());
        assert!(parse(&[ARG_RESTARTED]).unwrap().restarted);
        assert!(matches!(parse(&["--x"]), Err(RefreshError::Argument(_))));
        let test_exit = parse(&[ARG_TEST_EXIT]);
        if cfg!(feature = "insecure-test-hooks") {
            assert!(test_exit.unwrap().test_exit);
        } else {
            test_exit.unwrap_err();
        }
    }
}
