//! Whole-image tests: determinism, the cpio round trip, compression, the modules.load contract
//! and overlays.

#[cfg(test)]
mod common;

#[cfg(test)]
mod tests {

    use std::io::Read as _;
    use std::path::Path;

    use super::common::{fake_ko, module_tree};
    use cvm_initramfs::cpio::{self, Entry, EntryKind};
    use cvm_initramfs::{
        BuildError, Compression, ImageSpec, MODULES_LOAD_PATH, Manifest, build_image, build_overlay,
    };

    const KVER: &str = "6.1.0-test";

    struct Fixture {
        _dir: tempfile::TempDir,
        spec: ImageSpec,
    }

    fn fixture(compression: Compression) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let init = dir.path().join("cvm-init");
        std::fs::write(&init, b"\x7fELF fake init").unwrap();
        std::fs::write(dir.path().join("ca.pem"), b"-----BEGIN CERTIFICATE-----\n").unwrap();
        std::fs::write(dir.path().join("tool"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            dir.path().join("tool"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let tree = module_tree(
            dir.path(),
            KVER,
            &[
                ("kernel/drivers/md/dm-mod.ko", fake_ko("dm_mod", &[], None)),
                (
                    "kernel/drivers/md/dm-crypt.ko",
                    fake_ko("dm_crypt", &["dm-mod"], None),
                ),
                (
                    "kernel/crypto/xts.ko",
                    fake_ko("xts", &[], Some("pre: ecb")),
                ),
                ("kernel/crypto/ecb.ko", fake_ko("ecb", &[], None)),
            ],
        );
        let manifest_path = dir.path().join("manifest.toml");
        std::fs::write(
            &manifest_path,
            r#"
modules = ["dm-crypt", "xts"]
ca_bundle = "ca.pem"

[[file]]
dest = "/etc/hostname"
content = "cvm\n"

[[file]]
dest = "/usr/bin/tool"
src = "tool"

[[file]]
dest = "/etc/secret-ish"
content = "x"
mode = 0o600

[[symlink]]
dest = "/bin/sh"
target = "/init"

[[dir]]
dest = "/tmp"
mode = 0o1777

[[node]]
dest = "/dev/console"
type = "char"
major = 5
minor = 1
"#,
        )
        .unwrap();
        let manifest = Manifest::from_path(&manifest_path).unwrap();
        Fixture {
            spec: ImageSpec {
                init,
                module_tree: Some(tree),
                manifest,
                source_date_epoch: 1_700_000_000,
                compression,
            },
            _dir: dir,
        }
    }

    fn decompress(bytes: &[u8], compression: Compression) -> Vec<u8> {
        match compression {
            Compression::None => bytes.to_vec(),
            Compression::Gzip => {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(bytes)
                    .read_to_end(&mut out)
                    .unwrap();
                out
            }
            Compression::Zstd => zstd::stream::decode_all(bytes).unwrap(),
        }
    }

    fn find<'a>(entries: &'a [Entry], path: &str) -> &'a Entry {
        entries
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("{path} missing"))
    }

    #[test]
    fn two_builds_are_identical() {
        for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let first = fixture(compression);
            let second = fixture(compression);
            // Different temporary directories, same contents: the output must not differ.
            assert_ne!(first.spec.init, second.spec.init);
            let a = build_image(&first.spec).unwrap();
            let b = build_image(&second.spec).unwrap();
            assert_eq!(a, b, "{compression}");
            assert_eq!(a, build_image(&first.spec).unwrap());
        }
    }

    #[test]
    fn mtime_changes_output() {
        let mut fixture = fixture(Compression::Gzip);
        let before = build_image(&fixture.spec).unwrap();
        fixture.spec.source_date_epoch += 1;
        let after = build_image(&fixture.spec).unwrap();
        assert_ne!(before, after);
        let entries = cpio::read_newc(&decompress(&after, Compression::Gzip)).unwrap();
        assert!(entries.iter().all(|e| e.mtime == 1_700_000_001));
    }

    #[test]
    fn source_date_epoch_must_fit_newc() {
        let mut fixture = fixture(Compression::None);
        fixture.spec.source_date_epoch = u64::from(u32::MAX) + 1;
        assert!(matches!(
            build_image(&fixture.spec),
            Err(BuildError::CheckSourceDateEpoch { .. })
        ));
    }

    #[test]
    fn compressed_outputs_hold_the_same_archive() {
        let plain = build_image(&fixture(Compression::None).spec).unwrap();
        for compression in [Compression::Gzip, Compression::Zstd] {
            let packed = build_image(&fixture(compression).spec).unwrap();
            assert_ne!(packed, plain);
            assert_eq!(decompress(&packed, compression), plain, "{compression}");
        }
    }

    #[test]
    fn archive_round_trip() {
        let fixture = fixture(Compression::None);
        let bytes = build_image(&fixture.spec).unwrap();
        let raw = cpio::read_newc_raw(&bytes).unwrap();
        let entries: Vec<Entry> = raw.iter().map(|r| r.entry.clone()).collect();

        // Sorted, unique, every parent present before its children.
        let mut seen = std::collections::BTreeSet::new();
        for (index, entry) in entries.iter().enumerate() {
            if index > 0 {
                assert_eq!(
                    cpio::compare_paths(&entries[index - 1].path, &entry.path),
                    std::cmp::Ordering::Less
                );
            }
            if let Some((parent, _)) = entry.path.rsplit_once('/') {
                assert!(seen.contains(parent), "{} before its parent", entry.path);
                assert!(find(&entries, parent).is_directory());
            }
            seen.insert(entry.path.clone());
        }
        // Fixed ownership, sequential inodes.
        for (index, raw) in raw.iter().enumerate() {
            assert_eq!((raw.uid, raw.gid), (0, 0));
            assert_eq!(raw.ino, u32::try_from(index + 1).unwrap());
        }

        let init = find(&entries, "init");
        assert_eq!(init.mode, 0o755);
        assert_eq!(init.data(), Some(&b"\x7fELF fake init"[..]));
        assert_eq!(
            find(&entries, "etc/ssl/certs/ca-certificates.crt").data(),
            Some(&b"-----BEGIN CERTIFICATE-----\n"[..])
        );
        let hostname = find(&entries, "etc/hostname");
        assert_eq!(
            (hostname.mode, hostname.data()),
            (0o644, Some(&b"cvm\n"[..]))
        );
        assert_eq!(find(&entries, "usr/bin/tool").mode, 0o755);
        assert_eq!(find(&entries, "etc/secret-ish").mode, 0o600);
        assert_eq!(find(&entries, "usr").mode, 0o755);
        assert_eq!(find(&entries, "tmp").mode, 0o1777);
        assert_eq!(
            find(&entries, "bin/sh").kind,
            EntryKind::Symlink("/init".into())
        );
        assert_eq!(
            find(&entries, "dev/console").kind,
            EntryKind::CharDevice { major: 5, minor: 1 }
        );
        let module = find(
            &entries,
            "lib/modules/6.1.0-test/kernel/drivers/md/dm-crypt.ko",
        );
        assert_eq!(module.mode, 0o644);
        assert_eq!(
            module.data(),
            Some(&fake_ko("dm_crypt", &["dm-mod"], None)[..])
        );

        // Writing the entries read back gives the same bytes.
        assert_eq!(cpio::write_newc(&entries), bytes);
    }

    #[test]
    fn modules_load_lists_modules_in_order() {
        let fixture = fixture(Compression::None);
        let entries = cpio::read_newc(&build_image(&fixture.spec).unwrap()).unwrap();
        let load = find(&entries, MODULES_LOAD_PATH.trim_start_matches('/'));
        let text = std::str::from_utf8(load.data().unwrap()).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .collect();
        assert_eq!(
            lines,
            [
                "/lib/modules/6.1.0-test/kernel/drivers/md/dm-mod.ko",
                "/lib/modules/6.1.0-test/kernel/drivers/md/dm-crypt.ko",
                "/lib/modules/6.1.0-test/kernel/crypto/ecb.ko",
                "/lib/modules/6.1.0-test/kernel/crypto/xts.ko",
            ]
        );
        // Every listed path is in the image.
        for line in lines {
            assert!(
                find(&entries, line.trim_start_matches('/'))
                    .data()
                    .is_some()
            );
        }
    }

    #[test]
    fn image_without_modules_has_empty_load_list() {
        let mut fixture = fixture(Compression::None);
        fixture.spec.module_tree = None;
        fixture.spec.manifest.modules.clear();
        let entries = cpio::read_newc(&build_image(&fixture.spec).unwrap()).unwrap();
        let load = find(&entries, "etc/cvm/modules.load").data().unwrap();
        assert!(
            std::str::from_utf8(load)
                .unwrap()
                .lines()
                .all(|l| l.starts_with('#'))
        );
        assert!(!entries.iter().any(|e| e.path.starts_with("lib/modules")));
    }

    #[test]
    fn build_errors_are_typed() {
        let mut no_tree = fixture(Compression::None);
        no_tree.spec.module_tree = None;
        assert!(matches!(
            build_image(&no_tree.spec),
            Err(BuildError::CheckModuleTree { modules }) if modules == ["dm-crypt", "xts"]
        ));

        let mut missing = fixture(Compression::None);
        missing.spec.manifest.modules.push("ghost".into());
        match build_image(&missing.spec) {
            Err(BuildError::ResolveModules {
                source: cvm_initramfs::modules::ModulesError::FindModule { name, .. },
            }) => assert_eq!(name, "ghost"),
            other => panic!("unexpected {other:?}"),
        }

        let mut no_init = fixture(Compression::None);
        no_init.spec.init = Path::new("/nonexistent/init").to_owned();
        assert!(matches!(
            build_image(&no_init.spec),
            Err(BuildError::ReadInit { path, .. }) if path == Path::new("/nonexistent/init")
        ));

        let mut duplicate = fixture(Compression::None);
        duplicate.spec.manifest =
            Manifest::from_toml_str("[[file]]\ndest = \"/init\"\ncontent = \"again\"\n").unwrap();
        assert!(matches!(
            build_image(&duplicate.spec),
            Err(BuildError::ArrangeEntries {
                source: cpio::CpioError::DuplicatePath { path }
            }) if path == "init"
        ));

        let mut escape = fixture(Compression::None);
        escape.spec.manifest =
            Manifest::from_toml_str("[[file]]\ndest = \"/etc/../x\"\ncontent = \"\"\n").unwrap();
        assert!(matches!(
            build_image(&escape.spec),
            Err(BuildError::ArrangeEntries {
                source: cpio::CpioError::InvalidPath { .. }
            })
        ));
    }

    #[test]
    fn overlay_appended_to_image_overrides_files() {
        let fixture = fixture(Compression::None);
        let mut image = build_image(&fixture.spec).unwrap();
        let overlay = build_overlay(&[
            ("/etc/hostname", b"test-vm\n", 0o644),
            ("/opt/test/payload", b"new", 0o755),
        ])
        .unwrap();
        let overlay_entries = cpio::read_newc(&overlay).unwrap();
        let paths: Vec<&str> = overlay_entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["etc", "etc/hostname", "opt", "opt/test", "opt/test/payload"]
        );
        assert!(overlay_entries.iter().all(|e| e.mtime == 0));

        cpio::append_archive(&mut image, &overlay);
        let entries = cpio::read_newc(&image).unwrap();
        // As the kernel does, the last entry for a path wins.
        let last = entries
            .iter()
            .rev()
            .find(|e| e.path == "etc/hostname")
            .unwrap();
        assert_eq!(last.data(), Some(&b"test-vm\n"[..]));
        assert!(matches!(
            build_overlay(&[("/a", b"1", 0o644), ("a", b"2", 0o644)]),
            Err(BuildError::ArrangeEntries { .. })
        ));
    }

    #[test]
    fn default_manifest_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifest.toml");
        let manifest = Manifest::from_path(&path).unwrap();
        for name in [
            "virtio_pci",
            "virtio_console",
            "virtio_blk",
            "virtio_net",
            "dm_mod",
            "dm_crypt",
            "dm_integrity",
            "configfs",
            "gcm",
            "aesni_intel",
            "button",
            "evdev",
        ] {
            assert!(manifest.modules.iter().any(|m| m == name), "{name}");
        }
        assert!(manifest.nodes.iter().any(|n| n.dest == "/dev/console"));
    }
}
