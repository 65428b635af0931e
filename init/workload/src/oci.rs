//! OCI / Docker image manifests, indexes and image configs: the few fields we use, parsed from
//! untrusted bytes into typed values (unknown fields ignored, sizes capped by the caller).

use std::time::Duration;

use serde::Deserialize;

use crate::compose::{App, HealthTest, Healthcheck, Service};
use crate::digest::Sha256Digest;

/// Media types we accept.
pub mod media {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Docker schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Uncompressed OCI layer.
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// gzip OCI layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// zstd OCI layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// gzip Docker layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// The Accept header for manifest requests.
    pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The JSON does not have the expected shape.
    #[error("parse {what} JSON")]
    ParseJson {
        /// manifest, index or config.
        what: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A media type we cannot handle.
    #[error("unsupported media type {media_type:?} for {what}")]
    UnsupportedMediaType {
        /// What carried it.
        what: &'static str,
        /// The media type.
        media_type: String,
    },
    /// A document that is neither manifest nor index.
    #[error("document is neither an image manifest nor an index")]
    ClassifyDocument,
    /// `schemaVersion` is not 2.
    #[error("schemaVersion {0} is not 2")]
    CheckSchemaVersion(u64),
    /// More layers than we accept.
    #[error("{count} layers exceed the limit of {limit}")]
    CheckLayerCount {
        /// Layers in the manifest.
        count: usize,
        /// Our limit.
        limit: usize,
    },
    /// Index without a linux/amd64 entry.
    #[error("the index has no linux/amd64 manifest")]
    SelectPlatform,
    /// Config for another platform.
    #[error("image config is for {os}/{architecture}, not linux/amd64")]
    CheckConfigPlatform {
        /// os.
        os: String,
        /// architecture.
        architecture: String,
    },
    /// diff_ids and layers disagree.
    #[error("config lists {diff_ids} diff_ids for {layers} layers")]
    CheckDiffIdCount {
        /// diff_ids in the config.
        diff_ids: usize,
        /// Layers in the manifest.
        layers: usize,
    },
}

/// Most layers an image may have.
pub const MAX_LAYERS: usize = 256;

fn digest_from_str<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Sha256Digest, D::Error> {
    let text = String::deserialize(d)?;
    Sha256Digest::parse(&text).map_err(serde::de::Error::custom)
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// Digest.
    #[serde(deserialize_with = "digest_from_str")]
    pub digest: Sha256Digest,
    /// Size in bytes.
    pub size: u64,
}

#[derive(Debug, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    #[serde(flatten)]
    descriptor: Descriptor,
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDocument {
    schema_version: u64,
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<IndexEntry>>,
}

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// Compression of a layer media type, `None` if it is not a layer type we accept.
    pub fn of_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            media::OCI_LAYER_TAR => Some(Self::None),
            media::OCI_LAYER_GZIP | media::DOCKER_LAYER_GZIP => Some(Self::Gzip),
            media::OCI_LAYER_ZSTD => Some(Self::Zstd),
            _ => None,
        }
    }
}

/// A parsed manifest document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    /// A single-platform image manifest.
    Manifest(ImageManifest),
    /// An index; holds the linux/amd64 child descriptor.
    Index(Descriptor),
}

/// An image manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageManifest {
    /// Config blob.
    pub config: Descriptor,
    /// Layers, bottom first, with their compression.
    pub layers: Vec<(Descriptor, Compression)>,
}

/// Parses a manifest or index; `content_type` is the registry's header, used when the document
/// has no `mediaType`.
pub fn parse_document(bytes: &[u8], content_type: Option<&str>) -> Result<Document, OciError> {
    let raw: RawDocument = serde_json::from_slice(bytes).map_err(|source| OciError::ParseJson {
        what: "manifest",
        source,
    })?;
    if raw.schema_version != 2 {
        return Err(OciError::CheckSchemaVersion(raw.schema_version));
    }
    let media_type = raw
        .media_type
        .as_deref()
        .or(content_type.map(|c| c.split(';').next().unwrap_or(c).trim()));
    let is_index = match media_type {
        Some(media::OCI_INDEX | media::DOCKER_LIST) => true,
        Some(media::OCI_MANIFEST | media::DOCKER_MANIFEST) => false,
        Some(other) if raw.manifests.is_none() && raw.layers.is_none() => {
            return Err(OciError::UnsupportedMediaType {
                what: "manifest",
                media_type: other.to_owned(),
            });
        }
        _ => raw.manifests.is_some(),
    };
    if is_index {
        let entries = raw.manifests.ok_or(OciError::ClassifyDocument)?;
        let chosen = entries
            .into_iter()
            .find(|e| {
                e.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                    && matches!(
                        e.descriptor.media_type.as_str(),
                        media::OCI_MANIFEST | media::DOCKER_MANIFEST
                    )
            })
            .ok_or(OciError::SelectPlatform)?;
        return Ok(Document::Index(chosen.descriptor));
    }
    let (Some(config), Some(layers)) = (raw.config, raw.layers) else {
        return Err(OciError::ClassifyDocument);
    };
    if !matches!(
        config.media_type.as_str(),
        media::OCI_CONFIG | media::DOCKER_CONFIG
    ) {
        return Err(OciError::UnsupportedMediaType {
            what: "config",
            media_type: config.media_type,
        });
    }
    if layers.len() > MAX_LAYERS {
        return Err(OciError::CheckLayerCount {
            count: layers.len(),
            limit: MAX_LAYERS,
        });
    }
    let layers = layers
        .into_iter()
        .map(|d| match Compression::of_media_type(&d.media_type) {
            Some(c) => Ok((d, c)),
            None => Err(OciError::UnsupportedMediaType {
                what: "layer",
                media_type: d.media_type,
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Document::Manifest(ImageManifest { config, layers }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    user: Option<String>,
    env: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: Option<String>,
    stop_signal: Option<String>,
    healthcheck: Option<ImageHealthcheck>,
}

#[derive(Debug, Deserialize)]
struct RawRootfs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    architecture: String,
    os: String,
    #[serde(default)]
    config: Option<RawRunConfig>,
    rootfs: RawRootfs,
}

/// The parts of an image config that matter for running it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct ImageConfig {
    /// `User`.
    pub user: Option<String>,
    /// `Env` (`K=V`).
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `StopSignal`.
    pub stop_signal: Option<String>,
    /// `Healthcheck` (the `HEALTHCHECK` of the Dockerfile); used when the service declares none.
    /// `default` keeps configs stored before this field readable.
    #[serde(default)]
    pub healthcheck: Option<ImageHealthcheck>,
    /// Uncompressed layer digests, bottom first.
    pub diff_ids: Vec<Sha256Digest>,
}

/// Parses an image config and checks it is linux/amd64 with `layers` diff_ids.
pub fn parse_config(bytes: &[u8], layer_count: usize) -> Result<ImageConfig, OciError> {
    let raw: RawConfig = serde_json::from_slice(bytes).map_err(|source| OciError::ParseJson {
        what: "config",
        source,
    })?;
    if raw.os != "linux" || raw.architecture != "amd64" {
        return Err(OciError::CheckConfigPlatform {
            os: raw.os,
            architecture: raw.architecture,
        });
    }
    if raw.rootfs.kind != "layers" {
        return Err(OciError::UnsupportedMediaType {
            what: "rootfs",
            media_type: raw.rootfs.kind,
        });
    }
    let diff_ids = raw
        .rootfs
        .diff_ids
        .iter()
        .map(|d| Sha256Digest::parse(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| OciError::ParseJson {
            what: "config",
            source: serde::de::Error::custom(e),
        })?;
    if diff_ids.len() != layer_count {
        return Err(OciError::CheckDiffIdCount {
            diff_ids: diff_ids.len(),
            layers: layer_count,
        });
    }
    let run = raw.config.unwrap_or_default();
    Ok(ImageConfig {
        user: run.user.filter(|u| !u.is_empty()),
        env: run.env.unwrap_or_default(),
        entrypoint: run.entrypoint,
        cmd: run.cmd,
        working_dir: run.working_dir.filter(|w| !w.is_empty()),
        stop_signal: run.stop_signal,
        healthcheck: run.healthcheck,
        diff_ids,
    })
}

/// An image config's `Healthcheck`, as Docker writes it: `Test` is `["CMD", argv…]`,
/// `["CMD-SHELL", command]` or `["NONE"]`; durations are nanoseconds, 0 meaning the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageHealthcheck {
    /// The test.
    #[serde(default)]
    pub test: Vec<String>,
    /// Interval (ns).
    #[serde(default)]
    pub interval: u64,
    /// Timeout (ns).
    #[serde(default)]
    pub timeout: u64,
    /// Start period (ns).
    #[serde(default)]
    pub start_period: u64,
    /// Start interval (ns).
    #[serde(default)]
    pub start_interval: u64,
    /// Retries (0: the default, 3).
    #[serde(default)]
    pub retries: u64,
}

impl ImageHealthcheck {
    /// The health check it describes, with compose's defaults (30 s interval and timeout,
    /// 3 retries, 5 s start interval); `None` for `NONE`, an empty or a malformed test.
    pub fn to_healthcheck(&self) -> Option<Healthcheck> {
        let test = match self.test.split_first() {
            Some((first, rest)) if first == "CMD" && !rest.is_empty() => {
                HealthTest::Exec(rest.to_vec())
            }
            Some((first, [cmd])) if first == "CMD-SHELL" => HealthTest::Shell(cmd.clone()),
            _ => return None,
        };
        let or = |ns: u64, default: u64| {
            if ns == 0 {
                Duration::from_secs(default)
            } else {
                Duration::from_nanos(ns)
            }
        };
        Some(Healthcheck {
            test,
            interval: or(self.interval, 30),
            timeout: or(self.timeout, 30),
            retries: if self.retries == 0 {
                3
            } else {
                u32::try_from(self.retries).unwrap_or(u32::MAX)
            },
            start_period: Duration::from_nanos(self.start_period),
            start_interval: or(self.start_interval, 5),
        })
    }
}

/// Gives every service of `app` that declares no health check (and does not disable one) the
/// `Healthcheck` of its image config, so `depends_on: condition: service_healthy` works with
/// images that bring their own `HEALTHCHECK`. `image_of` maps a service to its image config.
pub fn adopt_image_healthchecks<'a>(
    app: &mut App,
    image_of: impl Fn(&Service) -> Option<&'a ImageConfig>,
) {
    for service in &mut app.services {
        if service.healthcheck.is_some() || service.healthcheck_disabled {
            continue;
        }
        if let Some(check) = image_of(service)
            .and_then(|image| image.healthcheck.as_ref())
            .and_then(ImageHealthcheck::to_healthcheck)
        {
            service.healthcheck = Some(check);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn selects_amd64_from_index() {
        let doc = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[
            {{"mediaType":"{m}","digest":"{D1}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}},
            {{"mediaType":"{m}","digest":"{D2}","size":2,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            media::OCI_INDEX,
            m = media::OCI_MANIFEST
        );
        match parse_document(doc.as_bytes(), None).unwrap() {
            Document::Index(d) => assert_eq!((d.digest.to_string().as_str(), d.size), (D2, 2)),
            other => panic!("{other:?}"),
        }
        let arm_only = doc.replace("amd64", "s390x");
        assert!(matches!(
            parse_document(arm_only.as_bytes(), None),
            Err(OciError::SelectPlatform)
        ));
    }

    #[test]
    fn manifest_layers_and_refusals() {
        let doc = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{}","digest":"{D1}","size":3}},
            "layers":[{{"mediaType":"{}","digest":"{D2}","size":4}},{{"mediaType":"{}","digest":"{D2}","size":4}}]}}"#,
            media::OCI_CONFIG,
            media::OCI_LAYER_GZIP,
            media::OCI_LAYER_ZSTD
        );
        let Document::Manifest(m) =
            parse_document(doc.as_bytes(), Some(media::OCI_MANIFEST)).unwrap()
        else {
            panic!("not a manifest")
        };
        assert_eq!(m.layers[0].1, Compression::Gzip);
        assert_eq!(m.layers[1].1, Compression::Zstd);
        let foreign = doc.replacen(
            media::OCI_LAYER_GZIP,
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            1,
        );
        assert!(matches!(
            parse_document(foreign.as_bytes(), None),
            Err(OciError::UnsupportedMediaType { what: "layer", .. })
        ));
        let v1 = doc.replace("\"schemaVersion\":2", "\"schemaVersion\":1");
        assert!(matches!(
            parse_document(v1.as_bytes(), None),
            Err(OciError::CheckSchemaVersion(1))
        ));
        parse_document(b"{", None).unwrap_err();
        let bad_digest = doc.replace(D1, "sha256:zz");
        parse_document(bad_digest.as_bytes(), None).unwrap_err();
    }

    #[test]
    fn config_checks() {
        let cfg = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/bin"],"Cmd":["sh"],"WorkingDir":"/w","User":"1:2"}},
            "rootfs":{{"type":"layers","diff_ids":["{D1}"]}}}}"#
        );
        let c = parse_config(cfg.as_bytes(), 1).unwrap();
        assert_eq!(c.cmd, Some(vec!["sh".to_owned()]));
        assert_eq!(c.user.as_deref(), Some("1:2"));
        assert!(matches!(
            parse_config(cfg.as_bytes(), 2),
            Err(OciError::CheckDiffIdCount { .. })
        ));
        let arm = cfg.replace("amd64", "arm64");
        assert!(matches!(
            parse_config(arm.as_bytes(), 1),
            Err(OciError::CheckConfigPlatform { .. })
        ));
    }

    #[test]
    fn image_healthcheck_is_read_and_adopted_unless_the_compose_decides() {
        let cfg = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["sh"],"Healthcheck":{{"Test":["CMD-SHELL","curl -f localhost"],"Interval":2000000000,"Retries":5}}}},
            "rootfs":{{"type":"layers","diff_ids":["{D1}"]}}}}"#
        );
        let image = parse_config(cfg.as_bytes(), 1).unwrap();
        let check = image
            .healthcheck
            .as_ref()
            .unwrap()
            .to_healthcheck()
            .unwrap();
        assert_eq!(check.test, HealthTest::Shell("curl -f localhost".into()));
        assert_eq!(check.interval, Duration::from_secs(2));
        assert_eq!(check.timeout, Duration::from_secs(30));
        assert_eq!(check.retries, 5);
        // A config stored before the field existed still reads.
        let mut old = serde_json::to_value(&image).unwrap();
        old.as_object_mut().unwrap().remove("healthcheck");
        let old: ImageConfig = serde_json::from_value(old).unwrap();
        assert_eq!(old.healthcheck, None);

        let digest = "sha256:f1f178776ddc8034e550bff87cac9ba352599418998c352b73b71a5e7b8983a7";
        let yaml = format!(
            "services:\n  plain:\n    image: a@{digest}\n  own:\n    image: a@{digest}\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n  off:\n    image: a@{digest}\n    healthcheck:\n      disable: true\n"
        );
        let mut app = crate::compose::parse(
            None,
            &yaml,
            &std::collections::BTreeMap::new(),
            &crate::compose::ComposePolicy::default(),
        )
        .unwrap();
        adopt_image_healthchecks(&mut app, |_| Some(&image));
        let test = |name: &str| {
            app.service(name)
                .unwrap()
                .healthcheck
                .as_ref()
                .map(|h| h.test.clone())
        };
        assert_eq!(
            test("plain"),
            Some(HealthTest::Shell("curl -f localhost".into()))
        );
        assert_eq!(test("own"), Some(HealthTest::Exec(vec!["true".into()])));
        assert_eq!(test("off"), None);
        let none = ImageHealthcheck {
            test: vec!["NONE".into()],
            ..ImageHealthcheck::default()
        };
        assert_eq!(none.to_healthcheck(), None);
    }
}
