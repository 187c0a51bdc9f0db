//! What a refresh's outcome does to the served state, as a pure transition:
//! `step(state, outcome, now) -> (state, effects)`. The refresher runs the pipeline, calls
//! [`step`] and performs the effects in order; every decision — serve the new revision, keep
//! the last good one on a rejection, wipe on a revocation or an expiry, which telemetry to
//! send — is made here, over plain data, and tested as a table with a fake clock.

use std::time::Duration;

use super::error::RefreshError;
use super::pipeline::Loaded;
use crate::artifact::Expiry;
use crate::config::Mode;
use crate::retry;
use crate::snapshot::{Refusal, Served, Wipe};
use crate::source::FetchError;
use crate::telemetry::Event;

/// What is served, as far as the refresh decisions go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serving {
    NotLoaded,
    Artifact { revision: String, expires_at: Option<Expiry> },
    Wiped(Wipe),
}

impl Serving {
    pub fn of(served: &Served) -> Serving {
        match served {
            Served::NotLoaded => Serving::NotLoaded,
            Served::Cached(_) | Served::Jit(_) => Serving::Artifact {
                revision: served.revision().unwrap_or_default().to_string(),
                expires_at: served.expires_at().cloned(),
            },
            Served::Wiped(wipe) => Serving::Wiped(wipe.clone()),
        }
    }
}

/// The state a refresh lands on: the mode and what the cell serves. The cell is where it is
/// kept (requests read it without a lock); this is its summary for [`step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub mode: Mode,
    pub serving: Serving,
}

/// How one run of the pipeline ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Landed {
    /// The source gave the artifact accepted last (SPEC §2 steps 2 and 6).
    Unchanged,
    /// A new artifact passed, given `age_ms` ago (0, or the disk cache entry's age);
    /// `fell_back`: the fetch error that sent the pipeline to the disk cache for it.
    Loaded { loaded: Loaded, age_ms: u64, fell_back: Option<FetchError> },
    /// `disk_cache_available`: the disk cache holds an entry to fall back on.
    Failed { error: RefreshError, disk_cache_available: bool },
}

/// What the refresher does, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Mark the artifact served fresh as of now. When the TTL wiped it meanwhile (the cell
    /// knows, on its own clocks), forget it and run the pipeline again to load it in full.
    MarkFresh,
    /// Swap in the artifact just accepted, fetched `age_ms` ago; a TTL wipe asked for during
    /// the fetch concerned the artifact it replaces.
    Serve {
        age_ms: u64,
    },
    /// Tell telemetry whose secrets are served now (with the plaintext's telemetry headers).
    AnnounceArtifact {
        identity: String,
        environment: String,
    },
    Telemetry(Event),
    /// Purge the disk cache and forget the artifact accepted last, so that a wiped artifact
    /// comes back from neither. Comes before the wipe: once a request sees the wipe, the disk
    /// cache is already empty.
    PurgeAndForget,
    /// Serve the wipe instead of the secrets (and count it in telemetry).
    Wipe(Wipe),
    /// Keep serving what is served; wipe it only if the TTL has passed (the cell's clocks
    /// decide, as they do for the expiry timer).
    WipeIfTtlPassed,
}

/// One refresh's outcome applied to `state` at `now_ms`: the state after it and the effects
/// that get there. A rejected artifact never replaces the last good one (SPEC §2); revocation
/// and expiry wipe at once; other failures keep serving until the TTL is up (SPEC §4).
pub fn step(state: State, landed: &Landed, now_ms: u64) -> (State, Vec<Effect>) {
    match landed {
        Landed::Unchanged => (state, vec![Effect::MarkFresh]),
        Landed::Loaded { loaded, age_ms, fell_back } => {
            let mut effects = Vec::new();
            if let Some(error) = fell_back {
                effects.push(Effect::Telemetry(Event::FetchFailed {
                    error: error.to_string(),
                    disk_cache_available: true,
                }));
            }
            effects.push(Effect::Serve { age_ms: *age_ms });
            effects.push(Effect::AnnounceArtifact {
                identity: loaded.identity.clone(),
                environment: loaded.environment.clone(),
            });
            effects.push(Effect::Telemetry(Event::ArtifactRefreshed {
                revision: loaded.revision.clone(),
                key_count: Some(loaded.key_count),
                kms_envelope: loaded.kms_envelope,
            }));
            let serving =
                Serving::Artifact { revision: loaded.revision.clone(), expires_at: loaded.expires_at.clone() };
            (State { serving, ..state }, effects)
        }
        Landed::Failed { error, disk_cache_available } => {
            let mut effects = Vec::new();
            if let (RefreshError::DiskCacheExpired(_), Mode::Cached { ttl }) = (error, state.mode) {
                effects.push(Effect::Telemetry(Event::CacheExpired {
                    cache_ttl_seconds: ttl.as_secs(),
                    disk_cache_purged: true,
                }));
            }
            effects.push(Effect::Telemetry(failure_event(error, *disk_cache_available)));
            let wipe = match error {
                RefreshError::Revoked(_) => Wipe::Revoked(Refusal::new("Artifact revoked", &error.to_string())),
                RefreshError::Expired { .. } => {
                    Wipe::ArtifactExpired(Refusal::new("Artifact expired", &error.to_string()))
                }
                _ => match served_expiry_passed(&state.serving, now_ms) {
                    Some(expiry) => {
                        effects.push(Effect::Telemetry(Event::ArtifactExpired { expires_at: expiry.text.clone() }));
                        let message = format!("Artifact expired at {}", expiry.text);
                        Wipe::ArtifactExpired(Refusal::new("Artifact expired", &message))
                    }
                    None => {
                        effects.push(Effect::WipeIfTtlPassed);
                        return (state, effects);
                    }
                },
            };
            effects.push(Effect::PurgeAndForget);
            effects.push(Effect::Wipe(wipe.clone()));
            (State { serving: Serving::Wiped(wipe), ..state }, effects)
        }
    }
}

/// The `expiresAt` of the artifact served, when it has passed by `now_ms`.
fn served_expiry_passed(serving: &Serving, now_ms: u64) -> Option<&Expiry> {
    match serving {
        Serving::Artifact { expires_at: Some(expiry), .. } if expiry.epoch_ms <= now_ms as i64 => Some(expiry),
        _ => None,
    }
}

/// The telemetry event of a failed refresh.
fn failure_event(error: &RefreshError, disk_cache_available: bool) -> Event {
    match error {
        RefreshError::Fetch(error) => Event::FetchFailed { error: error.to_string(), disk_cache_available },
        RefreshError::DiskCacheExpired(error) => {
            Event::FetchFailed { error: error.to_string(), disk_cache_available: false }
        }
        RefreshError::Rejected { rejection, .. } => {
            Event::ArtifactInvalid { reason: rejection.reason(), error: rejection.to_string() }
        }
        RefreshError::Revoked(revocation) => Event::ArtifactRevoked { revoked_at: revocation.revoked_at.clone() },
        RefreshError::Expired { expires_at } => Event::ArtifactExpired { expires_at: expires_at.clone() },
    }
}

/// A request that needs a refresh waits for it at most this long, counted from when the
/// refresh began; then it answers without it and the refresh goes on alone. Requests never
/// take the pipeline's lock, so a fetch that hangs holds no request's thread longer than this.
pub const REQUEST_WAIT: Duration = Duration::from_secs(5);

/// What a request that found the cache expired does.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RequestStep {
    /// A refresh is running: wait this long for it at most.
    Wait(Duration),
    /// Start one on its own thread, then wait [`REQUEST_WAIT`] for it.
    Start,
    /// Answer with the stored failure, too recent to fetch again for (`retry.rs`).
    Answer,
}

/// Pure: `running_for` is how long the refresh in flight has run, if one is.
pub(super) fn request_step(running_for: Option<Duration>, last_failure_at_ms: Option<u64>, now_ms: u64) -> RequestStep {
    match running_for {
        Some(running_for) => RequestStep::Wait(REQUEST_WAIT.saturating_sub(running_for)),
        None if retry::should_attempt(last_failure_at_ms, now_ms) => RequestStep::Start,
        None => RequestStep::Answer,
    }
}

/// `POST /v1/refresh` waits this long at most for the refresh it shares or starts.
pub const DEMAND_WAIT: Duration = Duration::from_secs(30);
/// `POST /v1/refresh` starts at most one fetch per this interval; calls within it share the
/// result of the refresh that began last.
pub const DEMAND_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// What a call of `POST /v1/refresh` does.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum DemandStep {
    /// A refresh is running: share it.
    Wait,
    /// Start one on its own thread and wait for it.
    Start,
    /// The last refresh began less than [`DEMAND_MIN_INTERVAL`] ago, or failed less than
    /// [`retry::RETRY_AFTER_FAILURE`] ago: answer with its result.
    Share,
}

/// Pure: `running` says a refresh is in flight; `since_last_began` is how long ago the last
/// completed refresh began, if one did; `last_failure_at_ms` when it failed. After a failure
/// the endpoint backs off like requests do, so a caller in a loop cannot make the agent hammer
/// its source (or its KMS, or a VCS API's rate limit).
pub(super) fn demand_step(
    running: bool,
    since_last_began: Option<Duration>,
    last_failure_at_ms: Option<u64>,
    now_ms: u64,
) -> DemandStep {
    match (running, since_last_began) {
        (true, _) => DemandStep::Wait,
        (false, Some(since)) if since < DEMAND_MIN_INTERVAL => DemandStep::Share,
        (false, _) if !retry::should_attempt(last_failure_at_ms, now_ms) => DemandStep::Share,
        (false, _) => DemandStep::Start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::{Rejection, Revocation};

    const NOW: u64 = 1_800_000_000_000;
    const CACHED: Mode = Mode::Cached { ttl: Duration::from_secs(60) };
    const EXPIRES: &str = "2027-01-15T08:00:00.000Z";

    fn expiry(epoch_ms: u64) -> Option<Expiry> {
        Some(Expiry { text: EXPIRES.into(), epoch_ms: epoch_ms as i64 })
    }

    fn serving(revision: &str, expires_at: Option<Expiry>) -> Serving {
        Serving::Artifact { revision: revision.into(), expires_at }
    }

    fn loaded(revision: &str, age_ms: u64, fell_back: Option<FetchError>) -> Landed {
        let loaded = Loaded {
            revision: revision.into(),
            identity: "api".into(),
            environment: "prod".into(),
            key_count: 3,
            kms_envelope: false,
            expires_at: None,
        };
        Landed::Loaded { loaded, age_ms, fell_back }
    }

    fn failed(error: RefreshError, disk_cache_available: bool) -> Landed {
        Landed::Failed { error, disk_cache_available }
    }

    fn down() -> FetchError {
        FetchError::Network { source: "memory".into(), detail: "down".into() }
    }

    fn revoked() -> RefreshError {
        RefreshError::Revoked(Revocation {
            identity: "api".into(),
            environment: "prod".into(),
            revoked_at: "2026-11-24T13:00:00Z".into(),
        })
    }

    fn refreshed(revision: &str) -> Vec<Effect> {
        vec![
            Effect::AnnounceArtifact { identity: "api".into(), environment: "prod".into() },
            Effect::Telemetry(Event::ArtifactRefreshed {
                revision: revision.into(),
                key_count: Some(3),
                kms_envelope: false,
            }),
        ]
    }

    fn fetch_failed(disk_cache_available: bool) -> Effect {
        Effect::Telemetry(Event::FetchFailed { error: "cannot reach memory: down".into(), disk_cache_available })
    }

    fn revoked_wipe() -> Wipe {
        Wipe::Revoked(Refusal::new("Artifact revoked", "Artifact revoked: api/prod at 2026-11-24T13:00:00Z"))
    }

    fn expired_wipe() -> Wipe {
        Wipe::ArtifactExpired(Refusal::new("Artifact expired", &format!("Artifact expired at {EXPIRES}")))
    }

    /// name, mode, served before, outcome, now, served after, effects.
    type Row = (&'static str, Mode, Serving, Landed, u64, Serving, Vec<Effect>);

    #[test]
    fn each_outcome_serves_keeps_or_wipes_as_the_spec_says() {
        let rejected = RefreshError::from(Rejection::JsonParse("invalid JSON at line 1 column 2".into()));
        let invalid = Effect::Telemetry(Event::ArtifactInvalid {
            reason: "json_parse",
            error: "artifact is not a JSON object: invalid JSON at line 1 column 2".into(),
        });
        let cache_expired = Effect::Telemetry(Event::CacheExpired { cache_ttl_seconds: 60, disk_cache_purged: true });
        let artifact_expired = Effect::Telemetry(Event::ArtifactExpired { expires_at: EXPIRES.into() });
        let revoked_event = Effect::Telemetry(Event::ArtifactRevoked { revoked_at: "2026-11-24T13:00:00Z".into() });
        let r1 = || serving("r1", None);
        // (name, mode, served before, outcome, now, served after, effects)
        let rows: Vec<Row> = vec![
            (
                "the same artifact marks the one served fresh",
                CACHED,
                r1(),
                Landed::Unchanged,
                NOW,
                r1(),
                vec![Effect::MarkFresh],
            ),
            (
                "a new revision is served and announced",
                CACHED,
                r1(),
                loaded("r2", 0, None),
                NOW,
                serving("r2", None),
                {
                    let mut effects = vec![Effect::Serve { age_ms: 0 }];
                    effects.extend(refreshed("r2"));
                    effects
                },
            ),
            (
                "the disk cache's artifact is served at its age, and the fetch failure reported",
                CACHED,
                Serving::NotLoaded,
                loaded("r1", 30_000, Some(down())),
                NOW,
                r1(),
                {
                    let mut effects = vec![fetch_failed(true), Effect::Serve { age_ms: 30_000 }];
                    effects.extend(refreshed("r1"));
                    effects
                },
            ),
            (
                "a rejected artifact keeps the last good one until the TTL",
                CACHED,
                r1(),
                failed(rejected.clone(), false),
                NOW,
                r1(),
                vec![invalid.clone(), Effect::WipeIfTtlPassed],
            ),
            (
                "a failed fetch keeps serving and says whether the disk cache could stand in",
                CACHED,
                r1(),
                failed(RefreshError::Fetch(down()), true),
                NOW,
                r1(),
                vec![fetch_failed(true), Effect::WipeIfTtlPassed],
            ),
            (
                "a revocation purges the disk cache and wipes at once",
                CACHED,
                r1(),
                failed(revoked(), true),
                NOW,
                Serving::Wiped(revoked_wipe()),
                vec![revoked_event.clone(), Effect::PurgeAndForget, Effect::Wipe(revoked_wipe())],
            ),
            (
                "a revocation wipes in JIT mode and before anything was served too",
                Mode::Jit,
                Serving::NotLoaded,
                failed(revoked(), false),
                NOW,
                Serving::Wiped(revoked_wipe()),
                vec![revoked_event, Effect::PurgeAndForget, Effect::Wipe(revoked_wipe())],
            ),
            (
                "an expired artifact published wipes at once",
                CACHED,
                r1(),
                failed(RefreshError::Expired { expires_at: EXPIRES.into() }, false),
                NOW,
                Serving::Wiped(expired_wipe()),
                vec![artifact_expired.clone(), Effect::PurgeAndForget, Effect::Wipe(expired_wipe())],
            ),
            (
                "a failure after the served artifact's expiresAt wipes it as expired",
                CACHED,
                serving("r1", expiry(NOW - 1)),
                failed(RefreshError::Fetch(down()), false),
                NOW,
                Serving::Wiped(expired_wipe()),
                vec![
                    fetch_failed(false),
                    artifact_expired.clone(),
                    Effect::PurgeAndForget,
                    Effect::Wipe(expired_wipe()),
                ],
            ),
            (
                "an expiresAt of exactly now has passed",
                Mode::Jit,
                serving("r1", expiry(NOW)),
                failed(rejected.clone(), false),
                NOW,
                Serving::Wiped(expired_wipe()),
                vec![invalid.clone(), artifact_expired, Effect::PurgeAndForget, Effect::Wipe(expired_wipe())],
            ),
            (
                "a failure a millisecond before the served artifact's expiresAt keeps it",
                CACHED,
                serving("r1", expiry(NOW + 1)),
                failed(rejected, false),
                NOW,
                serving("r1", expiry(NOW + 1)),
                vec![invalid, Effect::WipeIfTtlPassed],
            ),
            (
                "a disk cache older than the TTL reports the cache expiry in cached mode",
                CACHED,
                Serving::NotLoaded,
                failed(RefreshError::DiskCacheExpired(down()), false),
                NOW,
                Serving::NotLoaded,
                vec![cache_expired, fetch_failed(false), Effect::WipeIfTtlPassed],
            ),
            (
                "a purged disk cache is no cache expiry in JIT mode, which has no TTL",
                Mode::Jit,
                Serving::NotLoaded,
                failed(RefreshError::DiskCacheExpired(down()), true),
                NOW,
                Serving::NotLoaded,
                vec![fetch_failed(false), Effect::WipeIfTtlPassed],
            ),
            (
                "a wiped state stays wiped when the next fetch fails",
                CACHED,
                Serving::Wiped(Wipe::CacheExpired),
                failed(RefreshError::Fetch(down()), false),
                NOW,
                Serving::Wiped(Wipe::CacheExpired),
                vec![fetch_failed(false), Effect::WipeIfTtlPassed],
            ),
            (
                "a new artifact after a revocation is served again",
                CACHED,
                Serving::Wiped(revoked_wipe()),
                loaded("r2", 0, None),
                NOW,
                serving("r2", None),
                {
                    let mut effects = vec![Effect::Serve { age_ms: 0 }];
                    effects.extend(refreshed("r2"));
                    effects
                },
            ),
        ];
        for (name, mode, before, landed, now, after, effects) in rows {
            let (state, done) = step(State { mode, serving: before }, &landed, now);
            assert_eq!(state, State { mode, serving: after }, "{name}: state");
            assert_eq!(done, effects, "{name}: effects");
        }
    }

    #[test]
    fn a_request_waits_for_the_refresh_in_flight_only_until_five_seconds_after_it_began() {
        const NOW: u64 = 1_800_000_000_000;
        let second = Duration::from_secs(1);
        // (refresh running for, last failure at, request step)
        let cases = [
            (None, None, RequestStep::Start),
            (Some(Duration::ZERO), None, RequestStep::Wait(REQUEST_WAIT)),
            (Some(2 * second), None, RequestStep::Wait(REQUEST_WAIT - 2 * second)),
            (Some(REQUEST_WAIT), None, RequestStep::Wait(Duration::ZERO)),
            (Some(60 * second), None, RequestStep::Wait(Duration::ZERO)),
            // a failure stored: shared until RETRY_AFTER_FAILURE, whatever is running
            (None, Some(NOW - 1_000), RequestStep::Answer),
            (None, Some(NOW - 5_000), RequestStep::Start),
            (Some(second), Some(NOW - 1_000), RequestStep::Wait(REQUEST_WAIT - second)),
        ];
        for (running_for, last_failure_at_ms, step) in cases {
            assert_eq!(
                request_step(running_for, last_failure_at_ms, NOW),
                step,
                "{running_for:?}, {last_failure_at_ms:?}"
            );
        }
    }

    #[test]
    fn a_refresh_on_demand_shares_the_running_one_and_starts_at_most_one_per_second() {
        let millis = Duration::from_millis;
        let failed_ago = |ago: u64| Some(NOW - ago);
        // (a refresh running, the last one began … ago, it failed at, step)
        let cases = [
            (false, None, None, DemandStep::Start),
            (true, None, None, DemandStep::Wait),
            (true, Some(millis(10)), failed_ago(10), DemandStep::Wait),
            (false, Some(Duration::ZERO), None, DemandStep::Share),
            (false, Some(millis(999)), None, DemandStep::Share),
            (false, Some(DEMAND_MIN_INTERVAL), None, DemandStep::Start),
            (false, Some(millis(60_000)), None, DemandStep::Start),
            // A failure backs the endpoint off for RETRY_AFTER_FAILURE, as it does requests.
            (false, Some(millis(2_000)), failed_ago(1_000), DemandStep::Share),
            (false, Some(millis(6_000)), failed_ago(4_999), DemandStep::Share),
            (false, Some(millis(6_000)), failed_ago(5_000), DemandStep::Start),
            // A clock stepped back past the failure does not stop refreshes.
            (false, Some(millis(6_000)), Some(NOW + 60_000), DemandStep::Start),
        ];
        for (running, since_last_began, failed_at, step) in cases {
            assert_eq!(
                demand_step(running, since_last_began, failed_at, NOW),
                step,
                "{running}, {since_last_began:?}, {failed_at:?}"
            );
        }
    }
}
