//! The baseline: a bare quinn server with the same mutual TLS 1.3 as the broker and nothing else. On ALPN
//! [`ALPN`] it answers every bidirectional stream by echoing what it read; on [`SINK_ALPN`] it reads each
//! stream to its end, discarding the bytes, and answers with their count (the file bench's blast).

use anyhow::Result;
use certs::Identity;
use certs::verify::ClientPolicy;
use std::sync::Arc;

pub(crate) const ALPN: &[u8] = b"bench-raw";
pub(crate) const SINK_ALPN: &[u8] = b"bench-raw-sink";

pub(crate) async fn serve() -> Result<()> {
    let identity = Identity::generate("raw")?;
    let tls = certs::config::server(&identity, ClientPolicy::AnyDevice, &[ALPN, SINK_ALPN])?;
    let server = quinn::ServerConfig::with_crypto(Arc::new(quinn::crypto::rustls::QuicServerConfig::try_from(tls)?));
    let endpoint = crate::client::endpoint(Some(server))?;
    println!("raw listening on {} fingerprint {}", endpoint.local_addr()?, identity.fingerprint());
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let sink = conn
                .handshake_data()
                .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|h| h.protocol)
                .is_some_and(|p| p == SINK_ALPN);
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    if sink {
                        let mut total = 0u64;
                        while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
                            total += chunk.bytes.len() as u64;
                        }
                        let _ = send.write_all(&total.to_be_bytes()).await;
                        let _ = send.finish();
                    } else if let Ok(buf) = recv.read_to_end(64 * 1024).await {
                        let _ = send.write_all(&buf).await;
                        let _ = send.finish();
                    }
                });
            }
        });
    }
    Ok(())
}
