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
//!    with a new key).
//!
//! A failure follows dstack HEAD: reported as `boot.error` and the boot goes on, unless
//! app-compose sets the cvm-init extension `require_gateway` (then the boot stops).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cvm_keys::gateway::{GatewayClientError, GatewayCredentials, client_cert_config};
use cvm_keys::kms::KmsTransport;
use cvm_keys::secret::Secret;
use cvm_keys::sign_cert::{KmsAccess, SignCertError, TlsKey, request_tls_key};
use cvm_keys::transport::{ResolvConfResolver, Resolve, TlsTransport};
use init_core::gateway::{
    CERT_VALIDITY_SECS, GatewayPlan, INTERFACE, KEEPALIVE_SECS, LISTEN_PORT, RefreshSchedule,
    RegisterCvmRequest, TunnelConfig,
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
}

/// What the stage did.
#[derive(Debug)]
pub(crate) enum Gateway {
    /// Not enabled (or no URLs).
    Disabled,
    /// Registered, `dstack-wg0` up, the refresher running.
    Registered,
    /// Registration failed and is not required: reported, the boot goes on.
    Failed,
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
    not_after: u64,
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
        Ok((url, client_ip)) => {
            log::info!("gateway: registered at {url}; {INTERFACE} up as {client_ip}");
            Ok(Gateway::Registered)
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
) -> Result<(String, Ipv4Addr), GatewayStageError> {
    let app_keys = keys.app_keys().ok_or(GatewayStageError::NoKms)?;
    let network = network.ok_or(GatewayStageError::NoNetwork)?;
    let mut transport = TlsTransport::new(Box::new(resolver(network)));
    let now = now_unix();
    let not_after = now.saturating_add(CERT_VALIDITY_SECS);
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
    spawn_refresher(RefreshState {
        urls: urls.to_vec(),
        last_url: url.clone(),
        gateway_app_id: app_keys.gateway_app_id.clone(),
        root_ca_pem: app_keys.ca_cert_pem.clone(),
        chain: tls.certificate_chain.clone(),
        key_pem: tls.key_pem.expose().clone(),
        not_after,
        wg_private_key: hex::encode(wg_key.as_ref()),
        request: request.clone(),
        client_ip: tunnel.client_ip,
        peers: peer_list(&tunnel),
        interval_secs: RefreshSchedule::default().interval.as_secs(),
    })?;
    Ok((url, tunnel.client_ip))
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
        let endpoint = resolver
            .resolve(&p.endpoint_host, p.endpoint_port)
            .map_err(|source| GatewayStageError::Endpoint {
                host: p.endpoint_host.clone(),
                source,
            })?
            .into_iter()
            .find_map(|a| match a {
                SocketAddr::V4(v4) => Some(v4),
                SocketAddr::V6(_) => None,
            })
            .ok_or_else(|| GatewayStageError::Endpoint {
                host: p.endpoint_host.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no IPv4 address"),
            })?;
        peers.push(WgPeer {
            public_key: p.public_key,
            endpoint: SocketAddrV4::new(*endpoint.ip(), endpoint.port()),
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

fn spawn_refresher(state: RefreshState) -> Result<(), GatewayStageError> {
    let json = Zeroizing::new(serde_json::to_vec(&state).unwrap_or_default());
    drop(state);
    let mut child = Command::new("/proc/self/exe")
        .env_clear()
        .arg(SUBCOMMAND)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(GatewayStageError::Refresher)?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| GatewayStageError::Refresher(std::io::Error::other("no stdin pipe")))?;
    stdin
        .write_all(&json)
        .map_err(GatewayStageError::Refresher)?;
    drop(stdin);
    log::info!("gateway: refresher started (pid {})", child.id());
    Ok(())
}

/// Errors of the refresher process.
#[derive(Debug, thiserror::Error)]
enum RefreshError {
    #[error("read the state from stdin")]
    ReadState(#[source] std::io::Error),
    #[error("the state on stdin is malformed")]
    DecodeState(#[source] serde_json::Error),
    #[error("the WireGuard key in the state is malformed")]
    Key,
    #[error("gateway client credentials")]
    Credentials(#[source] GatewayClientError),
}

/// The `gateway-refresh` mode of the binary (not PID 1): register again forever.
pub(crate) fn main() -> ! {
    let error = match refresh_forever() {
        Ok(never) => match never {},
        Err(e) => e,
    };
    log::error!(
        "gateway-refresh: {}",
        init_core::error_chain::one_line(&error)
    );
    #[allow(clippy::exit)]
    std::process::exit(1)
}

fn refresh_forever() -> Result<std::convert::Infallible, RefreshError> {
    let _ = init_sys::signals::reset_inherited();
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
    let creds = GatewayCredentials::new(
        &tls,
        &state.root_ca_pem,
        &state.gateway_app_id,
        state.not_after,
    )
    .map_err(RefreshError::Credentials)?;
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
    let mut wait = schedule.interval;
    loop {
        std::thread::sleep(wait);
        if !creds.valid_at(now_unix()) {
            log::warn!("gateway-refresh: the client certificate expires; a reboot renews it");
        }
        wait = match refresh_once(&creds, &mut transport, &state.urls, &last_url, &request) {
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
                schedule.on_success()
            }
            Err(e) => {
                log::warn!("gateway-refresh: {}", init_core::error_chain::one_line(&e));
                schedule.on_failure()
            }
        };
    }
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
