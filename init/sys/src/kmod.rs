//! finit_module(2): loading kernel modules from the initramfs.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::kmod::ModuleInitFlags;

#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("open module {}", path.display())]
    OpenModule {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("load module {}", path.display())]
    LoadModule {
        path: PathBuf,
        #[source]
        source: Errno,
    },
}

/// What `finit_module` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadOutcome {
    Loaded,
    /// The module was already loaded (or is built in): not an error.
    AlreadyLoaded,
}

/// Load the module file at `path` with no parameters.
pub fn load_module(path: &Path) -> Result<LoadOutcome, KmodError> {
    let file = File::open(path).map_err(|source| KmodError::OpenModule {
        path: path.to_owned(),
        source,
    })?;
    match nix::kmod::finit_module(&file, c"", ModuleInitFlags::empty()) {
        Ok(()) => Ok(LoadOutcome::Loaded),
        Err(Errno::EEXIST) => Ok(LoadOutcome::AlreadyLoaded),
        Err(source) => Err(KmodError::LoadModule {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_an_open_error_naming_it() {
        let err = load_module(Path::new("/nonexistent/cvm/x.ko")).unwrap_err();
        assert!(
            matches!(&err, KmodError::OpenModule { path, .. } if path == Path::new("/nonexistent/cvm/x.ko"))
        );
        assert_eq!(err.to_string(), "open module /nonexistent/cvm/x.ko");
    }
}
