//! `http(s)://host[:port][/path]` endpoints as they appear in `.sys-config.json`
//! (`kms_urls`, `docker_registry`, `pccs_url`): parsed strictly, so a malformed URL is an error
//! naming it rather than a connection to somewhere unexpected.

use std::net::IpAddr;

use super::dns;

/// URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    /// The default port of the scheme.
    pub const fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

/// The host part: an address literal or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// A parsed endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    pub host: Host,
    pub port: u16,
    /// The path without a trailing slash (`""` for the root).
    pub path: String,
}

/// Errors of [`Endpoint::parse`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("URL {url:?} does not start with http:// or https://")]
    Scheme { url: String },
    #[error("URL {url:?} has no host")]
    NoHost { url: String },
    #[error("URL {url:?} has an invalid port")]
    Port { url: String },
    #[error("URL {url:?} has an invalid host")]
    Host {
        url: String,
        #[source]
        source: dns::DnsError,
    },
    #[error("URL {url:?} carries user info, a query or a fragment, which are not supported")]
    Unsupported { url: String },
}

impl Endpoint {
    /// Parses `url`.
    pub fn parse(url: &str) -> Result<Self, EndpointError> {
        let owned = || url.to_owned();
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else {
            return Err(EndpointError::Scheme { url: owned() });
        };
        if rest.contains(['@', '?', '#']) || rest.chars().any(char::is_whitespace) {
            return Err(EndpointError::Unsupported { url: owned() });
        }
        let (authority, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (ip, after) = bracketed
                .split_once(']')
                .ok_or(EndpointError::NoHost { url: owned() })?;
            let ip: std::net::Ipv6Addr = ip
                .parse()
                .map_err(|_| EndpointError::NoHost { url: owned() })?;
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or(EndpointError::Port { url: owned() })?,
                ),
            };
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            if host.is_empty() {
                return Err(EndpointError::NoHost { url: owned() });
            }
            let host = match host.parse::<std::net::Ipv4Addr>() {
                Ok(ip) => Host::Ip(IpAddr::V4(ip)),
                Err(_) => {
                    dns::validate_name(host).map_err(|source| EndpointError::Host {
                        url: owned(),
                        source,
                    })?;
                    Host::Name(host.trim_end_matches('.').to_ascii_lowercase())
                }
            };
            (host, port)
        };
        let port = match port {
            None => scheme.default_port(),
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or(EndpointError::Port { url: owned() })?,
        };
        Ok(Self {
            scheme,
            host,
            port,
            path: path.trim_end_matches('/').to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("https://kms.Example.com:8000/").unwrap(),
            Endpoint {
                scheme: Scheme::Https,
                host: Host::Name("kms.example.com".into()),
                port: 8000,
                path: String::new(),
            }
        );
        assert_eq!(
            Endpoint::parse("http://10.0.2.2/v2/prpc").unwrap(),
            Endpoint {
                scheme: Scheme::Http,
                host: Host::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2))),
                port: 80,
                path: "/v2/prpc".into(),
            }
        );
        let v6 = Endpoint::parse("https://[::1]:9443").unwrap();
        assert_eq!(v6.host, Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(v6.port, 9443);
        assert_eq!(v6.host.to_string(), "[::1]");
    }

    #[test]
    fn bad_endpoints_are_refused() {
        for (url, class) in [
            ("ftp://x", "scheme"),
            ("kms:8000", "scheme"),
            ("https://", "host"),
            ("https://:80", "host"),
            ("https://a:0", "port"),
            ("https://a:65536", "port"),
            ("https://a:x", "port"),
            ("https://user@a", "unsupported"),
            ("https://a/?q=1", "unsupported"),
            ("https://a b", "unsupported"),
            ("https://a..b", "hostname"),
            ("https://[::1", "host"),
        ] {
            let err = Endpoint::parse(url).unwrap_err();
            let got = match err {
                EndpointError::Scheme { .. } => "scheme",
                EndpointError::NoHost { .. } => "host",
                EndpointError::Port { .. } => "port",
                EndpointError::Unsupported { .. } => "unsupported",
                EndpointError::Host { .. } => "hostname",
            };
            assert_eq!(got, class, "{url}");
        }
    }
}
