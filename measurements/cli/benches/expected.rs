//! Benchmark (issue 4): `cvm-measure expected` on Debian's OVMF + the pinned Debian kernel + our
//! initramfs, against plain `sha384sum` over the same three files. Runs alternate (expected,
//! sha384sum, expected, ...) so drifting load on a shared machine hits both alike; reports the
//! median, minimum and maximum wall time of each, the ratio of the medians and the median of the
//! per-pair ratios.
//!
//! ```text
//! cargo bench -p cvm-measure --target x86_64-unknown-linux-gnu -- [--runs N]
//! ```
//!
//! Inputs: `CVM_BENCH_FIRMWARE`, `CVM_BENCH_KERNEL`, `CVM_BENCH_INITRD`, or by default the QEMU
//! tests' cache (`target/qemu-artifacts/`: `OVMF_CODE_4M.fd`, `vmlinuz-*`) and the newest
//! cvm-init image in `target/qemu-build/images/` (or `dist/initramfs.cpio.gz`). Run
//! `cargo test -p qemu-tests` (or `cargo xtask dist`) once to create them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

const MEMORY: &str = "2G";
const CMDLINE: &str = "console=ttyS0 panic=-1 cvm.on_ready=poweroff";

fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// Files under `dir` (recursively) whose name satisfies `pick`.
fn find(dir: &Path, pick: &dyn Fn(&str) -> bool, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            find(&path, pick, found);
        } else if path.file_name().and_then(|n| n.to_str()).is_some_and(pick) {
            found.push(path);
        }
    }
}

fn newest(mut paths: Vec<PathBuf>) -> Option<PathBuf> {
    paths.sort_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
    paths.pop()
}

fn input(env: &str, default: impl FnOnce() -> Option<PathBuf>, what: &str) -> Result<PathBuf> {
    let path = match std::env::var_os(env) {
        Some(path) => PathBuf::from(path),
        None => default().with_context(|| {
            format!("no {what} found; set {env} or run `cargo test -p qemu-tests` once")
        })?,
    };
    ensure!(path.is_file(), "{what} {} is not a file", path.display());
    Ok(path)
}

fn timed(command: &mut Command) -> Result<Duration> {
    let start = Instant::now();
    let output = command
        .output()
        .with_context(|| format!("run {command:?}"))?;
    let elapsed = start.elapsed();
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(elapsed)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        f64::midpoint(values[mid - 1], values[mid])
    } else {
        values[mid]
    }
}

fn summary(name: &str, values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    let m = median(&mut sorted);
    println!(
        "{name:<10} median {:>8.1} ms  min {:>8.1} ms  max {:>8.1} ms",
        m * 1e3,
        sorted.first().copied().unwrap_or_default() * 1e3,
        sorted.last().copied().unwrap_or_default() * 1e3,
    );
    m
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse::<usize>())
        .transpose()
        .context("parse --runs")?
        .unwrap_or(10)
        .max(1);
    let root = workspace_root();
    let cache = root.join("target/qemu-artifacts");
    let firmware = input(
        "CVM_BENCH_FIRMWARE",
        || {
            let mut found = Vec::new();
            find(&cache, &|n| n == "OVMF_CODE_4M.fd", &mut found);
            newest(found)
        },
        "firmware",
    )?;
    let kernel = input(
        "CVM_BENCH_KERNEL",
        || {
            let mut found = Vec::new();
            find(&cache, &|n| n.starts_with("vmlinuz-"), &mut found);
            newest(found)
        },
        "kernel",
    )?;
    let initrd = input(
        "CVM_BENCH_INITRD",
        || {
            let mut found = Vec::new();
            find(
                &root.join("target/qemu-build/images"),
                &|n| n.starts_with("cvm-") && n.ends_with(".img"),
                &mut found,
            );
            newest(found).or_else(|| {
                let dist = root.join("dist/initramfs.cpio.gz");
                dist.is_file().then_some(dist)
            })
        },
        "initramfs",
    )?;

    let binary = env!("CARGO_BIN_EXE_cvm-measure");
    let mut expected = Command::new(binary);
    expected
        .arg("expected")
        .arg("--firmware")
        .arg(&firmware)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .args(["--cmdline", CMDLINE, "--memory", MEMORY, "--json"]);
    let mut sha384sum = Command::new("sha384sum");
    sha384sum.arg(&firmware).arg(&kernel).arg(&initrd);
    println!("inputs:");
    for path in [&firmware, &kernel, &initrd] {
        let len = path.metadata().map(|m| m.len()).unwrap_or_default();
        println!("  {:>10} bytes  {}", len, path.display());
    }
    println!("A: {expected:?}");
    println!("B: {sha384sum:?}");

    // Warm the page cache and check both commands work.
    timed(&mut expected)?;
    timed(&mut sha384sum)?;
    let mut a = Vec::with_capacity(runs);
    let mut b = Vec::with_capacity(runs);
    let mut pairs = Vec::with_capacity(runs);
    for _ in 0..runs {
        let ta = timed(&mut expected)?.as_secs_f64();
        let tb = timed(&mut sha384sum)?.as_secs_f64();
        a.push(ta);
        b.push(tb);
        pairs.push(ta / tb);
    }
    println!("{runs} alternated runs each:");
    let ma = summary("expected", &a);
    let mb = summary("sha384sum", &b);
    println!(
        "ratio expected/sha384sum: {:.2} (medians), {:.2} (median of per-pair ratios)",
        ma / mb,
        median(&mut pairs)
    );
    Ok(())
}
