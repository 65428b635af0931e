//! The dstack host API in QEMU (issue 16): the init notifies the test host API
//! (`qemu_tests::host_api`, reached over slirp as `http://10.0.2.2:<port>/api`, a URL only test
//! builds accept) of every stage, its identity and its shutdown. With KMS keys (the test KMS
//! derives the disk key from `[app_id, instance_id]` as dstack's KMS does) and no
//! `cvm.test_disk_key`:
//!
//! 1. the first boot formats the data disk and sends `instance.info`;
//! 2. the second boot's share carries that `.instance_info` (as dstack-vmm writes it): same
//!    instance id, same disk key, the disk opens without a reformat;
//! 3. a boot whose share lacks it (the bug of issue 16) derives a new instance id, so the KMS
//!    gives another disk key and the `disk` stage stops; the host gets that as `boot.error`
//!    with the stage and the exact error chain of the `fatal` record.
#![cfg(any(feature = "qemu", qemu_testenv, clippy))]

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use anyhow::{Context, Result, bail, ensure};
    use qemu_tests::host_api::HostApiHandle;
    use qemu_tests::host_share::{HOST_SHARE_LABEL, ShareFile, build_image, kms_sys_config};
    use qemu_tests::results::{finished_stages, raw_records};
    use qemu_tests::vhost_vsock::VhostVsock;
    use qemu_tests::{CvmSetup, Record, data_disk};
    use sha2::{Digest, Sha256};
    use test_kms::{KmsKeys, Policy};

    /// The backend's `--uds-path` name inside the vsock directory (`VhostVsock::start`).
    const VSOCK_UDS: &str = "vsock.uds";

    const TIMEOUT: Duration = Duration::from_secs(300);

    fn app_compose(key_provider_id: &str) -> Vec<u8> {
        let compose = serde_json::json!({
            "manifest_version": 2,
            "name": "host-api-test",
            "runner": "docker-compose",
            "docker_compose_file": "services: {}\n",
            "kms_enabled": true,
            "gateway_enabled": false,
            "local_key_provider_enabled": false,
            "key_provider_id": key_provider_id,
            "public_logs": true,
            "public_sysinfo": true,
            "allowed_envs": [],
            "no_instance_id": false,
            "secure_time": false,
        });
        serde_json::to_vec_pretty(&compose).unwrap_or_default()
    }

    fn share(dir: &Path, name: &str, files: &[ShareFile]) -> Result<std::path::PathBuf> {
        let image = dir.join(format!("{name}.img"));
        build_image(
            files,
            &[],
            HOST_SHARE_LABEL,
            &dir.join(format!("{name}-staging")),
            &image,
        )?;
        Ok(image)
    }

    /// The guest's memory (the vhost-user backend shares it, so QEMU needs its size twice).
    const MEMORY: &str = "512M";

    /// One boot to power-off, with a fresh vhost-user vsock backend in `vsock_dir` (its
    /// host-side socket prefix is the same every boot, where the test host API listens);
    /// returns the records.
    fn boot(
        setup: &CvmSetup,
        name: &str,
        share: &Path,
        disk: &Path,
        root_file: &Path,
        vsock_dir: &Path,
    ) -> Result<Vec<Record>> {
        let vsock = VhostVsock::start(vsock_dir)?;
        let mut vm = setup.vm_with_share(name, share).with_memory(MEMORY);
        for arg in vsock.qemu_args(MEMORY) {
            vm = vm.with_qemu_arg(&arg);
        }
        let mut vm = vm
            .with_qemu_arg("-drive")
            .with_qemu_arg(&data_disk::drive_arg(disk))
            .with_qemu_arg("-netdev")
            .with_qemu_arg("user,id=n0")
            .with_qemu_arg("-device")
            .with_qemu_arg("virtio-net-pci,netdev=n0")
            .with_cmdline("cvm.on_ready=poweroff")
            .boot()?;
        vm.hand_simulated_root_to(root_file, TIMEOUT)?;
        vm.wait_for_event("power_off", TIMEOUT)?;
        vm.wait_for_exit(TIMEOUT)?;
        Ok(vm.records()?)
    }

    fn one(records: &[Record], event: &str) -> Result<serde_json::Value> {
        let all = raw_records(records, event);
        match all.as_slice() {
            [one] => Ok(one.clone()),
            _ => bail!("expected one {event} record: {all:?}"),
        }
    }

    fn instance_id(records: &[Record]) -> Result<String> {
        Ok(one(records, "measured")?["instance_id"]
            .as_str()
            .context("instance_id")?
            .to_owned())
    }

    /// The notifications of a successful boot, in order: a `boot.progress` per stage from
    /// `measure` on (the URL is known after `host-share`) with `instance.info` right after
    /// `measure`'s, `done`, then `shutdown.progress`.
    fn assert_ok_notifications(api: &HostApiHandle, records: &[Record]) -> Result<()> {
        let got = api.notifications();
        let mut expected: Vec<(String, String)> = Vec::new();
        let stages = finished_stages(records);
        let from = stages
            .iter()
            .position(|s| *s == "measure")
            .context("measure stage")?;
        for stage in &stages[from..] {
            expected.push(("boot.progress".into(), (*stage).into()));
            if *stage == "measure" {
                let info = api.instance_info().context("instance.info")?;
                expected.push(("instance.info".into(), String::from_utf8(info)?));
            }
        }
        expected.push(("boot.progress".into(), "done".into()));
        expected.push(("shutdown.progress".into(), "ready-poweroff".into()));
        ensure!(
            got == expected,
            "notifications:\n{got:#?}\nexpected:\n{expected:#?}"
        );
        ensure!(
            api.received().iter().all(|r| !r.event.is_empty()),
            "a request the host API did not understand: {:?}",
            api.received()
        );
        Ok(())
    }

    #[test]
    fn instance_id_and_disk_survive_a_reboot_through_instance_info() -> Result<()> {
        let setup = CvmSetup::new()?;
        let dir = tempfile::tempdir()?;
        let kms_keys = Arc::new(KmsKeys::generate(&[])?);
        let compose = app_compose(&kms_keys.key_provider_id());
        let compose_hash: [u8; 32] = Sha256::digest(&compose).into();
        let root_file = dir.path().join("sim-root.pem");
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let kms_port = listener.local_addr()?.port();
        let _kms = test_kms::start(
            Arc::clone(&kms_keys),
            Policy::simulated_boot(vec![compose_hash], root_file.clone()),
            listener,
        )?;
        // The real vsock path (issue 16): the guest connects to vsock://2:10000 through
        // vhost-device-vsock, which hands the connection to <uds>_10000 on the host.
        let vsock_dir = dir.path().join("vsock");
        std::fs::create_dir_all(&vsock_dir)?;
        let api = qemu_tests::host_api::start_vsock(&vsock_dir.join(VSOCK_UDS), 10000)?;
        let mut sys_config = kms_sys_config(&[format!("https://10.0.2.2:{kms_port}")], 512 << 20);
        sys_config["host_api_url"] = api.guest_url().into();
        let files = vec![
            ShareFile::new("app-compose.json", compose),
            ShareFile::new(".sys-config.json", serde_json::to_vec(&sys_config)?),
        ];
        let first_share = share(dir.path(), "share-1", &files)?;
        let disk = data_disk::create(&dir.path().join("data.img"), 64)?;

        // 1. First boot: formats the disk with the KMS key of a fresh instance id.
        let records = boot(
            &setup,
            "host-api-1",
            &first_share,
            &disk,
            &root_file,
            &vsock_dir,
        )?;
        ensure!(
            finished_stages(&records).contains(&"ready"),
            "first boot: {records:?}"
        );
        ensure!(one(&records, "disk")?["formatted"] == true);
        let first_id = instance_id(&records)?;
        assert_ok_notifications(&api, &records)?;
        let info_bytes = api.instance_info().context("instance.info")?;
        let info: serde_json::Value = serde_json::from_slice(&info_bytes)?;
        ensure!(info["instance_id"] == first_id.as_str(), "{info}");
        ensure!(
            info["instance_id_seed"]
                .as_str()
                .is_some_and(|s| s.len() == 40),
            "{info}"
        );
        ensure!(info["app_id"] == hex::encode(&compose_hash[..20]), "{info}");

        // 2. The VMM's `.instance_info` in the next share: same instance id, the disk opens.
        api.clear();
        let mut with_info = files.clone();
        with_info.push(ShareFile::new(".instance_info", info_bytes));
        let second_share = share(dir.path(), "share-2", &with_info)?;
        let records = boot(
            &setup,
            "host-api-2",
            &second_share,
            &disk,
            &root_file,
            &vsock_dir,
        )?;
        ensure!(
            finished_stages(&records).contains(&"ready"),
            "second boot: {records:?}"
        );
        ensure!(instance_id(&records)? == first_id, "instance id changed");
        ensure!(
            one(&records, "disk")?["formatted"] == false,
            "the disk was formatted again"
        );
        assert_ok_notifications(&api, &records)?;
        let again: serde_json::Value =
            serde_json::from_slice(&api.instance_info().context("instance.info")?)?;
        ensure!(again == info, "{again} vs {info}");

        // 3. Without `.instance_info` (what every reboot got before): another instance id,
        //    another disk key, the disk stage stops; the host is told why.
        api.clear();
        let after_second = std::fs::read(&disk)?;
        let records = boot(
            &setup,
            "host-api-3",
            &first_share,
            &disk,
            &root_file,
            &vsock_dir,
        )?;
        // No `measured` record (it comes at `system-ready`): the identity is the host's copy.
        let third: serde_json::Value =
            serde_json::from_slice(&api.instance_info().context("instance.info")?)?;
        ensure!(third["instance_id"] != first_id.as_str(), "{third}");
        let fatal = records
            .iter()
            .find_map(|r| match r {
                Record::Fatal { stage, error, .. } => Some((stage.clone(), error.clone())),
                _ => None,
            })
            .context("no fatal record")?;
        ensure!(fatal.0 == "disk", "{fatal:?}");
        let errors = api.payloads("boot.error");
        ensure!(
            errors == vec![format!("disk: {}", fatal.1)],
            "boot.error {errors:?} vs fatal {fatal:?}"
        );
        let got = api.notifications();
        let events: Vec<&str> = got.iter().map(|(e, _)| e.as_str()).collect();
        ensure!(
            events.last() == Some(&"shutdown.progress")
                && got.last().map(|(_, p)| p.as_str()) == Some("fatal"),
            "{got:?}"
        );
        ensure!(
            got.contains(&("boot.progress".into(), "disk".into())),
            "{got:?}"
        );
        ensure!(
            std::fs::read(&disk)? == after_second,
            "the refused key wrote the disk"
        );
        Ok(())
    }
}
