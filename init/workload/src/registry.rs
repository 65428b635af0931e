//! A small blocking client for the registry HTTP API (distribution spec v2): manifests and blobs
//! by digest, bearer-token and basic auth, mirrors, retries with exponential backoff; and, for
//! the auditor's `cvm-measure compose pin` only, the digest a tag names ([`RegistryClient::resolve_tag`]).
//!
//! Why not `oci-client`: it is async (tokio + reqwest), its TLS default builds aws-lc-sys, its
//! `pull` buffers whole layers, and it verifies neither descriptor sizes nor `diff_ids`; we need
//! a synchronous streaming reader that the single-threaded launcher can use and that checks all
//! of those while the bytes arrive. ureq (rustls + ring + webpki roots) keeps the static build
//! free of C TLS code and of any dependency on a CA store inside the VM.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use ureq::http::{Response, StatusCode};

use crate::digest::{DEFAULT_REGISTRY, ImageRef, Sha256Digest};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Transport failure after all retries.
    #[error("GET {url} ({attempts} attempts)")]
    Request {
        /// URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// Last error.
        #[source]
        source: Box<ureq::Error>,
    },
    /// A non-success status after all retries.
    #[error("GET {url}: HTTP {status}: {body}")]
    CheckStatus {
        /// URL.
        url: String,
        /// Status code.
        status: u16,
        /// Start of the body (registry error JSON).
        body: String,
    },
    /// The token endpoint failed.
    #[error("fetch bearer token from {realm}")]
    FetchToken {
        /// Token endpoint.
        realm: String,
        /// Why.
        #[source]
        source: Box<RegistryError>,
    },
    /// The token endpoint answered without a token.
    #[error("token reply from {realm} has no token")]
    ParseToken {
        /// Token endpoint.
        realm: String,
    },
    /// 401 with a challenge we cannot answer.
    #[error("{url}: unsupported authentication challenge {challenge:?}")]
    Authenticate {
        /// URL.
        url: String,
        /// The WWW-Authenticate header.
        challenge: String,
    },
    /// Reading a manifest named by a tag failed or it is too large.
    #[error("read manifest {url}")]
    ReadManifest {
        /// URL.
        url: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The registry's `Docker-Content-Digest` is not the digest of the bytes it served.
    #[error(
        "{url}: Docker-Content-Digest {header} is not the digest of the manifest served ({actual})"
    )]
    CheckTagDigest {
        /// URL.
        url: String,
        /// The header.
        header: String,
        /// SHA-256 of the body.
        actual: Box<Sha256Digest>,
    },
    /// Every endpoint (mirror, upstream) failed; the last error is the source.
    #[error("no endpoint served {what}")]
    AllEndpointsFailed {
        /// What was fetched.
        what: String,
        /// Last failure.
        #[source]
        source: Box<RegistryError>,
    },
}

/// A secret string: `Debug` prints `<redacted>`, zeroized on drop.
#[derive(Clone, Default, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret.
    pub fn new(value: String) -> Self {
        Self(value)
    }
    /// The secret text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Registry credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: SecretString,
}

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Mirror for Docker Hub images (dstack's `docker_registry`), e.g. `https://mirror.example`.
    /// Tried first; Docker Hub itself is the fallback. Content is verified by digest either way.
    pub mirror: Option<String>,
    /// Credentials by registry host (`host[:port]`).
    pub credentials: BTreeMap<String, Credentials>,
    /// Hosts reached over plain HTTP (test registries on loopback). Everything else is HTTPS.
    pub plain_http_hosts: Vec<String>,
    /// Attempts per request for transport errors, 429 and 5xx.
    pub attempts: u32,
    /// First backoff; doubled per retry, capped at 30 s.
    pub backoff: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Timeout until the response head arrives.
    pub response_timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            mirror: None,
            credentials: BTreeMap::new(),
            plain_http_hosts: Vec::new(),
            attempts: 5,
            backoff: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(60),
        }
    }
}

/// A response body being streamed.
pub type BodyReader = Box<dyn Read + Send>;

/// An HTTP response that was successful.
#[derive(Debug)]
pub struct Fetched {
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Content-Length`, when given.
    pub content_length: Option<u64>,
    /// The URL that answered.
    pub url: String,
    /// `Docker-Content-Digest`, when given.
    pub docker_content_digest: Option<String>,
    body: Option<ureq::Body>,
}

impl Fetched {
    /// The body as a reader.
    pub fn into_reader(mut self) -> BodyReader {
        match self.body.take() {
            Some(body) => Box::new(body.into_reader()),
            None => Box::new(std::io::empty()),
        }
    }
}

/// Delay before retry number `retry` (1-based).
pub fn backoff_delay(base: Duration, retry: u32) -> Duration {
    let factor = 1u32
        .checked_shl(retry.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(Duration::from_secs(30))
}

fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `Bearer` or `Basic` (lowercased).
    pub scheme: String,
    /// Parameters (lowercased names).
    pub params: BTreeMap<String, String>,
}

/// Parses `Bearer realm="…",service="…",scope="…"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = BTreeMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.insert(name.trim().to_ascii_lowercase(), value);
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

/// The blocking registry client.
#[derive(Debug)]
pub struct RegistryClient {
    agent: ureq::Agent,
    config: RegistryConfig,
    /// Authorization header values by `base|repository`.
    tokens: Mutex<BTreeMap<String, String>>,
}

impl RegistryClient {
    /// A client for `config`.
    pub fn new(config: RegistryConfig) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(config.connect_timeout))
            .timeout_recv_response(Some(config.response_timeout))
            .max_redirects(5)
            .user_agent("cvm-init")
            .build()
            .into();
        Self {
            agent,
            config,
            tokens: Mutex::new(BTreeMap::new()),
        }
    }

    /// Base URLs to try for `image`, in order.
    pub fn endpoints(&self, image: &ImageRef) -> Vec<String> {
        self.registry_endpoints(&image.registry)
    }

    fn registry_endpoints(&self, registry: &str) -> Vec<String> {
        let mut out = Vec::new();
        if registry == DEFAULT_REGISTRY
            && let Some(mirror) = &self.config.mirror
        {
            out.push(mirror.trim_end_matches('/').to_owned());
        }
        let scheme = if self.config.plain_http_hosts.iter().any(|h| h == registry) {
            "http"
        } else {
            "https"
        };
        out.push(format!("{scheme}://{registry}"));
        out
    }

    /// The digest of the manifest (or index) `tag` names in `registry`/`repository`: GETs
    /// `/v2/<repository>/manifests/<tag>` with the OCI and Docker manifest and index media
    /// types, and hashes the bytes served (at most `max_bytes`). A `Docker-Content-Digest`
    /// header must agree. Never used by the init, which pulls by digest only.
    pub fn resolve_tag(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
        max_bytes: u64,
    ) -> Result<Sha256Digest, RegistryError> {
        let mut last = None;
        for base in self.registry_endpoints(registry) {
            let url = format!("{base}/v2/{repository}/manifests/{tag}");
            let fetched = match self.get_with_auth(
                &base,
                registry,
                repository,
                &url,
                Some(crate::oci::media::MANIFEST_ACCEPT),
            ) {
                Ok(f) => f,
                Err(e) => {
                    log::warn!("{url}: {e}");
                    last = Some(e);
                    continue;
                }
            };
            let header = fetched.docker_content_digest.clone();
            let mut body = Vec::new();
            let read = fetched
                .into_reader()
                .take(max_bytes.saturating_add(1))
                .read_to_end(&mut body);
            if let Err(source) = read {
                return Err(RegistryError::ReadManifest { url, source });
            }
            if body.len() as u64 > max_bytes {
                return Err(RegistryError::ReadManifest {
                    url,
                    source: std::io::Error::other(format!("larger than {max_bytes} bytes")),
                });
            }
            let actual = Sha256Digest::of(&body);
            if let Some(header) = header
                && Sha256Digest::parse(&header).ok() != Some(actual)
            {
                return Err(RegistryError::CheckTagDigest {
                    url,
                    header,
                    actual: Box::new(actual),
                });
            }
            return Ok(actual);
        }
        Err(RegistryError::AllEndpointsFailed {
            what: format!("manifest {registry}/{repository}:{tag}"),
            source: Box::new(last.unwrap_or(RegistryError::CheckStatus {
                url: String::new(),
                status: 0,
                body: "no endpoint".to_owned(),
            })),
        })
    }

    /// GETs `/v2/<repo>/<kind>/<digest>` from the first endpoint that answers with success.
    pub fn fetch(
        &self,
        image: &ImageRef,
        kind: &str,
        digest: &Sha256Digest,
        accept: Option<&str>,
    ) -> Result<Fetched, RegistryError> {
        let mut last = None;
        for base in self.endpoints(image) {
            let url = format!("{base}/v2/{}/{kind}/{digest}", image.repository);
            match self.get_with_auth(&base, &image.registry, &image.repository, &url, accept) {
                Ok(f) => return Ok(f),
                Err(e) => {
                    log::warn!("{url}: {e}");
                    last = Some(e);
                }
            }
        }
        Err(RegistryError::AllEndpointsFailed {
            what: format!("{kind} {digest} of {image}"),
            source: Box::new(last.unwrap_or(RegistryError::CheckStatus {
                url: String::new(),
                status: 0,
                body: "no endpoint".to_owned(),
            })),
        })
    }

    fn get_with_auth(
        &self,
        base: &str,
        registry: &str,
        repository: &str,
        url: &str,
        accept: Option<&str>,
    ) -> Result<Fetched, RegistryError> {
        let key = format!("{base}|{repository}");
        let cached = self.tokens.lock().ok().and_then(|t| t.get(&key).cloned());
        let response = self.get(url, accept, cached.as_deref())?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return finish(url, response);
        }
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let authorization = self.answer_challenge(base, registry, repository, url, &challenge)?;
        let response = self.get(url, accept, Some(&authorization))?;
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(key, authorization);
        }
        finish(url, response)
    }

    fn answer_challenge(
        &self,
        base: &str,
        registry: &str,
        repository: &str,
        url: &str,
        header: &str,
    ) -> Result<String, RegistryError> {
        let unsupported = || RegistryError::Authenticate {
            url: url.to_owned(),
            challenge: header.chars().take(200).collect(),
        };
        let challenge = parse_challenge(header).ok_or_else(unsupported)?;
        let creds = self.config.credentials.get(registry);
        match challenge.scheme.as_str() {
            "basic" => {
                let c = creds.ok_or_else(unsupported)?;
                Ok(basic_header(c))
            }
            "bearer" => {
                let realm = challenge
                    .params
                    .get("realm")
                    .ok_or_else(unsupported)?
                    .clone();
                let secure = realm.starts_with("https://") || base.starts_with("http://");
                if !(realm.starts_with("https://") || realm.starts_with("http://")) {
                    return Err(unsupported());
                }
                let mut request = self.agent.get(&realm);
                if let Some(service) = challenge.params.get("service") {
                    request = request.query("service", service);
                }
                let scope = challenge
                    .params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{repository}:pull"));
                request = request.query("scope", &scope);
                if let (Some(c), true) = (creds, secure) {
                    request = request.header("Authorization", &basic_header(c));
                }
                let fetch_err = |source| RegistryError::FetchToken {
                    realm: realm.clone(),
                    source: Box::new(source),
                };
                let response = request.call().map_err(|e| {
                    fetch_err(RegistryError::Request {
                        url: realm.clone(),
                        attempts: 1,
                        source: Box::new(e),
                    })
                })?;
                let fetched = finish(&realm, response).map_err(fetch_err)?;
                let mut body = Vec::new();
                fetched
                    .into_reader()
                    .take(64 * 1024)
                    .read_to_end(&mut body)
                    .map_err(|_| RegistryError::ParseToken {
                        realm: realm.clone(),
                    })?;
                #[derive(serde::Deserialize)]
                struct TokenReply {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let reply: TokenReply =
                    serde_json::from_slice(&body).map_err(|_| RegistryError::ParseToken {
                        realm: realm.clone(),
                    })?;
                let token = reply
                    .token
                    .or(reply.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or(RegistryError::ParseToken { realm })?;
                Ok(format!("Bearer {token}"))
            }
            _ => Err(unsupported()),
        }
    }

    /// One GET with retries on transport errors, 429 and 5xx.
    fn get(
        &self,
        url: &str,
        accept: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Response<ureq::Body>, RegistryError> {
        let attempts = self.config.attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self.agent.get(url);
            if let Some(accept) = accept {
                request = request.header("Accept", accept);
            }
            if let Some(auth) = authorization {
                request = request.header("Authorization", auth);
            }
            match request.call() {
                Ok(response) if retryable(response.status()) && attempt < attempts => {
                    log::warn!("GET {url}: HTTP {}, retrying", response.status().as_u16());
                }
                Ok(response) => return Ok(response),
                Err(e) if attempt < attempts => log::warn!("GET {url}: {e}, retrying"),
                Err(e) => {
                    return Err(RegistryError::Request {
                        url: url.to_owned(),
                        attempts: attempt,
                        source: Box::new(e),
                    });
                }
            }
            std::thread::sleep(backoff_delay(self.config.backoff, attempt));
        }
    }
}

fn basic_header(c: &Credentials) -> String {
    use base64::Engine as _;
    let raw = zeroize::Zeroizing::new(format!("{}:{}", c.username, c.password.expose()));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw.as_bytes())
    )
}

fn finish(url: &str, response: Response<ureq::Body>) -> Result<Fetched, RegistryError> {
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type");
    let content_length = header("content-length").and_then(|v| v.parse().ok());
    let docker_content_digest = header("docker-content-digest");
    let (_, body) = response.into_parts();
    if !status.is_success() {
        let mut text = Vec::new();
        let _ = body.into_reader().take(512).read_to_end(&mut text);
        return Err(RegistryError::CheckStatus {
            url: url.to_owned(),
            status: status.as_u16(),
            body: String::from_utf8_lossy(&text).trim().to_owned(),
        });
    }
    Ok(Fetched {
        content_type,
        content_length,
        url: url.to_owned(),
        docker_content_digest,
        body: Some(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["scope"], "repository:library/busybox:pull");
        let c = parse_challenge("Basic realm=\"Registry Realm\"").unwrap();
        assert_eq!(c.scheme, "basic");
        assert!(parse_challenge("Bearer realm=\"unterminated").is_none());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Duration::from_millis(100);
        assert_eq!(backoff_delay(b, 1), Duration::from_millis(100));
        assert_eq!(backoff_delay(b, 3), Duration::from_millis(400));
        assert_eq!(backoff_delay(b, 40), Duration::from_secs(30));
    }

    #[test]
    fn mirror_only_for_docker_hub() {
        let client = RegistryClient::new(RegistryConfig {
            mirror: Some("https://mirror.example/".into()),
            plain_http_hosts: vec!["127.0.0.1:5000".into()],
            ..RegistryConfig::default()
        });
        let d = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
        let hub = ImageRef::parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(
            client.endpoints(&hub),
            ["https://mirror.example", "https://registry-1.docker.io"]
        );
        let local = ImageRef::parse(&format!("127.0.0.1:5000/x@{d}")).unwrap();
        assert_eq!(client.endpoints(&local), ["http://127.0.0.1:5000"]);
        assert_eq!(
            format!("{:?}", SecretString::new("hunter2".into())),
            "<redacted>"
        );
    }
}
