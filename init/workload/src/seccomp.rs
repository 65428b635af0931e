//! Docker's default seccomp profile, as data (`data/seccomp-default.json`, provenance in
//! `data/README.md`), turned into the runtime spec's `linux.seccomp` for one container.
//!
//! The profile's conditional entries are resolved here as Docker resolves them for the
//! container: an entry applies when every capability in `includes.caps` is in the container's
//! set, its `includes.arches` is empty or names `amd64`, its `includes.minKernel` is at most the
//! oldest kernel the init runs on ([`KERNEL_FLOOR`]), and neither `excludes.caps` nor
//! `excludes.arches` matches. The default action is `SCMP_ACT_ERRNO` with EPERM. Architectures
//! are the native x86_64 and its sub-architectures (x86, x32), as in Docker's `archMap`.
//!
//! libcontainer 0.7 quirk (checked in its `seccomp/mod.rs`): for `SCMP_CMP_MASKED_EQ` it passes
//! `valueTwo` as the mask and `value` as the datum, the reverse of runc and of the profile
//! (`value` is the mask, `valueTwo` the expected value). The entries are swapped here, so the
//! clone rule (no namespace flags) works; without the swap every `clone` would be refused.

use serde::Deserialize;
use serde_json::{Value, json};

/// The profile as shipped by moby (see `data/README.md`).
pub const PROFILE: &str = include_str!("../data/seccomp-default.json");

/// The oldest kernel the init runs on (TDX guest support entered mainline in 5.19); profile
/// entries that need a newer one are left out, so their syscalls are refused.
pub const KERNEL_FLOOR: (u32, u32) = (5, 19);

/// Go's name for the native architecture, as the profile's `arches` lists use it.
const NATIVE_ARCH: &str = "amd64";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The embedded profile does not parse (a bad data update).
    #[error("parse the default seccomp profile")]
    ParseProfile(#[source] serde_json::Error),
    /// A `minKernel` is not `major.minor`.
    #[error("default seccomp profile: minKernel {value:?} is not major.minor")]
    ParseMinKernel {
        /// The value.
        value: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    syscalls: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    #[serde(default)]
    sub_architectures: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    names: Vec<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<Arg>>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

fn kernel_at_most_floor(value: &str) -> Result<bool, SeccompError> {
    let err = || SeccompError::ParseMinKernel {
        value: value.to_owned(),
    };
    let (major, minor) = value.split_once('.').ok_or_else(err)?;
    let major: u32 = major.parse().map_err(|_| err())?;
    let minor: u32 = minor.parse().map_err(|_| err())?;
    Ok((major, minor) <= KERNEL_FLOOR)
}

impl Entry {
    fn applies(&self, caps: &[&str]) -> Result<bool, SeccompError> {
        let has = |c: &String| caps.contains(&c.as_str());
        let native = |arches: &[String]| arches.iter().any(|a| a == NATIVE_ARCH);
        let kernel = match &self.includes.min_kernel {
            Some(v) => kernel_at_most_floor(v)?,
            None => true,
        };
        Ok(self.includes.caps.iter().all(has)
            && (self.includes.arches.is_empty() || native(&self.includes.arches))
            && kernel
            && !self.excludes.caps.iter().any(has)
            && !native(&self.excludes.arches))
    }
}

/// `linux.seccomp` for a container with capability set `caps` (`CAP_*` names), as JSON of
/// the runtime spec.
pub fn default_profile(caps: &[&str]) -> Result<Value, SeccompError> {
    let profile: Profile = serde_json::from_str(PROFILE).map_err(SeccompError::ParseProfile)?;
    let architectures: Vec<&str> = profile
        .arch_map
        .iter()
        .filter(|a| a.architecture == "SCMP_ARCH_X86_64")
        .flat_map(|a| {
            std::iter::once(a.architecture.as_str())
                .chain(a.sub_architectures.iter().map(String::as_str))
        })
        .collect();
    let mut syscalls = Vec::new();
    for entry in &profile.syscalls {
        if !entry.applies(caps)? {
            continue;
        }
        let mut rule = json!({"names": entry.names, "action": entry.action});
        if let Some(errno) = entry.errno_ret {
            rule["errnoRet"] = json!(errno);
        }
        if let Some(args) = entry.args.as_ref().filter(|a| !a.is_empty()) {
            let args: Vec<Value> = args
                .iter()
                .map(|a| {
                    // libcontainer 0.7 reads MASKED_EQ as (datum = value, mask = valueTwo).
                    let (value, value_two) = if a.op == "SCMP_CMP_MASKED_EQ" {
                        (a.value_two, a.value)
                    } else {
                        (a.value, a.value_two)
                    };
                    json!({"index": a.index, "value": value, "valueTwo": value_two, "op": a.op})
                })
                .collect();
            rule["args"] = json!(args);
        }
        syscalls.push(rule);
    }
    Ok(json!({
        "defaultAction": profile.default_action,
        // Docker's default for SCMP_ACT_ERRNO without an errno.
        "defaultErrnoRet": profile.default_errno_ret.unwrap_or(1),
        "architectures": architectures,
        "syscalls": syscalls,
    }))
}

#[cfg(test)]
mod tests;
