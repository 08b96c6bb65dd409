//! Command-line definitions and what each command does.

use crate::control;
use crate::home::{Account, Home};
use crate::{agent, history, net, output, password};
use anyhow::{Context, Result, anyhow, bail};
use certs::Fingerprint;
use certs::verify::ServerPin;
use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use shared::control::{AgentEvent, ControlRequest, ControlResponse, MessageStatus};
use shared::io::{read_frame, write_frame};
use shared::proto::{Event, FriendInfo, MAX_SEARCH_RESULTS, Request, Response};
use shared::validate;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Peer-to-peer messenger.
///
/// Register or log in once against a broker, then run `peer up` (the agent) and use the other commands from
/// another terminal. Every device has its own home directory with its identity, login and chat history.
#[derive(Parser, Debug)]
#[command(name = "peer", version, about, long_about)]
pub(crate) struct Cli {
    /// Home directory of this device (identity, login, database). Default: the platform's data directory.
    #[arg(long, env = "PEER_HOME", global = true)]
    pub(crate) home: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
    /// Create an account on a broker and log this device in.
    Register {
        /// 3-32 characters of a-z, 0-9, '_', '.', '-'.
        username: String,
        #[command(flatten)]
        broker: BrokerArgs,
        /// The name friends see (any Unicode, e.g. 张三). Default: the username.
        #[arg(long)]
        display_name: Option<String>,
    },
    /// Log this device in to an existing account.
    Login {
        username: String,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Run the agent in the foreground: stays online, reconnects by itself, serves the other commands.
    Up {
        /// Local UDP address for the agent's one socket (broker session and friends' connections).
        #[arg(long, env = "PEER_BIND", default_value = "0.0.0.0:0")]
        bind: SocketAddr,
    },
    /// Show who you are, the broker, and whether the agent is online.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Revoke this device's session token at the broker, forget it, and stop the agent.
    Logout,
    /// Stream the agent's events (friend requests, presence, ...), one per line.
    Watch {
        /// JSON Lines: one object per event, with a "type" field.
        #[arg(long)]
        json: bool,
    },
    /// Find other users.
    Users {
        #[command(subcommand)]
        cmd: UsersCmd,
    },
    /// List friends (with no subcommand), or manage them.
    Friends(FriendsArgs),
    /// Your own profile.
    Profile {
        #[command(subcommand)]
        cmd: ProfileCmd,
    },
    /// Send a message to a friend (directly to their device, or queued until you are both online), or with
    /// --group to a group (stored and relayed by the broker).
    Send {
        /// The group to post to, instead of a friend.
        #[arg(long)]
        group: Option<i64>,
        /// USER TEXT, or just TEXT with --group. Any Unicode, up to 16 KiB.
        #[arg(required = true, num_args = 1..=2, value_names = ["USER", "TEXT"])]
        args: Vec<String>,
    },
    /// Interactive chat with a friend, or with --group a group: type to send; /history, /quit.
    Chat {
        #[arg(required_unless_present = "group", conflicts_with = "group")]
        user: Option<String>,
        #[arg(long)]
        group: Option<i64>,
    },
    /// List your groups (with no subcommand), or manage them.
    Groups(GroupsArgs),
    /// Show the conversation with USER or a --group (oldest first), or search every conversation.
    History {
        /// The friend whose conversation to show.
        #[arg(required_unless_present_any = ["search", "group"])]
        user: Option<String>,
        /// A group's messages instead.
        #[arg(long, conflicts_with_all = ["user", "search"])]
        group: Option<i64>,
        /// Messages containing this text, in any conversation.
        #[arg(long, conflicts_with = "user")]
        search: Option<String>,
        /// How many messages (the newest ones).
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Only messages older than this local id (for paging back; ids are in --json output).
        #[arg(long)]
        before: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Change your password; every other device is logged out.
    Passwd {
        /// Read the old and then the new password as two lines of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Args, Debug)]
pub(crate) struct BrokerArgs {
    /// The broker, as HOST:PORT (port 7878 if left out).
    #[arg(long, env = "PEER_BROKER")]
    broker: String,
    /// Pin the broker's SHA-256 fingerprint up front instead of trusting it on first use.
    #[arg(long)]
    broker_fingerprint: Option<String>,
    /// Read the password from stdin (one line) instead of the terminal. Env PEER_PASSWORD also works.
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum UsersCmd {
    /// Users whose username or display name contains TEXT (case-insensitive).
    Search {
        text: String,
        /// Page number, from 1 (50 results a page).
        #[arg(long, default_value_t = 1)]
        page: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct FriendsArgs {
    #[command(subcommand)]
    cmd: Option<FriendsCmd>,
    /// With no subcommand: print the list as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum FriendsCmd {
    /// Ask USER to be your friend.
    Add {
        user: String,
        /// A note shown with the request (at most 256 characters).
        #[arg(long, default_value = "")]
        message: String,
    },
    /// Pending friend requests, to you and from you.
    Requests {
        #[arg(long)]
        json: bool,
    },
    /// Accept USER's friend request.
    Accept { user: String },
    /// Decline USER's friend request.
    Decline { user: String },
    /// End the friendship with USER (on both sides).
    Remove { user: String },
    /// Set your private alias for a friend ("" clears it).
    Remark { user: String, alias: String },
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct GroupsArgs {
    #[command(subcommand)]
    cmd: Option<GroupsCmd>,
    /// With no subcommand: print the list as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum GroupsCmd {
    /// Create a group (you own it); prints its number.
    Create { name: String },
    /// Invite a friend into a group you are in.
    Invite { group: i64, user: String },
    /// Your pending invitations.
    Invitations {
        #[arg(long)]
        json: bool,
    },
    /// Join a group you were invited to.
    Join { group: i64 },
    /// Decline an invitation.
    Decline { group: i64 },
    /// Leave a group.
    Leave { group: i64 },
    /// Owner only: remove a member.
    Remove { group: i64, user: String },
    /// Owner only: rename the group.
    Rename { group: i64, name: String },
    /// Owner only: hand ownership to another member.
    Transfer { group: i64, user: String },
    /// Owner only: delete the group for everyone.
    Disband { group: i64 },
    /// A group's members, with who is online.
    Members {
        group: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ProfileCmd {
    /// Change what others see.
    Set {
        #[arg(long)]
        display_name: String,
    },
}

/// Runs one command.
pub(crate) async fn run(cli: Cli) -> Result<()> {
    let home = Home::open(&Home::resolve(cli.home)?).await?;
    match cli.cmd {
        Cmd::Register { username, broker, display_name } => {
            let display_name = display_name.unwrap_or_else(|| username.clone());
            validate::username(&username)?;
            validate::display_name(&display_name)?;
            let mut pw = password::Source::new(broker.password_stdin)?;
            let password = pw.read("new password (at least 8 characters)", "PEER_PASSWORD", true)?;
            validate::password(&password)?;
            authenticate(&home, &broker, Request::Register { username, display_name, password }).await
        }
        Cmd::Login { username, broker } => {
            validate::username(&username).map_err(|_| anyhow!("unknown user or wrong password"))?;
            let password = password::Source::new(broker.password_stdin)?.read("password", "PEER_PASSWORD", false)?;
            authenticate(&home, &broker, Request::Login { username, password }).await
        }
        Cmd::Up { bind } => agent::run(home, bind).await,
        Cmd::Status { json } => status(&home, json).await,
        Cmd::Logout => {
            expect_ok(control_call(&home, ControlRequest::Logout).await?)?;
            println!("logged out; the agent has stopped");
            Ok(())
        }
        Cmd::Watch { json } => watch(&home, json).await,
        Cmd::Users { cmd: UsersCmd::Search { text, page, json } } => {
            let offset = page.max(1).saturating_sub(1) * MAX_SEARCH_RESULTS;
            let Response::Users(users) =
                broker_call(&home, Request::SearchUsers { query: text, offset, limit: MAX_SEARCH_RESULTS }).await?
            else {
                bail!("unexpected answer from the broker")
            };
            if json {
                print_json(&users.iter().map(output::user_json).collect::<Vec<_>>());
            } else if users.is_empty() {
                println!("no users found");
            } else {
                for u in users {
                    println!("{:<32} {}", u.username, u.display_name);
                }
            }
            Ok(())
        }
        Cmd::Friends(args) => friends(&home, args).await,
        Cmd::Profile { cmd: ProfileCmd::Set { display_name } } => {
            validate::display_name(&display_name)?;
            expect_broker_ok(broker_call(&home, Request::SetDisplayName { display_name }).await?)?;
            println!("display name changed");
            Ok(())
        }
        Cmd::Send { group: Some(group), args } => {
            let [text] = args.as_slice() else { bail!("with --group, give only the text") };
            let seq = group_post(&home, group, text).await?;
            println!("posted to group {group} as #{seq}");
            Ok(())
        }
        Cmd::Send { group: None, args } => {
            let [user, text] = args.as_slice() else { bail!("give a friend and the text: peer send USER TEXT") };
            send(&home, user, text).await
        }
        Cmd::Chat { group: Some(group), .. } => group_chat(&home, group).await,
        Cmd::Chat { user, .. } => chat(&home, &user.unwrap_or_default()).await,
        Cmd::Groups(args) => groups(&home, args).await,
        Cmd::History { group: Some(group), limit, before, json, .. } => {
            let msgs = history::group_conversation(&home.db, group, limit, before).await?;
            if json {
                print_json(&msgs.iter().map(output::group_message_json).collect::<Vec<_>>());
            } else if msgs.is_empty() {
                println!("no messages");
            } else {
                for m in &msgs {
                    println!("{}", output::group_message_line(m));
                }
            }
            Ok(())
        }
        Cmd::History { user, search, limit, before, json, .. } => {
            let me = home.get("username").await?.unwrap_or_default();
            let msgs = match (&user, &search) {
                (_, Some(text)) => history::search(&home.db, text, limit).await?,
                (Some(user), None) => history::conversation(&home.db, user, limit, before).await?,
                (None, None) => bail!("name a friend, or pass --search TEXT"),
            };
            if json {
                print_json(&msgs.iter().map(|m| m.json(&me)).collect::<Vec<_>>());
            } else if msgs.is_empty() {
                println!("no messages");
            } else {
                for m in &msgs {
                    println!("{}", history_line(m, &me));
                }
            }
            Ok(())
        }
        Cmd::Passwd { password_stdin } => {
            let mut pw = password::Source::new(password_stdin)?;
            let old = pw.read("current password", "PEER_PASSWORD", false)?;
            let new = pw.read("new password", "PEER_NEW_PASSWORD", true)?;
            validate::password(&new)?;
            expect_broker_ok(broker_call(&home, Request::ChangePassword { old, new }).await?)?;
            println!("password changed; your other devices were logged out");
            Ok(())
        }
    }
}

/// Register or log in straight to the broker (no agent needed), pinning its identity.
async fn authenticate(home: &Home, args: &BrokerArgs, req: Request) -> Result<()> {
    let identity = home.identity()?;
    let addr = net::resolve(&args.broker).await?;
    let pinned = match &args.broker_fingerprint {
        Some(fp) => Some(fp.parse::<Fingerprint>()?),
        None => home.pinned(&args.broker).await?,
    };
    let seen = Arc::new(Mutex::new(None));
    let pin = pinned.map(ServerPin::Exact).unwrap_or_else(|| ServerPin::FirstUse(seen.clone()));
    let bind: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let endpoint = quinn::Endpoint::client(bind)?;
    let conn = net::connect_broker(&endpoint, &identity, addr, pin).await?;
    let resp = net::request(&conn, &req).await;
    conn.close(quinn::VarInt::from_u32(0), b"done");
    endpoint.wait_idle().await;
    let (username, token) = match resp? {
        Response::Token { username, token, .. } => (username, token),
        Response::Error(e) => bail!("{}", e.message),
        other => bail!("unexpected answer from the broker: {other:?}"),
    };
    let fingerprint = match pinned {
        Some(fp) => fp,
        None => {
            let fp = seen.lock().ok().and_then(|s| *s).context("the broker presented no certificate")?;
            eprintln!(
                "pinned the broker's identity {fp} (trust on first use); it should match the fingerprint the broker printed at start-up"
            );
            fp
        }
    };
    home.save_account(&Account {
        username: username.clone(),
        broker: args.broker.clone(),
        broker_fingerprint: fingerprint,
        token,
    })
    .await?;
    let what = if matches!(req, Request::Register { .. }) { "registered and logged in" } else { "logged in" };
    println!("{what} as {username}; start the agent with `peer --home {} up`", home.dir.display());
    Ok(())
}

async fn control_call(home: &Home, req: ControlRequest) -> Result<ControlResponse> {
    let mut stream = control::connect(&home.dir).await?;
    write_frame(&mut stream, &req).await?;
    read_frame::<ControlResponse, _>(&mut stream)
        .await?
        .ok_or_else(|| anyhow!("the agent closed the connection without answering"))
}

/// Sends a request to the broker through the agent; a broker error becomes this command's error.
async fn broker_call(home: &Home, req: Request) -> Result<Response> {
    match control_call(home, ControlRequest::Broker(req)).await? {
        ControlResponse::Broker(Response::Error(e)) => bail!("{}", e.message),
        ControlResponse::Broker(r) => Ok(r),
        ControlResponse::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer from the agent: {other:?}"),
    }
}

fn expect_ok(resp: ControlResponse) -> Result<()> {
    match resp {
        ControlResponse::Ok => Ok(()),
        ControlResponse::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer from the agent: {other:?}"),
    }
}

fn expect_broker_ok(resp: Response) -> Result<()> {
    match resp {
        Response::Ok => Ok(()),
        other => bail!("unexpected answer from the broker: {other:?}"),
    }
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn status(home: &Home, json: bool) -> Result<()> {
    let ControlResponse::Status(s) = control_call(home, ControlRequest::Status).await? else {
        bail!("unexpected answer from the agent")
    };
    if json {
        print_json(&output::status_json(&s));
        return Ok(());
    }
    let name = s.display_name.as_deref().map(|d| format!(" ({d})")).unwrap_or_default();
    println!("user:      {}{name}", s.username);
    println!("broker:    {} (fingerprint {})", s.broker, s.broker_fingerprint);
    println!("device:    {}", s.device_fingerprint);
    let since = s.since.map(output::time).unwrap_or_default();
    match (s.online, s.observed_addr) {
        (true, Some(addr)) => {
            println!("online:    yes, since {since}, seen by the broker as {addr}")
        }
        _ => println!(
            "online:    no (reconnecting{})",
            if since.is_empty() { String::new() } else { format!("; lost at {since}") }
        ),
    }
    let locals: Vec<String> = s.local_addrs.iter().map(ToString::to_string).collect();
    println!("local:     {}", locals.join(", "));
    for p in &s.peers {
        println!("peer:      {} via {} path to {}", p.username, p.path, p.remote_addr);
    }
    Ok(())
}

async fn watch(home: &Home, json: bool) -> Result<()> {
    let mut stream = control::connect(&home.dir).await?;
    write_frame(&mut stream, &ControlRequest::Watch).await?;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    while let Some(resp) = read_frame::<ControlResponse, _>(&mut stream).await? {
        match resp {
            ControlResponse::Event(e) if json => writeln!(out, "{}", output::event_json(&e))?,
            ControlResponse::Event(e) => writeln!(out, "{}", output::event_line(&e))?,
            ControlResponse::Status(s) if json => writeln!(
                out,
                "{}",
                serde_json::json!({ "type": "watching", "username": s.username, "online": s.online })
            )?,
            ControlResponse::Status(s) => writeln!(out, "watching events for {}; Ctrl-C to stop", s.username)?,
            ControlResponse::Error(e) => eprintln!("peer: {e}"),
            _ => {}
        }
        out.flush()?;
    }
    eprintln!("peer: the agent stopped");
    Ok(())
}

async fn friends(home: &Home, args: FriendsArgs) -> Result<()> {
    let Some(cmd) = args.cmd else {
        let Response::Friends(list) = broker_call(home, Request::Friends).await? else { bail!("unexpected answer") };
        let links = match control_call(home, ControlRequest::Status).await? {
            ControlResponse::Status(s) => s.peers,
            _ => Vec::new(),
        };
        print_friends(&list, &links, args.json);
        return Ok(());
    };
    match cmd {
        FriendsCmd::Add { user, message } => {
            validate::text("message", &message, validate::MAX_REQUEST_MESSAGE_CHARS)?;
            match broker_call(home, Request::FriendAdd { username: user.clone(), message }).await? {
                Response::FriendAdded { now_friends: true } => {
                    println!("{user} had already asked you: you are friends now")
                }
                _ => println!("friend request sent to {user}"),
            }
        }
        FriendsCmd::Requests { json } => {
            let Response::FriendRequests { incoming, outgoing } = broker_call(home, Request::FriendRequests).await?
            else {
                bail!("unexpected answer")
            };
            if json {
                let all: Vec<Value> = incoming
                    .iter()
                    .map(|r| output::request_json(r, "incoming"))
                    .chain(outgoing.iter().map(|r| output::request_json(r, "outgoing")))
                    .collect();
                print_json(&all);
            } else if incoming.is_empty() && outgoing.is_empty() {
                println!("no pending friend requests");
            } else {
                for r in &incoming {
                    println!(
                        "from {:<24} {}  {:?}  (`peer friends accept {}`)",
                        r.user.username,
                        output::time(r.created_at),
                        r.message,
                        r.user.username
                    );
                }
                for r in &outgoing {
                    println!("to   {:<24} {}  {:?}  (waiting)", r.user.username, output::time(r.created_at), r.message);
                }
            }
        }
        FriendsCmd::Accept { user } => {
            expect_broker_ok(broker_call(home, Request::FriendAccept { username: user.clone() }).await?)?;
            println!("you and {user} are friends now");
        }
        FriendsCmd::Decline { user } => {
            expect_broker_ok(broker_call(home, Request::FriendDecline { username: user.clone() }).await?)?;
            println!("declined {user}'s request");
        }
        FriendsCmd::Remove { user } => {
            expect_broker_ok(broker_call(home, Request::FriendRemove { username: user.clone() }).await?)?;
            println!("{user} is no longer your friend");
        }
        FriendsCmd::Remark { user, alias } => {
            validate::text("alias", &alias, validate::MAX_NAME_CHARS)?;
            expect_broker_ok(
                broker_call(home, Request::FriendRemark { username: user.clone(), remark: alias }).await?,
            )?;
            println!("alias for {user} saved");
        }
    }
    Ok(())
}

fn print_friends(list: &[FriendInfo], links: &[shared::control::PeerLink], json: bool) {
    if json {
        print_json(&list.iter().map(|f| output::friend_json(f, links)).collect::<Vec<_>>());
        return;
    }
    if list.is_empty() {
        println!("no friends yet: find people with `peer users search TEXT`, then `peer friends add USER`");
        return;
    }
    for f in list {
        let name = match &f.remark {
            Some(r) => format!("{} ({}, \"{}\")", f.user.username, f.user.display_name, r),
            None => format!("{} ({})", f.user.username, f.user.display_name),
        };
        let presence = match (f.online, f.since) {
            (true, Some(t)) => format!("online since {}", output::time(t)),
            (true, None) => "online".to_string(),
            (false, Some(t)) => format!("offline, last seen {}", output::time(t)),
            (false, None) => "offline".to_string(),
        };
        println!("{name:<48} {presence}");
    }
}

fn history_line(m: &history::Message, me: &str) -> String {
    let who = if m.outgoing { me } else { m.peer.as_str() };
    let status = match m.status.as_str() {
        "delivered" | "received" => String::new(),
        other => format!("  ({other})"),
    };
    format!("[{}] {who}: {}{status}", output::time(m.sent_at), m.text)
}

async fn send(home: &Home, to: &str, text: &str) -> Result<()> {
    validate::username(to).map_err(|_| anyhow!("no such user: {to}"))?;
    shared::peer::check_text(text).map_err(|e| anyhow!(e))?;
    match control_call(home, ControlRequest::Send { to: to.to_string(), text: text.to_string() }).await? {
        ControlResponse::Sent { status: MessageStatus::Delivered, .. } => println!("delivered to {to}"),
        ControlResponse::Sent { status: MessageStatus::Failed, detail, .. } => {
            bail!("not delivered: {}", detail.unwrap_or_default())
        }
        ControlResponse::Sent { detail, .. } => println!(
            "queued: {}; the agent delivers it when you are both online",
            detail.unwrap_or_else(|| format!("{to} is not reachable now"))
        ),
        ControlResponse::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer from the agent: {other:?}"),
    }
    Ok(())
}

/// Line-mode chat, like the seed's command-line client.
async fn chat(home: &Home, friend: &str) -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let me = home.get("username").await?.unwrap_or_default();
    let mut events = control::connect(&home.dir).await?;
    write_frame(&mut events, &ControlRequest::Watch).await?;
    println!("chat with {friend}: type a message and press Enter; /history shows more, /quit leaves");
    for m in history::conversation(&home.db, friend, 10, None).await? {
        println!("{}", history_line(&m, &me));
    }
    let who = friend.to_string();
    let printer = tokio::spawn(async move {
        while let Ok(Some(resp)) = read_frame::<ControlResponse, _>(&mut events).await {
            let line = match &resp {
                ControlResponse::Event(e @ AgentEvent::MessageReceived { from, .. }) if *from == who => {
                    output::event_line(e)
                }
                ControlResponse::Event(e @ AgentEvent::MessageFailed { to, .. }) if *to == who => output::event_line(e),
                ControlResponse::Event(e @ AgentEvent::Broker { event: Event::Presence { username, .. }, .. })
                    if *username == who =>
                {
                    output::event_line(e)
                }
                _ => continue,
            };
            println!("{line}");
        }
        println!("(the agent stopped)");
    });
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let line = line.trim_end();
        match line {
            "" => continue,
            "/quit" | "/exit" => break,
            "/history" => {
                for m in history::conversation(&home.db, friend, 50, None).await? {
                    println!("{}", history_line(&m, &me));
                }
            }
            text => {
                if let Err(e) = send_quiet(home, friend, text).await {
                    println!("! {e}");
                }
            }
        }
    }
    printer.abort();
    Ok(())
}

/// Sends from `peer chat`: silent when delivered, a note when queued.
async fn send_quiet(home: &Home, to: &str, text: &str) -> Result<()> {
    shared::peer::check_text(text).map_err(|e| anyhow!(e))?;
    match control_call(home, ControlRequest::Send { to: to.to_string(), text: text.to_string() }).await? {
        ControlResponse::Sent { status: MessageStatus::Delivered, .. } => Ok(()),
        ControlResponse::Sent { status: MessageStatus::Failed, detail, .. } => {
            bail!("not delivered: {}", detail.unwrap_or_default())
        }
        ControlResponse::Sent { .. } => {
            println!("(queued: {to} is not reachable now; it will be delivered when you are both online)");
            Ok(())
        }
        ControlResponse::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer from the agent: {other:?}"),
    }
}

async fn group_post(home: &Home, group_id: i64, text: &str) -> Result<i64> {
    shared::peer::check_text(text).map_err(|e| anyhow!(e))?;
    match broker_call(home, Request::GroupPost { group_id, text: text.to_string() }).await? {
        Response::GroupPosted { seq } => Ok(seq),
        other => bail!("unexpected answer from the broker: {other:?}"),
    }
}

async fn groups(home: &Home, args: GroupsArgs) -> Result<()> {
    let Some(cmd) = args.cmd else {
        let Response::Groups(list) = broker_call(home, Request::Groups).await? else { bail!("unexpected answer") };
        if args.json {
            let v: Vec<Value> = list
                .iter()
                .map(|g| {
                    serde_json::json!({
                        "group_id": g.group_id, "name": g.name, "owner": g.owner, "members": g.members, "last_seq": g.last_seq,
                    })
                })
                .collect();
            print_json(&v);
        } else if list.is_empty() {
            println!("no groups yet: `peer groups create NAME`, or join one you were invited to");
        } else {
            for g in list {
                println!("{:>6}  {:<32} owner {:<20} {} members", g.group_id, g.name, g.owner, g.members);
            }
        }
        return Ok(());
    };
    match cmd {
        GroupsCmd::Create { name } => {
            let Response::GroupCreated { group_id } = broker_call(home, Request::GroupCreate { name }).await? else {
                bail!("unexpected answer")
            };
            println!("{group_id}");
        }
        GroupsCmd::Invite { group, user } => {
            expect_broker_ok(
                broker_call(home, Request::GroupInvite { group_id: group, username: user.clone() }).await?,
            )?;
            println!("invited {user} to group {group}");
        }
        GroupsCmd::Invitations { json } => {
            let Response::GroupInvitations(list) = broker_call(home, Request::GroupInvitations).await? else {
                bail!("unexpected answer")
            };
            if json {
                let v: Vec<Value> = list
                    .iter()
                    .map(|i| {
                        serde_json::json!({
                            "group_id": i.group_id, "name": i.name, "inviter": i.inviter.username, "created_at": i.created_at,
                        })
                    })
                    .collect();
                print_json(&v);
            } else if list.is_empty() {
                println!("no invitations");
            } else {
                for i in list {
                    println!(
                        "{:>6}  {:<32} from {}  (`peer groups join {}`)",
                        i.group_id, i.name, i.inviter.username, i.group_id
                    );
                }
            }
        }
        GroupsCmd::Join { group } => {
            expect_broker_ok(broker_call(home, Request::GroupJoin { group_id: group }).await?)?;
            println!("joined group {group}");
        }
        GroupsCmd::Decline { group } => {
            expect_broker_ok(broker_call(home, Request::GroupDecline { group_id: group }).await?)?;
            println!("declined the invitation to group {group}");
        }
        GroupsCmd::Leave { group } => {
            expect_broker_ok(broker_call(home, Request::GroupLeave { group_id: group }).await?)?;
            println!("left group {group}");
        }
        GroupsCmd::Remove { group, user } => {
            expect_broker_ok(
                broker_call(home, Request::GroupRemove { group_id: group, username: user.clone() }).await?,
            )?;
            println!("removed {user} from group {group}");
        }
        GroupsCmd::Rename { group, name } => {
            expect_broker_ok(broker_call(home, Request::GroupRename { group_id: group, name: name.clone() }).await?)?;
            println!("group {group} is now called {name}");
        }
        GroupsCmd::Transfer { group, user } => {
            expect_broker_ok(
                broker_call(home, Request::GroupTransfer { group_id: group, username: user.clone() }).await?,
            )?;
            println!("{user} now owns group {group}");
        }
        GroupsCmd::Disband { group } => {
            expect_broker_ok(broker_call(home, Request::GroupDisband { group_id: group }).await?)?;
            println!("group {group} disbanded");
        }
        GroupsCmd::Members { group, json } => {
            let Response::GroupMembers(list) = broker_call(home, Request::GroupMembers { group_id: group }).await?
            else {
                bail!("unexpected answer")
            };
            if json {
                let v: Vec<Value> = list
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "username": m.user.username, "display_name": m.user.display_name, "owner": m.owner, "online": m.online,
                        })
                    })
                    .collect();
                print_json(&v);
            } else {
                for m in list {
                    let role = if m.owner { " (owner)" } else { "" };
                    let presence = if m.online { "online" } else { "offline" };
                    println!("{:<32} {:<24} {presence}{role}", m.user.username, m.user.display_name);
                }
            }
        }
    }
    Ok(())
}

/// Line-mode group chat: the group's messages as they come (they are stored by the agent), your lines posted.
async fn group_chat(home: &Home, group_id: i64) -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let mut events = control::connect(&home.dir).await?;
    write_frame(&mut events, &ControlRequest::Watch).await?;
    println!("group {group_id}: type a message and press Enter; /history shows more, /quit leaves");
    for m in history::group_conversation(&home.db, group_id, 10, None).await? {
        println!("{}", output::group_message_line(&m));
    }
    let printer = tokio::spawn(async move {
        while let Ok(Some(resp)) = read_frame::<ControlResponse, _>(&mut events).await {
            match &resp {
                ControlResponse::Event(AgentEvent::Broker { event: Event::GroupMessage(m), .. })
                    if m.group_id == group_id =>
                {
                    println!("{}", output::group_message_line(m));
                }
                ControlResponse::Event(
                    e @ AgentEvent::Broker { event: Event::GroupPresence { group_id: g, .. }, .. },
                ) if *g == group_id => {
                    println!("{}", output::event_line(e));
                }
                _ => {}
            }
        }
    });
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match line.trim_end() {
            "" => continue,
            "/quit" | "/exit" => break,
            "/history" => {
                for m in history::group_conversation(&home.db, group_id, 50, None).await? {
                    println!("{}", output::group_message_line(&m));
                }
            }
            text => {
                if let Err(e) = group_post(home, group_id, text).await {
                    println!("! {e}");
                }
            }
        }
    }
    printer.abort();
    Ok(())
}
