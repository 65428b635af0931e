//! App keys: dstack KDF, encrypted environment, RA-TLS and the KMS protocol

#![forbid(unsafe_code)]

pub mod app_sign;
pub mod env;
pub mod gateway;
pub mod kdf;
pub mod kms;
pub mod provider;
pub mod ratls;
pub mod secret;
pub mod sign_cert;
pub mod stage;
pub mod transport;

/// An error and its sources on one line, `outer: inner: …` (secrets are never in errors): the
/// workspace's one chain printer, [`init_core::error_chain::one_line`].
pub use init_core::error_chain::one_line as error_chain;

#[cfg(test)]
mod tests {
    use init_core::tee::{QuoteSource as _, Rtmr as _};

    /// Deterministic xorshift64, so the smoke test needs no dependency and never flakes.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// Every parser of untrusted bytes (KMS answers, certificates, env blobs, keys files) on
    /// random mutations of real inputs: none may panic.
    #[test]
    fn parsers_survive_random_mutations() {
        let ca = crate::ratls::CertSpec {
            subject: "ca",
            ca_path_len: Some(0),
            ..Default::default()
        }
        .self_signed()
        .unwrap();
        let signer =
            crate::ratls::CaSigner::from_pem("ca", &ca.cert_pem, ca.key_pem.expose()).unwrap();
        let mut tee = cvm_sim_tee::InsecureSimulatedTee::try_new().unwrap();
        let events = tee.pre_extended_events();
        let cert = crate::ratls::client_certificate(&signer, &mut tee, &events, 0).unwrap();
        let quote = tee.quote(&[0; 64]).unwrap();
        let env_key = crate::secret::Secret::new([0x42; 32]);
        let env_blob = crate::env::encrypt_blob(
            &crate::kdf::env_public_key(&env_key),
            crate::env::env_plaintext(&[("A", "b")]).expose(),
        )
        .unwrap();
        let http = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n2\r\n:1\r\n1\r\n}\r\n0\r\n\r\n";
        let keys_json = br#"{"k256_key":"0101010101010101010101010101010101010101010101010101010101010101","k256_signature":"00","ca_cert":""}"#;
        let csr = crate::sign_cert::CertSigningRequest {
            confirm: crate::sign_cert::CONFIRM.into(),
            pubkey: cert.cert_der[..91].to_vec(),
            config: crate::sign_cert::CertConfig {
                subject: "s".into(),
                subject_alt_names: vec!["a".into()],
                not_after: Some(1),
                ..Default::default()
            },
            attestation: crate::sign_cert::TdxAttestation {
                quote: quote[..256].to_vec(),
                event_log: events
                    .iter()
                    .map(crate::sign_cert::TdxEvent::runtime)
                    .collect(),
                ..Default::default()
            },
        }
        .encode();
        let seeds: [&[u8]; 7] = [
            &cert.cert_der,
            &quote[..2048],
            &env_blob,
            http,
            keys_json,
            br#"{"env":[{"key":"A","value":"b"}]}"#,
            &csr,
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..1500 {
            let seed = seeds[round % seeds.len()];
            let mut bytes = seed.to_vec();
            for _ in 0..(1 + next(&mut state) % 8) {
                let i = usize::try_from(next(&mut state) % bytes.len() as u64).unwrap();
                bytes[i] = u8::try_from(next(&mut state) & 0xFF).unwrap();
            }
            let cut = usize::try_from(next(&mut state) % (bytes.len() as u64 + 1)).unwrap();
            for input in [&bytes[..], &bytes[..cut]] {
                if let Ok(parsed) = crate::ratls::RaTlsCert::parse(input) {
                    let _ = parsed.verify_binding();
                }
                let _ = crate::env::decrypt_blob(&env_key, input);
                if let Ok(parsed) = crate::sign_cert::CertSigningRequest::decode(input) {
                    let _ = parsed.verify(input);
                    let _ = parsed.attestation.runtime_events();
                }
                let _ = crate::env::parse_env(input, &[], crate::env::DisallowedEnv::Skip);
                let _ = crate::transport::parse_response(input);
                let _ = crate::kms::GuestKeys::from_appkeys_json(input);
                let text = String::from_utf8_lossy(input);
                let _ = crate::kms::KmsUrl::parse(&text);
                let _ = crate::kms::certificate_der_and_spki(&text);
                let _ = crate::env::check_launch_token(Some(&"0".repeat(64)), Some(input));
            }
        }
    }
}
