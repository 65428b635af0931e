//! The `keys` stage ([`run`]): app keys from the KMS over RA-TLS (`cvm_keys::stage::kms_stage`:
//! launch token, `key_provider_id` pin, MRCONFIGID, GetTempCaCert → RA-TLS client certificate →
//! GetAppKey, env decryption), the `os-image-hash` / `key-provider` events extended right away
//! through the measure stage's log, and `.appkeys.json` (0600) in the private host-share copy
//! for the guest API's `GetKey`. It hands on [`Keys`]: the key material (or none).
//!
//! Providers: `kms` (the KMS protocol; needs the network stage; unpinned, i.e. an empty
//! `key_provider_id`, it warns on the console and extends `key-provider-unpinned` first), `none` (dev only: no keys,
//! `key-provider` `{"name":"none"}` in RTMR3 so a verifier sees it, an encrypted env cannot be
//! decrypted and stops the boot). `local` (SGX) and `tpm` are refused: fail closed.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cvm_keys::env::{DecryptedEnv, DisallowedEnv};
use cvm_keys::kms::{AppKeys, RetryPolicy, ThreadSleeper};
use cvm_keys::stage::{KeyStageError, KmsStageInput, kms_stage};
use cvm_keys::transport::{ResolvConfResolver, TlsTransport};
use init_core::app_compose::{KeyProviderKind, KmsPin};
use init_core::host_share::HostShare;
use init_core::identity::AppIdentity;
use init_core::results::Record;
use init_core::tee::events::EventLogError;
use init_core::tee::{QuoteSource, RuntimeEvent};

use crate::results::Results;
use crate::stages::measure::Measured;
use crate::stages::network::Network;

/// Where the guest API finds the app keys (dstack's `.appkeys.json`), inside the 0700 tmpfs.
pub(crate) const APP_KEYS_FILE: &str = ".appkeys.json";

/// Errors of the keys stage.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeysStageError {
    #[error("key provider {kind} is not supported by this build")]
    UnsupportedProvider { kind: &'static str },
    #[error("key provider none: .encrypted-env cannot be decrypted without a KMS")]
    EnvWithoutKms,
    #[error("key provider kms: no network (the network stage found no interface or lease)")]
    NoNetwork,
    /// The KMS flow failed; its messages name the step (launch token, key request, MRCONFIGID,
    /// env), so this layer adds no segment of its own.
    #[error(transparent)]
    Kms(KeyStageError),
    #[error("emit RTMR3 events")]
    EmitEvents(#[source] EventLogError),
    #[error("write {path}")]
    WriteAppKeys {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The key material the stage hands on.
#[derive(Debug)]
pub(crate) enum Keys {
    /// Keys from a KMS (`os-image-hash` and `key-provider` are extended) and the decrypted,
    /// filtered environment.
    Kms {
        keys: Box<AppKeys>,
        env: DecryptedEnv,
    },
    /// Key provider `none`: no keys (dev only); `key-provider` is still to be extended.
    NoProvider,
}

impl Keys {
    /// The app keys (the data disk key among them), if a KMS gave them.
    pub(crate) fn app_keys(&self) -> Option<&AppKeys> {
        match self {
            Self::Kms { keys, .. } => Some(keys),
            Self::NoProvider => None,
        }
    }

    /// The decrypted environment for the workloads, if any.
    pub(crate) fn env(&self) -> Option<&DecryptedEnv> {
        match self {
            Self::Kms { env, .. } => Some(env),
            Self::NoProvider => None,
        }
    }

    /// Whether this stage already extended `key-provider` (and `os-image-hash`).
    pub(crate) fn extended_key_provider(&self) -> bool {
        matches!(self, Self::Kms { .. })
    }
}

/// Runs the stage: keys for `share`'s key provider, quoting through `measured`'s TEE and
/// extending the key events into its log; `network` is the network stage's lease (`None`
/// offline); `.appkeys.json` goes into `share_copy`.
pub(crate) fn run(
    share: &HostShare,
    measured: &mut Measured,
    network: Option<&Network>,
    share_copy: &Path,
    results: &mut Results,
) -> Result<Keys, KeysStageError> {
    let dns = network.map(|n| n.config.dns_servers.clone());
    let events = measured.log.events().to_vec();
    let outcome = fetch(
        share,
        &measured.identity,
        &events,
        measured.log.rtmr_mut(),
        dns,
        Some(measured.gpu_policy_hash),
    )?;
    let mono_us = init_sys::clock::monotonic_us();
    match outcome {
        KeysOutcome::Kms {
            keys,
            env,
            events,
            mr_config_version,
        } => {
            // Measure what the boot now trusts before anything uses the keys.
            measured
                .log
                .emit_plan(events)
                .map_err(KeysStageError::EmitEvents)?;
            let path = write_app_keys(share_copy, &keys)?;
            let names: Vec<String> = env.names().into_iter().map(str::to_owned).collect();
            log::info!(
                "keys: from {} (root key {}), {} env variable(s) accepted, MRCONFIGID v{}; app keys in {}",
                keys.kms_url,
                hex::encode(&keys.root_spki_der),
                names.len(),
                mr_config_version,
                path.display()
            );
            results.record(&Record::Keys {
                provider: "kms".into(),
                kms_url: keys.kms_url.clone(),
                key_provider_id: hex::encode(&keys.root_spki_der),
                env_names: names,
                mr_config_version,
                mono_us,
            });
            Ok(Keys::Kms { keys, env })
        }
        KeysOutcome::NoProvider => {
            results.record(&Record::Keys {
                provider: "none".into(),
                kms_url: String::new(),
                key_provider_id: String::new(),
                env_names: Vec::new(),
                mr_config_version: 0,
                mono_us,
            });
            Ok(Keys::NoProvider)
        }
    }
}

/// What the key provider produced.
#[derive(Debug)]
enum KeysOutcome {
    /// Keys from a KMS; `events` still have to be extended (in order).
    Kms {
        keys: Box<AppKeys>,
        env: DecryptedEnv,
        events: Vec<RuntimeEvent>,
        mr_config_version: u8,
    },
    /// Key provider `none`: no keys at all (dev only).
    NoProvider,
}

/// KMS host names resolve through cvm-keys' stub resolver (no glibc NSS in a static binary),
/// asking the DNS servers of the DHCP lease.
fn lease_resolver(dns: Vec<Ipv4Addr>) -> ResolvConfResolver {
    ResolvConfResolver {
        servers: dns
            .into_iter()
            .map(|ip| SocketAddr::new(IpAddr::V4(ip), init_core::net::dns::PORT))
            .collect(),
        per_query: Duration::from_secs(2),
        rounds: 3,
    }
}

/// Keys from `share`'s key provider. `events` is the RTMR3 log so far; `tee` quotes for the
/// RA-TLS certificate; `dns` is the lease's DNS servers (`None` without a network).
fn fetch<T: QuoteSource + ?Sized>(
    share: &HostShare,
    identity: &AppIdentity,
    events: &[RuntimeEvent],
    tee: &mut T,
    dns: Option<Vec<Ipv4Addr>>,
    gpu_policy_hash: Option<[u8; 32]>,
) -> Result<KeysOutcome, KeysStageError> {
    let kind = share.app_compose.compose().key_provider_kind();
    match kind {
        KeyProviderKind::None => {
            if share.encrypted_env.is_some() {
                return Err(KeysStageError::EnvWithoutKms);
            }
            cvm_keys::stage::check_launch_token_for(
                &share.app_compose,
                share.user_config.as_deref(),
            )
            .map_err(KeysStageError::Kms)?;
            log::warn!("key provider none: no app keys (development only; visible in RTMR3)");
            Ok(KeysOutcome::NoProvider)
        }
        KeyProviderKind::Kms => {
            if share.app_compose.compose().kms_pin() == KmsPin::Unpinned {
                // `require_pinned_kms` already refused this file in the host-share stage.
                log::warn!(
                    "WARNING: UNPINNED KMS: app-compose key_provider_id is empty, so whoever \
                     serves kms_urls (the host) chooses the KMS and can learn the disk key and \
                     every GetKey output; recorded in RTMR3 as {}. Pin the KMS root CA in \
                     key_provider_id (and set require_pinned_kms) for production.",
                    init_core::tee::events::names::KEY_PROVIDER_UNPINNED
                );
            }
            let dns = dns.ok_or(KeysStageError::NoNetwork)?;
            let mut transport = TlsTransport::new(Box::new(lease_resolver(dns)));
            let now_unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let input = KmsStageInput {
                compose: &share.app_compose,
                sys_config: &share.sys_config,
                identity,
                user_config: share.user_config.as_deref(),
                encrypted_env: share.encrypted_env.as_deref(),
                gpu_policy_hash,
                now_unix,
                retry: RetryPolicy::default(),
                disallowed_env: DisallowedEnv::Reject,
            };
            let out = kms_stage(&mut transport, tee, events, &input, &mut ThreadSleeper)
                .map_err(KeysStageError::Kms)?;
            Ok(KeysOutcome::Kms {
                keys: Box::new(out.keys),
                env: out.env,
                events: out.events,
                mr_config_version: out.mr_config_version,
            })
        }
        KeyProviderKind::Local | KeyProviderKind::Tpm => Err(KeysStageError::UnsupportedProvider {
            kind: kind.as_str(),
        }),
    }
}

/// Writes `.appkeys.json` (0600, created new) into `dir` for the guest API.
fn write_app_keys(dir: &Path, keys: &AppKeys) -> Result<PathBuf, KeysStageError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(APP_KEYS_FILE);
    let json = keys.to_appkeys_json();
    let write = || -> io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc_o_nofollow())
            .open(&path)?;
        file.write_all(json.expose().as_bytes())?;
        file.sync_all()
    };
    write().map_err(|source| KeysStageError::WriteAppKeys {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn libc_o_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_resolve_without_dns() {
        use cvm_keys::transport::Resolve as _;
        let r = lease_resolver(Vec::new());
        assert_eq!(
            r.resolve("10.0.2.2", 8000).unwrap(),
            [SocketAddr::from(([10, 0, 2, 2], 8000))]
        );
        assert_eq!(r.resolve("[::1]", 1).unwrap()[0].port(), 1);
        // A name needs a DNS server: a clear error, not a panic or a hang.
        let err = r.resolve("kms.example.com", 443).unwrap_err();
        assert!(err.to_string().contains("no DNS answer"), "{err}");
    }
}
