//! `/dev/tdx_guest`: the TDX guest misc device (`CONFIG_TDX_GUEST_DRIVER`).
//!
//! Upstream kernels (≥ 6.2) implement one ioctl, `TDX_CMD_GET_REPORT0`, which runs TDG.MR.REPORT
//! and returns the 1024-byte TDREPORT bound to 64 bytes of caller report data. Intel's
//! out-of-tree driver (used by dstack v0.5.x images) also implements `TDX_CMD_EXTEND_RTMR`, the
//! fallback RTMR extend path for kernels without the tsm-mr sysfs files (see [`crate::tsm_rtmr`]).
//! ABI facts: `shared/specs/tdx.md` §2 and §3.1.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use measure::rtmr::{RtmrIndex, Sha384Digest};

/// Where the driver's misc device lives.
pub const TDX_GUEST_PATH: &str = "/dev/tdx_guest";

/// Size of a TDREPORT_STRUCT.
pub const TDREPORT_LEN: usize = 1024;
/// Size of the caller-chosen report data bound into a TDREPORT or quote.
pub const REPORT_DATA_LEN: usize = 64;
/// Size of an RTMR value and of an extend digest (SHA-384).
pub const RTMR_LEN: usize = 48;

/// The ioctl request argument type: glibc declares `ioctl(int, unsigned long, ...)` (musl would
/// use `c_int`; this project only builds for glibc).
type IoctlRequest = libc::c_ulong;

// Linux `_IOC` encoding (include/uapi/asm-generic/ioctl.h, x86): nr 8 bits @0, type 8 bits @8,
// size 14 bits @16, direction 2 bits @30.
const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = 8;
const IOC_SIZESHIFT: u32 = 16;
const IOC_DIRSHIFT: u32 = 30;
const IOC_SIZEMASK: usize = (1 << 14) - 1;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `_IOC(dir, ty, nr, size)`; a size that does not fit the 14-bit field is a compile-time error
/// when used in a `const`.
const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> IoctlRequest {
    assert!(size <= IOC_SIZEMASK, "ioctl argument too large for _IOC");
    // The assert above bounds `size` to 14 bits, so the cast is lossless.
    #[allow(clippy::cast_possible_truncation)]
    let size = size as u32;
    let request = (dir << IOC_DIRSHIFT)
        | (size << IOC_SIZESHIFT)
        | ((ty as u32) << IOC_TYPESHIFT)
        | ((nr as u32) << IOC_NRSHIFT);
    request as IoctlRequest
}

const fn ior(ty: u8, nr: u8, size: usize) -> IoctlRequest {
    ioc(IOC_READ, ty, nr, size)
}

const fn iow(ty: u8, nr: u8, size: usize) -> IoctlRequest {
    ioc(IOC_WRITE, ty, nr, size)
}

const fn iowr(ty: u8, nr: u8, size: usize) -> IoctlRequest {
    ioc(IOC_READ | IOC_WRITE, ty, nr, size)
}

/// `struct tdx_report_req` (uapi/linux/tdx-guest.h).
#[repr(C)]
struct TdxReportReq {
    reportdata: [u8; REPORT_DATA_LEN],
    tdreport: [u8; TDREPORT_LEN],
}

/// `struct tdx_extend_rtmr_req` of Intel's out-of-tree driver: 48-byte digest then the index.
#[repr(C)]
struct TdxExtendRtmrReq {
    data: [u8; RTMR_LEN],
    index: u8,
}

/// `TDX_CMD_GET_REPORT0 = _IOWR('T', 1, struct tdx_report_req)`.
const TDX_CMD_GET_REPORT0: IoctlRequest = iowr(b'T', 1, size_of::<TdxReportReq>());
/// `TDX_CMD_EXTEND_RTMR = _IOR('T', 3, struct tdx_extend_rtmr_req)` (out-of-tree driver).
const TDX_CMD_EXTEND_RTMR: IoctlRequest = ior(b'T', 3, size_of::<TdxExtendRtmrReq>());
/// The "V3 driver" spelling of the same request, `_IOW('T', 3, …)`; tried when the kernel
/// answers `ENOTTY` to [`TDX_CMD_EXTEND_RTMR`].
const TDX_CMD_EXTEND_RTMR_V3: IoctlRequest = iow(b'T', 3, size_of::<TdxExtendRtmrReq>());

/// Errors of the `/dev/tdx_guest` interface.
#[derive(Debug, thiserror::Error)]
pub enum TdxGuestError {
    /// The device could not be opened.
    #[error("open TDX guest device {path}")]
    OpenTdxGuest {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `TDX_CMD_GET_REPORT0` failed.
    #[error("get TDREPORT from {path}")]
    GetReport {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `TDX_CMD_EXTEND_RTMR` failed (both request spellings).
    #[error("extend RTMR{index} through {path}")]
    ExtendRtmr {
        index: RtmrIndex,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A TDREPORT_STRUCT as returned by the TDX module (layout: `specs/tdx.md` §2).
#[derive(Clone, PartialEq, Eq)]
pub struct TdReport(Box<[u8; TDREPORT_LEN]>);

impl std::fmt::Debug for TdReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TdReport")
            .field("report_type", &self.0[0])
            .finish_non_exhaustive()
    }
}

impl TdReport {
    const REPORT_DATA_OFFSET: usize = 128;
    const MRTD_OFFSET: usize = 528;
    const RTMR0_OFFSET: usize = 720;

    /// Wraps raw TDREPORT bytes.
    pub fn from_bytes(bytes: [u8; TDREPORT_LEN]) -> Self {
        Self(Box::new(bytes))
    }

    /// The raw 1024 bytes (what a quote-generation service takes as input).
    pub fn as_bytes(&self) -> &[u8; TDREPORT_LEN] {
        &self.0
    }

    /// REPORTMACSTRUCT.REPORTDATA.
    pub fn report_data(&self) -> [u8; REPORT_DATA_LEN] {
        field(&self.0, Self::REPORT_DATA_OFFSET)
    }

    /// TDINFO.MRTD.
    pub fn mrtd(&self) -> Sha384Digest {
        Sha384Digest(field(&self.0, Self::MRTD_OFFSET))
    }

    /// TDINFO.RTMR[index].
    pub fn rtmr(&self, index: RtmrIndex) -> Sha384Digest {
        Sha384Digest(field(
            &self.0,
            Self::RTMR0_OFFSET + index.position() * RTMR_LEN,
        ))
    }
}

/// Copies `N` bytes at `offset` out of the fixed-size report; the offsets used are constants
/// inside the 1024-byte array (checked by tests), so this never goes out of bounds.
fn field<const N: usize>(bytes: &[u8; TDREPORT_LEN], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = bytes.get(offset..offset + N) {
        out.copy_from_slice(src);
    }
    out
}

/// An open `/dev/tdx_guest`.
#[derive(Debug)]
pub struct TdxGuest {
    file: File,
    path: PathBuf,
}

impl TdxGuest {
    /// Opens the TDX guest device at `path` (normally [`TDX_GUEST_PATH`]).
    pub fn open(path: &Path) -> Result<Self, TdxGuestError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| TdxGuestError::OpenTdxGuest {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    /// Runs `TDX_CMD_GET_REPORT0`: a TDREPORT whose REPORTDATA is `report_data`.
    pub fn report(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<TdReport, TdxGuestError> {
        let mut req = Box::new(TdxReportReq {
            reportdata: *report_data,
            tdreport: [0; TDREPORT_LEN],
        });
        let req_ptr: *mut TdxReportReq = &mut *req;
        // SAFETY: the fd is owned by `self.file` and open for the call's duration; `req_ptr`
        // points at a live, exclusively borrowed `TdxReportReq` whose size is exactly the size
        // encoded in TDX_CMD_GET_REPORT0, so the kernel reads 64 and writes at most 1024 bytes
        // inside that allocation.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), TDX_CMD_GET_REPORT0, req_ptr) };
        if rc < 0 {
            return Err(TdxGuestError::GetReport {
                path: self.path.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(TdReport(Box::new(req.tdreport)))
    }

    /// Extends RTMR `index` with `digest` through the legacy `TDX_CMD_EXTEND_RTMR` ioctl of
    /// Intel's out-of-tree driver (upstream kernels use [`crate::tsm_rtmr`] instead). Tries the
    /// `_IOR` spelling first and the `_IOW` one on `ENOTTY`.
    pub fn extend_rtmr(
        &self,
        index: RtmrIndex,
        digest: &Sha384Digest,
    ) -> Result<(), TdxGuestError> {
        let mut last = None;
        for request in [TDX_CMD_EXTEND_RTMR, TDX_CMD_EXTEND_RTMR_V3] {
            let mut req = Box::new(TdxExtendRtmrReq {
                data: digest.0,
                index: index.value(),
            });
            let req_ptr: *mut TdxExtendRtmrReq = &mut *req;
            // SAFETY: the fd is owned by `self.file`; `req_ptr` points at a live, exclusively
            // borrowed 49-byte `TdxExtendRtmrReq`, the size encoded in both request numbers, so
            // the kernel copies at most `size_of::<TdxExtendRtmrReq>()` bytes either way.
            let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), request, req_ptr) };
            if rc >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            let not_tty = err.raw_os_error() == Some(libc::ENOTTY);
            last = Some(err);
            if !not_tty {
                break;
            }
        }
        Err(TdxGuestError::ExtendRtmr {
            index,
            path: self.path.clone(),
            source: last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::ENOTTY)),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use super::*;

    #[test]
    fn ioctl_numbers_match_known_answers() {
        // specs/tdx.md §3.1 and vectors/dstack/crypto-and-appinfo-vectors.json.
        assert_eq!(TDX_CMD_GET_REPORT0, 0xC440_5401);
        assert_eq!(TDX_CMD_EXTEND_RTMR, 0x8031_5403);
        assert_eq!(TDX_CMD_EXTEND_RTMR_V3, 0x4031_5403);
        // Other requests of the same family, to pin the encoder itself.
        assert_eq!(ior(b'T', 4, 16), 0x8010_5404); // TDX_CMD_GET_QUOTE (out-of-tree)
        assert_eq!(iowr(b'T', 4, 16), 0xC010_5404); // V3 spelling
    }

    #[test]
    fn abi_struct_layouts() {
        assert_eq!(size_of::<TdxReportReq>(), 1088);
        assert_eq!(offset_of!(TdxReportReq, reportdata), 0);
        assert_eq!(offset_of!(TdxReportReq, tdreport), 64);
        assert_eq!(size_of::<TdxExtendRtmrReq>(), 49);
        assert_eq!(offset_of!(TdxExtendRtmrReq, data), 0);
        assert_eq!(offset_of!(TdxExtendRtmrReq, index), 48);
        assert_eq!(size_of::<IoctlRequest>(), 8);
    }

    #[test]
    fn tdreport_field_offsets() {
        let mut raw = [0u8; TDREPORT_LEN];
        raw[128..192].fill(0xAA);
        raw[528..576].fill(0xBB);
        for i in 0..4u8 {
            let off = 720 + usize::from(i) * 48;
            raw[off..off + 48].fill(0x10 + i);
        }
        let report = TdReport::from_bytes(raw);
        assert_eq!(report.report_data(), [0xAA; 64]);
        assert_eq!(report.mrtd(), Sha384Digest([0xBB; 48]));
        for i in RtmrIndex::ALL {
            assert_eq!(report.rtmr(i), Sha384Digest([0x10 + i.value(); 48]));
        }
        // RTMR3 ends right before SERVTD_HASH at 912.
        assert_eq!(720 + 4 * 48, 912);
    }

    #[test]
    fn open_missing_device_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tdx_guest");
        let err = TdxGuest::open(&path).unwrap_err();
        assert!(matches!(&err, TdxGuestError::OpenTdxGuest { path: p, .. } if *p == path));
    }

    #[test]
    fn ioctls_on_a_non_device_fail_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tdx_guest");
        std::fs::write(&path, b"").unwrap();
        let dev = TdxGuest::open(&path).unwrap();
        let err = dev.report(&[0; 64]).unwrap_err();
        match err {
            TdxGuestError::GetReport { source, .. } => {
                assert_eq!(source.raw_os_error(), Some(libc::ENOTTY));
            }
            other => panic!("unexpected {other:?}"),
        }
        let err = dev
            .extend_rtmr(RtmrIndex::R3, &Sha384Digest::ZERO)
            .unwrap_err();
        match err {
            TdxGuestError::ExtendRtmr { index, source, .. } => {
                assert_eq!(index, RtmrIndex::R3);
                assert_eq!(source.raw_os_error(), Some(libc::ENOTTY));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
