//! `CLEF_AGENT_ON_CHANGE`: a command run after each change (a new revision served, the secrets
//! wiped), e.g. `/usr/bin/systemctl try-restart app.service`.
//!
//! The command is an argv (split on whitespace when configured), never given to a shell. Its
//! environment is `PATH`, `CLEF_EVENT` and `CLEF_REVISION` only: the agent's own environment
//! holds the age key, the token and cloud credentials, and none of it may reach the hook. Runs
//! happen one at a time on a thread of their own, so a slow hook never holds up a refresh; each
//! is killed (with its process group) after [`HOOK_TIMEOUT`]. The exit status is logged.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Delivery, Subscriber};
use crate::log;

/// A hook still running after this long is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// Changes waiting for their run; more are dropped with a log line (a hook that keeps
/// timing out while the artifact rotates must not grow the memory).
const QUEUE_LENGTH: usize = 16;
/// How often a running hook is checked on.
const CHECK_EVERY: Duration = Duration::from_millis(20);

/// One run: `CLEF_EVENT` and `CLEF_REVISION`.
struct Run {
    event: &'static str,
    revision: String,
}

pub struct Hook {
    queue: SyncSender<Run>,
    /// The revision last served, which a wipe's run names.
    last_revision: Mutex<String>,
}

impl Hook {
    pub fn start(argv: Vec<String>) -> std::io::Result<Hook> {
        let (queue, runs) = mpsc::sync_channel::<Run>(QUEUE_LENGTH);
        std::thread::Builder::new().name("on-change".into()).spawn(move || {
            for next in runs {
                let outcome = run(&argv, next.event, &next.revision, HOOK_TIMEOUT);
                let line =
                    format!("on-change: {} (event {}, revision {}) {outcome}", argv[0], next.event, next.revision);
                if outcome.starts_with("exited with status 0") {
                    log::info(&line);
                } else {
                    log::error(&line);
                }
            }
        })?;
        Ok(Hook { queue, last_revision: Mutex::new(String::new()) })
    }
}

impl Subscriber for Hook {
    fn notify(&self, event: &Delivery) {
        let mut last = self.last_revision.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let next = match event {
            Delivery::Served { revision, .. } => {
                last.clone_from(revision);
                Run { event: "refreshed", revision: revision.clone() }
            }
            Delivery::Wiped(reason) => Run { event: reason.event_name(), revision: last.clone() },
            Delivery::Shutdown => return,
        };
        if let Err(TrySendError::Full(dropped)) = self.queue.try_send(next) {
            log::error(&format!(
                "on-change: {QUEUE_LENGTH} runs are waiting already; not running it for event {} (revision {})",
                dropped.event, dropped.revision
            ));
        }
    }
}

/// Runs `argv` with only `PATH`, `CLEF_EVENT` and `CLEF_REVISION` in its environment, for at
/// most `timeout`; says how it ended.
fn run(argv: &[String], event: &str, revision: &str, timeout: Duration) -> String {
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]).env_clear().stdin(Stdio::null()).process_group(0);
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command.env("CLEF_EVENT", event).env("CLEF_REVISION", revision);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => return format!("could not start: {error}"),
    };
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return match (status.code(), status.signal()) {
                    (Some(code), _) => format!("exited with status {code}"),
                    (None, Some(signal)) => format!("was killed by signal {signal}"),
                    (None, None) => format!("ended: {status}"),
                };
            }
            Ok(None) if started.elapsed() >= timeout => {
                // The whole group: a script's children must not outlive it either.
                // SAFETY: kill() only sends a signal; the child is not reaped yet, so its
                // process group id (its pid) cannot be anyone else's.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return format!("timed out after {timeout:?} and was killed");
            }
            Ok(None) => std::thread::sleep(CHECK_EVERY),
            Err(error) => return format!("could not be waited for: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| word.to_string()).collect()
    }

    #[test]
    fn a_hook_that_outlives_its_timeout_is_killed_with_its_children() {
        let marker = std::env::temp_dir().join(format!("clef-hook-child-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let script = format!("(sleep 1; touch {}) & sleep 60", marker.display());
        let started = Instant::now();
        let outcome = run(&argv(&["/bin/sh", "-c", &script]), "refreshed", "r1", Duration::from_millis(300));
        assert_eq!(outcome, "timed out after 300ms and was killed");
        assert!(started.elapsed() < Duration::from_secs(5), "the timeout was not enforced");
        std::thread::sleep(Duration::from_millis(1500));
        assert!(!marker.exists(), "the hook's child survived the kill");
    }

    #[test]
    fn a_hook_sees_only_path_event_and_revision() {
        let outcome = run(
            &argv(&[
                "/bin/sh",
                "-c",
                r#"test "$(env | grep -v '^PWD=' | cut -d= -f1 | sort | tr '\n' ' ')" = "CLEF_EVENT CLEF_REVISION PATH " && test "$CLEF_EVENT/$CLEF_REVISION" = "revoked/r9""#,
            ]),
            "revoked",
            "r9",
            HOOK_TIMEOUT,
        );
        assert_eq!(outcome, "exited with status 0");
    }

    #[test]
    fn a_command_that_cannot_start_is_reported() {
        let outcome = run(&argv(&["/nonexistent/hook"]), "refreshed", "r1", HOOK_TIMEOUT);
        assert!(outcome.starts_with("could not start: "), "{outcome}");
    }
}
