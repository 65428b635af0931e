//! The GPU driver extension image (`cargo xtask gpu-extension`): a prepared driver tree
//! (`lib/`, `bin/`, `firmware/`, `modules/`) as a reproducible EROFS image (`mkfs.erofs` from
//! erofs-utils: every timestamp `SOURCE_DATE_EPOCH`, all files owned by 0:0, a fixed UUID, no
//! xattrs, uncompressed), padded to 4096-byte blocks and followed by its dm-verity hash tree
//! ([`measure::verity`]). The init opens it with the root hash from `cvm.gpu_driver=`.
//! File modes come from the tree as given.

use std::path::{Path, PathBuf};
use std::process::Command;

use measure::verity::{self, VerityError};

/// The EROFS UUID of every extension image (a fixed value: the image must not depend on the
/// build).
pub const FS_UUID: &str = "6b1f3b52-0c6e-4c3e-9d3a-1c2b0e5f7a10";

#[derive(Debug, thiserror::Error)]
pub enum GpuExtensionError {
    #[error("{} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("run mkfs.erofs (erofs-utils)")]
    SpawnMkfs(#[source] std::io::Error),
    #[error("mkfs.erofs failed ({status}): {stderr}")]
    Mkfs { status: String, stderr: String },
    #[error("read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hash tree")]
    Verity(#[source] VerityError),
    #[error("write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What was built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub root_hash: [u8; 32],
    /// Bytes of the filesystem, padded to whole blocks.
    pub data_bytes: u64,
    /// Bytes of the whole image (filesystem and tree).
    pub image_bytes: u64,
}

impl Built {
    /// `cvm.gpu_driver=<root hash>`, for the kernel command line.
    pub fn cmdline_fragment(&self) -> String {
        verity::cmdline_fragment(&self.root_hash)
    }
}

/// Builds the extension image of `tree` at `out`.
pub fn build(tree: &Path, out: &Path, source_date_epoch: u64) -> Result<Built, GpuExtensionError> {
    if !tree.is_dir() {
        return Err(GpuExtensionError::NotADirectory {
            path: tree.to_owned(),
        });
    }
    let fs_path = out.with_extension("erofs.tmp");
    let output = Command::new("mkfs.erofs")
        .arg(format!("-T{source_date_epoch}"))
        .arg("--all-root")
        .arg(format!("-U{FS_UUID}"))
        .arg("-x-1")
        .arg("--quiet")
        .arg(&fs_path)
        .arg(tree)
        .env("SOURCE_DATE_EPOCH", source_date_epoch.to_string())
        .output()
        .map_err(GpuExtensionError::SpawnMkfs)?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&fs_path);
        return Err(GpuExtensionError::Mkfs {
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    let data = std::fs::read(&fs_path).map_err(|source| GpuExtensionError::Read {
        path: fs_path.clone(),
        source,
    });
    let _ = std::fs::remove_file(&fs_path);
    let data = data?;
    let (image, root_hash) = verity::image(&data).map_err(GpuExtensionError::Verity)?;
    std::fs::write(out, &image).map_err(|source| GpuExtensionError::Write {
        path: out.to_owned(),
        source,
    })?;
    Ok(Built {
        root_hash,
        data_bytes: data.len().next_multiple_of(verity::BLOCK_SIZE) as u64,
        image_bytes: image.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &Path) {
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("lib/libnvidia-ml.so.1"), vec![3u8; 10_000]).unwrap();
        std::fs::write(dir.join("bin/nvidia-smi"), b"#!/bin/sh\necho fake\n").unwrap();
    }

    /// Needs mkfs.erofs (erofs-utils, in the `test` package set): two trees written in a
    /// different order at different times give the same image and root hash.
    #[test]
    fn reproducible_image_and_root() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        tree(&a);
        std::fs::create_dir_all(b.join("bin")).unwrap();
        std::fs::write(b.join("bin/nvidia-smi"), b"#!/bin/sh\necho fake\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        tree(&b);
        let built_a = build(&a, &t.path().join("a.img"), 1_700_000_000).unwrap();
        let built_b = build(&b, &t.path().join("b.img"), 1_700_000_000).unwrap();
        assert_eq!(built_a, built_b);
        let image = std::fs::read(t.path().join("a.img")).unwrap();
        assert_eq!(image, std::fs::read(t.path().join("b.img")).unwrap());
        assert_eq!(image.len() as u64, built_a.image_bytes);
        // The layout the init derives from the disk size.
        let layout = verity::Layout::from_total_blocks(built_a.image_bytes / 4096).unwrap();
        assert_eq!(layout.data_blocks * 4096, built_a.data_bytes);
        // The image is the filesystem plus the tree of exactly that data.
        let data = &image[..usize::try_from(built_a.data_bytes).unwrap()];
        assert_eq!(
            verity::image(data).unwrap(),
            (image.clone(), built_a.root_hash)
        );
        // Another epoch is another image.
        let later = build(&a, &t.path().join("c.img"), 1_700_000_001).unwrap();
        assert_ne!(later.root_hash, built_a.root_hash);
        assert!(built_a.cmdline_fragment().starts_with("cvm.gpu_driver="));
    }

    #[test]
    fn missing_tree_is_refused() {
        let t = tempfile::tempdir().unwrap();
        assert!(matches!(
            build(&t.path().join("none"), &t.path().join("x.img"), 0),
            Err(GpuExtensionError::NotADirectory { .. })
        ));
    }
}
