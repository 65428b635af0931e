use super::*;
use crate::compose::{ComposePolicy, NetworkingGap, parse};

const D: &str = "sha256:f1f178776ddc8034e550bff87cac9ba352599418998c352b73b71a5e7b8983a7";

fn app(body: &str) -> App {
    let yaml = format!(
        "services:\n  web:\n    image: busybox@{D}\n{body}  db:\n    image: busybox@{D}\n    container_name: database\nvolumes:\n  data: {{}}\nconfigs:\n  site:\n    content: hello\n"
    );
    // The spec of a privileged service is tested here; its app-compose opt-in in the parser.
    let policy = ComposePolicy {
        allow_privileged: true,
        ..ComposePolicy::default()
    };
    parse(None, &yaml, &BTreeMap::new(), &policy).unwrap()
}

fn layout() -> Layout {
    Layout {
        rootfs: "/run/cvm/containers/web/rootfs".into(),
        volumes: "/data/volumes".into(),
        generated: "/run/cvm/containers/web/etc".into(),
        resolv_conf: "/etc/resolv.conf".into(),
        cgroup_parent: "/cvm".into(),
        hostname: "cvm".into(),
        network: None,
    }
}

fn image() -> ImageConfig {
    ImageConfig {
        user: None,
        env: vec!["PATH=/bin".into(), "GREETING=image".into(), "KEEP=1".into()],
        entrypoint: Some(vec!["/bin/sh".into()]),
        cmd: Some(vec!["-c".into(), "echo hi".into()]),
        working_dir: Some("/srv".into()),
        stop_signal: Some("SIGQUIT".into()),
        healthcheck: None,
        diff_ids: vec![],
    }
}

fn files() -> ImageFiles {
    ImageFiles {
        passwd: Some("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n".into()),
        group: Some("root:x:0:\napp:x:1001:\nvideo:x:44:app\n".into()),
    }
}

fn plan(body: &str, gpus: &GpuGrant) -> Result<ContainerPlan, SpecError> {
    let app = app(body);
    let web = app.service("web").unwrap().clone();
    container_plan(
        &app,
        &web,
        &image(),
        &files(),
        &layout(),
        &BTreeMap::new(),
        gpus,
    )
}

#[test]
fn image_defaults_and_overrides() {
    let p = plan(
        "    environment:\n      GREETING: compose\n      EXTRA: x\n",
        &GpuGrant::default(),
    )
    .unwrap();
    let proc = &p.json["process"];
    assert_eq!(proc["args"], json!(["/bin/sh", "-c", "echo hi"]));
    assert_eq!(
        proc["env"],
        json!([
            "PATH=/bin",
            "GREETING=compose",
            "KEEP=1",
            "EXTRA=x",
            "HOSTNAME=cvm"
        ])
    );
    assert_eq!(proc["cwd"], "/srv");
    assert_eq!(proc["user"], json!({"uid": 0, "gid": 0}));
    assert_eq!(p.rootfs_dirs, ["/srv"]);
    assert_eq!(p.stop_signal, "SIGQUIT");
    assert_eq!(p.json["linux"]["cgroupsPath"], "/cvm/web");
    let ns: Vec<&str> = p.json["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert!(!ns.contains(&"network"), "host networking");
    assert!(ns.contains(&"pid") && ns.contains(&"mount"));
    assert_eq!(
        p.json["linux"]["seccomp"]["defaultAction"],
        "SCMP_ACT_ERRNO"
    );
    assert_eq!(p.spec.version(), "1.0.2");
    let hosts = String::from_utf8(p.files[0].contents.clone()).unwrap();
    assert!(hosts.contains("127.0.0.1\tweb db database\n"), "{hosts}");
    let dests: Vec<&str> = p.json["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    for d in [
        "/proc",
        "/dev",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/etc/hostname",
    ] {
        assert!(dests.contains(&d), "{d} in {dests:?}");
    }
}

#[test]
fn entrypoint_override_resets_cmd_and_user_resolves() {
    let p = plan(
        "    entrypoint: [\"/bin/echo\"]\n    user: app\n    working_dir: /w\n    stop_signal: SIGINT\n",
        &GpuGrant::default(),
    )
    .unwrap();
    assert_eq!(p.json["process"]["args"], json!(["/bin/echo"]));
    assert_eq!(
        p.json["process"]["user"],
        json!({"uid": 1000, "gid": 1001, "additionalGids": [44]})
    );
    assert_eq!(p.json["process"]["cwd"], "/w");
    assert_eq!(p.stop_signal, "SIGINT");
    let p = plan(
        "    command: [\"x\"]\n    user: \"5:app\"\n",
        &GpuGrant::default(),
    )
    .unwrap();
    assert_eq!(p.json["process"]["args"], json!(["/bin/sh", "x"]));
    assert_eq!(p.json["process"]["user"], json!({"uid": 5, "gid": 1001}));
    assert!(matches!(
        plan("    user: nobody\n", &GpuGrant::default()),
        Err(SpecError::ResolveUser { .. })
    ));
    assert!(matches!(
        plan("    entrypoint: []\n", &GpuGrant::default()),
        Err(SpecError::ResolveCommand { .. })
    ));
}

#[test]
fn mounts_limits_and_sockets() {
    let p = plan(
        "    volumes:\n      - data:/var/lib/data\n      - /var/run/dstack.sock:/var/run/dstack.sock\n    configs:\n      - source: site\n        target: /etc/site.conf\n    mem_limit: 64m\n    cpus: 1.5\n    pids_limit: 50\n    ulimits:\n      nofile: 4096\n",
        &GpuGrant::default(),
    )
    .unwrap();
    let mounts = p.json["mounts"].as_array().unwrap();
    let find = |d: &str| {
        mounts
            .iter()
            .find(|m| m["destination"] == d)
            .unwrap()
            .clone()
    };
    assert_eq!(find("/var/lib/data")["source"], "/data/volumes/data");
    assert_eq!(
        find("/var/run/dstack.sock")["source"],
        "/var/run/dstack.sock"
    );
    assert_eq!(
        find("/etc/site.conf")["source"],
        "/run/cvm/containers/web/etc/configs/site"
    );
    assert!(
        find("/etc/site.conf")["options"]
            .as_array()
            .unwrap()
            .contains(&json!("ro"))
    );
    assert!(
        p.files
            .iter()
            .any(|f| f.contents == b"hello" && f.mode == 0o444)
    );
    let r = &p.json["linux"]["resources"];
    assert_eq!(r["memory"]["limit"], 64 << 20);
    assert_eq!(r["cpu"], json!({"quota": 150_000, "period": 100_000}));
    assert_eq!(r["pids"]["limit"], 50);
    assert_eq!(r["devices"][0], json!({"allow": false, "access": "rwm"}));
    assert_eq!(
        p.json["process"]["rlimits"],
        json!([{"type": "RLIMIT_NOFILE", "soft": 4096, "hard": 4096}])
    );
    assert_eq!(
        p.json["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .len(),
        DEFAULT_CAPS.len()
    );
    assert!(p.json["linux"]["maskedPaths"].is_array());
}

fn gpu(path: &str, minor: i64) -> HostDevice {
    HostDevice {
        path: path.into(),
        kind: 'c',
        major: 195,
        minor,
        mode: 0o666,
    }
}

fn granted(path: &str, minor: i64, uuid: &str) -> GrantedGpu {
    GrantedGpu {
        node: gpu(path, minor),
        uuid: Some(uuid.into()),
    }
}

fn two_gpus() -> GpuGrant {
    GpuGrant {
        gpus: vec![
            granted("/dev/nvidia0", 0, "GPU-aa"),
            granted("/dev/nvidia1", 1, "GPU-bb"),
        ],
        control: vec![gpu("/dev/nvidiactl", 255)],
        mounts: vec![crate::gpu::DriverMount {
            host_path: PathBuf::from("/usr/lib/cvm-init/gpu-driver/lib/libcuda.so.1"),
            container_path: "/usr/lib/x86_64-linux-gnu/libcuda.so.1".into(),
        }],
    }
}

fn device_paths(p: &ContainerPlan) -> Vec<String> {
    p.json["linux"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_owned())
        .collect()
}

fn gpu_rules(p: &ContainerPlan) -> Vec<Value> {
    p.json["linux"]["resources"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["major"] == 195)
        .cloned()
        .collect()
}

fn mount_targets(p: &ContainerPlan) -> Vec<String> {
    p.json["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn gpus_only_when_granted() {
    let body = "    deploy:\n      resources:\n        reservations:\n          devices:\n            - driver: nvidia\n              count: 1\n              capabilities: [gpu]\n";
    let err = plan(body, &GpuGrant::default()).unwrap_err();
    assert!(matches!(err, SpecError::GrantGpu { available: 0, .. }));
    assert!(
        err.to_string()
            .contains("requests 1 GPU(s) but 0 GPU(s) passed attestation")
    );
    let p = plan(body, &two_gpus()).unwrap();
    let paths = device_paths(&p);
    assert!(paths.contains(&"/dev/nvidia0".into()) && paths.contains(&"/dev/nvidiactl".into()));
    assert!(!paths.contains(&"/dev/nvidia1".into()), "count: 1");
    assert_eq!(
        gpu_rules(&p),
        [
            json!({"allow": true, "type": "c", "major": 195, "minor": 0, "access": "rwm"}),
            json!({"allow": true, "type": "c", "major": 195, "minor": 255, "access": "rwm"}),
        ]
    );
    let libcuda = p.json["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/usr/lib/x86_64-linux-gnu/libcuda.so.1")
        .unwrap();
    assert_eq!(
        libcuda["source"],
        "/usr/lib/cvm-init/gpu-driver/lib/libcuda.so.1"
    );
    assert!(
        libcuda["options"]
            .as_array()
            .unwrap()
            .contains(&json!("ro"))
    );
}

/// A service without a GPU request gets no GPU node, rule or driver mount, whatever is granted.
#[test]
fn no_request_no_gpu() {
    let p = plan("", &two_gpus()).unwrap();
    assert!(device_paths(&p).iter().all(|d| !d.contains("nvidia")));
    assert_eq!(gpu_rules(&p), Vec::<Value>::new());
    assert!(
        mount_targets(&p)
            .iter()
            .all(|m| !m.contains("cuda") && !m.contains("nvidia"))
    );
}

#[test]
fn gpu_ids_by_index_or_uuid_and_refusals() {
    let ids = |list: &str| {
        format!("    runtime: nvidia\n    environment:\n      NVIDIA_VISIBLE_DEVICES: \"{list}\"\n")
    };
    let p = plan(&ids("1"), &two_gpus()).unwrap();
    assert!(device_paths(&p).contains(&"/dev/nvidia1".into()));
    assert!(!device_paths(&p).contains(&"/dev/nvidia0".into()));
    let p = plan(&ids("GPU-aa"), &two_gpus()).unwrap();
    assert!(device_paths(&p).contains(&"/dev/nvidia0".into()));
    let p = plan("    runtime: nvidia\n", &two_gpus()).unwrap();
    assert_eq!(gpu_rules(&p).len(), 3, "all: two GPUs and nvidiactl");
    for (body, wanted) in [
        (ids("2"), "GPU(s) 2"),
        (ids("GPU-cc"), "GPU(s) GPU-cc"),
        ("    gpus: 3\n".to_owned(), "3 GPU(s)"),
    ] {
        let err = plan(&body, &two_gpus()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "requests {wanted} but 2 GPU(s) passed attestation"
            )),
            "{text}"
        );
    }
    let err = plan("    runtime: nvidia\n", &GpuGrant::default()).unwrap_err();
    assert!(
        err.to_string().contains("every GPU (at least one)"),
        "{err}"
    );
}

#[test]
fn privileged_gets_all_caps_and_no_masks() {
    let p = plan("    privileged: true\n", &GpuGrant::default()).unwrap();
    assert_eq!(
        p.json["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .len(),
        ALL_CAPS.len()
    );
    assert!(p.json["linux"].get("maskedPaths").is_none());
    // No seccomp filter for a privileged container (as Docker).
    assert!(p.json["linux"].get("seccomp").is_none());
    assert_eq!(
        p.json["linux"]["resources"]["devices"][0],
        json!({"allow": true, "access": "rwm"})
    );
}

/// The names a `linux.seccomp` allows without an argument condition.
fn seccomp_allowed(j: &Value) -> Vec<String> {
    j["linux"]["seccomp"]["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
        .flat_map(|r| r["names"].as_array().unwrap().iter())
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn plain_services_get_dockers_seccomp_profile_for_their_caps() {
    let p = plan("", &GpuGrant::default()).unwrap();
    let seccomp = p
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().clone())
        .expect("a plain service has a seccomp profile");
    assert_eq!(
        seccomp.default_action(),
        oci_spec::runtime::LinuxSeccompAction::ScmpActErrno
    );
    let allowed = seccomp_allowed(&p.json);
    assert!(allowed.iter().any(|n| n == "read"));
    for blocked in ["unshare", "keyctl", "mount", "bpf", "kexec_load"] {
        assert!(!allowed.iter().any(|n| n == blocked), "{blocked}");
    }
    // The profile follows the service's capabilities (Docker's includes.caps).
    let admin = plan(
        "    cap_add: [SYS_ADMIN]
",
        &GpuGrant::default(),
    )
    .unwrap();
    let allowed = seccomp_allowed(&admin.json);
    assert!(allowed.iter().any(|n| n == "mount") && allowed.iter().any(|n| n == "unshare"));
    assert!(!allowed.iter().any(|n| n == "keyctl"));
    // seccomp=unconfined: no filter; no-new-privileges is written as true.
    let open = plan(
        "    security_opt: [\"seccomp=unconfined\", \"no-new-privileges\"]\n",
        &GpuGrant::default(),
    )
    .unwrap();
    assert!(open.json["linux"].get("seccomp").is_none());
    assert!(open.json["linux"].get("maskedPaths").is_some());
    assert_eq!(open.json["process"]["noNewPrivileges"], true);
}

#[test]
fn device_mappings_need_host_nodes() {
    let app = app("    devices: [\"/dev/fuse:/dev/fuse2:r\"]\n");
    let web = app.service("web").unwrap();
    let err = container_plan(
        &app,
        web,
        &image(),
        &files(),
        &layout(),
        &BTreeMap::new(),
        &GpuGrant::default(),
    )
    .unwrap_err();
    assert!(matches!(err, SpecError::ResolveDevice { .. }));
    let mut devs = BTreeMap::new();
    devs.insert(
        "/dev/fuse".to_owned(),
        HostDevice {
            path: "/dev/fuse".into(),
            kind: 'c',
            major: 10,
            minor: 229,
            mode: 0o666,
        },
    );
    let p = container_plan(
        &app,
        web,
        &image(),
        &files(),
        &layout(),
        &devs,
        &GpuGrant::default(),
    )
    .unwrap();
    assert!(
        p.json["linux"]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["major"] == 10 && d["minor"] == 229 && d["path"] == "/dev/fuse2")
    );
    // Exactly that node, read-only; `m` so that libcontainer can make it under the filter.
    assert!(
        p.json["linux"]["resources"]["devices"]
            .as_array()
            .unwrap()
            .contains(
                &json!({"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rm"})
            )
    );
}

#[test]
fn rlimits_only_from_ulimits() {
    let p = plan("", &GpuGrant::default()).unwrap();
    assert_eq!(p.json["process"]["rlimits"], json!([]));
}

#[test]
fn standard_layout() {
    let l = Layout::standard(
        Path::new("/run/cvm/containers"),
        Path::new("/data/cvm"),
        "web",
        "cvm",
    );
    assert_eq!(l.rootfs, Path::new("/run/cvm/containers/web/rootfs"));
    assert_eq!(l.generated, Path::new("/run/cvm/containers/web/etc"));
    assert_eq!(l.volumes, Path::new("/data/cvm/volumes"));
    assert!(l.cgroup_parent.starts_with('/'));
}

#[test]
fn compose_coverage_keys_reach_the_spec() {
    let p = plan(
        "    hostname: web1\n    domainname: example.internal\n    shm_size: 256m\n    read_only: true\n    security_opt: [no-new-privileges]\n    pid: host\n    cap_add: [NET_ADMIN]\n    cap_drop: [MKNOD]\n    tmpfs: [\"/run:size=1m,mode=755\", /tmp]\n    sysctls: {kernel.shmmax: \"1024\"}\n    extra_hosts: [\"api.local:10.0.0.5\"]\n    links: [\"db:pg\"]\n    ports: [\"8080:8080\", \"0.0.0.0:9000:9000\"]\n",
        &GpuGrant::default(),
    )
    .unwrap();
    let j = &p.json;
    assert_eq!(j["hostname"], "web1");
    assert_eq!(j["domainname"], "example.internal");
    // The typed spec libcontainer reads carries them too (nothing dropped by serde).
    assert_eq!(p.spec.domainname().as_deref(), Some("example.internal"));
    assert_eq!(
        p.spec
            .linux()
            .as_ref()
            .and_then(|l| l.sysctl().clone())
            .and_then(|s| s.get("kernel.shmmax").cloned())
            .as_deref(),
        Some("1024")
    );
    assert_eq!(
        p.spec.root().as_ref().and_then(|r| r.readonly()),
        Some(true)
    );
    assert_eq!(j["root"]["readonly"], true);
    assert_eq!(j["process"]["noNewPrivileges"], true);
    assert!(
        j["process"]["env"]
            .as_array()
            .unwrap()
            .contains(&json!("HOSTNAME=web1"))
    );
    let ns: Vec<&str> = j["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert!(!ns.contains(&"pid") && ns.contains(&"ipc"), "{ns:?}");
    let caps = j["process"]["capabilities"]["bounding"].as_array().unwrap();
    assert!(caps.contains(&json!("CAP_NET_ADMIN")));
    assert!(!caps.contains(&json!("CAP_MKNOD")));
    // MKNOD is not a default (issue 22), so dropping it removes nothing.
    assert!(!DEFAULT_CAPS.contains(&"CAP_MKNOD"));
    assert_eq!(caps.len(), DEFAULT_CAPS.len() + 1);
    assert_eq!(j["linux"]["sysctl"], json!({"kernel.shmmax": "1024"}));
    let mounts = j["mounts"].as_array().unwrap();
    let opts = |d: &str| mounts.iter().find(|m| m["destination"] == d).unwrap()["options"].clone();
    assert!(
        opts("/dev/shm")
            .as_array()
            .unwrap()
            .contains(&json!("size=268435456"))
    );
    assert_eq!(
        opts("/run"),
        json!(["nosuid", "nodev", "size=1048576", "mode=755"])
    );
    assert_eq!(opts("/tmp"), json!(["nosuid", "nodev", "mode=1777"]));
    let hosts = String::from_utf8(p.files[0].contents.clone()).unwrap();
    assert!(
        hosts.contains("127.0.0.1\tweb web1 db database\n"),
        "{hosts}"
    );
    assert!(
        hosts.contains("127.0.0.1\tpg\n10.0.0.5\tapi.local\n"),
        "{hosts}"
    );
    assert_eq!(p.files[1].contents, b"web1\n");
}

#[test]
fn defaults_stay_when_the_keys_are_absent() {
    let p = plan("", &GpuGrant::default()).unwrap();
    let j = &p.json;
    assert_eq!(j["hostname"], "cvm");
    assert!(j.get("domainname").is_none());
    assert_eq!(j["root"]["readonly"], false);
    // Absent, not false: libcontainer then loads the seccomp filter while it still may.
    assert!(j["process"].get("noNewPrivileges").is_none());
    assert!(
        p.spec
            .process()
            .as_ref()
            .unwrap()
            .no_new_privileges()
            .is_none()
    );
    assert!(j["linux"].get("sysctl").is_none());
    let shm = j["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/dev/shm")
        .unwrap();
    assert!(
        shm["options"]
            .as_array()
            .unwrap()
            .contains(&json!("size=65536k"))
    );
}

#[test]
fn capability_all_forms() {
    let caps = |body: &str| -> Vec<String> {
        let p = plan(body, &GpuGrant::default()).unwrap();
        serde_json::from_value(p.json["process"]["capabilities"]["bounding"].clone()).unwrap()
    };
    assert_eq!(
        caps("    cap_drop: [ALL]\n    cap_add: [CHOWN]\n"),
        ["CAP_CHOWN"]
    );
    assert_eq!(
        caps("    cap_add: [ALL]\n    cap_drop: [SYS_ADMIN]\n").len(),
        ALL_CAPS.len() - 1
    );
    assert!(matches!(
        plan("    cap_add: [BOGUS]\n", &GpuGrant::default()),
        Err(SpecError::ResolveCapability { capability, .. }) if capability == "CAP_BOGUS"
    ));
}

#[test]
fn what_host_networking_cannot_honour_is_refused_when_planned() {
    let err = |body: &str| plan(body, &GpuGrant::default()).unwrap_err();
    let e = err("    network_mode: host\n    ports: [\"8080:80\"]\n");
    assert!(matches!(
        &e,
        SpecError::RefuseNetworking {
            gap: NetworkingGap::HostPortRemap {
                published: 8080,
                target: 80,
            },
            ..
        }
    ));
    let chain = cvm_error_chain::joined(&e);
    assert!(
        chain.contains("service web: port 8080:80 remaps a port under network_mode: host"),
        "{chain}"
    );
    assert!(matches!(
        err("    network_mode: host\n    sysctls: [net.core.somaxconn=1024]\n"),
        SpecError::RefuseNetworking { gap: NetworkingGap::NetSysctl { key }, .. } if key == "net.core.somaxconn"
    ));
    // In a namespace of its own a remap and a net.* sysctl run.
    plan(
        "    ports: [\"8080:80\", \"9000-9001:9000-9001/udp\"]\n    sysctls: [net.core.somaxconn=1024]\n",
        &GpuGrant::default(),
    )
    .unwrap();
}

#[test]
fn own_network_namespace_is_joined_with_its_hosts_file() {
    let yaml = format!(
        "services:\n  web:\n    image: busybox@{D}\n    sysctls: [net.ipv4.ip_unprivileged_port_start=0]\n    networks:\n      front:\n        aliases: [www]\n        ipv4_address: 172.20.0.5\nnetworks:\n  front: {{}}\n"
    );
    let app = parse(None, &yaml, &BTreeMap::new(), &ComposePolicy::default()).unwrap();
    let web = app.service("web").unwrap();
    let mut own = layout();
    own.network = Some(ContainerNetwork {
        netns: Some("/run/netns/web".into()),
        hosts: "127.0.0.1\tlocalhost\n172.20.0.5\tweb www\n".into(),
    });
    let p = container_plan(
        &app,
        web,
        &image(),
        &files(),
        &own,
        &BTreeMap::new(),
        &GpuGrant::default(),
    )
    .unwrap();
    let namespaces = &p.json["linux"]["namespaces"];
    assert!(
        namespaces
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"type": "network", "path": "/run/netns/web"})),
        "{namespaces}"
    );
    assert_eq!(
        p.json["linux"]["sysctl"]["net.ipv4.ip_unprivileged_port_start"],
        "0"
    );
    let hosts = String::from_utf8(p.files[0].contents.clone()).unwrap();
    assert_eq!(hosts, "127.0.0.1\tlocalhost\n172.20.0.5\tweb www\n");
    // Without one (host networking) there is no network namespace entry.
    let p = container_plan(
        &app,
        web,
        &image(),
        &files(),
        &layout(),
        &BTreeMap::new(),
        &GpuGrant::default(),
    )
    .unwrap();
    assert!(
        !p.json["linux"]["namespaces"]
            .to_string()
            .contains("network")
    );
}
