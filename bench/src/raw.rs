//! The baseline: a bare quinn server with the same mutual TLS 1.3 as the broker and nothing else. It answers
//! every bidirectional stream by echoing what it read.

use anyhow::Result;
use certs::Identity;
use certs::verify::ClientPolicy;
use std::sync::Arc;

pub(crate) const ALPN: &[u8] = b"bench-raw";

pub(crate) async fn serve() -> Result<()> {
    let identity = Identity::generate("raw")?;
    let tls = certs::config::server(&identity, ClientPolicy::AnyDevice, &[ALPN])?;
    let server = quinn::ServerConfig::with_crypto(Arc::new(quinn::crypto::rustls::QuicServerConfig::try_from(tls)?));
    let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse()?)?;
    println!("raw listening on {} fingerprint {}", endpoint.local_addr()?, identity.fingerprint());
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    if let Ok(buf) = recv.read_to_end(64 * 1024).await {
                        let _ = send.write_all(&buf).await;
                        let _ = send.finish();
                    }
                });
            }
        });
    }
    Ok(())
}
