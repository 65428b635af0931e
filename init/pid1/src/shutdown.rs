//! Orderly shutdown: stop every process, reap, sync, unmount, power off. Never returns.

use std::path::Path;

use init_core::mountinfo;
use init_core::plan::STOP_GRACE_MS;
use init_core::results::Record;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;

use crate::results::Results;

/// Why the VM is going down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    ReadyPowerOff,
    SigTerm,
    SigInt,
    SigPwr,
    PowerButton,
    Fatal,
}

impl Reason {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::ReadyPowerOff => "ready-poweroff",
            Self::SigTerm => "signal-sigterm",
            Self::SigInt => "signal-sigint",
            Self::SigPwr => "signal-sigpwr",
            Self::PowerButton => "power-button",
            Self::Fatal => "fatal",
        }
    }
}

/// Stop everything and power off.
pub(crate) fn shutdown(
    results: &mut Results,
    signals: Option<&mut init_sys::signals::Signals>,
    reason: Reason,
) -> ! {
    let now = init_sys::clock::monotonic_us;
    log::info!("shutdown: {}", reason.name());
    results.record(&Record::Shutdown {
        reason: reason.name().into(),
        mono_us: now(),
    });
    crate::stages::host_api::shutdown_progress(reason.name());

    let stopped = stop_all_processes(signals);
    let zombies_left =
        init_sys::proc_scan::zombie_count(&init_sys::proc_scan::processes(Path::new("/proc"), 1));
    results.record(&Record::Reaped {
        zombies_left,
        children_stopped: stopped,
        mono_us: now(),
    });
    if zombies_left > 0 {
        log::warn!("{zombies_left} zombies left after stopping all processes");
    }

    init_sys::power::sync();
    crate::stages::disk::close_at_shutdown();
    unmount_all();
    init_sys::power::sync();
    log::info!("power off");
    results.record(&Record::PowerOff { mono_us: now() });
    match init_sys::power::power_off() {
        Ok(never) => match never {},
        Err(e) => {
            log::error!("{}", init_core::error_chain::one_line(&e));
            halt_forever()
        }
    }
}

/// SIGTERM everyone, wait up to the grace period while reaping, then SIGKILL what is left.
/// Returns how many processes were reaped.
fn stop_all_processes(mut signals: Option<&mut init_sys::signals::Signals>) -> u32 {
    use init_sys::signals::{ChildState, kill_all, reap_exited};
    let mut reaped = 0u32;
    let mut count = |n: usize| reaped = reaped.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
    let (first, state) = reap_exited();
    count(first.len());
    if state == ChildState::None {
        return reaped;
    }
    if let Err(e) = kill_all(Signal::SIGTERM) {
        log::warn!("{}", init_core::error_chain::one_line(&e));
    }
    let deadline = init_sys::clock::monotonic_us() + STOP_GRACE_MS * 1000;
    loop {
        let (done, state) = reap_exited();
        count(done.len());
        if state == ChildState::None {
            return reaped;
        }
        if init_sys::clock::monotonic_us() >= deadline {
            break;
        }
        wait_for_signal(signals.as_deref_mut(), 50);
    }
    log::warn!("processes still running after {STOP_GRACE_MS} ms: SIGKILL");
    if let Err(e) = kill_all(Signal::SIGKILL) {
        log::warn!("{}", init_core::error_chain::one_line(&e));
    }
    for _ in 0..100 {
        let (done, state) = reap_exited();
        count(done.len());
        if state == ChildState::None {
            break;
        }
        wait_for_signal(signals.as_deref_mut(), 10);
    }
    reaped
}

fn wait_for_signal(signals: Option<&mut init_sys::signals::Signals>, timeout_ms: u16) {
    match signals {
        Some(s) => {
            let mut fds = [PollFd::new(s.fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(timeout_ms));
            let _ = s.read_all();
        }
        None => std::thread::sleep(std::time::Duration::from_millis(u64::from(timeout_ms))),
    }
}

fn unmount_all() {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        log::warn!("cannot read /proc/self/mountinfo: skipping unmount");
        return;
    };
    match mountinfo::parse(&text) {
        Ok(entries) => {
            for target in mountinfo::unmount_order(&entries) {
                if let Err(e) = init_sys::mount::unmount_detach(Path::new(&target)) {
                    log::debug!("{}", init_core::error_chain::one_line(&e));
                }
            }
        }
        Err(e) => log::warn!("{e}"),
    }
}

/// Last resort when even power-off failed: PID 1 must not exit.
pub(crate) fn halt_forever() -> ! {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
