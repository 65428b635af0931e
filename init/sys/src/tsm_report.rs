//! configfs-tsm reports (Linux ≥ 6.7, `CONFIG_TSM_REPORTS`): a TD quote for 64 bytes of report
//! data without any quote library.
//!
//! Procedure (`shared/specs/tdx.md` §3.2): `mkdir <root>/<entry>` → read `provider` (must start
//! with `tdx_guest`) → read `generation` → write exactly 64 bytes to `inblob` → read `outblob`
//! (blocks while the kernel builds the quote) → re-read `generation`, which must be exactly one
//! more, else another writer raced and the request is retried → `rmdir` the entry if this call
//! created it. configfs must be mounted at `/sys/kernel/config`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::tdx_guest::REPORT_DATA_LEN;

/// The configfs-tsm report directory.
pub const TSM_REPORT_ROOT: &str = "/sys/kernel/config/tsm/report";

/// The provider name the TDX guest driver registers.
const TDX_PROVIDER: &str = "tdx_guest";
/// How many times a raced request is retried before giving up.
const MAX_ATTEMPTS: u32 = 3;
/// Upper bound on an `outblob` (TDX quotes are ~5 KiB; dstack accepts < 8 KiB).
pub const MAX_QUOTE_LEN: usize = 64 * 1024;
/// Upper bound on small text attributes (`provider`, `generation`).
const MAX_ATTRIBUTE_LEN: u64 = 256;

/// Errors of the configfs-tsm report interface.
#[derive(Debug, thiserror::Error)]
pub enum TsmReportError {
    /// `mkdir` of the report entry failed.
    #[error("create report entry {path}")]
    CreateReportEntry {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading an attribute file failed.
    #[error("read {path}")]
    ReadAttribute {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The entry belongs to another TSM provider (e.g. SEV-SNP).
    #[error("report provider at {path} is {provider:?}, expected tdx_guest")]
    WrongProvider { path: PathBuf, provider: String },
    /// `generation` was not a decimal counter.
    #[error("generation at {path} is not a decimal number: {value:?}")]
    ParseGeneration { path: PathBuf, value: String },
    /// Writing the report data to `inblob` failed.
    #[error("write report data to {path}")]
    WriteInblob {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The kernel took fewer than 64 bytes of report data.
    #[error("write report data to {path}: short write of {written} bytes")]
    ShortInblobWrite { path: PathBuf, written: usize },
    /// Reading `outblob` (the quote) failed.
    #[error("read quote from {path}")]
    ReadOutblob {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `outblob` was empty or larger than [`MAX_QUOTE_LEN`].
    #[error("quote at {path} has implausible length {len}")]
    QuoteLength { path: PathBuf, len: usize },
    /// Every attempt raced with another writer.
    #[error(
        "report entry {path} raced with another writer {attempts} times (generation {before} -> {after})"
    )]
    GenerationRaced {
        path: PathBuf,
        attempts: u32,
        before: u64,
        after: u64,
    },
    /// `rmdir` of the report entry failed.
    #[error("remove report entry {path}")]
    RemoveReportEntry {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A configfs-tsm report entry.
#[derive(Debug, Clone)]
pub struct TsmReport {
    entry: PathBuf,
}

impl TsmReport {
    /// Uses the entry `<root>/<name>` (normally `root` = [`TSM_REPORT_ROOT`]). The entry is
    /// created per request when absent and then removed again; an entry that already exists
    /// (e.g. dstack's `com.intel.dcap`) is reused and left in place.
    pub fn new(root: &Path, name: &str) -> Self {
        Self {
            entry: root.join(name),
        }
    }

    /// The entry directory.
    pub fn entry(&self) -> &Path {
        &self.entry
    }

    /// Whether the report root exists (configfs mounted and a TSM provider registered).
    pub fn is_available(root: &Path) -> bool {
        root.is_dir()
    }

    /// Gets a quote whose report data is `report_data`.
    pub fn quote(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TsmReportError> {
        let created = match fs::create_dir(&self.entry) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(source) => {
                return Err(TsmReportError::CreateReportEntry {
                    path: self.entry.clone(),
                    source,
                });
            }
        };
        let result = self.quote_in_entry(report_data);
        if created {
            let removed =
                fs::remove_dir(&self.entry).map_err(|source| TsmReportError::RemoveReportEntry {
                    path: self.entry.clone(),
                    source,
                });
            // The quote (or its error) matters more than a failed cleanup.
            if let (Ok(_), Err(e)) = (&result, removed) {
                return Err(e);
            }
        }
        result
    }

    fn quote_in_entry(
        &self,
        report_data: &[u8; REPORT_DATA_LEN],
    ) -> Result<Vec<u8>, TsmReportError> {
        let provider_path = self.entry.join("provider");
        let provider = read_attribute(&provider_path)?;
        if !provider.trim_end().starts_with(TDX_PROVIDER) {
            return Err(TsmReportError::WrongProvider {
                path: provider_path,
                provider: provider.trim_end().to_owned(),
            });
        }
        let generation_path = self.entry.join("generation");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let before = read_generation(&generation_path)?;
            self.write_inblob(report_data)?;
            let quote = self.read_outblob()?;
            let after = read_generation(&generation_path)?;
            if before.checked_add(1) == Some(after) {
                return Ok(quote);
            }
            log::warn!(
                "configfs-tsm report raced (generation {before} -> {after}), attempt {attempt}"
            );
            if attempt >= MAX_ATTEMPTS {
                return Err(TsmReportError::GenerationRaced {
                    path: generation_path,
                    attempts: attempt,
                    before,
                    after,
                });
            }
        }
    }

    fn write_inblob(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<(), TsmReportError> {
        let path = self.entry.join("inblob");
        let write_err = |source| TsmReportError::WriteInblob {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(write_err)?;
        let written = loop {
            match file.write(report_data) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other.map_err(write_err)?,
            }
        };
        if written != REPORT_DATA_LEN {
            return Err(TsmReportError::ShortInblobWrite { path, written });
        }
        Ok(())
    }

    fn read_outblob(&self) -> Result<Vec<u8>, TsmReportError> {
        let path = self.entry.join("outblob");
        let read_err = |source| TsmReportError::ReadOutblob {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(read_err)?;
        let mut quote = Vec::new();
        file.take(MAX_QUOTE_LEN as u64 + 1)
            .read_to_end(&mut quote)
            .map_err(read_err)?;
        if quote.is_empty() || quote.len() > MAX_QUOTE_LEN {
            return Err(TsmReportError::QuoteLength {
                path,
                len: quote.len(),
            });
        }
        Ok(quote)
    }
}

fn read_attribute(path: &Path) -> Result<String, TsmReportError> {
    let read_err = |source| TsmReportError::ReadAttribute {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_ATTRIBUTE_LEN)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn read_generation(path: &Path) -> Result<u64, TsmReportError> {
    let value = read_attribute(path)?;
    value
        .trim()
        .parse()
        .map_err(|_| TsmReportError::ParseGeneration {
            path: path.to_owned(),
            value: value.trim().to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;

    fn mkfifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    /// Sets the emulated `generation` attribute atomically (write + rename).
    fn set_generation(entry: &Path, generation: u64) {
        let tmp = entry.join(".generation.tmp");
        fs::write(&tmp, format!("{generation}\n")).unwrap();
        fs::rename(tmp, entry.join("generation")).unwrap();
    }

    /// A fake report entry: `provider` and `generation` are plain files, `inblob` and `outblob`
    /// are FIFOs served by a thread emulating the kernel (see [`emulate_kernel`]).
    fn fake_entry(root: &Path, name: &str, provider: &str) -> PathBuf {
        let entry = root.join(name);
        fs::create_dir(&entry).unwrap();
        fs::write(entry.join("provider"), provider).unwrap();
        set_generation(&entry, 41);
        for f in ["inblob", "outblob"] {
            mkfifo(&entry.join(f));
        }
        entry
    }

    /// Per request: takes the report data from `inblob` (recording it), advances `generation`
    /// by `bumps[i]` (1 = no race, more = another writer slipped in), then serves a quote that
    /// embeds the report data on `outblob`.
    fn emulate_kernel(entry: PathBuf, bumps: Vec<u64>) -> thread::JoinHandle<Vec<Vec<u8>>> {
        thread::spawn(move || {
            let mut generation = 41u64;
            let mut inputs = Vec::new();
            for bump in bumps {
                let mut input = Vec::new();
                File::open(entry.join("inblob"))
                    .unwrap()
                    .read_to_end(&mut input)
                    .unwrap();
                let mut quote = b"FAKE-QUOTE:".to_vec();
                quote.extend_from_slice(&input);
                generation += bump;
                set_generation(&entry, generation);
                fs::write(entry.join("outblob"), &quote).unwrap();
                inputs.push(input);
            }
            inputs
        })
    }

    #[test]
    fn quote_round_trip_through_emulated_kernel() {
        let root = tempfile::tempdir().unwrap();
        let entry = fake_entry(root.path(), "com.intel.dcap", "tdx_guest\n");
        let kernel = emulate_kernel(entry.clone(), vec![1]);
        let report = TsmReport::new(root.path(), "com.intel.dcap");
        let quote = report.quote(&[0x5A; 64]).unwrap();
        let inputs = kernel.join().unwrap();
        assert_eq!(inputs, vec![vec![0x5A; 64]]);
        assert_eq!(&quote[..11], b"FAKE-QUOTE:");
        assert_eq!(&quote[11..], &[0x5A; 64]);
        // A pre-existing entry is left in place.
        assert!(entry.is_dir());
    }

    #[test]
    fn raced_generation_is_retried() {
        let root = tempfile::tempdir().unwrap();
        let entry = fake_entry(root.path(), "e", "tdx_guest");
        let kernel = emulate_kernel(entry, vec![2, 1]);
        let quote = TsmReport::new(root.path(), "e").quote(&[1; 64]).unwrap();
        assert_eq!(kernel.join().unwrap().len(), 2);
        assert_eq!(&quote[11..], &[1; 64]);
    }

    #[test]
    fn persistent_race_gives_up() {
        let root = tempfile::tempdir().unwrap();
        let entry = fake_entry(root.path(), "e", "tdx_guest");
        let kernel = emulate_kernel(entry, vec![3, 3, 3]);
        let err = TsmReport::new(root.path(), "e")
            .quote(&[1; 64])
            .unwrap_err();
        kernel.join().unwrap();
        assert!(matches!(
            err,
            TsmReportError::GenerationRaced {
                attempts: 3,
                before: 47,
                after: 50,
                ..
            }
        ));
    }

    #[test]
    fn wrong_provider_is_rejected() {
        let root = tempfile::tempdir().unwrap();
        let entry = root.path().join("e");
        fs::create_dir(&entry).unwrap();
        fs::write(entry.join("provider"), "sev_guest\n").unwrap();
        let err = TsmReport::new(root.path(), "e")
            .quote(&[1; 64])
            .unwrap_err();
        assert!(
            matches!(&err, TsmReportError::WrongProvider { provider, .. } if provider == "sev_guest")
        );
    }

    #[test]
    fn created_entry_is_removed_even_on_error() {
        // mkdir in a plain directory creates no attributes: reading `provider` fails, and the
        // entry this call created is removed again.
        let root = tempfile::tempdir().unwrap();
        let report = TsmReport::new(root.path(), "cvm-init");
        let err = report.quote(&[1; 64]).unwrap_err();
        assert!(matches!(err, TsmReportError::ReadAttribute { .. }));
        assert!(!report.entry().exists());
    }

    #[test]
    fn missing_root_is_a_create_error() {
        let root = tempfile::tempdir().unwrap();
        let report = TsmReport::new(&root.path().join("absent"), "x");
        assert!(!TsmReport::is_available(&root.path().join("absent")));
        assert!(matches!(
            report.quote(&[1; 64]),
            Err(TsmReportError::CreateReportEntry { .. })
        ));
    }

    #[test]
    fn bad_generation_and_empty_quote() {
        let root = tempfile::tempdir().unwrap();
        let entry = root.path().join("e");
        fs::create_dir(&entry).unwrap();
        fs::write(entry.join("provider"), "tdx_guest").unwrap();
        fs::write(entry.join("generation"), "nope").unwrap();
        let report = TsmReport::new(root.path(), "e");
        assert!(matches!(
            report.quote(&[1; 64]),
            Err(TsmReportError::ParseGeneration { .. })
        ));
        fs::write(entry.join("generation"), "1").unwrap();
        fs::write(entry.join("inblob"), "").unwrap();
        fs::write(entry.join("outblob"), "").unwrap();
        assert!(matches!(
            report.quote(&[1; 64]),
            Err(TsmReportError::QuoteLength { len: 0, .. })
        ));
    }
}
