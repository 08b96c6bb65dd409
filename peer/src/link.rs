//! Linking a new device to the account, both sides (the wire is `shared::link`).
//!
//! The existing device's agent offers a code (`peer devices link`): the broker learns only the code's id.
//! The new device (`peer link CODE`) claims it at the broker, which introduces the two: each learns the
//! other's device key and addresses. The new device connects directly, pinning the key it was given, and
//! proves it holds the code's secret with a MAC over both keys as it sees them; a broker that put itself in
//! between would have to know the secret (and has one guess: the code is burnt by a wrong proof). Both
//! devices show the same four words, derived the same way, and the user confirms on the existing one.
//! Only then does the existing device hand over the account key, a record it signed for the new device, a
//! session token the broker issued for the new device's key, the friends' pins, and the history.

use crate::agent::{Agent, now_ms};
use crate::home::Home;
use anyhow::{Context, Result, anyhow, bail};
use certs::Fingerprint;
use certs::account::{AccountKeyPair, LinkCode, LinkId};
use parking_lot::Mutex;
use shared::control::{AgentEvent, ControlErrorCode as Code, ControlResponse};
use shared::io::{read_frame, write_frame};
use shared::link::{Approval, HistoryRow, LinkFrame, LinkReply, PinnedKey, pack};
use shared::proto::{DeviceEndpoint, Request, Response};
use sqlx::Connection;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a code waits to be claimed and confirmed (the broker forgets it after as long).
pub(crate) const LINK_TTL: Duration = Duration::from_secs(300);
/// Rows read from the database per page while sending the history.
const PAGE: i64 = 5_000;

/// Link codes this device offered.
#[derive(Default)]
pub(crate) struct Offers(Mutex<HashMap<LinkId, Offer>>);

struct Offer {
    code: LinkCode,
    /// The device that claimed it (told by the broker).
    claimant: Option<Fingerprint>,
    /// Where the user's answer goes once the words are shown.
    confirm: Option<oneshot::Sender<bool>>,
}

impl Agent {
    /// `peer devices link`: a fresh code, registered at the broker by its id.
    pub(crate) async fn link_start(&self) -> ControlResponse {
        if self.home.account_key().ok().flatten().is_none() {
            return ControlResponse::failed(
                Code::NotNow,
                "this device does not hold the account key, so it cannot link others: link it first",
            );
        }
        let code = match LinkCode::generate() {
            Ok(c) => c,
            Err(e) => return ControlResponse::failed(Code::Other, e.to_string()),
        };
        match self.broker.forward(&Request::LinkOffer { link_id: code.id }).await {
            ControlResponse::Broker(Response::Ok) => {}
            ControlResponse::Broker(Response::Error(e)) => return ControlResponse::failed(Code::NotNow, e.message),
            other => return other,
        }
        let (text, link_id) = (code.text(), code.id);
        self.links.0.lock().insert(link_id, Offer { code, claimant: None, confirm: None });
        ControlResponse::LinkCode { code: text, link_id, expires_in_secs: LINK_TTL.as_secs() }
    }

    /// The broker says a device claimed one of our codes: accept a connection from exactly its key.
    pub(crate) fn link_claimed(self: Arc<Self>, link_id: LinkId, device: DeviceEndpoint) {
        let fp = Fingerprint(device.fingerprint);
        {
            let mut offers = self.links.0.lock();
            let Some(offer) = offers.get_mut(&link_id) else { return };
            offer.claimant = Some(fp);
        }
        self.direct.allow_linking(fp);
        tracing::info!(device = %fp, "a device claimed a link code; waiting for it to connect");
        // Forgotten once the code expires, whatever happened.
        let agent = self.clone();
        self.tasks.spawn(async move {
            tokio::time::sleep(LINK_TTL).await;
            if agent.links.0.lock().remove(&link_id).is_some() {
                agent.direct.disallow_linking(&fp);
            }
        });
    }

    /// The user's answer to the words.
    pub(crate) fn link_confirm(&self, link_id: LinkId, accept: bool) -> ControlResponse {
        let sender = self.links.0.lock().get_mut(&link_id).and_then(|o| o.confirm.take());
        match sender {
            Some(tx) => {
                let _ = tx.send(accept);
                ControlResponse::Ok
            }
            None => ControlResponse::failed(Code::NotNow, "no device is waiting for that confirmation"),
        }
    }

    /// Serves a linking connection from a device that claimed one of our codes.
    pub(crate) async fn serve_link(self: Arc<Self>, conn: quinn::Connection, fp: Fingerprint) {
        let Some(link_id) = self.links.0.lock().iter().find(|(_, o)| o.claimant == Some(fp)).map(|(id, _)| *id) else {
            conn.close(quinn::VarInt::from_u32(1), b"unknown device");
            return;
        };
        let outcome = self.link_session(&conn, link_id, fp).await;
        self.links.0.lock().remove(&link_id);
        self.direct.disallow_linking(&fp);
        match outcome {
            Ok((device_name, messages)) => {
                tracing::info!(device = %fp, device_name, messages, "device linked");
                self.emit(AgentEvent::Linked { link_id, device_name, messages, at: now_ms() });
            }
            Err(e) => {
                tracing::warn!(device = %fp, error = %format!("{e:#}"), "linking failed");
                self.emit(AgentEvent::LinkFailed { link_id, reason: format!("{e:#}"), at: now_ms() });
            }
        }
        conn.close(quinn::VarInt::from_u32(0), b"done");
    }

    async fn link_session(&self, conn: &quinn::Connection, link_id: LinkId, fp: Fingerprint) -> Result<(String, u64)> {
        let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi())
            .await
            .map_err(|_| anyhow!("the new device opened no stream"))??;
        let Some(LinkFrame::Hello { proof, device_name }) = read_frame(&mut recv).await? else {
            bail!("the new device did not say hello");
        };
        let device_name: String = device_name.chars().filter(|c| !c.is_control()).take(64).collect();
        let me = self.device_fingerprint();
        let code = self.links.0.lock().get(&link_id).map(|o| o.code.clone()).context("the code expired")?;
        if !code.check_proof(&me.0, &fp.0, &proof) {
            refuse(&mut send, "wrong code").await;
            bail!("the device that connected does not hold the code (a wrong code, or someone in between)");
        }
        let (tx, rx) = oneshot::channel();
        if let Some(o) = self.links.0.lock().get_mut(&link_id) {
            o.confirm = Some(tx);
        }
        let words = code.confirmation_words(&me.0, &fp.0);
        self.emit(AgentEvent::LinkRequest { link_id, device_name: device_name.clone(), words, at: now_ms() });
        let accepted = tokio::time::timeout(LINK_TTL, rx).await.ok().and_then(Result::ok).unwrap_or(false);
        if !accepted {
            refuse(&mut send, "not confirmed on the other device").await;
            bail!("not confirmed");
        }
        let key = self.home.account_key()?.context("this device no longer holds the account key")?;
        let record = key.sign(shared::trust::DeviceRecord {
            username: self.account.username.clone(),
            fingerprint: fp.0,
            name: device_name.clone(),
            created_at: now_ms(),
        });
        // Published now, so that it is listed (and friends accept it) from its first session.
        match self.broker.forward(&Request::Certify { account_key: key.public(), record: record.clone() }).await {
            ControlResponse::Broker(Response::Ok) => {}
            other => bail!("the broker did not take the new device's record: {other:?}"),
        }
        let (token, expires_at) = match self.broker.forward(&Request::LinkToken { link_id }).await {
            ControlResponse::Broker(Response::Token { token, expires_at, .. }) => (token, expires_at),
            other => bail!("the broker issued no token for the new device: {other:?}"),
        };
        let messages = count_rows(&self.home).await?;
        let approval = Approval {
            username: self.account.username.clone(),
            account_key: key.pkcs8().to_vec(),
            record,
            token,
            expires_at,
            messages,
        };
        write_frame(&mut send, &LinkReply::Approved(Box::new(approval))).await?;
        for chunk in pins(&self.home).await?.chunks(500) {
            write_frame(&mut send, &LinkReply::Pins(chunk.to_vec())).await?;
        }
        send_history(&self.home, &mut send).await?;
        write_frame(&mut send, &LinkReply::Done { messages }).await?;
        let stored = tokio::time::timeout(Duration::from_secs(600), read_frame::<LinkFrame, _>(&mut recv)).await;
        match stored {
            Ok(Ok(Some(LinkFrame::Stored { messages }))) => Ok((device_name, messages)),
            _ => bail!("the new device did not confirm it stored the history"),
        }
    }
}

/// Tells the new device no, and waits (briefly) until it has read it: closing the connection at once
/// would drop the answer.
async fn refuse(send: &mut quinn::SendStream, why: &str) {
    if write_frame(send, &LinkReply::Refused(why.into())).await.is_ok() && send.finish().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    }
}

/// How many rows the history holds.
async fn count_rows(home: &Home) -> Result<u64> {
    let n: i64 = sqlx::query_scalar("SELECT (SELECT COUNT(*) FROM messages) + (SELECT COUNT(*) FROM group_messages)")
        .fetch_one(&mut *home.db.lock().await)
        .await?;
    Ok(n as u64)
}

async fn pins(home: &Home) -> Result<Vec<PinnedKey>> {
    let rows: Vec<(String, String, bool)> = sqlx::query_as("SELECT username, account_key, verified FROM friend_keys")
        .fetch_all(&mut *home.db.lock().await)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(username, key, verified)| {
            Some(PinnedKey { username, account_key: shared::peer::from_hex(&key)?, verified })
        })
        .collect())
}

type Direct = (i64, String, String, bool, String, i64, i64, String);
type Group = (i64, i64, String, bool, String, i64, i64);

/// Sends every stored message, oldest first, a page at a time.
async fn send_history(home: &Home, send: &mut quinn::SendStream) -> Result<()> {
    let mut after = 0;
    loop {
        let page: Vec<Direct> = sqlx::query_as(
            "SELECT local_id, id, peer, outgoing, text, sent_at, stored_at, status FROM messages \
             WHERE local_id > ? ORDER BY local_id LIMIT ?",
        )
        .bind(after)
        .bind(PAGE)
        .fetch_all(&mut *home.db.lock().await)
        .await?;
        let Some(last) = page.last() else { break };
        after = last.0;
        let rows = page
            .into_iter()
            .map(|(_, id, peer, outgoing, text, sent_at, stored_at, status)| HistoryRow::Direct {
                id,
                peer,
                outgoing,
                text,
                sent_at,
                stored_at,
                status,
            })
            .collect();
        for frame in pack(rows) {
            write_frame(send, &frame).await?;
        }
    }
    let (mut group, mut seq) = (i64::MIN, i64::MIN);
    loop {
        let page: Vec<Group> = sqlx::query_as(
            "SELECT group_id, seq, sender, system, text, sent_at, stored_at FROM group_messages \
             WHERE (group_id, seq) > (?, ?) ORDER BY group_id, seq LIMIT ?",
        )
        .bind(group)
        .bind(seq)
        .bind(PAGE)
        .fetch_all(&mut *home.db.lock().await)
        .await?;
        let Some(last) = page.last() else { break };
        (group, seq) = (last.0, last.1);
        let rows = page
            .into_iter()
            .map(|(group_id, seq, sender, system, text, sent_at, stored_at)| HistoryRow::Group {
                group_id,
                seq,
                sender,
                system,
                text,
                sent_at,
                stored_at,
            })
            .collect();
        for frame in pack(rows) {
            write_frame(send, &frame).await?;
        }
    }
    Ok(())
}

/// The new device's side: what `peer link CODE` does once the broker introduced the two devices.
pub(crate) struct Joined {
    pub(crate) username: String,
    pub(crate) messages: u64,
}

/// Connects to the existing device, proves the code, waits for the user's confirmation there, and stores
/// what it hands over. `progress` is told the expected total once, then each stored count.
pub(crate) async fn join(
    home: &Home,
    endpoint: &quinn::Endpoint,
    code: &LinkCode,
    username: &str,
    existing: &DeviceEndpoint,
    device_name: &str,
    mut progress: impl FnMut(u64, u64),
) -> Result<Joined> {
    let identity = home.identity()?;
    let me = identity.fingerprint();
    let theirs = Fingerprint(existing.fingerprint);
    let tls = certs::config::client(&identity, certs::verify::ServerPin::Exact(theirs), &[shared::link::LINK_ALPN])?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?));
    cfg.transport_config(Arc::new(crate::direct::transport()));
    let mut candidates = vec![existing.observed];
    candidates.extend(existing.local.iter().copied().filter(|a| *a != existing.observed));
    let hello = LinkFrame::Hello { proof: code.proof(&theirs.0, &me.0), device_name: device_name.to_string() };
    // The other device learns our key from the broker at the moment we learn its: a first handshake may
    // reach it before that, and is then closed before any answer. Tried again for a few seconds.
    let patience = tokio::time::Instant::now() + Duration::from_secs(10);
    let (conn, mut send, mut recv, approval) = loop {
        let attempt = async {
            let conn = dial(endpoint, &cfg, &candidates).await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            write_frame(&mut send, &hello).await?;
            let first = tokio::time::timeout(LINK_TTL, read_frame::<LinkReply, _>(&mut recv)).await.map_err(|_| {
                anyhow!("no confirmation on your other device within {} minutes", LINK_TTL.as_secs() / 60)
            })?;
            Ok::<_, anyhow::Error>((conn, send, recv, first))
        };
        match attempt.await {
            Ok((conn, send, recv, Ok(Some(reply)))) => break (conn, send, recv, reply),
            Ok((_, _, _, Ok(None))) => bail!("your other device ended the link without an answer"),
            Ok((_, _, _, Err(e))) if tokio::time::Instant::now() >= patience => bail!("linking failed: {e}"),
            Err(e) if tokio::time::Instant::now() >= patience => return Err(e),
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    };
    let approval = match approval {
        LinkReply::Approved(a) => a,
        LinkReply::Refused(why) => bail!("your other device refused: {why}"),
        other => bail!("unexpected answer from your other device: {other:?}"),
    };
    let Approval { username: approved_user, account_key, record, token, messages: total, .. } = *approval;
    if approved_user != username {
        bail!("your other device answered for another account ({approved_user})");
    }
    let key = AccountKeyPair::from_pkcs8(&account_key).map_err(|e| anyhow!("the account key handed over: {e}"))?;
    certs::account::check_record(&key.public(), username, &me.0, &record)
        .map_err(|e| anyhow!("the record handed over: {e}"))?;
    home.save_account_key(&key)?;
    home.set("token", &token).await?;
    progress(total, 0);
    let mut stored = 0u64;
    loop {
        match read_frame::<LinkReply, _>(&mut recv).await? {
            Some(LinkReply::Pins(pins)) => store_pins(home, &pins).await?,
            Some(LinkReply::Rows(rows)) => {
                stored += rows.len() as u64;
                store_rows(home, &rows).await?;
                progress(total, stored);
            }
            Some(LinkReply::Done { .. }) => break,
            Some(other) => bail!("unexpected frame while copying the history: {other:?}"),
            None => bail!("your other device stopped sending the history after {stored} messages"),
        }
    }
    write_frame(&mut send, &LinkFrame::Stored { messages: stored }).await?;
    send.finish()?;
    // Until the other side has read the last frame.
    let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    conn.close(quinn::VarInt::from_u32(0), b"linked");
    Ok(Joined { username: username.to_string(), messages: stored })
}

/// The first candidate address that completes a handshake.
async fn dial(
    endpoint: &quinn::Endpoint,
    cfg: &quinn::ClientConfig,
    candidates: &[SocketAddr],
) -> Result<quinn::Connection> {
    let mut errors = Vec::new();
    for addr in candidates {
        match endpoint.connect_with(cfg.clone(), *addr, "p2pim-peer") {
            Ok(c) => match tokio::time::timeout(Duration::from_secs(5), c).await {
                Ok(Ok(c)) => return Ok(c),
                Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
                Err(_) => errors.push(format!("{addr}: no answer")),
            },
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    bail!(
        "could not reach your other device directly ({}); linking needs both devices on a network where they \
         can reach each other (the same LAN works best)",
        errors.join("; ")
    )
}

async fn store_pins(home: &Home, pins: &[PinnedKey]) -> Result<()> {
    let mut conn = home.db.lock().await;
    let mut tx = conn.begin().await?;
    for p in pins {
        sqlx::query(
            "INSERT INTO friend_keys (username, account_key, pinned_at, verified) VALUES (?, ?, ?, ?) \
             ON CONFLICT(username) DO UPDATE SET account_key = excluded.account_key, verified = excluded.verified",
        )
        .bind(&p.username)
        .bind(hex::encode(p.account_key))
        .bind(now_ms())
        .bind(p.verified)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Stores one frame's rows in one transaction; a message already here is kept as it is.
async fn store_rows(home: &Home, rows: &[HistoryRow]) -> Result<()> {
    let (direct, group): (Vec<&HistoryRow>, Vec<&HistoryRow>) =
        rows.iter().partition(|r| matches!(r, HistoryRow::Direct { .. }));
    let mut conn = home.db.lock().await;
    let mut tx = conn.begin().await?;
    // At most 500 rows (3,500 bound values) per statement.
    for chunk in direct.chunks(500) {
        let mut q = sqlx::QueryBuilder::new(
            "INSERT OR IGNORE INTO messages (id, peer, outgoing, text, sent_at, stored_at, status) ",
        );
        q.push_values(chunk, |mut b, r| {
            if let HistoryRow::Direct { id, peer, outgoing, text, sent_at, stored_at, status } = r {
                b.push_bind(id).push_bind(peer).push_bind(outgoing).push_bind(text);
                b.push_bind(sent_at).push_bind(stored_at).push_bind(status);
            }
        });
        q.build().execute(&mut *tx).await?;
    }
    for chunk in group.chunks(500) {
        let mut q = sqlx::QueryBuilder::new(
            "INSERT OR IGNORE INTO group_messages (group_id, seq, sender, system, text, sent_at, stored_at) ",
        );
        q.push_values(chunk, |mut b, r| {
            if let HistoryRow::Group { group_id, seq, sender, system, text, sent_at, stored_at } = r {
                b.push_bind(group_id).push_bind(seq).push_bind(sender).push_bind(system);
                b.push_bind(text).push_bind(sent_at).push_bind(stored_at);
            }
        });
        q.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}
