use std::collections::BTreeMap;
use std::time::Duration;

use super::*;

const D: &str = "sha256:f1f178776ddc8034e550bff87cac9ba352599418998c352b73b71a5e7b8983a7";

fn env() -> BTreeMap<String, String> {
    [("TOKEN", "s3cret"), ("PORT", "8080")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn parse_ok(yaml: &str) -> App {
    parse(None, yaml, &env(), &ComposePolicy::default()).unwrap()
}

fn parse_err(yaml: &str) -> ComposeError {
    parse(None, yaml, &env(), &ComposePolicy::default()).unwrap_err()
}

fn full() -> String {
    format!(
        r#"
version: "3"
x-common: &common
  restart: on-failure:3
services:
  web:
    <<: *common
    image: 127.0.0.1:5000/test/web@{D}
    command: ["/bin/httpd", "-f", "-p", "${{PORT}}"]
    environment:
      - TOKEN
      - GREETING=hi $${{literal}}
      - MISSING_FROM_ENV
    volumes:
      - /var/run/dstack.sock:/var/run/dstack.sock
      - data:/data
      - type: bind
        source: /var/run/tappd.sock
        target: /var/run/tappd.sock
    ports: ["8080:8080", "9000/udp"]
    network_mode: host
    depends_on:
      db:
        condition: service_healthy
    healthcheck:
      test: ["CMD", "wget", "-q", "http://localhost:8080/"]
      interval: 2s
      timeout: 1s
      retries: 5
      start_period: 10s
    configs:
      - source: site
        target: /etc/site.conf
        mode: 0440
    user: "1000:1000"
    working_dir: /srv
    ulimits:
      nofile: {{soft: 1024, hard: 4096}}
      nproc: 512
    mem_limit: 256m
    cpus: "0.5"
    stop_signal: SIGINT
    stop_grace_period: 1m30s
    x-note: ignored
  db:
    image: busybox@{D}
    entrypoint: /bin/sh -c 'sleep 1000'
    environment:
      LEVEL: 3
      TOKEN: ${{TOKEN:-none}}
    restart: unless-stopped
    privileged: true
    devices: ["/dev/fuse"]
    deploy:
      resources:
        limits: {{cpus: "2", memory: 1g, pids: 100}}
        reservations:
          devices:
            - driver: nvidia
              count: all
              capabilities: [gpu]
volumes:
  data: {{}}
configs:
  site:
    content: |
      port=${{PORT}}
"#
    )
}

#[test]
fn parses_the_full_subset() {
    let privileged = ComposePolicy {
        allow_privileged: true,
        ..ComposePolicy::default()
    };
    let app = parse(None, &full(), &env(), &privileged).unwrap();
    let names: Vec<&str> = app.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["db", "web"], "dependencies start first");
    let web = app.service("web").unwrap();
    assert_eq!(web.image.registry, "127.0.0.1:5000");
    assert_eq!(
        web.restart,
        RestartPolicy::OnFailure {
            max_retries: Some(3)
        }
    );
    assert_eq!(web.command.as_deref().unwrap()[3], "8080");
    assert_eq!(web.environment["TOKEN"], "s3cret");
    assert_eq!(web.environment["GREETING"], "hi ${literal}");
    assert!(!web.environment.contains_key("MISSING_FROM_ENV"));
    assert_eq!(
        web.volumes,
        vec![
            VolumeMount::Bind {
                source: "/var/run/dstack.sock".into(),
                target: "/var/run/dstack.sock".into(),
                read_only: false
            },
            VolumeMount::Named {
                name: "data".into(),
                target: "/data".into(),
                read_only: false
            },
            VolumeMount::Bind {
                source: "/var/run/tappd.sock".into(),
                target: "/var/run/tappd.sock".into(),
                read_only: false
            },
        ]
    );
    assert_eq!(
        web.ports,
        vec![
            Port {
                port: 8080,
                published: 8080,
                host_ip: None,
                protocol: Protocol::Tcp
            },
            Port {
                port: 9000,
                published: 9000,
                host_ip: None,
                protocol: Protocol::Udp
            }
        ]
    );
    assert_eq!(
        web.depends_on,
        vec![Dependency {
            service: "db".into(),
            condition: DependencyCondition::Healthy,
            required: true
        }]
    );
    let hc = web.healthcheck.as_ref().unwrap();
    assert_eq!(
        hc.test,
        HealthTest::Exec(vec![
            "wget".into(),
            "-q".into(),
            "http://localhost:8080/".into()
        ])
    );
    assert_eq!(
        (hc.interval, hc.timeout, hc.retries),
        (Duration::from_secs(2), Duration::from_secs(1), 5)
    );
    assert_eq!(hc.start_period, Duration::from_secs(10));
    assert_eq!(web.configs[0].target, "/etc/site.conf");
    assert_eq!(web.configs[0].mode, 0o440);
    assert_eq!(app.configs["site"], "port=8080\n");
    assert_eq!(web.user.as_deref(), Some("1000:1000"));
    assert_eq!(web.working_dir.as_deref(), Some("/srv"));
    assert_eq!(
        web.ulimits,
        vec![
            Ulimit {
                name: "RLIMIT_NOFILE".into(),
                soft: 1024,
                hard: 4096
            },
            Ulimit {
                name: "RLIMIT_NPROC".into(),
                soft: 512,
                hard: 512
            }
        ]
    );
    assert_eq!(web.resources.memory_bytes, Some(256 << 20));
    assert_eq!(web.resources.cpus, Some(0.5));
    assert_eq!(web.stop_signal, "SIGINT");
    assert_eq!(web.stop_grace_period, Duration::from_secs(90));

    let db = app.service("db").unwrap();
    assert_eq!(
        db.entrypoint.as_deref().unwrap(),
        ["/bin/sh", "-c", "sleep 1000"]
    );
    assert_eq!(db.environment["LEVEL"], "3");
    assert_eq!(db.environment["TOKEN"], "s3cret");
    assert_eq!(db.restart, RestartPolicy::UnlessStopped);
    assert!(db.privileged);
    assert_eq!(db.devices[0].container, "/dev/fuse");
    assert_eq!(db.resources.cpus, Some(2.0));
    assert_eq!(db.resources.memory_bytes, Some(1 << 30));
    assert_eq!(db.resources.pids, Some(100));
    assert_eq!(db.resources.gpus, Some(GpuRequest::All));
    assert_eq!(db.stop_signal, "SIGTERM");
    assert_eq!(db.stop_grace_period, Duration::from_secs(10));
    assert!(app.volumes.contains("data"));
}

fn svc(body: &str) -> String {
    format!("services:\n  a:\n    image: busybox@{D}\n{body}")
}

#[test]
fn refusals() {
    // (name, yaml, predicate on the error, text the message must contain)
    type Check = fn(&ComposeError) -> bool;
    let two = |a: &str, b: &str| {
        format!("services:\n  a:\n    image: busybox@{D}\n{a}  b:\n    image: busybox@{D}\n{b}")
    };
    let cases: Vec<(&str, String, Check, &str)> = vec![
        (
            "tag-only image",
            "services:\n  a:\n    image: busybox:latest\n".into(),
            |e| {
                matches!(
                    e,
                    ComposeError::ParseImage {
                        source: DigestError::MissingDigest { .. },
                        ..
                    }
                )
            },
            "run `cvm-measure compose pin`",
        ),
        (
            "unknown service key",
            svc("    tty: true\n"),
            |e| matches!(e, ComposeError::UnknownKey { key, .. } if key == "tty"),
            "services.a: unknown key \"tty\"",
        ),
        (
            "unknown top-level key",
            format!("{}secrets: {{}}\n", svc("")),
            |e| matches!(e, ComposeError::UnknownKey { key, .. } if key == "secrets"),
            "unknown key \"secrets\"",
        ),
        (
            "unknown healthcheck key",
            svc("    healthcheck:\n      test: true\n      foo: 1\n"),
            |e| matches!(e, ComposeError::UnknownKey { path, key } if path == "services.a.healthcheck" && key == "foo"),
            "foo",
        ),
        (
            "env_file",
            svc("    env_file: .env\n"),
            |e| matches!(e, ComposeError::Refuse { path, .. } if path == "services.a.env_file"),
            "env_file is refused",
        ),
        (
            "build",
            svc("    build: .\n"),
            |e| matches!(e, ComposeError::Refuse { .. }),
            "build and push the image, then pin it by digest",
        ),
        (
            "host bind",
            svc("    volumes: [\"/etc:/etc\"]\n"),
            |e| matches!(e, ComposeError::RefuseHostBind { source_path, .. } if source_path == "/etc"),
            "host bind of \"/etc\"",
        ),
        (
            "docker socket",
            svc("    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n"),
            |e| matches!(e, ComposeError::RefuseDockerSocket { .. }),
            "there is no container daemon",
        ),
        (
            "relative bind",
            svc("    volumes: [\"./data:/data\"]\n"),
            |e| matches!(e, ComposeError::RefuseHostBind { .. }),
            "./data",
        ),
        (
            "undeclared volume",
            svc("    volumes: [\"data:/data\"]\n"),
            |e| matches!(e, ComposeError::InvalidValue { .. }),
            "not declared",
        ),
        (
            "anonymous volume",
            svc("    volumes: [\"/data\"]\n"),
            |e| matches!(e, ComposeError::Refuse { .. }),
            "anonymous",
        ),
        (
            "mount target with ..",
            format!(
                "{}volumes:\n  d: {{}}\n",
                svc("    volumes: [\"d:/a/../b\"]\n")
            ),
            |e| matches!(e, ComposeError::InvalidValue { .. }),
            "without `..`",
        ),
        (
            "port ranges of different lengths",
            svc("    ports: [\"8000-8002:80-81\"]\n"),
            |e| matches!(e, ComposeError::InvalidValue { .. }),
            "differ in length",
        ),
        (
            "port clash",
            two("    ports: [\"80:80\"]\n", "    ports: [\"80\"]\n"),
            |e| matches!(e, ComposeError::RefusePortClash { port: 80, first, second, .. } if first == "a" && second == "b"),
            "port 80/tcp is published by both a and b",
        ),
        (
            "container network mode",
            svc("    network_mode: \"service:b\"\n"),
            |e| matches!(e, ComposeError::Refuse { .. }),
            "only network_mode host or bridge",
        ),
        (
            "external network",
            format!("{}networks:\n  n: {{external: true}}\n", svc("")),
            |e| matches!(e, ComposeError::Refuse { .. }),
            "external networks",
        ),
        (
            "undeclared service network",
            svc("    networks: [ghost]\n"),
            |e| matches!(e, ComposeError::InvalidValue { .. }),
            "not declared under top-level networks",
        ),
        (
            "host-wide sysctl",
            svc("    sysctls:\n      vm.swappiness: 10\n"),
            |e| matches!(e, ComposeError::Refuse { path, .. } if path == "services.a.sysctls.vm.swappiness"),
            "only namespaced sysctls",
        ),
        (
            "security_opt apparmor",
            svc("    security_opt: [\"apparmor=unconfined\"]\n"),
            |e| matches!(e, ComposeError::Refuse { .. }),
            "no-new-privileges and seccomp=unconfined",
        ),
        (
            "userns_mode other than host",
            svc("    userns_mode: \"private\"\n"),
            |e| matches!(e, ComposeError::Refuse { path, .. } if path == "services.a.userns_mode"),
            "only userns_mode: host",
        ),
        (
            "security_opt seccomp profile file",
            svc("    security_opt: [\"seccomp=/etc/profile.json\"]\n"),
            |e| matches!(e, ComposeError::Refuse { path, .. } if path == "services.a.security_opt[0]"),
            "only seccomp=unconfined",
        ),
        (
            "pid of another container",
            svc("    pid: \"service:b\"\n"),
            |e| matches!(e, ComposeError::Refuse { .. }),
            "pid: host",
        ),
        (
            "unknown tmpfs option",
            svc("    tmpfs: [\"/run:exec,bogus\"]\n"),
            |e| matches!(e, ComposeError::InvalidValue { .. }),
            "unsupported tmpfs option",
        ),
        (
            "extra_hosts host-gateway",
            svc("    extra_hosts: [\"host.docker.internal:host-gateway\"]\n"),
            |e| matches!(e, ComposeError::Refuse { .. }),
            "host-gateway",
        ),
        (
            "link to an unknown service",
            svc("    links: [\"db:database\"]\n"),
            |e| matches!(e, ComposeError::InvalidValue { .. }),
            "unknown service \"db\"",
        ),
        (
            "pull_policy build",
            svc("    pull_policy: build\n"),
            |e| matches!(e, ComposeError::Refuse { .. }),
            "pin it by digest",
        ),
        (
            "unknown dependency",
            svc("    depends_on: [ghost]\n"),
            |e| matches!(e, ComposeError::ResolveDependency { dependency, .. } if dependency == "ghost"),
            "ghost",
        ),
        (
            "cycle",
            two("    depends_on: [b]\n", "    depends_on: [a]\n"),
            |e| matches!(e, ComposeError::OrderServices { cycle } if cycle.len() == 3),
            "a -> b -> a",
        ),
        (
            "self cycle",
            svc("    depends_on: [a]\n"),
            |e| matches!(e, ComposeError::OrderServices { .. }),
            "a -> a",
        ),
        (
            "bad condition",
            svc("    depends_on:\n      a:\n        condition: service_ready\n"),
            |e| matches!(e, ComposeError::InvalidValue { .. }),
            "service_ready",
        ),
        (
            "bad restart",
            svc("    restart: sometimes\n"),
            |e| matches!(e, ComposeError::InvalidValue { .. }),
            "sometimes",
        ),
        (
            "bad on-failure count",
            svc("    restart: on-failure:x\n"),
            |e| matches!(e, ComposeError::InvalidValue { .. }),
            "on-failure:<count>",
        ),
        (
            "file config",
            format!("{}configs:\n  c:\n    file: ./c\n", svc("")),
            |e| matches!(e, ComposeError::Refuse { .. }),
            "inline `content`",
        ),
        (
            "undeclared config",
            svc("    configs: [c]\n"),
            |e| matches!(e, ComposeError::InvalidValue { .. }),
            "not declared",
        ),
        (
            "relative working_dir",
            svc("    working_dir: srv\n"),
            |e| matches!(e, ComposeError::InvalidValue { .. }),
            "absolute",
        ),
        (
            "device outside /dev",
            svc("    devices: [\"/etc/shadow\"]\n"),
            |e| matches!(e, ComposeError::InvalidValue { .. }),
            "under /dev",
        ),
        (
            "unknown ulimit",
            svc("    ulimits:\n      bogus: 1\n"),
            |e| matches!(e, ComposeError::UnknownKey { key, .. } if key == "bogus"),
            "bogus",
        ),
        (
            "soft above hard",
            svc("    ulimits:\n      nofile: {soft: 10, hard: 5}\n"),
            |e| matches!(e, ComposeError::InvalidValue { .. }),
            "soft limit above hard",
        ),
        (
            "bad mem_limit",
            svc("    mem_limit: lots\n"),
            |e| matches!(e, ComposeError::InvalidValue { .. }),
            "byte size",
        ),
        (
            "bad cpus",
            svc("    cpus: -1\n"),
            |e| matches!(e, ComposeError::InvalidValue { .. }),
            "cpus",
        ),
        (
            "amd gpu",
            svc(
                "    deploy:\n      resources:\n        reservations:\n          devices:\n            - driver: amd\n              capabilities: [gpu]\n",
            ),
            |e| matches!(e, ComposeError::Refuse { .. }),
            "nvidia",
        ),
        (
            "deploy replicas",
            svc("    deploy:\n      replicas: 2\n"),
            |e| matches!(e, ComposeError::UnknownKey { key, .. } if key == "replicas"),
            "replicas",
        ),
        (
            "bad signal",
            svc("    stop_signal: SIGFOO\n"),
            |e| matches!(e, ComposeError::InvalidValue { .. }),
            "SIGFOO",
        ),
        (
            "bad grace period",
            svc("    stop_grace_period: 10\n"),
            |e| matches!(e, ComposeError::WrongType { .. }),
            "duration",
        ),
        (
            "platform arm",
            svc("    platform: linux/arm64\n"),
            |e| matches!(e, ComposeError::Refuse { .. }),
            "linux/amd64",
        ),
        (
            "unterminated interpolation",
            svc("    command: echo ${A\n"),
            |e| matches!(e, ComposeError::Interpolate { path, .. } if path == "services.a.command"),
            "interpolate services.a.command",
        ),
        (
            "required variable",
            svc("    command: echo ${NOPE:?must be set}\n"),
            |e| {
                matches!(
                    e,
                    ComposeError::Interpolate {
                        source: InterpolateError::RequiredMissing { .. },
                        ..
                    }
                )
            },
            "interpolate",
        ),
        (
            "not yaml",
            "services: [\n".into(),
            |e| matches!(e, ComposeError::ParseYaml(_)),
            "not valid YAML",
        ),
        (
            "no services",
            "services: {}\n".into(),
            |e| matches!(e, ComposeError::InvalidValue { .. }),
            "no services",
        ),
        (
            "services not a mapping",
            "services: [a]\n".into(),
            |e| matches!(e, ComposeError::WrongType { .. }),
            "mapping",
        ),
        (
            "bad service name",
            format!("services:\n  \"../x\":\n    image: busybox@{D}\n"),
            |e| matches!(e, ComposeError::InvalidValue { .. }),
            "service names",
        ),
        (
            "healthcheck test shape",
            svc("    healthcheck:\n      test: [\"CMD\"]\n"),
            |e| matches!(e, ComposeError::InvalidValue { .. }),
            "CMD-SHELL",
        ),
        (
            "external volume",
            format!("{}volumes:\n  d:\n    external: true\n", svc("")),
            |e| matches!(e, ComposeError::Refuse { .. }),
            "external",
        ),
    ];
    for (name, yaml, check, text) in cases {
        let err = parse_err(&yaml);
        assert!(check(&err), "{name}: unexpected error variant {err:?}");
        let chain = cvm_error_chain::joined(&err);
        assert!(chain.contains(text), "{name}: {chain:?} lacks {text:?}");
    }
}

#[test]
fn bash_runner_is_refused() {
    let err = parse(Some("bash"), &svc(""), &env(), &ComposePolicy::default()).unwrap_err();
    assert!(matches!(err, ComposeError::RefuseRunner { ref runner } if runner == "bash"));
    assert!(err.to_string().contains("not supported"));
    parse(
        Some("nerdctl-compose"),
        &svc(""),
        &env(),
        &ComposePolicy::default(),
    )
    .unwrap();
}

#[test]
fn privileged_only_with_the_app_compose_opt_in() {
    let yaml = svc("    privileged: true\n");
    let err = parse_err(&yaml);
    assert!(err.to_string().contains("allow_privileged"), "{err}");
    let policy = ComposePolicy {
        allow_privileged: true,
        ..ComposePolicy::default()
    };
    assert!(parse(None, &yaml, &env(), &policy).unwrap().services[0].privileged);
    // `privileged: false` needs nothing.
    parse_ok(&svc("    privileged: false\n"));
}

#[test]
fn host_binds_only_with_policy() {
    let yaml = svc("    volumes: [\"/srv/data:/data:ro\"]\n");
    let policy = ComposePolicy {
        allow_host_binds: true,
        ..ComposePolicy::default()
    };
    let app = parse(None, &yaml, &env(), &policy).unwrap();
    assert_eq!(
        app.services[0].volumes,
        vec![VolumeMount::Bind {
            source: "/srv/data".into(),
            target: "/data".into(),
            read_only: true
        }]
    );
    let yaml = svc("    volumes: [\"/srv/../etc:/data\"]\n");
    assert!(matches!(
        parse(None, &yaml, &env(), &policy),
        Err(ComposeError::RefuseHostBind { .. })
    ));
}

#[test]
fn restart_forms_and_other_shapes() {
    for (text, want) in [
        ("\"no\"", RestartPolicy::No),
        ("false", RestartPolicy::No),
        ("always", RestartPolicy::Always),
        ("on-failure", RestartPolicy::OnFailure { max_retries: None }),
        (
            "on-failure:3",
            RestartPolicy::OnFailure {
                max_retries: Some(3),
            },
        ),
    ] {
        let app = parse_ok(&svc(&format!("    restart: {text}\n")));
        assert_eq!(app.services[0].restart, want, "{text}");
    }
    let app = parse_ok(&svc(
        "    healthcheck:\n      test: curl -f localhost\n    gpus: all\n    stop_signal: \"9\"\n",
    ));
    let s = &app.services[0];
    assert_eq!(
        s.healthcheck.as_ref().unwrap().test,
        HealthTest::Shell("curl -f localhost".into())
    );
    assert_eq!(s.resources.gpus, Some(GpuRequest::All));
    assert_eq!(s.stop_signal, "SIGKILL");
    let app = parse_ok(&svc(
        "    healthcheck:\n      test: [\"NONE\"]\n    ports: [\"127.0.0.1:8000-8001:8000-8001\"]\n",
    ));
    assert_eq!(app.services[0].healthcheck, None);
    assert_eq!(app.services[0].ports.len(), 2);
    let app = parse_ok(&svc(
        "    volumes: [\"/run/dstack.sock:/var/run/dstack.sock\"]\n",
    ));
    assert!(
        matches!(&app.services[0].volumes[0], VolumeMount::Bind { source, .. } if source == "/var/run/dstack.sock")
    );
}

#[test]
fn start_order_is_topological_and_stable() {
    let yaml = format!(
        "services:\n  c:\n    image: x@{D}\n    depends_on: [b]\n  a:\n    image: x@{D}\n  b:\n    image: x@{D}\n    depends_on: [a]\n  d:\n    image: x@{D}\n"
    );
    let app = parse_ok(&yaml);
    let names: Vec<&str> = app.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
}

#[test]
fn control_characters_in_names_are_escaped_in_errors() {
    let err = parse_err(
        "services:\n  \"a\\0b\":\n    image: x@sha256:0000000000000000000000000000000000000000000000000000000000000000\n",
    );
    let text = err.to_string();
    assert!(text.starts_with("services.a\\0b: service names"), "{text}");
    assert!(!text.contains('\0'));
    let err = parse_err("services:\n  a:\n    \"bad\\u001bkey\": 1\n");
    let text = err.to_string();
    assert!(text.contains("bad\\u{1b}key"), "{text}");
    assert!(!text.contains('\u{1b}'));
}

#[test]
fn without_environment_an_interpolated_image_is_refused() {
    // The same file parses for the init, whose environment picks the image.
    let yaml = format!("services:\n  a:\n    image: \"${{IMAGE:-nginx@{D}}}\"\n");
    let app = parse_ok(&yaml);
    assert_eq!(app.services[0].image.digest.to_string(), D);
    let err = parse_without_environment(None, &yaml).unwrap_err();
    assert!(
        matches!(err, ComposeError::RefuseImageInterpolation { ref service } if service == "a"),
        "{err:?}"
    );
    // Interpolation elsewhere is fine: every variable is unset.
    let app = parse_without_environment(
        None,
        &svc("    environment:\n      - GREETING=hi ${NAME:-there}\n"),
    )
    .unwrap();
    assert_eq!(
        app.services[0]
            .environment
            .get("GREETING")
            .map(String::as_str),
        Some("hi there")
    );
    // An unpinned image fails as it does in the init.
    let err = parse_without_environment(None, "services:\n  a:\n    image: redis:7\n").unwrap_err();
    assert!(
        matches!(
            err,
            ComposeError::ParseImage {
                source: crate::digest::DigestError::MissingDigest { .. },
                ..
            }
        ),
        "{err:?}"
    );
    // `x-` services are ignored in both.
    parse_without_environment(
        None,
        &format!("services:\n  x-b:\n    image: $X\n  a:\n    image: nginx@{D}\n"),
    )
    .unwrap();
}

#[test]
fn real_app_keys_are_accepted_and_carried() {
    let yaml = format!(
        r#"
services:
  web:
    image: nginx:1.27@{D}
    labels:
      com.example.role: front
    logging:
      driver: json-file
      options: {{max-size: 10m}}
    hostname: web1
    domainname: example.internal
    shm_size: 2gb
    init: true
    links: ["db:database", "db"]
    pull_policy: always
    cap_add: [NET_ADMIN, cap_sys_nice]
    cap_drop: [ALL]
    tmpfs:
      - /run
      - /tmp:size=64m,mode=1770,noexec
    sysctls:
      - net.core.somaxconn=1024
      - kernel.shmmax=68719476736
    extra_hosts:
      - "api.local:10.0.0.5"
      - "v6.local=::1"
    read_only: true
    security_opt: ["no-new-privileges:true", "seccomp:unconfined"]
    userns_mode: host
    expose: ["8080", "9000/udp"]
    ports:
      - "8080:80"
      - "127.0.0.1:9000-9001:9000-9001/udp"
      - target: 443
        published: "8443"
        host_ip: 0.0.0.0
    networks:
      front:
        aliases: [www]
        ipv4_address: 172.20.0.5
  db:
    image: postgres@{D}
    pid: host
    networks: [front]
    env_file: []
networks:
  front:
    ipam:
      config: [{{subnet: 172.20.0.0/16}}]
"#
    );
    // env_file is refused even when empty: the files would come from the untrusted host.
    assert!(
        matches!(parse_err(&yaml), ComposeError::Refuse { path, .. } if path == "services.db.env_file")
    );
    let app = parse_ok(&yaml.replace("    env_file: []\n", ""));
    let web = app.service("web").unwrap();
    assert_eq!(web.labels["com.example.role"], "front");
    assert_eq!(web.hostname.as_deref(), Some("web1"));
    assert_eq!(web.domainname.as_deref(), Some("example.internal"));
    assert_eq!(web.shm_size, Some(2 << 30));
    assert!(web.init && web.read_only && web.no_new_privileges && !web.pid_host);
    assert!(web.seccomp_unconfined);
    assert!(!app.service("db").unwrap().seccomp_unconfined);
    assert_eq!(
        web.links,
        vec![
            Link {
                service: "db".into(),
                alias: "database".into()
            },
            Link {
                service: "db".into(),
                alias: "db".into()
            }
        ]
    );
    assert_eq!(web.cap_add, ["CAP_NET_ADMIN", "CAP_SYS_NICE"]);
    assert_eq!(web.cap_drop, ["ALL"]);
    assert_eq!(
        web.volumes,
        vec![
            VolumeMount::Tmpfs {
                target: "/run".into(),
                options: vec![]
            },
            VolumeMount::Tmpfs {
                target: "/tmp".into(),
                options: vec!["size=67108864".into(), "mode=1770".into(), "noexec".into()]
            },
        ]
    );
    assert_eq!(web.sysctls["net.core.somaxconn"], "1024");
    assert_eq!(web.sysctls["kernel.shmmax"], "68719476736");
    assert_eq!(
        web.extra_hosts,
        vec![
            ("api.local".into(), "10.0.0.5".into()),
            ("v6.local".into(), "::1".into())
        ]
    );
    let ports: Vec<(u16, u16, Option<&str>, Protocol)> = web
        .ports
        .iter()
        .map(|p| (p.published, p.port, p.host_ip.as_deref(), p.protocol))
        .collect();
    assert_eq!(
        ports,
        vec![
            (8080, 80, None, Protocol::Tcp),
            (9000, 9000, Some("127.0.0.1"), Protocol::Udp),
            (9001, 9001, Some("127.0.0.1"), Protocol::Udp),
            (8443, 443, Some("0.0.0.0"), Protocol::Tcp),
        ]
    );
    assert!(web.ports[0].remaps() && !web.ports[1].remaps());
    assert_eq!(
        web.networks,
        vec![ServiceNetwork {
            name: "front".into(),
            aliases: vec!["www".into()],
            ipv4_address: Some("172.20.0.5".into()),
            ipv6_address: None,
        }]
    );
    assert_eq!(app.networks["front"].subnets, ["172.20.0.0/16"]);
    assert!(app.service("db").unwrap().pid_host);
}

#[test]
fn port_clashes_compare_host_ports() {
    // Two services may listen on the same container port when they publish different ones.
    let yaml = format!(
        "services:\n  a:\n    image: busybox@{D}\n    ports: [\"8080:80\"]\n  b:\n    image: busybox@{D}\n    ports: [\"8081:80\"]\n"
    );
    assert_eq!(parse_ok(&yaml).services.len(), 2);
    let clash = yaml.replace("8081:80", "8080:81");
    assert!(matches!(
        parse_err(&clash),
        ComposeError::RefusePortClash { port: 8080, .. }
    ));
}

#[test]
fn check_collects_every_refusal() {
    let yaml = "services:\n  a:\n    build: .\n    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\", \"/etc:/etc\"]\n  b:\n    image: nginx\n    tty: true\n  c:\n    image: ${IMAGE}\n";
    let errors = check_without_environment(None, yaml).unwrap_err();
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 6, "{texts:#?}");
    assert!(
        matches!(&errors[0], ComposeError::RefuseImageInterpolation { service } if service == "c")
    );
    assert!(texts[1].contains("build and push the image"), "{texts:#?}");
    assert!(matches!(
        &errors[2],
        ComposeError::RefuseDockerSocket { .. }
    ));
    assert!(
        matches!(&errors[3], ComposeError::RefuseHostBind { source_path, .. } if source_path == "/etc")
    );
    assert!(texts[4].contains("unknown key \"tty\""), "{texts:#?}");
    assert!(matches!(&errors[5], ComposeError::ParseImage { service, .. } if service == "b"));
    // `parse_without_environment` reports the first of them.
    let first = parse_without_environment(None, yaml).unwrap_err();
    assert_eq!(first.to_string(), texts[0]);
}

#[test]
fn networking_gaps_are_what_the_bridges_cannot_honour() {
    // Own network namespace: remaps, static IPv4 addresses and net.* sysctls are honoured.
    let own = format!(
        "services:\n  a:\n    image: busybox@{D}\n    ports: [\"8080:80\", \"10.0.2.15:53:53/udp\"]\n    sysctls: {{net.ipv4.ip_unprivileged_port_start: 0}}\n    networks:\n      n: {{ipv4_address: 172.20.0.5}}\nnetworks:\n  n:\n    ipam:\n      config: [{{subnet: 172.20.0.0/24}}]\n"
    );
    let app = parse_ok(&own);
    let a = app.service("a").unwrap();
    assert!(!a.network_host);
    assert_eq!(a.networking_gaps(), vec![]);
    // Under network_mode: host they would change the VM's own network.
    let host = format!(
        "services:\n  a:\n    image: busybox@{D}\n    network_mode: host\n    ports: [\"8080:80\", \"81:81\"]\n    sysctls: {{net.core.somaxconn: 1024}}\n"
    );
    let app = parse_ok(&host);
    let a = app.service("a").unwrap();
    assert!(a.network_host);
    assert_eq!(
        a.networking_gaps(),
        vec![
            NetworkingGap::HostPortRemap {
                published: 8080,
                target: 80
            },
            NetworkingGap::NetSysctl {
                key: "net.core.somaxconn".into()
            }
        ]
    );
    // Loopback and IPv6 host addresses, IPv6 static addresses: refused with a reason.
    let v6 = format!(
        "services:\n  a:\n    image: busybox@{D}\n    ports: [\"127.0.0.1:80:80\", \"[::1]:81:81\", \"0.0.0.0:82:82\"]\n    networks:\n      n: {{ipv6_address: \"fd00::5\"}}\nnetworks:\n  n: {{}}\n"
    );
    let app = parse_ok(&v6);
    let gaps = app.service("a").unwrap().networking_gaps();
    assert_eq!(gaps.len(), 3, "{gaps:?}");
    assert!(matches!(&gaps[0], NetworkingGap::HostIp { ip } if ip == "127.0.0.1"));
    assert!(matches!(&gaps[2], NetworkingGap::Ipv6Address { network } if network == "n"));
    assert!(gaps[0].to_string().contains("use 0.0.0.0"));
    // bridge is the default mode; a driver: host network means host networking.
    let bridge = format!(
        "services:\n  a:\n    image: busybox@{D}\n    network_mode: bridge\n  b:\n    image: busybox@{D}\n    networks: [h]\nnetworks:\n  h: {{driver: host}}\n"
    );
    let app = parse_ok(&bridge);
    assert!(!app.service("a").unwrap().network_host);
    assert!(app.service("b").unwrap().network_host);
}

/// Every accepted GPU request form becomes one `GpuRequest`; a service without one has none.
#[test]
fn gpu_requests_in_every_accepted_form() {
    let gpus = |body: &str| {
        parse_ok(&svc(body))
            .service("a")
            .unwrap()
            .resources
            .gpus
            .clone()
    };
    let reservation = |fields: &str| {
        gpus(&format!(
            "    deploy:\n      resources:\n        reservations:\n          devices:\n            - {fields}\n"
        ))
    };
    assert_eq!(gpus(""), None);
    assert_eq!(
        reservation("{driver: nvidia, count: 2, capabilities: [gpu]}"),
        Some(GpuRequest::Count(2))
    );
    assert_eq!(
        reservation("{driver: nvidia, count: all, capabilities: [gpu, compute, utility]}"),
        Some(GpuRequest::All)
    );
    // driver nvidia alone, or capabilities [gpu] alone, is a GPU reservation.
    assert_eq!(reservation("{driver: nvidia}"), Some(GpuRequest::All));
    assert_eq!(
        reservation("{capabilities: [gpu], device_ids: [\"1\", \"GPU-0b1c-ff\"]}"),
        Some(GpuRequest::Ids(vec!["1".into(), "GPU-0b1c-ff".into()]))
    );
    assert_eq!(gpus("    runtime: nvidia\n"), Some(GpuRequest::All));
    assert_eq!(gpus("    runtime: runc\n"), None);
    assert_eq!(
        gpus("    runtime: nvidia\n    environment:\n      NVIDIA_VISIBLE_DEVICES: \"0,2\"\n"),
        Some(GpuRequest::Ids(vec!["0".into(), "2".into()]))
    );
    assert_eq!(
        gpus("    runtime: nvidia\n    environment:\n      NVIDIA_VISIBLE_DEVICES: none\n"),
        None
    );
    assert_eq!(
        gpus("    environment: [NVIDIA_VISIBLE_DEVICES=all]\n"),
        Some(GpuRequest::All)
    );
    assert_eq!(
        gpus("    environment: [NVIDIA_VISIBLE_DEVICES=void]\n"),
        None
    );
    assert_eq!(gpus("    environment: [NVIDIA_VISIBLE_DEVICES=]\n"), None);
}

/// Unsupported GPU forms are refused, each with one line that says what is supported.
#[test]
fn gpu_request_refusals() {
    let reservation = |fields: &str| {
        svc(&format!(
            "    deploy:\n      resources:\n        reservations:\n          devices:\n            - {fields}\n"
        ))
    };
    let cases: Vec<(String, &str)> = vec![
        (
            reservation("{capabilities: [tpu]}"),
            "driver: nvidia or capabilities: [gpu]",
        ),
        (
            reservation("{driver: nvidia, capabilities: [gpu, graphics]}"),
            "\"graphics\" is not supported",
        ),
        (reservation("{driver: nvidia, count: 0}"), "above 0"),
        (
            reservation("{driver: nvidia, count: 1, device_ids: [\"0\"]}"),
            "exclusive",
        ),
        (
            reservation("{driver: nvidia, device_ids: [\"0\", \"0\"]}"),
            "given twice",
        ),
        (
            reservation("{driver: nvidia, device_ids: [\"gpu0\"]}"),
            "neither an index",
        ),
        (reservation("{driver: nvidia, device_ids: []}"), "empty"),
        (svc("    runtime: kata\n"), "only runtime: runc"),
        (
            svc("    environment: [\"NVIDIA_VISIBLE_DEVICES=0,x\"]\n"),
            "neither an index",
        ),
        (
            format!("{}    runtime: nvidia\n", reservation("{driver: nvidia}")),
            "GPUs requested twice",
        ),
        (
            svc("    gpus: all\n    environment: [NVIDIA_VISIBLE_DEVICES=0]\n"),
            "GPUs requested twice",
        ),
    ];
    for (yaml, text) in cases {
        let err = parse_err(&yaml);
        let line = cvm_error_chain_line(&err);
        assert!(line.contains(text), "{yaml}\n→ {line}");
        assert!(!line.contains('\n'), "{line}");
    }
}

fn cvm_error_chain_line(e: &ComposeError) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
