//! The guest API's app-key operations beyond `kdf::get_key` (dstack guest-agent
//! `rpc_service.rs`, `shared/specs/dstack-guest.md` §8), byte for byte:
//!
//! * `GetKey{path, purpose, algorithm}` for `secp256k1` (`k256`, empty) **and `ed25519`**: the
//!   key is `derive_key(k256 app key, [path], 32)` for both; for ed25519 those 32 bytes are the
//!   RFC 8032 secret seed. The chain is `[recoverable secp256k1 signature by the k256 app key
//!   over Keccak-256("<purpose>:<hex public key>"), the KMS's k256_signature]`, the public key
//!   being the 33-byte compressed SEC1 point (secp256k1) or the 32-byte ed25519 key;
//! * `Sign{algorithm, data}`: the `GetKey` key at path `vms`, purpose `signing`, signing `data`
//!   with ed25519, ECDSA secp256k1 over SHA-256 (RFC 6979, low-S, `r ‖ s`), or ECDSA over a
//!   caller-supplied 32-byte digest (`secp256k1_prehashed`); reply chain `[signature, GetKey
//!   chain[0], GetKey chain[1]]`;
//! * `Verify{algorithm, data, signature, public_key}`: a malformed key or signature is an error,
//!   a well-formed signature that does not verify (high-S included) is `false`;
//! * Tappd `DeriveKey{path}`: the P-256 key `derive_key(k256 app key, [path], 32)`.
//!
//! Known answers: dstack's cross-SDK vectors (`init/api/testdata/signature_chain.json`, checked
//! in the guest API's conformance tests) and the tests below.

use ed25519_dalek::{Signer as _, Verifier as _};
use k256::ecdsa::signature::hazmat::{PrehashSigner as _, PrehashVerifier as _};
use k256::ecdsa::signature::{Signer as _, Verifier as _};

use crate::kdf::{self, KdfError, P256Key};
use crate::secret::SecretKey32;

/// `Sign`'s fixed key path.
pub const SIGN_PATH: &str = "vms";
/// `Sign`'s fixed key purpose.
pub const SIGN_PURPOSE: &str = "signing";

/// Errors of app-key derivation, signing and verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppSignError {
    /// An algorithm name dstack does not accept for this call.
    #[error("unsupported algorithm {name:?}")]
    UnsupportedAlgorithm { name: String },
    /// Deriving or using the app key failed.
    #[error("derive the app key")]
    DeriveKey {
        #[source]
        source: KdfError,
    },
    /// `secp256k1_prehashed` needs a 32-byte digest.
    #[error("pre-hashed signing requires a 32-byte digest, but received {len} bytes")]
    PrehashLength { len: usize },
    /// ECDSA signing failed (a zero or out-of-range scalar).
    #[error("secp256k1 signing failed")]
    SignSecp256k1,
    /// `Verify`'s public key does not parse for the algorithm.
    #[error("invalid {algorithm} public key")]
    ParsePublicKey { algorithm: &'static str },
    /// A derived P-256 key does not load as a signing key pair.
    #[error("load the derived P-256 key")]
    LoadP256Key,
    /// `Verify`'s signature does not parse for the algorithm.
    #[error("invalid {algorithm} signature")]
    ParseSignature { algorithm: &'static str },
}

/// What kind of key `GetKey` derives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// secp256k1 (`""`, `secp256k1`, `k256`).
    Secp256k1,
    /// ed25519.
    Ed25519,
}

impl KeyType {
    /// Parses `GetKey`'s `algorithm` (dstack: empty means secp256k1, `k256` is an alias;
    /// matched without regard to case here, a superset of dstack's exact names).
    pub fn parse(name: &str) -> Result<Self, AppSignError> {
        match name.to_ascii_lowercase().as_str() {
            "" | "secp256k1" | "k256" => Ok(Self::Secp256k1),
            "ed25519" => Ok(Self::Ed25519),
            _ => Err(AppSignError::UnsupportedAlgorithm {
                name: name.to_owned(),
            }),
        }
    }
}

/// What `Sign` and `Verify` do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignAlgorithm {
    /// Ed25519 over the data.
    Ed25519,
    /// ECDSA secp256k1 over SHA-256(data).
    Secp256k1,
    /// ECDSA secp256k1 over the data, which is a 32-byte digest.
    Secp256k1Prehashed,
}

impl SignAlgorithm {
    /// Parses `Sign`/`Verify`'s `algorithm` (`k256` is an alias of `secp256k1`; no default:
    /// dstack refuses an empty name here).
    pub fn parse(name: &str) -> Result<Self, AppSignError> {
        match name.to_ascii_lowercase().as_str() {
            "ed25519" => Ok(Self::Ed25519),
            "secp256k1" | "k256" => Ok(Self::Secp256k1),
            "secp256k1_prehashed" => Ok(Self::Secp256k1Prehashed),
            _ => Err(AppSignError::UnsupportedAlgorithm {
                name: name.to_owned(),
            }),
        }
    }

    /// The key the algorithm signs with.
    pub fn key_type(self) -> KeyType {
        match self {
            Self::Ed25519 => KeyType::Ed25519,
            Self::Secp256k1 | Self::Secp256k1Prehashed => KeyType::Secp256k1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Ed25519 => "ed25519",
            Self::Secp256k1 => "secp256k1",
            Self::Secp256k1Prehashed => "secp256k1_prehashed",
        }
    }
}

/// `GetKey`'s answer.
#[derive(Debug)]
pub struct DerivedKey {
    /// The 32 key bytes (secp256k1 scalar or ed25519 seed).
    pub key: SecretKey32,
    /// The public key the chain's first signature covers (33 or 32 bytes).
    pub public_key: Vec<u8>,
    /// `[app key's signature over Keccak-256("<purpose>:<hex public key>"), KMS signature]`.
    pub signature_chain: [Vec<u8>; 2],
}

/// `GetKey{path, purpose, algorithm}`.
pub fn get_key(
    k256_app_key: &SecretKey32,
    k256_signature: &[u8],
    path: &str,
    purpose: &str,
    key_type: KeyType,
) -> Result<DerivedKey, AppSignError> {
    let derive = |source| AppSignError::DeriveKey { source };
    let key = kdf::derive_key32(k256_app_key.expose(), &[path.as_bytes()]).map_err(derive)?;
    let public_key = match key_type {
        KeyType::Secp256k1 => kdf::k256_public_key(key.expose()).map_err(derive)?.to_vec(),
        KeyType::Ed25519 => ed25519_public_key(key.expose()).to_vec(),
    };
    let message = format!("{purpose}:{}", hex::encode(&public_key));
    let signature = kdf::sign_recoverable_keccak256(k256_app_key.expose(), message.as_bytes())
        .map_err(derive)?;
    Ok(DerivedKey {
        key,
        public_key,
        signature_chain: [signature.to_vec(), k256_signature.to_vec()],
    })
}

/// The ed25519 public key of an RFC 8032 secret seed.
pub fn ed25519_public_key(seed: &[u8; 32]) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(seed)
        .verifying_key()
        .to_bytes()
}

/// `Sign`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The signature (64 bytes: ed25519, or ECDSA `r ‖ s`).
    pub signature: Vec<u8>,
    /// `[signature, app key's signature over the signing key, KMS signature]`.
    pub signature_chain: [Vec<u8>; 3],
    /// The signing public key (32-byte ed25519 or 33-byte compressed secp256k1).
    pub public_key: Vec<u8>,
}

/// `Sign{algorithm, data}` with the key of `GetKey{path: "vms", purpose: "signing"}`.
pub fn sign(
    k256_app_key: &SecretKey32,
    k256_signature: &[u8],
    algorithm: SignAlgorithm,
    data: &[u8],
) -> Result<Signed, AppSignError> {
    if algorithm == SignAlgorithm::Secp256k1Prehashed && data.len() != 32 {
        return Err(AppSignError::PrehashLength { len: data.len() });
    }
    let derived = get_key(
        k256_app_key,
        k256_signature,
        SIGN_PATH,
        SIGN_PURPOSE,
        algorithm.key_type(),
    )?;
    let signature = match algorithm {
        SignAlgorithm::Ed25519 => ed25519_dalek::SigningKey::from_bytes(derived.key.expose())
            .sign(data)
            .to_bytes()
            .to_vec(),
        SignAlgorithm::Secp256k1 | SignAlgorithm::Secp256k1Prehashed => {
            let key = k256::ecdsa::SigningKey::from_slice(derived.key.expose()).map_err(|_| {
                AppSignError::DeriveKey {
                    source: KdfError::ParseK256Key,
                }
            })?;
            let signature: k256::ecdsa::Signature = if algorithm == SignAlgorithm::Secp256k1 {
                key.sign(data)
            } else {
                key.sign_prehash(data)
                    .map_err(|_| AppSignError::SignSecp256k1)?
            };
            signature.to_bytes().to_vec()
        }
    };
    let [app_signature, kms_signature] = derived.signature_chain;
    Ok(Signed {
        signature_chain: [signature.clone(), app_signature, kms_signature],
        signature,
        public_key: derived.public_key,
    })
}

/// `Verify{algorithm, data, signature, public_key}`: `Ok(false)` for a well-formed signature
/// that does not verify (a high-S ECDSA signature included, as k256 and dstack reject it).
pub fn verify(
    algorithm: SignAlgorithm,
    data: &[u8],
    signature: &[u8],
    public_key: &[u8],
) -> Result<bool, AppSignError> {
    let name = algorithm.name();
    let bad_key = || AppSignError::ParsePublicKey { algorithm: name };
    let bad_signature = || AppSignError::ParseSignature { algorithm: name };
    match algorithm {
        SignAlgorithm::Ed25519 => {
            let key = <&[u8; 32]>::try_from(public_key).map_err(|_| bad_key())?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(key).map_err(|_| bad_key())?;
            let signature =
                ed25519_dalek::Signature::from_slice(signature).map_err(|_| bad_signature())?;
            Ok(key.verify(data, &signature).is_ok())
        }
        SignAlgorithm::Secp256k1 | SignAlgorithm::Secp256k1Prehashed => {
            let key =
                k256::ecdsa::VerifyingKey::from_sec1_bytes(public_key).map_err(|_| bad_key())?;
            let signature =
                k256::ecdsa::Signature::from_slice(signature).map_err(|_| bad_signature())?;
            Ok(if algorithm == SignAlgorithm::Secp256k1 {
                key.verify(data, &signature).is_ok()
            } else {
                key.verify_prehash(data, &signature).is_ok()
            })
        }
    }
}

/// Tappd `DeriveKey{path}`'s P-256 key: the scalar `derive_key(k256 app key, [path], 32)`
/// (dstack `derive_p256_key_pair_from_bytes`; an out-of-range scalar is an error there too).
pub fn tappd_p256_key(k256_app_key: &SecretKey32, path: &str) -> Result<P256Key, AppSignError> {
    let derive = |source| AppSignError::DeriveKey { source };
    let scalar = kdf::derive_key32(k256_app_key.expose(), &[path.as_bytes()]).map_err(derive)?;
    kdf::p256_from_scalar(scalar.expose()).map_err(derive)
}

/// The key pair type a KMS `SignCert` request certifies (`crate::sign_cert::prepare_with_key`).
pub type CertKeyPair = rcgen::KeyPair;

/// `key` as a [`CertKeyPair`].
pub fn p256_key_pair(key: &P256Key) -> Result<CertKeyPair, AppSignError> {
    let der = kdf::p256_pkcs8_der(key);
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from(der.expose().as_slice());
    rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|_| AppSignError::LoadP256Key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    /// dstack `guest-agent/tests/signature_chain_vectors.rs`: the obviously fake KMS root
    /// scalar `"KMS-root-test-key-do-not-use!!!" ‖ 01` and app id `a9019d1b…0a1b`.
    fn app_key() -> (SecretKey32, [u8; 65]) {
        let root = *b"KMS-root-test-key-do-not-use!!!\x01";
        let app_id = hex::decode("a9019d1b2c3d4e5f60718293a4b5c6d7e8f90a1b").unwrap();
        kdf::app_k256_key(&root, &app_id).unwrap()
    }

    #[test]
    fn ed25519_sign_known_answer() {
        let (key, kms) = app_key();
        assert_eq!(
            hex::encode(kdf::k256_public_key(key.expose()).unwrap()),
            "03f8669c2bf08c4deeb712b81d456cd1eadbf97872dfc5d5ca916edf605fc5b6fe"
        );
        let signed = sign(
            &key,
            &kms,
            SignAlgorithm::Ed25519,
            b"dstack signature chain test vector",
        )
        .unwrap();
        assert_eq!(
            hex::encode(&signed.public_key),
            "f2c761dfee96542500c1ca5460bb0e327b4acb67d882f5846e21baa8d55d2f5b"
        );
        assert_eq!(
            hex::encode(&signed.signature),
            "b29c21a4aa614b434542e938abe9e48c46369c4d37ecfcdbaae02251c73eff5f1912ada04309445575204a110a6fc74dd73734240a7c6e2bffbb5c9e1bd0b408"
        );
        assert_eq!(
            hex::encode(&signed.signature_chain[1]),
            "181498cdcebe6cae41fe1474b3d8af53c7969a2fb20f9f20a5cdcc9d92f5596d500cf9605996ec2e55406666fee630d5882e5e97c2417e079c6f074ca6c7c57301"
        );
        assert_eq!(
            hex::encode(&signed.signature_chain[2]),
            "00ac321fbbe6817c5de0720644e936b20046ff1c9226e0558a9c86856e8a1dd06bb7a7efae1cf3ec522553c28627ea96c139d5dc9cdd5a1898c2406c074438d800"
        );
        assert_eq!(
            verify(
                SignAlgorithm::Ed25519,
                b"dstack signature chain test vector",
                &signed.signature,
                &signed.public_key
            ),
            Ok(true)
        );
        assert_eq!(
            verify(
                SignAlgorithm::Ed25519,
                b"other",
                &signed.signature,
                &signed.public_key
            ),
            Ok(false)
        );
    }

    #[test]
    fn secp256k1_sign_prehashed_and_high_s() {
        use sha2::Digest as _;
        let (key, kms) = app_key();
        let data = b"dstack signature chain test vector";
        let plain = sign(&key, &kms, SignAlgorithm::Secp256k1, data).unwrap();
        let digest = sha2::Sha256::digest(data);
        let pre = sign(&key, &kms, SignAlgorithm::Secp256k1Prehashed, &digest).unwrap();
        assert_eq!(plain, pre);
        assert_eq!(
            hex::encode(&plain.signature),
            "4753cea786fe882ec17a1f75199d15f43e864286ddf1d599a901e503db787dc25c825c8a7a259a7c256fdbf75e74bd73282737f03fc449f9e627c8b540a161f4"
        );
        assert_eq!(
            hex::encode(&plain.public_key),
            "03f6e0f232f5eb6f4b118960a80c3939ea947b6dc727215aba43451910f2741bb8"
        );
        let high_s = hex::decode("4753cea786fe882ec17a1f75199d15f43e864286ddf1d599a901e503db787dc2a37da37585da6583da902408a18b428b9287a4f66f845641d9aa95d78f94df4d").unwrap();
        assert_eq!(
            verify(SignAlgorithm::Secp256k1, data, &high_s, &plain.public_key),
            Ok(false)
        );
        assert_eq!(
            verify(
                SignAlgorithm::Secp256k1Prehashed,
                &digest,
                &plain.signature,
                &plain.public_key
            ),
            Ok(true)
        );
        assert_eq!(
            sign(&key, &kms, SignAlgorithm::Secp256k1Prehashed, data),
            Err(AppSignError::PrehashLength { len: 34 })
        );
        assert_eq!(
            verify(SignAlgorithm::Secp256k1, data, &[1; 63], &plain.public_key),
            Err(AppSignError::ParseSignature {
                algorithm: "secp256k1"
            })
        );
        assert_eq!(
            verify(SignAlgorithm::Ed25519, data, &[1; 64], &[2; 31]),
            Err(AppSignError::ParsePublicKey {
                algorithm: "ed25519"
            })
        );
    }

    #[test]
    fn get_key_for_both_types_and_names() {
        let key = Secret::new([0x11; 32]);
        let k = get_key(&key, b"kms", "p", "purpose", KeyType::Secp256k1).unwrap();
        let old = kdf::get_key(&key, b"kms", "p", "purpose", kdf::KeyAlgorithm::Secp256k1).unwrap();
        assert_eq!(k.key.expose(), old.key.expose());
        assert_eq!(k.public_key, old.public_key);
        assert_eq!(k.signature_chain, old.signature_chain);
        let e = get_key(&key, b"kms", "p", "purpose", KeyType::Ed25519).unwrap();
        assert_eq!(e.key.expose(), k.key.expose());
        assert_eq!(e.public_key.len(), 32);
        let message = format!("purpose:{}", hex::encode(&e.public_key));
        assert_eq!(
            kdf::recover_keccak256_signer(message.as_bytes(), &e.signature_chain[0]).unwrap(),
            kdf::k256_public_key(key.expose()).unwrap()
        );
        assert_eq!(KeyType::parse("").unwrap(), KeyType::Secp256k1);
        assert_eq!(KeyType::parse("k256").unwrap(), KeyType::Secp256k1);
        assert_eq!(KeyType::parse("ed25519").unwrap(), KeyType::Ed25519);
        assert_eq!(
            KeyType::parse("ed448"),
            Err(AppSignError::UnsupportedAlgorithm {
                name: "ed448".into()
            })
        );
        assert_eq!(
            SignAlgorithm::parse(""),
            Err(AppSignError::UnsupportedAlgorithm {
                name: String::new()
            })
        );
        assert_eq!(
            SignAlgorithm::parse("k256").unwrap(),
            SignAlgorithm::Secp256k1
        );
        let p256 = tappd_p256_key(&key, "p").unwrap();
        assert_eq!(kdf::p256_scalar(&p256).expose(), k.key.expose());
        let pair = p256_key_pair(&p256).unwrap();
        assert_eq!(
            rcgen::PublicKeyData::subject_public_key_info(&pair),
            kdf::p256_spki_der(&p256.public_key())
        );
    }
}
