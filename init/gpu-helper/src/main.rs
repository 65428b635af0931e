//! `cvm-gpu-evidence`: JSON lines on stdin/stdout (see `protocol`). Exits 0 after `quit` or
//! end of input, 1 on an I/O error of its own pipes.

use std::path::PathBuf;
use std::process::ExitCode;

use cvm_gpu_evidence::nvml::{DEFAULT_LIBRARY, Nvml};
use cvm_gpu_evidence::protocol::{self, Backend};
use cvm_gpu_evidence::{LIBRARY_ENV, SYSFS_ENV};

struct Loaded(Nvml);

impl Backend for Loaded {
    fn driver_version(&mut self) -> Result<String, cvm_gpu_evidence::nvml::NvmlError> {
        self.0.driver_version()
    }
    fn cc_state(
        &mut self,
    ) -> Result<nv_verify::policy::CcState, cvm_gpu_evidence::nvml::NvmlError> {
        self.0.cc_state()
    }
    fn device_count(&mut self) -> Result<u32, cvm_gpu_evidence::nvml::NvmlError> {
        self.0.device_count()
    }
    fn device(
        &mut self,
        index: u32,
    ) -> Result<cvm_gpu_evidence::nvml::DeviceInfo, cvm_gpu_evidence::nvml::NvmlError> {
        self.0.device(index)
    }
    fn evidence(
        &mut self,
        index: u32,
        nonce: &[u8; 32],
    ) -> Result<cvm_gpu_evidence::nvml::DeviceEvidence, cvm_gpu_evidence::nvml::NvmlError> {
        self.0.evidence(index, nonce)
    }
    fn ready_state(&mut self) -> Result<u32, cvm_gpu_evidence::nvml::NvmlError> {
        self.0.ready_state()
    }
    fn set_ready_state(&mut self, state: u32) -> Result<(), cvm_gpu_evidence::nvml::NvmlError> {
        self.0.set_ready_state(state)
    }
}

fn main() -> ExitCode {
    let library = std::env::var(LIBRARY_ENV).unwrap_or_else(|_| DEFAULT_LIBRARY.to_owned());
    let sysfs = std::env::var_os(SYSFS_ENV).map_or_else(|| PathBuf::from("/sys"), PathBuf::from);
    let open = move || -> Result<Box<dyn Backend>, String> {
        Nvml::load(&library)
            .map(|nvml| Box::new(Loaded(nvml)) as Box<dyn Backend>)
            .map_err(|e| cvm_error_chain::joined(&e))
    };
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    match protocol::serve(stdin, stdout, open, sysfs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cvm-gpu-evidence: {e}");
            ExitCode::FAILURE
        }
    }
}
