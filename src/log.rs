//! The agent's log lines: `[clef-agent] ` on stdout for progress, on stderr for problems.
//! Deployments wait on some of these lines, so their wording is part of the interface (SPEC §7).
//! Nothing secret is ever passed here: callers log descriptions, revisions and key counts only.

use std::io::Write;

pub const PREFIX: &str = "[clef-agent]";

/// A progress line on stdout.
pub fn info(message: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{PREFIX} {message}");
    let _ = out.flush();
}

/// A problem line on stderr.
pub fn error(message: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{PREFIX} {message}");
}
