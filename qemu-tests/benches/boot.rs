//! Boot benchmark: cvm-init vs a busybox baseline under QEMU TCG (see `qemu_tests::bench`).
//!
//! ```text
//! RUSTFLAGS='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom" --cfg qemu_testenv' \
//!     cargo bench -p qemu-tests --target x86_64-unknown-linux-gnu -- --runs 5
//! ```
//!
//! Prints the tables and writes `target/qemu-bench/boot.json` and, for the boot to a first
//! container's output (`qemu_tests::first_container`), `target/qemu-bench/first-container.json`. Without `--cfg qemu_testenv`, or
//! when run by `cargo test --all-targets` (no `--bench` argument), it does nothing.

use std::process::ExitCode;

use qemu_tests::bench::{self, BenchConfig, RUNS_ENV};
use qemu_tests::first_container;
use qemu_tests::image::chain;
use qemu_tests::paths;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !cfg!(any(feature = "qemu", qemu_testenv)) {
        eprintln!("boot benchmark skipped: build with RUSTFLAGS including --cfg qemu_testenv");
        return ExitCode::SUCCESS;
    }
    if !args.iter().any(|arg| arg == "--bench") {
        eprintln!("boot benchmark skipped: not run by `cargo bench`");
        return ExitCode::SUCCESS;
    }
    let mut config = BenchConfig::default();
    let runs = args
        .iter()
        .position(|arg| arg == "--runs")
        .and_then(|index| args.get(index + 1).cloned())
        .or_else(|| std::env::var(RUNS_ENV).ok());
    if let Some(runs) = runs {
        match runs.parse() {
            Ok(runs) if runs > 0 => config.runs = runs,
            _ => {
                eprintln!("invalid run count {runs:?}");
                return ExitCode::FAILURE;
            }
        }
    }
    let report = match bench::run(&config) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("boot benchmark failed: {}", chain(&error));
            return ExitCode::FAILURE;
        }
    };
    println!("{report}");
    let dir = paths::workspace_root().join("target").join("qemu-bench");
    if let Err(error) = report.write_json(&dir.join("boot.json")) {
        eprintln!("{}", chain(&error));
        return ExitCode::FAILURE;
    }
    println!("report: {}", dir.join("boot.json").display());
    let first = qemu_tests::Artifacts::fetch()
        .map_err(|source| bench::BenchError::FetchArtifacts { source })
        .and_then(|artifacts| {
            let image = qemu_tests::test_image(&artifacts).map_err(|source| {
                bench::BenchError::BuildImage {
                    variant: "cvm-init",
                    source,
                }
            })?;
            first_container::run(&artifacts, &image, config.runs, config.timeout)
        });
    match first.and_then(|report| {
        bench::write_json(&report, &dir.join("first-container.json")).map(|()| report)
    }) {
        Ok(report) => {
            println!("{report}");
            println!("report: {}", dir.join("first-container.json").display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!(
                "boot-to-first-container benchmark failed: {}",
                chain(&error)
            );
            ExitCode::FAILURE
        }
    }
}
