//! The host side of a guest's vsock under TCG: `vhost-device-vsock` (rust-vmm, crates.io, pinned
//! [`VERSION`]), a vhost-user backend, since these machines have no `/dev/vhost-vsock`. QEMU
//! gets `vhost-user-vsock-pci` on the backend's control socket and shares guest memory with it
//! (`memory-backend-memfd,share=on`); a guest connection to host (CID 2) port P arrives as a
//! connection on the unix socket `<uds>_P` ([`crate::host_api::start_vsock`] listens there).
//!
//! `cargo xtask test` installs the binary (`cargo install --locked`) under
//! [`install_root`]; a test that needs it fails, naming that command, when it is missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The pinned crates.io version.
pub const VERSION: &str = "0.3.0";

/// Overrides the binary's path.
pub const BIN_ENV: &str = "QEMU_TESTS_VHOST_DEVICE_VSOCK";

/// The guest's context id.
pub const GUEST_CID: u32 = 3;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum VhostVsockError {
    #[error(
        "vhost-device-vsock {VERSION} not found at {path} (install it with `cargo install \
         vhost-device-vsock --locked --version {VERSION} --root {root}`, as `cargo xtask test` \
         does, or set {BIN_ENV})"
    )]
    Missing { path: PathBuf, root: PathBuf },
    #[error("start {path}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vhost-device-vsock did not create {socket} within {timeout:?}")]
    NoSocket { socket: PathBuf, timeout: Duration },
}

/// `<workspace>/target/tools/vhost-device-vsock-<VERSION>` (`cargo install --root`).
pub fn install_root() -> PathBuf {
    crate::paths::workspace_root()
        .join("target")
        .join("tools")
        .join(format!("vhost-device-vsock-{VERSION}"))
}

/// The binary: [`BIN_ENV`] or `<install_root>/bin/vhost-device-vsock`.
pub fn binary() -> PathBuf {
    std::env::var_os(BIN_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| install_root().join("bin").join("vhost-device-vsock"))
}

/// A running backend; killed on drop.
#[derive(Debug)]
pub struct VhostVsock {
    child: Child,
    socket: PathBuf,
    uds: PathBuf,
}

impl VhostVsock {
    /// Starts the backend with its control socket and its host-side socket in `dir` and waits
    /// until the control socket exists. One backend serves one QEMU: start one per boot.
    pub fn start(dir: &Path) -> Result<Self, VhostVsockError> {
        let path = binary();
        if !path.is_file() {
            return Err(VhostVsockError::Missing {
                path,
                root: install_root(),
            });
        }
        let socket = dir.join("vhost-vsock.sock");
        let uds = dir.join("vsock.uds");
        let _ = std::fs::remove_file(&socket);
        // A backend of an earlier boot in the same directory left its listening socket.
        let _ = std::fs::remove_file(&uds);
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .arg(&path)
            .arg(format!("--guest-cid={GUEST_CID}"))
            .arg("--socket")
            .arg(&socket)
            .arg("--uds-path")
            .arg(&uds)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| VhostVsockError::Spawn {
                path: path.clone(),
                source,
            })?;
        let mut backend = Self { child, socket, uds };
        let timeout = Duration::from_secs(30);
        let start = Instant::now();
        while !backend.socket.exists() {
            if start.elapsed() > timeout || backend.child.try_wait().ok().flatten().is_some() {
                return Err(VhostVsockError::NoSocket {
                    socket: backend.socket.clone(),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(backend)
    }

    /// The host-side socket prefix (`--uds-path`).
    pub fn uds(&self) -> &Path {
        &self.uds
    }

    /// The QEMU arguments for a guest of `memory` (QEMU's `-m` syntax, the same as `-m`):
    /// shared guest memory and the `vhost-user-vsock-pci` device on the control socket.
    pub fn qemu_args(&self, memory: &str) -> Vec<String> {
        vec![
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={memory},share=on"),
            "-numa".into(),
            "node,memdev=mem".into(),
            "-chardev".into(),
            format!("socket,id=vs,path={}", self.socket.display()),
            "-device".into(),
            "vhost-user-vsock-pci,chardev=vs".into(),
        ]
    }
}

impl Drop for VhostVsock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
