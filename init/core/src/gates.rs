//! The app-compose gates dstack enforces in `do_sys_setup` (`dstack-guest.md` §1.5 step 1–2)
//! and the fields this image cannot honour: each is either checked against this image and VM
//! or refused by name, never read and ignored (a silently ignored gate is a fail-open).
//!
//! | field | here |
//! |---|---|
//! | `requirements.os_version` | semver requirement against [`ImageFacts::os_version`] |
//! | `requirements.platforms` | must list [`ImageFacts::platform`] |
//! | `requirements.tdx_measure_acpi_tables` | must match `vm_config.tdx_attestation_variant` (true ⇔ `legacy`, false ⇔ `lite`) |
//! | `secure_time` (default true) | refused: no NTS client in this image |
//! | `init_script`, `pre_launch_script` | refused when non-blank: bash scripts, and there is no shell |
//! | `swap_size` | refused when above zero: no swap support yet |
//! | `verity_volumes` | refused when non-empty: no dm-verity data volumes yet |
//!
//! Every refusal is collected, so one boot names them all.

use crate::app_compose::{AppCompose, SwapSize, VmConfig};

/// What this image is, for the `requirements` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageFacts {
    /// The dstack OS version this image is compatible with (`VERSION_ID` for
    /// `requirements.os_version`; the guest API's `Version` reports the same).
    pub os_version: &'static str,
    /// The platform name for `requirements.platforms`.
    pub platform: &'static str,
}

/// This image: dstack v0.5.11 formats on Intel TDX.
pub const IMAGE_FACTS: ImageFacts = ImageFacts {
    os_version: "0.5.11",
    platform: "dstack-tdx",
};

/// One gate that does not hold, or one field this image does not do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The app-compose field.
    pub field: &'static str,
    /// Why, and what to do.
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Errors of the gates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    /// At least one gate refused the app.
    #[error(
        "app-compose.json asks for what this image does not allow: {}",
        join(refusals)
    )]
    Refused {
        /// Every refusal, in field order.
        refusals: Vec<Refusal>,
    },
}

fn join(refusals: &[Refusal]) -> String {
    refusals
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks every gate of `compose` against this image (`facts`) and the VM (`vm`).
pub fn check(compose: &AppCompose, vm: &VmConfig, facts: &ImageFacts) -> Result<(), GateError> {
    let mut refusals = Vec::new();
    let mut refuse = |field, reason: String| refusals.push(Refusal { field, reason });
    if let Some(req) = &compose.requirements {
        if let Some(wanted) = &req.os_version {
            match (
                semver::VersionReq::parse(wanted),
                semver::Version::parse(facts.os_version),
            ) {
                (Ok(r), Ok(v)) if r.matches(&v) => {}
                (Ok(_), Ok(_)) => refuse(
                    "requirements.os_version",
                    format!(
                        "the app requires OS version `{wanted}`; this image is {}",
                        facts.os_version
                    ),
                ),
                (Err(e), _) => refuse(
                    "requirements.os_version",
                    format!("`{wanted}` is not a semver requirement ({e})"),
                ),
                (_, Err(e)) => refuse(
                    "requirements.os_version",
                    format!(
                        "this image's version {} does not parse ({e})",
                        facts.os_version
                    ),
                ),
            }
        }
        if let Some(platforms) = &req.platforms
            && !platforms.iter().any(|p| p == facts.platform)
        {
            refuse(
                "requirements.platforms",
                format!(
                    "the app runs on {platforms:?}; this image is `{}`",
                    facts.platform
                ),
            );
        }
        if let Some(measured) = req.tdx_measure_acpi_tables {
            let want = if measured { "legacy" } else { "lite" };
            match vm.tdx_attestation_variant.as_deref() {
                Some(v) if v == want => {}
                got => refuse(
                    "requirements.tdx_measure_acpi_tables",
                    format!(
                        "{measured} needs vm_config.tdx_attestation_variant `{want}`; the VMM \
                         gave {}",
                        got.map_or_else(|| "none".to_owned(), |g| format!("`{g}`"))
                    ),
                ),
            }
        }
    }
    if compose.secure_time {
        refuse(
            "secure_time",
            "true (dstack's default) waits for NTS-authenticated time before keys are \
             requested, and this image has no NTS client; set `\"secure_time\": false` (the \
             host's clock is then trusted, as dstack does without it)"
                .to_owned(),
        );
    }
    if compose.init_scripts().iter().any(|s| !s.trim().is_empty()) {
        refuse(
            "init_script",
            "bash scripts cannot run: this image has no shell; do the setup in a service that \
             others depend on (`depends_on: {condition: service_completed_successfully}`)"
                .to_owned(),
        );
    }
    if compose
        .pre_launch_script
        .as_deref()
        .is_some_and(|s| !s.trim().is_empty())
    {
        refuse(
            "pre_launch_script",
            "bash scripts cannot run: this image has no shell; do the check in a service that \
             others depend on (`depends_on: {condition: service_completed_successfully}`)"
                .to_owned(),
        );
    }
    match compose.swap_size.as_ref().map(swap_bytes) {
        None | Some(Ok(0)) => {}
        Some(Ok(bytes)) => refuse(
            "swap_size",
            format!("{bytes} bytes of swap asked; this image has no swap support yet: set 0"),
        ),
        Some(Err(text)) => refuse("swap_size", format!("`{text}` is not a size")),
    }
    if !compose.verity_volumes.is_empty() {
        refuse(
            "verity_volumes",
            format!(
                "{} dm-verity data volume(s) asked; this image does not mount verity volumes \
                 yet: ship the data in an image pinned by digest",
                compose.verity_volumes.len()
            ),
        );
    }
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(GateError::Refused { refusals })
    }
}

/// Fields that are not gates and that this image does not honour yet, as console warnings:
/// dstack HEAD treats a failed gateway registration as non-fatal (a `boot.error`), so an app
/// that asks for the gateway boots, and says loudly that it is unreachable through it.
pub fn warnings(compose: &AppCompose) -> Vec<String> {
    let mut out = Vec::new();
    if compose.gateway_enabled || compose.features.iter().any(|f| f == "tproxy-net") {
        out.push(
            "gateway_enabled: this image does not register with dstack-gateway yet: the app \
             is NOT reachable through the gateway (only through the VM's own ports)"
                .to_owned(),
        );
    }
    if compose.port_policy.is_some() {
        out.push(
            "port_policy: no gateway registration, so no gateway port policy applies".to_owned(),
        );
    }
    out
}

/// `swap_size` in bytes: an integer, or a human size (`512M`, `1G`, `2GiB`, `1.5G` is not
/// accepted); the unparseable text as the error.
fn swap_bytes(size: &SwapSize) -> Result<u64, String> {
    let text = match size {
        SwapSize::Bytes(b) => return Ok(*b),
        SwapSize::Human(t) => t.trim(),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| text.to_owned())?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(text.to_owned()),
    };
    n.checked_mul(1 << shift).ok_or_else(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compose(extra: serde_json::Value) -> AppCompose {
        let mut v = serde_json::json!({
            "manifest_version": "3",
            "name": "gates",
            "runner": "docker-compose",
            "docker_compose_file": "services: {}\n",
            "secure_time": false,
        });
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        AppCompose::parse(&serde_json::to_vec(&v).unwrap()).unwrap()
    }

    fn refused(extra: serde_json::Value, vm: &VmConfig) -> Vec<&'static str> {
        match check(&compose(extra), vm, &IMAGE_FACTS) {
            Ok(()) => Vec::new(),
            Err(GateError::Refused { refusals }) => refusals.iter().map(|r| r.field).collect(),
        }
    }

    #[test]
    fn a_plain_app_passes() {
        assert_eq!(
            refused(serde_json::json!({}), &VmConfig::default()),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn requirements_are_checked_against_the_image_and_the_vm() {
        let vm = VmConfig {
            tdx_attestation_variant: Some("lite".into()),
            ..VmConfig::default()
        };
        let ok = serde_json::json!({"requirements": {
            "os_version": ">=0.5.4, <0.6",
            "platforms": ["dstack-tdx", "dstack-sev"],
            "tdx_measure_acpi_tables": false,
        }});
        assert_eq!(refused(ok, &vm), Vec::<&str>::new());
        let bad = serde_json::json!({"requirements": {
            "os_version": ">=0.6",
            "platforms": ["dstack-gcp-tdx"],
            "tdx_measure_acpi_tables": true,
        }});
        assert_eq!(
            refused(bad, &vm),
            [
                "requirements.os_version",
                "requirements.platforms",
                "requirements.tdx_measure_acpi_tables"
            ]
        );
        // No variant from the VMM: the ACPI gate cannot hold.
        let acpi = serde_json::json!({"requirements": {"tdx_measure_acpi_tables": false}});
        assert_eq!(
            refused(acpi, &VmConfig::default()),
            ["requirements.tdx_measure_acpi_tables"]
        );
        let garbage = serde_json::json!({"requirements": {"os_version": "not semver"}});
        assert_eq!(refused(garbage, &vm), ["requirements.os_version"]);
    }

    #[test]
    fn fields_this_image_does_not_do_are_refused_by_name_all_at_once() {
        let app = serde_json::json!({
            "secure_time": true,
            "init_script": ["echo one", "echo two"],
            "pre_launch_script": "docker ps",
            "swap_size": "1G",
            "verity_volumes": [{"source": "d.img", "verity_root": "00", "target": "/d"}],
        });
        let err = check(&compose(app), &VmConfig::default(), &IMAGE_FACTS).unwrap_err();
        let GateError::Refused { refusals } = &err;
        let fields: Vec<_> = refusals.iter().map(|r| r.field).collect();
        assert_eq!(
            fields,
            [
                "secure_time",
                "init_script",
                "pre_launch_script",
                "swap_size",
                "verity_volumes"
            ]
        );
        let text = err.to_string();
        assert!(
            text.contains("no NTS client") && text.contains("1073741824 bytes"),
            "{text}"
        );
        // Blank scripts and a zero swap are nothing to refuse.
        let blank = serde_json::json!({
            "pre_launch_script": "  \n",
            "init_script": "",
            "swap_size": 0,
        });
        assert_eq!(refused(blank, &VmConfig::default()), Vec::<&str>::new());
        // secure_time defaults to true, as in dstack.
        let mut v: serde_json::Value =
            serde_json::json!({"manifest_version": 2, "name": "d", "runner": "docker-compose"});
        v["docker_compose_file"] = "services: {}\n".into();
        let default = AppCompose::parse(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(check(&default, &VmConfig::default(), &IMAGE_FACTS).is_err());
    }

    #[test]
    fn gateway_asks_are_warned_not_refused() {
        assert!(warnings(&compose(serde_json::json!({}))).is_empty());
        let w = warnings(&compose(serde_json::json!({"gateway_enabled": true})));
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("NOT reachable"));
        let w = warnings(&compose(serde_json::json!({"features": ["tproxy-net"]})));
        assert_eq!(w.len(), 1);
        check(
            &compose(serde_json::json!({"gateway_enabled": true})),
            &VmConfig::default(),
            &IMAGE_FACTS,
        )
        .unwrap();
    }

    #[test]
    fn swap_sizes() {
        for (text, want) in [
            ("0", Ok(0)),
            ("512M", Ok(512 << 20)),
            ("2GiB", Ok(2 << 30)),
            ("1 g", Ok(1 << 30)),
            ("4096", Ok(4096)),
            ("1.5G", Err("1.5G".to_owned())),
            ("lots", Err("lots".to_owned())),
            ("99999999999T", Err("99999999999T".to_owned())),
        ] {
            assert_eq!(swap_bytes(&SwapSize::Human(text.into())), want, "{text}");
        }
        assert_eq!(swap_bytes(&SwapSize::Bytes(7)), Ok(7));
    }
}
