//! dstack's exposed event log: the JSON array of `TdxEvent` objects that the guest agent returns
//! in `GetQuote.event_log` (as a JSON *string*) (`specs/dstack-guest.md` §3.2).
//!
//! Entry: `{"imr":0..3,"event_type":u32,"digest":"<hex>","event":"<name>","event_payload":"<hex>"}`
//! (+`"version":2`, +`"preimage"` for V2 runtime events). `imr` is already the RTMR index. Boot
//! events keep their digest; runtime events (imr 3, type 0x08000001) carry name and payload and
//! an empty digest, which the verifier recomputes.

use serde::{Deserialize, Serialize};

use crate::bytes::hex_bytes;
use crate::rtmr::{RtmrError, RtmrIndex, Sha384Digest};
use crate::runtime_event::{EventLogVersion, RUNTIME_EVENT_RTMR, RUNTIME_EVENT_TYPE, RuntimeEvent};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum DstackEventLogError {
    /// The text is not a JSON array of event objects.
    #[error("event log is not a JSON array of dstack events")]
    DecodeJson {
        /// The JSON decoder's reason.
        #[source]
        source: serde_json::Error,
    },
    /// An entry's `imr` is not 0..=3.
    #[error("event {index} names IMR {imr}")]
    DecodeImr {
        /// Position in the array.
        index: usize,
        /// The value.
        imr: u64,
    },
    /// An entry's `event_type` does not fit 32 bits.
    #[error("event {index} has event type {event_type}, which does not fit 32 bits")]
    DecodeEventType {
        /// Position in the array.
        index: usize,
        /// The value.
        event_type: u64,
    },
    /// An entry's digest is neither empty nor 48 bytes of hex.
    #[error("event {index} has an invalid digest")]
    DecodeDigest {
        /// Position in the array.
        index: usize,
        /// Why.
        #[source]
        source: RtmrError,
    },
    /// An entry's payload is not hex.
    #[error("event {index} has a payload that is not hex")]
    DecodePayload {
        /// Position in the array.
        index: usize,
        /// Why.
        #[source]
        source: hex::FromHexError,
    },
    /// An entry's version is neither 1 nor 2.
    #[error("event {index} has unsupported version {version}")]
    DecodeVersion {
        /// Position in the array.
        index: usize,
        /// The value.
        version: u64,
    },
    /// A GetQuote response lacks a field or has it in the wrong form.
    #[error("GetQuote response field {field:?} is missing or malformed")]
    DecodeResponseField {
        /// Which field.
        field: &'static str,
    },
    /// The quote in a GetQuote response is not hex.
    #[error("GetQuote response quote is not hex")]
    DecodeResponseQuote {
        /// Why.
        #[source]
        source: hex::FromHexError,
    },
}

/// One entry of the exposed event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DstackEvent {
    /// RTMR this event extends.
    pub rtmr: RtmrIndex,
    /// Event type.
    pub event_type: u32,
    /// Recorded digest (`None` when the log left it empty).
    pub digest: Option<Sha384Digest>,
    /// Event name (runtime events; boot events use "" or the ACPI names).
    pub event: String,
    /// Payload bytes.
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub event_payload: Vec<u8>,
    /// Digest rule for runtime events.
    pub version: EventLogVersion,
}

impl DstackEvent {
    /// True for dstack runtime events (RTMR3, type 0x08000001), whose digest a verifier
    /// recomputes from name and payload.
    pub fn is_runtime_event(&self) -> bool {
        self.rtmr == RUNTIME_EVENT_RTMR && self.event_type == RUNTIME_EVENT_TYPE
    }

    /// The runtime event, if this is one.
    pub fn runtime_event(&self) -> Option<RuntimeEvent> {
        self.is_runtime_event().then(|| RuntimeEvent {
            name: self.event.clone(),
            payload: self.event_payload.clone(),
            version: self.version,
        })
    }
}

#[derive(Deserialize)]
struct RawEvent {
    imr: u64,
    event_type: u64,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    event: String,
    #[serde(default)]
    event_payload: String,
    version: Option<u64>,
}

fn convert(index: usize, raw: RawEvent) -> Result<DstackEvent, DstackEventLogError> {
    let rtmr = u8::try_from(raw.imr)
        .ok()
        .and_then(|i| RtmrIndex::try_from(i).ok())
        .ok_or(DstackEventLogError::DecodeImr {
            index,
            imr: raw.imr,
        })?;
    let event_type =
        u32::try_from(raw.event_type).map_err(|_| DstackEventLogError::DecodeEventType {
            index,
            event_type: raw.event_type,
        })?;
    let digest = if raw.digest.is_empty() {
        None
    } else {
        Some(
            raw.digest
                .parse()
                .map_err(|source| DstackEventLogError::DecodeDigest { index, source })?,
        )
    };
    let event_payload = hex::decode(&raw.event_payload)
        .map_err(|source| DstackEventLogError::DecodePayload { index, source })?;
    let version = match raw.version {
        None | Some(1) => EventLogVersion::V1,
        Some(2) => EventLogVersion::V2,
        Some(version) => return Err(DstackEventLogError::DecodeVersion { index, version }),
    };
    Ok(DstackEvent {
        rtmr,
        event_type,
        digest,
        event: raw.event,
        event_payload,
        version,
    })
}

/// Parses the exposed event log (a JSON array). Never panics.
pub fn parse_event_log(text: &str) -> Result<Vec<DstackEvent>, DstackEventLogError> {
    let raw: Vec<RawEvent> =
        serde_json::from_str(text).map_err(|source| DstackEventLogError::DecodeJson { source })?;
    raw.into_iter()
        .enumerate()
        .map(|(index, raw)| convert(index, raw))
        .collect()
}

/// The parts of a guest-agent `GetQuote` response a verifier needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetQuoteResponse {
    /// The raw quote.
    pub quote: Vec<u8>,
    /// The decoded event log.
    pub event_log: Vec<DstackEvent>,
    /// `vm_config` as given (a JSON string), if present.
    pub vm_config: Option<String>,
}

/// Parses a guest-agent `GetQuote` response (`{"quote":hex,"event_log":"<json array>",..}`).
pub fn parse_get_quote_response(text: &str) -> Result<GetQuoteResponse, DstackEventLogError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|source| DstackEventLogError::DecodeJson { source })?;
    let quote_hex = value
        .get("quote")
        .and_then(serde_json::Value::as_str)
        .ok_or(DstackEventLogError::DecodeResponseField { field: "quote" })?;
    let quote_hex = quote_hex.strip_prefix("0x").unwrap_or(quote_hex);
    let quote = hex::decode(quote_hex)
        .map_err(|source| DstackEventLogError::DecodeResponseQuote { source })?;
    let event_log = value
        .get("event_log")
        .and_then(serde_json::Value::as_str)
        .ok_or(DstackEventLogError::DecodeResponseField { field: "event_log" })?;
    let event_log = parse_event_log(event_log)?;
    let vm_config = value
        .get("vm_config")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    Ok(GetQuoteResponse {
        quote,
        event_log,
        vm_config,
    })
}

/// dstack's names for the three RTMR0 ACPI events (fw_cfg `etc/table-loader`, `etc/acpi/rsdp`,
/// `etc/acpi/tables`), in log order (`specs/dstack-guest.md` §3.2).
pub const ACPI_EVENT_NAMES: [&str; 3] = ["acpi-loader", "acpi-rsdp", "acpi-tables"];
/// The event data OVMF records for each ACPI measurement, kept as their payload.
pub const ACPI_DATA: &[u8] = b"ACPI DATA";
/// EV_PLATFORM_CONFIG_FLAGS, the event type of the ACPI measurements.
const EV_PLATFORM_CONFIG_FLAGS: u32 = 0xA;

/// The firmware (CCEL) events of `log` as dstack exposes them in `GetQuote` and in RA-TLS
/// certificates: every extended record with a SHA-384 digest (EV_NO_ACTION records and records
/// outside RTMR0-3 are skipped), digest kept, name and payload empty, except the RTMR0 ACPI
/// events (EV_PLATFORM_CONFIG_FLAGS with data `ACPI DATA`): the first three are named
/// [`ACPI_EVENT_NAMES`] in order and keep `ACPI DATA` as payload, which dstack's "lite"
/// verifier looks up by name.
pub fn exposed_boot_events(log: &crate::event_log::EventLog) -> Vec<DstackEvent> {
    let mut acpi = ACPI_EVENT_NAMES.iter();
    log.events
        .iter()
        .filter(|e| !e.is_no_action())
        .filter_map(|e| {
            let rtmr = e.rtmr_index().ok()?;
            let digest = e.sha384()?;
            let is_acpi = rtmr == RtmrIndex::R0
                && e.event_type == EV_PLATFORM_CONFIG_FLAGS
                && e.event_data == ACPI_DATA;
            let (event, event_payload) = match is_acpi.then(|| acpi.next()).flatten() {
                Some(name) => ((*name).to_owned(), ACPI_DATA.to_vec()),
                None => (String::new(), Vec::new()),
            };
            Some(DstackEvent {
                rtmr,
                event_type: e.event_type,
                digest: Some(digest),
                event,
                event_payload,
                version: EventLogVersion::V1,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quote::Quote;

    pub(crate) const GET_QUOTE: &str = include_str!("../testdata/dstack-tdx-lite-getquote.json");

    #[test]
    fn tdx_lite_fixture() {
        let response = parse_get_quote_response(GET_QUOTE).unwrap();
        assert_eq!(response.event_log.len(), 29);
        let runtime: Vec<_> = response
            .event_log
            .iter()
            .filter_map(DstackEvent::runtime_event)
            .collect();
        let names: Vec<_> = runtime.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "system-preparing",
                "app-id",
                "compose-hash",
                "instance-id",
                "boot-mr-done",
                "os-image-hash",
                "key-provider",
                "storage-fs",
                "system-ready"
            ]
        );
        assert!(
            response
                .event_log
                .iter()
                .filter(|e| !e.is_runtime_event())
                .all(|e| e.digest.is_some())
        );
        let quote = Quote::parse(&response.quote).unwrap();
        assert!(quote.body.mr_td.to_string().starts_with("fd685522"));
        assert!(response.vm_config.is_some());
    }

    #[test]
    fn ccel_snapshot_json_form_parses() {
        let snapshot = include_str!("../testdata/dstack-ccel.parsed-json.snap.txt");
        let json = snapshot.splitn(3, "---").nth(2).unwrap();
        let events = parse_event_log(json).unwrap();
        assert_eq!(events.len(), 18);
        assert_eq!(events[0].rtmr, RtmrIndex::R0);
        assert_eq!(events[17].rtmr, RtmrIndex::R1);
    }

    #[test]
    fn errors_are_typed() {
        let ok = r#"{"imr":3,"event_type":134217729,"digest":"","event":"a","event_payload":""}"#;
        parse_event_log(&format!("[{ok}]")).unwrap();
        let cases = [
            (r#"{}"#, "json"),
            (r#"[{"imr":4,"event_type":1,"digest":""}]"#, "imr"),
            (r#"[{"imr":0,"event_type":4294967296,"digest":""}]"#, "type"),
            (r#"[{"imr":0,"event_type":1,"digest":"00"}]"#, "digest"),
            (
                r#"[{"imr":0,"event_type":1,"event_payload":"0"}]"#,
                "payload",
            ),
            (r#"[{"imr":3,"event_type":1,"version":9}]"#, "version"),
        ];
        for (text, kind) in cases {
            let err = parse_event_log(text).unwrap_err();
            let ok = match kind {
                "json" => matches!(err, DstackEventLogError::DecodeJson { .. }),
                "imr" => matches!(err, DstackEventLogError::DecodeImr { index: 0, imr: 4 }),
                "type" => matches!(err, DstackEventLogError::DecodeEventType { .. }),
                "digest" => matches!(err, DstackEventLogError::DecodeDigest { .. }),
                "payload" => matches!(err, DstackEventLogError::DecodePayload { .. }),
                _ => matches!(err, DstackEventLogError::DecodeVersion { version: 9, .. }),
            };
            assert!(ok, "{text}: {err:?}");
        }
        assert!(matches!(
            parse_get_quote_response(r#"{"quote":"zz","event_log":"[]"}"#),
            Err(DstackEventLogError::DecodeResponseQuote { .. })
        ));
        assert!(matches!(
            parse_get_quote_response(r#"{"quote":"00"}"#),
            Err(DstackEventLogError::DecodeResponseField { field: "event_log" })
        ));
    }

    #[test]
    fn parser_never_panics() {
        let log: serde_json::Value = serde_json::from_str(GET_QUOTE).unwrap();
        let text = log["event_log"].as_str().unwrap().as_bytes()[..1500].to_vec();
        for end in 0..text.len() {
            let _ = parse_event_log(&String::from_utf8_lossy(&text[..end]));
        }
        for i in 0..text.len() {
            let mut mutated = text.clone();
            mutated[i] ^= 0x20;
            let _ = parse_event_log(&String::from_utf8_lossy(&mutated));
        }
    }

    /// dstack's CCEL sample (`dstack/cc-eventlog/samples/ccel.bin`) exposed as dstack exposes
    /// boot events: same records, digests and order as dstack's own parse (its insta snapshot),
    /// payloads stripped except the three ACPI events, named as in the TDX-lite fixture.
    #[test]
    fn exposed_boot_events_follow_dstack() {
        let log = crate::event_log::EventLog::parse(include_bytes!("../testdata/dstack-ccel.bin"))
            .unwrap();
        let exposed = exposed_boot_events(&log);
        let snapshot = include_str!("../testdata/dstack-ccel.parsed-json.snap.txt");
        let json = &snapshot[snapshot.find('[').unwrap()..];
        let dstack = parse_event_log(json).unwrap();
        assert_eq!(exposed.len(), dstack.len());
        for (ours, theirs) in exposed.iter().zip(&dstack) {
            assert_eq!(
                (ours.rtmr, ours.event_type, ours.digest),
                (theirs.rtmr, theirs.event_type, theirs.digest)
            );
        }
        let named: Vec<(&str, &[u8])> = exposed
            .iter()
            .filter(|e| !e.event.is_empty())
            .map(|e| (e.event.as_str(), e.event_payload.as_slice()))
            .collect();
        assert_eq!(named, ACPI_EVENT_NAMES.map(|n| (n, ACPI_DATA)).to_vec());
        assert!(
            exposed
                .iter()
                .filter(|e| e.event.is_empty())
                .all(|e| e.event_payload.is_empty())
        );
        // The TDX-lite fixture's boot events have the same shape.
        let fixture = parse_get_quote_response(GET_QUOTE).unwrap();
        let boot: Vec<&DstackEvent> = fixture
            .event_log
            .iter()
            .filter(|e| !e.is_runtime_event())
            .collect();
        let fixture_named: Vec<(&str, &[u8])> = boot
            .iter()
            .filter(|e| !e.event.is_empty())
            .map(|e| (e.event.as_str(), e.event_payload.as_slice()))
            .collect();
        assert_eq!(fixture_named, named);
        for e in boot.iter().filter(|e| !e.event.is_empty()) {
            assert_eq!(
                (e.rtmr, e.event_type),
                (RtmrIndex::R0, EV_PLATFORM_CONFIG_FLAGS)
            );
        }
    }
}
