//! The sealed mailbox: letters left for a device while it is offline, which the broker stores as opaque
//! blobs and cannot read. It serves devices' mailbox keys (certified by their account keys, which friends'
//! agents check, not this), takes letters from a user's friends and own devices within the operator's
//! limits, tells the recipient device when it is online, hands letters out oldest first, and deletes each
//! once the device says it stored it (or when it is older than the retention age).

use crate::devices::Caller;
use crate::error::RequestError;
use crate::friends::Friends;
use crate::ratelimit::Quota;
use crate::store::mailbox::{Deposited, LetterRow, Room};
use crate::store::{Db, now_ms};
use crate::table::Table;
use certs::Fingerprint;
use parking_lot::Mutex;
use shared::mailbox::{Deposit, MAX_LETTER, SignedMailboxKeys};
use shared::proto::{ErrorCode, Event};
use shared::trust::AccountKey;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, RequestError>;

/// What the operator allows.
#[derive(Debug, Clone, Copy)]
pub struct MailboxConfig {
    /// `false` (`--no-mailbox`): a pure rendezvous; senders keep what they cannot deliver.
    pub enabled: bool,
    /// Letters older than this are deleted unread.
    pub retention: Duration,
    /// Letters that may wait for one device.
    pub max_letters: i64,
    /// Bytes that may wait for one device.
    pub max_bytes: i64,
    /// Letters one user may deposit per minute.
    pub deposits_per_minute: u32,
}

/// Bytes of letters one pickup answer carries at most (under the frame limit with room for the rest).
const PICKUP_BYTES: usize = shared::MAX_FRAME - 8 * 1024;

pub struct Mailbox {
    db: Db,
    table: Arc<Table>,
    cfg: MailboxConfig,
    deposits: Mutex<Quota<String>>,
}

impl Mailbox {
    pub fn new(db: Db, table: Arc<Table>, cfg: MailboxConfig) -> Self {
        let deposits = Mutex::new(Quota::new(cfg.deposits_per_minute.max(1), Duration::from_secs(60)));
        Self { db, table, cfg, deposits }
    }

    fn enabled(&self) -> Result<()> {
        if !self.cfg.enabled {
            return Err(ErrorCode::MailboxOff.into());
        }
        Ok(())
    }

    /// Stores the caller's device's mailbox keys, signed by the account key.
    pub async fn publish(&self, me: &Caller<'_>, keys: SignedMailboxKeys) -> Result<()> {
        self.enabled()?;
        if keys.body.username != me.user || keys.body.fingerprint != me.device.0 {
            return Err(ErrorCode::BadSignature("the keys name another device".into()).into());
        }
        let Some(account) = self.db.account_key(me.user).await?.as_deref().and_then(shared::peer::from_hex::<32>)
        else {
            return Err(ErrorCode::UnknownDevice.into());
        };
        certs::account::verify(&account, &keys).map_err(|e| ErrorCode::BadSignature(e.to_string()))?;
        let bytes = shared::frame::encode_body(&keys).map_err(|e| ErrorCode::Malformed(e.to_string()))?;
        if self.db.publish_mailbox(me.user, &me.device.to_string(), &hex::encode(bytes)).await? {
            tracing::info!(user = me.user, device = %me.device, "mailbox keys published");
        }
        Ok(())
    }

    /// `user`'s account key and devices' mailbox keys, for the user themself or a friend.
    pub async fn mailboxes(
        &self,
        friends: &Friends,
        me: &str,
        user: &str,
    ) -> Result<(Option<AccountKey>, Vec<SignedMailboxKeys>)> {
        self.enabled()?;
        if me != user && !friends.are_friends(me, user).await? {
            return Err(ErrorCode::NotFriends.into());
        }
        let (key, rows) = self.db.mailboxes(user).await?;
        let keys = rows
            .iter()
            .filter_map(|r| hex::decode(r).ok())
            .filter_map(|b| shared::frame::decode_body::<SignedMailboxKeys>(&b).ok())
            .collect();
        Ok((key.as_deref().and_then(shared::peer::from_hex), keys))
    }

    /// Leaves a letter for one of `user`'s devices (the caller's own, or a friend's, checked under the
    /// pair's lock so that no removal lands between the check and the letter), and tells the device.
    pub async fn deposit(
        &self,
        friends: &Friends,
        me: &str,
        user: &str,
        device: [u8; 32],
        blob: Vec<u8>,
    ) -> Result<()> {
        self.enabled()?;
        if blob.len() > MAX_LETTER {
            return Err(ErrorCode::Malformed(format!("a letter is at most {MAX_LETTER} bytes")).into());
        }
        self.deposits
            .lock()
            .take(&me.to_string(), Instant::now())
            .map_err(|retry_after_secs| ErrorCode::RateLimited { retry_after_secs })?;
        let room = Room { count: self.cfg.max_letters, bytes: self.cfg.max_bytes };
        let fp = Fingerprint(device);
        let store = async { Ok(self.db.deposit(user, &fp.to_string(), me, &blob, room, now_ms()).await?) };
        let stored = if me == user { store.await? } else { friends.while_friends(me, user, store).await? };
        match stored {
            Deposited::Stored => {}
            Deposited::NoDevice => return Err(ErrorCode::UnknownDevice.into()),
            Deposited::Full { count, bytes } => {
                return Err(ErrorCode::MailboxFull(format!(
                    "{count} letters, {} KiB waiting for that device",
                    bytes / 1024
                ))
                .into());
            }
        }
        for row in self.table.sessions(user).iter().filter(|r| r.fingerprint == fp) {
            self.table.push_to(user, row.session_id, &Event::MailWaiting);
        }
        Ok(())
    }

    /// Letters waiting for the caller's device after `after`, oldest first, as many as fit one answer.
    pub async fn pickup(&self, me: &Caller<'_>, after: i64, limit: u32) -> Result<Vec<Deposit>> {
        let rows = self.db.pickup(&me.device.to_string(), after, i64::from(limit.clamp(1, 1000))).await?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for LetterRow { id, sender, letter, at } in rows {
            bytes += letter.len() + 64;
            if !out.is_empty() && bytes > PICKUP_BYTES {
                break;
            }
            out.push(Deposit { id, from: sender, blob: letter, at });
        }
        Ok(out)
    }

    /// The caller's device stored these letters: they go.
    pub async fn ack(&self, me: &Caller<'_>, ids: &[i64]) -> Result<()> {
        self.db.ack(&me.device.to_string(), ids).await?;
        Ok(())
    }

    /// Deletes letters older than the retention age; returns how many went.
    pub async fn prune_old(&self) -> Result<u64> {
        let cutoff = now_ms() - self.cfg.retention.as_millis() as i64;
        let gone = self.db.prune_deposits(cutoff).await?;
        let (count, bytes) = self.db.mailbox_usage().await?;
        tracing::info!(pruned = gone, waiting = count, bytes, "mailbox");
        Ok(gone)
    }
}
