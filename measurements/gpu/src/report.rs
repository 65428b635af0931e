//! The attestation report of a GPU or an NVSwitch: an SPDM 1.1 GET_MEASUREMENTS request
//! followed by the MEASUREMENTS response (spec §1.3). All integers are little-endian; the length
//! equation `37 + 42 + L1 + L2 + 96` must hold exactly. The SPDM layout is shared; only the opaque
//! data differs by device kind ([`OpaqueData`] for GPUs, [`SwitchOpaqueData`] for LS10
//! switches), so [`Report`] is generic over it.

use std::collections::BTreeMap;

use thiserror::Error;

/// Size of the SPDM GET_MEASUREMENTS request at the start of the report.
pub const REQUEST_LEN: usize = 37;
/// Raw ECDSA P-384 signature `r ‖ s` at the end of the report.
pub const SIGNATURE_LEN: usize = 96;
/// Largest report NVML can return (`attestationReport[0x2000]`).
pub const MAX_REPORT_LEN: usize = 0x2000;
/// SPDM version byte (1.1).
pub const SPDM_VERSION_11: u8 = 0x11;
/// GET_MEASUREMENTS request code.
pub const GET_MEASUREMENTS: u8 = 0xE0;
/// MEASUREMENTS response code.
pub const MEASUREMENTS: u8 = 0x60;
/// DMTF measurement specification.
pub const DMTF_MEASUREMENT_SPEC: u8 = 0x01;
/// Magic of the versioned ("NVDAOD") opaque-data format of drivers from CUDA 13.5 on.
pub const NVDAOD_MAGIC: &[u8; 6] = b"NVDAOD";

/// Fixed part of the response before the measurement record.
const RESPONSE_HEADER_LEN: usize = 8;
/// Minimum report size: request, response header, responder nonce, opaque length, signature.
pub const MIN_REPORT_LEN: usize = REQUEST_LEN + RESPONSE_HEADER_LEN + 32 + 2 + SIGNATURE_LEN;

/// Why a report does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReportError {
    /// Shorter than the fixed parts or larger than NVML's buffer.
    #[error("report size {len} outside {MIN_REPORT_LEN}..={MAX_REPORT_LEN}")]
    CheckSize { len: usize },
    /// A header byte differs from SPDM 1.1 GET_MEASUREMENTS / MEASUREMENTS.
    #[error("{field} is {actual:#04x}, expected {expected:#04x}")]
    CheckHeader {
        field: &'static str,
        expected: u8,
        actual: u8,
    },
    /// The length equation does not hold (truncated report or trailing bytes).
    #[error("report is {actual} bytes but its lengths add up to {expected}")]
    CheckLength { expected: usize, actual: usize },
    /// A measurement block runs past the measurement record.
    #[error("measurement block {block} at record offset {offset} overruns the record")]
    ReadBlock { block: usize, offset: usize },
    /// The blocks do not fill the record exactly.
    #[error("{blocks} measurement blocks use {used} of {record} record bytes")]
    CheckBlockCount {
        blocks: usize,
        used: usize,
        record: usize,
    },
    /// A block's measurement specification is not DMTF.
    #[error("measurement block index {index} has specification {spec:#04x}, expected DMTF (0x01)")]
    CheckMeasurementSpec { index: u8, spec: u8 },
    /// Index 0 (SPDM indexes are 1-based).
    #[error("measurement block with index 0")]
    CheckBlockIndex,
    /// The same index twice.
    #[error("measurement block index {index} appears twice")]
    CheckDuplicateIndex { index: u8 },
    /// The DMTF value header disagrees with the block size.
    #[error(
        "measurement block index {index}: DMTF value size {value_size} does not fit block size {block_size}"
    )]
    CheckDmtfSize {
        index: u8,
        value_size: usize,
        block_size: usize,
    },
    /// The opaque data does not parse.
    #[error("opaque data")]
    ParseOpaque(#[source] OpaqueError),
}

/// Why the opaque data does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OpaqueError {
    /// The data starts with the `NVDAOD` magic of the versioned format this verifier does not
    /// implement.
    #[error("unsupported opaque data format (NVDAOD versioned opaque data)")]
    CheckFormat,
    /// A TLV header or value runs past the end.
    #[error("opaque field at offset {offset} overruns the opaque data")]
    ReadField { offset: usize },
    /// A field id neither reference verifier knows.
    #[error("unknown opaque field id {id}")]
    CheckFieldId { id: u16 },
    /// The same field twice.
    #[error("opaque field id {id} appears twice")]
    CheckDuplicateField { id: u16 },
    /// OPAQUE_DATA_VERSION greater than 1.
    #[error("opaque data version {version} is not supported")]
    CheckVersion { version: u64 },
    /// A field has the wrong length for its type.
    #[error("opaque field {name} has length {len}")]
    CheckFieldLength { name: &'static str, len: usize },
    /// A mandatory field is absent.
    #[error("mandatory opaque field {name} is missing")]
    FindField { name: &'static str },
    /// An ASCII field holds bytes that are not printable ASCII.
    #[error("opaque field {name} is not ASCII text")]
    DecodeText { name: &'static str },
    /// NVDEC0_STATUS other than 0xAA or 0x55.
    #[error("NVDEC0 status {value:#04x} is neither 0xAA nor 0x55")]
    CheckNvdecStatus { value: u8 },
    /// PROTECTED_PCIE_STATUS other than 0xAA or 0x55.
    #[error("protected PCIe status {value:#04x} is neither 0xAA nor 0x55")]
    CheckPpcieStatus { value: u8 },
}

/// Opaque field ids (spec §1.3).
pub mod field {
    pub const CERT_ISSUER_NAME: u16 = 1;
    pub const CERT_AUTHORITY_KEY_IDENTIFIER: u16 = 2;
    pub const DRIVER_VERSION: u16 = 3;
    pub const GPU_INFO: u16 = 4;
    pub const SKU: u16 = 5;
    pub const VBIOS_VERSION: u16 = 6;
    pub const MANUFACTURER_ID: u16 = 7;
    pub const TAMPER_DETECTION: u16 = 8;
    pub const SMC: u16 = 9;
    pub const VPR: u16 = 10;
    pub const NVDEC0_STATUS: u16 = 11;
    pub const MSRSCNT: u16 = 12;
    pub const CPRINFO: u16 = 13;
    pub const BOARD_ID: u16 = 14;
    pub const CHIP_SKU: u16 = 15;
    pub const CHIP_SKU_MOD: u16 = 16;
    pub const PROJECT: u16 = 17;
    pub const PROJECT_SKU: u16 = 18;
    pub const PROJECT_SKU_MOD: u16 = 19;
    pub const FWID: u16 = 20;
    pub const PROTECTED_PCIE_STATUS: u16 = 21;
    pub const SWITCH_PDI: u16 = 22;
    pub const FLOORSWEPT_PORTS: u16 = 23;
    pub const POSITION_ID: u16 = 24;
    pub const LOCK_SWITCH_STATUS: u16 = 25;
    pub const SWITCH_GPU_PDIS: u16 = 26;
    pub const GPU_LINK_CONN: u16 = 32;
    pub const SYS_ENABLE_STATUS: u16 = 33;
    pub const OPAQUE_DATA_VERSION: u16 = 34;
    pub const CHIP_INFO: u16 = 35;
    pub const FEATURE_FLAG: u16 = 36;
    pub const INVALID: u16 = 255;

    /// NVSwitch (LS10) names of ids shared with the GPU table.
    pub mod switch {
        /// ASCII BIOS version (`96.10.55.00.01`), where GPUs have the 8-byte VBIOS version.
        pub const BIOS_VERSION: u16 = super::VBIOS_VERSION;
        /// The switch's own 8-byte PDI.
        pub const DEVICE_PDI: u16 = super::SWITCH_PDI;
        /// Disabled ports.
        pub const DISABLED_PORTS: u16 = super::FLOORSWEPT_PORTS;
        /// Position of the switch on the baseboard.
        pub const SWITCH_POSITION_ID: u16 = super::POSITION_ID;
        /// Lock status.
        pub const SWITCH_LOCK_STATUS: u16 = super::LOCK_SWITCH_STATUS;
        /// 8 × 8-byte GPU PDIs, then one port→GPU byte per port.
        pub const SWITCH_GPU_PDIS: u16 = super::SWITCH_GPU_PDIS;
        /// Switch ports.
        pub const SWITCH_PORTS: u16 = 27;
    }

    /// Every id the legacy GPU TLV format defines.
    pub(crate) fn is_known(id: u16) -> bool {
        matches!(id, 1..=26 | 32..=36 | 255)
    }

    /// Every id NVAT's switch opaque parser accepts (1..=27).
    pub(crate) fn is_known_switch(id: u16) -> bool {
        matches!(id, 1..=27)
    }
}

/// Size of one PDI (platform device identifier) in the opaque data.
pub const PDI_LEN: usize = 8;
/// GPU PDIs at the start of a switch's SWITCH_GPU_PDIS field.
pub const SWITCH_GPU_PDI_COUNT: usize = 8;

/// A platform device identifier, as the number NVIDIA prints: a GPU's SWITCH_PDI entries are
/// read little-endian, a switch's DEVICE_PDI and SWITCH_GPU_PDIS entries in their raw byte order
/// (big-endian), so the same switch compares equal from both sides (spec §2; the switch's
/// DEVICE_PDI also appears in its BROM certificate's serial number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pdi(pub u64);

impl Pdi {
    /// A GPU SWITCH_PDI entry (little-endian).
    pub fn from_le(raw: [u8; PDI_LEN]) -> Self {
        Self(u64::from_le_bytes(raw))
    }

    /// A switch DEVICE_PDI or SWITCH_GPU_PDIS entry (raw byte order).
    pub fn from_raw(raw: [u8; PDI_LEN]) -> Self {
        Self(u64::from_be_bytes(raw))
    }

    /// Zero marks a disabled NVLink.
    pub fn is_disabled(self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Display for Pdi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl serde::Serialize for Pdi {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

fn pdis(
    name: &'static str,
    value: &[u8],
    read: fn([u8; PDI_LEN]) -> Pdi,
) -> Result<Vec<Pdi>, OpaqueError> {
    if !value.len().is_multiple_of(PDI_LEN) {
        return Err(OpaqueError::CheckFieldLength {
            name,
            len: value.len(),
        });
    }
    Ok(value
        .chunks_exact(PDI_LEN)
        .filter_map(|c| <[u8; PDI_LEN]>::try_from(c).ok())
        .map(read)
        .collect())
}

/// NVDEC0 engine status: decides whether RIM index 35 is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NvdecStatus {
    /// 0xAA: compare index 35.
    Enabled,
    /// 0x55: skip index 35.
    Disabled,
}

/// The opaque fields the verifier uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaqueData {
    /// `DRIVER_VERSION`, e.g. `550.90.07`.
    pub driver_version: String,
    /// `VBIOS_VERSION` formatted as `96.00.5E.00.01`.
    pub vbios_version: String,
    /// `PROJECT`, e.g. `1010`.
    pub project: String,
    /// `PROJECT_SKU`, e.g. `0200`.
    pub project_sku: String,
    /// `CHIP_SKU`, e.g. `882`.
    pub chip_sku: String,
    /// `NVDEC0_STATUS`.
    pub nvdec0_status: NvdecStatus,
    /// `FWID` (absent in older firmware).
    pub fwid: Option<[u8; 48]>,
    /// `PROTECTED_PCIE_STATUS` == 0xAA.
    pub protected_pcie: Option<bool>,
    /// `SWITCH_PDI`: one PDI per NVLink (read little-endian; zero = disabled link).
    pub switch_pdis: Option<Vec<Pdi>>,
    /// `FEATURE_FLAG` (2 = PPCIe; the other values are ambiguous between references).
    pub feature_flag: Option<u64>,
    /// `OPAQUE_DATA_VERSION`.
    pub opaque_data_version: Option<u64>,
    /// `CHIP_INFO` (Blackwell: names the driver RIM).
    pub chip_info: Option<String>,
    /// Raw fields by id, for display.
    pub fields: BTreeMap<u16, Vec<u8>>,
}

/// The device kind's opaque data: how the TLVs after the measurement record are read.
pub trait Opaque: Sized {
    /// Parses the opaque data of this device kind (fail closed on unknown ids).
    fn parse(bytes: &[u8]) -> Result<Self, OpaqueError>;
}

impl Opaque for OpaqueData {
    fn parse(bytes: &[u8]) -> Result<Self, OpaqueError> {
        OpaqueData::parse(bytes)
    }
}

impl Opaque for SwitchOpaqueData {
    fn parse(bytes: &[u8]) -> Result<Self, OpaqueError> {
        SwitchOpaqueData::parse(bytes)
    }
}

/// A GPU's attestation report.
pub type AttestationReport = Report<OpaqueData>;
/// An NVSwitch's attestation report (31 blocks on LS10).
pub type SwitchReport = Report<SwitchOpaqueData>;

/// A parsed attestation report with the opaque data of its device kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report<O> {
    /// The nonce in the GET_MEASUREMENTS request (the caller's nonce).
    pub request_nonce: [u8; 32],
    /// The responder's own random nonce (never compared).
    pub response_nonce: [u8; 32],
    /// Measurement values by SPDM index (1-based).
    pub measurements: BTreeMap<u8, Vec<u8>>,
    /// Number of blocks the response announced.
    pub block_count: u8,
    /// The opaque data.
    pub opaque: O,
    /// Bytes covered by the signature: the whole report minus the last 96 bytes.
    pub signed_len: usize,
    /// Raw `r ‖ s`.
    pub signature: [u8; SIGNATURE_LEN],
}

fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    let b = bytes.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

fn array_at<const N: usize>(bytes: &[u8], offset: usize) -> Option<[u8; N]> {
    bytes
        .get(offset..offset.checked_add(N)?)
        .and_then(|s| s.try_into().ok())
}

impl<O: Opaque> Report<O> {
    /// Parses a report with the exact length rules of spec §1.3 and §6.4.
    pub fn parse(report: &[u8]) -> Result<Self, ReportError> {
        let len = report.len();
        if !(MIN_REPORT_LEN..=MAX_REPORT_LEN).contains(&len) {
            return Err(ReportError::CheckSize { len });
        }
        let header = |field, offset: usize, expected: u8| {
            let actual = report[offset];
            if actual == expected {
                Ok(())
            } else {
                Err(ReportError::CheckHeader {
                    field,
                    expected,
                    actual,
                })
            }
        };
        header("request SPDMVersion", 0, SPDM_VERSION_11)?;
        header("request code", 1, GET_MEASUREMENTS)?;
        header("request Param1 (signature requested)", 2, 0x01)?;
        header("request Param2 (all measurements)", 3, 0xFF)?;
        let request_nonce = array_at::<32>(report, 4).ok_or(ReportError::CheckSize { len })?;
        let r = REQUEST_LEN;
        header("response SPDMVersion", r, SPDM_VERSION_11)?;
        header("response code", r + 1, MEASUREMENTS)?;
        let block_count = report[r + 4];
        let record_len = usize::from(report[r + 5])
            | usize::from(report[r + 6]) << 8
            | usize::from(report[r + 7]) << 16;
        let record_start = r + RESPONSE_HEADER_LEN;
        // Lengths known so far must leave room for nonce, opaque length and signature.
        let after_record = record_start + record_len;
        let opaque_len_at = after_record + 32;
        let opaque_len = u16_at(report, opaque_len_at).ok_or(ReportError::CheckLength {
            expected: opaque_len_at + 2 + SIGNATURE_LEN,
            actual: len,
        })?;
        let opaque_start = opaque_len_at + 2;
        let expected = opaque_start + usize::from(opaque_len) + SIGNATURE_LEN;
        if expected != len {
            return Err(ReportError::CheckLength {
                expected,
                actual: len,
            });
        }
        let record = &report[record_start..after_record];
        let measurements = parse_blocks(record, block_count)?;
        let response_nonce =
            array_at::<32>(report, after_record).ok_or(ReportError::CheckLength {
                expected,
                actual: len,
            })?;
        let opaque_bytes = &report[opaque_start..opaque_start + usize::from(opaque_len)];
        let opaque = O::parse(opaque_bytes).map_err(ReportError::ParseOpaque)?;
        let signed_len = len - SIGNATURE_LEN;
        let signature =
            array_at::<SIGNATURE_LEN>(report, signed_len).ok_or(ReportError::CheckLength {
                expected,
                actual: len,
            })?;
        Ok(Self {
            request_nonce,
            response_nonce,
            measurements,
            block_count,
            opaque,
            signed_len,
            signature,
        })
    }
}

fn parse_blocks(record: &[u8], block_count: u8) -> Result<BTreeMap<u8, Vec<u8>>, ReportError> {
    let mut blocks = BTreeMap::new();
    let mut offset = 0usize;
    for block in 0..usize::from(block_count) {
        let index = *record
            .get(offset)
            .ok_or(ReportError::ReadBlock { block, offset })?;
        let spec = *record
            .get(offset + 1)
            .ok_or(ReportError::ReadBlock { block, offset })?;
        let size = usize::from(
            u16_at(record, offset + 2).ok_or(ReportError::ReadBlock { block, offset })?,
        );
        let body = record
            .get(offset + 4..offset + 4 + size)
            .ok_or(ReportError::ReadBlock { block, offset })?;
        if index == 0 {
            return Err(ReportError::CheckBlockIndex);
        }
        if spec != DMTF_MEASUREMENT_SPEC {
            return Err(ReportError::CheckMeasurementSpec { index, spec });
        }
        // DMTF measurement: type u8, value size u16, value.
        let value_size = usize::from(u16_at(body, 1).ok_or(ReportError::CheckDmtfSize {
            index,
            value_size: 0,
            block_size: size,
        })?);
        if 3 + value_size != size {
            return Err(ReportError::CheckDmtfSize {
                index,
                value_size,
                block_size: size,
            });
        }
        if blocks.insert(index, body[3..].to_vec()).is_some() {
            return Err(ReportError::CheckDuplicateIndex { index });
        }
        offset += 4 + size;
    }
    if offset != record.len() {
        return Err(ReportError::CheckBlockCount {
            blocks: usize::from(block_count),
            used: offset,
            record: record.len(),
        });
    }
    Ok(blocks)
}

/// Splits legacy TLV opaque data into fields; `NVDAOD`, overruns, duplicates and ids that
/// `known` refuses fail closed.
fn parse_tlvs(bytes: &[u8], known: fn(u16) -> bool) -> Result<BTreeMap<u16, Vec<u8>>, OpaqueError> {
    if bytes.starts_with(NVDAOD_MAGIC) {
        return Err(OpaqueError::CheckFormat);
    }
    let mut fields = BTreeMap::new();
    let mut offset = 0usize;
    while offset < bytes.len() {
        let id = u16_at(bytes, offset).ok_or(OpaqueError::ReadField { offset })?;
        let len = usize::from(u16_at(bytes, offset + 2).ok_or(OpaqueError::ReadField { offset })?);
        let value = bytes
            .get(offset + 4..offset + 4 + len)
            .ok_or(OpaqueError::ReadField { offset })?;
        if !known(id) {
            return Err(OpaqueError::CheckFieldId { id });
        }
        if fields.insert(id, value.to_vec()).is_some() {
            return Err(OpaqueError::CheckDuplicateField { id });
        }
        offset += 4 + len;
    }
    Ok(fields)
}

fn ascii(name: &'static str, value: &[u8]) -> Result<String, OpaqueError> {
    // NUL-terminated or NUL-padded; spaces are dropped (the RIM ids are built without them).
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    if value[end..].iter().any(|&b| b != 0) {
        return Err(OpaqueError::DecodeText { name });
    }
    let text: Vec<u8> = value[..end]
        .iter()
        .copied()
        .filter(|&b| b != b' ')
        .collect();
    if !text.iter().all(u8::is_ascii_graphic) {
        return Err(OpaqueError::DecodeText { name });
    }
    String::from_utf8(text).map_err(|_| OpaqueError::DecodeText { name })
}

fn le_int(name: &'static str, value: &[u8]) -> Result<u64, OpaqueError> {
    if value.is_empty() || value.len() > 8 {
        return Err(OpaqueError::CheckFieldLength {
            name,
            len: value.len(),
        });
    }
    let mut buf = [0u8; 8];
    buf[..value.len()].copy_from_slice(value);
    Ok(u64::from_le_bytes(buf))
}

/// Formats the 8 raw VBIOS bytes: reverse, hex, take `H[8..16] + H[6..8]`, dot-separate
/// five uppercase pairs (`00 9f 00 96 01 00 00 00` → `96.00.9F.00.01`).
pub fn format_vbios_version(raw: &[u8; 8]) -> String {
    let mut reversed = *raw;
    reversed.reverse();
    let hex = hex::encode_upper(reversed);
    let picked = format!("{}{}", &hex[8..16], &hex[6..8]);
    let pairs: Vec<&str> = (0..5).map(|i| &picked[2 * i..2 * i + 2]).collect();
    pairs.join(".")
}

impl OpaqueData {
    /// Parses the legacy TLV opaque data; unknown ids, version > 1 and the `NVDAOD` format
    /// fail closed.
    pub fn parse(bytes: &[u8]) -> Result<Self, OpaqueError> {
        let fields = parse_tlvs(bytes, field::is_known)?;
        let get = |id: u16, name: &'static str| -> Result<&Vec<u8>, OpaqueError> {
            fields.get(&id).ok_or(OpaqueError::FindField { name })
        };
        let opaque_data_version = fields
            .get(&field::OPAQUE_DATA_VERSION)
            .map(|v| le_int("OPAQUE_DATA_VERSION", v))
            .transpose()?;
        if let Some(version) = opaque_data_version
            && version > 1
        {
            return Err(OpaqueError::CheckVersion { version });
        }
        let driver_version = ascii(
            "DRIVER_VERSION",
            get(field::DRIVER_VERSION, "DRIVER_VERSION")?,
        )?;
        let vbios_raw = get(field::VBIOS_VERSION, "VBIOS_VERSION")?;
        let vbios: [u8; 8] =
            vbios_raw
                .as_slice()
                .try_into()
                .map_err(|_| OpaqueError::CheckFieldLength {
                    name: "VBIOS_VERSION",
                    len: vbios_raw.len(),
                })?;
        let project = ascii("PROJECT", get(field::PROJECT, "PROJECT")?)?;
        let project_sku = ascii("PROJECT_SKU", get(field::PROJECT_SKU, "PROJECT_SKU")?)?;
        let chip_sku = ascii("CHIP_SKU", get(field::CHIP_SKU, "CHIP_SKU")?)?;
        let nvdec = get(field::NVDEC0_STATUS, "NVDEC0_STATUS")?;
        let nvdec0_status = match nvdec.as_slice() {
            [0xAA] => NvdecStatus::Enabled,
            [0x55] => NvdecStatus::Disabled,
            [value] => return Err(OpaqueError::CheckNvdecStatus { value: *value }),
            other => {
                return Err(OpaqueError::CheckFieldLength {
                    name: "NVDEC0_STATUS",
                    len: other.len(),
                });
            }
        };
        let fwid = fields
            .get(&field::FWID)
            .map(|v| {
                <[u8; 48]>::try_from(v.as_slice()).map_err(|_| OpaqueError::CheckFieldLength {
                    name: "FWID",
                    len: v.len(),
                })
            })
            .transpose()?;
        let protected_pcie = fields
            .get(&field::PROTECTED_PCIE_STATUS)
            .map(|v| match v.as_slice() {
                [0xAA] => Ok(true),
                [0x55] => Ok(false),
                [value] => Err(OpaqueError::CheckPpcieStatus { value: *value }),
                other => Err(OpaqueError::CheckFieldLength {
                    name: "PROTECTED_PCIE_STATUS",
                    len: other.len(),
                }),
            })
            .transpose()?;
        let switch_pdis = fields
            .get(&field::SWITCH_PDI)
            .map(|v| pdis("SWITCH_PDI", v, Pdi::from_le))
            .transpose()?;
        let feature_flag = fields
            .get(&field::FEATURE_FLAG)
            .map(|v| le_int("FEATURE_FLAG", v))
            .transpose()?;
        let chip_info = fields
            .get(&field::CHIP_INFO)
            .map(|v| ascii("CHIP_INFO", v))
            .transpose()?;
        Ok(Self {
            driver_version,
            vbios_version: format_vbios_version(&vbios),
            project,
            project_sku,
            chip_sku,
            nvdec0_status,
            fwid,
            protected_pcie,
            switch_pdis,
            feature_flag,
            opaque_data_version,
            chip_info,
            fields,
        })
    }

    /// RIM service id of the VBIOS RIM:
    /// `NV_GPU_VBIOS_<PROJECT>_<PROJECT_SKU>_<CHIP_SKU>_<VBIOS without dots>` (uppercase).
    pub fn vbios_rim_id(&self) -> String {
        format!(
            "NV_GPU_VBIOS_{}_{}_{}_{}",
            self.project.to_uppercase(),
            self.project_sku.to_uppercase(),
            self.chip_sku.to_uppercase(),
            self.vbios_version.replace('.', "").to_uppercase()
        )
    }
}

/// LS10 constants of the switch BIOS RIM id (NVIDIA's reference tools hard-code them: the
/// switch opaque data carries no project fields).
pub const LS10_PROJECT: &str = "5612";
/// See [`LS10_PROJECT`].
pub const LS10_PROJECT_SKU: &str = "0002";
/// See [`LS10_PROJECT`].
pub const LS10_CHIP_SKU: &str = "890";

/// The opaque fields of an NVSwitch (LS10) report the verifier uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchOpaqueData {
    /// BIOS version (ASCII `96.10.55.00.01`, id 6).
    pub bios_version: String,
    /// The switch's own PDI (id 22), raw byte order.
    pub device_pdi: Option<Pdi>,
    /// The first 8 entries of SWITCH_GPU_PDIS (id 26): the GPUs this switch connects.
    pub gpu_pdis: Option<Vec<Pdi>>,
    /// The port→GPU bytes after the 8 GPU PDIs.
    pub gpu_ports: Option<Vec<u8>>,
    /// SWITCH_POSITION_ID (id 24), little-endian.
    pub position_id: Option<u64>,
    /// SWITCH_LOCK_STATUS (id 25), little-endian.
    pub lock_status: Option<u64>,
    /// FWID (id 20, absent on the sample firmware).
    pub fwid: Option<[u8; 48]>,
    /// Raw fields by id, for display.
    pub fields: BTreeMap<u16, Vec<u8>>,
}

impl SwitchOpaqueData {
    /// Parses switch opaque data: ids outside 1..=27 (NVAT's switch table), `NVDAOD`,
    /// duplicates and overruns fail closed; the BIOS version is mandatory.
    pub fn parse(bytes: &[u8]) -> Result<Self, OpaqueError> {
        let fields = parse_tlvs(bytes, field::is_known_switch)?;
        let bios = fields
            .get(&field::switch::BIOS_VERSION)
            .ok_or(OpaqueError::FindField {
                name: "BIOS_VERSION",
            })?;
        let bios_version = ascii("BIOS_VERSION", bios)?;
        if bios_version.is_empty() {
            return Err(OpaqueError::DecodeText {
                name: "BIOS_VERSION",
            });
        }
        let device_pdi = fields
            .get(&field::switch::DEVICE_PDI)
            .map(|v| {
                <[u8; PDI_LEN]>::try_from(v.as_slice())
                    .map(Pdi::from_raw)
                    .map_err(|_| OpaqueError::CheckFieldLength {
                        name: "DEVICE_PDI",
                        len: v.len(),
                    })
            })
            .transpose()?;
        let (gpu_pdis, gpu_ports) = match fields.get(&field::switch::SWITCH_GPU_PDIS) {
            None => (None, None),
            Some(v) => {
                let split = PDI_LEN * SWITCH_GPU_PDI_COUNT;
                let (head, ports) =
                    v.split_at_checked(split)
                        .ok_or(OpaqueError::CheckFieldLength {
                            name: "SWITCH_GPU_PDIS",
                            len: v.len(),
                        })?;
                (
                    Some(pdis("SWITCH_GPU_PDIS", head, Pdi::from_raw)?),
                    Some(ports.to_vec()),
                )
            }
        };
        let int =
            |id: u16, name: &'static str| fields.get(&id).map(|v| le_int(name, v)).transpose();
        let position_id = int(field::switch::SWITCH_POSITION_ID, "SWITCH_POSITION_ID")?;
        let lock_status = int(field::switch::SWITCH_LOCK_STATUS, "SWITCH_LOCK_STATUS")?;
        let fwid = fields
            .get(&field::FWID)
            .map(|v| {
                <[u8; 48]>::try_from(v.as_slice()).map_err(|_| OpaqueError::CheckFieldLength {
                    name: "FWID",
                    len: v.len(),
                })
            })
            .transpose()?;
        Ok(Self {
            bios_version,
            device_pdi,
            gpu_pdis,
            gpu_ports,
            position_id,
            lock_status,
            fwid,
            fields,
        })
    }

    /// RIM service id of the LS10 switch BIOS RIM:
    /// `NV_SWITCH_BIOS_5612_0002_890_<BIOS version without dots>` (uppercase).
    pub fn bios_rim_id(&self) -> String {
        format!(
            "NV_SWITCH_BIOS_{LS10_PROJECT}_{LS10_PROJECT_SKU}_{LS10_CHIP_SKU}_{}",
            self.bios_version.replace('.', "").to_uppercase()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vbios_formatting_matches_spec_example() {
        assert_eq!(
            format_vbios_version(&[0x00, 0x9f, 0x00, 0x96, 0x01, 0x00, 0x00, 0x00]),
            "96.00.9F.00.01"
        );
    }

    #[test]
    fn nvdaod_fails_closed() {
        let mut blob = b"NVDAOD".to_vec();
        blob.extend_from_slice(&[0, 0, 2, 0, 0, 0]);
        assert_eq!(OpaqueData::parse(&blob), Err(OpaqueError::CheckFormat));
    }

    #[test]
    fn unknown_field_id_fails_closed() {
        let blob = [40u8, 0, 1, 0, 7];
        assert_eq!(
            OpaqueData::parse(&blob),
            Err(OpaqueError::CheckFieldId { id: 40 })
        );
    }

    #[test]
    fn tlv_overrun_fails() {
        let blob = [3u8, 0, 9, 0, b'5'];
        assert_eq!(
            OpaqueData::parse(&blob),
            Err(OpaqueError::ReadField { offset: 0 })
        );
    }
}
