//! Boot benchmark: cvm-init against a busybox baseline, same kernel and QEMU flags.
//!
//! Each run measures the wall time from spawning QEMU to the ready marker
//! ([`READY_MARKER`]) on the serial console, and to QEMU's exit after the guest powered off.
//! Runs alternate cvm-init, baseline, cvm-init, baseline... so that drift on a shared machine hits
//! both alike. The baseline image is the cvm-init image's manifest (same modules, same
//! compression) with a busybox script as `/init` ([`crate::image::BASELINE_INIT`]).

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
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
    #[error("failed to build the host-share disk")]
    HostShare {
        #[source]
        source: crate::host_share::HostShareError,
    },
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
    #[error("{variant} run {run} did not finish the boot plan: {detail}")]
    Plan {
        variant: &'static str,
        run: usize,
        detail: String,
    },
    #[error("benchmark setup: {} ({detail})", path.display())]
    Setup { path: PathBuf, detail: String },
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
    /// Spawn to the ready marker on the console, in milliseconds (host clock).
    pub ready_ms: f64,
    /// Spawn to QEMU's exit, in milliseconds (host clock).
    pub exit_ms: f64,
    /// Guest clock (the console's printk timestamps) from the kernel's `Run /init` line to the
    /// ready marker: the time the init itself took.
    pub guest_init_ms: Option<f64>,
}

/// Median, minimum and maximum of a series, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    pub(crate) fn of(values: &[f64]) -> Self {
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

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>7.0} ({:>6.0}..{:>6.0})",
            self.median, self.min, self.max
        )
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
    /// Of [`Sample::guest_init_ms`], when every run had both console lines.
    pub guest_init: Option<Summary>,
}

/// The benchmark's result.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub runs: usize,
    /// The stages the cvm-init boots ran, in order (from their `stage_finished` records; every
    /// run must report the same list).
    pub plan: Vec<String>,
    pub compression: String,
    pub init_binary: PathBuf,
    pub init_binary_bytes: u64,
    pub cvm: Variant,
    pub baseline: Variant,
    /// cvm-init median / baseline median, spawn to ready.
    pub ready_ratio: f64,
    /// cvm-init median / baseline median, spawn to exit.
    pub exit_ratio: f64,
    /// Median over runs of (cvm-init run i / baseline run i), spawn to ready: less sensitive to
    /// load that drifts during the benchmark.
    pub paired_ready_ratio: f64,
    /// cvm-init median / baseline median of the guest-clock init phase.
    pub guest_init_ratio: Option<f64>,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "boot benchmark: {} runs each, alternated; QEMU TCG q35 SeaBIOS, same kernel, flags, cmdline",
            self.runs
        )?;
        writeln!(f, "cvm-init plan booted: {}", self.plan.join(" > "))?;
        writeln!(
            f,
            "{:<9} {:>24} {:>24} {:>24} {:>10}",
            "ms", "spawn->ready (host)", "spawn->exit (host)", "Run /init->ready (guest)", "image"
        )?;
        for variant in [&self.cvm, &self.baseline] {
            let guest = variant
                .guest_init
                .map_or_else(|| "n/a".to_owned(), |s| s.to_string());
            writeln!(
                f,
                "{:<9} {:>24} {:>24} {:>24} {:>10}",
                variant.name,
                variant.ready.to_string(),
                variant.exit.to_string(),
                guest,
                variant.image_bytes
            )?;
        }
        writeln!(
            f,
            "ratio cvm-init/busybox (medians): ready {:.3}, exit {:.3}, guest init phase {}; paired ready {:.3}",
            self.ready_ratio,
            self.exit_ratio,
            self.guest_init_ratio
                .map_or_else(|| "n/a".to_owned(), |r| format!("{r:.3}")),
            self.paired_ready_ratio
        )?;
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
    let mut plan: Option<Vec<String>> = None;
    for run in 0..config.runs {
        let (sample, stages) = boot_once(config, artifacts, "cvm-init", run, &cvm.initramfs)?;
        match &plan {
            Some(first) if *first != stages => {
                return Err(BenchError::Plan {
                    variant: "cvm-init",
                    run,
                    detail: format!(
                        "ran {} where run 0 ran {}",
                        stages.join(","),
                        first.join(",")
                    ),
                });
            }
            Some(_) => {}
            None => plan = Some(stages),
        }
        cvm_samples.push(sample);
        baseline_samples.push(boot_once(config, artifacts, "busybox", run, baseline)?.0);
    }
    let paired: Vec<f64> = cvm_samples
        .iter()
        .zip(&baseline_samples)
        .map(|(a, b)| a.ready_ms / b.ready_ms)
        .collect();
    let cvm_variant = variant("cvm-init", &cvm.initramfs, cvm_samples)?;
    let baseline_variant = variant("busybox", baseline, baseline_samples)?;
    let guest_init_ratio = cvm_variant
        .guest_init
        .zip(baseline_variant.guest_init)
        .map(|(a, b)| a.median / b.median);
    Ok(BenchReport {
        runs: config.runs,
        plan: plan.unwrap_or_default(),
        compression: cvm.compression.to_string(),
        init_binary: cvm.init.clone(),
        init_binary_bytes: size(&cvm.init)?,
        ready_ratio: cvm_variant.ready.median / baseline_variant.ready.median,
        exit_ratio: cvm_variant.exit.median / baseline_variant.exit.median,
        paired_ready_ratio: Summary::of(&paired).median,
        guest_init_ratio,
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
) -> Result<(Sample, Vec<String>), BenchError> {
    let boot_error = |source| BenchError::Boot {
        variant,
        run,
        source,
    };
    // Both variants get the same devices: the sample host share (which the busybox baseline
    // ignores) as a read-only virtio disk.
    let share =
        crate::host_share::sample_image().map_err(|source| BenchError::HostShare { source })?;
    let mut vm = TestVm::new(artifacts)
        .with_name(&format!("bench-{variant}"))
        .with_memory(&config.memory)
        .with_initrd(initrd)
        .with_qemu_arg("-drive")
        .with_qemu_arg(&crate::host_share::drive_arg(&share))
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
    let stages = if variant == "busybox" {
        Vec::new()
    } else {
        booted_plan(&vm.records().map_err(boot_error)?).map_err(|detail| {
            vm.mark_failed();
            BenchError::Plan {
                variant,
                run,
                detail,
            }
        })?
    };
    Ok((
        Sample {
            ready_ms: ready.as_secs_f64() * 1000.0,
            exit_ms: exit.after.as_secs_f64() * 1000.0,
            guest_init_ms: guest_init_phase(&vm.console()),
        },
        stages,
    ))
}

/// The stages a cvm-init boot finished, in order; an error unless it reached `ready` without a
/// `fatal` record (a benchmark of a failed boot measures nothing).
pub fn booted_plan(records: &[Record]) -> Result<Vec<String>, String> {
    let mut stages = Vec::new();
    let mut ready = false;
    for record in records {
        match record {
            Record::StageFinished { stage, .. } => stages.push(stage.clone()),
            Record::Ready { .. } => ready = true,
            Record::Fatal { stage, error, .. } => {
                return Err(format!("fatal in {stage}: {error}"));
            }
            _ => {}
        }
    }
    if ready {
        Ok(stages)
    } else {
        Err(format!("no ready record after {}", stages.join(",")))
    }
}

/// Guest milliseconds from the kernel's `Run /init as init process` line to the first line with
/// the ready marker, from their printk timestamps (`[    3.128505] ...`).
pub fn guest_init_phase(console: &str) -> Option<f64> {
    let stamp = |needle: &str| {
        console
            .lines()
            .find(|line| line.contains(needle))
            .and_then(printk_seconds)
    };
    let start = stamp("Run /init as init process")?;
    let ready = stamp(READY_MARKER)?;
    Some((ready - start) * 1000.0)
}

/// The seconds of a `[    3.128505] ...` console line.
fn printk_seconds(line: &str) -> Option<f64> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (seconds, _) = rest.split_once(']')?;
    seconds.trim().parse().ok()
}

fn variant(
    name: &'static str,
    image: &PathBuf,
    samples: Vec<Sample>,
) -> Result<Variant, BenchError> {
    let ready: Vec<f64> = samples.iter().map(|sample| sample.ready_ms).collect();
    let exit: Vec<f64> = samples.iter().map(|sample| sample.exit_ms).collect();
    let guest: Option<Vec<f64>> = samples.iter().map(|sample| sample.guest_init_ms).collect();
    Ok(Variant {
        name,
        image: image.clone(),
        image_bytes: size(image)?,
        ready: Summary::of(&ready),
        exit: Summary::of(&exit),
        guest_init: guest
            .filter(|values| !values.is_empty())
            .map(|values| Summary::of(&values)),
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
    pub fn write_json(&self, path: &Path) -> Result<(), BenchError> {
        write_json(self, path)
    }
}

/// Writes a report as pretty JSON to `path` (creating its directory).
pub fn write_json<T: Serialize>(report: &T, path: &Path) -> Result<(), BenchError> {
    let json = serde_json::to_string_pretty(report).unwrap_or_default();
    let write_error = |source| BenchError::WriteReport {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(write_error)?;
    }
    fs::write(path, json + "\n").map_err(write_error)
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

    #[test]
    fn guest_init_phase_from_printk_stamps() {
        let console = "[    3.128505] Run /init as init process\n\
                       [    3.310126] cvm-init: cvm-init 0.1.0 starting\n\
                       [    3.901258] cvm-init: ready (811 ms after PID 1 started)\n";
        let phase = guest_init_phase(console).unwrap();
        assert!((phase - 772.753).abs() < 1e-6, "{phase}");
        assert_eq!(guest_init_phase("cvm-init: ready\n"), None);
        assert_eq!(printk_seconds("no stamp"), None);
    }

    #[test]
    fn booted_plan_lists_stages_and_refuses_a_failed_boot() {
        let finished = |stage: &str| Record::StageFinished {
            stage: stage.to_owned(),
            mono_us: 1,
            duration_us: 1,
        };
        let ok = [
            finished("early"),
            finished("cmdline"),
            Record::Ready { mono_us: 2 },
        ];
        assert_eq!(booted_plan(&ok).unwrap(), ["early", "cmdline"]);
        let unfinished = [finished("early")];
        assert_eq!(
            booted_plan(&unfinished).unwrap_err(),
            "no ready record after early"
        );
        let fatal = [
            finished("early"),
            Record::Fatal {
                stage: "kernel-contract".to_owned(),
                error: "missing CONFIG_TDX_GUEST_DRIVER".to_owned(),
                chain: Vec::new(),
                mono_us: 3,
            },
        ];
        assert_eq!(
            booted_plan(&fatal).unwrap_err(),
            "fatal in kernel-contract: missing CONFIG_TDX_GUEST_DRIVER"
        );
    }
}
