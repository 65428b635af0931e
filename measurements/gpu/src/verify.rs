//! Verification of one GPU's evidence against RIMs, with typed claims and a verdict that
//! lists every failing reason (spec §1.4–§1.9).

use p384::ecdsa::Signature;
use p384::ecdsa::signature::Verifier as _;
use serde::Serialize;
use thiserror::Error;

use crate::UnixTime;
use crate::certs::{self, ChainError, ParsedCert};
use crate::report::{self, AttestationReport, NvdecStatus, ReportError};
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

/// Which RIM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RimKind {
    /// The driver RIM (`NV_GPU_DRIVER_GH100_<version>`).
    Driver,
    /// The VBIOS RIM (`NV_GPU_VBIOS_<project>_<sku>_<chip>_<version>`).
    Vbios,
}

impl std::fmt::Display for RimKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Driver => "driver",
            Self::Vbios => "VBIOS",
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
}

impl std::fmt::Display for ChainKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Device => "device",
            Self::DriverRim => "driver RIM",
            Self::VbiosRim => "VBIOS RIM",
        })
    }
}

/// Where RIMs come from: a bundle keyed by RIM id, or fixed files.
pub trait RimSource {
    /// The RIM with this id, if the source has it.
    fn rim(&self, kind: RimKind, id: &str) -> Option<Vec<u8>>;
}

/// A source that answers every lookup of a kind with the same bytes (tests, CLI flags).
#[derive(Debug, Clone, Default)]
pub struct FixedRims {
    /// The driver RIM.
    pub driver: Option<Vec<u8>>,
    /// The VBIOS RIM.
    pub vbios: Option<Vec<u8>>,
}

impl RimSource for FixedRims {
    fn rim(&self, kind: RimKind, _id: &str) -> Option<Vec<u8>> {
        match kind {
            RimKind::Driver => self.driver.clone(),
            RimKind::Vbios => self.vbios.clone(),
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

/// The evidence NVML returns for one GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuEvidence {
    /// `attestationReport[0..attestationReportSize]`.
    pub report: Vec<u8>,
    /// `attestationCertChain[0..attestationCertChainSize]` (PEM, leaf first).
    pub cert_chain: Vec<u8>,
    /// The architecture the collector reported (NVML), if any; must agree with the chain.
    pub arch: Option<String>,
}

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

/// [`verify_gpu`] with stapled / cached OCSP responses (DER `OCSPResponse`s, any order) for
/// [`OcspMode::Stapled`].
pub fn verify_gpu_with_ocsp(
    evidence: &GpuEvidence,
    rims: &dyn RimSource,
    options: &VerifyOptions,
    staples: &[Vec<u8>],
) -> GpuVerdict {
    let mut failures = Vec::new();
    let mut claims = GpuClaims {
        arch: None,
        hwmodel: None,
        ueid: None,
        report_parsed: false,
        nonce_match: false,
        signature_verified: false,
        cert_chain: CertStatus::NotChecked,
        fwid_match: None,
        ocsp: match options.ocsp {
            OcspMode::Skip => OcspStatus::Skipped,
            OcspMode::Require => OcspStatus::Unavailable,
            OcspMode::Stapled { .. } => OcspStatus::Good,
        },
        driver_version: None,
        vbios_version: None,
        protected_pcie: false,
        feature_flag: None,
        nvdec0: None,
        driver_rim: RimClaims::new(),
        vbios_rim: RimClaims::new(),
        vbios_index_no_conflict: false,
        measurement_result: MeasurementResult::NotEvaluated,
        secure_boot: false,
        debug_disabled: false,
        oemid: None,
    };

    // Certificates: parse and verify the chain to the pinned root.
    let chain = match certs::parse_pem_chain(&evidence.cert_chain) {
        Ok(chain) => Some(chain),
        Err(error) => {
            failures.push(Failure::ParseCertChain(error));
            None
        }
    };
    let leaf = chain.as_ref().and_then(|c| c.first());
    if let Some(chain) = &chain {
        let result = certs::parse_pem_cert(certs::DEVICE_IDENTITY_ROOT_PEM).and_then(|root| {
            certs::verify_chain(chain, &root, certs::DEVICE_CHAIN_LEN, true, options.now)
                .map(|_| ())
        });
        claims.cert_chain = cert_status(Some(&result));
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
                &mut failures,
            );
            claims.ocsp = ocsp_claim(claims.ocsp, checked);
        }
        claims.hwmodel = chain.get(1).and_then(ParsedCert::common_name);
    }
    if let Some(leaf) = leaf {
        claims.ueid = Some(hex::encode(leaf.serial()));
        claims.arch = leaf.common_name().as_deref().and_then(Arch::from_leaf_name);
    }
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
            arch: leaf.and_then(ParsedCert::common_name).unwrap_or_default(),
        });
    }

    // Signature and nonce work on the raw bytes, so they are reported even when the opaque
    // data is refused.
    if let Some(leaf) = leaf {
        claims.signature_verified = verify_report_signature(&evidence.report, leaf);
        if !claims.signature_verified {
            failures.push(Failure::VerifyReportSignature);
        }
    }
    if let Some(nonce) = evidence.report.get(4..36) {
        claims.nonce_match = nonce == options.nonce;
        if !claims.nonce_match {
            failures.push(Failure::CheckNonce {
                expected: hex::encode(options.nonce),
                actual: hex::encode(nonce),
            });
        }
    }
    if options.ocsp == OcspMode::Require {
        failures.push(Failure::CheckRevocation);
    }
    if failures
        .iter()
        .any(|f| matches!(f, Failure::CheckArchitecture { .. }))
    {
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
    claims.nvdec0 = Some(report.opaque.nvdec0_status);

    // FWID binding.
    if let (Some(fwid), Some(leaf)) = (report.opaque.fwid, leaf) {
        match certs::leaf_fwid(leaf) {
            Ok(Some(cert_fwid)) if cert_fwid == fwid => claims.fwid_match = Some(true),
            Ok(Some(cert_fwid)) => {
                claims.fwid_match = Some(false);
                failures.push(Failure::CheckFwid {
                    report: hex::encode(fwid),
                    certificate: hex::encode(cert_fwid),
                });
            }
            Ok(None) | Err(_) => {
                claims.fwid_match = Some(false);
                failures.push(Failure::FindCertificateFwid);
            }
        }
    }

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
    for (kind, rim) in [(RimKind::Driver, &driver), (RimKind::Vbios, &vbios)] {
        let Some(rim) = rim else { continue };
        compare(kind, rim, &report, &mut mismatches);
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

fn compare(kind: RimKind, rim: &Rim, report: &AttestationReport, out: &mut Vec<Failure>) {
    for golden in rim.active() {
        if golden.index == 35 && report.opaque.nvdec0_status == NvdecStatus::Disabled {
            continue;
        }
        let runtime = golden
            .index
            .checked_add(1)
            .and_then(|spdm_index| u8::try_from(spdm_index).ok())
            .and_then(|spdm_index| report.measurements.get(&spdm_index));
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
