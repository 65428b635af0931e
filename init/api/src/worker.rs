//! The external `Worker` API: what dstack's guest agent serves on TCP port 8090 for users, the
//! VMM's "Dashboard" link and the dstack tools, on the VM's network (so the host can reach it:
//! it serves nothing secret).
//!
//! * `/prpc/Worker.Info` (or `/prpc/Info`): the `Info` that workloads get, except that
//!   `tcb_info` and `vm_config` are empty unless app-compose's `public_tcbinfo` (default true)
//!   allows them, as dstack's `get_info(external = true)` does;
//! * `/prpc/Worker.Version`;
//! * `/prpc/Worker.GetAttestationForAppKey{algorithm}`: a quote whose report data is
//!   `dip1::ed25519-pk:<base64url>` or `dip1::secp256k1c-pk:<base64url>` of the app's signing
//!   key (GetKey path `vms`, purpose `signing`), NUL padded, so a client can tie `Sign`
//!   signatures to this TD;
//! * `GET /`: a small HTML dashboard (identity; service log links with `public_logs`);
//! * `GET /logs/<service>` only with `public_logs`: the service's current log file (the last
//!   [`MAX_LOG_BYTES`] at most; `?tail=N` for the last N lines);
//! * `GET /metrics` only with `public_sysinfo`: Prometheus text from `/proc`.
//!
//! Read-only: no call here extends RTMR3 or releases a key.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use init_core::tee::Tee;
use serde::Deserialize;
use serde_json::json;

use crate::http::{Request, Response, Status};
use crate::service::{self, ServiceError};
use crate::state::ApiState;

/// dstack's external port.
pub const DEFAULT_WORKER_PORT: u16 = 8090;
/// The most of a log `/logs/<service>` returns.
pub const MAX_LOG_BYTES: u64 = 1 << 20;
/// The longest service name `/logs/` accepts (compose service names are short).
const MAX_SERVICE_NAME: usize = 128;

/// What the Worker API may show, from app-compose (all `false` without one: fail closed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exposure {
    /// `public_logs`: `/logs/<service>` and the dashboard's log links.
    pub logs: bool,
    /// `public_sysinfo`: `/metrics`.
    pub sysinfo: bool,
    /// `public_tcbinfo`: `tcb_info` and `vm_config` in `Worker.Info`.
    pub tcbinfo: bool,
}

/// Where the Worker API reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSources {
    /// The per-service logs (`<dir>/<service>.log`), written by PID 1; `None`: no logs.
    pub logs_dir: Option<PathBuf>,
    /// `/proc` (tests point it elsewhere).
    pub proc_dir: PathBuf,
}

impl Default for WorkerSources {
    fn default() -> Self {
        Self {
            logs_dir: None,
            proc_dir: PathBuf::from("/proc"),
        }
    }
}

/// Errors of one Worker request; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// No route.
    #[error("no such endpoint {path:?}")]
    NotFound { path: String },
    /// app-compose does not make this public.
    #[error("{what} is not public: app-compose sets {field} to false")]
    NotPublic {
        what: &'static str,
        field: &'static str,
    },
    /// A `/logs/` name that is not a service name.
    #[error("{name:?} is not a service name")]
    BadServiceName { name: String },
    /// `tail` is not a number.
    #[error("tail must be a whole number of lines")]
    BadTail,
    /// No log file for the service.
    #[error("no log of service {name:?}")]
    NoLog { name: String },
    /// Reading a log or a `/proc` file failed.
    #[error("read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An API call shared with the workloads' socket failed.
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl WorkerError {
    /// The HTTP status of the error.
    pub fn status(&self) -> Status {
        match self {
            Self::NotFound { .. } | Self::NoLog { .. } => Status::NotFound,
            Self::NotPublic { .. } => Status::Forbidden,
            Self::BadServiceName { .. } | Self::BadTail => Status::BadRequest,
            Self::Read { .. } => Status::InternalServerError,
            Self::Service(e) => e.status(),
        }
    }
}

/// Handles one request on the Worker port; never panics, always answers.
pub fn dispatch<T: Tee>(
    state: &ApiState<T>,
    sources: &WorkerSources,
    request: &Request,
) -> Response {
    match call(state, sources, request) {
        Ok(response) => response,
        Err(error) => {
            let status = error.status();
            let message = service::log_failure("worker-api", status, &error);
            match &error {
                WorkerError::Service(_) => Response::error(status, &message),
                _ => Response::text(status, "text/plain; charset=utf-8", format!("{message}\n")),
            }
        }
    }
}

#[derive(Deserialize)]
struct AppKeyArgs {
    #[serde(default)]
    algorithm: String,
}

fn call<T: Tee>(
    state: &ApiState<T>,
    sources: &WorkerSources,
    request: &Request,
) -> Result<Response, WorkerError> {
    let path = request.head.path.as_str();
    let exposure = state.workload().exposure;
    if let Some(method) = path
        .strip_prefix("/prpc/Worker.")
        .or_else(|| path.strip_prefix("/prpc/"))
    {
        let value = match method {
            "Info" => service::info(state, !exposure.tcbinfo)?,
            "Version" => service::version(),
            "GetAttestationForAppKey" => {
                let args: AppKeyArgs = service::arguments("GetAttestationForAppKey", request)?;
                service::attestation_for_app_key(state, &args.algorithm)?
            }
            _ => {
                return Err(WorkerError::NotFound {
                    path: path.to_owned(),
                });
            }
        };
        return Ok(Response::ok(value.to_string().into_bytes()));
    }
    if path == "/" {
        let info = service::info(state, true)?;
        let services = if exposure.logs {
            sources
                .logs_dir
                .as_deref()
                .map(log_services)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        return Ok(Response::text(
            Status::Ok,
            "text/html; charset=utf-8",
            dashboard(&info, exposure, &services),
        ));
    }
    if let Some(name) = path.strip_prefix("/logs/") {
        if !exposure.logs {
            return Err(WorkerError::NotPublic {
                what: "container output",
                field: "public_logs",
            });
        }
        let tail = tail_lines(request.head.query.as_deref().unwrap_or_default())?;
        let body = read_log(sources.logs_dir.as_deref(), name, tail)?;
        return Ok(Response::text(
            Status::Ok,
            "text/plain; charset=utf-8",
            body,
        ));
    }
    if path == "/metrics" {
        if !exposure.sysinfo {
            return Err(WorkerError::NotPublic {
                what: "system information",
                field: "public_sysinfo",
            });
        }
        let read = |name: &str| {
            let path = sources.proc_dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| WorkerError::Read { path, source })
        };
        let text = metrics(&ProcFiles {
            meminfo: read("meminfo")?,
            loadavg: read("loadavg")?,
            uptime: read("uptime")?,
            stat: read("stat")?,
        });
        return Ok(Response::text(
            Status::Ok,
            "text/plain; version=0.0.4; charset=utf-8",
            text,
        ));
    }
    Err(WorkerError::NotFound {
        path: path.to_owned(),
    })
}

/// A compose service name as the log files are named: `[A-Za-z0-9][A-Za-z0-9._-]*`.
fn valid_service_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= MAX_SERVICE_NAME
        && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `tail=N` of the query (`None`: the whole capped file).
fn tail_lines(query: &str) -> Result<Option<usize>, WorkerError> {
    match query.split('&').find_map(|pair| pair.strip_prefix("tail=")) {
        None => Ok(None),
        Some(n) => n.parse().map(Some).map_err(|_| WorkerError::BadTail),
    }
}

/// The services with a current log file, sorted.
fn log_services(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let service = name.strip_suffix(".log")?.to_owned();
            valid_service_name(&service).then_some(service)
        })
        .collect();
    names.sort();
    names
}

/// The end of `<dir>/<name>.log`: at most [`MAX_LOG_BYTES`], starting at a line, then the last
/// `tail` lines of that when asked.
fn read_log(dir: Option<&Path>, name: &str, tail: Option<usize>) -> Result<String, WorkerError> {
    if !valid_service_name(name) {
        return Err(WorkerError::BadServiceName {
            name: name.to_owned(),
        });
    }
    let no_log = || WorkerError::NoLog {
        name: name.to_owned(),
    };
    let path = dir.ok_or_else(no_log)?.join(format!("{name}.log"));
    // Only PID 1 writes the directory; a link or anything but a file is not a log.
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_file() => {}
        _ => return Err(no_log()),
    }
    let read = |source| WorkerError::Read {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::File::open(&path).map_err(read)?;
    let len = file.metadata().map_err(read)?.len();
    let start = len.saturating_sub(MAX_LOG_BYTES);
    file.seek(SeekFrom::Start(start)).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(MAX_LOG_BYTES)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    Ok(log_window(&bytes, start > 0, tail))
}

/// The text of a log window: without the cut first line when the window starts mid-file, and
/// only the last `tail` lines when asked.
fn log_window(bytes: &[u8], cut: bool, tail: Option<usize>) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = if cut {
        text.split_once('\n').map_or("", |(_, rest)| rest)
    } else {
        &text
    };
    match tail {
        None => text.to_owned(),
        Some(n) => {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(n);
            let mut out = lines.get(from..).unwrap_or_default().join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            out
        }
    }
}

/// The `/proc` files `/metrics` reads.
#[derive(Debug, Clone, Default)]
pub struct ProcFiles {
    /// `/proc/meminfo`.
    pub meminfo: String,
    /// `/proc/loadavg`.
    pub loadavg: String,
    /// `/proc/uptime`.
    pub uptime: String,
    /// `/proc/stat`.
    pub stat: String,
}

/// Prometheus text exposition of the VM's memory, load, uptime and CPU count. A value the
/// kernel did not give is left out, never guessed.
pub fn metrics(proc: &ProcFiles) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: Option<f64>| {
        if let Some(value) = value {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            ));
        }
    };
    let mem = |key: &str| {
        proc.meminfo.lines().find_map(|line| {
            let rest = line.strip_prefix(key)?.strip_prefix(':')?;
            let kib: f64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kib * 1024.0)
        })
    };
    gauge(
        "cvm_memory_total_bytes",
        "MemTotal of /proc/meminfo.",
        mem("MemTotal"),
    );
    gauge(
        "cvm_memory_available_bytes",
        "MemAvailable of /proc/meminfo.",
        mem("MemAvailable"),
    );
    let load: Vec<f64> = proc
        .loadavg
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect();
    for (i, minutes) in [1, 5, 15].iter().enumerate() {
        gauge(
            &format!("cvm_load{minutes}"),
            &format!("Load average over {minutes} minute(s)."),
            load.get(i).copied(),
        );
    }
    gauge(
        "cvm_uptime_seconds",
        "Seconds since the kernel started.",
        proc.uptime
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok()),
    );
    let cpus = proc
        .stat
        .lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    gauge(
        "cvm_cpus",
        "Online CPUs (cpuN lines of /proc/stat).",
        (cpus > 0).then_some(cpus as f64),
    );
    out
}

/// Escapes text for HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The dashboard page from the (external) `Info` and the log services.
fn dashboard(info: &serde_json::Value, exposure: Exposure, services: &[String]) -> String {
    let field = |key: &str| escape(info.get(key).and_then(|v| v.as_str()).unwrap_or_default());
    let mut page = format!(
        "<!doctype html><meta charset=utf-8><title>{name} — cvm-init</title>\
         <h1>{name}</h1><dl>\
         <dt>app-id</dt><dd id=app-id>{app_id}</dd>\
         <dt>instance-id</dt><dd id=instance-id>{instance_id}</dd>\
         <dt>compose-hash</dt><dd id=compose-hash>{compose_hash}</dd>\
         <dt>os-image-hash</dt><dd id=os-image-hash>{os_image_hash}</dd>\
         <dt>key provider</dt><dd>{key_provider}</dd>\
         <dt>guest agent</dt><dd>{version} ({rev})</dd></dl>\n",
        name = field("app_name"),
        app_id = field("app_id"),
        instance_id = field("instance_id"),
        compose_hash = field("compose_hash"),
        os_image_hash = field("os_image_hash"),
        key_provider = field("key_provider_info"),
        version = escape(service::DSTACK_VERSION),
        rev = escape(service::VERSION_REV),
    );
    if exposure.logs {
        page.push_str("<h2>Logs</h2><ul>\n");
        for s in services {
            let s = escape(s);
            page.push_str(&format!("<li><a href=\"/logs/{s}\">{s}</a></li>\n"));
        }
        page.push_str("</ul>\n");
    } else {
        page.push_str(
            "<p>Container logs are private (app-compose <code>public_logs</code> is false).</p>\n",
        );
    }
    if exposure.sysinfo {
        page.push_str("<p><a href=\"/metrics\">metrics</a></p>\n");
    }
    let json = json!({ "app_id": info.get("app_id"), "instance_id": info.get("instance_id") });
    page.push_str(&format!(
        "<script type=application/json id=info>{}</script>\n",
        escape(&json.to_string())
    ));
    page
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn service_names() {
        for good in ["web", "db-1", "a.b_c", "X9"] {
            assert!(valid_service_name(good), "{good}");
        }
        let long = "a".repeat(MAX_SERVICE_NAME + 1);
        for bad in [
            "",
            ".hidden",
            "../x",
            "a/b",
            "-x",
            "a b",
            "a%2f",
            long.as_str(),
        ] {
            assert!(!valid_service_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn tail_query() {
        assert_eq!(tail_lines("").unwrap(), None);
        assert_eq!(tail_lines("x=1&tail=20").unwrap(), Some(20));
        assert!(matches!(tail_lines("tail=-1"), Err(WorkerError::BadTail)));
        assert!(matches!(tail_lines("tail=ten"), Err(WorkerError::BadTail)));
    }

    #[test]
    fn log_windows() {
        assert_eq!(log_window(b"a\nb\nc\n", false, None), "a\nb\nc\n");
        // A window that starts mid-file drops its partial first line.
        assert_eq!(log_window(b"rtial\nb\nc\n", true, None), "b\nc\n");
        assert_eq!(log_window(b"a\nb\nc\n", false, Some(2)), "b\nc\n");
        assert_eq!(log_window(b"a\nb\n", false, Some(0)), "");
        assert_eq!(log_window(b"a\n", false, Some(5)), "a\n");
    }

    #[test]
    fn reads_only_service_log_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web.log"), b"one\ntwo\n").unwrap();
        std::fs::write(dir.path().join("web.log.1"), b"old\n").unwrap();
        std::fs::write(dir.path().join("secret"), b"s3cret\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("link.log")).unwrap();
        std::fs::create_dir(dir.path().join("d.log")).unwrap();
        let d = Some(dir.path());
        assert_eq!(read_log(d, "web", None).unwrap(), "one\ntwo\n");
        assert_eq!(read_log(d, "web", Some(1)).unwrap(), "two\n");
        for missing in ["link", "d", "none"] {
            assert!(
                matches!(read_log(d, missing, None), Err(WorkerError::NoLog { .. })),
                "{missing}"
            );
        }
        assert!(matches!(
            read_log(d, "../secret", None),
            Err(WorkerError::BadServiceName { .. })
        ));
        assert!(matches!(
            read_log(None, "web", None),
            Err(WorkerError::NoLog { .. })
        ));
        assert_eq!(log_services(dir.path()), vec!["d", "link", "web"]);
    }

    #[test]
    fn caps_a_big_log_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let line = "x".repeat(99) + "\n";
        let big = line.repeat(usize::try_from(MAX_LOG_BYTES).unwrap() / 100 + 50);
        std::fs::write(dir.path().join("big.log"), &big).unwrap();
        let got = read_log(Some(dir.path()), "big", None).unwrap();
        assert!(got.len() as u64 <= MAX_LOG_BYTES);
        assert!(got.len() as u64 > MAX_LOG_BYTES - 200);
        assert!(got.starts_with('x') && got.ends_with('\n'));
        assert_eq!(got.len() % 100, 0, "whole lines only");
    }

    #[test]
    fn metrics_from_proc() {
        let text = metrics(&ProcFiles {
            meminfo: "MemTotal:        2017364 kB\nMemFree: 1 kB\nMemAvailable:    1700000 kB\n"
                .into(),
            loadavg: "0.52 0.31 0.10 1/120 4242\n".into(),
            uptime: "123.45 200.00\n".into(),
            stat: "cpu  1 2 3\ncpu0 1 2 3\ncpu1 4 5 6\nintr 1\n".into(),
        });
        assert!(
            text.contains("cvm_memory_total_bytes 2065780736\n"),
            "{text}"
        );
        assert!(text.contains("cvm_memory_available_bytes 1740800000\n"));
        assert!(text.contains("cvm_load1 0.52\n"));
        assert!(text.contains("cvm_load15 0.1\n"));
        assert!(text.contains("cvm_uptime_seconds 123.45\n"));
        assert!(text.contains("cvm_cpus 2\n"));
        assert!(text.contains("# TYPE cvm_cpus gauge\n"));
        // Nothing invented from empty files.
        assert_eq!(metrics(&ProcFiles::default()), "");
    }

    #[test]
    fn dashboard_escapes_and_gates_logs() {
        let info = json!({"app_name": "<b>x</b>", "app_id": "ab", "instance_id": "cd"});
        let private = dashboard(&info, Exposure::default(), &["web".into()]);
        assert!(private.contains("&lt;b&gt;x&lt;/b&gt;"));
        assert!(!private.contains("<b>x"));
        assert!(!private.contains("/logs/web"));
        assert!(!private.contains("/metrics"));
        let public = dashboard(
            &info,
            Exposure {
                logs: true,
                sysinfo: true,
                tcbinfo: true,
            },
            &["web".into()],
        );
        assert!(public.contains("<a href=\"/logs/web\">web</a>"));
        assert!(public.contains("href=\"/metrics\""));
    }
}
