//! stat(2) of device nodes: what a compose `devices:` mapping names on the host (type, major,
//! minor, mode), so the launcher can grant exactly that node to a container.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum DevNodeError {
    /// The path cannot be stat'ed (absent, or a dangling link).
    #[error("stat {}", path.display())]
    Stat {
        /// The path.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The path is not a character or block device.
    #[error("{} is not a device node", path.display())]
    NotDevice {
        /// The path.
        path: PathBuf,
    },
}

/// Character or block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A character device (`c`).
    Char,
    /// A block device (`b`).
    Block,
}

/// A device node as the kernel numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceNode {
    /// Character or block.
    pub kind: DeviceKind,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Permission bits of the node (`st_mode & 0o7777`).
    pub mode: u32,
}

/// Stats `path` (following links, as `/dev/disk/by-*` names are links) and returns the device
/// it names.
pub fn stat_device(path: &Path) -> Result<DeviceNode, DevNodeError> {
    let meta = std::fs::metadata(path).map_err(|source| DevNodeError::Stat {
        path: path.to_owned(),
        source,
    })?;
    let kind = if meta.file_type().is_char_device() {
        DeviceKind::Char
    } else if meta.file_type().is_block_device() {
        DeviceKind::Block
    } else {
        return Err(DevNodeError::NotDevice {
            path: path.to_owned(),
        });
    };
    let rdev = meta.rdev();
    Ok(DeviceNode {
        kind,
        major: libc::major(rdev),
        minor: libc::minor(rdev),
        mode: meta.mode() & 0o7777,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_null_is_char_1_3() {
        let node = stat_device(Path::new("/dev/null")).unwrap();
        assert_eq!(node.kind, DeviceKind::Char);
        assert_eq!((node.major, node.minor), (1, 3));
    }

    #[test]
    fn non_devices_and_absent_paths_are_typed_errors() {
        assert!(matches!(
            stat_device(Path::new("/")),
            Err(DevNodeError::NotDevice { .. })
        ));
        match stat_device(Path::new("/dev/cvm-no-such-node")) {
            Err(DevNodeError::Stat { path, source }) => {
                assert_eq!(path, Path::new("/dev/cvm-no-such-node"));
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
