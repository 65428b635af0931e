//! Records of the results channel: one JSON object per line on the `cvm.results` virtio-serial
//! port. The QEMU harness reads these instead of scraping the console.

use serde::{Deserialize, Serialize};

use crate::plan::Stage;

/// One results-channel record. `mono_us` is `CLOCK_MONOTONIC` in microseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Record {
    Boot {
        version: String,
        mono_us: u64,
    },
    StageStarted {
        stage: Stage,
        mono_us: u64,
    },
    StageFinished {
        stage: Stage,
        mono_us: u64,
        duration_us: u64,
    },
    /// The identity measured into RTMR3 and the register's value after `system-ready`, as
    /// replayed from the event log and as read back from a fresh quote.
    Measured {
        tee: String,
        app_id: String,
        compose_hash: String,
        instance_id: String,
        rtmr3: String,
        quote_rtmr3: String,
        events: u32,
        mono_us: u64,
    },
    /// The network stage's outcome: the lease applied to `interface` (`address` is
    /// `a.b.c.d/len`), or `interface` = "none" when the VM has no Ethernet interface.
    Network {
        interface: String,
        address: String,
        gateway: String,
        dns: Vec<String>,
        mono_us: u64,
    },
    /// The data disk stage's outcome: the decrypted volume mounted at `mount_point`, or
    /// `device` = "none" when the VM has no data disk.
    Disk {
        device: String,
        mount_point: String,
        formatted: bool,
        /// `none`, `blank` (a new disk) or `again` (formatted again under
        /// `allow_disk_reformat`).
        format: String,
        data_bytes: u64,
        mono_us: u64,
    },
    /// The workloads stage's outcome: the services launched (start order), where the image
    /// store is (`persistent`: on the encrypted data disk, else a tmpfs under /run), and
    /// `skipped` (empty, or why no container was started).
    Workloads {
        services: Vec<String>,
        store: String,
        persistent: bool,
        skipped: String,
        mono_us: u64,
    },
    /// A container's state change (`cvm_workload::supervisor::UnitState::name`): `code` is the
    /// last exit code (0 before any exit), `pid` the container init's pid (0 when none),
    /// `detail` a failure reason.
    Container {
        service: String,
        state: String,
        code: i32,
        pid: i32,
        restarts: u32,
        detail: String,
        mono_us: u64,
    },
    /// Test builds only (`cvm.test_disk`): one probe on the mounted data disk; `error` is
    /// empty on success.
    TestDisk {
        op: String,
        detail: String,
        error: String,
        mono_us: u64,
    },
    /// INSECURE simulated-TEE builds only: the per-boot PCK root (PEM) that signs this boot's
    /// quotes, published before any quote leaves the VM so a test KMS can trust it.
    InsecureSimulatedRoot {
        pem: String,
        mono_us: u64,
    },
    /// The GPU driver extension (inside `measure`, before the GPU gate): the dm-verity root
    /// hash from `cvm.gpu_driver`, the disk it opened, and the files and bytes of the tree
    /// read back in full through dm-verity after the read-only mount.
    GpuDriver {
        root_hash: String,
        device: String,
        mount_point: String,
        files: u64,
        bytes: u64,
        mono_us: u64,
    },
    /// The GPU gate (inside `measure`): NVIDIA GPUs found, whether their ready state was set
    /// after a verified pass, and the `gpu-policy-hash` extended.
    Gpu {
        gpus: u32,
        ready: bool,
        policy_hash: String,
        mono_us: u64,
    },
    /// The keys stage: the key provider used, the KMS that answered and its root key id
    /// (hex SPKI), the environment variable names accepted (never values), and the MRCONFIGID
    /// version checked.
    Keys {
        provider: String,
        kms_url: String,
        key_provider_id: String,
        env_names: Vec<String>,
        mr_config_version: u8,
        mono_us: u64,
    },
    Ready {
        mono_us: u64,
    },
    /// A supervised process of PID 1 (the guest API) exited and is restarted after `delay_ms`.
    Restarting {
        service: String,
        pid: i32,
        status: i32,
        restarts: u32,
        delay_ms: u64,
        mono_us: u64,
    },
    /// A supervised process was started again.
    Restarted {
        service: String,
        pid: u32,
        mono_us: u64,
    },
    /// Test builds only (`cvm.test_dump`): a file copied out of the guest, hex-encoded, or
    /// (`container-log-sha256:<service>`) the SHA-256 of a container log, never its bytes.
    TestDump {
        name: String,
        hex: String,
        mono_us: u64,
    },
    Fatal {
        stage: Stage,
        error: String,
        chain: Vec<String>,
        mono_us: u64,
    },
    Shutdown {
        reason: String,
        mono_us: u64,
    },
    Reaped {
        zombies_left: u32,
        children_stopped: u32,
        mono_us: u64,
    },
    PowerOff {
        mono_us: u64,
    },
}

impl Record {
    /// The record as one JSON line, newline included.
    pub fn to_line(&self) -> String {
        // Serialising this enum of strings and integers cannot fail; fall back to a fixed
        // record rather than panicking.
        let mut line = serde_json::to_string(self)
            .unwrap_or_else(|_| String::from(r#"{"event":"encode_failed"}"#));
        line.push('\n');
        line
    }
}

/// A bounded buffer for records produced before the port exists.
#[derive(Debug, Default)]
pub struct Backlog {
    lines: Vec<String>,
    dropped: usize,
}

/// Records kept before the port opens; the boot before it is short, so this is generous.
pub const BACKLOG_CAPACITY: usize = 256;

impl Backlog {
    pub fn push(&mut self, record: &Record) {
        if self.lines.len() < BACKLOG_CAPACITY {
            self.lines.push(record.to_line());
        } else {
            self.dropped += 1;
        }
    }

    /// Take the buffered lines, oldest first, and how many were dropped.
    pub fn drain(&mut self) -> (Vec<String>, usize) {
        (
            std::mem::take(&mut self.lines),
            std::mem::take(&mut self.dropped),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_have_the_documented_shape() {
        let r = Record::StageFinished {
            stage: Stage::Mount,
            mono_us: 10,
            duration_us: 3,
        };
        assert_eq!(
            r.to_line(),
            "{\"event\":\"stage_finished\",\"stage\":\"mount\",\"mono_us\":10,\"duration_us\":3}\n"
        );
        let f = Record::Fatal {
            stage: Stage::Cmdline,
            error: "a: b".into(),
            chain: vec!["a".into(), "b".into()],
            mono_us: 1,
        };
        let back: Record = serde_json::from_str(f.to_line().trim_end()).unwrap();
        assert_eq!(back, f);
        assert!(PowerOffLine::is(&Record::PowerOff { mono_us: 5 }.to_line()));
    }

    struct PowerOffLine;
    impl PowerOffLine {
        fn is(line: &str) -> bool {
            line == "{\"event\":\"power_off\",\"mono_us\":5}\n"
        }
    }

    #[test]
    fn backlog_is_bounded() {
        let mut b = Backlog::default();
        for i in 0..(BACKLOG_CAPACITY + 3) {
            b.push(&Record::Ready { mono_us: i as u64 });
        }
        let (lines, dropped) = b.drain();
        assert_eq!(lines.len(), BACKLOG_CAPACITY);
        assert_eq!(dropped, 3);
        assert!(lines[0].contains("\"mono_us\":0"));
        assert_eq!(b.drain().0.len(), 0);
    }
}
