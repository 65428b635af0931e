//! End-to-end tests of the `cvm-measure` binary on the library's real vectors.

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::process::{Command, Output};

    use measure::runtime_event::{EventLogVersion, LogLineFormat};

    const RTMR3: &str = "6f24c170d0fd63fc2b1b53202eea47b013978437fa6982cf5e0438ff95c208994aaa0f4ebab2e3a66824b5b56869137e";

    fn testdata(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../lib/testdata")
            .join(name)
    }

    fn run(args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cvm-measure"))
            .args(args)
            .output()
            .unwrap()
    }

    fn stdout(output: &Output) -> String {
        String::from_utf8(output.stdout.clone()).unwrap()
    }

    fn stderr(output: &Output) -> String {
        String::from_utf8(output.stderr.clone()).unwrap()
    }

    fn path_str(path: &std::path::Path) -> &str {
        path.to_str().unwrap()
    }

    fn fixture_response() -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(testdata("dstack-tdx-lite-getquote.json")).unwrap())
            .unwrap()
    }

    #[test]
    fn replay_get_quote_response_matches_its_quote() {
        let log = testdata("dstack-tdx-lite-getquote.json");
        let output = run(&["replay", "--event-log", path_str(&log)]);
        assert!(output.status.success(), "{}", stderr(&output));
        let text = stdout(&output);
        assert_eq!(text.matches("✓ matches quote").count(), 4, "{text}");
        assert!(text.contains(&format!("RTMR3: {RTMR3}")));

        let output = run(&["replay", "--event-log", path_str(&log), "--json"]);
        assert!(output.status.success());
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(json["source"], "dstack-getquote");
        assert_eq!(json["quote_check"]["verdict"], "Match");
        assert_eq!(json["rtmrs"][3], RTMR3);
        assert_eq!(json["entries"].as_array().unwrap().len(), 29);
        assert_eq!(json["entries"][20]["description"], "system-preparing");
    }

    #[test]
    fn replay_ccel_against_quote_reports_mismatch() {
        let log = testdata("dstack-ccel.bin");
        let quote = testdata("dcap-qvl-quote-from-tappd.hex");
        let output = run(&[
            "replay",
            "--event-log",
            path_str(&log),
            "--quote",
            path_str(&quote),
        ]);
        assert_eq!(output.status.code(), Some(1));
        let err = stderr(&output);
        assert!(
            err.contains("does not match the quote: RTMR1 quote 918fbd97"),
            "{err}"
        );
        assert!(stdout(&output).contains("RTMR0: 274c2344116db7c6"));

        // Only RTMR0 comes from the same boot.
        let output = run(&[
            "replay",
            "--event-log",
            path_str(&log),
            "--quote",
            path_str(&quote),
            "--registers",
            "0",
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
    }

    #[test]
    fn replay_rejects_tampered_runtime_event() {
        let mut response = fixture_response();
        let log: String = response["event_log"].as_str().unwrap().to_owned();
        let tampered = log.replace(
            "\"event_payload\":\"7a6673\"",
            "\"event_payload\":\"65787434\"",
        );
        assert_ne!(log, tampered);
        response["event_log"] = serde_json::Value::String(tampered);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tampered.json");
        std::fs::write(&path, response.to_string()).unwrap();
        let output = run(&["replay", "--event-log", path_str(&path)]);
        assert_eq!(output.status.code(), Some(1));
        let err = stderr(&output);
        assert!(err.contains(&format!("RTMR3 quote {RTMR3}")), "{err}");
        assert!(!err.contains("RTMR0"), "{err}");
    }

    #[test]
    fn replay_firmware_log_plus_runtime_log() {
        let response = fixture_response();
        let events =
            measure::dstack_event_log::parse_event_log(response["event_log"].as_str().unwrap())
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("runtime_events.log");
        let mut text = String::new();
        for event in events.iter().filter_map(|e| e.runtime_event()) {
            text.push_str(&event.to_log_line(LogLineFormat::Current).unwrap());
        }
        std::fs::write(&runtime, text).unwrap();
        let output = run(&["runtime-events", path_str(&runtime)]);
        assert!(output.status.success(), "{}", stderr(&output));
        assert!(stdout(&output).contains(&format!("RTMR3: {RTMR3}")));

        // As the only log: RTMR3 matches, RTMR0-2 are zero and differ from the quote.
        let quote = testdata("dstack-tdx-lite-getquote.json");
        let output = run(&[
            "replay",
            "--event-log",
            path_str(&runtime),
            "--quote",
            path_str(&quote),
            "--registers",
            "3",
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
    }

    #[test]
    fn runtime_events_json_for_both_line_formats() {
        let response = fixture_response();
        let events =
            measure::dstack_event_log::parse_event_log(response["event_log"].as_str().unwrap())
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (format, name) in [
            (LogLineFormat::Current, "current"),
            (LogLineFormat::Legacy, "legacy"),
        ] {
            let path = dir.path().join(name);
            let text: String = events
                .iter()
                .filter_map(|e| e.runtime_event())
                .map(|e| e.to_log_line(format).unwrap())
                .collect();
            std::fs::write(&path, text).unwrap();
            let output = run(&["runtime-events", "--json", path_str(&path)]);
            assert!(output.status.success(), "{}", stderr(&output));
            let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            let rows = json.as_array().unwrap();
            assert_eq!(rows.len(), 9);
            assert_eq!(rows[8]["rtmr3_after"], RTMR3);
            assert_eq!(rows[0]["format"], name);
        }
        // A V2 line is replayed with the V2 digest.
        let path = dir.path().join("v2");
        let event = measure::runtime_event::RuntimeEvent::new("app-id", vec![1, 2])
            .with_version(EventLogVersion::V2);
        std::fs::write(&path, event.to_log_line(LogLineFormat::Current).unwrap()).unwrap();
        let output = run(&["runtime-events", "--json", path_str(&path)]);
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(json[0]["version"], 2);
        assert_eq!(json[0]["digest"], event.digest().to_string());
    }

    #[test]
    fn quote_show_prints_fields() {
        let quote = testdata("dcap-qvl-tdx_quote");
        let output = run(&["quote", "show", path_str(&quote)]);
        assert!(output.status.success(), "{}", stderr(&output));
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(json["header"]["version"], 4);
        assert!(
            json["body"]["mr_td"]
                .as_str()
                .unwrap()
                .starts_with("91eb2b44")
        );
        assert_eq!(json["trailing_len"], 70);
        assert_eq!(json["signature_data"]["certification"]["type"], "qe_report");
    }

    #[test]
    fn bad_input_fails_with_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage");
        std::fs::write(&path, b"\x01\x00\x00\x00\x03\x00\x00\x00garbage").unwrap();
        let output = run(&["replay", "--event-log", path_str(&path)]);
        assert_eq!(output.status.code(), Some(1));
        assert!(
            stderr(&output).contains("parse TCG event log"),
            "{}",
            stderr(&output)
        );

        std::fs::write(&path, b"0x0400").unwrap();
        let output = run(&["quote", "show", path_str(&path)]);
        assert_eq!(output.status.code(), Some(1));
        assert!(
            stderr(&output).contains("quote is truncated"),
            "{}",
            stderr(&output)
        );

        std::fs::write(&path, "{\"event\":\"a\"}\n").unwrap();
        let output = run(&["runtime-events", path_str(&path)]);
        assert_eq!(output.status.code(), Some(1));
        assert!(
            stderr(&output).contains("line 1 of the runtime event log is invalid"),
            "{}",
            stderr(&output)
        );

        let output = run(&["quote", "show", "/nonexistent/quote"]);
        assert_eq!(output.status.code(), Some(1));
        assert!(stderr(&output).contains("read /nonexistent/quote"));
    }

    #[test]
    fn expected_from_a_build_manifest_equals_the_golden_file() {
        let dir = tempfile::tempdir().unwrap();
        let testdata = testdata("");
        let manifest = dir.path().join("build.toml");
        // Relative paths resolve against the manifest's directory.
        std::os::unix::fs::symlink(&testdata, dir.path().join("td")).unwrap();
        std::fs::write(
            &manifest,
            r#"firmware = "td/synthetic_tdvf.fd"
kernel = "td/synthetic_bzImage"
initrd = "td/synthetic_initrd"
cmdline = "console=ttyS0 init=/init"
memory = "2G"
page_order = "single"
acpi_from_log = "td/dstack-ccel.bin"
"#,
        )
        .unwrap();
        let output = run(&["expected", "--manifest", path_str(&manifest), "--json"]);
        assert!(output.status.success(), "{}", stderr(&output));
        let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/expected/synthetic-q35-2g.json");
        assert_eq!(stdout(&output), std::fs::read_to_string(golden).unwrap());

        // A flag overrides the manifest; unknown keys are an error.
        let output = run(&[
            "expected",
            "--manifest",
            path_str(&manifest),
            "--memory",
            "1G",
            "--json",
        ]);
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(json["memory_size"], 1u64 << 30);
        std::fs::write(&manifest, "kernal = \"x\"\n").unwrap();
        let output = run(&["expected", "--manifest", path_str(&manifest)]);
        assert_eq!(output.status.code(), Some(1));
        assert!(stderr(&output).contains("parse build manifest"));
    }

    #[test]
    fn rtmr_computes_one_register() {
        let golden: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../testdata/expected/synthetic-q35-2g.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let initrd = testdata("synthetic_initrd");
        let kernel = testdata("synthetic_bzImage");
        let cmdline = "console=ttyS0 init=/init";
        let output = run(&[
            "rtmr",
            "2",
            "--initrd",
            path_str(&initrd),
            "--cmdline",
            cmdline,
            "--json",
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(json, golden["rtmr2"]);
        let output = run(&[
            "rtmr",
            "1",
            "--kernel",
            path_str(&kernel),
            "--initrd",
            path_str(&initrd),
            "--cmdline",
            cmdline,
            "--memory",
            "2G",
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        let value = golden["rtmr1"]["value"].as_str().unwrap();
        assert!(stdout(&output).starts_with(&format!("RTMR1: {value}\n")));
        // RTMR1 without the kernel names the missing flag; RTMR4 does not exist.
        let output = run(&["rtmr", "1", "--memory", "2G"]);
        assert_eq!(output.status.code(), Some(1));
        assert!(stderr(&output).contains("--kernel"), "{}", stderr(&output));
        assert_eq!(run(&["rtmr", "4"]).status.code(), Some(2));
    }

    #[test]
    fn expected_without_tdx_metadata_still_computes_rtmr1_and_rtmr2() {
        // A PE kernel is not a TDVF image: MRTD and RTMR0 are null, with a note.
        let kernel = testdata("synthetic_bzImage");
        let output = run(&[
            "expected",
            "--firmware",
            path_str(&kernel),
            "--kernel",
            path_str(&kernel),
            "--memory",
            "2G",
            "--json",
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert!(json["mrtd"].is_null() && json["rtmr0"].is_null());
        assert!(
            json["notes"][0]
                .as_str()
                .unwrap()
                .contains("MRTD and RTMR0 not computed")
        );
        assert_eq!(json["rtmr1"]["events"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn parse_quote_summary_and_json() {
        let quote = testdata("dcap-qvl-tdx_quote");
        let output = run(&["parse-quote", path_str(&quote)]);
        assert!(output.status.success(), "{}", stderr(&output));
        let text = stdout(&output);
        assert!(text.starts_with("quote v4 (TEE type 0x81"), "{text}");
        assert!(text.contains("MRTD:          91eb2b44"), "{text}");
        assert!(text.contains("certification: type 6, with PCK certificate chain"));
        let output = run(&["parse-quote", path_str(&quote), "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let show = run(&["quote", "show", path_str(&quote)]);
        assert_eq!(
            json,
            serde_json::from_slice::<serde_json::Value>(&show.stdout).unwrap()
        );
        let output = run(&["parse-quote", path_str(&testdata("synthetic_initrd"))]);
        assert_eq!(output.status.code(), Some(1));
        assert!(
            stderr(&output).contains("parse quote"),
            "{}",
            stderr(&output)
        );
    }

    #[test]
    fn mrtd_and_expected_from_synthetic_artifacts() {
        let firmware = testdata("synthetic_tdvf.fd");
        let output = run(&["mrtd", "--firmware", path_str(&firmware), "--json"]);
        assert!(output.status.success(), "{}", stderr(&output));
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(json["sections"].as_array().unwrap().len(), 5);
        assert!(
            json["single_pass"]
                .as_str()
                .unwrap()
                .starts_with("809903a9")
        );
        assert!(json["two_pass"].as_str().unwrap().starts_with("43236816"));

        let kernel = testdata("synthetic_bzImage");
        let initrd = testdata("synthetic_initrd");
        let ccel = testdata("dstack-ccel.bin");
        let output = run(&[
            "expected",
            "--firmware",
            path_str(&firmware),
            "--kernel",
            path_str(&kernel),
            "--initrd",
            path_str(&initrd),
            "--memory",
            "2G",
            "--page-order",
            "two",
            "--acpi-from-log",
            path_str(&ccel),
            "--json",
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert!(json["mrtd"].as_str().unwrap().starts_with("43236816"));
        assert_eq!(json["rtmr0"]["events"].as_array().unwrap().len(), 13);
        // Kernel digest cross-checked with osslsigncode (see the library's kernel tests).
        assert!(
            json["rtmr1"]["events"][0]["digest"]
                .as_str()
                .unwrap()
                .starts_with("fe5516a1")
        );
        assert_eq!(json["rtmr2"]["events"].as_array().unwrap().len(), 2);

        // Without ACPI inputs RTMR0 is left out; a non-PE kernel is an error.
        let output = run(&[
            "expected",
            "--firmware",
            path_str(&firmware),
            "--kernel",
            path_str(&initrd),
            "--memory",
            "1G",
        ]);
        assert_eq!(output.status.code(), Some(1));
        assert!(
            stderr(&output).contains("no Linux setup header"),
            "{}",
            stderr(&output)
        );
        let output = run(&["mrtd", "--firmware", path_str(&kernel)]);
        assert_eq!(output.status.code(), Some(1));
        assert!(
            stderr(&output).contains("no OVMF GUIDed table footer"),
            "{}",
            stderr(&output)
        );
    }

    #[test]
    fn quote_verify_with_stored_collateral() {
        let quote = testdata("dcap-qvl-tdx_quote");
        let collateral = testdata("dcap-qvl-tdx_quote_collateral.json");
        let args = |now: &'static str| {
            vec![
                "quote".to_owned(),
                "verify".to_owned(),
                path_str(&quote).to_owned(),
                "--collateral".to_owned(),
                path_str(&collateral).to_owned(),
                "--now".to_owned(),
                now.to_owned(),
                "--require-up-to-date".to_owned(),
            ]
        };
        let run_args = |args: Vec<String>| {
            Command::new(env!("CARGO_BIN_EXE_cvm-measure"))
                .args(args)
                .output()
                .unwrap()
        };
        let output = run_args(args("1750377600"));
        assert!(output.status.success(), "{}", stderr(&output));
        assert!(stdout(&output).contains("TCB status UpToDate"));

        let output = run_args(args("1798761600"));
        assert_eq!(output.status.code(), Some(1));
        assert!(
            stderr(&output).contains("CollateralTime"),
            "{}",
            stderr(&output)
        );

        let dir = tempfile::tempdir().unwrap();
        let tampered = dir.path().join("quote");
        let mut bytes = std::fs::read(&quote).unwrap();
        bytes[0x100] ^= 1;
        std::fs::write(&tampered, bytes).unwrap();
        let mut tampered_args = args("1750377600");
        tampered_args[2] = path_str(&tampered).to_owned();
        tampered_args.push("--json".to_owned());
        let output = run_args(tampered_args);
        assert_eq!(output.status.code(), Some(1));
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(json["Rejected"]["reason"], "QuoteSignature");
    }

    const KMS_ID: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200042f71e234d7339a1ceaca09c3c391eb816c533f980adaab34f16ead093ff0ac100d9c03253a3056f6d27735125433180b3e61c54a78f3fd13337869e0051dee06";

    fn check_status(json: &serde_json::Value, check: &str) -> String {
        json.as_array()
            .unwrap()
            .iter()
            .find(|l| l["check"] == check)
            .unwrap()["status"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn check_line(json: &serde_json::Value, name: &str) -> serde_json::Value {
        json.as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap()
            .clone()
    }

    /// The fixture's quote and `expected --json`-shaped values equal to its own registers.
    fn fixture_quote_and_expected() -> (measure::quote::Quote, serde_json::Value) {
        let log = testdata("dstack-tdx-lite-getquote.json");
        let quote = measure::quote::Quote::parse(
            &measure::dstack_event_log::parse_get_quote_response(
                &std::fs::read_to_string(&log).unwrap(),
            )
            .unwrap()
            .quote,
        )
        .unwrap();
        let values = quote.rtmrs().values();
        let expected = serde_json::json!({
            "mrtd": quote.body.mr_td.to_string(),
            "rtmr0": {"value": values[0].to_string()},
            "rtmr1": {"value": values[1].to_string()},
            "rtmr2": {"value": values[2].to_string()},
        });
        (quote, expected)
    }

    /// SHA-256(MRTD ‖ RTMR0 ‖ RTMR1 ‖ RTMR2), computed here from the raw quote bytes.
    fn os_measurement_hex(quote: &measure::quote::Quote) -> String {
        use sha2::Digest as _;
        let bytes = quote.to_bytes().unwrap();
        // 48-byte header, then the TD 1.0 body: mr_td at body offset 136, rtmr0-2 at
        // 328..472 (`specs/dstack-guest.md` §4.2).
        let mut hasher = sha2::Sha256::new();
        hasher.update(&bytes[48 + 136..48 + 184]);
        hasher.update(&bytes[48 + 328..48 + 472]);
        hex::encode(hasher.finalize())
    }

    const FIXTURE_OS_IMAGE_HASH: &str =
        "07a2388c7a6a1b6a646d443f1517990a4ec294471d63146cda9d56972765051d";

    #[test]
    fn verify_checklist_on_the_dstack_fixture() {
        let dir = tempfile::tempdir().unwrap();
        let log = testdata("dstack-tdx-lite-getquote.json");
        let (quote, expected) = fixture_quote_and_expected();
        let expected_path = dir.path().join("expected.json");
        std::fs::write(&expected_path, expected.to_string()).unwrap();
        let whitelist = dir.path().join("whitelist");
        std::fs::write(&whitelist, format!("00\n{}\n", os_measurement_hex(&quote))).unwrap();
        let challenge = hex::encode("dip1::");
        // What the fixture cannot give: collateral, its app-compose.json, the KMS's quote.
        let base = |extra: &[&str]| {
            let mut args = vec![
                "verify",
                "--event-log",
                path_str(&log),
                "--expected",
                path_str(&expected_path),
                "--os-image-whitelist",
                path_str(&whitelist),
                "--challenge",
                &challenge,
                "--kms-identity",
                KMS_ID,
                "--skip",
                "compose-hash",
                "--skip",
                "images-pinned",
                "--skip",
                "key-provider-pinned",
                "--skip",
                "kms-attestation",
            ];
            args.extend_from_slice(extra);
            run(&args)
        };
        // Without --collateral the signature is never checked: that fails the verdict.
        let output = base(&["--json"]);
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let line = check_line(&json, "quote-signature");
        assert_eq!(line["status"], "Fail");
        assert_eq!(
            line["reason"],
            "input not given (--collateral); pass --skip quote-signature to accept that"
        );
        assert_eq!(check_line(&json, "tcb-up-to-date")["status"], "Fail");
        let err = stderr(&output);
        assert!(
            err.contains("2 check(s) failed: quote signature valid (quote-signature), TCB status up to date (tcb-up-to-date)"),
            "{err}"
        );

        // Named with --skip, the same evidence passes; the line says it was requested.
        let output = base(&["--skip", "quote-signature", "--json"]);
        assert!(output.status.success(), "{}", stderr(&output));
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        for (name, status) in [
            ("quote-signature", "Skipped"),
            ("tcb-up-to-date", "Skipped"),
            ("platform-measurements", "Pass"),
            ("os-image-whitelisted", "Pass"),
            ("rtmr3-replay", "Pass"),
            ("challenge", "Pass"),
            ("key-provider", "Pass"),
            ("compose-hash", "Skipped"),
            ("kms-attestation", "Skipped"),
        ] {
            assert_eq!(check_line(&json, name)["status"], status, "{name}");
        }
        assert_eq!(
            check_line(&json, "quote-signature")["reason"],
            "requested; input not given (--collateral)"
        );
        assert_eq!(
            check_status(&json, "MRTD and RTMR0-2 match expected"),
            "Pass"
        );
        let output = base(&["--skip", "quote-signature"]);
        assert!(output.status.success(), "{}", stderr(&output));
        let out = stdout(&output);
        assert!(
            out.contains("  - SKIPPED (requested) quote signature valid: requested; input not given (--collateral)"),
            "{out}"
        );

        // The KMS-supplied os-image-hash is no whitelist entry: only the quote's registers count.
        std::fs::write(&whitelist, format!("{FIXTURE_OS_IMAGE_HASH}\n")).unwrap();
        let output = base(&["--skip", "quote-signature", "--json"]);
        assert_eq!(output.status.code(), Some(1));
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let line = check_line(&json, "os-image-whitelisted");
        assert_eq!(line["status"], "Fail");
        assert!(
            line["reason"].as_str().unwrap().contains("KMS's claim"),
            "{line}"
        );

        // An unknown --skip name is a usage error that lists the valid names.
        let output = base(&["--skip", "quote-signatures"]);
        assert_eq!(output.status.code(), Some(2));
        let err = stderr(&output);
        assert!(err.contains("quote-signatures"), "{err}");
        assert!(err.contains("kms-attestation"), "{err}");
        assert!(!err.contains("real-tdx-module"), "{err}");
    }

    #[test]
    fn verify_reports_wrong_compose_and_kms() {
        let dir = tempfile::tempdir().unwrap();
        let log = testdata("dstack-tdx-lite-getquote.json");
        // An app-compose.json with pinned and unpinned images (not the fixture's own file).
        let compose = dir.path().join("app-compose.json");
        std::fs::write(
            &compose,
            r#"{"docker_compose_file":"services:\n  a:\n    image: nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n  b:\n    image: redis:7\n"}"#,
        )
        .unwrap();
        // Wrong compose file, unpinned image and another KMS: non-zero exit with the reasons.
        let output = run(&[
            "verify",
            "--event-log",
            path_str(&log),
            "--app-compose",
            path_str(&compose),
            "--kms-identity",
            "00",
            "--json",
        ]);
        assert_eq!(output.status.code(), Some(1));
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(
            check_status(&json, "compose-hash matches app-compose.json"),
            "Fail"
        );
        assert_eq!(
            check_status(&json, "every image pinned by sha256 digest"),
            "Fail"
        );
        assert_eq!(
            check_status(&json, "key-provider matches the expected KMS identity"),
            "Fail"
        );
        let err = stderr(&output);
        assert!(
            err.contains("compose-hash matches app-compose.json (compose-hash)"),
            "{err}"
        );
        // Skipping a failing line accepts it, keeping the reason.
        let output = run(&[
            "verify",
            "--event-log",
            path_str(&log),
            "--app-compose",
            path_str(&compose),
            "--skip",
            "compose-hash",
            "--json",
        ]);
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let line = check_line(&json, "compose-hash");
        assert_eq!(line["status"], "Skipped");
        assert!(
            line["reason"]
                .as_str()
                .unwrap()
                .starts_with("requested; not holding: event 86b0e55f"),
            "{line}"
        );
    }

    /// app-compose selecting the KMS without `key_provider_id`, or the init's
    /// `key-provider-unpinned` event: "key-provider pinned" fails unless skipped.
    #[test]
    fn verify_fails_an_unpinned_kms() {
        let dir = tempfile::tempdir().unwrap();
        let log = testdata("dstack-tdx-lite-getquote.json");
        let pinned_line = |log: &std::path::Path, compose: &str, extra: &[&str]| {
            let path = dir.path().join("app-compose.json");
            std::fs::write(&path, compose).unwrap();
            let mut args = vec![
                "verify",
                "--event-log",
                path_str(log),
                "--app-compose",
                path_str(&path),
                "--json",
            ];
            args.extend_from_slice(extra);
            let output = run(&args);
            let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            check_line(&json, "key-provider-pinned")
        };
        let unpinned = r#"{"key_provider":"kms","key_provider_id":""}"#;
        let line = pinned_line(&log, unpinned, &[]);
        assert_eq!(line["status"], "Fail", "{line}");
        assert!(
            line["reason"]
                .as_str()
                .unwrap()
                .contains("host chooses the KMS"),
            "{line}"
        );
        let line = pinned_line(&log, unpinned, &["--skip", "key-provider-pinned"]);
        assert_eq!(line["status"], "Skipped", "{line}");
        let pinned = format!(r#"{{"key_provider":"kms","key_provider_id":"{KMS_ID}"}}"#);
        assert_eq!(pinned_line(&log, &pinned, &[])["status"], "Pass");
        // The fixture's log with the init's warning event before key-provider.
        let text = std::fs::read_to_string(&log).unwrap();
        let mut reply: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut events: Vec<serde_json::Value> =
            serde_json::from_str(reply["event_log"].as_str().unwrap()).unwrap();
        let at = events
            .iter()
            .position(|e| e["event"] == "key-provider")
            .unwrap();
        events.insert(
            at,
            serde_json::json!({"imr": 3, "event_type": 134217729, "digest": "",
                "event": "key-provider-unpinned",
                "event_payload": hex::encode("app-compose key_provider_id is empty")}),
        );
        reply["event_log"] = serde_json::Value::String(serde_json::to_string(&events).unwrap());
        let warned = dir.path().join("unpinned.json");
        std::fs::write(&warned, reply.to_string()).unwrap();
        let line = pinned_line(&warned, &pinned, &[]);
        assert_eq!(line["status"], "Fail", "{line}");
        assert!(
            line["reason"]
                .as_str()
                .unwrap()
                .contains("recorded key-provider-unpinned"),
            "{line}"
        );
        // `runtime-events` shows the warning.
        let output = run(&["runtime-events", path_str(&warned)]);
        let out = stdout(&output);
        assert!(
            out.contains("WARNING: key-provider-unpinned: app-compose key_provider_id is empty"),
            "{out}"
        );
        let output = run(&["runtime-events", path_str(&log)]);
        assert!(!stdout(&output).contains("WARNING"));
    }

    /// Evidence carrying the simulated TEE's marker event: every platform line is SIMULATED
    /// (never a pass), a leading line says so, the text output warns, and the verdict fails.
    #[test]
    fn verify_marks_simulated_evidence() {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(testdata("dstack-tdx-lite-getquote.json")).unwrap();
        let mut reply: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut events: Vec<serde_json::Value> =
            serde_json::from_str(reply["event_log"].as_str().unwrap()).unwrap();
        let first_runtime = events.iter().position(|e| e["imr"] == 3).unwrap();
        events.insert(
            first_runtime,
            serde_json::json!({"imr": 3, "event_type": 134217729, "digest": "",
                "event": "insecure-simulated-tee",
                "event_payload": hex::encode("measurements of this TD are simulated")}),
        );
        reply["event_log"] = serde_json::Value::String(serde_json::to_string(&events).unwrap());
        let log = dir.path().join("simulated.json");
        std::fs::write(&log, reply.to_string()).unwrap();

        let output = run(&["verify", "--event-log", path_str(&log), "--json"]);
        assert_eq!(output.status.code(), Some(1));
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(json[0]["check"], "evidence from a real TDX module");
        for line in json.as_array().unwrap() {
            if line["section"] == "platform" {
                assert_eq!(line["status"], "Simulated", "{line}");
            }
        }
        // The marker changes RTMR3, so the replay no longer matches this (real) quote.
        assert_eq!(
            check_status(&json, "RTMR3 event log replays to the quote"),
            "Fail"
        );
        let output = run(&["verify", "--event-log", path_str(&log)]);
        let out = String::from_utf8_lossy(&output.stdout);
        assert!(out.starts_with("WARNING: INSECURE SIMULATED TEE"), "{out}");
        assert!(
            out.contains("~ SIMULATED evidence from a real TDX module"),
            "{out}"
        );

        // The unmodified fixture has no marker: no Simulated line.
        let output = run(&[
            "verify",
            "--event-log",
            path_str(&testdata("dstack-tdx-lite-getquote.json")),
            "--json",
        ]);
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert!(
            json.as_array()
                .unwrap()
                .iter()
                .all(|l| l["status"] != "Simulated")
        );
    }

    /// The KMS's own quote: its reportData must bind the app's KMS identity, its measurements
    /// must be the KMS build's, and it must verify against stored collateral (here a
    /// re-signed-looking copy of the sample fails).
    #[test]
    fn verify_kms_attestation_line() {
        use sha2::Digest as _;
        let dir = tempfile::tempdir().unwrap();
        let log = testdata("dstack-tdx-lite-getquote.json");
        let sample = std::fs::read(testdata("dcap-qvl-tdx_quote")).unwrap();
        let collateral = testdata("dcap-qvl-tdx_quote_collateral.json");
        let mut quote = measure::quote::Quote::parse(&sample).unwrap();
        let values = quote.rtmrs().values();
        let kms_expected = serde_json::json!({
            "mrtd": quote.body.mr_td.to_string(),
            "rtmr0": {"value": values[0].to_string()},
            "rtmr1": {"value": values[1].to_string()},
            "rtmr2": {"value": values[2].to_string()},
        });
        let kms_expected_path = dir.path().join("kms-expected.json");
        std::fs::write(&kms_expected_path, kms_expected.to_string()).unwrap();
        // The app's own measurements: not the KMS VM's.
        let (_, app_expected) = fixture_quote_and_expected();
        let app_expected_path = dir.path().join("app-expected.json");
        std::fs::write(&app_expected_path, app_expected.to_string()).unwrap();
        let kms_line = |quote: &std::path::Path, extra: &[&str]| {
            let mut args = vec![
                "verify",
                "--event-log",
                path_str(&log),
                "--kms-quote",
                path_str(quote),
                "--kms-collateral",
                path_str(&collateral),
                "--now",
                "1750377600",
                "--json",
            ];
            args.extend_from_slice(extra);
            let output = run(&args);
            let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            let line = check_line(&json, "kms-attestation");
            (
                line["status"].as_str().unwrap().to_owned(),
                line["reason"].to_string(),
            )
        };
        let with_expected = ["--kms-expected", path_str(&kms_expected_path)];
        // The sample's reportData binds some other key: a quote from another VM.
        let (status, reason) = kms_line(&testdata("dcap-qvl-tdx_quote"), &with_expected);
        assert_eq!(status, "Fail");
        assert!(reason.contains("is not SHA-512"), "{reason}");
        // With reportData = SHA-512("kms-root-ca:" ‖ SPKI) the binding holds, but the body no
        // longer matches the signature.
        let mut hasher = sha2::Sha512::new();
        hasher.update(b"kms-root-ca:");
        hasher.update(hex::decode(KMS_ID).unwrap());
        quote.body.report_data.0 = hasher.finalize().into();
        let forged = dir.path().join("kms-quote.bin");
        std::fs::write(&forged, quote.to_bytes().unwrap()).unwrap();
        // The identity comes from the app's key-provider event, or --kms-identity agreeing.
        for identity in [&[][..], &["--kms-identity", KMS_ID][..]] {
            let mut extra = with_expected.to_vec();
            extra.extend_from_slice(identity);
            let (status, reason) = kms_line(&forged, &extra);
            assert_eq!(status, "Fail");
            assert!(reason.contains("KMS quote rejected"), "{reason}");
        }
        // --kms-identity naming another KMS than the app's event.
        let mut extra = with_expected.to_vec();
        extra.extend_from_slice(&["--kms-identity", "3059"]);
        let (_, reason) = kms_line(&forged, &extra);
        assert!(reason.contains("is not the KMS of the app"), "{reason}");
        // Which VM: without --kms-expected, or with another VM's measurements, it fails
        // before the signature is looked at.
        let (status, reason) = kms_line(&forged, &[]);
        assert_eq!(status, "Fail");
        assert!(reason.contains("give --kms-expected"), "{reason}");
        let (_, reason) = kms_line(&forged, &["--kms-expected", path_str(&app_expected_path)]);
        assert!(reason.contains("not from the expected KMS VM"), "{reason}");
        // Without --kms-quote the line fails unless skipped.
        let output = run(&["verify", "--event-log", path_str(&log), "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let line = check_line(&json, "kms-attestation");
        assert_eq!(line["status"], "Fail");
        assert_eq!(
            line["reason"],
            "input not given (--kms-quote); pass --skip kms-attestation to accept that"
        );
    }

    /// `measurements/testdata/expected/*.json` must equal what the tool computes today
    /// (regeneration commands in `measurements/testdata/README.md`).
    #[test]
    fn golden_expected_files_are_current() {
        let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/expected/synthetic-q35-2g.json");
        let (firmware, kernel, initrd, ccel) = (
            testdata("synthetic_tdvf.fd"),
            testdata("synthetic_bzImage"),
            testdata("synthetic_initrd"),
            testdata("dstack-ccel.bin"),
        );
        let output = run(&[
            "expected",
            "--firmware",
            path_str(&firmware),
            "--kernel",
            path_str(&kernel),
            "--initrd",
            path_str(&initrd),
            "--cmdline",
            "console=ttyS0 init=/init",
            "--memory",
            "2G",
            "--page-order",
            "single",
            "--acpi-from-log",
            path_str(&ccel),
            "--json",
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(
            stdout(&output),
            std::fs::read_to_string(golden).unwrap(),
            "golden file is stale; regenerate it (measurements/testdata/README.md)"
        );
    }

    fn write_bundle(dir: &std::path::Path) -> String {
        use measure::image_bundle::{ImageBundle, Metadata, OVMF_VARIANT_PRE_202505};
        let bundle = ImageBundle::build(
            b"firmware".to_vec(),
            b"kernel".to_vec(),
            b"initrd".to_vec(),
            &Metadata::new("console=ttyS0", "0.1.0", OVMF_VARIANT_PRE_202505),
        )
        .unwrap();
        for (name, bytes) in &bundle.files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        hex::encode(bundle.os_image_hash)
    }

    #[test]
    fn image_hash_recomputes_and_checks_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let hash = write_bundle(dir.path());
        let path = path_str(dir.path());
        let output = run(&["image-hash", path]);
        assert!(output.status.success(), "{}", stderr(&output));
        let text = stdout(&output);
        assert!(text.contains(&format!("os_image_hash: {hash}")), "{text}");
        assert_eq!(text.matches('✓').count(), 5, "{text}");

        let output = run(&["image-hash", path, "--expect", &hash, "--json"]);
        assert!(output.status.success(), "{}", stderr(&output));
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(json["os_image_hash"], hash.as_str());
        assert_eq!(json["expected_matches"], true);
        assert_eq!(json["files"].as_array().unwrap().len(), 4);

        let output = run(&["image-hash", path, "--expect", &"00".repeat(32)]);
        assert!(!output.status.success());
        assert!(
            stderr(&output).contains(&format!("os_image_hash is {hash}, expected 0000")),
            "{}",
            stderr(&output)
        );

        std::fs::write(dir.path().join("bzImage"), b"other").unwrap();
        let output = run(&["image-hash", path]);
        assert!(!output.status.success());
        let err = stderr(&output);
        assert!(err.contains("does not verify: bzImage: sha256 is"), "{err}");

        write_bundle(dir.path());
        std::fs::write(dir.path().join("digest.txt"), "00".repeat(32)).unwrap();
        let output = run(&["image-hash", path]);
        assert!(!output.status.success());
        assert!(
            stderr(&output).contains("digest.txt says 0000"),
            "{}",
            stderr(&output)
        );

        write_bundle(dir.path());
        std::fs::remove_file(dir.path().join("initramfs.cpio.gz")).unwrap();
        let output = run(&["image-hash", path]);
        assert!(!output.status.success());
        assert!(
            stderr(&output).contains("initramfs.cpio.gz is listed in sha256sum.txt but missing"),
            "{}",
            stderr(&output)
        );
    }
}
