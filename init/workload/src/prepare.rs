//! The one call the init makes before launching: pull and unpack every image of an app.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::compose::App;
use crate::digest::Sha256Digest;
use crate::pull::{PullError, PullOptions, PulledImage, Store, pull_with_options};
use crate::registry::RegistryClient;
use crate::spec::ImageFiles;
use crate::unpack::{UnpackError, UnpackOptions, read_file_in_root, unpack_image};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// Pulling a service's image failed.
    #[error("pull image of service {service}")]
    Pull {
        /// Service.
        service: String,
        /// Why.
        #[source]
        source: Box<PullError>,
    },
    /// Unpacking a service's image failed.
    #[error("unpack image of service {service}")]
    Unpack {
        /// Service.
        service: String,
        /// Why.
        #[source]
        source: Box<UnpackError>,
    },
}

/// A pulled and unpacked image.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// What was pulled.
    pub pulled: PulledImage,
    /// The read-only image root (`<store>/rootfs/<manifest hex>`); containers get an overlay
    /// on top of it.
    pub rootfs: PathBuf,
    /// `/etc/passwd` and `/etc/group` of the image, for user resolution.
    pub files: ImageFiles,
}

/// Pulls and unpacks each distinct image of `app` once, in service start order; returns them
/// by pinned digest.
pub fn prepare_images(
    store: &Store,
    client: &RegistryClient,
    app: &App,
    options: UnpackOptions,
) -> Result<BTreeMap<Sha256Digest, PreparedImage>, PrepareError> {
    let mut out = BTreeMap::new();
    for service in &app.services {
        if out.contains_key(&service.image.digest) {
            continue;
        }
        // diff_ids are checked by the unpacker before the root is renamed into place, so
        // each layer is decompressed once.
        let pull_options = PullOptions {
            verify_diff_ids: false,
        };
        let pulled =
            pull_with_options(store, client, &service.image, pull_options).map_err(|source| {
                PrepareError::Pull {
                    service: service.name.clone(),
                    source: Box::new(source),
                }
            })?;
        let unpack_err = |source| PrepareError::Unpack {
            service: service.name.clone(),
            source: Box::new(source),
        };
        let rootfs = unpack_image(store, &pulled, options).map_err(unpack_err)?;
        let text = |path: &str| -> Result<Option<String>, PrepareError> {
            Ok(read_file_in_root(&rootfs, path, 1 << 20)
                .map_err(unpack_err)?
                .map(|b| String::from_utf8_lossy(&b).into_owned()))
        };
        let files = ImageFiles {
            passwd: text("/etc/passwd")?,
            group: text("/etc/group")?,
        };
        log::info!(
            "image {} for {}: {} layers, {} bytes downloaded",
            service.image,
            service.name,
            pulled.layers.len(),
            pulled.downloaded_bytes
        );
        out.insert(
            service.image.digest,
            PreparedImage {
                pulled,
                rootfs,
                files,
            },
        );
    }
    Ok(out)
}
