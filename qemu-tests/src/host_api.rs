//! A test dstack host API (the VMM side of `host_api_url`): a loopback HTTP server answering
//! pRPC JSON `Notify` (`POST <path>/Notify?json`, body `{"event":…,"payload":…}`) with `{}`,
//! recording every notification in order. Like dstack-vmm it turns the last `instance.info`
//! into the `.instance_info` the next boot's host share carries ([`HostApiHandle::instance_info`]).
//!
//! The guest reaches it over slirp as `http://10.0.2.2:<port>/api`, a URL only test builds of
//! the init accept (a release build speaks vsock only; these machines have no
//! `/dev/vhost-vsock`). Any other path or method gets a 404 and is recorded too, so a test sees
//! a wrong request rather than a silent drop.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The largest request body accepted (a notification is well under 1 KiB).
const MAX_BODY: usize = 64 * 1024;

/// One request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub method: String,
    pub target: String,
    /// `event` of the body, empty when the body was not a notification.
    pub event: String,
    /// `payload` of the body.
    pub payload: String,
}

/// A running test host API; stops on drop.
#[derive(Debug)]
pub struct HostApiHandle {
    address: Listening,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Where the server listens.
#[derive(Debug, Clone)]
enum Listening {
    Tcp(SocketAddr),
    /// The vsock port the guest connects to and the unix socket vhost-device-vsock forwards
    /// it to (`<uds>_<port>`).
    Unix {
        vsock_port: u32,
        path: PathBuf,
    },
}

/// Starts the server on `127.0.0.1`, any free port.
pub fn start() -> io::Result<HostApiHandle> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    Ok(spawn(Listening::Tcp(address), move || {
        listener.accept().map(|(s, _)| Box::new(s) as Box<dyn Conn>)
    }))
}

/// Starts the server on the unix socket where vhost-device-vsock (`--uds-path <uds>`) hands
/// over guest connections to host vsock port `vsock_port`: `<uds>_<vsock_port>`. The guest's
/// `host_api_url` is then [`HostApiHandle::guest_url`], `vsock://2:<vsock_port>/api`.
pub fn start_vsock(uds: &Path, vsock_port: u32) -> io::Result<HostApiHandle> {
    let mut name = uds.as_os_str().to_owned();
    name.push(format!("_{vsock_port}"));
    let path = PathBuf::from(name);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    Ok(spawn(Listening::Unix { vsock_port, path }, move || {
        listener.accept().map(|(s, _)| Box::new(s) as Box<dyn Conn>)
    }))
}

/// A connection of either listener.
trait Conn: Read + Write + Send {
    fn set_timeout(&self, timeout: Duration) -> io::Result<()>;
}

impl Conn for TcpStream {
    fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
}

impl Conn for UnixStream {
    fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
}

fn spawn(
    address: Listening,
    accept: impl Fn() -> io::Result<Box<dyn Conn>> + Send + 'static,
) -> HostApiHandle {
    let received = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let received = Arc::clone(&received);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            loop {
                let stream = accept();
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                if let Ok(r) = serve(stream) {
                    received
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(r);
                }
            }
        })
    };
    HostApiHandle {
        address,
        received,
        stop,
        thread: Some(thread),
    }
}

impl HostApiHandle {
    /// The port on host loopback (0 for a vsock server).
    pub fn port(&self) -> u16 {
        match &self.address {
            Listening::Tcp(a) => a.port(),
            Listening::Unix { .. } => 0,
        }
    }

    /// The `host_api_url` the guest uses: `vsock://2:<port>/api` for [`start_vsock`], the
    /// slirp `http://10.0.2.2:<port>/api` (test builds only) for [`start`].
    pub fn guest_url(&self) -> String {
        match &self.address {
            Listening::Tcp(a) => format!("http://10.0.2.2:{}/api", a.port()),
            Listening::Unix { vsock_port, .. } => format!("vsock://2:{vsock_port}/api"),
        }
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// `(event, payload)` of every notification so far.
    pub fn notifications(&self) -> Vec<(String, String)> {
        self.received()
            .into_iter()
            .filter(|r| !r.event.is_empty())
            .map(|r| (r.event, r.payload))
            .collect()
    }

    /// The payloads of `event`, in order.
    pub fn payloads(&self, event: &str) -> Vec<String> {
        self.notifications()
            .into_iter()
            .filter(|(e, _)| e == event)
            .map(|(_, p)| p)
            .collect()
    }

    /// What dstack-vmm writes to `.instance_info` for the next boot: the last `instance.info`
    /// payload, byte for byte.
    pub fn instance_info(&self) -> Option<Vec<u8>> {
        self.payloads("instance.info").pop().map(String::into_bytes)
    }

    /// Forget what was received (between boots).
    pub fn clear(&self) {
        self.received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

impl Drop for HostApiHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Unblock `accept`.
        match &self.address {
            Listening::Tcp(a) => {
                let _ = TcpStream::connect_timeout(a, Duration::from_secs(1));
            }
            Listening::Unix { path, .. } => {
                let _ = UnixStream::connect(path);
                let _ = std::fs::remove_file(path);
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request, answers it, closes.
fn serve(stream: Box<dyn Conn>) -> io::Result<Received> {
    stream.set_timeout(Duration::from_secs(10))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length.min(MAX_BODY)];
    reader.read_exact(&mut body)?;
    let notify =
        method == "POST" && (target == "/api/Notify?json" || target == "/api/HostApi.Notify?json");
    let (event, payload) = if notify {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        (
            v["event"].as_str().unwrap_or("").to_owned(),
            v["payload"].as_str().unwrap_or("").to_owned(),
        )
    } else {
        (String::new(), String::new())
    };
    let reply: &[u8] = if notify {
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    } else {
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    };
    reader.get_mut().write_all(reply)?;
    Ok(Received {
        method,
        target,
        event,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(port: u16, target: &str, body: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    }

    #[test]
    fn records_notifications_and_yields_instance_info() {
        let api = start().unwrap();
        let r = post(
            api.port(),
            "/api/Notify?json",
            r#"{"event":"boot.progress","payload":"measure"}"#,
        );
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("{}"),
            "{r}"
        );
        post(
            api.port(),
            "/api/Notify?json",
            r#"{"event":"instance.info","payload":"{\"app_id\":\"ab\"}"}"#,
        );
        let r = post(api.port(), "/other", "{}");
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        assert_eq!(
            api.notifications(),
            vec![
                ("boot.progress".to_owned(), "measure".to_owned()),
                ("instance.info".to_owned(), r#"{"app_id":"ab"}"#.to_owned()),
            ]
        );
        assert_eq!(api.instance_info(), Some(br#"{"app_id":"ab"}"#.to_vec()));
        assert_eq!(api.received().len(), 3);
        assert_eq!(
            api.guest_url(),
            format!("http://10.0.2.2:{}/api", api.port())
        );
    }
}
