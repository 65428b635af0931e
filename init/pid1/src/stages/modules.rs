//! The `modules` stage: `finit_module` each line of `/etc/cvm/modules.load` (dependencies
//! first, as the initramfs builder resolved them). Without the list the kernel has its drivers
//! built in.

use std::path::{Path, PathBuf};

use init_core::modules::{self, ModulesError};
use init_sys::kmod::{KmodError, LoadOutcome};

/// Errors of the modules stage.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ModulesStageError {
    #[error("read {path}")]
    ReadList {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("module load list {path}")]
    ParseList {
        path: PathBuf,
        #[source]
        source: ModulesError,
    },
    /// A module failed to load; the message names its file.
    #[error(transparent)]
    Load(KmodError),
}

/// Runs the stage.
pub(crate) fn run() -> Result<(), ModulesStageError> {
    let list_path = Path::new(modules::LOAD_LIST_PATH);
    if !list_path.exists() {
        log::info!(
            "no {}: kernel has its drivers built in",
            list_path.display()
        );
        return Ok(());
    }
    let text =
        std::fs::read_to_string(list_path).map_err(|source| ModulesStageError::ReadList {
            path: list_path.to_owned(),
            source,
        })?;
    let paths = modules::parse_load_list(&text).map_err(|source| ModulesStageError::ParseList {
        path: list_path.to_owned(),
        source,
    })?;
    let (mut loaded, mut present) = (0u32, 0u32);
    for path in &paths {
        match init_sys::kmod::load_module(Path::new(path)).map_err(ModulesStageError::Load)? {
            LoadOutcome::Loaded => loaded += 1,
            LoadOutcome::AlreadyLoaded => present += 1,
        }
        log::debug!("module {} loaded", modules::module_name(path));
    }
    log::info!("modules: {loaded} loaded, {present} already present");
    Ok(())
}

/// After a fatal error in a stage before `results`: load what modules still can be, ignoring
/// failures (the error being reported may be one of them), so the results port can open.
pub(crate) fn load_best_effort() {
    if let Ok(text) = std::fs::read_to_string(modules::LOAD_LIST_PATH)
        && let Ok(paths) = modules::parse_load_list(&text)
    {
        for path in paths {
            let _ = init_sys::kmod::load_module(Path::new(&path));
        }
    }
}
