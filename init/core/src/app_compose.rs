//! dstack's `app-compose.json` and `.sys-config.json` (`shared/specs/dstack-guest.md` §1.1, §2.1).
//!
//! The compose-hash is taken over the exact file bytes ([`crate::identity`]), never over a
//! re-encoding, so [`AppComposeFile`] keeps the bytes next to the parsed form. Keys this parser
//! does not know are kept in `extra` (dstack ignores them too, but they are covered by the hash).

use std::collections::BTreeMap;

use measure::runtime_event::EventLogVersion;
use serde::Deserialize;
use serde_json::Value;

/// Highest `manifest_version` the guest accepts.
pub const MAX_MANIFEST_VERSION: u32 = 3;
/// Most `init_script` entries allowed.
pub const MAX_INIT_SCRIPTS: usize = 5;

/// Errors of parsing and checking app-compose.json and .sys-config.json.
#[derive(Debug, thiserror::Error)]
pub enum AppComposeError {
    /// app-compose.json is not valid JSON or does not match the schema.
    #[error("parse app-compose.json")]
    ParseAppCompose {
        #[source]
        source: serde_json::Error,
    },
    /// `manifest_version` is not 1, 2 or a positive integer string up to "3".
    #[error("unsupported manifest_version {value}")]
    UnsupportedManifestVersion { value: String },
    /// A field needs a newer manifest version.
    #[error("{field} needs manifest_version 3, file has {version}")]
    FieldNeedsManifestV3 { field: &'static str, version: u32 },
    /// More `init_script` entries than allowed.
    #[error("{count} init scripts, at most 5 are allowed")]
    TooManyInitScripts { count: usize },
    /// `snapshotter` given for a runner other than nerdctl-compose.
    #[error("snapshotter is only valid with the nerdctl-compose runner")]
    SnapshotterWithoutNerdctl,
    /// `key_provider_id` must be empty for the `none` and `tpm` providers.
    #[error("key_provider_id must be empty for key provider {provider}")]
    KeyProviderIdNotAllowed { provider: &'static str },
    /// `require_pinned_kms` is set but the KMS key provider has no `key_provider_id`.
    #[error(
        "require_pinned_kms is set but key_provider_id is empty: the host could choose the KMS"
    )]
    UnpinnedKmsRefused,
    /// `event_log_version` is neither 1 nor 2.
    #[error("unsupported event_log_version {version}")]
    UnsupportedEventLogVersion { version: u64 },
    /// .sys-config.json is not valid JSON or does not match the schema.
    #[error("parse .sys-config.json")]
    ParseSysConfig {
        #[source]
        source: serde_json::Error,
    },
    /// The `vm_config` string inside .sys-config.json is not a valid VmConfig document.
    #[error("parse vm_config in .sys-config.json")]
    ParseVmConfig {
        #[source]
        source: serde_json::Error,
    },
    /// `.instance_info` is not valid JSON or has malformed hex fields.
    #[error("parse .instance_info")]
    ParseInstanceInfo {
        #[source]
        source: serde_json::Error,
    },
    /// A hex field of `.instance_info` is not hex.
    #[error("field {field} of .instance_info is not hex")]
    InstanceInfoHex {
        field: &'static str,
        #[source]
        source: hex::FromHexError,
    },
}

/// The workload runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Runner {
    /// `docker compose up`.
    #[serde(rename = "docker-compose")]
    DockerCompose,
    /// `nerdctl compose up` (manifest v3).
    #[serde(rename = "nerdctl-compose")]
    NerdctlCompose,
    /// `bash_script` piped to bash.
    #[serde(rename = "bash")]
    Bash,
}

/// The key provider selected by `key_provider` or the legacy booleans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyProviderKind {
    /// No key provider (keys generated in the guest).
    None,
    /// dstack KMS.
    Kms,
    /// SGX local key provider.
    Local,
    /// TPM-sealed keys.
    Tpm,
}

impl KeyProviderKind {
    /// The lowercase name used in app-compose.json.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Kms => "kms",
            Self::Local => "local",
            Self::Tpm => "tpm",
        }
    }
}

/// Whether app-compose pins the KMS it takes its keys from ([`AppCompose::kms_pin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsPin {
    /// The key provider is not a KMS.
    NoKms,
    /// A KMS pinned by `key_provider_id` (the KMS root CA's SPKI).
    Pinned,
    /// A KMS with an empty `key_provider_id`: whoever serves `kms_urls` (the host) chooses
    /// the KMS and learns the disk key and every `GetKey` output.
    Unpinned,
}

/// Data-disk filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageFs {
    /// ZFS (dstack's default).
    #[default]
    Zfs,
    /// ext4.
    Ext4,
}

impl StorageFs {
    /// The ASCII name, also the `storage-fs` event payload.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zfs => "zfs",
            Self::Ext4 => "ext4",
        }
    }
}

/// `init_script`: one script or a list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum InitScripts {
    /// A single script.
    One(String),
    /// Several scripts, run in order.
    Many(Vec<String>),
}

impl InitScripts {
    /// The scripts in order.
    pub fn scripts(&self) -> Vec<&str> {
        match self {
            Self::One(s) => vec![s.as_str()],
            Self::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// `swap_size`: bytes, or a human size such as `"1G"` (kept as given).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SwapSize {
    /// Bytes.
    Bytes(u64),
    /// Human-readable size.
    Human(String),
}

/// One entry of `port_policy.ports`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PortRule {
    /// Port number.
    pub port: u16,
    /// Proxy-protocol flag.
    #[serde(default)]
    pub pp: bool,
}

/// `port_policy` (gateway).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct PortPolicy {
    /// Port rules.
    #[serde(default)]
    pub ports: Vec<PortRule>,
    /// Only listed ports are reachable.
    #[serde(default)]
    pub restrict_mode: bool,
}

/// `requirements` (manifest v3; unknown keys are rejected as dstack does).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// semver requirement on the OS `VERSION_ID`.
    #[serde(default)]
    pub os_version: Option<String>,
    /// Accepted platforms, e.g. `dstack-tdx`.
    #[serde(default)]
    pub platforms: Option<Vec<String>>,
    /// Must match `vm_config.tdx_attestation_variant` (true ⇔ legacy).
    #[serde(default)]
    pub tdx_measure_acpi_tables: Option<bool>,
    /// SHA-256 of the launch token (hex).
    #[serde(default)]
    pub launch_token_hash: Option<String>,
    /// GPU policy; the raw value is hashed for `gpu-policy-hash` and interpreted by
    /// `nv_verify::policy::GpuPolicy` (the one typed reading of it).
    #[serde(default)]
    pub gpu_policy: Option<Value>,
}

/// One `verity_volumes` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VerityVolume {
    /// Image file name.
    pub source: String,
    /// dm-verity root hash (hex).
    pub verity_root: String,
    /// Absolute mount point.
    pub target: String,
}

/// The raw `manifest_version` value: legacy number or canonical string.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
enum RawManifestVersion {
    Number(u64),
    Text(String),
}

fn default_true() -> bool {
    true
}

/// The parsed app-compose.json (`AppCompose` in dstack-types).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AppCompose {
    manifest_version: RawManifestVersion,
    /// App name.
    pub name: String,
    /// Runner; dstack's default is docker-compose.
    #[serde(default)]
    pub runner: Option<Runner>,
    /// docker-compose YAML text.
    #[serde(default)]
    pub docker_compose_file: Option<String>,
    /// Script for the bash runner.
    #[serde(default)]
    pub bash_script: Option<String>,
    /// Script sourced after the container engine started.
    #[serde(default)]
    pub pre_launch_script: Option<String>,
    /// Scripts sourced before the container engine starts.
    #[serde(default)]
    pub init_script: Option<InitScripts>,
    /// nerdctl snapshotter (`overlayfs` | `stargz`).
    #[serde(default)]
    pub snapshotter: Option<String>,
    /// Deprecated feature list (`"tproxy-net"` ⇒ gateway).
    #[serde(default)]
    pub features: Vec<String>,
    /// Legacy selector of the KMS key provider.
    #[serde(default)]
    pub kms_enabled: bool,
    /// dstack-gateway registration.
    #[serde(default, alias = "tproxy_enabled")]
    pub gateway_enabled: bool,
    /// cvm-init extension: a failed gateway registration stops the boot (dstack HEAD reports
    /// it as `boot.error` and goes on, which is the default). dstack ignores the key; the
    /// compose-hash covers it.
    #[serde(default)]
    pub require_gateway: bool,
    /// Legacy selector of the SGX local key provider.
    #[serde(default)]
    pub local_key_provider_enabled: bool,
    /// Key provider (overrides the booleans).
    #[serde(default)]
    pub key_provider: Option<KeyProviderKind>,
    /// Key provider pin (hex): KMS root-CA SPKI DER or MRENCLAVE.
    #[serde(default)]
    pub key_provider_id: String,
    /// cvm-init only: refuse to boot when the KMS key provider is not pinned by
    /// `key_provider_id` ([`KmsPin::Unpinned`]). dstack ignores the key; it is covered by the
    /// compose-hash like every other byte of the file.
    #[serde(default)]
    pub require_pinned_kms: bool,
    /// cvm-init extension: compose services may set `privileged: true` (every capability
    /// and device, no seccomp). Off by default: such a service is refused.
    #[serde(default)]
    pub allow_privileged: bool,
    /// cvm-init extension: the SHA-256 (hex) the `.encrypted-env` file must have; a missing
    /// or different file stops the boot before keys are requested. Only usable when the app id
    /// does not follow from this file's hash (a KMS or `.instance_info` app id), since the env
    /// is encrypted to a key of the app id.
    #[serde(default)]
    pub encrypted_env_sha256: Option<String>,
    /// Expose logs through the guest agent.
    #[serde(default)]
    pub public_logs: bool,
    /// Expose system info through the guest agent.
    #[serde(default)]
    pub public_sysinfo: bool,
    /// Expose app-compose and TCB info on the external Info API.
    #[serde(default = "default_true")]
    pub public_tcbinfo: bool,
    /// Allow-list of decrypted environment variable names.
    #[serde(default)]
    pub allowed_envs: Vec<String>,
    /// Emit an empty instance-id.
    #[serde(default)]
    pub no_instance_id: bool,
    /// Wait for NTS time sync before requesting keys.
    #[serde(default = "default_true")]
    pub secure_time: bool,
    /// Data-disk filesystem.
    #[serde(default)]
    pub storage_fs: Option<StorageFs>,
    /// cvm-init extension: a data disk that was initialised before (a first format that did
    /// not finish, a volume header that is blank or replayed) may be formatted again, losing
    /// its data; the boot measures `disk-formatted` `again`. Off by default: such a disk
    /// stops the boot (dstack has no such field; it formats silently).
    #[serde(default)]
    pub allow_disk_reformat: bool,
    /// Swap size.
    #[serde(default)]
    pub swap_size: Option<SwapSize>,
    /// RTMR3 event digest format (1 when omitted).
    #[serde(default)]
    event_log_version: Option<u64>,
    /// Gateway port policy.
    #[serde(default)]
    pub port_policy: Option<PortPolicy>,
    /// Guest-enforced gates (manifest v3).
    #[serde(default)]
    pub requirements: Option<Requirements>,
    /// Read-only dm-verity data volumes.
    #[serde(default)]
    pub verity_volumes: Vec<VerityVolume>,
    /// Legacy top-level launch token hash (checked by the VMM UI's pre-launch script only).
    #[serde(default)]
    pub launch_token_hash: Option<String>,
    /// Keys this parser does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl AppCompose {
    /// Parses and checks app-compose.json: manifest version, v3-only fields, init-script count,
    /// snapshotter, key-provider pin and event-log version (`dstack-guest.md` §1.5 step 1; the
    /// checks that need the OS version or the VM config are left to their stages).
    pub fn parse(bytes: &[u8]) -> Result<Self, AppComposeError> {
        let compose: Self = serde_json::from_slice(bytes)
            .map_err(|source| AppComposeError::ParseAppCompose { source })?;
        compose.check()?;
        Ok(compose)
    }

    fn check(&self) -> Result<(), AppComposeError> {
        let version = self.manifest_version()?;
        let needs_v3 = |field, needed: bool| {
            if needed && version < 3 {
                Err(AppComposeError::FieldNeedsManifestV3 { field, version })
            } else {
                Ok(())
            }
        };
        needs_v3("requirements", self.requirements.is_some())?;
        needs_v3(
            "runner nerdctl-compose",
            self.runner == Some(Runner::NerdctlCompose),
        )?;
        let scripts = self.init_scripts().len();
        needs_v3("more than one init_script", scripts > 1)?;
        if scripts > MAX_INIT_SCRIPTS {
            return Err(AppComposeError::TooManyInitScripts { count: scripts });
        }
        if self.snapshotter.is_some() && self.runner != Some(Runner::NerdctlCompose) {
            return Err(AppComposeError::SnapshotterWithoutNerdctl);
        }
        let provider = self.key_provider_kind();
        if matches!(provider, KeyProviderKind::None | KeyProviderKind::Tpm)
            && !self.key_provider_id.is_empty()
        {
            return Err(AppComposeError::KeyProviderIdNotAllowed {
                provider: provider.as_str(),
            });
        }
        self.check_kms_pin()?;
        self.event_log_version()?;
        Ok(())
    }

    /// Whether the key provider is a KMS and `key_provider_id` pins it.
    pub fn kms_pin(&self) -> KmsPin {
        match self.key_provider_kind() {
            KeyProviderKind::Kms if self.key_provider_id.is_empty() => KmsPin::Unpinned,
            KeyProviderKind::Kms => KmsPin::Pinned,
            _ => KmsPin::NoKms,
        }
    }

    /// The boot's decision on the pin: an unpinned KMS is refused when `require_pinned_kms`
    /// is set, and otherwise goes on with a warning (console and the `key-provider-unpinned`
    /// RTMR3 event, extended by the keys stage).
    pub fn check_kms_pin(&self) -> Result<KmsPin, AppComposeError> {
        match self.kms_pin() {
            KmsPin::Unpinned if self.require_pinned_kms => Err(AppComposeError::UnpinnedKmsRefused),
            pin => Ok(pin),
        }
    }

    /// The manifest version: legacy numbers 1 and 2, or a canonical positive integer string
    /// up to "3" (a number ≥ 3 is rejected, as dstack does).
    pub fn manifest_version(&self) -> Result<u32, AppComposeError> {
        let unsupported = |value: String| AppComposeError::UnsupportedManifestVersion { value };
        match &self.manifest_version {
            RawManifestVersion::Number(n @ (1 | 2)) => Ok(u32::try_from(*n).unwrap_or(2)),
            RawManifestVersion::Number(n) => Err(unsupported(n.to_string())),
            RawManifestVersion::Text(text) => {
                let canonical = !text.is_empty()
                    && !text.starts_with('0')
                    && text.bytes().all(|b| b.is_ascii_digit());
                match text.parse::<u32>() {
                    Ok(v) if canonical && (1..=MAX_MANIFEST_VERSION).contains(&v) => Ok(v),
                    _ => Err(unsupported(format!("{text:?}"))),
                }
            }
        }
    }

    /// The init scripts in order (empty when absent).
    pub fn init_scripts(&self) -> Vec<&str> {
        self.init_script
            .as_ref()
            .map(InitScripts::scripts)
            .unwrap_or_default()
    }

    /// The effective key provider: `key_provider` if present, else the legacy booleans.
    pub fn key_provider_kind(&self) -> KeyProviderKind {
        match self.key_provider {
            Some(kind) => kind,
            None if self.kms_enabled => KeyProviderKind::Kms,
            None if self.local_key_provider_enabled => KeyProviderKind::Local,
            None => KeyProviderKind::None,
        }
    }

    /// The RTMR3 event digest format.
    pub fn event_log_version(&self) -> Result<EventLogVersion, AppComposeError> {
        match self.event_log_version {
            None | Some(1) => Ok(EventLogVersion::V1),
            Some(2) => Ok(EventLogVersion::V2),
            Some(version) => Err(AppComposeError::UnsupportedEventLogVersion { version }),
        }
    }

    /// The data-disk filesystem (`zfs` when absent).
    pub fn storage_fs(&self) -> StorageFs {
        self.storage_fs.unwrap_or_default()
    }

    /// The runner (`docker-compose` when absent).
    pub fn runner(&self) -> Runner {
        self.runner.unwrap_or(Runner::DockerCompose)
    }
}

/// app-compose.json as delivered: the exact bytes (for the compose-hash) and the parsed form.
#[derive(Debug, Clone, PartialEq)]
pub struct AppComposeFile {
    bytes: Vec<u8>,
    compose: AppCompose,
}

impl AppComposeFile {
    /// Parses `bytes`, keeping them unchanged.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, AppComposeError> {
        let compose = AppCompose::parse(&bytes)?;
        Ok(Self { bytes, compose })
    }

    /// The exact file bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The parsed document.
    pub fn compose(&self) -> &AppCompose {
        &self.compose
    }
}

/// `vm_config` (a JSON document carried as a string inside .sys-config.json).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct VmConfig {
    /// SHA-256 of the OS image's digest file (hex).
    #[serde(default)]
    pub os_image_hash: Option<String>,
    /// vCPU count.
    #[serde(default)]
    pub cpu_count: Option<u32>,
    /// Memory in bytes.
    #[serde(default)]
    pub memory_size: Option<u64>,
    /// QEMU version string.
    #[serde(default)]
    pub qemu_version: Option<String>,
    /// 64-bit PCI hole size.
    #[serde(default)]
    pub pci_hole64_size: Option<u64>,
    /// Hugepage backing.
    #[serde(default)]
    pub hugepages: Option<bool>,
    /// GPU count.
    #[serde(default)]
    pub num_gpus: Option<u32>,
    /// NVSwitch count.
    #[serde(default)]
    pub num_nvswitches: Option<u32>,
    /// NIC count (omitted when 1).
    #[serde(default)]
    pub num_nics: Option<u32>,
    /// dm-verity data volume count.
    #[serde(default)]
    pub num_verity_volumes: Option<u32>,
    /// Software TPM attached.
    #[serde(default)]
    pub swtpm: Option<bool>,
    /// CPU/memory hotplug disabled.
    #[serde(default)]
    pub hotplug_off: Option<bool>,
    /// OS image name.
    #[serde(default)]
    pub image: Option<String>,
    /// `9p`, `vhd` or `vvfat`.
    #[serde(default)]
    pub host_share_mode: Option<String>,
    /// OVMF build variant.
    #[serde(default)]
    pub ovmf_variant: Option<String>,
    /// `legacy` (ACPI tables measured) or `lite`.
    #[serde(default)]
    pub tdx_attestation_variant: Option<String>,
    /// TDX measurement inputs (opaque here).
    #[serde(default)]
    pub tdx_measurement: Option<Value>,
    /// GCP measurement inputs (opaque here).
    #[serde(default)]
    pub gcp_measurement: Option<Value>,
    /// AWS measurement inputs (opaque here).
    #[serde(default)]
    pub aws_measurement: Option<Value>,
    /// Schema version.
    #[serde(default)]
    pub spec_version: Option<u32>,
    /// Keys this parser does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct RawSysConfig {
    #[serde(default)]
    kms_urls: Vec<String>,
    #[serde(default, alias = "tproxy_urls")]
    gateway_urls: Vec<String>,
    #[serde(default)]
    pccs_url: Option<String>,
    #[serde(default)]
    collateral_urls: Option<Value>,
    #[serde(default)]
    nvidia_attestation_proxy_url: Option<String>,
    #[serde(default)]
    docker_registry: Option<String>,
    #[serde(default)]
    host_api_url: Option<String>,
    vm_config: String,
    #[serde(default)]
    mr_config: Option<String>,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

/// The parsed `.sys-config.json` (`SysConfig` in dstack-types).
#[derive(Debug, Clone, PartialEq)]
pub struct SysConfig {
    /// KMS URLs, tried in order.
    pub kms_urls: Vec<String>,
    /// dstack-gateway URLs (`tproxy_urls` accepted).
    pub gateway_urls: Vec<String>,
    /// PCCS URL for collateral.
    pub pccs_url: Option<String>,
    /// Collateral URLs object (opaque).
    pub collateral_urls: Option<Value>,
    /// NVIDIA attestation proxy.
    pub nvidia_attestation_proxy_url: Option<String>,
    /// Docker registry mirror.
    pub docker_registry: Option<String>,
    /// Host API URL (`vsock://2:<port>/api`).
    pub host_api_url: Option<String>,
    /// The `vm_config` string exactly as given (sent to the KMS verbatim).
    pub vm_config_raw: String,
    /// The parsed `vm_config`.
    pub vm_config: VmConfig,
    /// The MrConfigV3 JCS document, if any.
    pub mr_config: Option<String>,
    /// Keys this parser does not know.
    pub extra: BTreeMap<String, Value>,
}

impl SysConfig {
    /// Parses .sys-config.json, including the `vm_config` JSON string.
    pub fn parse(bytes: &[u8]) -> Result<Self, AppComposeError> {
        let raw: RawSysConfig = serde_json::from_slice(bytes)
            .map_err(|source| AppComposeError::ParseSysConfig { source })?;
        let vm_config = serde_json::from_str(&raw.vm_config)
            .map_err(|source| AppComposeError::ParseVmConfig { source })?;
        Ok(Self {
            kms_urls: raw.kms_urls,
            gateway_urls: raw.gateway_urls,
            pccs_url: raw.pccs_url,
            collateral_urls: raw.collateral_urls,
            nvidia_attestation_proxy_url: raw.nvidia_attestation_proxy_url,
            docker_registry: raw.docker_registry,
            host_api_url: raw.host_api_url,
            vm_config_raw: raw.vm_config,
            vm_config,
            mr_config: raw.mr_config,
            extra: raw.extra,
        })
    }
}

#[derive(Deserialize)]
struct RawInstanceInfo {
    #[serde(default)]
    app_id: String,
    #[serde(default)]
    instance_id_seed: String,
    #[serde(default)]
    instance_id: String,
}

/// `.instance_info`: what the host remembers about this instance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InstanceInfo {
    /// Pinned app-id (empty = derive from the compose-hash).
    pub app_id: Vec<u8>,
    /// Seed of the instance-id (empty = generate).
    pub instance_id_seed: Vec<u8>,
    /// The instance-id reported last boot (informational).
    pub instance_id: Vec<u8>,
}

impl InstanceInfo {
    /// Parses `.instance_info` (`{"app_id":hex,"instance_id_seed":hex,"instance_id":hex}`, every
    /// field optional).
    pub fn parse(bytes: &[u8]) -> Result<Self, AppComposeError> {
        let raw: RawInstanceInfo = serde_json::from_slice(bytes)
            .map_err(|source| AppComposeError::ParseInstanceInfo { source })?;
        let decode = |field, text: &str| {
            hex::decode(text).map_err(|source| AppComposeError::InstanceInfoHex { field, source })
        };
        Ok(Self {
            app_id: decode("app_id", &raw.app_id)?,
            instance_id_seed: decode("instance_id_seed", &raw.instance_id_seed)?,
            instance_id: decode("instance_id", &raw.instance_id)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKED: &str = include_str!("../testdata/compose-hash-worked-examples.json");

    fn worked_files() -> Vec<String> {
        let v: Value = serde_json::from_str(WORKED).unwrap();
        v["examples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["file_bytes_utf8"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn parses_worked_examples_identically() {
        let files = worked_files();
        let a = AppCompose::parse(files[0].as_bytes()).unwrap();
        let b = AppCompose::parse(files[1].as_bytes()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.manifest_version().unwrap(), 2);
        assert_eq!(a.name, "hello");
        assert_eq!(a.runner(), Runner::DockerCompose);
        assert_eq!(a.key_provider_kind(), KeyProviderKind::Kms);
        assert!(!a.secure_time);
        assert!(a.public_tcbinfo);
        assert_eq!(a.allowed_envs, vec!["API_KEY"]);
        assert_eq!(a.event_log_version().unwrap(), EventLogVersion::V1);
        assert_eq!(a.storage_fs(), StorageFs::Zfs);
        assert!(a.extra.is_empty());
    }

    #[test]
    fn unknown_fields_are_kept_and_bytes_preserved() {
        let text = br#"{"manifest_version":"3","name":"x","my_extension":{"a":[1,2]},"tproxy_enabled":true}"#;
        let file = AppComposeFile::parse(text.to_vec()).unwrap();
        assert_eq!(file.bytes(), text);
        let c = file.compose();
        assert_eq!(c.manifest_version().unwrap(), 3);
        assert!(c.gateway_enabled);
        assert_eq!(c.extra["my_extension"], serde_json::json!({"a":[1,2]}));
    }

    #[test]
    fn all_documented_fields_parse() {
        let text = r#"{
          "manifest_version": "3", "name": "full", "runner": "nerdctl-compose",
          "docker_compose_file": "services: {}", "bash_script": "echo", "pre_launch_script": "true",
          "init_script": ["a", "b"], "snapshotter": "stargz", "features": ["tproxy-net"],
          "kms_enabled": false, "gateway_enabled": true, "local_key_provider_enabled": false,
          "key_provider": "kms", "key_provider_id": "abcd", "public_logs": true,
          "public_sysinfo": true, "public_tcbinfo": false, "allowed_envs": ["A"],
          "no_instance_id": true, "secure_time": false, "storage_fs": "ext4", "swap_size": "1G",
          "event_log_version": 2,
          "port_policy": {"ports": [{"port": 443, "pp": true}], "restrict_mode": true},
          "requirements": {"os_version": ">=0.5", "platforms": ["dstack-tdx"],
             "tdx_measure_acpi_tables": false, "launch_token_hash": "00",
             "gpu_policy": {"attest_gpu": true}},
          "verity_volumes": [{"source": "v.img", "verity_root": "00", "target": "/data"}],
          "launch_token_hash": "11"
        }"#;
        let c = AppCompose::parse(text.as_bytes()).unwrap();
        assert_eq!(c.runner(), Runner::NerdctlCompose);
        assert_eq!(c.init_scripts(), vec!["a", "b"]);
        assert_eq!(c.key_provider_kind(), KeyProviderKind::Kms);
        assert_eq!(c.storage_fs(), StorageFs::Ext4);
        assert_eq!(c.swap_size, Some(SwapSize::Human("1G".into())));
        assert_eq!(c.event_log_version().unwrap(), EventLogVersion::V2);
        assert_eq!(c.port_policy.as_ref().unwrap().ports[0].port, 443);
        assert_eq!(c.verity_volumes[0].target, "/data");
        assert!(c.no_instance_id);
        assert!(!c.public_tcbinfo);
        assert!(c.extra.is_empty());
    }

    #[test]
    fn unpinned_kms_warns_or_is_refused() {
        let parse = |t: &str| AppCompose::parse(t.as_bytes());
        let pin = |t: &str| parse(t).unwrap().check_kms_pin().unwrap();
        assert_eq!(
            pin(r#"{"manifest_version":2,"name":"x","key_provider":"kms"}"#),
            KmsPin::Unpinned
        );
        // The legacy selector too.
        assert_eq!(
            pin(r#"{"manifest_version":2,"name":"x","kms_enabled":true}"#),
            KmsPin::Unpinned
        );
        assert_eq!(
            pin(r#"{"manifest_version":2,"name":"x","key_provider":"kms","key_provider_id":"ab"}"#),
            KmsPin::Pinned
        );
        assert_eq!(
            pin(r#"{"manifest_version":2,"name":"x","key_provider":"none"}"#),
            KmsPin::NoKms
        );
        // require_pinned_kms refuses only the unpinned KMS.
        assert!(matches!(
            parse(
                r#"{"manifest_version":2,"name":"x","key_provider":"kms","require_pinned_kms":true}"#
            ),
            Err(AppComposeError::UnpinnedKmsRefused)
        ));
        assert!(matches!(
            parse(
                r#"{"manifest_version":2,"name":"x","kms_enabled":true,"key_provider_id":"","require_pinned_kms":true}"#
            ),
            Err(AppComposeError::UnpinnedKmsRefused)
        ));
        let strict = parse(
            r#"{"manifest_version":2,"name":"x","key_provider":"kms","key_provider_id":"ab","require_pinned_kms":true}"#,
        )
        .unwrap();
        assert!(strict.require_pinned_kms);
        assert!(strict.extra.is_empty());
        assert_eq!(
            pin(
                r#"{"manifest_version":2,"name":"x","key_provider":"none","require_pinned_kms":true}"#
            ),
            KmsPin::NoKms
        );
        // Absent, the boot goes on (with the warning).
        assert!(
            !parse(r#"{"manifest_version":2,"name":"x"}"#)
                .unwrap()
                .require_pinned_kms
        );
    }

    #[test]
    fn policy_violations() {
        let err = |t: &str| AppCompose::parse(t.as_bytes()).unwrap_err();
        assert!(matches!(
            err(r#"{"manifest_version":3,"name":"x"}"#),
            AppComposeError::UnsupportedManifestVersion { .. }
        ));
        assert!(matches!(
            err(r#"{"manifest_version":"03","name":"x"}"#),
            AppComposeError::UnsupportedManifestVersion { .. }
        ));
        assert!(matches!(
            err(r#"{"manifest_version":"4","name":"x"}"#),
            AppComposeError::UnsupportedManifestVersion { .. }
        ));
        assert!(matches!(
            err(r#"{"manifest_version":2,"name":"x","requirements":{}}"#),
            AppComposeError::FieldNeedsManifestV3 {
                field: "requirements",
                version: 2
            }
        ));
        assert!(matches!(
            err(r#"{"manifest_version":2,"name":"x","init_script":["a","b"]}"#),
            AppComposeError::FieldNeedsManifestV3 { .. }
        ));
        assert!(matches!(
            err(r#"{"manifest_version":"3","name":"x","init_script":["1","2","3","4","5","6"]}"#),
            AppComposeError::TooManyInitScripts { count: 6 }
        ));
        assert!(matches!(
            err(r#"{"manifest_version":2,"name":"x","snapshotter":"stargz"}"#),
            AppComposeError::SnapshotterWithoutNerdctl
        ));
        assert!(matches!(
            err(r#"{"manifest_version":2,"name":"x","key_provider":"tpm","key_provider_id":"ab"}"#),
            AppComposeError::KeyProviderIdNotAllowed { provider: "tpm" }
        ));
        assert!(matches!(
            err(r#"{"manifest_version":2,"name":"x","event_log_version":3}"#),
            AppComposeError::UnsupportedEventLogVersion { version: 3 }
        ));
        assert!(matches!(
            err(r#"{"manifest_version":"3","name":"x","requirements":{"bogus":1}}"#),
            AppComposeError::ParseAppCompose { .. }
        ));
        assert!(matches!(
            err("{not json"),
            AppComposeError::ParseAppCompose { .. }
        ));
        assert!(matches!(
            err(r#"{"manifest_version":2}"#),
            AppComposeError::ParseAppCompose { .. }
        ));
    }

    #[test]
    fn sys_config_with_vm_config_string() {
        let fixture: Value =
            serde_json::from_str(include_str!("../testdata/tdx-lite-getquote.json")).unwrap();
        let vm_config = fixture["vm_config"].as_str().unwrap();
        let doc = serde_json::json!({
            "kms_urls": ["https://kms.example:8000"],
            "tproxy_urls": ["https://gw.example:8000"],
            "pccs_url": "https://pccs.example",
            "host_api_url": "vsock://2:10000/api",
            "vm_config": vm_config,
            "future_key": 1,
        });
        let s = SysConfig::parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(s.gateway_urls, vec!["https://gw.example:8000"]);
        assert_eq!(s.vm_config_raw, vm_config);
        assert_eq!(s.vm_config.cpu_count, Some(2));
        assert_eq!(s.vm_config.memory_size, Some(2_147_483_648));
        assert_eq!(s.vm_config.tdx_attestation_variant.as_deref(), Some("lite"));
        assert_eq!(
            s.vm_config.os_image_hash.as_deref(),
            Some("e6f5cfec20c02e7b97baa213d0f718020b55e040172d90ccbcb946d56c8b09db")
        );
        assert_eq!(s.extra["future_key"], 1);

        let bad = serde_json::json!({"vm_config": "{not json"});
        assert!(matches!(
            SysConfig::parse(bad.to_string().as_bytes()),
            Err(AppComposeError::ParseVmConfig { .. })
        ));
        assert!(matches!(
            SysConfig::parse(b"{}"),
            Err(AppComposeError::ParseSysConfig { .. })
        ));
    }

    #[test]
    fn instance_info() {
        let i = InstanceInfo::parse(br#"{"app_id":"0102"}"#).unwrap();
        assert_eq!(i.app_id, vec![1, 2]);
        assert!(i.instance_id_seed.is_empty());
        assert!(matches!(
            InstanceInfo::parse(br#"{"app_id":"zz"}"#),
            Err(AppComposeError::InstanceInfoHex {
                field: "app_id",
                ..
            })
        ));
    }
}
