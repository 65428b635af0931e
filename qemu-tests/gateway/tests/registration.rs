//! The guest's `RegisterCvm` client (`cvm_keys::gateway`, over the real rustls transport)
//! against the test gateway on loopback: a client chain from the test KMS's app CA is
//! accepted and recorded with its app id; a gateway whose certificate carries another app id
//! than the KMS's `gateway_app_id` is refused by the client; a client without a chain to the
//! KMS root is refused by the gateway.

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, UdpSocket};

    use cvm_keys::gateway::{GatewayClientError, GatewayCredentials};
    use cvm_keys::ratls::CertSpec;
    use cvm_keys::sign_cert::TlsKey;
    use cvm_keys::transport::TlsTransport;
    use init_core::gateway::RegisterCvmRequest;
    use test_kms::KmsKeys;

    fn client_chain(keys: &KmsKeys, app_id: &[u8]) -> TlsKey {
        let (app_ca_pem, app_ca) = keys.app_ca(app_id).unwrap();
        let leaf = CertSpec {
            subject: "dstack-guest-agent",
            app_id: Some(app_id),
            client_auth: true,
            ..CertSpec::default()
        }
        .signed_by(&app_ca)
        .unwrap();
        TlsKey {
            key_pem: leaf.key_pem,
            certificate_chain: vec![leaf.cert_pem, app_ca_pem, keys.root_ca_pem.clone()],
        }
    }

    fn request() -> RegisterCvmRequest {
        let compose: init_core::app_compose::AppCompose = serde_json::from_str(
            r#"{"manifest_version":2,"name":"a","port_policy":{"ports":[{"port":8080,"pp":false}]}}"#,
        )
        .unwrap();
        RegisterCvmRequest::new(&[5; 32], &compose)
    }

    #[test]
    fn registers_over_ra_tls_and_checks_both_identities() {
        let keys = KmsKeys::generate(&[]).unwrap();
        let gateway = test_gateway::start(
            &keys,
            &test_gateway::DEFAULT_APP_ID,
            TcpListener::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            "10.0.2.2:51820",
        )
        .unwrap();
        let url = format!("https://{}", gateway.https_addr());
        let app_id = [0xa1u8; 20];
        let mut transport = TlsTransport::default();

        let chain = client_chain(&keys, &app_id);
        let creds = GatewayCredentials::new(
            &chain,
            &keys.root_ca_pem,
            &test_gateway::app_id_hex(&test_gateway::DEFAULT_APP_ID),
            u64::MAX,
        )
        .unwrap();
        let tunnel = creds.register(&mut transport, &url, &request()).unwrap();
        assert_eq!(tunnel.client_ip, test_gateway::CLIENT_IP);
        assert_eq!(tunnel.peers.len(), 1);
        assert_eq!(tunnel.peers[0].public_key, gateway.wg_public_key());
        assert_eq!(tunnel.peers[0].ip, test_gateway::GATEWAY_IP);
        assert_eq!(
            (
                tunnel.peers[0].endpoint_host.as_str(),
                tunnel.peers[0].endpoint_port
            ),
            ("10.0.2.2", 51820)
        );
        let seen = gateway.registrations();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].app_id, hex::encode(app_id));
        assert_eq!(seen[0].client_public_key, [5; 32]);
        assert_eq!(seen[0].port_policy["ports"][0]["port"], 8080);
        // The leaf presented is recorded (the demo tells a renewed certificate by it).
        assert_eq!(
            Some(&seen[0].client_cert),
            cvm_keys::kms::pem_block(&chain.certificate_chain[0], "CERTIFICATE").as_ref()
        );

        // The KMS names another gateway: the client refuses this one's certificate.
        let wrong = GatewayCredentials::new(
            &client_chain(&keys, &app_id),
            &keys.root_ca_pem,
            &hex::encode([0x77u8; 20]),
            u64::MAX,
        )
        .unwrap();
        let err = wrong
            .register(&mut transport, &url, &request())
            .unwrap_err();
        assert!(
            matches!(err, GatewayClientError::Transport { .. })
                && cvm_keys::error_chain(&err).contains("gateway app id"),
            "{}",
            cvm_keys::error_chain(&err)
        );

        // A client chain from another KMS: the gateway refuses the handshake.
        let other = KmsKeys::generate(&[]).unwrap();
        let stranger = GatewayCredentials::new(
            &client_chain(&other, &app_id),
            &keys.root_ca_pem,
            "any",
            u64::MAX,
        )
        .unwrap();
        stranger
            .register(&mut transport, &url, &request())
            .unwrap_err();
        assert_eq!(gateway.registrations().len(), 1);
        gateway.stop();
    }
}
