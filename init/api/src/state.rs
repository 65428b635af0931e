//! What the API process knows: the TEE, the RTMR3 runtime event log it took over after
//! `system-ready`, the firmware boot events, and the workload's descriptive files.
//!
//! The init writes the log until `system-ready`; then the API process owns it (see the
//! README). [`ApiState::resume`] rebuilds a [`RuntimeEventLog`] from the log text by feeding
//! every logged event back through it (so its rules — app events only after `system-ready`,
//! never a reserved name — hold exactly as in the init) while swallowing the extends the
//! registers already hold and the appends the file already has. It then checks RTMR3 in a fresh
//! TDREPORT against the replay of the log.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use init_core::app_compose::{AppCompose, SysConfig};
use init_core::tee::events::{EventLogError, EventLogSink, RuntimeEventLog, names};
use init_core::tee::{
    BoxError, EventLogVersion, REPORT_DATA_LEN, Rtmr, RtmrIndex, RuntimeEvent, Sha384Digest, Tee,
    TeeError,
};
use measure::event_log::EventLog;
use measure::runtime_event::{RUNTIME_EVENT_TYPE, decode_log, replay_rtmr3};
use measure::tdreport::{TdReport, TdReportError};
use serde::Serialize;

/// Errors of building and using the API state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading the runtime event log failed.
    #[error("read runtime event log {path}")]
    ReadEventLog {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Opening the runtime event log for appending failed.
    #[error("open runtime event log {path} for appending")]
    OpenEventLog {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Appending a line to the runtime event log failed.
    #[error("append to runtime event log {path}")]
    AppendEventLog {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The runtime event log does not decode.
    #[error("decode runtime event log")]
    DecodeEventLog {
        #[source]
        source: measure::runtime_event::RuntimeEventError,
    },
    /// The log has no `system-ready` event yet: the init still owns it.
    #[error("runtime event log has no system-ready event; the init still owns it")]
    LogNotSystemReady,
    /// A fresh simulated TEE extended events the log does not start with.
    #[error("runtime event log does not start with the TEE's own event {name}")]
    LogLacksPreExtendedEvent { name: String },
    /// Feeding a logged event back through the event-log rules failed.
    #[error("replay logged event {name}")]
    ReplayEvent {
        name: String,
        #[source]
        source: EventLogError,
    },
    /// RTMR3 in the TDREPORT is not the replay of the log.
    #[error("RTMR3 is {actual} but the runtime event log replays to {expected}")]
    Rtmr3Mismatch {
        expected: Sha384Digest,
        actual: Sha384Digest,
    },
    /// Reading the firmware boot event log failed.
    #[error("read boot event log")]
    ReadBootEventLog {
        #[source]
        source: TeeError,
    },
    /// The firmware boot event log does not parse.
    #[error("parse boot event log")]
    ParseBootEventLog {
        #[source]
        source: measure::event_log::EventLogError,
    },
    /// Getting a TDREPORT failed.
    #[error("get TDREPORT")]
    GetReport {
        #[source]
        source: TeeError,
    },
    /// The TDREPORT does not parse.
    #[error("parse TDREPORT")]
    ParseReport {
        #[source]
        source: TdReportError,
    },
    /// Getting a quote failed.
    #[error("get quote")]
    GetQuote {
        #[source]
        source: TeeError,
    },
    /// Reading a workload file failed.
    #[error("read {path}")]
    ReadWorkloadFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `Attest` on a log with V2 events: dstack's MessagePack attestation is not implemented.
    #[error(
        "Attest for an event log with V2 events (dstack's MessagePack attestation) is not implemented"
    )]
    AttestV2EventLog,
    /// Reading the GPU attestation output failed (other than it being absent).
    #[error("read GPU attestation output {path}")]
    ReadGpuAttestation {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// app-compose.json or .sys-config.json does not parse.
    #[error("parse {path}")]
    ParseWorkloadFile {
        path: PathBuf,
        #[source]
        source: init_core::app_compose::AppComposeError,
    },
}

/// How the TEE's registers relate to the log when the API process starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeMode {
    /// The registers already hold every logged event (real TDX: RTMRs live in the TDX module,
    /// so a new process sees the init's extends).
    RegistersHoldLog,
    /// **INSECURE**, for the simulated TEE only: a fresh simulated TEE created in this
    /// process holds only its own pre-extended marker, so every later logged event is extended
    /// again to rebuild the init's values. On real hardware this double-extends RTMR3, and the
    /// RTMR3 check of [`ApiState::resume`] refuses the result.
    InsecureRebuildSimulator,
}

/// The workload's descriptive data for `Info` and `GetQuote`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadInfo {
    /// `name` from app-compose.json.
    pub app_name: String,
    /// app-compose.json exactly as given.
    pub app_compose: String,
    /// `vm_config` from .sys-config.json exactly as given (a JSON string).
    pub vm_config: String,
    /// .sys-config.json exactly as given (`Attest`'s `config`, as dstack's guest agent fills
    /// it); empty without one.
    pub sys_config: String,
    /// DMI `sys_vendor`.
    pub cloud_vendor: String,
    /// DMI `product_name`.
    pub cloud_product: String,
    /// What app-compose lets the external Worker API show.
    pub exposure: crate::worker::Exposure,
}

impl WorkloadInfo {
    /// Loads app-compose.json and (if given) .sys-config.json, plus the DMI vendor and
    /// product names from `dmi_dir` (e.g. `/sys/class/dmi/id`) when they exist.
    pub fn load(
        app_compose: &Path,
        sys_config: Option<&Path>,
        dmi_dir: Option<&Path>,
    ) -> Result<Self, StateError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| StateError::ReadWorkloadFile {
                path: path.to_owned(),
                source,
            })
        };
        let compose_bytes = read(app_compose)?;
        let compose =
            AppCompose::parse(&compose_bytes).map_err(|source| StateError::ParseWorkloadFile {
                path: app_compose.to_owned(),
                source,
            })?;
        let (vm_config, sys_config) = match sys_config {
            Some(path) => {
                let bytes = read(path)?;
                let vm_config = SysConfig::parse(&bytes)
                    .map_err(|source| StateError::ParseWorkloadFile {
                        path: path.to_owned(),
                        source,
                    })?
                    .vm_config_raw;
                (vm_config, String::from_utf8_lossy(&bytes).into_owned())
            }
            None => (String::new(), String::new()),
        };
        let dmi = |name: &str| {
            dmi_dir
                .and_then(|dir| std::fs::read_to_string(dir.join(name)).ok())
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        Ok(Self {
            app_name: compose.name.clone(),
            app_compose: String::from_utf8_lossy(&compose_bytes).into_owned(),
            vm_config,
            sys_config,
            cloud_vendor: dmi("sys_vendor"),
            cloud_product: dmi("product_name"),
            exposure: crate::worker::Exposure {
                logs: compose.public_logs,
                sysinfo: compose.public_sysinfo,
                tcbinfo: compose.public_tcbinfo,
            },
        })
    }
}

/// Appends runtime event lines to the log file (opened with `O_APPEND`).
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    file: File,
}

impl FileSink {
    /// Opens `path` for appending; it must exist (the init created it).
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|source| StateError::OpenEventLog {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }
}

impl EventLogSink for FileSink {
    fn append_line(&mut self, line: &str) -> Result<(), BoxError> {
        self.file.write_all(line.as_bytes()).map_err(|source| {
            Box::new(StateError::AppendEventLog {
                path: self.path.clone(),
                source,
            }) as BoxError
        })
    }
}

/// An [`EventLogSink`] the caller chose, boxed.
pub type BoxSink = Box<dyn EventLogSink + Send>;

/// The TEE seen through the event log: swallows the first `skip` extends (those the registers
/// already hold) and reports no pre-extended events (the log already has them).
#[derive(Debug)]
struct ResumedTee<T> {
    tee: T,
    skip: usize,
}

impl<T: Tee> Rtmr for ResumedTee<T> {
    fn extend_rtmr(&mut self, index: RtmrIndex, digest: &Sha384Digest) -> Result<(), TeeError> {
        if self.skip > 0 {
            self.skip -= 1;
            return Ok(());
        }
        self.tee.extend_rtmr(index, digest)
    }
}

/// The sink seen through the event log: swallows the first `skip` appends (lines the file
/// already has).
struct ResumedSink {
    sink: BoxSink,
    skip: usize,
}

impl std::fmt::Debug for ResumedSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumedSink")
            .field("skip", &self.skip)
            .finish_non_exhaustive()
    }
}

impl EventLogSink for ResumedSink {
    fn append_line(&mut self, line: &str) -> Result<(), BoxError> {
        if self.skip > 0 {
            self.skip -= 1;
            return Ok(());
        }
        self.sink.append_line(line)
    }
}

/// One entry of the exposed event log (`TdxEvent` in dstack), as `GetQuote.event_log` and
/// `Info.tcb_info.event_log` carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExposedEvent {
    /// RTMR index (0..=3).
    pub imr: u32,
    /// Event type.
    pub event_type: u32,
    /// SHA-384 digest, hex (runtime events carry it too, so the SDKs' `replay_rtmrs` works;
    /// verifiers recompute it).
    pub digest: String,
    /// Event name (runtime events and the RTMR0 ACPI events; empty for other firmware events).
    pub event: String,
    /// Payload, hex (runtime events, and `ACPI DATA` for the ACPI events; other firmware
    /// payloads are left out as dstack does).
    pub event_payload: String,
    /// `2` for V2 runtime events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

impl ExposedEvent {
    fn runtime(event: &RuntimeEvent) -> Self {
        Self {
            imr: u32::from(RtmrIndex::R3.value()),
            event_type: RUNTIME_EVENT_TYPE,
            digest: event.digest().to_string(),
            event: event.name.clone(),
            event_payload: hex::encode(&event.payload),
            version: (event.version == EventLogVersion::V2).then_some(2),
        }
    }
}

/// Firmware boot events in the exposed shape, as dstack exposes them
/// (`measure::dstack_event_log::exposed_boot_events`): every extended record with a SHA-384
/// digest (EV_NO_ACTION records are skipped), payloads left out except the three RTMR0 ACPI
/// events, named `acpi-loader`, `acpi-rsdp`, `acpi-tables` with payload `ACPI DATA`. An empty
/// log has no events.
pub fn boot_events(log: &[u8]) -> Result<Vec<ExposedEvent>, StateError> {
    if log.is_empty() {
        return Ok(Vec::new());
    }
    let parsed = EventLog::parse(log).map_err(|source| StateError::ParseBootEventLog { source })?;
    Ok(measure::dstack_event_log::exposed_boot_events(&parsed)
        .into_iter()
        .map(|e| ExposedEvent {
            imr: u32::from(e.rtmr.value()),
            event_type: e.event_type,
            digest: e.digest.map(|d| d.to_string()).unwrap_or_default(),
            event: e.event,
            event_payload: hex::encode(&e.event_payload),
            version: None,
        })
        .collect())
}

/// A quote with the event log that replays to its RTMR3, taken under one lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteWithLog {
    /// The quote bytes.
    pub quote: Vec<u8>,
    /// Boot events, then runtime events.
    pub event_log: Vec<ExposedEvent>,
}

/// A TDREPORT with the runtime events at the time it was taken.
#[derive(Debug, Clone)]
pub struct ReportWithLog {
    /// The parsed report.
    pub report: TdReport,
    /// Every runtime event so far.
    pub runtime_events: Vec<RuntimeEvent>,
    /// Boot events, then runtime events.
    pub event_log: Vec<ExposedEvent>,
}

struct Live<T> {
    log: RuntimeEventLog<ResumedTee<T>, ResumedSink>,
}

/// Shared state of the API server: one lock around the TEE and the event log, so a quote's
/// RTMR3 and the event log returned with it always agree.
pub struct ApiState<T> {
    live: Mutex<Live<T>>,
    boot_events: Vec<ExposedEvent>,
    app_event_version: EventLogVersion,
    workload: WorkloadInfo,
    /// App keys from the key provider (`None` until the init passes `.appkeys.json`).
    keys: Option<cvm_keys::kms::GuestKeys>,
    /// Where `GpuInfo` reads the boot's GPU attestation output (`None`: no GPU attestation).
    gpu_attestation: Option<PathBuf>,
}

impl<T> std::fmt::Debug for ApiState<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("boot_events", &self.boot_events.len())
            .field("app_event_version", &self.app_event_version)
            .field("workload", &self.workload)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl<T: Tee> ApiState<T> {
    /// Takes over the runtime event log at `log_path` (read it, then append to it).
    pub fn open(
        tee: T,
        mode: ResumeMode,
        log_path: &Path,
        workload: WorkloadInfo,
    ) -> Result<Self, StateError> {
        let text =
            std::fs::read_to_string(log_path).map_err(|source| StateError::ReadEventLog {
                path: log_path.to_owned(),
                source,
            })?;
        let sink = FileSink::open(log_path)?;
        Self::resume(tee, mode, &text, Box::new(sink), workload)
    }

    /// Takes over the runtime event log whose current text is `log_text`; new lines go to
    /// `sink`. Fails if the log has no `system-ready`, does not replay through the event-log
    /// rules, or does not replay to the TEE's RTMR3.
    pub fn resume(
        mut tee: T,
        mode: ResumeMode,
        log_text: &str,
        sink: BoxSink,
        workload: WorkloadInfo,
    ) -> Result<Self, StateError> {
        let events: Vec<RuntimeEvent> = decode_log(log_text)
            .map_err(|source| StateError::DecodeEventLog { source })?
            .into_iter()
            .map(|line| line.event)
            .collect();
        let ready_at = events
            .iter()
            .position(|e| e.name == names::SYSTEM_READY)
            .ok_or(StateError::LogNotSystemReady)?;
        let app_event_version = events[ready_at].version;
        let skip_extends = match mode {
            ResumeMode::RegistersHoldLog => events.len(),
            ResumeMode::InsecureRebuildSimulator => {
                let own = tee.pre_extended_events();
                for (i, event) in own.iter().enumerate() {
                    if events.get(i) != Some(event) {
                        return Err(StateError::LogLacksPreExtendedEvent {
                            name: event.name.clone(),
                        });
                    }
                }
                own.len()
            }
        };
        let boot_log = tee
            .boot_event_log()
            .map_err(|source| StateError::ReadBootEventLog { source })?;
        let boot_events = boot_events(&boot_log)?;

        let rtmr = ResumedTee {
            tee,
            skip: skip_extends,
        };
        let sink = ResumedSink {
            sink,
            skip: events.len(),
        };
        let replay_error = |name: &str| {
            let name = name.to_owned();
            move |source| StateError::ReplayEvent { name, source }
        };
        let mut log = RuntimeEventLog::new(rtmr, sink).map_err(replay_error("(pre-extended)"))?;
        for (i, event) in events.iter().enumerate() {
            let result = if i <= ready_at {
                log.emit_system_event(event.clone())
            } else {
                log.emit_app_event(event.clone())
            };
            result.map_err(replay_error(&event.name))?;
        }
        let state = Self {
            live: Mutex::new(Live { log }),
            boot_events,
            app_event_version,
            workload,
            keys: None,
            gpu_attestation: None,
        };
        let report = state.report()?;
        let actual = *report.report.td_info.rtmrs.register(RtmrIndex::R3);
        let expected = replay_rtmr3(&events);
        if actual != expected {
            return Err(StateError::Rtmr3Mismatch { expected, actual });
        }
        Ok(state)
    }

    fn lock(&self) -> MutexGuard<'_, Live<T>> {
        // A panic aborts the process (panic = "abort"), so a poisoned lock cannot be observed
        // with inconsistent data; take it either way.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn exposed_log(&self, runtime: &[RuntimeEvent]) -> Vec<ExposedEvent> {
        self.boot_events
            .iter()
            .cloned()
            .chain(runtime.iter().map(ExposedEvent::runtime))
            .collect()
    }

    /// A quote for `report_data` and the event log that goes with it.
    pub fn quote(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<QuoteWithLog, StateError> {
        let mut live = self.lock();
        let quote = live
            .log
            .rtmr_mut()
            .tee
            .quote(report_data)
            .map_err(|source| StateError::GetQuote { source })?;
        Ok(QuoteWithLog {
            quote,
            event_log: self.exposed_log(live.log.events()),
        })
    }

    /// dstack's `VersionedAttestation` V0 for `report_data` (what `Attest` returns): a quote and
    /// the event log that replays to it, taken under the lock — the firmware events (digests),
    /// the RTMR3 events (digest, name, payload), the runtime events again as (name, payload),
    /// the report data, and .sys-config.json as `config`.
    pub fn attestation(
        &self,
        report_data: &[u8; REPORT_DATA_LEN],
    ) -> Result<cvm_keys::sign_cert::TdxAttestation, StateError> {
        let mut live = self.lock();
        // dstack encodes a log with V2 events as the MessagePack V1 attestation; V0 carries no
        // event version, so a verifier would replay V2 events with V1 digests and fail.
        if live
            .log
            .events()
            .iter()
            .any(|e| e.version == EventLogVersion::V2)
        {
            return Err(StateError::AttestV2EventLog);
        }
        let quote = live
            .log
            .rtmr_mut()
            .tee
            .quote(report_data)
            .map_err(|source| StateError::GetQuote { source })?;
        let runtime = live.log.events();
        Ok(cvm_keys::sign_cert::TdxAttestation {
            quote,
            event_log: self
                .boot_log()
                .into_iter()
                .chain(runtime.iter().map(cvm_keys::sign_cert::TdxEvent::runtime))
                .collect(),
            runtime_events: runtime
                .iter()
                .map(|e| (e.name.clone(), e.payload.clone()))
                .collect(),
            report_data: *report_data,
            config: self.workload.sys_config.clone(),
        })
    }

    /// The firmware boot events in the attestation form.
    fn boot_log(&self) -> Vec<cvm_keys::sign_cert::TdxEvent> {
        self.boot_events
            .iter()
            .map(|e| cvm_keys::sign_cert::TdxEvent {
                imr: e.imr,
                event_type: e.event_type,
                digest: hex::decode(&e.digest).unwrap_or_default(),
                event: e.event.clone(),
                event_payload: hex::decode(&e.event_payload).unwrap_or_default(),
            })
            .collect()
    }

    /// A TDREPORT (zero report data) and the runtime events that go with it.
    pub fn report(&self) -> Result<ReportWithLog, StateError> {
        let mut live = self.lock();
        let bytes = live
            .log
            .rtmr_mut()
            .tee
            .report(&[0; REPORT_DATA_LEN])
            .map_err(|source| StateError::GetReport { source })?;
        let report =
            TdReport::parse(&bytes).map_err(|source| StateError::ParseReport { source })?;
        let runtime_events = live.log.events().to_vec();
        Ok(ReportWithLog {
            report,
            event_log: self.exposed_log(&runtime_events),
            runtime_events,
        })
    }

    /// Extends RTMR3 with a workload event and logs it (dstack v0.5.x `EmitEvent` rules, as
    /// enforced by [`RuntimeEventLog::emit_app_event`]).
    pub fn emit_event(&self, name: &str, payload: &[u8]) -> Result<Sha384Digest, EventLogError> {
        let event = RuntimeEvent::new(name, payload).with_version(self.app_event_version);
        self.lock().log.emit_app_event(event)
    }

    /// The TEE half of a KMS `SignCert` request, under the lock: `key` (a fresh one when
    /// `None`), its quote and
    /// the RTMR3 log that goes with it, and the RA-TLS client certificate for the connection
    /// (`cvm_keys::sign_cert::prepare`). The network half runs without the lock.
    pub fn prepare_sign_cert(
        &self,
        kms: &cvm_keys::sign_cert::KmsAccess,
        key: Option<cvm_keys::app_sign::CertKeyPair>,
        config: cvm_keys::sign_cert::CertConfig,
        now_unix: u64,
    ) -> Result<cvm_keys::sign_cert::PreparedRequest, cvm_keys::sign_cert::SignCertError> {
        let boot_log = self.boot_log();
        let mut live = self.lock();
        let events = live.log.events().to_vec();
        let tee = &mut live.log.rtmr_mut().tee;
        match key {
            Some(key) => cvm_keys::sign_cert::prepare_with_key(
                key, tee, &boot_log, &events, kms, config, now_unix,
            ),
            None => cvm_keys::sign_cert::prepare_with_boot_log(
                tee, &boot_log, &events, kms, config, now_unix,
            ),
        }
    }

    /// The app keys, if the key provider gave any.
    pub fn app_keys(&self) -> Option<&cvm_keys::kms::GuestKeys> {
        self.keys.as_ref()
    }

    /// Gives the API the app keys (enables `GetKey`).
    pub fn with_app_keys(mut self, keys: cvm_keys::kms::GuestKeys) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Makes `GpuInfo` answer the GPU attestation output at `path` (read on every call, as
    /// dstack's guest agent does; a missing file reads as empty).
    pub fn with_gpu_attestation(mut self, path: PathBuf) -> Self {
        self.gpu_attestation = Some(path);
        self
    }

    /// `GpuInfo`'s text: the GPU attestation output verbatim, or empty when there is none.
    pub fn gpu_attestation(&self) -> Result<String, StateError> {
        let Some(path) = &self.gpu_attestation else {
            return Ok(String::new());
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(source) => Err(StateError::ReadGpuAttestation {
                path: path.clone(),
                source,
            }),
        }
    }

    /// The workload's descriptive data.
    pub fn workload(&self) -> &WorkloadInfo {
        &self.workload
    }

    #[cfg(test)]
    pub(crate) fn workload_mut(&mut self) -> &mut WorkloadInfo {
        &mut self.workload
    }
}
