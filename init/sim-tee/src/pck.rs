//! The signing side of the **INSECURE** simulated TEE, shaped like Intel DCAP: an attestation key
//! signs header ‖ body, a simulated QE report binds that key and is signed by a simulated PCK
//! key, and the PCK certificate chains leaf → intermediate → a root CA that is generated when the
//! TEE is created (never a key checked in). Every subject name says INSECURE SIMULATED.
//!
//! The certificates are plain X.509 v3 (ECDSA P-256 with SHA-256), encoded with `der` and
//! readable by `x509-cert`; only the `to-be-signed` part is encoded here, because `x509-cert`
//! 0.3 builds certificates only through its `builder` feature, which needs crates the build
//! does not carry.

use std::str::FromStr as _;
use std::time::Duration;

use base64::Engine as _;
use der::asn1::{BitString, OctetString, Uint, UtcTime};
use der::oid::AssociatedOid as _;
use der::{Any, Encode as _, Sequence};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::Generate as _;
use spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SubjectPublicKeyInfoOwned};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::name::Name;

use init_core::tee::BoxError;

/// Subject (and issuer) of the simulated root CA.
pub const ROOT_SUBJECT: &str =
    "CN=cvm-init INSECURE simulated PCK root,O=cvm-init INSECURE SIMULATED TEE";
/// Subject of the simulated intermediate (platform) CA.
pub const INTERMEDIATE_SUBJECT: &str =
    "CN=cvm-init INSECURE simulated PCK platform CA,O=cvm-init INSECURE SIMULATED TEE";
/// Subject of the simulated PCK leaf certificate.
pub const LEAF_SUBJECT: &str =
    "CN=cvm-init INSECURE simulated PCK certificate,O=cvm-init INSECURE SIMULATED TEE";

/// notBefore of every simulated certificate: 2025-01-01T00:00:00Z (fixed: the init has no
/// trustworthy clock, and the chain must not depend on one).
const NOT_BEFORE_UNIX: u64 = 1_735_689_600;
/// notAfter of every simulated certificate: 2049-12-31T23:59:59Z (the last UTCTime).
const NOT_AFTER_UNIX: u64 = 2_524_607_999;

const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_PRIME256V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");

/// Errors of the simulated signing side.
#[derive(Debug, thiserror::Error)]
pub enum SimulatedPckError {
    /// The OS random number generator failed while generating a key.
    #[error("generate the simulated {key} key")]
    GenerateKey {
        /// Which key.
        key: &'static str,
        #[source]
        source: BoxError,
    },
    /// A certificate could not be DER-encoded.
    #[error("encode the simulated {cert} certificate")]
    EncodeCertificate {
        /// Which certificate.
        cert: &'static str,
        #[source]
        source: der::Error,
    },
    /// A signer exported by another process of this boot could not be read back.
    #[error("read the exported simulated quote signer: {reason}")]
    ImportSigner {
        /// What was wrong with the bytes.
        reason: &'static str,
    },
    /// ECDSA signing failed.
    #[error("sign the simulated {what}")]
    Sign {
        /// What was being signed.
        what: &'static str,
        #[source]
        source: p256::ecdsa::Error,
    },
}

/// First bytes of [`QuoteSigner::to_bytes`].
const SIGNER_MAGIC: &[u8; 16] = b"CVM-SIM-SIGNER-1";

/// A private key whose `Debug` output is redacted.
#[derive(Clone)]
struct SecretSigningKey(SigningKey);

impl std::fmt::Debug for SecretSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl SecretSigningKey {
    fn generate(key: &'static str) -> Result<Self, SimulatedPckError> {
        SigningKey::try_generate()
            .map(Self)
            .map_err(|source| SimulatedPckError::GenerateKey {
                key,
                source: Box::new(source),
            })
    }

    fn verifying_key(&self) -> &VerifyingKey {
        self.0.verifying_key()
    }

    /// ECDSA P-256 / SHA-256 over `message`.
    fn sign(&self, what: &'static str, message: &[u8]) -> Result<Signature, SimulatedPckError> {
        self.0
            .try_sign(message)
            .map_err(|source| SimulatedPckError::Sign { what, source })
    }
}

/// The per-TEE signing material: attestation key, PCK key and the certificate chain.
#[derive(Clone)]
pub(super) struct QuoteSigner {
    attestation_key: SecretSigningKey,
    pck_key: SecretSigningKey,
    root_der: Vec<u8>,
    intermediate_der: Vec<u8>,
    leaf_der: Vec<u8>,
}

impl std::fmt::Debug for QuoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuoteSigner")
            .field("attestation_key", &self.attestation_key)
            .field("pck_key", &self.pck_key)
            .field("root_der_len", &self.root_der.len())
            .field("intermediate_der_len", &self.intermediate_der.len())
            .field("leaf_der_len", &self.leaf_der.len())
            .finish()
    }
}

impl QuoteSigner {
    /// Generates four fresh keys (root, intermediate, PCK, attestation) and the chain.
    pub(super) fn generate() -> Result<Self, SimulatedPckError> {
        let root_key = SecretSigningKey::generate("root CA")?;
        let intermediate_key = SecretSigningKey::generate("intermediate CA")?;
        let pck_key = SecretSigningKey::generate("PCK")?;
        let attestation_key = SecretSigningKey::generate("attestation")?;
        let root_der = certificate(
            CertificateSpec {
                name: "root CA",
                serial: 1,
                subject: ROOT_SUBJECT,
                issuer: ROOT_SUBJECT,
                ca_path_len: Some(1),
            },
            root_key.verifying_key(),
            &root_key,
        )?;
        let intermediate_der = certificate(
            CertificateSpec {
                name: "intermediate CA",
                serial: 2,
                subject: INTERMEDIATE_SUBJECT,
                issuer: ROOT_SUBJECT,
                ca_path_len: Some(0),
            },
            intermediate_key.verifying_key(),
            &root_key,
        )?;
        let leaf_der = certificate(
            CertificateSpec {
                name: "PCK",
                serial: 3,
                subject: LEAF_SUBJECT,
                issuer: INTERMEDIATE_SUBJECT,
                ca_path_len: None,
            },
            pck_key.verifying_key(),
            &intermediate_key,
        )?;
        Ok(Self {
            attestation_key,
            pck_key,
            root_der,
            intermediate_der,
            leaf_der,
        })
    }

    /// The signer as bytes, so another process of the same boot (the guest API server) signs
    /// with the same keys and chain: [`SIGNER_MAGIC`] ‖ attestation key ‖ PCK key (32-byte
    /// scalars) ‖ leaf, intermediate, root DER each behind a 4-byte big-endian length.
    /// INSECURE by construction: these keys only ever sign simulated quotes.
    pub(super) fn to_bytes(&self) -> Vec<u8> {
        let mut out = SIGNER_MAGIC.to_vec();
        out.extend_from_slice(&self.attestation_key.0.to_bytes());
        out.extend_from_slice(&self.pck_key.0.to_bytes());
        for der in [&self.leaf_der, &self.intermediate_der, &self.root_der] {
            let len = u32::try_from(der.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(der);
        }
        out
    }

    /// Reads [`Self::to_bytes`] back.
    pub(super) fn from_bytes(bytes: &[u8]) -> Result<Self, SimulatedPckError> {
        let bad = |reason: &'static str| SimulatedPckError::ImportSigner { reason };
        let rest = bytes
            .strip_prefix(SIGNER_MAGIC.as_slice())
            .ok_or_else(|| bad("no signer magic"))?;
        let (attestation, rest) = rest
            .split_at_checked(32)
            .ok_or_else(|| bad("truncated key"))?;
        let (pck, mut rest) = rest
            .split_at_checked(32)
            .ok_or_else(|| bad("truncated key"))?;
        let key = |raw: &[u8]| {
            SigningKey::from_slice(raw)
                .map(SecretSigningKey)
                .map_err(|_| bad("invalid P-256 scalar"))
        };
        let mut ders = Vec::with_capacity(3);
        for _ in 0..3 {
            let (len, tail) = rest
                .split_at_checked(4)
                .ok_or_else(|| bad("truncated length"))?;
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            let len = usize::try_from(len).map_err(|_| bad("certificate too long"))?;
            let (der, tail) = tail
                .split_at_checked(len)
                .ok_or_else(|| bad("truncated certificate"))?;
            ders.push(der.to_vec());
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        let [leaf_der, intermediate_der, root_der]: [Vec<u8>; 3] =
            ders.try_into().map_err(|_| bad("certificate count"))?;
        Ok(Self {
            attestation_key: key(attestation)?,
            pck_key: key(pck)?,
            root_der,
            intermediate_der,
            leaf_der,
        })
    }

    /// The raw attestation public key x ‖ y (64 bytes, big-endian), as a quote carries it.
    pub(super) fn attestation_public_key(&self) -> [u8; 64] {
        raw_public_key(self.attestation_key.verifying_key())
    }

    /// r ‖ s of the attestation key's signature over `signed` (header ‖ body).
    pub(super) fn sign_quote(&self, signed: &[u8]) -> Result<[u8; 64], SimulatedPckError> {
        self.attestation_key
            .sign("quote", signed)
            .map(|signature| signature.to_bytes().into())
    }

    /// r ‖ s of the PCK key's signature over the 384-byte QE report.
    pub(super) fn sign_qe_report(&self, qe_report: &[u8]) -> Result<[u8; 64], SimulatedPckError> {
        self.pck_key
            .sign("QE report", qe_report)
            .map(|signature| signature.to_bytes().into())
    }

    /// The root CA certificate (DER).
    pub(super) fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    /// The chain as type-5 certification data carries it: PEM, leaf, intermediate, root.
    pub(super) fn chain_pem(&self) -> String {
        [&self.leaf_der, &self.intermediate_der, &self.root_der]
            .into_iter()
            .map(|der| certificate_pem(der))
            .collect()
    }
}

/// One certificate as PEM text (64-column base64 lines, `\n` endings).
pub(super) fn certificate_pem(der: &[u8]) -> String {
    let base64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    // Base64 text is ASCII, so every 64-byte chunk is valid UTF-8.
    for line in base64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// x ‖ y of an uncompressed P-256 point (the SEC1 form minus its 0x04 prefix).
fn raw_public_key(key: &VerifyingKey) -> [u8; 64] {
    let point = key.to_sec1_point(false);
    let mut raw = [0u8; 64];
    if let Some(xy) = point.as_bytes().get(1..65) {
        raw.copy_from_slice(xy);
    }
    raw
}

/// What distinguishes the three certificates.
struct CertificateSpec {
    name: &'static str,
    serial: u8,
    subject: &'static str,
    issuer: &'static str,
    /// `Some(path length)` for a CA, `None` for the leaf.
    ca_path_len: Option<u8>,
}

/// RFC 5280 TBSCertificate (v3, no unique ids).
#[derive(Sequence)]
struct TbsCertificate {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT")]
    version: u8,
    serial_number: Uint,
    signature: AlgorithmIdentifierOwned,
    issuer: Name,
    validity: Validity,
    subject: Name,
    subject_public_key_info: SubjectPublicKeyInfoOwned,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT")]
    extensions: Vec<Extension>,
}

#[derive(Sequence)]
struct Validity {
    not_before: UtcTime,
    not_after: UtcTime,
}

/// RFC 5280 Certificate.
#[derive(Sequence)]
struct Certificate {
    tbs_certificate: TbsCertificate,
    signature_algorithm: AlgorithmIdentifierOwned,
    signature_value: BitString,
}

fn certificate(
    spec: CertificateSpec,
    subject_key: &VerifyingKey,
    issuer_key: &SecretSigningKey,
) -> Result<Vec<u8>, SimulatedPckError> {
    let cert = spec.name;
    let encode = |source| SimulatedPckError::EncodeCertificate { cert, source };
    let signature_algorithm = AlgorithmIdentifierOwned {
        oid: OID_ECDSA_WITH_SHA256,
        parameters: None,
    };
    let (basic_constraints, key_usage) = match spec.ca_path_len {
        Some(path_len) => (
            BasicConstraints {
                ca: true,
                path_len_constraint: Some(path_len),
            },
            KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign),
        ),
        None => (
            BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
            KeyUsage(KeyUsages::DigitalSignature | KeyUsages::NonRepudiation),
        ),
    };
    let extensions = vec![
        Extension {
            extn_id: BasicConstraints::OID,
            critical: true,
            extn_value: OctetString::new(basic_constraints.to_der().map_err(encode)?)
                .map_err(encode)?,
        },
        Extension {
            extn_id: KeyUsage::OID,
            critical: true,
            extn_value: OctetString::new(key_usage.to_der().map_err(encode)?).map_err(encode)?,
        },
    ];
    let tbs_certificate = TbsCertificate {
        version: 2,
        serial_number: Uint::new(&[spec.serial]).map_err(encode)?,
        signature: signature_algorithm.clone(),
        issuer: Name::from_str(spec.issuer).map_err(encode)?,
        validity: Validity {
            not_before: UtcTime::from_unix_duration(Duration::from_secs(NOT_BEFORE_UNIX))
                .map_err(encode)?,
            not_after: UtcTime::from_unix_duration(Duration::from_secs(NOT_AFTER_UNIX))
                .map_err(encode)?,
        },
        subject: Name::from_str(spec.subject).map_err(encode)?,
        subject_public_key_info: SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned {
                oid: OID_EC_PUBLIC_KEY,
                parameters: Some(Any::encode_from(&OID_PRIME256V1).map_err(encode)?),
            },
            subject_public_key: BitString::from_bytes(subject_key.to_sec1_point(false).as_bytes())
                .map_err(encode)?,
        },
        extensions,
    };
    let tbs = tbs_certificate.to_der().map_err(encode)?;
    let signature = issuer_key.sign("certificate", &tbs)?;
    Certificate {
        tbs_certificate,
        signature_algorithm,
        signature_value: BitString::from_bytes(signature.to_der().as_bytes()).map_err(encode)?,
    }
    .to_der()
    .map_err(encode)
}
