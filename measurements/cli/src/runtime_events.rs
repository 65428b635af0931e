//! `cvm-measure runtime-events`: a dstack RTMR3 runtime event log decoded and replayed.

use std::fmt::Write as _;

use anyhow::{Result, bail};
use measure::dstack_event_log::DstackEvent;
use measure::rtmr::Sha384Digest;
use measure::runtime_event::{self, DecodedLogLine, LogLineFormat, RuntimeEvent};
use measure::verify::KEY_PROVIDER_UNPINNED_EVENT;
use serde::Serialize;

use crate::RuntimeEventsArgs;
use crate::input::{LogInput, load_log, truncate};

#[derive(Serialize)]
struct RuntimeEventOutput {
    name: String,
    version: u32,
    payload_hex: String,
    digest: Sha384Digest,
    rtmr3_after: Sha384Digest,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recorded_digest_matches: Option<bool>,
    /// Set for an event that weakens the boot (`key-provider-unpinned`).
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<String>,
}

/// What an event the init records as a warning means, if `event` is one.
fn warning(event: &RuntimeEvent) -> Option<String> {
    (event.name == KEY_PROVIDER_UNPINNED_EVENT).then(|| {
        format!(
            "{}: {}: the KMS is not pinned by app-compose key_provider_id, so the host chose it \
             and can learn the disk key and every GetKey output",
            event.name,
            printable_payload(&event.payload)
        )
    })
}

pub(crate) fn runtime_events(args: &RuntimeEventsArgs, out: &mut String) -> Result<()> {
    let (events, lines): (Vec<RuntimeEvent>, Option<Vec<DecodedLogLine>>) =
        match load_log(&args.file)? {
            LogInput::Runtime(lines) => {
                (lines.iter().map(|l| l.event.clone()).collect(), Some(lines))
            }
            LogInput::Dstack(events) | LogInput::GetQuote(events, _) => (
                events
                    .iter()
                    .filter_map(DstackEvent::runtime_event)
                    .collect(),
                None,
            ),
            LogInput::Tcg(_) => bail!(
                "{} is a firmware log, not runtime events",
                args.file.display()
            ),
        };
    let listing = runtime_event::replay_listing(&events);
    let rows: Vec<RuntimeEventOutput> = listing
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let line = lines.as_ref().and_then(|l| l.get(i));
            RuntimeEventOutput {
                name: step.event.name.clone(),
                version: step.event.version.number(),
                payload_hex: hex::encode(&step.event.payload),
                digest: step.digest,
                rtmr3_after: step.rtmr3_after,
                format: line.map(|l| match l.format {
                    LogLineFormat::Current => "current",
                    LogLineFormat::Legacy => "legacy",
                }),
                recorded_digest_matches: line
                    .filter(|l| l.recorded_digest.is_some())
                    .map(DecodedLogLine::recorded_digest_matches),
                warning: warning(&step.event),
            }
        })
        .collect();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
    } else {
        writeln!(
            out,
            "{:>3}  {:<2} {:<20} {:<40} digest",
            "#", "v", "event", "payload"
        )?;
        for (i, (row, step)) in rows.iter().zip(&listing).enumerate() {
            let mark = if row.recorded_digest_matches == Some(false) {
                "  (recorded digest differs)"
            } else {
                ""
            };
            writeln!(
                out,
                "{i:>3}  {:<2} {:<20} {:<40} {}{mark}",
                row.version,
                truncate(&row.name, 20),
                truncate(&printable_payload(&step.event.payload), 40),
                row.digest
            )?;
        }
        let final_rtmr3 = listing.last().map_or(Sha384Digest::ZERO, |s| s.rtmr3_after);
        writeln!(out, "\nRTMR3: {final_rtmr3}")?;
        for warning in rows.iter().filter_map(|r| r.warning.as_deref()) {
            writeln!(out, "WARNING: {warning}")?;
        }
    }
    if rows
        .iter()
        .any(|r| r.recorded_digest_matches == Some(false))
    {
        bail!("a recorded digest differs from the one computed from its event");
    }
    Ok(())
}

fn printable_payload(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(s) if !s.is_empty() && s.chars().all(|c| !c.is_control()) => s.to_owned(),
        _ => hex::encode(payload),
    }
}
