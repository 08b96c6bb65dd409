//! The agent's side of the broker relay (see [`shared::relay`]): the agent's one QUIC endpoint sends and
//! receives through [`RelaySocket`], which passes packets for ordinary addresses to the UDP socket and
//! packets for a relayed friend to that friend's relay stream on the broker connection. So a relayed peer
//! connection is an ordinary quinn connection to a stand-in address, with the same mutual TLS and pinned
//! keys end to end; the broker only copies its packets.
//!
//! Stand-in addresses are taken from `0.0.0.0/8`, which no packet can be sent to: should one ever reach
//! the UDP socket, the system refuses it rather than letting it leave the machine.
//!
//! Where the broker gives a link a channel (see [`shared::relay`]), packets go as datagrams to the broker
//! from the same socket once a probe came back, and the stream stays for what was queued and as the link's
//! lifetime. Datagrams from the broker are taken out of what the socket receives, their headers stripped
//! in place (a whole receive batch from one channel stays one batch), and handed to the endpoint as from
//! the stand-in address.

use bytes::Bytes;
use certs::Fingerprint;
use parking_lot::Mutex;
use shared::relay::{HEADER, PacketDecoder, TAG, channel_of, encode_packet, set_channel};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll, Waker, ready};
use tokio::sync::mpsc;

/// Packets queued towards the broker per relayed friend (at most 4 MiB of 16 KiB packets); beyond that they
/// are dropped, as a full UDP socket buffer would drop them (QUIC recovers), so the agent never buffers
/// without bound.
const OUTBOUND_QUEUE: usize = 256;
/// Bytes of packets received from relays and not yet taken by the endpoint; beyond that they are dropped.
const INBOUND_BYTES: usize = 4 << 20;

/// Whether an address is a relay stand-in (as given, or IPv4-mapped: a dual-stack endpoint sees it so).
pub(crate) fn is_relay_addr(addr: &SocketAddr) -> bool {
    matches!(shared::udp::canonical(*addr), SocketAddr::V4(a) if a.ip().octets()[0] == 0)
}

/// When a link with a channel sends its probe (from the link's start) until one comes back.
const PROBES: [std::time::Duration; 6] = {
    use std::time::Duration;
    [
        Duration::ZERO,
        Duration::from_millis(50),
        Duration::from_millis(200),
        Duration::from_millis(500),
        Duration::from_secs(1),
        Duration::from_secs(3),
    ]
};

/// After [`PROBES`], how often a link whose channel has not answered probes again.
const REPROBE: std::time::Duration = std::time::Duration::from_secs(30);

/// A link's channel: its id, and the broker's address as the socket sends to it.
#[derive(Debug)]
pub(crate) struct Channel {
    pub(crate) id: u64,
    pub(crate) broker: SocketAddr,
    /// A probe came back: packets go as datagrams from now on.
    confirmed: AtomicBool,
}

impl Channel {
    pub(crate) fn new(id: u64, broker: SocketAddr) -> Arc<Self> {
        Arc::new(Self { id, broker, confirmed: AtomicBool::new(false) })
    }

    /// A probe came back: the channel carries the link's packets.
    fn works(&self) -> bool {
        self.confirmed.load(Ordering::Relaxed)
    }
}

/// One relay link.
struct Link {
    device: Fingerprint,
    tx: mpsc::Sender<Bytes>,
    channel: Option<Arc<Channel>>,
}

impl Link {
    /// The channel, once it works.
    fn working_channel(&self) -> Option<&Arc<Channel>> {
        self.channel.as_ref().filter(|c| c.works())
    }
}

/// The relayed friends' stand-in addresses and queues, shared by the socket and the relay tasks.
#[derive(Default)]
pub(crate) struct Relays {
    out: Mutex<HashMap<SocketAddr, Link>>,
    /// The stand-in address of each channel, for datagrams from the broker.
    channels: Mutex<HashMap<u64, (SocketAddr, Arc<Channel>)>>,
    /// The UDP socket under the endpoint (set when [`RelaySocket`] is made), for probes.
    socket: OnceLock<Arc<dyn quinn::AsyncUdpSocket>>,
    /// Packets from relays for the endpoint, and their total size.
    inbound: Mutex<(VecDeque<(SocketAddr, Bytes)>, usize)>,
    waker: Mutex<Option<Waker>>,
    next: AtomicU32,
    /// One task per link, moving its packets.
    tasks: crate::tasks::Tasks,
}

impl fmt::Debug for Relays {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relays").field("links", &self.out.lock().len()).finish()
    }
}

impl Relays {
    /// Ends every link (the agent is stopping).
    pub(crate) async fn shutdown(&self) {
        self.tasks.shutdown(std::time::Duration::from_secs(1)).await;
    }

    /// Runs one relay stream: packets the endpoint sends to the returned stand-in address go out on `send`
    /// (or through the channel, once it works), packets arriving on `recv` (or the channel) come from it.
    /// The link goes when the stream ends.
    pub(crate) fn attach(
        self: &Arc<Self>,
        device: Fingerprint,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        channel: Option<Arc<Channel>>,
    ) -> SocketAddr {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let [_, a, b, c] = n.to_be_bytes();
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(0, a, b, c), 1));
        let (tx, mut rx) = mpsc::channel::<Bytes>(OUTBOUND_QUEUE);
        if let Some(ch) = &channel {
            self.channels.lock().insert(ch.id, (addr, ch.clone()));
        }
        self.out.lock().insert(addr, Link { device, tx, channel: channel.clone() });
        let relays = self.clone();
        self.tasks.spawn(async move {
            let probe = async {
                let (Some(ch), Some(socket)) = (&channel, relays.socket.get()) else {
                    return std::future::pending().await;
                };
                let start = tokio::time::Instant::now();
                let mut datagram = shared::relay::PROBE;
                set_channel(&mut datagram, ch.id);
                // The first ones close together, then one now and then: a link whose first probes were all
                // lost on the way moves to its channel later rather than never.
                let later = std::iter::successors(Some(PROBES[PROBES.len() - 1] + REPROBE), |t| Some(*t + REPROBE));
                for at in PROBES.into_iter().chain(later) {
                    tokio::time::sleep_until(start + at).await;
                    if ch.works() {
                        break;
                    }
                    let _ = socket.try_send(&datagram_to(ch.broker, &datagram, None));
                }
                std::future::pending().await
            };
            let writer = async {
                let mut buf = Vec::new();
                while let Some(p) = rx.recv().await {
                    buf.clear();
                    let _ = encode_packet(&p, &mut buf);
                    // Whatever else is queued goes in the same write.
                    while let Ok(p) = rx.try_recv() {
                        let _ = encode_packet(&p, &mut buf);
                        if buf.len() >= 64 * 1024 {
                            break;
                        }
                    }
                    if send.write_all(&buf).await.is_err() {
                        break;
                    }
                }
                let _ = send.finish();
            };
            let reader = async {
                let mut decoder = PacketDecoder::default();
                while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024, true).await {
                    decoder.push(&chunk.bytes);
                    while let Some(p) = decoder.next_packet() {
                        relays.deliver(addr, p);
                    }
                }
            };
            tokio::select! {
                () = writer => {}
                () = reader => {}
                () = probe => {}
            }
            relays.remove(&addr);
            tracing::info!(%addr, "relay link closed");
        });
        addr
    }

    fn deliver(&self, from: SocketAddr, packet: Bytes) {
        {
            let mut q = self.inbound.lock();
            if q.1 + packet.len() > INBOUND_BYTES {
                return;
            }
            q.1 += packet.len();
            q.0.push_back((from, packet));
        }
        if let Some(w) = self.waker.lock().take() {
            w.wake();
        }
    }

    fn remove(&self, addr: &SocketAddr) {
        if let Some(Link { channel: Some(ch), .. }) = self.out.lock().remove(addr) {
            self.channels.lock().remove(&ch.id);
        }
    }

    /// Ends the relay link of a stand-in address (its connection closed).
    pub(crate) fn close(&self, addr: &SocketAddr) {
        if is_relay_addr(addr) {
            self.remove(&shared::udp::canonical(*addr));
        }
    }

    /// A live stand-in address for a device, if a relay to it is open.
    pub(crate) fn addr_of(&self, device: &Fingerprint) -> Option<SocketAddr> {
        self.out.lock().iter().find(|(_, l)| l.device == *device && !l.tx.is_closed()).map(|(a, _)| *a)
    }

    /// What carries a relayed connection's packets now, for `peer status`: `channel` once a probe came back
    /// on the link's channel, else `stream`.
    pub(crate) fn carrier(&self, addr: &SocketAddr) -> &'static str {
        let out = self.out.lock();
        let works = out.get(&shared::udp::canonical(*addr)).and_then(Link::working_channel).is_some();
        if works { "channel" } else { "stream" }
    }

    /// Whether the link of a stand-in address has a channel (its connection's packets must then fit one
    /// datagram to the broker).
    pub(crate) fn has_channel(&self, addr: &SocketAddr) -> bool {
        self.out.lock().get(&shared::udp::canonical(*addr)).is_some_and(|l| l.channel.is_some())
    }

    /// The link's working channel, if it has one; else queues the packets on its stream.
    fn route(&self, to: &SocketAddr, contents: &[u8], segment: Option<usize>) -> Option<Arc<Channel>> {
        let to = shared::udp::canonical(*to);
        let tx = {
            let out = self.out.lock();
            let link = out.get(&to)?;
            match link.working_channel() {
                Some(ch) => return Some(ch.clone()),
                None => link.tx.clone(),
            }
        };
        let size = segment.unwrap_or(contents.len()).max(1);
        for packet in contents.chunks(size) {
            // A full queue drops the packet, as a full socket buffer would.
            let _ = tx.try_send(Bytes::copy_from_slice(packet));
        }
        None
    }

    /// Takes the channel datagrams out of one receive from the socket (see the module's comment).
    fn receive(&self, buf: &mut [u8], meta: &mut quinn::udp::RecvMeta, mapped: bool) {
        let stride = meta.stride.max(1);
        let data = &mut buf[..meta.len];
        let all = match shared::relay::received(data, stride) {
            shared::relay::Received::Quic => return,
            shared::relay::Received::Channel => true,
            shared::relay::Received::Mixed => false,
        };
        let channels = self.channels.lock();
        let find = |seg: &[u8]| {
            let (addr, ch) = channels.get(&channel_of(seg)?)?;
            (ch.broker == meta.addr).then_some((*addr, ch))
        };
        // The usual case: a batch of packets from one friend, stripped in place and kept a batch.
        if all && stride > HEADER {
            let batch = find(data)
                .filter(|(_, ch)| data.chunks(stride).all(|s| s.len() > HEADER && channel_of(s) == Some(ch.id)));
            if let Some((addr, _)) = batch {
                let segments = data.len().div_ceil(stride);
                for i in 0..segments {
                    let from = i * stride + HEADER;
                    let to = ((i + 1) * stride).min(data.len());
                    data.copy_within(from..to, i * (stride - HEADER));
                }
                meta.len -= segments * HEADER;
                meta.stride = stride - HEADER;
                meta.addr = for_endpoint(addr, mapped);
                meta.ecn = None;
                return;
            }
        }
        // Anything else: one datagram at a time, probes answered, packets queued for the endpoint.
        for seg in data.chunks(stride).filter(|s| s.first() == Some(&TAG)) {
            let Some((addr, ch)) = find(seg) else { continue };
            if seg.len() == HEADER {
                ch.confirmed.store(true, Ordering::Relaxed);
                tracing::info!(channel = ch.id, "relay channel works");
            } else {
                self.deliver(addr, Bytes::copy_from_slice(&seg[HEADER..]));
            }
        }
        if all {
            // Nothing left for the endpoint. (Otherwise it drops ours: they lack QUIC's fixed bit.)
            meta.len = 0;
        }
    }
}

/// The broker's first record on a relay stream, if it speaks channels (see [`shared::relay`]): the link's
/// channel, or none.
pub(crate) async fn read_channel(
    broker: &quinn::Connection,
    recv: &mut quinn::RecvStream,
) -> io::Result<Option<Arc<Channel>>> {
    if crate::inbound::alpn(broker).as_deref() != Some(shared::proto::BROKER_ALPN_CHANNELS) {
        return Ok(None);
    }
    let id = shared::io::read_channel(recv).await?;
    Ok(id.map(|id| Channel::new(id, broker.remote_address())))
}

/// How the endpoint knows an IPv4 address: IPv4-mapped on a dual-stack socket.
fn for_endpoint(addr: SocketAddr, mapped: bool) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if mapped => {
            SocketAddr::V6(std::net::SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
        }
        other => other,
    }
}

fn datagram_to<'a>(to: SocketAddr, contents: &'a [u8], segment_size: Option<usize>) -> quinn::udp::Transmit<'a> {
    quinn::udp::Transmit { destination: to, ecn: None, contents, segment_size, src_ip: None }
}

/// The agent's UDP socket with the relay beside it.
pub(crate) struct RelaySocket {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    relays: Arc<Relays>,
    /// Where channel datagrams are put together (the endpoint sends from one task at a time).
    scratch: Mutex<Vec<u8>>,
    /// The socket is IPv6 (dual-stack): quinn then knows every IPv4 address, stand-ins included, in its
    /// IPv4-mapped form, and packets from the relay must come from that form to find their connection.
    mapped: bool,
}

impl RelaySocket {
    pub(crate) fn new(inner: Arc<dyn quinn::AsyncUdpSocket>, relays: Arc<Relays>) -> Self {
        let mapped = inner.local_addr().is_ok_and(|a| a.is_ipv6());
        let _ = relays.socket.set(inner.clone());
        Self { inner, relays, mapped, scratch: Mutex::default() }
    }
}

impl fmt::Debug for RelaySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelaySocket").field("relays", &self.relays).finish()
    }
}

impl quinn::AsyncUdpSocket for RelaySocket {
    shared::pass_through_udp_socket!();

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> io::Result<()> {
        if !is_relay_addr(&transmit.destination) {
            return self.inner.try_send(transmit);
        }
        let Some(ch) = self.relays.route(&transmit.destination, transmit.contents, transmit.segment_size) else {
            return Ok(());
        };
        // Through the channel: each packet behind its header, the batch still one send.
        let segment = transmit.segment_size.unwrap_or(transmit.contents.len()).max(1);
        let mut buf = self.scratch.lock();
        buf.clear();
        for packet in transmit.contents.chunks(segment) {
            let at = buf.len();
            buf.resize(at + HEADER, 0);
            set_channel(&mut buf[at..], ch.id);
            buf.extend_from_slice(packet);
        }
        let segment_size = transmit.segment_size.map(|s| s + HEADER);
        self.inner.try_send(&datagram_to(ch.broker, &buf, segment_size))
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // The waker first, then the queue: a packet delivered in between still wakes us. (Every receive,
        // direct ones too, passes here: the waker is cloned only when it changed.)
        {
            let mut waker = self.relays.waker.lock();
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        let mut filled = 0;
        {
            let mut q = self.relays.inbound.lock();
            while filled < bufs.len().min(meta.len()) {
                let Some((from, packet)) = q.0.pop_front() else { break };
                q.1 -= packet.len();
                if packet.len() > bufs[filled].len() {
                    continue;
                }
                bufs[filled][..packet.len()].copy_from_slice(&packet);
                meta[filled] = quinn::udp::RecvMeta {
                    addr: for_endpoint(from, self.mapped),
                    len: packet.len(),
                    stride: packet.len(),
                    ecn: None,
                    dst_ip: None,
                };
                filled += 1;
            }
        }
        if filled > 0 {
            return Poll::Ready(Ok(filled));
        }
        let n = ready!(self.inner.poll_recv(cx, bufs, meta))?;
        for (buf, m) in bufs.iter_mut().zip(meta.iter_mut()).take(n) {
            self.relays.receive(buf, m, self.mapped);
        }
        Poll::Ready(Ok(n))
    }
}
