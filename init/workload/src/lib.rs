//! Workloads: compose subset, digest-pinned OCI pull, safe layer unpack, OCI runtime spec.
//!
//! Everything here is either pure (compose model, runtime-spec generation, supervisor state
//! machine) or plain file/HTTP I/O without `unsafe` (pull, unpack). Launching containers is the
//! job of the libcontainer adapter in `init/pid1`. The compose model and parser are the pure
//! `cvm-compose` crate (shared with the auditor), re-exported here as `compose` and `digest`.

#![forbid(unsafe_code)]

pub use cvm_compose as compose;
pub use cvm_compose::digest;

pub mod devices;
pub mod gpu;
pub mod logs;
pub mod network;
pub mod oci;
pub mod prepare;
pub mod pull;
pub mod registry;
pub mod seccomp;
pub mod spec;
pub mod stream;
pub mod supervisor;
pub mod unpack;
