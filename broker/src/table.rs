//! The connection table: who is online, on which devices, at which addresses (the seed's core structure).
//!
//! It lives in memory, not in the database: it describes live QUIC connections, which do not survive a
//! broker restart anyway ("a restart starts with nobody online"), and keeping it out of SQL keeps a login
//! storm off the database. Each row also holds the session's event queue, so pushing an event to a user
//! means pushing to every one of their devices.

use certs::Fingerprint;
use parking_lot::Mutex;
use shared::proto::{Event, Millis};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Events queued per session before the session counts as stuck and is disconnected (it resynchronises
/// when it reconnects, since friend lists and requests are re-read on demand).
pub const EVENT_QUEUE: usize = 256;

/// One online device.
#[derive(Debug, Clone)]
pub struct Row {
    pub session_id: u64,
    /// The address the broker observes on the QUIC connection: the one friends can reach.
    pub observed: SocketAddr,
    /// The addresses the agent announced (its LAN side).
    pub local: Vec<SocketAddr>,
    /// The device's certificate, as presented in its TLS handshake.
    pub fingerprint: Fingerprint,
    pub connected_at: Millis,
    events: mpsc::Sender<Frame>,
    conn: quinn::Connection,
}

/// An event already encoded as a frame: a fan-out to a thousand devices encodes it once.
pub type Frame = Arc<[u8]>;

fn encode(event: &Event) -> Option<Frame> {
    match shared::frame::encode(event) {
        Ok(bytes) => Some(bytes.into()),
        Err(e) => {
            tracing::error!(error = %e, "could not encode an event");
            None
        }
    }
}

#[derive(Default)]
struct Inner {
    online: HashMap<String, Vec<Row>>,
    /// When each user's last device went offline (since this broker started).
    last_seen: HashMap<String, Millis>,
    next_session: u64,
}

/// The table. One std mutex: every operation is a few map lookups, never held across an await.
#[derive(Default)]
pub struct Table {
    inner: Mutex<Inner>,
}

/// A user's presence as friends see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    pub online: bool,
    pub since: Option<Millis>,
}

impl Table {
    /// The connection of one of `user`'s devices, by its certificate.
    pub fn device_connection(&self, user: &str, fingerprint: &Fingerprint) -> Option<quinn::Connection> {
        let inner = self.inner.lock();
        inner.online.get(user)?.iter().find(|r| r.fingerprint == *fingerprint).map(|r| r.conn.clone())
    }

    /// Adds a device row; returns its session id and whether it is the user's first online device.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &self,
        user: &str,
        observed: SocketAddr,
        local: Vec<SocketAddr>,
        fingerprint: Fingerprint,
        connected_at: Millis,
        events: mpsc::Sender<Frame>,
        conn: quinn::Connection,
    ) -> (u64, bool) {
        let mut t = self.inner.lock();
        t.next_session += 1;
        let session_id = t.next_session;
        let rows = t.online.entry(user.to_string()).or_default();
        let first = rows.is_empty();
        rows.push(Row { session_id, observed, local, fingerprint, connected_at, events, conn });
        (session_id, first)
    }

    /// Removes a device row; returns whether that was the user's last online device.
    pub fn remove(&self, user: &str, session_id: u64, at: Millis) -> bool {
        let mut t = self.inner.lock();
        let Some(rows) = t.online.get_mut(user) else {
            return false;
        };
        let before = rows.len();
        rows.retain(|r| r.session_id != session_id);
        let removed = rows.len() < before;
        if removed && rows.is_empty() {
            t.online.remove(user);
            t.last_seen.insert(user.to_string(), at);
            return true;
        }
        false
    }

    /// Online since the earliest device connected, or offline since last seen.
    pub fn presence(&self, user: &str) -> Presence {
        let t = self.inner.lock();
        match t.online.get(user) {
            Some(rows) => Presence { online: true, since: rows.iter().map(|r| r.connected_at).min() },
            None => Presence { online: false, since: t.last_seen.get(user).copied() },
        }
    }

    /// The user's online devices.
    pub fn sessions(&self, user: &str) -> Vec<Row> {
        self.inner.lock().online.get(user).cloned().unwrap_or_default()
    }

    /// One device's row.
    pub fn session(&self, user: &str, session_id: u64) -> Option<Row> {
        self.inner.lock().online.get(user)?.iter().find(|r| r.session_id == session_id).cloned()
    }

    /// Number of online devices.
    pub fn len(&self) -> usize {
        self.inner.lock().online.values().map(Vec::len).sum()
    }

    /// Whether nobody is online.
    pub fn is_empty(&self) -> bool {
        self.inner.lock().online.is_empty()
    }

    /// Queues `event` for every device of `user`. A device whose queue is full is disconnected rather than
    /// allowed to hold the event back for everyone.
    pub fn push(&self, user: &str, event: &Event) {
        if let Some(frame) = encode(event) {
            self.push_frames(std::iter::once(user), &frame, |_| true);
        }
    }

    /// Queues `event` for every device of every one of `users`, encoding it once.
    pub fn push_many<'a>(&self, users: impl IntoIterator<Item = &'a str>, event: &Event) {
        if let Some(frame) = encode(event) {
            self.push_frames(users, &frame, |_| true);
        }
    }

    /// Queues `event` for one device of `user` only.
    pub fn push_to(&self, user: &str, session_id: u64, event: &Event) {
        if let Some(frame) = encode(event) {
            self.push_frames(std::iter::once(user), &frame, |r| r.session_id == session_id);
        }
    }

    /// Queues `first` for `user`'s devices that `pick` chooses and `other` for the rest.
    pub fn push_split(&self, user: &str, first: &Event, other: &Event, pick: impl Fn(&Fingerprint) -> bool) {
        if let (Some(f), Some(o)) = (encode(first), encode(other)) {
            self.push_frames(std::iter::once(user), &f, |r| pick(&r.fingerprint));
            self.push_frames(std::iter::once(user), &o, |r| !pick(&r.fingerprint));
        }
    }

    fn push_frames<'a>(&self, users: impl IntoIterator<Item = &'a str>, frame: &Frame, pick: impl Fn(&Row) -> bool) {
        let t = self.inner.lock();
        for user in users {
            let Some(rows) = t.online.get(user) else { continue };
            for row in rows.iter().filter(|r| pick(r)) {
                if let Err(mpsc::error::TrySendError::Full(_)) = row.events.try_send(frame.clone()) {
                    tracing::warn!(user, session = row.session_id, "event queue full; disconnecting the session");
                    row.conn.close(quinn::VarInt::from_u32(2), b"event queue overflow");
                }
            }
        }
    }

    /// Closes every device of `user` but `keep` (their tokens were revoked): each is taken out of the table
    /// at once (no lookup finds it, nothing more is pushed to it), sent `event`, and its connection is closed
    /// once that event is written (see `conn::write_events`). Returns the devices that remain.
    pub fn close_others(&self, user: &str, keep: u64, event: &Event) -> Vec<Fingerprint> {
        self.close_where(user, event, |r| r.session_id != keep)
    }

    /// As [`Table::close_others`], for the sessions of one device (revoked).
    pub fn close_device(&self, user: &str, fingerprint: &Fingerprint, event: &Event) -> Vec<Fingerprint> {
        self.close_where(user, event, |r| r.fingerprint == *fingerprint)
    }

    fn close_where(&self, user: &str, event: &Event, close: impl Fn(&Row) -> bool) -> Vec<Fingerprint> {
        let frame = encode(event);
        let mut t = self.inner.lock();
        let Some(rows) = t.online.get_mut(user) else { return Vec::new() };
        let (revoked, kept): (Vec<Row>, Vec<Row>) = std::mem::take(rows).into_iter().partition(|r| close(r));
        *rows = kept;
        let remaining = rows.iter().map(|r| r.fingerprint).collect();
        for row in revoked {
            if let Some(f) = &frame {
                let _ = row.events.try_send(f.clone());
            }
            // The last frame: the writer closes the connection once everything before it is written.
            if row.events.try_send(Frame::from(Vec::new())).is_err() {
                row.conn.close(quinn::VarInt::from_u32(3), b"session revoked");
            }
        }
        remaining
    }
}
