//! `cvm-measure compose check|pin`: what the init would run of an app-compose.json or a plain
//! docker-compose file, judged by the init's own parser (`cvm-compose`), and the pinning of
//! tag-only images to the digests their registries serve now (through the init's registry
//! client, `cvm_workload::registry`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cvm_compose::digest::{DigestError, ImageName};
use cvm_compose::{App, ComposeError, DependencyCondition, Protocol};
use cvm_workload::pull::MAX_DOCUMENT;
use cvm_workload::registry::{RegistryClient, RegistryConfig};
use sha2::{Digest as _, Sha256};

use crate::input::{read, text};

/// `compose` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ComposeCommand {
    /// Print what the init would run (services, images, ports, start order) or every refusal,
    /// and the compose-hash of an app-compose.json; exit non-zero on a refusal.
    Check(CheckArgs),
    /// Pin every tag-only image to the digest its registry serves for the tag now
    /// (`image: name:tag@sha256:...`).
    Pin(PinArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// app-compose.json, or a plain docker-compose file.
    file: PathBuf,
    /// A variable for interpolation, `KEY=VALUE` (repeatable): what `${KEY:?}` requires. The
    /// images must be pinned in the file whatever the variables say.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct PinArgs {
    /// app-compose.json, or a plain docker-compose file.
    file: PathBuf,
    /// Where to write the pinned file (default: standard output).
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
    /// A registry (`host:port`) reached over plain HTTP, e.g. a local test registry
    /// (repeatable). Every other registry is reached over HTTPS.
    #[arg(long, value_name = "HOST:PORT")]
    plain_http: Vec<String>,
}

/// The file given: an app-compose.json (its compose text and runner) or plain compose text.
#[derive(Debug)]
struct Input {
    /// The parsed app-compose.json, when the file is one.
    app_compose: Option<serde_json::Value>,
    /// The compose text.
    compose: String,
    /// app-compose `runner`.
    runner: Option<String>,
}

fn load(path: &Path, bytes: &[u8]) -> Result<Input> {
    if let Ok(serde_json::Value::Object(object)) = serde_json::from_slice(bytes) {
        let compose = object
            .get("docker_compose_file")
            .and_then(serde_json::Value::as_str)
            .with_context(|| {
                format!(
                    "{}: app-compose.json has no docker_compose_file",
                    path.display()
                )
            })?
            .to_owned();
        let runner = object
            .get("runner")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        return Ok(Input {
            app_compose: Some(serde_json::Value::Object(object)),
            compose,
            runner,
        });
    }
    Ok(Input {
        app_compose: None,
        compose: text(path, bytes)?,
        runner: None,
    })
}

fn parse_env(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => bail!("--env {pair:?} is not KEY=VALUE"),
        })
        .collect()
}

/// The verdict on a compose text: an empty text or `services: {}` runs nothing (dstack's
/// empty app), otherwise the parser's.
fn judge(input: &Input, env: &BTreeMap<String, String>) -> Result<Option<App>, Vec<ComposeError>> {
    if input.compose.trim().is_empty() {
        return Ok(None);
    }
    // The policy app-compose sets, as the init reads it (a plain compose file: the default).
    let policy = cvm_compose::ComposePolicy {
        allow_privileged: input
            .app_compose
            .as_ref()
            .and_then(|a| a.get("allow_privileged"))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
        ..cvm_compose::ComposePolicy::default()
    };
    match cvm_compose::check(input.runner.as_deref(), &input.compose, env, &policy) {
        Ok(app) => Ok(Some(app)),
        Err(errors)
            if matches!(errors.as_slice(), [ComposeError::InvalidValue { path, reason }]
                if path == "services" && reason == "no services") =>
        {
            Ok(None)
        }
        Err(errors) => Err(errors),
    }
}

fn write_hash(out: &mut String, bytes: &[u8]) {
    let hash: [u8; 32] = Sha256::digest(bytes).into();
    let _ = writeln!(out, "compose-hash: {}", hex::encode(hash));
    let _ = writeln!(
        out,
        "app-id:       {} (unless app-compose pins one)",
        hex::encode(&hash[..20])
    );
}

fn condition(c: DependencyCondition) -> &'static str {
    match c {
        DependencyCondition::Started => "started",
        DependencyCondition::Healthy => "healthy",
        DependencyCondition::CompletedSuccessfully => "completed successfully",
    }
}

fn write_app(out: &mut String, app: &App) -> usize {
    let _ = writeln!(out, "services, in start order:");
    let mut gaps = 0;
    for (i, s) in app.services.iter().enumerate() {
        let _ = writeln!(out, "  {}. {}", i + 1, s.name);
        let _ = writeln!(out, "     image: {}", s.image);
        if !s.ports.is_empty() {
            let ports: Vec<String> = s
                .ports
                .iter()
                .map(|p| {
                    let proto = match p.protocol {
                        Protocol::Tcp => "tcp",
                        Protocol::Udp => "udp",
                    };
                    let host = p
                        .host_ip
                        .as_deref()
                        .map(|ip| format!("{ip}:"))
                        .unwrap_or_default();
                    if p.remaps() {
                        format!("{host}{}->{}/{proto}", p.published, p.port)
                    } else {
                        format!("{host}{}/{proto}", p.port)
                    }
                })
                .collect();
            let _ = writeln!(out, "     ports: {}", ports.join(", "));
        }
        if !s.depends_on.is_empty() {
            let after: Vec<String> = s
                .depends_on
                .iter()
                .map(|d| format!("{} ({})", d.service, condition(d.condition)))
                .collect();
            let _ = writeln!(out, "     after: {}", after.join(", "));
        }
        for gap in s.networking_gaps() {
            gaps += 1;
            let _ = writeln!(out, "     refused when started: {gap}");
        }
    }
    gaps
}

pub(crate) fn check(args: &CheckArgs, out: &mut String) -> Result<()> {
    let bytes = read(&args.file)?;
    let input = load(&args.file, &bytes)?;
    let env = parse_env(&args.env)?;
    if input.app_compose.is_some() {
        write_hash(out, &bytes);
    }
    match judge(&input, &env) {
        Ok(None) => {
            let _ = writeln!(out, "runs no services");
            Ok(())
        }
        Ok(Some(app)) => {
            let gaps = write_app(out, &app);
            if gaps > 0 {
                bail!(
                    "the init would refuse {gaps} service setting(s) when it starts the containers"
                );
            }
            Ok(())
        }
        Err(errors) => {
            let _ = writeln!(out, "refused ({}):", errors.len());
            for error in &errors {
                let _ = writeln!(out, "  - {}", cvm_error_chain::one_line(error));
            }
            bail!(
                "the init refuses {}: {} refusal(s)",
                args.file.display(),
                errors.len()
            );
        }
    }
}

/// The tag-only images of a compose text, as written: each `image` the parser refuses for a
/// missing digest.
fn tag_only_images(input: &Input) -> Vec<String> {
    let Err(errors) = judge(input, &BTreeMap::new()) else {
        return Vec::new();
    };
    let mut images = Vec::new();
    for error in errors {
        if let ComposeError::ParseImage {
            source: DigestError::MissingDigest { text },
            ..
        } = error
            && !images.contains(&text)
        {
            images.push(text);
        }
    }
    images
}

/// `text` pinned at `digest`, with the tag spelled out (`nginx` → `nginx:latest@sha256:…`).
fn pinned_text(text: &str, name: &ImageName, digest: &cvm_compose::digest::Sha256Digest) -> String {
    let last = text.rsplit('/').next().unwrap_or(text);
    if last.contains(':') {
        format!("{text}@{digest}")
    } else {
        format!("{text}:{}@{digest}", name.tag)
    }
}

/// Rewrites each `image: <from>` line (optionally quoted, optionally with a trailing comment)
/// of `yaml` whose value is a key of `pins` to its pinned value.
fn rewrite_images(yaml: &str, pins: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(yaml.len() + 80 * pins.len());
    for line in yaml.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let ending = &line[body.len()..];
        let indent = body.len() - body.trim_start().len();
        let rest = body[indent..].strip_prefix("- ").unwrap_or(&body[indent..]);
        let key_at = body.len() - rest.len();
        let rewritten = rest.strip_prefix("image:").and_then(|value| {
            let value_at = key_at + "image:".len() + (value.len() - value.trim_start().len());
            let value = value.trim_start();
            let (quote, inner) = match value.chars().next() {
                Some(q @ ('"' | '\'')) => (Some(q), &value[1..]),
                _ => (None, value),
            };
            let end = match quote {
                Some(q) => inner.find(q)?,
                None => inner.find(" #").unwrap_or(inner.len()),
            };
            let image = inner[..end].trim_end();
            let pinned = pins.get(image)?;
            let start = value_at + usize::from(quote.is_some());
            Some(format!(
                "{}{pinned}{}",
                &body[..start],
                &body[start + image.len()..]
            ))
        });
        match rewritten {
            Some(new) => {
                out.push_str(&new);
                out.push_str(ending);
            }
            None => out.push_str(line),
        }
    }
    out
}

pub(crate) fn pin(args: &PinArgs, out: &mut String) -> Result<()> {
    let bytes = read(&args.file)?;
    let mut input = load(&args.file, &bytes)?;
    let images = tag_only_images(&input);
    let client = RegistryClient::new(RegistryConfig {
        plain_http_hosts: args.plain_http.clone(),
        ..RegistryConfig::default()
    });
    let mut pins = BTreeMap::new();
    let mut report = String::new();
    for text in &images {
        let name = ImageName::parse(text).with_context(|| format!("image {text:?}"))?;
        let digest = client
            .resolve_tag(&name.registry, &name.repository, &name.tag, MAX_DOCUMENT)
            .with_context(|| format!("resolve {text}"))?;
        let pinned = pinned_text(text, &name, &digest);
        let _ = writeln!(report, "pinned {text} -> {pinned}");
        pins.insert(text.clone(), pinned);
    }
    let compose = rewrite_images(&input.compose, &pins);
    input.compose = compose.clone();
    let left = tag_only_images(&input);
    if !left.is_empty() {
        bail!(
            "could not rewrite the image line of {} (flow style or anchors?): pin by hand",
            left.join(", ")
        );
    }
    let written = match &mut input.app_compose {
        Some(value) => {
            value["docker_compose_file"] = serde_json::Value::String(compose);
            let mut json =
                serde_json::to_string_pretty(value).context("serialize app-compose.json")?;
            json.push('\n');
            write_hash(&mut report, json.as_bytes());
            json
        }
        None => compose,
    };
    if images.is_empty() {
        let _ = writeln!(report, "no tag-only images");
    }
    if let Err(errors) = judge(&input, &BTreeMap::new()) {
        for error in errors {
            if let ComposeError::RefuseImageInterpolation { service } = error {
                let _ = writeln!(
                    report,
                    "not pinned: services.{service}.image is chosen by interpolation; write the pinned reference into the file"
                );
            }
        }
    }
    match &args.output {
        Some(path) => {
            std::fs::write(path, &written).with_context(|| format!("write {}", path.display()))?;
            out.push_str(&report);
        }
        None => {
            out.push_str(&written);
            eprint!("{report}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::net::TcpListener;

    use super::*;

    const D: &str = "sha256:f1f178776ddc8034e550bff87cac9ba352599418998c352b73b71a5e7b8983a7";

    #[test]
    fn rewrites_plain_quoted_and_commented_image_lines() {
        let pins: BTreeMap<String, String> = [
            ("nginx".to_owned(), format!("nginx:latest@{D}")),
            ("ghcr.io/a/b:1".to_owned(), format!("ghcr.io/a/b:1@{D}")),
        ]
        .into_iter()
        .collect();
        let yaml = "services:\n  a:\n    image: nginx\n  b:\n    image: \"ghcr.io/a/b:1\"  # pin me\n  c:\n    image: nginx-other\n";
        let out = rewrite_images(yaml, &pins);
        assert_eq!(
            out,
            format!(
                "services:\n  a:\n    image: nginx:latest@{D}\n  b:\n    image: \"ghcr.io/a/b:1@{D}\"  # pin me\n  c:\n    image: nginx-other\n"
            )
        );
    }

    /// A one-thread registry stub: answers `requests` GETs with `body` and `header_digest`
    /// (the Docker-Content-Digest it claims), recording the request lines and Accept headers.
    fn stub(
        body: &'static [u8],
        header_digest: String,
        requests: usize,
    ) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..requests {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let line = line.trim_end().to_owned();
                    if line.is_empty() {
                        break;
                    }
                    if line.starts_with("GET ") || line.to_ascii_lowercase().starts_with("accept:")
                    {
                        seen.push(line);
                    }
                }
                let mut stream = stream;
                let (status, body) = if seen
                    .iter()
                    .any(|l| l.starts_with("GET /v2/library/app/manifests/1.0 "))
                {
                    ("200 OK", body)
                } else {
                    ("404 Not Found", &b"{}"[..])
                };
                write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/vnd.oci.image.index.v1+json\r\nDocker-Content-Digest: {header_digest}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .unwrap();
                stream.write_all(body).unwrap();
            }
            seen
        });
        (host, handle)
    }

    const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;

    #[test]
    fn pin_resolves_tags_through_a_registry() {
        let digest = cvm_compose::digest::Sha256Digest::of(MANIFEST);
        let (host, server) = stub(MANIFEST, digest.to_string(), 1);
        let dir = tempfile::tempdir().unwrap();
        let compose = format!(
            "services:\n  app:\n    image: {host}/library/app:1.0\n  pinned:\n    image: busybox@{D}\n"
        );
        let app_compose = serde_json::json!({"runner": "docker-compose", "docker_compose_file": compose, "name": "x"});
        let file = dir.path().join("app-compose.json");
        std::fs::write(&file, serde_json::to_string(&app_compose).unwrap()).unwrap();
        let output = dir.path().join("pinned.json");
        let args = PinArgs {
            file,
            output: Some(output.clone()),
            plain_http: vec![host.clone()],
        };
        let mut report = String::new();
        pin(&args, &mut report).unwrap();
        let seen = server.join().unwrap();
        assert_eq!(seen[0], "GET /v2/library/app/manifests/1.0 HTTP/1.1");
        assert!(
            seen[1].contains("application/vnd.oci.image.index.v1+json"),
            "{seen:?}"
        );
        assert!(
            seen[1].contains("application/vnd.docker.distribution.manifest.v2+json"),
            "{seen:?}"
        );
        let written = std::fs::read(&output).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&written).unwrap();
        let pinned = value["docker_compose_file"].as_str().unwrap();
        assert!(
            pinned.contains(&format!("image: {host}/library/app:1.0@{digest}\n")),
            "{pinned}"
        );
        assert!(pinned.contains(&format!("image: busybox@{D}\n")));
        // Key order is kept, and the report names the new compose-hash.
        let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["runner", "docker_compose_file", "name"]);
        let hash: [u8; 32] = Sha256::digest(&written).into();
        assert!(
            report.contains(&format!("compose-hash: {}", hex::encode(hash))),
            "{report}"
        );
        // The pinned file passes the same check the init makes.
        let mut out = String::new();
        check(
            &CheckArgs {
                file: output,
                env: vec![],
            },
            &mut out,
        )
        .unwrap();
        assert!(out.contains("1. app") || out.contains("2. app"), "{out}");
    }

    #[test]
    fn pin_refuses_a_digest_header_that_does_not_match_the_body() {
        let (host, server) = stub(MANIFEST, D.to_owned(), 1);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("docker-compose.yml");
        std::fs::write(
            &file,
            format!("services:\n  app:\n    image: {host}/library/app:1.0\n"),
        )
        .unwrap();
        let args = PinArgs {
            file,
            output: Some(dir.path().join("out.yml")),
            plain_http: vec![host],
        };
        let err = pin(&args, &mut String::new()).unwrap_err();
        server.join().unwrap();
        let text = format!("{err:#}");
        assert!(
            text.contains("is not the digest of the manifest served"),
            "{text}"
        );
        assert!(!dir.path().join("out.yml").exists());
    }

    #[test]
    fn pin_names_images_it_cannot_pin() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("docker-compose.yml");
        let yaml =
            format!("services:\n  a:\n    image: ${{IMAGE}}\n  b:\n    image: busybox@{D}\n");
        std::fs::write(&file, &yaml).unwrap();
        let output = dir.path().join("out.yml");
        let args = PinArgs {
            file,
            output: Some(output.clone()),
            plain_http: vec![],
        };
        let mut report = String::new();
        pin(&args, &mut report).unwrap();
        assert!(report.contains("no tag-only images"), "{report}");
        assert!(
            report.contains("not pinned: services.a.image is chosen by interpolation"),
            "{report}"
        );
        assert_eq!(std::fs::read_to_string(output).unwrap(), yaml);
    }
}
