//! Benchmark (ignored by default): pull + unpack of a generated multi-layer image of at least
//! 200 MB from the loopback registry, against `skopeo copy` + `umoci unpack` of the same image:
//! the streaming path (`pull_and_unpack`, what the init uses), the earlier sequential path
//! (`pull` then `unpack_image`) and the tools, five runs each in round robin, one table of
//! medians and ratios.
//!
//! ```sh
//! cargo test --release -p cvm-workload --test bench -- --ignored --nocapture bench_pull_unpack
//! ```
//! `BENCH_RUNS=N` changes the number of runs, `BENCH_CONCURRENCY=N` the streaming path's
//! concurrent downloads (default 3).
//! Needs `/usr/bin/docker-registry`, `/usr/bin/time`, and for the comparison `skopeo` and
//! `umoci` (Debian packages of the same names).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::*;
use cvm_workload::digest::{ImageRef, Sha256Digest};
use cvm_workload::oci::media;
use cvm_workload::pull::{PullOptions, Store, pull_with_options};
use cvm_workload::registry::{RegistryClient, RegistryConfig};
use cvm_workload::stream::{StreamOptions, pull_and_unpack};
use cvm_workload::unpack::{UnpackOptions, unpack_image};
use sha2::Digest as _;

const LAYERS: usize = 8;
const FILES_PER_LAYER: usize = 300;
const FILE_SIZE: usize = 100 * 1024;
/// Runs of each contender (`BENCH_RUNS` overrides); the table shows the median.
const RUNS: usize = 5;

struct HashingWriter<W: Write> {
    inner: W,
    hasher: sha2::Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes one gzip layer to `path`; returns (blob digest, blob size, diff_id, tar size).
fn write_layer(
    path: &Path,
    layer: usize,
    seed: &mut u64,
) -> (Sha256Digest, u64, Sha256Digest, u64) {
    let blob = HashingWriter {
        inner: BufWriter::new(File::create(path).unwrap()),
        hasher: sha2::Sha256::new(),
        bytes: 0,
    };
    let gz = flate2::write::GzEncoder::new(blob, flate2::Compression::fast());
    let tar_out = HashingWriter {
        inner: gz,
        hasher: sha2::Sha256::new(),
        bytes: 0,
    };
    let mut builder = tar::Builder::new(tar_out);
    let mut data = vec![0u8; FILE_SIZE];
    let dir = format!("data/layer{layer}");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    builder
        .append_data(&mut h, "data", std::io::empty())
        .unwrap();
    builder.append_data(&mut h, &dir, std::io::empty()).unwrap();
    for f in 0..FILES_PER_LAYER {
        // Half incompressible (xorshift), half text: roughly what binaries + assets look like.
        for chunk in data[..FILE_SIZE / 2].chunks_mut(8) {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
        }
        for (i, b) in data[FILE_SIZE / 2..].iter_mut().enumerate() {
            *b = b"lorem ipsum dolor sit amet\n"[(i + f) % 27];
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(FILE_SIZE as u64);
        h.set_mtime(1_700_000_000);
        builder
            .append_data(&mut h, format!("{dir}/file{f:04}"), &data[..])
            .unwrap();
    }
    let tar_out = builder.into_inner().unwrap();
    let diff_id = Sha256Digest(tar_out.hasher.finalize().into());
    let tar_size = tar_out.bytes;
    let mut blob = tar_out.inner.finish().unwrap();
    blob.flush().unwrap();
    (
        Sha256Digest(blob.hasher.finalize().into()),
        blob.bytes,
        diff_id,
        tar_size,
    )
}

/// Runs `/usr/bin/time -f "%e %M %U %S" ...`; returns (wall s, peak RSS KiB, CPU s).
fn timed(cmd: &mut Command) -> (f64, u64, f64) {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines().filter(|l| l.starts_with("ours:")) {
        eprintln!("{line}");
    }
    assert!(out.status.success(), "{cmd:?} failed: {stderr}");
    // `/usr/bin/time -f "%e %M %U %S"` prints its line last.
    let last = stderr.lines().last().unwrap();
    let mut parts = last.split_whitespace();
    let secs: f64 = parts.next().unwrap().parse().unwrap();
    let kib: u64 = parts.next().unwrap().parse().unwrap();
    let user: f64 = parts.next().unwrap().parse().unwrap();
    let system: f64 = parts.next().unwrap().parse().unwrap();
    (secs, kib, user + system)
}

#[test]
#[ignore = "benchmark: run explicitly with --ignored (release build)"]
fn bench_pull_unpack() {
    let Some(reg) = Registry::start() else { return };
    let work = tempfile::tempdir().unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut total_tar = 0;
    let mut total_blob = 0;
    let t = Instant::now();
    for l in 0..LAYERS {
        let path = work.path().join(format!("layer{l}.tar.gz"));
        let (digest, size, diff_id, tar_size) = write_layer(&path, l, &mut seed);
        reg.push_blob_file("bench/big", &path, digest);
        std::fs::remove_file(&path).unwrap();
        descs.push((
            digest,
            usize::try_from(size).unwrap(),
            media::OCI_LAYER_GZIP,
        ));
        diff_ids.push(diff_id);
        total_tar += tar_size;
        total_blob += size;
    }
    let config = config_json("amd64", &diff_ids, r#"{"Cmd":["/bin/sh"]}"#);
    let cd = reg.push_blob("bench/big", &config);
    let manifest = manifest_json((&cd, config.len()), &descs);
    let md = reg.push_manifest("bench/big", "latest", media::OCI_MANIFEST, &manifest);
    eprintln!(
        "image: {LAYERS} layers, {:.1} MB uncompressed, {:.1} MB gzip (generated + pushed in {:.1} s)",
        total_tar as f64 / 1e6,
        total_blob as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    assert!(total_tar >= 200_000_000);
    let reference = format!("{}/bench/big@{md}", reg.addr);

    let have_tools = Command::new("skopeo").arg("--version").output().is_ok()
        && Command::new("umoci").arg("--version").output().is_ok();
    if !have_tools {
        eprintln!("skopeo/umoci not installed: no comparison (apt-get install skopeo umoci)");
    }
    // Round robin, so that a neighbour's load hits every contender alike.
    let runs = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(RUNS);
    let mut stream = Vec::new();
    let mut sequential = Vec::new();
    let mut theirs = Vec::new();
    for run in 0..runs {
        for (mode, out) in [("stream", &mut stream), ("sequential", &mut sequential)] {
            // Ours, in a child process so that its peak RSS is only the pull's.
            let store = work.path().join(format!("ours-{mode}"));
            let (secs, kib, cpu) = timed(
                Command::new("/usr/bin/time")
                    .args(["-f", "%e %M %U %S"])
                    .arg(std::env::current_exe().unwrap())
                    .args([
                        "--exact",
                        "bench_child",
                        "--ignored",
                        "--nocapture",
                        "--test-threads=1",
                    ])
                    .env("BENCH_REF", &reference)
                    .env("BENCH_STORE", &store)
                    .env("BENCH_HOST", &reg.addr)
                    .env("BENCH_MODE", mode),
            );
            let sample = std::fs::read(
                store
                    .join("rootfs")
                    .join(md.hex())
                    .join("data/layer3/file0007"),
            )
            .unwrap();
            std::fs::remove_dir_all(&store).unwrap();
            out.push(Run {
                secs,
                kib,
                cpu,
                parts: (0.0, 0.0),
                sample,
            });
        }
        if !have_tools {
            continue;
        }
        let layout = work.path().join("layout");
        let bundle = work.path().join("bundle");
        let (copy_s, copy_kib, copy_cpu) = timed(
            Command::new("/usr/bin/time")
                .args([
                    "-f",
                    "%e %M %U %S",
                    "skopeo",
                    "copy",
                    "--quiet",
                    "--src-tls-verify=false",
                ])
                .arg(format!("docker://{reference}"))
                .arg(format!("oci:{}:bench", layout.display())),
        );
        let (unpack_s, unpack_kib, unpack_cpu) = timed(
            Command::new("/usr/bin/time")
                .args(["-f", "%e %M %U %S", "umoci", "unpack", "--image"])
                .arg(format!("{}:bench", layout.display()))
                .arg(&bundle),
        );
        let sample = std::fs::read(bundle.join("rootfs/data/layer3/file0007")).unwrap();
        std::fs::remove_dir_all(&layout).unwrap();
        std::fs::remove_dir_all(&bundle).unwrap();
        theirs.push(Run {
            secs: copy_s + unpack_s,
            kib: copy_kib.max(unpack_kib),
            cpu: copy_cpu + unpack_cpu,
            parts: (copy_s, unpack_s),
            sample,
        });
        eprintln!("run {}/{runs} done", run + 1);
    }
    // Same content on disk.
    for r in stream.iter().chain(&sequential).chain(&theirs) {
        assert_eq!(r.sample, stream[0].sample);
    }
    let median = |runs: &[Run], f: &dyn Fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let secs = |r: &Run| r.secs;
    let mb = |r: &Run| r.kib as f64 / 1024.0;
    let base = (!theirs.is_empty()).then(|| (median(&theirs, &secs).0, median(&theirs, &mb).0));
    eprintln!();
    eprintln!(
        "pull + unpack, {LAYERS} layers, {:.0} MB, loopback registry, median of {runs} (min-max)",
        total_tar as f64 / 1e6
    );
    eprintln!(
        "| {:<40} | {:>19} | {:>11} | {:>6} | {:>10} | {:>9} |",
        "", "time s", "peak RSS MB", "CPU s", "time ratio", "RSS ratio"
    );
    eprintln!(
        "|{:-<42}|{:-<21}|{:-<13}|{:-<8}|{:-<12}|{:-<11}|",
        "", "", "", "", "", ""
    );
    let row = |name: &str, runs: &[Run]| {
        let (t, t0, t1) = median(runs, &secs);
        let (m, _, _) = median(runs, &mb);
        let (c, _, _) = median(runs, &|r: &Run| r.cpu);
        let (tr, mr) = base.map_or(("-".to_owned(), "-".to_owned()), |(bt, bm)| {
            (format!("{:.2}", t / bt), format!("{:.2}", m / bm))
        });
        eprintln!(
            "| {name:<40} | {:>19} | {m:>11.1} | {c:>6.2} | {tr:>10} | {mr:>9} |",
            format!("{t:.2} ({t0:.2}-{t1:.2})")
        );
    };
    row("cvm-workload streaming (pull_and_unpack)", &stream);
    row("cvm-workload sequential (pull, unpack)", &sequential);
    if !theirs.is_empty() {
        row("skopeo copy + umoci unpack", &theirs);
        let (c, _, _) = median(&theirs, &|r: &Run| r.parts.0);
        let (u, _, _) = median(&theirs, &|r: &Run| r.parts.1);
        eprintln!(
            "(skopeo copy {c:.2} s + umoci unpack {u:.2} s; their RSS is the larger of the two)"
        );
    }
    // For `cargo xtask bench`'s summary table.
    if let Ok(path) = std::env::var("BENCH_JSON") {
        let summary = |runs: &[Run]| {
            serde_json::json!({
                "median_s": median(runs, &secs).0,
                "peak_rss_mb": median(runs, &mb).0,
            })
        };
        let json = serde_json::json!({
            "runs": runs,
            "layers": LAYERS,
            "megabytes": total_tar as f64 / 1e6,
            "stream": summary(&stream),
            "sequential": summary(&sequential),
            "baseline": (!theirs.is_empty()).then(|| summary(&theirs)),
            "time_ratio": base.map(|(bt, _)| median(&stream, &secs).0 / bt),
            "rss_ratio": base.map(|(_, bm)| median(&stream, &mb).0 / bm),
        });
        std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap() + "\n").unwrap();
        eprintln!("summary: {path}");
    }
}

struct Run {
    secs: f64,
    kib: u64,
    /// User + system CPU seconds.
    cpu: f64,
    /// skopeo copy, umoci unpack.
    parts: (f64, f64),
    sample: Vec<u8>,
}

/// The measured child of `bench_pull_unpack`.
#[test]
#[ignore = "child process of bench_pull_unpack"]
fn bench_child() {
    let (Ok(reference), Ok(store), Ok(host)) = (
        std::env::var("BENCH_REF"),
        std::env::var("BENCH_STORE"),
        std::env::var("BENCH_HOST"),
    ) else {
        return;
    };
    let image = ImageRef::parse(&reference).unwrap();
    let client = RegistryClient::new(RegistryConfig {
        plain_http_hosts: vec![host],
        ..RegistryConfig::default()
    });
    let store = Store::open(Path::new(&store)).unwrap();
    let t = Instant::now();
    let root = if std::env::var("BENCH_MODE").as_deref() == Ok("sequential") {
        // The earlier path: download every layer, then unpack (diff_ids verified once, by the
        // unpacker).
        let pull_options = PullOptions {
            verify_diff_ids: false,
        };
        let pulled = pull_with_options(&store, &client, &image, pull_options).unwrap();
        let pull_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let root = unpack_image(&store, &pulled, UnpackOptions::default()).unwrap();
        eprintln!(
            "ours: sequential: pull {pull_s:.2} s ({} MB), unpack {:.2} s",
            pulled.downloaded_bytes / 1_000_000,
            t.elapsed().as_secs_f64(),
        );
        root
    } else {
        let mut options = StreamOptions::default();
        if let Some(n) = std::env::var("BENCH_CONCURRENCY")
            .ok()
            .and_then(|n| n.parse().ok())
        {
            options.concurrency = n;
        }
        let done = pull_and_unpack(&store, &client, &image, options).unwrap();
        eprintln!(
            "ours: streaming: pull + unpack {:.2} s ({} MB)",
            t.elapsed().as_secs_f64(),
            done.pulled.downloaded_bytes / 1_000_000,
        );
        done.rootfs
    };
    let mut f = File::open(root.join("data/layer0/file0000")).unwrap();
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).unwrap();
    assert_eq!(buf.len(), FILE_SIZE);
}
