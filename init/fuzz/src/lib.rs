//! One function per cargo-fuzz target of the init's parsers of untrusted bytes (`init-core`,
//! `cvm-keys`, `cvm-workload`, `guest-api`): the kernel command line, the module load list,
//! `/proc/self/mountinfo`, `/proc/<pid>/stat`, the host's app-compose.json / .sys-config.json /
//! .instance-info, the block-device label probe, DHCP/DNS replies, KMS replies and RA-TLS
//! certificates, the encrypted env, compose YAML, OCI documents, layer tar streams and the guest
//! API requests. Each parses and checks the invariants that must hold for any input. A panic is
//! a bug.
//!
//! The same functions run as plain tests over the seed corpus (`tests/seeds.rs`), so a stable
//! toolchain still exercises them when `cargo +nightly fuzz` is not available.

use init_core::app_compose::{AppComposeFile, InstanceInfo, SysConfig};
use init_core::cmdline::{self, TestHooks};
use init_core::{host_share, modules, mountinfo, procfs};

/// A fuzz target: any bytes in, a panic on a bug.
pub type Target = fn(&[u8]);

/// Every target: (name, function). The names are the `fuzz_targets/<name>.rs` binaries.
pub const TARGETS: &[(&str, Target)] = &[
    ("cmdline", cmdline),
    ("modules_load", modules_load),
    ("mountinfo", mountinfo),
    ("procfs_stat", procfs_stat),
    ("app_compose", app_compose),
    ("sys_config", sys_config),
    ("instance_info", instance_info),
    ("host_share_label", host_share_label),
    ("dhcp_reply", dhcp_reply),
    ("dns_response", dns_response),
    ("endpoint", endpoint),
    ("host_api", host_api),
    ("ratls_cert", ratls_cert),
    ("env_plaintext", env_plaintext),
    ("kms_http_response", kms_http_response),
    ("compose_yaml", compose_yaml),
    ("oci_document", oci_document),
    ("oci_config", oci_config),
    ("layer_tar", layer_tar),
    ("layer_tar_gz", layer_tar_gz),
    ("guest_api_request", guest_api_request),
    ("encrypted_env", encrypted_env),
    ("kms_reply", kms_reply),
    ("gateway_reply", gateway_reply),
    ("sign_cert_csr", sign_cert_csr),
];

/// A DHCP reply from the host network, as the client of transaction 0x01020304 on
/// 52:54:00:12:34:56 parses it; an accepted lease is a usable unicast address.
pub fn dhcp_reply(data: &[u8]) {
    use init_core::net::dhcp::Client;
    let client = Client::new([0x52, 0x54, 0, 0x12, 0x34, 0x56], 0x0102_0304);
    if let Ok(reply) = client.parse_reply(data) {
        let _ = client.request(&reply);
        if let Ok(config) = reply.to_config() {
            assert!(!config.address.is_unspecified() && !config.address.is_broadcast());
            assert!(config.prefix_len <= 32);
        }
    }
}

/// A DNS response to the A query (id 0x1234) for `kms.example.com`.
pub fn dns_response(data: &[u8]) {
    use init_core::net::dns;
    if let Ok(addresses) = dns::parse_response(data, 0x1234, "kms.example.com") {
        assert!(!addresses.is_empty());
    }
}

/// A `kms_urls` / registry URL from `.sys-config.json`.
pub fn endpoint(data: &[u8]) {
    use init_core::net::endpoint::Endpoint;
    let text = String::from_utf8_lossy(data);
    if let Ok(endpoint) = Endpoint::parse(&text) {
        assert_ne!(endpoint.port, 0);
        assert!(!endpoint.path.ends_with('/'));
    }
}

/// `host_api_url` from `.sys-config.json` (first line) and the VMM's reply to `Notify` (the
/// whole input): a parsed vsock URL has a path without `/` at its end, the reply parser decides
/// completeness and status without a panic whatever the headers say.
pub fn host_api(data: &[u8]) {
    use init_core::host_api::{Endpoint, Reply};
    let text = String::from_utf8_lossy(data);
    if let Ok(endpoint) = Endpoint::parse(text.lines().next().unwrap_or_default()) {
        assert!(!endpoint.path.ends_with('/'));
        assert!(endpoint.notify_target().ends_with("/Notify?json"));
    }
    let _ = Reply::progress(data);
    let _ = Reply::status(data);
}

/// Kernel command line (`/proc/cmdline`): test hooks only ever widen what is accepted.
pub fn cmdline(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = cmdline::split_words(&text);
    let release = cmdline::parse(&text, TestHooks::Disabled);
    let test = cmdline::parse(&text, TestHooks::Enabled);
    if let Ok(config) = &release {
        assert!(config.test_fault.is_none() && config.test_dump.is_empty() && config.test_gpu.is_none());
        assert!(
            test.is_ok(),
            "accepted without test hooks but not with them"
        );
    }
}

/// `/etc/cvm/modules.load`: every accepted entry is an absolute `.ko` path without `..`.
pub fn modules_load(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(paths) = modules::parse_load_list(&text) else {
        return;
    };
    for path in &paths {
        assert!(path.starts_with('/') && path.ends_with(".ko"), "{path:?}");
        assert!(!path.split('/').any(|part| part == ".."), "{path:?}");
        let _ = modules::module_name(path);
    }
}

/// `/proc/self/mountinfo`, then the unmount order computed from it.
pub fn mountinfo(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(entries) = mountinfo::parse(&text) else {
        return;
    };
    let order = mountinfo::unmount_order(&entries);
    assert!(order.len() <= entries.len());
}

/// `/proc/<pid>/stat` and `/proc` directory names.
pub fn procfs_stat(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = procfs::parse_stat(&text);
    let _ = procfs::is_pid_dir(&text);
}

/// app-compose.json from the host share (the compose-hash covers the exact bytes).
pub fn app_compose(data: &[u8]) {
    if let Ok(file) = AppComposeFile::parse(data.to_vec()) {
        assert_eq!(file.bytes(), data, "app-compose bytes changed");
        let compose = file.compose();
        let _ = compose.manifest_version();
        let _ = compose.init_scripts();
        let _ = compose.key_provider_kind();
        let _ = compose.event_log_version();
        let _ = compose.storage_fs();
        let _ = compose.runner();
    }
}

/// .sys-config.json from the host share (with its nested vm_config string).
pub fn sys_config(data: &[u8]) {
    let _ = SysConfig::parse(data);
}

/// .instance-info from the host share.
pub fn instance_info(data: &[u8]) {
    let _ = InstanceInfo::parse(data);
}

/// The first bytes of a block device: filesystem type and label (ext2/3/4, FAT).
pub fn host_share_label(data: &[u8]) {
    let head = &data[..data.len().min(host_share::LABEL_PROBE_LEN)];
    if let Some((_, label)) = host_share::filesystem_label(head) {
        // At most 16 bytes on disk; invalid UTF-8 becomes U+FFFD, so count characters.
        assert!(label.chars().count() <= 16, "{label:?}");
    }
    let _ = host_share::is_host_share_device(head);
}

/// A DER certificate with the dstack RA-TLS extensions (a KMS or peer certificate).
pub fn ratls_cert(data: &[u8]) {
    let _ = cvm_keys::ratls::RaTlsCert::parse(data);
}

/// The decrypted `.encrypted-env` plaintext: every accepted name is valid and allowed, no value
/// has a NUL.
pub fn env_plaintext(data: &[u8]) {
    use cvm_keys::env::{DisallowedEnv, is_valid_name, parse_env};
    let allowed = vec!["API_KEY".to_owned(), "MODE".to_owned()];
    for policy in [DisallowedEnv::Reject, DisallowedEnv::Skip] {
        if let Ok(env) = parse_env(data, &allowed, policy) {
            for name in env.names() {
                assert!(
                    is_valid_name(name) && allowed.iter().any(|a| a == name),
                    "{name}"
                );
            }
        }
    }
}

/// A raw HTTP response from a KMS.
pub fn kms_http_response(data: &[u8]) {
    let _ = cvm_keys::transport::parse_response(data);
}

/// The app's docker-compose file (from app-compose.json, attacker-influenced through the host
/// only via the measured compose-hash, but parsed before anything runs).
pub fn compose_yaml(data: &[u8]) {
    use cvm_workload::compose::{ComposePolicy, parse};
    let text = String::from_utf8_lossy(data);
    let env = std::collections::BTreeMap::from([("API_KEY".to_owned(), "x".to_owned())]);
    let _ = parse(None, &text, &env, &ComposePolicy::default());
}

/// An OCI manifest or index from a registry.
pub fn oci_document(data: &[u8]) {
    let _ = cvm_workload::oci::parse_document(data, None);
    let _ =
        cvm_workload::oci::parse_document(data, Some("application/vnd.oci.image.index.v1+json"));
}

/// An OCI image configuration from a registry.
pub fn oci_config(data: &[u8]) {
    for layers in [0, 1, 3] {
        let _ = cvm_workload::oci::parse_config(data, layers);
    }
}

/// A scratch directory per input for the layer targets: `<dir>/root` is unpacked into, `<dir>`
/// also holds a `sentinel/` sibling that must stay empty, and `root` starts with symlinks that
/// point at the sentinel (relative and absolute), so an applier that followed them outside the
/// root would write there.
struct LayerScratch {
    dir: std::path::PathBuf,
}

impl LayerScratch {
    fn new() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "init-fuzz-layer-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let scratch = Self { dir };
        scratch.remove();
        let made = std::fs::create_dir_all(scratch.root())
            .and_then(|()| std::fs::create_dir(scratch.sentinel()))
            .and_then(|()| std::os::unix::fs::symlink("../sentinel", scratch.root().join("up")))
            .and_then(|()| {
                std::os::unix::fs::symlink(scratch.sentinel(), scratch.root().join("abs"))
            });
        if let Err(e) = made {
            panic!("scratch directory {}: {e}", scratch.dir.display());
        }
        scratch
    }

    fn root(&self) -> std::path::PathBuf {
        self.dir.join("root")
    }

    fn sentinel(&self) -> std::path::PathBuf {
        self.dir.join("sentinel")
    }

    /// Nothing appeared next to the root or in the sentinel.
    fn assert_contained(&self) {
        let mut names: Vec<_> = std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        names.sort();
        let blob = std::ffi::OsString::from("blob");
        names.retain(|n| *n != blob);
        assert_eq!(
            names,
            ["root", "sentinel"],
            "a layer wrote next to the root"
        );
        let escaped = std::fs::read_dir(self.sentinel()).map(|mut d| d.next().is_some());
        assert!(
            matches!(escaped, Ok(false)),
            "a layer wrote outside the root (into the sentinel)"
        );
    }

    /// Makes every directory traversable again (a layer may chmod 000), then removes the tree.
    fn remove(&self) {
        fn open_up(path: &std::path::Path) {
            use std::os::unix::fs::PermissionsExt as _;
            let Ok(meta) = std::fs::symlink_metadata(path) else {
                return;
            };
            if !meta.is_dir() {
                return;
            }
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
            if let Ok(entries) = std::fs::read_dir(path) {
                for entry in entries.filter_map(Result::ok) {
                    open_up(&entry.path());
                }
            }
        }
        open_up(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for LayerScratch {
    fn drop(&mut self) {
        self.remove();
    }
}

fn unpack_options() -> cvm_workload::unpack::UnpackOptions {
    use std::os::unix::fs::MetadataExt as _;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    cvm_workload::unpack::UnpackOptions {
        preserve_ownership: root,
    }
}

/// An uncompressed OCI layer (tar stream) applied onto a root directory with
/// `unpack::apply_tar`: whatever the entries (`..`, absolute names, symlinks then writes through
/// them, hard links, whiteouts), nothing is written outside the root.
pub fn layer_tar(data: &[u8]) {
    use cvm_workload::digest::Sha256Digest;
    let scratch = LayerScratch::new();
    let _ = cvm_workload::unpack::apply_tar(
        &scratch.root(),
        Sha256Digest([0; 32]),
        data,
        unpack_options(),
    );
    scratch.assert_contained();
}

/// Largest decompressed stream the compressed-layer target hashes for its diff_id.
const MAX_LAYER_TAR: u64 = 16 << 20;

/// A compressed OCI layer blob (gzip; zstd when it starts with the zstd magic) through the real
/// entry `unpack::apply_layer_file`, with the blob's true digest and diff_id so the tar is
/// applied; nothing is written outside the root.
pub fn layer_tar_gz(data: &[u8]) {
    use cvm_workload::digest::Sha256Digest;
    use cvm_workload::oci::Compression;
    use sha2::{Digest as _, Sha256};
    use std::io::Read as _;
    let scratch = LayerScratch::new();
    let compression = if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::Gzip
    };
    // The diff_id: the digest of the decompressed stream (what the config would list).
    let decoded: Option<Box<dyn std::io::Read>> = match compression {
        Compression::Zstd => zstd::stream::read::Decoder::new(data)
            .ok()
            .map(|d| Box::new(d) as Box<dyn std::io::Read>),
        _ => Some(Box::new(flate2::read::MultiGzDecoder::new(data))),
    };
    let mut tar = Vec::new();
    let diff_id = match decoded.map(|d| d.take(MAX_LAYER_TAR).read_to_end(&mut tar)) {
        Some(Ok(_)) => Sha256Digest(Sha256::digest(&tar).into()),
        _ => Sha256Digest([0; 32]),
    };
    let path = scratch.dir.join("blob");
    if let Err(e) = std::fs::write(&path, data) {
        panic!("write {}: {e}", path.display());
    }
    let layer = cvm_workload::pull::PulledLayer {
        digest: Sha256Digest(Sha256::digest(data).into()),
        size: data.len() as u64,
        compression,
        diff_id,
        path,
    };
    let _ = cvm_workload::unpack::apply_layer_file(&scratch.root(), &layer, unpack_options());
    scratch.assert_contained();
}

/// A guest API request as it arrives on `dstack.sock` / `tappd.sock`: HTTP framing
/// (`http::parse_request`), the GET query, then the JSON arguments of every method for both
/// services (`service::check_arguments`: GetQuote, EmitEvent, GetKey, GetTlsKey, TdxQuote,
/// RawQuote…). Invariants: a framed request uses no more bytes than given and its body is
/// exactly `Content-Length`; every refusal maps to a 4xx/5xx status.
pub fn guest_api_request(data: &[u8]) {
    use guest_api::http::{self, Limits};
    use guest_api::service::{Service, check_arguments};
    let limits = Limits::default();
    let request = match http::parse_request(data, &limits) {
        Ok(Some((request, used))) => {
            assert!(used <= data.len());
            assert_eq!(request.body.len(), request.head.content_length);
            assert!(request.body.len() <= limits.max_body_bytes);
            request
        }
        Ok(None) => return,
        Err(e) => {
            if let Some(status) = e.status() {
                assert!((400..600).contains(&status.code()), "{e}");
            }
            return;
        }
    };
    if let Some(query) = &request.head.query {
        let _ = http::query_to_json(query);
    }
    for service in [Service::DstackGuest, Service::Tappd] {
        if let Err(e) = check_arguments(service, &request) {
            assert!((400..600).contains(&e.status().code()), "{e}");
        }
    }
}

/// The env key of the `encrypted_env` target (X25519 secret): `env_crypt_key` of dstack's
/// `test_dh_decrypt` vector (`init/keys/testdata/crypto-and-appinfo-vectors.json`).
pub const ENV_KEY: [u8; 32] = [
    0x7c, 0x28, 0x2b, 0xf9, 0x4b, 0x35, 0xdc, 0x47, 0x80, 0x1d, 0xc9, 0x53, 0xbf, 0xa0, 0x89, 0x6f,
    0xc2, 0xbd, 0x31, 0x33, 0x81, 0xd3, 0xe8, 0xec, 0xa4, 0xe4, 0x2f, 0x65, 0x36, 0xd2, 0xa9, 0x6f,
];

/// `.encrypted-env` (X25519 ephemeral key ‖ 12-byte IV ‖ AES-256-GCM ciphertext and tag) with a
/// fixed env key, then the plaintext check with `allowed_envs`. With random bytes the tag almost
/// never verifies, so the input is also sealed to the key as a plaintext (its first byte picks
/// the ephemeral key) to drive the `allowed_envs` path through `decrypt_env`.
pub fn encrypted_env(data: &[u8]) {
    use cvm_keys::env::{
        DisallowedEnv, decrypt_blob, decrypt_env, encrypt_blob_with, is_valid_name, parse_env,
    };
    use cvm_keys::secret::Secret;
    let key = Secret::new(ENV_KEY);
    let allowed = vec!["API_KEY".to_owned(), "MODE".to_owned()];
    let check = |blob: &[u8]| {
        // One X25519 agreement per blob: `decrypt_env` (what the init calls) with `Reject`, the
        // plaintext again with `Skip` only once the envelope opened.
        let rejected = decrypt_env(&key, Some(blob), &allowed, DisallowedEnv::Reject);
        if let Ok(env) = &rejected {
            assert!(env.skipped.is_empty());
        }
        let Ok(plaintext) = decrypt_blob(&key, blob) else {
            assert!(
                rejected.is_err(),
                "decrypt_env accepted what decrypt_blob refused"
            );
            return;
        };
        let skipped = parse_env(plaintext.expose(), &allowed, DisallowedEnv::Skip);
        for env in [rejected.ok(), skipped.ok()].into_iter().flatten() {
            for name in env.names() {
                assert!(
                    is_valid_name(name) && allowed.iter().any(|a| a == name),
                    "{name}"
                );
            }
        }
    };
    check(data);
    let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(ENV_KEY));
    let ephemeral = Secret::new([data.first().copied().unwrap_or(1) | 1; 32]);
    if let Ok(blob) = encrypt_blob_with(public.as_bytes(), &ephemeral, &[7; 12], data) {
        check(&blob);
    }
}

/// The JSON bodies a KMS answers with: a `GetAppKey` reply (its `ca_cert` PEM and hex keys), a
/// `SignCert` certificate chain (checked against a fixed root at a pinned time), and the
/// `.appkeys.json` the init writes for the guest API.
pub fn kms_reply(data: &[u8]) {
    use cvm_keys::kms::{AppKeyResponse, GuestKeys, certificate_der_and_spki, pem_block};
    if let Ok(reply) = serde_json::from_slice::<AppKeyResponse>(data) {
        let _ = certificate_der_and_spki(&reply.ca_cert);
        for field in [&reply.disk_crypt_key, &reply.env_crypt_key, &reply.k256_key] {
            let _ = hex::decode(field);
        }
    }
    if let Ok(chain) = serde_json::from_slice::<Vec<String>>(data) {
        let root = chain
            .last()
            .and_then(|pem| certificate_der_and_spki(pem))
            .map(|(der, _)| der)
            .unwrap_or_default();
        let leaf = chain
            .first()
            .and_then(|pem| certificate_der_and_spki(pem))
            .map(|(_, spki)| spki)
            .unwrap_or_default();
        // 2026-01-01T00:00:00Z.
        let _ = cvm_keys::sign_cert::verify_chain(&chain, &root, &leaf, 1_767_225_600);
    }
    let _ = GuestKeys::from_appkeys_json(data);
    let text = String::from_utf8_lossy(data);
    let _ = pem_block(&text, "CERTIFICATE");
}

/// A SCALE `CertSigningRequestV2` (the `csr` of `SignCert`, as the test KMS decodes it): a
/// decoded request re-encodes to exactly the input.
pub fn sign_cert_csr(data: &[u8]) {
    use cvm_keys::sign_cert::CertSigningRequest;
    if let Ok(csr) = CertSigningRequest::decode(data) {
        assert_eq!(csr.encode(), data, "CSR re-encoding");
    }
}

/// A dstack-gateway `RegisterCvm` reply body: a checked tunnel configuration has 1 to the
/// bounded number of peers, every peer a port and a non-empty endpoint host. The same bytes
/// as the guest API's `GetTlsKey` reply the gateway refresher renews its certificate from: an
/// accepted one has a bounded, non-empty chain.
pub fn gateway_reply(data: &[u8]) {
    if let Ok(config) = init_core::gateway::parse_response(data) {
        assert!(!config.peers.is_empty());
        for peer in &config.peers {
            assert!(!peer.endpoint_host.is_empty() && peer.endpoint_host.len() <= 253);
        }
    }
    if let Ok(tls) = cvm_keys::gateway::parse_get_tls_key_reply(data) {
        assert!(
            !tls.certificate_chain.is_empty()
                && tls.certificate_chain.len() <= cvm_keys::sign_cert::MAX_CHAIN_LEN
        );
    }
}
