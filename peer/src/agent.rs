//! `peer up`: the long-running agent. It keeps one broker session alive (reconnecting with backoff), relays
//! broker events to watchers, and serves the CLI over the control channel.

use crate::broker::BrokerSession;
use crate::control::{self, Duplex};
use crate::core::session::{self, Effect, End, Reconnect};
use crate::direct::Direct;
use crate::home::{Account, Home};
use crate::net;
use crate::tasks::Tasks;
use anyhow::{Result, anyhow};
use certs::Identity;
use certs::verify::ServerPin;
use parking_lot::Mutex;
use shared::control::{AgentEvent, AgentStatus, ControlErrorCode as Code, ControlRequest, ControlResponse};
use shared::io::{read_frame, write_frame};
use shared::proto::{DeviceEndpoint, ErrorCode, Event, Request, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{Notify, broadcast};

/// How soon relayed links try again for a direct path, the first few times ...
const UPGRADE_SOON: std::time::Duration = std::time::Duration::from_secs(10);
/// ... and then: longer than a router keeps the state an unanswered UDP packet left (30 s on Linux), which
/// every failed attempt renews and which can make that router renumber the friend's packets.
const UPGRADE_EVERY: std::time::Duration = std::time::Duration::from_secs(35);

/// How long after a friend's device went relayed a search for a direct path may start: the direct attempts
/// still under way get their time first.
const SEARCH_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// Events buffered for a slow `peer watch` before it starts missing some.
const WATCH_BUFFER: usize = 1024;

/// The running agent: the wiring between its components. Each holds its own state: `direct` the peer links
/// (who may connect, how to reach them, the live direct and relayed connections), `broker` the session's
/// link and status, `outboxes` each friend's sends and retries, `files` the transfers moving, `relays` the
/// relay streams, the task sets their work; the decisions are in `core`.
pub(crate) struct Agent {
    pub(crate) home: Home,
    pub(crate) account: Account,
    identity: Identity,
    /// This device's key's fingerprint, computed once (letters and records name it many times).
    fingerprint: certs::Fingerprint,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) direct: Direct,
    /// Sends and retries per friend, each friend's delivered by one run at a time (order holds).
    pub(crate) outboxes: Mutex<crate::core::outbox::Queues<crate::chat::Outgoing>>,
    /// The brokers to try, in order (one, or several that serve the same users), and the one in use.
    broker_addrs: Vec<SocketAddr>,
    broker_at: std::sync::atomic::AtomicUsize,
    /// The broker session's connection and status.
    pub(crate) broker: BrokerSession,
    events: broadcast::Sender<AgentEvent>,
    stop: Notify,
    /// Work that lives as long as the agent (answers to the CLI, transfers).
    pub(crate) tasks: Tasks,
    /// Work of the current broker session, aborted when it ends.
    pub(crate) session_tasks: Tasks,
    /// Transfers whose bytes are moving now.
    pub(crate) files: crate::files::Live,
    pub(crate) policy: crate::files::FilePolicy,
    /// Relay links on the broker connection, beside the UDP socket.
    pub(crate) relays: Arc<crate::relay::Relays>,
    /// How friends arriving through the relay are served (large packets).
    pub(crate) relay_server: Arc<quinn::ServerConfig>,
    pub(crate) channel_server: Arc<quinn::ServerConfig>,
    /// Friends' pinned account keys: every device key the broker vouches for passes through it.
    pub(crate) trust: crate::trust::Trust,
    /// Link codes this device offered and the devices linking with them.
    pub(crate) links: crate::link::Offers,
    /// This device's mailbox keys, and the keys of others' it knows.
    pub(crate) mail: crate::mailbox::Mail,
}

/// Why a friend's devices are not at hand.
pub(crate) enum Reach {
    /// Not (or no longer) friends: retrying will not help.
    NotFriends(String),
    /// Offline, or the broker is out of reach: try again later.
    Unreachable(String),
    /// Their account key changed and the user has not accepted the new one: nothing goes to them.
    Held(String),
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A fresh random id (messages, transfers): 16 bytes from the system's secure generator.
pub(crate) fn random_id() -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b
}

fn jitter() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 1];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    f64::from(b[0]) / 256.0
}

/// Runs the agent in the foreground until it is stopped (signal, `peer logout`) or its token is refused.
pub(crate) async fn run(
    home: Home,
    bind: Option<SocketAddr>,
    policy: crate::files::FilePolicy,
    relay_only: bool,
) -> Result<()> {
    let account = home.account().await?;
    let checkpointer = home.checkpoint_in_background().await?;
    let listener = control::Listener::bind(&home.dir).await?;
    let identity = home.identity()?;
    let allowed = net::Allowed::default();
    let relays = Arc::new(crate::relay::Relays::default());
    let broker_addrs = net::resolve_all(&account.broker).await?;
    let bind = bind.unwrap_or_else(|| net::default_bind(&broker_addrs));
    let net::Bound { endpoint, relay_server, channel_server, opener } =
        net::endpoint(&identity, bind, allowed.clone(), relays.clone())?;
    let broker_link = crate::direct::BrokerLink::default();
    let (opened_tx, opened_rx) = tokio::sync::mpsc::unbounded_channel();
    let direct = Direct::new(crate::direct::DirectParts {
        endpoint: endpoint.clone(),
        identity: identity.clone(),
        allowed,
        opened: opened_tx,
        relays: relays.clone(),
        broker: broker_link.clone(),
        relay_only,
        opener,
    });
    let broker_addr = broker_addrs[0];
    let status = AgentStatus {
        username: account.username.clone(),
        display_name: None,
        broker: account.broker.clone(),
        broker_fingerprint: account.broker_fingerprint.to_string(),
        device_fingerprint: identity.fingerprint().to_string(),
        online: false,
        session_id: None,
        observed_addr: None,
        local_addrs: net::local_candidates(&endpoint, broker_addr),
        since: None,
        agent_pid: std::process::id(),
        peers: Vec::new(),
    };
    let (events, _) = broadcast::channel(WATCH_BUFFER);
    let trust = crate::trust::Trust::load(home.db.clone()).await?;
    let mail = crate::mailbox::Mail::load(&home)?;
    let agent = Arc::new(Agent {
        mail,
        fingerprint: identity.fingerprint(),
        trust,
        links: crate::link::Offers::default(),
        home,
        account,
        identity,
        endpoint,
        direct,
        outboxes: Mutex::default(),
        broker_addrs,
        broker_at: std::sync::atomic::AtomicUsize::new(0),
        broker: BrokerSession::new(broker_link, status),
        relays,
        relay_server,
        channel_server,
        events,
        stop: Notify::new(),
        tasks: Tasks::default(),
        session_tasks: Tasks::default(),
        files: crate::files::Live::default(),
        policy,
    });
    tracing::info!(user = agent.account.username, broker = agent.account.broker, udp = ?agent.endpoint.local_addr().ok(), "agent starting");
    agent.tasks.spawn(agent.clone().serve_control(listener));
    agent.tasks.spawn(agent.clone().accept_peers(opened_rx));
    agent.tasks.spawn({
        let agent = agent.clone();
        async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                agent.direct.reap();
            }
        }
    });
    agent.tasks.spawn({
        let agent = agent.clone();
        let mut upgrades = agent.direct.upgrades();
        async move {
            // A fetch running over the relay moves to the direct path as soon as it stands.
            loop {
                match upgrades.recv().await {
                    Ok(friend) => agent.files.moved(&friend),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        }
    });
    agent.tasks.spawn({
        let agent = agent.clone();
        async move {
            loop {
                tokio::time::sleep(crate::chat::RETRY_EVERY).await;
                agent.clone().deliver_all().await;
                agent.clone().resume_files(None).await;
            }
        }
    });
    let result = tokio::select! {
        r = agent.broker_loop() => r,
        () = shared::io::shutdown_signal() => Ok(()),
        () = agent.stop.notified() => Ok(()),
    };
    // The control socket goes first: `peer down` takes its absence as "stopped", and an agent started
    // right after binds a socket of its own, which a later removal here would delete.
    control::Listener::cleanup(&agent.home.dir);
    agent.session_tasks.shutdown(std::time::Duration::from_secs(1)).await;
    agent.tasks.shutdown(std::time::Duration::from_secs(1)).await;
    agent.direct.shutdown().await;
    checkpointer.abort();
    agent.broker.close();
    agent.endpoint.close(quinn::VarInt::from_u32(0), b"agent stopping");
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), agent.endpoint.wait_idle()).await;
    tracing::info!("agent stopped");
    result
}

impl Agent {
    /// This device's key.
    pub(crate) fn device_fingerprint(&self) -> certs::Fingerprint {
        self.fingerprint
    }

    pub(crate) fn emit(&self, event: AgentEvent) {
        let _ = self.events.send(event);
    }

    async fn broker_loop(self: &Arc<Self>) -> Result<()> {
        let mut reconnect = Reconnect::default();
        loop {
            let addr = self.broker_addr();
            let span = tracing::info_span!("session", broker = %addr, id = tracing::field::Empty);
            self.broker.connecting(true);
            let end = tracing::Instrument::instrument(self.session(addr), span).await;
            self.broker.connecting(false);
            // A broker that could not be reached or went silent: the next one of several is tried (one that
            // closed or reset the session is tried again first: it may have just restarted).
            if end.moves_on() && self.broker_addrs.len() > 1 {
                self.broker_at.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            match &end {
                End::Lost(reason) => tracing::warn!(reason, "broker session lost; reconnecting"),
                End::Silent(reason) => tracing::warn!(reason, "the broker went silent; reconnecting"),
                End::Failed(reason) => tracing::warn!(reason, "cannot reach the broker; will retry"),
                End::Fatal(_) => {}
            }
            match reconnect.after(&end, jitter()) {
                Some(delay) => tokio::time::sleep(delay).await,
                None => return Err(anyhow!("{}", end.reason())),
            }
        }
    }

    /// The broker to connect to now.
    fn broker_addr(&self) -> SocketAddr {
        let at = self.broker_at.load(std::sync::atomic::Ordering::Relaxed);
        self.broker_addrs[at % self.broker_addrs.len()]
    }

    /// One broker session, from connect to loss.
    async fn session(self: &Arc<Self>, addr: SocketAddr) -> End {
        let pin = ServerPin::Exact(self.account.broker_fingerprint);
        let watch = net::Watch::for_brokers(self.broker_addrs.len());
        let conn = match net::connect_broker(&self.endpoint, &self.identity, addr, pin, watch).await {
            Ok(c) => c,
            Err(e) if e.downcast_ref::<net::BrokerIdentityChanged>().is_some() => {
                return End::Fatal(format!("{e:#}"));
            }
            Err(e) => return End::Failed(e.to_string()),
        };
        let local_addrs = self.broker.local_addrs();
        let hello = Request::Hello { token: self.account.token.clone(), local_addrs };
        let welcome = match session::on_hello(net::request(&conn, &hello).await.map_err(|e| e.to_string())) {
            Ok(w) => w,
            Err(end) => return end,
        };
        // Before the session counts as open (and `peer status` says online): friends' agents accept this
        // device only once its record is published.
        self.certify_self(&conn).await;
        let at = now_ms();
        self.broker.opened(conn.clone(), &welcome, at);
        tracing::Span::current().record("id", welcome.session_id);
        tracing::info!(observed_addr = %welcome.observed_addr, "online");
        self.emit(AgentEvent::Connected { observed_addr: welcome.observed_addr, at });
        self.session_tasks.spawn(self.clone().deliver_all());
        self.session_tasks.spawn(self.clone().catch_up_all());
        self.session_tasks.spawn(self.clone().refresh_friends());
        self.session_tasks.spawn(self.clone().resume_files(None));
        self.session_tasks.spawn(self.clone().accept_relays(conn.clone()));
        self.session_tasks.spawn(self.clone().upgrade_relayed());
        // What waited in the mailbox is stored before any event is read, so before any friend's device is
        // admitted to connect directly: what was sent while we were away comes before what follows it.
        self.pickup().await;
        let end = match self.read_events(&conn).await {
            End::Lost(r) if matches!(conn.close_reason(), Some(quinn::ConnectionError::TimedOut)) => End::Silent(r),
            end => end,
        };
        self.session_tasks.abort_all();
        let at = now_ms();
        self.broker.closed(at);
        self.direct.drop_relayed();
        self.emit(AgentEvent::Disconnected { reason: end.reason().to_string(), at });
        end
    }

    /// Publishes this device's record, signed by the account key. An account with no key yet (registered
    /// before keys existed) gets one made here, by its first device to come online; a device without the
    /// key, or with a key the account no longer uses, is not linked: it works with the broker, but friends'
    /// agents accept no direct connection from it until it is linked (`peer link`).
    async fn certify_self(&self, conn: &quinn::Connection) {
        let key = match self.account_key_for(conn).await {
            Ok(Some(k)) => k,
            Ok(None) => {
                tracing::warn!(
                    "this device is not linked to the account (it holds no account key): friends will not accept \
                     it; link it from one of your devices (`peer devices link`, then `peer link CODE` here)"
                );
                return;
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "no account key to publish this device's record with");
                return;
            }
        };
        let name = self.home.device_name().await.unwrap_or_else(|_| crate::home::default_device_name());
        // The same record every session (Ed25519 signs deterministically), so that the broker has nothing to
        // write: the moment the record was first made is kept with it.
        let created_at = match self.home.get("device_created_at").await.ok().flatten().and_then(|t| t.parse().ok()) {
            Some(t) => t,
            None => {
                let t = now_ms();
                if let Err(e) = self.home.set("device_created_at", &t.to_string()).await {
                    tracing::warn!(error = %e, "could not keep when this device's record was made");
                }
                t
            }
        };
        let record = key.sign(shared::trust::DeviceRecord {
            username: self.account.username.clone(),
            fingerprint: self.fingerprint.0,
            name,
            created_at,
        });
        match net::request(conn, &Request::Certify { account_key: key.public(), record }).await {
            Ok(Response::Ok) => {
                tracing::debug!("device record published");
                self.publish_mailbox(conn, &key, created_at).await;
            }
            Ok(Response::Error(e)) => {
                tracing::warn!(error = %e, "this device's record was refused; friends will not accept it")
            }
            other => tracing::warn!(answer = ?other, "could not publish this device's record"),
        }
    }

    /// This device's account key; for an account that has none yet (from before keys existed), one made
    /// now; `None` when the account has a key this device does not hold (it is not linked).
    async fn account_key_for(&self, conn: &quinn::Connection) -> Result<Option<certs::account::AccountKeyPair>> {
        if let Some(k) = self.home.account_key()? {
            return Ok(Some(k));
        }
        match net::request(conn, &Request::Devices).await? {
            Response::Devices { account_key: None, .. } => {
                let k = self.home.create_account_key()?;
                tracing::info!(key = hex::encode(k.public()), "made this account's key (its first device)");
                Ok(Some(k))
            }
            Response::Devices { account_key: Some(_), .. } => Ok(None),
            other => Err(anyhow!("unexpected answer to devices: {other:?}")),
        }
    }

    /// Re-reads the friend list from the broker, so that a friend removed while this agent was away from
    /// the broker (no `FriendRemoved` reached it) is no longer accepted.
    async fn refresh_friends(self: Arc<Self>) {
        for _ in 0..5 {
            let epoch = self.direct.friends_epoch();
            let list = match self.broker.forward(&Request::Friends).await {
                ControlResponse::Broker(Response::Friends(list)) => list,
                other => {
                    tracing::warn!(answer = ?other, "could not re-read the friend list");
                    return;
                }
            };
            if self.direct.set_friends(list.into_iter().map(|f| f.user.username).collect(), epoch) {
                return;
            }
        }
    }

    /// Keeps trying, at a modest rate, to move friends reached through the relay onto a direct path: a NAT
    /// mapping that did not open at first (a router's state, a race of first packets, a network that
    /// changed) often opens later, and a direct path costs the broker nothing and is faster. Where the plain
    /// attempt cannot work (a symmetric NAT facing one that filters by port), a search may (`searches`): it
    /// starts soon after a friend's device goes relayed, and again at its own slower pace.
    async fn upgrade_relayed(self: Arc<Self>) {
        let mut round = 0u32;
        let mut next = tokio::time::Instant::now() + UPGRADE_SOON;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next) => {
                    round += 1;
                    next = tokio::time::Instant::now() + if round < 2 { UPGRADE_SOON } else { UPGRADE_EVERY };
                    for (friend, fp) in self.direct.relayed() {
                        // A fresh lookup: current addresses, and the broker tells the friend's agent to try too.
                        self.direct.forget_devices(&friend);
                        let Ok(devices) = self.devices_of(&friend).await else { continue };
                        let Some(device) = devices.iter().find(|d| d.fingerprint == fp.0) else { continue };
                        // `Direct::keep` says so when a direct path replaces the relayed one.
                        self.direct.upgrade(&friend, device).await;
                        self.lead_search(&friend, fp, device).await;
                    }
                }
                () = self.direct.went_relayed() => {
                    // The direct attempts that lost to the relay may still complete: they get their time.
                    tokio::time::sleep(SEARCH_AFTER).await;
                    for (friend, fp) in self.direct.relayed() {
                        if !self.may_lead_search(&fp) {
                            continue;
                        }
                        let Ok(devices) = self.devices_of(&friend).await else { continue };
                        if let Some(device) = devices.iter().find(|d| d.fingerprint == fp.0) {
                            self.lead_search(&friend, fp, device).await;
                        }
                    }
                }
            }
        }
    }

    /// Serves relay streams the broker opens to us: a friend whose packets cannot reach us directly. Each
    /// is read on its own task, so one slow to name its friend holds up no other.
    async fn accept_relays(self: Arc<Self>, conn: quinn::Connection) {
        // Owned here: they go when the session's tasks are aborted, with this loop.
        let mut naming = tokio::task::JoinSet::new();
        while let Ok((send, mut recv)) = conn.accept_bi().await {
            while naming.try_join_next().is_some() {}
            let agent = self.clone();
            let conn = conn.clone();
            naming.spawn(async move {
                let hello = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                    let hello = read_frame::<shared::relay::RelayHello, _>(&mut recv).await.ok().flatten()?;
                    let channel = crate::relay::read_channel(&conn, &mut recv).await.ok()?;
                    Some((hello, channel))
                })
                .await;
                let Ok(Some((hello, channel))) = hello else { return };
                let fp = certs::Fingerprint(hello.fingerprint);
                // Only a device key already checked against the friend's account key (announced with its
                // record before the relay was asked for): the broker's word alone admits nobody.
                if agent.direct.username_of(&fp).as_deref() != Some(hello.username.as_str()) {
                    tracing::warn!(friend = hello.username, device = %fp, "a relay from a device not certified to us; refused");
                    return;
                }
                let channel_id = channel.as_ref().map(|c| c.id);
                let addr = agent.relays.attach(fp, send, recv, channel);
                tracing::info!(friend = hello.username, %addr, channel = ?channel_id, "relay from a friend");
            });
        }
    }

    /// Reads broker events until the connection ends, doing what each asks ([`session::Session`]).
    async fn read_events(self: &Arc<Self>, conn: &quinn::Connection) -> End {
        let mut stream = match conn.accept_uni().await {
            Ok(s) => s,
            Err(e) => return End::Lost(e.to_string()),
        };
        let mut session = session::Session::default();
        loop {
            let event = match read_frame::<Event, _>(&mut stream).await {
                Ok(Some(event)) => event,
                Ok(None) => {
                    return End::Lost(
                        conn.close_reason().map(|r| r.to_string()).unwrap_or("event stream ended".into()),
                    );
                }
                Err(e) => {
                    return End::Lost(conn.close_reason().map(|r| r.to_string()).unwrap_or_else(|| e.to_string()));
                }
            };
            for effect in session.on_event(event) {
                if let Some(end) = self.perform(effect).await {
                    return end;
                }
            }
        }
    }

    /// Does what a broker event asks; `Some` ends the session.
    async fn perform(self: &Arc<Self>, effect: Effect) -> Option<End> {
        match effect {
            Effect::Revoked => {
                return Some(End::Fatal(format!(
                    "this session was revoked (password changed on another device): run `peer login {}`",
                    self.account.username
                )));
            }
            Effect::ForgetDevices(friend) => {
                self.direct.forget_devices(&friend);
                self.mail.forget(&friend);
            }
            Effect::Pickup => self.pickup_soon(),
            Effect::Retry(friend) => {
                self.files.kick(&friend);
                let agent = self.clone();
                self.session_tasks.spawn_coalesced(format!("retry {friend}"), move || {
                    let (agent, friend) = (agent.clone(), friend.clone());
                    async move {
                        agent.retry_outbox(&friend);
                        agent.resume_files(Some(friend)).await;
                    }
                });
            }
            Effect::Unfriend(friend) => self.direct.forget(&friend),
            Effect::Befriend(friend) => self.direct.befriended(&friend),
            Effect::KeepDevices(friend, keep) => {
                tracing::info!(friend, devices = keep.len(), "a friend's other devices were cut off");
                self.direct.keep_only(&friend, &keep);
            }
            Effect::Expect(friend, key, device) => {
                let device = match self.trust.admit_caller(&friend, key, device).await {
                    Ok(Some(d)) => d,
                    Ok(None) => return None,
                    Err(e) => {
                        tracing::warn!(friend, error = %e, "could not check a caller's record");
                        return None;
                    }
                };
                if self.direct.expect(&friend, certs::Fingerprint(device.fingerprint)) {
                    // Simultaneous open: our packets towards them open our NAT for theirs.
                    let agent = self.clone();
                    let key = format!("punch {friend} {}", certs::Fingerprint(device.fingerprint));
                    self.session_tasks.spawn_once(key, async move { agent.direct.punch(&friend, &device).await });
                }
            }
            Effect::Revoke(friend, revocation) => {
                if friend == self.account.username {
                    // One of our own devices (this one is told by its session ending).
                    tracing::info!(device = %certs::Fingerprint(revocation.body.fingerprint), "one of this account's devices was revoked");
                } else {
                    match self.trust.revoke(&friend, &revocation).await {
                        Ok(Some(fp)) => {
                            self.direct.drop_device(&certs::Fingerprint(fp));
                            tracing::info!(friend, device = %certs::Fingerprint(fp), "a friend's device was revoked: key dropped");
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(friend, error = %e, "could not record a revocation"),
                    }
                }
            }
            Effect::CheckKey(friend) => {
                let agent = self.clone();
                self.session_tasks.spawn_once(format!("check key {friend}"), async move {
                    let _ = agent.devices_of(&friend).await;
                });
            }
            Effect::Link(link_id, device) => self.clone().link_claimed(link_id, device),
            Effect::Group(m) => {
                // Stored first, shown once, in order (gaps are fetched): handled here, inline.
                let group = m.group_id;
                if let Err(e) = self.on_group_message(m).await {
                    tracing::warn!(group, error = %e, "could not store a group message");
                }
            }
            Effect::Emit(event) => {
                if let Event::Presence { username, online, .. } = &event {
                    tracing::info!(friend = username, online, "presence");
                }
                self.emit(AgentEvent::Broker { event, at: now_ms() });
            }
        }
        None
    }

    async fn serve_control(self: Arc<Self>, listener: control::Listener) {
        // Each connection on its own task, owned by this loop: they end with it.
        let mut conns = tokio::task::JoinSet::new();
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    while conns.try_join_next().is_some() {}
                    let agent = self.clone();
                    conns.spawn(async move {
                        if let Err(e) = agent.control(stream).await {
                            tracing::debug!(error = %e, "control connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Serves one control connection: requests answered in turn until the client closes it (the CLI sends
    /// one; a script may keep the connection and send many), or a watch that streams until either side leaves.
    async fn control(self: &Arc<Self>, mut stream: Box<dyn Duplex>) -> Result<()> {
        while let Some(req) = read_frame::<ControlRequest, _>(&mut stream).await? {
            let stop_after = matches!(req, ControlRequest::Logout | ControlRequest::Stop);
            let resp = match req {
                ControlRequest::Status => {
                    let mut status = self.broker.status();
                    status.peers = self.direct.links();
                    ControlResponse::Status(status)
                }
                ControlRequest::Watch => return self.watch(stream).await,
                ControlRequest::Broker(req) => self.broker.forward(&req).await,
                ControlRequest::Logout => self.logout().await,
                ControlRequest::Send { to, text } => self.send_message(&to, &text).await,
                ControlRequest::SendFile { to, path, name, size, hash } => {
                    self.send_file(&to, &path, &name, size, hash).await
                }
                ControlRequest::Files => self.list_files().await,
                ControlRequest::FileAccept { id, dir } => self.accept_file(&id, &dir).await,
                ControlRequest::FileDecline { id } => self.decline_file(&id).await,
                ControlRequest::FileCancel { id } => self.cancel_file(&id, "cancelled by the user").await,
                ControlRequest::Stop => {
                    tracing::info!("asked to stop");
                    ControlResponse::Ok
                }
                ControlRequest::MarkRead { conversation, up_to } => self.mark_read(&conversation, up_to).await,
                ControlRequest::Verify { username, action } => self.verify(&username, action).await,
                ControlRequest::LinkStart => self.link_start().await,
                ControlRequest::LinkConfirm { link_id, accept } => self.link_confirm(link_id, accept),
                ControlRequest::Paths => ControlResponse::Paths(self.direct.paths()),
            };
            let written = write_frame(&mut stream, &resp).await;
            if stop_after {
                // Only once the CLI has its answer (or is gone).
                self.stop.notify_one();
                return Ok(written?);
            }
            written?;
        }
        Ok(())
    }

    /// A friend's online devices that their account key certified: from the last lookup while its
    /// connections work, else asked of the broker (which also tells the friend's agent to expect us) and
    /// checked against the key pinned for them ([`crate::trust`]).
    pub(crate) async fn devices_of(&self, friend: &str) -> Result<Vec<DeviceEndpoint>, Reach> {
        if let Some(d) = self.direct.known_devices(friend) {
            return Ok(d);
        }
        match self.broker.forward(&Request::Locate { username: friend.to_string() }).await {
            ControlResponse::Broker(Response::Located(located)) => match self.trust.admit(friend, located).await {
                Ok(crate::trust::Admitted::Devices(d)) => Ok(d),
                Ok(crate::trust::Admitted::Held { why, first }) => {
                    // Keys checked under the old pin are not used while the change is held, nor after it.
                    self.mail.forget(friend);
                    if first {
                        self.emit(AgentEvent::KeyChanged { username: friend.to_string(), at: now_ms() });
                    }
                    Err(Reach::Held(why))
                }
                Err(e) => Err(Reach::Unreachable(format!("could not check {friend}'s keys: {e}"))),
            },
            ControlResponse::Broker(Response::Error(e)) if matches!(e.code, ErrorCode::NotFriends) => {
                Err(Reach::NotFriends(e.message))
            }
            ControlResponse::Broker(Response::Error(e)) => Err(Reach::Unreachable(e.message)),
            ControlResponse::Failed(e) => Err(Reach::Unreachable(e.message)),
            other => Err(Reach::Unreachable(format!("unexpected answer: {other:?}"))),
        }
    }

    /// `peer verify`: the friend's pinned key and the safety number; confirms or accepts a new key.
    async fn verify(self: &Arc<Self>, friend: &str, action: shared::control::VerifyAction) -> ControlResponse {
        use shared::control::{Verification, VerifyAction};
        if self.trust.pin(friend).is_none() {
            // Never looked up yet: a lookup pins the key (and says whether they are a friend at all).
            match self.devices_of(friend).await {
                Err(Reach::NotFriends(why)) => return ControlResponse::failed(Code::InvalidRequest, why),
                Err(Reach::Unreachable(why)) if self.trust.pin(friend).is_none() => {
                    return ControlResponse::failed(Code::Offline, why);
                }
                _ => {}
            }
        }
        let done = match action {
            VerifyAction::Show => Ok(true),
            VerifyAction::Confirm => self.trust.confirm(friend).await,
            VerifyAction::AcceptNewKey => self.trust.accept_new_key(friend).await,
        };
        match done {
            Ok(true) => {}
            Ok(false) if action == VerifyAction::AcceptNewKey => {
                return ControlResponse::failed(
                    Code::NotNow,
                    format!("{friend}'s key has not changed: nothing to accept"),
                );
            }
            Ok(false) => {
                return ControlResponse::failed(
                    Code::NotNow,
                    format!("no account key is known for {friend} yet (their app has not published one)"),
                );
            }
            Err(e) => return ControlResponse::failed(Code::Storage, format!("could not record it: {e}")),
        }
        if action == VerifyAction::AcceptNewKey {
            self.direct.forget_devices(friend);
            self.mail.forget(friend);
            self.retry_outbox(friend);
        }
        let pin = self.trust.pin(friend);
        let mine = self.home.account_key().ok().flatten().map(|k| k.public());
        let safety_number = match (&pin, mine) {
            (Some(p), Some(m)) => Some(certs::account::safety_number((&self.account.username, &m), (friend, &p.key))),
            _ => None,
        };
        ControlResponse::Verification(Verification {
            username: friend.to_string(),
            safety_number,
            their_key: pin.as_ref().map(|p| hex::encode(p.key)),
            verified: pin.as_ref().is_some_and(|p| p.verified),
            key_changed: pin.as_ref().is_some_and(|p| p.new_key.is_some()),
        })
    }

    async fn mark_read(&self, conversation: &str, up_to: i64) -> ControlResponse {
        let conv = match conversation.parse::<crate::reads::Conversation>() {
            Ok(c) => c,
            Err(e) => return ControlResponse::failed(Code::InvalidRequest, e.to_string()),
        };
        if let Err(e) = crate::reads::mark(&self.home.db, &conv, up_to).await {
            return ControlResponse::failed(Code::Storage, format!("could not record the read mark: {e}"));
        }
        self.emit(AgentEvent::Read { conversation: conv.to_string(), up_to, at: now_ms() });
        ControlResponse::Ok
    }

    async fn logout(&self) -> ControlResponse {
        let revoked = match self.broker.forward(&Request::Logout).await {
            ControlResponse::Broker(Response::Ok) => Ok(()),
            ControlResponse::Broker(Response::Error(e)) => Err(e.message),
            ControlResponse::Failed(e) => Err(e.message),
            other => Err(format!("unexpected answer: {other:?}")),
        };
        if let Err(e) = self.home.delete("token").await {
            return ControlResponse::failed(Code::Storage, format!("could not forget the token: {e}"));
        }
        match revoked {
            Ok(()) => ControlResponse::Ok,
            Err(e) => ControlResponse::failed(
                Code::Offline,
                format!("the token was forgotten here but the broker could not revoke it ({e}); it expires by itself"),
            ),
        }
    }

    async fn watch(&self, mut stream: Box<dyn Duplex>) -> Result<()> {
        let mut rx = self.events.subscribe();
        // Tells the watcher it is subscribed: nothing from here on is missed.
        write_frame(&mut stream, &ControlResponse::Status(self.broker.status())).await?;
        loop {
            let event = match rx.recv().await {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let lagged =
                        ControlResponse::failed(Code::Lagged, format!("watch fell behind; {n} events skipped"));
                    write_frame(&mut stream, &lagged).await?;
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            };
            write_frame(&mut stream, &ControlResponse::Event(event)).await?;
        }
    }
}
