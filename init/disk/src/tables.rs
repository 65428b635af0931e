//! Device-mapper tables of the volume: dm-integrity (4096-byte sectors, 48-byte tags, journal
//! with an HMAC-SHA256 journal MAC and `fix_hmac`) under dm-crypt with the AEAD
//! `capi:authenc(hmac(sha256),xts(aes))-random` (AES-256-XTS + HMAC-SHA256 over ciphertext,
//! the sector number and a fresh random 128-bit IV per write). All table parameters come from a
//! verified [`Header`](crate::header::Header) and the keys derived from the disk key.

use zeroize::Zeroizing;

use crate::header::{INTEGRITY_OFFSET_SECTORS, SECTOR_SIZE, TAG_SIZE};
use crate::keys::DiskKey;

/// dm-crypt cipher specification (kernel crypto API form).
pub const CRYPT_CIPHER: &str = "capi:authenc(hmac(sha256),xts(aes))-random";
/// dm-integrity sectors the superblock occupies; a table of this length makes the kernel
/// format a zeroed superblock area without touching the data area.
pub const INTEGRITY_FORMAT_SECTORS: u64 = 8;

/// A block device as device-mapper addresses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevNumber {
    pub major: u32,
    pub minor: u32,
}

impl DevNumber {
    /// From `st_rdev` (glibc's `gnu_dev_major`/`gnu_dev_minor` encoding).
    pub const fn from_rdev(dev: u64) -> Self {
        let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
        let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
        // Both halves are 32-bit by construction of the encoding.
        Self {
            major: (major & 0xffff_ffff) as u32,
            minor: (minor & 0xffff_ffff) as u32,
        }
    }
}

impl std::fmt::Display for DevNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// How dm-integrity writes data and tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegrityMode {
    /// Journal: data and tag land atomically (crash safe). Every open after the format.
    Journal,
    /// Direct: no journal, only while the format wipes the volume (a crash restarts the
    /// format anyway).
    Direct,
}

impl IntegrityMode {
    const fn letter(self) -> char {
        match self {
            Self::Journal => 'J',
            Self::Direct => 'D',
        }
    }
}

/// One table line: start, length (512-byte sectors), target type, parameters. The parameters
/// may hold key material: zeroized on drop, never printed.
pub struct DmTarget {
    pub start: u64,
    pub length: u64,
    pub target_type: &'static str,
    pub params: Zeroizing<String>,
}

impl std::fmt::Debug for DmTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmTarget")
            .field("start", &self.start)
            .field("length", &self.length)
            .field("target_type", &self.target_type)
            .field("params", &redact(&self.params))
            .finish()
    }
}

/// The parameters with every long hex run (a key) replaced by `<key>`.
pub fn redact(params: &str) -> String {
    params
        .split(' ')
        .map(|word| {
            let tail = word.rsplit(':').next().unwrap_or(word);
            if tail.len() >= 32 && tail.bytes().all(|b| b.is_ascii_hexdigit()) {
                format!("{}<key>", &word[..word.len() - tail.len()])
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// dm-integrity over the partition that starts `partition_start` sectors into `disk`.
pub fn integrity_target(
    disk: DevNumber,
    partition_start: u64,
    length: u64,
    mode: IntegrityMode,
    key: &DiskKey,
    salt: &[u8],
) -> DmTarget {
    let journal_key = key.journal_mac_key(salt);
    let hex_key = Zeroizing::new(hex::encode(journal_key.as_slice()));
    let params = Zeroizing::new(format!(
        "{disk} {offset} {TAG_SIZE} {mode} 4 block_size:{SECTOR_SIZE} fix_padding fix_hmac \
         journal_mac:hmac(sha256):{key}",
        offset = partition_start + INTEGRITY_OFFSET_SECTORS,
        mode = mode.letter(),
        key = hex_key.as_str(),
    ));
    DmTarget {
        start: 0,
        length,
        target_type: "integrity",
        params,
    }
}

/// dm-crypt AEAD over the dm-integrity device `integrity`.
pub fn crypt_target(integrity: DevNumber, length: u64, key: &DiskKey, salt: &[u8]) -> DmTarget {
    let crypt_key = key.crypt_key(salt);
    let hex_key = Zeroizing::new(hex::encode(crypt_key.as_slice()));
    let params = Zeroizing::new(format!(
        "{CRYPT_CIPHER} {key} 0 {integrity} 0 2 integrity:{TAG_SIZE}:aead sector_size:{SECTOR_SIZE}",
        key = hex_key.as_str(),
    ));
    DmTarget {
        start: 0,
        length,
        target_type: "crypt",
        params,
    }
}

/// The part of the dm-integrity superblock this init checks after the kernel formatted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntegritySuperblock {
    pub tag_size: u16,
    pub log2_sectors_per_block: u8,
    pub provided_data_sectors: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntegritySuperblockError {
    #[error("no dm-integrity superblock (magic {found:02x?})")]
    Magic { found: [u8; 8] },
    #[error("dm-integrity superblock has tag size {tag_size} and {log2} log2 sectors per block")]
    Parameters { tag_size: u16, log2: u8 },
    #[error(
        "dm-integrity superblock provides {sectors} sectors, not a whole number of 4096-byte blocks"
    )]
    DataSectors { sectors: u64 },
}

impl IntegritySuperblock {
    /// Parse the first 32 bytes of a dm-integrity superblock (`drivers/md/dm-integrity.c`
    /// `struct superblock`).
    pub fn parse(b: &[u8; 32]) -> Result<Self, IntegritySuperblockError> {
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&b[..8]);
        if &magic != b"integrt\0" {
            return Err(IntegritySuperblockError::Magic { found: magic });
        }
        let tag_size = u16::from_le_bytes([b[10], b[11]]);
        let mut p = [0u8; 8];
        p.copy_from_slice(&b[16..24]);
        let provided_data_sectors = u64::from_le_bytes(p);
        let log2 = b[28];
        if u32::from(tag_size) != TAG_SIZE || log2 != 3 {
            return Err(IntegritySuperblockError::Parameters { tag_size, log2 });
        }
        if provided_data_sectors == 0 || provided_data_sectors % 8 != 0 {
            return Err(IntegritySuperblockError::DataSectors {
                sectors: provided_data_sectors,
            });
        }
        Ok(Self {
            tag_size,
            log2_sectors_per_block: log2,
            provided_data_sectors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_strings() {
        let key = DiskKey::from_bytes([1; 32]);
        let salt = [2u8; 32];
        let disk = DevNumber {
            major: 254,
            minor: 16,
        };
        let i = integrity_target(disk, 2048, 8, IntegrityMode::Journal, &key, &salt);
        assert_eq!(i.target_type, "integrity");
        assert_eq!(
            redact(&i.params),
            "254:16 4096 48 J 4 block_size:4096 fix_padding fix_hmac journal_mac:hmac(sha256):<key>"
        );
        let jkey = hex::encode(key.journal_mac_key(&salt).as_slice());
        assert!(i.params.ends_with(&jkey));
        let c = crypt_target(
            DevNumber {
                major: 253,
                minor: 0,
            },
            1000,
            &key,
            &salt,
        );
        assert_eq!(
            redact(&c.params),
            "capi:authenc(hmac(sha256),xts(aes))-random <key> 0 253:0 0 2 integrity:48:aead sector_size:4096"
        );
        let ckey = hex::encode(key.crypt_key(&salt).as_slice());
        assert_eq!(ckey.len(), 192);
        assert!(c.params.contains(&ckey));
        assert!(!format!("{c:?}").contains(&ckey[..32]));
        // The raw disk key never appears.
        assert!(!c.params.contains(&hex::encode([1u8; 32])));
        let d = integrity_target(disk, 0, 80, IntegrityMode::Direct, &key, &salt);
        assert!(d.params.starts_with("254:16 2048 48 D "));
    }

    #[test]
    fn rdev_decoding() {
        // makedev(254, 16) and makedev(259, 1048576) in glibc's encoding.
        assert_eq!(
            DevNumber::from_rdev(0xfe10),
            DevNumber {
                major: 254,
                minor: 16
            }
        );
        let big = (259u64 << 8) | (1_048_576u64 << 12);
        assert_eq!(
            DevNumber::from_rdev(big),
            DevNumber {
                major: 259,
                minor: 1_048_576
            }
        );
    }

    #[test]
    fn integrity_superblock() {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(b"integrt\0");
        b[8] = 5;
        b[10..12].copy_from_slice(&48u16.to_le_bytes());
        b[16..24].copy_from_slice(&120_000u64.to_le_bytes());
        b[28] = 3;
        assert_eq!(
            IntegritySuperblock::parse(&b)
                .unwrap()
                .provided_data_sectors,
            120_000
        );
        let mut t = b;
        t[10] = 28;
        assert!(matches!(
            IntegritySuperblock::parse(&t),
            Err(IntegritySuperblockError::Parameters { .. })
        ));
        let mut t = b;
        t[0] = b'X';
        assert!(matches!(
            IntegritySuperblock::parse(&t),
            Err(IntegritySuperblockError::Magic { .. })
        ));
        let mut t = b;
        t[16..24].copy_from_slice(&7u64.to_le_bytes());
        assert!(matches!(
            IntegritySuperblock::parse(&t),
            Err(IntegritySuperblockError::DataSectors { .. })
        ));
    }
}
