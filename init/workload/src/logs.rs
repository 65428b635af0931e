//! Container output: split into lines for the console (prefixed with the service name) and
//! appended to a size-capped file on the encrypted disk (`<name>.log`, rotated once to
//! `<name>.log.1`, so at most twice the cap is kept).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Opening, writing or rotating the log file failed.
    #[error("{op} {path}")]
    WriteLog {
        /// Operation.
        op: &'static str,
        /// Path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Longest console line; longer output is split.
pub const MAX_LINE: usize = 4096;

/// Splits a byte stream into lines, keeping a partial last line between chunks.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds `chunk`; returns complete lines (without `\n`, lossily decoded, control
    /// characters other than tab replaced so a container cannot drive the console).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in chunk {
            if b == b'\n' {
                out.push(clean(&std::mem::take(&mut self.partial)));
            } else {
                self.partial.push(b);
                if self.partial.len() >= MAX_LINE {
                    out.push(clean(&std::mem::take(&mut self.partial)));
                }
            }
        }
        out
    }

    /// The partial line at end of stream, if any.
    pub fn finish(&mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| clean(&std::mem::take(&mut self.partial)))
    }
}

fn clean(line: &[u8]) -> String {
    String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line))
        .chars()
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect()
}

/// A size-capped log file.
#[derive(Debug)]
pub struct CappedLog {
    path: PathBuf,
    cap: u64,
    file: File,
    size: u64,
}

impl CappedLog {
    /// Opens (appending to) `path`, keeping at most about `cap` bytes in it and `cap` more in
    /// `path.1`.
    pub fn open(path: &Path, cap: u64) -> Result<Self, LogError> {
        let err = |op| {
            let path = path.to_owned();
            move |source| LogError::WriteLog { op, path, source }
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err("open"))?;
        let size = file.metadata().map_err(err("stat"))?.len();
        Ok(Self {
            path: path.to_owned(),
            cap,
            file,
            size,
        })
    }

    /// Appends `line` and a newline, rotating first if the cap would be exceeded.
    pub fn write_line(&mut self, line: &str) -> Result<(), LogError> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.cap {
            self.rotate()?;
        }
        let err = |source| LogError::WriteLog {
            op: "write",
            path: self.path.clone(),
            source,
        };
        self.file.write_all(line.as_bytes()).map_err(err)?;
        self.file
            .write_all(b"\n")
            .map_err(|source| LogError::WriteLog {
                op: "write",
                path: self.path.clone(),
                source,
            })?;
        self.size += len;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), LogError> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        let old = PathBuf::from(old);
        fs::rename(&self.path, &old).map_err(|source| LogError::WriteLog {
            op: "rotate",
            path: self.path.clone(),
            source,
        })?;
        *self = Self::open(&self.path.clone(), self.cap)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_across_chunks_and_neutralizes_control_chars() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"hel"), Vec::<String>::new());
        assert_eq!(s.push(b"lo\nwor"), vec!["hello"]);
        assert_eq!(
            s.push(b"ld\r\n\x1b[2Jx\tdone\n"),
            vec!["world", "?[2Jx\tdone"]
        );
        assert_eq!(s.push(b"tail"), Vec::<String>::new());
        assert_eq!(s.finish().as_deref(), Some("tail"));
        assert_eq!(s.finish(), None);
        let long = vec![b'a'; MAX_LINE + 10];
        let lines = s.push(&long);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), MAX_LINE);
    }

    #[test]
    fn rotates_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.log");
        let mut log = CappedLog::open(&path, 20).unwrap();
        for i in 0..10 {
            log.write_line(&format!("line {i}")).unwrap();
        }
        let current = fs::read_to_string(&path).unwrap();
        let previous = fs::read_to_string(dir.path().join("web.log.1")).unwrap();
        assert!(
            current.len() <= 20 && previous.len() <= 20,
            "{current:?} {previous:?}"
        );
        assert!(current.ends_with("line 9\n"));
        assert_eq!(previous, "line 6\nline 7\n");
        // Reopening continues with the existing size.
        let mut log = CappedLog::open(&path, 20).unwrap();
        log.write_line("x").unwrap();
        assert!(fs::read_to_string(&path).unwrap().len() <= 20);
    }
}
