//! Measured boot in QEMU (issue 3): the init reads the host share from a `DSTACKSHR` disk,
//! extends the dstack RTMR3 events through the (insecure, simulated) TEE, and checks a fresh
//! quote carries the RTMR3 its log replays to. Bad host shares stop the boot before any later
//! stage and power off.
#![cfg(any(feature = "qemu", qemu_testenv, clippy))]

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use anyhow::{Context, Result, bail, ensure};
    use measure::runtime_event::{decode_log, replay_rtmr3};
    use qemu_tests::host_share::{HOST_SHARE_LABEL, ShareFile, build_image, sample_files};
    use qemu_tests::results::{events, finished_stages, raw_records};
    use qemu_tests::{CvmSetup, Record};
    use sha2::{Digest, Sha256};

    const TIMEOUT: Duration = Duration::from_secs(120);

    fn field<'a>(value: &'a serde_json::Value, key: &str) -> Result<&'a str> {
        value
            .get(key)
            .and_then(serde_json::Value::as_str)
            .with_context(|| format!("record has no string `{key}`: {value}"))
    }

    #[test]
    fn host_share_identity_and_rtmr3_replay() -> Result<()> {
        let setup = CvmSetup::new()?;
        let vm = setup
            .vm("measure")
            .with_cmdline("cvm.on_ready=poweroff cvm.test_dump=runtime-event-log")
            .boot()?;
        assert_measured_boot(vm, "disk")
    }

    /// The sample share as a host directory exported over virtio-9p (tag `host-shared`), as a
    /// dstack VMM provides it; the generic-flavour kernel, which has 9p.
    #[test]
    fn host_share_over_9p_identity_and_rtmr3_replay() -> Result<()> {
        let setup = CvmSetup::new_9p()?;
        let dir = tempfile::tempdir()?;
        for file in sample_files()? {
            std::fs::write(dir.path().join(&file.name), &file.contents)?;
        }
        let vm = setup
            .vm_with_9p_share("measure-9p", dir.path())
            .with_cmdline("cvm.on_ready=poweroff cvm.test_dump=runtime-event-log")
            .boot()?;
        assert_measured_boot(vm, "9p")
    }

    /// A symlink in a 9p share (9p shows it as a symlink, unlike a host-side bind) is refused.
    #[test]
    fn symlink_in_9p_share_is_fatal() -> Result<()> {
        let setup = CvmSetup::new_9p()?;
        let dir = tempfile::tempdir()?;
        let outside = tempfile::tempdir()?;
        for file in sample_files()? {
            let target = if file.name == "app-compose.json" {
                outside.path().join(&file.name)
            } else {
                dir.path().join(&file.name)
            };
            std::fs::write(target, &file.contents)?;
        }
        std::os::unix::fs::symlink(
            outside.path().join("app-compose.json"),
            dir.path().join("app-compose.json"),
        )?;
        let mut vm = setup
            .vm_with_9p_share("symlink-9p", dir.path())
            .with_cmdline("cvm.on_ready=poweroff")
            .boot()?;
        let fatal = vm.wait_for_event("fatal", TIMEOUT)?;
        let Record::Fatal { stage, error, .. } = &fatal else {
            bail!("not a fatal record: {fatal:?}");
        };
        ensure!(stage == "host-share", "failed in {stage}: {error}");
        ensure!(error.contains("app-compose.json"), "{error}");
        vm.wait_for_event("power_off", TIMEOUT)?;
        let records = vm.records()?;
        ensure!(
            !finished_stages(&records).contains(&"measure"),
            "a stage after host-share ran"
        );
        Ok(())
    }

    /// Waits for the boot of `vm` to finish and checks identity, RTMR3 replay, the quote and
    /// that the share came from `source` (`disk` or `9p`).
    fn assert_measured_boot(mut vm: qemu_tests::RunningVm, source: &str) -> Result<()> {
        vm.wait_for_event("power_off", TIMEOUT)?;
        let exit = vm.wait_for_exit(TIMEOUT)?;
        ensure!(exit.success(), "QEMU exit {:?}", exit.status);
        let records = vm.records()?;
        let mounted = match source {
            "9p" => "host-share: mounted NineP",
            _ => "host-share: mounted Disk",
        };
        ensure!(
            vm.console().contains(mounted),
            "console lacks {mounted:?}: the share did not come from {source}"
        );
        let finished = finished_stages(&records);
        for stage in [
            "host-share",
            "measure",
            "system-ready",
            "guest-api",
            "ready",
        ] {
            ensure!(
                finished.contains(&stage),
                "stage {stage} missing: {finished:?}"
            );
        }

        let measured = raw_records(&records, "measured");
        let [measured] = measured.as_slice() else {
            bail!("expected one measured record, got {measured:?}");
        };
        let compose = sample_files()?
            .into_iter()
            .find(|f| f.name == "app-compose.json")
            .context("sample app-compose.json")?;
        let compose_hash = hex::encode(Sha256::digest(&compose.contents));
        ensure!(
            field(measured, "compose_hash")? == compose_hash,
            "{measured}"
        );
        // No pinned app id in the share: app-id is the first 20 bytes of compose-hash.
        ensure!(
            field(measured, "app_id")? == &compose_hash[..40],
            "{measured}"
        );
        ensure!(
            field(measured, "tee")? == "insecure-simulated",
            "{measured}"
        );
        let rtmr3 = field(measured, "rtmr3")?;
        ensure!(
            field(measured, "quote_rtmr3")? == rtmr3,
            "quote RTMR3 differs: {measured}"
        );

        // The log the init wrote replays to the same RTMR3, in dstack's event order, and starts
        // with the simulator's marker so no verifier can accept it.
        let dumps = raw_records(&records, "test_dump");
        let log_hex = dumps
            .iter()
            .find(|d| {
                d.get("name").and_then(serde_json::Value::as_str) == Some("runtime-event-log")
            })
            .context("no runtime-event-log dump")?;
        let log_text = String::from_utf8(hex::decode(field(log_hex, "hex")?)?)?;
        let decoded = decode_log(&log_text)?;
        let events_in_log: Vec<_> = decoded.iter().map(|l| l.event.clone()).collect();
        let replayed = replay_rtmr3(events_in_log.iter());
        ensure!(
            replayed.to_string() == rtmr3,
            "log replays to {replayed}, init reported {rtmr3}"
        );
        let names: Vec<&str> = events_in_log.iter().map(|e| e.name.as_str()).collect();
        ensure!(
            names
                == [
                    "insecure-simulated-tee",
                    "insecure-test-build",
                    "system-preparing",
                    "app-id",
                    "compose-hash",
                    "gpu-policy-hash",
                    "instance-id",
                    "boot-mr-done",
                    "encrypted-env",
                    "key-provider",
                    "storage-fs",
                    "system-ready"
                ],
            "event order {names:?}"
        );
        let compose_event = events_in_log
            .iter()
            .find(|e| e.name == "compose-hash")
            .context("compose-hash event")?;
        ensure!(hex::encode(&compose_event.payload) == compose_hash);
        Ok(())
    }

    /// Boots with `files` (+ symlinks) as the share and expects a fatal error in `stage` whose
    /// message contains every needle, no later stage, and a power-off.
    fn expect_share_failure(
        name: &str,
        files: &[ShareFile],
        symlinks: &[(&str, &str)],
        stage: &str,
        needles: &[&str],
    ) -> Result<()> {
        let setup = CvmSetup::new()?;
        let dir = tempfile::tempdir()?;
        let image = dir.path().join("share.img");
        build_image(
            files,
            symlinks,
            HOST_SHARE_LABEL,
            &dir.path().join("staging"),
            &image,
        )?;
        let mut vm = setup
            .vm_with_share(name, &image)
            .with_cmdline("cvm.on_ready=poweroff")
            .boot()?;
        let fatal = vm.wait_for_event("fatal", TIMEOUT)?;
        let Record::Fatal {
            stage: failed,
            error,
            ..
        } = &fatal
        else {
            bail!("not a fatal record: {fatal:?}");
        };
        ensure!(
            failed == stage,
            "failed in {failed}, expected {stage}: {error}"
        );
        for needle in needles {
            ensure!(error.contains(needle), "error {error:?} lacks {needle:?}");
        }
        vm.wait_for_event("power_off", TIMEOUT)?;
        let exit = vm.wait_for_exit(TIMEOUT)?;
        ensure!(exit.success(), "QEMU exit {:?}", exit.status);
        let records = vm.records()?;
        let finished = finished_stages(&records);
        ensure!(
            !finished.contains(&"measure") && !finished.contains(&"ready"),
            "{finished:?}"
        );
        ensure!(
            !events(&records).contains(&"ready"),
            "ready after a fatal error"
        );
        ensure!(
            vm.console().contains(&format!("fatal: {stage}:")),
            "console lacks the cause"
        );
        Ok(())
    }

    fn sample_without(name: &str) -> Result<Vec<ShareFile>> {
        Ok(sample_files()?
            .into_iter()
            .filter(|f| f.name != name)
            .collect())
    }

    #[test]
    fn missing_app_compose_is_fatal() -> Result<()> {
        expect_share_failure(
            "share-missing",
            &sample_without("app-compose.json")?,
            &[],
            "host-share",
            &["app-compose.json"],
        )
    }

    #[test]
    fn symlinked_app_compose_is_fatal() -> Result<()> {
        let mut files = sample_without("app-compose.json")?;
        files.push(ShareFile::new("real.json", b"{}".to_vec()));
        expect_share_failure(
            "share-symlink",
            &files,
            &[("app-compose.json", "real.json")],
            "host-share",
            &["app-compose.json"],
        )
    }

    #[test]
    fn malformed_app_compose_is_fatal() -> Result<()> {
        let mut files = sample_without("app-compose.json")?;
        files.push(ShareFile::new(
            "app-compose.json",
            b"{\"manifest_version\": 2, \"name\": ".to_vec(),
        ));
        expect_share_failure(
            "share-malformed",
            &files,
            &[],
            "host-share",
            &["app-compose"],
        )
    }

    #[test]
    fn oversized_sys_config_is_fatal() -> Result<()> {
        // .sys-config.json is capped at 32 KiB, as in dstack.
        let mut files = sample_without(".sys-config.json")?;
        files.push(ShareFile::new(
            ".sys-config.json",
            vec![b' '; 32 * 1024 + 1],
        ));
        expect_share_failure(
            "share-oversized",
            &files,
            &[],
            "host-share",
            &[".sys-config.json"],
        )
    }
}
