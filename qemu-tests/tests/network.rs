//! Network bring-up in QEMU (issue 5's transport): DHCP from QEMU's user-mode network (slirp)
//! on a virtio-net NIC, and the refusal to boot offline when `kms_urls` needs the network.
#![cfg(any(feature = "qemu", qemu_testenv, clippy))]

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use anyhow::{Result, bail, ensure};
    use qemu_tests::host_share::{HOST_SHARE_LABEL, ShareFile, build_image, sample_files};
    use qemu_tests::results::{finished_stages, raw_records};
    use qemu_tests::{CvmSetup, Record};

    const TIMEOUT: Duration = Duration::from_secs(120);

    /// With a NIC the workloads stage would pull the sample share's (unreachable) image: this
    /// test's share has no services.
    #[test]
    fn dhcp_lease_from_slirp() -> Result<()> {
        let setup = CvmSetup::new()?;
        let dir = tempfile::tempdir()?;
        let mut files = sample_files()?;
        for file in &mut files {
            if file.name == "app-compose.json" {
                let mut compose: serde_json::Value = serde_json::from_slice(&file.contents)?;
                compose["docker_compose_file"] = "services: {}\n".into();
                *file = ShareFile::new("app-compose.json", serde_json::to_vec(&compose)?);
            }
        }
        let image = dir.path().join("share.img");
        build_image(&files, &[], HOST_SHARE_LABEL, &dir.path().join("s"), &image)?;
        let mut vm = setup
            .vm_with_share("network-dhcp", &image)
            .with_qemu_arg("-netdev")
            .with_qemu_arg("user,id=n0")
            .with_qemu_arg("-device")
            .with_qemu_arg("virtio-net-pci,netdev=n0")
            .with_cmdline("cvm.on_ready=poweroff")
            .boot()?;
        vm.wait_for_event("power_off", TIMEOUT)?;
        let records = vm.records()?;
        let network = raw_records(&records, "network");
        let [lease] = network.as_slice() else {
            bail!("expected one network record, got {network:?}");
        };
        // slirp's defaults: 10.0.2.15/24, gateway 10.0.2.2, DNS 10.0.2.3.
        ensure!(lease["interface"] == "eth0", "{lease}");
        ensure!(lease["address"] == "10.0.2.15/24", "{lease}");
        ensure!(lease["gateway"] == "10.0.2.2", "{lease}");
        ensure!(lease["dns"] == serde_json::json!(["10.0.2.3"]), "{lease}");
        ensure!(finished_stages(&records).contains(&"ready"));
        Ok(())
    }

    #[test]
    fn no_nic_without_kms_is_offline_and_fine() -> Result<()> {
        let setup = CvmSetup::new()?;
        let mut vm = setup
            .vm("network-none")
            .with_cmdline("cvm.on_ready=poweroff")
            .boot()?;
        vm.wait_for_event("power_off", TIMEOUT)?;
        let records = vm.records()?;
        let network = raw_records(&records, "network");
        ensure!(
            network.len() == 1 && network[0]["interface"] == "none",
            "{network:?}"
        );
        ensure!(finished_stages(&records).contains(&"ready"));
        Ok(())
    }

    #[test]
    fn kms_urls_without_a_nic_stop_the_boot() -> Result<()> {
        let setup = CvmSetup::new()?;
        let dir = tempfile::tempdir()?;
        let mut files = sample_files()?;
        for file in &mut files {
            if file.name == ".sys-config.json" {
                let mut config: serde_json::Value = serde_json::from_slice(&file.contents)?;
                config["kms_urls"] = serde_json::json!(["https://10.0.2.2:12001"]);
                *file = ShareFile::new(".sys-config.json", serde_json::to_vec(&config)?);
            }
        }
        let image = dir.path().join("share.img");
        build_image(&files, &[], HOST_SHARE_LABEL, &dir.path().join("s"), &image)?;
        let mut vm = setup
            .vm_with_share("network-required", &image)
            .with_cmdline("cvm.on_ready=poweroff")
            .boot()?;
        let fatal = vm.wait_for_event("fatal", TIMEOUT)?;
        let Record::Fatal { stage, error, .. } = &fatal else {
            bail!("not fatal: {fatal:?}");
        };
        ensure!(stage == "network", "{stage}: {error}");
        ensure!(error.contains("kms_urls"), "{error}");
        vm.wait_for_event("power_off", TIMEOUT)?;
        let records = vm.records()?;
        ensure!(!finished_stages(&records).contains(&"system-ready"));
        Ok(())
    }
}
