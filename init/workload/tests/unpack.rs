//! Safe unpacking: escapes, whiteouts, replacement, digest re-verification, atomic rename.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use cvm_workload::digest::Sha256Digest;
use cvm_workload::oci::{Compression, ImageConfig};
use cvm_workload::pull::{PulledImage, PulledLayer, Store};
use cvm_workload::unpack::{UnpackError, UnpackOptions, apply_tar, unpack_image};

fn opts() -> UnpackOptions {
    UnpackOptions {
        preserve_ownership: false,
    }
}

fn apply(root: &Path, tar: &[u8]) -> Result<(), UnpackError> {
    apply_tar(root, Sha256Digest::of(tar), tar, opts())
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    (dir, root)
}

#[test]
fn refuses_parent_dir_entries() {
    let (dir, root) = setup();
    for name in [
        &b"../escape.txt"[..],
        b"a/../../escape.txt",
        b"./../escape.txt",
    ] {
        let tar = Layer::new()
            .raw(tar::EntryType::Regular, name, None, b"pwned")
            .tar();
        let err = apply(&root, &tar).unwrap_err();
        assert!(
            matches!(&err, UnpackError::UnsafeEntry { reason, .. } if reason.contains("..")),
            "{err:?}"
        );
        assert!(err.to_string().contains("unsafe entry"));
    }
    assert!(!dir.path().join("escape.txt").exists());
}

#[test]
fn absolute_and_relative_symlinks_resolve_inside_root() {
    let (dir, root) = setup();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let abs = outside.to_str().unwrap().to_owned();
    let tar = Layer::new()
        .symlink("evil", &abs)
        .file("evil/pwned", 0o644, b"x")
        .symlink("rel", "../../../../../../../../tmp/../")
        .file("rel/rel-pwned", 0o644, b"y")
        .dir("var")
        .symlink("var/run", "/run")
        .file("var/run/app.pid", 0o644, b"1")
        .tar();
    apply(&root, &tar).unwrap();
    assert!(!outside.join("pwned").exists(), "absolute symlink escaped");
    assert_eq!(
        fs::read(root.join(abs.trim_start_matches('/')).join("pwned")).unwrap(),
        b"x"
    );
    assert_eq!(fs::read(root.join("rel-pwned")).unwrap(), b"y");
    assert_eq!(fs::read(root.join("run/app.pid")).unwrap(), b"1");
    // The symlinks themselves are kept verbatim.
    assert_eq!(
        fs::read_link(root.join("var/run")).unwrap(),
        Path::new("/run")
    );
}

#[test]
fn refuses_hard_link_escapes() {
    let (dir, root) = setup();
    fs::write(dir.path().join("secret"), b"host secret").unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"../secret".to_vec(), "leaves the root"),
        (b"a/../../secret".to_vec(), "leaves the root"),
        // Absolute names are root-relative: <root>/etc/passwd does not exist.
        (b"/etc/passwd".to_vec(), "does not exist"),
        (
            format!("{}/secret", dir.path().display()).into_bytes(),
            "does not exist",
        ),
    ];
    for (target, reason) in cases {
        let tar = Layer::new()
            .raw(tar::EntryType::Link, b"link", Some(&target), b"")
            .tar();
        let err = apply(&root, &tar).unwrap_err();
        assert!(
            matches!(&err, UnpackError::UnsafeEntry { reason: r, .. } if r.contains(reason)),
            "{}: {err:?}",
            String::from_utf8_lossy(&target)
        );
        assert!(!root.join("link").exists());
    }
    // Through a symlinked directory pointing outside: resolved inside the root too.
    let tar = Layer::new()
        .symlink("hostdir", dir.path().to_str().unwrap())
        .raw(tar::EntryType::Link, b"link2", Some(b"hostdir/secret"), b"")
        .tar();
    assert!(matches!(
        apply(&root, &tar),
        Err(UnpackError::UnsafeEntry { .. })
    ));
    // A legitimate hard link works and shares the inode.
    let tar = Layer::new()
        .file("f", 0o644, b"data")
        .hardlink("g", "f")
        .tar();
    apply(&root, &tar).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(root.join("f")).unwrap().ino(),
        fs::metadata(root.join("g")).unwrap().ino()
    );
    assert_eq!(fs::read(dir.path().join("secret")).unwrap(), b"host secret");
}

#[test]
fn whiteouts_and_opaque_directories() {
    let (_dir, root) = setup();
    let lower = Layer::new()
        .dir("a")
        .file("a/1", 0o644, b"1")
        .file("a/2", 0o644, b"2")
        .dir("b")
        .file("b/x", 0o644, b"x")
        .dir("c")
        .file("c/old", 0o644, b"old")
        .dir("c/sub")
        .file("c/sub/deep", 0o644, b"deep")
        .tar();
    apply(&root, &lower).unwrap();
    let upper = Layer::new()
        .file("a/.wh.1", 0o644, b"")
        .file(".wh.b", 0o644, b"")
        .dir("c")
        .file("c/new", 0o644, b"new")
        .dir("c/sub")
        .file("c/sub/fresh", 0o644, b"fresh")
        // The opaque marker after the layer's own entries: they must survive.
        .file("c/.wh..wh..opq", 0o644, b"")
        .file(".wh.missing", 0o644, b"")
        .tar();
    apply(&root, &upper).unwrap();
    assert!(!root.join("a/1").exists());
    assert!(root.join("a/2").exists());
    assert!(!root.join("b").exists());
    assert!(!root.join("c/old").exists());
    assert!(!root.join("c/sub/deep").exists());
    assert_eq!(fs::read(root.join("c/new")).unwrap(), b"new");
    assert_eq!(fs::read(root.join("c/sub/fresh")).unwrap(), b"fresh");
    assert!(!root.join("c/.wh..wh..opq").exists());
    assert!(!root.join(".wh.missing").exists());
}

#[test]
fn whiteouts_of_dot_and_dot_dot_are_refused_and_remove_nothing() {
    let (dir, root) = setup();
    let lower = Layer::new()
        .dir("a")
        .file("a/kept", 0o644, b"k")
        .file("top", 0o644, b"t")
        .tar();
    apply(&root, &lower).unwrap();
    fs::write(dir.path().join("beside"), b"outside the root").unwrap();
    for name in [".wh..", "a/.wh..", "a/.wh...", ".wh..."] {
        let tar = Layer::new().file(name, 0o644, b"").tar();
        let err = apply(&root, &tar).unwrap_err();
        assert!(
            matches!(&err, UnpackError::UnsafeEntry { reason, .. } if reason.contains("whiteout of")),
            "{name}: {err:?}"
        );
    }
    assert_eq!(fs::read(root.join("a/kept")).unwrap(), b"k");
    assert_eq!(fs::read(root.join("top")).unwrap(), b"t");
    assert_eq!(
        fs::read(dir.path().join("beside")).unwrap(),
        b"outside the root"
    );
}

#[test]
fn replaces_entries_and_applies_modes() {
    let (_dir, root) = setup();
    let lower = Layer::new()
        .dir("d")
        .file("d/inner", 0o644, b"i")
        .file("f", 0o644, b"file")
        .file("s", 0o644, b"will become a symlink")
        .tar();
    apply(&root, &lower).unwrap();
    let upper = Layer::new()
        .file("d", 0o600, b"now a file")
        .dir("f")
        .symlink("s", "f")
        .file("suid", 0o4755, b"#!")
        .raw(tar::EntryType::Char, b"dev/null", None, b"")
        .tar();
    apply(&root, &upper).unwrap();
    assert_eq!(fs::read(root.join("d")).unwrap(), b"now a file");
    assert_eq!(
        fs::metadata(root.join("d")).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    assert!(root.join("f").is_dir());
    assert_eq!(fs::read_link(root.join("s")).unwrap(), Path::new("f"));
    assert_eq!(
        fs::metadata(root.join("suid"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o4755
    );
    assert!(
        !root.join("dev/null").exists(),
        "device nodes are not created"
    );
}

fn stored_image(store: &Store, tars: &[Vec<u8>]) -> PulledImage {
    let mut layers = Vec::new();
    for (i, t) in tars.iter().enumerate() {
        let (blob, compression) = if i % 2 == 0 {
            (gzip(t), Compression::Gzip)
        } else {
            (zstd(t), Compression::Zstd)
        };
        let digest = Sha256Digest::of(&blob);
        let path = store.blob_path(&digest);
        fs::write(&path, &blob).unwrap();
        layers.push(PulledLayer {
            digest,
            size: blob.len() as u64,
            compression,
            diff_id: Sha256Digest::of(t),
            path,
        });
    }
    PulledImage {
        pinned: Sha256Digest::of(b"m"),
        manifest: Sha256Digest::of(b"m"),
        config_digest: Sha256Digest::of(b"c"),
        config: ImageConfig::default(),
        layers,
        downloaded_bytes: 0,
    }
}

#[test]
fn unpacks_image_atomically_and_reverifies() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let bin = busybox();
    let tars = vec![
        Layer::new()
            .dir("bin")
            .file("bin/busybox", 0o755, &bin)
            .symlink("bin/sh", "busybox")
            .tar(),
        Layer::new().dir("etc").file("etc/motd", 0o644, b"hi").tar(),
    ];
    let image = stored_image(&store, &tars);
    let root = unpack_image(&store, &image, opts()).unwrap();
    assert_eq!(root, dir.path().join("rootfs").join(image.manifest.hex()));
    assert_eq!(fs::read(root.join("bin/busybox")).unwrap(), bin);
    assert_eq!(fs::read(root.join("etc/motd")).unwrap(), b"hi");
    // Reuse: same path, nothing re-applied (a marker file survives).
    fs::write(root.join("marker"), b"").unwrap();
    assert_eq!(unpack_image(&store, &image, opts()).unwrap(), root);
    assert!(root.join("marker").exists());

    // A blob corrupted in the store is caught on unpack; no rootfs, no temp dir left.
    let dir2 = tempfile::tempdir().unwrap();
    let store2 = Store::open(dir2.path()).unwrap();
    let image2 = stored_image(&store2, &tars);
    let mut blob = fs::read(&image2.layers[1].path).unwrap();
    let last = blob.len() - 1;
    blob[last] ^= 1;
    fs::write(&image2.layers[1].path, &blob).unwrap();
    let err = unpack_image(&store2, &image2, opts()).unwrap_err();
    assert!(
        matches!(err, UnpackError::LayerDigestMismatch { .. }),
        "{err:?}"
    );
    let entries: Vec<_> = fs::read_dir(dir2.path().join("rootfs")).unwrap().collect();
    assert!(entries.is_empty(), "no partial rootfs: {entries:?}");

    // A wrong diff_id is caught too.
    let mut image3 = stored_image(&store2, &tars[..1]);
    image3.layers[0].diff_id = Sha256Digest::of(b"other");
    let err = unpack_image(&store2, &image3, opts()).unwrap_err();
    assert!(matches!(err, UnpackError::DiffIdMismatch { .. }), "{err:?}");
    assert!(
        !dir2
            .path()
            .join("rootfs")
            .join(image3.manifest.hex())
            .exists()
    );
}

#[test]
fn working_dir_is_created_inside_the_root() {
    let (dir, root) = setup();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let tar = Layer::new().symlink("srv", outside.to_str().unwrap()).tar();
    apply(&root, &tar).unwrap();
    let made = cvm_workload::unpack::create_dir_in_root(&root, "/srv/app").unwrap();
    assert!(made.starts_with(&root), "{}", made.display());
    assert!(made.is_dir());
    assert!(!outside.join("app").exists());
    cvm_workload::unpack::create_dir_in_root(&root, "/../x").unwrap_err();
}

#[test]
fn reads_image_files_through_in_root_symlinks() {
    let (dir, root) = setup();
    fs::write(dir.path().join("passwd"), b"host:x:0:0").unwrap();
    let tar = Layer::new()
        .dir("real")
        .file("real/passwd", 0o644, b"app:x:1000:1000")
        .symlink("etc", "/real")
        .symlink("hostpw", dir.path().join("passwd").to_str().unwrap())
        .tar();
    apply(&root, &tar).unwrap();
    use cvm_workload::unpack::read_file_in_root;
    assert_eq!(
        read_file_in_root(&root, "/etc/passwd", 1024)
            .unwrap()
            .unwrap(),
        b"app:x:1000:1000"
    );
    assert_eq!(
        read_file_in_root(&root, "/hostpw", 1024).unwrap(),
        None,
        "not the host file"
    );
    assert_eq!(
        read_file_in_root(&root, "/etc/missing", 1024).unwrap(),
        None
    );
    assert_eq!(
        read_file_in_root(&root, "/etc/passwd", 3).unwrap().unwrap(),
        b"app"
    );
}
