//! TCG PC Client crypto-agile event log as TDVF writes it into the CCEL log area
//! (`specs/tdx.md` §4): a SHA-1-format header record carrying the "Spec ID Event03" structure,
//! then `TCG_PCR_EVENT2` records until the end of the data or a 0xFF (or zero) fill.
//!
//! The records' `pcrIndex` field holds the CC measurement-register index: RTMR = index − 1.

use serde::Serialize;

use crate::bytes::{Reader, ShortRead, hex_bytes, len_from_u32};
use crate::rtmr::{RtmrError, RtmrIndex, SHA384_LEN, Sha384Digest};

/// TPM_ALG_SHA1.
pub const TPM_ALG_SHA1: u16 = 0x0004;
/// TPM_ALG_SHA256.
pub const TPM_ALG_SHA256: u16 = 0x000B;
/// TPM_ALG_SHA384.
pub const TPM_ALG_SHA384: u16 = 0x000C;
/// TPM_ALG_SHA512.
pub const TPM_ALG_SHA512: u16 = 0x000D;

/// EV_NO_ACTION: informational, never extended.
pub const EV_NO_ACTION: u32 = 3;

const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
const SHA1_LEN: usize = 20;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventLogError {
    /// The input ended inside a record.
    #[error("event log is truncated")]
    ReadField {
        /// Which field and where.
        #[source]
        source: ShortRead,
    },
    /// The first record is not EV_NO_ACTION.
    #[error("first event has type {event_type:#x}, expected EV_NO_ACTION")]
    CheckHeaderEventType {
        /// Its event type.
        event_type: u32,
    },
    /// The first record does not hold a "Spec ID Event03" structure.
    #[error("first event is not a Spec ID Event03 structure")]
    CheckSpecIdSignature {
        /// The 16 signature bytes found.
        signature: [u8; 16],
    },
    /// The Spec ID event declares more algorithms than its size allows.
    #[error("Spec ID event declares {count} algorithms")]
    CheckAlgorithmCount {
        /// Declared count.
        count: u32,
    },
    /// The Spec ID event data is shorter than its contents.
    #[error("Spec ID event is malformed")]
    ReadSpecIdEvent {
        /// The short read inside the event data.
        #[source]
        source: ShortRead,
    },
    /// An event carries more digests than the log has algorithms.
    #[error("event at offset {offset:#x} has {count} digests, log has {algorithms} algorithms")]
    CheckDigestCount {
        /// Offset of the event.
        offset: usize,
        /// Declared digest count.
        count: u32,
        /// Algorithms in the Spec ID event.
        algorithms: usize,
    },
    /// An event's digest uses an algorithm the Spec ID event does not list.
    #[error("event at offset {offset:#x} uses unknown digest algorithm {alg_id:#06x}")]
    CheckDigestAlgorithm {
        /// Offset of the event.
        offset: usize,
        /// The algorithm ID.
        alg_id: u16,
    },
}

impl From<ShortRead> for EventLogError {
    fn from(source: ShortRead) -> Self {
        Self::ReadField { source }
    }
}

/// One algorithm declared by the Spec ID event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AlgorithmSize {
    /// TPM_ALG_ID.
    pub alg_id: u16,
    /// Digest size in bytes.
    pub digest_size: u16,
}

/// TCG_EfiSpecIDEvent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecIdEvent {
    /// CC MR index of the header record (1 in TDVF logs).
    pub mr_index: u32,
    /// Platform class.
    pub platform_class: u32,
    /// Spec version (major, minor, errata).
    pub spec_version: (u8, u8, u8),
    /// UINTN size (2 = 64-bit).
    pub uintn_size: u8,
    /// Digest algorithms used by the following events.
    pub algorithms: Vec<AlgorithmSize>,
    /// Vendor info.
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub vendor_info: Vec<u8>,
}

/// One digest of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventDigest {
    /// TPM_ALG_ID.
    pub alg_id: u16,
    /// Digest bytes.
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub digest: Vec<u8>,
}

/// One TCG_PCR_EVENT2 record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcgEvent {
    /// Offset of the record in the log.
    pub offset: usize,
    /// CC measurement-register index (RTMR index + 1).
    pub mr_index: u32,
    /// Event type.
    pub event_type: u32,
    /// Digests, one per algorithm.
    pub digests: Vec<EventDigest>,
    /// Event data.
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub event_data: Vec<u8>,
}

impl TcgEvent {
    /// The SHA-384 digest, if the event has one of the right size.
    pub fn sha384(&self) -> Option<Sha384Digest> {
        self.digests
            .iter()
            .find(|d| d.alg_id == TPM_ALG_SHA384 && d.digest.len() == SHA384_LEN)
            .and_then(|d| Sha384Digest::from_slice(&d.digest).ok())
    }

    /// The RTMR this event extends (`mr_index − 1`).
    pub fn rtmr_index(&self) -> Result<RtmrIndex, RtmrError> {
        RtmrIndex::from_cc_mr_index(self.mr_index)
    }

    /// True for EV_NO_ACTION records, which are never extended.
    pub fn is_no_action(&self) -> bool {
        self.event_type == EV_NO_ACTION
    }
}

/// How the log ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LogEnd {
    /// The last record ended exactly at the end of the input.
    EndOfData,
    /// A record header of 0xFFFFFFFF (the unused area of a CCEL log is 0xFF) at this offset.
    Terminator {
        /// Offset of the fill.
        offset: usize,
    },
    /// All remaining bytes are zero from this offset.
    ZeroFill {
        /// Offset of the fill.
        offset: usize,
    },
}

/// A parsed event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventLog {
    /// The Spec ID header.
    pub spec_id: SpecIdEvent,
    /// The events after the header, in log order (EV_NO_ACTION included).
    pub events: Vec<TcgEvent>,
    /// Where and how the log ended.
    pub end: LogEnd,
}

/// Human name of the event types TDVF, shim and grub log.
pub fn event_type_name(event_type: u32) -> Option<&'static str> {
    Some(match event_type {
        0x1 => "EV_POST_CODE",
        0x3 => "EV_NO_ACTION",
        0x4 => "EV_SEPARATOR",
        0x5 => "EV_ACTION",
        0x6 => "EV_EVENT_TAG",
        0x7 => "EV_S_CRTM_CONTENTS",
        0x8 => "EV_S_CRTM_VERSION",
        0xA => "EV_PLATFORM_CONFIG_FLAGS",
        0xD => "EV_IPL",
        0x8000_0001 => "EV_EFI_VARIABLE_DRIVER_CONFIG",
        0x8000_0002 => "EV_EFI_VARIABLE_BOOT",
        0x8000_0003 => "EV_EFI_BOOT_SERVICES_APPLICATION",
        0x8000_0004 => "EV_EFI_BOOT_SERVICES_DRIVER",
        0x8000_0005 => "EV_EFI_RUNTIME_SERVICES_DRIVER",
        0x8000_0006 => "EV_EFI_GPT_EVENT",
        0x8000_0007 => "EV_EFI_ACTION",
        0x8000_0008 => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
        0x8000_0009 => "EV_EFI_HANDOFF_TABLES",
        0x8000_000A => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
        0x8000_000B => "EV_EFI_HANDOFF_TABLES2",
        0x8000_00E0 => "EV_EFI_VARIABLE_AUTHORITY",
        0x0800_0001 => "DSTACK_RUNTIME_EVENT",
        _ => return None,
    })
}

fn read_spec_id(data: &[u8], mr_index: u32) -> Result<SpecIdEvent, EventLogError> {
    let wrap = |source| EventLogError::ReadSpecIdEvent { source };
    let mut r = Reader::new(data);
    let signature: [u8; 16] = r.array("signature").map_err(wrap)?;
    if &signature != SPEC_ID_SIGNATURE {
        return Err(EventLogError::CheckSpecIdSignature { signature });
    }
    let platform_class = r.u32("platform class").map_err(wrap)?;
    let minor = r.u8("spec version minor").map_err(wrap)?;
    let major = r.u8("spec version major").map_err(wrap)?;
    let errata = r.u8("spec errata").map_err(wrap)?;
    let uintn_size = r.u8("uintn size").map_err(wrap)?;
    let count = r.u32("number of algorithms").map_err(wrap)?;
    if len_from_u32(count) > r.remaining() / 4 {
        return Err(EventLogError::CheckAlgorithmCount { count });
    }
    let mut algorithms = Vec::new();
    for _ in 0..count {
        algorithms.push(AlgorithmSize {
            alg_id: r.u16("algorithm id").map_err(wrap)?,
            digest_size: r.u16("digest size").map_err(wrap)?,
        });
    }
    let vendor_len = usize::from(r.u8("vendor info size").map_err(wrap)?);
    let vendor_info = r.take(vendor_len, "vendor info").map_err(wrap)?.to_vec();
    Ok(SpecIdEvent {
        mr_index,
        platform_class,
        spec_version: (major, minor, errata),
        uintn_size,
        algorithms,
        vendor_info,
    })
}

fn read_event(r: &mut Reader<'_>, spec: &SpecIdEvent) -> Result<TcgEvent, EventLogError> {
    let offset = r.position();
    let mr_index = r.u32("mr index")?;
    let event_type = r.u32("event type")?;
    let count = r.u32("digest count")?;
    if len_from_u32(count) > spec.algorithms.len() {
        return Err(EventLogError::CheckDigestCount {
            offset,
            count,
            algorithms: spec.algorithms.len(),
        });
    }
    let mut digests = Vec::new();
    for _ in 0..count {
        let alg_id = r.u16("digest algorithm")?;
        let size = spec
            .algorithms
            .iter()
            .find(|a| a.alg_id == alg_id)
            .map(|a| usize::from(a.digest_size))
            .ok_or(EventLogError::CheckDigestAlgorithm { offset, alg_id })?;
        digests.push(EventDigest {
            alg_id,
            digest: r.take(size, "digest")?.to_vec(),
        });
    }
    let size = len_from_u32(r.u32("event size")?);
    let event_data = r.take(size, "event data")?.to_vec();
    Ok(TcgEvent {
        offset,
        mr_index,
        event_type,
        digests,
        event_data,
    })
}

impl EventLog {
    /// Parses a log area (e.g. `/sys/firmware/acpi/tables/data/CCEL`). Never panics.
    pub fn parse(bytes: &[u8]) -> Result<Self, EventLogError> {
        let mut r = Reader::new(bytes);
        let mr_index = r.u32("header mr index")?;
        let event_type = r.u32("header event type")?;
        if event_type != EV_NO_ACTION {
            return Err(EventLogError::CheckHeaderEventType { event_type });
        }
        r.take(SHA1_LEN, "header digest")?;
        let size = len_from_u32(r.u32("header event size")?);
        let data = r.take(size, "header event data")?;
        let spec_id = read_spec_id(data, mr_index)?;
        let mut events = Vec::new();
        let end = loop {
            let rest = r.rest();
            let offset = r.position();
            if rest.is_empty() {
                break LogEnd::EndOfData;
            }
            if rest.len() >= 4 && rest[..4] == [0xFF; 4] {
                break LogEnd::Terminator { offset };
            }
            if rest.len() < 8 || rest[..8] == [0; 8] {
                // Only a fill can start with a zero MR index and type; check it really is one.
                if rest.iter().all(|&b| b == 0) {
                    break LogEnd::ZeroFill { offset };
                }
                if rest.iter().all(|&b| b == 0xFF) {
                    break LogEnd::Terminator { offset };
                }
            }
            events.push(read_event(&mut r, &spec_id)?);
        };
        Ok(Self {
            spec_id,
            events,
            end,
        })
    }

    /// Length of the log proper (up to the fill or end).
    pub fn log_len(&self, total_len: usize) -> usize {
        match self.end {
            LogEnd::EndOfData => total_len,
            LogEnd::Terminator { offset } | LogEnd::ZeroFill { offset } => offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CCEL: &[u8] = include_bytes!("../testdata/dstack-ccel.bin");

    #[test]
    fn dstack_ccel_sample() {
        let log = EventLog::parse(CCEL).unwrap();
        assert_eq!(log.spec_id.mr_index, 1);
        assert_eq!(log.spec_id.spec_version, (2, 0, 0));
        assert_eq!(log.spec_id.uintn_size, 2);
        assert_eq!(
            log.spec_id.algorithms,
            vec![AlgorithmSize {
                alg_id: TPM_ALG_SHA384,
                digest_size: 48
            }]
        );
        assert_eq!(log.end, LogEnd::Terminator { offset: 1933 });
        assert_eq!(log.log_len(CCEL.len()), 1933);
        assert_eq!(log.events.len(), 18);
        let first = &log.events[0];
        assert_eq!(first.mr_index, 1);
        assert_eq!(first.rtmr_index(), Ok(RtmrIndex::R0));
        assert_eq!(
            event_type_name(first.event_type),
            Some("EV_EFI_HANDOFF_TABLES2")
        );
        assert_eq!(
            first.sha384().unwrap().to_string(),
            "2b630fa1d8fa9b6e8c6507d2256803ed227888f7d1f62ca5cfbddfe495338b1c6a0fc339ea64700f0835c0897a662789"
        );
        assert_eq!(
            hex::encode(&first.event_data),
            "095464785461626c65000100000000000000af96bb93f2b9b84e9462e0ba745642360090800000000000"
        );
        assert!(
            log.events
                .iter()
                .all(|e| e.mr_index >= 1 && e.mr_index <= 2)
        );
    }

    /// Compares against dstack's insta snapshot of the same log (imr, type, digest, data).
    #[test]
    fn matches_dstack_snapshot() {
        let snapshot = include_str!("../testdata/dstack-ccel.parsed-json.snap.txt");
        let json = snapshot.splitn(3, "---").nth(2).unwrap();
        let expected: Vec<serde_json::Value> = serde_json::from_str(json).unwrap();
        let log = EventLog::parse(CCEL).unwrap();
        let events: Vec<_> = log.events.iter().filter(|e| !e.is_no_action()).collect();
        assert_eq!(events.len(), expected.len());
        for (event, expected) in events.iter().zip(&expected) {
            assert_eq!(
                u64::from(event.mr_index - 1),
                expected["imr"].as_u64().unwrap()
            );
            assert_eq!(
                u64::from(event.event_type),
                expected["event_type"].as_u64().unwrap()
            );
            assert_eq!(
                event.sha384().unwrap().to_string(),
                expected["digest"].as_str().unwrap()
            );
            assert_eq!(
                hex::encode(&event.event_data),
                expected["event_payload"].as_str().unwrap()
            );
        }
    }

    #[test]
    fn end_variants() {
        let log_len = EventLog::parse(CCEL).unwrap().log_len(CCEL.len());
        let exact = &CCEL[..log_len];
        assert_eq!(EventLog::parse(exact).unwrap().end, LogEnd::EndOfData);
        let mut zero = exact.to_vec();
        zero.extend_from_slice(&[0; 100]);
        assert_eq!(
            EventLog::parse(&zero).unwrap().end,
            LogEnd::ZeroFill { offset: log_len }
        );
        let mut short_ff = exact.to_vec();
        short_ff.extend_from_slice(&[0xFF; 3]);
        assert_eq!(
            EventLog::parse(&short_ff).unwrap().end,
            LogEnd::Terminator { offset: log_len }
        );
    }

    #[test]
    fn errors_are_typed() {
        let mut bad = CCEL.to_vec();
        bad[4] = 4;
        assert_eq!(
            EventLog::parse(&bad),
            Err(EventLogError::CheckHeaderEventType { event_type: 4 })
        );
        let mut bad = CCEL.to_vec();
        bad[32] = b's';
        assert!(matches!(
            EventLog::parse(&bad),
            Err(EventLogError::CheckSpecIdSignature { .. })
        ));
        // First event's digest algorithm (offset 0x41 + 12) → SHA-256.
        let mut bad = CCEL.to_vec();
        bad[0x41 + 12] = 0x0B;
        assert_eq!(
            EventLog::parse(&bad),
            Err(EventLogError::CheckDigestAlgorithm {
                offset: 0x41,
                alg_id: 0x0B
            })
        );
        let mut bad = CCEL.to_vec();
        bad[0x41 + 8] = 2;
        assert_eq!(
            EventLog::parse(&bad),
            Err(EventLogError::CheckDigestCount {
                offset: 0x41,
                count: 2,
                algorithms: 1
            })
        );
        let mut bad = CCEL.to_vec();
        bad[0x38..0x3C].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            EventLog::parse(&bad),
            Err(EventLogError::CheckAlgorithmCount { count: u32::MAX })
        );
        assert!(matches!(
            EventLog::parse(&CCEL[..200]),
            Err(EventLogError::ReadField { .. })
        ));
    }

    #[test]
    fn parser_never_panics() {
        let log_len = EventLog::parse(CCEL).unwrap().log_len(CCEL.len());
        for end in 0..log_len + 8 {
            let _ = EventLog::parse(&CCEL[..end]);
        }
        for i in 0..log_len + 8 {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut mutated = CCEL[..log_len + 64].to_vec();
                mutated[i] ^= flip;
                let _ = EventLog::parse(&mutated);
            }
        }
    }
}
