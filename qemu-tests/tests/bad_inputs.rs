//! The bad-input matrix (issue 10, item 2): one table of hostile or broken inputs — kernel
//! command line, host-share files, app-compose.json, the compose YAML, the encrypted env — each
//! booted once under TCG. For every case the test requires:
//!
//! * a `fatal` record in the expected stage whose error chain starts with exactly the expected
//!   messages (the variant texts the init reports, outermost first; an entry ending in `*` is
//!   a prefix, for messages that embed a parser position or a random id);
//! * no `ready`, no `container` record and no `workloads` record (no workload started);
//! * nothing secret on the console or the results channel: the test disk key
//!   (`cvm.test_disk_key`, except where the kernel itself echoes its command line) and every
//!   env value, in raw, hex and base64 spellings;
//! * where the failure comes before the `disk` stage: a 16 MiB data disk attached read-write is
//!   byte-identical (sha256) after the boot.
//!
//! Runtime: the cases boot one after another in one `#[test]` (the image is built once). On the
//! 2-core CI box a host-share or cmdline case takes ~5-8 s, a KMS case ~15-25 s; the whole
//! table about 5 minutes (printed at the end). Set `BAD_INPUTS_ONLY=<substring>[,<substring>...]` to run
//! only the matching cases.
#![cfg(any(feature = "qemu", qemu_testenv, clippy))]

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result, bail, ensure};
    use cvm_keys::env::{encrypt_blob, env_plaintext};
    use qemu_tests::host_share::build_image_sized as build_share_image;
    use qemu_tests::host_share::{HOST_SHARE_LABEL, ShareFile, kms_sys_config, sample_files};
    use qemu_tests::matrix::{console_without_cmdline_echo, find_needles};
    use qemu_tests::results::{events, raw_records};
    use qemu_tests::{CvmSetup, Record, RunningVm, data_disk};
    use sha2::{Digest, Sha256};
    use test_kms::{KmsHandle, KmsKeys, Policy, leak_needles};

    const TIMEOUT: Duration = Duration::from_secs(180);
    /// The disk key every case passes on the command line (a secret the init must not print).
    const TEST_DISK_KEY: &str = "5eb1c7e2a0d94f3b8c6e1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f";
    /// Env values of the KMS cases (secrets).
    const ENV_SECRET: &str = "bad-inputs-secret-value-91c3e7";
    const ENV_SECRET_2: &str = "second-secret-0f5a2d";
    /// A well-formed digest-pinned image reference (never pulled: every compose case fails
    /// while parsing).
    const IMAGE: &str =
        "busybox@sha256:1111111111111111111111111111111111111111111111111111111111111111";

    /// What the KMS cases change from a good KMS boot.
    #[derive(Debug, Clone, Default)]
    struct KmsCase {
        /// The env variables encrypted into `.encrypted-env`.
        vars: Vec<(String, String)>,
        /// Replaces the encrypted blob (truncate, garbage).
        mangle: Option<fn(Vec<u8>) -> Vec<u8>>,
        /// The KMS does not allow this compose-hash.
        disallow_compose: bool,
        /// app-compose pins another KMS's key_provider_id.
        wrong_pin: bool,
    }

    /// One case's inputs, built from the good baseline by the case's `build`.
    struct Inputs {
        /// app-compose.json as JSON (serialized unless `compose_bytes` is set).
        compose: serde_json::Value,
        /// Exact app-compose.json bytes (for inputs JSON cannot express).
        compose_bytes: Option<Vec<u8>>,
        /// Other share files (name → bytes); `.sys-config.json` included.
        files: Vec<ShareFile>,
        symlinks: Vec<(String, String)>,
        /// Extra command-line words.
        cmdline: String,
        /// Boot against the test KMS.
        kms: Option<KmsCase>,
        /// Share image size.
        share_mib: u64,
    }

    impl Inputs {
        fn baseline() -> Result<Self> {
            let mut compose = serde_json::Value::Null;
            let mut files = Vec::new();
            for f in sample_files()? {
                if f.name == "app-compose.json" {
                    compose = serde_json::from_slice(&f.contents)?;
                } else {
                    files.push(f);
                }
            }
            compose["kms_enabled"] = false.into();
            compose["docker_compose_file"] = "services: {}\n".into();
            Ok(Self {
                compose,
                compose_bytes: None,
                files,
                symlinks: Vec::new(),
                cmdline: String::new(),
                kms: None,
                share_mib: 16,
            })
        }

        fn set_file(&mut self, name: &str, contents: impl Into<Vec<u8>>) {
            self.files.retain(|f| f.name != name);
            self.files.push(ShareFile::new(name, contents));
        }

        fn yaml(&mut self, yaml: &str) {
            self.compose["docker_compose_file"] = yaml.into();
        }

        fn compose_text(&self) -> Result<Vec<u8>> {
            match &self.compose_bytes {
                Some(b) => Ok(b.clone()),
                None => Ok(serde_json::to_vec_pretty(&self.compose)?),
            }
        }

        fn kms(&mut self, case: KmsCase) {
            self.kms = Some(case);
        }
    }

    /// One row of the table.
    struct Case {
        name: &'static str,
        build: fn(&mut Inputs) -> Result<()>,
        stage: &'static str,
        /// The first messages of the fatal record's chain, outermost first; `*` at the end of
        /// an entry makes it a prefix.
        chain: &'static [&'static str],
    }

    fn service(extra: &str) -> String {
        format!("services:\n  app:\n    image: {IMAGE}\n{extra}")
    }

    fn good_env() -> Vec<(String, String)> {
        vec![
            ("API_KEY".into(), ENV_SECRET.into()),
            ("MODE".into(), ENV_SECRET_2.into()),
        ]
    }

    #[allow(clippy::too_many_lines)]
    fn cases() -> Vec<Case> {
        vec![
            // --- kernel command line -------------------------------------------------------
            Case {
                name: "cmdline-unknown-key",
                build: |i| {
                    i.cmdline = "cvm.bogus=1".into();
                    Ok(())
                },
                stage: "cmdline",
                chain: &["unknown kernel command line key `cvm.bogus` (known: *"],
            },
            Case {
                name: "cmdline-duplicate-key",
                build: |i| {
                    i.cmdline = "cvm.on_ready=wait".into();
                    Ok(())
                },
                stage: "cmdline",
                chain: &["kernel command line key `cvm.on_ready` is given twice"],
            },
            Case {
                name: "cmdline-bad-value",
                build: |i| {
                    i.cmdline = "cvm.data_device=vdb".into();
                    Ok(())
                },
                stage: "cmdline",
                chain: &["invalid value `vdb` for `cvm.data_device`: expected *"],
            },
            // --- host share files ----------------------------------------------------------
            Case {
                name: "share-symlink",
                build: |i| {
                    i.set_file("real.json", serde_json::to_vec(&i.compose)?);
                    i.symlinks
                        .push(("app-compose.json".into(), "real.json".into()));
                    Ok(())
                },
                stage: "host-share",
                chain: &["host share file /run/cvm/host-share.mnt/app-compose.json is a symlink"],
            },
            Case {
                name: "share-app-compose-over-cap",
                build: |i| {
                    // 50 MiB + 1 of JSON whitespace around a valid document.
                    let mut bytes = serde_json::to_vec(&i.compose)?;
                    bytes.resize(50 * 1024 * 1024 + 1, b' ');
                    i.compose_bytes = Some(bytes);
                    i.share_mib = 80;
                    Ok(())
                },
                stage: "host-share",
                chain: &["host share file app-compose.json is 52428801 bytes, cap is 52428800"],
            },
            Case {
                name: "share-sys-config-over-cap",
                build: |i| {
                    i.set_file(".sys-config.json", vec![b' '; 32 * 1024 + 1]);
                    Ok(())
                },
                stage: "host-share",
                chain: &["host share file .sys-config.json is 32769 bytes, cap is 32768"],
            },
            Case {
                name: "share-encrypted-env-over-cap",
                build: |i| {
                    i.set_file(".encrypted-env", vec![0xA5; 256 * 1024 + 1]);
                    Ok(())
                },
                stage: "host-share",
                chain: &["host share file .encrypted-env is 262145 bytes, cap is 262144"],
            },
            Case {
                name: "share-sys-config-garbage",
                build: |i| {
                    i.set_file(".sys-config.json", b"\x00\x01not json at all\xff".to_vec());
                    Ok(())
                },
                stage: "host-share",
                chain: &[
                    "parse .sys-config.json",
                    "expected value at line 1 column 1",
                ],
            },
            Case {
                name: "share-vm-config-garbage",
                build: |i| {
                    let sys = serde_json::json!({
                        "kms_urls": [], "gateway_urls": [], "pccs_url": "",
                        "docker_registry": null, "host_api_url": "", "vm_config": "{{{",
                    });
                    i.set_file(".sys-config.json", serde_json::to_vec(&sys)?);
                    Ok(())
                },
                stage: "host-share",
                chain: &[
                    "parse vm_config in .sys-config.json",
                    "key must be a string at line 1 column 2",
                ],
            },
            Case {
                name: "instance-info-garbage",
                build: |i| {
                    i.set_file(".instance_info", b"[1,2,".to_vec());
                    Ok(())
                },
                stage: "host-share",
                chain: &[
                    "parse .instance_info",
                    "invalid type: integer `1`, expected a string at line 1 column 2",
                ],
            },
            Case {
                name: "instance-info-not-hex",
                build: |i| {
                    i.set_file(".instance_info", br#"{"instance_id_seed":"zz"}"#.to_vec());
                    Ok(())
                },
                stage: "host-share",
                chain: &[
                    "field instance_id_seed of .instance_info is not hex",
                    "Invalid character 'z' at position 0",
                ],
            },
            Case {
                name: "instance-info-short-app-id",
                build: |i| {
                    let id = "ab".repeat(19);
                    i.set_file(".instance_info", format!(r#"{{"app_id":"{id}"}}"#));
                    Ok(())
                },
                stage: "measure",
                chain: &[
                    "derive app identity",
                    "pinned app_id has 19 bytes, expected 20",
                ],
            },
            // --- app-compose.json ----------------------------------------------------------
            Case {
                name: "compose-kms-enabled-string",
                build: |i| {
                    i.compose["kms_enabled"] = "yes".into();
                    Ok(())
                },
                stage: "host-share",
                chain: &[
                    "parse app-compose.json",
                    "invalid type: string \"yes\", expected a boolean*",
                ],
            },
            Case {
                name: "compose-allowed-envs-number",
                build: |i| {
                    i.compose["allowed_envs"] = 5.into();
                    Ok(())
                },
                stage: "host-share",
                chain: &[
                    "parse app-compose.json",
                    "invalid type: integer `5`, expected a sequence*",
                ],
            },
            Case {
                name: "compose-duplicate-key",
                build: |i| {
                    let text = String::from_utf8(serde_json::to_vec_pretty(&i.compose)?)?;
                    let dup = text.replacen("{", "{\n  \"name\": \"other-app\",", 1);
                    i.compose_bytes = Some(dup.into_bytes());
                    Ok(())
                },
                stage: "host-share",
                chain: &["parse app-compose.json", "duplicate field `name`*"],
            },
            Case {
                name: "compose-non-utf8",
                build: |i| {
                    let text = serde_json::to_vec_pretty(&i.compose)?;
                    let mut bytes = Vec::new();
                    let needle = b"\"name\": \"";
                    let at = text
                        .windows(needle.len())
                        .position(|w| w == needle)
                        .context("name field")?
                        + needle.len();
                    bytes.extend_from_slice(&text[..at]);
                    bytes.extend_from_slice(b"\xff\xfe");
                    bytes.extend_from_slice(&text[at..]);
                    i.compose_bytes = Some(bytes);
                    Ok(())
                },
                stage: "host-share",
                chain: &["parse app-compose.json", "invalid unicode code point*"],
            },
            Case {
                name: "compose-lone-surrogate",
                build: |i| {
                    let text = String::from_utf8(serde_json::to_vec_pretty(&i.compose)?)?;
                    let bad = text.replacen("\"name\": \"", "\"name\": \"\\ud800", 1);
                    i.compose_bytes = Some(bad.into_bytes());
                    Ok(())
                },
                stage: "host-share",
                chain: &[
                    "parse app-compose.json",
                    "unexpected end of hex escape at line 11 column 18",
                ],
            },
            Case {
                name: "compose-manifest-version-4",
                build: |i| {
                    i.compose["manifest_version"] = 4.into();
                    Ok(())
                },
                stage: "host-share",
                chain: &["unsupported manifest_version 4"],
            },
            Case {
                name: "key-provider-none-with-pin",
                build: |i| {
                    i.compose["key_provider"] = "none".into();
                    i.compose["key_provider_id"] = "ab".repeat(32).into();
                    Ok(())
                },
                stage: "host-share",
                chain: &["key_provider_id must be empty for key provider none"],
            },
            Case {
                name: "kms-unpinned-but-required",
                build: |i| {
                    i.compose["key_provider"] = "kms".into();
                    i.compose["key_provider_id"] = "".into();
                    i.compose["require_pinned_kms"] = true.into();
                    Ok(())
                },
                stage: "host-share",
                chain: &[
                    "require_pinned_kms is set but key_provider_id is empty: the host could choose the KMS",
                ],
            },
            Case {
                name: "key-provider-tpm-unsupported",
                build: |i| {
                    i.compose["key_provider"] = "tpm".into();
                    Ok(())
                },
                stage: "keys",
                chain: &["key provider tpm is not supported by this build"],
            },
            Case {
                name: "encrypted-env-without-kms",
                build: |i| {
                    i.set_file(".encrypted-env", vec![0x42; 128]);
                    Ok(())
                },
                stage: "keys",
                chain: &["key provider none: .encrypted-env cannot be decrypted without a KMS"],
            },
            // --- app-compose gates (measure stage, before anything is measured) ------------
            Case {
                name: "gate-os-version",
                build: |i| {
                    i.compose["manifest_version"] = "3".into();
                    i.compose["requirements"] = serde_json::json!({"os_version": ">=0.6"});
                    Ok(())
                },
                stage: "measure",
                chain: &[
                    "app-compose.json asks for what this image does not allow: requirements.os_version: the app requires OS version `>=0.6`; this image is 0.5.11",
                ],
            },
            Case {
                name: "gate-platforms",
                build: |i| {
                    i.compose["manifest_version"] = "3".into();
                    i.compose["requirements"] =
                        serde_json::json!({"platforms": ["dstack-gcp-tdx"]});
                    Ok(())
                },
                stage: "measure",
                chain: &[
                    "app-compose.json asks for what this image does not allow: requirements.platforms: the app runs on [\"dstack-gcp-tdx\"]; this image is `dstack-tdx`",
                ],
            },
            Case {
                name: "gate-acpi-tables",
                build: |i| {
                    i.compose["manifest_version"] = "3".into();
                    i.compose["requirements"] =
                        serde_json::json!({"tdx_measure_acpi_tables": true});
                    Ok(())
                },
                stage: "measure",
                chain: &[
                    "app-compose.json asks for what this image does not allow: requirements.tdx_measure_acpi_tables: true needs vm_config.tdx_attestation_variant `legacy`; the VMM gave *",
                ],
            },
            Case {
                name: "gate-secure-time",
                build: |i| {
                    i.compose["secure_time"] = true.into();
                    Ok(())
                },
                stage: "measure",
                chain: &[
                    "app-compose.json asks for what this image does not allow: secure_time: true (dstack's default) waits for NTS-authenticated time*",
                ],
            },
            Case {
                name: "gate-init-script",
                build: |i| {
                    i.compose["init_script"] = "mount -t tmpfs none /mnt".into();
                    Ok(())
                },
                stage: "measure",
                chain: &[
                    "app-compose.json asks for what this image does not allow: init_script: bash scripts cannot run*",
                ],
            },
            Case {
                name: "gate-pre-launch-script",
                build: |i| {
                    i.compose["pre_launch_script"] = "docker login".into();
                    Ok(())
                },
                stage: "measure",
                chain: &[
                    "app-compose.json asks for what this image does not allow: pre_launch_script: bash scripts cannot run*",
                ],
            },
            Case {
                name: "gate-swap",
                build: |i| {
                    i.compose["swap_size"] = "1G".into();
                    Ok(())
                },
                stage: "measure",
                chain: &[
                    "app-compose.json asks for what this image does not allow: swap_size: 1073741824 bytes of swap asked*",
                ],
            },
            Case {
                name: "gate-verity-volumes",
                build: |i| {
                    i.compose["verity_volumes"] = serde_json::json!([{"source": "d.img", "verity_root": "00", "target": "/data"}]);
                    Ok(())
                },
                stage: "measure",
                chain: &[
                    "app-compose.json asks for what this image does not allow: verity_volumes: 1 dm-verity data volume(s) asked*",
                ],
            },
            Case {
                name: "env-pin-mismatch",
                build: |i| {
                    i.compose["encrypted_env_sha256"] = "00".repeat(32).into();
                    Ok(())
                },
                stage: "measure",
                chain: &[
                    "app-compose pins encrypted_env_sha256 0000000000000000000000000000000000000000000000000000000000000000 but the host share's .encrypted-env is absent: refusing*",
                ],
            },
            // --- compose YAML (workloads stage, after the disk: no disk attached) ----------
            Case {
                name: "yaml-unknown-key",
                build: |i| {
                    i.yaml(&service("    frobnicate: true\n"));
                    Ok(())
                },
                stage: "workloads",
                chain: &[
                    "parse docker_compose_file",
                    "services.app: unknown key \"frobnicate\"",
                ],
            },
            Case {
                name: "yaml-tag-only-image",
                build: |i| {
                    i.yaml("services:\n  app:\n    image: busybox:latest\n");
                    Ok(())
                },
                stage: "workloads",
                chain: &[
                    "parse docker_compose_file",
                    "services.app.image",
                    "image \"busybox:latest\" is not pinned by digest (name@sha256:<64 hex> is required); run `cvm-measure compose pin` to pin it",
                ],
            },
            Case {
                name: "yaml-port-clash",
                build: |i| {
                    i.yaml(&format!(
                        "services:\n  a:\n    image: {IMAGE}\n    ports: [\"8080:8080\"]\n  b:\n    image: {IMAGE}\n    ports: [\"8080:8080\"]\n"
                    ));
                    Ok(())
                },
                stage: "workloads",
                chain: &[
                    "parse docker_compose_file",
                    "port 8080/tcp is published by both a and b (host networking shares one port space)",
                ],
            },
            Case {
                name: "yaml-env-file",
                build: |i| {
                    i.yaml(&service("    env_file: [\".env\"]\n"));
                    Ok(())
                },
                stage: "workloads",
                chain: &[
                    "parse docker_compose_file",
                    "services.app.env_file: env_file is refused: the files are not in the VM and the host file system is not trusted; use `environment` with the encrypted env",
                ],
            },
            Case {
                name: "yaml-host-bind",
                build: |i| {
                    i.yaml(&service("    volumes: [\"/etc:/host-etc\"]\n"));
                    Ok(())
                },
                stage: "workloads",
                chain: &[
                    "parse docker_compose_file",
                    "services.app.volumes: host bind of \"/etc\" is refused: the host file system is not trusted (only /var/run/dstack.sock and /var/run/tappd.sock may be bound); use a named volume",
                ],
            },
            Case {
                // Issue 22: a `devices:` mapping of a node no container gets (stat'ed in the
                // guest: /dev/kmsg is char 1:11) fails the stage with the reason.
                name: "yaml-device-kmsg",
                build: |i| {
                    i.yaml(&service("    devices: [\"/dev/kmsg:/dev/log0:r\"]\n"));
                    Ok(())
                },
                stage: "workloads",
                chain: &[
                    "devices of app",
                    "refused device mapping",
                    "device /dev/kmsg (c 1:11) is never granted to a container: /dev/kmsg (the kernel log, which the host reads on the console); only a privileged service (app-compose allow_privileged) gets it",
                ],
            },
            Case {
                name: "yaml-nul-in-service-name",
                build: |i| {
                    i.yaml(&format!("services:\n  \"a\\0b\":\n    image: {IMAGE}\n"));
                    Ok(())
                },
                stage: "workloads",
                chain: &[
                    "parse docker_compose_file",
                    "services.a\\0b: service names are [A-Za-z0-9._-], at most 63, starting alphanumeric",
                ],
            },
            Case {
                name: "yaml-nul-in-volume-path",
                build: |i| {
                    i.yaml(&service(
                        "    volumes: [\"data:/da\\0ta\"]\nvolumes:\n  data: {}\n",
                    ));
                    Ok(())
                },
                stage: "workloads",
                chain: &[
                    "parse docker_compose_file",
                    "services.app.volumes[0]: expected a mapping",
                ],
            },
            Case {
                name: "yaml-garbage",
                build: |i| {
                    i.yaml("services: [ {{ : ] \u{1}\n\t- -");
                    Ok(())
                },
                stage: "workloads",
                chain: &[
                    "parse docker_compose_file",
                    "not valid YAML",
                    "control characters are not allowed at position 19",
                ],
            },
            Case {
                name: "yaml-huge",
                build: |i| {
                    // 4 MiB of services (well under app-compose's 50 MiB cap), the last one
                    // refused: the parser must get through all of it and still name it.
                    let mut yaml = String::from("services:\n");
                    let mut n = 0;
                    while yaml.len() < 4 << 20 {
                        yaml.push_str(&format!("  s{n}:\n    image: {IMAGE}\n"));
                        n += 1;
                    }
                    yaml.push_str("  last:\n    image: busybox\n");
                    i.yaml(&yaml);
                    Ok(())
                },
                stage: "workloads",
                chain: &[
                    "parse docker_compose_file",
                    "services.last.image",
                    "image \"busybox\" is not pinned by digest (name@sha256:<64 hex> is required); run `cvm-measure compose pin` to pin it",
                ],
            },
            // --- KMS and the encrypted env (keys stage, before the disk) -------------------
            Case {
                name: "kms-env-name-not-allowed",
                build: |i| {
                    let mut vars = good_env();
                    vars.push(("LD_PRELOAD".into(), "/tmp/evil.so".into()));
                    i.kms(KmsCase {
                        vars,
                        ..KmsCase::default()
                    });
                    Ok(())
                },
                stage: "keys",
                chain: &[
                    "decrypt the environment",
                    "env name LD_PRELOAD is not in allowed_envs",
                ],
            },
            Case {
                name: "kms-env-name-nul",
                build: |i| {
                    let mut vars = good_env();
                    vars.push(("API\0KEY".into(), ENV_SECRET.into()));
                    i.kms(KmsCase {
                        vars,
                        ..KmsCase::default()
                    });
                    Ok(())
                },
                stage: "keys",
                chain: &[
                    "decrypt the environment",
                    "env name \"API\\0KEY\" is not a valid variable name",
                ],
            },
            Case {
                name: "kms-env-truncated",
                build: |i| {
                    i.kms(KmsCase {
                        vars: good_env(),
                        mangle: Some(|b| b[..20.min(b.len())].to_vec()),
                        ..KmsCase::default()
                    });
                    Ok(())
                },
                stage: "keys",
                chain: &[
                    "decrypt the environment",
                    "encrypted env is 20 bytes, expected 60..=262144",
                ],
            },
            Case {
                name: "kms-env-garbage",
                build: |i| {
                    i.kms(KmsCase {
                        vars: good_env(),
                        mangle: Some(|b| {
                            // A valid length, an ephemeral key that is not low-order, random
                            // ciphertext: authentication must fail.
                            let mut out = Sha256::digest(b"eph").to_vec();
                            let mut x = 7u8;
                            out.extend((32..b.len()).map(|_| {
                                x = x.wrapping_mul(31).wrapping_add(11);
                                x
                            }));
                            out
                        }),
                        ..KmsCase::default()
                    });
                    Ok(())
                },
                stage: "keys",
                chain: &["decrypt the environment", "authentication failed"],
            },
            Case {
                name: "kms-key-provider-id-mismatch",
                build: |i| {
                    i.kms(KmsCase {
                        vars: good_env(),
                        wrong_pin: true,
                        ..KmsCase::default()
                    });
                    Ok(())
                },
                stage: "keys",
                chain: &[
                    "request app keys from the KMS",
                    "*is not the pinned key provider: KMS root key*",
                ],
            },
            Case {
                name: "kms-compose-hash-not-allowed",
                build: |i| {
                    i.kms(KmsCase {
                        vars: good_env(),
                        disallow_compose: true,
                        ..KmsCase::default()
                    });
                    Ok(())
                },
                stage: "keys",
                chain: &[
                    "request app keys from the KMS",
                    "*was refused with HTTP 400: boot denied: compose hash*",
                ],
            },
        ]
    }

    /// `want` matches `got`: exact, or a prefix when `want` ends with `*`, or a substring when
    /// it also starts with `*`.
    fn message_matches(want: &str, got: &str) -> bool {
        match (want.strip_prefix('*'), want.strip_suffix('*')) {
            (Some(inner), Some(_)) => got.contains(inner.trim_end_matches('*')),
            (None, Some(prefix)) => got.starts_with(prefix),
            _ => want == got,
        }
    }

    /// The per-case environment: share image, disk, KMS.
    struct Built {
        _dir: tempfile::TempDir,
        share: PathBuf,
        disk: Option<PathBuf>,
        kms: Option<(KmsHandle, PathBuf)>,
        /// Secret strings that must not appear.
        secrets: Vec<Vec<u8>>,
    }

    /// Stages that run before `disk` (a failure there must leave the data disk untouched).
    const BEFORE_DISK: [&str; 7] = [
        "cmdline",
        "host-share",
        "measure",
        "network",
        "keys",
        "mount",
        "modules",
    ];

    fn build(case: &Case) -> Result<Built> {
        let dir = tempfile::tempdir()?;
        let mut inputs = Inputs::baseline()?;
        (case.build)(&mut inputs)?;
        let mut secrets = vec![TEST_DISK_KEY.as_bytes().to_vec()];
        let mut kms = None;
        if let Some(k) = inputs.kms.clone() {
            let keys = Arc::new(KmsKeys::generate(&[])?);
            let pin = if k.wrong_pin {
                KmsKeys::generate(&[])?.key_provider_id()
            } else {
                keys.key_provider_id()
            };
            inputs.compose["kms_enabled"] = true.into();
            inputs.compose["key_provider_id"] = pin.into();
            inputs.compose["allowed_envs"] = serde_json::json!(["API_KEY", "MODE"]);
            inputs.compose["secure_time"] = false.into();
            let compose = inputs.compose_text()?;
            let hash: [u8; 32] = Sha256::digest(&compose).into();
            let app_id = hash[..20].to_vec();
            let root_file = dir.path().join("sim-root.pem");
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let port = listener.local_addr()?.port();
            let handle = test_kms::start(
                Arc::clone(&keys),
                Policy::simulated_boot(
                    vec![if k.disallow_compose { [0x55; 32] } else { hash }],
                    root_file.clone(),
                ),
                listener,
            )?;
            let vars: Vec<(&str, &str)> = k
                .vars
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            let plaintext = env_plaintext(&vars);
            let mut blob = encrypt_blob(&keys.env_public_key(&app_id)?, plaintext.expose())?;
            if let Some(mangle) = k.mangle {
                blob = mangle(blob);
            }
            inputs.set_file(".encrypted-env", blob);
            let sys = kms_sys_config(&[format!("https://10.0.2.2:{port}")], 512 << 20);
            inputs.set_file(".sys-config.json", serde_json::to_vec(&sys)?);
            // Every key the KMS would derive for this app (the disk key with an empty
            // instance id: the real one is not known to the test before the boot).
            for s in keys.app_secrets(&app_id, &[])? {
                secrets.push(s.expose().clone());
            }
            for (_, v) in &k.vars {
                secrets.push(v.as_bytes().to_vec());
            }
            kms = Some((handle, root_file));
        }
        let mut files = inputs.files.clone();
        if !inputs.symlinks.iter().any(|(n, _)| n == "app-compose.json") {
            files.push(ShareFile::new("app-compose.json", inputs.compose_text()?));
        }
        let share = dir.path().join("share.img");
        build_share_image(
            &files,
            &inputs.symlinks,
            HOST_SHARE_LABEL,
            &dir.path().join("staging"),
            &share,
            inputs.share_mib,
        )?;
        let disk = if BEFORE_DISK.contains(&case.stage) {
            Some(data_disk::create(&dir.path().join("data.img"), 16)?)
        } else {
            None
        };
        Ok(Built {
            _dir: dir,
            share,
            disk,
            kms,
            secrets,
        })
    }

    fn boot(
        setup: &CvmSetup,
        case: &Case,
        built: &Built,
        inputs_cmdline: &str,
    ) -> Result<RunningVm> {
        let mut vm = setup.vm_with_share(&format!("bad-{}", case.name), &built.share);
        if let Some(disk) = &built.disk {
            vm = vm
                .with_qemu_arg("-drive")
                .with_qemu_arg(&data_disk::drive_arg(disk));
        }
        if built.kms.is_some() {
            vm = vm
                .with_qemu_arg("-netdev")
                .with_qemu_arg("user,id=n0")
                .with_qemu_arg("-device")
                .with_qemu_arg("virtio-net-pci,netdev=n0");
        }
        Ok(vm
            .with_cmdline(&format!(
                "cvm.on_ready=poweroff cvm.test_disk_key={TEST_DISK_KEY} {inputs_cmdline}"
            ))
            .boot()?)
    }

    /// Runs one case; `Ok(summary)` or the reason it failed.
    fn run_case(setup: &CvmSetup, case: &Case) -> Result<String> {
        let mut inputs = Inputs::baseline()?;
        (case.build)(&mut inputs)?;
        let built = build(case)?;
        let disk_before = built.disk.as_deref().map(data_disk::sha256).transpose()?;
        let mut vm = boot(setup, case, &built, &inputs.cmdline)?;
        if let Some((_, root_file)) = &built.kms {
            vm.hand_simulated_root_to(root_file, TIMEOUT)?;
        }
        let fatal = vm.wait_for_event("fatal", TIMEOUT);
        vm.wait_for_event("power_off", TIMEOUT)?;
        let exit = vm.wait_for_exit(TIMEOUT)?;
        let records = vm.records()?;
        let fatal = fatal.with_context(|| format!("no fatal record: {:?}", events(&records)))?;
        let Record::Fatal { stage, chain, .. } = &fatal else {
            bail!("not a fatal record: {fatal:?}");
        };
        let mut problems = Vec::new();
        if stage != case.stage {
            problems.push(format!("stage {stage:?}, want {:?}", case.stage));
        }
        let chain_ok = case.chain.len() <= chain.len()
            && case
                .chain
                .iter()
                .zip(chain)
                .all(|(want, got)| message_matches(want, got));
        if !chain_ok {
            problems.push(format!("chain {chain:?}, want {:?}", case.chain));
        }
        if !exit.success() {
            problems.push(format!("QEMU exit {:?}", exit.status));
        }
        if vm.console_shows_panic() {
            problems.push("kernel panic".into());
        }
        let names = events(&records);
        if names.contains(&"ready") {
            problems.push("ready after a fatal error".into());
        }
        for started in ["container", "workloads"] {
            if !raw_records(&records, started).is_empty() {
                problems.push(format!("a `{started}` record: a workload started"));
            }
        }
        // Secrets: every spelling, on the console (minus the kernel's cmdline echo) and the
        // results channel.
        let console = console_without_cmdline_echo(&vm.console());
        let results = std::fs::read(vm.tmpdir().join("results.jsonl")).unwrap_or_default();
        let mut needles: Vec<Vec<u8>> = Vec::new();
        for s in &built.secrets {
            needles.push(s.clone());
            needles.extend(leak_needles(s).into_iter().map(String::into_bytes));
        }
        for (what, hay) in [("console", console.as_bytes()), ("results", &results[..])] {
            if let Some((i, at)) = find_needles(hay, &needles).first() {
                problems.push(format!("secret spelling #{i} on the {what} at byte {at}"));
            }
        }
        if let (Some(disk), Some(before)) = (&built.disk, &disk_before)
            && &data_disk::sha256(disk)? != before
        {
            problems.push("the data disk changed although the boot failed before unlock".into());
        }
        if let Some((kms, _)) = built.kms {
            kms.stop();
        }
        ensure!(
            problems.is_empty(),
            "{}\n  actual chain: {chain:?}",
            problems.join("; ")
        );
        Ok(format!(
            "{stage}: {}",
            chain.last().map_or("", String::as_str)
        ))
    }

    /// The table in `PARTS` interleaved slices, one `#[test]` each, so the harness runs them
    /// side by side (one TCG VM per CPU).
    const PARTS: usize = 3;

    #[test]
    fn every_bad_input_is_refused_cleanly_part_1() -> Result<()> {
        run_part(0)
    }

    #[test]
    fn every_bad_input_is_refused_cleanly_part_2() -> Result<()> {
        run_part(1)
    }

    #[test]
    fn every_bad_input_is_refused_cleanly_part_3() -> Result<()> {
        run_part(2)
    }

    fn run_part(part: usize) -> Result<()> {
        let setup = CvmSetup::new()?;
        let only = std::env::var("BAD_INPUTS_ONLY").ok();
        let table = cases();
        ensure!(table.len() >= 24, "only {} cases", table.len());
        let mut names: Vec<&str> = table.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        ensure!(names.len() == table.len(), "duplicate case names");
        let started = Instant::now();
        let mut failed = Vec::new();
        let mut ran = 0;
        for case in table.iter().skip(part).step_by(PARTS) {
            if only
                .as_deref()
                .is_some_and(|o| !o.split(',').any(|o| case.name.contains(o)))
            {
                continue;
            }
            ran += 1;
            let t = Instant::now();
            match run_case(&setup, case) {
                Ok(summary) => println!(
                    "ok   {:<32} {:>5.1}s  {summary}",
                    case.name,
                    t.elapsed().as_secs_f64()
                ),
                Err(e) => {
                    println!(
                        "FAIL {:<32} {:>5.1}s  {e:#}",
                        case.name,
                        t.elapsed().as_secs_f64()
                    );
                    failed.push(format!("{}: {e:#}", case.name));
                }
            }
        }
        println!(
            "bad-input matrix part {}/{PARTS}: {ran} cases, {} failed, {:.0} s",
            part + 1,
            failed.len(),
            started.elapsed().as_secs_f64()
        );
        ensure!(ran > 0 || only.is_some(), "part {} ran no case", part + 1);
        ensure!(failed.is_empty(), "failing cases:\n{}", failed.join("\n"));
        Ok(())
    }

    #[test]
    fn matcher_is_exact_unless_starred() {
        assert!(message_matches("a b", "a b"));
        assert!(!message_matches("a b", "a b c"));
        assert!(message_matches("a *", "a b c"));
        assert!(!message_matches("a *", "b a"));
        assert!(message_matches("*x*", "a x b"));
        assert!(!message_matches("*x*", "a b"));
    }
}
