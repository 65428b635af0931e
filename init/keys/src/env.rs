//! The encrypted environment (`shared/specs/dstack-guest.md` §7) and the launch token (§7.5).
//!
//! `.encrypted-env` = ephemeral X25519 public key (32) ‖ IV (12) ‖ AES-256-GCM ciphertext ‖ tag
//! (16). The AES key is the raw X25519 shared secret of the app's env key and the ephemeral key
//! (no KDF, no associated data); an all-zero shared secret is refused. The plaintext is
//! `{"env":[{"key":K,"value":V},…]}` with dstack's limits (≤ 1024 entries, names
//! `^[A-Za-z_][A-Za-z0-9_]*$` of ≤ 255 bytes, values ≤ 128 KiB, total ≤ 1 MiB); values with NUL
//! are refused (they cannot be passed through `execve`). Names outside `allowed_envs` are refused
//! by default ([`DisallowedEnv::Reject`]); dstack itself skips them with a warning
//! ([`DisallowedEnv::Skip`]).

use aes_gcm::aead::{Aead as _, KeyInit as _};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::secret::{Secret, SecretBytes, SecretKey32, SecretString};

/// Largest `.encrypted-env` (the host-share cap).
pub const MAX_BLOB_LEN: usize = 256 * 1024;
/// Most entries in the plaintext.
pub const MAX_ENTRIES: usize = 1024;
/// Longest name.
pub const MAX_NAME_LEN: usize = 255;
/// Longest value.
pub const MAX_VALUE_LEN: usize = 128 * 1024;
/// Most bytes of names and values together.
pub const MAX_TOTAL_LEN: usize = 1024 * 1024;
/// Length of the ephemeral public key.
pub const EPHEMERAL_KEY_LEN: usize = 32;
/// Length of the IV.
pub const IV_LEN: usize = 12;
/// Length of the GCM tag.
pub const TAG_LEN: usize = 16;
/// Domain prefix of the launch-token hash.
pub const LAUNCH_TOKEN_DOMAIN: &[u8] = b"dstack-launch-token/v1:";
/// Shortest accepted launch token.
pub const MIN_LAUNCH_TOKEN_LEN: usize = 32;

/// Errors of decrypting and checking the environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// The blob is shorter than key ‖ IV ‖ tag or longer than the cap.
    #[error("encrypted env is {len} bytes, expected {min}..={max}")]
    BlobLength { len: usize, min: usize, max: usize },
    /// The X25519 shared secret is all zeros (a low-order ephemeral key).
    #[error("encrypted env uses a low-order ephemeral key")]
    LowOrderEphemeralKey,
    /// AES-GCM authentication failed (tampered blob or wrong key).
    #[error("authentication failed")]
    DecryptEnv,
    /// Encryption failed.
    #[error("encrypt the env")]
    EncryptEnv,
    /// The plaintext is not `{"env":[{"key","value"}]}` (the parser's message is not kept: it
    /// could quote secret bytes).
    #[error("decrypted env is not {{\"env\":[{{\"key\",\"value\"}}]}} JSON")]
    ParseEnv,
    /// Too many entries.
    #[error("decrypted env has {count} entries, at most {max} are allowed")]
    TooManyEntries { count: usize, max: usize },
    /// A name is empty, too long or has characters outside `[A-Za-z0-9_]` (or starts with a digit).
    #[error("env name {name:?} is not a valid variable name")]
    InvalidName { name: String },
    /// A name appears twice.
    #[error("env name {name} appears more than once")]
    DuplicateName { name: String },
    /// A value contains NUL.
    #[error("env value of {name} contains NUL")]
    NulInValue { name: String },
    /// A value is too long.
    #[error("env value of {name} is {len} bytes, at most {max} are allowed")]
    ValueTooLong {
        name: String,
        len: usize,
        max: usize,
    },
    /// Names and values together are too long.
    #[error("decrypted env is {len} bytes, at most {max} are allowed")]
    TotalTooLong { len: usize, max: usize },
    /// A name is not in app-compose `allowed_envs`.
    #[error("env name {name} is not in allowed_envs")]
    NameNotAllowed { name: String },
    /// The OS random number generator failed.
    #[error("get random bytes")]
    Random,
}

/// One decrypted variable. The name is public (it may be reported), the value is secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Value.
    pub value: SecretString,
}

/// What to do with a name outside `allowed_envs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DisallowedEnv {
    /// Refuse the whole environment ([`EnvError::NameNotAllowed`]).
    #[default]
    Reject,
    /// Drop the entry and report its name (dstack's behaviour).
    Skip,
}

/// The checked environment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DecryptedEnv {
    /// Accepted variables, in the blob's order.
    pub vars: Vec<EnvVar>,
    /// Names dropped because they are not allowed ([`DisallowedEnv::Skip`] only).
    pub skipped: Vec<String>,
}

impl DecryptedEnv {
    /// The accepted names (safe to log or report).
    pub fn names(&self) -> Vec<&str> {
        self.vars.iter().map(|v| v.name.as_str()).collect()
    }
}

/// Decrypts a `.encrypted-env` blob with the app's env key.
pub fn decrypt_blob(env_key: &SecretKey32, blob: &[u8]) -> Result<SecretBytes, EnvError> {
    let min = EPHEMERAL_KEY_LEN + IV_LEN + TAG_LEN;
    if blob.len() < min || blob.len() > MAX_BLOB_LEN {
        return Err(EnvError::BlobLength {
            len: blob.len(),
            min,
            max: MAX_BLOB_LEN,
        });
    }
    let (ephemeral, rest) = blob.split_at(EPHEMERAL_KEY_LEN);
    let (iv, ciphertext) = rest.split_at(IV_LEN);
    let mut ephemeral_bytes = [0u8; EPHEMERAL_KEY_LEN];
    ephemeral_bytes.copy_from_slice(ephemeral);
    let secret = x25519_dalek::StaticSecret::from(*env_key.expose());
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(ephemeral_bytes));
    if !shared.was_contributory() {
        return Err(EnvError::LowOrderEphemeralKey);
    }
    let cipher = Aes256Gcm::new_from_slice(shared.as_bytes()).map_err(|_| EnvError::DecryptEnv)?;
    let nonce = Nonce::try_from(iv).map_err(|_| EnvError::DecryptEnv)?;
    cipher
        .decrypt(&nonce, ciphertext)
        .map(Secret::new)
        .map_err(|_| EnvError::DecryptEnv)
}

/// Encrypts `plaintext` to the app's env public key with the given ephemeral secret and IV
/// (what a client or the test KMS does; deterministic for tests).
pub fn encrypt_blob_with(
    env_public_key: &[u8; 32],
    ephemeral_secret: &SecretKey32,
    iv: &[u8; IV_LEN],
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvError> {
    let secret = x25519_dalek::StaticSecret::from(*ephemeral_secret.expose());
    let ephemeral_public = x25519_dalek::PublicKey::from(&secret);
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*env_public_key));
    if !shared.was_contributory() {
        return Err(EnvError::LowOrderEphemeralKey);
    }
    let cipher = Aes256Gcm::new_from_slice(shared.as_bytes()).map_err(|_| EnvError::EncryptEnv)?;
    let nonce = Nonce::from(*iv);
    let ciphertext = cipher
        .encrypt(&nonce, plaintext)
        .map_err(|_| EnvError::EncryptEnv)?;
    let mut out = Vec::with_capacity(EPHEMERAL_KEY_LEN + IV_LEN + ciphertext.len());
    out.extend_from_slice(ephemeral_public.as_bytes());
    out.extend_from_slice(iv);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// [`encrypt_blob_with`] with a fresh ephemeral key and IV from the OS.
pub fn encrypt_blob(env_public_key: &[u8; 32], plaintext: &[u8]) -> Result<Vec<u8>, EnvError> {
    use ring::rand::SecureRandom as _;
    let rng = ring::rand::SystemRandom::new();
    let mut ephemeral = Secret::new([0u8; 32]);
    let mut iv = [0u8; IV_LEN];
    rng.fill(ephemeral.expose_mut())
        .and_then(|()| rng.fill(&mut iv))
        .map_err(|_| EnvError::Random)?;
    encrypt_blob_with(env_public_key, &ephemeral, &iv, plaintext)
}

/// The plaintext document for a list of `(name, value)` pairs.
pub fn env_plaintext(vars: &[(&str, &str)]) -> SecretBytes {
    let env: Vec<serde_json::Value> = vars
        .iter()
        .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
        .collect();
    Secret::new(serde_json::json!({ "env": env }).to_string().into_bytes())
}

#[derive(Deserialize)]
struct RawEnv {
    env: Vec<RawVar>,
}

#[derive(Deserialize)]
struct RawVar {
    key: String,
    value: String,
}

/// True for `^[A-Za-z_][A-Za-z0-9_]*$` of at most [`MAX_NAME_LEN`] bytes.
pub fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    first_ok && name.len() <= MAX_NAME_LEN && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Parses and checks the plaintext, then applies `allowed_envs` with `policy`.
pub fn parse_env(
    plaintext: &[u8],
    allowed_envs: &[String],
    policy: DisallowedEnv,
) -> Result<DecryptedEnv, EnvError> {
    let raw: RawEnv = serde_json::from_slice(plaintext).map_err(|_| EnvError::ParseEnv)?;
    let raw = Secret::new(ZeroizingVars(raw.env));
    let vars = &raw.expose().0;
    if vars.len() > MAX_ENTRIES {
        return Err(EnvError::TooManyEntries {
            count: vars.len(),
            max: MAX_ENTRIES,
        });
    }
    let mut total = 0usize;
    let mut out = DecryptedEnv::default();
    let mut seen = std::collections::BTreeSet::new();
    for var in vars {
        if !is_valid_name(&var.key) {
            return Err(EnvError::InvalidName {
                name: var.key.chars().take(MAX_NAME_LEN).collect(),
            });
        }
        if !seen.insert(var.key.as_str()) {
            return Err(EnvError::DuplicateName {
                name: var.key.clone(),
            });
        }
        if var.value.contains('\0') {
            return Err(EnvError::NulInValue {
                name: var.key.clone(),
            });
        }
        if var.value.len() > MAX_VALUE_LEN {
            return Err(EnvError::ValueTooLong {
                name: var.key.clone(),
                len: var.value.len(),
                max: MAX_VALUE_LEN,
            });
        }
        total = total.saturating_add(var.key.len() + var.value.len());
        if total > MAX_TOTAL_LEN {
            return Err(EnvError::TotalTooLong {
                len: total,
                max: MAX_TOTAL_LEN,
            });
        }
        if !allowed_envs.iter().any(|a| a == &var.key) {
            match policy {
                DisallowedEnv::Reject => {
                    return Err(EnvError::NameNotAllowed {
                        name: var.key.clone(),
                    });
                }
                DisallowedEnv::Skip => {
                    log::warn!("env {} is not in allowed_envs; skipped", var.key);
                    out.skipped.push(var.key.clone());
                    continue;
                }
            }
        }
        out.vars.push(EnvVar {
            name: var.key.clone(),
            value: Secret::new(var.value.clone()),
        });
    }
    Ok(out)
}

/// The parsed entries, zeroized when dropped.
struct ZeroizingVars(Vec<RawVar>);

impl zeroize::Zeroize for ZeroizingVars {
    fn zeroize(&mut self) {
        for var in &mut self.0 {
            var.value.zeroize();
        }
    }
}

/// Decrypts and checks `.encrypted-env`. `None` (no file) gives an empty environment.
pub fn decrypt_env(
    env_key: &SecretKey32,
    blob: Option<&[u8]>,
    allowed_envs: &[String],
    policy: DisallowedEnv,
) -> Result<DecryptedEnv, EnvError> {
    let Some(blob) = blob else {
        return Ok(DecryptedEnv::default());
    };
    let plaintext = decrypt_blob(env_key, blob)?;
    parse_env(plaintext.expose(), allowed_envs, policy)
}

/// Errors of the launch-token check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchTokenError {
    /// `requirements.launch_token_hash` is not 32 bytes of hex.
    #[error("requirements.launch_token_hash is not 64 hex digits")]
    DecodeHash,
    /// No `.user-config` although app-compose requires a launch token.
    #[error("a launch token is required but .user-config is missing")]
    MissingUserConfig,
    /// `.user-config` is not JSON.
    #[error(".user-config is not JSON")]
    ParseUserConfig,
    /// No string at `/dstack/launch_token`.
    #[error(".user-config has no string at /dstack/launch_token")]
    MissingToken,
    /// The token is shorter than 32 bytes.
    #[error("launch token is {len} bytes, at least {min} are required")]
    TokenTooShort { len: usize, min: usize },
    /// The token's hash differs from `launch_token_hash`.
    #[error("launch token does not match requirements.launch_token_hash")]
    Mismatch,
}

/// `SHA-256("dstack-launch-token/v1:" ‖ token)`.
pub fn launch_token_hash(token: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(LAUNCH_TOKEN_DOMAIN)
        .chain_update(token)
        .finalize()
        .into()
}

/// The launch-token gate (HEAD, manifest 3): when app-compose `requirements.launch_token_hash`
/// is set, `.user-config` must hold a token of ≥ 32 bytes at `/dstack/launch_token` whose
/// [`launch_token_hash`] equals it. Runs before any key is requested. `None` hash: no check.
pub fn check_launch_token(
    required_hash: Option<&str>,
    user_config: Option<&[u8]>,
) -> Result<(), LaunchTokenError> {
    let Some(required_hash) = required_hash else {
        return Ok(());
    };
    let required: [u8; 32] = hex::decode(required_hash.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(LaunchTokenError::DecodeHash)?;
    let user_config = user_config.ok_or(LaunchTokenError::MissingUserConfig)?;
    let doc: serde_json::Value =
        serde_json::from_slice(user_config).map_err(|_| LaunchTokenError::ParseUserConfig)?;
    let token = doc
        .pointer("/dstack/launch_token")
        .and_then(serde_json::Value::as_str)
        .ok_or(LaunchTokenError::MissingToken)?;
    if token.len() < MIN_LAUNCH_TOKEN_LEN {
        return Err(LaunchTokenError::TokenTooShort {
            len: token.len(),
            min: MIN_LAUNCH_TOKEN_LEN,
        });
    }
    let got = launch_token_hash(token.as_bytes());
    // Constant time: the comparison must not tell how many leading bytes matched.
    let diff = got
        .iter()
        .zip(required.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 {
        return Err(LaunchTokenError::Mismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn vectors() -> Value {
        serde_json::from_str(include_str!("../testdata/crypto-and-appinfo-vectors.json")).unwrap()
    }

    fn vector_key_and_blob() -> (SecretKey32, Vec<u8>, String) {
        let v = vectors();
        let e = &v["env_decrypt"];
        let key: [u8; 32] = hex::decode(e["env_crypt_key_hex"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let blob = hex::decode(e["ciphertext_hex"].as_str().unwrap()).unwrap();
        (
            Secret::new(key),
            blob,
            e["plaintext"].as_str().unwrap().to_owned(),
        )
    }

    #[test]
    fn dstack_test_dh_decrypt_known_answer() {
        let (key, blob, plaintext) = vector_key_and_blob();
        let got = decrypt_blob(&key, &blob).unwrap();
        assert_eq!(got.expose(), plaintext.as_bytes());
    }

    #[test]
    fn tampered_blob_and_wrong_key_fail_authentication() {
        let (key, blob, _) = vector_key_and_blob();
        for i in [0, 33, 40, 50, blob.len() - 1] {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert!(
                matches!(
                    decrypt_blob(&key, &bad),
                    Err(EnvError::DecryptEnv | EnvError::LowOrderEphemeralKey)
                ),
                "byte {i}"
            );
        }
        let other = Secret::new([1u8; 32]);
        assert_eq!(decrypt_blob(&other, &blob), Err(EnvError::DecryptEnv));
        assert!(matches!(
            decrypt_blob(&key, &blob[..59]),
            Err(EnvError::BlobLength { len: 59, .. })
        ));
        // A low-order (all-zero) ephemeral key gives an all-zero shared secret.
        let mut low = blob.clone();
        low[..32].fill(0);
        assert_eq!(
            decrypt_blob(&key, &low),
            Err(EnvError::LowOrderEphemeralKey)
        );
    }

    #[test]
    fn round_trip_with_a_fresh_key() {
        let key = Secret::new([0x42; 32]);
        let public = crate::kdf::env_public_key(&key);
        let plaintext = env_plaintext(&[("API_KEY", "s3cr3t value"), ("DEBUG", "1")]);
        let blob = encrypt_blob(&public, plaintext.expose()).unwrap();
        let allowed = vec!["API_KEY".to_owned(), "DEBUG".to_owned()];
        let env = decrypt_env(&key, Some(&blob), &allowed, DisallowedEnv::Reject).unwrap();
        assert_eq!(env.names(), ["API_KEY", "DEBUG"]);
        assert_eq!(env.vars[0].value.expose(), "s3cr3t value");
        assert!(!format!("{env:?}").contains("s3cr3t"));
        // Deterministic form: same inputs, same blob.
        let eph = Secret::new([7; 32]);
        let a = encrypt_blob_with(&public, &eph, &[1; 12], b"x").unwrap();
        let b = encrypt_blob_with(&public, &eph, &[1; 12], b"x").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 32 + 12 + 1 + 16);
        assert_eq!(
            decrypt_env(&key, None, &allowed, DisallowedEnv::Reject).unwrap(),
            DecryptedEnv::default()
        );
    }

    #[test]
    fn allowed_envs_reject_or_skip() {
        let plaintext = env_plaintext(&[("A", "1"), ("B", "2")]);
        let allowed = vec!["A".to_owned()];
        assert_eq!(
            parse_env(plaintext.expose(), &allowed, DisallowedEnv::Reject),
            Err(EnvError::NameNotAllowed { name: "B".into() })
        );
        let env = parse_env(plaintext.expose(), &allowed, DisallowedEnv::Skip).unwrap();
        assert_eq!(env.names(), ["A"]);
        assert_eq!(env.skipped, ["B"]);
    }

    #[test]
    fn names_values_and_limits() {
        let all = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for bad in ["", "1A", "A-B", "A B", "Ä", "A=B"] {
            let p = env_plaintext(&[(bad, "v")]);
            assert_eq!(
                parse_env(p.expose(), &all(&[bad]), DisallowedEnv::Reject),
                Err(EnvError::InvalidName { name: bad.into() }),
                "{bad:?}"
            );
        }
        for good in ["_", "a", "A_1", "_x9"] {
            assert!(is_valid_name(good), "{good}");
        }
        assert!(!is_valid_name(&"A".repeat(256)));
        let p = env_plaintext(&[("A", "x\0y")]);
        assert_eq!(
            parse_env(p.expose(), &all(&["A"]), DisallowedEnv::Reject),
            Err(EnvError::NulInValue { name: "A".into() })
        );
        let p = env_plaintext(&[("A", "1"), ("A", "2")]);
        assert_eq!(
            parse_env(p.expose(), &all(&["A"]), DisallowedEnv::Reject),
            Err(EnvError::DuplicateName { name: "A".into() })
        );
        let big = "v".repeat(MAX_VALUE_LEN + 1);
        let p = env_plaintext(&[("A", &big)]);
        assert!(matches!(
            parse_env(p.expose(), &all(&["A"]), DisallowedEnv::Reject),
            Err(EnvError::ValueTooLong { .. })
        ));
        let names: Vec<String> = (0..MAX_ENTRIES + 1).map(|i| format!("V{i}")).collect();
        let pairs: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "")).collect();
        let p = env_plaintext(&pairs);
        assert!(matches!(
            parse_env(p.expose(), &names, DisallowedEnv::Reject),
            Err(EnvError::TooManyEntries { count: 1025, .. })
        ));
        let value = "v".repeat(MAX_VALUE_LEN);
        let names: Vec<String> = (0..9).map(|i| format!("V{i}")).collect();
        let pairs: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), value.as_str())).collect();
        let p = env_plaintext(&pairs);
        assert!(matches!(
            parse_env(p.expose(), &names, DisallowedEnv::Reject),
            Err(EnvError::TotalTooLong { .. })
        ));
        for bad in [
            &b"[]"[..],
            b"{\"env\":{}}",
            b"{\"env\":[{\"key\":1}]}",
            b"\xff",
        ] {
            assert_eq!(
                parse_env(bad, &[], DisallowedEnv::Reject),
                Err(EnvError::ParseEnv)
            );
        }
    }

    #[test]
    fn launch_token_known_answer() {
        let v = vectors();
        let t = &v["launch_token_hash"];
        let token = t["token"].as_str().unwrap();
        let hash = t["hash_hex"].as_str().unwrap();
        assert_eq!(hex::encode(launch_token_hash(token.as_bytes())), hash);
        let config = serde_json::json!({"dstack": {"launch_token": token}}).to_string();
        check_launch_token(Some(hash), Some(config.as_bytes())).unwrap();
        check_launch_token(None, None).unwrap();
    }

    #[test]
    fn launch_token_refusals() {
        let token = "unit-test-launch-token-0000000001";
        let hash = hex::encode(launch_token_hash(token.as_bytes()));
        let config = |t: &str| serde_json::json!({"dstack": {"launch_token": t}}).to_string();
        let wrong = config("unit-test-launch-token-0000000002");
        assert_eq!(
            check_launch_token(Some(&hash), Some(wrong.as_bytes())),
            Err(LaunchTokenError::Mismatch)
        );
        // The legacy plain SHA-256 of the token is not accepted.
        let plain = hex::encode(Sha256::digest(token.as_bytes()));
        assert_eq!(
            check_launch_token(Some(&plain), Some(config(token).as_bytes())),
            Err(LaunchTokenError::Mismatch)
        );
        assert_eq!(
            check_launch_token(Some(&hash), Some(config("short").as_bytes())),
            Err(LaunchTokenError::TokenTooShort { len: 5, min: 32 })
        );
        assert_eq!(
            check_launch_token(Some(&hash), None),
            Err(LaunchTokenError::MissingUserConfig)
        );
        assert_eq!(
            check_launch_token(Some(&hash), Some(b"{}")),
            Err(LaunchTokenError::MissingToken)
        );
        assert_eq!(
            check_launch_token(Some(&hash), Some(b"not json")),
            Err(LaunchTokenError::ParseUserConfig)
        );
        assert_eq!(
            check_launch_token(Some("abcd"), Some(config(token).as_bytes())),
            Err(LaunchTokenError::DecodeHash)
        );
    }
}
