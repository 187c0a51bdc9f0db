//! The agent's log lines: `[clef-agent] ` on stdout for progress, on stderr for problems.
//! Deployments wait on some of these lines, so their wording is part of the interface (SPEC §7).
//! Nothing secret is ever passed here: callers log descriptions, revisions and key counts only.

use std::io::Write;

pub const PREFIX: &str = "[clef-agent]";

/// A progress line on stdout.
pub fn info(message: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{PREFIX} {}", one_line(message));
    let _ = out.flush();
}

/// A problem line on stderr.
pub fn error(message: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{PREFIX} {}", one_line(message));
}

/// Messages quote remote peers (a KMS's or an API's explanation), which may hold line breaks
/// or other control characters: each becomes a space, so every message stays one prefixed
/// line and a peer cannot forge a line of its own (a fake ready line, say).
fn one_line(message: &str) -> std::borrow::Cow<'_, str> {
    if message.chars().any(char::is_control) {
        message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>().into()
    } else {
        message.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_break_a_line() {
        assert_eq!(one_line("plain"), "plain");
        assert_eq!(
            one_line("denied.\r\nAgent ready. Polling for updates.\u{1b}[2J"),
            "denied.  Agent ready. Polling for updates. [2J"
        );
    }
}
