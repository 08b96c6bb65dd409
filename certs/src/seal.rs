//! Sealing letters to a device's mailbox key: HPKE (RFC 9180) in base mode with DHKEM(X25519,
//! HKDF-SHA256), HKDF-SHA256 and ChaCha20-Poly1305, single-shot, and the device's keys that go with it.
//!
//! HPKE is built here from ring's HMAC and AEAD and x25519-dalek's static Diffie-Hellman (ring has no
//! static X25519 key, which the recipient needs); the RFC's own test vector checks every step. Each letter
//! gets a fresh ephemeral key, so one letter's key says nothing about another's. The sender is not
//! authenticated by HPKE: the letter inside is signed with the sending device's Ed25519 mailbox key, which
//! its account key certified ([`shared::mailbox::MailboxKeys`]).

use crate::secret_file;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use shared::mailbox::{Letter, MailboxKeys, SignedLetter};
use shared::trust::Signed;
use std::path::Path;
use x25519_dalek::{PublicKey, StaticSecret};

/// Why a letter could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the letter is too short to be sealed")]
    Short,
    #[error("the letter does not open with this device's key (damaged, or sealed to another device)")]
    Open,
    #[error("the recipient's key is not usable")]
    BadKey,
    #[error("the letter inside does not decode: {0}")]
    Decode(String),
    #[error("no randomness available")]
    Random,
    #[error("mailbox key file is damaged")]
    BadKeyFile,
}

const KEM_SUITE: &[u8] = b"KEM\x00\x20";
const HPKE_SUITE: &[u8] = b"HPKE\x00\x20\x00\x01\x00\x03";
/// HPKE's `info`, before the recipient device's fingerprint: a letter opens only for the device it names.
const INFO: &[u8] = b"p2pim mailbox v1\0";
/// The encapsulated key (X25519 public) in front of the ciphertext.
const ENC_LEN: usize = 32;
const TAG_LEN: usize = 16;

fn labeled_extract(suite: &[u8], salt: &[u8], label: &[u8], ikm: &[u8]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, salt);
    let mut ctx = hmac::Context::with_key(&key);
    for part in [b"HPKE-v1", suite, label, ikm] {
        ctx.update(part);
    }
    let mut out = [0; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// LabeledExpand for outputs of at most one hash length (all HPKE needs here).
fn labeled_expand<const L: usize>(suite: &[u8], prk: &[u8; 32], label: &[u8], info: &[u8]) -> [u8; L] {
    const { assert!(L <= 32) };
    let key = hmac::Key::new(hmac::HMAC_SHA256, prk);
    let mut ctx = hmac::Context::with_key(&key);
    for part in [&(L as u16).to_be_bytes()[..], b"HPKE-v1", suite, label, info, &[1]] {
        ctx.update(part);
    }
    let mut out = [0; L];
    out.copy_from_slice(&ctx.sign().as_ref()[..L]);
    out
}

/// DHKEM's shared secret from the Diffie-Hellman output and both public keys.
fn kem_shared(dh: &[u8; 32], enc: &[u8; 32], pk_r: &[u8; 32]) -> [u8; 32] {
    let eae_prk = labeled_extract(KEM_SUITE, b"", b"eae_prk", dh);
    let context = [&enc[..], &pk_r[..]].concat();
    labeled_expand::<32>(KEM_SUITE, &eae_prk, b"shared_secret", &context)
}

/// The base mode's key schedule: the AEAD key and nonce (single-shot: sequence 0, so the base nonce).
fn key_schedule(shared: &[u8; 32], info: &[u8]) -> ([u8; 32], [u8; 12]) {
    let psk_id_hash = labeled_extract(HPKE_SUITE, b"", b"psk_id_hash", b"");
    let info_hash = labeled_extract(HPKE_SUITE, b"", b"info_hash", info);
    let context = [&[0u8][..], &psk_id_hash, &info_hash].concat();
    let secret = labeled_extract(HPKE_SUITE, shared, b"secret", b"");
    (
        labeled_expand::<32>(HPKE_SUITE, &secret, b"key", &context),
        labeled_expand::<12>(HPKE_SUITE, &secret, b"base_nonce", &context),
    )
}

fn aead(key: &[u8; 32]) -> Result<LessSafeKey, SealError> {
    Ok(LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).map_err(|_| SealError::BadKey)?))
}

/// Diffie-Hellman that refuses an all-zero output (a small-order public key), as RFC 9180 requires.
fn dh(secret: &StaticSecret, public: &[u8; 32]) -> Result<[u8; 32], SealError> {
    let out = secret.diffie_hellman(&PublicKey::from(*public));
    if !out.was_contributory() {
        return Err(SealError::BadKey);
    }
    Ok(out.to_bytes())
}

/// HPKE single-shot seal with a given ephemeral secret: `enc || ciphertext`.
fn seal_with(eph: &StaticSecret, pk_r: &[u8; 32], info: &[u8], aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
    let enc = PublicKey::from(eph).to_bytes();
    let shared = kem_shared(&dh(eph, pk_r)?, &enc, pk_r);
    let (key, nonce) = key_schedule(&shared, info);
    let mut out = Vec::with_capacity(ENC_LEN + plain.len() + TAG_LEN);
    out.extend_from_slice(&enc);
    let mut body = plain.to_vec();
    aead(&key)?
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut body)
        .map_err(|_| SealError::BadKey)?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// HPKE single-shot seal to `pk_r` with a fresh ephemeral key.
pub fn seal(pk_r: &[u8; 32], info: &[u8], aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
    let mut seed = [0u8; 32];
    SystemRandom::new().fill(&mut seed).map_err(|_| SealError::Random)?;
    seal_with(&StaticSecret::from(seed), pk_r, info, aad, plain)
}

/// HPKE single-shot open with the recipient's secret.
pub fn open(sk_r: &StaticSecret, info: &[u8], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    if sealed.len() < ENC_LEN + TAG_LEN {
        return Err(SealError::Short);
    }
    let (enc, ct) = sealed.split_at(ENC_LEN);
    let mut enc_key = [0; 32];
    enc_key.copy_from_slice(enc);
    let pk_r = PublicKey::from(sk_r).to_bytes();
    let shared = kem_shared(&dh(sk_r, &enc_key).map_err(|_| SealError::Open)?, &enc_key, &pk_r);
    let (key, nonce) = key_schedule(&shared, info);
    let mut body = ct.to_vec();
    let plain = aead(&key)?
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut body)
        .map_err(|_| SealError::Open)?;
    let len = plain.len();
    body.truncate(len);
    Ok(body)
}

fn info_for(device: &[u8; 32]) -> Vec<u8> {
    [INFO, &device[..]].concat()
}

/// A device's mailbox keys: the X25519 secret letters to it are sealed to, and the Ed25519 key it signs
/// its letters with. Kept in one file (0600) beside the device's identity; never sent anywhere.
pub struct MailboxKeyPair {
    seal: StaticSecret,
    sign: Ed25519KeyPair,
    seed: [u8; 32],
}

impl std::fmt::Debug for MailboxKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MailboxKeyPair({})", hex::encode(self.seal_key()))
    }
}

impl MailboxKeyPair {
    pub fn generate() -> Result<Self, SealError> {
        let mut bytes = [0u8; 64];
        SystemRandom::new().fill(&mut bytes).map_err(|_| SealError::Random)?;
        Self::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let (x, ed) = bytes.split_at_checked(32).ok_or(SealError::BadKeyFile)?;
        let mut secret = [0; 32];
        secret.copy_from_slice(x);
        let seed: [u8; 32] = ed.try_into().map_err(|_| SealError::BadKeyFile)?;
        let sign = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| SealError::BadKeyFile)?;
        Ok(Self { seal: StaticSecret::from(secret), sign, seed })
    }

    /// Reads the key file, or makes one (0600) if there is none.
    pub fn load_or_create(path: &Path) -> Result<Self, crate::Error> {
        match std::fs::read(path) {
            Ok(bytes) => {
                Self::from_bytes(&bytes).map_err(|_| crate::Error::Pem { path: path.into(), what: "mailbox key" })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let keys =
                    Self::generate().map_err(|_| crate::Error::Pem { path: path.into(), what: "mailbox key" })?;
                let bytes = [keys.seal.to_bytes(), keys.seed].concat();
                secret_file::write(path, &bytes).map_err(|source| crate::Error::File { path: path.into(), source })?;
                Ok(keys)
            }
            Err(source) => Err(crate::Error::File { path: path.into(), source }),
        }
    }

    /// The X25519 public key letters to this device are sealed to.
    pub fn seal_key(&self) -> [u8; 32] {
        PublicKey::from(&self.seal).to_bytes()
    }

    /// The Ed25519 public key this device's letters verify under.
    pub fn verify_key(&self) -> [u8; 32] {
        let mut out = [0; 32];
        out.copy_from_slice(self.sign.public_key().as_ref());
        out
    }

    /// Signs a letter and seals it to the recipient device's keys (which the caller checked against the
    /// recipient's pinned account key).
    pub fn seal_letter(&self, letter: Letter, to: &MailboxKeys) -> Result<Vec<u8>, SealError> {
        let bytes = shared::trust::signed_bytes(&letter);
        let signed = Signed { body: letter, signature: self.sign.sign(&bytes).as_ref().to_vec() };
        let plain = shared::frame::encode_body(&signed).map_err(|e| SealError::Decode(e.to_string()))?;
        seal(&to.seal_key, &info_for(&to.fingerprint), b"", &plain)
    }

    /// Opens a letter sealed to this device (`me`: its fingerprint). The signature inside is not checked
    /// here: that needs the sender's certified keys ([`check_letter`]).
    pub fn open_letter(&self, me: &[u8; 32], blob: &[u8]) -> Result<SignedLetter, SealError> {
        let plain = open(&self.seal, &info_for(me), b"", blob)?;
        shared::frame::decode_body(&plain).map_err(|e| SealError::Decode(e.to_string()))
    }
}

/// Checks a letter against its sender device's certified keys: signed by that device, and addressed to
/// `me` (user and device), so that a letter cannot be replayed to another device or passed off as another
/// device's.
pub fn check_letter(letter: &SignedLetter, sender: &MailboxKeys, me: (&str, &[u8; 32])) -> Result<(), LetterError> {
    let body = &letter.body;
    if body.from != sender.username || body.from_device != sender.fingerprint {
        return Err(LetterError::NotTheSender);
    }
    if body.to != me.0 || body.to_device != *me.1 {
        return Err(LetterError::NotForMe);
    }
    crate::account::verify(&sender.verify_key, letter).map_err(|_| LetterError::BadSignature)
}

/// Why an opened letter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LetterError {
    #[error("the letter names another sender than the device that signed it")]
    NotTheSender,
    #[error("the letter is addressed to another device")]
    NotForMe,
    #[error("the letter's signature does not verify under its sender's mailbox key")]
    BadSignature,
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::mailbox::LetterBody;

    fn unhex<const N: usize>(s: &str) -> [u8; N] {
        hex::decode(s).expect("hex").try_into().expect("length")
    }

    /// RFC 9180, appendix A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305, base mode.
    #[test]
    fn rfc9180_test_vector() {
        let sk_e: [u8; 32] = unhex("f4ec9b33b792c372c1d2c2063507b684ef925b8c75a42dbcbf57d63ccd381600");
        let pk_e: [u8; 32] = unhex("1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a");
        let sk_r: [u8; 32] = unhex("8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb");
        let pk_r: [u8; 32] = unhex("4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a");
        let info = hex::decode("4f6465206f6e2061204772656369616e2055726e").expect("hex");
        let aad = hex::decode("436f756e742d30").expect("hex");
        let pt = hex::decode("4265617574792069732074727574682c20747275746820626561757479").expect("hex");
        let ct =
            hex::decode("1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28")
                .expect("hex");

        let eph = StaticSecret::from(sk_e);
        assert_eq!(PublicKey::from(&eph).to_bytes(), pk_e);
        let shared = kem_shared(&dh(&eph, &pk_r).expect("dh"), &pk_e, &pk_r);
        assert_eq!(shared, unhex::<32>("0bbe78490412b4bbea4812666f7916932b828bba79942424abb65244930d69a7"));
        let (key, nonce) = key_schedule(&shared, &info);
        assert_eq!(key, unhex::<32>("ad2744de8e17f4ebba575b3f5f5a8fa1f69c2a07f6e7500bc60ca6e3e3ec1c91"));
        assert_eq!(nonce, unhex::<12>("5c4d98150661b848853b547f"));

        let sealed = seal_with(&eph, &pk_r, &info, &aad, &pt).expect("seal");
        assert_eq!(&sealed[..32], &pk_e);
        assert_eq!(&sealed[32..], &ct[..]);
        assert_eq!(open(&StaticSecret::from(sk_r), &info, &aad, &sealed).expect("open"), pt);
    }

    #[test]
    fn tampering_or_the_wrong_key_does_not_open() {
        let r = StaticSecret::from([7; 32]);
        let pk = PublicKey::from(&r).to_bytes();
        let sealed = seal(&pk, b"info", b"", b"hello").expect("seal");
        assert_eq!(open(&r, b"info", b"", &sealed).expect("open"), b"hello");
        for i in [0, 31, 32, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(open(&r, b"info", b"", &bad).is_err(), "byte {i}");
        }
        assert_eq!(open(&r, b"other", b"", &sealed), Err(SealError::Open));
        assert_eq!(open(&StaticSecret::from([8; 32]), b"info", b"", &sealed), Err(SealError::Open));
        assert_eq!(open(&r, b"info", b"", &sealed[..20]), Err(SealError::Short));
        // A small-order point as the recipient's key is refused rather than sealing to a known secret.
        assert_eq!(seal(&[0; 32], b"info", b"", b"x"), Err(SealError::BadKey));
    }

    #[test]
    fn letters_open_only_for_their_device_and_check_their_sender() {
        let dir = tempfile::tempdir().expect("dir");
        let alice = MailboxKeyPair::load_or_create(&dir.path().join("a")).expect("alice");
        let again = MailboxKeyPair::load_or_create(&dir.path().join("a")).expect("reload");
        assert_eq!(again.seal_key(), alice.seal_key());
        assert_eq!(again.verify_key(), alice.verify_key());
        let bob = MailboxKeyPair::generate().expect("bob");
        let keys = |who: &MailboxKeyPair, user: &str, fp: u8| MailboxKeys {
            username: user.into(),
            fingerprint: [fp; 32],
            seal_key: who.seal_key(),
            verify_key: who.verify_key(),
            created_at: 1,
        };
        let (to_bob, from_alice) = (keys(&bob, "bob", 2), keys(&alice, "alice", 1));
        let letter = Letter {
            from: "alice".into(),
            from_device: [1; 32],
            to: "bob".into(),
            to_device: [2; 32],
            written_at: 3,
            body: LetterBody::Delivered(vec![]),
        };
        let blob = alice.seal_letter(letter.clone(), &to_bob).expect("seal");
        let opened = bob.open_letter(&[2; 32], &blob).expect("open");
        assert_eq!(opened.body, letter);
        assert_eq!(check_letter(&opened, &from_alice, ("bob", &[2; 32])), Ok(()));
        assert_eq!(check_letter(&opened, &from_alice, ("bob", &[3; 32])), Err(LetterError::NotForMe));
        assert_eq!(check_letter(&opened, &keys(&bob, "alice", 1), ("bob", &[2; 32])), Err(LetterError::BadSignature));
        assert_eq!(check_letter(&opened, &keys(&alice, "carol", 1), ("bob", &[2; 32])), Err(LetterError::NotTheSender));
        // Sealed to bob's key for his device 2: his other device (another fingerprint) cannot open it.
        assert_eq!(bob.open_letter(&[3; 32], &blob).map(|_| ()), Err(SealError::Open));
        assert!(alice.open_letter(&[2; 32], &blob).is_err());
    }
}
