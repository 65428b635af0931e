//! Exponential restart backoff for the services PID 1 keeps alive (the guest API process): the
//! delay doubles after each failure up to a cap, and resets once a run lasted long enough to count
//! as healthy.

use std::time::Duration;

/// The restart delay policy of one supervised process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    healthy_after: Duration,
    next: Duration,
    restarts: u32,
}

impl Backoff {
    /// Delays start at `initial`, double up to `max`, and reset after a run of at least
    /// `healthy_after`.
    pub fn new(initial: Duration, max: Duration, healthy_after: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            healthy_after,
            next: initial,
            restarts: 0,
        }
    }

    /// The process exited after running for `ran`: how long to wait before restarting it.
    pub fn on_exit(&mut self, ran: Duration) -> Duration {
        if ran >= self.healthy_after {
            self.next = self.initial;
        }
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        self.restarts = self.restarts.saturating_add(1);
        delay
    }

    /// How many restarts were scheduled so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets_after_a_healthy_run() {
        let s = Duration::from_secs;
        let mut b = Backoff::new(s(1), s(30), s(60));
        let delays: Vec<_> = (0..7).map(|_| b.on_exit(s(2))).collect();
        assert_eq!(delays, [s(1), s(2), s(4), s(8), s(16), s(30), s(30)]);
        assert_eq!(b.on_exit(s(61)), s(1), "a healthy run resets the delay");
        assert_eq!(b.on_exit(s(0)), s(2));
        assert_eq!(b.restarts(), 9);
    }
}
