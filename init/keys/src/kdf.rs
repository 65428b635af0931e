//! dstack's key derivation (`shared/specs/dstack-guest.md` §5.4), byte for byte:
//!
//! * `derive_key(ikm, ctx[], n)` = HKDF-SHA256(salt `RATLS`, IKM, info = ctx parts concatenated, L = n);
//! * `derive_p256(root, ctx)`: the P-256 scalar `derive_key(root scalar (32 B big-endian), ctx, 32)`
//!   (an out-of-range result is an error, as in dstack);
//! * `derive_dh_secret(root, ctx)` = SHA-256(PKCS#8 DER of `derive_p256(root, ctx)`), with the DER
//!   fixed to dstack's form (version 0, ecPublicKey + prime256v1, SEC1 key with the public key in
//!   `[1]` and no `[0]` parameters), see [`p256_pkcs8_der`];
//! * the app keys a KMS hands out: disk key, env key, app CA key, k256 app key and its signature;
//! * `GetKey`: HKDF of the k256 app key with the path, signed by the app key.

use hkdf::Hkdf;
use k256::ecdsa::{RecoveryId, Signature as K256Signature, SigningKey as K256SigningKey};
use p256::elliptic_curve::sec1::ToSec1Point as _;
use sha2::Sha256;
use sha3::{Digest as _, Keccak256};

use crate::secret::{Secret, SecretBytes, SecretKey32};

/// HKDF salt of every dstack derivation.
pub const KDF_SALT: &[u8] = b"RATLS";
/// Length of a P-256 PKCS#8 DER in dstack's form.
pub const P256_PKCS8_LEN: usize = 138;
/// Context of the disk key.
pub const DISK_KEY_CONTEXT: &[u8] = b"app-disk-crypt-key";
/// Context of the environment key.
pub const ENV_KEY_CONTEXT: &[u8] = b"env-encrypt-key";
/// Context of the app CA key.
pub const APP_CA_CONTEXT: &[u8] = b"app-ca";
/// Context of the k256 app key.
pub const K256_APP_KEY_CONTEXT: &[u8] = b"app-key";
/// Prefix of the KMS signature over the k256 app public key.
pub const KMS_ISSUED_PREFIX: &[u8] = b"dstack-kms-issued";
/// Prefix of the KMS signature over the env-encryption public key.
pub const ENV_PUBKEY_PREFIX: &[u8] = b"dstack-env-encrypt-pubkey";

/// Errors of key derivation and signing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KdfError {
    /// HKDF cannot produce that many bytes (more than 255 × 32).
    #[error("HKDF-SHA256 cannot derive {len} bytes")]
    ExpandKey { len: usize },
    /// The derived bytes are not a valid P-256 scalar (zero or not below the group order).
    #[error("derived bytes are not a valid P-256 scalar")]
    DeriveP256Scalar,
    /// A P-256 root key is not a valid scalar.
    #[error("P-256 root key is not a valid scalar")]
    ParseP256Key,
    /// A P-256 private key is not PKCS#8 (or SEC1) DER/PEM.
    #[error("P-256 private key is not PKCS#8")]
    DecodeP256Pkcs8,
    /// A secp256k1 key is not a valid scalar.
    #[error("secp256k1 key is not a valid scalar")]
    ParseK256Key,
    /// A recoverable signature is not 65 bytes `r ‖ s ‖ v` or does not recover a key.
    #[error("recoverable secp256k1 signature is malformed or does not recover a key")]
    RecoverSignature,
    /// An unknown `GetKey` algorithm.
    #[error("unsupported key algorithm {name:?}")]
    UnsupportedAlgorithm { name: String },
}

/// HKDF-SHA256 with salt `RATLS` over `ikm`; `info` is the concatenation of `context`.
pub fn derive_key(ikm: &[u8], context: &[&[u8]], len: usize) -> Result<SecretBytes, KdfError> {
    let hkdf = Hkdf::<sha2_11::Sha256>::new(Some(KDF_SALT), ikm);
    let mut out = vec![0u8; len];
    hkdf.expand_multi_info(context, &mut out)
        .map_err(|_| KdfError::ExpandKey { len })?;
    Ok(Secret::new(out))
}

/// [`derive_key`] with `len` = 32.
pub fn derive_key32(ikm: &[u8], context: &[&[u8]]) -> Result<SecretKey32, KdfError> {
    let hkdf = Hkdf::<sha2_11::Sha256>::new(Some(KDF_SALT), ikm);
    let mut out = Secret::new([0u8; 32]);
    hkdf.expand_multi_info(context, out.expose_mut())
        .map_err(|_| KdfError::ExpandKey { len: 32 })?;
    Ok(out)
}

/// A P-256 private key (the `p256` type zeroizes itself; its `Debug` shows no scalar).
pub type P256Key = p256::SecretKey;

/// Parses a P-256 private key from its 32-byte scalar.
pub fn p256_from_scalar(scalar: &[u8]) -> Result<P256Key, KdfError> {
    P256Key::from_slice(scalar).map_err(|_| KdfError::ParseP256Key)
}

/// Parses a P-256 private key from PKCS#8 DER.
pub fn p256_from_pkcs8_der(der: &[u8]) -> Result<P256Key, KdfError> {
    use p256::pkcs8::DecodePrivateKey as _;
    P256Key::from_pkcs8_der(der).map_err(|_| KdfError::DecodeP256Pkcs8)
}

/// Parses a P-256 private key from a PEM block (`PRIVATE KEY` = PKCS#8, or `EC PRIVATE KEY`).
pub fn p256_from_pem(pem: &str) -> Result<P256Key, KdfError> {
    use p256::pkcs8::DecodePrivateKey as _;
    P256Key::from_pkcs8_pem(pem)
        .or_else(|_| P256Key::from_sec1_pem(pem))
        .map_err(|_| KdfError::DecodeP256Pkcs8)
}

/// The 32-byte big-endian scalar of `key`.
pub fn p256_scalar(key: &P256Key) -> SecretKey32 {
    let mut out = Secret::new([0u8; 32]);
    out.expose_mut().copy_from_slice(&key.to_bytes());
    out
}

/// The SubjectPublicKeyInfo DER of a P-256 public key (91 bytes).
pub fn p256_spki_der(key: &p256::PublicKey) -> Vec<u8> {
    const PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let point = key.as_affine().to_sec1_point(false);
    let mut out = Vec::with_capacity(91);
    out.extend_from_slice(&PREFIX);
    out.extend_from_slice(point.as_bytes());
    out
}

/// `derive_p256(root, ctx)`: the P-256 key whose scalar is `derive_key(root scalar, ctx, 32)`.
pub fn derive_p256(root: &P256Key, context: &[&[u8]]) -> Result<P256Key, KdfError> {
    let root_scalar = p256_scalar(root);
    let derived = derive_key32(root_scalar.expose(), context)?;
    P256Key::from_slice(derived.expose()).map_err(|_| KdfError::DeriveP256Scalar)
}

/// PKCS#8 DER of a P-256 key exactly as dstack hashes it:
/// `30 81 87 02 01 00 30 13 06 07 2a8648ce3d0201 06 08 2a8648ce3d030107 04 6d 30 6b 02 01 01 04 20
/// <d> a1 44 03 42 00 04 <X> <Y>`.
pub fn p256_pkcs8_der(key: &P256Key) -> Secret<Vec<u8>> {
    const HEAD: [u8; 36] = [
        0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d,
        0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x04, 0x6d, 0x30,
        0x6b, 0x02, 0x01, 0x01, 0x04, 0x20,
    ];
    const MID: [u8; 5] = [0xa1, 0x44, 0x03, 0x42, 0x00];
    let scalar = p256_scalar(key);
    let point = key.public_key().as_affine().to_sec1_point(false);
    let mut out = Vec::with_capacity(P256_PKCS8_LEN);
    out.extend_from_slice(&HEAD);
    out.extend_from_slice(scalar.expose());
    out.extend_from_slice(&MID);
    out.extend_from_slice(point.as_bytes());
    Secret::new(out)
}

/// `derive_dh_secret(root, ctx)` = SHA-256(PKCS#8 DER of `derive_p256(root, ctx)`).
pub fn derive_dh_secret(root: &P256Key, context: &[&[u8]]) -> Result<SecretKey32, KdfError> {
    let derived = derive_p256(root, context)?;
    let der = p256_pkcs8_der(&derived);
    Ok(Secret::new(
        <Sha256 as sha2::Digest>::digest(der.expose()).into(),
    ))
}

/// The data-disk key: `derive_dh_secret(root CA key, [app_id, instance_id, "app-disk-crypt-key"])`
/// (`instance_id` empty when app-compose sets `no_instance_id`).
pub fn app_disk_key(
    root_ca_key: &P256Key,
    app_id: &[u8],
    instance_id: &[u8],
) -> Result<SecretKey32, KdfError> {
    derive_dh_secret(root_ca_key, &[app_id, instance_id, DISK_KEY_CONTEXT])
}

/// The env-encryption X25519 secret: `derive_dh_secret(root CA key, [app_id, "env-encrypt-key"])`.
pub fn app_env_key(root_ca_key: &P256Key, app_id: &[u8]) -> Result<SecretKey32, KdfError> {
    derive_dh_secret(root_ca_key, &[app_id, ENV_KEY_CONTEXT])
}

/// The X25519 public key of an env-encryption secret (what `GetAppEnvEncryptPubKey` returns).
pub fn env_public_key(env_key: &SecretKey32) -> [u8; 32] {
    let secret = x25519_dalek::StaticSecret::from(*env_key.expose());
    x25519_dalek::PublicKey::from(&secret).to_bytes()
}

/// The app CA key: `derive_p256(root CA key, [app_id, "app-ca"])`.
pub fn app_ca_key(root_ca_key: &P256Key, app_id: &[u8]) -> Result<P256Key, KdfError> {
    derive_p256(root_ca_key, &[app_id, APP_CA_CONTEXT])
}

/// A recoverable secp256k1 signature `r ‖ s ‖ v` (v = 0/1) over Keccak-256(`message`).
pub fn sign_recoverable_keccak256(key: &[u8; 32], message: &[u8]) -> Result<[u8; 65], KdfError> {
    let signing = K256SigningKey::from_slice(key).map_err(|_| KdfError::ParseK256Key)?;
    let digest = Keccak256::digest(message);
    let (signature, recovery): (K256Signature, RecoveryId) =
        signing.sign_prehash_recoverable(&digest);
    let mut out = [0u8; 65];
    out[..64].copy_from_slice(&signature.to_bytes());
    out[64] = recovery.to_byte();
    Ok(out)
}

/// The compressed SEC1 public key (33 bytes) that produced a recoverable signature over
/// Keccak-256(`message`).
pub fn recover_keccak256_signer(message: &[u8], signature: &[u8]) -> Result<[u8; 33], KdfError> {
    let (rs, v) = match signature {
        [rs @ .., v] if rs.len() == 64 => (rs, *v),
        _ => return Err(KdfError::RecoverSignature),
    };
    let signature = K256Signature::from_slice(rs).map_err(|_| KdfError::RecoverSignature)?;
    let recovery = RecoveryId::from_byte(v).ok_or(KdfError::RecoverSignature)?;
    let digest = Keccak256::digest(message);
    let key = k256::ecdsa::VerifyingKey::recover_from_prehash(&digest, &signature, recovery)
        .map_err(|_| KdfError::RecoverSignature)?;
    compressed_k256(&key)
}

fn compressed_k256(key: &k256::ecdsa::VerifyingKey) -> Result<[u8; 33], KdfError> {
    let point = key.as_affine().to_sec1_point(true);
    <[u8; 33]>::try_from(point.as_bytes()).map_err(|_| KdfError::RecoverSignature)
}

/// The compressed SEC1 public key of a secp256k1 private key.
pub fn k256_public_key(key: &[u8; 32]) -> Result<[u8; 33], KdfError> {
    let signing = K256SigningKey::from_slice(key).map_err(|_| KdfError::ParseK256Key)?;
    compressed_k256(signing.verifying_key())
}

/// `prefix ‖ ":" ‖ app_id ‖ message`, the preimage of the KMS's signatures.
pub fn kms_signed_message(prefix: &[u8], app_id: &[u8], message: &[u8]) -> Vec<u8> {
    [prefix, b":", app_id, message].concat()
}

/// The k256 app key and the KMS root's signature over it:
/// key = `derive_key(root k256, [app_id, "app-key"], 32)`, signature = recoverable secp256k1
/// over Keccak-256(`"dstack-kms-issued:" ‖ app_id ‖ compressed app public key`).
pub fn app_k256_key(
    root_k256: &[u8; 32],
    app_id: &[u8],
) -> Result<(SecretKey32, [u8; 65]), KdfError> {
    let key = derive_key32(root_k256, &[app_id, K256_APP_KEY_CONTEXT])?;
    let public = k256_public_key(key.expose())?;
    let signature = sign_recoverable_keccak256(
        root_k256,
        &kms_signed_message(KMS_ISSUED_PREFIX, app_id, &public),
    )?;
    Ok((key, signature))
}

/// Keys of the non-KMS providers (`none`, `local`, `tpm`) from a 32-byte seed
/// (`gen_app_keys_from_seed`): the app key `derive_p256(seed, ["app-key"])`, the disk key
/// SHA-256(PKCS#8 of `derive_p256(seed, ["app-disk-key"])`), the k256 key
/// `derive_key(seed, ["app-k256-key"], 32)`; no env key.
#[derive(Debug)]
pub struct SeedKeys {
    /// P-256 app key (self-signed "App Root Cert" in dstack).
    pub app_key: P256Key,
    /// Data-disk key.
    pub disk_crypt_key: SecretKey32,
    /// secp256k1 app key.
    pub k256_key: SecretKey32,
}

/// Derives [`SeedKeys`].
pub fn keys_from_seed(seed: &[u8; 32]) -> Result<SeedKeys, KdfError> {
    let seed_key = p256_from_scalar(seed)?;
    let app_key = derive_p256(&seed_key, &[b"app-key"])?;
    let disk = derive_p256(&seed_key, &[b"app-disk-key"])?;
    let disk_crypt_key =
        Secret::new(<Sha256 as sha2::Digest>::digest(p256_pkcs8_der(&disk).expose()).into());
    let k256_key = derive_key32(seed, &[b"app-k256-key"])?;
    Ok(SeedKeys {
        app_key,
        disk_crypt_key,
        k256_key,
    })
}

/// `GetKey`'s algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// secp256k1 (`""`, `secp256k1`, `k256`).
    Secp256k1,
}

impl KeyAlgorithm {
    /// Parses the request's algorithm name.
    pub fn parse(name: &str) -> Result<Self, KdfError> {
        match name.to_ascii_lowercase().as_str() {
            "" | "secp256k1" | "k256" => Ok(Self::Secp256k1),
            _ => Err(KdfError::UnsupportedAlgorithm {
                name: name.to_owned(),
            }),
        }
    }
}

/// What `GetKey` returns.
#[derive(Debug)]
pub struct DerivedAppKey {
    /// The derived private key (32 bytes).
    pub key: SecretKey32,
    /// Compressed public key.
    pub public_key: [u8; 33],
    /// `[app key's signature over Keccak-256("<purpose>:<hex pubkey>"), KMS k256 signature]`.
    pub signature_chain: [Vec<u8>; 2],
}

/// `GetKey{path, purpose, algorithm}`: key = HKDF(salt `RATLS`, k256 app key, info = path);
/// the chain is the app key's recoverable signature over Keccak-256(`purpose ‖ ":" ‖ hex(pubkey)`)
/// followed by the KMS's `k256_signature` over the app key.
pub fn get_key(
    k256_app_key: &SecretKey32,
    k256_signature: &[u8],
    path: &str,
    purpose: &str,
    algorithm: KeyAlgorithm,
) -> Result<DerivedAppKey, KdfError> {
    match algorithm {
        KeyAlgorithm::Secp256k1 => {}
    }
    let key = derive_key32(k256_app_key.expose(), &[path.as_bytes()])?;
    let public_key = k256_public_key(key.expose())?;
    let message = format!("{purpose}:{}", hex::encode(public_key));
    let signature = sign_recoverable_keccak256(k256_app_key.expose(), message.as_bytes())?;
    Ok(DerivedAppKey {
        key,
        public_key,
        signature_chain: [signature.to_vec(), k256_signature.to_vec()],
    })
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn vectors() -> Value {
        serde_json::from_str(include_str!("../testdata/crypto-and-appinfo-vectors.json")).unwrap()
    }

    #[test]
    fn derive_dh_secret_known_answer() {
        let v = vectors();
        let kdf = &v["kdf_derive_dh_secret"];
        let der = hex::decode(kdf["root_key_pkcs8_der_hex"].as_str().unwrap()).unwrap();
        let root = p256_from_pkcs8_der(&der).unwrap();
        // Our fixed PKCS#8 form re-encodes the vector's root key byte for byte.
        assert_eq!(p256_pkcs8_der(&root).expose(), &der);
        let secret = derive_dh_secret(&root, &[b"context one", b"context two"]).unwrap();
        assert_eq!(
            hex::encode(secret.expose()),
            kdf["expected_secret_hex"].as_str().unwrap()
        );
        // Context parts are concatenated: the split does not matter, the bytes do.
        let joined = derive_dh_secret(&root, &[b"context onecontext two"]).unwrap();
        assert_eq!(joined.expose(), secret.expose());
        let other = derive_dh_secret(&root, &[b"context one"]).unwrap();
        assert_ne!(other.expose(), secret.expose());
    }

    #[test]
    fn derive_key_is_hkdf_sha256_with_salt_ratls() {
        // RFC 5869 structure: PRK = HMAC(salt, ikm); T1 = HMAC(PRK, info ‖ 01).
        use hmac_check::hmac_sha256;
        let prk = hmac_sha256(b"RATLS", b"input key material");
        let t1 = hmac_sha256(&prk, b"context one\x01");
        let got = derive_key(b"input key material", &[b"context one"], 32).unwrap();
        assert_eq!(got.expose(), &t1.to_vec());
        let long = derive_key(b"ikm", &[b"x"], 256).unwrap();
        assert_eq!(long.expose().len(), 256);
        assert_eq!(
            derive_key(b"ikm", &[b"x"], 255 * 32 + 1).unwrap_err(),
            KdfError::ExpandKey { len: 255 * 32 + 1 }
        );
    }

    /// A small HMAC-SHA256 for the structural check above (not used by the code).
    mod hmac_check {
        use sha2::{Digest, Sha256};

        pub(super) fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
            let mut k = [0u8; 64];
            k[..key.len()].copy_from_slice(key);
            let mut inner = Sha256::new();
            inner.update(k.map(|b| b ^ 0x36));
            inner.update(data);
            let mut outer = Sha256::new();
            outer.update(k.map(|b| b ^ 0x5c));
            outer.update(inner.finalize());
            outer.finalize().into()
        }
    }

    /// dstack `kms/src/crypto.rs` `issued_app_key_signatures_match_their_golden_vectors`
    /// (Dstack-TEE/dstack @ 312dc605): root k256 key 07×32, app id `app-a`.
    #[test]
    fn k256_app_key_and_kms_signature_known_answer() {
        let (key, signature) = app_k256_key(&[7; 32], b"app-a").unwrap();
        assert_eq!(
            hex::encode(key.expose()),
            "ed0fd39ce7c26a185f396945168972807b2f77820f14ee4bda9e1f46e8b4596d"
        );
        assert_eq!(
            hex::encode(signature),
            "e12a5f4567f6d9f80b01944dea333bbed5b418347f4260ed95e9ee198a03014e\
             1716a40d2ed6cd367e335b33e231510aa98216e62b631f2b75c181c2f989656800"
        );
        let app_public = k256_public_key(key.expose()).unwrap();
        let signer = recover_keccak256_signer(
            &kms_signed_message(KMS_ISSUED_PREFIX, b"app-a", &app_public),
            &signature,
        )
        .unwrap();
        assert_eq!(signer, k256_public_key(&[7; 32]).unwrap());
    }

    #[test]
    fn env_pubkey_signature_recovers_the_published_signer() {
        let v = vectors();
        let s = &v["env_pubkey_signature_legacy"];
        let public = hex::decode(s["public_key_hex"].as_str().unwrap()).unwrap();
        let app_id = hex::decode(s["app_id_hex"].as_str().unwrap()).unwrap();
        let signature = hex::decode(s["signature_hex"].as_str().unwrap()).unwrap();
        let want = s["expected_signer_compressed"].as_str().unwrap();
        let signer = recover_keccak256_signer(
            &kms_signed_message(ENV_PUBKEY_PREFIX, &app_id, &public),
            &signature,
        )
        .unwrap();
        assert_eq!(format!("0x{}", hex::encode(signer)), want);
        // A different public key recovers someone else.
        let mut other = public.clone();
        other[0] ^= 1;
        let wrong = recover_keccak256_signer(
            &kms_signed_message(ENV_PUBKEY_PREFIX, &app_id, &other),
            &signature,
        );
        assert_ne!(wrong.ok(), Some(signer));
        assert_eq!(
            recover_keccak256_signer(b"m", &signature[..64]),
            Err(KdfError::RecoverSignature)
        );
    }

    #[test]
    fn env_key_public_matches_the_vector() {
        let v = vectors();
        let e = &v["env_decrypt"];
        let key: [u8; 32] = hex::decode(e["env_crypt_key_hex"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(
            hex::encode(env_public_key(&Secret::new(key))),
            e["env_encrypt_pubkey_hex(derived)"].as_str().unwrap()
        );
    }

    #[test]
    fn app_keys_are_bound_to_app_and_instance() {
        let root = p256_from_scalar(&[3; 32]).unwrap();
        let a = app_disk_key(&root, &[1; 20], &[2; 20]).unwrap();
        let b = app_disk_key(&root, &[1; 20], &[3; 20]).unwrap();
        let c = app_disk_key(&root, &[1; 20], &[]).unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.expose(), c.expose());
        assert_eq!(
            a.expose(),
            derive_dh_secret(&root, &[&[1; 20], &[2; 20], b"app-disk-crypt-key"])
                .unwrap()
                .expose()
        );
        let env = app_env_key(&root, &[1; 20]).unwrap();
        assert_ne!(env.expose(), a.expose());
        let ca = app_ca_key(&root, &[1; 20]).unwrap();
        assert_eq!(
            p256_scalar(&ca).expose(),
            derive_key32(&[3; 32], &[&[1; 20], b"app-ca"])
                .unwrap()
                .expose()
        );
        assert_eq!(p256_spki_der(&ca.public_key()).len(), 91);
        assert_eq!(p256_pkcs8_der(&ca).expose().len(), P256_PKCS8_LEN);
    }

    #[test]
    fn get_key_signature_chain() {
        let (app_key, kms_sig) = app_k256_key(&[9; 32], &[4; 20]).unwrap();
        let out = get_key(
            &app_key,
            &kms_sig,
            "my/path",
            "signing",
            KeyAlgorithm::Secp256k1,
        )
        .unwrap();
        assert_eq!(
            out.key.expose(),
            derive_key32(app_key.expose(), &[b"my/path"])
                .unwrap()
                .expose()
        );
        let message = format!("signing:{}", hex::encode(out.public_key));
        let signer = recover_keccak256_signer(message.as_bytes(), &out.signature_chain[0]).unwrap();
        assert_eq!(signer, k256_public_key(app_key.expose()).unwrap());
        assert_eq!(out.signature_chain[1], kms_sig.to_vec());
        let other = get_key(
            &app_key,
            &kms_sig,
            "other",
            "signing",
            KeyAlgorithm::Secp256k1,
        )
        .unwrap();
        assert_ne!(other.key.expose(), out.key.expose());
        assert!(matches!(
            KeyAlgorithm::parse("ed448"),
            Err(KdfError::UnsupportedAlgorithm { .. })
        ));
        assert_eq!(KeyAlgorithm::parse("").unwrap(), KeyAlgorithm::Secp256k1);
    }

    #[test]
    fn seed_keys_are_deterministic() {
        let a = keys_from_seed(&[5; 32]).unwrap();
        let b = keys_from_seed(&[5; 32]).unwrap();
        assert_eq!(a.disk_crypt_key.expose(), b.disk_crypt_key.expose());
        assert_eq!(
            a.k256_key.expose(),
            derive_key32(&[5; 32], &[b"app-k256-key"]).unwrap().expose()
        );
        assert!(!format!("{a:?}").contains(&hex::encode(a.k256_key.expose())));
    }
}
