//! The `host-share` stage: mount the dstack host share read-only, copy the known files (no
//! symlinks, size caps) into a private tmpfs, unmount the share, and parse the copies.
//!
//! Sources, in dstack's order (`shared/specs/dstack-guest.md` §1.5): a block device whose
//! ext2/3/4 or FAT label is `DSTACKSHR` (found by reading superblocks, there is no udev/blkid),
//! else the 9p tag `host-shared` (the Debian cloud kernel of most QEMU tests has no 9p; the 9p
//! tests boot the generic flavour of the same kernel version). Rules (file names, caps, required files) live in `init_core::host_share`.
//!
//! Entry point: [`load_host_share`] with [`HostShareOptions::default`].

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use init_core::host_share::{
    self, HOST_SHARE_9P_TAG, HOST_SHARE_FILES, HostShare, HostShareError, LABEL_PROBE_LEN,
    LabelledFs,
};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};

/// Errors of the host-share stage.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HostShareStageError {
    /// Creating a mount point or the copy directory failed.
    #[error("create directory {path}")]
    CreateDirectory {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Neither a `DSTACKSHR` disk nor the 9p share could be mounted.
    #[error("mount host share (no DSTACKSHR disk; 9p tag host-shared)")]
    MountHostShare {
        #[source]
        source: Errno,
    },
    /// Mounting the `DSTACKSHR` disk failed.
    #[error("mount host-share disk {device} ({fstype})")]
    MountHostShareDisk {
        device: PathBuf,
        fstype: &'static str,
        #[source]
        source: Errno,
    },
    /// Mounting the private tmpfs failed.
    #[error("mount private tmpfs on {target}")]
    MountCopyTmpfs {
        target: PathBuf,
        #[source]
        source: Errno,
    },
    /// Opening, inspecting or reading a share file failed.
    #[error("read host share file {path}")]
    ReadShareFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A share file is a symlink (refused with `O_NOFOLLOW`).
    #[error("host share file {path} is a symlink")]
    SymlinkInShare { path: PathBuf },
    /// Writing a copy failed.
    #[error("write copy {path}")]
    WriteCopy {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Unmounting the share failed.
    #[error("unmount host share {target}")]
    UnmountHostShare {
        target: PathBuf,
        #[source]
        source: Errno,
    },
    /// The copied files broke a host-share rule (missing, too large, malformed); its messages
    /// name the file, so this layer adds no segment of its own.
    #[error(transparent)]
    ValidateHostShare(HostShareError),
}

/// Runs the stage with the default paths: the parsed share, its copies in [`copy_dir`].
pub(crate) fn run() -> Result<HostShare, HostShareStageError> {
    let (share, source) = load_host_share(&HostShareOptions::default())?;
    log::info!("host share: loaded from {source:?}");
    Ok(share)
}

/// Where the stage copies the share (a private tmpfs; the keys stage adds `.appkeys.json`, the
/// guest API reads it).
pub(crate) fn copy_dir() -> PathBuf {
    HostShareOptions::default().copy_dir
}

/// Paths and switches of the stage (all parameters so tests can use a tempdir).
#[derive(Debug, Clone)]
pub(crate) struct HostShareOptions {
    /// Where the share is mounted read-only while copying.
    pub(crate) mount_point: PathBuf,
    /// The private tmpfs the files are copied to (stays mounted, mode 0700).
    pub(crate) copy_dir: PathBuf,
    /// `/sys/class/block`, scanned for the `DSTACKSHR` disk.
    pub(crate) sys_class_block: PathBuf,
    /// `/dev`, where the block device nodes are.
    pub(crate) dev_dir: PathBuf,
    /// Size of the private tmpfs.
    pub(crate) tmpfs_size: &'static str,
}

impl Default for HostShareOptions {
    fn default() -> Self {
        Self {
            mount_point: PathBuf::from("/run/cvm/host-share.mnt"),
            copy_dir: PathBuf::from("/run/cvm/host-shared"),
            sys_class_block: PathBuf::from("/sys/class/block"),
            dev_dir: PathBuf::from("/dev"),
            tmpfs_size: "128m",
        }
    }
}

/// Where the share came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostShareSource {
    /// A block device labelled `DSTACKSHR`.
    Disk { device: PathBuf, fs: LabelledFs },
    /// The 9p tag `host-shared`.
    NineP,
}

/// Runs the whole stage: mount the share, copy, unmount, parse. Returns the parsed share and
/// where it came from. The copies stay in `options.copy_dir` (a tmpfs only PID 1 can read).
pub(crate) fn load_host_share(
    options: &HostShareOptions,
) -> Result<(HostShare, HostShareSource), HostShareStageError> {
    create_private_dir(&options.copy_dir)?;
    let tmpfs_data = format!("size={},mode=0700", options.tmpfs_size);
    nix::mount::mount(
        Some("tmpfs"),
        &options.copy_dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(tmpfs_data.as_str()),
    )
    .map_err(|source| HostShareStageError::MountCopyTmpfs {
        target: options.copy_dir.clone(),
        source,
    })?;

    create_private_dir(&options.mount_point)?;
    let source = mount_share(options)?;
    log::info!("host-share: mounted {source:?}");
    let copied = copy_share_files(&options.mount_point, &options.copy_dir);
    let unmounted =
        nix::mount::umount2(&options.mount_point, MntFlags::MNT_DETACH).map_err(|source| {
            HostShareStageError::UnmountHostShare {
                target: options.mount_point.clone(),
                source,
            }
        });
    let files = copied?;
    unmounted?;
    let share = HostShare::from_files(files).map_err(HostShareStageError::ValidateHostShare)?;
    Ok((share, source))
}

fn create_private_dir(path: &Path) -> Result<(), HostShareStageError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| HostShareStageError::CreateDirectory {
            path: path.to_owned(),
            source,
        })
}

fn mount_share(options: &HostShareOptions) -> Result<HostShareSource, HostShareStageError> {
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if let Some((device, fs)) = find_host_share_disk(&options.sys_class_block, &options.dev_dir) {
        let fstype = match fs {
            LabelledFs::Ext => "ext4",
            LabelledFs::Fat16 | LabelledFs::Fat32 => "vfat",
        };
        nix::mount::mount(
            Some(&device),
            &options.mount_point,
            Some(fstype),
            flags,
            None::<&str>,
        )
        .map_err(|source| HostShareStageError::MountHostShareDisk {
            device: device.clone(),
            fstype,
            source,
        })?;
        return Ok(HostShareSource::Disk { device, fs });
    }
    nix::mount::mount(
        Some(HOST_SHARE_9P_TAG),
        &options.mount_point,
        Some("9p"),
        flags,
        Some("trans=virtio,version=9p2000.L"),
    )
    .map_err(|source| HostShareStageError::MountHostShare { source })?;
    Ok(HostShareSource::NineP)
}

/// The first block device (in name order) under `sys_class_block` whose node in `dev_dir`
/// carries the `DSTACKSHR` label. Devices that cannot be opened or read are skipped.
pub(crate) fn find_host_share_disk(
    sys_class_block: &Path,
    dev_dir: &Path,
) -> Option<(PathBuf, LabelledFs)> {
    let mut names: Vec<String> = fs::read_dir(sys_class_block)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram"))
        .collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let device = dev_dir.join(&name);
        let head = read_head(&device).ok()?;
        let (fs, label) = host_share::filesystem_label(&head)?;
        (label == host_share::HOST_SHARE_LABEL).then_some((device, fs))
    })
}

fn read_head(device: &Path) -> io::Result<Vec<u8>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).bits())
        .open(device)?;
    let mut head = Vec::with_capacity(LABEL_PROBE_LEN);
    file.take(LABEL_PROBE_LEN as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// Copies the known share files from `share_root` to `copy_dir` and returns their bytes.
/// Absent files are skipped (required ones are reported by `HostShare::from_files`); symlinks
/// (`O_NOFOLLOW`), non-regular files and files over their cap are errors. Copies are created
/// with mode 0600 and never replace an existing file.
pub(crate) fn copy_share_files(
    share_root: &Path,
    copy_dir: &Path,
) -> Result<BTreeMap<String, Vec<u8>>, HostShareStageError> {
    let mut files = BTreeMap::new();
    for spec in HOST_SHARE_FILES {
        let path = share_root.join(spec.name);
        let read_err = |source| HostShareStageError::ReadShareFile {
            path: path.clone(),
            source,
        };
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).bits())
            .open(&path);
        let file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) if e.raw_os_error().map(Errno::from_raw) == Some(Errno::ELOOP) => {
                return Err(HostShareStageError::SymlinkInShare { path });
            }
            Err(e) => return Err(read_err(e)),
        };
        let meta = file.metadata().map_err(read_err)?;
        let invalid = HostShareStageError::ValidateHostShare;
        if !meta.file_type().is_file() {
            return Err(invalid(HostShareError::NotRegularFile { name: spec.name }));
        }
        host_share::check_len(&spec, meta.len()).map_err(invalid)?;
        let mut bytes = Vec::new();
        file.take(spec.max_len.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        // The file may have grown between fstat and read.
        host_share::check_len(&spec, u64::try_from(bytes.len()).unwrap_or(u64::MAX))
            .map_err(invalid)?;
        write_copy(&copy_dir.join(spec.name), &bytes)?;
        files.insert(spec.name.to_owned(), bytes);
    }
    Ok(files)
}

fn write_copy(path: &Path, bytes: &[u8]) -> Result<(), HostShareStageError> {
    let write_err = |source| HostShareStageError::WriteCopy {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(path)
        .map_err(write_err)?;
    file.write_all(bytes).map_err(write_err)?;
    file.sync_all().map_err(write_err)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const EXT4_HEAD: &[u8] = include_bytes!("../../../core/testdata/ext4-dstackshr.head");

    fn share_with(files: &[(&str, &[u8])]) -> (tempfile::TempDir, tempfile::TempDir) {
        let share = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            fs::write(share.path().join(name), bytes).unwrap();
        }
        (share, tempfile::tempdir().unwrap())
    }

    const COMPOSE: &[u8] = br#"{"manifest_version":2,"name":"demo"}"#;
    const SYS: &[u8] = br#"{"vm_config":"{\"cpu_count\":1}"}"#;

    #[test]
    fn copies_known_files_only() {
        let (share, copy) = share_with(&[
            ("app-compose.json", COMPOSE),
            (".sys-config.json", SYS),
            (".encrypted-env", &[0, 1, 2]),
            ("unrelated", b"x"),
        ]);
        let files = copy_share_files(share.path(), copy.path()).unwrap();
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            [".encrypted-env", ".sys-config.json", "app-compose.json"]
        );
        assert_eq!(
            fs::read(copy.path().join("app-compose.json")).unwrap(),
            COMPOSE
        );
        let mode = fs::metadata(copy.path().join("app-compose.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!copy.path().join("unrelated").exists());
        let share = HostShare::from_files(files).unwrap();
        assert_eq!(share.app_compose.compose().name, "demo");
        assert_eq!(share.sys_config.vm_config.cpu_count, Some(1));
    }

    #[test]
    fn symlinked_file_is_refused() {
        let (share, copy) = share_with(&[(".sys-config.json", SYS)]);
        let target = share.path().join("real.json");
        fs::write(&target, COMPOSE).unwrap();
        std::os::unix::fs::symlink(&target, share.path().join("app-compose.json")).unwrap();
        let err = copy_share_files(share.path(), copy.path()).unwrap_err();
        assert!(
            matches!(err, HostShareStageError::SymlinkInShare { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn oversized_file_is_refused() {
        let big = vec![b' '; 32 * 1024 + 1];
        let (share, copy) =
            share_with(&[("app-compose.json", COMPOSE), (".sys-config.json", &big)]);
        let err = copy_share_files(share.path(), copy.path()).unwrap_err();
        assert!(matches!(
            err,
            HostShareStageError::ValidateHostShare(HostShareError::FileTooLarge {
                name: ".sys-config.json",
                ..
            })
        ));
    }

    #[test]
    fn directory_and_fifo_are_refused() {
        let (share, copy) = share_with(&[(".sys-config.json", SYS)]);
        fs::create_dir(share.path().join("app-compose.json")).unwrap();
        assert!(matches!(
            copy_share_files(share.path(), copy.path()).unwrap_err(),
            HostShareStageError::ValidateHostShare(HostShareError::NotRegularFile { .. })
        ));
        let (share, copy) = share_with(&[("app-compose.json", COMPOSE)]);
        nix::unistd::mkfifo(
            &share.path().join(".sys-config.json"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        assert!(matches!(
            copy_share_files(share.path(), copy.path()).unwrap_err(),
            HostShareStageError::ValidateHostShare(HostShareError::NotRegularFile { .. })
        ));
    }

    #[test]
    fn missing_required_file_is_reported_by_validation() {
        let (share, copy) = share_with(&[(".sys-config.json", SYS)]);
        let files = copy_share_files(share.path(), copy.path()).unwrap();
        assert!(matches!(
            HostShare::from_files(files),
            Err(HostShareError::MissingRequiredFile {
                name: "app-compose.json"
            })
        ));
    }

    #[test]
    fn malformed_app_compose_is_reported_by_validation() {
        let (share, copy) = share_with(&[("app-compose.json", b"{"), (".sys-config.json", SYS)]);
        let files = copy_share_files(share.path(), copy.path()).unwrap();
        assert!(matches!(
            HostShare::from_files(files),
            Err(HostShareError::ParseFile(
                init_core::app_compose::AppComposeError::ParseAppCompose { .. }
            ))
        ));
    }

    #[test]
    fn finds_labelled_disk_in_fake_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        let dev = tempfile::tempdir().unwrap();
        for name in ["loop0", "vda", "vdb", "vdc"] {
            fs::create_dir(sys.path().join(name)).unwrap();
        }
        fs::write(dev.path().join("loop0"), EXT4_HEAD).unwrap(); // loop devices are skipped
        fs::write(dev.path().join("vda"), vec![0u8; 4096]).unwrap();
        // vdb has no node: skipped.
        fs::write(dev.path().join("vdc"), EXT4_HEAD).unwrap();
        assert_eq!(
            find_host_share_disk(sys.path(), dev.path()),
            Some((dev.path().join("vdc"), LabelledFs::Ext))
        );
        fs::remove_file(dev.path().join("vdc")).unwrap();
        assert_eq!(find_host_share_disk(sys.path(), dev.path()), None);
        assert_eq!(
            find_host_share_disk(&sys.path().join("none"), dev.path()),
            None
        );
    }
}
