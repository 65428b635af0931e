//! The parser's verdict on public dstack apps (Dstack-TEE/dstack-examples; provenance in
//! `testdata/dstack-examples/README.md`): each file passes, or is refused only for what a CVM
//! cannot do (`build:`, the Docker socket, host binds; `privileged` without the app-compose
//! opt-in) or for images the compose text does not
//! pin (a tag, with the `cvm-measure compose pin` hint, or an image chosen by interpolation).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

use std::collections::{BTreeMap, BTreeSet};

use cvm_compose::digest::DigestError;
use cvm_compose::{ComposeError, ComposePolicy, check, check_without_environment};

/// Why a file is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Refusal {
    Build,
    DockerSocket,
    HostBind,
    Tag,
    InterpolatedImage,
    TmpfsVolume,
    /// `privileged: true` without app-compose's `allow_privileged` opt-in.
    Privileged,
    /// A service joins a network the file does not declare (docker compose refuses it too).
    UndeclaredNetwork,
}

fn classify(error: &ComposeError) -> Option<Refusal> {
    match error {
        ComposeError::Refuse { path, .. } if path.ends_with(".build") => Some(Refusal::Build),
        ComposeError::RefuseDockerSocket { .. } => Some(Refusal::DockerSocket),
        ComposeError::RefuseHostBind { .. } => Some(Refusal::HostBind),
        ComposeError::ParseImage {
            source: DigestError::MissingDigest { .. },
            ..
        } if error_chain(error).contains("run `cvm-measure compose pin`") => Some(Refusal::Tag),
        ComposeError::RefuseImageInterpolation { .. } => Some(Refusal::InterpolatedImage),
        ComposeError::Refuse { path, .. } if path.ends_with(".privileged") => {
            Some(Refusal::Privileged)
        }
        ComposeError::Refuse { path, .. } if path.ends_with(".driver_opts") => {
            Some(Refusal::TmpfsVolume)
        }
        ComposeError::InvalidValue { path, reason }
            if path.contains(".networks") && reason.contains("not declared") =>
        {
            Some(Refusal::UndeclaredNetwork)
        }
        _ => None,
    }
}

fn error_chain(error: &ComposeError) -> String {
    cvm_error_chain::joined(error)
}

macro_rules! example {
    ($name:literal) => {
        (
            $name,
            include_str!(concat!("../testdata/dstack-examples/", $name)),
        )
    };
}

#[test]
fn dstack_examples_verdicts() {
    use Refusal::*;
    let cases: &[((&str, &str), &[Refusal])] = &[
        (
            example!("custom-domain__dstack-ingress__docker-compose.yaml"),
            &[Tag],
        ),
        (
            example!("custom-domain__dstack-ingress__docker-compose.multi.yaml"),
            &[Tag],
        ),
        (
            example!("custom-domain__dstack-ingress__docker-compose.loadbalanced.yaml"),
            &[Build, DockerSocket, UndeclaredNetwork],
        ),
        (
            example!("k3s__docker-compose.yaml"),
            &[HostBind, Privileged, Tag],
        ),
        (example!("neko__docker-compose.yaml"), &[Tag]),
        (example!("postgres-r2__docker-compose.yml"), &[Tag]),
        (
            example!("swap-volume__docker-compose.yml"),
            &[HostBind, Privileged, Tag],
        ),
        (example!("tsm-shim__docker-compose.yaml"), &[Tag]),
        (
            example!("consul-postgres-ha__compose__worker.yaml"),
            &[HostBind, InterpolatedImage],
        ),
        (
            example!("consul-postgres-ha__coordinator__docker-compose.yaml"),
            &[Tag],
        ),
        (
            example!("consul-postgres-ha__phase0__docker-compose.yaml"),
            &[InterpolatedImage],
        ),
        (
            example!("consul-postgres-ha__stage1__docker-compose.yaml"),
            &[InterpolatedImage, Tag],
        ),
        (
            example!("consul-postgres-ha__stage3a__docker-compose.yaml"),
            &[InterpolatedImage, Tag],
        ),
        (
            example!("consul-postgres-ha__stage4__compose__worker.yaml"),
            &[InterpolatedImage, TmpfsVolume, Tag],
        ),
        (
            example!("consul-postgres-ha__stage4__compose__worker-debug.yaml"),
            &[HostBind, InterpolatedImage, Tag],
        ),
    ];
    let mut report = Vec::new();
    for ((name, yaml), expected) in cases {
        // postgres-r2 requires these (`${VAR:?}`); no other file needs a variable to parse.
        let env: BTreeMap<String, String> = if name.starts_with("postgres-r2") {
            [
                "WALG_S3_PREFIX",
                "AWS_ENDPOINT",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
            ]
            .into_iter()
            .map(|k| (k.to_owned(), "x".to_owned()))
            .collect()
        } else {
            BTreeMap::new()
        };
        let errors = match check(None, yaml, &env, &ComposePolicy::default()) {
            Ok(_) => Vec::new(),
            Err(errors) => errors,
        };
        let mut found = BTreeSet::new();
        for error in &errors {
            match classify(error) {
                Some(kind) => {
                    found.insert(kind);
                }
                None => report.push(format!(
                    "{name}: unexpected refusal: {}",
                    error_chain(error)
                )),
            }
        }
        let expected: BTreeSet<Refusal> = expected.iter().copied().collect();
        if found != expected {
            report.push(format!("{name}: expected {expected:?}, got {found:?}"));
        }
    }
    assert!(report.is_empty(), "{report:#?}");
}

#[test]
fn pinning_the_tags_makes_the_ingress_example_pass() {
    let (_, yaml) = example!("custom-domain__dstack-ingress__docker-compose.yaml");
    let pinned = yaml.replace(
        "image: nginx\n",
        "image: nginx:latest@sha256:f1f178776ddc8034e550bff87cac9ba352599418998c352b73b71a5e7b8983a7\n",
    );
    let app = check_without_environment(None, &pinned).unwrap();
    let names: Vec<&str> = app.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["dstack-ingress", "app"]);
}

#[test]
fn a_required_variable_needs_the_environment() {
    let (_, yaml) = example!("postgres-r2__docker-compose.yml");
    let errors = check_without_environment(None, yaml).unwrap_err();
    assert!(
        matches!(&errors[0], ComposeError::Interpolate { path, .. } if path == "services.postgres.environment.WALG_S3_PREFIX"),
        "{errors:?}"
    );
}
