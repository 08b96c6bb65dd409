//! Logging in (straight to the broker) and watching the agent: `register`, `login`, `status`, `watch`.

use super::*;

/// Register or log in straight to the broker (no agent needed), pinning its identity.
pub(super) async fn authenticate(home: &Home, args: &BrokerArgs, req: Request) -> Result<()> {
    let pinned = args.broker_fingerprint.as_deref().map(str::parse::<Fingerprint>).transpose()?;
    let register = matches!(req, Request::Register { .. });
    let done = sign_in(home, &args.broker, pinned, req).await?;
    if let Some(fp) = done.first_use {
        note!(
            "pinned the broker's identity {fp} (trust on first use); it should match the fingerprint the broker printed at start-up"
        );
    }
    let what = if register { "registered and logged in" } else { "logged in" };
    say!(
        "{what} as {}; start the agent with `peer --home {} up --detach`, or open the app: `peer --home {}`",
        done.username,
        home.dir.display(),
        home.dir.display()
    );
    Ok(())
}

/// What a sign-in did.
pub(crate) struct SignedIn {
    pub(crate) username: String,
    /// The broker's fingerprint, when it was pinned now on first use (to show the user).
    pub(crate) first_use: Option<Fingerprint>,
}

/// Registers or logs in (`req`) at `broker`, pinned to `pinned` or, without it, to the fingerprint already
/// pinned for that broker or (first use) to the one it presents; stores the login in the home.
pub(crate) async fn sign_in(home: &Home, broker: &str, pinned: Option<Fingerprint>, req: Request) -> Result<SignedIn> {
    let identity = home.identity()?;
    let register = matches!(req, Request::Register { .. });
    let addrs = net::resolve_all(broker).await?;
    let pinning = Pinning::new(match pinned {
        Some(fp) => Some(fp),
        None => home.pinned(broker).await?,
    });
    let (username, token) = match net::request_once(&identity, &addrs, pinning.pin(), &req).await? {
        Response::Token { username, token, .. } => (username, token),
        Response::Error(e) => bail!("{}", e.message),
        other => bail!("unexpected answer from the broker: {other:?}"),
    };
    let (fingerprint, first_use) = pinning.settled()?;
    home.save_account(&Account {
        username: username.clone(),
        broker: broker.to_string(),
        broker_fingerprint: fingerprint,
        token,
    })
    .await?;
    if register {
        // The account's identity: made here, on its first device, and never given to the broker.
        home.create_account_key()?;
    }
    Ok(SignedIn { username, first_use })
}

/// How a command that talks to the broker without the agent checks its identity: against a fingerprint
/// already pinned (or given), else on first use whatever it presents, which is then kept.
pub(crate) struct Pinning {
    pinned: Option<Fingerprint>,
    seen: Arc<Mutex<Option<Fingerprint>>>,
}

impl Pinning {
    pub(crate) fn new(pinned: Option<Fingerprint>) -> Self {
        Self { pinned, seen: Arc::default() }
    }

    pub(crate) fn pin(&self) -> ServerPin {
        self.pinned.map(ServerPin::Exact).unwrap_or_else(|| ServerPin::FirstUse(self.seen.clone()))
    }

    /// After a connection: the fingerprint to keep, and it again if it was pinned just now (first use).
    pub(crate) fn settled(&self) -> Result<(Fingerprint, Option<Fingerprint>)> {
        match self.pinned {
            Some(fp) => Ok((fp, None)),
            None => {
                let fp = self.seen.lock().ok().and_then(|s| *s).context("the broker presented no certificate")?;
                Ok((fp, Some(fp)))
            }
        }
    }
}

/// Before `register`/`login` as `username`: a home that holds another account is not silently taken over
/// (its history would show under the new one). With `force`, that account's data here is deleted first.
pub(super) async fn make_room(home: &Home, username: &str, force: bool) -> Result<()> {
    let Some(current) = home.get("username").await? else { return Ok(()) };
    if current == username {
        return Ok(());
    }
    let held = home.held().await?;
    if !force {
        bail!(
            "this home holds {current}'s account ({held}); as {username} it would show {current}'s history. \
             Use another --home for {username}, or add --force to delete {current}'s data here first"
        );
    }
    if control::connect(&home.dir).await.is_ok() {
        bail!("{current}'s agent is running on this home: stop it first (`peer logout` or `peer down`)");
    }
    home.forget_account().await?;
    note!("deleted {current}'s data from this home ({held})");
    Ok(())
}

/// `peer logout`: through the agent (which then stops), or, with no agent running, straight to the broker.
pub(super) async fn logout(home: &Home) -> Result<()> {
    if control::connect(&home.dir).await.is_ok() {
        expect_ok(control_call(home, ControlRequest::Logout).await?)?;
        say!("logged out; the agent has stopped");
        return Ok(());
    }
    let account = home.account().await?;
    let revoked = async {
        let addrs = net::resolve_all(&account.broker).await?;
        let pin = ServerPin::Exact(account.broker_fingerprint);
        let req = Request::RevokeToken { token: account.token.clone() };
        match net::request_once(&home.identity()?, &addrs, pin, &req).await? {
            Response::Ok => Ok(()),
            other => bail!("unexpected answer from the broker: {other:?}"),
        }
    }
    .await;
    home.delete("token").await?;
    match revoked {
        Ok(()) => say!("logged out: the token is revoked at the broker and forgotten here"),
        Err(e) => {
            say!("logged out here; the broker could not be reached to revoke the token ({e:#}): it expires by itself")
        }
    }
    Ok(())
}

pub(super) async fn status(home: &Home, json: bool) -> Result<()> {
    let ControlResponse::Status(s) = control_call(home, ControlRequest::Status).await? else {
        bail!("unexpected answer from the agent")
    };
    if json {
        print_json(&output::status_json(&s, &paths(home).await));
        return Ok(());
    }
    let name = s.display_name.as_deref().map(|d| format!(" ({d})")).unwrap_or_default();
    say!("user:      {}{name}", s.username);
    say!("broker:    {} (fingerprint {})", s.broker, s.broker_fingerprint);
    say!("device:    {}", s.device_fingerprint);
    let since = s.since.map(output::time).unwrap_or_default();
    match (s.online, s.observed_addr) {
        (true, Some(addr)) => {
            say!("online:    yes, since {since}, seen by the broker as {addr}")
        }
        _ => say!(
            "online:    no (reconnecting{})",
            if since.is_empty() { String::new() } else { format!("; lost at {since}") }
        ),
    }
    let locals: Vec<String> = s.local_addrs.iter().map(ToString::to_string).collect();
    say!("local:     {}", locals.join(", "));
    for p in &s.peers {
        say!("peer:      {} via {} path to {}", p.username, p.describe(), p.remote_addr);
    }
    Ok(())
}

pub(super) async fn watch(home: &Home, json: bool) -> Result<()> {
    let mut follow = Follow::start(home).await?;
    let mut out = std::io::stdout();
    loop {
        match follow.next().await? {
            Followed::Event(e) if json => output::json_line_to(&mut out, &output::event_json(&e).to_string()),
            // Several a second per transfer: for scripts (--json) and progress bars, not for reading.
            Followed::Event(AgentEvent::FileProgress { .. }) => {}
            Followed::Event(e) => say!("{}", output::event_line(&e)),
            Followed::Subscribed(s) if json => output::json_line_to(
                &mut out,
                &views::value(views::Watching { username: &s.username, online: s.online }).to_string(),
            ),
            Followed::Subscribed(s) if follow.lost_before => say!("back: watching events for {} again", s.username),
            Followed::Subscribed(s) => say!("watching events for {}; Ctrl-C to stop", s.username),
            Followed::Lost if json => output::json_line_to(&mut out, r#"{"type":"agent_stopped"}"#),
            Followed::Skipped(e) if json => output::json_line_to(
                &mut out,
                &views::value(views::StreamFailure {
                    failure: views::Failure { code: e.code.as_str(), broker_code: None, message: &e.message },
                })
                .to_string(),
            ),
            Followed::Skipped(e) => say!("({e}; `peer status` and `peer history` show where things stand)"),
            Followed::Lost => say!("the agent stopped; waiting for it to come back (Ctrl-C to stop)"),
        }
    }
}

/// What following the agent's events yields.
pub(crate) enum Followed {
    /// (Re)subscribed: nothing from here on is missed.
    Subscribed(shared::control::AgentStatus),
    Event(AgentEvent),
    /// Events were skipped (this watcher fell behind): what was shown may be stale, read it afresh.
    Skipped(shared::control::ControlError),
    /// The agent went away; [`Follow::next`] waits for it to come back.
    Lost,
}

/// A subscription to the agent's events that survives the agent restarting: what `peer watch` and the chat
/// windows use, so that they never go deaf. It ends (with an error saying why) only when the device is
/// logged out.
pub(crate) struct Follow {
    home: Home,
    stream: Option<Box<dyn control::Duplex>>,
    /// The agent went away at least once (for "back" messages).
    pub(crate) lost_before: bool,
}

impl Follow {
    /// Subscribes now; fails if no agent runs (starting to watch an agent that is not there is a mistake).
    pub(crate) async fn start(home: &Home) -> Result<Self> {
        let stream = Self::subscribe(home).await?;
        Ok(Self { home: home.clone(), stream: Some(stream), lost_before: false })
    }

    async fn subscribe(home: &Home) -> Result<Box<dyn control::Duplex>> {
        let mut stream = connect_agent(home).await?;
        write_frame(&mut stream, &ControlRequest::Watch).await?;
        Ok(stream)
    }

    pub(crate) async fn next(&mut self) -> Result<Followed> {
        loop {
            let Some(stream) = &mut self.stream else {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                match Self::subscribe(&self.home).await {
                    Ok(s) => self.stream = Some(s),
                    // Logged out meanwhile: nothing will come back.
                    Err(e) if home_logged_out(&self.home).await => return Err(e),
                    Err(_) => {}
                }
                continue;
            };
            match read_frame::<ControlResponse, _>(stream).await {
                Ok(Some(ControlResponse::Status(s))) => return Ok(Followed::Subscribed(s)),
                Ok(Some(ControlResponse::Event(e))) => return Ok(Followed::Event(e)),
                Ok(Some(ControlResponse::Failed(e))) => return Ok(Followed::Skipped(e)),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    self.stream = None;
                    self.lost_before = true;
                    return Ok(Followed::Lost);
                }
            }
        }
    }
}

async fn home_logged_out(home: &Home) -> bool {
    matches!(home.get("token").await, Ok(None))
}
