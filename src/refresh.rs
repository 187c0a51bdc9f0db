//! The validation pipeline of SPEC §2 and the refresh schedule of SPEC §4. This module is the
//! only writer of the served state: the poll thread, SIGHUP and requests that find the cache
//! expired all go through [`Refresher`], one at a time.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::artifact::rollback::{self, HighWaterMark, PackedAt};
use crate::artifact::signature::VerifyKey;
use crate::artifact::{self, Artifact, Parsed, Rejection, Revocation};
use crate::config::Mode;
use crate::decrypt::{decode_ciphertext, DecryptError, DecryptionKeys, Plaintext};
use crate::disk_cache::DiskCache;
use crate::log;
use crate::pending::Pending;
use crate::retry::{self, FailureLog};
use crate::snapshot::{LiveSnapshot, Refusal, SealedArtifact, Served, Snapshot, Wipe};
use crate::source::{FetchError, Fetched, Source};
use crate::telemetry::{self, Event, Telemetry};

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

/// Why a refresh did not load a new artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshError {
    Fetch(FetchError),
    /// The artifact was refused; `configuration` marks failures retrying cannot fix.
    Rejected {
        rejection: Rejection,
        configuration: bool,
    },
    /// A revocation was published; the secrets were wiped.
    Revoked(Revocation),
    /// The artifact's `expiresAt` (as written) passed; the secrets were wiped.
    Expired {
        expires_at: String,
    },
    /// The source failed and the disk cache's entry was older than the TTL, so it was purged.
    DiskCacheExpired(FetchError),
}

impl RefreshError {
    /// Start-up gives up at once on these instead of retrying.
    pub fn is_configuration_problem(&self) -> bool {
        matches!(self, RefreshError::Rejected { configuration: true, .. })
    }

    /// What to do about it, for the start-up failure message.
    pub fn hint(&self) -> &'static str {
        match self {
            RefreshError::Fetch(FetchError::NotFound { .. }) => {
                "The artifact was not found: has it been packed (clef pack) and deployed to this source yet?"
            }
            RefreshError::Fetch(FetchError::Forbidden { .. }) => {
                "Check that the agent has read access to the artifact (IAM policy, bucket policy, token scope or file permissions)."
            }
            RefreshError::Fetch(FetchError::Credentials { .. }) => {
                "Give the agent AWS credentials: environment keys, a web identity (IRSA), container credentials or an instance role."
            }
            RefreshError::Fetch(FetchError::TooLarge { .. }) => "Check that CLEF_AGENT_SOURCE points to a packed artifact.",
            // rustls's name for a certificate chain that ends at no trusted root: a private CA.
            RefreshError::Fetch(FetchError::Network { detail, .. }) if detail.contains("UnknownIssuer") => {
                "The server's certificate is not signed by a CA the agent trusts: for a private CA, set SSL_CERT_FILE to a PEM file holding its certificate."
            }
            RefreshError::Fetch(_) | RefreshError::DiskCacheExpired(_) => {
                "Check the source URL or path and network connectivity."
            }
            RefreshError::Rejected { rejection, configuration } => match rejection {
                Rejection::SignatureMissing | Rejection::SignatureInvalid | Rejection::SignatureError(_) => {
                    "Check that CLEF_AGENT_VERIFY_KEY is the public key of the key that signs this artifact."
                }
                Rejection::Decrypt(_) if *configuration => {
                    "Check the age key (CLEF_AGENT_AGE_KEY / CLEF_AGENT_AGE_KEY_FILE): it must be the identity the artifact was packed for."
                }
                Rejection::Rollback(_) => {
                    "An older signed artifact was published again: publish the newest artifact, or pack and deploy a new one."
                }
                Rejection::InvalidShape { field: "envelope.keyId", .. } => {
                    "The artifact names a KMS key this agent does not send credentials to: pack it again with a key of a supported KMS."
                }
                Rejection::KmsUnwrap(_) => {
                    "Check the envelope's KMS key and this agent's permission to use it (AWS kms:Decrypt, GCP cloudkms.cryptoKeyVersions.useToDecrypt, Azure Key Vault unwrapKey)."
                }
                _ => "The artifact is malformed or was modified: pack it again with clef pack and redeploy it.",
            },
            RefreshError::Revoked(_) => "The artifact was revoked: pack and deploy a new one.",
            RefreshError::Expired { .. } => "Pack and deploy a new artifact with a later expiry.",
        }
    }
}

impl fmt::Display for RefreshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefreshError::Fetch(error) => write!(f, "{error}"),
            RefreshError::DiskCacheExpired(error) => {
                write!(f, "Secrets cache expired: no successful refresh within TTL ({error})")
            }
            RefreshError::Rejected { rejection, .. } => {
                write!(f, "artifact rejected ({}): {rejection}", rejection.reason())
            }
            RefreshError::Revoked(revocation) => write!(f, "{revocation}"),
            RefreshError::Expired { expires_at } => write!(f, "Artifact expired at {expires_at}"),
        }
    }
}

impl From<FetchError> for RefreshError {
    fn from(error: FetchError) -> Self {
        RefreshError::Fetch(error)
    }
}

impl From<Rejection> for RefreshError {
    fn from(rejection: Rejection) -> Self {
        RefreshError::Rejected { rejection, configuration: false }
    }
}

impl From<DecryptError> for RefreshError {
    fn from(error: DecryptError) -> Self {
        let configuration = error.is_configuration_problem();
        RefreshError::Rejected { rejection: error.into(), configuration }
    }
}

/// What a successful refresh did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Loaded { revision: String, key_count: usize },
}

/// What telemetry and the log learn about a newly accepted artifact.
struct Loaded {
    revision: String,
    identity: String,
    environment: String,
    key_count: usize,
    kms_envelope: bool,
    telemetry_headers: Vec<(String, crate::secret::Secret)>,
}

/// The artifact last accepted, for the short-circuits of SPEC §2 steps 2 and 6.
struct Accepted {
    content_hash: Option<String>,
    revision: String,
}

/// Source, keys, disk cache and memory of the last accepted artifact.
pub struct Pipeline {
    source: Box<dyn Source>,
    keys: Arc<DecryptionKeys>,
    verify_key: Option<VerifyKey>,
    cache: Option<DiskCache>,
    last: Option<Accepted>,
    /// With a verify key: the newest signed `packedAt` seen (`artifact/rollback.rs`). Kept
    /// apart from `last` so that no wipe resets it.
    mark: Option<HighWaterMark>,
}

// One value per refresh, moved once and never stored: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Unchanged,
    /// `age_ms`: how long ago the source gave this artifact (0, or the disk cache entry's
    /// age); `fell_back`: the fetch error that sent the pipeline to the disk cache.
    Accepted {
        served: Served,
        loaded: Loaded,
        age_ms: u64,
        fell_back: Option<FetchError>,
    },
}

impl Pipeline {
    pub fn new(
        source: Box<dyn Source>,
        keys: Arc<DecryptionKeys>,
        verify_key: Option<VerifyKey>,
        cache: Option<DiskCache>,
    ) -> Pipeline {
        Pipeline { source, keys, verify_key, cache, last: None, mark: None }
    }

    /// With a verify key and a disk cache: reads the rollback mark a previous run left, so a
    /// restart cannot be rolled back either. Call before the first refresh. A mark that cannot
    /// be read is an error for the caller to refuse to start with: going on without it would
    /// accept any older signed artifact.
    pub fn restore_rollback_mark(&mut self) -> Result<(), String> {
        let Some(cache) = self.cache.as_ref().filter(|_| self.verify_key.is_some()) else { return Ok(()) };
        let path = cache.mark_path().display();
        let how_to_fix = "It records the newest signed packedAt this agent accepted (rollback protection, \
                          CLEF_AGENT_VERIFY_KEY with CLEF_AGENT_CACHE_PATH). Fix its permissions, or delete it \
                          if you are sure the source serves the newest artifact: the next accepted artifact \
                          writes it again";
        let bytes = match cache.read_mark() {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(()),
            Err(error) => return Err(format!("cannot read the rollback mark {path}: {error}. {how_to_fix}")),
        };
        let mark = HighWaterMark::decode(&bytes)
            .map_err(|detail| format!("the rollback mark {path} is damaged: {detail}. {how_to_fix}"))?;
        self.mark = Some(mark);
        Ok(())
    }

    /// Moves the mark to `raised` (when it moved) and keeps it on disk.
    fn keep_mark(&mut self, raised: Option<HighWaterMark>) {
        let Some(mark) = raised else { return };
        if let Some(cache) = &self.cache {
            if let Err(error) = cache.store_mark(&mark.encode()) {
                log::error(&format!(
                    "warning: cannot write the rollback mark {}: {error}; a restart could accept an older artifact",
                    cache.mark_path().display()
                ));
            }
        }
        self.mark = Some(mark);
    }

    /// A revocation notice arrived. With a verify key, the artifact last accepted — and the
    /// notice's own `packedAt` when the notice's artifact fields are signed — may never come
    /// back. `revokedAt` is signed by nobody and is not used (see `artifact/rollback.rs`).
    fn note_revocation(&mut self, bytes: &[u8]) {
        let Some(key) = &self.verify_key else { return };
        let signed_packed_at = artifact::revoked_artifact(bytes)
            .filter(|notice| key.verify(notice).is_ok())
            .and_then(|notice| PackedAt::parse(&notice.packed_at).ok());
        let raised = rollback::after_revocation(self.mark.as_ref(), signed_packed_at);
        self.keep_mark(raised);
    }

    /// The disk cache holds an entry to fall back on.
    fn disk_cache_available(&self) -> bool {
        self.cache.as_ref().is_some_and(DiskCache::exists)
    }

    pub fn describe_source(&self) -> String {
        self.source.describe()
    }

    /// SPEC §2 steps 1–9 for one fetch.
    fn run(&mut self, mode: Mode, now_ms: u64) -> Result<Outcome, RefreshError> {
        let last_hash = self.last.as_ref().and_then(|last| last.content_hash.as_deref());
        let (bytes, content_hash) = match self.source.fetch(last_hash) {
            Ok(Fetched::Unchanged) => return Ok(self.unchanged(now_ms)),
            Ok(Fetched::Content { bytes, content_hash }) => (bytes, content_hash),
            Err(error) => return self.fall_back_to_disk_cache(error, mode, now_ms),
        };
        if content_hash.is_some() && content_hash.as_deref() == last_hash {
            return Ok(self.unchanged(now_ms));
        }
        match self.accept(bytes, content_hash, Store::InDiskCache, mode, now_ms)? {
            // The same revision in new bytes (SPEC §2 step 6): not decrypted, so not cached.
            Outcome::Unchanged => Ok(self.unchanged(now_ms)),
            outcome => Ok(outcome),
        }
    }

    /// The source gave the artifact already accepted: the disk cache records the time.
    fn unchanged(&self, now_ms: u64) -> Outcome {
        if let Some(cache) = &self.cache {
            let hash = self.last.as_ref().and_then(|last| last.content_hash.as_deref());
            if let Err(error) = cache.touch(hash, now_ms) {
                log::error(&format!(
                    "warning: cannot write the disk cache {}: {error}",
                    cache.artifact_path().display()
                ));
            }
        }
        Outcome::Unchanged
    }

    /// The source failed: load the disk cache's entry when nothing is served yet (start-up
    /// during an outage, or after a restart); purge it when it is older than the TTL.
    fn fall_back_to_disk_cache(&mut self, error: FetchError, mode: Mode, now_ms: u64) -> Result<Outcome, RefreshError> {
        let Some(cache) = &self.cache else { return Err(error.into()) };
        if self.last.is_some() {
            // Serving already: stale-on-error keeps the same artifact the cache holds.
            return Err(error.into());
        }
        let Some(entry) = cache.load() else { return Err(error.into()) };
        let age_ms = match usable_cache_age(mode, entry.fetched_at_ms, now_ms) {
            CacheAge::Usable(age_ms) => age_ms,
            CacheAge::TooOld => {
                cache.purge();
                return Err(RefreshError::DiskCacheExpired(error));
            }
            CacheAge::InTheFuture => {
                log::error(&format!(
                    "the disk cache entry {} was fetched at {} ms, after now ({now_ms} ms): a clock that was ahead \
                     when it was written, or a planted file; treated as expired",
                    cache.artifact_path().display(),
                    entry.fetched_at_ms
                ));
                cache.purge();
                return Err(RefreshError::DiskCacheExpired(error));
            }
        };
        log::error(&format!("{error}; serving the artifact from the disk cache ({})", cache.artifact_path().display()));
        let outcome = self.accept(entry.bytes, entry.content_hash, Store::Nowhere, mode, now_ms)?;
        Ok(match outcome {
            Outcome::Accepted { served, loaded, .. } => {
                Outcome::Accepted { served, loaded, age_ms, fell_back: Some(error) }
            }
            Outcome::Unchanged => Outcome::Unchanged,
        })
    }

    /// SPEC §2 steps 3–9 for fetched bytes.
    ///
    /// Takes the fetched bytes so that it can drop them as soon as they are no longer needed:
    /// an artifact near the size limit is mostly one ciphertext, and every copy of it held at
    /// once adds to the agent's peak memory.
    fn accept(
        &mut self,
        bytes: Vec<u8>,
        content_hash: Option<String>,
        store: Store,
        mode: Mode,
        now_ms: u64,
    ) -> Result<Outcome, RefreshError> {
        let mut artifact = match screen(&bytes, now_ms) {
            Err(RefreshError::Revoked(revocation)) => {
                self.note_revocation(&bytes);
                return Err(RefreshError::Revoked(revocation));
            }
            screened => screened?,
        };
        // Only the disk cache still wants the bytes, once decryption has succeeded; without it
        // they are dropped here (`then_some` consumes them either way).
        let bytes = (store == Store::InDiskCache && self.cache.is_some()).then_some(bytes);
        if let Some(last) = self.last.as_mut().filter(|last| last.revision == artifact.revision) {
            last.content_hash = content_hash;
            return Ok(Outcome::Unchanged);
        }
        verify(&artifact, self.verify_key.as_ref())?;
        // After the signature (an unsigned packedAt proves nothing), before decryption (the
        // KMS is not even asked about a rollback).
        let signed_packed_at = match self.verify_key {
            Some(_) => {
                let packed_at = PackedAt::parse(&artifact.packed_at)?;
                rollback::check_freshness(&packed_at, self.mark.as_ref()).map_err(Rejection::Rollback)?;
                Some(packed_at)
            }
            None => None,
        };
        // Decrypt in both modes: JIT keeps only the sealed artifact, but an artifact this agent
        // cannot open must not replace one it can.
        let plaintext = match mode {
            // The snapshot needs none of the base64 text: it goes before the plaintext exists.
            Mode::Cached { .. } => {
                let ciphertext = decode_ciphertext(&std::mem::take(&mut artifact.ciphertext))?;
                let plaintext = self.keys.decrypt_decoded(artifact.envelope.as_ref(), ciphertext)?;
                Plaintext::parse(&plaintext).map_err(Rejection::PayloadParse)?
            }
            Mode::Jit => decrypt(&artifact, &self.keys)?,
        };
        if let (Some(bytes), Some(cache)) = (bytes, &self.cache) {
            if let Err(error) = cache.store(&bytes, content_hash.as_deref(), now_ms) {
                log::error(&format!(
                    "warning: cannot write the disk cache {}: {error}",
                    cache.artifact_path().display()
                ));
            }
        }
        if let Some(packed_at) = signed_packed_at {
            let raised = rollback::raised(self.mark.as_ref(), HighWaterMark::accepted(packed_at));
            self.keep_mark(raised);
        }
        let loaded = Loaded {
            revision: artifact.revision.clone(),
            identity: artifact.identity.clone(),
            environment: artifact.environment.clone(),
            key_count: plaintext.key_count(),
            kms_envelope: artifact.envelope.is_some(),
            telemetry_headers: telemetry::headers_from(&plaintext),
        };
        self.last = Some(Accepted { content_hash, revision: artifact.revision.clone() });
        let served = match mode {
            Mode::Cached { .. } => Served::Cached(Arc::new(Snapshot::build(&artifact, plaintext))),
            // Moved, not cloned: a clone would hold the ciphertext twice.
            Mode::Jit => Served::Jit(SealedArtifact { artifact }),
        };
        Ok(Outcome::Accepted { served, loaded, age_ms: 0, fell_back: None })
    }

    /// Every wipe forgets what was accepted, so the next good fetch loads again even when it
    /// is byte for byte the artifact served before, and purges the disk cache, so that a
    /// revoked or expired artifact cannot come back from it.
    fn forget(&mut self) {
        self.last = None;
        if let Some(cache) = &self.cache {
            cache.purge();
        }
    }
}

/// Where an accepted artifact's bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Store {
    /// Into the disk cache, when there is one: the bytes were fetched.
    InDiskCache,
    /// Nowhere: they came from the disk cache.
    Nowhere,
}

/// Whether a disk cache entry may stand in for the source.
#[derive(Debug, PartialEq, Eq)]
enum CacheAge {
    /// Fetched this many milliseconds ago, within the TTL.
    Usable(u64),
    TooOld,
    /// Stamped after now. Counting its age from there would serve it past the TTL by as much
    /// as the stamp is ahead, so it is expired whatever the mode.
    InTheFuture,
}

/// The age of an entry fetched at `fetched_at_ms` by this or an earlier process. Only the wall
/// clock spans processes, so it alone decides here; once loaded, the entry ages on both clocks
/// (`LiveSnapshot::mark_fresh_since`).
fn usable_cache_age(mode: Mode, fetched_at_ms: u64, now_ms: u64) -> CacheAge {
    let Some(age_ms) = now_ms.checked_sub(fetched_at_ms) else { return CacheAge::InTheFuture };
    match mode {
        Mode::Cached { ttl } if u128::from(age_ms) > ttl.as_millis() => CacheAge::TooOld,
        _ => CacheAge::Usable(age_ms),
    }
}

/// SPEC §2 steps 3–5: parse, honour a revocation, check the shape and the expiry.
pub fn screen(bytes: &[u8], now_ms: u64) -> Result<Box<Artifact>, RefreshError> {
    let artifact = match artifact::parse(bytes)? {
        Parsed::Revoked(revocation) => return Err(RefreshError::Revoked(revocation)),
        Parsed::Artifact(artifact) => artifact,
    };
    if artifact::is_expired(&artifact, now_ms) {
        let expires_at = artifact.expires_at.as_ref().map(|expiry| expiry.text.clone()).unwrap_or_default();
        return Err(RefreshError::Expired { expires_at });
    }
    Ok(artifact)
}

/// SPEC §2 steps 7–9: integrity, signature, decryption and the plaintext's shape.
pub fn open(
    artifact: &Artifact,
    verify_key: Option<&VerifyKey>,
    keys: &DecryptionKeys,
) -> Result<Plaintext, RefreshError> {
    verify(artifact, verify_key)?;
    decrypt(artifact, keys)
}

/// SPEC §2 steps 7–8: integrity and signature.
fn verify(artifact: &Artifact, verify_key: Option<&VerifyKey>) -> Result<(), Rejection> {
    artifact::check_integrity(artifact)?;
    match verify_key {
        Some(key) => key.verify(artifact),
        None => Ok(()),
    }
}

/// SPEC §2 step 9: decryption and the plaintext's shape.
fn decrypt(artifact: &Artifact, keys: &DecryptionKeys) -> Result<Plaintext, RefreshError> {
    let plaintext = keys.decrypt(artifact)?;
    Ok(Plaintext::parse(&plaintext).map_err(Rejection::PayloadParse)?)
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

/// A request that needs a refresh waits for it at most this long, counted from when the
/// refresh began; then it answers without it and the refresh goes on alone. Requests never
/// take the pipeline's lock, so a fetch that hangs holds no request's thread longer than this.
pub const REQUEST_WAIT: Duration = Duration::from_secs(5);

/// The refresh in flight and the result of the last one: what requests wait on.
struct Flight {
    /// When the refresh running now began (or a request asked for one), if any.
    begun: Option<Instant>,
    /// Refreshes completed so far: a change tells a waiting request that a refresh landed.
    completed: u64,
    last_result: Result<Change, Failure>,
}

/// What a request that found the cache expired does.
#[derive(Debug, PartialEq, Eq)]
enum RequestStep {
    /// A refresh is running: wait this long for it at most.
    Wait(Duration),
    /// Start one on its own thread, then wait [`REQUEST_WAIT`] for it.
    Start,
    /// Answer with the stored failure, too recent to fetch again for (`retry.rs`).
    Answer,
}

/// Pure: `running_for` is how long the refresh in flight has run, if one is.
fn request_step(running_for: Option<Duration>, last_failure_at_ms: Option<u64>, now_ms: u64) -> RequestStep {
    match running_for {
        Some(running_for) => RequestStep::Wait(REQUEST_WAIT.saturating_sub(running_for)),
        None if retry::should_attempt(last_failure_at_ms, now_ms) => RequestStep::Start,
        None => RequestStep::Answer,
    }
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
}

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
            disk_cache: pipeline.cache.clone(),
            source: pipeline.describe_source(),
            state: Mutex::new(PipelineState { pipeline, failure_log: FailureLog::default() }),
            flight: Mutex::new(Flight { begun: None, completed: 0, last_result: Ok(Change::Unchanged) }),
            landed: Condvar::new(),
            forget_asked: AtomicBool::new(false),
            still_running,
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
    /// so. For [`retry::RETRY_AFTER_FAILURE`] after a failure they get that failure instead of
    /// fetching again. The answer to give on failure is rendered already.
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
        self.lock_flight().begun.get_or_insert_with(Instant::now);
        let mut result = self.run_and_apply(state, now_ms);
        if result.is_none() {
            // The TTL wiped the artifact this fetch found unchanged: fetch it in full.
            result = self.run_and_apply(state, now_ms);
        }
        let result = result.unwrap_or(Ok(Change::Unchanged));
        // Delivery (issue 13): files and the change hook learn of a new revision or of a wipe
        // by revocation or expiry; `observe` turns only changes into events.
        crate::delivery::observe(&self.cell.current());
        let mut flight = self.lock_flight();
        flight.last_result = result
            .clone()
            .map_err(|error| Failure { at_ms: now_ms, refusal: Refusal::new("Refresh failed", &error.to_string()) });
        flight.begun = None;
        flight.completed += 1;
        self.landed.notify_all();
        result
    }

    /// One run of the pipeline and its effect on the cell; `None` when the source gave the
    /// artifact accepted before but the TTL wiped it meanwhile (it is forgotten now).
    fn run_and_apply(&self, state: &mut PipelineState, now_ms: u64) -> Option<Result<Change, RefreshError>> {
        if self.forget_asked.swap(false, Ordering::SeqCst) {
            state.pipeline.last = None;
        }
        Some(match state.pipeline.run(self.cell.mode, now_ms) {
            Ok(Outcome::Unchanged) => {
                if !self.cell.mark_fresh_unless_aged_out(now_ms) {
                    state.pipeline.last = None;
                    return None;
                }
                Ok(Change::Unchanged)
            }
            Ok(Outcome::Accepted { served, loaded, age_ms, fell_back }) => {
                if let Some(error) = fell_back {
                    self.telemetry.emit(Event::FetchFailed { error: error.to_string(), disk_cache_available: true });
                }
                self.cell.load(served, now_ms, age_ms);
                // A wipe asked for during this fetch concerned the artifact just replaced.
                self.forget_asked.store(false, Ordering::SeqCst);
                self.telemetry.artifact_loaded(&loaded.identity, &loaded.environment, loaded.telemetry_headers);
                self.telemetry.emit(Event::ArtifactRefreshed {
                    revision: loaded.revision.clone(),
                    key_count: Some(loaded.key_count),
                    kms_envelope: loaded.kms_envelope,
                });
                Ok(Change::Loaded { revision: loaded.revision, key_count: loaded.key_count })
            }
            Err(error) => {
                if let RefreshError::DiskCacheExpired(_) = &error {
                    if let Mode::Cached { ttl } = self.cell.mode {
                        self.telemetry
                            .emit(Event::CacheExpired { cache_ttl_seconds: ttl.as_secs(), disk_cache_purged: true });
                    }
                }
                self.telemetry.emit(failure_event(&error, state.pipeline.disk_cache_available()));
                self.after_failure(state, &error, now_ms);
                Err(error)
            }
        })
    }

    /// Revocation and expiry wipe at once; other failures keep serving until the TTL is up.
    fn after_failure(&self, state: &mut PipelineState, error: &RefreshError, now_ms: u64) {
        let wipe = match error {
            RefreshError::Revoked(_) => Some(Wipe::Revoked(Refusal::new("Artifact revoked", &error.to_string()))),
            RefreshError::Expired { .. } => {
                Some(Wipe::ArtifactExpired(Refusal::new("Artifact expired", &error.to_string())))
            }
            _ => {
                let served = self.cell.current();
                let artifact_expired = served.expires_at().filter(|expiry| expiry.epoch_ms <= now_ms as i64);
                if let Some(expiry) = artifact_expired {
                    self.telemetry.emit(Event::ArtifactExpired { expires_at: expiry.text.clone() });
                    let message = format!("Artifact expired at {}", expiry.text);
                    Some(Wipe::ArtifactExpired(Refusal::new("Artifact expired", &message)))
                } else {
                    self.wipe_if_expired(now_ms);
                    None
                }
            }
        };
        if let Some(wipe) = wipe {
            // Purge first: once a request sees the wipe, the disk cache is already empty.
            state.pipeline.forget();
            self.cell.swap(Served::Wiped(wipe));
            self.telemetry.secrets_wiped();
        }
    }

    /// Cached mode: wipes the secrets once the TTL has passed since the last successful
    /// refresh — the disk cache first — without waiting for the pipeline, so a fetch that
    /// hangs cannot keep them (see [`spawn_expiry_timer`]).
    pub fn wipe_if_expired(&self, now_ms: u64) {
        let wiped = self.cell.wipe_if_expired(now_ms, || {
            if let Some(cache) = &self.disk_cache {
                cache.purge();
            }
            self.forget_asked.store(true, Ordering::SeqCst);
        });
        if wiped {
            // Delivery (issue 13): the TTL wipe removes rendered files and runs the hook too.
            crate::delivery::observe(&self.cell.current());
            log::error("cache expired: no successful refresh within CLEF_AGENT_CACHE_TTL; secrets wiped");
            if let Mode::Cached { ttl } = self.cell.mode {
                self.telemetry.emit(Event::CacheExpired { cache_ttl_seconds: ttl.as_secs(), disk_cache_purged: false });
            }
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

    /// A failure is logged at once, then once per [`retry::REPEAT_LOG_WINDOW`] while it repeats
    /// (`asked`: always, see [`FailureLog::failed`]).
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

/// The TTL's own timer: wipes the secrets when the TTL passes without a successful refresh,
/// whatever the refresh thread is doing (a fetch that hangs holds the pipeline, not this).
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
    fn a_disk_cache_entry_is_usable_within_the_ttl_and_never_when_stamped_in_the_future() {
        const NOW: u64 = 1_800_000_000_000;
        let ttl = cached(Duration::from_secs(30));
        // (fetched at, mode, verdict)
        let cases = [
            (NOW, ttl, CacheAge::Usable(0)),
            (NOW - 30_000, ttl, CacheAge::Usable(30_000)),
            (NOW - 30_001, ttl, CacheAge::TooOld),
            (NOW + 1, ttl, CacheAge::InTheFuture),
            (NOW + 10_000, ttl, CacheAge::InTheFuture),
            (NOW - 86_400_000, Mode::Jit, CacheAge::Usable(86_400_000)),
            (NOW + 10_000, Mode::Jit, CacheAge::InTheFuture),
        ];
        for (fetched_at, mode, verdict) in cases {
            assert_eq!(
                usable_cache_age(mode, fetched_at, NOW),
                verdict,
                "fetched at NOW{:+}",
                fetched_at as i64 - NOW as i64
            );
        }
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

    /// Rollback protection through the real pipeline: an in-memory source, a fresh age key and
    /// a fresh Ed25519 signing key.
    mod rollback {
        use std::io::Write as _;
        use std::sync::{Arc, Mutex};

        use age::secrecy::ExposeSecret as _;
        use base64::Engine as _;
        use ring::signature::KeyPair as _;

        use super::super::*;
        use crate::artifact::signature::signing_payload;
        use crate::decrypt::AgeIdentity;

        const NOW: u64 = 1_800_000_000_000;
        const CACHED: Mode = Mode::Cached { ttl: Duration::from_secs(60) };

        /// Serves the bytes published; while held, a fetch hangs until released.
        #[derive(Clone, Default)]
        pub(in super::super) struct MemorySource(Arc<Mutex<Vec<u8>>>, Arc<(Mutex<bool>, std::sync::Condvar)>);

        impl MemorySource {
            pub(in super::super) fn hold(&self, held: bool) {
                *self.1 .0.lock().unwrap() = held;
                self.1 .1.notify_all();
            }
        }

        impl Source for MemorySource {
            fn describe(&self) -> String {
                "memory".into()
            }

            fn fetch(&mut self, _: Option<&str>) -> Result<Fetched, FetchError> {
                let (held, released) = &*self.1;
                drop(released.wait_while(held.lock().unwrap(), |held| *held).unwrap());
                Ok(Fetched::Content { bytes: self.0.lock().unwrap().clone(), content_hash: None })
            }
        }

        pub(in super::super) struct Fixture {
            pub(in super::super) pipeline: Pipeline,
            pub(in super::super) source: MemorySource,
            recipient: age::x25519::Recipient,
            signer: ring::signature::Ed25519KeyPair,
        }

        impl Fixture {
            pub(in super::super) fn new() -> Fixture {
                let identity = age::x25519::Identity::generate();
                let age = AgeIdentity::parse(identity.to_string().expose_secret()).unwrap();
                let keys = Arc::new(DecryptionKeys { age: Some(age), kms: None });
                let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
                let signer = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
                let verify_key = VerifyKey::Ed25519(signer.public_key().as_ref().to_vec());
                let source = MemorySource::default();
                let pipeline = Pipeline::new(Box::new(source.clone()), keys, Some(verify_key), None);
                Fixture { pipeline, source, recipient: identity.to_public(), signer }
            }

            /// A signed artifact packed at `packed_at`, as a JSON value.
            pub(in super::super) fn artifact(&self, revision: &str, packed_at: &str) -> serde_json::Value {
                let encryptor =
                    age::Encryptor::with_recipients(std::iter::once(&self.recipient as &dyn age::Recipient)).unwrap();
                let mut sealed = Vec::new();
                let mut writer = encryptor.wrap_output(&mut sealed).unwrap();
                writer.write_all(br#"{"app":{"KEY":"value"}}"#).unwrap();
                writer.finish().unwrap();
                let mut artifact = crate::artifact::sample();
                artifact.revision = revision.into();
                artifact.packed_at = packed_at.into();
                artifact.ciphertext = base64::engine::general_purpose::STANDARD.encode(sealed);
                artifact.ciphertext_hash = crate::secret::sha256_hex(artifact.ciphertext.as_bytes());
                let signature = self.signer.sign(signing_payload(&artifact).as_bytes());
                serde_json::json!({
                    "version": 1, "identity": artifact.identity, "environment": artifact.environment,
                    "packedAt": artifact.packed_at, "revision": artifact.revision,
                    "ciphertextHash": artifact.ciphertext_hash, "ciphertext": artifact.ciphertext,
                    "signature": base64::engine::general_purpose::STANDARD.encode(signature.as_ref()),
                })
            }

            pub(in super::super) fn publish(&self, document: &serde_json::Value) {
                *self.source.0.lock().unwrap() = document.to_string().into_bytes();
            }

            /// Publishes `document` and runs the pipeline: the reason code of a rejection, or
            /// "accepted" / "revoked".
            fn offer(&mut self, document: &serde_json::Value) -> &'static str {
                self.publish(document);
                match self.pipeline.run(CACHED, NOW) {
                    Ok(Outcome::Accepted { .. }) => "accepted",
                    Ok(Outcome::Unchanged) => "unchanged",
                    Err(RefreshError::Revoked(_)) => {
                        // What the refresher does after a revocation.
                        self.pipeline.forget();
                        "revoked"
                    }
                    Err(RefreshError::Rejected { rejection, .. }) => rejection.reason(),
                    Err(other) => panic!("unexpected {other}"),
                }
            }
        }

        pub(in super::super) const OLDER: &str = "2026-11-24T12:00:00.000Z";
        const NEWER: &str = "2026-11-25T12:00:00.000Z";
        const NEWEST: &str = "2026-11-26T12:00:00.000Z";

        #[test]
        fn a_wipe_does_not_reset_the_mark() {
            let mut fixture = Fixture::new();
            let newer = fixture.artifact("r2", NEWER);
            assert_eq!(fixture.offer(&newer), "accepted");
            fixture.pipeline.forget();
            assert_eq!(fixture.offer(&fixture.artifact("r1", OLDER)), "rollback");
            assert_eq!(fixture.offer(&newer), "accepted", "the artifact in service loads again after a wipe");
        }

        #[test]
        fn a_bare_notice_revokes_the_artifact_in_service_but_its_revoked_at_moves_nothing() {
            let mut fixture = Fixture::new();
            let newer = fixture.artifact("r2", NEWER);
            assert_eq!(fixture.offer(&newer), "accepted");
            let notice =
                serde_json::json!({"identity": "api", "environment": "prod", "revokedAt": "2099-01-01T00:00:00Z"});
            assert_eq!(fixture.offer(&notice), "revoked");
            assert_eq!(fixture.offer(&newer), "rollback");
            assert_eq!(fixture.offer(&fixture.artifact("r1", OLDER)), "rollback");
            assert_eq!(fixture.offer(&fixture.artifact("r3", NEWEST)), "accepted", "packed long before 2099");
        }

        #[test]
        fn a_notice_made_from_a_signed_artifact_revokes_its_packed_at_and_a_forged_one_does_not() {
            let mut fixture = Fixture::new();
            let mut forged = fixture.artifact("r3", NEWEST);
            forged["revision"] = "r4".into();
            forged["revokedAt"] = "2026-11-27T00:00:00Z".into();
            assert_eq!(fixture.offer(&forged), "revoked");
            assert_eq!(fixture.offer(&fixture.artifact("r2", NEWER)), "accepted", "the forged packedAt moved nothing");

            let mut signed = fixture.artifact("r3", NEWEST);
            signed["revokedAt"] = "2026-11-27T00:00:00Z".into();
            assert_eq!(fixture.offer(&signed), "revoked");
            assert_eq!(fixture.offer(&fixture.artifact("r2b", NEWER)), "rollback");
            assert_eq!(fixture.offer(&fixture.artifact("r3", NEWEST)), "rollback");
        }

        #[test]
        fn a_signed_packed_at_that_is_not_a_timestamp_is_refused() {
            let mut fixture = Fixture::new();
            assert_eq!(fixture.offer(&fixture.artifact("r1", "last tuesday")), "invalid_shape");
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

    /// A fetch that hangs, through the real refresher and cell.
    mod hanging {
        use std::sync::Arc;
        use std::time::{Duration, Instant};

        use super::rollback::{Fixture, OLDER};
        use crate::config::Mode;
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
    }

    #[test]
    fn never_polls_more_often_than_the_floor() {
        assert_eq!(poll_interval_for(cached(Duration::from_secs(30)), None, 0, 0.9), POLL_FLOOR);
        assert_eq!(poll_interval_for(cached(5 * MINUTE), Some(0), 10, 0.0), POLL_FLOOR);
        assert_eq!(poll_interval_for(Mode::Jit, None, 0, 0.0), POLL_FLOOR);
    }
}
