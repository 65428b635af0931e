//! End-to-end tests of `cvm-measure gpu` on the NVIDIA vectors in `measurements/gpu/testdata`.

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::process::{Command, Output};

    const NONCE_545: &str = "4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e";
    const T_2024_06: &str = "1717200000";

    fn testdata(name: &str) -> String {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../gpu/testdata")
            .join(name)
            .display()
            .to_string()
    }

    fn run(args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cvm-measure"))
            .arg("gpu")
            .args(args)
            .output()
            .unwrap()
    }

    fn base(report_dir: &str) -> Vec<String> {
        vec![
            "--report".into(),
            testdata(&format!("{report_dir}/attestation_report.bin")),
            "--cert-chain".into(),
            testdata(&format!("{report_dir}/cert_chain.pem")),
        ]
    }

    fn args_545(vbios: &str, extra: &[&str]) -> Vec<String> {
        let mut args = base("hopper_2023_545");
        args.extend(
            [
                "--nonce",
                NONCE_545,
                "--driver-rim",
                &testdata("hopper_2023_545/driver_rim_GH100_545.00_test.swidtag"),
                "--vbios-rim",
                &testdata(vbios),
                "--now",
                T_2024_06,
            ]
            .map(String::from),
        );
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    fn strs(args: &[String]) -> Vec<&str> {
        args.iter().map(String::as_str).collect()
    }

    const VBIOS_TEST: &str = "hopper_2023_545/vbios_rim_1010_0200_882_96005E0001_test.swidtag";
    const VBIOS_PROD: &str = "hopper_2023_545/vbios_rim_1010_0200_882_96005E0001_PROD.swidtag";

    #[test]
    fn passing_vector_exits_zero_and_shows_claims() {
        let out = run(&strs(&args_545(
            VBIOS_TEST,
            &["--ocsp", "skip", "--cc-state", "2,1,0,0"],
        )));
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "{stdout}");
        assert!(
            stdout.contains("driver 545.00 / VBIOS 96.00.5E.00.01"),
            "{stdout}"
        );
        assert!(stdout.contains("OCSP: Skipped"), "{stdout}");
        assert!(stdout.contains("gate: Ready"), "{stdout}");
        assert!(stdout.ends_with("✓ PASS\n"), "{stdout}");
    }

    #[test]
    fn prod_vbios_rim_fails_with_json_codes() {
        let out = run(&strs(&args_545(VBIOS_PROD, &["--ocsp", "skip", "--json"])));
        assert_eq!(out.status.code(), Some(1));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let failures = json["gpus"][0]["failures"].as_array().unwrap();
        let codes: Vec<&str> = failures
            .iter()
            .map(|f| f["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, vec!["CompareMeasurement"; 4]);
        assert_eq!(json["gpus"][0]["claims"]["measurement_result"], "mismatch");
        assert_eq!(json["passed"], false);
    }

    #[test]
    fn ocsp_defaults_to_require_and_fails_offline() {
        let out = run(&strs(&args_545(VBIOS_TEST, &["--json"])));
        assert_eq!(out.status.code(), Some(1));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["gpus"][0]["failures"][0]["code"], "CheckRevocation");
        assert_eq!(json["gpus"][0]["claims"]["ocsp"], "unavailable");
    }

    #[test]
    fn cc_off_closes_the_gate() {
        let out = run(&strs(&args_545(
            VBIOS_TEST,
            &["--ocsp", "skip", "--cc-state", "2,0,0,0"],
        )));
        assert_eq!(out.status.code(), Some(1));
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(stdout.contains("  ✓ evidence verified"), "{stdout}");
        assert!(
            stdout.contains("confidential computing is off on the GPUs (ccFeature 0)"),
            "{stdout}"
        );
    }

    #[test]
    fn rim_dir_bundle_is_looked_up_by_rim_id() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            testdata("hopper_2023_545/driver_rim_GH100_545.00_test.swidtag"),
            dir.path().join("NV_GPU_DRIVER_GH100_545.00.xml"),
        )
        .unwrap();
        std::fs::copy(
            testdata(VBIOS_TEST),
            dir.path()
                .join("NV_GPU_VBIOS_1010_0200_882_96005E0001.swidtag"),
        )
        .unwrap();
        let mut args = base("hopper_2023_545");
        let rim_dir = dir.path().display().to_string();
        args.extend(
            [
                "--nonce",
                NONCE_545,
                "--rim-dir",
                &rim_dir,
                "--now",
                T_2024_06,
                "--ocsp",
                "skip",
            ]
            .map(String::from),
        );
        let out = run(&strs(&args));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    #[test]
    fn wrong_nonce_fails() {
        let mut args = args_545(VBIOS_TEST, &["--ocsp", "skip", "--json"]);
        let at = args.iter().position(|a| a == NONCE_545).unwrap();
        args[at] = "00".repeat(32);
        let out = run(&strs(&args));
        assert_eq!(out.status.code(), Some(1));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["gpus"][0]["failures"][0]["code"], "CheckNonce");
    }

    // ---- NVSwitch (LS10) evidence and PPCIe sets

    const NONCE_931: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";
    /// 2026-06-01: inside the switch RIM signer window.
    const T_2026_06: &str = "1780272000";
    /// 2026-01-01: inside the window of the signer of the tampered `_invalid_signature` RIM.
    const T_2026_01: &str = "1767225600";
    const SWITCH_JSON: &str = "nvat_serialized_evidence/switch_evidence_ls10.json";
    const SWITCH_RIM: &str = "nvat_rims/NV_SWITCH_BIOS_5612_0002_890_9610550001.xml";
    const SWITCH_RIM_BAD: &str =
        "nvat_rims/NV_SWITCH_BIOS_5612_0002_890_9610550001_invalid_signature.xml";

    fn switch_args(evidence: &str, rim: &str, now: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "--switch-evidence",
            evidence,
            "--switch-rim",
            &testdata(rim),
            "--nonce",
            NONCE_931,
            "--ocsp",
            "skip",
            "--now",
            now,
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    /// The switch evidence file with `edit` applied to its raw report, in a temporary file.
    fn tampered_switch(dir: &tempfile::TempDir, edit: impl Fn(&mut Vec<u8>)) -> String {
        let bytes = std::fs::read(testdata(SWITCH_JSON)).unwrap();
        let entry = nv_verify::evidence::parse_nvat_json(&bytes)
            .unwrap()
            .remove(0);
        let mut report = entry.evidence.report.clone();
        edit(&mut report);
        let tampered = nv_verify::evidence::SerializedEvidence::new(
            "LS10",
            &entry.nonce,
            &report,
            &entry.evidence.cert_chain,
        );
        let path = dir.path().join("switch.json");
        std::fs::write(&path, serde_json::to_vec(&[tampered]).unwrap()).unwrap();
        path.display().to_string()
    }

    #[test]
    fn switch_evidence_with_its_bios_rim_exits_zero() {
        let out = run(&strs(&switch_args(
            &testdata(SWITCH_JSON),
            SWITCH_RIM,
            T_2026_06,
            &[],
        )));
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "{stdout}");
        assert!(stdout.contains("NVSwitch 0:"), "{stdout}");
        assert!(
            stdout.contains(
                "BIOS 96.10.55.00.01 / 31 measurement blocks / DEVICE_PDI 203eb31ad9ed0008"
            ),
            "{stdout}"
        );
        assert!(
            stdout.contains(
                "switch BIOS RIM NV_SWITCH_BIOS_5612_0002_890_9610550001: found yes / signature \
                 yes / chain Valid / version match yes / 31 active"
            ),
            "{stdout}"
        );
        assert!(stdout.contains("  ✓ evidence verified"), "{stdout}");
        assert!(!stdout.contains("PPCIe topology"), "{stdout}");
        assert!(stdout.ends_with("✓ PASS\n"), "{stdout}");
    }

    #[test]
    fn ls10_entries_of_an_evidence_file_are_switches_and_the_bundle_has_their_rim() {
        let out = run(&[
            "--evidence",
            &testdata("nvat_serialized_evidence/multi_switch_ls10.json"),
            "--rim-dir",
            &testdata("nvat_rims"),
            "--ocsp",
            "skip",
            "--now",
            T_2026_06,
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["gpus"].as_array().unwrap().len(), 0);
        let switches = json["switches"].as_array().unwrap();
        assert_eq!(switches.len(), 4);
        for switch in switches {
            assert_eq!(switch["claims"]["measurement_result"], "success");
            assert_eq!(switch["failures"].as_array().unwrap().len(), 0);
        }
        assert_eq!(json["passed"], true);
    }

    #[test]
    fn tampered_switch_rim_exits_non_zero_with_the_reason() {
        let out = run(&strs(&switch_args(
            &testdata(SWITCH_JSON),
            SWITCH_RIM_BAD,
            T_2026_01,
            &[],
        )));
        assert_eq!(out.status.code(), Some(1));
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            stdout.contains(
                "[VerifyRim] switch BIOS RIM NV_SWITCH_BIOS_5612_0002_890_9610550001: document \
                 digest does not match the signed DigestValue"
            ),
            "{stdout}"
        );
        assert!(stdout.ends_with("✗ FAIL\n"), "{stdout}");
    }

    #[test]
    fn invalid_switch_signature_exits_non_zero_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = tampered_switch(&dir, |report| {
            let last = report.len() - 1;
            report[last] ^= 0x01;
        });
        let out = run(&strs(&switch_args(
            &path,
            SWITCH_RIM,
            T_2026_06,
            &["--json"],
        )));
        assert_eq!(out.status.code(), Some(1));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let failures = json["switches"][0]["failures"].as_array().unwrap();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0]["code"], "VerifyReportSignature");
        assert_eq!(
            failures[0]["message"],
            "report signature does not verify under the attestation key"
        );
    }

    #[test]
    fn tampered_switch_measurement_names_the_index() {
        let dir = tempfile::tempdir().unwrap();
        // SPDM block 3 (RIM index 2): record at 37 + 8, 55 bytes a block, value after 7.
        let path = tampered_switch(&dir, |report| report[37 + 8 + 2 * 55 + 7] ^= 0xff);
        let out = run(&strs(&switch_args(&path, SWITCH_RIM, T_2026_06, &[])));
        assert_eq!(out.status.code(), Some(1));
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(stdout.contains("[VerifyReportSignature]"), "{stdout}");
        assert!(
            stdout.contains("[CompareMeasurement] switch BIOS RIM index 2: runtime value"),
            "{stdout}"
        );
        assert!(stdout.contains("measres Mismatch"), "{stdout}");
    }

    #[test]
    fn switch_evidence_with_another_nonce_fails() {
        let mut args = switch_args(&testdata(SWITCH_JSON), SWITCH_RIM, T_2026_06, &[]);
        let at = args.iter().position(|a| a == NONCE_931).unwrap();
        args[at] = "00".repeat(32);
        let out = run(&strs(&args));
        assert_eq!(out.status.code(), Some(1));
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            stdout.contains("[CheckNonce] report nonce 931d"),
            "{stdout}"
        );
    }

    #[test]
    fn gpu_evidence_given_as_switch_evidence_is_refused() {
        let out = run(&strs(&switch_args(
            &testdata("nvat_serialized_evidence/hopper_evidence.json"),
            SWITCH_RIM,
            T_2026_06,
            &[],
        )));
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            stderr.contains("--switch-evidence entry 0 has arch \"HOPPER\", not LS10"),
            "{stderr}"
        );
        // Unlabelled, a switch report given as a GPU's is named by its leaf certificate.
        let dir = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(testdata(SWITCH_JSON)).unwrap();
        let entry = nv_verify::evidence::parse_nvat_json(&bytes)
            .unwrap()
            .remove(0);
        let report = dir.path().join("switch_report.bin");
        let chain = dir.path().join("switch_chain.pem");
        std::fs::write(&report, &entry.evidence.report).unwrap();
        std::fs::write(&chain, &entry.evidence.cert_chain).unwrap();
        let out = run(&[
            "--report",
            &report.display().to_string(),
            "--cert-chain",
            &chain.display().to_string(),
            "--nonce",
            NONCE_931,
            "--ocsp",
            "skip",
        ]);
        assert_eq!(out.status.code(), Some(1));
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            stdout.contains(
                "[CheckDeviceKind] expected GPU evidence, but its leaf certificate names a NVSwitch"
            ),
            "{stdout}"
        );
    }

    #[test]
    fn combined_gpu_and_switch_set_prints_the_topology_verdict() {
        let out = run(&[
            "--evidence",
            &testdata("nvat_serialized_evidence/multi_gpu_hopper.json"),
            "--switch-evidence",
            &testdata("nvat_serialized_evidence/multi_switch_ls10.json"),
            "--rim-dir",
            &testdata("nvat_rims"),
            "--ocsp",
            "skip",
            "--now",
            T_2026_06,
        ]);
        assert_eq!(out.status.code(), Some(1));
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            stdout.contains(
                "PPCIe topology: 4 GPU(s), 4 switch(es); GPUs reach switches [03dba23b3c11bd8a"
            ),
            "{stdout}"
        );
        assert!(
            stdout.contains("    - 4 GPU reports, PPCIe needs exactly 8"),
            "{stdout}"
        );
        assert!(
            stdout.contains(
                "    - switch 1: DEVICE_PDI 203eb31ad9ed0008 is the same as switch 0's (one switch \
                 reported twice)"
            ),
            "{stdout}"
        );
        // Every switch itself verified.
        assert_eq!(
            stdout.matches("  ✓ evidence verified").count(),
            4,
            "{stdout}"
        );
    }

    #[test]
    fn ppcie_mode_without_switch_evidence_closes_the_gate() {
        let out = run(&[
            "--evidence",
            &testdata("nvat_serialized_evidence/hopper_evidence.json"),
            "--ocsp",
            "skip",
            "--now",
            T_2026_06,
            "--cc-state",
            "2,0,0,1",
            "--json",
        ]);
        assert_eq!(out.status.code(), Some(1));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let failures: Vec<&str> = json["gate"]["failures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert!(
            failures[0].starts_with(
                "protected PCIe (PPCIe, multi-GPU with NVSwitch) needs verified NVSwitch evidence"
            ),
            "{failures:?}"
        );
    }

    #[test]
    fn stapled_mode_without_good_responses_fails_per_certificate() {
        let out = run(&strs(&args_545(
            VBIOS_TEST,
            &["--ocsp", "stapled", "--json"],
        )));
        assert_eq!(out.status.code(), Some(1));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let failures = json["gpus"][0]["failures"].as_array().unwrap();
        assert_eq!(failures.len(), 9);
        assert!(failures.iter().all(|f| f["code"] == "VerifyRevocation"));
        assert_eq!(json["gpus"][0]["claims"]["ocsp"], "failed");
    }
}
