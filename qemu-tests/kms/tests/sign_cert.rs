//! cvm-keys' `SignCert` client (what the guest API's `GetTlsKey` uses) against the test KMS on
//! loopback: a chain that verifies to the app CA and the KMS root, and the KMS refusals.

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::time::Duration;

    use cvm_keys::kms::{
        GuestKeys, HttpResponse, KeyRequest, KmsTransport, KmsUrl, RetryPolicy, Sleeper, TlsMode,
        TransportError, request_app_keys,
    };
    use cvm_keys::ratls::RaTlsCert;
    use cvm_keys::sign_cert::{
        CertConfig, CertSigningRequest, KmsAccess, SignCertError, request_tls_key, verify_chain,
    };
    use cvm_keys::transport::TlsTransport;
    use cvm_sim_tee::InsecureSimulatedTee;
    use init_core::tee::{Rtmr as _, RtmrIndex, RuntimeEvent};
    use test_kms::{KmsHandle, KmsKeys, Policy, QuoteTrust};

    const COMPOSE_HASH: [u8; 32] = [0xC0; 32];
    const APP_ID: [u8; 20] = [0xA1; 20];
    /// Pinned "now" for certificate validity checks.
    const NOW: u64 = 1_800_000_000;

    struct NoSleep;

    impl Sleeper for NoSleep {
        fn sleep(&mut self, _: Duration) {}
    }

    fn booted_tee(app_id: [u8; 20]) -> (InsecureSimulatedTee, Vec<RuntimeEvent>) {
        let mut tee = InsecureSimulatedTee::try_new().unwrap();
        let mut events = tee.pre_extended_events();
        for (name, payload) in [
            ("system-preparing", vec![]),
            ("app-id", app_id.to_vec()),
            ("compose-hash", COMPOSE_HASH.to_vec()),
            ("instance-id", vec![0x1D; 20]),
            ("boot-mr-done", vec![]),
            ("system-ready", vec![]),
        ] {
            let event = RuntimeEvent::new(name, payload);
            tee.extend_rtmr(RtmrIndex::R3, &event.digest()).unwrap();
            events.push(event);
        }
        (tee, events)
    }

    fn start(
        keys: &Arc<KmsKeys>,
        tee: &InsecureSimulatedTee,
        allowed: Option<Vec<[u8; 32]>>,
    ) -> KmsHandle {
        let policy = Policy {
            allowed_compose_hashes: allowed,
            trust: QuoteTrust::Root(tee.insecure_root_certificate_der().unwrap().to_vec()),
            os_image_hash: Some(vec![0x05; 32]),
            allowed_os_image_hashes: None,
            gateway_app_id: String::new(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        test_kms::start(Arc::clone(keys), policy, listener).unwrap()
    }

    /// Boots, gets app keys from a KMS with `keys`, and reads back what the guest API gets
    /// from `.appkeys.json`.
    fn guest_keys(
        keys: &Arc<KmsKeys>,
        tee: &mut InsecureSimulatedTee,
        events: &[RuntimeEvent],
    ) -> GuestKeys {
        let handle = start(keys, tee, None);
        let urls = vec![handle.url()];
        let app = request_app_keys(
            &mut TlsTransport::default(),
            tee,
            events,
            &KeyRequest {
                kms_urls: &urls,
                vm_config: "{}",
                key_provider_id: "",
                now_unix: NOW,
                retry: RetryPolicy::default(),
            },
            &mut NoSleep,
        )
        .unwrap();
        GuestKeys::from_appkeys_json(app.to_appkeys_json().expose().as_bytes()).unwrap()
    }

    /// `access` pointed at another server with the same keys.
    fn at(access: &KmsAccess, handle: &KmsHandle) -> KmsAccess {
        KmsAccess {
            url: handle.url(),
            ..access.clone()
        }
    }

    fn config() -> CertConfig {
        CertConfig {
            subject: "app.example".into(),
            subject_alt_names: vec!["app.example".into(), "127.0.0.1".into()],
            usage_server_auth: true,
            usage_client_auth: true,
            ext_quote: true,
            ..CertConfig::default()
        }
    }

    #[test]
    fn chain_verifies_to_the_app_ca_and_the_kms_root() {
        let keys = Arc::new(KmsKeys::generate(&["127.0.0.1".into()]).unwrap());
        let (mut tee, events) = booted_tee(APP_ID);
        let guest = guest_keys(&keys, &mut tee, &events);
        let access = guest.kms.clone().unwrap();
        let handle = start(&keys, &tee, Some(vec![COMPOSE_HASH]));
        let access = at(&access, &handle);
        let tls = request_tls_key(
            &mut TlsTransport::default(),
            &mut tee,
            &events,
            &access,
            "{}",
            config(),
            NOW,
        )
        .unwrap();
        let records = handle.requests();
        assert_eq!(records.len(), 1);
        assert_eq!(
            (records[0].method.as_str(), records[0].status),
            ("SignCert", 200)
        );
        assert_eq!(records[0].detail, format!("app-id {}", hex::encode(APP_ID)));

        let chain = &tls.certificate_chain;
        assert_eq!(chain.len(), 3);
        assert_eq!(chain[2], keys.root_ca_pem);
        let der = |pem: &str| cvm_keys::kms::certificate_der_and_spki(pem).unwrap();
        // The middle certificate is the app CA: the derived key, usage app:ca, the app-id.
        let (app_ca_der, app_ca_spki) = der(&chain[1]);
        assert_eq!(app_ca_spki, keys.app_ca_spki_der(&APP_ID).unwrap());
        let app_ca = RaTlsCert::parse(&app_ca_der).unwrap();
        assert!(app_ca.has_usage("app:ca"));
        assert_eq!(app_ca.app_id.as_deref(), Some(&APP_ID[..]));
        // The leaf: our key, app:custom, the app-id, the attestation that binds the key.
        let key = p256::SecretKey::from_sec1_pem(tls.key_pem.expose())
            .or_else(|_| {
                use p256::pkcs8::DecodePrivateKey as _;
                p256::SecretKey::from_pkcs8_pem(tls.key_pem.expose())
            })
            .unwrap();
        let key_spki = cvm_keys::kdf::p256_spki_der(&key.public_key());
        let (leaf_der, leaf_spki) = der(&chain[0]);
        assert_eq!(leaf_spki, key_spki);
        let leaf = RaTlsCert::parse(&leaf_der).unwrap();
        assert!(leaf.has_usage("app:custom"));
        assert_eq!(leaf.app_id.as_deref(), Some(&APP_ID[..]));
        let (_, attested) = leaf.verify_binding().unwrap();
        assert_eq!(attested, events);
        // RFC 5280 path validation leaf → app CA → KMS root at the pinned time.
        verify_chain(chain, &der(&keys.root_ca_pem).0, &key_spki, NOW).unwrap();
        // …and it fails against another root, or for another key.
        let other = KmsKeys::generate(&[]).unwrap();
        verify_chain(chain, &der(&other.root_ca_pem).0, &key_spki, NOW).unwrap_err();
        verify_chain(chain, &der(&keys.root_ca_pem).0, &app_ca_spki, NOW).unwrap_err();
        // Leaf after its notAfter (now + 10 years by default) does not verify.
        verify_chain(chain, &der(&keys.root_ca_pem).0, &key_spki, 4_000_000_000).unwrap_err();
        // The key never shows in Debug.
        assert!(!format!("{tls:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn validity_and_names_are_as_requested() {
        let keys = Arc::new(KmsKeys::generate(&["127.0.0.1".into()]).unwrap());
        let (mut tee, events) = booted_tee(APP_ID);
        let access = guest_keys(&keys, &mut tee, &events).kms.unwrap();
        let handle = start(&keys, &tee, None);
        let mut cfg = config();
        cfg.not_before = Some(NOW - 10);
        cfg.not_after = Some(NOW + 3600);
        cfg.ext_quote = false;
        let tls = request_tls_key(
            &mut TlsTransport::default(),
            &mut tee,
            &events,
            &at(&access, &handle),
            "",
            cfg,
            NOW,
        )
        .unwrap();
        use der::Decode as _;
        let leaf_der = cvm_keys::kms::pem_block(&tls.certificate_chain[0], "CERTIFICATE").unwrap();
        let leaf = x509_cert::Certificate::from_der(&leaf_der).unwrap();
        let validity = leaf.tbs_certificate().validity();
        assert_eq!(validity.not_before.to_unix_duration().as_secs(), NOW - 10);
        assert_eq!(validity.not_after.to_unix_duration().as_secs(), NOW + 3600);
        assert!(
            leaf.tbs_certificate()
                .subject()
                .to_string()
                .contains("CN=app.example")
        );
        assert!(RaTlsCert::parse(&leaf_der).unwrap().quote.is_none());
    }

    #[test]
    fn kms_refuses_an_app_it_does_not_allow() {
        let keys = Arc::new(KmsKeys::generate(&["127.0.0.1".into()]).unwrap());
        let (mut tee, events) = booted_tee(APP_ID);
        let access = guest_keys(&keys, &mut tee, &events).kms.unwrap();
        let handle = start(&keys, &tee, Some(vec![[0x99; 32]]));
        let err = request_tls_key(
            &mut TlsTransport::default(),
            &mut tee,
            &events,
            &at(&access, &handle),
            "",
            config(),
            NOW,
        )
        .unwrap_err();
        match &err {
            SignCertError::Refused {
                status, message, ..
            } => {
                assert_eq!(*status, 400);
                assert!(message.contains("compose hash"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Forwards to rustls but rewrites the JSON request body first.
    struct Tamper<F: FnMut(&mut serde_json::Value)>(TlsTransport, F);

    impl<F: FnMut(&mut serde_json::Value)> KmsTransport for Tamper<F> {
        fn post(
            &mut self,
            url: &KmsUrl,
            path: &str,
            body: &[u8],
            tls: TlsMode<'_>,
        ) -> Result<HttpResponse, TransportError> {
            let mut json: serde_json::Value = serde_json::from_slice(body).unwrap();
            (self.1)(&mut json);
            self.0.post(url, path, json.to_string().as_bytes(), tls)
        }
    }

    fn refused_with(tamper: impl FnMut(&mut serde_json::Value)) -> String {
        let keys = Arc::new(KmsKeys::generate(&["127.0.0.1".into()]).unwrap());
        let (mut tee, events) = booted_tee(APP_ID);
        let access = guest_keys(&keys, &mut tee, &events).kms.unwrap();
        let handle = start(&keys, &tee, None);
        let err = request_tls_key(
            &mut Tamper(TlsTransport::default(), tamper),
            &mut tee,
            &events,
            &at(&access, &handle),
            "",
            config(),
            NOW,
        )
        .unwrap_err();
        let records = handle.requests();
        assert_eq!(
            (records[0].method.as_str(), records[0].status),
            ("SignCert", 400)
        );
        match err {
            SignCertError::Refused {
                status: 400,
                message,
                ..
            } => message,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_csr_signature_is_refused() {
        let message = refused_with(|json| {
            let mut sig = hex::decode(json["signature"].as_str().unwrap()).unwrap();
            let last = sig.len() - 1;
            sig[last] ^= 1;
            json["signature"] = hex::encode(sig).into();
        });
        assert!(
            message.contains("failed to verify csr signature"),
            "{message}"
        );
    }

    #[test]
    fn csr_changed_after_signing_is_refused() {
        let message = refused_with(|json| {
            let bytes = hex::decode(json["csr"].as_str().unwrap()).unwrap();
            let mut csr = CertSigningRequest::decode(&bytes).unwrap();
            csr.config.subject_alt_names.push("evil.example".into());
            json["csr"] = hex::encode(csr.encode()).into();
        });
        assert!(
            message.contains("failed to verify csr signature"),
            "{message}"
        );
    }

    #[test]
    fn csr_for_a_key_the_quote_does_not_bind_is_refused() {
        // Re-signed by another key: the signature verifies, the attestation does not bind it.
        let message = refused_with(|json| {
            let bytes = hex::decode(json["csr"].as_str().unwrap()).unwrap();
            let mut csr = CertSigningRequest::decode(&bytes).unwrap();
            let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            use rcgen::PublicKeyData as _;
            csr.pubkey = other.subject_public_key_info();
            json["csr"] = hex::encode(csr.encode()).into();
            json["signature"] = hex::encode(csr.sign(&other.serialize_der()).unwrap()).into();
        });
        assert!(message.contains("does not bind"), "{message}");
    }

    #[test]
    fn malformed_csr_and_wrong_version_are_refused() {
        let message = refused_with(|json| json["csr"] = "00".into());
        assert!(message.contains("failed to parse csr"), "{message}");
        let message = refused_with(|json| json["api_version"] = 1.into());
        assert!(message.contains("unsupported API version 1"), "{message}");
    }
}
