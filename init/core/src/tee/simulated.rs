//! **INSECURE** software TEE (feature `insecure-simulated-tee`) for QEMU guests without TDX and
//! for host tests. Never in a release image.
//!
//! It keeps RTMR0-3 in memory (extend = SHA-384(old ‖ digest)), produces TDREPORTs in the real
//! 1024-byte layout and quotes in the real v4 header + TD-body layout (so the auditor's quote
//! parser reads them), but the quote carries no ECDSA signature: its QE vendor id and signature
//! area are the ASCII marker `INSECURE-SIM-TEE`. Its very first act is extending the marker
//! event [`names::INSECURE_SIMULATED_TEE`](super::events::names::INSECURE_SIMULATED_TEE) into
//! RTMR3, so RTMR3 can never equal a value a verifier expects from a real boot.
//!
//! Still missing (issue 3): signing quotes with a per-test-run PCK chain.

use measure::rtmr::Rtmrs;
use measure::runtime_event::RuntimeEvent;

use super::events::names;
use super::{
    BootEventLog, QuoteSource, REPORT_DATA_LEN, Rtmr, RtmrIndex, Sha384Digest, TDREPORT_LEN,
    TeeError,
};

/// Payload of the marker event.
pub const MARKER_PAYLOAD: &[u8] =
    b"measurements of this TD are simulated and must never be trusted";
/// 16-byte marker in the quote header's QE vendor id and MRTD prefix.
pub const QUOTE_MARKER: &[u8; 16] = b"INSECURE-SIM-TEE";

/// Quote v4 layout (`specs/tdx.md` §1, `dstack-guest.md` §4.2).
mod quote_layout {
    pub(super) const HEADER_LEN: usize = 48;
    pub(super) const BODY_LEN: usize = 584;
    pub(super) const QE_VENDOR_ID: usize = 12;
    pub(super) const MR_TD: usize = 136;
    pub(super) const RTMR0: usize = 328;
    pub(super) const REPORT_DATA: usize = 520;
    pub(super) const SIG_DATA_LEN: usize = HEADER_LEN + BODY_LEN;
}

/// TDREPORT layout (`specs/tdx.md` §2).
mod report_layout {
    pub(super) const REPORT_TYPE: usize = 0;
    pub(super) const REPORT_DATA: usize = 128;
    pub(super) const MR_TD: usize = 528;
    pub(super) const RTMR0: usize = 720;
}

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

fn put(buf: &mut [u8], offset: usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(offset..offset + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

impl QuoteSource for InsecureSimulatedTee {
    fn report(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError> {
        use report_layout::*;
        let mut report = vec![0u8; TDREPORT_LEN];
        put(&mut report, REPORT_TYPE, &[0x81, 0, 0, 0]);
        put(&mut report, REPORT_DATA, report_data);
        put(&mut report, MR_TD, &self.mrtd.0);
        for index in RtmrIndex::ALL {
            let at = RTMR0 + index.position() * 48;
            put(&mut report, at, &self.rtmrs.register(index).0);
        }
        Ok(report)
    }

    fn quote(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError> {
        use quote_layout::*;
        let signature = b"INSECURE-SIM-TEE: this quote is not signed";
        let mut quote = vec![0u8; SIG_DATA_LEN + 4 + signature.len()];
        put(&mut quote, 0, &4u16.to_le_bytes()); // version 4
        put(&mut quote, 2, &2u16.to_le_bytes()); // ECDSA-256 with P-256
        put(&mut quote, 4, &0x81u32.to_le_bytes()); // TEE type TDX
        put(&mut quote, QE_VENDOR_ID, QUOTE_MARKER);
        put(&mut quote, MR_TD, &self.mrtd.0);
        for index in RtmrIndex::ALL {
            let at = RTMR0 + index.position() * 48;
            put(&mut quote, at, &self.rtmrs.register(index).0);
        }
        put(&mut quote, REPORT_DATA, report_data);
        let sig_len = u32::try_from(signature.len()).unwrap_or(u32::MAX);
        put(&mut quote, SIG_DATA_LEN, &sig_len.to_le_bytes());
        put(&mut quote, SIG_DATA_LEN + 4, signature);
        Ok(quote)
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
    fn quote_and_report_layouts() {
        let mut tee = InsecureSimulatedTee::new();
        tee.extend_rtmr(RtmrIndex::R2, &Sha384Digest([5; 48]))
            .unwrap();
        let rd = [0x77; 64];
        let quote = tee.quote(&rd).unwrap();
        assert_eq!(&quote[0..2], &[4, 0]);
        assert_eq!(&quote[4..8], &[0x81, 0, 0, 0]);
        assert_eq!(&quote[12..28], QUOTE_MARKER);
        assert_eq!(&quote[520..584], &rd);
        assert_eq!(&quote[424..472], &tee.rtmrs().register(RtmrIndex::R2).0);
        assert_eq!(&quote[472..520], &tee.rtmrs().register(RtmrIndex::R3).0);
        let sig_len = u32::from_le_bytes(quote[632..636].try_into().unwrap());
        assert_eq!(quote.len(), 636 + usize::try_from(sig_len).unwrap());

        let report = tee.report(&rd).unwrap();
        assert_eq!(report.len(), 1024);
        assert_eq!(report[0], 0x81);
        assert_eq!(&report[128..192], &rd);
        assert_eq!(&report[864..912], &tee.rtmrs().register(RtmrIndex::R3).0);
        assert!(tee.boot_event_log().unwrap().is_empty());
    }
}
