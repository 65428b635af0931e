//! Intel DCAP quote v4 and v5 for TDX (`specs/tdx.md` §1): header, TD report body (TDX 1.0 and
//! 1.5), ECDSA signature data and certification data (types 5 and 6).
//!
//! Parsing is total: any input yields a [`Quote`] or a [`QuoteError`], never a panic. Quote files
//! are often zero-padded; the length is taken from `sig_data_len`, and what follows is reported as
//! [`Quote::trailing_len`]. [`Quote::to_bytes`] re-encodes a parsed quote byte for byte, so the
//! same types can build quotes (e.g. for a simulated TEE).

use serde::Serialize;

use crate::bytes::{Reader, ShortRead, hex_bytes, len_from_u32};
use crate::rtmr::{RTMR_COUNT, Rtmrs, Sha384Digest};

/// Header length (v4 and v5).
pub const HEADER_LEN: usize = 48;
/// TD report 1.0 body length.
pub const TD_REPORT10_BODY_LEN: usize = 584;
/// TD report 1.5 body length.
pub const TD_REPORT15_BODY_LEN: usize = 648;
/// SGX enclave report (QE report) length.
pub const ENCLAVE_REPORT_LEN: usize = 384;
/// TEE type of TDX in the header.
pub const TEE_TYPE_TDX: u32 = 0x81;
/// Attestation key type ECDSA-256 with P-256.
pub const ATTESTATION_KEY_TYPE_ECDSA_P256: u16 = 2;
/// Intel's QE vendor ID.
pub const INTEL_QE_VENDOR_ID: [u8; 16] = [
    0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07,
];
/// Certification data type: PCK certificate chain (PEM).
pub const CERT_TYPE_PCK_CHAIN: u16 = 5;
/// Certification data type: QE report certification data.
pub const CERT_TYPE_QE_REPORT: u16 = 6;

const V5_BODY_TYPE_TD10: u16 = 2;
const V5_BODY_TYPE_TD15: u16 = 3;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    /// The input ended inside a field.
    #[error("quote is truncated")]
    ReadField {
        /// Which field and where.
        #[source]
        source: ShortRead,
    },
    /// The version is neither 4 nor 5.
    #[error("quote version {version} is not supported, expected 4 or 5")]
    CheckVersion {
        /// The version in the header.
        version: u16,
    },
    /// The TEE type is not TDX.
    #[error("TEE type {tee_type:#x} is not TDX (0x81)")]
    CheckTeeType {
        /// The TEE type in the header.
        tee_type: u32,
    },
    /// The attestation key is not ECDSA P-256.
    #[error("attestation key type {key_type} is not supported, expected 2 (ECDSA P-256)")]
    CheckAttestationKeyType {
        /// The key type in the header.
        key_type: u16,
    },
    /// A v5 body descriptor names a body other than a TD report.
    #[error("v5 body type {body_type} is not a TD report (2 or 3)")]
    CheckBodyType {
        /// The body type.
        body_type: u16,
    },
    /// A v5 body descriptor's size does not match its type.
    #[error("v5 body type {body_type} declares {declared} bytes, expected {expected}")]
    CheckBodySize {
        /// The body type.
        body_type: u16,
        /// Size in the descriptor.
        declared: u32,
        /// Size of that body type.
        expected: usize,
    },
    /// QE report certification data nests another QE report certification data.
    #[error("QE report certification data at offset {offset:#x} nests another one")]
    CheckNestedCertification {
        /// Offset of the inner certification data.
        offset: usize,
    },
    /// QE report certification data is longer than its contents (bytes after the inner
    /// certification data would be ignored by the parser and lost when re-encoding).
    #[error(
        "QE report certification data at offset {offset:#x} declares {declared} bytes, its contents use {used}"
    )]
    CheckQeReportCertificationSize {
        /// Offset of the certification data.
        offset: usize,
        /// Size in its header.
        declared: usize,
        /// Bytes its contents use.
        used: usize,
    },
    /// A length does not fit the 16/32-bit field that encodes it.
    #[error("{field} of {len} bytes does not fit its length field")]
    EncodeLength {
        /// Which field.
        field: &'static str,
        /// The length.
        len: usize,
    },
}

impl From<ShortRead> for QuoteError {
    fn from(source: ShortRead) -> Self {
        Self::ReadField { source }
    }
}

/// Quote header (48 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuoteHeader {
    /// 4 or 5.
    pub version: u16,
    /// 2 = ECDSA P-256.
    pub attestation_key_type: u16,
    /// 0x81 = TDX.
    pub tee_type: u32,
    /// Bytes 0x08..0x0C (reserved; older documents call them QE/PCE SVN).
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub reserved: [u8; 4],
    /// QE vendor ID (Intel = [`INTEL_QE_VENDOR_ID`]).
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub qe_vendor_id: [u8; 16],
    /// User data (first 16 bytes: platform QE-ID).
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub user_data: [u8; 20],
}

/// Which TD report body a quote carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TdReportVersion {
    /// TDX 1.0 body (584 bytes; v4, or v5 body type 2).
    Td10,
    /// TDX 1.5 body (648 bytes; v5 body type 3).
    Td15,
}

/// The 64-byte REPORTDATA.
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReportData(#[serde(serialize_with = "hex_bytes::serialize")] pub [u8; 64]);

impl std::fmt::Debug for ReportData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReportData({})", hex::encode(self.0))
    }
}

/// TD report body as carried in a quote (`specs/tdx.md` §1.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TdReportBody {
    /// Body version.
    pub version: TdReportVersion,
    /// TEE_TCB_SVN.
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub tee_tcb_svn: [u8; 16],
    /// MRSEAM.
    pub mr_seam: Sha384Digest,
    /// MRSIGNERSEAM.
    pub mr_signer_seam: Sha384Digest,
    /// SEAMATTRIBUTES.
    pub seam_attributes: u64,
    /// TDATTRIBUTES.
    pub td_attributes: u64,
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
    /// REPORTDATA.
    pub report_data: ReportData,
    /// TEE_TCB_SVN2 (TDX 1.5 only).
    #[serde(serialize_with = "serialize_opt_hex")]
    pub tee_tcb_svn2: Option<[u8; 16]>,
    /// MRSERVICETD (TDX 1.5 only).
    pub mr_service_td: Option<Sha384Digest>,
}

fn serialize_opt_hex<S: serde::Serializer>(
    value: &Option<[u8; 16]>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(bytes) => serializer.serialize_str(&hex::encode(bytes)),
        None => serializer.serialize_none(),
    }
}

impl TdReportBody {
    /// TD attribute bit 0: the TD is debuggable.
    pub const TD_ATTRIBUTE_DEBUG: u64 = 1;
    /// TD attribute bit 28: SEPT_VE_DISABLE.
    pub const TD_ATTRIBUTE_SEPT_VE_DISABLE: u64 = 1 << 28;

    /// Parses a body of the given version from `reader`.
    fn read(reader: &mut Reader<'_>, version: TdReportVersion) -> Result<Self, ShortRead> {
        let tee_tcb_svn = reader.array("tee_tcb_svn")?;
        let mr_seam = reader.digest("mr_seam")?;
        let mr_signer_seam = reader.digest("mr_signer_seam")?;
        let seam_attributes = reader.u64("seam_attributes")?;
        let td_attributes = reader.u64("td_attributes")?;
        let xfam = reader.u64("xfam")?;
        let mr_td = reader.digest("mr_td")?;
        let mr_config_id = reader.digest("mr_config_id")?;
        let mr_owner = reader.digest("mr_owner")?;
        let mr_owner_config = reader.digest("mr_owner_config")?;
        let mut rtmrs = [Sha384Digest::ZERO; RTMR_COUNT];
        for rtmr in &mut rtmrs {
            *rtmr = reader.digest("rtmr")?;
        }
        let report_data = ReportData(reader.array("report_data")?);
        let (tee_tcb_svn2, mr_service_td) = match version {
            TdReportVersion::Td10 => (None, None),
            TdReportVersion::Td15 => (
                Some(reader.array("tee_tcb_svn2")?),
                Some(reader.digest("mr_service_td")?),
            ),
        };
        Ok(Self {
            version,
            tee_tcb_svn,
            mr_seam,
            mr_signer_seam,
            seam_attributes,
            td_attributes,
            xfam,
            mr_td,
            mr_config_id,
            mr_owner,
            mr_owner_config,
            rtmrs: Rtmrs::from_values(rtmrs),
            report_data,
            tee_tcb_svn2,
            mr_service_td,
        })
    }

    /// Parses a TD 1.0 (584 bytes) or TD 1.5 (648 bytes) body, chosen by length.
    pub fn parse(bytes: &[u8]) -> Result<Self, QuoteError> {
        let version = if bytes.len() == TD_REPORT15_BODY_LEN {
            TdReportVersion::Td15
        } else {
            TdReportVersion::Td10
        };
        Ok(Self::read(&mut Reader::new(bytes), version)?)
    }

    /// Encodes the body (584 or 648 bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(TD_REPORT15_BODY_LEN);
        out.extend_from_slice(&self.tee_tcb_svn);
        out.extend_from_slice(&self.mr_seam.0);
        out.extend_from_slice(&self.mr_signer_seam.0);
        out.extend_from_slice(&self.seam_attributes.to_le_bytes());
        out.extend_from_slice(&self.td_attributes.to_le_bytes());
        out.extend_from_slice(&self.xfam.to_le_bytes());
        out.extend_from_slice(&self.mr_td.0);
        out.extend_from_slice(&self.mr_config_id.0);
        out.extend_from_slice(&self.mr_owner.0);
        out.extend_from_slice(&self.mr_owner_config.0);
        for rtmr in self.rtmrs.values() {
            out.extend_from_slice(&rtmr.0);
        }
        out.extend_from_slice(&self.report_data.0);
        if self.version == TdReportVersion::Td15 {
            out.extend_from_slice(&self.tee_tcb_svn2.unwrap_or_default());
            out.extend_from_slice(&self.mr_service_td.unwrap_or_default().0);
        }
        out
    }

    /// Length of the encoded body.
    pub fn encoded_len(&self) -> usize {
        match self.version {
            TdReportVersion::Td10 => TD_REPORT10_BODY_LEN,
            TdReportVersion::Td15 => TD_REPORT15_BODY_LEN,
        }
    }
}

/// SGX enclave report body (the QE report, 384 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnclaveReport {
    /// CPUSVN.
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub cpu_svn: [u8; 16],
    /// MISCSELECT.
    pub misc_select: u32,
    #[serde(skip)]
    reserved1: [u8; 28],
    /// ATTRIBUTES.
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub attributes: [u8; 16],
    /// MRENCLAVE.
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub mr_enclave: [u8; 32],
    #[serde(skip)]
    reserved2: [u8; 32],
    /// MRSIGNER.
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub mr_signer: [u8; 32],
    #[serde(skip)]
    reserved3: [u8; 96],
    /// ISVPRODID.
    pub isv_prod_id: u16,
    /// ISVSVN.
    pub isv_svn: u16,
    #[serde(skip)]
    reserved4: [u8; 60],
    /// REPORTDATA (for the QE: SHA-256(attestation key ‖ QE auth data) ‖ 32 zero bytes).
    pub report_data: ReportData,
}

impl EnclaveReport {
    fn read(reader: &mut Reader<'_>) -> Result<Self, ShortRead> {
        Ok(Self {
            cpu_svn: reader.array("qe_report.cpu_svn")?,
            misc_select: reader.u32("qe_report.misc_select")?,
            reserved1: reader.array("qe_report.reserved")?,
            attributes: reader.array("qe_report.attributes")?,
            mr_enclave: reader.array("qe_report.mr_enclave")?,
            reserved2: reader.array("qe_report.reserved")?,
            mr_signer: reader.array("qe_report.mr_signer")?,
            reserved3: reader.array("qe_report.reserved")?,
            isv_prod_id: reader.u16("qe_report.isv_prod_id")?,
            isv_svn: reader.u16("qe_report.isv_svn")?,
            reserved4: reader.array("qe_report.reserved")?,
            report_data: ReportData(reader.array("qe_report.report_data")?),
        })
    }

    /// Parses 384 bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, QuoteError> {
        Ok(Self::read(&mut Reader::new(bytes))?)
    }

    /// Encodes the 384 bytes that the PCK key signs.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCLAVE_REPORT_LEN);
        out.extend_from_slice(&self.cpu_svn);
        out.extend_from_slice(&self.misc_select.to_le_bytes());
        out.extend_from_slice(&self.reserved1);
        out.extend_from_slice(&self.attributes);
        out.extend_from_slice(&self.mr_enclave);
        out.extend_from_slice(&self.reserved2);
        out.extend_from_slice(&self.mr_signer);
        out.extend_from_slice(&self.reserved3);
        out.extend_from_slice(&self.isv_prod_id.to_le_bytes());
        out.extend_from_slice(&self.isv_svn.to_le_bytes());
        out.extend_from_slice(&self.reserved4);
        out.extend_from_slice(&self.report_data.0);
        out
    }
}

/// Certification data (type-length-value inside the signature data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CertificationData {
    /// Type 5: PCK leaf, intermediate and root certificates as PEM text (possibly NUL-terminated).
    PckCertChain {
        /// The PEM bytes as carried.
        #[serde(serialize_with = "serialize_lossy_text")]
        pem: Vec<u8>,
    },
    /// Type 6: QE report certification data.
    QeReport(Box<QeReportCertificationData>),
    /// Any other type, kept opaque.
    Other {
        /// The certification data type.
        cert_type: u16,
        /// Its bytes.
        #[serde(serialize_with = "hex_bytes::serialize")]
        data: Vec<u8>,
    },
}

fn serialize_lossy_text<S: serde::Serializer>(
    bytes: &[u8],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(bytes))
}

/// Type 6 certification data: the QE report binding the attestation key, and the data that
/// certifies the QE (normally a type-5 PCK chain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QeReportCertificationData {
    /// The QE's SGX report.
    pub qe_report: EnclaveReport,
    /// ECDSA signature r‖s over `qe_report` by the PCK leaf key.
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub qe_report_signature: [u8; 64],
    /// QE authentication data.
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub qe_auth_data: Vec<u8>,
    /// Inner certification data.
    pub certification: CertificationData,
}

impl CertificationData {
    fn read(reader: &mut Reader<'_>, nested: bool) -> Result<Self, QuoteError> {
        let offset = reader.position();
        let cert_type = reader.u16("certification data type")?;
        let size = len_from_u32(reader.u32("certification data size")?);
        let data = reader.take(size, "certification data")?;
        match cert_type {
            CERT_TYPE_PCK_CHAIN => Ok(Self::PckCertChain { pem: data.to_vec() }),
            CERT_TYPE_QE_REPORT if nested => Err(QuoteError::CheckNestedCertification { offset }),
            CERT_TYPE_QE_REPORT => {
                // Offsets inside stay absolute: read from a window of the whole input.
                let start = reader.position() - size;
                let mut inner = Reader::at(reader.window(start + size), start);
                let qe_report = EnclaveReport::read(&mut inner)?;
                let qe_report_signature = inner.array("qe report signature")?;
                let auth_len = usize::from(inner.u16("qe auth data size")?);
                let qe_auth_data = inner.take(auth_len, "qe auth data")?.to_vec();
                let certification = Self::read(&mut inner, true)?;
                if inner.remaining() != 0 {
                    return Err(QuoteError::CheckQeReportCertificationSize {
                        offset,
                        declared: size,
                        used: size - inner.remaining(),
                    });
                }
                Ok(Self::QeReport(Box::new(QeReportCertificationData {
                    qe_report,
                    qe_report_signature,
                    qe_auth_data,
                    certification,
                })))
            }
            cert_type => Ok(Self::Other {
                cert_type,
                data: data.to_vec(),
            }),
        }
    }

    /// The certification data type number.
    pub fn cert_type(&self) -> u16 {
        match self {
            Self::PckCertChain { .. } => CERT_TYPE_PCK_CHAIN,
            Self::QeReport(_) => CERT_TYPE_QE_REPORT,
            Self::Other { cert_type, .. } => *cert_type,
        }
    }

    /// The PCK certificate chain PEM, at this level or inside QE report certification data.
    pub fn pck_cert_chain_pem(&self) -> Option<&[u8]> {
        match self {
            Self::PckCertChain { pem } => Some(pem),
            Self::QeReport(qe) => qe.certification.pck_cert_chain_pem(),
            Self::Other { .. } => None,
        }
    }

    fn write(&self, out: &mut Vec<u8>) -> Result<(), QuoteError> {
        let mut data = Vec::new();
        let payload: &[u8] = match self {
            Self::PckCertChain { pem } => pem,
            Self::Other { data, .. } => data,
            Self::QeReport(qe) => {
                data.extend_from_slice(&qe.qe_report.to_bytes());
                data.extend_from_slice(&qe.qe_report_signature);
                let auth_len =
                    u16::try_from(qe.qe_auth_data.len()).map_err(|_| QuoteError::EncodeLength {
                        field: "qe auth data",
                        len: qe.qe_auth_data.len(),
                    })?;
                data.extend_from_slice(&auth_len.to_le_bytes());
                data.extend_from_slice(&qe.qe_auth_data);
                qe.certification.write(&mut data)?;
                &data
            }
        };
        out.extend_from_slice(&self.cert_type().to_le_bytes());
        out.extend_from_slice(&encode_u32_len("certification data", payload.len())?);
        out.extend_from_slice(payload);
        Ok(())
    }
}

fn encode_u32_len(field: &'static str, len: usize) -> Result<[u8; 4], QuoteError> {
    u32::try_from(len)
        .map(u32::to_le_bytes)
        .map_err(|_| QuoteError::EncodeLength { field, len })
}

/// ECDSA signature data (after the body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuoteSignatureData {
    /// ECDSA P-256 signature r‖s over SHA-256 of the signed region (header + body).
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub signature: [u8; 64],
    /// Attestation public key x‖y.
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub attestation_key: [u8; 64],
    /// Certification data.
    pub certification: CertificationData,
    /// Bytes inside `sig_data_len` after the certification data (normally empty).
    #[serde(serialize_with = "hex_bytes::serialize")]
    pub trailing: Vec<u8>,
}

/// A parsed TDX quote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quote {
    /// Header.
    pub header: QuoteHeader,
    /// TD report body.
    pub body: TdReportBody,
    /// Signature data.
    pub signature_data: QuoteSignatureData,
    /// Bytes after the declared end (zero padding in most files).
    pub trailing_len: usize,
}

impl Quote {
    /// Parses a quote; the input may be padded past its declared end.
    pub fn parse(bytes: &[u8]) -> Result<Self, QuoteError> {
        let mut reader = Reader::new(bytes);
        let version = reader.u16("version")?;
        let attestation_key_type = reader.u16("attestation key type")?;
        let tee_type = reader.u32("tee type")?;
        let header = QuoteHeader {
            version,
            attestation_key_type,
            tee_type,
            reserved: reader.array("header reserved")?,
            qe_vendor_id: reader.array("qe vendor id")?,
            user_data: reader.array("user data")?,
        };
        if version != 4 && version != 5 {
            return Err(QuoteError::CheckVersion { version });
        }
        if tee_type != TEE_TYPE_TDX {
            return Err(QuoteError::CheckTeeType { tee_type });
        }
        if attestation_key_type != ATTESTATION_KEY_TYPE_ECDSA_P256 {
            return Err(QuoteError::CheckAttestationKeyType {
                key_type: attestation_key_type,
            });
        }
        let body_version = if version == 4 {
            TdReportVersion::Td10
        } else {
            let body_type = reader.u16("body type")?;
            let declared = reader.u32("body size")?;
            let (body_version, expected) = match body_type {
                V5_BODY_TYPE_TD10 => (TdReportVersion::Td10, TD_REPORT10_BODY_LEN),
                V5_BODY_TYPE_TD15 => (TdReportVersion::Td15, TD_REPORT15_BODY_LEN),
                body_type => return Err(QuoteError::CheckBodyType { body_type }),
            };
            if len_from_u32(declared) != expected {
                return Err(QuoteError::CheckBodySize {
                    body_type,
                    declared,
                    expected,
                });
            }
            body_version
        };
        let body = TdReportBody::read(&mut reader, body_version)?;
        let sig_len = len_from_u32(reader.u32("signature data length")?);
        let sig_start = reader.position();
        // Bound every signature-data read by the declared length.
        let sig_end = sig_start.saturating_add(sig_len);
        if sig_end > bytes.len() {
            return Err(QuoteError::ReadField {
                source: ShortRead {
                    field: "signature data",
                    offset: sig_start,
                    needed: sig_len,
                    available: bytes.len() - sig_start,
                },
            });
        }
        let mut sig = Reader::at(reader.window(sig_end), sig_start);
        let signature = sig.array("quote signature")?;
        let attestation_key = sig.array("attestation key")?;
        let certification = CertificationData::read(&mut sig, false)?;
        let trailing = sig.rest().to_vec();
        Ok(Self {
            header,
            body,
            signature_data: QuoteSignatureData {
                signature,
                attestation_key,
                certification,
                trailing,
            },
            trailing_len: bytes.len() - sig_end,
        })
    }

    /// Length of the signed region (header, v5 descriptor and body).
    pub fn signed_len(&self) -> usize {
        let descriptor = if self.header.version == 5 { 6 } else { 0 };
        HEADER_LEN + descriptor + self.body.encoded_len()
    }

    /// Encodes the signed region: header, (v5) body descriptor and body.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.signed_len());
        out.extend_from_slice(&self.header.version.to_le_bytes());
        out.extend_from_slice(&self.header.attestation_key_type.to_le_bytes());
        out.extend_from_slice(&self.header.tee_type.to_le_bytes());
        out.extend_from_slice(&self.header.reserved);
        out.extend_from_slice(&self.header.qe_vendor_id);
        out.extend_from_slice(&self.header.user_data);
        if self.header.version == 5 {
            let (body_type, size) = match self.body.version {
                TdReportVersion::Td10 => (V5_BODY_TYPE_TD10, TD_REPORT10_BODY_LEN),
                TdReportVersion::Td15 => (V5_BODY_TYPE_TD15, TD_REPORT15_BODY_LEN),
            };
            out.extend_from_slice(&body_type.to_le_bytes());
            out.extend_from_slice(&u32::try_from(size).unwrap_or(u32::MAX).to_le_bytes());
        }
        out.extend_from_slice(&self.body.to_bytes());
        out
    }

    /// Encodes the whole quote (without any trailing padding).
    pub fn to_bytes(&self) -> Result<Vec<u8>, QuoteError> {
        let mut sig = Vec::new();
        sig.extend_from_slice(&self.signature_data.signature);
        sig.extend_from_slice(&self.signature_data.attestation_key);
        self.signature_data.certification.write(&mut sig)?;
        sig.extend_from_slice(&self.signature_data.trailing);
        let mut out = self.signed_bytes();
        out.extend_from_slice(&encode_u32_len("signature data", sig.len())?);
        out.extend_from_slice(&sig);
        Ok(out)
    }

    /// The RTMRs of the TD.
    pub fn rtmrs(&self) -> &Rtmrs {
        &self.body.rtmrs
    }

    /// The QE report certification data, if the quote carries type 6.
    pub fn qe_report_certification(&self) -> Option<&QeReportCertificationData> {
        match &self.signature_data.certification {
            CertificationData::QeReport(qe) => Some(qe),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    const DCAP_QVL_QUOTE: &[u8] = include_bytes!("../testdata/dcap-qvl-tdx_quote");
    const SPR_E4_QUOTE: &[u8] =
        include_bytes!("../testdata/go-tdx-guest-tdx_prod_quote_SPR_E4.dat");
    const RA_TLS_QUOTE: &[u8] = include_bytes!("../testdata/dstack-ra-tls-tdx_quote.bin");
    const TDX_QUOTE_HEX: &str = include_str!("../testdata/dcap-qvl-tdx-quote.hex");
    const TAPPD_QUOTE_HEX: &str = include_str!("../testdata/dcap-qvl-quote-from-tappd.hex");

    pub(crate) fn decode_hex_file(text: &str) -> Vec<u8> {
        let text = text.trim();
        hex::decode(text.strip_prefix("0x").unwrap_or(text)).unwrap()
    }

    fn all_quotes() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("dcap-qvl tdx_quote", DCAP_QVL_QUOTE.to_vec()),
            ("spr e4", SPR_E4_QUOTE.to_vec()),
            ("ra-tls", RA_TLS_QUOTE.to_vec()),
            ("tdx-quote.hex", decode_hex_file(TDX_QUOTE_HEX)),
            ("tappd", decode_hex_file(TAPPD_QUOTE_HEX)),
        ]
    }

    /// Converts a v4 quote into a v5 one with the given body (signatures no longer verify).
    fn to_v5(v4: &[u8], td15: bool) -> Vec<u8> {
        let mut quote = Quote::parse(v4).unwrap();
        quote.header.version = 5;
        if td15 {
            quote.body.version = TdReportVersion::Td15;
            quote.body.tee_tcb_svn2 = Some([7; 16]);
            quote.body.mr_service_td = Some(Sha384Digest([9; 48]));
        }
        quote.to_bytes().unwrap()
    }

    #[test]
    fn dcap_qvl_sample_fields() {
        let quote = Quote::parse(DCAP_QVL_QUOTE).unwrap();
        assert_eq!(quote.header.version, 4);
        assert_eq!(quote.header.tee_type, TEE_TYPE_TDX);
        assert_eq!(quote.header.qe_vendor_id, INTEL_QE_VENDOR_ID);
        assert_eq!(quote.body.version, TdReportVersion::Td10);
        assert!(quote.body.mr_td.to_string().starts_with("91eb2b44"));
        assert!(quote.body.mr_td.to_string().ends_with("18b7"));
        let rtmrs = quote.rtmrs().values();
        assert!(rtmrs[0].to_string().starts_with("44c0197b"));
        assert!(rtmrs[0].to_string().ends_with("c9c0"));
        assert!(rtmrs[1].to_string().starts_with("0084452c"));
        assert!(rtmrs[2].to_string().ends_with("3132"));
        assert!(rtmrs[3].is_zero());
        assert_eq!(quote.body.td_attributes, 0x1000_0000);
        assert_eq!(quote.body.xfam, 0x602e7);
        assert_eq!(&quote.body.tee_tcb_svn[..3], &[6, 1, 3]);
        // Declared 4936, file 5006.
        assert_eq!(quote.trailing_len, 5006 - 4936);
        assert_eq!(quote.to_bytes().unwrap().len(), 4936);
        assert_eq!(quote.signed_len(), 0x278);
        let qe = quote.qe_report_certification().unwrap();
        assert_eq!(qe.qe_auth_data.len(), 32);
        assert_eq!(qe.certification.cert_type(), CERT_TYPE_PCK_CHAIN);
        let pem = quote
            .signature_data
            .certification
            .pck_cert_chain_pem()
            .unwrap();
        assert_eq!(pem.len(), 3678);
        assert!(pem.starts_with(b"-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn spr_e4_sample_fields() {
        let quote = Quote::parse(SPR_E4_QUOTE).unwrap();
        assert!(quote.body.mr_td.to_string().starts_with("6363b804"));
        assert!(
            quote.rtmrs().values()[0]
                .to_string()
                .starts_with("2927da70")
        );
        assert_eq!(quote.body.td_attributes, 0x4000_0000);
        assert_eq!(quote.to_bytes().unwrap().len(), 4935);
        assert_eq!(quote.trailing_len, 4974 - 4935);
        let qe = quote.qe_report_certification().unwrap();
        assert_eq!(qe.qe_auth_data, (0u8..32).collect::<Vec<_>>());
    }

    #[test]
    fn other_samples_parse() {
        let quote = Quote::parse(&decode_hex_file(TDX_QUOTE_HEX)).unwrap();
        assert!(quote.body.mr_td.to_string().starts_with("7ba9e262"));
        let quote = Quote::parse(&decode_hex_file(TAPPD_QUOTE_HEX)).unwrap();
        assert!(
            quote.rtmrs().values()[0]
                .to_string()
                .starts_with("274c2344116db7c6")
        );
        let quote = Quote::parse(RA_TLS_QUOTE).unwrap();
        assert_eq!(quote.header.version, 4);
    }

    #[test]
    fn re_encoding_is_byte_exact() {
        for (name, bytes) in all_quotes() {
            let quote = Quote::parse(&bytes).unwrap();
            let encoded = quote.to_bytes().unwrap();
            assert_eq!(&bytes[..encoded.len()], &encoded[..], "{name}");
            // go-tdx-guest appends "extra bytes(only for testing purpose)"; the others pad with zeros.
            if name != "spr e4" {
                assert!(
                    bytes[encoded.len()..].iter().all(|&b| b == 0),
                    "{name}: padding is zero"
                );
            }
            assert_eq!(quote.signed_bytes(), bytes[..quote.signed_len()], "{name}");
        }
    }

    #[test]
    fn qe_report_binds_attestation_key() {
        for (name, bytes) in all_quotes() {
            let quote = Quote::parse(&bytes).unwrap();
            let qe = quote.qe_report_certification().unwrap();
            let mut hasher = Sha256::new();
            hasher.update(quote.signature_data.attestation_key);
            hasher.update(&qe.qe_auth_data);
            let hash: [u8; 32] = hasher.finalize().into();
            assert_eq!(qe.qe_report.report_data.0[..32], hash, "{name}");
            assert_eq!(qe.qe_report.report_data.0[32..], [0; 32], "{name}");
        }
    }

    #[test]
    fn v5_bodies_parse() {
        let v5 = to_v5(DCAP_QVL_QUOTE, false);
        let quote = Quote::parse(&v5).unwrap();
        assert_eq!(quote.header.version, 5);
        assert_eq!(quote.body.version, TdReportVersion::Td10);
        assert_eq!(quote.signed_len(), 0x278 + 6);
        assert_eq!(quote.to_bytes().unwrap(), v5);
        assert_eq!(
            quote.body,
            Quote::parse(DCAP_QVL_QUOTE).unwrap().body,
            "same body as the v4 original"
        );

        let v5 = to_v5(DCAP_QVL_QUOTE, true);
        let quote = Quote::parse(&v5).unwrap();
        assert_eq!(quote.body.version, TdReportVersion::Td15);
        assert_eq!(quote.signed_len(), 0x2BE);
        assert_eq!(quote.body.tee_tcb_svn2, Some([7; 16]));
        assert_eq!(quote.body.mr_service_td, Some(Sha384Digest([9; 48])));
        assert_eq!(u16::from_le_bytes([v5[0x30], v5[0x31]]), 3);
        assert_eq!(&v5[0x32..0x36], &648u32.to_le_bytes());
        // MRTD at v4 absolute 0xB8 + 6.
        assert_eq!(&v5[0xB8 + 6..0xB8 + 6 + 48], &quote.body.mr_td.0);
    }

    #[test]
    fn header_errors_are_typed() {
        let mut bad = DCAP_QVL_QUOTE.to_vec();
        bad[0] = 3;
        assert_eq!(
            Quote::parse(&bad),
            Err(QuoteError::CheckVersion { version: 3 })
        );
        let mut bad = DCAP_QVL_QUOTE.to_vec();
        bad[4] = 0;
        assert_eq!(
            Quote::parse(&bad),
            Err(QuoteError::CheckTeeType { tee_type: 0 })
        );
        let mut bad = DCAP_QVL_QUOTE.to_vec();
        bad[2] = 3;
        assert_eq!(
            Quote::parse(&bad),
            Err(QuoteError::CheckAttestationKeyType { key_type: 3 })
        );
        let mut v5 = to_v5(DCAP_QVL_QUOTE, false);
        v5[0x30] = 1;
        assert_eq!(
            Quote::parse(&v5),
            Err(QuoteError::CheckBodyType { body_type: 1 })
        );
        let mut v5 = to_v5(DCAP_QVL_QUOTE, false);
        v5[0x32] = 0;
        assert_eq!(
            Quote::parse(&v5),
            Err(QuoteError::CheckBodySize {
                body_type: 2,
                declared: 512,
                expected: 584
            })
        );
    }

    #[test]
    fn truncation_reports_field_and_offset() {
        assert_eq!(
            Quote::parse(&DCAP_QVL_QUOTE[..0x278]),
            Err(QuoteError::ReadField {
                source: ShortRead {
                    field: "signature data length",
                    offset: 0x278,
                    needed: 4,
                    available: 0
                }
            })
        );
        assert_eq!(
            Quote::parse(&DCAP_QVL_QUOTE[..4000]),
            Err(QuoteError::ReadField {
                source: ShortRead {
                    field: "signature data",
                    offset: 0x27C,
                    needed: 4936 - 0x27C,
                    available: 4000 - 0x27C
                }
            })
        );
        // A huge sig_data_len must not overflow.
        let mut bad = DCAP_QVL_QUOTE.to_vec();
        bad[0x278..0x27C].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Quote::parse(&bad),
            Err(QuoteError::ReadField { .. })
        ));
    }

    #[test]
    fn nested_qe_report_is_rejected() {
        let mut quote = Quote::parse(DCAP_QVL_QUOTE).unwrap();
        let qe = quote.qe_report_certification().unwrap().clone();
        let mut inner = qe.clone();
        inner.certification = CertificationData::QeReport(Box::new(qe));
        quote.signature_data.certification = CertificationData::QeReport(Box::new(inner));
        let bytes = quote.to_bytes().unwrap();
        assert!(matches!(
            Quote::parse(&bytes),
            Err(QuoteError::CheckNestedCertification { .. })
        ));
    }

    /// Found by the `quote` fuzz target: bytes after the inner certification data of a type-6
    /// block were silently dropped (the re-encoded quote differed from the input).
    #[test]
    fn oversized_qe_report_certification_is_rejected() {
        // v4: signature data length at 0x278; type-6 header at 0x27C + 128.
        let cert = 0x27C + 128;
        let mut bad = DCAP_QVL_QUOTE.to_vec();
        let size = u32::from_le_bytes(bad[cert + 2..cert + 6].try_into().unwrap());
        let sig_len = u32::from_le_bytes(bad[0x278..0x27C].try_into().unwrap());
        bad[cert + 2..cert + 6].copy_from_slice(&(size + 1).to_le_bytes());
        bad[0x278..0x27C].copy_from_slice(&(sig_len + 1).to_le_bytes());
        bad.insert(cert + 6 + size as usize, 0xAA);
        assert_eq!(
            Quote::parse(&bad),
            Err(QuoteError::CheckQeReportCertificationSize {
                offset: cert,
                declared: size as usize + 1,
                used: size as usize,
            })
        );
    }

    #[test]
    fn parser_never_panics() {
        let mut inputs = all_quotes();
        inputs.push(("v5 td15", to_v5(DCAP_QVL_QUOTE, true)));
        for (_, bytes) in &inputs {
            let declared = Quote::parse(bytes).unwrap().to_bytes().unwrap().len();
            for end in 0..declared {
                let _ = Quote::parse(&bytes[..end]).unwrap_err();
            }
        }
        let (_, bytes) = &inputs[0];
        for i in 0..bytes.len().min(0x600) {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut mutated = bytes.clone();
                mutated[i] ^= flip;
                let _ = Quote::parse(&mutated);
            }
        }
        let _ = Quote::parse(&[]);
        let _ = Quote::parse(&[0xff; 4096]);
    }
}
