//! Moving PID 1's root off the initramfs (the switch_root dance, without an exec).
//!
//! The kernel unpacks the initramfs into `rootfs`, the first mount of the first mount
//! namespace: it has no parent, so pivot_root(2) refuses it, and a container runtime could only
//! enter a container root with `MS_MOVE` + chroot (runc's `--no-pivot`), which a process with
//! `CAP_SYS_CHROOT` can climb out of. [`move_root_to_tmpfs`] mounts a tmpfs, copies the
//! rootfs tree into it (modes, owners, symlinks, device nodes, FIFOs; file contents), frees the
//! rootfs copy, moves the other top-level mounts (`/proc`, `/sys`, `/dev`) into the tmpfs,
//! moves the tmpfs onto `/` and chroots into it. Every absolute path resolves as before. The
//! tmpfs has a parent (rootfs), so pivot_root(2) works from then on. PID 1 keeps running: its
//! own executable stays mapped (its rootfs inode is freed when PID 1 exits, i.e. never).

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use init_core::mountinfo::MountEntry;
use nix::mount::MsFlags;
use nix::sys::stat::{Mode, SFlag};

/// Where the new root is mounted before it moves onto `/` (a directory of the old rootfs).
pub const STAGING: &str = "/.cvm-root";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum SwitchRootError {
    #[error("read /proc/self/mountinfo")]
    ReadMountinfo(#[source] std::io::Error),
    #[error("parse /proc/self/mountinfo")]
    ParseMountinfo(#[source] init_core::mountinfo::MountinfoError),
    #[error("mount the new root's tmpfs on {STAGING}")]
    MountTmpfs(#[source] crate::mount::MountError),
    #[error("copy {} into the new root", path.display())]
    Copy {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("make node {} in the new root", path.display())]
    MakeNode {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("move mount {} to {}", from.display(), to.display())]
    MoveMount {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("enter the new root {STAGING}")]
    Enter(#[source] nix::Error),
}

/// What [`move_root_to_tmpfs`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwitchStats {
    /// Directories, regular files, symlinks, device nodes and FIFOs copied.
    pub entries: u64,
    /// Bytes of regular files copied.
    pub bytes: u64,
    /// Old rootfs entries that could not be removed (their memory stays in use).
    pub not_freed: u64,
}

/// Whether `/` is the initramfs (`rootfs` in mountinfo, as the process sees it).
pub fn root_is_rootfs(entries: &[MountEntry]) -> bool {
    entries
        .iter()
        .any(|e| e.target == "/" && e.fstype == "rootfs")
}

/// Mount points directly on the rootfs mount that move along (children move with them), in
/// kernel order; the staging mount itself excluded.
pub fn mounts_to_move(entries: &[MountEntry]) -> Vec<String> {
    let Some(root) = entries
        .iter()
        .find(|e| e.target == "/" && e.fstype == "rootfs")
    else {
        return Vec::new();
    };
    entries
        .iter()
        .filter(|e| e.parent_id == root.mount_id && e.mount_id != root.mount_id)
        .filter(|e| e.target != "/" && e.target != STAGING)
        .map(|e| e.target.clone())
        .collect()
}

fn copy_err(path: &Path) -> impl FnOnce(std::io::Error) -> SwitchRootError + '_ {
    move |source| SwitchRootError::Copy {
        path: path.to_owned(),
        source,
    }
}

/// Sets owner, then mode (a chown clears set-id bits), of `target` (not following links).
fn own(target: &Path, meta: &std::fs::Metadata) -> Result<(), SwitchRootError> {
    std::os::unix::fs::lchown(target, Some(meta.uid()), Some(meta.gid()))
        .map_err(copy_err(target))?;
    if !meta.file_type().is_symlink() {
        std::fs::set_permissions(
            target,
            std::fs::Permissions::from_mode(meta.mode() & 0o7777),
        )
        .map_err(copy_err(target))?;
    }
    Ok(())
}

/// Copies the entries of directory `from` (on filesystem `dev`) into the existing directory
/// `to`. A directory on another filesystem (a mount point) is created empty.
fn copy_dir(
    from: &Path,
    to: &Path,
    dev: u64,
    stats: &mut SwitchStats,
) -> Result<(), SwitchRootError> {
    for entry in std::fs::read_dir(from).map_err(copy_err(from))? {
        let entry = entry.map_err(copy_err(from))?;
        let path = entry.path();
        if path == Path::new(STAGING) {
            continue;
        }
        let target = to.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&path).map_err(copy_err(&path))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            std::fs::create_dir(&target).map_err(copy_err(&target))?;
            if meta.dev() == dev {
                copy_dir(&path, &target, dev, stats)?;
            }
        } else if kind.is_file() {
            stats.bytes += std::fs::copy(&path, &target).map_err(copy_err(&path))?;
        } else if kind.is_symlink() {
            let link = std::fs::read_link(&path).map_err(copy_err(&path))?;
            std::os::unix::fs::symlink(&link, &target).map_err(copy_err(&target))?;
        } else if kind.is_char_device() || kind.is_block_device() || kind.is_fifo() {
            let sflag = if kind.is_char_device() {
                SFlag::S_IFCHR
            } else if kind.is_block_device() {
                SFlag::S_IFBLK
            } else {
                SFlag::S_IFIFO
            };
            nix::sys::stat::mknod(&target, sflag, Mode::empty(), meta.rdev()).map_err(
                |source| SwitchRootError::MakeNode {
                    path: target.clone(),
                    source,
                },
            )?;
        } else {
            // A socket in an initramfs means nothing once copied.
            continue;
        }
        own(&target, &meta)?;
        stats.entries += 1;
    }
    Ok(())
}

/// Removes the contents of `dir` that are on filesystem `dev` (never crossing a mount, never
/// the staging mount); returns how many entries stayed.
fn free_dir(dir: &Path, dev: u64) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 1;
    };
    let mut left = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path == Path::new(STAGING) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            left += 1;
            continue;
        };
        if meta.dev() != dev {
            // A mount point: its directory stays on the old rootfs.
            continue;
        }
        let removed = if meta.file_type().is_dir() {
            left += free_dir(&path, dev);
            std::fs::remove_dir(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if removed.is_err() {
            left += 1;
        }
    }
    left
}

fn move_mount(from: &Path, to: &Path) -> Result<(), SwitchRootError> {
    nix::mount::mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(
        |source| SwitchRootError::MoveMount {
            from: from.to_owned(),
            to: to.to_owned(),
            source,
        },
    )
}

/// If `/` is the initramfs, makes a tmpfs PID 1's root (see the module documentation) and
/// returns what was copied; `None` when `/` is not the initramfs (nothing done). Needs
/// `/proc` mounted. Only PID 1 calls it, once, while it is single-threaded.
pub fn move_root_to_tmpfs() -> Result<Option<SwitchStats>, SwitchRootError> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(SwitchRootError::ReadMountinfo)?;
    let entries = init_core::mountinfo::parse(&text).map_err(SwitchRootError::ParseMountinfo)?;
    if !root_is_rootfs(&entries) {
        return Ok(None);
    }
    let staging = Path::new(STAGING);
    crate::mount::mount(
        "tmpfs",
        staging,
        "tmpfs",
        init_core::plan::MountFlags::default(),
        "mode=0755",
    )
    .map_err(SwitchRootError::MountTmpfs)?;
    let root = Path::new("/");
    let root_meta = std::fs::symlink_metadata(root).map_err(copy_err(root))?;
    let mut stats = SwitchStats::default();
    copy_dir(root, staging, root_meta.dev(), &mut stats)?;
    own(staging, &root_meta)?;
    stats.not_freed = free_dir(root, root_meta.dev());
    for target in mounts_to_move(&entries) {
        let from = PathBuf::from(&target);
        let relative = target.trim_start_matches('/');
        move_mount(&from, &staging.join(relative))?;
    }
    nix::unistd::chdir(staging).map_err(SwitchRootError::Enter)?;
    move_mount(Path::new("."), root)?;
    nix::unistd::chroot(".").map_err(SwitchRootError::Enter)?;
    nix::unistd::chdir("/").map_err(SwitchRootError::Enter)?;
    Ok(Some(stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INITRAMFS: &str = "\
1 1 0:2 / / rw - rootfs rootfs rw
22 1 0:21 / /proc rw,nosuid,nodev,noexec - proc proc rw
23 1 0:22 / /sys rw,nosuid,nodev,noexec - sysfs sysfs rw
24 1 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw,size=1k
25 24 0:23 / /dev/pts rw - devpts devpts rw
26 1 0:26 / /.cvm-root rw - tmpfs tmpfs rw
";

    #[test]
    fn top_level_mounts_move_children_ride_along() {
        let entries = init_core::mountinfo::parse(INITRAMFS).unwrap();
        assert!(root_is_rootfs(&entries));
        assert_eq!(mounts_to_move(&entries), ["/proc", "/sys", "/dev"]);
    }

    #[test]
    fn a_real_root_moves_nothing() {
        let disk = "25 1 8:1 / / rw - ext4 /dev/sda1 rw\n30 25 0:2 / /proc rw - proc proc rw\n";
        let entries = init_core::mountinfo::parse(disk).unwrap();
        assert!(!root_is_rootfs(&entries));
        assert!(mounts_to_move(&entries).is_empty());
    }

    #[test]
    fn copy_keeps_modes_links_and_fifos_and_free_empties() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        std::fs::create_dir_all(from.join("etc/cvm")).unwrap();
        std::fs::write(from.join("etc/cvm/modules.load"), b"virtio\n").unwrap();
        std::fs::write(from.join("init"), b"\x7fELF").unwrap();
        std::fs::set_permissions(from.join("init"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
        std::fs::set_permissions(from.join("etc"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("etc/cvm", from.join("cvm")).unwrap();
        nix::unistd::mkfifo(&from.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::create_dir(&to).unwrap();
        let dev = std::fs::metadata(&from).unwrap().dev();
        let mut stats = SwitchStats::default();
        copy_dir(&from, &to, dev, &mut stats).unwrap();
        assert_eq!(stats.entries, 6);
        assert_eq!(stats.bytes, 11);
        assert_eq!(
            std::fs::read(to.join("etc/cvm/modules.load")).unwrap(),
            b"virtio\n"
        );
        let mode = |p: &str| std::fs::symlink_metadata(to.join(p)).unwrap().mode();
        assert_eq!(mode("init") & 0o7777, 0o4755);
        assert_eq!(mode("etc") & 0o7777, 0o700);
        assert!(
            std::fs::symlink_metadata(to.join("fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        assert_eq!(
            std::fs::read_link(to.join("cvm")).unwrap(),
            Path::new("etc/cvm")
        );
        assert_eq!(free_dir(&from, dev), 0);
        assert_eq!(std::fs::read_dir(&from).unwrap().count(), 0);
    }
}
