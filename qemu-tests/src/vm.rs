//! `TestVm`: a builder for one QEMU (TCG, q35) boot, and `RunningVm`, its handle.
//!
//! Every VM gets its own temporary directory holding the console capture (`console.log`), the
//! results channel (`results.jsonl`), QEMU's stderr (`qemu.stderr`), the HMP monitor socket
//! (`monitor.sock`), the concatenated initrd and, for UEFI boots, its own copy of the OVMF
//! variable store. QEMU runs in its own process group, which is killed when the handle drops.
//! The drop also prints a report (command, console, results records, QEMU's stderr) to stderr:
//! by default always, which the test harness captures and shows only for failing tests (a test
//! that fails through `ensure!` does not panic, so "only on failure" could not catch it); with
//! [`ReportOnDrop::OnFailure`] only after a panic or a failed wait.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::artifacts::Artifacts;
use crate::cpio;
use crate::results::{Record, ResultsError, ResultsReader, events};

/// Kernel parameters every boot gets before the test's own: serial console, and reboot at once
/// on a panic (with `-no-reboot`, QEMU then exits instead of hanging until the timeout).
/// `no_timer_check`: under TCG on a loaded host the kernel's IO-APIC timer check can fail
/// ("IO-APIC + timer doesn't work") and panic the boot.
pub const BASE_CMDLINE: &str = "console=ttyS0 panic=-1 no_timer_check";

/// Name of the results port (ARCHITECTURE.md).
pub const RESULTS_PORT: &str = "cvm.results";

/// Environment variable: keep the per-VM temporary directories (their paths are printed).
pub const KEEP_TMP_ENV: &str = "QEMU_TESTS_KEEP_TMP";

/// Environment variable: the QEMU binary (default `qemu-system-x86_64`).
pub const QEMU_ENV: &str = "QEMU_TESTS_QEMU";

const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Longest Unix socket path (`sun_path` is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Errors starting or driving a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("no initrd given (use with_initrd)")]
    NoInitrd,
    #[error("failed to create a temporary directory")]
    CreateTempDir { source: io::Error },
    #[error("monitor socket path {path} is longer than {MAX_SOCKET_PATH} bytes (set TMPDIR)")]
    SocketPathTooLong { path: PathBuf },
    #[error("failed to prepare {path}")]
    Prepare { path: PathBuf, source: io::Error },
    #[error("failed to start {program}")]
    Spawn { program: String, source: io::Error },
    #[error("failed to wait for QEMU")]
    Wait { source: io::Error },
    #[error("failed to kill QEMU's process group {pgid}")]
    Kill { pgid: i32, source: nix::Error },
    #[error("timed out after {after:?} waiting for {what}; results so far: {seen}")]
    Timeout {
        what: String,
        after: Duration,
        seen: String,
    },
    #[error("QEMU exited ({status}) before {what}; results so far: {seen}")]
    ExitedBefore {
        what: String,
        status: String,
        seen: String,
    },
    #[error("failed to read the results channel")]
    Results { source: ResultsError },
    #[error("failed to talk to the QEMU monitor at {path}")]
    Monitor { path: PathBuf, source: io::Error },
}

/// When the drop of a [`RunningVm`] prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOnDrop {
    /// Always (the test harness shows captured output of failing tests only).
    Always,
    /// After a panic or a failed wait only (benchmarks, tools).
    OnFailure,
}

/// Builder for one QEMU boot. See the module documentation.
#[derive(Debug, Clone)]
pub struct TestVm<'a> {
    artifacts: &'a Artifacts,
    name: String,
    memory: String,
    cpus: u32,
    cmdline: Vec<String>,
    initrd: Option<PathBuf>,
    overlays: Vec<PathBuf>,
    ovmf: bool,
    results_port: String,
    extra_args: Vec<String>,
    report: ReportOnDrop,
}

impl<'a> TestVm<'a> {
    /// A VM with 512M, one vCPU, SeaBIOS, the pinned kernel and no initrd yet.
    pub fn new(artifacts: &'a Artifacts) -> Self {
        Self {
            artifacts,
            name: "vm".to_owned(),
            memory: "512M".to_owned(),
            cpus: 1,
            cmdline: Vec::new(),
            initrd: None,
            overlays: Vec::new(),
            ovmf: false,
            results_port: RESULTS_PORT.to_owned(),
            extra_args: Vec::new(),
            report: ReportOnDrop::Always,
        }
    }

    /// When the drop prints the VM's report (default [`ReportOnDrop::Always`]).
    #[must_use]
    pub fn with_report_on_drop(mut self, report: ReportOnDrop) -> Self {
        self.report = report;
        self
    }

    /// Names the VM (used as the prefix of its temporary directory and in failure output).
    #[must_use]
    pub fn with_name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.name);
        self
    }

    /// Guest memory in QEMU's `-m` syntax (`512M`, `2G`).
    #[must_use]
    pub fn with_memory(mut self, memory: &str) -> Self {
        memory.clone_into(&mut self.memory);
        self
    }

    /// Number of vCPUs (`-smp`).
    #[must_use]
    pub fn with_cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Appends kernel parameters (after [`BASE_CMDLINE`]); may be called repeatedly.
    #[must_use]
    pub fn with_cmdline(mut self, parameters: &str) -> Self {
        self.cmdline.push(parameters.to_owned());
        self
    }

    /// The initramfs to boot.
    #[must_use]
    pub fn with_initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.initrd = Some(path.into());
        self
    }

    /// An archive appended after the initrd; its entries replace the image's (see [`cpio`]).
    #[must_use]
    pub fn with_overlay(mut self, path: impl Into<PathBuf>) -> Self {
        self.overlays.push(path.into());
        self
    }

    /// Boot through OVMF (UEFI, pflash with a per-VM copy of the variable store) instead of
    /// QEMU's default SeaBIOS. Much slower under TCG; use only where the firmware matters.
    #[must_use]
    pub fn with_ovmf(mut self, ovmf: bool) -> Self {
        self.ovmf = ovmf;
        self
    }

    /// Name of the virtio-serial results port (default [`RESULTS_PORT`]).
    #[must_use]
    pub fn with_results_port(mut self, name: &str) -> Self {
        name.clone_into(&mut self.results_port);
        self
    }

    /// An extra raw QEMU argument.
    #[must_use]
    pub fn with_qemu_arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_owned());
        self
    }

    /// The kernel command line this VM boots with.
    pub fn kernel_cmdline(&self) -> String {
        let mut line = BASE_CMDLINE.to_owned();
        for part in &self.cmdline {
            line.push(' ');
            line.push_str(part);
        }
        line
    }

    /// Starts QEMU. The clock of [`RunningVm::spawned_at`] starts just before the spawn.
    ///
    /// QEMU gets SIGKILL when the *thread* that called `boot` exits (the parent-death signal
    /// follows the forking thread), so keep the VM on that thread.
    pub fn boot(self) -> Result<RunningVm, VmError> {
        let initrd = self.initrd.clone().ok_or(VmError::NoInitrd)?;
        let keep = std::env::var_os(KEEP_TMP_ENV).is_some();
        let tmp = tempfile::Builder::new()
            .prefix(&format!("qemu-{}-", self.name))
            .tempdir()
            .map_err(|source| VmError::CreateTempDir { source })?;
        let dir = tmp.path().to_path_buf();
        let monitor_path = dir.join("monitor.sock");
        if monitor_path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(VmError::SocketPathTooLong { path: monitor_path });
        }
        let results_path = dir.join("results.jsonl");
        let console_path = dir.join("console.log");
        let stderr_path = dir.join("qemu.stderr");

        let initrd = if self.overlays.is_empty() {
            initrd
        } else {
            let combined = dir.join("initrd.img");
            let mut parts = vec![initrd];
            parts.extend(self.overlays.iter().cloned());
            cpio::concat_initrds(&parts, &combined).map_err(|source| VmError::Prepare {
                path: combined.clone(),
                source,
            })?;
            combined
        };

        let qemu = std::env::var(QEMU_ENV).unwrap_or_else(|_| "qemu-system-x86_64".to_owned());
        // setpriv (util-linux) sets the parent-death signal and execs QEMU, which stays our
        // direct child: if this process dies without running the drop (a test runner's timeout
        // kills it), the kernel kills QEMU too.
        let mut command = Command::new("setpriv");
        command.args(["--pdeathsig", "KILL", "--", &qemu]);
        command.args(["-accel", "tcg", "-machine", "q35", "-cpu", "max"]);
        command.args(["-m", &self.memory, "-smp", &self.cpus.to_string()]);
        command.args(["-nographic", "-nodefaults", "-no-reboot"]);
        command.args(["-serial", "stdio"]);
        command.arg("-monitor").arg(format!(
            "unix:{},server=on,wait=off",
            option_value(&monitor_path)
        ));
        command.args(["-device", "virtio-serial-pci,id=virtio-serial0"]);
        command
            .arg("-chardev")
            .arg(format!("file,id=res,path={}", option_value(&results_path)));
        command.arg("-device").arg(format!(
            "virtserialport,bus=virtio-serial0.0,chardev=res,name={}",
            self.results_port
        ));
        if self.ovmf {
            let vars = dir.join("OVMF_VARS.fd");
            fs::copy(&self.artifacts.ovmf_vars, &vars).map_err(|source| VmError::Prepare {
                path: vars.clone(),
                source,
            })?;
            command.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                option_value(&self.artifacts.ovmf_code)
            ));
            command.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                option_value(&vars)
            ));
        }
        command.arg("-kernel").arg(&self.artifacts.kernel);
        command.arg("-initrd").arg(&initrd);
        command.arg("-append").arg(self.kernel_cmdline());
        command.args(&self.extra_args);

        let stderr = File::create(&stderr_path).map_err(|source| VmError::Prepare {
            path: stderr_path.clone(),
            source,
        })?;
        let console_file = File::create(&console_path).map_err(|source| VmError::Prepare {
            path: console_path.clone(),
            source,
        })?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .process_group(0);
        fs::write(dir.join("command.txt"), format!("{command:?}\n")).map_err(|source| {
            VmError::Prepare {
                path: dir.join("command.txt"),
                source,
            }
        })?;

        let spawned = Instant::now();
        let mut child = command.spawn().map_err(|source| VmError::Spawn {
            program: qemu.clone(),
            source,
        })?;
        let pgid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        let console = Arc::new(Console::default());
        let console_thread = child.stdout.take().map(|stdout| {
            let console = Arc::clone(&console);
            thread::spawn(move || console.capture(stdout, console_file))
        });

        Ok(RunningVm {
            name: self.name,
            child,
            pgid,
            tmp: Some(tmp),
            keep,
            dir,
            console,
            console_thread,
            results: ResultsReader::new(results_path),
            monitor_path,
            stderr_path,
            spawned,
            exit: None,
            failed: AtomicBool::new(false),
            report: self.report,
        })
    }
}

/// How QEMU ended.
#[derive(Debug, Clone, Copy)]
pub struct VmExit {
    /// QEMU's exit status.
    pub status: ExitStatus,
    /// Time from spawn to the exit (EOF on QEMU's stdout, or the poll that saw it).
    pub after: Duration,
}

impl VmExit {
    /// QEMU exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// Console capture shared with the reader thread.
#[derive(Debug, Default)]
struct Console {
    state: Mutex<ConsoleState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct ConsoleState {
    bytes: Vec<u8>,
    /// (end offset of a chunk, when it was read).
    chunks: Vec<(usize, Instant)>,
    /// When stdout reached EOF (QEMU exited).
    closed: Option<Instant>,
}

impl Console {
    fn capture(&self, mut stdout: impl Read, mut file: File) {
        let mut buffer = [0u8; 4096];
        loop {
            let read = stdout.read(&mut buffer).unwrap_or(0);
            let now = Instant::now();
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if read == 0 {
                state.closed = Some(now);
                drop(state);
                self.changed.notify_all();
                return;
            }
            let chunk = buffer.get(..read).unwrap_or_default();
            state.bytes.extend_from_slice(chunk);
            let end = state.bytes.len();
            state.chunks.push((end, now));
            drop(state);
            self.changed.notify_all();
            // The file is a convenience copy; losing it must not stop the capture.
            let _ = file.write_all(chunk);
        }
    }

    fn closed_at(&self) -> Option<Instant> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed
    }

    fn text(&self) -> String {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&state.bytes).into_owned()
    }

    /// Waits until `needle` appears; returns when the chunk completing it was read, or `None`
    /// on timeout or end of output (`Err(())` for the latter).
    fn wait_for(&self, needle: &str, deadline: Instant) -> Result<Option<Instant>, ()> {
        let needle = needle.as_bytes();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(start) = state
                .bytes
                .windows(needle.len().max(1))
                .position(|window| window == needle)
            {
                let end = start + needle.len();
                let at = state
                    .chunks
                    .iter()
                    .find(|(chunk_end, _)| *chunk_end >= end)
                    .map_or_else(Instant::now, |(_, at)| *at);
                return Ok(Some(at));
            }
            if state.closed.is_some() {
                return Err(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// A running (or finished) QEMU. Dropping it kills QEMU's process group.
#[derive(Debug)]
pub struct RunningVm {
    name: String,
    child: Child,
    pgid: i32,
    tmp: Option<tempfile::TempDir>,
    keep: bool,
    dir: PathBuf,
    console: Arc<Console>,
    console_thread: Option<JoinHandle<()>>,
    results: ResultsReader,
    monitor_path: PathBuf,
    stderr_path: PathBuf,
    spawned: Instant,
    exit: Option<VmExit>,
    failed: AtomicBool,
    report: ReportOnDrop,
}

impl RunningVm {
    /// When QEMU was spawned.
    pub fn spawned_at(&self) -> Instant {
        self.spawned
    }

    /// QEMU's process group (its pid).
    pub fn process_group(&self) -> i32 {
        self.pgid
    }

    /// The VM's temporary directory.
    pub fn tmpdir(&self) -> &Path {
        &self.dir
    }

    /// Marks the VM as failed so that the drop prints the console and the records.
    pub fn mark_failed(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    fn fail<T>(&self, error: VmError) -> Result<T, VmError> {
        self.mark_failed();
        Err(error)
    }

    /// Everything QEMU printed on the serial console so far.
    pub fn console(&self) -> String {
        self.console.text()
    }

    /// QEMU's stderr so far.
    pub fn qemu_stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The console shows the kernel's power-off message (`reboot: Power down`).
    pub fn console_shows_power_off(&self) -> bool {
        self.console().contains("reboot: Power down")
    }

    /// The console shows a kernel panic (with `panic=-1` QEMU then exits on its own).
    pub fn console_shows_panic(&self) -> bool {
        self.console().contains("Kernel panic")
    }

    /// Reads new results lines; returns all records so far.
    pub fn records(&mut self) -> Result<Vec<Record>, VmError> {
        match self.results.poll() {
            Ok(records) => Ok(records.to_vec()),
            Err(source) => self.fail(VmError::Results { source }),
        }
    }

    fn seen(&self) -> String {
        let mut seen = events(self.results.records()).join(",");
        let pending = self.results.pending();
        if !pending.is_empty() {
            let _ = write!(seen, " (unterminated: {pending})");
        }
        if seen.is_empty() {
            "none".to_owned()
        } else {
            seen
        }
    }

    /// Polls QEMU without blocking; records the exit if it happened.
    pub fn try_exit(&mut self) -> Result<Option<VmExit>, VmError> {
        if self.exit.is_none() {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    let observed = Instant::now();
                    self.join_console();
                    // EOF on stdout is a closer estimate of the exit than this poll.
                    let at = self
                        .console
                        .closed_at()
                        .map_or(observed, |eof| eof.min(observed));
                    self.exit = Some(VmExit {
                        status,
                        after: at - self.spawned,
                    });
                }
                Ok(None) => {}
                Err(source) => return self.fail(VmError::Wait { source }),
            }
        }
        Ok(self.exit)
    }

    /// Waits until a record satisfying `matches` arrives, and returns it. Fails on timeout or
    /// if QEMU exits first.
    pub fn wait_for_record(
        &mut self,
        what: &str,
        timeout: Duration,
        mut matches: impl FnMut(&Record) -> bool,
    ) -> Result<Record, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.try_exit()?;
            let records = self.records()?;
            if let Some(record) = records.into_iter().find(|record| matches(record)) {
                return Ok(record);
            }
            if let Some(exit) = exited {
                let error = VmError::ExitedBefore {
                    what: what.to_owned(),
                    status: exit.status.to_string(),
                    seen: self.seen(),
                };
                return self.fail(error);
            }
            if Instant::now() >= deadline {
                let error = VmError::Timeout {
                    what: what.to_owned(),
                    after: timeout,
                    seen: self.seen(),
                };
                return self.fail(error);
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits for the simulated TEE's per-boot root (`insecure_simulated_root` record) and
    /// writes its PEM to `path`, where a test KMS (`QuoteTrust::RootFile`) reads it.
    pub fn hand_simulated_root_to(
        &mut self,
        path: &Path,
        timeout: Duration,
    ) -> Result<(), VmError> {
        let record = self.wait_for_event("insecure_simulated_root", timeout)?;
        let pem = match &record {
            Record::Other { line, .. } => serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["pem"].as_str().map(str::to_owned)),
            _ => None,
        }
        .unwrap_or_default();
        std::fs::write(path, pem).map_err(|source| VmError::Prepare {
            path: path.to_owned(),
            source,
        })
    }

    /// Waits for the first record with the given `event` name (e.g. `"ready"`).
    pub fn wait_for_event(&mut self, event: &str, timeout: Duration) -> Result<Record, VmError> {
        self.wait_for_record(&format!("event {event:?}"), timeout, |record| {
            record.event() == event
        })
    }

    /// Waits for `needle` on the serial console and returns when the chunk containing it was
    /// read (for timing; tests should use the results channel instead).
    pub fn wait_for_console(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Result<Instant, VmError> {
        let what = format!("console {needle:?}");
        match self.console.wait_for(needle, Instant::now() + timeout) {
            Ok(Some(at)) => Ok(at),
            Ok(None) => {
                // Best effort: the records only make the message more useful.
                let _ = self.results.poll();
                let seen = self.seen();
                self.fail(VmError::Timeout {
                    what,
                    after: timeout,
                    seen,
                })
            }
            Err(()) => {
                // The console closes when QEMU exits; give it a moment to be reaped.
                let status = self.wait_for_exit(Duration::from_secs(5)).map_or_else(
                    |_| "console closed".to_owned(),
                    |exit| exit.status.to_string(),
                );
                let _ = self.results.poll();
                let seen = self.seen();
                self.fail(VmError::ExitedBefore { what, status, seen })
            }
        }
    }

    /// Waits for QEMU to exit on its own; fails (and the drop kills it) after `timeout`.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Result<VmExit, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.try_exit()? {
                // Final read so that records() sees everything QEMU flushed.
                self.records()?;
                return Ok(exit);
            }
            if Instant::now() >= deadline {
                let error = VmError::Timeout {
                    what: "QEMU to exit".to_owned(),
                    after: timeout,
                    seen: self.seen(),
                };
                return self.fail(error);
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Sends one HMP monitor command and returns its output.
    pub fn monitor(&self, command: &str) -> Result<String, VmError> {
        match hmp(&self.monitor_path, command) {
            Ok(output) => Ok(output),
            Err(source) => self.fail(VmError::Monitor {
                path: self.monitor_path.clone(),
                source,
            }),
        }
    }

    /// Presses the ACPI power button (`system_powerdown`).
    pub fn system_powerdown(&self) -> Result<(), VmError> {
        self.monitor("system_powerdown").map(drop)
    }

    /// Sends ctrl-alt-delete on the PS/2 keyboard (`sendkey ctrl-alt-delete`); the kernel turns
    /// it into SIGINT for PID 1 once PID 1 disabled the reboot-on-CAD default.
    pub fn send_ctrl_alt_delete(&self) -> Result<(), VmError> {
        self.monitor("sendkey ctrl-alt-delete").map(drop)
    }

    /// Kills QEMU's process group now (idempotent once it exited).
    pub fn kill(&mut self) -> Result<(), VmError> {
        if self.try_exit()?.is_some() {
            return Ok(());
        }
        if let Err(source) = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL) {
            return self.fail(VmError::Kill {
                pgid: self.pgid,
                source,
            });
        }
        match self.child.wait() {
            Ok(status) => {
                self.exit = Some(VmExit {
                    status,
                    after: self.spawned.elapsed(),
                });
                self.join_console();
                Ok(())
            }
            Err(source) => self.fail(VmError::Wait { source }),
        }
    }

    fn join_console(&mut self) {
        if let Some(handle) = self.console_thread.take() {
            // The thread only ends at EOF; a panic in it has nothing to report.
            let _ = handle.join();
        }
    }

    /// The failure report the drop prints: command, console, records, QEMU's stderr.
    pub fn report(&mut self) -> String {
        let records = self.records().unwrap_or_default();
        let mut out = String::new();
        let _ = writeln!(out, "===== VM {} ({}) =====", self.name, self.dir.display());
        let command = fs::read_to_string(self.dir.join("command.txt")).unwrap_or_default();
        let _ = writeln!(out, "--- command\n{}", command.trim_end());
        let _ = writeln!(out, "--- console\n{}", self.console().trim_end());
        let _ = writeln!(out, "--- results ({} records)", records.len());
        for record in &records {
            let _ = writeln!(out, "{record:?}");
        }
        let pending = self.results.pending();
        if !pending.is_empty() {
            let _ = writeln!(out, "(unterminated) {pending}");
        }
        let _ = writeln!(out, "--- qemu stderr\n{}", self.qemu_stderr().trim_end());
        let _ = writeln!(out, "--- exit: {:?}", self.exit.map(|exit| exit.status));
        out
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if self.exit.is_none() {
            // Best effort: the group may already be gone.
            let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
            if let Ok(status) = self.child.wait() {
                self.exit = Some(VmExit {
                    status,
                    after: self.spawned.elapsed(),
                });
            }
        }
        self.join_console();
        if self.report == ReportOnDrop::Always
            || thread::panicking()
            || self.failed.load(Ordering::Relaxed)
        {
            let report = self.report();
            eprintln!("{report}");
        }
        if self.keep
            && let Some(tmp) = self.tmp.take()
        {
            let kept = tmp.keep();
            eprintln!("kept VM directory {}", kept.display());
        }
    }
}

/// A path as the value of a QEMU `key=value,...` option: commas doubled.
fn option_value(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// One HMP exchange: connect, read the banner up to the prompt, send, read up to the prompt.
fn hmp(path: &Path, command: &str) -> io::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match UnixStream::connect(path) {
            Ok(stream) => break stream,
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                thread::sleep(Duration::from_millis(50));
            }
            Err(error) => return Err(error),
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    read_until_prompt(&mut stream)?;
    stream.write_all(command.as_bytes())?;
    stream.write_all(b"\n")?;
    let output = read_until_prompt(&mut stream)?;
    Ok(output
        .strip_suffix("(qemu) ")
        .unwrap_or(&output)
        .trim()
        .to_owned())
}

fn read_until_prompt(stream: &mut UnixStream) -> io::Result<String> {
    let mut collected = Vec::new();
    let mut buffer = [0u8; 1024];
    while !collected.ends_with(b"(qemu) ") {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "monitor closed",
            ));
        }
        collected.extend_from_slice(buffer.get(..read).unwrap_or_default());
    }
    Ok(String::from_utf8_lossy(&collected).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_artifacts() -> Artifacts {
        Artifacts {
            kernel: PathBuf::from("/k/vmlinuz"),
            kernel_config: PathBuf::from("/k/config"),
            module_tree: PathBuf::from("/k/lib/modules/6.1.0-50-cloud-amd64"),
            kernel_release: "6.1.0-50-cloud-amd64".to_owned(),
            ovmf_code: PathBuf::from("/o/code.fd"),
            ovmf_vars: PathBuf::from("/o/vars.fd"),
            busybox: PathBuf::from("/b/busybox"),
        }
    }

    #[test]
    fn cmdline_appends_to_the_base() {
        let artifacts = fake_artifacts();
        let vm = TestVm::new(&artifacts)
            .with_cmdline("cvm.on_ready=poweroff")
            .with_cmdline("cvm.log=debug");
        assert_eq!(
            vm.kernel_cmdline(),
            "console=ttyS0 panic=-1 no_timer_check cvm.on_ready=poweroff cvm.log=debug"
        );
    }

    #[test]
    fn boot_without_initrd_is_an_error() {
        let artifacts = fake_artifacts();
        assert!(matches!(
            TestVm::new(&artifacts).boot(),
            Err(VmError::NoInitrd)
        ));
    }

    #[test]
    fn option_values_double_commas() {
        assert_eq!(option_value(Path::new("/tmp/a,b/c")), "/tmp/a,,b/c");
    }
}
