//! Module dependency resolution on synthetic trees: the `modules.dep` path and the ELF
//! `.modinfo` path, soft dependencies, built-in modules, and the typed errors.

#[cfg(test)]
mod common;

#[cfg(test)]
mod tests {

    use super::common::{fake_ko, module_tree};
    use cvm_initramfs::modules::{IndexSource, ModuleTree, ModulesError};

    const KVER: &str = "6.1.0-test";

    fn names<S: AsRef<str>>(tree: &mut ModuleTree, request: &[S]) -> Vec<String> {
        tree.resolve(request)
            .unwrap()
            .modules
            .into_iter()
            .map(|m| m.name)
            .collect()
    }

    /// A tree shaped like the Debian one, without modules.dep: virtio_pci and dm-integrity chains,
    /// `-`/`_` mixed in file names and depends=, xts with `softdep pre: ecb`.
    fn elf_tree(dir: &std::path::Path) -> std::path::PathBuf {
        module_tree(
            dir,
            KVER,
            &[
                (
                    "kernel/drivers/virtio/virtio.ko",
                    fake_ko("virtio", &[], None),
                ),
                (
                    "kernel/drivers/virtio/virtio_ring.ko",
                    fake_ko("virtio_ring", &[], None),
                ),
                (
                    "kernel/drivers/virtio/virtio_pci.ko",
                    fake_ko(
                        "virtio_pci",
                        &["virtio_ring", "virtio_pci_modern_dev", "virtio"],
                        None,
                    ),
                ),
                (
                    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
                    fake_ko("virtio_pci_modern_dev", &[], None),
                ),
                ("kernel/drivers/md/dm-mod.ko", fake_ko("dm_mod", &[], None)),
                (
                    "kernel/drivers/md/dm-bufio.ko",
                    fake_ko("dm_bufio", &["dm-mod"], None),
                ),
                (
                    "kernel/drivers/md/dm-integrity.ko",
                    fake_ko("dm_integrity", &["dm-mod", "dm-bufio"], None),
                ),
                (
                    "kernel/crypto/xts.ko",
                    fake_ko("xts", &[], Some("pre: ecb")),
                ),
                ("kernel/crypto/ecb.ko", fake_ko("ecb", &[], None)),
                (
                    "kernel/lib/libcrc32c.ko",
                    fake_ko("libcrc32c", &[], Some("pre: crc32c")),
                ),
                (
                    "modules.builtin",
                    b"kernel/crypto/aes_generic.ko\n".to_vec(),
                ),
            ],
        )
    }

    #[test]
    fn modinfo_tree_orders_dependencies_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = ModuleTree::open(&elf_tree(dir.path())).unwrap();
        assert_eq!(tree.index_source(), IndexSource::Modinfo);
        assert_eq!(tree.kernel_version(), KVER);
        let resolution = tree
            .resolve(&["virtio-pci", "dm_integrity", "xts", "aes_generic", "virtio"])
            .unwrap();
        let order: Vec<&str> = resolution.modules.iter().map(|m| m.name.as_str()).collect();
        // Dependencies sorted by name, each before its user; every module once.
        assert_eq!(
            order,
            [
                "virtio",
                "virtio_pci_modern_dev",
                "virtio_ring",
                "virtio_pci",
                "dm_mod",
                "dm_bufio",
                "dm_integrity",
                "ecb",
                "xts"
            ]
        );
        assert_eq!(
            resolution.modules[6].relative_path,
            "kernel/drivers/md/dm-integrity.ko"
        );
        assert_eq!(resolution.builtin, ["aes_generic"]);
    }

    #[test]
    fn modinfo_tree_order_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let root = elf_tree(dir.path());
        let first = names(
            &mut ModuleTree::open(&root).unwrap(),
            &["dm_integrity", "xts"],
        );
        let second = names(
            &mut ModuleTree::open(&root).unwrap(),
            &["dm_integrity", "xts"],
        );
        assert_eq!(first, second);
        // Request order matters only among unrelated modules.
        let swapped = names(
            &mut ModuleTree::open(&root).unwrap(),
            &["xts", "dm_integrity"],
        );
        assert_eq!(
            swapped,
            ["ecb", "xts", "dm_mod", "dm_bufio", "dm_integrity"]
        );
    }

    #[test]
    fn softdep_alias_is_skipped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = ModuleTree::open(&elf_tree(dir.path())).unwrap();
        let resolution = tree.resolve(&["libcrc32c"]).unwrap();
        assert_eq!(resolution.modules.len(), 1);
        assert_eq!(
            resolution.skipped_softdeps,
            [("libcrc32c".to_owned(), "crc32c".to_owned())]
        );
    }

    #[test]
    fn modules_dep_is_preferred() {
        let dir = tempfile::tempdir().unwrap();
        // The .ko files are not ELF at all: with modules.dep they are never parsed.
        let root = module_tree(
            dir.path(),
            KVER,
            &[
                ("kernel/a/dm-crypt.ko", b"not elf".to_vec()),
                ("kernel/a/dm-mod.ko", b"not elf".to_vec()),
                ("kernel/c/xts.ko", b"not elf".to_vec()),
                ("kernel/c/ecb.ko", b"not elf".to_vec()),
                (
                    "modules.dep",
                    b"kernel/a/dm-crypt.ko: kernel/a/dm-mod.ko\nkernel/a/dm-mod.ko:\n\
                  kernel/c/xts.ko:\nkernel/c/ecb.ko:\n"
                        .to_vec(),
                ),
                (
                    "modules.softdep",
                    b"# comment\nsoftdep xts pre: ecb\n".to_vec(),
                ),
            ],
        );
        let mut tree = ModuleTree::open(&root).unwrap();
        assert_eq!(tree.index_source(), IndexSource::ModulesDep);
        assert_eq!(
            names(&mut tree, &["dm-crypt", "xts"]),
            ["dm_mod", "dm_crypt", "ecb", "xts"]
        );
    }

    #[test]
    fn malformed_modules_dep_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let root = module_tree(
            dir.path(),
            KVER,
            &[("modules.dep", b"kernel/a.ko:\nno colon here\n".to_vec())],
        );
        match ModuleTree::open(&root) {
            Err(ModulesError::ParseIndex { line, .. }) => assert_eq!(line, 2),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn missing_module_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = module_tree(
            dir.path(),
            KVER,
            &[("kernel/a.ko", fake_ko("a", &["ghost-dep"], None))],
        );
        let mut tree = ModuleTree::open(&root).unwrap();
        match tree.resolve(&["a"]) {
            Err(ModulesError::FindModule { name, required_by }) => {
                assert_eq!(name, "ghost_dep");
                assert_eq!(required_by.as_deref(), Some("a"));
            }
            other => panic!("unexpected {other:?}"),
        }
        match tree.resolve(&["nope"]) {
            Err(error @ ModulesError::FindModule { .. }) => {
                assert_eq!(error.to_string(), "Find module \"nope\"");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn cycle_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = module_tree(
            dir.path(),
            KVER,
            &[
                ("kernel/a.ko", fake_ko("a", &["b"], None)),
                ("kernel/b.ko", fake_ko("b", &["c"], None)),
                ("kernel/c.ko", fake_ko("c", &[], Some("pre: a"))),
            ],
        );
        let mut tree = ModuleTree::open(&root).unwrap();
        match tree.resolve(&["a"]) {
            Err(ModulesError::OrderModules { name, chain }) => {
                assert_eq!(name, "a");
                assert_eq!(chain, ["a", "b", "c", "a"]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn post_softdep_loads_after() {
        let dir = tempfile::tempdir().unwrap();
        let root = module_tree(
            dir.path(),
            KVER,
            &[
                ("kernel/a.ko", fake_ko("a", &[], Some("pre: b post: c"))),
                ("kernel/b.ko", fake_ko("b", &[], None)),
                // c depends on a: not a cycle, as post soft dependencies load after a.
                ("kernel/c.ko", fake_ko("c", &["a"], None)),
            ],
        );
        let mut tree = ModuleTree::open(&root).unwrap();
        assert_eq!(names(&mut tree, &["a"]), ["b", "a", "c"]);
    }

    #[test]
    fn name_mismatch_and_bad_elf_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let root = module_tree(
            dir.path(),
            KVER,
            &[
                ("kernel/a.ko", fake_ko("other", &[], None)),
                ("kernel/b.ko", b"\x7fELF garbage".to_vec()),
                ("kernel/c.ko.xz", b"xz".to_vec()),
            ],
        );
        let mut tree = ModuleTree::open(&root).unwrap();
        assert!(matches!(
            tree.resolve(&["a"]),
            Err(ModulesError::CheckModuleName { found, .. }) if found == "other"
        ));
        assert!(matches!(
            tree.resolve(&["b"]),
            Err(ModulesError::ParseModuleElf { .. })
        ));
        assert!(matches!(
            tree.resolve(&["c"]),
            Err(ModulesError::DecompressModuleFormat { .. })
        ));
    }

    #[test]
    fn duplicate_module_files_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = module_tree(
            dir.path(),
            KVER,
            &[
                ("kernel/x/a.ko", fake_ko("a", &[], None)),
                ("updates/a.ko", fake_ko("a", &[], None)),
            ],
        );
        let mut tree = ModuleTree::open(&root).unwrap();
        match tree.resolve(&["a"]) {
            Err(ModulesError::FindUniqueModule { name, paths }) => {
                assert_eq!(name, "a");
                assert_eq!(paths.len(), 2);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn zstd_module_is_decompressed() {
        let dir = tempfile::tempdir().unwrap();
        let plain = fake_ko("z", &[], None);
        let packed = zstd::stream::encode_all(&plain[..], 3).unwrap();
        let root = module_tree(dir.path(), KVER, &[("kernel/z.ko.zst", packed)]);
        let mut tree = ModuleTree::open(&root).unwrap();
        let resolution = tree.resolve(&["z"]).unwrap();
        assert_eq!(resolution.modules[0].relative_path, "kernel/z.ko.zst");
        let read = cvm_initramfs::modules::read_module(&root.join("kernel/z.ko.zst")).unwrap();
        assert_eq!(read, plain);
    }

    /// Resolves the default manifest against a real Debian module tree, when one is given:
    /// `CVM_MODULE_TREE=/tmp/k/x/lib/modules/6.1.0-50-cloud-amd64 cargo test -- --ignored`.
    #[test]
    #[ignore = "needs a Debian kernel module tree in CVM_MODULE_TREE"]
    fn debian_tree_resolves_default_manifest() {
        let root = std::env::var_os("CVM_MODULE_TREE").expect("CVM_MODULE_TREE");
        let manifest_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifest.toml");
        let manifest = cvm_initramfs::Manifest::from_path(&manifest_path).unwrap();
        let mut tree = ModuleTree::open(std::path::Path::new(&root)).unwrap();
        let order = names(&mut tree, &manifest.modules);
        let position = |name: &str| order.iter().position(|n| n == name).unwrap();
        assert!(position("virtio") < position("virtio_pci"));
        assert!(position("dm_mod") < position("dm_crypt"));
        assert!(position("ecb") < position("xts"));
        assert!(position("cryptd") < position("crypto_simd"));
        assert!(position("crypto_simd") < position("aesni_intel"));
        for name in &manifest.modules {
            assert!(order.contains(name), "{name}");
        }
    }
}
