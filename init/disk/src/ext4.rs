//! A minimal ext4 formatter (no `mke2fs` in the initramfs: Debian ships no static one).
//!
//! It writes a journalled ext4 with 4096-byte blocks onto a device that already reads as zeros
//! (the first-boot format wipes the whole dm-crypt volume first, which also initialises the
//! integrity tags), so only the non-zero blocks are written: superblock and group descriptors
//! (with sparse backups), bitmaps, the root directory, `lost+found` and the journal superblock.
//! Inode tables are left zero (every inode free).
//!
//! Features: `has_journal dir_index` / `filetype extents` / `sparse_super large_file huge_file
//! dir_nlink extra_isize`; 256-byte inodes, one inode per 16 KiB, no reserved blocks, no
//! `resize_inode`, `flex_bg`, `64bit` or `metadata_csum` (the AEAD tags below already
//! authenticate every block; crc32c checksums would add nothing against an attacker). Tests
//! check the result with the host's `e2fsck -fn`.

use std::io;

pub const BLOCK_SIZE: u64 = 4096;
const BLOCKS_PER_GROUP: u64 = 32768;
const INODE_SIZE: u64 = 256;
const BYTES_PER_INODE: u64 = 16384;
const FIRST_INODE: u32 = 11;
const ROOT_INODE: u32 = 2;
const JOURNAL_INODE: u32 = 8;
const LOST_FOUND_INODE: u32 = 11;
const DESC_SIZE: u64 = 32;
const EXTENTS_FL: u32 = 0x0008_0000;
/// The smallest filesystem this formatter makes (mke2fs refuses below 2048 blocks with a journal).
pub const MIN_BLOCKS: u64 = 2048;
/// A journal fits in group 0 and one extent.
const MAX_JOURNAL_BLOCKS: u64 = 16384;

/// Where the formatter writes (a block device, or a file in tests).
pub trait BlockWriter {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
}

impl BlockWriter for std::fs::File {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, data, offset)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("device of {bytes} bytes is too small for ext4 (at least {} bytes)", MIN_BLOCKS * BLOCK_SIZE)]
    TooSmall { bytes: u64 },
    #[error("device of {bytes} bytes is too large for this formatter (no 64bit feature)")]
    TooLarge { bytes: u64 },
    #[error("write ext4 metadata at byte {offset}")]
    Write {
        offset: u64,
        #[source]
        source: io::Error,
    },
}

/// What varies between filesystems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Params {
    pub uuid: [u8; 16],
    pub hash_seed: [u8; 16],
    pub label: &'static str,
    /// Creation time (seconds since the epoch) for the superblock and the inodes.
    pub now: u32,
}

/// The computed layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub blocks: u64,
    pub groups: u64,
    pub inodes_per_group: u64,
    pub inode_table_blocks: u64,
    pub gdt_blocks: u64,
    pub journal_blocks: u64,
}

fn has_super(group: u64) -> bool {
    if group <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&base| {
        let mut n = group;
        while n.is_multiple_of(base) {
            n /= base;
        }
        n == 1
    })
}

fn group_blocks(l: &Layout, g: u64) -> u64 {
    (l.blocks - g * BLOCKS_PER_GROUP).min(BLOCKS_PER_GROUP)
}

fn group_overhead(l: &Layout, g: u64) -> u64 {
    let sb = if has_super(g) { 1 + l.gdt_blocks } else { 0 };
    sb + 2 + l.inode_table_blocks
}

fn journal_blocks_for(blocks: u64) -> u64 {
    match blocks {
        0..32768 => 1024,
        32768..262144 => 4096,
        262144..524288 => 8192,
        _ => MAX_JOURNAL_BLOCKS,
    }
}

impl Layout {
    /// The layout for a device of `bytes` bytes.
    pub fn for_size(bytes: u64) -> Result<Self, Ext4Error> {
        let mut blocks = bytes / BLOCK_SIZE;
        if blocks < MIN_BLOCKS {
            return Err(Ext4Error::TooSmall { bytes });
        }
        if blocks > u64::from(u32::MAX) {
            return Err(Ext4Error::TooLarge { bytes });
        }
        loop {
            let groups = blocks.div_ceil(BLOCKS_PER_GROUP);
            let inodes_wanted = (blocks * BLOCK_SIZE / BYTES_PER_INODE).max(64);
            let per_block = BLOCK_SIZE / INODE_SIZE;
            let inodes_per_group = inodes_wanted
                .div_ceil(groups)
                .next_multiple_of(per_block)
                .min(BLOCK_SIZE * 8);
            let l = Self {
                blocks,
                groups,
                inodes_per_group,
                inode_table_blocks: inodes_per_group / per_block,
                gdt_blocks: (groups * DESC_SIZE).div_ceil(BLOCK_SIZE),
                journal_blocks: journal_blocks_for(blocks),
            };
            // A last group too small for its own metadata is dropped (as mke2fs does).
            let last = groups - 1;
            if groups > 1 && group_blocks(&l, last) < group_overhead(&l, last) + 64 {
                blocks = last * BLOCKS_PER_GROUP;
                continue;
            }
            let group0_data = group_blocks(&l, 0) - group_overhead(&l, 0);
            if group0_data < l.journal_blocks + 16 {
                return Err(Ext4Error::TooSmall { bytes });
            }
            return Ok(l);
        }
    }

    fn group_start(&self, g: u64) -> u64 {
        g * BLOCKS_PER_GROUP
    }

    fn block_bitmap(&self, g: u64) -> u64 {
        self.group_start(g) + if has_super(g) { 1 + self.gdt_blocks } else { 0 }
    }

    fn inode_table(&self, g: u64) -> u64 {
        self.block_bitmap(g) + 2
    }

    fn first_data(&self, g: u64) -> u64 {
        self.inode_table(g) + self.inode_table_blocks
    }

    fn journal_start(&self) -> u64 {
        self.first_data(0)
    }

    fn root_block(&self) -> u64 {
        self.journal_start() + self.journal_blocks
    }

    fn lost_found_block(&self) -> u64 {
        self.root_block() + 1
    }

    /// Blocks in use in group `g` (metadata, plus journal and directories in group 0).
    fn used_in_group(&self, g: u64) -> u64 {
        let extra = if g == 0 { self.journal_blocks + 2 } else { 0 };
        group_overhead(self, g) + extra
    }
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put32be(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Every value fits in 32 bits: `Layout::for_size` caps the block count at `u32::MAX`.
fn lo32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}
fn lo16(v: u64) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// An extent-mapped inode of `len` contiguous blocks starting at `start`.
fn inode(mode: u16, links: u16, size: u64, start: u64, len: u64, now: u32) -> [u8; 256] {
    let mut i = [0u8; 256];
    put16(&mut i, 0, mode);
    put32(&mut i, 4, lo32(size & 0xFFFF_FFFF));
    put32(&mut i, 8, now);
    put32(&mut i, 12, now);
    put32(&mut i, 16, now);
    put16(&mut i, 26, links);
    put32(&mut i, 28, lo32(len * (BLOCK_SIZE / 512)));
    put32(&mut i, 32, EXTENTS_FL);
    // i_block: extent header (magic, entries, max, depth) + one extent.
    put16(&mut i, 40, 0xF30A);
    put16(&mut i, 42, 1);
    put16(&mut i, 44, 4);
    put16(&mut i, 46, 0);
    put32(&mut i, 52, 0); // first logical block
    put16(&mut i, 56, lo16(len));
    put16(&mut i, 58, 0); // start hi
    put32(&mut i, 60, lo32(start));
    put32(&mut i, 108, lo32(size >> 32));
    put16(&mut i, 128, 32); // i_extra_isize
    i
}

fn dirent(b: &mut [u8], at: usize, inode: u32, rec_len: u16, name: &[u8]) {
    put32(b, at, inode);
    put16(b, at + 4, rec_len);
    b[at + 6] = u8::try_from(name.len()).unwrap_or(u8::MAX);
    b[at + 7] = 2; // directory
    b[at + 8..at + 8 + name.len()].copy_from_slice(name);
}

fn set_bits(bitmap: &mut [u8], from: u64, to: u64) {
    for bit in from..to {
        let (byte, shift) = ((bit / 8) as usize, bit % 8);
        if let Some(b) = bitmap.get_mut(byte) {
            *b |= 1 << shift;
        }
    }
}

struct Out<'a, W: BlockWriter> {
    w: &'a mut W,
}

impl<W: BlockWriter> Out<'_, W> {
    fn block(&mut self, block: u64, data: &[u8]) -> Result<(), Ext4Error> {
        self.at(block * BLOCK_SIZE, data)
    }
    fn at(&mut self, offset: u64, data: &[u8]) -> Result<(), Ext4Error> {
        self.w
            .write_at(offset, data)
            .map_err(|source| Ext4Error::Write { offset, source })
    }
}

/// Format `bytes` bytes of `dev` (which must read as zeros) as ext4.
pub fn format<W: BlockWriter>(
    dev: &mut W,
    bytes: u64,
    params: &Ext4Params,
) -> Result<Layout, Ext4Error> {
    let l = Layout::for_size(bytes)?;
    let mut out = Out { w: dev };
    let now = params.now;
    let total_inodes = l.groups * l.inodes_per_group;
    let used_blocks: u64 = (0..l.groups).map(|g| l.used_in_group(g)).sum();
    let free_blocks = l.blocks - used_blocks;
    let free_inodes = total_inodes - u64::from(FIRST_INODE);

    // Group descriptors.
    let mut gdt = vec![0u8; usize::try_from(l.gdt_blocks * BLOCK_SIZE).unwrap_or(0)];
    for g in 0..l.groups {
        let d = usize::try_from(g * DESC_SIZE).unwrap_or(0);
        put32(&mut gdt, d, lo32(l.block_bitmap(g)));
        put32(&mut gdt, d + 4, lo32(l.block_bitmap(g) + 1));
        put32(&mut gdt, d + 8, lo32(l.inode_table(g)));
        put16(
            &mut gdt,
            d + 12,
            lo16(group_blocks(&l, g) - l.used_in_group(g)),
        );
        let used_inodes = if g == 0 { u64::from(FIRST_INODE) } else { 0 };
        put16(&mut gdt, d + 14, lo16(l.inodes_per_group - used_inodes));
        put16(&mut gdt, d + 16, if g == 0 { 2 } else { 0 });
    }

    // Superblock template.
    let mut sb = [0u8; 1024];
    put32(&mut sb, 0, lo32(total_inodes));
    put32(&mut sb, 4, lo32(l.blocks));
    put32(&mut sb, 12, lo32(free_blocks));
    put32(&mut sb, 16, lo32(free_inodes));
    put32(&mut sb, 20, 0); // first data block
    put32(&mut sb, 24, 2); // 1024 << 2
    put32(&mut sb, 28, 2);
    put32(&mut sb, 32, lo32(BLOCKS_PER_GROUP));
    put32(&mut sb, 36, lo32(BLOCKS_PER_GROUP));
    put32(&mut sb, 40, lo32(l.inodes_per_group));
    put32(&mut sb, 48, now);
    put16(&mut sb, 54, 0xFFFF); // max mount count: -1
    put16(&mut sb, 56, 0xEF53);
    put16(&mut sb, 58, 1); // clean
    put16(&mut sb, 60, 2); // errors: remount read-only
    put32(&mut sb, 64, now);
    put32(&mut sb, 76, 1); // dynamic revision
    put32(&mut sb, 84, FIRST_INODE);
    put16(&mut sb, 88, lo16(INODE_SIZE));
    put32(&mut sb, 92, 0x0004 | 0x0020); // has_journal, dir_index
    put32(&mut sb, 96, 0x0002 | 0x0040); // filetype, extents
    put32(&mut sb, 100, 0x0001 | 0x0002 | 0x0008 | 0x0020 | 0x0040);
    sb[104..120].copy_from_slice(&params.uuid);
    let label = params.label.as_bytes();
    let n = label.len().min(16);
    sb[120..120 + n].copy_from_slice(&label[..n]);
    put32(&mut sb, 224, JOURNAL_INODE);
    sb[236..252].copy_from_slice(&params.hash_seed);
    sb[252] = 1; // half_md4
    sb[253] = 1; // s_jnl_blocks holds a copy of the journal inode's i_block
    put32(&mut sb, 264, now);
    let journal_inode = inode(
        0o100_600,
        1,
        l.journal_blocks * BLOCK_SIZE,
        l.journal_start(),
        l.journal_blocks,
        now,
    );
    sb[268..268 + 60].copy_from_slice(&journal_inode[40..100]);
    put32(&mut sb, 268 + 60, 0); // i_size_high
    put32(&mut sb, 268 + 64, lo32(l.journal_blocks * BLOCK_SIZE));
    put16(&mut sb, 348, 32);
    put16(&mut sb, 350, 32);
    put32(&mut sb, 352, 0x1); // signed directory hash (x86)

    for g in 0..l.groups {
        let start = l.group_start(g);
        if has_super(g) {
            let mut copy = sb;
            put16(&mut copy, 90, lo16(g));
            if g == 0 {
                out.at(1024, &copy)?;
            } else {
                out.block(start, &copy)?;
            }
            out.block(start + 1, &gdt)?;
        }
        // Block bitmap: used blocks of the group, then padding past its end.
        let mut bitmap = vec![0u8; usize::try_from(BLOCK_SIZE).unwrap_or(0)];
        set_bits(&mut bitmap, 0, l.used_in_group(g));
        set_bits(&mut bitmap, group_blocks(&l, g), BLOCK_SIZE * 8);
        out.block(l.block_bitmap(g), &bitmap)?;
        let mut ibitmap = vec![0u8; usize::try_from(BLOCK_SIZE).unwrap_or(0)];
        if g == 0 {
            set_bits(&mut ibitmap, 0, u64::from(FIRST_INODE));
        }
        set_bits(&mut ibitmap, l.inodes_per_group, BLOCK_SIZE * 8);
        out.block(l.block_bitmap(g) + 1, &ibitmap)?;
    }

    // Inodes (all in group 0's table).
    let itable = l.inode_table(0) * BLOCK_SIZE;
    let slot = |ino: u32| itable + u64::from(ino - 1) * INODE_SIZE;
    out.at(
        slot(ROOT_INODE),
        &inode(0o040_755, 3, BLOCK_SIZE, l.root_block(), 1, now),
    )?;
    out.at(slot(JOURNAL_INODE), &journal_inode)?;
    out.at(
        slot(LOST_FOUND_INODE),
        &inode(0o040_700, 2, BLOCK_SIZE, l.lost_found_block(), 1, now),
    )?;

    // Directories.
    let bs = usize::try_from(BLOCK_SIZE).unwrap_or(0);
    let mut root = vec![0u8; bs];
    dirent(&mut root, 0, ROOT_INODE, 12, b".");
    dirent(&mut root, 12, ROOT_INODE, 12, b"..");
    dirent(
        &mut root,
        24,
        LOST_FOUND_INODE,
        lo16(BLOCK_SIZE - 24),
        b"lost+found",
    );
    out.block(l.root_block(), &root)?;
    let mut lf = vec![0u8; bs];
    dirent(&mut lf, 0, LOST_FOUND_INODE, 12, b".");
    dirent(&mut lf, 12, ROOT_INODE, lo16(BLOCK_SIZE - 12), b"..");
    out.block(l.lost_found_block(), &lf)?;

    // Journal superblock (jbd2 v2, big endian, empty journal).
    let mut jsb = vec![0u8; bs];
    put32be(&mut jsb, 0, 0xC03B_3998);
    put32be(&mut jsb, 4, 4);
    put32be(&mut jsb, 12, lo32(BLOCK_SIZE));
    put32be(&mut jsb, 16, lo32(l.journal_blocks));
    put32be(&mut jsb, 20, 1);
    put32be(&mut jsb, 24, 1);
    jsb[48..64].copy_from_slice(&params.uuid);
    put32be(&mut jsb, 64, 1);
    out.block(l.journal_start(), &jsb)?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn params() -> Ext4Params {
        Ext4Params {
            uuid: *b"0123456789abcdef",
            hash_seed: [7; 16],
            label: "dstack-data",
            now: 1_700_000_000,
        }
    }

    /// Format a sparse file of `bytes`, run the host's `e2fsck -fn`, return its output.
    fn format_and_check(bytes: u64) -> (Layout, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs.img");
        let mut f = std::fs::File::create(&path).unwrap();
        f.set_len(bytes).unwrap();
        let layout = format(&mut f, bytes, &params()).unwrap();
        drop(f);
        let out = Command::new("e2fsck")
            .args(["-fn"])
            .arg(&path)
            .output()
            .expect("e2fsck (e2fsprogs) must be installed");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "e2fsck -fn:\n{text}");
        (layout, text)
    }

    #[test]
    fn small_fs_passes_e2fsck() {
        let (l, text) = format_and_check(64 << 20);
        assert_eq!(l.groups, 1);
        assert_eq!(l.journal_blocks, 1024);
        assert!(text.contains("11/4096 files"), "{text}");
    }

    #[test]
    fn multi_group_fs_with_backups_passes_e2fsck() {
        // 10 groups plus a partial one: backups in groups 1, 3, 5, 7, 9.
        let (l, _) = format_and_check((10 * 32768 + 5000) * 4096);
        assert_eq!(l.groups, 11);
        assert_eq!(l.journal_blocks, 8192);
    }

    #[test]
    fn tiny_last_group_is_dropped() {
        let l = Layout::for_size((2 * 32768 + 10) * 4096).unwrap();
        assert_eq!(l.groups, 2);
        assert_eq!(l.blocks, 2 * 32768);
        format_and_check(l.blocks * 4096 + 40960);
    }

    #[test]
    fn limits() {
        assert!(matches!(
            Layout::for_size(4 << 20),
            Err(Ext4Error::TooSmall { .. })
        ));
        assert!(matches!(
            Layout::for_size(20 << 40),
            Err(Ext4Error::TooLarge { .. })
        ));
        assert!(has_super(25) && has_super(49) && !has_super(10) && !has_super(2));
    }

    #[test]
    fn debugfs_sees_the_label_and_uuid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs.img");
        let mut f = std::fs::File::create(&path).unwrap();
        f.set_len(32 << 20).unwrap();
        format(&mut f, 32 << 20, &params()).unwrap();
        let out = Command::new("dumpe2fs")
            .arg("-h")
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Filesystem volume name:   dstack-data"),
            "{text}"
        );
        assert!(
            text.contains("Filesystem UUID:          30313233-3435-3637-3839-616263646566"),
            "{text}"
        );
        assert!(text.contains("has_journal"), "{text}");
    }
}
