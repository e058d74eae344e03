//! Text shown to people: a message that must stay one line, a summary on a
//! terminal.

/// `text` with its control characters (line breaks, escape sequences,
/// carriage returns) shown escaped, so that it can neither break a
/// one-line message nor forge or hide lines on a terminal. Newlines are
/// kept only where `multi_line`.
pub fn printable(text: &str, multi_line: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && !(multi_line && c == '\n') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
