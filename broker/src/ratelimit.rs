//! Slows down password guessing, per account and per source address.
//!
//! Pure state: the caller passes the time. A key gets [`FREE_FAILURES`] failed attempts; each failure after
//! that locks it for twice as long as the last (1 s, 2 s, 4 s … up to [`MAX_LOCK`]). A success clears the key;
//! a key with no failure for [`FORGET_AFTER`] is forgotten. Memory is bounded by pruning forgotten keys.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Failures allowed before the first lock.
pub const FREE_FAILURES: u32 = 5;
/// Longest lock.
pub const MAX_LOCK: Duration = Duration::from_secs(300);
/// Quiet time after which a key's failures are forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(900);
/// Keys kept before a prune pass runs.
const PRUNE_AT: usize = 100_000;

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    locked_until: Instant,
}

/// Failure counts for one kind of key (usernames, or IP addresses).
#[derive(Debug)]
pub struct Limiter<K> {
    entries: HashMap<K, Entry>,
}

impl<K: Hash + Eq + Clone> Default for Limiter<K> {
    fn default() -> Self {
        Self { entries: HashMap::new() }
    }
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// `Err(seconds to wait)` while `key` is locked.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), u64> {
        match self.entries.get(key) {
            Some(e) if e.locked_until > now => Err((e.locked_until - now).as_secs_f64().ceil().max(1.0) as u64),
            _ => Ok(()),
        }
    }

    /// Records a failed attempt.
    pub fn failure(&mut self, key: &K, now: Instant) {
        if self.entries.len() >= PRUNE_AT {
            self.entries.retain(|_, e| now.saturating_duration_since(e.last_failure) < FORGET_AFTER);
        }
        let e = self.entries.entry(key.clone()).or_insert(Entry { failures: 0, last_failure: now, locked_until: now });
        if now.saturating_duration_since(e.last_failure) >= FORGET_AFTER {
            e.failures = 0;
        }
        e.failures += 1;
        e.last_failure = now;
        if e.failures > FREE_FAILURES {
            let exp = (e.failures - FREE_FAILURES - 1).min(16);
            e.locked_until = now + Duration::from_secs(1u64 << exp).min(MAX_LOCK);
        }
    }

    /// Records a success: the key starts clean.
    pub fn success(&mut self, key: &K) {
        self.entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_free_failures_and_doubles() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert!(l.check(&"bob", t0).is_ok());
            l.failure(&"bob", t0);
        }
        assert!(l.check(&"bob", t0).is_ok());
        l.failure(&"bob", t0);
        assert_eq!(l.check(&"bob", t0), Err(1));
        let t1 = t0 + Duration::from_secs(1);
        assert!(l.check(&"bob", t1).is_ok());
        l.failure(&"bob", t1);
        assert_eq!(l.check(&"bob", t1), Err(2));
        assert!(l.check(&"alice", t1).is_ok(), "other keys unaffected");
    }

    #[test]
    fn success_and_quiet_time_clear() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for _ in 0..=FREE_FAILURES {
            l.failure(&1, t0);
        }
        assert!(l.check(&1, t0).is_err());
        l.success(&1);
        assert!(l.check(&1, t0).is_ok());
        for _ in 0..=FREE_FAILURES {
            l.failure(&2, t0);
        }
        let later = t0 + FORGET_AFTER;
        l.failure(&2, later);
        assert!(l.check(&2, later).is_ok(), "old failures forgotten");
    }

    #[test]
    fn lock_is_capped() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for _ in 0..100 {
            l.failure(&"x", t0);
        }
        assert_eq!(l.check(&"x", t0), Err(MAX_LOCK.as_secs()));
    }
}
