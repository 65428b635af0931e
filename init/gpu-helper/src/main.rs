//! Dynamically linked helper that collects NVIDIA GPU attestation evidence through NVML

fn main() {}
