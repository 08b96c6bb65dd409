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
//!
//! The stream is also the relay's lifetime and its fallback. Where both agents speak
//! [`crate::proto::BROKER_ALPN_CHANNELS`], the relay has a fast path beside it: a
//! *channel*, plain UDP datagrams between each agent's socket and the broker's, on the same 4-tuple as the
//! agent's broker connection (so through the same NAT mapping, kept open by that connection). Each datagram
//! is a [`HEADER`] (the tag byte, then the sender's channel id) and one QUIC packet; the broker checks that
//! the id belongs to the address it came from, rewrites it to the friend's id and sends it on, with no
//! stream, no second encryption, no second congestion controller. A stream carries packets of any size,
//! a channel only what fits the path, so a relayed connection's packet size is chosen by whether it has a
//! channel. On such a broker the first record on every relay stream is the broker's: the channel id (8
//! bytes, 0 for none), written before the splice so that no friend can forge it.

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

/// First byte of a channel datagram. QUIC packets always have the fixed bit (0x40) set once an endpoint
/// does not advertise `grease_quic_bit` (our agents and brokers do not), and long headers have 0x80 set:
/// a first byte of 0 can only be ours.
pub const TAG: u8 = 0;
/// Bytes before the QUIC packet in a channel datagram: [`TAG`] and the channel id, big-endian.
pub const HEADER: usize = 9;
/// A channel datagram with nothing after the header is a probe: the broker sends it back to its sender,
/// which then knows the channel works.
pub const PROBE: [u8; HEADER] = [TAG, 0, 0, 0, 0, 0, 0, 0, 0];

/// The channel id of a datagram, if it is a channel datagram.
pub fn channel_of(datagram: &[u8]) -> Option<u64> {
    match datagram {
        [TAG, id @ ..] if id.len() >= 8 => Some(u64::from_be_bytes(id[..8].try_into().ok()?)),
        _ => None,
    }
}

/// Writes a datagram's header (in place: `datagram` starts with [`HEADER`] bytes for it).
pub fn set_channel(datagram: &mut [u8], channel: u64) {
    datagram[0] = TAG;
    datagram[1..HEADER].copy_from_slice(&channel.to_be_bytes());
}

/// What one receive from a socket holds (`stride`-sized datagrams, as the kernel coalesces them by sender,
/// not by content): channel datagrams, QUIC packets, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// No channel datagram: all for QUIC.
    Quic,
    /// Channel datagrams only.
    Channel,
    /// Both: the channel datagrams are to be taken one by one (QUIC drops them, lacking its fixed bit).
    Mixed,
}

/// Sorts one receive (see [`Received`]).
pub fn received(data: &[u8], stride: usize) -> Received {
    let ours = |s: &[u8]| s.first() == Some(&TAG);
    let (mut any, mut all) = (false, true);
    for datagram in data.chunks(stride.max(1)) {
        let tagged = ours(datagram);
        any |= tagged;
        all &= tagged;
    }
    match (any, all) {
        (false, _) => Received::Quic,
        (true, true) => Received::Channel,
        (true, false) => Received::Mixed,
    }
}

/// The record a broker speaking channels writes first on each relay stream: the channel id (0: none).
pub fn encode_channel(channel: u64, out: &mut Vec<u8>) {
    let _ = encode_packet(&channel.to_be_bytes(), out);
}

/// Reads that first record; `None` if the stream ended or it was not a channel record.
pub fn decode_channel(record: &[u8]) -> Option<u64> {
    match record {
        [0, 8, id @ ..] if id.len() == 8 => Some(u64::from_be_bytes(id.try_into().ok()?)).filter(|&c| c != 0),
        _ => None,
    }
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
    fn channel_headers_round_trip() {
        let mut d = vec![0u8; HEADER + 3];
        set_channel(&mut d, 0x0102_0304_0506_0708);
        assert_eq!(channel_of(&d), Some(0x0102_0304_0506_0708));
        assert_eq!(channel_of(&PROBE), Some(0));
        assert_eq!(channel_of(&[0x40, 1, 2, 3, 4, 5, 6, 7, 8]), None, "a QUIC short header");
        assert_eq!(channel_of(&[TAG, 1, 2]), None, "too short");
        let mut rec = Vec::new();
        encode_channel(7, &mut rec);
        assert_eq!(rec.len(), 10);
        assert_eq!(decode_channel(&rec), Some(7));
        rec.clear();
        encode_channel(0, &mut rec);
        assert_eq!(decode_channel(&rec), None, "0 is no channel");
        assert_eq!(decode_channel(&[0, 9, 1, 2, 3, 4, 5, 6, 7, 8]), None);
    }

    #[test]
    fn receives_are_sorted_by_what_they_hold() {
        let quic = [0x40u8, 1, 2, 3];
        let ours = [TAG, 1, 2, 3];
        assert_eq!(received(&quic, 4), Received::Quic);
        assert_eq!(received(&[], 4), Received::Quic);
        assert_eq!(received(&[ours, ours].concat(), 4), Received::Channel);
        assert_eq!(received(&[quic, ours].concat(), 4), Received::Mixed);
        assert_eq!(received(&[ours, quic].concat(), 8), Received::Channel, "one datagram: its first byte");
    }

    #[test]
    fn oversized_packets_are_refused() {
        let mut out = Vec::new();
        assert_eq!(encode_packet(&vec![0; MAX_PACKET + 1], &mut out), Err(MAX_PACKET + 1));
        assert!(out.is_empty());
        assert!(encode_packet(&vec![0; MAX_PACKET], &mut out).is_ok());
    }
}
