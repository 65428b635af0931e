//! CLOCK_MONOTONIC: the timestamps of log lines and results records.

use nix::time::{ClockId, clock_gettime};

/// Microseconds since boot (CLOCK_MONOTONIC); 0 if the clock cannot be read.
pub fn monotonic_us() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .ok()
        .and_then(|ts| {
            let secs = u64::try_from(ts.tv_sec()).ok()?;
            let nanos = u64::try_from(ts.tv_nsec()).ok()?;
            secs.checked_mul(1_000_000)?.checked_add(nanos / 1_000)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn monotonic_advances() {
        let a = super::monotonic_us();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::monotonic_us();
        assert!(a > 0 && b >= a + 1_000, "{a} {b}");
    }
}
