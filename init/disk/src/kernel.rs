//! The kernel-facing side, kept thin: device-mapper through the `devicemapper` crate (DM
//! ioctls only, no libdevmapper, no udev), block devices as files, device selection from
//! sysfs. Everything that decides lives in [`crate::volume`].

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use devicemapper::{DM, DevId, DmFlags, DmName, DmOptions};
use zeroize::Zeroize;

use crate::gpt::PARTITION_NAME;
use crate::tables::{DevNumber, DmTarget};
use crate::volume::{BlockDev, BoxError, Kernel, Mapped};

/// A block device opened read-write (std sets `O_CLOEXEC`; not `O_EXCL`, which would keep
/// device-mapper from claiming it).
#[derive(Debug)]
pub struct BlockFile {
    file: File,
    /// The same device opened with `O_DIRECT`, for reads.
    direct: File,
    number: DevNumber,
}

impl BlockFile {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
            .open(path)?;
        let meta = file.metadata()?;
        Ok(Self {
            number: DevNumber::from_rdev(meta.rdev()),
            file,
            direct,
        })
    }
}

impl BlockDev for BlockFile {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        // Device-mapper targets write below this device's page cache (dm-integrity formats its
        // superblock with bios), so reads bypass it: O_DIRECT on a second descriptor, whole
        // 4096-byte blocks into a 4096-aligned buffer.
        const ALIGN: u64 = 4096;
        const ALIGN_BYTES: usize = 4096;
        let start = offset / ALIGN * ALIGN;
        let end = (offset + buf.len() as u64).next_multiple_of(ALIGN);
        let span = usize::try_from(end - start).map_err(io::Error::other)?;
        let mut raw = vec![0u8; span + ALIGN_BYTES];
        let skip = raw.as_ptr().align_offset(ALIGN_BYTES);
        let aligned = raw
            .get_mut(skip..skip + span)
            .ok_or_else(|| io::Error::other("align the read buffer"))?;
        self.direct.read_exact_at(aligned, start)?;
        let from = usize::try_from(offset - start).map_err(io::Error::other)?;
        buf.copy_from_slice(&aligned[from..from + buf.len()]);
        Ok(())
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }
    fn size(&mut self) -> io::Result<u64> {
        self.file.seek(SeekFrom::End(0))
    }
    fn number(&self) -> DevNumber {
        self.number
    }
}

/// Device-mapper through `/dev/mapper/control`.
pub struct DmKernel {
    dm: DM,
    dev: PathBuf,
}

impl DmKernel {
    /// Opens `/dev/mapper/control` (devtmpfs creates it when `dm_mod` loads).
    pub fn new() -> Result<Self, BoxError> {
        Ok(Self {
            dm: DM::new()?,
            dev: PathBuf::from("/dev"),
        })
    }
}

impl std::fmt::Debug for DmKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmKernel")
            .field("dev", &self.dev)
            .finish_non_exhaustive()
    }
}

fn wait_for_node(path: &Path) -> io::Result<()> {
    let started = Instant::now();
    while !path.exists() {
        if started.elapsed() > Duration::from_secs(5) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "device node did not appear within 5 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

impl Kernel for DmKernel {
    type Block = BlockFile;

    fn create_device(&mut self, name: &str, target: &DmTarget) -> Result<Mapped, BoxError> {
        self.create(name, target, DmFlags::empty())
    }

    fn remove_device(&mut self, name: &str) -> Result<(), BoxError> {
        let dm_name = DmName::new(name)?;
        self.dm
            .device_remove(&DevId::Name(dm_name), DmOptions::default())?;
        Ok(())
    }

    fn open(&mut self, path: &Path) -> io::Result<BlockFile> {
        BlockFile::open(path)
    }
}

impl DmKernel {
    /// A read-only mapping (`DM_READONLY` on the table load): what dm-verity requires.
    pub fn create_read_only(&mut self, name: &str, target: &DmTarget) -> Result<Mapped, BoxError> {
        self.create(name, target, DmFlags::DM_READONLY)
    }

    fn create(&mut self, name: &str, target: &DmTarget, mode: DmFlags) -> Result<Mapped, BoxError> {
        let dm_name = DmName::new(name)?;
        self.dm.device_create(dm_name, None, DmOptions::default())?;
        let id = DevId::Name(dm_name);
        let mut table = vec![(
            target.start,
            target.length,
            target.target_type.to_owned(),
            target.params.as_str().to_owned(),
        )];
        // DM_SECURE_DATA: the kernel wipes its copies of the table (it holds keys).
        let loaded = self.dm.table_load(
            &id,
            &table,
            DmOptions::default().set_flags(DmFlags::DM_SECURE_DATA | mode),
        );
        table[0].3.zeroize();
        let resumed = loaded.and_then(|_| self.dm.device_suspend(&id, DmOptions::default()));
        let info = match resumed {
            Ok(info) => info,
            Err(e) => {
                let _ = self.dm.device_remove(&id, DmOptions::default());
                return Err(e.into());
            }
        };
        let device = info.device();
        let path = self.dev.join(format!("dm-{}", device.minor));
        wait_for_node(&path)?;
        Ok(Mapped {
            number: DevNumber {
                major: device.major,
                minor: device.minor,
            },
            path,
        })
    }
}

impl DmKernel {
    /// Whether a DM device of this name exists.
    pub fn exists(&self, name: &str) -> bool {
        self.dm
            .list_devices()
            .is_ok_and(|list| list.iter().any(|(n, _, _)| n.to_string() == name))
    }
}

/// The virtio serial of the GPU driver extension disk (`measure::verity::DEVICE_SERIAL`; the
/// init checks the two agree): never picked as the data disk.
pub const GPU_DRIVER_SERIAL: &str = "cvm-gpu-driver";

/// How the data disk was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selected {
    /// `cvm.data_device` named it (a disk or a partition of it).
    Configured(PathBuf),
    /// A partition named `dstack-data` is on it.
    PartitionLabel(PathBuf),
    /// The only writable virtio disk.
    OnlyVirtioDisk(PathBuf),
}

impl Selected {
    pub fn disk(&self) -> &Path {
        match self {
            Self::Configured(p) | Self::PartitionLabel(p) | Self::OnlyVirtioDisk(p) => p,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("read {path}")]
    ReadSysfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a block device this VM has")]
    UnknownDevice { path: PathBuf },
    #[error("several writable virtio disks ({names}): name the data disk with cvm.data_device")]
    Ambiguous { names: String },
}

fn read_trimmed(path: &Path) -> Result<String, SelectError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| SelectError::ReadSysfs {
            path: path.to_owned(),
            source,
        })
}

/// The whole disk a sysfs block entry belongs to (itself for a disk).
fn whole_disk(class_block: &Path, name: &str) -> Result<String, SelectError> {
    let entry = class_block.join(name);
    if !entry.join("partition").exists() {
        return Ok(name.to_owned());
    }
    let real = std::fs::canonicalize(&entry).map_err(|source| SelectError::ReadSysfs {
        path: entry.clone(),
        source,
    })?;
    real.parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or(SelectError::UnknownDevice { path: entry })
}

/// Pick the data disk as dstack does: the configured device (`cvm.data_device`), else the
/// disk holding a partition named `dstack-data`, else the only writable virtio disk. `None`:
/// no data disk (the stage is skipped). Read-only disks (the host share) never qualify.
pub fn select(
    class_block: &Path,
    dev: &Path,
    configured: Option<&Path>,
) -> Result<Option<Selected>, SelectError> {
    if let Some(path) = configured {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| class_block.join(n).exists())
            .ok_or_else(|| SelectError::UnknownDevice {
                path: path.to_owned(),
            })?;
        let disk = whole_disk(class_block, name)?;
        return Ok(Some(Selected::Configured(dev.join(disk))));
    }
    let mut names: Vec<String> = std::fs::read_dir(class_block)
        .map_err(|source| SelectError::ReadSysfs {
            path: class_block.to_owned(),
            source,
        })?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in &names {
        let entry = class_block.join(name);
        if !entry.join("partition").exists() {
            continue;
        }
        let uevent = read_trimmed(&entry.join("uevent"))?;
        if uevent
            .lines()
            .any(|l| l.strip_prefix("PARTNAME=") == Some(PARTITION_NAME))
        {
            let disk = whole_disk(class_block, name)?;
            return Ok(Some(Selected::PartitionLabel(dev.join(disk))));
        }
    }
    let mut candidates = Vec::new();
    for name in &names {
        let entry = class_block.join(name);
        if !name.starts_with("vd") || entry.join("partition").exists() {
            continue;
        }
        if read_trimmed(&entry.join("ro"))? != "0" || read_trimmed(&entry.join("size"))? == "0" {
            continue;
        }
        // The GPU driver extension is never the data disk, even when attached writable.
        if std::fs::read_to_string(entry.join("serial"))
            .is_ok_and(|s| s.trim() == GPU_DRIVER_SERIAL)
        {
            continue;
        }
        candidates.push(name.clone());
    }
    match candidates.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(Selected::OnlyVirtioDisk(dev.join(one)))),
        many => Err(SelectError::Ambiguous {
            names: many.join(", "),
        }),
    }
}

/// Logical block size of a disk from sysfs (`queue/logical_block_size`), 512 if absent.
pub fn logical_block_size(class_block: &Path, disk: &Path) -> u64 {
    disk.file_name()
        .map(|n| class_block.join(n).join("queue/logical_block_size"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(512)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn disk(root: &Path, name: &str, ro: &str, parts: &[(&str, &str)]) {
        let d = root.join("devices").join(name);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("ro"), ro).unwrap();
        fs::write(d.join("size"), "131072\n").unwrap();
        std::os::unix::fs::symlink(&d, root.join("class").join(name)).unwrap();
        for (part, label) in parts {
            let p = d.join(part);
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("partition"), "1").unwrap();
            fs::write(
                p.join("uevent"),
                format!("DEVTYPE=partition\nPARTNAME={label}\n"),
            )
            .unwrap();
            std::os::unix::fs::symlink(&p, root.join("class").join(part)).unwrap();
        }
    }

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("class")).unwrap();
        t
    }

    #[test]
    fn only_writable_virtio_disk() {
        let t = tree();
        disk(t.path(), "vda", "1", &[]);
        let class = t.path().join("class");
        assert_eq!(select(&class, Path::new("/dev"), None).unwrap(), None);
        disk(t.path(), "vdb", "0", &[]);
        assert_eq!(
            select(&class, Path::new("/dev"), None).unwrap(),
            Some(Selected::OnlyVirtioDisk(PathBuf::from("/dev/vdb")))
        );
        // The GPU driver extension, writable or not, is no candidate.
        disk(t.path(), "vdd", "0", &[]);
        fs::write(t.path().join("devices/vdd/serial"), "cvm-gpu-driver\n").unwrap();
        assert_eq!(
            select(&class, Path::new("/dev"), None).unwrap(),
            Some(Selected::OnlyVirtioDisk(PathBuf::from("/dev/vdb")))
        );
        disk(t.path(), "vdc", "0", &[]);
        assert!(matches!(
            select(&class, Path::new("/dev"), None),
            Err(SelectError::Ambiguous { .. })
        ));
    }

    #[test]
    fn partition_label_wins_over_guessing() {
        let t = tree();
        disk(t.path(), "vdb", "0", &[("vdb1", "other")]);
        disk(t.path(), "vdc", "0", &[("vdc1", "dstack-data")]);
        let class = t.path().join("class");
        assert_eq!(
            select(&class, Path::new("/dev"), None).unwrap(),
            Some(Selected::PartitionLabel(PathBuf::from("/dev/vdc")))
        );
        // The configured device wins; a partition maps to its disk.
        assert_eq!(
            select(&class, Path::new("/dev"), Some(Path::new("/dev/vdb1"))).unwrap(),
            Some(Selected::Configured(PathBuf::from("/dev/vdb")))
        );
        assert!(matches!(
            select(&class, Path::new("/dev"), Some(Path::new("/dev/sdz"))),
            Err(SelectError::UnknownDevice { .. })
        ));
    }
}
