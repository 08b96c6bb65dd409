//! Starting the agent in the background (`peer up --detach`, and the app when no agent runs) and waiting
//! for it to come and go.

use crate::control;
use crate::home::Home;
use anyhow::{Context, Result, bail};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting agent may take to open its control socket.
const START_PATIENCE: Duration = Duration::from_secs(10);

/// Starts `peer up` for this home as a background process of its own (its own process group, so closing the
/// terminal or Ctrl-C in it does not stop it), logging to `HOME/agent.log`; returns its pid once it
/// answers on its control socket. Options for the agent come from the environment (`PEER_BIND`, ...), as
/// they would for `peer up`.
pub(crate) async fn detach(home: &Home) -> Result<u32> {
    if control::connect(&home.dir).await.is_ok() {
        bail!("an agent is already running for {}", home.dir.display());
    }
    home.account().await?;
    let log_path = home.dir.join("agent.log");
    let log = certs::secret_file::owner_only()
        .truncate(false)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--home").arg(&home.dir).arg("up").stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    if std::env::var_os("PEER_LOG").is_none() {
        cmd.env("PEER_LOG", "info");
    }
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("cannot start the agent")?;
    let pid = child.id();
    let deadline = Instant::now() + START_PATIENCE;
    loop {
        if control::connect(&home.dir).await.is_ok() {
            // It outlives this process; should it end first (`peer down` while the app runs), this thread
            // reaps it so that it does not linger as a zombie until the app quits.
            std::thread::spawn(move || child.wait());
            return Ok(pid);
        }
        if let Some(status) = child.try_wait()? {
            bail!("the agent stopped at once ({status}); see {}", log_path.display());
        }
        if Instant::now() > deadline {
            bail!("the agent did not start within {} s; see {}", START_PATIENCE.as_secs(), log_path.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the agent's control socket is gone (it has stopped).
pub(crate) async fn wait_gone(home: &Home) -> Result<()> {
    let deadline = Instant::now() + START_PATIENCE;
    while control::connect(&home.dir).await.is_ok() {
        if Instant::now() > deadline {
            bail!("the agent is still running after {} s", START_PATIENCE.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
