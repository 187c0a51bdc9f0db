//! `POST /v1/refresh`: a refresh on request, single-flight, at most one fetch a second,
//! bearer-only, answering the revision served and whether it changed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::loopback::HeldSource;
use crate::support::{
    build_artifact, free_port, last_refresh_at, request, wait_until, Agent, ArtifactOptions, Deployment, PLAINTEXT,
    PLAINTEXT_ROTATED, TOKEN,
};

const QUICK: Duration = Duration::from_secs(10);
/// The poller never runs during these tests (a 300 s TTL polls after 27 s at the earliest).
const SLOW_POLLING: (&str, &str) = ("CLEF_AGENT_CACHE_TTL", "300");

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn refresh(agent: &Agent) -> crate::support::Response {
    request(agent.port(), "POST", "/v1/refresh", &[("Authorization", &bearer())])
}

/// Waits until a second has passed since `since`, so the next call may fetch again.
fn past_the_rate_limit(since: Instant) {
    assert!(wait_until(Duration::from_secs(3), || since.elapsed() > Duration::from_millis(1_100)));
}

#[test]
fn sixteen_concurrent_calls_share_one_fetch() {
    let source = HeldSource::start(build_artifact(PLAINTEXT, "r1", &ArtifactOptions::default()));
    let port = free_port();
    let env = [
        ("CLEF_AGENT_SOURCE", source.url()),
        ("CLEF_AGENT_AGE_KEY_FILE", crate::support::fixture("keys/demo.agekey").display().to_string()),
        ("CLEF_AGENT_PORT", port.to_string()),
        ("CLEF_AGENT_TOKEN", TOKEN.to_string()),
        (SLOW_POLLING.0, SLOW_POLLING.1.to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let agent = Agent::start_ready(&env);
    assert_eq!(source.fetches(), 1, "start-up");
    // Calls within a second of the start-up fetch would share its result instead.
    past_the_rate_limit(Instant::now());

    // Every call is sent while the one fetch is held, so all of them find it running.
    let sent = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let sent = Arc::clone(&sent);
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                stream.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
                let head = format!(
                    "POST /v1/refresh HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
                );
                stream.write_all(head.as_bytes()).expect("send");
                sent.fetch_add(1, Ordering::SeqCst);
                let mut answer = String::new();
                stream.read_to_string(&mut answer).expect("read");
                answer
            })
        })
        .collect();
    assert!(source.wait_for_fetches(2, QUICK), "no fetch started\n{}", agent.stderr());
    assert!(wait_until(QUICK, || sent.load(Ordering::SeqCst) == 16));
    source.release();
    for caller in callers {
        let answer = caller.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(answer.ends_with(r#"{"revision":"r1","changed":false}"#), "{answer}");
    }
    assert_eq!(source.fetches(), 2, "16 calls, one fetch (plus the start-up one)");
}

#[test]
fn needs_the_token_takes_only_post_and_fetches_nothing_when_refused() {
    let deployment = Deployment::new("refresh-guards", &build_artifact(PLAINTEXT, "r1", &ArtifactOptions::default()));
    let agent = deployment.start(&[SLOW_POLLING]);
    let loaded_at = last_refresh_at(&agent);
    let refused = request(agent.port(), "POST", "/v1/refresh", &[]);
    refused.assert(401, r#"{"error":"Unauthorized"}"#);
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    let wrong = request(agent.port(), "POST", "/v1/refresh", &[("Authorization", "Bearer not-the-token")]);
    assert_eq!(wrong.status, 401);
    let get = request(agent.port(), "GET", "/v1/refresh", &[("Authorization", &bearer())]);
    get.assert(405, r#"{"error":"Method not allowed"}"#);
    assert_eq!(get.header("allow"), Some("POST"));
    let with_body =
        request(agent.port(), "POST", "/v1/refresh", &[("Authorization", &bearer()), ("Content-Length", "2")]);
    assert_eq!(with_body.status, 400, "a body is refused here as everywhere");
    assert_eq!(last_refresh_at(&agent), loaded_at, "a refused call refreshed");
}

#[test]
fn answers_changed_after_a_rotation_and_unchanged_otherwise() {
    let deployment = Deployment::new("refresh-changed", &build_artifact(PLAINTEXT, "r1", &ArtifactOptions::default()));
    let agent = deployment.start(&[SLOW_POLLING]);
    let started = Instant::now();
    past_the_rate_limit(started);

    let unchanged = refresh(&agent);
    unchanged.assert(200, r#"{"revision":"r1","changed":false}"#);
    assert_eq!(unchanged.header("content-type"), Some("application/json; charset=utf-8"));
    let asked = Instant::now();

    deployment.publish(&build_artifact(PLAINTEXT_ROTATED, "r2", &ArtifactOptions::default()));
    past_the_rate_limit(asked);
    let with_length =
        request(agent.port(), "POST", "/v1/refresh", &[("Authorization", &bearer()), ("Content-Length", "0")]);
    with_length.assert(200, r#"{"revision":"r2","changed":true}"#);
    agent.get("/v1/secrets").assert(200, PLAINTEXT_ROTATED);
    assert!(agent.stdout().contains("refreshed: revision r2"), "{}", agent.stdout());

    // A rejected artifact: the failure's status and reason, the last good secrets kept.
    deployment.publish("{not json");
    past_the_rate_limit(Instant::now());
    let rejected = refresh(&agent);
    assert_eq!(rejected.status, 503, "{}", rejected.text());
    assert_eq!(rejected.json()["error"], "Refresh failed");
    assert!(rejected.json()["detail"].as_str().unwrap_or_default().contains("json_parse"), "{}", rejected.text());
    agent.get("/v1/secrets").assert(200, PLAINTEXT_ROTATED);
}
