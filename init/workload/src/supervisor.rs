//! The container supervisor as a pure state machine (sans I/O).
//!
//! The launcher feeds it events (a container started, exited, a health check finished) and
//! the current monotonic time; it answers with actions (start, run a health check, send the
//! stop signal, kill) and state changes to report on the results channel. Time only enters
//! through the `now` arguments, so tests drive it with a fake clock.
//!
//! Semantics follow Docker Compose where it matters:
//! * a service starts once every dependency meets its condition (`service_started`,
//!   `service_healthy`, `service_completed_successfully`); if a required dependency can no
//!   longer meet it (it stopped for good, or has no health check), the dependent fails;
//! * restart policies: `no`; `always` and `unless-stopped` (same thing without a manual
//!   stop); `on-failure[:n]` restarts on a non-zero exit at most `n` times in total; restarts
//!   wait 100 ms doubled per consecutive restart (at most 60 s), and the doubling resets once
//!   a container ran for 10 s;
//! * health: failures during `start_period` do not count; `retries` consecutive failures make
//!   a container unhealthy (reported, not restarted, as in Compose);
//! * shutdown: a container is signalled once every container depending on it has stopped
//!   (reverse dependency order, independent ones in parallel), with its stop signal; after
//!   its grace period it is killed.

use std::time::Duration;

use crate::compose::{App, Dependency, DependencyCondition, Healthcheck, RestartPolicy};

/// First restart delay.
pub const RESTART_BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A run at least this long resets the backoff.
pub const RESTART_RESET_AFTER: Duration = Duration::from_secs(10);

/// Health of a running container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No health check.
    None,
    /// Not yet decided.
    Starting,
    /// Last check passed.
    Healthy,
    /// `retries` consecutive failures.
    Unhealthy,
}

/// State of one service, as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitState {
    /// Waiting for dependencies.
    Waiting,
    /// Start requested, not yet confirmed.
    Starting,
    /// Running.
    Running {
        /// Health.
        health: Health,
    },
    /// Exited; will be restarted at `at`.
    BackingOff {
        /// Exit code of the last run.
        code: i32,
        /// When the restart happens.
        at: Duration,
    },
    /// Exited and will not be restarted.
    Exited {
        /// Exit code.
        code: i32,
    },
    /// Could not be started (dependency failed or start error without restart).
    Failed {
        /// Why.
        reason: String,
    },
    /// Stop signal sent during shutdown.
    Stopping,
    /// Stopped by shutdown.
    Stopped,
}

impl UnitState {
    /// Short name for the results channel.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Starting => "starting",
            Self::Running {
                health: Health::Healthy,
            } => "healthy",
            Self::Running {
                health: Health::Unhealthy,
            } => "unhealthy",
            Self::Running { .. } => "running",
            Self::BackingOff { .. } => "restarting",
            Self::Exited { .. } => "exited",
            Self::Failed { .. } => "failed",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
        }
    }
}

/// Something the launcher must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create and start the container (again).
    Start {
        /// Service.
        service: String,
    },
    /// Run the health check (the launcher enforces its timeout and reports the result).
    CheckHealth {
        /// Service.
        service: String,
    },
    /// Send the stop signal.
    Signal {
        /// Service.
        service: String,
        /// Signal name.
        signal: String,
    },
    /// SIGKILL after the grace period.
    Kill {
        /// Service.
        service: String,
    },
    /// Report a state change.
    Report {
        /// Service.
        service: String,
        /// New state.
        state: UnitState,
    },
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The container is running.
    Started {
        /// Service.
        service: String,
    },
    /// Creating or starting the container failed.
    StartFailed {
        /// Service.
        service: String,
        /// Why.
        reason: String,
    },
    /// The container's init exited (signals as 128 + n).
    Exited {
        /// Service.
        service: String,
        /// Exit code.
        code: i32,
    },
    /// A health check finished.
    HealthResult {
        /// Service.
        service: String,
        /// Passed.
        ok: bool,
    },
}

#[derive(Debug, Clone)]
struct Unit {
    name: String,
    depends_on: Vec<Dependency>,
    restart: RestartPolicy,
    health: Option<Healthcheck>,
    stop_signal: String,
    grace: Duration,
    state: UnitState,
    ever_started: bool,
    completed_ok: bool,
    restarts: u32,
    consecutive: u32,
    started_at: Duration,
    next_health: Option<Duration>,
    health_in_flight: bool,
    health_failures: u32,
    kill_at: Option<Duration>,
}

/// The supervisor.
#[derive(Debug, Clone)]
pub struct Supervisor {
    units: Vec<Unit>,
    shutting_down: bool,
}

impl Supervisor {
    /// A supervisor for `app` (services already in start order). `stop_signals` overrides a
    /// service's stop signal (the image's `StopSignal`), by service name.
    pub fn new(app: &App, stop_signals: &[(String, String)]) -> Self {
        let units = app
            .services
            .iter()
            .map(|s| Unit {
                name: s.name.clone(),
                depends_on: s.depends_on.clone(),
                restart: s.restart,
                health: s.healthcheck.clone(),
                stop_signal: stop_signals
                    .iter()
                    .find(|(n, _)| *n == s.name)
                    .map_or_else(|| s.stop_signal.clone(), |(_, sig)| sig.clone()),
                grace: s.stop_grace_period,
                state: UnitState::Waiting,
                ever_started: false,
                completed_ok: false,
                restarts: 0,
                consecutive: 0,
                started_at: Duration::ZERO,
                next_health: None,
                health_in_flight: false,
                health_failures: 0,
                kill_at: None,
            })
            .collect();
        Self {
            units,
            shutting_down: false,
        }
    }

    /// Current state of `service`.
    pub fn state(&self, service: &str) -> Option<&UnitState> {
        self.units
            .iter()
            .find(|u| u.name == service)
            .map(|u| &u.state)
    }

    /// Restarts done so far for `service`.
    pub fn restarts(&self, service: &str) -> u32 {
        self.units
            .iter()
            .find(|u| u.name == service)
            .map_or(0, |u| u.restarts)
    }

    /// True once shutdown was requested and every unit is stopped or never ran.
    pub fn finished(&self) -> bool {
        self.shutting_down
            && self.units.iter().all(|u| {
                matches!(
                    u.state,
                    UnitState::Stopped | UnitState::Exited { .. } | UnitState::Failed { .. }
                )
            })
    }

    /// The earliest time `poll` has something to do.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.units
            .iter()
            .flat_map(|u| {
                let backoff = match u.state {
                    UnitState::BackingOff { at, .. } if !self.shutting_down => Some(at),
                    _ => None,
                };
                let health = match u.state {
                    UnitState::Running { .. } if !u.health_in_flight && !self.shutting_down => {
                        u.next_health
                    }
                    _ => None,
                };
                [backoff, health, u.kill_at]
            })
            .flatten()
            .min()
    }

    fn index(&self, service: &str) -> Option<usize> {
        self.units.iter().position(|u| u.name == service)
    }

    fn set_state(&mut self, i: usize, state: UnitState, out: &mut Vec<Action>) {
        if self.units[i].state != state {
            self.units[i].state = state.clone();
            out.push(Action::Report {
                service: self.units[i].name.clone(),
                state,
            });
        }
    }

    /// Handles an event at time `now`.
    pub fn handle(&mut self, now: Duration, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Started { service } => {
                if let Some(i) = self.index(&service) {
                    let u = &mut self.units[i];
                    u.ever_started = true;
                    u.started_at = now;
                    u.health_failures = 0;
                    u.health_in_flight = false;
                    let health = match &u.health {
                        Some(h) => {
                            u.next_health = Some(now + h.start_interval.min(h.interval));
                            Health::Starting
                        }
                        None => Health::None,
                    };
                    if self.shutting_down {
                        // Raced with shutdown: stop it right away.
                        self.begin_stop(i, now, &mut out);
                    } else {
                        self.set_state(i, UnitState::Running { health }, &mut out);
                    }
                }
            }
            Event::StartFailed { service, reason } => {
                if let Some(i) = self.index(&service) {
                    log::warn!("start {service}: {reason}");
                    self.exited(i, now, 127, Some(reason), &mut out);
                }
            }
            Event::Exited { service, code } => {
                if let Some(i) = self.index(&service) {
                    self.exited(i, now, code, None, &mut out);
                }
            }
            Event::HealthResult { service, ok } => {
                if let Some(i) = self.index(&service) {
                    self.health_result(i, now, ok, &mut out);
                }
            }
        }
        out.extend(self.poll(now));
        out
    }

    fn exited(
        &mut self,
        i: usize,
        now: Duration,
        code: i32,
        reason: Option<String>,
        out: &mut Vec<Action>,
    ) {
        let u = &mut self.units[i];
        u.next_health = None;
        u.health_in_flight = false;
        u.kill_at = None;
        if code == 0 {
            u.completed_ok = true;
        }
        if self.shutting_down {
            self.set_state(i, UnitState::Stopped, out);
            return;
        }
        let restart = match u.restart {
            RestartPolicy::No => false,
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
            RestartPolicy::OnFailure { max_retries } => {
                code != 0 && max_retries.is_none_or(|max| u.restarts < max)
            }
        };
        if !restart {
            let state = match reason {
                Some(reason) => UnitState::Failed { reason },
                None => UnitState::Exited { code },
            };
            self.set_state(i, state, out);
            return;
        }
        if now.saturating_sub(u.started_at) >= RESTART_RESET_AFTER && u.ever_started {
            u.consecutive = 0;
        }
        let factor = 1u32.checked_shl(u.consecutive).unwrap_or(u32::MAX);
        let delay = RESTART_BACKOFF_START
            .saturating_mul(factor)
            .min(RESTART_BACKOFF_MAX);
        u.consecutive = u.consecutive.saturating_add(1);
        self.set_state(
            i,
            UnitState::BackingOff {
                code,
                at: now + delay,
            },
            out,
        );
    }

    fn health_result(&mut self, i: usize, now: Duration, ok: bool, out: &mut Vec<Action>) {
        let u = &mut self.units[i];
        u.health_in_flight = false;
        let (Some(h), UnitState::Running { health }) = (u.health.clone(), u.state.clone()) else {
            return;
        };
        let in_start_period = now.saturating_sub(u.started_at) < h.start_period;
        let new_health = if ok {
            u.health_failures = 0;
            Health::Healthy
        } else if in_start_period {
            health
        } else {
            u.health_failures += 1;
            if u.health_failures >= h.retries.max(1) {
                Health::Unhealthy
            } else {
                health
            }
        };
        let interval = if in_start_period && new_health == Health::Starting {
            h.start_interval
        } else {
            h.interval
        };
        u.next_health = Some(now + interval);
        self.set_state(i, UnitState::Running { health: new_health }, out);
    }

    /// Whether the dependencies of unit `i` allow it to start: `Ok(true)` start,
    /// `Ok(false)` wait, `Err(reason)` never.
    fn deps_ready(&self, i: usize) -> Result<bool, String> {
        let mut ready = true;
        for d in &self.units[i].depends_on {
            let Some(j) = self.index(&d.service) else {
                continue; // optional dependency that does not exist
            };
            let dep = &self.units[j];
            let final_state = matches!(
                dep.state,
                UnitState::Exited { .. } | UnitState::Failed { .. }
            );
            let met = match d.condition {
                DependencyCondition::Started => dep.ever_started,
                DependencyCondition::Healthy => {
                    if dep.health.is_none() {
                        if d.required {
                            return Err(format!("dependency {} has no healthcheck", dep.name));
                        }
                        true
                    } else {
                        matches!(
                            dep.state,
                            UnitState::Running {
                                health: Health::Healthy
                            }
                        )
                    }
                }
                DependencyCondition::CompletedSuccessfully => dep.completed_ok,
            };
            if met {
                continue;
            }
            let failed = final_state
                || (d.condition == DependencyCondition::CompletedSuccessfully
                    && matches!(dep.state, UnitState::Exited { code } if code != 0));
            if failed {
                if d.required {
                    return Err(format!(
                        "dependency {} did not meet its condition",
                        dep.name
                    ));
                }
                continue;
            }
            ready = false;
        }
        Ok(ready)
    }

    /// Advances timers and starts whatever became ready at `now`.
    pub fn poll(&mut self, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        if self.shutting_down {
            self.advance_shutdown(now, &mut out);
            return out;
        }
        // Loop: a start can make another unit ready only after its Started event, so one
        // pass suffices, but a failure can cascade through dependents.
        let mut changed = true;
        while changed {
            changed = false;
            for i in 0..self.units.len() {
                match self.units[i].state.clone() {
                    UnitState::Waiting => match self.deps_ready(i) {
                        Ok(true) => {
                            out.push(Action::Start {
                                service: self.units[i].name.clone(),
                            });
                            self.set_state(i, UnitState::Starting, &mut out);
                        }
                        Ok(false) => {}
                        Err(reason) => {
                            self.set_state(i, UnitState::Failed { reason }, &mut out);
                            changed = true;
                        }
                    },
                    UnitState::BackingOff { at, .. } if at <= now => {
                        self.units[i].restarts += 1;
                        out.push(Action::Start {
                            service: self.units[i].name.clone(),
                        });
                        self.set_state(i, UnitState::Starting, &mut out);
                    }
                    UnitState::Running { .. } => {
                        let u = &mut self.units[i];
                        if !u.health_in_flight && u.next_health.is_some_and(|t| t <= now) {
                            u.health_in_flight = true;
                            out.push(Action::CheckHealth {
                                service: u.name.clone(),
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// Requests an orderly stop of everything.
    pub fn shutdown(&mut self, now: Duration) -> Vec<Action> {
        self.shutting_down = true;
        let mut out = Vec::new();
        for i in 0..self.units.len() {
            if matches!(
                self.units[i].state,
                UnitState::Waiting | UnitState::BackingOff { .. }
            ) {
                self.set_state(i, UnitState::Stopped, &mut out);
            }
        }
        self.advance_shutdown(now, &mut out);
        out
    }

    fn begin_stop(&mut self, i: usize, now: Duration, out: &mut Vec<Action>) {
        let u = &mut self.units[i];
        u.kill_at = Some(now + u.grace);
        u.next_health = None;
        out.push(Action::Signal {
            service: u.name.clone(),
            signal: u.stop_signal.clone(),
        });
        self.set_state(i, UnitState::Stopping, out);
    }

    fn advance_shutdown(&mut self, now: Duration, out: &mut Vec<Action>) {
        for i in 0..self.units.len() {
            let name = self.units[i].name.clone();
            match self.units[i].state {
                UnitState::Running { .. } => {
                    // Wait for every running dependent to stop first.
                    let dependents_active = self.units.iter().any(|u| {
                        u.depends_on.iter().any(|d| d.service == name)
                            && matches!(
                                u.state,
                                UnitState::Running { .. }
                                    | UnitState::Stopping
                                    | UnitState::Starting
                            )
                    });
                    if !dependents_active {
                        self.begin_stop(i, now, out);
                    }
                }
                UnitState::Stopping => {
                    if let Some(at) = self.units[i].kill_at
                        && at <= now
                    {
                        self.units[i].kill_at = None;
                        out.push(Action::Kill { service: name });
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
