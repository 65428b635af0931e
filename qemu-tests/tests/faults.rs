//! Bad input ends in a clear one-line cause on the results channel and the console, then
//! power-off: an unknown `cvm.*` key, a missing module, an unmountable filesystem.
#![cfg(any(feature = "qemu", qemu_testenv, clippy))]

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use anyhow::{Result, ensure};
    use qemu_tests::image::write_overlay;
    use qemu_tests::results::events;
    use qemu_tests::{CvmSetup, Record, RunningVm};

    const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

    /// Waits for the `fatal` record and QEMU's own exit; checks power-off, the records after
    /// the fatal one, and that the console shows the one-line cause. Returns (stage, error).
    fn expect_fatal(vm: &mut RunningVm) -> Result<(String, String)> {
        let fatal = vm.wait_for_event("fatal", BOOT_TIMEOUT)?;
        let Record::Fatal {
            stage,
            error,
            chain,
            ..
        } = fatal
        else {
            anyhow::bail!("not a fatal record: {fatal:?}");
        };
        let exit = vm.wait_for_exit(BOOT_TIMEOUT)?;
        ensure!(exit.success(), "QEMU exit status {:?}", exit.status);
        ensure!(
            !vm.console_shows_panic(),
            "kernel panic instead of power-off"
        );
        ensure!(
            vm.console_shows_power_off(),
            "console has no power-off message"
        );
        let records = vm.records()?;
        let names = events(&records);
        ensure!(
            !names.contains(&"ready"),
            "ready despite a fatal error: {names:?}"
        );
        ensure!(
            names.last() == Some(&"power_off"),
            "last record is not power_off: {names:?}"
        );
        ensure!(!chain.is_empty(), "empty error chain");
        ensure!(!error.contains('\n'), "cause is not one line: {error:?}");
        let console = vm.console();
        ensure!(
            console.lines().any(|line| line.contains(&error)),
            "console does not show the cause {error:?}"
        );
        Ok((stage, error))
    }

    /// (b) An unknown `cvm.*` key is a fatal configuration error naming the key.
    #[test]
    fn unknown_cmdline_key_is_fatal() -> Result<()> {
        let setup = CvmSetup::new()?;
        let mut vm = setup
            .vm("bogus-key")
            .with_cmdline("cvm.on_ready=poweroff cvm.bogus=1")
            .boot()?;
        let (stage, error) = expect_fatal(&mut vm)?;
        ensure!(stage == "cmdline", "fatal in stage {stage}");
        ensure!(
            error.contains("cvm.bogus"),
            "error does not name the key: {error}"
        );
        Ok(())
    }

    /// (c) A module in the load list that does not exist is fatal and named.
    #[test]
    fn missing_module_is_fatal() -> Result<()> {
        let setup = CvmSetup::new()?;
        let missing = format!(
            "/lib/modules/{}/kernel/drivers/cvm/cvm_test_missing.ko",
            setup.artifacts.kernel_release
        );
        let list = setup.modules_load_with_missing(&missing);
        let dir = tempfile::tempdir()?;
        let overlay = write_overlay(
            dir.path(),
            "modules-load.cpio",
            &[("/etc/cvm/modules.load", list.as_bytes(), 0o644)],
        )?;
        let mut vm = setup
            .vm("missing-module")
            .with_overlay(&overlay)
            .with_cmdline("cvm.on_ready=poweroff")
            .boot()?;
        let (stage, error) = expect_fatal(&mut vm)?;
        ensure!(stage == "modules", "fatal in stage {stage}");
        ensure!(
            error.contains("cvm_test_missing"),
            "error does not name the module: {error}"
        );
        Ok(())
    }

    /// (d) A mount that fails (test fault: a filesystem type that does not exist) is fatal,
    /// naming the mount point and ENODEV.
    #[test]
    fn unmountable_filesystem_is_fatal() -> Result<()> {
        let setup = CvmSetup::new()?;
        let mut vm = setup
            .vm("mount-fault")
            .with_cmdline("cvm.on_ready=poweroff cvm.test_fault=mount:/sys/kernel/security")
            .boot()?;
        let (stage, error) = expect_fatal(&mut vm)?;
        ensure!(stage == "mount", "fatal in stage {stage}");
        ensure!(
            error.contains("/sys/kernel/security"),
            "error does not name the mount: {error}"
        );
        ensure!(
            ["ENODEV", "No such device", "os error 19"]
                .iter()
                .any(|e| error.contains(e)),
            "error does not say ENODEV: {error}"
        );
        Ok(())
    }

    /// The guest API process is supervised: killed after `ready`, PID 1 restarts it with
    /// backoff (records `restarting` then `restarted` with a new pid), and an ACPI power-off
    /// still shuts down cleanly.
    #[test]
    fn killed_guest_api_is_restarted() -> Result<()> {
        let setup = CvmSetup::new()?;
        let mut vm = setup
            .vm("guest-api-restart")
            .with_cmdline("cvm.on_ready=wait cvm.test_fault=kill-guest-api")
            .boot()?;
        let restarting = vm.wait_for_event("restarting", BOOT_TIMEOUT)?;
        let restarted = vm.wait_for_event("restarted", Duration::from_secs(30))?;
        let (Record::Other { line: before, .. }, Record::Other { line: after, .. }) =
            (&restarting, &restarted)
        else {
            anyhow::bail!("unexpected records {restarting:?} {restarted:?}");
        };
        let before: serde_json::Value = serde_json::from_str(before)?;
        let after: serde_json::Value = serde_json::from_str(after)?;
        ensure!(
            before["service"] == "guest-api" && before["status"] == 137,
            "{before}"
        );
        ensure!(
            before["restarts"] == 1 && before["delay_ms"] == 1000,
            "{before}"
        );
        ensure!(after["service"] == "guest-api", "{after}");
        ensure!(after["pid"] != before["pid"], "same pid: {before} {after}");
        vm.system_powerdown()?;
        vm.wait_for_event("power_off", BOOT_TIMEOUT)?;
        let exit = vm.wait_for_exit(BOOT_TIMEOUT)?;
        ensure!(exit.success(), "QEMU exit {:?}", exit.status);
        Ok(())
    }
}
