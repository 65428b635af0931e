//! The boot plan: the ordered stages PID 1 runs, and the mounts each mount stage performs.
//! `cvm-init` executes exactly this list (`init/pid1/src/boot.rs` calls one typed function per
//! stage, in this order), so the boot sequence reads top to bottom here.
//!
//! [`Stage`] is the one name of a stage everywhere: the plan, the kernel contract
//! (`kernel_contract::Feature::stage`), the results records and the tests. On the console and the
//! results channel a stage is its [`Stage::name`] (serde writes the same kebab-case name).

use std::fmt;

use serde::{Deserialize, Serialize};

/// One boot stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// /proc, /sys and /dev: what reading the command line and logging need.
    Early,
    /// Parse the `cvm.*` configuration from /proc/cmdline.
    Cmdline,
    /// The remaining base filesystems.
    Mount,
    /// Load the kernel modules of the initramfs load list, dependencies first.
    Modules,
    /// Filesystems whose driver may be a module (configfs).
    MountLate,
    /// Open the results port and flush the records buffered so far.
    Results,
    /// Check the running kernel against `kernel_contract::FEATURES` (from /proc/config.gz, else
    /// by probing), now that the modules are loaded; stop naming every missing feature.
    KernelContract,
    /// Copy the host-shared configuration (app-compose.json, .sys-config.json, ...) into a
    /// private tmpfs and validate it.
    HostShare,
    /// Pick the TEE, attest the GPUs (the GPU gate runs inside this stage, as in dstack) and
    /// extend the app identity into RTMR3 (`system-preparing` .. `boot-mr-done`).
    Measure,
    /// `lo` and the first Ethernet interface up, DHCP, `/etc/resolv.conf`; required when
    /// `kms_urls` is set, otherwise best effort.
    Network,
    /// App keys from the KMS over RA-TLS (or key provider `none`), `os-image-hash` and
    /// `key-provider` extended, the encrypted environment decrypted and filtered.
    Keys,
    /// The encrypted data disk (dm-integrity + dm-crypt AEAD, `cvm-disk`): select it, format it
    /// on first boot, verify its header and open it, mount it; skipped without a data disk.
    Disk,
    /// Extend `key-provider`, `storage-fs`, `system-ready`; check a quote carries the RTMR3.
    SystemReady,
    /// dstack-gateway registration over RA-TLS and the WireGuard interface `dstack-wg0`, then
    /// the refresher process (only when app-compose enables the gateway and sys-config lists
    /// `gateway_urls`; a failure is reported and the boot goes on unless `require_gateway`).
    Gateway,
    /// Start the guest API process (dstack.sock / tappd.sock), which owns the runtime event log
    /// from now on, and wait until it answers `Info`.
    GuestApi,
    /// The app's containers (`cvm-workload` + libcontainer): parse the compose file, pull every
    /// image by digest into the store (on the encrypted data disk when there is one), unpack,
    /// start the services in dependency order. After `GuestApi`, because services bind-mount
    /// its sockets (dstack starts containers after its agent too); the RTMR3 `system-ready`
    /// event stays before `GuestApi` (that process owns the event log afterwards), and the
    /// `ready` record comes only after this stage launched the workloads.
    Workloads,
    /// Everything before succeeded; the VM is ready.
    Ready,
}

/// The boot, in order.
pub const BOOT_PLAN: &[Stage] = &[
    Stage::Early,
    Stage::Cmdline,
    Stage::Mount,
    Stage::Modules,
    Stage::MountLate,
    Stage::Results,
    Stage::KernelContract,
    Stage::HostShare,
    Stage::Measure,
    Stage::Network,
    Stage::Keys,
    Stage::Disk,
    Stage::SystemReady,
    Stage::Gateway,
    Stage::GuestApi,
    Stage::Workloads,
    Stage::Ready,
];

impl Stage {
    /// The stable name used on the console and the results channel.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Early => "early",
            Self::Cmdline => "cmdline",
            Self::Mount => "mount",
            Self::Modules => "modules",
            Self::MountLate => "mount-late",
            Self::Results => "results",
            Self::KernelContract => "kernel-contract",
            Self::HostShare => "host-share",
            Self::Measure => "measure",
            Self::Network => "network",
            Self::Keys => "keys",
            Self::Disk => "disk",
            Self::SystemReady => "system-ready",
            Self::Gateway => "gateway",
            Self::GuestApi => "guest-api",
            Self::Workloads => "workloads",
            Self::Ready => "ready",
        }
    }

    /// The stage of a [`Stage::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        BOOT_PLAN.iter().copied().find(|s| s.name() == name)
    }

    /// The mounts a mount stage performs, in order; empty for other stages.
    pub const fn mounts(self) -> &'static [MountSpec] {
        match self {
            Self::Early => EARLY_MOUNTS,
            Self::Mount => BASE_MOUNTS,
            Self::MountLate => LATE_MOUNTS,
            _ => &[],
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Mount flags PID 1 uses (mapped onto `MS_*` by the sys layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MountFlags {
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
}

const NOSUID: MountFlags = MountFlags {
    nosuid: true,
    nodev: false,
    noexec: false,
};
const NOSUID_NODEV: MountFlags = MountFlags {
    nosuid: true,
    nodev: true,
    noexec: false,
};
const LOCKED: MountFlags = MountFlags {
    nosuid: true,
    nodev: true,
    noexec: true,
};

/// One mount of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MountFlags,
    pub data: &'static str,
}

const fn m(
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MountFlags,
    data: &'static str,
) -> MountSpec {
    MountSpec {
        source,
        target,
        fstype,
        flags,
        data,
    }
}

/// Mounted before anything else.
pub const EARLY_MOUNTS: &[MountSpec] = &[
    m("proc", "/proc", "proc", LOCKED, ""),
    m("sysfs", "/sys", "sysfs", LOCKED, ""),
    m("devtmpfs", "/dev", "devtmpfs", NOSUID, "mode=0755"),
];

/// The rest of the base system.
pub const BASE_MOUNTS: &[MountSpec] = &[
    m(
        "devpts",
        "/dev/pts",
        "devpts",
        MountFlags {
            noexec: true,
            ..NOSUID
        },
        "mode=0620,ptmxmode=0666",
    ),
    m("tmpfs", "/run", "tmpfs", NOSUID_NODEV, "mode=0755"),
    m("tmpfs", "/tmp", "tmpfs", NOSUID_NODEV, "mode=1777"),
    m("cgroup2", "/sys/fs/cgroup", "cgroup2", LOCKED, "nsdelegate"),
    m(
        "securityfs",
        "/sys/kernel/security",
        "securityfs",
        LOCKED,
        "",
    ),
];

/// After module loading: configfs is a module in distribution kernels (built in for production).
pub const LATE_MOUNTS: &[MountSpec] =
    &[m("configfs", "/sys/kernel/config", "configfs", LOCKED, "")];

/// How long children get between SIGTERM and SIGKILL at shutdown.
pub const STOP_GRACE_MS: u64 = 5_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_order_is_fixed() {
        let names: Vec<_> = BOOT_PLAN.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "early",
                "cmdline",
                "mount",
                "modules",
                "mount-late",
                "results",
                "kernel-contract",
                "host-share",
                "measure",
                "network",
                "keys",
                "disk",
                "system-ready",
                "gateway",
                "guest-api",
                "workloads",
                "ready"
            ]
        );
    }

    #[test]
    fn serde_and_display_use_the_stage_name() {
        for &stage in BOOT_PLAN {
            let json = serde_json::to_string(&stage).unwrap();
            assert_eq!(json, format!("\"{}\"", stage.name()));
            assert_eq!(serde_json::from_str::<Stage>(&json).unwrap(), stage);
            assert_eq!(stage.to_string(), stage.name());
            assert_eq!(Stage::from_name(stage.name()), Some(stage));
        }
        assert_eq!(Stage::from_name("gpu"), None);
    }

    #[test]
    fn every_mount_parent_is_mounted_or_in_rootfs_first() {
        let all: Vec<&MountSpec> = BOOT_PLAN.iter().flat_map(|s| s.mounts().iter()).collect();
        for (i, spec) in all.iter().enumerate() {
            assert!(spec.target.starts_with('/'));
            // A target below /sys or /dev needs that filesystem mounted earlier.
            for base in ["/sys", "/dev", "/proc"] {
                if spec.target.starts_with(&format!("{base}/")) {
                    assert!(
                        all[..i].iter().any(|p| p.target == base),
                        "{} before {base}",
                        spec.target
                    );
                }
            }
        }
        let targets: Vec<_> = all.iter().map(|m| m.target).collect();
        for required in [
            "/proc",
            "/sys",
            "/dev",
            "/dev/pts",
            "/run",
            "/tmp",
            "/sys/fs/cgroup",
            "/sys/kernel/config",
            "/sys/kernel/security",
        ] {
            assert!(targets.contains(&required), "{required} missing");
        }
    }

    #[test]
    fn only_mount_stages_mount() {
        assert!(Stage::Cmdline.mounts().is_empty());
        assert!(Stage::Ready.mounts().is_empty());
        assert_eq!(Stage::MountLate.mounts()[0].fstype, "configfs");
    }
}
