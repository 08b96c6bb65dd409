//! Which of a friend's devices to believe. The broker says where a friend's devices are and hands over the
//! friend's account key and the records it signed; this decides, from the key this device pinned for the
//! friend, what to do with that: pin a key seen for the first time, hold everything for a key that changed
//! until the user accepts it, and keep only devices whose record verifies under the pinned key and that no
//! revocation signed by it cut off.

use certs::account::{TrustError, check_record};
use shared::proto::DeviceEndpoint;
use shared::trust::{AccountKey, CertifiedDevice};
use std::collections::HashSet;

/// What this device knows of a friend's account key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pin {
    pub(crate) key: AccountKey,
    /// The user compared safety numbers and confirmed them.
    pub(crate) verified: bool,
    /// A different key the broker served, waiting for the user to accept it.
    pub(crate) new_key: Option<AccountKey>,
}

/// What to do with the key the broker served for a friend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeySeen {
    /// The pinned key: go on.
    Pinned(AccountKey),
    /// First contact: pin it (trust on first use), then go on.
    First(AccountKey),
    /// A key other than the pinned one, seen now for the first time: record it, tell the user, hold.
    Changed(AccountKey),
    /// The changed key again, still not accepted: hold.
    StillChanged,
    /// The account has no key (registered before keys existed, not yet migrated): nothing to check against.
    None,
}

/// Reads the key the broker served against the pin.
pub(crate) fn key_seen(pin: Option<&Pin>, served: Option<AccountKey>) -> KeySeen {
    match (pin, served) {
        (_, None) => KeySeen::None,
        (None, Some(k)) => KeySeen::First(k),
        (Some(p), Some(k)) if p.key == k => KeySeen::Pinned(k),
        (Some(p), Some(k)) if p.new_key == Some(k) => KeySeen::StillChanged,
        (Some(_), Some(k)) => KeySeen::Changed(k),
    }
}

/// A device the broker vouched for that this device refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) fingerprint: [u8; 32],
    pub(crate) why: Refusal,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("no record signed by the account key")]
    NoRecord,
    #[error("its record does not verify: {0}")]
    Bad(TrustError),
    #[error("revoked by its account")]
    Revoked,
}

/// The devices whose records `key` signed for `friend`, and the refused ones.
pub(crate) fn certified(
    friend: &str,
    key: &AccountKey,
    devices: Vec<CertifiedDevice>,
    revoked: &HashSet<[u8; 32]>,
) -> (Vec<DeviceEndpoint>, Vec<Refused>) {
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for d in devices {
        let fingerprint = d.endpoint.fingerprint;
        let verdict = match &d.record {
            _ if revoked.contains(&fingerprint) => Err(Refusal::Revoked),
            None => Err(Refusal::NoRecord),
            Some(r) => check_record(key, friend, &fingerprint, r).map_err(Refusal::Bad),
        };
        match verdict {
            Ok(()) => ok.push(d.endpoint),
            Err(why) => refused.push(Refused { fingerprint, why }),
        }
    }
    (ok, refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use certs::account::AccountKeyPair;
    use shared::trust::DeviceRecord;

    fn device(key: Option<&AccountKeyPair>, user: &str, fp: u8, certifies: u8) -> CertifiedDevice {
        CertifiedDevice {
            endpoint: DeviceEndpoint { fingerprint: [fp; 32], observed: "127.0.0.1:1".parse().unwrap(), local: vec![] },
            record: key.map(|k| {
                k.sign(DeviceRecord {
                    username: user.into(),
                    fingerprint: [certifies; 32],
                    name: "x".into(),
                    created_at: 1,
                })
            }),
        }
    }

    #[test]
    fn keys_are_pinned_on_first_sight_and_a_change_is_held_until_accepted() {
        let pin = |key, new_key| Pin { key, verified: true, new_key };
        assert_eq!(key_seen(None, Some([1; 32])), KeySeen::First([1; 32]));
        assert_eq!(key_seen(None, None), KeySeen::None);
        assert_eq!(key_seen(Some(&pin([1; 32], None)), Some([1; 32])), KeySeen::Pinned([1; 32]));
        assert_eq!(key_seen(Some(&pin([1; 32], None)), Some([2; 32])), KeySeen::Changed([2; 32]));
        assert_eq!(key_seen(Some(&pin([1; 32], Some([2; 32]))), Some([2; 32])), KeySeen::StillChanged);
        // A third key is a change of its own, told again.
        assert_eq!(key_seen(Some(&pin([1; 32], Some([2; 32]))), Some([3; 32])), KeySeen::Changed([3; 32]));
        // Back to the pinned key: fine again (the broker stopped lying).
        assert_eq!(key_seen(Some(&pin([1; 32], Some([2; 32]))), Some([1; 32])), KeySeen::Pinned([1; 32]));
        // A broker that drops the key does not get the pinned one ignored.
        assert_eq!(key_seen(Some(&pin([1; 32], None)), None), KeySeen::None);
    }

    #[test]
    fn only_devices_certified_by_the_pinned_key_are_kept() {
        let bob = AccountKeyPair::generate().unwrap();
        let mallory = AccountKeyPair::generate().unwrap();
        let devices = vec![
            device(Some(&bob), "bob", 1, 1),     // good
            device(None, "bob", 2, 2),           // no record: a password-only login
            device(Some(&bob), "bob", 3, 1),     // bob's record for another device, served for this one
            device(Some(&mallory), "bob", 4, 4), // signed by a key that is not bob's
            device(Some(&bob), "carol", 5, 5),   // bob's key, but a record for another account
            device(Some(&bob), "bob", 6, 6),     // good, but revoked
        ];
        let revoked = HashSet::from([[6; 32]]);
        let (ok, refused) = certified("bob", &bob.public(), devices, &revoked);
        assert_eq!(ok.iter().map(|d| d.fingerprint[0]).collect::<Vec<_>>(), vec![1]);
        let why: Vec<_> = refused.iter().map(|r| (r.fingerprint[0], r.why.clone())).collect();
        assert_eq!(
            why,
            vec![
                (2, Refusal::NoRecord),
                (3, Refusal::Bad(TrustError::WrongDevice)),
                (4, Refusal::Bad(TrustError::BadSignature)),
                (5, Refusal::Bad(TrustError::WrongAccount("carol".into()))),
                (6, Refusal::Revoked),
            ]
        );
    }
}
