//! Async shell around [`crate::frame`]: reads and writes whole frames on any tokio stream.

use crate::frame::{self, FrameError, HEADER_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A frame could not be moved.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame. `Ok(None)` on a clean end of stream before any byte of a frame; an end inside a frame
/// is [`FrameError::Truncated`]. The body buffer is sized only after the length passed the limit.
pub async fn read_frame<T: frame::Message, R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<T>, IoError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            return if got == 0 { Ok(None) } else { Err(FrameError::Truncated.into()) };
        }
        got += n;
    }
    let len = frame::body_len(header)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => IoError::Frame(FrameError::Truncated),
        _ => IoError::Io(e),
    })?;
    Ok(Some(frame::decode_body(&body)?))
}

/// Writes the channel record that opens a relay stream on a broker speaking channels (see
/// [`crate::relay`]): the channel id, 0 for none.
pub async fn write_channel<W: AsyncWrite + Unpin>(w: &mut W, channel: u64) -> std::io::Result<()> {
    let mut record = Vec::new();
    crate::relay::encode_channel(channel, &mut record);
    w.write_all(&record).await
}

/// Reads that record: the channel, if there is one.
pub async fn read_channel<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<u64>> {
    let mut record = [0u8; 10];
    r.read_exact(&mut record).await?;
    Ok(crate::relay::decode_channel(&record))
}

/// Writes one frame and flushes it.
pub async fn write_frame<T: bincode::Encode, W: AsyncWrite + Unpin>(w: &mut W, msg: &T) -> Result<(), IoError> {
    let bytes = frame::encode(msg)?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

/// Resolves on Ctrl-C, or on SIGTERM where there is one: what a daemon and the agent stop on.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
