//! The `early` stage: mount /proc, /sys and /dev (devtmpfs), make sure fds 0-2 are the console,
//! open /dev/kmsg for the logger, route ctrl-alt-del to SIGINT. Everything else needs these.

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
    #[error("route ctrl-alt-del to PID 1")]
    CtrlAltDel(#[source] PowerError),
}

/// Runs the stage (before the command line is read: no test fault applies to these mounts).
pub(crate) fn run() -> Result<(), EarlyStageError> {
    crate::stages::mount::run(Stage::Early, &Config::default()).map_err(EarlyStageError::Mount)?;
    if let Err(e) = init_sys::console::ensure_stdio(Path::new("/dev/console")) {
        log::warn!("{}", init_core::error_chain::one_line(&e));
    }
    if let Err(e) = crate::logger::attach_kmsg(Path::new("/dev/kmsg")) {
        log::warn!("open /dev/kmsg: {e}");
    }
    init_sys::power::route_ctrl_alt_del_to_sigint().map_err(EarlyStageError::CtrlAltDel)
}
