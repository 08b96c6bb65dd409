//! The agent's side of the broker relay (see [`shared::relay`]): the agent's one QUIC endpoint sends and
//! receives through [`RelaySocket`], which passes packets for ordinary addresses to the UDP socket and
//! packets for a relayed friend to that friend's relay stream on the broker connection. So a relayed peer
//! connection is an ordinary quinn connection to a stand-in address, with the same mutual TLS and pinned
//! keys end to end; the broker only copies its packets.
//!
//! Stand-in addresses are taken from `0.0.0.0/8`, which no packet can be sent to: should one ever reach
//! the UDP socket, the system refuses it rather than letting it leave the machine.

use bytes::Bytes;
use certs::Fingerprint;
use parking_lot::Mutex;
use shared::relay::{PacketDecoder, encode_packet};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, Waker};
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

/// The relayed friends' stand-in addresses and queues, shared by the socket and the relay tasks.
#[derive(Default)]
pub(crate) struct Relays {
    out: Mutex<HashMap<SocketAddr, (Fingerprint, mpsc::Sender<Bytes>)>>,
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

    /// Runs one relay stream: packets the endpoint sends to the returned stand-in address go out on `send`,
    /// packets arriving on `recv` come from it. The link goes when the stream ends.
    pub(crate) fn attach(
        self: &Arc<Self>,
        device: Fingerprint,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> SocketAddr {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let [_, a, b, c] = n.to_be_bytes();
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(0, a, b, c), 1));
        let (tx, mut rx) = mpsc::channel::<Bytes>(OUTBOUND_QUEUE);
        self.out.lock().insert(addr, (device, tx));
        let relays = self.clone();
        self.tasks.spawn(async move {
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
            }
            relays.out.lock().remove(&addr);
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

    /// Ends the relay link of a stand-in address (its connection closed).
    pub(crate) fn close(&self, addr: &SocketAddr) {
        if is_relay_addr(addr) {
            self.out.lock().remove(&shared::udp::canonical(*addr));
        }
    }

    /// A live stand-in address for a device, if a relay to it is open.
    pub(crate) fn addr_of(&self, device: &Fingerprint) -> Option<SocketAddr> {
        self.out.lock().iter().find(|(_, (fp, tx))| fp == device && !tx.is_closed()).map(|(a, _)| *a)
    }

    fn send(&self, to: &SocketAddr, contents: &[u8], segment: Option<usize>) {
        let to = shared::udp::canonical(*to);
        let Some(tx) = self.out.lock().get(&to).map(|(_, tx)| tx.clone()) else { return };
        let size = segment.unwrap_or(contents.len()).max(1);
        for packet in contents.chunks(size) {
            // A full queue drops the packet, as a full socket buffer would.
            let _ = tx.try_send(Bytes::copy_from_slice(packet));
        }
    }
}

/// The agent's UDP socket with the relay beside it.
pub(crate) struct RelaySocket {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    relays: Arc<Relays>,
    /// The socket is IPv6 (dual-stack): quinn then knows every IPv4 address, stand-ins included, in its
    /// IPv4-mapped form, and packets from the relay must come from that form to find their connection.
    mapped: bool,
}

impl RelaySocket {
    pub(crate) fn new(inner: Arc<dyn quinn::AsyncUdpSocket>, relays: Arc<Relays>) -> Self {
        let mapped = inner.local_addr().is_ok_and(|a| a.is_ipv6());
        Self { inner, relays, mapped }
    }
}

impl fmt::Debug for RelaySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelaySocket").field("relays", &self.relays).finish()
    }
}

impl quinn::AsyncUdpSocket for RelaySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> io::Result<()> {
        if is_relay_addr(&transmit.destination) {
            self.relays.send(&transmit.destination, transmit.contents, transmit.segment_size);
            return Ok(());
        }
        self.inner.try_send(transmit)
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
                let from = match from {
                    SocketAddr::V4(a) if self.mapped => {
                        SocketAddr::V6(std::net::SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
                    }
                    other => other,
                };
                meta[filled] = quinn::udp::RecvMeta {
                    addr: from,
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
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
