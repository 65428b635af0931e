//! Raw data-disk files for the encrypted-disk tests: a sparse, zero-filled file attached
//! read-write as a virtio disk, and the host-side checks on it (sha256, byte flips).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Hex SHA-256 of the 4 MiB probe file the init's `cvm.test_disk=write` hook writes (the same
/// generator: numbered lines, truncated to 4 MiB).
pub fn probe_sha256() -> String {
    let mut v = Vec::with_capacity(4 << 20);
    let mut i = 0u32;
    while v.len() < 4 << 20 {
        v.extend_from_slice(format!("cvm-disk probe line {i:08}\n").as_bytes());
        i += 1;
    }
    v.truncate(4 << 20);
    hex::encode(Sha256::digest(&v))
}

/// Creates a sparse, zero-filled raw disk of `mib` MiB at `path`.
pub fn create(path: &Path, mib: u64) -> io::Result<PathBuf> {
    let file = File::create(path)?;
    file.set_len(mib << 20)?;
    Ok(path.to_owned())
}

/// The `-drive` value that attaches `image` read-write as a virtio disk (after the host-share
/// disk, so `/dev/vdb` for the first one).
pub fn drive_arg(image: &Path) -> String {
    format!(
        "file={},if=virtio,format=raw,cache=writeback",
        image.display().to_string().replace(',', ",,")
    )
}

/// Hex SHA-256 of the whole file.
pub fn sha256(path: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut file = File::open(path)?;
    io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Flips one bit of the byte at `offset`.
pub fn flip_byte(path: &Path, offset: u64) -> io::Result<()> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, offset)?;
    b[0] ^= 0x01;
    file.write_all_at(&b, offset)?;
    file.sync_all()
}

/// The byte offset of the middle of the longest run of 4096-byte blocks that differ between
/// `before` and `after` (two images of the same disk): where a large file's ciphertext landed.
pub fn longest_changed_run(before: &Path, after: &Path) -> io::Result<Option<(u64, u64)>> {
    let a = std::fs::read(before)?;
    let b = std::fs::read(after)?;
    let (mut best, mut cur_start, mut cur_len) = ((0u64, 0u64), 0u64, 0u64);
    for (i, (x, y)) in a.chunks(4096).zip(b.chunks(4096)).enumerate() {
        let i = i as u64;
        if x == y {
            cur_len = 0;
            continue;
        }
        if cur_len == 0 {
            cur_start = i;
        }
        cur_len += 1;
        if cur_len > best.1 {
            best = (cur_start, cur_len);
        }
    }
    Ok((best.1 > 0).then(|| (best.0 * 4096, best.1 * 4096)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_run_and_flip() {
        let dir = tempfile::tempdir().unwrap();
        let a = create(&dir.path().join("a"), 1).unwrap();
        let b = dir.path().join("b");
        let mut data = vec![0u8; 1 << 20];
        data[4096 * 3] = 1;
        data[4096 * 10..4096 * 14].fill(7);
        std::fs::write(&b, &data).unwrap();
        assert_eq!(
            longest_changed_run(&a, &b).unwrap(),
            Some((4096 * 10, 4 * 4096))
        );
        let before = sha256(&b).unwrap();
        flip_byte(&b, 5).unwrap();
        assert_ne!(sha256(&b).unwrap(), before);
        assert_eq!(std::fs::read(&b).unwrap()[5], 1);
        assert!(drive_arg(Path::new("/x,y")).starts_with("file=/x,,y,if=virtio"));
    }
}
