//! The one call the init makes before launching: pull and unpack every image of an app.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::compose::App;
use crate::digest::Sha256Digest;
use crate::pull::{PullError, PulledImage, Store};
use crate::registry::RegistryClient;
use crate::spec::ImageFiles;
use crate::stream::{StreamError, StreamOptions, Unpacked, pull_and_unpack};
use crate::unpack::{UnpackError, UnpackOptions, read_file_in_root};

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
    /// Running the pull and unpack threads failed.
    #[error("pull and unpack image of service {service}")]
    Stream {
        /// Service.
        service: String,
        /// Why.
        #[source]
        source: Box<StreamError>,
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
        // Layers are downloaded concurrently and unpacked while they arrive; every digest and
        // diff_id is checked before anything is committed (`crate::stream`).
        let stream_options = StreamOptions {
            unpack: options,
            ..StreamOptions::default()
        };
        let unpack_err = |source| PrepareError::Unpack {
            service: service.name.clone(),
            source: Box::new(source),
        };
        let Unpacked { pulled, rootfs } =
            pull_and_unpack(store, client, &service.image, stream_options).map_err(
                |e| match e {
                    StreamError::Unpack(source) => unpack_err(source),
                    StreamError::Pull(source) => PrepareError::Pull {
                        service: service.name.clone(),
                        source: Box::new(source),
                    },
                    other => PrepareError::Stream {
                        service: service.name.clone(),
                        source: Box::new(other),
                    },
                },
            )?;
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
