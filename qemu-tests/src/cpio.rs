//! Concatenating initrd archives.
//!
//! The kernel unpacks concatenated archives in order and later entries replace earlier ones, so
//! appending an overlay (built with [`cvm_initramfs::build_overlay`], see
//! [`crate::image::write_overlay`]) to an image rewrites individual files.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `parts` one after the other into `target`, padding each with zeros to a 512-byte
/// boundary (the kernel skips zero padding between archives, and newc headers must be 4-byte
/// aligned). Compressed and uncompressed parts may be mixed.
pub fn concat_initrds(parts: &[PathBuf], target: &Path) -> io::Result<()> {
    let mut out = File::create(target)?;
    for part in parts {
        let bytes = fs::read(part)?;
        out.write_all(&bytes)?;
        let padding = (512 - bytes.len() % 512) % 512;
        out.write_all(&vec![0u8; padding])?;
    }
    out.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_padded_to_512_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("a");
        let second = dir.path().join("b");
        fs::write(&first, [1u8; 513]).unwrap();
        fs::write(&second, [2u8; 3]).unwrap();
        let target = dir.path().join("all");
        concat_initrds(&[first, second], &target).unwrap();
        let bytes = fs::read(&target).unwrap();
        assert_eq!(bytes.len(), 1024 + 512);
        assert_eq!(bytes[512], 1);
        assert!(bytes[513..1024].iter().all(|byte| *byte == 0));
        assert_eq!(&bytes[1024..1027], &[2, 2, 2]);
    }
}
