//! The mailbox's rules, without I/O: which devices' mailbox keys a pinned account key certified, which
//! messages of a run each of a friend's devices still needs in its mailbox, and what an opened letter may
//! do here. The shell (`mailbox.rs`) asks the broker, seals, deposits, picks up and stores.

use certs::account;
use shared::mailbox::{LetterBody, MailboxKeys, SignedMailboxKeys};
use shared::peer::PeerAck;
use shared::trust::AccountKey;
use std::collections::HashSet;

/// The mailbox keys `key` certified for `user`'s devices (not revoked), and the refused ones' devices.
pub(crate) fn certified(
    user: &str,
    key: &AccountKey,
    served: Vec<SignedMailboxKeys>,
    revoked: &HashSet<[u8; 32]>,
) -> (Vec<MailboxKeys>, Vec<[u8; 32]>) {
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for k in served {
        let good =
            k.body.username == user && !revoked.contains(&k.body.fingerprint) && account::verify(key, &k).is_ok();
        if good { ok.push(k.body) } else { refused.push(k.body.fingerprint) }
    }
    (ok, refused)
}

/// For a run of `count` messages: the message indexes each mailbox device still needs, in order — every
/// message its device did not store directly (`direct`: answers by device), except those refused for good.
pub(crate) fn missing(
    count: usize,
    direct: &[([u8; 32], Vec<PeerAck>)],
    mailboxes: &[[u8; 32]],
    refused: &HashSet<usize>,
) -> Vec<([u8; 32], Vec<usize>)> {
    mailboxes
        .iter()
        .map(|device| {
            let acks = direct.iter().find(|(d, _)| d == device).map(|(_, a)| a.as_slice()).unwrap_or(&[]);
            let need = (0..count).filter(|i| !refused.contains(i) && acks.get(*i) != Some(&PeerAck::Stored)).collect();
            (*device, need)
        })
        .filter(|(_, need): &([u8; 32], Vec<usize>)| !need.is_empty())
        .collect()
}

/// Who wrote a letter, as far as what it may do here goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writer {
    /// A friend.
    Friend,
    /// Another device of this account.
    OwnDevice,
    /// This very device (a letter to itself makes no sense), or a stranger.
    Other,
}

/// Whether a letter of this kind from this writer is taken: friends write messages and receipts, this
/// account's other devices write copies of what they sent. Anything else is dropped.
pub(crate) fn allowed(body: &LetterBody, writer: Writer) -> Result<(), &'static str> {
    match (body, writer) {
        (LetterBody::Chat(_) | LetterBody::Delivered(_) | LetterBody::FileOffer(_), Writer::Friend) => Ok(()),
        (LetterBody::Copy { .. }, Writer::OwnDevice) => Ok(()),
        (_, Writer::Other) => Err("from neither a friend nor another device of this account"),
        (LetterBody::Copy { .. }, Writer::Friend) => Err("a friend cannot write copies of this account's messages"),
        (_, Writer::OwnDevice) => Err("this account's devices write only copies to each other"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PeerAck::{Refused, Stored};
    use certs::account::AccountKeyPair;

    fn keys(k: &AccountKeyPair, user: &str, fp: u8) -> SignedMailboxKeys {
        k.sign(MailboxKeys {
            username: user.into(),
            fingerprint: [fp; 32],
            seal_key: [9; 32],
            verify_key: [8; 32],
            created_at: 1,
        })
    }

    #[test]
    fn only_keys_the_pinned_key_signed_for_that_user_and_not_revoked() {
        let k = AccountKeyPair::generate().unwrap();
        let other = AccountKeyPair::generate().unwrap();
        let served = vec![keys(&k, "bob", 1), keys(&other, "bob", 2), keys(&k, "carol", 3), keys(&k, "bob", 4)];
        let (ok, refused) = certified("bob", &k.public(), served, &HashSet::from([[4; 32]]));
        assert_eq!(ok.iter().map(|m| m.fingerprint[0]).collect::<Vec<_>>(), vec![1]);
        assert_eq!(refused.iter().map(|f| f[0]).collect::<Vec<_>>(), vec![2, 3, 4]);
    }

    #[test]
    fn missing_table() {
        let (a, b) = ([1; 32], [2; 32]);
        let none = HashSet::new();
        // a took all three directly, b was offline: only b needs them.
        assert_eq!(missing(3, &[(a, vec![Stored, Stored, Stored])], &[a, b], &none), vec![(b, vec![0, 1, 2])]);
        // a was cut short after one: the rest go to its mailbox too.
        assert_eq!(missing(3, &[(a, vec![Stored])], &[a, b], &none), vec![(a, vec![1, 2]), (b, vec![0, 1, 2])]);
        // A message refused for good is not sealed anywhere.
        assert_eq!(
            missing(2, &[(a, vec![Refused("x".into()), Stored])], &[a], &HashSet::from([0])),
            Vec::<([u8; 32], Vec<usize>)>::new()
        );
        // A device reached directly that takes no letters (an older agent) is not in the list at all.
        assert!(missing(1, &[([7; 32], vec![])], &[], &none).is_empty());
    }

    #[test]
    fn who_may_write_what() {
        let chat = LetterBody::Chat(vec![]);
        let copy = LetterBody::Copy { to: "bob".into(), chats: vec![], delivered: false };
        let receipt = LetterBody::Delivered(vec![]);
        assert!(allowed(&chat, Writer::Friend).is_ok());
        assert!(allowed(&receipt, Writer::Friend).is_ok());
        assert!(allowed(&copy, Writer::OwnDevice).is_ok());
        assert!(allowed(&copy, Writer::Friend).is_err());
        assert!(allowed(&chat, Writer::OwnDevice).is_err());
        assert!(allowed(&chat, Writer::Other).is_err());
        assert!(allowed(&receipt, Writer::Other).is_err());
        let offer = LetterBody::FileOffer(shared::files::FileOffer {
            id: shared::id::TransferId([1; 16]),
            name: "a".into(),
            size: 1,
            hash: [0; 32],
        });
        assert!(allowed(&offer, Writer::Friend).is_ok());
        assert!(allowed(&offer, Writer::OwnDevice).is_err(), "a transfer is between friends");
    }
}
