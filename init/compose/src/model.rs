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
    /// Declared top-level networks by name (each a bridge inside the VM).
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
    /// Service name (also its host name in the generated /etc/hosts of the services that
    /// share a network with it).
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
    /// Networks the service joins (none named: the `default` network).
    pub networks: Vec<ServiceNetwork>,
    /// `network_mode: host` (or a network with `driver: host`): the service shares the VM's
    /// network namespace instead of getting its own.
    pub network_host: bool,
}

impl Service {
    /// What this service asks for that the init's networking cannot honour: the launcher
    /// refuses the first one when it plans the container, and `cvm-measure compose check`
    /// lists them all. Per-service network namespaces (bridges, published ports with remaps,
    /// static IPv4 addresses, `net.*` sysctls) are honoured; what is left is listed here.
    pub fn networking_gaps(&self) -> Vec<NetworkingGap> {
        let mut gaps = Vec::new();
        for port in &self.ports {
            if self.network_host && port.remaps() {
                gaps.push(NetworkingGap::HostPortRemap {
                    published: port.published,
                    target: port.port,
                });
            }
            if let Some(ip) = &port.host_ip {
                let refused = match ip.parse::<std::net::Ipv4Addr>() {
                    Ok(address) => address.is_loopback(),
                    Err(_) => !matches!(ip.as_str(), "::" | "[::]"),
                };
                if refused {
                    gaps.push(NetworkingGap::HostIp { ip: ip.clone() });
                }
            }
        }
        for network in &self.networks {
            if network.ipv6_address.is_some() {
                gaps.push(NetworkingGap::Ipv6Address {
                    network: network.name.clone(),
                });
            }
        }
        if self.network_host {
            for key in self.sysctls.keys().filter(|k| k.starts_with("net.")) {
                gaps.push(NetworkingGap::NetSysctl { key: key.clone() });
            }
        }
        gaps
    }
}

/// Something a service asks for that the init's networking does not honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkingGap {
    /// A remapped port under `network_mode: host`, where there is no address to forward to.
    #[error(
        "port {published}:{target} remaps a port under network_mode: host, where the service listens on the VM's own ports; drop network_mode: host (services get their own network) or publish {target}:{target}"
    )]
    HostPortRemap {
        /// Host side.
        published: u16,
        /// Container side.
        target: u16,
    },
    /// A published port on a loopback or IPv6 host address.
    #[error(
        "ports published on host address {ip} are not supported: the VM forwards published ports from its IPv4 interface only; drop the address or use 0.0.0.0"
    )]
    HostIp {
        /// The address.
        ip: String,
    },
    /// An IPv6 address on a network (the workload networks are IPv4).
    #[error(
        "ipv6_address on network {network} is not supported: the workload networks are IPv4 only; drop ipv6_address"
    )]
    Ipv6Address {
        /// Network name.
        network: String,
    },
    /// A `net.*` sysctl under `network_mode: host`, which would change the VM's own network.
    #[error(
        "sysctl {key} under network_mode: host would change the VM's own network namespace; drop network_mode: host (the service gets a namespace of its own) or the sysctl"
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
    /// Host (VM) port, forwarded to the service's address and `port`.
    pub published: u16,
    /// Host address to publish on (`10.0.2.15:8080:80`), if given: only traffic to that VM
    /// address is forwarded (loopback and IPv6 addresses are refused, see [`NetworkingGap`]).
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
