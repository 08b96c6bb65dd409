//! The relay: carries friends' QUIC packets between their agents when no direct path opens (see
//! [`shared::relay`]). The broker splices two streams and copies bytes it cannot read: the peers' TLS session
//! runs end to end inside. Limits: friends only, the target device must be online, per-user and total byte
//! rates (exceeding them slows the stream down, it is never buffered), and the whole relay can be switched
//! off. Bytes relayed are counted per user.

use certs::Fingerprint;
use parking_lot::Mutex;
use shared::proto::ErrorCode;
use shared::relay::RelayHello;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bytes read from one side before they are written to the other: what the relay holds per direction.
const CHUNK: usize = 64 * 1024;

/// Operator settings.
#[derive(Debug, Clone, Copy)]
pub struct RelayConfig {
    pub enabled: bool,
    /// Bytes per second one user may relay (both directions of all their relays together); 0: no limit.
    pub user_rate: u64,
    /// Bytes per second for the whole broker; 0: no limit.
    pub total_rate: u64,
}

/// A token bucket that makes callers wait (rather than refusing them) when they exceed the rate.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    /// (tokens, when last refilled); tokens may go negative: the debt is the caller's wait.
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(rate: u64) -> Self {
        Self { rate: rate as f64, state: Mutex::new((rate as f64, Instant::now())) }
    }

    /// Takes `n` bytes' worth and says how long to wait before sending them.
    fn take(&self, n: usize) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let mut s = self.state.lock();
        let now = Instant::now();
        // At most one second's worth saved up: bursts stay short.
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.rate);
        s.1 = now;
        s.0 -= n as f64;
        if s.0 >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-s.0 / self.rate) }
    }

    /// Takes `n` bytes' worth only if they are there now: a datagram over the rate is dropped, not held.
    fn try_take(&self, n: usize) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let mut s = self.state.lock();
        let now = Instant::now();
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.rate);
        s.1 = now;
        if s.0 < n as f64 {
            return false;
        }
        s.0 -= n as f64;
        true
    }
}

/// One user's relaying: their pace and what they relayed since the broker started.
#[derive(Debug)]
pub struct UserRelay {
    bucket: Bucket,
    relayed: AtomicU64,
}

/// The broker's relay state.
pub struct Relay {
    cfg: RelayConfig,
    total: Bucket,
    users: Mutex<HashMap<String, Arc<UserRelay>>>,
}

impl Relay {
    pub fn new(cfg: RelayConfig) -> Self {
        Self { cfg, total: Bucket::new(cfg.total_rate), users: Mutex::default() }
    }

    /// Whether relaying is allowed at all.
    pub fn check_enabled(&self) -> Result<(), ErrorCode> {
        if self.cfg.enabled {
            Ok(())
        } else {
            Err(ErrorCode::RelayUnavailable("this broker does not relay (its operator switched it off)".into()))
        }
    }

    pub(crate) fn user(&self, user: &str) -> Arc<UserRelay> {
        let mut users = self.users.lock();
        let new = || Arc::new(UserRelay { bucket: Bucket::new(self.cfg.user_rate), relayed: AtomicU64::new(0) });
        users.entry(user.to_string()).or_insert_with(new).clone()
    }

    /// Bytes relayed for `user` since the broker started (what they sent through it).
    pub fn relayed_bytes(&self, user: &str) -> u64 {
        self.user(user).relayed.load(Ordering::Relaxed)
    }

    /// Whether `n` bytes of `account`'s channel datagrams fit both rates now (and counts them if so).
    pub(crate) fn admit_datagrams(&self, account: &UserRelay, n: usize) -> bool {
        if !(self.total.try_take(n) && account.bucket.try_take(n)) {
            return false;
        }
        account.relayed.fetch_add(n as u64, Ordering::Relaxed);
        true
    }

    /// Opens the friend's side of a relay: a stream to their agent naming who is on the other end, then
    /// (if their agent speaks channels) its channel id, 0 for none. A friend's agent that takes no new
    /// stream (at its limit, or stuck) fails it rather than holding the requester.
    pub async fn open(
        &self,
        me: &str,
        my_device: Fingerprint,
        theirs: &quinn::Connection,
        channel: u64,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), ErrorCode> {
        let open = async {
            let (mut send, recv) = theirs.open_bi().await.ok()?;
            let hello = RelayHello { username: me.to_string(), fingerprint: my_device.0 };
            shared::io::write_frame(&mut send, &hello).await.ok()?;
            if crate::channels::speaks_channels(theirs) {
                shared::io::write_channel(&mut send, channel).await.ok()?;
            }
            Some((send, recv))
        };
        tokio::time::timeout(shared::relay::OPEN_TIMEOUT, open)
            .await
            .ok()
            .flatten()
            .ok_or_else(|| ErrorCode::RelayUnavailable("the friend's agent did not take the relay".into()))
    }

    /// Copies between the requester's stream and the friend's until either ends.
    pub async fn splice(
        &self,
        me: &str,
        friend: &str,
        ours: (quinn::SendStream, quinn::RecvStream),
        theirs: (quinn::SendStream, quinn::RecvStream),
    ) {
        let ((our_send, our_recv), (their_send, their_recv)) = (ours, theirs);
        tracing::info!(from = me, to = friend, "relay open");
        let (up, down) = tokio::join!(self.pump(me, our_recv, their_send), self.pump(friend, their_recv, our_send));
        tracing::info!(
            from = me,
            to = friend,
            sent = up,
            received = down,
            user_total = self.relayed_bytes(me),
            "relay closed"
        );
    }

    /// Copies one direction, counting and pacing it as `user`'s traffic; returns the bytes copied.
    async fn pump(&self, user: &str, mut from: quinn::RecvStream, mut to: quinn::SendStream) -> u64 {
        let account = self.user(user);
        let mut copied = 0u64;
        // The side we write to may stop reading while the side we read from is quiet: that ends this
        // direction too, or a friend who says nothing would keep the relay (and its place in the
        // requester's limit) standing after the requester let go of it.
        let stopped = to.stopped();
        tokio::pin!(stopped);
        loop {
            let read = tokio::select! {
                // The read first: the stop is looked at (a lock on the connection) only while it waits.
                biased;
                read = from.read_chunk(CHUNK, true) => read,
                _ = &mut stopped => {
                    let _ = from.stop(quinn::VarInt::from_u32(0));
                    break;
                }
            };
            let chunk = match read {
                Ok(Some(c)) => c.bytes,
                Ok(None) => {
                    let _ = to.finish();
                    break;
                }
                Err(_) => {
                    let _ = to.reset(quinn::VarInt::from_u32(0));
                    break;
                }
            };
            let wait = account.bucket.take(chunk.len()).max(self.total.take(chunk.len()));
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let n = chunk.len() as u64;
            if to.write_chunk(chunk).await.is_err() {
                let _ = from.stop(quinn::VarInt::from_u32(0));
                break;
            }
            copied += n;
            account.relayed.fetch_add(n, Ordering::Relaxed);
        }
        copied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_pace_rather_than_refuse() {
        let b = Bucket::new(1000);
        assert_eq!(b.take(500), Duration::ZERO);
        assert_eq!(b.take(500), Duration::ZERO);
        let wait = b.take(500);
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500), "{wait:?}");
        assert_eq!(Bucket::new(0).take(usize::MAX), Duration::ZERO, "0 means no limit");
    }

    #[test]
    fn datagrams_over_the_rate_are_dropped_not_owed() {
        let b = Bucket::new(1000);
        assert!(b.try_take(800));
        assert!(!b.try_take(800), "only 200 left");
        assert!(b.try_take(200));
        assert!(Bucket::new(0).try_take(usize::MAX), "0 means no limit");
    }
}
