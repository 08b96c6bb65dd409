//! File transfers: `send-file` (hash, offer, follow to the verified end) and `files` (list, accept, decline,
//! cancel).

use super::*;
use crate::files::hash_file;
use indicatif::{ProgressBar, ProgressStyle};
use shared::control::{Transfer, TransferState};
use shared::files::format_size;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often plain progress lines are printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

/// A progress display: a bar on a terminal, a line every few seconds otherwise.
struct Meter {
    bar: Option<ProgressBar>,
    label: String,
    size: u64,
    last_line: Instant,
}

impl Meter {
    fn new(label: &str, size: u64) -> Self {
        // The label holds a file name a friend chose; the bar writes it to the terminal itself.
        let label = shared::display::escape(label);
        let label = label.as_str();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(size);
            let style =
                ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(label.to_string());
            bar
        });
        Self { bar, label: label.to_string(), size, last_line: Instant::now() }
    }

    fn set(&mut self, bytes: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(bytes),
            None if self.last_line.elapsed() >= PLAIN_EVERY => {
                self.last_line = Instant::now();
                let pct = output::percent(bytes, self.size);
                note!("{}: {} of {} ({pct})", self.label, format_size(bytes), format_size(self.size));
            }
            None => {}
        }
    }

    /// Prints a note without breaking the bar.
    fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(shared::display::escape(text)),
            None => note!("{text}"),
        }
    }

    fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `peer send-file`: hashes the file, offers it, and follows the transfer until the friend has verified it.
pub(super) async fn send_file(home: &Home, to: &str, path: &Path, name: Option<String>, wait: bool) -> Result<()> {
    validate::username(to).map_err(|_| anyhow!("no such user: {to}"))?;
    let path = std::fs::canonicalize(path).with_context(|| format!("cannot open {}", path.display()))?;
    let meta = std::fs::metadata(&path)?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let size = meta.len();
    let name = match name {
        Some(n) => n,
        None => path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
    };
    // Subscribed before the offer, so that no event of this transfer is missed.
    let mut events = connect_agent(home).await?;
    write_frame(&mut events, &ControlRequest::Watch).await?;
    read_frame::<ControlResponse, _>(&mut events).await?.ok_or_else(|| anyhow!("the agent closed the connection"))?;

    let mut meter = Meter::new(&format!("hashing {name}"), size);
    let hash = tokio::task::spawn_blocking({
        let path = path.clone();
        let bar = meter.bar.clone();
        move || {
            hash_file(&path, |done| {
                if let Some(bar) = &bar {
                    bar.set_position(done);
                }
            })
        }
    })
    .await?
    .with_context(|| format!("cannot read {}", path.display()))?;
    meter.done();

    let req = ControlRequest::SendFile {
        to: to.to_string(),
        path: path.to_string_lossy().to_string(),
        name: name.clone(),
        size,
        hash: *hash.as_bytes(),
    };
    let t = match control_call(home, req).await? {
        ControlResponse::Transfer(t) => t,
        other => bail!("unexpected answer from the agent: {other:?}"),
    };
    let id = t.id.clone();
    match t.state {
        TransferState::Done => {
            say!("{to} already has {name} ({}, verified)", format_size(size));
            return Ok(());
        }
        TransferState::Waiting => note!(
            "{}; the agent offers {name} when you are both online (transfer {})",
            t.error.as_deref().unwrap_or("not reachable now"),
            output::short_id(&id)
        ),
        TransferState::Offered => {
            note!("offered {name} to {to}; waiting for them to accept (transfer {})", output::short_id(&id))
        }
        TransferState::Transferring => note!("continuing {name} to {to} (transfer {})", output::short_id(&id)),
        _ => bail!("{}", t.error.unwrap_or_else(|| format!("the transfer is {}", t.state.as_str()))),
    }
    if !wait {
        say!("{id}");
        return Ok(());
    }
    // The bar (with its rate and ETA) appears only once bytes move: before that there is nothing to
    // estimate, and an interruption takes it away again until they move once more.
    let label = format!("{name} → {to}");
    let mut moving = t.state == TransferState::Transferring;
    meter = Meter::new(&label, size);
    let mut last_note = t.error.clone();
    while let Some(resp) = read_frame::<ControlResponse, _>(&mut events).await? {
        let ControlResponse::Event(event) = resp else { continue };
        match event {
            AgentEvent::FileProgress { id: i, bytes, .. } if i == id => {
                if !moving {
                    moving = true;
                    meter = Meter::new(&label, size);
                }
                meter.set(bytes);
            }
            AgentEvent::FileUpdated { transfer, .. } if transfer.id == id => {
                if transfer.state != TransferState::Transferring && moving {
                    moving = false;
                    meter.done();
                }
                meter.set(transfer.bytes);
                match transfer.state {
                    TransferState::Done => {
                        meter.done();
                        say!("delivered {name} to {to} ({}, verified by {to})", format_size(size));
                        return Ok(());
                    }
                    s if s.is_final() => {
                        meter.done();
                        bail!("{}", transfer.error.unwrap_or_else(|| format!("the transfer was {}", s.as_str())));
                    }
                    _ if transfer.error != last_note => {
                        if let Some(e) = &transfer.error {
                            meter.note(&format!(
                                "{e}; it continues when you are both online (Ctrl-C leaves it to the agent)"
                            ));
                        }
                        last_note = transfer.error;
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    meter.done();
    bail!("the agent stopped; the transfer continues when it runs again (see `peer files`)")
}

/// `peer files` and its subcommands.
pub(super) async fn files(home: &Home, args: FilesArgs) -> Result<()> {
    let resp = match args.cmd {
        None => {
            let ControlResponse::Transfers(list) = control_call(home, ControlRequest::Files).await? else {
                bail!("unexpected answer from the agent");
            };
            print_transfers(&list, args.json);
            return Ok(());
        }
        Some(FilesCmd::Accept { id, to }) => {
            let dir = match to {
                Some(d) => d,
                None => default_download_dir()?,
            };
            let dir = std::fs::canonicalize(&dir).with_context(|| format!("no directory {}", dir.display()))?;
            control_call(home, ControlRequest::FileAccept { id, dir: dir.to_string_lossy().to_string() }).await?
        }
        Some(FilesCmd::Decline { id }) => control_call(home, ControlRequest::FileDecline { id }).await?,
        Some(FilesCmd::Cancel { id }) => control_call(home, ControlRequest::FileCancel { id }).await?,
    };
    let ControlResponse::Transfer(t) = resp else { bail!("unexpected answer from the agent") };
    match t.state {
        TransferState::Transferring => {
            say!("accepted {} from {}; `peer files` shows its progress", t.name, t.peer)
        }
        _ => say!("{}", output::transfer_line(&t)),
    }
    Ok(())
}

fn print_transfers(list: &[Transfer], json: bool) {
    print_list(list, json, "no transfers", output::transfer_json, output::transfer_line);
}

/// The platform's Downloads folder (`~/Downloads` where the desktop names none), created if missing.
pub(crate) fn default_download_dir() -> Result<PathBuf> {
    let dirs = directories::UserDirs::new().context("no home directory: pass --to DIR")?;
    let d = match dirs.download_dir() {
        Some(d) => d.to_path_buf(),
        None => dirs.home_dir().join("Downloads"),
    };
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}: pass --to DIR", d.display()))?;
    Ok(d)
}
