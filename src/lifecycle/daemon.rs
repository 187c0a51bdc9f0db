//! The daemon lifecycle (SPEC §7): after the shared start-up, poll on the schedule, refresh on
//! SIGHUP, tell systemd how things are, and stop gracefully on SIGTERM/SIGINT.

use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use super::{systemd, Event, DAEMON_SHUTDOWN};
use crate::config::Config;
use crate::error::Fatal;
use crate::log;
use crate::refresh::Poller;
use crate::telemetry::{self, StopReason};

/// Runs the daemon until a signal stops it (`Ok`) or it cannot go on (`Err`).
pub fn run(config: Config) -> Result<(), Fatal> {
    let Some(running) = super::start(config, "daemon")? else { return Ok(()) };
    let poller = match Poller::spawn(std::sync::Arc::clone(&running.refresher)) {
        Ok(poller) => poller,
        Err(error) => {
            let failure = Err(Fatal::Thread { purpose: "refresh", error });
            return running.stop(StopReason::Error, failure, DAEMON_SHUTDOWN, |_| {});
        }
    };
    log::info("Agent ready. Polling for updates.");
    running.telemetry.emit(telemetry::Event::AgentStarted);
    let notifier = running.config.notify_socket.as_deref().and_then(systemd::Notifier::new);
    notify(&notifier, "READY=1");

    let refresh_now = poller.trigger();
    let watchdog = running.config.watchdog_interval;
    // Without a watchdog this only wakes for events.
    let tick = watchdog.unwrap_or(Duration::from_secs(3600));
    let stuck_after = systemd::stuck_refresh_bound(running.config.mode);
    let (reason, outcome) = loop {
        match running.inbox.recv_timeout(tick) {
            Ok(Event::Refresh) => {
                running.refresh_asked.take();
                refresh_now()
            }
            Ok(Event::Shutdown | Event::LambdaShutdown) | Err(RecvTimeoutError::Disconnected) => {
                break (StopReason::Signal, Ok(()))
            }
            Ok(Event::Failed(fatal)) => break (StopReason::Error, Err(fatal)),
            Ok(Event::InitialFetched(_)) | Err(RecvTimeoutError::Timeout) => {}
        }
        let check = systemd::SelfCheck {
            poller_alive: poller.is_alive(),
            servers_healthy: running.servers.iter().all(|server| server.is_healthy()),
            refresh_running_for: running.refresher.refresh_running_for(),
        };
        if watchdog.is_some() && check.passes(stuck_after) {
            notify(&notifier, "WATCHDOG=1");
        }
    };
    notify(&notifier, "STOPPING=1");
    running.stop(reason, outcome, DAEMON_SHUTDOWN, |deadline| poller.stop_by(deadline))
}

fn notify(notifier: &Option<systemd::Notifier>, state: &str) {
    if let Some(notifier) = notifier {
        notifier.notify(state);
    }
}
