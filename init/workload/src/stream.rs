//! Pull and unpack as one stream.
//!
//! [`pull_and_unpack`] overlaps the download of an image's layers with their unpacking, so an
//! image is ready in about max(fetch, unpack) instead of their sum:
//!
//! * Up to [`StreamOptions::concurrency`] fetch threads download the layers, in layer order,
//!   each into its temp file in the store's `tmp/`, checking size and compressed digest as the
//!   bytes arrive (exactly as [`crate::pull`] does). Nothing waits on the unpacker: the temp
//!   file is the buffer, so memory stays flat in the layer size.
//! * One decode thread reads the layers in order from those temp files *while they grow*
//!   (a reader blocks at the written end until more bytes or the end of the download),
//!   hashes the compressed bytes it reads, decompresses them (gzip, zstd or none) and hashes
//!   the tar stream, handing it on in a few fixed-size buffers.
//! * The calling thread applies each tar stream, in layer order, onto a private temp root
//!   (`rootfs/.tmp-<manifest hex>`) with the same rules as [`crate::unpack`] (whiteouts,
//!   symlinks resolved inside the root), so layer order semantics are those of
//!   [`crate::unpack::unpack_image`]. Layer N+1 is downloaded and decompressed while layer N is
//!   written.
//!
//! Commit rule (unchanged): a layer blob moves into `blobs/` and the root gets its final name
//! only after *every* layer passed both its compressed digest (of the bytes received and of the
//! bytes unpacked) and its `diff_id`, and after the file system was synced. On any failure the
//! other downloads stop, every temp file and the temp root are removed, and no layer blob and
//! no root of the image is committed (the manifest and config, verified by digest, are kept).
//! A corrupt download is reported as the digest or size mismatch it is, never as the
//! decompression or tar error it caused.

use std::cell::RefCell;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use sha2::{Digest as _, Sha256};

use crate::digest::{ImageRef, Sha256Digest};
use crate::oci::{Compression, Descriptor};
use crate::pull::{
    self, HashWriter, PullError, PulledImage, PulledLayer, Resolved, Store, check_size, write_err,
};
use crate::registry::RegistryClient;
use crate::unpack::{self, RootBuilder, UnpackError, UnpackOptions};

/// Layers downloaded at the same time by default.
pub const DEFAULT_CONCURRENCY: usize = 3;

/// Size of one buffer of decompressed tar stream handed to the applier.
const CHUNK: usize = 64 * 1024;
/// Buffers in flight between the decode thread and the applier.
const CHUNKS_IN_FLIGHT: usize = 4;
/// Read size of the fetch threads.
const DOWNLOAD_BUFFER: usize = 64 * 1024;
/// Read size of the decode thread from a layer file.
const READ_BUFFER: usize = 64 * 1024;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Fetching or verifying the image failed (digest, size, `diff_id`, registry).
    #[error(transparent)]
    Pull(#[from] PullError),
    /// Applying a layer failed.
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    /// A thread could not be started.
    #[error("start {what} thread")]
    SpawnThread {
        /// Which thread.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A thread ended without a result (it panicked).
    #[error("{what} thread stopped without a result")]
    JoinThread {
        /// Which thread.
        what: &'static str,
    },
}

/// Options of [`pull_and_unpack`].
#[derive(Debug, Clone, Copy)]
pub struct StreamOptions {
    /// Layers downloaded at the same time (at least 1).
    pub concurrency: usize,
    /// How layers are applied.
    pub unpack: UnpackOptions,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            concurrency: DEFAULT_CONCURRENCY,
            unpack: UnpackOptions::default(),
        }
    }
}

/// A pulled and unpacked image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// What was pulled (every layer blob is in the store).
    pub pulled: PulledImage,
    /// The read-only image root, `<store>/rootfs/<manifest hex>`.
    pub rootfs: PathBuf,
}

/// Pulls `image` into `store` and unpacks it to `<store>/rootfs/<manifest hex>` in one
/// stream (see the module documentation). An image whose root is already complete is only
/// checked against the store ([`pull::pull`]), as a second boot needs.
pub fn pull_and_unpack(
    store: &Store,
    client: &RegistryClient,
    image: &ImageRef,
    options: StreamOptions,
) -> Result<Unpacked, StreamError> {
    let mut downloaded = 0u64;
    let resolved = pull::resolve(store, client, image, &mut downloaded)?;
    let dest = unpack::root_path(store, &resolved.manifest_digest);
    if dest.is_dir() {
        let pulled = pull::pull(store, client, image)?;
        return Ok(Unpacked {
            pulled,
            rootfs: dest,
        });
    }
    let (jobs, layers) = plan(store, &resolved)?;
    let root = RootBuilder::begin(store, &resolved.manifest_digest)?;
    let ctx = Ctx {
        client,
        image,
        jobs,
        next: AtomicUsize::new(0),
        abort: AtomicBool::new(false),
    };
    let result = std::thread::scope(|scope| run(scope, &ctx, &layers, root.path(), options))
        .and_then(|()| commit(store, &ctx, root));
    let rootfs = match result {
        Ok(rootfs) => rootfs,
        Err(e) => {
            for job in &ctx.jobs {
                if let Source::Download { tmp, .. } = &job.source {
                    let _ = fs::remove_file(tmp);
                }
            }
            return Err(e);
        }
    };
    for job in &ctx.jobs {
        if let Some(Outcome::Verified(bytes)) = job.lock().outcome {
            downloaded += bytes;
        }
    }
    let pulled = PulledImage {
        pinned: image.digest,
        manifest: resolved.manifest_digest,
        config_digest: resolved.manifest.config.digest,
        layers: layers
            .iter()
            .map(|l| PulledLayer {
                digest: l.digest,
                size: l.size,
                compression: l.compression,
                diff_id: l.diff_id,
                path: store.blob_path(&l.digest),
            })
            .collect(),
        config: resolved.config,
        downloaded_bytes: downloaded,
    };
    Ok(Unpacked { pulled, rootfs })
}

/// Where a layer's compressed bytes come from.
#[derive(Debug)]
enum Source {
    /// Already in the store (its digests are checked while it is unpacked).
    Stored(PathBuf),
    /// Downloaded into `tmp`.
    Download { desc: Descriptor, tmp: PathBuf },
}

/// How a download ended.
#[derive(Debug)]
enum Outcome {
    /// Size and digest verified; bytes received.
    Verified(u64),
    /// It failed.
    Failed(PullError),
    /// It stopped because the pull failed elsewhere.
    Aborted,
}

#[derive(Debug, Default)]
struct Progress {
    /// The layer file (written by the fetch thread, read with `pread` by the decode thread).
    file: Option<Arc<File>>,
    /// Bytes of `file` that are written.
    written: u64,
    /// Set once, when the download ended.
    outcome: Option<Outcome>,
}

/// One distinct layer blob.
#[derive(Debug)]
struct Job {
    source: Source,
    progress: Mutex<Progress>,
    changed: Condvar,
}

impl Job {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, Progress>) -> MutexGuard<'a, Progress> {
        self.changed
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the download ended (it always does: nothing it waits on depends on the
    /// unpacker) and takes a failure out of it.
    fn failure(&self) -> Option<PullError> {
        let mut p = self.lock();
        while p.outcome.is_none() {
            p = self.wait(p);
        }
        match p.outcome.take() {
            Some(Outcome::Failed(e)) => {
                p.outcome = Some(Outcome::Aborted);
                Some(e)
            }
            other => {
                p.outcome = other;
                None
            }
        }
    }
}

/// One layer of the manifest.
#[derive(Debug)]
struct Layer {
    digest: Sha256Digest,
    size: u64,
    compression: Compression,
    diff_id: Sha256Digest,
    /// Index into the jobs (a blob listed twice is fetched once).
    job: usize,
}

#[derive(Debug)]
struct Ctx<'a> {
    client: &'a RegistryClient,
    image: &'a ImageRef,
    jobs: Vec<Job>,
    /// Next job a fetch thread takes (in layer order).
    next: AtomicUsize,
    abort: AtomicBool,
}

impl Ctx<'_> {
    fn aborted(&self) -> bool {
        self.abort.load(Ordering::SeqCst)
    }

    /// Stops every thread: downloads at their next chunk, readers at once.
    fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
        for job in &self.jobs {
            // Taking the lock orders the flag before any reader's next check-then-wait.
            let _guard = job.lock();
            job.changed.notify_all();
        }
    }
}

fn plan(store: &Store, resolved: &Resolved) -> Result<(Vec<Job>, Vec<Layer>), StreamError> {
    let mut jobs: Vec<Job> = Vec::new();
    let mut layers = Vec::with_capacity(resolved.manifest.layers.len());
    for ((desc, compression), diff_id) in resolved
        .manifest
        .layers
        .iter()
        .zip(&resolved.config.diff_ids)
    {
        let existing = jobs.iter().position(|j| match &j.source {
            Source::Stored(path) => *path == store.blob_path(&desc.digest),
            Source::Download { desc: d, .. } => d.digest == desc.digest,
        });
        let job = match existing {
            Some(job) => job,
            None => {
                let mut progress = Progress::default();
                let source = if store.has_layer(&desc.digest, desc.size) {
                    let path = store.blob_path(&desc.digest);
                    let file = File::open(&path).map_err(|source| UnpackError::ReadLayer {
                        layer: desc.digest,
                        source,
                    })?;
                    progress.file = Some(Arc::new(file));
                    progress.written = desc.size;
                    progress.outcome = Some(Outcome::Verified(0));
                    Source::Stored(path)
                } else {
                    Source::Download {
                        desc: desc.clone(),
                        tmp: store.tmp_path(&desc.digest),
                    }
                };
                jobs.push(Job {
                    source,
                    progress: Mutex::new(progress),
                    changed: Condvar::new(),
                });
                jobs.len() - 1
            }
        };
        layers.push(Layer {
            digest: desc.digest,
            size: desc.size,
            compression: *compression,
            diff_id: *diff_id,
            job,
        });
    }
    Ok((jobs, layers))
}

/// Starts the fetch and decode threads, applies every layer, stops and joins the threads.
fn run<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    ctx: &'env Ctx<'env>,
    layers: &'env [Layer],
    root: &Path,
    options: StreamOptions,
) -> Result<(), StreamError> {
    let downloads = ctx
        .jobs
        .iter()
        .filter(|j| matches!(j.source, Source::Download { .. }))
        .count();
    let mut threads = Vec::new();
    for _ in 0..options.concurrency.max(1).min(downloads) {
        let spawned = std::thread::Builder::new()
            .name("pull-fetch".into())
            .spawn_scoped(scope, move || fetch_jobs(ctx));
        match spawned {
            Ok(handle) => threads.push(("fetch", handle)),
            Err(source) => {
                ctx.abort();
                return Err(StreamError::SpawnThread {
                    what: "fetch",
                    source,
                });
            }
        }
    }
    let (data_tx, data_rx) = sync_channel(CHUNKS_IN_FLIGHT + 1);
    let (free_tx, free_rx) = channel();
    for _ in 0..CHUNKS_IN_FLIGHT {
        let _ = free_tx.send(Vec::with_capacity(CHUNK));
    }
    let spawned = std::thread::Builder::new()
        .name("pull-decode".into())
        .spawn_scoped(scope, move || {
            decode_layers(ctx, layers, &data_tx, &free_rx)
        });
    match spawned {
        Ok(handle) => threads.push(("decode", handle)),
        Err(source) => {
            ctx.abort();
            return Err(StreamError::SpawnThread {
                what: "decode",
                source,
            });
        }
    }
    let applied = apply_layers(ctx, layers, root, options.unpack, data_rx, free_tx);
    if applied.is_err() {
        ctx.abort();
    }
    let mut joined = Ok(());
    for (what, handle) in threads {
        if handle.join().is_err() {
            ctx.abort();
            joined = Err(StreamError::JoinThread { what });
        }
    }
    applied.and(joined)
}

/// A fetch thread: downloads jobs in layer order until none is left or the pull failed.
fn fetch_jobs(ctx: &Ctx<'_>) {
    loop {
        if ctx.aborted() {
            return;
        }
        let next = ctx.next.fetch_add(1, Ordering::SeqCst);
        let Some(job) = ctx
            .jobs
            .iter()
            .filter(|j| matches!(j.source, Source::Download { .. }))
            .nth(next)
        else {
            return;
        };
        let Source::Download { desc, tmp } = &job.source else {
            return;
        };
        let outcome = match download(ctx, job, desc, tmp) {
            Ok(Some(bytes)) => Outcome::Verified(bytes),
            Ok(None) => Outcome::Aborted,
            Err(e) => Outcome::Failed(e),
        };
        job.lock().outcome = Some(outcome);
        job.changed.notify_all();
    }
}

/// Streams one layer into `tmp`, publishing each chunk; `Ok(None)` when stopped.
fn download(
    ctx: &Ctx<'_>,
    job: &Job,
    desc: &Descriptor,
    tmp: &Path,
) -> Result<Option<u64>, PullError> {
    let fetched = ctx
        .client
        .fetch(ctx.image, "blobs", &desc.digest, None)
        .map_err(|source| PullError::Fetch {
            what: "layer",
            digest: desc.digest,
            source,
        })?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .map_err(write_err(tmp))?;
    let file = Arc::new(file);
    job.lock().file = Some(Arc::clone(&file));
    let mut body = fetched.into_reader();
    let mut hasher = HashWriter::default();
    let mut buf = vec![0u8; DOWNLOAD_BUFFER];
    let mut total = 0u64;
    loop {
        if ctx.aborted() {
            return Ok(None);
        }
        let Some(n) = crate::pull::read_blob_chunk(&mut body, &mut buf, desc, &mut total)? else {
            break;
        };
        let chunk = &buf[..n];
        (&*file).write_all(chunk).map_err(write_err(tmp))?;
        hasher.write_all(chunk).map_err(write_err(tmp))?;
        job.lock().written = total;
        job.changed.notify_all();
    }
    check_size(&desc.digest, desc.size, total)?;
    let actual = hasher.digest();
    if actual != desc.digest {
        return Err(PullError::BlobDigestMismatch {
            expected: desc.digest,
            actual,
        });
    }
    Ok(Some(total))
}

/// Reads a layer file while it is being downloaded: blocks at the written end until more
/// bytes arrive; the end of a verified download is the end of the stream; a failed or
/// stopped download is an error.
struct JobReader<'a> {
    ctx: &'a Ctx<'a>,
    job: &'a Job,
    offset: u64,
}

impl Read for JobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let (file, available) = {
            let mut p = self.job.lock();
            loop {
                if self.ctx.aborted() {
                    return Err(io::Error::other("pull stopped"));
                }
                if p.written > self.offset {
                    let file = p
                        .file
                        .clone()
                        .ok_or_else(|| io::Error::other("layer file missing"))?;
                    break (file, p.written - self.offset);
                }
                match p.outcome {
                    Some(Outcome::Verified(_)) => return Ok(0),
                    Some(_) => return Err(io::Error::other("layer download failed")),
                    None => p = self.job.wait(p),
                }
            }
        };
        let want = usize::try_from(available).map_or(buf.len(), |a| a.min(buf.len()));
        let n = file.read_at(&mut buf[..want], self.offset)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.offset += n as u64;
        Ok(n)
    }
}

/// Hashes what is read through it into a shared hasher.
struct HashingReader<'a, R> {
    inner: R,
    hasher: &'a RefCell<Sha256>,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.borrow_mut().update(&buf[..n]);
        Ok(n)
    }
}

/// What the decode thread hands the applier.
#[derive(Debug)]
enum Message {
    /// A piece of the current layer's tar stream.
    Data(Vec<u8>),
    /// The current layer ended: digests of the compressed bytes read and of the tar stream.
    End {
        compressed: Sha256Digest,
        uncompressed: Sha256Digest,
    },
    /// Reading or decompressing the current layer failed; nothing follows.
    Failed(io::Error),
}

/// The decode thread: every layer in order, until the end or until the applier is gone.
fn decode_layers(
    ctx: &Ctx<'_>,
    layers: &[Layer],
    data: &SyncSender<Message>,
    free: &Receiver<Vec<u8>>,
) {
    for layer in layers {
        let Some(job) = ctx.jobs.get(layer.job) else {
            let _ = data.send(Message::Failed(io::Error::other("no job for layer")));
            return;
        };
        let reader = JobReader {
            ctx,
            job,
            offset: 0,
        };
        let message = match decode_layer(reader, layer.compression, data, free) {
            Ok(Some((compressed, uncompressed))) => Message::End {
                compressed,
                uncompressed,
            },
            Ok(None) => return,
            Err(e) => Message::Failed(e),
        };
        let failed = matches!(message, Message::Failed(_));
        if data.send(message).is_err() || failed {
            return;
        }
    }
}

/// Decodes one layer into buffers sent to the applier; `Ok(None)` when the applier is gone.
fn decode_layer(
    reader: JobReader<'_>,
    compression: Compression,
    data: &SyncSender<Message>,
    free: &Receiver<Vec<u8>>,
) -> io::Result<Option<(Sha256Digest, Sha256Digest)>> {
    let compressed = RefCell::new(Sha256::new());
    let raw = BufReader::with_capacity(
        READ_BUFFER,
        HashingReader {
            inner: reader,
            hasher: &compressed,
        },
    );
    let mut decoded: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(raw),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(raw)?),
    };
    let mut uncompressed = Sha256::new();
    loop {
        let Ok(mut buf) = free.recv() else {
            return Ok(None);
        };
        buf.resize(CHUNK, 0);
        let mut filled = 0;
        while filled < CHUNK {
            match decoded.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        uncompressed.update(&buf);
        if filled > 0 && data.send(Message::Data(buf)).is_err() {
            return Ok(None);
        }
        if filled < CHUNK {
            break;
        }
    }
    drop(decoded);
    Ok(Some((
        Sha256Digest(compressed.into_inner().finalize().into()),
        Sha256Digest(uncompressed.finalize().into()),
    )))
}

/// The applier's view of one layer's tar stream.
struct ChannelReader<'a> {
    data: &'a Receiver<Message>,
    free: &'a Sender<Vec<u8>>,
    current: Vec<u8>,
    position: usize,
    end: Option<(Sha256Digest, Sha256Digest)>,
    failure: Option<io::Error>,
}

impl Read for ChannelReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position == self.current.len() {
            if self.end.is_some() {
                return Ok(0);
            }
            if self.failure.is_some() {
                return Err(io::Error::other("layer stream failed"));
            }
            match self.data.recv() {
                Ok(Message::Data(next)) => {
                    let used = std::mem::replace(&mut self.current, next);
                    let _ = self.free.send(used);
                    self.position = 0;
                }
                Ok(Message::End {
                    compressed,
                    uncompressed,
                }) => self.end = Some((compressed, uncompressed)),
                Ok(Message::Failed(e)) => self.failure = Some(e),
                Err(_) => return Err(io::Error::other("decode thread stopped")),
            }
        }
        let n = buf.len().min(self.current.len() - self.position);
        buf[..n].copy_from_slice(&self.current[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

impl Drop for ChannelReader<'_> {
    fn drop(&mut self) {
        let used = std::mem::take(&mut self.current);
        if used.capacity() > 0 {
            let _ = self.free.send(used);
        }
    }
}

/// Applies every layer in order onto `root`, verifying each one's digests.
fn apply_layers(
    ctx: &Ctx<'_>,
    layers: &[Layer],
    root: &Path,
    options: UnpackOptions,
    data: Receiver<Message>,
    free: Sender<Vec<u8>>,
) -> Result<(), StreamError> {
    for layer in layers {
        let mut reader = ChannelReader {
            data: &data,
            free: &free,
            current: Vec::new(),
            position: 0,
            end: None,
            failure: None,
        };
        let applied = unpack::apply_layer_stream(root, layer.digest, &mut reader, options);
        let end = reader.end.take();
        let failure = reader.failure.take();
        drop(reader);
        match (applied, end) {
            (Ok(()), Some((compressed, uncompressed))) => {
                if compressed != layer.digest {
                    return Err(UnpackError::LayerDigestMismatch {
                        layer: layer.digest,
                        actual: compressed,
                    }
                    .into());
                }
                if uncompressed != layer.diff_id {
                    return Err(PullError::DiffIdMismatch {
                        layer: layer.digest,
                        expected: layer.diff_id,
                        actual: uncompressed,
                    }
                    .into());
                }
            }
            (applied, _) => return Err(explain_failure(ctx, layer, applied.err(), failure)),
        }
    }
    Ok(())
}

/// The error to report for a layer that could not be applied: the download's own failure
/// (digest, size, transfer) first, then a corrupt stored blob, then the decode error, then
/// the apply error.
fn explain_failure(
    ctx: &Ctx<'_>,
    layer: &Layer,
    applied: Option<UnpackError>,
    decoded: Option<io::Error>,
) -> StreamError {
    let Some(job) = ctx.jobs.get(layer.job) else {
        return StreamError::JoinThread { what: "decode" };
    };
    match &job.source {
        Source::Download { .. } => {
            if let Some(e) = job.failure() {
                return e.into();
            }
        }
        Source::Stored(path) => {
            let mut hasher = HashWriter::default();
            let actual = File::open(path)
                .and_then(|mut f| io::copy(&mut f, &mut hasher))
                .map(|_| hasher.digest());
            if let Ok(actual) = actual
                && actual != layer.digest
            {
                return UnpackError::LayerDigestMismatch {
                    layer: layer.digest,
                    actual,
                }
                .into();
            }
        }
    }
    match (decoded, applied) {
        (Some(source), _) => PullError::Decompress {
            layer: layer.digest,
            source,
        }
        .into(),
        (None, Some(e)) => e.into(),
        (None, None) => StreamError::JoinThread { what: "decode" },
    }
}

/// Makes the verified blobs and the root durable, then visible: sync, blobs into `blobs/`,
/// then the root under its final name (so a visible root always has its blobs).
fn commit(store: &Store, ctx: &Ctx<'_>, root: RootBuilder) -> Result<PathBuf, StreamError> {
    let mut verified = Vec::new();
    for job in &ctx.jobs {
        if let Source::Download { desc, tmp } = &job.source {
            let p = job.lock();
            let (Some(Outcome::Verified(_)), Some(file)) = (&p.outcome, &p.file) else {
                return Err(StreamError::JoinThread { what: "fetch" });
            };
            file.sync_all().map_err(write_err(tmp))?;
            verified.push((tmp.as_path(), &desc.digest));
        }
    }
    root.sync()?;
    store.commit_synced(&verified)?;
    Ok(root.commit()?)
}
