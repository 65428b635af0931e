//! The reproducible release build: `dist/cvm-init`, `dist/initramfs.cpio.gz`, the dstack image
//! bundle `dist/dstack-image/` (`ovmf.fd`, `bzImage`, `initramfs.cpio.gz`, `metadata.json`,
//! `sha256sum.txt`, `digest.txt`; `measure::image_bundle`) and `dist/SHA256SUMS` over all of them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use cvm_initramfs::{Compression, ImageSpec, Manifest, build_image};
use measure::image_bundle::{ImageBundle, Metadata, OVMF_VARIANT_PRE_202505};
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
    /// `dist/dstack-image/`.
    pub(crate) image_bundle: PathBuf,
    /// The bundle's `os_image_hash` (hex).
    pub(crate) os_image_hash: String,
    pub(crate) sums: String,
}

/// Directory of the dstack image bundle inside `dist/`.
pub(crate) const IMAGE_BUNDLE_DIR: &str = "dstack-image";

/// The kernel command line the bundle's `metadata.json` carries: the one every QEMU boot of the
/// project gets (serial console, reboot on panic, no IO-APIC timer check). The init takes its
/// own settings from `cvm.*` keys, none of which the release image needs.
pub(crate) const IMAGE_CMDLINE: &str = qemu_tests::vm::BASE_CMDLINE;

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

/// Link and codegen flags that only make the release init smaller (issue 21), all
/// deterministic: relative relocations packed as DT_RELR (glibc 2.36 applies them in a
/// static-pie; ~21,000 `R_X86_64_RELATIVE` entries of 24 bytes each otherwise) and identical
/// code folded by rust-lld where no address is taken (`--icf=safe`).
pub(crate) const SIZE_RUSTFLAGS: [&str; 2] = [
    "-Clink-arg=-Wl,-z,pack-relative-relocs",
    "-Clink-arg=-Wl,--icf=safe",
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
    flags.extend(SIZE_RUSTFLAGS.iter().map(|f| (*f).to_owned()));
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
    // The pinned kernel and OVMF (Debian packages checked by sha256, qemu-tests/artifacts.toml):
    // the bundle ships them, and the modules come from the same kernel.
    let artifacts =
        qemu_tests::artifacts::Artifacts::fetch().context("fetch the pinned kernel and OVMF")?;
    let module_tree = if opts.modules {
        Some(artifacts.module_tree.clone())
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

    let (image_bundle, bundle) = write_image_bundle(&opts.out, &artifacts, image)?;

    let mut sums = String::new();
    for path in [&init, &initramfs] {
        let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        sums.push_str(&format!("{}  {}\n", sha256_hex(&bytes), name));
    }
    for (name, bytes) in &bundle.files {
        sums.push_str(&format!(
            "{}  {IMAGE_BUNDLE_DIR}/{name}\n",
            sha256_hex(bytes)
        ));
    }
    std::fs::write(opts.out.join("SHA256SUMS"), &sums).context("write SHA256SUMS")?;
    Ok(DistOutput {
        init,
        initramfs,
        image_bundle,
        os_image_hash: hex::encode(bundle.os_image_hash),
        sums,
    })
}

/// Writes `<out>/dstack-image/`: the pinned OVMF and kernel, `initramfs` (the bytes of
/// `dist/initramfs.cpio.gz`), `metadata.json`, `sha256sum.txt` and `digest.txt`. The directory
/// is emptied first so that no stale file survives.
fn write_image_bundle(
    out: &Path,
    artifacts: &qemu_tests::artifacts::Artifacts,
    initramfs: Vec<u8>,
) -> Result<(PathBuf, ImageBundle)> {
    let read =
        |path: &Path| std::fs::read(path).with_context(|| format!("read {}", path.display()));
    let metadata = Metadata::new(
        IMAGE_CMDLINE,
        env!("CARGO_PKG_VERSION"),
        OVMF_VARIANT_PRE_202505,
    );
    let bundle = ImageBundle::build(
        read(&artifacts.ovmf_code)?,
        read(&artifacts.kernel)?,
        initramfs,
        &metadata,
    )
    .context("assemble the dstack image bundle")?;
    let dir = out.join(IMAGE_BUNDLE_DIR);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    for (name, bytes) in &bundle.files {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))?;
    }
    Ok((dir, bundle))
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
        "xtask: wrote {}, {} and the dstack image bundle {} (os_image_hash {})",
        out.init.display(),
        out.initramfs.display(),
        out.image_bundle.display(),
        out.os_image_hash
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_flags_are_static_reproducible_and_small() {
        let flags = rustflags(Path::new("/src"));
        for f in STATIC_RUSTFLAGS.iter().chain(SIZE_RUSTFLAGS.iter()) {
            assert!(flags.iter().any(|g| g == f), "{f} missing from {flags:?}");
        }
        assert!(
            flags.contains(&"--remap-path-prefix=/src=/build".to_owned()),
            "{flags:?}"
        );
        assert!(
            flags.contains(&"-Clink-arg=-Wl,--build-id=none".to_owned()),
            "{flags:?}"
        );
    }

    #[test]
    fn dist_refuses_insecure_features() {
        refuse_insecure(&[]).unwrap();
        refuse_insecure(&["some-feature".to_owned()]).unwrap();
        let error = refuse_insecure(&["a".to_owned(), "insecure-simulated-tee".to_owned()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("refuses insecure-simulated-tee"), "{error}");
    }

    #[test]
    fn image_bundle_holds_the_pinned_files_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let artifacts = qemu_tests::artifacts::Artifacts {
            kernel: file("vmlinuz", b"kernel"),
            kernel_config: file("config", b""),
            module_tree: dir.path().to_path_buf(),
            kernel_release: "test".into(),
            ovmf_code: file("OVMF_CODE_4M.fd", b"firmware"),
            ovmf_vars: file("OVMF_VARS_4M.fd", b""),
            busybox: file("busybox", b""),
        };
        let out = dir.path().join("dist");
        std::fs::create_dir_all(out.join(IMAGE_BUNDLE_DIR)).unwrap();
        std::fs::write(out.join(IMAGE_BUNDLE_DIR).join("stale"), b"x").unwrap();
        let (bundle_dir, bundle) =
            write_image_bundle(&out, &artifacts, b"initrd".to_vec()).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&bundle_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "bzImage",
                "digest.txt",
                "initramfs.cpio.gz",
                "metadata.json",
                "ovmf.fd",
                "sha256sum.txt"
            ]
        );
        assert_eq!(
            std::fs::read(bundle_dir.join("bzImage")).unwrap(),
            b"kernel"
        );
        let files = names
            .iter()
            .map(|n| (n.clone(), std::fs::read(bundle_dir.join(n)).unwrap()))
            .collect();
        let verified = measure::image_bundle::verify_bundle(
            &std::fs::read(bundle_dir.join("sha256sum.txt")).unwrap(),
            Some(&std::fs::read(bundle_dir.join("digest.txt")).unwrap()),
            &files,
        )
        .unwrap();
        assert_eq!(verified.os_image_hash, bundle.os_image_hash);
        assert_eq!(verified.metadata.cmdline, IMAGE_CMDLINE);
    }
}
