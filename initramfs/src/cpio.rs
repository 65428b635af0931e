//! The "newc" (SVR4, magic `070701`) cpio format that the kernel unpacks as initramfs.
//!
//! [`write_newc`] always writes a canonical archive: entries sorted component-wise by path,
//! every parent directory present before its children, sequential inode numbers in that order,
//! uid/gid 0, correct link counts and the closing `TRAILER!!!`. [`read_newc`] parses archives
//! (also several concatenated ones, as the kernel accepts) and reports malformed input as a
//! [`CpioError`]; it never panics on any input.

use std::cmp::Ordering;
use std::collections::BTreeMap;

/// Magic of a newc header without checksums.
const MAGIC_NEWC: &[u8; 6] = b"070701";
/// Magic of a newc header with checksums (accepted by the reader, never written).
const MAGIC_CRC: &[u8; 6] = b"070702";
/// Header length: the magic plus 13 eight-digit hex fields.
const HEADER_LEN: usize = 110;
/// The name of the entry that ends an archive.
const TRAILER: &str = "TRAILER!!!";

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
/// Permission bits (including setuid, setgid and sticky).
const PERMISSION_MASK: u32 = 0o7777;

/// Mode used for directories that the writer adds implicitly.
pub const DIRECTORY_MODE: u32 = 0o755;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpioError {
    /// A path is empty, contains `.` or `..` components, or a NUL byte.
    #[error("Invalid archive path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    /// Two entries have the same path.
    #[error("Duplicate archive path {path:?}")]
    DuplicatePath { path: String },
    /// An entry is used as a directory by another entry but is not a directory itself.
    #[error("Archive path {path:?} is not a directory but has children")]
    ParentNotDirectory { path: String },
    /// A header does not start with a newc magic.
    #[error("Bad cpio magic at offset {offset}")]
    ReadMagic { offset: usize },
    /// A header field is not eight hex digits.
    #[error("Bad cpio header field {field} at offset {offset}")]
    ReadHeaderField { offset: usize, field: &'static str },
    /// The archive ends inside a header, name or body.
    #[error("Truncated cpio archive at offset {offset}")]
    ReadTruncated { offset: usize },
    /// The name is empty, not NUL-terminated, or not UTF-8.
    #[error("Bad cpio entry name at offset {offset}")]
    ReadName { offset: usize },
    /// The symlink target is not UTF-8.
    #[error("Bad symlink target for {path:?}")]
    ReadSymlinkTarget { path: String },
    /// The file type is not one this crate handles (FIFO, socket, block device).
    #[error("Unsupported file type {mode:#o} for {path:?}")]
    ReadFileType { path: String, mode: u32 },
    /// A directory or device entry carries data.
    #[error("Entry {path:?} of this type must not have data")]
    ReadUnexpectedData { path: String },
    /// A record after a trailer does not start at a 4-byte aligned offset (the kernel would
    /// take it for compressed data and stop unpacking).
    #[error("Cpio archive at offset {offset} is not 4-byte aligned")]
    ReadAlignment { offset: usize },
    /// The input does not end with a `TRAILER!!!` entry.
    #[error("Cpio archive has no trailer")]
    ReadMissingTrailer,
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Directory,
    /// A regular file and its contents.
    File(Vec<u8>),
    /// A symbolic link and its target.
    Symlink(String),
    /// A character device node.
    CharDevice { major: u32, minor: u32 },
}

impl EntryKind {
    fn type_bits(&self) -> u32 {
        match self {
            Self::Directory => S_IFDIR,
            Self::File(_) => S_IFREG,
            Self::Symlink(_) => S_IFLNK,
            Self::CharDevice { .. } => S_IFCHR,
        }
    }

    fn data(&self) -> &[u8] {
        match self {
            Self::File(data) => data,
            Self::Symlink(target) => target.as_bytes(),
            Self::Directory | Self::CharDevice { .. } => &[],
        }
    }
}

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive, relative (no leading `/`), e.g. `lib/modules/x/a.ko`.
    pub path: String,
    /// Type and payload.
    pub kind: EntryKind,
    /// Permission bits only (`0o7777` at most); the type bits come from `kind`.
    pub mode: u32,
    /// Modification time in seconds since the epoch.
    pub mtime: u64,
}

impl Entry {
    /// A regular file.
    pub fn file(path: impl Into<String>, data: Vec<u8>, mode: u32, mtime: u64) -> Self {
        Self {
            path: path.into(),
            kind: EntryKind::File(data),
            mode,
            mtime,
        }
    }

    /// A directory.
    pub fn directory(path: impl Into<String>, mode: u32, mtime: u64) -> Self {
        Self {
            path: path.into(),
            kind: EntryKind::Directory,
            mode,
            mtime,
        }
    }

    /// A symbolic link (mode 0777, as symlink permissions are ignored by Linux).
    pub fn symlink(path: impl Into<String>, target: impl Into<String>, mtime: u64) -> Self {
        Self {
            path: path.into(),
            kind: EntryKind::Symlink(target.into()),
            mode: 0o777,
            mtime,
        }
    }

    /// The file contents, for a regular file.
    pub fn data(&self) -> Option<&[u8]> {
        match &self.kind {
            EntryKind::File(data) => Some(data),
            _ => None,
        }
    }

    /// Whether this entry is a directory.
    pub fn is_directory(&self) -> bool {
        self.kind == EntryKind::Directory
    }
}

/// An entry as read from an archive, with the header fields the writer computes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    /// The entry (path as stored, permission bits, payload).
    pub entry: Entry,
    /// Inode number.
    pub ino: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// Checks that `path` is a usable archive path and returns its canonical form: leading `/`
/// removed, no empty, `.` or `..` components, no NUL.
pub fn normalize_path(path: &str) -> Result<String, CpioError> {
    let invalid = |reason| CpioError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    let trimmed = path.trim_start_matches('/');
    if trimmed.is_empty() {
        return Err(invalid("empty path"));
    }
    if trimmed.contains('\0') {
        return Err(invalid("contains NUL"));
    }
    if trimmed == TRAILER {
        return Err(invalid("reserved name"));
    }
    for component in trimmed.split('/') {
        match component {
            "" => return Err(invalid("empty component")),
            "." | ".." => return Err(invalid("dot component")),
            _ => {}
        }
    }
    Ok(trimmed.to_owned())
}

/// Component-wise path order: a directory sorts directly before its contents.
pub fn compare_paths(a: &str, b: &str) -> Ordering {
    a.split('/').cmp(b.split('/'))
}

/// Key for a [`BTreeMap`] that iterates in [`compare_paths`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PathKey(String);

impl Ord for PathKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_paths(&self.0, &other.0)
    }
}

impl PartialOrd for PathKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Sorts `entries`, adds missing parent directories (mode 0755, the mtime of their first child
/// in sorted order) and checks for invalid paths, duplicates and non-directory parents.
pub fn canonicalize(entries: &[Entry]) -> Result<Vec<Entry>, CpioError> {
    build_tree(entries, true)
}

/// Writes a canonical newc archive of `entries` (see [`canonicalize`]).
///
/// This function cannot fail: an entry with an invalid path is skipped, a later entry replaces
/// an earlier one with the same path, and an entry below a non-directory is skipped. Callers
/// that want those cases reported call [`canonicalize`] first; its output is written unchanged.
pub fn write_newc(entries: &[Entry]) -> Vec<u8> {
    let canonical = match build_tree(entries, true) {
        Ok(canonical) => canonical,
        // Not strict, `build_tree` cannot fail; an empty archive is the fallback of last resort.
        Err(_) => build_tree(entries, false).unwrap_or_default(),
    };
    write_sorted(&canonical)
}

/// The strict (errors) or lenient (skips) canonical form of `entries`.
fn build_tree(entries: &[Entry], strict: bool) -> Result<Vec<Entry>, CpioError> {
    let mut tree: BTreeMap<PathKey, Entry> = BTreeMap::new();
    for entry in entries {
        let path = match normalize_path(&entry.path) {
            Ok(path) => path,
            Err(error) if strict => return Err(error),
            Err(_) => continue,
        };
        let key = PathKey(path.clone());
        if strict && tree.contains_key(&key) {
            return Err(CpioError::DuplicatePath { path });
        }
        tree.insert(
            key,
            Entry {
                path,
                kind: entry.kind.clone(),
                mode: entry.mode & PERMISSION_MASK,
                mtime: entry.mtime,
            },
        );
    }
    let mut parents: BTreeMap<PathKey, Entry> = BTreeMap::new();
    let mut orphans: Vec<PathKey> = Vec::new();
    for (key, entry) in &tree {
        for (end, _) in entry.path.match_indices('/') {
            let parent = &entry.path[..end];
            let parent_key = PathKey(parent.to_owned());
            match tree.get(&parent_key) {
                Some(existing) if existing.is_directory() => {}
                Some(_) if strict => {
                    return Err(CpioError::ParentNotDirectory {
                        path: parent.to_owned(),
                    });
                }
                Some(_) => {
                    orphans.push(key.clone());
                    break;
                }
                None => {
                    parents
                        .entry(parent_key)
                        .or_insert_with(|| Entry::directory(parent, DIRECTORY_MODE, entry.mtime));
                }
            }
        }
    }
    for orphan in &orphans {
        tree.remove(orphan);
    }
    // Parents are only added below directories or at the top, so they create no new orphans.
    // A parent added only for a removed orphan is kept; it is harmless.
    for (key, parent) in parents {
        tree.entry(key).or_insert(parent);
    }
    Ok(tree.into_values().collect())
}

/// Writes already canonical entries in the given order.
fn write_sorted(entries: &[Entry]) -> Vec<u8> {
    let mut subdirectories: BTreeMap<&str, u32> = BTreeMap::new();
    for entry in entries.iter().filter(|e| e.is_directory()) {
        if let Some((parent, _)) = entry.path.rsplit_once('/') {
            *subdirectories.entry(parent).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    let mut ino: u32 = 0;
    for entry in entries {
        ino = ino.saturating_add(1);
        let nlink = match entry.kind {
            EntryKind::Directory => subdirectories
                .get(entry.path.as_str())
                .copied()
                .unwrap_or(0)
                .saturating_add(2),
            _ => 1,
        };
        let (rdev_major, rdev_minor) = match entry.kind {
            EntryKind::CharDevice { major, minor } => (major, minor),
            _ => (0, 0),
        };
        let header = Header {
            ino,
            mode: entry.kind.type_bits() | (entry.mode & PERMISSION_MASK),
            nlink,
            mtime: entry.mtime,
            rdev_major,
            rdev_minor,
        };
        write_record(&mut out, &header, &entry.path, entry.kind.data());
    }
    let trailer = Header {
        ino: 0,
        mode: 0,
        nlink: 1,
        mtime: 0,
        rdev_major: 0,
        rdev_minor: 0,
    };
    write_record(&mut out, &trailer, TRAILER, &[]);
    out
}

/// The header fields that vary between entries.
struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u64,
    rdev_major: u32,
    rdev_minor: u32,
}

fn push_hex(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(format!("{value:08x}").as_bytes());
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Appends header, name and data, each padded as newc requires. Values that do not fit the
/// 32-bit fields are clamped; the builder never produces such values.
fn write_record(out: &mut Vec<u8>, header: &Header, name: &str, data: &[u8]) {
    let clamp = |value: usize| u32::try_from(value).unwrap_or(u32::MAX);
    out.extend_from_slice(MAGIC_NEWC);
    push_hex(out, header.ino);
    push_hex(out, header.mode);
    push_hex(out, 0); // uid
    push_hex(out, 0); // gid
    push_hex(out, header.nlink);
    push_hex(out, u32::try_from(header.mtime).unwrap_or(u32::MAX));
    push_hex(out, clamp(data.len()));
    push_hex(out, 0); // devmajor
    push_hex(out, 0); // devminor
    push_hex(out, header.rdev_major);
    push_hex(out, header.rdev_minor);
    push_hex(out, clamp(name.len().saturating_add(1)));
    push_hex(out, 0); // check
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

/// Appends `archive` (e.g. an overlay from [`crate::build_overlay`]) to `image`, first padding
/// `image` with zeros to a multiple of 4 bytes: the kernel only recognises an uncompressed
/// archive at a 4-byte aligned offset of the initrd, and skips zeros between archives.
pub fn append_archive(image: &mut Vec<u8>, archive: &[u8]) {
    pad4(image);
    image.extend_from_slice(archive);
}

/// Reads the entries of one or more concatenated newc archives, in archive order. As in the
/// kernel, zeros between archives are skipped and each archive must start 4-byte aligned.
pub fn read_newc(bytes: &[u8]) -> Result<Vec<Entry>, CpioError> {
    Ok(read_newc_raw(bytes)?
        .into_iter()
        .map(|raw| raw.entry)
        .collect())
}

/// Like [`read_newc`], but also returns inode numbers, link counts and ownership.
pub fn read_newc_raw(bytes: &[u8]) -> Result<Vec<RawEntry>, CpioError> {
    let mut entries = Vec::new();
    let mut offset = 0;
    let mut seen_trailer = false;
    loop {
        // Between concatenated archives the kernel skips NUL padding.
        while bytes.get(offset) == Some(&0) {
            offset += 1;
        }
        if offset >= bytes.len() {
            break;
        }
        if !offset.is_multiple_of(4) {
            return Err(CpioError::ReadAlignment { offset });
        }
        match read_record(bytes, offset)? {
            Record::Trailer { next } => {
                seen_trailer = true;
                offset = next;
            }
            Record::Entry { entry, next } => {
                seen_trailer = false;
                entries.push(entry);
                offset = next;
            }
        }
    }
    if !seen_trailer {
        return Err(CpioError::ReadMissingTrailer);
    }
    Ok(entries)
}

enum Record {
    Trailer { next: usize },
    Entry { entry: RawEntry, next: usize },
}

fn align4(value: usize) -> Option<usize> {
    value.checked_add(3).map(|v| v & !3)
}

fn read_field(
    bytes: &[u8],
    header: usize,
    index: usize,
    name: &'static str,
) -> Result<u32, CpioError> {
    let start = header + 6 + index * 8;
    let field = bytes
        .get(start..start + 8)
        .ok_or(CpioError::ReadTruncated { offset: start })?;
    let error = || CpioError::ReadHeaderField {
        offset: header,
        field: name,
    };
    let text = std::str::from_utf8(field).map_err(|_| error())?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(error());
    }
    u32::from_str_radix(text, 16).map_err(|_| error())
}

fn read_record(bytes: &[u8], offset: usize) -> Result<Record, CpioError> {
    let end_of_header = offset
        .checked_add(HEADER_LEN)
        .ok_or(CpioError::ReadTruncated { offset })?;
    let header = bytes
        .get(offset..end_of_header)
        .ok_or(CpioError::ReadTruncated { offset })?;
    let magic = header.get(..6).ok_or(CpioError::ReadTruncated { offset })?;
    if magic != MAGIC_NEWC && magic != MAGIC_CRC {
        return Err(CpioError::ReadMagic { offset });
    }
    let ino = read_field(bytes, offset, 0, "ino")?;
    let mode = read_field(bytes, offset, 1, "mode")?;
    let uid = read_field(bytes, offset, 2, "uid")?;
    let gid = read_field(bytes, offset, 3, "gid")?;
    let nlink = read_field(bytes, offset, 4, "nlink")?;
    let mtime = read_field(bytes, offset, 5, "mtime")?;
    let filesize = read_field(bytes, offset, 6, "filesize")?;
    let rdev_major = read_field(bytes, offset, 9, "rdevmajor")?;
    let rdev_minor = read_field(bytes, offset, 10, "rdevminor")?;
    let namesize = read_field(bytes, offset, 11, "namesize")?;
    read_field(bytes, offset, 12, "check")?;

    let namesize = usize::try_from(namesize).map_err(|_| CpioError::ReadName { offset })?;
    if namesize == 0 {
        return Err(CpioError::ReadName { offset });
    }
    let end_of_name = end_of_header
        .checked_add(namesize)
        .ok_or(CpioError::ReadTruncated { offset })?;
    let raw_name = bytes
        .get(end_of_header..end_of_name)
        .ok_or(CpioError::ReadTruncated {
            offset: end_of_header,
        })?;
    let (last, name) = raw_name
        .split_last()
        .ok_or(CpioError::ReadName { offset })?;
    if *last != 0 || name.is_empty() || name.contains(&0) {
        return Err(CpioError::ReadName { offset });
    }
    let name = std::str::from_utf8(name).map_err(|_| CpioError::ReadName { offset })?;
    let data_start = align4(end_of_name).ok_or(CpioError::ReadTruncated { offset })?;
    let filesize = usize::try_from(filesize).map_err(|_| CpioError::ReadTruncated { offset })?;
    let data_end = data_start
        .checked_add(filesize)
        .ok_or(CpioError::ReadTruncated { offset })?;
    let data = bytes
        .get(data_start..data_end)
        .ok_or(CpioError::ReadTruncated { offset: data_start })?;
    // The last record of a file may omit its padding.
    let next = align4(data_end)
        .ok_or(CpioError::ReadTruncated { offset })?
        .min(bytes.len());

    if name == TRAILER {
        return Ok(Record::Trailer { next });
    }
    let path = name.to_owned();
    let kind = match mode & S_IFMT {
        S_IFREG => EntryKind::File(data.to_vec()),
        S_IFDIR | S_IFCHR if !data.is_empty() => {
            return Err(CpioError::ReadUnexpectedData { path });
        }
        S_IFDIR => EntryKind::Directory,
        S_IFCHR => EntryKind::CharDevice {
            major: rdev_major,
            minor: rdev_minor,
        },
        S_IFLNK => match std::str::from_utf8(data) {
            Ok(target) => EntryKind::Symlink(target.to_owned()),
            Err(_) => return Err(CpioError::ReadSymlinkTarget { path }),
        },
        _ => return Err(CpioError::ReadFileType { path, mode }),
    };
    Ok(Record::Entry {
        entry: RawEntry {
            entry: Entry {
                path,
                kind,
                mode: mode & PERMISSION_MASK,
                mtime: u64::from(mtime),
            },
            ino,
            nlink,
            uid,
            gid,
        },
        next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry::file("etc/cvm/modules.load", b"x\n".to_vec(), 0o644, 7),
            Entry::file("init", b"\x7fELF".to_vec(), 0o755, 7),
            Entry::symlink("bin/sh", "/init", 7),
            Entry::directory("etc", 0o700, 7),
            Entry::file("a-b", vec![], 0o600, 7),
        ]
    }

    #[test]
    fn canonical_order_and_parents() {
        let canonical = canonicalize(&sample()).unwrap();
        let paths: Vec<&str> = canonical.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "a-b",
                "bin",
                "bin/sh",
                "etc",
                "etc/cvm",
                "etc/cvm/modules.load",
                "init"
            ]
        );
        // An explicit directory keeps its mode, an implicit one gets 0755.
        assert_eq!(canonical[3].mode, 0o700);
        assert_eq!(canonical[4].mode, 0o755);
        assert_eq!(canonical[4].mtime, 7);
    }

    #[test]
    fn header_fields() {
        let archive = write_newc(&sample());
        assert_eq!(archive.len() % 4, 0);
        let raw = read_newc_raw(&archive).unwrap();
        let inos: Vec<u32> = raw.iter().map(|r| r.ino).collect();
        assert_eq!(inos, [1, 2, 3, 4, 5, 6, 7]);
        assert!(raw.iter().all(|r| r.uid == 0 && r.gid == 0));
        let nlink = |p: &str| raw.iter().find(|r| r.entry.path == p).unwrap().nlink;
        assert_eq!(nlink("etc"), 3);
        assert_eq!(nlink("etc/cvm"), 2);
        assert_eq!(nlink("init"), 1);
        let trailer_at = archive.len() - 124;
        assert_eq!(&archive[trailer_at + HEADER_LEN..][..10], b"TRAILER!!!");
    }

    #[test]
    fn known_answer_single_file() {
        let archive = write_newc(&[Entry::file("a", b"hi".to_vec(), 0o644, 1)]);
        let expected = concat!(
            "070701",
            "00000001",
            "000081a4",
            "00000000",
            "00000000",
            "00000001",
            "00000001",
            "00000002",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000002",
            "00000000",
            "a\0",
            "hi\0\0",
            "070701",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000001",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "0000000b",
            "00000000",
            "TRAILER!!!\0",
            "\0\0\0",
        );
        assert_eq!(archive, expected.as_bytes());
    }

    #[test]
    fn canonicalize_rejects_bad_input() {
        let dup = [
            Entry::directory("a", 0o755, 0),
            Entry::directory("/a", 0o755, 0),
        ];
        assert_eq!(
            canonicalize(&dup),
            Err(CpioError::DuplicatePath { path: "a".into() })
        );
        let parent = [
            Entry::file("a", vec![], 0o644, 0),
            Entry::file("a/b", vec![], 0o644, 0),
        ];
        assert_eq!(
            canonicalize(&parent),
            Err(CpioError::ParentNotDirectory { path: "a".into() })
        );
        for bad in ["", "/", "a//b", "a/../b", "./a", "a\0b", "TRAILER!!!"] {
            assert!(
                matches!(normalize_path(bad), Err(CpioError::InvalidPath { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn write_newc_is_total() {
        let messy = [
            Entry::file("a", b"1".to_vec(), 0o644, 0),
            Entry::file("a/b", b"2".to_vec(), 0o644, 0),
            Entry::file("../x", b"3".to_vec(), 0o644, 0),
            Entry::file("c", b"4".to_vec(), 0o644, 0),
            Entry::file("c", b"5".to_vec(), 0o644, 0),
        ];
        let entries = read_newc(&write_newc(&messy)).unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a", "c"]);
        assert_eq!(entries[0].data(), Some(&b"1"[..]));
        assert_eq!(entries[1].data(), Some(&b"5"[..]));
    }

    #[test]
    fn concatenated_archives() {
        let mut bytes = write_newc(&[Entry::file("a", b"1".to_vec(), 0o644, 0)]);
        bytes.extend_from_slice(&[0; 512]);
        bytes.extend_from_slice(&write_newc(&[Entry::file("a", b"2".to_vec(), 0o644, 0)]));
        let entries = read_newc(&bytes).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].data(), Some(&b"2"[..]));

        let second = write_newc(&[Entry::file("b", b"3".to_vec(), 0o644, 0)]);
        let mut misaligned = b"\x1f\x8b\x08".to_vec();
        misaligned.extend_from_slice(&second);
        assert_eq!(
            read_newc(&misaligned),
            Err(CpioError::ReadMagic { offset: 0 })
        );
        let mut misaligned = bytes.clone();
        misaligned.push(7);
        misaligned.extend_from_slice(&second);
        let at = bytes.len();
        assert_eq!(
            read_newc(&misaligned),
            Err(CpioError::ReadMagic { offset: at })
        );
        let mut misaligned = bytes.clone();
        misaligned.extend_from_slice(&[0; 3]);
        misaligned.extend_from_slice(&second);
        assert_eq!(
            read_newc(&misaligned),
            Err(CpioError::ReadAlignment { offset: at + 3 })
        );
        let mut odd = vec![1, 2, 3];
        append_archive(&mut odd, &second);
        assert_eq!(odd.len(), 4 + second.len());
        assert_eq!(&odd[..4], &[1, 2, 3, 0]);
    }

    #[test]
    fn reader_errors() {
        assert_eq!(read_newc(b""), Err(CpioError::ReadMissingTrailer));
        assert_eq!(
            read_newc(b"070707"),
            Err(CpioError::ReadTruncated { offset: 0 })
        );
        let mut bad = write_newc(&[Entry::file("a", b"1".to_vec(), 0o644, 0)]);
        bad[0] = b'1';
        assert_eq!(read_newc(&bad), Err(CpioError::ReadMagic { offset: 0 }));
        let mut bad = write_newc(&[Entry::file("a", b"1".to_vec(), 0o644, 0)]);
        bad[6] = b'g';
        assert_eq!(
            read_newc(&bad),
            Err(CpioError::ReadHeaderField {
                offset: 0,
                field: "ino"
            })
        );
        let good = write_newc(&[Entry::file("a", b"1".to_vec(), 0o644, 0)]);
        let without_trailer = &good[..HEADER_LEN + 4];
        assert_eq!(
            read_newc(without_trailer),
            Err(CpioError::ReadMissingTrailer)
        );
        let truncated_body = &good[..HEADER_LEN + 2];
        assert_eq!(
            read_newc(truncated_body),
            Err(CpioError::ReadTruncated {
                offset: HEADER_LEN + 2
            })
        );
    }
}
