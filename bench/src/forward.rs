//! The baseline of the relay's fast path (the broker's channels): a bare UDP forwarder between one client
//! and one server, batched as the channels are (receives coalesced by the kernel, each batch sent on in one
//! segmented send), with nothing checked, paced, counted or rewritten. A raw quinn file copy through it,
//! against the same copy direct, is what a datagram hop costs on this machine whatever the software.

use anyhow::Result;
use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use std::io::IoSliceMut;
use std::net::SocketAddr;
use tokio::io::Interest;

/// Largest receive the kernel may coalesce into one buffer.
const SLOT: usize = 64 * 1024;

pub(crate) async fn serve(to: SocketAddr) -> Result<()> {
    let socket = shared::udp::bind("127.0.0.1:0".parse()?)?.socket;
    let state = UdpSocketState::new((&socket).into())?;
    socket.set_nonblocking(true)?;
    let socket = tokio::net::UdpSocket::from_std(socket)?;
    println!("forwarder listening on {} fingerprint none", socket.local_addr()?);
    let batch = quinn::udp::BATCH_SIZE;
    let mut buf = vec![0u8; SLOT * batch];
    let mut meta = vec![RecvMeta::default(); batch];
    // The first address that is not the server is the client.
    let mut client = None;
    loop {
        socket.readable().await?;
        let mut iovs: Vec<IoSliceMut> = buf.chunks_mut(SLOT).map(IoSliceMut::new).collect();
        let n = match socket.try_io(Interest::READABLE, || state.recv((&socket).into(), &mut iovs, &mut meta)) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        };
        for (m, iov) in meta.iter().zip(iovs.iter()).take(n) {
            let destination = if m.addr == to {
                match client {
                    Some(c) => c,
                    None => continue,
                }
            } else {
                client = Some(m.addr);
                to
            };
            let contents = &iov[..m.len];
            let segment_size = (m.len > m.stride).then_some(m.stride);
            let transmit = Transmit { destination, ecn: None, contents, segment_size, src_ip: None };
            // A full socket drops the batch, as the network (and the broker) would.
            let _ = socket.try_io(Interest::WRITABLE, || state.send((&socket).into(), &transmit));
        }
    }
}
