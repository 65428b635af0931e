//! mount(2) and umount2(2) for the boot plan's filesystems.

use std::path::{Path, PathBuf};

use init_core::plan::MountFlags;
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("create mount point {}", path.display())]
    CreateMountPoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mount {fstype} on {}", target.display())]
    Mount {
        target: PathBuf,
        fstype: String,
        #[source]
        source: Errno,
    },
    #[error("unmount {}", target.display())]
    Unmount {
        target: PathBuf,
        #[source]
        source: Errno,
    },
}

fn ms_flags(flags: MountFlags) -> MsFlags {
    let mut ms = MsFlags::empty();
    ms.set(MsFlags::MS_NOSUID, flags.nosuid);
    ms.set(MsFlags::MS_NODEV, flags.nodev);
    ms.set(MsFlags::MS_NOEXEC, flags.noexec);
    ms
}

/// Create `target` (and parents) and mount `source` of type `fstype` on it.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> Result<(), MountError> {
    std::fs::create_dir_all(target).map_err(|source| MountError::CreateMountPoint {
        path: target.to_owned(),
        source,
    })?;
    let data = (!data.is_empty()).then_some(data);
    nix::mount::mount(Some(source), target, Some(fstype), ms_flags(flags), data).map_err(|source| {
        MountError::Mount {
            target: target.to_owned(),
            fstype: fstype.to_owned(),
            source,
        }
    })
}

/// Create `target` (and parents) and mount the block device `source` of type `fstype` on it
/// read-only, `nodev,nosuid` (the GPU driver extension).
pub fn mount_read_only(source: &Path, target: &Path, fstype: &str) -> Result<(), MountError> {
    std::fs::create_dir_all(target).map_err(|e| MountError::CreateMountPoint {
        path: target.to_owned(),
        source: e,
    })?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    nix::mount::mount(Some(source), target, Some(fstype), flags, None::<&str>).map_err(|e| {
        MountError::Mount {
            target: target.to_owned(),
            fstype: fstype.to_owned(),
            source: e,
        }
    })
}

/// Detach `target` (lazy unmount: busy filesystems go away once their last user does).
pub fn unmount_detach(target: &Path) -> Result<(), MountError> {
    nix::mount::umount2(target, MntFlags::MNT_DETACH).map_err(|source| MountError::Unmount {
        target: target.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_to_ms_bits() {
        let all = ms_flags(MountFlags {
            nosuid: true,
            nodev: true,
            noexec: true,
        });
        assert_eq!(
            all,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
        );
        assert_eq!(ms_flags(MountFlags::default()), MsFlags::empty());
    }

    #[test]
    fn mount_error_names_target_and_cause() {
        let dir = std::env::temp_dir().join(format!("cvm-mount-test-{}", std::process::id()));
        // Unprivileged or bogus: either way a typed error naming the target comes back.
        let err = mount("none", &dir, "cvm-no-such-fs", MountFlags::default(), "").unwrap_err();
        let _ = std::fs::remove_dir(&dir);
        match err {
            MountError::Mount {
                target,
                fstype,
                source,
            } => {
                assert_eq!(target, dir);
                assert_eq!(fstype, "cvm-no-such-fs");
                assert!(
                    source == Errno::ENODEV || source == Errno::EPERM,
                    "{source}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
