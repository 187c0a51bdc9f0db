//! The refresh of SPEC §2 and §4, the only writer of the served state: the poll thread,
//! SIGHUP and requests that find the cache expired all go through [`Refresher`], one at a time.
//!
//! - `error.rs`: [`RefreshError`], why a refresh loaded nothing, and its hint for the user.
//! - `pipeline.rs`: the pure steps [`validate`] and [`open`] of SPEC §2, and the [`Pipeline`]
//!   that fetches, falls back to the disk cache and remembers the artifact it accepted.
//! - `state.rs`: the pure transition [`state::step`] from a refresh's outcome to its effects
//!   (serve, keep, wipe, purge, telemetry).
//! - `schedule.rs`: when to poll, the TTL's expiry timer and the [`Poller`] thread.
//! - here: the [`Refresher`], which runs the pipeline, calls `step` and performs the effects,
//!   and lets requests share one refresh at a time.

mod error;
mod pipeline;
mod schedule;
mod state;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use self::pipeline::Outcome;
use self::state::{demand_step, request_step, DemandStep, Effect, Landed, RequestStep, Serving, State};
use crate::config::Mode;
use crate::disk_cache::DiskCache;
use crate::log;
use crate::retry::FailureLog;
use crate::snapshot::{LiveSnapshot, Refusal, Served};
use crate::telemetry::{Event, Telemetry};

pub use self::error::{OpenError, RefreshError};
pub use self::pipeline::{open, open_for_request, validate, validate_and_open_once, Pipeline, Policy, Validated};
pub use self::schedule::{poll_interval_for, spawn_expiry_timer, Poller, POLL_FLOOR, REFRESH_OVERDUE_FLOOR};
pub use self::state::{DEMAND_MIN_INTERVAL, DEMAND_WAIT, REQUEST_WAIT};

/// What a successful refresh did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Loaded { revision: String, key_count: usize },
}

struct PipelineState {
    pipeline: Pipeline,
    failure_log: FailureLog,
}

/// A failed refresh as requests get it until they may try again (`retry.rs`).
#[derive(Clone)]
struct Failure {
    at_ms: u64,
    /// The 503 answer, rendered once for every request that shares this failure.
    refusal: Refusal,
}

/// The refresh in flight and the result of the last one: what requests wait on.
struct Flight {
    /// When the refresh running now began (or a request asked for one), if any.
    begun: Option<Instant>,
    /// Refreshes completed so far: a change tells a waiting request that a refresh landed.
    completed: u64,
    /// When the last completed refresh began (`POST /v1/refresh`'s rate limit).
    last_began: Option<Instant>,
    last_result: Result<Change, Failure>,
}

/// Serialises refreshes and applies their outcome to the [`LiveSnapshot`].
pub struct Refresher {
    pub cell: Arc<LiveSnapshot>,
    telemetry: Telemetry,
    state: Mutex<PipelineState>,
    flight: Mutex<Flight>,
    /// Signalled whenever a refresh completes.
    landed: Condvar,
    /// The pipeline's disk cache, for the TTL wipe: it must not wait for a fetch to end.
    disk_cache: Option<DiskCache>,
    /// The TTL wiped the secrets while a fetch may have run: the pipeline forgets the artifact
    /// it accepted before its next fetch, so that fetch loads the artifact again in full.
    forget_asked: AtomicBool,
    source: String,
    /// The answer of a request whose refresh outlasted [`REQUEST_WAIT`], rendered once.
    still_running: Refusal,
    /// Told what is served after each refresh and TTL wipe (the delivery modes beyond HTTP).
    observer: OnceLock<Box<Observer>>,
}

/// Sees what is served now; runs on the refreshing thread, so it must return fast.
pub type Observer = dyn Fn(&Served) + Send + Sync;

impl Refresher {
    pub fn new(cell: Arc<LiveSnapshot>, pipeline: Pipeline, telemetry: Telemetry) -> Refresher {
        let still_running = Refusal::new(
            "Refresh failed",
            &format!(
                "no successful refresh within CLEF_AGENT_CACHE_TTL, and the refresh running has not finished \
                 within {} s; it goes on in the background",
                REQUEST_WAIT.as_secs()
            ),
        );
        Refresher {
            cell,
            telemetry,
            disk_cache: pipeline.disk_cache(),
            source: pipeline.describe_source(),
            state: Mutex::new(PipelineState { pipeline, failure_log: FailureLog::default() }),
            flight: Mutex::new(Flight {
                begun: None,
                completed: 0,
                last_began: None,
                last_result: Ok(Change::Unchanged),
            }),
            landed: Condvar::new(),
            forget_asked: AtomicBool::new(false),
            still_running,
            observer: OnceLock::new(),
        }
    }

    /// Installs the one observer of what is served (set before the first load; a second call
    /// is refused and returns `false`).
    pub fn observe_with(&self, observer: Box<Observer>) -> bool {
        self.observer.set(observer).is_ok()
    }

    fn tell_observer(&self) {
        if let Some(observer) = self.observer.get() {
            observer(&self.cell.current());
        }
    }

    fn lock(&self) -> MutexGuard<'_, PipelineState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_flight(&self) -> MutexGuard<'_, Flight> {
        self.flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn describe_source(&self) -> String {
        self.source.clone()
    }

    /// How long the refresh in flight has been running, if one is (the watchdog's check).
    pub fn refresh_running_for(&self) -> Option<Duration> {
        self.lock_flight().begun.map(|begun| begun.elapsed())
    }

    /// One refresh: fetch, validate, swap or wipe.
    pub fn refresh(&self, now_ms: u64) -> Result<Change, RefreshError> {
        let mut state = self.lock();
        self.refresh_locked(&mut state, now_ms)
    }

    /// A refresh on behalf of a request that found the cache expired. It runs on its own
    /// thread, one at a time: requests that arrive while one is running wait for it and share
    /// its result, but only until [`REQUEST_WAIT`] after it began; then they get a 503 saying
    /// so. For [`crate::retry::RETRY_AFTER_FAILURE`] after a failure they get that failure
    /// instead of fetching again. The answer to give on failure is rendered already.
    pub fn refresh_for_request(self: &Arc<Self>, now_ms: u64) -> Result<Change, Refusal> {
        self.wipe_if_expired(now_ms);
        let mut flight = self.lock_flight();
        let seen = flight.completed;
        let last_failure_at_ms = flight.last_result.as_ref().err().map(|failure| failure.at_ms);
        let wait = match request_step(flight.begun.map(|begun| begun.elapsed()), last_failure_at_ms, now_ms) {
            RequestStep::Answer => return flight.last_result.clone().map_err(|failure| failure.refusal),
            RequestStep::Wait(wait) => wait,
            RequestStep::Start => {
                let refresher = Arc::clone(self);
                let spawned = std::thread::Builder::new()
                    .name("request-refresh".into())
                    .spawn(move || refresher.refresh_unless_done_since(seen, now_ms));
                if let Err(error) = spawned {
                    let detail = format!("cannot start a refresh thread: {error}");
                    return Err(Refusal::new("Refresh failed", &detail));
                }
                flight.begun = Some(Instant::now());
                REQUEST_WAIT
            }
        };
        let (flight, _) = self
            .landed
            .wait_timeout_while(flight, wait, |flight| flight.completed == seen)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if flight.completed == seen {
            return Err(self.still_running.clone());
        }
        flight.last_result.clone().map_err(|failure| failure.refusal)
    }

    /// `POST /v1/refresh`: a refresh now, shared — a call while one runs waits for that one,
    /// a call within [`DEMAND_MIN_INTERVAL`] of the last one's start gets its result, so many
    /// callers cost at most one fetch a second. Waits [`DEMAND_WAIT`] at most, then answers
    /// that the refresh goes on in the background.
    pub fn refresh_on_demand(self: &Arc<Self>, now_ms: u64) -> Result<Change, Refusal> {
        let mut flight = self.lock_flight();
        let seen = flight.completed;
        let since_last_began = flight.last_began.map(|began| began.elapsed());
        let last_failure_at_ms = flight.last_result.as_ref().err().map(|failure| failure.at_ms);
        match demand_step(flight.begun.is_some(), since_last_began, last_failure_at_ms, now_ms) {
            DemandStep::Share => return flight.last_result.clone().map_err(|failure| failure.refusal),
            DemandStep::Wait => {}
            DemandStep::Start => {
                let refresher = Arc::clone(self);
                let spawned = std::thread::Builder::new()
                    .name("api-refresh".into())
                    .spawn(move || refresher.refresh_unless_done_since(seen, now_ms));
                if let Err(error) = spawned {
                    let detail = format!("cannot start a refresh thread: {error}");
                    return Err(Refusal::new("Refresh failed", &detail));
                }
                flight.begun = Some(Instant::now());
            }
        }
        let (flight, _) = self
            .landed
            .wait_timeout_while(flight, DEMAND_WAIT, |flight| flight.completed == seen)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if flight.completed == seen {
            let detail = format!(
                "the refresh has not finished within {} s; it goes on in the background",
                DEMAND_WAIT.as_secs()
            );
            return Err(Refusal::new("Refresh failed", &detail));
        }
        flight.last_result.clone().map_err(|failure| failure.refusal)
    }

    /// A request's refresh, skipped when another one landed since the request looked.
    fn refresh_unless_done_since(&self, seen: u64, now_ms: u64) {
        let mut state = self.lock();
        if self.lock_flight().completed != seen {
            return;
        }
        let result = self.refresh_locked(&mut state, now_ms);
        self.log_result(&mut state, &result, now_ms, false);
    }

    fn refresh_locked(&self, state: &mut PipelineState, now_ms: u64) -> Result<Change, RefreshError> {
        let began = *self.lock_flight().begun.get_or_insert_with(Instant::now);
        let mut result = self.run_and_apply(state, now_ms);
        if result.is_none() {
            // The TTL wiped the artifact this fetch found unchanged: fetch it in full.
            result = self.run_and_apply(state, now_ms);
        }
        let result = result.unwrap_or(Ok(Change::Unchanged));
        // Rendered files and the change hook learn of a new revision or of a wipe by
        // revocation or expiry (the observer turns only changes into events).
        self.tell_observer();
        let mut flight = self.lock_flight();
        flight.last_result = result
            .clone()
            .map_err(|error| Failure { at_ms: now_ms, refusal: Refusal::new("Refresh failed", &error.to_string()) });
        flight.begun = None;
        flight.last_began = Some(began);
        flight.completed += 1;
        self.landed.notify_all();
        result
    }

    /// One run of the pipeline and its effect on the cell; `None` when the source gave the
    /// artifact accepted before but the TTL wiped it meanwhile (it is forgotten now).
    fn run_and_apply(&self, state: &mut PipelineState, now_ms: u64) -> Option<Result<Change, RefreshError>> {
        if self.forget_asked.swap(false, Ordering::SeqCst) {
            state.pipeline.forget_accepted();
        }
        let (mut served, mut telemetry_headers) = (None, Vec::new());
        let landed = match state.pipeline.run(self.cell.mode, now_ms) {
            Ok(Outcome::Unchanged) => Landed::Unchanged,
            Ok(Outcome::Accepted { served: accepted, loaded, telemetry_headers: headers, age_ms, fell_back }) => {
                (served, telemetry_headers) = (Some(accepted), headers);
                Landed::Loaded { loaded, age_ms, fell_back }
            }
            Err(error) => Landed::Failed { error, disk_cache_available: state.pipeline.disk_cache_available() },
        };
        let prior = State { mode: self.cell.mode, serving: Serving::of(&self.cell.current()) };
        let (_, effects) = state::step(prior, &landed, now_ms);
        for effect in effects {
            match effect {
                Effect::MarkFresh => {
                    if !self.cell.mark_fresh_unless_aged_out(now_ms) {
                        state.pipeline.forget_accepted();
                        return None;
                    }
                }
                Effect::Serve { age_ms } => {
                    if let Some(served) = served.take() {
                        self.cell.load(served, now_ms, age_ms);
                    }
                    self.forget_asked.store(false, Ordering::SeqCst);
                }
                Effect::AnnounceArtifact { identity, environment } => {
                    self.telemetry.artifact_loaded(&identity, &environment, std::mem::take(&mut telemetry_headers));
                }
                Effect::Telemetry(event) => self.telemetry.emit(event),
                Effect::PurgeAndForget => state.pipeline.forget(),
                Effect::Wipe(wipe) => {
                    self.cell.swap(Served::Wiped(wipe));
                    self.telemetry.secrets_wiped();
                }
                Effect::WipeIfTtlPassed => self.wipe_if_expired(now_ms),
            }
        }
        Some(match landed {
            Landed::Unchanged => Ok(Change::Unchanged),
            Landed::Loaded { loaded, .. } => {
                Ok(Change::Loaded { revision: loaded.revision, key_count: loaded.key_count })
            }
            Landed::Failed { error, .. } => Err(error),
        })
    }

    /// Cached mode: wipes the secrets once the TTL has passed since the last successful
    /// refresh — the disk cache first — without waiting for the pipeline, so a fetch that
    /// hangs cannot keep them (see [`spawn_expiry_timer`]).
    pub fn wipe_if_expired(&self, now_ms: u64) {
        self.wipe_if_artifact_expired(now_ms);
        let wiped = self.cell.wipe_if_expired(now_ms, || {
            if let Some(cache) = &self.disk_cache {
                cache.purge();
            }
            self.forget_asked.store(true, Ordering::SeqCst);
        });
        if wiped {
            // The TTL wipe removes rendered files and runs the change hook too.
            self.tell_observer();
            log::error("cache expired: no successful refresh within CLEF_AGENT_CACHE_TTL; secrets wiped");
            if let Mode::Cached { ttl } = self.cell.mode {
                self.telemetry.emit(Event::CacheExpired { cache_ttl_seconds: ttl.as_secs(), disk_cache_purged: false });
            }
            self.telemetry.secrets_wiped();
        }
    }

    /// Wipes an artifact whose `expiresAt` has passed, as a failed refresh would (disk cache
    /// purged first, then the wipe, telemetry and the observer), without waiting for a refresh:
    /// requests refuse it on their own, but rendered files and the change hook must not wait for
    /// a fetch that hangs (see [`spawn_expiry_timer`]).
    fn wipe_if_artifact_expired(&self, now_ms: u64) {
        // The accepted artifact is not forgotten: a poll that finds the same (expired) artifact
        // again is "unchanged" and leaves the wipe in place, with no second event.
        let wiped = self.cell.wipe_if_artifact_expired(now_ms, || {
            if let Some(cache) = &self.disk_cache {
                cache.purge();
            }
        });
        if let Some(expiry) = wiped {
            self.tell_observer();
            log::error(&format!("artifact expired at {}; secrets wiped", expiry.text));
            self.telemetry.emit(Event::ArtifactExpired { expires_at: expiry.text });
            self.telemetry.secrets_wiped();
        }
    }

    /// Refresh and log the result: the poll thread's way in.
    pub fn refresh_and_log(&self, now_ms: u64) {
        let mut state = self.lock();
        let result = self.refresh_locked(&mut state, now_ms);
        self.log_result(&mut state, &result, now_ms, false);
    }

    /// SIGHUP's way in: like [`Refresher::refresh_and_log`], but whoever sent the signal reads
    /// the result, so a failure is logged even when it repeats the last one.
    pub fn refresh_on_signal(&self, now_ms: u64) {
        let mut state = self.lock();
        let result = self.refresh_locked(&mut state, now_ms);
        self.log_result(&mut state, &result, now_ms, true);
    }

    /// A failure is logged at once, then once per [`crate::retry::REPEAT_LOG_WINDOW`] while it
    /// repeats (`asked`: always, see [`FailureLog::failed`]).
    fn log_result(&self, state: &mut PipelineState, result: &Result<Change, RefreshError>, now_ms: u64, asked: bool) {
        let owed = match result {
            Ok(_) => state.failure_log.succeeded().into_iter().collect(),
            Err(error) => state.failure_log.failed(&error.to_string(), now_ms, asked),
        };
        for line in owed {
            log::error(&format!("poll error: {line}"));
        }
        if let Ok(Change::Loaded { revision, key_count }) = result {
            log::info(&format!("refreshed: revision {revision} ({key_count} keys)"));
        }
    }
}

#[cfg(test)]
mod tests {
    /// A fetch that hangs, through the real refresher and cell.
    mod hanging {
        use std::sync::Arc;
        use std::time::{Duration, Instant};

        use crate::config::Mode;
        use crate::refresh::pipeline::tests::rollback::{Fixture, OLDER};
        use crate::refresh::{Refresher, REQUEST_WAIT};
        use crate::snapshot::{LiveSnapshot, Served, Wipe};

        const NOW: u64 = 1_800_000_000_000;
        const TTL: Duration = Duration::from_secs(60);

        fn body(refusal: &crate::snapshot::Refusal) -> String {
            refusal.body().to_string()
        }

        #[test]
        fn a_request_gives_up_on_a_hung_refresh_after_five_seconds_and_the_ttl_wipes_without_it() {
            let fixture = Fixture::new();
            fixture.publish(&fixture.artifact("r1", OLDER));
            let Fixture { pipeline, source, .. } = fixture;
            let cell = Arc::new(LiveSnapshot::new(Mode::Cached { ttl: TTL }));
            let refresher = Arc::new(Refresher::new(Arc::clone(&cell), pipeline, Default::default()));
            refresher.refresh(NOW).unwrap();
            source.hold(true);
            let after_ttl = NOW + TTL.as_millis() as u64 + 1;

            let asked = Instant::now();
            let refusal = refresher.refresh_for_request(after_ttl).unwrap_err();
            let waited = asked.elapsed();
            assert!(waited >= REQUEST_WAIT && waited < REQUEST_WAIT + Duration::from_secs(2), "waited {waited:?}");
            assert!(body(&refusal).contains("has not finished within 5 s"), "{}", body(&refusal));
            assert!(matches!(*cell.current(), Served::Wiped(Wipe::CacheExpired)), "not wiped at the TTL");
            assert!(refresher.refresh_running_for().is_some_and(|ran| ran >= REQUEST_WAIT));

            let asked = Instant::now();
            assert_eq!(refresher.refresh_for_request(after_ttl).map_err(|refusal| body(&refusal)), Err(body(&refusal)));
            assert!(asked.elapsed() < Duration::from_secs(1), "a later request waited {:?}", asked.elapsed());

            // The fetch ends with the artifact it had: wiped meanwhile, it is loaded in full again.
            source.hold(false);
            let deadline = Instant::now() + Duration::from_secs(10);
            while refresher.refresh_running_for().is_some() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(matches!(*cell.current(), Served::Cached(_)), "the refresh that hung did not serve again");
            assert!(!cell.is_expired(after_ttl));
        }

        #[test]
        fn the_ttl_wipes_on_its_own_timer_while_a_refresh_hangs() {
            let fixture = Fixture::new();
            fixture.publish(&fixture.artifact("r1", OLDER));
            let Fixture { pipeline, source, .. } = fixture;
            let cell = Arc::new(LiveSnapshot::new(Mode::Cached { ttl: TTL }));
            let refresher = Arc::new(Refresher::new(Arc::clone(&cell), pipeline, Default::default()));
            // Fresh as of a minute and a half ago: the timer's first look wipes.
            refresher.refresh(crate::time::now_ms() - 90_000).unwrap();
            source.hold(true);
            let hung = Arc::clone(&refresher);
            let polling = std::thread::spawn(move || hung.refresh(crate::time::now_ms()));
            let deadline = Instant::now() + Duration::from_secs(5);
            while refresher.refresh_running_for().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            crate::refresh::spawn_expiry_timer(Arc::clone(&refresher)).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while !matches!(*cell.current(), Served::Wiped(_)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(matches!(*cell.current(), Served::Wiped(Wipe::CacheExpired)), "not wiped while the fetch hangs");
            assert!(refresher.refresh_running_for().is_some(), "the fetch ended first: this proves nothing");
            source.hold(false);
            assert!(polling.join().unwrap().is_ok());
        }

        #[test]
        fn the_timer_wipes_at_expires_at_while_a_refresh_hangs_and_tells_the_observer_once() {
            // `expiresAt` two seconds from now, as clef writes it (found by a review: only a
            // refresh's outcome wiped at expiry, so rendered files outlived a fetch that hung).
            let expires_ms = crate::time::now_ms() + 2_000;
            let output = std::process::Command::new("date")
                .args(["-u", "-d", &format!("@{}", expires_ms / 1000), "+%Y-%m-%dT%H:%M:%S"])
                .output()
                .unwrap();
            let expires_at = format!("{}.{:03}Z", String::from_utf8(output.stdout).unwrap().trim(), expires_ms % 1000);
            let fixture = Fixture::new();
            fixture.publish(&fixture.artifact_expiring("r1", OLDER, Some(&expires_at)));
            let Fixture { pipeline, source, .. } = fixture;
            let cell = Arc::new(LiveSnapshot::new(Mode::Cached { ttl: Duration::from_secs(3600) }));
            let refresher = Arc::new(Refresher::new(Arc::clone(&cell), pipeline, Default::default()));
            let told = Arc::new(std::sync::Mutex::new(Vec::new()));
            let seen = Arc::clone(&told);
            refresher.observe_with(Box::new(move |served: &Served| {
                seen.lock().unwrap().push(matches!(served, Served::Wiped(Wipe::ArtifactExpired(_))));
            }));
            refresher.refresh(crate::time::now_ms()).unwrap();
            assert!(matches!(*cell.current(), Served::Cached(_)));
            source.hold(true);
            let hung = Arc::clone(&refresher);
            let polling = std::thread::spawn(move || hung.refresh(crate::time::now_ms()));
            crate::refresh::spawn_expiry_timer(Arc::clone(&refresher)).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !matches!(*cell.current(), Served::Wiped(_)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(matches!(*cell.current(), Served::Wiped(Wipe::ArtifactExpired(_))), "not wiped at expiresAt");
            assert!(crate::time::now_ms() >= expires_ms, "wiped before expiresAt");
            assert!(refresher.refresh_running_for().is_some(), "the fetch ended first: this proves nothing");
            assert_eq!(*told.lock().unwrap(), [false, true], "the observer saw the load, then the wipe");
            source.hold(false);
            let _ = polling.join().unwrap();
            // The same artifact again is "unchanged": the wipe stays, nobody is told twice.
            let _ = refresher.refresh(crate::time::now_ms());
            assert!(matches!(*cell.current(), Served::Wiped(Wipe::ArtifactExpired(_))));
            assert!(!told.lock().unwrap()[2..].contains(&false), "served again after the wipe");
        }
    }

    /// Moved from `server/routes/tests.rs`: what the refresher itself decides, without HTTP.
    mod moved_from_routes {
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        use crate::config::Mode;
        use crate::decrypt::DecryptionKeys;
        use crate::refresh::pipeline::tests::rollback::{Fixture, OLDER};
        use crate::refresh::{Pipeline, Refresher};
        use crate::snapshot::{LiveSnapshot, Part, Served};
        use crate::source::{FetchError, Fetched, Source};

        const NOW: u64 = 1_800_000_000_000;
        const TTL: Duration = Duration::from_secs(60);
        /// The plaintext `Fixture::artifact` seals.
        const PLAINTEXT: &str = r#"{"app":{"KEY":"value"}}"#;

        /// A cell serving revision r1 of the fixture, loaded at `NOW` by its own refresher.
        fn cached() -> (Fixture, Arc<LiveSnapshot>, Arc<Refresher>) {
            let mut fixture = Fixture::new();
            fixture.publish(&fixture.artifact("r1", OLDER));
            let pipeline = std::mem::replace(
                &mut fixture.pipeline,
                Pipeline::new(Box::new(fixture.source.clone()), Arc::default(), None, None),
            );
            let cell = Arc::new(LiveSnapshot::new(Mode::Cached { ttl: TTL }));
            let refresher = Arc::new(Refresher::new(Arc::clone(&cell), pipeline, Default::default()));
            refresher.refresh(NOW).unwrap();
            (fixture, cell, refresher)
        }

        fn served_secrets(cell: &LiveSnapshot) -> String {
            match &*cell.current() {
                Served::Cached(snapshot) => String::from_utf8_lossy(snapshot.body(Part::Secrets)).into_owned(),
                _ => "not serving a snapshot".into(),
            }
        }

        #[test]
        fn requests_after_a_failure_share_it_for_five_seconds_instead_of_fetching() {
            let (_fixture, cell, _) = cached();
            let fetches = Arc::new(Mutex::new(0));
            let failing = CountingSource(Arc::clone(&fetches));
            let refresher = Arc::new(Refresher::new(
                Arc::clone(&cell),
                Pipeline::new(Box::new(failing), Arc::new(DecryptionKeys::default()), None, None),
                Default::default(),
            ));
            let body =
                |answer: Result<_, crate::snapshot::Refusal>| answer.map_err(|refusal| refusal.body().to_string());
            let first = body(refresher.refresh_for_request(NOW + 61_000));
            assert!(first.is_err(), "a 503");
            for offset in (0..5_000).step_by(25) {
                assert_eq!(body(refresher.refresh_for_request(NOW + 61_000 + offset)), first);
            }
            assert_eq!(*fetches.lock().unwrap(), 1, "200 requests in 5 s, one fetch");
            assert!(refresher.refresh_for_request(NOW + 66_000).is_err(), "a 503");
            assert_eq!(*fetches.lock().unwrap(), 2);
        }

        /// A source that is down, counting how often it is asked.
        struct CountingSource(Arc<Mutex<u32>>);

        impl Source for CountingSource {
            fn describe(&self) -> String {
                "memory".into()
            }

            fn fetch(&mut self, _: Option<&str>) -> Result<Fetched, FetchError> {
                *self.0.lock().unwrap() += 1;
                Err(FetchError::Network { source: "memory".into(), detail: "down".into() })
            }
        }

        #[test]
        fn a_rejected_artifact_keeps_the_last_good_one() {
            let (fixture, cell, refresher) = cached();
            fixture.publish_bytes(b"{not json");
            let error = refresher.refresh(NOW + 1).unwrap_err();
            assert_eq!(
                error.to_string(),
                "artifact rejected (json_parse): artifact is not a JSON object: invalid JSON at line 1 column 2"
            );
            assert_eq!(served_secrets(&cell), PLAINTEXT);
        }
    }
}
