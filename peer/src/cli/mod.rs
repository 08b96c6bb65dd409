//! Command-line definitions, the dispatch of each command, and the helpers every command uses to reach
//! the agent. What each group of commands does lives beside it: [`account`] (register, login, status,
//! watch), [`friends`], [`chat`] (one-to-one messages and history), [`groups`].

mod account;
mod chat;
mod devices;
mod files;
mod friends;
mod groups;

pub(crate) use account::sign_in;
pub(crate) use account::{Follow, Followed};
use account::{authenticate, logout, make_room, status, watch};
use chat::{chat, history_line, send};
use devices::{devices, export_key, link, link_from_backup, reset_key, verify};
pub(crate) use files::default_download_dir;
use files::{files, send_file};
use friends::friends;
pub(crate) use groups::post_once;
use groups::{group_chat, group_post, groups};

use crate::control;
use crate::home::{Account, Home};
use crate::output::{note, say};
use crate::reads::{self, Conversation};
use crate::views;
use crate::{agent, history, net, output, password};
use anyhow::{Context, Result, anyhow, bail};
use certs::Fingerprint;
use certs::verify::ServerPin;
use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use shared::control::{AgentEvent, ControlError, ControlErrorCode, ControlRequest, ControlResponse, MessageStatus};
use shared::io::{read_frame, write_frame};
use shared::proto::{Event, FriendInfo, MAX_SEARCH_RESULTS, Request, Response};
use shared::validate;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// Without a command on a terminal: the full-screen app.
    #[command(subcommand)]
    pub(crate) cmd: Option<Cmd>,
}

impl Cli {
    /// Whether this run draws the full-screen app (and so must not log to the terminal).
    /// Whether the output was asked for as JSON (errors then go to stdout as JSON too).
    pub(crate) fn wants_json() -> bool {
        std::env::args_os().skip(1).any(|a| a == "--json")
    }

    pub(crate) fn is_app(&self) -> bool {
        matches!(self.cmd, None | Some(Cmd::Chat { .. })) && interactive()
    }
}

/// Both ends of the conversation with the user are a terminal.
fn interactive() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
    /// Create an account on a broker and log this device in.
    Register {
        /// 3-32 characters of a-z, 0-9, '_', '.', '-'.
        username: String,
        #[command(flatten)]
        broker: BrokerArgs,
        /// Replace another account this home holds (its history here is deleted).
        #[arg(long)]
        force: bool,
        /// The name friends see (any Unicode, e.g. 张三). Default: the username.
        #[arg(long)]
        display_name: Option<String>,
    },
    /// Log this device in to an existing account.
    Login {
        username: String,
        #[command(flatten)]
        broker: BrokerArgs,
        /// Replace another account this home holds (its history here is deleted).
        #[arg(long)]
        force: bool,
    },
    /// Run the agent in the foreground: stays online, reconnects by itself, serves the other commands.
    Up {
        /// Local UDP address for the agent's one socket (broker session and friends' connections). By
        /// default every interface on a port of the system's choosing: IPv4 (0.0.0.0:0), or IPv6 and IPv4
        /// together ([::]:0) when a broker has an IPv6 address.
        #[arg(long, env = "PEER_BIND")]
        bind: Option<SocketAddr>,
        /// Accept every file friends send into this directory, without asking.
        #[arg(long, env = "PEER_AUTO_ACCEPT_FILES")]
        auto_accept_files: Option<PathBuf>,
        /// Refuse offers of files larger than this (e.g. 500M, 10G).
        #[arg(long, env = "PEER_MAX_FILE_SIZE", default_value = "100G", value_parser = parse_size)]
        max_file_size: u64,
        /// Reach friends only through the broker's relay, never directly (for networks that block UDP
        /// between peers). Chats and files stay end-to-end encrypted; the broker must allow relaying.
        #[arg(long, env = "PEER_RELAY_ONLY")]
        relay_only: bool,
        /// Start the agent in the background (logging to HOME/agent.log) and return once it runs; it keeps
        /// running after this terminal closes. `peer down` stops it.
        #[arg(long)]
        detach: bool,
    },
    /// Stop the agent (you stay logged in; `peer up` starts it again). Friends see you go offline.
    Down,
    /// Show who you are, the broker, and whether the agent is online.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Revoke this device's session token at the broker, forget it, and stop the agent.
    Logout,
    /// Conversations with unread messages, most recent first (reading one with `peer history` or in the app
    /// marks it read).
    Unread {
        #[arg(long)]
        json: bool,
    },
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
        /// USER TEXT..., or just TEXT... with --group: the words are joined with spaces (quote them to keep
        /// your own spacing). Any Unicode, up to 16 KiB.
        #[arg(required = true, num_args = 1.., value_names = ["USER", "TEXT"])]
        args: Vec<String>,
    },
    /// Chat with a friend, or with --group a group: the app opened on that conversation when this is a
    /// terminal; otherwise line mode for scripts (each stdin line is sent, each message printed as a line).
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
    /// Send a file to a friend, directly: shows progress and exits 0 once the friend has verified every
    /// byte (BLAKE3). Interrupted transfers resume where they stopped; running the same command again
    /// continues one.
    SendFile {
        user: String,
        path: PathBuf,
        /// The name the friend sees. Default: the file's own name.
        #[arg(long)]
        name: Option<String>,
        /// Return once the offer is made (printing the transfer id) instead of following the transfer.
        #[arg(long)]
        no_wait: bool,
    },
    /// List file transfers in both directions (with no subcommand), or accept, decline or cancel one.
    Files(FilesArgs),
    /// Change your password; every other device is logged out.
    Passwd {
        /// Read the old and then the new password as two lines of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Your devices (with no subcommand), or link, rename or revoke one. Friends accept only devices your
    /// account key certified: a password alone does not make a device one of yours.
    Devices(DevicesArgs),
    /// Make this device one of your account's: type the code `peer devices link` shows on a linked device,
    /// compare the words both show, and confirm there. The history is copied over. Or restore the account
    /// key from a backup (`--from-backup FILE`, then your password logs in).
    Link {
        /// The code from `peer devices link`.
        #[arg(required_unless_present = "from_backup")]
        code: Option<String>,
        #[command(flatten)]
        broker: BrokerArgs,
        /// What to call this device in `peer devices`. Default: its host name.
        #[arg(long)]
        name: Option<String>,
        /// A key backup made by `peer account export-key`.
        #[arg(long, conflicts_with = "code")]
        from_backup: Option<PathBuf>,
    },
    /// A friend's safety number: compare it with theirs (in person or by a call) to know no one, the broker
    /// included, stands between you. Messages to a friend whose key changed wait until you accept it.
    Verify {
        user: String,
        /// The numbers matched: mark the friend verified.
        #[arg(long, conflicts_with = "accept_new_key")]
        confirm: bool,
        /// Trust the friend's changed key (after checking with them that they reset it).
        #[arg(long)]
        accept_new_key: bool,
        #[arg(long)]
        json: bool,
    },
    /// Your account key: back it up, or replace it when every device holding it is lost.
    Account {
        #[command(subcommand)]
        cmd: AccountCmd,
    },
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct DevicesArgs {
    #[command(subcommand)]
    cmd: Option<DevicesCmd>,
    /// With no subcommand: print the list as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum DevicesCmd {
    /// Show a one-time code for a new device (valid for 5 minutes), then confirm it when it connects.
    Link,
    /// Rename a device (DEVICE: its id prefix, 4+ hex digits, or its name).
    Rename { device: String, name: String },
    /// Cut a device off now: its sessions end, friends drop its key, and only linking again brings it back.
    Revoke { device: String },
}

#[derive(Subcommand, Debug)]
pub(crate) enum AccountCmd {
    /// Write the account key to FILE, sealed with a passphrase (argon2id + ChaCha20-Poly1305).
    ExportKey {
        file: PathBuf,
        /// Read the passphrase from stdin (one line) instead of the terminal.
        #[arg(long)]
        passphrase_stdin: bool,
    },
    /// Make a new account key with your password, when every device holding the old one is lost: every
    /// other device is cut off, and every friend sees a key-change warning until they accept it.
    ResetKey {
        /// Read the password from stdin (one line).
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Args, Debug)]
pub(crate) struct BrokerArgs {
    /// The broker, as HOST:PORT (port 7878 if left out). Brokers that serve the same users (one database,
    /// one identity) may be listed, separated by commas: the agent moves to the next when one stops answering.
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
    /// Block USER: any friendship and requests between you end, and their requests to you are dropped
    /// from now on (they are not told).
    Block { user: String },
    /// Lift a block.
    Unblock { user: String },
    /// The users you blocked.
    Blocked {
        #[arg(long)]
        json: bool,
    },
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

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct FilesArgs {
    #[command(subcommand)]
    cmd: Option<FilesCmd>,
    /// With no subcommand: print the list as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum FilesCmd {
    /// Accept an offered file (ID: any unique prefix of the transfer id, as `peer files` shows it).
    Accept {
        id: String,
        /// Where to save it. Default: your Downloads directory (else the current one).
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Decline an offered file.
    Decline { id: String },
    /// Stop a transfer, sending or receiving; the receiver's partial data is deleted.
    Cancel { id: String },
}

fn parse_size(s: &str) -> Result<u64, String> {
    shared::files::parse_size(s)
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
    let Some(cmd) = cli.cmd else {
        if !interactive() {
            bail!("`peer` alone opens the app on a terminal; here, give a command (`peer --help` lists them)");
        }
        return crate::app::shell::run(&home, None).await;
    };
    match cmd {
        Cmd::Register { username, broker, display_name, force } => {
            make_room(&home, &username, force).await?;
            let display_name = display_name.unwrap_or_else(|| username.clone());
            validate::username(&username)?;
            validate::display_name(&display_name)?;
            let mut pw = password::Source::new(broker.password_stdin)?;
            let password = pw.read("new password (at least 8 characters)", "PEER_PASSWORD", true)?;
            validate::password(&password)?;
            authenticate(&home, &broker, Request::Register { username, display_name, password }).await
        }
        Cmd::Login { username, broker, force } => {
            make_room(&home, &username, force).await?;
            validate::username(&username).map_err(|_| anyhow!("unknown user or wrong password"))?;
            let password = password::Source::new(broker.password_stdin)?.read("password", "PEER_PASSWORD", false)?;
            authenticate(&home, &broker, Request::Login { username, password }).await
        }
        Cmd::Up { detach: true, .. } => {
            let pid = crate::spawn::detach(&home).await?;
            say!("the agent runs in the background (pid {pid}); it logs to {}", home.dir.join("agent.log").display());
            Ok(())
        }
        Cmd::Down => {
            expect_ok(control_call(&home, ControlRequest::Stop).await?)?;
            crate::spawn::wait_gone(&home).await?;
            say!("the agent has stopped; you stay logged in (`peer up --detach` starts it again)");
            Ok(())
        }
        Cmd::Up { bind, auto_accept_files, max_file_size, relay_only, detach: false } => {
            let auto_accept = match auto_accept_files {
                Some(d) => Some(
                    std::fs::canonicalize(&d)
                        .with_context(|| format!("--auto-accept-files: no directory {}", d.display()))?,
                ),
                None => None,
            };
            let policy = crate::files::FilePolicy { auto_accept, max_size: max_file_size };
            agent::run(home, bind, policy, relay_only).await
        }
        Cmd::Status { json } => status(&home, json).await,
        Cmd::Logout => logout(&home).await,
        Cmd::Watch { json } => watch(&home, json).await,
        Cmd::Users { cmd: UsersCmd::Search { text, page, json } } => {
            if text.trim().is_empty() {
                bail!("give some text to search for: part of a username or display name");
            }
            let offset = page.max(1).saturating_sub(1) * MAX_SEARCH_RESULTS;
            let Response::Users(users) =
                broker_call(&home, Request::SearchUsers { query: text, offset, limit: MAX_SEARCH_RESULTS }).await?
            else {
                bail!("unexpected answer from the broker")
            };
            print_list(&users, json, "no users found", output::user_json, |u| {
                format!("{} {}", output::pad(&u.username, 32), u.display_name)
            });
            Ok(())
        }
        Cmd::Friends(args) => friends(&home, args).await,
        Cmd::Profile { cmd: ProfileCmd::Set { display_name } } => {
            validate::display_name(&display_name)?;
            broker_ok(&home, Request::SetDisplayName { display_name }).await?;
            say!("display name changed");
            Ok(())
        }
        Cmd::Send { group: Some(group), args } => {
            let seq = group_post(&home, group, &args.join(" ")).await?;
            say!("posted to group {group} as #{seq}");
            Ok(())
        }
        Cmd::Send { group: None, args } => {
            let [user, words @ ..] = args.as_slice() else { bail!("give a friend and the text: peer send USER TEXT") };
            if words.is_empty() {
                bail!("give the text after the friend: peer send {user} TEXT");
            }
            send(&home, user, &words.join(" ")).await
        }
        Cmd::Chat { group, user } if interactive() => {
            let key = match (group, user) {
                (Some(g), _) => crate::app::ConvKey::Group(g),
                (None, u) => crate::app::ConvKey::Friend(u.unwrap_or_default()),
            };
            crate::app::shell::run(&home, Some(key)).await
        }
        Cmd::Chat { group: Some(group), .. } => group_chat(&home, group).await,
        Cmd::Chat { user, .. } => chat(&home, &user.unwrap_or_default()).await,
        Cmd::Groups(args) => groups(&home, args).await,
        Cmd::History { group: Some(group), limit, before, json, .. } => {
            let msgs = history::group_conversation(&home.db, group, limit, before).await?;
            print_list(&msgs, json, "no messages", output::group_message_json, output::group_message_line);
            if before.is_none() {
                seen(&home, Conversation::Group(group)).await;
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
            print_list(&msgs, json, "no messages", |m| m.json(&me), |m| history_line(m, &me));
            if let (Some(user), None, None) = (user, &search, before) {
                seen(&home, Conversation::Friend(user)).await;
            }
            Ok(())
        }
        Cmd::Unread { json } => unread(&home, json).await,
        Cmd::SendFile { user, path, name, no_wait } => send_file(&home, &user, &path, name, !no_wait).await,
        Cmd::Files(args) => files(&home, args).await,
        Cmd::Devices(args) => devices(&home, args).await,
        Cmd::Link { from_backup: Some(file), broker, .. } => link_from_backup(&home, &file, &broker).await,
        Cmd::Link { code, broker, name, .. } => link(&home, &code.unwrap_or_default(), &broker, name).await,
        Cmd::Verify { user, confirm, accept_new_key, json } => {
            let action = match (confirm, accept_new_key) {
                (true, _) => shared::control::VerifyAction::Confirm,
                (_, true) => shared::control::VerifyAction::AcceptNewKey,
                _ => shared::control::VerifyAction::Show,
            };
            verify(&home, &user, action, json).await
        }
        Cmd::Account { cmd: AccountCmd::ExportKey { file, passphrase_stdin } } => {
            export_key(&home, &file, passphrase_stdin).await
        }
        Cmd::Account { cmd: AccountCmd::ResetKey { password_stdin } } => reset_key(&home, password_stdin).await,
        Cmd::Passwd { password_stdin } => {
            let mut pw = password::Source::new(password_stdin)?;
            let old = pw.read("current password", "PEER_PASSWORD", false)?;
            let new = pw.read("new password", "PEER_NEW_PASSWORD", true)?;
            validate::password(&new)?;
            broker_ok(&home, Request::ChangePassword { old, new }).await?;
            say!("password changed; your other devices were logged out");
            Ok(())
        }
    }
}

/// What to do when the running agent and this command do not understand each other: after an upgrade, the
/// agent started before it is still the old program (the control protocol carries no version of its own).
const OTHER_VERSION: &str =
    "the running agent may be from another version of peer: restart it with `peer down`, then `peer up --detach`";

/// One request to the agent; the agent's refusal becomes this command's error, a [`ControlError`] (whose
/// code `--json` prints).
pub(crate) async fn control_call(home: &Home, req: ControlRequest) -> Result<ControlResponse> {
    let mut stream = connect_agent(home).await?;
    write_frame(&mut stream, &req).await?;
    let answer = match read_frame::<ControlResponse, _>(&mut stream).await {
        Err(shared::io::IoError::Frame(e)) => bail!("the agent's answer cannot be read ({e}); {OTHER_VERSION}"),
        other => other?,
    };
    match answer {
        Some(ControlResponse::Failed(e)) => Err(e.into()),
        // An agent from before typed errors.
        Some(ControlResponse::Error(message)) => Err(ControlError { code: ControlErrorCode::Other, message }.into()),
        Some(resp) => Ok(resp),
        // An agent closes a control connection whose request it cannot read, as one from a newer `peer` is.
        None => bail!("the agent closed the connection without answering; {OTHER_VERSION}"),
    }
}

/// The agent's control channel; on a home with no login, what to do first (starting an agent would not
/// help: it needs a login too).
async fn connect_agent(home: &Home) -> Result<Box<dyn control::Duplex>> {
    if home.get("token").await?.is_none() {
        let who = home.get("username").await?;
        match who {
            Some(u) => bail!("{u} is logged out on this device: run `peer login {u} --broker HOST:PORT`"),
            None => bail!(
                "no account on this device yet: `peer register USER --broker HOST:PORT` makes one, \
                 `peer login USER --broker HOST:PORT` uses an existing one"
            ),
        }
    }
    control::connect(&home.dir).await
}

/// The broker refused a request: its code is kept for `--json`.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.message)]
pub(crate) struct BrokerRefused(pub(crate) shared::proto::ErrorBody);

/// A failed command as `--json` prints it (on stdout, so that a script reads one JSON document whatever
/// happened): `{"error": {"code": ..., "message": ...}}`, with the broker's own code when the broker
/// refused.
pub(crate) fn error_json(e: &anyhow::Error) -> Value {
    let message = format!("{e:#}");
    let control = e.chain().find_map(|c| c.downcast_ref::<ControlError>());
    let broker = e.chain().find_map(|c| c.downcast_ref::<BrokerRefused>());
    let (code, broker_code) = match (control, broker) {
        (Some(c), _) => (c.code.as_str(), None),
        (None, Some(BrokerRefused(b))) => ("broker", Some(&b.code)),
        (None, None) => ("other", None),
    };
    views::value(views::Failed { error: views::Failure { code, broker_code, message: &message } })
}

/// Sends a request to the broker through the agent; a broker error becomes this command's error.
pub(crate) async fn broker_call(home: &Home, req: Request) -> Result<Response> {
    match control_call(home, ControlRequest::Broker(req)).await? {
        ControlResponse::Broker(Response::Error(e)) => Err(BrokerRefused(e).into()),
        ControlResponse::Broker(r) => Ok(r),
        other => bail!("unexpected answer from the agent: {other:?}"),
    }
}

fn expect_ok(resp: ControlResponse) -> Result<()> {
    match resp {
        ControlResponse::Ok => Ok(()),
        other => bail!("unexpected answer from the agent: {other:?}"),
    }
}

/// How each friend's device has been reached (an agent from before path histories answers nothing here,
/// and the listings leave the fields out).
async fn paths(home: &Home) -> Vec<shared::control::PathHistory> {
    match control_call(home, ControlRequest::Paths).await {
        Ok(ControlResponse::Paths(p)) => p,
        _ => Vec::new(),
    }
}

/// Marks a conversation read up to its newest message, when an agent runs to record it (the history itself
/// needs no agent, so this is best effort and silent).
async fn seen(home: &Home, conversation: Conversation) {
    let Ok(up_to) = reads::newest(&home.db, &conversation).await else { return };
    if up_to > 0 && control::connect(&home.dir).await.is_ok() {
        let _ = control_call(home, ControlRequest::MarkRead { conversation: conversation.to_string(), up_to }).await;
    }
}

/// Unread counts by friend and by group, from this device's history.
async fn unread_counts(home: &Home) -> Result<Vec<reads::Unread>> {
    let me = home.get("username").await?.unwrap_or_default();
    reads::all(&home.db, &me).await
}

/// `peer unread`.
async fn unread(home: &Home, json: bool) -> Result<()> {
    let mut list: Vec<reads::Unread> = unread_counts(home).await?.into_iter().filter(|u| u.unread > 0).collect();
    list.sort_by_key(|u| std::cmp::Reverse(u.last_at));
    print_list(
        &list,
        json,
        "nothing unread",
        |u| match &u.conversation {
            Conversation::Friend(name) => {
                views::value(views::Unread::Friend { username: name, unread: u.unread, last_at: u.last_at })
            }
            Conversation::Group(g) => {
                views::value(views::Unread::Group { group_id: *g, unread: u.unread, last_at: u.last_at })
            }
        },
        |u| {
            let n = output::count(u.unread, "unread message", "unread messages");
            match &u.conversation {
                Conversation::Friend(name) => format!("{name:<24} {n}  (`peer history {name}`)"),
                Conversation::Group(g) => format!("group {g:<18} {n}  (`peer history --group {g}`)"),
            }
        },
    );
    Ok(())
}

/// A broker request whose only good answer is `Ok`.
async fn broker_ok(home: &Home, req: Request) -> Result<()> {
    match broker_call(home, req).await? {
        Response::Ok => Ok(()),
        other => bail!("unexpected answer from the broker: {other:?}"),
    }
}

fn print_json<T: serde::Serialize>(v: &T) {
    output::json_line_to(&mut std::io::stdout(), &serde_json::to_string_pretty(v).unwrap_or_default());
}

/// A listing: a JSON array with `--json`; otherwise `empty` when there is nothing, else a line per item.
fn print_list<T>(items: &[T], json: bool, empty: &str, to_json: impl Fn(&T) -> Value, line: impl Fn(&T) -> String) {
    if json {
        print_json(&items.iter().map(to_json).collect::<Vec<_>>());
    } else if items.is_empty() {
        say!("{empty}");
    } else {
        for item in items {
            say!("{}", line(item));
        }
    }
}
