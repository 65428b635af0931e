//! Digest-pinned pull into a content-addressed store.
//!
//! Store layout (`root` is a directory on the encrypted data disk):
//! `blobs/sha256/<hex>` holds verified blobs (index, manifest, config, compressed layers);
//! `tmp/` holds downloads in progress. A blob only appears under `blobs/` after its digest, its
//! size and, for layers, its uncompressed digest (`diff_id`) were verified, and after an fsync,
//! so a power cut never leaves a half-written blob that looks complete. Manifests and configs
//! found in the store are re-hashed before use; layers are re-hashed (compressed and
//! uncompressed) by the unpacker. A second pull of the same pinned image needs no network.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::digest::{ImageRef, Sha256Digest};
use crate::oci::{self, Compression, Descriptor, Document, ImageConfig, OciError, media};
use crate::registry::{RegistryClient, RegistryError};

/// Largest manifest, index or config we accept.
pub const MAX_DOCUMENT: u64 = 4 << 20;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Creating or writing the store failed.
    #[error("write {path}")]
    WriteStore {
        /// Path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Reading a cached blob failed.
    #[error("read {path}")]
    ReadStore {
        /// Path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The registry request failed.
    #[error("fetch {what} {digest}")]
    Fetch {
        /// manifest, config or layer.
        what: &'static str,
        /// Digest.
        digest: Sha256Digest,
        /// Why.
        #[source]
        source: RegistryError,
    },
    /// Reading the response body failed.
    #[error("download {digest}")]
    Download {
        /// Digest.
        digest: Sha256Digest,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The manifest bytes do not hash to the pinned (or indexed) digest.
    #[error("manifest digest mismatch: expected {expected}, registry sent {actual}")]
    ManifestDigestMismatch {
        /// Pinned digest.
        expected: Sha256Digest,
        /// Digest of the bytes received.
        actual: Sha256Digest,
    },
    /// A blob does not hash to its descriptor digest.
    #[error("blob digest mismatch: expected {expected}, received {actual}")]
    BlobDigestMismatch {
        /// Descriptor digest.
        expected: Sha256Digest,
        /// Digest of the bytes received.
        actual: Sha256Digest,
    },
    /// A blob is not the size its descriptor says.
    #[error("blob {digest} size mismatch: descriptor says {expected} bytes, received {actual}{}", if *.truncated { "+" } else { "" })]
    BlobSizeMismatch {
        /// Digest.
        digest: Sha256Digest,
        /// Descriptor size.
        expected: u64,
        /// Bytes received (stopped early when above `expected`).
        actual: u64,
        /// The download was cut off because it exceeded `expected`.
        truncated: bool,
    },
    /// The uncompressed layer does not hash to the config's `diff_id`.
    #[error(
        "layer {layer} diff_id mismatch: config says {expected}, uncompressed content is {actual}"
    )]
    DiffIdMismatch {
        /// Compressed layer digest.
        layer: Sha256Digest,
        /// diff_id from the config.
        expected: Sha256Digest,
        /// Digest of the uncompressed stream.
        actual: Sha256Digest,
    },
    /// Decompressing a layer failed.
    #[error("decompress layer {layer}")]
    Decompress {
        /// Layer digest.
        layer: Sha256Digest,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A manifest, index or config is malformed or unsupported.
    #[error("parse {what} {digest}")]
    Parse {
        /// manifest or config.
        what: &'static str,
        /// Digest.
        digest: Sha256Digest,
        /// Why.
        #[source]
        source: OciError,
    },
    /// An index pointing to another index.
    #[error("index {digest} points to another index")]
    NestedIndex {
        /// Digest of the inner index.
        digest: Sha256Digest,
    },
    /// A manifest or config larger than [`MAX_DOCUMENT`].
    #[error(
        "{digest} is {size} bytes, above the {MAX_DOCUMENT}-byte limit for manifests and configs"
    )]
    DocumentTooLarge {
        /// Digest.
        digest: Sha256Digest,
        /// Size.
        size: u64,
    },
}

/// A content-addressed blob store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

pub(crate) fn write_err(path: &Path) -> impl FnOnce(io::Error) -> PullError + '_ {
    move |source| PullError::WriteStore {
        path: path.to_owned(),
        source,
    }
}

impl Store {
    /// Opens (creating) a store at `root`.
    pub fn open(root: &Path) -> Result<Self, PullError> {
        for sub in ["blobs/sha256", "tmp"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(write_err(&dir))?;
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a verified blob.
    pub fn blob_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub(crate) fn tmp_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{}.{}.partial", digest.hex(), std::process::id()))
    }

    /// Moves a verified temp file into place, durably.
    fn commit(&self, tmp: &Path, file: File, digest: &Sha256Digest) -> Result<PathBuf, PullError> {
        file.sync_all().map_err(write_err(tmp))?;
        drop(file);
        let dest = self.blob_path(digest);
        fs::rename(tmp, &dest).map_err(write_err(&dest))?;
        let dir = self.root.join("blobs/sha256");
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(write_err(&dir))?;
        Ok(dest)
    }

    /// Moves temp files whose contents were verified and synced (`sync_all`) into place, then
    /// makes the renames durable with one fsync of the blob directory.
    pub(crate) fn commit_synced(
        &self,
        verified: &[(&Path, &Sha256Digest)],
    ) -> Result<(), PullError> {
        for (tmp, digest) in verified {
            let dest = self.blob_path(digest);
            fs::rename(tmp, &dest).map_err(write_err(&dest))?;
        }
        let dir = self.root.join("blobs/sha256");
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(write_err(&dir))
    }

    /// Whether a layer blob of `size` bytes is in the store (its digests are checked on use).
    pub(crate) fn has_layer(&self, digest: &Sha256Digest, size: u64) -> bool {
        fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Reads a small cached blob if present and intact; a corrupt one is removed.
    fn cached_document(&self, digest: &Sha256Digest) -> Result<Option<Vec<u8>>, PullError> {
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(PullError::ReadStore { path, source }),
        };
        let mut bytes = Vec::new();
        file.take(MAX_DOCUMENT + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| PullError::ReadStore {
                path: path.clone(),
                source,
            })?;
        if Sha256Digest::of(&bytes) == *digest {
            return Ok(Some(bytes));
        }
        log::warn!(
            "{}: cached blob is corrupt, fetching it again",
            path.display()
        );
        fs::remove_file(&path).map_err(write_err(&path))?;
        Ok(None)
    }

    fn store_document(&self, digest: &Sha256Digest, bytes: &[u8]) -> Result<(), PullError> {
        let tmp = self.tmp_path(digest);
        let mut file = File::create(&tmp).map_err(write_err(&tmp))?;
        file.write_all(bytes).map_err(write_err(&tmp))?;
        self.commit(&tmp, file, digest)?;
        Ok(())
    }
}

impl Store {
    /// Removes every blob, unpacked root and temp file not belonging to `keep` (what
    /// `docker image prune -a` does after `compose up`); returns how many entries went.
    pub fn retain(&self, keep: &[&PulledImage]) -> Result<usize, PullError> {
        let mut blobs = std::collections::BTreeSet::new();
        let mut roots = std::collections::BTreeSet::new();
        for image in keep {
            blobs.insert(image.pinned.hex());
            blobs.insert(image.manifest.hex());
            blobs.insert(image.config_digest.hex());
            blobs.extend(image.layers.iter().map(|l| l.digest.hex()));
            roots.insert(image.manifest.hex());
        }
        let mut removed = 0;
        for (dir, wanted) in [
            (self.root.join("blobs/sha256"), Some(&blobs)),
            (self.root.join("rootfs"), Some(&roots)),
            (self.root.join("tmp"), None),
        ] {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(PullError::ReadStore { path: dir, source }),
            };
            for entry in entries {
                let entry = entry.map_err(|source| PullError::ReadStore {
                    path: dir.clone(),
                    source,
                })?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if wanted.is_some_and(|w| w.contains(&name)) {
                    continue;
                }
                let path = entry.path();
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                if is_dir {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                }
                .map_err(write_err(&path))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// One verified layer in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledLayer {
    /// Compressed digest.
    pub digest: Sha256Digest,
    /// Compressed size.
    pub size: u64,
    /// Compression.
    pub compression: Compression,
    /// Uncompressed digest from the config.
    pub diff_id: Sha256Digest,
    /// Blob path in the store.
    pub path: PathBuf,
}

/// A pulled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The digest the compose file pinned (manifest or index).
    pub pinned: Sha256Digest,
    /// The linux/amd64 image manifest digest.
    pub manifest: Sha256Digest,
    /// Config blob digest.
    pub config_digest: Sha256Digest,
    /// Parsed config.
    pub config: ImageConfig,
    /// Layers, bottom first.
    pub layers: Vec<PulledLayer>,
    /// Bytes downloaded by this pull (0 when everything came from the store).
    pub downloaded_bytes: u64,
}

/// Pull options.
#[derive(Debug, Clone, Copy)]
pub struct PullOptions {
    /// Decompress layers while downloading to check `diff_id`s. The unpacker checks them
    /// again before a root becomes visible, so a caller that always unpacks right after
    /// pulling (`prepare_images`) may turn this off and decompress once instead of twice.
    pub verify_diff_ids: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            verify_diff_ids: true,
        }
    }
}

/// Pulls `image` into `store`, verifying everything on the way (including `diff_id`s).
pub fn pull(
    store: &Store,
    client: &RegistryClient,
    image: &ImageRef,
) -> Result<PulledImage, PullError> {
    pull_with_options(store, client, image, PullOptions::default())
}

/// [`pull`] with options.
pub fn pull_with_options(
    store: &Store,
    client: &RegistryClient,
    image: &ImageRef,
    options: PullOptions,
) -> Result<PulledImage, PullError> {
    let mut downloaded = 0u64;
    let Resolved {
        manifest_digest,
        manifest,
        config,
    } = resolve(store, client, image, &mut downloaded)?;
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for ((desc, compression), diff_id) in manifest.layers.iter().zip(&config.diff_ids) {
        let path = store.blob_path(&desc.digest);
        if !store.has_layer(&desc.digest, desc.size) {
            let check = options.verify_diff_ids.then_some(diff_id);
            downloaded += download_layer(store, client, image, desc, *compression, check)?;
        }
        layers.push(PulledLayer {
            digest: desc.digest,
            size: desc.size,
            compression: *compression,
            diff_id: *diff_id,
            path,
        });
    }
    Ok(PulledImage {
        pinned: image.digest,
        manifest: manifest_digest,
        config_digest: manifest.config.digest,
        config,
        layers,
        downloaded_bytes: downloaded,
    })
}

/// The linux/amd64 manifest and the config of an image, verified.
pub(crate) struct Resolved {
    /// Manifest digest (the pinned one, or the index's linux/amd64 child).
    pub(crate) manifest_digest: Sha256Digest,
    /// The manifest.
    pub(crate) manifest: oci::ImageManifest,
    /// The parsed config (as many `diff_ids` as layers).
    pub(crate) config: ImageConfig,
}

/// Fetches (store first) and verifies the index, manifest and config of `image`.
pub(crate) fn resolve(
    store: &Store,
    client: &RegistryClient,
    image: &ImageRef,
    downloaded: &mut u64,
) -> Result<Resolved, PullError> {
    let (top, top_type) = document(store, client, image, &image.digest, None, downloaded)?;
    let parsed =
        oci::parse_document(&top, top_type.as_deref()).map_err(|source| PullError::Parse {
            what: "manifest",
            digest: image.digest,
            source,
        })?;
    let (manifest_digest, manifest) = match parsed {
        Document::Manifest(m) => (image.digest, m),
        Document::Index(child) => {
            let (bytes, ct) = document(
                store,
                client,
                image,
                &child.digest,
                Some(child.size),
                downloaded,
            )?;
            match oci::parse_document(&bytes, ct.as_deref()).map_err(|source| PullError::Parse {
                what: "manifest",
                digest: child.digest,
                source,
            })? {
                Document::Manifest(m) => (child.digest, m),
                Document::Index(_) => {
                    return Err(PullError::NestedIndex {
                        digest: child.digest,
                    });
                }
            }
        }
    };
    let config_bytes = config_blob(store, client, image, &manifest.config, downloaded)?;
    let config = oci::parse_config(&config_bytes, manifest.layers.len()).map_err(|source| {
        PullError::Parse {
            what: "config",
            digest: manifest.config.digest,
            source,
        }
    })?;
    Ok(Resolved {
        manifest_digest,
        manifest,
        config,
    })
}

/// Fetches a manifest or index (store first), checking digest and optional size.
fn document(
    store: &Store,
    client: &RegistryClient,
    image: &ImageRef,
    digest: &Sha256Digest,
    size: Option<u64>,
    downloaded: &mut u64,
) -> Result<(Vec<u8>, Option<String>), PullError> {
    if let Some(bytes) = store.cached_document(digest)? {
        return Ok((bytes, None));
    }
    let fetched = client
        .fetch(image, "manifests", digest, Some(media::MANIFEST_ACCEPT))
        .map_err(|source| PullError::Fetch {
            what: "manifest",
            digest: *digest,
            source,
        })?;
    let content_type = fetched.content_type.clone();
    let bytes = read_capped(fetched.into_reader(), digest, size)?;
    *downloaded += bytes.len() as u64;
    let actual = Sha256Digest::of(&bytes);
    if actual != *digest {
        return Err(PullError::ManifestDigestMismatch {
            expected: *digest,
            actual,
        });
    }
    store.store_document(digest, &bytes)?;
    Ok((bytes, content_type))
}

fn config_blob(
    store: &Store,
    client: &RegistryClient,
    image: &ImageRef,
    desc: &Descriptor,
    downloaded: &mut u64,
) -> Result<Vec<u8>, PullError> {
    if let Some(bytes) = store.cached_document(&desc.digest)? {
        check_size(&desc.digest, desc.size, bytes.len() as u64)?;
        return Ok(bytes);
    }
    let fetched = client
        .fetch(image, "blobs", &desc.digest, None)
        .map_err(|source| PullError::Fetch {
            what: "config",
            digest: desc.digest,
            source,
        })?;
    let bytes = read_capped(fetched.into_reader(), &desc.digest, Some(desc.size))?;
    *downloaded += bytes.len() as u64;
    let actual = Sha256Digest::of(&bytes);
    if actual != desc.digest {
        return Err(PullError::BlobDigestMismatch {
            expected: desc.digest,
            actual,
        });
    }
    store.store_document(&desc.digest, &bytes)?;
    Ok(bytes)
}

pub(crate) fn check_size(
    digest: &Sha256Digest,
    expected: u64,
    actual: u64,
) -> Result<(), PullError> {
    if expected == actual {
        Ok(())
    } else {
        Err(PullError::BlobSizeMismatch {
            digest: *digest,
            expected,
            actual,
            truncated: false,
        })
    }
}

fn read_capped(
    reader: impl Read,
    digest: &Sha256Digest,
    size: Option<u64>,
) -> Result<Vec<u8>, PullError> {
    let cap = size.unwrap_or(MAX_DOCUMENT);
    if cap > MAX_DOCUMENT {
        return Err(PullError::DocumentTooLarge {
            digest: *digest,
            size: cap,
        });
    }
    let mut bytes = Vec::new();
    reader
        .take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| PullError::Download {
            digest: *digest,
            source,
        })?;
    let got = bytes.len() as u64;
    match size {
        Some(size) if got != size => Err(PullError::BlobSizeMismatch {
            digest: *digest,
            expected: size,
            actual: got,
            truncated: got > size,
        }),
        None if got > MAX_DOCUMENT => Err(PullError::DocumentTooLarge {
            digest: *digest,
            size: got,
        }),
        _ => Ok(bytes),
    }
}

/// A writer that only hashes.
#[derive(Debug, Default)]
pub(crate) struct HashWriter {
    hasher: Sha256,
    pub(crate) bytes: u64,
}

impl HashWriter {
    pub(crate) fn digest(self) -> Sha256Digest {
        Sha256Digest(self.hasher.finalize().into())
    }
}

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Decompresses whatever is written into it and hashes the output.
pub(crate) enum DiffHasher {
    Plain(HashWriter),
    Gzip(Box<flate2::write::MultiGzDecoder<HashWriter>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, HashWriter>>),
}

impl DiffHasher {
    pub(crate) fn new(compression: Compression) -> io::Result<Self> {
        Ok(match compression {
            Compression::None => Self::Plain(HashWriter::default()),
            Compression::Gzip => Self::Gzip(Box::new(flate2::write::MultiGzDecoder::new(
                HashWriter::default(),
            ))),
            Compression::Zstd => Self::Zstd(Box::new(zstd::stream::write::Decoder::new(
                HashWriter::default(),
            )?)),
        })
    }

    pub(crate) fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Self::Plain(w) => w.write_all(buf),
            Self::Gzip(w) => w.write_all(buf),
            Self::Zstd(w) => w.write_all(buf),
        }
    }

    pub(crate) fn finish(self) -> io::Result<Sha256Digest> {
        Ok(match self {
            Self::Plain(w) => w.digest(),
            Self::Gzip(w) => w.finish()?.digest(),
            Self::Zstd(mut w) => {
                w.flush()?;
                w.into_inner().digest()
            }
        })
    }
}

impl std::fmt::Debug for DiffHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiffHasher")
    }
}

/// Streams one layer to the store, checking size, digest and diff_id. Returns bytes received.
fn download_layer(
    store: &Store,
    client: &RegistryClient,
    image: &ImageRef,
    desc: &Descriptor,
    compression: Compression,
    diff_id: Option<&Sha256Digest>,
) -> Result<u64, PullError> {
    let fetched = client
        .fetch(image, "blobs", &desc.digest, None)
        .map_err(|source| PullError::Fetch {
            what: "layer",
            digest: desc.digest,
            source,
        })?;
    let tmp = store.tmp_path(&desc.digest);
    let result = stream_layer(
        store,
        fetched.into_reader(),
        &tmp,
        desc,
        compression,
        diff_id,
    );
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn stream_layer(
    store: &Store,
    mut body: impl Read,
    tmp: &Path,
    desc: &Descriptor,
    compression: Compression,
    diff_id: Option<&Sha256Digest>,
) -> Result<u64, PullError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .map_err(write_err(tmp))?;
    let mut hasher = HashWriter::default();
    let decompress = |source| PullError::Decompress {
        layer: desc.digest,
        source,
    };
    // A decoder error is remembered, not raised at once: a corrupt download must be reported
    // as a digest mismatch, which is checked first.
    let mut diff = match diff_id {
        Some(_) => Some(DiffHasher::new(compression).map_err(decompress)?),
        None => None,
    };
    let mut diff_error = None;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    while let Some(n) = read_blob_chunk(&mut body, &mut buf, desc, &mut total)? {
        let chunk = &buf[..n];
        file.write_all(chunk).map_err(write_err(tmp))?;
        hasher.write_all(chunk).map_err(write_err(tmp))?;
        if let Some(d) = diff.as_mut()
            && let Err(e) = d.write_all(chunk)
        {
            diff_error = Some(e);
            diff = None;
        }
    }
    check_size(&desc.digest, desc.size, total)?;
    let actual = hasher.digest();
    if actual != desc.digest {
        return Err(PullError::BlobDigestMismatch {
            expected: desc.digest,
            actual,
        });
    }
    if let Some(expected) = diff_id {
        let actual_diff = match (diff, diff_error) {
            (Some(d), None) => d.finish().map_err(decompress)?,
            (_, Some(e)) => return Err(decompress(e)),
            (None, None) => return Err(decompress(io::Error::other("decoder missing"))),
        };
        if actual_diff != *expected {
            return Err(PullError::DiffIdMismatch {
                layer: desc.digest,
                expected: *expected,
                actual: actual_diff,
            });
        }
    }
    store.commit(tmp, file, &desc.digest)?;
    Ok(total)
}

/// Reads the next chunk of blob `desc` from `body` into `buf`: its length, or `None` at the end.
/// Counts it into `total` and refuses a body longer than the descriptor's size; a read error is
/// a download error of that blob (an interrupted read is retried).
pub(crate) fn read_blob_chunk(
    body: &mut impl Read,
    buf: &mut [u8],
    desc: &Descriptor,
    total: &mut u64,
) -> Result<Option<usize>, PullError> {
    let n = loop {
        match body.read(buf) {
            Ok(0) => return Ok(None),
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(PullError::Download {
                    digest: desc.digest,
                    source,
                });
            }
        }
    };
    *total += n as u64;
    if *total > desc.size {
        return Err(PullError::BlobSizeMismatch {
            digest: desc.digest,
            expected: desc.size,
            actual: *total,
            truncated: true,
        });
    }
    Ok(Some(n))
}
