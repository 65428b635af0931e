//! The typed app: what a parsed compose file runs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::digest::ImageRef;

/// A parsed app.
#[derive(Debug, Clone, PartialEq)]
pub struct App {
    /// Services in start order (every service after the ones it depends on).
    pub services: Vec<Service>,
    /// Declared named volumes.
    pub volumes: BTreeSet<String>,
    /// Inline configs by name.
    pub configs: BTreeMap<String, String>,
}

impl App {
    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// One service.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Service name (also its host name in the generated /etc/hosts).
    pub name: String,
    /// Pinned image.
    pub image: ImageRef,
    /// `container_name`, if given.
    pub container_name: Option<String>,
    /// Overrides the image's Cmd.
    pub command: Option<Vec<String>>,
    /// Overrides the image's Entrypoint (and resets its Cmd).
    pub entrypoint: Option<Vec<String>>,
    /// Environment on top of the image's.
    pub environment: BTreeMap<String, String>,
    /// Mounts.
    pub volumes: Vec<VolumeMount>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Dependencies.
    pub depends_on: Vec<Dependency>,
    /// Health check (`None` = none declared or disabled).
    pub healthcheck: Option<Healthcheck>,
    /// Published ports (equal on host and container side).
    pub ports: Vec<Port>,
    /// Config files.
    pub configs: Vec<ConfigMount>,
    /// `user` (`uid[:gid]` or names resolved in the image).
    pub user: Option<String>,
    /// Absolute working directory.
    pub working_dir: Option<String>,
    /// Privileged container.
    pub privileged: bool,
    /// Device nodes.
    pub devices: Vec<DeviceMapping>,
    /// rlimits.
    pub ulimits: Vec<Ulimit>,
    /// cgroup limits and GPU reservations.
    pub resources: Resources,
    /// Signal name, e.g. `SIGTERM`.
    pub stop_signal: String,
    /// Grace period before SIGKILL.
    pub stop_grace_period: Duration,
}

/// One mount of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeMount {
    /// A named volume: a directory on the encrypted data disk.
    Named {
        /// Volume name.
        name: String,
        /// Container path.
        target: String,
        /// Read-only.
        read_only: bool,
    },
    /// A host bind (the dstack sockets, or any path when the policy allows).
    Bind {
        /// Host path.
        source: String,
        /// Container path.
        target: String,
        /// Read-only.
        read_only: bool,
    },
    /// A tmpfs.
    Tmpfs {
        /// Container path.
        target: String,
    },
}

/// Restart policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Never restart.
    No,
    /// Always restart.
    Always,
    /// Restart on a non-zero exit, at most `max_retries` times (`None` = unlimited).
    OnFailure {
        /// Limit.
        max_retries: Option<u32>,
    },
    /// Like always (no manual stop exists in the init).
    UnlessStopped,
}

/// `depends_on` conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DependencyCondition {
    /// The dependency has started.
    Started,
    /// The dependency's health check passed.
    Healthy,
    /// The dependency exited 0.
    CompletedSuccessfully,
}

/// One dependency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// Service depended on.
    pub service: String,
    /// Condition.
    pub condition: DependencyCondition,
    /// `required: false` lets the dependent start even if the dependency is missing or fails.
    pub required: bool,
}

/// Health check test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthTest {
    /// Exec argv.
    Exec(Vec<String>),
    /// Run through `/bin/sh -c`.
    Shell(String),
}

/// Health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    /// The test.
    pub test: HealthTest,
    /// Interval between checks.
    pub interval: Duration,
    /// Timeout of one check.
    pub timeout: Duration,
    /// Consecutive failures before unhealthy.
    pub retries: u32,
    /// Failures during this period do not count.
    pub start_period: Duration,
    /// Interval during the start period.
    pub start_interval: Duration,
}

/// tcp or udp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// A published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    /// Port number (host = container).
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// A config file in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMount {
    /// Top-level config name.
    pub source: String,
    /// Absolute container path.
    pub target: String,
    /// File mode.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
}

/// A device node mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMapping {
    /// Host device path.
    pub host: String,
    /// Container path.
    pub container: String,
    /// cgroup permissions (`rwm` subset).
    pub permissions: String,
}

/// An rlimit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ulimit {
    /// OCI name, e.g. `RLIMIT_NOFILE`.
    pub name: String,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// GPU request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuRequest {
    /// Every GPU the gate admitted.
    All,
    /// This many GPUs.
    Count(u32),
    /// These device ids (indices or UUIDs).
    Ids(Vec<String>),
}

/// cgroup limits and reservations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// memory.max in bytes.
    pub memory_bytes: Option<u64>,
    /// CPUs (fractional).
    pub cpus: Option<f64>,
    /// pids.max.
    pub pids: Option<u64>,
    /// NVIDIA GPU reservation.
    pub gpus: Option<GpuRequest>,
}

/// Signal names a container may be stopped with.
pub const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGUSR2", 12),
    ("SIGTERM", 15),
    ("SIGWINCH", 28),
    ("SIGPWR", 30),
];
