//! How the agent runs. Start-up is shared (this module): assemble the agent (`agent.rs`:
//! hardening, keys, source), resolve the token, bind the listeners, load the first artifact
//! with retries, start serving. Then the daemon polls on its schedule, or the Lambda extension
//! refreshes on invocations. Both end the same way: stop serving within a bounded time and
//! flush telemetry.

pub mod daemon;
pub mod lambda;
pub mod systemd;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::agent::{self, Agent};
use crate::bearer;
use crate::config::{Config, SourceConfig};
use crate::delivery::{self, Subscribers};
use crate::error::Fatal;
use crate::http::HttpClient;
use crate::log;
use crate::pending::Pending;
use crate::refresh::{RefreshError, Refresher};
use crate::secret::{hex, random_bytes};
use crate::server::routes::Api;
use crate::server::{listener, Bound, Server};
use crate::snapshot::LiveSnapshot;
use crate::telemetry::{self, StopReason, Telemetry};

/// Start-up makes this many attempts at the first artifact…
const STARTUP_ATTEMPTS: u32 = 3;
/// …waiting this long before the second and the third.
const STARTUP_BACKOFF: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(4)];
/// How long each step of shutdown may take, in order: once the listeners are closed, the
/// requests in flight; then a refresh in progress (the poller); then the telemetry flush. Each
/// step has its own time, so a fetch that hangs cannot take the requests' grace.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownBudget {
    pub requests: Duration,
    pub poller: Duration,
    pub telemetry: Duration,
}

/// The daemon: in-flight requests get 3 s (SPEC §7), a refresh in progress 1 s more (a stuck
/// one is left behind when the process exits), the telemetry flush 2 s.
pub const DAEMON_SHUTDOWN: ShutdownBudget = ShutdownBudget {
    requests: Duration::from_secs(3),
    poller: Duration::from_secs(1),
    telemetry: telemetry::FLUSH_TIMEOUT,
};

/// What the running agent's main loop reacts to.
pub enum Event {
    /// SIGTERM or SIGINT.
    Shutdown,
    /// SIGHUP.
    Refresh,
    /// Lambda's SHUTDOWN event.
    LambdaShutdown,
    /// Something the agent cannot serve without (the HTTP accept loop, the Lambda API).
    Failed(Fatal),
    /// A start-up fetch ended (see [`initial_load`]).
    InitialFetched(Result<(), RefreshError>),
}

/// A started agent: serving, with its first artifact loaded.
pub struct Running {
    pub config: Config,
    pub refresher: Arc<Refresher>,
    pub servers: Vec<Server>,
    pub telemetry: Telemetry,
    /// The process's HTTP client (bundled roots plus `SSL_CERT_FILE`).
    pub http: HttpClient,
    pub events: Sender<Event>,
    pub inbox: Receiver<Event>,
    /// SIGHUP's refresh: take it as the refresh it asked for starts (see [`watch_signals`]).
    pub refresh_asked: Pending,
    /// The delivery modes beyond HTTP, when any is configured.
    deliveries: Option<Arc<Subscribers>>,
    started_at: Instant,
}

/// Shared start-up, up to and including `Agent server listening at …`. `Ok(None)` when a
/// signal asked to stop during the start-up retries.
pub fn start(config: Config, lifecycle: &str) -> Result<Option<Running>, Fatal> {
    let started_at = Instant::now();
    tune_process();
    let Agent { http, env, keys, source } = Agent::assemble(&config)?;
    let pipeline = agent::pipeline(&config, source, Arc::clone(&keys))?;
    let (token, token_line) = bearer::resolve(&config.token)?;
    for warning in crate::config::cleartext_credential_warnings(&config, |name| env.get(name)) {
        log::error(&format!("warning: {warning}"));
    }
    let listeners = bind_listeners(&config)?;
    // The render directory checked and the credential socket bound, before any thread starts.
    let deliveries = delivery::prepare(&config)?;
    let (events, inbox) = mpsc::channel();
    let refresh_asked = Pending::default();
    watch_signals(events.clone(), refresh_asked.clone())?;
    let telemetry = start_telemetry(&config, &http)?;

    let cell = Arc::new(LiveSnapshot::new(config.mode));
    let refresher = Arc::new(Refresher::new(Arc::clone(&cell), pipeline, telemetry.clone()));
    // Before the first load, so that its revision is delivered too.
    let deliveries = deliveries
        .start(Arc::clone(&cell), Arc::clone(&keys))
        .map_err(|(purpose, error)| Fatal::Thread { purpose, error })?;
    if let Some(subscribers) = &deliveries {
        let subscribers = Arc::clone(subscribers);
        refresher.observe_with(Box::new(move |served| subscribers.observe(served)));
    }
    log::info(&format!("source: {}", refresher.describe_source()));
    log::info("fetching initial artifact...");
    let loaded = initial_load(&refresher, &events, &inbox, &refresh_asked).inspect_err(|_| {
        telemetry.emit(telemetry::Event::AgentStopped { reason: StopReason::Error, uptime_seconds: 0 });
        telemetry.shutdown(telemetry::FLUSH_TIMEOUT);
    })?;
    if !loaded {
        if let Some(subscribers) = &deliveries {
            subscribers.shutdown();
        }
        log::info("Shutting down...");
        log::info("Shutdown complete.");
        return Ok(None);
    }
    // From here on files may be rendered: a start-up that fails removes them before it returns.
    let remove_rendered = |fatal: Fatal| {
        if let Some(subscribers) = &deliveries {
            subscribers.shutdown();
        }
        fatal
    };
    crate::refresh::spawn_expiry_timer(Arc::clone(&refresher))
        .map_err(|error| remove_rendered(Fatal::Thread { purpose: "TTL timer", error }))?;
    log::info(&format!("mode: {}", config.mode.name()));
    log::info(&token_line);
    log::info(&format!("lifecycle: {lifecycle}"));

    let api = Arc::new(Api { cell, refresher: Arc::clone(&refresher), keys, token });
    let mut servers = Vec::with_capacity(listeners.len());
    for (listener, address) in listeners {
        let failures = events.clone();
        let server = Server::start(listener, Arc::clone(&api), config.max_connections, move |message| {
            let _ = failures.send(Event::Failed(Fatal::Serve(message)));
        })
        .map_err(|message| remove_rendered(Fatal::Serve(message)))?;
        servers.push(server);
        log::info(&format!("Agent server listening at {address}"));
    }
    Ok(Some(Running {
        config,
        refresher,
        servers,
        telemetry,
        http,
        events,
        inbox,
        refresh_asked,
        deliveries,
        started_at,
    }))
}

impl Running {
    /// Stops serving, then `stop_poller` (given its deadline), then flushes telemetry, each
    /// step within its part of `budget`, and returns how the lifecycle ends.
    pub fn stop(
        self,
        reason: StopReason,
        outcome: Result<(), Fatal>,
        budget: ShutdownBudget,
        stop_poller: impl FnOnce(Instant),
    ) -> Result<(), Fatal> {
        log::info("Shutting down...");
        // No new connections first, so that the grace only ever serves what is in flight.
        for server in &self.servers {
            server.stop_accepting();
        }
        let deadline = Instant::now() + budget.requests;
        for server in self.servers {
            server.finish_requests(deadline);
        }
        stop_poller(Instant::now() + budget.poller);
        // Rendered files and the credential socket go with the agent.
        if let Some(subscribers) = &self.deliveries {
            subscribers.shutdown();
        }
        if let Some(path) = &self.config.socket {
            let _ = std::fs::remove_file(path);
        }
        let uptime_seconds = self.started_at.elapsed().as_secs();
        self.telemetry.emit(telemetry::Event::AgentStopped { reason, uptime_seconds });
        self.telemetry.shutdown(budget.telemetry);
        log::info("Shutdown complete.");
        outcome
    }
}

/// Loads the first artifact with the retries of SPEC §4. `Ok(false)` when a signal asked to
/// stop meanwhile — also during a fetch: each runs on its own thread, so one that hangs does not
/// keep SIGTERM waiting (it is left behind when the process exits).
///
/// A SIGHUP meanwhile is taken from `refresh_asked` (or no later SIGHUP would refresh): during a
/// fetch that fetch answers it, between attempts it starts the next attempt at once.
fn initial_load(
    refresher: &Arc<Refresher>,
    events: &Sender<Event>,
    inbox: &Receiver<Event>,
    refresh_asked: &Pending,
) -> Result<bool, Fatal> {
    let mut attempt = 1;
    loop {
        let (fetching, fetched) = (Arc::clone(refresher), events.clone());
        std::thread::Builder::new()
            .name("initial-fetch".into())
            .spawn(move || {
                let result = fetching.refresh(crate::time::now_ms()).map(|_| ());
                let _ = fetched.send(Event::InitialFetched(result));
            })
            .map_err(|error| Fatal::Thread { purpose: "initial fetch", error })?;
        let error: RefreshError = loop {
            match inbox.recv() {
                Ok(Event::InitialFetched(Ok(()))) => return Ok(true),
                Ok(Event::InitialFetched(Err(error))) => break error,
                Ok(Event::Shutdown | Event::LambdaShutdown) | Err(_) => return Ok(false),
                Ok(Event::Refresh) => refresh_asked.take(),
                Ok(_) => continue,
            }
        };
        if error.is_configuration_problem() || attempt == STARTUP_ATTEMPTS {
            return Err(Fatal::InitialLoad {
                source: refresher.describe_source(),
                attempts: attempt,
                error: Box::new(error),
            });
        }
        let backoff = STARTUP_BACKOFF[(attempt - 1) as usize];
        log::error(&format!(
            "initial fetch failed (attempt {attempt} of {STARTUP_ATTEMPTS}): {error}; retrying in {} s",
            backoff.as_secs()
        ));
        let deadline = Instant::now() + backoff;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match inbox.recv_timeout(left) {
                Ok(Event::Shutdown | Event::LambdaShutdown) | Err(RecvTimeoutError::Disconnected) => return Ok(false),
                Ok(Event::Refresh) => {
                    refresh_asked.take();
                    break;
                }
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        attempt += 1;
    }
}

/// SIGTERM/SIGINT ask for a graceful stop, a second one exits at once; SIGHUP refreshes, and
/// SIGHUPs that arrive before that refresh is taken from `refresh_asked` send nothing more.
/// Handlers are installed explicitly, so this works as PID 1 too.
fn watch_signals(events: Sender<Event>, refresh_asked: Pending) -> Result<(), Fatal> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(Fatal::Signals)?;
    let stops = AtomicUsize::new(0);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    if refresh_asked.ask() {
                        let _ = events.send(Event::Refresh);
                    }
                    continue;
                }
                if stops.fetch_add(1, Ordering::SeqCst) > 0 {
                    log::error("second stop signal: exiting now");
                    std::process::exit(128 + signal);
                }
                let _ = events.send(Event::Shutdown);
            }
        })
        .map_err(|error| Fatal::Thread { purpose: "signal", error })?;
    Ok(())
}

/// The serving agent's process settings, beside the hardening [`Agent::assemble`] does.
fn tune_process() {
    // glibc raises its mmap threshold after the first large block is freed; then large
    // request buffers (a client's 1 MiB header) come from per-thread arenas that keep the
    // memory for good. A fixed threshold keeps large blocks in mmap, returned when freed.
    // (The shipped musl build does not have this behaviour.)
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    listener::raise_file_descriptor_limit();
}

/// The Unix socket when `CLEF_AGENT_SOCKET` is set (then TCP only with an explicit
/// `CLEF_AGENT_PORT`), else TCP on loopback; each with the address the log names.
fn bind_listeners(config: &Config) -> Result<Vec<(Bound, String)>, Fatal> {
    let mut listeners = Vec::new();
    if let Some(path) = &config.socket {
        let listener = listener::bind_unix(path).map_err(Fatal::Listen)?;
        listeners.push((Bound::Unix(listener), format!("unix:{}", path.display())));
    }
    if config.socket.is_none() || config.port_explicit {
        let listener = listener::bind_loopback(config.port).map_err(Fatal::Listen)?;
        listeners.push((Bound::Tcp(listener), format!("http://127.0.0.1:{}", config.port)));
    }
    Ok(listeners)
}

fn start_telemetry(config: &Config, http: &HttpClient) -> Result<Telemetry, Fatal> {
    let Some(url) = &config.telemetry_url else { return Ok(Telemetry::default()) };
    let agent_id = match &config.agent_id {
        Some(id) => id.clone(),
        None => uuid_v4().map_err(Fatal::Randomness)?,
    };
    Ok(Telemetry::start(url, telemetry_resource(&config.source, agent_id), http.clone()))
}

/// The telemetry resource before the first artifact: a VCS source names its identity and
/// environment in the configuration, and those stay; other sources learn them from the artifact.
fn telemetry_resource(source: &SourceConfig, agent_id: String) -> telemetry::Resource {
    let source_type = match source {
        SourceConfig::File(_) => "file",
        SourceConfig::Http(_) => "http",
        SourceConfig::S3 { .. } => "s3",
        SourceConfig::Vcs(_) => "vcs",
    };
    let resource = telemetry::Resource { agent_id, source_type, ..telemetry::Resource::default() };
    match source {
        SourceConfig::Vcs(vcs) => telemetry::Resource {
            identity: Some(vcs.identity.clone()),
            environment: Some(vcs.environment.clone()),
            configured_names: true,
            ..resource
        },
        _ => resource,
    }
}

/// A random (version 4) UUID, the default `CLEF_AGENT_ID`.
fn uuid_v4() -> Result<String, String> {
    let mut bytes = random_bytes::<16>()?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let text = hex(&bytes);
    Ok(format!("{}-{}-{}-{}-{}", &text[..8], &text[8..12], &text[12..16], &text[16..20], &text[20..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(pairs: &[(&str, &str)]) -> SourceConfig {
        let map: std::collections::HashMap<&str, &str> = pairs.iter().copied().collect();
        Config::from_env(|name| map.get(name).map(|value| value.to_string())).unwrap().source
    }

    #[test]
    fn telemetry_names_a_vcs_source_by_its_configuration_and_others_by_their_artifact() {
        let vcs = source(&[
            ("CLEF_AGENT_VCS_PROVIDER", "github"),
            ("CLEF_AGENT_VCS_REPO", "acme/secrets"),
            ("CLEF_AGENT_VCS_TOKEN", "t"),
            ("CLEF_AGENT_VCS_IDENTITY", "payments"),
            ("CLEF_AGENT_VCS_ENVIRONMENT", "production"),
            ("CLEF_AGENT_AGE_KEY_FILE", "/k"),
        ]);
        let mut resource = telemetry_resource(&vcs, "id-1".into());
        resource.artifact_loaded("api", "staging");
        assert_eq!(
            (resource.source_type, resource.identity.as_deref(), resource.environment.as_deref()),
            ("vcs", Some("payments"), Some("production"))
        );
        let file = source(&[("CLEF_AGENT_SOURCE", "/a.json"), ("CLEF_AGENT_AGE_KEY_FILE", "/k")]);
        let mut resource = telemetry_resource(&file, "id-1".into());
        assert_eq!((resource.identity.as_deref(), resource.environment.as_deref()), (None, None));
        resource.artifact_loaded("api", "staging");
        assert_eq!(
            (resource.source_type, resource.identity.as_deref(), resource.environment.as_deref()),
            ("file", Some("api"), Some("staging"))
        );
    }

    #[test]
    fn uuids_are_version_4() {
        let id = uuid_v4().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(id, uuid_v4().unwrap());
    }
}
