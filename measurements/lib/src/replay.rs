//! Replay of event logs into RTMR0-3 with a per-event listing (`specs/tdx.md` §4).
//!
//! Sources: the firmware's TCG log from CCEL (register = MR index − 1; EV_NO_ACTION skipped),
//! dstack's exposed JSON log (register = `imr`; runtime events recomputed from name and payload)
//! and runtime event logs (all RTMR3).

use serde::Serialize;

use crate::dstack_event_log::DstackEvent;
use crate::event_log::{EV_NO_ACTION, EventLog, event_type_name};
use crate::rtmr::{RtmrError, RtmrIndex, RtmrMismatch, Rtmrs, Sha384Digest};
use crate::runtime_event::{RUNTIME_EVENT_RTMR, RUNTIME_EVENT_TYPE, RuntimeEvent};

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplayError {
    /// A TCG event names a measurement register that is not an RTMR.
    #[error("event at offset {offset:#x} names MR index {mr_index}, not an RTMR")]
    ConvertMrIndex {
        /// Offset of the event in the log.
        offset: usize,
        /// The MR index.
        mr_index: u32,
        /// Why it does not map.
        #[source]
        source: RtmrError,
    },
    /// A TCG event has no SHA-384 digest.
    #[error("event at offset {offset:#x} has no SHA-384 digest")]
    FindSha384Digest {
        /// Offset of the event in the log.
        offset: usize,
    },
    /// A dstack boot event has an empty digest.
    #[error("event {index} of the dstack log has no digest")]
    FindRecordedDigest {
        /// Position in the log.
        index: usize,
    },
}

/// Where a replayed digest came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DigestSource {
    /// Taken from the log as recorded.
    Recorded,
    /// Recomputed from the event's name and payload (runtime events).
    Recomputed,
}

/// One replayed event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayEntry {
    /// Register extended.
    pub rtmr: RtmrIndex,
    /// Event type.
    pub event_type: u32,
    /// TCG name of the event type, if known.
    pub event_type_name: Option<&'static str>,
    /// Short description: runtime event name, EFI variable name, or printable event data.
    pub description: String,
    /// Digest extended.
    pub digest: Sha384Digest,
    /// Where the digest came from.
    pub digest_source: DigestSource,
    /// Register value after this event.
    pub register_after: Sha384Digest,
}

/// The result of a replay.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Replay {
    /// Every extended event, in order.
    pub entries: Vec<ReplayEntry>,
    /// Final register values.
    pub rtmrs: Rtmrs,
}

/// The outcome of checking a replay against the registers of a quote, as data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ReplayVerdict {
    /// All four registers match.
    Match,
    /// These registers differ (expected = quote, actual = replay).
    Mismatch(Vec<RtmrMismatch>),
}

impl Replay {
    /// An empty replay (all registers zero).
    pub fn new() -> Self {
        Self::default()
    }

    fn push(
        &mut self,
        rtmr: RtmrIndex,
        event_type: u32,
        description: String,
        digest: Sha384Digest,
        digest_source: DigestSource,
    ) {
        let register_after = self.rtmrs.extend(rtmr, &digest);
        self.entries.push(ReplayEntry {
            rtmr,
            event_type,
            event_type_name: event_type_name(event_type),
            description,
            digest,
            digest_source,
            register_after,
        });
    }

    /// Replays a firmware TCG log (CCEL).
    pub fn from_tcg_log(log: &EventLog) -> Result<Self, ReplayError> {
        let mut replay = Self::new();
        for event in log.events.iter().filter(|e| !e.is_no_action()) {
            let rtmr = event
                .rtmr_index()
                .map_err(|source| ReplayError::ConvertMrIndex {
                    offset: event.offset,
                    mr_index: event.mr_index,
                    source,
                })?;
            let digest = event.sha384().ok_or(ReplayError::FindSha384Digest {
                offset: event.offset,
            })?;
            replay.push(
                rtmr,
                event.event_type,
                describe(event.event_type, &event.event_data),
                digest,
                DigestSource::Recorded,
            );
        }
        Ok(replay)
    }

    /// Replays dstack's exposed event log (boot events as recorded, runtime events recomputed).
    pub fn from_dstack_events(events: &[DstackEvent]) -> Result<Self, ReplayError> {
        let mut replay = Self::new();
        for (index, event) in events.iter().enumerate() {
            if event.event_type == EV_NO_ACTION {
                continue;
            }
            if let Some(runtime) = event.runtime_event() {
                replay.push_runtime(&runtime);
                continue;
            }
            let digest = event
                .digest
                .ok_or(ReplayError::FindRecordedDigest { index })?;
            let description = if event.event.is_empty() {
                describe(event.event_type, &event.event_payload)
            } else {
                event.event.clone()
            };
            replay.push(
                event.rtmr,
                event.event_type,
                description,
                digest,
                DigestSource::Recorded,
            );
        }
        Ok(replay)
    }

    /// Replays runtime events into RTMR3 from zero.
    pub fn from_runtime_events<'a>(events: impl IntoIterator<Item = &'a RuntimeEvent>) -> Self {
        let mut replay = Self::new();
        replay.append_runtime_events(events);
        replay
    }

    /// Appends runtime events (RTMR3) to this replay, e.g. after a boot log.
    pub fn append_runtime_events<'a>(
        &mut self,
        events: impl IntoIterator<Item = &'a RuntimeEvent>,
    ) {
        for event in events {
            self.push_runtime(event);
        }
    }

    fn push_runtime(&mut self, event: &RuntimeEvent) {
        self.push(
            RUNTIME_EVENT_RTMR,
            RUNTIME_EVENT_TYPE,
            event.name.clone(),
            event.digest(),
            DigestSource::Recomputed,
        );
    }

    /// Registers that differ from `quote_rtmrs` (expected = quote, actual = replay).
    pub fn compare(&self, quote_rtmrs: &Rtmrs) -> Vec<RtmrMismatch> {
        self.rtmrs.compare(quote_rtmrs)
    }

    /// Checks the replay against the registers of a quote.
    pub fn verify(&self, quote_rtmrs: &Rtmrs) -> ReplayVerdict {
        let mismatches = self.compare(quote_rtmrs);
        if mismatches.is_empty() {
            ReplayVerdict::Match
        } else {
            ReplayVerdict::Mismatch(mismatches)
        }
    }

    /// Checks only the given registers (e.g. RTMR0-2 for a firmware-only log).
    pub fn verify_registers(&self, quote_rtmrs: &Rtmrs, registers: &[RtmrIndex]) -> ReplayVerdict {
        let mismatches: Vec<_> = self
            .compare(quote_rtmrs)
            .into_iter()
            .filter(|m| registers.contains(&m.index))
            .collect();
        if mismatches.is_empty() {
            ReplayVerdict::Match
        } else {
            ReplayVerdict::Mismatch(mismatches)
        }
    }
}

/// A short, printable description of an event's data.
fn describe(event_type: u32, data: &[u8]) -> String {
    const EV_EFI_VARIABLE_DRIVER_CONFIG: u32 = 0x8000_0001;
    const EV_EFI_VARIABLE_BOOT: u32 = 0x8000_0002;
    const EV_EFI_VARIABLE_AUTHORITY: u32 = 0x8000_00E0;
    if matches!(
        event_type,
        EV_EFI_VARIABLE_DRIVER_CONFIG | EV_EFI_VARIABLE_BOOT | EV_EFI_VARIABLE_AUTHORITY
    ) {
        // UEFI_VARIABLE_DATA: GUID, u64 name length (chars), u64 data length, UTF-16LE name.
        let chars = data
            .get(16..24)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0);
        let units: Vec<u16> = data
            .get(32..)
            .unwrap_or_default()
            .chunks_exact(2)
            .take(chars)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        return String::from_utf16_lossy(&units);
    }
    let trimmed = data.strip_suffix(&[0]).unwrap_or(data);
    if !trimmed.is_empty() && trimmed.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        String::from_utf8_lossy(trimmed).into_owned()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dstack_event_log::parse_get_quote_response;
    use crate::quote::Quote;

    const CCEL: &[u8] = include_bytes!("../testdata/dstack-ccel.bin");
    const TAPPD_QUOTE_HEX: &str = include_str!("../testdata/dcap-qvl-quote-from-tappd.hex");
    const GET_QUOTE: &str = include_str!("../testdata/dstack-tdx-lite-getquote.json");

    fn tappd_quote() -> Quote {
        let text = TAPPD_QUOTE_HEX.trim();
        Quote::parse(&hex::decode(text.strip_prefix("0x").unwrap_or(text)).unwrap()).unwrap()
    }

    #[test]
    fn ccel_replay_matches_tappd_quote_rtmr0() {
        let replay = Replay::from_tcg_log(&EventLog::parse(CCEL).unwrap()).unwrap();
        assert_eq!(replay.entries.len(), 18);
        let quote = tappd_quote();
        assert_eq!(
            replay.verify_registers(quote.rtmrs(), &[RtmrIndex::R0]),
            ReplayVerdict::Match
        );
        assert!(
            replay
                .rtmrs
                .register(RtmrIndex::R0)
                .to_string()
                .starts_with("274c2344116db7c6")
        );
        let rtmr1 = replay.rtmrs.register(RtmrIndex::R1).to_string();
        assert!(
            rtmr1.starts_with("bdcf4ee0") && rtmr1.ends_with("6b26"),
            "{rtmr1}"
        );
        assert!(replay.rtmrs.register(RtmrIndex::R2).is_zero());
        assert!(replay.rtmrs.register(RtmrIndex::R3).is_zero());
        // RTMR1 differs from that quote (different kernel), reported as data.
        let ReplayVerdict::Mismatch(mismatches) = replay.verify(quote.rtmrs()) else {
            panic!("expected a mismatch");
        };
        let indices: Vec<_> = mismatches.iter().map(|m| m.index).collect();
        assert_eq!(indices, [RtmrIndex::R1, RtmrIndex::R3]);
        assert_eq!(mismatches[0].actual, *replay.rtmrs.register(RtmrIndex::R1));
        assert_eq!(
            mismatches[0].expected,
            *quote.rtmrs().register(RtmrIndex::R1)
        );
        // Listing: descriptions decoded from event data.
        assert_eq!(replay.entries[2].description, "SecureBoot");
        assert_eq!(replay.entries[8].description, "ACPI DATA");
        assert_eq!(
            replay.entries[17].description,
            "Exit Boot Services Returned with Success"
        );
        assert_eq!(
            replay.entries[17].register_after,
            *replay.rtmrs.register(RtmrIndex::R1)
        );
    }

    #[test]
    fn dstack_log_replays_to_all_four_quote_rtmrs() {
        let response = parse_get_quote_response(GET_QUOTE).unwrap();
        let quote = Quote::parse(&response.quote).unwrap();
        let replay = Replay::from_dstack_events(&response.event_log).unwrap();
        assert_eq!(replay.verify(quote.rtmrs()), ReplayVerdict::Match);
        assert_eq!(
            quote.rtmrs().register(RtmrIndex::R3).to_string(),
            "6f24c170d0fd63fc2b1b53202eea47b013978437fa6982cf5e0438ff95c208994aaa0f4ebab2e3a66824b5b56869137e"
        );
        let runtime = replay
            .entries
            .iter()
            .filter(|e| e.digest_source == DigestSource::Recomputed)
            .count();
        assert_eq!(runtime, 9);

        // The runtime events alone reproduce RTMR3.
        let events: Vec<_> = response
            .event_log
            .iter()
            .filter_map(DstackEvent::runtime_event)
            .collect();
        let rtmr3 = Replay::from_runtime_events(&events);
        assert_eq!(
            rtmr3.rtmrs.register(RtmrIndex::R3),
            quote.rtmrs().register(RtmrIndex::R3)
        );
    }

    #[test]
    fn tampered_runtime_event_is_reported_exactly() {
        let response = parse_get_quote_response(GET_QUOTE).unwrap();
        let quote = Quote::parse(&response.quote).unwrap();
        let mut events = response.event_log.clone();
        let storage = events.iter_mut().find(|e| e.event == "storage-fs").unwrap();
        storage.event_payload = b"ext4".to_vec();
        let replay = Replay::from_dstack_events(&events).unwrap();
        assert_eq!(
            replay.verify(quote.rtmrs()),
            ReplayVerdict::Mismatch(vec![RtmrMismatch {
                index: RtmrIndex::R3,
                expected: *quote.rtmrs().register(RtmrIndex::R3),
                actual: *replay.rtmrs.register(RtmrIndex::R3),
            }])
        );
    }

    #[test]
    fn errors_are_typed() {
        let response = parse_get_quote_response(GET_QUOTE).unwrap();
        let mut events = response.event_log;
        events[0].digest = None;
        assert_eq!(
            Replay::from_dstack_events(&events),
            Err(ReplayError::FindRecordedDigest { index: 0 })
        );
        let mut log = EventLog::parse(CCEL).unwrap();
        log.events[0].mr_index = 0;
        assert!(matches!(
            Replay::from_tcg_log(&log),
            Err(ReplayError::ConvertMrIndex {
                offset: 0x41,
                mr_index: 0,
                ..
            })
        ));
        let mut log = EventLog::parse(CCEL).unwrap();
        log.events[1].digests.clear();
        assert_eq!(
            Replay::from_tcg_log(&log),
            Err(ReplayError::FindSha384Digest {
                offset: log.events[1].offset
            })
        );
    }
}
