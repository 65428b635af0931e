//! The dstack OS image bundle and its `os_image_hash` (`specs/dstack-guest.md` §10, §3.5;
//! dstack `os/image/assemble.sh`).
//!
//! A dstack image directory holds `ovmf.fd`, `bzImage`, `initramfs.cpio.gz`, `metadata.json`,
//! `sha256sum.txt` and `digest.txt` (dstack also ships `measurement.tdx.cbor` and a rootfs).
//! `sha256sum.txt` is `sha256sum` output (`<64 hex>  <name>\n` per file) over the bundle's
//! files, and the image's identity is
//!
//! ```text
//! os_image_hash = SHA-256(bytes of sha256sum.txt)      (digest.txt = its hex and "\n")
//! ```
//!
//! dstack lists `ovmf.fd bzImage initramfs.cpio.gz metadata.json measurement.tdx.cbor` (plus the
//! optional SNP/GCP/AWS measurement files). cvm-init's bundle lists the first four only: it has
//! no `measurement.tdx.cbor` (dstack-mr's CBOR of precomputed measurement material, produced by
//! `dstack-mr tdx-measurement-cbor`, which this project does not reimplement), so its
//! `os_image_hash` is the same rule over a shorter list. A verifier that recomputes the hash from
//! the bundle (this module, `cvm-measure image-hash`) accepts either: every listed file is
//! checked, whatever the list holds. The rule itself is checked against the dstack TDX-lite
//! fixture, whose `vm_config.tdx_measurement.checksum_file` hashes to its `os_image_hash`.
//!
//! No I/O: callers read the files and pass their bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The firmware file of a bundle (`metadata.json` `bios`).
pub const OVMF: &str = "ovmf.fd";
/// The kernel file (`metadata.json` `kernel`).
pub const KERNEL: &str = "bzImage";
/// The initramfs file (`metadata.json` `initrd`).
pub const INITRD: &str = "initramfs.cpio.gz";
/// The metadata file.
pub const METADATA: &str = "metadata.json";
/// The checksum list whose SHA-256 is `os_image_hash`.
pub const SHA256SUM: &str = "sha256sum.txt";
/// The file holding `os_image_hash` as hex.
pub const DIGEST: &str = "digest.txt";
/// dstack's TDX measurement material (listed in dstack's `sha256sum.txt`; not produced here).
pub const MEASUREMENT_TDX: &str = "measurement.tdx.cbor";
/// The files cvm-init's `sha256sum.txt` lists, in dstack's order.
pub const CHECKSUM_FILES: [&str; 4] = [OVMF, KERNEL, INITRD, METADATA];
/// dstack's `ovmf_variant` for an OVMF whose event layout predates edk2 2025.05.
pub const OVMF_VARIANT_PRE_202505: &str = "pre202505";

/// Errors of building, parsing or checking a bundle.
#[derive(Debug, thiserror::Error)]
pub enum ImageBundleError {
    /// A line of `sha256sum.txt` is not `<64 hex>  <name>`.
    #[error("sha256sum.txt line {line} is not `<sha256 hex>  <file name>`")]
    ParseChecksumLine { line: usize },
    /// `sha256sum.txt` lists a name that is not a plain file name of the bundle directory.
    #[error("sha256sum.txt lists `{name}`, which is not a plain file name")]
    UnsafeFileName { name: String },
    /// `sha256sum.txt` lists a file twice.
    #[error("sha256sum.txt lists `{name}` twice")]
    DuplicateFile { name: String },
    /// `sha256sum.txt` does not list a file every bundle has.
    #[error("sha256sum.txt does not list {name}")]
    MissingChecksum { name: &'static str },
    /// A listed file is not in the bundle.
    #[error("{name} is listed in sha256sum.txt but missing from the bundle")]
    MissingFile { name: String },
    /// A file's SHA-256 differs from its `sha256sum.txt` entry.
    #[error("{name}: sha256 is {actual}, sha256sum.txt says {expected}")]
    FileMismatch {
        name: String,
        expected: String,
        actual: String,
    },
    /// `digest.txt` is not 64 hex digits.
    #[error("digest.txt is not one SHA-256 in hex")]
    ParseDigest,
    /// `digest.txt` differs from SHA-256(sha256sum.txt).
    #[error("digest.txt says {recorded}, SHA-256(sha256sum.txt) is {computed}")]
    DigestMismatch { recorded: String, computed: String },
    /// `metadata.json` does not parse as dstack's metadata.
    #[error("parse metadata.json")]
    ParseMetadata {
        #[source]
        source: serde_json::Error,
    },
    /// `metadata.json` names a file other than the bundle's (`field` = `bios`, `kernel`, …).
    #[error("metadata.json `{field}` is `{value}`, the bundle's file is {expected}")]
    MetadataFile {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    /// Serialising `metadata.json` failed.
    #[error("serialise metadata.json")]
    WriteMetadata {
        #[source]
        source: serde_json::Error,
    },
}

/// `metadata.json`, with dstack's field names (`specs/dstack-guest.md` §10: `bios`, `kernel`,
/// `cmdline`, `initrd`, `version`, `ovmf_variant`), in dstack's order. dstack also writes
/// `rootfs`, `git_revision`, `shared_ro` and `is_dev`; cvm-init's image has no rootfs (the
/// initramfs is the whole OS), so it writes the fields the measurement tools read and nothing
/// else. Parsing keeps unknown fields out of the way (a dstack bundle parses too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Firmware file name (`ovmf.fd`).
    pub bios: String,
    /// Kernel file name (`bzImage`).
    pub kernel: String,
    /// Kernel command line (OVMF appends ` initrd=initrd` when it measures it into RTMR2).
    pub cmdline: String,
    /// Initramfs file name (`initramfs.cpio.gz`).
    pub initrd: String,
    /// Image version.
    pub version: String,
    /// dstack's OVMF event-layout variant (`pre202505`, …).
    pub ovmf_variant: String,
}

impl Metadata {
    /// Metadata for the bundle's fixed file names.
    pub fn new(cmdline: &str, version: &str, ovmf_variant: &str) -> Self {
        Self {
            bios: OVMF.to_owned(),
            kernel: KERNEL.to_owned(),
            cmdline: cmdline.to_owned(),
            initrd: INITRD.to_owned(),
            version: version.to_owned(),
            ovmf_variant: ovmf_variant.to_owned(),
        }
    }

    /// Parses `metadata.json`.
    pub fn parse(bytes: &[u8]) -> Result<Self, ImageBundleError> {
        serde_json::from_slice(bytes).map_err(|source| ImageBundleError::ParseMetadata { source })
    }

    /// The file's bytes: JSON with four-space indentation and a final newline, as dstack's
    /// heredoc lays it out (deterministic: fixed field order).
    pub fn to_json(&self) -> Result<Vec<u8>, ImageBundleError> {
        let mut out = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
        self.serialize(&mut serializer)
            .map_err(|source| ImageBundleError::WriteMetadata { source })?;
        out.push(b'\n');
        Ok(out)
    }

    /// The metadata must name the bundle's own files.
    fn check_file_names(&self) -> Result<(), ImageBundleError> {
        for (field, value, expected) in [
            ("bios", &self.bios, OVMF),
            ("kernel", &self.kernel, KERNEL),
            ("initrd", &self.initrd, INITRD),
        ] {
            if value != expected {
                return Err(ImageBundleError::MetadataFile {
                    field,
                    value: value.clone(),
                    expected,
                });
            }
        }
        Ok(())
    }
}

/// One line of `sha256sum.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksumEntry {
    /// SHA-256 of the file.
    pub sha256: [u8; 32],
    /// File name inside the bundle directory.
    pub name: String,
}

/// `sha256sum` text mode output over `files` (name, bytes), in the given order.
pub fn sha256sum_text<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    files
        .into_iter()
        .map(|(name, bytes)| format!("{}  {name}\n", hex::encode(Sha256::digest(bytes))))
        .collect()
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && name.trim() == name
}

/// Parses `sha256sum.txt`: `<64 hex>` then two spaces (text mode) or space and `*` (binary
/// mode), then a plain file name; every line ends in `\n`.
pub fn parse_sha256sum(text: &[u8]) -> Result<Vec<ChecksumEntry>, ImageBundleError> {
    let mut entries: Vec<ChecksumEntry> = Vec::new();
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    if body.is_empty() || text.last() != Some(&b'\n') {
        return Err(ImageBundleError::ParseChecksumLine { line: 1 });
    }
    for (index, line) in body.split(|b| *b == b'\n').enumerate() {
        let bad = || ImageBundleError::ParseChecksumLine { line: index + 1 };
        let line = std::str::from_utf8(line).map_err(|_| bad())?;
        let (digest, rest) = line.split_at_checked(64).ok_or_else(bad)?;
        let name = rest
            .strip_prefix("  ")
            .or_else(|| rest.strip_prefix(" *"))
            .ok_or_else(bad)?;
        if digest.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad());
        }
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(digest, &mut sha256).map_err(|_| bad())?;
        if !is_plain_file_name(name) {
            return Err(ImageBundleError::UnsafeFileName {
                name: name.to_owned(),
            });
        }
        if entries.iter().any(|e| e.name == name) {
            return Err(ImageBundleError::DuplicateFile {
                name: name.to_owned(),
            });
        }
        entries.push(ChecksumEntry {
            sha256,
            name: name.to_owned(),
        });
    }
    Ok(entries)
}

/// `os_image_hash = SHA-256(sha256sum.txt)`.
pub fn os_image_hash(sha256sum: &[u8]) -> [u8; 32] {
    Sha256::digest(sha256sum).into()
}

/// `digest.txt`: the hash in lowercase hex and a newline (`sha256sum | awk '{print $1}'`).
pub fn digest_text(hash: &[u8; 32]) -> String {
    format!("{}\n", hex::encode(hash))
}

/// Parses `digest.txt` (64 hex digits, surrounding whitespace allowed).
pub fn parse_digest(text: &[u8]) -> Result<[u8; 32], ImageBundleError> {
    let text = std::str::from_utf8(text).map_err(|_| ImageBundleError::ParseDigest)?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut hash).map_err(|_| ImageBundleError::ParseDigest)?;
    Ok(hash)
}

/// A bundle's files, by name (what `dist` writes to `dist/dstack-image/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBundle {
    /// Every file of the bundle, `sha256sum.txt` and `digest.txt` included.
    pub files: BTreeMap<&'static str, Vec<u8>>,
    /// SHA-256 of `sha256sum.txt`.
    pub os_image_hash: [u8; 32],
}

impl ImageBundle {
    /// Assembles the bundle of `ovmf`, `kernel` and `initrd` with `metadata`.
    pub fn build(
        ovmf: Vec<u8>,
        kernel: Vec<u8>,
        initrd: Vec<u8>,
        metadata: &Metadata,
    ) -> Result<Self, ImageBundleError> {
        metadata.check_file_names()?;
        let mut files = BTreeMap::new();
        files.insert(OVMF, ovmf);
        files.insert(KERNEL, kernel);
        files.insert(INITRD, initrd);
        files.insert(METADATA, metadata.to_json()?);
        let sums = sha256sum_text(
            CHECKSUM_FILES
                .iter()
                .filter_map(|name| files.get(name).map(|bytes| (*name, bytes.as_slice()))),
        );
        let hash = os_image_hash(sums.as_bytes());
        files.insert(SHA256SUM, sums.into_bytes());
        files.insert(DIGEST, digest_text(&hash).into_bytes());
        Ok(Self {
            files,
            os_image_hash: hash,
        })
    }
}

/// What [`verify_bundle`] established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBundle {
    /// SHA-256 of `sha256sum.txt`.
    pub os_image_hash: [u8; 32],
    /// The listed files, each matching its checksum.
    pub entries: Vec<ChecksumEntry>,
    /// Whether a `digest.txt` was present (and matched).
    pub digest_checked: bool,
    /// The parsed `metadata.json`.
    pub metadata: Metadata,
}

/// Recomputes `os_image_hash` from `sha256sum` and checks the bundle: the list names
/// `ovmf.fd`, `bzImage`, `initramfs.cpio.gz` and `metadata.json`; every listed file is in
/// `files` with that SHA-256; `digest` (when given) equals the hash; `metadata.json` parses and
/// names the bundle's files.
pub fn verify_bundle(
    sha256sum: &[u8],
    digest: Option<&[u8]>,
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<VerifiedBundle, ImageBundleError> {
    let entries = parse_sha256sum(sha256sum)?;
    for name in CHECKSUM_FILES {
        if !entries.iter().any(|e| e.name == name) {
            return Err(ImageBundleError::MissingChecksum { name });
        }
    }
    for entry in &entries {
        let bytes = files
            .get(&entry.name)
            .ok_or_else(|| ImageBundleError::MissingFile {
                name: entry.name.clone(),
            })?;
        let actual: [u8; 32] = Sha256::digest(bytes).into();
        if actual != entry.sha256 {
            return Err(ImageBundleError::FileMismatch {
                name: entry.name.clone(),
                expected: hex::encode(entry.sha256),
                actual: hex::encode(actual),
            });
        }
    }
    let hash = os_image_hash(sha256sum);
    if let Some(digest) = digest {
        let recorded = parse_digest(digest)?;
        if recorded != hash {
            return Err(ImageBundleError::DigestMismatch {
                recorded: hex::encode(recorded),
                computed: hex::encode(hash),
            });
        }
    }
    let metadata = Metadata::parse(files.get(METADATA).map_or(&[][..], Vec::as_slice))?;
    metadata.check_file_names()?;
    Ok(VerifiedBundle {
        os_image_hash: hash,
        entries,
        digest_checked: digest.is_some(),
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    fn sample() -> ImageBundle {
        ImageBundle::build(
            b"firmware".to_vec(),
            b"kernel".to_vec(),
            b"initrd".to_vec(),
            &Metadata::new("console=ttyS0", "0.1.0", OVMF_VARIANT_PRE_202505),
        )
        .unwrap()
    }

    fn owned(bundle: &ImageBundle) -> BTreeMap<String, Vec<u8>> {
        bundle
            .files
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    /// The dstack TDX-lite fixture (Dstack-TEE/dstack @312dc605
    /// `dstack/verifier/fixtures/tdx-lite-getquote.json`): its `vm_config` carries the image's
    /// `sha256sum.txt` bytes (`tdx_measurement.checksum_file`) and `measurement.tdx.cbor`
    /// (`tdx_measurement.measurement`); SHA-256 of the former is its `os_image_hash`.
    #[test]
    fn os_image_hash_rule_matches_the_dstack_fixture() {
        let response: serde_json::Value =
            serde_json::from_slice(include_bytes!("../testdata/dstack-tdx-lite-getquote.json"))
                .unwrap();
        let vm_config: serde_json::Value =
            serde_json::from_str(response["vm_config"].as_str().unwrap()).unwrap();
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap()
        };
        let sums = b64(&vm_config["tdx_measurement"]["checksum_file"]);
        let cbor = b64(&vm_config["tdx_measurement"]["measurement"]);
        assert_eq!(
            hex::encode(os_image_hash(&sums)),
            "e6f5cfec20c02e7b97baa213d0f718020b55e040172d90ccbcb946d56c8b09db"
        );
        assert_eq!(
            vm_config["os_image_hash"],
            hex::encode(os_image_hash(&sums))
        );
        let entries = parse_sha256sum(&sums).unwrap();
        assert_eq!(
            entries,
            [ChecksumEntry {
                sha256: Sha256::digest(&cbor).into(),
                name: MEASUREMENT_TDX.to_owned(),
            }]
        );
        // Our writer produces the same bytes for the same file.
        assert_eq!(
            sha256sum_text([(MEASUREMENT_TDX, cbor.as_slice())]).as_bytes(),
            &sums[..]
        );
    }

    #[test]
    fn build_writes_dstack_layout_and_verifies() {
        let bundle = sample();
        let names: Vec<&str> = bundle.files.keys().copied().collect();
        assert_eq!(names, [KERNEL, DIGEST, INITRD, METADATA, OVMF, SHA256SUM]);
        let sums = String::from_utf8(bundle.files[SHA256SUM].clone()).unwrap();
        let listed: Vec<&str> = sums.lines().map(|l| &l[66..]).collect();
        assert_eq!(listed, CHECKSUM_FILES);
        assert!(sums.starts_with(&format!(
            "{}  ovmf.fd\n",
            hex::encode(Sha256::digest(b"firmware"))
        )));
        assert_eq!(
            bundle.os_image_hash,
            <[u8; 32]>::from(Sha256::digest(sums.as_bytes()))
        );
        assert_eq!(
            bundle.files[DIGEST],
            format!("{}\n", hex::encode(bundle.os_image_hash)).into_bytes()
        );
        let metadata = String::from_utf8(bundle.files[METADATA].clone()).unwrap();
        assert_eq!(
            metadata,
            "{\n    \"bios\": \"ovmf.fd\",\n    \"kernel\": \"bzImage\",\n    \"cmdline\": \
             \"console=ttyS0\",\n    \"initrd\": \"initramfs.cpio.gz\",\n    \"version\": \
             \"0.1.0\",\n    \"ovmf_variant\": \"pre202505\"\n}\n"
        );
        let verified = verify_bundle(
            &bundle.files[SHA256SUM],
            Some(&bundle.files[DIGEST]),
            &owned(&bundle),
        )
        .unwrap();
        assert_eq!(verified.os_image_hash, bundle.os_image_hash);
        assert!(verified.digest_checked);
        assert_eq!(verified.metadata.cmdline, "console=ttyS0");
        // Deterministic.
        assert_eq!(sample(), bundle);
    }

    #[test]
    fn a_dstack_style_list_with_the_measurement_file_verifies() {
        let bundle = sample();
        let mut files = owned(&bundle);
        files.insert(MEASUREMENT_TDX.to_owned(), b"cbor".to_vec());
        let sums = sha256sum_text(
            CHECKSUM_FILES
                .iter()
                .copied()
                .chain([MEASUREMENT_TDX])
                .map(|n| (n, files[n].as_slice())),
        );
        let verified = verify_bundle(sums.as_bytes(), None, &files).unwrap();
        assert_eq!(verified.entries.len(), 5);
        assert_eq!(verified.os_image_hash, os_image_hash(sums.as_bytes()));
        assert!(!verified.digest_checked);
    }

    #[test]
    fn tampering_is_refused_by_name() {
        let bundle = sample();
        let sums = &bundle.files[SHA256SUM];
        let mut files = owned(&bundle);
        files.insert(KERNEL.to_owned(), b"other kernel".to_vec());
        assert!(matches!(
            verify_bundle(sums, None, &files),
            Err(ImageBundleError::FileMismatch { name, .. }) if name == KERNEL
        ));
        let mut files = owned(&bundle);
        files.remove(INITRD);
        assert!(matches!(
            verify_bundle(sums, None, &files),
            Err(ImageBundleError::MissingFile { name }) if name == INITRD
        ));
        let wrong = digest_text(&[7; 32]);
        assert!(matches!(
            verify_bundle(sums, Some(wrong.as_bytes()), &owned(&bundle)),
            Err(ImageBundleError::DigestMismatch { .. })
        ));
        assert!(matches!(
            verify_bundle(sums, Some(b"nothex"), &owned(&bundle)),
            Err(ImageBundleError::ParseDigest)
        ));
        // A list without the kernel.
        let short = sha256sum_text([(OVMF, &b"firmware"[..])]);
        assert!(matches!(
            verify_bundle(short.as_bytes(), None, &owned(&bundle)),
            Err(ImageBundleError::MissingChecksum { name: KERNEL })
        ));
        // Metadata naming another kernel file (list and file consistent).
        let mut files = owned(&bundle);
        let mut metadata = Metadata::new("", "1", OVMF_VARIANT_PRE_202505);
        metadata.kernel = "vmlinuz".into();
        files.insert(METADATA.to_owned(), metadata.to_json().unwrap());
        let sums = sha256sum_text(CHECKSUM_FILES.iter().map(|n| (*n, files[*n].as_slice())));
        assert!(matches!(
            verify_bundle(sums.as_bytes(), None, &files),
            Err(ImageBundleError::MetadataFile {
                field: "kernel",
                ..
            })
        ));
    }

    #[test]
    fn checksum_lines_are_strict() {
        let hex64 = "ab".repeat(32);
        let ok = format!("{hex64}  a\n{hex64} *b\n");
        assert_eq!(parse_sha256sum(ok.as_bytes()).unwrap().len(), 2);
        for (text, line) in [
            (String::new(), 1),
            (format!("{hex64}  a"), 1),
            (format!("{hex64}  a\n{hex64} a\n"), 2),
            (format!("{}  a\n", "AB".repeat(32)), 1),
            (format!("{}  a\n", "ab".repeat(31)), 1),
            (format!("{hex64}  a\n\n"), 2),
        ] {
            assert!(
                matches!(
                    parse_sha256sum(text.as_bytes()),
                    Err(ImageBundleError::ParseChecksumLine { line: l }) if l == line
                ),
                "{text:?}"
            );
        }
        for name in ["../x", "a/b", "..", " a"] {
            let text = format!("{hex64}  {name}\n");
            assert!(
                matches!(
                    parse_sha256sum(text.as_bytes()),
                    Err(ImageBundleError::UnsafeFileName { .. })
                ),
                "{name}"
            );
        }
        let dup = format!("{hex64}  a\n{hex64}  a\n");
        assert!(matches!(
            parse_sha256sum(dup.as_bytes()),
            Err(ImageBundleError::DuplicateFile { .. })
        ));
    }
}
