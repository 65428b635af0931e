//! `test-gateway`: an INSECURE dstack-gateway for QEMU tests and the demo.
//!
//! ```text
//! test-gateway serve --kms-state DIR [--listen 127.0.0.1:0] [--wg-listen 127.0.0.1:0]
//!                    [--guest-endpoint 10.0.2.2:<wg port>] [--app-id HEX]
//! ```
//!
//! Loads the test KMS's keys from DIR (`test-kms serve --state DIR` made them), serves
//! `Gateway.RegisterCvm` over RA-TLS and a userspace WireGuard peer, prints the bound
//! addresses, then every registration, until killed.

use std::net::{TcpListener, UdpSocket};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() != Some("serve") {
        eprintln!(
            "usage: test-gateway serve --kms-state DIR [--listen ADDR] [--wg-listen ADDR] [--guest-endpoint HOST:PORT] [--app-id HEX]"
        );
        return ExitCode::from(2);
    }
    let (mut state, mut listen, mut wg_listen, mut endpoint, mut app_id) = (
        None,
        "127.0.0.1:0".to_owned(),
        "127.0.0.1:0".to_owned(),
        None,
        test_gateway::DEFAULT_APP_ID.to_vec(),
    );
    while let Some(flag) = argv.next() {
        let Some(value) = argv.next() else {
            eprintln!("{flag} needs a value");
            return ExitCode::from(2);
        };
        match flag.as_str() {
            "--kms-state" => state = Some(value),
            "--listen" => listen = value,
            "--wg-listen" => wg_listen = value,
            "--guest-endpoint" => endpoint = Some(value),
            "--app-id" => match hex::decode(&value) {
                Ok(id) => app_id = id,
                Err(_) => {
                    eprintln!("--app-id is not hex");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("unknown flag {flag}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(state) = state else {
        eprintln!("--kms-state is required");
        return ExitCode::from(2);
    };
    let run = || -> Result<(), Box<dyn std::error::Error>> {
        let keys = test_kms::KmsKeys::load_or_generate(std::path::Path::new(&state), &[])?;
        let https = TcpListener::bind(&listen)?;
        let udp = UdpSocket::bind(&wg_listen)?;
        let wg_port = udp.local_addr()?.port();
        let endpoint = endpoint.unwrap_or_else(|| format!("10.0.2.2:{wg_port}"));
        let gateway = test_gateway::start(&keys, &app_id, https, udp, &endpoint)?;
        println!(
            "test-gateway: RPC https://{} WireGuard udp {wg_port} (guests: {endpoint}), app id {}",
            gateway.https_addr(),
            test_gateway::app_id_hex(&app_id)
        );
        let mut seen = 0;
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            let registrations = gateway.registrations();
            for r in registrations.iter().skip(seen) {
                println!("test-gateway: registered app {}", r.app_id);
            }
            seen = registrations.len();
        }
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("test-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
