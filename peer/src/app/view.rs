//! Drawing the app. Pure: the state in, a frame out, on any ratatui backend.
//!
//! Every string a remote party wrote (messages, names, group names, file names, reasons) passes through
//! [`safe`] on its way to the screen: control and bidi characters are shown escaped, never sent to the
//! terminal. Widths are display widths (`unicode-width`), so 张三 and 家人群 take two columns a character and
//! columns line up. Only the rows on screen are laid out, whatever the length of the conversation.

use super::{App, ConvKey, KeyTrust, Line as Msg, Mode};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Borders, Clear, Paragraph};
use shared::display::escape as safe;
use std::collections::VecDeque;
use unicode_width::UnicodeWidthChar;

/// Draws the whole app.
pub fn draw(app: &mut App, f: &mut Frame<'_>) {
    let area = f.area();
    let side = if area.width >= 60 { (area.width / 3).min(30) } else { 0 };
    let [sidebar, main] = Layout::horizontal([Constraint::Length(side), Constraint::Fill(1)]).areas(area);
    if side > 0 {
        draw_sidebar(app, f, sidebar);
    }
    let input_rows = (app.input.lines().len().clamp(1, 5) + 2) as u16;
    let [header, body, input, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(input_rows),
        Constraint::Length(1),
    ])
    .areas(main);
    draw_header(app, f, header);
    app.page_rows = body.height.saturating_sub(1) as usize;
    draw_messages(app, f, body);
    app.input
        .set_block(Block::default().borders(Borders::ALL).title(" message · Enter send · Alt-Enter newline · ? keys "));
    f.render_widget(&app.input, input);
    draw_status(app, f, status);
    match &app.mode {
        Mode::Normal => {}
        Mode::Help => popup(f, area, " keys and commands ", help_lines()),
        Mode::Switcher { query, selected } => {
            let mut lines = vec![Line::from(vec![Span::raw("open: "), Span::raw(safe(query)).bold(), Span::raw("▏")])];
            for (i, c) in app.matches(query).iter().take(12).enumerate() {
                let style =
                    if i == *selected { Style::default().add_modifier(Modifier::REVERSED) } else { Style::default() };
                lines.push(Line::styled(format!("{} {}", marker(c.online, &c.key), safe(&c.title)), style));
            }
            popup(f, area, " switch conversation (type, ↑↓, Enter) ", lines);
        }
        Mode::Confirm { prompt, .. } => popup(f, area, " confirm ", vec![Line::raw(safe(prompt))]),
        Mode::Listing { title, lines } => {
            let mut l: Vec<Line> = lines.iter().map(|s| Line::raw(safe(s))).collect();
            l.push(Line::raw(""));
            l.push(Line::raw("Esc closes").dim());
            popup(f, area, &format!(" {} ", safe(title)), l);
        }
    }
}

fn marker(online: Option<bool>, key: &ConvKey) -> &'static str {
    match (key, online) {
        (ConvKey::Group(_), _) => "#",
        (_, Some(true)) => "●",
        _ => "○",
    }
}

fn draw_sidebar(app: &App, f: &mut Frame<'_>, area: Rect) {
    let mut lines = Vec::new();
    let pending = [
        (app.requests.len(), "friend request", "friend requests"),
        (app.invitations.len(), "group invitation", "group invitations"),
        (app.offers.len(), "file offer", "file offers"),
    ];
    for (n, one, many) in pending {
        if n > 0 {
            lines.push(Line::styled(
                format!("+ {n} {}", if n == 1 { one } else { many }),
                Style::default().fg(Color::Yellow),
            ));
        }
    }
    if !lines.is_empty() {
        lines.push(Line::raw(""));
    }
    let width = area.width.saturating_sub(2) as usize;
    for c in app.sorted() {
        let open = app.open.as_ref() == Some(&c.key);
        let unread = if c.unread > 0 { format!(" {}", c.unread) } else { String::new() };
        let mark = marker(c.online, &c.key);
        // A friend's key: ✓ compared, ! changed (messages held); nothing while only pinned.
        let (trust, trust_style) = match c.trust {
            KeyTrust::Verified => (" ✓", Style::default().fg(Color::Green)),
            KeyTrust::Changed => (" !", Style::default().fg(Color::Red).bold()),
            KeyTrust::Unverified => ("", Style::default()),
        };
        let title = fit(&safe(&c.title), width.saturating_sub(2 + unread.len() + trust.chars().count()));
        let mut style = Style::default();
        if open {
            style = style.add_modifier(Modifier::REVERSED);
        } else if c.unread > 0 {
            style = style.add_modifier(Modifier::BOLD);
        }
        let dot = match (c.online, &c.key) {
            (Some(true), _) => Span::styled(mark, Style::default().fg(Color::Green)),
            _ => Span::raw(mark),
        };
        lines.push(Line::from(vec![
            dot,
            Span::raw(" "),
            Span::styled(title, style),
            Span::styled(trust, trust_style),
            Span::styled(unread, Style::default().fg(Color::Cyan).bold()),
        ]));
    }
    if app.convs.is_empty() {
        lines.push(Line::raw("no friends yet:").dim());
        lines.push(Line::raw("/users TEXT, /add USER").dim());
    }
    f.render_widget(Paragraph::new(lines).block(Block::default().borders(Borders::RIGHT).title(" p2pim ")), area);
}

fn draw_header(app: &App, f: &mut Frame<'_>, area: Rect) {
    let text = match &app.open {
        None => "no conversation open · Ctrl-K to pick one · Tab: next unread".to_string(),
        Some(key) => {
            let conv = app.convs.iter().find(|c| &c.key == key);
            let title = conv.map_or_else(|| String::from("?"), |c| safe(&c.title));
            let path = match key {
                ConvKey::Friend(u) => {
                    let link = app.status.as_ref().and_then(|s| s.peers.iter().find(|p| &p.username == u));
                    let presence = if conv.and_then(|c| c.online) == Some(true) { "online" } else { "offline" };
                    match link {
                        Some(l) => format!("{presence}, {} path", l.describe()),
                        None => presence.to_string(),
                    }
                }
                ConvKey::Group(g) => format!("group #{g}"),
            };
            format!("{title} · {path}")
        }
    };
    f.render_widget(Paragraph::new(Line::raw(text).bold()), area);
}

fn draw_status(app: &App, f: &mut Frame<'_>, area: Rect) {
    let (dot, state) = match (&app.status, app.agent_connected) {
        (_, false) => (Span::styled("○", Style::default().fg(Color::Red)), "agent stopped".to_string()),
        (Some(s), true) if s.online => {
            (Span::styled("●", Style::default().fg(Color::Green)), format!("online · {}", s.broker))
        }
        (Some(s), true) => {
            (Span::styled("◌", Style::default().fg(Color::Yellow)), format!("reconnecting to {}", s.broker))
        }
        (None, true) => (Span::raw("◌"), "starting".to_string()),
    };
    // A notice (what just happened, what to type next) matters more than the broker's address: it takes
    // the line's room when there is one.
    let mut spans = vec![dot, Span::raw(format!(" {}", safe(&app.me)))];
    match &app.notice {
        Some(n) => {
            spans.push(Span::raw(" · "));
            spans.push(Span::styled(safe(n), Style::default().fg(Color::Yellow)));
        }
        None => spans.push(Span::raw(format!(" · {state}"))),
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// The conversation, bottom up from the anchor: only the messages that reach the screen are laid out.
fn draw_messages(app: &mut App, f: &mut Frame<'_>, area: Rect) {
    let width = area.width.max(1) as usize;
    app.page_width = width;
    let want = area.height as usize;
    let mut rows: Vec<Line<'static>> = Vec::new();
    if let Some(last) = app.lines.len().checked_sub(1) {
        let (start, mut hidden) = app.anchor.map_or((last, 0), |(i, h)| (i.min(last), h));
        for i in (0..=start).rev() {
            let mut block = rows_of(&app.lines, i, width);
            block.reverse();
            rows.extend(block.into_iter().skip(hidden));
            hidden = 0;
            if rows.len() >= want {
                break;
            }
        }
    }
    if app.lines.is_empty() && app.open.is_some() {
        let note = if app.loading { "loading…" } else { "no messages yet: say hello" };
        rows.push(Line::raw(note).dim());
    }
    if app.more_above && rows.len() < want {
        rows.push(Line::raw(if app.loading { "loading older messages…" } else { "↑ PageUp for older messages" }).dim());
    }
    let mut visible: Vec<Line<'static>> = rows.into_iter().take(want).collect();
    visible.reverse();
    let pad = want.saturating_sub(visible.len());
    let mut all: Vec<Line<'static>> = vec![Line::raw(""); pad];
    all.extend(visible);
    f.render_widget(Paragraph::new(Text::from(all)), area);
}

/// Message `i` of `lines` as screen rows, with a day separator above the first message of each day.
fn rows_of(lines: &VecDeque<Msg>, i: usize, width: usize) -> Vec<Line<'static>> {
    let m = &lines[i];
    let mut block = message_rows(m, width);
    let prev = i.checked_sub(1).and_then(|p| lines.get(p));
    if m.at > 0 && prev.is_none_or(|p| day(p.at) != day(m.at)) {
        block.insert(
            0,
            Line::styled(center(&format!(" {} ", day(m.at)), width, '─'), Style::default().fg(Color::DarkGray)),
        );
    }
    block
}

/// How many rows message `i` takes at `width` (what scrolling walks over).
pub fn height(lines: &VecDeque<Msg>, i: usize, width: usize) -> usize {
    rows_of(lines, i, width).len()
}

/// One message as screen rows: `HH:MM sender: text (state)`, wrapped by display width, continuation rows
/// (and the lines of a multi-line message) indented under the text; own messages' state (sending, queued,
/// failed: why) after the text; notices dimmed, in brackets.
fn message_rows(m: &Msg, width: usize) -> Vec<Line<'static>> {
    let time = format!("{} ", clock(m.at));
    let who = if m.notice { String::new() } else { format!("{}: ", safe(&m.sender)) };
    let who_style = if m.own { Style::default().fg(Color::Cyan) } else { Style::default().fg(Color::Magenta) };
    let body_style = if m.notice { Style::default().fg(Color::DarkGray) } else { Style::default() };
    let mut text = m.text.split('\n').map(safe).collect::<Vec<_>>().join("\n");
    if m.notice {
        text = format!("({text})");
    }
    if let Some(state) = &m.state {
        text.push_str(&format!("  ({})", safe(state)));
    }
    let indent = (display_width(&time) + display_width(&who)).min(width / 2);
    let avail = width.saturating_sub(indent).max(8);
    let mut out = Vec::new();
    for row in text.split('\n').flat_map(|part| wrap(part, avail)) {
        if out.is_empty() {
            out.push(Line::from(vec![
                Span::raw(time.clone()).dim(),
                Span::styled(who.clone(), who_style),
                Span::styled(row, body_style),
            ]));
        } else {
            out.push(Line::from(vec![Span::raw(" ".repeat(indent)), Span::styled(row, body_style)]));
        }
    }
    out
}

fn display_width(s: &str) -> usize {
    s.chars().map(|c| c.width().unwrap_or(0)).sum()
}

/// Splits `s` into rows of at most `width` columns by display width: at the last space that fits when
/// there is one in the row's second half (words stay whole), else at any character (CJK text has no spaces,
/// and a very long word must still fit); a wide character never straddles two rows.
pub fn wrap(s: &str, width: usize) -> Vec<String> {
    let width = width.max(2);
    let mut rows = Vec::new();
    let mut row = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > width && used > 0 {
            // Break at the last space past the row's middle, carrying the word begun after it.
            let cut = row.char_indices().filter(|(_, ch)| *ch == ' ').map(|(i, _)| i).next_back();
            match cut {
                Some(i) if display_width(&row[..i]) >= width / 2 && c != ' ' => {
                    let carried = row[i + 1..].to_string();
                    row.truncate(i);
                    rows.push(std::mem::take(&mut row));
                    used = display_width(&carried);
                    row = carried;
                }
                _ => {
                    rows.push(std::mem::take(&mut row));
                    used = 0;
                }
            }
            if c == ' ' && used == 0 {
                continue;
            }
        }
        row.push(c);
        used += w;
    }
    rows.push(row);
    rows
}

/// `s` cut to `width` columns, with `…` when cut.
fn fit(s: &str, width: usize) -> String {
    if display_width(s) <= width {
        return s.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
}

fn center(s: &str, width: usize, fill: char) -> String {
    let w = display_width(s);
    if w >= width {
        return s.to_string();
    }
    let left = (width - w) / 2;
    format!("{}{s}{}", fill.to_string().repeat(left), fill.to_string().repeat(width - w - left))
}

fn local(ms: i64) -> Option<time::OffsetDateTime> {
    // Looked up once: it is asked for every message drawn.
    static OFFSET: std::sync::OnceLock<time::UtcOffset> = std::sync::OnceLock::new();
    let offset = *OFFSET.get_or_init(|| time::UtcOffset::current_local_offset().unwrap_or(time::UtcOffset::UTC));
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    Some(t.to_offset(offset))
}

fn clock(ms: i64) -> String {
    local(ms).map_or_else(|| "--:--".into(), |t| format!("{:02}:{:02}", t.hour(), t.minute()))
}

fn day(ms: i64) -> String {
    local(ms).map_or_else(String::new, |t| format!("{}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()))
}

fn popup(f: &mut Frame<'_>, area: Rect, title: &str, lines: Vec<Line<'_>>) {
    let w = area.width.saturating_sub(4).min(72);
    let h = (lines.len() as u16 + 2).min(area.height.saturating_sub(2));
    let r =
        Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height.saturating_sub(h)) / 2, width: w, height: h };
    f.render_widget(Clear, r);
    let text = Paragraph::new(lines).wrap(ratatui::widgets::Wrap { trim: false });
    f.render_widget(text.block(Block::default().borders(Borders::ALL).title(title.to_string())), r);
}

fn help_lines() -> Vec<Line<'static>> {
    [
        "Enter send · Alt-Enter new line · ↑/↓ earlier input",
        "PageUp/PageDown scroll · Ctrl-K switch conversation",
        "Tab/Shift-Tab next/previous unread · Alt-↑/↓ previous/next",
        "Ctrl-C quit (the agent keeps running)",
        "",
        "/open USER|GROUP   /add USER [message]   /accept USER",
        "/decline USER      /remove USER          /block USER",
        "/remark USER ALIAS /search TEXT          /users TEXT",
        "/group create NAME /invite USER          /join GROUP",
        "/leave             /file PATH (Tab completes)",
        "/files             /accept-file ID [DIR] /cancel ID",
        "/help              /quit                 Esc closes this",
    ]
    .into_iter()
    .map(Line::raw)
    .collect()
}
