//! Self-tests of the harness against the busybox baseline image (no cvm-init needed): console
//! capture, exit detection, the results port plumbing, overlays and the monitor.
#![cfg(any(feature = "qemu", qemu_testenv, clippy))]

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use anyhow::Result;
    use nix::errno::Errno;
    use nix::sys::signal::killpg;
    use nix::unistd::Pid;
    use qemu_tests::image::{READY_MARKER, write_overlay};
    use qemu_tests::{Artifacts, Record, TestVm, VmError, baseline_image};

    const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

    #[test]
    fn busybox_baseline_boots_and_powers_off() -> Result<()> {
        let artifacts = Artifacts::fetch()?;
        let image = baseline_image(&artifacts)?;
        let mut vm = TestVm::new(&artifacts)
            .with_name("baseline")
            .with_initrd(&image)
            .boot()?;
        vm.wait_for_console(READY_MARKER, BOOT_TIMEOUT)?;
        let exit = vm.wait_for_exit(BOOT_TIMEOUT)?;
        assert!(exit.success(), "QEMU exit status {:?}", exit.status);
        assert!(vm.console_shows_power_off(), "no power-off message");
        assert!(!vm.console_shows_panic());
        Ok(())
    }

    /// A busybox /init that finds the results port through sysfs, writes two records and waits.
    const RESULTS_INIT: &str = r#"#!/bin/busybox sh
    bb=/bin/busybox
    $bb mount -t proc proc /proc
    $bb mount -t sysfs sysfs /sys
    $bb mount -t devtmpfs devtmpfs /dev
    while read -r module; do [ -n "$module" ] && $bb insmod "$module"; done < /etc/cvm/modules.load
    for name in /sys/class/virtio-ports/*/name; do
        if [ "$($bb cat "$name")" = cvm.results ]; then
            port=/dev/$($bb basename "$($bb dirname "$name")")
        fi
    done
    echo '{"event":"boot","version":"busybox","mono_us":1}' > "$port"
    echo '{"event":"ready","mono_us":2}' > "$port"
    echo "harness: waiting"
    while true; do $bb sleep 1; done
    "#;

    #[test]
    fn results_port_reaches_the_reader_and_drop_kills_qemu() -> Result<()> {
        let artifacts = Artifacts::fetch()?;
        let image = baseline_image(&artifacts)?;
        let dir = tempfile::tempdir()?;
        let overlay = write_overlay(
            dir.path(),
            "overlay.cpio",
            &[("/init", RESULTS_INIT.as_bytes(), 0o755)],
        )?;
        let mut vm = TestVm::new(&artifacts)
            .with_name("results")
            .with_initrd(&image)
            .with_overlay(&overlay)
            .boot()?;
        let ready = vm.wait_for_event("ready", BOOT_TIMEOUT)?;
        assert_eq!(ready, Record::Ready { mono_us: 2 });
        assert_eq!(
            vm.records()?[0],
            Record::Boot {
                version: "busybox".into(),
                mono_us: 1
            }
        );
        // The monitor answers.
        let status = vm.monitor("info status")?;
        assert!(status.contains("running"), "{status}");
        // Still running: a bounded wait for exit must fail rather than hang.
        let early = vm.wait_for_exit(Duration::from_millis(200));
        assert!(matches!(early, Err(VmError::Timeout { .. })), "{early:?}");
        vm.kill()?;
        assert!(vm.try_exit()?.is_some());
        Ok(())
    }

    #[test]
    fn drop_kills_the_process_group() -> Result<()> {
        let artifacts = Artifacts::fetch()?;
        let image = baseline_image(&artifacts)?;
        let dir = tempfile::tempdir()?;
        let overlay = write_overlay(
            dir.path(),
            "overlay.cpio",
            &[("/init", RESULTS_INIT.as_bytes(), 0o755)],
        )?;
        let mut vm = TestVm::new(&artifacts)
            .with_name("drop")
            .with_initrd(&image)
            .with_overlay(&overlay)
            .boot()?;
        vm.wait_for_event("ready", BOOT_TIMEOUT)?;
        let group = Pid::from_raw(vm.process_group());
        assert_eq!(killpg(group, None), Ok(()), "QEMU's group is not running");
        drop(vm);
        assert_eq!(
            killpg(group, None),
            Err(Errno::ESRCH),
            "QEMU survived the drop"
        );
        Ok(())
    }
}
