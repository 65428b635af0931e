//! Verification of one device's evidence against RIMs, with typed claims and a verdict that
//! lists every failing reason (spec §1.4–§1.9): GPUs ([`verify_gpu`]: driver + VBIOS RIMs) and
//! NVSwitches ([`verify_switch`]: the switch BIOS RIM, spec §2). Both share the certificate
//! chain to the same NVIDIA root, the report signature, the nonce, the SPDM parser, the FWID
//! binding, the RIM verification and the golden-value comparison; only the opaque data, the RIM
//! ids and the claims differ by [`DeviceKind`].

use p384::ecdsa::Signature;
use p384::ecdsa::signature::Verifier as _;
use serde::Serialize;
use thiserror::Error;

use crate::UnixTime;
use crate::certs::{self, ChainError, ParsedCert};
use crate::report::{self, AttestationReport, NvdecStatus, Pdi, ReportError, SwitchReport};
use crate::rim::{Rim, RimError};

/// GPU architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Arch {
    /// H100 / H200 (NVML architecture 9).
    Hopper,
    /// B200 / GB200 (NVML architecture 10).
    Blackwell,
}

impl Arch {
    /// From the NVAT / NRAS `arch` string.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "HOPPER" => Some(Self::Hopper),
            "BLACKWELL" => Some(Self::Blackwell),
            _ => None,
        }
    }

    /// From NVML `nvmlDeviceGetArchitecture` (9 Hopper, 10 Blackwell).
    pub fn from_nvml(value: u32) -> Option<Self> {
        match value {
            9 => Some(Self::Hopper),
            10 => Some(Self::Blackwell),
            _ => None,
        }
    }

    /// The NVAT / NRAS name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hopper => "HOPPER",
            Self::Blackwell => "BLACKWELL",
        }
    }

    /// From the leaf certificate's common name (`GH100 A01 GSP FMC LF`, `GB100 …`).
    fn from_leaf_name(cn: &str) -> Option<Self> {
        if cn.starts_with("GH100 ") {
            Some(Self::Hopper)
        } else if cn.starts_with("GB100 ") {
            Some(Self::Blackwell)
        } else {
            None
        }
    }
}

/// The kind of device an attestation report comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// A GPU (Hopper, Blackwell).
    Gpu,
    /// An NVSwitch (LS10).
    Switch,
}

impl DeviceKind {
    /// From the NVAT `arch` string: `HOPPER` / `BLACKWELL` → GPU, `LS10` → switch.
    pub fn from_arch_name(name: &str) -> Option<Self> {
        if Arch::from_name(name).is_some() {
            Some(Self::Gpu)
        } else if SwitchArch::from_name(name).is_some() {
            Some(Self::Switch)
        } else {
            None
        }
    }

    /// From the leaf certificate's common name.
    fn from_leaf_name(cn: &str) -> Option<Self> {
        if Arch::from_leaf_name(cn).is_some() {
            Some(Self::Gpu)
        } else if SwitchArch::from_leaf_name(cn).is_some() {
            Some(Self::Switch)
        } else {
            None
        }
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Gpu => "GPU",
            Self::Switch => "NVSwitch",
        })
    }
}

/// NVSwitch architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SwitchArch {
    /// LS10 (the Hopper HGX NVSwitch).
    Ls10,
}

impl SwitchArch {
    /// From the NVAT `arch` string (`LS10`).
    pub fn from_name(name: &str) -> Option<Self> {
        name.eq_ignore_ascii_case("LS10").then_some(Self::Ls10)
    }

    /// The NVAT name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ls10 => "LS10",
        }
    }

    /// From the leaf certificate's common name (`LS_10 A01 FSP FMC LF`).
    fn from_leaf_name(cn: &str) -> Option<Self> {
        cn.starts_with("LS_10 ").then_some(Self::Ls10)
    }
}

/// Which RIM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RimKind {
    /// The driver RIM (`NV_GPU_DRIVER_GH100_<version>`).
    Driver,
    /// The VBIOS RIM (`NV_GPU_VBIOS_<project>_<sku>_<chip>_<version>`).
    Vbios,
    /// An NVSwitch's BIOS RIM (`NV_SWITCH_BIOS_5612_0002_890_<version>`).
    SwitchBios,
}

impl std::fmt::Display for RimKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Driver => "driver",
            Self::Vbios => "VBIOS",
            Self::SwitchBios => "switch BIOS",
        })
    }
}

/// How certificate revocation is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OcspMode {
    /// Explicitly skipped (offline). Visible in the claims and in the measured event; the
    /// verdict is "valid, revocation not checked".
    Skip,
    /// Required online. This library does no I/O, so this mode always fails with
    /// [`Failure::CheckRevocation`]; fetch responses and pass them as `Stapled`.
    Require,
    /// Stapled / cached DER responses (passed to [`verify_gpu_with_ocsp`]) must show "good"
    /// for every device-chain certificate except leaf and root, and for every RIM-chain
    /// certificate except the root. The responder, signature and validity window are checked;
    /// the OCSP nonce is not (responses were fetched without the guest's nonce).
    Stapled {
        /// Tolerate revocation reason certificateHold (explicit opt-in).
        allow_hold: bool,
    },
}

/// The revocation claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OcspStatus {
    /// Not checked, by explicit choice.
    Skipped,
    /// Required but no usable response.
    Unavailable,
    /// Every checked certificate has a verified "good" stapled response.
    Good,
    /// As `Good`, but at least one certificate is on hold (tolerated by choice).
    GoodWithHold,
    /// Some certificate is revoked, unknown, or lacks a verifying response.
    Failed,
}

/// Which chain a revocation failure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChainKind {
    /// The GPU's device chain.
    Device,
    /// The driver RIM's signing chain.
    DriverRim,
    /// The VBIOS RIM's signing chain.
    VbiosRim,
    /// The switch BIOS RIM's signing chain.
    SwitchBiosRim,
}

impl std::fmt::Display for ChainKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Device => "device",
            Self::DriverRim => "driver RIM",
            Self::VbiosRim => "VBIOS RIM",
            Self::SwitchBiosRim => "switch BIOS RIM",
        })
    }
}

/// Where RIMs come from: a bundle keyed by RIM id, or fixed files.
pub trait RimSource {
    /// The RIM with this id, if the source has it.
    fn rim(&self, kind: RimKind, id: &str) -> Option<Vec<u8>>;
}

/// A source that answers every lookup of a kind with the same bytes (tests, CLI flags).
/// A switch BIOS RIM lookup is answered with `vbios` (the switch BIOS is the switch's VBIOS; NVAT
/// names it so): use one `FixedRims` per device kind.
#[derive(Debug, Clone, Default)]
pub struct FixedRims {
    /// The driver RIM.
    pub driver: Option<Vec<u8>>,
    /// The VBIOS RIM (or, for switches, the switch BIOS RIM).
    pub vbios: Option<Vec<u8>>,
}

impl RimSource for FixedRims {
    fn rim(&self, kind: RimKind, _id: &str) -> Option<Vec<u8>> {
        match kind {
            RimKind::Driver => self.driver.clone(),
            RimKind::Vbios | RimKind::SwitchBios => self.vbios.clone(),
        }
    }
}

/// RIMs keyed by RIM service id (e.g. an offline bundle `<dir>/<RIM_ID>.xml` the caller read).
#[derive(Debug, Clone, Default)]
pub struct RimBundle {
    rims: std::collections::BTreeMap<String, Vec<u8>>,
}

impl RimBundle {
    /// Adds a RIM under its id.
    pub fn insert(&mut self, id: impl Into<String>, rim: Vec<u8>) {
        self.rims.insert(id.into(), rim);
    }

    /// Ids present.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.rims.keys().map(String::as_str)
    }
}

impl RimSource for RimBundle {
    fn rim(&self, _kind: RimKind, id: &str) -> Option<Vec<u8>> {
        self.rims.get(id).cloned()
    }
}

/// The evidence of one device: what NVML returns for a GPU, or NSCQ for an NVSwitch (same
/// shape: the raw report and the PEM chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuEvidence {
    /// `attestationReport[0..attestationReportSize]`.
    pub report: Vec<u8>,
    /// `attestationCertChain[0..attestationCertChainSize]` (PEM, leaf first).
    pub cert_chain: Vec<u8>,
    /// The architecture the collector reported (NVML; `LS10` for switches), if any; must agree
    /// with the chain.
    pub arch: Option<String>,
}

/// The evidence of any device kind (the same type as [`GpuEvidence`]).
pub type DeviceEvidence = GpuEvidence;

/// Verification inputs besides the evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyOptions {
    /// The nonce the caller gave NVML (the request nonce must equal it).
    pub nonce: [u8; 32],
    /// Verification time (certificate and RIM validity). Never the wall clock inside the
    /// library.
    pub now: UnixTime,
    /// Revocation mode.
    pub ocsp: OcspMode,
}

/// One reason a GPU fails. Variants are data so tests assert exact reasons.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Failure {
    /// The evidence names an architecture that is not Hopper or Blackwell (e.g. an NVSwitch).
    #[error("unsupported architecture {arch}")]
    CheckArchitecture { arch: String },
    /// The collector's architecture disagrees with the certificate chain.
    #[error("evidence says {evidence} but the certificate chain is {chain}")]
    CheckArchitectureMatch { evidence: String, chain: String },
    /// The evidence is of another device kind than the verifier asked for (a switch report
    /// given as a GPU's, or the reverse); `by` says what named it (the `arch` field or the
    /// leaf certificate).
    #[error("expected {expected} evidence, but its {by} names a {found}")]
    CheckDeviceKind {
        expected: DeviceKind,
        found: DeviceKind,
        by: &'static str,
    },
    /// The attestation report does not parse.
    #[error("attestation report does not parse")]
    ParseReport(#[source] ReportError),
    /// The certificate chain text does not parse.
    #[error("certificate chain does not parse")]
    ParseCertChain(#[source] ChainError),
    /// The request nonce is not the caller's (replay).
    #[error("report nonce {actual} is not the expected {expected}")]
    CheckNonce { expected: String, actual: String },
    /// The report signature does not verify under the leaf certificate.
    #[error("report signature does not verify under the attestation key")]
    VerifyReportSignature,
    /// The device chain does not verify to the pinned root.
    #[error("device certificate chain")]
    VerifyDeviceChain(#[source] ChainError),
    /// The report's FWID differs from the leaf certificate's.
    #[error("report FWID {report} differs from the certificate FWID {certificate}")]
    CheckFwid { report: String, certificate: String },
    /// The report has an FWID but the leaf certificate binds none.
    #[error("report carries an FWID but the leaf certificate has no TcbInfo FWID")]
    FindCertificateFwid,
    /// Revocation was required and could not be established.
    #[error("certificate revocation could not be checked (OCSP required, no response)")]
    CheckRevocation,
    /// A stapled OCSP check failed for one certificate.
    #[error("{chain} chain certificate {index}: revocation")]
    VerifyRevocation {
        chain: ChainKind,
        index: usize,
        #[source]
        error: crate::ocsp::OcspError,
    },
    /// The RIM source has no RIM for this id.
    #[error("{kind} RIM {id} not found")]
    FindRim { kind: RimKind, id: String },
    /// The RIM does not parse or verify.
    #[error("{kind} RIM {id}")]
    VerifyRim {
        kind: RimKind,
        id: String,
        #[source]
        error: RimError,
    },
    /// The RIM is for another version than the report.
    #[error("{kind} RIM is for version {rim}, the report has {report}")]
    CheckRimVersion {
        kind: RimKind,
        rim: String,
        report: String,
    },
    /// The RIM has no active measurement.
    #[error("{kind} RIM has no active measurements")]
    FindActiveMeasurements { kind: RimKind },
    /// The same index is active in both RIMs.
    #[error("measurement index {index} is active in both the driver and the VBIOS RIM")]
    CheckIndexConflict { index: u32 },
    /// A golden index has no runtime block.
    #[error("{source_rim} RIM index {index} has no measurement block in the report")]
    FindMeasurement { index: u32, source_rim: RimKind },
    /// A runtime value has another length than the RIM's size.
    #[error("{source_rim} RIM index {index}: runtime value is {actual} bytes, expected {expected}")]
    CheckMeasurementSize {
        index: u32,
        source_rim: RimKind,
        expected: usize,
        actual: usize,
    },
    /// A runtime value matches none of the RIM's alternatives.
    #[error("{source_rim} RIM index {index}: runtime value {actual} matches no golden value")]
    CompareMeasurement {
        index: u32,
        source_rim: RimKind,
        actual: String,
    },
}

impl Failure {
    /// A stable machine-readable code (the variant name).
    pub fn code(&self) -> &'static str {
        match self {
            Self::CheckArchitecture { .. } => "CheckArchitecture",
            Self::CheckArchitectureMatch { .. } => "CheckArchitectureMatch",
            Self::CheckDeviceKind { .. } => "CheckDeviceKind",
            Self::ParseReport(_) => "ParseReport",
            Self::ParseCertChain(_) => "ParseCertChain",
            Self::CheckNonce { .. } => "CheckNonce",
            Self::VerifyReportSignature => "VerifyReportSignature",
            Self::VerifyDeviceChain(_) => "VerifyDeviceChain",
            Self::CheckFwid { .. } => "CheckFwid",
            Self::FindCertificateFwid => "FindCertificateFwid",
            Self::CheckRevocation => "CheckRevocation",
            Self::VerifyRevocation { .. } => "VerifyRevocation",
            Self::FindRim { .. } => "FindRim",
            Self::VerifyRim { .. } => "VerifyRim",
            Self::CheckRimVersion { .. } => "CheckRimVersion",
            Self::FindActiveMeasurements { .. } => "FindActiveMeasurements",
            Self::CheckIndexConflict { .. } => "CheckIndexConflict",
            Self::FindMeasurement { .. } => "FindMeasurement",
            Self::CheckMeasurementSize { .. } => "CheckMeasurementSize",
            Self::CompareMeasurement { .. } => "CompareMeasurement",
        }
    }

    /// The whole error chain on one line.
    pub fn message(&self) -> String {
        cvm_error_chain::joined(self)
    }
}

/// Certificate-chain status claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertStatus {
    /// Verifies and every certificate is inside its validity window.
    Valid,
    /// Verifies structurally but a certificate expired (or is not yet valid).
    Expired,
    /// Does not verify.
    Invalid,
    /// Not evaluated.
    NotChecked,
}

fn cert_status(result: Option<&Result<(), ChainError>>) -> CertStatus {
    match result {
        None => CertStatus::NotChecked,
        Some(Ok(())) => CertStatus::Valid,
        Some(Err(ChainError::CheckExpiry { .. } | ChainError::CheckNotYetValid { .. })) => {
            CertStatus::Expired
        }
        Some(Err(_)) => CertStatus::Invalid,
    }
}

/// Overall measurement result (`measres`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MeasurementResult {
    /// Both RIMs verified and every active golden value matched.
    Success,
    /// At least one mismatch, missing block or conflict.
    Mismatch,
    /// A RIM was missing or did not verify, so the comparison is incomplete.
    NotEvaluated,
}

/// Claims about one RIM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RimClaims {
    /// The RIM id looked up.
    pub id: Option<String>,
    /// Found in the source.
    pub fetched: bool,
    /// XML-DSig digest and signature verify.
    pub signature_verified: bool,
    /// Signing chain status.
    pub cert_chain: CertStatus,
    /// Earliest notAfter of its chain (Unix seconds).
    pub cert_expiration: Option<u64>,
    /// colloquialVersion equals the report's version.
    pub version_match: bool,
    /// Number of active golden measurements.
    pub active_measurements: usize,
}

impl RimClaims {
    fn new() -> Self {
        Self {
            id: None,
            fetched: false,
            signature_verified: false,
            cert_chain: CertStatus::NotChecked,
            cert_expiration: None,
            version_match: false,
            active_measurements: 0,
        }
    }
}

/// Typed claims for one GPU (the NVAT claims v3 items this verifier evaluates).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuClaims {
    /// Architecture from the leaf certificate.
    pub arch: Option<Arch>,
    /// `hwmodel`: CN of certificate 1 (`GH100 A01 GSP BROM`).
    pub hwmodel: Option<String>,
    /// `ueid`: the leaf certificate serial number (hex).
    pub ueid: Option<String>,
    /// The report parsed.
    pub report_parsed: bool,
    /// The request nonce equals the caller's.
    pub nonce_match: bool,
    /// The report signature verified under the leaf key.
    pub signature_verified: bool,
    /// Device chain status.
    pub cert_chain: CertStatus,
    /// FWID binding: `None` when the report has no FWID (older firmware).
    pub fwid_match: Option<bool>,
    /// Revocation status (all chains).
    pub ocsp: OcspStatus,
    /// `DRIVER_VERSION`.
    pub driver_version: Option<String>,
    /// `VBIOS_VERSION` (`96.00.5E.00.01`).
    pub vbios_version: Option<String>,
    /// `PROTECTED_PCIE_STATUS` == 0xAA.
    pub protected_pcie: bool,
    /// `FEATURE_FLAG` (2 = PPCIe).
    pub feature_flag: Option<u64>,
    /// `SWITCH_PDI` entries (little-endian; zero = disabled link): the PPCIe topology input.
    pub switch_pdis: Option<Vec<Pdi>>,
    /// NVDEC0 status (index 35 rule).
    pub nvdec0: Option<NvdecStatus>,
    /// The driver RIM.
    pub driver_rim: RimClaims,
    /// The VBIOS RIM.
    pub vbios_rim: RimClaims,
    /// No index active in both RIMs.
    pub vbios_index_no_conflict: bool,
    /// `measres`.
    pub measurement_result: MeasurementResult,
    /// `secboot` (derived from the measurement match, as both references do).
    pub secure_boot: bool,
    /// `dbgstat == "disabled"` (derived from the measurement match).
    pub debug_disabled: bool,
    /// `oemid`: the driver RIM's FirmwareManufacturerId.
    pub oemid: Option<String>,
}

/// The verdict for one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuVerdict {
    /// What was established.
    pub claims: GpuClaims,
    /// Every failing reason (empty: the evidence verified).
    #[serde(serialize_with = "serialize_failures")]
    pub failures: Vec<Failure>,
}

impl GpuVerdict {
    /// True when nothing failed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Serializes failures as `{"code","message"}` objects.
pub fn serialize_failures<S: serde::Serializer>(
    failures: &[Failure],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq as _;
    let mut seq = serializer.serialize_seq(Some(failures.len()))?;
    for failure in failures {
        seq.serialize_element(&serde_json::json!({
            "code": failure.code(),
            "message": failure.message(),
        }))?;
    }
    seq.end()
}

/// The driver RIM id for a report.
pub fn driver_rim_id(arch: Arch, report: &AttestationReport) -> String {
    match arch {
        Arch::Hopper => format!("NV_GPU_DRIVER_GH100_{}", report.opaque.driver_version),
        Arch::Blackwell => format!(
            "NV_GPU_CC_DRIVER_{}_{}",
            report
                .opaque
                .chip_info
                .as_deref()
                .unwrap_or("GB100")
                .to_uppercase(),
            report.opaque.driver_version
        ),
    }
}

/// Verifies the report signature over `report[..len-96]` with the leaf key.
pub fn verify_report_signature(report: &[u8], leaf: &ParsedCert) -> bool {
    let Some(signed_len) = report.len().checked_sub(report::SIGNATURE_LEN) else {
        return false;
    };
    let Ok(key) = leaf.p384_key(0) else {
        return false;
    };
    let Ok(signature) = Signature::from_slice(&report[signed_len..]) else {
        return false;
    };
    key.verify(&report[..signed_len], &signature).is_ok()
}

/// Verifies one GPU's evidence. Every check that can run does run; the verdict lists each
/// failure. Pass = no failures. (No stapled OCSP responses: see [`verify_gpu_with_ocsp`].)
pub fn verify_gpu(
    evidence: &GpuEvidence,
    rims: &dyn RimSource,
    options: &VerifyOptions,
) -> GpuVerdict {
    verify_gpu_with_ocsp(evidence, rims, options, &[])
}

/// Checks stapled responses for `chain` (leaf first, ending in the pinned root) at the given
/// indexes; returns false if any failed.
fn check_stapled(
    kind: ChainKind,
    chain: &[ParsedCert],
    indexes: std::ops::Range<usize>,
    staples: &[Vec<u8>],
    options: &VerifyOptions,
    failures: &mut Vec<Failure>,
) -> (bool, bool) {
    let OcspMode::Stapled { allow_hold } = options.ocsp else {
        return (true, false);
    };
    let mut all_good = true;
    let mut any_hold = false;
    for index in indexes {
        let (Some(subject), Some(issuer)) = (chain.get(index), chain.get(index + 1)) else {
            continue;
        };
        let above = &chain[index + 1..];
        let mut outcome = Err(crate::ocsp::OcspError::FindResponse);
        for staple in staples {
            let result = crate::ocsp::check_response(
                staple,
                subject,
                issuer,
                above,
                options.now,
                None,
                allow_hold,
            );
            match result {
                Ok(good) => {
                    outcome = Ok(good);
                    break;
                }
                Err(crate::ocsp::OcspError::FindResponse) => {}
                // A response for another certificate may not even parse as ours; keep the
                // most specific error for a response that did name this certificate.
                Err(crate::ocsp::OcspError::ParseResponse { .. }) => {}
                Err(error) => outcome = Err(error),
            }
        }
        match outcome {
            Ok(crate::ocsp::OcspGood::Good) => {}
            Ok(crate::ocsp::OcspGood::OnHold) => any_hold = true,
            Err(error) => {
                all_good = false;
                failures.push(Failure::VerifyRevocation {
                    chain: kind,
                    index,
                    error,
                });
            }
        }
    }
    (all_good, any_hold)
}

fn ocsp_claim(current: OcspStatus, (good, hold): (bool, bool)) -> OcspStatus {
    match (current, good, hold) {
        (OcspStatus::Failed, _, _) | (_, false, _) => OcspStatus::Failed,
        (OcspStatus::GoodWithHold, _, _) | (_, true, true) => OcspStatus::GoodWithHold,
        (other, true, false) => other,
    }
}

/// What the kind-independent checks of the chain established.
struct ChainPart {
    chain: Option<Vec<ParsedCert>>,
    cert_chain: CertStatus,
    ocsp: OcspStatus,
    hwmodel: Option<String>,
    ueid: Option<String>,
    leaf_cn: Option<String>,
}

impl ChainPart {
    fn leaf(&self) -> Option<&ParsedCert> {
        self.chain.as_ref().and_then(|c| c.first())
    }
}

fn initial_ocsp(mode: OcspMode) -> OcspStatus {
    match mode {
        OcspMode::Skip => OcspStatus::Skipped,
        OcspMode::Require => OcspStatus::Unavailable,
        OcspMode::Stapled { .. } => OcspStatus::Good,
    }
}

/// Parses the PEM chain and verifies it to the pinned Device Identity CA (the same root for
/// GPUs and switches), with stapled OCSP for every certificate except leaf and root.
fn check_device_chain(
    evidence: &GpuEvidence,
    options: &VerifyOptions,
    staples: &[Vec<u8>],
    failures: &mut Vec<Failure>,
) -> ChainPart {
    let mut part = ChainPart {
        chain: None,
        cert_chain: CertStatus::NotChecked,
        ocsp: initial_ocsp(options.ocsp),
        hwmodel: None,
        ueid: None,
        leaf_cn: None,
    };
    match certs::parse_pem_chain(&evidence.cert_chain) {
        Ok(chain) => part.chain = Some(chain),
        Err(error) => failures.push(Failure::ParseCertChain(error)),
    }
    if let Some(chain) = &part.chain {
        let result = certs::parse_pem_cert(certs::DEVICE_IDENTITY_ROOT_PEM).and_then(|root| {
            certs::verify_chain(chain, &root, certs::DEVICE_CHAIN_LEN, true, options.now)
                .map(|_| ())
        });
        part.cert_chain = cert_status(Some(&result));
        if let Err(error) = result {
            failures.push(Failure::VerifyDeviceChain(error));
        } else {
            // NVAT's rule: every certificate except the leaf and the root.
            let checked = check_stapled(
                ChainKind::Device,
                chain,
                1..chain.len().saturating_sub(1),
                staples,
                options,
                failures,
            );
            part.ocsp = ocsp_claim(part.ocsp, checked);
        }
        part.hwmodel = chain.get(1).and_then(ParsedCert::common_name);
    }
    let leaf = part.leaf();
    let (ueid, leaf_cn) = (
        leaf.map(|l| hex::encode(l.serial())),
        leaf.and_then(ParsedCert::common_name),
    );
    part.ueid = ueid;
    part.leaf_cn = leaf_cn;
    part
}

/// Refuses evidence of the other device kind, named by the `arch` field or the leaf
/// certificate (one failure per source that names it).
fn check_kind(
    expected: DeviceKind,
    evidence: &GpuEvidence,
    leaf_cn: Option<&str>,
    failures: &mut Vec<Failure>,
) -> bool {
    let before = failures.len();
    let by_arch = evidence
        .arch
        .as_deref()
        .and_then(DeviceKind::from_arch_name);
    let by_leaf = leaf_cn.and_then(DeviceKind::from_leaf_name);
    for (found, by) in [(by_arch, "arch field"), (by_leaf, "leaf certificate")] {
        if let Some(found) = found
            && found != expected
        {
            failures.push(Failure::CheckDeviceKind {
                expected,
                found,
                by,
            });
        }
    }
    failures.len() == before
}

/// The report signature and the request nonce work on the raw bytes, so they are reported
/// even when the opaque data is refused; `Require` revocation fails here (no I/O).
fn check_report_bytes(
    report: &[u8],
    leaf: Option<&ParsedCert>,
    options: &VerifyOptions,
    failures: &mut Vec<Failure>,
) -> (bool, bool) {
    let mut signature_verified = false;
    if let Some(leaf) = leaf {
        signature_verified = verify_report_signature(report, leaf);
        if !signature_verified {
            failures.push(Failure::VerifyReportSignature);
        }
    }
    let mut nonce_match = false;
    if let Some(nonce) = report.get(4..36) {
        nonce_match = nonce == options.nonce;
        if !nonce_match {
            failures.push(Failure::CheckNonce {
                expected: hex::encode(options.nonce),
                actual: hex::encode(nonce),
            });
        }
    }
    if options.ocsp == OcspMode::Require {
        failures.push(Failure::CheckRevocation);
    }
    (signature_verified, nonce_match)
}

/// FWID binding: `None` when the report has none (older firmware, the sample switch).
fn check_fwid(
    fwid: Option<[u8; 48]>,
    leaf: Option<&ParsedCert>,
    failures: &mut Vec<Failure>,
) -> Option<bool> {
    let (fwid, leaf) = (fwid?, leaf?);
    match certs::leaf_fwid(leaf) {
        Ok(Some(cert_fwid)) if cert_fwid == fwid => Some(true),
        Ok(Some(cert_fwid)) => {
            failures.push(Failure::CheckFwid {
                report: hex::encode(fwid),
                certificate: hex::encode(cert_fwid),
            });
            Some(false)
        }
        Ok(None) | Err(_) => {
            failures.push(Failure::FindCertificateFwid);
            Some(false)
        }
    }
}

/// [`verify_gpu`] with stapled / cached OCSP responses (DER `OCSPResponse`s, any order) for
/// [`OcspMode::Stapled`].
pub fn verify_gpu_with_ocsp(
    evidence: &GpuEvidence,
    rims: &dyn RimSource,
    options: &VerifyOptions,
    staples: &[Vec<u8>],
) -> GpuVerdict {
    let mut failures = Vec::new();
    let part = check_device_chain(evidence, options, staples, &mut failures);
    let leaf = part.leaf();
    let mut claims = GpuClaims {
        arch: part.leaf_cn.as_deref().and_then(Arch::from_leaf_name),
        hwmodel: part.hwmodel.clone(),
        ueid: part.ueid.clone(),
        report_parsed: false,
        nonce_match: false,
        signature_verified: false,
        cert_chain: part.cert_chain,
        fwid_match: None,
        ocsp: part.ocsp,
        driver_version: None,
        vbios_version: None,
        protected_pcie: false,
        feature_flag: None,
        switch_pdis: None,
        nvdec0: None,
        driver_rim: RimClaims::new(),
        vbios_rim: RimClaims::new(),
        vbios_index_no_conflict: false,
        measurement_result: MeasurementResult::NotEvaluated,
        secure_boot: false,
        debug_disabled: false,
        oemid: None,
    };
    if check_kind(
        DeviceKind::Gpu,
        evidence,
        part.leaf_cn.as_deref(),
        &mut failures,
    ) {
        if let Some(name) = &evidence.arch {
            match (Arch::from_name(name), claims.arch) {
                (None, _) => failures.push(Failure::CheckArchitecture { arch: name.clone() }),
                (Some(given), Some(chain)) if given != chain => {
                    failures.push(Failure::CheckArchitectureMatch {
                        evidence: given.name().into(),
                        chain: chain.name().into(),
                    });
                }
                _ => {}
            }
        } else if leaf.is_some() && claims.arch.is_none() {
            failures.push(Failure::CheckArchitecture {
                arch: part.leaf_cn.clone().unwrap_or_default(),
            });
        }
    }

    (claims.signature_verified, claims.nonce_match) =
        check_report_bytes(&evidence.report, leaf, options, &mut failures);
    if identity_failed(&failures) {
        return GpuVerdict { claims, failures };
    }

    let report = match AttestationReport::parse(&evidence.report) {
        Ok(report) => report,
        Err(error) => {
            failures.push(Failure::ParseReport(error));
            return GpuVerdict { claims, failures };
        }
    };
    claims.report_parsed = true;
    claims.driver_version = Some(report.opaque.driver_version.clone());
    claims.vbios_version = Some(report.opaque.vbios_version.clone());
    claims.protected_pcie = report.opaque.protected_pcie == Some(true);
    claims.feature_flag = report.opaque.feature_flag;
    claims.switch_pdis = report.opaque.switch_pdis.clone();
    claims.nvdec0 = Some(report.opaque.nvdec0_status);
    claims.fwid_match = check_fwid(report.opaque.fwid, leaf, &mut failures);

    // RIMs.
    let arch = claims.arch.unwrap_or(Arch::Hopper);
    let driver_id = driver_rim_id(arch, &report);
    let vbios_id = report.opaque.vbios_rim_id();
    let mut revocation = claims.ocsp;
    let driver = load_rim(
        rims,
        RimKind::Driver,
        &driver_id,
        &report.opaque.driver_version,
        (options, staples, &mut revocation),
        &mut claims.driver_rim,
        &mut failures,
    );
    let vbios = load_rim(
        rims,
        RimKind::Vbios,
        &vbios_id,
        &report.opaque.vbios_version,
        (options, staples, &mut revocation),
        &mut claims.vbios_rim,
        &mut failures,
    );
    claims.ocsp = revocation;
    claims.oemid = driver
        .as_ref()
        .and_then(|r| r.firmware_manufacturer_id.clone());

    // Golden-value comparison over the RIMs that verified.
    let mut mismatches = Vec::new();
    let mut conflict = false;
    if let (Some(d), Some(v)) = (&driver, &vbios) {
        for m in d.active() {
            if v.active().any(|x| x.index == m.index) {
                conflict = true;
                mismatches.push(Failure::CheckIndexConflict { index: m.index });
            }
        }
    }
    claims.vbios_index_no_conflict = driver.is_some() && vbios.is_some() && !conflict;
    let nvdec_disabled = report.opaque.nvdec0_status == NvdecStatus::Disabled;
    let skip = |index: u32| index == 35 && nvdec_disabled;
    for (kind, rim) in [(RimKind::Driver, &driver), (RimKind::Vbios, &vbios)] {
        let Some(rim) = rim else { continue };
        compare(kind, rim, &report.measurements, &skip, &mut mismatches);
    }
    claims.measurement_result = if !mismatches.is_empty() {
        MeasurementResult::Mismatch
    } else if driver.is_some() && vbios.is_some() {
        MeasurementResult::Success
    } else {
        MeasurementResult::NotEvaluated
    };
    failures.extend(mismatches);
    claims.secure_boot = claims.measurement_result == MeasurementResult::Success;
    claims.debug_disabled = claims.secure_boot;
    GpuVerdict { claims, failures }
}

/// Typed claims for one NVSwitch (NVAT switch claims v3 items this verifier evaluates).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwitchClaims {
    /// Architecture from the leaf certificate (`LS_10 A01 FSP FMC LF`).
    pub arch: Option<SwitchArch>,
    /// `hwmodel`: CN of certificate 1 (`LS_10 A01 FSP BROM`).
    pub hwmodel: Option<String>,
    /// `ueid`: the leaf certificate serial number (hex).
    pub ueid: Option<String>,
    /// The report parsed.
    pub report_parsed: bool,
    /// Measurement blocks in the report (31 on LS10).
    pub measurement_blocks: Option<usize>,
    /// The request nonce equals the caller's.
    pub nonce_match: bool,
    /// The report signature verified under the leaf key.
    pub signature_verified: bool,
    /// Device chain status.
    pub cert_chain: CertStatus,
    /// FWID binding: `None` when the report has no FWID.
    pub fwid_match: Option<bool>,
    /// Revocation status (device and RIM chain).
    pub ocsp: OcspStatus,
    /// BIOS version (`96.10.55.00.01`).
    pub bios_version: Option<String>,
    /// DEVICE_PDI: this switch's identifier (PPCIe topology input).
    pub device_pdi: Option<Pdi>,
    /// The 8 GPU PDIs of SWITCH_GPU_PDIS (PPCIe topology input).
    pub gpu_pdis: Option<Vec<Pdi>>,
    /// SWITCH_POSITION_ID.
    pub position_id: Option<u64>,
    /// SWITCH_LOCK_STATUS.
    pub lock_status: Option<u64>,
    /// The switch BIOS RIM.
    pub bios_rim: RimClaims,
    /// `measres`.
    pub measurement_result: MeasurementResult,
    /// `secboot` (derived from the measurement match).
    pub secure_boot: bool,
    /// `dbgstat == "disabled"` (derived from the measurement match).
    pub debug_disabled: bool,
}

/// The verdict for one NVSwitch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwitchVerdict {
    /// What was established.
    pub claims: SwitchClaims,
    /// Every failing reason (empty: the evidence verified).
    #[serde(serialize_with = "serialize_failures")]
    pub failures: Vec<Failure>,
}

impl SwitchVerdict {
    /// True when nothing failed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Verifies one NVSwitch's evidence (NSCQ report + chain, or an NVAT `LS10` entry): the chain
/// to the same NVIDIA Device Identity CA as GPUs, the report signature over the nonce, the
/// SPDM report with switch opaque data, the FWID (when present), and the switch BIOS RIM
/// `NV_SWITCH_BIOS_5612_0002_890_<version>` (signature, chain to the CoRIM root, version, every
/// active golden value). Every failure is listed.
pub fn verify_switch(
    evidence: &GpuEvidence,
    rims: &dyn RimSource,
    options: &VerifyOptions,
) -> SwitchVerdict {
    verify_switch_with_ocsp(evidence, rims, options, &[])
}

/// [`verify_switch`] with stapled / cached OCSP responses for [`OcspMode::Stapled`].
pub fn verify_switch_with_ocsp(
    evidence: &GpuEvidence,
    rims: &dyn RimSource,
    options: &VerifyOptions,
    staples: &[Vec<u8>],
) -> SwitchVerdict {
    let mut failures = Vec::new();
    let part = check_device_chain(evidence, options, staples, &mut failures);
    let leaf = part.leaf();
    let mut claims = SwitchClaims {
        arch: part.leaf_cn.as_deref().and_then(SwitchArch::from_leaf_name),
        hwmodel: part.hwmodel.clone(),
        ueid: part.ueid.clone(),
        report_parsed: false,
        measurement_blocks: None,
        nonce_match: false,
        signature_verified: false,
        cert_chain: part.cert_chain,
        fwid_match: None,
        ocsp: part.ocsp,
        bios_version: None,
        device_pdi: None,
        gpu_pdis: None,
        position_id: None,
        lock_status: None,
        bios_rim: RimClaims::new(),
        measurement_result: MeasurementResult::NotEvaluated,
        secure_boot: false,
        debug_disabled: false,
    };
    if check_kind(
        DeviceKind::Switch,
        evidence,
        part.leaf_cn.as_deref(),
        &mut failures,
    ) {
        if let Some(name) = &evidence.arch
            && SwitchArch::from_name(name).is_none()
        {
            failures.push(Failure::CheckArchitecture { arch: name.clone() });
        } else if leaf.is_some() && claims.arch.is_none() {
            failures.push(Failure::CheckArchitecture {
                arch: part.leaf_cn.clone().unwrap_or_default(),
            });
        }
    }
    (claims.signature_verified, claims.nonce_match) =
        check_report_bytes(&evidence.report, leaf, options, &mut failures);
    if identity_failed(&failures) {
        return SwitchVerdict { claims, failures };
    }

    let report = match SwitchReport::parse(&evidence.report) {
        Ok(report) => report,
        Err(error) => {
            failures.push(Failure::ParseReport(error));
            return SwitchVerdict { claims, failures };
        }
    };
    claims.report_parsed = true;
    claims.measurement_blocks = Some(report.measurements.len());
    claims.bios_version = Some(report.opaque.bios_version.clone());
    claims.device_pdi = report.opaque.device_pdi;
    claims.gpu_pdis = report.opaque.gpu_pdis.clone();
    claims.position_id = report.opaque.position_id;
    claims.lock_status = report.opaque.lock_status;
    claims.fwid_match = check_fwid(report.opaque.fwid, leaf, &mut failures);

    let mut revocation = claims.ocsp;
    let bios = load_rim(
        rims,
        RimKind::SwitchBios,
        &report.opaque.bios_rim_id(),
        &report.opaque.bios_version,
        (options, staples, &mut revocation),
        &mut claims.bios_rim,
        &mut failures,
    );
    claims.ocsp = revocation;
    let mut mismatches = Vec::new();
    if let Some(rim) = &bios {
        compare(
            RimKind::SwitchBios,
            rim,
            &report.measurements,
            &|_| false,
            &mut mismatches,
        );
    }
    claims.measurement_result = if !mismatches.is_empty() {
        MeasurementResult::Mismatch
    } else if bios.is_some() {
        MeasurementResult::Success
    } else {
        MeasurementResult::NotEvaluated
    };
    failures.extend(mismatches);
    claims.secure_boot = claims.measurement_result == MeasurementResult::Success;
    claims.debug_disabled = claims.secure_boot;
    SwitchVerdict { claims, failures }
}

fn load_rim(
    rims: &dyn RimSource,
    kind: RimKind,
    id: &str,
    report_version: &str,
    (options, staples, revocation): (&VerifyOptions, &[Vec<u8>], &mut OcspStatus),
    claims: &mut RimClaims,
    failures: &mut Vec<Failure>,
) -> Option<Rim> {
    let now = options.now;
    claims.id = Some(id.to_owned());
    let Some(bytes) = rims.rim(kind, id) else {
        failures.push(Failure::FindRim {
            kind,
            id: id.to_owned(),
        });
        return None;
    };
    claims.fetched = true;
    let rim = match Rim::parse(&bytes) {
        Ok(rim) => rim,
        Err(error) => {
            failures.push(Failure::VerifyRim {
                kind,
                id: id.to_owned(),
                error,
            });
            return None;
        }
    };
    let root = match certs::parse_pem_cert(certs::CORIM_SIGNING_ROOT_PEM) {
        Ok(root) => root,
        Err(error) => {
            failures.push(Failure::VerifyRim {
                kind,
                id: id.to_owned(),
                error: RimError::VerifyChain(error),
            });
            return None;
        }
    };
    let verification = rim.verify(&root, now);
    claims.signature_verified = !verification
        .failures
        .iter()
        .any(|e| matches!(e, RimError::VerifyDigest | RimError::VerifySignature));
    let chain_result = verification
        .failures
        .iter()
        .find_map(|e| match e {
            RimError::VerifyChain(c) => Some(Err(c.clone())),
            _ => None,
        })
        .unwrap_or(Ok(()));
    claims.cert_chain = cert_status(Some(&chain_result));
    claims.cert_expiration = rim.certificates().iter().map(ParsedCert::not_after).min();
    claims.version_match = rim.version.eq_ignore_ascii_case(report_version);
    claims.active_measurements = rim.active().count();
    let mut ok = verification.failures.is_empty();
    if verification.chain.is_some() {
        let mut chain = rim.certificates().to_vec();
        if chain.last().is_none_or(|c| c.der != root.der) {
            chain.push(root.clone());
        }
        let chain_kind = match kind {
            RimKind::Driver => ChainKind::DriverRim,
            RimKind::Vbios => ChainKind::VbiosRim,
            RimKind::SwitchBios => ChainKind::SwitchBiosRim,
        };
        let before = failures.len();
        let checked = check_stapled(
            chain_kind,
            &chain,
            0..chain.len().saturating_sub(1),
            staples,
            options,
            failures,
        );
        *revocation = ocsp_claim(*revocation, checked);
        ok &= failures.len() == before;
    }
    for error in verification.failures {
        failures.push(Failure::VerifyRim {
            kind,
            id: id.to_owned(),
            error,
        });
    }
    if !claims.version_match {
        ok = false;
        failures.push(Failure::CheckRimVersion {
            kind,
            rim: rim.version.clone(),
            report: report_version.to_owned(),
        });
    }
    if claims.active_measurements == 0 {
        ok = false;
        failures.push(Failure::FindActiveMeasurements { kind });
    }
    ok.then_some(rim)
}

/// Compares every active golden value of `rim` (RIM index *i* ↔ SPDM block *i+1*) except the
/// indexes `skip` names.
fn compare(
    kind: RimKind,
    rim: &Rim,
    measurements: &std::collections::BTreeMap<u8, Vec<u8>>,
    skip: &dyn Fn(u32) -> bool,
    out: &mut Vec<Failure>,
) {
    for golden in rim.active() {
        if skip(golden.index) {
            continue;
        }
        let runtime = golden
            .index
            .checked_add(1)
            .and_then(|spdm_index| u8::try_from(spdm_index).ok())
            .and_then(|spdm_index| measurements.get(&spdm_index));
        let Some(runtime) = runtime else {
            out.push(Failure::FindMeasurement {
                index: golden.index,
                source_rim: kind,
            });
            continue;
        };
        if runtime.len() != golden.size {
            out.push(Failure::CheckMeasurementSize {
                index: golden.index,
                source_rim: kind,
                expected: golden.size,
                actual: runtime.len(),
            });
            continue;
        }
        if !golden.alternatives.iter().any(|alt| alt == runtime) {
            out.push(Failure::CompareMeasurement {
                index: golden.index,
                source_rim: kind,
                actual: hex::encode(runtime),
            });
        }
    }
}

/// Whether the evidence names no known architecture or the wrong device kind: then nothing
/// after the signature check can be read as this kind's report.
fn identity_failed(failures: &[Failure]) -> bool {
    failures.iter().any(|f| {
        matches!(
            f,
            Failure::CheckArchitecture { .. } | Failure::CheckDeviceKind { .. }
        )
    })
}
