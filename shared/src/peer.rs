//! What two peers say to each other on a direct connection (ALPN [`crate::proto::PEER_ALPN`]).
//!
//! Who the sender is comes from the connection (the TLS certificate the broker vouched for), never from a
//! frame. Each message travels on its own bidirectional stream: one [`PeerFrame`], one [`PeerAck`] once
//! the receiver has committed it to its database. A message id is chosen by the sender and reused on every
//! retry, so a message acknowledged twice is stored once.

use crate::proto::Millis;
use serde::{Deserialize, Serialize};

/// Longest chat message, in bytes of UTF-8.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// A message id: 16 random bytes, shown as 32 hex digits.
pub type MessageId = [u8; 16];

/// From one peer to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame {
    /// A one-to-one chat message.
    Chat { id: MessageId, sent_at: Millis, text: String },
}

/// The receiver's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerAck {
    /// Committed to the receiver's history (or already there).
    Stored,
    /// Refused for good (too long, not a friend): retrying will not help.
    Refused(String),
}

/// Hex form of a message id.
pub fn id_hex(id: &MessageId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
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
        assert_eq!(id_hex(&[0xab; 16]).len(), 32);
    }

    #[test]
    fn largest_message_fits_a_frame() {
        let f = PeerFrame::Chat { id: [1; 16], sent_at: 1, text: "字".repeat(MAX_MESSAGE_BYTES / 3) };
        assert!(crate::frame::encode(&f).is_ok());
    }
}
