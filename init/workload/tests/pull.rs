//! Pull tests against a real `docker-registry` on loopback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use common::*;
use cvm_workload::digest::{ImageRef, Sha256Digest};
use cvm_workload::oci::{Compression, media};
use cvm_workload::pull::{PullError, Store, pull};
use cvm_workload::registry::{RegistryClient, RegistryConfig};

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

fn busybox_layers() -> Vec<BuiltLayer> {
    let bin = busybox();
    let base = Layer::new()
        .dir("bin")
        .file("bin/busybox", 0o755, &bin)
        .symlink("bin/sh", "busybox")
        .tar();
    let app = Layer::new()
        .dir("etc")
        .file("etc/greeting", 0o644, b"hello\n")
        .tar();
    vec![gzip_layer(&base), zstd_layer(&app)]
}

#[test]
fn pulls_index_verifies_and_reuses_offline() {
    let Some(reg) = Registry::start() else { return };
    let layers = busybox_layers();
    let run = r#"{"Entrypoint":["/bin/sh"],"Cmd":["-c","cat /etc/greeting"],"Env":["PATH=/bin"]}"#;
    let (amd, amd_size) = push_image(&reg, "test/busybox", "amd64", &layers, run);
    let (arm, arm_size) = push_image(&reg, "test/busybox", "arm64", &layers, run);
    let index = index_json(&[(arm, arm_size, "arm64"), (amd, amd_size, "amd64")]);
    let index_digest = reg.push_manifest("test/busybox", "multi", media::OCI_INDEX, &index);

    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let img = image(&reg, "test/busybox", &index_digest);
    let pulled = pull(&store, &client(&reg), &img).unwrap();
    assert_eq!(pulled.pinned, index_digest);
    assert_eq!(pulled.manifest, amd, "the linux/amd64 child was chosen");
    assert_eq!(pulled.layers.len(), 2);
    assert_eq!(pulled.layers[0].compression, Compression::Gzip);
    assert_eq!(pulled.layers[1].compression, Compression::Zstd);
    assert_eq!(pulled.config.entrypoint, Some(vec!["/bin/sh".to_owned()]));
    for (l, built) in pulled.layers.iter().zip(&layers) {
        assert_eq!(std::fs::read(&l.path).unwrap(), built.blob);
        assert_eq!(l.diff_id, built.diff_id);
    }
    assert!(pulled.downloaded_bytes > layers[0].blob.len() as u64);
    // Nothing left behind in tmp/.
    assert_eq!(
        std::fs::read_dir(store_dir.path().join("tmp"))
            .unwrap()
            .count(),
        0
    );

    // Stop the registry: the second pull is served from the store alone.
    drop(reg);
    let offline = RegistryClient::new(RegistryConfig {
        plain_http_hosts: vec![img.registry.clone()],
        attempts: 1,
        ..RegistryConfig::default()
    });
    let again = pull(&store, &offline, &img).unwrap();
    assert_eq!(again.downloaded_bytes, 0);
    assert_eq!(again.layers, pulled.layers);
    assert_eq!(again.config, pulled.config);
}

#[test]
fn refuses_manifest_digest_mismatch() {
    let Some(reg) = Registry::start() else { return };
    let layers = busybox_layers();
    let (digest, _) = push_image(&reg, "test/tamper", "amd64", &layers, "{}");
    // The registry's disk is "compromised": the manifest bytes change, the name stays.
    let data = reg.blob_data(&digest);
    let mut bytes = std::fs::read(&data).unwrap();
    bytes.push(b' ');
    std::fs::write(&data, &bytes).unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let err = pull(&store, &client(&reg), &image(&reg, "test/tamper", &digest)).unwrap_err();
    match err {
        PullError::ManifestDigestMismatch { expected, actual } => {
            assert_eq!(expected, digest);
            assert_eq!(actual, Sha256Digest::of(&bytes));
        }
        other => panic!("unexpected: {other:?}"),
    }
    assert!(!store.blob_path(&digest).exists(), "nothing stored");
}

#[test]
fn refuses_layer_digest_mismatch() {
    let Some(reg) = Registry::start() else { return };
    let layers = busybox_layers();
    let (digest, _) = push_image(&reg, "test/layer", "amd64", &layers, "{}");
    let layer_digest = Sha256Digest::of(&layers[1].blob);
    let data = reg.blob_data(&layer_digest);
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff; // same size, different content
    std::fs::write(&data, &bytes).unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let err = pull(&store, &client(&reg), &image(&reg, "test/layer", &digest)).unwrap_err();
    assert!(
        matches!(err, PullError::BlobDigestMismatch { expected, .. } if expected == layer_digest),
        "{err:?}"
    );
    assert!(!store.blob_path(&layer_digest).exists());
    assert_eq!(
        std::fs::read_dir(store_dir.path().join("tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn refuses_diff_id_mismatch() {
    let Some(reg) = Registry::start() else { return };
    let mut layers = busybox_layers();
    let wrong = Sha256Digest::of(b"not the layer");
    layers[0].diff_id = wrong;
    let (digest, _) = push_image(&reg, "test/diffid", "amd64", &layers, "{}");
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let err = pull(&store, &client(&reg), &image(&reg, "test/diffid", &digest)).unwrap_err();
    match err {
        PullError::DiffIdMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, wrong);
            assert_ne!(actual, wrong);
        }
        other => panic!("unexpected: {other:?}"),
    }
    assert!(!store.blob_path(&Sha256Digest::of(&layers[0].blob)).exists());

    // Without the pull-time check, the unpacker refuses it before any root appears.
    let options = cvm_workload::pull::PullOptions {
        verify_diff_ids: false,
    };
    let img = image(&reg, "test/diffid", &digest);
    let pulled =
        cvm_workload::pull::pull_with_options(&store, &client(&reg), &img, options).unwrap();
    let unpack_options = cvm_workload::unpack::UnpackOptions {
        preserve_ownership: false,
    };
    let err = cvm_workload::unpack::unpack_image(&store, &pulled, unpack_options).unwrap_err();
    assert!(
        matches!(err, cvm_workload::unpack::UnpackError::DiffIdMismatch { expected, .. } if expected == wrong),
        "{err:?}"
    );
    assert!(
        !store_dir
            .path()
            .join("rootfs")
            .join(pulled.manifest.hex())
            .exists()
    );
}

#[test]
fn refuses_size_mismatch_and_unknown_digest() {
    let Some(reg) = Registry::start() else { return };
    let tar = Layer::new().file("a", 0o644, b"a").tar();
    let layer = gzip_layer(&tar);
    let ld = reg.push_blob("test/size", &layer.blob);
    let config = config_json("amd64", &[layer.diff_id], "{}");
    let cd = reg.push_blob("test/size", &config);
    // The descriptor claims one byte less than the blob has.
    let manifest = manifest_json(
        (&cd, config.len()),
        &[(ld, layer.blob.len() - 1, media::OCI_LAYER_GZIP)],
    );
    let md = reg.push_manifest("test/size", "short", media::OCI_MANIFEST, &manifest);
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let err = pull(&store, &client(&reg), &image(&reg, "test/size", &md)).unwrap_err();
    assert!(
        matches!(
            err,
            PullError::BlobSizeMismatch {
                truncated: true,
                ..
            }
        ),
        "{err:?}"
    );
    let missing = Sha256Digest::of(b"never pushed");
    let err = pull(&store, &client(&reg), &image(&reg, "test/size", &missing)).unwrap_err();
    let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        matches!(
            err,
            PullError::Fetch {
                what: "manifest",
                ..
            }
        ),
        "{text}"
    );
}

#[test]
fn retries_server_errors_with_backoff() {
    let (routes, md) = fake_image("r/app");
    let fake = FakeRegistry::start(FakeConfig {
        routes,
        fail_first: 2,
        bearer: None,
    });
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let img = ImageRef::parse(&format!("{}/r/app@{md}", fake.addr)).unwrap();
    let client = RegistryClient::new(RegistryConfig {
        plain_http_hosts: vec![fake.addr.clone()],
        attempts: 3,
        backoff: std::time::Duration::from_millis(20),
        ..RegistryConfig::default()
    });
    let t = std::time::Instant::now();
    let pulled = pull(&store, &client, &img).unwrap();
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(60),
        "backoff 20 + 40 ms"
    );
    assert_eq!(pulled.layers.len(), 1);
    // 2 failures + manifest + config + layer.
    assert_eq!(fake.requests.load(std::sync::atomic::Ordering::SeqCst), 5);

    // With fewer attempts than failures the pull fails, naming the status.
    let (routes, md) = fake_image("r/app");
    let fake = FakeRegistry::start(FakeConfig {
        routes,
        fail_first: 5,
        bearer: None,
    });
    let client = RegistryClient::new(RegistryConfig {
        plain_http_hosts: vec![fake.addr.clone()],
        attempts: 2,
        backoff: std::time::Duration::from_millis(1),
        ..RegistryConfig::default()
    });
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let img = ImageRef::parse(&format!("{}/r/app@{md}", fake.addr)).unwrap();
    let err = pull(&store, &client, &img).unwrap_err();
    let chain = cvm_error_chain::joined(&err);
    assert!(chain.contains("HTTP 503"), "{chain}");
}

#[test]
fn bearer_token_auth_with_credentials() {
    use cvm_workload::registry::{Credentials, SecretString};
    let (routes, md) = fake_image("private/app");
    // base64("user:pass")
    let fake = FakeRegistry::start(FakeConfig {
        routes,
        fail_first: 0,
        bearer: Some(("dXNlcjpwYXNz".into(), "tok123".into())),
    });
    let img = ImageRef::parse(&format!("{}/private/app@{md}", fake.addr)).unwrap();
    let mut credentials = std::collections::BTreeMap::new();
    credentials.insert(
        fake.addr.clone(),
        Credentials {
            username: "user".into(),
            password: SecretString::new("pass".into()),
        },
    );
    let client = RegistryClient::new(RegistryConfig {
        plain_http_hosts: vec![fake.addr.clone()],
        credentials,
        attempts: 1,
        ..RegistryConfig::default()
    });
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let pulled = pull(&store, &client, &img).unwrap();
    assert_eq!(pulled.manifest, md);
    // Without credentials the token endpoint refuses.
    let anon = RegistryClient::new(RegistryConfig {
        plain_http_hosts: vec![fake.addr.clone()],
        attempts: 1,
        ..RegistryConfig::default()
    });
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    assert!(matches!(
        pull(&store, &anon, &img),
        Err(PullError::Fetch {
            what: "manifest",
            ..
        })
    ));
}

#[test]
fn prepares_every_image_of_an_app_once() {
    use cvm_workload::compose::{ComposePolicy, parse};
    use cvm_workload::prepare::prepare_images;
    use cvm_workload::unpack::UnpackOptions;
    let Some(reg) = Registry::start() else { return };
    let base = Layer::new()
        .dir("etc")
        .file(
            "etc/passwd",
            0o644,
            b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n",
        )
        .file("etc/group", 0o644, b"root:x:0:\napp:x:1000:\n")
        .tar();
    let (a, _) = push_image(&reg, "app/a", "amd64", &[gzip_layer(&base)], "{}");
    let other = Layer::new().file("hello", 0o644, b"b").tar();
    let (b, _) = push_image(&reg, "app/b", "amd64", &[zstd_layer(&other)], "{}");
    let yaml = format!(
        "services:\n  one:\n    image: {r}/app/a@{a}\n  two:\n    image: {r}/app/a@{a}\n  three:\n    image: {r}/app/b@{b}\n",
        r = reg.addr
    );
    let app = parse(None, &yaml, &Default::default(), &ComposePolicy::default()).unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let opts = UnpackOptions {
        preserve_ownership: false,
    };
    let images = prepare_images(&store, &client(&reg), &app, opts).unwrap();
    assert_eq!(images.len(), 2, "one pull per distinct image");
    let pa = &images[&a];
    assert!(pa.files.passwd.as_deref().unwrap().contains("app:x:1000"));
    assert!(images[&b].files.passwd.is_none());
    assert_eq!(
        std::fs::read(images[&b].rootfs.join("hello")).unwrap(),
        b"b"
    );
    let uid = cvm_workload::spec::resolve_user("one", "app", &pa.files).unwrap();
    assert_eq!(uid, (1000, 1000, vec![]));

    // Keeping only image a removes b's blobs and root, and nothing of a.
    let pb = images[&b].clone();
    let removed = store.retain(&[&pa.pulled]).unwrap();
    assert!(
        removed >= 4,
        "b's manifest, config, layer and root: {removed}"
    );
    assert!(!pb.rootfs.exists());
    assert!(!store.blob_path(&pb.pulled.layers[0].digest).exists());
    assert!(pa.rootfs.join("etc/passwd").exists());
    assert!(store.blob_path(&pa.pulled.layers[0].digest).exists());
    assert_eq!(store.retain(&[&pa.pulled]).unwrap(), 0);
}
