//! The reproducible release build: `dist/cvm-init`, `dist/initramfs.cpio.gz`, `dist/SHA256SUMS`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use cvm_initramfs::{Compression, ImageSpec, Manifest, build_image};
use sha2::{Digest, Sha256};

pub(crate) const TARGET: &str = "x86_64-unknown-linux-gnu";

/// What `dist` builds and where.
#[derive(Debug, Clone)]
pub(crate) struct DistOptions {
    /// Workspace root of the sources to build.
    pub(crate) root: PathBuf,
    /// Output directory (`<root>/dist` by default).
    pub(crate) out: PathBuf,
    /// Cargo target directory for this build.
    pub(crate) target_dir: PathBuf,
    pub(crate) source_date_epoch: u64,
    /// Cargo features of `cvm-init` (empty for the release image).
    pub(crate) features: Vec<String>,
    /// Include the kernel modules of the pinned Debian test kernel.
    pub(crate) modules: bool,
}

/// The files `dist` produced.
#[derive(Debug, Clone)]
pub(crate) struct DistOutput {
    pub(crate) init: PathBuf,
    pub(crate) initramfs: PathBuf,
    pub(crate) sums: String,
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub(crate) fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The static-link flags of `.cargo/config.toml` (environment rustflags replace the config's, so
/// every build that sets its own must repeat them).
pub(crate) const STATIC_RUSTFLAGS: [&str; 3] = [
    "-Ctarget-feature=+crt-static",
    "--cfg",
    "getrandom_backend=\"linux_getrandom\"",
];

/// Flags that make the init bit-identical across checkouts, users and times.
fn rustflags(root: &Path) -> Vec<String> {
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cargo")
        });
    let mut flags: Vec<String> = STATIC_RUSTFLAGS.iter().map(|f| (*f).to_owned()).collect();
    flags.extend([
        format!("--remap-path-prefix={}=/build", root.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
        "-Clink-arg=-Wl,--build-id=none".into(),
    ]);
    flags
}

/// Build the static init binary; returns its path.
pub(crate) fn build_init(opts: &DistOptions) -> Result<PathBuf> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&opts.root)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "cvm-init",
            "--target",
            TARGET,
        ])
        .env("CARGO_TARGET_DIR", &opts.target_dir)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            rustflags(&opts.root).join("\u{1f}"),
        )
        .env("SOURCE_DATE_EPOCH", opts.source_date_epoch.to_string())
        .env_remove("RUSTFLAGS");
    if !opts.features.is_empty() {
        cmd.args(["--features", &opts.features.join(",")]);
    }
    let status = cmd.status().context("run cargo build for cvm-init")?;
    if !status.success() {
        bail!("cargo build of cvm-init failed with {status}");
    }
    Ok(opts
        .target_dir
        .join(TARGET)
        .join("release")
        .join("cvm-init"))
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub(crate) fn dist(opts: &DistOptions) -> Result<DistOutput> {
    let built = build_init(opts)?;
    std::fs::create_dir_all(&opts.out).with_context(|| format!("create {}", opts.out.display()))?;
    let init = opts.out.join("cvm-init");
    std::fs::copy(&built, &init).with_context(|| format!("copy {}", built.display()))?;

    let manifest_path = opts.root.join("initramfs/manifest.toml");
    let mut manifest = Manifest::from_path(&manifest_path)
        .with_context(|| format!("read {}", manifest_path.display()))?;
    let module_tree = if opts.modules {
        let artifacts = qemu_tests::artifacts::Artifacts::fetch().context("fetch pinned kernel")?;
        Some(artifacts.module_tree)
    } else {
        manifest.modules.clear();
        None
    };
    let spec = ImageSpec {
        init: init.clone(),
        module_tree,
        manifest,
        source_date_epoch: opts.source_date_epoch,
        compression: Compression::Gzip,
    };
    let image = build_image(&spec).context("build initramfs")?;
    let initramfs = opts.out.join("initramfs.cpio.gz");
    std::fs::write(&initramfs, &image).with_context(|| format!("write {}", initramfs.display()))?;

    let mut sums = String::new();
    for path in [&init, &initramfs] {
        let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        sums.push_str(&format!("{}  {}\n", sha256_hex(&bytes), name));
    }
    std::fs::write(opts.out.join("SHA256SUMS"), &sums).context("write SHA256SUMS")?;
    Ok(DistOutput {
        init,
        initramfs,
        sums,
    })
}

/// `dist` builds release images only: an `insecure-*` feature (simulated TEE, test hooks) makes
/// an image no verifier may accept, so it never lands in `dist/` (the demo and the QEMU tests
/// build such images under `target/`).
fn refuse_insecure(features: &[String]) -> Result<()> {
    let insecure: Vec<&str> = features
        .iter()
        .map(String::as_str)
        .filter(|f| f.trim().starts_with("insecure-"))
        .collect();
    if !insecure.is_empty() {
        bail!(
            "dist builds the release image and refuses {}: test images are built by `cargo xtask \
             demo` and the QEMU tests, under target/",
            insecure.join(", ")
        );
    }
    Ok(())
}

pub(crate) fn dist_cmd(args: &[String]) -> Result<()> {
    crate::packages::ensure(&[crate::packages::BUILD])?;
    let root = workspace_root();
    let mut opts = DistOptions {
        out: root.join("dist"),
        target_dir: root.join("target").join("dist"),
        root,
        source_date_epoch: source_date_epoch(),
        features: Vec::new(),
        modules: true,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--out" => opts.out = it.next().context("--out needs a directory")?.into(),
            "--no-modules" => opts.modules = false,
            "--features" => {
                opts.features = it
                    .next()
                    .context("--features needs a list")?
                    .split(',')
                    .map(String::from)
                    .collect();
            }
            other => bail!(
                "unknown dist option `{other}` (known: --out DIR, --no-modules, --features F)"
            ),
        }
    }
    refuse_insecure(&opts.features)?;
    let out = dist(&opts)?;
    print!("{}", out.sums);
    eprintln!(
        "xtask: wrote {} and {}",
        out.init.display(),
        out.initramfs.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dist_refuses_insecure_features() {
        refuse_insecure(&[]).unwrap();
        refuse_insecure(&["some-feature".to_owned()]).unwrap();
        let error = refuse_insecure(&["a".to_owned(), "insecure-simulated-tee".to_owned()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("refuses insecure-simulated-tee"), "{error}");
    }
}
