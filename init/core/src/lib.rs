//! Pure, host-testable logic of the cvm-init PID 1: command-line configuration, the boot plan,
//! results-channel records, module load lists, and (later) dstack formats. No I/O, no `unsafe`.
#![forbid(unsafe_code)]

pub mod app_compose;
pub mod backoff;
pub mod cmdline;
pub mod error_chain;
pub mod gates;
pub mod gateway;
pub mod host_api;
pub mod host_share;
pub mod identity;
pub mod input;
pub mod kernel_contract;
pub mod modules;
pub mod mountinfo;
pub mod net;
pub mod plan;
pub mod procfs;
pub mod results;
pub mod tee;
