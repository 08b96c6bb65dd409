//! What two peers say to each other on a direct connection (ALPN [`crate::proto::PEER_ALPN`]).
//!
//! Who the sender is comes from the connection (the TLS certificate the broker vouched for), never from a
//! frame. Each message travels on its own bidirectional stream: one [`PeerFrame`], one [`PeerAck`] once
//! the receiver has committed it to its database. A message id is chosen by the sender and reused on every
//! retry, so a message acknowledged twice is stored once. Files ride the same connection on streams of their
//! own (see [`crate::files`]), so a transfer never holds up chat.

use crate::files::{FileOffer, OfferAnswer};
pub use crate::id::{MessageId, TransferId};
use crate::proto::Millis;
use serde::{Deserialize, Serialize};

/// Longest chat message, in bytes of UTF-8.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// Room kept in a frame for the envelope of a batch.
const BATCH_OVERHEAD: usize = 1024;
/// Envelope bytes counted per message in a batch (id, time, length prefixes).
const PER_MESSAGE_OVERHEAD: usize = 40;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct Chat {
    pub id: MessageId,
    pub sent_at: Millis,
    pub text: String,
}

/// From one peer to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum PeerFrame {
    /// One chat message; answered with one [`PeerAck`].
    Chat(Chat),
    /// Several chat messages in order, committed together; answered with one [`PeerAck::Batch`].
    ChatBatch(Vec<Chat>),
    /// A file on offer (sent again, same id, to learn where the receiver stands); answered with
    /// [`PeerAck::Offer`] or [`PeerAck::Refused`].
    FileOffer(FileOffer),
    /// From the receiver: send the file from `offset` on. Answered with [`PeerAck::Stored`] followed by the
    /// raw bytes to the end of the stream, or [`PeerAck::Refused`]. The receiver then sends a
    /// [`PeerFrame::FileResult`] on the same stream.
    FileFetch { id: TransferId, offset: u64 },
    /// Either side gives up on a transfer (`declined`: the receiver never wanted it); answered with
    /// [`PeerAck::Stored`].
    FileCancel { id: TransferId, declined: bool, reason: String },
    /// The receiver's verdict once it has every byte: the hash matched (and the file is in place), or not.
    FileResult { id: TransferId, ok: bool, reason: String },
    /// Sent on a relayed connection: join a search for a direct path that the plain punch could not open
    /// (a NAT that maps every destination to a new port, facing one that filters by address and port).
    /// Answered with [`PeerAck::Search`] (joining now) or [`PeerAck::Refused`].
    Search(Search),
}

/// One side of a search for a direct path (see [`PeerFrame::Search`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct Search {
    /// Carried by every probe of this search, so that a probe is told from stray packets.
    pub token: [u8; 16],
    /// Whether the sender's NAT kept its port towards the broker (the broker saw the port the sender's
    /// socket is bound to): a sign that it maps every destination the same way, so that the other side
    /// need not guess its port.
    pub port_kept: bool,
}

/// The receiver's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum PeerAck {
    /// Committed to the receiver's history (or already there).
    Stored,
    /// Refused for good (too long, not a friend): retrying will not help.
    Refused(String),
    /// One answer per message of a [`PeerFrame::ChatBatch`], in order.
    Batch(Vec<PeerAck>),
    /// Where the receiver stands on an offered file.
    Offer(OfferAnswer),
    /// Joining a [`PeerFrame::Search`]: the answerer's own side of it (the same token).
    Search(Search),
}

/// Packs messages, in order, into as few frames as fit under the frame limit.
pub fn batches(messages: Vec<Chat>) -> Vec<PeerFrame> {
    // The decoder counts each message's size in memory against the frame limit, besides its text's bytes:
    // a burst of tiny messages is bounded by that, not by the bytes on the wire.
    let cost = |m: &Chat| m.text.len() + PER_MESSAGE_OVERHEAD + std::mem::size_of::<Chat>();
    crate::frame::pack(messages, crate::frame::MAX_FRAME - BATCH_OVERHEAD, cost)
        .into_iter()
        .map(PeerFrame::ChatBatch)
        .collect()
}

/// Lower-case hex of any bytes (hashes, fixtures), as stored and shown.
pub fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Bytes back from [`to_hex`]; `None` unless `hex` is exactly `2 * N` hex digits.
pub fn from_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(hex, &mut out).ok()?;
    Some(out)
}

/// Checks a chat text: not empty, at most [`MAX_MESSAGE_BYTES`].
pub fn check_text(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("empty message".into());
    }
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(format!("message is {} bytes; the limit is {MAX_MESSAGE_BYTES}", text.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert!(check_text("你好,世界 👋").is_ok());
        assert!(check_text("").is_err());
        assert!(check_text(&"x".repeat(MAX_MESSAGE_BYTES)).is_ok());
        assert!(check_text(&"x".repeat(MAX_MESSAGE_BYTES + 1)).is_err());
        assert_eq!(from_hex::<16>(&to_hex(&[0xab; 16])), Some([0xab; 16]));
        assert_eq!(from_hex::<2>("0aFf"), Some([0x0a, 0xff]));
        assert_eq!(from_hex::<2>("0a"), None);
        assert_eq!(from_hex::<1>("zz"), None);
    }

    #[test]
    fn largest_message_fits_a_frame() {
        let f = PeerFrame::Chat(Chat { id: MessageId([1; 16]), sent_at: 1, text: "字".repeat(MAX_MESSAGE_BYTES / 3) });
        assert!(crate::frame::encode(&f).is_ok());
    }

    #[test]
    fn batches_keep_order_and_fit_frames() {
        let msgs: Vec<Chat> = (0..100u8)
            .map(|i| Chat {
                id: MessageId([i; 16]),
                sent_at: i64::from(i),
                text: "x".repeat(if i % 7 == 0 { MAX_MESSAGE_BYTES } else { 100 }),
            })
            .collect();
        let frames = batches(msgs.clone());
        assert!(frames.len() > 1);
        let mut back = Vec::new();
        for f in &frames {
            assert!(crate::frame::encode(f).is_ok(), "every batch fits a frame");
            let PeerFrame::ChatBatch(v) = f else { panic!() };
            back.extend(v.iter().cloned());
        }
        assert_eq!(back, msgs);
        assert!(batches(vec![]).is_empty());
        // A burst of tiny messages: every batch decodes under the limit, which counts messages in memory.
        let tiny: Vec<Chat> = (0..5000u32)
            .map(|i| Chat { id: MessageId([(i % 251) as u8; 16]), sent_at: i64::from(i), text: "x".into() })
            .collect();
        for f in batches(tiny) {
            let bytes = crate::frame::encode(&f).unwrap();
            assert!(crate::frame::decode_body::<PeerFrame>(&bytes[crate::frame::HEADER_LEN..]).is_ok());
        }
    }
}
