//! The end-to-end demo as a test (issues 7 and 10): the sample app pulled from the loopback
//! registry, keys from the test KMS over RA-TLS, the app's page reached through a QEMU port
//! forward, a quote over a fresh challenge fetched from the app and checked by
//! `cvm-measure verify` (platform lines marked SIMULATED, the KMS attestation skipped on
//! request, everything else passing); with the gateway (issue 17): registration, the page
//! through the tunnel, a restarted gateway, the refresher's certificate renewal and its restart
//! by PID 1. Same code
//! as `cargo xtask demo` (`qemu_tests::demo`), here on the test image. About 60-120 s under TCG.
#![cfg(any(feature = "qemu", qemu_testenv, clippy))]

#[cfg(test)]
mod tests {
    use anyhow::{Result, ensure};
    use qemu_tests::CvmSetup;
    use qemu_tests::demo::{DemoOptions, run};
    use qemu_tests::image::workspace_binary;
    use qemu_tests::registry::{RegistryError, work_dir};

    #[test]
    fn demo_app_answers_and_the_checklist_passes() -> Result<()> {
        let setup = CvmSetup::new()?;
        if !std::path::Path::new(qemu_tests::registry::REGISTRY_BIN).exists() {
            eprintln!("SKIP: {}", RegistryError::Missing);
            return Ok(());
        }
        let options = DemoOptions {
            initramfs: setup.image.initramfs.clone(),
            work_dir: work_dir("demo"),
            demo_app: workspace_binary("demo-app", "demo-app", &[])?,
            cvm_measure: workspace_binary("cvm-measure", "cvm-measure", &[])?,
            // The masked WireGuard key, for the scan below (test hook); the refresher renews an
            // 80 s client certificate and exits once, so PID 1 restarts it (test fault).
            cmdline: "cvm.test_dump=gateway-wg-key-masked cvm.test_fault=gateway-refresher".into(),
            // Issue 22: a neighbour filling /run leaves the guest API serving and the log whole.
            fill_run_with: Some(setup.artifacts.busybox.clone()),
            // Issue 17: registration, the page through the tunnel, a restarted gateway, the
            // refresher renewing its certificate and restarted by PID 1.
            gateway: true,
            gateway_refresher_fault: true,
        };
        let report = run(&setup.artifacts, &options)?;
        println!("{}", report.summary());
        let problems = report.problems();
        ensure!(problems.is_empty(), "demo problems: {problems:#?}");
        // The KMS served this app (GetTempCaCert + GetAppKey, both 200).
        ensure!(
            report
                .kms_requests
                .iter()
                .any(|r| r.method == "GetAppKey" && r.status == 200),
            "KMS requests {:?}",
            report.kms_requests
        );
        wireguard_key_is_nowhere(&report)?;
        let _ = std::fs::remove_dir_all(&options.work_dir);
        Ok(())
    }

    /// The secrets scan of the WireGuard private key (issue 17): the key the guest made (from
    /// the masked test dump; its X25519 public key must be the one the gateway registered) is
    /// in no spelling on the console or the results channel; a planted copy is found.
    fn wireguard_key_is_nowhere(report: &qemu_tests::demo::DemoReport) -> Result<()> {
        use anyhow::Context as _;
        let gateway = report.gateway.as_ref().context("no gateway report")?;
        let dumps = qemu_tests::results::raw_records(&report.records, "test_dump");
        let masked = dumps
            .iter()
            .find(|d| d["name"] == "gateway-wg-key-masked")
            .and_then(|d| d["hex"].as_str())
            .context("no gateway-wg-key-masked test dump")?;
        let key = test_gateway::unmask_wg_key(masked).context("masked key is not 32 bytes")?;
        let registered = gateway
            .registrations
            .first()
            .context("no registration")?
            .client_public_key;
        ensure!(
            test_gateway::public_key_of(key) == registered,
            "the dumped key is not the key of the registered public key"
        );
        let mut needles = vec![key.to_vec()];
        needles.extend(
            test_kms::leak_needles(&key)
                .into_iter()
                .map(String::into_bytes),
        );
        for (what, hay) in [
            ("console", report.console.as_bytes()),
            ("results channel", &report.results_raw[..]),
        ] {
            let hits = qemu_tests::matrix::find_needles(hay, &needles);
            ensure!(
                hits.is_empty(),
                "the WireGuard private key is in the {what}: {hits:?}"
            );
        }
        let mut planted = report.console.as_bytes().to_vec();
        let at = planted.len() / 2;
        planted.splice(at..at, needles[1].iter().copied());
        ensure!(
            qemu_tests::matrix::find_needles(&planted, &needles)
                .iter()
                .any(|(_, offset)| *offset == at),
            "the scanner missed a planted key"
        );
        Ok(())
    }
}
