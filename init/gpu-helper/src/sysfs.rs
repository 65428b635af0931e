//! Reads `<root>/bus/pci/devices/*/{vendor,class}` for the independent GPU count; the
//! classification itself is `nv_verify::pci` (pure, shared with the init).

use std::path::Path;

use nv_verify::pci::PciInventory;
use thiserror::Error;

/// Why the PCI inventory could not be read.
#[derive(Debug, Error)]
pub enum SysfsError {
    /// The devices directory cannot be listed.
    #[error("list {path}")]
    ListDevices {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Inventory of display-class functions under `sysfs_root` (normally `/sys`). A device whose
/// files cannot be read is listed as unreadable (and refused by the gate).
pub fn pci_inventory(sysfs_root: &Path) -> Result<PciInventory, SysfsError> {
    let dir = sysfs_root.join("bus/pci/devices");
    let entries = std::fs::read_dir(&dir).map_err(|source| SysfsError::ListDevices {
        path: dir.display().to_string(),
        source,
    })?;
    let mut devices: Vec<(String, String, String)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| SysfsError::ListDevices {
            path: dir.display().to_string(),
            source,
        })?;
        let address = entry.file_name().to_string_lossy().into_owned();
        let vendor = std::fs::read_to_string(entry.path().join("vendor")).unwrap_or_default();
        let class = std::fs::read_to_string(entry.path().join("class")).unwrap_or_default();
        devices.push((address, vendor, class));
    }
    Ok(PciInventory::from_devices(
        devices
            .iter()
            .map(|(a, v, c)| (a.as_str(), v.as_str(), c.as_str())),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(root: &Path, address: &str, vendor: &str, class: &str) {
        let dir = root.join("bus/pci/devices").join(address);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vendor"), format!("{vendor}\n")).unwrap();
        std::fs::write(dir.join("class"), format!("{class}\n")).unwrap();
    }

    #[test]
    fn fake_sysfs_tree_is_counted() {
        let root = tempfile::tempdir().unwrap();
        device(root.path(), "0000:00:00.0", "0x8086", "0x060000");
        device(root.path(), "0000:00:01.0", "0x1af4", "0x010000");
        device(root.path(), "0000:41:00.0", "0x10de", "0x030200");
        device(root.path(), "0000:42:00.0", "0x10de", "0x030200");
        device(root.path(), "0000:07:00.0", "0x10de", "0x068000");
        let inventory = pci_inventory(root.path()).unwrap();
        assert_eq!(inventory.nvidia, vec!["0000:41:00.0", "0000:42:00.0"]);
        assert!(inventory.refused().is_empty());
        device(root.path(), "0000:00:02.0", "0x1234", "0x030000");
        std::fs::create_dir_all(root.path().join("bus/pci/devices/0000:00:03.0")).unwrap();
        let inventory = pci_inventory(root.path()).unwrap();
        assert_eq!(inventory.refused(), vec!["0000:00:02.0", "0000:00:03.0"]);
    }

    #[test]
    fn missing_tree_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(
            pci_inventory(&root.path().join("nope")),
            Err(SysfsError::ListDevices { .. })
        ));
    }
}
