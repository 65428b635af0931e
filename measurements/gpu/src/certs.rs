//! X.509 chains: the 5-certificate device chain (leaf first, pinned NVIDIA Device Identity CA
//! last) and the RIM signing chain (pinned NVIDIA CoRIM signing root). Every key is P-384 and
//! every signature ECDSA-with-SHA384 (spec §1.5, §1.7).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use der::asn1::ObjectIdentifier;
use der::{Decode as _, Encode as _};
use p384::ecdsa::signature::Verifier as _;
use p384::ecdsa::{Signature, VerifyingKey};
use thiserror::Error;
use x509_cert::Certificate;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};

use crate::UnixTime;

/// The NVIDIA Device Identity CA (root of every GPU and NVSwitch device chain), PEM.
pub const DEVICE_IDENTITY_ROOT_PEM: &str = include_str!("../roots/nvidia_device_identity_ca.pem");
/// The NVIDIA CoRIM signing Root CA (root of every RIM signing chain), PEM.
pub const CORIM_SIGNING_ROOT_PEM: &str = include_str!("../roots/nvidia_corim_signing_root_ca.pem");
/// Certificates in a device chain.
pub const DEVICE_CHAIN_LEN: usize = 5;
/// Certificates in a RIM signing chain (signer, L3, CA, root).
pub const RIM_CHAIN_LEN: usize = 4;

const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// TCG DICE TcbInfo (Hopper): the FWID is the last 48 bytes of the extension value.
pub const TCB_INFO_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.5.4.1");
/// Newer TcbInfo encoding (Blackwell): fwids is element `[6]`, take the first entry.
pub const TCB_INFO_V2_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.5.4.1.1");

/// Why a certificate chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChainError {
    /// A PEM block is malformed.
    #[error("certificate {index}: PEM block is malformed")]
    DecodePem { index: usize },
    /// A certificate's DER does not parse.
    #[error("certificate {index}: DER does not parse")]
    DecodeCertificate {
        index: usize,
        #[source]
        source: der::Error,
    },
    /// Wrong number of certificates.
    #[error("chain has {actual} certificates, expected {expected}")]
    CheckLength { expected: usize, actual: usize },
    /// The device's copy of the root is not the pinned root.
    #[error("the last certificate is not the pinned root")]
    CheckRoot,
    /// A certificate's issuer is not the next certificate's subject.
    #[error("certificate {index}: issuer is not the subject of certificate {next}", next = index + 1)]
    CheckIssuer { index: usize },
    /// Not an EC P-384 key.
    #[error("certificate {index}: public key is not EC P-384")]
    CheckKeyAlgorithm { index: usize },
    /// Not ecdsa-with-SHA384.
    #[error("certificate {index}: signature algorithm is not ecdsa-with-SHA384")]
    CheckSignatureAlgorithm { index: usize },
    /// The signature does not verify under the issuer's key.
    #[error("certificate {index}: signature does not verify under its issuer's key")]
    VerifySignature { index: usize },
    /// A CA certificate lacks basicConstraints CA=true.
    #[error("certificate {index}: not a CA (basicConstraints)")]
    CheckCa { index: usize },
    /// keyUsage forbids the use (leaf: digitalSignature; CA: keyCertSign).
    #[error("certificate {index}: keyUsage does not allow {usage}")]
    CheckKeyUsage { index: usize, usage: &'static str },
    /// notAfter is before the verification time.
    #[error("certificate {index} ({subject}) expired at {not_after}")]
    CheckExpiry {
        index: usize,
        subject: String,
        not_after: u64,
    },
    /// notBefore is after the verification time.
    #[error("certificate {index} ({subject}) is valid only from {not_before}")]
    CheckNotYetValid {
        index: usize,
        subject: String,
        not_before: u64,
    },
    /// An extension does not decode.
    #[error("certificate {index}: extension {oid} does not decode")]
    DecodeExtension { index: usize, oid: String },
}

/// One certificate with its DER.
#[derive(Debug, Clone)]
pub struct ParsedCert {
    /// The DER bytes.
    pub der: Vec<u8>,
    /// The decoded certificate.
    pub cert: Certificate,
}

impl ParsedCert {
    /// Decodes one DER certificate; `index` is for error messages.
    pub fn from_der(der: Vec<u8>, index: usize) -> Result<Self, ChainError> {
        let cert = Certificate::from_der(&der)
            .map_err(|source| ChainError::DecodeCertificate { index, source })?;
        Ok(Self { der, cert })
    }

    /// The subject as an RFC 4514 string.
    pub fn subject(&self) -> String {
        self.cert.tbs_certificate().subject().to_string()
    }

    /// The subject's common name, if any.
    pub fn common_name(&self) -> Option<String> {
        let subject = self.subject();
        subject
            .split(',')
            .find_map(|part| part.trim().strip_prefix("CN=").map(str::to_owned))
    }

    /// Serial number bytes (big-endian).
    pub fn serial(&self) -> Vec<u8> {
        self.cert
            .tbs_certificate()
            .serial_number()
            .as_bytes()
            .to_vec()
    }

    /// notAfter in Unix seconds.
    pub fn not_after(&self) -> u64 {
        self.cert
            .tbs_certificate()
            .validity()
            .not_after
            .to_unix_duration()
            .as_secs()
    }

    /// notBefore in Unix seconds.
    pub fn not_before(&self) -> u64 {
        self.cert
            .tbs_certificate()
            .validity()
            .not_before
            .to_unix_duration()
            .as_secs()
    }

    /// The P-384 public key, if it is one.
    pub fn p384_key(&self, index: usize) -> Result<VerifyingKey, ChainError> {
        let spki = self.cert.tbs_certificate().subject_public_key_info();
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        if spki.algorithm.oid != EC_PUBLIC_KEY || curve != Some(SECP384R1) {
            return Err(ChainError::CheckKeyAlgorithm { index });
        }
        let bytes = spki
            .subject_public_key
            .as_bytes()
            .ok_or(ChainError::CheckKeyAlgorithm { index })?;
        VerifyingKey::from_sec1_bytes(bytes).map_err(|_| ChainError::CheckKeyAlgorithm { index })
    }

    /// The raw extension value of `oid`, if present.
    pub fn extension(&self, oid: ObjectIdentifier) -> Option<&[u8]> {
        self.cert
            .tbs_certificate()
            .extensions()?
            .iter()
            .find(|e| e.extn_id == oid)
            .map(|e| e.extn_value.as_bytes())
    }

    /// Verifies this certificate's signature with `issuer_key`.
    fn verify_signed_by(&self, issuer_key: &VerifyingKey, index: usize) -> Result<(), ChainError> {
        if self.cert.signature_algorithm().oid != ECDSA_WITH_SHA384 {
            return Err(ChainError::CheckSignatureAlgorithm { index });
        }
        let tbs = tbs_bytes(&self.der).ok_or(ChainError::VerifySignature { index })?;
        let sig_bytes = self
            .cert
            .signature()
            .as_bytes()
            .ok_or(ChainError::VerifySignature { index })?;
        let signature =
            Signature::from_der(sig_bytes).map_err(|_| ChainError::VerifySignature { index })?;
        issuer_key
            .verify(tbs, &signature)
            .map_err(|_| ChainError::VerifySignature { index })
    }

    fn check_validity(&self, index: usize, now: UnixTime) -> Result<(), ChainError> {
        if now.0 < self.not_before() {
            return Err(ChainError::CheckNotYetValid {
                index,
                subject: self.subject(),
                not_before: self.not_before(),
            });
        }
        if now.0 > self.not_after() {
            return Err(ChainError::CheckExpiry {
                index,
                subject: self.subject(),
                not_after: self.not_after(),
            });
        }
        Ok(())
    }

    fn basic_constraints_ca(&self, index: usize) -> Result<bool, ChainError> {
        match self
            .cert
            .tbs_certificate()
            .get_extension::<BasicConstraints>()
        {
            Ok(Some((_, bc))) => Ok(bc.ca),
            Ok(None) => Ok(false),
            Err(_) => Err(ChainError::DecodeExtension {
                index,
                oid: "2.5.29.19".into(),
            }),
        }
    }

    fn key_usage(&self, index: usize) -> Result<Option<KeyUsage>, ChainError> {
        match self.cert.tbs_certificate().get_extension::<KeyUsage>() {
            Ok(found) => Ok(found.map(|(_, ku)| ku)),
            Err(_) => Err(ChainError::DecodeExtension {
                index,
                oid: "2.5.29.15".into(),
            }),
        }
    }
}

/// True when `cert`'s signature verifies under `authority`'s P-384 key.
pub(crate) fn signed_by(cert: &ParsedCert, authority: &ParsedCert) -> bool {
    authority
        .p384_key(1)
        .is_ok_and(|key| cert.verify_signed_by(&key, 0).is_ok())
}

/// The bytes of the TBSCertificate inside a certificate's DER (the signed part), taken as
/// they are rather than re-encoded.
fn tbs_bytes(der: &[u8]) -> Option<&[u8]> {
    let (outer_header, _) = crate::der_util::header(der)?;
    let inner = der.get(outer_header..)?;
    let (header, len) = crate::der_util::header(inner)?;
    inner.get(..header.checked_add(len)?)
}

/// Splits PEM text into certificates (leaf first, as NVML returns them).
pub fn parse_pem_chain(pem: &[u8]) -> Result<Vec<ParsedCert>, ChainError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = std::str::from_utf8(pem).map_err(|_| ChainError::DecodePem { index: 0 })?;
    let mut certs = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let index = certs.len();
        let after = &rest[start + BEGIN.len()..];
        let end = after.find(END).ok_or(ChainError::DecodePem { index })?;
        let body: String = after[..end].split_whitespace().collect();
        let der = STANDARD
            .decode(body.as_bytes())
            .map_err(|_| ChainError::DecodePem { index })?;
        certs.push(ParsedCert::from_der(der, index)?);
        rest = &after[end + END.len()..];
    }
    if !rest
        .trim_matches(|c: char| c.is_whitespace() || c == '\0')
        .is_empty()
    {
        return Err(ChainError::DecodePem { index: certs.len() });
    }
    Ok(certs)
}

/// The one certificate in a PEM text.
pub fn parse_pem_cert(pem: &str) -> Result<ParsedCert, ChainError> {
    let mut certs = parse_pem_chain(pem.as_bytes())?;
    match (certs.pop(), certs.is_empty()) {
        (Some(cert), true) => Ok(cert),
        _ => Err(ChainError::DecodePem { index: 0 }),
    }
}

/// What a verified chain says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// Subjects, leaf first.
    pub subjects: Vec<String>,
    /// Earliest notAfter in the chain (Unix seconds).
    pub earliest_not_after: u64,
}

/// Verifies `chain` (leaf first) up to `root`: the last certificate is the root itself, or the
/// root is appended when the chain stops below it. Checks length, issuer/subject linkage,
/// P-384 keys, ecdsa-with-SHA384 signatures, CA flags and keyUsage, and validity at `now`.
/// With `require_root_copy`, the last certificate must be byte-identical to the root (the
/// device chain carries the device's copy).
pub fn verify_chain(
    chain: &[ParsedCert],
    root: &ParsedCert,
    expected_len: usize,
    require_root_copy: bool,
    now: UnixTime,
) -> Result<ChainSummary, ChainError> {
    let mut certs: Vec<&ParsedCert> = chain.iter().collect();
    let ends_in_root = certs.last().is_some_and(|c| c.der == root.der);
    if !ends_in_root {
        if require_root_copy && certs.len() == expected_len {
            return Err(ChainError::CheckRoot);
        }
        certs.push(root);
    }
    let last = certs.len() - 1;
    for (index, cert) in certs.iter().enumerate() {
        let issuer = certs.get(index + 1).copied().unwrap_or(cert);
        let tbs = cert.cert.tbs_certificate();
        let issuer_name = tbs.issuer().to_der().ok();
        let next_subject = issuer.cert.tbs_certificate().subject().to_der().ok();
        if issuer_name.is_none() || issuer_name != next_subject {
            return Err(ChainError::CheckIssuer { index });
        }
        cert.p384_key(index)?;
        let issuer_key = issuer.p384_key((index + 1).min(last))?;
        cert.verify_signed_by(&issuer_key, index)?;
        let usage = cert.key_usage(index)?;
        if index == 0 {
            if usage.is_some_and(|ku| !ku.digital_signature()) {
                return Err(ChainError::CheckKeyUsage {
                    index,
                    usage: "digitalSignature",
                });
            }
        } else {
            if !cert.basic_constraints_ca(index)? {
                return Err(ChainError::CheckCa { index });
            }
            if usage.is_some_and(|ku| !ku.key_cert_sign()) {
                return Err(ChainError::CheckKeyUsage {
                    index,
                    usage: "keyCertSign",
                });
            }
        }
    }
    // Length after linkage, so a chain to a foreign root reports the broken link.
    if certs.len() != expected_len {
        return Err(ChainError::CheckLength {
            expected: expected_len,
            actual: chain.len(),
        });
    }
    for (index, cert) in certs.iter().enumerate() {
        cert.check_validity(index, now)?;
    }
    Ok(ChainSummary {
        subjects: certs.iter().map(|c| c.subject()).collect(),
        earliest_not_after: certs.iter().map(|c| c.not_after()).min().unwrap_or(0),
    })
}

/// The FWID a leaf certificate binds: Hopper TcbInfo (last 48 bytes of the value) or the
/// Blackwell encoding (first entry of fwids `[6]`). `None` when neither extension exists.
pub fn leaf_fwid(leaf: &ParsedCert) -> Result<Option<[u8; 48]>, ChainError> {
    if let Some(value) = leaf.extension(TCB_INFO_OID) {
        let start = value
            .len()
            .checked_sub(48)
            .ok_or_else(|| ChainError::DecodeExtension {
                index: 0,
                oid: TCB_INFO_OID.to_string(),
            })?;
        let mut fwid = [0u8; 48];
        fwid.copy_from_slice(&value[start..]);
        return Ok(Some(fwid));
    }
    if let Some(value) = leaf.extension(TCB_INFO_V2_OID) {
        return crate::der_util::blackwell_fwid(value)
            .map(Some)
            .ok_or_else(|| ChainError::DecodeExtension {
                index: 0,
                oid: TCB_INFO_V2_OID.to_string(),
            });
    }
    Ok(None)
}
