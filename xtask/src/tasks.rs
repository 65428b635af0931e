//! `repro`, `demo`, `test` and `bench`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use qemu_tests::artifacts::Artifacts;

use crate::dist::{DistOptions, STATIC_RUSTFLAGS, TARGET, dist, source_date_epoch, workspace_root};
use crate::packages;

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(step: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: == {step}");
    let started = Instant::now();
    let status = cmd.status().with_context(|| format!("start {step}"))?;
    if !status.success() {
        bail!("{step} failed with {status}");
    }
    eprintln!(
        "xtask: == {step}: ok in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The files of the source tree as git sees them (tracked plus untracked, not ignored).
fn source_files(root: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("git")
        .current_dir(root)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .context("run git ls-files")?;
    if !out.status.success() {
        bail!("git ls-files failed");
    }
    Ok(out
        .stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
        .filter(|p| root.join(p).is_file())
        .collect())
}

fn copy_tree(root: &Path, dest: &Path) -> Result<()> {
    for rel in source_files(root)? {
        let to = dest.join(&rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        std::fs::copy(root.join(&rel), &to).with_context(|| format!("copy {}", rel.display()))?;
    }
    Ok(())
}

/// Build `dist` twice, in the workspace and in a copy of the tree at another path and a later
/// time; the outputs must be byte-identical.
pub(crate) fn repro(_args: &[String]) -> Result<()> {
    let root = workspace_root();
    eprintln!("xtask: reproducibility build 1 in {}", root.display());
    let first = dist(&dist_options(&root))?;
    repro_against(&root, &first.sums)
}

/// `dist` in `<root>` (output `dist/`, target directory `target/dist`).
fn dist_options(root: &Path) -> DistOptions {
    DistOptions {
        out: root.join("dist"),
        target_dir: root.join("target").join("dist"),
        root: root.to_path_buf(),
        source_date_epoch: source_date_epoch(),
        features: Vec::new(),
        modules: true,
    }
}

/// The second reproducibility build: a copy of the tree under a different, deeper path, built
/// from an empty target directory; its checksums must equal `first` (the workspace's build).
fn repro_against(root: &Path, first: &str) -> Result<()> {
    let base = root.join("target").join("repro");
    let _ = std::fs::remove_dir_all(&base);
    let dir = base.join("second-build").join("nested").join("src");
    copy_tree(root, &dir)?;
    eprintln!("xtask: reproducibility build 2 in {}", dir.display());
    let second = dist(&dist_options(&dir))?;
    println!(
        "build 1 ({}):\n{first}build 2 ({}):\n{}",
        root.display(),
        dir.display(),
        second.sums
    );
    if first != second.sums {
        bail!(
            "builds differ: compare with `diffoscope {}/dist {}/dist`",
            root.display(),
            dir.display()
        );
    }
    println!("reproducible: both builds are bit-identical");
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

/// Bytes free on the filesystem holding `path` (`df`; `None` if it cannot tell).
fn free_bytes(path: &Path) -> Option<u64> {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// Below this much free disk, `cargo xtask test` deletes what finished stages built before the
/// next stage builds (CI's disk does not hold every stage's target directory at once).
const PRUNE_BELOW_BYTES: u64 = 16 << 30;

/// Remove `dirs` (build outputs no later stage reads) when the disk is short of space.
fn prune_if_short(root: &Path, dirs: &[PathBuf]) {
    let free = free_bytes(root);
    if free.is_some_and(|free| free >= PRUNE_BELOW_BYTES) {
        return;
    }
    for dir in dirs {
        if dir.exists() {
            eprintln!(
                "xtask: {} GiB free: removing {} (a finished stage's build output)",
                free.map_or_else(|| "?".to_owned(), |f| (f >> 30).to_string()),
                dir.display()
            );
            if let Err(error) = std::fs::remove_dir_all(dir) {
                eprintln!("xtask: could not remove {}: {error}", dir.display());
            }
        }
    }
}

/// The end-to-end demo (the README's first command): builds the image with the INSECURE
/// simulated TEE (there is no TDX under QEMU; the release image in `dist/` has no simulator and
/// refuses to boot without TDX), starts the test KMS and a loopback registry, boots the sample
/// app under QEMU, fetches its page and a quote over a fresh challenge through a port forward,
/// and prints `cvm-measure verify`'s checklist (`qemu_tests::demo`).
pub(crate) fn demo(_args: &[String]) -> Result<()> {
    packages::ensure(packages::TEST_PACKAGES)?;
    let root = workspace_root();
    let opts = DistOptions {
        out: root.join("target").join("demo"),
        target_dir: root.join("target").join("dist"),
        root: root.clone(),
        source_date_epoch: source_date_epoch(),
        features: vec!["insecure-simulated-tee".into()],
        modules: true,
    };
    eprintln!("xtask: == build the image (cvm-init with the INSECURE simulated TEE)");
    let out = dist(&opts)?;
    print!("{}", out.sums);
    eprintln!("xtask: == build demo-app and cvm-measure");
    let demo_app = qemu_tests::image::workspace_binary("demo-app", "demo-app", &[])
        .context("build demo-app")?;
    let cvm_measure = qemu_tests::image::workspace_binary("cvm-measure", "cvm-measure", &[])
        .context("build cvm-measure")?;
    let artifacts = Artifacts::fetch().context("fetch pinned kernel and firmware")?;
    eprintln!(
        "xtask: == boot {} under QEMU (TCG; a few minutes)",
        out.initramfs.display()
    );
    let report = qemu_tests::demo::run(
        &artifacts,
        &qemu_tests::demo::DemoOptions {
            initramfs: out.initramfs.clone(),
            work_dir: root.join("target").join("demo").join("run"),
            demo_app,
            cvm_measure,
            cmdline: String::new(),
        },
    )
    .context("run the demo")?;
    print!("{}", report.summary());
    let problems = report.problems();
    if !problems.is_empty() {
        println!("--- console ---\n{}", report.console);
        bail!("the demo did not go as expected:\n{}", problems.join("\n"));
    }
    println!(
        "demo OK: the app answered with its identity and a quote over the challenge; every \
         check passed except the platform lines, which are SIMULATED under QEMU."
    );
    Ok(())
}

/// Rustflags for the QEMU test build: the static flags of .cargo/config.toml plus the cfg.
fn qemu_rustflags() -> String {
    let mut flags = STATIC_RUSTFLAGS.to_vec();
    flags.extend(["--cfg", "qemu_testenv"]);
    flags.join("\u{1f}")
}

/// Everything CI runs.
pub(crate) fn test(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--no-qemu");
    packages::ensure(packages::TEST_PACKAGES)?;
    let root = workspace_root();
    // Every stage builds once from scratch in CI: incremental caches only cost disk there.
    let cargo = || {
        let mut cmd = cargo();
        cmd.current_dir(&root).env("CARGO_INCREMENTAL", "0");
        cmd
    };
    run(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--check"]),
    )?;
    run(
        "cargo clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--locked",
            "--target",
            TARGET,
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    let sdk_python = crate::sdk::sdk_venv(&root)?;
    run(
        "cargo test (host)",
        cargo()
            .args(["test", "--workspace", "--locked", "--target", TARGET])
            .env("CVM_SDK_PYTHON", sdk_python),
    )?;
    // The Yocto layer: generated files current, initramfs entries match, oelint-adv clean.
    eprintln!("xtask: == yocto layer");
    crate::yocto::check_cmd(&[])?;
    // Every parser of untrusted bytes: a short cargo-fuzz run (or, without nightly, the seeds).
    run(
        "fuzz smoke",
        Command::new("bash")
            .arg(root.join(".ci/fuzz-smoke"))
            .current_dir(&root)
            .env("CARGO_INCREMENTAL", "0"),
    )?;
    // The QEMU tests reuse the host tests' build (same flags and target directory; the
    // `qemu` feature only recompiles qemu-tests itself).
    prune_if_short(&root, &[root.join("target").join("fuzz")]);
    let out = dist(&dist_options(&root))?;
    check_static(&out.init)?;
    if quick {
        return Ok(());
    }
    // Two TCG VMs at a time (one per CPU of the CI machine). cargo-nextest, when installed,
    // packs every test of every file into those two slots; `cargo test` runs the files one
    // after another.
    let nextest = cargo()
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let selection = [
        "--locked",
        "-p",
        "qemu-tests",
        "--target",
        TARGET,
        "--features",
        "qemu",
    ];
    let mut qemu = cargo();
    if nextest {
        qemu.args(["nextest", "run"]).args(selection).args([
            "--test-threads",
            "2",
            "--no-fail-fast",
        ]);
    } else {
        qemu.arg("test")
            .args(selection)
            .args(["--tests", "--", "--test-threads=2"]);
    }
    run("QEMU boot tests", &mut qemu)?;
    prune_if_short(
        &root,
        &[
            root.join("target").join(TARGET),
            root.join("target").join("qemu-build").join("cargo"),
        ],
    );
    eprintln!("xtask: == reproducibility (the build above and one in another directory)");
    repro_against(&root, &out.sums)
}

/// `file` must call the init statically linked (a static-pie counts).
fn check_static(init: &Path) -> Result<()> {
    let out = Command::new("file")
        .arg(init)
        .output()
        .context("run file")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let size = std::fs::metadata(init).map(|m| m.len()).unwrap_or(0);
    println!("{}", text.trim());
    println!("init size: {size} bytes");
    if !(text.contains("statically linked") || text.contains("static-pie linked")) {
        bail!("{} is not statically linked: {text}", init.display());
    }
    Ok(())
}

/// Boot benchmark against the busybox baseline.
pub(crate) fn bench(args: &[String]) -> Result<()> {
    packages::ensure(packages::TEST_PACKAGES)?;
    let root = workspace_root();
    // The figures are for the shipped build: fat-LTO `release` (with the test hooks the harness
    // needs), not the faster-to-build `qemu-test` profile the boot tests use.
    let init = crate::dist::build_init(&DistOptions {
        out: root.join("target").join("bench-init"),
        target_dir: root.join("target").join("bench-init"),
        root: root.clone(),
        source_date_epoch: source_date_epoch(),
        features: vec!["insecure-test-hooks".into()],
        modules: true,
    })?;
    let mut cmd = cargo();
    cmd.current_dir(&root)
        .env("CVM_INIT_BIN", &init)
        .args([
            "bench",
            "--locked",
            "-p",
            "qemu-tests",
            "--target",
            TARGET,
            "--bench",
            "boot",
            "--",
        ])
        .args(args)
        .env("CARGO_ENCODED_RUSTFLAGS", qemu_rustflags())
        .env("CARGO_TARGET_DIR", root.join("target").join("qemu"))
        .env_remove("RUSTFLAGS");
    run("boot benchmark", &mut cmd)
}
