//! A minimal, bounds-checked reader for the section table of little-endian ELF64 files, enough
//! to find the `.modinfo` section of a kernel module. Every offset and size is checked against
//! the input; malformed input gives an [`ElfError`], never a panic.

/// `SHN_XINDEX`: the real section-name string table index is in section 0's `sh_link`.
const SHN_XINDEX: u16 = 0xffff;
/// `SHT_NOBITS`: the section occupies no space in the file.
const SHT_NOBITS: u32 = 8;
/// Size of an ELF64 file header.
const EHDR_LEN: usize = 64;
/// Size of an ELF64 section header.
const SHDR_LEN: usize = 64;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// The input is shorter than an ELF header or lacks the `\x7fELF` magic.
    #[error("Not an ELF file")]
    ReadIdent,
    /// The file is not 64-bit little-endian.
    #[error("Unsupported ELF class {class} or data encoding {encoding}")]
    ReadClass { class: u8, encoding: u8 },
    /// The section header table lies outside the file or has an odd entry size.
    #[error("Bad ELF section header table")]
    ReadSectionTable,
    /// A section lies outside the file.
    #[error("ELF section {index} lies outside the file")]
    ReadSection { index: usize },
    /// A section name lies outside the section-name string table.
    #[error("Bad name of ELF section {index}")]
    ReadSectionName { index: usize },
}

/// One section: its name and contents (empty for `SHT_NOBITS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section<'a> {
    /// Section name, e.g. `.modinfo` (lossy: raw bytes).
    pub name: &'a [u8],
    /// Section type (`sh_type`).
    pub kind: u32,
    /// Section contents.
    pub data: &'a [u8],
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let raw = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([raw[0], raw[1]]))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(raw))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let raw: [u8; 8] = bytes.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(raw))
}

/// The raw fields of one section header.
struct SectionHeader {
    name: u32,
    kind: u32,
    offset: u64,
    size: u64,
    link: u32,
}

/// The section header table of an ELF64 little-endian file.
struct SectionTable<'a> {
    image: &'a [u8],
    table: &'a [u8],
    entry_size: usize,
    count: usize,
}

impl<'a> SectionTable<'a> {
    fn header(&self, index: usize) -> Option<SectionHeader> {
        let at = index.checked_mul(self.entry_size)?;
        let raw = self.table.get(at..at.checked_add(SHDR_LEN)?)?;
        Some(SectionHeader {
            name: read_u32(raw, 0)?,
            kind: read_u32(raw, 4)?,
            offset: read_u64(raw, 24)?,
            size: read_u64(raw, 32)?,
            link: read_u32(raw, 40)?,
        })
    }

    fn contents(&self, index: usize, header: &SectionHeader) -> Result<&'a [u8], ElfError> {
        if header.kind == SHT_NOBITS {
            return Ok(&[]);
        }
        let error = ElfError::ReadSection { index };
        let start = usize::try_from(header.offset).map_err(|_| error.clone())?;
        let size = usize::try_from(header.size).map_err(|_| error.clone())?;
        let end = start.checked_add(size).ok_or(error.clone())?;
        self.image.get(start..end).ok_or(error)
    }
}

/// Parses the ELF header and returns the section table and section-name string table index.
fn section_table(image: &[u8]) -> Result<(SectionTable<'_>, usize), ElfError> {
    if image.len() < EHDR_LEN || image.get(..4) != Some(b"\x7fELF") {
        return Err(ElfError::ReadIdent);
    }
    let class = image.get(4).copied().unwrap_or(0);
    let encoding = image.get(5).copied().unwrap_or(0);
    if class != 2 || encoding != 1 {
        return Err(ElfError::ReadClass { class, encoding });
    }
    let table_error = || ElfError::ReadSectionTable;
    let shoff = read_u64(image, 0x28).ok_or_else(table_error)?;
    let entry_size = read_u16(image, 0x3a).ok_or_else(table_error)?;
    let count = read_u16(image, 0x3c).ok_or_else(table_error)?;
    let shstrndx = read_u16(image, 0x3e).ok_or_else(table_error)?;
    if shoff == 0 {
        return Ok((
            SectionTable {
                image,
                table: &[],
                entry_size: SHDR_LEN,
                count: 0,
            },
            0,
        ));
    }
    let entry_size = usize::from(entry_size);
    if entry_size < SHDR_LEN {
        return Err(ElfError::ReadSectionTable);
    }
    let start = usize::try_from(shoff).map_err(|_| ElfError::ReadSectionTable)?;
    let rest = image.get(start..).ok_or(ElfError::ReadSectionTable)?;
    let mut table = SectionTable {
        image,
        table: rest,
        entry_size,
        count: 1,
    };
    // Section 0 holds the real count and string table index when they overflow 16 bits.
    let first = table.header(0).ok_or(ElfError::ReadSectionTable)?;
    let count = match count {
        0 => usize::try_from(first.size).map_err(|_| ElfError::ReadSectionTable)?,
        n => usize::from(n),
    };
    let shstrndx = match shstrndx {
        SHN_XINDEX => usize::try_from(first.link).map_err(|_| ElfError::ReadSectionTable)?,
        n => usize::from(n),
    };
    let table_len = count
        .checked_mul(entry_size)
        .ok_or(ElfError::ReadSectionTable)?;
    table.table = rest.get(..table_len).ok_or(ElfError::ReadSectionTable)?;
    table.count = count;
    Ok((table, shstrndx))
}

/// All sections of `image`, in table order.
pub fn sections(image: &[u8]) -> Result<Vec<Section<'_>>, ElfError> {
    let (table, shstrndx) = section_table(image)?;
    if table.count == 0 {
        return Ok(Vec::new());
    }
    let names_header = table
        .header(shstrndx)
        .ok_or(ElfError::ReadSection { index: shstrndx })?;
    let names = table.contents(shstrndx, &names_header)?;
    let mut out = Vec::with_capacity(table.count);
    for index in 0..table.count {
        let header = table.header(index).ok_or(ElfError::ReadSection { index })?;
        let name_start =
            usize::try_from(header.name).map_err(|_| ElfError::ReadSectionName { index })?;
        let tail = names
            .get(name_start..)
            .ok_or(ElfError::ReadSectionName { index })?;
        let len = tail
            .iter()
            .position(|&b| b == 0)
            .ok_or(ElfError::ReadSectionName { index })?;
        out.push(Section {
            name: tail.get(..len).ok_or(ElfError::ReadSectionName { index })?,
            kind: header.kind,
            data: table.contents(index, &header)?,
        });
    }
    Ok(out)
}

/// The contents of the first section called `name`, if any.
pub fn find_section<'a>(image: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, ElfError> {
    Ok(sections(image)?
        .into_iter()
        .find(|section| section.name == name.as_bytes())
        .map(|section| section.data))
}

/// Builds a minimal relocatable ELF64 file with the given sections (test helper, also used by
/// the integration tests to create synthetic kernel modules).
#[doc(hidden)]
pub fn synthetic_elf(sections: &[(&str, &[u8])]) -> Vec<u8> {
    let mut names = vec![0u8];
    let mut name_offsets = Vec::new();
    for (name, _) in sections.iter().copied().chain([(".shstrtab", &[][..])]) {
        name_offsets.push(u32::try_from(names.len()).unwrap_or(0));
        names.extend_from_slice(name.as_bytes());
        names.push(0);
    }
    let mut out = vec![0u8; EHDR_LEN];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2; // ELFCLASS64
    out[5] = 1; // ELFDATA2LSB
    out[6] = 1; // EV_CURRENT
    out[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
    out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[0x34..0x36].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    let mut placed = Vec::new();
    for (_, data) in sections.iter().copied().chain([(".shstrtab", &names[..])]) {
        placed.push((out.len(), data.len()));
        out.extend_from_slice(data);
    }
    while !out.len().is_multiple_of(8) {
        out.push(0);
    }
    let shoff = out.len();
    let count = sections.len() + 2;
    out.extend_from_slice(&[0u8; SHDR_LEN]); // SHN_UNDEF
    for (index, (offset, size)) in placed.iter().enumerate() {
        let mut header = [0u8; SHDR_LEN];
        header[0..4].copy_from_slice(&name_offsets[index].to_le_bytes());
        let kind: u32 = if index + 1 == placed.len() { 3 } else { 1 }; // STRTAB / PROGBITS
        header[4..8].copy_from_slice(&kind.to_le_bytes());
        header[24..32].copy_from_slice(&(*offset as u64).to_le_bytes());
        header[32..40].copy_from_slice(&(*size as u64).to_le_bytes());
        header[48..56].copy_from_slice(&1u64.to_le_bytes()); // sh_addralign
        out.extend_from_slice(&header);
    }
    out[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
    out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    out[0x3c..0x3e].copy_from_slice(&u16::try_from(count).unwrap_or(0).to_le_bytes());
    out[0x3e..0x40].copy_from_slice(&u16::try_from(count - 1).unwrap_or(0).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_section() {
        let elf = synthetic_elf(&[(".text", b"\x90\x90"), (".modinfo", b"name=foo\0")]);
        assert_eq!(find_section(&elf, ".modinfo"), Ok(Some(&b"name=foo\0"[..])));
        assert_eq!(find_section(&elf, ".text"), Ok(Some(&b"\x90\x90"[..])));
        assert_eq!(find_section(&elf, ".data"), Ok(None));
        let names: Vec<&[u8]> = sections(&elf).unwrap().iter().map(|s| s.name).collect();
        assert_eq!(names, [&b""[..], b".text", b".modinfo", b".shstrtab"]);
    }

    #[test]
    fn typed_errors() {
        assert_eq!(find_section(b"", ".modinfo"), Err(ElfError::ReadIdent));
        let mut elf = synthetic_elf(&[(".modinfo", b"name=foo\0")]);
        elf[4] = 1;
        assert_eq!(
            find_section(&elf, ".modinfo"),
            Err(ElfError::ReadClass {
                class: 1,
                encoding: 1
            })
        );
        let mut elf = synthetic_elf(&[(".modinfo", b"name=foo\0")]);
        elf[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            find_section(&elf, ".modinfo"),
            Err(ElfError::ReadSectionTable)
        );
        let mut elf = synthetic_elf(&[(".modinfo", b"name=foo\0")]);
        let shoff =
            usize::try_from(u64::from_le_bytes(elf[0x28..0x30].try_into().unwrap())).unwrap();
        // Section 1's size runs past the end of the file.
        elf[shoff + SHDR_LEN + 32..shoff + SHDR_LEN + 40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            find_section(&elf, ".modinfo"),
            Err(ElfError::ReadSection { index: 1 })
        );
    }

    #[test]
    fn never_panics_on_mutations() {
        let elf = synthetic_elf(&[(".text", b"abc"), (".modinfo", b"name=foo\0depends=\0")]);
        for len in 0..=elf.len() {
            let _ = sections(&elf[..len]);
        }
        // Deterministic pseudo-random byte flips (xorshift), no extra dependency.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut mutated = elf.clone();
            let at = usize::try_from(state % elf.len() as u64).unwrap();
            mutated[at] = state.to_le_bytes()[4];
            let _ = sections(&mutated);
        }
    }
}
