//! The CCEL ACPI table and the boot-time event log it points at (`shared/specs/tdx.md` §3.4).
//!
//! Linux exposes the 56-byte table at `<tables>/CCEL` and (≥ 6.4) the log area itself at
//! `<tables>/data/CCEL`, with `<tables>` = [`ACPI_TABLES_DIR`]. The log is a TCG crypto-agile
//! event log; its unused tail is 0xFF. Parsing the log belongs to the `measure` crate; this
//! module only reads the bytes (bounded) and decodes the fixed table.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The sysfs directory of the firmware's ACPI tables.
pub const ACPI_TABLES_DIR: &str = "/sys/firmware/acpi/tables";

/// Size of the CCEL table (ACPI 6.5 §5.2.34).
pub const CCEL_TABLE_LEN: usize = 56;
/// Upper bound on the log area read (dstack: 64 KiB, GCP: 256 KiB).
pub const MAX_CCEL_LOG_LEN: usize = 16 * 1024 * 1024;

/// Errors of reading the CCEL table and log.
#[derive(Debug, thiserror::Error)]
pub enum CcelError {
    /// Reading the table file failed.
    #[error("read CCEL table {path}")]
    ReadCcelTable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The table bytes are not a CCEL table.
    #[error("CCEL table {path} is malformed: {reason}")]
    ParseCcelTable { path: PathBuf, reason: &'static str },
    /// Reading the log file failed.
    #[error("read CCEL log {path}")]
    ReadCcelLog {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The log is larger than [`MAX_CCEL_LOG_LEN`].
    #[error("CCEL log {path} exceeds {max} bytes")]
    CcelLogTooLarge { path: PathBuf, max: usize },
}

/// The decoded CCEL table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CcelTable {
    /// Confidential-computing type (2 = TDX).
    pub cc_type: u8,
    /// Sub-type.
    pub cc_subtype: u8,
    /// Log area minimum length (LAML).
    pub log_area_min_len: u64,
    /// Log area start address (LASA).
    pub log_area_start: u64,
}

impl CcelTable {
    /// The CC type value of Intel TDX.
    pub const CC_TYPE_TDX: u8 = 2;

    /// Decodes the table bytes; the error says why they are not a CCEL table.
    pub fn parse(bytes: &[u8]) -> Result<Self, &'static str> {
        if bytes.len() < CCEL_TABLE_LEN {
            return Err("shorter than 56 bytes");
        }
        if bytes.get(0..4) != Some(b"CCEL".as_slice()) {
            return Err("signature is not CCEL");
        }
        let length = u32::from_le_bytes(le_array(bytes, 4));
        if usize::try_from(length).map_or(true, |l| l < CCEL_TABLE_LEN || l > bytes.len()) {
            return Err("header length out of range");
        }
        let cc_type = bytes.get(36).copied().unwrap_or_default();
        let cc_subtype = bytes.get(37).copied().unwrap_or_default();
        Ok(Self {
            cc_type,
            cc_subtype,
            log_area_min_len: u64::from_le_bytes(le_array(bytes, 40)),
            log_area_start: u64::from_le_bytes(le_array(bytes, 48)),
        })
    }
}

/// `N` bytes at `offset`, zero-filled if out of range (callers check the length first).
fn le_array<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = bytes.get(offset..offset + N) {
        out.copy_from_slice(src);
    }
    out
}

fn read_bounded(path: &Path, max: usize) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut bytes = Vec::new();
    file.take(max as u64 + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads and decodes `<tables_dir>/CCEL`.
pub fn read_table(tables_dir: &Path) -> Result<CcelTable, CcelError> {
    let path = tables_dir.join("CCEL");
    let bytes = read_bounded(&path, 4096).map_err(|source| CcelError::ReadCcelTable {
        path: path.clone(),
        source,
    })?;
    CcelTable::parse(&bytes).map_err(|reason| CcelError::ParseCcelTable { path, reason })
}

/// Reads the raw log area `<tables_dir>/data/CCEL`.
pub fn read_log(tables_dir: &Path) -> Result<Vec<u8>, CcelError> {
    let path = tables_dir.join("data").join("CCEL");
    let bytes = read_bounded(&path, MAX_CCEL_LOG_LEN).map_err(|source| CcelError::ReadCcelLog {
        path: path.clone(),
        source,
    })?;
    if bytes.len() > MAX_CCEL_LOG_LEN {
        return Err(CcelError::CcelLogTooLarge {
            path,
            max: MAX_CCEL_LOG_LEN,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real log area from a dstack TD (see `testdata/README.md`).
    const CCEL_LOG: &[u8] = include_bytes!("../testdata/ccel.bin");

    fn table(laml: u64, lasa: u64) -> Vec<u8> {
        let mut t = vec![0u8; CCEL_TABLE_LEN];
        t[0..4].copy_from_slice(b"CCEL");
        t[4..8].copy_from_slice(&56u32.to_le_bytes());
        t[8] = 1; // revision
        t[36] = CcelTable::CC_TYPE_TDX;
        t[40..48].copy_from_slice(&laml.to_le_bytes());
        t[48..56].copy_from_slice(&lasa.to_le_bytes());
        t
    }

    #[test]
    fn reads_fake_acpi_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("CCEL"), table(0x10000, 0x7fbf_0000)).unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/CCEL"), CCEL_LOG).unwrap();
        let t = read_table(dir.path()).unwrap();
        assert_eq!(
            t,
            CcelTable {
                cc_type: 2,
                cc_subtype: 0,
                log_area_min_len: 0x10000,
                log_area_start: 0x7fbf_0000,
            }
        );
        let log = read_log(dir.path()).unwrap();
        assert_eq!(log.len(), 65536);
        assert_eq!(u64::try_from(log.len()).unwrap(), t.log_area_min_len);
        // First record: pcrIndex 1, EV_NO_ACTION, "Spec ID Event03" at offset 32.
        assert_eq!(&log[0..8], &[1, 0, 0, 0, 3, 0, 0, 0]);
        assert_eq!(&log[32..47], b"Spec ID Event03");
        // Log ends at byte 1933, the rest of the area is 0xFF.
        assert!(log[1933..].iter().all(|b| *b == 0xFF));
    }

    #[test]
    fn malformed_tables() {
        assert_eq!(CcelTable::parse(&[0; 10]), Err("shorter than 56 bytes"));
        let mut t = table(1, 2);
        t[0] = b'X';
        assert_eq!(CcelTable::parse(&t), Err("signature is not CCEL"));
        let mut t = table(1, 2);
        t[4..8].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(CcelTable::parse(&t), Err("header length out of range"));
    }

    #[test]
    fn missing_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_table(dir.path()),
            Err(CcelError::ReadCcelTable { .. })
        ));
        assert!(matches!(
            read_log(dir.path()),
            Err(CcelError::ReadCcelLog { .. })
        ));
        std::fs::write(dir.path().join("CCEL"), b"CCEL").unwrap();
        assert!(matches!(
            read_table(dir.path()),
            Err(CcelError::ParseCcelTable { .. })
        ));
    }
}
