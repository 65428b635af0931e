//! Executes the boot plan of `init_core::plan` stage by stage.

use std::path::{Path, PathBuf};

use init_core::cmdline::{self, CmdlineError, Config, TestFault, TestHooks};
use init_core::modules::{self, ModulesError};
use init_core::plan::{MountSpec, Stage};
use init_core::results::Record;
use init_sys::kmod::{KmodError, LoadOutcome};
use init_sys::mount::MountError;

use crate::results::Results;
use crate::stages::host_share::{HostShareOptions, HostShareStageError, load_host_share};
use crate::stages::measure::{
    BoxedTee, FileSink, MeasureStageError, TdxPaths, event_log_version, measure_app_info,
    measure_system_ready, open_event_log, random_seed, select_tee_with_root,
};
use init_core::app_compose::StorageFs;
use init_core::host_share::HostShare;
use init_core::identity::AppIdentity;
use init_core::tee::events::{KeyProviderInfo, RUNTIME_EVENT_LOG_PATH, RuntimeEventLog};
use measure::rtmr::{RtmrIndex, Sha384Digest};

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
    #[error("kernel contract")]
    KernelContract(#[source] crate::stages::kernel_contract::KernelContractStageError),
    #[error("host share")]
    HostShare(#[source] HostShareStageError),
    #[error("measure")]
    Measure(#[source] MeasureStageError),
    #[error("{stage} needs the {needs} stage to have run first")]
    StageOrder {
        stage: &'static str,
        needs: &'static str,
    },
    #[error("network")]
    Network(#[source] crate::stages::network::NetworkStageError),
    #[error("no network interface, but kms_urls needs the network")]
    NetworkRequired,
    #[error("data disk")]
    Disk(#[source] crate::stages::disk::DiskStageError),
    #[error("GPU attestation")]
    Gpu(#[source] crate::stages::gpu::GpuStageError),
    #[error("keys")]
    Keys(#[source] crate::stages::keys::KeysStageError),
    #[error("guest API")]
    GuestApi(#[source] crate::stages::guest_api::GuestApiStageError),
    #[error("workloads")]
    Workloads(#[source] Box<crate::stages::workloads::WorkloadsStageError>),
    #[error("get a quote to check RTMR3")]
    Quote(#[source] init_core::tee::TeeError),
    #[error("parse the TEE's quote")]
    ParseQuote(#[source] measure::quote::QuoteError),
    #[error("the TEE's quote has RTMR3 {quoted} but the event log replays to {replayed}")]
    Rtmr3Mismatch {
        quoted: Sha384Digest,
        replayed: Sha384Digest,
    },
    #[cfg(feature = "insecure-test-hooks")]
    #[error("test hook: spawn orphans")]
    SpawnOrphans(#[source] init_sys::signals::SignalsError),
}

/// State carried through the boot.
pub(crate) struct Boot {
    pub(crate) config: Config,
    pub(crate) results: Results,
    pub(crate) boot_started_us: u64,
    share: Option<HostShare>,
    identity: Option<AppIdentity>,
    event_log: Option<RuntimeEventLog<BoxedTee, FileSink>>,
    pub(crate) guest_api: Option<std::process::Child>,
    pub(crate) network: Option<crate::stages::network::Network>,
    /// App keys from the KMS (none with key provider `none`).
    pub(crate) app_keys: Option<cvm_keys::kms::AppKeys>,
    /// The decrypted, filtered environment for the workloads.
    pub(crate) env: Option<cvm_keys::env::DecryptedEnv>,
    /// The keys stage already extended `os-image-hash` / `key-provider`.
    key_events_emitted: bool,
    /// The `gpu-policy-hash` extended in the measure stage (MRCONFIGID v3 binds it).
    gpu_policy_hash: Option<[u8; 32]>,
    /// The mounted data volume (None: no data disk, or before the disk stage).
    disk: Option<crate::stages::disk::Mounted>,
    /// The app's containers (None: nothing to run).
    pub(crate) workloads: Option<crate::stages::workloads::Workloads>,
}

impl std::fmt::Debug for Boot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Boot")
            .field("config", &self.config)
            .field("identity", &self.identity)
            .field(
                "event_log",
                &self.event_log.as_ref().map(|l| l.events().len()),
            )
            .finish_non_exhaustive()
    }
}

/// A filesystem type that exists in no kernel: the `mount:` test fault uses it.
const BOGUS_FSTYPE: &str = "cvm-test-fault-nofs";

impl Boot {
    pub(crate) fn new() -> Self {
        Self {
            config: Config::default(),
            results: Results::default(),
            boot_started_us: init_sys::clock::monotonic_us(),
            share: None,
            identity: None,
            event_log: None,
            guest_api: None,
            network: None,
            app_keys: None,
            env: None,
            key_events_emitted: false,
            gpu_policy_hash: None,
            disk: None,
            workloads: None,
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
            Stage::KernelContract => crate::stages::kernel_contract::run()
                .map(drop)
                .map_err(BootError::KernelContract),
            Stage::HostShare => {
                let (share, source) =
                    load_host_share(&HostShareOptions::default()).map_err(BootError::HostShare)?;
                log::info!("host share: loaded from {source:?}");
                self.share = Some(share);
                Ok(())
            }
            Stage::Measure => self.measure(),
            Stage::Network => self.network(),
            Stage::Keys => self.keys(),
            Stage::Disk => self.disk(),
            Stage::SystemReady => self.system_ready(),
            Stage::GuestApi => {
                // The API process owns the event log from here on: PID 1 writes no more events.
                self.event_log = None;
                let copy = HostShareOptions::default().copy_dir;
                let child = crate::stages::guest_api::start(&copy).map_err(BootError::GuestApi)?;
                log::info!(
                    "guest API serving on {} (pid {})",
                    crate::stages::guest_api::DSTACK_SOCKET,
                    child.id()
                );
                self.guest_api = Some(child);
                Ok(())
            }
            Stage::Workloads => {
                let share = self.share.as_ref().ok_or(BootError::StageOrder {
                    stage: "workloads",
                    needs: "host-share",
                })?;
                let disk = self
                    .disk
                    .as_ref()
                    .map(|_| Path::new(crate::stages::disk::MOUNT_POINT));
                self.workloads = crate::stages::workloads::run(
                    share,
                    self.env.as_ref(),
                    disk,
                    self.network.is_some(),
                    &mut self.results,
                )
                .map_err(|e| BootError::Workloads(Box::new(e)))?;
                Ok(())
            }
            Stage::Ready => self.test_hooks_before_ready(),
        }
    }

    /// Where the host-share stage copied the share (the guest API reads it).
    pub(crate) fn host_share_copy_dir(&self) -> PathBuf {
        HostShareOptions::default().copy_dir
    }

    fn network(&mut self) -> Result<(), BootError> {
        use crate::stages::network::{NetworkOptions, bring_up};
        let share = self.share.as_ref().ok_or(BootError::StageOrder {
            stage: "network",
            needs: "host-share",
        })?;
        let required = !share.sys_config.kms_urls.is_empty();
        let mono_us = init_sys::clock::monotonic_us;
        match bring_up(&NetworkOptions::default()) {
            Ok(Some(network)) => {
                let config = &network.config;
                log::info!(
                    "network: {} {}/{} via {:?}, dns {:?}, lease {} s",
                    network.interface,
                    config.address,
                    config.prefix_len,
                    config.gateway,
                    config.dns_servers,
                    config.lease_secs
                );
                self.results.record(&Record::Network {
                    interface: network.interface.clone(),
                    address: format!("{}/{}", config.address, config.prefix_len),
                    gateway: config.gateway.map(|g| g.to_string()).unwrap_or_default(),
                    dns: config.dns_servers.iter().map(ToString::to_string).collect(),
                    mono_us: mono_us(),
                });
                self.network = Some(network);
                Ok(())
            }
            Ok(None) if required => Err(BootError::NetworkRequired),
            Ok(None) => {
                log::info!("network: no Ethernet interface; offline");
                self.results.record(&Record::Network {
                    interface: "none".into(),
                    address: String::new(),
                    gateway: String::new(),
                    dns: Vec::new(),
                    mono_us: mono_us(),
                });
                Ok(())
            }
            Err(e) if required => Err(BootError::Network(e)),
            Err(e) => {
                log::warn!(
                    "network: {} (offline; nothing in the configuration needs it)",
                    init_core::error_chain::one_line(&e)
                );
                Ok(())
            }
        }
    }

    fn keys(&mut self) -> Result<(), BootError> {
        use crate::stages::keys::{KeysOutcome, run, write_app_keys};
        let needs = |needs| BootError::StageOrder {
            stage: "keys",
            needs,
        };
        let share = self.share.as_ref().ok_or(needs("host-share"))?;
        let identity = self.identity.as_ref().ok_or(needs("measure"))?;
        let log = self.event_log.as_mut().ok_or(needs("measure"))?;
        let dns = self.network.as_ref().map(|n| n.config.dns_servers.clone());
        let events = log.events().to_vec();
        let outcome = run(
            share,
            identity,
            &events,
            log.rtmr_mut(),
            dns,
            self.gpu_policy_hash,
        )
        .map_err(BootError::Keys)?;
        let mono_us = init_sys::clock::monotonic_us();
        match outcome {
            KeysOutcome::Kms {
                keys,
                env,
                events,
                mr_config_version,
            } => {
                // Measure what the boot now trusts before anything uses the keys.
                log.emit_plan(events).map_err(|source| {
                    BootError::Measure(MeasureStageError::EmitEvents { source })
                })?;
                self.key_events_emitted = true;
                let path =
                    write_app_keys(&self.host_share_copy_dir(), &keys).map_err(BootError::Keys)?;
                let names: Vec<String> = env.names().into_iter().map(str::to_owned).collect();
                log::info!(
                    "keys: from {} (root key {}), {} env variable(s) accepted, MRCONFIGID v{}; app keys in {}",
                    keys.kms_url,
                    hex::encode(&keys.root_spki_der),
                    names.len(),
                    mr_config_version,
                    path.display()
                );
                self.results.record(&Record::Keys {
                    provider: "kms".into(),
                    kms_url: keys.kms_url.clone(),
                    key_provider_id: hex::encode(&keys.root_spki_der),
                    env_names: names,
                    mr_config_version,
                    mono_us,
                });
                self.app_keys = Some(*keys);
                self.env = Some(env);
            }
            KeysOutcome::NoProvider => {
                self.results.record(&Record::Keys {
                    provider: "none".into(),
                    kms_url: String::new(),
                    key_provider_id: String::new(),
                    env_names: Vec::new(),
                    mr_config_version: 0,
                    mono_us,
                });
            }
        }
        Ok(())
    }

    fn measure(&mut self) -> Result<(), BootError> {
        let share = self.share.as_ref().ok_or(BootError::StageOrder {
            stage: "measure",
            needs: "host-share",
        })?;
        let (tee, insecure_root) =
            select_tee_with_root(&TdxPaths::default()).map_err(BootError::Measure)?;
        if let Some(pem) = insecure_root {
            self.results.record(&Record::InsecureSimulatedRoot {
                pem,
                mono_us: init_sys::clock::monotonic_us(),
            });
        }
        let version = event_log_version(share).map_err(BootError::Measure)?;
        let mut log = open_event_log(tee, Path::new(RUNTIME_EVENT_LOG_PATH), version)
            .map_err(BootError::Measure)?;
        let seed = random_seed(Path::new("/dev/urandom")).map_err(BootError::Measure)?;
        let gpu_policy = share
            .app_compose
            .compose()
            .requirements
            .as_ref()
            .and_then(|r| r.gpu_policy.as_ref());
        let gpu = crate::stages::gpu::run(
            gpu_policy,
            Path::new("/sys/bus/pci/devices"),
            Path::new(crate::stages::gpu::HELPER_PATH),
            Path::new(crate::stages::gpu::RIM_DIR),
        )
        .map_err(BootError::Gpu)?;
        log::info!(
            "gpu: {} NVIDIA GPU(s), ready state {}, policy hash {}",
            gpu.gpus,
            if gpu.ready { "set" } else { "off" },
            hex::encode(gpu.policy_hash)
        );
        self.results.record(&Record::Gpu {
            gpus: u32::try_from(gpu.gpus).unwrap_or(u32::MAX),
            ready: gpu.ready,
            policy_hash: hex::encode(gpu.policy_hash),
            mono_us: init_sys::clock::monotonic_us(),
        });
        self.gpu_policy_hash = Some(gpu.policy_hash);
        let identity =
            measure_app_info(&mut log, share, seed, gpu.events).map_err(BootError::Measure)?;
        self.identity = Some(identity);
        self.event_log = Some(log);
        Ok(())
    }

    fn disk(&mut self) -> Result<(), BootError> {
        let mounted = crate::stages::disk::run(&self.config, self.app_keys.as_ref())
            .map_err(BootError::Disk)?;
        self.results.record(&Record::Disk {
            device: mounted
                .as_ref()
                .map_or_else(|| "none".to_owned(), |m| m.disk.display().to_string()),
            mount_point: mounted
                .as_ref()
                .map(|_| crate::stages::disk::MOUNT_POINT.to_owned())
                .unwrap_or_default(),
            formatted: mounted.as_ref().is_some_and(|m| m.opened.formatted),
            data_bytes: mounted.as_ref().map_or(0, |m| m.opened.data_bytes),
            mono_us: init_sys::clock::monotonic_us(),
        });
        #[cfg(feature = "insecure-test-hooks")]
        if mounted.is_some() {
            crate::stages::disk::test_hooks::run(&self.config, &mut self.results);
        }
        self.disk = mounted;
        Ok(())
    }

    fn system_ready(&mut self) -> Result<(), BootError> {
        let needs = |needs| BootError::StageOrder {
            stage: "system-ready",
            needs,
        };
        let share = self.share.as_ref().ok_or(needs("host-share"))?;
        let identity = self.identity.as_ref().ok_or(needs("measure"))?;
        let log = self.event_log.as_mut().ok_or(needs("measure"))?;
        // storage-fs names the filesystem actually mounted: the data volume is always ext4.
        let asked = share.app_compose.compose().storage_fs();
        let storage_fs = if self.disk.is_some() {
            if asked != StorageFs::Ext4 {
                log::warn!(
                    "app-compose asks for storage_fs {}: the data disk is ext4",
                    asked.as_str()
                );
            }
            StorageFs::Ext4
        } else {
            asked
        };
        // With a KMS the keys stage already extended os-image-hash and key-provider.
        let key_provider = (!self.key_events_emitted).then(KeyProviderInfo::none);
        measure_system_ready(log, share, key_provider.as_ref(), storage_fs)
            .map_err(BootError::Measure)?;
        let replayed = measure::runtime_event::replay_rtmr3(log.events());
        // A fresh quote must carry what the log replays to: proves the TEE saw every extend.
        let mut report_data = [0u8; 64];
        report_data[..32].copy_from_slice(identity.compose_hash.as_bytes());
        let quote_bytes = log
            .rtmr_mut()
            .quote(&report_data)
            .map_err(BootError::Quote)?;
        let quote = measure::quote::Quote::parse(&quote_bytes).map_err(BootError::ParseQuote)?;
        let quoted = *quote.rtmrs().register(RtmrIndex::R3);
        if quoted != replayed {
            return Err(BootError::Rtmr3Mismatch { quoted, replayed });
        }
        let simulated = log
            .events()
            .iter()
            .any(|e| e.name == "insecure-simulated-tee");
        let tee = if simulated {
            "insecure-simulated"
        } else {
            "tdx"
        };
        if simulated {
            log::warn!("INSECURE simulated TEE: this VM's attestation can never be accepted");
        }
        log::info!("system ready: RTMR3 {replayed}");
        self.results.record(&Record::Measured {
            tee: tee.into(),
            app_id: identity.app_id.to_string(),
            compose_hash: identity.compose_hash.to_string(),
            instance_id: identity
                .instance_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            rtmr3: replayed.to_string(),
            quote_rtmr3: quoted.to_string(),
            events: u32::try_from(log.events().len()).unwrap_or(u32::MAX),
            mono_us: init_sys::clock::monotonic_us(),
        });
        Ok(())
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

    /// After a fatal error in a stage before `results`: load what modules still can be
    /// (ignoring failures — the error being reported may be one of them) and open the results
    /// port, so the failure reaches the channel and not only the console.
    pub(crate) fn open_results_best_effort(&mut self) {
        if self.results.is_open() {
            return;
        }
        if let Ok(text) = std::fs::read_to_string(modules::LOAD_LIST_PATH)
            && let Ok(paths) = modules::parse_load_list(&text)
        {
            for path in paths {
                let _ = init_sys::kmod::load_module(Path::new(&path));
            }
        }
        let name = self.config.results_port.clone();
        if let Err(e) = self.results.open(&name) {
            log::warn!("{}", init_core::error_chain::one_line(&e));
        }
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
    fn test_hooks_before_ready(&mut self) -> Result<(), BootError> {
        for dump in self.config.test_dump.clone() {
            let bytes = std::fs::read(dump.path()).map_err(|source| BootError::ReadFile {
                path: PathBuf::from(dump.path()),
                source,
            })?;
            log::warn!("test hook: dumping {} ({} bytes)", dump.path(), bytes.len());
            self.results.record(&Record::TestDump {
                name: dump.name().into(),
                hex: hex::encode(&bytes),
                mono_us: init_sys::clock::monotonic_us(),
            });
        }
        if self.config.test_orphans > 0 {
            log::warn!("test hook: spawning {} orphans", self.config.test_orphans);
            init_sys::signals::spawn_orphans(self.config.test_orphans, 300)
                .map_err(BootError::SpawnOrphans)?;
        }
        Ok(())
    }

    #[cfg(not(feature = "insecure-test-hooks"))]
    #[allow(clippy::unused_self, clippy::unnecessary_wraps)]
    fn test_hooks_before_ready(&mut self) -> Result<(), BootError> {
        Ok(())
    }
}

fn read(path: &str) -> Result<String, BootError> {
    std::fs::read_to_string(path).map_err(|source| BootError::ReadFile {
        path: PathBuf::from(path),
        source,
    })
}
