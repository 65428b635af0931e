//! Typed records of the results channel (one JSON object per line, see ARCHITECTURE.md).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Shutdown reasons the init reports in the `shutdown` record.
pub mod reason {
    /// `cvm.on_ready=poweroff` after `ready`.
    pub const READY_POWEROFF: &str = "ready-poweroff";
    /// SIGINT, which the kernel sends to PID 1 on ctrl-alt-delete.
    pub const SIGNAL_SIGINT: &str = "signal-sigint";
    /// SIGTERM.
    pub const SIGNAL_SIGTERM: &str = "signal-sigterm";
    /// ACPI power button (QEMU `system_powerdown`).
    pub const POWER_BUTTON: &str = "power-button";
    /// A fatal error.
    pub const FATAL: &str = "fatal";
}

/// One line of the results channel. Unknown fields are ignored; events this harness does not
/// know yet become [`Record::Other`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Record {
    /// First record: the init started.
    Boot { version: String, mono_us: u64 },
    /// A boot stage started.
    StageStarted { stage: String, mono_us: u64 },
    /// A boot stage finished.
    StageFinished {
        stage: String,
        mono_us: u64,
        duration_us: u64,
    },
    /// The boot plan finished.
    Ready { mono_us: u64 },
    /// A fatal error: one-line cause plus the chain of messages.
    Fatal {
        stage: String,
        error: String,
        #[serde(default)]
        chain: Vec<String>,
        mono_us: u64,
    },
    /// An orderly shutdown started.
    Shutdown { reason: String, mono_us: u64 },
    /// Children were stopped and zombies reaped.
    Reaped {
        zombies_left: u64,
        children_stopped: u64,
        mono_us: u64,
    },
    /// Last record before `reboot(RB_POWER_OFF)`.
    PowerOff { mono_us: u64 },
    /// An event this harness does not model.
    #[serde(skip)]
    Other { event: String, line: String },
}

/// Event names of the variants of [`Record`] (everything else is [`Record::Other`]).
const KNOWN_EVENTS: [&str; 8] = [
    "boot",
    "stage_started",
    "stage_finished",
    "ready",
    "fatal",
    "shutdown",
    "reaped",
    "power_off",
];

impl Record {
    /// Parses one line of the results channel.
    pub fn parse(line: &str) -> Result<Self, ResultsError> {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|source| ResultsError::Parse {
                line: line.to_owned(),
                source,
            })?;
        let event = value
            .get("event")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| ResultsError::NoEvent {
                line: line.to_owned(),
            })?
            .to_owned();
        if KNOWN_EVENTS.contains(&event.as_str()) {
            serde_json::from_value(value).map_err(|source| ResultsError::Parse {
                line: line.to_owned(),
                source,
            })
        } else {
            Ok(Self::Other {
                event,
                line: line.to_owned(),
            })
        }
    }

    /// The `event` name of this record.
    pub fn event(&self) -> &str {
        match self {
            Self::Boot { .. } => "boot",
            Self::StageStarted { .. } => "stage_started",
            Self::StageFinished { .. } => "stage_finished",
            Self::Ready { .. } => "ready",
            Self::Fatal { .. } => "fatal",
            Self::Shutdown { .. } => "shutdown",
            Self::Reaped { .. } => "reaped",
            Self::PowerOff { .. } => "power_off",
            Self::Other { event, .. } => event,
        }
    }

    /// `mono_us` of the record, when it has one.
    pub fn mono_us(&self) -> Option<u64> {
        match self {
            Self::Boot { mono_us, .. }
            | Self::StageStarted { mono_us, .. }
            | Self::StageFinished { mono_us, .. }
            | Self::Ready { mono_us }
            | Self::Fatal { mono_us, .. }
            | Self::Shutdown { mono_us, .. }
            | Self::Reaped { mono_us, .. }
            | Self::PowerOff { mono_us } => Some(*mono_us),
            Self::Other { .. } => None,
        }
    }
}

/// Errors reading the results channel.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("failed to read the results file {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("results line is not a valid record: {line}")]
    Parse {
        line: String,
        source: serde_json::Error,
    },
    #[error("results line has no \"event\" string: {line}")]
    NoEvent { line: String },
}

/// Incremental reader of the results file QEMU's `file` chardev writes.
#[derive(Debug)]
pub struct ResultsReader {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    records: Vec<Record>,
}

impl ResultsReader {
    /// A reader for `path` (which need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            offset: 0,
            partial: Vec::new(),
            records: Vec::new(),
        }
    }

    /// Path of the results file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads any complete new lines and returns all records seen so far.
    pub fn poll(&mut self) -> Result<&[Record], ResultsError> {
        let read_error = |source| ResultsError::Read {
            path: self.path.clone(),
            source,
        };
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(&self.records),
            Err(error) => return Err(read_error(error)),
        };
        file.seek(SeekFrom::Start(self.offset))
            .map_err(read_error)?;
        let mut fresh = Vec::new();
        file.read_to_end(&mut fresh).map_err(read_error)?;
        self.offset += fresh.len() as u64;
        self.partial.extend_from_slice(&fresh);
        while let Some(end) = self.partial.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if !text.is_empty() {
                self.records.push(Record::parse(text)?);
            }
        }
        Ok(&self.records)
    }

    /// Records read so far (without polling).
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Bytes of an unterminated last line, if any (useful in failure messages).
    pub fn pending(&self) -> String {
        String::from_utf8_lossy(&self.partial).into_owned()
    }
}

/// Stage names of the `stage_finished` records, in order.
pub fn finished_stages(records: &[Record]) -> Vec<&str> {
    records
        .iter()
        .filter_map(|record| match record {
            Record::StageFinished { stage, .. } => Some(stage.as_str()),
            _ => None,
        })
        .collect()
}

/// Event names of `records`, in order.
pub fn events(records: &[Record]) -> Vec<&str> {
    records.iter().map(Record::event).collect()
}

/// The JSON of every record with event `name` that the harness does not model (parsed as
/// [`Record::Other`]), in order.
pub fn raw_records(records: &[Record], name: &str) -> Vec<serde_json::Value> {
    records
        .iter()
        .filter_map(|record| match record {
            Record::Other { event, line } if event == name => serde_json::from_str(line).ok(),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_records() {
        let lines = [
            r#"{"event":"boot","version":"0.1.0","mono_us":1834000}"#,
            r#"{"event":"stage_started","stage":"mount","mono_us":1834100}"#,
            r#"{"event":"stage_finished","stage":"mount","mono_us":1835000,"duration_us":900}"#,
            r#"{"event":"ready","mono_us":2100000}"#,
            r#"{"event":"fatal","stage":"cmdline","error":"cause: inner","chain":["cause","inner"],"mono_us":5}"#,
            r#"{"event":"shutdown","reason":"power-button","mono_us":6}"#,
            r#"{"event":"reaped","zombies_left":0,"children_stopped":0,"mono_us":7}"#,
            r#"{"event":"power_off","mono_us":8}"#,
            r#"{"event":"measured","rtmr":2,"mono_us":9}"#,
        ];
        let records: Vec<Record> = lines
            .iter()
            .map(|line| Record::parse(line).unwrap())
            .collect();
        assert_eq!(
            events(&records),
            [
                "boot",
                "stage_started",
                "stage_finished",
                "ready",
                "fatal",
                "shutdown",
                "reaped",
                "power_off",
                "measured"
            ]
        );
        assert_eq!(
            records[2],
            Record::StageFinished {
                stage: "mount".into(),
                mono_us: 1_835_000,
                duration_us: 900
            }
        );
        assert_eq!(
            records[6],
            Record::Reaped {
                zombies_left: 0,
                children_stopped: 0,
                mono_us: 7
            }
        );
        assert_eq!(records[8].mono_us(), None);
        assert_eq!(finished_stages(&records), ["mount"]);
    }

    #[test]
    fn rejects_garbage_and_records_without_event() {
        assert!(matches!(
            Record::parse("nope"),
            Err(ResultsError::Parse { .. })
        ));
        assert!(matches!(
            Record::parse(r#"{"stage":"x"}"#),
            Err(ResultsError::NoEvent { .. })
        ));
        assert!(matches!(
            Record::parse(r#"{"event":"ready"}"#),
            Err(ResultsError::Parse { .. })
        ));
    }

    #[test]
    fn reader_handles_partial_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.jsonl");
        let mut reader = ResultsReader::new(&path);
        assert!(reader.poll().unwrap().is_empty());
        std::fs::write(
            &path,
            "{\"event\":\"ready\",\"mono_us\":1}\n{\"event\":\"power",
        )
        .unwrap();
        assert_eq!(reader.poll().unwrap().len(), 1);
        assert_eq!(reader.pending(), "{\"event\":\"power");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, b"_off\",\"mono_us\":2}\n").unwrap();
        assert_eq!(events(reader.poll().unwrap()), ["ready", "power_off"]);
    }
}
