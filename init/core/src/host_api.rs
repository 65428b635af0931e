//! The dstack host API client, sans I/O: the VMM's `host_api_url` (`vsock://2:<port>/api` in
//! `.sys-config.json`), the pRPC JSON `Notify` request dstack-util's `notify-host` sends
//! (`POST <path>/Notify?json` with `{"event":…,"payload":…}`), its reply's status, and the
//! [`Outbox`] policy PID 1 follows: notifications are best effort (a failure is logged, never
//! fatal, as in dstack), bounded in time, and switched off after repeated failures so an absent
//! or silent host cannot stretch the boot.
//!
//! Test builds (feature `insecure-test-hooks`) also accept `http://<ipv4>:<port>/<path>`, so
//! QEMU tests reach a host-side server over slirp (`10.0.2.2`); a release build accepts only
//! vsock.

use std::fmt;
#[cfg(feature = "insecure-test-hooks")]
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

/// Bound of connecting to the host API.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound of one whole notification (connect, send, reply).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest reply read; a reply is only a status line, headers and `{}`.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;
/// After this many failures in a row no further notification is tried this boot.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 3;
/// Notifications held until the transport is up (test `http` URLs wait for the network);
/// later ones are dropped and counted.
pub const MAX_QUEUED: usize = 64;

/// Errors of the host API URL and reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostApiError {
    /// The URL's scheme is not one this build speaks.
    #[error("host_api_url {url:?}: unsupported scheme (this build speaks {supported})")]
    UnsupportedScheme {
        url: String,
        supported: &'static str,
    },
    /// The URL's authority is not `<cid>:<port>` (vsock) or `<ipv4>:<port>` (http).
    #[error("host_api_url {url:?}: malformed address")]
    MalformedAddress { url: String },
    /// The path holds characters that cannot go on a request line.
    #[error("host_api_url {url:?}: malformed path")]
    MalformedPath { url: String },
    /// The reply is not an HTTP/1.x status line.
    #[error("malformed reply")]
    MalformedReply,
    /// The reply's status is not 200.
    #[error("reply status {status}")]
    Status { status: u16 },
}

/// Where the host API listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Address {
    /// `AF_VSOCK` context id and port.
    Vsock { cid: u32, port: u32 },
    /// TCP (test builds only).
    #[cfg(feature = "insecure-test-hooks")]
    InsecureHttp(SocketAddrV4),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            #[cfg(feature = "insecure-test-hooks")]
            Self::InsecureHttp(addr) => write!(f, "http://{addr}"),
        }
    }
}

/// A parsed `host_api_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: Address,
    /// The path prefix without a trailing `/` (`/api`); empty for the root.
    pub path: String,
}

impl Endpoint {
    /// The endpoint of `.sys-config.json`'s `host_api_url`: `None` when it is absent or empty
    /// (no notifications, as dstack).
    pub fn from_sys_config(url: Option<&str>) -> Result<Option<Self>, HostApiError> {
        match url.map(str::trim) {
            None | Some("") => Ok(None),
            Some(url) => Self::parse(url).map(Some),
        }
    }

    /// Parses `vsock://<cid>:<port>[/path]` (and, in test builds, `http://<ipv4>:<port>[/path]`).
    pub fn parse(url: &str) -> Result<Self, HostApiError> {
        let malformed = || HostApiError::MalformedAddress {
            url: url.to_owned(),
        };
        let (scheme, rest) =
            url.split_once("://")
                .ok_or_else(|| HostApiError::UnsupportedScheme {
                    url: url.to_owned(),
                    supported: SUPPORTED,
                })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let path = path.trim_end_matches('/');
        if !path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
        {
            return Err(HostApiError::MalformedPath {
                url: url.to_owned(),
            });
        }
        let (host, port) = authority.rsplit_once(':').ok_or_else(malformed)?;
        let address = match scheme {
            "vsock" => Address::Vsock {
                cid: parse_decimal(host).ok_or_else(malformed)?,
                port: parse_decimal(port).ok_or_else(malformed)?,
            },
            #[cfg(feature = "insecure-test-hooks")]
            "http" => {
                let ip: Ipv4Addr = host.parse().map_err(|_| malformed())?;
                let port: u16 = parse_decimal(port)
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or_else(malformed)?;
                Address::InsecureHttp(SocketAddrV4::new(ip, port))
            }
            _ => {
                return Err(HostApiError::UnsupportedScheme {
                    url: url.to_owned(),
                    supported: SUPPORTED,
                });
            }
        };
        Ok(Self {
            address,
            path: path.to_owned(),
        })
    }

    /// The request target of the `Notify` method: `<path>/Notify?json`.
    pub fn notify_target(&self) -> String {
        format!("{}/Notify?json", self.path)
    }
}

#[cfg(feature = "insecure-test-hooks")]
const SUPPORTED: &str = "vsock, and http in this test build";
#[cfg(not(feature = "insecure-test-hooks"))]
const SUPPORTED: &str = "vsock only";

/// A non-empty decimal number without sign or leading `+`.
fn parse_decimal(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The events dstack's guest reports to its VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A boot stage started (payload: the stage name), `done` at the end.
    BootProgress,
    /// The boot failed (payload: `<stage>: <error chain>`).
    BootError,
    /// The identity (payload: `{"instance_id_seed","instance_id","app_id"}`), which the VMM
    /// writes to the next boot's `.instance_info`.
    InstanceInfo,
    /// The VM is going down (payload: the reason).
    ShutdownProgress,
}

impl Event {
    /// The wire name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::BootProgress => "boot.progress",
            Self::BootError => "boot.error",
            Self::InstanceInfo => "instance.info",
            Self::ShutdownProgress => "shutdown.progress",
        }
    }
}

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub event: Event,
    pub payload: String,
}

impl Notification {
    pub fn new(event: Event, payload: impl Into<String>) -> Self {
        Self {
            event,
            payload: payload.into(),
        }
    }

    /// The pRPC JSON body: `{"event":…,"payload":…}`.
    pub fn body(&self) -> String {
        serde_json::json!({ "event": self.event.name(), "payload": self.payload }).to_string()
    }

    /// The whole HTTP/1.1 request for `endpoint` (one request per connection).
    pub fn request(&self, endpoint: &Endpoint) -> Vec<u8> {
        let body = self.body();
        let host = match endpoint.address {
            Address::Vsock { .. } => "localhost".to_owned(),
            #[cfg(feature = "insecure-test-hooks")]
            Address::InsecureHttp(addr) => addr.to_string(),
        };
        format!(
            "POST {} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            endpoint.notify_target(),
            body.len()
        )
        .into_bytes()
    }
}

/// How far a reply has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// More bytes are needed (the caller stops at EOF, [`MAX_RESPONSE_BYTES`] or its deadline
    /// and then judges the status with [`Reply::status`] over what it has).
    Incomplete,
    /// The status line and headers are in, and the body when a `Content-Length` says how long.
    Complete,
}

impl Reply {
    /// Whether `bytes` hold the whole reply.
    pub fn progress(bytes: &[u8]) -> Self {
        let Some(end) = find(bytes, b"\r\n\r\n") else {
            return Self::Incomplete;
        };
        let headers = String::from_utf8_lossy(&bytes[..end]);
        let length = headers.lines().skip(1).find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        });
        match length {
            // A hostile Content-Length must not overflow the sum.
            Some(n) if bytes.len() < end.saturating_add(4).saturating_add(n) => Self::Incomplete,
            _ => Self::Complete,
        }
    }

    /// The reply's status: `Ok` for 200, else the error.
    pub fn status(bytes: &[u8]) -> Result<(), HostApiError> {
        let line_end = find(bytes, b"\r\n").ok_or(HostApiError::MalformedReply)?;
        let line =
            std::str::from_utf8(&bytes[..line_end]).map_err(|_| HostApiError::MalformedReply)?;
        let mut parts = line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if version != "HTTP/1.1" && version != "HTTP/1.0" {
            return Err(HostApiError::MalformedReply);
        }
        let status = parts
            .next()
            .filter(|s| s.len() == 3)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or(HostApiError::MalformedReply)?;
        if status == 200 {
            Ok(())
        } else {
            Err(HostApiError::Status { status })
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// PID 1's sending policy: hold notifications until the transport is up, send in order,
/// stop after [`MAX_CONSECUTIVE_FAILURES`] failures in a row.
#[derive(Debug, Default)]
pub struct Outbox {
    ready: bool,
    queued: Vec<Notification>,
    dropped: usize,
    failures: u32,
}

impl Outbox {
    /// An outbox whose transport is up now (`ready`) or only after [`Outbox::set_ready`].
    pub fn new(ready: bool) -> Self {
        Self {
            ready,
            ..Self::default()
        }
    }

    /// Queue `notification`; returns what to send now, in order (empty while not ready or
    /// after too many failures).
    pub fn push(&mut self, notification: Notification) -> Vec<Notification> {
        if self.is_off() {
            return Vec::new();
        }
        if self.queued.len() < MAX_QUEUED {
            self.queued.push(notification);
        } else {
            self.dropped += 1;
        }
        self.drain()
    }

    /// The transport is up: returns everything held so far.
    pub fn set_ready(&mut self) -> Vec<Notification> {
        self.ready = true;
        self.drain()
    }

    fn drain(&mut self) -> Vec<Notification> {
        if self.ready && !self.is_off() {
            std::mem::take(&mut self.queued)
        } else {
            Vec::new()
        }
    }

    /// Record the outcome of one send; returns `true` when this failure switched the outbox
    /// off (the caller logs that once).
    pub fn record(&mut self, delivered: bool) -> bool {
        if delivered {
            self.failures = 0;
            false
        } else {
            self.failures += 1;
            self.failures == MAX_CONSECUTIVE_FAILURES
        }
    }

    /// Whether no notification is tried any more.
    pub fn is_off(&self) -> bool {
        self.failures >= MAX_CONSECUTIVE_FAILURES
    }

    /// Notifications dropped because the queue was full.
    pub fn dropped(&self) -> usize {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_url_of_dstack_vmm() {
        let e = Endpoint::parse("vsock://2:10000/api").unwrap();
        assert_eq!(
            e.address,
            Address::Vsock {
                cid: 2,
                port: 10000
            }
        );
        assert_eq!(e.notify_target(), "/api/Notify?json");
        let e = Endpoint::parse("vsock://2:7/api/").unwrap();
        assert_eq!(e.notify_target(), "/api/Notify?json");
        let e = Endpoint::parse("vsock://2:7").unwrap();
        assert_eq!(e.notify_target(), "/Notify?json");
    }

    #[test]
    fn absent_or_empty_url_means_no_notifications() {
        assert_eq!(Endpoint::from_sys_config(None), Ok(None));
        assert_eq!(Endpoint::from_sys_config(Some("")), Ok(None));
        assert_eq!(Endpoint::from_sys_config(Some("  ")), Ok(None));
    }

    #[test]
    fn malformed_urls() {
        for url in [
            "vsock://2/api",
            "vsock://:10/api",
            "vsock://2:-1/api",
            "vsock://2:+1/api",
            "vsock://2:99999999999/api",
            "vsock://x:1/api",
        ] {
            assert_eq!(
                Endpoint::parse(url),
                Err(HostApiError::MalformedAddress { url: url.into() }),
                "{url}"
            );
        }
        assert_eq!(
            Endpoint::parse("vsock://2:1/a b"),
            Err(HostApiError::MalformedPath {
                url: "vsock://2:1/a b".into()
            })
        );
        assert!(matches!(
            Endpoint::parse("https://10.0.2.2:1/api"),
            Err(HostApiError::UnsupportedScheme { .. })
        ));
        assert!(matches!(
            Endpoint::parse("/api"),
            Err(HostApiError::UnsupportedScheme { .. })
        ));
    }

    #[cfg(not(feature = "insecure-test-hooks"))]
    #[test]
    fn release_build_refuses_http() {
        assert_eq!(
            Endpoint::parse("http://10.0.2.2:8000/api"),
            Err(HostApiError::UnsupportedScheme {
                url: "http://10.0.2.2:8000/api".into(),
                supported: "vsock only"
            })
        );
    }

    #[cfg(feature = "insecure-test-hooks")]
    #[test]
    fn test_build_accepts_http_over_ipv4() {
        let e = Endpoint::parse("http://10.0.2.2:8000/api").unwrap();
        assert_eq!(
            e.address,
            Address::InsecureHttp(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8000))
        );
        for url in ["http://host:8000/api", "http://10.0.2.2:70000/api"] {
            assert_eq!(
                Endpoint::parse(url),
                Err(HostApiError::MalformedAddress { url: url.into() })
            );
        }
    }

    #[test]
    fn request_is_dstack_notify() {
        let e = Endpoint::parse("vsock://2:10000/api").unwrap();
        let n = Notification::new(Event::InstanceInfo, r#"{"app_id":"ab"}"#);
        let text = String::from_utf8(n.request(&e)).unwrap();
        let body = r#"{"event":"instance.info","payload":"{\"app_id\":\"ab\"}"}"#;
        assert_eq!(
            text,
            format!(
                "POST /api/Notify?json HTTP/1.1\r\nHost: localhost\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            )
        );
        let v: serde_json::Value = serde_json::from_str(&n.body()).unwrap();
        assert_eq!(v["event"], "instance.info");
        assert_eq!(v["payload"], r#"{"app_id":"ab"}"#);
    }

    #[test]
    fn event_names() {
        let names: Vec<_> = [
            Event::BootProgress,
            Event::BootError,
            Event::InstanceInfo,
            Event::ShutdownProgress,
        ]
        .iter()
        .map(|e| e.name())
        .collect();
        assert_eq!(
            names,
            [
                "boot.progress",
                "boot.error",
                "instance.info",
                "shutdown.progress"
            ]
        );
    }

    #[test]
    fn reply_progress_and_status() {
        assert_eq!(Reply::progress(b"HTTP/1.1 200 OK\r\n"), Reply::Incomplete);
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(Reply::progress(&ok[..ok.len() - 1]), Reply::Incomplete);
        assert_eq!(Reply::progress(ok), Reply::Complete);
        assert_eq!(Reply::progress(b"HTTP/1.1 200 OK\r\n\r\n"), Reply::Complete);
        assert_eq!(Reply::status(ok), Ok(()));
        assert_eq!(
            Reply::status(b"HTTP/1.1 404 Not Found\r\n\r\n"),
            Err(HostApiError::Status { status: 404 })
        );
        for bad in [
            &b""[..],
            b"garbage\r\n",
            b"HTTP/2 200\r\n",
            b"HTTP/1.1 20\r\n",
        ] {
            assert_eq!(Reply::status(bad), Err(HostApiError::MalformedReply));
        }
    }

    fn n(payload: &str) -> Notification {
        Notification::new(Event::BootProgress, payload)
    }

    #[test]
    fn outbox_holds_until_ready_then_sends_in_order() {
        let mut o = Outbox::new(false);
        assert!(o.push(n("a")).is_empty());
        assert!(o.push(n("b")).is_empty());
        assert_eq!(o.set_ready(), vec![n("a"), n("b")]);
        assert_eq!(o.push(n("c")), vec![n("c")]);
    }

    #[test]
    fn outbox_switches_off_after_consecutive_failures() {
        let mut o = Outbox::new(true);
        assert!(!o.record(false));
        assert!(!o.record(true));
        assert!(!o.record(false));
        assert!(!o.record(false));
        assert!(o.record(false));
        assert!(o.is_off());
        assert!(o.push(n("x")).is_empty());
        assert!(!o.record(false));
    }

    #[test]
    fn outbox_queue_is_bounded() {
        let mut o = Outbox::new(false);
        for i in 0..MAX_QUEUED + 5 {
            o.push(n(&i.to_string()));
        }
        assert_eq!(o.dropped(), 5);
        assert_eq!(o.set_ready().len(), MAX_QUEUED);
    }
}
