//! The NVAT serialized evidence format: a JSON array of
//! `{"arch", "nonce" (hex), "evidence" (base64 report), "certificate" (base64 PEM chain)}`.
//! The helper `cvm-gpu-evidence` writes the same shape.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::verify::GpuEvidence;

/// Why an evidence file does not parse.
#[derive(Debug, Error)]
pub enum EvidenceError {
    /// Not the expected JSON shape.
    #[error("evidence JSON does not parse")]
    ParseJson(#[source] serde_json::Error),
    /// A base64 field does not decode.
    #[error("entry {index}: {field} is not valid base64")]
    DecodeBase64 { index: usize, field: &'static str },
    /// The nonce is not 64 hex digits.
    #[error("entry {index}: nonce is not 32 bytes of hex")]
    DecodeNonce { index: usize },
}

/// One entry as serialized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerializedEvidence {
    /// `HOPPER`, `BLACKWELL` (or `LS10` for switches, which this verifier refuses).
    pub arch: String,
    /// The nonce, 64 hex digits.
    pub nonce: String,
    /// base64 of the raw report.
    pub evidence: String,
    /// base64 of the PEM chain text.
    pub certificate: String,
}

impl SerializedEvidence {
    /// Encodes raw evidence.
    pub fn new(arch: &str, nonce: &[u8; 32], report: &[u8], cert_chain: &[u8]) -> Self {
        Self {
            arch: arch.to_owned(),
            nonce: hex::encode(nonce),
            evidence: STANDARD.encode(report),
            certificate: STANDARD.encode(cert_chain),
        }
    }
}

/// A decoded entry: evidence plus the nonce it claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedEvidence {
    /// The evidence.
    pub evidence: GpuEvidence,
    /// The nonce written beside it (the verifier compares the report with the caller's
    /// nonce, never with this one).
    pub nonce: [u8; 32],
}

/// Parses an NVAT evidence array.
pub fn parse_nvat_json(bytes: &[u8]) -> Result<Vec<DecodedEvidence>, EvidenceError> {
    let entries: Vec<SerializedEvidence> =
        serde_json::from_slice(bytes).map_err(EvidenceError::ParseJson)?;
    entries
        .into_iter()
        .enumerate()
        .map(|(index, e)| {
            let report = STANDARD.decode(e.evidence.as_bytes()).map_err(|_| {
                EvidenceError::DecodeBase64 {
                    index,
                    field: "evidence",
                }
            })?;
            let cert_chain = STANDARD.decode(e.certificate.as_bytes()).map_err(|_| {
                EvidenceError::DecodeBase64 {
                    index,
                    field: "certificate",
                }
            })?;
            let nonce = hex::decode(&e.nonce)
                .ok()
                .and_then(|n| <[u8; 32]>::try_from(n).ok())
                .ok_or(EvidenceError::DecodeNonce { index })?;
            Ok(DecodedEvidence {
                evidence: GpuEvidence {
                    report,
                    cert_chain,
                    arch: Some(e.arch),
                },
                nonce,
            })
        })
        .collect()
}
