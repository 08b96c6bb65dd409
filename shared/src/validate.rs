//! Input rules shared by the CLI (to fail early, before a round trip) and the broker (which never trusts
//! the client and checks again).

use crate::proto::ErrorCode;

/// Longest display name, group name or friend remark, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest friend-request message, in characters.
pub const MAX_REQUEST_MESSAGE_CHARS: usize = 256;
/// Shortest password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password, in bytes: argon2 accepts more, but nobody types more, and hashing is bounded.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// 3-32 characters of `a-z 0-9 _ . -`: safe in file names, URLs and logs, and unambiguous to read aloud.
pub fn username(name: &str) -> Result<(), ErrorCode> {
    let ok = (3..=32).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    if ok { Ok(()) } else { Err(ErrorCode::InvalidUsername) }
}

/// Any Unicode (`张三`, emoji) but no control characters, 1-64 characters, not blank.
pub fn display_name(name: &str) -> Result<(), ErrorCode> {
    if name.trim().is_empty() || !short_text(name, MAX_NAME_CHARS) {
        return Err(ErrorCode::InvalidDisplayName);
    }
    Ok(())
}

/// A password: at least 8 characters, at most 1024 bytes.
pub fn password(pw: &str) -> Result<(), ErrorCode> {
    if pw.chars().count() < MIN_PASSWORD_CHARS || pw.len() > MAX_PASSWORD_BYTES {
        return Err(ErrorCode::InvalidPassword);
    }
    Ok(())
}

/// Free text with a character limit and no control characters (a request message, a remark).
pub fn text(what: &str, value: &str, max_chars: usize) -> Result<(), ErrorCode> {
    if short_text(value, max_chars) {
        Ok(())
    } else {
        Err(ErrorCode::InvalidText(format!("{what} must be at most {max_chars} characters without control characters")))
    }
}

/// A SQL `LIKE` pattern matching values that contain `text`, with `%`, `_` and the escape character itself
/// escaped by `!` (to be used with `ESCAPE '!'`): an escape character that means the same to SQLite,
/// PostgreSQL and MySQL, where a backslash does not.
pub fn like_contains(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '!') {
            out.push('!');
        }
        out.push(c);
    }
    out.push('%');
    out
}

fn short_text(value: &str, max_chars: usize) -> bool {
    value.chars().count() <= max_chars && !value.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["bob", "zhang_san", "a.b-c", "x".repeat(32).as_str(), "007"] {
            assert!(username(ok).is_ok(), "{ok}");
        }
        for bad in ["ab", "Bob", "张三", "a b", "a/b", "", &"x".repeat(33), "../x", "a\0b"] {
            assert_eq!(username(bad), Err(ErrorCode::InvalidUsername), "{bad:?}");
        }
    }

    #[test]
    fn display_names() {
        assert!(display_name("张三").is_ok());
        assert!(display_name("Ünïcødé 🎉").is_ok());
        assert!(display_name(&"李".repeat(64)).is_ok());
        assert!(display_name(&"李".repeat(65)).is_err());
        assert!(display_name("   ").is_err());
        assert!(display_name("a\nb").is_err());
        assert!(display_name("\u{7}").is_err());
    }

    #[test]
    fn passwords() {
        assert!(password("12345678").is_ok());
        assert!(password("密码密码密码密码").is_ok());
        assert!(password("1234567").is_err());
        assert!(password(&"x".repeat(1025)).is_err());
    }

    #[test]
    fn like_wildcards_escaped() {
        assert_eq!(like_contains("a_b%c!d"), "%a!_b!%c!!d%");
        assert_eq!(like_contains("张"), "%张%");
    }

    #[test]
    fn texts() {
        assert!(text("message", "hi 你好", 256).is_ok());
        assert!(text("message", &"x".repeat(257), 256).is_err());
        assert!(text("message", "", 256).is_ok());
    }
}
