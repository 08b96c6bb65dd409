//! Who may try a password now: lockout that stops guessing without locking the real user out.
//!
//! Pure state, time passed in (like [`crate::ratelimit`], which it is built from). The rules:
//! - **Counted before the hash.** [`LoginGuard::begin`] records the attempt as a failure before the caller
//!   awaits the (slow) password check, and [`LoginGuard::succeeded`] takes it back. N attempts in flight at
//!   once therefore see each other: concurrency buys an attacker no extra guesses.
//! - **Known sources are not locked out by strangers.** A device (its TLS key) or an address that has logged
//!   into an account before is *trusted* for that account: it is limited only by its own failures, so a
//!   flood of wrong passwords from elsewhere does not keep the real user out.
//! - **Strangers are limited three ways**: per account, per address, and broker-wide (a budget of stranger
//!   attempts per minute), so spraying from many addresses gains nothing past the global budget.
//! - **Bounded memory.** Keys are usernames that passed validation, addresses and fingerprints; every table
//!   is capped (see [`crate::ratelimit`]), and trust is kept for a few sources per account.

use crate::ratelimit::{Limiter, Quota};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Sources remembered as trusted per account (the most recent ones).
const TRUSTED_PER_ACCOUNT: usize = 16;
/// Accounts whose trusted sources are remembered; past this the oldest half is forgotten.
const TRUSTED_ACCOUNTS: usize = 200_000;

/// Where an attempt comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The TLS key of the device that connected.
    Device([u8; 32]),
    Addr(IpAddr),
}

/// An attempt in flight, to be reported back with [`LoginGuard::succeeded`] (a failure needs no report: it
/// was counted when it began).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    user: String,
    device: Source,
    addr: IpAddr,
    trusted: bool,
}

impl Attempt {
    /// Whether the attempt came from a device or address that logged into this account before.
    pub fn trusted(&self) -> bool {
        self.trusted
    }
}

/// The login limits of one broker.
#[derive(Debug)]
pub struct LoginGuard {
    strangers_by_user: Limiter<String>,
    by_addr: Limiter<IpAddr>,
    /// A trusted source's own failures, per account.
    by_source: Limiter<(String, Source)>,
    global: Quota<()>,
    trusted: HashMap<String, (Vec<Source>, Instant)>,
}

impl LoginGuard {
    /// `strangers_per_minute`: attempts from untrusted sources the whole broker takes per minute.
    pub fn new(strangers_per_minute: u32) -> Self {
        Self {
            strangers_by_user: Limiter::default(),
            by_addr: Limiter::default(),
            by_source: Limiter::default(),
            global: Quota::new(strangers_per_minute.max(1), Duration::from_secs(60)),
            trusted: HashMap::new(),
        }
    }

    /// Whether `user` may try a password now from `device` at `addr`: `Err(seconds to wait)` if not.
    /// Otherwise the attempt is counted as a failure until [`LoginGuard::succeeded`] says otherwise.
    pub fn begin(&mut self, user: &str, device: [u8; 32], addr: IpAddr, now: Instant) -> Result<Attempt, u64> {
        let device = Source::Device(device);
        let trusted_as = self.trusted_source(user, device, addr);
        let user_key = user.to_string();
        match trusted_as {
            Some(src) => {
                let key = (user_key.clone(), src);
                self.by_source.check(&key, now)?;
                self.by_source.failure(&key, now);
            }
            None => {
                let waits = [self.strangers_by_user.check(&user_key, now), self.by_addr.check(&addr, now)];
                if let Some(wait) = waits.into_iter().filter_map(Result::err).max() {
                    return Err(wait);
                }
                self.global.take(&(), now)?;
                self.strangers_by_user.failure(&user_key, now);
                self.by_addr.failure(&addr, now);
            }
        }
        Ok(Attempt { user: user_key, device, addr, trusted: trusted_as.is_some() })
    }

    /// The password was right: the attempt's failure is taken back and its device and address become
    /// trusted for the account.
    pub fn succeeded(&mut self, a: &Attempt, now: Instant) {
        self.by_addr.success(&a.addr);
        self.strangers_by_user.success(&a.user);
        for src in [a.device, Source::Addr(a.addr)] {
            self.by_source.success(&(a.user.clone(), src));
        }
        if self.trusted.len() >= TRUSTED_ACCOUNTS && !self.trusted.contains_key(&a.user) {
            // Forget the accounts that logged in longest ago: they only lose the head start.
            let mut times: Vec<Instant> = self.trusted.values().map(|(_, t)| *t).collect();
            times.sort_unstable();
            let cut = times[times.len() / 2];
            self.trusted.retain(|_, (_, t)| *t > cut);
        }
        let (sources, at) = self.trusted.entry(a.user.clone()).or_insert_with(|| (Vec::new(), now));
        *at = now;
        for src in [a.device, Source::Addr(a.addr)] {
            sources.retain(|s| *s != src);
            sources.push(src);
        }
        let excess = sources.len().saturating_sub(TRUSTED_PER_ACCOUNT);
        sources.drain(..excess);
    }

    /// The trusted source this attempt comes from, if any (its device first: an address can be shared).
    fn trusted_source(&self, user: &str, device: Source, addr: IpAddr) -> Option<Source> {
        let (sources, _) = self.trusted.get(user)?;
        [device, Source::Addr(addr)].into_iter().find(|s| sources.contains(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::FREE_FAILURES;

    const DEV: [u8; 32] = [1; 32];
    const OTHER_DEV: [u8; 32] = [2; 32];

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn attempts_in_flight_count_before_their_outcome() {
        let mut g = LoginGuard::new(10_000);
        let t = Instant::now();
        // Many at once, none finished: only the free ones get through, not all of them.
        let started = (0..50).filter(|_| g.begin("bob", OTHER_DEV, ip(9), t).is_ok()).count();
        assert_eq!(started as u32, FREE_FAILURES + 1);
    }

    #[test]
    fn a_flood_does_not_lock_out_a_known_device_or_address() {
        let mut g = LoginGuard::new(10_000);
        let t = Instant::now();
        let a = g.begin("bob", DEV, ip(1), t).unwrap();
        assert!(!a.trusted());
        g.succeeded(&a, t);
        // A stranger floods bob's account from many addresses.
        for n in 10..60 {
            let _ = g.begin("bob", OTHER_DEV, ip(n), t);
        }
        assert!(g.begin("bob", OTHER_DEV, ip(200), t).is_err(), "strangers are locked out of bob");
        let again = g.begin("bob", DEV, ip(77), t).expect("bob's own device still may try");
        assert!(again.trusted());
        let from_home = g.begin("bob", [3; 32], ip(1), t).expect("a new device at bob's known address may try");
        assert!(from_home.trusted());
    }

    #[test]
    fn a_trusted_source_is_limited_by_its_own_failures() {
        let mut g = LoginGuard::new(10_000);
        let t = Instant::now();
        let a = g.begin("bob", DEV, ip(1), t).unwrap();
        g.succeeded(&a, t);
        let tries = (0..50).take_while(|_| g.begin("bob", DEV, ip(1), t).is_ok()).count();
        assert_eq!(tries as u32, FREE_FAILURES + 1);
        // The stranger side is unaffected by the trusted device's own mistakes.
        assert!(g.begin("bob", OTHER_DEV, ip(50), t).is_ok());
    }

    #[test]
    fn spraying_from_many_addresses_hits_the_global_budget() {
        let mut g = LoginGuard::new(100);
        let t = Instant::now();
        let mut allowed = 0;
        for n in 0..250u32 {
            let user = format!("user{}", n % 50);
            let addr = IpAddr::from([198, 51, 100, (n % 250) as u8]);
            if g.begin(&user, OTHER_DEV, addr, t).is_ok() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 100);
        assert!(g.begin("user1", OTHER_DEV, ip(3), t + Duration::from_secs(60)).is_ok(), "the budget refills");
    }

    #[test]
    fn success_takes_the_attempt_back() {
        let mut g = LoginGuard::new(10_000);
        let t = Instant::now();
        for _ in 0..20 {
            let a = g.begin("bob", DEV, ip(1), t).unwrap();
            g.succeeded(&a, t);
        }
    }

    #[test]
    fn trust_is_bounded_per_account() {
        let mut g = LoginGuard::new(10_000);
        let t = Instant::now();
        for n in 0..100u8 {
            let a = g.begin("bob", [n; 32], ip(n), t).unwrap();
            g.succeeded(&a, t);
        }
        assert_eq!(g.trusted["bob"].0.len(), TRUSTED_PER_ACCOUNT);
    }
}
