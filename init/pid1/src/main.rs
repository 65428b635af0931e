//! `cvm-init`: PID 1 of a confidential VM. Runs the boot plan of `init_core::plan`, reports each
//! stage on the console, /dev/kmsg and the results channel, then serves as the reaper until an
//! orderly shutdown. On any fatal error it prints the whole error chain once, reports it, and
//! powers off; it never returns from `main` and never unwinds.

mod boot;
mod containers;
mod host_devices;
mod logger;
mod results;
mod shutdown;
mod supervisor;
/// One file per boot stage, named after it (`init_core::plan::Stage::name`).
mod stages {
    pub(crate) mod cmdline;
    pub(crate) mod disk;
    pub(crate) mod early;
    pub(crate) mod gateway;
    pub(crate) mod guest_api;
    pub(crate) mod host_api;
    pub(crate) mod host_share;
    pub(crate) mod kernel_contract;
    pub(crate) mod keys;
    pub(crate) mod measure;
    pub(crate) mod modules;
    pub(crate) mod mount;
    pub(crate) mod network;
    pub(crate) mod ready;
    pub(crate) mod results;
    pub(crate) mod system_ready;
    pub(crate) mod workloads;
}

use std::path::Path;

use init_core::cmdline::OnReady;
use init_core::error_chain;
use init_core::results::Record;
use init_sys::input::{PowerButton, find_power_buttons};
use init_sys::signals::Signals;

use crate::boot::{Fatal, Runner};
use crate::results::Results;
use crate::shutdown::{Reason, shutdown};
use crate::supervisor::Supervisor;

fn main() {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == stages::guest_api::SUBCOMMAND)
    {
        logger::install();
        stages::guest_api::main(std::env::args_os().skip(2));
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == stages::gateway::SUBCOMMAND)
    {
        logger::install();
        stages::gateway::main(std::env::args_os().skip(2));
    }
    #[cfg(feature = "insecure-test-hooks")]
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == stages::measure::test_gpu::SUBCOMMAND)
    {
        stages::measure::test_gpu::helper_main();
    }
    install_panic_hook();
    logger::install();
    if std::process::id() != 1 {
        eprintln!(
            "cvm-init: refusing to start: must run as PID 1 (it mounts, reaps and powers off)"
        );
        #[allow(clippy::exit)]
        std::process::exit(2);
    }
    // Signals first, so a child exiting during the boot is never missed.
    let mut signals = match Signals::install() {
        Ok(s) => Some(s),
        Err(e) => {
            log::error!("{}", error_chain::one_line(&e));
            None
        }
    };
    let started_us = init_sys::clock::monotonic_us();
    let mut results = Results::default();
    results.record(&Record::Boot {
        version: env!("CARGO_PKG_VERSION").into(),
        mono_us: started_us,
    });
    log::info!("cvm-init {} starting", env!("CARGO_PKG_VERSION"));

    let mut runner = Runner::new(results);
    let booted = match boot::boot(&mut runner) {
        Ok(booted) => booted,
        Err(fatal) => report_fatal(&mut runner, signals.as_mut(), &fatal),
    };
    // Watch the power button before announcing `ready`, so a press right after it is not lost.
    let buttons = open_power_buttons();
    let mut results = runner.results;
    let now = init_sys::clock::monotonic_us();
    results.record(&Record::Ready { mono_us: now });
    stages::host_api::boot_progress("done");
    let boot_ms = now.saturating_sub(started_us) / 1000;
    log::info!("ready ({boot_ms} ms after PID 1 started)");

    let on_ready = booted.config.on_ready;
    let supervisor = Supervisor::new(booted, results, signals, buttons);
    match on_ready {
        OnReady::PowerOff => supervisor.shut_down(Reason::ReadyPowerOff),
        OnReady::Wait => supervisor.serve(),
    }
}

/// Report a fatal error everywhere — `fatal: <stage>: <chain on one line>` on the console, a
/// `fatal` record with the stage and the chain — then shut down.
fn report_fatal(runner: &mut Runner, signals: Option<&mut Signals>, fatal: &Fatal) -> ! {
    let error = fatal.error.as_ref();
    let line = error_chain::one_line(error);
    log::error!("fatal: {}: {line}", fatal.stage);
    stages::host_api::boot_error(fatal.stage, &line);
    runner.open_results_best_effort();
    runner.results.record(&Record::Fatal {
        stage: fatal.stage,
        error: line,
        chain: error_chain::messages(error),
        mono_us: init_sys::clock::monotonic_us(),
    });
    shutdown(&mut runner.results, signals, Reason::Fatal)
}

/// Open every "Power Button" input device (ACPI button + evdev).
fn open_power_buttons() -> Vec<PowerButton> {
    find_power_buttons(Path::new("/sys/class/input"), Path::new("/dev/input"))
        .iter()
        .filter_map(|p| match PowerButton::open(p) {
            Ok(b) => Some(b),
            Err(e) => {
                log::warn!("open power button {}: {e}", p.display());
                None
            }
        })
        .collect()
}

/// A panic in PID 1 would be a kernel panic: print it and power off instead.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = format!("cvm-init: internal error (panic): {info}; powering off");
        eprintln!("{message}");
        if let Ok(mut kmsg) = init_sys::kmsg::Kmsg::open(Path::new("/dev/kmsg")) {
            let _ = kmsg.write_line(init_sys::kmsg::Priority::Debug, &message);
        }
        init_sys::power::sync();
        let _ = init_sys::power::power_off();
        shutdown::halt_forever();
    }));
}
