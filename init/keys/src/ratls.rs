//! RA-TLS certificates (`shared/specs/dstack-guest.md` §5.2-5.3): a fresh P-256 key whose
//! SubjectPublicKeyInfo is bound into a quote's report data as
//! `SHA-512("ratls-cert:" ‖ SPKI DER)`, and a certificate that carries the quote and the RTMR3
//! event log in dstack's extensions; parsing such certificates and checking the binding; and
//! the KMS-side certificates (root CA, temporary CA, RPC server certificate with the `kms:rpc`
//! usage, app CA) built the way dstack's KMS builds them.
//!
//! Extensions (each value a DER OCTET STRING wrapping the raw bytes, non-critical), OIDs under
//! 1.3.6.1.4.1.62397.1: `.1` raw TDX quote, `.2` event log (JSON array of TdxEvent), `.3`
//! app-id, `.4` special usage (`kms:rpc`, `app:ca`, `app:custom`), `.8` VersionedAttestation,
//! `.9` AppInfo. This init writes the legacy pair `.1` + `.2`, which every dstack KMS reads
//! (HEAD tries `.8` first, then `.1` + `.2`).

use der::{Decode as _, Encode as _};
use init_core::tee::report_data::{ReportDataHash, hashed};
use init_core::tee::{QuoteSource, REPORT_DATA_LEN, RuntimeEvent, TeeError};
use measure::dstack_event_log::DstackEvent;
use measure::quote::Quote;
use measure::runtime_event::{EventLogVersion, RUNTIME_EVENT_TYPE, replay_rtmr3};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    PublicKeyData as _,
};
use x509_cert::Certificate;

use crate::secret::{Secret, SecretString};

/// dstack's private enterprise arc: 1.3.6.1.4.1.62397.1.
const ARC: [u64; 8] = [1, 3, 6, 1, 4, 1, 62397, 1];

/// The dstack certificate extension OIDs.
pub mod oids {
    /// Raw TDX quote (legacy).
    pub const QUOTE: [u64; 9] = [1, 3, 6, 1, 4, 1, 62397, 1, 1];
    /// Event log, JSON array of TdxEvent (legacy).
    pub const EVENT_LOG: [u64; 9] = [1, 3, 6, 1, 4, 1, 62397, 1, 2];
    /// App-id.
    pub const APP_ID: [u64; 9] = [1, 3, 6, 1, 4, 1, 62397, 1, 3];
    /// Special usage (`kms:rpc`, `app:ca`, `app:custom`).
    pub const USAGE: [u64; 9] = [1, 3, 6, 1, 4, 1, 62397, 1, 4];
    /// VersionedAttestation.
    pub const ATTESTATION: [u64; 9] = [1, 3, 6, 1, 4, 1, 62397, 1, 8];
    /// AppInfo (MessagePack).
    pub const APP_INFO: [u64; 9] = [1, 3, 6, 1, 4, 1, 62397, 1, 9];
}

/// The usage of a KMS RPC server certificate.
pub const USAGE_KMS_RPC: &str = "kms:rpc";
/// The usage of an app CA.
pub const USAGE_APP_CA: &str = "app:ca";
/// Subject of the guest's temporary RA-TLS client certificate.
pub const CLIENT_CERT_SUBJECT: &str = "RA-TLS TEMP Cert";
/// Largest extension this parser accepts (a quote is ~5 KiB, an event log a few KiB).
pub const MAX_EXTENSION_LEN: usize = 256 * 1024;
/// Ten years, the client certificate's lifetime.
const TEN_YEARS_SECS: u64 = 10 * 365 * 86_400;

/// Errors of building and reading RA-TLS certificates.
#[derive(Debug, thiserror::Error)]
pub enum RaTlsError {
    /// Generating the certificate key failed.
    #[error("generate the RA-TLS key")]
    GenerateKey {
        #[source]
        source: rcgen::Error,
    },
    /// A CA private key is not a PEM P-256 key.
    #[error("parse the {which} CA key")]
    ParseCaKey {
        which: &'static str,
        #[source]
        source: rcgen::Error,
    },
    /// A CA certificate is not PEM/DER X.509.
    #[error("parse the {which} CA certificate")]
    ParseCaCert {
        which: &'static str,
        #[source]
        source: rcgen::Error,
    },
    /// The TEE could not quote.
    #[error("quote the RA-TLS key")]
    Quote {
        #[source]
        source: TeeError,
    },
    /// Reading the firmware boot event log for the certificate failed.
    #[error("read the boot event log for the RA-TLS certificate")]
    BootEventLog {
        #[source]
        source: Box<TeeError>,
    },
    /// The firmware boot event log does not parse.
    #[error("parse the boot event log for the RA-TLS certificate")]
    ParseBootEventLog {
        #[source]
        source: Box<measure::event_log::EventLogError>,
    },
    /// rcgen refused the parameters or signing failed.
    #[error("sign the {what} certificate")]
    SignCertificate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    /// A time is out of range for X.509.
    #[error("certificate time {unix} is out of range")]
    CertificateTime { unix: u64 },
    /// The certificate is not DER X.509.
    #[error("decode the certificate")]
    DecodeCertificate {
        #[source]
        source: der::Error,
    },
    /// An extension occurs twice.
    #[error("extension {oid} occurs more than once")]
    DuplicateExtension { oid: String },
    /// An extension's value is not a DER OCTET STRING or is too large.
    #[error("extension {oid} is not an OCTET STRING of at most {max} bytes")]
    DecodeExtension { oid: String, max: usize },
    /// Re-encoding the SPKI failed.
    #[error("encode the certificate's public key")]
    EncodeSpki {
        #[source]
        source: der::Error,
    },
    /// A requested certificate's public key is not a SubjectPublicKeyInfo.
    #[error("parse the requested public key")]
    ParseSubjectKey {
        #[source]
        source: rcgen::Error,
    },
    /// The certificate carries no quote.
    #[error("certificate carries no quote")]
    MissingQuote,
    /// The quote is malformed.
    #[error("parse the certificate's quote")]
    ParseQuote {
        #[source]
        source: measure::quote::QuoteError,
    },
    /// The quote's report data is not `SHA-512("ratls-cert:" ‖ SPKI)` of this certificate.
    #[error("quote report data does not bind the certificate's public key")]
    ReportDataMismatch,
    /// The event log is missing or malformed.
    #[error("parse the certificate's event log")]
    ParseEventLog {
        #[source]
        source: measure::dstack_event_log::DstackEventLogError,
    },
    /// The certificate carries no event log.
    #[error("certificate carries no event log")]
    MissingEventLog,
    /// A runtime event's recorded digest differs from the one recomputed from its name and
    /// payload (two verifiers could see two different logs).
    #[error("event {index} records a digest that its name and payload do not produce")]
    EventDigestMismatch { index: usize },
    /// The event log does not replay to the quote's RTMR3.
    #[error("event log replays to RTMR3 {replayed}, the quote has {quoted}")]
    Rtmr3Mismatch { replayed: String, quoted: String },
}

/// A DER OCTET STRING holding `content`.
pub fn der_octet_string(content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![0x04];
    if len < 0x80 {
        out.push(u8::try_from(len).unwrap_or(0));
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | u8::try_from(bytes.len() - skip).unwrap_or(0));
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn extension(oid: &[u64], content: &[u8]) -> CustomExtension {
    CustomExtension::from_oid_content(oid, der_octet_string(content))
}

/// `SHA-512("ratls-cert:" ‖ spki_der)`: the report data that binds a certificate key.
pub fn ratls_report_data(spki_der: &[u8]) -> [u8; REPORT_DATA_LEN] {
    // SHA-512 fills the 64 bytes exactly; `hashed` cannot fail for it.
    hashed("ratls-cert", spki_der, ReportDataHash::Sha512).unwrap_or([0; REPORT_DATA_LEN])
}

/// The TdxEvent JSON array of runtime events (`imr` 3, type 0x08000001, the event's digest in
/// hex, hex payload, `"version":2` for V2 events), as the legacy event-log extension carries it.
/// The digest is filled in (dstack's `GetQuote` leaves it empty) so that verifiers that replay
/// recorded digests and verifiers that recompute them from name and payload both accept it.
pub fn event_log_json(events: &[RuntimeEvent]) -> String {
    event_log_json_with_boot(&[], events)
}

/// The TdxEvent JSON array of the firmware `boot` events (`imr` 0-2, their digest, name and
/// payload empty except the ACPI events `acpi-loader`, `acpi-rsdp`, `acpi-tables` with payload
/// `ACPI DATA`: `measure::dstack_event_log::exposed_boot_events`) followed by the runtime
/// `events` as [`event_log_json`] writes them: the whole log, as dstack's client certificate and
/// `GetQuote` carry it.
pub fn event_log_json_with_boot(boot: &[DstackEvent], events: &[RuntimeEvent]) -> String {
    let boot_entries = boot.iter().map(|event| {
        serde_json::json!({
            "imr": event.rtmr.value(),
            "event_type": event.event_type,
            "digest": event.digest.map(|d| hex::encode(d.0)).unwrap_or_default(),
            "event": event.event,
            "event_payload": hex::encode(&event.event_payload),
        })
    });
    let entries: Vec<serde_json::Value> = boot_entries
        .chain(events.iter().map(|event| {
            let mut entry = serde_json::json!({
                "imr": 3,
                "event_type": RUNTIME_EVENT_TYPE,
                "digest": hex::encode(event.digest().0),
                "event": event.name,
                "event_payload": hex::encode(&event.payload),
            });
            if event.version == EventLogVersion::V2 {
                entry["version"] = serde_json::json!(2);
            }
            entry
        }))
        .collect();
    serde_json::Value::Array(entries).to_string()
}

/// The boot events of `tee`'s firmware log in dstack's exposed form (none without a log).
fn quoted_boot_events(tee: &mut dyn QuoteSource) -> Result<Vec<DstackEvent>, RaTlsError> {
    let log = tee
        .quoted_boot_event_log()
        .map_err(|source| RaTlsError::BootEventLog {
            source: Box::new(source),
        })?;
    if log.is_empty() {
        return Ok(Vec::new());
    }
    let parsed = measure::event_log::EventLog::parse(&log).map_err(|source| {
        RaTlsError::ParseBootEventLog {
            source: Box::new(source),
        }
    })?;
    Ok(measure::dstack_event_log::exposed_boot_events(&parsed))
}

fn time_from_unix(unix: u64) -> Result<time::OffsetDateTime, RaTlsError> {
    i64::try_from(unix)
        .ok()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .ok_or(RaTlsError::CertificateTime { unix })
}

/// A certificate and its private key.
#[derive(Debug)]
pub struct CertifiedKey {
    /// DER certificate.
    pub cert_der: Vec<u8>,
    /// PEM certificate.
    pub cert_pem: String,
    /// PKCS#8 PEM private key.
    pub key_pem: SecretString,
}

impl CertifiedKey {
    /// The PKCS#8 DER private key.
    pub fn key_der(&self) -> Result<Secret<Vec<u8>>, RaTlsError> {
        KeyPair::from_pem(self.key_pem.expose())
            .map(|k| Secret::new(k.serialize_der()))
            .map_err(|source| RaTlsError::ParseCaKey {
                which: "own",
                source,
            })
    }
}

fn fresh_key() -> Result<KeyPair, RaTlsError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|source| RaTlsError::GenerateKey { source })
}

fn certified(cert: rcgen::Certificate, key: &KeyPair) -> CertifiedKey {
    CertifiedKey {
        cert_der: cert.der().to_vec(),
        cert_pem: cert.pem(),
        key_pem: Secret::new(key.serialize_pem()),
    }
}

/// A CA (certificate PEM and key) that signs other certificates.
pub struct CaSigner {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for CaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaSigner")
            .field("cert_pem", &self.cert_pem)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl CaSigner {
    /// Loads a CA from its PEM certificate and PEM private key.
    pub fn from_pem(
        which: &'static str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self, RaTlsError> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(|source| RaTlsError::ParseCaKey { which, source })?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|source| RaTlsError::ParseCaCert { which, source })?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }
}

/// What a certificate is for.
#[derive(Debug, Clone, Default)]
pub struct CertSpec<'a> {
    /// Organization (O), if any.
    pub org_name: Option<&'a str>,
    /// Common name (CN).
    pub subject: &'a str,
    /// DNS names or IP addresses.
    pub alt_names: Vec<String>,
    /// `Some(n)`: a CA with path length `n`.
    pub ca_path_len: Option<u8>,
    /// dstack special usage extension.
    pub special_usage: Option<&'a str>,
    /// App-id extension.
    pub app_id: Option<&'a [u8]>,
    /// Raw quote extension (legacy `.1`).
    pub quote: Option<&'a [u8]>,
    /// Event log extension (legacy `.2`).
    pub event_log: Option<&'a [u8]>,
    /// TLS server usage.
    pub server_auth: bool,
    /// TLS client usage.
    pub client_auth: bool,
    /// notBefore (Unix seconds); rcgen's default (1975) when `None`.
    pub not_before: Option<u64>,
    /// notAfter (Unix seconds); rcgen's default (4096) when `None`.
    pub not_after: Option<u64>,
}

impl CertSpec<'_> {
    fn params(&self) -> Result<CertificateParams, RaTlsError> {
        let mut params = CertificateParams::new(self.alt_names.clone()).map_err(|source| {
            RaTlsError::SignCertificate {
                what: "requested",
                source,
            }
        })?;
        let mut dn = DistinguishedName::new();
        if let Some(org) = self.org_name {
            dn.push(DnType::OrganizationName, org);
        }
        dn.push(DnType::CommonName, self.subject);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if self.server_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if self.client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        if let Some(app_id) = self.app_id {
            params
                .custom_extensions
                .push(extension(&oids::APP_ID, app_id));
        }
        if let Some(usage) = self.special_usage {
            params
                .custom_extensions
                .push(extension(&oids::USAGE, usage.as_bytes()));
        }
        if let Some(quote) = self.quote {
            params
                .custom_extensions
                .push(extension(&oids::QUOTE, quote));
        }
        if let Some(log) = self.event_log {
            params
                .custom_extensions
                .push(extension(&oids::EVENT_LOG, log));
        }
        if let Some(path_len) = self.ca_path_len {
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
            params.key_usages.push(KeyUsagePurpose::KeyCertSign);
            params.key_usages.push(KeyUsagePurpose::CrlSign);
        }
        if let Some(unix) = self.not_before {
            params.not_before = time_from_unix(unix)?;
        }
        if let Some(unix) = self.not_after {
            params.not_after = time_from_unix(unix)?;
        }
        Ok(params)
    }

    /// A self-signed certificate with a fresh P-256 key.
    pub fn self_signed(&self) -> Result<CertifiedKey, RaTlsError> {
        let key = fresh_key()?;
        self.self_signed_with(&key)
    }

    /// A self-signed certificate for `key`.
    pub fn self_signed_with(&self, key: &KeyPair) -> Result<CertifiedKey, RaTlsError> {
        let cert =
            self.params()?
                .self_signed(key)
                .map_err(|source| RaTlsError::SignCertificate {
                    what: self.subject_kind(),
                    source,
                })?;
        Ok(certified(cert, key))
    }

    /// A certificate for a fresh P-256 key, signed by `ca`.
    pub fn signed_by(&self, ca: &CaSigner) -> Result<CertifiedKey, RaTlsError> {
        let key = fresh_key()?;
        self.signed_by_with(&key, ca)
    }

    /// A certificate for `key`, signed by `ca`.
    pub fn signed_by_with(&self, key: &KeyPair, ca: &CaSigner) -> Result<CertifiedKey, RaTlsError> {
        let cert = self
            .params()?
            .signed_by(key, &ca.issuer)
            .map_err(|source| RaTlsError::SignCertificate {
                what: self.subject_kind(),
                source,
            })?;
        Ok(certified(cert, key))
    }

    /// A certificate for someone else's public key (`spki_der`, SubjectPublicKeyInfo DER),
    /// signed by `ca`: what a KMS does with a CSR. Returns (DER, PEM).
    pub fn signed_for_spki(
        &self,
        spki_der: &[u8],
        ca: &CaSigner,
    ) -> Result<(Vec<u8>, String), RaTlsError> {
        let public = rcgen::SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|source| RaTlsError::ParseSubjectKey { source })?;
        let cert = self
            .params()?
            .signed_by(&public, &ca.issuer)
            .map_err(|source| RaTlsError::SignCertificate {
                what: self.subject_kind(),
                source,
            })?;
        Ok((cert.der().to_vec(), cert.pem()))
    }

    fn subject_kind(&self) -> &'static str {
        if self.ca_path_len.is_some() {
            "CA"
        } else {
            "leaf"
        }
    }
}

/// Imports a P-256 private key (PKCS#8 DER) as an rcgen key pair.
pub fn key_pair_from_pkcs8(der: &[u8]) -> Result<KeyPair, RaTlsError> {
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from(der.to_vec());
    KeyPair::from_pkcs8_der_and_sign_algo(&der, &PKCS_ECDSA_P256_SHA256).map_err(|source| {
        RaTlsError::ParseCaKey {
            which: "derived",
            source,
        }
    })
}

/// The guest's RA-TLS client certificate for the KMS: a fresh P-256 key; a quote whose report
/// data is [`ratls_report_data`] of its SPKI; subject [`CLIENT_CERT_SUBJECT`], key usage
/// digitalSignature, notAfter `now` + 10 years; the quote and the event log (the firmware boot
/// events of `tee`'s CCEL, ACPI events named as dstack names them, then `events`, the RTMR3 log
/// so far) in the legacy extensions; signed by the KMS's temporary CA.
pub fn client_certificate(
    temp_ca: &CaSigner,
    tee: &mut dyn QuoteSource,
    events: &[RuntimeEvent],
    now_unix: u64,
) -> Result<CertifiedKey, RaTlsError> {
    let key = fresh_key()?;
    let report_data = ratls_report_data(&key.subject_public_key_info());
    let quote = tee
        .quote(&report_data)
        .map_err(|source| RaTlsError::Quote { source })?;
    let boot = quoted_boot_events(tee)?;
    let log = event_log_json_with_boot(&boot, events);
    let spec = CertSpec {
        subject: CLIENT_CERT_SUBJECT,
        quote: Some(&quote),
        event_log: Some(log.as_bytes()),
        not_after: Some(now_unix.saturating_add(TEN_YEARS_SECS)),
        ..CertSpec::default()
    };
    spec.signed_by_with(&key, temp_ca)
}

/// The dstack parts of a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RaTlsCert {
    /// SubjectPublicKeyInfo DER.
    pub spki_der: Vec<u8>,
    /// `.1` raw quote.
    pub quote: Option<Vec<u8>>,
    /// `.2` event log.
    pub event_log: Option<Vec<u8>>,
    /// `.3` app-id.
    pub app_id: Option<Vec<u8>>,
    /// `.4` special usage.
    pub usage: Option<Vec<u8>>,
    /// `.8` VersionedAttestation.
    pub attestation: Option<Vec<u8>>,
    /// `.9` AppInfo.
    pub app_info: Option<Vec<u8>>,
}

impl RaTlsCert {
    /// Reads the dstack extensions of a DER certificate. Never panics.
    pub fn parse(der: &[u8]) -> Result<Self, RaTlsError> {
        let cert = Certificate::from_der(der)
            .map_err(|source| RaTlsError::DecodeCertificate { source })?;
        let tbs = cert.tbs_certificate();
        let mut out = Self {
            spki_der: tbs
                .subject_public_key_info()
                .to_der()
                .map_err(|source| RaTlsError::EncodeSpki { source })?,
            ..Self::default()
        };
        for ext in tbs.extensions().map(|e| e.as_slice()).unwrap_or_default() {
            let arcs: Vec<u64> = ext.extn_id.arcs().map(u64::from).collect();
            if arcs.len() != 9 || arcs[..8] != ARC {
                continue;
            }
            let slot = match arcs[8] {
                1 => &mut out.quote,
                2 => &mut out.event_log,
                3 => &mut out.app_id,
                4 => &mut out.usage,
                8 => &mut out.attestation,
                9 => &mut out.app_info,
                _ => continue,
            };
            let oid = ext.extn_id.to_string();
            if slot.is_some() {
                return Err(RaTlsError::DuplicateExtension { oid });
            }
            let inner = der::asn1::OctetString::from_der(ext.extn_value.as_bytes())
                .ok()
                .filter(|o| o.as_bytes().len() <= MAX_EXTENSION_LEN)
                .ok_or(RaTlsError::DecodeExtension {
                    oid,
                    max: MAX_EXTENSION_LEN,
                })?;
            *slot = Some(inner.as_bytes().to_vec());
        }
        Ok(out)
    }

    /// True when the special-usage extension is exactly `usage`.
    pub fn has_usage(&self, usage: &str) -> bool {
        self.usage.as_deref() == Some(usage.as_bytes())
    }

    /// Checks that the quote binds this certificate's key and that the event log replays to
    /// the quote's RTMR3; returns both parsed. (The quote's own signature chain is the
    /// verifier's business: see `test-kms`.)
    pub fn verify_binding(&self) -> Result<(Quote, Vec<RuntimeEvent>), RaTlsError> {
        let quote_bytes = self.quote.as_deref().ok_or(RaTlsError::MissingQuote)?;
        let quote =
            Quote::parse(quote_bytes).map_err(|source| RaTlsError::ParseQuote { source })?;
        if quote.body.report_data.0 != ratls_report_data(&self.spki_der) {
            return Err(RaTlsError::ReportDataMismatch);
        }
        let log = self
            .event_log
            .as_deref()
            .ok_or(RaTlsError::MissingEventLog)?;
        let text = String::from_utf8_lossy(log);
        let entries = measure::dstack_event_log::parse_event_log(&text)
            .map_err(|source| RaTlsError::ParseEventLog { source })?;
        let mut events = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let Some(event) = entry.runtime_event() else {
                continue;
            };
            if entry.digest.is_some_and(|d| d != event.digest()) {
                return Err(RaTlsError::EventDigestMismatch { index });
            }
            events.push(event);
        }
        let replayed = replay_rtmr3(&events);
        let quoted = *quote.rtmrs().register(measure::rtmr::RtmrIndex::R3);
        if replayed != quoted {
            return Err(RaTlsError::Rtmr3Mismatch {
                replayed: hex::encode(replayed.0),
                quoted: hex::encode(quoted.0),
            });
        }
        Ok((quote, events))
    }
}

#[cfg(test)]
mod tests {
    use cvm_sim_tee::InsecureSimulatedTee;
    use init_core::tee::Rtmr as _;

    use super::*;

    fn temp_ca() -> CaSigner {
        let ca = CertSpec {
            org_name: Some("Dstack"),
            subject: "Dstack Client Temp CA",
            ca_path_len: Some(0),
            ..CertSpec::default()
        }
        .self_signed()
        .unwrap();
        CaSigner::from_pem("temp", &ca.cert_pem, ca.key_pem.expose()).unwrap()
    }

    fn tee_with_events() -> (InsecureSimulatedTee, Vec<RuntimeEvent>) {
        let mut tee = InsecureSimulatedTee::try_new().unwrap();
        let mut events = tee.pre_extended_events();
        for (name, payload) in [("system-preparing", vec![]), ("app-id", vec![1; 20])] {
            let event = RuntimeEvent::new(name, payload);
            tee.extend_rtmr(measure::rtmr::RtmrIndex::R3, &event.digest())
                .unwrap();
            events.push(event);
        }
        (tee, events)
    }

    #[test]
    fn octet_string_lengths() {
        assert_eq!(der_octet_string(b"ab"), [4, 2, b'a', b'b']);
        let long = der_octet_string(&[0; 200]);
        assert_eq!(&long[..3], &[4, 0x81, 200]);
        let longer = der_octet_string(&[0; 5000]);
        assert_eq!(&longer[..4], &[4, 0x82, 0x13, 0x88]);
        assert_eq!(longer.len(), 5004);
    }

    /// A simulated TEE whose firmware log is dstack's CCEL sample.
    struct WithBootLog(InsecureSimulatedTee);

    impl QuoteSource for WithBootLog {
        fn report(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError> {
            self.0.report(report_data)
        }

        fn quote(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError> {
            self.0.quote(report_data)
        }

        fn quoted_boot_event_log(&mut self) -> Result<Vec<u8>, TeeError> {
            Ok(include_bytes!("../testdata/dstack-ccel.bin").to_vec())
        }
    }

    #[test]
    fn client_certificate_carries_the_boot_events_with_dstack_acpi_names() {
        let ca = temp_ca();
        let (tee, events) = tee_with_events();
        let mut tee = WithBootLog(tee);
        let cert = client_certificate(&ca, &mut tee, &events, 1_800_000_000).unwrap();
        let parsed = RaTlsCert::parse(&cert.cert_der).unwrap();
        let text = String::from_utf8(parsed.event_log.clone().unwrap()).unwrap();
        let log = measure::dstack_event_log::parse_event_log(&text).unwrap();
        let boot: Vec<_> = log.iter().filter(|e| !e.is_runtime_event()).collect();
        // dstack's CCEL sample: 18 extended records after the Spec ID header.
        assert_eq!(boot.len(), 18);
        assert_eq!(log.len(), boot.len() + events.len());
        // Boot events first, each with its digest.
        assert!(log[..boot.len()].iter().all(|e| !e.is_runtime_event()));
        assert!(boot.iter().all(|e| e.digest.is_some()));
        let named: Vec<(&str, &[u8])> = boot
            .iter()
            .filter(|e| !e.event.is_empty())
            .map(|e| (e.event.as_str(), e.event_payload.as_slice()))
            .collect();
        assert_eq!(
            named,
            [
                ("acpi-loader", &b"ACPI DATA"[..]),
                ("acpi-rsdp", b"ACPI DATA"),
                ("acpi-tables", b"ACPI DATA")
            ]
        );
        // The KMS's RTMR3 check reads the runtime events only: the binding still verifies.
        let (_, replayed) = parsed.verify_binding().unwrap();
        assert_eq!(replayed, events);
        // No firmware log (the simulated TEE): runtime events only, as before.
        let (mut plain, events) = tee_with_events();
        let cert = client_certificate(&ca, &mut plain, &events, 1_800_000_000).unwrap();
        let parsed = RaTlsCert::parse(&cert.cert_der).unwrap();
        assert_eq!(
            parsed.event_log.unwrap(),
            event_log_json(&events).into_bytes()
        );
    }

    #[test]
    fn unparseable_boot_log_fails_the_certificate() {
        struct Garbage(InsecureSimulatedTee);
        impl QuoteSource for Garbage {
            fn report(&mut self, d: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError> {
                self.0.report(d)
            }
            fn quote(&mut self, d: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError> {
                self.0.quote(d)
            }
            fn quoted_boot_event_log(&mut self) -> Result<Vec<u8>, TeeError> {
                Ok(vec![0xAB; 40])
            }
        }
        let (tee, events) = tee_with_events();
        assert!(matches!(
            client_certificate(&temp_ca(), &mut Garbage(tee), &events, 0),
            Err(RaTlsError::ParseBootEventLog { .. })
        ));
    }

    #[test]
    fn client_certificate_binds_key_quote_and_log() {
        let ca = temp_ca();
        let (mut tee, events) = tee_with_events();
        let cert = client_certificate(&ca, &mut tee, &events, 1_800_000_000).unwrap();
        let parsed = RaTlsCert::parse(&cert.cert_der).unwrap();
        assert_eq!(parsed.spki_der.len(), 91);
        let (quote, replayed) = parsed.verify_binding().unwrap();
        assert_eq!(replayed, events);
        assert_eq!(
            quote.body.report_data.0,
            ratls_report_data(&parsed.spki_der)
        );
        assert!(parsed.usage.is_none());
        // The key in PEM is the certificate's key.
        let key = KeyPair::from_pem(cert.key_pem.expose()).unwrap();
        assert_eq!(key.subject_public_key_info(), parsed.spki_der);
        assert!(!format!("{cert:?}").contains("PRIVATE KEY"));
        // Issuer is the temp CA, subject the fixed name.
        let x509 = Certificate::from_der(&cert.cert_der).unwrap();
        assert_eq!(
            x509.tbs_certificate().subject().to_string(),
            "CN=RA-TLS TEMP Cert"
        );
        assert_eq!(
            x509.tbs_certificate().issuer().to_string(),
            "CN=Dstack Client Temp CA,O=Dstack"
        );
    }

    #[test]
    fn binding_failures_are_typed() {
        let ca = temp_ca();
        let (mut tee, events) = tee_with_events();
        // A quote over another key.
        let other = fresh_key().unwrap();
        let quote = tee
            .quote(&ratls_report_data(&other.subject_public_key_info()))
            .unwrap();
        let log = event_log_json(&events);
        let spec = CertSpec {
            subject: CLIENT_CERT_SUBJECT,
            quote: Some(&quote),
            event_log: Some(log.as_bytes()),
            ..CertSpec::default()
        };
        let cert = spec.signed_by(&ca).unwrap();
        assert!(matches!(
            RaTlsCert::parse(&cert.cert_der).unwrap().verify_binding(),
            Err(RaTlsError::ReportDataMismatch)
        ));
        // A log that does not replay to the quote.
        let key = fresh_key().unwrap();
        let quote = tee
            .quote(&ratls_report_data(&key.subject_public_key_info()))
            .unwrap();
        let short_log = event_log_json(&events[..1]);
        let spec = CertSpec {
            subject: CLIENT_CERT_SUBJECT,
            quote: Some(&quote),
            event_log: Some(short_log.as_bytes()),
            ..CertSpec::default()
        };
        let cert = spec.signed_by_with(&key, &ca).unwrap();
        assert!(matches!(
            RaTlsCert::parse(&cert.cert_der).unwrap().verify_binding(),
            Err(RaTlsError::Rtmr3Mismatch { .. })
        ));
        // A recorded digest that the name and payload do not produce.
        let key = fresh_key().unwrap();
        let quote = tee
            .quote(&ratls_report_data(&key.subject_public_key_info()))
            .unwrap();
        let mut entries: serde_json::Value =
            serde_json::from_str(&event_log_json(&events)).unwrap();
        entries[1]["digest"] = serde_json::json!("00".repeat(48));
        let forged = entries.to_string();
        let spec = CertSpec {
            subject: CLIENT_CERT_SUBJECT,
            quote: Some(&quote),
            event_log: Some(forged.as_bytes()),
            ..CertSpec::default()
        };
        let cert = spec.signed_by_with(&key, &ca).unwrap();
        assert!(matches!(
            RaTlsCert::parse(&cert.cert_der).unwrap().verify_binding(),
            Err(RaTlsError::EventDigestMismatch { index: 1 })
        ));
        // No quote at all.
        let plain = CertSpec {
            subject: "x",
            special_usage: Some(USAGE_KMS_RPC),
            ..CertSpec::default()
        }
        .signed_by(&ca)
        .unwrap();
        let parsed = RaTlsCert::parse(&plain.cert_der).unwrap();
        assert!(parsed.has_usage("kms:rpc"));
        assert!(!parsed.has_usage("app:ca"));
        assert!(matches!(
            parsed.verify_binding(),
            Err(RaTlsError::MissingQuote)
        ));
        assert!(matches!(
            RaTlsCert::parse(b"\x30\x03garbage"),
            Err(RaTlsError::DecodeCertificate { .. })
        ));
    }

    #[test]
    fn event_log_json_parses_back() {
        let events = vec![
            RuntimeEvent::new("a", vec![1, 2]),
            RuntimeEvent::new("b", vec![]).with_version(EventLogVersion::V2),
        ];
        let text = event_log_json(&events);
        let parsed = measure::dstack_event_log::parse_event_log(&text).unwrap();
        let back: Vec<RuntimeEvent> = parsed.iter().filter_map(|e| e.runtime_event()).collect();
        assert_eq!(back, events);
        // Recorded digests equal the recomputed ones.
        for (entry, event) in parsed.iter().zip(&events) {
            assert_eq!(entry.digest, Some(event.digest()));
        }
    }
}
