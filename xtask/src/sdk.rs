//! The Python virtual environment with the pinned dstack SDK that guest-api's host test
//! (`init/api/tests/sdk.rs`) drives: `target/pyenv`, installed from
//! `init/api/tests/requirements.txt`. Idempotent: a stamp with the requirements' SHA-256 skips
//! pip when nothing changed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// The pinned requirements, relative to the workspace root.
const REQUIREMENTS: &str = "init/api/tests/requirements.txt";
/// The venv, relative to the workspace root.
const VENV: &str = "target/pyenv";
/// Stamp file inside the venv: SHA-256 of the requirements it was installed from.
const STAMP: &str = "cvm-requirements.sha256";

fn run(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: == {what}");
    let status = cmd.status().with_context(|| format!("start {what}"))?;
    if !status.success() {
        bail!("{what} failed with {status}");
    }
    Ok(())
}

/// Creates (or refreshes) the venv and returns the path of its Python interpreter, for
/// `CVM_SDK_PYTHON`. The base interpreter is `$CVM_PYTHON` or `python3`.
pub(crate) fn sdk_venv(root: &Path) -> Result<PathBuf> {
    let requirements = root.join(REQUIREMENTS);
    let text =
        fs::read(&requirements).with_context(|| format!("read {}", requirements.display()))?;
    let wanted = hex::encode(Sha256::digest(&text));
    let venv = root.join(VENV);
    let python = venv.join("bin").join("python");
    let stamp = venv.join(STAMP);
    let installed = fs::read_to_string(&stamp).ok();
    if python.exists() && installed.as_deref() == Some(wanted.as_str()) {
        return Ok(python);
    }
    if !python.exists() {
        let base = std::env::var_os("CVM_PYTHON").unwrap_or_else(|| "python3".into());
        run(
            "python venv for the dstack-sdk test",
            Command::new(&base).arg("-m").arg("venv").arg(&venv),
        )?;
    }
    // A stale stamp must not survive a failed install.
    let _ = fs::remove_file(&stamp);
    run(
        "pip install the pinned dstack-sdk",
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--require-virtualenv",
                "-r",
            ])
            .arg(&requirements),
    )?;
    fs::write(&stamp, &wanted).with_context(|| format!("write {}", stamp.display()))?;
    Ok(python)
}
