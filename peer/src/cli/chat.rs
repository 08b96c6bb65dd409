//! One-to-one messages: `send`, line-mode `chat`, and how history lines look.

use super::*;

pub(super) fn history_line(m: &history::Message, me: &str) -> String {
    let who = if m.outgoing { me } else { m.peer.as_str() };
    let status = match m.status.as_str() {
        "delivered" | "received" => String::new(),
        other => format!("  ({other})"),
    };
    format!("[{}] {who}: {}{status}", output::time(m.sent_at), m.text)
}

pub(super) async fn send(home: &Home, to: &str, text: &str) -> Result<()> {
    validate::username(to).map_err(|_| anyhow!("no such user: {to}"))?;
    shared::peer::check_text(text).map_err(|e| anyhow!(e))?;
    match control_call(home, ControlRequest::Send { to: to.to_string(), text: text.to_string() }).await? {
        ControlResponse::Sent { status: MessageStatus::Delivered, .. } => say!("delivered to {to}"),
        ControlResponse::Sent { status: MessageStatus::Failed, detail, .. } => {
            bail!("not delivered: {}", detail.unwrap_or_default())
        }
        ControlResponse::Sent { detail, .. } => say!(
            "queued: {}; the agent delivers it when you are both online",
            detail.unwrap_or_else(|| format!("{to} is not reachable now"))
        ),
        other => bail!("unexpected answer from the agent: {other:?}"),
    }
    Ok(())
}

/// Line-mode chat, like the seed's command-line client.
pub(super) async fn chat(home: &Home, friend: &str) -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    // Only a friend can be chatted with: say so up front rather than open a chat nothing will reach. (With
    // the broker unreachable, the chat opens anyway: messages queue until both are online.)
    if let Ok(Response::Friends(list)) = broker_call(home, Request::Friends).await
        && !list.iter().any(|f| f.user.username == friend)
    {
        bail!(
            "{friend} is not your friend: find them with `peer users search {friend}`, then `peer friends add {friend}`"
        );
    }
    let me = home.get("username").await?.unwrap_or_default();
    let mut events = connect_agent(home).await?;
    write_frame(&mut events, &ControlRequest::Watch).await?;
    say!("chat with {friend}: type a message and press Enter; /history shows more, /quit leaves");
    for m in history::conversation(&home.db, friend, 10, None).await? {
        say!("{}", history_line(&m, &me));
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
            say!("{line}");
        }
        say!("(the agent stopped)");
    });
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let line = line.trim_end();
        match line {
            "" => continue,
            "/quit" | "/exit" => break,
            "/history" => {
                for m in history::conversation(&home.db, friend, 50, None).await? {
                    say!("{}", history_line(&m, &me));
                }
            }
            text => {
                if let Err(e) = send_quiet(home, friend, text).await {
                    say!("! {e}");
                }
            }
        }
    }
    printer.abort();
    Ok(())
}

/// Sends from `peer chat`: silent when delivered, a note when queued.
pub(super) async fn send_quiet(home: &Home, to: &str, text: &str) -> Result<()> {
    shared::peer::check_text(text).map_err(|e| anyhow!(e))?;
    match control_call(home, ControlRequest::Send { to: to.to_string(), text: text.to_string() }).await? {
        ControlResponse::Sent { status: MessageStatus::Delivered, .. } => Ok(()),
        ControlResponse::Sent { status: MessageStatus::Failed, detail, .. } => {
            bail!("not delivered: {}", detail.unwrap_or_default())
        }
        ControlResponse::Sent { .. } => {
            say!("(queued: {to} is not reachable now; it will be delivered when you are both online)");
            Ok(())
        }
        other => bail!("unexpected answer from the agent: {other:?}"),
    }
}
