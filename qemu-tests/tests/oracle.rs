//! Measured-boot oracle (`shared/specs/measured-boot-oracle.md`): OVMF + swtpm + the pinned Debian
//! kernel + the cvm-init image under QEMU TCG. The firmware and the kernel's EFI stub log the
//! direct-boot events (kernel image, command line, initrd) through the TPM path; the init copies
//! `binary_bios_measurements` onto the results channel (`cvm.test_dump=tpm-event-log`), and each
//! logged digest must equal what `measure` predicts from the same input files: the kernel's
//! Authenticode after QEMU's setup-header edits, the command line widened to 16 bits with
//! `" initrd=initrd"`, and the initrd's hash. Two RAM sizes × two command lines.
//!
//! The vTPM has the SHA-256 and SHA-384 banks (`swtpm_setup --pcr-banks sha256,sha384`): SHA-384
//! is compared with `measure::expected`'s RTMR1/RTMR2 events as they are, SHA-256 with the same
//! preimages (the PCR bank the method was established with).
//!
//! Host packages: `swtpm`, `swtpm-tools` (the test fails, naming them, when they are missing).
#![cfg(any(feature = "qemu", qemu_testenv, clippy))]

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::thread;
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result, bail, ensure};
    use measure::event_log::{EventLog, TPM_ALG_SHA256, TPM_ALG_SHA384, TcgEvent};
    use measure::expected::{self, EV_EFI_BOOT_SERVICES_APPLICATION, EV_EVENT_TAG};
    use measure::kernel::{self, DirectBootParams};
    use qemu_tests::{CvmSetup, Record};
    use sha2::{Digest, Sha256};

    /// OVMF under TCG is slow, more so with four VMs on a shared machine.
    const OVMF_TIMEOUT: Duration = Duration::from_secs(480);
    /// The init's own parameters: dump the TPM log before `ready`, then power off.
    const ORACLE_CMDLINE: &str = "cvm.on_ready=poweroff cvm.test_dump=tpm-event-log";
    /// A second command line: the same behaviour, other bytes, one of them not ASCII (OVMF widens
    /// each byte of the UTF-8 `é` to its own CHAR16; a dotted unknown parameter is ignored by the
    /// kernel and by the init).
    const OTHER_CMDLINE: &str = "cvm.results=cvm.results oracle.note=caf\u{e9}";

    /// EV_EVENT_TAG ids the Linux EFI stub uses (PCR9).
    const TAG_LOAD_OPTIONS: u32 = 0x8F3B_22ED;
    const TAG_INITRD: u32 = 0x8F3B_22EC;

    /// A running swtpm with a fresh state directory; killed on drop.
    struct Swtpm {
        child: Child,
        socket: PathBuf,
        _dir: tempfile::TempDir,
    }

    impl Swtpm {
        fn start() -> Result<Self> {
            let dir = tempfile::Builder::new().prefix("swtpm-").tempdir()?;
            let state = dir.path().join("state");
            std::fs::create_dir(&state)?;
            let setup = Command::new("swtpm_setup")
                .args(["--tpm2", "--pcr-banks", "sha256,sha384", "--tpmstate"])
                .arg(&state)
                .output()
                .context("run swtpm_setup (install the Debian packages swtpm and swtpm-tools)")?;
            ensure!(
                setup.status.success(),
                "swtpm_setup failed: {}{}",
                String::from_utf8_lossy(&setup.stdout),
                String::from_utf8_lossy(&setup.stderr)
            );
            let socket = dir.path().join("swtpm.sock");
            let child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--terminate", "--tpmstate"])
                .arg(format!("dir={}", state.display()))
                .arg("--ctrl")
                .arg(format!("type=unixio,path={}", socket.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("start swtpm (install the Debian package swtpm)")?;
            let mut swtpm = Self {
                child,
                socket,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while !swtpm.socket.exists() {
                if let Some(status) = swtpm.child.try_wait()? {
                    bail!("swtpm exited before creating its socket: {status}");
                }
                ensure!(Instant::now() < deadline, "swtpm did not create its socket");
                thread::sleep(Duration::from_millis(20));
            }
            Ok(swtpm)
        }
    }

    impl Drop for Swtpm {
        fn drop(&mut self) {
            // Best effort: with --terminate it usually exited when QEMU disconnected.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Parses the "tpm-event-log" test_dump record out of the results.
    fn dumped_log(records: &[Record]) -> Result<Vec<u8>> {
        for record in records {
            if let Record::Other { event, line } = record
                && event == "test_dump"
            {
                let value: serde_json::Value = serde_json::from_str(line)?;
                if value.get("name").and_then(serde_json::Value::as_str) == Some("tpm-event-log") {
                    let text = value
                        .get("hex")
                        .and_then(serde_json::Value::as_str)
                        .context("test_dump record has no hex")?;
                    return hex::decode(text).context("decode the dumped log");
                }
            }
        }
        bail!("no test_dump record named tpm-event-log")
    }

    fn digest(event: &TcgEvent, alg_id: u16) -> Result<&[u8]> {
        event
            .digests
            .iter()
            .find(|d| d.alg_id == alg_id)
            .map(|d| d.digest.as_slice())
            .with_context(|| format!("event at {:#x} has no digest {alg_id:#06x}", event.offset))
    }

    fn tag(event: &TcgEvent) -> Option<u32> {
        let bytes = event.event_data.get(..4)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?))
    }

    /// The one event matching `pick`, in `pcr`.
    fn single<'a>(
        log: &'a EventLog,
        what: &str,
        pcr: u32,
        pick: impl Fn(&TcgEvent) -> bool,
    ) -> Result<&'a TcgEvent> {
        let found: Vec<&TcgEvent> = log.events.iter().filter(|e| pick(e)).collect();
        match found.as_slice() {
            [event] if event.mr_index == pcr => Ok(event),
            [event] => bail!("{what} logged in PCR{}, expected PCR{pcr}", event.mr_index),
            _ => bail!("{} {what} events in the log", found.len()),
        }
    }

    fn memory_bytes(memory: &str) -> Result<u64> {
        let (digits, shift) = match memory.strip_suffix('G') {
            Some(digits) => (digits, 30),
            None => (memory.strip_suffix('M').context("memory in M or G")?, 20),
        };
        Ok(digits.parse::<u64>()? << shift)
    }

    fn sha256(bytes: &[u8]) -> Vec<u8> {
        Sha256::digest(bytes).to_vec()
    }

    /// Digests of one boot, as logged and as predicted.
    #[derive(Debug, PartialEq)]
    struct Digests {
        kernel: Vec<u8>,
        cmdline: Vec<u8>,
        initrd: Vec<u8>,
    }

    /// Boots once and checks the three events in both banks; returns the SHA-384 digests.
    fn oracle(name: &str, memory: &str, extra_cmdline: Option<&str>) -> Result<Digests> {
        let setup = CvmSetup::new()?;
        let swtpm = Swtpm::start()?;
        let mut vm = setup
            .vm(name)
            .with_ovmf(true)
            .with_memory(memory)
            .with_cmdline(ORACLE_CMDLINE)
            .with_qemu_arg("-chardev")
            .with_qemu_arg(&format!(
                "socket,id=chrtpm,path={}",
                swtpm.socket.display().to_string().replace(',', ",,")
            ))
            .with_qemu_arg("-tpmdev")
            .with_qemu_arg("emulator,id=tpm0,chardev=chrtpm")
            .with_qemu_arg("-device")
            .with_qemu_arg("tpm-tis,tpmdev=tpm0");
        if let Some(extra) = extra_cmdline {
            vm = vm.with_cmdline(extra);
        }
        let cmdline = vm.kernel_cmdline();
        let mut vm = vm.boot()?;
        vm.wait_for_event("ready", OVMF_TIMEOUT)?;
        let exit = vm.wait_for_exit(OVMF_TIMEOUT)?;
        ensure!(exit.success(), "QEMU exit status {:?}", exit.status);
        let records = vm.records()?;
        ensure!(
            records.iter().all(|r| r.event() != "fatal"),
            "fatal record: {records:?}"
        );
        let log_bytes = dumped_log(&records)?;
        let log = EventLog::parse(&log_bytes).context("parse the guest's TPM event log")?;
        let banks: Vec<u16> = log.spec_id.algorithms.iter().map(|a| a.alg_id).collect();
        ensure!(
            banks == [TPM_ALG_SHA256, TPM_ALG_SHA384],
            "log banks {banks:04x?}, expected sha256 and sha384"
        );

        let kernel_file = std::fs::read(&setup.artifacts.kernel)?;
        let initrd_file = std::fs::read(&setup.image.initramfs)?;
        let params = DirectBootParams::q35(
            memory_bytes(memory)?,
            Some(initrd_file.len() as u64),
            cmdline.clone(),
        );

        // Prediction: measure's expected RTMR1/RTMR2 events for the same inputs.
        let kernel_sha384 = kernel::kernel_measurement(&kernel_file, &params)?;
        let rtmr1 = expected::rtmr1(kernel_sha384);
        let rtmr2 = expected::rtmr2(cmdline.as_bytes(), Some(&initrd_file));
        let predicted = Digests {
            kernel: rtmr1.events[0].digest.as_bytes().to_vec(),
            cmdline: rtmr2.events[0].digest.as_bytes().to_vec(),
            initrd: rtmr2.events[1].digest.as_bytes().to_vec(),
        };
        // The same preimages in the SHA-256 bank.
        let patched = kernel::patch_setup_header(&kernel_file, &params)?;
        let predicted_sha256 = Digests {
            kernel: kernel::authenticode_sha256(&patched)?.to_vec(),
            cmdline: sha256(&expected::load_options(cmdline.as_bytes(), true)),
            initrd: sha256(&initrd_file),
        };

        let kernel_event = single(&log, "kernel image", 4, |e| {
            e.event_type == EV_EFI_BOOT_SERVICES_APPLICATION
        })?;
        let cmdline_event = single(&log, "LoadOptions", 9, |e| {
            e.event_type == EV_EVENT_TAG && tag(e) == Some(TAG_LOAD_OPTIONS)
        })?;
        let initrd_event = single(&log, "Linux initrd", 9, |e| {
            e.event_type == EV_EVENT_TAG && tag(e) == Some(TAG_INITRD)
        })?;
        // ImageLengthInMemory (u64 after the u64 location) is the file size.
        ensure!(
            kernel_event.event_data.get(8..16)
                == Some(&(kernel_file.len() as u64).to_le_bytes()[..]),
            "kernel event length is not the file size"
        );

        for (bank, alg, want) in [
            ("sha384", TPM_ALG_SHA384, &predicted),
            ("sha256", TPM_ALG_SHA256, &predicted_sha256),
        ] {
            let logged = Digests {
                kernel: digest(kernel_event, alg)?.to_vec(),
                cmdline: digest(cmdline_event, alg)?.to_vec(),
                initrd: digest(initrd_event, alg)?.to_vec(),
            };
            ensure!(
                logged == *want,
                "{name} ({memory}, {cmdline:?}) {bank}: logged {} predicted {}",
                show(&logged),
                show(want)
            );
        }
        eprintln!(
            "oracle {name}: {memory}, {cmdline:?}: kernel, cmdline, initrd match ({})",
            show(&predicted)
        );
        drop(vm);
        drop(swtpm);
        Ok(predicted)
    }

    fn show(d: &Digests) -> String {
        format!(
            "kernel {} cmdline {} initrd {}",
            hex::encode(&d.kernel),
            hex::encode(&d.cmdline),
            hex::encode(&d.initrd)
        )
    }

    /// 512M and 2G differ in QEMU's below-4G RAM, so the kernel's setup header (ramdisk_image)
    /// and its digest differ; the two command lines differ in the LoadOptions digest only.
    #[test]
    fn direct_boot_digests_match_the_firmware_log() -> Result<()> {
        let cases = [
            ("oracle-512m-a", "512M", None),
            ("oracle-2g-a", "2G", None),
            ("oracle-512m-b", "512M", Some(OTHER_CMDLINE)),
            ("oracle-2g-b", "2G", Some(OTHER_CMDLINE)),
        ];
        // Two VMs at a time: each stays on the thread that booted it.
        let mut results = Vec::new();
        for pair in cases.chunks(2) {
            let handles: Vec<_> = pair
                .iter()
                .map(|&(name, memory, extra)| thread::spawn(move || oracle(name, memory, extra)))
                .collect();
            for handle in handles {
                results.push(
                    handle
                        .join()
                        .map_err(|_| anyhow::anyhow!("oracle thread panicked"))??,
                );
            }
        }
        let [small_a, big_a, small_b, big_b] = <[Digests; 4]>::try_from(results)
            .map_err(|_| anyhow::anyhow!("expected four results"))?;
        ensure!(
            small_a.kernel != big_a.kernel,
            "RAM size did not change the kernel digest"
        );
        ensure!(
            small_a.kernel == small_b.kernel && big_a.kernel == big_b.kernel,
            "the command line changed the kernel digest"
        );
        ensure!(
            small_a.cmdline == big_a.cmdline && small_a.cmdline != small_b.cmdline,
            "command-line digests do not follow the command line"
        );
        ensure!(
            [&big_a, &small_b, &big_b]
                .iter()
                .all(|d| d.initrd == small_a.initrd),
            "initrd digest changed between boots of the same image"
        );
        Ok(())
    }

    #[test]
    fn memory_sizes_parse() -> Result<()> {
        assert_eq!(memory_bytes("512M")?, 512 << 20);
        assert_eq!(memory_bytes("2G")?, 2 << 30);
        Ok(())
    }
}
