//! After `ready`: PID 1 waits for children, signals and the power button until a shutdown
//! request. It reaps every child (feeding the workload supervisor), restarts the guest API
//! process with backoff when it dies (1 s, 2 s, 4 s … capped at 30 s; reset after a run of
//! 60 s; `restarting` / `restarted` records), and on SIGTERM, SIGINT, SIGPWR or the power button
//! stops the workloads and shuts down.

use std::process::Child;
use std::time::{Duration, Instant};

use init_core::backoff::Backoff;
use init_core::error_chain;
use init_core::results::Record;
use init_sys::input::PowerButton;
use init_sys::signals::{Event, Signals};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::boot::Booted;
use crate::results::Results;
use crate::shutdown::{Reason, shutdown};
use crate::stages::workloads::Workloads;

/// How long an orderly shutdown waits for the containers (each also has its own
/// `stop_grace_period`, after which the workload supervisor kills it).
const WORKLOADS_STOP_LIMIT: Duration = Duration::from_secs(30);

/// The guest API process and its restart policy (dstack runs its agent with `Restart=always`).
#[derive(Debug)]
struct GuestApi {
    child: Option<Child>,
    launch: crate::stages::guest_api::Launch,
    backoff: Backoff,
    started: Instant,
    restart_at: Option<Instant>,
}

impl GuestApi {
    fn new(child: Child, launch: crate::stages::guest_api::Launch) -> Self {
        Self {
            child: Some(child),
            launch,
            backoff: Backoff::new(
                Duration::from_secs(1),
                Duration::from_secs(30),
                Duration::from_secs(60),
            ),
            started: Instant::now(),
            restart_at: None,
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The process `pid` exited with `code`: schedule its restart.
    fn on_exit(&mut self, pid: i32, code: i32, results: &mut Results) {
        self.child = None;
        let delay = self.backoff.on_exit(self.started.elapsed());
        log::warn!(
            "guest API (pid {pid}) exited with status {code}; restart {} in {} ms",
            self.backoff.restarts(),
            delay.as_millis()
        );
        self.restart_at = Some(Instant::now() + delay);
        results.record(&Record::Restarting {
            service: "guest-api".into(),
            pid,
            status: code,
            restarts: self.backoff.restarts(),
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            mono_us: init_sys::clock::monotonic_us(),
        });
    }

    /// Time left until a pending restart.
    fn wait(&self) -> Option<Duration> {
        self.restart_at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Restart the process if its delay is over; a failed start is retried with backoff.
    fn restart_if_due(&mut self, results: &mut Results) {
        if self.restart_at.is_none_or(|at| Instant::now() < at) {
            return;
        }
        self.restart_at = None;
        self.started = Instant::now();
        match crate::stages::guest_api::start(&self.launch) {
            Ok(child) => {
                log::info!("guest API restarted (pid {})", child.id());
                results.record(&Record::Restarted {
                    service: "guest-api".into(),
                    pid: child.id(),
                    mono_us: init_sys::clock::monotonic_us(),
                });
                self.child = Some(child);
            }
            Err(e) => {
                let delay = self.backoff.on_exit(Duration::ZERO);
                log::warn!(
                    "guest API restart failed: {}; next try in {} ms",
                    error_chain::one_line(&e),
                    delay.as_millis()
                );
                self.restart_at = Some(Instant::now() + delay);
            }
        }
    }
}

/// PID 1 after the boot: owns the results channel, the signalfd, the power buttons and the
/// supervised processes until it shuts down.
#[derive(Debug)]
pub(crate) struct Supervisor {
    results: Results,
    signals: Option<Signals>,
    buttons: Vec<PowerButton>,
    guest_api: GuestApi,
    workloads: Option<Workloads>,
    /// Test builds: `cvm.test_fault=kill-guest-api` (SIGKILL it once serving).
    kill_guest_api: bool,
}

impl Supervisor {
    pub(crate) fn new(
        booted: Booted,
        results: Results,
        signals: Option<Signals>,
        buttons: Vec<PowerButton>,
    ) -> Self {
        #[cfg(feature = "insecure-test-hooks")]
        let kill_guest_api =
            booted.config.test_fault == Some(init_core::cmdline::TestFault::KillGuestApi);
        #[cfg(not(feature = "insecure-test-hooks"))]
        let kill_guest_api = false;
        Self {
            results,
            signals,
            buttons,
            guest_api: GuestApi::new(booted.guest_api, booted.guest_api_launch),
            workloads: booted.workloads,
            kill_guest_api,
        }
    }

    /// Serve until a shutdown request, then shut down.
    pub(crate) fn serve(mut self) -> ! {
        log::info!("serving: {} power button(s) watched", self.buttons.len());
        if self.kill_guest_api
            && let Some(child) = self.guest_api.child.as_mut()
        {
            log::warn!("test fault: SIGKILL the guest API (pid {})", child.id());
            let _ = child.kill();
        }
        loop {
            self.wait();
            let mut reason = self.read_signals();
            self.reap();
            if reason.is_none() {
                self.guest_api.restart_if_due(&mut self.results);
            }
            if self.buttons.iter_mut().any(PowerButton::pressed) {
                reason = reason.or(Some(Reason::PowerButton));
            }
            if let Some(reason) = reason {
                self.shut_down(reason);
            }
            if let Some(w) = self.workloads.as_mut() {
                w.on_timer(&mut self.results);
            }
        }
    }

    /// Stop the containers in reverse dependency order, then the generic shutdown (which
    /// signals whatever is left).
    pub(crate) fn shut_down(mut self, reason: Reason) -> ! {
        if let Some(w) = self.workloads.as_mut() {
            log::info!("stopping the workloads");
            w.stop_all(&mut self.results, WORKLOADS_STOP_LIMIT);
        }
        shutdown(&mut self.results, self.signals.as_mut(), reason)
    }

    /// Block until a log line, a signal, a power-button event, a pending guest API restart or
    /// a workload timer.
    fn wait(&mut self) {
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(1 + self.buttons.len());
        if let Some(w) = self.workloads.as_ref() {
            fds.extend(
                w.log_fds()
                    .into_iter()
                    .map(|fd| PollFd::new(fd, PollFlags::POLLIN)),
            );
        }
        if let Some(s) = self.signals.as_ref() {
            fds.push(PollFd::new(s.fd(), PollFlags::POLLIN));
        }
        fds.extend(
            self.buttons
                .iter()
                .map(|b| PollFd::new(b.fd(), PollFlags::POLLIN)),
        );
        // Without a signalfd (never expected), fall back to periodic reaping.
        let waits = [
            self.signals.is_none().then(|| Duration::from_secs(1)),
            self.guest_api.wait(),
            self.workloads.as_ref().and_then(Workloads::timeout),
        ];
        let timeout = waits
            .into_iter()
            .flatten()
            .min()
            .map_or(PollTimeout::NONE, |w| {
                let ms = u16::try_from(w.as_millis().max(1)).unwrap_or(u16::MAX);
                PollTimeout::from(ms)
            });
        if let Err(e) = poll(&mut fds, timeout) {
            log::debug!("poll: {e}");
        }
    }

    /// The shutdown request among the pending signals, if any (the first one wins).
    fn read_signals(&mut self) -> Option<Reason> {
        let signals = self.signals.as_mut()?;
        let events = match signals.read_all() {
            Ok(events) => events,
            Err(e) => {
                log::warn!("{}", error_chain::one_line(&e));
                return None;
            }
        };
        events.into_iter().find_map(|event| match event {
            Event::Child | Event::Other(_) => None,
            Event::Terminate => Some(Reason::SigTerm),
            Event::Interrupt => Some(Reason::SigInt),
            Event::Power => Some(Reason::SigPwr),
        })
    }

    /// Reap every exited child: a container's init goes to the workload supervisor, the guest
    /// API process is scheduled for a restart, anything else (orphans) is just reaped.
    fn reap(&mut self) {
        let (reaped, _) = init_sys::signals::reap_exited();
        let api_pid = self.guest_api.pid();
        if let Some(w) = self.workloads.as_mut() {
            w.drain_logs(false);
        }
        for child in reaped {
            log::debug!("reaped pid {} (status {})", child.pid, child.code);
            if let Some(w) = self.workloads.as_mut()
                && w.on_reaped(child.pid, child.code, &mut self.results)
            {
                continue;
            }
            if api_pid.is_some_and(|pid| u32::try_from(child.pid).ok() == Some(pid)) {
                self.guest_api
                    .on_exit(child.pid, child.code, &mut self.results);
            }
        }
    }
}
