//! TDREPORT_STRUCT (1024 bytes, from TDG.MR.REPORT; `specs/tdx.md` §2).
//!
//! The MAC can only be checked on the same platform; host-side code can check the two hashes
//! that bind TEE_TCB_INFO and TDINFO into the MAC'ed part.

use serde::Serialize;

use crate::bytes::{Reader, ShortRead, hex_bytes};
use crate::quote::{ReportData, TdReportBody, TdReportVersion};
use crate::rtmr::{RTMR_COUNT, Rtmrs, Sha384Digest};

/// Length of a TDREPORT.
pub const TDREPORT_LEN: usize = 1024;
/// REPORTTYPE.type of a TDX report.
pub const REPORT_TYPE_TDX: u8 = 0x81;

const TEE_TCB_INFO_RANGE: std::ops::Range<usize> = 256..495;
const TD_INFO_RANGE: std::ops::Range<usize> = 512..1024;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TdReportError {
    /// The input is not exactly 1024 bytes.
    #[error("TDREPORT has {actual} bytes, expected 1024")]
    CheckLength {
        /// The input length.
        actual: usize,
    },
    /// REPORTTYPE.type is not TDX.
    #[error("report type {report_type:#x} is not TDX (0x81)")]
    CheckReportType {
        /// The report type byte.
        report_type: u8,
    },
    /// A field could not be read (not reachable with a 1024-byte input).
    #[error("TDREPORT is truncated")]
    ReadField {
        /// Which field and where.
        #[source]
        source: ShortRead,
    },
}

impl From<ShortRead> for TdReportError {
    fn from(source: ShortRead) -> Self {
        Self::ReadField { source }
    }
}

/// REPORTMACSTRUCT (bytes 0..256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportMac {
    /// REPORTTYPE: type (0x81), subtype, version, reserved.
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub report_type: [u8; 4],
    /// Reserved bytes 4..16.
    #[serde(skip)]
    pub reserved1: [u8; 12],
    /// CPUSVN.
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub cpu_svn: [u8; 16],
    /// SHA-384 of TEE_TCB_INFO.
    pub tee_tcb_info_hash: Sha384Digest,
    /// SHA-384 of TDINFO.
    pub tee_info_hash: Sha384Digest,
    /// REPORTDATA.
    pub report_data: ReportData,
    /// Reserved bytes 192..224.
    #[serde(skip)]
    pub reserved2: [u8; 32],
    /// MAC over the structure.
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub mac: [u8; 32],
}

/// TEE_TCB_INFO (bytes 256..495).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TeeTcbInfo {
    /// VALID bitmap.
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub valid: [u8; 8],
    /// TEE_TCB_SVN.
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub tee_tcb_svn: [u8; 16],
    /// MRSEAM.
    pub mr_seam: Sha384Digest,
    /// MRSIGNERSEAM.
    pub mr_signer_seam: Sha384Digest,
    /// SEAM ATTRIBUTES.
    pub attributes: u64,
    /// TEE_TCB_SVN2 (TDX 1.5; zero on 1.0).
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub tee_tcb_svn2: [u8; 16],
    /// Reserved bytes 400..495.
    #[serde(skip)]
    pub reserved: [u8; 95],
}

/// TDINFO (bytes 512..1024).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TdInfo {
    /// TD ATTRIBUTES.
    pub attributes: u64,
    /// XFAM.
    pub xfam: u64,
    /// MRTD.
    pub mr_td: Sha384Digest,
    /// MRCONFIGID.
    pub mr_config_id: Sha384Digest,
    /// MROWNER.
    pub mr_owner: Sha384Digest,
    /// MROWNERCONFIG.
    pub mr_owner_config: Sha384Digest,
    /// RTMR0..3.
    pub rtmrs: Rtmrs,
    /// SERVTD_HASH.
    pub servtd_hash: Sha384Digest,
    /// Reserved bytes 960..1024.
    #[serde(skip)]
    pub reserved: [u8; 64],
}

/// A parsed TDREPORT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TdReport {
    /// REPORTMACSTRUCT.
    pub report_mac: ReportMac,
    /// TEE_TCB_INFO.
    pub tee_tcb_info: TeeTcbInfo,
    /// Reserved bytes 495..512.
    #[serde(skip)]
    pub reserved: [u8; 17],
    /// TDINFO.
    pub td_info: TdInfo,
}

impl TdReport {
    /// Parses exactly 1024 bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, TdReportError> {
        if bytes.len() != TDREPORT_LEN {
            return Err(TdReportError::CheckLength {
                actual: bytes.len(),
            });
        }
        let mut r = Reader::new(bytes);
        let report_mac = ReportMac {
            report_type: r.array("report_type")?,
            reserved1: r.array("reserved")?,
            cpu_svn: r.array("cpu_svn")?,
            tee_tcb_info_hash: r.digest("tee_tcb_info_hash")?,
            tee_info_hash: r.digest("tee_info_hash")?,
            report_data: ReportData(r.array("report_data")?),
            reserved2: r.array("reserved")?,
            mac: r.array("mac")?,
        };
        if report_mac.report_type[0] != REPORT_TYPE_TDX {
            return Err(TdReportError::CheckReportType {
                report_type: report_mac.report_type[0],
            });
        }
        let tee_tcb_info = TeeTcbInfo {
            valid: r.array("valid")?,
            tee_tcb_svn: r.array("tee_tcb_svn")?,
            mr_seam: r.digest("mr_seam")?,
            mr_signer_seam: r.digest("mr_signer_seam")?,
            attributes: r.u64("seam attributes")?,
            tee_tcb_svn2: r.array("tee_tcb_svn2")?,
            reserved: r.array("reserved")?,
        };
        let reserved = r.array("reserved")?;
        let attributes = r.u64("td attributes")?;
        let xfam = r.u64("xfam")?;
        let mr_td = r.digest("mr_td")?;
        let mr_config_id = r.digest("mr_config_id")?;
        let mr_owner = r.digest("mr_owner")?;
        let mr_owner_config = r.digest("mr_owner_config")?;
        let mut rtmrs = [Sha384Digest::ZERO; RTMR_COUNT];
        for rtmr in &mut rtmrs {
            *rtmr = r.digest("rtmr")?;
        }
        let td_info = TdInfo {
            attributes,
            xfam,
            mr_td,
            mr_config_id,
            mr_owner,
            mr_owner_config,
            rtmrs: Rtmrs::from_values(rtmrs),
            servtd_hash: r.digest("servtd_hash")?,
            reserved: r.array("reserved")?,
        };
        Ok(Self {
            report_mac,
            tee_tcb_info,
            reserved,
            td_info,
        })
    }

    /// Encodes the 1024 bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let m = &self.report_mac;
        let mut out = Vec::with_capacity(TDREPORT_LEN);
        out.extend_from_slice(&m.report_type);
        out.extend_from_slice(&m.reserved1);
        out.extend_from_slice(&m.cpu_svn);
        out.extend_from_slice(&m.tee_tcb_info_hash.0);
        out.extend_from_slice(&m.tee_info_hash.0);
        out.extend_from_slice(&m.report_data.0);
        out.extend_from_slice(&m.reserved2);
        out.extend_from_slice(&m.mac);
        let t = &self.tee_tcb_info;
        out.extend_from_slice(&t.valid);
        out.extend_from_slice(&t.tee_tcb_svn);
        out.extend_from_slice(&t.mr_seam.0);
        out.extend_from_slice(&t.mr_signer_seam.0);
        out.extend_from_slice(&t.attributes.to_le_bytes());
        out.extend_from_slice(&t.tee_tcb_svn2);
        out.extend_from_slice(&t.reserved);
        out.extend_from_slice(&self.reserved);
        let d = &self.td_info;
        out.extend_from_slice(&d.attributes.to_le_bytes());
        out.extend_from_slice(&d.xfam.to_le_bytes());
        for digest in [&d.mr_td, &d.mr_config_id, &d.mr_owner, &d.mr_owner_config] {
            out.extend_from_slice(&digest.0);
        }
        for rtmr in d.rtmrs.values() {
            out.extend_from_slice(&rtmr.0);
        }
        out.extend_from_slice(&d.servtd_hash.0);
        out.extend_from_slice(&d.reserved);
        out
    }

    /// SHA-384 of the encoded TEE_TCB_INFO (bytes 256..495).
    pub fn computed_tee_tcb_info_hash(&self) -> Sha384Digest {
        Sha384Digest::of(self.to_bytes().get(TEE_TCB_INFO_RANGE).unwrap_or_default())
    }

    /// SHA-384 of the encoded TDINFO (bytes 512..1024).
    pub fn computed_tee_info_hash(&self) -> Sha384Digest {
        Sha384Digest::of(self.to_bytes().get(TD_INFO_RANGE).unwrap_or_default())
    }

    /// True if both hashes in REPORTMACSTRUCT match the structures they cover.
    pub fn hashes_match(&self) -> bool {
        self.computed_tee_tcb_info_hash() == self.report_mac.tee_tcb_info_hash
            && self.computed_tee_info_hash() == self.report_mac.tee_info_hash
    }

    /// The TD report body a quote generated from this report carries.
    pub fn to_quote_body(&self, version: TdReportVersion) -> TdReportBody {
        let (tee_tcb_svn2, mr_service_td) = match version {
            TdReportVersion::Td10 => (None, None),
            TdReportVersion::Td15 => (
                Some(self.tee_tcb_info.tee_tcb_svn2),
                Some(self.td_info.servtd_hash),
            ),
        };
        TdReportBody {
            version,
            tee_tcb_svn: self.tee_tcb_info.tee_tcb_svn,
            mr_seam: self.tee_tcb_info.mr_seam,
            mr_signer_seam: self.tee_tcb_info.mr_signer_seam,
            seam_attributes: self.tee_tcb_info.attributes,
            td_attributes: self.td_info.attributes,
            xfam: self.td_info.xfam,
            mr_td: self.td_info.mr_td,
            mr_config_id: self.td_info.mr_config_id,
            mr_owner: self.td_info.mr_owner,
            mr_owner_config: self.td_info.mr_owner_config,
            rtmrs: self.td_info.rtmrs,
            report_data: self.report_mac.report_data,
            tee_tcb_svn2,
            mr_service_td,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmr::RtmrIndex;

    /// A synthetic report: every field gets a distinct pattern at its spec offset.
    fn synthetic() -> Vec<u8> {
        let mut b = vec![0u8; TDREPORT_LEN];
        b[0] = REPORT_TYPE_TDX;
        b[16..32].fill(0x11); // cpu_svn
        b[128..192].fill(0x22); // report_data
        b[224..256].fill(0x33); // mac
        b[264..280].fill(0x44); // tee_tcb_svn
        b[280..328].fill(0x55); // mr_seam
        b[376..384].copy_from_slice(&7u64.to_le_bytes()); // seam attributes
        b[384..400].fill(0x66); // tee_tcb_svn2
        b[512..520].copy_from_slice(&0x1000_0000u64.to_le_bytes()); // td attributes
        b[520..528].copy_from_slice(&0x602e7u64.to_le_bytes()); // xfam
        b[528..576].fill(0x77); // mr_td
        b[576..624].fill(0x88); // mr_config_id
        for (i, start) in [720usize, 768, 816, 864].into_iter().enumerate() {
            b[start..start + 48].fill(0xA0 + u8::try_from(i).unwrap());
        }
        b[912..960].fill(0x99); // servtd_hash
        let tcb_hash = Sha384Digest::of(&b[256..495]);
        let info_hash = Sha384Digest::of(&b[512..1024]);
        b[32..80].copy_from_slice(&tcb_hash.0);
        b[80..128].copy_from_slice(&info_hash.0);
        b
    }

    #[test]
    fn fields_at_spec_offsets() {
        let bytes = synthetic();
        let report = TdReport::parse(&bytes).unwrap();
        assert_eq!(report.report_mac.cpu_svn, [0x11; 16]);
        assert_eq!(report.report_mac.report_data.0, [0x22; 64]);
        assert_eq!(report.report_mac.mac, [0x33; 32]);
        assert_eq!(report.tee_tcb_info.tee_tcb_svn, [0x44; 16]);
        assert_eq!(report.tee_tcb_info.mr_seam, Sha384Digest([0x55; 48]));
        assert_eq!(report.tee_tcb_info.attributes, 7);
        assert_eq!(report.tee_tcb_info.tee_tcb_svn2, [0x66; 16]);
        assert_eq!(report.td_info.attributes, 0x1000_0000);
        assert_eq!(report.td_info.xfam, 0x602e7);
        assert_eq!(report.td_info.mr_td, Sha384Digest([0x77; 48]));
        assert_eq!(report.td_info.mr_config_id, Sha384Digest([0x88; 48]));
        assert_eq!(
            report.td_info.rtmrs.register(RtmrIndex::R3),
            &Sha384Digest([0xA3; 48])
        );
        assert_eq!(report.td_info.servtd_hash, Sha384Digest([0x99; 48]));
        assert!(report.hashes_match());
        assert_eq!(report.to_bytes(), bytes);
    }

    #[test]
    fn quote_body_from_report() {
        let report = TdReport::parse(&synthetic()).unwrap();
        let body = report.to_quote_body(TdReportVersion::Td15);
        assert_eq!(body.mr_td, report.td_info.mr_td);
        assert_eq!(body.rtmrs, report.td_info.rtmrs);
        assert_eq!(body.mr_service_td, Some(Sha384Digest([0x99; 48])));
        assert_eq!(body.to_bytes().len(), 648);
        assert_eq!(TdReportBody::parse(&body.to_bytes()).unwrap(), body);
        let body = report.to_quote_body(TdReportVersion::Td10);
        assert_eq!(TdReportBody::parse(&body.to_bytes()).unwrap(), body);
    }

    #[test]
    fn tampering_breaks_hashes() {
        let mut bytes = synthetic();
        bytes[600] ^= 1;
        assert!(!TdReport::parse(&bytes).unwrap().hashes_match());
        let mut bytes = synthetic();
        bytes[300] ^= 1;
        assert!(!TdReport::parse(&bytes).unwrap().hashes_match());
    }

    #[test]
    fn errors_are_typed() {
        assert_eq!(
            TdReport::parse(&[0; 1023]),
            Err(TdReportError::CheckLength { actual: 1023 })
        );
        assert_eq!(
            TdReport::parse(&[0; 1025]),
            Err(TdReportError::CheckLength { actual: 1025 })
        );
        assert_eq!(
            TdReport::parse(&[0; 1024]),
            Err(TdReportError::CheckReportType { report_type: 0 })
        );
        // go-tdx-guest's report.dat is not a well-formed TDREPORT.
        let mut bytes = synthetic();
        bytes[0] = 0;
        assert!(matches!(
            TdReport::parse(&bytes),
            Err(TdReportError::CheckReportType { .. })
        ));
    }

    #[test]
    fn parser_never_panics() {
        let bytes = synthetic();
        for end in 0..bytes.len() {
            let _ = TdReport::parse(&bytes[..end]).unwrap_err();
        }
        for i in 0..bytes.len() {
            let mut mutated = bytes.clone();
            mutated[i] ^= 0xff;
            let _ = TdReport::parse(&mutated);
        }
    }
}
