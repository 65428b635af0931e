//! The mount stages (`early`'s first step, `mount`, `mount-late`): the mounts of
//! `init_core::plan::Stage::mounts`, in order. `mount-late` is configfs, which may be a module.

use std::path::Path;

use init_core::cmdline::{Config, TestFault};
use init_core::plan::Stage;
use init_sys::mount::MountError;

/// A filesystem type that exists in no kernel: the `mount:` test fault uses it.
const BOGUS_FSTYPE: &str = "cvm-test-fault-nofs";

/// Mounts everything `stage` mounts. `config`'s `cvm.test_fault=mount:<target>` (test builds)
/// makes that mount fail with a real `ENODEV`. The error names the mount (no stage segment).
pub(crate) fn run(stage: Stage, config: &Config) -> Result<(), MountError> {
    for spec in stage.mounts() {
        let fstype = match &config.test_fault {
            Some(TestFault::Mount { target }) if target == spec.target => BOGUS_FSTYPE,
            _ => spec.fstype,
        };
        init_sys::mount::mount(
            spec.source,
            Path::new(spec.target),
            fstype,
            spec.flags,
            spec.data,
        )?;
    }
    Ok(())
}
