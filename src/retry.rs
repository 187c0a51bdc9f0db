//! What a failed refresh costs afterwards. Once the TTL has wiped the secrets, every request
//! asks for a refresh: without a pause, 500 requests against a failing source made 500 fetches
//! (a VCS token's rate limit, S3 requests, a KMS call each for a rejected envelope) and 500
//! log lines. So a request may try again only [`RETRY_AFTER_FAILURE`] after the last failure
//! (until then it gets that failure as its answer), and the same failure is logged at once and
//! then once per [`REPEAT_LOG_WINDOW`] with a count. Pure: the clock is passed in.

use std::time::Duration;

/// After a failed refresh, requests get the stored failure for this long before one of them
/// may fetch again. The poller keeps its own schedule.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// A failure logged is not logged again, word for word, within this time; the next line says
/// how often it was seen meanwhile.
pub const REPEAT_LOG_WINDOW: Duration = Duration::from_secs(30);

/// A request may start a refresh at `now_ms`: no failure is stored, the last one is at least
/// [`RETRY_AFTER_FAILURE`] old, or the clock went back past it (a stepped clock must not stop
/// retries for as long as it stepped).
pub fn should_attempt(last_failure_at_ms: Option<u64>, now_ms: u64) -> bool {
    last_failure_at_ms
        .is_none_or(|failed_at| now_ms < failed_at || u128::from(now_ms - failed_at) >= RETRY_AFTER_FAILURE.as_millis())
}

/// The failure last logged and how often it came again without being logged.
#[derive(Debug, Default)]
pub struct FailureLog {
    last: Option<Logged>,
}

#[derive(Debug)]
struct Logged {
    message: String,
    logged_at_ms: u64,
    unlogged: u64,
}

impl FailureLog {
    /// The lines to log for a failure that says `message` at `now_ms`: the message at once when
    /// it is new, nothing when it repeats within the window, else the message with a count.
    /// `asked`: someone asked for this refresh (SIGHUP) and is waiting to read its result, so it
    /// is logged even within the window.
    pub fn failed(&mut self, message: &str, now_ms: u64, asked: bool) -> Vec<String> {
        if let Some(last) = self.last.as_mut().filter(|last| last.message == message) {
            let within =
                now_ms >= last.logged_at_ms && u128::from(now_ms - last.logged_at_ms) < REPEAT_LOG_WINDOW.as_millis();
            if within && !asked {
                last.unlogged += 1;
                return Vec::new();
            }
            let line = with_count(message, last.unlogged);
            (last.logged_at_ms, last.unlogged) = (now_ms, 0);
            return vec![line];
        }
        let mut lines: Vec<String> = self.succeeded().into_iter().collect();
        lines.push(message.to_string());
        self.last = Some(Logged { message: message.to_string(), logged_at_ms: now_ms, unlogged: 0 });
        lines
    }

    /// A refresh succeeded or failed differently: the count still owed for the last failure.
    pub fn succeeded(&mut self) -> Option<String> {
        let last = self.last.take()?;
        (last.unlogged > 0).then(|| format!("{} (repeated {})", last.message, times(last.unlogged)))
    }
}

fn with_count(message: &str, unlogged: u64) -> String {
    match unlogged {
        0 => message.to_string(),
        count => format!("{message} (repeated {} since it was last logged)", times(count)),
    }
}

fn times(count: u64) -> String {
    format!("{count} more {}", if count == 1 { "time" } else { "times" })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_800_000_000_000;

    #[test]
    fn a_request_waits_five_seconds_after_a_failure_before_fetching_again() {
        let cases = [
            (None, T, true),
            (Some(T), T, false),
            (Some(T), T + 4_999, false),
            (Some(T), T + 5_000, true),
            (Some(T), T + 3_600_000, true),
            (Some(T), T - 1, true),
            (Some(T), 0, true),
        ];
        for (last_failure_at_ms, now_ms, expected) in cases {
            assert_eq!(should_attempt(last_failure_at_ms, now_ms), expected, "{last_failure_at_ms:?} at {now_ms}");
        }
    }

    #[test]
    fn a_repeated_failure_is_logged_once_per_window_with_its_count() {
        let mut log = FailureLog::default();
        assert_eq!(log.failed("down", T, false), ["down"]);
        for offset in 1..=199 {
            assert!(log.failed("down", T + offset * 100, false).is_empty(), "repeat {offset} logged");
        }
        assert_eq!(log.failed("down", T + 30_000, false), ["down (repeated 199 more times since it was last logged)"]);
        assert!(log.failed("down", T + 31_000, false).is_empty());
        assert_eq!(log.failed("down", T + 60_000, false), ["down (repeated 1 more time since it was last logged)"]);
        assert_eq!(log.failed("down", T + 95_000, false), ["down"], "nothing unlogged in between");
    }

    #[test]
    fn a_different_failure_is_logged_at_once_after_the_count_owed_for_the_last() {
        let mut log = FailureLog::default();
        assert_eq!(log.failed("down", T, false), ["down"]);
        assert!(log.failed("down", T + 1, false).is_empty());
        assert_eq!(log.failed("forbidden", T + 2, false), ["down (repeated 1 more time)", "forbidden"]);
        assert_eq!(log.failed("down", T + 3, false), ["down"]);
    }

    #[test]
    fn a_success_ends_the_run_so_the_same_failure_is_logged_again_at_once() {
        let mut log = FailureLog::default();
        assert_eq!(log.failed("down", T, false), ["down"]);
        assert_eq!(log.succeeded(), None);
        assert_eq!(log.failed("down", T + 1, false), ["down"]);
        assert!(log.failed("down", T + 2, false).is_empty());
        assert_eq!(log.succeeded().as_deref(), Some("down (repeated 1 more time)"));
        assert_eq!(log.succeeded(), None);
    }

    #[test]
    fn a_refresh_someone_asked_for_logs_its_failure_even_when_it_repeats() {
        let mut log = FailureLog::default();
        assert_eq!(log.failed("down", T, false), ["down"]);
        assert!(log.failed("down", T + 1, false).is_empty());
        assert_eq!(log.failed("down", T + 2, true), ["down (repeated 1 more time since it was last logged)"]);
        assert_eq!(log.failed("down", T + 3, true), ["down"]);
        assert!(log.failed("down", T + 4, false).is_empty(), "the window starts again");
    }

    #[test]
    fn a_clock_stepped_back_ends_the_window() {
        let mut log = FailureLog::default();
        log.failed("down", T, false);
        assert!(log.failed("down", T + 1, false).is_empty());
        assert_eq!(log.failed("down", T - 60_000, false), ["down (repeated 1 more time since it was last logged)"]);
    }
}
