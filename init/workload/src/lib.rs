//! Workloads: compose subset, digest-pinned OCI pull, safe layer unpack, OCI runtime spec

#![forbid(unsafe_code)]
