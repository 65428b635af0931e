use super::*;

/// What `spec` gives a plain container.
const PLAIN: &[&str] = crate::spec::DEFAULT_CAPS;

/// Names allowed without any argument condition.
fn allowed(profile: &Value) -> Vec<String> {
    profile["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
        .flat_map(|r| r["names"].as_array().unwrap().iter())
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

fn spec_seccomp(profile: &Value) -> oci_spec::runtime::LinuxSeccomp {
    serde_json::from_value(profile.clone()).unwrap()
}

#[test]
fn plain_profile_denies_the_docker_list_and_allows_the_basics() {
    let profile = default_profile(PLAIN).unwrap();
    let seccomp = spec_seccomp(&profile);
    assert_eq!(
        seccomp.default_action(),
        oci_spec::runtime::LinuxSeccompAction::ScmpActErrno
    );
    assert_eq!(seccomp.default_errno_ret(), Some(1));
    assert_eq!(
        profile["architectures"],
        json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
    );
    let allowed = allowed(&profile);
    for name in [
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "mount",
        "umount2",
        "unshare",
        "setns",
        "kexec_load",
        "kexec_file_load",
        "open_by_handle_at",
        "init_module",
        "finit_module",
        "reboot",
        "perf_event_open",
        "ptrace",
        "clone3",
        "userfaultfd",
        "iopl",
        "ioperm",
        "syslog",
        "pivot_root",
    ]
    .iter()
    .filter(|n| **n != "ptrace")
    {
        assert!(!allowed.iter().any(|a| a == name), "{name} is allowed");
    }
    for name in [
        "read",
        "write",
        "openat",
        "close",
        "execve",
        "mknod",
        "chroot",
        "exit_group",
    ] {
        assert!(allowed.iter().any(|a| a == name), "{name} is refused");
    }
    // ptrace is allowed from kernel 4.8 on, as in Docker.
    assert!(allowed.iter().any(|a| a == "ptrace"));
    // clone3 answers ENOSYS (so glibc falls back to clone, which is filtered by flags).
    let clone3 = profile["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["names"] == json!(["clone3"]))
        .unwrap();
    assert_eq!(clone3["action"], "SCMP_ACT_ERRNO");
    assert_eq!(clone3["errnoRet"], 38);
}

#[test]
fn clone_rule_is_swapped_for_libcontainer() {
    // moby: clone allowed when (flags & 0x7E020000) == 0, written {value: mask, valueTwo: 0}.
    let profile = default_profile(PLAIN).unwrap();
    let clone: Vec<&Value> = profile["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["names"] == json!(["clone"]))
        .collect();
    assert_eq!(clone.len(), 1, "only the x86 argument order");
    assert_eq!(
        clone[0]["args"],
        json!([{"index": 0, "value": 0, "valueTwo": 0x7E02_0000u64, "op": "SCMP_CMP_MASKED_EQ"}])
    );
    // Other operators keep their order (personality(PER_LINUX) etc.).
    assert!(profile["syscalls"].as_array().unwrap().iter().any(|r| {
        r["names"] == json!(["personality"])
            && r["args"] == json!([{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}])
    }));
}

#[test]
fn capabilities_open_their_syscalls() {
    let mut admin = PLAIN.to_vec();
    admin.push("CAP_SYS_ADMIN");
    let allowed_admin = allowed(&default_profile(&admin).unwrap());
    for name in ["mount", "unshare", "setns", "bpf", "clone", "clone3"] {
        assert!(allowed_admin.iter().any(|a| a == name), "{name}");
    }
    // keyctl stays refused even for CAP_SYS_ADMIN (Docker never allows it).
    assert!(!allowed_admin.iter().any(|a| a == "keyctl"));
    let mut search = PLAIN.to_vec();
    search.push("CAP_DAC_READ_SEARCH");
    assert!(
        allowed(&default_profile(&search).unwrap())
            .iter()
            .any(|a| a == "open_by_handle_at")
    );
}

#[test]
fn min_kernel_parses_against_the_floor() {
    assert!(kernel_at_most_floor("4.8").unwrap());
    assert!(kernel_at_most_floor("5.19").unwrap());
    assert!(!kernel_at_most_floor("6.0").unwrap());
    assert!(matches!(
        kernel_at_most_floor("six"),
        Err(SeccompError::ParseMinKernel { .. })
    ));
}

#[test]
fn conditional_entries_follow_arch_and_capabilities() {
    let names = |profile: &Value| -> Vec<String> {
        profile["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["names"].as_array().unwrap().iter())
            .map(|n| n.as_str().unwrap().to_owned())
            .collect()
    };
    let plain = default_profile(PLAIN).unwrap();
    let all = names(&plain);
    // includes.arches: amd64 entries in, other architectures' entries out.
    for name in ["arch_prctl", "modify_ldt"] {
        assert!(all.iter().any(|n| n == name), "{name}");
    }
    for name in ["s390_pci_mmio_read", "arm_fadvise64_64", "breakpoint"] {
        assert!(!all.iter().any(|n| n == name), "{name}");
    }
    // excludes.caps: with CAP_SYS_ADMIN the flag-masked clone rule and clone3's ENOSYS go;
    // the CAP_SYS_ADMIN entry allows both outright.
    let mut admin = PLAIN.to_vec();
    admin.push("CAP_SYS_ADMIN");
    let admin = default_profile(&admin).unwrap();
    let rules = admin["syscalls"].as_array().unwrap();
    assert!(
        !rules
            .iter()
            .any(|r| r["names"] == json!(["clone"]) && r.get("args").is_some())
    );
    assert!(!rules.iter().any(|r| r["names"] == json!(["clone3"])));
    // Every rule's arguments survive into the OCI types libcontainer reads.
    let seccomp = spec_seccomp(&admin);
    assert_eq!(seccomp.syscalls().as_ref().unwrap().len(), rules.len());
}
