//! Account keys and devices: storing the records an account key signed, serving them with lookups,
//! revoking devices, resetting the key, and the rendezvous that links a new device to an existing one.
//!
//! The broker checks signatures only to keep junk out of its database; nobody relies on that check. Friends'
//! agents check every record against the account key they pinned, so a broker that lies about a device (a
//! record it edited, a key of its own) is refused by them, never believed.

use crate::accounts::{Accounts, Issued};
use crate::error::RequestError;
use crate::friends::Friends;
use crate::store::devices::{Certified, DeviceRow};
use crate::store::{Db, now_ms};
use crate::table::{Row, Table};
use certs::Fingerprint;
use certs::account::{self, LinkId};
use parking_lot::Mutex;
use shared::peer::from_hex;
use shared::proto::{DeviceEndpoint, ErrorCode, Event};
use shared::trust::{AccountKey, CertifiedDevice, Located, OwnDevice, SignedRecord, SignedRevocation};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, RequestError>;

/// How long a link code can be claimed, and then confirmed.
pub const LINK_TTL: Duration = Duration::from_secs(300);
/// Link codes one user may have open at once.
const LINKS_PER_USER: usize = 3;
/// Link codes open on the whole broker at once.
const MAX_LINKS: usize = 10_000;

/// A link code waiting to be claimed, or claimed and waiting for its user's confirmation.
struct Link {
    user: String,
    session_id: u64,
    expires: Instant,
    /// The device that claimed it.
    claimed: Option<[u8; 32]>,
}

/// Open link codes: who may claim one, and who may turn a claim into a token (pure; time passed in).
#[derive(Default)]
struct Links(HashMap<LinkId, Link>);

impl Links {
    /// Opens `id` for `user`'s session; expired codes are dropped on the way.
    fn offer(&mut self, id: LinkId, user: &str, session_id: u64, now: Instant) -> std::result::Result<(), ErrorCode> {
        self.0.retain(|_, l| l.expires > now);
        if self.0.len() >= MAX_LINKS || self.0.values().filter(|l| l.user == user).count() >= LINKS_PER_USER {
            return Err(ErrorCode::RateLimited { retry_after_secs: LINK_TTL.as_secs() });
        }
        if self.0.contains_key(&id) {
            return Err(ErrorCode::Busy);
        }
        self.0.insert(id, Link { user: user.to_string(), session_id, expires: now + LINK_TTL, claimed: None });
        Ok(())
    }

    /// A device claims `id`: whose code it is (user and session). Once only, and only before it expires.
    fn claim(&mut self, id: LinkId, device: [u8; 32], now: Instant) -> std::result::Result<(String, u64), ErrorCode> {
        let link =
            self.0.get_mut(&id).filter(|l| l.expires > now && l.claimed.is_none()).ok_or(ErrorCode::UnknownLink)?;
        link.claimed = Some(device);
        Ok((link.user.clone(), link.session_id))
    }

    /// The device that claimed `id`, for the session that offered it; the code is used up.
    fn take_claimed(
        &mut self,
        id: LinkId,
        user: &str,
        session_id: u64,
        now: Instant,
    ) -> std::result::Result<[u8; 32], ErrorCode> {
        match self.0.get(&id) {
            Some(l) if l.user == user && l.session_id == session_id && l.expires > now => {
                let device = l.claimed.ok_or(ErrorCode::UnknownLink)?;
                self.0.remove(&id);
                Ok(device)
            }
            _ => Err(ErrorCode::UnknownLink),
        }
    }

    fn forget(&mut self, id: &LinkId) {
        self.0.remove(id);
    }
}

pub struct Devices {
    db: Db,
    table: Arc<Table>,
    accounts: Arc<Accounts>,
    links: Mutex<Links>,
}

/// Who is asking: the session's user, row and device.
pub struct Caller<'a> {
    pub user: &'a str,
    pub session_id: u64,
    pub device: Fingerprint,
    pub from: IpAddr,
}

impl Devices {
    pub fn new(db: Db, table: Arc<Table>, accounts: Arc<Accounts>) -> Self {
        Self { db, table, accounts, links: Mutex::default() }
    }

    /// Stores a record signed by the account key (see `Request::Certify`): the device's own, a renamed one,
    /// or a device being linked (signed by the device that links it).
    pub async fn certify(
        &self,
        friends: &Friends,
        me: &Caller<'_>,
        key: AccountKey,
        record: SignedRecord,
    ) -> Result<()> {
        let fp = record.body.fingerprint;
        account::check_record(&key, me.user, &fp, &record).map_err(|e| ErrorCode::BadSignature(e.to_string()))?;
        let stored = self
            .db
            .certify(me.user, &hex::encode(key), &hex::encode(fp), &hex::encode(record_bytes(&record)?), now_ms())
            .await?;
        match stored {
            Certified::Stored { first_key, changed } => {
                if first_key {
                    tracing::info!(user = me.user, key = hex::encode(key), "account key set by its first device");
                }
                if changed && fp == me.device.0 {
                    // Friends' agents that looked this device up since it came online found no record (or an
                    // old one) and refused it: told again, they look again and deliver what they queued.
                    let told = friends.usernames(me.user).await?;
                    let since = self.table.presence(me.user).since.unwrap_or_else(now_ms);
                    friends.announce_presence(&told, me.user, true, since);
                }
                Ok(())
            }
            Certified::OtherKey => Err(ErrorCode::AccountKeyMismatch.into()),
            Certified::Revoked => {
                tracing::warn!(user = me.user, device = %Fingerprint(fp), "a revoked device tried to certify itself");
                Err(ErrorCode::DeviceRevoked.into())
            }
        }
    }

    /// `friend`'s account key and online devices with their records, for a friend only; each of the friend's
    /// devices is told to expect the caller's: with its record (`PeerCalling`) if that device published a
    /// record itself (an agent that checks them), else as before (`PeerIncoming`). Checked and pushed under
    /// the pair's lock, as `Friends::lookup`.
    pub async fn locate(&self, friends: &Friends, me: &Caller<'_>, friend: &str) -> Result<Located> {
        let answer = async {
            let (key, rows) = self.db.devices(friend).await?;
            let devices: Vec<CertifiedDevice> = self
                .table
                .sessions(friend)
                .iter()
                .map(|r| CertifiedDevice { endpoint: endpoint(r), record: record_of(&rows, &r.fingerprint) })
                .collect();
            if let Some(mine) = self.table.session(me.user, me.session_id) {
                let (my_key, my_record) = self.db.key_and_record(me.user, &mine.fingerprint.to_string()).await?;
                let device =
                    CertifiedDevice { endpoint: endpoint(&mine), record: my_record.as_deref().and_then(decode_record) };
                let calling = Event::PeerCalling {
                    username: me.user.to_string(),
                    account_key: my_key.as_deref().and_then(from_hex),
                    device: device.clone(),
                };
                let incoming = Event::PeerIncoming { username: me.user.to_string(), device: device.endpoint };
                let checks_records =
                    |fp: &Fingerprint| devices.iter().any(|d| d.endpoint.fingerprint == fp.0 && d.record.is_some());
                self.table.push_split(friend, &calling, &incoming, checks_records);
            }
            Ok(Located { account_key: key.as_deref().and_then(from_hex), devices })
        };
        friends.while_friends(me.user, friend, answer).await
    }

    /// The caller's account key and devices.
    pub async fn list(&self, me: &str) -> Result<(Option<AccountKey>, Vec<OwnDevice>)> {
        let (key, rows) = self.db.devices(me).await?;
        let online = self.table.sessions(me);
        let devices = rows
            .iter()
            .filter_map(|r| {
                let record = decode_record(&r.record)?;
                let is_online = online.iter().any(|s| s.fingerprint.0 == record.body.fingerprint);
                Some(OwnDevice { record, online: is_online, last_seen: if is_online { None } else { r.last_seen } })
            })
            .collect();
        Ok((key.as_deref().and_then(from_hex), devices))
    }

    /// Cuts a device off: its record, tokens and sessions end now, and the user's friends and other devices
    /// are told (with the signed revocation, which their agents check and keep).
    pub async fn revoke(&self, friends: &Friends, me: &str, revocation: SignedRevocation) -> Result<()> {
        let Some(key) = self.db.account_key(me).await?.as_deref().and_then(from_hex) else {
            return Err(ErrorCode::UnknownDevice.into());
        };
        if revocation.body.username != me {
            return Err(ErrorCode::BadSignature("the revocation names another account".into()).into());
        }
        account::verify(&key, &revocation).map_err(|e| ErrorCode::BadSignature(e.to_string()))?;
        let fp = Fingerprint(revocation.body.fingerprint);
        if !self
            .db
            .revoke_device(
                me,
                &fp.to_string(),
                &hex::encode(shared::frame::encode_body(&revocation).map_err(|e| ErrorCode::Malformed(e.to_string()))?),
                now_ms(),
            )
            .await?
        {
            return Err(ErrorCode::UnknownDevice.into());
        }
        self.table.close_device(me, &fp, &Event::SessionRevoked);
        let event = Event::DeviceRevoked { username: me.to_string(), revocation };
        let mut told = friends.usernames(me).await?;
        told.push(me.to_string());
        self.table.push_many(told.iter().map(String::as_str), &event);
        tracing::info!(user = me, device = %fp, "device revoked");
        Ok(())
    }

    /// Replaces a lost account key (the password is checked again). The caller's device is the only one
    /// left; friends are told the key changed, and their agents hold messages until their users accept it.
    pub async fn reset_key(
        &self,
        friends: &Friends,
        me: &Caller<'_>,
        password: &str,
        key: AccountKey,
        record: SignedRecord,
    ) -> Result<()> {
        self.accounts.check_password(me.user, password, me.from, me.device.0).await?;
        account::check_record(&key, me.user, &me.device.0, &record)
            .map_err(|e| ErrorCode::BadSignature(e.to_string()))?;
        self.db
            .reset_account_key(
                me.user,
                &hex::encode(key),
                &me.device.to_string(),
                &hex::encode(record_bytes(&record)?),
                now_ms(),
            )
            .await?;
        self.table.close_others(me.user, me.session_id, &Event::SessionRevoked);
        let told = friends.usernames(me.user).await?;
        self.table
            .push_many(told.iter().map(String::as_str), &Event::AccountKeyChanged { username: me.user.to_string() });
        tracing::warn!(user = me.user, key = hex::encode(key), "account key reset with the password");
        Ok(())
    }

    /// Opens a link code for the caller's session.
    pub fn offer(&self, me: &Caller<'_>, id: LinkId) -> Result<()> {
        Ok(self.links.lock().offer(id, me.user, me.session_id, Instant::now())?)
    }

    /// A new device claims a code: it learns whose it is and where the offering device is; that device is
    /// told who claimed it. A code is claimed once; a wrong guess costs its owner nothing but a new code.
    pub fn claim(
        &self,
        id: LinkId,
        device: Fingerprint,
        observed: SocketAddr,
        local: Vec<SocketAddr>,
    ) -> Result<(String, DeviceEndpoint)> {
        let (user, session_id) = self.links.lock().claim(id, device.0, Instant::now())?;
        let Some(offering) = self.table.session(&user, session_id) else {
            self.links.lock().forget(&id);
            return Err(ErrorCode::UnknownLink.into());
        };
        let claimant = DeviceEndpoint { fingerprint: device.0, observed, local };
        self.table.push_to(&user, session_id, &Event::LinkClaimed { link_id: id, device: claimant });
        tracing::info!(user, device = %device, "link code claimed");
        Ok((user, endpoint(&offering)))
    }

    /// The claimed device's token, for the offering session once its user confirmed. Used up by this.
    pub async fn link_token(&self, me: &Caller<'_>, id: LinkId) -> Result<Issued> {
        let claimed = self.links.lock().take_claimed(id, me.user, me.session_id, Instant::now())?;
        tracing::info!(user = me.user, device = %Fingerprint(claimed), "token issued to a linked device");
        self.accounts.issue(me.user, claimed).await
    }

    /// Remembers when a device's session ended.
    pub async fn seen(&self, user: &str, device: &Fingerprint, at: i64) {
        if let Err(e) = self.db.device_seen(user, &device.to_string(), at).await {
            tracing::warn!(error = %e, "could not record when a device was last seen");
        }
    }
}

fn endpoint(r: &Row) -> DeviceEndpoint {
    DeviceEndpoint { fingerprint: r.fingerprint.0, observed: r.observed, local: r.local.clone() }
}

fn record_of(rows: &[DeviceRow], fp: &Fingerprint) -> Option<SignedRecord> {
    let hex = fp.to_string();
    rows.iter().find(|r| r.fingerprint == hex).and_then(|r| decode_record(&r.record))
}

/// A record as stored (the body of its frame).
fn record_bytes(record: &SignedRecord) -> Result<Vec<u8>> {
    Ok(shared::frame::encode_body(record).map_err(|e| ErrorCode::Malformed(e.to_string()))?)
}

/// A stored record; one that does not decode is served as none (and the friend's agent refuses the device).
fn decode_record(hex_text: &str) -> Option<SignedRecord> {
    shared::frame::decode_body(&hex::decode(hex_text).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_code_is_claimed_once_before_it_expires_and_only_its_session_gets_the_token() {
        let t0 = Instant::now();
        let mut links = Links::default();
        links.offer([1; 5], "bob", 7, t0).unwrap();
        assert_eq!(links.offer([1; 5], "carol", 8, t0), Err(ErrorCode::Busy), "ids are not shared");
        // Not claimed yet: no token for anyone.
        assert_eq!(links.take_claimed([1; 5], "bob", 7, t0), Err(ErrorCode::UnknownLink));
        assert_eq!(links.claim([1; 5], [9; 32], t0), Ok(("bob".to_string(), 7)));
        assert_eq!(links.claim([1; 5], [8; 32], t0), Err(ErrorCode::UnknownLink), "a replayed claim");
        assert_eq!(links.claim([2; 5], [8; 32], t0), Err(ErrorCode::UnknownLink), "a made-up code");
        // Another user, or another session of the same user, cannot turn bob's claim into a token.
        assert_eq!(links.take_claimed([1; 5], "mallory", 7, t0), Err(ErrorCode::UnknownLink));
        assert_eq!(links.take_claimed([1; 5], "bob", 8, t0), Err(ErrorCode::UnknownLink));
        assert_eq!(links.take_claimed([1; 5], "bob", 7, t0), Ok([9; 32]));
        assert_eq!(links.take_claimed([1; 5], "bob", 7, t0), Err(ErrorCode::UnknownLink), "used up");

        // Expiry: an old code can be neither claimed nor confirmed.
        links.offer([3; 5], "bob", 7, t0).unwrap();
        let late = t0 + LINK_TTL;
        assert_eq!(links.claim([3; 5], [9; 32], late), Err(ErrorCode::UnknownLink));
        links.offer([4; 5], "bob", 7, t0).unwrap();
        links.claim([4; 5], [9; 32], t0).unwrap();
        assert_eq!(links.take_claimed([4; 5], "bob", 7, late), Err(ErrorCode::UnknownLink));
    }

    #[test]
    fn link_codes_per_user_are_capped() {
        let t0 = Instant::now();
        let mut links = Links::default();
        for i in 0..LINKS_PER_USER as u8 {
            links.offer([i; 5], "bob", 1, t0).unwrap();
        }
        assert!(matches!(links.offer([99; 5], "bob", 1, t0), Err(ErrorCode::RateLimited { .. })));
        links.offer([98; 5], "carol", 2, t0).unwrap();
        // Expired ones make room again.
        links.offer([97; 5], "bob", 1, t0 + LINK_TTL).unwrap();
    }
}
