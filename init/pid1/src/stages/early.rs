//! The `early` stage: mount /proc, /sys and /dev (devtmpfs), move PID 1's root from the
//! initramfs to a tmpfs (`init_sys::switch_root`, so containers get a real pivot_root), make
//! sure fds 0-2 are the console, open /dev/kmsg for the logger, route ctrl-alt-del to SIGINT.
//! Everything else needs these.

use std::path::Path;

use init_core::cmdline::Config;
use init_core::plan::Stage;
use init_sys::mount::MountError;
use init_sys::power::PowerError;

/// Errors of the early stage.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EarlyStageError {
    /// A base filesystem did not mount; the message names the mount.
    #[error(transparent)]
    Mount(MountError),
    #[error("move the root from the initramfs to a tmpfs")]
    SwitchRoot(#[source] init_sys::switch_root::SwitchRootError),
    #[error("route ctrl-alt-del to PID 1")]
    CtrlAltDel(#[source] PowerError),
}

/// Runs the stage (before the command line is read: no test fault applies to these mounts).
pub(crate) fn run() -> Result<(), EarlyStageError> {
    crate::stages::mount::run(Stage::Early, &Config::default()).map_err(EarlyStageError::Mount)?;
    // Once, before anything opens a file of the initramfs: a failure stops the boot (fail
    // closed: containers refuse to start from rootfs anyway).
    let started = init_sys::clock::monotonic_us();
    let switched =
        init_sys::switch_root::move_root_to_tmpfs().map_err(EarlyStageError::SwitchRoot)?;
    let took_us = init_sys::clock::monotonic_us().saturating_sub(started);
    if let Err(e) = init_sys::console::ensure_stdio(Path::new("/dev/console")) {
        log::warn!("{}", init_core::error_chain::one_line(&e));
    }
    if let Err(e) = crate::logger::attach_kmsg(Path::new("/dev/kmsg")) {
        log::warn!("open /dev/kmsg: {e}");
    }
    if let Some(stats) = switched {
        log::info!(
            "early: root moved from the initramfs to a tmpfs in {} ms ({} entries, {} KiB)",
            took_us / 1000,
            stats.entries,
            stats.bytes / 1024
        );
        if stats.not_freed > 0 {
            log::warn!(
                "early: {} initramfs entries could not be freed",
                stats.not_freed
            );
        }
    }
    init_sys::power::route_ctrl_alt_del_to_sigint().map_err(EarlyStageError::CtrlAltDel)
}
