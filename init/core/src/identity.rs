//! App identity as dstack derives it (`shared/specs/dstack-guest.md` §2.2, §5.6):
//! compose-hash = SHA-256(exact app-compose.json bytes); app-id = the pinned `.instance_info`
//! app-id or compose_hash[..20]; instance-id = SHA-256(seed ‖ app_id [‖ SHA-256(platform
//! binding)])[..20], empty when `no_instance_id`.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::app_compose::{AppComposeFile, InstanceInfo, KeyProviderKind};

/// Length of an app-id, an instance-id and an instance-id seed.
pub const ID_LEN: usize = 20;

/// Errors of deriving the identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The pinned app-id in `.instance_info` is not 20 bytes.
    #[error("pinned app_id has {len} bytes, expected 20")]
    PinnedAppIdLength { len: usize },
}

macro_rules! hex_newtype {
    ($name:ident, $len:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Lowercase hex.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
    };
}

hex_newtype!(
    ComposeHash,
    32,
    "SHA-256 of the exact app-compose.json bytes."
);
hex_newtype!(AppId, ID_LEN, "The 20-byte app-id.");
hex_newtype!(InstanceId, ID_LEN, "The 20-byte instance-id.");

impl ComposeHash {
    /// SHA-256 of `app_compose_bytes`, with no parsing or normalisation.
    pub fn of(app_compose_bytes: &[u8]) -> Self {
        Self(Sha256::digest(app_compose_bytes).into())
    }
}

impl AppId {
    /// The pinned app-id if `pinned` is non-empty (it must be 20 bytes), else
    /// `compose_hash[..20]`.
    pub fn resolve(pinned: &[u8], compose_hash: &ComposeHash) -> Result<Self, IdentityError> {
        if pinned.is_empty() {
            let mut id = [0u8; ID_LEN];
            id.copy_from_slice(&compose_hash.0[..ID_LEN]);
            return Ok(Self(id));
        }
        <[u8; ID_LEN]>::try_from(pinned)
            .map(Self)
            .map_err(|_| IdentityError::PinnedAppIdLength { len: pinned.len() })
    }
}

impl InstanceId {
    /// `SHA-256(seed ‖ app_id [‖ SHA-256(platform_binding)])[..20]`. The platform binding is
    /// only used on GCP (vTPM AK public area) and AWS (NitroTPM EK public area); TDX on a
    /// dstack host passes `None`.
    pub fn derive(seed: &[u8], app_id: &AppId, platform_binding: Option<&[u8]>) -> Self {
        let mut h = Sha256::new();
        h.update(seed);
        h.update(app_id.0);
        if let Some(binding) = platform_binding {
            h.update(Sha256::digest(binding));
        }
        let digest: [u8; 32] = h.finalize().into();
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&digest[..ID_LEN]);
        Self(id)
    }
}

/// Whether the seed from `.instance_info` is reused: dstack generates a fresh one when it is
/// empty or when the key provider is `none`.
pub fn reuse_instance_seed(stored_seed: &[u8], key_provider: KeyProviderKind) -> bool {
    !stored_seed.is_empty() && key_provider != KeyProviderKind::None
}

/// The identity measured into RTMR3 and reported to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppIdentity {
    /// SHA-256 of app-compose.json.
    pub compose_hash: ComposeHash,
    /// The app-id.
    pub app_id: AppId,
    /// The seed the instance-id was derived from.
    pub instance_id_seed: Vec<u8>,
    /// The instance-id; `None` when app-compose sets `no_instance_id`.
    pub instance_id: Option<InstanceId>,
}

impl AppIdentity {
    /// Derives the identity. `fresh_seed` (20 random bytes from the caller) is used when the
    /// stored seed is not reused (see [`reuse_instance_seed`]).
    pub fn derive(
        compose: &AppComposeFile,
        instance_info: &InstanceInfo,
        fresh_seed: [u8; ID_LEN],
        platform_binding: Option<&[u8]>,
    ) -> Result<Self, IdentityError> {
        let compose_hash = ComposeHash::of(compose.bytes());
        let app_id = AppId::resolve(&instance_info.app_id, &compose_hash)?;
        let provider = compose.compose().key_provider_kind();
        let instance_id_seed = if reuse_instance_seed(&instance_info.instance_id_seed, provider) {
            instance_info.instance_id_seed.clone()
        } else {
            fresh_seed.to_vec()
        };
        let instance_id = (!compose.compose().no_instance_id)
            .then(|| InstanceId::derive(&instance_id_seed, &app_id, platform_binding));
        Ok(Self {
            compose_hash,
            app_id,
            instance_id_seed,
            instance_id,
        })
    }

    /// The `instance.info` host-notification payload and the next `.instance_info`:
    /// `{"instance_id_seed":hex,"instance_id":hex,"app_id":hex}`.
    pub fn instance_info_json(&self) -> String {
        serde_json::json!({
            "instance_id_seed": hex::encode(&self.instance_id_seed),
            "instance_id": self.instance_id.map(|i| i.to_hex()).unwrap_or_default(),
            "app_id": self.app_id.to_hex(),
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    const WORKED: &str = include_str!("../testdata/compose-hash-worked-examples.json");
    const GETQUOTE: &str = include_str!("../testdata/tdx-lite-getquote.json");

    #[test]
    fn compose_hash_and_default_app_id_worked_examples() {
        let v: Value = serde_json::from_str(WORKED).unwrap();
        let examples = v["examples"].as_array().unwrap();
        assert_eq!(examples.len(), 2);
        for e in examples {
            let bytes = e["file_bytes_utf8"].as_str().unwrap().as_bytes().to_vec();
            let file = AppComposeFile::parse(bytes).unwrap();
            let info = InstanceInfo::default();
            let id = AppIdentity::derive(&file, &info, [0; 20], None).unwrap();
            assert_eq!(id.compose_hash.to_hex(), e["compose_hash_sha256"]);
            assert_eq!(id.app_id.to_hex(), e["default_app_id"]);
        }
    }

    #[test]
    fn tdx_lite_fixture_app_id_is_compose_hash_prefix() {
        // MRCONFIGID = 01 ‖ compose_hash ‖ 0…; the app-id event payload = compose_hash[..20].
        let v: Value = serde_json::from_str(GETQUOTE).unwrap();
        let events: Value = serde_json::from_str(v["event_log"].as_str().unwrap()).unwrap();
        let payload = |name: &str| {
            let e = events
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["event"] == name)
                .unwrap();
            hex::decode(e["event_payload"].as_str().unwrap()).unwrap()
        };
        let compose_hash = ComposeHash(payload("compose-hash").try_into().unwrap());
        assert_eq!(
            compose_hash.to_hex(),
            "86b0e55f2fa8e4fb69d890f14f54d5612707646e2573d54e0d2ddaaade77caa9"
        );
        let app_id = AppId::resolve(&[], &compose_hash).unwrap();
        assert_eq!(app_id.0.to_vec(), payload("app-id"));
    }

    #[test]
    fn pinned_app_id() {
        let h = ComposeHash([7; 32]);
        assert_eq!(AppId::resolve(&[9; 20], &h).unwrap(), AppId([9; 20]));
        assert_eq!(
            AppId::resolve(&[9; 19], &h),
            Err(IdentityError::PinnedAppIdLength { len: 19 })
        );
    }

    #[test]
    fn instance_id_known_answers() {
        // Computed independently (Python hashlib) from the §5.6 formula.
        let seed: Vec<u8> = (0u8..20).collect();
        let app_id = AppId(
            hex::decode("b5828d0f4314f9585038294f8a3fa744ea987ae2")
                .unwrap()
                .try_into()
                .unwrap(),
        );
        assert_eq!(
            InstanceId::derive(&seed, &app_id, None).to_hex(),
            "54c33772fcc4e98945ed8865fec84e70c6174c3e"
        );
        assert_eq!(
            InstanceId::derive(&seed, &app_id, Some(b"ak-public")).to_hex(),
            "d0cea4b393a3e0b45514cf963f425e5bb82b106f"
        );
    }

    #[test]
    fn seed_reuse_rules() {
        let compose = |extra: &str| {
            AppComposeFile::parse(
                format!(r#"{{"manifest_version":2,"name":"x"{extra}}}"#).into_bytes(),
            )
            .unwrap()
        };
        let info = InstanceInfo {
            app_id: vec![],
            instance_id_seed: vec![1; 20],
            instance_id: vec![],
        };
        // KMS provider: stored seed reused.
        let id =
            AppIdentity::derive(&compose(r#","kms_enabled":true"#), &info, [2; 20], None).unwrap();
        assert_eq!(id.instance_id_seed, vec![1; 20]);
        // Provider none: fresh seed.
        let id = AppIdentity::derive(&compose(""), &info, [2; 20], None).unwrap();
        assert_eq!(id.instance_id_seed, vec![2; 20]);
        // no_instance_id: no instance-id at all.
        let id = AppIdentity::derive(&compose(r#","no_instance_id":true"#), &info, [2; 20], None)
            .unwrap();
        assert_eq!(id.instance_id, None);
        let json: Value = serde_json::from_str(&id.instance_info_json()).unwrap();
        assert_eq!(json["instance_id"], "");
        assert_eq!(json["app_id"], id.app_id.to_hex());
    }
}
