//! The `kernel-contract` stage: checks the running kernel against
//! `init_core::kernel_contract::FEATURES` (the list the Yocto fragment is generated from). With
//! `/proc/config.gz` the configuration answers; without it (the Debian test kernel) the probes
//! of each feature read `/proc` and `/sys`. A missing required feature is fatal and named.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use init_core::kernel_contract::{
    self, ContractReport, KernelConfig, KernelContractError, KernelView, MAX_CONFIG_LEN,
    TeeExpectation,
};
use init_core::plan::BOOT_PLAN;

/// The kernel's own configuration, when built with `CONFIG_IKCONFIG_PROC`.
pub(crate) const CONFIG_GZ: &str = "/proc/config.gz";
/// Most compressed bytes read from /proc/config.gz.
const MAX_CONFIG_GZ_LEN: u64 = 1024 * 1024;
/// Most bytes read from one probed /proc or /sys file.
const MAX_PROBE_FILE_LEN: u64 = 4 * 1024 * 1024;

/// Why the stage failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KernelContractStageError {
    #[error("read {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("decompress {path}")]
    DecompressConfig {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parse {path}")]
    ParseConfig {
        path: PathBuf,
        #[source]
        source: KernelContractError,
    },
    #[error("check the running kernel")]
    CheckKernel(#[source] KernelContractError),
}

/// Reads the probed files once each, with a size cap.
#[derive(Debug, Default)]
struct SysView {
    cache: BTreeMap<String, Option<String>>,
}

impl KernelView for SysView {
    fn read_text(&mut self, path: &str) -> Option<String> {
        self.cache
            .entry(path.to_owned())
            .or_insert_with(|| read_capped(Path::new(path), MAX_PROBE_FILE_LEN).ok())
            .clone()
    }

    fn exists(&mut self, path: &str) -> bool {
        Path::new(path).exists()
    }
}

fn read_capped(path: &Path, limit: u64) -> io::Result<String> {
    let mut text = String::new();
    File::open(path)?.take(limit).read_to_string(&mut text)?;
    Ok(text)
}

/// The decompressed `/proc/config.gz`, or `None` when the kernel has none.
fn read_config(path: &Path) -> Result<Option<KernelConfig>, KernelContractStageError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(KernelContractStageError::ReadConfig {
                path: path.to_owned(),
                source,
            });
        }
    };
    let limit = u64::try_from(MAX_CONFIG_LEN).unwrap_or(u64::MAX) + 1;
    let mut text = String::new();
    GzDecoder::new(file.take(MAX_CONFIG_GZ_LEN))
        .take(limit)
        .read_to_string(&mut text)
        .map_err(|source| KernelContractStageError::DecompressConfig {
            path: path.to_owned(),
            source,
        })?;
    KernelConfig::parse(&text)
        .map(Some)
        .map_err(|source| KernelContractStageError::ParseConfig {
            path: path.to_owned(),
            source,
        })
}

/// What this image expects of its TEE: a simulated-TEE build may boot without TDX.
fn tee_expectation() -> TeeExpectation {
    if cfg!(feature = "insecure-simulated-tee") {
        TeeExpectation::SimulatedAllowed
    } else {
        TeeExpectation::Tdx
    }
}

/// Run the check against the real kernel.
pub(crate) fn run() -> Result<ContractReport, KernelContractStageError> {
    let config = read_config(Path::new(CONFIG_GZ))?;
    let report = kernel_contract::check(
        BOOT_PLAN,
        tee_expectation(),
        config.as_ref(),
        &mut SysView::default(),
    )
    .map_err(KernelContractStageError::CheckKernel)?;
    log::info!(
        "kernel contract: {} of {} features present ({})",
        report.present(),
        kernel_contract::FEATURES.len(),
        if report.from_config {
            CONFIG_GZ
        } else {
            "probed, no /proc/config.gz"
        }
    );
    let absent = report.absent_unenforced();
    if !absent.is_empty() {
        log::info!(
            "kernel contract: absent, not needed now: {}",
            absent.join(", ")
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    fn gzip(text: &str) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(text.as_bytes()).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn absent_config_gz_means_probing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            read_config(&dir.path().join("config.gz"))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn config_gz_is_decompressed_and_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.gz");
        std::fs::write(&path, gzip("CONFIG_EXT4_FS=y\nCONFIG_CONFIGFS_FS=m\n")).unwrap();
        let config = read_config(&path).unwrap().unwrap();
        assert_eq!(
            config.value("CONFIG_EXT4_FS"),
            Some(&kernel_contract::ConfigValue::BuiltIn)
        );
    }

    #[test]
    fn corrupt_config_gz_is_a_named_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.gz");
        std::fs::write(&path, b"not gzip at all").unwrap();
        let error = read_config(&path).unwrap_err();
        assert!(
            matches!(error, KernelContractStageError::DecompressConfig { .. }),
            "{error:?}"
        );
        std::fs::write(&path, gzip("CONFIG_A=y\ngarbage\n")).unwrap();
        let error = read_config(&path).unwrap_err();
        assert!(
            matches!(
                error,
                KernelContractStageError::ParseConfig {
                    source: KernelContractError::ParseConfigLine { line: 2 },
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn oversized_config_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.gz");
        let huge = "#".repeat(MAX_CONFIG_LEN + 10);
        std::fs::write(&path, gzip(&huge)).unwrap();
        let error = read_config(&path).unwrap_err();
        assert!(
            matches!(
                error,
                KernelContractStageError::ParseConfig {
                    source: KernelContractError::ConfigTooLarge,
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn sys_view_reads_once_and_tolerates_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("filesystems");
        std::fs::write(&path, "nodev\tsysfs\n").unwrap();
        let key = path.to_string_lossy().into_owned();
        let mut view = SysView::default();
        assert_eq!(view.read_text(&key).as_deref(), Some("nodev\tsysfs\n"));
        std::fs::remove_file(&path).unwrap();
        // Cached: the kernel's view does not change during one check.
        assert_eq!(view.read_text(&key).as_deref(), Some("nodev\tsysfs\n"));
        assert_eq!(view.read_text("/nonexistent/cvm-test"), None);
        assert!(view.exists(&dir.path().to_string_lossy()));
        assert!(!view.exists("/nonexistent/cvm-test"));
    }
}
