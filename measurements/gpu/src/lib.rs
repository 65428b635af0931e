//! NVIDIA confidential-GPU evidence and RIM verification (pure Rust, shared by the init and
//! auditors). Spec: `shared/specs/nvidia-gpu-attestation.md`.
//!
//! - [`report`]: the SPDM 1.1 GET_MEASUREMENTS report and its opaque TLVs, for GPUs and LS10
//!   NVSwitches (exact lengths; unknown ids, version > 1 and the `NVDAOD` format fail closed);
//! - [`certs`]: the 5-certificate device chain to the bundled NVIDIA Device Identity CA, the
//!   RIM chain to the bundled CoRIM root, the FWID extension;
//! - [`rim`]: driver / VBIOS RIMs with their XML-DSig signature (C14N, ECDSA-P384-SHA384);
//! - [`verify`]: one GPU's or NVSwitch's verdict with typed claims and every failing reason;
//! - [`topology`]: the PPCIe topology check over 8 GPU and 4 switch reports;
//! - [`evidence`]: the NVAT JSON evidence format;
//! - [`helper`]: the message types of the `cvm-gpu-evidence` JSON-lines protocol;
//! - [`ocsp`]: stapled / cached OCSP responses;
//! - [`pci`]: the independent GPU count from PCI display-class functions;
//! - [`policy`]: dstack's `gpu_policy`, the system verdict over all GPUs, and the RTMR3
//!   `gpu-policy-hash` / `gpu-attestation` event payloads.
//!
//! The library does no I/O and never reads the clock: the verification time is an input.

#![forbid(unsafe_code)]

pub mod certs;
mod der_util;
pub mod evidence;
pub mod helper;
pub mod ocsp;
pub mod pci;
pub mod policy;
pub mod report;
pub mod rim;
pub mod topology;
pub mod verify;
mod xml;

pub use verify::{
    Arch, CertStatus, ChainKind, DeviceEvidence, DeviceKind, Failure, FixedRims, GpuClaims,
    GpuEvidence, GpuVerdict, MeasurementResult, OcspMode, OcspStatus, RimBundle, RimKind,
    RimSource, SwitchArch, SwitchClaims, SwitchVerdict, VerifyOptions, verify_gpu,
    verify_gpu_with_ocsp, verify_switch, verify_switch_with_ocsp,
};
pub use xml::XmlError;

/// Seconds since the Unix epoch (UTC): the verification time, always passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct UnixTime(pub u64);
