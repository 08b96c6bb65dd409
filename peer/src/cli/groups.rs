//! `peer groups`, group posts and line-mode group chat.

use super::*;
use shared::proto::ErrorCode;

/// How long a group post whose fate is unknown is sent again (with its id: it is stored at most once).
const POST_PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

pub(super) async fn group_post(home: &Home, group_id: i64, text: &str) -> Result<i64> {
    post_once(home, group_id, text, || note!("the broker did not confirm the post yet; trying again")).await
}

/// Posts to a group at most once, and says so only once it is stored. The post carries a random id
/// kept over every try: a post whose answer was lost (the broker busy past its deadline, the connection
/// cut, no answer in time) is sent again for up to [`POST_PATIENCE`] without ever appearing twice.
/// `retrying` is called before each further try.
pub(crate) async fn post_once(home: &Home, group_id: i64, text: &str, retrying: impl Fn()) -> Result<i64> {
    shared::peer::check_text(text).map_err(|e| anyhow!(e))?;
    let post_id = crate::agent::random_id();
    let once = Request::GroupPostOnce { group_id, text: text.to_string(), post_id };
    let give_up = tokio::time::Instant::now() + POST_PATIENCE;
    let mut pause = std::time::Duration::from_millis(500);
    let mut first = true;
    loop {
        match broker_call(home, once.clone()).await {
            Ok(answer) => return posted(answer),
            // A broker from before posts with ids: the plain post, once. Without an id it is never sent
            // again (that could post it twice), so its answer is the end of it.
            Err(e) if first && refused_as(&e, |c| matches!(c, ErrorCode::Malformed(_))) => {
                return posted(broker_call(home, Request::GroupPost { group_id, text: text.to_string() }).await?);
            }
            Err(e) if fate_unknown(&e) && tokio::time::Instant::now() + pause < give_up => {
                first = false;
                retrying();
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(4));
            }
            Err(e) => {
                return Err(e.context(
                    "the post is not confirmed (`peer history --group ID` shows whether it arrived; sent again, it \
                     may appear twice)",
                ));
            }
        }
    }
}

/// A post's number from the broker's answer.
fn posted(answer: Response) -> Result<i64> {
    match answer {
        Response::GroupPosted { seq } => Ok(seq),
        other => bail!("unexpected answer from the broker: {other:?}"),
    }
}

fn refused_as(e: &anyhow::Error, code: impl Fn(&ErrorCode) -> bool) -> bool {
    e.chain().filter_map(|c| c.downcast_ref::<BrokerRefused>()).any(|BrokerRefused(b)| code(&b.code))
}

/// Whether a failed post may have been stored after all, or may be stored by trying again: the broker was
/// busy (its database did not answer in time), or the agent lost or never got its answer.
fn fate_unknown(e: &anyhow::Error) -> bool {
    let agent = e.chain().filter_map(|c| c.downcast_ref::<ControlError>());
    refused_as(e, |c| matches!(c, ErrorCode::Busy))
        || agent.into_iter().any(|c| matches!(c.code, ControlErrorCode::Offline | ControlErrorCode::Other))
}

pub(super) async fn groups(home: &Home, args: GroupsArgs) -> Result<()> {
    let Some(cmd) = args.cmd else {
        let Response::Groups(list) = broker_call(home, Request::Groups).await? else { bail!("unexpected answer") };
        let unread = unread_counts(home).await?;
        let unread_of = |g: i64| reads::count(&unread, &Conversation::Group(g));
        print_list(
            &list,
            args.json,
            "no groups yet: `peer groups create NAME`, or join one you were invited to",
            |g| {
                views::value(views::Group {
                    group_id: g.group_id,
                    name: &g.name,
                    owner: &g.owner,
                    members: g.members,
                    last_seq: g.last_seq,
                    unread: unread_of(g.group_id),
                })
            },
            |g| {
                let members = output::count(g.members, "member", "members");
                let unread = match unread_of(g.group_id) {
                    0 => String::new(),
                    n => format!("  {n} unread"),
                };
                format!("{:>6}  {} owner {:<20} {members}{unread}", g.group_id, output::pad(&g.name, 32), g.owner)
            },
        );
        return Ok(());
    };
    match cmd {
        GroupsCmd::Create { name } => {
            let Response::GroupCreated { group_id } = broker_call(home, Request::GroupCreate { name }).await? else {
                bail!("unexpected answer")
            };
            say!("{group_id}");
        }
        GroupsCmd::Invite { group, user } => {
            broker_ok(home, Request::GroupInvite { group_id: group, username: user.clone() }).await?;
            say!("invited {user} to group {group}");
        }
        GroupsCmd::Invitations { json } => {
            let Response::GroupInvitations(list) = broker_call(home, Request::GroupInvitations).await? else {
                bail!("unexpected answer")
            };
            print_list(
                &list,
                json,
                "no invitations",
                |i| {
                    views::value(views::Invitation {
                        group_id: i.group_id,
                        name: &i.name,
                        inviter: &i.inviter.username,
                        created_at: i.created_at,
                    })
                },
                |i| {
                    format!(
                        "{:>6}  {} from {}  (`peer groups join {}`)",
                        i.group_id,
                        output::pad(&i.name, 32),
                        i.inviter.username,
                        i.group_id
                    )
                },
            );
        }
        GroupsCmd::Join { group } => {
            broker_ok(home, Request::GroupJoin { group_id: group }).await?;
            say!("joined group {group}");
        }
        GroupsCmd::Decline { group } => {
            broker_ok(home, Request::GroupDecline { group_id: group }).await?;
            say!("declined the invitation to group {group}");
        }
        GroupsCmd::Leave { group } => {
            broker_ok(home, Request::GroupLeave { group_id: group }).await?;
            say!("left group {group}");
        }
        GroupsCmd::Remove { group, user } => {
            broker_ok(home, Request::GroupRemove { group_id: group, username: user.clone() }).await?;
            say!("removed {user} from group {group}");
        }
        GroupsCmd::Rename { group, name } => {
            broker_ok(home, Request::GroupRename { group_id: group, name: name.clone() }).await?;
            say!("group {group} is now called {name}");
        }
        GroupsCmd::Transfer { group, user } => {
            broker_ok(home, Request::GroupTransfer { group_id: group, username: user.clone() }).await?;
            say!("{user} now owns group {group}");
        }
        GroupsCmd::Disband { group } => {
            broker_ok(home, Request::GroupDisband { group_id: group }).await?;
            say!("group {group} disbanded");
        }
        GroupsCmd::Members { group, json } => {
            let Response::GroupMembers(list) = broker_call(home, Request::GroupMembers { group_id: group }).await?
            else {
                bail!("unexpected answer")
            };
            print_list(
                &list,
                json,
                "no members",
                |m| views::value(views::Member { user: (&m.user).into(), owner: m.owner, online: m.online }),
                |m| {
                    let role = if m.owner { " (owner)" } else { "" };
                    let presence = if m.online { "online" } else { "offline" };
                    format!("{:<32} {} {presence}{role}", m.user.username, output::pad(&m.user.display_name, 24))
                },
            );
        }
    }
    Ok(())
}

/// Line-mode group chat: the group's messages as they come (they are stored by the agent), your lines posted.
pub(super) async fn group_chat(home: &Home, group_id: i64) -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let mut follow = Follow::start(home).await?;
    say!("group {group_id}: type a message and press Enter; /history shows more, /quit leaves");
    for m in history::group_conversation(&home.db, group_id, 10, None).await? {
        say!("{}", output::group_message_line(&m));
    }
    let printer = tokio::spawn(async move {
        loop {
            match follow.next().await {
                Ok(Followed::Event(AgentEvent::Broker { event: Event::GroupMessage(m), .. }))
                    if m.group_id == group_id =>
                {
                    say!("{}", output::group_message_line(&m));
                }
                Ok(Followed::Event(e @ AgentEvent::Broker { event: Event::GroupPresence { group_id: g, .. }, .. }))
                    if g == group_id =>
                {
                    say!("{}", output::event_line(&e));
                }
                Ok(Followed::Lost) => say!("(the agent stopped: nothing arrives or leaves until it is back)"),
                Ok(Followed::Subscribed(_)) if follow.lost_before => say!("(the agent is back)"),
                Ok(_) => {}
                Err(e) => {
                    say!("(chat ended: {e})");
                    return;
                }
            }
        }
    });
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match line.trim_end() {
            "" => continue,
            "/quit" | "/exit" => break,
            "/history" => {
                for m in history::group_conversation(&home.db, group_id, 50, None).await? {
                    say!("{}", output::group_message_line(&m));
                }
            }
            text => {
                if let Err(e) = group_post(home, group_id, text).await {
                    say!("! {e}");
                }
            }
        }
    }
    printer.abort();
    Ok(())
}
