//! Test-only NVML stand-in serving recorded evidence (never shipped)

#![forbid(unsafe_code)]
