//! Executes the boot plan of `init_core::plan` stage by stage.

use std::path::{Path, PathBuf};

use init_core::cmdline::{self, CmdlineError, Config, TestFault, TestHooks};
use init_core::modules::{self, ModulesError};
use init_core::plan::{MountSpec, Stage};
use init_core::results::Record;
use init_sys::kmod::{KmodError, LoadOutcome};
use init_sys::mount::MountError;

use crate::results::Results;

/// Why a stage failed. The stage name travels beside it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BootError {
    #[error("mount stage")]
    Mount(#[source] MountError),
    #[error("route ctrl-alt-del to PID 1")]
    CtrlAltDel(#[source] init_sys::power::PowerError),
    #[error("read {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel command line")]
    Cmdline(#[source] CmdlineError),
    #[error("module load list {path}")]
    LoadList {
        path: PathBuf,
        #[source]
        source: ModulesError,
    },
    #[error("module {name}")]
    Module {
        name: String,
        #[source]
        source: KmodError,
    },
    #[error("open results channel")]
    ResultsPort(#[source] init_sys::virtio_port::VirtioPortError),
    #[cfg(feature = "insecure-test-hooks")]
    #[error("test hook: spawn orphans")]
    SpawnOrphans(#[source] init_sys::signals::SignalsError),
}

/// State carried through the boot.
#[derive(Debug)]
pub(crate) struct Boot {
    pub(crate) config: Config,
    pub(crate) results: Results,
    pub(crate) boot_started_us: u64,
}

/// A filesystem type that exists in no kernel: the `mount:` test fault uses it.
const BOGUS_FSTYPE: &str = "cvm-test-fault-nofs";

impl Boot {
    pub(crate) fn new() -> Self {
        Self {
            config: Config::default(),
            results: Results::default(),
            boot_started_us: init_sys::clock::monotonic_us(),
        }
    }

    /// Run every stage of the plan in order; the first failure ends the boot.
    pub(crate) fn run(&mut self, plan: &[Stage]) -> Result<(), (Stage, BootError)> {
        for &stage in plan {
            let started = init_sys::clock::monotonic_us();
            self.results.record(&Record::StageStarted {
                stage: stage.name().into(),
                mono_us: started,
            });
            self.run_stage(stage).map_err(|e| (stage, e))?;
            let finished = init_sys::clock::monotonic_us();
            let duration_us = finished.saturating_sub(started);
            self.results.record(&Record::StageFinished {
                stage: stage.name().into(),
                mono_us: finished,
                duration_us,
            });
            log::info!(
                "stage {} done in {}.{:03} ms",
                stage.name(),
                duration_us / 1000,
                duration_us % 1000
            );
        }
        Ok(())
    }

    fn run_stage(&mut self, stage: Stage) -> Result<(), BootError> {
        match stage {
            Stage::Early => {
                self.mount_all(stage.mounts())?;
                if let Err(e) = init_sys::console::ensure_stdio(Path::new("/dev/console")) {
                    log::warn!("{}", init_core::error_chain::one_line(&e));
                }
                if let Err(e) = crate::logger::attach_kmsg(Path::new("/dev/kmsg")) {
                    log::warn!("open /dev/kmsg: {e}");
                }
                init_sys::power::route_ctrl_alt_del_to_sigint().map_err(BootError::CtrlAltDel)
            }
            Stage::Cmdline => {
                let text = read("/proc/cmdline")?;
                self.config =
                    cmdline::parse(&text, TestHooks::compiled()).map_err(BootError::Cmdline)?;
                crate::logger::set_level(self.config.log_level);
                log::info!("config: on_ready={}", self.config.on_ready);
                Ok(())
            }
            Stage::Mount | Stage::MountLate => self.mount_all(stage.mounts()),
            Stage::Modules => self.load_modules(),
            Stage::Results => {
                let name = self.config.results_port.clone();
                let found = self.results.open(&name).map_err(BootError::ResultsPort)?;
                if !found {
                    log::info!("no virtio port {name}: results go to the console only");
                }
                Ok(())
            }
            Stage::Ready => self.test_hooks_before_ready(),
        }
    }

    fn mount_all(&self, mounts: &[MountSpec]) -> Result<(), BootError> {
        for spec in mounts {
            let fstype = match &self.config.test_fault {
                Some(TestFault::Mount { target }) if target == spec.target => BOGUS_FSTYPE,
                _ => spec.fstype,
            };
            init_sys::mount::mount(
                spec.source,
                Path::new(spec.target),
                fstype,
                spec.flags,
                spec.data,
            )
            .map_err(BootError::Mount)?;
        }
        Ok(())
    }

    fn load_modules(&self) -> Result<(), BootError> {
        let list_path = Path::new(modules::LOAD_LIST_PATH);
        if !list_path.exists() {
            log::info!(
                "no {}: kernel has its drivers built in",
                list_path.display()
            );
            return Ok(());
        }
        let text = read(modules::LOAD_LIST_PATH)?;
        let paths = modules::parse_load_list(&text).map_err(|source| BootError::LoadList {
            path: list_path.to_owned(),
            source,
        })?;
        let (mut loaded, mut present) = (0u32, 0u32);
        for path in &paths {
            let name = modules::module_name(path).to_owned();
            match init_sys::kmod::load_module(Path::new(path)) {
                Ok(LoadOutcome::Loaded) => loaded += 1,
                Ok(LoadOutcome::AlreadyLoaded) => present += 1,
                Err(source) => return Err(BootError::Module { name, source }),
            }
            log::debug!("module {name} loaded");
        }
        log::info!("modules: {loaded} loaded, {present} already present");
        Ok(())
    }

    #[cfg(feature = "insecure-test-hooks")]
    fn test_hooks_before_ready(&self) -> Result<(), BootError> {
        if self.config.test_orphans > 0 {
            log::warn!("test hook: spawning {} orphans", self.config.test_orphans);
            init_sys::signals::spawn_orphans(self.config.test_orphans, 300)
                .map_err(BootError::SpawnOrphans)?;
        }
        Ok(())
    }

    #[cfg(not(feature = "insecure-test-hooks"))]
    #[allow(clippy::unused_self, clippy::unnecessary_wraps)]
    fn test_hooks_before_ready(&self) -> Result<(), BootError> {
        Ok(())
    }
}

fn read(path: &str) -> Result<String, BootError> {
    std::fs::read_to_string(path).map_err(|source| BootError::ReadFile {
        path: PathBuf::from(path),
        source,
    })
}
