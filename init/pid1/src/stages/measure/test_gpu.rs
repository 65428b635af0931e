//! **INSECURE** test hook `cvm.test_gpu` (builds with `insecure-test-hooks` only; the release
//! build does not compile this file): a fake NVIDIA GPU for QEMU boots, so the gate, the grant,
//! the mounts and the node check run without a GPU.
//!
//! - every mode makes `/dev/nvidia0` (c 195:0) and `/dev/nvidiactl` (c 195:255); they need not
//!   open, only exist;
//! - `pass` / `replay`: a fake PCI function `0000:41:00.0` (vendor 0x10de, class 0x030200) and
//!   a fake driver GPU list (`Device Minor: 0`) under `/run/cvm/test-gpu`, the gate's inventory
//!   and the grant pointed there; the evidence helper is this binary (`cvm-init
//!   test-gpu-helper`), which serves the public nvtrust H100 sample (report and chain in the
//!   test image under [`EVIDENCE_DIR`], RIMs under `RIM_DIR`). That report carries its recorded
//!   nonce; a stand-in cannot sign a fresh one. `pass` makes the gate verify under the recorded
//!   nonce and time (a replay, accepted only here), so `nv_verify` runs for real and passes;
//!   `replay` keeps the fresh nonce, and the gate refuses the stale report;
//! - `node-only`: only the nodes, no GPU on the (real) PCI bus: the gate attests nothing and the
//!   node check of the `workloads` stage stops the boot.

use std::fs;
use std::io::{self, BufRead as _, Write as _};
use std::path::{Path, PathBuf};

use init_core::cmdline::TestGpu;
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use nv_verify::evidence::SerializedEvidence;
use nv_verify::helper::{CollectedGpu, Request, Response};
use nv_verify::policy::CcState;

use super::gpu::GpuPaths;

/// The subcommand that serves the helper protocol.
pub(crate) const SUBCOMMAND: &str = "test-gpu-helper";
/// Where the test image carries the recorded evidence (`attestation_report.bin`,
/// `cert_chain.pem`: `measurements/gpu/testdata/hopper_2023_545`).
pub(crate) const EVIDENCE_DIR: &str = "/usr/share/cvm-init/test-gpu";
const ROOT: &str = "/run/cvm/test-gpu";
const PCI_ADDRESS: &str = "0000:41:00.0";
const UUID: &str = "GPU-00000000-0000-0000-0000-0000000fa6e0";
/// The nonce the sample report was made for (nvtrust's 545 sample).
const NONCE_545: &str = "4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e";
/// 2024-06-01, inside the validity of the sample's chain and RIMs.
const T_2024_06: u64 = 1_717_200_000;

fn node(path: &str, minor: u64) -> io::Result<()> {
    match mknod(
        path,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(195, minor),
    ) {
        Ok(()) | Err(nix::Error::EEXIST) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

fn write(path: &Path, text: &str) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, text)
}

/// Makes the fake GPU of `mode` and points `paths` at it.
pub(crate) fn prepare(mode: TestGpu, paths: &mut GpuPaths) -> io::Result<()> {
    log::warn!("gpu: INSECURE test hook cvm.test_gpu={mode:?}: a fake NVIDIA GPU");
    node("/dev/nvidia0", 0)?;
    node("/dev/nvidiactl", 255)?;
    if mode == TestGpu::NodeOnly {
        return Ok(());
    }
    let root = Path::new(ROOT);
    let pci = root.join("pci");
    write(&pci.join(PCI_ADDRESS).join("vendor"), "0x10de\n")?;
    write(&pci.join(PCI_ADDRESS).join("class"), "0x030200\n")?;
    let gpus = root.join("driver-gpus");
    write(
        &gpus.join(PCI_ADDRESS).join("information"),
        &format!(
            "Model: \t\t Fake H100 (cvm.test_gpu)\nGPU UUID: \t {UUID}\nBus Location: \t {PCI_ADDRESS}\nDevice Minor: \t 0\n"
        ),
    )?;
    paths.pci_devices = pci;
    paths.driver_gpus = gpus;
    // This binary; `/proc/self/exe` still execs it after the root moved to the tmpfs (where
    // `current_exe` reads `/init (deleted)`).
    paths.helper = PathBuf::from("/proc/self/exe");
    paths.helper_args = vec![SUBCOMMAND.to_owned()];
    if mode == TestGpu::Pass {
        let mut nonce = [0u8; 32];
        hex::decode_to_slice(NONCE_545, &mut nonce).map_err(io::Error::other)?;
        paths.replay = Some((nonce, T_2024_06));
    }
    Ok(())
}

fn collect() -> Result<Vec<CollectedGpu>, String> {
    let read = |name: &str| {
        let path = PathBuf::from(EVIDENCE_DIR).join(name);
        fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))
    };
    let mut nonce = [0u8; 32];
    hex::decode_to_slice(NONCE_545, &mut nonce).map_err(|e| e.to_string())?;
    Ok(vec![CollectedGpu {
        nvat: SerializedEvidence::new(
            "HOPPER",
            &nonce,
            &read("attestation_report.bin")?,
            &read("cert_chain.pem")?,
        ),
        index: 0,
        uuid: UUID.to_owned(),
        nvml_architecture: 9,
        vbios_version: "96.00.5e.00.01".to_owned(),
    }])
}

/// `cvm-init test-gpu-helper`: the helper protocol over stdin/stdout for the fake GPU.
pub(crate) fn helper_main() -> ! {
    let cc = CcState {
        environment: 2,
        cc_feature: 1,
        devtools_mode: 0,
        multi_gpu_mode: 0,
    };
    let mut ready = 0;
    let stdin = io::stdin();
    let mut stdout = io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let mut reply = Response {
            ok: true,
            ..Response::default()
        };
        let mut quit = false;
        match serde_json::from_str::<Request>(&line) {
            Ok(Request::Collect { .. }) => {
                reply.op = "collect".into();
                match collect() {
                    Ok(gpus) => {
                        reply.gpus = Some(gpus);
                        reply.cc_state = Some(cc);
                        reply.driver_version = Some("545.00".into());
                    }
                    Err(e) => {
                        reply.ok = false;
                        reply.error = Some(e);
                    }
                }
            }
            Ok(Request::State) => {
                reply.op = "state".into();
                reply.cc_state = Some(cc);
            }
            Ok(Request::SetReady) => {
                reply.op = "set_ready".into();
                ready = 1;
            }
            Ok(Request::SetNotReady) => {
                reply.op = "set_not_ready".into();
                ready = 0;
            }
            Ok(Request::Quit) => {
                reply.op = "quit".into();
                quit = true;
            }
            Err(e) => {
                reply.ok = false;
                reply.error = Some(e.to_string());
            }
        }
        reply.ready_state = Some(ready);
        let text = serde_json::to_string(&reply).unwrap_or_default();
        if writeln!(stdout, "{text}")
            .and_then(|()| stdout.flush())
            .is_err()
            || quit
        {
            break;
        }
    }
    #[allow(clippy::exit)]
    std::process::exit(0)
}
