//! Test-only NVML stand-in serving recorded evidence (never shipped).
//!
//! Built as a shared object and loaded by `cvm-gpu-evidence` through the same `dlopen` path
//! as the real `libnvidia-ml.so.1`, so CI exercises the helper's FFI without a GPU. It
//! implements exactly the functions the helper resolves. Configuration (environment):
//!
//! - `FAKE_NVML_EVIDENCE`: an NVAT evidence JSON array (`[{arch, nonce, evidence,
//!   certificate}]`); one device per entry. Without it `nvmlInit_v2` fails with
//!   `NVML_ERROR_DRIVER_NOT_LOADED` (9).
//! - `FAKE_NVML_CC`: `environment,ccFeature,devToolsMode,multiGpuMode` (default `2,1,0,0`).
//!
//! A recorded report carries its recorded nonce whatever nonce the caller passes (the stand-in
//! cannot sign), which lets tests show that stale evidence is rejected.
//!
//! **Unsafe exception** (test-only crate): exporting C functions (`#[unsafe(no_mangle)]`) and
//! writing through the caller's pointers is unsafe; each block has a `// SAFETY:` comment.

#![allow(unsafe_code)]

use std::ffi::{c_char, c_uint, c_void};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use nv_verify::evidence::{DecodedEvidence, parse_nvat_json};

const SUCCESS: c_uint = 0;
const ERROR_UNINITIALIZED: c_uint = 1;
const ERROR_INVALID_ARGUMENT: c_uint = 2;
const ERROR_INSUFFICIENT_SIZE: c_uint = 7;
const ERROR_DRIVER_NOT_LOADED: c_uint = 9;

/// `nvmlSystemConfComputeSettings_t` (as the header declares it; the helper defines its own).
#[repr(C)]
#[derive(Debug)]
pub struct Settings {
    version: u32,
    environment: u32,
    cc_feature: u32,
    devtools_mode: u32,
    multi_gpu_mode: u32,
}

/// `nvmlConfComputeGpuAttestationReport_t`.
#[repr(C)]
#[derive(Debug)]
pub struct Report {
    is_cec_attestation_report_present: u32,
    attestation_report_size: u32,
    cec_attestation_report_size: u32,
    nonce: [u8; 32],
    attestation_report: [u8; 0x2000],
    cec_attestation_report: [u8; 0x1000],
}

/// `nvmlConfComputeGpuCertificate_t`.
#[repr(C)]
#[derive(Debug)]
pub struct Certificate {
    cert_chain_size: u32,
    attestation_cert_chain_size: u32,
    cert_chain: [u8; 0x1000],
    attestation_cert_chain: [u8; 0x1400],
}

/// Loaded configuration.
#[derive(Debug)]
struct State {
    devices: Vec<DecodedEvidence>,
    cc: [u32; 4],
}

static STATE: Mutex<Option<State>> = Mutex::new(None);
static READY: AtomicU32 = AtomicU32::new(0);

fn load() -> Option<State> {
    let path = std::env::var_os("FAKE_NVML_EVIDENCE")?;
    let devices = parse_nvat_json(&std::fs::read(path).ok()?).ok()?;
    let cc_text = std::env::var("FAKE_NVML_CC").unwrap_or_else(|_| "2,1,0,0".into());
    let parts: Vec<u32> = cc_text
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    let cc: [u32; 4] = parts.try_into().ok()?;
    Some(State { devices, cc })
}

fn with_state<T>(f: impl FnOnce(&State) -> Result<T, c_uint>) -> Result<T, c_uint> {
    let guard = STATE.lock().map_err(|_| ERROR_UNINITIALIZED)?;
    guard.as_ref().map_or(Err(ERROR_UNINITIALIZED), f)
}

fn code(result: Result<(), c_uint>) -> c_uint {
    result.err().unwrap_or(SUCCESS)
}

fn device_index(device: *mut c_void) -> usize {
    (device as usize).wrapping_sub(1)
}

fn device_entry<T>(
    device: *mut c_void,
    f: impl FnOnce(&DecodedEvidence) -> T,
) -> Result<T, c_uint> {
    with_state(|s| {
        s.devices
            .get(device_index(device))
            .map(f)
            .ok_or(ERROR_INVALID_ARGUMENT)
    })
}

/// Copies `text` NUL-terminated into the caller's buffer.
///
/// # Safety
/// `buffer` must be writable for `length` bytes.
unsafe fn write_text(buffer: *mut c_char, length: c_uint, text: &str) -> c_uint {
    if buffer.is_null() || text.len() + 1 > length as usize {
        return ERROR_INSUFFICIENT_SIZE;
    }
    // SAFETY: the caller guarantees `length` writable bytes; text.len() + 1 <= length.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buffer.cast::<u8>(), text.len());
        *buffer.add(text.len()) = 0;
    }
    SUCCESS
}

/// `nvmlInit_v2`.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit_v2() -> c_uint {
    let Ok(mut guard) = STATE.lock() else {
        return ERROR_UNINITIALIZED;
    };
    match load() {
        Some(state) => {
            *guard = Some(state);
            SUCCESS
        }
        None => ERROR_DRIVER_NOT_LOADED,
    }
}

/// `nvmlShutdown`.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlShutdown() -> c_uint {
    if let Ok(mut guard) = STATE.lock() {
        *guard = None;
    }
    SUCCESS
}

/// `nvmlErrorString`.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlErrorString(result: c_uint) -> *const c_char {
    match result {
        SUCCESS => c"Success".as_ptr(),
        ERROR_UNINITIALIZED => c"Uninitialized".as_ptr(),
        ERROR_INVALID_ARGUMENT => c"Invalid Argument".as_ptr(),
        ERROR_INSUFFICIENT_SIZE => c"Insufficient Size".as_ptr(),
        ERROR_DRIVER_NOT_LOADED => c"Driver Not Loaded".as_ptr(),
        _ => c"Unknown Error".as_ptr(),
    }
}

/// `nvmlDeviceGetCount_v2`.
///
/// # Safety
/// `count` must be a valid, writable pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> c_uint {
    code(with_state(|s| {
        let n = c_uint::try_from(s.devices.len()).map_err(|_| ERROR_INVALID_ARGUMENT)?;
        // SAFETY: the caller passes a valid, writable `unsigned int*`.
        unsafe { count.write(n) };
        Ok(())
    }))
}

/// `nvmlDeviceGetHandleByIndex_v2`: handles are `index + 1`.
///
/// # Safety
/// `device` must be a valid, writable pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut *mut c_void,
) -> c_uint {
    code(with_state(|s| {
        if index as usize >= s.devices.len() {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: the caller passes a valid, writable `nvmlDevice_t*`.
        unsafe { device.write(std::ptr::without_provenance_mut(index as usize + 1)) };
        Ok(())
    }))
}

/// `nvmlDeviceGetArchitecture`: 9 for `HOPPER`, 10 for `BLACKWELL`, 0 otherwise.
///
/// # Safety
/// `arch` must be a valid, writable pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetArchitecture(
    device: *mut c_void,
    arch: *mut c_uint,
) -> c_uint {
    code(
        device_entry(device, |e| match e.evidence.arch.as_deref() {
            Some("HOPPER") => 9,
            Some("BLACKWELL") => 10,
            _ => 0,
        })
        .map(|value| {
            // SAFETY: the caller passes a valid, writable `unsigned int*`.
            unsafe { arch.write(value) }
        }),
    )
}

/// `nvmlDeviceGetUUID`: `GPU-fake-<index>`.
///
/// # Safety
/// `uuid` must be writable for `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: *mut c_void,
    uuid: *mut c_char,
    length: c_uint,
) -> c_uint {
    match device_entry(device, |_| format!("GPU-fake-{}", device_index(device))) {
        // SAFETY: the caller guarantees `length` writable bytes at `uuid`.
        Ok(text) => unsafe { write_text(uuid, length, &text) },
        Err(e) => e,
    }
}

/// `nvmlDeviceGetVbiosVersion`: a fixed string.
///
/// # Safety
/// `version` must be writable for `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetVbiosVersion(
    device: *mut c_void,
    version: *mut c_char,
    length: c_uint,
) -> c_uint {
    match device_entry(device, |_| ()) {
        // SAFETY: the caller guarantees `length` writable bytes at `version`.
        Ok(()) => unsafe { write_text(version, length, "96.00.5e.00.01") },
        Err(e) => e,
    }
}

/// `nvmlSystemGetDriverVersion`: a fixed string.
///
/// # Safety
/// `version` must be writable for `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(
    version: *mut c_char,
    length: c_uint,
) -> c_uint {
    match with_state(|_| Ok(())) {
        // SAFETY: the caller guarantees `length` writable bytes at `version`.
        Ok(()) => unsafe { write_text(version, length, "545.00") },
        Err(e) => e,
    }
}

/// `nvmlSystemGetConfComputeSettings`: checks the version field like NVML.
///
/// # Safety
/// `settings` must point to a valid, writable `nvmlSystemConfComputeSettings_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetConfComputeSettings(settings: *mut Settings) -> c_uint {
    code(with_state(|s| {
        // SAFETY: the caller passes a valid, writable settings struct.
        let settings = unsafe { &mut *settings };
        if settings.version != 0x0100_0014 {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        settings.environment = s.cc[0];
        settings.cc_feature = s.cc[1];
        settings.devtools_mode = s.cc[2];
        settings.multi_gpu_mode = s.cc[3];
        Ok(())
    }))
}

/// `nvmlDeviceGetConfComputeGpuAttestationReport`: the recorded report.
///
/// # Safety
/// `report` must point to a valid, writable report struct.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetConfComputeGpuAttestationReport(
    device: *mut c_void,
    report: *mut Report,
) -> c_uint {
    code(
        device_entry(device, |e| e.evidence.report.clone()).and_then(|bytes| {
            // SAFETY: the caller passes a valid, writable report struct.
            let report = unsafe { &mut *report };
            let target = report
                .attestation_report
                .get_mut(..bytes.len())
                .ok_or(ERROR_INSUFFICIENT_SIZE)?;
            target.copy_from_slice(&bytes);
            report.attestation_report_size =
                u32::try_from(bytes.len()).map_err(|_| ERROR_INSUFFICIENT_SIZE)?;
            report.is_cec_attestation_report_present = 0;
            report.cec_attestation_report_size = 0;
            Ok(())
        }),
    )
}

/// `nvmlDeviceGetConfComputeGpuCertificate`: the recorded PEM chain.
///
/// # Safety
/// `certificate` must point to a valid, writable certificate struct.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetConfComputeGpuCertificate(
    device: *mut c_void,
    certificate: *mut Certificate,
) -> c_uint {
    code(
        device_entry(device, |e| e.evidence.cert_chain.clone()).and_then(|bytes| {
            // SAFETY: the caller passes a valid, writable certificate struct.
            let certificate = unsafe { &mut *certificate };
            let target = certificate
                .attestation_cert_chain
                .get_mut(..bytes.len())
                .ok_or(ERROR_INSUFFICIENT_SIZE)?;
            target.copy_from_slice(&bytes);
            certificate.attestation_cert_chain_size =
                u32::try_from(bytes.len()).map_err(|_| ERROR_INSUFFICIENT_SIZE)?;
            certificate.cert_chain_size = 0;
            Ok(())
        }),
    )
}

/// `nvmlSystemGetConfComputeGpusReadyState`.
///
/// # Safety
/// `state` must be a valid, writable pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetConfComputeGpusReadyState(state: *mut c_uint) -> c_uint {
    code(with_state(|_| {
        // SAFETY: the caller passes a valid, writable `unsigned int*`.
        unsafe { state.write(READY.load(Ordering::SeqCst)) };
        Ok(())
    }))
}

/// `nvmlSystemSetConfComputeGpusReadyState` (0 or 1).
#[unsafe(no_mangle)]
pub extern "C" fn nvmlSystemSetConfComputeGpusReadyState(state: c_uint) -> c_uint {
    code(with_state(|_| {
        if state > 1 {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        READY.store(state, Ordering::SeqCst);
        Ok(())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_nvml_h() {
        assert_eq!(size_of::<Settings>(), 20);
        assert_eq!(size_of::<Report>(), 12 + 32 + 0x2000 + 0x1000);
        assert_eq!(size_of::<Certificate>(), 8 + 0x1000 + 0x1400);
    }

    #[test]
    fn uninitialized_calls_fail_and_errors_have_names() {
        let mut count = 0;
        // SAFETY: `count` is a valid, writable u32.
        let result = unsafe { nvmlDeviceGetCount_v2(&mut count) };
        assert_eq!(result, ERROR_UNINITIALIZED);
        // SAFETY: nvmlErrorString returns a static C string.
        let text = unsafe { std::ffi::CStr::from_ptr(nvmlErrorString(ERROR_DRIVER_NOT_LOADED)) };
        assert_eq!(text.to_str().unwrap(), "Driver Not Loaded");
    }
}
