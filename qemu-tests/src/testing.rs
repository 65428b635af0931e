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
    #[error("failed to build the host-share disk")]
    BuildHostShare {
        #[source]
        source: crate::host_share::HostShareError,
    },
}

/// The pinned artifacts and the cvm-init image (built once per process).
#[derive(Debug, Clone)]
pub struct CvmSetup {
    pub artifacts: Artifacts,
    pub image: TestImage,
    /// The sample host share (`testdata/host-share`) as a `DSTACKSHR` ext4 disk.
    pub host_share: std::path::PathBuf,
}

impl CvmSetup {
    /// Fetches the artifacts and builds (or reuses) the image.
    pub fn new() -> Result<Self, SetupError> {
        Self::with(Artifacts::fetch(), image::test_image)
    }

    /// As [`CvmSetup::new`] with the generic-flavour kernel and the 9p modules
    /// ([`image::test_image_9p`]): the setup for host shares over 9p.
    pub fn new_9p() -> Result<Self, SetupError> {
        Self::with(
            Artifacts::fetch_with_kernel("kernel_9p"),
            image::test_image_9p,
        )
    }

    /// As [`CvmSetup::new`] with the fake-GPU files ([`image::test_image_gpu`]).
    pub fn new_gpu() -> Result<Self, SetupError> {
        Self::with(Artifacts::fetch(), image::test_image_gpu)
    }

    /// The fetched `artifacts`, the image `build` makes of them, and the sample host share.
    fn with(
        artifacts: Result<Artifacts, crate::artifacts::ArtifactError>,
        build: fn(&Artifacts) -> Result<TestImage, image::ImageError>,
    ) -> Result<Self, SetupError> {
        let artifacts = artifacts.map_err(|source| SetupError::FetchArtifacts { source })?;
        let image = build(&artifacts).map_err(|source| SetupError::BuildImage { source })?;
        let host_share = crate::host_share::sample_image()
            .map_err(|source| SetupError::BuildHostShare { source })?;
        Ok(Self {
            artifacts,
            image,
            host_share,
        })
    }

    /// A VM booting the cvm-init image with the host directory `share` exported read-only over
    /// virtio-9p with mount tag `host-shared` (as a dstack VMM does), and no share disk.
    pub fn vm_with_9p_share(&self, name: &str, share: &std::path::Path) -> TestVm<'_> {
        TestVm::new(&self.artifacts)
            .with_name(name)
            .with_initrd(&self.image.initramfs)
            .with_qemu_arg("-fsdev")
            .with_qemu_arg(&format!(
                "local,id=hostshared,path={},security_model=none,readonly=on",
                share.display()
            ))
            .with_qemu_arg("-device")
            .with_qemu_arg("virtio-9p-pci,fsdev=hostshared,mount_tag=host-shared")
    }

    /// A VM named `name` booting the cvm-init image (SeaBIOS, 512M) with the sample host share.
    pub fn vm(&self, name: &str) -> TestVm<'_> {
        self.vm_with_share(name, &self.host_share)
    }

    /// A VM booting the cvm-init image with `share` (an ext4 image) as its host-share disk.
    pub fn vm_with_share(&self, name: &str, share: &std::path::Path) -> TestVm<'_> {
        TestVm::new(&self.artifacts)
            .with_name(name)
            .with_initrd(&self.image.initramfs)
            .with_qemu_arg("-drive")
            .with_qemu_arg(&crate::host_share::drive_arg(share))
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
