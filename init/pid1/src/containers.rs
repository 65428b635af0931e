//! The one libcontainer adapter (house style): create + start, signal, delete. Everything
//! else about workloads (compose, pull, unpack, runtime spec, supervision) is `cvm-workload`,
//! which stays libcontainer-free.
//!
//! Rules (see `init/workload/docs/libcontainer-adapter.md`): `with_systemd(false)`; never
//! `as_sibling(true)`; `cgroupsPath` absolute (the spec generator does it); cgroup2 mounted
//! first (the `mount` stage); `linux.seccomp` is applied by libcontainer's `libseccomp` feature
//! (libseccomp linked statically: `LIBSECCOMP_LINK_TYPE=static` in `.cargo/config.toml`; the
//! dynamic default links but crashes the static init at start); libcontainer forks and runs
//! Rust code in the children, so the caller must be single-threaded ([`ensure_single_threaded`]).
//! The container's init is a direct child of the caller (libcontainer's intermediate process
//! clones it with `CLONE_PARENT`), so PID 1's reaper sees its exit status.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

/// Errors of the adapter.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ContainerError {
    #[error("read runtime spec {path}")]
    ReadSpec {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse runtime spec {path}")]
    ParseSpec {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("device policy of container {id}")]
    DevicePolicy {
        id: String,
        #[source]
        source: cvm_workload::devices::DevicesError,
    },
    #[error("create the cgroup {} of container {id}", path.display())]
    CreateCgroup {
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("enforce the device rules of container {id} (cgroup-v2 eBPF device filter)")]
    DeviceFilter {
        id: String,
        #[source]
        source: init_sys::bpf::BpfError,
    },
    #[error(
        "PID 1's root is still the initramfs (rootfs): containers start only with pivot_root, which rootfs refuses"
    )]
    RootIsInitramfs,
    #[error("open /dev/null for the container's stdin")]
    OpenDevNull(#[source] std::io::Error),
    #[error("read /proc/self/status")]
    ReadStatus(#[source] std::io::Error),
    #[error(
        "the launcher has {threads} threads: libcontainer forks and runs Rust code in the child, so it must be single-threaded"
    )]
    Threaded { threads: u32 },
    #[error("create container {id}")]
    Create {
        id: String,
        #[source]
        source: libcontainer::error::LibcontainerError,
    },
    #[error("start container {id}")]
    Start {
        id: String,
        #[source]
        source: libcontainer::error::LibcontainerError,
    },
    #[error("container {id} has no init pid after start")]
    NoPid { id: String },
    #[error("exec in container {id}")]
    Exec {
        id: String,
        #[source]
        source: libcontainer::error::LibcontainerError,
    },
    #[error("load container state {id}")]
    Load {
        id: String,
        #[source]
        source: libcontainer::error::LibcontainerError,
    },
    #[error("unknown signal {name}")]
    Signal {
        name: String,
        #[source]
        source: libcontainer::signal::SignalError<String>,
    },
    #[error("signal container {id}")]
    Kill {
        id: String,
        #[source]
        source: libcontainer::error::LibcontainerError,
    },
    #[error("delete container {id}")]
    Delete {
        id: String,
        #[source]
        source: libcontainer::error::LibcontainerError,
    },
}

/// Refuses to launch from a multi-threaded process (`Threads:` of `/proc/self/status`).
pub(crate) fn ensure_single_threaded() -> Result<(), ContainerError> {
    let status = fs::read_to_string("/proc/self/status").map_err(ContainerError::ReadStatus)?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(0);
    if threads == 1 {
        Ok(())
    } else {
        Err(ContainerError::Threaded { threads })
    }
}

/// Whether `/` is the initramfs (`rootfs` in /proc/self/mountinfo). The early stage moves
/// PID 1's root to a tmpfs, so libcontainer can pivot_root(2) into a container root; from
/// rootfs it cannot (rootfs has no parent mount), and the `MS_MOVE` + chroot fallback
/// (`no_pivot`) is weaker against a container holding `CAP_SYS_CHROOT`: refused instead.
pub(crate) fn root_is_initramfs() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| root_is_rootfs(&info))
}

fn root_is_rootfs(mountinfo: &str) -> bool {
    mountinfo.lines().any(|line| {
        let mount_point = line.split(' ').nth(4);
        let fstype = line
            .split_once(" - ")
            .and_then(|(_, rest)| rest.split(' ').next());
        mount_point == Some("/") && fstype == Some("rootfs")
    })
}

/// Creates and starts container `id` from `<bundle>/config.json`; returns the pid of the
/// container's init (a direct child of the caller).
/// Where cgroup2 is mounted (the mount stage).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Creates `cgroup` under the cgroup2 root level by level, delegating every controller a level
/// has to the next (`+<controller>` into its `cgroup.subtree_control`), as libcontainer does
/// when it creates the path itself: it does not for levels that already exist, and without it
/// the container's `memory.max`, `pids.max` and `cpu.max` would be missing.
fn create_cgroup(id: &str, cgroup: &str) -> Result<PathBuf, ContainerError> {
    let mut path = PathBuf::from(CGROUP_ROOT);
    for component in cgroup.split('/').filter(|c| !c.is_empty()) {
        let controllers = fs::read_to_string(path.join("cgroup.controllers")).unwrap_or_default();
        for controller in controllers.split_whitespace() {
            // Best effort per controller, as libcontainer: one the kernel refuses to delegate
            // only fails the container that asks for its limits.
            if let Err(e) = fs::write(
                path.join("cgroup.subtree_control"),
                format!("+{controller}"),
            ) {
                log::debug!("cgroup {}: +{controller}: {e}", path.display());
            }
        }
        path.push(component);
        if !path.is_dir() {
            fs::create_dir(&path).map_err(|source| ContainerError::CreateCgroup {
                id: id.to_owned(),
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(path)
}

/// Enforces the spec's device rules before the container exists: libcontainer 0.7 without its
/// `cgroupsv2_devices` feature ignores `linux.resources.devices` on cgroup v2, so PID 1 creates
/// the container's cgroup (libcontainer then uses it) and attaches the eBPF device filter
/// generated from the rules (`cvm_workload::devices`: default deny, runc's standard character
/// devices, grants only). Any failure stops the start: a container never runs unconfined.
fn confine_devices(id: &str, spec: &serde_json::Value) -> Result<(), ContainerError> {
    let policy = |source| ContainerError::DevicePolicy {
        id: id.to_owned(),
        source,
    };
    let (rules, cgroup) = cvm_workload::devices::spec_device_policy(spec).map_err(policy)?;
    let program = cvm_workload::devices::encoded_device_filter(&rules).map_err(policy)?;
    let path = create_cgroup(id, &cgroup)?;
    let filter = |source| ContainerError::DeviceFilter {
        id: id.to_owned(),
        source,
    };
    init_sys::bpf::DeviceProgram::load(&program)
        .and_then(|prog| prog.attach(&path))
        .map_err(filter)?;
    log::debug!(
        "workloads: {id}: device filter ({} rules, {} instructions) on {}",
        rules.len(),
        program.len(),
        path.display()
    );
    Ok(())
}

pub(crate) fn create_and_start(
    state_root: &Path,
    id: &str,
    bundle: &Path,
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> Result<i32, ContainerError> {
    ensure_single_threaded()?;
    if root_is_initramfs() {
        return Err(ContainerError::RootIsInitramfs);
    }
    let path = bundle.join("config.json");
    let bytes = fs::read(&path).map_err(|source| ContainerError::ReadSpec {
        path: path.clone(),
        source,
    })?;
    let spec: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|source| ContainerError::ParseSpec {
            path: path.clone(),
            source,
        })?;
    confine_devices(id, &spec)?;
    let stdin: OwnedFd = fs::File::open("/dev/null")
        .map_err(ContainerError::OpenDevNull)?
        .into();
    let create = |source| ContainerError::Create {
        id: id.to_owned(),
        source,
    };
    let mut container = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
        .with_root_path(state_root)
        .map_err(create)?
        .with_stdin(stdin)
        .with_stdout(stdout)
        .with_stderr(stderr)
        .validate_id()
        .map_err(create)?
        .with_executor(SignalResetExecutor::default())
        .as_init(bundle)
        .with_no_pivot(false)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(create)?;
    container.start().map_err(|source| ContainerError::Start {
        id: id.to_owned(),
        source,
    })?;
    container
        .pid()
        .map(|p| p.as_raw())
        .ok_or_else(|| ContainerError::NoPid { id: id.to_owned() })
}

/// Runs `args` inside the running container `id` (health checks), output discarded; returns
/// the pid of the process (a direct child of the caller; the caller enforces the timeout).
pub(crate) fn exec(state_root: &Path, id: &str, args: Vec<String>) -> Result<i32, ContainerError> {
    ensure_single_threaded()?;
    let null = || -> Result<OwnedFd, ContainerError> {
        Ok(fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(ContainerError::OpenDevNull)?
            .into())
    };
    let exec_err = |source| ContainerError::Exec {
        id: id.to_owned(),
        source,
    };
    let pid = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
        .with_root_path(state_root)
        .map_err(exec_err)?
        .with_stdin(null()?)
        .with_stdout(null()?)
        .with_stderr(null()?)
        .with_executor(SignalResetExecutor::default())
        .as_tenant()
        .with_container_args(args)
        .with_detach(true)
        .build()
        .map_err(exec_err)?;
    Ok(pid.as_raw())
}

/// libcontainer's default executor, after giving the workload a clean signal state: PID 1
/// blocks its signals (they reach it through a signalfd) and libcontainer forks from PID 1, so
/// without this every container process would start with SIGTERM blocked and only ever stop
/// by SIGKILL after its grace period. Runs in the container's init process, just before exec.
#[derive(Clone)]
struct SignalResetExecutor(Box<dyn Executor>);

impl Default for SignalResetExecutor {
    fn default() -> Self {
        Self(libcontainer::workload::default::get_executor())
    }
}

impl Executor for SignalResetExecutor {
    fn exec(&self, spec: &libcontainer::oci_spec::runtime::Spec) -> Result<(), ExecutorError> {
        init_sys::signals::reset_inherited()
            .map_err(|e| ExecutorError::Other(format!("reset the signal mask: {e}")))?;
        self.0.exec(spec)
    }

    fn validate(
        &self,
        spec: &libcontainer::oci_spec::runtime::Spec,
    ) -> Result<(), ExecutorValidationError> {
        self.0.validate(spec)
    }
}

fn load(state_root: &Path, id: &str) -> Result<Container, ContainerError> {
    Container::load(state_root.join(id)).map_err(|source| ContainerError::Load {
        id: id.to_owned(),
        source,
    })
}

/// Sends `signal` (e.g. `SIGTERM`) to every process of container `id`.
pub(crate) fn signal(state_root: &Path, id: &str, signal: &str) -> Result<(), ContainerError> {
    let sig = Signal::try_from(signal).map_err(|source| ContainerError::Signal {
        name: signal.to_owned(),
        source,
    })?;
    load(state_root, id)?
        .kill(sig, true)
        .map_err(|source| ContainerError::Kill {
            id: id.to_owned(),
            source,
        })
}

/// Removes container `id`'s state and cgroup (after its init exited); absent state is fine.
pub(crate) fn delete(state_root: &Path, id: &str) -> Result<(), ContainerError> {
    if !state_root.join(id).exists() {
        return Ok(());
    }
    load(state_root, id)?
        .delete(true)
        .map_err(|source| ContainerError::Delete {
            id: id.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::root_is_rootfs;

    #[test]
    fn initramfs_root_is_detected_from_mountinfo() {
        let initramfs = "1 1 0:2 / / rw shared:1 - rootfs rootfs rw,size=1g\n22 1 0:21 / /proc rw - proc proc rw\n";
        assert!(root_is_rootfs(initramfs));
        let disk = "25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n30 25 0:2 / /mnt rw - rootfs rootfs rw\n";
        assert!(!root_is_rootfs(disk));
    }
}
