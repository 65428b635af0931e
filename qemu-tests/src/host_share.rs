//! The dstack host share as a read-only disk: an ext4 image labelled `DSTACKSHR` holding
//! `app-compose.json`, `.sys-config.json` and friends, attached as a virtio-blk drive (the pinned
//! Debian cloud kernel has no 9p, so the disk is the path our QEMU boots exercise).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The filesystem label a dstack host gives the share disk.
pub const HOST_SHARE_LABEL: &str = "DSTACKSHR";

/// A `.sys-config.json` naming `kms_urls` (and nothing else a test boot needs), for a VM with
/// `memory_bytes` of RAM.
pub fn kms_sys_config(kms_urls: &[String], memory_bytes: u64) -> serde_json::Value {
    serde_json::json!({
        "kms_urls": kms_urls,
        "gateway_urls": [],
        "pccs_url": "",
        "docker_registry": null,
        "host_api_url": "",
        "vm_config": format!(
            "{{\"os_image_hash\":\"\",\"cpu_count\":1,\"memory_size\":{memory_bytes}}}"
        ),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum HostShareError {
    #[error("read sample host-share file {}", path.display())]
    ReadSample {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write host-share staging file {}", path.display())]
    WriteStaging {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("run mkfs.ext4 for {} (is e2fsprogs installed?)", image.display())]
    RunMkfs {
        image: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mkfs.ext4 for {} failed: {stderr}", image.display())]
    Mkfs { image: PathBuf, stderr: String },
}

/// A file of the share: name (may start with a dot) and contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareFile {
    pub name: String,
    pub contents: Vec<u8>,
}

impl ShareFile {
    pub fn new(name: &str, contents: impl Into<Vec<u8>>) -> Self {
        Self {
            name: name.to_owned(),
            contents: contents.into(),
        }
    }
}

/// The sample share in `qemu-tests/testdata/host-share/` (see `testdata/README.md`).
pub fn sample_files() -> Result<Vec<ShareFile>, HostShareError> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/host-share");
    ["app-compose.json", ".sys-config.json"]
        .iter()
        .map(|name| {
            let path = dir.join(name);
            std::fs::read(&path)
                .map(|contents| ShareFile::new(name, contents))
                .map_err(|source| HostShareError::ReadSample { path, source })
        })
        .collect()
}

/// Build an ext4 image labelled `label` holding `files` (and, for symlink tests, the symlinks
/// `(name, target)`), at `image`. `staging` is an empty scratch directory.
pub fn build_image(
    files: &[ShareFile],
    symlinks: &[(&str, &str)],
    label: &str,
    staging: &Path,
    image: &Path,
) -> Result<(), HostShareError> {
    let symlinks: Vec<(String, String)> = symlinks
        .iter()
        .map(|(name, target)| ((*name).to_owned(), (*target).to_owned()))
        .collect();
    build_image_sized(files, &symlinks, label, staging, image, 16)
}

/// [`build_image`] with the image size in MiB (for files above the 16 MiB default, e.g. an
/// app-compose.json over its 50 MiB cap; sparse files stay sparse: `mkfs.ext4 -d` keeps holes).
pub fn build_image_sized(
    files: &[ShareFile],
    symlinks: &[(String, String)],
    label: &str,
    staging: &Path,
    image: &Path,
    size_mib: u64,
) -> Result<(), HostShareError> {
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| HostShareError::WriteStaging { path, source }
    };
    std::fs::create_dir_all(staging).map_err(write_err(staging))?;
    for file in files {
        let path = staging.join(&file.name);
        std::fs::write(&path, &file.contents).map_err(write_err(&path))?;
    }
    for (name, target) in symlinks {
        let path = staging.join(name);
        std::os::unix::fs::symlink(target, &path).map_err(write_err(&path))?;
    }
    build_dir_image(staging, label, image, size_mib)
}

/// An ext4 image of `size_mib` MiB labelled `label` holding the tree under `staging` as it is
/// (modes and symlinks kept, every file owned by root): `mkfs.ext4 -d`.
pub fn build_dir_image(
    staging: &Path,
    label: &str,
    image: &Path,
    size_mib: u64,
) -> Result<(), HostShareError> {
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            label,
            "-b",
            "4096",
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(staging)
        .arg(image)
        .arg(format!("{size_mib}M"))
        .output()
        .map_err(|source| HostShareError::RunMkfs {
            image: image.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(HostShareError::Mkfs {
            image: image.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// A host share (the sample, key provider none, no KMS) whose app runs `compose`, with the
/// top-level app-compose fields of `extra` set, built as `<dir>/share.img`.
pub fn app_share_with(
    dir: &Path,
    compose: &str,
    extra: &serde_json::Value,
) -> Result<PathBuf, HostShareError> {
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| HostShareError::WriteStaging { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    let mut files = sample_files()?;
    for f in &mut files {
        if f.name == "app-compose.json" {
            let mut json: serde_json::Value = serde_json::from_slice(&f.contents)
                .map_err(|e| write_err(dir)(std::io::Error::other(e)))?;
            json["kms_enabled"] = false.into();
            json["docker_compose_file"] = compose.into();
            for (key, value) in extra.as_object().into_iter().flatten() {
                json[key] = value.clone();
            }
            f.contents = serde_json::to_vec_pretty(&json)
                .map_err(|e| write_err(dir)(std::io::Error::other(e)))?;
        }
    }
    let image = dir.join("share.img");
    let _ = std::fs::remove_dir_all(dir.join("staging"));
    build_image(&files, &[], HOST_SHARE_LABEL, &dir.join("staging"), &image)?;
    Ok(image)
}

/// The sample share as a disk image, built once per process (a unique file per process, so
/// parallel test binaries never rewrite an image another QEMU has open).
pub fn sample_image() -> Result<PathBuf, HostShareError> {
    static SHARE: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let built = SHARE.get_or_init(|| {
        let dir = crate::paths::build_dir().join(format!("host-share-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let image = dir.join("share.img");
        sample_files()
            .and_then(|files| {
                build_image(&files, &[], HOST_SHARE_LABEL, &dir.join("staging"), &image)
            })
            .map(|()| image)
            .map_err(|e| crate::image::chain(&e))
    });
    built.clone().map_err(|stderr| HostShareError::Mkfs {
        image: crate::paths::build_dir(),
        stderr,
    })
}

/// The `-drive` value that attaches `image` read-only as a virtio disk.
pub fn drive_arg(image: &Path) -> String {
    format!(
        "file={},if=virtio,format=raw,readonly=on",
        image.display().to_string().replace(',', ",,")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_share_has_the_worked_example_compose() {
        let files = sample_files().unwrap();
        let compose = files.iter().find(|f| f.name == "app-compose.json").unwrap();
        use sha2::Digest;
        // The worked example (compose-hash b5828d0f…) with only `kms_enabled` flipped to false.
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&compose.contents)),
            "520f8b30a0eb88b3663b97bacd889455b65a6055dc2422933486ad9a2a98606f"
        );
        let text = String::from_utf8(compose.contents.clone()).unwrap();
        let restored = text.replace("\"kms_enabled\": false", "\"kms_enabled\": true");
        assert_eq!(
            hex::encode(sha2::Sha256::digest(restored.as_bytes())),
            "b5828d0f4314f9585038294f8a3fa744ea987ae230833bd68092cf7859780bb3"
        );
    }

    #[test]
    fn builds_a_labelled_ext4_image() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("share.img");
        build_image(
            &sample_files().unwrap(),
            &[],
            HOST_SHARE_LABEL,
            &dir.path().join("s"),
            &image,
        )
        .unwrap();
        let bytes = std::fs::read(&image).unwrap();
        // ext4 superblock at 1024: magic 0xEF53 at +56, volume name at +120.
        assert_eq!(&bytes[1024 + 56..1024 + 58], &[0x53, 0xEF]);
        assert_eq!(&bytes[1024 + 120..1024 + 129], HOST_SHARE_LABEL.as_bytes());
        assert_eq!(
            drive_arg(Path::new("/a,b")),
            "file=/a,,b,if=virtio,format=raw,readonly=on"
        );
    }
}
