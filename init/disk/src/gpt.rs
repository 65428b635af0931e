//! GPT for the data disk, without `sgdisk`: create a table with one partition named
//! `dstack-data` (type Linux filesystem, from 1 MiB to the end, whole MiB) on an empty disk,
//! find that partition on later boots, and move the backup table to the end and extend the
//! partition when the disk grew (dstack: `sgdisk -e` + `parted resizepart N 100%`).
//!
//! The host controls the GPT: a bad one is an error (never guessed around), and what it says
//! only selects where the MAC'd volume header is read from.

pub const PARTITION_NAME: &str = "dstack-data";
/// Linux filesystem data, `0FC63DAF-8483-4772-8E79-3D69D8477DE4`, in on-disk byte order.
pub const LINUX_FS_TYPE: [u8; 16] = [
    0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4,
];
const ENTRIES: u32 = 128;
const ENTRY_LEN: usize = 128;
const ENTRIES_BYTES: usize = 128 * ENTRY_LEN;
const HEADER_LEN: usize = 92;
const HEADER_LEN_U32: u32 = 92;
const ENTRY_LEN_U32: u32 = 128;
const MIB: u64 = 1 << 20;
/// Bytes from the disk start that hold the protective MBR, primary header and entries for any
/// logical block size up to 4096.
pub const PRIMARY_AREA_LEN: usize = 6 * 4096;

/// IEEE CRC-32 (as GPT uses).
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            #[allow(clippy::cast_possible_truncation)]
            let mut c = i as u32; // i < 256
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for &b in data {
        c = TABLE[usize::from(c.to_le_bytes()[0] ^ b)] ^ (c >> 8);
    }
    !c
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GptError {
    #[error("logical block size {size} is not 512 or 4096")]
    BlockSize { size: u64 },
    #[error("disk of {bytes} bytes is too small for a data partition")]
    DiskTooSmall { bytes: u64 },
    #[error("the disk has data but no GPT (refusing to partition it)")]
    NotGpt,
    #[error("GPT header is invalid: {reason}")]
    Header { reason: &'static str },
    #[error("GPT has no partition named {PARTITION_NAME}")]
    NoDataPartition,
    #[error("GPT partition {PARTITION_NAME} has an invalid range {first}..={last}")]
    PartitionRange { first: u64, last: u64 },
}

/// Byte range of the data partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub offset: u64,
    pub length: u64,
}

/// Writes that put a GPT on the disk: (byte offset, bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptWrites {
    pub writes: Vec<(u64, Vec<u8>)>,
    pub partition: Partition,
}

struct Geometry {
    lbs: u64,
    last_lba: u64,
    entry_lbas: u64,
}

impl Geometry {
    fn new(disk_bytes: u64, lbs: u64) -> Result<Self, GptError> {
        if lbs != 512 && lbs != 4096 {
            return Err(GptError::BlockSize { size: lbs });
        }
        let lbas = disk_bytes / lbs;
        if disk_bytes < 4 * MIB {
            return Err(GptError::DiskTooSmall { bytes: disk_bytes });
        }
        Ok(Self {
            lbs,
            last_lba: lbas - 1,
            entry_lbas: (ENTRIES_BYTES as u64).div_ceil(lbs),
        })
    }
    fn first_usable(&self) -> u64 {
        2 + self.entry_lbas
    }
    fn last_usable(&self) -> u64 {
        self.last_lba - 1 - self.entry_lbas
    }
    /// The partition: from 1 MiB to the last whole MiB that fits.
    fn partition_lbas(&self, first: u64) -> Result<(u64, u64), GptError> {
        let start = first * self.lbs;
        let end = ((self.last_usable() + 1) * self.lbs) / MIB * MIB;
        if end <= start + MIB {
            return Err(GptError::DiskTooSmall {
                bytes: (self.last_lba + 1) * self.lbs,
            });
        }
        Ok((first, end / self.lbs - 1))
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn entry_bytes(
    type_guid: &[u8; 16],
    guid: &[u8; 16],
    first: u64,
    last: u64,
    name: &str,
) -> Vec<u8> {
    let mut e = vec![0u8; 128];
    e[0..16].copy_from_slice(type_guid);
    e[16..32].copy_from_slice(guid);
    e[32..40].copy_from_slice(&first.to_le_bytes());
    e[40..48].copy_from_slice(&last.to_le_bytes());
    for (i, unit) in name.encode_utf16().take(36).enumerate() {
        e[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
    }
    e
}

fn header_bytes(g: &Geometry, disk_guid: &[u8; 16], backup: bool, entries_crc: u32) -> Vec<u8> {
    let (my, alternate, entries_lba) = if backup {
        (g.last_lba, 1, g.last_lba - g.entry_lbas)
    } else {
        (1, g.last_lba, 2)
    };
    let mut h = vec![0u8; HEADER_LEN];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&HEADER_LEN_U32.to_le_bytes());
    h[24..32].copy_from_slice(&my.to_le_bytes());
    h[32..40].copy_from_slice(&alternate.to_le_bytes());
    h[40..48].copy_from_slice(&g.first_usable().to_le_bytes());
    h[48..56].copy_from_slice(&g.last_usable().to_le_bytes());
    h[56..72].copy_from_slice(disk_guid);
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&ENTRIES.to_le_bytes());
    h[84..88].copy_from_slice(&ENTRY_LEN_U32.to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32(&h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

fn protective_mbr(g: &Geometry) -> Vec<u8> {
    let mut m = vec![0u8; 512];
    let p = 446;
    m[p + 1..p + 4].copy_from_slice(&[0x00, 0x02, 0x00]);
    m[p + 4] = 0xEE;
    m[p + 5..p + 8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    m[p + 8..p + 12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(g.last_lba).unwrap_or(u32::MAX);
    m[p + 12..p + 16].copy_from_slice(&size.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

/// The two writes of a full GPT with `entries` (the whole 128-entry array): the backup
/// (entries then header, contiguous at the end), then the primary (protective MBR, header,
/// entries, contiguous at the start). Each is one write, so a cut leaves the primary either
/// old (or absent) or complete.
fn table_writes(g: &Geometry, disk_guid: &[u8; 16], entries: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let crc = crc32(entries);
    let lbs = usize::try_from(g.lbs).unwrap_or(512);
    let mut backup = entries.to_vec();
    let mut header = header_bytes(g, disk_guid, true, crc);
    header.resize(lbs, 0);
    backup.extend_from_slice(&header);
    let mut primary = protective_mbr(g);
    primary.resize(lbs, 0);
    let mut header = header_bytes(g, disk_guid, false, crc);
    header.resize(lbs, 0);
    primary.extend_from_slice(&header);
    primary.extend_from_slice(entries);
    vec![((g.last_lba - g.entry_lbas) * g.lbs, backup), (0, primary)]
}

/// A new GPT with one `dstack-data` partition.
pub fn create(
    disk_bytes: u64,
    lbs: u64,
    disk_guid: [u8; 16],
    partition_guid: [u8; 16],
) -> Result<GptWrites, GptError> {
    let g = Geometry::new(disk_bytes, lbs)?;
    let (first, last) = g.partition_lbas(MIB / lbs)?;
    let mut entries = vec![0u8; ENTRIES_BYTES];
    entries[..128].copy_from_slice(&entry_bytes(
        &LINUX_FS_TYPE,
        &partition_guid,
        first,
        last,
        PARTITION_NAME,
    ));
    Ok(GptWrites {
        writes: table_writes(&g, &disk_guid, &entries),
        partition: Partition {
            offset: first * lbs,
            length: (last - first + 1) * lbs,
        },
    })
}

/// Find the data partition in the primary table (`area` = the first [`PRIMARY_AREA_LEN`] bytes
/// of the disk). When the disk grew since the table was written and the data partition is the
/// last one, also returns the writes that move the backup table to the new end and extend the
/// partition (the caller applies them, then uses the new range).
pub fn find(area: &[u8], disk_bytes: u64, lbs: u64) -> Result<GptWrites, GptError> {
    let g = Geometry::new(disk_bytes, lbs)?;
    let bad = |reason| GptError::Header { reason };
    let at = usize::try_from(lbs).map_err(|_| bad("block size"))?;
    let h = area.get(at..at + HEADER_LEN).ok_or(bad("short read"))?;
    if &h[0..8] != b"EFI PART" {
        return Err(GptError::NotGpt);
    }
    if le32(h, 12) as usize != HEADER_LEN {
        return Err(bad("header size is not 92"));
    }
    let mut check = h.to_vec();
    check[16..20].fill(0);
    if crc32(&check) != le32(h, 16) {
        return Err(bad("header CRC mismatch"));
    }
    if le64(h, 24) != 1 || le64(h, 72) != 2 {
        return Err(bad("primary header or entries not at LBA 1 / 2"));
    }
    if le32(h, 80) != ENTRIES || le32(h, 84) != ENTRY_LEN_U32 {
        return Err(bad("entry count or size is not 128 x 128"));
    }
    let entries = area
        .get(2 * at..2 * at + ENTRIES_BYTES)
        .ok_or(bad("short read"))?;
    if crc32(entries) != le32(h, 88) {
        return Err(bad("entries CRC mismatch"));
    }
    let mut disk_guid = [0u8; 16];
    disk_guid.copy_from_slice(&h[56..72]);
    let name_units: Vec<u16> = PARTITION_NAME.encode_utf16().collect();
    let mut ours = None;
    let mut highest_last = 0;
    for (i, e) in entries.chunks_exact(ENTRY_LEN).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let last = le64(e, 40);
        highest_last = highest_last.max(last);
        let name: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        if name == name_units {
            ours = Some((i, le64(e, 32), last));
        }
    }
    let (index, first, last) = ours.ok_or(GptError::NoDataPartition)?;
    let old_last_usable = le64(h, 48);
    if first < g.first_usable() || last < first || last > old_last_usable.min(g.last_usable()) {
        return Err(GptError::PartitionRange { first, last });
    }
    let mut writes = Vec::new();
    let mut last_now = last;
    let grew = le64(h, 32) < g.last_lba;
    if grew {
        let mut new_entries = entries.to_vec();
        if last == highest_last {
            let (_, new_last) = g.partition_lbas(first)?;
            if new_last > last {
                let e = &mut new_entries[index * 128..index * 128 + 128];
                e[40..48].copy_from_slice(&new_last.to_le_bytes());
                last_now = new_last;
            }
        }
        writes = table_writes(&g, &disk_guid, &new_entries);
    }
    Ok(GptWrites {
        writes,
        partition: Partition {
            offset: first * lbs,
            length: (last_now - first + 1) * lbs,
        },
    })
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use std::process::Command;

    use super::*;

    fn apply(disk: &mut [u8], w: &GptWrites) {
        for (off, data) in &w.writes {
            let off = *off as usize;
            disk[off..off + data.len()].copy_from_slice(data);
        }
    }

    #[test]
    fn crc32_known_answer() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn create_then_find() {
        let size = 64 * MIB;
        let mut disk = vec![0u8; size as usize];
        let w = create(size, 512, [1; 16], [2; 16]).unwrap();
        assert_eq!(w.partition.offset, MIB);
        assert_eq!(w.partition.length, 62 * MIB);
        apply(&mut disk, &w);
        let found = find(&disk[..PRIMARY_AREA_LEN], size, 512).unwrap();
        assert!(found.writes.is_empty());
        assert_eq!(found.partition, w.partition);
    }

    #[test]
    fn sfdisk_reads_our_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let size = 64 * MIB;
        let mut disk = vec![0u8; size as usize];
        apply(&mut disk, &create(size, 512, [1; 16], [2; 16]).unwrap());
        std::fs::write(&path, &disk).unwrap();
        let Ok(out) = Command::new("sfdisk").arg("--dump").arg(&path).output() else {
            return; // util-linux sfdisk is optional on the host
        };
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("start=        2048, size=      126976"),
            "{text}"
        );
        assert!(text.contains("name=\"dstack-data\""), "{text}");
        assert!(
            text.contains("0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
            "{text}"
        );
    }

    #[test]
    fn grown_disk_extends_the_partition() {
        let small = 64 * MIB;
        let big = 100 * MIB;
        let mut disk = vec![0u8; big as usize];
        apply(&mut disk, &create(small, 512, [1; 16], [2; 16]).unwrap());
        let grown = find(&disk[..PRIMARY_AREA_LEN], big, 512).unwrap();
        assert!(!grown.writes.is_empty());
        assert_eq!(grown.partition.offset, MIB);
        assert_eq!(grown.partition.length, 98 * MIB);
        apply(&mut disk, &grown);
        let again = find(&disk[..PRIMARY_AREA_LEN], big, 512).unwrap();
        assert!(again.writes.is_empty());
        assert_eq!(again.partition, grown.partition);
        // The backup header sits at the new end and is valid.
        let backup = &disk[(big - 512) as usize..(big - 512) as usize + 92];
        assert_eq!(&backup[..8], b"EFI PART");
        assert_eq!(le64(backup, 24), big / 512 - 1);
    }

    #[test]
    fn bad_tables_are_errors() {
        let size = 64 * MIB;
        let mut disk = vec![0u8; size as usize];
        assert_eq!(
            find(&disk[..PRIMARY_AREA_LEN], size, 512).unwrap_err(),
            GptError::NotGpt
        );
        apply(&mut disk, &create(size, 512, [1; 16], [2; 16]).unwrap());
        let mut t = disk[..PRIMARY_AREA_LEN].to_vec();
        t[512 + 40] ^= 1;
        assert!(matches!(find(&t, size, 512), Err(GptError::Header { .. })));
        let mut t = disk[..PRIMARY_AREA_LEN].to_vec();
        t[1024 + 60] ^= 1; // the partition name: entries CRC
        assert!(matches!(find(&t, size, 512), Err(GptError::Header { .. })));
        assert_eq!(
            create(size, 1024, [1; 16], [2; 16]).unwrap_err(),
            GptError::BlockSize { size: 1024 }
        );
        assert!(matches!(
            create(MIB, 512, [1; 16], [2; 16]),
            Err(GptError::DiskTooSmall { .. })
        ));
    }

    #[test]
    fn four_k_blocks() {
        let size = 64 * MIB;
        let mut disk = vec![0u8; size as usize];
        let w = create(size, 4096, [1; 16], [2; 16]).unwrap();
        apply(&mut disk, &w);
        assert_eq!(
            find(&disk[..PRIMARY_AREA_LEN], size, 4096)
                .unwrap()
                .partition,
            w.partition
        );
    }
}
