//! dstack-compatible RTMR3 runtime events (`specs/dstack-guest.md` §3).
//!
//! Every runtime event has event type `0x08000001` and is extended into RTMR3. Its digest is
//! - V1 (default): `SHA-384(LE32(0x08000001) ‖ ":" ‖ name ‖ ":" ‖ payload)`;
//! - V2 (opt-in): `SHA-384` of the RFC 8785 (JCS) JSON
//!   `{"name":<name>,"payload":<lowercase hex>,"type":134217729}`.
//!
//! Log lines (one JSON object per line) come in two shapes:
//! - [`LogLineFormat::Current`] (dstack v0.5.6+, `/run/log/dstack/runtime_events.log`):
//!   `{"event":<name>,"payload":<base64>}`, plus `"version":2` for V2 events;
//! - [`LogLineFormat::Legacy`] (dstack ≤ v0.5.5, `/run/log/tdx_mr3/tdx_events.log`, and the
//!   `TdxEvent` shape exposed by the guest agent):
//!   `{"imr":3,"event_type":134217729,"digest":<hex>,"event":<name>,"event_payload":<hex>}`,
//!   plus `"version":2` for V2 events.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::rtmr::{RtmrError, RtmrIndex, Sha384Digest, extend};

/// Event type of every dstack runtime event (vendor range, not TCG-defined).
pub const RUNTIME_EVENT_TYPE: u32 = 0x0800_0001;

/// The register runtime events are extended into.
pub const RUNTIME_EVENT_RTMR: RtmrIndex = RtmrIndex::R3;

/// The `imr` value legacy log lines carry for runtime events.
const LEGACY_IMR: u64 = 3;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeEventError {
    /// The line is not a JSON object of the expected shape.
    #[error("log line is not a runtime event JSON object")]
    DecodeLineJson {
        /// The JSON decoder's reason.
        #[source]
        source: serde_json::Error,
    },
    /// A required field is missing.
    #[error("log line lacks the {field:?} field")]
    DecodeLineField {
        /// Name of the missing field.
        field: &'static str,
    },
    /// The payload of a current-format line is not standard base64.
    #[error("payload is not valid base64")]
    DecodePayloadBase64 {
        /// The decoder's reason.
        #[source]
        source: base64::DecodeError,
    },
    /// The payload of a legacy-format line is not hex.
    #[error("event payload is not valid hex")]
    DecodePayloadHex {
        /// The decoder's reason.
        #[source]
        source: hex::FromHexError,
    },
    /// The `version` field names an unknown digest version.
    #[error("event log version {version} is not supported")]
    DecodeVersion {
        /// The rejected version.
        version: u64,
    },
    /// A legacy line names a register other than RTMR3 (IMR 3).
    #[error("runtime event is in IMR {imr}, expected 3")]
    DecodeImr {
        /// The rejected IMR index.
        imr: u64,
    },
    /// A legacy line has an event type other than 0x08000001.
    #[error("event type {event_type:#x} is not a runtime event")]
    DecodeEventType {
        /// The rejected event type.
        event_type: u64,
    },
    /// The recorded digest of a legacy line is not 48 bytes of hex.
    #[error("recorded digest is invalid")]
    DecodeRecordedDigest {
        /// Why the digest did not parse.
        #[source]
        source: RtmrError,
    },
    /// One line of a log failed to decode.
    #[error("line {line} of the runtime event log is invalid")]
    DecodeLogLine {
        /// 1-based line number.
        line: usize,
        /// Why the line failed.
        #[source]
        source: Box<RuntimeEventError>,
    },
    /// The event could not be serialised (not expected with valid UTF-8 names).
    #[error("runtime event {name:?} cannot be encoded as JSON")]
    EncodeLine {
        /// Event name.
        name: String,
        /// The encoder's reason.
        #[source]
        source: serde_json::Error,
    },
}

/// Which digest rule an event uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum EventLogVersion {
    /// `SHA-384(LE32(type) ‖ ":" ‖ name ‖ ":" ‖ payload)`.
    #[default]
    V1,
    /// `SHA-384(JCS {"name","payload"(hex),"type"})`.
    V2,
}

impl EventLogVersion {
    /// The number written in log lines (`1` or `2`).
    pub fn number(self) -> u32 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
        }
    }

    fn from_number(version: u64) -> Result<Self, RuntimeEventError> {
        match version {
            1 => Ok(Self::V1),
            2 => Ok(Self::V2),
            version => Err(RuntimeEventError::DecodeVersion { version }),
        }
    }
}

/// One RTMR3 runtime event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuntimeEvent {
    /// Event name, e.g. `compose-hash`.
    pub name: String,
    /// Raw payload bytes.
    pub payload: Vec<u8>,
    /// Digest rule.
    pub version: EventLogVersion,
}

/// The two on-disk log line shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogLineFormat {
    /// dstack v0.5.6+: `{"event","payload"(base64)[,"version":2]}`.
    Current,
    /// dstack ≤ v0.5.5 / exposed `TdxEvent`:
    /// `{"imr":3,"event_type":134217729,"digest","event","event_payload"(hex)[,"version":2]}`.
    Legacy,
}

/// A decoded log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedLogLine {
    /// The event.
    pub event: RuntimeEvent,
    /// The shape the line had.
    pub format: LogLineFormat,
    /// The digest the line recorded (legacy lines only; the exposed `TdxEvent` shape leaves it
    /// empty for runtime events). Replay always recomputes the digest; see
    /// [`DecodedLogLine::recorded_digest_matches`].
    pub recorded_digest: Option<Sha384Digest>,
}

impl DecodedLogLine {
    /// False if the line recorded a digest that differs from the one recomputed from name and
    /// payload.
    pub fn recorded_digest_matches(&self) -> bool {
        self.recorded_digest
            .is_none_or(|recorded| recorded == self.event.digest())
    }
}

impl RuntimeEvent {
    /// A V1 event (the default of every released dstack).
    pub fn new(name: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            name: name.into(),
            payload: payload.into(),
            version: EventLogVersion::V1,
        }
    }

    /// The same event with another digest rule.
    #[must_use]
    pub fn with_version(mut self, version: EventLogVersion) -> Self {
        self.version = version;
        self
    }

    /// The V1 preimage: `LE32(0x08000001) ‖ ":" ‖ name ‖ ":" ‖ payload`.
    pub fn v1_preimage(&self) -> Vec<u8> {
        let mut preimage = Vec::with_capacity(6 + self.name.len() + self.payload.len());
        preimage.extend_from_slice(&RUNTIME_EVENT_TYPE.to_le_bytes());
        preimage.push(b':');
        preimage.extend_from_slice(self.name.as_bytes());
        preimage.push(b':');
        preimage.extend_from_slice(&self.payload);
        preimage
    }

    /// The V2 preimage: JCS JSON `{"name":..,"payload":<hex>,"type":134217729}`.
    ///
    /// Strings are escaped as RFC 8785 requires (`\"`, `\\`, `\b\f\n\r\t`, other controls as
    /// lowercase `\u00xx`, everything else literal UTF-8) and the keys are written in JCS order.
    pub fn v2_canonical_json(&self) -> String {
        let mut json = String::with_capacity(48 + self.name.len() + 2 * self.payload.len());
        json.push_str("{\"name\":");
        push_json_string(&mut json, &self.name);
        json.push_str(",\"payload\":\"");
        json.push_str(&hex::encode(&self.payload));
        json.push_str("\",\"type\":");
        json.push_str(&RUNTIME_EVENT_TYPE.to_string());
        json.push('}');
        json
    }

    /// The bytes hashed into the digest, for the event's version.
    pub fn preimage(&self) -> Vec<u8> {
        match self.version {
            EventLogVersion::V1 => self.v1_preimage(),
            EventLogVersion::V2 => self.v2_canonical_json().into_bytes(),
        }
    }

    /// The digest extended into RTMR3.
    pub fn digest(&self) -> Sha384Digest {
        Sha384Digest::of(&self.preimage())
    }

    /// Encodes the event as one log line **including** the trailing `\n`, so that a single
    /// `write` appends it.
    pub fn to_log_line(&self, format: LogLineFormat) -> Result<String, RuntimeEventError> {
        let version = match self.version {
            EventLogVersion::V1 => None,
            EventLogVersion::V2 => Some(2),
        };
        let encoded = match format {
            LogLineFormat::Current => serde_json::to_string(&CurrentLine {
                event: &self.name,
                payload: BASE64.encode(&self.payload),
                version,
            }),
            LogLineFormat::Legacy => serde_json::to_string(&LegacyLine {
                imr: LEGACY_IMR,
                event_type: RUNTIME_EVENT_TYPE,
                digest: self.digest().to_string(),
                event: &self.name,
                event_payload: hex::encode(&self.payload),
                version,
            }),
        };
        let mut line = encoded.map_err(|source| RuntimeEventError::EncodeLine {
            name: self.name.clone(),
            source,
        })?;
        line.push('\n');
        Ok(line)
    }
}

fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[derive(Serialize)]
struct CurrentLine<'a> {
    event: &'a str,
    payload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
}

#[derive(Serialize)]
struct LegacyLine<'a> {
    imr: u64,
    event_type: u32,
    digest: String,
    event: &'a str,
    event_payload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
}

/// Every field either shape may have; unknown fields (e.g. `preimage`) are ignored.
#[derive(Deserialize)]
struct RawLine {
    event: Option<String>,
    payload: Option<String>,
    version: Option<u64>,
    imr: Option<u64>,
    event_type: Option<u64>,
    digest: Option<String>,
    event_payload: Option<String>,
}

/// Decodes one log line of either shape (surrounding whitespace is ignored). Never panics.
pub fn decode_log_line(line: &str) -> Result<DecodedLogLine, RuntimeEventError> {
    let raw: RawLine = serde_json::from_str(line.trim())
        .map_err(|source| RuntimeEventError::DecodeLineJson { source })?;
    let name = raw
        .event
        .ok_or(RuntimeEventError::DecodeLineField { field: "event" })?;
    let version = raw
        .version
        .map_or(Ok(EventLogVersion::V1), EventLogVersion::from_number)?;
    let legacy = raw.imr.is_some() || raw.event_type.is_some() || raw.event_payload.is_some();
    if !legacy {
        let payload = raw
            .payload
            .ok_or(RuntimeEventError::DecodeLineField { field: "payload" })?;
        let payload = BASE64
            .decode(payload)
            .map_err(|source| RuntimeEventError::DecodePayloadBase64 { source })?;
        return Ok(DecodedLogLine {
            event: RuntimeEvent {
                name,
                payload,
                version,
            },
            format: LogLineFormat::Current,
            recorded_digest: None,
        });
    }
    let imr = raw
        .imr
        .ok_or(RuntimeEventError::DecodeLineField { field: "imr" })?;
    if imr != LEGACY_IMR {
        return Err(RuntimeEventError::DecodeImr { imr });
    }
    let event_type = raw.event_type.ok_or(RuntimeEventError::DecodeLineField {
        field: "event_type",
    })?;
    if event_type != u64::from(RUNTIME_EVENT_TYPE) {
        return Err(RuntimeEventError::DecodeEventType { event_type });
    }
    let payload = raw
        .event_payload
        .ok_or(RuntimeEventError::DecodeLineField {
            field: "event_payload",
        })?;
    let payload =
        hex::decode(payload).map_err(|source| RuntimeEventError::DecodePayloadHex { source })?;
    let recorded_digest = match raw.digest.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            text.parse::<Sha384Digest>()
                .map_err(|source| RuntimeEventError::DecodeRecordedDigest { source })?,
        ),
    };
    Ok(DecodedLogLine {
        event: RuntimeEvent {
            name,
            payload,
            version,
        },
        format: LogLineFormat::Legacy,
        recorded_digest,
    })
}

/// Decodes a whole runtime event log (one JSON object per line; blank lines are skipped).
/// Never panics.
pub fn decode_log(text: &str) -> Result<Vec<DecodedLogLine>, RuntimeEventError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            decode_log_line(line).map_err(|source| RuntimeEventError::DecodeLogLine {
                line: i + 1,
                source: Box::new(source),
            })
        })
        .collect()
}

/// One step of an RTMR3 replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeReplayStep {
    /// The event replayed.
    pub event: RuntimeEvent,
    /// Its recomputed digest.
    pub digest: Sha384Digest,
    /// RTMR3 after extending it.
    pub rtmr3_after: Sha384Digest,
}

/// Replays runtime events into RTMR3 from zero, with a per-event listing.
pub fn replay_listing<'a>(
    events: impl IntoIterator<Item = &'a RuntimeEvent>,
) -> Vec<RuntimeReplayStep> {
    let mut rtmr3 = Sha384Digest::ZERO;
    events
        .into_iter()
        .map(|event| {
            let digest = event.digest();
            rtmr3 = extend(&rtmr3, &digest);
            RuntimeReplayStep {
                event: event.clone(),
                digest,
                rtmr3_after: rtmr3,
            }
        })
        .collect()
}

/// Replays runtime events into RTMR3 from zero.
pub fn replay_rtmr3<'a>(events: impl IntoIterator<Item = &'a RuntimeEvent>) -> Sha384Digest {
    events.into_iter().fold(Sha384Digest::ZERO, |acc, event| {
        extend(&acc, &event.digest())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `vectors/dstack/rtmr3-replay-tdx-lite-0.6.0.json`.
    const REPLAY_FIXTURE: &str = include_str!("../testdata/rtmr3-replay-tdx-lite-0.6.0.json");

    #[derive(Deserialize)]
    struct Fixture {
        quote_td_report: FixtureReport,
        replayed_rtmr3: Sha384Digest,
        rtmr3_events: Vec<FixtureEvent>,
    }

    #[derive(Deserialize)]
    struct FixtureReport {
        rt_mr3: Sha384Digest,
    }

    #[derive(Deserialize)]
    struct FixtureEvent {
        event: String,
        payload_hex: String,
        preimage_v1_hex: String,
        digest_v1: Sha384Digest,
        rtmr3_after: Sha384Digest,
        v2_canonical_json: String,
        digest_v2_sha384: Sha384Digest,
    }

    fn fixture() -> Fixture {
        serde_json::from_str(REPLAY_FIXTURE).unwrap()
    }

    fn fixture_events() -> Vec<RuntimeEvent> {
        fixture()
            .rtmr3_events
            .iter()
            .map(|e| RuntimeEvent::new(e.event.clone(), hex::decode(&e.payload_hex).unwrap()))
            .collect()
    }

    #[test]
    fn v1_and_v2_digests_match_fixture() {
        let fixture = fixture();
        assert_eq!(fixture.rtmr3_events.len(), 9);
        for e in &fixture.rtmr3_events {
            let event = RuntimeEvent::new(e.event.clone(), hex::decode(&e.payload_hex).unwrap());
            assert_eq!(
                hex::encode(event.v1_preimage()),
                e.preimage_v1_hex,
                "{}",
                e.event
            );
            assert_eq!(event.digest(), e.digest_v1, "{}", e.event);
            let v2 = event.with_version(EventLogVersion::V2);
            assert_eq!(v2.v2_canonical_json(), e.v2_canonical_json, "{}", e.event);
            assert_eq!(v2.digest(), e.digest_v2_sha384, "{}", e.event);
        }
    }

    #[test]
    fn replay_reproduces_fixture_rtmr3() {
        let fixture = fixture();
        let events = fixture_events();
        let listing = replay_listing(&events);
        for (step, expected) in listing.iter().zip(&fixture.rtmr3_events) {
            assert_eq!(step.digest, expected.digest_v1);
            assert_eq!(step.rtmr3_after, expected.rtmr3_after);
        }
        assert_eq!(replay_rtmr3(&events), fixture.quote_td_report.rt_mr3);
        assert_eq!(replay_rtmr3(&events), fixture.replayed_rtmr3);
        assert_eq!(
            fixture.replayed_rtmr3.to_string(),
            "6f24c170d0fd63fc2b1b53202eea47b013978437fa6982cf5e0438ff95c208994aaa0f4ebab2e3a66824b5b56869137e"
        );
    }

    #[test]
    fn v2_canonical_json_escapes_like_jcs() {
        let event =
            RuntimeEvent::new("a\"b\\c\n\u{1}é/", vec![0xAB]).with_version(EventLogVersion::V2);
        assert_eq!(
            event.v2_canonical_json(),
            "{\"name\":\"a\\\"b\\\\c\\n\\u0001é/\",\"payload\":\"ab\",\"type\":134217729}"
        );
        // serde_json agrees with our escaper.
        assert_eq!(
            serde_json::to_string(&event.name).unwrap(),
            "\"a\\\"b\\\\c\\n\\u0001é/\""
        );
    }

    #[test]
    fn encode_known_lines() {
        let event = RuntimeEvent::new("storage-fs", b"zfs".to_vec());
        assert_eq!(
            event.to_log_line(LogLineFormat::Current).unwrap(),
            "{\"event\":\"storage-fs\",\"payload\":\"emZz\"}\n"
        );
        assert_eq!(
            event
                .clone()
                .with_version(EventLogVersion::V2)
                .to_log_line(LogLineFormat::Current)
                .unwrap(),
            "{\"event\":\"storage-fs\",\"payload\":\"emZz\",\"version\":2}\n"
        );
        assert_eq!(
            event.to_log_line(LogLineFormat::Legacy).unwrap(),
            format!(
                "{{\"imr\":3,\"event_type\":134217729,\"digest\":\"{}\",\"event\":\"storage-fs\",\"event_payload\":\"7a6673\"}}\n",
                event.digest()
            )
        );
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut events = fixture_events();
        events.push(RuntimeEvent::new("odd\nname\u{0}", vec![0, 255, 10]));
        for version in [EventLogVersion::V1, EventLogVersion::V2] {
            for format in [LogLineFormat::Current, LogLineFormat::Legacy] {
                let mut log = String::new();
                for event in &events {
                    let event = event.clone().with_version(version);
                    let line = event.to_log_line(format).unwrap();
                    assert_eq!(line.matches('\n').count(), 1, "one line per event");
                    let decoded = decode_log_line(&line).unwrap();
                    assert_eq!(decoded.event, event);
                    assert_eq!(decoded.format, format);
                    assert!(decoded.recorded_digest_matches());
                    log.push_str(&line);
                }
                let decoded = decode_log(&log).unwrap();
                let decoded: Vec<_> = decoded.into_iter().map(|d| d.event).collect();
                assert_eq!(decoded.len(), events.len());
                assert_eq!(
                    replay_rtmr3(&decoded),
                    replay_rtmr3(
                        &events
                            .iter()
                            .map(|e| e.clone().with_version(version))
                            .collect::<Vec<_>>()
                    )
                );
            }
        }
    }

    #[test]
    fn decode_exposed_tdx_event_with_empty_digest() {
        // Verbatim entry from the guest agent's GetQuote event_log (tdx-lite fixture).
        let line = r#"{"imr":3,"event_type":134217729,"digest":"","event":"storage-fs","event_payload":"7a6673"}"#;
        let decoded = decode_log_line(line).unwrap();
        assert_eq!(
            decoded.event,
            RuntimeEvent::new("storage-fs", b"zfs".to_vec())
        );
        assert_eq!(decoded.recorded_digest, None);
        assert_eq!(decoded.format, LogLineFormat::Legacy);
    }

    #[test]
    fn decode_flags_wrong_recorded_digest() {
        let line = format!(
            r#"{{"imr":3,"event_type":134217729,"digest":"{}","event":"x","event_payload":""}}"#,
            Sha384Digest::ZERO
        );
        let decoded = decode_log_line(&line).unwrap();
        assert_eq!(decoded.recorded_digest, Some(Sha384Digest::ZERO));
        assert!(!decoded.recorded_digest_matches());
    }

    #[test]
    fn decode_errors_are_typed() {
        type Check = fn(&RuntimeEventError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| {
                matches!(e, RuntimeEventError::DecodeLineJson { .. })
            }),
            ("[]", |e| {
                matches!(e, RuntimeEventError::DecodeLineJson { .. })
            }),
            ("{\"event\":1}", |e| {
                matches!(e, RuntimeEventError::DecodeLineJson { .. })
            }),
            ("{\"payload\":\"\"}", |e| {
                matches!(e, RuntimeEventError::DecodeLineField { field: "event" })
            }),
            ("{\"event\":\"a\"}", |e| {
                matches!(e, RuntimeEventError::DecodeLineField { field: "payload" })
            }),
            ("{\"event\":\"a\",\"payload\":\"!!\"}", |e| {
                matches!(e, RuntimeEventError::DecodePayloadBase64 { .. })
            }),
            ("{\"event\":\"a\",\"payload\":\"\",\"version\":3}", |e| {
                matches!(e, RuntimeEventError::DecodeVersion { version: 3 })
            }),
            (
                "{\"imr\":2,\"event_type\":134217729,\"event\":\"a\",\"event_payload\":\"\"}",
                |e| matches!(e, RuntimeEventError::DecodeImr { imr: 2 }),
            ),
            (
                "{\"imr\":3,\"event_type\":5,\"event\":\"a\",\"event_payload\":\"\"}",
                |e| matches!(e, RuntimeEventError::DecodeEventType { event_type: 5 }),
            ),
            (
                "{\"imr\":3,\"event_type\":134217729,\"event\":\"a\"}",
                |e| {
                    matches!(
                        e,
                        RuntimeEventError::DecodeLineField {
                            field: "event_payload"
                        }
                    )
                },
            ),
            (
                "{\"imr\":3,\"event_type\":134217729,\"event\":\"a\",\"event_payload\":\"0\"}",
                |e| matches!(e, RuntimeEventError::DecodePayloadHex { .. }),
            ),
            (
                "{\"imr\":3,\"event_type\":134217729,\"digest\":\"00\",\"event\":\"a\",\"event_payload\":\"\"}",
                |e| matches!(e, RuntimeEventError::DecodeRecordedDigest { .. }),
            ),
        ];
        for (line, check) in cases {
            let err = decode_log_line(line).unwrap_err();
            assert!(check(&err), "{line}: {err:?}");
        }
        let log = "{\"event\":\"a\",\"payload\":\"\"}\n\n{oops\n";
        let err = decode_log(log).unwrap_err();
        assert!(
            matches!(err, RuntimeEventError::DecodeLogLine { line: 3, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn decoder_never_panics_on_mutations() {
        let event = RuntimeEvent::new("key-provider", b"{\"name\":\"kms\",\"id\":\"\"}".to_vec());
        for format in [LogLineFormat::Current, LogLineFormat::Legacy] {
            let line = event.to_log_line(format).unwrap();
            let bytes = line.as_bytes();
            for end in 0..=bytes.len() {
                let _ = decode_log(&String::from_utf8_lossy(&bytes[..end]));
            }
            for i in 0..bytes.len() {
                for flip in [0x01u8, 0x20, 0x80, 0xff] {
                    let mut mutated = bytes.to_vec();
                    mutated[i] ^= flip;
                    let _ = decode_log(&String::from_utf8_lossy(&mutated));
                }
            }
        }
    }
}
