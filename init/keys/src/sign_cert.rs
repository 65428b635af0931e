//! The KMS `SignCert` call (dstack API version 2), both sides' wire format: a
//! `CertSigningRequestV2` SCALE-encoded exactly as dstack's `ra-tls` crate derives it, signed
//! with the requested key, and the guest-side request that turns it into a certificate chain
//! `[leaf, app CA, KMS root]` (what the guest API's `GetTlsKey` returns).
//!
//! Wire layout (SCALE; `Compact(n)` length prefixes, `Option` = `00` | `01 ‖ value`, `bool` =
//! `00`/`01`, integers little endian), field order as in dstack HEAD `ra-tls/src/cert.rs`:
//!
//! ```text
//! CertSigningRequestV2 = confirm: String ("please sign cert:") ‖ pubkey: Vec<u8> (SPKI DER)
//!                        ‖ config: CertConfigV2 ‖ attestation: VersionedAttestation
//! CertConfigV2         = org_name: Option<String> ‖ subject: String ‖ subject_alt_names: Vec<String>
//!                        ‖ usage_server_auth: bool ‖ usage_client_auth: bool ‖ ext_quote: bool
//!                        ‖ ext_app_info: bool ‖ not_before: Option<u64> ‖ not_after: Option<u64>
//! VersionedAttestation = 00 (V0) ‖ 00 (DstackTdx) ‖ quote: Vec<u8>
//!                        ‖ event_log: Vec<TdxEvent{imr u32, event_type u32, digest Vec<u8>,
//!                                                  event String, event_payload Vec<u8>}>
//!                        ‖ runtime_events: Vec<{event String, payload Vec<u8>}>
//!                        ‖ report_data: [u8; 64] ‖ config: String
//! ```
//!
//! `signature` = ECDSA P-256 / SHA-256, ASN.1 DER, by the requested key over the whole SCALE
//! encoding (confirm word included). The request is `SignCert{api_version: 2, csr, signature,
//! vm_config}` (pRPC JSON, bytes as hex) over the same mutual RA-TLS as `GetAppKey`; the KMS
//! verifies the signature, the attestation (report data = `SHA-512("ratls-cert:" ‖ pubkey)`,
//! quote, RTMR3 replay), authorizes the app and signs with the app CA
//! `derive_p256(root_ca_key, [app_id, "app-ca"])`, usage `app:custom`, app-id extension.
//!
//! Only the TDX form of the attestation is produced and accepted here; the event log carries
//! the RTMR3 runtime events (`imr` 3, type 0x08000001), which is what a KMS replays.

use init_core::tee::{QuoteSource, REPORT_DATA_LEN, RuntimeEvent};
use measure::runtime_event::{EventLogVersion, RUNTIME_EVENT_TYPE};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData as _};
use serde::{Deserialize, Serialize};

use crate::kms::{
    HttpResponse, KmsTransport, KmsUrl, TlsMode, TransportError, certificate_der_and_spki,
};
use crate::ratls::{CaSigner, RaTlsError, client_certificate, ratls_report_data};
use crate::secret::{Secret, SecretString};

/// The confirm word every CSR starts with.
pub const CONFIRM: &str = "please sign cert:";
/// The `api_version` of a `CertSigningRequestV2`.
pub const API_VERSION: u32 = 2;
/// Largest CSR a decoder accepts (a quote is ~5 KiB, the event log a few KiB).
pub const MAX_CSR_LEN: usize = 256 * 1024;
/// Most certificates a `SignCert` reply may hold.
pub const MAX_CHAIN_LEN: usize = 8;

/// Errors of encoding, decoding, signing and requesting a certificate.
#[derive(Debug, thiserror::Error)]
pub enum SignCertError {
    /// The bytes end before a field is complete.
    #[error("CSR is truncated in {field}")]
    Truncated { field: &'static str },
    /// A length prefix is larger than what is left or than the limits.
    #[error("CSR field {field} has an impossible length")]
    Length { field: &'static str },
    /// A SCALE compact length in a longer form than its value needs: the same CSR would
    /// have several encodings, and the signature covers the bytes.
    #[error("CSR field {field} has a non-canonical compact length")]
    NonCanonicalLength { field: &'static str },
    /// A `bool` or `Option` tag is not 0 or 1, or an enum variant is unknown.
    #[error("CSR field {field} has an invalid tag {tag:#04x}")]
    Tag { field: &'static str, tag: u8 },
    /// A string is not UTF-8.
    #[error("CSR field {field} is not UTF-8")]
    Utf8 { field: &'static str },
    /// Bytes are left after the CSR.
    #[error("{count} bytes follow the CSR")]
    Trailing { count: usize },
    /// The attestation is not the TDX form this crate knows.
    #[error("attestation variant {variant} is not supported (only DstackTdx V0)")]
    UnsupportedAttestation { variant: u8 },
    /// The confirm word is not [`CONFIRM`].
    #[error("CSR confirm word is not {CONFIRM:?}")]
    ConfirmWord,
    /// The CSR public key is not a P-256 SubjectPublicKeyInfo.
    #[error("CSR public key is not a P-256 SubjectPublicKeyInfo")]
    PublicKey,
    /// The signature does not verify.
    #[error("CSR signature does not verify with the CSR public key")]
    BadSignature,
    /// Generating or using the requested key failed.
    #[error("{what} the requested key")]
    Key {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    /// Signing with ring failed.
    #[error("sign the CSR")]
    Sign,
    /// The TEE could not quote the requested key.
    #[error("quote the requested key")]
    Quote {
        #[source]
        source: init_core::tee::TeeError,
    },
    /// The RA-TLS client certificate for the KMS connection could not be built.
    #[error("build the RA-TLS client certificate")]
    ClientCertificate {
        #[source]
        source: RaTlsError,
    },
    /// The KMS access data (root CA, temporary CA) is unusable.
    #[error("the KMS root CA certificate is not a P-256 X.509 certificate")]
    RootCa,
    /// The KMS URL is malformed.
    #[error("KMS URL")]
    Url {
        #[source]
        source: Box<crate::kms::KmsError>,
    },
    /// Connecting, TLS or HTTP failed.
    #[error("SignCert at {url}")]
    Transport {
        url: String,
        #[source]
        source: TransportError,
    },
    /// The KMS refused.
    #[error("SignCert at {url} was refused with HTTP {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    /// The reply is not `{certificate_chain: [PEM…]}`.
    #[error("SignCert at {url}: reply is not a certificate chain")]
    DecodeReply { url: String },
    /// The reply's chain is not [leaf for our key, …, the pinned KMS root].
    #[error("SignCert at {url}: certificate chain is wrong: {reason}")]
    Chain { url: String, reason: String },
}

/// `CertConfigV2`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertConfig {
    /// Organization (O).
    pub org_name: Option<String>,
    /// Common name (CN).
    pub subject: String,
    /// Subject alternative names (DNS names or IP addresses).
    pub subject_alt_names: Vec<String>,
    /// serverAuth EKU.
    pub usage_server_auth: bool,
    /// clientAuth EKU.
    pub usage_client_auth: bool,
    /// Embed the attestation in the certificate (RA-TLS).
    pub ext_quote: bool,
    /// Embed the app info in the certificate.
    pub ext_app_info: bool,
    /// notBefore, Unix seconds.
    pub not_before: Option<u64>,
    /// notAfter, Unix seconds.
    pub not_after: Option<u64>,
}

/// One `TdxEvent` of the attestation's event log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TdxEvent {
    /// Register index (3 for runtime events).
    pub imr: u32,
    /// Event type.
    pub event_type: u32,
    /// Digest (SHA-384, 48 bytes; may be empty).
    pub digest: Vec<u8>,
    /// Event name.
    pub event: String,
    /// Payload.
    pub event_payload: Vec<u8>,
}

impl TdxEvent {
    /// The runtime-event form of `event` (imr 3, type 0x08000001, its digest).
    pub fn runtime(event: &RuntimeEvent) -> Self {
        Self {
            imr: 3,
            event_type: RUNTIME_EVENT_TYPE,
            digest: event.digest().0.to_vec(),
            event: event.name.clone(),
            event_payload: event.payload.clone(),
        }
    }

    /// The runtime event this entry describes (`None` unless imr 3 and the runtime type).
    /// dstack's TdxEvent carries no version, so V1 is assumed unless the recorded digest is
    /// the V2 one.
    pub fn to_runtime(&self) -> Option<RuntimeEvent> {
        if self.imr != 3 || self.event_type != RUNTIME_EVENT_TYPE {
            return None;
        }
        let v1 = RuntimeEvent::new(self.event.clone(), self.event_payload.clone());
        let v2 = v1.clone().with_version(EventLogVersion::V2);
        if !self.digest.is_empty() && v2.digest().0[..] == self.digest[..] {
            Some(v2)
        } else {
            Some(v1)
        }
    }
}

/// `Attestation` (V0, DstackTdx).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxAttestation {
    /// The raw quote.
    pub quote: Vec<u8>,
    /// Event log.
    pub event_log: Vec<TdxEvent>,
    /// Runtime events (name, payload) outside the TDX log (empty for TDX).
    pub runtime_events: Vec<(String, Vec<u8>)>,
    /// The report data the quote was taken with.
    pub report_data: [u8; REPORT_DATA_LEN],
    /// Platform configuration string (empty for TDX).
    pub config: String,
}

impl Default for TdxAttestation {
    fn default() -> Self {
        Self {
            quote: Vec::new(),
            event_log: Vec::new(),
            runtime_events: Vec::new(),
            report_data: [0; REPORT_DATA_LEN],
            config: String::new(),
        }
    }
}

impl TdxAttestation {
    /// The runtime events of the event log, in order (what a verifier replays into RTMR3).
    pub fn runtime_events(&self) -> Vec<RuntimeEvent> {
        self.event_log
            .iter()
            .filter_map(TdxEvent::to_runtime)
            .collect()
    }

    /// The legacy JSON event-log text of [`Self::runtime_events`] (the `.2` extension form).
    pub fn event_log_json(&self) -> String {
        crate::ratls::event_log_json(&self.runtime_events())
    }
}

/// `CertSigningRequestV2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSigningRequest {
    /// [`CONFIRM`].
    pub confirm: String,
    /// SubjectPublicKeyInfo DER of the requested key.
    pub pubkey: Vec<u8>,
    /// What to certify.
    pub config: CertConfig,
    /// Evidence that a TEE holds the key.
    pub attestation: TdxAttestation,
}

// ---- SCALE ----------------------------------------------------------------------------------

fn put_compact(out: &mut Vec<u8>, n: usize) {
    // usize fits u64 on every supported target.
    let n = n as u64;
    let shifted = (n << 2).to_le_bytes();
    if n < 1 << 6 {
        out.push(shifted[0]);
    } else if n < 1 << 14 {
        out.extend_from_slice(&((n << 2) | 1).to_le_bytes()[..2]);
    } else if n < 1 << 30 {
        out.extend_from_slice(&((n << 2) | 2).to_le_bytes()[..4]);
    } else {
        let bytes = n.to_le_bytes();
        let len = 8 - bytes.iter().rev().take_while(|b| **b == 0).count();
        // len is 4..=8, so the header fits a byte.
        out.push((u8::try_from(len - 4).unwrap_or(0) << 2) | 3);
        out.extend_from_slice(&bytes[..len]);
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_compact(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn put_bool(out: &mut Vec<u8>, value: bool) {
    out.push(u8::from(value));
}

fn put_opt_u64(out: &mut Vec<u8>, value: Option<u64>) {
    match value {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], SignCertError> {
        if n > self.rest.len() {
            return Err(SignCertError::Truncated { field });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn byte(&mut self, field: &'static str) -> Result<u8, SignCertError> {
        Ok(self.take(1, field)?[0])
    }

    fn compact(&mut self, field: &'static str) -> Result<usize, SignCertError> {
        let first = self.byte(field)?;
        // Each mode must be the shortest for its value (SCALE's canonical form).
        let (value, min): (u64, u64) = match first & 3 {
            0 => (u64::from(first >> 2), 0),
            1 => {
                let b = self.take(1, field)?;
                (u64::from(u16::from_le_bytes([first, b[0]]) >> 2), 1 << 6)
            }
            2 => {
                let b = self.take(3, field)?;
                (
                    u64::from(u32::from_le_bytes([first, b[0], b[1], b[2]]) >> 2),
                    1 << 14,
                )
            }
            _ => {
                let len = usize::from(first >> 2) + 4;
                if len > 8 {
                    return Err(SignCertError::Length { field });
                }
                let b = self.take(len, field)?;
                // The big-integer mode needs its top byte non-zero (else a shorter length).
                if b.last() == Some(&0) {
                    return Err(SignCertError::NonCanonicalLength { field });
                }
                let mut buf = [0u8; 8];
                buf[..len].copy_from_slice(b);
                (u64::from_le_bytes(buf), 1 << 30)
            }
        };
        if value < min {
            return Err(SignCertError::NonCanonicalLength { field });
        }
        let n = usize::try_from(value).map_err(|_| SignCertError::Length { field })?;
        // Every element takes at least one byte: a count beyond what is left is a lie.
        if n > self.rest.len() {
            return Err(SignCertError::Length { field });
        }
        Ok(n)
    }

    fn bytes(&mut self, field: &'static str) -> Result<Vec<u8>, SignCertError> {
        let n = self.compact(field)?;
        Ok(self.take(n, field)?.to_vec())
    }

    fn string(&mut self, field: &'static str) -> Result<String, SignCertError> {
        String::from_utf8(self.bytes(field)?).map_err(|_| SignCertError::Utf8 { field })
    }

    fn tag(&mut self, field: &'static str) -> Result<bool, SignCertError> {
        match self.byte(field)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(SignCertError::Tag { field, tag }),
        }
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, SignCertError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn opt_u64(&mut self, field: &'static str) -> Result<Option<u64>, SignCertError> {
        if !self.tag(field)? {
            return Ok(None);
        }
        let b = self.take(8, field)?;
        let mut buf = [0u8; 8];
        buf.copy_from_slice(b);
        Ok(Some(u64::from_le_bytes(buf)))
    }
}

impl CertConfig {
    fn encode_into(&self, out: &mut Vec<u8>) {
        match &self.org_name {
            None => out.push(0),
            Some(org) => {
                out.push(1);
                put_bytes(out, org.as_bytes());
            }
        }
        put_bytes(out, self.subject.as_bytes());
        put_compact(out, self.subject_alt_names.len());
        for name in &self.subject_alt_names {
            put_bytes(out, name.as_bytes());
        }
        put_bool(out, self.usage_server_auth);
        put_bool(out, self.usage_client_auth);
        put_bool(out, self.ext_quote);
        put_bool(out, self.ext_app_info);
        put_opt_u64(out, self.not_before);
        put_opt_u64(out, self.not_after);
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, SignCertError> {
        let org_name = if r.tag("org_name")? {
            Some(r.string("org_name")?)
        } else {
            None
        };
        let subject = r.string("subject")?;
        let count = r.compact("subject_alt_names")?;
        let mut subject_alt_names = Vec::with_capacity(count);
        for _ in 0..count {
            subject_alt_names.push(r.string("subject_alt_names")?);
        }
        Ok(Self {
            org_name,
            subject,
            subject_alt_names,
            usage_server_auth: r.tag("usage_server_auth")?,
            usage_client_auth: r.tag("usage_client_auth")?,
            ext_quote: r.tag("ext_quote")?,
            ext_app_info: r.tag("ext_app_info")?,
            not_before: r.opt_u64("not_before")?,
            not_after: r.opt_u64("not_after")?,
        })
    }
}

impl TdxAttestation {
    /// The SCALE `VersionedAttestation::V0` encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(0); // VersionedAttestation::V0
        out.push(0); // AttestationQuote::DstackTdx
        put_bytes(out, &self.quote);
        put_compact(out, self.event_log.len());
        for e in &self.event_log {
            out.extend_from_slice(&e.imr.to_le_bytes());
            out.extend_from_slice(&e.event_type.to_le_bytes());
            put_bytes(out, &e.digest);
            put_bytes(out, e.event.as_bytes());
            put_bytes(out, &e.event_payload);
        }
        put_compact(out, self.runtime_events.len());
        for (name, payload) in &self.runtime_events {
            put_bytes(out, name.as_bytes());
            put_bytes(out, payload);
        }
        out.extend_from_slice(&self.report_data);
        put_bytes(out, self.config.as_bytes());
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, SignCertError> {
        let version = r.byte("attestation version")?;
        if version != 0 {
            return Err(SignCertError::UnsupportedAttestation { variant: version });
        }
        let variant = r.byte("attestation quote")?;
        if variant != 0 {
            return Err(SignCertError::UnsupportedAttestation { variant });
        }
        let quote = r.bytes("quote")?;
        let count = r.compact("event_log")?;
        let mut event_log = Vec::with_capacity(count);
        for _ in 0..count {
            event_log.push(TdxEvent {
                imr: r.u32("event imr")?,
                event_type: r.u32("event type")?,
                digest: r.bytes("event digest")?,
                event: r.string("event name")?,
                event_payload: r.bytes("event payload")?,
            });
        }
        let count = r.compact("runtime_events")?;
        let mut runtime_events = Vec::with_capacity(count);
        for _ in 0..count {
            runtime_events.push((r.string("runtime event")?, r.bytes("runtime payload")?));
        }
        let mut report_data = [0u8; REPORT_DATA_LEN];
        report_data.copy_from_slice(r.take(REPORT_DATA_LEN, "report_data")?);
        let config = r.string("config")?;
        Ok(Self {
            quote,
            event_log,
            runtime_events,
            report_data,
            config,
        })
    }
}

impl CertSigningRequest {
    /// The exact SCALE encoding (the `csr` field, and what the signature covers).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_bytes(&mut out, self.confirm.as_bytes());
        put_bytes(&mut out, &self.pubkey);
        self.config.encode_into(&mut out);
        self.attestation.encode_into(&mut out);
        out
    }

    /// Decodes a SCALE `CertSigningRequestV2`; every byte must be used. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, SignCertError> {
        if bytes.len() > MAX_CSR_LEN {
            return Err(SignCertError::Length { field: "csr" });
        }
        let mut r = Reader { rest: bytes };
        let csr = Self {
            confirm: r.string("confirm")?,
            pubkey: r.bytes("pubkey")?,
            config: CertConfig::decode_from(&mut r)?,
            attestation: TdxAttestation::decode_from(&mut r)?,
        };
        if !r.rest.is_empty() {
            return Err(SignCertError::Trailing {
                count: r.rest.len(),
            });
        }
        Ok(csr)
    }

    /// ECDSA P-256 / SHA-256 (ASN.1 DER) over [`Self::encode`] with `key_pkcs8` (PKCS#8 DER).
    pub fn sign(&self, key_pkcs8: &[u8]) -> Result<Vec<u8>, SignCertError> {
        use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, key_pkcs8, &rng)
            .map_err(|_| SignCertError::Sign)?;
        key.sign(&rng, &self.encode())
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| SignCertError::Sign)
    }

    /// What dstack's KMS checks first: the signature verifies with `pubkey` over the encoding,
    /// `pubkey` is a P-256 key, and the confirm word is right.
    pub fn verify(&self, signature: &[u8]) -> Result<(), SignCertError> {
        use der::Decode as _;
        use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
        let spki = spki::SubjectPublicKeyInfoRef::from_der(&self.pubkey)
            .map_err(|_| SignCertError::PublicKey)?;
        let ec_public_key = spki::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
        let p256 = spki::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
        let curve = spki
            .algorithm
            .parameters_oid()
            .map_err(|_| SignCertError::PublicKey)?;
        if spki.algorithm.oid != ec_public_key || curve != p256 {
            return Err(SignCertError::PublicKey);
        }
        let point = spki
            .subject_public_key
            .as_bytes()
            .ok_or(SignCertError::PublicKey)?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
            .verify(&self.encode(), signature)
            .map_err(|_| SignCertError::BadSignature)?;
        if self.confirm != CONFIRM {
            return Err(SignCertError::ConfirmWord);
        }
        Ok(())
    }
}

// ---- guest side ------------------------------------------------------------------------------

/// What the guest needs to reach its KMS again after boot (from `.appkeys.json`'s
/// `key_provider.Kms`).
#[derive(Debug, Clone)]
pub struct KmsAccess {
    /// The KMS URL that gave the app keys.
    pub url: String,
    /// The KMS root CA (PEM): the only trust anchor.
    pub root_ca_pem: String,
    /// The KMS temporary CA certificate (PEM) that signs the RA-TLS client certificate.
    pub temp_ca_cert_pem: String,
    /// Its key (PEM).
    pub temp_ca_key_pem: SecretString,
}

/// A key and its certificate chain (`GetTlsKey`'s answer).
#[derive(Debug)]
pub struct TlsKey {
    /// PKCS#8 PEM private key.
    pub key_pem: SecretString,
    /// `[leaf, app CA, KMS root]`, PEM.
    pub certificate_chain: Vec<String>,
}

/// The TEE half of a request (quotes taken, nothing sent yet), so a caller can hold a lock
/// around the TEE only for this part.
#[derive(Debug)]
pub struct PreparedRequest {
    key_pem: SecretString,
    key_spki: Vec<u8>,
    csr: Vec<u8>,
    signature: Vec<u8>,
    client_cert_der: Vec<u8>,
    client_key_der: Secret<Vec<u8>>,
}

/// Generates a P-256 key, quotes it (`ratls-cert:` report data) with `events` (the RTMR3 log
/// that replays to the TEE's RTMR3 now), builds and signs the CSR, and builds the RA-TLS client
/// certificate for the connection (a second quote, signed by the KMS's temporary CA).
pub fn prepare(
    tee: &mut dyn QuoteSource,
    events: &[RuntimeEvent],
    kms: &KmsAccess,
    config: CertConfig,
    now_unix: u64,
) -> Result<PreparedRequest, SignCertError> {
    prepare_with_boot_log(tee, &[], events, kms, config, now_unix)
}

/// [`prepare`] with the firmware's boot events (RTMR0-2, digests only) first in the CSR's event
/// log, as dstack's guest agent sends its full event log; the RA-TLS client certificate keeps
/// only the RTMR3 events (what the legacy extension carries).
pub fn prepare_with_boot_log(
    tee: &mut dyn QuoteSource,
    boot_log: &[TdxEvent],
    events: &[RuntimeEvent],
    kms: &KmsAccess,
    config: CertConfig,
    now_unix: u64,
) -> Result<PreparedRequest, SignCertError> {
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| SignCertError::Key {
            what: "generate",
            source,
        })?;
    prepare_with_key(key, tee, boot_log, events, kms, config, now_unix)
}

/// [`prepare_with_boot_log`] for a given P-256 key (the guest API's Tappd `DeriveKey`
/// certifies a key derived from the app key).
pub fn prepare_with_key(
    key: KeyPair,
    tee: &mut dyn QuoteSource,
    boot_log: &[TdxEvent],
    events: &[RuntimeEvent],
    kms: &KmsAccess,
    config: CertConfig,
    now_unix: u64,
) -> Result<PreparedRequest, SignCertError> {
    let key_spki = key.subject_public_key_info();
    let report_data = ratls_report_data(&key_spki);
    let quote = tee
        .quote(&report_data)
        .map_err(|source| SignCertError::Quote { source })?;
    let csr = CertSigningRequest {
        confirm: CONFIRM.to_owned(),
        pubkey: key_spki.clone(),
        config,
        attestation: TdxAttestation {
            quote,
            event_log: boot_log
                .iter()
                .cloned()
                .chain(events.iter().map(TdxEvent::runtime))
                .collect(),
            report_data,
            ..TdxAttestation::default()
        },
    };
    let key_der = Secret::new(key.serialize_der());
    let signature = csr.sign(key_der.expose())?;
    let client_err = |source| SignCertError::ClientCertificate { source };
    let temp_ca = CaSigner::from_pem(
        "temporary",
        &kms.temp_ca_cert_pem,
        kms.temp_ca_key_pem.expose(),
    )
    .map_err(client_err)?;
    let client = client_certificate(&temp_ca, tee, events, now_unix).map_err(client_err)?;
    let client_key_der = client.key_der().map_err(client_err)?;
    Ok(PreparedRequest {
        key_pem: Secret::new(key.serialize_pem()),
        key_spki,
        csr: csr.encode(),
        signature,
        client_cert_der: client.cert_der,
        client_key_der,
    })
}

/// `SignCert` request body (pRPC JSON).
#[derive(Debug, Serialize, Deserialize)]
pub struct SignCertRequest {
    /// [`API_VERSION`].
    pub api_version: u32,
    /// Hex of the SCALE CSR.
    pub csr: String,
    /// Hex of the DER signature.
    pub signature: String,
    /// sys-config `vm_config`, verbatim.
    #[serde(default)]
    pub vm_config: String,
}

#[derive(Deserialize)]
struct SignCertReply {
    certificate_chain: Vec<String>,
}

/// Sends a prepared request to the KMS over mutual RA-TLS (trusting only the KMS root, which
/// must carry `kms:rpc`) and checks the reply: the leaf certifies our key and the chain ends in
/// the KMS root. `now_unix` is the validity time for the chain check (RFC 5280 path
/// validation from the leaf to the KMS root).
pub fn send(
    transport: &mut dyn KmsTransport,
    prepared: PreparedRequest,
    kms: &KmsAccess,
    vm_config: &str,
    now_unix: u64,
) -> Result<TlsKey, SignCertError> {
    let url = KmsUrl::parse(&kms.url).map_err(|source| SignCertError::Url {
        source: Box::new(source),
    })?;
    let (root_der, _) = certificate_der_and_spki(&kms.root_ca_pem).ok_or(SignCertError::RootCa)?;
    let body = serde_json::to_vec(&SignCertRequest {
        api_version: API_VERSION,
        csr: hex::encode(&prepared.csr),
        signature: hex::encode(&prepared.signature),
        vm_config: vm_config.to_owned(),
    })
    .map_err(|_| SignCertError::DecodeReply {
        url: url.url.clone(),
    })?;
    let response = transport
        .post(
            &url,
            &url.rpc_path("SignCert"),
            &body,
            TlsMode::Mutual {
                root_ca_der: &root_der,
                client_cert_der: &prepared.client_cert_der,
                client_key_der: &prepared.client_key_der,
            },
        )
        .map_err(|source| SignCertError::Transport {
            url: url.url.clone(),
            source,
        })?;
    let chain = parse_reply(&url.url, &response)?;
    let chain_err = |reason: String| SignCertError::Chain {
        url: url.url.clone(),
        reason,
    };
    verify_chain(&chain, &root_der, &prepared.key_spki, now_unix).map_err(chain_err)?;
    Ok(TlsKey {
        key_pem: prepared.key_pem,
        certificate_chain: chain,
    })
}

fn parse_reply(url: &str, response: &HttpResponse) -> Result<Vec<String>, SignCertError> {
    if response.status != 200 {
        let message = response.refusal_message();
        return Err(SignCertError::Refused {
            url: url.to_owned(),
            status: response.status,
            message,
        });
    }
    let reply: SignCertReply =
        serde_json::from_slice(&response.body).map_err(|_| SignCertError::DecodeReply {
            url: url.to_owned(),
        })?;
    if reply.certificate_chain.is_empty() || reply.certificate_chain.len() > MAX_CHAIN_LEN {
        return Err(SignCertError::DecodeReply {
            url: url.to_owned(),
        });
    }
    Ok(reply.certificate_chain)
}

/// Checks a `SignCert` chain (PEM, leaf first): the leaf's key is `leaf_spki`; the last
/// certificate is `root_der`; the leaf chains through the middle certificates to that root
/// (webpki path validation at `now_unix`, any EKU the leaf has accepted). `Err` is the reason.
pub fn verify_chain(
    chain: &[String],
    root_der: &[u8],
    leaf_spki: &[u8],
    now_unix: u64,
) -> Result<(), String> {
    use rustls_pki_types::{CertificateDer, UnixTime};
    let ders: Vec<Vec<u8>> = chain
        .iter()
        .map(|pem| certificate_der_and_spki(pem).ok_or("a certificate is not PEM X.509"))
        .map(|r| r.map(|(der, _)| der))
        .collect::<Result<_, _>>()?;
    let leaf_der = ders.first().ok_or("empty chain")?;
    let (_, spki) =
        certificate_der_and_spki(&chain[0]).ok_or("the leaf is not a P-256 certificate")?;
    if spki != leaf_spki {
        return Err("the leaf does not certify the requested key".into());
    }
    if ders.len() < 2 || ders.last().map(Vec::as_slice) != Some(root_der) {
        return Err("the chain does not end in the KMS root CA".into());
    }
    let root = CertificateDer::from(root_der.to_vec());
    let anchor = webpki::anchor_from_trusted_cert(&root).map_err(|e| format!("root CA: {e}"))?;
    let leaf = CertificateDer::from(leaf_der.clone());
    let end = webpki::EndEntityCert::try_from(&leaf).map_err(|e| format!("leaf: {e}"))?;
    let middle: Vec<CertificateDer<'_>> = ders[1..ders.len() - 1]
        .iter()
        .map(|d| CertificateDer::from(d.clone()))
        .collect();
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now_unix));
    let algs = crate::transport::crypto_provider()
        .signature_verification_algorithms
        .all;
    let server = webpki::KeyUsage::server_auth();
    let client = webpki::KeyUsage::client_auth();
    let mut last = String::new();
    for usage in [&server, &client] {
        match end.verify_for_usage(
            algs,
            std::slice::from_ref(&anchor),
            &middle,
            time,
            usage,
            None,
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("path validation to the KMS root failed: {last}"))
}

/// [`prepare`] then [`send`].
pub fn request_tls_key(
    transport: &mut dyn KmsTransport,
    tee: &mut dyn QuoteSource,
    events: &[RuntimeEvent],
    kms: &KmsAccess,
    vm_config: &str,
    config: CertConfig,
    now_unix: u64,
) -> Result<TlsKey, SignCertError> {
    let prepared = prepare(tee, events, kms, config, now_unix)?;
    send(transport, prepared, kms, vm_config, now_unix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream_csr(ext_quote: bool, quote: Vec<u8>) -> CertSigningRequest {
        CertSigningRequest {
            confirm: CONFIRM.into(),
            pubkey: vec![1, 2, 3],
            config: CertConfig {
                subject: "test.example.com".into(),
                usage_server_auth: true,
                ext_quote,
                ..CertConfig::default()
            },
            attestation: TdxAttestation {
                quote,
                ..TdxAttestation::default()
            },
        }
    }

    /// dstack `ra-tls/src/cert.rs` `test_csr_v2_scale_encoding_stable` (HEAD, with
    /// `ext_app_info`): the exact bytes.
    #[test]
    fn scale_encoding_known_answer() {
        let expected = "44706c65617365207369676e20636572743a0c0102030040746573742e6578616d706c652e636f6d0001000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";
        let csr = upstream_csr(false, vec![]);
        assert_eq!(hex::encode(csr.encode()), expected);
        let bytes = hex::decode(expected).unwrap();
        assert_eq!(CertSigningRequest::decode(&bytes).unwrap(), csr);
    }

    /// dstack `test_csr_v2_scale_encoding_stable_with_tdx_quote`.
    #[test]
    fn scale_encoding_known_answer_with_quote() {
        let expected = "44706c65617365207369676e20636572743a0c0102030040746573742e6578616d706c652e636f6d000100010000000000040900000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";
        let csr = upstream_csr(true, vec![9]);
        assert_eq!(hex::encode(csr.encode()), expected);
        assert_eq!(
            CertSigningRequest::decode(&hex::decode(expected).unwrap()).unwrap(),
            csr
        );
    }

    #[test]
    fn compact_lengths() {
        for (n, want) in [
            (0usize, "00"),
            (63, "fc"),
            (64, "0101"),
            (16383, "fdff"),
            (16384, "02000100"),
            (1 << 30, "0300000040"),
        ] {
            let mut out = Vec::new();
            put_compact(&mut out, n);
            assert_eq!(hex::encode(&out), want, "{n}");
            // Decoding checks the count against what is left, so pad.
            out.resize(out.len() + n.min(1 << 20), 0);
            if n <= 1 << 20 {
                assert_eq!(Reader { rest: &out }.compact("n").unwrap(), n);
            }
        }
    }

    #[test]
    fn full_round_trip_and_signature() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let event = RuntimeEvent::new("app-id", vec![7; 20]);
        let csr = CertSigningRequest {
            confirm: CONFIRM.into(),
            pubkey: key.subject_public_key_info(),
            config: CertConfig {
                org_name: Some("Org".into()),
                subject: "app.example".into(),
                subject_alt_names: vec!["a.example".into(), "10.0.0.1".into()],
                usage_server_auth: true,
                usage_client_auth: true,
                ext_quote: true,
                ext_app_info: true,
                not_before: Some(1_700_000_000),
                not_after: Some(1_800_000_000),
            },
            attestation: TdxAttestation {
                quote: vec![0xAB; 300],
                event_log: vec![TdxEvent::runtime(&event)],
                runtime_events: vec![("x".into(), vec![1])],
                report_data: [5; 64],
                config: "{}".into(),
            },
        };
        let bytes = csr.encode();
        let back = CertSigningRequest::decode(&bytes).unwrap();
        assert_eq!(back, csr);
        assert_eq!(back.attestation.runtime_events(), vec![event]);
        let signature = csr.sign(&key.serialize_der()).unwrap();
        csr.verify(&signature).unwrap();
        let mut bad = signature.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(csr.verify(&bad), Err(SignCertError::BadSignature)));
        let mut tampered = csr.clone();
        tampered.config.subject = "evil.example".into();
        assert!(matches!(
            tampered.verify(&signature),
            Err(SignCertError::BadSignature)
        ));
        let mut wrong_word = csr.clone();
        wrong_word.confirm = "sign".into();
        let sig = wrong_word.sign(&key.serialize_der()).unwrap();
        assert!(matches!(
            wrong_word.verify(&sig),
            Err(SignCertError::ConfirmWord)
        ));
        let mut not_a_key = csr;
        not_a_key.pubkey = vec![1, 2, 3];
        assert!(matches!(
            not_a_key.verify(&signature),
            Err(SignCertError::PublicKey)
        ));
    }

    /// Found by the `sign_cert_csr` fuzz target: a compact length in a longer mode than its
    /// value needs decoded, so one CSR had several byte encodings.
    #[test]
    fn decoder_rejects_non_canonical_compact_lengths() {
        let crash = hex::decode(
            "44706c65617365207369676e62000000000000000000000000000000000000000100000000ff\
             ffffffffffffffff00000000fcffffffffffffff000000000000000000000000000000000000\
             00000000000000000000000000000000000000005b0000",
        )
        .unwrap();
        assert!(matches!(
            CertSigningRequest::decode(&crash),
            Err(SignCertError::NonCanonicalLength { .. })
        ));
        for (bytes, canonical) in [
            (&[0x00u8][..], true),                              // 0, single byte
            (&[0x01, 0x00][..], false),                         // 0 in two-byte mode
            (&[0xfd, 0x00][..], false),                         // 63 in two-byte mode
            (&[0x01, 0x01][..], true),                          // 64 in two-byte mode
            (&[0x02, 0x00, 0x01, 0x00][..], true),              // 2^14 in four-byte mode
            (&[0xfe, 0xff, 0x00, 0x00][..], false),             // 2^14 - 1 in four-byte mode
            (&[0x03, 0xff, 0xff, 0xff, 0x3f][..], false),       // < 2^30 in big mode
            (&[0x07, 0x00, 0x00, 0x00, 0x40, 0x00][..], false), // zero top byte
        ] {
            let mut padded = bytes.to_vec();
            padded.extend(std::iter::repeat_n(0u8, 1 << 15));
            let mut r = Reader { rest: &padded };
            let got = r.compact("test");
            assert_eq!(
                !matches!(got, Err(SignCertError::NonCanonicalLength { .. })),
                canonical,
                "{bytes:02x?} -> {got:?}"
            );
        }
    }

    #[test]
    fn decoder_rejects_malformed() {
        let good = upstream_csr(true, vec![9]).encode();
        assert!(matches!(
            CertSigningRequest::decode(&good[..good.len() - 1]),
            Err(SignCertError::Truncated { .. })
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            CertSigningRequest::decode(&trailing),
            Err(SignCertError::Trailing { count: 1 })
        ));
        // usage_server_auth is at a fixed offset after confirm(18) pubkey(4) org(1) subject(17) alts(1).
        let mut bad_bool = good.clone();
        bad_bool[41] = 2;
        assert!(matches!(
            CertSigningRequest::decode(&bad_bool),
            Err(SignCertError::Tag {
                field: "usage_server_auth",
                tag: 2
            })
        ));
        let mut huge = good.clone();
        huge[0] = 0xfe; // 4-byte compact header claiming a huge confirm word
        CertSigningRequest::decode(&huge).unwrap_err();
        // Every truncation fails cleanly.
        for cut in 0..good.len() {
            CertSigningRequest::decode(&good[..cut]).unwrap_err();
        }
    }

    #[test]
    fn prepared_csr_binds_the_key_and_carries_the_logs() {
        use init_core::tee::Rtmr as _;
        let ca = crate::ratls::CertSpec {
            subject: "temp",
            ca_path_len: Some(0),
            ..Default::default()
        }
        .self_signed()
        .unwrap();
        let access = KmsAccess {
            url: "https://127.0.0.1:1".into(),
            root_ca_pem: ca.cert_pem.clone(),
            temp_ca_cert_pem: ca.cert_pem.clone(),
            temp_ca_key_pem: Secret::new(ca.key_pem.expose().clone()),
        };
        let mut tee = cvm_sim_tee::InsecureSimulatedTee::try_new().unwrap();
        let mut events = tee.pre_extended_events();
        let event = RuntimeEvent::new("app-id", vec![1; 20]);
        tee.extend_rtmr(init_core::tee::RtmrIndex::R3, &event.digest())
            .unwrap();
        events.push(event);
        let boot = TdxEvent {
            imr: 0,
            event_type: 1,
            digest: vec![9; 48],
            ..TdxEvent::default()
        };
        let prepared = prepare_with_boot_log(
            &mut tee,
            std::slice::from_ref(&boot),
            &events,
            &access,
            CertConfig::default(),
            1_800_000_000,
        )
        .unwrap();
        let csr = CertSigningRequest::decode(&prepared.csr).unwrap();
        csr.verify(&prepared.signature).unwrap();
        assert_eq!(csr.pubkey, prepared.key_spki);
        assert_eq!(csr.attestation.report_data, ratls_report_data(&csr.pubkey));
        assert_eq!(csr.attestation.event_log[0], boot);
        assert_eq!(csr.attestation.runtime_events(), events);
        // The quote binds the CSR key and the log replays to its RTMR3.
        let bound = crate::ratls::RaTlsCert {
            spki_der: csr.pubkey.clone(),
            quote: Some(csr.attestation.quote.clone()),
            event_log: Some(csr.attestation.event_log_json().into_bytes()),
            ..Default::default()
        };
        assert_eq!(bound.verify_binding().unwrap().1, events);
        // The client certificate is a separate key, signed by the temporary CA.
        let client = crate::ratls::RaTlsCert::parse(&prepared.client_cert_der).unwrap();
        assert_ne!(client.spki_der, csr.pubkey);
        assert!(!format!("{prepared:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn v2_event_digest_is_recognised() {
        let v2 = RuntimeEvent::new("x", vec![1]).with_version(EventLogVersion::V2);
        assert_eq!(TdxEvent::runtime(&v2).to_runtime(), Some(v2));
        let other = TdxEvent {
            imr: 1,
            ..TdxEvent::default()
        };
        assert_eq!(other.to_runtime(), None);
    }
}
