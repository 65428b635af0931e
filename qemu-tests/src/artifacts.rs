//! Pinned guest artifacts (kernel, OVMF, busybox) from Debian packages, verified by sha256.
//!
//! The pins live in `qemu-tests/artifacts.toml`. Each package is downloaded with
//! `apt-get download <name>=<version>`, checked against its sha256, unpacked with `dpkg-deb -x`
//! and cached under `<workspace>/target/qemu-artifacts/<name>_<version>/`. A cached package is
//! re-verified on every use.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::paths;

/// Environment variable naming a directory of already downloaded `.deb` files.
pub const DEB_DIR_ENV: &str = "QEMU_TESTS_DEB_DIR";

/// Errors while fetching or verifying the pinned artifacts.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("failed to read the artifact manifest {path}")]
    ReadManifest { path: PathBuf, source: io::Error },
    #[error("failed to parse the artifact manifest {path}")]
    ParseManifest {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("artifact manifest has no package `{key}`")]
    MissingPackage { key: String },
    #[error("package {package} has no file `{file}` in the artifact manifest")]
    MissingFileKey { package: String, file: String },
    #[error("package {package}: `{path}` is missing after unpacking")]
    MissingFile { package: String, path: PathBuf },
    #[error("failed to create the artifact cache directory {path}")]
    CreateCache { path: PathBuf, source: io::Error },
    #[error("failed to lock {path}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("failed to run {command}")]
    Spawn { command: String, source: io::Error },
    #[error("`apt-get download {package}={version}` failed: {stderr}")]
    Download {
        package: String,
        version: String,
        stderr: String,
    },
    #[error("`apt-get download` of {package} produced no .deb in {dir}")]
    NoDeb { package: String, dir: PathBuf },
    #[error("failed to hash {path}")]
    Hash { path: PathBuf, source: io::Error },
    #[error("sha256 mismatch for package {package} ({path}): expected {expected}, found {actual}")]
    ShaMismatch {
        package: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("`dpkg-deb -x` of {package} failed: {stderr}")]
    Extract { package: String, stderr: String },
    #[error("failed to update the cache entry {path}")]
    UpdateCache { path: PathBuf, source: io::Error },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    packages: BTreeMap<String, PackagePin>,
}

/// One pinned Debian package, as written in `artifacts.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackagePin {
    /// Debian binary package name.
    pub name: String,
    /// Exact Debian version, including any epoch.
    pub version: String,
    /// Debian architecture (`amd64`, `all`).
    pub arch: String,
    /// Lower-case hex sha256 of the `.deb`.
    pub sha256: String,
    /// Source package and version it was built from.
    pub source: String,
    /// Named paths inside the unpacked package.
    pub files: BTreeMap<String, String>,
}

impl PackagePin {
    /// Directory name in the cache: `<name>_<version>` with the epoch colon escaped like apt does.
    fn cache_name(&self) -> String {
        format!("{}_{}", self.name, self.version.replace(':', "%3a"))
    }
}

/// The unpacked, verified artifacts the harness boots with.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// Kernel image (`bzImage`), passed with `-kernel`.
    pub kernel: PathBuf,
    /// Kernel configuration file shipped with the kernel.
    pub kernel_config: PathBuf,
    /// Module tree `lib/modules/<release>` of the same kernel (no `modules.dep`).
    pub module_tree: PathBuf,
    /// Kernel release, e.g. `6.1.0-50-cloud-amd64` (the module tree's directory name).
    pub kernel_release: String,
    /// `OVMF_CODE_4M.fd` (read-only pflash unit 0).
    pub ovmf_code: PathBuf,
    /// `OVMF_VARS_4M.fd` template (each VM gets its own copy).
    pub ovmf_vars: PathBuf,
    /// Static busybox binary (benchmark baseline).
    pub busybox: PathBuf,
}

impl Artifacts {
    /// Fetches (or reuses) the artifacts pinned in `qemu-tests/artifacts.toml`, cached under
    /// `<workspace>/target/qemu-artifacts`.
    pub fn fetch() -> Result<Self, ArtifactError> {
        Self::fetch_from(&paths::artifacts_manifest(), &paths::artifact_cache())
    }

    /// As [`Artifacts::fetch`], with the kernel of package key `kernel_key` (`kernel`, or
    /// `kernel_9p` for the generic-flavour kernel that has 9p).
    pub fn fetch_with_kernel(kernel_key: &str) -> Result<Self, ArtifactError> {
        Self::fetch_from_with_kernel(
            &paths::artifacts_manifest(),
            &paths::artifact_cache(),
            kernel_key,
        )
    }

    /// Fetches the artifacts pinned in `manifest` into `cache`.
    pub fn fetch_from(manifest: &Path, cache: &Path) -> Result<Self, ArtifactError> {
        Self::fetch_from_with_kernel(manifest, cache, "kernel")
    }

    /// Fetches the artifacts pinned in `manifest` into `cache`, with the kernel of package key
    /// `kernel_key`.
    pub fn fetch_from_with_kernel(
        manifest: &Path,
        cache: &Path,
        kernel_key: &str,
    ) -> Result<Self, ArtifactError> {
        let text = fs::read_to_string(manifest).map_err(|source| ArtifactError::ReadManifest {
            path: manifest.to_owned(),
            source,
        })?;
        let parsed: ManifestFile =
            toml::from_str(&text).map_err(|source| ArtifactError::ParseManifest {
                path: manifest.to_owned(),
                source,
            })?;
        fs::create_dir_all(cache).map_err(|source| ArtifactError::CreateCache {
            path: cache.to_owned(),
            source,
        })?;

        // One process at a time touches the cache (parallel test binaries share it).
        let lock_path = cache.join(".lock");
        let lock = File::create(&lock_path).map_err(|source| ArtifactError::Lock {
            path: lock_path.clone(),
            source,
        })?;
        lock.lock().map_err(|source| ArtifactError::Lock {
            path: lock_path.clone(),
            source,
        })?;

        let kernel = Unpacked::ensure(&parsed, kernel_key, cache)?;
        let ovmf = Unpacked::ensure(&parsed, "ovmf", cache)?;
        let busybox = Unpacked::ensure(&parsed, "busybox", cache)?;
        let module_tree = kernel.file("modules")?;
        let kernel_release = module_tree
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            kernel: kernel.file("vmlinuz")?,
            kernel_config: kernel.file("config")?,
            module_tree,
            kernel_release,
            ovmf_code: ovmf.file("code")?,
            ovmf_vars: ovmf.file("vars")?,
            busybox: busybox.file("busybox")?,
        })
    }
}

/// A verified, unpacked package in the cache.
struct Unpacked {
    pin: PackagePin,
    root: PathBuf,
}

impl Unpacked {
    fn ensure(manifest: &ManifestFile, key: &str, cache: &Path) -> Result<Self, ArtifactError> {
        let pin =
            manifest
                .packages
                .get(key)
                .cloned()
                .ok_or_else(|| ArtifactError::MissingPackage {
                    key: key.to_owned(),
                })?;
        let dir = cache.join(pin.cache_name());
        let deb = dir.join("package.deb");
        let root = dir.join("root");
        let stamp = dir.join("unpacked.sha256");

        if !deb.exists() {
            fs::create_dir_all(&dir).map_err(|source| ArtifactError::CreateCache {
                path: dir.clone(),
                source,
            })?;
            let fetched = obtain_deb(&pin, &dir)?;
            // Verify before the file takes its cache name, so a bad download is never cached.
            verify_sha(&pin, &fetched)?;
            fs::rename(&fetched, &deb).map_err(|source| ArtifactError::UpdateCache {
                path: deb.clone(),
                source,
            })?;
        }
        verify_sha(&pin, &deb)?;

        let stamped = fs::read_to_string(&stamp).unwrap_or_default();
        if stamped.trim() != pin.sha256 || !root.is_dir() {
            if root.exists() {
                fs::remove_dir_all(&root).map_err(|source| ArtifactError::UpdateCache {
                    path: root.clone(),
                    source,
                })?;
            }
            let output = Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(&root)
                .output()
                .map_err(|source| ArtifactError::Spawn {
                    command: "dpkg-deb".into(),
                    source,
                })?;
            if !output.status.success() {
                return Err(ArtifactError::Extract {
                    package: pin.name.clone(),
                    stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                });
            }
            fs::write(&stamp, format!("{}\n", pin.sha256)).map_err(|source| {
                ArtifactError::UpdateCache {
                    path: stamp.clone(),
                    source,
                }
            })?;
        }
        Ok(Self { pin, root })
    }

    fn file(&self, key: &str) -> Result<PathBuf, ArtifactError> {
        let relative = self
            .pin
            .files
            .get(key)
            .ok_or_else(|| ArtifactError::MissingFileKey {
                package: self.pin.name.clone(),
                file: key.to_owned(),
            })?;
        let path = self.root.join(relative);
        if path.exists() {
            Ok(path)
        } else {
            Err(ArtifactError::MissingFile {
                package: self.pin.name.clone(),
                path,
            })
        }
    }
}

/// Puts a candidate `.deb` for `pin` into `dir` (from `QEMU_TESTS_DEB_DIR` or `apt-get download`)
/// and returns its path. The caller verifies it.
fn obtain_deb(pin: &PackagePin, dir: &Path) -> Result<PathBuf, ArtifactError> {
    if let Some(local) = std::env::var_os(DEB_DIR_ENV).map(PathBuf::from)
        && let Some(found) = find_local_deb(pin, &local)
    {
        let target = dir.join("download.deb");
        fs::copy(&found, &target).map_err(|source| ArtifactError::UpdateCache {
            path: target.clone(),
            source,
        })?;
        return Ok(target);
    }

    let staging = dir.join("download");
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|source| ArtifactError::UpdateCache {
            path: staging.clone(),
            source,
        })?;
    }
    fs::create_dir_all(&staging).map_err(|source| ArtifactError::CreateCache {
        path: staging.clone(),
        source,
    })?;

    if let Err(first) = apt_download(pin, &staging) {
        // apt may simply not know the version yet: refresh the lists once and retry.
        let update = Command::new("apt-get")
            .args(["update", "-q"])
            .output()
            .map_err(|source| ArtifactError::Spawn {
                command: "apt-get update".into(),
                source,
            })?;
        if !update.status.success() {
            return Err(first);
        }
        apt_download(pin, &staging)?;
    }
    let deb = fs::read_dir(&staging)
        .map_err(|source| ArtifactError::UpdateCache {
            path: staging.clone(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .ok_or_else(|| ArtifactError::NoDeb {
            package: pin.name.clone(),
            dir: staging.clone(),
        })?;
    let target = dir.join("download.deb");
    fs::rename(&deb, &target).map_err(|source| ArtifactError::UpdateCache {
        path: target.clone(),
        source,
    })?;
    // Best effort: the staging directory is empty by now.
    let _ = fs::remove_dir(&staging);
    Ok(target)
}

fn apt_download(pin: &PackagePin, staging: &Path) -> Result<(), ArtifactError> {
    let spec = format!("{}={}", pin.name, pin.version);
    let output = Command::new("apt-get")
        .args(["download", "-q", &spec])
        .current_dir(staging)
        .output()
        .map_err(|source| ArtifactError::Spawn {
            command: "apt-get download".into(),
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ArtifactError::Download {
            package: pin.name.clone(),
            version: pin.version.clone(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Looks for `<name>_*.deb` in `dir` whose sha256 matches the pin.
fn find_local_deb(pin: &PackagePin, dir: &Path) -> Option<PathBuf> {
    let prefix = format!("{}_", pin.name);
    fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&prefix) && name.ends_with(".deb"))
        })
        .find(|path| sha256_file(path).is_ok_and(|sum| sum == pin.sha256))
}

fn verify_sha(pin: &PackagePin, path: &Path) -> Result<(), ArtifactError> {
    let actual = sha256_file(path).map_err(|source| ArtifactError::Hash {
        path: path.to_owned(),
        source,
    })?;
    if actual == pin.sha256.to_ascii_lowercase() {
        Ok(())
    } else {
        Err(ArtifactError::ShaMismatch {
            package: pin.name.clone(),
            path: path.to_owned(),
            expected: pin.sha256.clone(),
            actual,
        })
    }
}

/// Lower-case hex sha256 of a file.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(buffer.get(..read).unwrap_or_default());
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_manifest_parses_and_names_every_file() {
        let text = fs::read_to_string(paths::artifacts_manifest()).unwrap();
        let manifest: ManifestFile = toml::from_str(&text).unwrap();
        let files = |key: &str| {
            manifest.packages[key]
                .files
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(files("kernel"), ["config", "modules", "vmlinuz"]);
        assert_eq!(files("kernel_9p"), ["config", "modules", "vmlinuz"]);
        assert_eq!(
            manifest.packages["kernel"].version, manifest.packages["kernel_9p"].version,
            "both kernel flavours come from the same source version"
        );
        assert_eq!(files("ovmf"), ["code", "vars"]);
        assert_eq!(files("busybox"), ["busybox"]);
        for pin in manifest.packages.values() {
            assert_eq!(pin.sha256.len(), 64, "{}", pin.name);
        }
    }

    #[test]
    fn epoch_is_escaped_in_cache_name() {
        let pin = PackagePin {
            name: "busybox-static".into(),
            version: "1:1.35.0-4".into(),
            arch: "amd64".into(),
            sha256: String::new(),
            source: String::new(),
            files: BTreeMap::new(),
        };
        assert_eq!(pin.cache_name(), "busybox-static_1%3a1.35.0-4");
    }

    #[test]
    fn tampered_deb_is_a_hard_error_naming_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("artifacts.toml");
        fs::write(
            &manifest,
            r#"[packages.kernel]
name = "linux-image-test"
version = "1.0"
arch = "amd64"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
source = "test"
files = { vmlinuz = "boot/vmlinuz", config = "boot/config", modules = "lib/modules/x" }
"#,
        )
        .unwrap();
        let cache = dir.path().join("cache");
        let entry = cache.join("linux-image-test_1.0");
        fs::create_dir_all(&entry).unwrap();
        fs::write(entry.join("package.deb"), b"not the pinned package").unwrap();
        let error = Artifacts::fetch_from(&manifest, &cache).unwrap_err();
        assert!(
            matches!(&error, ArtifactError::ShaMismatch { package, .. } if package == "linux-image-test")
        );
        assert!(error.to_string().contains("linux-image-test"));
    }
}
