use super::*;

/// A tiny interpreter for the instructions [`device_filter`] emits: the verdict for one
/// (type, major, minor, access) request, as the kernel would compute it.
pub(crate) fn run(prog: &[Instruction], kind: u32, major: u32, minor: u32, access: u32) -> bool {
    let ctx = [(access << 16) | kind, major, minor];
    let mut reg = [0u64; 11];
    let mut pc = 0usize;
    for _ in 0..1000 {
        let insn = prog[pc];
        let (d, s) = (usize::from(insn.dst), usize::from(insn.src));
        let imm = i64::from(insn.imm).cast_unsigned();
        let mut next = pc + 1;
        match insn.code {
            LDX_W => {
                assert_eq!(s, 1, "loads only from the context");
                let off = usize::try_from(insn.off).unwrap();
                assert_eq!(off % 4, 0);
                reg[d] = u64::from(ctx[off / 4]);
            }
            AND_K => reg[d] &= imm,
            RSH_K => reg[d] >>= imm,
            MOV_K => reg[d] = imm,
            MOV_X => reg[d] = reg[s],
            JNE_K | JNE_X => {
                let other = if insn.code == JNE_K { imm } else { reg[s] };
                if reg[d] != other {
                    next = pc + 1 + usize::try_from(insn.off).unwrap();
                }
            }
            EXIT => return reg[0] == 1,
            other => panic!("unexpected opcode {other:#x}"),
        }
        pc = next;
        assert!(pc < prog.len(), "ran off the end of the program");
    }
    panic!("no exit within 1000 steps")
}

fn rules(json: serde_json::Value) -> Vec<LinuxDeviceCgroup> {
    serde_json::from_value(json).unwrap()
}

/// The rules `spec::container_plan` writes for a plain service with one granted device
/// (`/dev/sdz`, block 8:240, "rw") — the order matters: deny all first.
fn standard_with_grant() -> Vec<LinuxDeviceCgroup> {
    rules(serde_json::json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "b", "major": 8, "minor": 240, "access": "rw"},
        {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 7, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
        {"allow": true, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
        {"allow": true, "type": "c", "major": 5, "minor": 1, "access": "rwm"},
        {"allow": true, "type": "c", "major": 136, "access": "rwm"},
        {"allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
    ]))
}

const RW: u32 = ACC_READ | ACC_WRITE;

#[test]
fn default_deny_standard_devices_and_grants() {
    let prog = device_filter(&standard_with_grant()).unwrap();
    let allowed = |k, ma, mi, a| run(&prog, k, ma, mi, a);
    // The standard character devices, any access.
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
    ] {
        assert!(allowed(DEV_CHAR, major, minor, RW), "{major}:{minor}");
        assert!(
            allowed(DEV_CHAR, major, minor, ACC_MKNOD),
            "{major}:{minor}"
        );
    }
    // Every pty slave.
    for minor in [0, 1, 255, 1 << 19] {
        assert!(allowed(DEV_CHAR, 136, minor, RW));
    }
    // The granted block device: read and write, not mknod; not its neighbour; not as a char.
    assert!(allowed(DEV_BLOCK, 8, 240, ACC_READ));
    assert!(allowed(DEV_BLOCK, 8, 240, RW));
    assert!(!allowed(DEV_BLOCK, 8, 240, ACC_MKNOD));
    assert!(!allowed(DEV_BLOCK, 8, 240, RW | ACC_MKNOD));
    assert!(!allowed(DEV_BLOCK, 8, 241, ACC_READ));
    assert!(!allowed(DEV_CHAR, 8, 240, ACC_READ));
    // The data disk's dm node (block 253:0) and the raw virtio disks (block 254:*).
    for access in [ACC_READ, ACC_WRITE, ACC_MKNOD] {
        assert!(!allowed(DEV_BLOCK, 253, 0, access));
        assert!(!allowed(DEV_BLOCK, 254, 0, access));
        assert!(!allowed(DEV_BLOCK, 254, 16, access));
    }
    // /dev/tdx_guest is a misc device (char 10) with a dynamic minor: no misc minor is open.
    for minor in 0..=255 {
        assert!(!allowed(DEV_CHAR, 10, minor, RW));
        assert!(!allowed(DEV_CHAR, 10, minor, ACC_MKNOD));
    }
    // /dev/kmsg (1:11), /dev/mem (1:1), /dev/port (1:4), the console's tty (4:*), GPUs (195:*).
    for (major, minor) in [
        (1, 11),
        (1, 1),
        (1, 4),
        (4, 0),
        (4, 64),
        (195, 0),
        (195, 255),
    ] {
        assert!(!allowed(DEV_CHAR, major, minor, RW), "{major}:{minor}");
    }
    // The standard numbers as block devices are not the standard devices.
    assert!(!allowed(DEV_BLOCK, 1, 3, RW));
}

#[test]
fn last_matching_rule_wins_and_a_wildcard_hides_earlier_rules() {
    // Allow 10:*, then deny 10:200: 10:200 denied, 10:1 allowed.
    let prog = device_filter(&rules(serde_json::json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 10, "access": "rwm"},
        {"allow": false, "type": "c", "major": 10, "minor": 200, "access": "rwm"},
    ])))
    .unwrap();
    assert!(run(&prog, DEV_CHAR, 10, 1, RW));
    assert!(!run(&prog, DEV_CHAR, 10, 200, ACC_READ));
    // Privileged: allow-all last makes a single verdict.
    let all = device_filter(&rules(serde_json::json!([
        {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "r"},
        {"allow": true, "access": "rwm"},
    ])))
    .unwrap();
    assert_eq!(all.len(), 6 + 2);
    assert!(run(&all, DEV_BLOCK, 253, 0, RW | ACC_MKNOD));
    // No rules at all: everything denied.
    let none = device_filter(&[]).unwrap();
    assert!(!run(&none, DEV_CHAR, 1, 3, ACC_READ));
}

#[test]
fn negative_numbers_are_wildcards_and_bad_rules_are_refused() {
    let prog = device_filter(&rules(serde_json::json!([
        {"allow": true, "type": "c", "major": 1, "minor": -1, "access": "r"},
    ])))
    .unwrap();
    assert!(run(&prog, DEV_CHAR, 1, 11, ACC_READ));
    assert!(!run(&prog, DEV_CHAR, 1, 11, ACC_WRITE));
    assert_eq!(
        device_filter(&rules(
            serde_json::json!([{"allow": true, "major": 1i64 << 33}])
        )),
        Err(DevicesError::RuleNumber {
            index: 0,
            value: 1 << 33
        })
    );
    assert_eq!(
        device_filter(&rules(serde_json::json!([{"allow": true, "access": "rx"}]))),
        Err(DevicesError::RuleAccess {
            index: 0,
            access: "rx".into()
        })
    );
    assert!(matches!(
        device_filter(&rules(serde_json::json!([{"allow": true, "type": "p"}]))),
        Err(DevicesError::RuleType { index: 0, .. })
    ));
}

#[test]
fn encoding_is_struct_bpf_insn() {
    // r2 = *(u32 *)(r1 + 8): code 0x61, dst 2 | src 1 << 4, off 8, imm 0.
    let insn = Instruction::new(LDX_W, R2, R1, 8, 0);
    assert_eq!(insn.encode(), [0x61, 0x12, 8, 0, 0, 0, 0, 0]);
    let jne = Instruction::new(JNE_K, R4, 0, 3, 253);
    assert_eq!(jne.encode(), [0x55, 0x04, 3, 0, 253, 0, 0, 0]);
    let exit = Instruction::new(EXIT, 0, 0, 0, 0);
    assert_eq!(exit.encode(), [0x95, 0, 0, 0, 0, 0, 0, 0]);
    let encoded = encoded_device_filter(&standard_with_grant()).unwrap();
    assert_eq!(encoded.last(), Some(&exit.encode()));
}

#[test]
fn spec_policy_reads_rules_and_cgroup_path() {
    let spec = serde_json::json!({"linux": {"cgroupsPath": "/cvm/web", "resources": {"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}
    ]}}});
    let (rules, cgroup) = spec_device_policy(&spec).unwrap();
    assert_eq!(cgroup, "/cvm/web");
    assert_eq!(rules.len(), 2);
    let none = serde_json::json!({"linux": {"cgroupsPath": "/cvm/a"}});
    assert!(spec_device_policy(&none).unwrap().0.is_empty());
    for bad in [
        serde_json::json!({"linux": {}}),
        serde_json::json!({"linux": {"cgroupsPath": "cvm/a"}}),
        serde_json::json!({"linux": {"cgroupsPath": "/cvm/../x"}}),
    ] {
        assert_eq!(
            spec_device_policy(&bad),
            Err(DevicesError::CgroupPath),
            "{bad}"
        );
    }
    let bad_rules =
        serde_json::json!({"linux": {"cgroupsPath": "/c", "resources": {"devices": 5}}});
    assert!(matches!(
        spec_device_policy(&bad_rules),
        Err(DevicesError::SpecRules(_))
    ));
}

fn host(kind: char, major: i64, minor: i64) -> crate::spec::HostDevice {
    crate::spec::HostDevice {
        path: "/dev/x".into(),
        kind,
        major,
        minor,
        mode: 0o660,
    }
}

#[test]
fn grants_refuse_disks_kernel_nodes_and_protected_ones() {
    let tdx = Protected {
        kind: 'c',
        major: 10,
        minor: 125,
        what: "/dev/tdx_guest (TD reports)".into(),
    };
    let refused =
        |dev: &crate::spec::HostDevice| check_grant("/dev/x", dev, std::slice::from_ref(&tdx));
    // The data disk's dm node, the raw disk under it: every block device.
    for (major, minor) in [(253, 0), (254, 0), (252, 0), (7, 0)] {
        let err = refused(&host('b', major, minor)).unwrap_err();
        assert!(
            matches!(&err, DevicesError::RefuseGrant { kind: 'b', reason, .. } if reason.contains("block device")),
            "{err:?}"
        );
    }
    for (major, minor, what) in [
        (1, 1, "/dev/mem"),
        (1, 11, "/dev/kmsg"),
        (4, 64, "serial"),
        (5, 1, "/dev/console"),
        (195, 0, "NVIDIA"),
        (21, 0, "SCSI generic"),
        (13, 64, "input"),
        (10, 125, "/dev/tdx_guest"),
    ] {
        match refused(&host('c', major, minor)) {
            Err(DevicesError::RefuseGrant { reason, .. }) => {
                assert!(reason.contains(what), "{reason}")
            }
            other => panic!("{major}:{minor} {other:?}"),
        }
    }
    // Harmless character devices pass: /dev/rtc0 (dynamic major), /dev/fuse, /dev/null.
    for (major, minor) in [(252, 0), (10, 229), (1, 3), (10, 126)] {
        assert!(refused(&host('c', major, minor)).is_ok(), "{major}:{minor}");
    }
    let message = refused(&host('c', 1, 11)).unwrap_err().to_string();
    assert!(
        message.contains("/dev/x (c 1:11) is never granted"),
        "{message}"
    );
    assert!(message.contains("privileged"), "{message}");
}
