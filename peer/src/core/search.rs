//! The search for a direct path that the plain punch cannot open. When one side's NAT gives every
//! destination a port of its own (symmetric), the port it uses towards the friend is not the one the broker
//! saw; and when the friend's router lets in only packets from addresses and ports it has sent to, nobody
//! can tell it which port to open for. A birthday search finds one, as Tailscale does between a "hard" and
//! an "easy" NAT:
//!
//! - the side whose port cannot be known *listens*: it opens [`SOCKETS`] sockets, each sending one
//!   short-lived packet towards the friend's one known address, which makes that many ports on its NAT,
//!   each open to packets from that address;
//! - the other side *probes*: from its one socket (whose port the broker saw, and which is the same towards
//!   everyone) it sends packets to random ports of the listener's public address, each opening its own
//!   router to that port.
//!
//! Each probe finds one of the open ports with chance `SOCKETS / PORTS`: about 1.3 s at the pace below,
//! and after [`SEARCH_FOR`] the chance that none did is below one in ten million. The listening socket
//! that a probe reached then dials the prober's address, which its router now lets in.
//!
//! This module holds the rules: who plays which part, which ports are probed in which order, and how often
//! a pair may search. `direct::search` does the sending and listening.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Searches an agent runs at once (with different devices), each with its [`SOCKETS`]: a friend with many
/// devices, or many friends relayed at once, cannot make it open thousands of sockets.
pub(crate) const AT_ONCE: usize = 2;
/// Sockets the listening side opens: ports on its NAT that a probe may find.
pub(crate) const SOCKETS: usize = 256;
/// The lowest port probed: NATs hand out ports above the well-known ones.
const FIRST_PORT: u32 = 1024;
/// How many ports are probed, each once: every port from [`FIRST_PORT`] on.
const PORTS: u32 = 65536 - FIRST_PORT;
/// Probes sent per tick ...
pub(crate) const PROBES_PER_TICK: usize = 10;
/// ... and the tick: 200 probes a second, a few kilobytes a second, for at most [`SEARCH_FOR`].
pub(crate) const TICK: Duration = Duration::from_millis(50);
/// How long one search lasts. Shorter than the 30 s Linux keeps state for an unanswered UDP packet, so the
/// listener's ports stay open throughout.
pub(crate) const SEARCH_FOR: Duration = Duration::from_secs(20);
/// After a search that found nothing, the next one with the same device waits this long, doubling ...
const AGAIN_AFTER: Duration = Duration::from_secs(5 * 60);
/// ... up to this.
const AGAIN_AT_MOST: Duration = Duration::from_secs(60 * 60);
/// A friend asking to search is answered this much before our own next search would be due: the two
/// sides' clocks for a pair start a round trip apart.
const JOIN_SLACK: Duration = Duration::from_secs(60);
/// Starts every probe, so that a probe is told from anything else that reaches a socket.
const MAGIC: &[u8; 8] = b"p2pim-s1";

/// Which parts this side plays in a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Roles {
    /// Open many sockets and wait for a probe (our NAT's port towards the friend cannot be known).
    pub(crate) listen: bool,
    /// Probe the friend's public address (the friend's port towards us cannot be known).
    pub(crate) probe: bool,
}

/// The parts this side plays, from whether each side's NAT kept its port towards the broker; `None` when
/// both did: both ports are then known, and the plain punch is all a search could do.
pub(crate) fn roles(mine_kept: bool, theirs_kept: bool) -> Option<Roles> {
    if mine_kept && theirs_kept {
        return None;
    }
    Some(Roles { listen: !mine_kept, probe: !theirs_kept })
}

/// A probe's payload: the magic and the search's token.
pub(crate) fn probe(token: &[u8; 16]) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[..8].copy_from_slice(MAGIC);
    p[8..].copy_from_slice(token);
    p
}

/// Whether a datagram is a probe of this search.
pub(crate) fn is_probe(datagram: &[u8], token: &[u8; 16]) -> bool {
    datagram == probe(token)
}

/// Every port from [`FIRST_PORT`] up, each once, in an order that random `seed` bits pick: a step coprime
/// with [`PORTS`] (2^10 · 3^2 · 7) from a random start visits every port before any comes again.
pub(crate) struct Ports {
    start: u64,
    step: u64,
    taken: u32,
}

impl Ports {
    pub(crate) fn new(seed: u64) -> Self {
        let n = u64::from(PORTS);
        let mut step = ((seed >> 32) % n) | 1;
        while step.is_multiple_of(3) || step.is_multiple_of(7) {
            step += 2;
        }
        Self { start: seed % n, step, taken: 0 }
    }
}

impl Iterator for Ports {
    type Item = u16;

    fn next(&mut self) -> Option<u16> {
        if self.taken == PORTS {
            return None;
        }
        let offset = (self.start + u64::from(self.taken) * self.step) % u64::from(PORTS);
        self.taken += 1;
        Some((u64::from(FIRST_PORT) + offset) as u16)
    }
}

/// How often each pair may search: at once the first time it is relayed, then after a search that found
/// nothing, [`AGAIN_AFTER`] doubling up to [`AGAIN_AT_MOST`], so that two symmetric NATs (which no search
/// gets through) cost little. A pair that found a direct path starts afresh.
pub(crate) struct Pacer<K> {
    /// Per pair: when the next search may start, and how many started since the last success.
    next: HashMap<K, (Instant, u32)>,
}

impl<K: Hash + Eq> Default for Pacer<K> {
    fn default() -> Self {
        Self { next: HashMap::new() }
    }
}

impl<K: Hash + Eq> Pacer<K> {
    /// Whether this side may lead a search with `key` now.
    pub(crate) fn may_lead(&self, key: &K, now: Instant) -> bool {
        self.next.get(key).is_none_or(|(at, _)| now >= *at)
    }

    /// Whether this side may join a search the friend leads now: as leading, with [`JOIN_SLACK`] of grace.
    pub(crate) fn may_join(&self, key: &K, now: Instant) -> bool {
        self.next.get(key).is_none_or(|(at, _)| now + JOIN_SLACK >= *at)
    }

    /// A search with `key` starts now.
    pub(crate) fn started(&mut self, key: K, now: Instant) {
        let entry = self.next.entry(key).or_insert((now, 0));
        entry.0 = now + again_after(entry.1);
        entry.1 += 1;
    }

    /// A search with `key` found a direct path: the next time the pair is relayed, it searches at once.
    pub(crate) fn found(&mut self, key: &K) {
        self.next.remove(key);
    }
}

fn again_after(searches: u32) -> Duration {
    AGAIN_AFTER.saturating_mul(1 << searches.min(8)).min(AGAIN_AT_MOST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_plays_which_part() {
        // A symmetric NAT (port not kept) facing one that keeps ports: it listens, the other probes.
        assert_eq!(roles(false, true), Some(Roles { listen: true, probe: false }));
        assert_eq!(roles(true, false), Some(Roles { listen: false, probe: true }));
        // Neither kept its port (a symmetric NAT, or one that shifts ports): each plays both parts.
        assert_eq!(roles(false, false), Some(Roles { listen: true, probe: true }));
        // Both kept theirs: nothing to search for.
        assert_eq!(roles(true, true), None);
    }

    #[test]
    fn every_port_is_probed_once_whatever_the_seed() {
        for seed in [0, 1, 7, 63 << 32, u64::MAX, 0x1234_5678_9abc_def0] {
            let mut seen = vec![false; 65536];
            let mut count = 0;
            for p in Ports::new(seed) {
                assert!(u32::from(p) >= FIRST_PORT, "port {p} below the range");
                assert!(!seen[usize::from(p)], "seed {seed:#x}: port {p} twice");
                seen[usize::from(p)] = true;
                count += 1;
            }
            assert_eq!(count, PORTS);
        }
    }

    #[test]
    fn different_seeds_probe_in_different_orders() {
        let a: Vec<u16> = Ports::new(1).take(8).collect();
        let b: Vec<u16> = Ports::new(0xdead_beef_0000_0042).take(8).collect();
        assert_ne!(a, b);
    }

    #[test]
    fn only_this_searchs_probes_count() {
        let token = [9; 16];
        assert!(is_probe(&probe(&token), &token));
        assert!(!is_probe(&probe(&[8; 16]), &token));
        assert!(!is_probe(&probe(&token)[..23], &token));
        assert!(!is_probe(&[0], &token));
    }

    #[test]
    fn searches_that_find_nothing_come_ever_more_rarely() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        assert!(p.may_lead(&"bob", t0));
        p.started("bob", t0);
        assert!(!p.may_lead(&"bob", t0 + Duration::from_secs(60)));
        assert!(p.may_lead(&"carol", t0), "pairs are paced apart");
        let second = t0 + AGAIN_AFTER;
        assert!(p.may_lead(&"bob", second));
        p.started("bob", second);
        assert!(!p.may_lead(&"bob", second + AGAIN_AFTER));
        assert!(p.may_lead(&"bob", second + AGAIN_AFTER * 2));
        // However many failed, an hour apart at most.
        let mut at = second;
        for _ in 0..20 {
            at += AGAIN_AT_MOST;
            assert!(p.may_lead(&"bob", at));
            p.started("bob", at);
        }
        // A search that found a path lets the next relayed spell search at once.
        p.found(&"bob");
        assert!(p.may_lead(&"bob", at));
    }

    #[test]
    fn a_friend_leading_a_little_early_is_joined_but_not_one_asking_too_often() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        p.started("bob", t0 + Duration::from_millis(40));
        // The leader's clock started a round trip before ours.
        assert!(p.may_join(&"bob", t0 + AGAIN_AFTER));
        assert!(!p.may_join(&"bob", t0 + Duration::from_secs(60)));
    }
}
