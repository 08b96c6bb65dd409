//! Ids a sender chooses: 16 random bytes on the wire, 32 lower-case hex digits in the database, in
//! `--json` and on the command line. Each kind is its own type, so a transfer id cannot be passed where a
//! message id belongs, and text that is not an id is an error ([`BadId`]), never a zero id.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Text that is not an id of the kind expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a {what}: {text:?} (ids are 32 hex digits)")]
pub struct BadId {
    pub what: &'static str,
    pub text: String,
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, bincode::Encode, bincode::Decode,
        )]
        pub struct $name(pub [u8; 16]);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl FromStr for $name {
            type Err = BadId;
            fn from_str(s: &str) -> Result<Self, BadId> {
                let mut out = [0u8; 16];
                hex::decode_to_slice(s, &mut out).map_err(|_| BadId { what: $what, text: s.to_string() })?;
                Ok(Self(out))
            }
        }
    };
}

hex_id!(
    /// A chat message, chosen by its sender and kept on every retry, so that a message acknowledged twice is
    /// stored once.
    MessageId,
    "message id"
);
hex_id!(
    /// A file transfer, chosen by the sender; both sides' records carry it.
    TransferId,
    "transfer id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_back_what_they_print_and_refuse_anything_else() {
        let id = MessageId([0xab; 16]);
        assert_eq!(id.to_string(), "ab".repeat(16));
        assert_eq!(id.to_string().parse::<MessageId>(), Ok(id));
        assert_eq!("AB".repeat(16).parse::<MessageId>(), Ok(id), "upper case is read too");
        for bad in ["", "ab", &"ab".repeat(17), &"zz".repeat(16), &format!("{}é", "a".repeat(30))] {
            let err = bad.parse::<TransferId>().unwrap_err();
            assert_eq!(err.what, "transfer id", "{bad:?}");
        }
    }

    #[test]
    fn on_the_wire_an_id_is_its_bytes() {
        let cfg = bincode::config::standard();
        let bytes = bincode::encode_to_vec(TransferId([7; 16]), cfg).unwrap();
        assert_eq!(bytes, bincode::encode_to_vec([7u8; 16], cfg).unwrap());
    }
}
