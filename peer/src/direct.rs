//! Direct connections between friends' agents, on the agent's one endpoint.
//!
//! Both sides pin the other's device key as the broker vouched for it: we connect only to the fingerprint a
//! lookup returned, and accept only fingerprints the broker announced (`PeerIncoming`). The connection tells
//! us who the sender is; no frame can claim otherwise. Connections are kept and reused in both directions.
//! Both ends send keep-alives, so that a friend's agent that died is noticed within [`DEAD_AFTER`] (a
//! transfer then resumes on a fresh connection) and NAT mappings stay open; a link that carried no stream
//! data for [`UNUSED`] is closed by [`Direct::reap`].

use crate::core::links::{self, Path};
use crate::net::Allowed;
use crate::relay::{Relays, is_relay_addr};
use crate::tasks::Tasks;
use anyhow::{Result, anyhow};
use certs::verify::ServerPin;
use certs::{Fingerprint, Identity};
use parking_lot::Mutex;
use shared::io::{read_frame, write_frame};
use shared::peer::{PeerAck, PeerFrame};
use shared::proto::{DeviceEndpoint, PEER_ALPN, Request, Response};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

mod search;
pub(crate) use search::Plan;

/// A direct connection that carried no stream data this long is closed.
pub(crate) const UNUSED: Duration = Duration::from_secs(60);
/// A friend's agent silent this long (no keep-alive answered) is gone.
pub(crate) const DEAD_AFTER: Duration = Duration::from_secs(10);
/// Keep-alive period on direct connections.
const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// The hop limit of the packets that open our own NAT before a punch: enough to leave the home router
/// (which makes the mapping as the packet goes out), too few to reach the friend's, where an unsolicited
/// packet would leave state that makes that router renumber the friend's own packets to us.
const OPENING_TTL: u32 = 2;
/// How long both sides wait after opening their NATs before dialling: the two agents hear of the punch
/// at about the same moment, and each side's first real packet must find the other's NAT already open.
const OPENING_LEAD: Duration = Duration::from_millis(30);

/// How long to wait for a handshake on one candidate address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Direct attempts run alone for a few round trips to the broker, never less than this, before the relay is
/// tried beside them ...
const RELAY_AFTER_MIN: Duration = Duration::from_millis(100);
/// ... and never more than this.
const RELAY_AFTER_MAX: Duration = Duration::from_millis(1500);
/// How long a handshake through the relay may take.
const RELAY_HANDSHAKE: Duration = Duration::from_secs(5);
/// How long to wait for a friend's agent to store a message.
const ACK_TIMEOUT: Duration = Duration::from_secs(4);

/// The transport for peer connections, both directions.
pub(crate) fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(DEAD_AFTER.as_millis() as u32))));
    t
}

/// A connection we opened, handed to the agent so that it serves the friend's streams on it too.
pub(crate) struct Opened {
    pub(crate) conn: quinn::Connection,
    pub(crate) friend: String,
    /// Completed after its dial's race was decided: not through [`Direct::keep`] yet.
    pub(crate) late: bool,
}

/// The receiving end of one race's attempts. When the race ends, or its future is dropped, attempts that
/// complete afterwards (and any already waiting here) go to the agent as late connections.
struct Attempts {
    rx: tokio::sync::mpsc::Receiver<Result<quinn::Connection>>,
    opened: tokio::sync::mpsc::UnboundedSender<Opened>,
    friend: String,
}

impl Drop for Attempts {
    fn drop(&mut self) {
        // Closed first, so that no attempt can slip a connection in after the drain below.
        self.rx.close();
        while let Ok(res) = self.rx.try_recv() {
            if let Ok(conn) = res {
                let _ = self.opened.send(Opened { conn, friend: self.friend.clone(), late: true });
            }
        }
    }
}

/// The agent's broker connection while it has one (relay streams are opened on it).
pub(crate) type BrokerLink = Arc<Mutex<Option<quinn::Connection>>>;

/// Packet size on relayed connections: the relay stream has no MTU, and larger packets cost the three
/// processes on a relayed path (two agents, the broker) far fewer per-packet operations.
pub(crate) const RELAY_MTU: u16 = 16 * 1024;

/// Packet size on relayed connections whose link has a channel: each packet must fit one datagram to the
/// broker with the channel's header, within what quinn discovers on any path (1452).
pub(crate) const CHANNEL_MTU: u16 = 1452 - shared::relay::HEADER as u16;

/// The transport for relayed peer connections: as [`transport`], with packets as large as the link takes:
/// far beyond Ethernet's on a stream, a datagram's worth less the header on a channel.
pub(crate) fn relay_transport(channel: bool) -> quinn::TransportConfig {
    let mut t = transport();
    // Discovered (the first packets must be small: QUIC's handshake sizes).
    let mut mtud = quinn::MtuDiscoveryConfig::default();
    if channel {
        mtud.upper_bound(CHANNEL_MTU);
    } else {
        mtud.upper_bound(RELAY_MTU).interval(Duration::from_secs(60));
    }
    t.mtu_discovery_config(Some(mtud));
    t
}

/// Who may connect, and the live connections.
pub(crate) struct Direct {
    endpoint: quinn::Endpoint,
    identity: Identity,
    allowed: Allowed,
    who: Mutex<HashMap<Fingerprint, String>>,
    conns: Mutex<HashMap<Fingerprint, quinn::Connection>>,
    /// Per connection (by stable id): stream frames counted at the last reap, and when that count last moved.
    usage: Mutex<HashMap<usize, (u64, std::time::Instant)>>,
    /// Connections we opened, for the agent to serve.
    opened: tokio::sync::mpsc::UnboundedSender<Opened>,
    /// Woken whenever a connection is kept, so that a connect in progress can take one the friend opened.
    kept: tokio::sync::Notify,
    relays: Arc<Relays>,
    broker: BrokerLink,
    /// Never try (or accept) direct paths: everything through the broker's relay.
    relay_only: bool,
    /// Who our friends are, as the agent last heard: pushes from the broker that vouch for someone's key
    /// are checked against it, so a push that raced an unfriending cannot let a former friend back in.
    friends: Mutex<FriendSet>,
    /// Friends' devices from the last lookup, reused while their connections work; forgotten on any
    /// presence change, removal or failure, so that a lookup (and the broker's vouching) happens again.
    reach: Mutex<HashMap<String, Vec<DeviceEndpoint>>>,
    /// Duplicate connections waiting to be closed.
    tasks: Tasks,
    /// Per device: the path of the connection kept last, since when, and how often it changed.
    paths: Mutex<HashMap<Fingerprint, PathRecord>>,
    /// The endpoint's socket, for packets that open our NAT before a punch (`open_nat`).
    opener: Option<std::net::UdpSocket>,
    /// Friends whose relayed link was just replaced by a direct one: long streams on the relayed one (a
    /// file being fetched) move over instead of waiting for it to close.
    upgraded: tokio::sync::broadcast::Sender<String>,
    /// When each device may next search for a direct path past the NATs (see [`crate::core::search`]).
    searches: Mutex<crate::core::search::Pacer<Fingerprint>>,
    /// Woken when a device's kept connection becomes a relayed one (see [`Direct::went_relayed`]).
    went_relayed: tokio::sync::Notify,
    /// Searches that may run at once, whoever leads them: each holds hundreds of sockets.
    search_slots: Arc<tokio::sync::Semaphore>,
}

/// See [`Direct::paths`].
struct PathRecord {
    path: Path,
    since: i64,
    upgrades: u32,
    fallbacks: u32,
}

/// The agent's view of its friend list: filled from the broker at every session start, kept current by
/// `FriendAccepted` and `FriendRemoved` events.
#[derive(Default)]
struct FriendSet {
    /// `None` until the first list arrived (until then, as before: the broker's word).
    known: Option<HashSet<String>>,
    /// Counts changes from events, so that a list fetched before one of them is not applied over it.
    epoch: u64,
    /// Keys the broker vouched for while we did not know the user as a friend (a friendship made while we
    /// were offline): applied if the next list says they are one.
    held: Vec<(String, Fingerprint)>,
}

/// The settings and shared parts [`Direct`] works with.
pub(crate) struct DirectParts {
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) identity: Identity,
    pub(crate) allowed: Allowed,
    pub(crate) opened: tokio::sync::mpsc::UnboundedSender<Opened>,
    pub(crate) relays: Arc<Relays>,
    pub(crate) broker: BrokerLink,
    pub(crate) relay_only: bool,
    pub(crate) opener: Option<std::net::UdpSocket>,
}

impl Direct {
    pub(crate) fn new(p: DirectParts) -> Self {
        Self {
            endpoint: p.endpoint,
            identity: p.identity,
            allowed: p.allowed,
            who: Mutex::default(),
            conns: Mutex::default(),
            usage: Mutex::default(),
            opened: p.opened,
            kept: tokio::sync::Notify::new(),
            relays: p.relays,
            broker: p.broker,
            relay_only: p.relay_only,
            friends: Mutex::default(),
            reach: Mutex::default(),
            tasks: Tasks::default(),
            paths: Mutex::default(),
            opener: p.opener,
            upgraded: tokio::sync::broadcast::channel(64).0,
            searches: Mutex::default(),
            went_relayed: tokio::sync::Notify::new(),
            search_slots: Arc::new(tokio::sync::Semaphore::new(crate::core::search::AT_ONCE)),
        }
    }

    /// The friend's devices from the last lookup, if it is still trusted.
    pub(crate) fn known_devices(&self, friend: &str) -> Option<Vec<DeviceEndpoint>> {
        self.reach.lock().get(friend).cloned()
    }

    /// Keeps a lookup's answer for the next sends to the friend.
    pub(crate) fn remember_devices(&self, friend: &str, devices: Vec<DeviceEndpoint>) {
        self.reach.lock().insert(friend.to_string(), devices);
    }

    /// Forgets the last lookup of the friend: the next send asks the broker again.
    pub(crate) fn forget_devices(&self, friend: &str) {
        self.reach.lock().remove(friend);
    }

    /// Stops the delayed closes (the endpoint is closing anyway).
    pub(crate) async fn shutdown(&self) {
        self.tasks.shutdown(Duration::from_secs(1)).await;
        self.relays.shutdown().await;
    }

    pub(crate) fn relay_only(&self) -> bool {
        self.relay_only
    }

    /// Accept `username`'s device `fp` from now on: the broker pushed that it is about to connect. Refused
    /// (and held until the next friend list) for someone the agent does not know as a friend.
    pub(crate) fn expect(&self, username: &str, fp: Fingerprint) -> bool {
        {
            let mut f = self.friends.lock();
            if f.known.as_ref().is_some_and(|k| !k.contains(username)) {
                tracing::warn!(user = username, "the broker vouched for a key of someone who is not a friend; refused");
                f.held.push((username.to_string(), fp));
                return false;
            }
        }
        self.allow(username, fp);
        true
    }

    /// Whether `username` is a friend as far as this agent knows (before the first friend list arrives, the
    /// broker's word is all there is).
    pub(crate) fn is_friend(&self, username: &str) -> bool {
        self.friends.lock().known.as_ref().is_none_or(|k| k.contains(username))
    }

    /// A friendship began (`FriendAccepted`).
    pub(crate) fn befriended(&self, username: &str) {
        let mut f = self.friends.lock();
        f.epoch += 1;
        if let Some(k) = &mut f.known {
            k.insert(username.to_string());
        }
    }

    /// Where the friend list stands now, for [`Direct::set_friends`].
    pub(crate) fn friends_epoch(&self) -> u64 {
        self.friends.lock().epoch
    }

    /// The friend list from the broker, fetched at `epoch`: everyone else is forgotten (their keys refused,
    /// their connections closed). `false` if an event changed the list meanwhile: fetch again.
    pub(crate) fn set_friends(&self, list: HashSet<String>, epoch: u64) -> bool {
        let (gone, held) = {
            let mut f = self.friends.lock();
            if f.epoch != epoch {
                return false;
            }
            let held: Vec<_> = std::mem::take(&mut f.held).into_iter().filter(|(u, _)| list.contains(u)).collect();
            let gone: HashSet<String> = self.who.lock().values().filter(|u| !list.contains(*u)).cloned().collect();
            f.known = Some(list);
            (gone, held)
        };
        for user in gone {
            self.forget_keys(&user);
            tracing::info!(user, "no longer a friend: key dropped");
        }
        for (user, fp) in held {
            self.allow(&user, fp);
        }
        true
    }

    /// Accept `username`'s device `fp` from now on (we looked them up ourselves).
    fn allow(&self, username: &str, fp: Fingerprint) {
        self.who.lock().insert(fp, username.to_string());
        if let Ok(mut a) = self.allowed.write() {
            a.insert(fp);
        }
    }

    /// Stop accepting and drop every connection of `username` (no longer a friend).
    pub(crate) fn forget(&self, username: &str) {
        {
            let mut f = self.friends.lock();
            f.epoch += 1;
            if let Some(k) = &mut f.known {
                k.remove(username);
            }
            f.held.retain(|(u, _)| u != username);
        }
        self.forget_keys(username);
    }

    fn forget_keys(&self, username: &str) {
        self.keep_only(username, &[]);
    }

    /// Stop accepting every device key of `username` but `keep`, and close their connections (devices cut
    /// off by a password change).
    pub(crate) fn keep_only(&self, username: &str, keep: &[Fingerprint]) {
        let gone: Vec<Fingerprint> = self
            .who
            .lock()
            .iter()
            .filter(|(f, u)| u.as_str() == username && !keep.contains(f))
            .map(|(f, _)| *f)
            .collect();
        for fp in gone {
            self.drop_key(&fp, b"no longer friends");
        }
    }

    /// Stop accepting one device key and close its connection, telling it `why`.
    fn drop_key(&self, fp: &Fingerprint, why: &[u8]) {
        self.who.lock().remove(fp);
        if let Ok(mut a) = self.allowed.write() {
            a.remove(fp);
        }
        if let Some(c) = self.conns.lock().remove(fp) {
            self.close(&c, why);
        }
    }

    /// Accept a connection from a device being linked (its key only: it is nobody's until it is linked).
    pub(crate) fn allow_linking(&self, fp: Fingerprint) {
        if let Ok(mut a) = self.allowed.write() {
            a.insert(fp);
        }
    }

    /// The device's link ended either way.
    pub(crate) fn disallow_linking(&self, fp: &Fingerprint) {
        if self.who.lock().contains_key(fp) {
            return;
        }
        if let Ok(mut a) = self.allowed.write() {
            a.remove(fp);
        }
    }

    /// Stop accepting one device key and close its connections (its account revoked it).
    pub(crate) fn drop_device(&self, fp: &Fingerprint) {
        self.drop_key(fp, b"device revoked");
    }

    /// The live connections, for `peer status`.
    pub(crate) fn links(&self) -> Vec<shared::control::PeerLink> {
        let who = self.who.lock().clone();
        let mut links: Vec<_> = self
            .conns
            .lock()
            .iter()
            .filter(|(_, c)| c.close_reason().is_none())
            .map(|(fp, c)| {
                let relayed = is_relay_addr(&c.remote_address());
                shared::control::PeerLink {
                    username: who.get(fp).cloned().unwrap_or_default(),
                    path: path(c).name().into(),
                    // Relayed: the broker's address, the one the packets travel to.
                    remote_addr: shared::udp::canonical(match (relayed, self.broker.lock().as_ref()) {
                        (true, Some(b)) => b.remote_address(),
                        _ => c.remote_address(),
                    }),
                    device_fingerprint: fp.to_string(),
                    relay: relayed.then(|| self.relays.carrier(&c.remote_address()).into()),
                }
            })
            .collect();
        links.sort_by(|a, b| a.username.cmp(&b.username));
        links
    }

    /// Notes the path of the connection now kept for a device: a change is an upgrade (relay to direct) or
    /// a fallback (direct to relay), and starts a new "since".
    fn record_path(&self, fp: Fingerprint, now_on: Path) {
        let now = crate::agent::now_ms();
        let mut paths = self.paths.lock();
        let r = paths.entry(fp).or_insert(PathRecord { path: now_on, since: now, upgrades: 0, fallbacks: 0 });
        if now_on == Path::Relayed {
            self.went_relayed.notify_one();
        }
        if r.path != now_on {
            match now_on {
                Path::Direct => r.upgrades += 1,
                Path::Relayed => r.fallbacks += 1,
            }
            r.path = now_on;
            r.since = now;
        }
    }

    /// The path history of every device connected while the agent runs, for `peer status` and `friends`.
    pub(crate) fn paths(&self) -> Vec<shared::control::PathHistory> {
        self.paths
            .lock()
            .iter()
            .map(|(fp, r)| shared::control::PathHistory {
                device_fingerprint: fp.to_string(),
                path: r.path.name().into(),
                since: r.since,
                upgrades: r.upgrades,
                fallbacks: r.fallbacks,
            })
            .collect()
    }

    /// Closes connections that carried no stream data for [`UNUSED`] and forgets closed ones.
    pub(crate) fn reap(&self) {
        let now = std::time::Instant::now();
        let mut usage = self.usage.lock();
        let mut conns = self.conns.lock();
        conns.retain(|_, c| {
            let stats = c.stats();
            let frames = stats.frame_tx.stream + stats.frame_rx.stream;
            let entry = usage.entry(c.stable_id()).or_insert((frames, now));
            if entry.0 != frames {
                *entry = (frames, now);
            }
            let unused = now.duration_since(entry.1) >= UNUSED;
            if c.close_reason().is_none() && !unused {
                return true;
            }
            usage.remove(&c.stable_id());
            self.close(c, b"unused");
            false
        });
    }

    /// Closes a connection (a no-op if it is closed already) and its relay link, if it has one.
    fn close(&self, c: &quinn::Connection, why: &[u8]) {
        c.close(quinn::VarInt::from_u32(0), why);
        self.relays.close(&c.remote_address());
    }

    /// Closes every relayed connection: they ride the broker session, which just ended, so they are dead
    /// already and whatever used them should retry now rather than after the idle timeout.
    pub(crate) fn drop_relayed(&self) {
        self.conns.lock().retain(|_, c| {
            let relayed = is_relay_addr(&c.remote_address());
            if relayed {
                self.close(c, b"relay lost with the broker session");
            }
            !relayed
        });
    }

    /// Completes when a relayed connection was kept for a device (once for any number of them since the
    /// last call): time to see whether a search could move it.
    pub(crate) async fn went_relayed(&self) {
        self.went_relayed.notified().await;
    }

    /// Friends whose relayed link became direct, as it happens.
    pub(crate) fn upgrades(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.upgraded.subscribe()
    }

    /// The friend behind a device key.
    pub(crate) fn username_of(&self, fp: &Fingerprint) -> Option<String> {
        self.who.lock().get(fp).cloned()
    }

    /// Keeps an accepted connection for reuse in the other direction (unless a better one is live).
    pub(crate) fn adopt(&self, fp: Fingerprint, conn: quinn::Connection) {
        self.keep(fp, conn, false);
    }

    /// Records a connection to a device. When both sides' attempts complete (simultaneous open) there are
    /// two: both agents keep the same one, a direct path over a relayed one, else the one opened by the
    /// side with the smaller fingerprint. The other is closed a little later, once streams already on it
    /// had time to finish (they are retried on the kept one if not).
    fn keep(&self, fp: Fingerprint, conn: quinn::Connection, opened_by_us: bool) -> quinn::Connection {
        let chosen = {
            let mut conns = self.conns.lock();
            let kept = match conns.get(&fp) {
                Some(old) if old.close_reason().is_none() && old.stable_id() != conn.stable_id() => {
                    let new_wins =
                        links::keep_new(&self.identity.fingerprint(), &fp, path(old), path(&conn), opened_by_us);
                    if new_wins && path(old) == Path::Relayed && path(&conn) == Path::Direct {
                        let friend = self.who.lock().get(&fp).cloned().unwrap_or_default();
                        tracing::info!(friend, "the relayed link to a friend is direct now");
                        // Nobody listening (no transfer running) is fine.
                        let _ = self.upgraded.send(friend);
                    }
                    let (winner, loser) = if new_wins { (conn.clone(), old.clone()) } else { (old.clone(), conn) };
                    self.tasks.spawn(async move {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        loser.close(quinn::VarInt::from_u32(0), b"duplicate connection");
                    });
                    winner
                }
                _ => conn,
            };
            conns.insert(fp, kept.clone());
            self.record_path(fp, path(&kept));
            kept
        };
        self.kept.notify_waiters();
        chosen
    }

    /// A connection to the device, reusing a live one. Otherwise every candidate address is tried at once
    /// (the broker tells the friend's agent to try ours at the same moment, which opens both NATs), and the
    /// first mutually authenticated handshake wins, including one the friend's agent completes towards us.
    /// When no direct path answers within a few round trips ([`Direct::relay_after`]), the broker's relay is
    /// tried beside the direct attempts, as iroh does: the first message goes on whichever path stands
    /// first, and a direct path that opens later is kept over the relayed one (`keep`), so later streams go
    /// direct.
    pub(crate) async fn connect(&self, username: &str, device: &DeviceEndpoint) -> Result<quinn::Connection> {
        let fp = Fingerprint(device.fingerprint);
        self.allow(username, fp);
        if let Some(c) = self.live(&fp) {
            return Ok(c);
        }
        let fail = |errors: Vec<String>| anyhow!("could not reach {username}'s device: {}", errors.join("; "));
        if self.relay_only {
            return self.via_relay(username, fp).await.map_err(|e| fail(vec![format!("relay: {e}")]));
        }
        let direct = self.race_direct(username, device, CONNECT_TIMEOUT);
        tokio::pin!(direct);
        let mut direct_failed = None;
        tokio::select! {
            r = &mut direct => match r {
                Ok(c) => return Ok(c),
                Err(e) => direct_failed = Some(e.to_string()),
            },
            () = tokio::time::sleep(self.relay_after()) => {}
        }
        let relay = self.via_relay(username, fp);
        tokio::pin!(relay);
        let mut relay_failed = None;
        loop {
            tokio::select! {
                r = &mut direct, if direct_failed.is_none() => match r {
                    Ok(c) => return Ok(c),
                    Err(e) => direct_failed = Some(e.to_string()),
                },
                r = &mut relay, if relay_failed.is_none() => match r {
                    Ok(c) => return Ok(c),
                    Err(e) => relay_failed = Some(format!("relay: {e}")),
                },
            }
            if let (Some(d), Some(r)) = (&direct_failed, &relay_failed) {
                return Err(fail(vec![d.clone(), r.clone()]));
            }
        }
    }

    /// How long direct attempts run alone: three round trips to the broker (a direct path between friends
    /// usually answers within that), between [`RELAY_AFTER_MIN`] and [`RELAY_AFTER_MAX`].
    fn relay_after(&self) -> Duration {
        let rtt = self.broker.lock().as_ref().map(|c| c.rtt()).unwrap_or(RELAY_AFTER_MAX);
        (rtt * 3).clamp(RELAY_AFTER_MIN, RELAY_AFTER_MAX)
    }

    /// Opens direct paths towards a friend who is about to connect to us (the broker said so): our packets
    /// open our NAT for theirs. Whatever completes is kept as usual.
    pub(crate) async fn punch(&self, username: &str, device: &DeviceEndpoint) {
        let fp = Fingerprint(device.fingerprint);
        // A relayed link is no reason to stay put: the friend may be trying to upgrade it (see `upgrade`).
        if self.relay_only || self.live_on(&fp, Path::Direct) {
            return;
        }
        if let Err(e) = self.race_direct(username, device, CONNECT_TIMEOUT).await {
            tracing::debug!(friend = username, error = %e, "no direct path from this side");
        }
    }

    /// The friends' devices reached only through the relay now, for [`Direct::upgrade`].
    pub(crate) fn relayed(&self) -> Vec<(String, Fingerprint)> {
        let who = self.who.lock().clone();
        self.conns
            .lock()
            .iter()
            .filter(|(_, c)| c.close_reason().is_none() && path(c) == Path::Relayed)
            .filter_map(|(fp, _)| Some((who.get(fp)?.clone(), *fp)))
            .collect()
    }

    /// Tries once more for a direct path to a device reached through the relay (the friend's agent, told
    /// by the broker's lookup at the same moment, tries towards us too). When one opens it is kept over
    /// the relayed connection, which carries on for the streams already on it and is closed a little later;
    /// new streams go direct (`keep` logs it).
    pub(crate) async fn upgrade(&self, username: &str, device: &DeviceEndpoint) {
        if self.relay_only {
            return;
        }
        if let Err(e) = self.race_direct(username, device, CONNECT_TIMEOUT).await {
            tracing::debug!(friend = username, error = %e, "still no direct path");
        }
    }

    /// The live connection to the device, if there is one.
    pub(crate) fn live(&self, fp: &Fingerprint) -> Option<quinn::Connection> {
        self.conns.lock().get(fp).filter(|c| c.close_reason().is_none()).cloned()
    }

    /// Whether the live connection to the device takes this path.
    fn live_on(&self, fp: &Fingerprint, on: Path) -> bool {
        self.live(fp).is_some_and(|c| path(&c) == on)
    }

    fn client_config(&self, fp: Fingerprint) -> Result<quinn::ClientConfig> {
        let tls = certs::config::client(&self.identity, ServerPin::Exact(fp), &[PEER_ALPN])?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?));
        cfg.transport_config(Arc::new(transport()));
        Ok(cfg)
    }

    /// Tries every candidate at once until one completes, the friend's connection to us arrives, or
    /// `patience` runs out. The attempts are the agent's tasks, not this future's: when the race is decided,
    /// or abandoned (the relay won), an attempt still under way finishes on its own, and a connection it
    /// completes goes where every connection we open goes (`opened`: kept or not by `keep`, its streams
    /// served): the friend's side may have completed it and chosen it, and dropping it would close the one
    /// they kept; or it is the direct path that should replace a relayed one.
    async fn race_direct(
        &self,
        username: &str,
        device: &DeviceEndpoint,
        patience: Duration,
    ) -> Result<quinn::Connection> {
        let fp = Fingerprint(device.fingerprint);
        let cfg = self.client_config(fp)?;
        let mut candidates: Vec<SocketAddr> = vec![device.observed];
        candidates.extend(device.local.iter().copied().filter(|a| *a != device.observed));
        if self.open_nat(&candidates) {
            tokio::time::sleep(OPENING_LEAD).await;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(candidates.len().max(1));
        let mut attempts = Attempts { rx, opened: self.opened.clone(), friend: username.to_string() };
        for addr in candidates {
            let connecting = self.endpoint.connect_with(cfg.clone(), addr, "p2pim-peer");
            let (tx, opened, friend) = (tx.clone(), self.opened.clone(), username.to_string());
            self.tasks.spawn(async move {
                let res = match connecting {
                    Ok(c) => match tokio::time::timeout(CONNECT_TIMEOUT, c).await {
                        Ok(r) => r.map_err(|e| anyhow!("{addr}: {e}")),
                        Err(_) => Err(anyhow!("{addr}: no answer")),
                    },
                    Err(e) => Err(anyhow!("{addr}: {e}")),
                };
                // The race is over: this one is late.
                if let Err(tokio::sync::mpsc::error::SendError(Ok(conn))) = tx.send(res).await {
                    let _ = opened.send(Opened { conn, friend, late: true });
                }
            });
        }
        drop(tx);
        let deadline = tokio::time::sleep(patience);
        tokio::pin!(deadline);
        let mut errors = Vec::new();
        let outcome = loop {
            let kept = self.kept.notified();
            tokio::select! {
                res = attempts.rx.recv() => match res {
                    Some(Ok(conn)) => {
                        let conn = self.keep(fp, conn, true);
                        let _ = self.opened.send(Opened { conn: conn.clone(), friend: username.into(), late: false });
                        break Ok(conn);
                    }
                    Some(Err(e)) => errors.push(e.to_string()),
                    None => break Err(errors.join("; ")),
                },
                () = kept => {
                    // The friend's connection to us arrived (a relayed one does not end the race).
                    if let Some(c) = self.live(&fp).filter(|c| path(c) == Path::Direct) {
                        break Ok(c);
                    }
                }
                () = &mut deadline => {
                    errors.push(format!("no direct path within {} ms", patience.as_millis()));
                    break Err(errors.join("; "));
                }
            }
        };
        match outcome {
            Ok(c) => Ok(c),
            // The friend's connection may have arrived meanwhile.
            Err(why) => self.live(&fp).ok_or_else(|| anyhow!("{why}")),
        }
    }

    /// Sends one short-lived datagram ([`OPENING_TTL`]) to each candidate beyond this machine, from the
    /// endpoint's own socket: our NAT maps our port towards the friend as it goes out, and the packet dies
    /// before it reaches the friend's router. Both agents do this before dialling, so that neither side's
    /// first real packet arrives unsolicited: without a firewall in front of it, a router that receives
    /// one keeps a conntrack entry that makes it renumber its own host's later packets to that sender, and
    /// the punch fails whichever side was first. Whether any was sent. The socket's hop limit is lowered
    /// only for those sends (a QUIC packet that slips out meanwhile is resent by QUIC); IPv4 only.
    fn open_nat(&self, candidates: &[SocketAddr]) -> bool {
        let Some(socket) = &self.opener else { return false };
        let remote: Vec<&SocketAddr> =
            candidates.iter().filter(|a| a.is_ipv4() && !a.ip().is_loopback() && !a.ip().is_unspecified()).collect();
        if remote.is_empty() {
            return false;
        }
        let Ok(normal) = socket.ttl() else { return false };
        if socket.set_ttl(OPENING_TTL).is_err() {
            return false;
        }
        for addr in &remote {
            // One zero byte: not a QUIC packet, dropped by anyone it reaches.
            let _ = socket.send_to(&[0], addr);
        }
        if let Err(e) = socket.set_ttl(normal) {
            tracing::warn!(error = %e, "could not restore the socket's hop limit");
        }
        true
    }

    /// Keeps (or not: see [`Direct::keep`]) a connection this agent opened whose race was already decided.
    pub(crate) fn keep_late(&self, conn: quinn::Connection) {
        if let Some(fp) = peer_fingerprint(&conn) {
            self.keep(fp, conn, true);
        }
    }

    /// The same peer connection, through the broker: a relay stream to the device, and a QUIC handshake
    /// over it with the same pinned keys.
    async fn via_relay(&self, username: &str, fp: Fingerprint) -> Result<quinn::Connection> {
        let addr = match self.relays.addr_of(&fp) {
            Some(a) => a,
            None => {
                let broker = self.broker.lock().clone().ok_or_else(|| anyhow!("not connected to the broker"))?;
                let (mut send, mut recv) = broker.open_bi().await?;
                write_frame(&mut send, &Request::Relay { username: username.to_string(), fingerprint: fp.0 }).await?;
                // The broker answers once the friend's side stands, or after its own limit for that.
                let answer_within = shared::relay::OPEN_TIMEOUT + Duration::from_secs(1);
                let answer = async {
                    match read_frame::<Response, _>(&mut recv).await {
                        Ok(Some(Response::Ok)) => {}
                        Ok(Some(Response::Error(e))) => return Err(anyhow!("{}", e.message)),
                        Ok(other) => return Err(anyhow!("unexpected answer from the broker: {other:?}")),
                        Err(e) => return Err(e.into()),
                    }
                    Ok(crate::relay::read_channel(&broker, &mut recv).await?)
                };
                let channel = tokio::time::timeout(answer_within, answer)
                    .await
                    .map_err(|_| anyhow!("the broker did not answer"))??;
                self.relays.attach(fp, send, recv, channel)
            }
        };
        let mut cfg = self.client_config(fp)?;
        cfg.transport_config(Arc::new(relay_transport(self.relays.has_channel(&addr))));
        let connecting = self.endpoint.connect_with(cfg, addr, "p2pim-peer")?;
        let conn = tokio::time::timeout(RELAY_HANDSHAKE, connecting)
            .await
            .map_err(|_| anyhow!("no handshake through the relay"))??;
        tracing::info!(friend = username, "connected through the broker's relay");
        let conn = self.keep(fp, conn, true);
        let _ = self.opened.send(Opened { conn: conn.clone(), friend: username.into(), late: false });
        Ok(conn)
    }

    /// Sends frames in order on one stream and collects the receiver's answers, flattened to one per
    /// message. Fewer answers than messages, with the error that cut them short, when the stream or
    /// connection breaks part way.
    pub(crate) async fn send_batch(
        conn: &quinn::Connection,
        frames: &[PeerFrame],
    ) -> (Vec<PeerAck>, Option<anyhow::Error>) {
        let mut acks = Vec::new();
        let limit = ACK_TIMEOUT + Duration::from_millis(frames.len() as u64 * 10);
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await?;
            let mut bytes = Vec::new();
            for f in frames {
                bytes.extend_from_slice(&shared::frame::encode(f)?);
            }
            let writer = async move {
                tokio::io::AsyncWriteExt::write_all(&mut send, &bytes).await?;
                send.finish()?;
                Ok::<_, anyhow::Error>(())
            };
            let reader = async {
                for f in frames {
                    let count = match f {
                        PeerFrame::Chat(_) => 1,
                        PeerFrame::ChatBatch(v) => v.len(),
                        _ => 1,
                    };
                    match read_frame::<PeerAck, _>(&mut recv).await? {
                        Some(PeerAck::Batch(v)) => acks.extend(v),
                        // One answer for a whole frame (a refusal of the frame itself) applies to each message.
                        Some(other) => acks.extend(std::iter::repeat_n(other, count)),
                        None => return Err(anyhow!("the friend's agent stopped acknowledging")),
                    }
                }
                Ok::<_, anyhow::Error>(())
            };
            let (w, r) = tokio::join!(writer, reader);
            w.and(r)
        };
        let heard = received(conn);
        let err = match tokio::time::timeout(limit, exchange).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => {
                close_if_silent(conn, heard);
                Some(anyhow!("no acknowledgement within {} s", limit.as_secs()))
            }
        };
        (acks, err)
    }
}

/// Packets received on a connection so far.
pub(crate) fn received(conn: &quinn::Connection) -> u64 {
    conn.stats().udp_rx.datagrams
}

/// Closes a connection that received nothing since `heard` packets, over a wait longer than two keep-alive
/// periods: the path is gone (a NAT mapping dropped, a network changed), not merely slow, since a live friend's
/// agent answers keep-alives however busy it is. Closing it now, rather than at the idle timeout, lets the
/// caller's retry find another path (the relay) within seconds. `true` if it was closed.
pub(crate) fn close_if_silent(conn: &quinn::Connection, heard: u64) -> bool {
    if received(conn) != heard || conn.close_reason().is_some() {
        return false;
    }
    tracing::info!(remote = %conn.remote_address(), "no packet from a friend's device for seconds; dropping the path");
    conn.close(quinn::VarInt::from_u32(0), b"path lost");
    true
}

fn path(c: &quinn::Connection) -> Path {
    if is_relay_addr(&c.remote_address()) { Path::Relayed } else { Path::Direct }
}

/// The fingerprint a connection's peer presented.
pub(crate) fn peer_fingerprint(conn: &quinn::Connection) -> Option<Fingerprint> {
    let certs = conn.peer_identity()?.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    certs.first().map(|c| Fingerprint::of(c))
}
