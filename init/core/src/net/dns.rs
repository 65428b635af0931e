//! A DNS stub-resolver codec (RFC 1035): one A query out, the IPv4 addresses of the answer in.
//!
//! The static init has no glibc NSS, so names in `kms_urls` and registry URLs resolve here
//! against the DHCP-provided servers (over UDP; the I/O is in `cvm-init`). Responses are
//! untrusted: lengths are bounds-checked, compression pointers may only point backwards and are
//! followed a bounded number of times, and the id and question must match the query.

use std::net::Ipv4Addr;

/// Largest response read over UDP without EDNS.
pub const MAX_UDP_RESPONSE: usize = 512;
/// The DNS port.
pub const PORT: u16 = 53;

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const RCODE_MASK: u16 = 0x000f;
const HEADER_LEN: usize = 12;
const MAX_POINTER_HOPS: usize = 16;
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Errors of [`query`] and [`parse_response`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("host name {name:?} is not a valid DNS name")]
    InvalidName { name: String },
    #[error("DNS response is {len} bytes, more than {MAX_UDP_RESPONSE}")]
    Oversized { len: usize },
    #[error("DNS response truncated at byte {offset}")]
    Truncated { offset: usize },
    #[error("DNS response id {actual:#06x} does not match the query ({expected:#06x})")]
    WrongId { expected: u16, actual: u16 },
    #[error("DNS message is not a response")]
    NotResponse,
    #[error("DNS response was truncated by the server (TC bit)")]
    TruncatedBit,
    #[error("DNS server answered rcode {rcode} ({})", rcode_name(*rcode))]
    Rcode { rcode: u16 },
    #[error("DNS response question does not match the query")]
    QuestionMismatch,
    #[error("DNS name compression loop or forward pointer at byte {offset}")]
    BadPointer { offset: usize },
    #[error("DNS name in the response is too long")]
    NameTooLong,
    #[error("DNS A record has {len}-byte data")]
    BadRecordLength { len: usize },
    #[error("DNS response for {name} has no A record")]
    NoAddress { name: String },
}

const fn rcode_name(rcode: u16) -> &'static str {
    match rcode {
        1 => "format error",
        2 => "server failure",
        3 => "no such name",
        4 => "not implemented",
        5 => "refused",
        _ => "error",
    }
}

/// Checks `name` is a host name the resolver will ask for: labels of 1-63 bytes of
/// `[A-Za-z0-9_-]`, at most 253 bytes, a trailing dot allowed.
pub fn validate_name(name: &str) -> Result<(), DnsError> {
    let invalid = || DnsError::InvalidName {
        name: name.to_owned(),
    };
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > MAX_NAME_LEN {
        return Err(invalid());
    }
    for label in trimmed.split('.') {
        if label.is_empty()
            || label.len() > MAX_LABEL_LEN
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid());
        }
    }
    Ok(())
}

/// An A/IN query for `name` with id `id` and recursion desired.
pub fn query(name: &str, id: u16) -> Result<Vec<u8>, DnsError> {
    validate_name(name)?;
    let mut msg = Vec::with_capacity(HEADER_LEN + name.len() + 6);
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&FLAG_RD.to_be_bytes());
    msg.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    msg.extend_from_slice(&[0; 6]); // AN, NS, AR
    encode_name(&mut msg, name);
    msg.extend_from_slice(&TYPE_A.to_be_bytes());
    msg.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(msg)
}

fn encode_name(out: &mut Vec<u8>, name: &str) {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    for label in trimmed.split('.') {
        // validate_name bounds every label to 63 bytes.
        out.push(u8::try_from(label.len()).unwrap_or(0));
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// The IPv4 addresses in the answer section of `response` to [`query`]`(name, id)`, in order
/// (CNAME records in the chain are skipped; the recursive server already followed them).
pub fn parse_response(response: &[u8], id: u16, name: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
    if response.len() > MAX_UDP_RESPONSE {
        return Err(DnsError::Oversized {
            len: response.len(),
        });
    }
    let mut reader = Reader {
        bytes: response,
        at: 0,
    };
    let actual = reader.u16()?;
    if actual != id {
        return Err(DnsError::WrongId {
            expected: id,
            actual,
        });
    }
    let flags = reader.u16()?;
    if flags & FLAG_QR == 0 {
        return Err(DnsError::NotResponse);
    }
    if flags & FLAG_TC != 0 {
        return Err(DnsError::TruncatedBit);
    }
    let rcode = flags & RCODE_MASK;
    if rcode != 0 {
        return Err(DnsError::Rcode { rcode });
    }
    let questions = reader.u16()?;
    let answers = reader.u16()?;
    reader.skip(4)?; // NS and AR counts: not read.
    if questions != 1 {
        return Err(DnsError::QuestionMismatch);
    }
    let question = reader.name()?;
    let wanted = name.strip_suffix('.').unwrap_or(name);
    if !question.eq_ignore_ascii_case(wanted)
        || reader.u16()? != TYPE_A
        || reader.u16()? != CLASS_IN
    {
        return Err(DnsError::QuestionMismatch);
    }
    let mut addresses = Vec::new();
    for _ in 0..answers {
        let _owner = reader.name()?;
        let rtype = reader.u16()?;
        let class = reader.u16()?;
        let _ttl = reader.u32()?;
        let len = usize::from(reader.u16()?);
        let data = reader.take(len)?;
        if rtype == TYPE_A && class == CLASS_IN {
            let octets: [u8; 4] = data
                .try_into()
                .map_err(|_| DnsError::BadRecordLength { len })?;
            addresses.push(Ipv4Addr::from(octets));
        }
    }
    if addresses.is_empty() {
        return Err(DnsError::NoAddress {
            name: wanted.to_owned(),
        });
    }
    Ok(addresses)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], DnsError> {
        let end = self
            .at
            .checked_add(len)
            .ok_or(DnsError::Truncated { offset: self.at })?;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or(DnsError::Truncated { offset: self.at })?;
        self.at = end;
        Ok(slice)
    }

    fn skip(&mut self, len: usize) -> Result<(), DnsError> {
        self.take(len).map(|_| ())
    }

    fn u16(&mut self) -> Result<u16, DnsError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DnsError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a (possibly compressed) name at the cursor; the cursor ends after the name's
    /// in-place part.
    fn name(&mut self) -> Result<String, DnsError> {
        let mut labels: Vec<String> = Vec::new();
        let mut total = 0usize;
        let mut pos = self.at;
        let mut resume = None;
        let mut hops = 0usize;
        loop {
            let len = *self
                .bytes
                .get(pos)
                .ok_or(DnsError::Truncated { offset: pos })?;
            if len & 0xc0 == 0xc0 {
                let low = *self
                    .bytes
                    .get(pos + 1)
                    .ok_or(DnsError::Truncated { offset: pos + 1 })?;
                let target = (usize::from(len & 0x3f) << 8) | usize::from(low);
                hops += 1;
                // Pointers must go strictly backwards: no loops, no forward references.
                if target >= pos || hops > MAX_POINTER_HOPS {
                    return Err(DnsError::BadPointer { offset: pos });
                }
                resume.get_or_insert(pos + 2);
                pos = target;
                continue;
            }
            if len & 0xc0 != 0 {
                return Err(DnsError::BadPointer { offset: pos });
            }
            if len == 0 {
                pos += 1;
                break;
            }
            let len = usize::from(len);
            let label = self
                .bytes
                .get(pos + 1..pos + 1 + len)
                .ok_or(DnsError::Truncated { offset: pos + 1 })?;
            total += len + 1;
            if total > MAX_NAME_LEN + 1 {
                return Err(DnsError::NameTooLong);
            }
            labels.push(String::from_utf8_lossy(label).into_owned());
            pos += 1 + len;
        }
        self.at = resume.unwrap_or(pos);
        Ok(labels.join("."))
    }
}

/// Builds a response (for tests and fuzz seeds): `answers` are (type, data) records owned by a
/// compression pointer to the question name.
#[cfg(any(test, feature = "testing"))]
pub fn response(id: u16, name: &str, rcode: u16, answers: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut msg = Vec::new();
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&(FLAG_QR | FLAG_RD | 0x0080 | (rcode & RCODE_MASK)).to_be_bytes());
    msg.extend_from_slice(&1u16.to_be_bytes());
    msg.extend_from_slice(&u16::try_from(answers.len()).unwrap_or(0).to_be_bytes());
    msg.extend_from_slice(&[0; 4]);
    encode_name(&mut msg, name);
    msg.extend_from_slice(&TYPE_A.to_be_bytes());
    msg.extend_from_slice(&CLASS_IN.to_be_bytes());
    for (rtype, data) in answers {
        msg.extend_from_slice(&[0xc0, 12]);
        msg.extend_from_slice(&rtype.to_be_bytes());
        msg.extend_from_slice(&CLASS_IN.to_be_bytes());
        msg.extend_from_slice(&300u32.to_be_bytes());
        msg.extend_from_slice(&u16::try_from(data.len()).unwrap_or(0).to_be_bytes());
        msg.extend_from_slice(data);
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_rfc1035() {
        let q = query("kms.example.com", 0x1234).unwrap();
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(&q[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&q[12..29], b"\x03kms\x07example\x03com\x00");
        assert_eq!(&q[29..], &[0, 1, 0, 1]);
        assert_eq!(query("kms.example.com.", 1).unwrap().len(), q.len());
    }

    #[test]
    fn invalid_names_are_refused() {
        for bad in [
            "",
            ".",
            "a..b",
            "a b",
            "-\u{e9}",
            &"a".repeat(64),
            &"a.".repeat(130),
        ] {
            assert!(
                matches!(validate_name(bad), Err(DnsError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        validate_name("registry-1.docker.io").unwrap();
    }

    #[test]
    fn answers_with_cname_and_compression_parse() {
        let cname = b"\x04edge\xc0\x10".to_vec();
        let resp = response(
            9,
            "kms.example.com",
            0,
            &[(5, cname), (1, vec![10, 0, 2, 2]), (1, vec![10, 0, 2, 9])],
        );
        assert_eq!(
            parse_response(&resp, 9, "KMS.example.com.").unwrap(),
            [Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 9)]
        );
    }

    #[test]
    fn bad_responses_are_refused() {
        let name = "kms.example.com";
        let good = response(9, name, 0, &[(1, vec![1, 2, 3, 4])]);
        assert_eq!(
            parse_response(&good, 8, name),
            Err(DnsError::WrongId {
                expected: 8,
                actual: 9
            })
        );
        assert_eq!(
            parse_response(&good, 9, "other.example.com"),
            Err(DnsError::QuestionMismatch)
        );
        assert_eq!(
            parse_response(&response(9, name, 3, &[]), 9, name),
            Err(DnsError::Rcode { rcode: 3 })
        );
        assert_eq!(
            parse_response(&response(9, name, 0, &[]), 9, name),
            Err(DnsError::NoAddress { name: name.into() })
        );
        assert_eq!(
            parse_response(&response(9, name, 0, &[(1, vec![1, 2, 3])]), 9, name),
            Err(DnsError::BadRecordLength { len: 3 })
        );
        let mut query_not_response = good.clone();
        query_not_response[2] &= 0x7f;
        assert_eq!(
            parse_response(&query_not_response, 9, name),
            Err(DnsError::NotResponse)
        );
        let mut tc = good.clone();
        tc[2] |= 0x02;
        assert_eq!(parse_response(&tc, 9, name), Err(DnsError::TruncatedBit));
        for cut in 0..good.len() {
            assert!(parse_response(&good[..cut], 9, name).is_err(), "cut {cut}");
        }
        assert!(matches!(
            parse_response(&[0u8; 513], 0, name),
            Err(DnsError::Oversized { len: 513 })
        ));
    }

    #[test]
    fn pointer_loops_are_refused() {
        let name = "kms.example.com";
        // The answer's owner name points at itself.
        let mut resp = response(9, name, 0, &[(1, vec![1, 2, 3, 4])]);
        let owner = resp.len() - 16;
        assert_eq!(resp[owner], 0xc0);
        let self_pointer = u8::try_from(owner).unwrap();
        resp[owner + 1] = self_pointer;
        assert_eq!(
            parse_response(&resp, 9, name),
            Err(DnsError::BadPointer { offset: owner })
        );
    }
}
