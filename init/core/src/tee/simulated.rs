//! **INSECURE** software TEE (feature `insecure-simulated-tee`) for QEMU guests without TDX and
//! for host tests. Never in a release image.
//!
//! It keeps RTMR0-3 in memory (extend = SHA-384(old ‖ digest)), produces TDREPORTs in the real
//! 1024-byte layout and v4 quotes built with the auditor's own `measure::quote` types (so the
//! auditor's parser reads them), but the quote carries no ECDSA signature: its QE vendor id is
//! the ASCII marker `INSECURE-SIM-TEE` and its certification data is a marker of type 0xFFFF. Its very first act is extending the marker
//! event [`names::INSECURE_SIMULATED_TEE`](super::events::names::INSECURE_SIMULATED_TEE) into
//! RTMR3, so RTMR3 can never equal a value a verifier expects from a real boot.
//!
//! Still missing (issue 3): signing quotes with a per-test-run PCK chain.

use measure::quote::{
    ATTESTATION_KEY_TYPE_ECDSA_P256, CertificationData, Quote, QuoteHeader, QuoteSignatureData,
    ReportData, TEE_TYPE_TDX, TdReportVersion,
};
use measure::rtmr::Rtmrs;
use measure::runtime_event::RuntimeEvent;
use measure::tdreport::{REPORT_TYPE_TDX, ReportMac, TdInfo, TdReport, TeeTcbInfo};

use super::events::names;
use super::{BootEventLog, QuoteSource, REPORT_DATA_LEN, Rtmr, RtmrIndex, Sha384Digest, TeeError};

/// Payload of the marker event.
pub const MARKER_PAYLOAD: &[u8] =
    b"measurements of this TD are simulated and must never be trusted";
/// 16-byte marker in the quote header's QE vendor id and MRTD prefix.
pub const QUOTE_MARKER: &[u8; 16] = b"INSECURE-SIM-TEE";

/// Certification-data type of the marker that stands where a PCK chain would be.
pub const MARKER_CERT_TYPE: u16 = 0xFFFF;
/// Text of that marker.
pub const MARKER_CERT_DATA: &[u8] = b"INSECURE-SIM-TEE: this quote is not signed";

/// The simulated TEE.
#[derive(Debug, Clone)]
pub struct InsecureSimulatedTee {
    rtmrs: Rtmrs,
    mrtd: Sha384Digest,
    marker: RuntimeEvent,
}

impl InsecureSimulatedTee {
    /// Creates the TEE and extends the marker event into RTMR3 before anything else.
    pub fn new() -> Self {
        let marker = RuntimeEvent::new(names::INSECURE_SIMULATED_TEE, MARKER_PAYLOAD.to_vec());
        let mut rtmrs = Rtmrs::new();
        rtmrs.extend(RtmrIndex::R3, &marker.digest());
        let mut mrtd = [0u8; 48];
        mrtd[..16].copy_from_slice(QUOTE_MARKER);
        log::warn!("INSECURE simulated TEE in use: measurements and quotes are not trustworthy");
        Self {
            rtmrs,
            mrtd: Sha384Digest(mrtd),
            marker,
        }
    }

    /// The current register values.
    pub fn rtmrs(&self) -> &Rtmrs {
        &self.rtmrs
    }

    /// The marker event extended at creation.
    pub fn marker_event(&self) -> &RuntimeEvent {
        &self.marker
    }
}

impl Default for InsecureSimulatedTee {
    fn default() -> Self {
        Self::new()
    }
}

impl Rtmr for InsecureSimulatedTee {
    fn extend_rtmr(&mut self, index: RtmrIndex, digest: &Sha384Digest) -> Result<(), TeeError> {
        self.rtmrs.extend(index, digest);
        Ok(())
    }

    fn pre_extended_events(&self) -> Vec<RuntimeEvent> {
        vec![self.marker.clone()]
    }
}

impl InsecureSimulatedTee {
    /// The TDREPORT this TEE would produce for `report_data`, with consistent
    /// TEE_TCB_INFO / TDINFO hashes (the MAC stays zero: nothing can verify it).
    pub fn td_report(&self, report_data: &[u8; REPORT_DATA_LEN]) -> TdReport {
        let mut report = TdReport {
            report_mac: ReportMac {
                report_type: [REPORT_TYPE_TDX, 0, 0, 0],
                reserved1: [0; 12],
                cpu_svn: [0; 16],
                tee_tcb_info_hash: Sha384Digest::ZERO,
                tee_info_hash: Sha384Digest::ZERO,
                report_data: ReportData(*report_data),
                reserved2: [0; 32],
                mac: [0; 32],
            },
            tee_tcb_info: TeeTcbInfo {
                valid: [0; 8],
                tee_tcb_svn: [0; 16],
                mr_seam: Sha384Digest::ZERO,
                mr_signer_seam: Sha384Digest::ZERO,
                attributes: 0,
                tee_tcb_svn2: [0; 16],
                reserved: [0; 95],
            },
            reserved: [0; 17],
            td_info: TdInfo {
                attributes: 0,
                xfam: 0,
                mr_td: self.mrtd,
                mr_config_id: Sha384Digest::ZERO,
                mr_owner: Sha384Digest::ZERO,
                mr_owner_config: Sha384Digest::ZERO,
                rtmrs: self.rtmrs,
                servtd_hash: Sha384Digest::ZERO,
                reserved: [0; 64],
            },
        };
        report.report_mac.tee_tcb_info_hash = report.computed_tee_tcb_info_hash();
        report.report_mac.tee_info_hash = report.computed_tee_info_hash();
        report
    }

    /// The v4 quote this TEE would produce: the real header and TD 1.0 body, QE vendor id
    /// [`QUOTE_MARKER`], zero signature and key, and certification data of type
    /// [`MARKER_CERT_TYPE`] holding [`MARKER_CERT_DATA`] instead of a PCK chain.
    pub fn sim_quote(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Quote {
        Quote {
            header: QuoteHeader {
                version: 4,
                attestation_key_type: ATTESTATION_KEY_TYPE_ECDSA_P256,
                tee_type: TEE_TYPE_TDX,
                reserved: [0; 4],
                qe_vendor_id: *QUOTE_MARKER,
                user_data: [0; 20],
            },
            body: self
                .td_report(report_data)
                .to_quote_body(TdReportVersion::Td10),
            signature_data: QuoteSignatureData {
                signature: [0; 64],
                attestation_key: [0; 64],
                certification: CertificationData::Other {
                    cert_type: MARKER_CERT_TYPE,
                    data: MARKER_CERT_DATA.to_vec(),
                },
                trailing: Vec::new(),
            },
            trailing_len: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("encode simulated quote")]
struct EncodeSimQuote(#[source] measure::quote::QuoteError);

impl QuoteSource for InsecureSimulatedTee {
    fn report(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError> {
        Ok(self.td_report(report_data).to_bytes())
    }

    fn quote(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError> {
        self.sim_quote(report_data)
            .to_bytes()
            .map_err(|e| TeeError::GetQuote {
                source: Box::new(EncodeSimQuote(e)),
            })
    }
}

impl BootEventLog for InsecureSimulatedTee {
    /// There is no firmware log: empty.
    fn boot_event_log(&mut self) -> Result<Vec<u8>, TeeError> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use measure::runtime_event::replay_rtmr3;

    use super::*;
    use crate::tee::events::{RuntimeEventLog, app_info_events};
    use crate::tee::testing::RecordingSink;

    #[test]
    fn marker_is_extended_first_and_logged_first() {
        let tee = InsecureSimulatedTee::new();
        let marker = RuntimeEvent::new("insecure-simulated-tee", MARKER_PAYLOAD.to_vec());
        assert_eq!(
            *tee.rtmrs().register(RtmrIndex::R3),
            replay_rtmr3([&marker])
        );
        assert_ne!(*tee.rtmrs().register(RtmrIndex::R3), Sha384Digest::ZERO);

        let mut sink = RecordingSink::default();
        let identity = crate::identity::AppIdentity {
            compose_hash: crate::identity::ComposeHash([1; 32]),
            app_id: crate::identity::AppId([1; 20]),
            instance_id_seed: vec![],
            instance_id: None,
        };
        let mut log = RuntimeEventLog::new(tee, &mut sink).unwrap();
        let plan = app_info_events(&identity, Default::default());
        log.emit_plan(plan.clone()).unwrap();
        // The log (marker first) replays to RTMR3; the plan alone does not.
        let rtmr3 = *log.rtmr().rtmrs().register(RtmrIndex::R3);
        assert_eq!(log.events()[0], marker);
        assert_eq!(replay_rtmr3(log.events()), rtmr3);
        assert_ne!(replay_rtmr3(&plan), rtmr3);
        drop(log);
        assert!(sink.lines[0].starts_with("{\"event\":\"insecure-simulated-tee\""));
    }

    #[test]
    fn quote_and_report_parse_with_the_auditors_parsers() {
        let mut tee = InsecureSimulatedTee::new();
        tee.extend_rtmr(RtmrIndex::R2, &Sha384Digest([5; 48]))
            .unwrap();
        let rd = [0x77; 64];
        let bytes = tee.quote(&rd).unwrap();
        // Known offsets (dstack-guest.md §4.2 gives them relative to the body at 48) …
        let body = 48;
        assert_eq!(&bytes[0..2], &[4, 0]);
        assert_eq!(&bytes[12..28], QUOTE_MARKER);
        assert_eq!(&bytes[body + 136..body + 184], &tee.mrtd.0);
        assert_eq!(
            &bytes[body + 424..body + 472],
            &tee.rtmrs().register(RtmrIndex::R2).0
        );
        assert_eq!(
            &bytes[body + 472..body + 520],
            &tee.rtmrs().register(RtmrIndex::R3).0
        );
        assert_eq!(&bytes[body + 520..body + 584], &rd);
        // … and the auditor's parser.
        let quote = Quote::parse(&bytes).unwrap();
        assert_eq!(quote.rtmrs(), tee.rtmrs());
        assert_eq!(quote.body.report_data, ReportData(rd));
        assert_eq!(quote.header.qe_vendor_id, *QUOTE_MARKER);
        assert_eq!(quote.trailing_len, 0);
        assert!(matches!(
            &quote.signature_data.certification,
            CertificationData::Other { cert_type: MARKER_CERT_TYPE, data } if data == MARKER_CERT_DATA
        ));

        let report_bytes = tee.report(&rd).unwrap();
        assert_eq!(report_bytes.len(), 1024);
        assert_eq!(report_bytes[0], 0x81);
        assert_eq!(&report_bytes[128..192], &rd);
        assert_eq!(
            &report_bytes[864..912],
            &tee.rtmrs().register(RtmrIndex::R3).0
        );
        let report = TdReport::parse(&report_bytes).unwrap();
        assert!(report.hashes_match());
        assert_eq!(report.td_info.rtmrs, *tee.rtmrs());
        assert!(tee.boot_event_log().unwrap().is_empty());
    }
}
