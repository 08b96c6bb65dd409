//! What a new device and the existing device that links it say to each other, on a direct connection
//! (ALPN [`LINK_ALPN`]) that the broker only introduced.
//!
//! 1. The new device claimed a link code at the broker and learnt the existing device's key and address; it
//!    connects (pinning that key), opens one stream and sends [`LinkFrame::Hello`] with a proof that it
//!    holds the code's secret, bound to both keys as it sees them (`certs::account::LinkCode::proof`).
//! 2. The existing device checks the proof, shows the user the confirmation words and waits for them to
//!    confirm. It answers [`LinkReply::Approved`] (the account key, the new device's signed record, its
//!    session token) or [`LinkReply::Refused`].
//! 3. Then, on the same stream: the friends' pinned keys ([`LinkReply::Pins`]), the history
//!    ([`LinkReply::Rows`], oldest first, in frames under the frame limit), and [`LinkReply::Done`]. The new
//!    device answers [`LinkFrame::Stored`] once everything is committed.

use crate::proto::Millis;
use crate::trust::{AccountKey, SignedRecord};
use serde::{Deserialize, Serialize};

/// ALPN of a linking connection.
pub const LINK_ALPN: &[u8] = b"p2pim-link/1";

/// From the new device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum LinkFrame {
    Hello {
        proof: [u8; 32],
        device_name: String,
    },
    /// Everything sent was stored (`messages` of them).
    Stored {
        messages: u64,
    },
}

/// From the existing device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum LinkReply {
    Approved(Box<Approval>),
    Refused(String),
    Pins(Vec<PinnedKey>),
    Rows(Vec<HistoryRow>),
    Done { messages: u64 },
}

/// What makes the new device one of the account's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct Approval {
    pub username: String,
    /// The account key itself (PKCS#8): every linked device holds it.
    pub account_key: Vec<u8>,
    /// The new device's record, signed by the account key.
    pub record: SignedRecord,
    /// A session token the broker issued for the new device's key.
    pub token: String,
    pub expires_at: Millis,
    /// History rows that follow, for a progress bar.
    pub messages: u64,
}

/// A friend's account key as the existing device pinned it, so that the new one does not trust on first
/// use again what was already verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct PinnedKey {
    pub username: String,
    pub account_key: AccountKey,
    pub verified: bool,
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum HistoryRow {
    Direct {
        id: String,
        peer: String,
        outgoing: bool,
        text: String,
        sent_at: Millis,
        stored_at: Millis,
        status: String,
    },
    Group {
        group_id: i64,
        seq: i64,
        sender: String,
        system: bool,
        text: String,
        sent_at: Millis,
        stored_at: Millis,
    },
}

impl HistoryRow {
    /// A generous bound on what decoding it claims against the frame limit, for packing frames: the
    /// decoder counts a row's size in memory for the list, then each string's bytes.
    pub fn size_hint(&self) -> usize {
        let strings = match self {
            Self::Direct { id, peer, text, status, .. } => id.len() + peer.len() + text.len() + status.len(),
            Self::Group { sender, text, .. } => sender.len() + text.len(),
        };
        std::mem::size_of::<Self>() + strings + 32
    }
}

/// Packs rows, in order, into frames that stay under the frame limit.
pub fn pack(rows: Vec<HistoryRow>) -> Vec<LinkReply> {
    crate::frame::pack(rows, crate::frame::MAX_FRAME - 64, HistoryRow::size_hint)
        .into_iter()
        .map(LinkReply::Rows)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_rows_fit_frames_and_keep_order() {
        let rows: Vec<HistoryRow> = (0..3000)
            .map(|i| HistoryRow::Direct {
                id: format!("{i:032x}"),
                peer: "bob".into(),
                outgoing: i % 2 == 0,
                text: "x".repeat(if i > 2900 && i % 7 == 0 { 16 * 1024 } else { 100 }),
                sent_at: i,
                stored_at: i,
                status: "delivered".into(),
            })
            .collect();
        let frames = pack(rows.clone());
        assert!(frames.len() > 1);
        let mut back = Vec::new();
        for f in &frames {
            let bytes = crate::frame::encode(f).expect("every frame is under the limit");
            let decoded: LinkReply = crate::frame::decode_body(&bytes[crate::frame::HEADER_LEN..])
                .expect("and decodes under the limit (which counts rows in memory)");
            assert_eq!(&decoded, f);
            let LinkReply::Rows(r) = f else { panic!() };
            back.extend(r.iter().cloned());
        }
        assert_eq!(back, rows);
    }
}
