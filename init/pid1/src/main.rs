//! `cvm-init`: PID 1 of a confidential VM. Runs the boot plan of `init_core::plan`, reports each
//! stage on the console, /dev/kmsg and the results channel, then serves as the reaper until an
//! orderly shutdown. On any fatal error it prints the whole error chain once, reports it, and
//! powers off; it never returns from `main` and never unwinds.

mod boot;
mod containers;
mod logger;
mod results;
mod shutdown;
mod stages {
    pub(crate) mod disk;
    pub(crate) mod gpu;
    pub(crate) mod guest_api;
    pub(crate) mod host_share;
    pub(crate) mod kernel_contract;
    pub(crate) mod keys;
    pub(crate) mod measure;
    pub(crate) mod network;
    pub(crate) mod workloads;
}

use std::path::Path;
use std::time::{Duration, Instant};

use init_core::backoff::Backoff;

use init_core::cmdline::OnReady;
use init_core::error_chain;
use init_core::plan::BOOT_PLAN;
use init_core::results::Record;
use init_sys::input::{PowerButton, find_power_buttons};
use init_sys::signals::{Event, Signals};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::boot::Boot;
use crate::shutdown::{Reason, shutdown};

fn main() {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == stages::guest_api::SUBCOMMAND)
    {
        logger::install();
        stages::guest_api::main(std::env::args_os().skip(2));
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
    let mut boot = Boot::new();
    boot.results.record(&Record::Boot {
        version: env!("CARGO_PKG_VERSION").into(),
        mono_us: boot.boot_started_us,
    });
    log::info!("cvm-init {} starting", env!("CARGO_PKG_VERSION"));

    if let Err((stage, error)) = boot.run(BOOT_PLAN) {
        fatal(&mut boot, signals.as_mut(), stage.name(), &error);
    }
    // Watch the power button before announcing `ready`, so a press right after it is not lost.
    let buttons = open_power_buttons();
    let now = init_sys::clock::monotonic_us();
    boot.results.record(&Record::Ready { mono_us: now });
    let boot_ms = now.saturating_sub(boot.boot_started_us) / 1000;
    log::info!("ready ({boot_ms} ms after PID 1 started)");

    match boot.config.on_ready {
        OnReady::PowerOff => {
            stop_workloads(&mut boot);
            shutdown(&mut boot.results, signals.as_mut(), Reason::ReadyPowerOff)
        }
        OnReady::Wait => serve(&mut boot, signals, buttons),
    }
}

/// Report a fatal error (one line with the whole chain) everywhere, then shut down.
fn fatal(
    boot: &mut Boot,
    signals: Option<&mut Signals>,
    stage: &str,
    error: &(dyn std::error::Error + 'static),
) -> ! {
    let line = error_chain::one_line(error);
    log::error!("fatal: {stage}: {line}");
    boot.open_results_best_effort();
    boot.results.record(&Record::Fatal {
        stage: stage.into(),
        error: line,
        chain: error_chain::messages(error),
        mono_us: init_sys::clock::monotonic_us(),
    });
    shutdown(&mut boot.results, signals, Reason::Fatal)
}

/// How long an orderly shutdown waits for the containers (each also has its own
/// `stop_grace_period`, after which the supervisor kills it).
const WORKLOADS_STOP_LIMIT: Duration = Duration::from_secs(30);

/// Stop the containers in reverse dependency order before the generic shutdown (which then
/// signals whatever is left).
fn stop_workloads(boot: &mut Boot) {
    if let Some(w) = boot.workloads.as_mut() {
        log::info!("stopping the workloads");
        w.stop_all(&mut boot.results, WORKLOADS_STOP_LIMIT);
    }
}

/// The guest API process's restart policy (dstack runs its agent with `Restart=always`).
fn guest_api_backoff() -> Backoff {
    Backoff::new(
        Duration::from_secs(1),
        Duration::from_secs(30),
        Duration::from_secs(60),
    )
}

/// Wait for children, signals and the power button until a shutdown request. The guest API
/// process is restarted with backoff when it dies.
fn serve(boot: &mut Boot, mut signals: Option<Signals>, mut buttons: Vec<PowerButton>) -> ! {
    log::info!("serving: {} power button(s) watched", buttons.len());
    let mut api_backoff = guest_api_backoff();
    let mut api_started = Instant::now();
    let mut api_restart_at: Option<Instant> = None;
    #[cfg(feature = "insecure-test-hooks")]
    if boot.config.test_fault == Some(init_core::cmdline::TestFault::KillGuestApi)
        && let Some(child) = boot.guest_api.as_mut()
    {
        log::warn!("test fault: SIGKILL the guest API (pid {})", child.id());
        let _ = child.kill();
    }
    loop {
        {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(1 + buttons.len());
            if let Some(w) = boot.workloads.as_ref() {
                fds.extend(
                    w.log_fds()
                        .into_iter()
                        .map(|fd| PollFd::new(fd, PollFlags::POLLIN)),
                );
            }
            if let Some(s) = signals.as_ref() {
                fds.push(PollFd::new(s.fd(), PollFlags::POLLIN));
            }
            fds.extend(
                buttons
                    .iter()
                    .map(|b| PollFd::new(b.fd(), PollFlags::POLLIN)),
            );
            // Without a signalfd (never expected), fall back to periodic reaping; a pending
            // restart bounds the wait too.
            let mut wait: Option<Duration> = signals.is_none().then(|| Duration::from_secs(1));
            if let Some(at) = api_restart_at {
                let left = at.saturating_duration_since(Instant::now());
                wait = Some(wait.map_or(left, |w| w.min(left)));
            }
            if let Some(left) = boot.workloads.as_ref().and_then(|w| w.timeout()) {
                wait = Some(wait.map_or(left, |w| w.min(left)));
            }
            let timeout = wait.map_or(PollTimeout::NONE, |w| {
                let ms = u16::try_from(w.as_millis().max(1)).unwrap_or(u16::MAX);
                PollTimeout::from(ms)
            });
            if let Err(e) = poll(&mut fds, timeout) {
                log::debug!("poll: {e}");
            }
        }
        let mut reason: Option<Reason> = None;
        if let Some(s) = signals.as_mut() {
            match s.read_all() {
                Ok(events) => {
                    for event in events {
                        match event {
                            Event::Child | Event::Other(_) => {}
                            Event::Terminate => reason = reason.or(Some(Reason::SigTerm)),
                            Event::Interrupt => reason = reason.or(Some(Reason::SigInt)),
                            Event::Power => reason = reason.or(Some(Reason::SigPwr)),
                        }
                    }
                }
                Err(e) => log::warn!("{}", error_chain::one_line(&e)),
            }
        }
        let (reaped, _) = init_sys::signals::reap_exited();
        let api_pid = boot.guest_api.as_ref().map(std::process::Child::id);
        if let Some(w) = boot.workloads.as_mut() {
            w.drain_logs(false);
        }
        for child in reaped {
            log::debug!("reaped pid {} (status {})", child.pid, child.code);
            if let Some(w) = boot.workloads.as_mut()
                && w.on_reaped(child.pid, child.code, &mut boot.results)
            {
                continue;
            }
            if api_pid.is_some_and(|pid| u32::try_from(child.pid).ok() == Some(pid)) {
                boot.guest_api = None;
                let delay = api_backoff.on_exit(api_started.elapsed());
                log::warn!(
                    "guest API (pid {}) exited with status {}; restart {} in {} ms",
                    child.pid,
                    child.code,
                    api_backoff.restarts(),
                    delay.as_millis()
                );
                api_restart_at = Some(Instant::now() + delay);
                boot.results.record(&Record::Restarting {
                    service: "guest-api".into(),
                    pid: child.pid,
                    status: child.code,
                    restarts: api_backoff.restarts(),
                    delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    mono_us: init_sys::clock::monotonic_us(),
                });
            }
        }
        if api_restart_at.is_some_and(|at| Instant::now() >= at) && reason.is_none() {
            api_restart_at = None;
            api_started = Instant::now();
            match stages::guest_api::start(&boot.host_share_copy_dir()) {
                Ok(child) => {
                    log::info!("guest API restarted (pid {})", child.id());
                    boot.results.record(&Record::Restarted {
                        service: "guest-api".into(),
                        pid: child.id(),
                        mono_us: init_sys::clock::monotonic_us(),
                    });
                    boot.guest_api = Some(child);
                }
                Err(e) => {
                    let delay = api_backoff.on_exit(Duration::ZERO);
                    log::warn!(
                        "guest API restart failed: {}; next try in {} ms",
                        error_chain::one_line(&e),
                        delay.as_millis()
                    );
                    api_restart_at = Some(Instant::now() + delay);
                }
            }
        }
        if buttons.iter_mut().any(PowerButton::pressed) {
            reason = reason.or(Some(Reason::PowerButton));
        }
        if reason.is_none()
            && let Some(w) = boot.workloads.as_mut()
        {
            w.on_timer(&mut boot.results);
        }
        if let Some(reason) = reason {
            stop_workloads(boot);
            shutdown(&mut boot.results, signals.as_mut(), reason);
        }
    }
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
