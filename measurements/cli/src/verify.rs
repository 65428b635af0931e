//! `cvm-measure verify`: loads the evidence and the references, runs `measure::verify`'s
//! checklist and renders it (text or JSON); the policy itself lives in the library.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use measure::quote::Quote;
use measure::quote_verify::Collateral;
use measure::rtmr::RtmrIndex;
use measure::verify::{self, CheckId, Decision, Evidence, KmsEvidence, References, Status};
use serde::Serialize;

use crate::VerifyArgs;
use crate::input::{hex_arg, load_log, load_quote_bytes, load_runtime_events, read, text};

/// One checklist line of `--json`.
#[derive(Debug, Serialize)]
struct CheckLine<'a> {
    section: &'static str,
    /// The stable name (`--skip <name>`).
    name: &'static str,
    check: &'static str,
    status: Status,
    reason: &'a str,
}

fn load_collateral(path: &Path) -> Result<Collateral> {
    let text = text(path, &read(path)?)?;
    Collateral::from_json(&text).with_context(|| format!("parse collateral {}", path.display()))
}

fn load_expected(path: &Path) -> Result<serde_json::Value> {
    serde_json::from_slice(&read(path)?)
        .with_context(|| format!("parse expected measurements {}", path.display()))
}

pub(crate) fn verify(args: &VerifyArgs, out: &mut String) -> Result<()> {
    let input = load_log(&args.event_log)?;
    let (mut replay, embedded_quote) = input.replay()?;
    let mut runtime = input.runtime_events();
    if let Some(path) = &args.runtime_events {
        let extra = load_runtime_events(path)?;
        replay.append_runtime_events(&extra);
        runtime.extend(extra);
    }
    let quote_bytes = match (&args.quote, embedded_quote) {
        (Some(path), _) => load_quote_bytes(path)?,
        (None, Some(bytes)) => bytes,
        (None, None) => bail!("no quote: pass --quote or a GetQuote response as --event-log"),
    };
    let quote = Quote::parse(&quote_bytes).context("parse quote")?;
    let now = match args.now {
        Some(now) => now,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("read the system clock")?
            .as_secs(),
    };
    let collateral = args
        .collateral
        .as_deref()
        .map(load_collateral)
        .transpose()?;
    let expected = args.expected.as_deref().map(load_expected).transpose()?;
    let whitelist = match &args.os_image_whitelist {
        Some(path) => Some(text(path, &read(path)?)?),
        None => None,
    };
    let compose = args.app_compose.as_deref().map(read).transpose()?;
    let challenge = args
        .challenge
        .as_deref()
        .map(|c| hex_arg("--challenge", c))
        .transpose()?;
    let kms_expected = args
        .kms_expected
        .as_deref()
        .map(load_expected)
        .transpose()?;
    let kms_attestation = match &args.kms_quote {
        Some(path) => {
            let bytes = load_quote_bytes(path)?;
            let kms_quote = Quote::parse(&bytes)
                .with_context(|| format!("parse KMS quote {}", path.display()))?;
            let kms_collateral = args.kms_collateral.as_ref().or(args.collateral.as_ref());
            let kms = KmsEvidence {
                quote_bytes: &bytes,
                quote: &kms_quote,
                identity: args.kms_identity.as_deref(),
                app_events: &runtime,
                expected: kms_expected.as_ref(),
                now,
            };
            Some(verify::kms_attestation(&kms, || {
                kms_collateral.map(|p| load_collateral(p)).transpose()
            })?)
        }
        None => None,
    };
    let skip: Vec<CheckId> = args
        .skip
        .iter()
        .map(|name| {
            CheckId::from_name(name).with_context(|| format!("unknown check {name} for --skip"))
        })
        .collect::<Result<_>>()?;

    let verdict = verify::verify(
        &Evidence {
            quote_bytes: &quote_bytes,
            quote: &quote,
            runtime_events: &runtime,
            replayed_rtmr3: *replay.rtmrs.register(RtmrIndex::R3),
        },
        &References {
            now,
            collateral: collateral.as_ref(),
            expected: expected.as_ref(),
            os_image_whitelist: whitelist.as_deref(),
            app_compose: compose.as_deref(),
            challenge: challenge.as_deref(),
            kms_identity: args.kms_identity.as_deref(),
            kms_attestation: kms_attestation.as_ref(),
            skip: &skip,
        },
    );

    if args.json {
        let lines: Vec<CheckLine<'_>> = verdict
            .checks
            .iter()
            .map(|c| CheckLine {
                section: c.id.section().name(),
                name: c.id.name(),
                check: c.id.title(),
                status: c.status,
                reason: &c.reason,
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&lines)?)?;
    } else {
        if verdict.simulated {
            writeln!(
                out,
                "WARNING: INSECURE SIMULATED TEE — the platform lines below are marked SIMULATED; \
                 no verifier may accept this evidence."
            )?;
        }
        let mut section = None;
        for check in &verdict.checks {
            if section != Some(check.id.section()) {
                section = Some(check.id.section());
                writeln!(out, "{}:", check.id.section().name())?;
            }
            let mark = match check.status {
                Status::Pass => "✓",
                Status::Fail => "✗",
                Status::Skipped => "- SKIPPED (requested)",
                Status::Simulated => "~ SIMULATED",
            };
            writeln!(out, "  {mark} {}: {}", check.id.title(), check.reason)?;
        }
    }
    match verdict.decision() {
        Decision::Accept => Ok(()),
        Decision::RejectFailed(failed) => {
            let titles: Vec<String> = failed
                .iter()
                .map(|c| format!("{} ({})", c.title(), c.name()))
                .collect();
            bail!("{} check(s) failed: {}", failed.len(), titles.join(", "))
        }
        Decision::RejectSimulated => {
            bail!("rejected: evidence from the INSECURE simulated TEE (every other check passed)")
        }
    }
}
