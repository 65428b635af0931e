//! Network namespaces as files, like `ip netns`: PID 1 creates one per service
//! (`unshare(CLONE_NEWNET)`, bind-mount `/proc/self/ns/net` onto `/run/netns/<service>`, then
//! `setns` back to its own), enters one briefly to configure its interfaces, and hands the file
//! to the runtime spec so every restart of the container joins the same namespace. PID 1 is
//! single-threaded (libcontainer needs that anyway), so `/proc/self` is the only thread.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};

const SELF_NET: &str = "/proc/self/ns/net";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("create {path}")]
    CreateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unshare the network namespace")]
    Unshare(#[source] nix::Error),
    #[error("bind-mount the new network namespace on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("enter the network namespace {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("return to PID 1's network namespace")]
    Return(#[source] nix::Error),
}

fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_owned(),
        source,
    })
}

/// An open namespace file (for `IFLA_NET_NS_FD`).
pub fn open_fd(path: &Path) -> Result<OwnedFd, NetnsError> {
    open(path).map(OwnedFd::from)
}

/// Creates a new network namespace kept alive by a bind mount on `path`; the caller stays in
/// its own namespace (also when a step fails).
pub fn create(path: &Path) -> Result<(), NetnsError> {
    let own = open(Path::new(SELF_NET))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| NetnsError::CreateFile {
            path: dir.to_owned(),
            source,
        })?;
    }
    File::create(path).map_err(|source| NetnsError::CreateFile {
        path: path.to_owned(),
        source,
    })?;
    unshare(CloneFlags::CLONE_NEWNET).map_err(NetnsError::Unshare)?;
    let bound = mount(
        Some(SELF_NET),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|source| NetnsError::Bind {
        path: path.to_owned(),
        source,
    });
    setns(&own, CloneFlags::CLONE_NEWNET).map_err(NetnsError::Return)?;
    bound
}

/// Runs `f` inside the namespace at `path`, then returns to the caller's namespace. Sockets
/// `f` opens stay in that namespace.
pub fn within<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
    let own = open(Path::new(SELF_NET))?;
    let target = open(path)?;
    setns(&target, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
        path: path.to_owned(),
        source,
    })?;
    let out = f();
    setns(&own, CloneFlags::CLONE_NEWNET).map_err(NetnsError::Return)?;
    Ok(out)
}
