//! The JSON-lines protocol between the init and the helper: one request object per line on
//! stdin, one response object per line on stdout.
//!
//! ```text
//! → {"op":"collect","nonce":"<64 hex>"}
//! ← {"op":"collect","ok":true,"driver_version":"550.90.07","cc_state":{…},"ready_state":0,
//!    "pci":{"nvidia":[…],"foreign":[],"unreadable":[]},
//!    "gpus":[{"arch":"HOPPER","nonce":"…","evidence":"<b64>","certificate":"<b64>",
//!             "index":0,"uuid":"GPU-…","nvml_architecture":9,"vbios_version":"…"}]}
//! → {"op":"state"}       ← {"op":"state","ok":true,"cc_state":{…},"ready_state":0}
//! → {"op":"set_ready"}   ← {"op":"set_ready","ok":true,"ready_state":1}
//! → {"op":"set_not_ready"} ← {"op":"set_not_ready","ok":true,"ready_state":0}
//! → {"op":"quit"}        ← {"op":"quit","ok":true}   (then the helper exits)
//! ← {"op":…,"ok":false,"error":"whole error chain"}  on any failure
//! ```
//! `gpus` entries are the NVAT serialized-evidence shape plus the NVML identity fields, so the
//! array (reduced to the four NVAT fields by [`nvat_evidence`]) can be fed to `cvm-measure gpu
//! --evidence`. The helper sets the ready state only on `set_ready`; it never verifies.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use nv_verify::evidence::SerializedEvidence;
pub use nv_verify::helper::{CollectedGpu, Request, Response, nvat_evidence};
use nv_verify::pci::PciInventory;
use nv_verify::policy::CcState;

use crate::nvml::{DeviceEvidence, DeviceInfo, NvmlError};

/// What the helper needs from NVML (implemented by [`crate::nvml::Nvml`]; tests use fakes).
pub trait Backend {
    /// Driver version.
    fn driver_version(&mut self) -> Result<String, NvmlError>;
    /// CC settings.
    fn cc_state(&mut self) -> Result<CcState, NvmlError>;
    /// Number of GPUs NVML sees.
    fn device_count(&mut self) -> Result<u32, NvmlError>;
    /// Identity of one GPU.
    fn device(&mut self, index: u32) -> Result<DeviceInfo, NvmlError>;
    /// Evidence of one GPU for `nonce`.
    fn evidence(&mut self, index: u32, nonce: &[u8; 32]) -> Result<DeviceEvidence, NvmlError>;
    /// System-wide ready state.
    fn ready_state(&mut self) -> Result<u32, NvmlError>;
    /// Sets the system-wide ready state.
    fn set_ready_state(&mut self, state: u32) -> Result<(), NvmlError>;
}

fn arch_name(nvml_architecture: u32) -> String {
    nv_verify::Arch::from_nvml(nvml_architecture).map_or_else(
        || format!("NVML-ARCH-{nvml_architecture}"),
        |a| a.name().to_owned(),
    )
}

fn collect(
    backend: &mut dyn Backend,
    nonce: &[u8; 32],
    response: &mut Response,
) -> Result<(), NvmlError> {
    response.driver_version = Some(backend.driver_version()?);
    response.cc_state = Some(backend.cc_state()?);
    response.ready_state = Some(backend.ready_state()?);
    let mut gpus = Vec::new();
    for index in 0..backend.device_count()? {
        let info = backend.device(index)?;
        let evidence = backend.evidence(index, nonce)?;
        gpus.push(CollectedGpu {
            nvat: SerializedEvidence::new(
                &arch_name(info.architecture),
                nonce,
                &evidence.report,
                &evidence.cert_chain,
            ),
            index,
            uuid: info.uuid,
            nvml_architecture: info.architecture,
            vbios_version: info.vbios_version,
        });
    }
    response.gpus = Some(gpus);
    Ok(())
}

/// Handles one request line. The backend is opened lazily by `open` so that a missing
/// NVML is reported per request instead of killing the helper.
pub fn handle(
    line: &str,
    backend: &mut dyn FnMut() -> Result<Box<dyn Backend>, String>,
    opened: &mut Option<Box<dyn Backend>>,
    pci: &dyn Fn() -> Result<PciInventory, String>,
) -> (Response, bool) {
    let request: Request = match serde_json::from_str(line) {
        Ok(request) => request,
        Err(e) => {
            return (
                Response {
                    op: "invalid".into(),
                    error: Some(format!("request does not parse: {e}")),
                    ..Response::default()
                },
                false,
            );
        }
    };
    let op = match &request {
        Request::Collect { .. } => "collect",
        Request::State => "state",
        Request::SetReady => "set_ready",
        Request::SetNotReady => "set_not_ready",
        Request::Quit => "quit",
    };
    let mut response = Response {
        op: op.into(),
        ..Response::default()
    };
    if request == Request::Quit {
        response.ok = true;
        return (response, true);
    }
    if opened.is_none() {
        match backend() {
            Ok(b) => *opened = Some(b),
            Err(e) => {
                response.error = Some(e);
                return (response, false);
            }
        }
    }
    let Some(nvml) = opened.as_deref_mut() else {
        return (response, false);
    };
    let result: Result<(), String> = match request {
        Request::Collect { nonce } => {
            match hex::decode(nonce.trim())
                .ok()
                .and_then(|n| <[u8; 32]>::try_from(n).ok())
            {
                None => Err("nonce must be 64 hex digits (32 bytes)".into()),
                Some(nonce) => match pci() {
                    Err(e) => Err(e),
                    Ok(inventory) => {
                        response.pci = Some(inventory);
                        collect(nvml, &nonce, &mut response)
                            .map_err(|e| cvm_error_chain::joined(&e))
                    }
                },
            }
        }
        Request::State => (|| {
            response.cc_state = Some(nvml.cc_state()?);
            response.ready_state = Some(nvml.ready_state()?);
            Ok(())
        })()
        .map_err(|e: NvmlError| cvm_error_chain::joined(&e)),
        Request::SetReady | Request::SetNotReady => {
            let target = u32::from(request == Request::SetReady);
            (|| {
                if nvml.ready_state()? != target {
                    nvml.set_ready_state(target)?;
                }
                response.ready_state = Some(nvml.ready_state()?);
                Ok(())
            })()
            .map_err(|e: NvmlError| cvm_error_chain::joined(&e))
        }
        Request::Quit => Ok(()),
    };
    match result {
        Ok(()) => response.ok = true,
        Err(e) => {
            response.ok = false;
            response.error = Some(e);
        }
    }
    (response, false)
}

/// Serves requests from `input` until `quit` or end of input.
pub fn serve(
    input: impl BufRead,
    mut output: impl Write,
    mut backend: impl FnMut() -> Result<Box<dyn Backend>, String>,
    sysfs_root: PathBuf,
) -> std::io::Result<()> {
    let mut opened: Option<Box<dyn Backend>> = None;
    let pci =
        move || crate::sysfs::pci_inventory(&sysfs_root).map_err(|e| cvm_error_chain::joined(&e));
    for line in input.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let (response, quit) = handle(&line, &mut backend, &mut opened, &pci);
        let text = serde_json::to_string(&response).map_err(std::io::Error::other)?;
        writeln!(output, "{text}")?;
        output.flush()?;
        if quit {
            break;
        }
    }
    Ok(())
}
