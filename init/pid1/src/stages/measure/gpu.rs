//! The GPU gate, run inside the `measure` stage as dstack does (after `compose-hash`, before
//! `instance-id`): `gpu-policy-hash` is extended always; NVIDIA GPUs found on the PCI bus
//! (counted here, independently of NVML) are attested through the dynamically linked helper
//! `cvm-gpu-evidence` (NVML cannot be loaded into the static PID 1) and verified in-process by
//! `nv_verify` against the RIMs shipped in the image; only a pass extends `gpu-attestation` and
//! sets the GPUs' ready state. A display device of another vendor, a missing helper, or any
//! verification failure stops the boot with every reason (fail closed: no workload sees a GPU
//! that was not verified).
//!
//! Order with GPUs: the driver's kernel modules are loaded (`modules` stage, before this one),
//! `nvidia-persistenced` is started when the driver tree ships it, the GPUs are attested, the
//! ready state is set; only then can the `workloads` stage grant them ([`AttestedGpus`], handed
//! on through the boot). The verified evidence is written for the guest API's `GpuInfo`.

use std::fs;
use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use init_core::tee::RuntimeEvent;
use init_core::tee::events::names;
use nv_verify::helper::{Request, Response};
use nv_verify::pci::PciInventory;
use nv_verify::policy::{GateDecision, SystemInput, attest_system, gpu_policy_hash};
use nv_verify::{OcspMode, RimBundle, UnixTime};

/// Where the image ships the evidence helper.
pub(crate) const HELPER_PATH: &str = "/usr/lib/cvm-init/cvm-gpu-evidence";
/// Where the image ships the driver and VBIOS RIMs (`<RIM id>.xml`; part of the measured
/// initramfs).
pub(crate) const RIM_DIR: &str = "/usr/share/cvm-init/rims";
/// Largest RIM file read.
const MAX_RIM_LEN: u64 = 16 << 20;
/// Where the driver lists its GPUs (`<pci address>/information`: `Device Minor`, `GPU UUID`).
pub(crate) const DRIVER_GPUS_DIR: &str = "/proc/driver/nvidia/gpus";

/// Where the gate and the grant look. [`GpuPaths::default`] is the real system; test builds
/// point the PCI inventory and the driver's GPU list at a fake tree (`test_gpu`).
#[derive(Debug, Clone)]
pub(crate) struct GpuPaths {
    /// `/sys/bus/pci/devices`.
    pub(crate) pci_devices: PathBuf,
    /// [`DRIVER_GPUS_DIR`].
    pub(crate) driver_gpus: PathBuf,
    /// `/dev` (the `/dev/nvidia*` nodes).
    pub(crate) dev: PathBuf,
    /// The evidence helper and its arguments.
    pub(crate) helper: PathBuf,
    pub(crate) helper_args: Vec<String>,
    /// [`RIM_DIR`].
    pub(crate) rim_dir: PathBuf,
    /// The driver tree (`cvm_workload::gpu::DRIVER_TREE`).
    pub(crate) driver_tree: PathBuf,
    /// `GpuInfo`'s file (`guest_api::DEFAULT_GPU_ATTESTATION`).
    pub(crate) attestation_out: PathBuf,
    /// Test builds: verify under this recorded nonce and time instead of a fresh nonce and the
    /// clock (a replay of public evidence; `cvm.test_gpu=pass`).
    #[cfg(feature = "insecure-test-hooks")]
    pub(crate) replay: Option<([u8; 32], u64)>,
}

impl Default for GpuPaths {
    fn default() -> Self {
        Self {
            pci_devices: PathBuf::from("/sys/bus/pci/devices"),
            driver_gpus: PathBuf::from(DRIVER_GPUS_DIR),
            dev: PathBuf::from("/dev"),
            helper: PathBuf::from(HELPER_PATH),
            helper_args: Vec::new(),
            rim_dir: PathBuf::from(RIM_DIR),
            driver_tree: PathBuf::from(cvm_workload::gpu::DRIVER_TREE),
            attestation_out: PathBuf::from(guest_api::DEFAULT_GPU_ATTESTATION),
            #[cfg(feature = "insecure-test-hooks")]
            replay: None,
        }
    }
}

/// What the gate hands the `workloads` stage: the PCI addresses of the GPUs it passed (empty:
/// none may be granted) and where to find their nodes.
#[derive(Debug, Clone)]
pub(crate) struct AttestedGpus {
    pub(crate) pci: Vec<String>,
    pub(crate) paths: GpuPaths,
}

/// Errors of the GPU gate.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GpuStageError {
    #[error(
        "display devices that are not NVIDIA GPUs (or unreadable) on the PCI bus: {addresses:?}"
    )]
    ForeignDisplay { addresses: Vec<String> },
    #[error("{count} NVIDIA GPU(s) but no evidence helper at {path}")]
    NoHelper { count: usize, path: PathBuf },
    #[error("run the GPU evidence helper {path}")]
    SpawnHelper {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talk to the GPU evidence helper ({op})")]
    HelperIo {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("GPU evidence helper refused {op}: {error}")]
    HelperFailed { op: &'static str, error: String },
    #[error("GPU evidence helper sent an invalid reply to {op}")]
    HelperReply {
        op: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("read the RIM bundle {dir}")]
    ReadRims {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("read random bytes for the GPU nonce")]
    Random(#[source] io::Error),
    #[error("verify GPU evidence")]
    Attest(#[source] nv_verify::policy::AttestError),
    #[error("GPU attestation refused: {failures:?}")]
    Refused { failures: Vec<String> },
    #[error("the GPU ready state did not become 1 after set_ready")]
    ReadyStateNotSet,
    #[error("start {path}")]
    Persistenced {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} exited with {status}")]
    PersistencedFailed { path: PathBuf, status: String },
    #[error("list the driver modules in {path}")]
    ListModules {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("driver module {name}: only uncompressed .ko files are loaded from the driver tree")]
    CompressedModule { name: String },
    #[error("load the GPU driver module")]
    LoadModule(#[source] init_sys::kmod::KmodError),
    #[error("write the GPU attestation output {path}")]
    WriteOutput {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What the gate decided, with the events to extend (in order).
#[derive(Debug)]
pub(crate) struct GpuOutcome {
    pub(crate) events: Vec<RuntimeEvent>,
    pub(crate) policy_hash: [u8; 32],
    pub(crate) gpus: usize,
    pub(crate) ready: bool,
    /// The PCI addresses of the GPUs that passed (empty unless `ready`).
    pub(crate) attested: Vec<String>,
}

/// The display-class inventory of `sys_bus_pci_devices` (`/sys/bus/pci/devices`).
pub(crate) fn inventory(sys_bus_pci_devices: &Path) -> PciInventory {
    let Ok(entries) = fs::read_dir(sys_bus_pci_devices) else {
        return PciInventory::default();
    };
    let devices: Vec<(String, String, String)> = entries
        .filter_map(Result::ok)
        .map(|e| {
            let address = e.file_name().to_string_lossy().into_owned();
            let read = |name: &str| fs::read_to_string(e.path().join(name)).unwrap_or_default();
            (address, read("vendor"), read("class"))
        })
        .collect();
    PciInventory::from_devices(
        devices
            .iter()
            .map(|(a, v, c)| (a.as_str(), v.as_str(), c.as_str())),
    )
}

/// Runs the gate for `gpu_policy` (app-compose `requirements.gpu_policy`).
pub(crate) fn run(
    gpu_policy: Option<&serde_json::Value>,
    paths: &GpuPaths,
) -> Result<GpuOutcome, GpuStageError> {
    let helper = paths.helper.as_path();
    let policy_hash = gpu_policy_hash(gpu_policy);
    let mut events = vec![RuntimeEvent::new(
        names::GPU_POLICY_HASH,
        policy_hash.to_vec(),
    )];
    let pci = inventory(&paths.pci_devices);
    let refused = pci.refused();
    if !refused.is_empty() {
        return Err(GpuStageError::ForeignDisplay { addresses: refused });
    }
    if pci.nvidia.is_empty() {
        return Ok(GpuOutcome {
            events,
            policy_hash,
            gpus: 0,
            ready: false,
            attested: Vec::new(),
        });
    }
    if !helper.is_file() {
        return Err(GpuStageError::NoHelper {
            count: pci.nvidia.len(),
            path: helper.to_owned(),
        });
    }
    load_driver_modules(&paths.driver_tree)?;
    start_persistenced(&paths.driver_tree)?;
    let mut session = HelperSession::start(helper, &paths.helper_args)?;
    let result = attest_with(&mut session, gpu_policy, &pci, paths);
    if result.is_err() {
        // Fail closed: make sure the GPUs stay not-ready whatever the helper did.
        let _ = session.call(&Request::SetNotReady, "set_not_ready");
    }
    let _ = session.call(&Request::Quit, "quit");
    session.finish();
    let (attestation, evidence, ready) = result?;
    if let Some(payload) = &attestation {
        write_output(&paths.attestation_out, payload, &evidence)?;
    }
    events.extend(attestation.map(|payload| RuntimeEvent::new(names::GPU_ATTESTATION, payload)));
    Ok(GpuOutcome {
        events,
        policy_hash,
        gpus: pci.nvidia.len(),
        ready,
        attested: if ready {
            pci.nvidia.clone()
        } else {
            Vec::new()
        },
    })
}

/// The NVIDIA modules whose dependencies come first, in load order; other modules of the tree
/// follow in name order.
const MODULE_ORDER: [&str; 5] = [
    "nvidia.ko",
    "nvidia-modeset.ko",
    "nvidia-uvm.ko",
    "nvidia-drm.ko",
    "nvidia-peermem.ko",
];

/// The load order of the module file names of `<driver tree>/modules` (pure): the known NVIDIA
/// modules in dependency order, then any other `.ko` by name; a compressed module is refused
/// (finit_module is called without MODULE_INIT_COMPRESSED_FILE), other files are ignored.
fn module_load_order(names: &[String]) -> Result<Vec<String>, GpuStageError> {
    if let Some(name) = names.iter().find(|n| {
        [".ko.xz", ".ko.zst", ".ko.gz"]
            .iter()
            .any(|ext| n.ends_with(ext))
    }) {
        return Err(GpuStageError::CompressedModule { name: name.clone() });
    }
    let mut order: Vec<String> = MODULE_ORDER
        .iter()
        .filter(|known| names.iter().any(|n| n == *known))
        .map(|known| (*known).to_owned())
        .collect();
    let mut rest: Vec<String> = names
        .iter()
        .filter(|n| n.ends_with(".ko") && !MODULE_ORDER.contains(&n.as_str()))
        .cloned()
        .collect();
    rest.sort();
    order.extend(rest);
    Ok(order)
}

/// Loads the kernel modules of the verified driver tree (`<driver tree>/modules`, the dm-verity
/// extension: every byte pinned by the measured command line) when it has them; only with
/// NVIDIA GPUs on the bus. A module that fails to load stops the gate (no driver, no GPU).
fn load_driver_modules(driver_tree: &Path) -> Result<(), GpuStageError> {
    let dir = driver_tree.join("modules");
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(GpuStageError::ListModules { path: dir, source }),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| GpuStageError::ListModules {
            path: dir.clone(),
            source,
        })?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    for name in module_load_order(&names)? {
        let path = dir.join(&name);
        let outcome = init_sys::kmod::load_module(&path).map_err(GpuStageError::LoadModule)?;
        log::info!("gpu: driver module {} {outcome:?}", path.display());
    }
    Ok(())
}

/// Starts `<driver tree>/bin/nvidia-persistenced` when the tree ships it (it keeps the driver
/// state between clients and is what NVIDIA requires before CC attestation); it daemonizes, so
/// its first process exits once the daemon runs (PID 1 reaps the daemon if it ever exits).
fn start_persistenced(driver_tree: &Path) -> Result<(), GpuStageError> {
    let path = driver_tree.join("bin/nvidia-persistenced");
    if !path.is_file() {
        return Ok(());
    }
    log::info!("gpu: starting {}", path.display());
    let status = Command::new(&path)
        .env_clear()
        .stdin(Stdio::null())
        .status()
        .map_err(|source| GpuStageError::Persistenced {
            path: path.clone(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(GpuStageError::PersistencedFailed {
            path,
            status: status.to_string(),
        })
    }
}

/// Writes what `GpuInfo` answers: the measured `gpu-attestation` payload and the verified
/// NVAT evidence it hashes (`evidence_sha256`), one JSON object, mode 0600.
fn write_output(path: &Path, payload: &[u8], evidence: &[u8]) -> Result<(), GpuStageError> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let err = |source| GpuStageError::WriteOutput {
        path: path.to_owned(),
        source,
    };
    let payload: serde_json::Value = serde_json::from_slice(payload)
        .map_err(io::Error::other)
        .map_err(err)?;
    let evidence: serde_json::Value = serde_json::from_slice(evidence)
        .map_err(io::Error::other)
        .map_err(err)?;
    let text = serde_json::json!({"gpu_attestation": payload, "evidence": evidence}).to_string();
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(err)
}

/// The verified payload, the evidence document and the ready state.
type Attested = (Option<Vec<u8>>, Vec<u8>, bool);

fn attest_with(
    session: &mut HelperSession,
    gpu_policy: Option<&serde_json::Value>,
    pci: &PciInventory,
    paths: &GpuPaths,
) -> Result<Attested, GpuStageError> {
    let mut nonce = [0u8; 32];
    {
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut nonce))
            .map_err(GpuStageError::Random)?;
    }
    #[allow(unused_mut)]
    let mut now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    #[cfg(feature = "insecure-test-hooks")]
    if let Some((recorded, at)) = paths.replay {
        log::warn!(
            "gpu: INSECURE test hook: verifying under the evidence's recorded nonce and time"
        );
        nonce = recorded;
        now = at;
    }
    let collected = session.call(
        &Request::Collect {
            nonce: hex::encode(nonce),
        },
        "collect",
    )?;
    let gpus = collected.gpus.clone().unwrap_or_default();
    let evidence = nv_verify::helper::nvat_evidence(&gpus);
    let rims = read_rims(&paths.rim_dir)?;
    let attested = attest_system(
        &SystemInput {
            gpu_policy,
            evidence_document: &evidence,
            nonce,
            cc_state: collected.cc_state,
            pci,
            now: UnixTime(now),
            // No online OCSP client in the init yet: revocation is skipped explicitly, which
            // the measured gpu-attestation event records.
            ocsp: OcspMode::Skip,
            ocsp_responses: &[],
        },
        &rims,
    )
    .map_err(GpuStageError::Attest)?;
    match attested.gate.decision {
        GateDecision::Refuse => Err(GpuStageError::Refused {
            failures: attested
                .gate
                .failures
                .iter()
                .map(|f| format!("{f:?}"))
                .collect(),
        }),
        GateDecision::NoGpus => Ok((None, evidence, false)),
        GateDecision::Ready | GateDecision::ReadyWithoutAttestation => {
            let reply = session.call(&Request::SetReady, "set_ready")?;
            if reply.ready_state != Some(1) {
                return Err(GpuStageError::ReadyStateNotSet);
            }
            Ok((attested.attestation_payload, evidence, true))
        }
    }
}

fn read_rims(dir: &Path) -> Result<RimBundle, GpuStageError> {
    let mut bundle = RimBundle::default();
    let err = |source| GpuStageError::ReadRims {
        dir: dir.to_owned(),
        source,
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(bundle);
    };
    for entry in entries {
        let path = entry.map_err(err)?.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".xml"))
        else {
            continue;
        };
        let meta = fs::symlink_metadata(&path).map_err(err)?;
        if !meta.is_file() || meta.len() > MAX_RIM_LEN {
            continue;
        }
        bundle.insert(id.to_owned(), fs::read(&path).map_err(err)?);
    }
    Ok(bundle)
}

/// The helper process, one JSON line per request and reply.
struct HelperSession {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl HelperSession {
    fn start(path: &Path, args: &[String]) -> Result<Self, GpuStageError> {
        let spawn_err = |source| GpuStageError::SpawnHelper {
            path: path.to_owned(),
            source,
        };
        // No inherited environment: PID 1's comes from kernel-cmdline `KEY=value` parameters,
        // which the host writes (the helper's library and sysfs overrides are test-only).
        let mut child = Command::new(path)
            .args(args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(spawn_err(io::Error::other("no pipes")));
        };
        Ok(Self {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }

    fn call(&mut self, request: &Request, op: &'static str) -> Result<Response, GpuStageError> {
        let io_err = |source| GpuStageError::HelperIo { op, source };
        let mut line = serde_json::to_string(request)
            .map_err(|source| GpuStageError::HelperReply { op, source })?;
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).map_err(io_err)?;
        self.stdin.flush().map_err(io_err)?;
        let mut reply = String::new();
        // Replies are one line; cap it so a broken helper cannot exhaust memory.
        let read = (&mut self.stdout)
            .take(64 << 20)
            .read_line(&mut reply)
            .map_err(io_err)?;
        if read == 0 {
            return Err(io_err(io::Error::from(io::ErrorKind::UnexpectedEof)));
        }
        let response: Response = serde_json::from_str(&reply)
            .map_err(|source| GpuStageError::HelperReply { op, source })?;
        if !response.ok {
            return Err(GpuStageError::HelperFailed {
                op,
                error: response.error.unwrap_or_default(),
            });
        }
        Ok(response)
    }

    fn finish(mut self) {
        drop(self.stdin);
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_modules_load_in_dependency_order() {
        let names: Vec<String> = [
            "nvidia-drm.ko",
            "README",
            "zz-other.ko",
            "nvidia-uvm.ko",
            "nvidia.ko",
            "nvidia-modeset.ko",
            "a-helper.ko",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            module_load_order(&names).unwrap(),
            [
                "nvidia.ko",
                "nvidia-modeset.ko",
                "nvidia-uvm.ko",
                "nvidia-drm.ko",
                "a-helper.ko",
                "zz-other.ko"
            ]
        );
        let compressed = ["nvidia.ko".to_owned(), "nvidia-uvm.ko.xz".to_owned()];
        assert!(matches!(
            module_load_order(&compressed),
            Err(GpuStageError::CompressedModule { name }) if name == "nvidia-uvm.ko.xz"
        ));
        assert!(module_load_order(&[]).unwrap().is_empty());
    }

    #[test]
    fn no_modules_directory_loads_nothing() {
        let t = tempfile::tempdir().unwrap();
        load_driver_modules(t.path()).unwrap();
        std::fs::create_dir(t.path().join("modules")).unwrap();
        std::fs::write(t.path().join("modules/nvidia.ko"), b"not a module").unwrap();
        // A file that is not a module is refused by the kernel (or by the permission check
        // when not root): either way the gate stops, naming the file.
        let err = load_driver_modules(t.path()).unwrap_err();
        assert!(
            init_core::error_chain::one_line(&err).contains("nvidia.ko"),
            "{}",
            init_core::error_chain::one_line(&err)
        );
    }

    fn paths(pci: &Path, helper: &Path, rims: &Path) -> GpuPaths {
        GpuPaths {
            pci_devices: pci.to_owned(),
            helper: helper.to_owned(),
            rim_dir: rims.to_owned(),
            driver_tree: rims.join("no-driver-tree"),
            attestation_out: rims.join("attestation.out"),
            ..GpuPaths::default()
        }
    }

    fn device(root: &Path, address: &str, vendor: &str, class: &str) {
        let dir = root.join(address);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("vendor"), format!("{vendor}\n")).unwrap();
        fs::write(dir.join("class"), format!("{class}\n")).unwrap();
    }

    #[test]
    fn no_gpu_extends_only_the_policy_hash() {
        let dir = tempfile::tempdir().unwrap();
        device(dir.path(), "0000:00:00.0", "0x8086", "0x060000");
        device(dir.path(), "0000:00:01.0", "0x1af4", "0x010000");
        let out = run(
            None,
            &paths(dir.path(), Path::new("/nonexistent"), dir.path()),
        )
        .unwrap();
        assert_eq!(out.gpus, 0);
        assert!(!out.ready);
        let names: Vec<_> = out.events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["gpu-policy-hash"]);
        assert_eq!(out.events[0].payload, gpu_policy_hash(None).to_vec());
    }

    #[test]
    fn a_foreign_display_device_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        device(dir.path(), "0000:00:02.0", "0x1234", "0x030000");
        let err = run(
            None,
            &paths(dir.path(), Path::new("/nonexistent"), dir.path()),
        )
        .unwrap_err();
        assert!(
            matches!(&err, GpuStageError::ForeignDisplay { addresses } if addresses == &["0000:00:02.0"]),
            "{err:?}"
        );
    }

    #[test]
    fn an_nvidia_gpu_without_the_helper_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        device(dir.path(), "0000:41:00.0", "0x10de", "0x030200");
        let err = run(
            None,
            &paths(dir.path(), &dir.path().join("missing-helper"), dir.path()),
        )
        .unwrap_err();
        assert!(
            matches!(err, GpuStageError::NoHelper { count: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_helper_that_fails_collect_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        device(dir.path(), "0000:41:00.0", "0x10de", "0x030200");
        // A stand-in helper that answers every request with a refusal, as the real one does
        // when NVML or the driver is missing.
        let bin = tempfile::tempdir().unwrap();
        let helper = bin.path().join("helper.sh");
        fs::write(
            &helper,
            "#!/bin/sh\nwhile read -r line; do echo '{\"op\":\"collect\",\"ok\":false,\"error\":\"NVML: Driver Not Loaded\"}'; done\n",
        )
        .unwrap();
        fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let err = run(None, &paths(dir.path(), &helper, dir.path())).unwrap_err();
        assert!(
            matches!(&err, GpuStageError::HelperFailed { op: "collect", error } if error.contains("Driver Not Loaded")),
            "{err:?}"
        );
    }
}
