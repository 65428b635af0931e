//! `cvm-measure gpu`: verifies NVIDIA confidential-GPU evidence (the raw NVML report and
//! certificate chain, or an NVAT / `cvm-gpu-evidence` JSON array) against driver and VBIOS
//! RIMs at a given time, prints the claims and the verdict, and exits non-zero on any failure.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nv_verify::evidence::{self, DecodedEvidence};
use nv_verify::policy::{self, CcState, GateDecision, GateInput, GpuPolicy};
use nv_verify::{
    FixedRims, GpuEvidence, GpuVerdict, OcspMode, RimBundle, RimKind, RimSource, UnixTime,
    VerifyOptions, verify_gpu_with_ocsp,
};
use serde::Serialize;

use crate::input::{read, text};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum OcspArg {
    /// Do not check revocation (offline); shown as `ocsp: skipped` in the claims.
    Skip,
    /// Require online revocation status (this offline tool cannot fetch: always fails).
    Require,
    /// Stapled / cached DER OCSP responses given with --ocsp-response must say "good" for
    /// every non-root certificate of the device chain and of both RIM chains (nonce not
    /// required).
    Stapled,
}

#[derive(Debug, clap::Args)]
pub(crate) struct GpuArgs {
    /// Evidence JSON: an array of {arch, nonce, evidence (base64), certificate (base64 PEM)}
    /// as NVAT serializes it and `cvm-gpu-evidence` returns it.
    #[arg(long, conflicts_with_all = ["report", "cert_chain"])]
    evidence: Option<PathBuf>,
    /// Raw attestation report (`attestationReport[0..size]` from NVML).
    #[arg(long, requires = "cert_chain")]
    report: Option<PathBuf>,
    /// PEM certificate chain (`attestationCertChain` from NVML), leaf first.
    #[arg(long)]
    cert_chain: Option<PathBuf>,
    /// Architecture the collector reported (HOPPER, BLACKWELL) for --report.
    #[arg(long)]
    arch: Option<String>,
    /// The nonce the caller gave NVML (64 hex digits). Without it, each entry's own `nonce`
    /// field is used, which proves nothing about freshness (a warning is printed).
    #[arg(long)]
    nonce: Option<String>,
    /// Driver RIM (XML SWID tag).
    #[arg(long)]
    driver_rim: Option<PathBuf>,
    /// VBIOS RIM (XML SWID tag).
    #[arg(long)]
    vbios_rim: Option<PathBuf>,
    /// Directory of RIMs named `<RIM_ID>.xml` or `<RIM_ID>.swidtag` (the offline bundle).
    #[arg(long, conflicts_with_all = ["driver_rim", "vbios_rim"])]
    rim_dir: Option<PathBuf>,
    /// Verification time in Unix seconds (default: now). RIM signers expire after ~2 years.
    #[arg(long)]
    now: Option<u64>,
    /// Revocation checking. `skip` is the explicit offline mode.
    #[arg(long, value_enum, default_value = "require")]
    ocsp: OcspArg,
    /// A DER OCSPResponse for --ocsp stapled (repeat for each certificate).
    #[arg(long)]
    ocsp_response: Vec<PathBuf>,
    /// With --ocsp stapled: tolerate revocation reason certificateHold.
    #[arg(long)]
    allow_hold: bool,
    /// Also apply the GPU gate: the NVML CC state as
    /// `environment,ccFeature,devToolsMode,multiGpuMode` (e.g. `2,1,0,0` = production, CC on).
    #[arg(long)]
    cc_state: Option<String>,
    /// gpu_policy JSON for the gate (default: strict), e.g. `{"allow_devtools":true}`.
    #[arg(long, requires = "cc_state")]
    policy: Option<PathBuf>,
    /// NVIDIA GPUs on the PCI bus for the gate (default: the number of evidence entries).
    #[arg(long, requires = "cc_state")]
    pci_gpus: Option<usize>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct GpuReport<'a> {
    now: u64,
    nonce_source: &'a str,
    gpus: Vec<GpuVerdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gate: Option<policy::GateVerdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu_policy_hash: Option<String>,
    passed: bool,
}

/// RIMs from `--rim-dir`: every `<id>.xml` / `<id>.swidtag` file.
fn load_rim_dir(dir: &Path) -> Result<RimBundle> {
    let mut bundle = RimBundle::default();
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("read {}", dir.display()))?
            .path();
        let (Some(stem), Some(ext)) = (path.file_stem(), path.extension()) else {
            continue;
        };
        if ext == "xml" || ext == "swidtag" {
            bundle.insert(stem.to_string_lossy().into_owned(), read(&path)?);
        }
    }
    Ok(bundle)
}

fn parse_nonce(hex_text: &str) -> Result<[u8; 32]> {
    hex::decode(hex_text.trim())
        .ok()
        .and_then(|n| <[u8; 32]>::try_from(n).ok())
        .context("--nonce must be 64 hex digits (32 bytes)")
}

fn parse_cc_state(value: &str) -> Result<CcState> {
    let parts: Vec<u32> = value
        .split(',')
        .map(|p| p.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .context(
            "--cc-state must be four integers: environment,ccFeature,devToolsMode,multiGpuMode",
        )?;
    let [environment, cc_feature, devtools_mode, multi_gpu_mode] = parts[..] else {
        bail!("--cc-state must be four integers: environment,ccFeature,devToolsMode,multiGpuMode");
    };
    Ok(CcState {
        environment,
        cc_feature,
        devtools_mode,
        multi_gpu_mode,
    })
}

pub(crate) fn gpu(args: &GpuArgs, out: &mut String) -> Result<()> {
    let entries: Vec<DecodedEvidence> = match (&args.evidence, &args.report, &args.cert_chain) {
        (Some(path), _, _) => evidence::parse_nvat_json(&read(path)?)
            .with_context(|| format!("parse evidence {}", path.display()))?,
        (None, Some(report), Some(chain)) => {
            let nonce_text = args
                .nonce
                .as_deref()
                .context("--report needs --nonce (the nonce given to NVML)")?;
            vec![DecodedEvidence {
                evidence: GpuEvidence {
                    report: read(report)?,
                    cert_chain: read(chain)?,
                    arch: args.arch.clone(),
                },
                nonce: parse_nonce(nonce_text)?,
            }]
        }
        _ => bail!("give --evidence, or --report with --cert-chain"),
    };
    if entries.is_empty() {
        bail!("the evidence holds no GPU");
    }
    let caller_nonce = args.nonce.as_deref().map(parse_nonce).transpose()?;
    let now = match args.now {
        Some(now) => now,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("read the system clock")?
            .as_secs(),
    };
    let ocsp = match args.ocsp {
        OcspArg::Skip => OcspMode::Skip,
        OcspArg::Require => OcspMode::Require,
        OcspArg::Stapled => OcspMode::Stapled {
            allow_hold: args.allow_hold,
        },
    };
    let staples = args
        .ocsp_response
        .iter()
        .map(|p| read(p))
        .collect::<Result<Vec<_>>>()?;
    let fixed;
    let bundle;
    let rims: &dyn RimSource = match &args.rim_dir {
        Some(dir) => {
            bundle = load_rim_dir(dir)?;
            &bundle
        }
        None => {
            fixed = FixedRims {
                driver: args.driver_rim.as_deref().map(read).transpose()?,
                vbios: args.vbios_rim.as_deref().map(read).transpose()?,
            };
            &fixed
        }
    };
    let verdicts: Vec<GpuVerdict> = entries
        .iter()
        .map(|entry| {
            verify_gpu_with_ocsp(
                &entry.evidence,
                rims,
                &VerifyOptions {
                    nonce: caller_nonce.unwrap_or(entry.nonce),
                    now: UnixTime(now),
                    ocsp,
                },
                &staples,
            )
        })
        .collect();

    let mut gate = None;
    let mut policy_hash = None;
    if let Some(cc) = &args.cc_state {
        let policy_value: Option<serde_json::Value> = match &args.policy {
            Some(path) => Some(
                serde_json::from_str(&text(path, &read(path)?)?)
                    .with_context(|| format!("parse gpu_policy {}", path.display()))?,
            ),
            None => None,
        };
        let policy =
            GpuPolicy::from_value(policy_value.as_ref()).context("gpu_policy is refused")?;
        policy_hash = Some(hex::encode(policy::gpu_policy_hash(policy_value.as_ref())));
        let input = GateInput {
            pci_gpu_count: args.pci_gpus.unwrap_or(verdicts.len()),
            foreign_display_devices: Vec::new(),
            cc_state: Some(parse_cc_state(cc)?),
        };
        gate = Some(policy.evaluate(&input, &verdicts));
    }
    let passed = verdicts.iter().all(GpuVerdict::passed)
        && gate
            .as_ref()
            .is_none_or(|g| g.decision == GateDecision::Ready);
    let report = GpuReport {
        now,
        nonce_source: if caller_nonce.is_some() {
            "caller"
        } else {
            "evidence-file"
        },
        gpus: verdicts,
        gate,
        gpu_policy_hash: policy_hash,
        passed,
    };
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write_text(&report, out)?;
    }
    if !passed {
        let failures: usize = report.gpus.iter().map(|g| g.failures.len()).sum::<usize>()
            + report.gate.as_ref().map_or(0, |g| g.failures.len());
        bail!("GPU attestation failed ({failures} failure(s))");
    }
    Ok(())
}

fn yes(value: bool) -> &'static str {
    if value { "yes" } else { "NO" }
}

fn write_text(report: &GpuReport<'_>, out: &mut String) -> Result<()> {
    writeln!(out, "verification time: {} (Unix seconds)", report.now)?;
    if report.nonce_source == "evidence-file" {
        writeln!(
            out,
            "WARNING: no --nonce given; each report is checked against the nonce written in the \
             evidence file, which does not establish freshness"
        )?;
    }
    for (index, verdict) in report.gpus.iter().enumerate() {
        let c = &verdict.claims;
        writeln!(out, "GPU {index}:")?;
        writeln!(
            out,
            "  arch {} / hwmodel {} / ueid {}",
            c.arch.map_or("unknown", |a| a.name()),
            c.hwmodel.as_deref().unwrap_or("-"),
            c.ueid.as_deref().unwrap_or("-")
        )?;
        writeln!(
            out,
            "  driver {} / VBIOS {}",
            c.driver_version.as_deref().unwrap_or("-"),
            c.vbios_version.as_deref().unwrap_or("-")
        )?;
        writeln!(
            out,
            "  report parsed {} / nonce match {} / signature {} / cert chain {:?} / FWID {}",
            yes(c.report_parsed),
            yes(c.nonce_match),
            yes(c.signature_verified),
            c.cert_chain,
            match c.fwid_match {
                None => "not in report (skipped)",
                Some(true) => "match",
                Some(false) => "MISMATCH",
            }
        )?;
        writeln!(out, "  OCSP: {:?}", c.ocsp)?;
        for (kind, rim) in [
            (RimKind::Driver, &c.driver_rim),
            (RimKind::Vbios, &c.vbios_rim),
        ] {
            writeln!(
                out,
                "  {kind} RIM {}: found {} / signature {} / chain {:?} / version match {} / {} active",
                rim.id.as_deref().unwrap_or("-"),
                yes(rim.fetched),
                yes(rim.signature_verified),
                rim.cert_chain,
                yes(rim.version_match),
                rim.active_measurements
            )?;
        }
        writeln!(
            out,
            "  measres {:?} / secboot {} / dbgstat {} / PPCIe {}",
            c.measurement_result,
            c.secure_boot,
            if c.debug_disabled {
                "disabled"
            } else {
                "not-disabled"
            },
            c.protected_pcie
        )?;
        if verdict.passed() {
            writeln!(out, "  ✓ evidence verified")?;
        } else {
            writeln!(out, "  ✗ {} failure(s):", verdict.failures.len())?;
            for failure in &verdict.failures {
                writeln!(out, "    - [{}] {}", failure.code(), failure.message())?;
            }
        }
    }
    if let Some(gate) = &report.gate {
        if let Some(hash) = &report.gpu_policy_hash {
            writeln!(out, "gpu-policy-hash payload: {hash}")?;
        }
        writeln!(out, "gate: {:?}", gate.decision)?;
        for failure in &gate.failures {
            writeln!(out, "  - {}", cvm_error_chain::joined(failure))?;
        }
    }
    writeln!(
        out,
        "{}",
        if report.passed {
            "✓ PASS"
        } else {
            "✗ FAIL"
        }
    )?;
    Ok(())
}
