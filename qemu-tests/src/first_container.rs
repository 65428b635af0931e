//! Boot-to-first-container benchmark (issue 21): how long from spawning QEMU until a one-service
//! app's first output line is on the console, cvm-init against a busybox `/init` that mounts a
//! disk holding the same files and execs the same binary.
//!
//! * **cvm-init**: the test image with a data disk (dm-crypt with AES-256-GCM through
//!   dm-integrity, key from the `cvm.test_disk_key` hook) that a preparation boot formatted and
//!   filled with the app's image (pulled by digest from the loopback registry); each measured
//!   boot unlocks it, finds the image cached, runs the service through libcontainer and prints
//!   its output (app-compose `public_logs`, so the line reaches the console as `first| …`).
//! * **busybox**: the baseline initramfs (same kernel, modules, mounts, compression) whose
//!   `/init` ([`FIRST_CONTAINER_BASELINE_INIT`]) mounts a plain ext4 disk with the image's
//!   busybox at the same drive position and runs the same command in a `chroot`.
//!
//! Both VMs get the same QEMU flags, drives and NIC; runs alternate, and the ratio of medians
//! and the median of paired ratios are reported. The service prints [`MARKER`] computed by the
//! shell (`first-$((20+22))-line`), so the line cannot match the command text in a log line.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::artifacts::Artifacts;
use crate::bench::{BenchError, Summary};
use crate::image::TestImage;
use crate::registry::{Registry, busybox_layer, free_port, work_dir};
use crate::results::{Record, raw_records};
use crate::vm::{ReportOnDrop, TestVm};

/// What the service prints (the shell computes it from `first-$((20+22))-line`).
pub const MARKER: &str = "first-42-line";

/// The shell command both variants run.
const COMMAND: &str = "echo first-$((20+22))-line; exec sleep 3600";

/// The data-disk key of the test hook.
const DISK_KEY: &str = "4444444444444444444444444444444444444444444444444444444444444444";

/// The `/init` of the busybox variant: [`crate::image::BASELINE_INIT`]'s mounts and modules,
/// then the second disk (`/dev/vdb`, where cvm-init finds its data disk) mounted read-only and
/// the same command as the service, in a chroot, with its output on the console.
pub const FIRST_CONTAINER_BASELINE_INIT: &str = concat!(
    crate::baseline_prelude!(),
    r#"$bb mkdir -p /mnt
$bb mount -t ext4 -o ro /dev/vdb /mnt
exec $bb chroot /mnt /bin/sh -c 'echo first-$((20+22))-line; exec sleep 3600' > /dev/console 2>&1
"#
);

/// One variant's results.
#[derive(Debug, Clone, Serialize)]
pub struct FirstVariant {
    pub name: &'static str,
    /// Spawn to the marker on the console, per run, in milliseconds.
    pub samples_ms: Vec<f64>,
    pub summary: Summary,
}

/// The benchmark's result.
#[derive(Debug, Clone, Serialize)]
pub struct FirstContainerReport {
    pub runs: usize,
    pub cvm: FirstVariant,
    pub baseline: FirstVariant,
    /// cvm-init median / busybox median.
    pub ratio: f64,
    /// Median over runs of (cvm-init run i / busybox run i).
    pub paired_ratio: f64,
}

impl fmt::Display for FirstContainerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "boot to first container output: {} runs each, alternated; one busybox service, image cached on the encrypted disk",
            self.runs
        )?;
        writeln!(f, "{:<9} {:>28}", "ms", "spawn->first line (host)")?;
        for variant in [&self.cvm, &self.baseline] {
            writeln!(f, "{:<9} {:>28}", variant.name, variant.summary.to_string())?;
        }
        write!(
            f,
            "ratio cvm-init/busybox (medians): {:.3}; paired {:.3}",
            self.ratio, self.paired_ratio
        )
    }
}

/// Prepares both disks and the app, then boots each variant `runs` times, alternating.
pub fn run(
    artifacts: &Artifacts,
    cvm: &TestImage,
    runs: usize,
    timeout: Duration,
) -> Result<FirstContainerReport, BenchError> {
    let dir = work_dir(&format!("first-container-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(setup(&dir, "create the work directory"))?;
    let registry_dir = dir.join("registry");
    let port = free_port().map_err(setup(&dir, "pick a registry port"))?;
    let registry = Registry::start_at(&registry_dir, port)
        .map_err(setup(&registry_dir, "start docker-registry"))?;
    let layer = busybox_layer(&artifacts.busybox).map_err(setup(&dir, "build the layer"))?;
    let image = registry
        .push_image(
            "first",
            &layer,
            &serde_json::json!({"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sh", "-c"]}),
        )
        .map_err(setup(&registry_dir, "push the image"))?;
    let compose = format!(
        "services:\n  first:\n    image: {image}\n    command: [\"{}\"]\n    restart: \"no\"\n    stop_grace_period: 1s\n",
        COMMAND.replace('$', "$$")
    );
    let share = crate::host_share::app_share_with(
        &dir.join("share"),
        &compose,
        &serde_json::json!({"public_logs": true}),
    )
    .map_err(|source| BenchError::HostShare { source })?;
    let data_disk = crate::data_disk::create(&dir.join("data.img"), 64)
        .map_err(setup(&dir, "create the data disk"))?;
    let plain_disk = plain_disk(&dir, &artifacts.busybox)?;
    let baseline = crate::image::first_container_baseline_image(artifacts).map_err(|source| {
        BenchError::BuildImage {
            variant: "busybox",
            source,
        }
    })?;

    // Preparation: format the data disk and cache the image on it (not measured).
    let prep = cvm_vm(artifacts, &cvm.initramfs, &share, &data_disk, "prep");
    measure(prep, PREPARATION, 0, timeout)?;

    let mut cvm_ms = Vec::new();
    let mut baseline_ms = Vec::new();
    for run in 0..runs {
        cvm_ms.push(measure(
            cvm_vm(artifacts, &cvm.initramfs, &share, &data_disk, "cvm-init"),
            "cvm-init",
            run,
            timeout,
        )?);
        baseline_ms.push(measure(
            common(
                TestVm::new(artifacts),
                "busybox",
                &baseline,
                &share,
                &plain_disk,
            ),
            "busybox",
            run,
            timeout,
        )?);
    }
    let paired: Vec<f64> = cvm_ms
        .iter()
        .zip(&baseline_ms)
        .map(|(a, b)| a / b)
        .collect();
    let cvm = FirstVariant {
        name: "cvm-init",
        summary: Summary::of(&cvm_ms),
        samples_ms: cvm_ms,
    };
    let baseline = FirstVariant {
        name: "busybox",
        summary: Summary::of(&baseline_ms),
        samples_ms: baseline_ms,
    };
    let _ = fs::remove_dir_all(&dir);
    Ok(FirstContainerReport {
        runs,
        ratio: cvm.summary.median / baseline.summary.median,
        paired_ratio: Summary::of(&paired).median,
        cvm,
        baseline,
    })
}

fn setup<E: std::fmt::Display>(path: &Path, what: &str) -> impl FnOnce(E) -> BenchError {
    let path = path.to_owned();
    let what = what.to_owned();
    move |error| BenchError::Setup {
        path,
        detail: format!("{what}: {error}"),
    }
}

/// The same QEMU flags for both variants: memory, NIC, the share as the first drive and the
/// variant's disk as the second.
fn common<'a>(vm: TestVm<'a>, name: &str, initrd: &Path, share: &Path, disk: &Path) -> TestVm<'a> {
    vm.with_name(&format!("first-{name}"))
        .with_memory("1G")
        .with_initrd(initrd)
        .with_qemu_arg("-netdev")
        .with_qemu_arg("user,id=n0")
        .with_qemu_arg("-device")
        .with_qemu_arg("virtio-net-pci,netdev=n0")
        .with_qemu_arg("-drive")
        .with_qemu_arg(&crate::host_share::drive_arg(share))
        .with_qemu_arg("-drive")
        .with_qemu_arg(&crate::data_disk::drive_arg(disk))
        .with_report_on_drop(ReportOnDrop::OnFailure)
}

fn cvm_vm<'a>(
    artifacts: &'a Artifacts,
    initrd: &Path,
    share: &Path,
    disk: &Path,
    name: &str,
) -> TestVm<'a> {
    common(TestVm::new(artifacts), name, initrd, share, disk)
        .with_cmdline(&format!("cvm.on_ready=wait cvm.test_disk_key={DISK_KEY}"))
}

/// Boots `vm` and returns spawn → marker in milliseconds. A cvm-init VM is then powered off
/// cleanly (the data disk stays consistent for the next boot; not part of the figure); the
/// baseline, whose disk is read-only, is killed.
fn measure(
    vm: TestVm<'_>,
    variant: &'static str,
    run: usize,
    timeout: Duration,
) -> Result<f64, BenchError> {
    let boot_error = |source| BenchError::Boot {
        variant,
        run,
        source,
    };
    let mut vm = vm.boot().map_err(boot_error)?;
    let at = vm.wait_for_console(MARKER, timeout).map_err(boot_error)?;
    let ms = at.saturating_duration_since(vm.spawned_at()).as_secs_f64() * 1000.0;
    if variant.starts_with("cvm-init") {
        vm.system_powerdown().map_err(boot_error)?;
        let exit = vm.wait_for_exit(timeout).map_err(boot_error)?;
        if !exit.success() {
            vm.mark_failed();
            return Err(BenchError::ExitStatus {
                variant,
                run,
                status: exit.status.to_string(),
            });
        }
        let records = vm.records().map_err(boot_error)?;
        if let Err(detail) = check_disk_use(&records, variant == PREPARATION) {
            vm.mark_failed();
            return Err(BenchError::Plan {
                variant,
                run,
                detail,
            });
        }
    }
    Ok(ms)
}

/// The preparation boot's variant name.
const PREPARATION: &str = "cvm-init (preparation)";

/// What the figure claims: the preparation formatted the data disk; a measured boot found it
/// formatted (opened, not formatted again) and ran the service from the store on it.
pub fn check_disk_use(records: &[Record], preparation: bool) -> Result<(), String> {
    let disks = raw_records(records, "disk");
    let [disk] = disks.as_slice() else {
        return Err(format!("want one disk record, got {disks:?}"));
    };
    if disk["formatted"] != preparation {
        return Err(format!(
            "the data disk was {}formatted in a {} boot: {disk}",
            if preparation { "not " } else { "" },
            if preparation {
                "preparation"
            } else {
                "measured"
            }
        ));
    }
    let workloads = raw_records(records, "workloads");
    match workloads.as_slice() {
        [w] if w["persistent"] == true && w["services"] == serde_json::json!(["first"]) => Ok(()),
        other => Err(format!(
            "want the service started from the store on the data disk: {other:?}"
        )),
    }
}

/// A plain ext4 disk (same size as the data disk) with the image's busybox as `/bin/busybox`
/// and `/bin/sh`, `/bin/echo`, `/bin/sleep` links.
fn plain_disk(dir: &Path, busybox: &Path) -> Result<PathBuf, BenchError> {
    let staging = dir.join("plain");
    let bin = staging.join("bin");
    fs::create_dir_all(&bin).map_err(setup(&bin, "create"))?;
    fs::copy(busybox, bin.join("busybox")).map_err(setup(&bin, "copy busybox"))?;
    for applet in ["sh", "echo", "sleep"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet))
            .map_err(setup(&bin, "link an applet"))?;
    }
    let image = dir.join("plain.img");
    crate::host_share::build_dir_image(&staging, "PLAIN", &image, 64)
        .map_err(|source| BenchError::HostShare { source })?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn other(event: &str, json: serde_json::Value) -> Record {
        Record::Other {
            event: event.to_owned(),
            line: json.to_string(),
        }
    }

    #[test]
    fn disk_use_is_checked_both_ways() {
        let disk = |formatted: bool| other("disk", serde_json::json!({"formatted": formatted}));
        let store = |persistent: bool| {
            other(
                "workloads",
                serde_json::json!({"services": ["first"], "persistent": persistent}),
            )
        };
        assert_eq!(check_disk_use(&[disk(true), store(true)], true), Ok(()));
        assert_eq!(check_disk_use(&[disk(false), store(true)], false), Ok(()));
        assert!(check_disk_use(&[disk(true), store(true)], false).is_err());
        assert!(check_disk_use(&[disk(false), store(true)], true).is_err());
        assert!(check_disk_use(&[disk(false), store(false)], false).is_err());
        assert!(check_disk_use(&[store(true)], false).is_err());
    }

    #[test]
    fn the_marker_is_not_in_the_command_text() {
        assert!(!COMMAND.contains(MARKER));
        assert!(FIRST_CONTAINER_BASELINE_INIT.contains("echo first-$((20+22))-line"));
        assert!(!FIRST_CONTAINER_BASELINE_INIT.contains(MARKER));
    }
}
