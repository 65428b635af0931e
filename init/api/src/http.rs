//! A small, strict HTTP/1.1 server side: request parsing with bounded sizes and deadlines, and
//! response encoding.
//!
//! What it accepts: `GET` and `POST` with an origin-form target (`/path[?query]`) or an
//! absolute-form one (`http://authority/path[?query]`, RFC 9112 §3.2.2: some dstack clients
//! send `POST http://unix.socket/Info`; the authority is ignored, as is `Host`, which a legacy
//! client leaves out on the Unix socket), `HTTP/1.1` or `HTTP/1.0`, CRLF line endings, at most [`Limits::max_headers`] fields in at
//! most [`Limits::max_head_bytes`], a body framed only by `Content-Length` (at most
//! [`Limits::max_body_bytes`]), `Expect: 100-continue`, and keep-alive. Everything else is a
//! typed [`HttpError`] that maps to a status code; parsing never panics.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// A connected stream the server reads requests from and writes answers to: the workloads'
/// Unix sockets and the Worker API's TCP port.
pub trait Connection {
    /// One `read(2)`.
    fn read_some(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes all of `bytes`, then flushes.
    fn write_every(&self, bytes: &[u8]) -> io::Result<()>;
    /// `SO_RCVTIMEO`.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// `SO_SNDTIMEO`.
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Stops sending (the peer reads end of file).
    fn shutdown_write(&self) -> io::Result<()>;
    /// `O_NONBLOCK`.
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()>;
}

macro_rules! connection {
    ($stream:ty) => {
        impl Connection for $stream {
            fn read_some(&self, buf: &mut [u8]) -> io::Result<usize> {
                let mut stream = self;
                stream.read(buf)
            }
            fn write_every(&self, bytes: &[u8]) -> io::Result<()> {
                let mut stream = self;
                stream.write_all(bytes)?;
                stream.flush()
            }
            fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
                <$stream>::set_read_timeout(self, timeout)
            }
            fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
                <$stream>::set_write_timeout(self, timeout)
            }
            fn shutdown_write(&self) -> io::Result<()> {
                self.shutdown(std::net::Shutdown::Write)
            }
            fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
                <$stream>::set_nonblocking(self, nonblocking)
            }
        }
    };
}
connection!(UnixStream);
connection!(TcpStream);

/// Bounds on one connection's requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus header fields plus the blank line.
    pub max_head_bytes: usize,
    /// Header fields per request.
    pub max_headers: usize,
    /// Body bytes per request.
    pub max_body_bytes: usize,
    /// Time from the first byte of a request to its last.
    pub request_timeout: Duration,
    /// Time a kept-alive connection may wait for the next request.
    pub idle_timeout: Duration,
    /// Time one response write may block.
    pub write_timeout: Duration,
    /// Requests served on one connection before it is closed.
    pub max_requests_per_connection: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: 8 * 1024,
            max_headers: 32,
            max_body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            max_requests_per_connection: 100,
        }
    }
}

/// Errors of reading and parsing a request.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No blank line within the head limit.
    #[error("request head exceeds {limit} bytes")]
    HeadTooLarge { limit: usize },
    /// Too many header fields.
    #[error("request has more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    /// A line ends in a bare LF or contains a bare CR.
    #[error("request head has a line ending other than CRLF")]
    ParseLineEnding,
    /// The request line is not `method SP target SP version`.
    #[error("malformed request line")]
    ParseRequestLine,
    /// A method other than GET and POST.
    #[error("method {method:?} is not supported")]
    UnsupportedMethod { method: String },
    /// The target is neither origin-form (`/path`) nor absolute-form (`http://host/path`).
    #[error("request target is neither a path nor an http URL")]
    ParseRequestTarget,
    /// Neither HTTP/1.1 nor HTTP/1.0.
    #[error("HTTP version {version:?} is not supported")]
    UnsupportedVersion { version: String },
    /// A header line is not `name: value` (or is an obsolete folded line).
    #[error("malformed header field on line {line}")]
    ParseHeader { line: usize },
    /// Content-Length is not a decimal number.
    #[error("invalid Content-Length")]
    ParseContentLength,
    /// A header that must appear at most once appeared again.
    #[error("duplicate {name} header")]
    DuplicateHeader { name: &'static str },
    /// Bodies framed by Transfer-Encoding are not supported.
    #[error("Transfer-Encoding is not supported; send Content-Length")]
    UnsupportedTransferEncoding,
    /// An expectation other than 100-continue.
    #[error("expectation {value:?} is not supported")]
    UnsupportedExpectation { value: String },
    /// The declared body is larger than the limit.
    #[error("body of {length} bytes exceeds the limit of {limit}")]
    BodyTooLarge { length: u64, limit: usize },
    /// The request did not arrive completely in time.
    #[error("request not complete within {timeout:?}")]
    RequestTimeout { timeout: Duration },
    /// The peer closed the connection in the middle of a request.
    #[error("connection closed in the middle of a request")]
    TruncatedRequest,
    /// Reading from the socket failed.
    #[error("read request")]
    ReadRequest {
        #[source]
        source: io::Error,
    },
    /// Writing the interim 100 Continue failed.
    #[error("write 100 Continue")]
    WriteContinue {
        #[source]
        source: io::Error,
    },
    /// Setting a socket timeout failed.
    #[error("set socket timeout")]
    SetTimeout {
        #[source]
        source: io::Error,
    },
}

impl HttpError {
    /// The status to answer with, or `None` when the peer is gone or the socket failed.
    pub fn status(&self) -> Option<Status> {
        Some(match self {
            Self::HeadTooLarge { .. } | Self::TooManyHeaders { .. } => {
                Status::RequestHeaderFieldsTooLarge
            }
            Self::ParseLineEnding
            | Self::ParseRequestLine
            | Self::ParseRequestTarget
            | Self::ParseHeader { .. }
            | Self::ParseContentLength
            | Self::DuplicateHeader { .. } => Status::BadRequest,
            Self::UnsupportedMethod { .. } => Status::MethodNotAllowed,
            Self::UnsupportedVersion { .. } => Status::VersionNotSupported,
            Self::UnsupportedTransferEncoding => Status::NotImplemented,
            Self::UnsupportedExpectation { .. } => Status::ExpectationFailed,
            Self::BodyTooLarge { .. } => Status::PayloadTooLarge,
            Self::RequestTimeout { .. } => Status::RequestTimeout,
            Self::TruncatedRequest
            | Self::ReadRequest { .. }
            | Self::WriteContinue { .. }
            | Self::SetTimeout { .. } => return None,
        })
    }
}

/// Response status codes this server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 100 (interim).
    Continue,
    /// 200.
    Ok,
    /// 400.
    BadRequest,
    /// 403.
    Forbidden,
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 408.
    RequestTimeout,
    /// 409.
    Conflict,
    /// 413.
    PayloadTooLarge,
    /// 417.
    ExpectationFailed,
    /// 429.
    TooManyRequests,
    /// 431.
    RequestHeaderFieldsTooLarge,
    /// 500.
    InternalServerError,
    /// 501.
    NotImplemented,
    /// 503.
    ServiceUnavailable,
    /// 505.
    VersionNotSupported,
}

impl Status {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            Self::Continue => 100,
            Self::Ok => 200,
            Self::BadRequest => 400,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::ExpectationFailed => 417,
            Self::TooManyRequests => 429,
            Self::RequestHeaderFieldsTooLarge => 431,
            Self::InternalServerError => 500,
            Self::NotImplemented => 501,
            Self::ServiceUnavailable => 503,
            Self::VersionNotSupported => 505,
        }
    }

    /// The reason phrase.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Continue => "Continue",
            Self::Ok => "OK",
            Self::BadRequest => "Bad Request",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "Not Found",
            Self::MethodNotAllowed => "Method Not Allowed",
            Self::RequestTimeout => "Request Timeout",
            Self::Conflict => "Conflict",
            Self::PayloadTooLarge => "Payload Too Large",
            Self::ExpectationFailed => "Expectation Failed",
            Self::TooManyRequests => "Too Many Requests",
            Self::RequestHeaderFieldsTooLarge => "Request Header Fields Too Large",
            Self::InternalServerError => "Internal Server Error",
            Self::NotImplemented => "Not Implemented",
            Self::ServiceUnavailable => "Service Unavailable",
            Self::VersionNotSupported => "HTTP Version Not Supported",
        }
    }
}

/// Request methods this server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET (arguments in the query).
    Get,
    /// POST (arguments in the body).
    Post,
}

/// HTTP versions this server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0 (closes after the response unless keep-alive is asked for).
    Http10,
    /// HTTP/1.1.
    Http11,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Method.
    pub method: Method,
    /// The path part of the target (no percent-decoding).
    pub path: String,
    /// The query after `?`, if any.
    pub query: Option<String>,
    /// Version.
    pub version: Version,
    /// Declared body length (0 without Content-Length).
    pub content_length: usize,
    /// Whether the client wants the connection kept open.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// A complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The head.
    pub head: RequestHead,
    /// The body (exactly `content_length` bytes).
    pub body: Vec<u8>,
}

/// A response: always a JSON body with its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status.
    pub status: Status,
    /// `Content-Type` (`application/json` but for the Worker API's pages).
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// A 200 response with the JSON `body`.
    pub fn ok(body: Vec<u8>) -> Self {
        Self {
            status: Status::Ok,
            content_type: JSON,
            body,
        }
    }

    /// A response of another type (HTML, plain text).
    pub fn text(status: Status, content_type: &'static str, body: String) -> Self {
        Self {
            status,
            content_type,
            body: body.into_bytes(),
        }
    }

    /// An error response with body `{"error": message}` (what dstack's RPC layer and the
    /// SDKs expect).
    pub fn error(status: Status, message: &str) -> Self {
        let body = serde_json::json!({ "error": message })
            .to_string()
            .into_bytes();
        Self {
            status,
            content_type: JSON,
            body,
        }
    }

    /// The bytes on the wire.
    pub fn encode(&self, keep_alive: bool) -> Vec<u8> {
        let connection = if keep_alive { "keep-alive" } else { "close" };
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
            self.status.code(),
            self.status.reason(),
            self.content_type,
            self.body.len(),
            connection
        )
        .into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// The content type of the API's answers.
const JSON: &str = "application/json";

/// Where the head ends: the index just past `\r\n\r\n`.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Checks that every LF is preceded by CR and every CR followed by LF, in `buf[..len]`,
/// where a CR at the very end may still get its LF.
fn check_line_endings(buf: &[u8]) -> Result<(), HttpError> {
    for (i, &b) in buf.iter().enumerate() {
        let bad = match b {
            b'\n' => i == 0 || buf[i - 1] != b'\r',
            b'\r' => buf.get(i + 1).is_some_and(|&next| next != b'\n'),
            _ => false,
        };
        if bad {
            return Err(HttpError::ParseLineEnding);
        }
    }
    Ok(())
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

fn is_field_value_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn parse_request_line(line: &[u8]) -> Result<(Method, String, Option<String>, Version), HttpError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::ParseRequestLine);
    };
    let method = match method {
        b"GET" => Method::Get,
        b"POST" => Method::Post,
        other if is_token(other) => {
            return Err(HttpError::UnsupportedMethod {
                method: String::from_utf8_lossy(other).into_owned(),
            });
        }
        _ => return Err(HttpError::ParseRequestLine),
    };
    let version = match version {
        b"HTTP/1.1" => Version::Http11,
        b"HTTP/1.0" => Version::Http10,
        other if other.starts_with(b"HTTP/") && other.iter().all(|b| b.is_ascii_graphic()) => {
            return Err(HttpError::UnsupportedVersion {
                version: String::from_utf8_lossy(other).into_owned(),
            });
        }
        _ => return Err(HttpError::ParseRequestLine),
    };
    let (path, query) = parse_target(target)?;
    Ok((method, path, query, version))
}

/// The path and query of an origin-form (`/p?q`) or absolute-form (`http://authority/p?q`,
/// scheme `http` or `https` in any case, authority non-empty and ignored, an empty path read
/// as `/`) request target. A fragment is never part of a target.
fn parse_target(target: &[u8]) -> Result<(String, Option<String>), HttpError> {
    if target.is_empty()
        || !target.iter().all(|b| (0x21..=0x7e).contains(b))
        || target.contains(&b'#')
    {
        return Err(HttpError::ParseRequestTarget);
    }
    // Only visible ASCII, so this is valid UTF-8.
    let target = String::from_utf8_lossy(target);
    let origin = if target.starts_with('/') {
        target.as_ref()
    } else {
        let (scheme, rest) = target
            .split_once("://")
            .ok_or(HttpError::ParseRequestTarget)?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(HttpError::ParseRequestTarget);
        }
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, origin) = rest.split_at(authority_end);
        if authority.is_empty() || authority.contains('@') {
            return Err(HttpError::ParseRequestTarget);
        }
        origin
    };
    let (path, query) = match origin.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (origin, None),
    };
    let path = if path.is_empty() { "/" } else { path };
    Ok((path.to_owned(), query))
}

fn parse_content_length(value: &[u8], limit: usize) -> Result<usize, HttpError> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::ParseContentLength);
    }
    let length = value
        .iter()
        .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
    match usize::try_from(length) {
        Ok(len) if len <= limit => Ok(len),
        _ => Err(HttpError::BodyTooLarge { length, limit }),
    }
}

/// Parses a request head from the start of `buf`. `Ok(None)` means more bytes are needed;
/// `Ok(Some((head, len)))` gives the head and its length including the blank line. Pure and
/// panic-free for any input.
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let window = &buf[..buf.len().min(limits.max_head_bytes)];
    let Some(end) = find_head_end(window) else {
        check_line_endings(window)?;
        if buf.len() >= limits.max_head_bytes {
            return Err(HttpError::HeadTooLarge {
                limit: limits.max_head_bytes,
            });
        }
        return Ok(None);
    };
    let head = &buf[..end - 4];
    check_line_endings(head)?;
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let (method, path, query, version) =
        parse_request_line(lines.next().ok_or(HttpError::ParseRequestLine)?)?;

    let mut content_length = None;
    // `Host` is checked for duplicates but not required: the sockets are local and a legacy
    // dstack client sends none (RFC 9112 §3.2 makes it a client requirement; the authority of
    // an absolute-form target wins anyway).
    let mut host = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for (index, line) in lines.enumerate() {
        if index >= limits.max_headers {
            return Err(HttpError::TooManyHeaders {
                limit: limits.max_headers,
            });
        }
        let line_no = index + 2;
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(HttpError::ParseHeader { line: line_no })?;
        let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
        if !is_token(name) || !value.iter().all(|&b| is_field_value_byte(b)) {
            return Err(HttpError::ParseHeader { line: line_no });
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err(HttpError::DuplicateHeader {
                    name: "Content-Length",
                });
            }
            content_length = Some(parse_content_length(value, limits.max_body_bytes)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(HttpError::UnsupportedTransferEncoding);
        } else if name.eq_ignore_ascii_case(b"host") {
            if host {
                return Err(HttpError::DuplicateHeader { name: "Host" });
            }
            host = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim_ows) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            if value.eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(HttpError::UnsupportedExpectation {
                    value: String::from_utf8_lossy(value).into_owned(),
                });
            }
        }
    }
    let keep_alive = match version {
        Version::Http11 => !close,
        Version::Http10 => keep_alive_token && !close,
    };
    Ok(Some((
        RequestHead {
            method,
            path,
            query,
            version,
            content_length: content_length.unwrap_or(0),
            keep_alive,
            expect_continue,
        },
        end,
    )))
}

/// Parses one complete request (head and `Content-Length` body) from the start of `buf`.
/// `Ok(None)` means more bytes are needed; `Ok(Some((request, len)))` gives the request and the
/// bytes it used (what follows is the next pipelined request). Pure and panic-free for any
/// input: the same framing [`read_request`] applies to a socket.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<(Request, usize)>, HttpError> {
    let Some((head, len)) = parse_head(buf, limits)? else {
        return Ok(None);
    };
    let Some(body) = len
        .checked_add(head.content_length)
        .and_then(|total| buf.get(len..total))
    else {
        return Ok(None);
    };
    let total = len + body.len();
    let body = body.to_vec();
    Ok(Some((Request { head, body }, total)))
}

/// Reads one request from `stream`. `buf` carries bytes already received (pipelined requests)
/// across calls. `Ok(None)`: the peer closed, or stayed idle past the idle timeout, between
/// requests.
pub fn read_request<S: Connection>(
    stream: &S,
    buf: &mut Vec<u8>,
    limits: &Limits,
) -> Result<Option<Request>, HttpError> {
    let mut deadline = (!buf.is_empty()).then(|| Instant::now() + limits.request_timeout);
    let mut head: Option<(RequestHead, usize)> = None;
    let mut chunk = [0u8; 4096];
    loop {
        if head.is_none() {
            head = parse_head(buf, limits)?;
            if let Some((h, len)) = &head
                && h.expect_continue
                && buf.len() < len + h.content_length
            {
                let interim = format!("HTTP/1.1 {} Continue\r\n\r\n", Status::Continue.code());
                stream
                    .write_every(interim.as_bytes())
                    .map_err(|source| HttpError::WriteContinue { source })?;
            }
        }
        if let Some((h, len)) = &head {
            let total = len + h.content_length;
            if buf.len() >= total {
                let body = buf[*len..total].to_vec();
                let head = h.clone();
                buf.drain(..total);
                return Ok(Some(Request { head, body }));
            }
        }
        let timeout = match deadline {
            None => limits.idle_timeout,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(HttpError::RequestTimeout {
                        timeout: limits.request_timeout,
                    });
                }
                left
            }
        };
        stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(|source| HttpError::SetTimeout { source })?;
        // Never read past what the current request can still need.
        let want = match &head {
            Some((h, len)) => (len + h.content_length).saturating_sub(buf.len()),
            None => limits.max_head_bytes.saturating_sub(buf.len()).max(1),
        };
        let want = want.min(chunk.len());
        match stream.read_some(&mut chunk[..want]) {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err(HttpError::TruncatedRequest),
            Ok(n) => {
                if deadline.is_none() {
                    deadline = Some(Instant::now() + limits.request_timeout);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if buf.is_empty() {
                    return Ok(None);
                }
                return Err(HttpError::RequestTimeout {
                    timeout: limits.request_timeout,
                });
            }
            Err(source) => return Err(HttpError::ReadRequest { source }),
        }
    }
}

/// Decodes `application/x-www-form-urlencoded`-style query pairs (`a=b&c=d`, `+` is a space)
/// into a JSON object of strings. A bare `json` key (dstack's RPC layer uses `?json` to ask for
/// JSON) is ignored. `None` when a pair is malformed.
pub fn query_to_json(query: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut map = serde_json::Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = match pair.split_once('=') {
            Some((k, v)) => (percent_decode(k)?, percent_decode(v)?),
            None if pair == "json" => continue,
            None => (percent_decode(pair)?, String::new()),
        };
        if map.insert(key, serde_json::Value::String(value)).is_some() {
            return None;
        }
    }
    Some(map)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Option<(RequestHead, usize)>, HttpError> {
        parse_head(bytes, &Limits::default())
    }

    #[test]
    fn parses_a_typical_sdk_request() {
        let req = b"POST /GetQuote HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nUser-Agent: dstack-sdk-python/0.5.4\r\nContent-Type: application/json\r\nContent-Length: 18\r\n\r\n{\"report_data\":\"\"}";
        let (head, len) = parse(req).unwrap().unwrap();
        assert_eq!(len, req.len() - 18);
        assert_eq!(
            head,
            RequestHead {
                method: Method::Post,
                path: "/GetQuote".into(),
                query: None,
                version: Version::Http11,
                content_length: 18,
                keep_alive: true,
                expect_continue: false,
            }
        );
    }

    #[test]
    fn parse_request_frames_the_body_and_leaves_the_next_request() {
        let first = b"POST /EmitEvent HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody";
        let mut both = first.to_vec();
        both.extend_from_slice(b"GET /Info HTTP/1.1\r\nHost: x\r\n\r\n");
        let (request, used) = parse_request(&both, &Limits::default()).unwrap().unwrap();
        assert_eq!(used, first.len());
        assert_eq!(request.body, b"body");
        assert_eq!(request.head.path, "/EmitEvent");
        for cut in 0..first.len() {
            assert!(
                parse_request(&first[..cut], &Limits::default())
                    .unwrap()
                    .is_none(),
                "cut at {cut}"
            );
        }
        // No Host: a legacy client on the Unix socket sends none.
        let (request, used) = parse_request(b"GET /Info HTTP/1.1\r\n\r\n", &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!((request.head.path.as_str(), used), ("/Info", 22));
    }

    /// RFC 9112 §3.2.2: a server must accept the absolute form; dstack clients send
    /// `POST http://unix.socket/<Method>` (and `http://localhost/...`, `http://dstack/...`).
    #[test]
    fn absolute_form_targets() {
        let cases: &[(&[u8], &str, Option<&str>)] = &[
            (
                b"POST http://unix.socket/Info HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                "/Info",
                None,
            ),
            (
                b"POST HTTP://dstack/GetQuote HTTP/1.1\r\nHost: dstack\r\n\r\n",
                "/GetQuote",
                None,
            ),
            (
                b"GET https://localhost:8090/prpc/Tappd.Info?json HTTP/1.1\r\n\r\n",
                "/prpc/Tappd.Info",
                Some("json"),
            ),
            (b"GET http://localhost HTTP/1.1\r\n\r\n", "/", None),
            (
                b"GET http://localhost?json HTTP/1.0\r\n\r\n",
                "/",
                Some("json"),
            ),
            (b"GET /Info?a=b HTTP/1.1\r\n\r\n", "/Info", Some("a=b")),
        ];
        for (input, path, query) in cases {
            let (head, len) = parse(input).unwrap().unwrap();
            assert_eq!(len, input.len(), "{:?}", String::from_utf8_lossy(input));
            assert_eq!(head.path, *path);
            assert_eq!(head.query.as_deref(), *query);
        }
    }

    #[test]
    fn incomplete_heads_ask_for_more() {
        let req = b"GET /Info?json HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 0..req.len() {
            assert!(parse(&req[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        let (head, _) = parse(req).unwrap().unwrap();
        assert_eq!(head.query.as_deref(), Some("json"));
        assert_eq!(head.method, Method::Get);
    }

    #[test]
    fn connection_semantics() {
        let close = parse(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n")
            .unwrap()
            .unwrap()
            .0;
        assert!(!close.keep_alive);
        let old = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().0;
        assert!(!old.keep_alive);
        let old_ka = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap()
            .0;
        assert!(old_ka.keep_alive);
        let expect = parse(
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n",
        )
        .unwrap()
        .unwrap()
        .0;
        assert!(expect.expect_continue);
    }

    #[test]
    fn rejects_with_the_right_error() {
        type Check = fn(&HttpError) -> bool;
        let cases: &[(&[u8], Check)] = &[
            (b"GET / HTTP/1.1\nHost: x\n\n", |e| {
                matches!(e, HttpError::ParseLineEnding)
            }),
            (b"GET / HTTP/1.1\r\nHo\rst: x\r\n\r\n", |e| {
                matches!(e, HttpError::ParseLineEnding)
            }),
            (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", |e| {
                matches!(e, HttpError::ParseRequestLine)
            }),
            (
                b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n",
                |e| matches!(e, HttpError::UnsupportedMethod { method } if method == "DELETE"),
            ),
            (b"GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n", |e| {
                matches!(e, HttpError::ParseRequestTarget)
            }),
            (b"GET http:///Info HTTP/1.1\r\n\r\n", |e| {
                matches!(e, HttpError::ParseRequestTarget)
            }),
            (b"GET http://u@x/Info HTTP/1.1\r\n\r\n", |e| {
                matches!(e, HttpError::ParseRequestTarget)
            }),
            (b"GET unix.socket:80 HTTP/1.1\r\n\r\n", |e| {
                matches!(e, HttpError::ParseRequestTarget)
            }),
            (b"OPTIONS * HTTP/1.1\r\n\r\n", |e| {
                matches!(e, HttpError::UnsupportedMethod { .. })
            }),
            (b"GET * HTTP/1.1\r\n\r\n", |e| {
                matches!(e, HttpError::ParseRequestTarget)
            }),
            (b"GET /Info#frag HTTP/1.1\r\n\r\n", |e| {
                matches!(e, HttpError::ParseRequestTarget)
            }),
            (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", |e| {
                matches!(e, HttpError::UnsupportedVersion { .. })
            }),
            (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", |e| {
                matches!(e, HttpError::DuplicateHeader { name: "Host" })
            }),
            (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", |e| {
                matches!(e, HttpError::ParseHeader { line: 2 })
            }),
            (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", |e| {
                matches!(e, HttpError::ParseHeader { line: 3 })
            }),
            (b"GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", |e| {
                matches!(e, HttpError::ParseHeader { line: 3 })
            }),
            (b"GET / HTTP/1.1\r\nHost: x\x01\r\n\r\n", |e| {
                matches!(e, HttpError::ParseHeader { line: 2 })
            }),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                |e| matches!(e, HttpError::ParseContentLength),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\n",
                |e| matches!(e, HttpError::ParseContentLength),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                |e| {
                    matches!(
                        e,
                        HttpError::DuplicateHeader {
                            name: "Content-Length"
                        }
                    )
                },
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n",
                |e| {
                    matches!(
                        e,
                        HttpError::BodyTooLarge {
                            length: 65537,
                            limit: 65536
                        }
                    )
                },
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
                |e| matches!(e, HttpError::ParseContentLength),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                |e| matches!(e, HttpError::UnsupportedTransferEncoding),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n",
                |e| matches!(e, HttpError::UnsupportedExpectation { .. }),
            ),
        ];
        for (input, check) in cases {
            let err = parse(input).unwrap_err();
            assert!(
                check(&err),
                "{:?} gave {err:?}",
                String::from_utf8_lossy(input)
            );
            assert!(err.status().is_some());
        }
    }

    #[test]
    fn bare_lf_is_rejected_before_the_head_completes() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\nHo"),
            Err(HttpError::ParseLineEnding)
        ));
        // A CR at the very end may still be followed by its LF.
        assert!(parse(b"GET / HTTP/1.1\r").unwrap().is_none());
    }

    #[test]
    fn head_and_header_count_limits() {
        let limits = Limits {
            max_head_bytes: 64,
            max_headers: 2,
            ..Limits::default()
        };
        let long = [b'a'; 100];
        assert!(matches!(
            parse_head(&long, &limits),
            Err(HttpError::HeadTooLarge { limit: 64 })
        ));
        let many = b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\n\r\n";
        assert!(matches!(
            parse_head(many, &limits),
            Err(HttpError::TooManyHeaders { limit: 2 })
        ));
        assert_eq!(
            HttpError::TooManyHeaders { limit: 2 }.status(),
            Some(Status::RequestHeaderFieldsTooLarge)
        );
    }

    /// Deterministic xorshift, so the loop below is reproducible without a dependency.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn never_panics_on_truncated_or_mutated_requests() {
        let seeds: [&[u8]; 4] = [
            b"POST /GetQuote HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n{}",
            b"GET /prpc/Tappd.Info?json&a=%41 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"\r\n\r\n\r\n",
        ];
        let limits = Limits {
            max_head_bytes: 96,
            max_headers: 4,
            max_body_bytes: 8,
            ..Limits::default()
        };
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for seed in seeds {
            for cut in 0..=seed.len() {
                let _ = parse_head(&seed[..cut], &limits);
                let _ = parse_head(&seed[..cut], &Limits::default());
            }
            for _ in 0..3000 {
                let mut input = seed.to_vec();
                for _ in 0..(next(&mut rng) % 6) {
                    let r = next(&mut rng);
                    let pos = usize::try_from(r % (input.len() as u64 + 1)).unwrap();
                    let byte = (r >> 16).to_le_bytes()[0];
                    match r % 3 {
                        0 if pos < input.len() => input[pos] = byte,
                        1 => input.insert(pos, byte),
                        _ => input.truncate(pos),
                    }
                }
                let _ = parse_head(&input, &limits);
                if let Ok(Some((head, len))) = parse_head(&input, &Limits::default()) {
                    assert!(len <= input.len());
                    assert!(head.path.starts_with('/'));
                }
            }
        }
        for _ in 0..3000 {
            let len = usize::try_from(next(&mut rng) % 200).unwrap();
            let garbage: Vec<u8> = (0..len).map(|_| next(&mut rng).to_le_bytes()[0]).collect();
            let _ = parse_head(&garbage, &limits);
            let _ = query_to_json(&String::from_utf8_lossy(&garbage));
        }
    }

    #[test]
    fn query_decoding() {
        let map = query_to_json("json&report_data=ab%2Fcd&x=a+b").unwrap();
        assert_eq!(map["report_data"], "ab/cd");
        assert_eq!(map["x"], "a b");
        assert_eq!(map.len(), 2);
        assert!(query_to_json("a=%zz").is_none());
        assert!(query_to_json("a=%4").is_none());
        assert!(query_to_json("a=1&a=2").is_none());
        assert!(query_to_json("a=%ff").is_none());
    }

    #[test]
    fn response_encoding() {
        let wire = Response::error(Status::NotFound, "no such method").encode(false);
        let text = String::from_utf8(wire).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Content-Length: 26\r\nConnection: close\r\n\r\n"));
        assert!(text.ends_with("{\"error\":\"no such method\"}"));
    }
}
