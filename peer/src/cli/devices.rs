//! Trust: `peer devices` (list, link, rename, revoke), `peer link` (this device joins an account),
//! `peer verify` (safety numbers), and `peer account` (key backup and reset).

use super::*;
use certs::account::{AccountKeyPair, LinkCode};
use shared::control::{Verification, VerifyAction};
use shared::trust::{DeviceRecord, OwnDevice, Revocation};
use std::io::BufRead;

pub(super) async fn devices(home: &Home, args: DevicesArgs) -> Result<()> {
    let me = home.identity()?.fingerprint();
    let Some(cmd) = args.cmd else {
        let (key, list) = own_devices(home).await?;
        let linked = list.iter().any(|d| d.record.body.fingerprint == me.0);
        if args.json {
            print_json(&views::DevicesView::new(key.as_ref(), &list, &me.0));
            return Ok(());
        }
        if list.is_empty() {
            say!("no devices are linked to this account yet");
        }
        for d in &list {
            say!("{}", device_line(d, &me.0));
        }
        if !linked {
            say!(
                "this device is not linked: friends do not accept it. Link it from a linked device: \
                 `peer devices link` there, then `peer link CODE --broker HOST:PORT` here"
            );
        }
        return Ok(());
    };
    match cmd {
        DevicesCmd::Link => link_offer(home).await,
        DevicesCmd::Rename { device, name } => {
            validate::display_name(&name)
                .map_err(|_| anyhow!("a device name is 1-64 characters, no control characters"))?;
            let key = account_key(home)?;
            let (_, list) = own_devices(home).await?;
            let d = pick(&list, &device)?;
            let record = key.sign(DeviceRecord { name: name.clone(), ..d.record.body.clone() });
            broker_ok(home, Request::Certify { account_key: key.public(), record }).await?;
            if d.record.body.fingerprint == me.0 {
                home.set("device_name", &name).await?;
            }
            say!("renamed to \"{name}\"");
            Ok(())
        }
        DevicesCmd::Revoke { device } => {
            let key = account_key(home)?;
            let (_, list) = own_devices(home).await?;
            let d = pick(&list, &device)?;
            if d.record.body.fingerprint == me.0 {
                bail!("that is this device: revoke it from another one (or `peer logout` here)");
            }
            let revocation = key.sign(Revocation {
                username: d.record.body.username.clone(),
                fingerprint: d.record.body.fingerprint,
                at: crate::agent::now_ms(),
            });
            broker_ok(home, Request::RevokeDevice { revocation }).await?;
            say!(
                "revoked \"{}\": its sessions are closed, friends drop its key, and it cannot come back unless \
                 it is linked again",
                d.record.body.name
            );
            Ok(())
        }
    }
}

async fn own_devices(home: &Home) -> Result<(Option<shared::trust::AccountKey>, Vec<OwnDevice>)> {
    match broker_call(home, Request::Devices).await? {
        Response::Devices { account_key, devices } => Ok((account_key, devices)),
        other => bail!("unexpected answer from the broker: {other:?}"),
    }
}

fn device_line(d: &OwnDevice, me: &[u8; 32]) -> String {
    let fp = hex::encode(d.record.body.fingerprint);
    let this = if &d.record.body.fingerprint == me { "  (this device)" } else { "" };
    let seen = match (d.online, d.last_seen) {
        (true, _) => "online".to_string(),
        (false, Some(t)) => format!("last seen {}", output::time(t)),
        (false, None) => "not seen yet".to_string(),
    };
    format!("{}  {}  {seen}{this}", output::short_id(&fp), output::pad(&d.record.body.name, 24))
}

/// A device by fingerprint prefix (at least 4 hex digits) or exact name; ambiguity is an error.
fn pick<'a>(list: &'a [OwnDevice], which: &str) -> Result<&'a OwnDevice> {
    let lower = which.to_ascii_lowercase();
    let hits: Vec<&OwnDevice> = list
        .iter()
        .filter(|d| {
            d.record.body.name == which
                || (lower.len() >= 4 && hex::encode(d.record.body.fingerprint).starts_with(&lower))
        })
        .collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => bail!("no device {which:?}: `peer devices` lists them (by id or name)"),
        _ => bail!("{which:?} names more than one device: give more of the id"),
    }
}

fn account_key(home: &Home) -> Result<AccountKeyPair> {
    home.account_key()?.ok_or_else(|| {
        anyhow!("this device does not hold the account key: do this from a linked device (`peer devices` there)")
    })
}

/// `peer devices link`: shows a code, waits for the new device, asks the user to compare words.
async fn link_offer(home: &Home) -> Result<()> {
    let mut follow = Follow::start(home).await?;
    // Subscribed first, so that nothing the agent says about this code is missed.
    let ControlResponse::LinkCode { code, link_id, expires_in_secs } =
        control_call(home, ControlRequest::LinkStart).await?
    else {
        bail!("unexpected answer from the agent")
    };
    let broker = home.get("broker").await?.unwrap_or_default();
    say!("On the new device, run:");
    say!("");
    say!("    peer link {code} --broker {broker}");
    say!("");
    output::qr(&format!("p2pim-link:{code}@{broker}"));
    say!("The code works once, for {} minutes. Waiting for the new device...", expires_in_secs / 60);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(expires_in_secs);
    loop {
        let next = tokio::time::timeout_at(deadline, follow.next()).await;
        let Ok(next) = next else { bail!("no device used the code in time; run `peer devices link` again") };
        match next? {
            Followed::Event(AgentEvent::LinkRequest { link_id: id, device_name, words, .. }) if id == link_id => {
                say!("Device \"{device_name}\" wants to join this account. It shows these words:");
                say!("");
                say!("    {words}");
                say!("");
                // Read on a thread of its own: the agent's events keep being taken meanwhile.
                let accept =
                    tokio::task::spawn_blocking(|| ask_yes("Do the words on the new device match exactly? [y/N] "))
                        .await??;
                expect_ok(control_call(home, ControlRequest::LinkConfirm { link_id, accept }).await?)?;
                if !accept {
                    bail!("not linked: you said the words differ (the code is used up; someone may have seen it)");
                }
                say!("linking \"{device_name}\": sending the history...");
            }
            Followed::Event(AgentEvent::Linked { link_id: id, device_name, messages, .. }) if id == link_id => {
                say!("\"{device_name}\" is linked, and has a copy of the history ({messages} messages)");
                return Ok(());
            }
            Followed::Event(AgentEvent::LinkFailed { link_id: id, reason, .. }) if id == link_id => {
                bail!("linking failed: {reason}");
            }
            Followed::Lost => bail!("the agent stopped while linking"),
            _ => {}
        }
    }
}

/// A yes/no question, answered on stdin (a terminal or a script's pipe).
fn ask_yes(prompt: &'static str) -> Result<bool> {
    use std::io::Write;
    let mut err = std::io::stderr();
    let _ = write!(err, "{prompt}");
    let _ = err.flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// `peer link CODE --broker HOST:PORT`: this (new) device joins the account of the device that showed the
/// code, and copies its history.
pub(super) async fn link(home: &Home, code: &str, broker: &BrokerArgs, name: Option<String>) -> Result<()> {
    if let Some(current) = home.get("username").await? {
        bail!("this home already holds {current}'s account: link into a new --home");
    }
    let code = LinkCode::parse(code)?;
    let name = name.unwrap_or_else(crate::home::default_device_name);
    validate::display_name(&name).map_err(|_| anyhow!("a device name is 1-64 characters, no control characters"))?;
    let identity = home.identity()?;
    let addrs = net::resolve_all(&broker.broker).await?;
    let pinning =
        super::account::Pinning::new(broker.broker_fingerprint.as_deref().map(str::parse::<Fingerprint>).transpose()?);
    // One endpoint for the broker and the other device: the address the broker saw is the one the other
    // device's packets (if it punches towards us) open.
    let (endpoint, conn) = net::connect_first(&identity, &addrs, pinning.pin()).await?;
    let local_addrs = net::local_candidates(&endpoint, conn.remote_address());
    let (username, existing) = match net::request(&conn, &Request::LinkClaim { link_id: code.id, local_addrs }).await? {
        Response::LinkPeer { username, device } => (username, device),
        Response::Error(e) => return Err(BrokerRefused(e).into()),
        other => bail!("unexpected answer from the broker: {other:?}"),
    };
    let (broker_fp, first_use) = pinning.settled()?;
    if let Some(fp) = first_use {
        note!("pinned the broker's identity {fp} (trust on first use)");
    }
    let words = code.confirmation_words(&existing.fingerprint, &identity.fingerprint().0);
    say!("Joining {username}'s account as \"{name}\". Check that your other device shows these words:");
    say!("");
    say!("    {words}");
    say!("");
    say!("and confirm there.");
    home.set("username", &username).await?;
    home.set("broker", &broker.broker).await?;
    home.set("broker_fingerprint", &broker_fp.to_string()).await?;
    home.set("device_name", &name).await?;
    let bar = std::cell::RefCell::new(None::<indicatif::ProgressBar>);
    let joined = crate::link::join(home, &endpoint, &code, &username, &existing, &name, |total, done| {
        let mut b = bar.borrow_mut();
        let pb = b.get_or_insert_with(|| output::progress_bar(total, "copying history"));
        pb.set_position(done);
    })
    .await;
    if let Some(pb) = bar.borrow().as_ref() {
        pb.finish_and_clear();
    }
    conn.close(quinn::VarInt::from_u32(0), b"done");
    let joined = match joined {
        Ok(j) => j,
        Err(e) => {
            // Nothing half-linked stays behind.
            let _ = home.forget_account().await;
            return Err(e);
        }
    };
    say!(
        "linked: this device is one of {}'s now, with {} messages of history; start it with `peer --home {} up --detach` or open the app",
        joined.username,
        joined.messages,
        home.dir.display()
    );
    Ok(())
}

/// `peer link --from-backup FILE`: the account key from a backup, and a login with the password.
pub(super) async fn link_from_backup(home: &Home, file: &Path, broker: &BrokerArgs) -> Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut pw = password::Source::new(broker.password_stdin)?;
    let passphrase = pw.read("backup passphrase", "PEER_BACKUP_PASSPHRASE", false)?;
    let (username, key) = certs::account::open_backup(&text, &passphrase)?;
    make_room(home, &username, false).await?;
    let password = pw.read("account password", "PEER_PASSWORD", false)?;
    let pinned = broker.broker_fingerprint.as_deref().map(str::parse::<Fingerprint>).transpose()?;
    let done = sign_in(home, &broker.broker, pinned, Request::Login { username: username.clone(), password }).await?;
    home.save_account_key(&key)?;
    if let Some(fp) = done.first_use {
        note!("pinned the broker's identity {fp} (trust on first use)");
    }
    say!(
        "restored {username}'s account key and logged in; this device is linked once its agent starts \
         (`peer --home {} up --detach`)",
        home.dir.display()
    );
    Ok(())
}

/// `peer verify USER [--confirm | --accept-new-key]`.
pub(super) async fn verify(home: &Home, user: &str, action: VerifyAction, json: bool) -> Result<()> {
    let ControlResponse::Verification(v) =
        control_call(home, ControlRequest::Verify { username: user.to_string(), action }).await?
    else {
        bail!("unexpected answer from the agent")
    };
    if json {
        print_json(&views::VerificationView::from(&v));
        return Ok(());
    }
    print_verification(&v, action);
    Ok(())
}

fn print_verification(v: &Verification, action: VerifyAction) {
    let user = &v.username;
    match action {
        VerifyAction::Confirm => say!("{user} is verified"),
        VerifyAction::AcceptNewKey => say!("accepted {user}'s new account key; messages held for them are being sent"),
        VerifyAction::Show => {}
    }
    if v.key_changed {
        say!(
            "WARNING: {user}'s account key CHANGED. Messages to them are held. Ask {user} (in person or by a \
             call) whether they reset their account; if they did, `peer verify {user} --accept-new-key`"
        );
    }
    match &v.safety_number {
        Some(n) => {
            say!("safety number with {user} (the same on both devices):");
            say!("");
            for row in n.split(' ').collect::<Vec<_>>().chunks(4) {
                say!("    {}", row.join(" "));
            }
            say!("");
            output::qr(&n.replace(' ', ""));
            if v.verified {
                say!("{user} is verified");
            } else {
                say!(
                    "compare it with {user}'s (in person or by a call); if it matches: `peer verify {user} --confirm`"
                );
            }
        }
        None => say!("no account key is known for {user} yet: their app publishes one when it next connects"),
    }
}

/// `peer account export-key FILE`.
pub(super) async fn export_key(home: &Home, file: &Path, passphrase_stdin: bool) -> Result<()> {
    let key = account_key(home)?;
    let username = home.get("username").await?.context("this home has no account")?;
    let mut pw = password::Source::new(passphrase_stdin)?;
    let passphrase = pw.read("passphrase for the backup (at least 8 characters)", "PEER_BACKUP_PASSPHRASE", true)?;
    if passphrase.chars().count() < 8 {
        bail!("the passphrase must be at least 8 characters");
    }
    let sealed = certs::account::seal_backup(&key, &username, &passphrase)?;
    certs::secret_file::write(file, sealed.as_bytes()).with_context(|| format!("cannot write {}", file.display()))?;
    say!(
        "wrote {}: the account key, sealed with your passphrase. Keep it somewhere safe and apart from this \
         device; `peer link --from-backup {} --broker HOST:PORT` restores it on a new one",
        file.display(),
        file.display()
    );
    Ok(())
}

/// `peer account reset-key`: a new account key, with the password, when every device with the old one is
/// lost. Every other device is cut off and friends are warned.
pub(super) async fn reset_key(home: &Home, password_stdin: bool) -> Result<()> {
    let username = home.get("username").await?.context("this home has no account")?;
    let mut pw = password::Source::new(password_stdin)?;
    let password = pw.read("account password", "PEER_PASSWORD", false)?;
    let key = AccountKeyPair::generate()?;
    let me = home.identity()?.fingerprint();
    let record = key.sign(DeviceRecord {
        username: username.clone(),
        fingerprint: me.0,
        name: home.device_name().await?,
        created_at: crate::agent::now_ms(),
    });
    broker_ok(home, Request::ResetAccountKey { password, account_key: key.public(), record }).await?;
    home.save_account_key(&key)?;
    say!(
        "new account key made: this is your only linked device now, and every friend sees a key-change warning \
         until they accept the new key"
    );
    Ok(())
}
