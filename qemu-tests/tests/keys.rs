//! Keys from a KMS in QEMU (issue 5): the guest brings up the network (slirp DHCP), asks the
//! test KMS on host loopback (reached as 10.0.2.2) over RA-TLS, extends `key-provider` with the
//! KMS root key id, decrypts an env encrypted with a fresh X25519 key and reports the accepted
//! names (never values). Refusals: compose-hash not allowed, KMS root ≠ pinned
//! `key_provider_id`, KMS down, tampered env, env name outside `allowed_envs`, wrong launch
//! token — each a clear error in the `keys` stage, nothing after it, and no secret on the
//! console or the results channel.
#![cfg(any(feature = "qemu", qemu_testenv, clippy))]

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::time::Duration;

    use anyhow::{Context, Result, bail, ensure};
    use cvm_keys::env::{encrypt_blob, env_plaintext};
    use cvm_keys::secret::Secret;
    use measure::runtime_event::{decode_log, replay_rtmr3};
    use qemu_tests::host_share::{HOST_SHARE_LABEL, ShareFile, build_image, kms_sys_config};
    use qemu_tests::results::{finished_stages, raw_records};
    use qemu_tests::{CvmSetup, Record, RunningVm};
    use sha2::{Digest, Sha256};
    use test_kms::{KmsHandle, KmsKeys, Policy, leak_needles};

    const TIMEOUT: Duration = Duration::from_secs(180);
    const ENV_VALUE: &str = "s3cr3t-api-key-value-7f1c";

    /// What a scenario changes from the good case.
    #[derive(Default)]
    struct Scenario {
        /// Allow a different compose-hash than the app's.
        disallow_compose: bool,
        /// Pin a key_provider_id that is not the KMS's.
        wrong_pin: bool,
        /// No KMS listening at the URL.
        kms_down: bool,
        /// Flip a byte of the encrypted env.
        tamper_env: bool,
        /// Put a name outside allowed_envs into the env.
        extra_env_name: bool,
        /// Require a launch token and send the wrong one.
        wrong_token: bool,
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        share: std::path::PathBuf,
        root_file: std::path::PathBuf,
        kms_keys: Arc<KmsKeys>,
        kms: Option<KmsHandle>,
        app_id: Vec<u8>,
        /// SHA-256 of the `.encrypted-env` the share carries.
        env_sha256: [u8; 32],
    }

    fn app_compose(key_provider_id: &str, launch_token_hash: Option<&str>) -> Vec<u8> {
        let mut compose = serde_json::json!({
            "manifest_version": 2,
            "name": "keys-test",
            "runner": "docker-compose",
            "docker_compose_file": "services: {}\n",
            "kms_enabled": true,
            "gateway_enabled": false,
            "local_key_provider_enabled": false,
            "key_provider_id": key_provider_id,
            "public_logs": true,
            "public_sysinfo": true,
            "allowed_envs": ["API_KEY", "MODE"],
            "no_instance_id": false,
            "secure_time": false,
        });
        if let Some(hash) = launch_token_hash {
            compose["manifest_version"] = serde_json::json!("3");
            compose["requirements"] = serde_json::json!({ "launch_token_hash": hash });
        }
        serde_json::to_vec_pretty(&compose).unwrap_or_default()
    }

    fn fixture(scenario: &Scenario) -> Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let kms_keys = Arc::new(KmsKeys::generate(&[])?);
        let pin = if scenario.wrong_pin {
            // Another KMS's root key id.
            KmsKeys::generate(&[])?.key_provider_id()
        } else {
            kms_keys.key_provider_id()
        };
        let token = b"launch-token-for-the-test";
        let token_hash = hex::encode(Sha256::digest(token));
        let compose = app_compose(&pin, scenario.wrong_token.then_some(token_hash.as_str()));
        let compose_hash: [u8; 32] = Sha256::digest(&compose).into();
        let app_id = compose_hash[..20].to_vec();

        let root_file = dir.path().join("sim-root.pem");
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let kms = if scenario.kms_down {
            drop(listener);
            None
        } else {
            let allowed = if scenario.disallow_compose {
                vec![[0x55; 32]]
            } else {
                vec![compose_hash]
            };
            Some(test_kms::start(
                Arc::clone(&kms_keys),
                Policy::simulated_boot(allowed, root_file.clone()),
                listener,
            )?)
        };

        let mut vars = vec![("API_KEY", ENV_VALUE), ("MODE", "production")];
        if scenario.extra_env_name {
            vars.push(("LD_PRELOAD", "/tmp/evil.so"));
        }
        let plaintext = env_plaintext(&vars);
        let mut blob = encrypt_blob(&kms_keys.env_public_key(&app_id)?, plaintext.expose())?;
        if scenario.tamper_env {
            let last = blob.len() - 1;
            blob[last] ^= 0x01;
        }
        let env_sha256: [u8; 32] = Sha256::digest(&blob).into();
        let sys_config = kms_sys_config(&[format!("https://10.0.2.2:{port}")], 512 << 20);
        let mut files = vec![
            ShareFile::new("app-compose.json", compose),
            ShareFile::new(".sys-config.json", serde_json::to_vec(&sys_config)?),
            ShareFile::new(".encrypted-env", blob),
        ];
        if scenario.wrong_token {
            files.push(ShareFile::new(".user-config", b"not-the-token".to_vec()));
        }
        let share = dir.path().join("share.img");
        build_image(
            &files,
            &[],
            HOST_SHARE_LABEL,
            &dir.path().join("staging"),
            &share,
        )?;
        Ok(Fixture {
            _dir: dir,
            share,
            root_file,
            kms_keys,
            kms,
            app_id,
            env_sha256,
        })
    }

    fn boot(setup: &CvmSetup, name: &str, fixture: &Fixture, cmdline: &str) -> Result<RunningVm> {
        Ok(setup
            .vm_with_share(name, &fixture.share)
            .with_qemu_arg("-netdev")
            .with_qemu_arg("user,id=n0")
            .with_qemu_arg("-device")
            .with_qemu_arg("virtio-net-pci,netdev=n0")
            .with_cmdline(cmdline)
            .boot()?)
    }

    /// Every secret the KMS derives for this app and instance, and the env value.
    fn secrets(fixture: &Fixture, instance_id: &[u8]) -> Result<Vec<Secret<Vec<u8>>>> {
        let mut secrets = fixture.kms_keys.app_secrets(&fixture.app_id, instance_id)?;
        secrets.push(Secret::new(ENV_VALUE.as_bytes().to_vec()));
        Ok(secrets)
    }

    fn assert_no_leak(
        vm: &RunningVm,
        records: &[Record],
        secrets: &[Secret<Vec<u8>>],
    ) -> Result<()> {
        let results =
            std::fs::read_to_string(vm.tmpdir().join("results.jsonl")).unwrap_or_default();
        let console = vm.console();
        for secret in secrets {
            for needle in leak_needles(secret.expose()) {
                ensure!(!console.contains(&needle), "secret on the console");
                ensure!(!results.contains(&needle), "secret on the results channel");
            }
        }
        // The env value in plain text, too.
        ensure!(!console.contains(ENV_VALUE) && !results.contains(ENV_VALUE));
        ensure!(!format!("{records:?}").contains(ENV_VALUE));
        Ok(())
    }

    #[test]
    fn keys_from_the_test_kms_and_decrypted_env() -> Result<()> {
        let setup = CvmSetup::new()?;
        let fixture = fixture(&Scenario::default())?;
        let mut vm = boot(
            &setup,
            "keys-ok",
            &fixture,
            "cvm.on_ready=poweroff cvm.test_dump=runtime-event-log",
        )?;
        vm.hand_simulated_root_to(&fixture.root_file, TIMEOUT)?;
        vm.wait_for_event("power_off", TIMEOUT)?;
        let records = vm.records()?;
        let keys = raw_records(&records, "keys");
        let [keys] = keys.as_slice() else {
            bail!("expected one keys record: {keys:?}\n{}", vm.report());
        };
        ensure!(keys["provider"] == "kms", "{keys}");
        ensure!(
            keys["key_provider_id"] == fixture.kms_keys.key_provider_id().as_str(),
            "{keys}"
        );
        ensure!(
            keys["env_names"] == serde_json::json!(["API_KEY", "MODE"]),
            "{keys}"
        );
        ensure!(finished_stages(&records).contains(&"ready"));

        // RTMR3: key-provider names the KMS root, and the log replays to the measured value.
        let measured = raw_records(&records, "measured");
        let measured = measured.first().context("measured record")?;
        let dump = raw_records(&records, "test_dump");
        let dump = dump
            .iter()
            .find(|d| d["name"] == "runtime-event-log")
            .context("runtime-event-log dump")?;
        let log = String::from_utf8(hex::decode(dump["hex"].as_str().context("hex")?)?)?;
        let events: Vec<_> = decode_log(&log)?.into_iter().map(|l| l.event).collect();
        ensure!(
            replay_rtmr3(events.iter()).to_string() == measured["rtmr3"].as_str().unwrap_or("")
        );
        let provider = events
            .iter()
            .find(|e| e.name == "key-provider")
            .context("key-provider event")?;
        let payload: serde_json::Value = serde_json::from_slice(&provider.payload)?;
        ensure!(payload["name"] == "kms", "{payload}");
        ensure!(
            payload["id"] == fixture.kms_keys.key_provider_id().as_str(),
            "{payload}"
        );
        let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
        let at = |n: &str| names.iter().position(|x| *x == n);
        ensure!(
            at("boot-mr-done") < at("key-provider") && at("key-provider") < at("storage-fs"),
            "{names:?}"
        );
        ensure!(
            names.iter().filter(|n| **n == "key-provider").count() == 1,
            "{names:?}"
        );
        // The host-supplied env is measured before the key request: swapping it changes RTMR3.
        let env = events
            .iter()
            .find(|e| e.name == "encrypted-env")
            .context("encrypted-env event")?;
        ensure!(
            env.payload == fixture.env_sha256,
            "encrypted-env payload {} is not the share's env",
            hex::encode(&env.payload)
        );
        ensure!(
            at("boot-mr-done") < at("encrypted-env") && at("encrypted-env") < at("key-provider"),
            "{names:?}"
        );

        let kms = fixture.kms.as_ref().context("kms")?;
        ensure!(
            kms.requests()
                .iter()
                .any(|r| r.method == "GetAppKey" && r.status == 200),
            "{:?}",
            kms.requests()
        );
        let instance_id = hex::decode(measured["instance_id"].as_str().unwrap_or(""))?;
        assert_no_leak(&vm, &records, &secrets(&fixture, &instance_id)?)
    }

    /// Boots `scenario` and expects a fatal error in the `keys` stage containing `needle`.
    fn refused(name: &str, scenario: Scenario, needle: &str) -> Result<()> {
        let setup = CvmSetup::new()?;
        let fixture = fixture(&scenario)?;
        let mut vm = boot(&setup, name, &fixture, "cvm.on_ready=poweroff")?;
        if !scenario.kms_down {
            vm.hand_simulated_root_to(&fixture.root_file, TIMEOUT)?;
        }
        let fatal = vm.wait_for_event("fatal", TIMEOUT)?;
        let Record::Fatal { stage, error, .. } = &fatal else {
            bail!("not fatal: {fatal:?}");
        };
        ensure!(stage == "keys", "failed in {stage}: {error}");
        ensure!(
            error.to_lowercase().contains(&needle.to_lowercase()),
            "{error:?} lacks {needle:?}"
        );
        vm.wait_for_event("power_off", TIMEOUT)?;
        let records = vm.records()?;
        let finished = finished_stages(&records);
        ensure!(
            !finished.contains(&"keys") && !finished.contains(&"system-ready"),
            "{finished:?}"
        );
        ensure!(
            raw_records(&records, "keys").is_empty(),
            "keys record after a refusal"
        );
        // No instance id is known to the test here; the env value and every app secret of
        // the (instance-independent) env and k256 keys must not appear.
        let mut secrets = fixture.kms_keys.app_secrets(&fixture.app_id, &[])?;
        secrets.remove(0); // the disk key depends on the instance id
        secrets.push(Secret::new(ENV_VALUE.as_bytes().to_vec()));
        assert_no_leak(&vm, &records, &secrets)
    }

    #[test]
    fn compose_hash_not_allowed_by_the_kms() -> Result<()> {
        refused(
            "keys-compose",
            Scenario {
                disallow_compose: true,
                ..Scenario::default()
            },
            "GetAppKey",
        )
    }

    #[test]
    fn kms_root_differs_from_the_pinned_key_provider_id() -> Result<()> {
        refused(
            "keys-pin",
            Scenario {
                wrong_pin: true,
                ..Scenario::default()
            },
            "key_provider_id",
        )
    }

    #[test]
    fn kms_down_stops_after_bounded_retries() -> Result<()> {
        refused(
            "keys-down",
            Scenario {
                kms_down: true,
                ..Scenario::default()
            },
            "GetTempCaCert",
        )
    }

    #[test]
    fn tampered_env_is_refused() -> Result<()> {
        refused(
            "keys-tamper",
            Scenario {
                tamper_env: true,
                ..Scenario::default()
            },
            "decrypt",
        )
    }

    #[test]
    fn env_name_outside_allowed_envs_is_refused() -> Result<()> {
        refused(
            "keys-allowed",
            Scenario {
                extra_env_name: true,
                ..Scenario::default()
            },
            "LD_PRELOAD",
        )
    }

    #[test]
    fn wrong_launch_token_is_refused() -> Result<()> {
        refused(
            "keys-token",
            Scenario {
                wrong_token: true,
                ..Scenario::default()
            },
            "launch token",
        )
    }
}
