//! The relay's fast path (see [`shared::relay`]): channels, UDP datagrams between two agents on this broker
//! that carry their QUIC packets behind a 9-byte header. [`ChannelSocket`] sits under the broker's endpoint
//! and takes channel datagrams out of what it receives before quinn sees them. Each is checked (its id
//! belongs to the address it came from), paced and counted as the relay's streams are (over the rate it is
//! dropped, which QUIC reads as a narrower path), its id rewritten to the friend's, and sent on at once
//! from the same socket, a whole receive batch in one send. Everything else goes to quinn untouched.
//!
//! A channel lives as long as its relay stream: [`Pair`] removes it when the splice ends.
//!
//! Across two nodes of a cluster each node holds half: its agent's end, and an end owned by its connection
//! to the other node. Datagrams go agent → its node → the other node → the friend, each hop checked
//! against the connection it must come from (nodes send from their listening sockets, where their
//! connection to each other runs). The two halves learn each other's ids on the relay's stream between the
//! nodes (`nodes`), as agents learn theirs on their relay streams.

use crate::relay::{Relay, UserRelay};
use parking_lot::{Mutex, RwLock};
use shared::relay::{HEADER, Received, TAG, channel_of, set_channel};
use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

/// Where an end's datagrams go.
enum Peer {
    /// Another end on this node: the friend's.
    Local(u64),
    /// An end on another node, reached through the connection to it.
    Remote(quinn::Connection, u64),
    /// Not known yet: the other node has not answered.
    Unknown,
}

/// One end of a channel: an agent's, or (across nodes) the other node's.
struct End {
    /// Where its datagrams come from, as the socket sees it: its connection's address (followed when the
    /// connection migrates).
    from: Mutex<SocketAddr>,
    conn: quinn::Connection,
    /// Our address its connection came in on (on a host with several, datagrams to it must leave from
    /// that one, or its NAT and its agent would not take them for ours).
    local_ip: Option<IpAddr>,
    peer: Peer,
    /// Whose packets it carries.
    user: String,
    account: Arc<UserRelay>,
    /// Packet bytes it sent through the channel.
    sent: AtomicU64,
}

impl End {
    fn is_from(&self, addr: SocketAddr) -> bool {
        let mut from = self.from.lock();
        if *from == addr {
            return true;
        }
        let now = self.conn.remote_address();
        *from = now;
        now == addr
    }
}

/// The live channels, by id.
pub struct Channels {
    ends: RwLock<HashMap<u64, End>>,
    relay: Arc<Relay>,
}

impl fmt::Debug for Channels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channels").field("ends", &self.ends.read().len()).finish()
    }
}

/// A channel between two agents, removed when this is dropped.
pub struct Pair {
    channels: Arc<Channels>,
    /// The asking agent's id, and its friend's.
    pub ids: (u64, u64),
}

impl Drop for Pair {
    fn drop(&mut self) {
        let (a, b) = {
            let mut ends = self.channels.ends.write();
            (ends.remove(&self.ids.0), ends.remove(&self.ids.1))
        };
        if let (Some(a), Some(b)) = (a, b) {
            let (sent, received) = (a.sent.load(Ordering::Relaxed), b.sent.load(Ordering::Relaxed));
            tracing::info!(from = a.user, to = b.user, sent, received, "relay channel closed");
        }
    }
}

/// Whether an agent's broker session speaks channels.
pub fn speaks_channels(conn: &quinn::Connection) -> bool {
    crate::conn::alpn(conn).as_deref() == Some(shared::proto::BROKER_ALPN_CHANNELS)
}

impl Channels {
    pub fn new(relay: Arc<Relay>) -> Self {
        Self { ends: RwLock::default(), relay }
    }

    /// A channel between two users' agents, each given as (username, broker connection).
    pub fn open(self: &Arc<Self>, a: (&str, &quinn::Connection), b: (&str, &quinn::Connection)) -> Pair {
        self.pair(a, b, Peer::Local, Peer::Local)
    }

    /// This node's half of a channel across two nodes: `agent`'s end (its datagrams go to the other node
    /// once [`Channels::join`] says with which id) and an end owned by `node`, the connection to the other
    /// node, whose datagrams (the friend's, `node`'s user) go to the agent. The ids: the agent's, and the
    /// one the other node is to send with.
    pub fn open_half(self: &Arc<Self>, agent: (&str, &quinn::Connection), node: (&str, &quinn::Connection)) -> Pair {
        self.pair(agent, node, |_| Peer::Unknown, Peer::Local)
    }

    /// The other node's id for a half opened here: the agent's datagrams go to it through `node`.
    pub fn join(&self, half: &Pair, node: &quinn::Connection, id: u64) {
        if let Some(end) = self.ends.write().get_mut(&half.ids.0) {
            end.peer = Peer::Remote(node.clone(), id);
        }
    }

    /// Two new ends with fresh ids, each given its peer from the other's id.
    fn pair(
        self: &Arc<Self>,
        a: (&str, &quinn::Connection),
        b: (&str, &quinn::Connection),
        a_peer: impl FnOnce(u64) -> Peer,
        b_peer: impl FnOnce(u64) -> Peer,
    ) -> Pair {
        let mut ends = self.ends.write();
        let fresh = || loop {
            let id = random_id();
            if id != 0 && !ends.contains_key(&id) {
                break id;
            }
        };
        let (ia, ib) = (fresh(), fresh());
        let end = |(user, conn): (&str, &quinn::Connection), peer| End {
            from: Mutex::new(conn.remote_address()),
            conn: conn.clone(),
            local_ip: conn.local_ip(),
            peer,
            user: user.to_string(),
            account: self.relay.user(user),
            sent: AtomicU64::new(0),
        };
        ends.insert(ia, end(a, a_peer(ib)));
        ends.insert(ib, end(b, b_peer(ia)));
        Pair { channels: self.clone(), ids: (ia, ib) }
    }

    /// Handles the channel datagrams of one receive (`stride`-sized segments from `from`, all or some of
    /// them channel datagrams), sending them on through `socket`.
    fn forward(&self, from: SocketAddr, data: &mut [u8], stride: usize, socket: &dyn quinn::AsyncUdpSocket) {
        // Segments for one channel, one after another (almost always the whole receive), go as one send;
        // a probe (no packet after the header) goes alone.
        let mut start = 0;
        while start < data.len() {
            let first = (start + stride).min(data.len());
            let id = channel_of(&data[start..first]);
            let mut end = first;
            if first - start > HEADER {
                while end < data.len() {
                    let next = (end + stride).min(data.len());
                    if next - end <= HEADER || channel_of(&data[end..next]) != id {
                        break;
                    }
                    end = next;
                }
            }
            if let Some(id) = id {
                self.forward_run(from, id, &mut data[start..end], stride, socket);
            }
            start = end;
        }
    }

    fn forward_run(
        &self,
        from: SocketAddr,
        id: u64,
        run: &mut [u8],
        stride: usize,
        socket: &dyn quinn::AsyncUdpSocket,
    ) {
        let ends = self.ends.read();
        let Some(end) = ends.get(&id) else { return };
        if !end.is_from(from) {
            return;
        }
        if run.len() == HEADER {
            // A probe: back to its sender, who then knows the channel works.
            send(socket, (from, end.local_ip), run, stride);
            return;
        }
        let (to, to_id) = match &end.peer {
            Peer::Local(id) => match ends.get(id) {
                Some(peer) => ((*peer.from.lock(), peer.local_ip), *id),
                None => return,
            },
            Peer::Remote(conn, id) => ((conn.remote_address(), conn.local_ip()), *id),
            Peer::Unknown => return,
        };
        let segments = run.len().div_ceil(stride);
        let bytes = run.len() - segments * HEADER;
        if !self.relay.admit_datagrams(&end.account, bytes) {
            return;
        }
        if end.sent.fetch_add(bytes as u64, Ordering::Relaxed) == 0 {
            tracing::info!(user = end.user, "relay channel in use");
        }
        for segment in run.chunks_mut(stride) {
            set_channel(segment, to_id);
        }
        send(socket, to, run, stride);
    }
}

/// Sends `stride`-sized segments to an address, from one of ours, in as few sends as the socket allows. A
/// full socket drops them, as the network would.
fn send(socket: &dyn quinn::AsyncUdpSocket, (to, from): (SocketAddr, Option<IpAddr>), data: &[u8], stride: usize) {
    let batch = socket.max_transmit_segments().max(1) * stride;
    for contents in data.chunks(batch) {
        let transmit = quinn::udp::Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: (contents.len() > stride).then_some(stride),
            src_ip: from,
        };
        let _ = socket.try_send(&transmit);
    }
}

fn random_id() -> u64 {
    let mut b = [0u8; 8];
    // The system's generator does not fail on any platform we run on; a zero id is retried by the caller.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_be_bytes(b)
}

/// The broker's UDP socket, with channel datagrams taken out of what it receives.
#[derive(Debug)]
pub struct ChannelSocket {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    channels: Arc<Channels>,
}

impl ChannelSocket {
    pub fn new(inner: Arc<dyn quinn::AsyncUdpSocket>, channels: Arc<Channels>) -> Self {
        Self { inner, channels }
    }
}

impl quinn::AsyncUdpSocket for ChannelSocket {
    shared::pass_through_udp_socket!();

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(self.inner.poll_recv(cx, bufs, meta))?;
        for (buf, m) in bufs.iter_mut().zip(meta.iter_mut()).take(n) {
            let stride = m.stride.max(1);
            let data = &mut buf[..m.len];
            match shared::relay::received(data, stride) {
                Received::Quic => {}
                Received::Channel => {
                    self.channels.forward(m.addr, data, stride, &*self.inner);
                    // Nothing left for quinn in this one.
                    m.len = 0;
                }
                Received::Mixed => {
                    // The channel datagrams one by one; quinn then drops them, lacking QUIC's fixed bit.
                    for segment in data.chunks_mut(stride).filter(|s| s.first() == Some(&TAG)) {
                        let len = segment.len();
                        self.channels.forward(m.addr, segment, len, &*self.inner);
                    }
                }
            }
        }
        Poll::Ready(Ok(n))
    }
}
