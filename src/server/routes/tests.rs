//! Routing and guards, without sockets: a real refresher over an in-memory source.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use age::secrecy::ExposeSecret;
use base64::Engine as _;

use super::*;
use crate::config::Mode;
use crate::decrypt::AgeIdentity;
use crate::refresh::Pipeline;
use crate::source::{FetchError, Fetched, Source};

const TOKEN: &str = "test-token-0123456789";
const PLAINTEXT: &str = r#"{"database":{"DB_PASSWORD":"pw-1","DB USER":"admin"},"app":{"API_KEY":"k-1"}}"#;
const NOW: u64 = 1_800_000_000_000;

/// A source whose next answer the test sets.
#[derive(Clone)]
struct MemorySource(Arc<Mutex<Result<Vec<u8>, FetchError>>>);

impl Source for MemorySource {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn fetch(&mut self, _: Option<&str>) -> Result<Fetched, FetchError> {
        let answer = self.0.lock().unwrap().clone();
        answer.map(|bytes| Fetched::Content { bytes, content_hash: None })
    }
}

fn artifact(plaintext: &str, revision: &str, expires_at: Option<&str>, recipient: &age::x25519::Recipient) -> Vec<u8> {
    let encryptor = age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient)).unwrap();
    let mut ciphertext = Vec::new();
    let mut writer = encryptor.wrap_output(&mut ciphertext).unwrap();
    writer.write_all(plaintext.as_bytes()).unwrap();
    writer.finish().unwrap();
    let ciphertext = base64::engine::general_purpose::STANDARD.encode(ciphertext);
    let hash = crate::secret::sha256_hex(ciphertext.as_bytes());
    let mut value = serde_json::json!({
        "version": 1, "identity": "api", "environment": "prod", "packedAt": "2026-11-24T12:00:00.000Z",
        "revision": revision, "ciphertextHash": hash, "ciphertext": ciphertext,
    });
    if let Some(expires_at) = expires_at {
        value["expiresAt"] = expires_at.into();
    }
    value.to_string().into_bytes()
}

struct Fixture {
    api: Api,
    source: MemorySource,
    recipient: age::x25519::Recipient,
}

fn fixture(mode: Mode) -> Fixture {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public();
    let keys = Arc::new(DecryptionKeys {
        age: Some(AgeIdentity::parse(identity.to_string().expose_secret()).unwrap()),
        kms: None,
    });
    let source = MemorySource(Arc::new(Mutex::new(Ok(artifact(PLAINTEXT, "r1", None, &recipient)))));
    let cell = Arc::new(LiveSnapshot::new(mode));
    let refresher = Arc::new(Refresher::new(
        Arc::clone(&cell),
        Pipeline::new(Box::new(source.clone()), Arc::clone(&keys), None, None),
        Default::default(),
    ));
    let api = Api { cell, refresher, keys, token: Secret::new(TOKEN.into()) };
    Fixture { api, source, recipient }
}

fn cached() -> Fixture {
    let fixture = fixture(Mode::Cached { ttl: Duration::from_secs(60) });
    fixture.api.refresher.refresh(NOW).unwrap();
    fixture
}

fn get<'a>(target: &'a str, authorization: Option<&'a str>) -> Request<'a> {
    Request { method: "GET", target, hosts: &["127.0.0.1:7779"], authorization, forwarded: false, accept: &[] }
}

const BEARER: Option<&str> = Some("Bearer test-token-0123456789");

fn body(reply: &Reply) -> &str {
    std::str::from_utf8(reply.body.bytes()).unwrap()
}

#[test]
fn serves_the_plaintext_exactly_with_no_store() {
    let fixture = cached();
    let reply = fixture.api.handle(&get("/v1/secrets", BEARER), NOW);
    assert_eq!((reply.status, body(&reply), reply.content_type), (200, PLAINTEXT, JSON));
    assert!(reply.no_store);
}

#[test]
fn lists_keys_in_plaintext_order() {
    let reply = cached().api.handle(&get("/v1/keys", BEARER), NOW);
    assert_eq!(body(&reply), r#"["database__DB_PASSWORD","database__DB USER","app__API_KEY"]"#);
}

#[test]
fn serves_one_namespace_and_one_value() {
    let fixture = cached();
    let namespace = fixture.api.handle(&get("/v1/secrets/app/", BEARER), NOW);
    assert_eq!((namespace.status, body(&namespace)), (200, r#"{"API_KEY":"k-1"}"#));
    let value = fixture.api.handle(&get("/v1/secrets/database/DB%20USER?ignored=1", BEARER), NOW);
    assert_eq!((value.status, body(&value), value.content_type), (200, "admin", TEXT));
    let flat = fixture.api.handle(&get("/v1/secrets/database__DB_PASSWORD", BEARER), NOW);
    assert_eq!((flat.status, body(&flat)), (200, "pw-1"));
    let missing = fixture.api.handle(&get("/v1/secrets/database/NOPE", BEARER), NOW);
    assert_eq!((missing.status, body(&missing), missing.no_store), (404, r#"{"error":"Secret not found"}"#, true));
}

fn cached_with(plaintext: &str) -> Fixture {
    let fixture = fixture(Mode::Cached { ttl: Duration::from_secs(60) });
    *fixture.source.0.lock().unwrap() = Ok(artifact(plaintext, "r1", None, &fixture.recipient));
    fixture.api.refresher.refresh(NOW).unwrap();
    fixture
}

#[test]
fn serves_a_flat_plaintext_as_is_with_its_keys_and_each_value() {
    let flat = r#"{"DB_PASSWORD":"pw-1","database__DB_HOST":"db.internal","API KEY":"a\"b"}"#;
    let api = cached_with(flat).api;
    let secrets = api.handle(&get("/v1/secrets", BEARER), NOW);
    assert_eq!((secrets.status, body(&secrets), secrets.content_type), (200, flat, JSON));
    let keys = api.handle(&get("/v1/keys", BEARER), NOW);
    assert_eq!(body(&keys), r#"["DB_PASSWORD","database__DB_HOST","API KEY"]"#);
    for (target, value) in [
        ("/v1/secrets/DB_PASSWORD", "pw-1"),
        ("/v1/secrets/database__DB_HOST/", "db.internal"),
        ("/v1/secrets/API%20KEY", "a\"b"),
    ] {
        let reply = api.handle(&get(target, BEARER), NOW);
        assert_eq!((reply.status, body(&reply), reply.content_type), (200, value, TEXT), "{target}");
        assert!(reply.no_store);
    }
    // A flat plaintext has no namespaces: the two-segment route finds nothing.
    for target in ["/v1/secrets/database/DB_HOST", "/v1/secrets/NOPE"] {
        let reply = api.handle(&get(target, BEARER), NOW);
        assert_eq!((reply.status, body(&reply)), (404, r#"{"error":"Secret not found"}"#), "{target}");
    }
}

#[test]
fn a_namespace_name_wins_over_a_flat_name_in_a_nested_plaintext() {
    let api = cached_with(r#"{"db__PASS":{"X":"namespace"},"db":{"PASS":"value"}}"#).api;
    let namespace = api.handle(&get("/v1/secrets/db__PASS", BEARER), NOW);
    assert_eq!((namespace.status, body(&namespace), namespace.content_type), (200, r#"{"X":"namespace"}"#, JSON));
    let value = api.handle(&get("/v1/secrets/db/PASS", BEARER), NOW);
    assert_eq!(body(&value), "value");
}

fn accepting<'a>(target: &'a str, accept: &'a [&'a str]) -> Request<'a> {
    Request { accept, ..get(target, BEARER) }
}

#[test]
fn single_values_answer_json_when_accept_prefers_it() {
    let api = cached().api;
    for target in ["/v1/secrets/database/DB%20USER", "/v1/secrets/database__DB%20USER"] {
        let reply = api.handle(&accepting(target, &["application/json"]), NOW);
        assert_eq!((reply.status, body(&reply), reply.content_type), (200, r#"{"value":"admin"}"#, JSON), "{target}");
        assert!(reply.no_store);
        for accept in [&[][..], &["*/*"], &["text/plain, application/json;q=0.9"]] {
            let reply = api.handle(&accepting(target, accept), NOW);
            assert_eq!((body(&reply), reply.content_type), ("admin", TEXT), "{target} {accept:?}");
        }
    }
    let flat = cached_with(r#"{"TOKEN":"q\"\\\n\u0001é"}"#).api;
    let reply = flat.handle(&accepting("/v1/secrets/TOKEN", &["text/plain;q=0.1", "application/json"]), NOW);
    assert_eq!((body(&reply), reply.content_type), (r#"{"value":"q\"\\\n\u0001é"}"#, JSON));
    let parsed: serde_json::Value = serde_json::from_str(body(&reply)).unwrap();
    assert_eq!(parsed["value"], "q\"\\\n\u{1}é");
}

#[test]
fn accept_does_not_change_object_answers_or_errors() {
    let api = cached().api;
    let namespace = api.handle(&accepting("/v1/secrets/app", &["application/json"]), NOW);
    assert_eq!(body(&namespace), r#"{"API_KEY":"k-1"}"#);
    let missing = api.handle(&accepting("/v1/secrets/app/NOPE", &["application/json"]), NOW);
    assert_eq!((missing.status, body(&missing)), (404, r#"{"error":"Secret not found"}"#));
}

#[test]
fn health_and_ready_need_no_token() {
    let fixture = cached();
    let health = fixture.api.handle(&get("/v1/health", None), NOW);
    assert_eq!(
        body(&health),
        format!(r#"{{"status":"ok","mode":"cached","revision":"r1","lastRefreshAt":{NOW},"expired":false}}"#)
    );
    assert!(!health.no_store);
    let ready = fixture.api.handle(&get("/v1/ready", None), NOW);
    assert_eq!((ready.status, body(&ready)), (200, r#"{"ready":true}"#));
}

#[test]
fn before_the_first_load_nothing_is_ready() {
    let fixture = fixture(Mode::Cached { ttl: Duration::from_secs(60) });
    let ready = fixture.api.handle(&get("/v1/ready", None), NOW);
    assert_eq!((ready.status, body(&ready)), (503, r#"{"ready":false,"reason":"not_loaded"}"#));
    let secrets = fixture.api.handle(&get("/v1/secrets", BEARER), NOW);
    assert_eq!((secrets.status, body(&secrets)), (503, r#"{"error":"Secrets not yet loaded"}"#));
    let health = fixture.api.handle(&get("/v1/health", None), NOW);
    assert!(body(&health).contains(r#""revision":null,"lastRefreshAt":null"#), "{}", body(&health));
}

#[test]
fn rejects_a_foreign_or_missing_host_before_anything_else() {
    let api = cached().api;
    for hosts in [
        &["evil.example"][..],
        &[][..],
        &["127.0.0.1", "127.0.0.1"][..],
        &["127.0.0.1:99999"][..],
        &["127.0.0.2"][..],
        &["127.0.0.1:+80"][..],
        &["[::1]:-1"][..],
        &["localhost:80a"][..],
    ] {
        let request =
            Request { method: "POST", target: "/v1/secrets", hosts, authorization: None, forwarded: true, accept: &[] };
        let reply = api.handle(&request, NOW);
        assert_eq!((reply.status, body(&reply)), (403, r#"{"error":"Forbidden: invalid Host header"}"#));
        assert!(reply.no_store);
    }
    for host in ["127.0.0.1", "localhost:7779", "LOCALHOST", "[::1]", "[::1]:7779", "localhost:", "[::1]:"] {
        let request = Request { hosts: &[host], ..get("/v1/health", None) };
        assert_eq!(api.handle(&request, NOW).status, 200, "{host}");
    }
}

#[test]
fn allows_only_get_and_head() {
    let api = cached().api;
    let reply = api.handle(&Request { method: "POST", ..get("/v1/secrets", None) }, NOW);
    assert_eq!((reply.status, body(&reply)), (405, r#"{"error":"Method not allowed"}"#));
    assert_eq!(reply.headers, [("Allow", "GET, HEAD")]);
    assert_eq!(api.handle(&Request { method: "HEAD", ..get("/v1/secrets", BEARER) }, NOW).status, 200);
}

#[test]
fn secrets_need_the_bearer_token() {
    let api = cached().api;
    for authorization in
        [None, Some("Bearer wrong"), Some("Basic dGVzdA=="), Some("Bearer"), Some("test-token-0123456789")]
    {
        let reply = api.handle(&get("/v1/secrets/app", authorization), NOW);
        assert_eq!((reply.status, body(&reply)), (401, r#"{"error":"Unauthorized"}"#), "{authorization:?}");
        assert_eq!(reply.headers, [("WWW-Authenticate", "Bearer")]);
        assert!(reply.no_store);
    }
    assert_eq!(api.handle(&get("/v1/keys", Some("bearer test-token-0123456789")), NOW).status, 200);
}

#[test]
fn refuses_proxied_secret_requests() {
    let api = cached().api;
    let reply = api.handle(&Request { forwarded: true, ..get("/v1/secrets", BEARER) }, NOW);
    assert_eq!((reply.status, body(&reply)), (403, r#"{"error":"Forbidden: proxied requests are not accepted"}"#));
}

#[test]
fn unknown_and_undecodable_paths() {
    let api = cached().api;
    let unknown = api.handle(&get("/v2/secrets", BEARER), NOW);
    assert_eq!((unknown.status, body(&unknown)), (404, r#"{"error":"Not found"}"#));
    let bad = api.handle(&get("/v1/secrets/%zz", BEARER), NOW);
    assert_eq!(
        (bad.status, body(&bad)),
        (400, r#"{"error":"Bad request","detail":"the path has an invalid percent-escape"}"#)
    );
    let not_utf8 = api.handle(&get("/v1/secrets/%ff", BEARER), NOW);
    assert_eq!(not_utf8.status, 400);
}

#[test]
fn an_expired_cache_refreshes_once_and_serves_the_new_revision() {
    let fixture = cached();
    *fixture.source.0.lock().unwrap() = Ok(artifact(r#"{"app":{"API_KEY":"k-2"}}"#, "r2", None, &fixture.recipient));
    let later = NOW + 61_000;
    let reply = fixture.api.handle(&get("/v1/secrets/app/API_KEY", BEARER), later);
    assert_eq!((reply.status, body(&reply)), (200, "k-2"));
    assert_eq!(fixture.api.cell.last_refresh_at_ms(), Some(later));
}

#[test]
fn an_expired_cache_whose_refresh_fails_answers_503_and_is_wiped() {
    let fixture = cached();
    *fixture.source.0.lock().unwrap() = Err(FetchError::Network { source: "memory".into(), detail: "down".into() });
    let within_ttl = fixture.api.handle(&get("/v1/secrets", BEARER), NOW + 59_000);
    assert_eq!(within_ttl.status, 200, "stale-on-error within the TTL");
    let reply = fixture.api.handle(&get("/v1/secrets", BEARER), NOW + 61_000);
    assert_eq!(
        (reply.status, body(&reply)),
        (503, r#"{"error":"Refresh failed","detail":"cannot reach memory: down"}"#)
    );
    assert!(matches!(*fixture.api.cell.current(), Served::Wiped(Wipe::CacheExpired)));
    let ready = fixture.api.handle(&get("/v1/ready", None), NOW + 61_000);
    assert_eq!(body(&ready), r#"{"ready":false,"reason":"cache_expired"}"#);
    // The source comes back with the very same artifact: the wipe forgot it, so it loads again
    // on the first request after the pause that follows a failure.
    *fixture.source.0.lock().unwrap() = Ok(artifact(PLAINTEXT, "r1", None, &fixture.recipient));
    let paused = fixture.api.handle(&get("/v1/secrets", BEARER), NOW + 61_000 + 4_999);
    assert_eq!((paused.status, body(&paused)), (503, body(&reply)), "the stored failure, no fetch");
    let recovered = fixture.api.handle(&get("/v1/secrets", BEARER), NOW + 61_000 + 5_000);
    assert_eq!((recovered.status, body(&recovered)), (200, PLAINTEXT));
}

#[test]
fn a_revocation_wipes_the_secrets_until_a_new_artifact_arrives() {
    let fixture = cached();
    *fixture.source.0.lock().unwrap() =
        Ok(br#"{"identity":"api","environment":"prod","revokedAt":"2026-11-24T13:00:00Z"}"#.to_vec());
    assert!(fixture.api.refresher.refresh(NOW + 1).is_err());
    let reply = fixture.api.handle(&get("/v1/secrets", BEARER), NOW + 2);
    assert_eq!(
        (reply.status, body(&reply)),
        (503, r#"{"error":"Artifact revoked","detail":"Artifact revoked: api/prod at 2026-11-24T13:00:00Z"}"#)
    );
    assert_eq!(body(&fixture.api.handle(&get("/v1/ready", None), NOW + 2)), r#"{"ready":false,"reason":"revoked"}"#);
    let after_ttl = fixture.api.handle(&get("/v1/secrets", BEARER), NOW + 120_000);
    assert_eq!((after_ttl.status, body(&after_ttl)), (503, body(&reply)), "still revoked, not a refresh failure");
    *fixture.source.0.lock().unwrap() = Ok(artifact(PLAINTEXT, "r1", None, &fixture.recipient));
    fixture.api.refresher.refresh(NOW + 3).unwrap();
    assert_eq!(fixture.api.handle(&get("/v1/secrets", BEARER), NOW + 4).status, 200);
}

#[test]
fn an_artifact_past_its_expiry_is_not_served_even_before_the_poller_runs() {
    let fixture = fixture(Mode::Cached { ttl: Duration::from_secs(60) });
    *fixture.source.0.lock().unwrap() =
        Ok(artifact(PLAINTEXT, "r1", Some("2027-06-01T00:00:00.000Z"), &fixture.recipient));
    fixture.api.refresher.refresh(NOW).unwrap();
    let expiry = crate::time::parse_iso8601_ms("2027-06-01T00:00:00.000Z").unwrap() as u64;
    let after = expiry + 1;
    fixture.api.cell.mark_fresh(after);
    let reply = fixture.api.handle(&get("/v1/secrets", BEARER), after);
    assert_eq!(
        (reply.status, body(&reply)),
        (503, r#"{"error":"Artifact expired","detail":"Artifact expired at 2027-06-01T00:00:00.000Z"}"#)
    );
    assert_eq!(
        body(&fixture.api.handle(&get("/v1/ready", None), after)),
        r#"{"ready":false,"reason":"artifact_expired"}"#
    );
}

#[test]
fn jit_mode_decrypts_per_request() {
    let fixture = fixture(Mode::Jit);
    fixture.api.refresher.refresh(NOW).unwrap();
    assert!(matches!(*fixture.api.cell.current(), Served::Jit(_)));
    let reply = fixture.api.handle(&get("/v1/secrets", BEARER), NOW + 3_600_000);
    assert_eq!((reply.status, body(&reply)), (200, PLAINTEXT));
    assert!(body(&fixture.api.handle(&get("/v1/health", None), NOW)).contains(r#""mode":"jit""#));
}

fn post<'a>(target: &'a str, authorization: Option<&'a str>) -> Request<'a> {
    Request { method: "POST", ..get(target, authorization) }
}

#[test]
fn refresh_takes_only_post_and_other_routes_still_only_get_and_head() {
    let api = cached().api;
    for method in ["GET", "HEAD", "PUT"] {
        let reply = api.handle(&Request { method, ..get("/v1/refresh", BEARER) }, NOW);
        assert_eq!((reply.status, body(&reply)), (405, r#"{"error":"Method not allowed"}"#), "{method}");
        assert_eq!(reply.headers, [("Allow", "POST")]);
    }
    let reply = api.handle(&post("/v1/secrets", BEARER), NOW);
    assert_eq!((reply.status, reply.headers.as_slice()), (405, &[("Allow", "GET, HEAD")][..]));
}

#[test]
fn refresh_needs_the_bearer_token_and_refuses_proxied_calls() {
    let api = cached().api;
    for authorization in [None, Some("Bearer wrong")] {
        let reply = api.handle(&post("/v1/refresh", authorization), NOW);
        assert_eq!((reply.status, body(&reply)), (401, r#"{"error":"Unauthorized"}"#));
    }
    let reply = api.handle(&Request { forwarded: true, ..post("/v1/refresh/", BEARER) }, NOW);
    assert_eq!(reply.status, 403);
}

#[test]
fn refresh_answers_the_revision_served_and_whether_it_changed() {
    let fixture = cached();
    // Within a second of the load, a call shares its result: r1, newly loaded.
    let reply = fixture.api.handle(&post("/v1/refresh", BEARER), NOW);
    assert_eq!((reply.status, body(&reply), reply.content_type), (200, r#"{"revision":"r1","changed":true}"#, JSON));
    *fixture.source.0.lock().unwrap() = Err(FetchError::Network { source: "memory".into(), detail: "down".into() });
    let waited = std::time::Instant::now();
    while waited.elapsed() < crate::refresh::DEMAND_MIN_INTERVAL {
        std::thread::sleep(Duration::from_millis(50));
    }
    let reply = fixture.api.handle(&post("/v1/refresh", BEARER), NOW + 2_000);
    assert_eq!(reply.status, 503, "{}", body(&reply));
    assert!(body(&reply).starts_with(r#"{"error":"Refresh failed","detail":"#), "{}", body(&reply));
}
