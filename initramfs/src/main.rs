//! `cvm-initramfs`: builds a deterministic initramfs from a manifest and prints its sha256.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cvm_initramfs::{Compression, ImageSpec, Manifest, build_image};
use sha2::{Digest as _, Sha256};

/// Build a deterministic initramfs (newc cpio) for cvm-init.
#[derive(Debug, Parser)]
#[command(name = "cvm-initramfs", version)]
struct Args {
    /// Image manifest (TOML).
    #[arg(long)]
    manifest: PathBuf,
    /// The init binary, installed as /init.
    #[arg(long)]
    init: PathBuf,
    /// Kernel module tree, e.g. .../lib/modules/6.1.0-50-cloud-amd64.
    #[arg(long)]
    module_tree: Option<PathBuf>,
    /// mtime of every entry (seconds since the epoch).
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
    source_date_epoch: u64,
    /// Compression: gzip, zstd or none.
    #[arg(long, default_value = "gzip")]
    compression: Compression,
    /// Output file.
    #[arg(long)]
    output: PathBuf,
}

/// Errors of the command.
#[derive(Debug, thiserror::Error)]
enum CommandError {
    #[error("Load manifest {path:?}")]
    LoadManifest {
        path: PathBuf,
        #[source]
        source: cvm_initramfs::ManifestError,
    },
    #[error("Build image")]
    BuildImage {
        #[source]
        source: cvm_initramfs::BuildError,
    },
    #[error("Write {path:?}")]
    WriteOutput {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn run(args: &Args) -> Result<String, CommandError> {
    let manifest =
        Manifest::from_path(&args.manifest).map_err(|source| CommandError::LoadManifest {
            path: args.manifest.clone(),
            source,
        })?;
    let spec = ImageSpec {
        init: args.init.clone(),
        module_tree: args.module_tree.clone(),
        manifest,
        source_date_epoch: args.source_date_epoch,
        compression: args.compression,
    };
    let image = build_image(&spec).map_err(|source| CommandError::BuildImage { source })?;
    std::fs::write(&args.output, &image).map_err(|source| CommandError::WriteOutput {
        path: args.output.clone(),
        source,
    })?;
    Ok(hex::encode(Sha256::digest(&image)))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(digest) => {
            println!("{digest}  {}", args.output.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("cvm-initramfs: {}", cvm_error_chain::joined(&error));
            ExitCode::FAILURE
        }
    }
}
