//! `measure`: TDX measurement math shared by the init and the auditor (RTMR extend, event-log
//! codecs, quote parsing, expected values). No `unsafe`, no I/O beyond what callers pass in.
#![forbid(unsafe_code)]

pub mod rtmr;
pub mod runtime_event;
