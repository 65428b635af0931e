//! The end-to-end demo (`cargo xtask demo`, and the QEMU test `tests/demo.rs`): a real sample
//! app in a confidential VM, attested from the host.
//!
//! 1. starts the test KMS (`test-kms`, real RA-TLS, compose-hash allow-list) and Debian's
//!    `docker-registry` on host loopback, and pushes the `demo-app` image (one static binary)
//!    by digest;
//! 2. writes a dstack host share: app-compose.json (KMS enabled, `key_provider_id` pinned to the
//!    KMS root, one service with the guest API socket, `ports: ["8080:8080"]`), the encrypted
//!    env (X25519 + AES-GCM to the app's env key from the KMS) and `.sys-config.json`;
//! 3. boots the given initramfs under QEMU (TCG) with user networking and a host port forward
//!    to the app's port 8080; hands the simulated TEE's per-boot root to the KMS;
//! 4. fetches the app's page and `/attest?challenge=<fresh 32 bytes>` from the host;
//! 5. runs `cvm-measure verify` on the returned quote and event log against the app-compose,
//!    the challenge, the KMS identity and the build's expected MRTD/RTMR0-2 (`cvm-measure
//!    expected` of the same kernel, initramfs and command line), printing the checklist. The
//!    simulated TEE's platform lines are marked SIMULATED and the verdict is a rejection, as
//!    it must be; every other line must pass, except "KMS attestation valid", skipped on
//!    request (`--skip kms-attestation`: the test KMS runs outside any TD and has no quote;
//!    `verify` fails a line whose input is missing unless `--skip` names it).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cvm_keys::env::{encrypt_blob, env_plaintext};
use sha2::{Digest, Sha256};
use test_kms::{KmsKeys, Policy};

use crate::artifacts::Artifacts;
use crate::host_share::{self, HOST_SHARE_LABEL, ShareFile};
use crate::registry::{Registry, Tar, free_port};
use crate::results::Record;
use crate::vm::{ReportOnDrop, RunningVm, TestVm};

/// How long the guest may take for each step (TCG is slow; the pull and the quote dominate).
const STEP_TIMEOUT: Duration = Duration::from_secs(300);
/// The app's port inside the guest (host networking).
const APP_PORT: u16 = 8080;
/// Guest RAM (the expected RTMR0 depends on it).
const VM_MEMORY: &str = "1G";
/// A value in the encrypted env: the demo shows it is delivered, never printed.
pub const ENV_VALUE: &str = "demo-secret-value-8d1e4c";

/// Errors of the demo: which step failed, with the cause.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo step failed: {step}")]
    Step {
        step: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("demo check failed: {what}")]
    Check { what: String },
}

trait Context<T> {
    fn step(self, step: &str) -> Result<T, DemoError>;
}

impl<T, E: Into<Box<dyn std::error::Error + Send + Sync>>> Context<T> for Result<T, E> {
    fn step(self, step: &str) -> Result<T, DemoError> {
        self.map_err(|e| DemoError::Step {
            step: step.to_owned(),
            source: e.into(),
        })
    }
}

fn check(ok: bool, what: impl Into<String>) -> Result<(), DemoError> {
    if ok {
        Ok(())
    } else {
        Err(DemoError::Check { what: what.into() })
    }
}

/// What the demo boots and where it works.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The initramfs to boot (a build with the simulated TEE: `dist` with
    /// `insecure-simulated-tee`, or the QEMU tests' image).
    pub initramfs: PathBuf,
    /// Working directory (registry data, host share, quote files); emptied first.
    pub work_dir: PathBuf,
    /// `demo-app` binary (static).
    pub demo_app: PathBuf,
    /// `cvm-measure` binary.
    pub cvm_measure: PathBuf,
    /// Extra kernel command-line parameters.
    pub cmdline: String,
    /// A hostile neighbour (issue 22): a busybox service fills `/run` (its container root's
    /// overlay upper lives there) before the app is asked for an `EmitEvent` and a quote,
    /// whose event log must still replay. The static busybox to build its image from.
    pub fill_run_with: Option<PathBuf>,
    /// Issue 17: also enable the dstack-gateway with a test gateway on loopback
    /// (`test-gateway`): the guest registers over RA-TLS, the host fetches the page through
    /// the WireGuard tunnel, then a restarted gateway (new WireGuard key) must be registered
    /// again by the guest's refresher and serve the page too.
    pub gateway: bool,
    /// With [`DemoOptions::gateway`] and `cvm.test_fault=gateway-refresher` in `cmdline` (a
    /// test image): the 80 s client certificate is renewed at the refresher's first round,
    /// which then exits; PID 1 must restart it (`restarting` / `restarted` records for
    /// `gateway-refresh`) and the restarted refresher must register again at once, renewing
    /// the boot's certificate once more. Every registration after the gateway's restart must
    /// present a renewed certificate.
    pub gateway_refresher_fault: bool,
}

/// What the host saw of the gateway (with [`DemoOptions::gateway`]).
#[derive(Debug, Default)]
pub struct GatewaySeen {
    /// Registrations the first gateway accepted.
    pub registrations: Vec<test_gateway::Registration>,
    /// `GET /` through the first gateway's tunnel: status and body.
    pub tunnel_page: (u16, String),
    /// Registrations the restarted gateway accepted (the refresher's).
    pub reregistrations: Vec<test_gateway::Registration>,
    /// `GET /` through the restarted gateway's tunnel.
    pub tunnel_page_after_restart: (u16, String),
    /// The two gateways' WireGuard keys (must differ).
    pub gateway_keys: ([u8; 32], [u8; 32]),
    /// [`DemoOptions::gateway_refresher_fault`] was set.
    pub refresher_fault: bool,
}

/// The filler's device probes; each prints one verdict line (`…-ALLOWED` is a breach).
const CONFINE_PROBES: &str = "mknod /dm0 b 253 0 && echo dm-mknod-ALLOWED || echo dm-mknod-refused; mknod /tdx c 10 125 && echo tdx-mknod-ALLOWED || echo tdx-mknod-refused; mknod /null2 c 1 3 && echo null-mknod-ok; echo x > /null2 && echo nodev-ALLOWED || echo nodev-refused; echo x > /dev/null && echo devnull-ok; busybox unshare -U true 2>/userns.err && echo userns-ALLOWED || { grep -q 'No space left' /userns.err && echo userns-refused-by-limit || echo userns-refused-otherwise; }; hwclock -r -f /dev/rtc0 > /dev/null && echo rtc-granted-ok; echo x > /dev/rtc0 && echo rtc-write-ALLOWED || echo rtc-write-refused;";
/// The verdict lines the probes must print.
const CONFINE_VERDICTS: [&str; 8] = [
    "filler| dm-mknod-refused",
    "filler| tdx-mknod-refused",
    "filler| null-mknod-ok",
    "filler| nodev-refused",
    "filler| devnull-ok",
    "filler| userns-refused-by-limit",
    "filler| rtc-granted-ok",
    "filler| rtc-write-refused",
];
/// The demo app's seccomp probes (a plain container: default capabilities, no
/// `no-new-privileges`, so libcontainer loads the filter before it drops capabilities; the
/// filler has `no-new-privileges`, the other order).
const SECCOMP_VERDICTS: [&str; 3] = [
    "demo| demo-app: probe unshare(CLONE_NEWUSER): refused (EPERM)",
    "demo| demo-app: probe personality(ADDR_NO_RANDOMIZE): refused (EPERM)",
    "demo| demo-app: probe spawn: ok",
];

/// The filler's last console line once `/run` is full (the demo sets `public_logs`).
const FILLED: &str = "filler| run-filled";
/// The event the app emits after the fill.
pub const AFTER_FILL_EVENT: &str = "after-run-filled";

/// What the demo saw.
#[derive(Debug)]
pub struct DemoReport {
    /// The app's HTML page.
    pub page: String,
    /// `/attest` reply.
    pub attest: serde_json::Value,
    /// The fresh challenge (hex).
    pub challenge: String,
    /// app-id (hex, from app-compose's compose-hash).
    pub app_id: String,
    /// compose-hash (hex).
    pub compose_hash: String,
    /// `cvm-measure verify` text output (the checklist).
    pub checklist: String,
    /// `cvm-measure verify --json` lines.
    pub checklist_json: serde_json::Value,
    /// `cvm-measure verify`'s stderr (the verdict).
    pub verdict: String,
    /// Results-channel records of the boot (after power-off).
    pub records: Vec<Record>,
    /// The results channel's bytes as written (for secrets scans).
    pub results_raw: Vec<u8>,
    /// The guest console.
    pub console: String,
    /// KMS requests served.
    pub kms_requests: Vec<test_kms::RequestRecord>,
    /// Seconds from QEMU start to the app's first answer.
    pub app_answered_after: f64,
    /// With [`DemoOptions::fill_run_with`]: `/emit`'s status and body after `/run` was full.
    pub emitted_after_fill: Option<(u16, String)>,
    /// The external Worker API (port 8090) as the host saw it.
    pub worker: WorkerSeen,
    /// With [`DemoOptions::gateway`]: the registrations and the tunnel.
    pub gateway: Option<GatewaySeen>,
}

/// What the host got from the guest's Worker API on port 8090 (forwarded).
#[derive(Debug, Default)]
pub struct WorkerSeen {
    /// `/prpc/Worker.Info`: status and body.
    pub info: (u16, String),
    /// `/logs/demo` (the demo sets `public_logs`).
    pub logs: (u16, String),
    /// `/metrics` (the demo sets `public_sysinfo`).
    pub metrics: (u16, String),
}

/// The `demo-app` image layer: `/demo-app` and the directories a container root needs.
fn demo_layer(binary: &Path) -> Result<Vec<u8>, DemoError> {
    let bin = std::fs::read(binary).step("read the demo-app binary")?;
    let mut tar = Tar::default();
    for d in ["etc", "tmp", "proc", "sys", "dev", "var", "var/run"] {
        tar = tar.dir(d);
    }
    Ok(tar
        .file("demo-app", 0o755, &bin)
        .file("etc/passwd", 0o644, b"root:x:0:0:root:/:/demo-app\n")
        .file("etc/group", 0o644, b"root:x:0:\n")
        .finish())
}

fn app_compose(
    image: &str,
    filler: Option<&str>,
    key_provider_id: &str,
    gateway: bool,
) -> Result<Vec<u8>, DemoError> {
    let mut compose_file = format!(
        "services:\n  demo:\n    image: {image}\n    restart: always\n    ports: [\"{APP_PORT}:{APP_PORT}\"]\n    environment:\n      DEMO_PORT: \"{APP_PORT}\"\n      DEMO_SECRET: ${{DEMO_SECRET}}\n    volumes:\n      - /var/run/dstack.sock:/var/run/dstack.sock\n"
    );
    if let Some(filler) = filler {
        // First the device confinement (issue 22; MKNOD granted so that only the eBPF device
        // filter and the nodev root stand in the way): the data disk's dm node (block 253:0)
        // and a misc node like /dev/tdx_guest (char 10:*) cannot be made, /dev/null can but
        // does not open on the nodev root, the container's own /dev/null works, and a user
        // namespace is refused (seccomp, loaded after no-new-privileges here); the granted
        // `devices:` mapping (the RTC, read-only) reads and refuses a write. Then it
        // writes into its own root until ENOSPC: the overlay upper is on PID 1's `/run`.
        compose_file.push_str(&format!(
            "  filler:\n    image: {filler}\n    restart: \"no\"\n    cap_add: [MKNOD, SYS_ADMIN]\n    security_opt: [no-new-privileges]\n    devices: [\"/dev/rtc0:/dev/rtc0:r\"]\n    command: [\"{CONFINE_PROBES} dd if=/dev/zero of=/fill bs=1M; df -k /; echo run-filled; exec sleep 86400\"]\n"
        ));
    }
    let compose = serde_json::json!({
        "manifest_version": 2,
        "name": "cvm-init-demo",
        "runner": "docker-compose",
        "docker_compose_file": compose_file,
        "kms_enabled": true,
        "gateway_enabled": gateway,
        "local_key_provider_enabled": false,
        "key_provider_id": key_provider_id,
        "public_logs": true,
        "public_sysinfo": true,
        "allowed_envs": ["DEMO_SECRET"],
        "no_instance_id": false,
        "secure_time": false,
    });
    serde_json::to_vec_pretty(&compose).step("encode app-compose.json")
}

/// One HTTP GET to `127.0.0.1:port`; the status and body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = Vec::new();
    stream.take(4 << 20).read_to_end(&mut reply)?;
    let text = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP reply"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// Waits until the app answers `GET /` with 200 through the port forward.
fn wait_for_app(vm: &mut RunningVm, port: u16) -> Result<String, DemoError> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if let Ok((200, body)) = http_get(port, "/") {
            return Ok(body);
        }
        if vm.try_exit().step("watch QEMU")?.is_some() {
            return Err(DemoError::Check {
                what: format!("the VM stopped before the app answered:\n{}", vm.report()),
            });
        }
        if Instant::now() > deadline {
            return Err(DemoError::Check {
                what: format!("the app did not answer on port {port}:\n{}", vm.report()),
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn random_hex(len: usize) -> Result<String, DemoError> {
    let mut bytes = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .step("read /dev/urandom")?;
    Ok(hex::encode(bytes))
}

/// Runs the demo (see the module documentation).
pub fn run(artifacts: &Artifacts, options: &DemoOptions) -> Result<DemoReport, DemoError> {
    let dir = &options.work_dir;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).step("create the demo directory")?;

    // Registry with the app image.
    let registry = Registry::start_at(&dir.join("registry"), free_port().step("pick a port")?)
        .step("start docker-registry on loopback")?;
    let image = registry
        .push_image(
            "demo-app",
            &demo_layer(&options.demo_app)?,
            &serde_json::json!({"Entrypoint": ["/demo-app"], "Env": ["PATH=/"],
                                "ExposedPorts": {format!("{APP_PORT}/tcp"): {}}}),
        )
        .step("push the demo-app image")?;

    // KMS trusting this boot's simulated root (written once the guest publishes it).
    let kms_keys = Arc::new(KmsKeys::generate(&[]).step("generate the KMS keys")?);
    let filler = match &options.fill_run_with {
        Some(busybox) => Some(
            registry
                .push_image(
                    "filler",
                    &crate::registry::busybox_layer(busybox).step("build the filler layer")?,
                    &serde_json::json!({"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sh", "-c"]}),
                )
                .step("push the filler image")?,
        ),
        None => None,
    };
    let compose = app_compose(
        &image,
        filler.as_deref(),
        &kms_keys.key_provider_id(),
        options.gateway,
    )?;
    let compose_hash: [u8; 32] = Sha256::digest(&compose).into();
    let app_id = compose_hash[..20].to_vec();
    let root_file = dir.join("simulated-root.pem");
    let listener = TcpListener::bind("127.0.0.1:0").step("listen for the KMS")?;
    let mut policy = Policy::simulated_boot(vec![compose_hash], root_file.clone());
    let gateway = if options.gateway {
        policy.gateway_app_id = test_gateway::app_id_hex(&test_gateway::DEFAULT_APP_ID);
        Some(GatewayPorts::start(&kms_keys)?)
    } else {
        None
    };
    let kms =
        test_kms::start(Arc::clone(&kms_keys), policy, listener).step("start the test KMS")?;

    // Host share.
    let env = env_plaintext(&[("DEMO_SECRET", ENV_VALUE)]);
    let env_key = kms_keys
        .env_public_key(&app_id)
        .step("derive the app's env key")?;
    let encrypted_env = encrypt_blob(&env_key, env.expose()).step("encrypt the env")?;
    let mut sys_config = crate::host_share::kms_sys_config(&[kms.guest_url()], 1 << 30);
    if let Some(g) = &gateway {
        sys_config["gateway_urls"] = serde_json::json!([g.guest_url()]);
    }
    let compose_path = dir.join("app-compose.json");
    std::fs::write(&compose_path, &compose).step("write app-compose.json")?;
    let files = vec![
        ShareFile::new("app-compose.json", compose.clone()),
        ShareFile::new(
            ".sys-config.json",
            serde_json::to_vec(&sys_config).step("encode .sys-config.json")?,
        ),
        ShareFile::new(".encrypted-env", encrypted_env),
    ];
    let share = dir.join("share.img");
    host_share::build_image(&files, &[], HOST_SHARE_LABEL, &dir.join("staging"), &share)
        .step("build the host-share disk")?;

    // Boot with a port forward to the app.
    let host_port = free_port().step("pick the forwarded port")?;
    let worker_port = free_port().step("pick the Worker API's forwarded port")?;
    let started = Instant::now();
    let mut vm = TestVm::new(artifacts)
        .with_name("demo")
        .with_report_on_drop(ReportOnDrop::OnFailure)
        .with_initrd(&options.initramfs)
        .with_memory(VM_MEMORY)
        .with_cmdline(&format!("cvm.on_ready=wait {}", options.cmdline))
        .with_qemu_arg("-drive")
        .with_qemu_arg(&host_share::drive_arg(&share))
        .with_qemu_arg("-netdev")
        .with_qemu_arg(&format!(
            "user,id=n0,hostfwd=tcp:127.0.0.1:{host_port}-:{APP_PORT},hostfwd=tcp:127.0.0.1:{worker_port}-:8090"
        ))
        .with_qemu_arg("-device")
        .with_qemu_arg("virtio-net-pci,netdev=n0")
        .boot()
        .step("boot QEMU")?;
    vm.hand_simulated_root_to(&root_file, STEP_TIMEOUT)
        .step("hand the simulated TEE's root to the KMS")?;

    let page = wait_for_app(&mut vm, host_port)?;
    let app_answered_after = started.elapsed().as_secs_f64();
    let gateway = match gateway {
        Some(g) => Some(g.exercise(&kms_keys, &mut vm, options.gateway_refresher_fault)?),
        None => None,
    };
    let emitted_after_fill = if filler.is_some() {
        vm.wait_for_console(FILLED, STEP_TIMEOUT)
            .step("wait for the filler to fill /run")?;
        let (status, body) =
            http_get(host_port, &format!("/emit?event={AFTER_FILL_EVENT}")).step("GET /emit")?;
        Some((status, body))
    } else {
        None
    };
    let worker_get = |path: &str| http_get(worker_port, path).step("GET the Worker API");
    let worker = WorkerSeen {
        info: worker_get("/prpc/Worker.Info?json")?,
        logs: worker_get("/logs/demo")?,
        metrics: worker_get("/metrics")?,
    };
    let challenge = random_hex(32)?;
    let (status, body) =
        http_get(host_port, &format!("/attest?challenge={challenge}")).step("GET /attest")?;
    check(status == 200, format!("/attest answered {status}: {body}"))?;
    let attest: serde_json::Value = serde_json::from_str(&body).step("parse /attest")?;
    let quote_path = dir.join("get-quote.json");
    std::fs::write(&quote_path, attest["quote"].to_string()).step("write the quote")?;

    // Expected values of this build, then the checklist.
    let expected_path = dir.join("expected.json");
    let kernel_cmdline = TestVm::new(artifacts)
        .with_cmdline(&format!("cvm.on_ready=wait {}", options.cmdline))
        .kernel_cmdline();
    let expected = Command::new(&options.cvm_measure)
        .arg("expected")
        .arg("--firmware")
        .arg(&artifacts.ovmf_code)
        .arg("--kernel")
        .arg(&artifacts.kernel)
        .arg("--initrd")
        .arg(&options.initramfs)
        .arg("--cmdline")
        .arg(&kernel_cmdline)
        .arg("--memory")
        .arg(VM_MEMORY)
        .arg("--json")
        .output()
        .step("run cvm-measure expected")?;
    check(
        expected.status.success(),
        format!(
            "cvm-measure expected: {}",
            String::from_utf8_lossy(&expected.stderr)
        ),
    )?;
    std::fs::write(&expected_path, &expected.stdout).step("write expected.json")?;
    let verify = |json: bool| {
        let mut cmd = Command::new(&options.cvm_measure);
        cmd.arg("verify")
            .arg("--event-log")
            .arg(&quote_path)
            .arg("--app-compose")
            .arg(&compose_path)
            .arg("--challenge")
            .arg(&challenge)
            .arg("--kms-identity")
            .arg(kms_keys.key_provider_id())
            .arg("--expected")
            .arg(&expected_path)
            // The test KMS runs on the host, not in a TD: there is no KMS quote to check. The
            // platform lines need no skip: over simulated evidence they are SIMULATED anyway.
            .arg("--skip")
            .arg("kms-attestation");
        if json {
            cmd.arg("--json");
        }
        cmd.output()
    };
    let text = verify(false).step("run cvm-measure verify")?;
    let json = verify(true).step("run cvm-measure verify --json")?;
    let checklist_json: serde_json::Value =
        serde_json::from_slice(&json.stdout).step("parse cvm-measure verify --json")?;

    vm.system_powerdown().step("ACPI power-off")?;
    vm.wait_for_event("power_off", STEP_TIMEOUT)
        .step("wait for power-off")?;
    let exit = vm.wait_for_exit(STEP_TIMEOUT).step("wait for QEMU")?;
    check(exit.success(), format!("QEMU exit {exit:?}"))?;
    let records = vm.records().step("read the results channel")?;
    let results_raw =
        std::fs::read(vm.tmpdir().join("results.jsonl")).step("read the results channel file")?;
    let kms_requests = kms.requests();
    kms.stop();
    drop(registry);
    Ok(DemoReport {
        page,
        attest,
        challenge,
        app_id: hex::encode(&app_id),
        compose_hash: hex::encode(compose_hash),
        checklist: String::from_utf8_lossy(&text.stdout).into_owned(),
        checklist_json,
        verdict: String::from_utf8_lossy(&text.stderr).trim().to_owned(),
        records,
        results_raw,
        console: vm.console(),
        kms_requests,
        app_answered_after,
        emitted_after_fill,
        worker,
        gateway,
    })
}

/// A test gateway and the loopback ports it keeps across a restart.
struct GatewayPorts {
    gateway: test_gateway::TestGateway,
    https_port: u16,
    udp_port: u16,
}

impl GatewayPorts {
    fn bind(
        kms_keys: &KmsKeys,
        https_port: u16,
        udp_port: u16,
    ) -> Result<test_gateway::TestGateway, DemoError> {
        // A restarted gateway takes the same ports: retry while the old sockets close.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let bound = TcpListener::bind(("127.0.0.1", https_port)).and_then(|tcp| {
                std::net::UdpSocket::bind(("127.0.0.1", udp_port)).map(|udp| (tcp, udp))
            });
            match bound {
                Ok((tcp, udp)) => {
                    let endpoint =
                        format!("10.0.2.2:{}", udp.local_addr().step("UDP address")?.port());
                    return test_gateway::start(
                        kms_keys,
                        &test_gateway::DEFAULT_APP_ID,
                        tcp,
                        udp,
                        &endpoint,
                    )
                    .step("start the test gateway");
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(e).step("bind the test gateway's ports");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn start(kms_keys: &KmsKeys) -> Result<Self, DemoError> {
        let gateway = Self::bind(kms_keys, 0, 0)?;
        let https_port = gateway.https_addr().port();
        // The UDP port the first gateway got (the guest endpoint names it).
        let udp_port = gateway.udp_port();
        Ok(Self {
            gateway,
            https_port,
            udp_port,
        })
    }

    /// The URL the guest registers at (QEMU user networking maps 10.0.2.2 to the host).
    fn guest_url(&self) -> String {
        format!("https://10.0.2.2:{}", self.https_port)
    }

    /// Registration observed, the page through the tunnel, a restarted gateway registered
    /// again by the refresher and serving the page.
    /// With `refresher_fault`, the restarted gateway must also see the restarted refresher's
    /// registration (a second one) before its page is fetched.
    fn exercise(
        self,
        kms_keys: &KmsKeys,
        vm: &mut RunningVm,
        refresher_fault: bool,
    ) -> Result<GatewaySeen, DemoError> {
        let wait_registered = |g: &test_gateway::TestGateway, vm: &mut RunningVm, count: usize| {
            let deadline = Instant::now() + STEP_TIMEOUT;
            loop {
                let seen = g.registrations();
                if seen.len() >= count {
                    return Ok(seen);
                }
                if vm.try_exit().step("watch QEMU")?.is_some() || Instant::now() > deadline {
                    return Err(DemoError::Check {
                        what: format!(
                            "no gateway registration (requests {:?}):\n{}",
                            g.requests(),
                            vm.report()
                        ),
                    });
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        };
        let first_key = self.gateway.wg_public_key();
        let registrations = wait_registered(&self.gateway, vm, 1)?;
        let tunnel_page = self
            .gateway
            .http_get(APP_PORT, "/", Duration::from_secs(120))
            .step("GET / through the WireGuard tunnel")?;
        self.gateway.stop();
        let restarted = Self::bind(kms_keys, self.https_port, self.udp_port)?;
        let second_key = restarted.wg_public_key();
        let reregistrations = wait_registered(&restarted, vm, if refresher_fault { 2 } else { 1 })?;
        let tunnel_page_after_restart = restarted
            .http_get(APP_PORT, "/", Duration::from_secs(120))
            .step("GET / through the restarted gateway's tunnel")?;
        restarted.stop();
        Ok(GatewaySeen {
            registrations,
            tunnel_page,
            reregistrations,
            tunnel_page_after_restart,
            gateway_keys: (first_key, second_key),
            refresher_fault,
        })
    }
}

impl DemoReport {
    /// [`DemoOptions::gateway_refresher_fault`]: the refresher was restarted by PID 1 and
    /// registered again, every registration after the gateway's restart with a renewed
    /// (each a different) client certificate.
    fn refresher_problems(&self, g: &GatewaySeen) -> Vec<String> {
        let mut out = Vec::new();
        let service = |name: &str| {
            crate::results::raw_records(&self.records, name)
                .into_iter()
                .filter(|r| r["service"] == "gateway-refresh")
                .count()
        };
        if service("restarting") == 0 || service("restarted") == 0 {
            out.push("no restarting/restarted records for gateway-refresh".to_owned());
        }
        if g.reregistrations.len() < 2 {
            out.push(format!(
                "the restarted refresher did not register again ({} registrations)",
                g.reregistrations.len()
            ));
        }
        let boot_cert = g.registrations.first().map(|r| &r.client_cert);
        if g.reregistrations
            .iter()
            .any(|r| Some(&r.client_cert) == boot_cert)
        {
            out.push("a refresh presented the boot's client certificate (not renewed)".to_owned());
        }
        if let [first, second, ..] = &g.reregistrations[..]
            && first.client_cert == second.client_cert
        {
            out.push("the restarted refresher did not renew the certificate again".to_owned());
        }
        out
    }

    /// The demo's acceptance: the page shows this app's identity and the challenge's report
    /// data; every checklist line passes except the platform lines, which are marked
    /// SIMULATED; the verdict rejects simulated evidence; the env value never reached the
    /// console. Returns what failed.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let want = |out: &mut Vec<String>, ok: bool, what: &str| {
            if !ok {
                out.push(what.to_owned());
            }
        };
        want(
            &mut out,
            self.page.contains(&self.app_id),
            "the page does not show the app-id",
        );
        want(
            &mut out,
            self.page.contains(&self.compose_hash),
            "the page does not show the compose-hash",
        );
        let report_data = self.attest["quote"]["report_data"]
            .as_str()
            .unwrap_or_default();
        want(
            &mut out,
            report_data.starts_with(&self.challenge),
            "the quote's report data does not start with the challenge",
        );
        let lines = self.checklist_json.as_array().cloned().unwrap_or_default();
        want(&mut out, !lines.is_empty(), "no checklist");
        for line in &lines {
            let status = line["status"].as_str().unwrap_or_default();
            let section = line["section"].as_str().unwrap_or_default();
            let ok = match section {
                "platform" => status == "Simulated",
                _ => {
                    status == "Pass"
                        || (status == "Skipped"
                            && line["name"] == "kms-attestation"
                            && line["reason"]
                                .as_str()
                                .is_some_and(|r| r.starts_with("requested")))
                }
            };
            if !ok {
                out.push(format!("checklist line not as expected: {line}"));
            }
        }
        want(
            &mut out,
            self.verdict.contains("INSECURE simulated TEE"),
            "cvm-measure did not reject the simulated evidence",
        );
        want(
            &mut out,
            !self.console.contains(ENV_VALUE),
            "the env value reached the console",
        );
        if let Some(g) = &self.gateway {
            want(
                &mut out,
                g.registrations.iter().all(|r| r.app_id == self.app_id)
                    && !g.registrations.is_empty(),
                "the gateway did not see a registration of this app",
            );
            want(
                &mut out,
                g.tunnel_page.0 == 200 && g.tunnel_page.1.contains(&self.app_id),
                "the page did not come through the WireGuard tunnel",
            );
            want(
                &mut out,
                g.gateway_keys.0 != g.gateway_keys.1
                    && g.reregistrations.iter().any(|r| r.app_id == self.app_id),
                "the restarted gateway was not registered again",
            );
            want(
                &mut out,
                g.reregistrations.iter().all(|r| {
                    Some(r.client_public_key)
                        == g.registrations.first().map(|f| f.client_public_key)
                }),
                "the refresher registered another WireGuard key",
            );
            want(
                &mut out,
                g.tunnel_page_after_restart.0 == 200
                    && g.tunnel_page_after_restart.1.contains(&self.app_id),
                "the page did not come through the restarted gateway's tunnel",
            );
            if g.refresher_fault {
                out.extend(self.refresher_problems(g));
            }
        }
        let info: serde_json::Value = serde_json::from_str(&self.worker.info.1).unwrap_or_default();
        want(
            &mut out,
            self.worker.info.0 == 200 && info["app_id"] == self.app_id.as_str(),
            &format!(
                "Worker.Info on :8090 is not this app: {:?}",
                self.worker.info
            ),
        );
        want(
            &mut out,
            self.worker.logs.0 == 200 && self.worker.logs.1.contains("demo-app: listening"),
            &format!(
                "/logs/demo on :8090 (public_logs) did not answer the app's log: {:?}",
                self.worker.logs
            ),
        );
        want(
            &mut out,
            self.worker.metrics.0 == 200
                && self.worker.metrics.1.contains("cvm_memory_total_bytes "),
            &format!(
                "/metrics on :8090 (public_sysinfo) did not answer: {:?}",
                self.worker.metrics
            ),
        );
        // Docker's default seccomp profile is applied to the plain demo container (issue 22).
        for verdict in SECCOMP_VERDICTS {
            want(
                &mut out,
                self.console.contains(verdict),
                &format!("seccomp: no {verdict:?} on the console"),
            );
        }
        if let Some((status, body)) = &self.emitted_after_fill {
            for verdict in CONFINE_VERDICTS {
                want(
                    &mut out,
                    self.console.contains(verdict),
                    &format!("device confinement: no {verdict:?} on the console"),
                );
            }
            want(
                &mut out,
                !self.console.contains("-ALLOWED"),
                "device confinement breached (a `-ALLOWED` line on the console)",
            );
            want(
                &mut out,
                self.console.contains("No space left on device"),
                "the filler never hit ENOSPC: /run was not full",
            );
            if *status != 200 {
                out.push(format!(
                    "EmitEvent after the fill answered {status}: {body}"
                ));
            }
            // The quote's log (replayed against RTMR3 by the checklist above) holds the event.
            let in_log = self.attest["quote"]["event_log"]
                .as_str()
                .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .any(|e| e["event"] == AFTER_FILL_EVENT);
            want(
                &mut out,
                in_log,
                "the event emitted after the fill is not in the quote's event log",
            );
        }
        out
    }

    /// The human summary `cargo xtask demo` prints.
    pub fn summary(&self) -> String {
        format!(
            "app answered {:.1} s after QEMU started (TCG)\n\n--- GET / ---\n{}\n--- GET /attest?challenge={} ---\nreport_data {}\nquote {} bytes, event log {} events\n\n--- cvm-measure verify ---\n{}{}\n",
            self.app_answered_after,
            self.page.trim(),
            self.challenge,
            self.attest["quote"]["report_data"].as_str().unwrap_or("?"),
            self.attest["quote"]["quote"]
                .as_str()
                .map_or(0, |q| q.len() / 2),
            self.attest["quote"]["event_log"]
                .as_str()
                .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .and_then(|v| v.as_array().map(Vec::len))
                .unwrap_or(0),
            self.checklist,
            self.verdict
        ) + &self.confinement_lines()
    }

    /// The console lines of the confinement probes (seccomp, devices), for the summary.
    fn confinement_lines(&self) -> String {
        let lines: Vec<&str> = self
            .console
            .lines()
            .filter(|l| {
                l.contains("demo-app: probe ")
                    || CONFINE_VERDICTS.iter().any(|v| l.contains(v))
                    || l.contains("-ALLOWED")
                    || l.contains("early: root moved")
            })
            .collect();
        format!("\n--- confinement (issue 22) ---\n{}\n", lines.join("\n"))
    }
}
