//! The sealed mailbox, as it travels: what a device publishes so that others can write to it while it is
//! offline, and what one sealed letter holds.
//!
//! Each device has two mailbox keys of its own: an X25519 key that letters are sealed to (HPKE, RFC 9180,
//! in `certs::seal`) and an Ed25519 key that signs the letters it writes. Its account key certifies both in
//! [`MailboxKeys`], beside the device record, the way Signal's identity key signs a device's prekey: a
//! friend's agent checks that statement against the account key it pinned, so the broker can neither read
//! a letter nor pass one off as a friend's. The broker stores a letter as an opaque blob for one recipient
//! device, and deletes it once that device acknowledges it.

use crate::peer::{Chat, MessageId};
use crate::proto::Millis;
use crate::trust::{Signed, Statement};
use serde::{Deserialize, Serialize};

/// Most bytes of chats one letter carries (its sealed form adds a fixed [`LETTER_OVERHEAD`]); a longer
/// backlog goes as several letters, in order.
pub const LETTER_BUDGET: usize = 24 * 1024;
/// Most bytes the broker takes for one sealed letter: a budget's worth of chats with their envelopes,
/// the signature and the sealing.
pub const MAX_LETTER: usize = 40 * 1024;
/// Bytes a sealed letter costs beyond its chats' text, at most: HPKE's encapsulated key and tag (48), the
/// signature (64), names, device keys and times (under 200), and per chat its id, time and lengths (under
/// 40 each, counted by [`letters`]).
pub const LETTER_OVERHEAD: usize = 312;
/// Per chat, what [`letters`] counts beside its text.
const PER_CHAT: usize = 40;

/// A device's mailbox keys, certified by its account key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct MailboxKeys {
    pub username: String,
    /// The device (SHA-256 of its certificate) these keys belong to.
    pub fingerprint: [u8; 32],
    /// X25519: letters to this device are sealed to it.
    pub seal_key: [u8; 32],
    /// Ed25519: letters from this device are signed with it.
    pub verify_key: [u8; 32],
    pub created_at: Millis,
}

impl Statement for MailboxKeys {
    const LABEL: &'static [u8] = b"p2pim mailbox keys v1\0";
}

/// Mailbox keys with the account key's signature.
pub type SignedMailboxKeys = Signed<MailboxKeys>;

/// What one letter says, from one device to another. Sealed, it is all the broker stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct Letter {
    pub from: String,
    pub from_device: [u8; 32],
    pub to: String,
    pub to_device: [u8; 32],
    pub written_at: Millis,
    pub body: LetterBody,
}

impl Statement for Letter {
    const LABEL: &'static [u8] = b"p2pim mailbox letter v1\0";
}

/// A letter signed by the sending device's mailbox key ([`MailboxKeys::verify_key`]).
pub type SignedLetter = Signed<Letter>;

/// What a letter carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum LetterBody {
    /// Messages to the recipient's user, in the order they were written.
    Chat(Vec<Chat>),
    /// Messages that this device sent to `to` (written to the user's own other devices, so that every
    /// device has the same history); `delivered` when a device of `to` had stored them already.
    Copy { to: String, chats: Vec<Chat>, delivered: bool },
    /// These messages from the recipient's user were stored on the writing device.
    Delivered(Vec<MessageId>),
    /// A file offered while the recipient was offline (the file itself is never in a letter: it goes
    /// directly, or relayed, once both are online and the recipient accepted it).
    FileOffer(crate::files::FileOffer),
}

/// A letter waiting at the broker, as the recipient device picks it up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct Deposit {
    /// The broker's number for it: ascending in the order it was deposited, and what is acknowledged.
    pub id: i64,
    /// The user whose session deposited it (the letter inside must say the same).
    pub from: String,
    pub blob: Vec<u8>,
    pub at: Millis,
}

/// Splits chats into letters' worth, in order (one chat is never split).
pub fn letters(chats: Vec<Chat>) -> Vec<Vec<Chat>> {
    crate::frame::pack(chats, LETTER_BUDGET, |c| c.text.len() + PER_CHAT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_letter_fits_the_limit() {
        let chat = |i: u8| Chat { id: MessageId([i; 16]), sent_at: i64::MAX, text: "x".repeat(4096) };
        let letters = letters((0..20).map(chat).collect());
        assert!(letters.len() > 1);
        for chats in letters {
            let letter = Letter {
                from: "u".repeat(32),
                from_device: [1; 32],
                to: "v".repeat(32),
                to_device: [2; 32],
                written_at: i64::MAX,
                body: LetterBody::Copy { to: "w".repeat(32), chats, delivered: true },
            };
            let signed = Signed { body: letter, signature: vec![0; 64] };
            let bytes = crate::frame::encode_body(&signed).expect("encodes");
            assert!(bytes.len() + 48 <= MAX_LETTER, "{}", bytes.len());
        }
    }
}
