//! The daemon lifecycle (SPEC §7): start-up with retries, serving, polling, signals and a
//! graceful shutdown bounded in time. Its log lines are part of the interface: deployments
//! wait on them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use super::{systemd, Fatal};
use crate::config::Config;
use crate::decrypt::Keys;
use crate::log;
use crate::refresh::{Pipeline, Poller, RefreshError, Refresher};
use crate::server::routes::Api;
use crate::server::{listener, Bound, Server};
use crate::snapshot::Cell;
use crate::token;

/// Start-up makes this many attempts at the first artifact…
const STARTUP_ATTEMPTS: u32 = 3;
/// …waiting this long before the second and the third.
const STARTUP_BACKOFF: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(4)];
/// In-flight requests get this long to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

enum Event {
    Shutdown,
    Refresh,
    ServerFailed(String),
}

/// Runs the daemon until a signal stops it (`Ok`) or it cannot go on (`Err`).
pub fn run(config: Config) -> Result<(), Fatal> {
    harden_process();
    let keys = Arc::new(Keys { age: config.load_age_identity()? });
    let (token, token_line) = token::resolve(&config.token)?;
    warn_about_unsupported_options(&config);

    let listeners = bind_listeners(&config)?;
    let (events, inbox) = mpsc::channel();
    watch_signals(events.clone())?;

    let cell = Arc::new(Cell::new(config.mode));
    let source = crate::source::from_config(&config.source);
    let refresher = Arc::new(Refresher::new(
        Arc::clone(&cell),
        Pipeline::new(source, Arc::clone(&keys), config.verify_key.clone()),
    ));
    log::info(&format!("source: {}", refresher.describe_source()));
    log::info("fetching initial artifact...");
    if !initial_load(&refresher, &inbox)? {
        log::info("Shutting down...");
        log::info("Shutdown complete.");
        return Ok(());
    }
    log::info(&format!("mode: {}", config.mode.name()));
    log::info(&token_line);
    log::info("lifecycle: daemon");

    let api = Arc::new(Api { cell, refresher: Arc::clone(&refresher), keys, token });
    let mut servers = Vec::with_capacity(listeners.len());
    for (listener, address) in listeners {
        let failures = events.clone();
        let server = Server::start(listener, Arc::clone(&api), move |message| {
            let _ = failures.send(Event::ServerFailed(message));
        })
        .map_err(Fatal::Other)?;
        servers.push(server);
        log::info(&format!("Agent server listening at {address}"));
    }
    let poller =
        Poller::spawn(refresher).map_err(|error| Fatal::Other(format!("cannot start the refresh thread: {error}")))?;
    log::info("Agent ready. Polling for updates.");
    let notifier = config.notify_socket.as_deref().and_then(systemd::Notifier::new);
    notify(&notifier, "READY=1");

    let refresh_now = poller.trigger();
    // Without a watchdog this only wakes for events.
    let tick = config.watchdog_interval.unwrap_or(Duration::from_secs(3600));
    loop {
        match inbox.recv_timeout(tick) {
            Ok(Event::Refresh) => refresh_now(),
            Ok(Event::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
            Ok(Event::ServerFailed(message)) => return Err(Fatal::Other(message)),
            Err(RecvTimeoutError::Timeout) => {}
        }
        // The self-check: this loop, the refresh thread and every HTTP worker are alive.
        if config.watchdog_interval.is_some() && poller.is_alive() && servers.iter().all(Server::is_healthy) {
            notify(&notifier, "WATCHDOG=1");
        }
    }
    notify(&notifier, "STOPPING=1");
    log::info("Shutting down...");
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    poller.stop_by(deadline);
    for server in servers {
        server.stop(deadline.saturating_duration_since(Instant::now()));
    }
    if let Some(path) = &config.socket {
        let _ = std::fs::remove_file(path);
    }
    log::info("Shutdown complete.");
    Ok(())
}

/// Loads the first artifact with the retries of SPEC §4. `Ok(false)` when a signal asked to
/// stop meanwhile.
fn initial_load(refresher: &Refresher, inbox: &Receiver<Event>) -> Result<bool, Fatal> {
    let mut attempt = 1;
    loop {
        let error: RefreshError = match refresher.refresh(crate::time::now_ms()) {
            Ok(_) => return Ok(true),
            Err(error) => error,
        };
        if error.is_configuration_problem() || attempt == STARTUP_ATTEMPTS {
            let attempts = if attempt == 1 { "1 attempt".to_string() } else { format!("{attempt} attempts") };
            return Err(Fatal::Other(format!(
                "Failed to fetch artifact from {} after {attempts}: {error}. {}",
                refresher.describe_source(),
                error.hint()
            )));
        }
        let backoff = STARTUP_BACKOFF[(attempt - 1) as usize];
        log::error(&format!(
            "initial fetch failed (attempt {attempt} of {STARTUP_ATTEMPTS}): {error}; retrying in {} s",
            backoff.as_secs()
        ));
        let deadline = Instant::now() + backoff;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match inbox.recv_timeout(left) {
                Ok(Event::Shutdown) => return Ok(false),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return Ok(false),
            }
        }
        attempt += 1;
    }
}

/// SIGTERM/SIGINT ask for a graceful stop, a second one exits at once; SIGHUP refreshes.
/// Handlers are installed explicitly, so this works as PID 1 too.
fn watch_signals(events: Sender<Event>) -> Result<(), Fatal> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|error| Fatal::Other(format!("cannot install signal handlers: {error}")))?;
    let stops = AtomicUsize::new(0);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    let _ = events.send(Event::Refresh);
                    continue;
                }
                if stops.fetch_add(1, Ordering::SeqCst) > 0 {
                    log::error("second stop signal: exiting now");
                    std::process::exit(128 + signal);
                }
                let _ = events.send(Event::Shutdown);
            }
        })
        .map_err(|error| Fatal::Other(format!("cannot start the signal thread: {error}")))?;
    Ok(())
}

/// No core dumps and no same-user ptrace: the process holds plaintext secrets.
fn harden_process() {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) changes only this process's dumpable flag.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    listener::raise_file_descriptor_limit();
}

fn notify(notifier: &Option<systemd::Notifier>, state: &str) {
    if let Some(notifier) = notifier {
        notifier.notify(state);
    }
}

/// The Unix socket when `CLEF_AGENT_SOCKET` is set (then TCP only with an explicit
/// `CLEF_AGENT_PORT`), else TCP on loopback; each with the address the log names.
fn bind_listeners(config: &Config) -> Result<Vec<(Bound, String)>, Fatal> {
    let mut listeners = Vec::new();
    if let Some(path) = &config.socket {
        let listener = listener::bind_unix(path).map_err(Fatal::Other)?;
        listeners.push((Bound::Unix(listener), format!("unix:{}", path.display())));
    }
    if config.socket.is_none() || config.port_explicit {
        let listener = listener::bind_loopback(config.port).map_err(Fatal::Other)?;
        listeners.push((Bound::Tcp(listener), format!("http://127.0.0.1:{}", config.port)));
    }
    Ok(listeners)
}

/// Optional features whose absence degrades nothing the application relies on are announced,
/// never silently ignored.
fn warn_about_unsupported_options(config: &Config) {
    if config.telemetry_url.is_some() {
        log::error("warning: CLEF_AGENT_TELEMETRY_URL is set, but this build does not send telemetry yet; no events will be sent");
    }
    if config.cache_path.is_some() {
        log::error("warning: CLEF_AGENT_CACHE_PATH is set, but this build has no disk cache yet; nothing will be cached on disk");
    }
}
