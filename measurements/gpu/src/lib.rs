//! NVIDIA confidential-GPU evidence and RIM verification (pure Rust, shared by the init and auditors)

#![forbid(unsafe_code)]
