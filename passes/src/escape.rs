//! Names from input files made safe to print: a tensor, key or file name
//! is data an attacker chose, and printed raw its ANSI escapes, carriage
//! returns and newlines would recolour the terminal or forge an `error:`
//! line. Every name kiln prints (error messages, inspect, eval) goes through
//! [`printable`].
//!
//! What must stay true: control characters (C0, DEL, C1, and the Unicode
//! line/paragraph separators and bidirectional overrides) come out as Rust
//! escapes (`\u{1b}`, `\n`) and a backslash as `\\` only when the name
//! needs escaping at all; any other name is returned as it is (borrowed),
//! so output for ordinary names is unchanged.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as it is.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `s` with its control characters escaped (see the module doc); borrowed
/// when there are none.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) || c == '\\' {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_control_characters_and_leaves_names_alone() {
        assert!(matches!(printable("blk.0.attn_q.weight"), Cow::Borrowed(_)));
        assert_eq!(printable("naïve ▁tok"), "naïve ▁tok");
        assert_eq!(
            printable("x\u{1b}[31m\nerror: fake\r"),
            r"x\u{1b}[31m\nerror: fake\r"
        );
        assert_eq!(printable("a\\b\u{7f}"), r"a\\b\u{7f}");
        assert_eq!(printable("\u{202e}evil"), r"\u{202e}evil");
        assert!(!printable("\u{9b}31m").contains('\u{9b}'));
    }
}
