//! Boot benchmark: cvm-init vs a busybox baseline under QEMU TCG (see `qemu_tests::bench`).
//!
//! ```text
//! RUSTFLAGS='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom" --cfg qemu_testenv' \
//!     cargo bench -p qemu-tests --target x86_64-unknown-linux-gnu -- --runs 5
//! ```
//!
//! Prints the table and writes `target/qemu-bench/boot.json`. Without `--cfg qemu_testenv`, or
//! when run by `cargo test --all-targets` (no `--bench` argument), it does nothing.

use std::process::ExitCode;

use qemu_tests::bench::{self, BenchConfig, RUNS_ENV};
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
    match bench::run(&config) {
        Ok(report) => {
            println!("{report}");
            let json = paths::workspace_root()
                .join("target")
                .join("qemu-bench")
                .join("boot.json");
            if let Err(error) = report.write_json(&json) {
                eprintln!("{}", chain(&error));
                return ExitCode::FAILURE;
            }
            println!("report: {}", json.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("boot benchmark failed: {}", chain(&error));
            ExitCode::FAILURE
        }
    }
}
