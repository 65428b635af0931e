//! The dstack guest-agent methods (`shared/specs/dstack-guest.md` §8) on top of [`ApiState`]:
//! routing by path, JSON arguments, and JSON replies in the shapes the dstack SDKs parse.
//!
//! * `DstackGuest` (`dstack.sock`, paths `/<Method>`, `/prpc/<Method>`,
//!   `/prpc/DstackGuest.<Method>`): `Info`, `GetQuote`, `Attest`, `EmitEvent`, `GetKey`,
//!   `GetTlsKey`, `Sign`, `Verify`, `GpuInfo`, `Version`.
//! * `Tappd` (`tappd.sock`, paths `/prpc/Tappd.<Method>`, `/prpc/<Method>`, `/<Method>`):
//!   `Info`, `TdxQuote`, `RawQuote`, `DeriveKey`, `DeriveK256Key`, `Version`.
//! * `GetKey`, `Sign`, `DeriveK256Key` (with app keys from the key provider, `--app-keys`):
//!   `cvm_keys::app_sign` — HKDF-SHA256 (salt `RATLS`) of the k256 app key with the path, a
//!   secp256k1 or ed25519 key, and the chain [app key's recoverable signature over
//!   Keccak-256(`purpose:hex(pubkey)`), KMS signature over the app key]; `Sign` uses path
//!   `vms`, purpose `signing`. `Verify` needs no keys.
//! * `GetTlsKey` (with a KMS key provider): a fresh P-256 key certified by the app CA through
//!   the KMS `SignCert` call (`cvm_keys::sign_cert`): the CSR carries a quote binding the key
//!   and the RTMR3 log, the connection is the same mutual RA-TLS as the init's `GetAppKey`
//!   (temporary CA and KMS root from `.appkeys.json`), and the reply chain
//!   `[leaf, app CA, KMS root]` is checked (leaf = our key, path validation to the KMS root)
//!   before it is returned as `{key: PEM, certificate_chain: [PEM…]}`.
//! * `Attest`: dstack's SCALE `VersionedAttestation` V0 (quote, event log, runtime events,
//!   report data, .sys-config.json).
//! * `DeriveKey` (Tappd, KMS key provider): the P-256 key HKDF(k256 app key, path) (or a random
//!   one for `random_seed`) certified through `SignCert` like `GetTlsKey`.
//!
//! Arguments come as a JSON object in a POST body (empty body = `{}`) or as GET query pairs;
//! byte fields are hex; missing fields take protobuf defaults; unknown fields are ignored.
//! Errors are `{"error": "<message with cause chain>"}` with a 4xx/5xx status.

use init_core::tee::events::EventLogError;
use init_core::tee::report_data::{self, ReportDataError};
use init_core::tee::{REPORT_DATA_LEN, RtmrIndex, Tee};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::http::{Method, Request, Response, Status, query_to_json};
use crate::state::{ApiState, ExposedEvent, StateError};

/// Which API a socket speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `DstackGuest` on `/var/run/dstack.sock`.
    DstackGuest,
    /// Legacy `Tappd` on `/var/run/tappd.sock`.
    Tappd,
}

/// Errors of one API call; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No such method on this socket.
    #[error("unknown method {path:?}")]
    UnknownMethod { path: String },
    /// The method needs app keys and this boot has none (key provider `none`).
    #[error("{method} is not available: this boot has no app keys")]
    KeysNotAvailable { method: &'static str },
    /// `GetTlsKey`/`DeriveKey` need a KMS (the key provider of this boot is not one).
    #[error("{method} is not available: this boot's key provider is not a KMS")]
    NoKmsForTlsKey { method: &'static str },
    /// `GetTlsKey` with `not_before` not before `not_after` (dstack refuses it too).
    #[error("not_before ({not_before}) must be earlier than not_after ({not_after})")]
    CertValidity { not_before: u64, not_after: u64 },
    /// The KMS `SignCert` call failed or was refused.
    #[error("get a certificate from the KMS")]
    SignCert {
        #[source]
        source: cvm_keys::sign_cert::SignCertError,
    },
    /// `Sign`/`GetKey`/`Verify`/`DeriveKey` could not derive, sign or parse a key.
    #[error("{method}")]
    AppKey {
        method: &'static str,
        #[source]
        source: cvm_keys::app_sign::AppSignError,
    },
    /// `TdxQuote` with a hash algorithm dstack does not accept.
    #[error("invalid hash algorithm {name:?}")]
    UnsupportedHash { name: String },
    /// `TdxQuote`'s `raw` report data is not exactly 64 bytes.
    #[error("raw report data must be exactly 64 bytes, got {len}")]
    RawReportDataLength { len: usize },
    /// Reading the GPU attestation output failed.
    #[error("GpuInfo")]
    GpuInfo {
        #[source]
        source: Box<StateError>,
    },
    /// The query string is malformed.
    #[error("malformed query string")]
    DecodeQuery,
    /// The arguments are not the expected JSON object.
    #[error("decode {method} arguments")]
    DecodeArguments {
        method: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A byte field is not hex.
    #[error("field {field} is not hex")]
    DecodeHex {
        field: &'static str,
        #[source]
        source: hex::FromHexError,
    },
    /// The report data cannot be built.
    #[error("build report data")]
    BuildReportData {
        #[source]
        source: ReportDataError,
    },
    /// EmitEvent without an event name.
    #[error("event name is empty")]
    EmptyEventName,
    /// Extending RTMR3 or logging the event failed or was refused.
    #[error("emit event {name:?}")]
    EmitEvent {
        name: String,
        #[source]
        source: EventLogError,
    },
    /// The TEE failed.
    #[error("{method}")]
    Tee {
        method: &'static str,
        #[source]
        source: Box<StateError>,
    },
}

impl ServiceError {
    /// The status this error answers with.
    pub fn status(&self) -> Status {
        match self {
            Self::UnknownMethod { .. } => Status::NotFound,
            Self::KeysNotAvailable { .. } | Self::NoKmsForTlsKey { .. } => Status::NotImplemented,
            Self::CertValidity { .. } => Status::BadRequest,
            Self::AppKey { source, .. } => match source {
                cvm_keys::app_sign::AppSignError::DeriveKey { .. }
                | cvm_keys::app_sign::AppSignError::SignSecp256k1 => Status::InternalServerError,
                _ => Status::BadRequest,
            },
            Self::UnsupportedHash { .. } | Self::RawReportDataLength { .. } => Status::BadRequest,
            Self::GpuInfo { .. } => Status::InternalServerError,
            Self::SignCert { source } => match source {
                cvm_keys::sign_cert::SignCertError::Refused { .. }
                | cvm_keys::sign_cert::SignCertError::Transport { .. } => {
                    Status::ServiceUnavailable
                }
                _ => Status::InternalServerError,
            },
            Self::DecodeQuery
            | Self::DecodeArguments { .. }
            | Self::DecodeHex { .. }
            | Self::BuildReportData { .. }
            | Self::EmptyEventName => Status::BadRequest,
            Self::EmitEvent { source, .. } => match source {
                EventLogError::ReservedEventName { .. } => Status::Forbidden,
                EventLogError::AppEventBeforeSystemReady { .. } => Status::Conflict,
                EventLogError::EncodeEvent { .. } => Status::BadRequest,
                EventLogError::LogOutOfStep { .. } => Status::ServiceUnavailable,
                EventLogError::AppEventBudget { .. } => Status::TooManyRequests,
                _ => Status::InternalServerError,
            },
            Self::Tee { source, .. } => match **source {
                StateError::AttestV2EventLog => Status::NotImplemented,
                _ => Status::InternalServerError,
            },
        }
    }
}

/// Methods of either service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Info,
    GetQuote,
    Attest,
    EmitEvent,
    GetKey,
    GetTlsKey,
    Sign,
    Verify,
    GpuInfo,
    Version,
    TdxQuote,
    RawQuote,
    DeriveKey,
    DeriveK256Key,
}

fn route(service: Service, path: &str) -> Option<Call> {
    let name = match service {
        Service::DstackGuest => path
            .strip_prefix("/prpc/DstackGuest.")
            .or_else(|| path.strip_prefix("/prpc/"))
            .or_else(|| path.strip_prefix('/'))?,
        Service::Tappd => path
            .strip_prefix("/prpc/Tappd.")
            .or_else(|| path.strip_prefix("/prpc/"))
            .or_else(|| path.strip_prefix('/'))?,
    };
    Some(match (service, name) {
        (_, "Info") => Call::Info,
        (_, "Version") => Call::Version,
        (Service::DstackGuest, "GetQuote") => Call::GetQuote,
        (Service::DstackGuest, "EmitEvent") => Call::EmitEvent,
        (Service::DstackGuest, "GetKey") => Call::GetKey,
        (Service::DstackGuest, "GetTlsKey") => Call::GetTlsKey,
        (Service::DstackGuest, "Sign") => Call::Sign,
        (Service::DstackGuest, "Verify") => Call::Verify,
        (Service::DstackGuest, "Attest") => Call::Attest,
        (Service::DstackGuest, "GpuInfo") => Call::GpuInfo,
        (Service::Tappd, "TdxQuote") => Call::TdxQuote,
        (Service::Tappd, "RawQuote") => Call::RawQuote,
        (Service::Tappd, "DeriveKey") => Call::DeriveKey,
        (Service::Tappd, "DeriveK256Key") => Call::DeriveK256Key,
        _ => return None,
    })
}

/// Handles one request; never panics, always answers.
pub fn dispatch<T: Tee>(state: &ApiState<T>, service: Service, request: &Request) -> Response {
    match call(state, service, request) {
        Ok(value) => Response::ok(value.to_string().into_bytes()),
        Err(error) => {
            let status = error.status();
            let message = log_failure("guest-api", status, &error);
            Response::error(status, &message)
        }
    }
}

/// Logs a failed call (an internal error as an error, a caller's mistake at debug level) and
/// returns its one-line chain for the answer.
pub(crate) fn log_failure(api: &str, status: Status, error: &dyn std::error::Error) -> String {
    let message = init_core::error_chain::one_line(error);
    if status == Status::InternalServerError {
        log::error!("{api}: {message}");
    } else {
        log::debug!("{api}: {message}");
    }
    message
}

pub(crate) fn arguments<A: for<'de> Deserialize<'de>>(
    method: &'static str,
    request: &Request,
) -> Result<A, ServiceError> {
    let value = match (request.head.method, &request.head.query) {
        (Method::Get, Some(query)) => {
            serde_json::Value::Object(query_to_json(query).ok_or(ServiceError::DecodeQuery)?)
        }
        _ if request.body.iter().all(u8::is_ascii_whitespace) => json!({}),
        _ => serde_json::from_slice(&request.body)
            .map_err(|source| ServiceError::DecodeArguments { method, source })?,
    };
    serde_json::from_value(value).map_err(|source| ServiceError::DecodeArguments { method, source })
}

fn from_hex(field: &'static str, text: &str) -> Result<Vec<u8>, ServiceError> {
    hex::decode(text).map_err(|source| ServiceError::DecodeHex { field, source })
}

#[derive(Deserialize)]
struct RawQuoteArgs {
    #[serde(default)]
    report_data: String,
}

#[derive(Deserialize)]
struct TdxQuoteArgs {
    #[serde(default)]
    report_data: String,
    #[serde(default)]
    hash_algorithm: String,
    #[serde(default)]
    prefix: String,
}

#[derive(Deserialize)]
struct GetKeyArgs {
    #[serde(default)]
    path: String,
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    algorithm: String,
}

#[derive(Deserialize)]
struct EmitEventArgs {
    #[serde(default)]
    event: String,
    #[serde(default)]
    payload: String,
}

/// `GetTlsKey` arguments (dstack `GetTlsKeyArgs`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GetTlsKeyArgs {
    subject: String,
    alt_names: Vec<String>,
    usage_ra_tls: bool,
    usage_server_auth: bool,
    usage_client_auth: bool,
    not_before: Option<u64>,
    not_after: Option<u64>,
    with_app_info: bool,
}

/// Tappd `DeriveKey` arguments (dstack `DeriveKeyArgs`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DeriveKeyArgs {
    path: String,
    subject: String,
    alt_names: Vec<String>,
    usage_ra_tls: bool,
    usage_server_auth: bool,
    usage_client_auth: bool,
    random_seed: bool,
}

/// `Sign` arguments (dstack `SignRequest`), `data` hex.
#[derive(Deserialize)]
struct SignArgs {
    #[serde(default)]
    algorithm: String,
    #[serde(default)]
    data: String,
}

/// `Verify` arguments (dstack `VerifyRequest`), byte fields hex.
#[derive(Deserialize)]
struct VerifyArgs {
    #[serde(default)]
    algorithm: String,
    #[serde(default)]
    data: String,
    #[serde(default)]
    signature: String,
    #[serde(default)]
    public_key: String,
}

/// Name servers for reaching the KMS by name (PID 1 writes this file from the DHCP lease).
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The content tag of the hashed report-data form when the caller gives none.
const DEFAULT_PREFIX: &str = "app-data";

/// The hash `TdxQuote` uses when the caller names none (dstack `DEFAULT_HASH_ALGORITHM`).
const DEFAULT_HASH: &str = "sha512";

/// What `Version` reports: the dstack OS release whose guest-agent surface this server
/// implements (dstack answers its own `CARGO_PKG_VERSION`, i.e. the OS release; clients gate
/// features such as ed25519 keys and the 0.5.7 `GetTlsKey` options on it).
pub const DSTACK_VERSION: &str = init_core::gates::IMAGE_FACTS.os_version;

/// `Version`'s `rev` (dstack answers its git revision): this implementation and its version.
pub const VERSION_REV: &str = concat!("cvm-init-", env!("CARGO_PKG_VERSION"));

fn call<T: Tee>(
    state: &ApiState<T>,
    service: Service,
    request: &Request,
) -> Result<serde_json::Value, ServiceError> {
    let Some(call) = route(service, &request.head.path) else {
        return Err(ServiceError::UnknownMethod {
            path: request.head.path.clone(),
        });
    };
    match call {
        Call::Info => info(state, false),
        Call::Version => Ok(version()),
        Call::GetQuote => {
            let report_data = get_quote_report_data("GetQuote", request)?;
            let quoted = quote(state, "GetQuote", &report_data)?;
            Ok(json!({
                "quote": hex::encode(&quoted.0),
                "event_log": quoted.1,
                "report_data": hex::encode(report_data),
                "vm_config": state.workload().vm_config,
            }))
        }
        Call::Attest => {
            let report_data = get_quote_report_data("Attest", request)?;
            let attestation =
                state
                    .attestation(&report_data)
                    .map_err(|source| ServiceError::Tee {
                        method: "Attest",
                        source: Box::new(source),
                    })?;
            Ok(json!({ "attestation": hex::encode(attestation.encode()) }))
        }
        Call::TdxQuote => tdx_quote(state, &tdx_quote_args(request)?),
        Call::RawQuote => tdx_quote(state, &raw_quote_args(request)?),
        Call::EmitEvent => {
            let (args, payload) = emit_event_args(request)?;
            let digest = state.emit_event(&args.event, &payload).map_err(|source| {
                ServiceError::EmitEvent {
                    name: args.event.clone(),
                    source,
                }
            })?;
            log::info!("guest-api: RTMR3 app event {} digest {digest}", args.event);
            // google.protobuf.Empty: dstack's pRPC JSON encodes the unit reply as `null`, and
            // its Rust SDK decodes exactly that (`{}` fails there).
            Ok(serde_json::Value::Null)
        }
        Call::GetKey | Call::DeriveK256Key => {
            let method = if call == Call::GetKey {
                "GetKey"
            } else {
                "DeriveK256Key"
            };
            let keys = state
                .app_keys()
                .ok_or(ServiceError::KeysNotAvailable { method })?;
            let (args, key_type) = get_key_args(method, request)?;
            let derived = cvm_keys::app_sign::get_key(
                &keys.k256_key,
                &keys.k256_signature,
                &args.path,
                &args.purpose,
                key_type,
            )
            .map_err(|source| ServiceError::AppKey { method, source })?;
            let key = zeroize::Zeroizing::new(hex::encode(derived.key.expose()));
            let chain: Vec<String> = derived.signature_chain.iter().map(hex::encode).collect();
            Ok(if call == Call::GetKey {
                json!({ "key": key.as_str(), "signature_chain": chain })
            } else {
                json!({ "k256_key": key.as_str(), "k256_signature_chain": chain })
            })
        }
        Call::Sign => {
            let keys = state
                .app_keys()
                .ok_or(ServiceError::KeysNotAvailable { method: "Sign" })?;
            let (algorithm, data) = sign_args(request)?;
            let signed =
                cvm_keys::app_sign::sign(&keys.k256_key, &keys.k256_signature, algorithm, &data)
                    .map_err(|source| ServiceError::AppKey {
                        method: "Sign",
                        source,
                    })?;
            Ok(json!({
                "signature": hex::encode(&signed.signature),
                "signature_chain": signed.signature_chain.iter().map(hex::encode).collect::<Vec<_>>(),
                "public_key": hex::encode(&signed.public_key),
            }))
        }
        Call::Verify => {
            let (algorithm, data, signature, public_key) = verify_args(request)?;
            let valid = cvm_keys::app_sign::verify(algorithm, &data, &signature, &public_key)
                .map_err(|source| ServiceError::AppKey {
                    method: "Verify",
                    source,
                })?;
            Ok(json!({ "valid": valid }))
        }
        Call::GpuInfo => {
            let attestation = state
                .gpu_attestation()
                .map_err(|source| ServiceError::GpuInfo {
                    source: Box::new(source),
                })?;
            Ok(json!({ "attestation": attestation }))
        }
        Call::GetTlsKey => {
            let args = get_tls_key_args(request)?;
            let config = cvm_keys::sign_cert::CertConfig {
                org_name: None,
                subject: args.subject,
                subject_alt_names: args.alt_names,
                usage_server_auth: args.usage_server_auth,
                usage_client_auth: args.usage_client_auth,
                ext_quote: args.usage_ra_tls,
                ext_app_info: args.with_app_info,
                not_before: args.not_before,
                not_after: args.not_after,
            };
            let tls = sign_cert(state, "GetTlsKey", None, config)?;
            Ok(json!({
                "key": tls.key_pem.expose(),
                "certificate_chain": tls.certificate_chain,
            }))
        }
        Call::DeriveKey => {
            let args = derive_key_args(request)?;
            let keys = state.app_keys().ok_or(ServiceError::KeysNotAvailable {
                method: "DeriveKey",
            })?;
            let app_key_err = |source| ServiceError::AppKey {
                method: "DeriveKey",
                source,
            };
            // dstack derives from 32 fresh random bytes for `random_seed`, which is a uniformly
            // random key: the fresh key `GetTlsKey` uses.
            let key = if args.random_seed {
                None
            } else {
                let key = cvm_keys::app_sign::tappd_p256_key(&keys.k256_key, &args.path)
                    .map_err(app_key_err)?;
                Some(cvm_keys::app_sign::p256_key_pair(&key).map_err(app_key_err)?)
            };
            let config = cvm_keys::sign_cert::CertConfig {
                org_name: None,
                subject: args.subject,
                subject_alt_names: args.alt_names,
                usage_server_auth: args.usage_server_auth,
                usage_client_auth: args.usage_client_auth,
                ext_quote: args.usage_ra_tls,
                ext_app_info: false,
                not_before: None,
                not_after: None,
            };
            let tls = sign_cert(state, "DeriveKey", key, config)?;
            Ok(json!({
                "key": tls.key_pem.expose(),
                "certificate_chain": tls.certificate_chain,
            }))
        }
    }
}

/// A certificate chain for `key` (a fresh P-256 key when `None`) from the KMS `SignCert`
/// (`GetTlsKey`, `DeriveKey`): quotes under the state lock, the network call without it.
fn sign_cert<T: Tee>(
    state: &ApiState<T>,
    method: &'static str,
    key: Option<cvm_keys::app_sign::CertKeyPair>,
    config: cvm_keys::sign_cert::CertConfig,
) -> Result<cvm_keys::sign_cert::TlsKey, ServiceError> {
    let keys = state
        .app_keys()
        .ok_or(ServiceError::KeysNotAvailable { method })?;
    let kms = keys
        .kms
        .as_ref()
        .ok_or(ServiceError::NoKmsForTlsKey { method })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let sign_err = |source| ServiceError::SignCert { source };
    let prepared = state
        .prepare_sign_cert(kms, key, config, now)
        .map_err(sign_err)?;
    let tls = cvm_keys::sign_cert::send(
        &mut cvm_keys::transport::TlsTransport::new(Box::new(
            cvm_keys::transport::ResolvConfResolver::from_file(std::path::Path::new(RESOLV_CONF)),
        )),
        prepared,
        kms,
        &state.workload().vm_config,
        now,
    )
    .map_err(sign_err)?;
    log::info!(
        "guest-api: {method}: {} certificates from {}",
        tls.certificate_chain.len(),
        kms.url
    );
    Ok(tls)
}

/// Routes `request` and decodes its arguments exactly as [`dispatch`] would (JSON body or GET
/// query, hex fields, report data, key algorithm), without running the call: no TEE, no keys,
/// no network. `Ok` gives the method name. The pure part of request handling, for fuzzing.
pub fn check_arguments(service: Service, request: &Request) -> Result<&'static str, ServiceError> {
    let Some(call) = route(service, &request.head.path) else {
        return Err(ServiceError::UnknownMethod {
            path: request.head.path.clone(),
        });
    };
    match call {
        Call::Info => Ok("Info"),
        Call::Version => Ok("Version"),
        Call::GpuInfo => Ok("GpuInfo"),
        Call::GetQuote => get_quote_report_data("GetQuote", request).map(|_| "GetQuote"),
        Call::Attest => get_quote_report_data("Attest", request).map(|_| "Attest"),
        Call::TdxQuote => tdx_report_data(&tdx_quote_args(request)?).map(|_| "TdxQuote"),
        Call::RawQuote => tdx_report_data(&raw_quote_args(request)?).map(|_| "RawQuote"),
        Call::EmitEvent => emit_event_args(request).map(|_| "EmitEvent"),
        Call::GetKey => get_key_args("GetKey", request).map(|_| "GetKey"),
        Call::DeriveK256Key => get_key_args("DeriveK256Key", request).map(|_| "DeriveK256Key"),
        Call::GetTlsKey => get_tls_key_args(request).map(|_| "GetTlsKey"),
        Call::DeriveKey => derive_key_args(request).map(|_| "DeriveKey"),
        Call::Sign => sign_args(request).map(|_| "Sign"),
        Call::Verify => verify_args(request).map(|_| "Verify"),
    }
}

fn get_quote_report_data(
    method: &'static str,
    request: &Request,
) -> Result<[u8; REPORT_DATA_LEN], ServiceError> {
    let args: RawQuoteArgs = arguments(method, request)?;
    let bytes = from_hex("report_data", &args.report_data)?;
    report_data::from_raw(&bytes).map_err(|source| ServiceError::BuildReportData { source })
}

fn tdx_quote_args(request: &Request) -> Result<TdxQuoteArgs, ServiceError> {
    arguments("TdxQuote", request)
}

fn raw_quote_args(request: &Request) -> Result<TdxQuoteArgs, ServiceError> {
    let args: RawQuoteArgs = arguments("RawQuote", request)?;
    Ok(TdxQuoteArgs {
        report_data: args.report_data,
        hash_algorithm: "raw".into(),
        prefix: String::new(),
    })
}

fn emit_event_args(request: &Request) -> Result<(EmitEventArgs, Vec<u8>), ServiceError> {
    let args: EmitEventArgs = arguments("EmitEvent", request)?;
    if args.event.is_empty() {
        return Err(ServiceError::EmptyEventName);
    }
    let payload = from_hex("payload", &args.payload)?;
    Ok((args, payload))
}

fn get_key_args(
    method: &'static str,
    request: &Request,
) -> Result<(GetKeyArgs, cvm_keys::app_sign::KeyType), ServiceError> {
    let args: GetKeyArgs = arguments(method, request)?;
    let key_type = cvm_keys::app_sign::KeyType::parse(&args.algorithm)
        .map_err(|source| ServiceError::AppKey { method, source })?;
    Ok((args, key_type))
}

/// The `algorithm` argument of `method` (`Sign`, `Verify`).
fn sign_algorithm(
    method: &'static str,
    name: &str,
) -> Result<cvm_keys::app_sign::SignAlgorithm, ServiceError> {
    cvm_keys::app_sign::SignAlgorithm::parse(name)
        .map_err(|source| ServiceError::AppKey { method, source })
}

fn sign_args(
    request: &Request,
) -> Result<(cvm_keys::app_sign::SignAlgorithm, Vec<u8>), ServiceError> {
    let args: SignArgs = arguments("Sign", request)?;
    let algorithm = sign_algorithm("Sign", &args.algorithm)?;
    Ok((algorithm, from_hex("data", &args.data)?))
}

type VerifyInputs = (cvm_keys::app_sign::SignAlgorithm, Vec<u8>, Vec<u8>, Vec<u8>);

fn verify_args(request: &Request) -> Result<VerifyInputs, ServiceError> {
    let args: VerifyArgs = arguments("Verify", request)?;
    let algorithm = sign_algorithm("Verify", &args.algorithm)?;
    Ok((
        algorithm,
        from_hex("data", &args.data)?,
        from_hex("signature", &args.signature)?,
        from_hex("public_key", &args.public_key)?,
    ))
}

fn get_tls_key_args(request: &Request) -> Result<GetTlsKeyArgs, ServiceError> {
    let args: GetTlsKeyArgs = arguments("GetTlsKey", request)?;
    if let (Some(not_before), Some(not_after)) = (args.not_before, args.not_after)
        && not_before >= not_after
    {
        return Err(ServiceError::CertValidity {
            not_before,
            not_after,
        });
    }
    Ok(args)
}

fn derive_key_args(request: &Request) -> Result<DeriveKeyArgs, ServiceError> {
    arguments("DeriveKey", request)
}

/// `H(tag ":" content)` zero-padded to 64 bytes with `H` one of dstack's names (exactly:
/// `sha256`, `sha384`, `sha512`, `sha3-256`, `sha3-384`, `sha3-512`, `keccak256`, `keccak384`,
/// `keccak512`), or `raw`: the content itself, exactly 64 bytes.
pub fn hashed_report_data(
    hash: &str,
    tag: &str,
    content: &[u8],
) -> Result<[u8; REPORT_DATA_LEN], ServiceError> {
    // sha2 0.10 and sha3 0.12 implement different `digest` versions: one macro, not a
    // generic function.
    macro_rules! digest {
        ($hasher:ty, $trait:path) => {{
            use $trait as _;
            let mut hasher = <$hasher>::new();
            hasher.update(tag.as_bytes());
            hasher.update(b":");
            hasher.update(content);
            let output = hasher.finalize();
            let mut padded = [0u8; REPORT_DATA_LEN];
            padded[..output.len()].copy_from_slice(&output);
            padded
        }};
    }
    Ok(match hash {
        "sha256" => digest!(sha2::Sha256, sha2::Digest),
        "sha384" => digest!(sha2::Sha384, sha2::Digest),
        "sha512" => digest!(sha2::Sha512, sha2::Digest),
        "sha3-256" => digest!(sha3::Sha3_256, sha3::Digest),
        "sha3-384" => digest!(sha3::Sha3_384, sha3::Digest),
        "sha3-512" => digest!(sha3::Sha3_512, sha3::Digest),
        "keccak256" => digest!(sha3::Keccak256, sha3::Digest),
        "keccak384" => digest!(sha3::Keccak384, sha3::Digest),
        "keccak512" => digest!(sha3::Keccak512, sha3::Digest),
        "raw" => <[u8; REPORT_DATA_LEN]>::try_from(content)
            .map_err(|_| ServiceError::RawReportDataLength { len: content.len() })?,
        _ => {
            return Err(ServiceError::UnsupportedHash {
                name: hash.to_owned(),
            });
        }
    })
}

/// The report data of `TdxQuote`/`RawQuote`, the hash name echoed and the prefix applied (as
/// dstack: an empty hash is `sha512`, an empty prefix `app-data`, `raw` has no prefix).
fn tdx_report_data(
    args: &TdxQuoteArgs,
) -> Result<([u8; REPORT_DATA_LEN], &str, &str), ServiceError> {
    let content = from_hex("report_data", &args.report_data)?;
    let hash = if args.hash_algorithm.is_empty() {
        DEFAULT_HASH
    } else {
        &args.hash_algorithm
    };
    let tag = if args.prefix.is_empty() {
        DEFAULT_PREFIX
    } else {
        &args.prefix
    };
    let report_data = hashed_report_data(hash, tag, &content)?;
    let prefix = if hash == "raw" { "" } else { tag };
    Ok((report_data, hash, prefix))
}

/// Legacy `TdxQuote`: `H(prefix ":" content)` (default SHA-512, prefix `app-data`) or `raw`
/// (exactly 64 bytes).
fn tdx_quote<T: Tee>(
    state: &ApiState<T>,
    args: &TdxQuoteArgs,
) -> Result<serde_json::Value, ServiceError> {
    let (report_data, hash, prefix) = tdx_report_data(args)?;
    let quoted = quote(state, "TdxQuote", &report_data)?;
    Ok(json!({
        "quote": hex::encode(&quoted.0),
        "event_log": quoted.1,
        "hash_algorithm": hash,
        "prefix": prefix,
    }))
}

fn quote<T: Tee>(
    state: &ApiState<T>,
    method: &'static str,
    report_data: &[u8; REPORT_DATA_LEN],
) -> Result<(Vec<u8>, String), ServiceError> {
    let quoted = state
        .quote(report_data)
        .map_err(|source| ServiceError::Tee {
            method,
            source: Box::new(source),
        })?;
    Ok((quoted.quote, event_log_json(&quoted.event_log)))
}

fn event_log_json(events: &[ExposedEvent]) -> String {
    serde_json::to_string(events).unwrap_or_else(|_| "[]".to_owned())
}

/// The payload of the first event named `name` before `system-ready` (later events are the
/// workload's, as dstack's verifier `find_event` reads them).
fn system_event<'a>(events: &'a [init_core::tee::RuntimeEvent], name: &str) -> Option<&'a [u8]> {
    events
        .iter()
        .take_while(|e| e.name != init_core::tee::events::names::SYSTEM_READY)
        .find(|e| e.name == name)
        .map(|e| e.payload.as_slice())
}

/// dstack's `mr_aggregated`: SHA-256(MRTD ‖ RTMR0..3 [‖ MRCONFIGID ‖ MROWNER ‖ MROWNERCONFIG
/// when any of them is nonzero]) (`dstack-guest.md` §3.5).
pub fn mr_aggregated(td_info: &measure::tdreport::TdInfo) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(td_info.mr_td.0);
    for index in RtmrIndex::ALL {
        h.update(td_info.rtmrs.register(index).0);
    }
    let config = [
        &td_info.mr_config_id,
        &td_info.mr_owner,
        &td_info.mr_owner_config,
    ];
    if config.iter().any(|d| !d.is_zero()) {
        for d in config {
            h.update(d.0);
        }
    }
    h.finalize().into()
}

/// `Version`: the dstack release this surface implements and this implementation.
pub(crate) fn version() -> serde_json::Value {
    json!({
        "version": DSTACK_VERSION,
        "rev": VERSION_REV,
    })
}

/// The Worker API's `GetAttestationForAppKey{algorithm}`: a `GetQuote` answer whose report
/// data names the app's signing key (`Sign`'s key: GetKey path `vms`, purpose `signing`) as
/// dstack's `dip1::ed25519-pk:` / `dip1::secp256k1c-pk:` + unpadded base64url, NUL padded.
pub(crate) fn attestation_for_app_key<T: Tee>(
    state: &ApiState<T>,
    algorithm: &str,
) -> Result<serde_json::Value, ServiceError> {
    const METHOD: &str = "GetAttestationForAppKey";
    let keys = state
        .app_keys()
        .ok_or(ServiceError::KeysNotAvailable { method: METHOD })?;
    let algorithm = cvm_keys::app_sign::SignAlgorithm::parse(algorithm).map_err(|source| {
        ServiceError::AppKey {
            method: METHOD,
            source,
        }
    })?;
    let derived = cvm_keys::app_sign::get_key(
        &keys.k256_key,
        &keys.k256_signature,
        cvm_keys::app_sign::SIGN_PATH,
        cvm_keys::app_sign::SIGN_PURPOSE,
        algorithm.key_type(),
    )
    .map_err(|source| ServiceError::AppKey {
        method: METHOD,
        source,
    })?;
    let report_data = app_key_report_data(algorithm.key_type(), &derived.public_key);
    let quoted = quote(state, METHOD, &report_data)?;
    Ok(json!({
        "quote": hex::encode(&quoted.0),
        "event_log": quoted.1,
        "report_data": hex::encode(report_data),
        "vm_config": state.workload().vm_config,
    }))
}

/// `dip1::<kind>-pk:<base64url(public key)>`, NUL padded to the report data's 64 bytes (33
/// compressed secp256k1 bytes or 32 ed25519 bytes fit exactly or with room).
pub fn app_key_report_data(
    key_type: cvm_keys::app_sign::KeyType,
    public_key: &[u8],
) -> [u8; REPORT_DATA_LEN] {
    let kind = match key_type {
        cvm_keys::app_sign::KeyType::Ed25519 => "ed25519",
        cvm_keys::app_sign::KeyType::Secp256k1 => "secp256k1c",
    };
    let text = format!("dip1::{kind}-pk:{}", base64url(public_key));
    let mut out = [0u8; REPORT_DATA_LEN];
    for (slot, byte) in out.iter_mut().zip(text.bytes()) {
        *slot = byte;
    }
    out
}

/// Unpadded base64url (RFC 4648 §5).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            let index = ((n >> (18 - 6 * i)) & 63) as usize;
            out.push(char::from(ALPHABET[index]));
        }
    }
    out
}

/// `Info`; `hide_tcb` (the Worker API without `public_tcbinfo`) empties `tcb_info` and
/// `vm_config`, as dstack's external `Info` does.
pub(crate) fn info<T: Tee>(
    state: &ApiState<T>,
    hide_tcb: bool,
) -> Result<serde_json::Value, ServiceError> {
    use init_core::tee::events::names;

    let snapshot = state.report().map_err(|source| ServiceError::Tee {
        method: "Info",
        source: Box::new(source),
    })?;
    let td = &snapshot.report.td_info;
    let events = &snapshot.runtime_events;
    let hex_of = |name: &str| {
        system_event(events, name)
            .map(hex::encode)
            .unwrap_or_default()
    };
    let key_provider_info = system_event(events, names::KEY_PROVIDER)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let workload = state.workload();
    let mr_aggregated = hex::encode(mr_aggregated(td));
    let compose_hash = hex_of(names::COMPOSE_HASH);
    let os_image_hash = hex_of(names::OS_IMAGE_HASH);
    let tcb_info = json!({
        "mrtd": td.mr_td.to_string(),
        "rtmr0": td.rtmrs.register(RtmrIndex::R0).to_string(),
        "rtmr1": td.rtmrs.register(RtmrIndex::R1).to_string(),
        "rtmr2": td.rtmrs.register(RtmrIndex::R2).to_string(),
        "rtmr3": td.rtmrs.register(RtmrIndex::R3).to_string(),
        "mr_aggregated": mr_aggregated,
        "os_image_hash": os_image_hash,
        "compose_hash": compose_hash,
        "device_id": "",
        "event_log": snapshot.event_log,
        "app_compose": workload.app_compose,
    });
    let (tcb_info, vm_config) = if hide_tcb {
        (String::new(), String::new())
    } else {
        (tcb_info.to_string(), workload.vm_config.clone())
    };
    Ok(json!({
        "app_id": hex_of(names::APP_ID),
        "instance_id": hex_of(names::INSTANCE_ID),
        "app_cert": "",
        "tcb_info": tcb_info,
        "app_name": workload.app_name,
        "device_id": "",
        "mr_aggregated": mr_aggregated,
        "os_image_hash": os_image_hash,
        "key_provider_info": key_provider_info,
        "compose_hash": compose_hash,
        "vm_config": vm_config,
        "cloud_vendor": workload.cloud_vendor,
        "cloud_product": workload.cloud_product,
    }))
}
