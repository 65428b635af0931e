//! `cvm-measure gpu`: verifies NVIDIA confidential-GPU and NVSwitch evidence (the raw NVML /
//! NSCQ report and certificate chain, or an NVAT / `cvm-gpu-evidence` JSON array) against
//! driver, VBIOS and switch BIOS RIMs at a given time, checks the PPCIe topology of a combined
//! GPU + switch set, prints the claims and the verdicts, and exits non-zero on any failure.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nv_verify::evidence::{self, DecodedEvidence};
use nv_verify::policy::{self, CcState, GateDecision, GateInput, GpuPolicy};
use nv_verify::topology::{self, GpuTopology, SwitchTopology, TopologyVerdict};
use nv_verify::{
    DeviceKind, FixedRims, GpuEvidence, GpuVerdict, OcspMode, RimBundle, RimKind, RimSource,
    SwitchVerdict, UnixTime, VerifyOptions, verify_gpu_with_ocsp, verify_switch_with_ocsp,
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
    /// as NVAT serializes it and `cvm-gpu-evidence` returns it. Entries with arch `LS10` are
    /// NVSwitches, all others GPUs.
    #[arg(long, conflicts_with_all = ["report", "cert_chain"])]
    evidence: Option<PathBuf>,
    /// NVSwitch evidence JSON (NVAT format, `LS10` entries), e.g. the switches of a PPCIe set
    /// whose GPUs are in --evidence.
    #[arg(long)]
    switch_evidence: Option<PathBuf>,
    /// Raw attestation report (`attestationReport[0..size]` from NVML).
    #[arg(long, requires = "cert_chain")]
    report: Option<PathBuf>,
    /// PEM certificate chain (`attestationCertChain` from NVML), leaf first.
    #[arg(long)]
    cert_chain: Option<PathBuf>,
    /// Architecture the collector reported (HOPPER, BLACKWELL, or LS10 for a switch) for
    /// --report.
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
    /// NVSwitch BIOS RIM (XML SWID tag), for every switch.
    #[arg(long)]
    switch_rim: Option<PathBuf>,
    /// Directory of RIMs named `<RIM_ID>.xml` or `<RIM_ID>.swidtag` (the offline bundle).
    #[arg(long, conflicts_with_all = ["driver_rim", "vbios_rim"])]
    rim_dir: Option<PathBuf>,
    /// Check the PPCIe topology (8 GPUs, 4 switches) even when the set does not hold both
    /// kinds (it is checked whenever it does).
    #[arg(long)]
    ppcie: bool,
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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    switches: Vec<SwitchVerdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    topology: Option<TopologyVerdict>,
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

/// The GPU RIMs (fixed files or the bundle) and the switch BIOS RIM (`--switch-rim`, else
/// the bundle by id; a fixed `--vbios-rim` is a GPU's and never answers a switch).
struct CliRims<'a> {
    gpu: &'a dyn RimSource,
    bundle: Option<&'a RimBundle>,
    switch: Option<Vec<u8>>,
}

impl RimSource for CliRims<'_> {
    fn rim(&self, kind: RimKind, id: &str) -> Option<Vec<u8>> {
        match kind {
            RimKind::SwitchBios => self
                .switch
                .clone()
                .or_else(|| self.bundle.and_then(|b| b.rim(kind, id))),
            RimKind::Driver | RimKind::Vbios => self.gpu.rim(kind, id),
        }
    }
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
    let mut entries: Vec<DecodedEvidence> = match (&args.evidence, &args.report, &args.cert_chain) {
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
        (None, None, None) if args.switch_evidence.is_some() => Vec::new(),
        _ => bail!("give --evidence, --switch-evidence, or --report with --cert-chain"),
    };
    if let Some(path) = &args.switch_evidence {
        let switches = evidence::parse_nvat_json(&read(path)?)
            .with_context(|| format!("parse switch evidence {}", path.display()))?;
        for (index, entry) in switches.iter().enumerate() {
            let kind = entry
                .evidence
                .arch
                .as_deref()
                .and_then(DeviceKind::from_arch_name);
            if kind != Some(DeviceKind::Switch) {
                bail!(
                    "--switch-evidence entry {index} has arch {:?}, not LS10",
                    entry.evidence.arch.as_deref().unwrap_or_default()
                );
            }
        }
        entries.extend(switches);
    }
    if entries.is_empty() {
        bail!("the evidence holds no device");
    }
    // LS10 entries are switches; everything else goes to the GPU verifier (which names an
    // unknown architecture).
    let (switch_entries, gpu_entries): (Vec<DecodedEvidence>, Vec<DecodedEvidence>) =
        entries.into_iter().partition(|e| {
            e.evidence
                .arch
                .as_deref()
                .and_then(DeviceKind::from_arch_name)
                == Some(DeviceKind::Switch)
        });
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
    let bundle = args.rim_dir.as_deref().map(load_rim_dir).transpose()?;
    let gpu_rims: &dyn RimSource = match &bundle {
        Some(bundle) => bundle,
        None => {
            fixed = FixedRims {
                driver: args.driver_rim.as_deref().map(read).transpose()?,
                vbios: args.vbios_rim.as_deref().map(read).transpose()?,
            };
            &fixed
        }
    };
    let rims = CliRims {
        gpu: gpu_rims,
        bundle: bundle.as_ref(),
        switch: args.switch_rim.as_deref().map(read).transpose()?,
    };
    let options = |entry: &DecodedEvidence| VerifyOptions {
        nonce: caller_nonce.unwrap_or(entry.nonce),
        now: UnixTime(now),
        ocsp,
    };
    let verdicts: Vec<GpuVerdict> = gpu_entries
        .iter()
        .map(|entry| verify_gpu_with_ocsp(&entry.evidence, &rims, &options(entry), &staples))
        .collect();
    let switches: Vec<SwitchVerdict> = switch_entries
        .iter()
        .map(|entry| verify_switch_with_ocsp(&entry.evidence, &rims, &options(entry), &staples))
        .collect();
    let topology = (args.ppcie || (!verdicts.is_empty() && !switches.is_empty())).then(|| {
        let gpus: Vec<GpuTopology> = verdicts
            .iter()
            .map(|v| GpuTopology::from(&v.claims))
            .collect();
        let switch_fields: Vec<SwitchTopology> = switches
            .iter()
            .map(|v| SwitchTopology::from(&v.claims))
            .collect();
        topology::check_topology(&gpus, &switch_fields)
    });

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
        let switch_set = (!switches.is_empty()).then_some(switches.as_slice());
        gate = Some(policy.evaluate_with_switches(&input, &verdicts, switch_set));
    }
    let passed = verdicts.iter().all(GpuVerdict::passed)
        && switches.iter().all(SwitchVerdict::passed)
        && topology.as_ref().is_none_or(TopologyVerdict::passed)
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
        switches,
        topology,
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
            + report
                .switches
                .iter()
                .map(|s| s.failures.len())
                .sum::<usize>()
            + report.topology.as_ref().map_or(0, |t| t.failures.len())
            + report.gate.as_ref().map_or(0, |g| g.failures.len());
        bail!("GPU attestation failed ({failures} failure(s))");
    }
    Ok(())
}

fn yes(value: bool) -> &'static str {
    if value { "yes" } else { "NO" }
}

fn fwid(value: Option<bool>) -> &'static str {
    match value {
        None => "not in report (skipped)",
        Some(true) => "match",
        Some(false) => "MISMATCH",
    }
}

fn write_switch(index: usize, verdict: &SwitchVerdict, out: &mut String) -> Result<()> {
    let c = &verdict.claims;
    writeln!(out, "NVSwitch {index}:")?;
    writeln!(
        out,
        "  arch {} / hwmodel {} / ueid {}",
        c.arch.map_or("unknown", |a| a.name()),
        c.hwmodel.as_deref().unwrap_or("-"),
        c.ueid.as_deref().unwrap_or("-")
    )?;
    writeln!(
        out,
        "  BIOS {} / {} measurement blocks / DEVICE_PDI {} / position {} / lock status {}",
        c.bios_version.as_deref().unwrap_or("-"),
        c.measurement_blocks
            .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        c.device_pdi
            .map_or_else(|| "-".to_owned(), |p| p.to_string()),
        c.position_id
            .map_or_else(|| "-".to_owned(), |p| p.to_string()),
        c.lock_status
            .map_or_else(|| "-".to_owned(), |p| p.to_string()),
    )?;
    writeln!(
        out,
        "  report parsed {} / nonce match {} / signature {} / cert chain {:?} / FWID {}",
        yes(c.report_parsed),
        yes(c.nonce_match),
        yes(c.signature_verified),
        c.cert_chain,
        fwid(c.fwid_match)
    )?;
    writeln!(out, "  OCSP: {:?}", c.ocsp)?;
    let rim = &c.bios_rim;
    writeln!(
        out,
        "  {} RIM {}: found {} / signature {} / chain {:?} / version match {} / {} active",
        RimKind::SwitchBios,
        rim.id.as_deref().unwrap_or("-"),
        yes(rim.fetched),
        yes(rim.signature_verified),
        rim.cert_chain,
        yes(rim.version_match),
        rim.active_measurements
    )?;
    writeln!(
        out,
        "  measres {:?} / secboot {} / dbgstat {}",
        c.measurement_result,
        c.secure_boot,
        if c.debug_disabled {
            "disabled"
        } else {
            "not-disabled"
        }
    )?;
    if verdict.passed() {
        writeln!(out, "  ✓ evidence verified")?;
    } else {
        writeln!(out, "  ✗ {} failure(s):", verdict.failures.len())?;
        for failure in &verdict.failures {
            writeln!(out, "    - [{}] {}", failure.code(), failure.message())?;
        }
    }
    Ok(())
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
            fwid(c.fwid_match)
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
    for (index, verdict) in report.switches.iter().enumerate() {
        write_switch(index, verdict, out)?;
    }
    if let Some(topology) = &report.topology {
        let list = |pdis: &[nv_verify::report::Pdi]| {
            pdis.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        writeln!(
            out,
            "PPCIe topology: {} GPU(s), {} switch(es); GPUs reach switches [{}]; switches \
             connect GPUs [{}]",
            report.gpus.len(),
            report.switches.len(),
            list(&topology.gpu_switches),
            list(&topology.switch_gpus)
        )?;
        if topology.passed() {
            writeln!(out, "  ✓ topology holds")?;
        } else {
            writeln!(out, "  ✗ {} failure(s):", topology.failures.len())?;
            for failure in &topology.failures {
                writeln!(out, "    - {failure}")?;
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
