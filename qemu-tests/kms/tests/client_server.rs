//! cvm-keys' KMS client against the test KMS on loopback: success and every refusal.

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::time::Duration;

    use cvm_keys::env::{DisallowedEnv, EnvError, LaunchTokenError};
    use cvm_keys::kms::{KeyRequest, KmsError, RetryPolicy, Sleeper, request_app_keys};
    use cvm_keys::transport::TlsTransport;
    use cvm_sim_tee::InsecureSimulatedTee;
    use init_core::tee::{QuoteSource as _, Rtmr as _, RtmrIndex, RuntimeEvent};
    use test_kms::{AllowedOsImage, KmsHandle, KmsKeys, Policy, QuoteTrust};

    const COMPOSE_HASH: [u8; 32] = [0xC0; 32];
    const APP_ID: [u8; 20] = [0xA1; 20];
    const INSTANCE_ID: [u8; 20] = [0x1D; 20];

    #[derive(Default)]
    struct RecordingSleeper(Vec<Duration>);

    impl Sleeper for RecordingSleeper {
        fn sleep(&mut self, duration: Duration) {
            self.0.push(duration);
        }
    }

    /// A simulated TEE with dstack's events up to `boot-mr-done` extended and logged.
    fn booted_tee() -> (InsecureSimulatedTee, Vec<RuntimeEvent>) {
        let mut tee = InsecureSimulatedTee::try_new().unwrap();
        let mut events = tee.pre_extended_events();
        for (name, payload) in [
            ("system-preparing", vec![]),
            ("app-id", APP_ID.to_vec()),
            ("compose-hash", COMPOSE_HASH.to_vec()),
            ("instance-id", INSTANCE_ID.to_vec()),
            ("boot-mr-done", vec![]),
        ] {
            let event = RuntimeEvent::new(name, payload);
            tee.extend_rtmr(RtmrIndex::R3, &event.digest()).unwrap();
            events.push(event);
        }
        (tee, events)
    }

    fn kms(
        tee: &InsecureSimulatedTee,
        allowed: Option<Vec<[u8; 32]>>,
    ) -> (Arc<KmsKeys>, KmsHandle) {
        let keys = Arc::new(KmsKeys::generate(&["127.0.0.1".into()]).unwrap());
        let policy = Policy {
            allowed_compose_hashes: allowed,
            trust: QuoteTrust::Root(tee.insecure_root_certificate_der().unwrap().to_vec()),
            os_image_hash: Some(vec![0x05; 32]),
            allowed_os_image_hashes: None,
            gateway_app_id: "gw".into(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let handle = test_kms::start(Arc::clone(&keys), policy, listener).unwrap();
        (keys, handle)
    }

    fn request<'a>(urls: &'a [String], pin: &'a str) -> KeyRequest<'a> {
        KeyRequest {
            kms_urls: urls,
            vm_config: r#"{"os_image_hash":"0707070707070707070707070707070707070707070707070707070707070707"}"#,
            key_provider_id: pin,
            now_unix: 1_800_000_000,
            retry: RetryPolicy {
                rounds: 3,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(150),
            },
        }
    }

    fn methods(handle: &KmsHandle) -> Vec<(String, u16)> {
        handle
            .requests()
            .into_iter()
            .map(|r| (r.method, r.status))
            .collect()
    }

    #[test]
    fn guest_gets_dstack_keys_and_decrypts_its_env() {
        let (mut tee, events) = booted_tee();
        let (keys, handle) = kms(&tee, Some(vec![COMPOSE_HASH]));
        let urls = vec![handle.url()];
        let pin = keys.key_provider_id();
        let mut sleeper = RecordingSleeper::default();
        let app = request_app_keys(
            &mut TlsTransport::default(),
            &mut tee,
            &events,
            &request(&urls, &pin),
            &mut sleeper,
        )
        .unwrap();
        assert!(sleeper.0.is_empty());
        assert_eq!(
            methods(&handle),
            [
                ("GetTempCaCert".to_owned(), 200),
                ("GetAppKey".to_owned(), 200)
            ]
        );
        assert_eq!(app.root_spki_der, keys.root_spki_der());
        assert_eq!(app.os_image_hash, vec![0x05; 32]);
        assert_eq!(app.gateway_app_id, "gw");
        // The env key is the app's: its public key is what the KMS publishes for this app-id.
        let env_key = app.env_crypt_key.as_ref().unwrap();
        assert_eq!(
            cvm_keys::kdf::env_public_key(env_key),
            keys.env_public_key(&APP_ID).unwrap()
        );
        // The k256 app key is signed by the KMS's k256 root.
        let app_public = cvm_keys::kdf::k256_public_key(app.k256_key.expose()).unwrap();
        let signer = cvm_keys::kdf::recover_keccak256_signer(
            &cvm_keys::kdf::kms_signed_message(b"dstack-kms-issued", &APP_ID, &app_public),
            &app.k256_signature,
        )
        .unwrap();
        assert_eq!(signer, keys.k256_public_key().unwrap());
        // key-provider event carries the root key id; os-image-hash comes first.
        let post = app.key_events(Default::default());
        assert_eq!(post[0].name, "os-image-hash");
        assert_eq!(
            post[1].payload,
            format!(r#"{{"name":"kms","id":"{pin}"}}"#).into_bytes()
        );
        // An env encrypted by a client with a fresh X25519 key decrypts.
        let plaintext = cvm_keys::env::env_plaintext(&[("TOKEN", "abc"), ("MODE", "prod")]);
        let blob =
            cvm_keys::env::encrypt_blob(&keys.env_public_key(&APP_ID).unwrap(), plaintext.expose())
                .unwrap();
        let allowed = vec!["TOKEN".to_owned(), "MODE".to_owned()];
        let env = cvm_keys::env::decrypt_env(env_key, Some(&blob), &allowed, DisallowedEnv::Reject)
            .unwrap();
        assert_eq!(env.names(), ["TOKEN", "MODE"]);
        // Tampered blob.
        let mut tampered = blob.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x80;
        assert_eq!(
            cvm_keys::env::decrypt_env(env_key, Some(&tampered), &allowed, DisallowedEnv::Reject),
            Err(EnvError::DecryptEnv)
        );
        // A name outside allowed_envs.
        assert_eq!(
            cvm_keys::env::decrypt_env(env_key, Some(&blob), &allowed[..1], DisallowedEnv::Reject),
            Err(EnvError::NameNotAllowed {
                name: "MODE".into()
            })
        );
        // The KMS's own view of this app's secrets is what the guest got.
        let secrets = keys.app_secrets(&APP_ID, &INSTANCE_ID).unwrap();
        assert_eq!(secrets[0].expose(), &app.disk_crypt_key.expose().to_vec());
        assert_eq!(secrets[1].expose(), &env_key.expose().to_vec());
        assert_eq!(secrets[2].expose(), &app.k256_key.expose().to_vec());
        assert!(test_kms::leaks_any(
            &format!("x {} y", hex::encode_upper(app.k256_key.expose())),
            &secrets
        ));
        // Secrets never show in Debug (nor in any error text of the failures above).
        assert!(!test_kms::leaks_any(&format!("{app:?} {env:?}"), &secrets));
        let debug = format!("{app:?}");
        assert!(!debug.contains(&hex::encode(app.disk_crypt_key.expose())));
        assert!(!debug.contains(&hex::encode(env_key.expose())));
        // A second boot of the same app and instance gets the same disk key.
        let (mut tee2, events2) = booted_tee();
        drop(handle);
        let (_, handle2) = {
            let policy = Policy {
                allowed_compose_hashes: None,
                trust: QuoteTrust::Root(tee2.insecure_root_certificate_der().unwrap().to_vec()),
                os_image_hash: None,
                allowed_os_image_hashes: None,
                gateway_app_id: String::new(),
            };
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            (
                (),
                test_kms::start(Arc::clone(&keys), policy, listener).unwrap(),
            )
        };
        let urls2 = vec![handle2.url()];
        let again = request_app_keys(
            &mut TlsTransport::default(),
            &mut tee2,
            &events2,
            &request(&urls2, ""),
            &mut sleeper,
        )
        .unwrap();
        assert_eq!(again.disk_crypt_key.expose(), app.disk_crypt_key.expose());
        // os_image_hash from vm_config when the KMS has none configured.
        assert_eq!(again.os_image_hash, vec![7; 32]);
    }

    #[test]
    fn compose_hash_not_allowed_is_refused_once() {
        let (mut tee, events) = booted_tee();
        let (_, handle) = kms(&tee, Some(vec![[0; 32]]));
        let urls = vec![handle.url()];
        let mut sleeper = RecordingSleeper::default();
        let err = request_app_keys(
            &mut TlsTransport::default(),
            &mut tee,
            &events,
            &request(&urls, ""),
            &mut sleeper,
        )
        .unwrap_err();
        let KmsError::AllKmsFailed { failures } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(failures.len(), 1, "a refusal is not retried: {err}");
        match &failures[0] {
            KmsError::Refused {
                method, message, ..
            } => {
                assert_eq!(*method, "GetAppKey");
                assert!(message.contains("compose hash c0c0"), "{message}");
                assert!(message.contains("not allowed"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(sleeper.0.is_empty());
        assert_eq!(methods(&handle)[1], ("GetAppKey".to_owned(), 400));
    }

    /// The image the TD booted: `os_image_hash` 07…07 (what `request`'s vm_config claims) with
    /// the TD's own MRTD and RTMR0-2.
    fn booted_image(tee: &mut InsecureSimulatedTee) -> AllowedOsImage {
        let quote = measure::quote::Quote::parse(&tee.quote(&[0; 64]).unwrap()).unwrap();
        let body = quote.body;
        let register = |index| *body.rtmrs.register(index);
        AllowedOsImage {
            os_image_hash: [7; 32],
            mrtd: body.mr_td,
            rtmr0: Some(register(measure::rtmr::RtmrIndex::R0)),
            rtmr1: register(measure::rtmr::RtmrIndex::R1),
            rtmr2: register(measure::rtmr::RtmrIndex::R2),
        }
    }

    /// `GetAppKey` against a KMS that allows only `images`; the refusal text on failure.
    fn app_key_with_images(
        tee: &mut InsecureSimulatedTee,
        events: &[RuntimeEvent],
        images: Vec<AllowedOsImage>,
    ) -> Result<Vec<u8>, String> {
        let keys = Arc::new(KmsKeys::generate(&["127.0.0.1".into()]).unwrap());
        let policy = Policy {
            allowed_compose_hashes: None,
            trust: QuoteTrust::Root(tee.insecure_root_certificate_der().unwrap().to_vec()),
            os_image_hash: Some(vec![0x05; 32]),
            allowed_os_image_hashes: Some(images),
            gateway_app_id: String::new(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let handle = test_kms::start(keys, policy, listener).unwrap();
        let urls = vec![handle.url()];
        let result = request_app_keys(
            &mut TlsTransport::default(),
            tee,
            events,
            &request(&urls, ""),
            &mut RecordingSleeper::default(),
        );
        match result {
            Ok(app) => Ok(app.os_image_hash),
            Err(KmsError::AllKmsFailed { failures }) => match &failures[..] {
                [KmsError::Refused { message, .. }] => Err(message.clone()),
                other => panic!("{other:?}"),
            },
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn os_image_allow_list_accepts_the_booted_image() {
        let (mut tee, events) = booted_tee();
        let image = booted_image(&mut tee);
        // The verified hash is returned (and measured as os-image-hash), not the configured one.
        assert_eq!(
            app_key_with_images(&mut tee, &events, vec![image.clone()]),
            Ok(vec![7; 32])
        );
        // RTMR0 unchecked (dstack's lite verification) still accepts.
        let lite = AllowedOsImage {
            rtmr0: None,
            ..image
        };
        assert_eq!(
            app_key_with_images(&mut tee, &events, vec![lite]),
            Ok(vec![7; 32])
        );
    }

    #[test]
    fn os_image_allow_list_refuses_other_images_and_other_boots() {
        let (mut tee, events) = booted_tee();
        let image = booted_image(&mut tee);
        let other_hash = AllowedOsImage {
            os_image_hash: [8; 32],
            ..image.clone()
        };
        let message = app_key_with_images(&mut tee, &events, vec![other_hash]).unwrap_err();
        assert!(
            message.contains(&format!(
                "OS image {} is not allowed",
                hex::encode([7u8; 32])
            )),
            "{message}"
        );
        let mut other_kernel = image.clone();
        other_kernel.rtmr1.0[0] ^= 1;
        let message = app_key_with_images(&mut tee, &events, vec![other_kernel]).unwrap_err();
        assert!(
            message.contains("was not booted from OS image 0707") && message.contains("RTMR1 is"),
            "{message}"
        );
        let mut other_firmware = image;
        other_firmware.mrtd.0[47] ^= 1;
        let message = app_key_with_images(&mut tee, &events, vec![other_firmware]).unwrap_err();
        assert!(message.contains("MRTD is"), "{message}");
        // Nothing allowed: every image is refused.
        let message = app_key_with_images(&mut tee, &events, Vec::new()).unwrap_err();
        assert!(message.contains("is not allowed"), "{message}");
    }

    #[test]
    fn allowed_os_image_reads_cvm_measure_expected_json() {
        let json = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../measurements/testdata/expected/synthetic-q35-2g.json"
        ))
        .unwrap();
        let image = AllowedOsImage::from_expected_json([1; 32], &json).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(image.mrtd.to_string(), value["mrtd"].as_str().unwrap());
        assert_eq!(
            image.rtmr2.to_string(),
            value["rtmr2"]["value"].as_str().unwrap()
        );
        assert!(image.rtmr0.is_some());
        let missing = AllowedOsImage::from_expected_json([1; 32], "{}");
        assert_eq!(
            missing,
            Err("expected measurements have no mrtd".to_owned())
        );
    }

    #[test]
    fn kms_root_other_than_pinned_key_provider_id_is_refused_before_quoting() {
        let (mut tee, events) = booted_tee();
        let (_, handle) = kms(&tee, None);
        let other = KmsKeys::generate(&[]).unwrap();
        let urls = vec![handle.url()];
        let pin = other.key_provider_id();
        let err = request_app_keys(
            &mut TlsTransport::default(),
            &mut tee,
            &events,
            &request(&urls, &pin),
            &mut RecordingSleeper::default(),
        )
        .unwrap_err();
        let KmsError::AllKmsFailed { failures } = &err else {
            panic!("{err:?}")
        };
        assert!(
            matches!(
                &failures[..],
                [KmsError::KeyProviderPin { source, .. }]
                    if matches!(**source, cvm_keys::provider::ProviderError::KeyProviderMismatch { .. })
            ),
            "{err}"
        );
        // The guest never sent its attestation.
        assert_eq!(methods(&handle), [("GetTempCaCert".to_owned(), 200)]);
    }

    #[test]
    fn kms_down_is_retried_with_backoff_then_fails() {
        let (mut tee, events) = booted_tee();
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let urls = vec![format!("https://127.0.0.1:{port}")];
        let mut sleeper = RecordingSleeper::default();
        let err = request_app_keys(
            &mut TlsTransport::default(),
            &mut tee,
            &events,
            &request(&urls, ""),
            &mut sleeper,
        )
        .unwrap_err();
        let KmsError::AllKmsFailed { failures } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(failures.len(), 3);
        for failure in failures {
            assert!(
                matches!(
                    failure,
                    KmsError::Transport {
                        method: "GetTempCaCert",
                        source: cvm_keys::kms::TransportError::Connect { .. },
                        ..
                    }
                ),
                "{failure:?}"
            );
        }
        assert_eq!(
            sleeper.0,
            [Duration::from_millis(100), Duration::from_millis(150)]
        );
        let text = err.to_string();
        assert!(text.contains("after 3 attempts"), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    }

    #[test]
    fn second_url_serves_when_first_is_down() {
        let (mut tee, events) = booted_tee();
        let (_, handle) = kms(&tee, None);
        let down = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let urls = vec![format!("https://127.0.0.1:{down}"), handle.url()];
        let keys = request_app_keys(
            &mut TlsTransport::default(),
            &mut tee,
            &events,
            &request(&urls, ""),
            &mut RecordingSleeper::default(),
        )
        .unwrap();
        assert_eq!(keys.kms_url, handle.url());
    }

    #[test]
    fn quote_from_an_untrusted_simulated_root_is_refused() {
        let (mut tee, events) = booted_tee();
        let other = InsecureSimulatedTee::try_new().unwrap();
        let (_, handle) = kms(&other, None);
        let urls = vec![handle.url()];
        let err = request_app_keys(
            &mut TlsTransport::default(),
            &mut tee,
            &events,
            &request(&urls, ""),
            &mut RecordingSleeper::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("quote rejected"), "{err}");
    }

    #[test]
    fn server_without_kms_rpc_usage_or_from_another_root_is_not_trusted() {
        use cvm_keys::kms::{KmsTransport as _, KmsUrl, TlsMode};
        let (tee, _) = booted_tee();
        let (_, handle) = kms(&tee, None);
        let url = KmsUrl::parse(&handle.url()).unwrap();
        // The server's chain does not lead to this other root: the handshake fails.
        let other = KmsKeys::generate(&[]).unwrap();
        let other_root = cvm_keys::kms::pem_block(&other.root_ca_pem, "CERTIFICATE").unwrap();
        let client = cvm_keys::ratls::CertSpec {
            subject: "c",
            ..Default::default()
        }
        .self_signed()
        .unwrap();
        let key = client.key_der().unwrap();
        let err = TlsTransport::default()
            .post(
                &url,
                "/prpc/KMS.GetAppKey?json",
                b"{}",
                TlsMode::Mutual {
                    root_ca_der: &other_root,
                    client_cert_der: &client.cert_der,
                    client_key_der: &key,
                },
            )
            .unwrap_err();
        assert!(
            matches!(err, cvm_keys::kms::TransportError::Tls { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn server_certificate_without_kms_rpc_usage_is_refused() {
        let (mut tee, events) = booted_tee();
        for usage in [None, Some("app:ca")] {
            let keys =
                Arc::new(KmsKeys::generate_with_rpc_usage(&["127.0.0.1".into()], usage).unwrap());
            let policy = Policy {
                allowed_compose_hashes: None,
                trust: QuoteTrust::Root(tee.insecure_root_certificate_der().unwrap().to_vec()),
                os_image_hash: None,
                allowed_os_image_hashes: None,
                gateway_app_id: String::new(),
            };
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let handle = test_kms::start(keys, policy, listener).unwrap();
            let urls = vec![handle.url()];
            let mut req = request(&urls, "");
            req.retry.rounds = 1;
            let err = request_app_keys(
                &mut TlsTransport::default(),
                &mut tee,
                &events,
                &req,
                &mut RecordingSleeper::default(),
            )
            .unwrap_err();
            let chain = cvm_keys::error_chain(&err);
            assert!(chain.contains("kms:rpc"), "{chain}");
            // The server never saw a GetAppKey request completed.
            assert_eq!(methods(&handle), [("GetTempCaCert".to_owned(), 200)]);
        }
    }

    #[test]
    fn wrong_launch_token_stops_before_keys() {
        let hash = hex::encode(cvm_keys::env::launch_token_hash(
            b"right-token-0123456789abcdef0123456789",
        ));
        let config = br#"{"dstack":{"launch_token":"wrong-token-0123456789abcdef0123456789"}}"#;
        assert_eq!(
            cvm_keys::env::check_launch_token(Some(&hash), Some(config)),
            Err(LaunchTokenError::Mismatch)
        );
    }
}
