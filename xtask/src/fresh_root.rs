//! Build 2 of the reproducibility check, in a fresh Debian 12 root: `debootstrap --variant=minbase
//! bookworm`, the Debian sources of a stock install (bookworm, -updates, -security), then only
//! `.ci/install-packages build` inside it, the pinned Rust toolchain bind-mounted read-only at
//! another path, another `CARGO_HOME` (empty: crates come from crates.io), a copy of the tree at
//! another path, and a plain `cargo xtask dist` — what a new user runs. Its `SHA256SUMS` must
//! equal build 1's. A package missing from the `build` group of `.ci/packages` fails here, since
//! nothing else is installed in that root.
//!
//! Needs root (debootstrap, mounts, chroot), as CI has; elsewhere run `cargo xtask test` as root
//! or pass `--no-fresh-root` (the second build then runs in a copy of the tree on this system).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::packages;

/// Where the toolchain appears inside the root (not the host's rustup path).
const TOOLCHAIN_MOUNT: &str = "opt/rust-toolchain";
/// The copy of the tree inside the root.
const SOURCE_DIR: &str = "srv/cvm-init/build-2/src";
/// `CARGO_HOME` inside the root: empty at start.
const CARGO_HOME: &str = "var/cache/cargo-home-2";
/// Debian mirror for debootstrap and the root's sources.
const MIRROR: &str = "http://deb.debian.org/debian";
const SUITE: &str = "bookworm";

/// Packages whose bytes end up in the init (static libraries, the linker): their versions in
/// the root and on the host are printed side by side when the builds differ.
const LINKED: &[&str] = &[
    "libc6-dev",
    "libgcc-12-dev",
    "gcc-12",
    "binutils",
    "libseccomp-dev",
    "libdevmapper-dev",
    "libclang-dev",
];

/// What the fresh-root build needs to know.
#[derive(Debug)]
pub(crate) struct FreshRootBuild {
    /// The checkout whose tracked files are built.
    pub(crate) root: PathBuf,
    /// Directory for the Debian root (removed first, removed after success).
    pub(crate) dir: PathBuf,
    pub(crate) source_date_epoch: u64,
    /// Packages to leave out of the `build` group in the root's copy of `.ci/packages`: shows
    /// that the check catches a missing install step.
    pub(crate) drop_packages: Vec<String>,
}

/// The result: build 2's `SHA256SUMS` and where it lies.
#[derive(Debug)]
pub(crate) struct FreshRootOutput {
    pub(crate) sums: String,
    pub(crate) dist: PathBuf,
    /// `package version` lines of [`LINKED`] inside the root.
    pub(crate) linked_versions: String,
}

/// Whether this process runs as root (the fresh-root build needs it).
pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// One step in the root, timed like every xtask step.
fn run(step: &str, cmd: &mut Command) -> Result<()> {
    crate::tasks::run(&format!("fresh root: {step}"), cmd)
}

/// Mounts made inside the root, unmounted (lazily, innermost first) when dropped.
#[derive(Debug, Default)]
struct Mounts(Vec<PathBuf>);

impl Mounts {
    fn bind(&mut self, from: &Path, to: &Path, read_only: bool) -> Result<()> {
        std::fs::create_dir_all(to).with_context(|| format!("create {}", to.display()))?;
        run(
            &format!("bind {} at {}", from.display(), to.display()),
            Command::new("mount").arg("--bind").arg(from).arg(to),
        )?;
        self.0.push(to.to_path_buf());
        if read_only {
            run(
                &format!("make {} read-only", to.display()),
                Command::new("mount")
                    .args(["-o", "remount,bind,ro"])
                    .arg(to),
            )?;
        }
        Ok(())
    }

    fn proc(&mut self, to: &Path) -> Result<()> {
        std::fs::create_dir_all(to).with_context(|| format!("create {}", to.display()))?;
        run(
            "mount /proc",
            Command::new("mount").args(["-t", "proc", "proc"]).arg(to),
        )?;
        self.0.push(to.to_path_buf());
        Ok(())
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for path in self.0.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(path).status();
        }
    }
}

/// The rustc sysroot the workspace's toolchain file selects.
fn toolchain_sysroot(root: &Path) -> Result<PathBuf> {
    let out = Command::new("rustc")
        .current_dir(root)
        .args(["--print", "sysroot"])
        .output()
        .context("run rustc --print sysroot")?;
    if !out.status.success() {
        bail!("rustc --print sysroot failed");
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    // A rustup toolchain directory may be a link to another (1.95.0 -> stable).
    std::fs::canonicalize(&path).with_context(|| format!("resolve {}", path.display()))
}

/// The text of `.ci/packages` with `drop` removed (whole lines).
fn without_packages(list: &str, drop: &[String]) -> String {
    list.lines()
        .filter(|line| {
            line.split_whitespace()
                .next()
                .is_none_or(|name| !drop.iter().any(|d| d == name))
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

/// `package version` of `packages`, as dpkg in `chroot` (or on the host when `None`) sees them.
pub(crate) fn versions(chroot: Option<&Path>, packages: &[&str]) -> String {
    let mut cmd = match chroot {
        Some(dir) => {
            let mut cmd = Command::new("chroot");
            cmd.arg(dir).arg("dpkg-query");
            cmd
        }
        None => Command::new("dpkg-query"),
    };
    cmd.args(["-W", "-f=${Package} ${Version}\n"])
        .args(packages);
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The host's versions of the packages linked into the init.
pub(crate) fn host_linked_versions() -> String {
    versions(None, LINKED)
}

/// A root made and provisioned by [`prepare`]: packages installed, crates fetched, mounts held.
#[derive(Debug)]
pub(crate) struct Prepared {
    dir: PathBuf,
    mounts: Mounts,
    env: Vec<String>,
    started: Instant,
}

/// Everything before the compiler runs, in a thread beside the QEMU tests if the caller likes
/// (network and disk, little CPU): debootstrap, sources, the tree, `.ci/install-packages build`,
/// `cargo fetch`. With `log`, the commands' output goes there instead of the terminal.
pub(crate) fn prepare(opts: &FreshRootBuild, log: Option<&Path>) -> Result<Prepared> {
    let dir = &opts.dir;
    if !is_root() {
        bail!(
            "the fresh-root build needs root (debootstrap, mount, chroot): run as root, or pass \
             --no-fresh-root to build the second copy on this system"
        );
    }
    let output = |cmd: &mut Command| -> Result<()> {
        if let Some(log) = log {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .with_context(|| format!("open {}", log.display()))?;
            let err = file.try_clone().context("clone the log handle")?;
            cmd.stdout(file).stderr(err);
        }
        Ok(())
    };
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    if dir.exists() {
        // A stale root from an interrupted run: unmount what may still be mounted, then remove.
        for sub in [TOOLCHAIN_MOUNT, "proc", "dev"] {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(dir.join(sub))
                .stderr(std::process::Stdio::null())
                .status();
        }
        run(
            &format!("remove the old root {}", dir.display()),
            Command::new("rm")
                .args(["-rf", "--one-file-system"])
                .arg(dir),
        )?;
    }
    let started = Instant::now();
    let mut debootstrap = Command::new("debootstrap");
    debootstrap
        .args(["--variant=minbase", SUITE])
        .arg(dir)
        .arg(MIRROR);
    output(&mut debootstrap)?;
    run(
        &format!("debootstrap --variant=minbase {SUITE} {}", dir.display()),
        &mut debootstrap,
    )?;
    // A stock Debian 12's sources: the release, its updates and security.
    let sources = format!(
        "deb {MIRROR} {SUITE} main\ndeb {MIRROR} {SUITE}-updates main\n\
         deb http://deb.debian.org/debian-security {SUITE}-security main\n"
    );
    write_root_file(dir, "etc/apt/sources.list", &sources)?;
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    write_root_file(dir, "etc/resolv.conf", &resolv)?;
    // The site's own CA certificates (a TLS-intercepting egress proxy, say) are network
    // configuration like resolv.conf, not a package: the root trusts what the host trusts once
    // its ca-certificates package is installed (its postinst reads this directory).
    copy_local_cas(
        Path::new(LOCAL_CA_DIR),
        &dir.join(LOCAL_CA_DIR.trim_start_matches('/')),
    )?;

    // The tree as a new user would have it, at another path.
    let src = dir.join(SOURCE_DIR);
    crate::tasks::copy_tree(&opts.root, &src)?;
    if !opts.drop_packages.is_empty() {
        let list_path = src.join(".ci/packages");
        let list = std::fs::read_to_string(&list_path)
            .with_context(|| format!("read {}", list_path.display()))?;
        eprintln!(
            "xtask: fresh root: leaving {} out of the root's package list",
            opts.drop_packages.join(" ")
        );
        std::fs::write(&list_path, without_packages(&list, &opts.drop_packages))
            .with_context(|| format!("write {}", list_path.display()))?;
    }

    let mut mounts = Mounts::default();
    mounts.proc(&dir.join("proc"))?;
    mounts.bind(Path::new("/dev"), &dir.join("dev"), false)?;
    let sysroot = toolchain_sysroot(&opts.root)?;
    mounts.bind(&sysroot, &dir.join(TOOLCHAIN_MOUNT), true)?;

    let prepared = Prepared {
        dir: dir.clone(),
        mounts,
        env: vec![
            format!("PATH=/{TOOLCHAIN_MOUNT}/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME=/root".to_owned(),
            format!("CARGO_HOME=/{CARGO_HOME}"),
            "CARGO_INCREMENTAL=0".to_owned(),
            format!("SOURCE_DATE_EPOCH={}", opts.source_date_epoch),
            "LANG=C.UTF-8".to_owned(),
        ],
        started,
    };
    // Only the build group: what a new machine with nothing but Rust would be given.
    let script = format!(
        "set -eu\ncd /{SOURCE_DIR}\nbash {installer} {group}\ncargo fetch --locked\n",
        installer = packages::INSTALLER,
        group = packages::BUILD,
    );
    let mut provision = prepared.chroot(&script);
    output(&mut provision)?;
    run(
        "`.ci/install-packages build`, `cargo fetch`",
        &mut provision,
    )?;
    Ok(prepared)
}

impl Prepared {
    fn chroot(&self, script: &str) -> Command {
        let mut cmd = Command::new("chroot");
        cmd.arg(&self.dir)
            .args(["/usr/bin/env", "-i"])
            .args(&self.env)
            .args(["bash", "-c", script]);
        cmd
    }
}

/// `cargo xtask dist` in a prepared root; returns its output and unmounts.
pub(crate) fn build(prepared: Prepared) -> Result<FreshRootOutput> {
    run(
        "`cargo xtask dist`",
        &mut prepared.chroot(&format!("set -eu\ncd /{SOURCE_DIR}\ncargo xtask dist\n")),
    )?;
    let linked_versions = versions(Some(&prepared.dir), LINKED);
    let Prepared {
        dir,
        mounts,
        started,
        ..
    } = prepared;
    drop(mounts);
    let dist = dir.join(SOURCE_DIR).join("dist");
    let sums_path = dist.join("SHA256SUMS");
    let sums = std::fs::read_to_string(&sums_path)
        .with_context(|| format!("read {}", sums_path.display()))?;
    eprintln!(
        "xtask: fresh root: done in {:.0} s (root, packages, crates and dist)",
        started.elapsed().as_secs_f64()
    );
    Ok(FreshRootOutput {
        sums,
        dist,
        linked_versions,
    })
}

/// Removes the root (after a successful comparison).
pub(crate) fn remove(dir: &Path) {
    let _ = Command::new("rm")
        .args(["-rf", "--one-file-system"])
        .arg(dir)
        .status();
}

/// Debian's directory of locally added CA certificates.
const LOCAL_CA_DIR: &str = "/usr/local/share/ca-certificates";

/// Copies the `*.crt` files under `from` (recursively) to `to`; a missing `from` copies nothing.
fn copy_local_cas(from: &Path, to: &Path) -> Result<usize> {
    let Ok(entries) = std::fs::read_dir(from) else {
        return Ok(0);
    };
    let mut copied = 0;
    for entry in entries {
        let entry = entry.with_context(|| format!("list {}", from.display()))?;
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copied += copy_local_cas(&path, &target)?;
        } else if path.extension().is_some_and(|e| e == "crt") {
            std::fs::create_dir_all(to).with_context(|| format!("create {}", to.display()))?;
            std::fs::copy(&path, &target).with_context(|| format!("copy {}", path.display()))?;
            copied += 1;
        }
    }
    Ok(copied)
}

fn write_root_file(dir: &Path, rel: &str, text: &str) -> Result<()> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_cas_are_copied_recursively_and_only_crt_files() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        std::fs::create_dir(from.path().join("site")).unwrap();
        std::fs::write(from.path().join("a.crt"), "A").unwrap();
        std::fs::write(from.path().join("site/b.crt"), "B").unwrap();
        std::fs::write(from.path().join("notes.txt"), "x").unwrap();
        let dest = to.path().join("usr/local/share/ca-certificates");
        assert_eq!(copy_local_cas(from.path(), &dest).unwrap(), 2);
        assert_eq!(
            std::fs::read_to_string(dest.join("site/b.crt")).unwrap(),
            "B"
        );
        assert!(!dest.join("notes.txt").exists());
        assert_eq!(
            copy_local_cas(&from.path().join("absent"), &dest).unwrap(),
            0
        );
    }

    #[test]
    fn dropping_a_package_removes_exactly_its_line() {
        let list = "# c\nlibdevmapper-dev build,test # x\nlibclang-dev build\n";
        let out = without_packages(list, &["libdevmapper-dev".to_owned()]);
        assert_eq!(out, "# c\nlibclang-dev build\n");
        assert_eq!(without_packages(list, &[]), list);
    }
}
