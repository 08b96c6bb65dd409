//! An account's identity key: made on the first device, kept on the user's devices (0600), never on the
//! broker. It signs the records that certify each device's TLS key and the revocations that cut one off;
//! friends check those signatures against the key they pinned, and compare safety numbers to know the
//! pinned key is really their friend's. Also here: the passphrase-sealed backup of the key, and the proofs
//! a link code's secret gives when a new device is linked.

use crate::secret_file;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use shared::trust::{AccountKey, DeviceRecord, Signed, SignedRecord, Statement};
use std::path::Path;

/// Why a statement, a key file or a backup was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("the signature does not verify under the account key")]
    BadSignature,
    #[error("the record certifies another device's key")]
    WrongDevice,
    #[error("the record belongs to another account ({0})")]
    WrongAccount(String),
    #[error("not an account key")]
    BadKey,
    #[error("wrong passphrase, or the backup file is damaged")]
    BadBackup,
    #[error("not an account key backup (it should start with {BACKUP_MAGIC:?})")]
    NotABackup,
    #[error("a link code is 16 letters and digits (dashes and spaces do not matter)")]
    BadLinkCode,
}

/// An account key pair.
pub struct AccountKeyPair {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for AccountKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccountKeyPair({})", hex::encode(self.public()))
    }
}

impl AccountKeyPair {
    /// A fresh key.
    pub fn generate() -> Result<Self, TrustError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| TrustError::BadKey)?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    /// A key from its PKCS#8 encoding.
    pub fn from_pkcs8(bytes: &[u8]) -> Result<Self, TrustError> {
        let pair = Ed25519KeyPair::from_pkcs8(bytes).map_err(|_| TrustError::BadKey)?;
        Ok(Self { pair, pkcs8: bytes.to_vec() })
    }

    /// The PKCS#8 encoding: the secret itself, for the key file and for a device being linked.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// Reads a key file; `None` if there is none.
    pub fn load(path: &Path) -> Result<Option<Self>, crate::Error> {
        match std::fs::read(path) {
            Ok(bytes) => Self::from_pkcs8(&bytes)
                .map(Some)
                .map_err(|_| crate::Error::Pem { path: path.to_path_buf(), what: "account key" }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(crate::Error::File { path: path.to_path_buf(), source }),
        }
    }

    /// Writes the key file (0600, atomically).
    pub fn save(&self, path: &Path) -> Result<(), crate::Error> {
        secret_file::write(path, &self.pkcs8).map_err(|source| crate::Error::File { path: path.to_path_buf(), source })
    }

    pub fn public(&self) -> AccountKey {
        let mut out = [0; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    /// Signs a statement.
    pub fn sign<T: Statement>(&self, body: T) -> Signed<T> {
        let signature = self.pair.sign(&shared::trust::signed_bytes(&body)).as_ref().to_vec();
        Signed { body, signature }
    }
}

/// Checks a statement's signature under `key`.
pub fn verify<T: Statement>(key: &AccountKey, signed: &Signed<T>) -> Result<(), TrustError> {
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&shared::trust::signed_bytes(&signed.body), &signed.signature)
        .map_err(|_| TrustError::BadSignature)
}

/// Checks that `record` is `username`'s account key certifying exactly the device key `fingerprint`.
pub fn check_record(
    key: &AccountKey,
    username: &str,
    fingerprint: &[u8; 32],
    record: &SignedRecord,
) -> Result<(), TrustError> {
    let DeviceRecord { username: owner, fingerprint: certified, .. } = &record.body;
    if owner != username {
        return Err(TrustError::WrongAccount(owner.clone()));
    }
    if certified != fingerprint {
        return Err(TrustError::WrongDevice);
    }
    verify(key, record)
}

/// The safety number of two accounts: 60 digits, the same on both sides, different for any other pair of
/// keys. Each side's half is an iterated SHA-512 of its username and key (as Signal's); the halves are
/// ordered, so that who computes it does not matter.
pub fn safety_number(a: (&str, &AccountKey), b: (&str, &AccountKey)) -> String {
    let (mut x, mut y) = (half(a.0, a.1), half(b.0, b.1));
    if x > y {
        std::mem::swap(&mut x, &mut y);
    }
    let digits = format!("{x}{y}");
    digits.as_bytes().chunks(5).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(" ")
}

/// 30 digits for one account.
fn half(username: &str, key: &AccountKey) -> String {
    let mut h = [b"p2pim safety number v1\0".as_slice(), key, username.as_bytes()].concat();
    for _ in 0..5200 {
        h = ring::digest::digest(&ring::digest::SHA512, &[h.as_slice(), key].concat()).as_ref().to_vec();
    }
    // Six groups of five digits, each from five bytes (as Signal: a 40-bit number mod 100000).
    h.chunks(5)
        .take(6)
        .map(|c| {
            let n = c.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect()
}

/// First line of a key backup file.
pub const BACKUP_MAGIC: &str = "p2pim account key backup v1";

/// Seals the key with a passphrase (argon2id, then ChaCha20-Poly1305) as a small text file.
pub fn seal_backup(key: &AccountKeyPair, username: &str, passphrase: &str) -> Result<String, TrustError> {
    let rng = SystemRandom::new();
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 12];
    rng.fill(&mut salt).map_err(|_| TrustError::BadKey)?;
    rng.fill(&mut nonce).map_err(|_| TrustError::BadKey)?;
    let sealing = aead_key(passphrase, &salt)?;
    let mut data = key.pkcs8().to_vec();
    sealing
        .seal_in_place_append_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(username.as_bytes()),
            &mut data,
        )
        .map_err(|_| TrustError::BadKey)?;
    Ok(format!(
        "{BACKUP_MAGIC}\nuser {username}\nsalt {}\nnonce {}\nkey {}\n",
        hex::encode(salt),
        hex::encode(nonce),
        hex::encode(data)
    ))
}

/// Opens a backup made by [`seal_backup`]: the username it is for and the key.
pub fn open_backup(text: &str, passphrase: &str) -> Result<(String, AccountKeyPair), TrustError> {
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some(BACKUP_MAGIC) {
        return Err(TrustError::NotABackup);
    }
    let mut field = |name: &str| -> Result<String, TrustError> {
        let line = lines.next().ok_or(TrustError::BadBackup)?;
        line.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).map(str::to_string).ok_or(TrustError::BadBackup)
    };
    let username = field("user")?;
    let salt = hex::decode(field("salt")?).map_err(|_| TrustError::BadBackup)?;
    let nonce: [u8; 12] = shared::peer::from_hex(&field("nonce")?).ok_or(TrustError::BadBackup)?;
    let mut data = hex::decode(field("key")?).map_err(|_| TrustError::BadBackup)?;
    let opening = aead_key(passphrase, &salt)?;
    let plain = opening
        .open_in_place(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(username.as_bytes()),
            &mut data,
        )
        .map_err(|_| TrustError::BadBackup)?;
    Ok((username, AccountKeyPair::from_pkcs8(plain)?))
}

fn aead_key(passphrase: &str, salt: &[u8]) -> Result<ring::aead::LessSafeKey, TrustError> {
    let mut key = [0u8; 32];
    argon2::Argon2::default()
        .hash_password_into(passphrase.as_bytes(), salt, &mut key)
        .map_err(|_| TrustError::BadBackup)?;
    let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &key).map_err(|_| TrustError::BadKey)?;
    Ok(ring::aead::LessSafeKey::new(unbound))
}

/// Identifies a pending link at the broker.
pub type LinkId = [u8; 5];

/// A link code: an id the broker learns, and a secret it never does, which proves to the offering device
/// that the device connecting to it is the one the user typed the code into.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkCode {
    pub id: LinkId,
    secret: [u8; 5],
}

impl std::fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkCode({})", hex::encode(self.id))
    }
}

/// Crockford's base32: no I, L, O or U, so that a code read aloud or typed survives.
const BASE32: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

impl LinkCode {
    pub fn generate() -> Result<Self, TrustError> {
        let mut bytes = [0u8; 10];
        SystemRandom::new().fill(&mut bytes).map_err(|_| TrustError::BadKey)?;
        Ok(Self::from_bytes(bytes))
    }

    fn from_bytes(b: [u8; 10]) -> Self {
        let mut id = [0; 5];
        let mut secret = [0; 5];
        id.copy_from_slice(&b[..5]);
        secret.copy_from_slice(&b[5..]);
        Self { id, secret }
    }

    /// `XXXX-XXXX-XXXX-XXXX`: 80 bits in 16 characters.
    pub fn text(&self) -> String {
        let n = self.id.iter().chain(&self.secret).fold(0u128, |n, b| (n << 8) | u128::from(*b));
        let chars: Vec<u8> = (0..16).rev().map(|i| BASE32[((n >> (5 * i)) & 31) as usize]).collect();
        chars.chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("-")
    }

    /// Reads what the user typed: case, dashes and spaces do not matter; O reads as 0, I and L as 1.
    pub fn parse(text: &str) -> Result<Self, TrustError> {
        let mut n = 0u128;
        let mut count = 0;
        for c in text.chars().filter(|c| !matches!(c, '-' | ' ')) {
            let c = match c.to_ascii_uppercase() {
                'O' => '0',
                'I' | 'L' => '1',
                c => c,
            };
            let v = BASE32.iter().position(|b| char::from(*b) == c).ok_or(TrustError::BadLinkCode)?;
            n = (n << 5) | v as u128;
            count += 1;
        }
        if count != 16 {
            return Err(TrustError::BadLinkCode);
        }
        let bytes: [u8; 10] = n.to_be_bytes()[6..].try_into().map_err(|_| TrustError::BadLinkCode)?;
        Ok(Self::from_bytes(bytes))
    }

    /// What the new device sends to prove it holds the code, bound to both devices' keys as each side sees
    /// them: a broker that put itself between the two would have to know the secret.
    pub fn proof(&self, offering: &[u8; 32], new: &[u8; 32]) -> [u8; 32] {
        self.mac(b"p2pim link proof v1\0", offering, new)
    }

    /// Checks a proof (in constant time).
    pub fn check_proof(&self, offering: &[u8; 32], new: &[u8; 32], proof: &[u8]) -> bool {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.secret);
        ring::hmac::verify(&key, &[b"p2pim link proof v1\0".as_slice(), offering, new].concat(), proof).is_ok()
    }

    /// Four words both devices show, for the user to compare before the new device is trusted.
    pub fn confirmation_words(&self, offering: &[u8; 32], new: &[u8; 32]) -> String {
        let m = self.mac(b"p2pim link words v1\0", offering, new);
        m.iter().take(4).map(|b| WORDS[usize::from(*b) % WORDS.len()]).collect::<Vec<_>>().join(" ")
    }

    fn mac(&self, label: &[u8], offering: &[u8; 32], new: &[u8; 32]) -> [u8; 32] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.secret);
        let tag = ring::hmac::sign(&key, &[label, offering, new].concat());
        let mut out = [0; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

/// 64 short, distinct, easily read words.
const WORDS: [&str; 64] = [
    "apple", "anchor", "badger", "bamboo", "beacon", "bridge", "cactus", "candle", "canyon", "cobalt", "comet",
    "copper", "daisy", "delta", "dragon", "ember", "falcon", "fern", "forest", "garnet", "glacier", "granite",
    "harbor", "hazel", "island", "ivory", "jasper", "jungle", "kettle", "lagoon", "lemon", "lotus", "maple", "marble",
    "meadow", "nectar", "nickel", "oasis", "orchid", "otter", "pepper", "pillow", "quartz", "quill", "raven", "ribbon",
    "saddle", "salmon", "silver", "spruce", "tango", "thistle", "tiger", "tulip", "umber", "velvet", "violet",
    "walnut", "willow", "yarrow", "zebra", "zenith", "coral", "onyx",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn record(user: &str, fp: [u8; 32]) -> DeviceRecord {
        DeviceRecord { username: user.into(), fingerprint: fp, name: "laptop".into(), created_at: 1 }
    }

    #[test]
    fn a_record_verifies_only_for_its_account_device_and_key() {
        let k = AccountKeyPair::generate().unwrap();
        let other = AccountKeyPair::generate().unwrap();
        let signed = k.sign(record("bob", [7; 32]));
        assert_eq!(check_record(&k.public(), "bob", &[7; 32], &signed), Ok(()));
        assert_eq!(check_record(&other.public(), "bob", &[7; 32], &signed), Err(TrustError::BadSignature));
        assert_eq!(check_record(&k.public(), "bob", &[8; 32], &signed), Err(TrustError::WrongDevice));
        assert_eq!(check_record(&k.public(), "eve", &[7; 32], &signed), Err(TrustError::WrongAccount("bob".into())));
        let mut tampered = signed.clone();
        tampered.body.fingerprint = [8; 32];
        assert_eq!(check_record(&k.public(), "bob", &[8; 32], &tampered), Err(TrustError::BadSignature));
        let mut short = signed;
        short.signature.truncate(10);
        assert_eq!(check_record(&k.public(), "bob", &[7; 32], &short), Err(TrustError::BadSignature));
    }

    #[test]
    fn safety_numbers_agree_on_both_sides_and_differ_for_other_keys() {
        let (a, b, c) = ([1; 32], [2; 32], [3; 32]);
        let n = safety_number(("alice", &a), ("bob", &b));
        assert_eq!(n, safety_number(("bob", &b), ("alice", &a)));
        assert_eq!(n.split(' ').count(), 12);
        assert!(n.split(' ').all(|g| g.len() == 5 && g.bytes().all(|d| d.is_ascii_digit())));
        assert_ne!(n, safety_number(("alice", &a), ("bob", &c)));
        assert_ne!(n, safety_number(("alice", &a), ("bobby", &b)));
    }

    #[test]
    fn a_backup_opens_only_with_its_passphrase() {
        let k = AccountKeyPair::generate().unwrap();
        let sealed = seal_backup(&k, "alice", "correct horse").unwrap();
        let (user, opened) = open_backup(&sealed, "correct horse").unwrap();
        assert_eq!((user.as_str(), opened.public()), ("alice", k.public()));
        assert_eq!(open_backup(&sealed, "wrong horse").unwrap_err(), TrustError::BadBackup);
        // The username is bound too.
        let renamed = sealed.replace("user alice", "user mallory");
        assert_eq!(open_backup(&renamed, "correct horse").unwrap_err(), TrustError::BadBackup);
        assert_eq!(open_backup("hello", "x").unwrap_err(), TrustError::NotABackup);
    }

    #[test]
    fn key_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("account.key");
        assert!(AccountKeyPair::load(&path).unwrap().is_none());
        let k = AccountKeyPair::generate().unwrap();
        k.save(&path).unwrap();
        assert_eq!(AccountKeyPair::load(&path).unwrap().unwrap().public(), k.public());
        std::fs::write(&path, b"junk").unwrap();
        assert!(AccountKeyPair::load(&path).is_err());
    }

    #[test]
    fn link_codes_read_back_forgivingly_and_prove_only_with_the_secret() {
        let code = LinkCode::generate().unwrap();
        let text = code.text();
        assert_eq!(text.len(), 19);
        assert_eq!(LinkCode::parse(&text).unwrap(), code);
        assert_eq!(LinkCode::parse(&text.to_lowercase().replace('-', " ")).unwrap(), code);
        assert_eq!(LinkCode::parse("ABCD").unwrap_err(), TrustError::BadLinkCode);
        assert_eq!(LinkCode::parse("UUUU-UUUU-UUUU-UUUU").unwrap_err(), TrustError::BadLinkCode);
        let (e, n) = ([1; 32], [2; 32]);
        let proof = code.proof(&e, &n);
        assert!(code.check_proof(&e, &n, &proof));
        assert!(!code.check_proof(&e, &[3; 32], &proof));
        let other = LinkCode::generate().unwrap();
        assert!(!other.check_proof(&e, &n, &proof));
        assert_eq!(code.confirmation_words(&e, &n).split(' ').count(), 4);
        assert_eq!(code.confirmation_words(&e, &n), code.confirmation_words(&e, &n));
    }
}
