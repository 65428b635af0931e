//! Bounds-checked little-endian reader shared by the binary parsers.

/// A read past the end of the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} needs {needed} bytes at offset {offset:#x}, {available} available")]
pub struct ShortRead {
    /// What was being read.
    pub field: &'static str,
    /// Absolute offset of the read.
    pub offset: usize,
    /// Bytes the field needs.
    pub needed: usize,
    /// Bytes left at that offset.
    pub available: usize,
}

/// Cursor over a byte slice; every read is checked and never panics.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    pub(crate) fn at(data: &'a [u8], pos: usize) -> Self {
        Self { data, pos }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        self.data.get(self.pos..).unwrap_or_default()
    }

    /// The input up to `end` (clamped to its length), for a nested reader with absolute offsets.
    pub(crate) fn window(&self, end: usize) -> &'a [u8] {
        self.data.get(..end).unwrap_or(self.data)
    }

    pub(crate) fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], ShortRead> {
        let bytes = self
            .pos
            .checked_add(len)
            .and_then(|end| self.data.get(self.pos..end))
            .ok_or(ShortRead {
                field,
                offset: self.pos,
                needed: len,
                available: self.remaining(),
            })?;
        self.pos += len;
        Ok(bytes)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], ShortRead> {
        let bytes = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, ShortRead> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, ShortRead> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, ShortRead> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, ShortRead> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn digest(
        &mut self,
        field: &'static str,
    ) -> Result<crate::rtmr::Sha384Digest, ShortRead> {
        Ok(crate::rtmr::Sha384Digest(self.array(field)?))
    }
}

/// Converts a `u32` length from the input into `usize` (lossless on the 32/64-bit targets we
/// build for; saturates elsewhere so the following bounds check fails cleanly).
pub(crate) fn len_from_u32(len: u32) -> usize {
    usize::try_from(len).unwrap_or(usize::MAX)
}

/// Serde helper: byte arrays and vectors as lowercase hex strings.
pub(crate) mod hex_bytes {
    use serde::Serializer;

    pub(crate) fn serialize<S: Serializer, T: AsRef<[u8]>>(
        bytes: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounds_checked() {
        let data = [1u8, 2, 3, 4, 5];
        let mut r = Reader::new(&data);
        assert_eq!(r.u16("a"), Ok(0x0201));
        assert_eq!(
            r.u32("b"),
            Err(ShortRead {
                field: "b",
                offset: 2,
                needed: 4,
                available: 3
            })
        );
        assert_eq!(r.position(), 2, "a failed read does not advance");
        assert_eq!(r.take(usize::MAX, "c").unwrap_err().needed, usize::MAX);
        assert_eq!(r.rest(), &[3, 4, 5]);
        let r = Reader::at(&data, 9);
        assert_eq!(r.remaining(), 0);
        assert_eq!(r.rest(), &[] as &[u8]);
    }
}
