//! The GPU driver extension in QEMU (issue 18 item 1): a fake driver tree built on the host
//! into an EROFS image with its dm-verity tree (`cvm_initramfs::gpu_extension`, what `cargo
//! xtask gpu-extension` runs), attached read-only as the virtio disk with serial
//! `cvm-gpu-driver`. Boot 1 passes its root hash as `cvm.gpu_driver=`: the init verifies,
//! mounts and reads back the tree (`gpu_driver` record). Boot 2 uses the same hash over a copy
//! with one byte of a library flipped: dm-verity answers EIO and the boot stops in `measure`,
//! before any workload. Two boots, no workloads.
#![cfg(any(feature = "qemu", qemu_testenv, clippy))]

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result, ensure};
    use cvm_initramfs::gpu_extension;
    use qemu_tests::{CvmSetup, Record, TestVm};

    const TIMEOUT: Duration = Duration::from_secs(300);
    /// A recognisable 64 KiB library: whole data blocks in the image (not inlined).
    const NVML_PATTERN: &[u8] = b"FAKE-NVML-";

    fn fake_tree(dir: &Path) -> Result<()> {
        for sub in ["lib", "bin", "firmware/nvidia/570.0", "modules"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let nvml: Vec<u8> = NVML_PATTERN
            .iter()
            .copied()
            .cycle()
            .take(64 << 10)
            .collect();
        std::fs::write(dir.join("lib/libnvidia-ml.so.1"), nvml)?;
        std::os::unix::fs::symlink("libnvidia-ml.so.1", dir.join("lib/libnvidia-ml.so"))?;
        std::fs::write(
            dir.join("bin/nvidia-smi"),
            b"#!/bin/sh\necho 'fake nvidia-smi'\n",
        )?;
        std::fs::write(
            dir.join("firmware/nvidia/570.0/gsp_ga10x.bin"),
            [0x5a; 8192],
        )?;
        std::fs::write(dir.join("modules/nvidia.ko"), b"not a real module")?;
        Ok(())
    }

    fn vm<'a>(setup: &'a CvmSetup, name: &str, image: &Path, root: &str) -> TestVm<'a> {
        setup
            .vm(name)
            .with_qemu_arg("-drive")
            .with_qemu_arg(&format!(
                "file={},if=none,id=gpudrv,format=raw,readonly=on",
                image.display().to_string().replace(',', ",,")
            ))
            .with_qemu_arg("-device")
            .with_qemu_arg("virtio-blk-pci,drive=gpudrv,serial=cvm-gpu-driver")
            .with_cmdline(&format!("cvm.on_ready=poweroff cvm.gpu_driver={root}"))
    }

    #[test]
    fn verified_mount_then_flipped_byte_stops_the_boot() -> Result<()> {
        let setup = CvmSetup::new()?;
        let dir = tempfile::tempdir()?;
        fake_tree(&dir.path().join("tree"))?;
        let image = dir.path().join("gpu-driver.img");
        let built = gpu_extension::build(&dir.path().join("tree"), &image, 1_700_000_000)?;
        let root = hex::encode(built.root_hash);
        eprintln!(
            "extension: {} bytes ({} of EROFS), {}",
            built.image_bytes,
            built.data_bytes,
            built.cmdline_fragment()
        );

        // 1. The right hash: verified, mounted, read back.
        let started = Instant::now();
        let mut good = vm(&setup, "gpu-extension-ok", &image, &root).boot()?;
        let record = good.wait_for_event("gpu_driver", TIMEOUT)?;
        let elapsed = started.elapsed();
        let Record::Other { line, .. } = record else {
            anyhow::bail!("gpu_driver is not a raw record: {record:?}");
        };
        let json: serde_json::Value = serde_json::from_str(&line)?;
        ensure!(json["root_hash"] == root.as_str(), "{json}");
        ensure!(
            json["mount_point"] == "/usr/lib/cvm-init/gpu-driver",
            "{json}"
        );
        // Four regular files (the symlink is no file), every byte of them read.
        ensure!(json["files"] == 4, "{json}");
        ensure!(json["bytes"] == (64 << 10) + 8192 + 33 + 17, "{json}");
        good.wait_for_console("read-only at /usr/lib/cvm-init/gpu-driver", TIMEOUT)?;
        ensure!(good.console().contains(&format!("dm-verity root {root}")));
        good.kill()?;
        eprintln!("boot 1 (verified, mounted): gpu_driver record after {elapsed:.1?}");

        // 2. One byte of the library flipped, same hash: EIO from dm-verity stops the boot.
        let mut bytes = std::fs::read(&image)?;
        let at = bytes
            .windows(NVML_PATTERN.len())
            .position(|w| w == NVML_PATTERN)
            .context("library data in the image")?
            + 5000;
        ensure!((at as u64) < built.data_bytes, "flip inside the data area");
        bytes[at] ^= 0x01;
        let tampered = dir.path().join("gpu-driver-tampered.img");
        std::fs::write(&tampered, &bytes)?;
        let started = Instant::now();
        let mut bad = vm(&setup, "gpu-extension-tampered", &tampered, &root).boot()?;
        bad.wait_for_event("power_off", TIMEOUT)?;
        bad.wait_for_exit(TIMEOUT)?;
        let elapsed = started.elapsed();
        let records = bad.records()?;
        let (stage, text) = records
            .iter()
            .find_map(|r| match r {
                Record::Fatal {
                    stage,
                    error,
                    chain,
                    ..
                } => Some((stage.clone(), format!("{error} | {}", chain.join(" | ")))),
                _ => None,
            })
            .context("no fatal record")?;
        ensure!(stage == "measure", "{stage}: {text}");
        ensure!(
            text.contains("GPU driver extension")
                && text.contains("lib/libnvidia-ml.so.1")
                && text.contains("os error 5"),
            "{text}"
        );
        ensure!(
            !records.iter().any(|r| r.event() == "gpu_driver"
                || matches!(r, Record::Ready { .. })
                || matches!(r, Record::StageStarted { stage, .. } if stage == "workloads")),
            "{records:?}"
        );
        // The kernel names the block it refused.
        ensure!(bad.console().contains("verity"), "{}", bad.console());
        eprintln!("boot 2 (flipped byte): fatal and power-off after {elapsed:.1?}");
        Ok(())
    }
}
