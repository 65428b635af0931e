//! dstack-gateway registration, without I/O (`shared/specs/dstack-guest.md` §1.5 stage 1;
//! dstack `gateway/rpc/proto/gateway_rpc.proto` and `dstack-util` `GatewayContext`).
//!
//! * Whether to register ([`GatewayPlan::from_config`]): app-compose `gateway_enabled` (alias
//!   `tproxy_enabled`) or the deprecated feature `tproxy-net`, and a non-empty sys-config
//!   `gateway_urls`. A failure is reported and the boot goes on (dstack HEAD) unless the
//!   cvm-init extension `require_gateway` is set.
//! * The RPC: `POST <url>[/prpc]/Gateway.RegisterCvm?json` (pRPC JSON, as the init talks to the
//!   KMS) with [`RegisterCvmRequest`]; the reply [`RegisterCvmResponse`] is checked into a
//!   [`TunnelConfig`] (client address, peers sorted by public key as dstack writes them).
//! * The order URLs are tried in ([`order_urls`]: the last one that accepted first, then the
//!   configured order) and the refresh schedule ([`RefreshSchedule`]).
//! * The peer endpoint configured among a host's addresses ([`choose_endpoint`]) and when the
//!   refresher renews the client certificate ([`renewal_due`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::app_compose::{AppCompose, PortPolicy};

/// dstack's WireGuard interface name for the first (only) gateway cluster.
pub const INTERFACE: &str = "dstack-wg0";
/// dstack's WireGuard listen port for that interface.
pub const LISTEN_PORT: u16 = 9182;
/// dstack's persistent keepalive (seconds).
pub const KEEPALIVE_SECS: u16 = 25;
/// Most gateway peers a reply may list.
pub const MAX_PEERS: usize = 16;
/// Largest `RegisterCvm` reply accepted.
pub const MAX_RESPONSE_LEN: usize = 256 * 1024;
/// Validity of the client certificate the gateway sees (dstack: 10 days).
pub const CERT_VALIDITY_SECS: u64 = 10 * 24 * 3600;
/// The client certificate's subject (dstack's guest agent).
pub const CERT_SUBJECT: &str = "dstack-guest-agent";
/// The refresher's exit status when its state cannot work (malformed, unusable credentials):
/// PID 1 does not restart it (dstack's `dstack-gateway-checker.service`: exit 3 =
/// misconfigured, no restart).
pub const EXIT_MISCONFIGURED: i32 = 3;
/// Validity of the client certificate under the test fault `gateway-refresher` (test builds
/// only): short enough that the refresher's first round (after [`RefreshSchedule`]'s 60 s)
/// finds it due for renewal.
pub const TEST_CERT_VALIDITY_SECS: u64 = 80;

/// Errors of planning a registration and checking a reply.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The KMS gave no gateway app id to check the gateway's certificate against.
    #[error("the KMS gave no gateway_app_id: the gateway cannot be authenticated")]
    NoGatewayAppId,
    /// The reply is not the expected JSON.
    #[error("RegisterCvm reply is not valid JSON of the expected shape")]
    Decode(#[source] serde_json::Error),
    /// The reply lacks its `wg` part.
    #[error("RegisterCvm reply has no WireGuard configuration")]
    MissingWireGuard,
    /// `client_ip` is not an IPv4 address.
    #[error("RegisterCvm reply: client_ip {value:?} is not an IPv4 address")]
    ClientIp { value: String },
    /// No peer, or too many.
    #[error("RegisterCvm reply lists {count} gateway peers (1..={MAX_PEERS} allowed)")]
    PeerCount { count: usize },
    /// A peer public key is not base64 of 32 bytes.
    #[error("RegisterCvm reply: peer {index} public key is not base64 of 32 bytes")]
    PeerKey { index: usize },
    /// A peer address is not IPv4.
    #[error("RegisterCvm reply: peer {index} ip {value:?} is not an IPv4 address")]
    PeerIp { index: usize, value: String },
    /// A peer endpoint is not `host:port`.
    #[error("RegisterCvm reply: peer {index} endpoint {value:?} is not host:port")]
    PeerEndpoint { index: usize, value: String },
}

/// Whether and where to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayPlan {
    /// Gateway not enabled (or no `gateway_urls`): nothing to do.
    Disabled,
    /// Register with these URLs, in order.
    Enabled {
        /// sys-config `gateway_urls`.
        urls: Vec<String>,
        /// app-compose `require_gateway`: a failure stops the boot.
        required: bool,
    },
}

impl GatewayPlan {
    /// The plan for `compose` and sys-config `gateway_urls`. Enabled without URLs is
    /// `Disabled` (dstack skips too) but logged by the caller.
    pub fn from_config(compose: &AppCompose, gateway_urls: &[String]) -> Self {
        if !gateway_enabled(compose) || gateway_urls.is_empty() {
            return Self::Disabled;
        }
        Self::Enabled {
            urls: gateway_urls.to_vec(),
            required: compose.require_gateway,
        }
    }
}

/// dstack's `AppCompose::gateway_enabled`: the flag (or its alias) or feature `tproxy-net`.
pub fn gateway_enabled(compose: &AppCompose) -> bool {
    compose.gateway_enabled || compose.features.iter().any(|f| f == "tproxy-net")
}

/// How the gateway's server certificate is checked: against the KMS root CA and the app id
/// the KMS names (`gateway_app_id`), or — when the KMS says `any` — not at all (dstack's
/// `tls_no_check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayTrust {
    /// The server certificate chains to the KMS root and carries this app id (hex).
    AppId(String),
    /// `gateway_app_id` is `any`: no server check (dstack's behaviour).
    Any,
}

impl GatewayTrust {
    /// From the KMS's `gateway_app_id`; empty is refused as dstack does.
    pub fn from_kms(gateway_app_id: &str) -> Result<Self, GatewayError> {
        match gateway_app_id.trim() {
            "" => Err(GatewayError::NoGatewayAppId),
            "any" => Ok(Self::Any),
            id => Ok(Self::AppId(
                id.trim_start_matches("0x").to_ascii_lowercase(),
            )),
        }
    }
}

/// The pRPC path of `RegisterCvm` under a gateway URL's path prefix (dstack appends `/prpc`
/// unless the URL already ends with it).
pub fn register_path(base_path: &str) -> String {
    let base = base_path.trim_end_matches('/');
    if base.ends_with("/prpc") {
        format!("{base}/Gateway.RegisterCvm?json")
    } else {
        format!("{base}/prpc/Gateway.RegisterCvm?json")
    }
}

/// The URLs in the order to try them: `last` (the one that accepted last, if still listed)
/// first, then the rest in configured order (dstack's `order_by_stickiness`).
pub fn order_urls<'a>(urls: &'a [String], last: Option<&str>) -> Vec<&'a str> {
    let mut ordered: Vec<&str> = urls
        .iter()
        .map(String::as_str)
        .filter(|u| Some(*u) == last)
        .take(1)
        .collect();
    ordered.extend(urls.iter().map(String::as_str).filter(|u| Some(*u) != last));
    ordered
}

/// `PortAttrs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortAttrs {
    /// Port.
    pub port: u32,
    /// Proxy protocol.
    pub pp: bool,
}

/// `PortPolicy` as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RpcPortPolicy {
    /// Port rules.
    pub ports: Vec<PortAttrs>,
    /// Only the listed ports.
    pub restrict_mode: bool,
}

impl From<&PortPolicy> for RpcPortPolicy {
    fn from(p: &PortPolicy) -> Self {
        Self {
            ports: p
                .ports
                .iter()
                .map(|r| PortAttrs {
                    port: u32::from(r.port),
                    pp: r.pp,
                })
                .collect(),
            restrict_mode: p.restrict_mode,
        }
    }
}

/// `RegisterCvmRequest` (pRPC JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterCvmRequest {
    /// The guest's WireGuard public key (base64, as `wg pubkey` prints it).
    pub client_public_key: String,
    /// app-compose `port_policy` (dstack HEAD always sends one; empty when unset).
    pub port_policy: RpcPortPolicy,
}

impl RegisterCvmRequest {
    /// The request for `public_key` and `compose`'s port policy.
    pub fn new(public_key: &[u8; 32], compose: &AppCompose) -> Self {
        Self {
            client_public_key: encode_key(public_key),
            port_policy: compose
                .port_policy
                .as_ref()
                .map(RpcPortPolicy::from)
                .unwrap_or_default(),
        }
    }
}

/// `WireGuardPeer`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
pub struct RpcPeer {
    /// Peer public key (base64).
    #[serde(default)]
    pub pk: String,
    /// Peer tunnel address (`a.b.c.d` or `a.b.c.d/n`).
    #[serde(default)]
    pub ip: String,
    /// `host:port`.
    #[serde(default)]
    pub endpoint: String,
}

/// `WireGuardConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
pub struct RpcWireGuard {
    /// The guest's tunnel address.
    #[serde(default)]
    pub client_ip: String,
    /// Gateway nodes.
    #[serde(default)]
    pub servers: Vec<RpcPeer>,
}

/// `GuestAgentConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
pub struct RpcAgent {
    /// External port of the guest agent.
    #[serde(default)]
    pub external_port: u32,
    /// In-CVM port of the guest agent.
    #[serde(default)]
    pub internal_port: u32,
    /// Base domain.
    #[serde(default)]
    pub domain: String,
    /// App address namespace prefix.
    #[serde(default)]
    pub app_address_ns_prefix: String,
}

/// `RegisterCvmResponse` (unknown fields, e.g. `gateways`, are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
pub struct RegisterCvmResponse {
    /// WireGuard part.
    #[serde(default)]
    pub wg: Option<RpcWireGuard>,
    /// Agent part.
    #[serde(default)]
    pub agent: Option<RpcAgent>,
}

/// One checked gateway peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Public key.
    pub public_key: [u8; 32],
    /// Its tunnel address (allowed IP, /32).
    pub ip: Ipv4Addr,
    /// Endpoint host (name or IP literal, brackets removed).
    pub endpoint_host: String,
    /// Endpoint UDP port.
    pub endpoint_port: u16,
}

/// The checked tunnel configuration of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// The guest's address (/32).
    pub client_ip: Ipv4Addr,
    /// Peers, sorted by public key.
    pub peers: Vec<Peer>,
    /// The gateway's base domain (informational).
    pub domain: String,
}

/// Parses and checks a `RegisterCvm` reply body.
pub fn parse_response(body: &[u8]) -> Result<TunnelConfig, GatewayError> {
    let reply: RegisterCvmResponse = serde_json::from_slice(body).map_err(GatewayError::Decode)?;
    let wg = reply.wg.ok_or(GatewayError::MissingWireGuard)?;
    let client_ip = parse_ipv4(&wg.client_ip).ok_or_else(|| GatewayError::ClientIp {
        value: truncate(&wg.client_ip),
    })?;
    if wg.servers.is_empty() || wg.servers.len() > MAX_PEERS {
        return Err(GatewayError::PeerCount {
            count: wg.servers.len(),
        });
    }
    let mut peers = wg
        .servers
        .iter()
        .enumerate()
        .map(|(index, s)| {
            let public_key = decode_key(&s.pk).ok_or(GatewayError::PeerKey { index })?;
            let ip = parse_ipv4(&s.ip).ok_or_else(|| GatewayError::PeerIp {
                index,
                value: truncate(&s.ip),
            })?;
            let (endpoint_host, endpoint_port) =
                split_endpoint(&s.endpoint).ok_or_else(|| GatewayError::PeerEndpoint {
                    index,
                    value: truncate(&s.endpoint),
                })?;
            Ok(Peer {
                public_key,
                ip,
                endpoint_host,
                endpoint_port,
            })
        })
        .collect::<Result<Vec<_>, GatewayError>>()?;
    peers.sort_by_key(|p| encode_key(&p.public_key));
    Ok(TunnelConfig {
        client_ip,
        peers,
        domain: reply.agent.map(|a| a.domain).unwrap_or_default(),
    })
}

/// `a.b.c.d` or `a.b.c.d/n` (dstack keeps only the address).
fn parse_ipv4(text: &str) -> Option<Ipv4Addr> {
    text.split('/').next()?.trim().parse().ok()
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

/// `host:port` or `[v6]:port`, host a name or literal of sane characters.
fn split_endpoint(endpoint: &str) -> Option<(String, u16)> {
    let (host, port) = endpoint.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().ok()?;
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b));
    (ok && port != 0).then(|| (host.to_owned(), port))
}

/// Base64 (standard, padded) of a WireGuard key.
pub fn encode_key(key: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// A WireGuard key from base64 (standard alphabet).
pub fn decode_key(text: &str) -> Option<[u8; 32]> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    bytes.try_into().ok()
}

/// The address to configure as a peer's endpoint among those its host resolved to: the first
/// IPv4 one (the guest's uplink is DHCPv4), else the first IPv6 one (an IPv6 endpoint such as
/// `[fd00::1]:51820`, carried to the kernel as a `sockaddr_in6`).
pub fn choose_endpoint(addrs: &[SocketAddr]) -> Option<SocketAddr> {
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.iter().find(|a| a.is_ipv6()))
        .copied()
}

/// Whether the refresher renews the client certificate (issued at `issued_at`, Unix seconds,
/// valid until `not_after`) at `now`: once two thirds of its validity are gone (a 10-day
/// certificate after 6 days 16 hours), so failed renewals have days of retries before the
/// gateway would refuse the old one. A clock before `issued_at` renews nothing; an empty
/// validity is always due.
pub fn renewal_due(issued_at: u64, not_after: u64, now: u64) -> bool {
    let validity = not_after.saturating_sub(issued_at);
    now >= issued_at.saturating_add(validity - validity / 3)
}

/// When to register again: every `interval` after a success; after failures, backoff from
/// `retry_initial` doubling up to `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshSchedule {
    /// Between successful refreshes.
    pub interval: Duration,
    /// First retry after a failed round.
    pub retry_initial: Duration,
    failures: u32,
}

impl Default for RefreshSchedule {
    fn default() -> Self {
        Self::new(Duration::from_secs(60), Duration::from_secs(5))
    }
}

impl RefreshSchedule {
    /// A schedule with these periods.
    pub fn new(interval: Duration, retry_initial: Duration) -> Self {
        Self {
            interval,
            retry_initial: retry_initial.min(interval),
            failures: 0,
        }
    }

    /// A round succeeded: the next one after `interval`.
    pub fn on_success(&mut self) -> Duration {
        self.failures = 0;
        self.interval
    }

    /// A round failed everywhere: the next one after the backoff.
    pub fn on_failure(&mut self) -> Duration {
        let shift = self.failures.min(16);
        self.failures = self.failures.saturating_add(1);
        self.retry_initial
            .saturating_mul(1u32 << shift)
            .min(self.interval)
    }

    /// Consecutive failed rounds.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The wait before a refresher's first round: a full `interval` after the boot's own
    /// registration; none for a refresher PID 1 restarted (it cannot know how long the
    /// registration went without a refresh).
    pub fn first_wait(&self, restarted: bool) -> Duration {
        if restarted {
            Duration::ZERO
        } else {
            self.interval
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compose(json: &str) -> AppCompose {
        let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["manifest_version"] = 2.into();
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn plan_follows_flag_alias_feature_and_urls() {
        let urls = vec!["https://gw:8000".to_owned()];
        let on = compose(r#"{"name":"a","gateway_enabled":true}"#);
        assert_eq!(
            GatewayPlan::from_config(&on, &urls),
            GatewayPlan::Enabled {
                urls: urls.clone(),
                required: false
            }
        );
        let alias = compose(r#"{"name":"a","tproxy_enabled":true,"require_gateway":true}"#);
        assert_eq!(
            GatewayPlan::from_config(&alias, &urls),
            GatewayPlan::Enabled {
                urls: urls.clone(),
                required: true
            }
        );
        let feature = compose(r#"{"name":"a","features":["tproxy-net"]}"#);
        assert!(matches!(
            GatewayPlan::from_config(&feature, &urls),
            GatewayPlan::Enabled { .. }
        ));
        assert_eq!(GatewayPlan::from_config(&on, &[]), GatewayPlan::Disabled);
        let off = compose(r#"{"name":"a","features":["other"]}"#);
        assert_eq!(GatewayPlan::from_config(&off, &urls), GatewayPlan::Disabled);
    }

    #[test]
    fn trust_from_kms() {
        assert!(matches!(
            GatewayTrust::from_kms(""),
            Err(GatewayError::NoGatewayAppId)
        ));
        assert_eq!(GatewayTrust::from_kms("any").unwrap(), GatewayTrust::Any);
        assert_eq!(
            GatewayTrust::from_kms("0xABcd").unwrap(),
            GatewayTrust::AppId("abcd".into())
        );
    }

    #[test]
    fn paths_and_order() {
        assert_eq!(register_path(""), "/prpc/Gateway.RegisterCvm?json");
        assert_eq!(register_path("/x/"), "/x/prpc/Gateway.RegisterCvm?json");
        assert_eq!(register_path("/prpc"), "/prpc/Gateway.RegisterCvm?json");
        let urls: Vec<String> = ["a", "b", "c"].iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(order_urls(&urls, None), ["a", "b", "c"]);
        assert_eq!(order_urls(&urls, Some("b")), ["b", "a", "c"]);
        assert_eq!(order_urls(&urls, Some("gone")), ["a", "b", "c"]);
    }

    #[test]
    fn request_json_has_dstack_field_names() {
        let c = compose(
            r#"{"name":"a","port_policy":{"ports":[{"port":443,"pp":true}],"restrict_mode":true}}"#,
        );
        let req = RegisterCvmRequest::new(&[7u8; 32], &c);
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "client_public_key": encode_key(&[7u8; 32]),
                "port_policy": {"ports": [{"port": 443, "pp": true}], "restrict_mode": true}
            })
        );
        let plain = serde_json::to_value(RegisterCvmRequest::new(
            &[0; 32],
            &compose(r#"{"name":"a"}"#),
        ))
        .unwrap();
        assert_eq!(
            plain["port_policy"],
            serde_json::json!({"ports": [], "restrict_mode": false})
        );
    }

    #[test]
    fn response_is_checked_and_peers_sorted() {
        let k1 = encode_key(&[0xF0; 32]);
        let k2 = encode_key(&[0x01; 32]);
        let body = serde_json::json!({
            "wg": {"client_ip": "10.4.0.7", "servers": [
                {"pk": k1, "ip": "10.4.0.1/16", "endpoint": "gw.example:51820"},
                {"pk": k2, "ip": "10.4.0.2", "endpoint": "[fd00::1]:9"}
            ]},
            "agent": {"external_port": 8090, "internal_port": 8090, "domain": "app.test"},
            "gateways": [{"id": 1}]
        });
        let cfg = parse_response(body.to_string().as_bytes()).unwrap();
        assert_eq!(cfg.client_ip, Ipv4Addr::new(10, 4, 0, 7));
        assert_eq!(cfg.domain, "app.test");
        // Sorted by the base64 text, as dstack sorts `pk`: "8PDw…" < "AQEB…".
        assert_eq!(cfg.peers[1].public_key, [0x01; 32]);
        assert_eq!(cfg.peers[1].endpoint_host, "fd00::1");
        assert_eq!(cfg.peers[0].ip, Ipv4Addr::new(10, 4, 0, 1));
        assert_eq!(cfg.peers[0].endpoint_port, 51820);
    }

    #[test]
    fn bad_responses_are_typed_errors() {
        let key = encode_key(&[1; 32]);
        let cases = [
            ("not json".to_owned(), "Decode"),
            ("{}".to_owned(), "MissingWireGuard"),
            (r#"{"wg":{"client_ip":"x","servers":[]}}"#.to_owned(), "ClientIp"),
            (r#"{"wg":{"client_ip":"10.0.0.1","servers":[]}}"#.to_owned(), "PeerCount"),
            (
                r#"{"wg":{"client_ip":"10.0.0.1","servers":[{"pk":"AAAA","ip":"10.0.0.2","endpoint":"h:1"}]}}"#.to_owned(),
                "PeerKey",
            ),
            (
                format!(r#"{{"wg":{{"client_ip":"10.0.0.1","servers":[{{"pk":"{key}","ip":"::1","endpoint":"h:1"}}]}}}}"#),
                "PeerIp",
            ),
            (
                format!(r#"{{"wg":{{"client_ip":"10.0.0.1","servers":[{{"pk":"{key}","ip":"10.0.0.2","endpoint":"h:0"}}]}}}}"#),
                "PeerEndpoint",
            ),
            (
                format!(r#"{{"wg":{{"client_ip":"10.0.0.1","servers":[{{"pk":"{key}","ip":"10.0.0.2","endpoint":"a b:1"}}]}}}}"#),
                "PeerEndpoint",
            ),
        ];
        for (body, want) in cases {
            let err = parse_response(body.as_bytes()).unwrap_err();
            assert!(format!("{err:?}").starts_with(want), "{body}: {err:?}");
        }
    }

    #[test]
    fn keys_round_trip() {
        let k = [0xAB; 32];
        assert_eq!(decode_key(&encode_key(&k)), Some(k));
        assert_eq!(decode_key("AAAA"), None);
        assert_eq!(decode_key("!!"), None);
    }

    #[test]
    fn endpoint_prefers_ipv4_then_ipv6() {
        let v4: SocketAddr = "10.0.2.2:51820".parse().unwrap();
        let v6: SocketAddr = "[fd00::1]:9".parse().unwrap();
        let v6b: SocketAddr = "[2001:db8::2]:9".parse().unwrap();
        assert_eq!(choose_endpoint(&[v6, v4]), Some(v4));
        assert_eq!(choose_endpoint(&[v6, v6b]), Some(v6));
        assert_eq!(choose_endpoint(&[v4]), Some(v4));
        assert_eq!(choose_endpoint(&[]), None);
    }

    #[test]
    fn renewal_is_due_after_two_thirds_of_the_validity() {
        let issued = 1_700_000_000;
        let not_after = issued + CERT_VALIDITY_SECS;
        // 10 days: due from 6 days 16 hours (576 000 s) on.
        assert!(!renewal_due(issued, not_after, issued));
        assert!(!renewal_due(issued, not_after, issued + 575_999));
        assert!(renewal_due(issued, not_after, issued + 576_000));
        assert!(renewal_due(issued, not_after, not_after));
        assert!(renewal_due(issued, not_after, not_after + 1));
        // A clock before the issue time renews nothing (the certificate is not expired).
        assert!(!renewal_due(issued, not_after, issued - 100));
        // The test fault's 80 s certificate: due at the first round (60 s), not before 54 s.
        let short = issued + TEST_CERT_VALIDITY_SECS;
        assert!(!renewal_due(issued, short, issued + 53));
        assert!(renewal_due(issued, short, issued + 54));
        assert!(renewal_due(issued, short, issued + 60));
        // An empty (or inverted) validity is always due.
        assert!(renewal_due(issued, issued, issued));
        assert!(renewal_due(issued, issued - 5, issued));
    }

    #[test]
    fn a_restarted_refresher_rounds_at_once() {
        let s = RefreshSchedule::default();
        assert_eq!(s.first_wait(false), Duration::from_secs(60));
        assert_eq!(s.first_wait(true), Duration::ZERO);
    }

    #[test]
    fn refresh_backs_off_and_resets() {
        let mut s = RefreshSchedule::new(Duration::from_secs(60), Duration::from_secs(5));
        assert_eq!(s.on_failure(), Duration::from_secs(5));
        assert_eq!(s.on_failure(), Duration::from_secs(10));
        assert_eq!(s.on_failure(), Duration::from_secs(20));
        assert_eq!(s.on_failure(), Duration::from_secs(40));
        assert_eq!(s.on_failure(), Duration::from_secs(60));
        for _ in 0..40 {
            assert!(s.on_failure() <= Duration::from_secs(60));
        }
        assert_eq!(s.on_success(), Duration::from_secs(60));
        assert_eq!(s.failures(), 0);
        assert_eq!(s.on_failure(), Duration::from_secs(5));
    }
}
