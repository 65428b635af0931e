//! Container output: split into lines and appended to a size-capped, rotated file on the
//! encrypted disk (`<name>.log`, then `<name>.log.1` … `<name>.log.<N-1>`, oldest last, so at
//! most `N` times the cap is kept). Whether a line also reaches the console is the caller's
//! decision (dstack's `public_logs`).

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

/// A size-capped log file with rotated predecessors.
#[derive(Debug)]
pub struct CappedLog {
    path: PathBuf,
    cap: u64,
    files: u32,
    file: File,
    size: u64,
}

/// `path` with `.<n>` appended (`n` ≥ 1), or `path` itself for 0.
fn numbered(path: &Path, n: u32) -> PathBuf {
    if n == 0 {
        return path.to_owned();
    }
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

impl CappedLog {
    /// Opens (appending to) `path`, keeping at most about `cap` bytes in each of `files` files
    /// (`path`, `path.1` … `path.<files-1>`; `files` below 1 counts as 1: the file is
    /// truncated at the cap).
    pub fn open(path: &Path, cap: u64, files: u32) -> Result<Self, LogError> {
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
            files: files.max(1),
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

    /// Shifts `path.<k>` to `path.<k+1>` from the oldest down (the oldest is dropped), then
    /// starts an empty `path`.
    fn rotate(&mut self) -> Result<(), LogError> {
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| LogError::WriteLog {
                op: "rotate",
                path,
                source,
            }
        };
        let last = self.files - 1;
        if last == 0 {
            self.file.set_len(0).map_err(err(&self.path))?;
            self.size = 0;
            return Ok(());
        }
        for k in (0..last).rev() {
            let from = numbered(&self.path, k);
            match fs::rename(&from, numbered(&self.path, k + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound && k > 0 => {}
                Err(e) => return Err(err(&from)(e)),
            }
        }
        *self = Self::open(&self.path.clone(), self.cap, self.files)?;
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
    fn rotates_at_the_cap_through_several_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.log");
        let mut log = CappedLog::open(&path, 20, 3).unwrap();
        for i in 0..10 {
            log.write_line(&format!("line {i}")).unwrap();
        }
        let read = |name: &str| fs::read_to_string(dir.path().join(name)).unwrap();
        // Two 7-byte lines fit under a 20-byte cap: 8,9 | 6,7 | 4,5; 0..3 are dropped.
        assert_eq!(read("web.log"), "line 8\nline 9\n");
        assert_eq!(read("web.log.1"), "line 6\nline 7\n");
        assert_eq!(read("web.log.2"), "line 4\nline 5\n");
        assert!(!dir.path().join("web.log.3").exists());
        // Reopening continues with the existing 14 bytes: a 7-byte line rotates.
        let mut log = CappedLog::open(&path, 20, 3).unwrap();
        log.write_line("line x").unwrap();
        assert_eq!(read("web.log"), "line x\n");
        assert_eq!(read("web.log.1"), "line 8\nline 9\n");
        assert_eq!(read("web.log.2"), "line 6\nline 7\n");
    }

    #[test]
    fn one_file_truncates_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.log");
        let mut log = CappedLog::open(&path, 10, 0).unwrap();
        for i in 0..4 {
            log.write_line(&format!("l{i}")).unwrap();
        }
        // 3 bytes a line: l0,l1,l2 fill 9 bytes, l3 truncates and starts again.
        assert_eq!(fs::read_to_string(&path).unwrap(), "l3\n");
        assert!(!dir.path().join("one.log.1").exists());
    }
}
