//! cvm-init boots in QEMU: stages in order, `ready`, orderly power-off, reaping, and one boot
//! through OVMF (UEFI).
#![cfg(any(feature = "qemu", qemu_testenv, clippy))]

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use anyhow::{Context, Result, ensure};
    use qemu_tests::results::{events, finished_stages, reason};
    use qemu_tests::{CvmSetup, Record, RunningVm};

    const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
    const OVMF_TIMEOUT: Duration = Duration::from_secs(300);
    /// Stages of the walking skeleton, in order (`init_core::plan::BOOT_PLAN`); later issues
    /// insert more (measure, keys, disk, gpu, workloads) between `results` and `ready`.
    const STAGES: [&str; 6] = [
        "early",
        "cmdline",
        "mount",
        "modules",
        "mount-late",
        "results",
    ];

    /// Checks the records of a boot that reached `ready` and then powered off for `why`.
    fn check_clean_run(vm: &mut RunningVm, why: &str) -> Result<Vec<Record>> {
        let records = vm.records()?;
        let names = events(&records);
        ensure!(
            names.first() == Some(&"boot"),
            "first record is not boot: {names:?}"
        );
        ensure!(!names.contains(&"fatal"), "fatal record: {records:?}");
        let finished = finished_stages(&records);
        ensure!(
            finished.get(..STAGES.len()) == Some(&STAGES[..]),
            "stages finished {finished:?}, expected {STAGES:?} first"
        );
        // Every stage starts before it finishes, and mono_us never goes backwards.
        for stage in &finished {
            let started = records
                .iter()
                .position(|r| matches!(r, Record::StageStarted { stage: s, .. } if s == stage));
            let done = records
                .iter()
                .position(|r| matches!(r, Record::StageFinished { stage: s, .. } if s == stage));
            ensure!(
                started < done && started.is_some(),
                "stage {stage} order: {names:?}"
            );
        }
        let stamps: Vec<u64> = records.iter().filter_map(Record::mono_us).collect();
        ensure!(
            stamps.windows(2).all(|w| w[0] <= w[1]),
            "mono_us not monotonic: {stamps:?}"
        );
        ensure!(
            names.ends_with(&["ready", "shutdown", "reaped", "power_off"]),
            "records do not end with ready, shutdown, reaped, power_off: {names:?}"
        );
        let shutdown = records.iter().find_map(|r| match r {
            Record::Shutdown { reason, .. } => Some(reason.as_str()),
            _ => None,
        });
        ensure!(
            shutdown == Some(why),
            "shutdown reason {shutdown:?}, expected {why}"
        );
        let exit = vm.wait_for_exit(BOOT_TIMEOUT)?;
        ensure!(exit.success(), "QEMU exit status {:?}", exit.status);
        ensure!(
            vm.console_shows_power_off(),
            "console has no power-off message"
        );
        ensure!(!vm.console_shows_panic(), "kernel panic on the console");
        Ok(records)
    }

    fn reaped(records: &[Record]) -> Option<(u64, u64)> {
        records.iter().find_map(|r| match r {
            Record::Reaped {
                zombies_left,
                children_stopped,
                ..
            } => Some((*zombies_left, *children_stopped)),
            _ => None,
        })
    }

    /// (a) The init runs its stages, reports `ready`, and with `cvm.on_ready=poweroff` powers
    /// off; QEMU exits 0 on its own.
    #[test]
    fn boots_to_ready_and_powers_off() -> Result<()> {
        let setup = CvmSetup::new()?;
        let mut vm = setup
            .vm("boot-poweroff")
            .with_cmdline("cvm.on_ready=poweroff")
            .boot()?;
        vm.wait_for_event("ready", BOOT_TIMEOUT)?;
        vm.wait_for_exit(BOOT_TIMEOUT)?;
        let records = check_clean_run(&mut vm, reason::READY_POWEROFF)?;
        // For boot-time comparisons (e.g. the early stage's move of the root to a tmpfs).
        if let Some(Record::Ready { mono_us }) =
            records.iter().find(|r| matches!(r, Record::Ready { .. }))
        {
            eprintln!("ready at {mono_us} us guest uptime");
        }
        for line in vm
            .console()
            .lines()
            .filter(|l| l.contains("early: root moved"))
        {
            eprintln!("{line}");
        }
        let (zombies_left, _) = reaped(&records).context("no reaped record")?;
        ensure!(zombies_left == 0, "zombies left: {zombies_left}");
        ensure!(
            vm.console().contains("cvm-init: ready"),
            "no ready line on the console"
        );
        Ok(())
    }

    /// (f) Orphans re-parented to PID 1 are reaped: none is left at power-off.
    #[test]
    fn orphans_are_reaped_before_power_off() -> Result<()> {
        let setup = CvmSetup::new()?;
        let mut vm = setup
            .vm("orphans-poweroff")
            .with_cmdline("cvm.on_ready=poweroff cvm.test_orphans=5")
            .boot()?;
        vm.wait_for_exit(BOOT_TIMEOUT)?;
        let records = check_clean_run(&mut vm, reason::READY_POWEROFF)?;
        let (zombies_left, _) = reaped(&records).context("no reaped record")?;
        ensure!(zombies_left == 0, "zombies left: {zombies_left}");
        Ok(())
    }

    /// (e) The ACPI power button (`system_powerdown`) starts an orderly shutdown.
    #[test]
    fn power_button_shuts_down() -> Result<()> {
        let setup = CvmSetup::new()?;
        let mut vm = setup
            .vm("power-button")
            .with_cmdline("cvm.on_ready=wait")
            .boot()?;
        vm.wait_for_event("ready", BOOT_TIMEOUT)?;
        vm.system_powerdown()?;
        vm.wait_for_event("power_off", BOOT_TIMEOUT)?;
        vm.wait_for_exit(BOOT_TIMEOUT)?;
        check_clean_run(&mut vm, reason::POWER_BUTTON)?;
        Ok(())
    }

    /// (e) ctrl-alt-delete reaches PID 1 as SIGINT and starts an orderly shutdown.
    #[test]
    fn ctrl_alt_delete_shuts_down() -> Result<()> {
        let setup = CvmSetup::new()?;
        let mut vm = setup
            .vm("ctrl-alt-del")
            .with_cmdline("cvm.on_ready=wait")
            .boot()?;
        vm.wait_for_event("ready", BOOT_TIMEOUT)?;
        vm.send_ctrl_alt_delete()?;
        vm.wait_for_event("power_off", BOOT_TIMEOUT)?;
        vm.wait_for_exit(BOOT_TIMEOUT)?;
        check_clean_run(&mut vm, reason::SIGNAL_SIGINT)?;
        Ok(())
    }

    /// (f) While the init waits, orphans that exit are reaped at once: at the shutdown the only
    /// process left to stop is the guest API server, and there is no zombie.
    #[test]
    fn orphans_are_reaped_while_waiting() -> Result<()> {
        let setup = CvmSetup::new()?;
        let mut vm = setup
            .vm("orphans-wait")
            .with_cmdline("cvm.on_ready=wait cvm.test_orphans=5")
            .boot()?;
        vm.wait_for_event("ready", BOOT_TIMEOUT)?;
        // The orphans live 300 ms (guest time); give TCG ample time.
        std::thread::sleep(Duration::from_secs(3));
        vm.system_powerdown()?;
        vm.wait_for_event("power_off", BOOT_TIMEOUT)?;
        vm.wait_for_exit(BOOT_TIMEOUT)?;
        let records = check_clean_run(&mut vm, reason::POWER_BUTTON)?;
        let reaped = reaped(&records).context("no reaped record")?;
        ensure!(
            reaped == (0, 1),
            "(zombies_left, children_stopped) = {reaped:?}, expected (0, 1): the guest API only"
        );
        Ok(())
    }

    /// (g) The firmware path: direct kernel boot through OVMF (UEFI) reaches `ready`.
    #[test]
    fn boots_through_ovmf() -> Result<()> {
        let setup = CvmSetup::new()?;
        let mut vm = setup
            .vm("ovmf")
            .with_ovmf(true)
            .with_cmdline("cvm.on_ready=poweroff")
            .boot()?;
        vm.wait_for_event("ready", OVMF_TIMEOUT)?;
        vm.wait_for_exit(OVMF_TIMEOUT)?;
        check_clean_run(&mut vm, reason::READY_POWEROFF)?;
        ensure!(
            vm.console().contains("EFI"),
            "no sign of EFI on the console"
        );
        Ok(())
    }
}
