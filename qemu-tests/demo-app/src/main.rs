//! `demo-app`: the sample workload that `cargo xtask demo` runs in the confidential VM.
//!
//! An HTTP/1.1 server (port `DEMO_PORT`, default 8080, host networking) that answers from the
//! dstack guest API on `/var/run/dstack.sock` (`DSTACK_SOCKET` overrides), exactly as an
//! unmodified dstack app would:
//! * `GET /` — an HTML page with the app name, app-id, compose-hash, instance-id and the report
//!   data of a fresh quote over `challenge` (query, hex; 32 random bytes when absent);
//! * `GET /attest?challenge=<hex>` — JSON `{"info": <Info>, "challenge": hex, "quote":
//!   <GetQuote>}` for a verifier (`cvm-measure verify --event-log` reads the `quote` object);
//! * `GET /emit?event=<name>` — `EmitEvent` of `name` (payload: the name's bytes) into RTMR3,
//!   answering the guest API's JSON reply (the app's own runtime measurement).
//!
//! At start it prints one line per confinement probe (issue 22): syscalls Docker's default
//! seccomp profile refuses a plain container (`unshare(CLONE_NEWUSER)`, which needs no
//! capability, and `personality(ADDR_NO_RANDOMIZE)`, which no capability guards) must fail
//! with EPERM, and a child process must still spawn (glibc tries `clone3`, which the profile
//! answers with ENOSYS, then `clone`, allowed by its flag-masked rule).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use demo_app::{DemoError, Request, html_escape, parse_request, response};

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--probe-child") {
        return;
    }
    confinement_probes();
    let port = std::env::var("DEMO_PORT").unwrap_or_else(|_| "8080".to_owned());
    let socket = std::env::var("DSTACK_SOCKET").unwrap_or_else(|_| "/var/run/dstack.sock".into());
    let listener = match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("demo-app: listen on port {port}: {error}");
            std::process::exit(1);
        }
    };
    println!("demo-app: listening on port {port}, guest API {socket}");
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if let Err(error) = serve(stream, &socket) {
                    eprintln!("demo-app: {error}");
                }
            }
            Err(error) => eprintln!("demo-app: accept: {error}"),
        }
    }
}

fn serve(mut stream: TcpStream, socket: &str) -> Result<(), DemoError> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(DemoError::Io)?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).map_err(DemoError::Io)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
        if head.len() > 8192 {
            break;
        }
    }
    let reply = match parse_request(&head) {
        Ok(request) => handle(&request, socket),
        Err(error) => response(400, "text/plain", &format!("{error}\n")),
    };
    stream.write_all(&reply).map_err(DemoError::Io)
}

fn handle(request: &Request, socket: &str) -> Vec<u8> {
    if request.path == "/emit" {
        let emitted = request.event_name().and_then(|name| {
            let body = serde_json::json!({ "event": name, "payload": hex::encode(name) });
            guest_api(socket, "/EmitEvent", &body.to_string())
        });
        return match emitted {
            Ok(reply) => response(200, "application/json", &format!("{reply}\n")),
            Err(error @ DemoError::BadEventName) => {
                response(400, "text/plain", &format!("{error}\n"))
            }
            Err(error) => response(502, "text/plain", &format!("{error}\n")),
        };
    }
    let challenge = match request.challenge() {
        Ok(Some(c)) => c,
        Ok(None) => random_challenge(),
        Err(error) => return response(400, "text/plain", &format!("{error}\n")),
    };
    let attest = || -> Result<(serde_json::Value, serde_json::Value), DemoError> {
        let info = guest_api(socket, "/Info", "{}")?;
        let body = serde_json::json!({ "report_data": hex::encode(&challenge) }).to_string();
        let quote = guest_api(socket, "/GetQuote", &body)?;
        Ok((info, quote))
    };
    match (request.path.as_str(), attest()) {
        ("/attest", Ok((info, quote))) => {
            let body = serde_json::json!({
                "info": info,
                "challenge": hex::encode(&challenge),
                "quote": quote,
            });
            response(200, "application/json", &format!("{body}\n"))
        }
        ("/", Ok((info, quote))) => {
            let field = |v: &serde_json::Value, k: &str| {
                html_escape(v.get(k).and_then(serde_json::Value::as_str).unwrap_or("?"))
            };
            let page = format!(
                "<!doctype html><title>cvm-init demo</title><h1>{}</h1><dl>\
                 <dt>app-id</dt><dd id=app-id>{}</dd>\
                 <dt>compose-hash</dt><dd id=compose-hash>{}</dd>\
                 <dt>instance-id</dt><dd id=instance-id>{}</dd>\
                 <dt>challenge</dt><dd id=challenge>{}</dd>\
                 <dt>quote report data</dt><dd id=report-data>{}</dd>\
                 <dt>quote</dt><dd>{} bytes</dd></dl>\n",
                field(&info, "app_name"),
                field(&info, "app_id"),
                field(&info, "compose_hash"),
                field(&info, "instance_id"),
                hex::encode(&challenge),
                field(&quote, "report_data"),
                quote
                    .get("quote")
                    .and_then(serde_json::Value::as_str)
                    .map_or(0, |q| q.len() / 2),
            );
            response(200, "text/html; charset=utf-8", &page)
        }
        ("/" | "/attest", Err(error)) => response(502, "text/plain", &format!("{error}\n")),
        _ => response(404, "text/plain", "not found\n"),
    }
}

/// 32 bytes from the kernel's CSPRNG (all zero only if /dev/urandom cannot be read).
fn random_challenge() -> Vec<u8> {
    let mut bytes = vec![0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    bytes
}

/// One POST to the guest API over its Unix socket; the reply's JSON body.
fn guest_api(socket: &str, path: &str, body: &str) -> Result<serde_json::Value, DemoError> {
    let mut stream = UnixStream::connect(socket).map_err(DemoError::GuestApiConnect)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(DemoError::Io)?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(DemoError::Io)?;
    let mut reply = Vec::new();
    stream
        .take(1 << 20)
        .read_to_end(&mut reply)
        .map_err(DemoError::Io)?;
    demo_app::json_body(path, &reply)
}

/// The seccomp probes (see the crate documentation): one `demo-app: probe …` line each.
fn confinement_probes() {
    let verdict = |result: nix::Result<()>| match result {
        Err(nix::errno::Errno::EPERM) => "refused (EPERM)".to_owned(),
        Err(errno) => format!("failed ({errno})"),
        Ok(()) => "ALLOWED".to_owned(),
    };
    let userns = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER);
    println!(
        "demo-app: probe unshare(CLONE_NEWUSER): {}",
        verdict(userns)
    );
    let persona = nix::sys::personality::set(nix::sys::personality::Persona::ADDR_NO_RANDOMIZE);
    println!(
        "demo-app: probe personality(ADDR_NO_RANDOMIZE): {}",
        verdict(persona.map(drop))
    );
    let spawned = std::env::current_exe().and_then(|exe| {
        std::process::Command::new(exe)
            .arg("--probe-child")
            .status()
    });
    match spawned {
        Ok(status) if status.success() => println!("demo-app: probe spawn: ok"),
        Ok(status) => println!("demo-app: probe spawn: child {status}"),
        Err(error) => println!("demo-app: probe spawn: failed ({error})"),
    }
}
