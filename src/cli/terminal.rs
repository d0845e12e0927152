//! Server text shown to a person. Entity ids, tags and error messages come
//! from a server (or the entities file behind one) and may hold control
//! characters: raw, a newline forges a row of a table and an escape
//! sequence recolours the terminal, moves its cursor or retitles its
//! window. Every line of human output that carries such text passes it
//! through [`escape`]; `--json` output keeps JSON's own escaping.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` with every character that can drive a terminal shown as a
/// visible escape: `\n`, `\r`, `\t` and `\0`, `\x1b` for the other ASCII
/// controls and DEL, `\u{9b}` for C1 controls and for the bidirectional
/// and line-separator controls of Unicode (which reorder or break a line).
/// A backslash shows as `\\`, so an escape always reads back one way.
/// Everything else, non-ASCII text included, is shown as it is.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            '\0' => escaped.push_str("\\0"),
            '\\' => escaped.push_str("\\\\"),
            c if needs_escape(c) && c.is_ascii() => {
                let _ = write!(escaped, "\\x{:02x}", u32::from(c));
            }
            c if needs_escape(c) => {
                let _ = write!(escaped, "\\u{{{:x}}}", u32::from(c));
            }
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

/// Tags as a table or a line shows them: each escaped, joined by spaces.
pub fn escape_tags(tags: &[String]) -> String {
    let escaped: Vec<Cow<'_, str>> = tags.iter().map(|tag| escape(tag)).collect();
    escaped.join(" ")
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_shown_escaped_and_the_rest_as_it_is() {
        assert_eq!(
            escape("id\n+ forged\r\t\0\x07\x1b[31mred\x7f"),
            "id\\n+ forged\\r\\t\\0\\x07\\x1b[31mred\\x7f"
        );
        assert_eq!(escape("c1:\u{9b}2J nel:\u{85}"), "c1:\\u{9b}2J nel:\\u{85}");
        assert_eq!(
            escape("bidi:\u{202e}txt.exe\u{2066} ls:\u{2028}"),
            "bidi:\\u{202e}txt.exe\\u{2066} ls:\\u{2028}"
        );
        assert_eq!(escape(r"a\nb"), r"a\\nb", "a backslash reads back one way");
        assert!(matches!(
            escape("kube_namespace:café 日本 🚀"),
            Cow::Borrowed("kube_namespace:café 日本 🚀")
        ));
    }
}
