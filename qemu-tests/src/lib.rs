//! QEMU (TCG) harness for cvm-init: pinned artifacts, the image under test, a `TestVm` builder,
//! the typed results channel, and the boot benchmark.
//!
//! The integration tests in `tests/` only build with the feature `qemu` (`cargo test -p
//! qemu-tests --features qemu --target x86_64-unknown-linux-gnu`), `--cfg qemu_testenv`, or
//! under clippy:
//!
//! ```text
//! RUSTFLAGS='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom" --cfg qemu_testenv' \
//!     cargo test -p qemu-tests --target x86_64-unknown-linux-gnu
//! ```

pub mod artifacts;
pub mod bench;
pub mod cpio;
pub mod data_disk;
pub mod demo;
pub mod first_container;
pub mod host_api;
pub mod host_share;
pub mod image;
pub mod matrix;
pub mod paths;
pub mod proxy;
pub mod registry;
pub mod results;
pub mod testing;
pub mod vhost_vsock;
pub mod vm;

pub use artifacts::{ArtifactError, Artifacts};
pub use image::{ImageError, TestImage, baseline_image, init_binary, test_image};
pub use results::{Record, ResultsError, ResultsReader};
pub use testing::CvmSetup;
pub use vm::{ReportOnDrop, RunningVm, TestVm, VmError, VmExit};
