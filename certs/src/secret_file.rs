//! Files that hold secrets (private keys, tokens, databases) are created readable by their owner only.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Opens options that create a file with mode 0600 on Unix. On Windows a file in the user's profile
/// inherits the profile's owner-only ACL, which is the platform's equivalent.
pub fn owner_only() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o
}

/// Writes `bytes` to `path` atomically (temp file, then rename), readable by the owner only.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f: File = owner_only().open(&tmp)?;
    restrict(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Makes an existing file owner-only (a file created by another tool, such as SQLite, with the umask's mode).
pub fn restrict(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Creates a directory (and parents) that only its owner can enter.
pub fn private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}
