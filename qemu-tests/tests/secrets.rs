//! Secrets hygiene (issue 10, item 4; container output: issue 15, item 4): one boot with the
//! real test KMS (RA-TLS, app keys from its KDF), an encrypted env of three secret values, a
//! fresh 64 MiB data disk that the init formats with the KMS disk key (dm-integrity + dm-crypt
//! AEAD), and one container from the loopback registry that prints two env values
//! (`public_logs: false`). Afterwards every key — the disk key, the env (X25519) key and the
//! k256 app key as derived by `test-kms`'s KDF for this app and instance, and a test disk key
//! constant — and every env value is searched for in raw bytes, lowercase and uppercase hex and
//! base64 (standard and url-safe, padded and not) on the serial console, in the results
//! channel file, and in the WHOLE data disk image (header, GPT, dm-integrity metadata and the
//! ciphertext: a plaintext hit anywhere fails). The container's output is proven to be in its
//! log on the encrypted disk by the log file's SHA-256 (test hook
//! `cvm.test_dump=container-log-digests`, taken after the stop), and none of it is on the
//! console. A positive control plants one spelling in a copy of the disk bytes and requires
//! the scanner to find it at the planted offset, so the scan can fail.
//!
//! Runtime: one TCG boot with network, a pull and a first-boot disk format, ~50-80 s on the
//! 2-core CI box, plus ~2 s of scanning.
#![cfg(any(feature = "qemu", qemu_testenv, clippy))]

mod fault_common;

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::time::Duration;

    use anyhow::{Context, Result, ensure};
    use cvm_keys::env::{encrypt_blob, env_plaintext};
    use qemu_tests::host_share::{HOST_SHARE_LABEL, ShareFile, build_image, kms_sys_config};
    use qemu_tests::matrix::find_needles;
    use qemu_tests::registry::{busybox_layer, free_port, work_dir};
    use qemu_tests::results::{finished_stages, raw_records};
    use qemu_tests::{CvmSetup, data_disk};

    use crate::fault_common::{registry, wait_state};
    use sha2::{Digest, Sha256};
    use test_kms::{KmsKeys, Policy, leak_needles};

    const TIMEOUT: Duration = Duration::from_secs(300);
    const ENV: [(&str, &str); 3] = [
        ("API_KEY", "sk-live-3f9a1c77e2b54d08a6c1"),
        ("DB_PASSWORD", "correct-horse-battery-staple-42"),
        ("MODE", "hygiene-mode-value-e81d"),
    ];
    /// The constant test disk key of the other QEMU tests: never used here, must never appear.
    const TEST_DISK_KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    /// Every spelling of every secret, as bytes, with a label for the failure message.
    fn needles(secrets: &[(String, Vec<u8>)]) -> (Vec<Vec<u8>>, Vec<String>) {
        let mut out = Vec::new();
        let mut labels = Vec::new();
        for (name, secret) in secrets {
            out.push(secret.clone());
            labels.push(format!("{name} (raw)"));
            for spelling in leak_needles(secret) {
                labels.push(format!("{name} as {spelling:.8}…"));
                out.push(spelling.into_bytes());
            }
        }
        (out, labels)
    }

    #[test]
    fn no_key_or_env_value_in_console_results_or_disk() -> Result<()> {
        let setup = CvmSetup::new()?;
        let dir = tempfile::tempdir()?;
        let keys = Arc::new(KmsKeys::generate(&[])?);
        let reg_dir = work_dir("secrets");
        let _ = std::fs::remove_dir_all(&reg_dir);
        std::fs::create_dir_all(&reg_dir)?;
        let Some(reg) = registry(&reg_dir, free_port()?)? else {
            return Ok(());
        };
        let image = reg.push_image(
            "printer",
            &busybox_layer(&setup.artifacts.busybox)?,
            &serde_json::json!({"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sh", "-c"]}),
        )?;
        // API_KEY through the container's environment, DB_PASSWORD by compose interpolation.
        let services = format!(
            "services:\n  printer:\n    image: {image}\n    environment:\n      - API_KEY=${{API_KEY}}\n    command: [\"echo printer-start; echo key=$$API_KEY; echo db=${{DB_PASSWORD}}; echo printer-done\"]\n    restart: \"no\"\n"
        );
        let compose = serde_json::to_vec_pretty(&serde_json::json!({
            "manifest_version": 2,
            "name": "secrets-test",
            "runner": "docker-compose",
            "docker_compose_file": services,
            "kms_enabled": true,
            "gateway_enabled": false,
            "local_key_provider_enabled": false,
            "key_provider_id": keys.key_provider_id(),
            "public_logs": false,
            "public_sysinfo": true,
            "allowed_envs": ENV.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            "no_instance_id": false,
            "secure_time": false,
        }))?;
        let hash: [u8; 32] = Sha256::digest(&compose).into();
        let app_id = hash[..20].to_vec();
        let root_file = dir.path().join("sim-root.pem");
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let kms = test_kms::start(
            Arc::clone(&keys),
            Policy::simulated_boot(vec![hash], root_file.clone()),
            listener,
        )?;
        let plaintext = env_plaintext(&ENV);
        let blob = encrypt_blob(&keys.env_public_key(&app_id)?, plaintext.expose())?;
        let sys = kms_sys_config(&[format!("https://10.0.2.2:{port}")], 512 << 20);
        let share = dir.path().join("share.img");
        build_image(
            &[
                ShareFile::new("app-compose.json", compose),
                ShareFile::new(".sys-config.json", serde_json::to_vec(&sys)?),
                ShareFile::new(".encrypted-env", blob),
            ],
            &[],
            HOST_SHARE_LABEL,
            &dir.path().join("staging"),
            &share,
        )?;
        let disk = data_disk::create(&dir.path().join("data.img"), 64)?;
        let blank = data_disk::sha256(&disk)?;

        let worker_port = free_port()?;
        let mut vm = setup
            .vm_with_share("secrets", &share)
            .with_qemu_arg("-netdev")
            .with_qemu_arg(&format!(
                "user,id=n0,hostfwd=tcp:127.0.0.1:{worker_port}-:8090"
            ))
            .with_qemu_arg("-device")
            .with_qemu_arg("virtio-net-pci,netdev=n0")
            .with_qemu_arg("-drive")
            .with_qemu_arg(&data_disk::drive_arg(&disk))
            .with_memory("1G")
            .with_cmdline(
                "cvm.on_ready=wait cvm.test_disk=write,read cvm.test_dump=container-log-digests",
            )
            .boot()?;
        vm.hand_simulated_root_to(&root_file, TIMEOUT)?;
        vm.wait_for_event("ready", TIMEOUT)?;
        wait_state(&mut vm, "printer", "exited")?;
        // The host's view through the Worker API (port 8090): Info answers, the private logs
        // are refused; both replies join the scanned haystacks.
        let (info_status, info) = qemu_tests::demo::http_get(worker_port, "/prpc/Worker.Info")?;
        ensure!(
            info_status == 200 && info.contains(&hex::encode(&app_id)),
            "Worker.Info on :8090: {info_status} {info}"
        );
        let (logs_status, logs) = qemu_tests::demo::http_get(worker_port, "/logs/printer")?;
        ensure!(
            logs_status == 403 && logs.contains("public_logs") && !logs.contains("printer-start"),
            "/logs/printer without public_logs: {logs_status} {logs}"
        );
        let worker_replies = format!("{info}\n{logs}");
        vm.system_powerdown()?;
        vm.wait_for_event("power_off", TIMEOUT)?;
        let exit = vm.wait_for_exit(TIMEOUT)?;
        ensure!(exit.success(), "QEMU exit {exit:?}");
        let records = vm.records()?;

        // The boot really used the secrets: env decrypted, disk formatted and written.
        ensure!(
            finished_stages(&records).contains(&"ready"),
            "boot did not finish: {}",
            vm.report()
        );
        let k = raw_records(&records, "keys");
        ensure!(
            k.first().is_some_and(|k| k["env_names"]
                == serde_json::json!(ENV.iter().map(|(n, _)| *n).collect::<Vec<_>>())),
            "env not decrypted: {k:?}"
        );
        let d = raw_records(&records, "disk");
        ensure!(d.first().is_some_and(|d| d["formatted"] == true), "{d:?}");
        // The container's output is in its log on the encrypted disk, byte for byte.
        let want_log = format!(
            "printer-start\nkey={}\ndb={}\nprinter-done\n",
            ENV[0].1, ENV[1].1
        );
        let digests = raw_records(&records, "test_dump");
        let digest = digests
            .iter()
            .find(|d| d["name"] == "container-log-sha256:printer")
            .with_context(|| format!("no log digest of printer: {digests:?}"))?;
        ensure!(
            digest["hex"] == hex::encode(Sha256::digest(want_log.as_bytes())),
            "printer's log is not the expected 4 lines: {digest}"
        );
        ensure!(
            data_disk::sha256(&disk)? != blank,
            "the disk was not written"
        );

        let measured = raw_records(&records, "measured");
        let measured = measured.first().context("measured record")?;
        let instance_id = hex::decode(measured["instance_id"].as_str().unwrap_or(""))?;
        let derived = keys.app_secrets(&app_id, &instance_id)?;
        let mut secrets: Vec<(String, Vec<u8>)> = ["disk key", "env key", "k256 app key"]
            .iter()
            .zip(&derived)
            .map(|(n, s)| ((*n).to_owned(), s.expose().clone()))
            .collect();
        ensure!(
            secrets.len() == 3,
            "test-kms derived {} keys",
            secrets.len()
        );
        secrets.push(("test disk key".into(), hex::decode(TEST_DISK_KEY)?));
        for (name, value) in ENV {
            secrets.push((format!("env {name}"), value.as_bytes().to_vec()));
        }
        let (needles, labels) = needles(&secrets);

        let console = vm.console();
        let results = std::fs::read(vm.tmpdir().join("results.jsonl"))?;
        let image = std::fs::read(&disk)?;
        ensure!(!console.is_empty() && !results.is_empty());
        // Only lifecycle lines reach the console: none of the output, secret or not.
        ensure!(
            console.contains("workloads: printer started"),
            "no lifecycle line on the console"
        );
        for line in ["printer-start", "printer-done", "printer| "] {
            ensure!(
                !console.contains(line),
                "container output {line:?} on the console"
            );
        }
        let mut found = Vec::new();
        for (what, hay) in [
            ("console", console.as_bytes()),
            ("results channel", &results[..]),
            ("Worker API replies", worker_replies.as_bytes()),
            ("data disk image", &image[..]),
        ] {
            for (i, at) in find_needles(hay, &needles) {
                found.push(format!("{} in the {what} at byte {at}", labels[i]));
            }
        }
        // Positive control: one spelling planted in a copy of the disk bytes is found there.
        let mut planted = image.clone();
        let spelling = leak_needles(secrets[0].1.as_slice())
            .into_iter()
            .next()
            .context("spellings")?;
        let at = planted.len() / 2 + 13;
        planted[at..at + spelling.len()].copy_from_slice(spelling.as_bytes());
        let hits = find_needles(&planted, &needles);
        ensure!(
            hits.iter().any(|(_, offset)| *offset == at),
            "the scanner missed a planted secret"
        );
        let mut raw_planted = console.clone().into_bytes();
        raw_planted.extend_from_slice(ENV[1].1.as_bytes());
        ensure!(!find_needles(&raw_planted, &needles).is_empty());
        println!(
            "secrets scan: {} secrets, {} spellings, console {} B, results {} B, disk {} MiB",
            secrets.len(),
            needles.len(),
            console.len(),
            results.len(),
            image.len() >> 20
        );
        kms.stop();
        ensure!(found.is_empty(), "secrets found:\n{}", found.join("\n"));
        Ok(())
    }
}
