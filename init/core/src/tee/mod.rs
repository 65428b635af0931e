//! The TEE as the init sees it: narrow traits for extending RTMRs, getting TDREPORTs and quotes,
//! and reading the firmware's boot event log; the RTMR3 runtime event log; and the dstack event
//! sequence as a pure plan.
//!
//! Backends: `pid1` wires the real TDX interfaces of `init-sys` (tsm-mr sysfs or the legacy
//! ioctl for extends, configfs-tsm for quotes, `TDX_CMD_GET_REPORT0`, CCEL) behind these traits;
//! the crate `cvm-sim-tee` (`init/sim-tee`, only in `insecure-simulated-tee` builds) is a software
//! TEE for QEMU without TDX and host tests; [`testing`] holds recording fakes.

pub mod events;
pub mod report_data;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use measure::rtmr::extend;
pub use measure::rtmr::{RtmrIndex, Sha384Digest};
pub use measure::runtime_event::{self, EventLogVersion, RuntimeEvent};

/// A boxed backend error, so backend-specific errors (`init-sys`) keep their chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Length of the report data bound into a TDREPORT or quote.
pub const REPORT_DATA_LEN: usize = 64;
/// Length of a TDREPORT_STRUCT.
pub const TDREPORT_LEN: usize = 1024;

/// Errors of a TEE backend.
#[derive(Debug, thiserror::Error)]
pub enum TeeError {
    /// The backend refused or failed the extend.
    #[error("extend RTMR{index} with {digest}")]
    ExtendRtmr {
        index: RtmrIndex,
        digest: Sha384Digest,
        #[source]
        source: BoxError,
    },
    /// The register read back after an extend is not SHA-384(before ‖ digest).
    #[error("RTMR{index} reads {actual} after extend, expected {expected}")]
    ExtendNotApplied {
        index: RtmrIndex,
        expected: Sha384Digest,
        actual: Sha384Digest,
    },
    /// Getting a TDREPORT failed.
    #[error("get TDREPORT")]
    GetReport {
        #[source]
        source: BoxError,
    },
    /// Getting a quote failed.
    #[error("get quote")]
    GetQuote {
        #[source]
        source: BoxError,
    },
    /// Reading the firmware boot event log failed.
    #[error("read boot event log")]
    ReadBootEventLog {
        #[source]
        source: BoxError,
    },
}

/// Extends measurement registers.
pub trait Rtmr {
    /// Extends register `index` with `digest` (`RTMR_new = SHA-384(RTMR_old ‖ digest)`) and
    /// returns only once the backend confirmed it.
    fn extend_rtmr(&mut self, index: RtmrIndex, digest: &Sha384Digest) -> Result<(), TeeError>;

    /// Runtime events the backend extended into RTMR3 on its own before the init could log
    /// them (the simulated TEE's marker). The event log records them first so the log still
    /// replays to RTMR3. Real hardware backends have none.
    fn pre_extended_events(&self) -> Vec<RuntimeEvent> {
        Vec::new()
    }
}

/// Produces TDREPORTs and quotes.
pub trait QuoteSource {
    /// A TDREPORT (1024 bytes) whose REPORTDATA is `report_data`.
    fn report(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError>;
    /// A quote whose report data is `report_data`.
    fn quote(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError>;
    /// The firmware boot event log (CCEL) that a quote's RTMR0-2 replay, for attaching to a
    /// quote (the RA-TLS certificate's event log carries these boot events as dstack's do).
    /// Default: none (a source without a firmware log).
    fn quoted_boot_event_log(&mut self) -> Result<Vec<u8>, TeeError> {
        Ok(Vec::new())
    }
}

/// Reads the firmware's boot event log (TCG crypto-agile, the CCEL log area on TDX).
pub trait BootEventLog {
    /// The raw log bytes.
    fn boot_event_log(&mut self) -> Result<Vec<u8>, TeeError>;
}

/// Everything the init needs from a TEE.
pub trait Tee: Rtmr + QuoteSource + BootEventLog {}

impl<T: Rtmr + QuoteSource + BootEventLog + ?Sized> Tee for T {}

impl<T: Rtmr + ?Sized> Rtmr for &mut T {
    fn extend_rtmr(&mut self, index: RtmrIndex, digest: &Sha384Digest) -> Result<(), TeeError> {
        (**self).extend_rtmr(index, digest)
    }

    fn pre_extended_events(&self) -> Vec<RuntimeEvent> {
        (**self).pre_extended_events()
    }
}

impl<T: QuoteSource + ?Sized> QuoteSource for &mut T {
    fn report(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError> {
        (**self).report(report_data)
    }

    fn quote(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError> {
        (**self).quote(report_data)
    }

    fn quoted_boot_event_log(&mut self) -> Result<Vec<u8>, TeeError> {
        (**self).quoted_boot_event_log()
    }
}

impl<T: BootEventLog + ?Sized> BootEventLog for &mut T {
    fn boot_event_log(&mut self) -> Result<Vec<u8>, TeeError> {
        (**self).boot_event_log()
    }
}

impl<T: Rtmr + ?Sized> Rtmr for Box<T> {
    fn extend_rtmr(&mut self, index: RtmrIndex, digest: &Sha384Digest) -> Result<(), TeeError> {
        (**self).extend_rtmr(index, digest)
    }

    fn pre_extended_events(&self) -> Vec<RuntimeEvent> {
        (**self).pre_extended_events()
    }
}

impl<T: QuoteSource + ?Sized> QuoteSource for Box<T> {
    fn report(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError> {
        (**self).report(report_data)
    }

    fn quote(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError> {
        (**self).quote(report_data)
    }

    fn quoted_boot_event_log(&mut self) -> Result<Vec<u8>, TeeError> {
        (**self).quoted_boot_event_log()
    }
}

impl<T: BootEventLog + ?Sized> BootEventLog for Box<T> {
    fn boot_event_log(&mut self) -> Result<Vec<u8>, TeeError> {
        (**self).boot_event_log()
    }
}

/// Checks a read-back after an extend: `after` must be SHA-384(`before` ‖ `digest`). Backends
/// that can read the register (tsm-mr sysfs) call this so a driver that silently ignored the
/// write is caught.
pub fn check_extend(
    index: RtmrIndex,
    before: &Sha384Digest,
    digest: &Sha384Digest,
    after: &Sha384Digest,
) -> Result<(), TeeError> {
    let expected = extend(before, digest);
    if *after != expected {
        return Err(TeeError::ExtendNotApplied {
            index,
            expected,
            actual: *after,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_extend_accepts_only_the_extend_value() {
        let before = Sha384Digest([1; 48]);
        let digest = Sha384Digest([2; 48]);
        let good = extend(&before, &digest);
        check_extend(RtmrIndex::R3, &before, &digest, &good).unwrap();
        // A driver that stored the digest instead of extending.
        match check_extend(RtmrIndex::R3, &before, &digest, &digest) {
            Err(TeeError::ExtendNotApplied {
                index,
                expected,
                actual,
            }) => {
                assert_eq!(index, RtmrIndex::R3);
                assert_eq!(expected, good);
                assert_eq!(actual, digest);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
