//! The one bound on outside text that a message quotes. An artifact (and the plaintext inside
//! it) is written by whoever can publish to the source, and a revocation notice needs no
//! signature: text taken from it ends up in log lines on every poll, in 503 bodies and in
//! telemetry events. Quoted whole, a 20 MB field became a 20 MB log line per poll and a 20 MB
//! body per request. Every such quote goes through [`quoted`].

use std::borrow::Cow;

/// `text` as a JSON string, quotes and escapes included: for the few short texts (a revision,
/// an error, a telemetry field) not rendered into the snapshot's zeroed buffers.
pub fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

/// Quoted outside text keeps at most this many characters, then says how long it was.
pub const MAX_QUOTED_CHARS: usize = 200;

/// `text` as a message may quote it: unchanged when short, else its first
/// [`MAX_QUOTED_CHARS`] characters and `…(truncated, N bytes)`.
pub fn quoted(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        None => Cow::Borrowed(text),
        Some((cut, _)) => Cow::Owned(format!("{}…(truncated, {} bytes)", &text[..cut], text.len())),
    }
}

/// `text` is short enough to be quoted whole.
pub fn fits(text: &str) -> bool {
    text.len() <= MAX_QUOTED_CHARS || text.chars().nth(MAX_QUOTED_CHARS).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_quoted_whole() {
        let exactly = "é".repeat(MAX_QUOTED_CHARS);
        assert!(matches!(quoted(&exactly), Cow::Borrowed(_)));
        assert!(fits(&exactly));
        assert_eq!(quoted("2026-11-24T12:00:00Z"), "2026-11-24T12:00:00Z");
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary_and_says_how_long_it_was() {
        let long = "é".repeat(10 * 1024 * 1024);
        let quote = quoted(&long);
        assert_eq!(quote, format!("{}…(truncated, 20971520 bytes)", "é".repeat(MAX_QUOTED_CHARS)));
        assert!(!fits(&long));
        assert!(!fits(&"x".repeat(MAX_QUOTED_CHARS + 1)));
    }
}
