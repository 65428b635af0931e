//! The YAML walk: interpolation, known keys per mapping, refusals, typed values.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_norway::Value;

use crate::digest::ImageRef;
use crate::interpolate::interpolate;
use crate::model::{
    App, ConfigMount, Dependency, DependencyCondition, DeviceMapping, GpuRequest, HealthTest,
    Healthcheck, Port, Protocol, Resources, RestartPolicy, SIGNALS, Service, Ulimit, VolumeMount,
};
use crate::order::order_services;
use crate::value::{self, Node};
use crate::{ComposeError, printable};

/// What the caller allows beyond the default subset.
#[derive(Debug, Clone, Default)]
pub struct ComposePolicy {
    /// Allow host bind mounts other than the dstack sockets (off by default).
    pub allow_host_binds: bool,
}

/// Paths of the guest API sockets a service may bind-mount.
pub const SOCKET_BINDS: [&str; 2] = ["/var/run/dstack.sock", "/var/run/tappd.sock"];

/// Parses the compose text of an app whose app-compose.json names `runner`.
///
/// `env` is the decrypted environment used for interpolation and for list-form variables
/// without a value.
pub fn parse(
    runner: Option<&str>,
    yaml: &str,
    env: &BTreeMap<String, String>,
    policy: &ComposePolicy,
) -> Result<App, ComposeError> {
    parse_with(runner, yaml, env, policy, Images::FromEnvironment)
}

/// Parses the compose text as an auditor sees it: without the (encrypted) environment, so every
/// variable is unset, under the default policy. An `image` that needs interpolation is refused
/// ([`ComposeError::RefuseImageInterpolation`]): the environment, which the compose-hash does
/// not cover, would choose it.
pub fn parse_without_environment(runner: Option<&str>, yaml: &str) -> Result<App, ComposeError> {
    parse_with(
        runner,
        yaml,
        &BTreeMap::new(),
        &ComposePolicy::default(),
        Images::FromComposeText,
    )
}

/// Whether a service's `image` may come from interpolation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Images {
    FromEnvironment,
    FromComposeText,
}

fn parse_with(
    runner: Option<&str>,
    yaml: &str,
    env: &BTreeMap<String, String>,
    policy: &ComposePolicy,
    images: Images,
) -> Result<App, ComposeError> {
    match runner {
        None | Some("docker-compose") | Some("nerdctl-compose") => {}
        Some(other) => {
            return Err(ComposeError::RefuseRunner {
                runner: other.to_owned(),
            });
        }
    }
    let mut root: Value = serde_norway::from_str(yaml).map_err(ComposeError::ParseYaml)?;
    root.apply_merge().map_err(ComposeError::ParseYaml)?;
    if images == Images::FromComposeText {
        refuse_image_interpolation(&root)?;
    }
    interpolate_tree(&mut root, env, "")?;
    let root = Node::new("", &root);
    let top = root.mapping()?;
    top.check_keys(&[
        "services", "volumes", "configs", "name", "version", "networks",
    ])?;
    if let Some(networks) = top.get("networks")
        && !networks.is_empty_mapping()
    {
        return Err(ComposeError::refuse(
            "networks",
            "networks are not supported: every service uses host networking",
        ));
    }
    let volumes = match top.get("volumes") {
        Some(v) => parse_top_volumes(&v)?,
        None => BTreeSet::new(),
    };
    let configs = match top.get("configs") {
        Some(v) => parse_top_configs(&v)?,
        None => BTreeMap::new(),
    };
    let services_node = top
        .get("services")
        .ok_or_else(|| ComposeError::invalid("services", "missing"))?;
    let services_map = services_node.mapping()?;
    let mut services = Vec::new();
    for (name, node) in services_map.entries()? {
        if name.starts_with("x-") {
            continue;
        }
        check_service_name(&node.path, &name)?;
        services.push(parse_service(
            &name, &node, env, policy, &volumes, &configs,
        )?);
    }
    if services.is_empty() {
        return Err(ComposeError::invalid("services", "no services"));
    }
    check_port_clashes(&services)?;
    let services = order_services(services)?;
    Ok(App {
        services,
        volumes,
        configs,
    })
}

/// Refuses a service `image` with a `$` in it: interpolation (or a `$$` escape, which no valid
/// reference contains) would decide the reference.
fn refuse_image_interpolation(root: &Value) -> Result<(), ComposeError> {
    let Some(Value::Mapping(services)) = root.get("services") else {
        return Ok(());
    };
    for (name, service) in services {
        let name = name.as_str().unwrap_or("?");
        if name.starts_with("x-") {
            continue;
        }
        if let Some(Value::String(image)) = service.get("image")
            && image.contains('$')
        {
            return Err(ComposeError::RefuseImageInterpolation {
                service: printable(name),
            });
        }
    }
    Ok(())
}

fn interpolate_tree(
    value: &mut Value,
    env: &BTreeMap<String, String>,
    path: &str,
) -> Result<(), ComposeError> {
    match value {
        Value::String(s) => {
            *s = interpolate(s, env).map_err(|source| ComposeError::Interpolate {
                path: path.to_owned(),
                source,
            })?;
        }
        Value::Sequence(seq) => {
            for (i, item) in seq.iter_mut().enumerate() {
                interpolate_tree(item, env, &format!("{path}[{i}]"))?;
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                let key = key.as_str().unwrap_or("?");
                if key.starts_with("x-") {
                    continue;
                }
                let sub = if path.is_empty() {
                    key.to_owned()
                } else {
                    format!("{path}.{key}")
                };
                interpolate_tree(item, env, &sub)?;
            }
        }
        Value::Tagged(tagged) => interpolate_tree(&mut tagged.value, env, path)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

fn check_service_name(path: &str, name: &str) -> Result<(), ComposeError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ComposeError::invalid(
            path,
            "service names are [A-Za-z0-9._-], at most 63, starting alphanumeric",
        ))
    }
}

fn parse_top_volumes(node: &Node<'_>) -> Result<BTreeSet<String>, ComposeError> {
    let mut out = BTreeSet::new();
    if node.is_null() {
        return Ok(out);
    }
    for (name, vol) in node.mapping()?.entries()? {
        if name.starts_with("x-") {
            continue;
        }
        check_volume_name(&vol.path, &name)?;
        if !vol.is_null() {
            let m = vol.mapping()?;
            m.check_keys(&["driver", "name", "external", "labels", "driver_opts"])?;
            if let Some(d) = m.get("driver")
                && d.string()? != "local"
            {
                return Err(ComposeError::refuse(
                    &d.path,
                    "only the local volume driver exists",
                ));
            }
            if let Some(e) = m.get("external")
                && e.boolean()?
            {
                return Err(ComposeError::refuse(
                    &e.path,
                    "external volumes do not exist in a CVM",
                ));
            }
            if let Some(o) = m.get("driver_opts")
                && !o.is_empty_mapping()
            {
                return Err(ComposeError::refuse(
                    &o.path,
                    "driver_opts are not supported",
                ));
            }
            if let Some(n) = m.get("name") {
                let n = n.string()?;
                if n != name {
                    return Err(ComposeError::refuse(
                        &vol.path,
                        "volume name overrides are not supported",
                    ));
                }
            }
        }
        out.insert(name);
    }
    Ok(out)
}

fn check_volume_name(path: &str, name: &str) -> Result<(), ComposeError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ComposeError::invalid(
            path,
            "volume names are [A-Za-z0-9._-], starting alphanumeric",
        ))
    }
}

fn parse_top_configs(node: &Node<'_>) -> Result<BTreeMap<String, String>, ComposeError> {
    let mut out = BTreeMap::new();
    if node.is_null() {
        return Ok(out);
    }
    for (name, cfg) in node.mapping()?.entries()? {
        if name.starts_with("x-") {
            continue;
        }
        check_volume_name(&cfg.path, &name)?;
        let m = cfg.mapping()?;
        m.check_keys(&["content", "file", "environment", "external", "name"])?;
        for refused in ["file", "environment", "external", "name"] {
            if let Some(n) = m.get(refused) {
                return Err(ComposeError::refuse(
                    &n.path,
                    "only inline `content` configs are supported (the host file system is not trusted)",
                ));
            }
        }
        let content = m
            .get("content")
            .ok_or_else(|| ComposeError::invalid(&cfg.path, "missing content"))?
            .string()?;
        out.insert(name, content);
    }
    Ok(out)
}

const SERVICE_KEYS: &[&str] = &[
    "image",
    "container_name",
    "platform",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "volumes",
    "restart",
    "depends_on",
    "healthcheck",
    "ports",
    "expose",
    "network_mode",
    "configs",
    "user",
    "working_dir",
    "privileged",
    "devices",
    "ulimits",
    "mem_limit",
    "cpus",
    "pids_limit",
    "deploy",
    "gpus",
    "stop_signal",
    "stop_grace_period",
    "build",
];

fn parse_service(
    name: &str,
    node: &Node<'_>,
    env: &BTreeMap<String, String>,
    policy: &ComposePolicy,
    volumes: &BTreeSet<String>,
    configs: &BTreeMap<String, String>,
) -> Result<Service, ComposeError> {
    let m = node.mapping()?;
    m.check_keys(SERVICE_KEYS)?;
    if let Some(n) = m.get("build") {
        return Err(ComposeError::refuse(
            &n.path,
            "building images is not supported: give a digest-pinned `image`",
        ));
    }
    if let Some(n) = m.get("env_file") {
        return Err(ComposeError::refuse(
            &n.path,
            "env_file is refused: the host file system is not trusted; use `environment` with the encrypted env",
        ));
    }
    if let Some(n) = m.get("platform")
        && n.string()? != "linux/amd64"
    {
        return Err(ComposeError::refuse(
            &n.path,
            "only linux/amd64 images run here",
        ));
    }
    if let Some(n) = m.get("network_mode")
        && n.string()? != "host"
    {
        return Err(ComposeError::refuse(
            &n.path,
            "only network_mode: host is supported",
        ));
    }
    let image_node = m
        .get("image")
        .ok_or_else(|| ComposeError::invalid(&node.path, "missing image"))?;
    let image =
        ImageRef::parse(&image_node.string()?).map_err(|source| ComposeError::ParseImage {
            service: name.to_owned(),
            source,
        })?;
    let container_name = m.get("container_name").map(|n| n.string()).transpose()?;
    let command = m.get("command").map(|n| n.command()).transpose()?;
    let entrypoint = m.get("entrypoint").map(|n| n.command()).transpose()?;
    let environment = match m.get("environment") {
        Some(n) => parse_environment(&n, env)?,
        None => BTreeMap::new(),
    };
    let mut mounts = Vec::new();
    if let Some(n) = m.get("volumes") {
        for item in n.sequence()? {
            mounts.push(parse_volume(name, &item, policy, volumes)?);
        }
    }
    let restart = match m.get("restart") {
        Some(n) => parse_restart(&n)?,
        None => RestartPolicy::No,
    };
    let depends_on = match m.get("depends_on") {
        Some(n) => parse_depends_on(&n)?,
        None => Vec::new(),
    };
    let healthcheck = match m.get("healthcheck") {
        Some(n) => parse_healthcheck(&n)?,
        None => None,
    };
    let mut ports = Vec::new();
    if let Some(n) = m.get("ports") {
        for item in n.sequence()? {
            ports.extend(parse_port(name, &item)?);
        }
    }
    if let Some(n) = m.get("expose") {
        // Documentation only under host networking; still validate the numbers.
        for item in n.sequence()? {
            item.scalar_string()?
                .split('/')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or_else(|| ComposeError::invalid(&item.path, "not a port"))?;
        }
    }
    let mut config_mounts = Vec::new();
    if let Some(n) = m.get("configs") {
        for item in n.sequence()? {
            config_mounts.push(parse_config_mount(&item, configs)?);
        }
    }
    let user = m.get("user").map(|n| n.scalar_string()).transpose()?;
    let working_dir = match m.get("working_dir") {
        Some(n) => Some(absolute_path(&n)?),
        None => None,
    };
    let privileged = m
        .get("privileged")
        .map(|n| n.boolean())
        .transpose()?
        .unwrap_or(false);
    let mut devices = Vec::new();
    if let Some(n) = m.get("devices") {
        for item in n.sequence()? {
            devices.push(parse_device(&item)?);
        }
    }
    let ulimits = match m.get("ulimits") {
        Some(n) => parse_ulimits(&n)?,
        None => Vec::new(),
    };
    let resources = parse_resources(&m)?;
    let stop_signal = match m.get("stop_signal") {
        Some(n) => parse_signal(&n)?,
        None => "SIGTERM".to_owned(),
    };
    let stop_grace_period = match m.get("stop_grace_period") {
        Some(n) => n.duration()?,
        None => Duration::from_secs(10),
    };
    Ok(Service {
        name: name.to_owned(),
        image,
        container_name,
        command,
        entrypoint,
        environment,
        volumes: mounts,
        restart,
        depends_on,
        healthcheck,
        ports,
        configs: config_mounts,
        user,
        working_dir,
        privileged,
        devices,
        ulimits,
        resources,
        stop_signal,
        stop_grace_period,
    })
}

fn check_env_name(path: &str, name: &str) -> Result<(), ComposeError> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(ComposeError::invalid(
            path,
            format!("invalid variable name {name:?}"),
        ));
    }
    Ok(())
}

fn parse_environment(
    node: &Node<'_>,
    env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ComposeError> {
    let mut out = BTreeMap::new();
    if node.is_null() {
        return Ok(out);
    }
    if let Ok(items) = node.sequence() {
        for item in items {
            let text = item.string()?;
            match text.split_once('=') {
                Some((k, v)) => {
                    check_env_name(&item.path, k)?;
                    out.insert(k.to_owned(), v.to_owned());
                }
                None => {
                    check_env_name(&item.path, &text)?;
                    if let Some(v) = env.get(&text) {
                        out.insert(text, v.clone());
                    }
                }
            }
        }
        return Ok(out);
    }
    for (k, v) in node.mapping()?.entries()? {
        check_env_name(&v.path, &k)?;
        if v.is_null() {
            if let Some(value) = env.get(&k) {
                out.insert(k, value.clone());
            }
        } else {
            out.insert(k, v.scalar_string()?);
        }
    }
    Ok(out)
}

fn normalize_socket(source: &str) -> Option<&'static str> {
    let canonical = source
        .strip_prefix("/run/")
        .map(|rest| format!("/var/run/{rest}"));
    let candidate = canonical.as_deref().unwrap_or(source);
    SOCKET_BINDS.iter().copied().find(|s| *s == candidate)
}

fn parse_volume(
    service: &str,
    node: &Node<'_>,
    policy: &ComposePolicy,
    volumes: &BTreeSet<String>,
) -> Result<VolumeMount, ComposeError> {
    let (kind_name, source, target, read_only) = if let Ok(text) = node.string() {
        let parts: Vec<&str> = text.split(':').collect();
        let (source, target, mode) = match parts.as_slice() {
            [target] => (None, *target, None),
            [source, target] => (Some(*source), *target, None),
            [source, target, mode] => (Some(*source), *target, Some(*mode)),
            _ => {
                return Err(ComposeError::invalid(
                    &node.path,
                    "expected source:target[:mode]",
                ));
            }
        };
        let mut read_only = false;
        if let Some(mode) = mode {
            for opt in mode.split(',') {
                match opt {
                    "ro" => read_only = true,
                    "rw" | "z" | "Z" | "rprivate" | "private" => {}
                    other => {
                        return Err(ComposeError::invalid(
                            &node.path,
                            format!("unsupported mount option {other:?}"),
                        ));
                    }
                }
            }
        }
        let kind_name = match source {
            None => "anonymous",
            Some(s) if s.starts_with('/') || s.starts_with('.') || s.starts_with('~') => "bind",
            Some(_) => "volume",
        };
        (
            kind_name.to_owned(),
            source.map(str::to_owned),
            target.to_owned(),
            read_only,
        )
    } else {
        let m = node.mapping()?;
        m.check_keys(&[
            "type",
            "source",
            "target",
            "read_only",
            "bind",
            "volume",
            "tmpfs",
            "consistency",
        ])?;
        let kind_name = m
            .get("type")
            .ok_or_else(|| ComposeError::invalid(&node.path, "missing type"))?
            .string()?;
        let source = m.get("source").map(|n| n.string()).transpose()?;
        let target = m
            .get("target")
            .ok_or_else(|| ComposeError::invalid(&node.path, "missing target"))?
            .string()?;
        let read_only = m
            .get("read_only")
            .map(|n| n.boolean())
            .transpose()?
            .unwrap_or(false);
        for sub in ["bind", "volume", "tmpfs"] {
            if let Some(n) = m.get(sub) {
                let sm = n.mapping()?;
                // Accept the harmless defaults only.
                sm.check_keys(&["create_host_path", "nocopy", "size"])?;
            }
        }
        (kind_name, source, target, read_only)
    };
    let target_ok = target.starts_with('/') && !target.split('/').any(|c| c == "..");
    if !target_ok {
        return Err(ComposeError::invalid(
            &node.path,
            format!("mount target {target:?} must be an absolute path without `..`"),
        ));
    }
    match (kind_name.as_str(), source) {
        ("anonymous", _) | ("volume", None) => Err(ComposeError::refuse(
            &node.path,
            "anonymous volumes are not supported: name the volume",
        )),
        ("volume", Some(name)) => {
            if !volumes.contains(&name) {
                return Err(ComposeError::invalid(
                    &node.path,
                    format!("volume {name:?} is not declared under top-level volumes"),
                ));
            }
            Ok(VolumeMount::Named {
                name,
                target,
                read_only,
            })
        }
        ("bind", Some(source)) => {
            if let Some(socket) = normalize_socket(&source) {
                return Ok(VolumeMount::Bind {
                    source: socket.to_owned(),
                    target,
                    read_only,
                });
            }
            let absolute_clean = source.starts_with('/') && !source.split('/').any(|c| c == "..");
            if policy.allow_host_binds && absolute_clean {
                return Ok(VolumeMount::Bind {
                    source,
                    target,
                    read_only,
                });
            }
            Err(ComposeError::RefuseHostBind {
                service: service.to_owned(),
                source_path: source,
            })
        }
        ("tmpfs", None) => Ok(VolumeMount::Tmpfs { target }),
        _ => Err(ComposeError::invalid(
            &node.path,
            format!("unsupported mount type {kind_name:?}"),
        )),
    }
}

fn parse_restart(node: &Node<'_>) -> Result<RestartPolicy, ComposeError> {
    if let Ok(b) = node.boolean() {
        return if b {
            Err(ComposeError::invalid(
                &node.path,
                "restart: true is ambiguous; use always",
            ))
        } else {
            Ok(RestartPolicy::No)
        };
    }
    let text = node.string()?;
    match text.as_str() {
        "no" => Ok(RestartPolicy::No),
        "always" => Ok(RestartPolicy::Always),
        "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
        "on-failure" => Ok(RestartPolicy::OnFailure { max_retries: None }),
        other => match other.strip_prefix("on-failure:") {
            Some(n) => n
                .parse::<u32>()
                .map(|n| RestartPolicy::OnFailure {
                    max_retries: Some(n),
                })
                .map_err(|_| ComposeError::invalid(&node.path, "on-failure:<count>")),
            None => Err(ComposeError::invalid(
                &node.path,
                format!("unknown restart policy {other:?}"),
            )),
        },
    }
}

fn parse_depends_on(node: &Node<'_>) -> Result<Vec<Dependency>, ComposeError> {
    let mut out = Vec::new();
    if let Ok(items) = node.sequence() {
        for item in items {
            out.push(Dependency {
                service: item.string()?,
                condition: DependencyCondition::Started,
                required: true,
            });
        }
        return Ok(out);
    }
    for (service, spec) in node.mapping()?.entries()? {
        let mut condition = DependencyCondition::Started;
        let mut required = true;
        if !spec.is_null() {
            let m = spec.mapping()?;
            m.check_keys(&["condition", "restart", "required"])?;
            if let Some(c) = m.get("condition") {
                condition = match c.string()?.as_str() {
                    "service_started" => DependencyCondition::Started,
                    "service_healthy" => DependencyCondition::Healthy,
                    "service_completed_successfully" => DependencyCondition::CompletedSuccessfully,
                    other => {
                        return Err(ComposeError::invalid(
                            &c.path,
                            format!("unknown condition {other:?}"),
                        ));
                    }
                };
            }
            if let Some(r) = m.get("required") {
                required = r.boolean()?;
            }
            if let Some(r) = m.get("restart") {
                r.boolean()?;
            }
        }
        out.push(Dependency {
            service,
            condition,
            required,
        });
    }
    Ok(out)
}

fn parse_healthcheck(node: &Node<'_>) -> Result<Option<Healthcheck>, ComposeError> {
    let m = node.mapping()?;
    m.check_keys(&[
        "test",
        "interval",
        "timeout",
        "retries",
        "start_period",
        "start_interval",
        "disable",
    ])?;
    if let Some(d) = m.get("disable")
        && d.boolean()?
    {
        return Ok(None);
    }
    let test_node = m
        .get("test")
        .ok_or_else(|| ComposeError::invalid(&node.path, "missing test"))?;
    let test = if let Ok(text) = test_node.string() {
        HealthTest::Shell(text)
    } else {
        let items = test_node.string_list()?;
        match items.split_first() {
            Some((first, rest)) if first == "CMD" && !rest.is_empty() => {
                HealthTest::Exec(rest.to_vec())
            }
            Some((first, [cmd])) if first == "CMD-SHELL" => HealthTest::Shell(cmd.clone()),
            Some((first, [])) if first == "NONE" => return Ok(None),
            _ => {
                return Err(ComposeError::invalid(
                    &test_node.path,
                    "expected [CMD, argv...], [CMD-SHELL, command] or [NONE]",
                ));
            }
        }
    };
    let dur = |key: &str, default: u64| -> Result<Duration, ComposeError> {
        m.get(key)
            .map(|n| n.duration())
            .transpose()
            .map(|d| d.unwrap_or(Duration::from_secs(default)))
    };
    let retries = match m.get("retries") {
        Some(n) => u32::try_from(n.unsigned(u64::from(u32::MAX))?).unwrap_or(u32::MAX),
        None => 3,
    };
    Ok(Some(Healthcheck {
        test,
        interval: dur("interval", 30)?,
        timeout: dur("timeout", 30)?,
        retries,
        start_period: dur("start_period", 0)?,
        start_interval: dur("start_interval", 5)?,
    }))
}

fn parse_protocol(path: &str, text: &str) -> Result<Protocol, ComposeError> {
    match text {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        other => Err(ComposeError::invalid(
            path,
            format!("unknown protocol {other:?}"),
        )),
    }
}

fn parse_port_range(path: &str, text: &str) -> Result<(u16, u16), ComposeError> {
    let bad = || ComposeError::invalid(path, format!("invalid port {text:?}"));
    let (a, b) = match text.split_once('-') {
        Some((a, b)) => (a, b),
        None => (text, text),
    };
    let a: u16 = a.parse().map_err(|_| bad())?;
    let b: u16 = b.parse().map_err(|_| bad())?;
    if a == 0 || b < a {
        return Err(bad());
    }
    Ok((a, b))
}

fn parse_port(service: &str, node: &Node<'_>) -> Result<Vec<Port>, ComposeError> {
    let (published, target, protocol) = if let Ok(text) = node.scalar_string() {
        let (spec, proto) = match text.split_once('/') {
            Some((s, p)) => (s.to_owned(), parse_protocol(&node.path, p)?),
            None => (text.clone(), Protocol::Tcp),
        };
        // [host_ip:]published:target or target alone; IPv6 host addresses come bracketed.
        let (published, target) = match spec.rsplit_once(':') {
            Some((left, target)) => {
                let published = match left.rsplit_once(':') {
                    Some((_ip, p)) => p,
                    None => left,
                };
                let published = if published.is_empty() {
                    target
                } else {
                    published
                };
                (
                    parse_port_range(&node.path, published)?,
                    parse_port_range(&node.path, target)?,
                )
            }
            None => {
                let t = parse_port_range(&node.path, &spec)?;
                (t, t)
            }
        };
        (published, target, proto)
    } else {
        let m = node.mapping()?;
        m.check_keys(&[
            "target",
            "published",
            "protocol",
            "host_ip",
            "mode",
            "name",
            "app_protocol",
        ])?;
        let target_node = m
            .get("target")
            .ok_or_else(|| ComposeError::invalid(&node.path, "missing target"))?;
        let target = parse_port_range(&target_node.path, &target_node.scalar_string()?)?;
        let published = match m.get("published") {
            Some(p) => parse_port_range(&p.path, &p.scalar_string()?)?,
            None => target,
        };
        let protocol = match m.get("protocol") {
            Some(p) => parse_protocol(&p.path, &p.string()?)?,
            None => Protocol::Tcp,
        };
        if let Some(mode) = m.get("mode")
            && mode.string()? != "host"
            && mode.string()? != "ingress"
        {
            return Err(ComposeError::invalid(&mode.path, "mode is host or ingress"));
        }
        (published, target, protocol)
    };
    if published != target {
        return Err(ComposeError::RefusePortRemap {
            service: service.to_owned(),
            published: published.0,
            target: target.0,
        });
    }
    Ok((target.0..=target.1)
        .map(|port| Port { port, protocol })
        .collect())
}

fn check_port_clashes(services: &[Service]) -> Result<(), ComposeError> {
    let mut owners: BTreeMap<(u16, Protocol), &str> = BTreeMap::new();
    for service in services {
        let mut own = BTreeSet::new();
        for port in &service.ports {
            if !own.insert((port.port, port.protocol)) {
                continue;
            }
            if let Some(first) = owners.insert((port.port, port.protocol), &service.name) {
                return Err(ComposeError::RefusePortClash {
                    port: port.port,
                    protocol: port.protocol,
                    first: first.to_owned(),
                    second: service.name.clone(),
                });
            }
        }
    }
    Ok(())
}

fn absolute_path(node: &Node<'_>) -> Result<String, ComposeError> {
    let text = node.string()?;
    if !text.starts_with('/') || text.split('/').any(|c| c == "..") || text.contains('\0') {
        return Err(ComposeError::invalid(
            &node.path,
            "must be an absolute path without `..`",
        ));
    }
    Ok(text)
}

fn parse_config_mount(
    node: &Node<'_>,
    configs: &BTreeMap<String, String>,
) -> Result<ConfigMount, ComposeError> {
    let (source, target, mode, uid, gid) = if let Ok(source) = node.string() {
        let target = format!("/{source}");
        (source, target, 0o444, 0, 0)
    } else {
        let m = node.mapping()?;
        m.check_keys(&["source", "target", "mode", "uid", "gid"])?;
        let source = m
            .get("source")
            .ok_or_else(|| ComposeError::invalid(&node.path, "missing source"))?
            .string()?;
        let target = match m.get("target") {
            Some(t) => absolute_path(&t)?,
            None => format!("/{source}"),
        };
        let mode = match m.get("mode") {
            Some(n) => parse_mode(&n)?,
            None => 0o444,
        };
        let id = |key: &str| -> Result<u32, ComposeError> {
            match m.get(key) {
                Some(n) => {
                    let text = n.scalar_string()?;
                    text.parse::<u32>()
                        .map_err(|_| ComposeError::invalid(&n.path, "numeric id"))
                }
                None => Ok(0),
            }
        };
        (source, target, mode, id("uid")?, id("gid")?)
    };
    if !configs.contains_key(&source) {
        return Err(ComposeError::invalid(
            &node.path,
            format!("config {source:?} is not declared under top-level configs"),
        ));
    }
    Ok(ConfigMount {
        source,
        target,
        mode,
        uid,
        gid,
    })
}

/// File mode. YAML 1.2 reads `0440` as the decimal number 440, while compose files mean octal
/// (Docker's YAML 1.1 parser), so the digits are always read as octal; `"0440"` works too.
fn parse_mode(node: &Node<'_>) -> Result<u32, ComposeError> {
    let text = node.scalar_string()?;
    let digits = text.strip_prefix("0o").unwrap_or(&text);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|&m| m <= 0o7777)
        .ok_or_else(|| ComposeError::invalid(&node.path, "mode is octal, at most 07777"))
}

fn parse_device(node: &Node<'_>) -> Result<DeviceMapping, ComposeError> {
    let text = node.string()?;
    let parts: Vec<&str> = text.split(':').collect();
    let (host, container, permissions) = match parts.as_slice() {
        [h] => (*h, *h, "rwm"),
        [h, c] => (*h, *c, "rwm"),
        [h, c, p] => (*h, *c, *p),
        _ => {
            return Err(ComposeError::invalid(
                &node.path,
                "expected host[:container[:rwm]]",
            ));
        }
    };
    let dev_path = |p: &str| p.starts_with("/dev/") && !p.split('/').any(|c| c == "..");
    if !dev_path(host) || !dev_path(container) {
        return Err(ComposeError::invalid(
            &node.path,
            "device paths must be under /dev",
        ));
    }
    if permissions.is_empty() || !permissions.chars().all(|c| "rwm".contains(c)) {
        return Err(ComposeError::invalid(
            &node.path,
            "permissions are a subset of rwm",
        ));
    }
    Ok(DeviceMapping {
        host: host.to_owned(),
        container: container.to_owned(),
        permissions: permissions.to_owned(),
    })
}

const ULIMITS: &[(&str, &str)] = &[
    ("core", "RLIMIT_CORE"),
    ("cpu", "RLIMIT_CPU"),
    ("data", "RLIMIT_DATA"),
    ("fsize", "RLIMIT_FSIZE"),
    ("locks", "RLIMIT_LOCKS"),
    ("memlock", "RLIMIT_MEMLOCK"),
    ("msgqueue", "RLIMIT_MSGQUEUE"),
    ("nice", "RLIMIT_NICE"),
    ("nofile", "RLIMIT_NOFILE"),
    ("nproc", "RLIMIT_NPROC"),
    ("rss", "RLIMIT_RSS"),
    ("rtprio", "RLIMIT_RTPRIO"),
    ("rttime", "RLIMIT_RTTIME"),
    ("sigpending", "RLIMIT_SIGPENDING"),
    ("stack", "RLIMIT_STACK"),
];

fn parse_ulimits(node: &Node<'_>) -> Result<Vec<Ulimit>, ComposeError> {
    let mut out = Vec::new();
    for (name, value) in node.mapping()?.entries()? {
        let Some((_, oci)) = ULIMITS.iter().find(|(n, _)| *n == name) else {
            return Err(ComposeError::unknown(&node.path, &name));
        };
        let (soft, hard) = if let Ok(m) = value.mapping() {
            m.check_keys(&["soft", "hard"])?;
            let get = |k: &str| -> Result<u64, ComposeError> {
                m.get(k)
                    .ok_or_else(|| ComposeError::invalid(&value.path, format!("missing {k}")))?
                    .unsigned(u64::MAX)
            };
            (get("soft")?, get("hard")?)
        } else {
            let v = value.unsigned(u64::MAX)?;
            (v, v)
        };
        if soft > hard {
            return Err(ComposeError::invalid(
                &value.path,
                "soft limit above hard limit",
            ));
        }
        out.push(Ulimit {
            name: (*oci).to_owned(),
            soft,
            hard,
        });
    }
    Ok(out)
}

/// Parses `512m`, `1g`, `1.5GB`, `1024` (bytes).
fn parse_bytes(path: &str, text: &str) -> Result<u64, ComposeError> {
    let bad = || ComposeError::invalid(path, format!("invalid byte size {text:?}"));
    let lower = text.trim().to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits_end);
    let unit = unit.trim_end_matches('b').trim_end_matches('i');
    let multiplier: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(bad()),
    };
    if let Ok(n) = number.parse::<u64>() {
        return n.checked_mul(multiplier).ok_or_else(bad);
    }
    let f: f64 = number.parse().map_err(|_| bad())?;
    let bytes = f * multiplier as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(bytes as u64)
}

fn parse_cpus(node: &Node<'_>) -> Result<f64, ComposeError> {
    let text = node.scalar_string()?;
    let cpus: f64 = text
        .parse()
        .map_err(|_| ComposeError::invalid(&node.path, "cpus is a number"))?;
    if !cpus.is_finite() || cpus <= 0.0 || cpus > 4096.0 {
        return Err(ComposeError::invalid(&node.path, "cpus out of range"));
    }
    Ok(cpus)
}

fn parse_gpu_devices(node: &Node<'_>) -> Result<Option<GpuRequest>, ComposeError> {
    let mut request = None;
    for item in node.sequence()? {
        let m = item.mapping()?;
        m.check_keys(&["driver", "count", "device_ids", "capabilities", "options"])?;
        let capabilities = match m.get("capabilities") {
            Some(c) => c.string_list()?,
            None => Vec::new(),
        };
        if let Some(d) = m.get("driver")
            && d.string()? != "nvidia"
        {
            return Err(ComposeError::refuse(
                &d.path,
                "only the nvidia device driver is supported",
            ));
        }
        if !capabilities.iter().any(|c| c == "gpu") {
            return Err(ComposeError::refuse(
                &item.path,
                "only device reservations with capability gpu are supported",
            ));
        }
        if m.get("options").is_some_and(|o| !o.is_empty_mapping()) {
            return Err(ComposeError::refuse(
                &item.path,
                "device options are not supported",
            ));
        }
        let req =
            match (m.get("count"), m.get("device_ids")) {
                (Some(_), Some(_)) => {
                    return Err(ComposeError::invalid(
                        &item.path,
                        "count and device_ids are exclusive",
                    ));
                }
                (Some(c), None) => {
                    let text = c.scalar_string()?;
                    if text == "all" {
                        GpuRequest::All
                    } else {
                        GpuRequest::Count(text.parse().map_err(|_| {
                            ComposeError::invalid(&c.path, "count is all or a number")
                        })?)
                    }
                }
                (None, Some(ids)) => GpuRequest::Ids(ids.string_list()?),
                (None, None) => GpuRequest::All,
            };
        if request.replace(req).is_some() {
            return Err(ComposeError::refuse(
                &node.path,
                "one GPU reservation per service",
            ));
        }
    }
    Ok(request)
}

fn parse_resources(m: &value::Mapping<'_>) -> Result<Resources, ComposeError> {
    let mut r = Resources::default();
    if let Some(n) = m.get("mem_limit") {
        r.memory_bytes = Some(parse_bytes(&n.path, &n.scalar_string()?)?);
    }
    if let Some(n) = m.get("cpus") {
        r.cpus = Some(parse_cpus(&n)?);
    }
    if let Some(n) = m.get("pids_limit") {
        r.pids = Some(n.unsigned(u64::MAX)?);
    }
    if let Some(n) = m.get("gpus") {
        r.gpus = Some(match n.scalar_string() {
            Ok(s) if s == "all" => GpuRequest::All,
            Ok(s) => GpuRequest::Count(
                s.parse()
                    .map_err(|_| ComposeError::invalid(&n.path, "gpus is all or a number"))?,
            ),
            Err(_) => parse_gpu_devices(&n)?.unwrap_or(GpuRequest::All),
        });
    }
    if let Some(deploy) = m.get("deploy") {
        let dm = deploy.mapping()?;
        dm.check_keys(&["resources"])?;
        if let Some(res) = dm.get("resources") {
            let rm = res.mapping()?;
            rm.check_keys(&["limits", "reservations"])?;
            if let Some(limits) = rm.get("limits") {
                let lm = limits.mapping()?;
                lm.check_keys(&["cpus", "memory", "pids"])?;
                if let Some(n) = lm.get("cpus") {
                    r.cpus = Some(parse_cpus(&n)?);
                }
                if let Some(n) = lm.get("memory") {
                    r.memory_bytes = Some(parse_bytes(&n.path, &n.scalar_string()?)?);
                }
                if let Some(n) = lm.get("pids") {
                    r.pids = Some(n.unsigned(u64::MAX)?);
                }
            }
            if let Some(res) = rm.get("reservations") {
                let vm = res.mapping()?;
                vm.check_keys(&["devices", "cpus", "memory"])?;
                // cpus/memory reservations are scheduling hints with one node: validated, unused.
                if let Some(n) = vm.get("cpus") {
                    parse_cpus(&n)?;
                }
                if let Some(n) = vm.get("memory") {
                    parse_bytes(&n.path, &n.scalar_string()?)?;
                }
                if let Some(d) = vm.get("devices")
                    && let Some(req) = parse_gpu_devices(&d)?
                    && r.gpus.replace(req).is_some()
                {
                    return Err(ComposeError::refuse(&d.path, "gpus given twice"));
                }
            }
        }
    }
    Ok(r)
}

fn parse_signal(node: &Node<'_>) -> Result<String, ComposeError> {
    let text = node.scalar_string()?;
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else if let Ok(n) = upper.parse::<i32>() {
        SIGNALS
            .iter()
            .find(|(_, num)| *num == n)
            .map(|(name, _)| (*name).to_owned())
            .unwrap_or_default()
    } else {
        format!("SIG{upper}")
    };
    if SIGNALS.iter().any(|(n, _)| *n == name) {
        Ok(name)
    } else {
        Err(ComposeError::invalid(
            &node.path,
            format!("unsupported signal {text:?}"),
        ))
    }
}
