//! The volume header: two 4096-byte slots at the start of the data partition, each carrying the
//! format version, the state of the first-boot state machine, the fixed crypt/integrity
//! parameters, a random salt and an HMAC-SHA256 over all of it keyed by a key derived from the
//! disk key (never the raw key).
//!
//! The header is read once into memory and verified there; every table parameter the init
//! loads comes from that verified copy, never from a second read (no check-then-open race).
//! The kernel never reads this header.
//!
//! Slot layout (little endian), the MAC covers bytes `0..224`, bytes `256..4096` are zero:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `CVMDISK1` |
//! | 8 | 4 | format version (1) |
//! | 12 | 4 | state: 1 formatting, 2 ready |
//! | 16 | 8 | sequence number (the higher valid slot wins) |
//! | 24 | 4 | sector size (4096) |
//! | 28 | 4 | cipher: 1 = `capi:authenc(hmac(sha256),xts(aes))-random`, 768-bit key |
//! | 32 | 4 | integrity tag size (48 = 16-byte IV + 32-byte HMAC) |
//! | 36 | 1 | dm-integrity mode (`J`) |
//! | 37 | 3 | zero |
//! | 40 | 8 | dm-integrity offset in 512-byte sectors from the partition start (2048) |
//! | 48 | 8 | dm-integrity provided data sectors (0 while formatting) |
//! | 56 | 16 | ext4 UUID |
//! | 72 | 32 | salt |
//! | 104 | 120 | zero |
//! | 224 | 32 | HMAC-SHA256(header MAC key, bytes 0..224) |

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::keys::DiskKey;

pub const SLOT_LEN: usize = 4096;
/// Both slots, read and written as one area.
pub const HEADER_AREA_LEN: usize = 2 * SLOT_LEN;
pub const MAGIC: &[u8; 8] = b"CVMDISK1";
pub const FORMAT_VERSION: u32 = 1;
pub const SECTOR_SIZE: u32 = 4096;
pub const CIPHER_AUTHENC_HMAC_SHA256_XTS_AES256: u32 = 1;
pub const TAG_SIZE: u32 = 48;
pub const INTEGRITY_MODE_JOURNAL: u8 = b'J';
/// 1 MiB reserved for the header before the dm-integrity superblock.
pub const INTEGRITY_OFFSET_SECTORS: u64 = 2048;
pub const SALT_LEN: usize = 32;
const MAC_OFFSET: usize = 224;
const MAC_LEN: usize = 32;
const USED_LEN: usize = MAC_OFFSET + MAC_LEN;

/// Where the first-boot state machine stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeState {
    /// A format was started and has not finished: the next boot formats again.
    Formatting,
    /// Formatted: open and mount.
    Ready,
}

impl VolumeState {
    const fn code(self) -> u32 {
        match self {
            Self::Formatting => 1,
            Self::Ready => 2,
        }
    }
}

/// A verified header (or one this init is about to write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub state: VolumeState,
    pub sequence: u64,
    pub provided_data_sectors: u64,
    pub fs_uuid: [u8; 16],
    pub salt: [u8; SALT_LEN],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error(
        "the data disk header does not verify with this disk key (another app or instance's \
         disk, or a tampered header); the disk was not written"
    )]
    VerifyMac,
    #[error("the data disk holds data that is not a cvm-disk volume; refusing to format it")]
    ForeignData,
    #[error("header format version {version} is not supported (this init writes {FORMAT_VERSION})")]
    UnsupportedVersion { version: u32 },
    #[error("header parameter {field} is {value}, this init only opens {expected}")]
    UnsupportedParameter {
        field: &'static str,
        value: u64,
        expected: u64,
    },
    #[error("header state {code} is unknown")]
    UnknownState { code: u32 },
    #[error("header has non-zero reserved bytes")]
    ReservedBytes,
    #[error("header area is {len} bytes, expected {HEADER_AREA_LEN}")]
    AreaLength { len: usize },
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn mac(key: &DiskKey, salt: &[u8], covered: &[u8]) -> Hmac<Sha256> {
    let mac_key = key.header_mac_key(salt);
    // HMAC accepts keys of any length.
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(mac_key.as_slice())
        .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
    m.update(covered);
    m
}

impl Header {
    /// A fresh header for a format that is starting.
    pub const fn formatting(salt: [u8; SALT_LEN], fs_uuid: [u8; 16]) -> Self {
        Self {
            state: VolumeState::Formatting,
            sequence: 1,
            provided_data_sectors: 0,
            fs_uuid,
            salt,
        }
    }

    /// The header that marks the format finished.
    #[must_use]
    pub fn ready(&self, provided_data_sectors: u64) -> Self {
        Self {
            state: VolumeState::Ready,
            sequence: self.sequence + 1,
            provided_data_sectors,
            ..self.clone()
        }
    }

    /// One slot, MAC'd with a key derived from `key`.
    pub fn encode(&self, key: &DiskKey) -> [u8; SLOT_LEN] {
        let mut b = [0u8; SLOT_LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.state.code().to_le_bytes());
        b[16..24].copy_from_slice(&self.sequence.to_le_bytes());
        b[24..28].copy_from_slice(&SECTOR_SIZE.to_le_bytes());
        b[28..32].copy_from_slice(&CIPHER_AUTHENC_HMAC_SHA256_XTS_AES256.to_le_bytes());
        b[32..36].copy_from_slice(&TAG_SIZE.to_le_bytes());
        b[36] = INTEGRITY_MODE_JOURNAL;
        b[40..48].copy_from_slice(&INTEGRITY_OFFSET_SECTORS.to_le_bytes());
        b[48..56].copy_from_slice(&self.provided_data_sectors.to_le_bytes());
        b[56..72].copy_from_slice(&self.fs_uuid);
        b[72..104].copy_from_slice(&self.salt);
        let tag = mac(key, &self.salt, &b[..MAC_OFFSET])
            .finalize()
            .into_bytes();
        b[MAC_OFFSET..USED_LEN].copy_from_slice(&tag);
        b
    }

    /// Verify one slot: the MAC first (constant time), then every parameter must be exactly
    /// what this init writes, so a host cannot substitute weaker ones.
    pub fn decode(slot: &[u8; SLOT_LEN], key: &DiskKey) -> Result<Self, HeaderError> {
        let salt: [u8; SALT_LEN] = slot[72..104]
            .try_into()
            .map_err(|_| HeaderError::VerifyMac)?;
        mac(key, &salt, &slot[..MAC_OFFSET])
            .verify_slice(&slot[MAC_OFFSET..USED_LEN])
            .map_err(|_| HeaderError::VerifyMac)?;
        if &slot[0..8] != MAGIC {
            return Err(HeaderError::ForeignData);
        }
        let version = le32(slot, 8);
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion { version });
        }
        let state = match le32(slot, 12) {
            1 => VolumeState::Formatting,
            2 => VolumeState::Ready,
            code => return Err(HeaderError::UnknownState { code }),
        };
        let expect = |field, value: u64, expected: u64| {
            if value == expected {
                Ok(())
            } else {
                Err(HeaderError::UnsupportedParameter {
                    field,
                    value,
                    expected,
                })
            }
        };
        expect("sector size", le32(slot, 24).into(), SECTOR_SIZE.into())?;
        expect(
            "cipher",
            le32(slot, 28).into(),
            CIPHER_AUTHENC_HMAC_SHA256_XTS_AES256.into(),
        )?;
        expect("tag size", le32(slot, 32).into(), TAG_SIZE.into())?;
        expect(
            "integrity mode",
            slot[36].into(),
            INTEGRITY_MODE_JOURNAL.into(),
        )?;
        expect("integrity offset", le64(slot, 40), INTEGRITY_OFFSET_SECTORS)?;
        if slot[37..40]
            .iter()
            .chain(&slot[104..MAC_OFFSET])
            .chain(&slot[USED_LEN..])
            .any(|&b| b != 0)
        {
            return Err(HeaderError::ReservedBytes);
        }
        let mut fs_uuid = [0u8; 16];
        fs_uuid.copy_from_slice(&slot[56..72]);
        Ok(Self {
            state,
            sequence: le64(slot, 16),
            provided_data_sectors: le64(slot, 48),
            fs_uuid,
            salt,
        })
    }
}

/// What the header area says to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Both slots are zero: a new disk.
    Blank,
    /// A verified header (the valid slot with the highest sequence number).
    Volume(Header),
}

/// Read both slots (the bytes read once from the device) and decide. A slot that fails to
/// verify is ignored when the other verifies (a power cut can tear one slot write); when none
/// verifies the disk is another key's (or tampered) and nothing may be written.
pub fn inspect(area: &[u8], key: &DiskKey) -> Result<Found, HeaderError> {
    if area.len() != HEADER_AREA_LEN {
        return Err(HeaderError::AreaLength { len: area.len() });
    }
    if area.iter().all(|&b| b == 0) {
        return Ok(Found::Blank);
    }
    let mut best: Option<Header> = None;
    let mut first_error = None;
    for chunk in area.chunks_exact(SLOT_LEN) {
        let mut slot = [0u8; SLOT_LEN];
        slot.copy_from_slice(chunk);
        if slot.iter().all(|&b| b == 0) {
            continue;
        }
        match Header::decode(&slot, key) {
            Ok(h) if best.as_ref().is_none_or(|b| h.sequence > b.sequence) => best = Some(h),
            Ok(_) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(h) = best {
        return Ok(Found::Volume(h));
    }
    let ours = area.chunks_exact(SLOT_LEN).any(|s| &s[..8] == MAGIC);
    match first_error {
        Some(HeaderError::VerifyMac) if !ours => Err(HeaderError::ForeignData),
        Some(e) => Err(e),
        None => Err(HeaderError::ForeignData),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> DiskKey {
        DiskKey::from_bytes([b; 32])
    }

    fn area(a: &[u8; SLOT_LEN], b: &[u8; SLOT_LEN]) -> Vec<u8> {
        [a.as_slice(), b.as_slice()].concat()
    }

    #[test]
    fn round_trip_and_layout() {
        let h = Header::formatting([5; 32], [6; 16]);
        let slot = h.encode(&key(1));
        assert_eq!(&slot[..8], b"CVMDISK1");
        assert_eq!(slot[36], b'J');
        assert_eq!(le64(&slot, 40), 2048);
        assert_eq!(Header::decode(&slot, &key(1)).unwrap(), h);
        let r = h.ready(12345);
        assert_eq!(r.sequence, 2);
        assert_eq!(r.state, VolumeState::Ready);
        assert_eq!(Header::decode(&r.encode(&key(1)), &key(1)).unwrap(), r);
    }

    #[test]
    fn wrong_key_fails_the_mac() {
        let slot = Header::formatting([5; 32], [6; 16])
            .ready(8)
            .encode(&key(1));
        assert_eq!(
            Header::decode(&slot, &key(2)).unwrap_err(),
            HeaderError::VerifyMac
        );
        assert_eq!(
            inspect(&area(&slot, &slot), &key(2)).unwrap_err(),
            HeaderError::VerifyMac
        );
    }

    #[test]
    fn every_byte_is_covered() {
        let slot = Header::formatting([5; 32], [6; 16]).encode(&key(1));
        for i in 0..USED_LEN {
            let mut t = slot;
            t[i] ^= 1;
            assert_eq!(
                Header::decode(&t, &key(1)).unwrap_err(),
                HeaderError::VerifyMac,
                "byte {i}"
            );
        }
        let mut t = slot;
        t[4000] = 1;
        assert_eq!(
            Header::decode(&t, &key(1)).unwrap_err(),
            HeaderError::ReservedBytes
        );
    }

    #[test]
    fn weaker_parameters_with_a_valid_mac_are_refused() {
        // Even someone holding the key cannot make this init open other parameters.
        let mut slot = Header::formatting([5; 32], [6; 16]).encode(&key(1));
        slot[24..28].copy_from_slice(&512u32.to_le_bytes());
        let tag = mac(&key(1), &[5; 32], &slot[..MAC_OFFSET])
            .finalize()
            .into_bytes();
        slot[MAC_OFFSET..USED_LEN].copy_from_slice(&tag);
        assert_eq!(
            Header::decode(&slot, &key(1)).unwrap_err(),
            HeaderError::UnsupportedParameter {
                field: "sector size",
                value: 512,
                expected: 4096
            }
        );
    }

    #[test]
    fn inspect_picks_the_newest_valid_slot() {
        let k = key(1);
        let f = Header::formatting([5; 32], [6; 16]);
        let r = f.ready(99);
        let zero = [0u8; SLOT_LEN];
        assert_eq!(
            inspect(&vec![0; HEADER_AREA_LEN], &k).unwrap(),
            Found::Blank
        );
        // Power cut between the two slot writes of each transition.
        assert_eq!(
            inspect(&area(&f.encode(&k), &zero), &k).unwrap(),
            Found::Volume(f.clone())
        );
        assert_eq!(
            inspect(&area(&r.encode(&k), &f.encode(&k)), &k).unwrap(),
            Found::Volume(r.clone())
        );
        // A torn slot next to a valid one.
        let mut torn = r.encode(&k);
        torn[100..].fill(0xAA);
        assert_eq!(
            inspect(&area(&torn, &f.encode(&k)), &k).unwrap(),
            Found::Volume(f)
        );
    }

    #[test]
    fn foreign_data_is_never_ours() {
        let mut a = vec![0u8; HEADER_AREA_LEN];
        a[0x438] = 0x53;
        a[0x439] = 0xEF;
        assert_eq!(inspect(&a, &key(1)).unwrap_err(), HeaderError::ForeignData);
        assert_eq!(
            inspect(&[0u8; 10], &key(1)).unwrap_err(),
            HeaderError::AreaLength { len: 10 }
        );
    }
}
