//! Shared setup for the integration tests: the artifacts plus the cvm-init image.

use crate::artifacts::{ArtifactError, Artifacts};
use crate::image::{self, ImageError, TestImage};
use crate::vm::TestVm;

/// Errors of [`CvmSetup::new`].
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("failed to fetch the pinned artifacts")]
    FetchArtifacts { source: ArtifactError },
    #[error("failed to build the cvm-init image")]
    BuildImage { source: ImageError },
}

/// The pinned artifacts and the cvm-init image (built once per process).
#[derive(Debug, Clone)]
pub struct CvmSetup {
    pub artifacts: Artifacts,
    pub image: TestImage,
}

impl CvmSetup {
    /// Fetches the artifacts and builds (or reuses) the image.
    pub fn new() -> Result<Self, SetupError> {
        let artifacts =
            Artifacts::fetch().map_err(|source| SetupError::FetchArtifacts { source })?;
        let image =
            image::test_image(&artifacts).map_err(|source| SetupError::BuildImage { source })?;
        Ok(Self { artifacts, image })
    }

    /// A VM named `name` booting the cvm-init image (SeaBIOS, 512M).
    pub fn vm(&self, name: &str) -> TestVm<'_> {
        TestVm::new(&self.artifacts)
            .with_name(name)
            .with_initrd(&self.image.initramfs)
    }

    /// The image's module list with one more line: a module file that does not exist.
    pub fn modules_load_with_missing(&self, missing: &str) -> String {
        let mut list = self.image.modules_load.clone();
        if !list.is_empty() && !list.ends_with('\n') {
            list.push('\n');
        }
        list.push_str(missing);
        list.push('\n');
        list
    }
}
