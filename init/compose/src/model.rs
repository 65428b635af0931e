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
    /// Declared top-level networks by name (parsed, not yet implemented: every service shares
    /// the CVM's network).
    pub networks: BTreeMap<String, Network>,
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
    /// The compose disables the health check (`disable: true`, `test: [NONE]`), so the image
    /// config's `Healthcheck` is not used either.
    pub healthcheck_disabled: bool,
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
    /// `labels` (metadata only).
    pub labels: BTreeMap<String, String>,
    /// `hostname` (the UTS name inside the container; default: container name or service).
    pub hostname: Option<String>,
    /// `domainname` (the UTS domain name inside the container).
    pub domainname: Option<String>,
    /// `shm_size`: size of the container's `/dev/shm` in bytes (default 64 MiB).
    pub shm_size: Option<u64>,
    /// `init: true`. No reaper is injected: the container's PID 1 is its command, and the
    /// zombies it does not reap go when the container's pid namespace ends.
    pub init: bool,
    /// `links`, as extra host names of the linked services.
    pub links: Vec<Link>,
    /// `cap_add`, normalized to `CAP_*` (or `ALL`).
    pub cap_add: Vec<String>,
    /// `cap_drop`, normalized to `CAP_*` (or `ALL`).
    pub cap_drop: Vec<String>,
    /// `sysctls` (namespaced ones only).
    pub sysctls: BTreeMap<String, String>,
    /// `extra_hosts`: (name, address) lines added to the container's `/etc/hosts`.
    pub extra_hosts: Vec<(String, String)>,
    /// `read_only`: the root file system is mounted read-only.
    pub read_only: bool,
    /// `security_opt: [no-new-privileges]`.
    pub no_new_privileges: bool,
    /// `security_opt: [seccomp=unconfined]`: no seccomp filter (as Docker); without it every
    /// non-privileged container gets Docker's default profile.
    pub seccomp_unconfined: bool,
    /// `pid: host`: the container shares the CVM's pid namespace.
    pub pid_host: bool,
    /// Networks the service joins (parsed, not yet implemented).
    pub networks: Vec<ServiceNetwork>,
}

impl Service {
    /// What this service asks for that needs per-service networking, which the init does not
    /// have yet (every service shares the CVM's network): the launcher refuses the first one
    /// when it plans the container, and `cvm-measure compose check` lists them all.
    pub fn networking_gaps(&self) -> Vec<NetworkingGap> {
        let mut gaps = Vec::new();
        for port in &self.ports {
            if port.remaps() {
                gaps.push(NetworkingGap::PortRemap {
                    published: port.published,
                    target: port.port,
                });
            }
        }
        for network in &self.networks {
            if network.ipv4_address.is_some() || network.ipv6_address.is_some() {
                gaps.push(NetworkingGap::StaticAddress {
                    network: network.name.clone(),
                });
            }
        }
        for key in self.sysctls.keys().filter(|k| k.starts_with("net.")) {
            gaps.push(NetworkingGap::NetSysctl { key: key.clone() });
        }
        gaps
    }
}

/// Something a service asks for that needs per-service networking (not yet implemented).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkingGap {
    /// A port published on another host port than the container port.
    #[error(
        "port remapping needs per-service networking (not yet): {published}:{target} publishes a different port than the container listens on; publish {target}:{target} or change the service's port"
    )]
    PortRemap {
        /// Host side.
        published: u16,
        /// Container side.
        target: u16,
    },
    /// A static address on a network.
    #[error(
        "a static address on network {network} needs per-service networking (not yet): services share the CVM's network; drop ipv4_address/ipv6_address"
    )]
    StaticAddress {
        /// Network name.
        network: String,
    },
    /// A `net.*` sysctl, which would apply to the CVM's one network namespace.
    #[error(
        "sysctl {key} needs a network namespace of its own (per-service networking, not yet): services share the CVM's network"
    )]
    NetSysctl {
        /// The sysctl.
        key: String,
    },
}

/// A `links` entry: `service[:alias]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The linked service.
    pub service: String,
    /// The extra name it answers to (the service name when none is given).
    pub alias: String,
}

/// A top-level network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Network {
    /// `driver` (`bridge` when not given).
    pub driver: Option<String>,
    /// `ipam.config[].subnet` entries.
    pub subnets: Vec<String>,
    /// `internal: true`.
    pub internal: bool,
}

/// A service's membership in a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceNetwork {
    /// Network name.
    pub name: String,
    /// Extra names of the service on that network.
    pub aliases: Vec<String>,
    /// A static IPv4 address.
    pub ipv4_address: Option<String>,
    /// A static IPv6 address.
    pub ipv6_address: Option<String>,
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
        /// Mount options (`size=`, `mode=`, `uid=`, `gid=`, `noexec`, `ro`, …), validated.
        options: Vec<String>,
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

/// A published port (one per port of a range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Container port.
    pub port: u16,
    /// Host port. Only `published == port` runs today (host networking); a remap is carried
    /// here and refused when the container is planned.
    pub published: u16,
    /// Host address to publish on (`127.0.0.1:8080:80`), if given. Carried only: under host
    /// networking nothing is published, the service is reachable on the addresses it binds.
    pub host_ip: Option<String>,
    /// Protocol.
    pub protocol: Protocol,
}

impl Port {
    /// Whether the host and container ports differ.
    pub fn remaps(&self) -> bool {
        self.published != self.port
    }
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
