//! The kernel contract: every kernel feature the init relies on, in one list ([`FEATURES`]).
//!
//! The same list is
//! * rendered into the production kernel configuration fragment of the Yocto layer
//!   (`yocto/meta-cvm-init/recipes-kernel/linux/files/cvm-init.cfg`, by `cargo xtask
//!   yocto-fragment`; a test fails when the two differ), where every option is built in, and
//! * checked at boot by the `kernel-contract` stage, right after the modules are loaded: from
//!   `/proc/config.gz` when the kernel has one (the fragment enables it), otherwise by probing
//!   what the running kernel shows in `/proc` and `/sys` (the Debian test kernel has no
//!   `/proc/config.gz` and builds most of these as modules).
//!
//! Each feature names the boot [`Stage`] that needs it (a typo does not compile). Only features of
//! stages that are in the checked plan are required, so a stage added to the plan brings its
//! features with it. A missing
//! required feature stops the boot with an error naming every missing feature. TDX features are
//! required only when the image has no simulated TEE to fall back on; recommended features are
//! in the fragment but only warned about (the init has another path without them).
//!
//! Everything here is pure: the caller supplies the decompressed config text and a
//! [`KernelView`] that reads the probed files.

use std::collections::BTreeMap;
use std::fmt;

use crate::plan::Stage;

/// How strongly the init depends on a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Required whenever its stage is in the boot plan.
    Required,
    /// Required whenever its stage is in the plan and the image has no simulated TEE: a real
    /// TDX guest interface. An `insecure-simulated-tee` build only warns.
    Tdx,
    /// Built in by the production fragment; a kernel without it only gets a warning, because the
    /// init has another path (9p instead of a disk, the ioctl instead of sysfs, ...).
    Recommended,
}

impl Need {
    /// The word used in the fragment and the log.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Required => "required",
            Self::Tdx => "required-with-tdx",
            Self::Recommended => "recommended",
        }
    }
}

/// How to see a feature in a running kernel without `/proc/config.gz`. A feature is present
/// when any one of its probes succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `file` (a /proc or /sys text file) contains `token` as a whitespace-separated word:
    /// a filesystem in /proc/filesystems, an algorithm in /proc/crypto, a misc device in
    /// /proc/misc, a controller in cgroup.controllers, a CPU flag in /proc/cpuinfo.
    Listed {
        file: &'static str,
        token: &'static str,
    },
    /// The path exists (a sysfs driver directory, a device node, a /proc/self/ns entry).
    Exists(&'static str),
    /// `/sys/module/<name>` exists: the module is loaded (or built in with parameters).
    Module(&'static str),
}

const FILESYSTEMS: &str = "/proc/filesystems";
const CRYPTO: &str = "/proc/crypto";
const MISC: &str = "/proc/misc";
const CGROUP_CONTROLLERS: &str = "/sys/fs/cgroup/cgroup.controllers";
const CPUINFO: &str = "/proc/cpuinfo";
const INPUT_HANDLERS: &str = "/proc/bus/input/handlers";

const fn fs(token: &'static str) -> Probe {
    Probe::Listed {
        file: FILESYSTEMS,
        token,
    }
}
const fn crypto(token: &'static str) -> Probe {
    Probe::Listed {
        file: CRYPTO,
        token,
    }
}
const fn cgroup(token: &'static str) -> Probe {
    Probe::Listed {
        file: CGROUP_CONTROLLERS,
        token,
    }
}

impl Probe {
    /// The path this probe reads or stats.
    pub fn path(&self) -> String {
        match self {
            Self::Listed { file, .. } => (*file).to_owned(),
            Self::Exists(path) => (*path).to_owned(),
            Self::Module(name) => format!("/sys/module/{name}"),
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Listed { file, token } => write!(f, "`{token}` in {file}"),
            Self::Exists(path) => write!(f, "{path}"),
            Self::Module(name) => write!(f, "/sys/module/{name}"),
        }
    }
}

/// One kernel feature of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// The Kconfig symbol, `CONFIG_` included.
    pub option: &'static str,
    /// What the init uses it for.
    pub description: &'static str,
    /// The boot stage that needs it.
    pub stage: Stage,
    pub need: Need,
    /// Any one of these shows the feature when there is no `/proc/config.gz`. Empty only for
    /// recommended options that leave no trace at run time (menus, dependencies).
    pub probes: &'static [Probe],
}

/// The option behind each kernel module the test image loads (`initramfs/manifest.toml`): the
/// production kernel builds these in instead. `cargo xtask yocto-check` requires an entry for
/// every module of the manifest, and every option here is in [`FEATURES`].
pub const MODULE_OPTIONS: &[(&str, &str)] = &[
    ("virtio_pci", "CONFIG_VIRTIO_PCI"),
    ("virtio_console", "CONFIG_VIRTIO_CONSOLE"),
    ("virtio_blk", "CONFIG_VIRTIO_BLK"),
    ("virtio_net", "CONFIG_VIRTIO_NET"),
    ("dm_mod", "CONFIG_BLK_DEV_DM"),
    ("dm_crypt", "CONFIG_DM_CRYPT"),
    ("dm_integrity", "CONFIG_DM_INTEGRITY"),
    ("dm_verity", "CONFIG_DM_VERITY"),
    ("erofs", "CONFIG_EROFS_FS"),
    ("configfs", "CONFIG_CONFIGFS_FS"),
    ("ctr", "CONFIG_CRYPTO_CTR"),
    ("ghash_generic", "CONFIG_CRYPTO_GHASH"),
    ("ghash_clmulni_intel", "CONFIG_CRYPTO_GHASH_CLMUL_NI_INTEL"),
    ("aesni_intel", "CONFIG_CRYPTO_AES_NI_INTEL"),
    ("gcm", "CONFIG_CRYPTO_GCM"),
    ("xts", "CONFIG_CRYPTO_XTS"),
    ("button", "CONFIG_ACPI_BUTTON"),
    ("evdev", "CONFIG_INPUT_EVDEV"),
    ("9pnet_virtio", "CONFIG_NET_9P_VIRTIO"),
    ("9p", "CONFIG_9P_FS"),
    ("9pnet", "CONFIG_NET_9P"),
    ("overlay", "CONFIG_OVERLAY_FS"),
    ("vfat", "CONFIG_VFAT_FS"),
    ("vsock", "CONFIG_VSOCKETS"),
    ("vmw_vsock_virtio_transport", "CONFIG_VIRTIO_VSOCKETS"),
    ("authenc", "CONFIG_CRYPTO_AUTHENC"),
    ("seqiv", "CONFIG_CRYPTO_SEQIV"),
    ("bridge", "CONFIG_BRIDGE"),
    ("veth", "CONFIG_VETH"),
    ("nf_tables", "CONFIG_NF_TABLES"),
    // net/netfilter/Makefile: obj-$(CONFIG_NFT_NAT) += nft_chain_nat.o
    ("nft_chain_nat", "CONFIG_NFT_NAT"),
    ("nft_nat", "CONFIG_NFT_NAT"),
    ("nft_masq", "CONFIG_NFT_MASQ"),
    ("nft_ct", "CONFIG_NFT_CT"),
    ("wireguard", "CONFIG_WIREGUARD"),
];

/// The option of a module name (`-` and `_` alike), if the contract knows it.
pub fn module_option(module: &str) -> Option<&'static str> {
    let name = module.replace('-', "_");
    MODULE_OPTIONS
        .iter()
        .find(|(m, _)| *m == name)
        .map(|(_, option)| *option)
}

const fn feature(
    option: &'static str,
    description: &'static str,
    stage: Stage,
    need: Need,
    probes: &'static [Probe],
) -> Feature {
    Feature {
        option,
        description,
        stage,
        need,
        probes,
    }
}

use Need::{Recommended, Required, Tdx};

/// Every kernel feature the init needs, grouped by the stage that needs it, in boot order.
pub const FEATURES: &[Feature] = &[
    // early: the kernel unpacked the initramfs and runs /init; /proc, /sys, /dev first.
    feature(
        "CONFIG_BLK_DEV_INITRD",
        "initramfs support (cvm-init is its /init)",
        Stage::Early,
        Required,
        &[Probe::Exists("/init")],
    ),
    feature(
        "CONFIG_RD_GZIP",
        "gzip initramfs (the compression of cargo xtask dist)",
        Stage::Early,
        Required,
        &[Probe::Exists("/init")],
    ),
    feature(
        "CONFIG_RD_ZSTD",
        "zstd initramfs (cvm-initramfs --compression zstd)",
        Stage::Early,
        Recommended,
        &[],
    ),
    feature(
        "CONFIG_EFI",
        "UEFI runtime (TDVF boots the kernel through its EFI stub)",
        Stage::Early,
        Tdx,
        &[Probe::Exists("/sys/firmware/efi")],
    ),
    feature(
        "CONFIG_EFI_STUB",
        "EFI stub: direct kernel boot from TDVF, measured into RTMR1/RTMR2",
        Stage::Early,
        Tdx,
        &[Probe::Exists("/sys/firmware/efi")],
    ),
    feature(
        "CONFIG_PROC_FS",
        "/proc",
        Stage::Early,
        Required,
        &[fs("proc")],
    ),
    feature(
        "CONFIG_SYSFS",
        "/sys",
        Stage::Early,
        Required,
        &[fs("sysfs")],
    ),
    feature(
        "CONFIG_DEVTMPFS",
        "/dev without udev",
        Stage::Early,
        Required,
        &[fs("devtmpfs")],
    ),
    // mount: the rest of the base system.
    feature(
        "CONFIG_UNIX98_PTYS",
        "/dev/pts (devpts)",
        Stage::Mount,
        Required,
        &[fs("devpts")],
    ),
    feature(
        "CONFIG_TMPFS",
        "/run, /tmp and the private host-share copy",
        Stage::Mount,
        Required,
        &[fs("tmpfs")],
    ),
    feature(
        "CONFIG_CGROUPS",
        "cgroup2 at /sys/fs/cgroup",
        Stage::Mount,
        Required,
        &[fs("cgroup2")],
    ),
    feature(
        "CONFIG_SECURITYFS",
        "securityfs at /sys/kernel/security",
        Stage::Mount,
        Required,
        &[fs("securityfs")],
    ),
    // mount-late: configfs (a module in distribution kernels).
    feature(
        "CONFIG_CONFIGFS_FS",
        "configfs at /sys/kernel/config (configfs-tsm quotes)",
        Stage::MountLate,
        Required,
        &[fs("configfs")],
    ),
    // kernel-contract: how this check reads the configuration.
    feature(
        "CONFIG_IKCONFIG",
        "embedded kernel configuration",
        Stage::KernelContract,
        Recommended,
        &[Probe::Exists("/proc/config.gz")],
    ),
    feature(
        "CONFIG_IKCONFIG_PROC",
        "/proc/config.gz for this check",
        Stage::KernelContract,
        Recommended,
        &[Probe::Exists("/proc/config.gz")],
    ),
    // results: the virtio-serial results port (optional: the console always works).
    feature(
        "CONFIG_VIRTIO_CONSOLE",
        "virtio-serial results port",
        Stage::Results,
        Recommended,
        &[Probe::Exists("/sys/class/virtio-ports")],
    ),
    // host-share: the DSTACKSHR disk (virtio-blk, ext4), or 9p, or a FAT disk.
    feature(
        "CONFIG_PCI",
        "PCI bus of the virtio devices",
        Stage::HostShare,
        Required,
        &[Probe::Exists("/sys/bus/pci")],
    ),
    feature(
        "CONFIG_VIRTIO",
        "virtio core",
        Stage::HostShare,
        Required,
        &[Probe::Exists("/sys/bus/virtio")],
    ),
    feature(
        "CONFIG_VIRTIO_MENU",
        "virtio drivers menu",
        Stage::HostShare,
        Recommended,
        &[],
    ),
    feature(
        "CONFIG_VIRTIO_PCI",
        "virtio over PCI (every virtio device of the VM)",
        Stage::HostShare,
        Required,
        &[Probe::Exists("/sys/bus/pci/drivers/virtio-pci")],
    ),
    feature(
        "CONFIG_BLOCK",
        "block layer",
        Stage::HostShare,
        Required,
        &[Probe::Exists("/sys/class/block")],
    ),
    feature(
        "CONFIG_VIRTIO_BLK",
        "virtio-blk disks (host share, data disk)",
        Stage::HostShare,
        Required,
        &[Probe::Exists("/sys/bus/virtio/drivers/virtio_blk")],
    ),
    feature(
        "CONFIG_EXT4_FS",
        "ext4 host-share disk and data filesystem",
        Stage::HostShare,
        Required,
        &[fs("ext4")],
    ),
    feature(
        "CONFIG_VFAT_FS",
        "FAT host-share disk (QEMU vvfat)",
        Stage::HostShare,
        Recommended,
        &[fs("vfat")],
    ),
    feature(
        "CONFIG_NET_9P",
        "9p host share",
        Stage::HostShare,
        Recommended,
        &[Probe::Module("9pnet")],
    ),
    feature(
        "CONFIG_NET_9P_VIRTIO",
        "9p over virtio",
        Stage::HostShare,
        Recommended,
        &[Probe::Exists("/sys/bus/virtio/drivers/9pnet_virtio")],
    ),
    feature(
        "CONFIG_9P_FS",
        "9p filesystem (host-shared tag)",
        Stage::HostShare,
        Recommended,
        &[fs("9p")],
    ),
    // measure: the TDX guest interfaces.
    feature(
        "CONFIG_HYPERVISOR_GUEST",
        "dependency of INTEL_TDX_GUEST",
        Stage::Measure,
        Recommended,
        &[],
    ),
    feature(
        "CONFIG_PARAVIRT",
        "dependency of INTEL_TDX_GUEST",
        Stage::Measure,
        Recommended,
        &[],
    ),
    feature(
        "CONFIG_X86_X2APIC",
        "dependency of INTEL_TDX_GUEST",
        Stage::Measure,
        Recommended,
        &[],
    ),
    feature(
        "CONFIG_VIRT_DRIVERS",
        "menu of TDX_GUEST_DRIVER",
        Stage::Measure,
        Recommended,
        &[],
    ),
    feature(
        "CONFIG_INTEL_TDX_GUEST",
        "run as an Intel TDX guest",
        Stage::Measure,
        Tdx,
        &[Probe::Listed {
            file: CPUINFO,
            token: "tdx_guest",
        }],
    ),
    feature(
        "CONFIG_TDX_GUEST_DRIVER",
        "/dev/tdx_guest: TDREPORTs, RTMR extends",
        Stage::Measure,
        Tdx,
        &[
            Probe::Exists("/dev/tdx_guest"),
            Probe::Listed {
                file: MISC,
                token: "tdx_guest",
            },
        ],
    ),
    feature(
        "CONFIG_TSM_REPORTS",
        "configfs-tsm quotes (selected by TDX_GUEST_DRIVER)",
        Stage::Measure,
        Tdx,
        &[Probe::Exists("/sys/kernel/config/tsm/report")],
    ),
    feature(
        "CONFIG_TSM_MEASUREMENTS",
        "tsm-mr RTMR sysfs, where the kernel has it (else the ioctl)",
        Stage::Measure,
        Recommended,
        &[Probe::Exists(
            "/sys/devices/virtual/misc/tdx_guest/measurements",
        )],
    ),
    // gateway: the dstack-gateway tunnel (only used when app-compose enables the gateway).
    feature(
        "CONFIG_WIREGUARD",
        "WireGuard (dstack-wg0, the dstack-gateway tunnel)",
        Stage::Gateway,
        Recommended,
        &[Probe::Module("wireguard")],
    ),
    // guest-api: Unix sockets.
    feature(
        "CONFIG_UNIX",
        "Unix sockets (dstack.sock, tappd.sock)",
        Stage::GuestApi,
        Required,
        &[Probe::Exists("/proc/net/unix")],
    ),
    // ready: the ACPI power button.
    feature(
        "CONFIG_INPUT_EVDEV",
        "power button events",
        Stage::Ready,
        Recommended,
        &[Probe::Listed {
            file: INPUT_HANDLERS,
            token: "Name=evdev",
        }],
    ),
    feature(
        "CONFIG_ACPI_BUTTON",
        "ACPI power button",
        Stage::Ready,
        Recommended,
        &[Probe::Exists("/sys/bus/acpi/drivers/button")],
    ),
    // keys and network: KMS over the network, host notifications over vsock.
    feature(
        "CONFIG_NET",
        "networking",
        Stage::Network,
        Required,
        &[Probe::Exists("/proc/net")],
    ),
    feature(
        "CONFIG_INET",
        "TCP/IP (KMS, registries)",
        Stage::Network,
        Required,
        &[Probe::Exists("/proc/net/tcp")],
    ),
    feature(
        "CONFIG_PACKET",
        "raw packets for DHCP",
        Stage::Network,
        Recommended,
        &[Probe::Exists("/proc/net/packet")],
    ),
    feature(
        "CONFIG_VIRTIO_NET",
        "virtio-net NIC",
        Stage::Network,
        Required,
        &[Probe::Exists("/sys/bus/virtio/drivers/virtio_net")],
    ),
    feature(
        "CONFIG_VSOCKETS",
        "vsock (host API notifications)",
        Stage::Keys,
        Recommended,
        &[Probe::Module("vsock")],
    ),
    feature(
        "CONFIG_VIRTIO_VSOCKETS",
        "vsock over virtio",
        Stage::Keys,
        Recommended,
        &[Probe::Module("vmw_vsock_virtio_transport")],
    ),
    // disk: dm-crypt over dm-integrity with AES-GCM (capi:gcm(aes)-random).
    feature(
        "CONFIG_MD",
        "multiple-devices menu (device mapper)",
        Stage::Disk,
        Recommended,
        &[],
    ),
    feature(
        "CONFIG_BLK_DEV_DM",
        "device mapper",
        Stage::Disk,
        Required,
        &[Probe::Listed {
            file: MISC,
            token: "device-mapper",
        }],
    ),
    feature(
        "CONFIG_DM_CRYPT",
        "dm-crypt target",
        Stage::Disk,
        Required,
        &[Probe::Module("dm_crypt")],
    ),
    feature(
        "CONFIG_DM_INTEGRITY",
        "dm-integrity target (authentication tags)",
        Stage::Disk,
        Required,
        &[Probe::Module("dm_integrity")],
    ),
    // measure: the GPU driver extension (`cvm.gpu_driver`), a dm-verity EROFS image. Only a
    // boot whose command line names a root hash needs these.
    feature(
        "CONFIG_DM_VERITY",
        "dm-verity target (GPU driver extension)",
        Stage::Measure,
        Recommended,
        &[Probe::Module("dm_verity")],
    ),
    feature(
        "CONFIG_EROFS_FS",
        "EROFS (GPU driver extension image)",
        Stage::Measure,
        Recommended,
        &[Probe::Module("erofs")],
    ),
    feature(
        "CONFIG_CRYPTO_AES",
        "AES",
        Stage::Disk,
        Required,
        &[crypto("aes")],
    ),
    feature(
        "CONFIG_CRYPTO_GCM",
        "GCM mode (AEAD; not the data disk's construction, kept for dm-crypt gcm users)",
        Stage::Disk,
        Recommended,
        &[Probe::Module("gcm"), crypto("gcm(aes)")],
    ),
    feature(
        "CONFIG_CRYPTO_CTR",
        "CTR mode (used by GCM)",
        Stage::Disk,
        Recommended,
        &[Probe::Module("ctr"), crypto("ctr(aes)")],
    ),
    feature(
        "CONFIG_CRYPTO_GHASH",
        "GHASH (used by GCM)",
        Stage::Disk,
        Recommended,
        &[crypto("ghash")],
    ),
    feature(
        "CONFIG_CRYPTO_SEQIV",
        "IV generator of the kernel's AEAD templates",
        Stage::Disk,
        Recommended,
        &[Probe::Module("seqiv")],
    ),
    feature(
        "CONFIG_CRYPTO_AES_NI_INTEL",
        "AES-NI implementation",
        Stage::Disk,
        Recommended,
        &[crypto("aes-aesni")],
    ),
    feature(
        "CONFIG_CRYPTO_GHASH_CLMUL_NI_INTEL",
        "PCLMULQDQ GHASH implementation",
        Stage::Disk,
        Recommended,
        &[crypto("ghash-clmulni")],
    ),
    feature(
        "CONFIG_CRYPTO_XTS",
        "XTS mode (the data disk's authenc(hmac(sha256),xts(aes)))",
        Stage::Disk,
        Required,
        &[Probe::Module("xts"), crypto("xts(aes)")],
    ),
    feature(
        "CONFIG_CRYPTO_AUTHENC",
        "authenc(hmac(sha256),xts(aes)) construction",
        Stage::Disk,
        Recommended,
        &[Probe::Module("authenc")],
    ),
    feature(
        "CONFIG_CRYPTO_HMAC",
        "HMAC (authenc, dm-integrity journal MAC)",
        Stage::Disk,
        Recommended,
        &[Probe::Module("hmac"), crypto("hmac(sha256)")],
    ),
    feature(
        "CONFIG_CRYPTO_SHA256",
        "SHA-256",
        Stage::Disk,
        Recommended,
        &[crypto("sha256")],
    ),
    // measure (its GPU gate): NVIDIA's confidential-computing driver is out of tree.
    feature(
        "CONFIG_MODULES",
        "loadable modules (the out-of-tree NVIDIA driver)",
        Stage::Measure,
        Recommended,
        &[Probe::Exists("/proc/modules")],
    ),
    // workloads: containers without a daemon.
    feature(
        "CONFIG_BPF_SYSCALL",
        "bpf(2): each container's eBPF device filter",
        Stage::Workloads,
        Required,
        &[Probe::Exists("/proc/sys/kernel/unprivileged_bpf_disabled")],
    ),
    feature(
        "CONFIG_CGROUP_BPF",
        "eBPF programs on cgroups (the device filter; an attach failure stops the start)",
        Stage::Workloads,
        Recommended,
        &[],
    ),
    feature(
        "CONFIG_NAMESPACES",
        "namespaces",
        Stage::Workloads,
        Required,
        &[Probe::Exists("/proc/self/ns")],
    ),
    feature(
        "CONFIG_PID_NS",
        "PID namespaces",
        Stage::Workloads,
        Required,
        &[Probe::Exists("/proc/self/ns/pid")],
    ),
    feature(
        "CONFIG_IPC_NS",
        "IPC namespaces",
        Stage::Workloads,
        Required,
        &[Probe::Exists("/proc/self/ns/ipc")],
    ),
    feature(
        "CONFIG_UTS_NS",
        "UTS namespaces",
        Stage::Workloads,
        Required,
        &[Probe::Exists("/proc/self/ns/uts")],
    ),
    feature(
        "CONFIG_NET_NS",
        "a network namespace per service",
        Stage::Workloads,
        Required,
        &[Probe::Exists("/proc/self/ns/net")],
    ),
    feature(
        "CONFIG_CGROUP_SCHED",
        "cgroup2 cpu controller",
        Stage::Workloads,
        Required,
        &[cgroup("cpu")],
    ),
    feature(
        "CONFIG_MEMCG",
        "cgroup2 memory controller",
        Stage::Workloads,
        Required,
        &[cgroup("memory")],
    ),
    feature(
        "CONFIG_CGROUP_PIDS",
        "cgroup2 pids controller",
        Stage::Workloads,
        Required,
        &[cgroup("pids")],
    ),
    feature(
        "CONFIG_CPUSETS",
        "cgroup2 cpuset controller",
        Stage::Workloads,
        Recommended,
        &[cgroup("cpuset")],
    ),
    feature(
        "CONFIG_BLK_CGROUP",
        "cgroup2 io controller",
        Stage::Workloads,
        Recommended,
        &[cgroup("io")],
    ),
    feature(
        "CONFIG_OVERLAY_FS",
        "overlay root filesystems for containers",
        Stage::Workloads,
        Recommended,
        &[fs("overlay")],
    ),
    feature(
        "CONFIG_BRIDGE",
        "a bridge per compose network",
        Stage::Workloads,
        Required,
        &[Probe::Module("bridge")],
    ),
    feature(
        "CONFIG_VETH",
        "veth pairs into the services' network namespaces",
        Stage::Workloads,
        Required,
        &[Probe::Module("veth")],
    ),
    feature(
        "CONFIG_NETFILTER_NETLINK",
        "nfnetlink, the nftables transport",
        Stage::Workloads,
        Required,
        &[Probe::Module("nfnetlink")],
    ),
    feature(
        "CONFIG_NF_TABLES",
        "nftables: published ports, egress, isolation of the bridges",
        Stage::Workloads,
        Required,
        &[Probe::Module("nf_tables")],
    ),
    feature(
        "CONFIG_NF_TABLES_IPV4",
        "the nftables ip family (table ip cvm)",
        Stage::Workloads,
        Required,
        &[Probe::Module("nf_tables")],
    ),
    feature(
        "CONFIG_NF_CONNTRACK",
        "connection tracking (ct state, ct status dnat)",
        Stage::Workloads,
        Required,
        &[
            Probe::Module("nf_conntrack"),
            Probe::Exists("/proc/sys/net/netfilter/nf_conntrack_max"),
        ],
    ),
    feature(
        "CONFIG_NF_NAT",
        "NAT core for DNAT and masquerade",
        Stage::Workloads,
        Required,
        &[Probe::Module("nf_nat")],
    ),
    feature(
        "CONFIG_NFT_NAT",
        "nft nat expression and nat chains (DNAT of published ports)",
        Stage::Workloads,
        Required,
        &[Probe::Module("nft_nat")],
    ),
    feature(
        "CONFIG_NFT_MASQ",
        "nft masq expression (egress of the bridges)",
        Stage::Workloads,
        Required,
        &[Probe::Module("nft_masq")],
    ),
    feature(
        "CONFIG_NFT_CT",
        "nft ct expression (established/related, dnat)",
        Stage::Workloads,
        Required,
        &[Probe::Module("nft_ct")],
    ),
    feature(
        "CONFIG_SECCOMP",
        "seccomp filters of container specs",
        Stage::Workloads,
        Recommended,
        &[Probe::Exists("/proc/sys/kernel/seccomp")],
    ),
];

/// A value of the kernel configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigValue {
    /// `=y`
    BuiltIn,
    /// `=m`
    Module,
    /// A string, number or `=n`.
    Other(String),
}

/// Most bytes of configuration text accepted (a distribution config is ~300 KiB).
pub const MAX_CONFIG_LEN: usize = 4 * 1024 * 1024;
/// Longest configuration line accepted.
const MAX_LINE_LEN: usize = 4096;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelContractError {
    #[error("kernel configuration is larger than {MAX_CONFIG_LEN} bytes")]
    ConfigTooLarge,
    #[error("line {line} of the kernel configuration is not `CONFIG_NAME=value`")]
    ParseConfigLine { line: usize },
    #[error("line {line} of the kernel configuration sets {option} twice")]
    DuplicateOption { line: usize, option: String },
    #[error("kernel lacks {} required feature(s): {}", missing.len(), list(missing))]
    MissingFeatures { missing: Vec<Missing> },
}

/// A required feature the running kernel lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub option: &'static str,
    pub description: &'static str,
    pub stage: Stage,
    pub why: Absence,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, for stage {}: {})",
            self.option, self.description, self.stage, self.why
        )
    }
}

fn list(missing: &[Missing]) -> String {
    missing
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a feature counts as absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Absence {
    /// /proc/config.gz does not set it (or sets it to something other than y/m).
    NotConfigured,
    /// /proc/config.gz says module, but the module is not loaded.
    ModuleNotLoaded,
    /// No /proc/config.gz, and none of the probes found it.
    NotProbed { probes: String },
}

impl fmt::Display for Absence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotConfigured => f.write_str("not set in /proc/config.gz"),
            Self::ModuleNotLoaded => f.write_str("a module that is not loaded"),
            Self::NotProbed { probes } => write!(f, "no {probes}"),
        }
    }
}

/// The parsed `/proc/config.gz` (decompressed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelConfig {
    values: BTreeMap<String, ConfigValue>,
}

impl KernelConfig {
    /// Parse `.config` text: `CONFIG_X=value` lines, `# CONFIG_X is not set`, comments, blanks.
    pub fn parse(text: &str) -> Result<Self, KernelContractError> {
        if text.len() > MAX_CONFIG_LEN {
            return Err(KernelContractError::ConfigTooLarge);
        }
        let mut values = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let entry = raw.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            if entry.len() > MAX_LINE_LEN {
                return Err(KernelContractError::ParseConfigLine { line });
            }
            let Some((name, value)) = entry.split_once('=') else {
                return Err(KernelContractError::ParseConfigLine { line });
            };
            let valid_name = name.len() > "CONFIG_".len()
                && name.starts_with("CONFIG_")
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !valid_name {
                return Err(KernelContractError::ParseConfigLine { line });
            }
            let value = match value {
                "y" => ConfigValue::BuiltIn,
                "m" => ConfigValue::Module,
                other => ConfigValue::Other(other.to_owned()),
            };
            if values.insert(name.to_owned(), value).is_some() {
                return Err(KernelContractError::DuplicateOption {
                    line,
                    option: name.to_owned(),
                });
            }
        }
        Ok(Self { values })
    }

    /// The value of `option` (`CONFIG_` included), if set.
    pub fn value(&self, option: &str) -> Option<&ConfigValue> {
        self.values.get(option)
    }
}

/// What the running kernel shows; the pid1 side reads the real files, tests use a map.
pub trait KernelView {
    /// The text of a /proc or /sys file; `None` when it cannot be read.
    fn read_text(&mut self, path: &str) -> Option<String>;
    /// Whether `path` exists.
    fn exists(&mut self, path: &str) -> bool;
}

/// Whether `probe` succeeds on `view`.
pub fn probe(view: &mut dyn KernelView, probe: &Probe) -> bool {
    match probe {
        Probe::Listed { file, token } => view
            .read_text(file)
            .is_some_and(|text| text.split_whitespace().any(|word| word == *token)),
        Probe::Exists(_) | Probe::Module(_) => view.exists(&probe.path()),
    }
}

/// How a present feature was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// `=y` in /proc/config.gz.
    BuiltIn,
    /// `=m` in /proc/config.gz and a probe shows it loaded (or it has no probe).
    Module,
    /// No /proc/config.gz; a probe found it.
    Probed,
    /// No /proc/config.gz and the option leaves no trace at run time (a menu); only
    /// recommended options may be unverifiable.
    Unverifiable,
}

/// The outcome for one feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub feature: Feature,
    /// Whether a missing feature stops this boot (its stage is in the plan, and it is required
    /// for this image).
    pub enforced: bool,
    pub result: Result<Presence, Absence>,
}

/// The whole check, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractReport {
    /// Whether the answers came from /proc/config.gz.
    pub from_config: bool,
    pub checked: Vec<Checked>,
}

impl ContractReport {
    /// Features that are absent although nothing enforces them now (recommended, TDX in a
    /// simulated-TEE image, or of stages not in the plan), as `CONFIG_X (stage)`.
    pub fn absent_unenforced(&self) -> Vec<String> {
        self.checked
            .iter()
            .filter(|c| !c.enforced && c.result.is_err())
            .map(|c| format!("{} ({})", c.feature.option, c.feature.stage))
            .collect()
    }

    /// Required features that this kernel lacks of stages not in the checked plan: adding such
    /// a stage would stop the boot.
    pub fn absent_for_stages_not_in_plan(&self) -> Vec<&'static str> {
        self.checked
            .iter()
            .filter(|c| !c.enforced && c.feature.need == Need::Required && c.result.is_err())
            .map(|c| c.feature.option)
            .collect()
    }

    /// Count of features found present.
    pub fn present(&self) -> usize {
        self.checked
            .iter()
            .filter(|c| matches!(c.result, Ok(p) if p != Presence::Unverifiable))
            .count()
    }
}

/// What the image expects of its TEE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeeExpectation {
    /// A release image: TDX features are required.
    Tdx,
    /// An `insecure-simulated-tee` image: TDX features are only reported.
    SimulatedAllowed,
}

/// Whether `feature` must be present in a boot with `plan`.
pub fn enforced(feature: &Feature, plan: &[Stage], tee: TeeExpectation) -> bool {
    let in_plan = feature.stage == Stage::KernelContract || plan.contains(&feature.stage);
    in_plan
        && match feature.need {
            Need::Required => true,
            Need::Tdx => tee == TeeExpectation::Tdx,
            Need::Recommended => false,
        }
}

fn evaluate(
    feature: &Feature,
    config: Option<&KernelConfig>,
    view: &mut dyn KernelView,
) -> Result<Presence, Absence> {
    let mut probed = || feature.probes.iter().any(|p| probe(view, p));
    match config {
        Some(config) => match config.value(feature.option) {
            Some(ConfigValue::BuiltIn) => Ok(Presence::BuiltIn),
            Some(ConfigValue::Module) if feature.probes.is_empty() || probed() => {
                Ok(Presence::Module)
            }
            Some(ConfigValue::Module) => Err(Absence::ModuleNotLoaded),
            Some(ConfigValue::Other(_)) | None => Err(Absence::NotConfigured),
        },
        None if feature.probes.is_empty() => Ok(Presence::Unverifiable),
        None if probed() => Ok(Presence::Probed),
        None => Err(Absence::NotProbed {
            probes: feature
                .probes
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" or "),
        }),
    }
}

/// Check every feature of [`FEATURES`] against the running kernel. `config` is the parsed
/// `/proc/config.gz` when the kernel has one. Fails with every enforced feature that is missing.
pub fn check(
    plan: &[Stage],
    tee: TeeExpectation,
    config: Option<&KernelConfig>,
    view: &mut dyn KernelView,
) -> Result<ContractReport, KernelContractError> {
    check_features(FEATURES, plan, tee, config, view)
}

/// [`check`] over an explicit list (tests).
pub fn check_features(
    features: &[Feature],
    plan: &[Stage],
    tee: TeeExpectation,
    config: Option<&KernelConfig>,
    view: &mut dyn KernelView,
) -> Result<ContractReport, KernelContractError> {
    let mut checked = Vec::with_capacity(features.len());
    let mut missing = Vec::new();
    for feature in features {
        let enforced = enforced(feature, plan, tee);
        let result = evaluate(feature, config, view);
        if enforced && let Err(why) = &result {
            missing.push(Missing {
                option: feature.option,
                description: feature.description,
                stage: feature.stage,
                why: why.clone(),
            });
        }
        checked.push(Checked {
            feature: *feature,
            enforced,
            result,
        });
    }
    if missing.is_empty() {
        Ok(ContractReport {
            from_config: config.is_some(),
            checked,
        })
    } else {
        Err(KernelContractError::MissingFeatures { missing })
    }
}

/// The Yocto kernel configuration fragment: every option of [`FEATURES`] built in, grouped by
/// stage with its description. `cargo xtask yocto-fragment` writes it; a test compares it with
/// the checked-in file.
pub fn render_fragment() -> String {
    let mut out = String::from(
        "# cvm-init kernel contract: every option the init needs, built in.\n\
         # Generated from init/core/src/kernel_contract.rs by `cargo xtask yocto-fragment`;\n\
         # do not edit by hand (a test compares the two). The init checks the same list at\n\
         # boot (stage kernel-contract) from /proc/config.gz.\n",
    );
    let mut stage = None;
    for feature in FEATURES {
        if stage != Some(feature.stage) {
            stage = Some(feature.stage);
            out.push_str(&format!("\n# stage {}\n", feature.stage));
        }
        out.push_str(&format!(
            "# {} ({})\n{}=y\n",
            feature.description,
            feature.need.name(),
            feature.option
        ));
    }
    out
}

/// The options a fragment file sets to `y`, in file order, and every line that is neither a
/// comment, a blank nor `CONFIG_X=y` (so a hand edit to `=m` or `=n` is caught).
pub fn fragment_options(text: &str) -> (Vec<String>, Vec<String>) {
    let mut options = Vec::new();
    let mut other = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.strip_suffix("=y") {
            Some(name) if name.starts_with("CONFIG_") => options.push(name.to_owned()),
            _ => other.push(line.to_owned()),
        }
    }
    (options, other)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::plan::BOOT_PLAN;

    #[derive(Default)]
    struct FakeKernel {
        files: BTreeMap<String, String>,
        paths: BTreeSet<String>,
        reads: Vec<String>,
    }

    impl KernelView for FakeKernel {
        fn read_text(&mut self, path: &str) -> Option<String> {
            self.reads.push(path.to_owned());
            self.files.get(path).cloned()
        }
        fn exists(&mut self, path: &str) -> bool {
            self.paths.contains(path)
        }
    }

    /// A kernel that passes every probe of every feature.
    fn everything() -> FakeKernel {
        let mut kernel = FakeKernel::default();
        for feature in FEATURES {
            for p in feature.probes {
                match p {
                    Probe::Listed { file, token } => {
                        let text = kernel.files.entry((*file).to_owned()).or_default();
                        text.push_str("nodev\t");
                        text.push_str(token);
                        text.push('\n');
                    }
                    Probe::Exists(_) | Probe::Module(_) => {
                        kernel.paths.insert(p.path());
                    }
                }
            }
        }
        kernel
    }

    fn without(mut kernel: FakeKernel, probe: &Probe) -> FakeKernel {
        match probe {
            Probe::Listed { file, token } => {
                if let Some(text) = kernel.files.get_mut(*file) {
                    *text = text
                        .lines()
                        .filter(|l| !l.split_whitespace().any(|w| w == *token))
                        .collect::<Vec<_>>()
                        .join("\n");
                }
            }
            Probe::Exists(_) | Probe::Module(_) => {
                kernel.paths.remove(&probe.path());
            }
        }
        kernel
    }

    fn missing_of(result: Result<ContractReport, KernelContractError>) -> Vec<&'static str> {
        match result {
            Err(KernelContractError::MissingFeatures { missing }) => {
                missing.iter().map(|m| m.option).collect()
            }
            Ok(_) => Vec::new(),
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn every_feature_names_a_stage_of_the_boot_plan() {
        for feature in FEATURES {
            assert!(
                BOOT_PLAN.contains(&feature.stage),
                "{} names stage {}",
                feature.option,
                feature.stage
            );
            assert!(feature.option.starts_with("CONFIG_"), "{}", feature.option);
        }
    }

    #[test]
    fn every_module_maps_to_a_feature() {
        for (module, option) in MODULE_OPTIONS {
            assert!(
                FEATURES.iter().any(|f| f.option == *option),
                "{module} maps to {option}, which is not in FEATURES"
            );
        }
        assert_eq!(module_option("dm-crypt"), Some("CONFIG_DM_CRYPT"));
        assert_eq!(module_option("no_such_module"), None);
    }

    #[test]
    fn options_are_unique() {
        let mut seen = BTreeSet::new();
        for feature in FEATURES {
            assert!(seen.insert(feature.option), "{} twice", feature.option);
        }
    }

    #[test]
    fn enforced_features_can_be_probed() {
        // Without /proc/config.gz a required feature without a probe could never pass.
        for feature in FEATURES {
            if feature.need != Need::Recommended {
                assert!(
                    !feature.probes.is_empty(),
                    "{} has no probe",
                    feature.option
                );
            }
        }
    }

    #[test]
    fn a_kernel_with_everything_passes() {
        let mut kernel = everything();
        let report = check(BOOT_PLAN, TeeExpectation::Tdx, None, &mut kernel)
            .unwrap_or_else(|e| panic!("{e}"));
        let unprobed = FEATURES.iter().filter(|f| f.probes.is_empty()).count();
        assert_eq!(unprobed, 8); // menus, hidden dependencies, CGROUP_BPF
        assert_eq!(report.present(), FEATURES.len() - unprobed);
        assert!(!report.from_config);
        assert!(report.absent_for_stages_not_in_plan().is_empty());
    }

    #[test]
    fn a_missing_probe_names_the_feature_and_its_stage() {
        let kernel = without(everything(), &fs("configfs"));
        let mut kernel = kernel;
        let error = check(BOOT_PLAN, TeeExpectation::Tdx, None, &mut kernel)
            .err()
            .unwrap_or_else(|| panic!("passed without configfs"));
        let text = error.to_string();
        assert!(text.contains("CONFIG_CONFIGFS_FS"), "{text}");
        assert!(text.contains("mount-late"), "{text}");
        assert!(text.contains("`configfs` in /proc/filesystems"), "{text}");
        assert!(
            text.starts_with("kernel lacks 1 required feature(s)"),
            "{text}"
        );
    }

    #[test]
    fn every_missing_feature_is_named() {
        let mut kernel = without(
            without(everything(), &fs("ext4")),
            &Probe::Exists("/sys/bus/virtio/drivers/virtio_blk"),
        );
        let missing = missing_of(check(BOOT_PLAN, TeeExpectation::Tdx, None, &mut kernel));
        assert_eq!(missing, ["CONFIG_VIRTIO_BLK", "CONFIG_EXT4_FS"]);
    }

    #[test]
    fn only_stages_in_the_plan_are_enforced() {
        // dm-crypt belongs to the disk stage, which is not in this plan.
        let without_disk: Vec<Stage> = BOOT_PLAN
            .iter()
            .copied()
            .filter(|s| *s != Stage::Disk)
            .collect();
        let mut kernel = without(everything(), &Probe::Module("dm_crypt"));
        let report = check(&without_disk, TeeExpectation::Tdx, None, &mut kernel)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.absent_for_stages_not_in_plan(), ["CONFIG_DM_CRYPT"]);
        assert_eq!(report.absent_unenforced(), ["CONFIG_DM_CRYPT (disk)"]);
        // With the disk stage in the plan it is required.
        let missing = missing_of(check(BOOT_PLAN, TeeExpectation::Tdx, None, &mut kernel));
        assert_eq!(missing, ["CONFIG_DM_CRYPT"]);
        // A plan that stops before host-share does not need ext4.
        let mut kernel = without(everything(), &fs("ext4"));
        let early = &BOOT_PLAN[..3];
        let report =
            check(early, TeeExpectation::Tdx, None, &mut kernel).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.absent_unenforced(), ["CONFIG_EXT4_FS (host-share)"]);
    }

    #[test]
    fn tdx_features_bind_only_without_a_simulator() {
        let kernel = without(everything(), &Probe::Exists("/dev/tdx_guest"));
        let mut kernel = without(
            kernel,
            &Probe::Listed {
                file: MISC,
                token: "tdx_guest",
            },
        );
        let missing = missing_of(check(BOOT_PLAN, TeeExpectation::Tdx, None, &mut kernel));
        assert_eq!(missing, ["CONFIG_TDX_GUEST_DRIVER"]);
        let report = check(
            BOOT_PLAN,
            TeeExpectation::SimulatedAllowed,
            None,
            &mut kernel,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            report
                .absent_unenforced()
                .contains(&"CONFIG_TDX_GUEST_DRIVER (measure)".to_owned())
        );
    }

    #[test]
    fn recommended_features_never_stop_the_boot() {
        let mut kernel = without(everything(), &fs("9p"));
        let report = check(BOOT_PLAN, TeeExpectation::Tdx, None, &mut kernel)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            report
                .absent_unenforced()
                .contains(&"CONFIG_9P_FS (host-share)".to_owned())
        );
    }

    #[test]
    fn each_listed_file_is_read_by_probes() {
        let mut kernel = everything();
        let _ = check(BOOT_PLAN, TeeExpectation::Tdx, None, &mut kernel);
        assert!(kernel.reads.iter().any(|r| r == FILESYSTEMS));
    }

    fn config_with_all_builtin() -> String {
        FEATURES
            .iter()
            .map(|f| format!("{}=y\n", f.option))
            .collect()
    }

    #[test]
    fn config_gz_answers_without_probes() {
        let config =
            KernelConfig::parse(&config_with_all_builtin()).unwrap_or_else(|e| panic!("{e}"));
        let mut nothing = FakeKernel::default();
        let report = check(BOOT_PLAN, TeeExpectation::Tdx, Some(&config), &mut nothing)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(report.from_config);
        assert_eq!(report.present(), FEATURES.len());
        assert!(nothing.reads.is_empty());
    }

    #[test]
    fn config_gz_module_must_be_loaded_and_unset_is_missing() {
        let text = config_with_all_builtin()
            .replace("CONFIG_CONFIGFS_FS=y", "CONFIG_CONFIGFS_FS=m")
            .replace("CONFIG_EXT4_FS=y\n", "# CONFIG_EXT4_FS is not set\n")
            .replace("CONFIG_UNIX=y", "CONFIG_UNIX=n");
        let config = KernelConfig::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let mut nothing = FakeKernel::default();
        let error = check(BOOT_PLAN, TeeExpectation::Tdx, Some(&config), &mut nothing)
            .err()
            .unwrap_or_else(|| panic!("passed"));
        let KernelContractError::MissingFeatures { missing } = &error else {
            panic!("{error}");
        };
        let found: Vec<_> = missing.iter().map(|m| (m.option, m.why.clone())).collect();
        assert_eq!(
            found,
            [
                ("CONFIG_CONFIGFS_FS", Absence::ModuleNotLoaded),
                ("CONFIG_EXT4_FS", Absence::NotConfigured),
                ("CONFIG_UNIX", Absence::NotConfigured),
            ]
        );
        // The module loaded: present.
        let mut loaded = FakeKernel::default();
        loaded
            .files
            .insert(FILESYSTEMS.into(), "nodev\tconfigfs\n".into());
        let missing = missing_of(check(
            BOOT_PLAN,
            TeeExpectation::Tdx,
            Some(&config),
            &mut loaded,
        ));
        assert_eq!(missing, ["CONFIG_EXT4_FS", "CONFIG_UNIX"]);
    }

    #[test]
    fn config_parser_rejects_garbage_with_line_numbers() {
        let cases = [
            ("CONFIG_A=y\nnot a line\n", 2),
            ("FOO=y\n", 1),
            ("CONFIG_=y\n", 1),
            ("CONFIG_a=y\n", 1),
            ("CONFIG_A y\n", 1),
        ];
        for (text, line) in cases {
            assert_eq!(
                KernelConfig::parse(text),
                Err(KernelContractError::ParseConfigLine { line }),
                "{text:?}"
            );
        }
        assert_eq!(
            KernelConfig::parse("CONFIG_A=y\nCONFIG_A=m\n"),
            Err(KernelContractError::DuplicateOption {
                line: 2,
                option: "CONFIG_A".into()
            })
        );
        let huge = "#".repeat(MAX_CONFIG_LEN + 1);
        assert_eq!(
            KernelConfig::parse(&huge),
            Err(KernelContractError::ConfigTooLarge)
        );
        let long_line = format!("CONFIG_A=\"{}\"", "x".repeat(MAX_LINE_LEN));
        assert_eq!(
            KernelConfig::parse(&long_line),
            Err(KernelContractError::ParseConfigLine { line: 1 })
        );
    }

    #[test]
    fn config_parser_reads_values() {
        let config = KernelConfig::parse(
            "#\n# Automatically generated\n\nCONFIG_A=y\nCONFIG_B=m\nCONFIG_C=\"text\"\n# CONFIG_D is not set\nCONFIG_E=42\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.value("CONFIG_A"), Some(&ConfigValue::BuiltIn));
        assert_eq!(config.value("CONFIG_B"), Some(&ConfigValue::Module));
        assert_eq!(
            config.value("CONFIG_C"),
            Some(&ConfigValue::Other("\"text\"".into()))
        );
        assert_eq!(config.value("CONFIG_D"), None);
        assert_eq!(
            config.value("CONFIG_E"),
            Some(&ConfigValue::Other("42".into()))
        );
    }

    #[test]
    fn fragment_lists_every_feature_once_built_in() {
        let fragment = render_fragment();
        let (options, other) = fragment_options(&fragment);
        assert!(other.is_empty(), "{other:?}");
        let expected: Vec<_> = FEATURES.iter().map(|f| f.option.to_owned()).collect();
        assert_eq!(options, expected);
    }

    #[test]
    fn fragment_parser_flags_non_builtin_lines() {
        let (options, other) =
            fragment_options("# c\nCONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nBOGUS\n");
        assert_eq!(options, ["CONFIG_A"]);
        assert_eq!(other, ["CONFIG_B=m", "BOGUS"]);
    }
}
