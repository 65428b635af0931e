//! The `workloads` stage and the containers PID 1 supervises afterwards.
//!
//! The stage parses app-compose's `docker_compose_file` (`cvm_workload::compose`), pulls every
//! image by its pinned digest into the content-addressed store and unpacks it
//! (`cvm_workload::prepare`), then starts the services in dependency order through the one
//! libcontainer adapter (`crate::containers`), driven by `cvm_workload::supervisor`. Any
//! parse, pull, verification or unpack error fails the stage, so the boot stops with the reason
//! before `ready`. A compose file without services starts nothing.
//!
//! Where things are: the store and the named volumes live on the encrypted data disk
//! (`<disk mount>/workloads/`) when one is mounted, else on the tmpfs `/run/cvm/data` (lost at
//! power-off; the `workloads` record says `persistent: false`). Per-container state (overlay
//! upper layer, generated /etc files, runtime spec) is under `/run/cvm/workloads/<service>/`,
//! libcontainer's state under `/run/cvm/containers`, cgroups under `/cvm/workloads/<service>`.
//! Each container's stdout/stderr goes through a pipe that PID 1 reads: every line goes to
//! `<data>/logs/<service>.log` (on the encrypted disk; capped and rotated) and, only when
//! app-compose sets `public_logs` (as dstack), to the console as `<service>| <line>`. Without
//! `public_logs` the host operator sees only the lifecycle lines (started, exited, restarting).
//!
//! Launch process model: libcontainer forks and runs Rust code in the children, so the caller
//! must be single-threaded. PID 1 is (the guest API is a separate process; every stage is
//! synchronous), and `crate::containers` checks `Threads: 1` before each launch. Containers are
//! therefore created by PID 1 itself; their inits are its direct children, so the serve loop's
//! reaper reports their exits here.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read as _;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cvm_workload::compose::{App, ComposeError, ComposePolicy, HealthTest};
use cvm_workload::digest::Sha256Digest;
use cvm_workload::logs::{CappedLog, LineSplitter};
use cvm_workload::network::NetworkPlan;
use cvm_workload::prepare::{PrepareError, PreparedImage, prepare_images};
use cvm_workload::pull::{PullError, Store};
use cvm_workload::registry::{RegistryClient, RegistryConfig};
use cvm_workload::spec::{ContainerNetwork, GpuGrant, Layout, SpecError, container_plan};
use cvm_workload::supervisor::{Action, Event, Supervisor, UnitState};
use cvm_workload::unpack::{UnpackError, UnpackOptions, create_dir_in_root};
use init_core::app_compose::Runner;
use init_core::host_share::HostShare;
use init_core::results::Record;

use crate::containers::{self, ContainerError};

mod gpu;
mod net;
use crate::results::Results;
pub(crate) use net::Uplink;

/// Per-container state (overlay upper/work, mounted rootfs, generated files, bundle).
pub(crate) const RUN_DIR: &str = "/run/cvm/workloads";
/// libcontainer's state root.
pub(crate) const STATE_DIR: &str = "/run/cvm/containers";
/// Store and volumes without a data disk (tmpfs: nothing survives a reboot).
pub(crate) const TMPFS_DATA_DIR: &str = "/run/cvm/data";
/// The VM-wide count of user namespaces (`user.max_user_namespaces`, of the initial one).
const MAX_USER_NAMESPACES: &str = "/proc/sys/user/max_user_namespaces";
/// Under the data disk's mount point.
const DISK_SUBDIR: &str = "workloads";
/// Each of a service's log files is capped at this size…
const LOG_CAP: u64 = 8 << 20;
/// …and this many are kept (`<service>.log`, `.log.1` … `.log.3`).
const LOG_FILES: u32 = 4;

/// Where the store, volumes and logs live: on the data disk when there is one, else tmpfs.
pub(crate) fn data_dir(disk_mount: Option<&Path>) -> PathBuf {
    match disk_mount {
        Some(m) => m.join(DISK_SUBDIR),
        None => PathBuf::from(TMPFS_DATA_DIR),
    }
}

/// The per-service logs under the data directory (`<service>.log`, rotated `.log.N`).
pub(crate) fn logs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("logs")
}

/// Errors of the stage.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkloadsStageError {
    #[error("parse docker_compose_file")]
    Parse(#[source] Box<ComposeError>),
    #[error("create {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("open the image store")]
    OpenStore(#[source] Box<PullError>),
    #[error("pull and unpack the images")]
    Prepare(#[source] Box<PrepareError>),
    #[error("no prepared image for service {service}")]
    MissingImage { service: String },
    #[error("unknown service {service}")]
    UnknownService { service: String },
    #[error("mount the overlay root of {service}")]
    MountOverlay {
        service: String,
        #[source]
        source: Box<init_sys::mount::MountError>,
    },
    #[error("runtime spec of {service}")]
    Plan {
        service: String,
        #[source]
        source: Box<SpecError>,
    },
    #[error("write {path}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("create a directory in the root of {service}")]
    RootfsDir {
        service: String,
        #[source]
        source: Box<UnpackError>,
    },
    #[error("serialize the runtime spec of {service}")]
    SerializeSpec {
        service: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("log pipe for {service}")]
    Pipe {
        service: String,
        #[source]
        source: nix::Error,
    },
    #[error("devices of {service}")]
    Devices {
        service: String,
        #[source]
        source: Box<crate::host_devices::HostDevicesError>,
    },
    #[error("set up the workload networks")]
    Network(#[source] Box<net::NetSetupError>),
    #[error("limit user namespaces ({MAX_USER_NAMESPACES})")]
    UserNamespaces(#[source] std::io::Error),
    /// The GPU nodes or the grant (the message names the nodes or the GPU).
    #[error(transparent)]
    Gpu(Box<gpu::GpuGrantError>),
    #[error("GPU request refused")]
    GpuRequest(#[source] Box<SpecError>),
    #[error("launch {service}")]
    Launch {
        service: String,
        #[source]
        source: Box<ContainerError>,
    },
}

/// How many user namespaces the VM allows once the services start: none, unless the compose
/// has a privileged service (an explicit, measured opt-in; such a service is root in the VM
/// anyway). No service runs in a user namespace (compose offers only `userns_mode: host`) and
/// PID 1 needs none, so the kernel surface reachable through `unshare(CLONE_NEWUSER)` is closed
/// even to a container given `CAP_SYS_ADMIN` (whose seccomp profile allows `unshare`).
fn user_namespace_limit(app: &App) -> Option<u32> {
    (!app.services.iter().any(|s| s.privileged)).then_some(0)
}

fn limit_user_namespaces(app: &App) -> Result<(), WorkloadsStageError> {
    match user_namespace_limit(app) {
        Some(limit) => {
            match std::fs::write(MAX_USER_NAMESPACES, limit.to_string()) {
                Ok(()) => log::info!(
                    "workloads: user namespaces disabled ({MAX_USER_NAMESPACES} = {limit})"
                ),
                // A kernel without CONFIG_USER_NS has none to limit.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    log::info!("workloads: the kernel has no user namespaces");
                }
                Err(e) => return Err(WorkloadsStageError::UserNamespaces(e)),
            }
        }
        None => log::warn!(
            "workloads: user namespaces left available: the compose has a privileged service"
        ),
    }
    Ok(())
}

fn mkdir(path: &Path) -> Result<(), WorkloadsStageError> {
    std::fs::create_dir_all(path).map_err(|source| WorkloadsStageError::CreateDir {
        path: path.to_owned(),
        source,
    })
}

fn write_file(path: &Path, contents: &[u8]) -> Result<(), WorkloadsStageError> {
    let err = |source| WorkloadsStageError::WriteFile {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        mkdir(parent)?;
    }
    std::fs::write(path, contents).map_err(err)
}

/// A container's output pipe, read by PID 1.
struct LogPipe {
    service: String,
    fd: OwnedFd,
    splitter: LineSplitter,
    file: Option<CappedLog>,
}

/// The app's containers, supervised by PID 1 after the stage.
pub(crate) struct Workloads {
    app: App,
    images: BTreeMap<Sha256Digest, PreparedImage>,
    supervisor: Supervisor,
    epoch: Instant,
    data_dir: PathBuf,
    /// Services whose overlay root is mounted.
    mounted: Vec<String>,
    /// Container init pid → service.
    pids: BTreeMap<i32, String>,
    /// Last pid and exit code per service (for the records).
    last: BTreeMap<String, (i32, i32)>,
    logs: Vec<LogPipe>,
    /// Container output also to the console (app-compose `public_logs`).
    public_logs: bool,
    /// Test builds: record each log file's SHA-256 after the stop (`cvm.test_dump`).
    digest_logs_at_stop: bool,
    /// Running health checks: pid → (service, deadline).
    health: BTreeMap<i32, (String, Instant)>,
    /// Bridges, namespaces and hosts files (`net`).
    network: NetworkPlan,
    /// What services requesting GPUs get (empty without attested GPUs).
    gpu_grant: GpuGrant,
}

impl std::fmt::Debug for Workloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workloads")
            .field("services", &self.app.services.len())
            .field("pids", &self.pids)
            .finish_non_exhaustive()
    }
}

/// Plain HTTP only for registries at a private or loopback IP literal (the QEMU host, a
/// registry on the host's network); content integrity comes from the pinned digests either way.
fn plain_http(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|ip| ip.is_private() || ip.is_loopback())
}

/// Runs the stage: `Ok(None)` when there is nothing to run. `digest_logs_at_stop` (test
/// builds only) records each service log's SHA-256 once the containers are stopped.
pub(crate) fn run(
    share: &HostShare,
    attested_gpus: &crate::stages::measure::gpu::AttestedGpus,
    env: Option<&cvm_keys::env::DecryptedEnv>,
    disk_mount: Option<&Path>,
    uplink: Option<Uplink>,
    digest_logs_at_stop: bool,
    results: &mut Results,
) -> Result<Option<Workloads>, WorkloadsStageError> {
    // First, whatever the compose file holds: a GPU node the gate did not pass stops the boot.
    let gpu_grant = gpu::grant(attested_gpus).map_err(|e| WorkloadsStageError::Gpu(Box::new(e)))?;
    let compose = share.app_compose.compose();
    let runner = match compose.runner() {
        Runner::DockerCompose => "docker-compose",
        Runner::NerdctlCompose => "nerdctl-compose",
        Runner::Bash => "bash",
    };
    let yaml = compose.docker_compose_file.clone().unwrap_or_default();
    let vars: BTreeMap<String, String> = env
        .map(|e| {
            e.vars
                .iter()
                .map(|v| (v.name.clone(), v.value.expose().clone()))
                .collect()
        })
        .unwrap_or_default();
    let (persistent, data_dir) = (disk_mount.is_some(), data_dir(disk_mount));
    let store_shown = data_dir.join("store").display().to_string();
    let record = |results: &mut Results, services: Vec<String>, skipped: &str| {
        results.record(&Record::Workloads {
            services,
            store: store_shown.clone(),
            persistent,
            skipped: skipped.to_owned(),
            mono_us: init_sys::clock::monotonic_us(),
        });
    };
    // An empty file, or `services: {}`: nothing to run, the boot goes on as before.
    if yaml.trim().is_empty() && runner != "bash" {
        log::info!("workloads: no docker_compose_file; nothing to run");
        record(results, Vec::new(), "no docker_compose_file");
        return Ok(None);
    }
    let mut app = match cvm_workload::compose::parse(
        Some(runner),
        &yaml,
        &vars,
        &ComposePolicy {
            allow_privileged: compose.allow_privileged,
            ..ComposePolicy::default()
        },
    ) {
        Ok(app) => app,
        // `services: {}` (the dstack default of an empty app): nothing to run.
        Err(ComposeError::InvalidValue { path, reason })
            if path == "services" && reason == "no services" =>
        {
            log::info!("workloads: compose file has no services; nothing to run");
            record(results, Vec::new(), "no services");
            return Ok(None);
        }
        Err(e) => return Err(WorkloadsStageError::Parse(Box::new(e))),
    };
    let names: Vec<String> = app.services.iter().map(|s| s.name.clone()).collect();
    if app.services.is_empty() {
        log::info!("workloads: compose file has no services; nothing to run");
        record(results, names, "no services");
        return Ok(None);
    }
    // `devices:` mappings: a node that is absent or never granted fails the stage here, with
    // the reason, before anything is pulled.
    for service in &app.services {
        crate::host_devices::resolve(service).map_err(|source| WorkloadsStageError::Devices {
            service: service.name.clone(),
            source: Box::new(source),
        })?;
        // GPU requests: only attested GPUs, as many as asked (fail closed).
        cvm_workload::spec::check_gpu_request(service, &gpu_grant)
            .map_err(|e| WorkloadsStageError::GpuRequest(Box::new(e)))?;
    }
    let Some(uplink) = uplink else {
        // Without a network interface nothing can be pulled. Decision for the test images (the
        // sample share names an image no QEMU test can pull): skip, say so, keep booting.
        log::warn!(
            "workloads: services {names:?} NOT started: the VM has no network interface to pull from"
        );
        record(results, names, "no network interface");
        return Ok(None);
    };
    if !persistent {
        log::warn!(
            "workloads: no data disk: images and volumes on tmpfs {TMPFS_DATA_DIR} (lost at power-off)"
        );
    }
    let store_dir = data_dir.join("store");
    for dir in [
        &store_dir,
        &data_dir.join("volumes"),
        &data_dir.join("logs"),
    ] {
        mkdir(dir)?;
    }
    for volume in &app.volumes {
        mkdir(&data_dir.join("volumes").join(volume))?;
    }
    mkdir(Path::new(RUN_DIR))?;
    mkdir(Path::new(STATE_DIR))?;
    let store = Store::open(&store_dir).map_err(|e| WorkloadsStageError::OpenStore(Box::new(e)))?;
    let mut config = RegistryConfig {
        mirror: share.sys_config.docker_registry.clone(),
        ..RegistryConfig::default()
    };
    for service in &app.services {
        let registry = &service.image.registry;
        if plain_http(registry) && !config.plain_http_hosts.contains(registry) {
            config.plain_http_hosts.push(registry.clone());
        }
    }
    let client = RegistryClient::new(config);
    let started = Instant::now();
    let images = prepare_images(&store, &client, &app, UnpackOptions::default())
        .map_err(|e| WorkloadsStageError::Prepare(Box::new(e)))?;
    log::info!(
        "workloads: {} image(s) ready in {} ms (store {})",
        images.len(),
        started.elapsed().as_millis(),
        store_dir.display()
    );
    // A service without a compose healthcheck uses its image's HEALTHCHECK (as Docker does),
    // so `service_healthy` dependencies on such a service can turn healthy.
    cvm_workload::oci::adopt_image_healthchecks(&mut app, |s| {
        images.get(&s.image.digest).map(|i| &i.pulled.config)
    });
    let stop_signals: Vec<(String, String)> = app
        .services
        .iter()
        .filter_map(|s| {
            let image = images.get(&s.image.digest)?;
            let signal = image.pulled.config.stop_signal.clone()?;
            Some((s.name.clone(), signal))
        })
        .collect();
    let network =
        net::setup(&app, &uplink).map_err(|e| WorkloadsStageError::Network(Box::new(e)))?;
    limit_user_namespaces(&app)?;
    let supervisor = Supervisor::new(&app, &stop_signals);
    let mut workloads = Workloads {
        app,
        images,
        supervisor,
        epoch: Instant::now(),
        data_dir,
        mounted: Vec::new(),
        pids: BTreeMap::new(),
        last: BTreeMap::new(),
        logs: Vec::new(),
        public_logs: compose.public_logs,
        digest_logs_at_stop,
        health: BTreeMap::new(),
        network,
        gpu_grant,
    };
    if !workloads.public_logs {
        log::info!(
            "workloads: container output goes to {} only (app-compose public_logs is false)",
            workloads.data_dir.join("logs").display()
        );
    }
    record(results, names, "");
    let now = workloads.now();
    let actions = workloads.supervisor.poll(now);
    workloads.apply(actions, results);
    Ok(Some(workloads))
}

impl Workloads {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// How long the serve loop may sleep before [`Self::on_timer`] has work.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        let now = self.now();
        let health = self
            .health
            .values()
            .map(|(_, at)| at.saturating_duration_since(Instant::now()))
            .min();
        let supervisor = self
            .supervisor
            .next_deadline()
            .map(|at| at.saturating_sub(now));
        match (health, supervisor) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the supervisor's timers (restarts after backoff, health checks, kill after grace).
    pub(crate) fn on_timer(&mut self, results: &mut Results) {
        let expired: Vec<i32> = self
            .health
            .iter()
            .filter(|(_, (_, at))| *at <= Instant::now())
            .map(|(pid, _)| *pid)
            .collect();
        let mut actions = Vec::new();
        for pid in expired {
            if let Some((service, _)) = self.health.remove(&pid) {
                log::warn!("workloads: health check of {service} timed out");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let now = self.now();
                actions.extend(
                    self.supervisor
                        .handle(now, Event::HealthResult { service, ok: false }),
                );
            }
        }
        let now = self.now();
        actions.extend(self.supervisor.poll(now));
        self.apply(actions, results);
    }

    /// A reaped child: returns whether it was a container's init.
    pub(crate) fn on_reaped(&mut self, pid: i32, code: i32, results: &mut Results) -> bool {
        if let Some((service, _)) = self.health.remove(&pid) {
            log::debug!("workloads: health check of {service}: status {code}");
            let now = self.now();
            let ok = code == 0;
            let actions = self
                .supervisor
                .handle(now, Event::HealthResult { service, ok });
            self.apply(actions, results);
            return true;
        }
        let Some(service) = self.pids.remove(&pid) else {
            return false;
        };
        log::info!("workloads: {service} (pid {pid}) exited with status {code}");
        self.last.insert(service.clone(), (pid, code));
        // The state dir and cgroup must go before the service can be created again.
        if let Err(e) = containers::delete(Path::new(STATE_DIR), &service) {
            log::warn!("{}", init_core::error_chain::one_line(&e));
        }
        self.drain_logs(true);
        let now = self.now();
        let actions = self.supervisor.handle(now, Event::Exited { service, code });
        self.apply(actions, results);
        true
    }

    /// The output pipes to poll.
    pub(crate) fn log_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.logs.iter().map(|l| l.fd.as_fd()).collect()
    }

    /// Reads what the containers wrote (non-blocking); with `all`, pipes at EOF are closed.
    pub(crate) fn drain_logs(&mut self, _all: bool) {
        let mut buf = vec![0u8; 64 << 10];
        let mut closed = Vec::new();
        let public = self.public_logs;
        for (i, pipe) in self.logs.iter_mut().enumerate() {
            let mut file = std::fs::File::from(match pipe.fd.try_clone() {
                Ok(fd) => fd,
                Err(_) => continue,
            });
            loop {
                match file.read(&mut buf) {
                    Ok(0) => {
                        if let Some(line) = pipe.splitter.finish() {
                            emit(&pipe.service, &line, public, pipe.file.as_mut());
                        }
                        closed.push(i);
                        break;
                    }
                    Ok(n) => {
                        for line in pipe.splitter.push(buf.get(..n).unwrap_or_default()) {
                            emit(&pipe.service, &line, public, pipe.file.as_mut());
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        for i in closed.into_iter().rev() {
            self.logs.remove(i);
        }
    }

    /// Orderly stop (ACPI power-off, SIGTERM): the supervisor signals in reverse dependency
    /// order and kills after each stop_grace_period; waits at most `limit`.
    pub(crate) fn stop_all(&mut self, results: &mut Results, limit: Duration) {
        let deadline = Instant::now() + limit;
        let now = self.now();
        let actions = self.supervisor.shutdown(now);
        self.apply(actions, results);
        while !self.supervisor.finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            let (reaped, _) = init_sys::signals::reap_exited();
            for child in reaped {
                self.on_reaped(child.pid, child.code, results);
            }
            self.drain_logs(false);
            self.on_timer(results);
        }
        self.drain_logs(true);
        if self.digest_logs_at_stop {
            self.record_log_digests(results);
        }
    }

    /// `<data>/logs/<service>.log`.
    fn log_path(&self, service: &str) -> PathBuf {
        logs_dir(&self.data_dir).join(format!("{service}.log"))
    }

    /// Test hook (`cvm.test_dump=container-log-digests`): one `test_dump` record per service
    /// whose `hex` is the SHA-256 of its current log file, so a test can prove what the log
    /// holds without the log's bytes leaving the VM.
    fn record_log_digests(&self, results: &mut Results) {
        for service in &self.app.services {
            let path = self.log_path(&service.name);
            let Ok(bytes) = std::fs::read(&path) else {
                log::warn!("test hook: no log file {}", path.display());
                continue;
            };
            results.record(&Record::TestDump {
                name: format!("container-log-sha256:{}", service.name),
                hex: Sha256Digest::of(&bytes).hex(),
                mono_us: init_sys::clock::monotonic_us(),
            });
        }
    }

    fn apply(&mut self, actions: Vec<Action>, results: &mut Results) {
        let mut queue: VecDeque<Action> = actions.into();
        loop {
            let Some(action) = queue.pop_front() else {
                // A start may make dependents ready.
                let now = self.now();
                let more = self.supervisor.poll(now);
                if more.is_empty() {
                    break;
                }
                queue.extend(more);
                continue;
            };
            let event = match action {
                Action::Start { service } => match self.launch(&service) {
                    Ok(pid) => {
                        log::info!("workloads: {service} started (pid {pid})");
                        self.pids.insert(pid, service.clone());
                        self.last.insert(service.clone(), (pid, 0));
                        Some(Event::Started { service })
                    }
                    Err(e) => {
                        let reason = init_core::error_chain::one_line(&e);
                        log::error!("workloads: {reason}");
                        Some(Event::StartFailed { service, reason })
                    }
                },
                Action::CheckHealth { service } => match self.check_health(&service) {
                    Ok(()) => None,
                    Err(e) => {
                        log::warn!("workloads: {}", init_core::error_chain::one_line(&e));
                        Some(Event::HealthResult { service, ok: false })
                    }
                },
                Action::Signal { service, signal } => {
                    log::info!("workloads: {signal} to {service}");
                    if let Err(e) = containers::signal(Path::new(STATE_DIR), &service, &signal) {
                        log::warn!("{}", init_core::error_chain::one_line(&e));
                    }
                    None
                }
                Action::Kill { service } => {
                    log::warn!("workloads: SIGKILL to {service} after its grace period");
                    if let Err(e) = containers::signal(Path::new(STATE_DIR), &service, "SIGKILL") {
                        log::warn!("{}", init_core::error_chain::one_line(&e));
                    }
                    None
                }
                Action::Report { service, state } => {
                    self.report(&service, &state, results);
                    None
                }
            };
            if let Some(event) = event {
                let now = self.now();
                queue.extend(self.supervisor.handle(now, event));
            }
        }
    }

    fn report(&self, service: &str, state: &UnitState, results: &mut Results) {
        let (pid, last_code) = self.last.get(service).copied().unwrap_or((0, 0));
        let (code, detail) = match state {
            UnitState::Exited { code } | UnitState::BackingOff { code, .. } => {
                (*code, String::new())
            }
            UnitState::Failed { reason } => (last_code, reason.clone()),
            _ => (last_code, String::new()),
        };
        log::info!("workloads: {service} {}", state.name());
        results.record(&Record::Container {
            service: service.to_owned(),
            state: state.name().to_owned(),
            code,
            pid,
            restarts: self.supervisor.restarts(service),
            detail,
            mono_us: init_sys::clock::monotonic_us(),
        });
    }

    /// Starts the service's health check inside its container (`CMD` argv, or `/bin/sh -c`
    /// for `CMD-SHELL`); the result comes with the process's exit, or as a failure at the
    /// check's timeout.
    fn check_health(&mut self, name: &str) -> Result<(), WorkloadsStageError> {
        let check = self
            .app
            .service(name)
            .and_then(|s| s.healthcheck.clone())
            .ok_or_else(|| WorkloadsStageError::UnknownService {
                service: name.to_owned(),
            })?;
        let args = match check.test {
            HealthTest::Exec(argv) => argv,
            HealthTest::Shell(cmd) => vec!["/bin/sh".to_owned(), "-c".to_owned(), cmd],
        };
        let pid = containers::exec(Path::new(STATE_DIR), name, args).map_err(|source| {
            WorkloadsStageError::Launch {
                service: name.to_owned(),
                source: Box::new(source),
            }
        })?;
        self.health
            .insert(pid, (name.to_owned(), Instant::now() + check.timeout));
        Ok(())
    }

    /// Prepares the root, the generated files and the bundle of `name`, then creates and
    /// starts its container; returns the container init's pid.
    fn launch(&mut self, name: &str) -> Result<i32, WorkloadsStageError> {
        let service =
            self.app
                .service(name)
                .ok_or_else(|| WorkloadsStageError::UnknownService {
                    service: name.to_owned(),
                })?;
        let image = self.images.get(&service.image.digest).ok_or_else(|| {
            WorkloadsStageError::MissingImage {
                service: name.to_owned(),
            }
        })?;
        let hostname = service
            .container_name
            .clone()
            .unwrap_or_else(|| name.to_owned());
        let mut layout = Layout::standard(Path::new(RUN_DIR), &self.data_dir, name, &hostname);
        layout.network = Some(ContainerNetwork {
            netns: self.network.services.get(name).map(|n| n.netns.clone()),
            hosts: self.network.hosts_file(&self.app, service),
        });
        let base = Path::new(RUN_DIR).join(name);
        if !self.mounted.iter().any(|m| m == name) {
            // A writable overlay over the read-only image root; kept across restarts (as a
            // Docker container's filesystem is), gone at power-off.
            let (upper, work) = (base.join("upper"), base.join("work"));
            for dir in [&upper, &work, &layout.rootfs] {
                mkdir(dir)?;
            }
            let data = format!(
                "lowerdir={},upperdir={},workdir={}",
                image.rootfs.display(),
                upper.display(),
                work.display()
            );
            // nodev: a device node in an image layer (or one made with a granted MKNOD) opens
            // nothing; the container's devices are only the ones its /dev tmpfs gets.
            init_sys::mount::mount(
                "overlay",
                &layout.rootfs,
                "overlay",
                init_core::plan::MountFlags {
                    nodev: true,
                    ..init_core::plan::MountFlags::default()
                },
                &data,
            )
            .map_err(|source| WorkloadsStageError::MountOverlay {
                service: name.to_owned(),
                source: Box::new(source),
            })?;
            self.mounted.push(name.to_owned());
        }
        let host_devices = crate::host_devices::resolve(service).map_err(|source| {
            WorkloadsStageError::Devices {
                service: name.to_owned(),
                source: Box::new(source),
            }
        })?;
        let plan = container_plan(
            &self.app,
            service,
            &image.pulled.config,
            &image.files,
            &layout,
            &host_devices,
            &self.gpu_grant,
        )
        .map_err(|source| WorkloadsStageError::Plan {
            service: name.to_owned(),
            source: Box::new(source),
        })?;
        for file in &plan.files {
            write_file(&file.path, &file.contents)?;
            let err = |source| WorkloadsStageError::WriteFile {
                path: file.path.clone(),
                source,
            };
            std::fs::set_permissions(&file.path, std::fs::Permissions::from_mode(file.mode))
                .map_err(err)?;
            std::os::unix::fs::chown(&file.path, Some(file.owner.0), Some(file.owner.1))
                .map_err(err)?;
        }
        for dir in &plan.rootfs_dirs {
            create_dir_in_root(&layout.rootfs, dir).map_err(|source| {
                WorkloadsStageError::RootfsDir {
                    service: name.to_owned(),
                    source: Box::new(source),
                }
            })?;
        }
        let bundle = base.join("bundle");
        let json = serde_json::to_vec_pretty(&plan.json).map_err(|source| {
            WorkloadsStageError::SerializeSpec {
                service: name.to_owned(),
                source,
            }
        })?;
        write_file(&bundle.join("config.json"), &json)?;
        let pipe_err = |source| WorkloadsStageError::Pipe {
            service: name.to_owned(),
            source,
        };
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(pipe_err)?;
        nix::fcntl::fcntl(
            &read,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(pipe_err)?;
        let write2 = write
            .try_clone()
            .map_err(|e| pipe_err(nix::Error::from_raw(e.raw_os_error().unwrap_or(0))))?;
        // A stale state dir (a start that failed half-way) would make the id clash.
        let launch_err = |source| WorkloadsStageError::Launch {
            service: name.to_owned(),
            source: Box::new(source),
        };
        containers::delete(Path::new(STATE_DIR), name).map_err(launch_err)?;
        let pid = containers::create_and_start(Path::new(STATE_DIR), name, &bundle, write, write2)
            .map_err(launch_err)?;
        let log_path = self.log_path(name);
        let file = match CappedLog::open(&log_path, LOG_CAP, LOG_FILES) {
            Ok(f) => Some(f),
            Err(e) => {
                log::warn!("{}", init_core::error_chain::one_line(&e));
                None
            }
        };
        self.logs.push(LogPipe {
            service: name.to_owned(),
            fd: read,
            splitter: LineSplitter::default(),
            file,
        });
        Ok(pid)
    }
}

/// One line of a container's output: to its log file, and to the console when public.
fn emit(service: &str, line: &str, public: bool, file: Option<&mut CappedLog>) {
    if public {
        log::info!("{service}| {line}");
    }
    if let Some(f) = file
        && let Err(e) = f.write_line(line)
    {
        log::debug!("{}", init_core::error_chain::one_line(&e));
    }
}

#[cfg(test)]
mod tests {
    use super::{plain_http, user_namespace_limit};
    use cvm_workload::compose::{App, ComposePolicy};

    fn app(extra: &str) -> App {
        let yaml = format!(
            "services:\n  a:\n    image: r.example/a@sha256:{}\n  b:\n    image: r.example/b@sha256:{}\n{extra}",
            "1".repeat(64),
            "2".repeat(64)
        );
        let policy = ComposePolicy {
            allow_privileged: true,
            ..ComposePolicy::default()
        };
        cvm_workload::compose::parse(Some("docker-compose"), &yaml, &Default::default(), &policy)
            .unwrap()
    }

    #[test]
    fn user_namespaces_closed_unless_a_service_is_privileged() {
        assert_eq!(user_namespace_limit(&app("")), Some(0));
        // CAP_SYS_ADMIN opens unshare in the seccomp profile: the limit still closes userns.
        assert_eq!(
            user_namespace_limit(&app("    cap_add: [SYS_ADMIN]\n")),
            Some(0)
        );
        assert_eq!(user_namespace_limit(&app("    privileged: true\n")), None);
    }

    #[test]
    fn plain_http_only_for_private_ip_literals() {
        assert!(plain_http("10.0.2.2:5000"));
        assert!(plain_http("127.0.0.1:5000"));
        assert!(plain_http("192.168.1.4"));
        assert!(!plain_http("8.8.8.8:5000"));
        assert!(!plain_http("registry-1.docker.io"));
        assert!(!plain_http("10.0.2.2.example.com:5000"));
    }
}
