//! One function per cargo-fuzz target of `init-core`'s parsers of untrusted bytes: the kernel
//! command line, the module load list, `/proc/self/mountinfo`, `/proc/<pid>/stat`, the host's
//! app-compose.json / .sys-config.json / .instance-info and the block-device label probe. Each
//! parses and checks the invariants that must hold for any input. A panic is a bug.
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
    ("ratls_cert", ratls_cert),
    ("env_plaintext", env_plaintext),
    ("kms_http_response", kms_http_response),
    ("compose_yaml", compose_yaml),
    ("oci_document", oci_document),
    ("oci_config", oci_config),
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

/// Kernel command line (`/proc/cmdline`): test hooks only ever widen what is accepted.
pub fn cmdline(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = cmdline::split_words(&text);
    let release = cmdline::parse(&text, TestHooks::Disabled);
    let test = cmdline::parse(&text, TestHooks::Enabled);
    if let Ok(config) = &release {
        assert!(config.test_fault.is_none() && config.test_dump.is_empty());
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
                assert!(is_valid_name(name) && allowed.iter().any(|a| a == name), "{name}");
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
    let _ = cvm_workload::oci::parse_document(
        data,
        Some("application/vnd.oci.image.index.v1+json"),
    );
}

/// An OCI image configuration from a registry.
pub fn oci_config(data: &[u8]) {
    for layers in [0, 1, 3] {
        let _ = cvm_workload::oci::parse_config(data, layers);
    }
}
