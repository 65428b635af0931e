use std::collections::BTreeMap;

use super::*;
use crate::compose::{ComposePolicy, parse};

const D: &str = "sha256:f1f178776ddc8034e550bff87cac9ba352599418998c352b73b71a5e7b8983a7";

fn app(services: &str) -> App {
    let mut yaml = String::from("services:\n");
    for block in services.split("---\n") {
        let (name, body) = block.split_once('\n').unwrap();
        yaml.push_str(&format!("  {name}:\n    image: x@{D}\n{body}"));
    }
    parse(None, &yaml, &BTreeMap::new(), &ComposePolicy::default()).unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn starts(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Start { service } => Some(service.clone()),
            _ => None,
        })
        .collect()
}

fn started(s: &str) -> Event {
    Event::Started { service: s.into() }
}

fn exited(s: &str, code: i32) -> Event {
    Event::Exited {
        service: s.into(),
        code,
    }
}

#[test]
fn on_failure_three_restarts_with_backoff_then_stays_stopped() {
    let mut sup = Supervisor::new(&app("job\n    restart: on-failure:3\n"), &[]);
    let mut now = Duration::ZERO;
    assert_eq!(starts(&sup.poll(now)), ["job"]);
    let mut delays = Vec::new();
    let mut start_count = 1;
    for _ in 0..10 {
        sup.handle(now, started("job"));
        now += ms(5);
        let actions = sup.handle(now, exited("job", 1));
        assert!(starts(&actions).is_empty(), "never restarts immediately");
        let Some(deadline) = sup.next_deadline() else {
            break;
        };
        delays.push(deadline - now);
        // Just before the deadline nothing happens; at it, the restart.
        assert!(starts(&sup.poll(deadline - ms(1))).is_empty());
        now = deadline;
        let s = starts(&sup.poll(now));
        assert_eq!(s, ["job"]);
        start_count += 1;
    }
    assert_eq!(start_count, 4, "1 start + 3 restarts");
    assert_eq!(delays, [ms(100), ms(200), ms(400)]);
    assert_eq!(sup.restarts("job"), 3);
    assert_eq!(sup.state("job"), Some(&UnitState::Exited { code: 1 }));
    assert!(starts(&sup.poll(now + Duration::from_secs(3600))).is_empty());
}

#[test]
fn on_failure_does_not_restart_success_and_always_does() {
    let mut sup = Supervisor::new(
        &app("a\n    restart: on-failure\n---\nb\n    restart: always\n---\nc\n"),
        &[],
    );
    let now = Duration::ZERO;
    assert_eq!(starts(&sup.poll(now)), ["a", "b", "c"]);
    for s in ["a", "b", "c"] {
        sup.handle(now, started(s));
        sup.handle(now, exited(s, 0));
    }
    assert_eq!(sup.state("a"), Some(&UnitState::Exited { code: 0 }));
    assert!(matches!(sup.state("b"), Some(UnitState::BackingOff { .. })));
    assert_eq!(sup.state("c"), Some(&UnitState::Exited { code: 0 }));
    assert_eq!(starts(&sup.poll(ms(100))), ["b"]);
}

#[test]
fn backoff_resets_after_a_long_run() {
    let mut sup = Supervisor::new(&app("a\n    restart: always\n"), &[]);
    let mut now = Duration::ZERO;
    sup.poll(now);
    for _ in 0..3 {
        sup.handle(now, started("a"));
        sup.handle(now, exited("a", 1));
        now = sup.next_deadline().unwrap();
        sup.poll(now);
    }
    sup.handle(now, started("a"));
    now += Duration::from_secs(11);
    sup.handle(now, exited("a", 1));
    assert_eq!(sup.next_deadline().unwrap() - now, ms(100));
}

fn health_app() -> App {
    app(
        "db\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: 1s\n      timeout: 1s\n      retries: 2\n      start_period: 0s\n      start_interval: 1s\n---\nweb\n    depends_on:\n      db:\n        condition: service_healthy\n",
    )
}

#[test]
fn dependent_waits_for_health() {
    let mut sup = Supervisor::new(&health_app(), &[]);
    let mut now = Duration::ZERO;
    assert_eq!(starts(&sup.poll(now)), ["db"], "web waits");
    assert!(starts(&sup.handle(now, started("db"))).is_empty());
    assert_eq!(sup.next_deadline(), Some(Duration::from_secs(1)));
    now = Duration::from_secs(1);
    let actions = sup.poll(now);
    assert!(actions.contains(&Action::CheckHealth {
        service: "db".into()
    }));
    // Only one check in flight.
    assert!(!sup.poll(now).contains(&Action::CheckHealth {
        service: "db".into()
    }));
    let actions = sup.handle(
        now,
        Event::HealthResult {
            service: "db".into(),
            ok: false,
        },
    );
    assert!(starts(&actions).is_empty());
    now += Duration::from_secs(1);
    sup.poll(now);
    let actions = sup.handle(
        now,
        Event::HealthResult {
            service: "db".into(),
            ok: true,
        },
    );
    assert!(actions.contains(&Action::Report {
        service: "db".into(),
        state: UnitState::Running {
            health: Health::Healthy
        }
    }));
    assert_eq!(starts(&actions), ["web"]);
}

#[test]
fn unhealthy_after_retries_and_dependency_without_healthcheck_fails() {
    let mut sup = Supervisor::new(&health_app(), &[]);
    let mut now = Duration::ZERO;
    sup.poll(now);
    sup.handle(now, started("db"));
    for _ in 0..2 {
        now = sup.next_deadline().unwrap();
        sup.poll(now);
        sup.handle(
            now,
            Event::HealthResult {
                service: "db".into(),
                ok: false,
            },
        );
    }
    assert_eq!(
        sup.state("db"),
        Some(&UnitState::Running {
            health: Health::Unhealthy
        })
    );
    assert_eq!(sup.state("web"), Some(&UnitState::Waiting));

    let mut sup = Supervisor::new(
        &app("db\n---\nweb\n    depends_on:\n      db:\n        condition: service_healthy\n"),
        &[],
    );
    sup.poll(Duration::ZERO);
    assert!(
        matches!(sup.state("web"), Some(UnitState::Failed { reason }) if reason.contains("no healthcheck"))
    );
}

#[test]
fn completed_successfully_gates_and_failure_cascades() {
    let yaml = "init\n---\napp\n    depends_on:\n      init:\n        condition: service_completed_successfully\n---\nfront\n    depends_on: [app]\n";
    let mut sup = Supervisor::new(&app(yaml), &[]);
    let now = Duration::ZERO;
    assert_eq!(starts(&sup.poll(now)), ["init"]);
    sup.handle(now, started("init"));
    assert_eq!(starts(&sup.handle(now, exited("init", 0))), ["app"]);

    let mut sup = Supervisor::new(&app(yaml), &[]);
    sup.poll(now);
    sup.handle(now, started("init"));
    let actions = sup.handle(now, exited("init", 2));
    assert!(starts(&actions).is_empty());
    assert!(matches!(sup.state("app"), Some(UnitState::Failed { .. })));
    assert!(
        matches!(sup.state("front"), Some(UnitState::Failed { .. })),
        "cascade"
    );
}

#[test]
fn shutdown_in_reverse_order_with_signal_and_grace() {
    let yaml = "db\n    stop_grace_period: 5s\n---\nweb\n    depends_on: [db]\n    stop_signal: SIGINT\n    stop_grace_period: 2s\n---\nworker\n    depends_on: [db]\n";
    let mut sup = Supervisor::new(&app(yaml), &[("db".into(), "SIGQUIT".into())]);
    let mut now = Duration::ZERO;
    sup.poll(now);
    sup.handle(now, started("db"));
    sup.handle(now, started("web"));
    sup.handle(now, started("worker"));
    now = Duration::from_secs(100);
    let actions = sup.shutdown(now);
    let signals: Vec<_> = actions
        .iter()
        .filter(|a| matches!(a, Action::Signal { .. }))
        .cloned()
        .collect();
    assert_eq!(
        signals,
        [
            Action::Signal {
                service: "web".into(),
                signal: "SIGINT".into()
            },
            Action::Signal {
                service: "worker".into(),
                signal: "SIGTERM".into()
            },
        ],
        "dependents first, in parallel; db waits"
    );
    // worker exits; web ignores SIGINT and is killed after 2 s.
    sup.handle(now + ms(10), exited("worker", 143));
    assert!(
        sup.poll(now + ms(1999))
            .iter()
            .all(|a| !matches!(a, Action::Kill { .. }))
    );
    let actions = sup.poll(now + Duration::from_secs(2));
    assert_eq!(
        actions,
        [Action::Kill {
            service: "web".into()
        }]
    );
    let actions = sup.handle(now + Duration::from_secs(2), exited("web", 137));
    assert!(actions.contains(&Action::Signal {
        service: "db".into(),
        signal: "SIGQUIT".into()
    }));
    assert!(!sup.finished());
    sup.handle(now + Duration::from_secs(3), exited("db", 0));
    assert!(sup.finished());
    assert_eq!(sup.state("db"), Some(&UnitState::Stopped));
    // Nothing restarts during shutdown, even with restart: always.
    assert!(starts(&sup.poll(now + Duration::from_secs(60))).is_empty());
}

#[test]
fn shutdown_cancels_pending_restarts() {
    let mut sup = Supervisor::new(&app("a\n    restart: always\n"), &[]);
    sup.poll(Duration::ZERO);
    sup.handle(Duration::ZERO, started("a"));
    sup.handle(ms(1), exited("a", 1));
    assert!(matches!(sup.state("a"), Some(UnitState::BackingOff { .. })));
    sup.shutdown(ms(2));
    assert!(sup.finished());
    assert!(starts(&sup.poll(Duration::from_secs(10))).is_empty());
}
