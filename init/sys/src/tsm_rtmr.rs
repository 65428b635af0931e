//! TSM measurement-register sysfs files (Linux ≥ 6.16, `CONFIG_TSM_MEASUREMENTS`).
//!
//! `<dir>/rtmrN:sha384` reads as 48 raw bytes (the driver refreshes a TDREPORT first); one write
//! of exactly 48 raw bytes at offset 0 extends the register (partial writes fail with `EINVAL`).
//! ABI facts: `shared/specs/tdx.md` §3.3. The directory is a parameter so tests can point it at a
//! fake tree.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use measure::rtmr::{RtmrIndex, Sha384Digest};

use crate::tdx_guest::RTMR_LEN;

/// The measurement-register directory of the upstream `tdx_guest` driver.
pub const TSM_MEASUREMENTS_DIR: &str = "/sys/devices/virtual/misc/tdx_guest/measurements";

/// Errors of the tsm-mr sysfs interface.
#[derive(Debug, thiserror::Error)]
pub enum TsmRtmrError {
    /// Opening or reading the register file failed.
    #[error("read RTMR{index} from {path}")]
    ReadRtmr {
        index: RtmrIndex,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The register file did not hold exactly 48 bytes.
    #[error("RTMR{index} at {path} is {len} bytes, expected 48")]
    RtmrLength {
        index: RtmrIndex,
        path: PathBuf,
        len: usize,
    },
    /// Opening the register file for writing or the extend write failed.
    #[error("extend RTMR{index} through {path}")]
    ExtendRtmr {
        index: RtmrIndex,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The kernel accepted fewer than 48 bytes in the one extend write.
    #[error("extend RTMR{index} through {path}: short write of {written} bytes")]
    ShortExtendWrite {
        index: RtmrIndex,
        path: PathBuf,
        written: usize,
    },
}

/// The values of one register around an extend, for the caller to check
/// `after == SHA-384(before ‖ digest)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtmrExtendOutcome {
    /// The register before the write.
    pub before: Sha384Digest,
    /// The register read back after the write.
    pub after: Sha384Digest,
}

/// The tsm-mr RTMR files under one directory.
#[derive(Debug, Clone)]
pub struct TsmRtmr {
    dir: PathBuf,
}

impl TsmRtmr {
    /// Uses the register files under `dir` (normally [`TSM_MEASUREMENTS_DIR`]).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    /// Whether the writable register files exist (the kernel has `CONFIG_TSM_MEASUREMENTS`).
    pub fn is_available(&self) -> bool {
        self.dir.join("rtmr3:sha384").is_file()
    }

    /// The path of register `index`'s file.
    pub fn path(&self, index: RtmrIndex) -> PathBuf {
        self.dir.join(format!("rtmr{}:sha384", index.value()))
    }

    /// Reads register `index` (exactly 48 bytes).
    pub fn read(&self, index: RtmrIndex) -> Result<Sha384Digest, TsmRtmrError> {
        let path = self.path(index);
        let read_err = |source| TsmRtmrError::ReadRtmr {
            index,
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(read_err)?;
        // One byte more than expected is enough to detect an over-long value.
        let mut buf = Vec::with_capacity(RTMR_LEN + 1);
        file.take(RTMR_LEN as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(read_err)?;
        <[u8; RTMR_LEN]>::try_from(buf.as_slice())
            .map(Sha384Digest)
            .map_err(|_| TsmRtmrError::RtmrLength {
                index,
                path: path.clone(),
                len: buf.len(),
            })
    }

    /// Extends register `index` with `digest`: reads the old value, writes the 48 bytes in one
    /// `write(2)` at offset 0, and reads the register back. The caller checks the outcome.
    pub fn extend(
        &self,
        index: RtmrIndex,
        digest: &Sha384Digest,
    ) -> Result<RtmrExtendOutcome, TsmRtmrError> {
        let before = self.read(index)?;
        let path = self.path(index);
        let extend_err = |source| TsmRtmrError::ExtendRtmr {
            index,
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(extend_err)?;
        let written = loop {
            match file.write(digest.as_bytes()) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other.map_err(extend_err)?,
            }
        };
        if written != RTMR_LEN {
            return Err(TsmRtmrError::ShortExtendWrite {
                index,
                path,
                written,
            });
        }
        drop(file);
        let after = self.read(index)?;
        Ok(RtmrExtendOutcome { before, after })
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use sha2::{Digest, Sha384};

    use super::*;

    fn mkfifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    /// Emulates the kernel's `rtmrN:sha384` attribute on a FIFO for one extend: serves the
    /// current value, accepts one write (recording it) and serves SHA-384(old ‖ written) if the
    /// write was exactly 48 bytes, else the old value (the kernel answers EINVAL).
    fn emulate_one_extend(path: PathBuf, value: [u8; 48]) -> thread::JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            std::fs::write(&path, value).unwrap();
            let mut written = Vec::new();
            File::open(&path)
                .unwrap()
                .read_to_end(&mut written)
                .unwrap();
            let new: [u8; 48] = if written.len() == 48 {
                let mut h = Sha384::new();
                h.update(value);
                h.update(&written);
                h.finalize().into()
            } else {
                value
            };
            std::fs::write(&path, new).unwrap();
            written
        })
    }

    #[test]
    fn extend_writes_48_bytes_once_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let rtmr = TsmRtmr::new(dir.path());
        let path = rtmr.path(RtmrIndex::R3);
        mkfifo(&path);
        let old = [7u8; 48];
        let kernel = emulate_one_extend(path, old);
        let digest = [0x42u8; 48];
        let outcome = rtmr.extend(RtmrIndex::R3, &Sha384Digest(digest)).unwrap();
        let written = kernel.join().unwrap();
        assert_eq!(written, digest);
        assert_eq!(outcome.before, Sha384Digest(old));
        let mut h = Sha384::new();
        h.update(old);
        h.update(digest);
        let expected: [u8; 48] = h.finalize().into();
        assert_eq!(outcome.after, Sha384Digest(expected));
    }

    #[test]
    fn read_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let rtmr = TsmRtmr::new(dir.path());
        assert!(!rtmr.is_available());
        std::fs::write(rtmr.path(RtmrIndex::R3), [9u8; 48]).unwrap();
        assert!(rtmr.is_available());
        assert_eq!(rtmr.read(RtmrIndex::R3).unwrap(), Sha384Digest([9u8; 48]));
    }

    #[test]
    fn wrong_length_value_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let rtmr = TsmRtmr::new(dir.path());
        std::fs::write(rtmr.path(RtmrIndex::R2), [9u8; 47]).unwrap();
        assert!(matches!(
            rtmr.read(RtmrIndex::R2),
            Err(TsmRtmrError::RtmrLength {
                index: RtmrIndex::R2,
                len: 47,
                ..
            })
        ));
        std::fs::write(rtmr.path(RtmrIndex::R2), [9u8; 96]).unwrap();
        assert!(matches!(
            rtmr.read(RtmrIndex::R2),
            Err(TsmRtmrError::RtmrLength {
                index: RtmrIndex::R2,
                len: 49,
                ..
            })
        ));
    }

    #[test]
    fn missing_register_and_bad_index() {
        let dir = tempfile::tempdir().unwrap();
        let rtmr = TsmRtmr::new(dir.path());
        assert!(matches!(
            rtmr.extend(RtmrIndex::R3, &Sha384Digest::ZERO),
            Err(TsmRtmrError::ReadRtmr {
                index: RtmrIndex::R3,
                ..
            })
        ));
    }
}
