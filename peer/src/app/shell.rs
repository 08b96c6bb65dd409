//! The app's async shell: the terminal, keys, the agent's events (followed through restarts), and the
//! actions the state machine asks for. Every input goes through one channel into [`App::handle`]; every
//! action runs on a task of its own and answers through the same channel, so the screen never waits on
//! the network.

use super::store::Store;
use super::{Action, App, Command, ConvKey, Input, Loaded, Reply};
use crate::cli::{broker_call as broker, control_call as agent_call};
use crate::control;
use crate::home::Home;
use anyhow::{Context, Result, bail};
use crossterm::event::{self, Event as TermEvent};
use crossterm::terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use shared::control::{ControlRequest, ControlResponse, TransferState};
use shared::proto::{Request, Response};
use std::io::Write;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Runs the app on this terminal until the user quits. Starts the agent in the background first if none
/// runs for this home (and leaves it running on quit, so friends can still reach the user).
pub(crate) async fn run(home: &Home, open: Option<ConvKey>) -> Result<()> {
    let mut terminal = enter()?;
    let result = async {
        // No account on this device yet: sign up (or in) first, on the same screen.
        let mut notice = None;
        if home.get("token").await?.is_none() {
            match welcome(&mut terminal, home).await? {
                Some(n) => notice = Some(n),
                None => return Ok(()),
            }
        }
        let store = Store { home: home.clone(), me: home.get("username").await?.unwrap_or_default() };
        if control::connect(&home.dir).await.is_err() {
            let pid = crate::spawn::detach(home).await?;
            let started = format!("started the agent (pid {pid}); it stays on after you quit");
            notice = Some(match notice {
                Some(n) => format!("{n}; {started}"),
                None => started,
            });
        }
        event_loop(&mut terminal, store, open, notice).await
    }
    .await;
    leave(&mut terminal);
    result
}

/// The sign-up / log-in form until it succeeds (`Some(what to tell the user)`) or the user leaves (`None`).
async fn welcome(terminal: &mut Term, home: &Home) -> Result<Option<String>> {
    use super::welcome::{Submit, Welcome};
    let mut form = Welcome::new(std::env::var("PEER_BROKER").ok().as_deref());
    loop {
        terminal.draw(|f| super::welcome::draw(&mut form, f))?;
        let k = tokio::task::spawn_blocking(event::read).await??;
        let TermEvent::Key(k) = k else { continue };
        if k.kind == event::KeyEventKind::Release {
            continue;
        }
        let Some(submit) = form.key(k) else { continue };
        let (broker, req) = match submit {
            Submit::Quit => return Ok(None),
            Submit::Register { username, broker, display_name, password } => {
                (broker, Request::Register { username, display_name, password })
            }
            Submit::Login { username, broker, password } => (broker, Request::Login { username, password }),
        };
        // A home that holds someone else's history is not taken over from here (`peer register --force`).
        let wanted = match &req {
            Request::Register { username, .. } | Request::Login { username, .. } => username.clone(),
            _ => String::new(),
        };
        if let Some(current) = home.get("username").await?
            && current != wanted
        {
            form.message =
                Some(format!("this home holds {current}'s history: log in as {current}, or use another --home"));
            continue;
        }
        terminal.draw(|f| super::welcome::draw(&mut form, f))?;
        match crate::cli::sign_in(home, &broker, None, req).await {
            Ok(done) => {
                // Trust on first use is the user's call to check: show the whole fingerprint, once, until
                // they have seen it (a status line would cut it).
                if let Some(fp) = done.first_use {
                    terminal.draw(|f| super::welcome::draw_pinned(f, &fp.to_string()))?;
                    loop {
                        if let TermEvent::Key(k) = tokio::task::spawn_blocking(event::read).await??
                            && k.kind != event::KeyEventKind::Release
                            && matches!(k.code, event::KeyCode::Enter | event::KeyCode::Esc)
                        {
                            break;
                        }
                    }
                    return Ok(Some(format!("welcome, {}", done.username)));
                }
                return Ok(Some(format!("welcome back, {}", done.username)));
            }
            Err(e) => form.message = Some(format!("{e:#}")),
        }
    }
}

type Term = Terminal<CrosstermBackend<std::io::Stdout>>;

fn enter() -> Result<Term> {
    enable_raw_mode().context("this terminal cannot be put in raw mode")?;
    let mut out = std::io::stdout();
    crossterm::execute!(out, EnterAlternateScreen, event::EnableBracketedPaste)?;
    // A panic must not leave the terminal raw.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let _ = disable_raw_mode();
        let _ = crossterm::execute!(std::io::stdout(), event::DisableBracketedPaste, LeaveAlternateScreen);
        hook(info);
    }));
    Ok(Terminal::new(CrosstermBackend::new(out))?)
}

fn leave(terminal: &mut Term) {
    let _ = disable_raw_mode();
    let _ = crossterm::execute!(terminal.backend_mut(), event::DisableBracketedPaste, LeaveAlternateScreen);
    let _ = terminal.show_cursor();
}

async fn event_loop(terminal: &mut Term, store: Store, open: Option<ConvKey>, started: Option<String>) -> Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Input>();
    let mut tasks = JoinSet::new();
    // Keys are read on a thread of their own: crossterm's reader blocks.
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            loop {
                let input = match event::read() {
                    Ok(TermEvent::Key(k)) if k.kind != event::KeyEventKind::Release => Input::Key(k),
                    Ok(TermEvent::Paste(p)) => Input::Paste(p),
                    Ok(TermEvent::Resize(..)) => Input::Now(now_ms()),
                    Ok(_) => continue,
                    Err(_) => return,
                };
                if tx.send(input).is_err() {
                    return;
                }
            }
        });
    }
    tasks.spawn(follow(store.home.clone(), tx.clone()));
    tasks.spawn({
        let (tx, home) = (tx.clone(), store.home.clone());
        async move {
            for tick in 0u64.. {
                if tx.send(Input::Now(now_ms())).is_err() {
                    return;
                }
                // Every few seconds, the agent's state: which friends are connected, direct or relayed.
                if tick % 3 == 0
                    && let Ok(ControlResponse::Status(s)) = agent_call(&home, ControlRequest::Status).await
                    && tx.send(Input::Status(s)).is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    let mut app = App::new(&store.me);
    app.now = now_ms();
    app.notice = started;
    let mut pending = app.start(open);
    loop {
        for action in pending.drain(..) {
            if action == Action::Quit {
                tasks.abort_all();
                return Ok(());
            }
            perform(&mut tasks, &store, action, tx.clone());
        }
        terminal.draw(|f| super::view::draw(&mut app, f))?;
        let Some(first) = rx.recv().await else { return Ok(()) };
        pending.extend(app.handle(first));
        // Whatever else is waiting goes in before the next frame: a burst costs one draw.
        while let Ok(more) = rx.try_recv() {
            pending.extend(app.handle(more));
        }
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done
                && e.is_panic()
            {
                bail!("a task of the app failed: {e}");
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Follows the agent's events, through restarts (the same [`crate::cli::Follow`] as `peer watch`): `Agent`
/// on every (re)subscription, `AgentLost` when it goes. Ends when the device is logged out or the app quits.
async fn follow(home: Home, tx: mpsc::UnboundedSender<Input>) {
    let mut follow = loop {
        match crate::cli::Follow::start(&home).await {
            Ok(f) => break f,
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    // Events skipped (the app fell behind): read everything again, as when the agent comes back.
    let mut last_status = None;
    while let Ok(next) = follow.next().await {
        let input = match next {
            crate::cli::Followed::Subscribed(st) => {
                last_status = Some(st.clone());
                Input::Agent(st)
            }
            crate::cli::Followed::Skipped(_) => match &last_status {
                Some(st) => Input::Agent(st.clone()),
                None => continue,
            },
            crate::cli::Followed::Event(e) => Input::Event(e),
            crate::cli::Followed::Lost => Input::AgentLost,
        };
        if tx.send(input).is_err() {
            return;
        }
    }
}

fn perform(tasks: &mut JoinSet<()>, store: &Store, action: Action, tx: mpsc::UnboundedSender<Input>) {
    let store = store.clone();
    match action {
        Action::Bell => {
            let _ = std::io::stdout().write_all(b"\x07").and_then(|()| std::io::stdout().flush());
        }
        Action::Notify { title, body } => {
            // OSC 9 (and 777 for terminals that prefer it): the text is escaped, so it cannot end the
            // sequence early or smuggle one of its own.
            let (t, b) = (shared::display::escape(&title), shared::display::escape(&body));
            let seq = format!("\x1b]9;{t}: {b}\x07\x1b]777;notify;{t};{b}\x07");
            let _ = std::io::stdout().write_all(seq.as_bytes()).and_then(|()| std::io::stdout().flush());
        }
        Action::Quit => {}
        other => {
            tasks.spawn(async move {
                if let Some(input) = run_action(&store, other).await {
                    let _ = tx.send(input);
                }
            });
        }
    }
}

/// Performs one action; its result, as an input for the app.
pub async fn run_action(store: &Store, action: Action) -> Option<Input> {
    let home = &store.home;
    Some(match action {
        // Fails while the agent has no broker session (starting, reconnecting): it is asked again when the
        // session opens (`AgentEvent::Connected`), so there is nothing to tell the user.
        Action::LoadSidebar => Input::Loaded(sidebar(store).await.ok()?),
        Action::LoadHistory { key, before } => match store.history(&key, before).await {
            Ok(lines) => Input::Loaded(Loaded::History { key, lines, older: before.is_some() }),
            Err(e) => Input::Reply(Reply::Error(format!("{e:#}"))),
        },
        Action::Send { token, to, text } => match agent_call(home, ControlRequest::Send { to, text }).await {
            Ok(ControlResponse::Sent { id, status, detail }) => Input::Reply(Reply::Sent { token, id, status, detail }),
            Ok(other) => Input::Reply(Reply::Failed { token, why: format!("unexpected answer: {other:?}") }),
            Err(e) => Input::Reply(Reply::Failed { token, why: format!("{e:#}") }),
        },
        Action::Post { token, group, text } => match crate::cli::post_once(home, group, &text, || {}).await {
            Ok(seq) => Input::Reply(Reply::Posted { token, seq }),
            Err(e) => Input::Reply(Reply::Failed { token, why: format!("{e:#}") }),
        },
        Action::MarkRead(key) => {
            let up_to = store.newest(&key).await.ok()?;
            if up_to > 0 {
                let _ = agent_call(home, ControlRequest::MarkRead { conversation: key.to_string(), up_to }).await;
            }
            return None;
        }
        Action::Command(c) => Input::Reply(match command(store, c).await {
            Ok(r) => r,
            Err(e) => Reply::Error(format!("{e:#}")),
        }),
        Action::Bell | Action::Notify { .. } | Action::Quit => return None,
    })
}

async fn sidebar(store: &Store) -> Result<Loaded> {
    let home = &store.home;
    let Response::Friends(friends) = broker(home, Request::Friends).await? else { bail!("unexpected answer") };
    let Response::Groups(groups) = broker(home, Request::Groups).await? else { bail!("unexpected answer") };
    let requests = match broker(home, Request::FriendRequests).await? {
        Response::FriendRequests { incoming, .. } => incoming,
        _ => Vec::new(),
    };
    let invitations = match broker(home, Request::GroupInvitations).await? {
        Response::GroupInvitations(i) => i,
        _ => Vec::new(),
    };
    let files = match agent_call(home, ControlRequest::Files).await? {
        ControlResponse::Transfers(t) => t,
        _ => Vec::new(),
    };
    let pins = crate::trust::pins(&home.db).await?;
    Ok(Loaded::Sidebar { friends, groups, unread: store.unread().await?, requests, invitations, files, pins })
}

async fn ok(home: &Home, req: Request, done: String) -> Result<Reply> {
    match broker(home, req).await? {
        Response::Ok => Ok(Reply::Info(done)),
        other => bail!("unexpected answer from the broker: {other:?}"),
    }
}

async fn command(store: &Store, c: Command) -> Result<Reply> {
    let home = &store.home;
    Ok(match c {
        Command::Add { user, message } => {
            match broker(home, Request::FriendAdd { username: user.clone(), message }).await? {
                Response::FriendAdded { now_friends: true } => {
                    Reply::Info(format!("{user} had asked you too: you are friends now"))
                }
                _ => Reply::Info(format!("friend request sent to {user}")),
            }
        }
        Command::Accept(u) => {
            ok(home, Request::FriendAccept { username: u.clone() }, format!("you and {u} are friends now")).await?
        }
        Command::Decline(u) => {
            ok(home, Request::FriendDecline { username: u.clone() }, format!("declined {u}'s request")).await?
        }
        Command::Remove(u) => {
            ok(home, Request::FriendRemove { username: u.clone() }, format!("{u} is no longer your friend")).await?
        }
        Command::Block(u) => ok(home, Request::Block { username: u.clone() }, format!("blocked {u}")).await?,
        Command::Remark { user, alias } => {
            ok(home, Request::FriendRemark { username: user.clone(), remark: alias }, format!("alias for {user} saved"))
                .await?
        }
        Command::Search(text) => {
            let found = crate::history::search(&home.db, &text, 50).await?;
            let lines = found
                .iter()
                .map(|m| {
                    let who = if m.outgoing { store.me.as_str() } else { m.peer.as_str() };
                    format!("{} {who} ({}): {}", crate::output::time(m.sent_at), m.peer, m.text)
                })
                .collect::<Vec<_>>();
            Reply::Listing { title: format!("messages containing {text:?} ({})", lines.len()), lines }
        }
        Command::Users(text) => {
            let req = Request::SearchUsers { query: text.clone(), offset: 0, limit: shared::proto::MAX_SEARCH_RESULTS };
            let Response::Users(users) = broker(home, req).await? else { bail!("unexpected answer") };
            let lines = users.iter().map(|u| format!("{}  (/add {})", crate::output::who(u), u.username)).collect();
            Reply::Listing { title: format!("users matching {text:?}"), lines }
        }
        Command::GroupCreate(name) => match broker(home, Request::GroupCreate { name: name.clone() }).await? {
            Response::GroupCreated { group_id } => {
                Reply::Info(format!("created group {name} (#{group_id}); /invite USER in it"))
            }
            other => bail!("unexpected answer: {other:?}"),
        },
        Command::Invite { group, user } => {
            ok(home, Request::GroupInvite { group_id: group, username: user.clone() }, format!("invited {user}"))
                .await?
        }
        Command::Join(g) => ok(home, Request::GroupJoin { group_id: g }, format!("joined group #{g}")).await?,
        Command::Leave(g) => ok(home, Request::GroupLeave { group_id: g }, format!("left group #{g}")).await?,
        Command::File { to, path } => offer_file(home, &to, &path).await?,
        Command::Files => {
            let ControlResponse::Transfers(list) = agent_call(home, ControlRequest::Files).await? else {
                bail!("unexpected answer")
            };
            let lines = list.iter().map(crate::output::transfer_line).collect();
            Reply::Listing { title: "transfers".into(), lines }
        }
        Command::AcceptFile { id, dir } => {
            let dir = match dir {
                Some(d) => std::fs::canonicalize(&d).with_context(|| format!("no directory {d}"))?,
                None => crate::cli::default_download_dir()?,
            };
            let req = ControlRequest::FileAccept { id, dir: dir.to_string_lossy().to_string() };
            match agent_call(home, req).await? {
                ControlResponse::Transfer(t) if t.state == TransferState::Transferring => {
                    Reply::Info(format!("receiving {} into {}", t.name, dir.display()))
                }
                ControlResponse::Transfer(t) => Reply::Info(crate::output::transfer_line(&t)),
                other => bail!("unexpected answer: {other:?}"),
            }
        }
        Command::Cancel(id) => match agent_call(home, ControlRequest::FileCancel { id }).await? {
            ControlResponse::Transfer(t) => Reply::Info(crate::output::transfer_line(&t)),
            other => bail!("unexpected answer: {other:?}"),
        },
    })
}

/// `/file PATH`: hashes the file (on a blocking thread) and offers it; the transfer then shows in the
/// status line as it moves.
async fn offer_file(home: &Home, to: &str, path: &str) -> Result<Reply> {
    let path = std::fs::canonicalize(path).with_context(|| format!("cannot open {path}"))?;
    let meta = std::fs::metadata(&path)?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let hash = tokio::task::spawn_blocking({
        let path = path.clone();
        move || crate::files::hash_file(&path, |_| {})
    })
    .await??;
    let req = ControlRequest::SendFile {
        to: to.to_string(),
        path: path.to_string_lossy().to_string(),
        name: name.clone(),
        size: meta.len(),
        hash: *hash.as_bytes(),
    };
    match agent_call(home, req).await? {
        ControlResponse::Transfer(t) => Ok(Reply::Info(format!("offered {name} to {to}: {}", t.state.as_str()))),
        other => bail!("unexpected answer: {other:?}"),
    }
}
