//! The immutable snapshot the API serves, and the one place it is swapped.
//!
//! A snapshot holds the decrypted secrets with every response body rendered once, when it is
//! built, so serving a request only clones an `Arc`. All of it zeroes itself on drop: a
//! replaced or wiped snapshot leaves no plaintext behind once its last reader is done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use zeroize::Zeroizing;

use crate::artifact::{Artifact, Expiry};
use crate::config::Mode;
use crate::decrypt::Plaintext;
use crate::secret::SecretBytes;
use crate::text::json_string;
use crate::time::{elapsed_ms, Moment, Monotonic, SystemMonotonic};

/// Decrypted secrets with their pre-rendered bodies.
pub struct Snapshot {
    pub revision: String,
    pub expires_at: Option<Expiry>,
    pub key_count: usize,
    plaintext: Plaintext,
    secrets_body: SecretBytes,
    keys_body: Vec<u8>,
    /// Each namespace's body: where it sits inside `secrets_body`, which holds them all in
    /// plaintext order, so no namespace is rendered (and held) twice.
    namespace_bodies: Vec<std::ops::Range<usize>>,
    namespace_index: HashMap<String, usize>,
    /// Names in `/v1/keys` (`<namespace>__<key>`, or a flat plaintext's keys) → value parts.
    flat_index: HashMap<String, Part>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Snapshot {{ revision: {:?}, key_count: {} }}", self.revision, self.key_count)
    }
}

/// A part of a snapshot a response can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Secrets,
    Keys,
    Namespace(usize),
    /// A nested plaintext's value: (namespace, entry) positions.
    Value(usize, usize),
    /// A flat plaintext's value: its position.
    Flat(usize),
}

impl Snapshot {
    pub fn build(artifact: &Artifact, plaintext: Plaintext) -> Snapshot {
        let mut namespace_index = HashMap::with_capacity(plaintext.namespaces.len());
        let mut flat_index = HashMap::with_capacity(plaintext.key_count());
        let mut keys_body = b"[".to_vec();
        for (ns_index, namespace) in plaintext.namespaces.iter().enumerate() {
            namespace_index.entry(namespace.name.clone()).or_insert(ns_index);
            for (entry_index, (key, _)) in namespace.entries.iter().enumerate() {
                let flat = format!("{}__{key}", namespace.name);
                push_list_item(&mut keys_body, &flat);
                flat_index.entry(flat).or_insert(Part::Value(ns_index, entry_index));
            }
        }
        for (index, (key, _)) in plaintext.flat.iter().enumerate() {
            push_list_item(&mut keys_body, key);
            flat_index.entry(key.clone()).or_insert(Part::Flat(index));
        }
        keys_body.push(b']');
        let (secrets_body, namespace_bodies) = if plaintext.namespaces.is_empty() {
            // A flat plaintext is one object of strings, rendered as a namespace is.
            (render_object(&plaintext.flat), Vec::new())
        } else {
            render_nested(&plaintext)
        };
        Snapshot {
            revision: artifact.revision.clone(),
            expires_at: artifact.expires_at.clone(),
            key_count: plaintext.key_count(),
            plaintext,
            secrets_body,
            keys_body,
            namespace_bodies,
            namespace_index,
            flat_index,
        }
    }

    /// The body of a part; `Value` parts are the raw value bytes.
    pub fn body(&self, part: Part) -> &[u8] {
        match part {
            Part::Secrets => &self.secrets_body,
            Part::Keys => &self.keys_body,
            Part::Namespace(index) => {
                self.namespace_bodies.get(index).and_then(|range| self.secrets_body.get(range.clone())).unwrap_or(&[])
            }
            Part::Value(..) | Part::Flat(_) => self.value_of(part).map_or(&[], str::as_bytes),
        }
    }

    /// A value part as `{"value":"…"}`, rendered now into a buffer of exactly its size (so no
    /// growth leaves an unzeroed copy behind) that zeroes itself when the answer is dropped.
    pub fn value_json(&self, part: Part) -> Option<SecretBytes> {
        let value = self.value_of(part)?;
        const OPEN: &[u8] = br#"{"value":"#;
        let mut body = Zeroizing::new(Vec::with_capacity(OPEN.len() + json_string_len(value) + 1));
        body.extend_from_slice(OPEN);
        push_json_string(&mut body, value);
        body.push(b'}');
        Some(body)
    }

    fn value_of(&self, part: Part) -> Option<&str> {
        let entry = match part {
            Part::Value(ns, entry) => self.plaintext.namespaces.get(ns)?.entries.get(entry)?,
            Part::Flat(index) => self.plaintext.flat.get(index)?,
            Part::Secrets | Part::Keys | Part::Namespace(_) => return None,
        };
        Some(entry.1.as_str())
    }

    pub fn namespace(&self, name: &str) -> Option<Part> {
        self.namespace_index.get(name).map(|&index| Part::Namespace(index))
    }

    pub fn value(&self, namespace: &str, key: &str) -> Option<Part> {
        let ns = *self.namespace_index.get(namespace)?;
        let entry = self.plaintext.namespaces[ns].entries.iter().position(|(name, _)| name == key)?;
        Some(Part::Value(ns, entry))
    }

    /// A value by its name in `/v1/keys`: `<namespace>__<key>` of a nested plaintext, the key of
    /// a flat one.
    pub fn flat_value(&self, flat_name: &str) -> Option<Part> {
        self.flat_index.get(flat_name).copied()
    }

    /// The secrets themselves, for the environment `exec --watch` starts its command with.
    pub fn plaintext(&self) -> &Plaintext {
        &self.plaintext
    }
}

/// `{"key":"value",…}`, in a buffer sized exactly so that it never grows (a grown `Vec`
/// leaves its old, unzeroed copy in freed memory).
fn render_object(entries: &[(String, Zeroizing<String>)]) -> SecretBytes {
    let mut body = Zeroizing::new(Vec::with_capacity(rendered_object_len(entries)));
    push_object(&mut body, entries);
    body
}

/// `{"namespace":{…},…}`, sized exactly as [`render_object`] is, and where each namespace's
/// object sits in it.
fn render_nested(plaintext: &Plaintext) -> (SecretBytes, Vec<std::ops::Range<usize>>) {
    let members: usize = plaintext
        .namespaces
        .iter()
        .map(|namespace| json_string_len(&namespace.name) + 1 + rendered_object_len(&namespace.entries))
        .sum();
    let mut secrets_body = Zeroizing::new(Vec::with_capacity(object_len(members, plaintext.namespaces.len())));
    let mut ranges = Vec::with_capacity(plaintext.namespaces.len());
    secrets_body.push(b'{');
    for (index, namespace) in plaintext.namespaces.iter().enumerate() {
        if index > 0 {
            secrets_body.push(b',');
        }
        push_json_string(&mut secrets_body, &namespace.name);
        secrets_body.push(b':');
        let start = secrets_body.len();
        push_object(&mut secrets_body, &namespace.entries);
        ranges.push(start..secrets_body.len());
    }
    secrets_body.push(b'}');
    (secrets_body, ranges)
}

/// The length of `entries` as [`push_object`] writes them.
fn rendered_object_len(entries: &[(String, Zeroizing<String>)]) -> usize {
    let pairs: usize = entries.iter().map(|(key, value)| json_string_len(key) + 1 + json_string_len(value)).sum();
    object_len(pairs, entries.len())
}

fn push_object(body: &mut Vec<u8>, entries: &[(String, Zeroizing<String>)]) {
    body.push(b'{');
    for (index, (key, value)) in entries.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        push_json_string(body, key);
        body.push(b':');
        push_json_string(body, value);
    }
    body.push(b'}');
}

/// The length of `{member,member,…}` whose `count` members take `members` bytes together.
fn object_len(members: usize, count: usize) -> usize {
    2 + members + count.saturating_sub(1)
}

/// Appends `,` (after the first item) and `"text"`, for the key list.
fn push_list_item(list: &mut Vec<u8>, text: &str) {
    if list.len() > 1 {
        list.push(b',');
    }
    push_json_string(list, text);
}

/// The length of `text` as [`push_json_string`] writes it, quotes included.
fn json_string_len(text: &str) -> usize {
    let escaped: usize = text
        .bytes()
        .map(|byte| match byte {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0x00..=0x1f => 6,
            _ => 1,
        })
        .sum();
    escaped + 2
}

/// Appends `text` as a JSON string literal, escaped as `JSON.stringify` does.
fn push_json_string(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &byte in text.as_bytes() {
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x00..=0x1f => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]),
            _ => out.push(byte),
        }
    }
    out.push(b'"');
}

/// A validated artifact kept encrypted, for JIT mode.
pub struct SealedArtifact {
    pub artifact: Box<Artifact>,
}

/// Why the secrets were wiped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wipe {
    /// No successful refresh within the TTL.
    CacheExpired,
    /// The source published a revocation (the message of SPEC §1).
    Revoked(Refusal),
    /// The artifact's `expiresAt` passed (the message of SPEC §2).
    ArtifactExpired(Refusal),
}

/// A 503 answer that quotes the artifact, rendered once where the state it describes is made
/// (a wipe, a failed refresh), so that no request formats artifact text again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    body: Arc<str>,
}

impl Refusal {
    /// `{"error": error, "detail": detail}`.
    pub fn new(error: &str, detail: &str) -> Refusal {
        Refusal { body: error_body(error, Some(detail)).into() }
    }

    /// The JSON body, shared by every request that gets it.
    pub fn body(&self) -> Arc<str> {
        Arc::clone(&self.body)
    }
}

/// The JSON body of an error answer: `{"error": …}` with an optional `"detail"`.
pub fn error_body(error: &str, detail: Option<&str>) -> String {
    let mut body = format!("{{\"error\":{}", json_string(error));
    if let Some(detail) = detail {
        body.push_str(&format!(",\"detail\":{}", json_string(detail)));
    }
    body.push('}');
    body
}

/// What the agent has to serve.
pub enum Served {
    NotLoaded,
    Cached(Arc<Snapshot>),
    Jit(SealedArtifact),
    Wiped(Wipe),
}

impl Served {
    pub fn revision(&self) -> Option<&str> {
        match self {
            Served::Cached(snapshot) => Some(&snapshot.revision),
            Served::Jit(sealed) => Some(&sealed.artifact.revision),
            Served::NotLoaded | Served::Wiped(_) => None,
        }
    }

    pub fn expires_at(&self) -> Option<&Expiry> {
        match self {
            Served::Cached(snapshot) => snapshot.expires_at.as_ref(),
            Served::Jit(sealed) => sealed.artifact.expires_at.as_ref(),
            Served::NotLoaded | Served::Wiped(_) => None,
        }
    }
}

/// The swap point: the current [`Served`] state and the time of the last successful refresh.
/// Readers clone an `Arc` under a read lock held for nanoseconds; the refresher swaps.
pub struct LiveSnapshot {
    pub mode: Mode,
    served: RwLock<Arc<Served>>,
    /// The last successful fetch on both clocks, `None` before the first. Its age decides
    /// expiry; its wall-clock half is only shown (`lastRefreshAt`).
    fresh_at: Mutex<Option<Moment>>,
    monotonic: Box<dyn Monotonic>,
}

impl LiveSnapshot {
    pub fn new(mode: Mode) -> LiveSnapshot {
        LiveSnapshot::with_clock(mode, Box::new(SystemMonotonic))
    }

    /// A cell measuring freshness with `monotonic` (tests pass a clock they move by hand).
    pub fn with_clock(mode: Mode, monotonic: Box<dyn Monotonic>) -> LiveSnapshot {
        LiveSnapshot { mode, served: RwLock::new(Arc::new(Served::NotLoaded)), fresh_at: Mutex::new(None), monotonic }
    }

    pub fn current(&self) -> Arc<Served> {
        match self.served.read() {
            Ok(served) => Arc::clone(&served),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces what is served; the old state is dropped (and zeroed) by its last reader.
    pub fn swap(&self, next: Served) {
        let next = Arc::new(next);
        match self.served.write() {
            Ok(mut served) => *served = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }

    /// The source answered now (wall clock `now_ms`).
    pub fn mark_fresh(&self, now_ms: u64) {
        self.mark_fresh_since(now_ms, 0);
    }

    /// A refresh accepted `next`, given by the source `age_ms` before now: swapped in and
    /// marked fresh at once, so that [`LiveSnapshot::wipe_if_expired`] sees both or neither.
    pub fn load(&self, next: Served, now_ms: u64, age_ms: u64) {
        let mut fresh_at = self.lock_fresh_at();
        *fresh_at = Some(self.moment(now_ms).minus(age_ms));
        self.swap(next);
    }

    /// The source gave the artifact served again: fresh now, unless the TTL wiped it meanwhile
    /// (false: then there is nothing to keep fresh, and the artifact must be fetched in full).
    pub fn mark_fresh_unless_aged_out(&self, now_ms: u64) -> bool {
        let mut fresh_at = self.lock_fresh_at();
        if matches!(*self.current(), Served::Wiped(Wipe::CacheExpired)) {
            return false;
        }
        *fresh_at = Some(self.moment(now_ms));
        true
    }

    /// Cached mode: wipes the secrets once more than the TTL has passed since the last
    /// successful refresh, calling `before` first (under the same lock as [`LiveSnapshot::load`], so a
    /// refresh landing now is never wiped). True when this call wiped them. Whether a refresh
    /// is running does not matter: a fetch that hangs cannot keep secrets past the TTL.
    pub fn wipe_if_expired(&self, now_ms: u64, before: impl FnOnce()) -> bool {
        let fresh_at = self.lock_fresh_at();
        let Mode::Cached { ttl } = self.mode else { return false };
        let Some(fresh_at) = *fresh_at else { return false };
        let aged_out = Duration::from_millis(elapsed_ms(fresh_at, self.moment(now_ms))) > ttl;
        if !aged_out || !matches!(*self.current(), Served::Cached(_)) {
            return false;
        }
        before();
        self.swap(Served::Wiped(Wipe::CacheExpired));
        true
    }

    /// Wipes the artifact served when its `expiresAt` has passed by `now_ms`, calling `before`
    /// first (under the same lock as [`LiveSnapshot::load`], so a refresh that swaps in a new
    /// artifact meanwhile is never wiped for the old one's expiry). The expiry that passed, if
    /// this call wiped.
    pub fn wipe_if_artifact_expired(&self, now_ms: u64, before: impl FnOnce()) -> Option<Expiry> {
        let _fresh_at = self.lock_fresh_at();
        let served = self.current();
        if !matches!(*served, Served::Cached(_) | Served::Jit(_)) {
            return None;
        }
        let expiry = served.expires_at().filter(|expiry| expiry.epoch_ms <= now_ms as i64)?.clone();
        before();
        let detail = format!("Artifact expired at {}", expiry.text);
        self.swap(Served::Wiped(Wipe::ArtifactExpired(Refusal::new("Artifact expired", &detail))));
        Some(expiry)
    }

    /// How long until [`LiveSnapshot::wipe_if_expired`] wipes, when secrets are served in cached mode.
    pub fn time_to_expiry(&self, now_ms: u64) -> Option<Duration> {
        let Mode::Cached { ttl } = self.mode else { return None };
        if !matches!(*self.current(), Served::Cached(_)) {
            return None;
        }
        let age = Duration::from_millis(self.age_ms(now_ms)?);
        Some(ttl.saturating_sub(age))
    }

    /// The source answered `age_ms` before now: an artifact loaded from the disk cache.
    pub fn mark_fresh_since(&self, now_ms: u64, age_ms: u64) {
        *self.lock_fresh_at() = Some(self.moment(now_ms).minus(age_ms));
    }

    /// Epoch milliseconds of the last successful fetch, for display.
    pub fn last_refresh_at_ms(&self) -> Option<u64> {
        self.lock_fresh_at().map(|moment| moment.wall_ms)
    }

    /// Milliseconds since the last successful fetch (see [`elapsed_ms`]); `None` before it.
    pub fn age_ms(&self, now_ms: u64) -> Option<u64> {
        let fresh_at = (*self.lock_fresh_at())?;
        Some(elapsed_ms(fresh_at, self.moment(now_ms)))
    }

    /// Cached mode: more than TTL since the last successful refresh (or wiped for that reason).
    pub fn is_expired(&self, now_ms: u64) -> bool {
        let Mode::Cached { ttl } = self.mode else { return false };
        if matches!(*self.current(), Served::Wiped(Wipe::CacheExpired)) {
            return true;
        }
        self.age_ms(now_ms).is_some_and(|age| Duration::from_millis(age) > ttl)
    }

    fn moment(&self, wall_ms: u64) -> Moment {
        Moment { wall_ms, monotonic_ms: self.monotonic.now_ms() }
    }

    fn lock_fresh_at(&self) -> std::sync::MutexGuard<'_, Option<Moment>> {
        self.fresh_at.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::artifact::sample as artifact;

    fn snapshot(json: &str) -> Snapshot {
        Snapshot::build(&artifact(), Plaintext::parse(json.as_bytes()).unwrap())
    }

    #[test]
    fn renders_bodies_in_plaintext_order() {
        let json = r#"{"zeta":{"b":"1","a":"2"},"alpha":{"y":"q\"\n\u0001é"}}"#;
        let snapshot = snapshot(json);
        assert_eq!(
            std::str::from_utf8(snapshot.body(Part::Secrets)).unwrap(),
            r#"{"zeta":{"b":"1","a":"2"},"alpha":{"y":"q\"\n\u0001é"}}"#
        );
        assert_eq!(snapshot.body(Part::Keys), br#"["zeta__b","zeta__a","alpha__y"]"#);
        assert_eq!(snapshot.body(snapshot.namespace("alpha").unwrap()), r#"{"y":"q\"\n\u0001é"}"#.as_bytes());
        assert_eq!(snapshot.body(snapshot.value("zeta", "a").unwrap()), b"2");
        assert_eq!(snapshot.body(snapshot.flat_value("alpha__y").unwrap()), "q\"\n\u{1}é".as_bytes());
        assert_eq!(snapshot.key_count, 3);
        assert_eq!(snapshot.namespace("missing"), None);
        assert_eq!(snapshot.value("zeta", "missing"), None);
    }

    #[test]
    fn renders_a_flat_plaintext_as_the_same_object_in_the_same_order() {
        let json = r#"{"Z_KEY":"1","db__PASS":"q\"\n\u0001é","A":""}"#;
        let snapshot = snapshot(json);
        assert_eq!(std::str::from_utf8(snapshot.body(Part::Secrets)).unwrap(), json);
        assert_eq!(snapshot.body(Part::Keys), br#"["Z_KEY","db__PASS","A"]"#);
        assert_eq!(snapshot.body(snapshot.flat_value("db__PASS").unwrap()), "q\"\n\u{1}é".as_bytes());
        assert_eq!(snapshot.flat_value("Z_KEY"), Some(Part::Flat(0)));
        assert_eq!((snapshot.namespace("db"), snapshot.value("db", "PASS")), (None, None));
        assert_eq!(snapshot.key_count, 3);
    }

    #[test]
    fn renders_one_value_as_a_json_object_in_a_buffer_of_its_exact_size() {
        let snapshot = snapshot(r#"{"n":{"k":"q\"\\\n\u0001\u001fé\u2028"}}"#);
        let body = snapshot.value_json(snapshot.value("n", "k").unwrap()).unwrap();
        assert_eq!(std::str::from_utf8(&body).unwrap(), "{\"value\":\"q\\\"\\\\\\n\\u0001\\u001fé\u{2028}\"}");
        assert_eq!(body.capacity(), body.len(), "a buffer that grew left an unzeroed copy behind");
        assert_eq!(snapshot.value_json(Part::Secrets), None);
    }

    #[test]
    fn rendered_bodies_never_grow_past_their_first_buffer() {
        for json in [r#"{"n\"":{"k\u0000":"\u0001\u0002\n\"x"},"m":{}}"#, r#"{"K\t":"\u0003\\"}"#] {
            let snapshot = snapshot(json);
            assert_eq!(snapshot.secrets_body.capacity(), snapshot.secrets_body.len(), "{json}");
            let namespaces = snapshot.plaintext.namespaces.iter().enumerate();
            for (index, namespace) in namespaces {
                let body = snapshot.body(Part::Namespace(index));
                assert_eq!(body, &render_object(&namespace.entries)[..], "{json}");
            }
        }
    }

    #[test]
    fn rendered_secrets_parse_back_to_the_same_json() {
        let json = r#"{"n":{"k":"\u2028 \\ / \b\f\r\t ok"}}"#;
        let rendered: serde_json::Value = serde_json::from_slice(snapshot(json).body(Part::Secrets)).unwrap();
        assert_eq!(rendered, serde_json::from_str::<serde_json::Value>(json).unwrap());
    }

    #[test]
    fn an_empty_plaintext_renders_empty_bodies() {
        let snapshot = snapshot("{}");
        assert_eq!(snapshot.body(Part::Secrets), b"{}");
        assert_eq!(snapshot.body(Part::Keys), b"[]");
    }

    #[test]
    fn cell_expires_after_ttl_in_cached_mode_only() {
        let cell = LiveSnapshot::new(Mode::Cached { ttl: Duration::from_secs(30) });
        assert!(!cell.is_expired(1_000_000));
        cell.mark_fresh(1_000_000);
        assert!(!cell.is_expired(1_030_000));
        assert!(cell.is_expired(1_030_001));
        let jit = LiveSnapshot::new(Mode::Jit);
        jit.mark_fresh(1);
        assert!(!jit.is_expired(u64::MAX));
    }

    /// A monotonic clock the test moves.
    #[derive(Clone, Default)]
    struct HandClock(Arc<std::sync::atomic::AtomicI64>);

    impl Monotonic for HandClock {
        fn now_ms(&self) -> i64 {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[test]
    fn a_cell_expires_on_time_whichever_way_the_wall_clock_jumps() {
        const NOW: u64 = 1_800_000_000_000;
        const HOUR: i64 = 3_600_000;
        // (what happened, wall clock moved by, monotonic clock moved by, expired with a 30 s TTL)
        let cases: [(&str, i64, i64, bool); 6] = [
            ("29 s passed", 29_000, 29_000, false),
            ("31 s passed", 31_000, 31_000, true),
            ("the wall clock was set back an hour, then 31 s passed", 31_000 - HOUR, 31_000, true),
            ("the wall clock was set back an hour, then 29 s passed", 29_000 - HOUR, 29_000, false),
            ("the wall clock was set forward an hour", HOUR, 1_000, true),
            ("the machine slept an hour", HOUR, 0, true),
        ];
        for (what, wall, monotonic, expired) in cases {
            let clock = HandClock::default();
            let cell = LiveSnapshot::with_clock(Mode::Cached { ttl: Duration::from_secs(30) }, Box::new(clock.clone()));
            cell.mark_fresh(NOW);
            clock.0.store(monotonic, std::sync::atomic::Ordering::SeqCst);
            assert_eq!(cell.is_expired(NOW.checked_add_signed(wall).unwrap()), expired, "{what}");
            assert_eq!(cell.last_refresh_at_ms(), Some(NOW), "{what}: lastRefreshAt is the wall-clock time");
        }
    }

    #[test]
    fn an_artifact_from_the_disk_cache_is_as_old_as_its_entry() {
        let clock = HandClock::default();
        let cell = LiveSnapshot::with_clock(Mode::Cached { ttl: Duration::from_secs(30) }, Box::new(clock.clone()));
        cell.mark_fresh_since(1_000_000, 20_000);
        assert_eq!(cell.last_refresh_at_ms(), Some(980_000));
        clock.0.store(9_000, std::sync::atomic::Ordering::SeqCst);
        assert!(!cell.is_expired(0), "29 s old on the monotonic clock, whatever the wall clock says");
        clock.0.store(11_000, std::sync::atomic::Ordering::SeqCst);
        assert!(cell.is_expired(0), "31 s old on the monotonic clock although the wall clock went back");
    }
}
