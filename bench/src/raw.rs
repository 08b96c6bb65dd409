//! The baseline: a bare quinn server with the same mutual TLS 1.3 as the broker and nothing else. On ALPN
//! [`ALPN`] it answers every bidirectional stream by echoing what it read; on [`SINK_ALPN`] it reads each
//! stream to its end, discarding the bytes, and answers with their count (the file bench's blast); on
//! [`FILE_ALPN`] it reads a path, then writes the stream's bytes to that file from a writer thread in 1 MiB
//! blocks (syncing every 64 MiB, as the agent does), fsyncs it, and answers with the count (the file bench's physical baseline: disk to disk);
//! on [`FANOUT_ALPN`] it opens a stream to the client, with one writer task, and copies every post (a
//! bidirectional stream from any such client) to every such client's stream (the group bench's QUIC
//! baseline: the same fan-out with nothing numbered, stored or checked);
//! on [`RELAY_ALPN`] it reads a target (another raw server's address and fingerprint), opens a
//! [`FILE_ALPN`] stream to it and copies both ways, as the broker's relay does (the relay bench's baseline).

use anyhow::Result;
use certs::Identity;
use certs::verify::ClientPolicy;
use std::sync::Arc;

pub(crate) const ALPN: &[u8] = b"bench-raw";
pub(crate) const SINK_ALPN: &[u8] = b"bench-raw-sink";
pub(crate) const FILE_ALPN: &[u8] = b"bench-raw-file";
pub(crate) const RELAY_ALPN: &[u8] = b"bench-raw-relay";
pub(crate) const FANOUT_ALPN: &[u8] = b"bench-raw-fanout";

/// The fan-out members' writers: a post is queued to each.
type Members = Arc<std::sync::Mutex<Vec<tokio::sync::mpsc::UnboundedSender<bytes::Bytes>>>>;

/// Block size of the raw file copy's reads and writes.
pub(crate) const FILE_BLOCK: usize = 1 << 20;

pub(crate) async fn serve() -> Result<()> {
    let identity = Identity::generate("raw")?;
    let tls = certs::config::server(
        &identity,
        ClientPolicy::AnyDevice,
        &[ALPN, SINK_ALPN, FILE_ALPN, RELAY_ALPN, FANOUT_ALPN],
    )?;
    let mut server =
        quinn::ServerConfig::with_crypto(Arc::new(quinn::crypto::rustls::QuicServerConfig::try_from(tls)?));
    // The broker's stream limits (quinn sets aside state for every stream a client may open: the broker
    // allows 7 for requests, `broker::server::REQUEST_STREAMS`, plus one per relay while it stands), so that
    // an idle connection here costs what the broker's transport makes it cost, and nothing of ours.
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(7));
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    server.transport_config(Arc::new(transport));
    let endpoint = crate::client::endpoint(Some(server))?;
    println!("raw listening on {} fingerprint {}", endpoint.local_addr()?, identity.fingerprint());
    let members = Members::default();
    while let Some(incoming) = endpoint.accept().await {
        let members = members.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let alpn = conn
                .handshake_data()
                .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|h| h.protocol)
                .unwrap_or_default();
            let (sink, file, relay) = (alpn == SINK_ALPN, alpn == FILE_ALPN, alpn == RELAY_ALPN);
            let fanout = alpn == FANOUT_ALPN;
            if fanout {
                join_fanout(&conn, &members).await;
            }
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let members = members.clone();
                tokio::spawn(async move {
                    if fanout {
                        if let Ok(post) = recv.read_to_end(1024).await {
                            let post = bytes::Bytes::from(post);
                            if let Ok(list) = members.lock() {
                                for m in list.iter() {
                                    let _ = m.send(post.clone());
                                }
                            }
                            let _ = send.write_all(b"k").await;
                            let _ = send.finish();
                        }
                    } else if relay {
                        if let Err(e) = relay_stream(send, recv).await {
                            eprintln!("raw relay: {e:#}");
                        }
                    } else if file {
                        let total = receive_file(&mut recv).await.unwrap_or(0);
                        let _ = send.write_all(&total.to_be_bytes()).await;
                        let _ = send.finish();
                    } else if sink {
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

/// A fan-out member: a stream to it, written by a task of its own that sends whatever is queued in one
/// write (as the broker's session writer does), and a byte on it at once so that the client sees the stream
/// (and knows it is listed) before any post.
async fn join_fanout(conn: &quinn::Connection, members: &Members) {
    let Ok(mut stream) = conn.open_uni().await else { return };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bytes::Bytes>();
    if let Ok(mut list) = members.lock() {
        // Members whose connection ended (an earlier bench run) leave as the next one joins.
        list.retain(|m| !m.is_closed());
        list.push(tx);
    }
    let conn = conn.clone();
    tokio::spawn(async move {
        let writer = async {
            if stream.write_all(b"h").await.is_err() {
                return;
            }
            let mut batch = Vec::new();
            while let Some(post) = rx.recv().await {
                batch.push(post);
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                if stream.write_all_chunks(&mut batch).await.is_err() {
                    return;
                }
                batch.clear();
            }
        };
        // Ends with the connection too, so that its sender reads as closed and leaves the list.
        tokio::select! {
            () = writer => {}
            _ = conn.closed() => {}
        }
    });
}

/// The relay baseline: a target (u16 length, then "ADDR FINGERPRINT"), then everything copied both ways
/// between this stream and a [`FILE_ALPN`] stream to the target, chunk by chunk, as the broker splices.
async fn relay_stream(send: quinn::SendStream, mut recv: quinn::RecvStream) -> Result<()> {
    let mut len = [0u8; 2];
    recv.read_exact(&mut len).await?;
    let mut target = vec![0u8; usize::from(u16::from_be_bytes(len))];
    recv.read_exact(&mut target).await?;
    let target = String::from_utf8(target)?;
    let (addr, fingerprint) = target.split_once(' ').ok_or_else(|| anyhow::anyhow!("no target"))?;
    let clients = crate::client::Clients::new()?;
    let cfg = clients.config(fingerprint, FILE_ALPN)?;
    let conn = clients.connect(0, &cfg, addr.parse()?).await?;
    let (their_send, their_recv) = conn.open_bi().await?;
    tokio::join!(pump(recv, their_send), pump(their_recv, send));
    Ok(())
}

async fn pump(mut from: quinn::RecvStream, mut to: quinn::SendStream) {
    while let Ok(Some(chunk)) = from.read_chunk(usize::MAX, true).await {
        if to.write_chunk(chunk.bytes).await.is_err() {
            return;
        }
    }
    let _ = to.finish();
}

/// The file baseline's receiving end: a path (u16 length, UTF-8), then the bytes, handed as they arrive to a
/// writer thread that writes them in [`FILE_BLOCK`] blocks and syncs at the end. The count once on disk.
async fn receive_file(recv: &mut quinn::RecvStream) -> Result<u64> {
    let mut len = [0u8; 2];
    recv.read_exact(&mut len).await?;
    let mut path = vec![0u8; usize::from(u16::from_be_bytes(len))];
    recv.read_exact(&mut path).await?;
    let path = std::path::PathBuf::from(String::from_utf8(path)?);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(256);
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(&path)?;
        let (mut block, mut unsynced) = (Vec::with_capacity(FILE_BLOCK), 0);
        let mut flush = |block: &mut Vec<u8>, file: &mut std::fs::File| -> std::io::Result<()> {
            file.write_all(block)?;
            // As the receiving agent does: a sync every 64 MiB spreads the write-back over the transfer
            // instead of leaving a whole file of dirty pages for the final fsync.
            unsynced += block.len();
            if unsynced >= 64 << 20 {
                file.sync_data()?;
                unsynced = 0;
            }
            block.clear();
            Ok(())
        };
        while let Some(chunk) = rx.blocking_recv() {
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let n = rest.len().min(FILE_BLOCK - block.len());
                block.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                if block.len() == FILE_BLOCK {
                    flush(&mut block, &mut file)?;
                }
            }
        }
        if !block.is_empty() {
            flush(&mut block, &mut file)?;
        }
        file.sync_all()
    });
    let mut total = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
        total += chunk.bytes.len() as u64;
        if tx.send(chunk.bytes).await.is_err() {
            break;
        }
    }
    drop(tx);
    tokio::task::spawn_blocking(move || writer.join()).await?.map_err(|_| anyhow::anyhow!("writer panicked"))??;
    Ok(total)
}
