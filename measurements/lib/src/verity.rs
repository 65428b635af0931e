//! dm-verity (format version 1, no superblock) for the GPU driver extension: the hash tree
//! over a read-only filesystem image, its root hash, and the kernel table that opens it.
//!
//! Layout of an extension image (one file, one virtio disk): the filesystem, padded to
//! [`BLOCK_SIZE`], then the hash tree, top level first (as the kernel's `verity_ctr` places
//! levels after `hash_start`). There is no verity superblock: every table parameter is fixed
//! here or follows from the device size ([`Layout::from_total_blocks`]), so the only input the
//! init needs is the root hash from the measured command line. The same tree is what
//! `veritysetup format --no-superblock --hash-offset=<data bytes> --salt=<SALT> img img` writes
//! (a host test checks that when `veritysetup` is installed).
//!
//! Hashes: `sha256(salt || block)` for data and hash blocks alike (version 1); a hash block
//! holds 128 hashes, zero-padded.

use sha2::{Digest as _, Sha256};

/// Data and hash block size.
pub const BLOCK_SIZE: usize = 4096;
/// [`BLOCK_SIZE`] as a 64-bit count.
pub const BLOCK_SIZE_U64: u64 = 4096;
const HASH_LEN: usize = 32;
/// Hashes per hash block.
const HASHES_PER_BLOCK: u64 = (BLOCK_SIZE / HASH_LEN) as u64;
/// The fixed salt: SHA-256 of `cvm-init gpu-driver extension v1` (public, like the tree).
pub const SALT_HEX: &str = "4fbc222a2285573dc7c206f010e4df0ca8280d806a977311d75fcd54c3f6ade2";
/// The virtio-blk serial the extension disk carries (`-drive ...,serial=cvm-gpu-driver`).
pub const DEVICE_SERIAL: &str = "cvm-gpu-driver";
/// The kernel command line key whose value is the root hash.
pub const CMDLINE_KEY: &str = "cvm.gpu_driver";

/// The salt's bytes.
pub fn salt() -> [u8; 32] {
    let mut out = [0u8; 32];
    // SALT_HEX is a valid 64-digit constant (a test checks it).
    if hex::decode_to_slice(SALT_HEX, &mut out).is_err() {
        out = [0u8; 32];
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerityError {
    #[error("the image is empty")]
    Empty,
    #[error("{blocks} blocks are not a data area plus its hash tree")]
    NoLayout { blocks: u64 },
}

/// Where data and tree lie, in [`BLOCK_SIZE`] blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub data_blocks: u64,
    /// Blocks of each tree level, level 0 (hashes of the data) first.
    pub hash_blocks: u64,
}

/// Blocks per level, level 0 first (empty for one data block: its hash is the root).
fn level_sizes(data_blocks: u64) -> Vec<u64> {
    let mut levels = Vec::new();
    let mut n = data_blocks;
    while n > 1 {
        n = n.div_ceil(HASHES_PER_BLOCK);
        levels.push(n);
    }
    levels
}

impl Layout {
    pub fn for_data(data_blocks: u64) -> Self {
        Self {
            data_blocks,
            hash_blocks: level_sizes(data_blocks).iter().sum(),
        }
    }

    /// The data area of a device of `total` blocks: the unique `n` with `n + tree(n) == total`
    /// (`n + tree(n)` strictly increases with `n`).
    pub fn from_total_blocks(total: u64) -> Result<Self, VerityError> {
        let (mut lo, mut hi) = (1u64, total);
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            let l = Self::for_data(mid);
            match (l.data_blocks + l.hash_blocks).cmp(&total) {
                std::cmp::Ordering::Equal => return Ok(l),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid - 1,
            }
        }
        Err(VerityError::NoLayout { blocks: total })
    }

    /// Total blocks on the device.
    pub const fn total_blocks(&self) -> u64 {
        self.data_blocks + self.hash_blocks
    }

    /// The `verity` target's parameters for `device` (`major:minor` or a path), data and tree
    /// on the same device, tree right after the data.
    pub fn table_params(&self, device: &str, root_hash: &[u8; 32]) -> String {
        format!(
            "1 {device} {device} {BLOCK_SIZE} {BLOCK_SIZE} {} {} sha256 {} {SALT_HEX}",
            self.data_blocks,
            self.data_blocks,
            hex::encode(root_hash)
        )
    }

    /// The target's length in 512-byte sectors (the data area).
    pub const fn sectors(&self) -> u64 {
        self.data_blocks * (BLOCK_SIZE_U64 / 512)
    }
}

fn hash_block(salt: &[u8], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// The hash tree of `data` (zero-padded to whole blocks) and its root hash. The tree bytes are
/// what follows the padded data on the device.
pub fn hash_tree(data: &[u8]) -> Result<(Vec<u8>, [u8; 32]), VerityError> {
    if data.is_empty() {
        return Err(VerityError::Empty);
    }
    let salt = salt();
    let mut hashes: Vec<[u8; 32]> = data
        .chunks(BLOCK_SIZE)
        .map(|chunk| {
            if chunk.len() == BLOCK_SIZE {
                hash_block(&salt, chunk)
            } else {
                let mut padded = vec![0u8; BLOCK_SIZE];
                padded[..chunk.len()].copy_from_slice(chunk);
                hash_block(&salt, &padded)
            }
        })
        .collect();
    // Levels bottom-up; stored top-down.
    let mut levels: Vec<Vec<u8>> = Vec::new();
    while hashes.len() > 1 {
        let mut level = Vec::new();
        let mut next = Vec::new();
        for group in hashes.chunks(BLOCK_SIZE / HASH_LEN) {
            let mut block = vec![0u8; BLOCK_SIZE];
            for (slot, h) in block.chunks_mut(HASH_LEN).zip(group) {
                slot.copy_from_slice(h);
            }
            next.push(hash_block(&salt, &block));
            level.extend_from_slice(&block);
        }
        levels.push(level);
        hashes = next;
    }
    let root = hashes.first().copied().ok_or(VerityError::Empty)?;
    let tree = levels.into_iter().rev().flatten().collect();
    Ok((tree, root))
}

/// `data` padded to whole blocks with its tree appended, and the root hash: the extension's
/// device image.
pub fn image(data: &[u8]) -> Result<(Vec<u8>, [u8; 32]), VerityError> {
    let (tree, root) = hash_tree(data)?;
    let mut out = data.to_vec();
    out.resize(data.len().next_multiple_of(BLOCK_SIZE), 0);
    out.extend_from_slice(&tree);
    Ok((out, root))
}

/// The command-line fragment that pins `root`.
pub fn cmdline_fragment(root: &[u8; 32]) -> String {
    format!("{CMDLINE_KEY}={}", hex::encode(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salt_is_the_documented_constant() {
        assert_eq!(hex::encode(salt()), SALT_HEX);
        assert_ne!(salt(), [0u8; 32]);
    }

    /// Hand-computed: one data block has no tree, its salted hash is the root; two blocks
    /// have one hash block with both hashes then zeros.
    #[test]
    fn small_trees_by_hand() {
        let block = vec![0xabu8; BLOCK_SIZE];
        let (tree, root) = hash_tree(&block).unwrap();
        assert!(tree.is_empty());
        let mut h = Sha256::new();
        h.update(salt());
        h.update(&block);
        assert_eq!(root, <[u8; 32]>::from(h.finalize()));

        let mut two = block.clone();
        two.extend_from_slice(&[1, 2, 3]); // padded to a second block
        let (tree, root) = hash_tree(&two).unwrap();
        assert_eq!(tree.len(), BLOCK_SIZE);
        let mut second = vec![0u8; BLOCK_SIZE];
        second[..3].copy_from_slice(&[1, 2, 3]);
        assert_eq!(tree[..32], hash_block(&salt(), &block));
        assert_eq!(tree[32..64], hash_block(&salt(), &second));
        assert!(tree[64..].iter().all(|b| *b == 0));
        assert_eq!(root, hash_block(&salt(), &tree));
    }

    #[test]
    fn two_levels_are_stored_top_first() {
        let data = vec![7u8; BLOCK_SIZE * 129];
        let (tree, root) = hash_tree(&data).unwrap();
        // level 0: 2 blocks, level 1: 1 block (stored first).
        assert_eq!(tree.len(), 3 * BLOCK_SIZE);
        let top = &tree[..BLOCK_SIZE];
        assert_eq!(root, hash_block(&salt(), top));
        assert_eq!(
            top[..32],
            hash_block(&salt(), &tree[BLOCK_SIZE..2 * BLOCK_SIZE])
        );
        assert_eq!(top[32..64], hash_block(&salt(), &tree[2 * BLOCK_SIZE..]));
        assert_eq!(Layout::for_data(129).hash_blocks, 3);
    }

    #[test]
    fn layout_inverts_the_device_size() {
        for n in [1u64, 2, 127, 128, 129, 1000, 16_384, 16_385, 3_000_000] {
            let l = Layout::for_data(n);
            assert_eq!(l.data_blocks, n);
            assert_eq!(Layout::from_total_blocks(l.total_blocks()), Ok(l));
        }
        // 128 data blocks have 1 hash block, 129 have 3: 130 and 131 fit no layout.
        assert_eq!(
            Layout::from_total_blocks(130),
            Err(VerityError::NoLayout { blocks: 130 })
        );
        assert_eq!(
            Layout::from_total_blocks(0),
            Err(VerityError::NoLayout { blocks: 0 })
        );
    }

    #[test]
    fn table_and_fragment() {
        let l = Layout::for_data(10);
        let root = [0x11u8; 32];
        assert_eq!(
            l.table_params("253:0", &root),
            format!(
                "1 253:0 253:0 4096 4096 10 10 sha256 {} {SALT_HEX}",
                "11".repeat(32)
            )
        );
        assert_eq!(l.sectors(), 80);
        assert_eq!(
            cmdline_fragment(&root),
            format!("cvm.gpu_driver={}", "11".repeat(32))
        );
    }

    #[test]
    fn empty_image_is_refused() {
        assert_eq!(hash_tree(&[]), Err(VerityError::Empty));
    }

    /// Cross-check against cryptsetup's `veritysetup format` when it is installed (the test
    /// package set installs cryptsetup-bin; without it there is nothing to compare with).
    #[test]
    fn matches_veritysetup_when_installed() {
        let Ok(dir) = std::env::temp_dir().canonicalize() else {
            return;
        };
        for blocks in [1usize, 3, 200] {
            let data: Vec<u8> = (0..blocks * BLOCK_SIZE)
                .map(|i| u8::try_from(i % 251).unwrap())
                .collect();
            let (img, root) = image(&data).unwrap();
            let path = dir.join(format!("verity-test-{}-{blocks}.img", std::process::id()));
            let mut theirs = data.clone();
            theirs.resize(img.len(), 0);
            std::fs::write(&path, &theirs).unwrap();
            let out = std::process::Command::new("veritysetup")
                .args(["format", "--no-superblock", "--hash=sha256"])
                .arg(format!("--salt={SALT_HEX}"))
                .arg(format!("--hash-offset={}", data.len()))
                .arg(format!("--data-blocks={blocks}"))
                .arg(&path)
                .arg(&path)
                .output();
            let Ok(out) = out else {
                let _ = std::fs::remove_file(&path);
                eprintln!("veritysetup not installed: skipping the cross-check");
                return;
            };
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let written = std::fs::read(&path).unwrap();
            let _ = std::fs::remove_file(&path);
            let their_root = stdout
                .lines()
                .find_map(|l| l.strip_prefix("Root hash:"))
                .map(str::trim)
                .unwrap();
            assert_eq!(their_root, hex::encode(root), "{blocks} blocks");
            assert_eq!(written, img, "{blocks} blocks: tree bytes");
        }
    }
}
