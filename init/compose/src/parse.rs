//! The YAML walk: interpolation, known keys per mapping, refusals, typed values.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_norway::Value;

use crate::digest::ImageRef;
use crate::interpolate::interpolate;
use crate::model::{
    App, ConfigMount, Dependency, DependencyCondition, DeviceMapping, GpuRequest, HealthTest,
    Healthcheck, Link, Network, Port, Protocol, Resources, RestartPolicy, SIGNALS, Service,
    ServiceNetwork, Ulimit, VolumeMount,
};
use crate::order::order_services;
use crate::value::{self, Node};
use crate::{ComposeError, printable};

/// What the caller allows beyond the default subset.
#[derive(Debug, Clone, Default)]
pub struct ComposePolicy {
    /// Allow host bind mounts other than the dstack sockets (off by default).
    pub allow_host_binds: bool,
    /// Allow `privileged: true` (app-compose `allow_privileged`; off by default).
    pub allow_privileged: bool,
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

/// Like [`parse_without_environment`], but returns every refusal it finds rather than the
/// first: each service is parsed on its own and, within a service, each key (`cvm-measure
/// compose check`). The first error of the list is the one [`parse_without_environment`]
/// returns.
pub fn check_without_environment(
    runner: Option<&str>,
    yaml: &str,
) -> Result<App, Vec<ComposeError>> {
    check(runner, yaml, &BTreeMap::new(), &ComposePolicy::default())
}

/// [`check_without_environment`] with variables for interpolation (`${VAR:?}` needs one) and
/// the app's policy (app-compose `allow_privileged`). Images must still be pinned in the
/// compose text: one chosen by interpolation is refused.
pub fn check(
    runner: Option<&str>,
    yaml: &str,
    env: &BTreeMap<String, String>,
    policy: &ComposePolicy,
) -> Result<App, Vec<ComposeError>> {
    parse_collect(runner, yaml, env, policy, Images::FromComposeText)
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
    parse_collect(runner, yaml, env, policy, images).map_err(|mut errors| {
        // `parse_collect` never returns an empty list; the fallback keeps this total.
        if errors.is_empty() {
            ComposeError::invalid("services", "refused")
        } else {
            errors.swap_remove(0)
        }
    })
}

/// `r`'s value, or `T::default()` after recording its error.
fn keep<T: Default>(errors: &mut Vec<ComposeError>, r: Result<T, ComposeError>) -> T {
    r.unwrap_or_else(|e| {
        errors.push(e);
        T::default()
    })
}

fn parse_collect(
    runner: Option<&str>,
    yaml: &str,
    env: &BTreeMap<String, String>,
    policy: &ComposePolicy,
    images: Images,
) -> Result<App, Vec<ComposeError>> {
    match runner {
        None | Some("docker-compose") | Some("nerdctl-compose") => {}
        Some(other) => {
            return Err(vec![ComposeError::RefuseRunner {
                runner: other.to_owned(),
            }]);
        }
    }
    let mut root: Value =
        serde_norway::from_str(yaml).map_err(|e| vec![ComposeError::ParseYaml(e)])?;
    root.apply_merge()
        .map_err(|e| vec![ComposeError::ParseYaml(e)])?;
    let mut errors = Vec::new();
    if images == Images::FromComposeText {
        errors.extend(refuse_image_interpolation(&root));
    }
    interpolate_tree(&mut root, env, "").map_err(|e| vec![e])?;
    let root = Node::new("", &root);
    let top = root.mapping().map_err(|e| vec![e])?;
    errors.extend(top.unknown_keys(&[
        "services", "volumes", "configs", "name", "version", "networks",
    ]));
    let networks = match top.get("networks") {
        Some(v) => keep(&mut errors, parse_top_networks(&v)),
        None => BTreeMap::new(),
    };
    let volumes = match top.get("volumes") {
        Some(v) => {
            let result = parse_top_volumes(&v, &mut errors);
            keep(&mut errors, result)
        }
        None => BTreeSet::new(),
    };
    let configs = match top.get("configs") {
        Some(v) => keep(&mut errors, parse_top_configs(&v)),
        None => BTreeMap::new(),
    };
    let services_node = top.get("services").ok_or_else(|| {
        errors.push(ComposeError::invalid("services", "missing"));
        std::mem::take(&mut errors)
    })?;
    let services_map = services_node.mapping().map_err(|e| {
        errors.push(e);
        std::mem::take(&mut errors)
    })?;
    let entries = services_map.entries().map_err(|e| {
        errors.push(e);
        std::mem::take(&mut errors)
    })?;
    let declared = Declared {
        volumes: &volumes,
        configs: &configs,
        networks: &networks,
    };
    let mut services = Vec::new();
    let mut names = 0usize;
    for (name, node) in entries {
        if name.starts_with("x-") {
            continue;
        }
        names += 1;
        if let Err(e) = check_service_name(&node.path, &name) {
            errors.push(e);
            continue;
        }
        let before = errors.len();
        let image_refused = errors.iter().any(|e| matches!(e, ComposeError::RefuseImageInterpolation { service } if *service == printable(&name)));
        let service = parse_service(
            &name,
            &node,
            env,
            policy,
            &declared,
            image_refused,
            &mut errors,
        );
        if errors.len() == before
            && let Some(service) = service
        {
            services.push(service);
        }
    }
    if names == 0 {
        errors.push(ComposeError::invalid("services", "no services"));
    }
    errors.extend(check_links(&services));
    if !errors.is_empty() {
        return Err(errors);
    }
    check_port_clashes(&services).map_err(|e| vec![e])?;
    let services = order_services(services).map_err(|e| vec![e])?;
    Ok(App {
        services,
        volumes,
        configs,
        networks,
    })
}

/// The top-level names a service may refer to.
struct Declared<'a> {
    volumes: &'a BTreeSet<String>,
    configs: &'a BTreeMap<String, String>,
    networks: &'a BTreeMap<String, Network>,
}

/// `links` must name services of the app.
fn check_links(services: &[Service]) -> Vec<ComposeError> {
    let mut errors = Vec::new();
    for service in services {
        for link in &service.links {
            if !services.iter().any(|s| s.name == link.service) {
                errors.push(ComposeError::invalid(
                    &format!("services.{}.links", service.name),
                    format!("unknown service {:?}", link.service),
                ));
            }
        }
    }
    errors
}

fn parse_top_networks(node: &Node<'_>) -> Result<BTreeMap<String, Network>, ComposeError> {
    let mut out = BTreeMap::new();
    if node.is_null() {
        return Ok(out);
    }
    for (name, net) in node.mapping()?.entries()? {
        if name.starts_with("x-") {
            continue;
        }
        check_volume_name(&net.path, &name)?;
        let mut network = Network::default();
        if !net.is_null() {
            let m = net.mapping()?;
            m.check_keys(&[
                "driver",
                "driver_opts",
                "ipam",
                "external",
                "internal",
                "attachable",
                "labels",
                "name",
                "enable_ipv6",
            ])?;
            if let Some(d) = m.get("driver") {
                let driver = d.string()?;
                if !matches!(driver.as_str(), "bridge" | "host" | "default") {
                    return Err(ComposeError::refuse(
                        &d.path,
                        "only bridge networks exist in a CVM",
                    ));
                }
                network.driver = Some(driver);
            }
            if let Some(e) = m.get("external")
                && e.boolean()?
            {
                return Err(ComposeError::refuse(
                    &e.path,
                    "external networks do not exist in a CVM: declare the network in the file",
                ));
            }
            if let Some(i) = m.get("internal") {
                network.internal = i.boolean()?;
            }
            for key in ["attachable", "enable_ipv6"] {
                if let Some(b) = m.get(key) {
                    b.boolean()?;
                }
            }
            if let Some(l) = m.get("labels") {
                parse_key_values(&l)?;
            }
            if let Some(ipam) = m.get("ipam") {
                let im = ipam.mapping()?;
                im.check_keys(&["driver", "config", "options"])?;
                if let Some(config) = im.get("config") {
                    for item in config.sequence()? {
                        let cm = item.mapping()?;
                        cm.check_keys(&["subnet", "ip_range", "gateway", "aux_addresses"])?;
                        if let Some(subnet) = cm.get("subnet") {
                            network.subnets.push(subnet.string()?);
                        }
                    }
                }
            }
        }
        out.insert(name, network);
    }
    Ok(out)
}

/// Refuses a service `image` with a `$` in it: interpolation (or a `$$` escape, which no valid
/// reference contains) would decide the reference.
fn refuse_image_interpolation(root: &Value) -> Vec<ComposeError> {
    let mut errors = Vec::new();
    let Some(Value::Mapping(services)) = root.get("services") else {
        return errors;
    };
    for (name, service) in services {
        let name = name.as_str().unwrap_or("?");
        if name.starts_with("x-") {
            continue;
        }
        if let Some(Value::String(image)) = service.get("image")
            && image.contains('$')
        {
            errors.push(ComposeError::RefuseImageInterpolation {
                service: printable(name),
            });
        }
    }
    errors
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

/// Top-level volumes; a refused one is still declared (its error goes to `errors`), so the
/// services that mount it are not refused a second time.
fn parse_top_volumes(
    node: &Node<'_>,
    errors: &mut Vec<ComposeError>,
) -> Result<BTreeSet<String>, ComposeError> {
    let mut out = BTreeSet::new();
    if node.is_null() {
        return Ok(out);
    }
    for (name, vol) in node.mapping()?.entries()? {
        if name.starts_with("x-") {
            continue;
        }
        check_volume_name(&vol.path, &name)?;
        if let Err(e) = check_top_volume(&name, &vol) {
            errors.push(e);
        }
        out.insert(name);
    }
    Ok(out)
}

fn check_top_volume(name: &str, vol: &Node<'_>) -> Result<(), ComposeError> {
    if vol.is_null() {
        return Ok(());
    }
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
            "volume driver_opts are not supported (a tmpfs volume shared between containers is not yet): use the service's `tmpfs:` key, or a plain named volume on the encrypted disk",
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
    Ok(())
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
    "networks",
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
    "runtime",
    "stop_signal",
    "stop_grace_period",
    "build",
    "labels",
    "logging",
    "hostname",
    "domainname",
    "shm_size",
    "init",
    "links",
    "pull_policy",
    "cap_add",
    "cap_drop",
    "tmpfs",
    "sysctls",
    "extra_hosts",
    "read_only",
    "security_opt",
    "pid",
    "userns_mode",
];

/// Parses one service; every error goes to `errors` (the result is meaningless when it grew).
#[allow(clippy::too_many_lines)]
fn parse_service(
    name: &str,
    node: &Node<'_>,
    env: &BTreeMap<String, String>,
    policy: &ComposePolicy,
    declared: &Declared<'_>,
    image_refused: bool,
    errors: &mut Vec<ComposeError>,
) -> Option<Service> {
    let m = keep(errors, node.mapping().map(Some))?;
    errors.extend(m.unknown_keys(SERVICE_KEYS));
    if let Some(n) = m.get("build") {
        errors.push(ComposeError::refuse(
            &n.path,
            "build: is refused (the CVM builds nothing): build and push the image, then pin it by digest in `image`",
        ));
    }
    if let Some(n) = m.get("env_file") {
        errors.push(ComposeError::refuse(
            &n.path,
            "env_file is refused: the files are not in the VM and the host file system is not trusted; use `environment` with the encrypted env",
        ));
    }
    if let Some(n) = m.get("platform") {
        match n.string() {
            Ok(p) if p == "linux/amd64" => {}
            Ok(_) => errors.push(ComposeError::refuse(
                &n.path,
                "only linux/amd64 images run here",
            )),
            Err(e) => errors.push(e),
        }
    }
    if let Some(n) = m.get("userns_mode") {
        // Docker's per-service opt-out of a daemon-wide remap; no container here gets a user
        // namespace, so `host` is what every service already has.
        match n.string() {
            Ok(p) if p == "host" => {}
            Ok(_) => errors.push(ComposeError::refuse(
                &n.path,
                "only userns_mode: host is supported (containers run without a user namespace remap)",
            )),
            Err(e) => errors.push(e),
        }
    }
    let mut network_host = false;
    if let Some(n) = m.get("network_mode") {
        match n.string() {
            Ok(p) if p == "host" => network_host = true,
            Ok(p) if p == "bridge" || p == "default" => {}
            Ok(_) => errors.push(ComposeError::refuse(
                &n.path,
                "only network_mode host or bridge is supported (service:/container: modes share another container's namespace, which the init does not do): drop it, or name a shared network",
            )),
            Err(e) => errors.push(e),
        }
    }
    let image = match m.get("image") {
        None if m.get("build").is_some() => None,
        None => {
            errors.push(ComposeError::invalid(&node.path, "missing image"));
            None
        }
        Some(_) if image_refused => None,
        Some(n) => keep(
            errors,
            n.string().and_then(|text| {
                ImageRef::parse(&text)
                    .map(Some)
                    .map_err(|source| ComposeError::ParseImage {
                        service: name.to_owned(),
                        source,
                    })
            }),
        ),
    };
    let opt_string = |errors: &mut Vec<ComposeError>, key: &str| {
        keep(errors, m.get(key).map(|n| n.string()).transpose())
    };
    let flag = |errors: &mut Vec<ComposeError>, key: &str| {
        keep(errors, m.get(key).map(|n| n.boolean()).transpose()).unwrap_or(false)
    };
    let container_name = opt_string(errors, "container_name");
    let command = keep(errors, m.get("command").map(|n| n.command()).transpose());
    let entrypoint = keep(errors, m.get("entrypoint").map(|n| n.command()).transpose());
    let environment = match m.get("environment") {
        Some(n) => keep(errors, parse_environment(&n, env)),
        None => BTreeMap::new(),
    };
    let mut mounts = Vec::new();
    if let Some(n) = m.get("volumes") {
        for item in keep(errors, n.sequence()) {
            if let Some(mount) = keep(
                errors,
                parse_volume(name, &item, policy, declared.volumes).map(Some),
            ) {
                mounts.push(mount);
            }
        }
    }
    if let Some(n) = m.get("tmpfs") {
        mounts.extend(keep(errors, parse_tmpfs_key(&n)));
    }
    let restart = keep(
        errors,
        m.get("restart").map(|n| parse_restart(&n)).transpose(),
    )
    .unwrap_or(RestartPolicy::No);
    let depends_on = match m.get("depends_on") {
        Some(n) => keep(errors, parse_depends_on(&n)),
        None => Vec::new(),
    };
    let healthcheck = match m.get("healthcheck") {
        Some(n) => keep(errors, parse_healthcheck(&n)),
        None => None,
    };
    let healthcheck_disabled = m.get("healthcheck").is_some() && healthcheck.is_none();
    let mut ports = Vec::new();
    if let Some(n) = m.get("ports") {
        for item in keep(errors, n.sequence()) {
            ports.extend(keep(errors, parse_port(&item)));
        }
    }
    if let Some(n) = m.get("expose") {
        // Documentation only under host networking; still validate the numbers.
        for item in keep(errors, n.sequence()) {
            let port = item.scalar_string().and_then(|text| {
                let spec = text.split('/').next().unwrap_or_default().to_owned();
                parse_port_range(&item.path, &spec)
            });
            keep(errors, port.map(Some));
        }
    }
    let mut config_mounts = Vec::new();
    if let Some(n) = m.get("configs") {
        for item in keep(errors, n.sequence()) {
            if let Some(c) = keep(
                errors,
                parse_config_mount(&item, declared.configs).map(Some),
            ) {
                config_mounts.push(c);
            }
        }
    }
    let user = keep(errors, m.get("user").map(|n| n.scalar_string()).transpose());
    let working_dir = keep(
        errors,
        m.get("working_dir").map(|n| absolute_path(&n)).transpose(),
    );
    let privileged = flag(errors, "privileged");
    if privileged
        && !policy.allow_privileged
        && let Some(n) = m.get("privileged")
    {
        errors.push(ComposeError::refuse(
            &n.path,
            "privileged: true gives the container every capability and device, the decrypted data disk and the TD's attestation interface included: it needs the explicit opt-in `\"allow_privileged\": true` in app-compose.json (measured through the compose-hash)",
        ));
    }
    let mut devices = Vec::new();
    if let Some(n) = m.get("devices") {
        for item in keep(errors, n.sequence()) {
            if let Some(d) = keep(errors, parse_device(&item).map(Some)) {
                devices.push(d);
            }
        }
    }
    let ulimits = match m.get("ulimits") {
        Some(n) => keep(errors, parse_ulimits(&n)),
        None => Vec::new(),
    };
    let mut resources = keep(errors, parse_resources(&m));
    if let Some(request) = keep(errors, gpu_from_runtime(&m, &environment))
        && resources.gpus.replace(request).is_some()
    {
        errors.push(ComposeError::refuse(
            &format!("services.{name}"),
            "GPUs requested twice: use one of deploy.resources.reservations.devices, gpus, runtime: nvidia / NVIDIA_VISIBLE_DEVICES",
        ));
    }
    let stop_signal = keep(
        errors,
        m.get("stop_signal").map(|n| parse_signal(&n)).transpose(),
    )
    .unwrap_or_else(|| "SIGTERM".to_owned());
    let stop_grace_period = keep(
        errors,
        m.get("stop_grace_period").map(|n| n.duration()).transpose(),
    )
    .unwrap_or(Duration::from_secs(10));
    let labels = match m.get("labels") {
        Some(n) => keep(errors, parse_key_values(&n)),
        None => BTreeMap::new(),
    };
    if let Some(n) = m.get("logging") {
        // Accepted: the init handles the output of every container itself.
        keep(errors, parse_logging(&n));
    }
    let hostname = keep(errors, m.get("hostname").map(|n| host_name(&n)).transpose());
    let domainname = keep(
        errors,
        m.get("domainname").map(|n| host_name(&n)).transpose(),
    );
    let shm_size = keep(
        errors,
        m.get("shm_size")
            .map(|n| n.scalar_string().and_then(|t| parse_bytes(&n.path, &t)))
            .transpose(),
    );
    let init = flag(errors, "init");
    let links = match m.get("links") {
        Some(n) => keep(errors, parse_links(&n)),
        None => Vec::new(),
    };
    if let Some(n) = m.get("pull_policy") {
        // No effect: images are pulled by digest, once per boot.
        keep(errors, parse_pull_policy(&n));
    }
    let cap_add = match m.get("cap_add") {
        Some(n) => keep(errors, parse_capabilities(&n)),
        None => Vec::new(),
    };
    let cap_drop = match m.get("cap_drop") {
        Some(n) => keep(errors, parse_capabilities(&n)),
        None => Vec::new(),
    };
    let sysctls = match m.get("sysctls") {
        Some(n) => keep(errors, parse_sysctls(&n)),
        None => BTreeMap::new(),
    };
    let extra_hosts = match m.get("extra_hosts") {
        Some(n) => keep(errors, parse_extra_hosts(&n)),
        None => Vec::new(),
    };
    let read_only = flag(errors, "read_only");
    let (no_new_privileges, seccomp_unconfined) = match m.get("security_opt") {
        Some(n) => keep(errors, parse_security_opt(&n)),
        None => (false, false),
    };
    let pid_host = match m.get("pid") {
        Some(n) => match n.string() {
            Ok(p) if p == "host" => true,
            Ok(_) => {
                errors.push(ComposeError::refuse(
                    &n.path,
                    "only pid: host is supported (another container's pid namespace is not)",
                ));
                false
            }
            Err(e) => {
                errors.push(e);
                false
            }
        },
        None => false,
    };
    let networks = match m.get("networks") {
        Some(n) => keep(errors, parse_service_networks(&n, declared.networks)),
        None => Vec::new(),
    };
    let network_host = network_host
        || networks.iter().any(|n| {
            declared
                .networks
                .get(&n.name)
                .is_some_and(|d| d.driver.as_deref() == Some("host"))
        });
    Some(Service {
        name: name.to_owned(),
        image: image?,
        container_name,
        command,
        entrypoint,
        environment,
        volumes: mounts,
        restart,
        depends_on,
        healthcheck,
        healthcheck_disabled,
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
        labels,
        hostname,
        domainname,
        shm_size,
        init,
        links,
        cap_add,
        cap_drop,
        sysctls,
        extra_hosts,
        read_only,
        no_new_privileges,
        seccomp_unconfined,
        pid_host,
        networks,
        network_host,
    })
}

/// `labels`-style values: a list of `key[=value]` or a mapping of scalars.
fn parse_key_values(node: &Node<'_>) -> Result<BTreeMap<String, String>, ComposeError> {
    let mut out = BTreeMap::new();
    if node.is_null() {
        return Ok(out);
    }
    if let Ok(items) = node.sequence() {
        for item in items {
            let text = item.string()?;
            let (k, v) = text.split_once('=').unwrap_or((&text, ""));
            if k.is_empty() {
                return Err(ComposeError::invalid(&item.path, "empty key"));
            }
            out.insert(k.to_owned(), v.to_owned());
        }
        return Ok(out);
    }
    for (k, v) in node.mapping()?.entries()? {
        let value = if v.is_null() {
            String::new()
        } else {
            v.scalar_string()?
        };
        out.insert(k, value);
    }
    Ok(out)
}

fn parse_logging(node: &Node<'_>) -> Result<(), ComposeError> {
    let m = node.mapping()?;
    m.check_keys(&["driver", "options"])?;
    if let Some(d) = m.get("driver") {
        d.string()?;
    }
    if let Some(o) = m.get("options")
        && !o.is_null()
    {
        for (_, v) in o.mapping()?.entries()? {
            v.scalar_string()?;
        }
    }
    Ok(())
}

/// A host or domain name: dot-separated labels of `[A-Za-z0-9-]`, at most 253 bytes.
fn host_name(node: &Node<'_>) -> Result<String, ComposeError> {
    let text = node.string()?;
    let ok = !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
        });
    if ok {
        Ok(text)
    } else {
        Err(ComposeError::invalid(
            &node.path,
            "a host name is dot-separated labels of [A-Za-z0-9-]",
        ))
    }
}

fn parse_links(node: &Node<'_>) -> Result<Vec<Link>, ComposeError> {
    let mut out = Vec::new();
    for item in node.sequence()? {
        let text = item.string()?;
        let (service, alias) = text.split_once(':').unwrap_or((&text, &text));
        check_service_name(&item.path, service)?;
        check_service_name(&item.path, alias)?;
        out.push(Link {
            service: service.to_owned(),
            alias: alias.to_owned(),
        });
    }
    Ok(out)
}

fn parse_pull_policy(node: &Node<'_>) -> Result<(), ComposeError> {
    let text = node.string()?;
    match text.as_str() {
        "always" | "never" | "missing" | "if_not_present" | "daily" | "weekly" => Ok(()),
        other if other.starts_with("every_") => Ok(()),
        "build" => Err(ComposeError::refuse(
            &node.path,
            "pull_policy: build is refused (the CVM builds nothing): build and push the image, then pin it by digest",
        )),
        other => Err(ComposeError::invalid(
            &node.path,
            format!("unknown pull_policy {other:?}"),
        )),
    }
}

fn parse_capabilities(node: &Node<'_>) -> Result<Vec<String>, ComposeError> {
    let mut out = Vec::new();
    for item in node.sequence()? {
        let text = item.string()?.to_ascii_uppercase();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
            return Err(ComposeError::invalid(&item.path, "not a capability name"));
        }
        let name = if text == "ALL" || text.starts_with("CAP_") {
            text
        } else {
            format!("CAP_{text}")
        };
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// Prefixes (ending in `.`) and names of the sysctls a container may set: the ones the kernel
/// keeps per network or IPC namespace.
pub const NAMESPACED_SYSCTLS: &[&str] = &[
    "net.",
    "kernel.shm",
    "kernel.msg",
    "kernel.sem",
    "fs.mqueue.",
];

fn parse_sysctls(node: &Node<'_>) -> Result<BTreeMap<String, String>, ComposeError> {
    let out = parse_key_values(node)?;
    for (key, value) in &out {
        let allowed = NAMESPACED_SYSCTLS.iter().any(|prefix| {
            if *prefix == "kernel.sem" {
                key == prefix
            } else {
                key.starts_with(prefix)
            }
        });
        if !allowed {
            return Err(ComposeError::refuse(
                &format!("{}.{}", node.path, key),
                "only namespaced sysctls (net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*) may be set: others would change the whole CVM",
            ));
        }
        if key.contains('/') || key.contains("..") || value.contains('\n') {
            return Err(ComposeError::invalid(
                &format!("{}.{}", node.path, key),
                "malformed sysctl",
            ));
        }
    }
    Ok(out)
}

fn parse_ip(path: &str, text: &str) -> Result<String, ComposeError> {
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse::<std::net::IpAddr>()
        .map(|ip| ip.to_string())
        .map_err(|_| ComposeError::invalid(path, format!("{text:?} is not an IP address")))
}

fn parse_extra_hosts(node: &Node<'_>) -> Result<Vec<(String, String)>, ComposeError> {
    let mut pairs = Vec::new();
    if let Ok(items) = node.sequence() {
        for item in items {
            let text = item.string()?;
            // `name=ip` or `name:ip` (the address may itself hold colons: IPv6).
            let split = text.split_once('=').or_else(|| text.split_once(':'));
            let Some((name, ip)) = split else {
                return Err(ComposeError::invalid(&item.path, "expected name:ip"));
            };
            pairs.push((item.path.clone(), name.to_owned(), ip.to_owned()));
        }
    } else {
        for (name, v) in node.mapping()?.entries()? {
            pairs.push((v.path.clone(), name, v.scalar_string()?));
        }
    }
    let mut out = Vec::new();
    for (path, name, ip) in pairs {
        if ip == "host-gateway" {
            return Err(ComposeError::refuse(
                &path,
                "host-gateway does not exist: services share the CVM's network, use 127.0.0.1",
            ));
        }
        let ip = parse_ip(&path, &ip)?;
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !ok {
            return Err(ComposeError::invalid(&path, "invalid host name"));
        }
        out.push((name, ip));
    }
    Ok(out)
}

/// `security_opt`: (`no-new-privileges`, `seccomp=unconfined`). Docker's `key=value` and
/// older `key:value` forms are both accepted.
fn parse_security_opt(node: &Node<'_>) -> Result<(bool, bool), ComposeError> {
    let (mut no_new_privileges, mut seccomp_unconfined) = (false, false);
    for item in node.sequence()? {
        let text = item.string()?;
        let (key, value) = text
            .split_once(['=', ':'])
            .map_or((text.as_str(), None), |(k, v)| (k, Some(v)));
        match (key, value) {
            ("no-new-privileges", None | Some("true")) => no_new_privileges = true,
            ("no-new-privileges", Some("false")) => no_new_privileges = false,
            ("seccomp", Some("unconfined")) => seccomp_unconfined = true,
            ("seccomp", _) => {
                return Err(ComposeError::refuse(
                    &item.path,
                    "only seccomp=unconfined is supported: every other container gets Docker's default profile, and a profile file cannot be read from inside the VM",
                ));
            }
            _ => {
                return Err(ComposeError::refuse(
                    &item.path,
                    "only security_opt no-new-privileges and seccomp=unconfined are supported (apparmor and label profiles are not)",
                ));
            }
        }
    }
    Ok((no_new_privileges, seccomp_unconfined))
}

fn parse_service_networks(
    node: &Node<'_>,
    declared: &BTreeMap<String, Network>,
) -> Result<Vec<ServiceNetwork>, ComposeError> {
    let check = |path: &str, name: &str| {
        if name == "default" || declared.contains_key(name) {
            Ok(())
        } else {
            Err(ComposeError::invalid(
                path,
                format!("network {name:?} is not declared under top-level networks"),
            ))
        }
    };
    let mut out = Vec::new();
    if let Ok(items) = node.sequence() {
        for item in items {
            let name = item.string()?;
            check(&item.path, &name)?;
            out.push(ServiceNetwork {
                name,
                aliases: Vec::new(),
                ipv4_address: None,
                ipv6_address: None,
            });
        }
        return Ok(out);
    }
    for (name, spec) in node.mapping()?.entries()? {
        check(&spec.path, &name)?;
        let mut network = ServiceNetwork {
            name,
            aliases: Vec::new(),
            ipv4_address: None,
            ipv6_address: None,
        };
        if !spec.is_null() {
            let m = spec.mapping()?;
            m.check_keys(&[
                "aliases",
                "ipv4_address",
                "ipv6_address",
                "priority",
                "link_local_ips",
                "mac_address",
                "driver_opts",
                "gw_priority",
            ])?;
            if let Some(a) = m.get("aliases") {
                for item in a.sequence()? {
                    let alias = host_name(&item)?;
                    network.aliases.push(alias);
                }
            }
            if let Some(ip) = m.get("ipv4_address") {
                network.ipv4_address = Some(parse_ip(&ip.path, &ip.string()?)?);
            }
            if let Some(ip) = m.get("ipv6_address") {
                network.ipv6_address = Some(parse_ip(&ip.path, &ip.string()?)?);
            }
            for key in ["link_local_ips", "mac_address", "driver_opts"] {
                if let Some(n) = m.get(key)
                    && !n.is_empty_mapping()
                {
                    return Err(ComposeError::refuse(
                        &n.path,
                        "link-local addresses, MAC addresses and per-network driver options are not supported: drop them",
                    ));
                }
            }
        }
        out.push(network);
    }
    Ok(out)
}

/// The `tmpfs` key: a path or a list of `path[:options]`.
fn parse_tmpfs_key(node: &Node<'_>) -> Result<Vec<VolumeMount>, ComposeError> {
    let items = match node.sequence() {
        Ok(items) => items,
        Err(_) => vec![node.clone()],
    };
    let mut out = Vec::new();
    for item in items {
        let text = item.string()?;
        let (target, options) = match text.split_once(':') {
            Some((t, o)) => (t, parse_tmpfs_options(&item.path, o)?),
            None => (text.as_str(), Vec::new()),
        };
        if !target.starts_with('/') || target.split('/').any(|c| c == "..") {
            return Err(ComposeError::invalid(
                &item.path,
                "tmpfs target must be an absolute path without `..`",
            ));
        }
        out.push(VolumeMount::Tmpfs {
            target: target.to_owned(),
            options,
        });
    }
    Ok(out)
}

/// Validates comma-separated tmpfs options (`size=64m`, `mode=1777`, `uid=`, `gid=`,
/// `nr_inodes=`, `noexec`/`exec`, `nosuid`/`suid`, `nodev`/`dev`, `ro`/`rw`); sizes become
/// bytes.
fn parse_tmpfs_options(path: &str, text: &str) -> Result<Vec<String>, ComposeError> {
    let mut out = Vec::new();
    for opt in text.split(',').filter(|o| !o.is_empty()) {
        let normalized = match opt.split_once('=') {
            Some(("size", v)) => format!("size={}", parse_bytes(path, v)?),
            Some(("mode", v)) => {
                let mode = u32::from_str_radix(v, 8)
                    .ok()
                    .filter(|&m| m <= 0o7777)
                    .ok_or_else(|| ComposeError::invalid(path, "tmpfs mode is octal"))?;
                format!("mode={mode:o}")
            }
            Some((key @ ("uid" | "gid" | "nr_inodes"), v)) => {
                let n: u64 = v
                    .parse()
                    .map_err(|_| ComposeError::invalid(path, format!("tmpfs {key} is a number")))?;
                format!("{key}={n}")
            }
            None if matches!(
                opt,
                "noexec" | "exec" | "nosuid" | "suid" | "nodev" | "dev" | "ro" | "rw"
            ) =>
            {
                opt.to_owned()
            }
            _ => {
                return Err(ComposeError::invalid(
                    path,
                    format!("unsupported tmpfs option {opt:?}"),
                ));
            }
        };
        out.push(normalized);
    }
    Ok(out)
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
    let mut tmpfs_options = Vec::new();
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
        for sub in ["bind", "volume"] {
            if let Some(n) = m.get(sub) {
                let sm = n.mapping()?;
                // Accept the harmless defaults only.
                sm.check_keys(&["create_host_path", "nocopy", "propagation", "subpath"])?;
                if let Some(p) = sm.get("subpath") {
                    return Err(ComposeError::refuse(
                        &p.path,
                        "volume subpaths are not supported",
                    ));
                }
            }
        }
        if let Some(n) = m.get("tmpfs") {
            let sm = n.mapping()?;
            sm.check_keys(&["size", "mode"])?;
            if let Some(size) = sm.get("size") {
                let bytes = parse_bytes(&size.path, &size.scalar_string()?)?;
                tmpfs_options.push(format!("size={bytes}"));
            }
            if let Some(mode) = sm.get("mode") {
                tmpfs_options.push(format!("mode={:o}", parse_mode(&mode)?));
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
            if matches!(
                source.trim_end_matches('/'),
                "/var/run/docker.sock" | "/run/docker.sock"
            ) {
                return Err(ComposeError::RefuseDockerSocket {
                    service: service.to_owned(),
                    source_path: source,
                });
            }
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
        ("tmpfs", None) => {
            if read_only {
                tmpfs_options.push("ro".to_owned());
            }
            Ok(VolumeMount::Tmpfs {
                target,
                options: tmpfs_options,
            })
        }
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

fn parse_port(node: &Node<'_>) -> Result<Vec<Port>, ComposeError> {
    let (published, target, protocol, host_ip) = if let Ok(text) = node.scalar_string() {
        let (spec, proto) = match text.split_once('/') {
            Some((s, p)) => (s.to_owned(), parse_protocol(&node.path, p)?),
            None => (text.clone(), Protocol::Tcp),
        };
        // [host_ip:]published:target or target alone; IPv6 host addresses come bracketed.
        match spec.rsplit_once(':') {
            Some((left, target)) => {
                let (ip, published) = match left.rsplit_once(':') {
                    Some((ip, p)) => (Some(parse_ip(&node.path, ip)?), p),
                    None => (None, left),
                };
                let target = parse_port_range(&node.path, target)?;
                let published = if published.is_empty() {
                    target
                } else {
                    parse_port_range(&node.path, published)?
                };
                (published, target, proto, ip)
            }
            None => {
                let t = parse_port_range(&node.path, &spec)?;
                (t, t, proto, None)
            }
        }
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
        let host_ip = match m.get("host_ip") {
            Some(ip) => Some(parse_ip(&ip.path, &ip.string()?)?),
            None => None,
        };
        if let Some(mode) = m.get("mode")
            && mode.string()? != "host"
            && mode.string()? != "ingress"
        {
            return Err(ComposeError::invalid(&mode.path, "mode is host or ingress"));
        }
        for key in ["name", "app_protocol"] {
            if let Some(n) = m.get(key) {
                n.string()?;
            }
        }
        (published, target, protocol, host_ip)
    };
    let (count, published_count) = (target.1 - target.0, published.1 - published.0);
    if count != published_count {
        return Err(ComposeError::invalid(
            &node.path,
            "the published and container port ranges differ in length",
        ));
    }
    Ok((0..=count)
        .map(|i| Port {
            port: target.0 + i,
            published: published.0 + i,
            host_ip: host_ip.clone(),
            protocol,
        })
        .collect())
}

fn check_port_clashes(services: &[Service]) -> Result<(), ComposeError> {
    let mut owners: BTreeMap<(u16, Protocol), &str> = BTreeMap::new();
    for service in services {
        let mut own = BTreeSet::new();
        for port in &service.ports {
            if !own.insert((port.published, port.protocol)) {
                continue;
            }
            if let Some(first) = owners.insert((port.published, port.protocol), &service.name) {
                return Err(ComposeError::RefusePortClash {
                    port: port.published,
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

/// The NVIDIA driver capabilities a GPU reservation may name: `gpu` (Docker's marker for a
/// GPU reservation), `nvidia`, and the two library sets the grant mounts (`compute`,
/// `utility`). `graphics`, `video`, `display` and `compat32` need libraries the grant does not
/// mount, so they are refused rather than silently missing.
const GPU_CAPABILITIES: &[&str] = &["gpu", "nvidia", "compute", "utility"];

/// One GPU request from a `count` / `device_ids` pair (`count: all` or no field: every GPU).
fn gpu_count_or_ids(
    item: &Node<'_>,
    count: Option<Node<'_>>,
    ids: Option<Node<'_>>,
) -> Result<GpuRequest, ComposeError> {
    Ok(match (count, ids) {
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
                match text.parse::<u32>() {
                    Ok(n) if n > 0 => GpuRequest::Count(n),
                    _ => {
                        return Err(ComposeError::invalid(
                            &c.path,
                            "count is all or a number above 0",
                        ));
                    }
                }
            }
        }
        (None, Some(ids)) => {
            let ids = ids.string_list()?;
            check_gpu_ids(&item.path, &ids)?;
            GpuRequest::Ids(ids)
        }
        (None, None) => GpuRequest::All,
    })
}

/// Device ids are GPU indices (`0`, `1`, …) or UUIDs (`GPU-…`), each once.
fn check_gpu_ids(path: &str, ids: &[String]) -> Result<(), ComposeError> {
    if ids.is_empty() {
        return Err(ComposeError::invalid(path, "device_ids is empty"));
    }
    let mut seen = BTreeSet::new();
    for id in ids {
        let index = id.parse::<u32>().is_ok();
        let uuid = id.starts_with("GPU-")
            && id.len() > 4
            && id[4..].bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        if !index && !uuid {
            return Err(ComposeError::invalid(
                path,
                format!("GPU device id {id:?} is neither an index nor a GPU-<uuid>"),
            ));
        }
        if !seen.insert(id.as_str()) {
            return Err(ComposeError::invalid(
                path,
                format!("GPU device id {id:?} given twice"),
            ));
        }
    }
    Ok(())
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
        let nvidia_driver = match m.get("driver") {
            Some(d) if d.string()? != "nvidia" => {
                return Err(ComposeError::refuse(
                    &d.path,
                    "only the nvidia device driver is supported",
                ));
            }
            Some(_) => true,
            None => false,
        };
        if !nvidia_driver && !capabilities.iter().any(|c| c == "gpu") {
            return Err(ComposeError::refuse(
                &item.path,
                "only GPU device reservations (driver: nvidia or capabilities: [gpu]) are supported",
            ));
        }
        if let Some(c) = capabilities
            .iter()
            .find(|c| !GPU_CAPABILITIES.contains(&c.as_str()))
        {
            return Err(ComposeError::invalid(
                &item.path,
                format!(
                    "GPU capability {c:?} is not supported (only gpu, nvidia, compute, utility: the grant mounts the compute and utility libraries)"
                ),
            ));
        }
        if m.get("options").is_some_and(|o| !o.is_empty_mapping()) {
            return Err(ComposeError::refuse(
                &item.path,
                "device options are not supported",
            ));
        }
        let req = gpu_count_or_ids(&item, m.get("count"), m.get("device_ids"))?;
        if request.replace(req).is_some() {
            return Err(ComposeError::refuse(
                &node.path,
                "one GPU reservation per service",
            ));
        }
    }
    Ok(request)
}

/// The environment variable nvidia-container-toolkit reads the GPU selection from.
const NVIDIA_VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";

/// The GPU request of `runtime: nvidia` and of `NVIDIA_VISIBLE_DEVICES` in the service's
/// environment, read as nvidia-container-toolkit reads the variable: `all`, a comma list of
/// indices or UUIDs, or `none` / `void` / empty (no GPU). `runtime: nvidia` without the
/// variable asks for every GPU (what the CUDA images' `NVIDIA_VISIBLE_DEVICES=all` gives);
/// the grant is read from the compose file only, never from the image's environment, so the
/// compose-hash covers it. Any other runtime than `runc` is refused.
fn gpu_from_runtime(
    m: &value::Mapping<'_>,
    environment: &BTreeMap<String, String>,
) -> Result<Option<GpuRequest>, ComposeError> {
    let runtime_nvidia = match m.get("runtime") {
        Some(n) => match n.string()?.as_str() {
            "nvidia" => true,
            "runc" => false,
            _ => {
                return Err(ComposeError::refuse(
                    &n.path,
                    "only runtime: runc (the default) or nvidia (GPUs) is supported",
                ));
            }
        },
        None => false,
    };
    let path = m.get("environment").map_or_else(String::new, |n| {
        format!("{}.{NVIDIA_VISIBLE_DEVICES}", n.path)
    });
    match environment.get(NVIDIA_VISIBLE_DEVICES).map(|v| v.trim()) {
        None if runtime_nvidia => Ok(Some(GpuRequest::All)),
        None | Some("" | "none" | "void") => Ok(None),
        Some("all") => Ok(Some(GpuRequest::All)),
        Some(list) => {
            let ids: Vec<String> = list.split(',').map(|s| s.trim().to_owned()).collect();
            check_gpu_ids(&path, &ids)?;
            Ok(Some(GpuRequest::Ids(ids)))
        }
    }
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
