//! The `test-kms` binary as a QEMU test would run it: `serve` with a ready file and a root file
//! written after start, `key-provider-id`, `encrypt-env`; the guest side is `cvm-keys`.

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    use cvm_keys::env::DisallowedEnv;
    use cvm_keys::kms::{KeyRequest, RetryPolicy, ThreadSleeper, request_app_keys};
    use cvm_keys::transport::TlsTransport;
    use cvm_sim_tee::InsecureSimulatedTee;
    use init_core::tee::{Rtmr as _, RtmrIndex, RuntimeEvent};

    const BIN: &str = env!("CARGO_BIN_EXE_test-kms");

    struct Kill(Child);

    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn run(args: &[&str]) -> String {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn wait_for(path: &Path) -> String {
        let start = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(path)
                && !text.is_empty()
            {
                return text;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "no {path:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn serve_encrypt_env_and_key_provider_id() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let state_arg = state.to_str().unwrap();
        let root_file = dir.path().join("sim-root.pem");
        let ready = dir.path().join("ready");
        let app_id = [0xA7u8; 20];
        let compose_hash = [0xC7u8; 32];

        let id = run(&["key-provider-id", "--state", state_arg]);
        let _server = Kill(
            Command::new(BIN)
                .args(["serve", "--state", state_arg, "--listen", "127.0.0.1:0"])
                .arg("--ready-file")
                .arg(&ready)
                .arg("--sim-pck-root")
                .arg(&root_file)
                .args(["--allow-compose-hash", &hex::encode(compose_hash)])
                .spawn()
                .unwrap(),
        );
        let addr = wait_for(&ready);
        run(&[
            "encrypt-env",
            "--state",
            state_arg,
            "--app-id",
            &hex::encode(app_id),
            "--out",
            dir.path().join("env").to_str().unwrap(),
            "--env",
            "GREETING=hello world",
        ]);

        // The guest boots; only then is its per-boot simulated root known and written.
        let mut tee = InsecureSimulatedTee::try_new().unwrap();
        let mut events = tee.pre_extended_events();
        for (name, payload) in [
            ("app-id", app_id.to_vec()),
            ("compose-hash", compose_hash.to_vec()),
            ("instance-id", vec![]),
            ("boot-mr-done", vec![]),
        ] {
            let event = RuntimeEvent::new(name, payload);
            tee.extend_rtmr(RtmrIndex::R3, &event.digest()).unwrap();
            events.push(event);
        }
        std::fs::write(&root_file, tee.insecure_root_certificate_pem().unwrap()).unwrap();
        let urls = vec![format!("https://{addr}")];
        let keys = request_app_keys(
            &mut TlsTransport::default(),
            &mut tee,
            &events,
            &KeyRequest {
                kms_urls: &urls,
                vm_config: "{}",
                key_provider_id: id.trim(),
                now_unix: 1_800_000_000,
                retry: RetryPolicy {
                    rounds: 1,
                    ..RetryPolicy::default()
                },
            },
            &mut ThreadSleeper,
        )
        .unwrap();
        assert_eq!(hex::encode(&keys.root_spki_der), id.trim());
        let blob = std::fs::read(dir.path().join("env")).unwrap();
        let env = cvm_keys::env::decrypt_env(
            keys.env_crypt_key.as_ref().unwrap(),
            Some(&blob),
            &["GREETING".to_owned()],
            DisallowedEnv::Reject,
        )
        .unwrap();
        assert_eq!(env.vars[0].value.expose(), "hello world");
        // The state is reused: the same root key id on the next run.
        assert_eq!(run(&["key-provider-id", "--state", state_arg]), id);
    }
}
