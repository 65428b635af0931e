//! Notifications to the dstack VMM's host API (`host_api_url` of `.sys-config.json`), as
//! dstack-util's `notify-host` sends them: `boot.progress` as each stage starts (and `done`),
//! `instance.info` once the identity is known (the VMM writes it to the next boot's
//! `.instance_info`, so the next boot derives the same instance id and the same KMS disk key),
//! `boot.error` with the stage and error chain on a fatal error, `shutdown.progress` at
//! shutdown.
//!
//! Best effort, as in dstack: nothing is sent without a URL, a failure is logged and never
//! fatal, each notification is bounded ([`CONNECT_TIMEOUT`], [`REQUEST_TIMEOUT`]) and after
//! [`init_core::host_api::MAX_CONSECUTIVE_FAILURES`] failures in a row the rest of the boot
//! sends nothing. The request and the reply are built and judged by the pure
//! `init_core::host_api`; the vsock connect is `init_sys::vsock`. Test builds may name an
//! `http://<ipv4>:<port>` URL (QEMU slirp); its notifications wait for the `network` stage.
//!
//! PID 1 is single-threaded; the client lives in one process-wide slot, configured after the
//! `host-share` stage, so the fatal and shutdown paths reach it without threading it through
//! every caller.

use std::io::{self, Read, Write};
use std::sync::Mutex;
use std::time::Instant;

use init_core::host_api::{
    Address, CONNECT_TIMEOUT, Endpoint, Event, HostApiError, MAX_RESPONSE_BYTES, Notification,
    Outbox, REQUEST_TIMEOUT, Reply,
};
use init_core::host_share::HostShare;
use init_core::identity::AppIdentity;
use init_core::plan::Stage;
use init_sys::vsock::{VsockError, VsockStream};

/// Why one notification did not get through.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    ConnectVsock(VsockError),
    #[cfg(feature = "insecure-test-hooks")]
    #[error("connect to {address}")]
    ConnectTcp {
        address: std::net::SocketAddrV4,
        #[source]
        source: io::Error,
    },
    #[error("send the request")]
    Write {
        #[source]
        source: io::Error,
    },
    #[error("read the reply")]
    Read {
        #[source]
        source: io::Error,
    },
    #[error("no complete reply within {REQUEST_TIMEOUT:?}")]
    Timeout,
    #[error("reply")]
    Reply {
        #[source]
        source: HostApiError,
    },
}

#[derive(Debug)]
struct Client {
    endpoint: Endpoint,
    outbox: Outbox,
}

static CLIENT: Mutex<Option<Client>> = Mutex::new(None);

/// After `host-share`: take the URL from `.sys-config.json`. Absent or empty: no
/// notifications; malformed or a scheme this build does not speak: logged, none.
pub(crate) fn configure(share: &HostShare) {
    let endpoint = match Endpoint::from_sys_config(share.sys_config.host_api_url.as_deref()) {
        Ok(Some(e)) => e,
        Ok(None) => {
            log::info!("host API: no host_api_url, no notifications");
            return;
        }
        Err(e) => {
            log::warn!(
                "host API: {}; no notifications",
                init_core::error_chain::one_line(&e)
            );
            return;
        }
    };
    log::info!("host API: notifications to {}", endpoint.address);
    let ready = matches!(endpoint.address, Address::Vsock { .. });
    let mut slot = lock();
    *slot = Some(Client {
        endpoint,
        outbox: Outbox::new(ready),
    });
}

/// After `network`: a test `http` URL is reachable now; send what was held.
pub(crate) fn network_up() {
    with_client(|c| {
        let due = c.outbox.set_ready();
        send_all(c, due);
    });
}

/// `boot.progress` with `what` (a stage name, or `done`).
pub(crate) fn boot_progress(what: &str) {
    notify(Notification::new(Event::BootProgress, what));
}

/// `instance.info`: the seed, instance id and app id, for the next boot's `.instance_info`.
pub(crate) fn instance_info(identity: &AppIdentity) {
    notify(Notification::new(
        Event::InstanceInfo,
        identity.instance_info_json(),
    ));
}

/// `boot.error` with `<stage>: <chain>`; also sends whatever was still held (the boot ends).
pub(crate) fn boot_error(stage: Stage, chain: &str) {
    with_client(|c| {
        let mut due = c.outbox.set_ready();
        due.extend(c.outbox.push(Notification::new(
            Event::BootError,
            format!("{stage}: {chain}"),
        )));
        send_all(c, due);
    });
}

/// `shutdown.progress` with the reason.
pub(crate) fn shutdown_progress(reason: &str) {
    notify(Notification::new(Event::ShutdownProgress, reason));
}

fn notify(notification: Notification) {
    with_client(|c| {
        let due = c.outbox.push(notification);
        send_all(c, due);
    });
}

fn lock() -> std::sync::MutexGuard<'static, Option<Client>> {
    // A panic powers the VM off (main's hook), so a poisoned lock is never seen in practice;
    // its data is still consistent (an outbox).
    CLIENT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn with_client(f: impl FnOnce(&mut Client)) {
    if let Some(client) = lock().as_mut() {
        f(client);
    }
}

fn send_all(client: &mut Client, due: Vec<Notification>) {
    for n in due {
        if client.outbox.is_off() {
            return;
        }
        let started = Instant::now();
        let result = send(&client.endpoint, &n);
        let ms = started.elapsed().as_millis();
        match result {
            Ok(()) => log::debug!("host API: {} {:?} ({ms} ms)", n.event.name(), n.payload),
            Err(e) => {
                log::warn!(
                    "host API: notify {}: {} ({ms} ms)",
                    n.event.name(),
                    init_core::error_chain::one_line(&e)
                );
                if client.outbox.record(false) {
                    log::warn!("host API: too many failures, no further notifications");
                }
                continue;
            }
        }
        client.outbox.record(true);
    }
}

/// One request on a fresh connection, bounded by [`REQUEST_TIMEOUT`] from the first connect.
fn send(endpoint: &Endpoint, notification: &Notification) -> Result<(), SendError> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let request = notification.request(endpoint);
    match endpoint.address {
        Address::Vsock { cid, port } => {
            let mut s = VsockStream::connect(cid, port, CONNECT_TIMEOUT, REQUEST_TIMEOUT)
                .map_err(SendError::ConnectVsock)?;
            exchange(&mut s, &request, deadline, |s, t| s.set_read_timeout(t))
        }
        #[cfg(feature = "insecure-test-hooks")]
        Address::InsecureHttp(address) => {
            let connect = |source| SendError::ConnectTcp { address, source };
            let mut s = std::net::TcpStream::connect_timeout(&address.into(), CONNECT_TIMEOUT)
                .map_err(connect)?;
            s.set_write_timeout(Some(REQUEST_TIMEOUT))
                .map_err(connect)?;
            exchange(&mut s, &request, deadline, |s, t| {
                s.set_read_timeout(Some(t))
            })
        }
    }
}

/// Write `request`, read the reply until it is complete, EOF, [`MAX_RESPONSE_BYTES`] or the
/// deadline; judge its status.
fn exchange<S: Read + Write>(
    stream: &mut S,
    request: &[u8],
    deadline: Instant,
    set_read_timeout: impl Fn(&S, std::time::Duration) -> io::Result<()>,
) -> Result<(), SendError> {
    stream
        .write_all(request)
        .map_err(|source| SendError::Write { source })?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while Reply::progress(&reply) == Reply::Incomplete && reply.len() < MAX_RESPONSE_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SendError::Timeout);
        }
        set_read_timeout(stream, left).map_err(|source| SendError::Read { source })?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(SendError::Timeout);
            }
            Err(source) => return Err(SendError::Read { source }),
        }
    }
    Reply::status(&reply).map_err(|source| SendError::Reply { source })
}
