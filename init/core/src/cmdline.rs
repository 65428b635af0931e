//! Configuration from the kernel command line: `cvm.*` keys only. Unknown `cvm.*` keys are an
//! error (a typo must not silently change behaviour); other parameters belong to the kernel.
//! The command line is measured but public: it never carries secrets.

use std::fmt;

/// What PID 1 does after the boot plan finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReady {
    /// Stay up: reap, serve, and wait for a shutdown request (production).
    Wait,
    /// Shut down in order right away (tests, benchmarks).
    PowerOff,
}

/// Console and kmsg verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// A fault injected by tests (only accepted when test hooks are compiled in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestFault {
    /// Mount this target with a filesystem type that does not exist.
    Mount { target: String },
    /// Once PID 1 serves, SIGKILL the guest API process (its restart is under test).
    KillGuestApi,
    /// `gateway-refresher`: the gateway client certificate is valid for
    /// [`crate::gateway::TEST_CERT_VALIDITY_SECS`] only (so the refresher's first round renews
    /// it), and the first gateway refresher exits after its first successful round (its
    /// restart by PID 1 is under test).
    GatewayRefresher,
}

/// A fake NVIDIA GPU for QEMU boots (only accepted when test hooks are compiled in): the
/// init makes a fake PCI function and `/dev/nvidia*` nodes and answers the gate from the
/// recorded public evidence in the test image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestGpu {
    /// The fake GPU, its recorded evidence verified under the recorded nonce and time: passes.
    Pass,
    /// The same evidence under a fresh nonce: the replay is refused, the boot stops.
    Replay,
    /// A `/dev/nvidia0` node and no GPU on the PCI bus: nothing is attested, the boot stops.
    NodeOnly,
}

/// Whether the binary was built with `insecure-test-hooks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestHooks {
    Disabled,
    Enabled,
}

impl TestHooks {
    /// The setting this build of the crate was compiled with.
    pub const fn compiled() -> Self {
        if cfg!(feature = "insecure-test-hooks") {
            Self::Enabled
        } else {
            Self::Disabled
        }
    }
}

/// The parsed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub on_ready: OnReady,
    pub log_level: LogLevel,
    pub results_port: String,
    pub test_fault: Option<TestFault>,
    pub test_orphans: u16,
    pub test_dump: Vec<TestDump>,
    pub test_gpu: Option<TestGpu>,
    /// `cvm.data_device`: the data disk (or a partition of it), instead of looking for a
    /// `dstack-data` partition or the only writable virtio disk.
    pub data_device: Option<String>,
    /// Test builds only (`cvm.test_disk_key`): the data disk key, until the KMS supplies it.
    pub test_disk_key: Option<TestDiskKey>,
    /// Test builds only (`cvm.test_disk`): probes run on the mounted data disk.
    pub test_disk: Vec<TestDiskOp>,
    /// Test builds only (`cvm.test_disk_plain`): an unencrypted disk for the benchmark.
    pub test_disk_plain: Option<String>,
    /// `cvm.gpu_driver`: the dm-verity root hash of the GPU driver extension (64 hex digits).
    /// The command line is measured into RTMR2, so the hash, and with it every byte of the
    /// driver tree, is attested. Without it an extension disk is ignored.
    pub gpu_driver: Option<[u8; 32]>,
}

/// A data-disk key given on the command line by a test (64 hex digits). Debug is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct TestDiskKey(pub String);

impl fmt::Debug for TestDiskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TestDiskKey(<redacted>)")
    }
}

/// What a test build does on the mounted data disk before `ready` (`cvm.test_disk`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestDiskOp {
    /// Write the probe file and fsync it.
    Write,
    /// Read the probe file back and report its hash (or the I/O error).
    Read,
    /// Sequential write/read throughput: encrypted volume vs `cvm.test_disk_plain`.
    Bench,
}

/// What a test build copies onto the results channel (test hooks only): a file before
/// `ready`, or the container logs' digests after the workloads stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestDump {
    /// The firmware's TPM event log, `/sys/kernel/security/tpm0/binary_bios_measurements`
    /// (the measured-boot oracle of `shared/specs/measured-boot-oracle.md`).
    TpmEventLog,
    /// The RTMR3 runtime event log the init wrote.
    RuntimeEventLog,
    /// The SHA-256 of each container's log file, once the workloads are stopped (never the
    /// log's bytes: they stay private to the VM).
    ContainerLogDigests,
    /// The gateway stage's WireGuard private key XOR [`gateway_wg_key_mask`] (so the record
    /// never holds the key's own bytes), for the secrets scan to learn the key it must not
    /// find anywhere.
    GatewayWgKeyMasked,
}

/// What `gateway-wg-key-masked` XORs the WireGuard key with: SHA-256 of
/// `cvm-init test mask: gateway-wg-key`.
pub fn gateway_wg_key_mask() -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(b"cvm-init test mask: gateway-wg-key").into()
}

impl TestDump {
    pub const fn name(self) -> &'static str {
        match self {
            Self::TpmEventLog => "tpm-event-log",
            Self::RuntimeEventLog => "runtime-event-log",
            Self::ContainerLogDigests => "container-log-digests",
            Self::GatewayWgKeyMasked => "gateway-wg-key-masked",
        }
    }

    /// The file copied before `ready`; `None` for the digests taken at the stop.
    pub const fn path(self) -> Option<&'static str> {
        match self {
            Self::TpmEventLog => Some("/sys/kernel/security/tpm0/binary_bios_measurements"),
            Self::RuntimeEventLog => Some("/run/log/dstack/runtime_events.log"),
            Self::ContainerLogDigests | Self::GatewayWgKeyMasked => None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            on_ready: OnReady::Wait,
            log_level: LogLevel::Info,
            results_port: DEFAULT_RESULTS_PORT.to_owned(),
            test_fault: None,
            test_orphans: 0,
            test_dump: Vec::new(),
            test_gpu: None,
            data_device: None,
            test_disk_key: None,
            test_disk: Vec::new(),
            test_disk_plain: None,
            gpu_driver: None,
        }
    }
}

/// The virtio-serial port name the results channel uses unless `cvm.results` says otherwise.
pub const DEFAULT_RESULTS_PORT: &str = "cvm.results";
/// Upper bound for `cvm.test_orphans`.
pub const MAX_TEST_ORPHANS: u16 = 1000;
const MAX_CMDLINE_LEN: usize = 64 * 1024;
const MAX_PORT_NAME_LEN: usize = 64;

/// Keys this build understands, for the error message of an unknown key.
pub const KNOWN_KEYS: &[&str] = &[
    "cvm.on_ready",
    "cvm.log",
    "cvm.results",
    "cvm.test_fault",
    "cvm.test_orphans",
    "cvm.test_dump",
    "cvm.test_gpu",
    "cvm.data_device",
    "cvm.test_disk_key",
    "cvm.test_disk",
    "cvm.test_disk_plain",
    "cvm.gpu_driver",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    #[error("kernel command line is {len} bytes, more than the {MAX_CMDLINE_LEN} allowed")]
    TooLong { len: usize },
    #[error("kernel command line has an unterminated double quote")]
    UnterminatedQuote,
    #[error("unknown kernel command line key `{key}` (known: {})", KNOWN_KEYS.join(", "))]
    UnknownKey { key: String },
    #[error("kernel command line key `{key}` needs a value (`{key}=...`)")]
    MissingValue { key: String },
    #[error("kernel command line key `{key}` is given twice")]
    DuplicateKey { key: String },
    #[error("invalid value `{value}` for `{key}`: expected {expected}")]
    InvalidValue {
        key: String,
        value: String,
        expected: &'static str,
    },
    #[error("`{key}` is a test hook and this build has no test hooks")]
    TestHookInRelease { key: String },
}

impl fmt::Display for OnReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Wait => "wait",
            Self::PowerOff => "poweroff",
        })
    }
}

/// Split a command line the way the kernel does: whitespace separated, double quotes group
/// (and are removed).
pub fn split_words(cmdline: &str) -> Result<Vec<String>, CmdlineError> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_quote = false;
    let mut has_word = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quote = !in_quote;
                has_word = true;
            }
            c if c.is_whitespace() && !in_quote => {
                if has_word {
                    words.push(std::mem::take(&mut current));
                    has_word = false;
                }
            }
            c => {
                current.push(c);
                has_word = true;
            }
        }
    }
    if in_quote {
        return Err(CmdlineError::UnterminatedQuote);
    }
    if has_word {
        words.push(current);
    }
    Ok(words)
}

/// Parse the `cvm.*` keys of a kernel command line.
pub fn parse(cmdline: &str, hooks: TestHooks) -> Result<Config, CmdlineError> {
    if cmdline.len() > MAX_CMDLINE_LEN {
        return Err(CmdlineError::TooLong { len: cmdline.len() });
    }
    let mut config = Config::default();
    let mut seen: Vec<String> = Vec::new();
    for word in split_words(cmdline)? {
        if !word.starts_with("cvm.") {
            continue;
        }
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (word.clone(), String::new()),
        };
        if !KNOWN_KEYS.contains(&key.as_str()) {
            return Err(CmdlineError::UnknownKey { key });
        }
        if value.is_empty() {
            return Err(CmdlineError::MissingValue { key });
        }
        if seen.contains(&key) {
            return Err(CmdlineError::DuplicateKey { key });
        }
        let invalid = |expected: &'static str| CmdlineError::InvalidValue {
            key: key.clone(),
            value: value.clone(),
            expected,
        };
        match key.as_str() {
            "cvm.on_ready" => {
                config.on_ready = match value.as_str() {
                    "wait" => OnReady::Wait,
                    "poweroff" => OnReady::PowerOff,
                    _ => return Err(invalid("`wait` or `poweroff`")),
                }
            }
            "cvm.log" => {
                config.log_level = match value.as_str() {
                    "error" => LogLevel::Error,
                    "warn" => LogLevel::Warn,
                    "info" => LogLevel::Info,
                    "debug" => LogLevel::Debug,
                    _ => return Err(invalid("`error`, `warn`, `info` or `debug`")),
                }
            }
            "cvm.results" => {
                let ok = value.len() <= MAX_PORT_NAME_LEN
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if !ok {
                    return Err(invalid(
                        "a port name of at most 64 characters [A-Za-z0-9._-]",
                    ));
                }
                config.results_port = value.clone();
            }
            "cvm.test_fault" => {
                require_hooks(hooks, &key)?;
                config.test_fault = Some(if value == "kill-guest-api" {
                    TestFault::KillGuestApi
                } else if value == "gateway-refresher" {
                    TestFault::GatewayRefresher
                } else {
                    let target = value
                        .strip_prefix("mount:")
                        .filter(|t| t.starts_with('/'))
                        .ok_or_else(|| {
                            invalid(
                                "`mount:<absolute target>`, `kill-guest-api` or `gateway-refresher`",
                            )
                        })?;
                    TestFault::Mount {
                        target: target.to_owned(),
                    }
                });
            }
            "cvm.test_orphans" => {
                require_hooks(hooks, &key)?;
                config.test_orphans = value
                    .parse::<u16>()
                    .ok()
                    .filter(|n| *n <= MAX_TEST_ORPHANS)
                    .ok_or_else(|| invalid("an integer 0..=1000"))?;
            }
            "cvm.test_dump" => {
                require_hooks(hooks, &key)?;
                for item in value.split(',') {
                    let dump = match item {
                        "tpm-event-log" => TestDump::TpmEventLog,
                        "runtime-event-log" => TestDump::RuntimeEventLog,
                        "container-log-digests" => TestDump::ContainerLogDigests,
                        "gateway-wg-key-masked" => TestDump::GatewayWgKeyMasked,
                        _ => {
                            return Err(invalid(
                                "a list of `tpm-event-log`, `runtime-event-log`, `container-log-digests`, `gateway-wg-key-masked`",
                            ));
                        }
                    };
                    if !config.test_dump.contains(&dump) {
                        config.test_dump.push(dump);
                    }
                }
            }
            "cvm.test_gpu" => {
                require_hooks(hooks, &key)?;
                config.test_gpu = Some(match value.as_str() {
                    "pass" => TestGpu::Pass,
                    "replay" => TestGpu::Replay,
                    "node-only" => TestGpu::NodeOnly,
                    _ => return Err(invalid("`pass`, `replay` or `node-only`")),
                });
            }
            "cvm.data_device" => {
                config.data_device =
                    Some(device_path(&value).ok_or_else(|| invalid("a device path /dev/NAME"))?);
            }
            "cvm.test_disk_plain" => {
                require_hooks(hooks, &key)?;
                config.test_disk_plain =
                    Some(device_path(&value).ok_or_else(|| invalid("a device path /dev/NAME"))?);
            }
            "cvm.test_disk_key" => {
                require_hooks(hooks, &key)?;
                if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(CmdlineError::InvalidValue {
                        key: key.clone(),
                        value: "<redacted>".into(),
                        expected: "64 hex digits",
                    });
                }
                config.test_disk_key = Some(TestDiskKey(value.clone()));
            }
            "cvm.test_disk" => {
                require_hooks(hooks, &key)?;
                for item in value.split(',') {
                    let op = match item {
                        "write" => TestDiskOp::Write,
                        "read" => TestDiskOp::Read,
                        "bench" => TestDiskOp::Bench,
                        _ => return Err(invalid("a list of `write`, `read`, `bench`")),
                    };
                    config.test_disk.push(op);
                }
            }
            "cvm.gpu_driver" => {
                let mut root = [0u8; 32];
                if value.len() != 64 || hex::decode_to_slice(&value, &mut root).is_err() {
                    return Err(invalid("a SHA-256 dm-verity root hash (64 hex digits)"));
                }
                config.gpu_driver = Some(root);
            }
            _ => return Err(CmdlineError::UnknownKey { key }),
        }
        seen.push(key);
    }
    Ok(config)
}

/// `/dev/NAME` with a plain name (no `..`, no further slashes).
fn device_path(value: &str) -> Option<String> {
    let name = value.strip_prefix("/dev/")?;
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
    ok.then(|| value.to_owned())
}

fn require_hooks(hooks: TestHooks, key: &str) -> Result<(), CmdlineError> {
    match hooks {
        TestHooks::Enabled => Ok(()),
        TestHooks::Disabled => Err(CmdlineError::TestHookInRelease {
            key: key.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DSTACK_LINE: &str = "console=ttyS0 init=/init panic=1 net.ifnames=0 biosdevname=0 \
        mce=off oops=panic pci=noearly pci=nommconf random.trust_cpu=y tsc=reliable no-kvmclock";

    #[test]
    fn defaults_without_cvm_keys() {
        let c = parse(DSTACK_LINE, TestHooks::Disabled).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.on_ready, OnReady::Wait);
    }

    #[test]
    fn gpu_driver_root_hash() {
        let hash = "ab".repeat(32);
        let c = parse(
            &format!("{DSTACK_LINE} cvm.gpu_driver={hash}"),
            TestHooks::Disabled,
        )
        .unwrap();
        assert_eq!(c.gpu_driver, Some([0xab; 32]));
        for bad in ["ab".repeat(31), "zz".repeat(32), "ab".repeat(33)] {
            assert_eq!(
                parse(&format!("cvm.gpu_driver={bad}"), TestHooks::Disabled),
                Err(CmdlineError::InvalidValue {
                    key: "cvm.gpu_driver".into(),
                    value: bad.clone(),
                    expected: "a SHA-256 dm-verity root hash (64 hex digits)",
                })
            );
        }
        assert_eq!(
            parse("cvm.gpu_driver=", TestHooks::Disabled),
            Err(CmdlineError::MissingValue {
                key: "cvm.gpu_driver".into()
            })
        );
        assert_eq!(
            parse(
                &format!("cvm.gpu_driver={hash} cvm.gpu_driver={hash}"),
                TestHooks::Disabled
            ),
            Err(CmdlineError::DuplicateKey {
                key: "cvm.gpu_driver".into()
            })
        );
    }

    #[test]
    fn known_keys_parse() {
        let line = format!("{DSTACK_LINE} cvm.on_ready=poweroff cvm.log=debug cvm.results=r.1");
        let c = parse(&line, TestHooks::Disabled).unwrap();
        assert_eq!(c.on_ready, OnReady::PowerOff);
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.results_port, "r.1");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("quiet cvm.bogus=1", TestHooks::Enabled).unwrap_err();
        assert_eq!(
            err,
            CmdlineError::UnknownKey {
                key: "cvm.bogus".into()
            }
        );
        assert!(err.to_string().contains("`cvm.bogus`"), "{err}");
    }

    #[test]
    fn key_without_value_is_rejected() {
        assert_eq!(
            parse("cvm.on_ready", TestHooks::Disabled).unwrap_err(),
            CmdlineError::MissingValue {
                key: "cvm.on_ready".into()
            }
        );
        assert_eq!(
            parse("cvm.on_ready=", TestHooks::Disabled).unwrap_err(),
            CmdlineError::MissingValue {
                key: "cvm.on_ready".into()
            }
        );
    }

    #[test]
    fn bad_values_and_duplicates() {
        assert!(matches!(
            parse("cvm.on_ready=later", TestHooks::Disabled),
            Err(CmdlineError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse("cvm.results=a/b", TestHooks::Disabled),
            Err(CmdlineError::InvalidValue { .. })
        ));
        assert_eq!(
            parse("cvm.log=info cvm.log=debug", TestHooks::Disabled).unwrap_err(),
            CmdlineError::DuplicateKey {
                key: "cvm.log".into()
            }
        );
    }

    #[test]
    fn test_hooks_only_when_compiled_in() {
        let line = "cvm.test_fault=mount:/sys/kernel/security cvm.test_orphans=5";
        assert_eq!(
            parse(line, TestHooks::Disabled).unwrap_err(),
            CmdlineError::TestHookInRelease {
                key: "cvm.test_fault".into()
            }
        );
        let c = parse(line, TestHooks::Enabled).unwrap();
        assert_eq!(
            c.test_fault,
            Some(TestFault::Mount {
                target: "/sys/kernel/security".into()
            })
        );
        assert_eq!(c.test_orphans, 5);
        assert_eq!(
            parse("cvm.test_orphans=1000", TestHooks::Enabled)
                .unwrap()
                .test_orphans,
            1000
        );
        parse("cvm.test_orphans=1001", TestHooks::Enabled).unwrap_err();
        parse("cvm.test_fault=mount:relative", TestHooks::Enabled).unwrap_err();
        assert_eq!(
            parse("cvm.test_fault=kill-guest-api", TestHooks::Enabled)
                .unwrap()
                .test_fault,
            Some(TestFault::KillGuestApi)
        );
        assert_eq!(
            parse("cvm.test_fault=gateway-refresher", TestHooks::Enabled)
                .unwrap()
                .test_fault,
            Some(TestFault::GatewayRefresher)
        );
        parse("cvm.test_fault=gateway-refresher", TestHooks::Disabled).unwrap_err();
        parse("cvm.test_fault=gateway-refresh", TestHooks::Enabled).unwrap_err();
        parse("cvm.test_fault=kill-guest-api", TestHooks::Disabled).unwrap_err();
        let d = parse(
            "cvm.test_dump=tpm-event-log,runtime-event-log",
            TestHooks::Enabled,
        )
        .unwrap();
        assert_eq!(
            d.test_dump,
            vec![TestDump::TpmEventLog, TestDump::RuntimeEventLog]
        );
        assert_eq!(
            parse("cvm.test_dump=tpm-event-log", TestHooks::Disabled).unwrap_err(),
            CmdlineError::TestHookInRelease {
                key: "cvm.test_dump".into()
            }
        );
        parse("cvm.test_dump=/etc/shadow", TestHooks::Enabled).unwrap_err();
        assert_eq!(
            parse("cvm.test_gpu=pass", TestHooks::Enabled)
                .unwrap()
                .test_gpu,
            Some(TestGpu::Pass)
        );
        assert_eq!(
            parse("cvm.test_gpu=node-only", TestHooks::Enabled)
                .unwrap()
                .test_gpu,
            Some(TestGpu::NodeOnly)
        );
        assert_eq!(
            parse("cvm.test_gpu=pass", TestHooks::Disabled).unwrap_err(),
            CmdlineError::TestHookInRelease {
                key: "cvm.test_gpu".into()
            }
        );
        parse("cvm.test_gpu=yes", TestHooks::Enabled).unwrap_err();
    }

    #[test]
    fn data_disk_keys() {
        let c = parse("cvm.data_device=/dev/vdb", TestHooks::Disabled).unwrap();
        assert_eq!(c.data_device.as_deref(), Some("/dev/vdb"));
        parse("cvm.data_device=/dev/../etc", TestHooks::Disabled).unwrap_err();
        parse("cvm.data_device=vdb", TestHooks::Disabled).unwrap_err();
        let key = "ab".repeat(32);
        let line = format!(
            "cvm.test_disk_key={key} cvm.test_disk=write,read cvm.test_disk_plain=/dev/vdc"
        );
        assert_eq!(
            parse(&line, TestHooks::Disabled).unwrap_err(),
            CmdlineError::TestHookInRelease {
                key: "cvm.test_disk_key".into()
            }
        );
        let c = parse(&line, TestHooks::Enabled).unwrap();
        assert_eq!(c.test_disk_key, Some(TestDiskKey(key.clone())));
        assert!(!format!("{c:?}").contains(&key));
        assert_eq!(c.test_disk, vec![TestDiskOp::Write, TestDiskOp::Read]);
        assert_eq!(c.test_disk_plain.as_deref(), Some("/dev/vdc"));
        let err = parse("cvm.test_disk_key=12", TestHooks::Enabled).unwrap_err();
        assert!(matches!(err, CmdlineError::InvalidValue { .. }));
        parse("cvm.test_disk=erase", TestHooks::Enabled).unwrap_err();
    }

    #[test]
    fn quotes_group_words() {
        assert_eq!(split_words(r#"a "b c" d"#).unwrap(), vec!["a", "b c", "d"]);
        assert_eq!(split_words("  a\n b\t").unwrap(), vec!["a", "b"]);
        assert_eq!(split_words(r#"x="""#).unwrap(), vec!["x="]);
        assert_eq!(
            split_words(r#"a "b"#).unwrap_err(),
            CmdlineError::UnterminatedQuote
        );
        let c = parse(r#"dyndbg="file x +p" cvm.log=warn"#, TestHooks::Disabled).unwrap();
        assert_eq!(c.log_level, LogLevel::Warn);
    }

    #[test]
    fn overlong_cmdline_is_rejected() {
        let line = "a ".repeat(MAX_CMDLINE_LEN);
        assert!(matches!(
            parse(&line, TestHooks::Disabled),
            Err(CmdlineError::TooLong { .. })
        ));
    }
}
