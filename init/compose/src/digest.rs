//! Content digests and digest-pinned image references.
//!
//! Only `sha256` is accepted: a reference with a tag and no digest, or with another algorithm,
//! fails to parse, so nothing downstream can pull by a mutable name.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The digest is not `sha256:` followed by 64 lowercase hex digits.
    #[error("digest {text:?} is not sha256:<64 lowercase hex>")]
    ParseDigest {
        /// The rejected text.
        text: String,
    },
    /// The reference has a tag (or nothing) but no `@sha256:` digest.
    #[error(
        "image {text:?} is not pinned by digest (name@sha256:<64 hex> is required); run `cvm-measure compose pin` to pin it"
    )]
    MissingDigest {
        /// The rejected reference.
        text: String,
    },
    /// The repository part of the reference is malformed.
    #[error("image {text:?} has an invalid repository name: {reason}")]
    ParseRepository {
        /// The rejected reference.
        text: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A sha256 content digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        let err = || DigestError::ParseDigest {
            text: text.chars().take(100).collect(),
        };
        let hex_part = text.strip_prefix("sha256:").ok_or_else(err)?;
        if hex_part.len() != 64
            || !hex_part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(err());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| err())?;
        Ok(Self(out))
    }

    /// Digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The 64 hex digits, without the algorithm.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Sha256Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Sha256Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The default registry of unqualified names, as Docker resolves them.
pub const DEFAULT_REGISTRY: &str = "registry-1.docker.io";

/// A digest-pinned image reference: `[registry/]repository[:tag]@sha256:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host (with port), e.g. `127.0.0.1:5000`; Docker Hub for unqualified names.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// A tag given beside the digest; informative only, never used to fetch.
    pub tag: Option<String>,
    /// The pinned manifest (or index) digest.
    pub digest: Sha256Digest,
}

/// An image name without a digest, `[registry/]repository[:tag]`: what `cvm-measure compose pin`
/// resolves to an [`ImageRef`]. The init never runs one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    /// Registry host (with port); Docker Hub for unqualified names.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// The tag (`latest` when none is given).
    pub tag: String,
}

impl ImageName {
    /// Parses `[registry/]repository[:tag]`; a reference with a digest is refused (it is
    /// already pinned: use [`ImageRef::parse`]).
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        if text.contains('@') {
            return Err(DigestError::ParseRepository {
                text: text.chars().take(200).collect(),
                reason: "already has a digest",
            });
        }
        let (registry, repository, tag) = ImageRef::parse_name(text, text)?;
        Ok(Self {
            registry,
            repository,
            tag: tag.unwrap_or_else(|| "latest".to_owned()),
        })
    }

    /// The pinned reference: this name at `digest`.
    pub fn pin(&self, digest: Sha256Digest) -> ImageRef {
        ImageRef {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(self.tag.clone()),
            digest,
        }
    }
}

impl ImageRef {
    /// Parses a reference; a reference without `@sha256:` is refused.
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        let Some((name_tag, digest)) = text.rsplit_once('@') else {
            return Err(DigestError::MissingDigest {
                text: text.chars().take(200).collect(),
            });
        };
        let digest = Sha256Digest::parse(digest)?;
        let (registry, repository, tag) = Self::parse_name(name_tag, text)?;
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// Splits and checks `[registry/]repository[:tag]` (`text` is the whole reference, for
    /// errors): (registry, repository, tag).
    fn parse_name(
        name_tag: &str,
        text: &str,
    ) -> Result<(String, String, Option<String>), DigestError> {
        let bad = |reason| DigestError::ParseRepository {
            text: text.chars().take(200).collect(),
            reason,
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].find(':') {
            Some(i) => {
                let tag = &name_tag[last_slash + i + 1..];
                if tag.is_empty()
                    || tag.len() > 128
                    || !tag
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                {
                    return Err(bad("invalid tag"));
                }
                (&name_tag[..last_slash + i], Some(tag.to_owned()))
            }
            None => (name_tag, None),
        };
        if name.is_empty() {
            return Err(bad("empty name"));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ if name.contains('/') => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
            _ => (DEFAULT_REGISTRY.to_owned(), format!("library/{name}")),
        };
        let registry = if registry == "docker.io" || registry == "index.docker.io" {
            DEFAULT_REGISTRY.to_owned()
        } else {
            registry
        };
        Self::check_parts(&registry, &repository, &bad)?;
        Ok((registry, repository, tag))
    }

    fn check_parts(
        registry: &str,
        repository: &str,
        bad: &dyn Fn(&'static str) -> DigestError,
    ) -> Result<(), DigestError> {
        if registry.is_empty()
            || !registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            return Err(bad("invalid registry host"));
        }
        if repository.is_empty() || repository.len() > 255 {
            return Err(bad("repository length"));
        }
        for component in repository.split('/') {
            let ok = !component.is_empty()
                && component
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && component
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric());
            if !ok {
                return Err(bad(
                    "repository components are [a-z0-9._-], starting alphanumeric",
                ));
            }
        }
        Ok(())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.registry, self.repository, self.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "f1f178776ddc8034e550bff87cac9ba352599418998c352b73b71a5e7b8983a7";

    #[test]
    fn parses_qualified_and_docker_hub_names() {
        let r = ImageRef::parse(&format!("127.0.0.1:5000/test/busybox@sha256:{HEX}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "test/busybox");
        assert_eq!(r.digest.hex(), HEX);
        let r = ImageRef::parse(&format!("nginx:1.27@sha256:{HEX}")).unwrap();
        assert_eq!(r.registry, DEFAULT_REGISTRY);
        assert_eq!(r.repository, "library/nginx");
        assert_eq!(r.tag.as_deref(), Some("1.27"));
        let r = ImageRef::parse(&format!("docker.io/org/app@sha256:{HEX}")).unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            (DEFAULT_REGISTRY, "org/app")
        );
    }

    #[test]
    fn image_names_resolve_like_references() {
        let n = ImageName::parse("nginx").unwrap();
        assert_eq!(
            (n.registry.as_str(), n.repository.as_str(), n.tag.as_str()),
            (DEFAULT_REGISTRY, "library/nginx", "latest")
        );
        let n = ImageName::parse("ghcr.io/dstack-tee/dstack-tsm-shim:latest").unwrap();
        assert_eq!(
            (n.registry.as_str(), n.repository.as_str(), n.tag.as_str()),
            ("ghcr.io", "dstack-tee/dstack-tsm-shim", "latest")
        );
        let n = ImageName::parse("localhost:5000/app:1.2").unwrap();
        assert_eq!(
            (n.registry.as_str(), n.tag.as_str()),
            ("localhost:5000", "1.2")
        );
        let pinned = n.pin(Sha256Digest::parse(&format!("sha256:{HEX}")).unwrap());
        assert_eq!(
            ImageRef::parse(&format!("localhost:5000/app:1.2@sha256:{HEX}")).unwrap(),
            pinned
        );
        for bad in [
            "Nginx",
            format!("nginx@sha256:{HEX}").as_str(),
            "nginx:",
            "",
        ] {
            assert!(ImageName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_unpinned_and_malformed() {
        for bad in [
            "nginx:latest".to_owned(),
            "nginx".to_owned(),
            format!("nginx@sha512:{HEX}"),
            format!("nginx@sha256:{}", &HEX[..63]),
            format!("nginx@sha256:{}", HEX.to_uppercase()),
            format!("Nginx@sha256:{HEX}"),
            format!("a/../b@sha256:{HEX}"),
            format!("@sha256:{HEX}"),
        ] {
            assert!(ImageRef::parse(&bad).is_err(), "{bad}");
        }
        assert!(matches!(
            ImageRef::parse("nginx:latest"),
            Err(DigestError::MissingDigest { .. })
        ));
    }
}
