//! `cvm-measure image-hash DIR`: recomputes a dstack image bundle's `os_image_hash`
//! (SHA-256 of `sha256sum.txt`) and checks every listed file and `digest.txt`
//! (`measure::image_bundle`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use measure::image_bundle::{DIGEST, SHA256SUM, parse_sha256sum, verify_bundle};
use serde::Serialize;

use crate::ImageHashArgs;

#[derive(Serialize)]
struct FileOutput {
    name: String,
    sha256: String,
}

#[derive(Serialize)]
struct ImageHashOutput {
    os_image_hash: String,
    files: Vec<FileOutput>,
    digest_txt_checked: bool,
    version: String,
    cmdline: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected_matches: Option<bool>,
}

pub(crate) fn image_hash(args: &ImageHashArgs, out: &mut String) -> Result<()> {
    let dir = &args.dir;
    let expect = args
        .expect
        .as_deref()
        .map(|hex| {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(hex.trim(), &mut hash)
                .map(|()| hash)
                .with_context(|| format!("--expect {hex} is not a SHA-256 in hex"))
        })
        .transpose()?;
    let sums_path = dir.join(SHA256SUM);
    let sums =
        std::fs::read(&sums_path).with_context(|| format!("read {}", sums_path.display()))?;
    let digest_path = dir.join(DIGEST);
    let digest = match std::fs::read(&digest_path) {
        Ok(bytes) => Some(bytes),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => {
            return Err(err).with_context(|| format!("read {}", digest_path.display()));
        }
    };
    // Read exactly the files the list names (plain names only: the parser refuses paths).
    let entries =
        parse_sha256sum(&sums).with_context(|| format!("parse {}", sums_path.display()))?;
    let mut files = BTreeMap::new();
    for entry in &entries {
        let path = dir.join(&entry.name);
        match std::fs::read(&path) {
            Ok(bytes) => {
                files.insert(entry.name.clone(), bytes);
            }
            // Left out: verify_bundle names the missing file.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("read {}", path.display())),
        }
    }
    let verified = verify_bundle(&sums, digest.as_deref(), &files)
        .with_context(|| format!("image bundle {} does not verify", dir.display()))?;
    let hash = hex::encode(verified.os_image_hash);
    let matches = expect.map(|e| e == verified.os_image_hash);
    if args.json {
        let output = ImageHashOutput {
            os_image_hash: hash.clone(),
            files: verified
                .entries
                .iter()
                .map(|e| FileOutput {
                    name: e.name.clone(),
                    sha256: hex::encode(e.sha256),
                })
                .collect(),
            digest_txt_checked: verified.digest_checked,
            version: verified.metadata.version.clone(),
            cmdline: verified.metadata.cmdline.clone(),
            expected_matches: matches,
        };
        writeln!(out, "{}", serde_json::to_string_pretty(&output)?)?;
    } else {
        for entry in &verified.entries {
            writeln!(out, "✓ {:<22} {}", entry.name, hex::encode(entry.sha256))?;
        }
        if verified.digest_checked {
            writeln!(out, "✓ {DIGEST:<22} matches SHA-256({SHA256SUM})")?;
        } else {
            writeln!(out, "~ {DIGEST:<22} absent (not checked)")?;
        }
        writeln!(out, "version: {}", verified.metadata.version)?;
        writeln!(out, "cmdline: {}", verified.metadata.cmdline)?;
        writeln!(out, "os_image_hash: {hash}")?;
    }
    match (expect, matches) {
        (Some(expected), Some(false)) => bail!(
            "os_image_hash is {hash}, expected {}",
            hex::encode(expected)
        ),
        _ => Ok(()),
    }
}
