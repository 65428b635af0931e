//! Key-provider binding (`shared/specs/dstack-guest.md` §3.4, §5.2, §5.7): the `os-image-hash`
//! and `key-provider` RTMR3 events, the app-compose `key_provider_id` pin, and the MRCONFIGID
//! check (versions 1-3).

use init_core::app_compose::KeyProviderKind;
use init_core::tee::events::{KeyProviderInfo, names};
use init_core::tee::{EventLogVersion, RuntimeEvent};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use sha3::Keccak256;

/// Length of MRCONFIGID.
pub const MR_CONFIG_ID_LEN: usize = 48;
/// Domain of the V3 document hash.
pub const MR_CONFIG_V3_DOMAIN: &[u8] = b"dstack-mr-config-v3:";

/// Errors of the provider checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// app-compose `key_provider_id` is not hex.
    #[error("app-compose key_provider_id is not hex")]
    DecodeKeyProviderId,
    /// The KMS root key differs from the pinned `key_provider_id`.
    #[error("KMS root key {actual} is not the pinned key_provider_id {pinned}")]
    KeyProviderMismatch { pinned: String, actual: String },
    /// MRCONFIGID has a version byte this init does not know.
    #[error("MRCONFIGID version {version} is not supported")]
    UnsupportedMrConfigVersion { version: u8 },
    /// MRCONFIGID differs from the value computed from the local configuration.
    #[error("MRCONFIGID (version {version}) is {actual}, expected {expected}")]
    MrConfigIdMismatch {
        version: u8,
        expected: String,
        actual: String,
    },
    /// Version 3 needs the sys-config `mr_config` document.
    #[error("MRCONFIGID version 3 needs sys-config mr_config")]
    MissingMrConfigDocument,
    /// The `mr_config` document is not a MrConfigV3 JSON object.
    #[error("sys-config mr_config is not a MrConfigV3 document")]
    ParseMrConfigDocument,
    /// A field of the `mr_config` document differs from the local value.
    #[error("sys-config mr_config field {field} does not match this boot")]
    MrConfigFieldMismatch { field: &'static str },
}

/// The `os-image-hash` event (payload: the 32 bytes from `AppKeyResponse.os_image_hash`).
pub fn os_image_hash_event(os_image_hash: &[u8], version: EventLogVersion) -> RuntimeEvent {
    RuntimeEvent::new(names::OS_IMAGE_HASH, os_image_hash.to_vec()).with_version(version)
}

/// The `key-provider` event for a KMS: `{"name":"kms","id":"<hex of root CA SPKI DER>"}`.
pub fn kms_key_provider_event(root_ca_spki_der: &[u8], version: EventLogVersion) -> RuntimeEvent {
    key_provider_event(&KeyProviderInfo::kms(root_ca_spki_der), version)
}

/// The `key-provider` event for any provider.
pub fn key_provider_event(info: &KeyProviderInfo, version: EventLogVersion) -> RuntimeEvent {
    RuntimeEvent::new(names::KEY_PROVIDER, info.payload()).with_version(version)
}

/// The app-compose pin: a non-empty `key_provider_id` must equal the KMS root CA's
/// SubjectPublicKeyInfo DER (compared as bytes, so hex case does not matter).
pub fn check_key_provider_pin(
    pinned_hex: &str,
    kms_root_spki_der: &[u8],
) -> Result<(), ProviderError> {
    if pinned_hex.is_empty() {
        return Ok(());
    }
    let pinned = hex::decode(pinned_hex).map_err(|_| ProviderError::DecodeKeyProviderId)?;
    if pinned != kms_root_spki_der {
        return Err(ProviderError::KeyProviderMismatch {
            pinned: pinned_hex.to_ascii_lowercase(),
            actual: hex::encode(kms_root_spki_der),
        });
    }
    Ok(())
}

fn kind_byte(kind: KeyProviderKind) -> u8 {
    match kind {
        KeyProviderKind::None => 0,
        KeyProviderKind::Local => 1,
        KeyProviderKind::Kms => 2,
        KeyProviderKind::Tpm => 3,
    }
}

/// What MRCONFIGID is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig<'a> {
    /// SHA-256 of app-compose.json.
    pub compose_hash: [u8; 32],
    /// The app-id.
    pub app_id: [u8; 20],
    /// The effective key provider.
    pub key_provider: KeyProviderKind,
    /// app-compose `key_provider_id`, decoded (empty when not pinned).
    pub key_provider_id: &'a [u8],
    /// The instance-id (empty with `no_instance_id`).
    pub instance_id: &'a [u8],
    /// The `gpu-policy-hash` payload, when this boot measures one.
    pub gpu_policy_hash: Option<[u8; 32]>,
    /// sys-config `mr_config` (the exact document string).
    pub mr_config_document: Option<&'a str>,
}

fn with_version(version: u8, digest: &[u8]) -> [u8; MR_CONFIG_ID_LEN] {
    let mut id = [0u8; MR_CONFIG_ID_LEN];
    id[0] = version;
    id[1..1 + digest.len()].copy_from_slice(digest);
    id
}

/// MRCONFIGID V1: `01 ‖ compose_hash ‖ 0×15`.
pub fn mr_config_id_v1(compose_hash: &[u8; 32]) -> [u8; MR_CONFIG_ID_LEN] {
    with_version(1, compose_hash)
}

/// MRCONFIGID V2: `02 ‖ Keccak256(compose_hash ‖ app_id ‖ kind ‖ key_provider_id) ‖ 0×15`.
pub fn mr_config_id_v2(local: &LocalConfig<'_>) -> [u8; MR_CONFIG_ID_LEN] {
    use sha3::Digest as _;
    let mut hasher = Keccak256::new();
    hasher.update(local.compose_hash);
    hasher.update(local.app_id);
    hasher.update([kind_byte(local.key_provider)]);
    hasher.update(local.key_provider_id);
    let digest = hasher.finalize();
    with_version(2, &digest)
}

/// MRCONFIGID V3: `03 ‖ SHA-256("dstack-mr-config-v3:" ‖ 00 ‖ document) ‖ 0×15`.
pub fn mr_config_id_v3(document: &str) -> [u8; MR_CONFIG_ID_LEN] {
    let digest = Sha256::new()
        .chain_update(MR_CONFIG_V3_DOMAIN)
        .chain_update([0])
        .chain_update(document.as_bytes())
        .finalize();
    with_version(3, &digest)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MrConfigV3 {
    #[serde(default = "three")]
    version: u8,
    app_id: String,
    compose_hash: String,
    #[serde(default)]
    gpu_policy_hash: Option<String>,
    key_provider: KeyProviderKind,
    #[serde(default)]
    key_provider_id: String,
    #[serde(default)]
    instance_id: String,
}

fn three() -> u8 {
    3
}

fn field_matches(field: &'static str, hex_text: &str, local: &[u8]) -> Result<(), ProviderError> {
    match hex::decode(hex_text) {
        Ok(bytes) if bytes == local => Ok(()),
        _ => Err(ProviderError::MrConfigFieldMismatch { field }),
    }
}

fn check_v3_document(document: &str, local: &LocalConfig<'_>) -> Result<(), ProviderError> {
    let doc: MrConfigV3 =
        serde_json::from_str(document).map_err(|_| ProviderError::ParseMrConfigDocument)?;
    if doc.version != 3 {
        return Err(ProviderError::MrConfigFieldMismatch { field: "version" });
    }
    field_matches("app_id", &doc.app_id, &local.app_id)?;
    field_matches("compose_hash", &doc.compose_hash, &local.compose_hash)?;
    if doc.key_provider != local.key_provider {
        return Err(ProviderError::MrConfigFieldMismatch {
            field: "key_provider",
        });
    }
    if !doc.key_provider_id.is_empty() {
        field_matches(
            "key_provider_id",
            &doc.key_provider_id,
            local.key_provider_id,
        )?;
    }
    if !doc.instance_id.is_empty() {
        field_matches("instance_id", &doc.instance_id, local.instance_id)?;
    }
    if let Some(gpu) = &doc.gpu_policy_hash {
        let local_gpu = local
            .gpu_policy_hash
            .ok_or(ProviderError::MrConfigFieldMismatch {
                field: "gpu_policy_hash",
            })?;
        field_matches("gpu_policy_hash", gpu, &local_gpu)?;
    }
    Ok(())
}

/// Checks this TD's MRCONFIGID: all zeros ⇒ no binding (returns 0); version 1 ⇒ the
/// compose-hash; version 2 ⇒ compose-hash, app-id, provider kind and `key_provider_id`;
/// version 3 ⇒ the sys-config `mr_config` document (whose every present field must match this
/// boot). Returns the version checked.
pub fn check_mr_config_id(
    mr_config_id: &[u8; MR_CONFIG_ID_LEN],
    local: &LocalConfig<'_>,
) -> Result<u8, ProviderError> {
    let version = mr_config_id[0];
    let expected = match version {
        0 if mr_config_id.iter().all(|b| *b == 0) => return Ok(0),
        1 => mr_config_id_v1(&local.compose_hash),
        2 => mr_config_id_v2(local),
        3 => {
            let document = local
                .mr_config_document
                .ok_or(ProviderError::MissingMrConfigDocument)?;
            let expected = mr_config_id_v3(document);
            if expected == *mr_config_id {
                check_v3_document(document, local)?;
            }
            expected
        }
        version => return Err(ProviderError::UnsupportedMrConfigVersion { version }),
    };
    if expected != *mr_config_id {
        return Err(ProviderError::MrConfigIdMismatch {
            version,
            expected: hex::encode(expected),
            actual: hex::encode(mr_config_id),
        });
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPOSE_HASH: &str = "86b0e55f2fa8e4fb69d890f14f54d5612707646e2573d54e0d2ddaaade77caa9";

    fn local<'a>() -> LocalConfig<'a> {
        LocalConfig {
            compose_hash: hex::decode(COMPOSE_HASH).unwrap().try_into().unwrap(),
            app_id: [0x11; 20],
            key_provider: KeyProviderKind::Kms,
            key_provider_id: &[0x33; 32],
            instance_id: &[0x44; 20],
            gpu_policy_hash: Some([0x55; 32]),
            mr_config_document: None,
        }
    }

    #[test]
    fn v1_matches_the_tdx_lite_fixture() {
        // The fixture quote's MRCONFIGID (vectors/dstack/README.md): 01 ‖ compose_hash ‖ 00×15.
        let quote: serde_json::Value =
            serde_json::from_str(include_str!("../testdata/tdx-lite-getquote.json")).unwrap();
        let bytes = hex::decode(quote["quote"].as_str().unwrap()).unwrap();
        let id: [u8; 48] = bytes[48 + 184..48 + 232].try_into().unwrap();
        assert_eq!(check_mr_config_id(&id, &local()), Ok(1));
        let mut other = local();
        other.compose_hash[0] ^= 1;
        assert!(matches!(
            check_mr_config_id(&id, &other),
            Err(ProviderError::MrConfigIdMismatch { version: 1, .. })
        ));
    }

    #[test]
    fn zero_skips_and_unknown_versions_fail() {
        assert_eq!(check_mr_config_id(&[0; 48], &local()), Ok(0));
        let mut id = [0u8; 48];
        id[0] = 4;
        assert_eq!(
            check_mr_config_id(&id, &local()),
            Err(ProviderError::UnsupportedMrConfigVersion { version: 4 })
        );
        id[0] = 0;
        id[5] = 1;
        assert_eq!(
            check_mr_config_id(&id, &local()),
            Err(ProviderError::UnsupportedMrConfigVersion { version: 0 })
        );
    }

    #[test]
    fn v2_binds_provider_and_pin() {
        let id = mr_config_id_v2(&local());
        assert_eq!(id[0], 2);
        assert_eq!(id[33..], [0; 15]);
        assert_eq!(check_mr_config_id(&id, &local()), Ok(2));
        let mut other = local();
        other.key_provider = KeyProviderKind::None;
        assert!(matches!(
            check_mr_config_id(&id, &other),
            Err(ProviderError::MrConfigIdMismatch { version: 2, .. })
        ));
        let mut other = local();
        other.key_provider_id = &[0x34; 32];
        assert!(matches!(
            check_mr_config_id(&id, &other),
            Err(ProviderError::MrConfigIdMismatch { version: 2, .. })
        ));
    }

    #[test]
    fn v3_document_hash_and_fields() {
        // The JCS document of dstack's `mr_config_v3_generates_jcs_but_hashes_document_bytes`.
        let doc = concat!(
            "{\"app_id\":\"1111111111111111111111111111111111111111\",",
            "\"compose_hash\":\"2222222222222222222222222222222222222222222222222222222222222222\",",
            "\"gpu_policy_hash\":\"5555555555555555555555555555555555555555555555555555555555555555\",",
            "\"instance_id\":\"4444444444444444444444444444444444444444\",",
            "\"key_provider\":\"kms\",",
            "\"key_provider_id\":\"3333333333333333333333333333333333333333333333333333333333333333\",",
            "\"version\":3}"
        );
        let mut l = local();
        l.compose_hash = [0x22; 32];
        l.mr_config_document = Some(doc);
        let id = mr_config_id_v3(doc);
        assert_eq!(check_mr_config_id(&id, &l), Ok(3));
        let mut wrong = l.clone();
        wrong.instance_id = &[0x45; 20];
        assert_eq!(
            check_mr_config_id(&id, &wrong),
            Err(ProviderError::MrConfigFieldMismatch {
                field: "instance_id"
            })
        );
        let mut no_doc = l.clone();
        no_doc.mr_config_document = None;
        assert_eq!(
            check_mr_config_id(&id, &no_doc),
            Err(ProviderError::MissingMrConfigDocument)
        );
        // A different document than the one measured.
        let mut other_doc = l.clone();
        other_doc.mr_config_document = Some("{}");
        assert!(matches!(
            check_mr_config_id(&id, &other_doc),
            Err(ProviderError::MrConfigIdMismatch { version: 3, .. })
        ));
    }

    #[test]
    fn key_provider_pin_and_events() {
        let spki = [0x30, 0x59, 1, 2, 3];
        check_key_provider_pin("", &spki).unwrap();
        check_key_provider_pin("3059010203", &spki).unwrap();
        check_key_provider_pin("3059010203".to_uppercase().as_str(), &spki).unwrap();
        assert!(matches!(
            check_key_provider_pin("3059010204", &spki),
            Err(ProviderError::KeyProviderMismatch { .. })
        ));
        assert_eq!(
            check_key_provider_pin("zz", &spki),
            Err(ProviderError::DecodeKeyProviderId)
        );
        // The fixture's key-provider payload.
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../testdata/crypto-and-appinfo-vectors.json"))
                .unwrap();
        let payload = v["tdx_lite_fixture_app_info"]["key_provider_payload_utf8"]
            .as_str()
            .unwrap();
        let id: serde_json::Value = serde_json::from_str(payload).unwrap();
        let spki = hex::decode(id["id"].as_str().unwrap()).unwrap();
        let event = kms_key_provider_event(&spki, EventLogVersion::V1);
        assert_eq!(event.name, "key-provider");
        assert_eq!(event.payload, payload.as_bytes());
        assert_eq!(
            hex::encode(Sha256::digest(&event.payload)),
            v["tdx_lite_fixture_app_info"]["mr_key_provider_sha256"]
                .as_str()
                .unwrap()
        );
        let os = os_image_hash_event(&[9; 32], EventLogVersion::V1);
        assert_eq!((os.name.as_str(), os.payload.len()), ("os-image-hash", 32));
    }
}
