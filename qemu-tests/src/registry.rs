//! A real registry for the workload tests: Debian's `docker-registry` (distribution v2) on host
//! loopback, which the guest reaches as `10.0.2.2:<port>` through QEMU user networking, a
//! small pusher speaking the registry HTTP API over plain `TcpStream`s, and an image builder
//! (uncompressed ustar layers) around the pinned busybox-static binary.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The registry binary (Debian package `docker-registry`).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// How the guest reaches host loopback under QEMU user networking.
pub const GUEST_HOST: &str = "10.0.2.2";

/// Errors of the registry helpers.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{REGISTRY_BIN} is not installed (apt-get install docker-registry)")]
    Missing,
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("registry did not answer on {addr} within 20 s")]
    NotUp { addr: String },
    #[error("{what}: HTTP {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("malformed HTTP response to {what}")]
    Malformed { what: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RegistryError {
    let what = what.into();
    move |source| RegistryError::Io { what, source }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A `docker-registry` process storing under `dir`, killed on drop. Restart it on the same
/// directory and port with [`Registry::start_at`].
#[derive(Debug)]
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    /// The port.
    pub port: u16,
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16, RegistryError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("bind a free port"))?;
    Ok(l.local_addr().map_err(io("local address"))?.port())
}

impl Registry {
    /// Starts a registry on 127.0.0.1:`port` with storage under `dir` and waits until `/v2/`
    /// answers 200.
    pub fn start_at(dir: &Path, port: u16) -> Result<Self, RegistryError> {
        if !Path::new(REGISTRY_BIN).exists() {
            return Err(RegistryError::Missing);
        }
        let addr = format!("127.0.0.1:{port}");
        let data = dir.join("data");
        std::fs::create_dir_all(&data).map_err(io(format!("create {}", data.display())))?;
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error, accesslog: {{disabled: true}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: {addr}, secret: test-only-not-secret}}\n",
                data.display()
            ),
        )
        .map_err(io("write the registry config"))?;
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join("registry.log"))
            .map_err(io("open the registry log"))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("clone the log fd"))?)
            .stderr(log)
            .spawn()
            .map_err(io(format!("spawn {REGISTRY_BIN}")))?;
        let reg = Self { child, addr, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _, _)) = reg.request("GET", "/v2/", None, &[]) {
                return Ok(reg);
            }
            if Instant::now() > deadline {
                return Err(RegistryError::NotUp {
                    addr: reg.addr.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The image reference prefix the guest uses: `10.0.2.2:<port>/<repo>`.
    pub fn guest_repo(&self, repo: &str) -> String {
        format!("{GUEST_HOST}:{}/{repo}", self.port)
    }

    /// One HTTP/1.1 request (`Connection: close`); returns status, headers (lower-case
    /// names) and body.
    fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Response, RegistryError> {
        let what = format!("{method} {path}");
        let mut s = TcpStream::connect(&self.addr).map_err(io(what.clone()))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io(what.clone()))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).map_err(io(what.clone()))?;
        s.write_all(body).map_err(io(what.clone()))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(io(what.clone()))?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| RegistryError::Malformed { what: what.clone() })?;
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| RegistryError::Malformed { what: what.clone() })?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Ok((status, headers, raw[split + 4..].to_vec()))
    }

    fn expect(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
        want: u16,
    ) -> Result<Vec<(String, String)>, RegistryError> {
        let (status, headers, resp) = self.request(method, path, content_type, body)?;
        if status == want {
            Ok(headers)
        } else {
            Err(RegistryError::Status {
                what: format!("{method} {path}"),
                status,
                body: String::from_utf8_lossy(&resp).into_owned(),
            })
        }
    }

    /// Monolithic blob upload; returns the digest.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> Result<String, RegistryError> {
        let d = digest(bytes);
        let headers = self.expect(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            None,
            &[],
            202,
        )?;
        let location = headers
            .iter()
            .find(|(k, _)| k == "location")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| RegistryError::Malformed {
                what: "upload location".into(),
            })?;
        // Absolute or relative; keep the path and query only.
        let path = match location.split_once("://") {
            Some((_, rest)) => rest
                .find('/')
                .map_or("/".to_owned(), |i| rest[i..].to_owned()),
            None => location,
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        self.expect(
            "PUT",
            &format!("{path}{sep}digest={d}"),
            Some("application/octet-stream"),
            bytes,
            201,
        )?;
        Ok(d)
    }

    /// Pushes an OCI image manifest under `tag`; returns its digest.
    pub fn push_manifest(
        &self,
        repo: &str,
        tag: &str,
        manifest: &[u8],
    ) -> Result<String, RegistryError> {
        self.expect(
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            Some(OCI_MANIFEST),
            manifest,
            201,
        )?;
        Ok(digest(manifest))
    }

    /// Pushes a one-layer linux/amd64 image (uncompressed tar layer) with `config` as the
    /// image's `config` object; returns the guest reference `10.0.2.2:<port>/<repo>@sha256:…`.
    pub fn push_image(
        &self,
        repo: &str,
        layer_tar: &[u8],
        config: &serde_json::Value,
    ) -> Result<String, RegistryError> {
        let layer = self.push_blob(repo, layer_tar)?;
        let diff_id = digest(layer_tar);
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        })
        .to_string()
        .into_bytes();
        let config_digest = self.push_blob(repo, &config)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer, "size": layer_tar.len()}],
        })
        .to_string()
        .into_bytes();
        let d = self.push_manifest(repo, "test", &manifest)?;
        Ok(format!("{}@{d}", self.guest_repo(repo)))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status, headers (lower-case names) and body of one HTTP response.
type Response = (u16, Vec<(String, String)>, Vec<u8>);

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A minimal ustar writer (directories, regular files, symlinks).
#[derive(Debug, Default)]
pub struct Tar {
    out: Vec<u8>,
}

impl Tar {
    fn header(&mut self, name: &str, mode: u32, size: usize, kind: u8, link: &str) {
        let mut h = [0u8; 512];
        let put = |h: &mut [u8; 512], at: usize, len: usize, v: &[u8]| {
            let n = v.len().min(len);
            h[at..at + n].copy_from_slice(&v[..n]);
        };
        put(&mut h, 0, 100, name.as_bytes());
        put(&mut h, 100, 8, format!("{mode:07o}\0").as_bytes());
        put(&mut h, 108, 8, b"0000000\0");
        put(&mut h, 116, 8, b"0000000\0");
        put(&mut h, 124, 12, format!("{size:011o}\0").as_bytes());
        put(&mut h, 136, 12, b"00000000000\0");
        h[156] = kind;
        put(&mut h, 157, 100, link.as_bytes());
        put(&mut h, 257, 8, b"ustar\x0000");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        put(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
        self.out.extend_from_slice(&h);
    }

    /// A directory.
    pub fn dir(mut self, name: &str) -> Self {
        self.header(name, 0o755, 0, b'5', "");
        self
    }

    /// A regular file.
    pub fn file(mut self, name: &str, mode: u32, data: &[u8]) -> Self {
        self.header(name, mode, data.len(), b'0', "");
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    /// A symbolic link.
    pub fn symlink(mut self, name: &str, target: &str) -> Self {
        self.header(name, 0o777, 0, b'2', target);
        self
    }

    /// The archive (with its two end blocks).
    pub fn finish(mut self) -> Vec<u8> {
        self.out.extend(std::iter::repeat_n(0u8, 1024));
        self.out
    }
}

/// A busybox root: `/bin/busybox` (from the pinned busybox-static package) with applet links,
/// the usual empty directories, `/etc/passwd` and `/etc/group`.
pub fn busybox_layer(busybox: &Path) -> Result<Vec<u8>, RegistryError> {
    let bin = std::fs::read(busybox).map_err(io(format!("read {}", busybox.display())))?;
    let mut tar = Tar::default();
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "data", "root"] {
        tar = tar.dir(d);
    }
    tar = tar.file("bin/busybox", 0o755, &bin);
    for applet in [
        "sh", "cat", "echo", "sleep", "test", "ls", "id", "touch", "wget", "true", "false", "rm",
        "mkdir", "date", "dd", "df", "mknod",
    ] {
        tar = tar.symlink(&format!("bin/{applet}"), "busybox");
    }
    tar = tar
        .file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        .file("etc/group", 0o644, b"root:x:0:\n");
    Ok(tar.finish())
}

/// Where the registry tests keep their data under the build dir.
pub fn work_dir(name: &str) -> PathBuf {
    crate::paths::build_dir().join(format!("registry-{name}-{}", std::process::id()))
}
