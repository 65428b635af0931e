//! Safe layer unpacking into a root filesystem directory.
//!
//! Our own applier over the `tar` crate's reader (the crate's `unpack_in` canonicalizes on the
//! host and has no whiteout logic). Rules:
//!
//! * Entry names are cleaned (`./` and a leading `/` dropped). A `..` component, an empty
//!   name or a NUL byte is an error: nothing is written for such a layer's later entries, and
//!   the half-built root is discarded.
//! * The parent directory of every entry is resolved *inside the root*, component by
//!   component, following symlinks the way the container will see them: an absolute symlink
//!   restarts at the root, `..` stops at the root. So `var/run -> /run` followed by
//!   `var/run/app.pid` writes `<root>/run/app.pid`, and `evil -> /etc` followed by
//!   `evil/passwd` writes `<root>/etc/passwd`, never the host's. The last component is never
//!   followed: an existing entry there is replaced (a directory over a directory is kept).
//! * Symlink targets are stored verbatim (they are data, interpreted inside the container).
//! * Hard-link targets are cleaned and resolved the same way; a target with `..`, a missing
//!   target or a directory is an error.
//! * Whiteouts: `.wh.<name>` removes `<name>` from lower layers; `.wh..wh..opq` empties its
//!   directory of everything lower layers put there, keeping what this layer adds, wherever
//!   the marker appears in the layer.
//! * Device nodes and FIFOs in layers are not created (logged and skipped): a container's
//!   `/dev` comes from the runtime. Extended attributes (PAX `SCHILY.xattr.*`, including file
//!   capabilities) are not applied. Ownership (numeric uid/gid) is applied when running as
//!   root; modes including setuid/setgid are applied; regular files get their mtime.
//! * While unpacking, each layer's compressed digest and its `diff_id` are verified again (the
//!   stream is drained past tar's end-of-archive marker). The image is unpacked into
//!   `rootfs/.tmp-<hex>` and renamed to `rootfs/<manifest hex>` only after every layer
//!   verified and the file system was synced, so a power cut never leaves a half-unpacked
//!   image that looks complete; a stale temp directory is removed on the next attempt.
//!
//! The directory being built is private to the init and nothing else writes to it, so the
//! user-space resolution has no race with a concurrent writer.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};

use crate::digest::Sha256Digest;
use crate::oci::Compression;
use crate::pull::{PulledImage, PulledLayer, Store};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// Opening or reading the layer blob failed.
    #[error("read layer {layer}")]
    ReadLayer {
        /// Layer digest.
        layer: Sha256Digest,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The tar stream is malformed.
    #[error("read tar entry of layer {layer}")]
    ReadEntry {
        /// Layer digest.
        layer: Sha256Digest,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An entry name or hard-link target that cannot be applied safely.
    #[error("layer {layer}: unsafe entry {path:?}: {reason}")]
    UnsafeEntry {
        /// Layer digest.
        layer: Sha256Digest,
        /// The name as in the archive.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// An entry type we do not apply.
    #[error("layer {layer}: entry {path:?} has unsupported type {kind}")]
    UnsupportedEntry {
        /// Layer digest.
        layer: Sha256Digest,
        /// Name.
        path: String,
        /// Type byte.
        kind: char,
    },
    /// A file-system operation failed.
    #[error("{op} {path}")]
    Apply {
        /// Operation.
        op: &'static str,
        /// Host path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The blob changed since it was pulled.
    #[error("layer {layer} digest mismatch on unpack: blob is now {actual}")]
    LayerDigestMismatch {
        /// Expected digest.
        layer: Sha256Digest,
        /// Actual digest.
        actual: Sha256Digest,
    },
    /// The uncompressed content does not match the config's diff_id.
    #[error(
        "layer {layer} diff_id mismatch on unpack: config says {expected}, content is {actual}"
    )]
    DiffIdMismatch {
        /// Layer digest.
        layer: Sha256Digest,
        /// diff_id.
        expected: Sha256Digest,
        /// Actual.
        actual: Sha256Digest,
    },
}

fn apply_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Apply {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Options.
#[derive(Debug, Clone, Copy)]
pub struct UnpackOptions {
    /// Apply numeric owners (needs root). Off: files belong to the unpacking user.
    pub preserve_ownership: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        Self {
            preserve_ownership: true,
        }
    }
}

/// Where the unpacked root of manifest `manifest` lives: `<store>/rootfs/<manifest hex>`.
pub fn root_path(store: &Store, manifest: &Sha256Digest) -> PathBuf {
    store.root().join("rootfs").join(manifest.hex())
}

/// Unpacks `image` to `<store>/rootfs/<manifest hex>` (reusing it if already complete) and
/// returns that path.
pub fn unpack_image(
    store: &Store,
    image: &PulledImage,
    options: UnpackOptions,
) -> Result<PathBuf, UnpackError> {
    let dest = root_path(store, &image.manifest);
    if dest.is_dir() {
        return Ok(dest);
    }
    let root = RootBuilder::begin(store, &image.manifest)?;
    for layer in &image.layers {
        apply_layer_file(root.path(), layer, options)?;
    }
    root.sync()?;
    root.commit()
}

/// A root being built in `rootfs/.tmp-<manifest hex>`: invisible under its final name until
/// [`RootBuilder::commit`], removed when dropped uncommitted (a failed unpack leaves nothing).
#[derive(Debug)]
pub(crate) struct RootBuilder {
    base: PathBuf,
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl RootBuilder {
    /// Creates the empty temp root (removing a stale one from an interrupted attempt).
    pub(crate) fn begin(store: &Store, manifest: &Sha256Digest) -> Result<Self, UnpackError> {
        let base = store.root().join("rootfs");
        fs::create_dir_all(&base).map_err(apply_err("create directory", &base))?;
        let dest = root_path(store, manifest);
        let tmp = base.join(format!(".tmp-{}", manifest.hex()));
        if fs::symlink_metadata(&tmp).is_ok() {
            fs::remove_dir_all(&tmp).map_err(apply_err("remove stale", &tmp))?;
        }
        fs::create_dir(&tmp).map_err(apply_err("create directory", &tmp))?;
        let builder = Self {
            base,
            tmp,
            dest,
            committed: false,
        };
        fs::set_permissions(&builder.tmp, fs::Permissions::from_mode(0o755))
            .map_err(apply_err("chmod", &builder.tmp))?;
        Ok(builder)
    }

    /// The temp root layers are applied to.
    pub(crate) fn path(&self) -> &Path {
        &self.tmp
    }

    /// Syncs the file system holding the root (and the store).
    pub(crate) fn sync(&self) -> Result<(), UnpackError> {
        sync_filesystem(&self.tmp)
    }

    /// Renames the synced root to its final name, durably; returns that name.
    pub(crate) fn commit(mut self) -> Result<PathBuf, UnpackError> {
        fs::rename(&self.tmp, &self.dest).map_err(apply_err("rename", &self.dest))?;
        self.committed = true;
        File::open(&self.base)
            .and_then(|d| d.sync_all())
            .map_err(apply_err("fsync", &self.base))?;
        Ok(std::mem::take(&mut self.dest))
    }
}

impl Drop for RootBuilder {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

fn sync_filesystem(path: &Path) -> Result<(), UnpackError> {
    let dir = File::open(path).map_err(apply_err("open", path))?;
    nix::unistd::syncfs(&dir).map_err(|e| UnpackError::Apply {
        op: "syncfs",
        path: path.to_owned(),
        source: io::Error::from(e),
    })
}

#[derive(Default)]
struct HashState {
    hasher: Sha256,
    bytes: u64,
}

struct HashReader<R> {
    inner: R,
    state: Rc<RefCell<HashState>>,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut s = self.state.borrow_mut();
        s.hasher.update(&buf[..n]);
        s.bytes += n as u64;
        Ok(n)
    }
}

fn take_digest(state: &Rc<RefCell<HashState>>) -> Sha256Digest {
    let s = std::mem::take(&mut *state.borrow_mut());
    Sha256Digest(s.hasher.finalize().into())
}

/// Applies one stored layer blob onto `root`, verifying its digest and diff_id.
pub fn apply_layer_file(
    root: &Path,
    layer: &PulledLayer,
    options: UnpackOptions,
) -> Result<(), UnpackError> {
    let read_err = |source| UnpackError::ReadLayer {
        layer: layer.digest,
        source,
    };
    let file = File::open(&layer.path).map_err(read_err)?;
    let compressed = Rc::new(RefCell::new(HashState::default()));
    let uncompressed = Rc::new(RefCell::new(HashState::default()));
    let raw = HashReader {
        inner: BufReader::with_capacity(256 * 1024, file),
        state: compressed.clone(),
    };
    let decoded: Box<dyn Read> = match layer.compression {
        Compression::None => Box::new(raw),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(raw).map_err(read_err)?),
    };
    let tar_input = HashReader {
        inner: decoded,
        state: uncompressed.clone(),
    };
    let mut applier = Applier::new(root, layer.digest, options);
    let mut rest = match applier.apply(tar_input) {
        Ok(rest) => rest,
        Err(e) => {
            // A corrupt blob is reported as such, not as the tar error it caused.
            let mut file = File::open(&layer.path).map_err(read_err)?;
            let mut hasher = crate::pull::HashWriter::default();
            io::copy(&mut file, &mut hasher).map_err(read_err)?;
            let actual = hasher.digest();
            if actual != layer.digest {
                return Err(UnpackError::LayerDigestMismatch {
                    layer: layer.digest,
                    actual,
                });
            }
            return Err(e);
        }
    };
    // Drain past tar's end-of-archive blocks so both digests cover the whole stream.
    io::copy(&mut rest, &mut io::sink()).map_err(read_err)?;
    drop(rest);
    let actual = take_digest(&compressed);
    if actual != layer.digest {
        return Err(UnpackError::LayerDigestMismatch {
            layer: layer.digest,
            actual,
        });
    }
    let actual_diff = take_digest(&uncompressed);
    if actual_diff != layer.diff_id {
        return Err(UnpackError::DiffIdMismatch {
            layer: layer.digest,
            expected: layer.diff_id,
            actual: actual_diff,
        });
    }
    applier.finish()
}

/// Applies the uncompressed tar stream of `layer` onto `root` and reads `tar` to its end (past
/// tar's end-of-archive blocks, so a hash over the stream covers all of it). The caller checks
/// the digests and discards the root if they do not match.
pub(crate) fn apply_layer_stream(
    root: &Path,
    layer: Sha256Digest,
    tar: impl Read,
    options: UnpackOptions,
) -> Result<(), UnpackError> {
    let mut applier = Applier::new(root, layer, options);
    let mut rest = applier.apply(tar)?;
    io::copy(&mut rest, &mut io::sink())
        .map_err(|source| UnpackError::ReadLayer { layer, source })?;
    applier.finish()
}

/// Applies an uncompressed tar stream onto `root` without digest checks (tests, tools).
pub fn apply_tar(
    root: &Path,
    layer: Sha256Digest,
    tar: impl Read,
    options: UnpackOptions,
) -> Result<(), UnpackError> {
    let mut applier = Applier::new(root, layer, options);
    applier.apply(tar)?;
    applier.finish()
}

/// Creates directory `container_path` (absolute, as the container sees it) inside `root`,
/// resolving symlinks inside the root; returns the host path. Used for the working directory,
/// which libcontainer does not create.
pub fn create_dir_in_root(root: &Path, container_path: &str) -> Result<PathBuf, UnpackError> {
    let mut applier = Applier::new(root, Sha256Digest([0; 32]), UnpackOptions::default());
    let components = applier.clean(container_path.as_bytes())?;
    let dir = applier.resolve_dir(&components)?;
    applier.ensure_dir(&dir)?;
    Ok(dir)
}

/// Reads a small file at `container_path` inside `root` (symlinks resolved inside the root),
/// at most `cap` bytes; `Ok(None)` if it does not exist or is not a regular file.
pub fn read_file_in_root(
    root: &Path,
    container_path: &str,
    cap: u64,
) -> Result<Option<Vec<u8>>, UnpackError> {
    let applier = Applier::new(root, Sha256Digest([0; 32]), UnpackOptions::default());
    let components = applier.clean(container_path.as_bytes())?;
    // Every component, the last included, is followed inside the root.
    let path = applier.resolve_dir(&components)?;
    match fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => {
            let file = File::open(&path).map_err(apply_err("open", &path))?;
            let mut out = Vec::new();
            file.take(cap)
                .read_to_end(&mut out)
                .map_err(apply_err("read", &path))?;
            Ok(Some(out))
        }
        _ => Ok(None),
    }
}

struct Applier<'a> {
    root: &'a Path,
    layer: Sha256Digest,
    options: UnpackOptions,
    /// Host paths this layer wrote (for opaque whiteouts).
    written: HashSet<PathBuf>,
    /// Directories marked opaque in this layer.
    opaque: Vec<PathBuf>,
    /// Directory modes to apply at the end (a read-only directory must stay writable while
    /// the layer fills it).
    dir_modes: Vec<(PathBuf, u32)>,
    skipped_devices: u32,
    buffer: Vec<u8>,
}

/// Copies an entry's data with a large reusable buffer.
fn copy_entry(from: &mut impl Read, to: &mut File, buffer: &mut [u8]) -> io::Result<()> {
    use std::io::Write as _;
    loop {
        match from.read(buffer) {
            Ok(0) => return Ok(()),
            Ok(n) => to.write_all(&buffer[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

const MAX_SYMLINK_HOPS: u32 = 40;

impl<'a> Applier<'a> {
    fn new(root: &'a Path, layer: Sha256Digest, options: UnpackOptions) -> Self {
        Self {
            root,
            layer,
            options,
            written: HashSet::new(),
            opaque: Vec::new(),
            dir_modes: Vec::new(),
            skipped_devices: 0,
            buffer: vec![0; 256 * 1024],
        }
    }

    fn unsafe_entry(&self, path: &[u8], reason: &'static str) -> UnpackError {
        UnpackError::UnsafeEntry {
            layer: self.layer,
            path: String::from_utf8_lossy(path).chars().take(256).collect(),
            reason,
        }
    }

    /// Cleans an archive name into normal components.
    fn clean(&self, raw: &[u8]) -> Result<Vec<Vec<u8>>, UnpackError> {
        if raw.contains(&0) {
            return Err(self.unsafe_entry(raw, "NUL in name"));
        }
        let mut out = Vec::new();
        for component in Path::new(OsStr::from_bytes(raw)).components() {
            match component {
                Component::Normal(c) => out.push(c.as_bytes().to_vec()),
                Component::RootDir | Component::CurDir => {}
                Component::ParentDir => {
                    return Err(self.unsafe_entry(raw, "`..` component"));
                }
                Component::Prefix(_) => return Err(self.unsafe_entry(raw, "path prefix")),
            }
        }
        Ok(out)
    }

    /// Resolves `components` as a directory path inside the root, following symlinks scoped
    /// to the root. Missing components are returned as-is (they will be created).
    fn resolve_dir(&self, components: &[Vec<u8>]) -> Result<PathBuf, UnpackError> {
        let mut pending: Vec<Vec<u8>> = components.iter().rev().cloned().collect();
        let mut resolved: Vec<Vec<u8>> = Vec::new();
        let mut hops = 0;
        while let Some(c) = pending.pop() {
            if c == b".." {
                resolved.pop();
                continue;
            }
            if c == b"." || c.is_empty() {
                continue;
            }
            let mut candidate = self.root.to_path_buf();
            for r in &resolved {
                candidate.push(OsStr::from_bytes(r));
            }
            candidate.push(OsStr::from_bytes(&c));
            match fs::symlink_metadata(&candidate) {
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(self.unsafe_entry(&c, "too many symlink hops"));
                    }
                    let target =
                        fs::read_link(&candidate).map_err(apply_err("read symlink", &candidate))?;
                    let bytes = target.as_os_str().as_bytes();
                    if bytes.starts_with(b"/") {
                        resolved.clear();
                    }
                    for part in bytes.split(|&b| b == b'/').rev() {
                        pending.push(part.to_vec());
                    }
                }
                _ => resolved.push(c),
            }
        }
        let mut out = self.root.to_path_buf();
        for r in &resolved {
            out.push(OsStr::from_bytes(r));
        }
        Ok(out)
    }

    /// Makes sure `dir` (inside the root, already resolved) exists as a directory.
    fn ensure_dir(&mut self, dir: &Path) -> Result<(), UnpackError> {
        if dir == self.root {
            return Ok(());
        }
        match fs::symlink_metadata(dir) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => {
                fs::remove_file(dir).map_err(apply_err("remove", dir))?;
                fs::create_dir(dir).map_err(apply_err("create directory", dir))
            }
            Err(_) => {
                if let Some(parent) = dir.parent() {
                    self.ensure_dir(parent)?;
                }
                fs::create_dir(dir).map_err(apply_err("create directory", dir))
            }
        }
    }

    fn remove_any(path: &Path) -> Result<(), UnpackError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(apply_err("remove", path)),
            Ok(_) => fs::remove_file(path).map_err(apply_err("remove", path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(apply_err("stat", path)(e)),
        }
    }

    fn apply<R: Read>(&mut self, input: R) -> Result<R, UnpackError> {
        let layer = self.layer;
        let read_err = |source| UnpackError::ReadEntry { layer, source };
        let mut archive = tar::Archive::new(input);
        {
            let entries = archive.entries().map_err(read_err)?;
            for entry in entries {
                let mut entry = entry.map_err(read_err)?;
                self.apply_entry(&mut entry)?;
            }
        }
        Ok(archive.into_inner())
    }

    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_name = entry.path_bytes().into_owned();
        let components = self.clean(&raw_name)?;
        let kind = entry.header().entry_type();
        let Some((name, parents)) = components.split_last() else {
            // The root itself (`./`): only a directory may name it.
            return if kind.is_dir() {
                Ok(())
            } else {
                Err(self.unsafe_entry(&raw_name, "empty name"))
            };
        };
        let parent = self.resolve_dir(parents)?;
        self.ensure_dir(&parent)?;
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            if hidden == b".wh..opq" {
                self.opaque.push(parent);
            } else if hidden.is_empty() {
                return Err(self.unsafe_entry(&raw_name, "empty whiteout"));
            } else if hidden == b"." || hidden == b".." {
                // `.wh..` would remove the directory itself (at the top: the whole rootfs),
                // `.wh...` its parent.
                return Err(self.unsafe_entry(&raw_name, "whiteout of `.` or `..`"));
            } else {
                let target = parent.join(OsStr::from_bytes(hidden));
                Self::remove_any(&target)?;
            }
            return Ok(());
        }
        let path = parent.join(OsStr::from_bytes(name));
        let mode = entry
            .header()
            .mode()
            .map_err(|source| UnpackError::ReadEntry {
                layer: self.layer,
                source,
            })?
            & 0o7777;
        let owner = (
            entry
                .header()
                .uid()
                .ok()
                .and_then(|u| u32::try_from(u).ok()),
            entry
                .header()
                .gid()
                .ok()
                .and_then(|g| u32::try_from(g).ok()),
        );
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        fs::remove_file(&path).map_err(apply_err("remove", &path))?;
                        fs::create_dir(&path).map_err(apply_err("create directory", &path))?;
                    }
                    Err(_) => {
                        fs::create_dir(&path).map_err(apply_err("create directory", &path))?
                    }
                }
                self.chown(&path, owner)?;
                self.dir_modes.push((path.clone(), mode));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                Self::remove_any(&path)?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(apply_err("create file", &path))?;
                copy_entry(entry, &mut file, &mut self.buffer)
                    .map_err(apply_err("write", &path))?;
                if let Ok(mtime) = entry.header().mtime() {
                    let _ = file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime));
                }
                drop(file);
                self.chown(&path, owner)?;
                // chmod after chown: chown clears setuid bits.
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(apply_err("chmod", &path))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .filter(|t| !t.is_empty() && !t.contains(&0))
                    .ok_or_else(|| self.unsafe_entry(&raw_name, "symlink without target"))?;
                Self::remove_any(&path)?;
                symlink(OsStr::from_bytes(&target), &path)
                    .map_err(apply_err("create symlink", &path))?;
                self.lchown(&path, owner)?;
            }
            tar::EntryType::Link => {
                let target_raw = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .ok_or_else(|| self.unsafe_entry(&raw_name, "hard link without target"))?;
                let target_components = self.clean(&target_raw).map_err(|_| {
                    self.unsafe_entry(&raw_name, "hard-link target leaves the root")
                })?;
                let Some((target_name, target_parents)) = target_components.split_last() else {
                    return Err(self.unsafe_entry(&raw_name, "hard link to the root"));
                };
                let source = self
                    .resolve_dir(target_parents)?
                    .join(OsStr::from_bytes(target_name));
                match fs::symlink_metadata(&source) {
                    Ok(m) if m.is_dir() => {
                        return Err(self.unsafe_entry(&raw_name, "hard link to a directory"));
                    }
                    Ok(_) => {}
                    Err(_) => {
                        return Err(self.unsafe_entry(&raw_name, "hard-link target does not exist"));
                    }
                }
                if source != path {
                    Self::remove_any(&path)?;
                    fs::hard_link(&source, &path).map_err(apply_err("create hard link", &path))?;
                }
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                self.skipped_devices += 1;
                log::debug!(
                    "layer {}: skipping device/fifo {}",
                    self.layer,
                    String::from_utf8_lossy(&raw_name)
                );
                return Ok(());
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => return Ok(()),
            other => {
                return Err(UnpackError::UnsupportedEntry {
                    layer: self.layer,
                    path: String::from_utf8_lossy(&raw_name).into_owned(),
                    kind: char::from(other.as_byte()),
                });
            }
        }
        self.written.insert(path);
        Ok(())
    }

    fn chown(&self, path: &Path, owner: (Option<u32>, Option<u32>)) -> Result<(), UnpackError> {
        if !self.options.preserve_ownership {
            return Ok(());
        }
        std::os::unix::fs::chown(path, owner.0, owner.1).map_err(apply_err("chown", path))
    }

    fn lchown(&self, path: &Path, owner: (Option<u32>, Option<u32>)) -> Result<(), UnpackError> {
        if !self.options.preserve_ownership {
            return Ok(());
        }
        std::os::unix::fs::lchown(path, owner.0, owner.1).map_err(apply_err("chown", path))
    }

    /// Removes from `dir` everything this layer did not write, recursively.
    fn clear_lower(&self, dir: &Path) -> Result<(), UnpackError> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(apply_err("read directory", dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(apply_err("read directory", dir))?;
            let path = entry.path();
            if self.written.contains(&path) {
                let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
                if is_dir {
                    self.clear_lower(&path)?;
                }
            } else {
                Self::remove_any(&path)?;
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<(), UnpackError> {
        for dir in &self.opaque {
            self.clear_lower(dir)?;
        }
        for (dir, mode) in self.dir_modes.iter().rev() {
            if fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
                fs::set_permissions(dir, fs::Permissions::from_mode(*mode))
                    .map_err(apply_err("chmod", dir))?;
            }
        }
        if self.skipped_devices > 0 {
            log::info!(
                "layer {}: {} device nodes/fifos not created (policy)",
                self.layer,
                self.skipped_devices
            );
        }
        Ok(())
    }
}
