//! The `system-ready` stage: extend `key-provider` (only when the keys stage did not: provider
//! `none`), `disk-formatted` (when the disk stage formatted the data disk), `storage-fs` and
//! `system-ready`, then require a fresh quote's RTMR3 to equal the
//! event log's replay (proof that the TEE saw every extend) and write the `measured` record.
//!
//! It consumes the measure stage's [`Measured`]: PID 1 extends nothing after this stage (the
//! guest API process owns the event log from the next stage on).

use init_core::app_compose::StorageFs;
use init_core::host_share::HostShare;
use init_core::results::Record;
use init_core::tee::events::{
    EventLogError, EventLogSink, KeyProviderInfo, RuntimeEventLog, system_ready_events,
};
use init_core::tee::{Rtmr, RtmrIndex, Sha384Digest};

use crate::results::Results;
use crate::stages::disk::Mounted;
use crate::stages::keys::Keys;
use crate::stages::measure::{BoxedTee, Measured};
use init_core::tee::RuntimeEvent;

/// Errors of the system-ready stage.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SystemReadyStageError {
    /// The app's event-log version is invalid.
    #[error("event log version of app-compose.json")]
    EventLogVersion {
        #[source]
        source: init_core::app_compose::AppComposeError,
    },
    /// Emitting an event failed.
    #[error("emit RTMR3 events")]
    EmitEvents {
        #[source]
        source: EventLogError,
    },
    #[error("get a quote to check RTMR3")]
    Quote(#[source] init_core::tee::TeeError),
    #[error("parse the TEE's quote")]
    ParseQuote(#[source] measure::quote::QuoteError),
    #[error("the TEE's quote has RTMR3 {quoted} but the event log replays to {replayed}")]
    Rtmr3Mismatch {
        quoted: Sha384Digest,
        replayed: Sha384Digest,
    },
}

/// What is left of the measurement once the log is closed: the TEE (for quotes only; the
/// gateway stage's client certificate) and the full RTMR3 log it replays to.
pub(crate) struct Sealed {
    pub(crate) tee: BoxedTee,
    pub(crate) events: Vec<RuntimeEvent>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

/// Runs the stage: closes the boot-time measurement of `measured` (consumed: the log is closed
/// when this returns; the TEE comes back sealed for quotes).
pub(crate) fn run(
    share: &HostShare,
    measured: Measured,
    keys: &Keys,
    disk: Option<&Mounted>,
    results: &mut Results,
) -> Result<Sealed, SystemReadyStageError> {
    let Measured {
        identity, mut log, ..
    } = measured;
    // storage-fs names the filesystem actually mounted: the data volume is always ext4.
    let asked = share.app_compose.compose().storage_fs();
    let storage_fs = if disk.is_some() {
        if asked != StorageFs::Ext4 {
            log::warn!(
                "app-compose asks for storage_fs {}: the data disk is ext4",
                asked.as_str()
            );
        }
        StorageFs::Ext4
    } else {
        asked
    };
    // With a KMS the keys stage already extended os-image-hash and key-provider.
    let key_provider = (!keys.extended_key_provider()).then(KeyProviderInfo::none);
    let formatted = disk
        .map(|d| d.opened.format)
        .filter(|f| *f != cvm_disk::volume::Formatted::No);
    emit_events(
        &mut log,
        share,
        key_provider.as_ref(),
        formatted,
        storage_fs,
    )?;
    let replayed = measure::runtime_event::replay_rtmr3(log.events());
    // A fresh quote must carry what the log replays to: proves the TEE saw every extend.
    let mut report_data = [0u8; 64];
    report_data[..32].copy_from_slice(identity.compose_hash.as_bytes());
    let quote_bytes = log
        .rtmr_mut()
        .quote(&report_data)
        .map_err(SystemReadyStageError::Quote)?;
    let quote =
        measure::quote::Quote::parse(&quote_bytes).map_err(SystemReadyStageError::ParseQuote)?;
    let quoted = *quote.rtmrs().register(RtmrIndex::R3);
    if quoted != replayed {
        return Err(SystemReadyStageError::Rtmr3Mismatch { quoted, replayed });
    }
    let simulated = log
        .events()
        .iter()
        .any(|e| e.name == "insecure-simulated-tee");
    let tee = if simulated {
        "insecure-simulated"
    } else {
        "tdx"
    };
    if simulated {
        log::warn!("INSECURE simulated TEE: this VM's attestation can never be accepted");
    }
    log::info!("system ready: RTMR3 {replayed}");
    results.record(&Record::Measured {
        tee: tee.into(),
        app_id: identity.app_id.to_string(),
        compose_hash: identity.compose_hash.to_string(),
        instance_id: identity
            .instance_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        rtmr3: replayed.to_string(),
        quote_rtmr3: quoted.to_string(),
        events: u32::try_from(log.events().len()).unwrap_or(u32::MAX),
        mono_us: init_sys::clock::monotonic_us(),
    });
    let (tee, events) = log.into_parts();
    Ok(Sealed { tee, events })
}

/// Emits [`os-image-hash`], `key-provider`, [`disk-formatted`], `storage-fs`, `system-ready`.
/// After this only workload events (non-reserved names) can be added. `key_provider` `None`:
/// the keys stage already extended `os-image-hash` and `key-provider` (KMS provider).
pub(crate) fn emit_events<R: Rtmr, S: EventLogSink>(
    log: &mut RuntimeEventLog<R, S>,
    share: &HostShare,
    key_provider: Option<&KeyProviderInfo>,
    disk_formatted: Option<cvm_disk::volume::Formatted>,
    storage_fs: StorageFs,
) -> Result<(), SystemReadyStageError> {
    let version = share
        .app_compose
        .compose()
        .event_log_version()
        .map_err(|source| SystemReadyStageError::EventLogVersion { source })?;
    let placeholder = KeyProviderInfo::none();
    let events = system_ready_events(
        None,
        key_provider.unwrap_or(&placeholder),
        storage_fs,
        version,
    )
    .into_iter()
    .filter(|e| key_provider.is_some() || e.name != init_core::tee::events::names::KEY_PROVIDER)
    .flat_map(|e| {
        let formatted = (e.name == init_core::tee::events::names::STORAGE_FS)
            .then_some(disk_formatted)
            .flatten()
            .map(|f| {
                init_core::tee::RuntimeEvent::new(
                    init_core::tee::events::names::DISK_FORMATTED,
                    f.name().as_bytes().to_vec(),
                )
                .with_version(version)
            });
        formatted.into_iter().chain(std::iter::once(e))
    })
    .collect();
    log.emit_plan(events)
        .map_err(|source| SystemReadyStageError::EmitEvents { source })
}
