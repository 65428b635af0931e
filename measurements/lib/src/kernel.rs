//! The kernel measurement of a QEMU direct boot (`specs/tdx.md` §6 RTMR1,
//! `specs/measured-boot-oracle.md` §4.1): QEMU edits the bzImage setup header before OVMF loads
//! it, and OVMF measures the PE Authenticode hash of the edited image.

use serde::Serialize;
use sha2::digest::Digest;
use sha2::{Sha256, Sha384};

use crate::bytes::{Reader, ShortRead, len_from_u32};
use crate::rtmr::Sha384Digest;

/// ACPI data size QEMU reserves below 4 GiB on q35.
pub const Q35_ACPI_DATA_SIZE: u64 = 0x28000;

const REAL_ADDR: u32 = 0x1_0000;
const CMDLINE_ADDR: u32 = 0x2_0000;
const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 0x2;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// A read ran past the end of the image.
    #[error("kernel image is truncated")]
    ReadField {
        /// Which field and where.
        #[source]
        source: ShortRead,
    },
    /// The image has no Linux setup header ("HdrS").
    #[error("kernel image has no Linux setup header")]
    FindSetupHeader,
    /// The boot protocol is older than 2.02 or the kernel does not load high.
    #[error(
        "boot protocol {protocol:#06x} with loadflags {loadflags:#04x} is not supported (need >= 0x0202, loaded high)"
    )]
    CheckBootProtocol {
        /// Protocol version.
        protocol: u16,
        /// loadflags byte.
        loadflags: u8,
    },
    /// The initrd does not fit below QEMU's initrd_max.
    #[error("initrd of {initrd_size} bytes exceeds initrd_max {initrd_max:#x}")]
    CheckInitrdSize {
        /// Initrd size.
        initrd_size: u64,
        /// The limit.
        initrd_max: u64,
    },
    /// The `vga=` value on the command line is not understood (QEMU refuses to boot).
    #[error("invalid vga= value {value:?} on the kernel command line")]
    ParseVgaMode {
        /// The value.
        value: String,
    },
    /// The image is not a PE file (no MZ / PE signature or unknown optional header).
    #[error("kernel image is not a PE image: {reason}")]
    CheckPeImage {
        /// What is missing.
        reason: &'static str,
    },
    /// A PE section lies outside the file.
    #[error("PE section {index} lies outside the image")]
    CheckPeSection {
        /// Section index.
        index: usize,
    },
}

impl From<ShortRead> for KernelError {
    fn from(source: ShortRead) -> Self {
        Self::ReadField { source }
    }
}

/// VM parameters that change QEMU's setup-header edits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectBootParams {
    /// Guest RAM in bytes.
    pub memory_size: u64,
    /// Initrd size in bytes, if an initrd is passed.
    pub initrd_size: Option<u64>,
    /// The `-append` command line (only `vga=` matters here).
    pub cmdline: String,
    /// ACPI data size below 4 GiB ([`Q35_ACPI_DATA_SIZE`] on q35).
    pub acpi_data_size: u64,
}

impl DirectBootParams {
    /// q35 parameters.
    pub fn q35(memory_size: u64, initrd_size: Option<u64>, cmdline: impl Into<String>) -> Self {
        Self {
            memory_size,
            initrd_size,
            cmdline: cmdline.into(),
            acpi_data_size: Q35_ACPI_DATA_SIZE,
        }
    }
}

fn put_u16(image: &mut [u8], offset: usize, value: u16) {
    if let Some(slot) = image.get_mut(offset..offset + 2) {
        slot.copy_from_slice(&value.to_le_bytes());
    }
}

fn put_u32(image: &mut [u8], offset: usize, value: u32) {
    if let Some(slot) = image.get_mut(offset..offset + 4) {
        slot.copy_from_slice(&value.to_le_bytes());
    }
}

fn parse_vga(cmdline: &str) -> Result<Option<u16>, KernelError> {
    let Some(value) = cmdline
        .split(' ')
        .filter_map(|arg| arg.strip_prefix("vga="))
        .next()
    else {
        return Ok(None);
    };
    let mode = match value {
        "normal" => Some(0xFFFF),
        "ext" => Some(0xFFFE),
        "ask" => Some(0xFFFD),
        v => {
            let (digits, radix) = if let Some(hex) = v.strip_prefix("0x").or(v.strip_prefix("0X")) {
                (hex, 16)
            } else if v.len() > 1
                && let Some(oct) = v.strip_prefix('0')
            {
                (oct, 8)
            } else {
                (v, 10)
            };
            u32::from_str_radix(digits, radix)
                .ok()
                .map(|m| u16::try_from(m & 0xFFFF).unwrap_or(u16::MAX))
        }
    };
    mode.map(Some).ok_or_else(|| KernelError::ParseVgaMode {
        value: value.to_owned(),
    })
}

/// Applies QEMU's `x86_load_linux` setup-header edits (boot protocol ≥ 2.02, loaded high) and
/// returns the image OVMF measures.
pub fn patch_setup_header(
    kernel: &[u8],
    params: &DirectBootParams,
) -> Result<Vec<u8>, KernelError> {
    let mut r = Reader::at(kernel, 0x202);
    if &r.array::<4>("setup header magic")? != b"HdrS" {
        return Err(KernelError::FindSetupHeader);
    }
    let protocol = r.u16("boot protocol")?;
    let loadflags = Reader::at(kernel, 0x211).u8("loadflags")?;
    if protocol < 0x202 || loadflags & 1 == 0 {
        return Err(KernelError::CheckBootProtocol {
            protocol,
            loadflags,
        });
    }
    let initrd_addr_max = Reader::at(kernel, 0x22C).u32("initrd_addr_max")?;
    let xloadflags = if protocol >= 0x20C {
        Reader::at(kernel, 0x236).u16("xloadflags")?
    } else {
        0
    };
    let vga = parse_vga(&params.cmdline)?;

    let mut image = kernel.to_vec();
    if let Some(mode) = vga {
        put_u16(&mut image, 0x1FA, mode);
    }
    image[0x210] = 0xB0; // type_of_loader
    image[0x211] = loadflags | 0x80; // CAN_USE_HEAP
    put_u16(
        &mut image,
        0x224,
        u16::try_from(CMDLINE_ADDR - REAL_ADDR - 0x200).unwrap_or(0),
    );
    put_u32(&mut image, 0x228, CMDLINE_ADDR);
    if let Some(initrd_size) = params.initrd_size {
        let mut initrd_max = if protocol >= 0x20C && xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G != 0 {
            0xFFFF_FFFF
        } else if protocol >= 0x203 {
            u64::from(initrd_addr_max)
        } else {
            0x37FF_FFFF
        };
        let below_4g = if params.memory_size >= 0xB000_0000 {
            0x8000_0000
        } else {
            params.memory_size
        };
        let limit = below_4g.saturating_sub(params.acpi_data_size);
        if initrd_max >= limit {
            initrd_max = limit.saturating_sub(1);
        }
        if initrd_size > initrd_max {
            return Err(KernelError::CheckInitrdSize {
                initrd_size,
                initrd_max,
            });
        }
        let ramdisk_image = (initrd_max - initrd_size) & !0xFFF;
        put_u32(
            &mut image,
            0x218,
            u32::try_from(ramdisk_image).unwrap_or(u32::MAX),
        );
        put_u32(
            &mut image,
            0x21C,
            u32::try_from(initrd_size).unwrap_or(u32::MAX),
        );
    }
    Ok(image)
}

/// PE Authenticode hash as edk2 computes it for a measured image, plus the zero padding of the
/// input to a multiple of 8 bytes that OVMF's in-memory copy adds (`specs/tdx.md` §6).
pub fn authenticode<D: Digest>(pe: &[u8]) -> Result<Vec<u8>, KernelError> {
    let not_pe = |reason| KernelError::CheckPeImage { reason };
    if pe.get(..2) != Some(b"MZ") {
        return Err(not_pe("no MZ signature"));
    }
    let pe_offset = len_from_u32(Reader::at(pe, 0x3C).u32("e_lfanew")?);
    let mut r = Reader::at(pe, pe_offset);
    if &r.array::<4>("PE signature")? != b"PE\0\0" {
        return Err(not_pe("no PE signature"));
    }
    let coff = r.position();
    let sections = usize::from(Reader::at(pe, coff + 2).u16("number of sections")?);
    let optional_size = usize::from(Reader::at(pe, coff + 16).u16("optional header size")?);
    let optional = coff + 20;
    let magic = Reader::at(pe, optional).u16("optional header magic")?;
    let (rva_count_offset, directories) = match magic {
        0x10B => (optional + 92, optional + 96),
        0x20B => (optional + 108, optional + 112),
        _ => return Err(not_pe("unknown optional header magic")),
    };
    let size_of_headers = len_from_u32(Reader::at(pe, optional + 60).u32("size of headers")?);
    let checksum = optional + 64;
    let rva_count = Reader::at(pe, rva_count_offset).u32("number of rva and sizes")?;
    let cert_dir = directories + 4 * 8;
    let header = |range: std::ops::Range<usize>| {
        pe.get(range.clone()).ok_or(KernelError::ReadField {
            source: ShortRead {
                field: "PE headers",
                offset: range.start,
                needed: range.len(),
                available: pe.len().saturating_sub(range.start),
            },
        })
    };

    let mut hasher = D::new();
    hasher.update(header(0..checksum)?);
    let cert_size = if rva_count > 4 {
        hasher.update(header(checksum + 4..cert_dir)?);
        hasher.update(header(cert_dir + 8..size_of_headers.max(cert_dir + 8))?);
        len_from_u32(Reader::at(pe, cert_dir + 4).u32("certificate table size")?)
    } else {
        hasher.update(header(checksum + 4..size_of_headers.max(checksum + 4))?);
        0
    };

    let mut table = Reader::at(pe, optional + optional_size);
    let mut raw: Vec<(usize, usize, usize)> = Vec::new();
    for index in 0..sections {
        let entry = table.take(40, "section header")?;
        let size = entry
            .get(16..20)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, |b| len_from_u32(u32::from_le_bytes(b)));
        let pointer = entry
            .get(20..24)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, |b| len_from_u32(u32::from_le_bytes(b)));
        if size > 0 {
            raw.push((pointer, size, index));
        }
    }
    raw.sort_unstable();
    let mut hashed = size_of_headers;
    for (pointer, size, index) in raw {
        let data = pointer
            .checked_add(size)
            .and_then(|end| pe.get(pointer..end))
            .ok_or(KernelError::CheckPeSection { index })?;
        hasher.update(data);
        hashed = hashed.saturating_add(size);
    }
    // Trailing data after the sections, except the certificate table.
    if let Some(trailing) = pe
        .len()
        .checked_sub(cert_size)
        .and_then(|end| pe.get(hashed..end))
    {
        hasher.update(trailing);
    }
    let remainder = pe.len() % 8;
    if remainder != 0 {
        hasher.update(&[0u8; 8][..8 - remainder]);
    }
    Ok(hasher.finalize().to_vec())
}

/// SHA-384 Authenticode of a PE image.
pub fn authenticode_sha384(pe: &[u8]) -> Result<Sha384Digest, KernelError> {
    let digest = authenticode::<Sha384>(pe)?;
    Ok(Sha384Digest::from_slice(&digest).unwrap_or_default())
}

/// SHA-256 Authenticode of a PE image (for cross-checks with pesign / osslsigncode).
pub fn authenticode_sha256(pe: &[u8]) -> Result<[u8; 32], KernelError> {
    let digest = authenticode::<Sha256>(pe)?;
    Ok(<[u8; 32]>::try_from(digest.as_slice()).unwrap_or_default())
}

/// The RTMR1 kernel event digest: Authenticode SHA-384 of the QEMU-patched bzImage.
pub fn kernel_measurement(
    kernel: &[u8],
    params: &DirectBootParams,
) -> Result<Sha384Digest, KernelError> {
    authenticode_sha384(&patch_setup_header(kernel, params)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BZIMAGE: &[u8] = include_bytes!("../testdata/synthetic_bzImage");
    const BZIMAGE_XLF03: &[u8] = include_bytes!("../testdata/synthetic_bzImage_xlf03");
    const INITRD_LEN: u64 = 12288;

    fn u32_at(image: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(image[offset..offset + 4].try_into().unwrap())
    }

    #[test]
    fn header_edits_follow_qemu() {
        let params = DirectBootParams::q35(1 << 30, Some(INITRD_LEN), "console=ttyS0");
        let patched = patch_setup_header(BZIMAGE, &params).unwrap();
        assert_eq!(patched[0x210], 0xB0);
        assert_eq!(patched[0x211], BZIMAGE[0x211] | 0x80);
        assert_eq!(&patched[0x224..0x226], &0xFE00u16.to_le_bytes());
        assert_eq!(u32_at(&patched, 0x228), 0x2_0000);
        // xloadflags 0x7f: initrd_max = 1 GiB - 0x28000 - 1.
        let initrd_max = (1u64 << 30) - 0x28000 - 1;
        assert_eq!(
            u64::from(u32_at(&patched, 0x218)),
            (initrd_max - INITRD_LEN) & !0xFFF
        );
        assert_eq!(u64::from(u32_at(&patched, 0x21C)), INITRD_LEN);
        let changed: Vec<_> = (0..BZIMAGE.len())
            .filter(|&i| patched[i] != BZIMAGE[i])
            .collect();
        assert!(
            changed.iter().all(|&i| (0x210..0x22C).contains(&i)),
            "{changed:x?}"
        );
    }

    #[test]
    fn initrd_max_uses_xloadflags_bit_1() {
        // xloadflags 0x03 still has CAN_BE_LOADED_ABOVE_4G: same result as 0x7f (dstack-mr would
        // use 0x37FFFFFF here because it tests bit 0x40).
        for memory in [1u64 << 30, 2 << 30, 4 << 30] {
            let params = DirectBootParams::q35(memory, Some(INITRD_LEN), "");
            let a = patch_setup_header(BZIMAGE, &params).unwrap();
            let b = patch_setup_header(BZIMAGE_XLF03, &params).unwrap();
            assert_eq!(a[0x218..0x220], b[0x218..0x220], "{memory:#x}");
        }
        // Without bit 1 the header's initrd_addr_max (0x7fffffff) applies.
        let mut old = BZIMAGE.to_vec();
        old[0x236] = 0x01;
        let params = DirectBootParams::q35(4 << 30, Some(INITRD_LEN), "");
        let patched = patch_setup_header(&old, &params).unwrap();
        let initrd_max = 0x8000_0000u64 - 0x28000 - 1;
        assert_eq!(
            u64::from(u32_at(&patched, 0x218)),
            (initrd_max - INITRD_LEN) & !0xFFF
        );
    }

    #[test]
    fn kernel_digest_depends_on_ram_only_below_the_pci_hole() {
        let digest = |memory, initrd: Option<u64>, cmdline: &str| {
            kernel_measurement(BZIMAGE, &DirectBootParams::q35(memory, initrd, cmdline)).unwrap()
        };
        let two = digest(2 << 30, Some(INITRD_LEN), "");
        assert_eq!(
            two,
            digest(4 << 30, Some(INITRD_LEN), "a=b"),
            "2 GiB == 4 GiB"
        );
        assert_ne!(two, digest(1 << 30, Some(INITRD_LEN), ""));
        assert_ne!(two, digest(2 << 30, Some(INITRD_LEN + 4096), ""));
        assert_ne!(two, digest(2 << 30, None, ""));
        assert_ne!(two, digest(2 << 30, Some(INITRD_LEN), "vga=0x317"));
    }

    #[test]
    fn vga_modes() {
        assert_eq!(parse_vga("a vga=normal b").unwrap(), Some(0xFFFF));
        assert_eq!(parse_vga("vga=ext").unwrap(), Some(0xFFFE));
        assert_eq!(parse_vga("vga=ask").unwrap(), Some(0xFFFD));
        assert_eq!(parse_vga("vga=0x317").unwrap(), Some(0x317));
        assert_eq!(parse_vga("vga=791").unwrap(), Some(791));
        assert_eq!(parse_vga("vga=017").unwrap(), Some(0o17));
        assert_eq!(parse_vga("novga=1").unwrap(), None);
        assert_eq!(
            parse_vga("vga=foo"),
            Err(KernelError::ParseVgaMode {
                value: "foo".to_owned()
            })
        );
    }

    /// Known answers for the synthetic image, cross-checked with osslsigncode 2.9 (Debian; sign
    /// with `-h sha256` / `-h sha384`, then `verify` prints the "Calculated message digest") for
    /// the original image and for the image with QEMU's edits at 2 GiB and a 12 KiB initrd.
    #[test]
    fn authenticode_known_answers() {
        assert_eq!(
            hex::encode(authenticode_sha256(BZIMAGE).unwrap()),
            SYNTHETIC_SHA256
        );
        assert_eq!(
            authenticode_sha384(BZIMAGE).unwrap().to_string(),
            SYNTHETIC_SHA384
        );
        let params = DirectBootParams::q35(2 << 30, Some(INITRD_LEN), "");
        assert_eq!(
            kernel_measurement(BZIMAGE, &params).unwrap().to_string(),
            SYNTHETIC_PATCHED_2G_SHA384
        );
    }

    const SYNTHETIC_SHA256: &str =
        "7e5d12a93cab106cfbe3d55632e973b22df616a614906ba0cb65194a2cb921ac";
    const SYNTHETIC_SHA384: &str = "33ca76edb205850a736301103fb8979b4dbce5267c1147e6f7ef530e93021a42f3908d6b1de6d2494eb11c3d4fb13136";
    const SYNTHETIC_PATCHED_2G_SHA384: &str = "fe5516a1c95cda97400c8d4a13e162c784708268653649949af990f39a7fcce6a27019af198dae30d4dd0cab6cab9a9c";

    #[test]
    fn errors_are_typed() {
        let mut no_hdrs = BZIMAGE.to_vec();
        no_hdrs[0x202] = 0;
        let params = DirectBootParams::q35(1 << 30, None, "");
        assert_eq!(
            patch_setup_header(&no_hdrs, &params),
            Err(KernelError::FindSetupHeader)
        );
        let mut old = BZIMAGE.to_vec();
        old[0x206..0x208].copy_from_slice(&0x201u16.to_le_bytes());
        assert!(matches!(
            patch_setup_header(&old, &params),
            Err(KernelError::CheckBootProtocol {
                protocol: 0x201,
                ..
            })
        ));
        let params = DirectBootParams::q35(64 << 20, Some(128 << 20), "");
        assert!(matches!(
            patch_setup_header(BZIMAGE, &params),
            Err(KernelError::CheckInitrdSize { .. })
        ));
        let mut not_pe = BZIMAGE.to_vec();
        not_pe[0] = b'X';
        assert_eq!(
            authenticode_sha384(&not_pe),
            Err(KernelError::CheckPeImage {
                reason: "no MZ signature"
            })
        );
        assert!(matches!(
            patch_setup_header(&BZIMAGE[..0x200], &DirectBootParams::q35(1 << 30, None, "")),
            Err(KernelError::ReadField { .. })
        ));
    }

    #[test]
    fn parsers_never_panic() {
        let params = DirectBootParams::q35(2 << 30, Some(INITRD_LEN), "vga=1");
        for end in 0..0x400 {
            let _ = kernel_measurement(&BZIMAGE[..end], &params);
        }
        for i in 0..0x300 {
            let mut image = BZIMAGE.to_vec();
            image[i] ^= 0xff;
            let _ = kernel_measurement(&image, &params);
        }
    }
}
