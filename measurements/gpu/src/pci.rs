//! The independent GPU count: display-class PCI functions (class `0x03xxxx`) by vendor, read
//! by the caller from `/sys/bus/pci/devices/*/{vendor,class}`. Every display function must be
//! NVIDIA (`0x10de`); any other is refused (dstack-guest.md §9). Pure: the caller does the I/O.

use serde::{Deserialize, Serialize};

/// NVIDIA's PCI vendor id.
pub const NVIDIA_VENDOR: u16 = 0x10de;

/// The display-class functions found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciInventory {
    /// NVIDIA display-class functions (PCI addresses, sorted).
    pub nvidia: Vec<String>,
    /// Display-class functions of other vendors (any → refuse).
    pub foreign: Vec<String>,
    /// Entries whose vendor or class text did not parse (treated as foreign by callers).
    pub unreadable: Vec<String>,
}

fn parse_hex(text: &str) -> Option<u32> {
    let text = text.trim();
    let digits = text.strip_prefix("0x").unwrap_or(text);
    u32::from_str_radix(digits, 16).ok()
}

impl PciInventory {
    /// Builds the inventory from `(address, vendor file text, class file text)` triples.
    pub fn from_devices<'a>(
        devices: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
    ) -> Self {
        let mut inventory = Self::default();
        for (address, vendor, class) in devices {
            let (Some(vendor), Some(class)) = (parse_hex(vendor), parse_hex(class)) else {
                inventory.unreadable.push(address.to_owned());
                continue;
            };
            if class >> 16 != 0x03 {
                continue;
            }
            if vendor == u32::from(NVIDIA_VENDOR) {
                inventory.nvidia.push(address.to_owned());
            } else {
                inventory.foreign.push(address.to_owned());
            }
        }
        inventory.nvidia.sort();
        inventory.foreign.sort();
        inventory.unreadable.sort();
        inventory
    }

    /// Addresses the gate must refuse: foreign display devices and unreadable entries.
    pub fn refused(&self) -> Vec<String> {
        self.foreign
            .iter()
            .chain(&self.unreadable)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_nvidia_display_functions_and_flags_others() {
        let inventory = PciInventory::from_devices([
            ("0000:00:00.0", "0x8086\n", "0x060000\n"),
            ("0000:00:02.0", "0x1234\n", "0x030000\n"),
            ("0000:41:00.0", "0x10de\n", "0x030200\n"),
            ("0000:05:00.0", "0x10de\n", "0x068000\n"),
            ("0000:01:00.0", "0x10de\n", "0x030000\n"),
            ("0000:09:00.0", "garbage", "0x030000"),
        ]);
        assert_eq!(inventory.nvidia, vec!["0000:01:00.0", "0000:41:00.0"]);
        assert_eq!(inventory.foreign, vec!["0000:00:02.0"]);
        assert_eq!(inventory.refused(), vec!["0000:00:02.0", "0000:09:00.0"]);
    }
}
