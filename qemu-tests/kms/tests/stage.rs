//! `cvm_keys::stage::kms_stage` (what PID 1 calls) against the test KMS on loopback, with
//! init-core's own host-share types.

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::time::Duration;

    use cvm_keys::env::{DisallowedEnv, EnvError, LaunchTokenError};
    use cvm_keys::kms::{RetryPolicy, Sleeper};
    use cvm_keys::stage::{KeyStageError, KmsStageInput, kms_stage};
    use cvm_keys::transport::TlsTransport;
    use cvm_sim_tee::InsecureSimulatedTee;
    use init_core::app_compose::{AppComposeFile, InstanceInfo, SysConfig};
    use init_core::identity::AppIdentity;
    use init_core::tee::events::app_info_events;
    use init_core::tee::{Rtmr as _, RtmrIndex, RuntimeEvent};
    use test_kms::{KmsHandle, KmsKeys, Policy, QuoteTrust};

    struct NoSleep;

    impl Sleeper for NoSleep {
        fn sleep(&mut self, _: Duration) {}
    }

    const TOKEN: &str = "launch-token-for-the-stage-test-0001";

    struct Boot {
        events: Vec<RuntimeEvent>,
        compose: AppComposeFile,
        identity: AppIdentity,
    }

    fn boot(pin: &str) -> (InsecureSimulatedTee, Boot) {
        let token_hash = hex::encode(cvm_keys::env::launch_token_hash(TOKEN.as_bytes()));
        let compose = serde_json::json!({
            "manifest_version": "3",
            "name": "stage-test",
            "runner": "docker-compose",
            "docker_compose_file": "services: {}",
            "key_provider": "kms",
            "key_provider_id": pin,
            "allowed_envs": ["API_TOKEN", "MODE"],
            "requirements": {"launch_token_hash": token_hash},
        });
        let compose = AppComposeFile::parse(compose.to_string().into_bytes()).unwrap();
        let identity =
            AppIdentity::derive(&compose, &InstanceInfo::default(), [0x5E; 20], None).unwrap();
        let mut tee = InsecureSimulatedTee::try_new().unwrap();
        let mut events = tee.pre_extended_events();
        for event in app_info_events(&identity, Default::default()) {
            tee.extend_rtmr(RtmrIndex::R3, &event.digest()).unwrap();
            events.push(event);
        }
        (
            tee,
            Boot {
                events,
                compose,
                identity,
            },
        )
    }

    fn kms(keys: &Arc<KmsKeys>, tee: &InsecureSimulatedTee, allowed: [u8; 32]) -> KmsHandle {
        let policy = Policy {
            allowed_compose_hashes: Some(vec![allowed]),
            trust: QuoteTrust::Root(tee.insecure_root_certificate_der().unwrap().to_vec()),
            os_image_hash: Some(vec![0x0A; 32]),
            allowed_os_image_hashes: None,
            gateway_app_id: String::new(),
        };
        test_kms::start(
            Arc::clone(keys),
            policy,
            TcpListener::bind("127.0.0.1:0").unwrap(),
        )
        .unwrap()
    }

    fn sys_config(url: &str) -> SysConfig {
        let json = serde_json::json!({"kms_urls": [url], "vm_config": "{\"cpu_count\":1}"});
        SysConfig::parse(json.to_string().as_bytes()).unwrap()
    }

    fn input<'a>(
        b: &'a Boot,
        sys: &'a SysConfig,
        user_config: &'a [u8],
        env: Option<&'a [u8]>,
    ) -> KmsStageInput<'a> {
        KmsStageInput {
            compose: &b.compose,
            sys_config: sys,
            identity: &b.identity,
            user_config: Some(user_config),
            encrypted_env: env,
            gpu_policy_hash: None,
            now_unix: 1_800_000_000,
            retry: RetryPolicy {
                rounds: 2,
                initial_backoff: Duration::ZERO,
                max_backoff: Duration::ZERO,
            },
            disallowed_env: DisallowedEnv::Reject,
        }
    }

    fn user_config(token: &str) -> Vec<u8> {
        serde_json::json!({"dstack": {"launch_token": token}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn stage_gets_keys_events_and_env() {
        let keys = Arc::new(KmsKeys::generate(&["127.0.0.1".into()]).unwrap());
        let (mut tee, b) = boot(&keys.key_provider_id());
        let handle = kms(&keys, &tee, b.identity.compose_hash.0);
        let sys = sys_config(&handle.url());
        let public = keys.env_public_key(&b.identity.app_id.0).unwrap();
        let plaintext = cvm_keys::env::env_plaintext(&[("API_TOKEN", "t0k3n"), ("MODE", "x")]);
        let blob = cvm_keys::env::encrypt_blob(&public, plaintext.expose()).unwrap();
        let uc = user_config(TOKEN);
        let events = b.events.clone();
        let out = kms_stage(
            &mut TlsTransport::default(),
            &mut tee,
            &events,
            &input(&b, &sys, &uc, Some(&blob)),
            &mut NoSleep,
        )
        .unwrap();
        assert_eq!(out.env.names(), ["API_TOKEN", "MODE"]);
        assert_eq!(out.mr_config_version, 0);
        assert_eq!(
            out.events
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>(),
            ["os-image-hash", "key-provider"]
        );
        assert_eq!(
            out.events[1].payload,
            format!(r#"{{"name":"kms","id":"{}"}}"#, keys.key_provider_id()).into_bytes()
        );
        assert!(!format!("{out:?}").contains("t0k3n"));

        // A name outside allowed_envs stops the stage.
        let bad = cvm_keys::env::env_plaintext(&[("OTHER", "1")]);
        let bad_blob = cvm_keys::env::encrypt_blob(&public, bad.expose()).unwrap();
        let err = kms_stage(
            &mut TlsTransport::default(),
            &mut tee,
            &events,
            &input(&b, &sys, &uc, Some(&bad_blob)),
            &mut NoSleep,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                KeyStageError::DecryptEnv {
                    source: EnvError::NameNotAllowed { .. }
                }
            ),
            "{err:?}"
        );
    }

    /// Without `key_provider_id` the keys still come (dstack behaviour), but the stage hands
    /// `key-provider-unpinned` to extend before the KMS's events.
    #[test]
    fn unpinned_kms_is_recorded_first() {
        let keys = Arc::new(KmsKeys::generate(&["127.0.0.1".into()]).unwrap());
        let (mut tee, b) = boot("");
        let handle = kms(&keys, &tee, b.identity.compose_hash.0);
        let sys = sys_config(&handle.url());
        let uc = user_config(TOKEN);
        let events = b.events.clone();
        let out = kms_stage(
            &mut TlsTransport::default(),
            &mut tee,
            &events,
            &input(&b, &sys, &uc, None),
            &mut NoSleep,
        )
        .unwrap();
        assert_eq!(
            out.events
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>(),
            ["key-provider-unpinned", "os-image-hash", "key-provider"]
        );
    }

    #[test]
    fn wrong_launch_token_stops_before_any_kms_call() {
        let keys = Arc::new(KmsKeys::generate(&["127.0.0.1".into()]).unwrap());
        let (mut tee, b) = boot("");
        let handle = kms(&keys, &tee, b.identity.compose_hash.0);
        let sys = sys_config(&handle.url());
        let uc = user_config("launch-token-for-the-stage-test-0002");
        let events = b.events.clone();
        let err = kms_stage(
            &mut TlsTransport::default(),
            &mut tee,
            &events,
            &input(&b, &sys, &uc, None),
            &mut NoSleep,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                KeyStageError::LaunchToken {
                    source: LaunchTokenError::Mismatch
                }
            ),
            "{err:?}"
        );
        assert!(handle.requests().is_empty());
    }

    #[test]
    fn pinned_other_kms_is_refused() {
        let keys = Arc::new(KmsKeys::generate(&["127.0.0.1".into()]).unwrap());
        let other = KmsKeys::generate(&[]).unwrap();
        let (mut tee, b) = boot(&other.key_provider_id());
        let handle = kms(&keys, &tee, b.identity.compose_hash.0);
        let sys = sys_config(&handle.url());
        let uc = user_config(TOKEN);
        let events = b.events.clone();
        let err = kms_stage(
            &mut TlsTransport::default(),
            &mut tee,
            &events,
            &input(&b, &sys, &uc, None),
            &mut NoSleep,
        )
        .unwrap_err();
        let chain = cvm_keys::error_chain(&err);
        assert!(
            chain.contains("is not the pinned key_provider_id"),
            "{chain}"
        );
    }

    #[test]
    fn other_key_providers_are_not_sent_to_a_kms() {
        let (mut tee, mut b) = boot("");
        let compose =
            serde_json::json!({"manifest_version": 2, "name": "x", "key_provider": "none"});
        b.compose = AppComposeFile::parse(compose.to_string().into_bytes()).unwrap();
        let sys = sys_config("https://127.0.0.1:1");
        let uc = user_config(TOKEN);
        let events = b.events.clone();
        let err = kms_stage(
            &mut TlsTransport::default(),
            &mut tee,
            &events,
            &input(&b, &sys, &uc, None),
            &mut NoSleep,
        )
        .unwrap_err();
        assert!(
            matches!(err, KeyStageError::NotKmsProvider { kind: "none" }),
            "{err:?}"
        );
    }
}
