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

    #[test]
    fn switch_evidence_json_is_refused() {
        let out = run(&[
            "--evidence",
            &testdata("nvat_serialized_evidence/switch_evidence_ls10.json"),
            "--ocsp",
            "skip",
            "--now",
            "1767225600",
        ]);
        assert_eq!(out.status.code(), Some(1));
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(stdout.contains("unsupported architecture LS10"), "{stdout}");
        assert!(stdout.contains("WARNING: no --nonce given"), "{stdout}");
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
