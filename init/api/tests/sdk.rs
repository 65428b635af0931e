//! The real dstack client against the server: the Python `dstack-sdk` from PyPI (pinned in
//! `tests/requirements.txt`) talks to `guest_api::serve` on sockets in a temp dir, backed by
//! the simulated TEE exactly as the separate API process would run it (a fresh simulator
//! rebuilt from the init's event log file).
//!
//! `GetTlsKey` goes to a test KMS (`test-kms`) on loopback.
//!
//! The interpreter comes from `CVM_SDK_PYTHON` (the venv `cargo xtask test` builds under
//! `target/pyenv`). Without it the test fails loudly, unless `CVM_SKIP_SDK_TEST=1`.

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::{Duration, Instant};

    use cvm_sim_tee::InsecureSimulatedTee;
    use guest_api::{ApiState, ResumeMode, ServerConfig, WorkloadInfo, serve};
    use init_core::app_compose::StorageFs;
    use init_core::identity::{AppId, AppIdentity, ComposeHash, InstanceId};
    use init_core::tee::events::{
        EventLogSink, KeyProviderInfo, RuntimeEventLog, app_info_events, system_ready_events,
    };
    use init_core::tee::{BoxError, EventLogVersion, RtmrIndex, RuntimeEvent, Sha384Digest};
    use measure::quote::Quote;
    use measure::rtmr::extend;
    use serde_json::Value;
    use sha2::{Digest, Sha512};
    use sha3::Digest as _;

    /// Appends to the log file the way PID 1 does.
    struct FileAppend(std::fs::File);

    impl EventLogSink for FileAppend {
        fn append_line(&mut self, line: &str) -> Result<(), BoxError> {
            self.0
                .write_all(line.as_bytes())
                .map_err(|e| Box::new(e) as BoxError)
        }
    }

    /// The init's side: boot events into the simulated TEE and the log file. Returns RTMR3.
    fn boot(log_path: &Path) -> (Sha384Digest, AppIdentity) {
        let identity = AppIdentity {
            compose_hash: ComposeHash([0x3c; 32]),
            app_id: AppId([0xa9; 20]),
            instance_id_seed: Vec::new(),
            instance_id: Some(InstanceId([0x17; 20])),
        };
        let mut tee = InsecureSimulatedTee::new();
        let file = std::fs::File::create(log_path).unwrap();
        let mut log = RuntimeEventLog::new(&mut tee, FileAppend(file)).unwrap();
        log.emit_plan(app_info_events(&identity, EventLogVersion::V1))
            .unwrap();
        log.emit_plan(system_ready_events(
            None,
            &KeyProviderInfo::none(),
            StorageFs::Ext4,
            EventLogVersion::V1,
        ))
        .unwrap();
        drop(log);
        (*tee.rtmrs().register(RtmrIndex::R3), identity)
    }

    fn wait_for(path: &Path) {
        let start = Instant::now();
        while !path.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{path:?} never appeared"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn raw_exchange(socket: &Path, bytes: &[u8]) -> String {
        let mut stream = UnixStream::connect(socket).unwrap();
        let _ = stream.write_all(bytes);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut out = Vec::new();
        stream.read_to_end(&mut out).unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    fn sdk_python() -> Option<PathBuf> {
        if let Some(python) = std::env::var_os("CVM_SDK_PYTHON") {
            return Some(PathBuf::from(python));
        }
        let banner = "!".repeat(78);
        if std::env::var("CVM_SKIP_SDK_TEST").as_deref() == Ok("1") {
            eprintln!(
                "{banner}\n!! SKIPPING the dstack-sdk test: CVM_SKIP_SDK_TEST=1 and CVM_SDK_PYTHON unset\n{banner}"
            );
            return None;
        }
        panic!(
            "{banner}\n!! CVM_SDK_PYTHON is not set: this test needs the Python venv with the pinned\n\
             !! dstack-sdk (init/api/tests/requirements.txt). `cargo xtask test` creates it under\n\
             !! target/pyenv; or set CVM_SKIP_SDK_TEST=1 to skip this test explicitly.\n{banner}"
        );
    }

    fn quote(hex_text: &Value) -> Quote {
        Quote::parse(&hex::decode(hex_text.as_str().unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn dstack_sdk_gets_info_and_quotes() {
        let Some(python) = sdk_python() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("runtime_events.log");
        let (rtmr3, identity) = boot(&log_path);

        // The API process: a fresh simulator rebuilt from the log file.
        let workload = WorkloadInfo {
            app_name: "sdk-demo".into(),
            app_compose: r#"{"manifest_version":2,"name":"sdk-demo"}"#.into(),
            vm_config: "{}".into(),
            ..WorkloadInfo::default()
        };
        let state = ApiState::open(
            InsecureSimulatedTee::new(),
            ResumeMode::InsecureRebuildSimulator,
            &log_path,
            workload,
        )
        .unwrap();
        // App keys as the KMS would hand them out (k256 root 0x09…, app-id 0xA1…).
        let (app_key, kms_signature) = cvm_keys::kdf::app_k256_key(&[9; 32], &[0xA1; 20]).unwrap();
        let app_public = cvm_keys::kdf::k256_public_key(app_key.expose()).unwrap();
        // A test KMS for GetTlsKey (SignCert). The rebuilt simulator signs with a root of its
        // own, so this KMS accepts any simulated root (INSECURE, test only).
        let kms_keys =
            std::sync::Arc::new(test_kms::KmsKeys::generate(&["127.0.0.1".into()]).unwrap());
        let kms = test_kms::start(
            std::sync::Arc::clone(&kms_keys),
            test_kms::Policy {
                allowed_compose_hashes: Some(vec![identity.compose_hash.0]),
                trust: test_kms::QuoteTrust::InsecureAnySimulatedRoot,
                os_image_hash: None,
                allowed_os_image_hashes: None,
                gateway_app_id: String::new(),
            },
            std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        )
        .unwrap();
        let state = state.with_app_keys(cvm_keys::kms::GuestKeys {
            k256_key: app_key,
            k256_signature: kms_signature.to_vec(),
            ca_cert_pem: kms_keys.root_ca_pem.clone(),
            kms: Some(kms_keys.guest_access(&kms.url())),
        });
        let config = ServerConfig {
            socket: dir.path().join("dstack.sock"),
            legacy_socket: Some(dir.path().join("tappd.sock")),
            event_log: log_path.clone(),
            ..ServerConfig::default()
        };
        let server_config = config.clone();
        std::thread::spawn(move || {
            let err = serve(&server_config, state).unwrap_err();
            panic!("serve failed: {err}");
        });
        let legacy = config.legacy_socket.clone().unwrap();
        wait_for(&config.socket);
        wait_for(&legacy);

        // Garbage, truncated and oversized requests first: the server answers and keeps going.
        let bad = raw_exchange(&config.socket, b"\x00\x01garbage\r\n\r\n");
        assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
        let big = format!(
            "POST /GetQuote HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            10 * 1024 * 1024
        );
        let big = raw_exchange(&config.socket, big.as_bytes());
        assert!(big.starts_with("HTTP/1.1 413 "), "{big}");
        let _ = raw_exchange(&config.socket, b"POST /GetQuote HTTP/1.1\r\nHost:");
        let bad_json = raw_exchange(
            &legacy,
            b"POST /prpc/Tappd.TdxQuote HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n{{{",
        );
        assert!(bad_json.starts_with("HTTP/1.1 400 "), "{bad_json}");

        let report_data = b"cvm-init sdk test nonce";
        let output = Command::new(&python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk_client.py"))
            .arg(&config.socket)
            .arg(&legacy)
            .arg(hex::encode(report_data))
            .output()
            .unwrap_or_else(|e| panic!("run {python:?}: {e}"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "sdk_client.py failed:\n{stderr}");
        let out: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("sdk_client.py output: {e}\n{stderr}"));

        // Info.
        let info = &out["info"];
        assert_eq!(info["app_id"], hex::encode(identity.app_id.0));
        assert_eq!(info["instance_id"], hex::encode([0x17; 20]));
        assert_eq!(info["compose_hash"], hex::encode(identity.compose_hash.0));
        assert_eq!(info["tcb_compose_hash"], info["compose_hash"]);
        assert_eq!(info["app_name"], "sdk-demo");
        assert_eq!(info["key_provider_info"], r#"{"name":"none","id":""}"#);
        assert_eq!(info["rtmr3"], rtmr3.to_string());
        // Marker + 8 system events.
        assert_eq!(info["event_log_len"], 9);

        // GetQuote: the report data landed in a quote the auditor's parser reads, and RTMR3 is
        // the simulated TEE's (also as the SDK replays it from the returned event log).
        let q = &out["quote"];
        let parsed = quote(&q["quote"]);
        let mut padded = [0u8; 64];
        padded[..report_data.len()].copy_from_slice(report_data);
        assert_eq!(parsed.body.report_data.0, padded);
        assert_eq!(q["report_data"], hex::encode(padded));
        assert_eq!(*parsed.rtmrs().register(RtmrIndex::R3), rtmr3);
        assert_eq!(q["replayed_rtmr3"], rtmr3.to_string());
        assert_eq!(q["events"][0], "insecure-simulated-tee");
        assert_eq!(q["events"][8], "system-ready");

        // Errors the SDK saw as HTTP errors.
        assert_eq!(out["reserved_event"]["status"], 403);

        // GetTlsKey through the SDK: a key and [leaf, app CA, KMS root] that verifies.
        let tls = &out["get_tls_key"];
        let chain: Vec<String> = tls["certificate_chain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(chain.len(), 3);
        assert_eq!(chain[2], kms_keys.root_ca_pem);
        let tls_key = cvm_keys::kdf::p256_from_pem(tls["key"].as_str().unwrap()).unwrap();
        let leaf_spki = cvm_keys::kdf::p256_spki_der(&tls_key.public_key());
        let (root_der, _) = cvm_keys::kms::certificate_der_and_spki(&chain[2]).unwrap();
        cvm_keys::sign_cert::verify_chain(&chain, &root_der, &leaf_spki, 1_800_000_000).unwrap();
        let (_, app_ca_spki) = cvm_keys::kms::certificate_der_and_spki(&chain[1]).unwrap();
        assert_eq!(
            app_ca_spki,
            kms_keys.app_ca_spki_der(&identity.app_id.0).unwrap()
        );
        let records = kms.requests();
        assert_eq!(
            (records[0].method.as_str(), records[0].status),
            ("SignCert", 200)
        );

        // GetKey through the SDK: a 32-byte key and the two-link signature chain.
        let key = &out["get_key"];
        let derived: [u8; 32] = hex::decode(key["key"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let chain: Vec<Vec<u8>> = key["signature_chain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| hex::decode(s.as_str().unwrap()).unwrap())
            .collect();
        let message = format!(
            "sdk-test:{}",
            hex::encode(cvm_keys::kdf::k256_public_key(&derived).unwrap())
        );
        assert_eq!(
            cvm_keys::kdf::recover_keccak256_signer(message.as_bytes(), &chain[0]).unwrap(),
            app_public
        );
        assert_eq!(chain[1], kms_signature.to_vec());
        assert_eq!(out["oversize_get_quote"]["status"], 400);

        // Version: the dstack release whose surface this implements.
        assert_eq!(out["version"]["version"], "0.5.11");
        // GetKey ed25519: the same HKDF key, the chain over the 32-byte ed25519 public key.
        let ed = &out["get_key_ed25519"];
        assert_eq!(ed["key"], key["key"]);
        let ed_public = cvm_keys::app_sign::ed25519_public_key(&derived);
        let chain0 = hex::decode(ed["signature_chain"][0].as_str().unwrap()).unwrap();
        let message = format!("sdk-test:{}", hex::encode(ed_public));
        assert_eq!(
            cvm_keys::kdf::recover_keccak256_signer(message.as_bytes(), &chain0).unwrap(),
            app_public
        );
        // Sign/Verify through the SDK: each signature verifies here too, with the key of
        // GetKey(path "vms", purpose "signing"), and the SDK's Verify agrees.
        for algorithm in ["ed25519", "secp256k1", "secp256k1_prehashed"] {
            let signed = &out["sign"][algorithm];
            let parsed = cvm_keys::app_sign::SignAlgorithm::parse(algorithm).unwrap();
            let bytes = |v: &Value| hex::decode(v.as_str().unwrap()).unwrap();
            assert_eq!(
                cvm_keys::app_sign::verify(
                    parsed,
                    &bytes(&signed["data"]),
                    &bytes(&signed["signature"]),
                    &bytes(&signed["public_key"])
                ),
                Ok(true),
                "{algorithm}"
            );
            assert_eq!(signed["valid"], true, "{algorithm}");
            assert_eq!(signed["tampered_valid"], false, "{algorithm}");
            assert_eq!(signed["signature_chain"][0], signed["signature"]);
            assert_eq!(bytes(&signed["signature_chain"][2]), kms_signature.to_vec());
        }
        // Attest: a SCALE V0 VersionedAttestation (DstackTdx) carrying the report data.
        let attestation = out["attest"].as_str().unwrap();
        assert!(attestation.starts_with("0000"), "{attestation:.16}");
        assert!(attestation.contains(&hex::encode(padded)));
        assert_eq!(out["gpu_info"]["attestation"], "");
        // GetTlsKey with the 0.5.7 options (the SDK probed Version first).
        let timed = &out["get_tls_key_timed"];
        assert_eq!(timed["certificate_chain"].as_array().unwrap().len(), 3);

        // EmitEvent extended RTMR3 and the log; its reply is dstack's `null`.
        assert_eq!(out["emit_event_reply"], Value::Null);
        let event = RuntimeEvent::new("sdk-test-event", b"hello from the sdk".to_vec());
        let after_rtmr3 = extend(&rtmr3, &event.digest());
        let after = &out["quote_after_event"];
        assert_eq!(
            *quote(&after["quote"]).rtmrs().register(RtmrIndex::R3),
            after_rtmr3
        );
        assert_eq!(after["replayed_rtmr3"], after_rtmr3.to_string());
        assert_eq!(after["events"][9], "sdk-test-event");
        let log_text = std::fs::read_to_string(&log_path).unwrap();
        assert!(
            log_text.ends_with(
                "{\"event\":\"sdk-test-event\",\"payload\":\"aGVsbG8gZnJvbSB0aGUgc2Rr\"}\n"
            ),
            "{log_text}"
        );

        // Legacy Tappd: SHA-512("app-data:" ‖ data), and raw (the SDK left-pads with zeros).
        let tappd = &out["tappd"];
        let sha512: [u8; 64] =
            Sha512::digest([b"app-data:".as_slice(), report_data].concat()).into();
        assert_eq!(quote(&tappd["sha512_quote"]).body.report_data.0, sha512);
        let mut left_padded = [0u8; 64];
        left_padded[64 - report_data.len()..].copy_from_slice(report_data);
        assert_eq!(quote(&tappd["raw_quote"]).body.report_data.0, left_padded);
        assert_eq!(tappd["info_app_id"], info["app_id"]);
        assert_eq!(tappd["info_rtmr3"], after_rtmr3.to_string());
        let keccak: [u8; 32] =
            sha3::Keccak256::digest([b"app-data:".as_slice(), report_data].concat()).into();
        assert_eq!(
            quote(&tappd["keccak256_quote"]).body.report_data.0[..32],
            keccak
        );
        // Tappd DeriveKey: HKDF(k256 app key, path) as a P-256 key, certified by the KMS.
        let derived_tls = &tappd["derive_key"];
        let derived_key =
            cvm_keys::kdf::p256_from_pem(derived_tls["key"].as_str().unwrap()).unwrap();
        let (app_key, _) = cvm_keys::kdf::app_k256_key(&[9; 32], &[0xA1; 20]).unwrap();
        let want = cvm_keys::app_sign::tappd_p256_key(&app_key, "legacy/path").unwrap();
        assert_eq!(derived_key.to_bytes(), want.to_bytes());
        let chain: Vec<String> =
            serde_json::from_value(derived_tls["certificate_chain"].clone()).unwrap();
        let spki = cvm_keys::kdf::p256_spki_der(&want.public_key());
        cvm_keys::sign_cert::verify_chain(&chain, &root_der, &spki, 1_800_000_000).unwrap();
    }
}
