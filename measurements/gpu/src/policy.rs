//! dstack's `requirements.gpu_policy`, the system verdict over every GPU, and the RTMR3 event
//! payloads `gpu-policy-hash` and `gpu-attestation` (`dstack-guest.md` §2.3, §3.4, §9).
//!
//! Defaults are strict: measurements must match (so secure boot on and debug off, which
//! local verification derives from the match), CC mode on in the production environment,
//! devtools off. PPCIe (protected PCIe, 8 GPUs with 4 NVSwitches) passes only with switch
//! evidence ([`GpuPolicy::evaluate_with_switches`], [`attest_system_ppcie`]): every switch
//! verifies and the topology of [`crate::topology`] holds. Without switch evidence (the init's
//! helper collects none) PPCIe is refused.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::topology::{self, GpuTopology, SwitchTopology, TopologyFailure, TopologyVerdict};
use crate::verify::{Failure, GpuVerdict, MeasurementResult, OcspStatus, SwitchVerdict};

/// RTMR3 event name of the policy hash (always extended, also without GPUs).
pub const GPU_POLICY_HASH_EVENT: &str = "gpu-policy-hash";
/// RTMR3 event name of the attestation summary (only after every GPU passed).
pub const GPU_ATTESTATION_EVENT: &str = "gpu-attestation";
/// NVML `environment` value of the production environment.
pub const CC_ENVIRONMENT_PROD: u32 = 2;

/// Why a `gpu_policy` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// Not an object with the known boolean / string fields.
    #[error("gpu_policy does not parse: {message}")]
    ParsePolicy { message: String },
    /// A Rego policy was given; this verifier has no Rego engine and refuses rather than
    /// ignore it.
    #[error("gpu_policy.rego is not supported by this verifier (no Rego engine); remove it")]
    CheckRego,
}

/// `requirements.gpu_policy` (unknown keys are refused).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GpuPolicy {
    /// Attest GPUs before they are made ready (default true).
    #[serde(default = "default_true")]
    pub attest_gpu: bool,
    /// Rego policy text (refused: see [`PolicyError::CheckRego`]).
    #[serde(default)]
    pub rego: Option<String>,
    /// Accept GPUs in devtools mode.
    #[serde(default)]
    pub allow_devtools: bool,
    /// Accept `dbgstat != disabled`.
    #[serde(default)]
    pub allow_debug: bool,
    /// Accept `secboot == false`.
    #[serde(default)]
    pub allow_insecure_boot: bool,
}

fn default_true() -> bool {
    true
}

impl Default for GpuPolicy {
    fn default() -> Self {
        Self::strict()
    }
}

impl GpuPolicy {
    /// The strict default (also what an absent `gpu_policy` means).
    pub fn strict() -> Self {
        Self {
            attest_gpu: true,
            rego: None,
            allow_devtools: false,
            allow_debug: false,
            allow_insecure_boot: false,
        }
    }

    /// Parses the raw `requirements.gpu_policy` value (`None` = absent = strict).
    pub fn from_value(value: Option<&Value>) -> Result<Self, PolicyError> {
        let Some(value) = value else {
            return Ok(Self::strict());
        };
        let policy: Self =
            serde_json::from_value(value.clone()).map_err(|e| PolicyError::ParsePolicy {
                message: e.to_string(),
            })?;
        if policy.rego.is_some() {
            return Err(PolicyError::CheckRego);
        }
        Ok(policy)
    }
}

/// RFC 8785 (JCS) canonical JSON: keys sorted by UTF-16 code units, no whitespace, ES6 number
/// formatting, minimal string escaping.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_jcs(value, &mut out);
    out
}

fn write_jcs(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                out.push_str(&u.to_string());
            } else {
                out.push_str(&es6_number(n.as_f64().unwrap_or(0.0)));
            }
        }
        Value::String(s) => out.push_str(&Value::String(s.clone()).to_string()),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_jcs(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(key) {
                    write_jcs(v, out);
                }
            }
            out.push('}');
        }
    }
}

/// ECMAScript `Number.prototype.toString` for finite doubles (JSON has no NaN/Infinity).
fn es6_number(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return "0".into();
    }
    let sign = if x < 0.0 { "-" } else { "" };
    // Shortest round-trip digits via Rust's `{:e}`: "d.ddde±x".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let exponent: i64 = exponent.parse().unwrap_or(0);
    let k = i64::try_from(digits.len()).unwrap_or(1);
    let n = exponent + 1;
    let body = if k <= n && n <= 21 {
        let zeros = usize::try_from(n - k).unwrap_or(0);
        format!("{digits}{}", "0".repeat(zeros))
    } else if 0 < n && n <= 21 {
        let split = usize::try_from(n).unwrap_or(0);
        format!("{}.{}", &digits[..split], &digits[split..])
    } else if -6 < n && n <= 0 {
        let zeros = usize::try_from(-n).unwrap_or(0);
        format!("0.{}{digits}", "0".repeat(zeros))
    } else {
        let exp = n - 1;
        let exp_sign = if exp < 0 { "-" } else { "+" };
        let rest = if digits.len() > 1 {
            format!(".{}", &digits[1..])
        } else {
            String::new()
        };
        format!("{}{rest}e{exp_sign}{}", &digits[..1], exp.abs())
    };
    format!("{sign}{body}")
}

/// The `gpu-policy-hash` payload: SHA-256 of the JCS form of the raw `gpu_policy` value, `{}`
/// when absent (32 bytes). Extended always, also on machines without GPUs.
pub fn gpu_policy_hash(value: Option<&Value>) -> [u8; 32] {
    let empty = Value::Object(serde_json::Map::new());
    let text = canonical_json(value.unwrap_or(&empty));
    Sha256::digest(text.as_bytes()).into()
}

/// The confidential-computing state NVML reports (`nvmlSystemGetConfComputeSettings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CcState {
    /// 0 unavailable, 1 simulation, 2 production.
    pub environment: u32,
    /// 0 disabled, 1 enabled.
    pub cc_feature: u32,
    /// 0 off, 1 on.
    pub devtools_mode: u32,
    /// 0 none, 1 protected PCIe.
    pub multi_gpu_mode: u32,
}

/// One reason the GPU gate stays closed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GateFailure {
    /// A display-class PCI device that is not NVIDIA.
    #[error("a non-NVIDIA display device is present ({address})")]
    CheckForeignDisplay { address: String },
    /// The number of evidence entries differs from the NVIDIA GPUs on the PCI bus.
    #[error("{pci} NVIDIA GPUs on the PCI bus but {evidence} attestation reports")]
    CheckDeviceCount { pci: usize, evidence: usize },
    /// NVML gave no CC state.
    #[error("the GPUs' confidential-computing state is unknown")]
    FindCcState,
    /// CC mode is off.
    #[error("confidential computing is off on the GPUs (ccFeature {cc_feature})")]
    CheckCcMode { cc_feature: u32 },
    /// Not the production environment.
    #[error("CC environment is {environment}, not production (2)")]
    CheckEnvironment { environment: u32 },
    /// DevTools mode on and the policy does not allow it.
    #[error("GPU devtools mode is on and gpu_policy does not allow it")]
    CheckDevtools,
    /// Protected PCIe (multi-GPU with NVSwitch) without NVSwitch evidence.
    #[error(
        "protected PCIe (PPCIe, multi-GPU with NVSwitch) needs verified NVSwitch evidence and \
         the 8-GPU / 4-switch topology, and no switch evidence was given; boot the GPUs in CC \
         mode"
    )]
    CheckPpcie,
    /// NVML's multi-GPU mode and the signed reports disagree about PPCIe.
    #[error("the GPU reports say protected PCIe but NVML multiGpuMode is {multi_gpu_mode}")]
    CheckPpcieMode { multi_gpu_mode: u32 },
    /// An NVML multi-GPU mode this verifier does not know.
    #[error("NVML multiGpuMode {multi_gpu_mode} is neither 0 (none) nor 1 (protected PCIe)")]
    CheckMultiGpuMode { multi_gpu_mode: u32 },
    /// An NVSwitch's evidence failed.
    #[error("NVSwitch {index}")]
    VerifySwitch {
        index: usize,
        #[source]
        failure: Failure,
    },
    /// The PPCIe topology does not hold.
    #[error("PPCIe topology")]
    CheckTopology(#[source] TopologyFailure),
    /// A GPU's evidence failed.
    #[error("GPU {index}")]
    VerifyGpu {
        index: usize,
        #[source]
        failure: Failure,
    },
    /// `secboot` false and not allowed.
    #[error("GPU {index}: secure boot not established (measurements not verified as matching)")]
    CheckSecureBoot { index: usize },
    /// `dbgstat` not disabled and not allowed.
    #[error(
        "GPU {index}: debug status not established as disabled (measurements not verified as matching)"
    )]
    CheckDebug { index: usize },
}

/// What the init should do with the GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GateDecision {
    /// No NVIDIA GPU on the bus: nothing to do (the policy hash is still extended).
    NoGpus,
    /// `attest_gpu: false`: set the ready state without attestation, as dstack does; the
    /// measured policy hash shows this choice.
    ReadyWithoutAttestation,
    /// Every GPU verified: extend `gpu-attestation`, then set the ready state.
    Ready,
    /// Keep the ready state off; no workload that reserved a GPU starts.
    Refuse,
}

/// The system verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateVerdict {
    /// The decision.
    pub decision: GateDecision,
    /// Every failure (empty unless `Refuse`).
    #[serde(serialize_with = "serialize_gate_failures")]
    pub failures: Vec<GateFailure>,
    /// The PPCIe topology verdict, when switch evidence was evaluated for a PPCIe set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<TopologyVerdict>,
}

fn serialize_gate_failures<S: serde::Serializer>(
    failures: &[GateFailure],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq as _;
    let mut seq = serializer.serialize_seq(Some(failures.len()))?;
    for f in failures {
        seq.serialize_element(&cvm_error_chain::joined(f))?;
    }
    seq.end()
}

/// Inputs of the gate besides the per-GPU verdicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateInput {
    /// NVIDIA display-class functions on the PCI bus (counted independently of NVML).
    pub pci_gpu_count: usize,
    /// Non-NVIDIA display-class functions (their PCI addresses); any → refuse.
    pub foreign_display_devices: Vec<String>,
    /// NVML CC state (`None` when NVML could not be asked).
    pub cc_state: Option<CcState>,
}

impl GpuPolicy {
    /// Applies the policy to the per-GPU verdicts (in device order) without switch evidence,
    /// so PPCIe is refused. Every failure is listed.
    pub fn evaluate(&self, input: &GateInput, verdicts: &[GpuVerdict]) -> GateVerdict {
        self.evaluate_with_switches(input, verdicts, None)
    }

    /// [`Self::evaluate`] with the NVSwitch verdicts of a PPCIe set (`None`: none collected).
    /// Given switches must all pass. In PPCIe (NVML multiGpuMode 1, or reports with
    /// PROTECTED_PCIE_STATUS 0xAA / FEATURE_FLAG 2) the switches are required and the topology
    /// must hold; ccFeature may then be off (PPCIe replaces CC mode, as NVIDIA's
    /// `ppcie-verifier` pre-check), everything else is as in CC mode.
    pub fn evaluate_with_switches(
        &self,
        input: &GateInput,
        verdicts: &[GpuVerdict],
        switches: Option<&[SwitchVerdict]>,
    ) -> GateVerdict {
        let mut failures: Vec<GateFailure> = input
            .foreign_display_devices
            .iter()
            .map(|address| GateFailure::CheckForeignDisplay {
                address: address.clone(),
            })
            .collect();
        if input.pci_gpu_count == 0 {
            let decision = if failures.is_empty() {
                GateDecision::NoGpus
            } else {
                GateDecision::Refuse
            };
            return GateVerdict {
                decision,
                failures,
                topology: None,
            };
        }
        if !self.attest_gpu {
            let decision = if failures.is_empty() {
                GateDecision::ReadyWithoutAttestation
            } else {
                GateDecision::Refuse
            };
            return GateVerdict {
                decision,
                failures,
                topology: None,
            };
        }
        let ppcie_mode = input.cc_state.is_some_and(|s| s.multi_gpu_mode == 1);
        let ppcie_in_reports = verdicts
            .iter()
            .any(|v| v.claims.protected_pcie || v.claims.feature_flag == Some(2));
        match input.cc_state {
            None => failures.push(GateFailure::FindCcState),
            Some(state) => {
                match state.multi_gpu_mode {
                    0 => {}
                    1 if switches.is_some() => {}
                    1 => failures.push(GateFailure::CheckPpcie),
                    other => failures.push(GateFailure::CheckMultiGpuMode {
                        multi_gpu_mode: other,
                    }),
                }
                if state.cc_feature != 1 && !(ppcie_mode && switches.is_some()) {
                    failures.push(GateFailure::CheckCcMode {
                        cc_feature: state.cc_feature,
                    });
                }
                if state.environment != CC_ENVIRONMENT_PROD {
                    failures.push(GateFailure::CheckEnvironment {
                        environment: state.environment,
                    });
                }
                if state.devtools_mode != 0 && !self.allow_devtools {
                    failures.push(GateFailure::CheckDevtools);
                }
            }
        }
        if verdicts.len() != input.pci_gpu_count {
            failures.push(GateFailure::CheckDeviceCount {
                pci: input.pci_gpu_count,
                evidence: verdicts.len(),
            });
        }
        if ppcie_in_reports && !failures.contains(&GateFailure::CheckPpcie) {
            if switches.is_none() {
                failures.push(GateFailure::CheckPpcie);
            } else if let Some(state) = input.cc_state
                && state.multi_gpu_mode != 1
            {
                failures.push(GateFailure::CheckPpcieMode {
                    multi_gpu_mode: state.multi_gpu_mode,
                });
            }
        }
        for (index, verdict) in verdicts.iter().enumerate() {
            failures.extend(verdict.failures.iter().map(|f| GateFailure::VerifyGpu {
                index,
                failure: f.clone(),
            }));
            if !verdict.claims.secure_boot && !self.allow_insecure_boot {
                failures.push(GateFailure::CheckSecureBoot { index });
            }
            if !verdict.claims.debug_disabled && !self.allow_debug {
                failures.push(GateFailure::CheckDebug { index });
            }
        }
        let mut topology = None;
        if let Some(switches) = switches {
            for (index, verdict) in switches.iter().enumerate() {
                failures.extend(verdict.failures.iter().map(|f| GateFailure::VerifySwitch {
                    index,
                    failure: f.clone(),
                }));
            }
            if ppcie_mode || ppcie_in_reports {
                let gpus: Vec<GpuTopology> = verdicts
                    .iter()
                    .map(|v| GpuTopology::from(&v.claims))
                    .collect();
                let switch_fields: Vec<SwitchTopology> = switches
                    .iter()
                    .map(|v| SwitchTopology::from(&v.claims))
                    .collect();
                let verdict = topology::check_topology(&gpus, &switch_fields);
                failures.extend(
                    verdict
                        .failures
                        .iter()
                        .cloned()
                        .map(GateFailure::CheckTopology),
                );
                topology = Some(verdict);
            }
        }
        let decision = if failures.is_empty() {
            GateDecision::Ready
        } else {
            GateDecision::Refuse
        };
        GateVerdict {
            decision,
            failures,
            topology,
        }
    }
}

/// The `gpu-attestation` payload: dstack's compact JSON
/// `{"version":2,"provider":"nvidia","devices":N,"cc_mode":"on","devtools":B,"evidence_sha256":H}`
/// (field order as dstack), plus `"ocsp"` (`"skipped"` when revocation was not checked) so an
/// offline verification is visible in the measurement. `evidence` is the evidence document
/// exactly as collected (the helper's NVAT-format JSON array); its SHA-256 is `H`.
pub fn gpu_attestation_payload(
    devices: usize,
    devtools: bool,
    ocsp: OcspStatus,
    evidence: &[u8],
) -> Vec<u8> {
    #[derive(Serialize)]
    struct Payload<'a> {
        version: u32,
        provider: &'a str,
        devices: usize,
        cc_mode: &'a str,
        devtools: bool,
        evidence_sha256: String,
        ocsp: OcspStatus,
    }
    let payload = Payload {
        version: 2,
        provider: "nvidia",
        devices,
        cc_mode: "on",
        devtools,
        evidence_sha256: hex::encode(Sha256::digest(evidence)),
        ocsp,
    };
    // Serializing a struct of strings, numbers and bools cannot fail.
    serde_json::to_vec(&payload).unwrap_or_default()
}

/// The `gpu-attestation` payload of a PPCIe set: as [`gpu_attestation_payload`] with
/// `"cc_mode":"ppcie"`, plus `"switches":M` and `"switch_evidence_sha256"` (SHA-256 of the
/// switch evidence document as collected).
pub fn ppcie_attestation_payload(
    devices: usize,
    switches: usize,
    devtools: bool,
    ocsp: OcspStatus,
    evidence: &[u8],
    switch_evidence: &[u8],
) -> Vec<u8> {
    #[derive(Serialize)]
    struct Payload<'a> {
        version: u32,
        provider: &'a str,
        devices: usize,
        cc_mode: &'a str,
        devtools: bool,
        evidence_sha256: String,
        ocsp: OcspStatus,
        switches: usize,
        switch_evidence_sha256: String,
    }
    let payload = Payload {
        version: 2,
        provider: "nvidia",
        devices,
        cc_mode: "ppcie",
        devtools,
        evidence_sha256: hex::encode(Sha256::digest(evidence)),
        ocsp,
        switches,
        switch_evidence_sha256: hex::encode(Sha256::digest(switch_evidence)),
    };
    // Serializing a struct of strings, numbers and bools cannot fail.
    serde_json::to_vec(&payload).unwrap_or_default()
}

/// True when every verdict's measurement result is success (convenience for callers).
pub fn all_measurements_match(verdicts: &[GpuVerdict]) -> bool {
    verdicts
        .iter()
        .all(|v| v.claims.measurement_result == MeasurementResult::Success)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn absent_policy_hashes_like_empty_object() {
        assert_eq!(
            hex::encode(gpu_policy_hash(None)),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(gpu_policy_hash(Some(&json!({}))), gpu_policy_hash(None));
        assert_ne!(
            gpu_policy_hash(Some(&json!({"attest_gpu": true}))),
            gpu_policy_hash(None)
        );
        assert_eq!(
            hex::encode(gpu_policy_hash(Some(&json!({"attest_gpu": true})))),
            hex::encode(Sha256::digest(br#"{"attest_gpu":true}"#))
        );
    }

    #[test]
    fn jcs_sorts_keys_and_formats_numbers() {
        let v: Value = serde_json::from_str(
            r#"{"b":[1e21,1e-7,0.000001,-0.5,4.50,7],"a":"\u20ac\n","\u00e9":null,"A":true}"#,
        )
        .unwrap();
        assert_eq!(
            canonical_json(&v),
            "{\"A\":true,\"a\":\"\u{20ac}\\n\",\"b\":[1e+21,1e-7,0.000001,-0.5,4.5,7],\"\u{e9}\":null}"
        );
    }

    #[test]
    fn es6_numbers_follow_rfc_8785() {
        assert_eq!(
            es6_number(1.234_567_890_123_456_8e20),
            "123456789012345680000"
        );
        assert_eq!(es6_number(1e21), "1e+21");
        assert_eq!(es6_number(9.007_199_254_740_992e15), "9007199254740992");
        assert_eq!(es6_number(-1.5e-7), "-1.5e-7");
        assert_eq!(es6_number(0.1), "0.1");
        assert_eq!(es6_number(-0.0), "0");
    }

    #[test]
    fn policy_defaults_are_strict_and_rego_is_refused() {
        assert_eq!(GpuPolicy::from_value(None).unwrap(), GpuPolicy::strict());
        let p = GpuPolicy::from_value(Some(&json!({"allow_devtools": true}))).unwrap();
        assert!(p.attest_gpu && p.allow_devtools && !p.allow_debug);
        assert_eq!(
            GpuPolicy::from_value(Some(&json!({"rego": "package policy"}))),
            Err(PolicyError::CheckRego)
        );
        assert!(matches!(
            GpuPolicy::from_value(Some(&json!({"attest": true}))),
            Err(PolicyError::ParsePolicy { .. })
        ));
    }

    #[test]
    fn attestation_payload_is_dstack_shaped() {
        let payload = gpu_attestation_payload(1, false, OcspStatus::Skipped, b"abc");
        assert_eq!(
            String::from_utf8(payload).unwrap(),
            "{\"version\":2,\"provider\":\"nvidia\",\"devices\":1,\"cc_mode\":\"on\",\"devtools\":false,\
             \"evidence_sha256\":\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\",\
             \"ocsp\":\"skipped\"}"
        );
    }

    fn on() -> CcState {
        CcState {
            environment: 2,
            cc_feature: 1,
            devtools_mode: 0,
            multi_gpu_mode: 0,
        }
    }

    #[test]
    fn gate_refuses_cc_off_devtools_ppcie_foreign_and_count() {
        let policy = GpuPolicy::strict();
        let input = |cc, pci, foreign: &[&str]| GateInput {
            pci_gpu_count: pci,
            foreign_display_devices: foreign.iter().map(|s| (*s).to_owned()).collect(),
            cc_state: cc,
        };
        assert_eq!(
            policy.evaluate(&input(None, 0, &[]), &[]).decision,
            GateDecision::NoGpus
        );
        let v = policy.evaluate(&input(None, 0, &["0000:00:02.0"]), &[]);
        assert_eq!(
            v.failures,
            vec![GateFailure::CheckForeignDisplay {
                address: "0000:00:02.0".into()
            }]
        );
        let off = CcState {
            cc_feature: 0,
            devtools_mode: 1,
            multi_gpu_mode: 1,
            environment: 1,
        };
        let v = policy.evaluate(&input(Some(off), 1, &[]), &[]);
        assert_eq!(v.decision, GateDecision::Refuse);
        assert_eq!(
            v.failures,
            vec![
                GateFailure::CheckPpcie,
                GateFailure::CheckCcMode { cc_feature: 0 },
                GateFailure::CheckEnvironment { environment: 1 },
                GateFailure::CheckDevtools,
                GateFailure::CheckDeviceCount {
                    pci: 1,
                    evidence: 0
                },
            ]
        );
        let v = policy.evaluate(&input(Some(on()), 2, &[]), &[]);
        assert_eq!(
            v.failures,
            vec![GateFailure::CheckDeviceCount {
                pci: 2,
                evidence: 0
            }]
        );
        let lax = GpuPolicy {
            attest_gpu: false,
            ..GpuPolicy::strict()
        };
        assert_eq!(
            lax.evaluate(&input(None, 1, &[]), &[]).decision,
            GateDecision::ReadyWithoutAttestation
        );
    }

    // PPCIe gate over synthetic verdicts: the claims a verified 8 + 4 board would have (the
    // public vectors are not one; signatures are never faked, only verdict structs are built).

    use crate::report::Pdi;
    use crate::verify::{GpuEvidence, SwitchVerdict};

    const SWITCH_PDIS: [u64; 4] = [0x11, 0x22, 0x33, 0x44];

    fn blank_options() -> crate::VerifyOptions {
        crate::VerifyOptions {
            nonce: [0; 32],
            now: crate::UnixTime(0),
            ocsp: crate::OcspMode::Skip,
        }
    }

    fn blank() -> GpuEvidence {
        GpuEvidence {
            report: Vec::new(),
            cert_chain: Vec::new(),
            arch: None,
        }
    }

    fn ppcie_gpu() -> GpuVerdict {
        let mut v = crate::verify_gpu(&blank(), &crate::FixedRims::default(), &blank_options());
        v.failures.clear();
        v.claims.report_parsed = true;
        v.claims.secure_boot = true;
        v.claims.debug_disabled = true;
        v.claims.protected_pcie = true;
        v.claims.feature_flag = Some(2);
        v.claims.switch_pdis = Some(
            SWITCH_PDIS
                .iter()
                .cycle()
                .take(18)
                .map(|p| Pdi(*p))
                .collect(),
        );
        v
    }

    fn switch(index: usize) -> SwitchVerdict {
        let mut v = crate::verify_switch(&blank(), &crate::FixedRims::default(), &blank_options());
        v.failures.clear();
        v.claims.device_pdi = Some(Pdi(SWITCH_PDIS[index]));
        v.claims.gpu_pdis = Some((0xa1..=0xa8).map(Pdi).collect());
        v
    }

    fn ppcie_state() -> CcState {
        CcState {
            environment: 2,
            cc_feature: 0,
            devtools_mode: 0,
            multi_gpu_mode: 1,
        }
    }

    fn board_input(state: CcState) -> GateInput {
        GateInput {
            pci_gpu_count: 8,
            foreign_display_devices: Vec::new(),
            cc_state: Some(state),
        }
    }

    #[test]
    fn ppcie_passes_only_with_verified_switches_and_topology() {
        let policy = GpuPolicy::strict();
        let gpus = vec![ppcie_gpu(); 8];
        let switches: Vec<SwitchVerdict> = (0..4).map(switch).collect();
        let input = board_input(ppcie_state());
        let v = policy.evaluate_with_switches(&input, &gpus, Some(&switches));
        assert_eq!(v.failures, vec![]);
        assert_eq!(v.decision, GateDecision::Ready);
        assert!(v.topology.as_ref().is_some_and(TopologyVerdict::passed));

        // Without switch evidence (the init today): refused, also with CC on.
        let v = policy.evaluate(&input, &gpus);
        assert_eq!(v.decision, GateDecision::Refuse);
        assert_eq!(
            v.failures,
            vec![
                GateFailure::CheckPpcie,
                GateFailure::CheckCcMode { cc_feature: 0 }
            ]
        );
        let cc_on = CcState {
            cc_feature: 1,
            ..ppcie_state()
        };
        assert_eq!(
            policy.evaluate(&board_input(cc_on), &gpus).failures,
            vec![GateFailure::CheckPpcie]
        );
    }

    #[test]
    fn ppcie_refuses_a_failed_switch_and_a_broken_topology() {
        let policy = GpuPolicy::strict();
        let gpus = vec![ppcie_gpu(); 8];
        let mut switches: Vec<SwitchVerdict> = (0..4).map(switch).collect();
        switches[2].failures.push(Failure::VerifyReportSignature);
        let input = board_input(ppcie_state());
        let v = policy.evaluate_with_switches(&input, &gpus, Some(&switches));
        assert_eq!(
            v.failures,
            vec![GateFailure::VerifySwitch {
                index: 2,
                failure: Failure::VerifyReportSignature
            }]
        );
        assert_eq!(
            cvm_error_chain::joined(&v.failures[0]),
            "NVSwitch 2: report signature does not verify under the attestation key"
        );

        let switches: Vec<SwitchVerdict> = (0..3).map(switch).collect();
        let v = policy.evaluate_with_switches(&input, &gpus, Some(&switches));
        assert_eq!(v.decision, GateDecision::Refuse);
        assert_eq!(
            v.failures,
            vec![GateFailure::CheckTopology(
                TopologyFailure::CheckSwitchCount { actual: 3 }
            )]
        );
    }

    #[test]
    fn ppcie_reports_need_ppcie_mode_and_unknown_modes_fail() {
        let policy = GpuPolicy::strict();
        let gpus = vec![ppcie_gpu(); 8];
        let switches: Vec<SwitchVerdict> = (0..4).map(switch).collect();
        let cc_mode = CcState {
            cc_feature: 1,
            multi_gpu_mode: 0,
            ..ppcie_state()
        };
        let v = policy.evaluate_with_switches(&board_input(cc_mode), &gpus, Some(&switches));
        assert_eq!(
            v.failures,
            vec![GateFailure::CheckPpcieMode { multi_gpu_mode: 0 }]
        );
        let odd = CcState {
            multi_gpu_mode: 7,
            ..cc_mode
        };
        let v = policy.evaluate_with_switches(&board_input(odd), &gpus, Some(&switches));
        assert_eq!(
            v.failures,
            vec![
                GateFailure::CheckMultiGpuMode { multi_gpu_mode: 7 },
                GateFailure::CheckPpcieMode { multi_gpu_mode: 7 },
            ]
        );
    }

    #[test]
    fn ppcie_payload_names_the_switches() {
        let payload = ppcie_attestation_payload(8, 4, false, OcspStatus::Skipped, b"abc", b"");
        let value: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(value["cc_mode"], "ppcie");
        assert_eq!(value["switches"], 4);
        assert_eq!(
            value["switch_evidence_sha256"],
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}

/// Everything the init needs from one GPU attestation round, computed in one call by
/// [`attest_system`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SystemAttestation {
    /// `gpu-policy-hash` payload (extend always, first).
    #[serde(serialize_with = "hex_bytes")]
    pub policy_hash: [u8; 32],
    /// Per-GPU verdicts in evidence order.
    pub verdicts: Vec<GpuVerdict>,
    /// Per-NVSwitch verdicts (PPCIe; empty without switch evidence).
    pub switch_verdicts: Vec<SwitchVerdict>,
    /// The gate.
    pub gate: GateVerdict,
    /// `gpu-attestation` payload, present only when `gate.decision == Ready` (extend it, then
    /// ask the helper to `set_ready`).
    #[serde(serialize_with = "optional_text")]
    pub attestation_payload: Option<Vec<u8>>,
}

fn hex_bytes<S: serde::Serializer>(bytes: &[u8; 32], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&hex::encode(bytes))
}

fn optional_text<S: serde::Serializer>(
    bytes: &Option<Vec<u8>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match bytes {
        Some(b) => serializer.serialize_str(&String::from_utf8_lossy(b)),
        None => serializer.serialize_none(),
    }
}

/// Inputs of [`attest_system`].
#[derive(Debug, Clone)]
pub struct SystemInput<'a> {
    /// The raw `requirements.gpu_policy` value (`None` = absent).
    pub gpu_policy: Option<&'a Value>,
    /// The NVAT-format evidence array exactly as collected (hashed into the event).
    pub evidence_document: &'a [u8],
    /// The nonce the init generated and gave the helper.
    pub nonce: [u8; 32],
    /// NVML CC state from the helper.
    pub cc_state: Option<CcState>,
    /// The PCI inventory (the init's own or the helper's).
    pub pci: &'a crate::pci::PciInventory,
    /// Verification time and revocation mode.
    pub now: crate::UnixTime,
    /// Revocation mode.
    pub ocsp: crate::OcspMode,
    /// Stapled OCSP responses for [`crate::OcspMode::Stapled`].
    pub ocsp_responses: &'a [Vec<u8>],
}

/// Why [`attest_system`] could not even evaluate (the gate stays closed either way).
#[derive(Debug, Error)]
pub enum AttestError {
    /// The policy is refused.
    #[error("gpu_policy")]
    ParsePolicy(#[source] PolicyError),
    /// The evidence document does not parse.
    #[error("GPU evidence document")]
    ParseEvidence(#[source] crate::evidence::EvidenceError),
    /// The switch evidence document does not parse.
    #[error("NVSwitch evidence document")]
    ParseSwitchEvidence(#[source] crate::evidence::EvidenceError),
}

/// One call for the init: policy hash, per-GPU verification, gate, and (on `Ready`) the
/// `gpu-attestation` payload. With no NVIDIA GPU on the bus the evidence is not parsed and the
/// decision is `NoGpus`. No switch evidence: PPCIe is refused (see [`attest_system_ppcie`]).
pub fn attest_system(
    input: &SystemInput<'_>,
    rims: &dyn crate::RimSource,
) -> Result<SystemAttestation, AttestError> {
    attest_system_ppcie(input, None, rims)
}

/// [`attest_system`] with the NVSwitch evidence document of a PPCIe set (NVAT format, `LS10`
/// entries, collected with the same nonce): every switch is verified against its switch BIOS
/// RIM from `rims`, and the gate requires them all and the topology
/// ([`GpuPolicy::evaluate_with_switches`]). On `Ready` the payload is
/// [`ppcie_attestation_payload`].
pub fn attest_system_ppcie(
    input: &SystemInput<'_>,
    switch_evidence_document: Option<&[u8]>,
    rims: &dyn crate::RimSource,
) -> Result<SystemAttestation, AttestError> {
    let policy_hash = gpu_policy_hash(input.gpu_policy);
    let policy = GpuPolicy::from_value(input.gpu_policy).map_err(AttestError::ParsePolicy)?;
    let gate_input = GateInput {
        pci_gpu_count: input.pci.nvidia.len(),
        foreign_display_devices: input.pci.refused(),
        cc_state: input.cc_state,
    };
    let verdicts: Vec<GpuVerdict> = if gate_input.pci_gpu_count == 0 || !policy.attest_gpu {
        Vec::new()
    } else {
        crate::evidence::parse_nvat_json(input.evidence_document)
            .map_err(AttestError::ParseEvidence)?
            .iter()
            .map(|entry| {
                crate::verify::verify_gpu_with_ocsp(
                    &entry.evidence,
                    rims,
                    &crate::VerifyOptions {
                        nonce: input.nonce,
                        now: input.now,
                        ocsp: input.ocsp,
                    },
                    input.ocsp_responses,
                )
            })
            .collect()
    };
    let options = crate::VerifyOptions {
        nonce: input.nonce,
        now: input.now,
        ocsp: input.ocsp,
    };
    let switch_verdicts: Option<Vec<SwitchVerdict>> = match switch_evidence_document {
        Some(document) if !verdicts.is_empty() => Some(
            crate::evidence::parse_nvat_json(document)
                .map_err(AttestError::ParseSwitchEvidence)?
                .iter()
                .map(|entry| {
                    crate::verify::verify_switch_with_ocsp(
                        &entry.evidence,
                        rims,
                        &options,
                        input.ocsp_responses,
                    )
                })
                .collect(),
        ),
        _ => None,
    };
    let gate = policy.evaluate_with_switches(&gate_input, &verdicts, switch_verdicts.as_deref());
    let devtools = input.cc_state.is_some_and(|s| s.devtools_mode != 0);
    let attestation_payload = (gate.decision == GateDecision::Ready).then(|| {
        let ocsp = verdicts
            .first()
            .map_or(OcspStatus::Skipped, |v| v.claims.ocsp);
        match (&switch_verdicts, switch_evidence_document) {
            (Some(switches), Some(document)) if gate.topology.is_some() => {
                ppcie_attestation_payload(
                    verdicts.len(),
                    switches.len(),
                    devtools,
                    ocsp,
                    input.evidence_document,
                    document,
                )
            }
            _ => gpu_attestation_payload(verdicts.len(), devtools, ocsp, input.evidence_document),
        }
    });
    Ok(SystemAttestation {
        policy_hash,
        verdicts,
        switch_verdicts: switch_verdicts.unwrap_or_default(),
        gate,
        attestation_payload,
    })
}
