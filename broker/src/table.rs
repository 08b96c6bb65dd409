//! The connection table: who is online, on which devices, at which addresses (the seed's core structure).
//!
//! It lives in memory, not in the database: it describes live QUIC connections, which do not survive a
//! broker restart anyway ("a restart starts with nobody online"), and keeping it out of SQL keeps a login
//! storm off the database. Each row also holds the session's event queue, so pushing an event to a user
//! means pushing to every one of their devices.
//!
//! In a cluster (`crate::cluster`) the table also holds the other nodes' rows, as they announce them: a
//! lookup, presence and the friend list see every node's devices, and a push to a device on another node
//! is handed to the cluster link, which sends it to that node (one message per node, naming the sessions).
//! Each node decides "first device online" and "last device gone" for the sessions it serves, on the
//! table of every node's rows, and tells friends itself.

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
    route: Route,
}

/// Where a row's session is served.
#[derive(Debug, Clone)]
enum Route {
    /// Here: its event queue and connection.
    Local { events: crate::queue::Sender, conn: quinn::Connection },
    /// On another node of the cluster.
    Remote { node: u64 },
}

impl Row {
    /// A session another node announced.
    fn remote(node: u64, a: Announced) -> Self {
        Self {
            session_id: a.session_id,
            observed: a.observed,
            local: a.local,
            fingerprint: Fingerprint(a.fingerprint),
            connected_at: a.connected_at,
            route: Route::Remote { node },
        }
    }

    /// The node that serves this session (`None`: this one).
    pub fn node(&self) -> Option<u64> {
        match self.route {
            Route::Local { .. } => None,
            Route::Remote { node } => Some(node),
        }
    }
}

/// A session as nodes of a cluster announce it to each other.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Announced {
    pub user: String,
    pub session_id: u64,
    pub observed: SocketAddr,
    pub local: Vec<SocketAddr>,
    pub fingerprint: [u8; 32],
    pub connected_at: Millis,
}

/// What the table asks the cluster link to tell the other nodes (see `crate::cluster`).
#[derive(Debug)]
pub enum Outbound {
    Up(Announced),
    Down {
        user: String,
        session_id: u64,
        at: Millis,
    },
    /// Deliver `frame` to these sessions, served by `node`.
    Push {
        node: u64,
        sessions: Vec<(String, u64)>,
        frame: Frame,
    },
    /// Close these sessions of `user` served by `node` after `frame` (revoked).
    Close {
        node: u64,
        user: String,
        sessions: Vec<u64>,
        frame: Option<Frame>,
    },
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
    /// In a cluster: this node's id (the high bits of its session ids, so that they are unique across
    /// nodes) and the link's queue of what to tell the others.
    cluster: Option<(u64, mpsc::UnboundedSender<Outbound>)>,
}

/// A user's presence as friends see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    pub online: bool,
    pub since: Option<Millis>,
}

impl Table {
    /// A table for one node of a cluster: its session ids carry `node` in their high bits, and what the
    /// other nodes must hear goes to `out`.
    pub fn clustered(node: u64, out: mpsc::UnboundedSender<Outbound>) -> Self {
        let inner = Inner { next_session: node << 32, ..Inner::default() };
        Self { inner: Mutex::new(inner), cluster: Some((node, out)) }
    }

    /// Whether this node is one of a cluster.
    pub fn is_clustered(&self) -> bool {
        self.cluster.is_some()
    }

    fn tell(&self, what: Outbound) {
        if let Some((_, out)) = &self.cluster {
            let _ = out.send(what);
        }
    }

    /// The connection of one of `user`'s devices served here, by its certificate.
    pub fn device_connection(&self, user: &str, fingerprint: &Fingerprint) -> Option<quinn::Connection> {
        let inner = self.inner.lock();
        inner.online.get(user)?.iter().find(|r| r.fingerprint == *fingerprint).and_then(|r| match &r.route {
            Route::Local { conn, .. } => Some(conn.clone()),
            Route::Remote { .. } => None,
        })
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
        events: crate::queue::Sender,
        conn: quinn::Connection,
    ) -> (u64, bool) {
        let mut t = self.inner.lock();
        t.next_session += 1;
        let session_id = t.next_session;
        let rows = t.online.entry(user.to_string()).or_default();
        let first = rows.is_empty();
        let announced = Announced {
            user: user.to_string(),
            session_id,
            observed,
            local: local.clone(),
            fingerprint: fingerprint.0,
            connected_at,
        };
        // Most users have one device online: room for exactly one more row, not the four a push would
        // make room for (three unused rows were ~360 bytes of every idle session).
        rows.reserve_exact(1);
        rows.push(Row { session_id, observed, local, fingerprint, connected_at, route: Route::Local { events, conn } });
        drop(t);
        self.tell(Outbound::Up(announced));
        (session_id, first)
    }

    /// Another node's session (announced, or in its snapshot); `true` if it is the user's first device.
    pub fn insert_remote(&self, node: u64, a: Announced) -> bool {
        let mut t = self.inner.lock();
        let rows = t.online.entry(a.user.clone()).or_default();
        let first = rows.is_empty();
        rows.retain(|r| r.session_id != a.session_id);
        rows.push(Row::remote(node, a));
        first
    }

    /// Replaces every row of `node` with `rows` (its snapshot), in one step (no push in between finds a
    /// user missing); returns the users whose last device went.
    pub fn replace_node(&self, node: u64, rows: Vec<Announced>, at: Millis) -> Vec<String> {
        let mut t = self.inner.lock();
        for rows in t.online.values_mut() {
            rows.retain(|r| r.node() != Some(node));
        }
        for a in rows {
            t.online.entry(a.user.clone()).or_default().push(Row::remote(node, a));
        }
        Self::take_empty(&mut t, at)
    }

    /// Takes every row of `node` out (it left, or went silent); returns the users left with no device.
    pub fn drop_node(&self, node: u64, at: Millis) -> Vec<String> {
        let mut t = self.inner.lock();
        for rows in t.online.values_mut() {
            rows.retain(|r| r.node() != Some(node));
        }
        Self::take_empty(&mut t, at)
    }

    /// Users with no row left: out of the table, last seen `at`.
    fn take_empty(t: &mut Inner, at: Millis) -> Vec<String> {
        let gone: Vec<String> = t.online.iter().filter(|(_, rows)| rows.is_empty()).map(|(u, _)| u.clone()).collect();
        for u in &gone {
            t.online.remove(u);
            t.last_seen.insert(u.clone(), at);
        }
        gone
    }

    /// Rows this node serves, as announced to the others (its snapshot).
    pub fn local_rows(&self) -> Vec<Announced> {
        let t = self.inner.lock();
        t.online
            .iter()
            .flat_map(|(user, rows)| {
                rows.iter().filter(|r| r.node().is_none()).map(move |r| Announced {
                    user: user.clone(),
                    session_id: r.session_id,
                    observed: r.observed,
                    local: r.local.clone(),
                    fingerprint: r.fingerprint.0,
                    connected_at: r.connected_at,
                })
            })
            .collect()
    }

    /// Closes the connection of every session served here, saying `why` (each is taken out of the table
    /// as its connection ends, as for any lost session).
    pub fn close_local(&self, why: &[u8]) -> usize {
        let conns: Vec<quinn::Connection> = {
            let t = self.inner.lock();
            t.online
                .values()
                .flatten()
                .filter_map(|r| match &r.route {
                    Route::Local { conn, .. } => Some(conn.clone()),
                    Route::Remote { .. } => None,
                })
                .collect()
        };
        for c in &conns {
            c.close(quinn::VarInt::from_u32(4), why);
        }
        conns.len()
    }

    /// How many rows each other node has here.
    pub fn remote_counts(&self) -> HashMap<u64, u64> {
        let mut out = HashMap::new();
        for rows in self.inner.lock().online.values() {
            for node in rows.iter().filter_map(Row::node) {
                *out.entry(node).or_insert(0) += 1;
            }
        }
        out
    }

    /// Removes a device row; returns whether that was the user's last online device.
    pub fn remove(&self, user: &str, session_id: u64, at: Millis) -> bool {
        let last = self.remove_row(user, session_id, at);
        self.tell(Outbound::Down { user: user.to_string(), session_id, at });
        last
    }

    /// Removes a row another node says ended; returns whether it was the user's last device.
    pub fn remove_remote(&self, user: &str, session_id: u64, at: Millis) -> bool {
        self.remove_row(user, session_id, at)
    }

    fn remove_row(&self, user: &str, session_id: u64, at: Millis) -> bool {
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
        match t.online.get(user).filter(|rows| !rows.is_empty()) {
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

    /// Number of online devices served here.
    pub fn len(&self) -> usize {
        self.inner.lock().online.values().map(|rows| rows.iter().filter(|r| r.node().is_none()).count()).sum()
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

    /// Queues `event` for the devices of `users` served here only (what every node of a cluster does for
    /// its own sessions, so that nobody hears it twice).
    pub fn push_local<'a>(&self, users: impl IntoIterator<Item = &'a str>, event: &Event) {
        if let Some(frame) = encode(event) {
            self.push_frames(users, &frame, |r| r.node().is_none());
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
        let mut remote: HashMap<u64, Vec<(String, u64)>> = HashMap::new();
        {
            let t = self.inner.lock();
            for user in users {
                let Some(rows) = t.online.get(user) else { continue };
                for row in rows.iter().filter(|r| pick(r)) {
                    match &row.route {
                        Route::Local { events, conn } => {
                            if let Err(crate::queue::PushError::Full) = events.try_send(frame.clone()) {
                                tracing::warn!(
                                    user,
                                    session = row.session_id,
                                    "event queue full; disconnecting the session"
                                );
                                conn.close(quinn::VarInt::from_u32(2), b"event queue overflow");
                            }
                        }
                        Route::Remote { node } => {
                            remote.entry(*node).or_default().push((user.to_string(), row.session_id))
                        }
                    }
                }
            }
        }
        for (node, sessions) in remote {
            self.tell(Outbound::Push { node, sessions, frame: frame.clone() });
        }
    }

    /// Delivers a frame another node sent to sessions served here.
    pub fn deliver(&self, sessions: &[(String, u64)], frame: &Frame) {
        // One pass under the lock: session ids are unique across nodes, so the set of ids is enough.
        let ids: std::collections::HashSet<u64> = sessions.iter().map(|(_, id)| *id).collect();
        let mut users: Vec<&str> = sessions.iter().map(|(u, _)| u.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        self.push_frames(users, frame, |r| ids.contains(&r.session_id) && r.node().is_none());
    }

    /// Closes sessions served here that another node revoked, after `frame`.
    pub fn close_sessions(&self, user: &str, sessions: &[u64], frame: Option<Frame>) {
        self.close_frames(user, frame, |r| sessions.contains(&r.session_id) && r.node().is_none());
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
        self.close_frames(user, encode(event), close)
    }

    fn close_frames(&self, user: &str, frame: Option<Frame>, close: impl Fn(&Row) -> bool) -> Vec<Fingerprint> {
        let mut t = self.inner.lock();
        let Some(rows) = t.online.get_mut(user) else { return Vec::new() };
        let (revoked, kept): (Vec<Row>, Vec<Row>) = std::mem::take(rows).into_iter().partition(|r| close(r));
        *rows = kept;
        let remaining = rows.iter().map(|r| r.fingerprint).collect();
        drop(t);
        let mut remote: HashMap<u64, Vec<u64>> = HashMap::new();
        for row in revoked {
            match row.route {
                Route::Local { events, conn } => {
                    if let Some(f) = &frame {
                        let _ = events.try_send(f.clone());
                    }
                    // The last frame: the writer closes the connection once everything before it is written.
                    if events.try_send(Frame::from(Vec::new())).is_err() {
                        conn.close(quinn::VarInt::from_u32(3), b"session revoked");
                    }
                }
                Route::Remote { node } => remote.entry(node).or_default().push(row.session_id),
            }
        }
        for (node, sessions) in remote {
            self.tell(Outbound::Close { node, user: user.to_string(), sessions, frame: frame.clone() });
        }
        remaining
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announced(user: &str, session_id: u64, fp: u8) -> Announced {
        Announced {
            user: user.into(),
            session_id,
            observed: "203.0.113.5:4000".parse().unwrap(),
            local: vec![],
            fingerprint: [fp; 32],
            connected_at: 7,
        }
    }

    #[test]
    fn other_nodes_rows_count_for_presence_and_pushes_go_to_their_node() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let t = Table::clustered(1, tx);
        assert!(t.insert_remote(2, announced("bob", (2 << 32) + 1, 9)), "bob's first device");
        assert!(!t.insert_remote(3, announced("bob", (3 << 32) + 1, 8)), "his second, on a third node");
        assert_eq!(t.presence("bob"), Presence { online: true, since: Some(7) });
        assert_eq!(t.sessions("bob").len(), 2);
        assert_eq!(t.len(), 0, "none served here");
        assert_eq!(t.remote_counts(), HashMap::from([(2, 1), (3, 1)]));

        t.push("bob", &Event::SessionRevoked);
        let mut told = Vec::new();
        while let Ok(o) = rx.try_recv() {
            if let Outbound::Push { node, sessions, .. } = o {
                told.push((node, sessions));
            }
        }
        told.sort();
        assert_eq!(
            told,
            vec![(2, vec![("bob".to_string(), (2 << 32) + 1)]), (3, vec![("bob".to_string(), (3 << 32) + 1)])]
        );
        t.push_local(["bob"], &Event::SessionRevoked);
        assert!(rx.try_recv().is_err(), "a local push stays here");

        // Revoking his device on node 3 asks node 3 to close it.
        let left = t.close_device("bob", &Fingerprint([8; 32]), &Event::SessionRevoked);
        assert_eq!(left, vec![Fingerprint([9; 32])]);
        assert!(matches!(rx.try_recv(), Ok(Outbound::Close { node: 3, .. })));

        // Node 2 goes: bob's last device with it.
        assert_eq!(t.drop_node(2, 99), vec!["bob".to_string()]);
        assert_eq!(t.presence("bob"), Presence { online: false, since: Some(99) });
        assert!(!t.remove_remote("bob", 1, 100), "nothing left to remove");
    }

    #[test]
    fn a_snapshot_replaces_what_was_known_of_a_node() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let t = Table::clustered(1, tx);
        t.insert_remote(2, announced("bob", 21, 1));
        t.insert_remote(2, announced("carol", 22, 2));
        let gone = t.replace_node(2, vec![announced("carol", 22, 2), announced("dave", 23, 3)], 5);
        assert_eq!(gone, vec!["bob".to_string()], "missing from the snapshot: offline");
        assert!(t.presence("dave").online && t.presence("carol").online && !t.presence("bob").online);
        assert_eq!(t.remote_counts(), HashMap::from([(2, 2)]));
    }
}
