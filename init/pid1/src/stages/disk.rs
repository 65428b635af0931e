//! The `disk` stage: the encrypted data disk (`cvm-disk`). Select the disk (cvm.data_device →
//! a `dstack-data` partition → the only writable virtio disk; none: the stage is skipped),
//! verify its MAC'd header with the disk key, format it on first boot (GPT, dm-integrity,
//! dm-crypt AEAD, ext4) and open it, mount it at [`MOUNT_POINT`]. At shutdown
//! [`close_at_shutdown`] unmounts it and removes the DM devices.
//!
//! The disk key is the KMS's `disk_crypt_key` (keys stage); test builds may take
//! `cvm.test_disk_key`. A data disk without a key (key provider `none`) is fatal: the init
//! never mounts an unencrypted or unauthenticated data disk.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use cvm_disk::kernel::{self, BlockFile, DmKernel, SelectError, Selected};
use cvm_disk::keys::DiskKey;
use cvm_disk::volume::{self, BoxError, Formatted, Fresh, Opened, Reformat, VolumeError};
use init_core::cmdline::Config;
use init_core::plan::MountFlags;

/// Where the data volume is mounted (dstack's persistent directory).
pub(crate) const MOUNT_POINT: &str = "/var/volatile/dstack/persistent";
const CLASS_BLOCK: &str = "/sys/class/block";

#[derive(Debug, thiserror::Error)]
pub(crate) enum DiskStageError {
    #[error("select the data disk")]
    Select(#[source] SelectError),
    #[error("open data disk {path}")]
    OpenDisk {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("open device-mapper control")]
    OpenDm(#[source] BoxError),
    #[error("read random bytes from /dev/urandom")]
    Random(#[source] io::Error),
    #[error("data volume on {disk}")]
    Volume {
        disk: PathBuf,
        #[source]
        source: VolumeError,
    },
    #[error("mount the data volume {device}")]
    Mount {
        device: PathBuf,
        #[source]
        source: init_sys::mount::MountError,
    },
}

/// The mounted data volume.
#[derive(Debug, Clone)]
pub(crate) struct Mounted {
    pub(crate) disk: PathBuf,
    pub(crate) opened: Opened,
}

/// The disk key: the KMS's `disk_crypt_key` (keys stage); test builds may instead take
/// `cvm.test_disk_key` (it wins, so QEMU tests need no KMS).
fn disk_key(config: &Config, app_keys: Option<&cvm_keys::kms::AppKeys>) -> Option<DiskKey> {
    #[cfg(feature = "insecure-test-hooks")]
    if let Some(k) = &config.test_disk_key {
        log::warn!("INSECURE test hook: data disk key from the kernel command line");
        return DiskKey::from_hex(&k.0);
    }
    let _ = config;
    app_keys.map(|k| DiskKey::from_bytes(*k.disk_crypt_key.expose()))
}

/// A random disk key of this boot only (key provider `none`).
fn ephemeral_key() -> Result<DiskKey, DiskStageError> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(bytes.as_mut()))
        .map_err(DiskStageError::Random)?;
    Ok(DiskKey::from_bytes(*bytes))
}

fn fresh() -> Result<Fresh, DiskStageError> {
    let mut bytes = [0u8; 32 + 16 * 4];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(DiskStageError::Random)?;
    let take16 = |i: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&bytes[32 + 16 * i..48 + 16 * i]);
        a
    };
    let mut salt = [0u8; 32];
    salt.copy_from_slice(&bytes[..32]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0);
    Ok(Fresh {
        salt,
        fs_uuid: take16(0),
        hash_seed: take16(1),
        disk_guid: take16(2),
        partition_guid: take16(3),
        now,
    })
}

/// Runs the stage with the keys stage's `app_keys` (the disk key); writes the `disk` record.
/// `Ok(None)`: no data disk.
pub(crate) fn run(
    config: &Config,
    app_keys: Option<&cvm_keys::kms::AppKeys>,
    reformat: Reformat,
    results: &mut crate::results::Results,
) -> Result<Option<Mounted>, DiskStageError> {
    let mounted = open_and_mount(config, app_keys, reformat)?;
    results.record(&init_core::results::Record::Disk {
        device: mounted
            .as_ref()
            .map_or_else(|| "none".to_owned(), |m| m.disk.display().to_string()),
        mount_point: mounted
            .as_ref()
            .map(|_| MOUNT_POINT.to_owned())
            .unwrap_or_default(),
        formatted: mounted.as_ref().is_some_and(|m| m.opened.formatted()),
        format: mounted
            .as_ref()
            .map_or(Formatted::No, |m| m.opened.format)
            .name()
            .to_owned(),
        data_bytes: mounted.as_ref().map_or(0, |m| m.opened.data_bytes),
        mono_us: init_sys::clock::monotonic_us(),
    });
    #[cfg(feature = "insecure-test-hooks")]
    if mounted.is_some() {
        test_hooks::run(config, results);
    }
    Ok(mounted)
}

/// Selects the data disk, opens (or formats) its volume and mounts it. `Ok(None)`: no data disk.
fn open_and_mount(
    config: &Config,
    app_keys: Option<&cvm_keys::kms::AppKeys>,
    reformat: Reformat,
) -> Result<Option<Mounted>, DiskStageError> {
    let configured = config.data_device.as_deref().map(Path::new);
    let Some(selected) = kernel::select(Path::new(CLASS_BLOCK), Path::new("/dev"), configured)
        .map_err(DiskStageError::Select)?
    else {
        log::info!("disk: no data disk");
        return Ok(None);
    };
    let disk = selected.disk().to_owned();
    log::info!(
        "disk: data disk {} ({})",
        disk.display(),
        match selected {
            Selected::Configured(_) => "cvm.data_device",
            Selected::PartitionLabel(_) => "partition dstack-data",
            Selected::OnlyVirtioDisk(_) => "the only writable virtio disk",
        }
    );
    let key = disk_key(config, app_keys);
    let mut block = BlockFile::open(&disk).map_err(|source| DiskStageError::OpenDisk {
        path: disk.clone(),
        source,
    })?;
    let mut dm = DmKernel::new().map_err(DiskStageError::OpenDm)?;
    let lbs = kernel::logical_block_size(Path::new(CLASS_BLOCK), &disk);
    let volume_err = |source| DiskStageError::Volume {
        disk: disk.clone(),
        source,
    };
    let opened = match key {
        Some(key) => volume::open_or_format(&mut dm, &mut block, lbs, &key, &fresh()?, reformat)
            .map_err(volume_err)?,
        None => {
            // Key provider none: no key survives the boot, so neither does the data.
            log::warn!(
                "disk: key provider none: EPHEMERAL disk key (random, this boot only): {} is \
                 formatted now and nothing written to it survives a reboot",
                disk.display()
            );
            let key = ephemeral_key()?;
            volume::format_ephemeral(&mut dm, &mut block, lbs, &key, &fresh()?)
                .map_err(volume_err)?
        }
    };
    let flags = MountFlags {
        nosuid: true,
        nodev: true,
        noexec: false,
    };
    let device = opened.device.display().to_string();
    if let Err(source) = init_sys::mount::mount(
        &device,
        Path::new(MOUNT_POINT),
        volume::STORAGE_FS,
        flags,
        "errors=remount-ro",
    ) {
        let _ = volume::close(&mut dm);
        return Err(DiskStageError::Mount {
            device: opened.device.clone(),
            source,
        });
    }
    log::info!(
        "disk: {} MiB AEAD volume ({}) mounted at {MOUNT_POINT}{}",
        opened.data_bytes >> 20,
        device,
        if opened.formatted() {
            " (formatted)"
        } else {
            ""
        }
    );
    Ok(Some(Mounted { disk, opened }))
}

/// Shutdown: unmount the volume (not lazily: it must be gone before its device is removed),
/// remove the crypt and integrity devices. Best effort: logs and goes on.
pub(crate) fn close_at_shutdown() {
    let Ok(mut dm) = DmKernel::new() else {
        return;
    };
    if !dm.exists(volume::CRYPT_NAME) && !dm.exists(volume::INTEGRITY_NAME) {
        return;
    }
    if Path::new(MOUNT_POINT).exists() {
        match nix::mount::umount(MOUNT_POINT) {
            Ok(()) => log::info!("disk: unmounted {MOUNT_POINT}"),
            Err(nix::errno::Errno::EINVAL) => return, // not mounted: no volume this boot
            Err(e) => log::warn!("disk: unmount {MOUNT_POINT}: {e}"),
        }
    }
    init_sys::power::sync();
    match volume::close(&mut dm) {
        Ok(()) => log::info!("disk: removed the DM devices"),
        Err(e) => log::warn!("disk: {}", init_core::error_chain::one_line(&e)),
    }
}

/// Test builds (`cvm.test_disk`): probes on the mounted volume, each reported as a
/// `test_disk` record (an I/O error is reported, not fatal).
#[cfg(feature = "insecure-test-hooks")]
pub(crate) mod test_hooks {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::time::Instant;

    use init_core::cmdline::TestDiskOp;

    use super::*;

    pub(crate) const PROBE_NAME: &str = "cvm-disk-probe";
    /// 4 MiB: large enough for the host to find its blocks in the image.
    pub(crate) const PROBE_LEN: usize = 4 << 20;
    const BENCH_LEN: usize = 32 << 20;

    /// Deterministic probe content (the test recomputes its sha256).
    pub(crate) fn probe_bytes() -> Vec<u8> {
        let mut v = Vec::with_capacity(PROBE_LEN);
        let mut i = 0u32;
        while v.len() < PROBE_LEN {
            v.extend_from_slice(format!("cvm-disk probe line {i:08}\n").as_bytes());
            i += 1;
        }
        v.truncate(PROBE_LEN);
        v
    }

    fn sha256_hex(data: &[u8]) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(data))
    }

    fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(data)?;
        f.sync_all()?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    fn drop_caches() {
        init_sys::power::sync();
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    }

    /// MB/s for writing (with fsync) then reading (caches dropped) `BENCH_LEN` bytes in `dir`.
    fn throughput(dir: &Path) -> io::Result<(f64, f64)> {
        let path = dir.join("cvm-disk-bench");
        let data = vec![0x5Au8; BENCH_LEN];
        drop_caches();
        let t = Instant::now();
        write_synced(&path, &data)?;
        let write = BENCH_LEN as f64 / t.elapsed().as_secs_f64() / 1e6;
        drop_caches();
        let t = Instant::now();
        let back = std::fs::read(&path)?;
        let read = back.len() as f64 / t.elapsed().as_secs_f64() / 1e6;
        std::fs::remove_file(&path)?;
        Ok((write, read))
    }

    /// The unencrypted comparison disk: our ext4 formatter on the raw disk (the host gives a
    /// fresh, zero-filled file), mounted at /mnt/plain.
    fn plain_dir(device: &str) -> Result<PathBuf, String> {
        let mut block = BlockFile::open(Path::new(device)).map_err(|e| e.to_string())?;
        let size = cvm_disk::volume::BlockDev::size(&mut block).map_err(|e| e.to_string())?;
        let mut file = File::options()
            .write(true)
            .open(device)
            .map_err(|e| e.to_string())?;
        let params = cvm_disk::ext4::Ext4Params {
            uuid: [0x11; 16],
            hash_seed: [0x22; 16],
            label: "plain",
            now: 0,
        };
        cvm_disk::ext4::format(&mut file, size, &params).map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
        let dir = PathBuf::from("/mnt/plain");
        init_sys::mount::mount(device, &dir, "ext4", MountFlags::default(), "")
            .map_err(|e| init_core::error_chain::one_line(&e))?;
        Ok(dir)
    }

    fn bench(config: &Config) -> Result<String, String> {
        let (ew, er) = throughput(Path::new(MOUNT_POINT)).map_err(|e| format!("bench: {e}"))?;
        let plain = config
            .test_disk_plain
            .as_deref()
            .ok_or("cvm.test_disk=bench needs cvm.test_disk_plain")?;
        let dir = plain_dir(plain)?;
        let (pw, pr) = throughput(&dir).map_err(|e| format!("bench plain: {e}"))?;
        let _ = nix::mount::umount(&dir);
        Ok(format!(
            "{{\"bytes\":{BENCH_LEN},\"integrity_mode\":\"J\",\"cipher\":\"{}\",\
             \"aead_write_mbs\":{ew:.1},\"aead_read_mbs\":{er:.1},\
             \"plain_write_mbs\":{pw:.1},\"plain_read_mbs\":{pr:.1},\
             \"write_ratio\":{:.3},\"read_ratio\":{:.3}}}",
            cvm_disk::tables::CRYPT_CIPHER,
            ew / pw,
            er / pr
        ))
    }

    pub(crate) fn run(config: &Config, results: &mut crate::results::Results) {
        let probe = Path::new(MOUNT_POINT).join(PROBE_NAME);
        for op in &config.test_disk {
            let (name, outcome) = match op {
                TestDiskOp::Write => {
                    let data = probe_bytes();
                    (
                        "write",
                        write_synced(&probe, &data)
                            .map(|()| sha256_hex(&data))
                            .map_err(|e| format!("write {}: {e}", probe.display())),
                    )
                }
                TestDiskOp::Read => (
                    "read",
                    std::fs::read(&probe)
                        .map(|d| sha256_hex(&d))
                        .map_err(|e| format!("read {}: {e}", probe.display())),
                ),
                TestDiskOp::Bench => ("bench", bench(config)),
            };
            let (detail, error) = match outcome {
                Ok(d) => (d, String::new()),
                Err(e) => {
                    log::error!("test hook: disk {name}: {e}");
                    (String::new(), e)
                }
            };
            log::warn!("test hook: disk {name}: {detail}{error}");
            results.record(&init_core::results::Record::TestDisk {
                op: name.into(),
                detail,
                error,
                mono_us: init_sys::clock::monotonic_us(),
            });
        }
    }
}
