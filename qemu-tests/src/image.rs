//! The images under test: the cvm-init binary, its initramfs and the busybox baseline.
//!
//! [`init_binary`] runs `cargo build --profile qemu-test -p cvm-init --features insecure-test-hooks
//! --target x86_64-unknown-linux-gnu` in its own target directory (`target/qemu-build/cargo`), so
//! the nested cargo never waits on the lock held by the `cargo test` that runs us; `CVM_INIT_BIN`
//! overrides it with a prebuilt binary. [`test_image`] packs it with
//! [`cvm_initramfs::build_image`] from `initramfs/manifest.toml` and the pinned module tree.
//! Images are content-addressed under `target/qemu-build/images`; a file lock makes parallel
//! test processes build once, and a `OnceLock` makes each process build at most once.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use cvm_initramfs::compress::compress;
use cvm_initramfs::cpio::write_newc;
use cvm_initramfs::manifest::{FileEntry, FileSource};
use cvm_initramfs::{
    Compression, ImageSpec, MODULES_LOAD_PATH, Manifest, build_entries, build_overlay,
};
use sha2::{Digest, Sha256};

use crate::artifacts::{Artifacts, sha256_file};
use crate::paths;

/// Environment variable: a prebuilt init binary to use instead of building one.
pub const INIT_BIN_ENV: &str = "CVM_INIT_BIN";
/// Environment variable: initramfs compression (`gzip` default, as `cargo xtask dist`; `zstd`,
/// `none`).
pub const COMPRESSION_ENV: &str = "QEMU_TESTS_COMPRESSION";
/// The console line both the init and the baseline print once booted.
pub const READY_MARKER: &str = "cvm-init: ready";
/// Cargo feature of `cvm-init` that enables `cvm.test_fault` and `cvm.test_orphans`.
pub const TEST_FEATURE: &str = "insecure-test-hooks,insecure-simulated-tee";
/// The only installable target.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Errors building the images under test.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImageError {
    #[error("failed to run cargo")]
    SpawnCargo { message: String },
    #[error(
        "`cargo build` of a workspace binary (cvm-init, demo-app, cvm-measure) failed:\n{stderr}"
    )]
    BuildInit { stderr: String },
    #[error("built binary {path} does not exist")]
    MissingInit { path: PathBuf },
    #[error("failed to read the initramfs manifest {path}: {message}")]
    ReadManifest { path: PathBuf, message: String },
    #[error("failed to build the initramfs: {message}")]
    BuildImage { message: String },
    #[error("failed to parse {COMPRESSION_ENV}={value}")]
    ParseCompression { value: String },
    #[error("failed to write {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("failed to lock {path}: {message}")]
    Lock { path: PathBuf, message: String },
}

impl ImageError {
    fn write(path: &Path, error: &io::Error) -> Self {
        Self::Write {
            path: path.to_owned(),
            message: error.to_string(),
        }
    }
}

/// The cvm-init image under test.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// The init binary (`/init` in the image).
    pub init: PathBuf,
    /// The compressed initramfs.
    pub initramfs: PathBuf,
    /// The compression used.
    pub compression: Compression,
    /// The image's `/etc/cvm/modules.load` (one absolute module path per line, in load order).
    pub modules_load: String,
}

/// Holds an exclusive lock on `<build dir>/.lock` while alive.
struct BuildLock(File);

impl BuildLock {
    fn acquire() -> Result<Self, ImageError> {
        let dir = paths::build_dir();
        fs::create_dir_all(&dir).map_err(|error| ImageError::write(&dir, &error))?;
        let path = dir.join(".lock");
        let lock_error = |error: io::Error| ImageError::Lock {
            path: path.clone(),
            message: error.to_string(),
        };
        let file = File::create(&path).map_err(lock_error)?;
        file.lock().map_err(lock_error)?;
        Ok(Self(file))
    }
}

impl Drop for BuildLock {
    fn drop(&mut self) {
        // Closing the file releases the lock anyway.
        let _ = self.0.unlock();
    }
}

/// The compression from `QEMU_TESTS_COMPRESSION` (default gzip, like the dist image).
pub fn compression() -> Result<Compression, ImageError> {
    match std::env::var(COMPRESSION_ENV) {
        Ok(value) => value
            .parse()
            .map_err(|_| ImageError::ParseCompression { value }),
        Err(_) => Ok(Compression::Gzip),
    }
}

/// Path of the init binary: `CVM_INIT_BIN`, or a fresh build with the test hooks (profile
/// `qemu-test`: release code without fat LTO).
pub fn init_binary() -> Result<PathBuf, ImageError> {
    if let Some(path) = std::env::var_os(INIT_BIN_ENV).map(PathBuf::from) {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(ImageError::MissingInit { path })
        };
    }
    workspace_binary("cvm-init", "cvm-init", &[TEST_FEATURE])
}

/// Builds `bin` of workspace package `package` (profile `qemu-test`, static, `--locked`) in the
/// harness's own target directory under the build lock; returns the binary's path. The demo
/// uses it for `demo-app` and `cvm-measure` too.
pub fn workspace_binary(
    package: &str,
    bin: &str,
    features: &[&str],
) -> Result<PathBuf, ImageError> {
    let _lock = BuildLock::acquire()?;
    let target_dir = paths::build_dir().join("cargo");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(paths::workspace_root())
        .args([
            "build",
            "--profile",
            "qemu-test",
            "--locked",
            "-p",
            package,
            "--bin",
            bin,
        ])
        .args(["--target", TARGET])
        .env("CARGO_TARGET_DIR", &target_dir)
        // Our own test flags (e.g. --cfg qemu_testenv) would replace .cargo/config.toml's
        // static-link rustflags: let the config apply.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS");
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    let output = command.output().map_err(|error| ImageError::SpawnCargo {
        message: error.to_string(),
    })?;
    if !output.status.success() {
        return Err(ImageError::BuildInit {
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    let path = target_dir.join(TARGET).join("qemu-test").join(bin);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ImageError::MissingInit { path })
    }
}

/// The cvm-init initramfs (built once per process; see the module documentation).
pub fn test_image(artifacts: &Artifacts) -> Result<TestImage, ImageError> {
    static IMAGE: OnceLock<Result<TestImage, ImageError>> = OnceLock::new();
    IMAGE.get_or_init(|| build_test_image(artifacts)).clone()
}

/// Modules the 9p image adds to `initramfs/manifest.toml`'s list (their dependencies `9pnet`,
/// `netfs`, `fscache`, `jbd2`, `mbcache` are resolved by `cvm_initramfs`). ext4 is built into the
/// cloud kernel but a module in the generic one; the kernel contract requires it. So is the
/// crc32c implementation `libcrc32c` (a dependency of nf_tables) asks the crypto API for at
/// load: it must be loaded first (the extras come before the manifest's modules).
pub const NINE_P_MODULES: &[&str] = &["crc32c_generic", "9pnet_virtio", "9p", "ext4"];

/// The cvm-init image for the generic-flavour kernel (`Artifacts::fetch_with_kernel
/// ("kernel_9p")`) with [`NINE_P_MODULES`] added, for the 9p host-share test.
pub fn test_image_9p(artifacts: &Artifacts) -> Result<TestImage, ImageError> {
    static IMAGE: OnceLock<Result<TestImage, ImageError>> = OnceLock::new();
    IMAGE
        .get_or_init(|| build_variant_image(artifacts, "cvm-9p", &[], NINE_P_MODULES))
        .clone()
}

/// The fake GPU files the `gpu` test image adds (`cvm.test_gpu`, a test-hooks build only): the
/// public nvtrust H100 sample (report, chain; `measurements/gpu/testdata/hopper_2023_545`) for
/// the test helper, its driver and VBIOS RIMs under the gate's RIM directory, and a fake
/// driver tree (text files named as the real libraries and tools) at the driver-tree path.
pub fn gpu_test_files() -> Vec<FileEntry> {
    let vectors = paths::workspace_root().join("measurements/gpu/testdata/hopper_2023_545");
    let path = |dest: &str, file: &str| FileEntry {
        dest: dest.to_owned(),
        source: FileSource::Path(vectors.join(file)),
        mode: Some(0o644),
    };
    let fake = |dest: &str, mode: u32| FileEntry {
        dest: dest.to_owned(),
        source: FileSource::Inline(format!("fake {dest} (qemu-tests gpu image)\n")),
        mode: Some(mode),
    };
    vec![
        path(
            "/usr/share/cvm-init/test-gpu/attestation_report.bin",
            "attestation_report.bin",
        ),
        path(
            "/usr/share/cvm-init/test-gpu/cert_chain.pem",
            "cert_chain.pem",
        ),
        path(
            "/usr/share/cvm-init/rims/NV_GPU_DRIVER_GH100_545.00.xml",
            "driver_rim_GH100_545.00_test.swidtag",
        ),
        path(
            "/usr/share/cvm-init/rims/NV_GPU_VBIOS_1010_0200_882_96005E0001.xml",
            "vbios_rim_1010_0200_882_96005E0001_test.swidtag",
        ),
        fake("/usr/lib/cvm-init/gpu-driver/lib/libcuda.so.1", 0o644),
        fake("/usr/lib/cvm-init/gpu-driver/lib/libnvidia-ml.so.1", 0o644),
        fake(
            "/usr/lib/cvm-init/gpu-driver/lib/libnvidia-ptxjitcompiler.so.1",
            0o644,
        ),
        fake("/usr/lib/cvm-init/gpu-driver/lib/libEGL_nvidia.so.0", 0o644),
        fake("/usr/lib/cvm-init/gpu-driver/bin/nvidia-smi", 0o755),
        fake("/usr/lib/cvm-init/gpu-driver/firmware/gsp_ga10x.bin", 0o644),
    ]
}

/// The cvm-init image with [`gpu_test_files`] (built once per process).
pub fn test_image_gpu(artifacts: &Artifacts) -> Result<TestImage, ImageError> {
    static IMAGE: OnceLock<Result<TestImage, ImageError>> = OnceLock::new();
    IMAGE
        .get_or_init(|| build_variant_image(artifacts, "cvm-gpu", &gpu_test_files(), &[]))
        .clone()
}

fn build_test_image(artifacts: &Artifacts) -> Result<TestImage, ImageError> {
    build_variant_image(artifacts, "cvm", &[], &[])
}

fn build_variant_image(
    artifacts: &Artifacts,
    label: &str,
    extra: &[FileEntry],
    extra_modules: &[&str],
) -> Result<TestImage, ImageError> {
    let init = init_binary()?;
    let compression = compression()?;
    let initramfs = build_cached(label, &init, extra, extra_modules, artifacts, compression)?;
    let sidecar = modules_load_sidecar(&initramfs);
    let modules_load = fs::read_to_string(&sidecar).map_err(|error| ImageError::ReadManifest {
        path: sidecar.clone(),
        message: error.to_string(),
    })?;
    Ok(TestImage {
        init,
        initramfs,
        compression,
        modules_load,
    })
}

/// The start of every busybox baseline `/init`: what cvm-init's boot does with busybox, the
/// same mounts, the same modules in the same order (from the same `/etc/cvm/modules.load`),
/// configfs after the modules (it is a module in the Debian kernel).
#[macro_export]
macro_rules! baseline_prelude {
    () => {
        r#"#!/bin/busybox sh
# Benchmark baseline for cvm-init (qemu-tests/src/image.rs, first_container.rs).
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
$bb mkdir -p /dev/pts
$bb mount -t devpts devpts /dev/pts
$bb mount -t tmpfs tmpfs /run
$bb mount -t tmpfs tmpfs /tmp
$bb mount -t cgroup2 cgroup2 /sys/fs/cgroup
$bb mount -t securityfs securityfs /sys/kernel/security
while read -r module; do
    [ -n "$module" ] && $bb insmod "$module"
done < /etc/cvm/modules.load
$bb mount -t configfs configfs /sys/kernel/config
"#
    };
}

/// The `/init` script of the benchmark baseline: [`baseline_prelude`], then the ready marker
/// and power-off.
pub const BASELINE_INIT: &str = concat!(
    baseline_prelude!(),
    r#"# Through the kernel log, so that the console line carries a printk timestamp as cvm-init's does.
echo "cvm-init: ready" > /dev/kmsg
$bb poweroff -f
"#
);

/// The baseline initramfs: the same manifest, modules and compression as [`test_image`], with
/// [`BASELINE_INIT`] as `/init` and the pinned busybox as `/bin/busybox`.
pub fn baseline_image(artifacts: &Artifacts) -> Result<PathBuf, ImageError> {
    static IMAGE: OnceLock<Result<PathBuf, ImageError>> = OnceLock::new();
    IMAGE
        .get_or_init(|| busybox_script_image(artifacts, "baseline", BASELINE_INIT))
        .clone()
}

/// The boot-to-first-container baseline: [`baseline_image`] with
/// [`crate::first_container::FIRST_CONTAINER_BASELINE_INIT`] as `/init`.
pub fn first_container_baseline_image(artifacts: &Artifacts) -> Result<PathBuf, ImageError> {
    busybox_script_image(
        artifacts,
        "first-container-baseline",
        crate::first_container::FIRST_CONTAINER_BASELINE_INIT,
    )
}

/// The manifest's image with the busybox `script` as `/init` and the pinned busybox as
/// `/bin/busybox`.
fn busybox_script_image(
    artifacts: &Artifacts,
    label: &str,
    script: &str,
) -> Result<PathBuf, ImageError> {
    let dir = paths::build_dir();
    fs::create_dir_all(&dir).map_err(|error| ImageError::write(&dir, &error))?;
    let path = dir.join(format!("{label}-init.sh"));
    write_atomically(&path, script.as_bytes())?;
    let busybox = FileEntry {
        dest: "/bin/busybox".to_owned(),
        source: FileSource::Path(artifacts.busybox.clone()),
        mode: Some(0o755),
    };
    build_cached(label, &path, &[busybox], &[], artifacts, compression()?)
}

/// Builds (or reuses) an image of `init` + `initramfs/manifest.toml` + `extra` files.
fn build_cached(
    label: &str,
    init: &Path,
    extra: &[FileEntry],
    extra_modules: &[&str],
    artifacts: &Artifacts,
    compression: Compression,
) -> Result<PathBuf, ImageError> {
    let manifest_path = paths::workspace_root()
        .join("initramfs")
        .join("manifest.toml");
    let mut manifest =
        Manifest::from_path(&manifest_path).map_err(|error| ImageError::ReadManifest {
            path: manifest_path.clone(),
            message: chain(&error),
        })?;
    manifest.files.extend(extra.iter().cloned());
    // The extras first: a kernel flavour's extra modules may be what the manifest's need at load.
    manifest
        .modules
        .splice(0..0, extra_modules.iter().map(|m| (*m).to_owned()));

    // Key: everything the image depends on. The manifest's Debug form includes its host paths;
    // the contents of those files are hashed too.
    let mut key = Sha256::new();
    key.update(format!("{label}\n{compression}\n{manifest:?}\n").as_bytes());
    key.update(artifacts.module_tree.as_os_str().as_encoded_bytes());
    let mut inputs = vec![init.to_path_buf()];
    inputs.extend(manifest.ca_bundle.iter().cloned());
    inputs.extend(manifest.files.iter().filter_map(|file| match &file.source {
        FileSource::Path(path) => Some(path.clone()),
        FileSource::Inline(_) => None,
    }));
    for input in &inputs {
        let sum = sha256_file(input).map_err(|error| ImageError::ReadManifest {
            path: input.clone(),
            message: error.to_string(),
        })?;
        key.update(sum.as_bytes());
    }
    let key = hex::encode(key.finalize());
    let images = paths::build_dir().join("images");
    let image = images.join(format!("{label}-{}.img", key.get(..16).unwrap_or(&key)));

    let _lock = BuildLock::acquire()?;
    if image.is_file() && modules_load_sidecar(&image).is_file() {
        return Ok(image);
    }
    let spec = ImageSpec {
        init: init.to_path_buf(),
        module_tree: Some(artifacts.module_tree.clone()),
        manifest,
        source_date_epoch: 0,
        compression,
    };
    // build_image() is write_newc(build_entries()) + compress(); done by hand here to keep
    // the generated module list as a sidecar for tests that rewrite it.
    let build_error = |error: &dyn std::error::Error| ImageError::BuildImage {
        message: chain(error),
    };
    let entries = build_entries(&spec).map_err(|error| build_error(&error))?;
    let load_member = MODULES_LOAD_PATH.trim_start_matches('/');
    let modules_load = entries
        .iter()
        .find(|entry| entry.path == load_member)
        .and_then(|entry| entry.data())
        .unwrap_or_default()
        .to_vec();
    let bytes =
        compress(&write_newc(&entries), compression).map_err(|error| build_error(&error))?;
    fs::create_dir_all(&images).map_err(|error| ImageError::write(&images, &error))?;
    write_atomically(&modules_load_sidecar(&image), &modules_load)?;
    write_atomically(&image, &bytes)?;
    Ok(image)
}

/// Where [`build_cached`] keeps the image's `/etc/cvm/modules.load`.
fn modules_load_sidecar(image: &Path) -> PathBuf {
    image.with_extension("modules.load")
}

/// Writes an uncompressed overlay archive of `(path, contents, mode)` files to `dir/name`.
pub fn write_overlay(
    dir: &Path,
    name: &str,
    files: &[(&str, &[u8], u32)],
) -> Result<PathBuf, ImageError> {
    let bytes = build_overlay(files).map_err(|error| ImageError::BuildImage {
        message: chain(&error),
    })?;
    let path = dir.join(name);
    fs::write(&path, bytes).map_err(|error| ImageError::write(&path, &error))?;
    Ok(path)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let temporary = path.with_extension("partial");
    fs::write(&temporary, bytes).map_err(|error| ImageError::write(&temporary, &error))?;
    fs::rename(&temporary, path).map_err(|error| ImageError::write(path, &error))
}

/// `error: source: source...` on one line.
pub fn chain(error: &dyn std::error::Error) -> String {
    cvm_error_chain::joined(error)
}
