//! "Did you mean" for names a user types (target ids, weight types,
//! recipes) and the one-line form of a TOML parse error.
//!
//! What must stay true: a suggestion is only made when it is close (the
//! typed name is a prefix of a known one, the first in the known order, or
//! is within an edit distance of a third of its length); messages stay one
//! line.

/// Levenshtein distance between two short ASCII-ish names, case-insensitive.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The known name closest to `typed`, when it is close enough to suggest.
pub fn closest<'a>(typed: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let typed_l = typed.to_lowercase();
    let known: Vec<&str> = known.into_iter().collect();
    // A prefix of known names (`h100` -> `h100-sxm`, `mi300` -> `mi300x`).
    let prefixed: Vec<&str> = known
        .iter()
        .copied()
        .filter(|k| !typed_l.is_empty() && k.to_lowercase().starts_with(&typed_l))
        .collect();
    let best = known
        .iter()
        .copied()
        .map(|k| (distance(typed, k), k))
        .min_by_key(|(d, _)| *d);
    if let Some(k) = prefixed.first() {
        return Some(k);
    }
    match best {
        Some((d, k)) if d <= (typed.chars().count() / 3).max(1) => Some(k),
        _ => None,
    }
}

/// ` (did you mean `x`?)` or nothing.
pub fn did_you_mean<'a>(typed: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    closest(typed, known).map_or(String::new(), |k| format!(" (did you mean `{k}`?)"))
}

/// A TOML parse error on one line: `line 2, column 8: invalid string; expected `"`, `'``.
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {}", crate::printable(&msg))
        }
        None => crate::printable(&msg).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_are_suggested_and_far_ones_are_not() {
        let known = ["h100-sxm", "h100-pcie", "h200", "rtx-4090", "mi300x"];
        assert_eq!(closest("h100", known), Some("h100-sxm"));
        assert_eq!(closest("h20", known), Some("h200"));
        assert_eq!(closest("h100-sx", known), Some("h100-sxm"));
        assert_eq!(closest("RTX-4090", known), Some("rtx-4090"));
        assert_eq!(closest("rtx4090", known), Some("rtx-4090"));
        assert_eq!(closest("mi300", known), Some("mi300x"));
        assert_eq!(closest("banana", known), None);
        assert_eq!(did_you_mean("banana", known), "");
    }

    #[test]
    fn toml_errors_are_one_line_with_a_position() {
        let text = "id = \"x\"\nname = \n";
        let e = toml::from_str::<toml::Table>(text).unwrap_err();
        let m = toml_error(text, &e);
        assert!(!m.contains('\n'), "{m}");
        assert!(m.starts_with("line 2, column "), "{m}");
    }
}
