//! The agent's reconnect schedule: quick first retries (a broker restart takes a second), then exponential
//! growth to a cap, with jitter so that a thousand agents do not reconnect in lockstep.

use std::time::Duration;

/// Exponential backoff state. Pure: the caller supplies the randomness.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(250), Duration::from_secs(10))
    }
}

impl Backoff {
    /// A schedule starting at `first` and doubling up to `cap`.
    pub fn new(first: Duration, cap: Duration) -> Self {
        Self { first, cap, attempt: 0 }
    }

    /// Delay before the next attempt. `jitter` in `[0, 1)` shortens it by up to half.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let exp = self.first.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        let base = exp.min(self.cap);
        base.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// Called after a successful connection: the next failure starts the schedule again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (0..6).map(|_| b.next_delay(0.0)).collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(delays[3], Duration::from_millis(800));
        assert_eq!(delays[5], Duration::from_secs(1));
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(100));
    }

    #[test]
    fn jitter_shortens_by_at_most_half() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.next_delay(0.999_999).as_millis(), 50);
        for _ in 0..100 {
            b.next_delay(0.5);
        }
        assert!(b.next_delay(1.0) >= Duration::from_millis(500));
    }
}
