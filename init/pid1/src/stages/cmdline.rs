//! The `cmdline` stage: parse the `cvm.*` configuration from /proc/cmdline (an unknown key is
//! fatal, before anything touches a device) and set the log level.

use std::path::PathBuf;

use init_core::cmdline::{self, CmdlineError, Config, TestHooks};

const PROC_CMDLINE: &str = "/proc/cmdline";

/// Errors of the cmdline stage.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CmdlineStageError {
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every [`CmdlineError`] names the key or the command line, so this layer adds no segment.
    #[error(transparent)]
    Parse(CmdlineError),
}

/// Runs the stage: the configuration every later stage reads.
pub(crate) fn run() -> Result<Config, CmdlineStageError> {
    let text = std::fs::read_to_string(PROC_CMDLINE).map_err(|source| CmdlineStageError::Read {
        path: PathBuf::from(PROC_CMDLINE),
        source,
    })?;
    let config = cmdline::parse(&text, TestHooks::compiled()).map_err(CmdlineStageError::Parse)?;
    crate::logger::set_level(config.log_level);
    log::info!("config: on_ready={}", config.on_ready);
    Ok(config)
}
