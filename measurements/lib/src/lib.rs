//! `measure`: TDX measurement math shared by the init and the auditor (RTMR extend, event-log
//! codecs, quote parsing, expected values). No `unsafe`, no I/O beyond what callers pass in.
#![forbid(unsafe_code)]

pub mod bytes;
pub mod ccel;
pub mod dstack_event_log;
pub mod dstack_identity;
pub mod event_log;
pub mod expected;
pub mod kernel;
pub mod quote;
#[cfg(feature = "dcap-verify")]
pub mod quote_verify;
pub mod replay;
pub mod rtmr;
pub mod runtime_event;
pub mod tdreport;
pub mod tdvf;
