//! File transfer between friends: what travels on the wire and the rules both ends apply (names, sizes).
//!
//! The receiver pulls: the sender offers (name, size, BLAKE3 hash); once accepted, the receiver opens a
//! stream with [`crate::peer::PeerFrame::FileFetch`] naming the offset it already holds, and the sender
//! answers with the raw bytes from there to the end. So resuming after either side dies is the same
//! operation as starting, and the receiver, who holds the partial data, decides where to continue. The hash
//! of the whole file is checked at the end, over the bytes kept from before and the new ones alike.

use serde::{Deserialize, Serialize};

pub use crate::id::TransferId;

/// Longest file name accepted, in bytes of UTF-8 (what common file systems allow).
pub const MAX_NAME_BYTES: usize = 255;

/// What the sender proposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct FileOffer {
    pub id: TransferId,
    /// As the sender named it; the receiver sanitises it with [`sanitize_name`] before any use.
    pub name: String,
    pub size: u64,
    pub hash: [u8; 32],
}

/// The receiver's view of an offered transfer, in answer to an offer (new or repeated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum OfferAnswer {
    /// Recorded; waiting for the user (or being fetched, if it was accepted).
    Offered,
    /// Accepted; the receiver holds this many bytes and fetches the rest.
    Receiving { have: u64 },
    /// Received and verified before (a repeated offer of a finished transfer).
    Done,
    /// The receiver declined it.
    Declined,
    /// Cancelled on the receiver's side.
    Cancelled,
}

/// Why an incoming name cannot be used at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the file name is empty")]
    Empty,
    #[error("the file name is {0} bytes; the limit is {MAX_NAME_BYTES}")]
    TooLong(usize),
}

/// Windows device names, refused with any extension on every platform (the file may be copied there later).
const DEVICE_NAMES: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8", "COM9", "LPT1", "LPT2",
    "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Turns a name chosen by someone else into one safe to create inside the receiver's directory: only the
/// last path component is kept (no separators, no `..`, nothing absolute), control and reserved characters
/// become `_`, bidi controls are dropped (`evil\u{202e}txt.exe` would show as `evilexe.txt` and hide its real
/// extension), leading dots and trailing dots or spaces go (no hidden files, nothing Windows would alter),
/// and device names get a `_` prefix. Empty and overlong names are refused.
pub fn sanitize_name(name: &str) -> Result<String, NameError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong(name.len()));
    }
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        // Invisible reorderings and separators go; other controls become `_` below.
        .filter(|&c| c.is_control() || !crate::display::is_unsafe(c))
        .map(|c| if c.is_control() || matches!(c, '<' | '>' | ':' | '"' | '|' | '?' | '*') { '_' } else { c })
        .collect();
    let trimmed = cleaned.trim_start_matches(['.', ' ']).trim_end_matches(['.', ' ']);
    if trimmed.is_empty() {
        return Err(NameError::Empty);
    }
    let stem = trimmed.split('.').next().unwrap_or("").trim_end();
    if DEVICE_NAMES.iter().any(|d| d.eq_ignore_ascii_case(stem)) {
        return Ok(format!("_{trimmed}"));
    }
    Ok(trimmed.to_string())
}

/// The `n`th alternative to a name already taken: `report.pdf` → `report (1).pdf`.
pub fn numbered_name(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_string();
    }
    match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{} ({n}){}", &name[..dot], &name[dot..]),
        _ => format!("{name} ({n})"),
    }
}

/// Parses a size such as `512`, `64K`, `10M`, `2G`, `1T` (binary units; a trailing `B`/`iB` is allowed).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (digits, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = digits.trim().parse().map_err(|_| format!("not a size: {s:?} (examples: 512M, 10G)"))?;
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("size too large: {s}"))
}

/// A size for people: `1.5 GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// Whether a file of `size` (of which `have` bytes are already on disk) fits in `free` bytes, keeping a
/// margin so that accepting a file never fills the disk to the last byte.
pub fn check_space(size: u64, have: u64, free: u64) -> Result<(), String> {
    const MARGIN: u64 = 64 << 20;
    let needed = size.saturating_sub(have);
    if needed.saturating_add(MARGIN) > free {
        return Err(format!("the file needs {} more, {} is free", format_size(needed), format_size(free)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_tamed() {
        assert_eq!(sanitize_name("report.pdf").unwrap(), "report.pdf");
        assert_eq!(sanitize_name("照片 2026.jpg").unwrap(), "照片 2026.jpg");
        assert_eq!(sanitize_name("../../etc/passwd").unwrap(), "passwd");
        assert_eq!(sanitize_name("/etc/shadow").unwrap(), "shadow");
        assert_eq!(sanitize_name("C:\\Windows\\system.ini").unwrap(), "system.ini");
        assert_eq!(sanitize_name("..\\..\\boot.ini").unwrap(), "boot.ini");
        assert_eq!(sanitize_name(".bashrc").unwrap(), "bashrc");
        assert_eq!(sanitize_name("a\u{0}b\nc").unwrap(), "a_b_c");
        assert_eq!(sanitize_name("what?<>|*.txt").unwrap(), "what_____.txt");
        assert_eq!(sanitize_name("CON").unwrap(), "_CON");
        assert_eq!(sanitize_name("evil\u{202e}txt.exe").unwrap(), "eviltxt.exe");
        assert_eq!(sanitize_name("\u{2067}a\u{2069}\u{200f}.pdf").unwrap(), "a.pdf");
        assert_eq!(sanitize_name("nul.txt").unwrap(), "_nul.txt");
        assert_eq!(sanitize_name("lpt1 .tar.gz").unwrap(), "_lpt1 .tar.gz");
        assert_eq!(sanitize_name("console.log").unwrap(), "console.log");
        assert_eq!(sanitize_name("trailing. . ").unwrap(), "trailing");
        for bad in ["", "..", ".", "/", "a/", "../", " . "] {
            assert_eq!(sanitize_name(bad), Err(NameError::Empty), "{bad:?}");
        }
        assert!(matches!(sanitize_name(&"x".repeat(256)), Err(NameError::TooLong(256))));
        assert!(sanitize_name(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn numbered_names() {
        assert_eq!(numbered_name("a.txt", 0), "a.txt");
        assert_eq!(numbered_name("a.txt", 1), "a (1).txt");
        assert_eq!(numbered_name("archive.tar.gz", 2), "archive.tar (2).gz");
        assert_eq!(numbered_name("README", 3), "README (3)");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("10m").unwrap(), 10 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1TB").unwrap(), 1 << 40);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(1 << 30), "1.0 GiB");
    }

    #[test]
    fn space() {
        assert!(check_space(1 << 30, 0, 2 << 30).is_ok());
        assert!(check_space(1 << 30, 0, 1 << 30).is_err());
        assert!(check_space(1 << 30, (1 << 30) - 1, 100 << 20).is_ok());
    }
}
