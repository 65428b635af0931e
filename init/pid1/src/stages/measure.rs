//! The `measure` stage ([`run`]): pick the TEE backend, open the RTMR3 runtime event log, run
//! the GPU gate ([`gpu`]) and emit the app-identity events (`init_core::tee::events`, target
//! dstack v0.5.11). It hands on [`Measured`]: the identity, the event log over the TEE, and the
//! `gpu-policy-hash`.
//!
//! 0. the app-compose gates (`init_core::gates`: `requirements.*` against this image and VM,
//!    the fields this image does not do refused by name), before anything is measured;
//! 1. [`select_tee_with_root`] ([`TdxTee::probe`], or with the feature `insecure-simulated-tee`
//!    the simulated TEE when no TDX is present), after configfs is mounted on `/sys/kernel/config`;
//! 2. [`open_event_log`] with the app's event-log version (from `HostShare`);
//! 3. the GPU gate: `gpu-policy-hash`, [`gpu-attestation`];
//! 4. [`measure_app_info`] (system-preparing … boot-mr-done) → the `AppIdentity`.
//!
//! The `keys` stage extends `os-image-hash` / `key-provider` through the same log, and the
//! `system-ready` stage (`stages/system_ready.rs`) closes it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use init_core::host_share::HostShare;
use init_core::identity::{AppIdentity, ID_LEN, IdentityError};
use init_core::results::Record;
use init_core::tee::events::{
    EventLogError, EventLogSink, RUNTIME_EVENT_LOG_PATH, RuntimeEventLog, app_info_events,
};
use init_core::tee::{
    BootEventLog, BoxError, EventLogVersion, QuoteSource, REPORT_DATA_LEN, Rtmr, RtmrIndex,
    Sha384Digest, Tee, TeeError, check_extend,
};
use init_sys::ccel;
use init_sys::tdx_guest::{TDX_GUEST_PATH, TdxGuest};
use init_sys::tsm_report::{TSM_REPORT_ROOT, TsmReport};
use init_sys::tsm_rtmr::{TSM_MEASUREMENTS_DIR, TsmRtmr};
use nix::fcntl::OFlag;

use crate::results::Results;

pub(crate) mod gpu;
pub(crate) mod gpu_driver;
#[cfg(feature = "insecure-test-hooks")]
pub(crate) mod test_gpu;

/// Name of this init's configfs-tsm report entry.
const TSM_REPORT_ENTRY: &str = "cvm-init";

/// Errors of the measure stage.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MeasureStageError {
    /// The INSECURE simulated TEE could not create its signing keys.
    #[cfg(feature = "insecure-simulated-tee")]
    #[error("create the INSECURE simulated TEE")]
    SimulatedTee {
        #[source]
        source: cvm_sim_tee::SimulatedTeeError,
    },
    /// The simulated TEE's signer could not be handed to the guest API server.
    #[cfg(feature = "insecure-simulated-tee")]
    #[error("write the INSECURE simulated TEE's signer to {}", path.display())]
    ExportSimulatedSigner {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No TDX interface was found.
    #[error("no TDX guest interface (neither {tsm_rtmr} nor {tdx_guest})")]
    ProbeTdx {
        tsm_rtmr: PathBuf,
        tdx_guest: PathBuf,
        #[source]
        source: init_sys::tdx_guest::TdxGuestError,
    },
    /// An app-compose gate refused the app (its message names every field).
    #[error(transparent)]
    Gates(init_core::gates::GateError),
    /// The host share's `.encrypted-env` is not the one app-compose pins.
    #[error(
        "app-compose pins encrypted_env_sha256 {want} but the host share's .encrypted-env is \
         {got}: refusing to request keys with an env the app did not name"
    )]
    EnvPin { want: String, got: String },
    /// Mounting the event log's private tmpfs failed.
    #[error("mount the event log's private tmpfs on {}", path.display())]
    MountEventLogTmpfs {
        path: PathBuf,
        #[source]
        source: init_sys::mount::MountError,
    },
    /// Creating the event log directory or file failed.
    #[error("open runtime event log {path}")]
    OpenEventLog {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing `runtime_event_version` failed.
    #[error("write {path}")]
    WriteEventVersion {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Starting the log (logging pre-extended events) failed.
    #[error("start runtime event log")]
    StartEventLog {
        #[source]
        source: EventLogError,
    },
    /// The app's event-log version is invalid.
    #[error("event log version of app-compose.json")]
    EventLogVersion {
        #[source]
        source: init_core::app_compose::AppComposeError,
    },
    /// Reading random bytes for the instance-id seed failed.
    #[error("read random seed from {path}")]
    ReadRandomSeed {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Deriving the app identity failed.
    #[error("derive app identity")]
    DeriveIdentity {
        #[source]
        source: IdentityError,
    },
    /// Emitting an event failed.
    #[error("emit RTMR3 events")]
    EmitEvents {
        #[source]
        source: EventLogError,
    },
    /// The GPU gate refused (every message of [`gpu::GpuStageError`] names the GPU step, so
    /// this layer adds no segment of its own).
    #[error(transparent)]
    Gpu(gpu::GpuStageError),
    /// The INSECURE `cvm.test_gpu` hook could not make its fake GPU.
    #[cfg(feature = "insecure-test-hooks")]
    #[error("make the fake GPU of cvm.test_gpu")]
    TestGpu(#[source] io::Error),
    /// The GPU driver extension could not be verified and mounted.
    #[error("GPU driver extension")]
    GpuDriver(#[source] gpu_driver::GpuDriverError),
}

/// What the stage hands on: the app identity and the RTMR3 event log (over the TEE), which the
/// `keys` stage extends and the `system-ready` stage closes.
pub(crate) struct Measured {
    pub(crate) identity: AppIdentity,
    pub(crate) log: RuntimeEventLog<BoxedTee, FileSink>,
    /// The `gpu-policy-hash` payload (MRCONFIGID v3 binds it).
    pub(crate) gpu_policy_hash: [u8; 32],
}

impl std::fmt::Debug for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Measured")
            .field("identity", &self.identity)
            .field("events", &self.log.events().len())
            .finish_non_exhaustive()
    }
}

/// Runs the stage for `share` (`config.gpu_driver`: the driver extension's root hash); hands on the measured identity and the GPUs the gate passed.
pub(crate) fn run(
    share: &HostShare,
    config: &init_core::cmdline::Config,
    results: &mut Results,
) -> Result<(Measured, gpu::AttestedGpus), MeasureStageError> {
    // dstack checks its gates before anything is measured (`verify_app_compose_policy`).
    init_core::gates::check(
        share.app_compose.compose(),
        &share.sys_config.vm_config,
        &init_core::gates::IMAGE_FACTS,
    )
    .map_err(MeasureStageError::Gates)?;
    for warning in init_core::gates::warnings(share.app_compose.compose()) {
        log::warn!("app-compose {warning}");
    }
    let (tee, insecure_root) = select_tee_with_root(&TdxPaths::default())?;
    if let Some(pem) = insecure_root {
        results.record(&Record::InsecureSimulatedRoot {
            pem,
            mono_us: init_sys::clock::monotonic_us(),
        });
    }
    let version = event_log_version(share)?;
    mount_event_log_tmpfs(Path::new(RUNTIME_EVENT_LOG_PATH))?;
    let mut log = open_event_log(tee, Path::new(RUNTIME_EVENT_LOG_PATH), version)?;
    if let Some(marker) = test_build_marker(version) {
        log::warn!(
            "measure: INSECURE test build: RTMR3 starts with the `insecure-test-build` event"
        );
        log.emit_plan(vec![marker])
            .map_err(|source| MeasureStageError::EmitEvents { source })?;
    }
    let seed = random_seed(Path::new("/dev/urandom"))?;
    let gpu_policy = share
        .app_compose
        .compose()
        .requirements
        .as_ref()
        .and_then(|r| r.gpu_policy.as_ref());
    // The driver tree first: the GPU gate and the containers use what it mounts.
    if let gpu_driver::Outcome::Mounted {
        device,
        files,
        bytes,
    } = gpu_driver::run(config.gpu_driver.as_ref(), Path::new("/sys/block"))
        .map_err(MeasureStageError::GpuDriver)?
        && let Some(root) = config.gpu_driver.as_ref()
    {
        results.record(&Record::GpuDriver {
            root_hash: hex::encode(root),
            device,
            mount_point: gpu_driver::MOUNT_POINT.to_owned(),
            files,
            bytes,
            mono_us: init_sys::clock::monotonic_us(),
        });
    }
    #[allow(unused_mut)]
    let mut gpu_paths = gpu::GpuPaths::default();
    #[cfg(feature = "insecure-test-hooks")]
    if let Some(mode) = config.test_gpu {
        test_gpu::prepare(mode, &mut gpu_paths).map_err(MeasureStageError::TestGpu)?;
    }
    let gpu = gpu::run(gpu_policy, &gpu_paths).map_err(MeasureStageError::Gpu)?;
    log::info!(
        "gpu: {} NVIDIA GPU(s), ready state {}, policy hash {}",
        gpu.gpus,
        if gpu.ready { "set" } else { "off" },
        hex::encode(gpu.policy_hash)
    );
    results.record(&Record::Gpu {
        gpus: u32::try_from(gpu.gpus).unwrap_or(u32::MAX),
        ready: gpu.ready,
        policy_hash: hex::encode(gpu.policy_hash),
        mono_us: init_sys::clock::monotonic_us(),
    });
    let identity = measure_app_info(&mut log, share, seed, gpu.events)?;
    let env = env_event(share, version)?;
    log.emit_plan(vec![env])
        .map_err(|source| MeasureStageError::EmitEvents { source })?;
    Ok((
        Measured {
            identity,
            log,
            gpu_policy_hash: gpu.policy_hash,
        },
        gpu::AttestedGpus {
            pci: gpu.attested,
            paths: gpu_paths,
        },
    ))
}

/// Where the real TDX interfaces live (parameters for tests).
#[derive(Debug, Clone)]
pub(crate) struct TdxPaths {
    /// tsm-mr sysfs directory.
    pub(crate) tsm_measurements: PathBuf,
    /// `/dev/tdx_guest`.
    pub(crate) tdx_guest: PathBuf,
    /// configfs-tsm report root.
    pub(crate) tsm_report_root: PathBuf,
    /// ACPI tables directory (CCEL).
    pub(crate) acpi_tables: PathBuf,
    /// Where a simulated build hands its quote signer to the guest API server
    /// ([`INSECURE_SIMULATED_SIGNER_PATH`]); unread in a release build, which has no simulator.
    #[cfg_attr(
        not(feature = "insecure-simulated-tee"),
        allow(dead_code, reason = "only the simulated TEE reads it")
    )]
    pub(crate) insecure_simulated_signer: PathBuf,
}

impl Default for TdxPaths {
    fn default() -> Self {
        Self {
            tsm_measurements: PathBuf::from(TSM_MEASUREMENTS_DIR),
            tdx_guest: PathBuf::from(TDX_GUEST_PATH),
            tsm_report_root: PathBuf::from(TSM_REPORT_ROOT),
            acpi_tables: PathBuf::from(ccel::ACPI_TABLES_DIR),
            insecure_simulated_signer: PathBuf::from(INSECURE_SIMULATED_SIGNER_PATH),
        }
    }
}

/// The real TDX backend: tsm-mr sysfs extends (verified by read-back) with the legacy ioctl as
/// fallback, `TDX_CMD_GET_REPORT0` reports, configfs-tsm quotes, CCEL boot log.
#[derive(Debug)]
pub(crate) struct TdxTee {
    tsm_rtmr: Option<TsmRtmr>,
    guest: Option<TdxGuest>,
    report: TsmReport,
    acpi_tables: PathBuf,
}

impl TdxTee {
    /// Finds the interfaces: tsm-mr sysfs if present, `/dev/tdx_guest` if it opens. Fails
    /// when neither can extend RTMRs.
    pub(crate) fn probe(paths: &TdxPaths) -> Result<Self, MeasureStageError> {
        let tsm = TsmRtmr::new(&paths.tsm_measurements);
        let tsm_rtmr = tsm.is_available().then_some(tsm);
        let guest = match TdxGuest::open(&paths.tdx_guest) {
            Ok(guest) => Some(guest),
            Err(source) if tsm_rtmr.is_none() => {
                return Err(MeasureStageError::ProbeTdx {
                    tsm_rtmr: paths.tsm_measurements.clone(),
                    tdx_guest: paths.tdx_guest.clone(),
                    source,
                });
            }
            Err(e) => {
                log::warn!("measure: {e}; TDREPORTs unavailable");
                None
            }
        };
        Ok(Self {
            tsm_rtmr,
            guest,
            report: TsmReport::new(&paths.tsm_report_root, TSM_REPORT_ENTRY),
            acpi_tables: paths.acpi_tables.clone(),
        })
    }
}

/// Where a build with the INSECURE simulated TEE leaves its quote signer for the guest API
/// server process (tmpfs, root only; never written by a build without the feature).
pub(crate) const INSECURE_SIMULATED_SIGNER_PATH: &str = "/run/cvm-insecure-simulated-signer";

/// Writes `bytes` to a new file only root can read.
#[cfg(feature = "insecure-simulated-tee")]
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

/// The guest API server's TEE: real TDX when present; in a simulated build, the simulated TEE
/// with PID 1's signer from [`INSECURE_SIMULATED_SIGNER_PATH`] (a fresh one if it is missing).
pub(crate) fn select_tee_for_guest_api(paths: &TdxPaths) -> Result<BoxedTee, MeasureStageError> {
    match TdxTee::probe(paths) {
        Ok(tee) => Ok(Box::new(tee)),
        #[cfg(feature = "insecure-simulated-tee")]
        Err(e) => {
            log::warn!("guest-api: {e}; using the INSECURE simulated TEE");
            let tee = match fs::read(&paths.insecure_simulated_signer) {
                Ok(bytes) => cvm_sim_tee::InsecureSimulatedTee::try_with_exported_signer(&bytes),
                Err(_) => cvm_sim_tee::InsecureSimulatedTee::try_new(),
            }
            .map_err(|source| MeasureStageError::SimulatedTee { source })?;
            Ok(Box::new(tee))
        }
        #[cfg(not(feature = "insecure-simulated-tee"))]
        Err(e) => Err(e),
    }
}

/// The TEE the boot uses, behind the init-core traits.
pub(crate) type BoxedTee = Box<dyn Tee + Send>;

/// Picks the backend: real TDX when its interfaces exist; otherwise, only in builds with the
/// feature `insecure-simulated-tee`, the simulated TEE (which marks RTMR3 so no verifier
/// accepts it). Without the feature a missing TDX interface is fatal.
#[cfg(test)]
pub(crate) fn select_tee(paths: &TdxPaths) -> Result<BoxedTee, MeasureStageError> {
    select_tee_with_root(paths).map(|(tee, _)| tee)
}

/// [`select_tee`], also returning the simulated TEE's per-boot PCK root certificate (PEM) when
/// the simulator was chosen, so a test KMS can be told which (insecure) root signs this boot's
/// quotes. `None` for real TDX.
pub(crate) fn select_tee_with_root(
    paths: &TdxPaths,
) -> Result<(BoxedTee, Option<String>), MeasureStageError> {
    match TdxTee::probe(paths) {
        Ok(tee) => Ok((Box::new(tee), None)),
        #[cfg(feature = "insecure-simulated-tee")]
        Err(e) => {
            log::warn!("measure: {e}; using the INSECURE simulated TEE");
            let tee = cvm_sim_tee::InsecureSimulatedTee::try_new()
                .map_err(|source| MeasureStageError::SimulatedTee { source })?;
            let root = tee
                .insecure_root_certificate_pem()
                .map_err(|source| MeasureStageError::SimulatedTee { source })?;
            // The guest API server (another process) signs with the same simulated keys, so
            // its quotes chain to the root published above.
            let signer = tee
                .insecure_export_signer()
                .map_err(|source| MeasureStageError::SimulatedTee { source })?;
            write_private(&paths.insecure_simulated_signer, &signer).map_err(|source| {
                MeasureStageError::ExportSimulatedSigner {
                    path: paths.insecure_simulated_signer.clone(),
                    source,
                }
            })?;
            Ok((Box::new(tee), Some(root)))
        }
        #[cfg(not(feature = "insecure-simulated-tee"))]
        Err(e) => Err(e),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("/dev/tdx_guest is not available")]
struct NoTdxGuest;

impl Rtmr for TdxTee {
    fn extend_rtmr(&mut self, index: RtmrIndex, digest: &Sha384Digest) -> Result<(), TeeError> {
        let extend_err = |source: BoxError| TeeError::ExtendRtmr {
            index,
            digest: *digest,
            source,
        };
        if let Some(tsm) = &self.tsm_rtmr {
            let outcome = tsm
                .extend(index, digest)
                .map_err(|e| extend_err(Box::new(e)))?;
            return check_extend(index, &outcome.before, digest, &outcome.after);
        }
        let guest = self
            .guest
            .as_ref()
            .ok_or_else(|| extend_err(Box::new(NoTdxGuest)))?;
        guest
            .extend_rtmr(index, digest)
            .map_err(|e| extend_err(Box::new(e)))
    }
}

impl QuoteSource for TdxTee {
    fn report(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError> {
        let guest = self.guest.as_ref().ok_or_else(|| TeeError::GetReport {
            source: Box::new(NoTdxGuest),
        })?;
        guest
            .report(report_data)
            .map(|r| r.as_bytes().to_vec())
            .map_err(|e| TeeError::GetReport {
                source: Box::new(e),
            })
    }

    fn quote(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError> {
        self.report
            .quote(report_data)
            .map_err(|e| TeeError::GetQuote {
                source: Box::new(e),
            })
    }

    fn quoted_boot_event_log(&mut self) -> Result<Vec<u8>, TeeError> {
        BootEventLog::boot_event_log(self)
    }
}

impl BootEventLog for TdxTee {
    fn boot_event_log(&mut self) -> Result<Vec<u8>, TeeError> {
        ccel::read_log(&self.acpi_tables).map_err(|e| TeeError::ReadBootEventLog {
            source: Box::new(e),
        })
    }
}

/// Appends event log lines to a file opened with `O_APPEND` (one `write` per line).
#[derive(Debug)]
pub(crate) struct FileSink {
    file: File,
}

impl EventLogSink for FileSink {
    fn append_line(&mut self, line: &str) -> Result<(), BoxError> {
        self.file.write_all(line.as_bytes())?;
        Ok(())
    }
}

/// Mounts a tmpfs of its own ([`RUNTIME_EVENT_LOG_TMPFS_BYTES`]) on the event log's
/// directory: an append that fails after its extend puts the log out of step with RTMR3 for
/// good, so nothing else in `/run` (container roots on tmpfs, a workload's files) may share
/// its filesystem; the app's own events are bounded by the `EmitEvent` budget.
fn mount_event_log_tmpfs(log_path: &Path) -> Result<(), MeasureStageError> {
    let dir = log_path.parent().unwrap_or(Path::new("/run/log/dstack"));
    init_sys::mount::mount(
        "tmpfs",
        dir,
        "tmpfs",
        init_core::plan::MountFlags {
            nosuid: true,
            nodev: true,
            noexec: true,
        },
        &format!(
            "size={},mode=0755",
            init_core::tee::events::RUNTIME_EVENT_LOG_TMPFS_BYTES
        ),
    )
    .map_err(|source| MeasureStageError::MountEventLogTmpfs {
        path: dir.to_owned(),
        source,
    })
}

/// Creates the log directory (0755), writes `runtime_event_version` (`1` or `2`, as dstack
/// does) next to the log, opens `log_path` for appending (created 0644: readable by workloads,
/// writable only by PID 1; symlinks refused) and starts the log, which first records any
/// events the backend extended on its own (the simulated TEE's marker).
pub(crate) fn open_event_log<R: Rtmr>(
    rtmr: R,
    log_path: &Path,
    version: EventLogVersion,
) -> Result<RuntimeEventLog<R, FileSink>, MeasureStageError> {
    let open_err = |source| MeasureStageError::OpenEventLog {
        path: log_path.to_owned(),
        source,
    };
    let dir = log_path.parent().unwrap_or(Path::new("/"));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(open_err)?;
    let version_path = dir.join("runtime_event_version");
    fs::write(&version_path, version.number().to_string()).map_err(|source| {
        MeasureStageError::WriteEventVersion {
            path: version_path.clone(),
            source,
        }
    })?;
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(log_path)
        .map_err(open_err)?;
    RuntimeEventLog::new(rtmr, FileSink { file })
        .map_err(|source| MeasureStageError::StartEventLog { source })
}

/// The app's event-log version (V1 unless app-compose.json says `event_log_version: 2`).
pub(crate) fn event_log_version(share: &HostShare) -> Result<EventLogVersion, MeasureStageError> {
    share
        .app_compose
        .compose()
        .event_log_version()
        .map_err(|source| MeasureStageError::EventLogVersion { source })
}

/// 20 random bytes for a fresh instance-id seed, read from `urandom` (normally
/// `/dev/urandom`).
pub(crate) fn random_seed(urandom: &Path) -> Result<[u8; ID_LEN], MeasureStageError> {
    let mut seed = [0u8; ID_LEN];
    File::open(urandom)
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|source| MeasureStageError::ReadRandomSeed {
            path: urandom.to_owned(),
            source,
        })?;
    Ok(seed)
}

/// The `encrypted-env` event of the share's `.encrypted-env`, after checking app-compose's
/// `encrypted_env_sha256` pin (a missing or other file is refused before any key request).
fn env_event(
    share: &HostShare,
    version: EventLogVersion,
) -> Result<init_core::tee::RuntimeEvent, MeasureStageError> {
    let env = share.encrypted_env.as_deref();
    let event = init_core::tee::events::encrypted_env_event(env, version);
    if let Some(want) = &share.app_compose.compose().encrypted_env_sha256 {
        let got = if env.is_some() {
            hex::encode(&event.payload)
        } else {
            "absent".to_owned()
        };
        if !want.trim().eq_ignore_ascii_case(&got) {
            return Err(MeasureStageError::EnvPin {
                want: want.clone(),
                got,
            });
        }
    }
    match env {
        Some(bytes) => log::info!(
            "measure: .encrypted-env ({} bytes) SHA-256 {}",
            bytes.len(),
            hex::encode(&event.payload)
        ),
        None => log::info!("measure: no .encrypted-env (measured as absent)"),
    }
    Ok(event)
}

/// The `insecure-test-build` event of a build with any `insecure-*` feature (payload: those
/// features, comma-separated); `None` in a release build.
fn test_build_marker(version: EventLogVersion) -> Option<init_core::tee::RuntimeEvent> {
    let features: Vec<&str> = [
        (cfg!(feature = "insecure-test-hooks"), "insecure-test-hooks"),
        (
            cfg!(feature = "insecure-simulated-tee"),
            "insecure-simulated-tee",
        ),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    (!features.is_empty()).then(|| {
        init_core::tee::RuntimeEvent::new(
            init_core::tee::events::names::INSECURE_TEST_BUILD,
            features.join(",").into_bytes(),
        )
        .with_version(version)
    })
}

/// Derives the identity from the host share and emits `system-preparing`, `app-id`,
/// `compose-hash`, `instance-id`, `boot-mr-done`. Call before requesting keys.
pub(crate) fn measure_app_info<R: Rtmr, S: EventLogSink>(
    log: &mut RuntimeEventLog<R, S>,
    share: &HostShare,
    fresh_seed: [u8; ID_LEN],
    gpu_events: Vec<init_core::tee::RuntimeEvent>,
) -> Result<AppIdentity, MeasureStageError> {
    let version = event_log_version(share)?;
    let identity = AppIdentity::derive(&share.app_compose, &share.instance_info, fresh_seed, None)
        .map_err(|source| MeasureStageError::DeriveIdentity { source })?;
    // dstack HEAD order: ... compose-hash, gpu-policy-hash, [gpu-attestation], instance-id ...
    let mut events = app_info_events(&identity, version);
    let after_compose = events
        .iter()
        .position(|e| e.name == init_core::tee::events::names::COMPOSE_HASH)
        .map_or(events.len(), |i| i + 1);
    events.splice(
        after_compose..after_compose,
        gpu_events.into_iter().map(|e| e.with_version(version)),
    );
    log.emit_plan(events)
        .map_err(|source| MeasureStageError::EmitEvents { source })?;
    log::info!(
        "measure: app-id {} compose-hash {}",
        identity.app_id,
        identity.compose_hash
    );
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use init_core::app_compose::StorageFs;
    use init_core::tee::events::KeyProviderInfo;
    use init_core::tee::runtime_event::{decode_log, replay_rtmr3};
    use init_core::tee::testing::{FakeTee, TeeCall};

    use super::*;

    fn share() -> HostShare {
        let mut files = BTreeMap::new();
        files.insert(
            "app-compose.json".to_owned(),
            br#"{"manifest_version":2,"name":"demo","storage_fs":"ext4"}"#.to_vec(),
        );
        files.insert(
            ".sys-config.json".to_owned(),
            br#"{"vm_config":"{}"}"#.to_vec(),
        );
        HostShare::from_files(files).unwrap()
    }

    fn share_with(compose: &str, env: Option<&[u8]>) -> HostShare {
        let mut files = BTreeMap::new();
        files.insert("app-compose.json".to_owned(), compose.as_bytes().to_vec());
        files.insert(
            ".sys-config.json".to_owned(),
            br#"{"vm_config":"{}"}"#.to_vec(),
        );
        if let Some(env) = env {
            files.insert(".encrypted-env".to_owned(), env.to_vec());
        }
        HostShare::from_files(files).unwrap()
    }

    #[test]
    fn the_encrypted_env_is_measured_and_its_pin_enforced() {
        use sha2::Digest as _;
        let plain = r#"{"manifest_version":2,"name":"demo"}"#;
        let blob = b"sealed env bytes".as_slice();
        let hash = hex::encode(sha2::Sha256::digest(blob));
        // Measured: the file's SHA-256, or `absent`.
        let e = env_event(&share_with(plain, Some(blob)), EventLogVersion::V1).unwrap();
        assert_eq!(
            (e.name.as_str(), hex::encode(&e.payload)),
            ("encrypted-env", hash.clone())
        );
        let e = env_event(&share_with(plain, None), EventLogVersion::V1).unwrap();
        assert_eq!(e.payload, b"absent");
        // Pinned: only that file passes; a swapped or missing one is refused.
        let pinned =
            format!(r#"{{"manifest_version":2,"name":"demo","encrypted_env_sha256":"{hash}"}}"#);
        env_event(&share_with(&pinned, Some(blob)), EventLogVersion::V1).unwrap();
        for env in [Some(b"other env".as_slice()), None] {
            let err = env_event(&share_with(&pinned, env), EventLogVersion::V1).unwrap_err();
            assert!(matches!(err, MeasureStageError::EnvPin { .. }), "{err:?}");
        }
    }

    #[test]
    fn full_sequence_to_a_log_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log/dstack/runtime_events.log");
        let share = share();
        let mut tee = FakeTee::default();
        let mut log = open_event_log(&mut tee, &path, EventLogVersion::V1).unwrap();
        let identity = measure_app_info(&mut log, &share, [3; 20], Vec::new()).unwrap();
        crate::stages::system_ready::emit_events(
            &mut log,
            &share,
            Some(&KeyProviderInfo::none()),
            Some(cvm_disk::volume::Formatted::Blank),
            StorageFs::Ext4,
        )
        .unwrap();
        assert!(log.is_system_ready());
        drop(log);
        let text = fs::read_to_string(&path).unwrap();
        let events: Vec<_> = decode_log(&text)
            .unwrap()
            .into_iter()
            .map(|l| l.event)
            .collect();
        let names: Vec<_> = events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "system-preparing",
                "app-id",
                "compose-hash",
                "instance-id",
                "boot-mr-done",
                "key-provider",
                "disk-formatted",
                "storage-fs",
                "system-ready"
            ]
        );
        assert_eq!(events[1].payload, identity.app_id.0);
        assert_eq!(events[6].payload, b"blank");
        assert_eq!(events[7].payload, b"ext4");
        assert_eq!(replay_rtmr3(&events), *tee.rtmrs.register(RtmrIndex::R3));
        assert_eq!(tee.calls.len(), 9);
        assert_eq!(
            fs::read_to_string(dir.path().join("log/dstack/runtime_event_version")).unwrap(),
            "1"
        );
    }

    #[test]
    fn refused_extend_stops_the_stage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime_events.log");
        let mut tee = FakeTee {
            fail_extend_at: Some(0),
            ..FakeTee::default()
        };
        let mut log = open_event_log(&mut tee, &path, EventLogVersion::V1).unwrap();
        let err = measure_app_info(&mut log, &share(), [3; 20], Vec::new()).unwrap_err();
        assert!(matches!(
            err,
            MeasureStageError::EmitEvents {
                source: EventLogError::ExtendEvent { .. }
            }
        ));
        drop(log);
        assert_eq!(fs::read_to_string(&path).unwrap(), "");
        assert_eq!(tee.calls.len(), 1);
        assert!(matches!(tee.calls[0], TeeCall::ExtendRtmr { .. }));
    }

    #[test]
    fn probe_without_tdx_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let paths = TdxPaths {
            tsm_measurements: dir.path().join("measurements"),
            tdx_guest: dir.path().join("tdx_guest"),
            tsm_report_root: dir.path().join("report"),
            acpi_tables: dir.path().join("tables"),
            insecure_simulated_signer: dir.path().join("signer"),
        };
        assert!(matches!(
            TdxTee::probe(&paths),
            Err(MeasureStageError::ProbeTdx { .. })
        ));
    }

    #[test]
    fn select_tee_without_tdx() {
        let dir = tempfile::tempdir().unwrap();
        let paths = TdxPaths {
            tsm_measurements: dir.path().join("measurements"),
            tdx_guest: dir.path().join("tdx_guest"),
            tsm_report_root: dir.path().join("report"),
            acpi_tables: dir.path().join("tables"),
            insecure_simulated_signer: dir.path().join("signer"),
        };
        let selected = select_tee(&paths);
        #[cfg(feature = "insecure-simulated-tee")]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let tee = selected.unwrap();
            assert_eq!(tee.pre_extended_events()[0].name, "insecure-simulated-tee");
            // The signer is handed over privately; the guest API's TEE signs with the same
            // chain (PEM chain inside its quotes).
            let meta = fs::metadata(&paths.insecure_simulated_signer).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            let (_, root) = select_tee_with_root(&paths).unwrap();
            let root = root.unwrap();
            let mut api = select_tee_for_guest_api(&paths).unwrap();
            let quote = api.quote(&[1; 64]).unwrap();
            let chain = String::from_utf8_lossy(&quote);
            let body = root.lines().nth(1).unwrap();
            assert!(
                chain.contains(body),
                "guest API quote not chained to PID 1's root"
            );
        }
        #[cfg(not(feature = "insecure-simulated-tee"))]
        {
            assert!(matches!(selected, Err(MeasureStageError::ProbeTdx { .. })));
            assert!(!paths.insecure_simulated_signer.exists());
            assert!(select_tee_for_guest_api(&paths).is_err());
        }
    }

    #[test]
    fn tsm_backend_detects_an_ignored_extend() {
        // A tsm-mr file that just stores what is written (no extend semantics): the read-back
        // check must refuse it.
        let dir = tempfile::tempdir().unwrap();
        let measurements = dir.path().join("measurements");
        fs::create_dir(&measurements).unwrap();
        fs::write(measurements.join("rtmr3:sha384"), [0u8; 48]).unwrap();
        let paths = TdxPaths {
            tsm_measurements: measurements,
            tdx_guest: dir.path().join("tdx_guest"),
            tsm_report_root: dir.path().join("report"),
            acpi_tables: dir.path().join("tables"),
            insecure_simulated_signer: dir.path().join("signer"),
        };
        let mut tee = TdxTee::probe(&paths).unwrap();
        let err = tee
            .extend_rtmr(RtmrIndex::R3, &Sha384Digest([1; 48]))
            .unwrap_err();
        assert!(matches!(err, TeeError::ExtendNotApplied { .. }), "{err:?}");
        assert!(matches!(
            tee.report(&[0; 64]),
            Err(TeeError::GetReport { .. })
        ));
    }

    #[test]
    fn random_seed_reads_20_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("urandom");
        fs::write(&p, [9u8; 32]).unwrap();
        assert_eq!(random_seed(&p).unwrap(), [9u8; 20]);
        fs::write(&p, [9u8; 5]).unwrap();
        assert!(matches!(
            random_seed(&p),
            Err(MeasureStageError::ReadRandomSeed { .. })
        ));
    }
}
