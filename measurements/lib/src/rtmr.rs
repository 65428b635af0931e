//! RTMR extend math: `RTMR_new = SHA-384(RTMR_old ‖ digest)`, all registers start at 48 zero bytes
//! (`specs/tdx.md` §4).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha384};

/// Length of a SHA-384 digest and of every TDX measurement register.
pub const SHA384_LEN: usize = 48;

/// Number of runtime measurement registers in a TD.
pub const RTMR_COUNT: usize = 4;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RtmrError {
    /// A digest given as hex was not valid hex.
    #[error("digest is not valid hex")]
    ParseDigestHex {
        /// The decoder's reason.
        #[source]
        source: hex::FromHexError,
    },
    /// A digest had the wrong length.
    #[error("digest has {actual} bytes, expected 48")]
    ParseDigestLength {
        /// Length in bytes that was given.
        actual: usize,
    },
    /// A register index was outside 0..=3.
    #[error("RTMR index {index} is out of range 0..=3")]
    ConvertRtmrIndex {
        /// The rejected index.
        index: u64,
    },
}

/// A SHA-384 digest (48 bytes), also the value of a measurement register.
///
/// `Display`/`FromStr` and serde use lowercase hex (96 characters; parsing also accepts uppercase).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha384Digest(pub [u8; SHA384_LEN]);

impl Sha384Digest {
    /// The all-zero value every RTMR starts from.
    pub const ZERO: Self = Self([0; SHA384_LEN]);

    /// SHA-384 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha384::digest(data).into())
    }

    /// SHA-384 of the concatenation of `parts`.
    pub fn of_parts(parts: &[&[u8]]) -> Self {
        let mut hasher = Sha384::new();
        for part in parts {
            hasher.update(part);
        }
        Self(hasher.finalize().into())
    }

    /// Takes a digest from exactly 48 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, RtmrError> {
        <[u8; SHA384_LEN]>::try_from(bytes)
            .map(Self)
            .map_err(|_| RtmrError::ParseDigestLength {
                actual: bytes.len(),
            })
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; SHA384_LEN] {
        &self.0
    }

    /// True if all 48 bytes are zero.
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|&b| b == 0)
    }
}

impl Default for Sha384Digest {
    fn default() -> Self {
        Self::ZERO
    }
}

impl From<[u8; SHA384_LEN]> for Sha384Digest {
    fn from(bytes: [u8; SHA384_LEN]) -> Self {
        Self(bytes)
    }
}

impl AsRef<[u8]> for Sha384Digest {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for Sha384Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sha384Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha384Digest({self})")
    }
}

impl FromStr for Sha384Digest {
    type Err = RtmrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; SHA384_LEN];
        if s.len() != 2 * SHA384_LEN {
            return Err(RtmrError::ParseDigestLength {
                actual: s.len() / 2,
            });
        }
        hex::decode_to_slice(s, &mut bytes)
            .map_err(|source| RtmrError::ParseDigestHex { source })?;
        Ok(Self(bytes))
    }
}

impl Serialize for Sha384Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha384Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Index of a runtime measurement register, 0..=3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct RtmrIndex(u8);

impl RtmrIndex {
    /// RTMR0 (firmware configuration: TD HOB, CFV, ACPI, boot variables).
    pub const R0: Self = Self(0);
    /// RTMR1 (OS loader: kernel image).
    pub const R1: Self = Self(1);
    /// RTMR2 (OS: command line, initrd).
    pub const R2: Self = Self(2);
    /// RTMR3 (runtime events of the init / application).
    pub const R3: Self = Self(3);
    /// All four registers in order.
    pub const ALL: [Self; RTMR_COUNT] = [Self::R0, Self::R1, Self::R2, Self::R3];

    /// The index as a number.
    pub fn value(self) -> u8 {
        self.0
    }

    /// The index as an array position.
    pub fn position(self) -> usize {
        usize::from(self.0)
    }

    /// Maps a CC measurement-register index as stored in the TCG event log's `pcrIndex` field
    /// (MR1..MR4) to the RTMR index (0..=3). MR0 is MRTD and never appears in a replayable event.
    pub fn from_cc_mr_index(mr_index: u32) -> Result<Self, RtmrError> {
        mr_index
            .checked_sub(1)
            .and_then(|i| u8::try_from(i).ok())
            .ok_or(RtmrError::ConvertRtmrIndex {
                index: u64::from(mr_index),
            })
            .and_then(Self::try_from)
    }

    /// The CC measurement-register index (1..=4) a TCG event for this register carries.
    pub fn cc_mr_index(self) -> u32 {
        u32::from(self.0) + 1
    }
}

impl TryFrom<u8> for RtmrIndex {
    type Error = RtmrError;

    fn try_from(index: u8) -> Result<Self, Self::Error> {
        if usize::from(index) < RTMR_COUNT {
            Ok(Self(index))
        } else {
            Err(RtmrError::ConvertRtmrIndex {
                index: u64::from(index),
            })
        }
    }
}

impl TryFrom<u32> for RtmrIndex {
    type Error = RtmrError;

    fn try_from(index: u32) -> Result<Self, Self::Error> {
        u8::try_from(index)
            .map_err(|_| RtmrError::ConvertRtmrIndex {
                index: u64::from(index),
            })
            .and_then(Self::try_from)
    }
}

impl From<RtmrIndex> for u8 {
    fn from(index: RtmrIndex) -> Self {
        index.0
    }
}

impl fmt::Display for RtmrIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RTMR{}", self.0)
    }
}

/// One extend step: `SHA-384(old ‖ digest)`.
pub fn extend(old: &Sha384Digest, digest: &Sha384Digest) -> Sha384Digest {
    Sha384Digest::of_parts(&[&old.0, &digest.0])
}

/// Folds `digests` into a register that starts at zero.
pub fn replay_register<'a>(digests: impl IntoIterator<Item = &'a Sha384Digest>) -> Sha384Digest {
    digests
        .into_iter()
        .fold(Sha384Digest::ZERO, |acc, d| extend(&acc, d))
}

/// The four runtime measurement registers, as a TD holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Rtmrs([Sha384Digest; RTMR_COUNT]);

impl Rtmrs {
    /// All registers zero (the state at TD creation).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers with the given values (e.g. read from a quote).
    pub fn from_values(values: [Sha384Digest; RTMR_COUNT]) -> Self {
        Self(values)
    }

    /// Extends one register and returns its new value.
    pub fn extend(&mut self, index: RtmrIndex, digest: &Sha384Digest) -> Sha384Digest {
        let slot = &mut self.0[index.position()];
        *slot = extend(slot, digest);
        *slot
    }

    /// Replays `(register, digest)` pairs in order from zero.
    pub fn replay<'a>(events: impl IntoIterator<Item = (RtmrIndex, &'a Sha384Digest)>) -> Self {
        let mut rtmrs = Self::new();
        for (index, digest) in events {
            rtmrs.extend(index, digest);
        }
        rtmrs
    }

    /// The value of one register.
    pub fn register(&self, index: RtmrIndex) -> &Sha384Digest {
        &self.0[index.position()]
    }

    /// All four values, RTMR0 first.
    pub fn values(&self) -> &[Sha384Digest; RTMR_COUNT] {
        &self.0
    }

    /// Registers whose value differs from `expected`, as data (RTMR0 first).
    pub fn compare(&self, expected: &Self) -> Vec<RtmrMismatch> {
        RtmrIndex::ALL
            .into_iter()
            .filter(|&i| self.register(i) != expected.register(i))
            .map(|index| RtmrMismatch {
                index,
                expected: *expected.register(index),
                actual: *self.register(index),
            })
            .collect()
    }
}

/// One register whose replayed value differs from the expected one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RtmrMismatch {
    /// Which register.
    pub index: RtmrIndex,
    /// The value it should have (e.g. from the quote).
    pub expected: Sha384Digest,
    /// The value computed (e.g. from replaying the log).
    pub actual: Sha384Digest,
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZERO_EXTEND_ZERO: &str = "f57bb7ed82c6ae4a29e6c9879338c592c7d42a39135583e8ccbe3940f2344b0eb6eb8503db0ffd6a39ddd00cd07d8317";

    #[test]
    fn digest_hex_round_trip() {
        let d = Sha384Digest::of(b"abc");
        // FIPS 180-2 SHA-384("abc").
        assert_eq!(
            d.to_string(),
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"
        );
        assert_eq!(d.to_string().parse::<Sha384Digest>(), Ok(d));
        assert_eq!(d.to_string().to_uppercase().parse::<Sha384Digest>(), Ok(d));
        assert_eq!(
            format!("{d:?}"),
            format!("Sha384Digest({d})"),
            "Debug shows hex"
        );
    }

    #[test]
    fn digest_parse_errors() {
        assert_eq!(
            "abcd".parse::<Sha384Digest>(),
            Err(RtmrError::ParseDigestLength { actual: 2 })
        );
        let bad = "zz".repeat(48);
        assert!(matches!(
            bad.parse::<Sha384Digest>(),
            Err(RtmrError::ParseDigestHex { .. })
        ));
        // Odd length and multi-byte UTF-8 must not panic.
        "é".repeat(48).parse::<Sha384Digest>().unwrap_err();
        "0".repeat(95).parse::<Sha384Digest>().unwrap_err();
        assert_eq!(
            Sha384Digest::from_slice(&[0; 47]),
            Err(RtmrError::ParseDigestLength { actual: 47 })
        );
    }

    #[test]
    fn digest_serde_as_hex() {
        let d = Sha384Digest::of(b"abc");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<Sha384Digest>(&json).unwrap(), d);
        serde_json::from_str::<Sha384Digest>("\"00\"").unwrap_err();
        serde_json::from_str::<Sha384Digest>("12").unwrap_err();
    }

    #[test]
    fn rtmr_index_range() {
        for i in 0u8..4 {
            assert_eq!(RtmrIndex::try_from(i).map(RtmrIndex::value), Ok(i));
        }
        assert_eq!(
            RtmrIndex::try_from(4u8),
            Err(RtmrError::ConvertRtmrIndex { index: 4 })
        );
        assert_eq!(
            RtmrIndex::try_from(0x1_0000u32),
            Err(RtmrError::ConvertRtmrIndex { index: 0x1_0000 })
        );
        assert_eq!(RtmrIndex::from_cc_mr_index(1), Ok(RtmrIndex::R0));
        assert_eq!(RtmrIndex::from_cc_mr_index(4), Ok(RtmrIndex::R3));
        RtmrIndex::from_cc_mr_index(0).unwrap_err();
        RtmrIndex::from_cc_mr_index(5).unwrap_err();
        RtmrIndex::from_cc_mr_index(u32::MAX).unwrap_err();
        assert_eq!(RtmrIndex::R2.cc_mr_index(), 3);
        assert_eq!(serde_json::to_string(&RtmrIndex::R3).unwrap(), "3");
        serde_json::from_str::<RtmrIndex>("7").unwrap_err();
    }

    #[test]
    fn extend_known_answer() {
        let once = extend(&Sha384Digest::ZERO, &Sha384Digest::ZERO);
        assert_eq!(once, Sha384Digest::of(&[0u8; 96]));
        assert_eq!(once.to_string(), ZERO_EXTEND_ZERO);
    }

    #[test]
    fn register_set_replay_and_compare() {
        let a = Sha384Digest::of(b"a");
        let b = Sha384Digest::of(b"b");
        let rtmrs = Rtmrs::replay([
            (RtmrIndex::R1, &a),
            (RtmrIndex::R3, &b),
            (RtmrIndex::R1, &b),
        ]);
        assert_eq!(rtmrs.register(RtmrIndex::R0), &Sha384Digest::ZERO);
        assert_eq!(
            rtmrs.register(RtmrIndex::R1),
            &extend(&extend(&Sha384Digest::ZERO, &a), &b)
        );
        assert_eq!(rtmrs.register(RtmrIndex::R3), &replay_register([&b]));
        assert_eq!(rtmrs.compare(&rtmrs), vec![]);
        let zero = Rtmrs::new();
        assert_eq!(
            rtmrs.compare(&zero),
            vec![
                RtmrMismatch {
                    index: RtmrIndex::R1,
                    expected: Sha384Digest::ZERO,
                    actual: *rtmrs.register(RtmrIndex::R1)
                },
                RtmrMismatch {
                    index: RtmrIndex::R3,
                    expected: Sha384Digest::ZERO,
                    actual: *rtmrs.register(RtmrIndex::R3)
                },
            ]
        );
    }
}
