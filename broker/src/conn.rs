//! One peer connection: its session state, its request streams, its event stream, and its row in the
//! connection table from `Hello` until the connection ends.

use crate::error::RequestError;
use crate::server::{Ctx, stream_limit};
use crate::store::now_ms;
use certs::Fingerprint;
use shared::io::{IoError, read_frame, write_frame};
use shared::proto::{ErrorCode, Event, Request, Response};
use shared::session::SessionState;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tracing::Instrument;

/// How long a request stream may take to deliver its one frame.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most local addresses an agent may announce.
const MAX_LOCAL_ADDRS: usize = 16;
/// Relays one device may hold through the broker at once (one per friend's device it cannot reach
/// directly). Each holds a stream and two copy buffers, so there is a limit, and it is said, not hit as a
/// stall.
pub(crate) const MAX_RELAYS_PER_DEVICE: u32 = 64;

/// State shared by the streams of one connection.
struct Conn {
    ctx: Arc<Ctx>,
    quic: quinn::Connection,
    fingerprint: Fingerprint,
    /// Held across `Hello` so that two racing `Hello`s cannot both open a session.
    state: Mutex<SessionState>,
    token_hash: parking_lot::Mutex<Option<String>>,
    /// The connection's tasks (its request streams and its event writer): they end with it.
    tasks: parking_lot::Mutex<tokio::task::JoinSet<()>>,
    /// The event stream and its queue, from `Hello` until the request's task takes them to write events.
    writer: parking_lot::Mutex<Option<Box<(quinn::SendStream, crate::queue::Receiver)>>>,
    /// Relays standing or being set up on this connection: each adds one to its stream limit.
    relays: parking_lot::Mutex<u32>,
    /// The connection's span (remote address, then user): its tasks log inside it.
    span: tracing::Span,
}

/// Serves a connection until it closes, then takes its row out of the table.
pub async fn serve(ctx: Arc<Ctx>, quic: quinn::Connection) {
    let Some(fingerprint) = device_fingerprint(&quic) else {
        quic.close(quinn::VarInt::from_u32(1), b"client certificate required");
        return;
    };
    let conn = Arc::new(Conn {
        ctx,
        quic: quic.clone(),
        fingerprint,
        state: Mutex::new(SessionState::Anonymous),
        token_hash: parking_lot::Mutex::default(),
        tasks: parking_lot::Mutex::default(),
        writer: parking_lot::Mutex::default(),
        relays: parking_lot::Mutex::default(),
        span: tracing::Span::current(),
    });
    loop {
        match quic.accept_bi().await {
            Ok((send, recv)) => {
                let c = conn.clone();
                conn.spawn(async move {
                    // Boxed: a request's future is ~7 KiB (every request's handling is in it), freed here
                    // when the request ends rather than kept by the task for as long as it runs.
                    Box::pin(c.stream(send, recv)).await;
                    // The session's opening request goes on as its event writer: one task per session
                    // rather than two, and no finished one left in the set (~0.3 KiB an idle session).
                    let writer = c.writer.lock().take();
                    let quic = c.quic.clone();
                    drop(c);
                    if let Some(w) = writer {
                        let (send, rx) = *w;
                        write_events(send, rx, quic).await;
                    }
                });
            }
            Err(e) => {
                tracing::debug!(remote = %quic.remote_address(), reason = %e, "connection ended");
                break;
            }
        }
    }
    let state = std::mem::replace(&mut *conn.state.lock().await, SessionState::Closed);
    if let SessionState::Online { user, session_id } = state {
        // Boxed: its database calls would otherwise size the future an idle session holds all its life.
        Box::pin(conn.go_offline(&user, session_id)).await;
    }
    // The connection is gone, so its streams end by themselves; they are waited for (not aborted) so that a
    // request half-way through its writes (a group post's fan-out) finishes them.
    let mut tasks = std::mem::take(&mut *conn.tasks.lock());
    while tasks.join_next().await.is_some() {}
}

/// The protocol a connection chose (its ALPN).
pub(crate) fn alpn(quic: &quinn::Connection) -> Option<Vec<u8>> {
    let data = quic.handshake_data()?.downcast::<quinn::crypto::rustls::HandshakeData>().ok()?;
    data.protocol
}

pub(crate) fn device_fingerprint(quic: &quinn::Connection) -> Option<Fingerprint> {
    let identity = quic.peer_identity()?;
    let certs = identity.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    certs.first().map(|c| Fingerprint::of(c))
}

/// One relay counted on its connection; dropping it takes the extra stream back.
struct RelayHold<'a>(&'a Conn);

impl Drop for RelayHold<'_> {
    fn drop(&mut self) {
        let mut relays = self.0.relays.lock();
        *relays = relays.saturating_sub(1);
        // Lowering takes effect as streams end: quinn never revokes a stream it already allowed.
        self.0.set_stream_limit(*relays);
    }
}

impl Conn {
    /// Runs `task` as one of this connection's tasks; finished ones are reaped on the way.
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock();
        while tasks.try_join_next().is_some() {}
        // Boxed: a finished task's cell stays in the set until the next spawn reaps it. Boxed, that cell
        // holds a pointer and the future is freed when it finishes.
        tasks.spawn(Box::pin(task.instrument(self.span.clone())));
    }

    async fn stream(&self, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let read = tokio::time::timeout(REQUEST_READ_TIMEOUT, read_frame::<Request, _>(&mut recv)).await;
        let response = match read {
            Ok(Ok(Some(Request::Relay { username, fingerprint }))) => {
                return self.relay(username, Fingerprint(fingerprint), send, recv).await;
            }
            Ok(Ok(Some(req))) => {
                let kind = req.kind();
                let resp = self.handle(req).instrument(tracing::debug_span!("request", kind)).await;
                if let Response::Error(e) = &resp {
                    tracing::debug!(request = kind, error = %e, "request refused");
                }
                resp
            }
            Ok(Ok(None)) => return,
            Ok(Err(IoError::Frame(e))) => {
                tracing::info!(remote = %self.quic.remote_address(), error = %e, "bad frame");
                let _ = recv.stop(quinn::VarInt::from_u32(1));
                ErrorCode::Malformed(e.to_string()).into()
            }
            Ok(Err(IoError::Io(_))) => return,
            Err(_) => ErrorCode::Malformed("no request within 10 s".into()).into(),
        };
        let written = match write_frame(&mut send, &response).await {
            // An answer too big for one frame (a list far longer than any client asks for): the client
            // gets an error rather than a stream that ends without an answer.
            Err(IoError::Frame(e)) => {
                tracing::warn!(error = %e, "an answer too large to send; answered with an internal error");
                write_frame(&mut send, &Response::from(ErrorCode::Internal)).await
            }
            other => other,
        };
        if written.is_ok() {
            let _ = send.finish();
        }
    }

    /// Counts a relay on this connection for as long as the hold lives, and gives the agent a stream more
    /// meanwhile ([`stream_limit`]), so that the relay's stream is not one of the streams its requests need.
    fn hold_relay(&self) -> Result<RelayHold<'_>, ErrorCode> {
        let mut relays = self.relays.lock();
        if *relays >= MAX_RELAYS_PER_DEVICE {
            return Err(ErrorCode::RelayUnavailable(format!(
                "this device already holds {MAX_RELAYS_PER_DEVICE} relays through the broker, its limit; \
                 one must end first"
            )));
        }
        *relays += 1;
        self.set_stream_limit(*relays);
        Ok(RelayHold(self))
    }

    /// The stream limit for this many relays; called under the count's lock, so that two relays ending at
    /// once cannot leave a stale limit.
    fn set_stream_limit(&self, relays: u32) {
        self.quic.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(stream_limit(relays)));
    }

    /// A relay to a friend's device: checked, answered, then spliced until either side ends.
    async fn relay(&self, friend: String, device: Fingerprint, mut send: quinn::SendStream, recv: quinn::RecvStream) {
        let checked = async {
            // Counted from the start: a relay still being set up holds its stream too.
            let hold = self.hold_relay()?;
            let me = {
                let state = self.state.lock().await;
                state.admits(&Request::Relay { username: friend.clone(), fingerprint: device.0 })?;
                state.user().map(str::to_string).unwrap_or_default()
            };
            self.ctx.relay.check_enabled()?;
            let open = async {
                let Some(conn) = self.ctx.table.device_connection(&friend, &device) else {
                    // Served by another node of the cluster: relayed through it.
                    let node = self
                        .ctx
                        .table
                        .sessions(&friend)
                        .iter()
                        .find(|r| r.fingerprint == device)
                        .and_then(|r| r.node());
                    if let (Some(node), Some(nodes)) = (node, &self.ctx.nodes) {
                        let ask = crate::nodes::NodeRelay {
                            from_user: me.clone(),
                            from_device: self.fingerprint.0,
                            to_user: friend.clone(),
                            to_device: device.0,
                        };
                        let agent =
                            crate::channels::speaks_channels(&self.quic).then_some((&self.ctx.channels, &self.quic));
                        return Ok(nodes.open(node, &ask, agent).await?);
                    }
                    return Err(ErrorCode::RelayUnavailable(format!("{friend}'s device is not online")).into());
                };
                // Both agents here and speaking channels: a fast path beside the streams.
                let pair = (crate::channels::speaks_channels(&self.quic) && crate::channels::speaks_channels(&conn))
                    .then(|| self.ctx.channels.open((&me, &self.quic), (&friend, &conn)));
                let theirs_id = pair.as_ref().map_or(0, |p| p.ids.1);
                // The friend's side first, so that the answer says whether the relay really stands.
                Ok((self.ctx.relay.open(&me, self.fingerprint, &conn, theirs_id).await?, pair))
            };
            let theirs = self.ctx.friends.while_friends(&me, &friend, open).await?;
            Ok::<_, RequestError>((me, theirs, hold))
        };
        let (me, (theirs, pair), hold) = match checked.await {
            Ok(ok) => ok,
            Err(e) => {
                let resp = match e {
                    RequestError::User(code) => Response::from(code),
                    other => {
                        tracing::error!(error = %other, "relay check failed");
                        ErrorCode::Internal.into()
                    }
                };
                if write_frame(&mut send, &resp).await.is_ok() {
                    let _ = send.finish();
                }
                return;
            }
        };
        if write_frame(&mut send, &Response::Ok).await.is_err() {
            return;
        }
        if crate::channels::speaks_channels(&self.quic) {
            // Our channel id before any of the friend's bytes: the first record is the broker's.
            if shared::io::write_channel(&mut send, pair.as_ref().map_or(0, |p| p.ids.0)).await.is_err() {
                return;
            }
        }
        self.ctx.relay.splice(&me, &friend, (send, recv), theirs).await;
        // The channel goes with its streams, and the stream limit comes back down.
        drop(pair);
        drop(hold);
    }

    async fn handle(&self, req: Request) -> Response {
        match self.dispatch(req).await {
            Ok(r) => r,
            Err(RequestError::User(code)) => code.into(),
            Err(RequestError::Db(e)) if e.is_unreachable() => {
                self.ctx.db_health.failed(&e);
                ErrorCode::Busy.into()
            }
            Err(e) => {
                tracing::error!(error = %e, "request failed");
                ErrorCode::Internal.into()
            }
        }
    }

    async fn dispatch(&self, req: Request) -> Result<Response, RequestError> {
        let (me, session_id) = {
            let state = self.state.lock().await;
            state.admits(&req)?;
            match &*state {
                SessionState::Online { user, session_id } => (user.clone(), *session_id),
                _ => (String::new(), 0),
            }
        };
        let ctx = &self.ctx;
        let from = self.remote().ip();
        Ok(match req {
            Request::Ping => Response::Pong,
            Request::RevokeToken { token } => {
                ctx.accounts.revoke_token(&token).await?;
                Response::Ok
            }
            Request::Register { username, display_name, password } => {
                let t = ctx.accounts.register(&username, &display_name, &password, from, self.fingerprint.0).await?;
                Response::Token { username, token: t.token, expires_at: t.expires_at }
            }
            Request::Login { username, password } => {
                let t = ctx.accounts.login(&username, &password, from, self.fingerprint.0).await?;
                Response::Token { username, token: t.token, expires_at: t.expires_at }
            }
            Request::Hello { token, local_addrs } => self.hello(&token, local_addrs).await?,
            Request::Logout => {
                let hash = self.token_hash.lock().take();
                if let Some(hash) = hash {
                    ctx.accounts.revoke(&hash).await?;
                }
                *self.state.lock().await = SessionState::Closed;
                self.go_offline(&me, session_id).await;
                tracing::info!(user = me, session = session_id, "logged out");
                Response::Ok
            }
            Request::SearchUsers { query, offset, limit } => {
                Response::Users(ctx.friends.search(&me, &query, offset, limit).await?)
            }
            Request::FriendAdd { username, message } => {
                Response::FriendAdded { now_friends: ctx.friends.add(&me, &username, &message).await? }
            }
            Request::FriendRequests => {
                let (incoming, outgoing) = ctx.friends.requests(&me).await?;
                Response::FriendRequests { incoming, outgoing }
            }
            Request::FriendAccept { username } => {
                ctx.friends.accept(&me, &username).await?;
                Response::Ok
            }
            Request::FriendDecline { username } => {
                ctx.friends.decline(&me, &username).await?;
                Response::Ok
            }
            Request::FriendRemove { username } => {
                ctx.friends.remove(&me, &username).await?;
                Response::Ok
            }
            Request::FriendRemark { username, remark } => {
                ctx.friends.remark(&me, &username, &remark).await?;
                Response::Ok
            }
            Request::Friends => Response::Friends(ctx.friends.list(&me).await?),
            Request::Block { username } => {
                ctx.friends.block(&me, &username).await?;
                Response::Ok
            }
            Request::Unblock { username } => {
                ctx.friends.unblock(&me, &username).await?;
                Response::Ok
            }
            Request::Blocked => Response::Users(ctx.friends.blocked(&me).await?),
            Request::GroupCreate { name } => Response::GroupCreated { group_id: ctx.groups.create(&me, &name).await? },
            Request::GroupInvite { group_id, username } => {
                let are_friends = ctx.friends.are_friends(&me, &username).await?;
                ctx.groups.invite(&me, group_id, &username, are_friends).await?;
                Response::Ok
            }
            Request::GroupInvitations => Response::GroupInvitations(ctx.groups.invitations(&me).await?),
            Request::GroupJoin { group_id } => {
                ctx.groups.join(&me, group_id).await?;
                Response::Ok
            }
            Request::GroupDecline { group_id } => {
                ctx.groups.decline(&me, group_id).await?;
                Response::Ok
            }
            Request::GroupLeave { group_id } => {
                ctx.groups.leave(&me, group_id).await?;
                Response::Ok
            }
            Request::GroupMembers { group_id } => Response::GroupMembers(ctx.groups.members(&me, group_id).await?),
            Request::Groups => Response::Groups(ctx.groups.list(&me).await?),
            Request::GroupPostOnce { group_id, text, post_id } => {
                Response::GroupPosted { seq: ctx.groups.post_once(&me, group_id, &text, post_id).await? }
            }
            Request::GroupPost { group_id, text } => {
                Response::GroupPosted { seq: ctx.groups.post(&me, group_id, &text).await? }
            }
            Request::GroupSync { group_id, after_seq, limit } => {
                Response::GroupMessages(ctx.groups.sync(&me, group_id, after_seq, limit).await?)
            }
            Request::GroupRemove { group_id, username } => {
                ctx.groups.remove(&me, group_id, &username).await?;
                Response::Ok
            }
            Request::GroupRename { group_id, name } => {
                ctx.groups.rename(&me, group_id, &name).await?;
                Response::Ok
            }
            Request::GroupTransfer { group_id, username } => {
                ctx.groups.transfer(&me, group_id, &username).await?;
                Response::Ok
            }
            Request::GroupDisband { group_id } => {
                ctx.groups.disband(&me, group_id).await?;
                Response::Ok
            }
            Request::Lookup { username } => Response::Endpoints(ctx.friends.lookup(&me, session_id, &username).await?),
            Request::SetDisplayName { display_name } => {
                ctx.accounts.set_display_name(&me, &display_name).await?;
                let user = shared::proto::UserInfo { username: me.clone(), display_name };
                ctx.friends.announce_profile(&user).await?;
                Response::Ok
            }
            // Served by `relay`, on the stream it arrives on.
            Request::Relay { .. } => return Err(ErrorCode::Malformed("unexpected relay request".into()).into()),
            Request::Certify { account_key, record } => {
                ctx.devices.certify(&ctx.friends, &self.caller(&me, session_id), account_key, record).await?;
                Response::Ok
            }
            Request::Locate { username } => {
                Response::Located(ctx.devices.locate(&ctx.friends, &self.caller(&me, session_id), &username).await?)
            }
            Request::Devices => {
                let (account_key, devices) = ctx.devices.list(&me).await?;
                Response::Devices { account_key, devices }
            }
            Request::RevokeDevice { revocation } => {
                ctx.devices.revoke(&ctx.friends, &me, revocation).await?;
                Response::Ok
            }
            Request::ResetAccountKey { password, account_key, record } => {
                let caller = self.caller(&me, session_id);
                ctx.devices.reset_key(&ctx.friends, &caller, &password, account_key, record).await?;
                Response::Ok
            }
            Request::LinkOffer { link_id } => {
                ctx.devices.offer(&self.caller(&me, session_id), link_id)?;
                Response::Ok
            }
            Request::LinkClaim { link_id, mut local_addrs } => {
                local_addrs.truncate(MAX_LOCAL_ADDRS);
                let observed = self.remote();
                let (username, device) =
                    match ctx.devices.claim(link_id, self.fingerprint, observed, local_addrs.clone()) {
                        // Offered through another node of the cluster: claimed there.
                        Err(RequestError::User(ErrorCode::UnknownLink)) if let Some(nodes) = &ctx.nodes => {
                            nodes.claim(link_id, self.fingerprint, observed, local_addrs).await?
                        }
                        other => other?,
                    };
                Response::LinkPeer { username, device }
            }
            Request::LinkToken { link_id } => {
                let t = ctx.devices.link_token(&self.caller(&me, session_id), link_id).await?;
                Response::Token { username: me.clone(), token: t.token, expires_at: t.expires_at }
            }
            Request::PublishMailbox { keys } => {
                ctx.mailbox.publish(&self.caller(&me, session_id), keys).await?;
                Response::Ok
            }
            Request::Mailboxes { username } => {
                let (account_key, devices) = ctx.mailbox.mailboxes(&ctx.friends, &me, &username).await?;
                Response::Mailboxes { account_key, devices }
            }
            Request::Deposit { username, device, blob } => {
                ctx.mailbox.deposit(&ctx.friends, &me, &username, device, blob).await?;
                Response::Ok
            }
            Request::Pickup { after, limit } => {
                Response::Deposits(ctx.mailbox.pickup(&self.caller(&me, session_id), after, limit).await?)
            }
            Request::MailboxAck { ids } => {
                ctx.mailbox.ack(&self.caller(&me, session_id), &ids).await?;
                Response::Ok
            }
            Request::ChangePassword { old, new } => {
                let keep = self.token_hash.lock().clone().unwrap_or_default();
                ctx.accounts.change_password(&me, &old, &new, &keep, from, self.fingerprint.0).await?;
                let remaining = ctx.table.close_others(&me, session_id, &Event::SessionRevoked);
                // Friends' agents drop the revoked devices' keys now, not at their next restart.
                let friends = ctx.friends.usernames(&me).await?;
                let event = Event::FriendDevices {
                    username: me.clone(),
                    fingerprints: remaining.iter().map(|f| f.0).collect(),
                };
                ctx.table.push_many(friends.iter().map(String::as_str), &event);
                Response::Ok
            }
        })
    }

    /// Opens the session: checks the token, opens the event stream, adds the table row, tells friends.
    async fn hello(&self, token: &str, mut local_addrs: Vec<std::net::SocketAddr>) -> Result<Response, RequestError> {
        let mut state = self.state.lock().await;
        if *state != SessionState::Anonymous {
            return Err(ErrorCode::AlreadyInSession.into());
        }
        // A node cut off from the rest of the cluster would serve a user whom every other node counts as
        // offline: the agent is sent on to another node (it tries the next on any refusal but a bad token).
        if self.ctx.nodes.as_ref().is_some_and(crate::nodes::Nodes::isolated) {
            return Err(ErrorCode::Busy.into());
        }
        let owner = self.ctx.accounts.check_token(token, self.fingerprint.0).await?;
        local_addrs.truncate(MAX_LOCAL_ADDRS);
        let events = self.quic.open_uni().await.map_err(|_| ErrorCode::Internal)?;
        let (tx, rx) = crate::queue::queue(crate::table::EVENT_QUEUE);
        // Written by this request's task once it has answered (see `serve`): events that come first wait
        // in the queue, so the agent reads its welcome before them.
        *self.writer.lock() = Some(Box::new((events, rx)));
        let observed = self.remote();
        let now = now_ms();
        let (session_id, first) = self.ctx.table.insert(
            &owner.user.username,
            observed,
            local_addrs,
            self.fingerprint,
            now,
            tx,
            self.quic.clone(),
        );
        *state = SessionState::Online { user: owner.user.username.clone(), session_id };
        *self.token_hash.lock() = Some(owner.token_hash);
        drop(state);
        self.span.record("user", owner.user.username.as_str());
        tracing::info!(user = owner.user.username, session = session_id, %observed, device = %self.fingerprint, "online");
        let friends = self.ctx.friends.usernames(&owner.user.username).await?;
        // Friends hear of every device that comes online (their agents show it once, and deliver what they
        // queued for us to the new device); fellow group members only of the first.
        self.ctx.friends.announce_presence(&friends, &owner.user.username, true, now);
        if first {
            self.ctx.groups.announce_presence(&owner.user.username, true, now).await?;
        }
        self.ctx.friends.presence_snapshot(&friends, &owner.user.username, session_id);
        Ok(Response::Welcome { session_id, user: owner.user, observed_addr: observed })
    }

    /// Where the agent's packets come from, as it and its friends know it (IPv4 as IPv4 on a dual-stack
    /// socket): what is recorded, told and rate-limited.
    fn remote(&self) -> std::net::SocketAddr {
        shared::udp::canonical(self.quic.remote_address())
    }

    /// Who this session is, for the device requests.
    fn caller<'a>(&self, user: &'a str, session_id: u64) -> crate::devices::Caller<'a> {
        crate::devices::Caller { user, session_id, device: self.fingerprint, from: self.remote().ip() }
    }

    async fn go_offline(&self, user: &str, session_id: u64) {
        let now = now_ms();
        self.ctx.devices.seen(user, &self.fingerprint, now).await;
        if self.ctx.table.remove(user, session_id, now) {
            tracing::info!(user, session = session_id, "offline");
            match self.ctx.friends.usernames(user).await {
                Ok(friends) => self.ctx.friends.announce_presence(&friends, user, false, now),
                Err(e) => tracing::error!(error = %e, "could not announce offline presence"),
            }
            if let Err(e) = self.ctx.groups.announce_presence(user, false, now).await {
                tracing::error!(error = %e, "could not announce offline presence to groups");
            }
        }
    }
}

/// The most an idle session's event writer keeps of its buffer between writes.
const KEEP_EVENT_BUFFER: usize = 4 * 1024;

async fn write_events(mut send: quinn::SendStream, mut rx: crate::queue::Receiver, quic: quinn::Connection) {
    let mut buf = Vec::new();
    let mut last = false;
    while let Some(frame) = rx.recv().await {
        // Coalesce a burst (a busy group) into one write. An empty frame is the table's "revoked: close
        // after what came before" (`Table::close_others`).
        buf.clear();
        buf.extend_from_slice(&frame);
        last = frame.is_empty();
        while buf.len() < 64 * 1024 && !last {
            match rx.try_recv() {
                Some(more) => {
                    last = more.is_empty();
                    buf.extend_from_slice(&more);
                }
                None => break,
            }
        }
        if send.write_all(&buf).await.is_err() {
            quic.close(quinn::VarInt::from_u32(2), b"event stream failed");
            return;
        }
        // A burst grows the buffer to 64 KiB; a session that goes quiet afterwards should not keep that.
        if buf.capacity() > KEEP_EVENT_BUFFER {
            buf = Vec::new();
        }
        if last {
            break;
        }
    }
    if last {
        // Boxed: a rare end, which would otherwise size the future every idle session holds.
        Box::pin(close_revoked(send, quic)).await;
    }
}

/// Ends a revoked session's event stream, giving the agent the chance to read why before the connection goes.
async fn close_revoked(mut send: quinn::SendStream, quic: quinn::Connection) {
    let _ = send.finish();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), send.stopped()).await;
    quic.close(quinn::VarInt::from_u32(3), b"session revoked");
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_idle_sessions_event_writer_keeps_a_small_future() {
        fn size<A, B, C, F: std::future::Future>(_: impl FnOnce(A, B, C) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        // Every online session holds it for as long as it lasts; rare states go in boxes.
        let size = size(super::write_events);
        assert!(size <= 320, "the event writer holds {size} bytes for a session's whole life");
    }
}
