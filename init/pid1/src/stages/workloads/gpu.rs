//! The GPU grant (first step of the `workloads` stage): the `/dev/nvidia[0-9]+` nodes are
//! checked against the GPUs the gate passed (a node of any other GPU stops the boot before a
//! container starts), and the passed GPUs become the [`GpuGrant`] that `container_plan` gives
//! to the services requesting GPUs: their nodes, the control nodes present, and read-only
//! mounts of the driver tree's libraries and tools. The grant's CDI record is logged and
//! written to [`CDI_RECORD`].

use std::fs;
use std::io;
use std::path::PathBuf;

use cvm_workload::gpu::{
    CONTROL_NODES, GpuError, cdi_spec, is_gpu_node_name, parse_gpu_information, scan_driver_tree,
    unattested_nodes,
};
use cvm_workload::spec::{GpuGrant, GrantedGpu, HostDevice};
use init_sys::devnode::stat_device;

use crate::host_devices::host_device;
use crate::stages::measure::gpu::AttestedGpus;

/// Where the grant's CDI JSON is written (for the record; nothing reads it back).
pub(crate) const CDI_RECORD: &str = "/run/cvm/gpu/cdi.json";

/// Errors of the grant.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GpuGrantError {
    #[error(
        "GPU device node(s) {nodes:?} belong to no GPU that passed attestation ({attested} passed): refusing to start workloads"
    )]
    Unattested { nodes: Vec<String>, attested: usize },
    #[error("read the driver's GPU list {path}")]
    ReadInformation {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("attested GPU {pci}")]
    Information {
        pci: String,
        #[source]
        source: GpuError,
    },
    #[error("attested GPU {pci} has no device node {path}")]
    MissingNode {
        pci: String,
        path: String,
        #[source]
        source: init_sys::devnode::DevNodeError,
    },
    #[error("scan the GPU driver tree")]
    DriverTree(#[source] GpuError),
}

/// Checks the GPU nodes and builds the grant for `attested`.
pub(crate) fn grant(attested: &AttestedGpus) -> Result<GpuGrant, GpuGrantError> {
    let paths = &attested.paths;
    let mut gpus = Vec::new();
    for pci in &attested.pci {
        let path = paths.driver_gpus.join(pci).join("information");
        let text = fs::read_to_string(&path).map_err(|source| GpuGrantError::ReadInformation {
            path: path.clone(),
            source,
        })?;
        let info =
            parse_gpu_information(&path, &text).map_err(|source| GpuGrantError::Information {
                pci: pci.clone(),
                source,
            })?;
        gpus.push((pci.clone(), info));
    }
    gpus.sort_by_key(|(_, info)| info.minor);
    // Every per-GPU node in /dev must be one of the attested GPUs'.
    let mut nodes = Vec::new();
    for entry in fs::read_dir(&paths.dev).into_iter().flatten().flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !is_gpu_node_name(&name) {
            continue;
        }
        let path = entry.path();
        let shown = path.display().to_string();
        match stat_device(&path) {
            Ok(node) => nodes.push(host_device(&shown, node)),
            // Not a device node: it names no GPU this boot attested either.
            Err(_) => nodes.push(HostDevice {
                path: shown,
                kind: '?',
                major: -1,
                minor: -1,
                mode: 0,
            }),
        }
    }
    nodes.sort_by(|a, b| a.path.cmp(&b.path));
    let minors: Vec<i64> = gpus.iter().map(|(_, info)| info.minor).collect();
    let bad = unattested_nodes(&nodes, &minors);
    if !bad.is_empty() {
        return Err(GpuGrantError::Unattested {
            nodes: bad
                .iter()
                .map(|n| format!("{} ({} {}:{})", n.path, n.kind, n.major, n.minor))
                .collect(),
            attested: attested.pci.len(),
        });
    }
    if gpus.is_empty() {
        return Ok(GpuGrant::default());
    }
    let mut grant = GpuGrant::default();
    for (pci, info) in gpus {
        let path = paths.dev.join(format!("nvidia{}", info.minor));
        let shown = format!("/dev/nvidia{}", info.minor);
        let node = stat_device(&path).map_err(|source| GpuGrantError::MissingNode {
            pci: pci.clone(),
            path: shown.clone(),
            source,
        })?;
        grant.gpus.push(GrantedGpu {
            node: host_device(&shown, node),
            uuid: info.uuid,
        });
    }
    for name in CONTROL_NODES {
        let rel = name.trim_start_matches("/dev/");
        if let Ok(node) = stat_device(&paths.dev.join(rel)) {
            grant.control.push(host_device(name, node));
        }
    }
    grant.mounts = scan_driver_tree(&paths.driver_tree).map_err(GpuGrantError::DriverTree)?;
    let cdi = serde_json::to_string(&cdi_spec(&grant)).unwrap_or_default();
    log::info!(
        "gpu: grant of {} attested GPU(s), {} driver file(s): {cdi}",
        grant.gpus.len(),
        grant.mounts.len()
    );
    let record = std::path::Path::new(CDI_RECORD);
    if let Some(dir) = record.parent()
        && let Err(e) = fs::create_dir_all(dir).and_then(|()| fs::write(record, &cdi))
    {
        log::warn!("gpu: write {CDI_RECORD}: {e}");
    }
    Ok(grant)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::measure::gpu::GpuPaths;

    fn attested(dev: &std::path::Path, gpus: &std::path::Path, pci: &[&str]) -> AttestedGpus {
        AttestedGpus {
            pci: pci.iter().map(|p| (*p).to_owned()).collect(),
            paths: GpuPaths {
                dev: dev.to_owned(),
                driver_gpus: gpus.to_owned(),
                driver_tree: gpus.join("no-tree"),
                ..GpuPaths::default()
            },
        }
    }

    /// Without GPU nodes and without attested GPUs there is nothing to grant.
    #[test]
    fn nothing_attested_nothing_granted() {
        let dev = tempfile::tempdir().unwrap();
        fs::write(dev.path().join("nvidiactl"), "").unwrap();
        let grant = grant(&attested(dev.path(), dev.path(), &[])).unwrap();
        assert_eq!(grant, GpuGrant::default());
    }

    /// A `nvidiaN` entry with no attested GPU stops the boot, named (a plain file here: the
    /// test cannot mknod; a node of another GPU is covered by `unattested_nodes`).
    #[test]
    fn a_gpu_node_without_attestation_is_refused() {
        let dev = tempfile::tempdir().unwrap();
        fs::write(dev.path().join("nvidia0"), "").unwrap();
        let err = grant(&attested(dev.path(), dev.path(), &[])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/nvidia0") && text.contains("(0 passed)"),
            "{text}"
        );
    }

    /// An attested GPU the driver does not list fails closed.
    #[test]
    fn an_attested_gpu_without_driver_information_is_refused() {
        let dev = tempfile::tempdir().unwrap();
        let err = grant(&attested(dev.path(), dev.path(), &["0000:41:00.0"])).unwrap_err();
        assert!(
            matches!(err, GpuGrantError::ReadInformation { .. }),
            "{err:?}"
        );
        let info = dev.path().join("0000:41:00.0");
        fs::create_dir_all(&info).unwrap();
        fs::write(info.join("information"), "Device Minor: \t 0\n").unwrap();
        // Listed by the driver, but its node is missing.
        let err = grant(&attested(dev.path(), dev.path(), &["0000:41:00.0"])).unwrap_err();
        assert!(matches!(err, GpuGrantError::MissingNode { .. }), "{err:?}");
    }
}
