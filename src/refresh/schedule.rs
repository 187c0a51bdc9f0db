//! When to refresh (SPEC §4): the poll interval with its jitter, the TTL's own expiry timer,
//! and the [`Poller`] thread that polls on that schedule or at once on SIGHUP.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::Refresher;
use crate::config::Mode;
use crate::pending::Pending;

/// JIT mode polls at this fixed interval; it is also the floor of cached mode's schedule.
pub const POLL_FLOOR: Duration = Duration::from_secs(5);
/// A refresh is never taken for a stuck one before it has run this long (the systemd
/// watchdog's check, `lifecycle/systemd.rs`).
pub const REFRESH_OVERDUE_FLOOR: Duration = Duration::from_secs(60);
/// Cached mode polls at this fraction of the TTL when the artifact has no `expiresAt`.
const TTL_POLL_DIVISOR: u32 = 10;
/// With an `expiresAt`, poll after this fraction of the time it has left.
const EXPIRY_POLL_FRACTION: f64 = 0.8;
/// Up to this fraction of an interval is taken off at random, so a fleet does not poll in step.
const MAX_JITTER_FRACTION: f64 = 0.1;

/// How long to wait before the next poll (SPEC §4). `jitter` is uniform in `[0, 1)`.
pub fn poll_interval_for(mode: Mode, expires_at_ms: Option<i64>, now_ms: u64, jitter: f64) -> Duration {
    let Mode::Cached { ttl } = mode else { return POLL_FLOOR };
    let mut interval = ttl / TTL_POLL_DIVISOR;
    if let Some(expires_at_ms) = expires_at_ms {
        // Never wait past the TTL either: an artifact valid for a month must still be polled
        // often enough that the cache does not expire.
        let remaining_ms = expires_at_ms.saturating_sub(now_ms as i64).max(0) as f64;
        interval = interval.min(Duration::from_millis((remaining_ms * EXPIRY_POLL_FRACTION) as u64));
    }
    let jittered = interval.mul_f64(1.0 - MAX_JITTER_FRACTION * jitter.clamp(0.0, 1.0));
    jittered.max(POLL_FLOOR)
}

fn random_jitter() -> f64 {
    crate::secret::random_bytes::<4>()
        .map_or(0.0, |bytes| f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0))
}

/// The expiry timer looks again at least this often: nothing served yet, or a wall clock
/// that jumped forward (which ages the secrets early, see `time::elapsed_ms`).
const EXPIRY_RECHECK: Duration = Duration::from_secs(1);

/// The TTL's own timer: wipes the secrets when the TTL passes without a successful refresh, or
/// when the artifact's `expiresAt` passes (looked at every [`EXPIRY_RECHECK`]), whatever the
/// refresh thread is doing (a fetch that hangs holds the pipeline, not this).
pub fn spawn_expiry_timer(refresher: Arc<Refresher>) -> std::io::Result<()> {
    std::thread::Builder::new().name("ttl".into()).spawn(move || loop {
        let now_ms = crate::time::now_ms();
        refresher.wipe_if_expired(now_ms);
        // Just past the TTL: expiry is strictly more than the TTL.
        let left = refresher.cell.time_to_expiry(now_ms).map(|left| left + Duration::from_millis(1));
        std::thread::sleep(left.map_or(EXPIRY_RECHECK, |left| left.min(EXPIRY_RECHECK)));
    })?;
    Ok(())
}

enum Command {
    RefreshNow,
    Stop,
}

/// The refresh thread: polls on the schedule, or at once when asked (SIGHUP).
pub struct Poller {
    commands: Sender<Command>,
    thread: JoinHandle<()>,
    /// A refresh asked for and not started yet: more asks meanwhile send nothing.
    asked: Pending,
}

impl Poller {
    pub fn spawn(refresher: Arc<Refresher>) -> std::io::Result<Poller> {
        let (commands, inbox) = mpsc::channel();
        let asked = Pending::default();
        let taken = asked.clone();
        let thread = std::thread::Builder::new().name("refresh".into()).spawn(move || loop {
            let served = refresher.cell.current();
            let expires_at = served.expires_at().map(|expiry| expiry.epoch_ms);
            drop(served);
            let delay = poll_interval_for(refresher.cell.mode, expires_at, crate::time::now_ms(), random_jitter());
            match inbox.recv_timeout(delay) {
                Ok(Command::RefreshNow) => {
                    taken.take();
                    refresher.refresh_on_signal(crate::time::now_ms())
                }
                Err(RecvTimeoutError::Timeout) => refresher.refresh_and_log(crate::time::now_ms()),
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            }
        })?;
        Ok(Poller { commands, thread, asked })
    }

    /// A handle that asks for an immediate refresh; asks made before it starts count once.
    pub fn trigger(&self) -> impl Fn() + Send + 'static {
        let (commands, asked) = (self.commands.clone(), self.asked.clone());
        move || {
            if asked.ask() {
                let _ = commands.send(Command::RefreshNow);
            }
        }
    }

    /// The refresh thread is still running (the watchdog's self-check).
    pub fn is_alive(&self) -> bool {
        !self.thread.is_finished()
    }

    /// Stops polling, waiting until `deadline` at most for a refresh in progress.
    pub fn stop_by(self, deadline: std::time::Instant) {
        let _ = self.commands.send(Command::Stop);
        while !self.thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn cached(ttl: Duration) -> Mode {
        Mode::Cached { ttl }
    }

    #[test]
    fn polls_every_tenth_of_the_ttl_without_expiry() {
        assert_eq!(poll_interval_for(cached(5 * MINUTE), None, 0, 0.0), Duration::from_secs(30));
    }

    #[test]
    fn jitter_takes_off_at_most_ten_percent() {
        assert_eq!(poll_interval_for(cached(5 * MINUTE), None, 0, 0.5), Duration::from_millis(28_500));
        assert!(poll_interval_for(cached(5 * MINUTE), None, 0, 0.999_999) > Duration::from_secs(27));
    }

    #[test]
    fn polls_at_eighty_percent_of_the_time_left_before_expiry() {
        let now = 1_000_000;
        let expires = now as i64 + 100_000;
        assert_eq!(poll_interval_for(cached(30 * MINUTE), Some(expires), now, 0.0), Duration::from_secs(80));
    }

    #[test]
    fn expiry_far_away_still_polls_within_the_ttl() {
        assert_eq!(poll_interval_for(cached(5 * MINUTE), Some(i64::MAX), 0, 0.0), Duration::from_secs(30));
    }

    #[test]
    fn never_polls_more_often_than_the_floor() {
        assert_eq!(poll_interval_for(cached(Duration::from_secs(30)), None, 0, 0.9), POLL_FLOOR);
        assert_eq!(poll_interval_for(cached(5 * MINUTE), Some(0), 10, 0.0), POLL_FLOOR);
        assert_eq!(poll_interval_for(Mode::Jit, None, 0, 0.0), POLL_FLOOR);
    }
}
