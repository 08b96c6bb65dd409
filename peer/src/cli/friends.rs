//! `peer friends`: the list and every change to it.

use super::*;

pub(super) async fn friends(home: &Home, args: FriendsArgs) -> Result<()> {
    let Some(cmd) = args.cmd else {
        let Response::Friends(list) = broker_call(home, Request::Friends).await? else { bail!("unexpected answer") };
        let links = match control_call(home, ControlRequest::Status).await? {
            ControlResponse::Status(s) => s.peers,
            _ => Vec::new(),
        };
        let unread = unread_counts(home).await?;
        let pins = crate::trust::pins(&home.db).await?;
        let paths = paths(home).await;
        print_friends(&list, &links, &unread, &pins, &paths, args.json);
        return Ok(());
    };
    match cmd {
        FriendsCmd::Add { user, message } => {
            validate::text("message", &message, validate::MAX_REQUEST_MESSAGE_CHARS)?;
            match broker_call(home, Request::FriendAdd { username: user.clone(), message }).await? {
                Response::FriendAdded { now_friends: true } => {
                    say!("{user} had already asked you: you are friends now")
                }
                _ => say!("friend request sent to {user}"),
            }
        }
        FriendsCmd::Requests { json } => {
            let Response::FriendRequests { incoming, outgoing } = broker_call(home, Request::FriendRequests).await?
            else {
                bail!("unexpected answer")
            };
            if json {
                let all: Vec<Value> = incoming
                    .iter()
                    .map(|r| output::request_json(r, "incoming"))
                    .chain(outgoing.iter().map(|r| output::request_json(r, "outgoing")))
                    .collect();
                print_json(&all);
            } else if incoming.is_empty() && outgoing.is_empty() {
                say!("no pending friend requests");
            } else {
                for r in &incoming {
                    say!(
                        "from {:<24} {}  {:?}  (`peer friends accept {}`)",
                        r.user.username,
                        output::time(r.created_at),
                        r.message,
                        r.user.username
                    );
                }
                for r in &outgoing {
                    say!("to   {:<24} {}  {:?}  (waiting)", r.user.username, output::time(r.created_at), r.message);
                }
            }
        }
        FriendsCmd::Accept { user } => {
            broker_ok(home, Request::FriendAccept { username: user.clone() }).await?;
            say!("you and {user} are friends now");
        }
        FriendsCmd::Decline { user } => {
            broker_ok(home, Request::FriendDecline { username: user.clone() }).await?;
            say!("declined {user}'s request");
        }
        FriendsCmd::Remove { user } => {
            broker_ok(home, Request::FriendRemove { username: user.clone() }).await?;
            say!("{user} is no longer your friend");
        }
        FriendsCmd::Block { user } => {
            broker_ok(home, Request::Block { username: user.clone() }).await?;
            say!("blocked {user}: their requests to you are dropped (`peer friends unblock {user}` lifts it)");
        }
        FriendsCmd::Unblock { user } => {
            broker_ok(home, Request::Unblock { username: user.clone() }).await?;
            say!("unblocked {user}");
        }
        FriendsCmd::Blocked { json } => {
            let Response::Users(list) = broker_call(home, Request::Blocked).await? else { bail!("unexpected answer") };
            print_list(&list, json, "nobody blocked", output::user_json, output::who);
        }
        FriendsCmd::Remark { user, alias } => {
            validate::text("alias", &alias, validate::MAX_NAME_CHARS)?;
            broker_ok(home, Request::FriendRemark { username: user.clone(), remark: alias }).await?;
            say!("alias for {user} saved");
        }
    }
    Ok(())
}

pub(super) fn print_friends(
    list: &[FriendInfo],
    links: &[shared::control::PeerLink],
    unread: &[reads::Unread],
    pins: &std::collections::HashMap<String, (bool, bool)>,
    paths: &[shared::control::PathHistory],
    json: bool,
) {
    let unread_of = |name: &str| reads::count(unread, &Conversation::Friend(name.to_string()));
    let trust_of = |name: &str| pins.get(name).copied().unwrap_or((false, false));
    if json {
        print_json(
            &list
                .iter()
                .map(|f| {
                    let mut v = output::friend_json(f, links, paths);
                    v["unread"] = unread_of(&f.user.username).into();
                    let (verified, key_changed) = trust_of(&f.user.username);
                    v["verified"] = verified.into();
                    v["key_changed"] = key_changed.into();
                    v
                })
                .collect::<Vec<_>>(),
        );
        return;
    }
    if list.is_empty() {
        say!("no friends yet: find people with `peer users search TEXT`, then `peer friends add USER`");
        return;
    }
    for f in list {
        let name = match &f.remark {
            Some(r) => format!("{} \"{}\"", output::who(&f.user), r),
            None => output::who(&f.user),
        };
        let presence = match (f.online, f.since) {
            (true, Some(t)) => format!("online since {}", output::time(t)),
            (true, None) => "online".to_string(),
            (false, Some(t)) => format!("offline, last seen {}", output::time(t)),
            (false, None) => "offline".to_string(),
        };
        let unread = match unread_of(&f.user.username) {
            0 => String::new(),
            n => format!("  {}", output::count(n, "unread", "unread")),
        };
        let trust = match trust_of(&f.user.username) {
            (_, true) => format!("  KEY CHANGED (`peer verify {}`)", f.user.username),
            (true, false) => "  verified".to_string(),
            (false, false) => String::new(),
        };
        say!("{} {presence}{unread}{trust}", output::pad(&name, 48));
    }
}
