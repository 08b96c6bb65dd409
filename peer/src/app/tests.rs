//! The app's rules, as a state machine: keys and events in, state and actions out. No terminal, no agent.

use super::*;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use shared::proto::UserInfo;

fn key(code: KeyCode) -> Input {
    Input::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn ctrl(c: char) -> Input {
    Input::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL))
}

fn typed(app: &mut App, text: &str) {
    for c in text.chars() {
        app.handle(key(KeyCode::Char(c)));
    }
}

fn friend(name: &str, display: &str, online: bool) -> FriendInfo {
    FriendInfo {
        user: UserInfo { username: name.into(), display_name: display.into() },
        remark: None,
        online,
        since: None,
    }
}

fn group(id: i64, name: &str) -> GroupInfo {
    GroupInfo { group_id: id, name: name.into(), owner: "alice".into(), last_seq: 0, members: 3 }
}

/// Alice's app with bob (online), 张三 (offline) and a group, bob's conversation the most recent.
fn app() -> App {
    let mut a = App::new("alice");
    a.now = 1_700_000_000_000;
    a.handle(Input::Loaded(Loaded::Sidebar {
        friends: vec![friend("bob", "bob", true), friend("zhang", "张三", false)],
        groups: vec![group(7, "家人群")],
        unread: vec![(ConvKey::Friend("bob".into()), 2, 300), (ConvKey::Group(7), 0, 200)],
        requests: Vec::new(),
        invitations: Vec::new(),
        files: Vec::new(),
        pins: Default::default(),
    }));
    a
}

fn received(from: &str, text: &str) -> Input {
    Input::Event(AgentEvent::MessageReceived {
        from: from.into(),
        id: "00aa".into(),
        text: text.into(),
        sent_at: 1_700_000_000_000,
        at: 1_700_000_000_500,
    })
}

#[test]
fn the_sidebar_sorts_by_activity_and_counts_unread() {
    let a = app();
    let titles: Vec<&str> = a.sorted().iter().map(|c| c.title.as_str()).collect();
    assert_eq!(titles, ["bob", "家人群", "张三 (zhang)"]);
    assert_eq!(a.sorted()[0].unread, 2);
}

#[test]
fn a_message_for_a_closed_conversation_counts_rings_and_notifies() {
    let mut a = app();
    let actions = a.handle(received("zhang", "你好"));
    assert!(actions.contains(&Action::Bell));
    assert!(actions.iter().any(|x| matches!(x, Action::Notify { title, body } if title == "zhang" && body == "你好")));
    assert_eq!(a.convs.iter().find(|c| c.key == ConvKey::Friend("zhang".into())).unwrap().unread, 1);
    assert_eq!(a.sorted()[0].title, "张三 (zhang)", "moves to the top");
}

#[test]
fn opening_loads_history_marks_read_and_shows_live_messages() {
    let mut a = app();
    let actions = a.handle(Input::Key(KeyEvent::new(KeyCode::Char('k'), KeyModifiers::CONTROL)));
    assert!(actions.is_empty());
    typed(&mut a, "bo");
    let actions = a.handle(key(KeyCode::Enter));
    let bob = ConvKey::Friend("bob".into());
    assert_eq!(actions, vec![Action::LoadHistory { key: bob.clone(), before: None }, Action::MarkRead(bob.clone())]);
    assert_eq!(a.open, Some(bob.clone()));
    assert_eq!(a.sorted()[0].unread, 0);
    // While open and at the bottom, a new message is shown and marked read, without a bell.
    let actions = a.handle(received("bob", "hi"));
    assert_eq!(actions, vec![Action::MarkRead(bob)]);
    assert_eq!(a.lines.back().unwrap().text, "hi");
}

#[test]
fn enter_sends_to_the_open_conversation_and_the_answer_sets_its_state() {
    let mut a = app();
    a.handle(Input::Reply(Reply::Info(String::new())));
    let bob = ConvKey::Friend("bob".into());
    a.start(Some(bob.clone()));
    a.open = Some(bob);
    typed(&mut a, "hello wrld");
    for _ in 0..3 {
        a.handle(key(KeyCode::Left));
    }
    a.handle(key(KeyCode::Char('o')));
    let actions = a.handle(key(KeyCode::Enter));
    let [Action::Send { token, to, text }] = actions.as_slice() else { panic!("{actions:?}") };
    assert_eq!((to.as_str(), text.as_str()), ("bob", "hello world"), "cursor keys edit, not escape codes");
    assert_eq!(a.lines.back().unwrap().state.as_deref(), Some("sending"));
    assert!(a.input.is_empty());
    a.handle(Input::Reply(Reply::Sent {
        token: *token,
        id: "beef".into(),
        status: MessageStatus::Queued,
        detail: Some("bob is offline".into()),
    }));
    assert_eq!(a.lines.back().unwrap().state.as_deref(), Some("queued: bob is offline"));
    a.handle(Input::Event(AgentEvent::MessageSent { to: "bob".into(), id: "beef".into(), at: 1 }));
    assert_eq!(a.lines.back().unwrap().state.as_deref(), Some("sent"), "in bob's mailbox");
    a.handle(Input::Event(AgentEvent::MessageDelivered { to: "bob".into(), id: "beef".into(), at: 1 }));
    assert_eq!(a.lines.back().unwrap().state.as_deref(), Some("delivered"));
    // What this account sent from another device shows as ours, once, without a bell.
    let copied = AgentEvent::MessageCopied {
        to: "bob".into(),
        id: "cafe".into(),
        text: "from my phone".into(),
        sent_at: 2,
        delivered: false,
        at: 3,
    };
    assert!(a.handle(Input::Event(copied.clone())).is_empty());
    a.handle(Input::Event(copied));
    let last = a.lines.back().unwrap();
    assert!(last.own && last.text == "from my phone" && last.state.as_deref() == Some("sent"));
    assert_eq!(a.lines.iter().filter(|l| l.id.as_deref() == Some("cafe")).count(), 1);
    // Up recalls what was sent.
    a.handle(key(KeyCode::Up));
    assert_eq!(a.input_text(), "hello world");
}

#[test]
fn alt_enter_makes_a_new_line_and_enter_sends_both() {
    let mut a = app();
    a.open = Some(ConvKey::Group(7));
    typed(&mut a, "one");
    a.handle(Input::Key(KeyEvent::new(KeyCode::Enter, KeyModifiers::ALT)));
    typed(&mut a, "two");
    let actions = a.handle(key(KeyCode::Enter));
    assert!(matches!(actions.as_slice(), [Action::Post { group: 7, text, .. }] if text == "one\ntwo"));
}

#[test]
fn commands_parse_and_destructive_ones_ask_first() {
    let mut a = app();
    typed(&mut a, "/add carol hi there");
    let actions = a.handle(key(KeyCode::Enter));
    assert_eq!(actions, vec![Action::Command(Command::Add { user: "carol".into(), message: "hi there".into() })]);
    typed(&mut a, "/remove bob");
    assert!(a.handle(key(KeyCode::Enter)).is_empty());
    assert!(matches!(a.mode, Mode::Confirm { .. }));
    assert!(a.handle(key(KeyCode::Char('n'))).is_empty(), "anything but y cancels");
    typed(&mut a, "/remove bob");
    a.handle(key(KeyCode::Enter));
    assert_eq!(a.handle(key(KeyCode::Char('y'))), vec![Action::Command(Command::Remove("bob".into()))]);
    typed(&mut a, "/open 家人群");
    assert_eq!(a.handle(key(KeyCode::Enter))[0], Action::LoadHistory { key: ConvKey::Group(7), before: None });
    typed(&mut a, "/invite carol");
    assert_eq!(
        a.handle(key(KeyCode::Enter)),
        vec![Action::Command(Command::Invite { group: 7, user: "carol".into() })]
    );
    typed(&mut a, "/open ghost");
    assert!(a.handle(key(KeyCode::Enter)).is_empty());
    assert!(a.notice.as_deref().unwrap().contains("no conversation ghost"));
    typed(&mut a, "/bogus");
    a.handle(key(KeyCode::Enter));
    assert!(a.notice.as_deref().unwrap().contains("/help"));
    assert_eq!(a.handle(ctrl('c')), vec![Action::Quit]);
}

#[test]
fn tab_goes_to_the_next_unread_conversation() {
    let mut a = app();
    let actions = a.handle(key(KeyCode::Tab));
    assert_eq!(actions[0], Action::LoadHistory { key: ConvKey::Friend("bob".into()), before: None });
    assert!(a.handle(key(KeyCode::Tab)).is_empty());
    assert_eq!(a.notice.as_deref(), Some("nothing unread"));
}

#[test]
fn scrolling_up_fetches_the_page_before_the_loaded_one() {
    let mut a = app();
    let bob = ConvKey::Friend("bob".into());
    a.handle(key(KeyCode::Tab));
    let page: Vec<Line> = (1..=PAGE)
        .map(|i| Line {
            id: Some(format!("{i}")),
            pos: 1000 + i,
            at: 0,
            sender: "bob".into(),
            text: format!("m{i}"),
            own: false,
            state: None,
            notice: false,
            token: 0,
        })
        .collect();
    a.handle(Input::Loaded(Loaded::History { key: bob.clone(), lines: page, older: false }));
    assert!(a.more_above);
    a.page_rows = 150;
    let actions = a.handle(key(KeyCode::PageUp));
    assert_eq!(actions, vec![Action::LoadHistory { key: bob.clone(), before: Some(1001) }]);
    assert!(a.handle(key(KeyCode::PageUp)).is_empty(), "one page at a time");
    let older = vec![Line { pos: 5, text: "oldest".into(), ..a.lines[0].clone() }];
    a.handle(Input::Loaded(Loaded::History { key: bob.clone(), lines: older, older: true }));
    assert_eq!(a.lines[0].text, "oldest");
    assert!(!a.more_above);
    a.handle(key(KeyCode::PageDown));
    assert_eq!(a.handle(key(KeyCode::PageDown)), vec![Action::MarkRead(bob)], "back at the bottom: read");
}

#[test]
fn the_agent_going_and_coming_back_reloads_everything() {
    let mut a = app();
    a.open = Some(ConvKey::Group(7));
    let status = AgentStatus {
        username: "alice".into(),
        display_name: None,
        broker: "127.0.0.1:7878".into(),
        broker_fingerprint: String::new(),
        device_fingerprint: String::new(),
        online: true,
        session_id: Some(1),
        observed_addr: None,
        local_addrs: Vec::new(),
        since: None,
        agent_pid: 1,
        peers: Vec::new(),
    };
    a.handle(Input::Agent(status.clone()));
    a.handle(Input::AgentLost);
    assert!(!a.agent_connected);
    let actions = a.handle(Input::Agent(status));
    assert_eq!(actions, vec![Action::LoadSidebar, Action::LoadHistory { key: ConvKey::Group(7), before: None }]);
    assert_eq!(a.notice.as_deref(), Some("the agent is back"));
}

#[test]
fn own_group_posts_are_not_shown_twice() {
    let mut a = app();
    a.open = Some(ConvKey::Group(7));
    typed(&mut a, "hi all");
    let actions = a.handle(key(KeyCode::Enter));
    let [Action::Post { token, .. }] = actions.as_slice() else { panic!() };
    let m = GroupMessage { group_id: 7, seq: 9, sender: "alice".into(), system: false, text: "hi all".into(), at: 5 };
    a.handle(Input::Event(AgentEvent::Broker { event: Event::GroupMessage(m), at: 5 }));
    a.handle(Input::Reply(Reply::Posted { token: *token, seq: 9 }));
    assert_eq!(a.lines.iter().filter(|l| l.text == "hi all").count(), 1);
    assert_eq!(a.lines[0].pos, 9);
}

#[test]
fn fuzzy_matching_and_path_completion() {
    assert!(fuzzy_score("家人群 7", "人群").is_some());
    assert!(fuzzy_score("bob", "bx").is_none());
    assert!(fuzzy_score("bob", "bb").unwrap() > fuzzy_score("bbo", "bb").unwrap());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("report-2026.pdf"), b"x").unwrap();
    std::fs::create_dir(dir.path().join("photos")).unwrap();
    let base = dir.path().display().to_string();
    assert_eq!(complete_path(&format!("{base}/rep")).unwrap(), format!("{base}/report-2026.pdf"));
    assert_eq!(complete_path(&format!("{base}/ph")).unwrap(), format!("{base}/photos/"));
}

fn screen(app: &mut App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| view::draw(app, f)).unwrap();
    let buf = t.backend().buffer().clone();
    // A wide character's second cell is a placeholder: skip it, as a terminal shows one character.
    (0..h)
        .map(|y| {
            let mut row = String::new();
            let mut x = 0;
            while x < w {
                let sym = buf[(x, y)].symbol();
                row.push_str(sym);
                x += (unicode_width::UnicodeWidthStr::width(sym) as u16).max(1);
            }
            row.trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_main_screen_in_80_by_24() {
    let mut a = app();
    a.handle(key(KeyCode::Tab));
    let bob = ConvKey::Friend("bob".into());
    let lines = vec![
        Line {
            id: Some("1".into()),
            pos: 1,
            at: 1_700_000_000_000,
            sender: "bob".into(),
            text: "你好 alice".into(),
            own: false,
            state: None,
            notice: false,
            token: 0,
        },
        Line {
            id: Some("2".into()),
            pos: 2,
            at: 1_700_000_060_000,
            sender: "alice".into(),
            text: "hi bob".into(),
            own: true,
            state: Some("queued".into()),
            notice: false,
            token: 0,
        },
    ];
    a.handle(Input::Loaded(Loaded::History { key: bob, lines, older: false }));
    let s = screen(&mut a, 80, 24);
    assert!(s.contains("p2pim"), "{s}");
    assert!(s.contains("● bob"), "{s}");
    assert!(s.contains("# 家人群"), "{s}");
    assert!(s.contains("○ 张三 (zhang)"), "{s}");
    assert!(s.contains("bob: 你好 alice"), "{s}");
    assert!(s.contains("alice: hi bob  (queued)"), "{s}");
    assert!(s.contains("2023-11-14"), "a day separator: {s}");
    assert!(s.contains("agent stopped"), "status bar: {s}");
    // Everything fits: no row is wider than the screen (wide characters count twice).
    for row in s.lines() {
        assert!(unicode_width::UnicodeWidthStr::width(row) <= 80, "{row}");
    }
}

#[test]
fn hostile_text_is_shown_escaped_on_every_screen() {
    let mut a = App::new("alice");
    let evil = "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{202e}txt";
    a.handle(Input::Loaded(Loaded::Sidebar {
        friends: vec![friend("bob", evil, true)],
        groups: vec![group(7, evil)],
        unread: Vec::new(),
        requests: Vec::new(),
        invitations: Vec::new(),
        files: Vec::new(),
        pins: Default::default(),
    }));
    a.handle(Input::Key(KeyEvent::new(KeyCode::Down, KeyModifiers::ALT)));
    let key_open = a.open.clone().unwrap();
    let line = Line {
        id: None,
        pos: 1,
        at: 0,
        sender: "bob".into(),
        text: evil.into(),
        own: false,
        state: None,
        notice: false,
        token: 0,
    };
    a.handle(Input::Loaded(Loaded::History { key: key_open, lines: vec![line], older: false }));
    a.notice = Some(evil.into());
    let mut screens = vec![screen(&mut a, 100, 30)];
    a.mode = Mode::Switcher { query: String::new(), selected: 0 };
    screens.push(screen(&mut a, 100, 30));
    a.mode = Mode::Listing { title: evil.into(), lines: vec![evil.into()] };
    screens.push(screen(&mut a, 100, 30));
    for s in screens {
        assert!(!s.contains('\u{1b}') && !s.contains('\u{7}') && !s.contains('\u{202e}'), "{s:?}");
        assert!(s.contains("\\x1b]0;pwned"), "{s}");
    }
}

#[test]
fn wrapping_counts_display_width_and_keeps_words_whole() {
    assert_eq!(view::wrap("张三李四", 5), ["张三", "李四"]);
    assert_eq!(view::wrap("abcdef", 3), ["abc", "def"]);
    assert_eq!(view::wrap("", 3), [""]);
    assert_eq!(view::wrap("some more words to wrap", 12), ["some more", "words to", "wrap"]);
    assert_eq!(view::wrap("a verylongwordthatdoesnotfit", 10), ["a verylong", "wordthatdo", "esnotfit"]);
    for row in view::wrap("the quick brown fox jumps over the lazy dog 你好世界 again and again", 17) {
        assert!(unicode_width::UnicodeWidthStr::width(row.as_str()) <= 17, "{row:?}");
    }
}

#[test]
fn file_offers_and_results_show_in_their_conversation() {
    let mut a = app();
    a.handle(key(KeyCode::Tab));
    let t = Transfer {
        id: "5f0b7323aaaa".into(),
        peer: "bob".into(),
        outgoing: false,
        name: "pic.txt".into(),
        size: 15,
        hash: String::new(),
        state: TransferState::Offered,
        bytes: 0,
        path: None,
        error: None,
        resumed_from: 0,
        created_at: 1,
        updated_at: 1,
    };
    assert_eq!(a.handle(Input::Event(AgentEvent::FileOffered { transfer: t.clone(), at: 5 })), vec![Action::Bell]);
    assert!(a.lines.back().unwrap().text.contains("/accept-file 5f0b7323"));
    assert_eq!(a.offers.len(), 1);
    let done = Transfer { state: TransferState::Done, path: Some("/tmp/pic.txt".into()), ..t };
    a.handle(Input::Event(AgentEvent::FileUpdated { transfer: done, at: 6 }));
    assert_eq!(a.lines.back().unwrap().text, "pic.txt: received, saved as /tmp/pic.txt");
    assert!(a.offers.is_empty());
}

#[test]
fn a_read_mark_from_anywhere_clears_that_count_without_reloading() {
    let mut a = app();
    let actions = a.handle(Input::Event(AgentEvent::Read { conversation: "u:bob".into(), up_to: 9, at: 1 }));
    assert!(actions.is_empty());
    assert_eq!(a.convs.iter().find(|c| c.key == ConvKey::Friend("bob".into())).unwrap().unread, 0);
}

#[test]
fn the_sidebar_marks_verified_friends_and_changed_keys() {
    let mut a = App::new("alice");
    a.handle(Input::Loaded(Loaded::Sidebar {
        friends: vec![friend("bob", "bob", true), friend("carol", "carol", true), friend("dave", "dave", false)],
        groups: Vec::new(),
        unread: Vec::new(),
        requests: Vec::new(),
        invitations: Vec::new(),
        files: Vec::new(),
        pins: [("bob".to_string(), (true, false)), ("carol".to_string(), (true, true))].into(),
    }));
    let s = screen(&mut a, 80, 24);
    assert!(s.lines().any(|l| l.contains("bob ✓")), "{s}");
    assert!(s.lines().any(|l| l.contains("carol !")), "a changed key wins over verified: {s}");
    assert!(s.lines().any(|l| l.contains("dave") && !l.contains("dave ✓") && !l.contains("dave !")), "{s}");
    // A key change found by the agent refreshes the marks.
    let actions = a.handle(Input::Event(AgentEvent::KeyChanged { username: "dave".into(), at: 1 }));
    assert!(actions.contains(&Action::LoadSidebar));
}
