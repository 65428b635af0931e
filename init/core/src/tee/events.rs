//! The RTMR3 runtime event log and the dstack event sequence (`shared/specs/dstack-guest.md` §3).
//!
//! **Target: dstack v0.5.11**, the latest release ("deployed dstack", OS images 0.5.4–0.5.11),
//! as the spec advises for compatibility with deployed verifiers and KMS. Its sequence is
//! `system-preparing`, `app-id`, `compose-hash`, `instance-id`, `boot-mr-done`, then after the
//! key request [`os-image-hash` (KMS provider only)], `key-provider`, `storage-fs`,
//! `system-ready`. Not emitted: HEAD-only `init-script-hash` / `gpu-policy-hash` /
//! `gpu-attestation` (GPU events arrive with the GPU issue) and `mr-kms` (emitted by v0.5.x only
//! from inside the KMS TLS verifier, dropped at HEAD). The real TDX-lite fixture has exactly
//! this sequence and replays to its quote's RTMR3 (test below).
//!
//! Log format: dstack v0.5.6+ (`/run/log/dstack/runtime_events.log`, one JSON object per line,
//! `{"event":name,"payload":base64}` plus `"version":2` for V2 events). Ordering rule: a line is
//! appended **only after** its extend succeeded; if the append then fails, the log no longer
//! replays to RTMR3, so the writer refuses every later event.

use measure::runtime_event::{
    EventLogVersion, LogLineFormat, RUNTIME_EVENT_RTMR, RuntimeEvent, RuntimeEventError,
};
use serde::Serialize;

use super::{BoxError, Rtmr, Sha384Digest, TeeError};
use crate::app_compose::StorageFs;
use crate::identity::AppIdentity;

/// Where dstack v0.5.6+ keeps the runtime event log.
pub const RUNTIME_EVENT_LOG_PATH: &str = "/run/log/dstack/runtime_events.log";

/// Event names.
pub mod names {
    /// First event: the guest starts preparing.
    pub const SYSTEM_PREPARING: &str = "system-preparing";
    /// 20-byte app-id.
    pub const APP_ID: &str = "app-id";
    /// 32-byte compose-hash.
    pub const COMPOSE_HASH: &str = "compose-hash";
    /// 20-byte instance-id (empty payload with `no_instance_id`).
    pub const INSTANCE_ID: &str = "instance-id";
    /// End of the boot-time measurements the KMS sees.
    pub const BOOT_MR_DONE: &str = "boot-mr-done";
    /// 32-byte OS image hash from the KMS reply.
    pub const OS_IMAGE_HASH: &str = "os-image-hash";
    /// Key provider JSON.
    pub const KEY_PROVIDER: &str = "key-provider";
    /// `zfs` or `ext4`.
    pub const STORAGE_FS: &str = "storage-fs";
    /// Boundary: later events are app-controlled.
    pub const SYSTEM_READY: &str = "system-ready";
    /// v0.5.x KMS `mr_aggregated` (not emitted by this init).
    pub const MR_KMS: &str = "mr-kms";
    /// HEAD only (not emitted yet).
    pub const INIT_SCRIPT_HASH: &str = "init-script-hash";
    /// HEAD only (GPU issue).
    pub const GPU_POLICY_HASH: &str = "gpu-policy-hash";
    /// HEAD only (GPU issue).
    pub const GPU_ATTESTATION: &str = "gpu-attestation";
    /// The simulated TEE's marker.
    pub const INSECURE_SIMULATED_TEE: &str = "insecure-simulated-tee";
    /// First event of every test build (`insecure-*` features), whatever the TEE: a real TDX
    /// boot of a test image is marked too, so no verifier accepts it.
    pub const INSECURE_TEST_BUILD: &str = "insecure-test-build";
    /// Before any key is requested: SHA-256 of the host share's `.encrypted-env` (32 bytes),
    /// or ASCII `absent`. The env's values reach the compose file and the containers, so what
    /// the host supplied is measured (cvm-init; dstack verifiers replay it like any other).
    pub const ENCRYPTED_ENV: &str = "encrypted-env";
    /// This boot formatted the data disk: payload `blank` (a new disk) or `again` (a disk
    /// initialised before, formatted again under app-compose `allow_disk_reformat`). Not a
    /// dstack event; dstack verifiers replay it like any other.
    pub const DISK_FORMATTED: &str = "disk-formatted";
    /// Warning: the KMS key provider is not pinned by `key_provider_id` (cvm-init only).
    pub const KEY_PROVIDER_UNPINNED: &str = measure::dstack_identity::KEY_PROVIDER_UNPINNED;
}

/// The [`names::ENCRYPTED_ENV`] event for the host share's `.encrypted-env` bytes (`None`:
/// the file is absent).
pub fn encrypted_env_event(env: Option<&[u8]>, version: EventLogVersion) -> RuntimeEvent {
    use sha2::Digest as _;
    let payload = env.map_or_else(
        || b"absent".to_vec(),
        |bytes| sha2::Sha256::digest(bytes).to_vec(),
    );
    RuntimeEvent::new(names::ENCRYPTED_ENV, payload).with_version(version)
}

/// Payload of the [`names::KEY_PROVIDER_UNPINNED`] event (ASCII).
pub const KEY_PROVIDER_UNPINNED_PAYLOAD: &str =
    "app-compose key_provider_id is empty: the KMS root CA is not pinned, the host chose the KMS";

/// The [`names::KEY_PROVIDER_UNPINNED`] warning event, extended before the KMS's
/// `os-image-hash` and `key-provider` when app-compose selects an unpinned KMS.
pub fn key_provider_unpinned_event(version: EventLogVersion) -> RuntimeEvent {
    RuntimeEvent::new(
        names::KEY_PROVIDER_UNPINNED,
        KEY_PROVIDER_UNPINNED_PAYLOAD.as_bytes().to_vec(),
    )
    .with_version(version)
}

/// Names workloads may never emit: every name dstack or this init uses for system events.
pub const RESERVED_EVENT_NAMES: [&str; 18] = [
    names::SYSTEM_PREPARING,
    names::APP_ID,
    names::COMPOSE_HASH,
    names::INSTANCE_ID,
    names::BOOT_MR_DONE,
    names::OS_IMAGE_HASH,
    names::KEY_PROVIDER,
    names::STORAGE_FS,
    names::SYSTEM_READY,
    names::MR_KMS,
    names::INIT_SCRIPT_HASH,
    names::GPU_POLICY_HASH,
    names::GPU_ATTESTATION,
    names::INSECURE_SIMULATED_TEE,
    names::INSECURE_TEST_BUILD,
    names::DISK_FORMATTED,
    names::KEY_PROVIDER_UNPINNED,
    names::ENCRYPTED_ENV,
];

/// The `key-provider` event payload: compact JSON `{"name":…,"id":…}` (field order as dstack).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyProviderInfo {
    /// `kms`, `local-sgx`, `tpm` or `none`.
    pub name: String,
    /// Hex of the KMS root-CA SubjectPublicKeyInfo DER / MRENCLAVE; empty for tpm and none.
    pub id: String,
}

impl KeyProviderInfo {
    /// KMS provider, pinned to the root CA's SubjectPublicKeyInfo (DER).
    pub fn kms(root_ca_spki_der: &[u8]) -> Self {
        Self {
            name: "kms".into(),
            id: hex::encode(root_ca_spki_der),
        }
    }

    /// SGX local key provider with its MRENCLAVE.
    pub fn local_sgx(mrenclave: &[u8]) -> Self {
        Self {
            name: "local-sgx".into(),
            id: hex::encode(mrenclave),
        }
    }

    /// TPM-sealed keys.
    pub fn tpm() -> Self {
        Self {
            name: "tpm".into(),
            id: String::new(),
        }
    }

    /// No key provider.
    pub fn none() -> Self {
        Self {
            name: "none".into(),
            id: String::new(),
        }
    }

    /// The event payload bytes.
    pub fn payload(&self) -> Vec<u8> {
        // Serialising two strings cannot fail; fall back to an equivalent manual encoding.
        serde_json::to_vec(self).unwrap_or_else(|_| {
            format!(r#"{{"name":"{}","id":"{}"}}"#, self.name, self.id).into_bytes()
        })
    }
}

/// Phase 1 of the plan, before the key request: `system-preparing`, `app-id`, `compose-hash`,
/// `instance-id`, `boot-mr-done`. The KMS sees RTMR3 as it stands after these.
pub fn app_info_events(identity: &AppIdentity, version: EventLogVersion) -> Vec<RuntimeEvent> {
    let instance_id = identity
        .instance_id
        .map(|id| id.0.to_vec())
        .unwrap_or_default();
    [
        RuntimeEvent::new(names::SYSTEM_PREPARING, Vec::new()),
        RuntimeEvent::new(names::APP_ID, identity.app_id.0.to_vec()),
        RuntimeEvent::new(names::COMPOSE_HASH, identity.compose_hash.0.to_vec()),
        RuntimeEvent::new(names::INSTANCE_ID, instance_id),
        RuntimeEvent::new(names::BOOT_MR_DONE, Vec::new()),
    ]
    .into_iter()
    .map(|e| e.with_version(version))
    .collect()
}

/// Phase 2 of the plan, after the keys: [`os-image-hash` when the KMS returned one],
/// `key-provider`, `storage-fs`, `system-ready`.
pub fn system_ready_events(
    os_image_hash: Option<&[u8; 32]>,
    key_provider: &KeyProviderInfo,
    storage_fs: StorageFs,
    version: EventLogVersion,
) -> Vec<RuntimeEvent> {
    let mut events = Vec::with_capacity(4);
    if let Some(hash) = os_image_hash {
        events.push(RuntimeEvent::new(names::OS_IMAGE_HASH, hash.to_vec()));
    }
    events.push(RuntimeEvent::new(
        names::KEY_PROVIDER,
        key_provider.payload(),
    ));
    events.push(RuntimeEvent::new(
        names::STORAGE_FS,
        storage_fs.as_str().as_bytes().to_vec(),
    ));
    events.push(RuntimeEvent::new(names::SYSTEM_READY, Vec::new()));
    events
        .into_iter()
        .map(|e| e.with_version(version))
        .collect()
}

/// Appends lines to the runtime event log file. `pid1` implements it over a file opened with
/// `O_APPEND` at [`RUNTIME_EVENT_LOG_PATH`] (mode 0644 for workloads to read; only PID 1 writes).
pub trait EventLogSink {
    /// Appends one complete line (it ends with `\n`) in a single write.
    fn append_line(&mut self, line: &str) -> Result<(), BoxError>;
}

impl<T: EventLogSink + ?Sized> EventLogSink for &mut T {
    fn append_line(&mut self, line: &str) -> Result<(), BoxError> {
        (**self).append_line(line)
    }
}

/// Errors of the runtime event log.
#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    /// Extending RTMR3 for the event failed; nothing was logged.
    #[error("extend RTMR3 for event {name}")]
    ExtendEvent {
        name: String,
        #[source]
        source: Box<TeeError>,
    },
    /// The extend succeeded but appending the line failed; the log is now unusable.
    #[error("append event {name} to the runtime event log")]
    AppendEvent {
        name: String,
        #[source]
        source: BoxError,
    },
    /// The line could not be encoded.
    #[error("encode event {name}")]
    EncodeEvent {
        name: String,
        #[source]
        source: RuntimeEventError,
    },
    /// An earlier append failed after its extend, so the log no longer matches RTMR3.
    #[error("runtime event log is out of step with RTMR3; refusing event {name}")]
    LogOutOfStep { name: String },
    /// A system event after `system-ready`.
    #[error("system event {name} after system-ready")]
    SystemEventAfterSystemReady { name: String },
    /// An app event before `system-ready`.
    #[error("app event {name} before system-ready")]
    AppEventBeforeSystemReady { name: String },
    /// An app event with a reserved name.
    #[error("event name {name} is reserved for the system")]
    ReservedEventName { name: String },
    /// The app's event budget ([`APP_EVENT_MAX_COUNT`] events, [`APP_EVENT_MAX_BYTES`] bytes
    /// of names and payloads per boot) would be exceeded; nothing was extended.
    #[error(
        "event {name}: the app event budget of this boot is spent ({count} events, {bytes} \
         bytes; at most {APP_EVENT_MAX_COUNT} events and {APP_EVENT_MAX_BYTES} bytes)"
    )]
    AppEventBudget {
        name: String,
        count: usize,
        bytes: usize,
    },
}

/// At most this many app (`EmitEvent`) events per boot…
pub const APP_EVENT_MAX_COUNT: usize = 4096;
/// …with at most this many bytes of names and payloads together. The log line of an event is
/// at most about 2× its bytes (hex payload) plus 300, so the app's share of the event log's
/// private tmpfs ([`RUNTIME_EVENT_LOG_TMPFS_BYTES`]) is bounded well below its size: the
/// system's own appends always find room.
pub const APP_EVENT_MAX_BYTES: usize = 2 << 20;
/// Size of the private tmpfs PID 1 mounts for the event log's directory, so nothing else in
/// `/run` (container roots without a data disk, for one) can fill the log's filesystem.
pub const RUNTIME_EVENT_LOG_TMPFS_BYTES: usize = 16 << 20;

/// Writes RTMR3 runtime events: extend first, then append the log line.
#[derive(Debug)]
pub struct RuntimeEventLog<R, S> {
    rtmr: R,
    sink: S,
    events: Vec<RuntimeEvent>,
    system_ready: bool,
    out_of_step: bool,
}

impl<R: Rtmr, S: EventLogSink> RuntimeEventLog<R, S> {
    /// Starts the log. Events the backend already extended on its own
    /// ([`Rtmr::pre_extended_events`], the simulated TEE's marker) are logged first.
    pub fn new(rtmr: R, sink: S) -> Result<Self, EventLogError> {
        let mut log = Self {
            rtmr,
            sink,
            events: Vec::new(),
            system_ready: false,
            out_of_step: false,
        };
        for event in log.rtmr.pre_extended_events() {
            log.append(event)?;
        }
        Ok(log)
    }

    /// Emits a system event (any name), refused after `system-ready`. Emitting
    /// `system-ready` closes the system phase.
    pub fn emit_system_event(
        &mut self,
        event: RuntimeEvent,
    ) -> Result<Sha384Digest, EventLogError> {
        if self.system_ready {
            return Err(EventLogError::SystemEventAfterSystemReady { name: event.name });
        }
        let is_ready = event.name == names::SYSTEM_READY;
        let digest = self.extend_and_append(event)?;
        if is_ready {
            self.system_ready = true;
        }
        Ok(digest)
    }

    /// Emits every event of a plan phase in order, stopping at the first error.
    pub fn emit_plan(&mut self, events: Vec<RuntimeEvent>) -> Result<(), EventLogError> {
        for event in events {
            let name = event.name.clone();
            let digest = self.emit_system_event(event)?;
            log::info!("measure: RTMR3 event {name} digest {digest}");
        }
        Ok(())
    }

    /// Emits a workload event (guest-agent `EmitEvent`, dstack v0.5.x rules): only after
    /// `system-ready` and never with a reserved name.
    pub fn emit_app_event(&mut self, event: RuntimeEvent) -> Result<Sha384Digest, EventLogError> {
        if RESERVED_EVENT_NAMES.contains(&event.name.as_str()) {
            return Err(EventLogError::ReservedEventName { name: event.name });
        }
        if !self.system_ready {
            return Err(EventLogError::AppEventBeforeSystemReady { name: event.name });
        }
        let ready_at = self
            .events
            .iter()
            .rposition(|e| e.name == names::SYSTEM_READY)
            .map_or(0, |i| i + 1);
        let app = self.events.get(ready_at..).unwrap_or_default();
        let count = app.len();
        let bytes: usize = app.iter().map(|e| e.name.len() + e.payload.len()).sum();
        if count + 1 > APP_EVENT_MAX_COUNT
            || bytes + event.name.len() + event.payload.len() > APP_EVENT_MAX_BYTES
        {
            return Err(EventLogError::AppEventBudget {
                name: event.name,
                count,
                bytes,
            });
        }
        self.extend_and_append(event)
    }

    /// Whether `system-ready` was emitted.
    pub fn is_system_ready(&self) -> bool {
        self.system_ready
    }

    /// Every event logged so far, in order (replays to RTMR3 from zero).
    pub fn events(&self) -> &[RuntimeEvent] {
        &self.events
    }

    /// The TEE backend.
    pub fn rtmr(&self) -> &R {
        &self.rtmr
    }

    /// The TEE backend, mutably (e.g. for quotes).
    pub fn rtmr_mut(&mut self) -> &mut R {
        &mut self.rtmr
    }

    /// The log sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Closes the log: the TEE backend (for quotes; nothing may extend it without logging)
    /// and every event logged (the sink is dropped).
    pub fn into_parts(self) -> (R, Vec<RuntimeEvent>) {
        (self.rtmr, self.events)
    }

    fn extend_and_append(&mut self, event: RuntimeEvent) -> Result<Sha384Digest, EventLogError> {
        if self.out_of_step {
            return Err(EventLogError::LogOutOfStep { name: event.name });
        }
        // Encode before extending, so an unencodable event changes nothing.
        let line = encode(&event)?;
        let digest = event.digest();
        self.rtmr
            .extend_rtmr(RUNTIME_EVENT_RTMR, &digest)
            .map_err(|source| EventLogError::ExtendEvent {
                name: event.name.clone(),
                source: Box::new(source),
            })?;
        self.append_line(event, &line)?;
        Ok(digest)
    }

    fn append(&mut self, event: RuntimeEvent) -> Result<(), EventLogError> {
        let line = encode(&event)?;
        self.append_line(event, &line)
    }

    fn append_line(&mut self, event: RuntimeEvent, line: &str) -> Result<(), EventLogError> {
        if let Err(source) = self.sink.append_line(line) {
            self.out_of_step = true;
            return Err(EventLogError::AppendEvent {
                name: event.name,
                source,
            });
        }
        self.events.push(event);
        Ok(())
    }
}

fn encode(event: &RuntimeEvent) -> Result<String, EventLogError> {
    event
        .to_log_line(LogLineFormat::Current)
        .map_err(|source| EventLogError::EncodeEvent {
            name: event.name.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use measure::runtime_event::{decode_log, replay_listing, replay_rtmr3};
    use serde_json::Value;

    use super::*;
    use crate::identity::{AppId, ComposeHash, InstanceId};
    use crate::tee::testing::{FakeTee, RecordingSink, TeeCall};
    use crate::tee::{RtmrIndex, TeeError};

    const GETQUOTE: &str = include_str!("../../testdata/tdx-lite-getquote.json");
    const REPLAY: &str = include_str!("../../testdata/rtmr3-replay-tdx-lite-0.6.0.json");
    const APPINFO: &str = include_str!("../../testdata/crypto-and-appinfo-vectors.json");

    fn fixture_payload(name: &str) -> Vec<u8> {
        let v: Value = serde_json::from_str(GETQUOTE).unwrap();
        let events: Value = serde_json::from_str(v["event_log"].as_str().unwrap()).unwrap();
        let e = events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["imr"] == 3 && e["event"] == name)
            .unwrap();
        hex::decode(e["event_payload"].as_str().unwrap()).unwrap()
    }

    fn fixture_identity() -> AppIdentity {
        AppIdentity {
            compose_hash: ComposeHash(fixture_payload("compose-hash").try_into().unwrap()),
            app_id: AppId(fixture_payload("app-id").try_into().unwrap()),
            instance_id_seed: Vec::new(),
            instance_id: Some(InstanceId(
                fixture_payload("instance-id").try_into().unwrap(),
            )),
        }
    }

    /// The KMS key-provider of the fixture, rebuilt from the root-CA SPKI.
    fn fixture_key_provider() -> KeyProviderInfo {
        let v: Value = serde_json::from_str(APPINFO).unwrap();
        let payload = v["tdx_lite_fixture_app_info"]["key_provider_payload_utf8"]
            .as_str()
            .unwrap();
        let parsed: Value = serde_json::from_str(payload).unwrap();
        let spki = hex::decode(parsed["id"].as_str().unwrap()).unwrap();
        let kp = KeyProviderInfo::kms(&spki);
        assert_eq!(kp.payload(), payload.as_bytes());
        kp
    }

    fn fixture_plan() -> (Vec<RuntimeEvent>, Vec<RuntimeEvent>) {
        let os_image_hash: [u8; 32] = fixture_payload("os-image-hash").try_into().unwrap();
        (
            app_info_events(&fixture_identity(), EventLogVersion::V1),
            system_ready_events(
                Some(&os_image_hash),
                &fixture_key_provider(),
                StorageFs::Zfs,
                EventLogVersion::V1,
            ),
        )
    }

    fn hex_digest(s: &str) -> Sha384Digest {
        Sha384Digest(hex::decode(s).unwrap().try_into().unwrap())
    }

    #[test]
    fn plan_replays_tdx_lite_fixture_rtmr3() {
        let (phase1, phase2) = fixture_plan();
        let replay: Value = serde_json::from_str(REPLAY).unwrap();
        let expected = replay["rtmr3_events"].as_array().unwrap();
        let all: Vec<_> = phase1.iter().chain(&phase2).cloned().collect();
        assert_eq!(all.len(), expected.len());
        for (step, want) in replay_listing(&all).iter().zip(expected) {
            assert_eq!(step.event.name, want["event"].as_str().unwrap());
            assert_eq!(hex::encode(&step.event.payload), want["payload_hex"]);
            assert_eq!(
                step.rtmr3_after,
                hex_digest(want["rtmr3_after"].as_str().unwrap())
            );
        }
        let quote_rtmr3 = replay["quote_td_report"]["rt_mr3"].as_str().unwrap();
        assert_eq!(replay_rtmr3(&all), hex_digest(quote_rtmr3));
        // RTMR3 as the KMS sees it (after boot-mr-done).
        let v: Value = serde_json::from_str(APPINFO).unwrap();
        let at_boot_mr_done = v["tdx_lite_fixture_app_info"]["rtmr3_at_boot_mr_done"]
            .as_str()
            .unwrap();
        assert_eq!(replay_rtmr3(&phase1), hex_digest(at_boot_mr_done));
    }

    #[test]
    fn log_writer_extends_then_appends_in_order() {
        let (phase1, phase2) = fixture_plan();
        let mut tee = FakeTee::default();
        let mut sink = RecordingSink::default();
        let mut log = RuntimeEventLog::new(&mut tee, &mut sink).unwrap();
        log.emit_plan(phase1.clone()).unwrap();
        assert!(!log.is_system_ready());
        log.emit_plan(phase2.clone()).unwrap();
        assert!(log.is_system_ready());
        drop(log);
        let all: Vec<_> = phase1.iter().chain(&phase2).cloned().collect();
        // Exactly one RTMR3 extend per event, in order, with the event digest.
        let expected_calls: Vec<_> = all
            .iter()
            .map(|e| TeeCall::ExtendRtmr {
                index: RtmrIndex::R3,
                digest: e.digest(),
            })
            .collect();
        assert_eq!(tee.calls, expected_calls);
        assert_eq!(
            *tee.rtmrs.register(RtmrIndex::R3),
            hex_digest(
                "6f24c170d0fd63fc2b1b53202eea47b013978437fa6982cf5e0438ff95c208994aaa0f4ebab2e3a66824b5b56869137e"
            )
        );
        // The log lines decode back to the same events and replay to the same RTMR3.
        let text: String = sink.lines.concat();
        assert_eq!(
            sink.lines[0],
            "{\"event\":\"system-preparing\",\"payload\":\"\"}\n"
        );
        let decoded: Vec<_> = decode_log(&text)
            .unwrap()
            .into_iter()
            .map(|l| l.event)
            .collect();
        assert_eq!(decoded, all);
    }

    #[test]
    fn refused_extend_logs_nothing() {
        let mut tee = FakeTee {
            fail_extend_at: Some(1),
            ..FakeTee::default()
        };
        let mut sink = RecordingSink::default();
        let mut log = RuntimeEventLog::new(&mut tee, &mut sink).unwrap();
        let (phase1, _) = fixture_plan();
        let err = log.emit_plan(phase1).unwrap_err();
        assert!(matches!(
            &err,
            EventLogError::ExtendEvent { name, source } if name == "app-id" && matches!(**source, TeeError::ExtendRtmr { .. })
        ));
        assert_eq!(log.events().len(), 1);
        drop(log);
        assert_eq!(sink.lines.len(), 1); // only system-preparing
    }

    #[test]
    fn failed_append_poisons_the_log() {
        let mut tee = FakeTee::default();
        let mut sink = RecordingSink {
            fail: true,
            ..RecordingSink::default()
        };
        let mut log = RuntimeEventLog::new(&mut tee, &mut sink).unwrap();
        let e = RuntimeEvent::new("system-preparing", Vec::new());
        assert!(matches!(
            log.emit_system_event(e.clone()),
            Err(EventLogError::AppendEvent { .. })
        ));
        assert!(matches!(
            log.emit_system_event(e),
            Err(EventLogError::LogOutOfStep { .. })
        ));
        drop(log);
        assert_eq!(tee.calls.len(), 1);
    }

    #[test]
    fn app_events_only_after_system_ready_and_never_reserved() {
        let mut tee = FakeTee::default();
        let mut sink = RecordingSink::default();
        let mut log = RuntimeEventLog::new(&mut tee, &mut sink).unwrap();
        assert!(matches!(
            log.emit_app_event(RuntimeEvent::new("my-event", b"x".to_vec())),
            Err(EventLogError::AppEventBeforeSystemReady { .. })
        ));
        close_system_phase(&mut log);
        for name in RESERVED_EVENT_NAMES {
            assert!(matches!(
                log.emit_app_event(RuntimeEvent::new(name, Vec::new())),
                Err(EventLogError::ReservedEventName { .. })
            ));
        }
        assert!(matches!(
            log.emit_system_event(RuntimeEvent::new("app-id", vec![0; 20])),
            Err(EventLogError::SystemEventAfterSystemReady { .. })
        ));
        log.emit_app_event(RuntimeEvent::new("my-event", b"x".to_vec()))
            .unwrap();
        let names: Vec<_> = log.events().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["key-provider", "storage-fs", "system-ready", "my-event"]
        );
    }

    /// Emits the system events up to `system-ready`, so app events are accepted.
    fn close_system_phase<R: Rtmr, S: EventLogSink>(log: &mut RuntimeEventLog<R, S>) {
        log.emit_plan(system_ready_events(
            None,
            &KeyProviderInfo::none(),
            StorageFs::Ext4,
            EventLogVersion::V1,
        ))
        .unwrap();
    }

    #[test]
    fn app_events_stop_at_the_budget_with_nothing_extended() {
        let mut tee = FakeTee::default();
        let mut sink = RecordingSink::default();
        let mut log = RuntimeEventLog::new(&mut tee, &mut sink).unwrap();
        close_system_phase(&mut log);
        // Bytes: two events of half the budget less their names fit, a third byte does not.
        let half = APP_EVENT_MAX_BYTES / 2 - 1;
        for _ in 0..2 {
            log.emit_app_event(RuntimeEvent::new("b", vec![7; half]))
                .unwrap();
        }
        let before = log.events().len();
        let err = log
            .emit_app_event(RuntimeEvent::new("c", vec![1]))
            .unwrap_err();
        assert!(
            matches!(err, EventLogError::AppEventBudget { count: 2, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("budget"));
        assert_eq!(log.events().len(), before, "a refused event is not logged");
        drop(log);
        assert_eq!(tee.calls.len(), 3 + 2, "a refused event is not extended");

        // Count: small events stop at APP_EVENT_MAX_COUNT.
        let mut tee = FakeTee::default();
        let mut sink = RecordingSink::default();
        let mut log = RuntimeEventLog::new(&mut tee, &mut sink).unwrap();
        close_system_phase(&mut log);
        for _ in 0..APP_EVENT_MAX_COUNT {
            log.emit_app_event(RuntimeEvent::new("n", Vec::new()))
                .unwrap();
        }
        assert!(matches!(
            log.emit_app_event(RuntimeEvent::new("n", Vec::new())),
            Err(EventLogError::AppEventBudget { .. })
        ));
    }

    #[test]
    fn v2_events_carry_version_in_log_lines() {
        let mut tee = FakeTee::default();
        let mut sink = RecordingSink::default();
        let mut log = RuntimeEventLog::new(&mut tee, &mut sink).unwrap();
        log.emit_plan(app_info_events(&fixture_identity(), EventLogVersion::V2))
            .unwrap();
        drop(log);
        assert!(sink.lines.iter().all(|l| l.contains("\"version\":2")));
        let v: Value = serde_json::from_str(REPLAY).unwrap();
        let want = v["rtmr3_events"][0]["digest_v2_sha384"].as_str().unwrap();
        assert_eq!(
            tee.calls[0],
            TeeCall::ExtendRtmr {
                index: RtmrIndex::R3,
                digest: hex_digest(want)
            }
        );
    }

    #[test]
    fn key_provider_payloads() {
        assert_eq!(
            KeyProviderInfo::none().payload(),
            br#"{"name":"none","id":""}"#
        );
        assert_eq!(
            KeyProviderInfo::tpm().payload(),
            br#"{"name":"tpm","id":""}"#
        );
        assert_eq!(
            KeyProviderInfo::local_sgx(&[0xab, 0xcd]).payload(),
            br#"{"name":"local-sgx","id":"abcd"}"#
        );
    }

    #[test]
    fn no_instance_id_gives_empty_payload() {
        let mut id = fixture_identity();
        id.instance_id = None;
        let events = app_info_events(&id, EventLogVersion::V1);
        assert_eq!(events[3].name, "instance-id");
        assert!(events[3].payload.is_empty());
    }
}
