//! NVML loaded at run time with `dlopen` (`libnvidia-ml.so.1`): the only unsafe code of the
//! helper. Every call goes through a function pointer resolved once from the library, which
//! stays loaded for as long as the pointers exist (both live in [`Nvml`]).
//!
//! ABI (spec `nvidia-gpu-attestation.md` §1.1): every `unsigned int` is `u32`, the return
//! value is `nvmlReturn_t` (0 = success), structures are plain C layout.

use std::ffi::{CStr, c_char, c_uint, c_void};

use libloading::Library;
use nv_verify::policy::CcState;
use thiserror::Error;

/// The library NVIDIA ships with the driver.
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

/// `nvmlSystemConfComputeSettings_t` version: `sizeof | (1 << 24)`.
pub const CC_SETTINGS_VERSION: u32 = 20 | (1 << 24);
/// Buffer for `nvmlDeviceGetUUID` / `nvmlSystemGetDriverVersion`.
const TEXT_LEN: c_uint = 80;
/// Buffer for `nvmlDeviceGetVbiosVersion`.
const VBIOS_LEN: c_uint = 32;
/// Capacity of `attestationReport`.
pub const REPORT_CAPACITY: usize = 0x2000;
/// Capacity of `cecAttestationReport`.
pub const CEC_REPORT_CAPACITY: usize = 0x1000;
/// Capacity of `certChain`.
pub const CERT_CHAIN_CAPACITY: usize = 0x1000;
/// Capacity of `attestationCertChain`.
pub const ATTESTATION_CERT_CHAIN_CAPACITY: usize = 0x1400;

/// `nvmlSystemConfComputeSettings_t`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ConfComputeSettings {
    pub version: u32,
    pub environment: u32,
    pub cc_feature: u32,
    pub devtools_mode: u32,
    pub multi_gpu_mode: u32,
}

/// `nvmlConfComputeGpuAttestationReport_t`.
#[repr(C)]
#[derive(Debug)]
pub struct GpuAttestationReport {
    pub is_cec_attestation_report_present: u32,
    pub attestation_report_size: u32,
    pub cec_attestation_report_size: u32,
    pub nonce: [u8; 32],
    pub attestation_report: [u8; REPORT_CAPACITY],
    pub cec_attestation_report: [u8; CEC_REPORT_CAPACITY],
}

/// `nvmlConfComputeGpuCertificate_t`.
#[repr(C)]
#[derive(Debug)]
pub struct GpuCertificate {
    pub cert_chain_size: u32,
    pub attestation_cert_chain_size: u32,
    pub cert_chain: [u8; CERT_CHAIN_CAPACITY],
    pub attestation_cert_chain: [u8; ATTESTATION_CERT_CHAIN_CAPACITY],
}

type Device = *mut c_void;
type NvmlReturn = c_uint;

/// Why an NVML operation failed.
#[derive(Debug, Error)]
pub enum NvmlError {
    /// `dlopen` failed (no driver, wrong glibc, ...).
    #[error("load {path}")]
    LoadLibrary {
        path: String,
        #[source]
        source: libloading::Error,
    },
    /// A required symbol is missing (driver too old for confidential computing).
    #[error("find NVML symbol {name}")]
    FindSymbol {
        name: &'static str,
        #[source]
        source: libloading::Error,
    },
    /// An NVML call returned an error code.
    #[error("{function} failed with NVML error {code} ({message})")]
    Call {
        function: &'static str,
        code: u32,
        message: String,
    },
    /// NVML reported a size larger than its own buffer.
    #[error("{function} reported {size} bytes, more than the {capacity}-byte buffer")]
    CheckSize {
        function: &'static str,
        size: usize,
        capacity: usize,
    },
}

/// Resolved entry points, copied out of the library's symbols.
struct Api {
    shutdown: unsafe extern "C" fn() -> NvmlReturn,
    error_string: unsafe extern "C" fn(NvmlReturn) -> *const c_char,
    device_get_count: unsafe extern "C" fn(*mut c_uint) -> NvmlReturn,
    device_get_handle_by_index: unsafe extern "C" fn(c_uint, *mut Device) -> NvmlReturn,
    device_get_architecture: unsafe extern "C" fn(Device, *mut c_uint) -> NvmlReturn,
    device_get_uuid: unsafe extern "C" fn(Device, *mut c_char, c_uint) -> NvmlReturn,
    device_get_vbios_version: unsafe extern "C" fn(Device, *mut c_char, c_uint) -> NvmlReturn,
    system_get_driver_version: unsafe extern "C" fn(*mut c_char, c_uint) -> NvmlReturn,
    system_get_cc_settings: unsafe extern "C" fn(*mut ConfComputeSettings) -> NvmlReturn,
    device_get_attestation_report:
        unsafe extern "C" fn(Device, *mut GpuAttestationReport) -> NvmlReturn,
    device_get_certificate: unsafe extern "C" fn(Device, *mut GpuCertificate) -> NvmlReturn,
    system_get_ready_state: unsafe extern "C" fn(*mut c_uint) -> NvmlReturn,
    system_set_ready_state: unsafe extern "C" fn(c_uint) -> NvmlReturn,
}

/// A loaded and initialized NVML. Dropping it calls `nvmlShutdown` and unloads the library.
pub struct Nvml {
    api: Api,
    // Keeps the code behind every pointer in `api` mapped; dropped after `Drop::drop` ran.
    _library: Library,
}

impl std::fmt::Debug for Nvml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nvml").finish_non_exhaustive()
    }
}

/// Identity of one GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `GPU-…` UUID.
    pub uuid: String,
    /// `nvmlDeviceGetArchitecture` (9 Hopper, 10 Blackwell).
    pub architecture: u32,
    /// VBIOS version string.
    pub vbios_version: String,
}

/// Evidence of one GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEvidence {
    /// `attestationReport[0..attestationReportSize]`.
    pub report: Vec<u8>,
    /// `attestationCertChain[0..attestationCertChainSize]`.
    pub cert_chain: Vec<u8>,
}

/// Resolves `name` (NUL-terminated) as a function pointer of type `T`.
///
/// # Safety
/// `T` must be the exact C signature NVML declares for `name` (the types above follow
/// `nvml.h` as documented in the spec, §1.1).
unsafe fn symbol<T: Copy>(library: &Library, name: &'static str) -> Result<T, NvmlError> {
    let c_name = name.as_bytes();
    // SAFETY: the caller guarantees `T` is the symbol's C signature; the pointer is copied
    // out and used only while `library` stays loaded (both are owned by `Nvml`).
    let found = unsafe { library.get::<T>(c_name) };
    found.map(|s| *s).map_err(|source| NvmlError::FindSymbol {
        name: name.trim_end_matches('\0'),
        source,
    })
}

fn text_from(buffer: &[u8]) -> String {
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

impl Nvml {
    /// `dlopen`s `path`, resolves every function the helper uses and calls `nvmlInit_v2`.
    pub fn load(path: &str) -> Result<Self, NvmlError> {
        // SAFETY: loading NVML runs its ELF constructors; libnvidia-ml.so.1 (or the test
        // stand-in) has no initializers with preconditions on the caller. The helper is a
        // dynamically linked glibc program, as dlopen of a glibc object requires.
        let library = unsafe { Library::new(path) }.map_err(|source| NvmlError::LoadLibrary {
            path: path.to_owned(),
            source,
        })?;
        // SAFETY: nvmlInit_v2 is declared `nvmlReturn_t nvmlInit_v2(void)`.
        let init: unsafe extern "C" fn() -> NvmlReturn =
            unsafe { symbol(&library, "nvmlInit_v2\0") }?;
        // SAFETY: each field's type is the signature nvml.h declares for that name: return
        // nvmlReturn_t (u32), `unsigned int` as u32, handles as pointers, structures as the
        // #[repr(C)] types above (sizes checked in the tests).
        let api = unsafe {
            Api {
                shutdown: symbol(&library, "nvmlShutdown\0")?,
                error_string: symbol(&library, "nvmlErrorString\0")?,
                device_get_count: symbol(&library, "nvmlDeviceGetCount_v2\0")?,
                device_get_handle_by_index: symbol(&library, "nvmlDeviceGetHandleByIndex_v2\0")?,
                device_get_architecture: symbol(&library, "nvmlDeviceGetArchitecture\0")?,
                device_get_uuid: symbol(&library, "nvmlDeviceGetUUID\0")?,
                device_get_vbios_version: symbol(&library, "nvmlDeviceGetVbiosVersion\0")?,
                system_get_driver_version: symbol(&library, "nvmlSystemGetDriverVersion\0")?,
                system_get_cc_settings: symbol(&library, "nvmlSystemGetConfComputeSettings\0")?,
                device_get_attestation_report: symbol(
                    &library,
                    "nvmlDeviceGetConfComputeGpuAttestationReport\0",
                )?,
                device_get_certificate: symbol(
                    &library,
                    "nvmlDeviceGetConfComputeGpuCertificate\0",
                )?,
                system_get_ready_state: symbol(
                    &library,
                    "nvmlSystemGetConfComputeGpusReadyState\0",
                )?,
                system_set_ready_state: symbol(
                    &library,
                    "nvmlSystemSetConfComputeGpusReadyState\0",
                )?,
            }
        };
        let nvml = Self {
            api,
            _library: library,
        };
        // SAFETY: nvmlInit_v2 takes no arguments; the library is loaded.
        let code = unsafe { init() };
        if code != 0 {
            // Not initialized: Drop still calls nvmlShutdown, which then returns an error code
            // that Drop ignores.
            return Err(nvml.error("nvmlInit_v2", code));
        }
        Ok(nvml)
    }

    fn error(&self, function: &'static str, code: NvmlReturn) -> NvmlError {
        // SAFETY: nvmlErrorString accepts any code and returns a pointer to a static,
        // NUL-terminated string (or NULL, handled below).
        let ptr = unsafe { (self.api.error_string)(code) };
        let message = if ptr.is_null() {
            String::from("unknown")
        } else {
            // SAFETY: non-NULL pointers from nvmlErrorString are static NUL-terminated C
            // strings owned by the library, which stays loaded.
            unsafe { CStr::from_ptr(ptr) }
                .to_string_lossy()
                .into_owned()
        };
        NvmlError::Call {
            function,
            code,
            message,
        }
    }

    fn check(&self, function: &'static str, code: NvmlReturn) -> Result<(), NvmlError> {
        if code == 0 {
            Ok(())
        } else {
            Err(self.error(function, code))
        }
    }

    /// `nvmlSystemGetDriverVersion`.
    pub fn driver_version(&self) -> Result<String, NvmlError> {
        let mut buffer = [0u8; TEXT_LEN as usize];
        // SAFETY: the buffer is writable for TEXT_LEN bytes, passed as the capacity.
        let code =
            unsafe { (self.api.system_get_driver_version)(buffer.as_mut_ptr().cast(), TEXT_LEN) };
        self.check("nvmlSystemGetDriverVersion", code)?;
        Ok(text_from(&buffer))
    }

    /// `nvmlSystemGetConfComputeSettings` (version field set as NVML requires).
    pub fn cc_state(&self) -> Result<CcState, NvmlError> {
        let mut settings = ConfComputeSettings {
            version: CC_SETTINGS_VERSION,
            ..ConfComputeSettings::default()
        };
        // SAFETY: `settings` is a valid, writable nvmlSystemConfComputeSettings_t whose
        // version field announces its size.
        let code = unsafe { (self.api.system_get_cc_settings)(&mut settings) };
        self.check("nvmlSystemGetConfComputeSettings", code)?;
        Ok(CcState {
            environment: settings.environment,
            cc_feature: settings.cc_feature,
            devtools_mode: settings.devtools_mode,
            multi_gpu_mode: settings.multi_gpu_mode,
        })
    }

    /// `nvmlDeviceGetCount_v2`.
    pub fn device_count(&self) -> Result<u32, NvmlError> {
        let mut count: c_uint = 0;
        // SAFETY: `count` is a valid, writable u32.
        let code = unsafe { (self.api.device_get_count)(&mut count) };
        self.check("nvmlDeviceGetCount_v2", code)?;
        Ok(count)
    }

    fn handle(&self, index: u32) -> Result<Device, NvmlError> {
        let mut device: Device = std::ptr::null_mut();
        // SAFETY: `device` is a valid, writable handle slot; NVML validates the index.
        let code = unsafe { (self.api.device_get_handle_by_index)(index, &mut device) };
        self.check("nvmlDeviceGetHandleByIndex_v2", code)?;
        Ok(device)
    }

    /// UUID, architecture and VBIOS version of device `index`.
    pub fn device(&self, index: u32) -> Result<DeviceInfo, NvmlError> {
        let device = self.handle(index)?;
        let mut uuid = [0u8; TEXT_LEN as usize];
        let mut vbios = [0u8; VBIOS_LEN as usize];
        let mut architecture: c_uint = 0;
        // SAFETY: `device` came from nvmlDeviceGetHandleByIndex_v2 on this NVML; each buffer
        // is writable for the length passed with it.
        let code =
            unsafe { (self.api.device_get_uuid)(device, uuid.as_mut_ptr().cast(), TEXT_LEN) };
        self.check("nvmlDeviceGetUUID", code)?;
        // SAFETY: as above.
        let code = unsafe {
            (self.api.device_get_vbios_version)(device, vbios.as_mut_ptr().cast(), VBIOS_LEN)
        };
        self.check("nvmlDeviceGetVbiosVersion", code)?;
        // SAFETY: `device` is a valid handle and `architecture` a writable u32.
        let code = unsafe { (self.api.device_get_architecture)(device, &mut architecture) };
        self.check("nvmlDeviceGetArchitecture", code)?;
        Ok(DeviceInfo {
            uuid: text_from(&uuid),
            architecture,
            vbios_version: text_from(&vbios),
        })
    }

    /// The attestation report for `nonce` and the attestation certificate chain of device
    /// `index`.
    pub fn evidence(&self, index: u32, nonce: &[u8; 32]) -> Result<DeviceEvidence, NvmlError> {
        let device = self.handle(index)?;
        let mut report = Box::new(GpuAttestationReport {
            is_cec_attestation_report_present: 0,
            attestation_report_size: 0,
            cec_attestation_report_size: 0,
            nonce: *nonce,
            attestation_report: [0; REPORT_CAPACITY],
            cec_attestation_report: [0; CEC_REPORT_CAPACITY],
        });
        // SAFETY: `report` is a zeroed, writable nvmlConfComputeGpuAttestationReport_t with
        // the nonce as input; `device` is a valid handle of this NVML.
        let code = unsafe { (self.api.device_get_attestation_report)(device, &mut *report) };
        self.check("nvmlDeviceGetConfComputeGpuAttestationReport", code)?;
        let size = report.attestation_report_size as usize;
        let report_bytes = report
            .attestation_report
            .get(..size)
            .ok_or(NvmlError::CheckSize {
                function: "nvmlDeviceGetConfComputeGpuAttestationReport",
                size,
                capacity: REPORT_CAPACITY,
            })?
            .to_vec();
        let mut certificate = Box::new(GpuCertificate {
            cert_chain_size: 0,
            attestation_cert_chain_size: 0,
            cert_chain: [0; CERT_CHAIN_CAPACITY],
            attestation_cert_chain: [0; ATTESTATION_CERT_CHAIN_CAPACITY],
        });
        // SAFETY: `certificate` is a zeroed, writable nvmlConfComputeGpuCertificate_t;
        // `device` is a valid handle of this NVML.
        let code = unsafe { (self.api.device_get_certificate)(device, &mut *certificate) };
        self.check("nvmlDeviceGetConfComputeGpuCertificate", code)?;
        let size = certificate.attestation_cert_chain_size as usize;
        let chain = certificate
            .attestation_cert_chain
            .get(..size)
            .ok_or(NvmlError::CheckSize {
                function: "nvmlDeviceGetConfComputeGpuCertificate",
                size,
                capacity: ATTESTATION_CERT_CHAIN_CAPACITY,
            })?
            .to_vec();
        Ok(DeviceEvidence {
            report: report_bytes,
            cert_chain: chain,
        })
    }

    /// `nvmlSystemGetConfComputeGpusReadyState` (system-wide; 1 = accepting work).
    pub fn ready_state(&self) -> Result<u32, NvmlError> {
        let mut state: c_uint = 0;
        // SAFETY: `state` is a valid, writable u32.
        let code = unsafe { (self.api.system_get_ready_state)(&mut state) };
        self.check("nvmlSystemGetConfComputeGpusReadyState", code)?;
        Ok(state)
    }

    /// `nvmlSystemSetConfComputeGpusReadyState(state)` (system-wide, needs root).
    pub fn set_ready_state(&self, state: u32) -> Result<(), NvmlError> {
        // SAFETY: takes a plain integer.
        let code = unsafe { (self.api.system_set_ready_state)(state) };
        self.check("nvmlSystemSetConfComputeGpusReadyState", code)
    }
}

impl Drop for Nvml {
    fn drop(&mut self) {
        // SAFETY: nvmlShutdown takes no arguments; the library is still loaded (`_library`
        // is dropped after this body). Its return code is irrelevant at teardown.
        let _ = unsafe { (self.api.shutdown)() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_sizes_match_nvml_h() {
        assert_eq!(size_of::<ConfComputeSettings>(), 20);
        assert_eq!(CC_SETTINGS_VERSION, 0x0100_0014);
        assert_eq!(size_of::<GpuAttestationReport>(), 12 + 32 + 0x2000 + 0x1000);
        assert_eq!(size_of::<GpuCertificate>(), 8 + 0x1000 + 0x1400);
        assert_eq!(std::mem::offset_of!(GpuAttestationReport, nonce), 12);
        assert_eq!(
            std::mem::offset_of!(GpuCertificate, attestation_cert_chain),
            8 + 0x1000
        );
    }

    #[test]
    fn missing_library_is_a_typed_error() {
        let error = Nvml::load("/nonexistent/libnvidia-ml.so.1").unwrap_err();
        assert!(matches!(error, NvmlError::LoadLibrary { .. }), "{error:?}");
    }
}
