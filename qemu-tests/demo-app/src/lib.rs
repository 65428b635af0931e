//! The pure parts of `demo-app` (request parsing, replies), tested on the host.

/// Errors of the demo app.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Reading or writing a connection failed.
    #[error("connection I/O")]
    Io(#[source] std::io::Error),
    /// The guest API socket did not accept the connection.
    #[error("connect to the dstack guest API")]
    GuestApiConnect(#[source] std::io::Error),
    /// The guest API answered something other than 200 with a JSON body.
    #[error("guest API {path}: {reason}")]
    GuestApiReply { path: String, reason: String },
    /// The request line is not `GET <path> HTTP/1.x`.
    #[error("bad request line")]
    BadRequestLine,
    /// The challenge is not hex or longer than the 64 bytes of report data.
    #[error("challenge must be hex of at most 64 bytes")]
    BadChallenge,
    /// `/emit` without an `event` of 1 to 64 characters `[a-z0-9-]`.
    #[error("event must be 1 to 64 characters a-z, 0-9 or -")]
    BadEventName,
}

/// A parsed `GET` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Path without the query.
    pub path: String,
    /// Raw query string (after `?`).
    pub query: String,
}

impl Request {
    /// The `challenge` query parameter as bytes, if present.
    pub fn challenge(&self) -> Result<Option<Vec<u8>>, DemoError> {
        let Some(value) = self
            .query
            .split('&')
            .find_map(|pair| pair.strip_prefix("challenge="))
        else {
            return Ok(None);
        };
        let bytes = hex::decode(value).map_err(|_| DemoError::BadChallenge)?;
        if bytes.len() > 64 {
            return Err(DemoError::BadChallenge);
        }
        Ok(Some(bytes))
    }
}

impl Request {
    /// The `event` query parameter of `/emit`: 1 to 64 characters `[a-z0-9-]` (the demo
    /// emits only names it can put on a request line unescaped).
    pub fn event_name(&self) -> Result<&str, DemoError> {
        let name = self
            .query
            .split('&')
            .find_map(|pair| pair.strip_prefix("event="))
            .ok_or(DemoError::BadEventName)?;
        let valid = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if valid {
            Ok(name)
        } else {
            Err(DemoError::BadEventName)
        }
    }
}

/// Parses the request line of an HTTP/1.x `GET`.
pub fn parse_request(head: &[u8]) -> Result<Request, DemoError> {
    let line = head
        .split(|b| *b == b'\n')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .ok_or(DemoError::BadRequestLine)?
        .trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (Some("GET"), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(DemoError::BadRequestLine);
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return Err(DemoError::BadRequestLine);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Request {
        path: path.to_owned(),
        query: query.to_owned(),
    })
}

/// A complete HTTP/1.1 response that closes the connection.
pub fn response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Bad Gateway",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The JSON body of a guest API reply (status 200 required; no chunked encoding).
pub fn json_body(path: &str, reply: &[u8]) -> Result<serde_json::Value, DemoError> {
    let fail = |reason: String| DemoError::GuestApiReply {
        path: path.to_owned(),
        reason,
    };
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| fail("no end of headers".into()))?;
    let (head, body) = reply.split_at(split);
    let head = String::from_utf8_lossy(head);
    let status = head.lines().next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("200") {
        return Err(fail(format!(
            "{status}: {}",
            String::from_utf8_lossy(body.get(4..).unwrap_or_default()).trim()
        )));
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err(fail("chunked replies are not supported".into()));
    }
    serde_json::from_slice(body.get(4..).unwrap_or_default())
        .map_err(|e| fail(format!("body is not JSON: {e}")))
}

/// Escapes text for HTML.
pub fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_get_with_challenge() {
        let r =
            parse_request(b"GET /attest?x=1&challenge=00ff HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(r.path, "/attest");
        assert_eq!(r.challenge().unwrap(), Some(vec![0, 0xff]));
        let r = parse_request(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(r.challenge().unwrap(), None);
    }

    #[test]
    fn event_names() {
        let r = parse_request(b"GET /emit?x=1&event=after-fill-2 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(r.event_name().unwrap(), "after-fill-2");
        for bad in ["", "?event=", "?event=Upper", "?event=a%20b", "?event=a.b"] {
            let head = format!("GET /emit{bad} HTTP/1.1\r\n\r\n");
            let r = parse_request(head.as_bytes()).unwrap();
            assert!(
                matches!(r.event_name(), Err(DemoError::BadEventName)),
                "{bad:?}"
            );
        }
        let long = format!("GET /emit?event={} HTTP/1.1\r\n\r\n", "a".repeat(65));
        assert!(matches!(
            parse_request(long.as_bytes()).unwrap().event_name(),
            Err(DemoError::BadEventName)
        ));
    }

    #[test]
    fn refuses_bad_requests_and_challenges() {
        for bad in [
            &b"POST / HTTP/1.1\r\n\r\n"[..],
            b"GET / SPDY\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(bad), Err(DemoError::BadRequestLine)),
                "{bad:?}"
            );
        }
        let r = parse_request(b"GET /?challenge=zz HTTP/1.1\r\n\r\n").unwrap();
        assert!(matches!(r.challenge(), Err(DemoError::BadChallenge)));
        let long = format!("GET /?challenge={} HTTP/1.1\r\n\r\n", "00".repeat(65));
        let r = parse_request(long.as_bytes()).unwrap();
        assert!(matches!(r.challenge(), Err(DemoError::BadChallenge)));
    }

    #[test]
    fn reads_guest_api_replies() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{\"app_id\":\"a\"}";
        assert_eq!(json_body("/Info", ok).unwrap()["app_id"], "a");
        let err =
            json_body("/Info", b"HTTP/1.1 500 Internal\r\n\r\n{\"error\":\"x\"}").unwrap_err();
        assert!(err.to_string().contains("500"), "{err}");
        json_body("/Info", b"HTTP/1.1 200 OK\r\n").unwrap_err();
        let chunked = json_body(
            "/Info",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n",
        );
        assert!(matches!(chunked, Err(DemoError::GuestApiReply { .. })));
        json_body("/Info", b"HTTP/1.1 200 OK\r\n\r\nnot json").unwrap_err();
    }

    #[test]
    fn responses_and_escaping() {
        let r = String::from_utf8(response(404, "text/plain", "nope")).unwrap();
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(r.contains("Content-Length: 4\r\n"));
        assert_eq!(
            html_escape("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }
}
