//! `guest-api`: the dstack-compatible guest agent API for workloads — `Info`, `GetQuote`,
//! `Attest`, `EmitEvent`, `GetKey`, `GetTlsKey`, `Sign`, `Verify`, `GpuInfo`, `Version` on
//! `/var/run/dstack.sock` and the legacy Tappd `Info`, `TdxQuote`, `RawQuote`, `DeriveKey`,
//! `DeriveK256Key`, `Version` on `/var/run/tappd.sock` — so unmodified dstack SDKs work.
//!
//! It runs as its own process (PID 1 is single-threaded and forks; this server uses a thread
//! per connection): the init execs its own binary as
//! `guest-api --socket /var/run/dstack.sock --legacy-socket /var/run/tappd.sock ...`, which
//! calls [`ServerConfig::parse_args`], builds an [`ApiState`] over its TEE backend with
//! [`ApiState::open`], and calls [`serve`]. See `README.md` for the design.
#![forbid(unsafe_code)]

pub mod http;
pub mod service;
pub mod state;
pub mod worker;

use std::convert::Infallible;
use std::ffi::OsString;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use init_core::tee::Tee;
use init_core::tee::events::RUNTIME_EVENT_LOG_PATH;

pub use crate::http::{Connection, Limits};
pub use crate::service::Service;
pub use crate::state::{ApiState, ResumeMode, StateError, WorkloadInfo};

/// Default path of the `DstackGuest` socket.
pub const DEFAULT_SOCKET: &str = "/var/run/dstack.sock";
/// Default path of the legacy `Tappd` socket.
pub const DEFAULT_LEGACY_SOCKET: &str = "/var/run/tappd.sock";
/// Where dstack keeps the boot's GPU attestation output (`GPU_ATTESTATION_OUTPUT`).
pub const DEFAULT_GPU_ATTESTATION: &str = "/run/nvidia-gpu-attestation/attestation.out";

/// Errors of configuring and running the server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A command-line argument is unknown or lacks its value.
    #[error("invalid argument {argument:?}")]
    ParseArgument { argument: String },
    /// Something other than a socket is in the way of a socket path.
    #[error("{path} exists and is not a socket")]
    SocketPathOccupied { path: PathBuf },
    /// Removing a stale socket failed.
    #[error("remove stale socket {path}")]
    RemoveStaleSocket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Binding the Worker API's TCP port failed.
    #[error("bind the Worker API on {addr}")]
    BindWorker {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// Binding a socket failed.
    #[error("bind {path}")]
    BindSocket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Setting a socket's mode failed.
    #[error("set mode of {path}")]
    SetSocketMode {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Loading the workload files or taking over the event log failed.
    #[error("prepare the API state")]
    PrepareState {
        #[source]
        source: StateError,
    },
    /// Reading or parsing the app keys file failed.
    #[error("load app keys from {path}")]
    LoadAppKeys {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Starting the accept thread of a socket failed.
    #[error("start accept thread for {path}")]
    SpawnAcceptThread {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where and how to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The `DstackGuest` socket.
    pub socket: PathBuf,
    /// The legacy `Tappd` socket, if served.
    pub legacy_socket: Option<PathBuf>,
    /// The RTMR3 runtime event log this process takes over.
    pub event_log: PathBuf,
    /// app-compose.json (private copy of the host share).
    pub app_compose: Option<PathBuf>,
    /// .sys-config.json (private copy of the host share).
    pub sys_config: Option<PathBuf>,
    /// dstack's `.appkeys.json` (private, 0600), which enables `GetKey`.
    pub app_keys: Option<PathBuf>,
    /// The GPU attestation output `GpuInfo` returns (dstack's
    /// `/run/nvidia-gpu-attestation/attestation.out`; absent reads as empty).
    pub gpu_attestation: PathBuf,
    /// Socket file mode (workloads connect through bind mounts).
    pub socket_mode: u32,
    /// The external Worker API's TCP address (dstack: `0.0.0.0:8090`); `None`: not served.
    pub worker: Option<SocketAddr>,
    /// The per-service logs the Worker API shows with `public_logs`.
    pub logs_dir: Option<PathBuf>,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Per-request limits.
    pub limits: Limits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
            legacy_socket: Some(PathBuf::from(DEFAULT_LEGACY_SOCKET)),
            event_log: PathBuf::from(RUNTIME_EVENT_LOG_PATH),
            app_compose: None,
            sys_config: None,
            app_keys: None,
            gpu_attestation: PathBuf::from(DEFAULT_GPU_ATTESTATION),
            socket_mode: 0o666,
            worker: None,
            logs_dir: None,
            max_connections: 64,
            limits: Limits::default(),
        }
    }
}

impl ServerConfig {
    /// Parses `--socket P`, `--legacy-socket P` (or `--no-legacy-socket`), `--event-log P`,
    /// `--app-compose P`, `--sys-config P`, `--app-keys P`, `--gpu-attestation P`,
    /// `--worker-listen ADDR:PORT`, `--logs-dir P` (the arguments after the `guest-api` word)
    /// over the defaults.
    pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Self, ApiError> {
        let mut config = Self::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let flag = arg.to_string_lossy().into_owned();
            if flag == "--no-legacy-socket" {
                config.legacy_socket = None;
                continue;
            }
            let slot = match flag.as_str() {
                "--socket" | "--legacy-socket" | "--event-log" | "--app-compose"
                | "--sys-config" | "--app-keys" | "--gpu-attestation" | "--worker-listen"
                | "--logs-dir" => flag.clone(),
                _ => return Err(ApiError::ParseArgument { argument: flag }),
            };
            let value = PathBuf::from(
                args.next()
                    .ok_or(ApiError::ParseArgument { argument: flag })?,
            );
            match slot.as_str() {
                "--socket" => config.socket = value,
                "--legacy-socket" => config.legacy_socket = Some(value),
                "--event-log" => config.event_log = value,
                "--app-compose" => config.app_compose = Some(value),
                "--app-keys" => config.app_keys = Some(value),
                "--gpu-attestation" => config.gpu_attestation = value,
                "--logs-dir" => config.logs_dir = Some(value),
                "--worker-listen" => {
                    let addr = value.to_str().and_then(|v| v.parse().ok()).ok_or_else(|| {
                        ApiError::ParseArgument {
                            argument: format!("--worker-listen {}", value.display()),
                        }
                    })?;
                    config.worker = Some(addr);
                }
                _ => config.sys_config = Some(value),
            }
        }
        Ok(config)
    }
}

/// How a connection ended.
#[derive(Debug)]
pub enum ConnectionEnd {
    /// The client closed or went idle between requests.
    ClientDone,
    /// A response said `Connection: close` (client asked, or the per-connection limit).
    Closed,
    /// A malformed, oversized or too slow request; answered with an error when possible.
    RequestFailed(http::HttpError),
    /// Writing a response failed.
    WriteFailed(io::Error),
}

/// What one connection did.
#[derive(Debug)]
pub struct ConnectionOutcome {
    /// Requests answered (successfully or not).
    pub requests: usize,
    /// How it ended.
    pub end: ConnectionEnd,
}

/// Serves one connection until the client is done, an error, or the per-connection limit.
/// Never panics; every complete request gets an answer.
pub fn handle_connection<T: Tee>(
    state: &ApiState<T>,
    service: Service,
    stream: &UnixStream,
    limits: &Limits,
) -> ConnectionOutcome {
    serve_connection(stream, limits, |request| {
        service::dispatch(state, service, request)
    })
}

/// [`handle_connection`] over any [`Connection`], answering each request with `respond`.
pub fn serve_connection<S: Connection>(
    stream: &S,
    limits: &Limits,
    respond: impl Fn(&http::Request) -> http::Response,
) -> ConnectionOutcome {
    let mut buf = Vec::new();
    let mut requests = 0;
    if let Err(e) = stream.set_write_timeout(Some(limits.write_timeout)) {
        return ConnectionOutcome {
            requests,
            end: ConnectionEnd::WriteFailed(e),
        };
    }
    loop {
        let request = match http::read_request(stream, &mut buf, limits) {
            Ok(Some(request)) => request,
            Ok(None) => {
                return ConnectionOutcome {
                    requests,
                    end: ConnectionEnd::ClientDone,
                };
            }
            Err(error) => {
                if let Some(status) = error.status() {
                    let response = http::Response::error(status, &error.to_string());
                    // Best effort: the connection is closed either way.
                    let _ = write_response(stream, &response, false);
                    requests += 1;
                    linger_close(stream, limits);
                }
                return ConnectionOutcome {
                    requests,
                    end: ConnectionEnd::RequestFailed(error),
                };
            }
        };
        requests += 1;
        let response = respond(&request);
        let keep_alive = request.head.keep_alive && requests < limits.max_requests_per_connection;
        if let Err(e) = write_response(stream, &response, keep_alive) {
            return ConnectionOutcome {
                requests,
                end: ConnectionEnd::WriteFailed(e),
            };
        }
        if !keep_alive {
            if request.head.keep_alive {
                // The client may have pipelined more; let it read this answer first.
                linger_close(stream, limits);
            }
            return ConnectionOutcome {
                requests,
                end: ConnectionEnd::Closed,
            };
        }
    }
}

/// After an error answer the request's remaining bytes are still coming: stop writing, then
/// drain (bounded in bytes and time) until the client closes, so closing does not reset the
/// connection before the client has read the answer.
fn linger_close<S: Connection>(stream: &S, limits: &Limits) {
    let _ = stream.shutdown_write();
    let deadline = std::time::Instant::now() + LINGER_TIME;
    let mut budget = limits.max_head_bytes + limits.max_body_bytes;
    let mut sink = [0u8; 4096];
    while budget > 0 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read_some(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => budget = budget.saturating_sub(n),
        }
    }
}

/// How long [`linger_close`] waits for the client to finish sending.
const LINGER_TIME: Duration = Duration::from_secs(1);

fn write_response<S: Connection>(
    stream: &S,
    response: &http::Response,
    keep_alive: bool,
) -> io::Result<()> {
    stream.write_every(&response.encode(keep_alive))
}

/// Binds `path`, replacing a stale socket (never any other kind of file).
fn bind(path: &Path, mode: u32) -> Result<UnixListener, ApiError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| ApiError::RemoveStaleSocket {
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(_) => {
            return Err(ApiError::SocketPathOccupied {
                path: path.to_owned(),
            });
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|source| ApiError::BindSocket {
        path: path.to_owned(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        ApiError::SetSocketMode {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok(listener)
}

/// A listening socket of the server.
trait Listen {
    type Stream: Connection + Send + 'static;
    fn accept_stream(&self) -> io::Result<Self::Stream>;
}

impl Listen for UnixListener {
    type Stream = UnixStream;
    fn accept_stream(&self) -> io::Result<UnixStream> {
        self.accept().map(|(stream, _)| stream)
    }
}

impl Listen for TcpListener {
    type Stream = TcpStream;
    fn accept_stream(&self) -> io::Result<TcpStream> {
        self.accept().map(|(stream, _)| stream)
    }
}

/// What a listener's connections speak.
#[derive(Debug, Clone, Copy)]
enum Api {
    /// A workload API socket.
    Workload(Service),
    /// The external Worker API.
    Worker,
}

/// Accepts forever, one thread per connection, at most `max` at once.
fn accept_loop<T: Tee + Send + 'static, L: Listen>(
    listener: &L,
    name: &str,
    api: Api,
    state: &Arc<ApiState<T>>,
    config: &ServerConfig,
    active: &Arc<AtomicUsize>,
) -> ! {
    let sources = Arc::new(worker::WorkerSources {
        logs_dir: config.logs_dir.clone(),
        ..worker::WorkerSources::default()
    });
    loop {
        let stream = match listener.accept_stream() {
            Ok(stream) => stream,
            Err(e) => {
                // EMFILE, ECONNABORTED and the like pass; do not spin.
                log::warn!("guest-api: accept on {name}: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= config.max_connections {
            active.fetch_sub(1, Ordering::SeqCst);
            let busy = http::Response::error(
                http::Status::ServiceUnavailable,
                "too many connections, retry later",
            );
            // Never block the accept loop on a client that does not read.
            let _ = stream.set_nonblocking(true);
            let _ = write_response(&stream, &busy, false);
            continue;
        }
        let state = Arc::clone(state);
        let sources = Arc::clone(&sources);
        let limits = config.limits.clone();
        let guard = ActiveGuard(Arc::clone(active));
        let spawned = std::thread::Builder::new()
            .name("guest-api-conn".into())
            .spawn(move || {
                let _guard = guard;
                let outcome = serve_connection(&stream, &limits, |request| match api {
                    Api::Workload(service) => service::dispatch(&state, service, request),
                    Api::Worker => worker::dispatch(&state, &sources, request),
                });
                if let ConnectionEnd::RequestFailed(e) = &outcome.end {
                    log::debug!("guest-api: connection ended: {e}");
                }
            });
        if let Err(e) = spawned {
            // The closure (and with it the guard and the stream) was dropped.
            log::warn!("guest-api: start connection thread: {e}");
        }
    }
}

/// Decrements the active-connection count when a connection thread ends.
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Binds the sockets and serves forever: `DstackGuest` on `config.socket` (this thread) and
/// `Tappd` on `config.legacy_socket` (a second accept thread). Returns only if setting up
/// fails.
pub fn serve<T: Tee + Send + 'static>(
    config: &ServerConfig,
    state: ApiState<T>,
) -> Result<Infallible, ApiError> {
    let state = Arc::new(state);
    let active = Arc::new(AtomicUsize::new(0));
    let main = bind(&config.socket, config.socket_mode)?;
    if let Some(addr) = config.worker {
        let listener =
            TcpListener::bind(addr).map_err(|source| ApiError::BindWorker { addr, source })?;
        let (state, config_copy, active) =
            (Arc::clone(&state), config.clone(), Arc::clone(&active));
        std::thread::Builder::new()
            .name("guest-api-worker".into())
            .spawn(move || {
                accept_loop(
                    &listener,
                    &addr.to_string(),
                    Api::Worker,
                    &state,
                    &config_copy,
                    &active,
                )
            })
            .map_err(|source| ApiError::SpawnAcceptThread {
                path: PathBuf::from(addr.to_string()),
                source,
            })?;
        log::info!("guest-api: Worker API on tcp {addr}");
    }
    if let Some(path) = &config.legacy_socket {
        let legacy = bind(path, config.socket_mode)?;
        let (state, config_copy, active) =
            (Arc::clone(&state), config.clone(), Arc::clone(&active));
        std::thread::Builder::new()
            .name("guest-api-tappd".into())
            .spawn(move || {
                let path = config_copy.legacy_socket.clone().unwrap_or_default();
                accept_loop(
                    &legacy,
                    &path.display().to_string(),
                    Api::Workload(Service::Tappd),
                    &state,
                    &config_copy,
                    &active,
                )
            })
            .map_err(|source| ApiError::SpawnAcceptThread {
                path: path.clone(),
                source,
            })?;
    }
    log::info!("guest-api: serving on {}", config.socket.display());
    accept_loop(
        &main,
        &config.socket.display().to_string(),
        Api::Workload(Service::DstackGuest),
        &state,
        config,
        &active,
    )
}

/// Where the DMI vendor and product names are read from.
pub const DMI_DIR: &str = "/sys/class/dmi/id";

/// Everything the `guest-api` process does: loads the workload files named in `config`,
/// takes over the event log at `config.event_log` with `tee`, and [`serve`]s forever.
pub fn run<T: Tee + Send + 'static>(
    config: &ServerConfig,
    tee: T,
    mode: ResumeMode,
) -> Result<Infallible, ApiError> {
    let prepare = |source| ApiError::PrepareState { source };
    let workload = match &config.app_compose {
        Some(app_compose) => WorkloadInfo::load(
            app_compose,
            config.sys_config.as_deref(),
            Some(Path::new(DMI_DIR)),
        )
        .map_err(prepare)?,
        None => WorkloadInfo::default(),
    };
    let mut state = ApiState::open(tee, mode, &config.event_log, workload)
        .map_err(prepare)?
        .with_gpu_attestation(config.gpu_attestation.clone());
    if let Some(path) = &config.app_keys {
        let load = |source: Box<dyn std::error::Error + Send + Sync>| ApiError::LoadAppKeys {
            path: path.clone(),
            source,
        };
        let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| load(Box::new(e)))?);
        let keys =
            cvm_keys::kms::GuestKeys::from_appkeys_json(&bytes).map_err(|e| load(Box::new(e)))?;
        state = state.with_app_keys(keys);
    }
    serve(config, state)
}

#[cfg(test)]
mod tests;
