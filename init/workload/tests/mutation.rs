//! Cheap stand-in for fuzzing (the cargo-fuzz crates live in init/fuzz): thousands of mutated
//! manifests, configs, compose files and tar streams must give errors, never panics.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::collections::BTreeMap;

use common::*;
use cvm_workload::compose::{ComposePolicy, parse};
use cvm_workload::digest::Sha256Digest;
use cvm_workload::oci::{media, parse_config, parse_document};
use cvm_workload::unpack::{UnpackOptions, apply_tar};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap()
    }
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(4) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = u8::try_from(rng.next() & 0xff).unwrap();
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out.truncate(i);
            }
            2 => {
                let i = rng.below(out.len() + 1);
                let alphabet = b"{}[]\":,0-9$\n {";
                let b = alphabet[rng.below(alphabet.len())];
                out.insert(i, b);
            }
            _ if out.len() > 2 => {
                let a = rng.below(out.len());
                let b = rng.below(out.len());
                out.swap(a, b);
            }
            _ => {}
        }
    }
    out
}

#[test]
fn mutated_documents_never_panic() {
    let d = Sha256Digest::of(b"x");
    let manifest = manifest_json((&d, 10), &[(d, 20, media::OCI_LAYER_GZIP)]);
    let index = index_json(&[(d, 5, "amd64")]);
    let config = config_json("amd64", &[d], r#"{"Env":["A=b"],"Cmd":["sh"]}"#);
    let compose = format!(
        "services:\n  a:\n    image: x@{d}\n    environment: [\"A=${{B:-c}}\"]\n    ports: [\"80:80\"]\n    depends_on:\n      b: {{condition: service_healthy}}\n  b:\n    image: y@{d}\n    healthcheck: {{test: [\"CMD\", \"true\"], interval: 1s}}\nvolumes:\n  v: {{}}\n"
    );
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let env = BTreeMap::new();
    let mut accepted = 0;
    for _ in 0..3000 {
        for doc in [&manifest, &index] {
            if parse_document(&mutate(&mut rng, doc), None).is_ok() {
                accepted += 1;
            }
        }
        let _ = parse_config(&mutate(&mut rng, &config), 1);
        let text = String::from_utf8_lossy(&mutate(&mut rng, compose.as_bytes())).into_owned();
        let _ = parse(None, &text, &env, &ComposePolicy::default());
    }
    // The mutations are not all fatal: some inputs still parse, so the loop exercised both paths.
    assert!(accepted > 0);
}

#[test]
fn mutated_tar_streams_never_panic_or_escape() {
    let tar = Layer::new()
        .dir("d")
        .file("d/f", 0o644, b"hello")
        .symlink("l", "/d")
        .hardlink("h", "d/f")
        .file("d/.wh.f", 0o644, b"")
        .tar();
    let mut rng = Rng(42);
    let dir = tempfile::tempdir().unwrap();
    let opts = UnpackOptions {
        preserve_ownership: false,
    };
    for i in 0..300 {
        let root = dir.path().join(format!("r{i}"));
        std::fs::create_dir(&root).unwrap();
        let input = mutate(&mut rng, &tar);
        let _ = apply_tar(&root, Sha256Digest::of(&input), &input[..], opts);
    }
    // Nothing landed beside the roots.
    let stray: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('r'))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}
