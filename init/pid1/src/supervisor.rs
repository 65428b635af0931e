//! After `ready`: PID 1 waits for children, signals and the power button until a shutdown
//! request. It reaps every child (feeding the workload supervisor), restarts the guest API
//! process and the gateway refresher with backoff when they die (1 s, 2 s, 4 s … capped at
//! 30 s; reset after a run of 60 s; `restarting` / `restarted` records; a refresher that exits
//! `init_core::gateway::EXIT_MISCONFIGURED` stays down), and on SIGTERM, SIGINT, SIGPWR or the
//! power button stops the workloads and shuts down.

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

/// When a supervised process is started again (pure: every instant is passed in).
#[derive(Debug)]
struct RestartSchedule {
    backoff: Backoff,
    started: Instant,
    restart_at: Option<Instant>,
}

impl RestartSchedule {
    /// The process was started at `now` (dstack runs its agent with `Restart=always`).
    fn new(now: Instant) -> Self {
        Self {
            backoff: Backoff::new(
                Duration::from_secs(1),
                Duration::from_secs(30),
                Duration::from_secs(60),
            ),
            started: now,
            restart_at: None,
        }
    }

    /// It exited at `now`: the delay until its restart, which is scheduled.
    fn on_exit(&mut self, now: Instant) -> Duration {
        let delay = self
            .backoff
            .on_exit(now.saturating_duration_since(self.started));
        self.restart_at = Some(now + delay);
        delay
    }

    /// Whether the restart is due at `now`; if so it counts as started now.
    fn take_due(&mut self, now: Instant) -> bool {
        if self.restart_at.is_none_or(|at| now < at) {
            return false;
        }
        self.restart_at = None;
        self.started = now;
        true
    }

    /// A restart failed at `now`: the delay until the next try, which is scheduled.
    fn on_start_failed(&mut self, now: Instant) -> Duration {
        let delay = self.backoff.on_exit(Duration::ZERO);
        self.restart_at = Some(now + delay);
        delay
    }

    /// Time left at `now` until a pending restart.
    fn wait(&self, now: Instant) -> Option<Duration> {
        self.restart_at.map(|at| at.saturating_duration_since(now))
    }

    fn restarts(&self) -> u32 {
        self.backoff.restarts()
    }
}

/// How the supervisor starts a process again.
trait Relaunch {
    /// The `service` of its records.
    const SERVICE: &'static str;
    type Error: std::error::Error + 'static;
    /// Start it again.
    fn relaunch(&mut self) -> Result<Child, Self::Error>;
    /// Whether an exit with `status` is restarted.
    fn restarts_after(&self, _status: i32) -> bool {
        true
    }
}

impl Relaunch for crate::stages::guest_api::Launch {
    const SERVICE: &'static str = "guest-api";
    type Error = crate::stages::guest_api::GuestApiStageError;
    fn relaunch(&mut self) -> Result<Child, Self::Error> {
        crate::stages::guest_api::start(self)
    }
}

impl Relaunch for crate::stages::gateway::Refresher {
    const SERVICE: &'static str = "gateway-refresh";
    type Error = crate::stages::gateway::GatewayStageError;
    fn relaunch(&mut self) -> Result<Child, Self::Error> {
        self.start()
    }
    fn restarts_after(&self, status: i32) -> bool {
        status != init_core::gateway::EXIT_MISCONFIGURED
    }
}

/// A supervised process and its restart policy.
#[derive(Debug)]
struct Service<L> {
    child: Option<Child>,
    launch: L,
    schedule: RestartSchedule,
}

impl<L: Relaunch> Service<L> {
    fn new(child: Child, launch: L) -> Self {
        Self {
            child: Some(child),
            launch,
            schedule: RestartSchedule::new(Instant::now()),
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The process `pid` exited with `code`: schedule its restart (unless its status says it
    /// cannot work).
    fn on_exit(&mut self, pid: i32, code: i32, results: &mut Results) {
        self.child = None;
        if !self.launch.restarts_after(code) {
            log::error!(
                "{} (pid {pid}) exited with status {code}: not restarted",
                L::SERVICE
            );
            return;
        }
        let delay = self.schedule.on_exit(Instant::now());
        log::warn!(
            "{} (pid {pid}) exited with status {code}; restart {} in {} ms",
            L::SERVICE,
            self.schedule.restarts(),
            delay.as_millis()
        );
        results.record(&Record::Restarting {
            service: L::SERVICE.into(),
            pid,
            status: code,
            restarts: self.schedule.restarts(),
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            mono_us: init_sys::clock::monotonic_us(),
        });
    }

    /// Time left until a pending restart.
    fn wait(&self) -> Option<Duration> {
        self.schedule.wait(Instant::now())
    }

    /// Restart the process if its delay is over; a failed start is retried with backoff.
    fn restart_if_due(&mut self, results: &mut Results) {
        if !self.schedule.take_due(Instant::now()) {
            return;
        }
        match self.launch.relaunch() {
            Ok(child) => {
                log::info!("{} restarted (pid {})", L::SERVICE, child.id());
                results.record(&Record::Restarted {
                    service: L::SERVICE.into(),
                    pid: child.id(),
                    mono_us: init_sys::clock::monotonic_us(),
                });
                self.child = Some(child);
            }
            Err(e) => {
                let delay = self.schedule.on_start_failed(Instant::now());
                log::warn!(
                    "{} restart failed: {}; next try in {} ms",
                    L::SERVICE,
                    error_chain::one_line(&e),
                    delay.as_millis()
                );
            }
        }
    }

    /// If `pid` is this process: handle its exit and say so.
    fn reaped(&mut self, pid: i32, code: i32, results: &mut Results) -> bool {
        let ours = self
            .pid()
            .is_some_and(|p| u32::try_from(pid).ok() == Some(p));
        if ours {
            self.on_exit(pid, code, results);
        }
        ours
    }
}

/// PID 1 after the boot: owns the results channel, the signalfd, the power buttons and the
/// supervised processes until it shuts down.
#[derive(Debug)]
pub(crate) struct Supervisor {
    results: Results,
    signals: Option<Signals>,
    buttons: Vec<PowerButton>,
    guest_api: Service<crate::stages::guest_api::Launch>,
    refresher: Option<Service<crate::stages::gateway::Refresher>>,
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
            guest_api: Service::new(booted.guest_api, booted.guest_api_launch),
            refresher: booted
                .gateway_refresher
                .map(|(child, refresher)| Service::new(child, refresher)),
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
                if let Some(r) = self.refresher.as_mut() {
                    r.restart_if_due(&mut self.results);
                }
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
            self.refresher.as_ref().and_then(Service::wait),
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
    /// API process and the gateway refresher are scheduled for a restart, anything else
    /// (orphans) is just reaped.
    fn reap(&mut self) {
        let (reaped, _) = init_sys::signals::reap_exited();
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
            if self
                .guest_api
                .reaped(child.pid, child.code, &mut self.results)
            {
                continue;
            }
            if let Some(r) = self.refresher.as_mut() {
                r.reaped(child.pid, child.code, &mut self.results);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exits after short runs back off 1 s, 2 s, 4 s … (the restart is not due before its
    /// delay, due after, and then counts as a start); a failed start backs off further; a run
    /// of 60 s resets the delay.
    #[test]
    fn restart_schedule_backs_off_and_resets_after_a_healthy_run() {
        let s = Duration::from_secs;
        let t0 = Instant::now();
        let mut r = RestartSchedule::new(t0);
        assert_eq!(r.wait(t0), None);
        assert!(!r.take_due(t0 + s(100)), "nothing scheduled");

        assert_eq!(r.on_exit(t0 + s(2)), s(1));
        assert_eq!(r.wait(t0 + s(2)), Some(s(1)));
        assert!(!r.take_due(t0 + s(2)));
        assert!(r.take_due(t0 + s(3)));
        assert_eq!(r.wait(t0 + s(3)), None);
        assert!(!r.take_due(t0 + s(4)), "taken once");

        // Ran 1 s: 2 s. Then the start fails: 4 s.
        assert_eq!(r.on_exit(t0 + s(4)), s(2));
        assert!(r.take_due(t0 + s(6)));
        assert_eq!(r.on_start_failed(t0 + s(6)), s(4));
        assert_eq!(r.wait(t0 + s(7)), Some(s(3)));
        assert!(r.take_due(t0 + s(10)));
        assert_eq!(r.restarts(), 3);

        // Ran 60 s: back to 1 s.
        assert_eq!(r.on_exit(t0 + s(70)), s(1));
        assert!(r.take_due(t0 + s(71)));
        // The cap: 30 s.
        let mut at = t0 + s(71);
        let mut last = Duration::ZERO;
        for _ in 0..8 {
            last = r.on_exit(at);
            at += last;
            assert!(r.take_due(at));
        }
        assert_eq!(last, s(30));
    }

    /// The refresher is restarted after any exit but the misconfigured one; the guest API
    /// after any.
    #[test]
    fn which_exits_are_restarted() {
        let launch = crate::stages::guest_api::Launch {
            share_copy: "/x".into(),
            logs_dir: "/y".into(),
        };
        for status in [0, 1, 3, 137] {
            assert!(launch.restarts_after(status));
        }
        let refresher = crate::stages::gateway::Refresher::for_tests();
        assert!(refresher.restarts_after(0));
        assert!(refresher.restarts_after(1));
        assert!(refresher.restarts_after(137));
        assert!(!refresher.restarts_after(init_core::gateway::EXIT_MISCONFIGURED));
        assert_eq!(
            <crate::stages::gateway::Refresher as Relaunch>::SERVICE,
            "gateway-refresh"
        );
    }
}
