//! The UDP socket under every QUIC endpoint (broker, agent, bench clients), bound with deep buffers.
//!
//! An operating system's default receive buffer (about 200 KiB on Linux) holds only a few hundred small
//! datagrams. A broker fanning a group post out to a thousand members gets a thousand acknowledgements
//! back at once; whatever overflows the buffer is dropped, and QUIC resends it only after a probe timeout
//! (tens of ms). Measured: 10,000 drops in a 3 s `bench groups` run, and every 99th-percentile delivery
//! was one of them. The kernel caps the size at `net.core.rmem_max` / `wmem_max`; [`bind`] reports what
//! it got so that an operator can raise the cap.

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// What we ask for, per direction.
pub const BUFFER: usize = 8 << 20;
/// Below this (per direction, as the kernel reports it) bursts are likely to be dropped.
pub const LOW_BUFFER: usize = 1 << 20;

/// A bound socket and the buffer sizes the kernel granted.
pub struct Bound {
    pub socket: UdpSocket,
    pub recv_buffer: usize,
    pub send_buffer: usize,
}

impl Bound {
    /// Whether either buffer stayed small (the kernel's cap is low).
    pub fn is_low(&self) -> bool {
        self.recv_buffer < LOW_BUFFER || self.send_buffer < LOW_BUFFER
    }
}

/// Binds `addr` and asks for [`BUFFER`]-sized buffers; a smaller grant is not an error. `[::]` is bound
/// dual-stack (IPv4 as well, its addresses seen as IPv4-mapped: [`canonical`] turns them back), on every
/// system that has it, rather than per the system's default (IPv6 only on Windows and some BSDs).
pub fn bind(addr: SocketAddr) -> io::Result<Bound> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        let _ = socket.set_only_v6(false);
    }
    socket.bind(&addr.into())?;
    let _ = socket.set_recv_buffer_size(BUFFER);
    let _ = socket.set_send_buffer_size(BUFFER);
    let recv_buffer = socket.recv_buffer_size()?;
    let send_buffer = socket.send_buffer_size()?;
    Ok(Bound { socket: socket.into(), recv_buffer, send_buffer })
}

/// The parts of `quinn::AsyncUdpSocket` that a socket wrapping another (in a field `inner`, an
/// `Arc<dyn quinn::AsyncUdpSocket>`) passes straight through: everything but sending and receiving. For
/// the relay's sockets, which take some datagrams out of what they receive (`quinn` is the caller's).
#[macro_export]
macro_rules! pass_through_udp_socket {
    () => {
        fn create_io_poller(self: std::sync::Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
            self.inner.clone().create_io_poller()
        }

        fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
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
    };
}

/// An address as people and the other side know it: an IPv4-mapped IPv6 address (how a dual-stack socket
/// sees an IPv4 peer) as the IPv4 address it is.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_are_ipv4() {
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:9".parse().unwrap();
        assert_eq!(canonical(mapped), "192.0.2.7:9".parse().unwrap());
        let v6: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }

    #[test]
    fn unspecified_ipv6_is_dual_stack() {
        let Ok(b) = bind("[::]:0".parse().unwrap()) else { return }; // a system without IPv6
        let port = b.socket.local_addr().unwrap().port();
        let v4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        v4.send_to(b"x", ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 4];
        b.socket.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let (n, from) = b.socket.recv_from(&mut buf).unwrap();
        assert_eq!((n, canonical(from)), (1, v4.local_addr().unwrap()));
    }

    #[test]
    fn binds_and_reports_buffers() {
        let b = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(b.recv_buffer > 0 && b.send_buffer > 0);
        assert_ne!(b.socket.local_addr().unwrap().port(), 0);
    }
}
