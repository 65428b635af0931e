//! Test harness: a real Debian `docker-registry` on loopback, an image builder and a pusher
//! speaking the registry HTTP API.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    unreachable_pub
)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cvm_workload::digest::Sha256Digest;
use cvm_workload::oci::media;

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A registry process on 127.0.0.1:<free port>, killed on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
    agent: ureq::Agent,
}

impl Registry {
    /// Starts a registry, or returns `None` (with a message) when the binary is absent.
    pub fn start() -> Option<Self> {
        if !Path::new(REGISTRY_BIN).exists() {
            eprintln!(
                "SKIP: {REGISTRY_BIN} is not installed (apt-get install docker-registry); registry tests skipped"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let addr = format!("127.0.0.1:{port}");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error, accesslog: {{disabled: true}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: {addr}, secret: test-only-not-secret}}\n",
                data.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let reg = Self {
            child,
            addr,
            dir,
            agent,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = reg.agent.get(&format!("http://{}/v2/", reg.addr)).call()
                && r.status().as_u16() == 200
            {
                break;
            }
            assert!(Instant::now() < deadline, "registry did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(reg)
    }

    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> Sha256Digest {
        let digest = Sha256Digest::of(bytes);
        let r = self
            .agent
            .post(&format!("http://{}/v2/{repo}/blobs/uploads/", self.addr))
            .send_empty()
            .unwrap();
        assert_eq!(r.status().as_u16(), 202, "start upload");
        let location = r
            .headers()
            .get("location")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let base = if location.starts_with("http") {
            location
        } else {
            format!("http://{}{location}", self.addr)
        };
        let sep = if base.contains('?') { '&' } else { '?' };
        let r = self
            .agent
            .put(&format!("{base}{sep}digest={digest}"))
            .header("Content-Type", "application/octet-stream")
            .send(bytes)
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "finish upload");
        digest
    }

    /// Pushes a blob from a file by streaming it.
    pub fn push_blob_file(&self, repo: &str, path: &Path, digest: Sha256Digest) {
        let r = self
            .agent
            .post(&format!("http://{}/v2/{repo}/blobs/uploads/", self.addr))
            .send_empty()
            .unwrap();
        let location = r
            .headers()
            .get("location")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let base = if location.starts_with("http") {
            location
        } else {
            format!("http://{}{location}", self.addr)
        };
        let sep = if base.contains('?') { '&' } else { '?' };
        let len = std::fs::metadata(path).unwrap().len();
        let file = std::fs::File::open(path).unwrap();
        let r = self
            .agent
            .put(&format!("{base}{sep}digest={digest}"))
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", &len.to_string())
            .send(ureq::SendBody::from_reader(&mut std::io::BufReader::new(
                file,
            )))
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "finish upload");
    }

    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Sha256Digest {
        let mut r = self
            .agent
            .put(&format!(
                "http://{}/v2/{repo}/manifests/{reference}",
                self.addr
            ))
            .header("Content-Type", media_type)
            .send(bytes)
            .unwrap();
        let status = r.status().as_u16();
        let body = r.body_mut().read_to_string().unwrap_or_default();
        assert_eq!(status, 201, "push manifest: {body}");
        Sha256Digest::of(bytes)
    }

    /// Path of a blob's data file inside the registry's storage (for tampering).
    pub fn blob_data(&self, digest: &Sha256Digest) -> PathBuf {
        let hex = digest.hex();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(&hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The busybox binary from Debian's busybox-static (cached by the QEMU harness), or a
/// stand-in when it is not there (the host tests never execute it).
pub fn busybox() -> Vec<u8> {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/qemu-artifacts");
    if let Ok(entries) = std::fs::read_dir(&cache) {
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with("busybox-static_")
                && let Ok(b) = std::fs::read(e.path().join("root/bin/busybox"))
            {
                return b;
            }
        }
    }
    if let Ok(b) = std::fs::read("/bin/busybox") {
        return b;
    }
    eprintln!("note: busybox-static not cached; using a synthetic binary stand-in");
    (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// An in-memory tar layer.
pub struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

impl Layer {
    pub fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, path: &str, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        let _ = path;
        h
    }

    pub fn dir(mut self, path: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, path, 0o755, 0);
        self.builder
            .append_data(&mut h, path, std::io::empty())
            .unwrap();
        self
    }

    pub fn file(mut self, path: &str, mode: u32, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, path, mode, data.len() as u64);
        self.builder.append_data(&mut h, path, data).unwrap();
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, path, 0o777, 0);
        self.builder.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Link, path, 0o644, 0);
        self.builder.append_link(&mut h, path, target).unwrap();
        self
    }

    /// Appends an entry with a raw name, bypassing the tar crate's path checks.
    pub fn raw(
        mut self,
        kind: tar::EntryType,
        name: &[u8],
        link: Option<&[u8]>,
        data: &[u8],
    ) -> Self {
        let mut h = Self::header(kind, "", 0o644, data.len() as u64);
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name);
            if let Some(link) = link {
                gnu.linkname[..link.len()].copy_from_slice(link);
            }
        }
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
        self
    }

    pub fn tar(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

/// A layer as pushed: compressed bytes, media type, diff_id.
pub struct BuiltLayer {
    pub blob: Vec<u8>,
    pub media_type: &'static str,
    pub diff_id: Sha256Digest,
}

pub fn gzip_layer(tar: &[u8]) -> BuiltLayer {
    BuiltLayer {
        blob: gzip(tar),
        media_type: media::OCI_LAYER_GZIP,
        diff_id: Sha256Digest::of(tar),
    }
}

pub fn zstd_layer(tar: &[u8]) -> BuiltLayer {
    BuiltLayer {
        blob: zstd(tar),
        media_type: media::OCI_LAYER_ZSTD,
        diff_id: Sha256Digest::of(tar),
    }
}

pub fn config_json(arch: &str, diff_ids: &[Sha256Digest], run: &str) -> Vec<u8> {
    let ids: Vec<String> = diff_ids.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        r#"{{"architecture":"{arch}","os":"linux","config":{run},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        ids.join(",")
    )
    .into_bytes()
}

pub fn manifest_json(
    config: (&Sha256Digest, usize),
    layers: &[(Sha256Digest, usize, &str)],
) -> Vec<u8> {
    let l: Vec<String> = layers
        .iter()
        .map(|(d, s, m)| format!(r#"{{"mediaType":"{m}","digest":"{d}","size":{s}}}"#))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{}","size":{}}},"layers":[{}]}}"#,
        media::OCI_MANIFEST,
        media::OCI_CONFIG,
        config.0,
        config.1,
        l.join(",")
    )
    .into_bytes()
}

pub fn index_json(entries: &[(Sha256Digest, usize, &str)]) -> Vec<u8> {
    let e: Vec<String> = entries
        .iter()
        .map(|(d, s, arch)| {
            format!(
                r#"{{"mediaType":"{}","digest":"{d}","size":{s},"platform":{{"architecture":"{arch}","os":"linux"}}}}"#,
                media::OCI_MANIFEST
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{}]}}"#,
        media::OCI_INDEX,
        e.join(",")
    )
    .into_bytes()
}

/// Pushes layers + config + manifest; returns the manifest digest.
pub fn push_image(
    reg: &Registry,
    repo: &str,
    arch: &str,
    layers: &[BuiltLayer],
    run: &str,
) -> (Sha256Digest, usize) {
    let mut descs = Vec::new();
    for l in layers {
        let d = reg.push_blob(repo, &l.blob);
        descs.push((d, l.blob.len(), l.media_type));
    }
    let diff_ids: Vec<Sha256Digest> = layers.iter().map(|l| l.diff_id).collect();
    let config = config_json(arch, &diff_ids, run);
    let cd = reg.push_blob(repo, &config);
    let manifest = manifest_json((&cd, config.len()), &descs);
    let md = reg.push_manifest(
        repo,
        &format!("{arch}-{}", &Sha256Digest::of(&manifest).hex()[..8]),
        media::OCI_MANIFEST,
        &manifest,
    );
    (md, manifest.len())
}

pub fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}

/// A minimal in-process registry: serves fixed paths, can fail the first N requests with 503
/// and can demand a bearer token (fetched from its own `/token` with basic auth).
pub struct FakeRegistry {
    pub addr: String,
    pub requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

pub struct FakeConfig {
    pub routes: std::collections::BTreeMap<String, (String, Vec<u8>)>,
    pub fail_first: usize,
    /// (basic credentials "user:pass" base64, token)
    pub bearer: Option<(String, String)>,
}

impl FakeRegistry {
    pub fn start(config: FakeConfig) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        listener.set_nonblocking(true).unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (req2, stop2, addr2) = (requests.clone(), stop.clone(), addr.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let (mut conn, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                };
                conn.set_nonblocking(false).unwrap();
                let n = req2.fetch_add(1, Ordering::SeqCst);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let auth = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("authorization")
                            .then(|| v.trim().to_owned())
                    })
                    .unwrap_or_default();
                let reply = |status: &str, headers: &str, body: &[u8]| {
                    let mut out = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
                        body.len()
                    )
                    .into_bytes();
                    out.extend_from_slice(body);
                    out
                };
                let response = if n < config.fail_first {
                    reply("503 Service Unavailable", "", b"")
                } else if let (Some((basic, token)), true) =
                    (&config.bearer, path.starts_with("/token"))
                {
                    if auth == format!("Basic {basic}") {
                        reply(
                            "200 OK",
                            "Content-Type: application/json\r\n",
                            format!("{{\"token\":\"{token}\"}}").as_bytes(),
                        )
                    } else {
                        reply("401 Unauthorized", "", b"")
                    }
                } else if config
                    .bearer
                    .as_ref()
                    .is_some_and(|(_, t)| auth != format!("Bearer {t}"))
                {
                    reply(
                        "401 Unauthorized",
                        &format!(
                            "WWW-Authenticate: Bearer realm=\"http://{addr2}/token\",service=\"fake\"\r\n"
                        ),
                        b"",
                    )
                } else if let Some((ct, body)) = config.routes.get(&path) {
                    reply("200 OK", &format!("Content-Type: {ct}\r\n"), body)
                } else {
                    reply(
                        "404 Not Found",
                        "",
                        b"{\"errors\":[{\"code\":\"NOT_FOUND\"}]}",
                    )
                };
                let _ = conn.write_all(&response);
            }
        });
        Self {
            addr,
            requests,
            stop,
        }
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Routes for a one-layer image in repository `repo`; returns (routes, manifest digest).
pub fn fake_image(
    repo: &str,
) -> (
    std::collections::BTreeMap<String, (String, Vec<u8>)>,
    Sha256Digest,
) {
    let tar = Layer::new().file("hello", 0o644, b"world").tar();
    let layer = gzip_layer(&tar);
    let ld = Sha256Digest::of(&layer.blob);
    let config = config_json("amd64", &[layer.diff_id], "{}");
    let cd = Sha256Digest::of(&config);
    let manifest = manifest_json(
        (&cd, config.len()),
        &[(ld, layer.blob.len(), media::OCI_LAYER_GZIP)],
    );
    let md = Sha256Digest::of(&manifest);
    let mut routes = std::collections::BTreeMap::new();
    routes.insert(
        format!("/v2/{repo}/manifests/{md}"),
        (media::OCI_MANIFEST.to_owned(), manifest),
    );
    routes.insert(
        format!("/v2/{repo}/blobs/{cd}"),
        ("application/octet-stream".to_owned(), config),
    );
    routes.insert(
        format!("/v2/{repo}/blobs/{ld}"),
        ("application/octet-stream".to_owned(), layer.blob),
    );
    (routes, md)
}
