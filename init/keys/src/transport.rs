//! [`KmsTransport`] over rustls (ring provider, builds static) on a std `TcpStream`, with a
//! minimal HTTP/1.1 client (`Connection: close`, `Content-Length` or chunked responses, size
//! capped). Name resolution is pluggable ([`Resolve`]) because a static glibc init has no NSS:
//! the default uses `ToSocketAddrs`, which reads `/etc/hosts` and takes IP literals.
//!
//! Server authentication:
//! * [`TlsMode::DangerUnverified`]: any certificate (the handshake signature is still checked);
//! * [`TlsMode::Mutual`]: the chain must lead to the pinned KMS root CA (no other roots; RFC 5280
//!   path validation by webpki, serverAuth EKU if the certificate has EKUs) and the end entity
//!   must carry the dstack usage extension `kms:rpc`. The host name is not matched: the KMS
//!   root CA issues `kms:rpc` certificates only to KMS nodes, which the guest reaches by
//!   whatever name or address sys-config lists (dstack's client does the same).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

use crate::kms::{HttpResponse, KmsTransport, KmsUrl, MAX_RESPONSE_LEN, TlsMode, TransportError};
use crate::ratls::{RaTlsCert, USAGE_KMS_RPC};

/// Resolves a host name to socket addresses.
pub trait Resolve: Send + Sync {
    /// Addresses of `host:port`.
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// `ToSocketAddrs` (IP literals and, in a static build, `/etc/hosts`).
#[derive(Debug, Clone, Copy, Default)]
pub struct StdResolver;

impl Resolve for StdResolver {
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        (host, port).to_socket_addrs().map(Iterator::collect)
    }
}

/// DNS over UDP (A records) to the name servers of a `resolv.conf` (what the init wrote after
/// DHCP), for processes other than PID 1 that must reach the KMS by name (the guest API's
/// `GetTlsKey`): a static glibc binary has no NSS, so `ToSocketAddrs` knows only IP literals
/// and `/etc/hosts`. IP literals and `localhost` never touch the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConfResolver {
    /// Name servers (address and port), asked in order.
    pub servers: Vec<SocketAddr>,
    /// How long to wait for one server's answer.
    pub per_query: Duration,
    /// How many times the server list is tried.
    pub rounds: u32,
}

impl ResolvConfResolver {
    /// The `nameserver` lines of `resolv.conf` text (port 53).
    pub fn parse(text: &str) -> Self {
        let servers = text
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some("nameserver"))
                    .then(|| words.next())
                    .flatten()
                    .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
            })
            .map(|ip| SocketAddr::new(ip, init_core::net::dns::PORT))
            .collect();
        Self {
            servers,
            per_query: Duration::from_secs(2),
            rounds: 3,
        }
    }

    /// Reads `path` (a missing or unreadable file gives no servers: names then fail to
    /// resolve, literals still work).
    pub fn from_file(path: &std::path::Path) -> Self {
        Self::parse(&std::fs::read_to_string(path).unwrap_or_default())
    }

    fn query(&self, name: &str) -> std::io::Result<Vec<std::net::IpAddr>> {
        use init_core::net::dns;
        let bind: SocketAddr = if self.servers.iter().any(SocketAddr::is_ipv6) {
            "[::]:0".parse().map_err(std::io::Error::other)?
        } else {
            "0.0.0.0:0".parse().map_err(std::io::Error::other)?
        };
        let socket = std::net::UdpSocket::bind(bind)?;
        let rng = ring::rand::SystemRandom::new();
        let mut buf = [0u8; dns::MAX_UDP_RESPONSE + 1];
        for _ in 0..self.rounds.max(1) {
            for server in &self.servers {
                let mut id = [0u8; 2];
                ring::rand::SecureRandom::fill(&rng, &mut id)
                    .map_err(|_| std::io::Error::other("no randomness for the DNS id"))?;
                let id = u16::from_be_bytes(id);
                let query = dns::query(name, id).map_err(std::io::Error::other)?;
                if socket.send_to(&query, server).is_err() {
                    continue;
                }
                let deadline = std::time::Instant::now() + self.per_query;
                loop {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    socket.set_read_timeout(Some(left))?;
                    let Ok((len, from)) = socket.recv_from(&mut buf) else {
                        break;
                    };
                    if from != *server {
                        continue;
                    }
                    match dns::parse_response(&buf[..len.min(buf.len())], id, name) {
                        Ok(found) => {
                            return Ok(found.into_iter().map(std::net::IpAddr::V4).collect());
                        }
                        Err(
                            e @ (dns::DnsError::Rcode { .. } | dns::DnsError::NoAddress { .. }),
                        ) => {
                            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, e));
                        }
                        Err(_) => {}
                    }
                }
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "no DNS answer for {name} from {} servers",
                self.servers.len()
            ),
        ))
    }
}

impl Resolve for ResolvConfResolver {
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        if name == "localhost" {
            return Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))]);
        }
        Ok(self
            .query(&name)?
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }
}

/// The ring crypto provider.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// rustls + TCP.
pub struct TlsTransport {
    resolver: Box<dyn Resolve>,
    provider: Arc<CryptoProvider>,
    /// TCP connect timeout (dstack: 5 s).
    pub connect_timeout: Duration,
    /// Read/write timeout of each socket operation (dstack: 60 s per request).
    pub io_timeout: Duration,
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTransport")
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for TlsTransport {
    fn default() -> Self {
        Self::new(Box::new(StdResolver))
    }
}

impl TlsTransport {
    /// A transport with `resolver` and dstack's timeouts.
    pub fn new(resolver: Box<dyn Resolve>) -> Self {
        Self {
            resolver,
            provider: crypto_provider(),
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(60),
        }
    }

    fn config(&self, tls: &TlsMode<'_>) -> Result<ClientConfig, TransportError> {
        let configure = |source| TransportError::ConfigureTls { source };
        let builder = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(configure)?
            .dangerous();
        match tls {
            TlsMode::DangerUnverified => Ok(builder
                .with_custom_certificate_verifier(Arc::new(DangerAnyServer {
                    provider: Arc::clone(&self.provider),
                }))
                .with_no_client_auth()),
            TlsMode::Mutual {
                root_ca_der,
                client_cert_der,
                client_key_der,
            } => {
                let key =
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(client_key_der.expose().clone()));
                builder
                    .with_custom_certificate_verifier(Arc::new(KmsServerVerifier {
                        root_ca_der: CertificateDer::from(root_ca_der.to_vec()),
                        provider: Arc::clone(&self.provider),
                        require: ServerRequirement::KmsRpcUsage,
                    }))
                    .with_client_auth_cert(
                        vec![CertificateDer::from(client_cert_der.to_vec())],
                        key,
                    )
                    .map_err(configure)
            }
            TlsMode::Gateway {
                root_ca_der,
                app_id,
                client_chain_der,
                client_key_der,
            } => {
                let key =
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(client_key_der.expose().clone()));
                let chain = client_chain_der
                    .iter()
                    .map(|der| CertificateDer::from(der.clone()))
                    .collect();
                let verifier: Arc<dyn ServerCertVerifier> = match app_id {
                    Some(app_id) => Arc::new(KmsServerVerifier {
                        root_ca_der: CertificateDer::from(root_ca_der.to_vec()),
                        provider: Arc::clone(&self.provider),
                        require: ServerRequirement::AppId(app_id.to_vec()),
                    }),
                    None => Arc::new(DangerAnyServer {
                        provider: Arc::clone(&self.provider),
                    }),
                };
                builder
                    .with_custom_certificate_verifier(verifier)
                    .with_client_auth_cert(chain, key)
                    .map_err(configure)
            }
        }
    }

    fn connect(&self, url: &KmsUrl) -> Result<TcpStream, TransportError> {
        let addrs = self
            .resolver
            .resolve(&url.host, url.port)
            .map_err(|source| TransportError::Resolve {
                host: url.host.clone(),
                source,
            })?;
        let mut last = None;
        for addr in &addrs {
            match TcpStream::connect_timeout(addr, self.connect_timeout) {
                Ok(stream) => return Ok(stream),
                Err(err) => last = Some((addr.to_string(), err)),
            }
        }
        Err(match last {
            Some((addr, source)) => TransportError::Connect { addr, source },
            None => TransportError::Resolve {
                host: url.host.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
            },
        })
    }
}

impl KmsTransport for TlsTransport {
    fn post(
        &mut self,
        url: &KmsUrl,
        path: &str,
        body: &[u8],
        tls: TlsMode<'_>,
    ) -> Result<HttpResponse, TransportError> {
        let config = self.config(&tls)?;
        let server_name =
            ServerName::try_from(url.host.clone()).map_err(|_| TransportError::Resolve {
                host: url.host.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid host name"),
            })?;
        let tcp = self.connect(url)?;
        let tls_err = |source| TransportError::Tls {
            host: url.host.clone(),
            source,
        };
        tcp.set_read_timeout(Some(self.io_timeout))
            .map_err(tls_err)?;
        tcp.set_write_timeout(Some(self.io_timeout))
            .map_err(tls_err)?;
        let conn = ClientConnection::new(Arc::new(config), server_name)
            .map_err(|source| TransportError::ConfigureTls { source })?;
        let mut stream = StreamOwned::new(conn, tcp);
        let host = if url.host.contains(':') {
            format!("[{}]", url.host)
        } else {
            url.host.clone()
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            url.port,
            body.len()
        );
        stream.write_all(head.as_bytes()).map_err(tls_err)?;
        stream.write_all(body).map_err(tls_err)?;
        stream.flush().map_err(tls_err)?;
        let mut raw = zeroize::Zeroizing::new(Vec::new());
        let mut limited =
            (&mut stream).take(u64::try_from(MAX_RESPONSE_LEN + 16 * 1024).unwrap_or(u64::MAX));
        match limited.read_to_end(&mut raw) {
            Ok(_) => {}
            // A peer that closes without close_notify after a complete response is tolerated;
            // parse_response checks the framing.
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(err) => return Err(tls_err(err)),
        }
        parse_response(&raw)
    }
}

/// Parses an HTTP/1.1 response (status line, headers, `Content-Length` / chunked / to EOF body).
pub fn parse_response(raw: &[u8]) -> Result<HttpResponse, TransportError> {
    let http = |reason| TransportError::Http { reason };
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(http("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| http("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or(http("no status line"))?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(http("not HTTP/1.x"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(http("bad status code"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(http("bad header line"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| http("bad content-length"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = content_length {
        rest.get(..len)
            .ok_or(http("body shorter than content-length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    if body.len() > MAX_RESPONSE_LEN {
        return Err(http("body too large"));
    }
    Ok(HttpResponse { status, body })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, TransportError> {
    let http = |reason| TransportError::Http { reason };
    let mut out = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(http("bad chunk header"))?;
        let size_text =
            std::str::from_utf8(&rest[..line_end]).map_err(|_| http("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| http("bad chunk size"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or(http("truncated chunk"))?;
        out.extend_from_slice(chunk);
        if out.len() > MAX_RESPONSE_LEN {
            return Err(http("body too large"));
        }
        rest = rest.get(size + 2..).ok_or(http("truncated chunk"))?;
    }
}

/// Accepts any server certificate; still checks the handshake signature with its key.
#[derive(Debug)]
struct DangerAnyServer {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for DangerAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What the end-entity certificate must carry besides a chain to the KMS root.
#[derive(Debug)]
enum ServerRequirement {
    /// The `kms:rpc` usage (a KMS node).
    KmsRpcUsage,
    /// This app id (a dstack-gateway node of the KMS's `gateway_app_id`).
    AppId(Vec<u8>),
}

/// Trusts only the KMS root CA and requires the `kms:rpc` usage (or an app id).
#[derive(Debug)]
struct KmsServerVerifier {
    root_ca_der: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
    require: ServerRequirement,
}

impl ServerCertVerifier for KmsServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bad = |e: webpki::Error| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        };
        let anchor = webpki::anchor_from_trusted_cert(&self.root_ca_der).map_err(bad)?;
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(bad)?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &[anchor],
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(bad)?;
        let parsed = RaTlsCert::parse(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let refuse = |e: Arc<dyn std::error::Error + Send + Sync>| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                e,
            )))
        };
        match &self.require {
            ServerRequirement::KmsRpcUsage if !parsed.has_usage(USAGE_KMS_RPC) => {
                return Err(refuse(Arc::new(MissingKmsRpcUsage)));
            }
            ServerRequirement::AppId(want) if parsed.app_id.as_deref() != Some(want.as_slice()) => {
                return Err(refuse(Arc::new(WrongAppId)));
            }
            _ => {}
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server certificate lacks the `kms:rpc` usage extension.
#[derive(thiserror::Error)]
#[error("server certificate lacks the dstack usage kms:rpc")]
pub struct MissingKmsRpcUsage;

// rustls prints the inner error with `Debug`: make that the message too.
impl std::fmt::Debug for MissingKmsRpcUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("server certificate lacks the dstack usage kms:rpc")
    }
}

/// The server certificate does not carry the expected app id (not the KMS's gateway).
#[derive(thiserror::Error)]
#[error("server certificate does not carry the gateway app id the KMS names")]
pub struct WrongAppId;

impl std::fmt::Debug for WrongAppId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("server certificate does not carry the gateway app id the KMS names")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_resolver_asks_the_listed_server() {
        use init_core::net::dns;
        let r = ResolvConfResolver::parse("# x\nnameserver 10.0.2.3\nsearch a\nnameserver ::1\n");
        assert_eq!(
            r.servers,
            vec![
                "10.0.2.3:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        // Literals and localhost need no server.
        let none = ResolvConfResolver::parse("");
        assert_eq!(
            none.resolve("[::1]", 9).unwrap(),
            vec!["[::1]:9".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(none.resolve("localhost", 9).unwrap()[0].port(), 9);
        none.resolve("kms.test", 9).unwrap_err();
        // A loopback DNS server answers kms.test with 10.0.2.2.
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (len, from) = server.recv_from(&mut buf).unwrap();
            let id = u16::from_be_bytes([buf[0], buf[1]]);
            assert!(len > 12);
            let reply = dns::response(id, "kms.test", 0, &[(1, vec![10, 0, 2, 2])]);
            server.send_to(&reply, from).unwrap();
        });
        let r = ResolvConfResolver {
            servers: vec![addr],
            per_query: Duration::from_secs(5),
            rounds: 1,
        };
        assert_eq!(
            r.resolve("KMS.test.", 8000).unwrap(),
            vec!["10.0.2.2:8000".parse::<SocketAddr>().unwrap()]
        );
        thread.join().unwrap();
    }

    #[test]
    fn responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}extra").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = parse_response(
            b"HTTP/1.1 400 Bad\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (400, &b"abcde"[..]));
        let r = parse_response(b"HTTP/1.0 500 X\r\n\r\nrest").unwrap();
        assert_eq!(r.body, b"rest");
        for bad in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"SPDY 200\r\n\r\n",
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        ] {
            assert!(matches!(
                parse_response(bad),
                Err(TransportError::Http { .. })
            ));
        }
    }
}
