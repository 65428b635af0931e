//! OCI runtime spec generation: image config + compose service → `config.json`.
//!
//! Pure code: the result is the spec plus the small files the launcher must write before it
//! creates the container (generated `/etc/hosts`, `/etc/hostname`, config files) and the
//! directories it must create inside the rootfs (the working directory; libcontainer does not
//! create it). The JSON is built directly and then parsed into `oci_spec::runtime::Spec`, so
//! it is checked against the types libcontainer 0.7 reads.
//!
//! Fixed choices: the network namespace PID 1 prepared for the service
//! ([`Layout::network`], see `crate::network`; none means the VM's own, `network_mode: host`),
//! new pid/ipc/uts/mount/cgroup namespaces, Docker's default capability set (all capabilities when `privileged`), Docker's
//! masked and read-only paths (none when privileged), an absolute `cgroupsPath`
//! (`<cgroup_parent>/<service>`), Docker's default seccomp profile resolved for the
//! container's capabilities ([`crate::seccomp`]; none when privileged or
//! `security_opt: [seccomp=unconfined]`, as Docker). `noNewPrivileges` is written only when
//! set: libcontainer installs the filter before it drops capabilities when the field is absent
//! (runc's order without no-new-privileges), but after, and so without the privilege to load
//! it, when the field is `false`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::compose::{App, DeviceMapping, GpuRequest, NetworkingGap, Service, VolumeMount};
use crate::oci::ImageConfig;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Neither the service nor the image gives a command.
    #[error("service {service}: no command (neither entrypoint/command nor image Entrypoint/Cmd)")]
    ResolveCommand {
        /// Service.
        service: String,
    },
    /// `user` names an unknown user or group.
    #[error("service {service}: cannot resolve user {user:?}: {reason}")]
    ResolveUser {
        /// Service.
        service: String,
        /// The user spec.
        user: String,
        /// Why.
        reason: &'static str,
    },
    /// A device the service maps is not present on the host.
    #[error("service {service}: device {path} is not present")]
    ResolveDevice {
        /// Service.
        service: String,
        /// Host path.
        path: String,
    },
    /// GPUs requested but the GPU gate admitted none, too few, or not the ones named.
    #[error(
        "service {service}: requests {wanted} but {available} GPU(s) passed attestation: refused (fail closed)"
    )]
    GrantGpu {
        /// Service.
        service: String,
        /// What it asked for (`1 GPU`, `every GPU`, `GPU(s) 0,GPU-…`).
        wanted: String,
        /// GPUs available.
        available: usize,
    },
    /// The service asks for networking the init does not honour.
    #[error("service {service}")]
    RefuseNetworking {
        /// Service.
        service: String,
        /// What it needs.
        #[source]
        gap: NetworkingGap,
    },
    /// `cap_add`/`cap_drop` names no capability the kernel has.
    #[error("service {service}: unknown capability {capability:?}")]
    ResolveCapability {
        /// Service.
        service: String,
        /// The name.
        capability: String,
    },
    /// Docker's default seccomp profile could not be resolved (a bad data update).
    #[error("service {service}: seccomp profile")]
    SeccompProfile {
        /// Service.
        service: String,
        /// Why.
        #[source]
        source: crate::seccomp::SeccompError,
    },
    /// The generated JSON is not a valid runtime spec (a bug).
    #[error("build runtime spec for {service}")]
    BuildSpec {
        /// Service.
        service: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// A device node on the host, as the launcher found it (`stat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    /// Host path, e.g. `/dev/nvidia0`.
    pub path: String,
    /// `c` or `b`.
    pub kind: char,
    /// Major number.
    pub major: i64,
    /// Minor number.
    pub minor: i64,
    /// Mode bits.
    pub mode: u32,
}

/// One GPU the GPU gate admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantedGpu {
    /// Its node (`/dev/nvidiaN`, major 195).
    pub node: HostDevice,
    /// Its UUID (`GPU-…`), which compose `device_ids` may name.
    pub uuid: Option<String>,
}

/// What a GPU container may get: the GPUs the GPU gate admitted, the control nodes and the
/// driver files (`crate::gpu`). Empty (the default) when no GPU passed attestation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuGrant {
    /// Per-GPU nodes in index order (compose index `i` is `gpus[i]`).
    pub gpus: Vec<GrantedGpu>,
    /// Shared nodes present (`crate::gpu::CONTROL_NODES`).
    pub control: Vec<HostDevice>,
    /// Read-only bind mounts of the driver's libraries and tools.
    pub mounts: Vec<crate::gpu::DriverMount>,
}

/// Host-side locations for one service.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Absolute path of this container's root filesystem (prepared by the launcher).
    pub rootfs: PathBuf,
    /// Directory holding named volumes (`<volumes>/<name>`), on the encrypted disk.
    pub volumes: PathBuf,
    /// Directory where the launcher writes this service's generated files.
    pub generated: PathBuf,
    /// The CVM's resolv.conf, bind-mounted read-only.
    pub resolv_conf: PathBuf,
    /// Parent of every container's cgroup, absolute (e.g. `/cvm`).
    pub cgroup_parent: String,
    /// Host name inside the container.
    pub hostname: String,
    /// The service's network namespace and its `/etc/hosts`; `None`: the VM's network
    /// namespace and [`service_hosts_file`].
    pub network: Option<ContainerNetwork>,
}

/// A service's network namespace, prepared by PID 1 (`crate::network`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerNetwork {
    /// The bind-mounted nsfs file (`/run/netns/<service>`) the container joins; `None`: the
    /// VM's own (`network_mode: host`).
    pub netns: Option<PathBuf>,
    /// The container's `/etc/hosts` (`crate::network::NetworkPlan::hosts_file`).
    pub hosts: String,
}

impl Layout {
    /// The standard layout: per-container state under `<run_dir>/<service>/` (`rootfs` is
    /// where the launcher mounts the overlay of the image root, `etc` holds the generated
    /// files), named volumes under `<data_dir>/volumes/`, cgroups under `/cvm/workloads`.
    pub fn standard(run_dir: &Path, data_dir: &Path, service: &str, hostname: &str) -> Self {
        let base = run_dir.join(service);
        Self {
            rootfs: base.join("rootfs"),
            volumes: data_dir.join("volumes"),
            generated: base.join("etc"),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            cgroup_parent: "/cvm/workloads".to_owned(),
            hostname: hostname.to_owned(),
            network: None,
        }
    }
}

/// A file the launcher writes before creating the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    /// Host path.
    pub path: PathBuf,
    /// Contents.
    pub contents: Vec<u8>,
    /// Mode.
    pub mode: u32,
    /// Owner uid/gid.
    pub owner: (u32, u32),
}

/// Everything needed to create one container.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    /// The runtime spec (write it as `<bundle>/config.json`).
    pub spec: oci_spec::runtime::Spec,
    /// The same spec as JSON.
    pub json: Value,
    /// Files to write first.
    pub files: Vec<GeneratedFile>,
    /// Directories to create inside the rootfs (container paths, resolved inside the root).
    pub rootfs_dirs: Vec<String>,
    /// Stop signal (service, else image `StopSignal`, else SIGTERM).
    pub stop_signal: String,
}

/// Inputs that come from the image's root filesystem.
#[derive(Debug, Clone, Default)]
pub struct ImageFiles {
    /// `/etc/passwd` of the image, if any.
    pub passwd: Option<String>,
    /// `/etc/group` of the image, if any.
    pub group: Option<String>,
}

/// `/etc/hosts` for every container of `app`: all service names (and container names,
/// host names and network aliases) on loopback, since every service shares the CVM's network.
pub fn hosts_file(app: &App) -> String {
    let mut names: Vec<&str> = Vec::new();
    for s in &app.services {
        let aliases = s.networks.iter().flat_map(|n| n.aliases.iter());
        let own = std::iter::once(&s.name)
            .chain(&s.container_name)
            .chain(&s.hostname)
            .chain(aliases);
        for name in own {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
    }
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.0.1\t{}\n",
        names.join(" ")
    )
}

/// `/etc/hosts` of one container: [`hosts_file`], then the service's `links` aliases (on
/// loopback, like the services they name) and its `extra_hosts`.
pub fn service_hosts_file(app: &App, service: &Service) -> String {
    let mut text = hosts_file(app);
    let aliases: Vec<&str> = service
        .links
        .iter()
        .map(|l| l.alias.as_str())
        .filter(|a| app.service(a).is_none())
        .collect();
    if !aliases.is_empty() {
        text.push_str(&format!("127.0.0.1\t{}\n", aliases.join(" ")));
    }
    for (name, address) in &service.extra_hosts {
        text.push_str(&format!("{address}\t{name}\n"));
    }
    text
}

/// A plan for `service` is refused when it asks for networking the init does not honour.
fn check_networking(service: &Service) -> Result<(), SpecError> {
    match service.networking_gaps().into_iter().next() {
        Some(gap) => Err(SpecError::RefuseNetworking {
            service: service.name.clone(),
            gap,
        }),
        None => Ok(()),
    }
}

/// The capability set: Docker's default (all when privileged), then `cap_add`, then
/// `cap_drop`; `ALL` in `cap_add` starts from every capability, `ALL` in `cap_drop` from none.
fn capabilities(service: &Service) -> Result<Vec<&'static str>, SpecError> {
    let resolve = |name: &str| -> Result<&'static str, SpecError> {
        ALL_CAPS
            .iter()
            .copied()
            .find(|c| *c == name)
            .ok_or_else(|| SpecError::ResolveCapability {
                service: service.name.clone(),
                capability: name.to_owned(),
            })
    };
    let all = |list: &[String]| list.iter().any(|c| c == "ALL");
    let mut caps: Vec<&'static str> = if service.privileged || all(&service.cap_add) {
        ALL_CAPS.to_vec()
    } else if all(&service.cap_drop) {
        Vec::new()
    } else {
        DEFAULT_CAPS.to_vec()
    };
    for name in service.cap_add.iter().filter(|c| *c != "ALL") {
        let cap = resolve(name)?;
        if !caps.contains(&cap) {
            caps.push(cap);
        }
    }
    if !service.privileged {
        for name in service.cap_drop.iter().filter(|c| *c != "ALL") {
            let cap = resolve(name)?;
            caps.retain(|c| *c != cap);
        }
    }
    Ok(caps)
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capabilities, less `CAP_MKNOD` (issue 22: Docker relies on its device
/// cgroup alone; here a container gets it only through `cap_add: [MKNOD]` or `privileged`,
/// and the eBPF device filter still refuses `mknod` of anything not granted).
pub(crate) const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn parse_id(text: &str) -> Option<u32> {
    text.parse().ok()
}

/// Looks up `name` (or a numeric id) in a passwd/group style file; returns (id, gid field).
fn lookup(file: Option<&str>, name: &str) -> Option<(u32, Option<u32>)> {
    if let Some(id) = parse_id(name) {
        let gid = file.and_then(|f| {
            f.lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 3 && f[2] == name)
                .and_then(|f| parse_id(f[3]))
        });
        return Some((id, gid));
    }
    file?.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() > 2 && f[0] == name)
            .then(|| parse_id(f[2]).map(|id| (id, f.get(3).and_then(|g| parse_id(g)))))
            .flatten()
    })
}

/// Resolves `user` (`uid`, `uid:gid`, `name`, `name:group`) against the image's files.
/// Returns (uid, gid, additional gids).
pub fn resolve_user(
    service: &str,
    user: &str,
    files: &ImageFiles,
) -> Result<(u32, u32, Vec<u32>), SpecError> {
    let err = |reason| SpecError::ResolveUser {
        service: service.to_owned(),
        user: user.to_owned(),
        reason,
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if u.is_empty() {
        return Err(err("empty user"));
    }
    let (uid, passwd_gid) =
        lookup(files.passwd.as_deref(), u).ok_or_else(|| err("no such user in /etc/passwd"))?;
    let gid = match g {
        Some(g) => lookup(files.group.as_deref(), g)
            .map(|(id, _)| id)
            .ok_or_else(|| err("no such group in /etc/group"))?,
        None => passwd_gid.unwrap_or(0),
    };
    // Supplementary groups: groups listing the user by name.
    let mut extra = Vec::new();
    if let (Some(group), false) = (files.group.as_deref(), parse_id(u).is_some()) {
        for line in group.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() > 3
                && f[3].split(',').any(|m| m == u)
                && let Some(id) = parse_id(f[2])
                && id != gid
                && !extra.contains(&id)
            {
                extra.push(id);
            }
        }
    }
    Ok((uid, gid, extra))
}

fn bind(destination: &str, source: &Path, read_only: bool) -> Value {
    let mut options = vec!["rbind", "rprivate", "nosuid", "nodev"];
    if read_only {
        options.push("ro");
    }
    json!({"destination": destination, "type": "bind", "source": source, "options": options})
}

/// Refuses `service` when it requests GPUs `grant` cannot give (checked before any pull; the
/// plan checks again).
pub fn check_gpu_request(service: &Service, grant: &GpuGrant) -> Result<(), SpecError> {
    match &service.resources.gpus {
        Some(request) => choose_gpus(&service.name, request, grant).map(|_| ()),
        None => Ok(()),
    }
}

/// The GPU nodes `request` names out of `grant`; too few, or an id that is not granted,
/// refuses the service (fail closed).
fn choose_gpus<'g>(
    service: &str,
    request: &GpuRequest,
    grant: &'g GpuGrant,
) -> Result<Vec<&'g HostDevice>, SpecError> {
    let refuse = |wanted: String| SpecError::GrantGpu {
        service: service.to_owned(),
        wanted,
        available: grant.gpus.len(),
    };
    let chosen: Option<Vec<&GrantedGpu>> = match request {
        GpuRequest::All => (!grant.gpus.is_empty()).then(|| grant.gpus.iter().collect()),
        GpuRequest::Count(n) => {
            let n = usize::try_from(*n).unwrap_or(usize::MAX);
            (n > 0 && n <= grant.gpus.len()).then(|| grant.gpus.iter().take(n).collect())
        }
        GpuRequest::Ids(ids) => ids
            .iter()
            .map(|id| match id.parse::<usize>() {
                Ok(i) => grant.gpus.get(i),
                Err(_) => grant
                    .gpus
                    .iter()
                    .find(|g| g.uuid.as_deref() == Some(id.as_str())),
            })
            .collect(),
    };
    chosen
        .map(|c| c.into_iter().map(|g| &g.node).collect())
        .ok_or_else(|| {
            refuse(match request {
                GpuRequest::All => "every GPU (at least one)".to_owned(),
                GpuRequest::Count(n) => format!("{n} GPU(s)"),
                GpuRequest::Ids(ids) => format!("GPU(s) {}", ids.join(",")),
            })
        })
}

fn device_json(container_path: &str, dev: &HostDevice) -> Value {
    json!({"path": container_path, "type": dev.kind.to_string(), "major": dev.major, "minor": dev.minor,
           "fileMode": dev.mode & 0o777, "uid": 0, "gid": 0})
}

fn device_rule(dev: &HostDevice, access: &str) -> Value {
    json!({"allow": true, "type": dev.kind.to_string(), "major": dev.major, "minor": dev.minor, "access": access})
}

/// Builds the container plan for `service`.
#[allow(clippy::too_many_arguments)]
pub fn container_plan(
    app: &App,
    service: &Service,
    image: &ImageConfig,
    files: &ImageFiles,
    layout: &Layout,
    host_devices: &BTreeMap<String, HostDevice>,
    gpus: &GpuGrant,
) -> Result<ContainerPlan, SpecError> {
    let name = &service.name;
    check_networking(service)?;
    let hostname = service
        .hostname
        .clone()
        .unwrap_or_else(|| layout.hostname.clone());
    // Docker semantics: an entrypoint override resets the image's Cmd.
    let entrypoint = service
        .entrypoint
        .clone()
        .or_else(|| image.entrypoint.clone())
        .unwrap_or_default();
    let cmd = match (&service.command, &service.entrypoint) {
        (Some(c), _) => c.clone(),
        (None, Some(_)) => Vec::new(),
        (None, None) => image.cmd.clone().unwrap_or_default(),
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(SpecError::ResolveCommand {
            service: name.clone(),
        });
    }

    // Environment: the image's, overlaid by the service's (in name order), PATH guaranteed.
    let mut env: Vec<String> = Vec::new();
    let mut seen = BTreeMap::new();
    for kv in &image.env {
        let key = kv
            .split_once('=')
            .map_or(kv.as_str(), |(k, _)| k)
            .to_owned();
        let value = match service.environment.get(&key) {
            Some(v) => format!("{key}={v}"),
            None => kv.clone(),
        };
        if let Some(&i) = seen.get(&key) {
            env[i] = value;
        } else {
            seen.insert(key, env.len());
            env.push(value);
        }
    }
    for (k, v) in &service.environment {
        if !seen.contains_key(k) {
            env.push(format!("{k}={v}"));
        }
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_owned());
    }
    env.push(format!("HOSTNAME={hostname}"));

    let cwd = service
        .working_dir
        .clone()
        .or_else(|| image.working_dir.clone())
        .map(|w| {
            if w.starts_with('/') {
                w
            } else {
                format!("/{w}")
            }
        })
        .unwrap_or_else(|| "/".to_owned());

    let (uid, gid, additional) = match service.user.as_deref().or(image.user.as_deref()) {
        Some(user) => resolve_user(name, user, files)?,
        None => (0, 0, Vec::new()),
    };

    let caps = capabilities(service)?;
    // Without `ulimits` the container inherits the launcher's limits: a fixed default above
    // the launcher's hard limit would make container creation fail with EPERM (seen with
    // NOFILE 1048576 under a 20000 hard limit), so PID 1 raises its own limits instead.
    let rlimits: Vec<Value> = service
        .ulimits
        .iter()
        .map(|u| json!({"type": u.name, "soft": u.soft, "hard": u.hard}))
        .collect();

    // Mounts: the runtime basics, then generated files, then the service's.
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", service.shm_size.map_or_else(|| "size=65536k".to_owned(), |bytes| format!("size={bytes}"))]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": if service.privileged { vec!["nosuid", "noexec", "nodev"] } else { vec!["nosuid", "noexec", "nodev", "ro"] }}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": if service.privileged { vec!["nosuid", "noexec", "nodev", "relatime"] } else { vec!["nosuid", "noexec", "nodev", "relatime", "ro"] }}),
    ];
    let hosts_path = layout.generated.join("hosts");
    let hostname_path = layout.generated.join("hostname");
    let mut out_files = vec![
        GeneratedFile {
            path: hosts_path.clone(),
            contents: match &layout.network {
                Some(net) => net.hosts.clone().into_bytes(),
                None => service_hosts_file(app, service).into_bytes(),
            },
            mode: 0o644,
            owner: (0, 0),
        },
        GeneratedFile {
            path: hostname_path.clone(),
            contents: format!("{hostname}\n").into_bytes(),
            mode: 0o644,
            owner: (0, 0),
        },
    ];
    mounts.push(bind("/etc/hosts", &hosts_path, true));
    mounts.push(bind("/etc/hostname", &hostname_path, true));
    mounts.push(bind("/etc/resolv.conf", &layout.resolv_conf, true));
    for v in &service.volumes {
        mounts.push(match v {
            VolumeMount::Named {
                name: vol,
                target,
                read_only,
            } => bind(target, &layout.volumes.join(vol), *read_only),
            VolumeMount::Bind {
                source,
                target,
                read_only,
            } => bind(target, Path::new(source), *read_only),
            VolumeMount::Tmpfs { target, options } => {
                let mut opts = vec!["nosuid".to_owned(), "nodev".to_owned()];
                if !options.iter().any(|o| o.starts_with("mode=")) {
                    opts.push("mode=1777".to_owned());
                }
                opts.extend(options.iter().cloned());
                json!({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": opts})
            }
        });
    }
    for c in &service.configs {
        let path = layout.generated.join("configs").join(&c.source);
        out_files.push(GeneratedFile {
            path: path.clone(),
            contents: app
                .configs
                .get(&c.source)
                .cloned()
                .unwrap_or_default()
                .into_bytes(),
            mode: c.mode,
            owner: (c.uid, c.gid),
        });
        mounts.push(bind(&c.target, &path, true));
    }

    // Devices: explicit mappings, then GPUs.
    let mut devices = Vec::new();
    let mut rules = vec![json!({"allow": false, "access": "rwm"})];
    for DeviceMapping {
        host,
        container,
        permissions,
    } in &service.devices
    {
        let dev = host_devices
            .get(host)
            .ok_or_else(|| SpecError::ResolveDevice {
                service: name.clone(),
                path: host.clone(),
            })?;
        devices.push(device_json(container, dev));
        // `m` for exactly this node: the device filter is attached before libcontainer makes
        // the node in the container's /dev (runc's order is the reverse); opening it is still
        // limited to the mapping's r/w.
        let access = if permissions.contains('m') {
            permissions.clone()
        } else {
            format!("{permissions}m")
        };
        rules.push(device_rule(dev, &access));
    }
    if let Some(request) = &service.resources.gpus {
        for dev in choose_gpus(name, request, gpus)?
            .into_iter()
            .chain(&gpus.control)
        {
            devices.push(device_json(&dev.path, dev));
            rules.push(device_rule(dev, "rwm"));
        }
        for m in &gpus.mounts {
            mounts.push(bind(&m.container_path, &m.host_path, true));
        }
    }
    if service.privileged {
        rules = vec![json!({"allow": true, "access": "rwm"})];
    }
    // The standard character devices every container gets.
    for (path, major, minor) in [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ] {
        let dev = HostDevice {
            path: path.to_owned(),
            kind: 'c',
            major,
            minor,
            mode: 0o666,
        };
        devices.push(device_json(path, &dev));
        rules.push(device_rule(&dev, "rwm"));
    }
    rules.push(json!({"allow": true, "type": "c", "major": 136, "access": "rwm"}));
    rules.push(json!({"allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm"}));

    let mut resources = json!({"devices": rules});
    if let Some(bytes) = service.resources.memory_bytes {
        resources["memory"] = json!({"limit": bytes});
    }
    if let Some(cpus) = service.resources.cpus {
        let period = 100_000u64;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let quota = (cpus * period as f64).round() as i64;
        resources["cpu"] = json!({"quota": quota, "period": period});
    }
    if let Some(pids) = service.resources.pids {
        resources["pids"] = json!({"limit": pids});
    }

    // `pid: host` shares the CVM's pid namespace (no new one).
    let mut namespaces: Vec<Value> = ["pid", "ipc", "uts", "mount", "cgroup"]
        .iter()
        .filter(|t| !(service.pid_host && **t == "pid"))
        .map(|t| json!({"type": t}))
        .collect();
    if let Some(netns) = layout.network.as_ref().and_then(|n| n.netns.as_ref()) {
        // Joined (setns), not created: the namespace outlives restarts of the container.
        namespaces.push(json!({"type": "network", "path": netns}));
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": format!("{}/{}", layout.cgroup_parent.trim_end_matches('/'), name),
        "resources": resources,
        "devices": devices,
    });
    if !service.sysctls.is_empty() {
        // Only namespaced sysctls reach here (the parser admits those; `check_networking`
        // refuses `net.*` under `network_mode: host`).
        linux["sysctl"] = json!(service.sysctls);
    }
    if !service.privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
        if !service.seccomp_unconfined {
            linux["seccomp"] = crate::seccomp::default_profile(&caps).map_err(|source| {
                SpecError::SeccompProfile {
                    service: name.clone(),
                    source,
                }
            })?;
        }
    }
    let mut user = json!({"uid": uid, "gid": gid});
    if !additional.is_empty() {
        user["additionalGids"] = json!(additional);
    }
    let mut json = json!({
        "ociVersion": "1.0.2",
        "root": {"path": layout.rootfs, "readonly": service.read_only},
        "hostname": hostname,
        "mounts": mounts,
        "process": {
            "terminal": false,
            "user": user,
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": rlimits,
        },
        "linux": linux,
    });
    if let Some(domain) = &service.domainname {
        json["domainname"] = json!(domain);
    }
    // Only when set (see the module documentation: `false` would make libcontainer load the
    // seccomp filter after dropping CAP_SYS_ADMIN, which the kernel refuses).
    if service.no_new_privileges {
        json["process"]["noNewPrivileges"] = json!(true);
    }
    let spec: oci_spec::runtime::Spec =
        serde_json::from_value(json.clone()).map_err(|source| SpecError::BuildSpec {
            service: name.clone(),
            source,
        })?;
    let stop_signal = if service.stop_signal != "SIGTERM" {
        service.stop_signal.clone()
    } else {
        image
            .stop_signal
            .clone()
            .filter(|s| crate::compose::SIGNALS.iter().any(|(n, _)| n == s))
            .unwrap_or_else(|| "SIGTERM".to_owned())
    };
    Ok(ContainerPlan {
        spec,
        json,
        files: out_files,
        rootfs_dirs: vec![cwd],
        stop_signal,
    })
}

#[cfg(test)]
mod tests;
