//! Limiters and quotas keyed by account, address or anything else, with a hard bound on their memory.
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
        // Still full (a flood of distinct keys): keep only the locks that are in force, then nothing. The
        // table never grows past PRUNE_AT keys, whatever a stranger sends.
        if self.entries.len() >= PRUNE_AT {
            self.entries.retain(|_, e| e.locked_until > now);
        }
        if self.entries.len() >= PRUNE_AT {
            self.entries.clear();
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

/// At most `max` events per key per `window` (a fixed window per key): caps what one address may cost the
/// broker even when every attempt succeeds (account creation hashes a password).
#[derive(Debug)]
pub struct Quota<K> {
    max: u32,
    window: Duration,
    entries: HashMap<K, (Instant, u32)>,
}

impl<K: Hash + Eq + Clone> Quota<K> {
    pub fn new(max: u32, window: Duration) -> Self {
        Self { max, window, entries: HashMap::new() }
    }

    /// Counts one event for `key`, or `Err(seconds until the window resets)` if the quota is used up.
    pub fn take(&mut self, key: &K, now: Instant) -> Result<(), u64> {
        if self.entries.len() >= PRUNE_AT {
            let window = self.window;
            self.entries.retain(|_, (start, _)| now.saturating_duration_since(*start) < window);
        }
        if self.entries.len() >= PRUNE_AT {
            self.entries.clear();
        }
        let e = self.entries.entry(key.clone()).or_insert((now, 0));
        if now.saturating_duration_since(e.0) >= self.window {
            *e = (now, 0);
        }
        if e.1 >= self.max {
            let left = self.window.saturating_sub(now.saturating_duration_since(e.0));
            return Err(left.as_secs_f64().ceil().max(1.0) as u64);
        }
        e.1 += 1;
        Ok(())
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
    fn quota_resets_with_its_window() {
        let mut q = Quota::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(q.take(&"ip", t0).is_ok());
        assert!(q.take(&"ip", t0).is_ok());
        assert_eq!(q.take(&"ip", t0 + Duration::from_secs(10)), Err(50));
        assert!(q.take(&"other", t0).is_ok());
        assert!(q.take(&"ip", t0 + Duration::from_secs(60)).is_ok());
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
