//! Runs every fuzz target as a plain test over its seed corpus (`seeds/<target>/`): each seed, its
//! prefixes, and deterministic byte mutations. Works on the stable toolchain, so CI exercises the
//! targets even where `cargo +nightly fuzz` is unavailable.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// Deterministic xorshift64, so a failure reproduces exactly.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed directory {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect()
}

fn run(target: &str, rounds: usize) {
    run_with(target, rounds, 256);
}

/// `run` with at most about `cuts` prefixes per seed (for targets that are slow unoptimized).
fn run_with(target: &str, rounds: usize, cuts: usize) {
    let (_, function) = init_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap();
    let seeds = seeds(target);
    assert!(!seeds.is_empty(), "no seeds for {target}");
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for (path, seed) in &seeds {
        eprintln!("{target}: {}", path.display());
        function(seed);
        // Prefixes: every length for short seeds, about `cuts` evenly spaced cuts otherwise.
        let step = (seed.len() / cuts).max(1);
        for end in (0..seed.len()).step_by(step) {
            function(&seed[..end]);
        }
        for _ in 0..rounds {
            let mut bytes = seed.clone();
            for _ in 0..=(next(&mut state) % 8) {
                let i = usize::try_from(next(&mut state) % bytes.len() as u64).unwrap();
                bytes[i] = u8::try_from(next(&mut state) & 0xFF).unwrap();
            }
            function(&bytes);
        }
    }
}

#[test]
fn every_target_has_seeds() {
    for (target, _) in init_fuzz::TARGETS {
        assert!(!seeds(target).is_empty(), "{target}");
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz_targets")
            .join(format!("{target}.rs"));
        assert!(source.exists(), "{}", source.display());
    }
}

#[test]
fn cmdline() {
    run("cmdline", 300);
}

#[test]
fn modules_load() {
    run("modules_load", 300);
}

#[test]
fn mountinfo() {
    run("mountinfo", 300);
}

#[test]
fn procfs_stat() {
    run("procfs_stat", 300);
}

#[test]
fn app_compose() {
    run("app_compose", 300);
}

#[test]
fn sys_config() {
    run("sys_config", 300);
}

#[test]
fn instance_info() {
    run("instance_info", 300);
}

#[test]
fn host_share_label() {
    run("host_share_label", 300);
}

#[test]
fn dhcp_reply() {
    run("dhcp_reply", 300);
}

#[test]
fn dns_response() {
    run("dns_response", 300);
}

#[test]
fn endpoint() {
    run("endpoint", 300);
}

#[test]
fn host_api() {
    run("host_api", 300);
}

#[test]
fn ratls_cert() {
    run("ratls_cert", 300);
}

#[test]
fn env_plaintext() {
    run("env_plaintext", 300);
}

#[test]
fn kms_http_response() {
    run("kms_http_response", 300);
}

#[test]
fn compose_yaml() {
    run("compose_yaml", 300);
}

#[test]
fn oci_document() {
    run("oci_document", 300);
}

#[test]
fn oci_config() {
    run("oci_config", 300);
}

#[test]
fn layer_tar() {
    run("layer_tar", 30);
}

#[test]
fn layer_tar_gz() {
    run("layer_tar_gz", 30);
}

#[test]
fn guest_api_request() {
    run("guest_api_request", 300);
}

#[test]
fn encrypted_env() {
    // Unoptimized X25519 is slow: a few prefixes and mutations per seed.
    run_with("encrypted_env", 10, 12);
}

#[test]
fn kms_reply() {
    run("kms_reply", 300);
}

#[test]
fn gateway_reply() {
    run("gateway_reply", 300);
}

#[test]
fn sign_cert_csr() {
    run("sign_cert_csr", 300);
}
