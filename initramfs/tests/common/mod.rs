//! Helpers shared by the integration tests: synthetic kernel modules and module trees.

#![cfg(test)]
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

use cvm_initramfs::elf::synthetic_elf;

/// A synthetic kernel module: an ELF64 file whose `.modinfo` holds `name=`, `depends=` and,
/// if given, `softdep=`.
pub fn fake_ko(name: &str, depends: &[&str], softdep: Option<&str>) -> Vec<u8> {
    let mut modinfo = format!("license=GPL\0depends={}\0", depends.join(","));
    if let Some(softdep) = softdep {
        modinfo.push_str(&format!("softdep={softdep}\0"));
    }
    modinfo.push_str(&format!(
        "name={name}\0vermagic=6.1.0-test SMP mod_unload\0"
    ));
    synthetic_elf(&[(".text", b"\xc3"), (".modinfo", modinfo.as_bytes())])
}

/// Creates `<dir>/lib/modules/<kver>` with the given relative files and returns its path.
pub fn module_tree(dir: &Path, kver: &str, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let root = dir.join("lib/modules").join(kver);
    for (relative, data) in files {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// A deterministic xorshift64 generator, so the garbage tests need no extra dependency.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next_u64() % u64::try_from(bound).unwrap()).unwrap()
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64().to_le_bytes()[3]
    }
}
