//! The first screen on a device with no account: register one, or log in to an existing one, without
//! leaving the app. A small state machine of its own (keys in, a [`Submit`] out), drawn by [`draw`].

use super::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph};
use ratatui_textarea::TextArea;
use shared::display::escape as safe;

/// The form's fields, in order.
const LABELS: [&str; 4] = ["username", "broker (host:port)", "display name", "password"];
const USERNAME: usize = 0;
const BROKER: usize = 1;
const DISPLAY: usize = 2;
const PASSWORD: usize = 3;

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submit {
    Register { username: String, broker: String, display_name: String, password: String },
    Login { username: String, broker: String, password: String },
    Quit,
}

/// The sign-up / log-in form.
pub struct Welcome {
    pub register: bool,
    fields: Vec<TextArea<'static>>,
    pub focus: usize,
    /// Why the last attempt failed, or what is happening.
    pub message: Option<String>,
}

impl Welcome {
    /// A form with the broker filled in, if one is known (`PEER_BROKER`).
    pub fn new(broker: Option<&str>) -> Self {
        let mut fields: Vec<TextArea<'static>> = LABELS.iter().map(|_| TextArea::default()).collect();
        if let Some(b) = broker {
            fields[BROKER].insert_str(b);
        }
        fields[PASSWORD].set_mask_char('•');
        fields[DISPLAY].set_placeholder_text("what friends see (default: the username)");
        Self { register: true, fields, focus: 0, message: None }
    }

    fn visible(&self, i: usize) -> bool {
        self.register || i != DISPLAY
    }

    fn step(&mut self, forward: bool) {
        let n = LABELS.len();
        loop {
            self.focus = if forward { (self.focus + 1) % n } else { (self.focus + n - 1) % n };
            if self.visible(self.focus) {
                return;
            }
        }
    }

    fn text(&self, i: usize) -> String {
        self.fields[i].lines().join("")
    }

    /// A key; `Some` when the user submits or quits.
    pub fn key(&mut self, k: KeyEvent) -> Option<Submit> {
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        match k.code {
            KeyCode::Esc => return Some(Submit::Quit),
            KeyCode::Char('c') if ctrl => return Some(Submit::Quit),
            KeyCode::F(2) => {
                self.register = !self.register;
                if !self.visible(self.focus) {
                    self.step(true);
                }
            }
            KeyCode::Tab | KeyCode::Down => self.step(true),
            KeyCode::BackTab | KeyCode::Up => self.step(false),
            KeyCode::Enter if self.focus == PASSWORD => return self.submit(),
            KeyCode::Enter => self.step(true),
            _ => {
                self.fields[self.focus].input(k);
            }
        }
        None
    }

    fn submit(&mut self) -> Option<Submit> {
        let (username, broker, password) = (self.text(USERNAME), self.text(BROKER), self.text(PASSWORD));
        let problem = if shared::validate::username(&username).is_err() {
            Some((USERNAME, "username: 3-32 characters of a-z, 0-9, '_', '.', '-'"))
        } else if broker.trim().is_empty() {
            Some((BROKER, "the broker's address, as HOST:PORT"))
        } else if self.register && shared::validate::password(&password).is_err() {
            Some((PASSWORD, "password: at least 8 characters"))
        } else {
            None
        };
        if let Some((field, why)) = problem {
            self.focus = field;
            self.message = Some(why.into());
            return None;
        }
        self.message = Some(if self.register { "registering…" } else { "logging in…" }.into());
        Some(if self.register {
            let display = self.text(DISPLAY);
            let display_name = if display.trim().is_empty() { username.clone() } else { display };
            Submit::Register { username, broker: broker.trim().into(), display_name, password }
        } else {
            Submit::Login { username, broker: broker.trim().into(), password }
        })
    }
}

/// Draws the form in the middle of the screen.
pub fn draw(w: &mut Welcome, f: &mut Frame<'_>) {
    let area = f.area();
    let width = area.width.saturating_sub(4).min(64);
    let fields: Vec<usize> = (0..LABELS.len()).filter(|i| w.visible(*i)).collect();
    let height = (fields.len() as u16 * 3 + 6).min(area.height);
    let r = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + area.height.saturating_sub(height) / 2,
        width,
        height,
    };
    let title = if w.register { " p2pim · register a new account " } else { " p2pim · log in " };
    f.render_widget(Block::default().borders(Borders::ALL).title(title), r);
    let inner = Rect { x: r.x + 2, y: r.y + 1, width: r.width.saturating_sub(4), height: r.height.saturating_sub(2) };
    let mut rows: Vec<Constraint> = vec![Constraint::Length(1)];
    rows.extend(fields.iter().map(|_| Constraint::Length(3)));
    rows.push(Constraint::Length(1));
    rows.push(Constraint::Length(1));
    let areas = Layout::vertical(rows).split(inner);
    let switch =
        if w.register { "F2: log in to an existing account instead" } else { "F2: register a new account instead" };
    f.render_widget(Paragraph::new(Line::raw(switch).dim()), areas[0]);
    for (slot, &i) in fields.iter().enumerate() {
        let focused = i == w.focus;
        let style =
            if focused { Style::default().add_modifier(Modifier::BOLD) } else { Style::default().fg(Color::DarkGray) };
        let field = &mut w.fields[i];
        field.set_block(Block::default().borders(Borders::ALL).title(format!(" {} ", LABELS[i])).border_style(style));
        field.set_cursor_style(if focused {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default()
        });
        f.render_widget(&*field, areas[slot + 1]);
    }
    let n = fields.len();
    f.render_widget(
        Paragraph::new(Line::raw("Tab/↑↓ move · Enter on the password submits · Esc quits").dim()),
        areas[n + 1],
    );
    if let Some(m) = &w.message {
        f.render_widget(Paragraph::new(Line::styled(safe(m), Style::default().fg(Color::Yellow))), areas[n + 2]);
    }
}

/// After a first sign-in: the broker's fingerprint, pinned now, for the user to compare with the one the
/// broker printed (a different one would mean someone in between).
pub fn draw_pinned(f: &mut Frame<'_>, fingerprint: &str) {
    let area = f.area();
    let width = area.width.saturating_sub(4).min(72);
    let r = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + area.height.saturating_sub(9) / 2,
        width,
        height: 9.min(area.height),
    };
    let lines = vec![
        Line::raw("This device now trusts the broker with the identity"),
        Line::raw(""),
        Line::raw(safe(fingerprint)).bold(),
        Line::raw(""),
        Line::raw("It should match the fingerprint the broker printed when it started;"),
        Line::raw("if it does not, someone may be in between. Enter to continue.").dim(),
    ];
    let p = Paragraph::new(lines).wrap(ratatui::widgets::Wrap { trim: false });
    f.render_widget(p.block(Block::default().borders(Borders::ALL).title(" broker identity pinned ")), r);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(w: &mut Welcome, code: KeyCode) -> Option<Submit> {
        w.key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn typed(w: &mut Welcome, s: &str) {
        for c in s.chars() {
            key(w, KeyCode::Char(c));
        }
    }

    #[test]
    fn register_then_switch_to_login() {
        let mut w = Welcome::new(Some("127.0.0.1:7878"));
        typed(&mut w, "carol");
        key(&mut w, KeyCode::Enter);
        key(&mut w, KeyCode::Enter);
        typed(&mut w, "卡罗尔");
        key(&mut w, KeyCode::Enter);
        typed(&mut w, "short");
        assert_eq!(key(&mut w, KeyCode::Enter), None, "a short password is refused here");
        assert!(w.message.as_deref().unwrap().contains("at least 8"));
        typed(&mut w, " enough");
        assert_eq!(
            key(&mut w, KeyCode::Enter),
            Some(Submit::Register {
                username: "carol".into(),
                broker: "127.0.0.1:7878".into(),
                display_name: "卡罗尔".into(),
                password: "short enough".into(),
            })
        );
        key(&mut w, KeyCode::F(2));
        assert!(!w.register);
        assert_eq!(
            key(&mut w, KeyCode::Enter),
            Some(Submit::Login {
                username: "carol".into(),
                broker: "127.0.0.1:7878".into(),
                password: "short enough".into()
            })
        );
        assert_eq!(key(&mut w, KeyCode::Esc), Some(Submit::Quit));
    }

    #[test]
    fn a_bad_username_is_caught_before_the_network() {
        let mut w = Welcome::new(None);
        typed(&mut w, "No Caps");
        w.focus = PASSWORD;
        assert_eq!(key(&mut w, KeyCode::Enter), None);
        assert_eq!(w.focus, USERNAME);
    }
}
