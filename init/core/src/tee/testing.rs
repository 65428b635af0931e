//! Recording fakes of the TEE traits, for tests here and in `pid1` (feature `testing`).

use measure::rtmr::Rtmrs;

use super::events::EventLogSink;
use super::{
    BootEventLog, BoxError, QuoteSource, REPORT_DATA_LEN, Rtmr, RtmrIndex, Sha384Digest,
    TDREPORT_LEN, TeeError,
};

/// One call a [`FakeTee`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeeCall {
    /// [`Rtmr::extend_rtmr`].
    ExtendRtmr {
        /// Register.
        index: RtmrIndex,
        /// Digest extended.
        digest: Sha384Digest,
    },
    /// [`QuoteSource::report`].
    Report {
        /// Report data.
        report_data: [u8; REPORT_DATA_LEN],
    },
    /// [`QuoteSource::quote`].
    Quote {
        /// Report data.
        report_data: [u8; REPORT_DATA_LEN],
    },
    /// [`BootEventLog::boot_event_log`].
    BootEventLog,
}

/// A fake TEE that records every call, keeps RTMRs in memory and fails on request.
#[derive(Debug, Default)]
pub struct FakeTee {
    /// Calls in order (failed ones included).
    pub calls: Vec<TeeCall>,
    /// Register values.
    pub rtmrs: Rtmrs,
    /// Refuse the extend with this zero-based extend-call number.
    pub fail_extend_at: Option<usize>,
    /// Refuse quotes and reports.
    pub fail_quote: bool,
    /// Returned by [`BootEventLog::boot_event_log`].
    pub boot_log: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("fake TEE refused the request")]
struct FakeRefusal;

impl Rtmr for FakeTee {
    fn extend_rtmr(&mut self, index: RtmrIndex, digest: &Sha384Digest) -> Result<(), TeeError> {
        let nth = self
            .calls
            .iter()
            .filter(|c| matches!(c, TeeCall::ExtendRtmr { .. }))
            .count();
        self.calls.push(TeeCall::ExtendRtmr {
            index,
            digest: *digest,
        });
        if self.fail_extend_at == Some(nth) {
            return Err(TeeError::ExtendRtmr {
                index,
                digest: *digest,
                source: Box::new(FakeRefusal),
            });
        }
        self.rtmrs.extend(index, digest);
        Ok(())
    }
}

impl QuoteSource for FakeTee {
    fn report(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError> {
        self.calls.push(TeeCall::Report {
            report_data: *report_data,
        });
        if self.fail_quote {
            return Err(TeeError::GetReport {
                source: Box::new(FakeRefusal),
            });
        }
        let mut report = vec![0u8; TDREPORT_LEN];
        report[128..192].copy_from_slice(report_data);
        Ok(report)
    }

    fn quote(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError> {
        self.calls.push(TeeCall::Quote {
            report_data: *report_data,
        });
        if self.fail_quote {
            return Err(TeeError::GetQuote {
                source: Box::new(FakeRefusal),
            });
        }
        let mut quote = b"FAKE-QUOTE:".to_vec();
        quote.extend_from_slice(report_data);
        Ok(quote)
    }
}

impl BootEventLog for FakeTee {
    fn boot_event_log(&mut self) -> Result<Vec<u8>, TeeError> {
        self.calls.push(TeeCall::BootEventLog);
        Ok(self.boot_log.clone())
    }
}

/// An [`EventLogSink`] that keeps the lines in memory.
#[derive(Debug, Default)]
pub struct RecordingSink {
    /// Lines appended, each with its `\n`.
    pub lines: Vec<String>,
    /// Fail every append.
    pub fail: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("recording sink refused the append")]
struct SinkRefusal;

impl EventLogSink for RecordingSink {
    fn append_line(&mut self, line: &str) -> Result<(), BoxError> {
        if self.fail {
            return Err(Box::new(SinkRefusal));
        }
        self.lines.push(line.to_owned());
        Ok(())
    }
}
