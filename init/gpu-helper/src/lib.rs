//! `cvm-gpu-evidence`: the dynamically linked helper beside the static init. It loads
//! `libnvidia-ml.so.1` at run time, collects each GPU's attestation report (for a nonce the
//! init chooses) and certificate chain, reports the CC and ready state, counts GPUs on the PCI
//! bus, and sets the ready state only when told to. It verifies nothing: the init verifies
//! with `nv-verify` and measures the result first.
//!
//! **Unsafe exception**: the workspace denies `unsafe_code` outside `init-sys`; this crate
//! allows it at crate level because calling NVML through `dlopen` is FFI. All of it is in
//! [`nvml`], each block with a `// SAFETY:` comment.

#![allow(unsafe_code)]

pub mod nvml;
pub mod protocol;
pub mod sysfs;

/// Environment variable naming the NVML library to load (default
/// [`nvml::DEFAULT_LIBRARY`]); tests point it at the `fake-nvml` stand-in.
pub const LIBRARY_ENV: &str = "CVM_NVML_LIBRARY";
/// Environment variable naming the sysfs root for the PCI count (default `/sys`).
pub const SYSFS_ENV: &str = "CVM_GPU_SYSFS";
