//! The `keys` boot stage as one call for PID 1 (`shared/specs/dstack-guest.md` §1.5 step 3,
//! §5, §5.7, §7): launch token → KMS key request (pin checked before the quote is sent) →
//! MRCONFIGID check → events to extend (`key-provider-unpinned` for an unpinned KMS,
//! `os-image-hash`, `key-provider`) → decrypted env.
//!
//! The caller extends [`KmsStageOutput::events`] into RTMR3 (through its event log) right after
//! this returns, then continues with `storage-fs` and the disk. Every failure is a
//! [`KeyStageError`] naming the step; none carries secret bytes.

use init_core::app_compose::{AppComposeFile, SysConfig};
use init_core::identity::AppIdentity;
use init_core::tee::{QuoteSource, RuntimeEvent};

use crate::env::{DecryptedEnv, DisallowedEnv, EnvError, LaunchTokenError, check_launch_token};
use crate::kms::{
    AppKeys, KeyRequest, KmsError, KmsTransport, RetryPolicy, Sleeper, request_app_keys,
};
use crate::provider::{LocalConfig, ProviderError, check_mr_config_id};

/// Errors of the keys stage.
#[derive(Debug, thiserror::Error)]
pub enum KeyStageError {
    /// app-compose selects another key provider than the KMS.
    #[error("app-compose selects key provider {kind}, not kms")]
    NotKmsProvider { kind: &'static str },
    /// The launch token is missing or wrong.
    #[error("check the launch token")]
    LaunchToken {
        #[source]
        source: LaunchTokenError,
    },
    /// No KMS gave keys.
    #[error("request app keys from the KMS")]
    RequestKeys {
        #[source]
        source: KmsError,
    },
    /// app-compose `key_provider_id` is not hex.
    #[error("decode app-compose key_provider_id")]
    DecodeKeyProviderId,
    /// Getting the TDREPORT for MRCONFIGID failed.
    #[error("read MRCONFIGID from a TDREPORT")]
    ReadMrConfigId {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// MRCONFIGID does not match this boot.
    #[error("check MRCONFIGID")]
    MrConfigId {
        #[source]
        source: ProviderError,
    },
    /// The encrypted env cannot be used.
    #[error("decrypt the environment")]
    DecryptEnv {
        #[source]
        source: EnvError,
    },
}

/// Inputs of the stage (all from init-core's host-share types).
#[derive(Debug, Clone)]
pub struct KmsStageInput<'a> {
    /// app-compose.json.
    pub compose: &'a AppComposeFile,
    /// .sys-config.json (`kms_urls`, `vm_config`, `mr_config`).
    pub sys_config: &'a SysConfig,
    /// The identity measured into RTMR3.
    pub identity: &'a AppIdentity,
    /// `.user-config` (launch token), if present.
    pub user_config: Option<&'a [u8]>,
    /// `.encrypted-env`, if present.
    pub encrypted_env: Option<&'a [u8]>,
    /// The `gpu-policy-hash` payload when this boot measured one (MRCONFIGID v3).
    pub gpu_policy_hash: Option<[u8; 32]>,
    /// "Now" (Unix seconds) for the client certificate.
    pub now_unix: u64,
    /// KMS retries.
    pub retry: RetryPolicy,
    /// Names outside `allowed_envs`: reject (default) or skip as dstack does.
    pub disallowed_env: DisallowedEnv,
}

/// What the stage produced.
#[derive(Debug)]
pub struct KmsStageOutput {
    /// The keys (write [`AppKeys::to_appkeys_json`] 0600 into the private tmpfs for the guest API).
    pub keys: AppKeys,
    /// To extend now, in order: `key-provider-unpinned` (unpinned KMS only), `os-image-hash`
    /// (if any), `key-provider` ([`key_events`]).
    pub events: Vec<RuntimeEvent>,
    /// The checked environment for the workloads (names may be reported, values never).
    pub env: DecryptedEnv,
    /// MRCONFIGID version checked (0 = all zero, not bound).
    pub mr_config_version: u8,
}

/// Runs the launch-token gate only (call it before anything slow; [`kms_stage`] calls it too).
pub fn check_launch_token_for(
    compose: &AppComposeFile,
    user_config: Option<&[u8]>,
) -> Result<(), KeyStageError> {
    let required = compose
        .compose()
        .requirements
        .as_ref()
        .and_then(|r| r.launch_token_hash.as_deref());
    check_launch_token(required, user_config)
        .map_err(|source| KeyStageError::LaunchToken { source })
}

/// The whole stage for the KMS key provider. `events` is the RTMR3 log so far (ending with
/// `boot-mr-done`, the simulated TEE's marker first when there is one); `tee` quotes for the
/// RA-TLS certificate and gives the TDREPORT whose MRCONFIGID is checked.
pub fn kms_stage<T: QuoteSource + ?Sized>(
    transport: &mut dyn KmsTransport,
    tee: &mut T,
    events: &[RuntimeEvent],
    input: &KmsStageInput<'_>,
    sleeper: &mut dyn Sleeper,
) -> Result<KmsStageOutput, KeyStageError> {
    let compose = input.compose.compose();
    let kind = compose.key_provider_kind();
    if kind != init_core::app_compose::KeyProviderKind::Kms {
        return Err(KeyStageError::NotKmsProvider {
            kind: kind.as_str(),
        });
    }
    check_launch_token_for(input.compose, input.user_config)?;
    let key_provider_id =
        hex::decode(&compose.key_provider_id).map_err(|_| KeyStageError::DecodeKeyProviderId)?;
    // MRCONFIGID before any key: a TD launched for another configuration stops here.
    let report = tee
        .report(&[0; init_core::tee::REPORT_DATA_LEN])
        .map_err(|e| KeyStageError::ReadMrConfigId {
            source: Box::new(e),
        })?;
    let report =
        measure::tdreport::TdReport::parse(&report).map_err(|e| KeyStageError::ReadMrConfigId {
            source: Box::new(e),
        })?;
    let instance_id = input
        .identity
        .instance_id
        .map(|i| i.0.to_vec())
        .unwrap_or_default();
    let local = LocalConfig {
        compose_hash: input.identity.compose_hash.0,
        app_id: input.identity.app_id.0,
        key_provider: compose.key_provider_kind(),
        key_provider_id: &key_provider_id,
        instance_id: &instance_id,
        gpu_policy_hash: input.gpu_policy_hash,
        mr_config_document: input.sys_config.mr_config.as_deref(),
    };
    let mr_config_version = check_mr_config_id(&report.td_info.mr_config_id.0, &local)
        .map_err(|source| KeyStageError::MrConfigId { source })?;
    let version = compose.event_log_version().unwrap_or_default();
    let request = KeyRequest {
        kms_urls: &input.sys_config.kms_urls,
        vm_config: &input.sys_config.vm_config_raw,
        key_provider_id: &compose.key_provider_id,
        now_unix: input.now_unix,
        retry: input.retry,
    };
    let quote_source: &mut dyn QuoteSource = &mut AsQuoteSource(tee);
    let keys = request_app_keys(transport, quote_source, events, &request, sleeper)
        .map_err(|source| KeyStageError::RequestKeys { source })?;
    let env = match (&keys.env_crypt_key, input.encrypted_env) {
        (Some(key), blob) => {
            crate::env::decrypt_env(key, blob, &compose.allowed_envs, input.disallowed_env)
                .map_err(|source| KeyStageError::DecryptEnv { source })?
        }
        (None, None) => DecryptedEnv::default(),
        (None, Some(_)) => {
            return Err(KeyStageError::DecryptEnv {
                source: EnvError::DecryptEnv,
            });
        }
    };
    Ok(KmsStageOutput {
        events: key_events(compose, &keys, version),
        keys,
        env,
        mr_config_version,
    })
}

/// The events to extend after `GetAppKey`: `key-provider-unpinned` first when app-compose
/// does not pin the KMS ([`init_core::app_compose::KmsPin::Unpinned`]), then the KMS's
/// `os-image-hash` (if any) and `key-provider`.
pub fn key_events(
    compose: &init_core::app_compose::AppCompose,
    keys: &AppKeys,
    version: init_core::tee::EventLogVersion,
) -> Vec<RuntimeEvent> {
    let mut events = Vec::with_capacity(3);
    if compose.kms_pin() == init_core::app_compose::KmsPin::Unpinned {
        events.push(init_core::tee::events::key_provider_unpinned_event(version));
    }
    events.extend(keys.key_events(version));
    events
}

/// Lets a `?Sized` generic quote source be used as `&mut dyn QuoteSource`.
struct AsQuoteSource<'a, T: QuoteSource + ?Sized>(&'a mut T);

impl<T: QuoteSource + ?Sized> QuoteSource for AsQuoteSource<'_, T> {
    fn report(
        &mut self,
        report_data: &[u8; init_core::tee::REPORT_DATA_LEN],
    ) -> Result<Vec<u8>, init_core::tee::TeeError> {
        self.0.report(report_data)
    }

    fn quote(
        &mut self,
        report_data: &[u8; init_core::tee::REPORT_DATA_LEN],
    ) -> Result<Vec<u8>, init_core::tee::TeeError> {
        self.0.quote(report_data)
    }

    fn quoted_boot_event_log(&mut self) -> Result<Vec<u8>, init_core::tee::TeeError> {
        self.0.quoted_boot_event_log()
    }
}

#[cfg(test)]
mod tests {
    use init_core::app_compose::AppCompose;
    use init_core::tee::EventLogVersion;

    use super::*;
    use crate::secret::Secret;

    fn keys() -> AppKeys {
        AppKeys {
            kms_url: "https://kms.example".into(),
            ca_cert_pem: String::new(),
            root_spki_der: vec![0x30, 0x59],
            disk_crypt_key: Secret::new([1; 32]),
            env_crypt_key: None,
            k256_key: Secret::new([2; 32]),
            k256_signature: Vec::new(),
            gateway_app_id: String::new(),
            os_image_hash: vec![0x0A; 32],
            temp_ca_cert_pem: String::new(),
            temp_ca_key_pem: Secret::new(String::new()),
        }
    }

    fn names(compose: &str) -> Vec<String> {
        let compose = AppCompose::parse(compose.as_bytes()).unwrap();
        key_events(&compose, &keys(), EventLogVersion::V1)
            .into_iter()
            .map(|e| e.name)
            .collect()
    }

    #[test]
    fn an_unpinned_kms_is_recorded_before_the_key_events() {
        assert_eq!(
            names(r#"{"manifest_version":2,"name":"x","key_provider":"kms"}"#),
            ["key-provider-unpinned", "os-image-hash", "key-provider"]
        );
        assert_eq!(
            names(
                r#"{"manifest_version":2,"name":"x","key_provider":"kms","key_provider_id":"3059"}"#
            ),
            ["os-image-hash", "key-provider"]
        );
        let compose =
            AppCompose::parse(br#"{"manifest_version":2,"name":"x","kms_enabled":true}"#).unwrap();
        let events = key_events(&compose, &keys(), EventLogVersion::V1);
        assert_eq!(
            events[0].payload,
            init_core::tee::events::KEY_PROVIDER_UNPINNED_PAYLOAD.as_bytes()
        );
    }
}
