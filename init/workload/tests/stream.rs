//! Pull and unpack as one stream (`cvm_workload::stream`) against a real `docker-registry` on
//! loopback: the same root as the sequential path, and nothing committed when a layer in the
//! middle fails its digest, its diff_id or the unpack rules.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use cvm_workload::digest::{ImageRef, Sha256Digest};
use cvm_workload::oci::media;
use cvm_workload::pull::{PullError, Store, pull};
use cvm_workload::registry::{RegistryClient, RegistryConfig};
use cvm_workload::stream::{StreamError, StreamOptions, pull_and_unpack};
use cvm_workload::unpack::{UnpackError, UnpackOptions, unpack_image};

fn client(reg: &Registry) -> RegistryClient {
    RegistryClient::new(RegistryConfig {
        plain_http_hosts: vec![reg.addr.clone()],
        attempts: 2,
        backoff: std::time::Duration::from_millis(10),
        ..RegistryConfig::default()
    })
}

fn image(reg: &Registry, repo: &str, digest: &Sha256Digest) -> ImageRef {
    ImageRef::parse(&format!("{}/{repo}@{digest}", reg.addr)).unwrap()
}

fn options() -> StreamOptions {
    StreamOptions {
        concurrency: 3,
        unpack: UnpackOptions {
            preserve_ownership: false,
        },
    }
}

/// Pseudo-random bytes (incompressible, so the layers take a while to stream).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed.to_le_bytes()[0]
        })
        .collect()
}

/// Five layers of every compression whose result depends on their order: overwrites,
/// whiteouts, an opaque directory, a directory replaced by a symlink used as a parent,
/// hard links, and a blob listed twice.
fn ordered_layers() -> Vec<BuiltLayer> {
    let big = noise(3 << 20, 7);
    let base = Layer::new()
        .dir("etc")
        .file("etc/os-release", 0o644, b"ID=base\n")
        .file("etc/remove-me", 0o644, b"x")
        .dir("opt")
        .dir("opt/old")
        .file("opt/old/a", 0o644, b"lower a")
        .file("opt/old/b", 0o644, b"lower b")
        .dir("usr")
        .dir("usr/lib")
        .file("usr/lib/big", 0o755, &big)
        .dir("var")
        .dir("var/run")
        .file("var/run/stale", 0o644, b"stale")
        .tar();
    let second = Layer::new()
        .dir("etc")
        .file("etc/os-release", 0o644, b"ID=second\n")
        .file("etc/.wh.remove-me", 0o644, b"")
        .dir("opt/old")
        .file("opt/old/.wh..wh..opq", 0o644, b"")
        .file("opt/old/c", 0o600, b"upper c")
        .file("data.bin", 0o644, &noise(2 << 20, 11))
        .tar();
    let third = Layer::new()
        .file("var/.wh.run", 0o644, b"")
        .dir("run")
        .symlink("var/run", "/run")
        .file("var/run/app.pid", 0o644, b"42")
        .hardlink("etc/os-release-link", "etc/os-release")
        .tar();
    let fourth = Layer::new()
        .file("usr/lib/big", 0o700, b"small now")
        .file("data.bin", 0o644, &noise(1 << 20, 13))
        .tar();
    vec![
        gzip_layer(&base),
        zstd_layer(&second),
        BuiltLayer {
            blob: third.clone(),
            media_type: media::OCI_LAYER_TAR,
            diff_id: Sha256Digest::of(&third),
        },
        gzip_layer(&fourth),
        // The same blob again (applied twice: idempotent).
        BuiltLayer {
            blob: third.clone(),
            media_type: media::OCI_LAYER_TAR,
            diff_id: Sha256Digest::of(&third),
        },
    ]
}

/// Path -> (kind, mode, content or link target), for comparing two roots.
fn tree(root: &Path) -> BTreeMap<String, (char, u32, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (char, u32, Vec<u8>)>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(Result::unwrap).collect();
        entries.sort_by_key(fs::DirEntry::file_name);
        for e in entries {
            let path = e.path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                out.insert(name, ('l', 0, target.display().to_string().into_bytes()));
            } else if meta.is_dir() {
                out.insert(name, ('d', mode, Vec::new()));
                walk(root, &path, out);
            } else {
                out.insert(name, ('f', mode, fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn entries(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(e) => e
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// No layer blob, no root and no temp file of the image is in the store.
fn assert_nothing_committed(store_dir: &Path, layers: &[BuiltLayer]) {
    let store = Store::open(store_dir).unwrap();
    for l in layers {
        let blob = store.blob_path(&Sha256Digest::of(&l.blob));
        assert!(!blob.exists(), "layer blob {} committed", blob.display());
    }
    assert_eq!(entries(&store_dir.join("tmp")), Vec::<String>::new());
    assert_eq!(entries(&store_dir.join("rootfs")), Vec::<String>::new());
}

#[test]
fn streaming_pull_gives_the_same_root_as_sequential() {
    let Some(reg) = Registry::start() else { return };
    let layers = ordered_layers();
    let (digest, _) = push_image(&reg, "test/ordered", "amd64", &layers, "{}");
    let img = image(&reg, "test/ordered", &digest);

    let seq_dir = tempfile::tempdir().unwrap();
    let seq_store = Store::open(seq_dir.path()).unwrap();
    let pulled = pull(&seq_store, &client(&reg), &img).unwrap();
    let seq_root = unpack_image(&seq_store, &pulled, options().unpack).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let done = pull_and_unpack(&store, &client(&reg), &img, options()).unwrap();
    assert_eq!(done.rootfs, dir.path().join("rootfs").join(digest.hex()));
    let expected = tree(&seq_root);
    assert_eq!(tree(&done.rootfs), expected);
    // The order-dependent results are really there.
    assert_eq!(expected["etc/os-release"].2, b"ID=second\n");
    assert!(!expected.contains_key("etc/remove-me"));
    assert!(!expected.contains_key("opt/old/a"));
    assert_eq!(expected["opt/old/c"], ('f', 0o600, b"upper c".to_vec()));
    assert_eq!(expected["run/app.pid"].2, b"42");
    assert!(!expected.contains_key("run/stale"));
    assert_eq!(expected["usr/lib/big"], ('f', 0o700, b"small now".to_vec()));

    // Same blobs, same description, nothing left in tmp/.
    assert_eq!(done.pulled.layers, {
        let mut l = pulled.layers.clone();
        for layer in &mut l {
            layer.path = store.blob_path(&layer.digest);
        }
        l
    });
    assert_eq!(done.pulled.config, pulled.config);
    assert_eq!(done.pulled.manifest, pulled.manifest);
    assert_eq!(done.pulled.downloaded_bytes, pulled.downloaded_bytes);
    for l in &done.pulled.layers {
        assert_eq!(
            fs::read(&l.path).unwrap(),
            fs::read(seq_store.blob_path(&l.digest)).unwrap()
        );
    }
    assert_eq!(entries(&dir.path().join("tmp")), Vec::<String>::new());

    // Offline: the complete root is reused; a missing root is unpacked from stored blobs.
    drop(reg);
    let offline = RegistryClient::new(RegistryConfig {
        plain_http_hosts: vec![img.registry.clone()],
        attempts: 1,
        ..RegistryConfig::default()
    });
    let again = pull_and_unpack(&store, &offline, &img, options()).unwrap();
    assert_eq!(again.pulled.downloaded_bytes, 0);
    assert_eq!(again.rootfs, done.rootfs);
    fs::remove_dir_all(&seq_root).unwrap();
    let from_store = pull_and_unpack(&seq_store, &offline, &img, options()).unwrap();
    assert_eq!(from_store.pulled.downloaded_bytes, 0);
    assert_eq!(tree(&from_store.rootfs), expected);
}

/// Four layers of a few MB each; layer `bad` is the one tests break.
fn four_layers() -> Vec<BuiltLayer> {
    (0..4u64)
        .map(|i| {
            let tar = Layer::new()
                .dir("data")
                .file(&format!("data/{i}"), 0o644, &noise(2 << 20, i + 1))
                .tar();
            if i % 2 == 0 {
                gzip_layer(&tar)
            } else {
                zstd_layer(&tar)
            }
        })
        .collect()
}

#[test]
fn corrupt_layer_in_the_middle_fails_typed_and_commits_nothing() {
    let Some(reg) = Registry::start() else { return };
    let layers = four_layers();
    let (digest, _) = push_image(&reg, "test/corrupt", "amd64", &layers, "{}");
    for bad in [1, 2] {
        let layer_digest = Sha256Digest::of(&layers[bad].blob);
        let data = reg.blob_data(&layer_digest);
        let mut bytes = fs::read(&data).unwrap();
        // Same size, different content, in the middle: the decoder sees garbage before the
        // download ends.
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        fs::write(&data, &bytes).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let img = image(&reg, "test/corrupt", &digest);
        let err = pull_and_unpack(&store, &client(&reg), &img, options()).unwrap_err();
        match err {
            StreamError::Pull(PullError::BlobDigestMismatch { expected, actual }) => {
                assert_eq!(expected, layer_digest);
                assert_eq!(actual, Sha256Digest::of(&bytes));
            }
            other => panic!("unexpected: {other:?}"),
        }
        assert_nothing_committed(dir.path(), &layers);
        // Repaired, the same store pulls it.
        bytes[middle] ^= 0x55;
        fs::write(&data, &bytes).unwrap();
        let done = pull_and_unpack(&store, &client(&reg), &img, options()).unwrap();
        assert_eq!(done.pulled.layers.len(), 4);
        assert!(done.rootfs.join("data/3").exists());
    }
}

#[test]
fn diff_id_mismatch_in_the_middle_fails_typed_and_commits_nothing() {
    let Some(reg) = Registry::start() else { return };
    let mut layers = four_layers();
    let wrong = Sha256Digest::of(b"not the layer");
    layers[2].diff_id = wrong;
    let (digest, _) = push_image(&reg, "test/diffid", "amd64", &layers, "{}");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let img = image(&reg, "test/diffid", &digest);
    let err = pull_and_unpack(&store, &client(&reg), &img, options()).unwrap_err();
    match err {
        StreamError::Pull(PullError::DiffIdMismatch {
            layer,
            expected,
            actual,
        }) => {
            assert_eq!(layer, Sha256Digest::of(&layers[2].blob));
            assert_eq!(expected, wrong);
            assert_ne!(actual, wrong);
        }
        other => panic!("unexpected: {other:?}"),
    }
    assert_nothing_committed(dir.path(), &layers);
}

#[test]
fn unsafe_entry_in_the_middle_fails_typed_and_commits_nothing() {
    let Some(reg) = Registry::start() else { return };
    let mut layers = four_layers();
    let evil = Layer::new()
        .raw(tar::EntryType::Regular, b"../escape", None, b"pwned")
        .tar();
    layers[1] = gzip_layer(&evil);
    let (digest, _) = push_image(&reg, "test/unsafe", "amd64", &layers, "{}");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let img = image(&reg, "test/unsafe", &digest);
    let err = pull_and_unpack(&store, &client(&reg), &img, options()).unwrap_err();
    assert!(
        matches!(err, StreamError::Unpack(UnpackError::UnsafeEntry { layer, .. }) if layer == Sha256Digest::of(&layers[1].blob)),
        "{err:?}"
    );
    assert_nothing_committed(dir.path(), &layers);
    assert!(!dir.path().join("escape").exists());
}

#[test]
fn truncated_layer_fails_with_its_size() {
    let Some(reg) = Registry::start() else { return };
    let layers = four_layers();
    let (digest, _) = push_image(&reg, "test/short", "amd64", &layers, "{}");
    let layer_digest = Sha256Digest::of(&layers[2].blob);
    let data = reg.blob_data(&layer_digest);
    let bytes = fs::read(&data).unwrap();
    fs::write(&data, &bytes[..bytes.len() - 100]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let img = image(&reg, "test/short", &digest);
    let err = pull_and_unpack(&store, &client(&reg), &img, options()).unwrap_err();
    assert!(
        matches!(
            &err,
            StreamError::Pull(PullError::BlobSizeMismatch { digest, .. }
                | PullError::Download { digest, .. }) if *digest == layer_digest
        ),
        "{err:?}"
    );
    assert_nothing_committed(dir.path(), &layers);
}
