//! The dstack-gateway `RegisterCvm` call over RA-TLS, guest side (the pure request/reply
//! logic is `init_core::gateway`; I/O is behind [`KmsTransport`]).
//!
//! As dstack's guest (`dstack-util` `GatewayContext`): the client certificate is a `SignCert`
//! chain from the KMS (subject `dstack-guest-agent`, clientAuth, app-info extension, valid 10
//! days, [`client_cert_config`]); the gateway's server certificate must chain to the KMS root
//! CA and carry the app id the KMS names as `gateway_app_id` (`any`: not checked). The URLs
//! are tried in [`init_core::gateway::order_urls`] order; every failure is kept, typed.
//!
//! Renewal (the refresher, after boot): the same certificate request, as the guest API's
//! `GetTlsKey` arguments ([`get_tls_key_body`]; the guest API owns the event log after boot,
//! so only it can quote over the current RTMR3), and its reply back into a [`TlsKey`]
//! ([`parse_get_tls_key_reply`]).

use init_core::gateway::{
    CERT_SUBJECT, GatewayError, GatewayTrust, MAX_RESPONSE_LEN, RegisterCvmRequest, TunnelConfig,
    order_urls, parse_response, register_path,
};

use crate::kms::{KmsError, KmsTransport, KmsUrl, TlsMode, TransportError, pem_block};
use crate::secret::{Secret, SecretBytes};
use crate::sign_cert::{CertConfig, TlsKey};

/// Errors of registering with a gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayClientError {
    /// A `gateway_urls` entry is not `https://host[:port][/path]`.
    #[error("gateway URL")]
    Url(#[source] KmsError),
    /// The KMS's `gateway_app_id` is unusable.
    #[error("gateway identity")]
    Trust(#[source] GatewayError),
    /// `gateway_app_id` is not hex.
    #[error("gateway_app_id {value:?} is not hex")]
    AppIdHex { value: String },
    /// The client certificate or key from `SignCert` is not PEM.
    #[error("the gateway client certificate chain or key is not PEM")]
    ClientPem,
    /// The KMS root CA is not PEM.
    #[error("the KMS root CA is not a PEM certificate")]
    RootCa,
    /// Connecting, TLS or HTTP failed.
    #[error("RegisterCvm at {url}")]
    Transport {
        url: String,
        #[source]
        source: TransportError,
    },
    /// The gateway answered with an error status.
    #[error("RegisterCvm at {url} was refused with HTTP {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    /// The reply is not a usable registration.
    #[error("RegisterCvm at {url}")]
    Reply {
        url: String,
        #[source]
        source: GatewayError,
    },
    /// The guest API's `GetTlsKey` reply is not a key and a certificate chain.
    #[error("the GetTlsKey reply is not a key and a certificate chain")]
    TlsKeyReply(#[source] serde_json::Error),
    /// The `GetTlsKey` reply's chain is empty or too long.
    #[error(
        "the GetTlsKey reply has {count} certificates (1..={} allowed)",
        crate::sign_cert::MAX_CHAIN_LEN
    )]
    TlsKeyChain { count: usize },
    /// No URL accepted the registration.
    #[error("no gateway accepted the registration after {} attempts: {}", failures.len(), summary(failures))]
    AllFailed { failures: Vec<GatewayClientError> },
}

fn summary(failures: &[GatewayClientError]) -> String {
    failures
        .iter()
        .map(|f| crate::error_chain(f))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The `SignCert` request for the gateway client certificate valid until `not_after`.
pub fn client_cert_config(not_after: u64) -> CertConfig {
    CertConfig {
        subject: CERT_SUBJECT.to_owned(),
        usage_client_auth: true,
        ext_app_info: true,
        not_after: Some(not_after),
        ..CertConfig::default()
    }
}

/// The guest API `GetTlsKey` request body (dstack `GetTlsKeyArgs`, JSON) for the certificate
/// `config` describes (`usage_ra_tls` is `ext_quote`, `with_app_info` is `ext_app_info`;
/// `GetTlsKey` has no organization, so `org_name` is not carried: the gateway's has none).
pub fn get_tls_key_body(config: &CertConfig) -> Vec<u8> {
    let body = serde_json::json!({
        "subject": config.subject,
        "alt_names": config.subject_alt_names,
        "usage_ra_tls": config.ext_quote,
        "usage_server_auth": config.usage_server_auth,
        "usage_client_auth": config.usage_client_auth,
        "not_before": config.not_before,
        "not_after": config.not_after,
        "with_app_info": config.ext_app_info,
    });
    // A JSON value of strings, booleans and integers always serializes.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The `GetTlsKey` reply body; the key is zeroized on drop.
#[derive(serde::Deserialize)]
struct GetTlsKeyReply {
    key: String,
    certificate_chain: Vec<String>,
}

impl Drop for GetTlsKeyReply {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

/// A `GetTlsKey` reply (`{"key": PEM, "certificate_chain": [PEM, …]}`) as a [`TlsKey`]: a
/// chain of 1 to [`crate::sign_cert::MAX_CHAIN_LEN`] certificates (the PEM is checked by
/// [`GatewayCredentials::new`]).
pub fn parse_get_tls_key_reply(body: &[u8]) -> Result<TlsKey, GatewayClientError> {
    let mut reply: GetTlsKeyReply =
        serde_json::from_slice(body).map_err(GatewayClientError::TlsKeyReply)?;
    let count = reply.certificate_chain.len();
    if count == 0 || count > crate::sign_cert::MAX_CHAIN_LEN {
        return Err(GatewayClientError::TlsKeyChain { count });
    }
    Ok(TlsKey {
        key_pem: Secret::new(std::mem::take(&mut reply.key)),
        certificate_chain: std::mem::take(&mut reply.certificate_chain),
    })
}

/// What a registration presents and trusts. The key is zeroized on drop.
pub struct GatewayCredentials {
    root_ca_der: Vec<u8>,
    app_id: Option<Vec<u8>>,
    chain_der: Vec<Vec<u8>>,
    key_der: SecretBytes,
    /// The client certificate's notAfter (Unix seconds).
    pub not_after: u64,
}

impl std::fmt::Debug for GatewayCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayCredentials")
            .field("chain_len", &self.chain_der.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl GatewayCredentials {
    /// From the `SignCert` answer, the KMS root CA (PEM) and the KMS's `gateway_app_id`.
    pub fn new(
        tls: &TlsKey,
        root_ca_pem: &str,
        gateway_app_id: &str,
        not_after: u64,
    ) -> Result<Self, GatewayClientError> {
        let app_id =
            match GatewayTrust::from_kms(gateway_app_id).map_err(GatewayClientError::Trust)? {
                GatewayTrust::Any => None,
                GatewayTrust::AppId(hex_id) => {
                    Some(
                        hex::decode(&hex_id).map_err(|_| GatewayClientError::AppIdHex {
                            value: hex_id.chars().take(80).collect(),
                        })?,
                    )
                }
            };
        let chain_der = tls
            .certificate_chain
            .iter()
            .map(|pem| pem_block(pem, "CERTIFICATE").ok_or(GatewayClientError::ClientPem))
            .collect::<Result<Vec<_>, _>>()?;
        let key_der = Secret::new(
            pem_block(tls.key_pem.expose(), "PRIVATE KEY").ok_or(GatewayClientError::ClientPem)?,
        );
        let root_ca_der =
            pem_block(root_ca_pem, "CERTIFICATE").ok_or(GatewayClientError::RootCa)?;
        Ok(Self {
            root_ca_der,
            app_id,
            chain_der,
            key_der,
            not_after,
        })
    }

    /// Whether the client certificate is still good at `now` with ten minutes to spare
    /// (dstack's `is_cert_valid`).
    pub fn valid_at(&self, now_unix: u64) -> bool {
        now_unix.saturating_add(600) < self.not_after
    }

    /// One `RegisterCvm` at `url`.
    pub fn register(
        &self,
        transport: &mut dyn KmsTransport,
        url: &str,
        request: &RegisterCvmRequest,
    ) -> Result<TunnelConfig, GatewayClientError> {
        let parsed = KmsUrl::parse(url).map_err(GatewayClientError::Url)?;
        // Serializing a key string and a port list cannot fail.
        let body = serde_json::to_vec(request).unwrap_or_default();
        let response = transport
            .post(
                &parsed,
                &register_path(&parsed.base_path),
                &body,
                TlsMode::Gateway {
                    root_ca_der: &self.root_ca_der,
                    app_id: self.app_id.as_deref(),
                    client_chain_der: &self.chain_der,
                    client_key_der: &self.key_der,
                },
            )
            .map_err(|source| GatewayClientError::Transport {
                url: url.to_owned(),
                source,
            })?;
        if response.status != 200 {
            let message = response.refusal_message();
            return Err(GatewayClientError::Refused {
                url: url.to_owned(),
                status: response.status,
                message,
            });
        }
        if response.body.len() > MAX_RESPONSE_LEN {
            return Err(GatewayClientError::Transport {
                url: url.to_owned(),
                source: TransportError::Http {
                    reason: "RegisterCvm reply too large",
                },
            });
        }
        parse_response(&response.body).map_err(|source| GatewayClientError::Reply {
            url: url.to_owned(),
            source,
        })
    }

    /// Registers with the first of `urls` (the last accepting one, `last`, first) that
    /// accepts; returns that URL and the tunnel.
    pub fn register_any(
        &self,
        transport: &mut dyn KmsTransport,
        urls: &[String],
        last: Option<&str>,
        request: &RegisterCvmRequest,
    ) -> Result<(String, TunnelConfig), GatewayClientError> {
        let mut failures = Vec::new();
        for url in order_urls(urls, last) {
            match self.register(transport, url, request) {
                Ok(tunnel) => return Ok((url.to_owned(), tunnel)),
                Err(e) => {
                    log::warn!("gateway: {}", crate::error_chain(&e));
                    failures.push(e);
                }
            }
        }
        Err(GatewayClientError::AllFailed { failures })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::HttpResponse;

    /// URL, path, body, app id checked, client chain length.
    type Seen = (String, String, Vec<u8>, Option<Vec<u8>>, usize);

    struct Scripted {
        answers: Vec<Result<HttpResponse, TransportError>>,
        seen: Vec<Seen>,
    }

    impl KmsTransport for Scripted {
        fn post(
            &mut self,
            url: &KmsUrl,
            path: &str,
            body: &[u8],
            tls: TlsMode<'_>,
        ) -> Result<HttpResponse, TransportError> {
            let TlsMode::Gateway {
                app_id,
                client_chain_der,
                ..
            } = tls
            else {
                panic!("not the gateway TLS mode");
            };
            self.seen.push((
                url.url.clone(),
                path.to_owned(),
                body.to_vec(),
                app_id.map(<[u8]>::to_vec),
                client_chain_der.len(),
            ));
            self.answers.remove(0)
        }
    }

    fn pem(label: &str, bytes: &[u8]) -> String {
        use base64::Engine as _;
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    }

    fn creds(app_id: &str) -> GatewayCredentials {
        let tls = TlsKey {
            key_pem: Secret::new(pem("PRIVATE KEY", b"key")),
            certificate_chain: vec![pem("CERTIFICATE", b"leaf"), pem("CERTIFICATE", b"ca")],
        };
        GatewayCredentials::new(&tls, &pem("CERTIFICATE", b"root"), app_id, 1000).unwrap()
    }

    fn ok_reply() -> HttpResponse {
        let pk = init_core::gateway::encode_key(&[9; 32]);
        HttpResponse {
            status: 200,
            body: format!(
                r#"{{"wg":{{"client_ip":"10.4.0.9","servers":[{{"pk":"{pk}","ip":"10.4.0.1","endpoint":"10.0.2.2:51820"}}]}}}}"#
            )
            .into_bytes(),
        }
    }

    fn request() -> RegisterCvmRequest {
        RegisterCvmRequest {
            client_public_key: init_core::gateway::encode_key(&[1; 32]),
            port_policy: Default::default(),
        }
    }

    #[test]
    fn fails_over_to_the_next_url_and_keeps_every_failure() {
        let creds = creds("0a0b");
        let mut t = Scripted {
            answers: vec![
                Err(TransportError::Http { reason: "down" }),
                Ok(HttpResponse {
                    status: 403,
                    body: br#"{"error":"app not allowed"}"#.to_vec(),
                }),
                Ok(ok_reply()),
            ],
            seen: Vec::new(),
        };
        let urls: Vec<String> = ["https://a:1", "https://b:2/gw", "https://c:3/prpc"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let (url, tunnel) = creds.register_any(&mut t, &urls, None, &request()).unwrap();
        assert_eq!(url, "https://c:3/prpc");
        assert_eq!(tunnel.client_ip.octets(), [10, 4, 0, 9]);
        assert_eq!(t.seen[1].1, "/gw/prpc/Gateway.RegisterCvm?json");
        assert_eq!(t.seen[2].1, "/prpc/Gateway.RegisterCvm?json");
        assert_eq!(t.seen[0].3.as_deref(), Some(&[0x0a, 0x0b][..]));
        assert_eq!(t.seen[0].4, 2);
        let sent: serde_json::Value = serde_json::from_slice(&t.seen[0].2).unwrap();
        assert_eq!(sent["client_public_key"], request().client_public_key);

        let mut none = Scripted {
            answers: vec![Ok(HttpResponse {
                status: 500,
                body: b"boom".to_vec(),
            })],
            seen: Vec::new(),
        };
        let err = creds
            .register_any(&mut none, &urls[..1], None, &request())
            .unwrap_err();
        let GatewayClientError::AllFailed { failures } = &err else {
            panic!("{err:?}");
        };
        assert!(matches!(
            failures[0],
            GatewayClientError::Refused { status: 500, .. }
        ));
    }

    #[test]
    fn last_accepting_url_goes_first() {
        let creds = creds("any");
        let mut t = Scripted {
            answers: vec![Ok(ok_reply())],
            seen: Vec::new(),
        };
        let urls = vec!["https://a:1".to_owned(), "https://b:2".to_owned()];
        let (url, _) = creds
            .register_any(&mut t, &urls, Some("https://b:2"), &request())
            .unwrap();
        assert_eq!(url, "https://b:2");
        // `any`: no app id to check.
        assert_eq!(t.seen[0].3, None);
    }

    /// The renewal asks the guest API for exactly the boot's certificate: dstack's
    /// `GetTlsKeyArgs` names, clientAuth, app info, no RA-TLS quote, the same notAfter.
    #[test]
    fn renewal_body_is_the_client_certificate_request() {
        let body: serde_json::Value =
            serde_json::from_slice(&get_tls_key_body(&client_cert_config(1_900_000_000))).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "subject": "dstack-guest-agent",
                "alt_names": [],
                "usage_ra_tls": false,
                "usage_server_auth": false,
                "usage_client_auth": true,
                "not_before": null,
                "not_after": 1_900_000_000u64,
                "with_app_info": true,
            })
        );
        assert_eq!(client_cert_config(1).org_name, None);
    }

    #[test]
    fn get_tls_key_replies_are_checked() {
        let chain = [pem("CERTIFICATE", b"leaf"), pem("CERTIFICATE", b"ca")];
        let body =
            serde_json::json!({"key": pem("PRIVATE KEY", b"key"), "certificate_chain": chain});
        let tls = parse_get_tls_key_reply(body.to_string().as_bytes()).unwrap();
        assert_eq!(tls.certificate_chain, chain);
        assert!(tls.key_pem.expose().contains("PRIVATE KEY"));
        GatewayCredentials::new(&tls, &pem("CERTIFICATE", b"root"), "any", 5).unwrap();
        assert!(matches!(
            parse_get_tls_key_reply(b"{\"key\":\"k\"}"),
            Err(GatewayClientError::TlsKeyReply(_))
        ));
        assert!(matches!(
            parse_get_tls_key_reply(br#"{"key":"k","certificate_chain":[]}"#),
            Err(GatewayClientError::TlsKeyChain { count: 0 })
        ));
        let long = serde_json::json!({"key": "k", "certificate_chain": vec!["c"; 9]});
        assert!(matches!(
            parse_get_tls_key_reply(long.to_string().as_bytes()),
            Err(GatewayClientError::TlsKeyChain { count: 9 })
        ));
    }

    #[test]
    fn bad_inputs_are_refused() {
        let tls = TlsKey {
            key_pem: Secret::new("not pem".into()),
            certificate_chain: vec![],
        };
        assert!(matches!(
            GatewayCredentials::new(&tls, "", "", 0),
            Err(GatewayClientError::Trust(_))
        ));
        assert!(matches!(
            GatewayCredentials::new(&tls, "", "zz", 0),
            Err(GatewayClientError::AppIdHex { .. })
        ));
        assert!(matches!(
            GatewayCredentials::new(&tls, "", "any", 0),
            Err(GatewayClientError::ClientPem)
        ));
        let c = creds("any");
        assert!(c.valid_at(0));
        assert!(!c.valid_at(500));
        let mut t = Scripted {
            answers: vec![Ok(HttpResponse {
                status: 200,
                body: b"{}".to_vec(),
            })],
            seen: Vec::new(),
        };
        assert!(matches!(
            c.register(&mut t, "https://a:1", &request()),
            Err(GatewayClientError::Reply { .. })
        ));
        assert!(matches!(
            c.register(&mut t, "http://a:1", &request()),
            Err(GatewayClientError::Url(_))
        ));
    }
}
