//! The CCEL ACPI table (ACPI 6.5 §5.2.34; `specs/tdx.md` §3.4): where the firmware left the
//! confidential-computing event log. The log bytes themselves are parsed by [`crate::event_log`].

use serde::Serialize;

use crate::bytes::{Reader, ShortRead, hex_bytes, len_from_u32};

/// Length of the CCEL table.
pub const CCEL_TABLE_LEN: usize = 56;
/// CC type of Intel TDX.
pub const CC_TYPE_TDX: u8 = 2;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CcelError {
    /// The input ended inside a field.
    #[error("CCEL table is truncated")]
    ReadField {
        /// Which field and where.
        #[source]
        source: ShortRead,
    },
    /// The ACPI signature is not "CCEL".
    #[error("ACPI table signature {signature:?} is not CCEL")]
    CheckSignature {
        /// The signature bytes.
        signature: [u8; 4],
    },
    /// The declared table length is shorter than a CCEL table or longer than the input.
    #[error("CCEL table declares {declared} bytes, {available} available (minimum 56)")]
    CheckLength {
        /// Length field of the ACPI header.
        declared: u32,
        /// Input length.
        available: usize,
    },
}

impl From<ShortRead> for CcelError {
    fn from(source: ShortRead) -> Self {
        Self::ReadField { source }
    }
}

/// A parsed CCEL table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CcelTable {
    /// ACPI header length field.
    pub length: u32,
    /// ACPI revision.
    pub revision: u8,
    /// ACPI checksum byte.
    pub checksum: u8,
    /// True if all `length` bytes sum to zero (mod 256).
    pub checksum_valid: bool,
    /// OEM ID.
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub oem_id: [u8; 6],
    /// OEM table ID.
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub oem_table_id: [u8; 8],
    /// OEM revision.
    pub oem_revision: u32,
    /// Creator ID.
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub creator_id: [u8; 4],
    /// Creator revision.
    pub creator_revision: u32,
    /// CC type (2 = TDX).
    pub cc_type: u8,
    /// CC subtype.
    pub cc_subtype: u8,
    /// Log area minimum length (LAML).
    pub log_area_minimum_length: u64,
    /// Log area start address (LASA, a guest-physical address).
    pub log_area_start_address: u64,
}

impl CcelTable {
    /// Parses the raw table (`/sys/firmware/acpi/tables/CCEL`).
    pub fn parse(bytes: &[u8]) -> Result<Self, CcelError> {
        let mut r = Reader::new(bytes);
        let signature = r.array("signature")?;
        if &signature != b"CCEL" {
            return Err(CcelError::CheckSignature { signature });
        }
        let length = r.u32("length")?;
        let declared = len_from_u32(length);
        if declared < CCEL_TABLE_LEN || declared > bytes.len() {
            return Err(CcelError::CheckLength {
                declared: length,
                available: bytes.len(),
            });
        }
        let table = bytes.get(..declared).unwrap_or_default();
        let checksum_valid = table.iter().fold(0u8, |acc, &b| acc.wrapping_add(b)) == 0;
        let revision = r.u8("revision")?;
        let checksum = r.u8("checksum")?;
        let oem_id = r.array("oem id")?;
        let oem_table_id = r.array("oem table id")?;
        let oem_revision = r.u32("oem revision")?;
        let creator_id = r.array("creator id")?;
        let creator_revision = r.u32("creator revision")?;
        let cc_type = r.u8("cc type")?;
        let cc_subtype = r.u8("cc subtype")?;
        let _reserved = r.u16("reserved")?;
        Ok(Self {
            length,
            revision,
            checksum,
            checksum_valid,
            oem_id,
            oem_table_id,
            oem_revision,
            creator_id,
            creator_revision,
            cc_type,
            cc_subtype,
            log_area_minimum_length: r.u64("log area minimum length")?,
            log_area_start_address: r.u64("log area start address")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CCEL table as OVMF installs it (LAML 64 KiB, LASA 0x7f7ff000).
    fn synthetic() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"CCEL");
        b.extend_from_slice(&56u32.to_le_bytes());
        b.push(1); // revision
        b.push(0); // checksum, fixed below
        b.extend_from_slice(b"INTEL ");
        b.extend_from_slice(b"EDK2    ");
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(b"INTL");
        b.extend_from_slice(&0x0100_0013u32.to_le_bytes());
        b.push(CC_TYPE_TDX);
        b.push(0);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&0x1_0000u64.to_le_bytes());
        b.extend_from_slice(&0x7f7f_f000u64.to_le_bytes());
        let sum = b.iter().fold(0u8, |acc, &x| acc.wrapping_add(x));
        b[9] = 0u8.wrapping_sub(sum);
        b
    }

    #[test]
    fn parses_fields() {
        let table = CcelTable::parse(&synthetic()).unwrap();
        assert_eq!(table.length, 56);
        assert!(table.checksum_valid);
        assert_eq!(&table.oem_id, b"INTEL ");
        assert_eq!(table.cc_type, CC_TYPE_TDX);
        assert_eq!(table.log_area_minimum_length, 0x1_0000);
        assert_eq!(table.log_area_start_address, 0x7f7f_f000);
    }

    #[test]
    fn errors_are_typed() {
        let mut bytes = synthetic();
        bytes[0] = b'X';
        assert_eq!(
            CcelTable::parse(&bytes),
            Err(CcelError::CheckSignature {
                signature: *b"XCEL"
            })
        );
        let bytes = synthetic();
        assert_eq!(
            CcelTable::parse(&bytes[..50]),
            Err(CcelError::CheckLength {
                declared: 56,
                available: 50
            })
        );
        let mut bytes = synthetic();
        bytes[4] = 40;
        assert_eq!(
            CcelTable::parse(&bytes),
            Err(CcelError::CheckLength {
                declared: 40,
                available: 56
            })
        );
        let mut bytes = synthetic();
        bytes[50] ^= 1;
        assert!(!CcelTable::parse(&bytes).unwrap().checksum_valid);
    }

    #[test]
    fn parser_never_panics() {
        let bytes = synthetic();
        for end in 0..bytes.len() {
            let _ = CcelTable::parse(&bytes[..end]).unwrap_err();
        }
        for i in 0..bytes.len() {
            for flip in [1u8, 0x80, 0xff] {
                let mut mutated = bytes.clone();
                mutated[i] ^= flip;
                let _ = CcelTable::parse(&mutated);
            }
        }
    }
}
