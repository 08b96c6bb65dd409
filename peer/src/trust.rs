//! Friends' account keys as this device pinned them (`friend_keys`), the device keys their revocations cut
//! off (`revoked_keys`), and the shell that applies `core::trust` to what the broker serves: every lookup
//! answer and every announced caller passes through [`Trust`] before a single device key is accepted.

use crate::core::trust::{self, KeySeen, Pin};
use crate::db::Db;
use anyhow::Result;
use parking_lot::Mutex;
use shared::proto::DeviceEndpoint;
use shared::trust::{AccountKey, CertifiedDevice, Located, SignedRevocation};
use std::collections::{HashMap, HashSet};

/// What a lookup of a friend came to.
#[derive(Debug)]
pub(crate) enum Admitted {
    /// The devices to use (empty: none online that verify).
    Devices(Vec<DeviceEndpoint>),
    /// Nothing goes to this friend until the user accepts their new key. `first`: the change was seen
    /// just now (tell the user).
    Held { why: String, first: bool },
}

/// What a lookup or a caller's key comes to (see [`Trust::check_key`]).
enum KeyUse {
    /// Check records against this key (the pin, or a key pinned just now).
    Check(AccountKey),
    /// Another key than the pin, seen just now: tell the user, hold.
    ChangedNow,
    /// A change the user has not accepted yet: hold.
    Held,
    /// The account has no key: no device can be checked, none is accepted.
    NoKey,
}

/// The pins, in memory and in the database.
pub(crate) struct Trust {
    db: Db,
    pins: Mutex<HashMap<String, Pin>>,
    revoked: Mutex<HashMap<String, HashSet<[u8; 32]>>>,
}

#[derive(sqlx::FromRow)]
struct PinRow {
    username: String,
    account_key: String,
    verified: bool,
    new_key: Option<String>,
}

impl Trust {
    /// Reads every pin and revocation.
    pub(crate) async fn load(db: Db) -> Result<Self> {
        let rows: Vec<PinRow> = sqlx::query_as("SELECT username, account_key, verified, new_key FROM friend_keys")
            .fetch_all(&mut *db.lock().await)
            .await?;
        let mut pins = HashMap::new();
        for r in rows {
            let Some(key) = shared::peer::from_hex(&r.account_key) else {
                tracing::warn!(friend = r.username, "a pinned key in the database does not decode; ignored");
                continue;
            };
            pins.insert(
                r.username,
                Pin { key, verified: r.verified, new_key: r.new_key.as_deref().and_then(shared::peer::from_hex) },
            );
        }
        let revoked_rows: Vec<(String, String)> =
            sqlx::query_as("SELECT username, fingerprint FROM revoked_keys").fetch_all(&mut *db.lock().await).await?;
        let mut revoked: HashMap<String, HashSet<[u8; 32]>> = HashMap::new();
        for (user, fp) in revoked_rows {
            if let Some(fp) = shared::peer::from_hex(&fp) {
                revoked.entry(user).or_default().insert(fp);
            }
        }
        Ok(Self { db, pins: Mutex::new(pins), revoked: Mutex::new(revoked) })
    }

    pub(crate) fn pin(&self, friend: &str) -> Option<Pin> {
        self.pins.lock().get(friend).cloned()
    }

    /// Reads a lookup's answer: pins a first key, holds on a changed one, and keeps only the devices the
    /// pinned key certified.
    pub(crate) async fn admit(&self, friend: &str, located: Located) -> Result<Admitted> {
        Ok(match self.check_key(friend, located.account_key).await? {
            KeyUse::Check(key) => Admitted::Devices(self.certified(friend, &key, located.devices)),
            KeyUse::ChangedNow => Admitted::Held { why: held_why(friend), first: true },
            KeyUse::Held => Admitted::Held { why: held_why(friend), first: false },
            KeyUse::NoKey => {
                if !located.devices.is_empty() {
                    tracing::warn!(friend, "the broker served no account key for a friend; no device accepted");
                }
                Admitted::Devices(Vec::new())
            }
        })
    }

    /// Reads an announced caller (`PeerCalling`): its device key if its record verifies under the pin.
    pub(crate) async fn admit_caller(
        &self,
        friend: &str,
        account_key: Option<AccountKey>,
        device: CertifiedDevice,
    ) -> Result<Option<DeviceEndpoint>> {
        match self.check_key(friend, account_key).await? {
            KeyUse::Check(key) => Ok(self.certified(friend, &key, vec![device]).pop()),
            KeyUse::ChangedNow | KeyUse::Held | KeyUse::NoKey => Ok(None),
        }
    }

    /// Reads a friend's served mailbox keys: those the pinned key certified (pinning a first key, holding
    /// on a changed one, as lookups do). `Err(why)` inside: none can be used now.
    pub(crate) async fn admit_mailboxes(
        &self,
        friend: &str,
        account_key: Option<AccountKey>,
        served: Vec<shared::mailbox::SignedMailboxKeys>,
    ) -> Result<Result<Vec<shared::mailbox::MailboxKeys>, String>> {
        Ok(match self.check_key(friend, account_key).await? {
            KeyUse::Check(key) => {
                let revoked = self.revoked.lock().get(friend).cloned().unwrap_or_default();
                let (ok, refused) = crate::core::mailbox::certified(friend, &key, served, &revoked);
                for fp in refused {
                    tracing::warn!(friend, device = %certs::Fingerprint(fp), "refused mailbox keys the broker served");
                }
                Ok(ok)
            }
            KeyUse::ChangedNow | KeyUse::Held => Err(held_why(friend)),
            KeyUse::NoKey => Err(format!("{friend} has no account key yet, so no device of theirs can be checked")),
        })
    }

    /// What to do with the key the broker served, pinning it on first sight and recording a change.
    async fn check_key(&self, friend: &str, served: Option<AccountKey>) -> Result<KeyUse> {
        let pin = self.pin(friend);
        match trust::key_seen(pin.as_ref(), served) {
            KeySeen::Pinned(k) => Ok(KeyUse::Check(k)),
            KeySeen::First(k) => {
                sqlx::query(
                    "INSERT INTO friend_keys (username, account_key, pinned_at, verified) VALUES (?, ?, ?, 0) \
                     ON CONFLICT(username) DO NOTHING",
                )
                .bind(friend)
                .bind(hex::encode(k))
                .bind(crate::agent::now_ms())
                .execute(&mut *self.db.lock().await)
                .await?;
                self.pins.lock().insert(friend.to_string(), Pin { key: k, verified: false, new_key: None });
                tracing::info!(friend, key = hex::encode(k), "pinned a friend's account key on first contact");
                Ok(KeyUse::Check(k))
            }
            KeySeen::Changed(k) => {
                sqlx::query("UPDATE friend_keys SET new_key = ?, changed_at = ? WHERE username = ?")
                    .bind(hex::encode(k))
                    .bind(crate::agent::now_ms())
                    .bind(friend)
                    .execute(&mut *self.db.lock().await)
                    .await?;
                if let Some(p) = self.pins.lock().get_mut(friend) {
                    p.new_key = Some(k);
                }
                tracing::warn!(friend, key = hex::encode(k), "a friend's account key changed; messages held");
                Ok(KeyUse::ChangedNow)
            }
            KeySeen::StillChanged => Ok(KeyUse::Held),
            // A broker that stops serving a key after a change gets nothing more for that.
            KeySeen::None if pin.is_some_and(|p| p.new_key.is_some()) => Ok(KeyUse::Held),
            KeySeen::None => Ok(KeyUse::NoKey),
        }
    }

    fn certified(&self, friend: &str, key: &AccountKey, devices: Vec<CertifiedDevice>) -> Vec<DeviceEndpoint> {
        let revoked = self.revoked.lock().get(friend).cloned().unwrap_or_default();
        let (ok, refused) = trust::certified(friend, key, devices, &revoked);
        for r in refused {
            tracing::warn!(
                friend,
                device = %certs::Fingerprint(r.fingerprint),
                why = %r.why,
                "refused a device the broker vouched for"
            );
        }
        ok
    }

    /// A friend's signed revocation: checked against the pin, then kept for good. The revoked device key.
    pub(crate) async fn revoke(&self, friend: &str, revocation: &SignedRevocation) -> Result<Option<[u8; 32]>> {
        let Some(pin) = self.pin(friend) else { return Ok(None) };
        if revocation.body.username != friend || certs::account::verify(&pin.key, revocation).is_err() {
            tracing::warn!(friend, "a revocation that does not verify under the friend's key; ignored");
            return Ok(None);
        }
        let fp = revocation.body.fingerprint;
        sqlx::query("INSERT OR IGNORE INTO revoked_keys (username, fingerprint, at) VALUES (?, ?, ?)")
            .bind(friend)
            .bind(hex::encode(fp))
            .bind(revocation.body.at)
            .execute(&mut *self.db.lock().await)
            .await?;
        self.revoked.lock().entry(friend.to_string()).or_default().insert(fp);
        Ok(Some(fp))
    }

    /// The user compared safety numbers: the friend is verified. `false` with no key pinned.
    pub(crate) async fn confirm(&self, friend: &str) -> Result<bool> {
        if self.pin(friend).is_none() {
            return Ok(false);
        }
        sqlx::query("UPDATE friend_keys SET verified = 1 WHERE username = ?")
            .bind(friend)
            .execute(&mut *self.db.lock().await)
            .await?;
        if let Some(p) = self.pins.lock().get_mut(friend) {
            p.verified = true;
        }
        Ok(true)
    }

    /// The user accepts the friend's changed key: it becomes the pin, unverified. `false` with no change
    /// waiting.
    pub(crate) async fn accept_new_key(&self, friend: &str) -> Result<bool> {
        let Some(new) = self.pin(friend).and_then(|p| p.new_key) else { return Ok(false) };
        sqlx::query(
            "UPDATE friend_keys SET account_key = ?, new_key = NULL, changed_at = NULL, verified = 0, pinned_at = ? \
             WHERE username = ?",
        )
        .bind(hex::encode(new))
        .bind(crate::agent::now_ms())
        .bind(friend)
        .execute(&mut *self.db.lock().await)
        .await?;
        self.pins.lock().insert(friend.to_string(), Pin { key: new, verified: false, new_key: None });
        tracing::info!(friend, key = hex::encode(new), "accepted a friend's new account key");
        Ok(true)
    }
}

fn held_why(friend: &str) -> String {
    format!(
        "held: {friend}'s account key changed; compare safety numbers (`peer verify {friend}`), then \
         `peer verify {friend} --accept-new-key`"
    )
}

/// Every pin, for `peer friends` (read straight from the database: the CLI has no agent state).
pub(crate) async fn pins(db: &Db) -> Result<HashMap<String, (bool, bool)>> {
    let rows: Vec<(String, bool, Option<String>)> =
        sqlx::query_as("SELECT username, verified, new_key FROM friend_keys").fetch_all(&mut *db.lock().await).await?;
    Ok(rows.into_iter().map(|(u, verified, new_key)| (u, (verified, new_key.is_some()))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::Home;
    use certs::account::AccountKeyPair;
    use shared::trust::DeviceRecord;

    fn device(key: &AccountKeyPair, user: &str, fp: u8) -> CertifiedDevice {
        CertifiedDevice {
            endpoint: DeviceEndpoint { fingerprint: [fp; 32], observed: "127.0.0.1:1".parse().unwrap(), local: vec![] },
            record: Some(key.sign(DeviceRecord {
                username: user.into(),
                fingerprint: [fp; 32],
                name: "x".into(),
                created_at: 1,
            })),
        }
    }

    #[tokio::test]
    async fn a_pin_survives_a_restart_and_a_change_holds_until_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(dir.path()).await.unwrap();
        let (k1, k2) = (AccountKeyPair::generate().unwrap(), AccountKeyPair::generate().unwrap());
        let t = Trust::load(home.db.clone()).await.unwrap();
        let first = t.admit("bob", Located { account_key: Some(k1.public()), devices: vec![device(&k1, "bob", 1)] });
        assert!(matches!(first.await.unwrap(), Admitted::Devices(d) if d.len() == 1));
        drop(t);

        let t = Trust::load(home.db.clone()).await.unwrap();
        assert_eq!(t.pin("bob").unwrap().key, k1.public(), "pinned across restarts");
        let changed = Located { account_key: Some(k2.public()), devices: vec![device(&k2, "bob", 2)] };
        assert!(matches!(t.admit("bob", changed.clone()).await.unwrap(), Admitted::Held { first: true, .. }));
        assert!(matches!(t.admit("bob", changed.clone()).await.unwrap(), Admitted::Held { first: false, .. }));
        assert!(pins(&home.db).await.unwrap()["bob"].1, "the change is visible to the CLI");
        assert!(t.accept_new_key("bob").await.unwrap());
        assert!(matches!(t.admit("bob", changed).await.unwrap(), Admitted::Devices(d) if d.len() == 1));

        // A revocation signed by the pinned key sticks; one signed by another key is ignored.
        let rev = |k: &AccountKeyPair| {
            k.sign(shared::trust::Revocation { username: "bob".into(), fingerprint: [2; 32], at: 3 })
        };
        assert_eq!(t.revoke("bob", &rev(&k1)).await.unwrap(), None);
        assert_eq!(t.revoke("bob", &rev(&k2)).await.unwrap(), Some([2; 32]));
        let t = Trust::load(home.db.clone()).await.unwrap();
        let again = Located { account_key: Some(k2.public()), devices: vec![device(&k2, "bob", 2)] };
        assert!(matches!(t.admit("bob", again).await.unwrap(), Admitted::Devices(d) if d.is_empty()));
    }
}
