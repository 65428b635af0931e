//! bpf(2), only as far as the device cgroup of a container needs it: load a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program and attach it to a cgroup-v2 directory
//! (`BPF_CGROUP_DEVICE`). cgroup v2 has no `devices.allow` file: this program is the whole device
//! policy of the cgroup. The instructions come from `cvm-workload::devices` as raw 8-byte
//! `struct bpf_insn` encodings.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The program is empty or longer than the kernel takes.
    #[error("device program has {count} instructions (1..={BPF_MAXINSNS})")]
    ProgramLength {
        /// Instructions given.
        count: usize,
    },
    /// BPF_PROG_LOAD failed (the verifier's log, if any, follows).
    #[error("load the device cgroup program (verifier: {log})")]
    LoadProgram {
        /// The verifier log, trimmed.
        log: String,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// The cgroup directory could not be opened.
    #[error("open cgroup {path}")]
    OpenCgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// BPF_PROG_ATTACH failed.
    #[error("attach the device program to cgroup {path}")]
    AttachProgram {
        /// The cgroup directory.
        path: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// The kernel's limit for unprivileged programs; a device filter is far below it.
const BPF_MAXINSNS: usize = 4096;
const LOG_SIZE: usize = 16 * 1024;
/// The kernel requires a licence string; the program calls no helper at all.
const LICENSE: &CStr = c"GPL";

/// The `BPF_PROG_LOAD` part of `union bpf_attr` (up to `log_buf`, which is all we set; the
/// kernel zero-checks the tail we pass as zeros).
#[repr(C)]
#[derive(Debug, Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Debug, Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// A loaded device cgroup program (the fd keeps it alive until attached).
#[derive(Debug)]
pub struct DeviceProgram(OwnedFd);

/// Raw bpf(2) with `attr` of `size` bytes.
///
/// # Safety
/// `attr` must point to `size` readable and writable bytes laid out as the part of
/// `union bpf_attr` that `cmd` reads, and every pointer inside it must be valid for the kernel
/// to read (or write, for `log_buf`) for the length it states.
unsafe fn bpf(cmd: libc::c_int, attr: *mut libc::c_void, size: usize) -> std::io::Result<i64> {
    // SAFETY: the caller guarantees `attr` covers `size` bytes of the right layout; bpf(2)
    // reads at most `size` bytes of it and writes only into buffers it names.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl DeviceProgram {
    /// Loads `insns` (each an encoded `struct bpf_insn`) as a `BPF_PROG_TYPE_CGROUP_DEVICE`
    /// program under the GPL licence string (the kernel requires a licence; the program uses
    /// no GPL-only helpers).
    pub fn load(insns: &[[u8; 8]]) -> Result<Self, BpfError> {
        if insns.is_empty() || insns.len() > BPF_MAXINSNS {
            return Err(BpfError::ProgramLength { count: insns.len() });
        }
        let mut log = vec![0u8; LOG_SIZE];
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: u32::try_from(insns.len())
                .map_err(|_| BpfError::ProgramLength { count: insns.len() })?,
            insns: insns.as_ptr() as u64,
            license: LICENSE.as_ptr() as u64,
            log_level: 1,
            log_size: u32::try_from(LOG_SIZE).unwrap_or(u32::MAX),
            log_buf: log.as_mut_ptr() as u64,
            ..ProgLoadAttr::default()
        };
        // SAFETY: `attr` is a live `ProgLoadAttr` of exactly `size_of::<ProgLoadAttr>()` bytes
        // matching the kernel's BPF_PROG_LOAD layout; `insns` points to `insn_cnt` 8-byte
        // instructions, `license` to a NUL-terminated string, and `log_buf` to `log_size`
        // writable bytes, all alive until the call returns.
        let loaded = unsafe {
            bpf(
                BPF_PROG_LOAD,
                (&raw mut attr).cast(),
                size_of::<ProgLoadAttr>(),
            )
        };
        match loaded {
            Ok(fd) => {
                let fd = i32::try_from(fd).map_err(|_| BpfError::LoadProgram {
                    log: String::new(),
                    source: std::io::Error::from_raw_os_error(libc::EBADF),
                })?;
                // SAFETY: BPF_PROG_LOAD returned a new fd that nothing else owns.
                Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
            }
            Err(source) => {
                let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                let text = String::from_utf8_lossy(&log[..end]);
                Err(BpfError::LoadProgram {
                    log: text.trim().lines().last().unwrap_or("").to_owned(),
                    source,
                })
            }
        }
    }

    /// Attaches the program to the cgroup-v2 directory `cgroup` as its device filter
    /// (`BPF_CGROUP_DEVICE`, no flags: it replaces a program attached the same way before, and
    /// descendants cannot override it). The attachment holds the program; `self` may be dropped.
    pub fn attach(&self, cgroup: &Path) -> Result<(), BpfError> {
        let dir = File::open(cgroup).map_err(|source| BpfError::OpenCgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        let err = |source| BpfError::AttachProgram {
            path: cgroup.to_owned(),
            source,
        };
        let to_u32 = |fd: i32| {
            u32::try_from(fd).map_err(|_| err(std::io::Error::from_raw_os_error(libc::EBADF)))
        };
        let mut attr = ProgAttachAttr {
            target_fd: to_u32(dir.as_raw_fd())?,
            attach_bpf_fd: to_u32(self.0.as_raw_fd())?,
            attach_type: BPF_CGROUP_DEVICE,
            ..ProgAttachAttr::default()
        };
        // SAFETY: `attr` is a live `ProgAttachAttr` of exactly `size_of::<ProgAttachAttr>()`
        // bytes matching BPF_PROG_ATTACH's layout; both fds are owned by `dir` and `self` and
        // stay open for the call.
        unsafe {
            bpf(
                BPF_PROG_ATTACH,
                (&raw mut attr).cast(),
                size_of::<ProgAttachAttr>(),
            )
        }
        .map(drop)
        .map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn attr_layouts_match_the_kernel_abi() {
        // include/uapi/linux/bpf.h: union bpf_attr, BPF_PROG_LOAD and BPF_PROG_ATTACH members.
        assert_eq!(offset_of!(ProgLoadAttr, insn_cnt), 4);
        assert_eq!(offset_of!(ProgLoadAttr, insns), 8);
        assert_eq!(offset_of!(ProgLoadAttr, license), 16);
        assert_eq!(offset_of!(ProgLoadAttr, log_level), 24);
        assert_eq!(offset_of!(ProgLoadAttr, log_size), 28);
        assert_eq!(offset_of!(ProgLoadAttr, log_buf), 32);
        assert_eq!(offset_of!(ProgLoadAttr, kern_version), 40);
        assert_eq!(offset_of!(ProgLoadAttr, prog_flags), 44);
        assert_eq!(size_of::<ProgLoadAttr>(), 48);
        assert_eq!(offset_of!(ProgAttachAttr, attach_type), 8);
        assert_eq!(offset_of!(ProgAttachAttr, replace_bpf_fd), 16);
        assert_eq!(size_of::<ProgAttachAttr>(), 20);
    }

    #[test]
    fn constants_match_the_kernel_uapi() {
        assert_eq!(BPF_PROG_LOAD, 5);
        assert_eq!(BPF_PROG_ATTACH, 8);
        // enum bpf_prog_type: SOCKET_FILTER=1 ... CGROUP_DEVICE=15.
        assert_eq!(BPF_PROG_TYPE_CGROUP_DEVICE, 15);
        // enum bpf_attach_type: CGROUP_INET_INGRESS=0 ... CGROUP_DEVICE=6.
        assert_eq!(BPF_CGROUP_DEVICE, 6);
        assert_eq!(libc::SYS_bpf, 321);
        assert_eq!(LICENSE.to_bytes(), b"GPL");
    }

    #[test]
    fn empty_and_oversize_programs_are_refused_before_the_syscall() {
        assert!(matches!(
            DeviceProgram::load(&[]),
            Err(BpfError::ProgramLength { count: 0 })
        ));
        let big = vec![[0u8; 8]; BPF_MAXINSNS + 1];
        assert!(matches!(
            DeviceProgram::load(&big),
            Err(BpfError::ProgramLength { .. })
        ));
    }
}
