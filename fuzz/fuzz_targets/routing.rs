//! Request routing and guards: arbitrary bytes read as an HTTP request head (request line, then
//! `Name: value` header lines), turned into the `routes::Request` the server builds from a
//! tiny_http request (every `Host`, the first `Authorization`, whether `X-Forwarded-For` or
//! `Forwarded` is present), and answered by `routes::Api::handle` in three states: secrets
//! cached, JIT (decrypted per request) and not loaded. No sockets.
//!
//! Beyond "no panic", every answer is checked against the README's rules: the Host guard, then
//! the method, then the bearer token, then the proxy headers; secrets only with the token,
//! never to a proxied request, always `no-store`; 401 carries `WWW-Authenticate`, 405 `Allow`;
//! JSON bodies are JSON; a served value is one of the fixture's values. Path segments also go
//! through `url::percent_decode` directly.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clef_agent::config::Mode;
use clef_agent::decrypt::{AgeIdentity, Keys};
use clef_agent::refresh::{Pipeline, Refresher};
use clef_agent::secret::Secret;
use clef_agent::server::routes::{Api, Reply, Request, JSON, TEXT};
use clef_agent::snapshot::Cell;
use clef_agent::source::{FetchError, Fetched, Source};
use libfuzzer_sys::fuzz_target;

const TOKEN: &str = "fuzz-token-0123456789";
/// Within the cached API's TTL of the refresh at `NOW_MS`, so no request refreshes.
const NOW_MS: u64 = 1_800_000_000_000;
const ARTIFACT: &[u8] = include_bytes!("../../tests/fixtures/artifacts/age-cli.json");
const PLAINTEXT: &str = include_str!("../../tests/fixtures/plaintext.json");

/// Answers the fixture artifact, or (for the never-loaded API) a fetch error.
struct FixedSource(Option<&'static [u8]>);

impl Source for FixedSource {
    fn describe(&self) -> String {
        "fuzz fixture".into()
    }

    fn fetch(&mut self, _: Option<&str>) -> Result<Fetched, FetchError> {
        match self.0 {
            Some(bytes) => Ok(Fetched::Content { bytes: bytes.to_vec(), content_hash: None }),
            None => Err(FetchError::NotFound { source: "fuzz fixture".into() }),
        }
    }
}

fn api(mode: Mode, artifact: Option<&'static [u8]>) -> Api {
    let identity =
        AgeIdentity::from_file_contents(include_str!("../../tests/fixtures/keys/demo.agekey")).expect("demo.agekey");
    let keys = Arc::new(Keys { age: Some(identity), kms: None });
    let cell = Arc::new(Cell::new(mode));
    let pipeline = Pipeline::new(Box::new(FixedSource(artifact)), Arc::clone(&keys), None, None);
    let refresher = Arc::new(Refresher::new(Arc::clone(&cell), pipeline, Default::default()));
    if artifact.is_some() {
        refresher.refresh(NOW_MS).expect("the fixture artifact loads");
    }
    Api { cell, refresher, keys, token: Secret::new(TOKEN.into()) }
}

struct Apis {
    cached: Api,
    jit: Api,
    not_loaded: Api,
    values: Vec<String>,
}

fn apis() -> &'static Apis {
    static APIS: OnceLock<Apis> = OnceLock::new();
    APIS.get_or_init(|| {
        let cached = Mode::Cached { ttl: Duration::from_secs(3600) };
        let plaintext: serde_json::Value = serde_json::from_str(PLAINTEXT).expect("plaintext.json");
        let values = plaintext
            .as_object()
            .into_iter()
            .flat_map(|namespaces| namespaces.values())
            .filter_map(|namespace| namespace.as_object())
            .flat_map(|entries| entries.values())
            .filter_map(|value| value.as_str().map(str::to_owned))
            .collect();
        Apis {
            cached: api(cached, Some(ARTIFACT)),
            jit: api(Mode::Jit, Some(ARTIFACT)),
            not_loaded: api(cached, None),
            values,
        }
    })
}

/// A header line as tiny_http reads it: split at the first `:`, a field name without
/// whitespace, an ASCII value with surrounding whitespace trimmed; other lines are dropped.
fn header(line: &str) -> Option<(&str, &str)> {
    let (field, value) = line.split_once(':')?;
    let value = value.trim();
    (!field.is_empty() && field.is_ascii() && !field.contains(char::is_whitespace) && value.is_ascii())
        .then_some((field, value))
}

fn parse_request(text: &str) -> Option<Request<'_>> {
    let mut lines = text.split('\n').map(|line| line.strip_suffix('\r').unwrap_or(line));
    let mut request_line = lines.next()?.splitn(3, ' ');
    let method = request_line.next().filter(|method| !method.is_empty())?;
    let target = request_line.next()?;
    let headers: Vec<(&str, &str)> = lines.take_while(|line| !line.is_empty()).filter_map(header).collect();
    let named = |name: &'static str| {
        headers.iter().filter(move |(field, _)| field.eq_ignore_ascii_case(name)).map(|(_, value)| *value)
    };
    Some(Request {
        method,
        target,
        hosts: named("Host").collect(),
        authorization: named("Authorization").next(),
        forwarded: named("X-Forwarded-For").next().is_some() || named("Forwarded").next().is_some(),
    })
}

/// The README's Host rule, written separately: exactly one Host that is a loopback name with
/// or without a port. `Some(true)`/`Some(false)` where the rule is clear, `None` for oddities
/// (a port like `+80`) left to the agent's judgement.
fn host_rule(hosts: &[&str]) -> Option<bool> {
    let [host] = hosts else { return Some(false) };
    let host = host.trim().to_ascii_lowercase();
    for name in ["127.0.0.1", "localhost", "[::1]"] {
        if let Some(rest) = host.strip_prefix(name) {
            let Some(port) = rest.strip_prefix(':') else { return Some(rest.is_empty()) };
            if !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()) {
                return Some(port.parse::<u32>().is_ok_and(|port| port <= 65535));
            }
            return None;
        }
    }
    Some(false)
}

/// `Authorization: Bearer <token>` with the right token (scheme case-insensitive).
fn token_given(authorization: Option<&str>) -> bool {
    authorization
        .and_then(|value| value.trim().split_once(' '))
        .is_some_and(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && token.trim() == TOKEN)
}

fn path_of(target: &str) -> &str {
    target.split(['?', '#']).next().unwrap_or_default()
}

fn has_header(reply: &Reply, name: &str, value: &str) -> bool {
    reply.headers.iter().any(|(n, v)| n.eq_ignore_ascii_case(name) && *v == value)
}

fn check(request: &Request<'_>, reply: &Reply, values: &[String]) {
    let body = reply.body.bytes();
    let path = path_of(request.target);
    let secret_path = path.starts_with("/v1/secrets") || path.starts_with("/v1/keys");
    assert!(
        matches!(reply.status, 200 | 400 | 401 | 403 | 404 | 405 | 503),
        "unexpected status {} for {request:?}",
        reply.status
    );
    assert!(!secret_path || reply.no_store, "a secrets path answered without no-store: {request:?}");
    // Guards in the README's order.
    match host_rule(&request.hosts) {
        Some(false) => {
            assert_eq!(reply.status, 403, "a bad Host got past the Host guard: {request:?}");
            assert_eq!(body, br#"{"error":"Forbidden: invalid Host header"}"#);
            return;
        }
        Some(true) => assert!(
            reply.status != 403 || body != br#"{"error":"Forbidden: invalid Host header"}"#,
            "a loopback Host was refused: {request:?}"
        ),
        None => {}
    }
    if reply.status == 403 && body == br#"{"error":"Forbidden: invalid Host header"}"# {
        return;
    }
    let method_allowed = request.method == "GET" || request.method == "HEAD";
    assert_eq!(reply.status == 405, !method_allowed, "method guard: {request:?}");
    if reply.status == 405 {
        assert!(has_header(reply, "Allow", "GET, HEAD"));
        return;
    }
    if reply.status == 401 {
        assert!(has_header(reply, "WWW-Authenticate", "Bearer"));
        assert!(!token_given(request.authorization), "the right token was refused: {request:?}");
    }
    if reply.content_type == JSON {
        assert!(
            serde_json::from_slice::<serde_json::Value>(body).is_ok(),
            "a JSON answer is not JSON: {:?}",
            String::from_utf8_lossy(body)
        );
    }
    if reply.status == 200 {
        let public = body.starts_with(br#"{"status":"ok""#) || body == br#"{"ready":true}"#;
        if !public {
            assert!(secret_path, "secrets served on a path that is not a secrets path: {request:?}");
            assert!(token_given(request.authorization), "secrets served without the token: {request:?}");
            assert!(!request.forwarded, "secrets served to a proxied request: {request:?}");
        }
        if reply.content_type == TEXT {
            let value = std::str::from_utf8(body).expect("values are UTF-8");
            assert!(values.iter().any(|known| known == value), "served a value the artifact does not hold");
        }
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let apis = apis();
    // The decoder behind path segments, directly.
    for segment in text.split(['/', ' ', '?', '\n']) {
        match clef_agent::url::percent_decode(segment) {
            Ok(decoded) => {
                assert!(decoded.len() <= segment.len());
                if !segment.contains('%') {
                    assert_eq!(decoded, segment);
                }
            }
            Err(error) => assert!(segment.contains('%') || error.contains("UTF-8"), "{error}"),
        }
    }
    let Some(request) = parse_request(text) else { return };
    let mut statuses = Vec::with_capacity(3);
    for api in [&apis.cached, &apis.jit, &apis.not_loaded] {
        let reply = api.handle(&request, NOW_MS);
        check(&request, &reply, &apis.values);
        statuses.push(reply.status);
    }
    // The loaded APIs answer alike: cached and JIT serve the same secrets.
    assert_eq!(statuses[0], statuses[1], "cached and JIT disagree on {request:?}");
});
