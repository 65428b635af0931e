//! Minimal bounds-checked DER walking for the two places where bytes must be taken as they
//! are: the signed TBSCertificate and the Blackwell TcbInfo FWID.

/// Header length and content length of the TLV at the start of `bytes` (definite lengths
/// only, at most 4 length bytes).
pub(crate) fn header(bytes: &[u8]) -> Option<(usize, usize)> {
    let first_len = *bytes.get(1)?;
    if first_len < 0x80 {
        return Some((2, usize::from(first_len)));
    }
    let count = usize::from(first_len & 0x7f);
    if count == 0 || count > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..count {
        len = (len << 8) | usize::from(*bytes.get(2 + i)?);
    }
    let total = (2 + count).checked_add(len)?;
    if total > bytes.len() {
        return None;
    }
    Some((2 + count, len))
}

/// One TLV: `(tag, content, whole TLV)`.
pub(crate) type Tlv<'a> = (u8, &'a [u8], &'a [u8]);

/// Splits `bytes` into its TLV children (single-byte tags only).
pub(crate) fn children(bytes: &[u8]) -> Option<Vec<Tlv<'_>>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let tag = rest[0];
        if tag & 0x1f == 0x1f {
            return None;
        }
        let (h, len) = header(rest)?;
        out.push((tag, rest.get(h..h + len)?, rest.get(..h + len)?));
        rest = rest.get(h + len..)?;
    }
    Some(out)
}

/// The first FWID digest (48 bytes) of a TcbInfo value whose fwids list is `[6]`.
pub(crate) fn blackwell_fwid(value: &[u8]) -> Option<[u8; 48]> {
    let top = children(value)?;
    let (tag, seq, _) = top.first()?;
    if *tag != 0x30 || top.len() != 1 {
        return None;
    }
    let (_, fwids, _) = children(seq)?
        .into_iter()
        .find(|(tag, _, _)| *tag == 0xA6)?;
    let mut list = children(fwids)?;
    // IMPLICIT tagging puts the FWID SEQUENCEs directly inside [6]; accept an explicit
    // SEQUENCE OF wrapper too.
    if let Some((0x30, inner, _)) = list.first().copied()
        && children(inner)?.first().is_some_and(|(t, _, _)| *t == 0x30)
    {
        list = children(inner)?;
    }
    let (tag, fwid, _) = list.first()?;
    if *tag != 0x30 {
        return None;
    }
    let parts = children(fwid)?;
    match parts.as_slice() {
        [(0x06, _, _), (0x04, digest, _)] => <[u8; 48]>::try_from(*digest).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_rejects_overrun_and_indefinite() {
        assert_eq!(header(&[0x30, 0x03, 1, 2, 3]), Some((2, 3)));
        assert_eq!(header(&[0x30, 0x82, 0x01]), None);
        assert_eq!(header(&[0x30, 0x80]), None);
        assert_eq!(header(&[0x30, 0x81, 0x05, 0]), None);
    }

    #[test]
    fn blackwell_fwid_takes_first_entry() {
        let digest = [0x5a; 48];
        let mut fwid = vec![
            0x30, 0x3d, 0x06, 0x09, 0x60, 0x86, 0x48, 1, 0x65, 3, 4, 2, 2,
        ];
        fwid.extend_from_slice(&[0x04, 48]);
        fwid.extend_from_slice(&digest);
        let mut list = vec![0xA6, u8::try_from(2 * fwid.len()).unwrap()];
        list.extend_from_slice(&fwid);
        let mut second = fwid.clone();
        let n = second.len();
        second[n - 48..].fill(0);
        list.extend_from_slice(&second);
        let mut value = vec![0x30, 0x81, u8::try_from(list.len() + 3).unwrap()];
        value.extend_from_slice(&[0x80, 0x01, 0x41]);
        value.extend_from_slice(&list);
        assert_eq!(blackwell_fwid(&value), Some(digest));
    }
}
