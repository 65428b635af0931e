//! The `guest-api` stage: PID 1 runs its own binary as `cvm-init guest-api ...` after
//! `system-ready` and waits until `GET /Info` answers 200. The child owns the runtime event log
//! from then on (the `system-ready` stage consumed PID 1's handle), so workload traffic never
//! reaches PID 1. After `ready`, `crate::supervisor` restarts it with backoff when it dies.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use init_core::tee::events::RUNTIME_EVENT_LOG_PATH;

/// The dstack guest-agent socket workloads get bind-mounted.
pub(crate) const DSTACK_SOCKET: &str = "/var/run/dstack.sock";
/// The legacy Tappd socket.
pub(crate) const TAPPD_SOCKET: &str = "/var/run/tappd.sock";
/// The argument that selects the API mode of the binary.
pub(crate) const SUBCOMMAND: &str = "guest-api";
const READY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub(crate) enum GuestApiStageError {
    #[error("create {}", path.display())]
    CreateDirectory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("start the guest API process")]
    Spawn(#[source] std::io::Error),
    #[error("guest API process exited during start-up with {status}")]
    Exited { status: std::process::ExitStatus },
    #[error("guest API did not answer Info on {} within {} s", socket.display(), READY_TIMEOUT.as_secs())]
    NotReady {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("guest API answered Info with `{status_line}`")]
    BadInfo { status_line: String },
}

/// dstack's external Worker API address (`Info`, `/logs` with `public_logs`, `/metrics` with
/// `public_sysinfo`): on every interface, as dstack's guest agent binds it.
pub(crate) const WORKER_LISTEN: &str = "0.0.0.0:8090";

/// What the API process is started over (again after a crash).
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    /// The private host-share copies.
    pub(crate) share_copy: PathBuf,
    /// The per-service logs the Worker API shows with `public_logs`.
    pub(crate) logs_dir: PathBuf,
}

/// Runs the stage: the API process over `launch`.
pub(crate) fn run(launch: &Launch) -> Result<Child, GuestApiStageError> {
    let child = start(launch)?;
    log::info!(
        "guest API serving on {DSTACK_SOCKET}, Worker API on tcp {WORKER_LISTEN} (pid {})",
        child.id()
    );
    Ok(child)
}

/// Start the API process with the private host-share copies and wait until `Info` answers 200.
pub(crate) fn start(launch: &Launch) -> Result<Child, GuestApiStageError> {
    let host_share_copy = launch.share_copy.as_path();
    let run = Path::new(DSTACK_SOCKET)
        .parent()
        .unwrap_or(Path::new("/var/run"));
    std::fs::create_dir_all(run).map_err(|source| GuestApiStageError::CreateDirectory {
        path: run.to_owned(),
        source,
    })?;
    // std resets the signal mask and dispositions in the child, so PID 1's blocked signals do
    // not leak into it.
    let mut command = Command::new("/proc/self/exe");
    // No inherited environment: PID 1's comes from kernel-cmdline `KEY=value` parameters.
    command
        .env_clear()
        .arg(SUBCOMMAND)
        .args(["--socket", DSTACK_SOCKET, "--legacy-socket", TAPPD_SOCKET])
        .args(["--event-log", RUNTIME_EVENT_LOG_PATH])
        .arg("--app-compose")
        .arg(host_share_copy.join("app-compose.json"))
        .arg("--sys-config")
        .arg(host_share_copy.join(".sys-config.json"))
        .args(["--worker-listen", WORKER_LISTEN])
        .arg("--logs-dir")
        .arg(&launch.logs_dir);
    // Written by the keys stage when a KMS gave keys: GetKey / GetTlsKey need them.
    let app_keys = host_share_copy.join(crate::stages::keys::APP_KEYS_FILE);
    if app_keys.is_file() {
        command.arg("--app-keys").arg(app_keys);
    }
    let mut child = command.spawn().map_err(GuestApiStageError::Spawn)?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(GuestApiStageError::Exited { status });
        }
        match probe_info(Path::new(DSTACK_SOCKET)) {
            Ok(status_line) if status_line.contains(" 200 ") => return Ok(child),
            Ok(status_line) => return Err(GuestApiStageError::BadInfo { status_line }),
            Err(source) if Instant::now() >= deadline => {
                let _ = child.kill();
                return Err(GuestApiStageError::NotReady {
                    socket: PathBuf::from(DSTACK_SOCKET),
                    source,
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// One `GET /Info` over the socket; returns the HTTP status line.
fn probe_info(socket: &Path) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /Info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf)?;
    let head = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
    Ok(head.lines().next().unwrap_or_default().to_owned())
}

/// The `guest-api` mode of the binary (not PID 1): serve until killed.
pub(crate) fn main(args: impl Iterator<Item = std::ffi::OsString>) -> ! {
    let result = (|| -> Result<std::convert::Infallible, Box<dyn std::error::Error>> {
        init_sys::signals::reset_inherited()?;
        let config = guest_api::ServerConfig::parse_args(args)?;
        let tee = crate::stages::measure::select_tee_for_guest_api(
            &crate::stages::measure::TdxPaths::default(),
        )?;
        let simulated = init_core::tee::Rtmr::pre_extended_events(&tee)
            .iter()
            .any(|e| e.name == "insecure-simulated-tee");
        let mode = if simulated {
            guest_api::ResumeMode::InsecureRebuildSimulator
        } else {
            guest_api::ResumeMode::RegistersHoldLog
        };
        Ok(guest_api::run(&config, tee, mode)?)
    })();
    let error = match result {
        Ok(never) => match never {},
        Err(e) => e,
    };
    log::error!(
        "guest-api: {}",
        init_core::error_chain::one_line(error.as_ref())
    );
    #[allow(clippy::exit)]
    std::process::exit(1)
}
