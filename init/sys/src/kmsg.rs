//! /dev/kmsg: log lines into the kernel ring buffer.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Syslog priority of a kmsg line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Error = 3,
    Warning = 4,
    Info = 6,
    Debug = 7,
}

/// An open /dev/kmsg.
#[derive(Debug)]
pub struct Kmsg(File);

impl Kmsg {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        OpenOptions::new().write(true).open(path).map(Self)
    }

    /// Write one record; each `write` is one kmsg record. Errors are returned, the caller decides.
    pub fn write_line(&mut self, priority: Priority, line: &str) -> std::io::Result<()> {
        let record = format!("<{}>{}\n", priority as u8, line);
        self.0.write_all(record.as_bytes())
    }
}
