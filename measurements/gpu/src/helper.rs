//! The message types of the JSON-lines protocol between the init and the dynamically linked
//! helper `cvm-gpu-evidence` (which serves it; see its README). They live here, in the no-I/O
//! verifier crate, so the static init can speak the protocol without linking the helper.

use serde::{Deserialize, Serialize};

use crate::evidence::SerializedEvidence;
use crate::pci::PciInventory;
use crate::policy::CcState;

/// A request line.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Collect evidence of every GPU for a fresh nonce chosen by the caller.
    Collect { nonce: String },
    /// Report CC and ready state.
    State,
    /// Set the ready state (only after the caller verified every GPU).
    SetReady,
    /// Clear the ready state.
    SetNotReady,
    /// Exit.
    Quit,
}

/// One GPU in a `collect` response.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct CollectedGpu {
    /// The NVAT fields.
    #[serde(flatten)]
    pub nvat: SerializedEvidence,
    /// NVML device index.
    pub index: u32,
    /// NVML UUID.
    pub uuid: String,
    /// `nvmlDeviceGetArchitecture`.
    pub nvml_architecture: u32,
    /// NVML VBIOS version string.
    pub vbios_version: String,
}

/// A response line.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct Response {
    /// The request's op.
    pub op: String,
    /// Success.
    pub ok: bool,
    /// Error chain when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Driver version (collect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
    /// CC state (collect, state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cc_state: Option<CcState>,
    /// Ready state after the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_state: Option<u32>,
    /// The PCI inventory (collect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci: Option<PciInventory>,
    /// Evidence per GPU (collect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Vec<CollectedGpu>>,
}

/// The NVAT evidence array of a `collect` response (what `cvm-measure gpu --evidence` and
/// `nv_verify::evidence::parse_nvat_json` read; its bytes are what the init hashes into
/// `gpu-attestation`).
pub fn nvat_evidence(gpus: &[CollectedGpu]) -> Vec<u8> {
    let entries: Vec<&SerializedEvidence> = gpus.iter().map(|g| &g.nvat).collect();
    serde_json::to_vec(&entries).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_match_the_documented_protocol() {
        let collect = Request::Collect {
            nonce: "ab".repeat(32),
        };
        assert_eq!(
            serde_json::to_string(&collect).unwrap(),
            format!(r#"{{"op":"collect","nonce":"{}"}}"#, "ab".repeat(32))
        );
        assert_eq!(
            serde_json::to_string(&Request::SetReady).unwrap(),
            r#"{"op":"set_ready"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"set_not_ready"}"#).unwrap(),
            Request::SetNotReady
        );
        serde_json::from_str::<Request>(r#"{"op":"reset"}"#).unwrap_err();
    }

    #[test]
    fn response_keeps_nvat_fields_flat_and_the_document_has_only_them() {
        let gpu = CollectedGpu {
            nvat: SerializedEvidence::new("HOPPER", &[1; 32], b"report", b"chain"),
            index: 0,
            uuid: "GPU-x".into(),
            nvml_architecture: 9,
            vbios_version: "96.00.5e.00.01".into(),
        };
        let line = serde_json::to_value(&gpu).unwrap();
        assert_eq!(line["arch"], "HOPPER");
        assert_eq!(line["uuid"], "GPU-x");
        let document = nvat_evidence(&[gpu]);
        let parsed = crate::evidence::parse_nvat_json(&document).unwrap();
        assert_eq!(parsed[0].evidence.report, b"report");
        let value: serde_json::Value = serde_json::from_slice(&document).unwrap();
        assert_eq!(value[0].as_object().unwrap().len(), 4);
    }
}
