//! SHA-256 fingerprints of certificates: what gets pinned, shown and compared.

use std::fmt;
use std::str::FromStr;

/// The SHA-256 of a certificate's DER bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Fingerprint of a DER-encoded certificate.
    pub fn of(cert_der: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, cert_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }
}

impl fmt::Display for Fingerprint {
    /// Lower-case hex, 64 digits: easy to copy into `--broker-fingerprint`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = crate::Error;

    /// Accepts hex in either case, with or without `:` separators and an optional `SHA256:` prefix.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || crate::Error::BadFingerprint(s.to_string());
        let t = s.trim();
        let t = t.strip_prefix("SHA256:").or_else(|| t.strip_prefix("sha256:")).unwrap_or(t);
        let digits: Vec<u8> = t.bytes().filter(|b| *b != b':').collect();
        let mut out = [0u8; 32];
        hex::decode_to_slice(digits, &mut out).map_err(|_| bad())?;
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip() {
        let f = Fingerprint::of(b"certificate");
        let s = f.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<Fingerprint>().unwrap(), f);
        let colons: String = s
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(format!("SHA256:{colons}").parse::<Fingerprint>().unwrap(), f);
    }

    #[test]
    fn rejects_junk() {
        assert!("abc".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }
}
