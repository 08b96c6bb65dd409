//! Text that a remote party wrote, made safe to print on a terminal.
//!
//! Messages, names, remarks, reasons and file names are stored exactly as they arrived; only the edge that
//! prints them escapes them. A terminal acts on control characters (`ESC ] 0 ;` sets the title, `ESC [ 2 J`
//! clears the screen, some terminals do worse) and the bidi controls reorder what the reader sees
//! (`evil\u{202e}txt.exe` shows as `evilexe.txt`), so each of those is written as a visible escape instead:
//! `\x1b`, `\n`, `\u{202e}`. Everything else, CJK and emoji included, passes unchanged.

use std::fmt;

/// Shows `s` with every control and bidi character escaped; see the module doc.
pub fn safe(s: &str) -> Safe<'_> {
    Safe(s)
}

/// `Display` for text from elsewhere: writes it with controls escaped, without allocating.
#[derive(Debug, Clone, Copy)]
pub struct Safe<'a>(pub &'a str);

impl fmt::Display for Safe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some((i, c)) = rest.char_indices().find(|&(_, c)| is_unsafe(c)) {
            f.write_str(&rest[..i])?;
            write_escape(f, c)?;
            rest = &rest[i + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// The escaped form of `s` as a `String` (for widgets that take owned text).
pub fn escape(s: &str) -> String {
    if s.chars().any(is_unsafe) { Safe(s).to_string() } else { s.to_string() }
}

/// Whether `c` must not reach a terminal raw: C0 and C1 controls, DEL, the bidi embeddings, overrides,
/// isolates and marks, and the Unicode line and paragraph separators (which some terminals treat as newlines).
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || is_bidi(c) || matches!(c, '\u{2028}' | '\u{2029}')
}

/// The characters that change the display order of text around them.
pub fn is_bidi(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn write_escape(f: &mut fmt::Formatter<'_>, c: char) -> fmt::Result {
    match c {
        '\n' => f.write_str("\\n"),
        '\r' => f.write_str("\\r"),
        '\t' => f.write_str("\\t"),
        c if (c as u32) < 0x100 => write!(f, "\\x{:02x}", c as u32),
        c => write!(f, "\\u{{{:04x}}}", c as u32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_a_terminal_would_act_on() {
        let cases = [
            ("\u{1b}]0;pwned\u{7}", "\\x1b]0;pwned\\x07"),
            ("\u{1b}[2J", "\\x1b[2J"),
            ("a\0b", "a\\x00b"),
            ("line\nnext\r\t", "line\\nnext\\r\\t"),
            ("\u{9b}31m", "\\x9b31m"),
            ("\u{7f}", "\\x7f"),
            ("evil\u{202e}txt.exe", "evil\\u{202e}txt.exe"),
            ("\u{2066}x\u{2069}\u{200f}\u{061c}", "\\u{2066}x\\u{2069}\\u{200f}\\u{061c}"),
            ("a\u{2028}b", "a\\u{2028}b"),
        ];
        for (raw, shown) in cases {
            assert_eq!(safe(raw).to_string(), shown, "{raw:?}");
            assert_eq!(escape(raw), shown);
            assert!(!shown.chars().any(is_unsafe));
        }
    }

    #[test]
    fn leaves_ordinary_text_alone() {
        for s in ["", "hello", "张三 你好 🎉", "家人群", "naïve café", "a\\x1b literal backslash"] {
            assert_eq!(safe(s).to_string(), s);
            assert_eq!(escape(s), s);
        }
    }

    #[test]
    fn every_char_is_safe_after_escaping() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        assert!(!safe(&all).to_string().chars().any(is_unsafe));
    }
}
