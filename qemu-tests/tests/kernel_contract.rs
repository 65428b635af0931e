//! The kernel contract at boot (`init_core::kernel_contract`): the test image meets it, and the
//! same image with one required driver left out of its module list stops in `kernel-contract`
//! with the missing feature named, on the results channel and the console.
#![cfg(any(feature = "qemu", qemu_testenv, clippy))]

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use anyhow::{Result, bail, ensure};
    use qemu_tests::image::write_overlay;
    use qemu_tests::results::{events, finished_stages};
    use qemu_tests::{CvmSetup, Record};

    const TIMEOUT: Duration = Duration::from_secs(120);

    /// The load list without `module` (compared by file name, `-` and `_` alike).
    fn without_module(list: &str, module: &str) -> String {
        let wanted = module.replace('-', "_");
        list.lines()
            .filter(|line| {
                let file = line.rsplit('/').next().unwrap_or(line);
                let name = file.strip_suffix(".ko").unwrap_or(file).replace('-', "_");
                name != wanted
            })
            .map(|line| format!("{line}\n"))
            .collect()
    }

    #[test]
    fn without_module_drops_only_that_module() {
        let list = "/lib/modules/k/a/virtio_blk.ko\n/lib/modules/k/a/virtio-pci.ko\n";
        assert_eq!(
            without_module(list, "virtio_blk"),
            "/lib/modules/k/a/virtio-pci.ko\n"
        );
        assert_eq!(
            without_module(list, "virtio_pci"),
            "/lib/modules/k/a/virtio_blk.ko\n"
        );
    }

    /// The test image (Debian kernel, no /proc/config.gz, drivers as modules) passes the check
    /// by probing, and the boot goes on to `ready`.
    #[test]
    fn test_image_meets_the_contract() -> Result<()> {
        let setup = CvmSetup::new()?;
        let mut vm = setup
            .vm("kernel-contract-ok")
            .with_cmdline("cvm.on_ready=poweroff")
            .boot()?;
        let exit = vm.wait_for_exit(TIMEOUT)?;
        ensure!(exit.success(), "QEMU exit {:?}", exit.status);
        let records = vm.records()?;
        let finished = finished_stages(&records);
        ensure!(
            finished.contains(&"kernel-contract"),
            "kernel-contract did not finish: {finished:?}"
        );
        ensure!(events(&records).contains(&"ready"), "no ready: {records:?}");
        let console = vm.console();
        ensure!(
            console.contains("kernel contract:") && console.contains("probed, no /proc/config.gz"),
            "console lacks the contract summary"
        );
        Ok(())
    }

    /// Done-when of issue 9: the image without `virtio_blk` (CONFIG_VIRTIO_BLK, needed by the
    /// host-share stage) stops in `kernel-contract` naming the feature.
    #[test]
    fn missing_required_module_stops_the_boot_naming_the_feature() -> Result<()> {
        let setup = CvmSetup::new()?;
        let list = without_module(&setup.image.modules_load, "virtio_blk");
        ensure!(
            list.len() < setup.image.modules_load.len(),
            "virtio_blk is not in the image's load list:\n{}",
            setup.image.modules_load
        );
        let dir = tempfile::tempdir()?;
        let overlay = write_overlay(
            dir.path(),
            "modules-load.cpio",
            &[("/etc/cvm/modules.load", list.as_bytes(), 0o644)],
        )?;
        let mut vm = setup
            .vm("kernel-contract-missing")
            .with_overlay(&overlay)
            .with_cmdline("cvm.on_ready=poweroff")
            .boot()?;
        let fatal = vm.wait_for_event("fatal", TIMEOUT)?;
        let Record::Fatal {
            stage,
            error,
            chain,
            ..
        } = fatal
        else {
            bail!("not a fatal record: {fatal:?}");
        };
        ensure!(
            stage == "kernel-contract",
            "fatal in stage {stage}: {error}"
        );
        ensure!(
            error.contains("CONFIG_VIRTIO_BLK") && error.contains("host-share"),
            "error does not name the feature and its stage: {error}"
        );
        ensure!(
            error.contains("kernel lacks 1 required feature"),
            "more than the dropped feature is missing: {error}"
        );
        ensure!(!chain.is_empty(), "empty error chain");
        let exit = vm.wait_for_exit(TIMEOUT)?;
        ensure!(exit.success(), "QEMU exit {:?}", exit.status);
        let records = vm.records()?;
        let names = events(&records);
        ensure!(!names.contains(&"ready"), "ready despite the fatal error");
        ensure!(
            names.last() == Some(&"power_off"),
            "last record is not power_off: {names:?}"
        );
        let finished = finished_stages(&records);
        ensure!(
            finished.contains(&"results") && !finished.contains(&"host-share"),
            "stages finished: {finished:?}"
        );
        ensure!(
            vm.console().contains("CONFIG_VIRTIO_BLK"),
            "console does not name the feature"
        );
        ensure!(
            !vm.console_shows_panic(),
            "kernel panic instead of power-off"
        );
        Ok(())
    }
}
