//! What the GCP and Azure loopback KMS servers share: parsing what the agent sends (forms,
//! query strings, JSON bodies, bearer tokens) strictly, the access tokens they issue and take
//! back, the violations they note instead of panicking on a connection thread, random data keys
//! whose encodings tell base64 and base64url apart, and the checks every test ends with.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Map, Value};

use crate::support::loopback::Recorded;
use crate::support::{Agent, PLAINTEXT, PLAINTEXT_ROTATED};

/// KMS artifacts need no age key: the standard one is unset.
pub const NO_AGE_KEY: (&str, &str) = ("CLEF_AGENT_AGE_KEY_FILE", "");
/// JIT mode: every `GET /v1/secrets` decrypts, so every request is one KMS call.
pub const JIT: (&str, &str) = ("CLEF_AGENT_CACHE_TTL", "0");
/// With a one-hour TTL no scheduled poll happens during a test: only SIGHUP refreshes.
pub const SLOW_POLLING: (&str, &str) = ("CLEF_AGENT_CACHE_TTL", "3600");
/// A SIGHUP refresh (token request, KMS call, decryption) on a loaded machine.
pub const REFRESH_LIMIT: Duration = Duration::from_secs(10);
/// Three start-up attempts with 2 s and 4 s of backoff between them.
pub const FAILED_START_LIMIT: Duration = Duration::from_secs(30);

pub fn standard(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn base64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    SystemRandom::new().fill(&mut bytes).expect("randomness");
    bytes
}

/// A random 32-byte data key whose standard base64 has a `+` and a `/` and whose base64url has
/// a `-` and a `_`: decoding it with the wrong alphabet fails instead of passing by luck.
pub fn data_key() -> [u8; 32] {
    loop {
        let key = random_bytes::<32>();
        let (standard, url) = (standard(&key), base64url(&key));
        if standard.contains('+') && standard.contains('/') && url.contains('-') && url.contains('_') {
            return key;
        }
    }
}

/// Every way a data key could show in a log line.
pub fn data_key_encodings(key: &[u8; 32]) -> Vec<String> {
    let hex: String = key.iter().map(|byte| format!("{byte:02x}")).collect();
    vec![standard(key), base64url(key), hex]
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is before 1970").as_secs()
}

/// `Err(what)` unless `ok`: the servers' checks read as a list of `ensure(...)?`.
pub fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

/// What a server found wrong in a request the agent sent. A handler runs on a connection
/// thread, where a panic would only drop the connection: it notes the problem here and answers
/// the error the provider would; the test asserts that the list stayed empty.
#[derive(Clone, Default)]
pub struct Violations(Arc<Mutex<Vec<String>>>);

impl Violations {
    pub fn note(&self, server: &str, request: &Recorded, problem: &str) {
        self.0.lock().unwrap().push(format!("{server}: {problem} in {} {}", request.method, request.path));
    }

    pub fn assert_none(&self) {
        let violations = self.0.lock().unwrap();
        assert!(violations.is_empty(), "the agent's requests broke the documented API:\n{}", violations.join("\n"));
    }
}

/// `%XX` and `+` decoded (application/x-www-form-urlencoded); `None` for a broken escape or
/// bytes that are not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(index + 1..index + 3)?).ok()?;
                decoded.push(u8::from_str_radix(hex, 16).ok()?);
                index += 3;
            }
            b'+' => {
                decoded.push(b' ');
                index += 1;
            }
            byte => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(decoded).ok()
}

/// `name=value&…` decoded; a repeated name, an empty pair or a broken escape is an error.
pub fn parse_pairs(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut pairs = BTreeMap::new();
    for pair in text.split('&') {
        let (name, value) = pair.split_once('=').ok_or_else(|| format!("'{pair}' is not name=value"))?;
        let name = percent_decode(name).ok_or_else(|| format!("bad escape in '{name}'"))?;
        let value = percent_decode(value).ok_or_else(|| format!("bad escape in the value of '{name}'"))?;
        if pairs.insert(name.clone(), value).is_some() {
            return Err(format!("'{name}' is given twice"));
        }
    }
    Ok(pairs)
}

/// The path of a request target and its decoded query (empty without one).
pub fn split_target(target: &str) -> Result<(&str, BTreeMap<String, String>), String> {
    match target.split_once('?') {
        None => Ok((target, BTreeMap::new())),
        Some((path, query)) => Ok((path, parse_pairs(query)?)),
    }
}

/// `pairs` has exactly the names and values of `expected`.
pub fn ensure_pairs(what: &str, pairs: &BTreeMap<String, String>, expected: &[(&str, &str)]) -> Result<(), String> {
    let expected: BTreeMap<String, String> =
        expected.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
    ensure(*pairs == expected, || format!("{what} is {pairs:?}, expected {expected:?}"))
}

/// The decoded `application/x-www-form-urlencoded` body of a POST.
pub fn form_body(request: &Recorded) -> Result<BTreeMap<String, String>, String> {
    ensure(request.method == "POST", || format!("a token request must be a POST, not {}", request.method))?;
    let content_type = request.header("Content-Type").unwrap_or_default();
    ensure(content_type.starts_with("application/x-www-form-urlencoded"), || {
        format!("Content-Type is {content_type:?}, expected application/x-www-form-urlencoded")
    })?;
    let body = String::from_utf8(request.body.clone()).map_err(|_| "the form is not UTF-8".to_string())?;
    parse_pairs(&body)
}

/// The JSON object body of a POST with `Content-Type: application/json`.
pub fn json_body(request: &Recorded) -> Result<Map<String, Value>, String> {
    ensure(request.method == "POST", || format!("expected a POST, not {}", request.method))?;
    let content_type = request.header("Content-Type").unwrap_or_default();
    ensure(content_type.starts_with("application/json"), || {
        format!("Content-Type is {content_type:?}, expected application/json")
    })?;
    match serde_json::from_slice(&request.body) {
        Ok(Value::Object(object)) => Ok(object),
        _ => Err(format!("the body is not a JSON object: {:?}", request.body_text())),
    }
}

/// The values of `fields`, in that order, in `object`: exactly those fields, all strings.
pub fn only_fields<'a>(object: &'a Map<String, Value>, fields: &[&str]) -> Result<Vec<&'a str>, String> {
    let mut names: Vec<&str> = object.keys().map(String::as_str).collect();
    let mut expected = fields.to_vec();
    names.sort_unstable();
    expected.sort_unstable();
    ensure(names == expected, || format!("the JSON body has the fields {names:?}, expected {expected:?}"))?;
    fields
        .iter()
        .map(|field| object[*field].as_str().ok_or_else(|| format!("'{field}' is not a JSON string")))
        .collect()
}

/// The token of exactly one `Authorization: Bearer <token>` header.
pub fn bearer(request: &Recorded) -> Option<&str> {
    if request.header_count("Authorization") != 1 {
        return None;
    }
    request.header("Authorization")?.strip_prefix("Bearer ")
}

/// What a resource server thinks of a bearer token.
pub enum TokenCheck {
    Current,
    /// Issued, then taken back (expired or revoked): an agent may hold one of these.
    Stale,
    /// Never issued: the agent made it up, or sent another token.
    Unknown,
}

/// The access tokens an identity endpoint hands out: distinctive, numbered, so a test can see
/// which one a KMS call carried and that none reached a log line.
pub struct Tokens {
    prefix: &'static str,
    issued: Mutex<Vec<String>>,
    /// Tokens issued before this index are stale.
    valid_from: AtomicUsize,
}

impl Tokens {
    pub fn new(prefix: &'static str) -> Tokens {
        Tokens { prefix, issued: Mutex::default(), valid_from: AtomicUsize::new(0) }
    }

    pub fn issue(&self) -> String {
        let mut issued = self.issued.lock().unwrap();
        let nonce: String = random_bytes::<8>().iter().map(|byte| format!("{byte:02x}")).collect();
        let token = format!("{}{}-{nonce}", self.prefix, issued.len() + 1);
        issued.push(token.clone());
        token
    }

    pub fn issued(&self) -> Vec<String> {
        self.issued.lock().unwrap().clone()
    }

    /// The `index`th token issued, from 0.
    pub fn nth(&self, index: usize) -> String {
        let issued = self.issued();
        issued.get(index).cloned().unwrap_or_else(|| panic!("token {index} was never issued: {issued:?}"))
    }

    /// Every token issued so far becomes stale.
    pub fn revoke_all(&self) {
        let count = self.issued.lock().unwrap().len();
        self.valid_from.store(count, Ordering::SeqCst);
    }

    pub fn check(&self, token: Option<&str>) -> TokenCheck {
        let issued = self.issued.lock().unwrap();
        match token.and_then(|token| issued.iter().position(|known| known == token)) {
            None => TokenCheck::Unknown,
            Some(index) if index < self.valid_from.load(Ordering::SeqCst) => TokenCheck::Stale,
            Some(_) => TokenCheck::Current,
        }
    }
}

/// Every string value of the test plaintexts.
fn secret_values() -> Vec<String> {
    fn leaves(value: &Value, into: &mut Vec<String>) {
        match value {
            Value::String(text) => into.push(text.clone()),
            Value::Object(object) => object.values().for_each(|value| leaves(value, into)),
            _ => {}
        }
    }
    let mut values = Vec::new();
    for plaintext in [PLAINTEXT, PLAINTEXT_ROTATED] {
        leaves(&serde_json::from_str(plaintext).expect("the test plaintexts are JSON"), &mut values);
    }
    values
}

/// Neither of the agent's outputs holds a secret value, nor any of `credentials` (tokens,
/// client secrets, refresh tokens, assertions, data keys).
pub fn assert_nothing_leaked(agent: &Agent, credentials: &[String]) {
    let output = agent.stdout() + &agent.stderr();
    for secret in secret_values().iter().chain(credentials) {
        assert!(!secret.is_empty(), "an empty string cannot be checked for");
        assert!(!output.contains(secret.as_str()), "{secret:?} leaked into the agent's output:\n{output}");
    }
}

/// Every line of both outputs is one log entry with the agent's prefix: a provider's message
/// with line breaks in it (Key Vault's RBAC refusal has `\r\n`s) must not split an entry into
/// lines a log reader would take for separate, unprefixed ones.
pub fn assert_one_line_per_entry(agent: &Agent) {
    for (name, output) in [("stdout", agent.stdout()), ("stderr", agent.stderr())] {
        for line in output.split('\n').filter(|line| !line.is_empty()) {
            assert!(
                line.starts_with("[clef-agent] ") && !line.contains('\r'),
                "{name} has a line that is not one log entry: {line:?}\n--- {name} ---\n{output}"
            );
        }
    }
}

/// Waits for the stderr line with `poll error: ` and `needle`, and returns it.
pub fn wait_for_poll_error(agent: &Agent, needle: &str) -> String {
    agent.wait_for_stderr(needle, REFRESH_LIMIT);
    let stderr = agent.stderr();
    let line = stderr.lines().find(|line| line.contains(needle)).unwrap_or_default().to_string();
    assert!(line.contains("poll error: "), "{needle:?} is not in a poll error line:\n{stderr}");
    line
}

/// How long an agent may take to give up on a configuration-class failure: no retries.
pub const AT_ONCE: Duration = Duration::from_secs(5);
/// The hint of a refused `envelope.keyId`.
pub const KEY_ID_HINT: &str =
    "The artifact names a KMS key this agent does not send credentials to: pack it again with a key of a supported KMS.";

/// The agent gave up at once (one attempt, exit 1) with this fatal line: `field 'envelope.keyId'
/// must be <accepted>, found <found>` and the hint.
pub fn assert_key_id_refused_at_once(agent: &Agent, source: &std::path::Path, accepted: &str, found: &str) {
    let started = std::time::Instant::now();
    let status = agent.wait_exit(AT_ONCE).unwrap_or_else(|| panic!("the agent kept trying: {}", agent.stderr()));
    assert_eq!(status.code(), Some(1), "{}", agent.stderr());
    assert!(started.elapsed() < Duration::from_secs(2), "a refused key id was retried");
    let stderr = agent.stderr();
    assert_eq!(
        stderr.lines().last().unwrap_or_default(),
        format!(
            "[clef-agent] fatal: Failed to fetch artifact from {} after 1 attempt: artifact rejected (invalid_shape): \
             field 'envelope.keyId' must be {accepted}, found {found}. {KEY_ID_HINT}",
            source.display()
        ),
        "{stderr}"
    );
}
