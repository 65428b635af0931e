//! `test-kms`: an INSECURE dstack-protocol KMS for QEMU tests and the demo.
//!
//! ```text
//! test-kms serve --state DIR [--listen 127.0.0.1:0] [--ready-file FILE]
//!                [--allow-compose-hash HEX]... [--allow-any-compose-hash]
//!                (--sim-pck-root FILE | --insecure-any-simulated-root)
//!                [--os-image-hash HEX] [--allow-os-image HEX=EXPECTED_JSON]...
//!                [--alt-name NAME]...
//! test-kms key-provider-id --state DIR
//! test-kms encrypt-env --state DIR --app-id HEX --out FILE [--env NAME=VALUE]...
//! ```
//!
//! `serve` loads the keys from DIR or creates them there (`root-ca.pem`, `key-provider-id`, …),
//! listens, writes the bound address to `--ready-file` once it accepts, and serves until killed.
//! `--allow-os-image HEX=FILE` (repeatable) allows the OS image whose `os_image_hash` is HEX
//! (`cvm-measure image-hash`) with the boot registers in FILE (`cvm-measure expected --json`);
//! once given, every other OS image, and a quote whose MRTD/RTMR0-2 are not the image's, is
//! refused keys.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use test_kms::{AllowedOsImage, KmsKeys, Policy, QuoteTrust};

fn usage() -> ExitCode {
    eprintln!(
        "usage: test-kms serve --state DIR [--listen ADDR] [--ready-file FILE] \
         [--allow-compose-hash HEX]... [--allow-any-compose-hash] \
         (--sim-pck-root FILE | --insecure-any-simulated-root) [--os-image-hash HEX] \
         [--allow-os-image HEX=EXPECTED_JSON]... [--alt-name NAME]...\n\
         \x20      test-kms key-provider-id --state DIR\n\
         \x20      test-kms encrypt-env --state DIR --app-id HEX --out FILE [--env NAME=VALUE]..."
    );
    ExitCode::from(2)
}

#[derive(Default)]
struct Args {
    state: Option<PathBuf>,
    listen: Option<String>,
    ready_file: Option<PathBuf>,
    allow: Vec<[u8; 32]>,
    allow_any: bool,
    trust: Option<QuoteTrust>,
    os_image_hash: Option<Vec<u8>>,
    os_images: Vec<AllowedOsImage>,
    alt_names: Vec<String>,
    app_id: Option<Vec<u8>>,
    out: Option<PathBuf>,
    env: Vec<(String, String)>,
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args::default();
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--state" => args.state = Some(value()?.into()),
            "--listen" => args.listen = Some(value()?),
            "--ready-file" => args.ready_file = Some(value()?.into()),
            "--allow-compose-hash" => {
                let v = value()?;
                let hash = hex::decode(&v)
                    .ok()
                    .and_then(|h| <[u8; 32]>::try_from(h).ok())
                    .ok_or(format!("{v} is not 32 bytes of hex"))?;
                args.allow.push(hash);
            }
            "--allow-any-compose-hash" => args.allow_any = true,
            "--sim-pck-root" => args.trust = Some(QuoteTrust::RootFile(value()?.into())),
            "--insecure-any-simulated-root" => {
                args.trust = Some(QuoteTrust::InsecureAnySimulatedRoot)
            }
            "--os-image-hash" => {
                args.os_image_hash =
                    Some(hex::decode(value()?).map_err(|_| "--os-image-hash is not hex")?);
            }
            "--allow-os-image" => {
                let v = value()?;
                let (hash, file) = v
                    .split_once('=')
                    .ok_or("--allow-os-image needs HEX=EXPECTED_JSON")?;
                let hash = hex::decode(hash)
                    .ok()
                    .and_then(|h| <[u8; 32]>::try_from(h).ok())
                    .ok_or(format!("{hash} is not 32 bytes of hex"))?;
                let json =
                    std::fs::read_to_string(file).map_err(|e| format!("read {file}: {e}"))?;
                args.os_images.push(
                    AllowedOsImage::from_expected_json(hash, &json)
                        .map_err(|e| format!("{file}: {e}"))?,
                );
            }
            "--alt-name" => args.alt_names.push(value()?),
            "--app-id" => {
                args.app_id = Some(hex::decode(value()?).map_err(|_| "--app-id is not hex")?)
            }
            "--out" => args.out = Some(value()?.into()),
            "--env" => {
                let v = value()?;
                let (k, val) = v.split_once('=').ok_or("--env needs NAME=VALUE")?;
                args.env.push((k.to_owned(), val.to_owned()));
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn run(command: &str, args: Args) -> Result<(), String> {
    let state = args.state.clone().ok_or("--state is required")?;
    let alt_names = if args.alt_names.is_empty() {
        vec!["localhost".into(), "127.0.0.1".into(), "10.0.2.2".into()]
    } else {
        args.alt_names.clone()
    };
    let keys =
        KmsKeys::load_or_generate(&state, &alt_names).map_err(|e| cvm_keys::error_chain(&e))?;
    match command {
        "key-provider-id" => {
            println!("{}", keys.key_provider_id());
            Ok(())
        }
        "encrypt-env" => {
            let app_id = args.app_id.ok_or("--app-id is required")?;
            let out = args.out.ok_or("--out is required")?;
            let public = keys
                .env_public_key(&app_id)
                .map_err(|e| cvm_keys::error_chain(&e))?;
            let pairs: Vec<(&str, &str)> = args
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let plaintext = cvm_keys::env::env_plaintext(&pairs);
            let blob = cvm_keys::env::encrypt_blob(&public, plaintext.expose())
                .map_err(|e| e.to_string())?;
            std::fs::write(&out, blob).map_err(|e| format!("write {}: {e}", out.display()))
        }
        "serve" => {
            let trust = args
                .trust
                .ok_or("--sim-pck-root FILE or --insecure-any-simulated-root is required")?;
            let allowed = if args.allow_any {
                None
            } else {
                Some(args.allow)
            };
            let listen = args.listen.unwrap_or_else(|| "127.0.0.1:0".into());
            let listener =
                TcpListener::bind(&listen).map_err(|e| format!("listen on {listen}: {e}"))?;
            let policy = Policy {
                allowed_compose_hashes: allowed,
                trust,
                os_image_hash: args.os_image_hash,
                allowed_os_image_hashes: (!args.os_images.is_empty()).then_some(args.os_images),
                gateway_app_id: String::new(),
            };
            let handle = test_kms::start(Arc::new(keys), policy, listener)
                .map_err(|e| cvm_keys::error_chain(&e))?;
            eprintln!(
                "test-kms: listening on {} (INSECURE: trusts simulated TEE quotes)",
                handle.addr
            );
            if let Some(ready) = &args.ready_file {
                std::fs::write(ready, handle.addr.to_string())
                    .map_err(|e| format!("write {}: {e}", ready.display()))?;
            }
            handle.wait();
            Ok(())
        }
        other => Err(format!("unknown command {other}")),
    }
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    let Some(command) = argv.next() else {
        return usage();
    };
    let args = match parse(argv) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("test-kms: {err}");
            return usage();
        }
    };
    match run(&command, args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("test-kms: {err}");
            ExitCode::FAILURE
        }
    }
}
