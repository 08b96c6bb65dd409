//! The broker's relay: how two friends' agents reach each other when no direct path opens.
//!
//! The agents' own QUIC packets travel through the broker, so the end-to-end session between the two peers
//! (mutual TLS with the keys the broker vouched for) is the same as over a direct path and the broker
//! forwards bytes it cannot read. Each side holds one bidirectional stream on its broker connection per
//! relayed friend device: the asking side opens it with [`crate::proto::Request::Relay`], the broker opens
//! the other to the friend's agent with a [`RelayHello`] frame, then splices the two. On the stream every
//! packet is a 2-byte big-endian length and the packet ([`encode_packet`], [`PacketDecoder`]): the broker
//! copies the bytes without looking, and only the agents frame and unframe.
//!
//! A reliable stream (as iroh's relays use) rather than datagrams, so that full-size QUIC packets fit
//! whatever the broker path's MTU; the broker's flow control then bounds what it holds for a slow reader.

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Largest packet carried (QUIC packets are far smaller; UDP's own limit).
pub const MAX_PACKET: usize = u16::MAX as usize;

/// How long the broker waits for the friend's agent to take its side of a relay before answering the
/// asking agent (which therefore waits longer than this for the answer).
pub const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// First frame on a relay stream the broker opens to an agent: who is on the other end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct RelayHello {
    pub username: String,
    /// The friend's device, as its TLS handshake with the broker showed it.
    pub fingerprint: [u8; 32],
}

/// Appends one packet, framed, to `out`. Packets over [`MAX_PACKET`] are refused.
pub fn encode_packet(packet: &[u8], out: &mut Vec<u8>) -> Result<(), usize> {
    let len = u16::try_from(packet.len()).map_err(|_| packet.len())?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(packet);
    Ok(())
}

/// Splits a relay stream back into packets, however the bytes were chunked on the way. Each packet is a
/// view of the bytes received (copied once, into the decoder), not a copy of its own.
#[derive(Debug, Default)]
pub struct PacketDecoder {
    buf: BytesMut,
}

impl PacketDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole packet, if one has arrived.
    pub fn next_packet(&mut self) -> Option<Bytes> {
        if self.buf.len() < 2 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
        if self.buf.len() < 2 + len {
            return None;
        }
        self.buf.advance(2);
        Some(self.buf.split_to(len).freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_survive_any_chunking() {
        let packets: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; usize::from(i) * 37 % 1500]).collect();
        let mut wire = Vec::new();
        for p in &packets {
            encode_packet(p, &mut wire).unwrap();
        }
        for chunk in [1, 2, 3, 7, 1200, wire.len()] {
            let mut d = PacketDecoder::default();
            let mut back = Vec::new();
            for piece in wire.chunks(chunk) {
                d.push(piece);
                while let Some(p) = d.next_packet() {
                    back.push(p.to_vec());
                }
            }
            assert_eq!(back, packets, "chunks of {chunk}");
        }
    }

    #[test]
    fn oversized_packets_are_refused() {
        let mut out = Vec::new();
        assert_eq!(encode_packet(&vec![0; MAX_PACKET + 1], &mut out), Err(MAX_PACKET + 1));
        assert!(out.is_empty());
        assert!(encode_packet(&vec![0; MAX_PACKET], &mut out).is_ok());
    }
}
