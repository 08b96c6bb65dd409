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
        ControlResponse::Sent { status: MessageStatus::Sent, .. } => say!(
            "sent: sealed in {to}'s mailbox on the broker; delivered when their device comes online, even if this one is off"
        ),
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

/// Whether a watch event belongs in the chat with `friend`: their messages, our failures to them, their
/// presence.
fn concerns(e: &AgentEvent, friend: &str) -> bool {
    match e {
        AgentEvent::MessageReceived { from, .. } => from == friend,
        AgentEvent::MessageFailed { to, .. } | AgentEvent::MessageCopied { to, .. } => to == friend,
        AgentEvent::Broker { event: Event::Presence { username, .. }, .. } => username == friend,
        _ => false,
    }
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
    let mut follow = Follow::start(home).await?;
    say!("chat with {friend}: type a message and press Enter; /history shows more, /quit leaves");
    for m in history::conversation(&home.db, friend, 10, None).await? {
        say!("{}", history_line(&m, &me));
    }
    let who = friend.to_string();
    let printer = tokio::spawn(async move {
        loop {
            let line = match follow.next().await {
                Ok(Followed::Event(e)) if concerns(&e, &who) => output::event_line(&e),
                Ok(Followed::Lost) => "(the agent stopped: nothing arrives or leaves until it is back)".into(),
                Ok(Followed::Subscribed(_)) if follow.lost_before => "(the agent is back)".into(),
                Ok(_) => continue,
                Err(e) => {
                    say!("(chat ended: {e})");
                    return;
                }
            };
            say!("{line}");
        }
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
        ControlResponse::Sent { status: MessageStatus::Sent, .. } => {
            say!("(sent: in {to}'s mailbox; delivered when their device comes online)");
            Ok(())
        }
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
