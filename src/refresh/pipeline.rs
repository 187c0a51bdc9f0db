//! The validation pipeline of SPEC §2. Two pure steps — [`validate`] (parse, revocation, shape,
//! expiry, same revision, integrity, signature, rollback) and [`open`] (decryption and the
//! plaintext's shape) — and the [`Pipeline`] that feeds them fetched bytes, falls back to the
//! disk cache when the source fails, and remembers what it accepted. The pipeline's I/O (source,
//! disk cache, rollback mark) lives here rather than in the refresher because it is the memory
//! those steps consult: the refresher only decides what an outcome does to the served state.

use std::sync::Arc;

use super::error::{OpenError, RefreshError};
use crate::artifact::rollback::{self, HighWaterMark, PackedAt};
use crate::artifact::signature::VerifyKey;
use crate::artifact::{self, Artifact, Expiry, Parsed, Rejection};
use crate::config::Mode;
use crate::decrypt::{decode_ciphertext, DecryptionKeys, Plaintext};
use crate::disk_cache::DiskCache;
use crate::log;
use crate::secret::Secret;
use crate::snapshot::{SealedArtifact, Served, Snapshot};
use crate::source::{FetchError, Fetched, Source};
use crate::telemetry;

/// What [`validate`] holds an artifact against besides the clock.
#[derive(Clone, Copy, Default)]
pub struct Policy<'a> {
    /// SPEC §2 step 8: a signature is required when set.
    pub verify_key: Option<&'a VerifyKey>,
    /// SPEC §2 step 6: the revision of the artifact last accepted.
    pub last_revision: Option<&'a str>,
    /// With a verify key: refuse a signed `packedAt` older than `mark` (`artifact/rollback.rs`).
    /// Off for a one-off check, which keeps no memory of earlier artifacts.
    pub check_rollback: bool,
    pub mark: Option<&'a HighWaterMark>,
}

/// An artifact that passed [`validate`].
#[derive(Debug)]
pub enum Validated {
    /// The revision already accepted, in new bytes (SPEC §2 step 6): nothing more is checked.
    SameRevision,
    New {
        artifact: Box<Artifact>,
        /// With rollback checked: its signed `packedAt`, for the mark once it is accepted.
        signed_packed_at: Option<PackedAt>,
    },
}

/// SPEC §2 steps 3–8 and the rollback check, in that order: parse and honour a revocation,
/// check the shape and the expiry, stop at the same revision, then integrity, signature and
/// rollback. Pure: bytes, a clock and a policy in, a verdict out.
pub fn validate(bytes: &[u8], now_ms: u64, policy: &Policy<'_>) -> Result<Validated, RefreshError> {
    let artifact = match artifact::parse(bytes)? {
        Parsed::Revoked(revocation) => return Err(RefreshError::Revoked(revocation)),
        Parsed::Artifact(artifact) => artifact,
    };
    if artifact::is_expired(&artifact, now_ms) {
        let expires_at = artifact.expires_at.as_ref().map(|expiry| expiry.text.clone()).unwrap_or_default();
        return Err(RefreshError::Expired { expires_at });
    }
    if policy.last_revision == Some(artifact.revision.as_str()) {
        return Ok(Validated::SameRevision);
    }
    artifact::check_integrity(&artifact)?;
    if let Some(key) = policy.verify_key {
        key.verify(&artifact)?;
    }
    // After the signature (an unsigned packedAt proves nothing), before decryption (the KMS
    // is not even asked about a rollback).
    let signed_packed_at = match policy.verify_key.filter(|_| policy.check_rollback) {
        Some(_) => {
            let packed_at = PackedAt::parse(&artifact.packed_at)?;
            rollback::check_freshness(&packed_at, policy.mark).map_err(Rejection::Rollback)?;
            Some(packed_at)
        }
        None => None,
    };
    Ok(Validated::New { artifact, signed_packed_at })
}

/// SPEC §2 step 9: decryption and the plaintext's shape. JIT mode opens the sealed artifact
/// this way on every request.
pub fn open(artifact: &Artifact, keys: &DecryptionKeys) -> Result<Plaintext, OpenError> {
    let plaintext = keys.decrypt(artifact)?;
    Plaintext::parse(&plaintext).map_err(OpenError::Payload)
}

/// [`open`] for cached mode, which keeps none of the base64 text: it is dropped before the
/// plaintext exists, as the snapshot needs only the artifact's other fields.
fn open_taking_ciphertext(artifact: &mut Artifact, keys: &DecryptionKeys) -> Result<Plaintext, OpenError> {
    let ciphertext = decode_ciphertext(&std::mem::take(&mut artifact.ciphertext))?;
    let plaintext = keys.decrypt_decoded(artifact.envelope.as_ref(), ciphertext)?;
    Plaintext::parse(&plaintext).map_err(OpenError::Payload)
}

/// One artifact checked and opened with no memory of earlier ones (`clef-agent check`): no
/// same-revision stop, no rollback mark.
pub fn validate_and_open_once(
    bytes: &[u8],
    now_ms: u64,
    verify_key: Option<&VerifyKey>,
    keys: &DecryptionKeys,
) -> Result<(Box<Artifact>, Plaintext), RefreshError> {
    let policy = Policy { verify_key, ..Policy::default() };
    let Validated::New { artifact, .. } = validate(bytes, now_ms, &policy)? else {
        unreachable!("no last revision was given, so no artifact has the same one")
    };
    let plaintext = open(&artifact, keys)?;
    Ok((artifact, plaintext))
}

/// A JIT request's snapshot: the sealed artifact, validated when it was accepted, opened now.
pub fn open_for_request(sealed: &SealedArtifact, keys: &DecryptionKeys) -> Result<Arc<Snapshot>, OpenError> {
    let plaintext = open(&sealed.artifact, keys)?;
    Ok(Arc::new(Snapshot::build(&sealed.artifact, plaintext)))
}

/// What telemetry and the log learn about a newly accepted artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub revision: String,
    pub identity: String,
    pub environment: String,
    pub key_count: usize,
    pub kms_envelope: bool,
    pub expires_at: Option<Expiry>,
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
pub(super) enum Outcome {
    Unchanged,
    /// `age_ms`: how long ago the source gave this artifact (0, or the disk cache entry's
    /// age); `fell_back`: the fetch error that sent the pipeline to the disk cache.
    Accepted {
        served: Served,
        loaded: Loaded,
        telemetry_headers: Vec<(String, Secret)>,
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
    pub(super) fn disk_cache_available(&self) -> bool {
        self.cache.as_ref().is_some_and(DiskCache::exists)
    }

    /// The disk cache, for the refresher's TTL wipe, which must not wait for a fetch to end.
    pub(super) fn disk_cache(&self) -> Option<DiskCache> {
        self.cache.clone()
    }

    /// The TTL wiped the artifact accepted last: the next fetch loads it again in full.
    pub(super) fn forget_accepted(&mut self) {
        self.last = None;
    }

    pub fn describe_source(&self) -> String {
        self.source.describe()
    }

    /// SPEC §2 steps 1–9 for one fetch.
    pub(super) fn run(&mut self, mode: Mode, now_ms: u64) -> Result<Outcome, RefreshError> {
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
            Outcome::Accepted { served, loaded, telemetry_headers, .. } => {
                Outcome::Accepted { served, loaded, telemetry_headers, age_ms, fell_back: Some(error) }
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
        let policy = Policy {
            verify_key: self.verify_key.as_ref(),
            last_revision: self.last.as_ref().map(|last| last.revision.as_str()),
            check_rollback: true,
            mark: self.mark.as_ref(),
        };
        let (mut artifact, signed_packed_at) = match validate(&bytes, now_ms, &policy) {
            Ok(Validated::New { artifact, signed_packed_at }) => (artifact, signed_packed_at),
            Ok(Validated::SameRevision) => {
                if let Some(last) = self.last.as_mut() {
                    last.content_hash = content_hash;
                }
                return Ok(Outcome::Unchanged);
            }
            Err(RefreshError::Revoked(revocation)) => {
                self.note_revocation(&bytes);
                return Err(RefreshError::Revoked(revocation));
            }
            Err(error) => return Err(error),
        };
        // Only the disk cache still wants the bytes, once decryption has succeeded; without it
        // they are dropped here (`then_some` consumes them either way), before decryption.
        let bytes = (store == Store::InDiskCache && self.cache.is_some()).then_some(bytes);
        // Decrypt in both modes: JIT keeps only the sealed artifact, but an artifact this agent
        // cannot open must not replace one it can.
        let plaintext = match mode {
            Mode::Cached { .. } => open_taking_ciphertext(&mut artifact, &self.keys)?,
            Mode::Jit => open(&artifact, &self.keys)?,
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
            expires_at: artifact.expires_at.clone(),
        };
        let telemetry_headers = telemetry::headers_from(&plaintext);
        self.last = Some(Accepted { content_hash, revision: artifact.revision.clone() });
        let served = match mode {
            Mode::Cached { .. } => Served::Cached(Arc::new(Snapshot::build(&artifact, plaintext))),
            // Moved, not cloned: a clone would hold the ciphertext twice.
            Mode::Jit => Served::Jit(SealedArtifact { artifact }),
        };
        Ok(Outcome::Accepted { served, loaded, telemetry_headers, age_ms: 0, fell_back: None })
    }

    /// Every wipe forgets what was accepted, so the next good fetch loads again even when it
    /// is byte for byte the artifact served before, and purges the disk cache, so that a
    /// revoked or expired artifact cannot come back from it.
    pub(super) fn forget(&mut self) {
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

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_disk_cache_entry_is_usable_within_the_ttl_and_never_when_stamped_in_the_future() {
        const NOW: u64 = 1_800_000_000_000;
        let ttl = Mode::Cached { ttl: Duration::from_secs(30) };
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

    /// The reason code of `validate`'s verdict, or "new" / "same revision" / "revoked" / "expired".
    fn verdict(document: &serde_json::Value, policy: &Policy<'_>) -> &'static str {
        const NOW: u64 = 1_800_000_000_000;
        match validate(document.to_string().as_bytes(), NOW, policy) {
            Ok(Validated::New { .. }) => "new",
            Ok(Validated::SameRevision) => "same revision",
            Err(RefreshError::Revoked(_)) => "revoked",
            Err(RefreshError::Expired { .. }) => "expired",
            Err(RefreshError::Rejected { rejection, .. }) => rejection.reason(),
            Err(other) => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn validate_takes_the_steps_of_spec_section_2_in_order() {
        let fixture = rollback::Fixture::new();
        let key = fixture.pipeline.verify_key.clone();
        let mark = HighWaterMark::accepted(PackedAt::parse(rollback::NEWEST).unwrap());
        let strict =
            Policy { verify_key: key.as_ref(), last_revision: Some("r1"), check_rollback: true, mark: Some(&mark) };
        let signed = fixture.artifact("r2", rollback::OLDER);
        let with = |field: &str, value: serde_json::Value| signed.clone().with_field(field, value);
        let tampered = || "0".repeat(64).into();
        let unsigned = || {
            let mut document = signed.clone();
            document.as_object_mut().map(|fields| fields.remove("signature"));
            document
        };
        // (name, artifact, policy, verdict)
        let rows = [
            (
                "a revocation comes before the shape",
                serde_json::json!({"identity": "api", "environment": "prod", "revokedAt": "2026-11-24T13:00:00Z", "version": 9}),
                strict,
                "revoked",
            ),
            (
                "the shape comes before the expiry",
                with("version", 2.into()).expired_and_tampered(),
                strict,
                "unsupported_version",
            ),
            (
                "the expiry comes before the same revision",
                with("revision", "r1".into()).expired_and_tampered(),
                strict,
                "expired",
            ),
            (
                "the same revision stops before the integrity check",
                with("revision", "r1".into()).with_field("ciphertextHash", tampered()),
                strict,
                "same revision",
            ),
            ("the integrity check comes before the signature", with("ciphertextHash", tampered()), strict, "integrity"),
            ("the signature comes before the rollback check", unsigned(), strict, "signature_missing"),
            ("an older signed artifact is a rollback", signed.clone(), strict, "rollback"),
            ("a one-off check keeps no mark", signed.clone(), Policy { check_rollback: false, ..strict }, "new"),
            (
                "without a verify key nothing is signed, so nothing is a rollback",
                unsigned(),
                Policy { verify_key: None, ..strict },
                "new",
            ),
        ];
        for (name, document, policy, expected) in rows {
            assert_eq!(verdict(&document, &policy), expected, "{name}");
        }
    }

    /// A builder for the table above.
    trait Edit {
        fn with_field(self, field: &str, value: serde_json::Value) -> Self;
        fn expired_and_tampered(self) -> Self;
    }

    impl Edit for serde_json::Value {
        fn with_field(mut self, field: &str, value: serde_json::Value) -> Self {
            self[field] = value;
            self
        }

        /// Expired long ago, and tampered with so that every later step would refuse it.
        fn expired_and_tampered(self) -> Self {
            self.with_field("expiresAt", "2020-01-01T00:00:00.000Z".into())
                .with_field("ciphertextHash", "0".repeat(64).into())
        }
    }

    #[test]
    fn open_reads_as_its_cause_so_a_jit_request_answers_as_before() {
        let fixture = rollback::Fixture::new();
        let mut document = fixture.artifact("r1", rollback::OLDER);
        document["ciphertext"] = "bm90IGFnZQ==".into();
        document["ciphertextHash"] = crate::secret::sha256_hex(b"bm90IGFnZQ==").into();
        let Ok(Validated::New { artifact, .. }) = validate(document.to_string().as_bytes(), 0, &Policy::default())
        else {
            panic!("the artifact validates")
        };
        let error = open(&artifact, &fixture.pipeline.keys).unwrap_err();
        assert_eq!(error.to_string(), "the ciphertext is not a binary age file (bad or unknown header)");
    }

    /// Rollback protection through the real pipeline: an in-memory source, a fresh age key and
    /// a fresh Ed25519 signing key.
    pub(in crate::refresh) mod rollback {
        use std::io::Write as _;
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        use age::secrecy::ExposeSecret as _;
        use base64::Engine as _;
        use ring::signature::KeyPair as _;

        use super::super::*;
        use crate::artifact::signature::signing_payload;
        use crate::decrypt::AgeIdentity;
        use crate::source::{FetchError, Fetched, Source};

        const NOW: u64 = 1_800_000_000_000;
        const CACHED: Mode = Mode::Cached { ttl: Duration::from_secs(60) };

        /// Serves the bytes published; while held, a fetch hangs until released.
        #[derive(Clone, Default)]
        pub(in crate::refresh) struct MemorySource(Arc<Mutex<Vec<u8>>>, Arc<(Mutex<bool>, std::sync::Condvar)>);

        impl MemorySource {
            pub(in crate::refresh) fn hold(&self, held: bool) {
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

        pub(in crate::refresh) struct Fixture {
            pub(in crate::refresh) pipeline: Pipeline,
            pub(in crate::refresh) source: MemorySource,
            recipient: age::x25519::Recipient,
            signer: ring::signature::Ed25519KeyPair,
        }

        impl Fixture {
            pub(in crate::refresh) fn new() -> Fixture {
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
            pub(in crate::refresh) fn artifact(&self, revision: &str, packed_at: &str) -> serde_json::Value {
                self.artifact_expiring(revision, packed_at, None)
            }

            /// The same, with an `expiresAt` (signed like every other field).
            pub(in crate::refresh) fn artifact_expiring(
                &self,
                revision: &str,
                packed_at: &str,
                expires_at: Option<&str>,
            ) -> serde_json::Value {
                let encryptor =
                    age::Encryptor::with_recipients(std::iter::once(&self.recipient as &dyn age::Recipient)).unwrap();
                let mut sealed = Vec::new();
                let mut writer = encryptor.wrap_output(&mut sealed).unwrap();
                writer.write_all(br#"{"app":{"KEY":"value"}}"#).unwrap();
                writer.finish().unwrap();
                let mut artifact = crate::artifact::sample();
                artifact.revision = revision.into();
                artifact.packed_at = packed_at.into();
                artifact.expires_at = expires_at.map(|text| crate::artifact::Expiry {
                    text: text.into(),
                    epoch_ms: crate::time::parse_iso8601_ms(text).unwrap(),
                });
                artifact.ciphertext = base64::engine::general_purpose::STANDARD.encode(sealed);
                artifact.ciphertext_hash = crate::secret::sha256_hex(artifact.ciphertext.as_bytes());
                let signature = self.signer.sign(signing_payload(&artifact).as_bytes());
                let mut document = serde_json::json!({
                    "version": 1, "identity": artifact.identity, "environment": artifact.environment,
                    "packedAt": artifact.packed_at, "revision": artifact.revision,
                    "ciphertextHash": artifact.ciphertext_hash, "ciphertext": artifact.ciphertext,
                    "signature": base64::engine::general_purpose::STANDARD.encode(signature.as_ref()),
                });
                if let Some(text) = expires_at {
                    document["expiresAt"] = text.into();
                }
                document
            }

            pub(in crate::refresh) fn publish(&self, document: &serde_json::Value) {
                self.publish_bytes(document.to_string().as_bytes());
            }

            pub(in crate::refresh) fn publish_bytes(&self, bytes: &[u8]) {
                *self.source.0.lock().unwrap() = bytes.to_vec();
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

        pub(in crate::refresh) const OLDER: &str = "2026-11-24T12:00:00.000Z";
        const NEWER: &str = "2026-11-25T12:00:00.000Z";
        pub(in crate::refresh) const NEWEST: &str = "2026-11-26T12:00:00.000Z";

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
}
