//! Debian packages the tasks need, installed on demand (a fresh Debian 12 machine has none).

use std::process::Command;

use anyhow::{Context, Result, bail};

/// Packages for building and for the QEMU tests.
pub(crate) const TEST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "dpkg-dev",
    "file",
    "ca-certificates",
    "e2fsprogs",
    "swtpm",
    "swtpm-tools",
    "python3",
    "python3-venv",
    "git",
    "docker-registry",
];

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// `apt-get install -y` whatever of `pkgs` is missing (with sudo when not root).
pub(crate) fn ensure(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let apt = |args: &[&str]| -> Result<()> {
        let mut cmd = if root {
            Command::new("apt-get")
        } else {
            Command::new("sudo")
        };
        if !root {
            cmd.arg("apt-get");
        }
        let status = cmd
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("run apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed with {status}", args.join(" "));
        }
        Ok(())
    };
    apt(&["update"])?;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)
}
