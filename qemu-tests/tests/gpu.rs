//! GPU workloads in QEMU without a GPU (issue 18): the test image (`image::test_image_gpu`)
//! carries the public nvtrust H100 sample, its RIMs and a fake driver tree; the INSECURE hook
//! `cvm.test_gpu` (test builds only) makes a fake PCI GPU and the `/dev/nvidia0`,
//! `/dev/nvidiactl` nodes (c 195:0, 195:255), and answers the gate from the sample.
//!
//! - `pass`: `nv-verify` verifies the sample under its recorded nonce and time (a stand-in
//!   cannot sign a fresh nonce; the hook accepts the replay only in test builds): the gate
//!   passes, and of two services the one with a GPU request sees its nodes and the mounted
//!   driver files, the other sees none;
//! - `replay`: the same sample under a fresh nonce: the gate refuses the stale report, the boot
//!   stops in `measure`, no workload starts;
//! - `node-only`: `/dev/nvidia0` exists but no GPU is on the PCI bus, so nothing was attested:
//!   the boot stops at the start of `workloads`, naming the node, no container starts.
#![cfg(any(feature = "qemu", qemu_testenv, clippy))]

mod fault_common;

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::fault_common::{app_share_with, power_off, raw, registry, wait_state, with_net};
    use anyhow::{Result, bail, ensure};
    use qemu_tests::registry::{busybox_layer, free_port, work_dir};
    use qemu_tests::{CvmSetup, Record};

    const TIMEOUT: Duration = Duration::from_secs(300);

    /// Two services, one requesting a GPU (`deploy.resources.reservations.devices`), one not;
    /// `pass` grants the attested fake GPU to the first only.
    #[test]
    fn gpu_granted_only_to_the_requesting_service() -> Result<()> {
        let started = Instant::now();
        let setup = CvmSetup::new_gpu()?;
        let dir = work_dir("gpu-grant");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let Some(reg) = registry(&dir.join("registry"), free_port()?)? else {
            return Ok(());
        };
        let layer = busybox_layer(&setup.artifacts.busybox)?;
        let image = reg.push_image(
            "gpu",
            &layer,
            &serde_json::json!({"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sh", "-c"]}),
        )?;
        let look = "ls /dev; ls -l /dev/nvidia0 /dev/nvidiactl /usr/lib/x86_64-linux-gnu /usr/bin/nvidia-smi 2>&1; cat /usr/lib/x86_64-linux-gnu/libcuda.so.1 2>&1; echo look-done";
        let compose = format!(
            "services:\n  trainer:\n    image: {image}\n    command: [\"{look}\"]\n    restart: \"no\"\n    deploy:\n      resources:\n        reservations:\n          devices:\n            - driver: nvidia\n              count: 1\n              capabilities: [gpu]\n  web:\n    image: {image}\n    command: [\"{look}\"]\n    restart: \"no\"\n"
        );
        let share = app_share_with(&dir, &compose, &serde_json::json!({"public_logs": true}))?;
        let mut vm = with_net(setup.vm_with_share("gpu-grant", &share))
            .with_cmdline("cvm.on_ready=wait cvm.test_gpu=pass")
            .boot()?;
        vm.wait_for_event("ready", TIMEOUT)?;
        wait_state(&mut vm, "trainer", "exited")?;
        wait_state(&mut vm, "web", "exited")?;
        let (records, console) = power_off(vm)?;
        let gpu = raw(&records, "gpu");
        ensure!(
            gpu.len() == 1 && gpu[0]["gpus"] == 1 && gpu[0]["ready"] == true,
            "gate: {gpu:?}"
        );
        let lines = |service: &str| -> Vec<String> {
            let prefix = format!("{service}| ");
            console
                .lines()
                .filter_map(|l| {
                    l.split_once(&prefix)
                        .map(|(_, rest)| rest.trim().to_owned())
                })
                .collect()
        };
        let trainer = lines("trainer");
        let web = lines("web");
        ensure!(
            trainer.iter().any(|l| l == "look-done") && web.iter().any(|l| l == "look-done"),
            "both ran:\ntrainer {trainer:?}\nweb {web:?}"
        );
        let has = |lines: &[String], text: &str| lines.iter().any(|l| l.contains(text));
        // `ls -l` of the nodes: character devices 195:0 and 195:255.
        for (node, minor) in [("/dev/nvidia0", "0"), ("/dev/nvidiactl", "255")] {
            ensure!(
                trainer.iter().any(|l| l.starts_with('c')
                    && l.ends_with(node)
                    && l.split_whitespace()
                        .collect::<Vec<_>>()
                        .windows(2)
                        .any(|w| w == ["195,", minor])),
                "trainer lacks node {node}: {trainer:?}"
            );
        }
        for text in [
            "libcuda.so.1",
            "libnvidia-ml.so.1",
            "libnvidia-ptxjitcompiler.so.1",
            "/usr/bin/nvidia-smi",
            "fake /usr/lib/cvm-init/gpu-driver/lib/libcuda.so.1 (qemu-tests gpu image)",
        ] {
            ensure!(has(&trainer, text), "trainer lacks {text:?}: {trainer:?}");
        }
        // Not a compute/utility library: not mounted.
        ensure!(!has(&trainer, "libEGL_nvidia"), "{trainer:?}");
        // Only "No such file" errors mention a GPU node or file in the other service.
        ensure!(
            !web.iter()
                .any(|l| (l.contains("nvidia") || l.contains("libcuda"))
                    && !l.contains("No such file or directory")),
            "web sees GPU files: {web:?}"
        );
        ensure!(has(&web, "No such file or directory"), "{web:?}");
        eprintln!(
            "gpu_granted_only_to_the_requesting_service: {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn fatal_boot(name: &str, mode: &str) -> Result<(String, String, Vec<Record>)> {
        let setup = CvmSetup::new_gpu()?;
        let dir = work_dir(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        // Never pulled: the boot must stop before the images are fetched.
        let compose = "services:\n  trainer:\n    image: 127.0.0.1:1/none@sha256:f1f178776ddc8034e550bff87cac9ba352599418998c352b73b71a5e7b8983a7\n    runtime: nvidia\n";
        let share = app_share_with(&dir, compose, &serde_json::json!({}))?;
        let mut vm = with_net(setup.vm_with_share(name, &share))
            .with_cmdline(&format!("cvm.on_ready=wait cvm.test_gpu={mode}"))
            .boot()?;
        let fatal = vm.wait_for_event("fatal", TIMEOUT)?;
        let Record::Fatal { stage, error, .. } = fatal else {
            bail!("not fatal: {fatal:?}");
        };
        vm.wait_for_event("power_off", TIMEOUT)?;
        let records = vm.records()?;
        ensure!(raw(&records, "container").is_empty(), "a container started");
        ensure!(
            !records.iter().any(|r| matches!(r, Record::Ready { .. })),
            "ready after a fatal"
        );
        Ok((stage, error, records))
    }

    /// A GPU node without a passing attestation stops the boot before any workload.
    #[test]
    fn a_gpu_node_without_attestation_stops_the_boot() -> Result<()> {
        let started = Instant::now();
        let (stage, error, _) = fatal_boot("gpu-node-only", "node-only")?;
        ensure!(stage == "workloads", "failed in {stage}: {error}");
        ensure!(
            error.contains("GPU device node(s) [\"/dev/nvidia0 (c 195:0)\"] belong to no GPU that passed attestation (0 passed)"),
            "{error}"
        );
        eprintln!(
            "a_gpu_node_without_attestation_stops_the_boot: {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// A replayed report (fresh nonce) fails the gate: the boot stops in `measure`.
    #[test]
    fn a_failed_gpu_attestation_stops_the_boot() -> Result<()> {
        let started = Instant::now();
        let (stage, error, _) = fatal_boot("gpu-replay", "replay")?;
        ensure!(stage == "measure", "failed in {stage}: {error}");
        ensure!(
            error.contains("GPU attestation refused") && error.to_lowercase().contains("nonce"),
            "{error}"
        );
        eprintln!(
            "a_failed_gpu_attestation_stops_the_boot: {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
