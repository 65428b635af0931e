//! The host side of a compose `devices:` mapping: stat each host node (type, major, minor,
//! mode) so the runtime spec grants exactly that node in the device filter and makes it in
//! the container's `/dev`, and refuse the nodes no container gets unless privileged
//! (`cvm_workload::devices::check_grant`: every block device, `/dev/mem`, `/dev/kmsg`, the
//! consoles, and the nodes found here by name, whose numbers the kernel assigns at run time).

use std::collections::BTreeMap;
use std::path::Path;

use cvm_workload::compose::Service;
use cvm_workload::devices::{DevicesError, Protected};
use cvm_workload::spec::HostDevice;
use init_sys::devnode::{DevNodeError, DeviceKind, DeviceNode, stat_device};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HostDevicesError {
    #[error("device mapping of {path}")]
    Stat {
        service: String,
        path: String,
        #[source]
        source: DevNodeError,
    },
    #[error("refused device mapping")]
    Refuse {
        service: String,
        #[source]
        source: DevicesError,
    },
}

/// Nodes with run-time numbers that are never granted: (path or `/dev` name prefix, what).
const PROTECTED: &[(&str, &str)] = &[
    (
        "/dev/tdx_guest",
        "/dev/tdx_guest (TD reports: the guest API's, not a container's)",
    ),
    (
        "/dev/vport",
        "a virtio port (the results channel, the host API)",
    ),
    ("/dev/vsock", "/dev/vsock"),
    (
        "/dev/mapper/control",
        "the device-mapper control node (the data disk's mapping)",
    ),
    (
        "/dev/snapshot",
        "/dev/snapshot (hibernation image: all of memory)",
    ),
    ("/dev/tpm", "a TPM"),
    (
        "/dev/nvidia",
        "an NVIDIA node (GPUs are granted by deploy.resources after attestation)",
    ),
    ("/dev/uinput", "/dev/uinput"),
    ("/dev/sev", "an AMD SEV guest node (attestation reports)"),
    (
        "/dev/watchdog",
        "a watchdog (opening it arms a reset of the VM)",
    ),
    ("/dev/nvme", "an NVMe controller node (raw disk commands)"),
    ("/dev/ng", "an NVMe generic node (raw disk commands)"),
    ("/dev/bsg", "a block SCSI generic node (raw disk commands)"),
    ("/dev/vfio", "a VFIO node (passed-through devices)"),
    ("/dev/vhost-", "a vhost node"),
];

/// The runtime-spec device for the node `node` found at `path`.
pub(crate) fn host_device(path: &str, node: DeviceNode) -> HostDevice {
    HostDevice {
        path: path.to_owned(),
        kind: match node.kind {
            DeviceKind::Char => 'c',
            DeviceKind::Block => 'b',
        },
        major: i64::from(node.major),
        minor: i64::from(node.minor),
        mode: node.mode,
    }
}

/// The protected nodes present on this VM (a `PROTECTED` entry names a node, or every `/dev`
/// entry whose name starts with it, and the nodes of such a directory).
fn protected() -> Vec<Protected> {
    let mut out = Vec::new();
    let mut add = |path: &Path, what: &str| {
        if let Ok(node) = stat_device(path) {
            let dev = host_device("", node);
            out.push(Protected {
                kind: dev.kind,
                major: dev.major,
                minor: dev.minor,
                what: what.to_owned(),
            });
        }
    };
    let entries: Vec<_> = std::fs::read_dir("/dev")
        .map(|dir| dir.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    for (name, what) in PROTECTED {
        add(Path::new(name), what);
        for entry in &entries {
            if entry
                .to_str()
                .is_some_and(|e| e != *name && e.starts_with(name))
            {
                add(entry, what);
            }
            // A directory of such nodes (`/dev/vfio/`, `/dev/bsg/`): its entries too.
            if entry.to_str().is_some_and(|e| e.starts_with(name)) && entry.is_dir() {
                for child in std::fs::read_dir(entry).into_iter().flatten().flatten() {
                    add(&child.path(), what);
                }
            }
        }
    }
    out
}

/// The host nodes of `service`'s `devices:` mappings, by host path; a refused or absent node
/// fails the service (a privileged one may map any node).
pub(crate) fn resolve(service: &Service) -> Result<BTreeMap<String, HostDevice>, HostDevicesError> {
    let mut map = BTreeMap::new();
    if service.devices.is_empty() {
        return Ok(map);
    }
    let protected = if service.privileged {
        Vec::new()
    } else {
        protected()
    };
    for mapping in &service.devices {
        let node =
            stat_device(Path::new(&mapping.host)).map_err(|source| HostDevicesError::Stat {
                service: service.name.clone(),
                path: mapping.host.clone(),
                source,
            })?;
        let dev = host_device(&mapping.host, node);
        if !service.privileged {
            cvm_workload::devices::check_grant(&mapping.host, &dev, &protected).map_err(
                |source| HostDevicesError::Refuse {
                    service: service.name.clone(),
                    source,
                },
            )?;
        }
        map.insert(mapping.host.clone(), dev);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:f1f178776ddc8034e550bff87cac9ba352599418998c352b73b71a5e7b8983a7";

    fn service(devices: &str, privileged: bool) -> Service {
        let yaml = format!(
            "services:\n  a:\n    image: busybox@{D}\n    privileged: {privileged}\n    devices: [{devices}]\n"
        );
        let policy = cvm_workload::compose::ComposePolicy {
            allow_privileged: true,
            ..Default::default()
        };
        let app = cvm_workload::compose::parse(None, &yaml, &BTreeMap::new(), &policy).unwrap();
        app.services[0].clone()
    }

    #[test]
    fn mappings_resolve_to_the_host_node_or_a_refusal() {
        let map = resolve(&service("\"/dev/null:/dev/nothing:rw\"", false)).unwrap();
        let null = &map["/dev/null"];
        assert_eq!((null.kind, null.major, null.minor), ('c', 1, 3));
        match resolve(&service("\"/dev/kmsg\"", false)) {
            Err(HostDevicesError::Refuse {
                source: DevicesError::RefuseGrant { reason, .. },
                ..
            }) => assert!(reason.contains("/dev/kmsg"), "{reason}"),
            other => panic!("unexpected {other:?}"),
        }
        // A privileged service may map it.
        let map = resolve(&service("\"/dev/kmsg\"", true)).unwrap();
        assert_eq!((map["/dev/kmsg"].major, map["/dev/kmsg"].minor), (1, 11));
        assert!(matches!(
            resolve(&service("\"/dev/cvm-absent\"", false)),
            Err(HostDevicesError::Stat { .. })
        ));
    }
}
