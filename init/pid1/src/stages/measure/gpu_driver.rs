//! The GPU driver extension, the first step of the GPU gate (inside `measure`): with
//! `cvm.gpu_driver=<root hash>` on the (RTMR2-measured) command line, the virtio disk whose
//! serial is `cvm-gpu-driver` is opened with dm-verity (format 1, no superblock, SHA-256,
//! 4096-byte blocks, the fixed salt of `measure::verity`, hash tree after the data on the same
//! disk, data size from the disk size) read-only, its EROFS image mounted `ro,nodev,nosuid` at
//! [`MOUNT_POINT`], and every file of the tree read back once, so a corrupt block (dm-verity
//! answers EIO; the table uses the default error mode, neither `restart_on_corruption` nor
//! `panic_on_corruption`) stops the boot here and not later in a workload. Fail closed: a
//! hash without a disk, several such disks, a size that is no verity layout, a refused table,
//! a failed mount or read all stop the boot. A disk without a hash is ignored loudly (not
//! mounted).

use std::fs;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use cvm_disk::tables::DmTarget;
use measure::verity::{self, Layout, VerityError};
use zeroize::Zeroizing;

/// Where the verified driver tree is mounted (`lib/`, `bin/`, `firmware/`, `modules/`).
pub(crate) const MOUNT_POINT: &str = cvm_workload::gpu::DRIVER_TREE;
/// The device-mapper name of the verity mapping.
const DM_NAME: &str = "cvm-gpu-driver";
const FSTYPE: &str = "erofs";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum GpuDriverError {
    #[error("read {}", path.display())]
    ReadSysfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cvm.gpu_driver={root} is on the command line but no virtio disk has the serial {}",
        verity::DEVICE_SERIAL
    )]
    NoDevice { root: String },
    #[error("several disks have the serial {}: {names:?}", verity::DEVICE_SERIAL)]
    SeveralDevices { names: Vec<String> },
    #[error("GPU driver extension disk {name} is {bytes} bytes, not whole 4096-byte blocks")]
    Unaligned { name: String, bytes: u64 },
    #[error("GPU driver extension disk {name}")]
    Layout {
        name: String,
        #[source]
        source: VerityError,
    },
    #[error("open device-mapper")]
    OpenDm(#[source] BoxError),
    #[error("dm-verity refused the GPU driver extension {name} (root hash {root})")]
    Verity {
        name: String,
        root: String,
        #[source]
        source: BoxError,
    },
    #[error("mount the verified GPU driver tree (a corrupt block fails dm-verity)")]
    Mount(#[source] init_sys::mount::MountError),
    #[error("read {} of the verified GPU driver tree (a corrupt block fails dm-verity)", path.display())]
    ReadTree {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What the step did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Neither a hash nor a disk.
    Absent,
    /// A disk but no hash: not mounted.
    Ignored { name: String },
    /// Verified and mounted.
    Mounted {
        device: String,
        files: u64,
        bytes: u64,
    },
}

/// The disks (`/sys/block/<name>`) whose `serial` is the extension's.
pub(crate) fn find_disks(sys_block: &Path) -> Result<Vec<String>, GpuDriverError> {
    let entries = fs::read_dir(sys_block).map_err(|source| GpuDriverError::ReadSysfs {
        path: sys_block.to_owned(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| {
            fs::read_to_string(sys_block.join(name).join("serial"))
                .is_ok_and(|s| s.trim() == verity::DEVICE_SERIAL)
        })
        .collect();
    names.sort();
    Ok(names)
}

fn read_sysfs(path: PathBuf) -> Result<String, GpuDriverError> {
    fs::read_to_string(&path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| GpuDriverError::ReadSysfs { path, source })
}

/// The verity layout and `major:minor` of disk `name`.
pub(crate) fn disk_layout(
    sys_block: &Path,
    name: &str,
) -> Result<(Layout, String), GpuDriverError> {
    let entry = sys_block.join(name);
    let size = read_sysfs(entry.join("size"))?;
    let sectors: u64 = size.parse().map_err(|_| GpuDriverError::ReadSysfs {
        path: entry.join("size"),
        source: io::Error::new(io::ErrorKind::InvalidData, format!("size `{size}`")),
    })?;
    let bytes = sectors.saturating_mul(512);
    if !bytes.is_multiple_of(verity::BLOCK_SIZE_U64) {
        return Err(GpuDriverError::Unaligned {
            name: name.to_owned(),
            bytes,
        });
    }
    let layout = Layout::from_total_blocks(bytes / verity::BLOCK_SIZE_U64).map_err(|source| {
        GpuDriverError::Layout {
            name: name.to_owned(),
            source,
        }
    })?;
    Ok((layout, read_sysfs(entry.join("dev"))?))
}

/// Reads every regular file under `dir` to the end (symlinks are not followed): `(files, bytes)`.
pub(crate) fn read_tree(dir: &Path) -> Result<(u64, u64), GpuDriverError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| GpuDriverError::ReadTree { path, source }
    };
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut pending = vec![dir.to_owned()];
    let mut buf = vec![0u8; 1 << 16];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).map_err(err(&dir))? {
            let entry = entry.map_err(err(&dir))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(err(&path))?;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                let mut file = fs::File::open(&path).map_err(err(&path))?;
                loop {
                    let n = file.read(&mut buf).map_err(err(&path))?;
                    if n == 0 {
                        break;
                    }
                    bytes += n as u64;
                }
                files += 1;
            } else if kind.is_symlink() {
                // The link's target text is read through dm-verity too.
                fs::read_link(&path).map_err(err(&path))?;
            }
        }
    }
    Ok((files, bytes))
}

/// Runs the step: `root` from `cvm.gpu_driver`.
pub(crate) fn run(root: Option<&[u8; 32]>, sys_block: &Path) -> Result<Outcome, GpuDriverError> {
    let disks = find_disks(sys_block)?;
    let Some(root) = root else {
        return Ok(match disks.into_iter().next() {
            None => Outcome::Absent,
            Some(name) => {
                log::warn!(
                    "gpu-driver: disk {name} has the serial {} but the command line has no \
                     {} root hash: IGNORED, not mounted (no GPU driver)",
                    verity::DEVICE_SERIAL,
                    verity::CMDLINE_KEY
                );
                Outcome::Ignored { name }
            }
        });
    };
    let root_hex = hex::encode(root);
    let name = match disks.as_slice() {
        [] => return Err(GpuDriverError::NoDevice { root: root_hex }),
        [one] => one.clone(),
        _ => return Err(GpuDriverError::SeveralDevices { names: disks }),
    };
    let (layout, dev) = disk_layout(sys_block, &name)?;
    let target = DmTarget {
        start: 0,
        length: layout.sectors(),
        target_type: "verity",
        params: Zeroizing::new(layout.table_params(&dev, root)),
    };
    let mut dm = cvm_disk::kernel::DmKernel::new().map_err(GpuDriverError::OpenDm)?;
    let mapped =
        dm.create_read_only(DM_NAME, &target)
            .map_err(|source| GpuDriverError::Verity {
                name: name.clone(),
                root: root_hex.clone(),
                source,
            })?;
    let mount_point = Path::new(MOUNT_POINT);
    let mounted = init_sys::mount::mount_read_only(&mapped.path, mount_point, FSTYPE)
        .map_err(GpuDriverError::Mount)
        .and_then(|()| {
            read_tree(mount_point).inspect_err(|_| {
                let _ = init_sys::mount::unmount_detach(mount_point);
            })
        });
    let (files, bytes) = match mounted {
        Ok(counts) => counts,
        Err(e) => {
            let _ = cvm_disk::volume::Kernel::remove_device(&mut dm, DM_NAME);
            return Err(e);
        }
    };
    log::info!(
        "gpu-driver: {name} verified (dm-verity root {root_hex}, {} data blocks) and mounted \
         read-only at {MOUNT_POINT}: {files} files, {bytes} bytes read back",
        layout.data_blocks
    );
    Ok(Outcome::Mounted {
        device: name,
        files,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(root: &Path, name: &str, serial: Option<&str>, sectors: u64) {
        let d = root.join(name);
        fs::create_dir_all(&d).unwrap();
        if let Some(s) = serial {
            fs::write(d.join("serial"), format!("{s}\n")).unwrap();
        }
        fs::write(d.join("size"), format!("{sectors}\n")).unwrap();
        fs::write(d.join("dev"), "252:16\n").unwrap();
    }

    #[test]
    fn serials_agree() {
        assert_eq!(verity::DEVICE_SERIAL, cvm_disk::kernel::GPU_DRIVER_SERIAL);
    }

    #[test]
    fn finds_the_disk_by_serial() {
        let t = tempfile::tempdir().unwrap();
        disk(t.path(), "vda", None, 8);
        disk(t.path(), "vdb", Some("other"), 8);
        assert!(find_disks(t.path()).unwrap().is_empty());
        assert_eq!(run(None, t.path()).unwrap(), Outcome::Absent);
        assert!(matches!(
            run(Some(&[1; 32]), t.path()),
            Err(GpuDriverError::NoDevice { root }) if root == "01".repeat(32)
        ));
        disk(t.path(), "vdc", Some("cvm-gpu-driver"), 8);
        assert_eq!(find_disks(t.path()).unwrap(), ["vdc"]);
        // No hash: ignored, never opened.
        assert_eq!(
            run(None, t.path()).unwrap(),
            Outcome::Ignored { name: "vdc".into() }
        );
        disk(t.path(), "vdd", Some("cvm-gpu-driver"), 8);
        assert!(matches!(
            run(Some(&[1; 32]), t.path()),
            Err(GpuDriverError::SeveralDevices { names }) if names == ["vdc", "vdd"]
        ));
    }

    #[test]
    fn layout_from_the_disk_size() {
        let t = tempfile::tempdir().unwrap();
        // 129 data blocks + 3 hash blocks = 132 blocks = 1056 sectors.
        disk(t.path(), "vdc", Some("cvm-gpu-driver"), 1056);
        let (layout, dev) = disk_layout(t.path(), "vdc").unwrap();
        assert_eq!(layout, Layout::for_data(129));
        assert_eq!(dev, "252:16");
        disk(t.path(), "vde", Some("cvm-gpu-driver"), 1057);
        assert!(matches!(
            disk_layout(t.path(), "vde"),
            Err(GpuDriverError::Unaligned { bytes: 541_184, .. })
        ));
        // 130 blocks: no data size has a tree that ends there.
        disk(t.path(), "vdf", Some("cvm-gpu-driver"), 1040);
        assert!(matches!(
            disk_layout(t.path(), "vdf"),
            Err(GpuDriverError::Layout {
                source: VerityError::NoLayout { blocks: 130 },
                ..
            })
        ));
    }

    #[test]
    fn reads_the_whole_tree() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("lib")).unwrap();
        fs::write(t.path().join("lib/libnvidia-ml.so.1"), vec![1u8; 70_000]).unwrap();
        fs::write(t.path().join("nvidia-smi"), b"#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("libnvidia-ml.so.1", t.path().join("lib/libnvidia-ml.so"))
            .unwrap();
        assert_eq!(read_tree(t.path()).unwrap(), (2, 70_010));
        assert!(matches!(
            read_tree(&t.path().join("missing")),
            Err(GpuDriverError::ReadTree { .. })
        ));
    }
}
