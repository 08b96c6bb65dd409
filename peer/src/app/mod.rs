//! The full-screen app (`peer` on a terminal): a sidebar of conversations, the open conversation, an input
//! line with real editing, a status bar.
//!
//! # Layout
//! - this module: the app's state as a pure state machine. [`App::handle`] takes an [`Input`] (a key, an
//!   agent event, data loaded, an answer to a request) and returns [`Action`]s for the shell to perform; it
//!   never touches a terminal, a socket or the clock (time comes in with the inputs), so every rule is a
//!   unit test.
//! - [`view`]: draws the state on any ratatui backend (the terminal, or a test buffer). Everything a remote
//!   party wrote is escaped there (`shared::display`).
//! - [`shell`]: the thin async shell: terminal set-up, reading keys, following the agent's events through
//!   restarts, performing actions, feeding the results back in.
//! - [`store`]: the reads the app makes of the device's database (history pages, unread counts).
//! - [`welcome`]: the first screen on a device with no account (register or log in).

pub mod shell;
pub mod store;
pub mod view;
pub mod welcome;

use ratatui_textarea::TextArea;
use shared::control::{AgentEvent, AgentStatus, MessageStatus, Transfer, TransferState};
use shared::proto::{Event, FriendInfo, FriendRequestInfo, GroupInfo, GroupInvitation, GroupMessage, Millis};
use std::collections::VecDeque;

pub use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// Messages loaded per page of history.
pub const PAGE: i64 = 200;

/// A conversation: with a friend, or in a group (the agent's read marks name them the same way).
pub use crate::reads::Conversation as ConvKey;

/// One entry of the sidebar.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv {
    pub key: ConvKey,
    /// The name shown: a friend's remark, else display name (username when they match); a group's name.
    pub title: String,
    /// Friends only: online now.
    pub online: Option<bool>,
    pub unread: i64,
    pub last_at: Millis,
    /// Friends only: what this device knows of their account key.
    pub trust: KeyTrust,
}

/// A friend's account key as the sidebar marks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyTrust {
    /// Pinned (or not seen yet), not compared.
    #[default]
    Unverified,
    /// Safety numbers compared (`peer verify --confirm`).
    Verified,
    /// The broker serves another key: messages to them are held.
    Changed,
}

/// One message (or notice) in the open conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Direct messages: the global id (`None` while our own is being sent).
    pub id: Option<String>,
    /// Order within the conversation: local id (direct) or sequence number (group); 0 for a notice or an
    /// unsent message.
    pub pos: i64,
    pub at: Millis,
    pub sender: String,
    pub text: String,
    pub own: bool,
    /// Own direct messages: sending, delivered, queued, failed (with why).
    pub state: Option<String>,
    /// A group notice (joins, leaves) or a presence note: shown dimmed, in brackets.
    pub notice: bool,
    /// Ties an own message to the answer of the request that sends it.
    pub token: u64,
}

/// What the app is showing over the conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Normal,
    /// The fuzzy conversation switcher (Ctrl-K).
    Switcher {
        query: String,
        selected: usize,
    },
    /// The key list (`?`, `/help`).
    Help,
    /// A destructive action waiting for `y`.
    Confirm {
        prompt: String,
        action: Box<Action>,
    },
    /// A listing (users found, transfers, search results) shown until Esc.
    Listing {
        title: String,
        lines: Vec<String>,
    },
}

/// Everything that can happen to the app.
#[derive(Debug, Clone)]
pub enum Input {
    Key(KeyEvent),
    Paste(String),
    /// (Re)connected to the agent.
    Agent(AgentStatus),
    AgentLost,
    /// The agent's state now (polled: live connections and their paths change without events).
    Status(AgentStatus),
    Event(AgentEvent),
    Loaded(Loaded),
    Reply(Reply),
    /// The clock, for day separators and "since" (a tick a second at most).
    Now(Millis),
}

/// Data the shell read for the app.
#[derive(Debug, Clone)]
pub enum Loaded {
    Sidebar {
        friends: Vec<FriendInfo>,
        groups: Vec<GroupInfo>,
        unread: Vec<(ConvKey, i64, Millis)>,
        requests: Vec<FriendRequestInfo>,
        invitations: Vec<GroupInvitation>,
        files: Vec<Transfer>,
        /// Friends' pinned keys: (verified, changed), by username.
        pins: std::collections::HashMap<String, (bool, bool)>,
    },
    /// A page of history, oldest first; `older`: a page before what is shown.
    History { key: ConvKey, lines: Vec<Line>, older: bool },
}

/// The outcome of an action that asked something of the agent or the broker.
#[derive(Debug, Clone)]
pub enum Reply {
    Sent {
        token: u64,
        id: String,
        status: MessageStatus,
        detail: Option<String>,
    },
    Posted {
        token: u64,
        seq: i64,
    },
    Failed {
        token: u64,
        why: String,
    },
    /// Something to tell the user (the result of a command).
    Info(String),
    Error(String),
    Listing {
        title: String,
        lines: Vec<String>,
    },
}

/// What the shell should do for the app.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    LoadSidebar,
    LoadHistory {
        key: ConvKey,
        before: Option<i64>,
    },
    Send {
        token: u64,
        to: String,
        text: String,
    },
    Post {
        token: u64,
        group: i64,
        text: String,
    },
    /// Mark the conversation read up to its newest message.
    MarkRead(ConvKey),
    /// A command to run (the shell answers with a [`Reply`]).
    Command(Command),
    Bell,
    /// A desktop notification (OSC 9/777) for a message in a conversation that is not open.
    Notify {
        title: String,
        body: String,
    },
    Quit,
}

/// A `/` command, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Add { user: String, message: String },
    Accept(String),
    Decline(String),
    Remove(String),
    Block(String),
    Remark { user: String, alias: String },
    Search(String),
    Users(String),
    GroupCreate(String),
    Invite { group: i64, user: String },
    Join(i64),
    Leave(i64),
    File { to: String, path: String },
    Files,
    AcceptFile { id: String, dir: Option<String> },
    Cancel(String),
}

/// The app's whole state.
pub struct App {
    pub me: String,
    pub convs: Vec<Conv>,
    /// The open conversation (an index into `convs` follows from the key).
    pub open: Option<ConvKey>,
    /// The loaded part of the open conversation, oldest first (older pages are put in front).
    pub lines: VecDeque<Line>,
    /// More history exists before the first loaded line.
    pub more_above: bool,
    /// A page of older history has been asked for and not yet arrived.
    pub loading: bool,
    /// Where the view is: `None` follows the newest message; `Some((i, hidden))` has message `i` at the
    /// bottom with its last `hidden` rows below the edge. An anchor, not a row count from the end, so a
    /// frame lays out only what is on screen however far back it is.
    pub anchor: Option<(usize, usize)>,
    /// Columns the conversation pane had at the last draw (message heights depend on it).
    pub page_width: usize,
    pub input: TextArea<'static>,
    pub sent_history: Vec<String>,
    history_pos: Option<usize>,
    pub mode: Mode,
    pub status: Option<AgentStatus>,
    pub agent_connected: bool,
    /// The agent went away at least once (so its return is news).
    agent_lost: bool,
    pub requests: Vec<FriendRequestInfo>,
    pub invitations: Vec<GroupInvitation>,
    pub offers: Vec<Transfer>,
    /// The last thing to tell the user, shown in the status bar.
    pub notice: Option<String>,
    pub now: Millis,
    next_token: u64,
    /// Rows the conversation pane showed at the last draw (a page for PageUp/PageDown).
    pub page_rows: usize,
}

impl App {
    pub fn new(me: &str) -> Self {
        let mut input = TextArea::default();
        input.set_placeholder_text("type a message, or / for commands (/help)");
        Self {
            me: me.to_string(),
            convs: Vec::new(),
            open: None,
            lines: VecDeque::new(),
            more_above: false,
            loading: false,
            anchor: None,
            page_width: 80,
            input,
            sent_history: Vec::new(),
            history_pos: None,
            mode: Mode::Normal,
            status: None,
            agent_connected: false,
            agent_lost: false,
            requests: Vec::new(),
            invitations: Vec::new(),
            offers: Vec::new(),
            notice: None,
            now: 0,
            next_token: 1,
            page_rows: 20,
        }
    }

    /// The sidebar in display order: by last activity, newest first; then by title.
    pub fn sorted(&self) -> Vec<&Conv> {
        let mut v: Vec<&Conv> = self.convs.iter().collect();
        v.sort_by(|a, b| b.last_at.cmp(&a.last_at).then_with(|| a.title.cmp(&b.title)));
        v
    }

    /// What opening the app on a conversation (`peer chat bob`) asks for.
    pub fn start(&mut self, open: Option<ConvKey>) -> Vec<Action> {
        let mut out = vec![Action::LoadSidebar];
        if let Some(key) = open {
            out.extend(self.open_conv(key));
        }
        out
    }

    pub fn handle(&mut self, input: Input) -> Vec<Action> {
        match input {
            Input::Key(k) => self.key(k),
            Input::Paste(text) => {
                self.input.insert_str(text);
                Vec::new()
            }
            Input::Agent(status) => {
                let back = !self.agent_connected && self.agent_lost;
                self.agent_connected = true;
                self.status = Some(status);
                if back {
                    self.notice = Some("the agent is back".into());
                }
                // Whatever happened meanwhile: read it all again.
                let mut out = vec![Action::LoadSidebar];
                if let Some(key) = self.open.clone() {
                    out.push(Action::LoadHistory { key, before: None });
                }
                out
            }
            Input::Status(status) => {
                self.status = Some(status);
                Vec::new()
            }
            Input::AgentLost => {
                self.agent_connected = false;
                self.agent_lost = true;
                self.notice = Some("the agent stopped; waiting for it (`peer up --detach` starts it)".into());
                Vec::new()
            }
            Input::Event(e) => self.event(e),
            Input::Loaded(l) => self.loaded(l),
            Input::Reply(r) => self.reply(r),
            Input::Now(t) => {
                self.now = t;
                Vec::new()
            }
        }
    }

    fn conv_mut(&mut self, key: &ConvKey) -> Option<&mut Conv> {
        self.convs.iter_mut().find(|c| &c.key == key)
    }

    fn open_conv(&mut self, key: ConvKey) -> Vec<Action> {
        self.open = Some(key.clone());
        self.lines.clear();
        self.anchor = None;
        self.more_above = false;
        self.loading = true;
        self.mode = Mode::Normal;
        if let Some(c) = self.conv_mut(&key) {
            c.unread = 0;
        }
        vec![Action::LoadHistory { key: key.clone(), before: None }, Action::MarkRead(key)]
    }

    /// Moves through the sidebar: `step` > 0 down, < 0 up.
    fn cycle(&mut self, step: isize) -> Vec<Action> {
        let keys: Vec<ConvKey> = self.sorted().iter().map(|c| c.key.clone()).collect();
        if keys.is_empty() {
            return Vec::new();
        }
        let at = self.open.as_ref().and_then(|k| keys.iter().position(|x| x == k));
        let next = match at {
            Some(i) => (i as isize + step).rem_euclid(keys.len() as isize) as usize,
            None => 0,
        };
        self.open_conv(keys[next].clone())
    }

    /// The next conversation with unread messages (`forward`: down the sidebar from the top; else from the
    /// bottom up).
    fn next_unread(&mut self, forward: bool) -> Vec<Action> {
        let mut list = self.sorted();
        if !forward {
            list.reverse();
        }
        let key = list.iter().find(|c| c.unread > 0 && Some(&c.key) != self.open.as_ref()).map(|c| c.key.clone());
        match key {
            Some(k) => self.open_conv(k),
            None => {
                self.notice = Some("nothing unread".into());
                Vec::new()
            }
        }
    }

    fn key(&mut self, k: KeyEvent) -> Vec<Action> {
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        let alt = k.modifiers.contains(KeyModifiers::ALT);
        if ctrl && matches!(k.code, KeyCode::Char('c') | KeyCode::Char('q')) {
            return vec![Action::Quit];
        }
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Normal => {}
            Mode::Help | Mode::Listing { .. } => return Vec::new(),
            Mode::Confirm { action, .. } => {
                return if matches!(k.code, KeyCode::Char('y') | KeyCode::Char('Y')) {
                    vec![*action]
                } else {
                    self.notice = Some("cancelled".into());
                    Vec::new()
                };
            }
            Mode::Switcher { query, selected } => return self.switcher_key(k, query, selected),
        }
        match k.code {
            KeyCode::Char('k') if ctrl => {
                self.mode = Mode::Switcher { query: String::new(), selected: 0 };
                Vec::new()
            }
            KeyCode::Enter if alt => {
                self.input.insert_newline();
                Vec::new()
            }
            KeyCode::Enter => self.submit(),
            KeyCode::Tab if self.input_text().starts_with("/file ") => {
                self.complete_path();
                Vec::new()
            }
            KeyCode::Tab => self.next_unread(true),
            KeyCode::BackTab => self.next_unread(false),
            KeyCode::Down if alt => self.cycle(1),
            KeyCode::Up if alt => self.cycle(-1),
            KeyCode::PageUp => self.scroll_by(self.page_rows.max(1) as isize),
            KeyCode::PageDown => self.scroll_by(-(self.page_rows.max(1) as isize)),
            KeyCode::Esc => {
                self.notice = None;
                Vec::new()
            }
            KeyCode::Char('?') if self.input.is_empty() => {
                self.mode = Mode::Help;
                Vec::new()
            }
            KeyCode::Up if self.input.lines().len() <= 1 && (self.input.is_empty() || self.history_pos.is_some()) => {
                self.recall(-1);
                Vec::new()
            }
            KeyCode::Down if self.history_pos.is_some() => {
                self.recall(1);
                Vec::new()
            }
            _ => {
                self.input.input(k);
                Vec::new()
            }
        }
    }

    fn switcher_key(&mut self, k: KeyEvent, mut query: String, mut selected: usize) -> Vec<Action> {
        match k.code {
            KeyCode::Esc => return Vec::new(),
            KeyCode::Enter => {
                return match self.matches(&query).get(selected) {
                    Some(c) => {
                        let key = c.key.clone();
                        self.open_conv(key)
                    }
                    None => Vec::new(),
                };
            }
            KeyCode::Down => selected += 1,
            KeyCode::Up => selected = selected.saturating_sub(1),
            KeyCode::Backspace => {
                query.pop();
                selected = 0;
            }
            KeyCode::Char(c) => {
                query.push(c);
                selected = 0;
            }
            _ => {}
        }
        let n = self.matches(&query).len();
        self.mode = Mode::Switcher { query, selected: selected.min(n.saturating_sub(1)) };
        Vec::new()
    }

    /// Conversations whose title (or username) holds the query's letters in order, best first.
    pub fn matches(&self, query: &str) -> Vec<&Conv> {
        let q = query.to_lowercase();
        let mut hits: Vec<(usize, &Conv)> = self
            .sorted()
            .into_iter()
            .filter_map(|c| {
                let hay = match &c.key {
                    ConvKey::Friend(u) => format!("{} {u}", c.title).to_lowercase(),
                    ConvKey::Group(g) => format!("{} {g}", c.title).to_lowercase(),
                };
                fuzzy_score(&hay, &q).map(|s| (s, c))
            })
            .collect();
        hits.sort_by_key(|(s, _)| *s);
        hits.into_iter().map(|(_, c)| c).collect()
    }

    /// Rows message `i` takes on screen (its day separator included).
    fn height(&self, i: usize) -> usize {
        view::height(&self.lines, i, self.page_width)
    }

    /// Whether the view follows the newest message.
    pub fn at_bottom(&self) -> bool {
        self.anchor.is_none()
    }

    /// Scrolls by `rows` (> 0: back in time), walking message heights only over the rows passed.
    fn scroll_by(&mut self, rows: isize) -> Vec<Action> {
        let Some(last) = self.lines.len().checked_sub(1) else { return Vec::new() };
        let (mut i, hidden) = self.anchor.unwrap_or((last, 0));
        let mut hidden = hidden as isize + rows;
        while hidden < 0 && i < last {
            i += 1;
            hidden += self.height(i) as isize;
        }
        while i > 0 && hidden >= self.height(i) as isize {
            hidden -= self.height(i) as isize;
            i -= 1;
        }
        let hidden = hidden.clamp(0, self.height(i).saturating_sub(1) as isize) as usize;
        // Back at the newest row going down: follow new messages again.
        self.anchor = if i == last && hidden == 0 && rows < 0 { None } else { Some((i, hidden)) };
        let mut out = Vec::new();
        // Near the top of what is loaded: fetch the page before it.
        if rows > 0
            && self.more_above
            && !self.loading
            && i < self.page_rows.max(1) * 2
            && let (Some(key), Some(first)) = (self.open.clone(), self.lines.iter().find(|l| l.pos > 0))
        {
            self.loading = true;
            out.push(Action::LoadHistory { key, before: Some(first.pos) });
        }
        if self.anchor.is_none()
            && let Some(key) = self.open.clone()
        {
            out.push(Action::MarkRead(key));
        }
        out
    }

    fn recall(&mut self, step: isize) {
        if self.sent_history.is_empty() {
            return;
        }
        let last = self.sent_history.len() as isize - 1;
        let pos = match self.history_pos {
            None if step < 0 => last,
            None => return,
            Some(p) => p as isize + step,
        };
        if pos > last {
            self.history_pos = None;
            self.set_input("");
            return;
        }
        let pos = pos.clamp(0, last) as usize;
        self.history_pos = Some(pos);
        let text = self.sent_history[pos].clone();
        self.set_input(&text);
    }

    fn set_input(&mut self, text: &str) {
        let mut t = TextArea::new(text.split('\n').map(str::to_string).collect());
        t.set_placeholder_text("type a message, or / for commands (/help)");
        t.move_cursor(ratatui_textarea::CursorMove::Bottom);
        t.move_cursor(ratatui_textarea::CursorMove::End);
        self.input = t;
    }

    pub fn input_text(&self) -> String {
        self.input.lines().join("\n")
    }

    fn complete_path(&mut self) {
        let text = self.input_text();
        let Some(partial) = text.strip_prefix("/file ") else { return };
        if let Some(done) = complete_path(partial) {
            self.set_input(&format!("/file {done}"));
        }
    }

    fn submit(&mut self) -> Vec<Action> {
        let text = self.input_text();
        if text.trim().is_empty() {
            return Vec::new();
        }
        self.set_input("");
        self.history_pos = None;
        if self.sent_history.last() != Some(&text) {
            self.sent_history.push(text.clone());
        }
        if let Some(cmd) = text.strip_prefix('/') {
            return self.command(cmd.trim());
        }
        let Some(key) = self.open.clone() else {
            self.notice = Some("open a conversation first: Ctrl-K, or /open USER".into());
            return Vec::new();
        };
        let token = self.next_token;
        self.next_token += 1;
        self.anchor = None;
        // Shown at once as "sending"; the answer (or the stored copy, for a group) settles it.
        self.lines.push_back(Line {
            id: None,
            pos: 0,
            at: self.now,
            sender: self.me.clone(),
            text: text.clone(),
            own: true,
            state: Some("sending".into()),
            notice: false,
            token,
        });
        self.touch(&key);
        match key {
            ConvKey::Friend(to) => vec![Action::Send { token, to, text }],
            ConvKey::Group(group) => vec![Action::Post { token, group, text }],
        }
    }

    fn touch(&mut self, key: &ConvKey) {
        let now = self.now;
        if let Some(c) = self.conv_mut(key) {
            c.last_at = c.last_at.max(now);
        }
    }

    fn command(&mut self, cmd: &str) -> Vec<Action> {
        let (name, rest) = cmd.split_once(' ').map_or((cmd, ""), |(a, b)| (a, b.trim()));
        let arg = |i: usize| rest.split_whitespace().nth(i).map(str::to_string);
        let open_group = match &self.open {
            Some(ConvKey::Group(g)) => Some(*g),
            _ => None,
        };
        let open_friend = match &self.open {
            Some(ConvKey::Friend(u)) => Some(u.clone()),
            _ => None,
        };
        let cmd = match (name, arg(0)) {
            ("help", _) => {
                self.mode = Mode::Help;
                return Vec::new();
            }
            ("quit" | "q", _) => return vec![Action::Quit],
            ("open", Some(target)) => {
                let key = match target.parse::<i64>() {
                    Ok(g) => ConvKey::Group(g),
                    Err(_) => match self.convs.iter().find(|c| c.title.eq_ignore_ascii_case(&target)) {
                        Some(c) => c.key.clone(),
                        None => ConvKey::Friend(target),
                    },
                };
                if !self.convs.iter().any(|c| c.key == key) {
                    self.notice =
                        Some(format!("no conversation {}: friends and groups only (/add USER)", cmd_target(&key)));
                    return Vec::new();
                }
                return self.open_conv(key);
            }
            ("add", Some(user)) => {
                let message = rest.split_once(' ').map(|(_, m)| m.trim().to_string()).unwrap_or_default();
                Command::Add { user, message }
            }
            ("accept", Some(user)) => Command::Accept(user),
            ("decline", Some(user)) => Command::Decline(user),
            ("remove", Some(user)) => {
                self.mode = Mode::Confirm {
                    prompt: format!("remove {user} from your friends? (y/n)"),
                    action: Box::new(Action::Command(Command::Remove(user))),
                };
                return Vec::new();
            }
            ("block", Some(user)) => {
                self.mode = Mode::Confirm {
                    prompt: format!("block {user}? Their requests to you are dropped from now on (y/n)"),
                    action: Box::new(Action::Command(Command::Block(user))),
                };
                return Vec::new();
            }
            ("remark", Some(user)) => {
                let alias = rest.split_once(' ').map(|(_, a)| a.trim().to_string()).unwrap_or_default();
                Command::Remark { user, alias }
            }
            ("search", Some(_)) => Command::Search(rest.to_string()),
            ("users", Some(_)) => Command::Users(rest.to_string()),
            ("group", Some(sub)) if sub == "create" && arg(1).is_some() => {
                Command::GroupCreate(rest.trim_start_matches("create").trim().to_string())
            }
            ("invite", Some(user)) => match open_group {
                Some(group) => Command::Invite { group, user },
                None => {
                    self.notice = Some("/invite works in a group: open the group first".into());
                    return Vec::new();
                }
            },
            ("join", Some(g)) => match g.parse() {
                Ok(g) => Command::Join(g),
                Err(_) => {
                    self.notice = Some("/join takes the group's number (see the invitations)".into());
                    return Vec::new();
                }
            },
            ("leave", _) => match open_group {
                Some(group) => {
                    self.mode = Mode::Confirm {
                        prompt: format!("leave group {group}? (y/n)"),
                        action: Box::new(Action::Command(Command::Leave(group))),
                    };
                    return Vec::new();
                }
                None => {
                    self.notice = Some("/leave works in a group: open the group first".into());
                    return Vec::new();
                }
            },
            ("file", Some(_)) => match open_friend {
                Some(to) => Command::File { to, path: rest.to_string() },
                None => {
                    self.notice = Some("/file sends to the open friend: open a friend first".into());
                    return Vec::new();
                }
            },
            ("files", _) => Command::Files,
            ("accept-file", Some(id)) => Command::AcceptFile { id, dir: arg(1) },
            ("cancel", Some(id)) => Command::Cancel(id),
            _ => {
                self.notice = Some(format!("unknown or incomplete command /{name}: /help lists them"));
                return Vec::new();
            }
        };
        vec![Action::Command(cmd)]
    }

    fn event(&mut self, e: AgentEvent) -> Vec<Action> {
        match e {
            AgentEvent::MessageReceived { from, id, text, sent_at, at } => {
                let key = ConvKey::Friend(from.clone());
                let line = Line {
                    id: Some(id),
                    pos: 0,
                    at: sent_at,
                    sender: from.clone(),
                    text: text.clone(),
                    own: false,
                    state: None,
                    notice: false,
                    token: 0,
                };
                self.arrived(key, line, at, &from, &text)
            }
            AgentEvent::MessageDelivered { to, id, .. } => {
                self.set_state(&ConvKey::Friend(to), &id, "delivered");
                Vec::new()
            }
            AgentEvent::MessageSent { to, id, .. } => {
                self.set_state(&ConvKey::Friend(to), &id, "sent");
                Vec::new()
            }
            AgentEvent::MessageCopied { to, id, text, sent_at, delivered, at } => {
                // Sent from another of this account's devices: shown as ours, without a bell.
                let key = ConvKey::Friend(to);
                self.touch_at(&key, at);
                if self.open.as_ref() == Some(&key) && !self.lines.iter().any(|l| l.id.as_deref() == Some(id.as_str()))
                {
                    let me = self.status.as_ref().map(|s| s.username.clone()).unwrap_or_default();
                    self.lines.push_back(Line {
                        id: Some(id),
                        pos: 0,
                        at: sent_at,
                        sender: me,
                        text,
                        own: true,
                        state: Some(if delivered { "delivered" } else { "sent" }.to_string()),
                        notice: false,
                        token: 0,
                    });
                }
                Vec::new()
            }
            AgentEvent::MessageFailed { to, id, reason, .. } => {
                self.set_state(&ConvKey::Friend(to), &id, &format!("failed: {reason}"));
                Vec::new()
            }
            AgentEvent::Connected { .. } | AgentEvent::Disconnected { .. } => {
                let online = matches!(e, AgentEvent::Connected { .. });
                if let Some(s) = &mut self.status {
                    s.online = online;
                }
                // A new broker session: friends, groups and requests may have changed meanwhile.
                if online { vec![Action::LoadSidebar] } else { Vec::new() }
            }
            AgentEvent::FileOffered { transfer, at } => {
                let text = format!(
                    "{} offers {} ({}): /accept-file {}",
                    transfer.peer,
                    transfer.name,
                    shared::files::format_size(transfer.size),
                    transfer.id.get(..8).unwrap_or(&transfer.id)
                );
                self.note_in(&ConvKey::Friend(transfer.peer.clone()), at, &text);
                self.notice = Some(text);
                self.offers.retain(|t| t.id != transfer.id);
                self.offers.push(transfer);
                vec![Action::Bell]
            }
            AgentEvent::FileUpdated { transfer, at } => {
                if transfer.state.is_final() {
                    let text = match (transfer.state, &transfer.path) {
                        (TransferState::Done, Some(p)) if !transfer.outgoing => {
                            format!("{}: received, saved as {p}", transfer.name)
                        }
                        (TransferState::Done, _) => {
                            format!("{}: delivered, verified by {}", transfer.name, transfer.peer)
                        }
                        (s, _) => format!(
                            "{}: {}",
                            transfer.name,
                            transfer.error.clone().unwrap_or_else(|| s.as_str().into())
                        ),
                    };
                    self.note_in(&ConvKey::Friend(transfer.peer.clone()), at, &text);
                    self.notice = Some(text);
                }
                self.offers.retain(|t| t.id != transfer.id);
                if transfer.state == TransferState::Offered {
                    self.offers.push(transfer);
                }
                Vec::new()
            }
            AgentEvent::FileProgress { id, bytes, size, .. } => {
                let pct = bytes.saturating_mul(100).checked_div(size).unwrap_or(100);
                self.notice = Some(format!("transfer {} {pct}%", id.get(..8).unwrap_or(&id)));
                Vec::new()
            }
            // Read here or in another window: that conversation's count goes (no reload of everything: the
            // app itself marks every message it shows, so this comes once per message in the open one).
            AgentEvent::Read { conversation, .. } => {
                if let Ok(key) = conversation.parse::<ConvKey>()
                    && let Some(c) = self.conv_mut(&key)
                {
                    c.unread = 0;
                }
                Vec::new()
            }
            AgentEvent::Broker { event, at } => self.broker_event(event, at),
            AgentEvent::KeyChanged { username, at } => {
                let text = format!(
                    "{username}'s account key CHANGED: messages to them are held. Compare safety numbers \
                     (peer verify {username}), then peer verify {username} --accept-new-key"
                );
                self.note_in(&ConvKey::Friend(username), at, &text);
                self.notice = Some(text);
                vec![Action::Bell, Action::LoadSidebar]
            }
            AgentEvent::LinkRequest { device_name, words, .. } => {
                self.notice = Some(format!(
                    "device \"{device_name}\" asks to be linked (words: {words}): confirm in `peer devices link`"
                ));
                Vec::new()
            }
            AgentEvent::Linked { .. } | AgentEvent::LinkFailed { .. } => Vec::new(),
        }
    }

    fn broker_event(&mut self, event: Event, at: Millis) -> Vec<Action> {
        match event {
            Event::Presence { username, online, .. } => {
                if let Some(c) = self.conv_mut(&ConvKey::Friend(username)) {
                    c.online = Some(online);
                }
                Vec::new()
            }
            Event::GroupMessage(m) => self.group_message(m, at),
            Event::GroupPresence { group_id, username, online, at } => {
                let what = if online { "上线 (online)" } else { "下线 (offline)" };
                self.note_in(&ConvKey::Group(group_id), at, &format!("{username} {what}"));
                Vec::new()
            }
            Event::FriendRequest { from, .. } => {
                self.notice = Some(format!("friend request from {} (/accept {})", from.username, from.username));
                vec![Action::LoadSidebar, Action::Bell]
            }
            Event::GroupInvited(i) => {
                self.notice = Some(format!("{} invited you to {} (/join {})", i.inviter.username, i.name, i.group_id));
                vec![Action::LoadSidebar, Action::Bell]
            }
            Event::FriendAccepted { .. } | Event::FriendRemoved { .. } | Event::FriendProfile { .. } => {
                vec![Action::LoadSidebar]
            }
            Event::SessionRevoked => {
                self.notice = Some("this device was logged out (password changed elsewhere): peer login".into());
                Vec::new()
            }
            Event::PeerIncoming { .. }
            | Event::PeerCalling { .. }
            | Event::FriendDevices { .. }
            | Event::AccountKeyChanged { .. }
            | Event::DeviceRevoked { .. }
            | Event::LinkClaimed { .. }
            | Event::MailWaiting => Vec::new(),
        }
    }

    fn group_message(&mut self, m: GroupMessage, at: Millis) -> Vec<Action> {
        let key = ConvKey::Group(m.group_id);
        let own = m.sender == self.me;
        if self.open.as_ref() == Some(&key) && own && !m.system {
            // Our own post: the line we showed while sending becomes this one.
            if let Some(l) = self.lines.iter_mut().find(|l| l.own && l.pos == 0 && l.text == m.text) {
                l.pos = m.seq;
                l.state = None;
                return Vec::new();
            }
            if self.lines.iter().any(|l| l.pos == m.seq) {
                return Vec::new();
            }
        }
        let line = Line {
            id: None,
            pos: m.seq,
            at: m.at,
            sender: m.sender.clone(),
            text: m.text.clone(),
            own,
            state: None,
            notice: m.system,
            token: 0,
        };
        if m.system || own {
            if self.open.as_ref() == Some(&key) {
                self.lines.push_back(line);
            }
            self.touch_at(&key, at);
            return Vec::new();
        }
        let title =
            self.convs.iter().find(|c| c.key == key).map_or_else(|| format!("#{}", m.group_id), |c| c.title.clone());
        self.arrived(key, line, at, &format!("{} in {title}", m.sender), &m.text)
    }

    /// A notice line in a conversation, if it is the open one (transfers, presence in groups).
    fn note_in(&mut self, key: &ConvKey, at: Millis, text: &str) {
        if self.open.as_ref() == Some(key) {
            self.lines.push_back(notice_line(at, text));
        }
    }

    fn touch_at(&mut self, key: &ConvKey, at: Millis) {
        if let Some(c) = self.conv_mut(key) {
            c.last_at = c.last_at.max(at);
        }
    }

    /// A message from someone else: shown if its conversation is open (and marked read when the view is
    /// at the bottom), otherwise counted unread, with a bell and a notification.
    fn arrived(&mut self, key: ConvKey, line: Line, at: Millis, who: &str, text: &str) -> Vec<Action> {
        if !self.convs.iter().any(|c| c.key == key) {
            // A conversation the sidebar does not know yet (a new friend): read everything again.
            return vec![Action::LoadSidebar];
        }
        self.touch_at(&key, at);
        if self.open.as_ref() == Some(&key) {
            self.lines.push_back(line);
            if self.at_bottom() {
                return vec![Action::MarkRead(key)];
            }
            return Vec::new();
        }
        if let Some(c) = self.conv_mut(&key) {
            c.unread += 1;
        }
        vec![Action::Bell, Action::Notify { title: who.to_string(), body: text.chars().take(120).collect() }]
    }

    fn set_state(&mut self, key: &ConvKey, id: &str, state: &str) {
        if self.open.as_ref() != Some(key) {
            return;
        }
        if let Some(l) = self.lines.iter_mut().find(|l| l.id.as_deref() == Some(id)) {
            l.state = Some(state.to_string());
        }
    }

    fn loaded(&mut self, l: Loaded) -> Vec<Action> {
        match l {
            Loaded::Sidebar { friends, groups, unread, requests, invitations, files, pins } => {
                let unread_of =
                    |k: &ConvKey| unread.iter().find(|(u, _, _)| u == k).map_or((0, 0), |(_, n, t)| (*n, *t));
                let open = self.open.clone();
                let mut convs: Vec<Conv> = friends
                    .iter()
                    .map(|f| {
                        let key = ConvKey::Friend(f.user.username.clone());
                        let (n, t) = unread_of(&key);
                        let title = match &f.remark {
                            Some(r) => r.clone(),
                            None if f.user.display_name != f.user.username => {
                                format!("{} ({})", f.user.display_name, f.user.username)
                            }
                            None => f.user.username.clone(),
                        };
                        let trust = match pins.get(&f.user.username) {
                            Some((_, true)) => KeyTrust::Changed,
                            Some((true, false)) => KeyTrust::Verified,
                            _ => KeyTrust::Unverified,
                        };
                        Conv { key, title, online: Some(f.online), unread: n, last_at: t, trust }
                    })
                    .collect();
                convs.extend(groups.iter().map(|g| {
                    let key = ConvKey::Group(g.group_id);
                    let (n, t) = unread_of(&key);
                    Conv { key, title: g.name.clone(), online: None, unread: n, last_at: t, trust: KeyTrust::default() }
                }));
                if let Some(k) = &open {
                    for c in convs.iter_mut().filter(|c| &c.key == k) {
                        c.unread = 0;
                    }
                }
                self.convs = convs;
                self.requests = requests;
                self.invitations = invitations;
                self.offers = files.into_iter().filter(|t| !t.outgoing && t.state == TransferState::Offered).collect();
                Vec::new()
            }
            Loaded::History { key, lines, older } => {
                if self.open.as_ref() != Some(&key) {
                    return Vec::new();
                }
                self.loading = false;
                self.more_above = lines.len() as i64 >= PAGE;
                if older {
                    // The anchor names a message by index: it moves down by what was put above it.
                    let added = lines.len();
                    if let Some((i, h)) = self.anchor {
                        self.anchor = Some((i + added, h));
                    }
                    for l in lines.into_iter().rev() {
                        self.lines.push_front(l);
                    }
                } else {
                    // Keep lines still being sent (not in the database yet).
                    let sending: Vec<Line> =
                        self.lines.drain(..).filter(|l| l.own && l.pos == 0 && !l.notice).collect();
                    self.lines = lines.into();
                    self.lines.extend(sending);
                }
                Vec::new()
            }
        }
    }

    fn reply(&mut self, r: Reply) -> Vec<Action> {
        match r {
            Reply::Sent { token, id, status, detail } => {
                if let Some(l) = self.lines.iter_mut().find(|l| l.token == token) {
                    l.id = Some(id);
                    l.state = Some(match (status, detail) {
                        (MessageStatus::Delivered, _) => "delivered".into(),
                        (MessageStatus::Failed, d) => format!("failed: {}", d.unwrap_or_default()),
                        (MessageStatus::Queued, Some(d)) => format!("queued: {d}"),
                        (s, _) => s.as_str().into(),
                    });
                }
                Vec::new()
            }
            Reply::Posted { token, seq } => {
                if self.lines.iter().any(|l| l.pos == seq) {
                    self.lines.retain(|l| l.token != token || l.pos != 0);
                } else if let Some(l) = self.lines.iter_mut().find(|l| l.token == token) {
                    l.pos = seq;
                    l.state = None;
                }
                Vec::new()
            }
            Reply::Failed { token, why } => {
                if let Some(l) = self.lines.iter_mut().find(|l| l.token == token) {
                    l.state = Some(format!("failed: {why}"));
                }
                self.notice = Some(why);
                Vec::new()
            }
            Reply::Info(text) => {
                self.notice = Some(text);
                vec![Action::LoadSidebar]
            }
            Reply::Error(text) => {
                self.notice = Some(format!("! {text}"));
                Vec::new()
            }
            Reply::Listing { title, lines } => {
                self.mode = Mode::Listing { title, lines };
                Vec::new()
            }
        }
    }
}

fn cmd_target(k: &ConvKey) -> String {
    match k {
        ConvKey::Friend(u) => u.clone(),
        ConvKey::Group(g) => format!("#{g}"),
    }
}

fn notice_line(at: Millis, text: &str) -> Line {
    Line {
        id: None,
        pos: 0,
        at,
        sender: String::new(),
        text: text.into(),
        own: false,
        state: None,
        notice: true,
        token: 0,
    }
}

/// A subsequence match: `None` if the query's characters do not all appear in order, else a score (lower
/// is better: how spread out the match is).
pub fn fuzzy_score(hay: &str, query: &str) -> Option<usize> {
    let mut chars = hay.char_indices();
    let mut first = None;
    let mut last = 0;
    for q in query.chars() {
        let (i, _) = chars.by_ref().find(|(_, c)| *c == q)?;
        first.get_or_insert(i);
        last = i;
    }
    Some(last.saturating_sub(first.unwrap_or(0)) + first.unwrap_or(0))
}

/// Completes a path typed so far: the longest common continuation among the entries of its directory
/// (a directory gets a trailing `/`).
pub fn complete_path(partial: &str) -> Option<String> {
    let (dir, stem) = match partial.rfind('/') {
        Some(i) => (&partial[..=i], &partial[i + 1..]),
        None => ("", partial),
    };
    let read = if dir.is_empty() { std::fs::read_dir(".") } else { std::fs::read_dir(dir) };
    let names: Vec<(String, bool)> = read
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.starts_with(stem).then(|| (name, e.path().is_dir()))
        })
        .collect();
    let (first, _) = names.first()?;
    let mut common = first.clone();
    for (n, _) in &names[1..] {
        while !n.starts_with(&common) {
            common.pop();
        }
    }
    let slash = if names.len() == 1 && names[0].1 { "/" } else { "" };
    Some(format!("{dir}{common}{slash}"))
}

#[cfg(test)]
mod tests;
