//! The first-boot state machine and the open path, over narrow kernel traits (a block device
//! and device-mapper), so host tests drive it with fakes and cut the power at every step.
//!
//! ```text
//! disk zero?            -> write GPT (one `dstack-data` partition)
//! header area (read once, verified in memory):
//!   blank / formatting  -> header "formatting" (slot A, sync, slot B, sync)
//!                          zero the dm-integrity superblock, let the kernel format it
//!                          (8-sector table), read provided_data_sectors back
//!                          integrity (direct) + crypt; write zeros over the whole volume
//!                          (initialises every tag); ext4; sync; remove both
//!                          header "ready" (slot A, sync, slot B, sync)
//!   ready               -> integrity (journal) + crypt, from the verified header only
//!   does not verify     -> stop: nothing written
//! ```
//! A power cut anywhere before the "ready" header leaves a "formatting" (or blank) header, so
//! the next boot formats again from the start; a half-formatted volume is never opened.

use std::io;
use std::path::{Path, PathBuf};

use crate::ext4::{self, BlockWriter, Ext4Error, Ext4Params};
use crate::gpt::{self, GptError, Partition};
use crate::header::{
    Found, HEADER_AREA_LEN, Header, HeaderError, INTEGRITY_OFFSET_SECTORS, SLOT_LEN, VolumeState,
    inspect,
};
use crate::keys::DiskKey;
use crate::tables::{
    DevNumber, DmTarget, INTEGRITY_FORMAT_SECTORS, IntegrityMode, IntegritySuperblock,
    IntegritySuperblockError, crypt_target, integrity_target,
};

/// DM name of the integrity device.
pub const INTEGRITY_NAME: &str = "cvm-data-integrity";
/// DM name of the decrypted volume.
pub const CRYPT_NAME: &str = "cvm-data";
/// Filesystem the volume carries (the `storage-fs` event payload).
pub const STORAGE_FS: &str = "ext4";
const WIPE_CHUNK: usize = 1 << 20;

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A block device: the data disk or a DM device.
pub trait BlockDev {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    fn sync(&mut self) -> io::Result<()>;
    fn size(&mut self) -> io::Result<u64>;
    fn number(&self) -> DevNumber;
}

/// A DM device the kernel created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub number: DevNumber,
    pub path: PathBuf,
}

/// Device-mapper and opening block devices.
pub trait Kernel {
    type Block: BlockDev;
    /// Create `name` with one target, load and resume it.
    fn create_device(&mut self, name: &str, target: &DmTarget) -> Result<Mapped, BoxError>;
    fn remove_device(&mut self, name: &str) -> Result<(), BoxError>;
    fn open(&mut self, path: &Path) -> io::Result<Self::Block>;
}

/// Random inputs of a format (from the kernel's RNG in the init).
#[derive(Debug, Clone)]
pub struct Fresh {
    pub salt: [u8; 32],
    pub fs_uuid: [u8; 16],
    pub hash_seed: [u8; 16],
    pub disk_guid: [u8; 16],
    pub partition_guid: [u8; 16],
    /// Seconds since the epoch, for the ext4 timestamps.
    pub now: u32,
}

/// Whether a disk that was initialised before may be formatted again (app-compose
/// `allow_disk_reformat`). A blank disk (all zeros where this reads) is always formatted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reformat {
    /// Refuse: the disk stays as it is and the boot stops with the reason.
    Refuse,
    /// Format again (the boot measures `disk-formatted` with the reason).
    Allow,
}

/// Why this boot formatted the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formatted {
    /// It did not: the volume was opened.
    No,
    /// The disk was blank: a first boot.
    Blank,
    /// The disk had been initialised (a format that did not finish, or a header that was
    /// zeroed or replayed) and app-compose allowed formatting it again.
    Again,
    /// Key provider `none`: a random key of this boot only, so the disk is formatted at every
    /// boot and nothing on it survives a reboot ([`format_ephemeral`]).
    Ephemeral,
}

impl Formatted {
    /// `none`, `blank` or `again` (records and the `disk-formatted` event).
    pub const fn name(self) -> &'static str {
        match self {
            Self::No => "none",
            Self::Blank => "blank",
            Self::Again => "again",
            Self::Ephemeral => "ephemeral",
        }
    }
}

impl Opened {
    /// Whether this boot formatted the volume.
    pub fn formatted(&self) -> bool {
        self.format != Formatted::No
    }
}

/// The opened volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The decrypted volume's device node (`/dev/dm-N`).
    pub device: PathBuf,
    /// Whether and why this boot formatted it.
    pub format: Formatted,
    pub partition: Partition,
    pub data_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("read the data disk at byte {offset}")]
    ReadDisk {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("write the data disk at byte {offset}")]
    WriteDisk {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("flush the data disk")]
    SyncDisk(#[source] io::Error),
    #[error("size of the data disk")]
    DiskSize(#[source] io::Error),
    #[error("partition table")]
    Gpt(#[source] GptError),
    #[error("volume header")]
    Header(#[source] HeaderError),
    #[error(
        "the data disk was initialised before and {why}: refusing to format it again (its data \
         would be lost, or a host rolled the disk back); attach a blank disk, or set \
         `allow_disk_reformat: true` in app-compose to allow it"
    )]
    ReformatRefused { why: &'static str },
    #[error("create DM device {name}")]
    CreateDevice {
        name: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("remove DM device {name}")]
    RemoveDevice {
        name: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("open {path}")]
    OpenDevice {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("dm-integrity superblock the kernel formatted")]
    IntegritySuperblock(#[source] IntegritySuperblockError),
    #[error("the header records {header} data sectors but the partition holds at most {fits}")]
    DataSectors { header: u64, fits: u64 },
    #[error("initialise the integrity tags (write zeros at byte {offset} of the volume)")]
    Wipe {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("flush the volume")]
    SyncVolume(#[source] io::Error),
    #[error("create the ext4 filesystem")]
    Format(#[source] Ext4Error),
}

struct Writer<'a, B: BlockDev>(&'a mut B);

impl<B: BlockDev> BlockWriter for Writer<'_, B> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_at(offset, data)
    }
}

fn read<B: BlockDev>(disk: &mut B, offset: u64, len: usize) -> Result<Vec<u8>, VolumeError> {
    let mut buf = vec![0u8; len];
    disk.read_at(offset, &mut buf)
        .map_err(|source| VolumeError::ReadDisk { offset, source })?;
    Ok(buf)
}

fn write<B: BlockDev>(disk: &mut B, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
    disk.write_at(offset, data)
        .map_err(|source| VolumeError::WriteDisk { offset, source })
}

fn sync<B: BlockDev>(disk: &mut B) -> Result<(), VolumeError> {
    disk.sync().map_err(VolumeError::SyncDisk)
}

/// Find (or create, on an all-zero disk) the data partition; grow it when the disk grew.
pub fn partition<B: BlockDev>(
    disk: &mut B,
    logical_block_size: u64,
    fresh: &Fresh,
) -> Result<Partition, VolumeError> {
    let size = disk.size().map_err(VolumeError::DiskSize)?;
    let area = read(disk, 0, gpt::PRIMARY_AREA_LEN)?;
    let plan = if area.iter().all(|&b| b == 0) {
        log::info!(
            "disk: empty disk, writing a GPT with one {} partition",
            gpt::PARTITION_NAME
        );
        gpt::create(
            size,
            logical_block_size,
            fresh.disk_guid,
            fresh.partition_guid,
        )
    } else {
        gpt::find(&area, size, logical_block_size)
    }
    .map_err(VolumeError::Gpt)?;
    if !plan.writes.is_empty() {
        // Backup table first, primary last: a cut leaves the old primary in charge.
        for (offset, data) in &plan.writes {
            write(disk, *offset, data)?;
        }
        sync(disk)?;
    }
    Ok(plan.partition)
}

fn write_header<B: BlockDev>(
    disk: &mut B,
    part: Partition,
    header: &Header,
    key: &DiskKey,
) -> Result<(), VolumeError> {
    let slot = header.encode(key);
    for i in 0..2u64 {
        write(disk, part.offset + i * SLOT_LEN as u64, &slot)?;
        sync(disk)?;
    }
    Ok(())
}

fn create<K: Kernel>(
    kernel: &mut K,
    name: &'static str,
    target: &DmTarget,
) -> Result<Mapped, VolumeError> {
    kernel
        .create_device(name, target)
        .map_err(|source| VolumeError::CreateDevice { name, source })
}

fn remove<K: Kernel>(kernel: &mut K, name: &'static str) -> Result<(), VolumeError> {
    kernel
        .remove_device(name)
        .map_err(|source| VolumeError::RemoveDevice { name, source })
}

/// Map the volume: integrity then crypt, both from the verified `header`.
fn map<K: Kernel>(
    kernel: &mut K,
    disk: DevNumber,
    part: Partition,
    header: &Header,
    key: &DiskKey,
    mode: IntegrityMode,
) -> Result<Mapped, VolumeError> {
    let sectors = header.provided_data_sectors;
    let fits = (part.length / 512).saturating_sub(INTEGRITY_OFFSET_SECTORS);
    if sectors == 0 || sectors > fits {
        return Err(VolumeError::DataSectors {
            header: sectors,
            fits,
        });
    }
    let start = part.offset / 512;
    let integrity = create(
        kernel,
        INTEGRITY_NAME,
        &integrity_target(disk, start, sectors, mode, key, &header.salt),
    )?;
    match create(
        kernel,
        CRYPT_NAME,
        &crypt_target(integrity.number, sectors, key, &header.salt),
    ) {
        Ok(m) => Ok(m),
        Err(e) => {
            let _ = kernel.remove_device(INTEGRITY_NAME);
            Err(e)
        }
    }
}

/// Remove both DM devices (crypt first). Used at shutdown and after the format.
pub fn close<K: Kernel>(kernel: &mut K) -> Result<(), VolumeError> {
    remove(kernel, CRYPT_NAME)?;
    remove(kernel, INTEGRITY_NAME)
}

fn format<K: Kernel>(
    kernel: &mut K,
    disk: &mut K::Block,
    part: Partition,
    header: &Header,
    key: &DiskKey,
    fresh: &Fresh,
) -> Result<Header, VolumeError> {
    write_header(disk, part, header, key)?;
    // A zero superblock makes the kernel format dm-integrity afresh (also after a cut).
    let sb_offset = part.offset + INTEGRITY_OFFSET_SECTORS * 512;
    write(disk, sb_offset, &[0u8; 64 * 1024])?;
    sync(disk)?;
    let number = disk.number();
    let start = part.offset / 512;
    let probe = integrity_target(
        number,
        start,
        INTEGRITY_FORMAT_SECTORS,
        IntegrityMode::Journal,
        key,
        &header.salt,
    );
    create(kernel, INTEGRITY_NAME, &probe)?;
    remove(kernel, INTEGRITY_NAME)?;
    let sb = read(disk, sb_offset, 32)?;
    let mut first = [0u8; 32];
    first.copy_from_slice(&sb);
    let sb = IntegritySuperblock::parse(&first).map_err(VolumeError::IntegritySuperblock)?;
    let ready = header.ready(sb.provided_data_sectors);
    log::info!(
        "disk: dm-integrity formatted, {} MiB of data",
        sb.provided_data_sectors / 2048
    );
    let mapped = map(kernel, number, part, &ready, key, IntegrityMode::Direct)?;
    let result = fill(
        kernel,
        &mapped,
        sb.provided_data_sectors * 512,
        header,
        fresh,
    );
    close(kernel)?;
    result?;
    log::info!("disk: filesystem written, marking the volume ready");
    write_header(disk, part, &ready, key)?;
    Ok(ready)
}

/// Zeros over the whole volume (initialises every integrity tag), then ext4.
fn fill<K: Kernel>(
    kernel: &mut K,
    mapped: &Mapped,
    bytes: u64,
    header: &Header,
    fresh: &Fresh,
) -> Result<(), VolumeError> {
    let mut volume = kernel
        .open(&mapped.path)
        .map_err(|source| VolumeError::OpenDevice {
            path: mapped.path.clone(),
            source,
        })?;
    let zeros = vec![0u8; WIPE_CHUNK];
    let mut offset = 0u64;
    while offset < bytes {
        let n = usize::try_from(bytes - offset)
            .unwrap_or(WIPE_CHUNK)
            .min(WIPE_CHUNK);
        volume
            .write_at(offset, &zeros[..n])
            .map_err(|source| VolumeError::Wipe { offset, source })?;
        offset += n as u64;
    }
    let params = Ext4Params {
        uuid: header.fs_uuid,
        hash_seed: fresh.hash_seed,
        label: gpt::PARTITION_NAME,
        now: fresh.now,
    };
    ext4::format(&mut Writer(&mut volume), bytes, &params).map_err(VolumeError::Format)?;
    volume.sync().map_err(VolumeError::SyncVolume)
}

/// How many evenly spaced 4 KiB probes decide whether a disk without a partition table is
/// blank.
const BLANK_PROBES: u64 = 64;

/// Whether the whole disk reads as never written: no partition table and zeros at
/// [`BLANK_PROBES`] evenly spaced 4 KiB probes (a new virtual disk is sparse, all zeros).
fn looks_blank<B: BlockDev>(disk: &mut B, size: u64, gpt_area: &[u8]) -> Result<bool, VolumeError> {
    if !gpt_area.iter().all(|&b| b == 0) {
        return Ok(false);
    }
    const PROBE: u64 = 4096;
    const PROBE_LEN: usize = 4096;
    if size <= PROBE {
        return Ok(true);
    }
    let step = (size - PROBE) / BLANK_PROBES;
    for i in 1..=BLANK_PROBES {
        let offset = (i * step) & !(PROBE - 1);
        if !read(disk, offset, PROBE_LEN)?.iter().all(|&b| b == 0) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Open the volume on the data partition, formatting it first when the disk is blank; a disk
/// that was initialised before (a format that did not finish, a zeroed or replayed header) is
/// formatted again only with [`Reformat::Allow`]. The header area is read once; a header that
/// does not verify stops here with nothing written.
pub fn open_or_format<K: Kernel>(
    kernel: &mut K,
    disk: &mut K::Block,
    logical_block_size: u64,
    key: &DiskKey,
    fresh: &Fresh,
    reformat: Reformat,
) -> Result<Opened, VolumeError> {
    // Verify the header before anything is written (also before a GPT grow).
    let size = disk.size().map_err(VolumeError::DiskSize)?;
    let area = read(disk, 0, gpt::PRIMARY_AREA_LEN)?;
    let mut header_blank_with_table = false;
    if !area.iter().all(|&b| b == 0) {
        let current = gpt::find(&area, size, logical_block_size).map_err(VolumeError::Gpt)?;
        let header_area = read(disk, current.partition.offset, HEADER_AREA_LEN)?;
        header_blank_with_table =
            inspect(&header_area, key).map_err(VolumeError::Header)? == Found::Blank;
    }
    let blank_disk = looks_blank(disk, size, &area)?;
    let again = |why: &'static str| match reformat {
        Reformat::Refuse => Err(VolumeError::ReformatRefused { why }),
        Reformat::Allow => {
            log::warn!(
                "disk: the disk was initialised before and {why}; formatting it AGAIN (allow_disk_reformat)"
            );
            Ok(())
        }
    };
    // Refused before anything is written: the partition table stays as found.
    if header_blank_with_table {
        again("its volume header is blank")?;
    } else if area.iter().all(|&b| b == 0) && !blank_disk {
        again("its partition table is gone but data is left")?;
    }
    let part = partition(disk, logical_block_size, fresh)?;
    let header_area = read(disk, part.offset, HEADER_AREA_LEN)?;
    let found = inspect(&header_area, key).map_err(VolumeError::Header)?;
    let (header, format_kind) = match found {
        Found::Volume(h) if h.state == VolumeState::Ready => (h, Formatted::No),
        Found::Volume(h) => {
            again("a format of it did not finish (or its header was replayed)")?;
            (
                format(kernel, disk, part, &h, key, fresh)?,
                Formatted::Again,
            )
        }
        Found::Blank => {
            let kind = if blank_disk {
                log::info!("disk: blank disk, formatting");
                Formatted::Blank
            } else {
                Formatted::Again
            };
            let h = Header::formatting(fresh.salt, fresh.fs_uuid);
            (format(kernel, disk, part, &h, key, fresh)?, kind)
        }
    };
    open_mapped(kernel, disk, part, &header, key, format_kind)
}

/// Maps the verified volume (journal mode) and describes it.
fn open_mapped<K: Kernel>(
    kernel: &mut K,
    disk: &K::Block,
    part: Partition,
    header: &Header,
    key: &DiskKey,
    format: Formatted,
) -> Result<Opened, VolumeError> {
    let mapped = map(
        kernel,
        disk.number(),
        part,
        header,
        key,
        IntegrityMode::Journal,
    )?;
    Ok(Opened {
        device: mapped.path,
        format,
        partition: part,
        data_bytes: header.provided_data_sectors * 512,
    })
}

/// Formats the data partition with `key`, a random key of this boot only (key provider
/// `none`): whatever cvm-disk volume was there is unreadable without its old key and is
/// replaced. Data that is not ours (a partition table without our partition, a header area
/// that is neither blank nor a cvm-disk header) is refused with nothing written, as in
/// [`open_or_format`].
pub fn format_ephemeral<K: Kernel>(
    kernel: &mut K,
    disk: &mut K::Block,
    logical_block_size: u64,
    key: &DiskKey,
    fresh: &Fresh,
) -> Result<Opened, VolumeError> {
    let size = disk.size().map_err(VolumeError::DiskSize)?;
    let area = read(disk, 0, gpt::PRIMARY_AREA_LEN)?;
    if !area.iter().all(|&b| b == 0) {
        let current = gpt::find(&area, size, logical_block_size).map_err(VolumeError::Gpt)?;
        let header_area = read(disk, current.partition.offset, HEADER_AREA_LEN)?;
        let ours = header_area.iter().all(|&b| b == 0)
            || header_area
                .chunks_exact(SLOT_LEN)
                .any(|slot| slot.get(..8) == Some(crate::header::MAGIC.as_slice()));
        if !ours {
            return Err(VolumeError::Header(HeaderError::ForeignData));
        }
    }
    let part = partition(disk, logical_block_size, fresh)?;
    let start = Header::formatting(fresh.salt, fresh.fs_uuid);
    let header = format(kernel, disk, part, &start, key, fresh)?;
    open_mapped(kernel, disk, part, &header, key, Formatted::Ephemeral)
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
pub(crate) mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::Rc;

    use super::*;
    use crate::tables::redact;

    const DISK: usize = 16 << 20;

    /// What survives a power cut: the disk bytes and the plaintext the fake dm-crypt holds.
    #[derive(Default, Clone)]
    pub(crate) struct State {
        disk: Vec<u8>,
        volume: Vec<u8>,
    }

    #[derive(Clone)]
    struct Shared {
        state: Rc<RefCell<State>>,
        /// Operations left before the power goes (None: never).
        budget: Rc<RefCell<Option<usize>>>,
        log: Rc<RefCell<Vec<String>>>,
    }

    impl Shared {
        fn tick(&self) -> io::Result<()> {
            let mut b = self.budget.borrow_mut();
            match b.as_mut() {
                Some(0) => Err(io::Error::other("power cut")),
                Some(n) => {
                    *n -= 1;
                    Ok(())
                }
                None => Ok(()),
            }
        }
    }

    struct FakeBlock {
        shared: Shared,
        volume: bool,
        number: DevNumber,
    }

    impl FakeBlock {
        fn with<R>(&self, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
            let mut s = self.shared.state.borrow_mut();
            f(if self.volume {
                &mut s.volume
            } else {
                &mut s.disk
            })
        }
    }

    impl BlockDev for FakeBlock {
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            self.with(|d| {
                let o = offset as usize;
                buf.copy_from_slice(&d[o..o + buf.len()]);
            });
            Ok(())
        }
        fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.shared.tick()?;
            self.with(|d| {
                let o = offset as usize;
                d[o..o + data.len()].copy_from_slice(data);
            });
            Ok(())
        }
        fn sync(&mut self) -> io::Result<()> {
            self.shared.tick()
        }
        fn size(&mut self) -> io::Result<u64> {
            Ok(self.with(|d| d.len() as u64))
        }
        fn number(&self) -> DevNumber {
            self.number
        }
    }

    struct FakeKernel {
        shared: Shared,
        devices: BTreeMap<String, u64>,
    }

    impl Kernel for FakeKernel {
        type Block = FakeBlock;
        fn create_device(&mut self, name: &str, target: &DmTarget) -> Result<Mapped, BoxError> {
            self.shared.tick()?;
            self.shared.log.borrow_mut().push(format!(
                "create {name} {} {}",
                target.length,
                redact(&target.params)
            ));
            if target.target_type == "integrity" {
                // The kernel formats a zeroed superblock: 90% of the partition for data.
                let offset: usize = target.params.split(' ').nth(1).unwrap().parse().unwrap();
                let mut s = self.shared.state.borrow_mut();
                let sb = &mut s.disk[offset * 512..offset * 512 + 4096];
                if sb.iter().all(|&b| b == 0) {
                    sb[..8].copy_from_slice(b"integrt\0");
                    sb[10..12].copy_from_slice(&48u16.to_le_bytes());
                    sb[16..24].copy_from_slice(&(12u64 << 11).to_le_bytes());
                    sb[28] = 3;
                }
                let provided = u64::from_le_bytes(sb[16..24].try_into().unwrap());
                if target.length > provided {
                    return Err("device too small".into());
                }
                if s.volume.len() < (provided * 512) as usize {
                    s.volume = vec![0xEE; (provided * 512) as usize];
                }
            }
            let minor = self.devices.len() as u32;
            self.devices.insert(name.to_owned(), target.length);
            Ok(Mapped {
                number: DevNumber { major: 253, minor },
                path: PathBuf::from(format!("/dev/dm-{minor}")),
            })
        }
        fn remove_device(&mut self, name: &str) -> Result<(), BoxError> {
            self.shared.log.borrow_mut().push(format!("remove {name}"));
            self.devices.remove(name).ok_or("no such device")?;
            Ok(())
        }
        fn open(&mut self, _path: &Path) -> io::Result<FakeBlock> {
            Ok(FakeBlock {
                shared: self.shared.clone(),
                volume: true,
                number: DevNumber {
                    major: 253,
                    minor: 9,
                },
            })
        }
    }

    fn fresh() -> Fresh {
        Fresh {
            salt: [1; 32],
            fs_uuid: [2; 16],
            hash_seed: [3; 16],
            disk_guid: [4; 16],
            partition_guid: [5; 16],
            now: 1_700_000_000,
        }
    }

    fn boot(
        state: State,
        key: u8,
        budget: Option<usize>,
    ) -> (Result<Opened, VolumeError>, State, Vec<String>) {
        boot_with(state, key, budget, Reformat::Refuse)
    }

    /// How a test boot opens the disk.
    #[derive(Clone, Copy)]
    enum Open {
        /// `open_or_format` with this policy.
        Keyed(Reformat),
        /// `format_ephemeral`.
        Ephemeral,
    }

    fn boot_with(
        state: State,
        key: u8,
        budget: Option<usize>,
        reformat: Reformat,
    ) -> (Result<Opened, VolumeError>, State, Vec<String>) {
        boot_as(state, key, budget, Open::Keyed(reformat))
    }

    fn boot_as(
        state: State,
        key: u8,
        budget: Option<usize>,
        open: Open,
    ) -> (Result<Opened, VolumeError>, State, Vec<String>) {
        let shared = Shared {
            state: Rc::new(RefCell::new(state)),
            budget: Rc::new(RefCell::new(budget)),
            log: Rc::default(),
        };
        let mut kernel = FakeKernel {
            shared: shared.clone(),
            devices: BTreeMap::new(),
        };
        let mut disk = FakeBlock {
            shared: shared.clone(),
            volume: false,
            number: DevNumber {
                major: 254,
                minor: 16,
            },
        };
        let key = DiskKey::from_bytes([key; 32]);
        let result = match open {
            Open::Keyed(reformat) => {
                open_or_format(&mut kernel, &mut disk, 512, &key, &fresh(), reformat)
            }
            Open::Ephemeral => format_ephemeral(&mut kernel, &mut disk, 512, &key, &fresh()),
        };
        let log = shared.log.borrow().clone();
        if result.is_err() {
            // A failed boot leaves no device behind.
            let _ = close(&mut kernel);
            assert!(
                kernel.devices.is_empty() || budget.is_some(),
                "{:?}",
                kernel.devices
            );
        }
        let state = shared.state.borrow().clone();
        (result, state, log)
    }

    fn blank() -> State {
        State {
            disk: vec![0; DISK],
            volume: Vec::new(),
        }
    }

    fn assert_ext4(state: &State) {
        assert_eq!(&state.volume[1024 + 56..1024 + 58], &[0x53, 0xEF]);
        // The wipe reached the end of the volume.
        assert!(
            state.volume[state.volume.len() - 4096..]
                .iter()
                .all(|&b| b == 0)
        );
    }

    #[test]
    fn first_boot_formats_then_second_boot_opens() {
        let (r, state, log) = boot(blank(), 1, None);
        let opened = r.unwrap();
        assert!(opened.formatted());
        assert_eq!(opened.format, Formatted::Blank);
        assert_eq!(opened.partition.offset, 1 << 20);
        assert_eq!(opened.data_bytes, 12 << 20);
        assert_ext4(&state);
        assert_eq!(
            log,
            [
                "create cvm-data-integrity 8 254:16 4096 48 J 4 block_size:4096 fix_padding fix_hmac journal_mac:hmac(sha256):<key>",
                "remove cvm-data-integrity",
                "create cvm-data-integrity 24576 254:16 4096 48 D 4 block_size:4096 fix_padding fix_hmac journal_mac:hmac(sha256):<key>",
                "create cvm-data 24576 capi:authenc(hmac(sha256),xts(aes))-random <key> 0 253:0 0 2 integrity:48:aead sector_size:4096",
                "remove cvm-data",
                "remove cvm-data-integrity",
                "create cvm-data-integrity 24576 254:16 4096 48 J 4 block_size:4096 fix_padding fix_hmac journal_mac:hmac(sha256):<key>",
                "create cvm-data 24576 capi:authenc(hmac(sha256),xts(aes))-random <key> 0 253:0 0 2 integrity:48:aead sector_size:4096",
            ]
        );
        let (r, again, log) = boot(state.clone(), 1, None);
        let opened = r.unwrap();
        assert!(!opened.formatted());
        assert_eq!(opened.format, Formatted::No);
        assert_eq!(log.len(), 2);
        assert_eq!(again.disk, state.disk, "an open writes nothing to the disk");
    }

    #[test]
    fn wrong_key_writes_nothing() {
        let (r, state, _) = boot(blank(), 1, None);
        r.unwrap();
        let (r, after, log) = boot(state.clone(), 2, None);
        assert!(matches!(
            r.unwrap_err(),
            VolumeError::Header(HeaderError::VerifyMac)
        ));
        assert!(log.is_empty(), "{log:?}");
        assert!(after.disk == state.disk);
    }

    #[test]
    fn foreign_disk_is_refused() {
        let mut s = blank();
        s.disk[0x438] = 0x53;
        let (r, after, _) = boot(s.clone(), 1, None);
        assert!(matches!(r.unwrap_err(), VolumeError::Gpt(GptError::NotGpt)));
        assert!(after.disk == s.disk);
    }

    #[test]
    fn power_cut_at_every_step_then_reboot_gives_a_clean_volume() {
        // Count the operations of a full first boot.
        let mut steps = 0;
        loop {
            let (r, state, _) = boot(blank(), 1, Some(steps));
            if r.is_ok() {
                break;
            }
            // Without the app-compose opt-in a cut format is never redone silently (a cut
            // after the format finished opens the volume as it is).
            if state.disk.iter().any(|&b| b != 0) {
                let (again, kept, _) = boot(state.clone(), 1, None);
                match again {
                    Err(VolumeError::ReformatRefused { .. }) => {
                        assert!(kept.disk == state.disk, "a refusal wrote to the disk");
                    }
                    Ok(o) if !o.formatted() => {}
                    other => panic!("cut at step {steps}: {other:?}"),
                }
            }
            // …with it, the boot after the cut finishes (restarting the format) and opens a
            // full ext4.
            let (r2, after, _) = boot_with(state, 1, None, Reformat::Allow);
            let opened = r2.unwrap_or_else(|e| panic!("cut at step {steps}: {e:?}"));
            assert!(opened.formatted() || steps > 0, "cut at step {steps}");
            assert_ext4(&after);
            steps += 1;
            assert!(steps < 2000);
        }
        assert!(steps > 20, "only {steps} steps");
    }

    #[test]
    fn ephemeral_formats_every_boot_and_refuses_foreign_data() {
        let boot_ephemeral = |state: State, key: u8| {
            let (r, state, _) = boot_as(state, key, None, Open::Ephemeral);
            (r, state)
        };
        let (r, first) = boot_ephemeral(blank(), 7);
        assert_eq!(r.unwrap().format, Formatted::Ephemeral);
        assert_ext4(&first);
        // The next boot has another random key: the old volume is replaced, not refused.
        let (r, second) = boot_ephemeral(first.clone(), 8);
        assert_eq!(r.unwrap().format, Formatted::Ephemeral);
        assert!(second.disk != first.disk);
        // A disk of another system is never overwritten.
        let mut foreign = blank();
        foreign.disk[0x438] = 0x53;
        let (r, after) = boot_ephemeral(foreign.clone(), 7);
        assert!(
            matches!(r, Err(VolumeError::Gpt(GptError::NotGpt))),
            "{r:?}"
        );
        assert!(after.disk == foreign.disk);
    }

    /// The host zeroes the volume header, zeroes the partition table too, or replays the
    /// first-boot "formatting" header of a disk in use: each is refused with nothing written;
    /// with the opt-in each formats again and says so.
    #[test]
    fn zeroed_or_replayed_header_is_not_reformatted_silently() {
        let (r, first, _) = boot(blank(), 1, None);
        let part = r.unwrap().partition;
        // The header of the first format's start, as a host would have copied it.
        let formatting =
            Header::formatting(fresh().salt, fresh().fs_uuid).encode(&DiskKey::from_bytes([1; 32]));
        let header = part.offset as usize;
        let mut zeroed = first.clone();
        zeroed.disk[header..header + HEADER_AREA_LEN].fill(0);
        let mut no_table = zeroed.clone();
        no_table.disk[..gpt::PRIMARY_AREA_LEN].fill(0);
        let mut replayed = first.clone();
        for i in 0..2 {
            let at = header + i * SLOT_LEN;
            replayed.disk[at..at + SLOT_LEN].copy_from_slice(&formatting);
        }
        for (what, state) in [
            ("zeroed", zeroed),
            ("no table", no_table),
            ("replayed", replayed),
        ] {
            let (r, after, log) = boot(state.clone(), 1, None);
            let err = r.unwrap_err();
            assert!(
                matches!(err, VolumeError::ReformatRefused { .. }),
                "{what}: {err:?}"
            );
            assert!(
                err.to_string().contains("allow_disk_reformat"),
                "{what}: {err}"
            );
            assert!(
                log.is_empty() && after.disk == state.disk,
                "{what}: wrote {log:?}"
            );
            let (r, _, _) = boot_with(state, 1, None, Reformat::Allow);
            assert_eq!(r.unwrap().format, Formatted::Again, "{what}");
        }
    }
}
