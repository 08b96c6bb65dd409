//! `bench tui`: the app's state machine and drawing, in-process on ratatui's test backend, against a real
//! device database holding 100,000 messages in the open conversation and 500 conversations in the
//! sidebar. Time to first frame (database reads included), frame time while scrolling back through the
//! whole conversation, frame time while messages arrive, and this process's peak memory.

use crate::stats::{ms, percentile};
use anyhow::Result;
use peer::app::store::Store;
use peer::app::{Action, App, ConvKey, Input, KeyCode, KeyEvent, KeyModifiers, Loaded, shell, view};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde_json::json;
use shared::control::AgentEvent;
use shared::proto::{FriendInfo, GroupInfo, UserInfo};
use std::time::Instant;

pub(crate) async fn tui_bench(messages: usize, conversations: usize, arrivals: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut store = Store::open(dir.path()).await?;
    store.me = "alice".into();
    let start_ms = 1_700_000_000_000;
    eprintln!("writing {messages} messages ...");
    store.fill_for_bench("bob", messages, start_ms).await?;
    let friends: Vec<FriendInfo> = (0..conversations * 4 / 5)
        .map(|i| {
            let name = if i == 0 { "bob".to_string() } else { format!("friend{i:03}") };
            FriendInfo {
                user: UserInfo { username: name.clone(), display_name: format!("朋友 {i}") },
                remark: None,
                online: i % 3 == 0,
                since: None,
            }
        })
        .collect();
    let groups: Vec<GroupInfo> = (0..conversations - friends.len())
        .map(|i| GroupInfo {
            group_id: i as i64 + 1,
            name: format!("群 {i}"),
            owner: "x".into(),
            last_seq: 0,
            members: 9,
        })
        .collect();
    // The app's peak, not the set-up's: Linux resets the high-water mark on "5" (since 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let mut term = Terminal::new(TestBackend::new(120, 40))?;
    let bob = ConvKey::Friend("bob".into());

    // First frame: sidebar counts and the newest page read from the database, laid out and drawn.
    let t0 = Instant::now();
    let mut app = App::new("alice");
    app.now = start_ms + messages as i64 * 1000;
    let unread = store.unread().await?;
    app.handle(Input::Loaded(Loaded::Sidebar {
        friends,
        groups,
        unread,
        requests: Vec::new(),
        invitations: Vec::new(),
        files: Vec::new(),
        pins: Default::default(),
    }));
    let actions = app.start(Some(bob.clone()));
    run(&mut app, &store, actions).await;
    term.draw(|f| view::draw(&mut app, f))?;
    let first_frame = t0.elapsed();

    // Scrolling back to the very first message, a page at a time, loading pages as the app asks.
    let mut scroll = Vec::new();
    let page_up = Input::Key(KeyEvent::new(KeyCode::PageUp, KeyModifiers::NONE));
    let mut guard = 0;
    while (app.more_above || app.loading) && guard < 100_000 {
        let t = Instant::now();
        let actions = app.handle(page_up.clone());
        run(&mut app, &store, actions).await;
        term.draw(|f| view::draw(&mut app, f))?;
        scroll.push(t.elapsed());
        guard += 1;
    }
    let loaded = app.lines.len();
    let page_down = Input::Key(KeyEvent::new(KeyCode::PageDown, KeyModifiers::NONE));
    for _ in 0..200 {
        let t = Instant::now();
        let actions = app.handle(page_down.clone());
        run(&mut app, &store, actions).await;
        term.draw(|f| view::draw(&mut app, f))?;
        scroll.push(t.elapsed());
    }
    app.anchor = None;

    // Messages arriving at 100/s (one frame each; pacing does not change a frame's cost, so they come
    // back to back): half in the open conversation, half elsewhere (unread counts, bell, notification).
    let mut arrive = Vec::new();
    for i in 0..arrivals {
        let from = if i % 2 == 0 { "bob".to_string() } else { format!("friend{:03}", 1 + i % 300) };
        let ev = AgentEvent::MessageReceived {
            from,
            id: format!("{i:x}"),
            text: format!("live message {i} 你好"),
            sent_at: app.now,
            at: app.now,
        };
        let t = Instant::now();
        let _ = app.handle(Input::Event(ev));
        term.draw(|f| view::draw(&mut app, f))?;
        arrive.push(t.elapsed());
    }
    let peak = crate::proc_status_kib(std::process::id(), "VmHWM:").unwrap_or(0);
    let (s50, s99) = (percentile(&mut scroll, 50.0), percentile(&mut scroll, 99.0));
    let (a50, a99) = (percentile(&mut arrive, 50.0), percentile(&mut arrive, 99.0));
    println!("tui bench: {messages} messages open, {conversations} conversations, 120x40 test backend");
    println!("  time to first frame (database reads included): {}   target < 150 ms", ms(first_frame));
    println!(
        "  scrolling through all {loaded} messages ({} frames): p50 {}  p99 {}   target p99 < 16 ms",
        scroll.len(),
        ms(s50),
        ms(s99)
    );
    println!("  {arrivals} messages arriving: frame p50 {}  p99 {}   target p99 < 16 ms", ms(a50), ms(a99));
    println!("  peak memory of this process: {:.1} MiB   target < 64 MiB", peak as f64 / 1024.0);
    println!(
        "{}",
        json!({ "bench": "tui", "messages": messages, "conversations": conversations,
            "first_frame_ms": first_frame.as_secs_f64() * 1e3, "scroll_p50_ms": s50.as_secs_f64() * 1e3,
            "scroll_p99_ms": s99.as_secs_f64() * 1e3, "arrive_p50_ms": a50.as_secs_f64() * 1e3,
            "arrive_p99_ms": a99.as_secs_f64() * 1e3, "peak_kib": peak, "loaded": loaded })
    );
    Ok(())
}

/// Performs the app's actions that read the database (as the shell would), feeding the results back.
async fn run(app: &mut App, store: &Store, mut actions: Vec<Action>) {
    while let Some(a) = actions.pop() {
        if matches!(a, Action::LoadHistory { .. })
            && let Some(input) = shell::run_action(store, a).await
        {
            actions.extend(app.handle(input));
        }
    }
}
