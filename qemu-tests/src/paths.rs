//! Well-known paths in the workspace, independent of `CARGO_TARGET_DIR`.

use std::path::{Path, PathBuf};

/// The workspace root (the parent of this package's directory).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// `qemu-tests/artifacts.toml`.
pub fn artifacts_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts.toml")
}

/// `<workspace>/target/qemu-artifacts`: the cache of unpacked pinned packages.
pub fn artifact_cache() -> PathBuf {
    workspace_root().join("target").join("qemu-artifacts")
}

/// `<workspace>/target/qemu-build`: the init build (its own cargo target directory, so a nested
/// `cargo build` never waits on the lock of the `cargo test` that runs us) and the images.
pub fn build_dir() -> PathBuf {
    workspace_root().join("target").join("qemu-build")
}
