//! `cargo xtask <task>`: the project's build and test entry points.
//!
//! * `dist` — reproducible release build of the init and the initramfs into `dist/`, the dstack
//!   image bundle `dist/dstack-image/` (pinned OVMF and kernel, the initramfs, `metadata.json`,
//!   `sha256sum.txt`, `digest.txt` = `os_image_hash`), and `dist/SHA256SUMS` over all of them.
//! * `repro` — builds `dist` in the checkout and again in a fresh Debian 12 root made by
//!   debootstrap with only the `build` packages of `.ci/packages` (another root, path, time and
//!   `CARGO_HOME`), and compares the outputs byte for byte (`--no-fresh-root`: the second build
//!   in a copy of the tree on this system).
//! * `demo` — `dist`, then boots it in QEMU and prints the stage timeline.
//! * `test` — everything CI runs: fmt, clippy, host tests, every fuzz target over its corpus,
//!   static-link check, QEMU tests, one benchmark run, repro; prints each stage's wall time at
//!   the end.
//! * `fuzz [--seconds N]` — every fuzz target under libFuzzer (nightly, cargo-fuzz) for N s.
//! * `bench` — boot-time benchmark against a busybox baseline.
//!
//! Every task first installs the Debian packages it needs (`.ci/install-packages`, which reads
//! `.ci/packages`: the one list `.ci/run` uses too).
//! * `gpu-extension --tree DIR --out FILE` — the GPU driver extension image (EROFS + dm-verity
//!   tree) of a prepared driver tree; prints its root hash and `cvm.gpu_driver=<hash>`.
//! * `yocto-crates`, `yocto-fragment`, `yocto-check` — regenerate and check the Yocto layer's
//!   crate list and kernel fragment, lint the layer (`yocto/README.md`).

mod dist;
mod fresh_root;
mod gpu_extension;
mod packages;
mod sdk;
mod tasks;
mod yocto;

use anyhow::{Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        bail!("usage: cargo xtask <dist|repro|demo|test|bench|fuzz> [options]");
    };
    match task.as_str() {
        "dist" => dist::dist_cmd(rest),
        "repro" => tasks::repro(rest),
        "demo" => tasks::demo(rest),
        "test" => tasks::test(rest),
        "bench" => tasks::bench(rest),
        "fuzz" => tasks::fuzz(rest),
        "yocto-crates" => yocto::crates_cmd(rest),
        "yocto-fragment" => yocto::fragment_cmd(rest),
        "yocto-check" => yocto::check_cmd(rest),
        "gpu-extension" => gpu_extension::cmd(rest),
        other => bail!("unknown task `{other}`: expected dist, repro, demo, test, bench or fuzz"),
    }
}
