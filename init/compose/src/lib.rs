//! The docker-compose subset cvm-init runs, parsed into our own typed model (`cvm-compose`).
//!
//! Pure: no I/O, no `unsafe`. The init (`cvm-workload`, re-exported as `cvm_workload::compose`)
//! and the auditor (`measure::verify`) parse with the same code, so they cannot disagree on what
//! an app runs.
//!
//!
//! The YAML is read into a generic tree, every string value is interpolated from the given
//! environment (compose semantics: before the file is interpreted), then each mapping is walked
//! with an explicit list of known keys. Any other key is an error naming its path, except `x-`
//! extensions, which are ignored. Everything the init cannot honour faithfully (bridge networks,
//! port remaps, `env_file`, `build`, host binds outside the dstack sockets) is refused here,
//! before any network traffic.
//!
//! `model` holds the typed app, `parse` the YAML walk, `order` the start order; `digest` the
//! digest-pinned image references.

#![forbid(unsafe_code)]

pub mod digest;
mod interpolate;
mod model;
mod order;
mod parse;
mod value;

pub use interpolate::{InterpolateError, interpolate};
pub use model::{
    App, ConfigMount, Dependency, DependencyCondition, DeviceMapping, GpuRequest, HealthTest,
    Healthcheck, Link, Network, NetworkingGap, Port, Protocol, Resources, RestartPolicy, SIGNALS,
    Service, ServiceNetwork, Ulimit, VolumeMount,
};
pub use parse::{
    ComposePolicy, NAMESPACED_SYSCTLS, SOCKET_BINDS, check, check_without_environment, parse,
    parse_without_environment,
};

use crate::digest::DigestError;

/// Errors of this module. Paths are dotted (`services.web.ports[0]`).
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// The runner named in app-compose.json is not supported.
    #[error(
        "runner {runner:?} is not supported: cvm-init runs docker-compose files itself, without a shell runner"
    )]
    RefuseRunner {
        /// The runner name.
        runner: String,
    },
    /// The compose text is not YAML. (The caller names the file; this names only what is
    /// wrong with it, so the chain does not say "parse" twice.)
    #[error("not valid YAML")]
    ParseYaml(#[source] serde_norway::Error),
    /// Interpolation of a value failed.
    #[error("interpolate {path}")]
    Interpolate {
        /// Where.
        path: String,
        /// Why.
        #[source]
        source: InterpolateError,
    },
    /// A key the subset does not know.
    #[error("{path}: unknown key {key:?}")]
    UnknownKey {
        /// The mapping holding the key.
        path: String,
        /// The key.
        key: String,
    },
    /// A value of the wrong YAML type.
    #[error("{path}: expected {expected}")]
    WrongType {
        /// Where.
        path: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A value of the right type that is not acceptable.
    #[error("{path}: {reason}")]
    InvalidValue {
        /// Where.
        path: String,
        /// Why.
        reason: String,
    },
    /// A known compose feature the init refuses on purpose.
    #[error("{path}: {reason}")]
    Refuse {
        /// Where.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The image is not a digest-pinned reference.
    #[error("services.{service}.image")]
    ParseImage {
        /// Service.
        service: String,
        /// Why.
        #[source]
        source: DigestError,
    },
    /// An `image` that interpolation would decide, parsed without the environment
    /// ([`parse_without_environment`]).
    #[error(
        "services.{service}.image: interpolated from the environment, which the compose-hash does not cover"
    )]
    RefuseImageInterpolation {
        /// Service.
        service: String,
    },
    /// A host bind mount outside the allowed sockets.
    #[error(
        "services.{service}.volumes: host bind of {source_path:?} is refused: the host file system is not trusted (only /var/run/dstack.sock and /var/run/tappd.sock may be bound); use a named volume"
    )]
    RefuseHostBind {
        /// Service.
        service: String,
        /// Host path.
        source_path: String,
    },
    /// A bind of the Docker socket.
    #[error(
        "services.{service}.volumes: {source_path:?} is refused: there is no container daemon in the CVM (cvm-init runs the containers itself)"
    )]
    RefuseDockerSocket {
        /// Service.
        service: String,
        /// Host path.
        source_path: String,
    },
    /// Two services publish the same host port.
    #[error(
        "port {port}/{protocol} is published by both {first} and {second} (host networking shares one port space)"
    )]
    RefusePortClash {
        /// Port.
        port: u16,
        /// tcp or udp.
        protocol: Protocol,
        /// First service.
        first: String,
        /// Second service.
        second: String,
    },
    /// `depends_on` names a service that does not exist.
    #[error("services.{service}.depends_on: unknown service {dependency:?}")]
    ResolveDependency {
        /// Service.
        service: String,
        /// Missing dependency.
        dependency: String,
    },
    /// The `depends_on` graph has a cycle.
    #[error("depends_on cycle: {}", cycle.join(" -> "))]
    OrderServices {
        /// The services on the cycle, first repeated at the end.
        cycle: Vec<String>,
    },
}

/// `text` with control characters escaped (`\0`, `\n`, `\u{1b}`): paths and keys come from
/// the compose file and end up on the console.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl ComposeError {
    fn unknown(path: &str, key: &str) -> Self {
        Self::UnknownKey {
            path: printable(path),
            key: printable(key),
        }
    }
    fn invalid(path: &str, reason: impl Into<String>) -> Self {
        Self::InvalidValue {
            path: printable(path),
            reason: reason.into(),
        }
    }
    fn refuse(path: &str, reason: &'static str) -> Self {
        Self::Refuse {
            path: printable(path),
            reason,
        }
    }
}

#[cfg(test)]
mod tests;
