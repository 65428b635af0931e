//! A loopback TCP fault proxy for the fault tests: it listens on `127.0.0.1:<port>` (the guest
//! reaches it as `10.0.2.2:<port>` through QEMU user networking) and forwards each connection
//! to an upstream address, or fails it, as its [`Mode`] says. The mode can be switched while
//! the guest runs; a per-connection script ([`FaultProxy::script`]) overrides it for the next
//! connections ("reset the first two, then pass"). Every connection is counted and logged with
//! its time and what was done to it, so a test can assert the retries it caused.
//!
//! Std threads only: one accept thread, one thread per connection and one per direction.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a connection to the upstream may take.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a failing connection waits for the client's first byte before failing it.
const FIRST_BYTE_WAIT: Duration = Duration::from_secs(2);

/// Errors of the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bind the proxy on 127.0.0.1")]
    Bind {
        #[source]
        source: io::Error,
    },
    #[error("read the proxy's local address")]
    LocalAddr {
        #[source]
        source: io::Error,
    },
    #[error("spawn the proxy's accept thread")]
    Spawn {
        #[source]
        source: io::Error,
    },
}

/// How a failed connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Accept, then close at once with a FIN: the client reads end-of-file. What the client
    /// sends is read and discarded until it closes too (or for [`FIRST_BYTE_WAIT`] of
    /// silence), so its request never meets a closed socket and draws an RST instead.
    Drop,
    /// Accept, wait for the client's first bytes, then close with `SO_LINGER` 0: an RST, the
    /// client's next read or write fails with "connection reset".
    Reset,
}

/// What the proxy does with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Pass,
    /// Forward, after holding the connection for this long before anything reaches the
    /// upstream (the client's first bytes wait in the socket buffer).
    Delay(Duration),
    /// Fail every connection this way.
    Fail(Fault),
    /// Alternate: `every` connections fail with `fault`, the next `every` pass, and so on,
    /// counted from the switch to this mode.
    Flap { every: u32, fault: Fault },
}

/// What was done to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Passed,
    Delayed(Duration),
    Failed(Fault),
    /// The upstream refused or timed out; the client's connection was closed.
    UpstreamDown,
}

impl Action {
    /// Whether the connection reached the upstream.
    pub fn forwarded(self) -> bool {
        matches!(self, Self::Passed | Self::Delayed(_))
    }
}

/// One accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// Time since the proxy started.
    pub at: Duration,
    pub action: Action,
}

#[derive(Debug)]
struct State {
    mode: Mode,
    /// Connections since the last mode switch (for `Flap`).
    since_switch: u32,
    script: VecDeque<Mode>,
    log: Vec<Connection>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
    upstream: SocketAddr,
    started: Instant,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The running proxy; stops (and closes the listener) on drop. Connections already
/// forwarding keep going until either side closes.
#[derive(Debug)]
pub struct FaultProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1 in front of `upstream`.
    pub fn start(upstream: SocketAddr, mode: Mode) -> Result<Self, ProxyError> {
        Self::start_on(TcpListener::bind("127.0.0.1:0"), upstream, mode)
    }

    /// Starts a proxy on `127.0.0.1:port`.
    pub fn start_at(port: u16, upstream: SocketAddr, mode: Mode) -> Result<Self, ProxyError> {
        Self::start_on(TcpListener::bind(("127.0.0.1", port)), upstream, mode)
    }

    fn start_on(
        listener: io::Result<TcpListener>,
        upstream: SocketAddr,
        mode: Mode,
    ) -> Result<Self, ProxyError> {
        let listener = listener.map_err(|source| ProxyError::Bind { source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ProxyError::LocalAddr { source })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                mode,
                since_switch: 0,
                script: VecDeque::new(),
                log: Vec::new(),
            }),
            stop: AtomicBool::new(false),
            upstream,
            started: Instant::now(),
        });
        let for_thread = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || accept_loop(&listener, &for_thread))
            .map_err(|source| ProxyError::Spawn { source })?;
        Ok(Self {
            shared,
            addr,
            accept: Some(accept),
        })
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port (the guest's URL is `10.0.2.2:<port>`).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Switches the mode for the next connections (after any script left).
    pub fn set_mode(&self, mode: Mode) {
        let mut s = self.shared.lock();
        s.mode = mode;
        s.since_switch = 0;
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.shared.lock().mode
    }

    /// The next connections get these modes, one each, before the mode applies again.
    pub fn script(&self, modes: impl IntoIterator<Item = Mode>) {
        self.shared.lock().script.extend(modes);
    }

    /// Every connection so far, in accept order.
    pub fn connections(&self) -> Vec<Connection> {
        self.shared.lock().log.clone()
    }

    /// How many connections were accepted.
    pub fn seen(&self) -> usize {
        self.shared.lock().log.len()
    }

    /// How many connections reached the upstream.
    pub fn forwarded(&self) -> usize {
        self.shared
            .lock()
            .log
            .iter()
            .filter(|c| c.action.forwarded())
            .count()
    }

    /// How many connections were failed on purpose.
    pub fn failed(&self) -> usize {
        self.shared
            .lock()
            .log
            .iter()
            .filter(|c| matches!(c.action, Action::Failed(_)))
            .count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Picks the mode of the next connection and counts it against a `Flap`.
fn next_mode(state: &mut State) -> Mode {
    if let Some(m) = state.script.pop_front() {
        return m;
    }
    let n = state.since_switch;
    state.since_switch = state.since_switch.saturating_add(1);
    match state.mode {
        Mode::Flap { every, fault } => {
            let every = every.max(1);
            if (n / every).is_multiple_of(2) {
                Mode::Fail(fault)
            } else {
                Mode::Pass
            }
        }
        m => m,
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let at = shared.started.elapsed();
        // Logged at accept, so a connection still forwarding is counted.
        let (mode, index) = {
            let mut state = shared.lock();
            let mode = next_mode(&mut state);
            let action = match mode {
                Mode::Fail(fault) => Action::Failed(fault),
                Mode::Delay(d) => Action::Delayed(d),
                Mode::Pass | Mode::Flap { .. } => Action::Passed,
            };
            state.log.push(Connection { at, action });
            (mode, state.log.len() - 1)
        };
        let for_conn = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("fault-proxy-conn".into())
            .spawn(move || {
                if !handle(client, mode, &for_conn)
                    && let Some(c) = for_conn.lock().log.get_mut(index)
                {
                    c.action = Action::UpstreamDown;
                }
            });
        if spawned.is_err()
            && let Some(c) = shared.lock().log.get_mut(index)
        {
            c.action = Action::UpstreamDown;
        }
    }
}

/// Serves one connection; false when the upstream could not be reached.
fn handle(client: TcpStream, mode: Mode, shared: &Shared) -> bool {
    match mode {
        Mode::Fail(fault) => {
            fail(client, fault);
            true
        }
        Mode::Pass | Mode::Flap { .. } => forward(client, shared.upstream),
        Mode::Delay(d) => {
            std::thread::sleep(d);
            forward(client, shared.upstream)
        }
    }
}

fn fail(client: TcpStream, fault: Fault) {
    match fault {
        Fault::Drop => {
            let _ = client.shutdown(Shutdown::Write);
            let _ = client.set_read_timeout(Some(FIRST_BYTE_WAIT));
            let mut sink = [0u8; 4096];
            while matches!((&client).read(&mut sink), Ok(n) if n > 0) {}
        }
        Fault::Reset => {
            // Let the client start talking, so the reset hits a request in flight.
            let _ = client.set_read_timeout(Some(FIRST_BYTE_WAIT));
            let mut b = [0u8; 1];
            let _ = client.peek(&mut b);
            let linger = nix::libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            let _ = nix::sys::socket::setsockopt(
                &client.as_fd(),
                nix::sys::socket::sockopt::Linger,
                &linger,
            );
            drop(client);
        }
    }
}

/// Connects upstream and copies both ways until both sides are done; false when the
/// upstream could not be reached.
fn forward(client: TcpStream, upstream: SocketAddr) -> bool {
    let Ok(server) = TcpStream::connect_timeout(&upstream, UPSTREAM_CONNECT_TIMEOUT) else {
        let _ = client.shutdown(Shutdown::Both);
        return false;
    };
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return false;
    };
    let up = std::thread::Builder::new()
        .name("fault-proxy-up".into())
        .spawn(move || pump(client2, server2));
    pump(server, client);
    if let Ok(up) = up {
        let _ = up.join();
    }
    true
}

/// Copies `from` to `to` until end-of-file or an error, then half-closes `to`.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers every connection with `echo:` and what it read until EOF.
    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let _ = s.read_to_end(&mut buf);
                    let _ = s.write_all(b"echo:");
                    let _ = s.write_all(&buf);
                });
            }
        });
        addr
    }

    /// One request through the proxy: the reply, or the error kind.
    fn call(proxy: &FaultProxy, msg: &[u8]) -> Result<Vec<u8>, io::ErrorKind> {
        let mut s = TcpStream::connect(proxy.addr()).map_err(|e| e.kind())?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(msg).map_err(|e| e.kind())?;
        s.shutdown(Shutdown::Write).map_err(|e| e.kind())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).map_err(|e| e.kind())?;
        Ok(out)
    }

    /// Waits until the proxy logged `n` connections.
    fn logged(proxy: &FaultProxy, n: usize) -> Vec<Connection> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while proxy.seen() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        proxy.connections()
    }

    #[test]
    fn pass_forwards_both_ways() {
        let proxy = FaultProxy::start(echo_server(), Mode::Pass).unwrap();
        assert_eq!(call(&proxy, b"hello").unwrap(), b"echo:hello");
        assert_eq!(call(&proxy, b"again").unwrap(), b"echo:again");
        let log = logged(&proxy, 2);
        assert_eq!(log.len(), 2);
        assert!(log.iter().all(|c| c.action == Action::Passed));
        assert_eq!((proxy.forwarded(), proxy.failed()), (2, 0));
    }

    #[test]
    fn drop_gives_eof_and_reset_gives_connection_reset() {
        let proxy = FaultProxy::start(echo_server(), Mode::Fail(Fault::Drop)).unwrap();
        assert_eq!(call(&proxy, b"x").unwrap(), b"", "drop: empty reply");
        proxy.set_mode(Mode::Fail(Fault::Reset));
        assert_eq!(
            call(&proxy, b"x").unwrap_err(),
            io::ErrorKind::ConnectionReset
        );
        proxy.set_mode(Mode::Pass);
        assert_eq!(call(&proxy, b"ok").unwrap(), b"echo:ok");
        let actions: Vec<Action> = logged(&proxy, 3).iter().map(|c| c.action).collect();
        assert_eq!(
            actions,
            [
                Action::Failed(Fault::Drop),
                Action::Failed(Fault::Reset),
                Action::Passed
            ]
        );
        assert_eq!((proxy.seen(), proxy.failed(), proxy.forwarded()), (3, 2, 1));
    }

    #[test]
    fn delay_holds_each_connection() {
        let d = Duration::from_millis(300);
        let proxy = FaultProxy::start(echo_server(), Mode::Delay(d)).unwrap();
        let t = Instant::now();
        assert_eq!(call(&proxy, b"slow").unwrap(), b"echo:slow");
        assert!(t.elapsed() >= d, "answered after {:?}", t.elapsed());
        assert_eq!(logged(&proxy, 1)[0].action, Action::Delayed(d));
    }

    #[test]
    fn flapping_alternates_every_k_connections() {
        let proxy = FaultProxy::start(
            echo_server(),
            Mode::Flap {
                every: 2,
                fault: Fault::Drop,
            },
        )
        .unwrap();
        let ok: Vec<bool> = (0..6)
            .map(|i| call(&proxy, format!("{i}").as_bytes()).is_ok_and(|r| !r.is_empty()))
            .collect();
        assert_eq!(ok, [false, false, true, true, false, false]);
        assert_eq!((proxy.failed(), proxy.forwarded()), (4, 2));
    }

    #[test]
    fn script_overrides_the_mode_then_the_mode_applies() {
        let proxy = FaultProxy::start(echo_server(), Mode::Pass).unwrap();
        proxy.script([Mode::Fail(Fault::Reset), Mode::Fail(Fault::Drop)]);
        call(&proxy, b"1").unwrap_err();
        assert_eq!(call(&proxy, b"2").unwrap(), b"");
        assert_eq!(call(&proxy, b"3").unwrap(), b"echo:3");
        let log = logged(&proxy, 3);
        assert!(log.windows(2).all(|w| w[0].at <= w[1].at));
        assert_eq!(proxy.mode(), Mode::Pass);
    }

    #[test]
    fn upstream_down_closes_the_client() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let proxy = FaultProxy::start(port, Mode::Pass).unwrap();
        assert_eq!(call(&proxy, b"x").unwrap_or_default(), b"");
        let deadline = Instant::now() + Duration::from_secs(10);
        while proxy.connections()[0].action != Action::UpstreamDown && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(logged(&proxy, 1)[0].action, Action::UpstreamDown);
        assert_eq!(proxy.forwarded(), 0);
    }
}
