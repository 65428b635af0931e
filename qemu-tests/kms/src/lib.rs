//! A dstack-protocol KMS for tests and the demo (**INSECURE**: it trusts the simulated TEE's
//! quotes). It speaks the same pRPC-over-TLS protocol as dstack's KMS (`GetTempCaCert`, then
//! `GetAppKey` over mutual RA-TLS), with its own root keys:
//!
//! * verifies the client certificate chains to its temporary CA (rustls), that the quote in the
//!   certificate binds the certificate key (`ratls-cert:` report data), that the quote is a
//!   valid simulated-TEE quote under the configured root ([`QuoteTrust`]), and that the event log
//!   replays to the quote's RTMR3 (`measure` replay code);
//! * reads app-id, compose-hash and instance-id from the replayed events and refuses a
//!   compose-hash that is not on its allow-list;
//! * with [`Policy::allowed_os_image_hashes`] set, refuses keys unless the `os_image_hash` the
//!   request's `vm_config` claims is allowed and the quote's boot registers are that image's
//!   (as dstack's KMS verifies the OS image before its `bootAuth` allow-list sees the hash);
//! * returns keys derived exactly as dstack's KMS derives them (`cvm_keys::kdf`);
//! * `SignCert` (API version 2): verifies the SCALE CSR, its signature and its attestation,
//!   authorizes the app the same way, and signs with the derived app CA
//!   (`cvm_keys::sign_cert`).

#![forbid(unsafe_code)]

pub mod quote_check;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use cvm_keys::kdf;
use cvm_keys::ratls::{CertSpec, RaTlsCert, USAGE_KMS_RPC};
use cvm_keys::secret::{Secret, SecretKey32};
use measure::dstack_identity::find_system_event;
use measure::rtmr::{RtmrIndex, Sha384Digest};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};

pub use crate::quote_check::{QuoteCheckError, QuoteTrust};

/// Errors of setting up or running the KMS.
#[derive(Debug, thiserror::Error)]
pub enum KmsServerError {
    /// Generating or loading a key or certificate failed.
    #[error("prepare the {what}")]
    Certificate {
        what: &'static str,
        #[source]
        source: cvm_keys::ratls::RaTlsError,
    },
    /// A key derivation failed.
    #[error("derive the {what}")]
    Derive {
        what: &'static str,
        #[source]
        source: kdf::KdfError,
    },
    /// Reading or writing the state directory failed.
    #[error("{action} {path}")]
    StateFile {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A state file is malformed.
    #[error("state file {path} is malformed")]
    ParseStateFile { path: String },
    /// rustls refused the configuration.
    #[error("configure TLS")]
    ConfigureTls {
        #[source]
        source: rustls::Error,
    },
    /// The client verifier could not be built.
    #[error("configure client verification")]
    ConfigureClientAuth {
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// Socket setup failed.
    #[error("{action}")]
    Socket {
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The KMS's keys: root CA (whose key is the KDF root), k256 root, temporary CA, RPC
/// certificate (`kms:rpc`, signed by the root CA).
#[derive(Debug)]
pub struct KmsKeys {
    /// Root CA certificate (PEM).
    pub root_ca_pem: String,
    root_ca_key_pem: Secret<String>,
    root_key: kdf::P256Key,
    k256_root: SecretKey32,
    /// Temporary CA certificate (PEM), handed to every guest.
    pub temp_ca_pem: String,
    temp_ca_key_pem: Secret<String>,
    /// RPC server certificate (PEM).
    pub rpc_cert_pem: String,
    rpc_key_pem: Secret<String>,
}

const FILES: [&str; 7] = [
    "root-ca.pem",
    "root-ca.key",
    "k256-root.hex",
    "temp-ca.pem",
    "temp-ca.key",
    "rpc.pem",
    "rpc.key",
];

impl KmsKeys {
    /// Fresh keys; the RPC certificate names `alt_names` (DNS names or IP addresses).
    pub fn generate(alt_names: &[String]) -> Result<Self, KmsServerError> {
        Self::generate_with_rpc_usage(alt_names, Some(USAGE_KMS_RPC))
    }

    /// Like [`Self::generate`] with another (or no) dstack usage on the RPC certificate, to test
    /// that clients refuse such a server.
    pub fn generate_with_rpc_usage(
        alt_names: &[String],
        rpc_usage: Option<&str>,
    ) -> Result<Self, KmsServerError> {
        let cert = |what| move |source| KmsServerError::Certificate { what, source };
        let root = CertSpec {
            org_name: Some("Dstack"),
            subject: "Dstack KMS CA (cvm-init test KMS)",
            ca_path_len: Some(1),
            ..CertSpec::default()
        }
        .self_signed()
        .map_err(cert("root CA"))?;
        let temp = CertSpec {
            org_name: Some("Dstack"),
            subject: "Dstack Client Temp CA",
            ca_path_len: Some(0),
            ..CertSpec::default()
        }
        .self_signed()
        .map_err(cert("temporary CA"))?;
        let root_signer =
            cvm_keys::ratls::CaSigner::from_pem("root", &root.cert_pem, root.key_pem.expose())
                .map_err(cert("root CA signer"))?;
        let rpc = CertSpec {
            subject: "cvm-init test KMS",
            alt_names: alt_names.to_vec(),
            special_usage: rpc_usage,
            server_auth: true,
            ..CertSpec::default()
        }
        .signed_by(&root_signer)
        .map_err(cert("RPC certificate"))?;
        let mut k256_root = Secret::new([0u8; 32]);
        loop {
            fill_random(k256_root.expose_mut())?;
            if kdf::k256_public_key(k256_root.expose()).is_ok() {
                break;
            }
        }
        Self::from_parts(
            root.cert_pem,
            root.key_pem,
            k256_root,
            temp.cert_pem,
            temp.key_pem,
            rpc.cert_pem,
            rpc.key_pem,
        )
    }

    fn from_parts(
        root_ca_pem: String,
        root_ca_key_pem: Secret<String>,
        k256_root: SecretKey32,
        temp_ca_pem: String,
        temp_ca_key_pem: Secret<String>,
        rpc_cert_pem: String,
        rpc_key_pem: Secret<String>,
    ) -> Result<Self, KmsServerError> {
        let root_key = kdf::p256_from_pem(root_ca_key_pem.expose()).map_err(|source| {
            KmsServerError::Derive {
                what: "root key",
                source,
            }
        })?;
        Ok(Self {
            root_ca_pem,
            root_ca_key_pem,
            root_key,
            k256_root,
            temp_ca_pem,
            temp_ca_key_pem,
            rpc_cert_pem,
            rpc_key_pem,
        })
    }

    /// Loads the keys from `dir`, or generates and saves them there.
    pub fn load_or_generate(dir: &Path, alt_names: &[String]) -> Result<Self, KmsServerError> {
        let path = |name: &str| dir.join(name);
        if path(FILES[0]).exists() {
            let read = |name: &str| {
                std::fs::read_to_string(path(name)).map_err(|source| KmsServerError::StateFile {
                    action: "read",
                    path: path(name).display().to_string(),
                    source,
                })
            };
            let mut k256 = Secret::new([0u8; 32]);
            hex::decode_to_slice(read(FILES[2])?.trim(), k256.expose_mut()).map_err(|_| {
                KmsServerError::ParseStateFile {
                    path: path(FILES[2]).display().to_string(),
                }
            })?;
            return Self::from_parts(
                read(FILES[0])?,
                Secret::new(read(FILES[1])?),
                k256,
                read(FILES[3])?,
                Secret::new(read(FILES[4])?),
                read(FILES[5])?,
                Secret::new(read(FILES[6])?),
            );
        }
        let keys = Self::generate(alt_names)?;
        let contents = [
            keys.root_ca_pem.clone(),
            keys.root_ca_key_pem.expose().clone(),
            hex::encode(keys.k256_root.expose()),
            keys.temp_ca_pem.clone(),
            keys.temp_ca_key_pem.expose().clone(),
            keys.rpc_cert_pem.clone(),
            keys.rpc_key_pem.expose().clone(),
        ];
        std::fs::create_dir_all(dir).map_err(|source| KmsServerError::StateFile {
            action: "create",
            path: dir.display().to_string(),
            source,
        })?;
        for (name, text) in FILES.iter().zip(contents) {
            std::fs::write(path(name), text).map_err(|source| KmsServerError::StateFile {
                action: "write",
                path: path(name).display().to_string(),
                source,
            })?;
        }
        let id = keys.key_provider_id();
        std::fs::write(path("key-provider-id"), &id).map_err(|source| {
            KmsServerError::StateFile {
                action: "write",
                path: path("key-provider-id").display().to_string(),
                source,
            }
        })?;
        Ok(keys)
    }

    /// The root CA's SubjectPublicKeyInfo DER (the key-provider id, unhexed).
    pub fn root_spki_der(&self) -> Vec<u8> {
        kdf::p256_spki_der(&self.root_key.public_key())
    }

    /// Hex of [`Self::root_spki_der`]: what app-compose `key_provider_id` pins and what the
    /// `key-provider` event carries.
    pub fn key_provider_id(&self) -> String {
        hex::encode(self.root_spki_der())
    }

    /// The compressed k256 root public key.
    pub fn k256_public_key(&self) -> Result<[u8; 33], KmsServerError> {
        kdf::k256_public_key(self.k256_root.expose()).map_err(|source| KmsServerError::Derive {
            what: "k256 public key",
            source,
        })
    }

    /// The secrets this KMS hands to `app_id`/`instance_id` (disk key, env key, k256 app key),
    /// so a test can scan console and results output for them.
    pub fn app_secrets(
        &self,
        app_id: &[u8],
        instance_id: &[u8],
    ) -> Result<Vec<Secret<Vec<u8>>>, KmsServerError> {
        let derive = |what| move |source| KmsServerError::Derive { what, source };
        let disk =
            kdf::app_disk_key(&self.root_key, app_id, instance_id).map_err(derive("disk key"))?;
        let env = kdf::app_env_key(&self.root_key, app_id).map_err(derive("env key"))?;
        let (k256, _) =
            kdf::app_k256_key(self.k256_root.expose(), app_id).map_err(derive("k256 key"))?;
        Ok([disk, env, k256]
            .iter()
            .map(|k| Secret::new(k.expose().to_vec()))
            .collect())
    }

    /// The app CA: key `derive_p256(root_ca_key, [app_id, "app-ca"])`, CN "Dstack App CA",
    /// O "Dstack", usage `app:ca`, app-id extension, path length 0, signed by the root CA.
    /// Returns its certificate (PEM) and a signer.
    pub fn app_ca(
        &self,
        app_id: &[u8],
    ) -> Result<(String, cvm_keys::ratls::CaSigner), KmsServerError> {
        let cert = |what| move |source| KmsServerError::Certificate { what, source };
        let key =
            kdf::app_ca_key(&self.root_key, app_id).map_err(|source| KmsServerError::Derive {
                what: "app CA key",
                source,
            })?;
        let pair = cvm_keys::ratls::key_pair_from_pkcs8(kdf::p256_pkcs8_der(&key).expose())
            .map_err(cert("app CA key"))?;
        let root = cvm_keys::ratls::CaSigner::from_pem(
            "root",
            &self.root_ca_pem,
            self.root_ca_key_pem.expose(),
        )
        .map_err(cert("root CA signer"))?;
        let app_ca = CertSpec {
            org_name: Some("Dstack"),
            subject: "Dstack App CA",
            ca_path_len: Some(0),
            special_usage: Some(cvm_keys::ratls::USAGE_APP_CA),
            app_id: Some(app_id),
            ..CertSpec::default()
        }
        .signed_by_with(&pair, &root)
        .map_err(cert("app CA"))?;
        let signer =
            cvm_keys::ratls::CaSigner::from_pem("app", &app_ca.cert_pem, app_ca.key_pem.expose())
                .map_err(cert("app CA signer"))?;
        Ok((app_ca.cert_pem, signer))
    }

    /// What a guest that got its app keys from this KMS at `url` keeps for later `SignCert`
    /// calls (`.appkeys.json`'s `key_provider.Kms`), for tests that skip `GetAppKey`.
    pub fn guest_access(&self, url: &str) -> cvm_keys::sign_cert::KmsAccess {
        cvm_keys::sign_cert::KmsAccess {
            url: url.to_owned(),
            root_ca_pem: self.root_ca_pem.clone(),
            temp_ca_cert_pem: self.temp_ca_pem.clone(),
            temp_ca_key_pem: Secret::new(self.temp_ca_key_pem.expose().clone()),
        }
    }

    /// SubjectPublicKeyInfo DER of the app CA key of `app_id`.
    pub fn app_ca_spki_der(&self, app_id: &[u8]) -> Result<Vec<u8>, KmsServerError> {
        let key =
            kdf::app_ca_key(&self.root_key, app_id).map_err(|source| KmsServerError::Derive {
                what: "app CA key",
                source,
            })?;
        Ok(kdf::p256_spki_der(&key.public_key()))
    }

    /// The app's env-encryption public key (what `GetAppEnvEncryptPubKey` returns).
    pub fn env_public_key(&self, app_id: &[u8]) -> Result<[u8; 32], KmsServerError> {
        let key =
            kdf::app_env_key(&self.root_key, app_id).map_err(|source| KmsServerError::Derive {
                what: "env key",
                source,
            })?;
        Ok(kdf::env_public_key(&key))
    }
}

/// The spellings of `secret` a leak scan looks for: lowercase and uppercase hex, standard and
/// URL-safe base64 (with and without padding).
pub fn leak_needles(secret: &[u8]) -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut out = vec![hex::encode(secret), hex::encode_upper(secret)];
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        out.push(engine.encode(secret));
    }
    out.sort();
    out.dedup();
    out
}

/// True when `haystack` contains any spelling of any of `secrets` ([`leak_needles`]).
pub fn leaks_any(haystack: &str, secrets: &[Secret<Vec<u8>>]) -> bool {
    secrets
        .iter()
        .flat_map(|s| leak_needles(s.expose()))
        .any(|needle| haystack.contains(&needle))
}

fn fill_random(buf: &mut [u8]) -> Result<(), KmsServerError> {
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(buf)
        .map_err(|_| KmsServerError::Socket {
            action: "get random bytes",
            source: std::io::Error::other("rng failed"),
        })
}

/// An OS image the KMS accepts: its `os_image_hash` (SHA-256 of the bundle's `sha256sum.txt`,
/// `cvm-measure image-hash`) and the boot registers a TD started from it has
/// (`cvm-measure expected --json` over the bundle's files and the VM's memory size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOsImage {
    /// SHA-256 of the image's `sha256sum.txt`.
    pub os_image_hash: [u8; 32],
    /// MRTD (firmware).
    pub mrtd: Sha384Digest,
    /// RTMR0 (TD HOB, firmware configuration, ACPI); `None` leaves it unchecked, as dstack's
    /// TDX "lite" verification leaves the ACPI tables unchecked.
    pub rtmr0: Option<Sha384Digest>,
    /// RTMR1 (kernel).
    pub rtmr1: Sha384Digest,
    /// RTMR2 (command line and initrd).
    pub rtmr2: Sha384Digest,
}

impl AllowedOsImage {
    /// Reads the registers from `cvm-measure expected --json` output (`mrtd`, `rtmr0.value`,
    /// `rtmr1.value`, `rtmr2.value`; a missing `rtmr0` leaves it unchecked).
    pub fn from_expected_json(os_image_hash: [u8; 32], json: &str) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("expected measurements: {e}"))?;
        let digest = |v: Option<&serde_json::Value>, what: &str| {
            v.and_then(serde_json::Value::as_str)
                .ok_or(format!("expected measurements have no {what}"))?
                .parse::<Sha384Digest>()
                .map_err(|_| format!("expected measurements: {what} is not a SHA-384"))
        };
        let register = |name: &str| digest(value.get(name).and_then(|r| r.get("value")), name);
        Ok(Self {
            os_image_hash,
            mrtd: digest(value.get("mrtd"), "mrtd")?,
            rtmr0: match value.get("rtmr0").and_then(|r| r.get("value")) {
                Some(v) if !v.is_null() => Some(digest(Some(v), "rtmr0")?),
                _ => None,
            },
            rtmr1: register("rtmr1")?,
            rtmr2: register("rtmr2")?,
        })
    }

    /// Why `body` was not booted from this image, if it was not.
    fn mismatch(&self, body: &measure::quote::TdReportBody) -> Option<String> {
        let rtmr = |index| *body.rtmrs.register(index);
        let checks = [
            ("MRTD", Some(self.mrtd), body.mr_td),
            ("RTMR0", self.rtmr0, rtmr(RtmrIndex::R0)),
            ("RTMR1", Some(self.rtmr1), rtmr(RtmrIndex::R1)),
            ("RTMR2", Some(self.rtmr2), rtmr(RtmrIndex::R2)),
        ];
        checks.into_iter().find_map(|(name, expected, actual)| {
            expected
                .filter(|e| *e != actual)
                .map(|e| format!("{name} is {actual}, the image's is {e}"))
        })
    }
}

/// The dstack OS-image check: `vm_config` claims an `os_image_hash`; it must be allowed and the
/// quote's MRTD and RTMR0-2 those of that image. Returns the verified hash.
fn check_os_image(
    allowed: &[AllowedOsImage],
    vm_config: &str,
    quote: &measure::quote::Quote,
) -> Result<[u8; 32], String> {
    let claimed = serde_json::from_str::<serde_json::Value>(vm_config)
        .ok()
        .and_then(|v| v.get("os_image_hash")?.as_str().map(str::to_owned))
        .ok_or("boot denied: vm_config has no os_image_hash")?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(&claimed, &mut hash)
        .map_err(|_| format!("boot denied: os_image_hash {claimed} is not a SHA-256"))?;
    let image = allowed
        .iter()
        .find(|i| i.os_image_hash == hash)
        .ok_or(format!("boot denied: OS image {claimed} is not allowed"))?;
    if let Some(why) = image.mismatch(&quote.body) {
        return Err(format!(
            "boot denied: the quote was not booted from OS image {claimed}: {why}"
        ));
    }
    Ok(hash)
}

/// What the KMS allows.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Allowed compose-hashes; `None` allows every app.
    pub allowed_compose_hashes: Option<Vec<[u8; 32]>>,
    /// Which simulated root signs acceptable quotes.
    pub trust: QuoteTrust,
    /// `os_image_hash` to return; `None` takes it from `vm_config.os_image_hash`. Ignored when
    /// `allowed_os_image_hashes` is set (the verified hash is returned).
    pub os_image_hash: Option<Vec<u8>>,
    /// OS images whose TDs get keys; `None` accepts any OS (the claimed hash is not checked).
    pub allowed_os_image_hashes: Option<Vec<AllowedOsImage>>,
    /// Gateway app-id to return.
    pub gateway_app_id: String,
}

impl Policy {
    /// What a QEMU boot of the simulated TEE needs: only `allowed` compose-hashes, quotes
    /// chaining to the per-boot root the guest publishes (written to `root_file` by the test),
    /// `os_image_hash` from `vm_config`, no gateway.
    pub fn simulated_boot(allowed: Vec<[u8; 32]>, root_file: std::path::PathBuf) -> Self {
        Self {
            allowed_compose_hashes: Some(allowed),
            trust: QuoteTrust::RootFile(root_file),
            os_image_hash: None,
            allowed_os_image_hashes: None,
            gateway_app_id: String::new(),
        }
    }
}

/// One handled request, for tests and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The method (`GetTempCaCert`, `GetAppKey`, or the path if unknown).
    pub method: String,
    /// HTTP status sent.
    pub status: u16,
    /// Why it was refused, or the app-id served.
    pub detail: String,
}

/// A running KMS.
#[derive(Debug)]
pub struct KmsHandle {
    /// The bound address.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    records: Arc<Mutex<Vec<RequestRecord>>>,
    thread: Option<JoinHandle<()>>,
}

impl KmsHandle {
    /// The requests handled so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// `https://<addr>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The URL a QEMU guest with user networking uses: `https://10.0.2.2:<port>` (slirp maps
    /// 10.0.2.2 to the host's loopback).
    pub fn guest_url(&self) -> String {
        format!("https://10.0.2.2:{}", self.addr.port())
    }

    /// Stops accepting and joins the accept thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Blocks until the server stops (for the binary).
    pub fn wait(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for KmsHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Shared {
    keys: Arc<KmsKeys>,
    policy: Policy,
    records: Arc<Mutex<Vec<RequestRecord>>>,
}

fn pem_der(pem: &str, label: &str, what: &'static str) -> Result<Vec<u8>, KmsServerError> {
    cvm_keys::kms::pem_block(pem, label).ok_or(KmsServerError::ParseStateFile {
        path: what.to_owned(),
    })
}

fn server_config(keys: &KmsKeys) -> Result<ServerConfig, KmsServerError> {
    let provider = cvm_keys::transport::crypto_provider();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(pem_der(
            &keys.temp_ca_pem,
            "CERTIFICATE",
            "temporary CA",
        )?))
        .map_err(|source| KmsServerError::ConfigureTls { source })?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .allow_unauthenticated()
            .build()
            .map_err(|source| KmsServerError::ConfigureClientAuth { source })?;
    let chain = vec![
        CertificateDer::from(pem_der(
            &keys.rpc_cert_pem,
            "CERTIFICATE",
            "RPC certificate",
        )?),
        CertificateDer::from(pem_der(&keys.root_ca_pem, "CERTIFICATE", "root CA")?),
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pem_der(
        keys.rpc_key_pem.expose(),
        "PRIVATE KEY",
        "RPC key",
    )?));
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| KmsServerError::ConfigureTls { source })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|source| KmsServerError::ConfigureTls { source })
}

/// Starts serving on `listener` in a background thread (one thread per connection).
pub fn start(
    keys: Arc<KmsKeys>,
    policy: Policy,
    listener: TcpListener,
) -> Result<KmsHandle, KmsServerError> {
    let config = Arc::new(server_config(&keys)?);
    let addr = listener
        .local_addr()
        .map_err(|source| KmsServerError::Socket {
            action: "read the listening address",
            source,
        })?;
    let stop = Arc::new(AtomicBool::new(false));
    let records = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::new(Shared {
        keys,
        policy,
        records: Arc::clone(&records),
    });
    let stop_flag = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("test-kms-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                if stop_flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let config = Arc::clone(&config);
                let shared = Arc::clone(&shared);
                let _ = std::thread::Builder::new()
                    .name("test-kms-conn".into())
                    .spawn(move || serve_connection(&shared, config, stream));
            }
        })
        .map_err(|source| KmsServerError::Socket {
            action: "spawn the accept thread",
            source,
        })?;
    Ok(KmsHandle {
        addr,
        stop,
        records,
        thread: Some(thread),
    })
}

fn serve_connection(shared: &Shared, config: Arc<ServerConfig>, tcp: TcpStream) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(30)));
    let Ok(conn) = ServerConnection::new(config) else {
        return;
    };
    let mut stream = StreamOwned::new(conn, tcp);
    let Some((path, body)) = read_request(&mut stream) else {
        return;
    };
    let peer = stream
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec());
    let method = path
        .split('?')
        .next()
        .unwrap_or("")
        .trim_start_matches("/prpc/")
        .trim_start_matches("KMS.")
        .to_owned();
    let (status, response, detail) = match method.as_str() {
        "GetTempCaCert" => (
            200,
            serde_json::json!({
                "temp_ca_cert": shared.keys.temp_ca_pem,
                "temp_ca_key": shared.keys.temp_ca_key_pem.expose(),
                "ca_cert": shared.keys.root_ca_pem,
            }),
            String::new(),
        ),
        "GetAppKey" => match get_app_key(shared, peer.as_deref(), &body) {
            Ok((json, app_id)) => (200, json, format!("app-id {app_id}")),
            Err(reason) => (400, serde_json::json!({ "error": reason }), reason),
        },
        "SignCert" => match sign_cert(shared, peer.as_deref(), &body) {
            Ok((json, app_id)) => (200, json, format!("app-id {app_id}")),
            Err(reason) => (400, serde_json::json!({ "error": reason }), reason),
        },
        _ => (
            404,
            serde_json::json!({"error": "no such method"}),
            path.clone(),
        ),
    };
    // One line per request on stderr (the QEMU tests keep it with their artifacts).
    eprintln!("test-kms: {method} {status} {detail}");
    if let Ok(mut records) = shared.records.lock() {
        records.push(RequestRecord {
            method,
            status,
            detail,
        });
    }
    write_json_response(&mut stream, status, &response);
}

/// Writes a pRPC JSON reply (`Connection: close`) and closes the TLS session (shared with the
/// test gateway).
pub fn write_json_response(
    stream: &mut StreamOwned<ServerConnection, TcpStream>,
    status: u16,
    response: &serde_json::Value,
) {
    let body = response.to_string();
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        if status == 200 { "OK" } else { "Error" },
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.flush();
    stream.conn.send_close_notify();
    let _ = stream.flush();
}

/// Reads one HTTP POST (path and body, at most 1 MiB) from a TLS stream (shared with the test
/// gateway).
pub fn read_request(stream: &mut impl Read) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 16 * 1024 {
            return None;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    if request_line.next()? != "POST" {
        return None;
    }
    let path = request_line.next()?.to_owned();
    let len = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if len > 1024 * 1024 {
        return None;
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Some((path, body))
}

/// App-id, compose-hash and instance-id of an attested RTMR3 log.
type AppIdentity = (Vec<u8>, Vec<u8>, Vec<u8>);

/// The dstack checks on one attestation: the simulated quote verifies under the trusted root,
/// the log (already replayed to the quote's RTMR3 by the caller) reached `boot-mr-done`, has a
/// 20-byte app-id and a 32-byte compose-hash, and the compose-hash is allowed.
fn authorize(
    shared: &Shared,
    quote: &measure::quote::Quote,
    events: &[init_core::tee::RuntimeEvent],
) -> Result<AppIdentity, String> {
    quote_check::verify_simulated_quote(quote, &shared.policy.trust)
        .map_err(|e| format!("quote rejected: {e}"))?;
    let payload = |name: &str| find_system_event(events, name).map(|e| e.payload.clone());
    if payload("boot-mr-done").is_none() {
        return Err("event log has no boot-mr-done".into());
    }
    let app_id = payload("app-id")
        .filter(|p| p.len() == 20)
        .ok_or("event log has no 20-byte app-id")?;
    let compose_hash = payload("compose-hash")
        .filter(|p| p.len() == 32)
        .ok_or("event log has no 32-byte compose-hash")?;
    let instance_id = payload("instance-id").unwrap_or_default();
    if let Some(allowed) = &shared.policy.allowed_compose_hashes
        && !allowed.iter().any(|h| h[..] == compose_hash[..])
    {
        return Err(format!(
            "boot denied: compose hash {} is not allowed",
            hex::encode(&compose_hash)
        ));
    }
    Ok((app_id, compose_hash, instance_id))
}

/// The RA-TLS client certificate of the connection, checked and authorized.
fn peer_identity(shared: &Shared, peer: Option<&[u8]>) -> Result<AppIdentity, String> {
    peer_attestation(shared, peer).map(|(identity, _)| identity)
}

/// [`peer_identity`] and the certificate's quote.
fn peer_attestation(
    shared: &Shared,
    peer: Option<&[u8]>,
) -> Result<(AppIdentity, measure::quote::Quote), String> {
    let peer = peer.ok_or("no attestation provided (no client certificate)")?;
    let cert = RaTlsCert::parse(peer).map_err(|e| cvm_keys::error_chain(&e))?;
    let (quote, events) = cert
        .verify_binding()
        .map_err(|e| format!("attestation rejected: {}", cvm_keys::error_chain(&e)))?;
    let identity = authorize(shared, &quote, &events)?;
    Ok((identity, quote))
}

/// The usage dstack's KMS puts on certificates it signs for apps.
pub const USAGE_APP_CUSTOM: &str = "app:custom";
/// Ten years: dstack's default notAfter for a signed CSR.
const TEN_YEARS_SECS: u64 = 10 * 365 * 86_400;

/// `SignCert` (API version 2), as dstack's KMS: the CSR decodes and its signature verifies
/// with its key; its attestation binds that key (`ratls-cert:` report data), the simulated
/// quote verifies, the log replays to RTMR3 and the app is allowed; in addition (this KMS) the
/// connection's RA-TLS client certificate must be of the same app. The leaf (usage
/// `app:custom`, app-id extension, the attestation's quote and log when `ext_quote`) is signed
/// by the app CA `derive_p256(root_ca_key, [app_id, "app-ca"])`; the reply is
/// `[leaf, app CA, root CA]`. `ext_app_info` is ignored (no AppInfo extension).
fn sign_cert(
    shared: &Shared,
    peer: Option<&[u8]>,
    body: &[u8],
) -> Result<(serde_json::Value, String), String> {
    use cvm_keys::sign_cert::{API_VERSION, CertSigningRequest, SignCertRequest};
    let request: SignCertRequest =
        serde_json::from_slice(body).map_err(|e| format!("bad request: {e}"))?;
    if request.api_version != API_VERSION {
        return Err(format!("unsupported API version {}", request.api_version));
    }
    let csr_bytes = hex::decode(&request.csr).map_err(|_| "csr is not hex".to_owned())?;
    let signature =
        hex::decode(&request.signature).map_err(|_| "signature is not hex".to_owned())?;
    let csr = CertSigningRequest::decode(&csr_bytes)
        .map_err(|e| format!("failed to parse csr: {}", cvm_keys::error_chain(&e)))?;
    csr.verify(&signature)
        .map_err(|e| format!("failed to verify csr signature: {e}"))?;
    let attestation = &csr.attestation;
    if attestation.report_data != cvm_keys::ratls::ratls_report_data(&csr.pubkey) {
        return Err("attestation report data does not bind the CSR key".into());
    }
    let bound = RaTlsCert {
        spki_der: csr.pubkey.clone(),
        quote: Some(attestation.quote.clone()),
        event_log: Some(attestation.event_log_json().into_bytes()),
        ..RaTlsCert::default()
    };
    let (quote, events) = bound
        .verify_binding()
        .map_err(|e| format!("quote verification failed: {}", cvm_keys::error_chain(&e)))?;
    let (app_id, _, _) = authorize(shared, &quote, &events)?;
    if let Some(allowed) = &shared.policy.allowed_os_image_hashes {
        check_os_image(allowed, &request.vm_config, &quote)?;
    }
    let (peer_app_id, _, _) = peer_identity(shared, peer)?;
    if peer_app_id != app_id {
        return Err("the CSR and the client certificate attest different apps".into());
    }
    let (app_ca_pem, app_ca) = shared.keys.app_ca(&app_id).map_err(|e| e.to_string())?;
    let cfg = &csr.config;
    let log = attestation.event_log_json();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let spec = CertSpec {
        org_name: cfg.org_name.as_deref(),
        subject: &cfg.subject,
        alt_names: cfg.subject_alt_names.clone(),
        special_usage: Some(USAGE_APP_CUSTOM),
        app_id: Some(&app_id),
        quote: cfg.ext_quote.then_some(&attestation.quote[..]),
        event_log: cfg.ext_quote.then_some(log.as_bytes()),
        server_auth: cfg.usage_server_auth,
        client_auth: cfg.usage_client_auth,
        not_before: cfg.not_before,
        not_after: Some(cfg.not_after.unwrap_or(now.saturating_add(TEN_YEARS_SECS))),
        ..CertSpec::default()
    };
    let (_, leaf_pem) = spec
        .signed_for_spki(&csr.pubkey, &app_ca)
        .map_err(|e| format!("failed to sign certificate: {}", cvm_keys::error_chain(&e)))?;
    Ok((
        serde_json::json!({
            "certificate_chain": [leaf_pem, app_ca_pem, shared.keys.root_ca_pem],
        }),
        hex::encode(&app_id),
    ))
}

#[derive(serde::Deserialize)]
struct GetAppKeyRequest {
    #[serde(default)]
    api_version: u32,
    #[serde(default)]
    vm_config: String,
}

/// The dstack checks and the key derivation; `Err` is the refusal text.
fn get_app_key(
    shared: &Shared,
    peer: Option<&[u8]>,
    body: &[u8],
) -> Result<(serde_json::Value, String), String> {
    let request: GetAppKeyRequest =
        serde_json::from_slice(body).map_err(|e| format!("bad request: {e}"))?;
    if request.api_version > 1 {
        return Err(format!("unsupported API version {}", request.api_version));
    }
    let ((app_id, _compose_hash, instance_id), quote) = peer_attestation(shared, peer)?;
    let verified_os_image = match &shared.policy.allowed_os_image_hashes {
        Some(allowed) => Some(check_os_image(allowed, &request.vm_config, &quote)?),
        None => None,
    };
    let keys = &shared.keys;
    let derive = |e: kdf::KdfError| format!("derive keys: {e}");
    let disk = kdf::app_disk_key(&keys.root_key, &app_id, &instance_id).map_err(derive)?;
    let env = kdf::app_env_key(&keys.root_key, &app_id).map_err(derive)?;
    let (k256, k256_signature) =
        kdf::app_k256_key(keys.k256_root.expose(), &app_id).map_err(derive)?;
    let os_image_hash = match (verified_os_image, &shared.policy.os_image_hash) {
        (Some(verified), _) => verified.to_vec(),
        (None, Some(hash)) => hash.clone(),
        (None, None) => serde_json::from_str::<serde_json::Value>(&request.vm_config)
            .ok()
            .and_then(|v| {
                v.get("os_image_hash")
                    .and_then(|h| h.as_str())
                    .map(str::to_owned)
            })
            .and_then(|h| hex::decode(h).ok())
            .unwrap_or_default(),
    };
    Ok((
        serde_json::json!({
            "ca_cert": keys.root_ca_pem,
            "disk_crypt_key": hex::encode(disk.expose()),
            "env_crypt_key": hex::encode(env.expose()),
            "k256_key": hex::encode(k256.expose()),
            "k256_signature": hex::encode(k256_signature),
            "tproxy_app_id": shared.policy.gateway_app_id,
            "gateway_app_id": shared.policy.gateway_app_id,
            "os_image_hash": hex::encode(os_image_hash),
        }),
        hex::encode(&app_id),
    ))
}
