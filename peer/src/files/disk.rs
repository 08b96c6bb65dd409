//! The disk side of transfers, on blocking threads: the receiver's partial file (re-hashed on resume,
//! written and synced as blocks arrive, moved into place without replacing anything) and the sender's reads.

use super::*;

/// Bytes handed between the network and the disk thread at a time.
pub(super) const BLOCK: usize = 512 * 1024;
/// Bytes read from disk per block on the sending side.
const SEND_BLOCK: usize = 1024 * 1024;
/// Blocks in flight between the network and the disk thread: with [`BLOCK`], the memory a transfer uses.
pub(super) const BLOCKS_IN_FLIGHT: usize = 8;
/// Received bytes written between syncs to disk.
const SYNC_EVERY: usize = 64 << 20;

/// Where the receiver keeps the bytes of a transfer until the hash matches: hidden, beside the final file
/// (same file system, so the final move is an atomic rename).
pub(super) fn partial_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!(".p2pim-{id}.part"))
}

/// Moves the verified partial file to `name` in `dir`, never replacing an existing file: a taken name
/// becomes `name (1)`, `name (2)`, ... Returns the path used.
pub(super) fn place(partial: &Path, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    for n in 0..10_000 {
        let target = dir.join(numbered_name(name, n));
        // A hard link fails when the name exists, so no check-then-rename race can replace a file.
        match std::fs::hard_link(partial, &target) {
            Ok(()) => {
                std::fs::remove_file(partial)?;
                return Ok(target);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            // File systems without hard links: rename, after checking the name is free.
            Err(_) if !target.exists() => {
                std::fs::rename(partial, &target)?;
                return Ok(target);
            }
            Err(_) => continue,
        }
    }
    Err(std::io::Error::other(format!("no free name for {name} in {}", dir.display())))
}

/// Removes the receiver's partial data of a transfer that will not finish.
pub(super) fn discard_partial(rec: &Record) {
    if let (false, Some(dir)) = (rec.t.outgoing, &rec.dir) {
        let _ = std::fs::remove_file(partial_path(Path::new(dir), &rec.t.id));
    }
}

/// Opens (creating) the partial file and hashes what it holds; anything past `size` cannot be ours.
pub(super) fn open_partial(path: &Path, size: u64) -> std::io::Result<(std::fs::File, blake3::Hasher, u64)> {
    let mut file = certs::secret_file::owner_only().read(true).write(true).truncate(false).open(path)?;
    let mut have = file.metadata()?.len();
    if have > size {
        file.set_len(0)?;
        have = 0;
    }
    let mut hasher = blake3::Hasher::new();
    feed(&mut hasher, (&mut file).take(have), |_| {})?;
    file.seek(SeekFrom::Start(have))?;
    Ok((file, hasher, have))
}

/// The disk side of receiving: appends blocks and hashes them; flushes and syncs at the end whatever
/// happened, so bytes received before an interruption are kept for the resume.
pub(super) fn write_blocks(
    mut file: std::fs::File,
    mut hasher: blake3::Hasher,
    mut rx: mpsc::Receiver<Vec<Bytes>>,
) -> std::io::Result<blake3::Hash> {
    // One contiguous buffer, reused: the page cache and BLAKE3's SIMD both work best on large writes.
    let mut buf = Vec::with_capacity(BLOCK * 2);
    let mut written = Ok(());
    let mut unsynced = 0;
    while let Some(block) = rx.blocking_recv() {
        buf.clear();
        for chunk in &block {
            buf.extend_from_slice(chunk);
        }
        hasher.update(&buf);
        written = file.write_all(&buf);
        if written.is_err() {
            break;
        }
        // Synced as it goes, so that the sync before the verdict has little left to do and the page
        // cache never holds much of a large file dirty.
        unsynced += buf.len();
        if unsynced >= SYNC_EVERY {
            unsynced = 0;
            written = file.sync_data();
            if written.is_err() {
                break;
            }
        }
    }
    file.sync_all()?;
    written.map(|()| hasher.finalize())
}

/// The disk side of sending: reads `len` bytes from `offset` in blocks.
pub(super) fn read_blocks(path: &Path, offset: u64, len: u64, tx: mpsc::Sender<std::io::Result<Vec<u8>>>) {
    let result = (|| {
        let mut file = std::fs::File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut left = len;
        while left > 0 {
            // Read into spare capacity: no zeroing of a buffer about to be overwritten.
            let want = left.min(SEND_BLOCK as u64);
            let mut block = Vec::with_capacity(want as usize);
            let n = (&mut file).take(want).read_to_end(&mut block)?;
            if n == 0 {
                break;
            }
            left -= n as u64;
            if tx.blocking_send(Ok(block)).is_err() {
                return Ok(());
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = tx.blocking_send(Err(e));
    }
}

/// BLAKE3 of a whole file, reporting progress (the CLI hashes before offering).
pub(crate) fn hash_file(path: &Path, progress: impl FnMut(u64)) -> std::io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    feed(&mut hasher, std::fs::File::open(path)?, progress)?;
    Ok(hasher.finalize())
}

/// Hashes everything `from` yields, reporting the running total.
fn feed(hasher: &mut blake3::Hasher, mut from: impl Read, mut progress: impl FnMut(u64)) -> std::io::Result<()> {
    let mut buf = vec![0u8; BLOCK * 2];
    let mut done = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress(done);
    }
}
