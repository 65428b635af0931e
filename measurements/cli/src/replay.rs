//! `cvm-measure replay`: an event log replayed into RTMR0-3, optionally against a quote.

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use measure::quote::Quote;
use measure::replay::{Replay, ReplayVerdict};
use measure::rtmr::{RtmrIndex, Sha384Digest};
use serde::Serialize;

use crate::ReplayArgs;
use crate::input::{load_log, load_quote, load_runtime_events, truncate};

#[derive(Serialize)]
struct ReplayOutput<'a> {
    source: &'static str,
    #[serde(flatten)]
    replay: &'a Replay,
    #[serde(skip_serializing_if = "Option::is_none")]
    quote_check: Option<QuoteCheck>,
}

#[derive(Serialize)]
struct QuoteCheck {
    registers: Vec<RtmrIndex>,
    quote_rtmrs: [Sha384Digest; 4],
    verdict: ReplayVerdict,
}

pub(crate) fn replay(args: &ReplayArgs, out: &mut String) -> Result<()> {
    let input = load_log(&args.event_log)?;
    let kind = input.kind();
    let (mut replay, embedded_quote) = input.replay()?;
    if let Some(path) = &args.runtime_events {
        replay.append_runtime_events(&load_runtime_events(path)?);
    }
    let quote = match (&args.quote, embedded_quote) {
        (Some(path), _) => Some(load_quote(path)?),
        (None, Some(bytes)) => {
            Some(Quote::parse(&bytes).context("parse quote of the GetQuote response")?)
        }
        (None, None) => None,
    };
    let registers = if args.registers.is_empty() {
        RtmrIndex::ALL.to_vec()
    } else {
        args.registers
            .iter()
            .map(|&i| RtmrIndex::try_from(i))
            .collect::<Result<Vec<_>, _>>()
            .context("parse --registers")?
    };
    let quote_check = quote.map(|quote| QuoteCheck {
        verdict: replay.verify_registers(quote.rtmrs(), &registers),
        quote_rtmrs: *quote.rtmrs().values(),
        registers: registers.clone(),
    });
    if args.json {
        let output = ReplayOutput {
            source: kind,
            replay: &replay,
            quote_check,
        };
        writeln!(out, "{}", serde_json::to_string_pretty(&output)?)?;
        return check_verdict(output.quote_check.as_ref());
    }
    writeln!(
        out,
        "source: {kind}, {} events extended",
        replay.entries.len()
    )?;
    writeln!(
        out,
        "{:>3}  {:<5} {:<34} {:<40} digest",
        "#", "rtmr", "type", "event"
    )?;
    for (i, entry) in replay.entries.iter().enumerate() {
        let event_type = entry
            .event_type_name
            .map_or_else(|| format!("{:#010x}", entry.event_type), str::to_owned);
        writeln!(
            out,
            "{i:>3}  {:<5} {:<34} {:<40} {}",
            entry.rtmr,
            event_type,
            truncate(&entry.description, 40),
            entry.digest
        )?;
    }
    writeln!(out)?;
    for index in RtmrIndex::ALL {
        let replayed = replay.rtmrs.register(index);
        let status = match &quote_check {
            None => "",
            Some(check) if !check.registers.contains(&index) => "  (not compared)",
            Some(check) if check.quote_rtmrs[index.position()] == *replayed => "  ✓ matches quote",
            Some(_) => "  ✗ differs from quote",
        };
        writeln!(out, "{index}: {replayed}{status}")?;
        if let Some(check) = &quote_check
            && check.quote_rtmrs[index.position()] != *replayed
            && check.registers.contains(&index)
        {
            writeln!(out, "  quote: {}", check.quote_rtmrs[index.position()])?;
        }
    }
    check_verdict(quote_check.as_ref())
}

fn check_verdict(check: Option<&QuoteCheck>) -> Result<()> {
    match check.map(|c| &c.verdict) {
        None | Some(ReplayVerdict::Match) => Ok(()),
        Some(ReplayVerdict::Mismatch(mismatches)) => {
            let mut reason = String::from("replayed event log does not match the quote:");
            for m in mismatches {
                write!(
                    reason,
                    " {} quote {} replayed {};",
                    m.index, m.expected, m.actual
                )?;
            }
            bail!(reason.trim_end_matches(';').to_owned())
        }
    }
}
