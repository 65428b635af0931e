//! The GPU grant's pure parts: the driver tree (where the NVIDIA user space lives), what of it
//! a GPU container gets (scanned into [`DriverMount`]s), the CDI-like record of a grant
//! ([`CdiSpec`], serialisable to CDI JSON), and the checks of `/dev/nvidia*` nodes against the
//! GPUs the attestation gate passed ([`parse_gpu_information`], [`unattested_nodes`]).
//!
//! PID 1 (`init/pid1/src/stages/workloads/gpu.rs`) does the I/O around these: it stats the
//! nodes, reads `/proc/driver/nvidia/gpus/<pci>/information`, and hands the grant to
//! `crate::spec::container_plan`, which turns it into device nodes, device-cgroup rules and
//! read-only bind mounts for the services that request GPUs (and nothing for the others).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::spec::{GpuGrant, HostDevice};

/// Where the NVIDIA driver tree is mounted (the measured, read-only driver extension): `lib/`
/// (user-space libraries), `bin/` (`nvidia-smi`, `nvidia-persistenced`, …), `firmware/` (GSP
/// firmware, for the kernel module). The one place this path is written.
pub const DRIVER_TREE: &str = "/usr/lib/cvm-init/gpu-driver";

/// The character major of NVIDIA's GPU and control nodes (`/dev/nvidia0`, `/dev/nvidiactl`).
pub const NVIDIA_MAJOR: i64 = 195;

/// The control nodes a GPU container gets next to its GPUs, when present.
pub const CONTROL_NODES: &[&str] = &[
    "/dev/nvidiactl",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
    "/dev/nvidia-modeset",
];

/// Library name prefixes mounted into GPU containers: the `utility` and `compute` sets of
/// nvidia-container-toolkit (NVML, CUDA driver, PTX JIT, NVVM, OpenCL, …).
pub const LIBRARY_PREFIXES: &[&str] = &[
    "libnvidia-ml.so",
    "libnvidia-cfg.so",
    "libcuda.so",
    "libcudadebugger.so",
    "libnvidia-opencl.so",
    "libnvidia-gpucomp.so",
    "libnvidia-ptxjitcompiler.so",
    "libnvidia-fatbinaryloader.so",
    "libnvidia-allocator.so",
    "libnvidia-compiler.so",
    "libnvidia-pkcs11.so",
    "libnvidia-pkcs11-openssl3.so",
    "libnvidia-nvvm.so",
];

/// Tools mounted into GPU containers (exact names).
pub const BINARIES: &[&str] = &[
    "nvidia-smi",
    "nvidia-debugdump",
    "nvidia-persistenced",
    "nvidia-cuda-mps-control",
    "nvidia-cuda-mps-server",
];

/// Where libraries appear in the container (the multiarch directory glibc searches by
/// default, where `nvidia-ctk cdi generate` puts them on Debian-family hosts).
pub const CONTAINER_LIB_DIR: &str = "/usr/lib/x86_64-linux-gnu";
/// Where tools appear in the container.
pub const CONTAINER_BIN_DIR: &str = "/usr/bin";

/// The CDI version [`CdiSpec`] follows.
pub const CDI_VERSION: &str = "0.6.0";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// The driver tree could not be read.
    #[error("read the GPU driver tree {}", path.display())]
    ReadTree {
        /// Path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A driver file is a link out of its directory, or not a regular file.
    #[error("GPU driver file {} is not a regular file inside {}", path.display(), dir.display())]
    Escape {
        /// The entry.
        path: PathBuf,
        /// Its directory in the tree.
        dir: PathBuf,
    },
    /// `/proc/driver/nvidia/gpus/<pci>/information` has no `Device Minor`.
    #[error("{}: no `Device Minor:` line", path.display())]
    Information {
        /// Path.
        path: PathBuf,
    },
}

/// One read-only bind mount of a driver file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverMount {
    /// The file in the driver tree (a link is mounted as the file it names).
    pub host_path: PathBuf,
    /// Where it appears in the container.
    pub container_path: String,
}

/// Scans the driver tree at `root` for what GPU containers get: the [`LIBRARY_PREFIXES`]
/// files of `lib/` and the [`BINARIES`] of `bin/`, in name order. Entries may be symbolic
/// links (`libcuda.so.1 -> libcuda.so.550.54.15`) but must resolve to a regular file in the
/// same directory; anything else is an error (fail closed). A missing tree or directory is
/// empty (an image without the driver extension).
pub fn scan_driver_tree(root: &Path) -> Result<Vec<DriverMount>, GpuError> {
    let mut out = scan_dir(&root.join("lib"), CONTAINER_LIB_DIR, |name| {
        LIBRARY_PREFIXES.iter().any(|p| name.starts_with(p))
    })?;
    out.extend(scan_dir(&root.join("bin"), CONTAINER_BIN_DIR, |name| {
        BINARIES.contains(&name)
    })?);
    Ok(out)
}

fn scan_dir(
    dir: &Path,
    container_dir: &str,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<DriverMount>, GpuError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| GpuError::ReadTree { path, source }
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_err(dir)(e)),
    };
    let real_dir = fs::canonicalize(dir).map_err(read_err(dir))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(read_err(dir))?;
        if let Some(name) = entry.file_name().to_str()
            && wanted(name)
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(&name);
        let escape = || GpuError::Escape {
            path: path.clone(),
            dir: dir.to_owned(),
        };
        let real = fs::canonicalize(&path).map_err(|_| escape())?;
        let is_file = fs::metadata(&real).map(|m| m.is_file()).unwrap_or(false);
        if real.parent() != Some(real_dir.as_path()) || !is_file {
            return Err(escape());
        }
        out.push(DriverMount {
            host_path: path,
            container_path: format!("{container_dir}/{name}"),
        });
    }
    Ok(out)
}

/// What `/proc/driver/nvidia/gpus/<pci>/information` says about one GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInformation {
    /// `Device Minor` (the `N` of `/dev/nvidiaN`).
    pub minor: i64,
    /// `GPU UUID` (`GPU-…`), when the driver prints it.
    pub uuid: Option<String>,
}

/// Parses the driver's per-GPU `information` file (`path` names it in errors).
pub fn parse_gpu_information(path: &Path, text: &str) -> Result<GpuInformation, GpuError> {
    let field = |key: &str| {
        text.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_owned())
        })
    };
    let minor = field("Device Minor")
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|m| (0..=254).contains(m))
        .ok_or_else(|| GpuError::Information {
            path: path.to_owned(),
        })?;
    let uuid = field("GPU UUID").filter(|u| u.starts_with("GPU-"));
    Ok(GpuInformation { minor, uuid })
}

/// Is `name` (a `/dev` entry) a per-GPU node, `nvidia` followed by digits only?
pub fn is_gpu_node_name(name: &str) -> bool {
    name.strip_prefix("nvidia")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The per-GPU nodes (`/dev/nvidia[0-9]+`) that belong to no GPU the gate passed: a node of
/// another major or type, or a minor outside `attested_minors`. Every such node stops the boot.
pub fn unattested_nodes(nodes: &[HostDevice], attested_minors: &[i64]) -> Vec<HostDevice> {
    nodes
        .iter()
        .filter(|n| n.kind != 'c' || n.major != NVIDIA_MAJOR || !attested_minors.contains(&n.minor))
        .cloned()
        .collect()
}

/// A CDI specification (<https://github.com/cncf-tags/container-device-interface>, the
/// subset a grant uses): one device per granted GPU, the control nodes and driver mounts as
/// common edits. It records the grant (`gpu` log line, `cdi.json` next to the bundles); the
/// containers get the same nodes and mounts from `crate::spec::container_plan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CdiSpec {
    /// [`CDI_VERSION`].
    pub cdi_version: &'static str,
    /// `nvidia.com/gpu`.
    pub kind: &'static str,
    /// One per granted GPU, named by its index in the grant.
    pub devices: Vec<CdiDevice>,
    /// What every GPU container gets.
    pub container_edits: ContainerEdits,
}

/// One CDI device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CdiDevice {
    /// The index (`0`, `1`, …).
    pub name: String,
    /// Its node.
    pub container_edits: ContainerEdits,
}

/// CDI container edits (nodes and mounts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    /// Device nodes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<CdiDeviceNode>,
    /// Bind mounts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<CdiMount>,
}

/// A CDI device node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CdiDeviceNode {
    /// Path in the container (the same as on the host).
    pub path: String,
    /// `c`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Major.
    pub major: i64,
    /// Minor.
    pub minor: i64,
}

/// A CDI mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CdiMount {
    /// In the driver tree.
    pub host_path: PathBuf,
    /// In the container.
    pub container_path: String,
    /// Mount options (read-only bind).
    pub options: Vec<&'static str>,
}

/// The options of every driver mount (the same as `crate::spec` writes).
pub const DRIVER_MOUNT_OPTIONS: &[&str] = &["rbind", "rprivate", "nosuid", "nodev", "ro"];

fn cdi_node(dev: &HostDevice) -> CdiDeviceNode {
    CdiDeviceNode {
        path: dev.path.clone(),
        kind: dev.kind.to_string(),
        major: dev.major,
        minor: dev.minor,
    }
}

/// The CDI record of `grant`.
pub fn cdi_spec(grant: &GpuGrant) -> CdiSpec {
    CdiSpec {
        cdi_version: CDI_VERSION,
        kind: "nvidia.com/gpu",
        devices: grant
            .gpus
            .iter()
            .enumerate()
            .map(|(i, g)| CdiDevice {
                name: i.to_string(),
                container_edits: ContainerEdits {
                    device_nodes: vec![cdi_node(&g.node)],
                    mounts: Vec::new(),
                },
            })
            .collect(),
        container_edits: ContainerEdits {
            device_nodes: grant.control.iter().map(cdi_node).collect(),
            mounts: grant
                .mounts
                .iter()
                .map(|m| CdiMount {
                    host_path: m.host_path.clone(),
                    container_path: m.container_path.clone(),
                    options: DRIVER_MOUNT_OPTIONS.to_vec(),
                })
                .collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::spec::GrantedGpu;

    fn node(path: &str, major: i64, minor: i64) -> HostDevice {
        HostDevice {
            path: path.into(),
            kind: 'c',
            major,
            minor,
            mode: 0o666,
        }
    }

    /// A driver tree as the extension lays it out: versioned files, SONAME links, files the
    /// grant does not mount.
    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("lib");
        let bin = dir.path().join("bin");
        fs::create_dir_all(&lib).unwrap();
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(dir.path().join("firmware")).unwrap();
        for f in [
            "libcuda.so.550.54.15",
            "libnvidia-ml.so.550.54.15",
            "libnvidia-ptxjitcompiler.so.550.54.15",
            "libnvidia-glcore.so.550.54.15",
            "libEGL.so.1",
        ] {
            fs::write(lib.join(f), f).unwrap();
        }
        symlink("libcuda.so.550.54.15", lib.join("libcuda.so.1")).unwrap();
        symlink("libnvidia-ml.so.550.54.15", lib.join("libnvidia-ml.so.1")).unwrap();
        for f in ["nvidia-smi", "nvidia-persistenced", "nvidia-installer"] {
            fs::write(bin.join(f), f).unwrap();
        }
        dir
    }

    #[test]
    fn scan_mounts_the_compute_and_utility_files_in_name_order() {
        let dir = tree();
        let mounts = scan_driver_tree(dir.path()).unwrap();
        let targets: Vec<&str> = mounts.iter().map(|m| m.container_path.as_str()).collect();
        assert_eq!(
            targets,
            [
                "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
                "/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15",
                "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
                "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.15",
                "/usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so.550.54.15",
                "/usr/bin/nvidia-persistenced",
                "/usr/bin/nvidia-smi",
            ]
        );
        assert_eq!(mounts[0].host_path, dir.path().join("lib/libcuda.so.1"));
    }

    #[test]
    fn scan_of_a_missing_tree_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(scan_driver_tree(&dir.path().join("none")).unwrap(), []);
    }

    #[test]
    fn scan_refuses_links_out_of_the_tree_and_non_files() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("libcuda.so.9"), "x").unwrap();
        let dir = tree();
        symlink(
            outside.path().join("libcuda.so.9"),
            dir.path().join("lib/libcuda.so.9"),
        )
        .unwrap();
        let err = scan_driver_tree(dir.path()).unwrap_err();
        assert!(
            matches!(&err, GpuError::Escape { path, .. } if path.ends_with("libcuda.so.9")),
            "{err:?}"
        );
        let dir = tree();
        fs::create_dir(dir.path().join("bin/nvidia-debugdump")).unwrap();
        assert!(matches!(
            scan_driver_tree(dir.path()),
            Err(GpuError::Escape { .. })
        ));
        let dir = tree();
        symlink("missing", dir.path().join("lib/libnvidia-cfg.so.1")).unwrap();
        assert!(matches!(
            scan_driver_tree(dir.path()),
            Err(GpuError::Escape { .. })
        ));
    }

    #[test]
    fn information_gives_minor_and_uuid() {
        // The layout of the 550 driver's /proc/driver/nvidia/gpus/<pci>/information.
        let text = "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 0\nGPU UUID: \t GPU-4b3e0d9a-1c2f-4c39-9d4e-0a1b2c3d4e5f\nVideo BIOS: \t 96.00.74.00.1c\nBus Type: \t PCIe\nDMA Size: \t 52 bits\nDMA Mask: \t 0xfffffffffffff\nBus Location: \t 0000:41:00.0\nDevice Minor: \t 3\nGPU Excluded:\t No\n";
        let info = parse_gpu_information(Path::new("info"), text).unwrap();
        assert_eq!(info.minor, 3);
        assert_eq!(
            info.uuid.as_deref(),
            Some("GPU-4b3e0d9a-1c2f-4c39-9d4e-0a1b2c3d4e5f")
        );
        let err = parse_gpu_information(Path::new("info"), "Device Minor: 255\n").unwrap_err();
        assert!(matches!(err, GpuError::Information { .. }));
        parse_gpu_information(Path::new("info"), "Model: x\n").unwrap_err();
    }

    #[test]
    fn gpu_node_names() {
        assert!(is_gpu_node_name("nvidia0"));
        assert!(is_gpu_node_name("nvidia17"));
        for other in [
            "nvidiactl",
            "nvidia-uvm",
            "nvidia",
            "nvidia0a",
            "nvidia-caps",
        ] {
            assert!(!is_gpu_node_name(other), "{other}");
        }
    }

    #[test]
    fn nodes_without_an_attested_gpu_are_named() {
        let nodes = [
            node("/dev/nvidia0", 195, 0),
            node("/dev/nvidia1", 195, 1),
            node("/dev/nvidia2", 10, 2),
        ];
        let bad = unattested_nodes(&nodes, &[0]);
        let paths: Vec<&str> = bad.iter().map(|n| n.path.as_str()).collect();
        assert_eq!(paths, ["/dev/nvidia1", "/dev/nvidia2"]);
        assert_eq!(unattested_nodes(&nodes[..1], &[0]), []);
        assert_eq!(unattested_nodes(&nodes[..1], &[]).len(), 1);
    }

    #[test]
    fn cdi_json_records_devices_control_nodes_and_mounts() {
        let grant = GpuGrant {
            gpus: vec![GrantedGpu {
                node: node("/dev/nvidia0", 195, 0),
                uuid: Some("GPU-1".into()),
            }],
            control: vec![node("/dev/nvidiactl", 195, 255)],
            mounts: vec![DriverMount {
                host_path: PathBuf::from("/usr/lib/cvm-init/gpu-driver/lib/libcuda.so.1"),
                container_path: "/usr/lib/x86_64-linux-gnu/libcuda.so.1".into(),
            }],
        };
        let json = serde_json::to_value(cdi_spec(&grant)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "cdiVersion": "0.6.0",
                "kind": "nvidia.com/gpu",
                "devices": [{"name": "0", "containerEdits": {"deviceNodes": [
                    {"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0}]}}],
                "containerEdits": {
                    "deviceNodes": [{"path": "/dev/nvidiactl", "type": "c", "major": 195, "minor": 255}],
                    "mounts": [{"hostPath": "/usr/lib/cvm-init/gpu-driver/lib/libcuda.so.1",
                                "containerPath": "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
                                "options": ["rbind", "rprivate", "nosuid", "nodev", "ro"]}]
                }
            })
        );
    }
}
