//! Report data for quotes as dstack builds it (`shared/specs/dstack-guest.md` §4.3).
//!
//! * New API (`GetQuote`/`Attest`): the caller's bytes, at most 64, zero-padded, no hashing.
//! * Hashed form (legacy Tappd `TdxQuote`, system uses): `H(tag ‖ ":" ‖ content)` zero-padded to
//!   64 bytes, default H = SHA-512 (exact fit); tags `kms-root-ca`, `ratls-cert`, `app-data` or
//!   a caller-chosen prefix. `raw` means the content is the report data itself (exactly 64
//!   bytes).
//!
//! Not yet supported: the SHA-3 and Keccak choices of the legacy API (no such hash in the
//! workspace yet); they are rejected as unknown.

use sha2::{Digest, Sha256, Sha384, Sha512};

use super::REPORT_DATA_LEN;

/// Errors of building report data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportDataError {
    /// More than 64 bytes of raw report data.
    #[error("report data is {len} bytes, at most 64 are allowed")]
    RawTooLong { len: usize },
    /// `raw` hashing needs exactly 64 bytes of content.
    #[error("raw report data must be exactly 64 bytes, got {len}")]
    RawWrongLength { len: usize },
    /// A hash algorithm name this init does not know.
    #[error("unsupported report data hash algorithm {name:?}")]
    UnknownHashAlgorithm { name: String },
}

/// The hash of the `tag:content` form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReportDataHash {
    /// SHA-256 (zero-padded to 64 bytes).
    Sha256,
    /// SHA-384 (zero-padded to 64 bytes).
    Sha384,
    /// SHA-512 (the default; fills the 64 bytes).
    #[default]
    Sha512,
    /// No hashing: the content is the report data.
    Raw,
}

impl ReportDataHash {
    /// Parses the legacy API's algorithm name; empty means the default (SHA-512).
    pub fn parse(name: &str) -> Result<Self, ReportDataError> {
        match name {
            "" | "sha512" => Ok(Self::Sha512),
            "sha256" => Ok(Self::Sha256),
            "sha384" => Ok(Self::Sha384),
            "raw" => Ok(Self::Raw),
            other => Err(ReportDataError::UnknownHashAlgorithm {
                name: other.to_owned(),
            }),
        }
    }
}

/// Caller bytes (≤ 64) zero-padded to 64: the new `GetQuote` API.
pub fn from_raw(bytes: &[u8]) -> Result<[u8; REPORT_DATA_LEN], ReportDataError> {
    if bytes.len() > REPORT_DATA_LEN {
        return Err(ReportDataError::RawTooLong { len: bytes.len() });
    }
    let mut out = [0u8; REPORT_DATA_LEN];
    out[..bytes.len()].copy_from_slice(bytes);
    Ok(out)
}

/// `H(tag ‖ ":" ‖ content)` zero-padded to 64 bytes, or `content` itself for
/// [`ReportDataHash::Raw`].
pub fn hashed(
    tag: &str,
    content: &[u8],
    hash: ReportDataHash,
) -> Result<[u8; REPORT_DATA_LEN], ReportDataError> {
    fn digest<D: Digest>(tag: &str, content: &[u8]) -> Vec<u8> {
        let mut h = D::new();
        h.update(tag.as_bytes());
        h.update(b":");
        h.update(content);
        h.finalize().to_vec()
    }
    let bytes = match hash {
        ReportDataHash::Raw => {
            return <[u8; REPORT_DATA_LEN]>::try_from(content)
                .map_err(|_| ReportDataError::RawWrongLength { len: content.len() });
        }
        ReportDataHash::Sha256 => digest::<Sha256>(tag, content),
        ReportDataHash::Sha384 => digest::<Sha384>(tag, content),
        ReportDataHash::Sha512 => digest::<Sha512>(tag, content),
    };
    from_raw(&bytes)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    const VECTORS: &str = include_str!("../../testdata/crypto-and-appinfo-vectors.json");

    #[test]
    fn app_data_sha512_known_answer() {
        let v: Value = serde_json::from_str(VECTORS).unwrap();
        let want = v["report_data_examples(derived)"]["app-data sha512 over 0x1234"]
            .as_str()
            .unwrap();
        let got = hashed("app-data", &[0x12, 0x34], ReportDataHash::default()).unwrap();
        assert_eq!(hex::encode(got), want);
    }

    #[test]
    fn shorter_hashes_are_zero_padded() {
        let got = hashed("app-data", b"x", ReportDataHash::Sha256).unwrap();
        assert_eq!(&got[..32], Sha256::digest(b"app-data:x").as_slice());
        assert_eq!(got[32..], [0; 32]);
        let got = hashed("t", b"", ReportDataHash::Sha384).unwrap();
        assert_eq!(&got[..48], Sha384::digest(b"t:").as_slice());
        assert_eq!(got[48..], [0; 16]);
    }

    #[test]
    fn raw_forms() {
        assert_eq!(from_raw(b"ab").unwrap()[..3], [b'a', b'b', 0]);
        assert_eq!(from_raw(&[7; 64]).unwrap(), [7; 64]);
        assert_eq!(
            from_raw(&[7; 65]),
            Err(ReportDataError::RawTooLong { len: 65 })
        );
        assert_eq!(
            hashed("ignored", &[1; 64], ReportDataHash::Raw).unwrap(),
            [1; 64]
        );
        assert_eq!(
            hashed("ignored", &[1; 63], ReportDataHash::Raw),
            Err(ReportDataError::RawWrongLength { len: 63 })
        );
    }

    #[test]
    fn algorithm_names() {
        assert_eq!(ReportDataHash::parse("").unwrap(), ReportDataHash::Sha512);
        assert_eq!(ReportDataHash::parse("raw").unwrap(), ReportDataHash::Raw);
        assert!(matches!(
            ReportDataHash::parse("keccak256"),
            Err(ReportDataError::UnknownHashAlgorithm { .. })
        ));
    }
}
