//! systemd's notify protocol (SPEC §7, **beyond**): `READY=1` once serving, `STOPPING=1` at
//! shutdown, and `WATCHDOG=1` every `WATCHDOG_USEC`/2 — but only while a self-check passes
//! (the refresh thread and every HTTP worker alive, and no refresh running for longer than
//! [`stuck_refresh_bound`]), so a wedged agent stops pinging and systemd restarts it. Without
//! `NOTIFY_SOCKET` all of this does nothing. The daemon's main loop sends the pings, so its own
//! liveness is part of the check.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use crate::config::Mode;
use crate::refresh::{poll_interval_for, REFRESH_OVERDUE_FLOOR};

/// Where to send notifications, from `NOTIFY_SOCKET`.
pub struct Notifier {
    address: SocketAddr,
}

impl Notifier {
    /// `None` when `NOTIFY_SOCKET` is unset or unusable (then systemd is not listening).
    pub fn new(path: &str) -> Option<Notifier> {
        // A leading '@' names a socket in the abstract namespace.
        let address = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
            None => SocketAddr::from_pathname(path),
        };
        address.ok().map(|address| Notifier { address })
    }

    /// Sends one notification; failures are ignored (systemd may be gone at shutdown).
    pub fn notify(&self, state: &str) {
        if let Ok(socket) = UnixDatagram::unbound() {
            let _ = socket.send_to_addr(state.as_bytes(), &self.address);
        }
    }
}

/// A refresh running longer than this is stuck: twice the poll interval, and never less than
/// [`REFRESH_OVERDUE_FLOOR`] (a fetch, a KMS call and credentials each have their own 30 s
/// timeout, so a slow refresh that will still end is not taken for a stuck one).
pub fn stuck_refresh_bound(mode: Mode) -> Duration {
    (2 * poll_interval_for(mode, None, 0, 0.0)).max(REFRESH_OVERDUE_FLOOR)
}

/// What the watchdog checks before each ping.
#[derive(Debug, Clone, Copy)]
pub struct SelfCheck {
    pub poller_alive: bool,
    pub servers_healthy: bool,
    /// How long the refresh in flight has been running, if one is.
    pub refresh_running_for: Option<Duration>,
}

impl SelfCheck {
    /// Healthy: everything alive and refreshes completing on schedule (none running for
    /// `stuck_after` or longer).
    pub fn passes(&self, stuck_after: Duration) -> bool {
        self.poller_alive && self.servers_healthy && self.refresh_running_for.is_none_or(|ran| ran < stuck_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_pings_only_while_everything_is_alive_and_no_refresh_is_stuck() {
        const MINUTE: Duration = Duration::from_secs(60);
        let check = |poller_alive, servers_healthy, refresh_running_for| SelfCheck {
            poller_alive,
            servers_healthy,
            refresh_running_for,
        };
        // (self-check, pings with a one-minute bound)
        let cases = [
            (check(true, true, None), true),
            (check(true, true, Some(Duration::ZERO)), true),
            (check(true, true, Some(MINUTE - Duration::from_millis(1))), true),
            (check(true, true, Some(MINUTE)), false),
            (check(true, true, Some(10 * MINUTE)), false),
            (check(false, true, None), false),
            (check(true, false, None), false),
        ];
        for (check, pings) in cases {
            assert_eq!(check.passes(MINUTE), pings, "{check:?}");
        }
    }

    #[test]
    fn a_refresh_is_stuck_after_twice_the_poll_interval_and_never_before_a_minute() {
        let cached = |seconds| Mode::Cached { ttl: Duration::from_secs(seconds) };
        // (mode, bound): the poll interval is a tenth of the TTL, at least 5 s
        let cases = [(Mode::Jit, 60), (cached(30), 60), (cached(300), 60), (cached(600), 120), (cached(3600), 720)];
        for (mode, seconds) in cases {
            assert_eq!(stuck_refresh_bound(mode), Duration::from_secs(seconds), "{mode:?}");
        }
    }

    #[test]
    fn sends_datagrams_to_the_notify_socket() {
        let directory = std::env::temp_dir().join(format!("clef-notify-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let path_text = path.to_string_lossy().to_string();
        let notifier = Notifier::new(&path_text).unwrap();
        notifier.notify("READY=1");
        let mut buffer = [0u8; 64];
        let count = listener.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..count], b"READY=1");
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
