//! The cpio and ELF readers never panic: truncations, byte flips and random bytes all end in a
//! typed error or a successful parse.

#[cfg(test)]
mod common;

#[cfg(test)]
mod tests {

    use super::common::{XorShift, fake_ko};
    use cvm_initramfs::cpio::{self, Entry};
    use cvm_initramfs::elf;
    use cvm_initramfs::modules::parse_modinfo;

    fn sample_archive() -> Vec<u8> {
        cpio::write_newc(&[
            Entry::file("init", vec![0x7f; 37], 0o755, 5),
            Entry::file("etc/cvm/modules.load", b"/lib/a.ko\n".to_vec(), 0o644, 5),
            Entry::symlink("bin/sh", "/init", 5),
        ])
    }

    #[test]
    fn cpio_reader_survives_truncation() {
        let archive = sample_archive();
        for len in 0..archive.len() {
            // Every proper prefix is either an error or (trailing padding cut) the full archive.
            if let Ok(entries) = cpio::read_newc(&archive[..len]) {
                assert_eq!(entries, cpio::read_newc(&archive).unwrap());
            }
        }
    }

    #[test]
    fn cpio_reader_survives_mutation_and_noise() {
        let archive = sample_archive();
        let mut rng = XorShift(0x5eed_cafe_f00d_d00d);
        for _ in 0..20_000 {
            let mut mutated = archive.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(mutated.len());
                mutated[at] = rng.byte();
            }
            let _ = cpio::read_newc(&mutated);
        }
        for _ in 0..5_000 {
            let len = rng.below(600);
            let mut noise: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            // Half of the inputs start with a valid magic, to get past the first check.
            if len >= 6 && rng.below(2) == 0 {
                noise[..6].copy_from_slice(b"070701");
            }
            let _ = cpio::read_newc(&noise);
        }
        // Huge sizes in the header must not allocate or overflow.
        let mut huge = archive.clone();
        huge[6 + 6 * 8..6 + 7 * 8].copy_from_slice(b"ffffffff");
        assert!(matches!(
            cpio::read_newc(&huge),
            Err(cpio::CpioError::ReadTruncated { .. })
        ));
        let mut huge = archive;
        huge[6 + 11 * 8..6 + 12 * 8].copy_from_slice(b"ffffffff");
        assert!(matches!(
            cpio::read_newc(&huge),
            Err(cpio::CpioError::ReadTruncated { .. })
        ));
    }

    #[test]
    fn elf_reader_survives_garbage() {
        let module = fake_ko(
            "virtio_blk",
            &["virtio", "virtio_ring"],
            Some("pre: a post: b"),
        );
        for len in 0..module.len() {
            if let Ok(Some(section)) = elf::find_section(&module[..len], ".modinfo") {
                let _ = parse_modinfo(section);
            }
        }
        let mut rng = XorShift(0x0123_4567_89ab_cdef);
        for _ in 0..20_000 {
            let mut mutated = module.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(mutated.len());
                mutated[at] = rng.byte();
            }
            if let Ok(Some(section)) = elf::find_section(&mutated, ".modinfo") {
                let _ = parse_modinfo(section);
            }
        }
        for _ in 0..5_000 {
            let len = rng.below(400);
            let mut noise: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            if len >= 6 {
                noise[..6].copy_from_slice(b"\x7fELF\x02\x01");
            }
            let _ = elf::sections(&noise);
        }
    }
}
