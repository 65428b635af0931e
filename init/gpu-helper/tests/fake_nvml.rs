//! The real dynamic-loading path without a GPU: builds `cvm-gpu-evidence` and the `fake-nvml`
//! shared object dynamically linked (`-C target-feature=-crt-static`, the documented build),
//! runs the helper with `CVM_NVML_LIBRARY` pointing at the stand-in, drives the JSON-lines
//! protocol, and verifies the collected evidence with `nv-verify`.

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::OnceLock;

    use cvm_gpu_evidence::protocol::{Response, nvat_evidence};
    use nv_verify::evidence::{SerializedEvidence, parse_nvat_json};
    use nv_verify::policy::{GateDecision, GateInput, GpuPolicy};
    use nv_verify::{Failure, FixedRims, OcspMode, UnixTime, VerifyOptions, verify_gpu};

    const NONCE_545: &str = "4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e";
    const TARGET: &str = "x86_64-unknown-linux-gnu";

    fn workspace() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn vectors(path: &str) -> Vec<u8> {
        std::fs::read(workspace().join("measurements/gpu/testdata").join(path)).unwrap()
    }

    /// Builds both artifacts once per test binary; returns (helper, fake .so).
    fn artifacts() -> &'static (PathBuf, PathBuf) {
        static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
        BUILT.get_or_init(|| {
            let target_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dynamic");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(workspace())
                .args([
                    "build",
                    "--locked",
                    "-p",
                    "cvm-gpu-evidence",
                    "-p",
                    "fake-nvml",
                    "--target",
                    TARGET,
                    "--target-dir",
                ])
                .arg(&target_dir)
                .env(
                    "RUSTFLAGS",
                    "-C target-feature=-crt-static --cfg getrandom_backend=\"linux_getrandom\"",
                )
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .status()
                .unwrap();
            assert!(status.success(), "dynamic build failed");
            let out = target_dir.join(TARGET).join("debug");
            (out.join("cvm-gpu-evidence"), out.join("libfake_nvml.so"))
        })
    }

    /// PT_INTERP present ⇔ dynamically linked executable.
    fn has_interpreter(path: &Path) -> bool {
        let elf = std::fs::read(path).unwrap();
        assert_eq!(&elf[..4], b"\x7fELF");
        let u16_at = |o: usize| usize::from(u16::from_le_bytes([elf[o], elf[o + 1]]));
        let phoff =
            usize::try_from(u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap())).unwrap();
        let (size, count) = (u16_at(0x36), u16_at(0x38));
        (0..count).any(|i| {
            let at = phoff + i * size;
            u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == 3
        })
    }

    struct Helper {
        child: std::process::Child,
        stdout: BufReader<std::process::ChildStdout>,
    }

    impl Helper {
        fn start(library: &Path, evidence: &Path, sysfs: &Path, cc: &str) -> Self {
            let (helper, _) = artifacts();
            let mut child = Command::new(helper)
                .env("CVM_NVML_LIBRARY", library)
                .env("FAKE_NVML_EVIDENCE", evidence)
                .env("FAKE_NVML_CC", cc)
                .env("CVM_GPU_SYSFS", sysfs)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let stdout = BufReader::new(child.stdout.take().unwrap());
            Self { child, stdout }
        }

        fn ask(&mut self, request: &str) -> Response {
            let stdin = self.child.stdin.as_mut().unwrap();
            writeln!(stdin, "{request}").unwrap();
            stdin.flush().unwrap();
            let mut line = String::new();
            self.stdout.read_line(&mut line).unwrap();
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
        }

        fn quit(mut self) {
            assert!(self.ask(r#"{"op":"quit"}"#).ok);
            assert!(self.child.wait().unwrap().success());
        }
    }

    /// A recorded H100 (hopper_2023_545) as NVAT JSON, and a fake sysfs with one NVIDIA GPU.
    fn fixture(dir: &Path) -> (PathBuf, PathBuf) {
        let nonce: [u8; 32] = hex::decode(NONCE_545).unwrap().try_into().unwrap();
        let entry = SerializedEvidence::new(
            "HOPPER",
            &nonce,
            &vectors("hopper_2023_545/attestation_report.bin"),
            &vectors("hopper_2023_545/cert_chain.pem"),
        );
        let evidence = dir.join("evidence.json");
        std::fs::write(&evidence, serde_json::to_vec(&[entry]).unwrap()).unwrap();
        let device = dir.join("sys/bus/pci/devices/0000:41:00.0");
        std::fs::create_dir_all(&device).unwrap();
        std::fs::write(device.join("vendor"), "0x10de\n").unwrap();
        std::fs::write(device.join("class"), "0x030200\n").unwrap();
        (evidence, dir.join("sys"))
    }

    #[test]
    fn both_artifacts_are_dynamically_linked() {
        let (helper, library) = artifacts();
        assert!(has_interpreter(helper), "helper must not be static");
        assert!(library.exists());
    }

    #[test]
    fn collected_evidence_verifies_and_ready_is_set_only_when_told() {
        let (_, library) = artifacts();
        let dir = tempfile::tempdir().unwrap();
        let (evidence, sysfs) = fixture(dir.path());
        let mut helper = Helper::start(library, &evidence, &sysfs, "2,1,0,0");

        let state = helper.ask(r#"{"op":"state"}"#);
        assert!(state.ok, "{state:?}");
        assert_eq!(state.ready_state, Some(0));

        let collected = helper.ask(&format!(r#"{{"op":"collect","nonce":"{NONCE_545}"}}"#));
        assert!(collected.ok, "{collected:?}");
        assert_eq!(collected.driver_version.as_deref(), Some("545.00"));
        assert_eq!(collected.ready_state, Some(0), "collect never sets ready");
        let gpus = collected.gpus.clone().unwrap();
        assert_eq!(gpus.len(), 1);
        assert_eq!(gpus[0].nvml_architecture, 9);
        assert_eq!(gpus[0].nvat.arch, "HOPPER");
        assert_eq!(gpus[0].uuid, "GPU-fake-0");
        let pci = collected.pci.clone().unwrap();
        assert_eq!(pci.nvidia, vec!["0000:41:00.0"]);

        // What the init will do: verify every GPU, apply the policy, then set ready.
        let document = nvat_evidence(&gpus);
        let entries = parse_nvat_json(&document).unwrap();
        let nonce: [u8; 32] = hex::decode(NONCE_545).unwrap().try_into().unwrap();
        let rims = FixedRims {
            driver: Some(vectors(
                "hopper_2023_545/driver_rim_GH100_545.00_test.swidtag",
            )),
            vbios: Some(vectors(
                "hopper_2023_545/vbios_rim_1010_0200_882_96005E0001_test.swidtag",
            )),
        };
        let verdicts: Vec<_> = entries
            .iter()
            .map(|e| {
                verify_gpu(
                    &e.evidence,
                    &rims,
                    &VerifyOptions {
                        nonce,
                        now: UnixTime(1_717_200_000),
                        ocsp: OcspMode::Skip,
                    },
                )
            })
            .collect();
        assert_eq!(verdicts[0].failures, vec![]);
        let gate = GpuPolicy::strict().evaluate(
            &GateInput {
                pci_gpu_count: pci.nvidia.len(),
                foreign_display_devices: pci.refused(),
                cc_state: collected.cc_state,
            },
            &verdicts,
        );
        assert_eq!(gate.decision, GateDecision::Ready, "{:?}", gate.failures);

        let ready = helper.ask(r#"{"op":"set_ready"}"#);
        assert!(ready.ok, "{ready:?}");
        assert_eq!(ready.ready_state, Some(1));
        let cleared = helper.ask(r#"{"op":"set_not_ready"}"#);
        assert_eq!(cleared.ready_state, Some(0));
        helper.quit();
    }

    #[test]
    fn fresh_nonce_exposes_recorded_evidence_and_cc_off_closes_the_gate() {
        let (_, library) = artifacts();
        let dir = tempfile::tempdir().unwrap();
        let (evidence, sysfs) = fixture(dir.path());
        let mut helper = Helper::start(library, &evidence, &sysfs, "2,0,0,0");
        let fresh = "11".repeat(32);
        let collected = helper.ask(&format!(r#"{{"op":"collect","nonce":"{fresh}"}}"#));
        assert!(collected.ok, "{collected:?}");
        let entries = parse_nvat_json(&nvat_evidence(&collected.gpus.clone().unwrap())).unwrap();
        let verdict = verify_gpu(
            &entries[0].evidence,
            &FixedRims::default(),
            &VerifyOptions {
                nonce: [0x11; 32],
                now: UnixTime(1_717_200_000),
                ocsp: OcspMode::Skip,
            },
        );
        assert!(matches!(verdict.failures[0], Failure::CheckNonce { .. }));
        assert_eq!(collected.cc_state.unwrap().cc_feature, 0);
        let bad = helper.ask(r#"{"op":"collect","nonce":"abcd"}"#);
        assert!(!bad.ok);
        assert_eq!(
            bad.error.as_deref(),
            Some("nonce must be 64 hex digits (32 bytes)")
        );
        helper.quit();
    }

    #[test]
    fn missing_library_is_reported_per_request() {
        let dir = tempfile::tempdir().unwrap();
        let (evidence, sysfs) = fixture(dir.path());
        let mut helper = Helper::start(
            &dir.path().join("no-such-libnvidia-ml.so.1"),
            &evidence,
            &sysfs,
            "2,1,0,0",
        );
        let response = helper.ask(r#"{"op":"state"}"#);
        assert!(!response.ok);
        assert!(response.error.unwrap().starts_with("load "));
        helper.quit();
    }

    #[test]
    fn driver_not_loaded_is_an_nvml_error() {
        let (_, library) = artifacts();
        let dir = tempfile::tempdir().unwrap();
        let (_, sysfs) = fixture(dir.path());
        let mut helper = Helper::start(library, &dir.path().join("absent.json"), &sysfs, "2,1,0,0");
        let response = helper.ask(r#"{"op":"set_ready"}"#);
        assert!(!response.ok);
        assert_eq!(
            response.error.as_deref(),
            Some("nvmlInit_v2 failed with NVML error 9 (Driver Not Loaded)")
        );
        helper.quit();
    }
}
