//! What an account's key says about its devices, as it travels: signed device records and revocations.
//!
//! Every account has an identity key (Ed25519) that lives only on the user's devices. It certifies each
//! device's TLS key with a [`DeviceRecord`]; the broker stores and serves the records but cannot make one,
//! so a friend's agent that checks them (in `certs::account`) needs to trust the broker for nothing but
//! availability. The bytes that are signed are [`signed_bytes`]: a domain label, then the body's bincode.
//! Signing and checking live in `certs`, which has the cryptography; this module is only the shapes.

use crate::proto::Millis;
use serde::{Deserialize, Serialize};

/// An account's public identity key (Ed25519).
pub type AccountKey = [u8; 32];

/// What an account key says about one device: this TLS key is one of mine, with this name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct DeviceRecord {
    pub username: String,
    /// SHA-256 of the device's certificate.
    pub fingerprint: [u8; 32],
    /// Shown to the user and to nobody else ("laptop").
    pub name: String,
    pub created_at: Millis,
}

/// An account key's statement that a device is cut off for good.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct Revocation {
    pub username: String,
    pub fingerprint: [u8; 32],
    pub at: Millis,
}

/// A statement with the account key's signature over [`signed_bytes`] of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct Signed<T> {
    pub body: T,
    /// 64 bytes of Ed25519 (a `Vec` because serde has no arrays that long).
    pub signature: Vec<u8>,
}

/// A device record with its signature.
pub type SignedRecord = Signed<DeviceRecord>;
/// A revocation with its signature.
pub type SignedRevocation = Signed<Revocation>;

/// Something an account key signs: each kind has its own label, so that no signature over one kind can be
/// passed off as another.
pub trait Statement: bincode::Encode {
    const LABEL: &'static [u8];
}

impl Statement for DeviceRecord {
    const LABEL: &'static [u8] = b"p2pim device record v1\0";
}

impl Statement for Revocation {
    const LABEL: &'static [u8] = b"p2pim device revocation v1\0";
}

/// The bytes an account key signs for `body`.
pub fn signed_bytes<T: Statement>(body: &T) -> Vec<u8> {
    let mut out = T::LABEL.to_vec();
    // Encoding into a Vec has no way to fail for these plain structs.
    let _ = bincode::encode_into_std_write(body, &mut out, bincode::config::standard());
    out
}

/// One of a friend's online devices with the record that certifies it (if the broker has one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct CertifiedDevice {
    pub endpoint: crate::proto::DeviceEndpoint,
    pub record: Option<SignedRecord>,
}

/// A user's account key and online devices, as the broker serves them ([`crate::proto::Response::Located`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct Located {
    /// `None` for an account that has not made its key yet (registered before keys existed).
    pub account_key: Option<AccountKey>,
    pub devices: Vec<CertifiedDevice>,
}

/// One of your own devices, as `peer devices` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct OwnDevice {
    pub record: SignedRecord,
    pub online: bool,
    /// When its last session ended (`None`: online now, or never seen since records were kept).
    pub last_seen: Option<Millis>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_statement_signs_different_bytes() {
        let r = DeviceRecord { username: "a".into(), fingerprint: [1; 32], name: "x".into(), created_at: 5 };
        let v = Revocation { username: "a".into(), fingerprint: [1; 32], at: 5 };
        let (a, b) = (signed_bytes(&r), signed_bytes(&v));
        assert!(a.starts_with(DeviceRecord::LABEL) && b.starts_with(Revocation::LABEL));
        assert_ne!(a, b);
        let renamed = DeviceRecord { name: "y".into(), ..r.clone() };
        assert_ne!(signed_bytes(&renamed), a);
    }
}
