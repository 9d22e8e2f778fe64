//! Reconnect delays: exponential with jitter, capped. Pure; the caller sleeps and supplies the
//! random number, so the schedule is pinned by tests.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            failures: 0,
        }
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The delay after one more failure; `unit` in [0, 1) spreads it over [d/2, d) so that
    /// many agents cut off together do not reconnect together.
    pub fn next(&mut self, unit: f64) -> Duration {
        let d = delay(self.base, self.cap, self.failures, unit);
        self.failures = self.failures.saturating_add(1);
        d
    }
}

pub fn delay(base: Duration, cap: Duration, failures: u32, unit: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << failures.min(20)).min(cap);
    exp / 2 + exp.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
}

/// A random number in [0, 1) for the jitter.
pub fn jitter() -> f64 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_le_bytes(b) as f64 / (u32::MAX as f64 + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let (base, cap) = (Duration::from_millis(500), Duration::from_secs(60));
        let lo: Vec<u64> = (0..10)
            .map(|f| delay(base, cap, f, 0.0).as_millis() as u64)
            .collect();
        assert_eq!(
            lo,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(delay(base, cap, 3, 0.999_999).as_millis(), 3999);
        assert_eq!(delay(base, cap, 40, 0.5), Duration::from_secs(45));
        let mut b = Backoff::new(base, cap);
        b.next(0.0);
        b.next(0.0);
        b.reset();
        assert_eq!(b.next(0.0), Duration::from_millis(250));
    }
}
