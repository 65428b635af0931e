//! Boot benchmark: cvm-init against a busybox baseline, same kernel and QEMU flags.
//!
//! Each run measures the wall time from spawning QEMU to the ready marker
//! ([`READY_MARKER`]) on the serial console, and to QEMU's exit after the guest powered off.
//! Runs alternate cvm-init, baseline, cvm-init, baseline... so that drift on a shared machine hits
//! both alike. The baseline image is the cvm-init image's manifest (same modules, same
//! compression) with a busybox script as `/init` ([`crate::image::BASELINE_INIT`]).

use std::fmt;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::artifacts::{ArtifactError, Artifacts};
use crate::image::{self, ImageError, READY_MARKER, TestImage};
use crate::results::Record;
use crate::vm::{ReportOnDrop, TestVm, VmError};

/// Environment variable: number of runs per variant (default 5).
pub const RUNS_ENV: &str = "QEMU_BENCH_RUNS";

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("failed to fetch the artifacts")]
    FetchArtifacts { source: ArtifactError },
    #[error("failed to build the {variant} image")]
    BuildImage {
        variant: &'static str,
        source: ImageError,
    },
    #[error("{variant} run {run} failed")]
    Boot {
        variant: &'static str,
        run: usize,
        source: VmError,
    },
    #[error("{variant} run {run}: QEMU exited with {status}")]
    ExitStatus {
        variant: &'static str,
        run: usize,
        status: String,
    },
    #[error("failed to read {path}")]
    Stat {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to write the report {path}")]
    WriteReport {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Runs per variant.
    pub runs: usize,
    /// Guest memory.
    pub memory: String,
    /// Limit for each of "ready" and "exit" per run.
    pub timeout: Duration,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            runs: 5,
            memory: "512M".to_owned(),
            timeout: Duration::from_secs(120),
        }
    }
}

/// One boot.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Spawn to the ready marker on the console, in milliseconds.
    pub ready_ms: f64,
    /// Spawn to QEMU's exit, in milliseconds.
    pub exit_ms: f64,
    /// The init's `ready` record `mono_us` (guest time since boot), cvm-init only.
    pub guest_ready_us: Option<u64>,
}

/// Median, minimum and maximum of a series, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    fn of(values: &[f64]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        let median = match (sorted.len() % 2, sorted.get(middle), middle.checked_sub(1)) {
            (1, Some(value), _) => *value,
            (0, Some(high), Some(low_index)) => {
                (sorted.get(low_index).copied().unwrap_or(*high) + high) / 2.0
            }
            _ => f64::NAN,
        };
        Self {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// Results of one variant.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    pub name: &'static str,
    pub image: PathBuf,
    pub image_bytes: u64,
    pub samples: Vec<Sample>,
    pub ready: Summary,
    pub exit: Summary,
}

/// The benchmark's result.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub runs: usize,
    pub compression: String,
    pub init_binary: PathBuf,
    pub init_binary_bytes: u64,
    pub cvm: Variant,
    pub baseline: Variant,
    /// cvm-init median / baseline median, spawn to ready.
    pub ready_ratio: f64,
    /// cvm-init median / baseline median, spawn to exit.
    pub exit_ratio: f64,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "boot benchmark: {} runs each, alternated; QEMU TCG q35, SeaBIOS, same kernel and flags",
            self.runs
        )?;
        writeln!(
            f,
            "{:<10} {:>26} {:>26} {:>12}",
            "", "spawn->ready ms", "spawn->exit ms", "image"
        )?;
        writeln!(
            f,
            "{:<10} {:>26} {:>26} {:>12}",
            "", "median (min..max)", "median (min..max)", "bytes"
        )?;
        for variant in [&self.cvm, &self.baseline] {
            writeln!(
                f,
                "{:<10} {:>8.0} ({:>6.0}..{:>6.0})   {:>8.0} ({:>6.0}..{:>6.0})   {:>12}",
                variant.name,
                variant.ready.median,
                variant.ready.min,
                variant.ready.max,
                variant.exit.median,
                variant.exit.min,
                variant.exit.max,
                variant.image_bytes
            )?;
        }
        writeln!(
            f,
            "ratio cvm-init/busybox: ready {:.3}, exit {:.3}",
            self.ready_ratio, self.exit_ratio
        )?;
        let guest: Vec<String> = self
            .cvm
            .samples
            .iter()
            .filter_map(|sample| sample.guest_ready_us)
            .map(|us| format!("{:.0}", Duration::from_micros(us).as_secs_f64() * 1000.0))
            .collect();
        if !guest.is_empty() {
            writeln!(
                f,
                "cvm-init `ready` record mono ms (guest): {}",
                guest.join(" ")
            )?;
        }
        write!(
            f,
            "init binary {} bytes ({}), initramfs compression {}",
            self.init_binary_bytes,
            self.init_binary.display(),
            self.compression
        )
    }
}

/// Runs the benchmark (builds the images first).
pub fn run(config: &BenchConfig) -> Result<BenchReport, BenchError> {
    let artifacts = Artifacts::fetch().map_err(|source| BenchError::FetchArtifacts { source })?;
    let cvm = image::test_image(&artifacts).map_err(|source| BenchError::BuildImage {
        variant: "cvm-init",
        source,
    })?;
    let baseline = image::baseline_image(&artifacts).map_err(|source| BenchError::BuildImage {
        variant: "busybox",
        source,
    })?;
    run_with(config, &artifacts, &cvm, &baseline)
}

/// Runs the benchmark on prebuilt images.
pub fn run_with(
    config: &BenchConfig,
    artifacts: &Artifacts,
    cvm: &TestImage,
    baseline: &PathBuf,
) -> Result<BenchReport, BenchError> {
    let mut cvm_samples = Vec::new();
    let mut baseline_samples = Vec::new();
    for run in 0..config.runs {
        cvm_samples.push(boot_once(
            config,
            artifacts,
            "cvm-init",
            run,
            &cvm.initramfs,
        )?);
        baseline_samples.push(boot_once(config, artifacts, "busybox", run, baseline)?);
    }
    let cvm_variant = variant("cvm-init", &cvm.initramfs, cvm_samples)?;
    let baseline_variant = variant("busybox", baseline, baseline_samples)?;
    Ok(BenchReport {
        runs: config.runs,
        compression: cvm.compression.to_string(),
        init_binary: cvm.init.clone(),
        init_binary_bytes: size(&cvm.init)?,
        ready_ratio: cvm_variant.ready.median / baseline_variant.ready.median,
        exit_ratio: cvm_variant.exit.median / baseline_variant.exit.median,
        cvm: cvm_variant,
        baseline: baseline_variant,
    })
}

fn boot_once(
    config: &BenchConfig,
    artifacts: &Artifacts,
    variant: &'static str,
    run: usize,
    initrd: &PathBuf,
) -> Result<Sample, BenchError> {
    let boot_error = |source| BenchError::Boot {
        variant,
        run,
        source,
    };
    let mut vm = TestVm::new(artifacts)
        .with_name(&format!("bench-{variant}"))
        .with_memory(&config.memory)
        .with_initrd(initrd)
        .with_cmdline("cvm.on_ready=poweroff")
        .with_report_on_drop(ReportOnDrop::OnFailure)
        .boot()
        .map_err(boot_error)?;
    let ready = vm
        .wait_for_console(READY_MARKER, config.timeout)
        .map_err(boot_error)?;
    let ready = ready.saturating_duration_since(vm.spawned_at());
    let exit = vm.wait_for_exit(config.timeout).map_err(boot_error)?;
    if !exit.success() {
        vm.mark_failed();
        return Err(BenchError::ExitStatus {
            variant,
            run,
            status: exit.status.to_string(),
        });
    }
    let guest_ready_us = vm
        .records()
        .map_err(boot_error)?
        .iter()
        .find_map(|record| match record {
            Record::Ready { mono_us } => Some(*mono_us),
            _ => None,
        });
    Ok(Sample {
        ready_ms: ready.as_secs_f64() * 1000.0,
        exit_ms: exit.after.as_secs_f64() * 1000.0,
        guest_ready_us,
    })
}

fn variant(
    name: &'static str,
    image: &PathBuf,
    samples: Vec<Sample>,
) -> Result<Variant, BenchError> {
    let ready: Vec<f64> = samples.iter().map(|sample| sample.ready_ms).collect();
    let exit: Vec<f64> = samples.iter().map(|sample| sample.exit_ms).collect();
    Ok(Variant {
        name,
        image: image.clone(),
        image_bytes: size(image)?,
        ready: Summary::of(&ready),
        exit: Summary::of(&exit),
        samples,
    })
}

fn size(path: &PathBuf) -> Result<u64, BenchError> {
    fs::metadata(path)
        .map(|metadata| metadata.len())
        .map_err(|source| BenchError::Stat {
            path: path.clone(),
            source,
        })
}

impl BenchReport {
    /// Writes the report as JSON to `path`.
    pub fn write_json(&self, path: &PathBuf) -> Result<(), BenchError> {
        let json = serde_json::to_string_pretty(self).unwrap_or_default();
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|source| BenchError::WriteReport {
                path: path.clone(),
                source,
            })?;
        }
        fs::write(path, json + "\n").map_err(|source| BenchError::WriteReport {
            path: path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_median_min_max() {
        let odd = Summary::of(&[5.0, 1.0, 3.0]);
        assert_eq!((odd.median, odd.min, odd.max), (3.0, 1.0, 5.0));
        let even = Summary::of(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!((even.median, even.min, even.max), (2.5, 1.0, 4.0));
        assert!(Summary::of(&[]).median.is_nan());
    }
}
