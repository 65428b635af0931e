//! Reading the inputs every command shares: files, event logs of each kind, quotes, hex.

use std::path::Path;

use anyhow::{Context, Result, bail};
use measure::dstack_event_log::{self, DstackEvent};
use measure::event_log::{EV_NO_ACTION, EventLog};
use measure::quote::Quote;
use measure::replay::Replay;
use measure::runtime_event::{self, DecodedLogLine, RuntimeEvent};

pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}

pub(crate) fn text(path: &Path, bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec())
        .with_context(|| format!("{} is not UTF-8 text", path.display()))
}

/// What an event-log file turned out to be.
pub(crate) enum LogInput {
    Tcg(EventLog),
    Dstack(Vec<DstackEvent>),
    GetQuote(Vec<DstackEvent>, Vec<u8>),
    Runtime(Vec<DecodedLogLine>),
}

impl LogInput {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Tcg(_) => "tcg",
            Self::Dstack(_) => "dstack-json",
            Self::GetQuote(..) => "dstack-getquote",
            Self::Runtime(_) => "runtime-log",
        }
    }

    /// The replay of this log, and the quote when the file was a GetQuote response.
    pub(crate) fn replay(&self) -> Result<(Replay, Option<Vec<u8>>)> {
        Ok(match self {
            Self::Tcg(log) => (Replay::from_tcg_log(log).context("replay TCG log")?, None),
            Self::Dstack(events) => (
                Replay::from_dstack_events(events).context("replay dstack log")?,
                None,
            ),
            Self::GetQuote(events, quote) => (
                Replay::from_dstack_events(events).context("replay dstack log")?,
                Some(quote.clone()),
            ),
            Self::Runtime(lines) => (
                Replay::from_runtime_events(lines.iter().map(|l| &l.event)),
                None,
            ),
        })
    }

    /// The runtime (RTMR3) events this log carries (none for a TCG log).
    pub(crate) fn runtime_events(&self) -> Vec<RuntimeEvent> {
        match self {
            Self::Runtime(lines) => lines.iter().map(|l| l.event.clone()).collect(),
            Self::Dstack(events) | Self::GetQuote(events, _) => events
                .iter()
                .filter_map(DstackEvent::runtime_event)
                .collect(),
            Self::Tcg(_) => Vec::new(),
        }
    }
}

pub(crate) fn first_non_space(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

pub(crate) fn load_log(path: &Path) -> Result<LogInput> {
    let bytes = read(path)?;
    let looks_tcg = bytes
        .get(4..8)
        .is_some_and(|t| t == EV_NO_ACTION.to_le_bytes());
    if looks_tcg {
        let log = EventLog::parse(&bytes)
            .with_context(|| format!("parse TCG event log {}", path.display()))?;
        return Ok(LogInput::Tcg(log));
    }
    let text = text(path, &bytes)?;
    match first_non_space(text.as_bytes()) {
        Some(b'[') => Ok(LogInput::Dstack(
            dstack_event_log::parse_event_log(&text)
                .with_context(|| format!("parse dstack event log {}", path.display()))?,
        )),
        Some(b'{') if is_get_quote_response(&text) => {
            let response = dstack_event_log::parse_get_quote_response(&text)
                .with_context(|| format!("parse GetQuote response {}", path.display()))?;
            Ok(LogInput::GetQuote(response.event_log, response.quote))
        }
        _ => Ok(LogInput::Runtime(
            runtime_event::decode_log(&text)
                .with_context(|| format!("parse runtime event log {}", path.display()))?,
        )),
    }
}

pub(crate) fn is_get_quote_response(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .is_some_and(|v| v.get("event_log").is_some() && v.get("quote").is_some())
}

pub(crate) fn load_quote_bytes(path: &Path) -> Result<Vec<u8>> {
    let bytes = read(path)?;
    if first_non_space(&bytes) == Some(b'{') {
        let text = text(path, &bytes)?;
        let response = dstack_event_log::parse_get_quote_response(&text)
            .with_context(|| format!("parse GetQuote response {}", path.display()))?;
        return Ok(response.quote);
    }
    if let Ok(text) = std::str::from_utf8(&bytes) {
        let text = text.trim();
        let hex_text = text.strip_prefix("0x").unwrap_or(text);
        if !hex_text.is_empty() && hex_text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return hex::decode(hex_text).with_context(|| format!("decode hex {}", path.display()));
        }
    }
    Ok(bytes)
}

pub(crate) fn load_quote(path: &Path) -> Result<Quote> {
    let bytes = load_quote_bytes(path)?;
    Quote::parse(&bytes).with_context(|| format!("parse quote {}", path.display()))
}

pub(crate) fn load_runtime_events(path: &Path) -> Result<Vec<RuntimeEvent>> {
    Ok(match load_log(path)? {
        LogInput::Runtime(lines) => lines.into_iter().map(|l| l.event).collect(),
        LogInput::Dstack(events) | LogInput::GetQuote(events, _) => events
            .iter()
            .filter_map(DstackEvent::runtime_event)
            .collect(),
        LogInput::Tcg(_) => bail!("{} is a firmware log, not runtime events", path.display()),
    })
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

pub(crate) fn hex_arg(name: &str, value: &str) -> Result<Vec<u8>> {
    hex::decode(value.trim().trim_start_matches("0x"))
        .with_context(|| format!("parse {name} as hex"))
}
