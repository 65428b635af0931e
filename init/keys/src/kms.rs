//! The dstack KMS protocol, guest side (`shared/specs/dstack-guest.md` §5.1-5.2), without I/O:
//! the HTTP/TLS exchange sits behind [`KmsTransport`] (the rustls implementation is
//! [`crate::transport::TlsTransport`]).
//!
//! Per KMS URL: `GetTempCaCert` over TLS without server verification → `{temp_ca_cert,
//! temp_ca_key, ca_cert}`; the KMS root key (SPKI of `ca_cert`) must equal app-compose's
//! `key_provider_id` when that is set (checked *before* any quote is sent); an RA-TLS client
//! certificate (see [`crate::ratls::client_certificate`]) signed by the temporary CA; then
//! `GetAppKey{api_version: 1, vm_config}` over mutual TLS that trusts only `ca_cert` and requires
//! the `kms:rpc` usage on the server certificate. The URLs are tried in order, the whole list
//! at most [`RetryPolicy::rounds`] times with exponential backoff between rounds; a KMS that
//! answers with a refusal is not asked again. Every failure is kept, typed, in
//! [`KmsError::AllKmsFailed`].

use std::time::Duration;

use init_core::tee::{EventLogVersion, QuoteSource, RuntimeEvent};
use serde::{Deserialize, Serialize};

use crate::provider::{
    ProviderError, check_key_provider_pin, key_provider_event, os_image_hash_event,
};
use crate::ratls::{CaSigner, RaTlsError, client_certificate};
use crate::secret::{Secret, SecretBytes, SecretKey32, SecretString};

/// Largest KMS response body.
pub const MAX_RESPONSE_LEN: usize = 1024 * 1024;

/// Errors of talking to one KMS.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    /// A `kms_urls` entry is not `https://host[:port][/path]`.
    #[error("KMS URL {url:?} is not https://host[:port][/path]")]
    ParseUrl { url: String },
    /// No KMS URL is configured.
    #[error("no KMS URL in sys-config kms_urls")]
    NoKmsUrl,
    /// Connecting, TLS or HTTP failed.
    #[error("{method} at {url}")]
    Transport {
        url: String,
        method: &'static str,
        #[source]
        source: TransportError,
    },
    /// The KMS answered with an error status.
    #[error("{method} at {url} was refused with HTTP {status}: {message}")]
    Refused {
        url: String,
        method: &'static str,
        status: u16,
        message: String,
    },
    /// The response is not the expected JSON.
    #[error("{method} at {url}: response is not valid JSON of the expected shape")]
    DecodeResponse {
        url: String,
        method: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A response field has the wrong length or encoding.
    #[error("{method} at {url}: field {field} is malformed")]
    InvalidField {
        url: String,
        method: &'static str,
        field: &'static str,
    },
    /// The KMS root CA certificate cannot be read.
    #[error("KMS root CA certificate from {url} is not a P-256 X.509 certificate")]
    ParseRootCa { url: String },
    /// The KMS root key is not the pinned `key_provider_id`.
    #[error("KMS at {url} is not the pinned key provider")]
    KeyProviderPin {
        url: String,
        #[source]
        source: Box<ProviderError>,
    },
    /// The root CA of `GetAppKey` differs from the one of `GetTempCaCert`.
    #[error("KMS at {url} changed its root CA between calls")]
    RootCaChanged { url: String },
    /// Loading the temporary CA or building the client certificate failed.
    #[error("build the RA-TLS client certificate for {url}")]
    ClientCertificate {
        url: String,
        #[source]
        source: Box<RaTlsError>,
    },
    /// Every KMS failed; one entry per attempt, in order.
    #[error("no KMS gave app keys after {} attempts: {}", failures.len(), summary(failures))]
    AllKmsFailed { failures: Vec<KmsError> },
}

fn summary(failures: &[KmsError]) -> String {
    failures
        .iter()
        .map(|f| crate::error_chain(f))
        .collect::<Vec<_>>()
        .join("; ")
}

impl KmsError {
    /// True when asking the same KMS again may succeed (network, TLS, 5xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Refused { status, .. } => *status >= 500 && *status != 501,
            _ => false,
        }
    }
}

/// Errors of the transport (connect, TLS, HTTP framing).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Name resolution failed or gave no address.
    #[error("resolve {host}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    /// TCP connect failed.
    #[error("connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// TLS configuration failed.
    #[error("configure TLS")]
    ConfigureTls {
        #[source]
        source: rustls::Error,
    },
    /// The TLS handshake or record layer failed (including a rejected server certificate).
    #[error("TLS with {host}")]
    Tls {
        host: String,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP response is malformed or too large.
    #[error("malformed HTTP response: {reason}")]
    Http { reason: &'static str },
}

/// A parsed `kms_urls` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsUrl {
    /// The entry as configured.
    pub url: String,
    /// Host name or IP address (brackets removed).
    pub host: String,
    /// TCP port (443 by default).
    pub port: u16,
    /// Path prefix without trailing slash (may be empty).
    pub base_path: String,
}

impl KmsUrl {
    /// Parses `https://host[:port][/path]`.
    pub fn parse(url: &str) -> Result<Self, KmsError> {
        let err = || KmsError::ParseUrl {
            url: url.to_owned(),
        };
        let rest = url.strip_prefix("https://").ok_or_else(err)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(err)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| err())?,
                None if after.is_empty() => 443,
                None => return Err(err()),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| err())?),
                None => (authority, 443),
            }
        };
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b));
        if !host_ok || authority.contains('@') || path.contains(['?', '#']) {
            return Err(err());
        }
        Ok(Self {
            url: url.to_owned(),
            host: host.to_owned(),
            port,
            base_path: path.to_owned(),
        })
    }

    /// `<base>/prpc/KMS.<method>?json`.
    pub fn rpc_path(&self, method: &str) -> String {
        format!("{}/prpc/KMS.{method}?json", self.base_path)
    }
}

/// How the transport authenticates the server (and itself).
#[derive(Debug)]
pub enum TlsMode<'a> {
    /// No server verification (only for `GetTempCaCert`, whose answer is checked against the
    /// `key_provider_id` pin and then only used as the trust anchor).
    DangerUnverified,
    /// Trust only `root_ca_der`; the server certificate must carry the `kms:rpc` usage; present
    /// the client certificate.
    Mutual {
        /// The KMS root CA (DER).
        root_ca_der: &'a [u8],
        /// Client certificate (DER).
        client_cert_der: &'a [u8],
        /// Client key (PKCS#8 DER).
        client_key_der: &'a SecretBytes,
    },
    /// A dstack-gateway: trust only `root_ca_der` (the KMS root); the server certificate must
    /// carry the app-id extension `app_id` (`None`: the KMS's `gateway_app_id` is `any`, and
    /// the server is not checked, as dstack's `tls_no_check`); present `client_chain_der`
    /// (leaf first, the `SignCert` chain).
    Gateway {
        /// The KMS root CA (DER).
        root_ca_der: &'a [u8],
        /// The gateway's app id (raw bytes), or `None` for any server.
        app_id: Option<&'a [u8]>,
        /// Client certificate chain (DER, leaf first).
        client_chain_der: &'a [Vec<u8>],
        /// Client key (PKCS#8 DER).
        client_key_der: &'a SecretBytes,
    },
}

/// An HTTP response. The body (which carries key material for `GetAppKey`) is zeroized on
/// drop and not shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// What a refusing server said: the `error` field of a JSON body (as dstack's services
    /// answer), else the body's first 512 characters.
    pub fn refusal_message(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&self.body)
                    .chars()
                    .take(512)
                    .collect()
            })
    }
}

impl std::fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpResponse")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Drop for HttpResponse {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.body);
    }
}

/// One HTTPS POST with a JSON body.
pub trait KmsTransport {
    /// POSTs `body` to `path` at `url`'s host and port with `tls`.
    fn post(
        &mut self,
        url: &KmsUrl,
        path: &str,
        body: &[u8],
        tls: TlsMode<'_>,
    ) -> Result<HttpResponse, TransportError>;
}

/// Sleeps between rounds (a trait so tests do not wait).
pub trait Sleeper {
    /// Sleeps for `duration`.
    fn sleep(&mut self, duration: Duration);
}

/// [`Sleeper`] with `std::thread::sleep`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadSleeper;

impl Sleeper for ThreadSleeper {
    fn sleep(&mut self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// Retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How many times the URL list is tried (≥ 1).
    pub rounds: u32,
    /// Pause after the first failed round; doubled after each further round.
    pub initial_backoff: Duration,
    /// Longest pause.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            rounds: 3,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(8),
        }
    }
}

/// `GetTempCaCert` response.
#[derive(Debug, Deserialize)]
struct TempCaResponse {
    temp_ca_cert: String,
    temp_ca_key: String,
    ca_cert: String,
}

/// `GetAppKey` request.
#[derive(Debug, Serialize)]
pub struct GetAppKeyRequest<'a> {
    /// Always 1.
    pub api_version: u32,
    /// sys-config `vm_config`, verbatim.
    pub vm_config: &'a str,
}

/// `GetAppKey` response (protobuf `bytes` are hex strings in pRPC JSON).
#[derive(Deserialize, Serialize, Default)]
pub struct AppKeyResponse {
    /// KMS root CA (PEM).
    #[serde(default)]
    pub ca_cert: String,
    /// hex
    #[serde(default)]
    pub disk_crypt_key: String,
    /// hex
    #[serde(default)]
    pub env_crypt_key: String,
    /// hex
    #[serde(default)]
    pub k256_key: String,
    /// hex
    #[serde(default)]
    pub k256_signature: String,
    /// Deprecated alias of `gateway_app_id`.
    #[serde(default)]
    pub tproxy_app_id: String,
    /// Gateway app-id.
    #[serde(default)]
    pub gateway_app_id: String,
    /// hex
    #[serde(default)]
    pub os_image_hash: String,
}

impl std::fmt::Debug for AppKeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppKeyResponse(<redacted>)")
    }
}

impl zeroize::Zeroize for AppKeyResponse {
    fn zeroize(&mut self) {
        self.disk_crypt_key.zeroize();
        self.env_crypt_key.zeroize();
        self.k256_key.zeroize();
    }
}

impl Drop for AppKeyResponse {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(self);
    }
}

/// The app keys from a KMS.
#[derive(Debug)]
pub struct AppKeys {
    /// The URL that answered.
    pub kms_url: String,
    /// KMS root CA (PEM), the trust anchor.
    pub ca_cert_pem: String,
    /// SubjectPublicKeyInfo DER of the root CA key: the key-provider id.
    pub root_spki_der: Vec<u8>,
    /// Data-disk key.
    pub disk_crypt_key: SecretKey32,
    /// X25519 env key (`None` when the KMS sent none).
    pub env_crypt_key: Option<SecretKey32>,
    /// secp256k1 app key.
    pub k256_key: SecretKey32,
    /// The KMS's recoverable signature over the k256 app public key.
    pub k256_signature: Vec<u8>,
    /// Gateway app-id.
    pub gateway_app_id: String,
    /// OS image hash as the KMS saw it (32 bytes, or empty).
    pub os_image_hash: Vec<u8>,
    /// The temporary CA certificate (PEM), kept for later KMS calls.
    pub temp_ca_cert_pem: String,
    /// The temporary CA key (PEM).
    pub temp_ca_key_pem: SecretString,
}

impl AppKeys {
    /// The events to extend after the key request, in dstack's order: `os-image-hash` (when
    /// the KMS sent one) then `key-provider` `{"name":"kms","id":<hex root SPKI>}`.
    pub fn key_events(&self, version: EventLogVersion) -> Vec<RuntimeEvent> {
        let mut events = Vec::new();
        if !self.os_image_hash.is_empty() {
            events.push(os_image_hash_event(&self.os_image_hash, version));
        }
        events.push(key_provider_event(
            &init_core::tee::events::KeyProviderInfo::kms(&self.root_spki_der),
            version,
        ));
        events
    }

    /// The guest API's `.appkeys.json`: dstack's `AppKeys` layout (`Kms` key provider) with
    /// only what the guest API uses — the k256 app key and its signature, the KMS root and the
    /// temporary CA for `SignCert`. The disk and env keys are left out: the guest API never
    /// needs them, so a compromised guest API cannot leak them. Every intermediate copy of a
    /// key is zeroized.
    pub fn to_appkeys_json(&self) -> SecretString {
        #[derive(Serialize)]
        struct Kms<'a> {
            url: &'a str,
            pubkey: &'a str,
            tmp_ca_key: &'a str,
            tmp_ca_cert: &'a str,
        }
        #[derive(Serialize)]
        struct Provider<'a> {
            #[serde(rename = "Kms")]
            kms: Kms<'a>,
        }
        #[derive(Serialize)]
        struct Out<'a> {
            k256_key: &'a str,
            k256_signature: &'a str,
            gateway_app_id: &'a str,
            ca_cert: &'a str,
            key_provider: Provider<'a>,
        }
        let k256_key = zeroize::Zeroizing::new(hex::encode(self.k256_key.expose()));
        let pubkey = hex::encode(&self.root_spki_der);
        let signature = hex::encode(&self.k256_signature);
        let out = Out {
            k256_key: &k256_key,
            k256_signature: &signature,
            gateway_app_id: &self.gateway_app_id,
            ca_cert: &self.ca_cert_pem,
            key_provider: Provider {
                kms: Kms {
                    url: &self.kms_url,
                    pubkey: &pubkey,
                    tmp_ca_key: self.temp_ca_key_pem.expose(),
                    tmp_ca_cert: &self.temp_ca_cert_pem,
                },
            },
        };
        // Serializing borrowed strings into one buffer leaves no other copy.
        Secret::new(serde_json::to_string(&out).unwrap_or_default())
    }
}

/// What the init passes in.
#[derive(Debug, Clone)]
pub struct KeyRequest<'a> {
    /// sys-config `kms_urls`, in order.
    pub kms_urls: &'a [String],
    /// sys-config `vm_config`, verbatim.
    pub vm_config: &'a str,
    /// app-compose `key_provider_id` (hex; empty = not pinned).
    pub key_provider_id: &'a str,
    /// "Now" for the client certificate's notAfter (Unix seconds).
    pub now_unix: u64,
    /// Retries.
    pub retry: RetryPolicy,
}

fn decode_json<T: for<'de> Deserialize<'de>>(
    url: &KmsUrl,
    method: &'static str,
    response: &HttpResponse,
) -> Result<T, KmsError> {
    if response.status != 200 {
        let message = response.refusal_message();
        return Err(KmsError::Refused {
            url: url.url.clone(),
            method,
            status: response.status,
            message,
        });
    }
    serde_json::from_slice(&response.body).map_err(|source| KmsError::DecodeResponse {
        url: url.url.clone(),
        method,
        source,
    })
}

/// The DER and SPKI of a PEM certificate.
pub fn certificate_der_and_spki(pem: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    use der::{Decode as _, Encode as _};
    let der = pem_block(pem, "CERTIFICATE")?;
    let cert = x509_cert::Certificate::from_der(&der).ok()?;
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .ok()?;
    Some((der, spki))
}

/// The base64 body of the first PEM block labelled `label`.
pub fn pem_block(pem: &str, label: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let body: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

fn hex_key32(url: &KmsUrl, field: &'static str, text: &str) -> Result<SecretKey32, KmsError> {
    let mut out = Secret::new([0u8; 32]);
    hex::decode_to_slice(text, out.expose_mut()).map_err(|_| KmsError::InvalidField {
        url: url.url.clone(),
        method: "GetAppKey",
        field,
    })?;
    Ok(out)
}

/// Asks one KMS for the app keys.
pub fn request_from(
    transport: &mut dyn KmsTransport,
    tee: &mut dyn QuoteSource,
    events: &[RuntimeEvent],
    url: &KmsUrl,
    request: &KeyRequest<'_>,
) -> Result<AppKeys, KmsError> {
    let transport_err = |method, source| KmsError::Transport {
        url: url.url.clone(),
        method,
        source,
    };
    let response = transport
        .post(
            url,
            &url.rpc_path("GetTempCaCert"),
            b"{}",
            TlsMode::DangerUnverified,
        )
        .map_err(|source| transport_err("GetTempCaCert", source))?;
    let temp: TempCaResponse = decode_json(url, "GetTempCaCert", &response)?;
    let temp_ca_key_pem = Secret::new(temp.temp_ca_key);
    let (root_der, root_spki) =
        certificate_der_and_spki(&temp.ca_cert).ok_or_else(|| KmsError::ParseRootCa {
            url: url.url.clone(),
        })?;
    check_key_provider_pin(request.key_provider_id, &root_spki).map_err(|source| {
        KmsError::KeyProviderPin {
            url: url.url.clone(),
            source: Box::new(source),
        }
    })?;
    let client_err = |source| KmsError::ClientCertificate {
        url: url.url.clone(),
        source: Box::new(source),
    };
    let temp_ca = CaSigner::from_pem("temporary", &temp.temp_ca_cert, temp_ca_key_pem.expose())
        .map_err(client_err)?;
    let client = client_certificate(&temp_ca, tee, events, request.now_unix).map_err(client_err)?;
    let client_key = client.key_der().map_err(client_err)?;
    let body = serde_json::to_vec(&GetAppKeyRequest {
        api_version: 1,
        vm_config: request.vm_config,
    })
    .map_err(|source| KmsError::DecodeResponse {
        url: url.url.clone(),
        method: "GetAppKey",
        source,
    })?;
    let response = transport
        .post(
            url,
            &url.rpc_path("GetAppKey"),
            &body,
            TlsMode::Mutual {
                root_ca_der: &root_der,
                client_cert_der: &client.cert_der,
                client_key_der: &client_key,
            },
        )
        .map_err(|source| transport_err("GetAppKey", source))?;
    let keys: AppKeyResponse = decode_json(url, "GetAppKey", &response)?;
    match certificate_der_and_spki(&keys.ca_cert) {
        Some((_, spki)) if spki == root_spki => {}
        _ => {
            return Err(KmsError::RootCaChanged {
                url: url.url.clone(),
            });
        }
    }
    let invalid = |field| KmsError::InvalidField {
        url: url.url.clone(),
        method: "GetAppKey",
        field,
    };
    let env_crypt_key = if keys.env_crypt_key.is_empty() {
        None
    } else {
        Some(hex_key32(url, "env_crypt_key", &keys.env_crypt_key)?)
    };
    let k256_signature = hex::decode(&keys.k256_signature)
        .ok()
        .filter(|s| s.len() == 65)
        .ok_or_else(|| invalid("k256_signature"))?;
    let os_image_hash = hex::decode(&keys.os_image_hash)
        .ok()
        .filter(|h| h.is_empty() || h.len() == 32)
        .ok_or_else(|| invalid("os_image_hash"))?;
    let gateway_app_id = if keys.gateway_app_id.is_empty() {
        keys.tproxy_app_id.clone()
    } else {
        keys.gateway_app_id.clone()
    };
    Ok(AppKeys {
        kms_url: url.url.clone(),
        ca_cert_pem: keys.ca_cert.clone(),
        root_spki_der: root_spki,
        disk_crypt_key: hex_key32(url, "disk_crypt_key", &keys.disk_crypt_key)?,
        env_crypt_key,
        k256_key: hex_key32(url, "k256_key", &keys.k256_key)?,
        k256_signature,
        gateway_app_id,
        os_image_hash,
        temp_ca_cert_pem: temp.temp_ca_cert,
        temp_ca_key_pem,
    })
}

/// Asks the KMSs in order, with the retry policy. `events` is the RTMR3 log so far (up to
/// `boot-mr-done`); the caller extends [`AppKeys::key_events`] afterwards.
pub fn request_app_keys(
    transport: &mut dyn KmsTransport,
    tee: &mut dyn QuoteSource,
    events: &[RuntimeEvent],
    request: &KeyRequest<'_>,
    sleeper: &mut dyn Sleeper,
) -> Result<AppKeys, KmsError> {
    if request.kms_urls.is_empty() {
        return Err(KmsError::NoKmsUrl);
    }
    let urls: Vec<KmsUrl> = request
        .kms_urls
        .iter()
        .map(|u| KmsUrl::parse(u))
        .collect::<Result<_, _>>()?;
    let mut failures = Vec::new();
    let mut retry_urls: Vec<&KmsUrl> = urls.iter().collect();
    let mut backoff = request.retry.initial_backoff;
    for round in 0..request.retry.rounds.max(1) {
        if round > 0 {
            sleeper.sleep(backoff);
            backoff = (backoff * 2).min(request.retry.max_backoff);
        }
        let mut next = Vec::new();
        for url in retry_urls {
            match request_from(transport, tee, events, url, request) {
                Ok(keys) => return Ok(keys),
                Err(err) => {
                    log::warn!("KMS {}: {}", url.url, crate::error_chain(&err));
                    if err.is_retryable() {
                        next.push(url);
                    }
                    failures.push(err);
                }
            }
        }
        if next.is_empty() {
            break;
        }
        retry_urls = next;
    }
    Err(KmsError::AllKmsFailed { failures })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = KmsUrl::parse("https://kms.example:8000").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.base_path.as_str()),
            ("kms.example", 8000, "")
        );
        assert_eq!(u.rpc_path("GetAppKey"), "/prpc/KMS.GetAppKey?json");
        let u = KmsUrl::parse("https://10.0.2.2/kms/").unwrap();
        assert_eq!((u.port, u.base_path.as_str()), (443, "/kms"));
        let u = KmsUrl::parse("https://[::1]:9").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        for bad in [
            "http://kms:1",
            "https://",
            "https://a:b",
            "https://u@h",
            "https://h/p?q",
            "kms",
            "https://[::1",
        ] {
            assert!(
                matches!(KmsUrl::parse(bad), Err(KmsError::ParseUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn pem_blocks() {
        let pem = "junk\n-----BEGIN CERTIFICATE-----\nAAEC\nAw==\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_block(pem, "CERTIFICATE"), Some(vec![0, 1, 2, 3]));
        assert_eq!(pem_block(pem, "PRIVATE KEY"), None);
        assert_eq!(certificate_der_and_spki(pem), None);
    }

    #[test]
    fn appkeys_json_round_trip() {
        let keys = AppKeys {
            kms_url: "https://k".into(),
            ca_cert_pem: "PEM".into(),
            root_spki_der: vec![1, 2],
            disk_crypt_key: Secret::new([1; 32]),
            env_crypt_key: Some(Secret::new([2; 32])),
            k256_key: Secret::new([3; 32]),
            k256_signature: vec![4; 65],
            gateway_app_id: String::new(),
            os_image_hash: vec![],
            temp_ca_cert_pem: "T".into(),
            temp_ca_key_pem: Secret::new("K".into()),
        };
        let json = keys.to_appkeys_json();
        let v: serde_json::Value = serde_json::from_str(json.expose()).unwrap();
        assert_eq!(v["key_provider"]["Kms"]["pubkey"], "0102");
        // The guest API never gets the disk or the env key.
        assert!(v.get("disk_crypt_key").is_none() && v.get("env_crypt_key").is_none());
        assert!(!json.expose().contains(&"01".repeat(32)));
        assert!(!json.expose().contains(&"02".repeat(32)));
        let back = GuestKeys::from_appkeys_json(json.expose().as_bytes()).unwrap();
        assert_eq!(back.k256_key.expose(), &[3; 32]);
        assert_eq!(back.k256_signature, vec![4; 65]);
        assert_eq!(back.ca_cert_pem, "PEM");
        let kms = back.kms.as_ref().unwrap();
        assert_eq!(
            (
                kms.url.as_str(),
                kms.root_ca_pem.as_str(),
                kms.temp_ca_cert_pem.as_str()
            ),
            ("https://k", "PEM", "T")
        );
        assert_eq!(kms.temp_ca_key_pem.expose(), "K");
        assert!(!format!("{back:?}").contains("0303"));
        assert!(!format!("{back:?}").contains("\"K\""));
        assert_eq!(
            GuestKeys::from_appkeys_json(br#"{"k256_key":"00"}"#).unwrap_err(),
            GuestKeysError::InvalidField { field: "k256_key" }
        );
        assert_eq!(
            GuestKeys::from_appkeys_json(b"[]").unwrap_err(),
            GuestKeysError::Parse
        );
    }

    #[test]
    fn app_key_response_debug_is_redacted() {
        let mut r = AppKeyResponse::default();
        r.disk_crypt_key = "aa".repeat(32);
        assert!(!format!("{r:?}").contains("aaaa"));
    }
}

/// The keys the guest API needs, read back from [`AppKeys::to_appkeys_json`] (dstack's
/// `.appkeys.json`).
#[derive(Debug)]
pub struct GuestKeys {
    /// secp256k1 app key.
    pub k256_key: SecretKey32,
    /// The KMS's signature over the k256 app public key.
    pub k256_signature: Vec<u8>,
    /// The KMS root CA (PEM).
    pub ca_cert_pem: String,
    /// How to reach the KMS again (`key_provider.Kms`), for `SignCert`; `None` for other
    /// key providers.
    pub kms: Option<crate::sign_cert::KmsAccess>,
}

/// Errors of reading `.appkeys.json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestKeysError {
    /// The file is not JSON with the expected fields (the parser's text is not kept: it could
    /// quote key bytes).
    #[error(".appkeys.json is not dstack AppKeys JSON")]
    Parse,
    /// A key field is not 32 bytes of hex.
    #[error(".appkeys.json field {field} is malformed")]
    InvalidField { field: &'static str },
}

#[derive(Deserialize)]
struct RawGuestKeys {
    k256_key: String,
    #[serde(default)]
    k256_signature: String,
    #[serde(default)]
    ca_cert: String,
    #[serde(default)]
    key_provider: Option<RawKeyProvider>,
}

#[derive(Deserialize)]
struct RawKeyProvider {
    #[serde(rename = "Kms")]
    kms: Option<RawKmsProvider>,
}

#[derive(Deserialize)]
struct RawKmsProvider {
    url: String,
    #[serde(default)]
    tmp_ca_key: String,
    #[serde(default)]
    tmp_ca_cert: String,
}

impl Drop for RawGuestKeys {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.k256_key);
        if let Some(RawKeyProvider { kms: Some(kms) }) = &mut self.key_provider {
            zeroize::Zeroize::zeroize(&mut kms.tmp_ca_key);
        }
    }
}

impl GuestKeys {
    /// Parses `.appkeys.json`.
    pub fn from_appkeys_json(bytes: &[u8]) -> Result<Self, GuestKeysError> {
        let raw: RawGuestKeys = serde_json::from_slice(bytes).map_err(|_| GuestKeysError::Parse)?;
        let mut k256_key = Secret::new([0u8; 32]);
        hex::decode_to_slice(&raw.k256_key, k256_key.expose_mut())
            .map_err(|_| GuestKeysError::InvalidField { field: "k256_key" })?;
        let k256_signature =
            hex::decode(&raw.k256_signature).map_err(|_| GuestKeysError::InvalidField {
                field: "k256_signature",
            })?;
        let kms = match &raw.key_provider {
            Some(RawKeyProvider { kms: Some(kms) }) if !kms.tmp_ca_key.is_empty() => {
                Some(crate::sign_cert::KmsAccess {
                    url: kms.url.clone(),
                    root_ca_pem: raw.ca_cert.clone(),
                    temp_ca_cert_pem: kms.tmp_ca_cert.clone(),
                    temp_ca_key_pem: Secret::new(kms.tmp_ca_key.clone()),
                })
            }
            _ => None,
        };
        Ok(Self {
            k256_key,
            k256_signature,
            ca_cert_pem: raw.ca_cert.clone(),
            kms,
        })
    }
}
