//! The local control channel between the CLI and its agent, usable only by the same OS user.
//!
//! On Unix it is a 0600 Unix socket in the (0700) home directory. Elsewhere it is a loopback TCP port whose
//! number and a random cookie sit in an owner-only file in the home directory; a client must send the
//! cookie first. Either way, what flows over it is [`shared::control`] frames.

use anyhow::{Result, anyhow};
use std::path::Path;
use tokio::io::{AsyncRead, AsyncWrite};

/// A bidirectional byte stream to or from the agent.
pub(crate) trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

fn no_agent(home: &Path) -> anyhow::Error {
    anyhow!(
        "no agent is running for {}: start it with `peer --home {} up --detach` (or without --detach, to keep \
         it in the foreground)",
        home.display(),
        home.display()
    )
}

#[cfg(unix)]
mod imp {
    use super::*;
    use tokio::net::{UnixListener, UnixStream};

    pub(crate) struct Listener(UnixListener);

    impl Listener {
        pub(crate) async fn bind(home: &Path) -> Result<Self> {
            let path = home.join("agent.sock");
            if UnixStream::connect(&path).await.is_ok() {
                return Err(anyhow!("an agent is already running for {}", home.display()));
            }
            let _ = std::fs::remove_file(&path);
            let l = UnixListener::bind(&path)?;
            certs::secret_file::restrict(&path)?;
            Ok(Self(l))
        }

        pub(crate) async fn accept(&self) -> Result<Box<dyn Duplex>> {
            let (s, _) = self.0.accept().await?;
            Ok(Box::new(s))
        }

        pub(crate) fn cleanup(home: &Path) {
            let _ = std::fs::remove_file(home.join("agent.sock"));
        }
    }

    pub(crate) async fn connect(home: &Path) -> Result<Box<dyn Duplex>> {
        UnixStream::connect(home.join("agent.sock"))
            .await
            .map(|s| Box::new(s) as Box<dyn Duplex>)
            .map_err(|_| no_agent(home))
    }
}

#[cfg(not(unix))]
mod imp {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const COOKIE_LEN: usize = 64;

    pub(crate) struct Listener {
        tcp: TcpListener,
        cookie: String,
    }

    fn cookie() -> String {
        use ring::rand::SecureRandom;
        let mut b = [0u8; COOKIE_LEN / 2];
        let _ = ring::rand::SystemRandom::new().fill(&mut b);
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    impl Listener {
        pub(crate) async fn bind(home: &Path) -> Result<Self> {
            if connect(home).await.is_ok() {
                return Err(anyhow!("an agent is already running for {}", home.display()));
            }
            let tcp = TcpListener::bind(("127.0.0.1", 0)).await?;
            let cookie = cookie();
            let port = tcp.local_addr()?.port();
            certs::secret_file::write(&home.join("agent.port"), format!("{port} {cookie}").as_bytes())?;
            Ok(Self { tcp, cookie })
        }

        pub(crate) async fn accept(&self) -> Result<Box<dyn Duplex>> {
            loop {
                let (mut s, _) = self.tcp.accept().await?;
                let mut got = [0u8; COOKIE_LEN];
                let ok = tokio::time::timeout(std::time::Duration::from_secs(2), s.read_exact(&mut got)).await;
                if matches!(ok, Ok(Ok(_))) && got == self.cookie.as_bytes() {
                    return Ok(Box::new(s));
                }
            }
        }

        pub(crate) fn cleanup(home: &Path) {
            let _ = std::fs::remove_file(home.join("agent.port"));
        }
    }

    pub(crate) async fn connect(home: &Path) -> Result<Box<dyn Duplex>> {
        let text = std::fs::read_to_string(home.join("agent.port")).map_err(|_| no_agent(home))?;
        let (port, cookie) = text.trim().split_once(' ').ok_or_else(|| no_agent(home))?;
        let port: u16 = port.parse().map_err(|_| no_agent(home))?;
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.map_err(|_| no_agent(home))?;
        s.write_all(cookie.as_bytes()).await?;
        Ok(Box::new(s))
    }
}

pub(crate) use imp::{Listener, connect};
