//! How the CLI shows things: readable lines for people, flat JSON objects for scripts (`--json`, shaped by
//! the structs in `views`).

use crate::views;
use serde_json::Value;
use shared::control::{AgentEvent, AgentStatus, PeerLink, Transfer};
use shared::display::Safe;
use shared::files::format_size;
use shared::proto::{Event, FriendInfo, FriendRequestInfo, GroupMessage, Millis, UserInfo};
use std::io::Write;

/// `println!` for everything the CLI prints for people: the whole line goes out with every control and bidi
/// character escaped (`shared::display`), so a friend's message, name or reason can never drive the terminal,
/// and one message stays one line. Our own lines hold no control characters, so escaping the whole line costs
/// nothing and cannot be forgotten for one field. `println!` itself is disallowed in this crate (clippy.toml).
macro_rules! say {
    ($($t:tt)*) => { $crate::output::line_to(&mut ::std::io::stdout(), &::std::format!($($t)*)) };
}
/// `eprintln!` the same way: notes and errors on stderr.
macro_rules! note {
    ($($t:tt)*) => { $crate::output::line_to(&mut ::std::io::stderr(), &::std::format!($($t)*)) };
}
pub(crate) use {note, say};

/// Writes one escaped line. A closed pipe (`peer history | head`) ends the program quietly, as `cat` does,
/// instead of panicking as `println!` would; other write errors have nowhere better to be reported.
pub(crate) fn line_to(out: &mut impl Write, line: &str) {
    raw_line_to(out, &Safe(line).to_string());
}

/// Writes JSON for scripts: serde_json already escapes every control character inside strings; the bidi
/// controls it leaves raw are written as `\uXXXX` escapes too (the same JSON value), so that a person
/// reading `--json` on a terminal is not fooled either. The line breaks of pretty output stay.
pub(crate) fn json_line_to(out: &mut impl Write, json: &str) {
    if !json.chars().any(|c| c != '\n' && shared::display::is_unsafe(c)) {
        return raw_line_to(out, json);
    }
    let mut text = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if c != '\n' && shared::display::is_unsafe(c) {
            text.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            text.push(c);
        }
    }
    raw_line_to(out, &text);
}

/// Writes a line as it is, with the same handling of a closed pipe.
pub(crate) fn raw_line_to(out: &mut impl Write, text: &str) {
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// An error for stderr: escaped like [`say`], except that the line breaks our own messages contain are kept.
pub(crate) fn error_text(text: &str) -> String {
    text.split('\n').map(|l| Safe(l).to_string()).collect::<Vec<_>>().join("\n")
}

/// `alice (Alice)`, or just `alice` when the display name adds nothing.
pub(crate) fn who(u: &UserInfo) -> String {
    if u.display_name == u.username { u.username.clone() } else { format!("{} ({})", u.username, u.display_name) }
}

/// `s` padded with spaces to `width` terminal columns (wide characters such as 张三 count two), so that
/// columns line up whatever script a name is in; never cut.
pub(crate) fn pad(s: &str, width: usize) -> String {
    let w = unicode_width::UnicodeWidthStr::width(s);
    format!("{s}{}", " ".repeat(width.saturating_sub(w)))
}

/// `1 member`, `2 members`.
pub(crate) fn count(n: i64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Local wall-clock time of a timestamp, to the second.
pub(crate) fn time(ms: Millis) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return ms.to_string();
    };
    let t = time::UtcOffset::current_local_offset().map(|o| t.to_offset(o)).unwrap_or(t);
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    t.format(&fmt).unwrap_or_else(|_| ms.to_string())
}

pub(crate) fn user_json(u: &UserInfo) -> Value {
    views::value(views::User::from(u))
}

/// A friend, with the live connections to their devices (`path`: direct or relayed, and the address in use).
pub(crate) fn friend_json(f: &FriendInfo, links: &[PeerLink], paths: &[shared::control::PathHistory]) -> Value {
    views::value(views::Friend::new(f, links, paths))
}

pub(crate) fn request_json(r: &FriendRequestInfo, direction: &str) -> Value {
    views::value(views::Request::new(r, direction))
}

pub(crate) fn status_json(s: &AgentStatus, paths: &[shared::control::PathHistory]) -> Value {
    views::value(views::Status::new(s, paths))
}

/// One watch event as a flat JSON object with a `type`.
pub(crate) fn event_json(e: &AgentEvent) -> Value {
    views::value(views::EventView::from(e))
}

/// One watch event as a line for people.
pub(crate) fn event_line(e: &AgentEvent) -> String {
    match e {
        AgentEvent::Connected { observed_addr, at } => {
            format!("{} connected to the broker (seen as {observed_addr})", time(*at))
        }
        AgentEvent::MessageReceived { from, text, sent_at, .. } => format!("[{}] {from}: {text}", time(*sent_at)),
        AgentEvent::MessageDelivered { to, id, at } => format!("{} delivered to {to} ({id})", time(*at)),
        AgentEvent::MessageSent { to, id, at } => {
            format!("{} sent to {to}'s mailbox ({id}): delivered when their device comes online", time(*at))
        }
        AgentEvent::MessageCopied { to, text, sent_at, .. } => {
            format!("[{}] you (another device) to {to}: {text}", time(*sent_at))
        }
        AgentEvent::MessageFailed { to, reason, at, .. } => {
            format!("{} could not deliver to {to}: {reason}", time(*at))
        }
        AgentEvent::Disconnected { reason, at } => {
            format!("{} disconnected from the broker: {reason}; reconnecting", time(*at))
        }
        AgentEvent::FileOffered { transfer: t, at } => format!(
            "{} {} offers {} ({}) (accept: `peer files accept {}`, decline: `peer files decline {}`)",
            time(*at),
            t.peer,
            t.name,
            format_size(t.size),
            short_id(&t.id),
            short_id(&t.id)
        ),
        AgentEvent::FileUpdated { transfer: t, at } => format!("{} {}", time(*at), transfer_line(t)),
        AgentEvent::Read { conversation, up_to, at } => format!("{} read {conversation} up to {up_to}", time(*at)),
        AgentEvent::FileProgress { id, bytes, size, at, .. } => {
            format!("{} {} {}", time(*at), short_id(id), percent(*bytes, *size))
        }
        AgentEvent::KeyChanged { username, at } => format!(
            "{} {username}'s account key CHANGED: messages to them are held. Compare safety numbers \
             (`peer verify {username}`), then `peer verify {username} --accept-new-key`",
            time(*at)
        ),
        AgentEvent::LinkRequest { device_name, words, at, .. } => {
            format!("{} device \"{device_name}\" asks to be linked; its words: {words}", time(*at))
        }
        AgentEvent::Linked { device_name, messages, at, .. } => {
            format!("{} device \"{device_name}\" is linked ({messages} messages copied)", time(*at))
        }
        AgentEvent::LinkFailed { reason, at, .. } => format!("{} linking failed: {reason}", time(*at)),
        AgentEvent::Broker { event, at } => {
            let t = time(*at);
            match event {
                Event::FriendRequest { from, message, .. } => {
                    let msg = if message.is_empty() { String::new() } else { format!(": \"{message}\"") };
                    format!(
                        "{t} friend request from {}{msg} (accept: `peer friends accept {}`)",
                        who(from),
                        from.username
                    )
                }
                Event::FriendAccepted { friend } => {
                    format!("{t} you and {} are friends now", who(friend))
                }
                Event::FriendRemoved { username } => {
                    format!("{t} {username} is no longer your friend")
                }
                Event::Presence { username, online: true, .. } => format!("{t} {username} is online"),
                Event::Presence { username, online: false, .. } => format!("{t} {username} went offline"),
                Event::FriendProfile { friend } => {
                    format!("{t} {} is now called {}", friend.username, friend.display_name)
                }
                Event::SessionRevoked => format!("{t} this session was revoked; log in again"),
                Event::PeerIncoming { username, .. } | Event::PeerCalling { username, .. } => {
                    format!("{t} {username} is connecting directly")
                }
                Event::AccountKeyChanged { username } => {
                    format!("{t} {username} reset their account key (`peer verify {username}`)")
                }
                Event::DeviceRevoked { username, revocation } => {
                    format!("{t} {username} revoked a device ({})", short_id(&hex::encode(revocation.body.fingerprint)))
                }
                Event::LinkClaimed { .. } => format!("{t} a device claimed your link code"),
                Event::MailWaiting => format!("{t} letters are waiting in the mailbox"),
                Event::GroupInvited(i) => format!(
                    "{t} {} invited you to group {} \"{}\" (join: `peer groups join {}`)",
                    i.inviter.username, i.group_id, i.name, i.group_id
                ),
                Event::GroupMessage(m) => group_message_line(m),
                Event::FriendDevices { username, .. } => {
                    format!("{t} {username} changed their password; their other devices were cut off")
                }
                Event::GroupPresence { group_id, username, online, .. } => {
                    format!(
                        "{t} #{group_id} {username} {}",
                        if *online { "is online (上线)" } else { "went offline (下线)" }
                    )
                }
            }
        }
    }
}

/// A group message as a flat JSON object.
pub(crate) fn group_message_json(m: &GroupMessage) -> Value {
    views::value(views::GroupMessageView { post: m.into() })
}

/// A group message as a line: `[time] #group sender: text`, notices in brackets.
pub(crate) fn group_message_line(m: &GroupMessage) -> String {
    if m.system {
        format!("[{}] #{} ({})", time(m.at), m.group_id, m.text)
    } else {
        format!("[{}] #{} {}: {}", time(m.at), m.group_id, m.sender, m.text)
    }
}

/// The first 8 hex digits of a transfer id: enough to name it in commands.
pub(crate) fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// How much of `size` is done, in whole percent (an empty file is complete).
pub(crate) fn percent(bytes: u64, size: u64) -> String {
    format!("{}%", bytes.saturating_mul(100).checked_div(size).unwrap_or(100))
}

/// A transfer as a flat JSON object.
pub(crate) fn transfer_json(t: &Transfer) -> Value {
    views::value(views::TransferView::from(t))
}

/// A transfer as a line: `1a2b3c4d  to bob  report.pdf  1.2 MiB  transferring 40%`.
pub(crate) fn transfer_line(t: &Transfer) -> String {
    let who = if t.outgoing { format!("to {}", t.peer) } else { format!("from {}", t.peer) };
    let mut line = format!("{}  {who}  {}  {}  {}", short_id(&t.id), t.name, format_size(t.size), t.state.as_str());
    if !t.state.is_final() && t.state != shared::control::TransferState::Offered {
        line.push_str(&format!(" {}", percent(t.bytes, t.size)));
    }
    if let (shared::control::TransferState::Done, Some(p), false) = (t.state, &t.path, t.outgoing) {
        line.push_str(&format!("  saved as {p}"));
    }
    if let Some(e) = &t.error {
        line.push_str(&format!("  ({e})"));
    }
    line
}

/// A progress bar on stderr for `total` items (hidden when stderr is not a terminal).
pub(crate) fn progress_bar(total: u64, label: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(label.to_string());
    bar
}

/// Prints `data` as a QR code (half-block characters, two modules per character row) when stdout is a
/// terminal; on a pipe nothing, since no one can scan it there.
pub(crate) fn qr(data: &str) {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return;
    }
    let Ok(code) = qrcode::QrCode::new(data.as_bytes()) else { return };
    let art = code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build();
    for line in art.lines() {
        say!("    {line}");
    }
}
