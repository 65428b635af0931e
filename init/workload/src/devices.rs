//! The device policy of a container as a cgroup-v2 eBPF program (`BPF_PROG_TYPE_CGROUP_DEVICE`).
//!
//! Pure code: the spec's `linux.resources.devices` rules become instructions that PID 1 loads
//! and attaches (`init-sys::bpf`) to the container's cgroup before the container starts. The
//! semantics are those of runc's device filter and the v1 `devices` controller: rules are read in
//! order and the **last** matching rule decides; a rule matching every device (no type or `a`, no
//! major, no minor, all of `rwm`) overrides everything before it; nothing matched is denied. The
//! program is generated from the last rule backwards, one block per rule (`if match { return
//! allow }`), so the first block that matches is the last rule that matches.
//!
//! The context the kernel passes (`struct bpf_cgroup_dev_ctx`): `access_type` (u32: device type
//! in the low 16 bits, `BPF_DEVCG_DEV_BLOCK` = 1 / `BPF_DEVCG_DEV_CHAR` = 2; access in the high
//! 16 bits, `BPF_DEVCG_ACC_MKNOD` = 1 / `READ` = 2 / `WRITE` = 4), `major`, `minor` (u32 each).
//! The program returns 1 to allow, 0 to deny (the syscall then fails with EPERM).

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DevicesError {
    /// `linux.resources.devices` of the spec is not a list of device rules.
    #[error("linux.resources.devices: {0}")]
    SpecRules(String),
    /// `linux.cgroupsPath` is missing, relative or has `..`.
    #[error("linux.cgroupsPath must be an absolute path without ..")]
    CgroupPath,
    /// A rule's major or minor number does not fit the kernel's u32 (or the instruction's i32).
    #[error("device rule {index}: number {value} out of range")]
    RuleNumber {
        /// Index of the rule in `linux.resources.devices`.
        index: usize,
        /// The number.
        value: i64,
    },
    /// A rule's access string has a letter other than r, w, m.
    #[error("device rule {index}: access {access:?} is not a subset of \"rwm\"")]
    RuleAccess {
        /// Index of the rule.
        index: usize,
        /// The string.
        access: String,
    },
    /// A compose `devices:` mapping names a device no container is given (unless privileged).
    #[error(
        "device {path} ({kind} {major}:{minor}) is never granted to a container: {reason}; only a privileged service (app-compose allow_privileged) gets it"
    )]
    RefuseGrant {
        /// The host path of the mapping.
        path: String,
        /// `c` or `b`.
        kind: char,
        /// Major number.
        major: i64,
        /// Minor number.
        minor: i64,
        /// What the device is.
        reason: String,
    },
    /// A rule names a device type the device cgroup does not know (`p`).
    #[error("device rule {index}: type {kind} has no device cgroup meaning")]
    RuleType {
        /// Index of the rule.
        index: usize,
        /// The type letter.
        kind: String,
    },
}

/// `BPF_DEVCG_DEV_BLOCK`.
pub const DEV_BLOCK: u32 = 1;
/// `BPF_DEVCG_DEV_CHAR`.
pub const DEV_CHAR: u32 = 2;
/// `BPF_DEVCG_ACC_MKNOD`.
pub const ACC_MKNOD: u32 = 1;
/// `BPF_DEVCG_ACC_READ`.
pub const ACC_READ: u32 = 2;
/// `BPF_DEVCG_ACC_WRITE`.
pub const ACC_WRITE: u32 = 4;
const ACC_ALL: u32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

// Opcodes (include/uapi/linux/bpf.h, bpf_common.h).
/// `BPF_LDX | BPF_MEM | BPF_W`: `dst = *(u32 *)(src + off)`.
pub const LDX_W: u8 = 0x61;
/// `BPF_ALU64 | BPF_AND | BPF_K`.
pub const AND_K: u8 = 0x57;
/// `BPF_ALU64 | BPF_RSH | BPF_K`.
pub const RSH_K: u8 = 0x77;
/// `BPF_ALU64 | BPF_MOV | BPF_K`.
pub const MOV_K: u8 = 0xb7;
/// `BPF_ALU64 | BPF_MOV | BPF_X`.
pub const MOV_X: u8 = 0xbf;
/// `BPF_JMP | BPF_JNE | BPF_K`.
pub const JNE_K: u8 = 0x55;
/// `BPF_JMP | BPF_JNE | BPF_X`.
pub const JNE_X: u8 = 0x5d;
/// `BPF_JMP | BPF_EXIT`.
pub const EXIT: u8 = 0x95;

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instruction {
    /// Opcode.
    pub code: u8,
    /// Destination register (0..=10).
    pub dst: u8,
    /// Source register (0..=10).
    pub src: u8,
    /// Offset (jump distance in instructions, or memory offset).
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

impl Instruction {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        Self {
            code,
            dst,
            src,
            off,
            imm,
        }
    }

    /// The kernel's 8-byte encoding (x86-64 is little-endian: `dst` in the low nibble).
    pub fn encode(&self) -> [u8; 8] {
        let off = self.off.to_le_bytes();
        let imm = self.imm.to_le_bytes();
        [
            self.code,
            (self.dst & 0x0f) | (self.src << 4),
            off[0],
            off[1],
            imm[0],
            imm[1],
            imm[2],
            imm[3],
        ]
    }
}

// Registers after the prologue: r2 type, r3 access, r4 major, r5 minor; r1 scratch.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;

/// One rule, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    allow: bool,
    kind: Option<u32>,
    major: Option<i32>,
    minor: Option<i32>,
    access: u32,
}

impl Rule {
    fn matches_everything(&self) -> bool {
        self.kind.is_none()
            && self.major.is_none()
            && self.minor.is_none()
            && self.access == ACC_ALL
    }
}

fn check(index: usize, rule: &LinuxDeviceCgroup) -> Result<Rule, DevicesError> {
    let kind = match rule.typ() {
        None | Some(LinuxDeviceType::A) => None,
        Some(LinuxDeviceType::B) => Some(DEV_BLOCK),
        Some(LinuxDeviceType::C | LinuxDeviceType::U) => Some(DEV_CHAR),
        Some(other) => {
            return Err(DevicesError::RuleType {
                index,
                kind: other.as_str().to_owned(),
            });
        }
    };
    // A negative number is the wildcard (`*`), as in runc.
    let number = |value: Option<i64>| -> Result<Option<i32>, DevicesError> {
        match value {
            None => Ok(None),
            Some(v) if v < 0 => Ok(None),
            Some(v) => i32::try_from(v)
                .map(Some)
                .map_err(|_| DevicesError::RuleNumber { index, value: v }),
        }
    };
    let access = match rule.access().as_deref() {
        None | Some("") => ACC_ALL,
        Some(text) => text.chars().try_fold(0, |acc, c| match c {
            'r' => Ok(acc | ACC_READ),
            'w' => Ok(acc | ACC_WRITE),
            'm' => Ok(acc | ACC_MKNOD),
            _ => Err(DevicesError::RuleAccess {
                index,
                access: text.to_owned(),
            }),
        })?,
    };
    Ok(Rule {
        allow: rule.allow(),
        kind,
        major: number(rule.major())?,
        minor: number(rule.minor())?,
        access,
    })
}

/// The device filter for `rules` (`linux.resources.devices` of a runtime spec).
pub fn device_filter(rules: &[LinuxDeviceCgroup]) -> Result<Vec<Instruction>, DevicesError> {
    let rules = rules
        .iter()
        .enumerate()
        .map(|(i, r)| check(i, r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut prog = vec![
        Instruction::new(LDX_W, R2, R1, 0, 0),
        Instruction::new(AND_K, R2, 0, 0, 0xffff),
        Instruction::new(LDX_W, R3, R1, 0, 0),
        Instruction::new(RSH_K, R3, 0, 0, 16),
        Instruction::new(LDX_W, R4, R1, 4, 0),
        Instruction::new(LDX_W, R5, R1, 8, 0),
    ];
    let verdict = |allow: bool| {
        [
            Instruction::new(MOV_K, R0, 0, 0, i32::from(allow)),
            Instruction::new(EXIT, 0, 0, 0, 0),
        ]
    };
    for rule in rules.iter().rev() {
        if rule.matches_everything() {
            prog.extend(verdict(rule.allow));
            return Ok(prog);
        }
        // Each check jumps past the block (to the next rule) on a mismatch; the jump distance
        // is filled in once the block's length is known.
        let mut block = Vec::new();
        if let Some(kind) = rule.kind {
            block.push(Instruction::new(JNE_K, R2, 0, 0, kind.cast_signed()));
        }
        if rule.access != ACC_ALL {
            // The request's access bits must all be in the rule's.
            block.push(Instruction::new(MOV_X, R1, R3, 0, 0));
            block.push(Instruction::new(AND_K, R1, 0, 0, rule.access.cast_signed()));
            block.push(Instruction::new(JNE_X, R1, R3, 0, 0));
        }
        if let Some(major) = rule.major {
            block.push(Instruction::new(JNE_K, R4, 0, 0, major));
        }
        if let Some(minor) = rule.minor {
            block.push(Instruction::new(JNE_K, R5, 0, 0, minor));
        }
        block.extend(verdict(rule.allow));
        let len = block.len();
        for (i, insn) in block.iter_mut().enumerate() {
            if insn.code == JNE_K || insn.code == JNE_X {
                // `off` counts from the next instruction; the block is at most 8 long.
                insn.off = i16::try_from(len - i - 1).unwrap_or(i16::MAX);
            }
        }
        prog.extend(block);
    }
    prog.extend(verdict(false));
    Ok(prog)
}

/// The device rules (`linux.resources.devices`, none: an empty list, which denies every device)
/// and the cgroup path (`linux.cgroupsPath`) of a runtime spec as JSON.
pub fn spec_device_policy(
    spec: &serde_json::Value,
) -> Result<(Vec<LinuxDeviceCgroup>, String), DevicesError> {
    let linux = spec.get("linux");
    let rules = match linux
        .and_then(|l| l.get("resources"))
        .and_then(|r| r.get("devices"))
    {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(value) => serde_json::from_value(value.clone())
            .map_err(|e| DevicesError::SpecRules(e.to_string()))?,
    };
    let cgroup = linux
        .and_then(|l| l.get("cgroupsPath"))
        .and_then(serde_json::Value::as_str)
        .filter(|p| p.starts_with('/') && !p.split('/').any(|c| c == ".."))
        .ok_or(DevicesError::CgroupPath)?
        .to_owned();
    Ok((rules, cgroup))
}

/// A device of this VM that the launcher found by name (`/dev/tdx_guest`, a virtio port…):
/// its numbers are assigned at run time, so the launcher stats it and passes it to
/// [`check_grant`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protected {
    /// `c` or `b`.
    pub kind: char,
    /// Major number.
    pub major: i64,
    /// Minor number.
    pub minor: i64,
    /// What it is, for the refusal.
    pub what: String,
}

/// Character devices with fixed numbers (Documentation/admin-guide/devices.txt) that a
/// `devices:` mapping never grants: (major, minor or every minor, what it is).
const NEVER_CHAR: &[(i64, Option<i64>, &str)] = &[
    (1, Some(1), "/dev/mem (physical memory)"),
    (1, Some(2), "/dev/kmem (kernel memory)"),
    (1, Some(4), "/dev/port (I/O ports)"),
    (
        1,
        Some(11),
        "/dev/kmsg (the kernel log, which the host reads on the console)",
    ),
    (
        4,
        None,
        "a virtual console or serial line (the host reads the console)",
    ),
    (5, Some(1), "/dev/console (read by the host)"),
    (7, None, "virtual console memory"),
    (
        13,
        None,
        "an input device (the console's keyboard and mouse)",
    ),
    (21, None, "a SCSI generic node (raw disk commands)"),
    (29, None, "a framebuffer (the console's screen)"),
    (162, None, "a raw block device node"),
    (
        195,
        None,
        "an NVIDIA GPU node (GPUs are granted by deploy.resources after attestation)",
    ),
    (202, None, "a CPU MSR node"),
    (203, None, "a CPUID node"),
    (229, None, "a hypervisor console"),
];

/// Whether the host device `dev` (a compose `devices:` mapping of `path`) may be granted to a
/// non-privileged container: never a block device (this VM's block devices are its disks: the
/// encrypted data disk's dm node, the raw disk under it, the host share), never a node of
/// [`NEVER_CHAR`], never one of `protected` (found by name at run time: `/dev/tdx_guest`, the
/// virtio ports of the results channel and the host API, …).
pub fn check_grant(
    path: &str,
    dev: &crate::spec::HostDevice,
    protected: &[Protected],
) -> Result<(), DevicesError> {
    let refuse = |reason: String| DevicesError::RefuseGrant {
        path: path.to_owned(),
        kind: dev.kind,
        major: dev.major,
        minor: dev.minor,
        reason,
    };
    if dev.kind != 'c' {
        return Err(refuse(
            "a block device (this VM's block devices are its disks: the encrypted data disk, its dm node, the raw disk under it, the host share)".to_owned(),
        ));
    }
    if let Some((_, _, what)) = NEVER_CHAR
        .iter()
        .find(|(major, minor, _)| *major == dev.major && minor.is_none_or(|m| m == dev.minor))
    {
        return Err(refuse((*what).to_owned()));
    }
    if let Some(p) = protected
        .iter()
        .find(|p| p.kind == dev.kind && p.major == dev.major && p.minor == dev.minor)
    {
        return Err(refuse(p.what.clone()));
    }
    Ok(())
}

/// [`device_filter`], encoded for `init-sys::bpf::DeviceProgram::load`.
pub fn encoded_device_filter(rules: &[LinuxDeviceCgroup]) -> Result<Vec<[u8; 8]>, DevicesError> {
    Ok(device_filter(rules)?
        .iter()
        .map(Instruction::encode)
        .collect())
}

#[cfg(test)]
mod tests;
