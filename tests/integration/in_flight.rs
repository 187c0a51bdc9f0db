//! Requests in flight and signals (SPEC §7, §11): a slow reader of a 20 MB body gets all of it
//! however long it takes; at SIGTERM the listener closes first, then the requests in flight
//! get their grace, then a refresh that hangs gets its own bounded wait; a burst of SIGHUPs
//! during a refresh asks for one more refresh, not one each (daemon and Lambda alike).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::loopback::{ExtensionsApi, HeldSource, SHUTDOWN};
use crate::support::{build_artifact, wait_until, Agent, ArtifactOptions, Deployment, SlowReader, READY_LINE, TOKEN};

/// SPEC §7: in-flight requests get 3 s, then a refresh in progress 1 s.
const GRACE: Duration = Duration::from_secs(3);
const POLLER_WAIT: Duration = Duration::from_secs(1);
/// Slack for a loaded machine.
const SLACK: Duration = Duration::from_millis(1500);
/// Generous: each step takes the agent milliseconds.
const STEP: Duration = Duration::from_secs(10);
/// Loading a 20 MB artifact, for a debug build on a loaded machine.
const LARGE_READY: Duration = Duration::from_secs(60);
const SLOW_POLLING: (&str, &str) = ("CLEF_AGENT_CACHE_TTL", "300");
/// The body of the large tests: bigger than any socket buffer on the way.
const LARGE_BODY_BYTES: usize = 20 * 1000 * 1000;

/// A plaintext whose `/v1/secrets` body (the plaintext itself) is `bytes` long, its value a
/// pattern that does not repeat in step with any buffer size, so a lost or repeated piece shows.
fn large_plaintext(bytes: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let (prefix, suffix) = (r#"{"bulk":{"VALUE":""#, r#""}}"#);
    let length = bytes - prefix.len() - suffix.len();
    let value: String = (0..length).map(|i| ALPHABET[(i * 7 + i / 4093) % ALPHABET.len()] as char).collect();
    format!("{prefix}{value}{suffix}")
}

/// Starts the agent on a large artifact: loading it takes a debug build seconds.
fn start_large(deployment: &Deployment, extra: &[(&str, &str)]) -> Agent {
    let agent = deployment.spawn(extra);
    agent.wait_for_stdout(READY_LINE, LARGE_READY);
    agent
}

fn artifact(plaintext: &str) -> String {
    build_artifact(plaintext, "rev-1", &ArtifactOptions::default())
}

/// Asserts that `received` is the whole of `expected`, without printing 20 MB when it is not.
fn assert_whole_body(status: u16, received: &[u8], expected: &str) {
    assert_eq!(status, 200);
    assert_eq!(received.len(), expected.len(), "the body was cut");
    let differs = received.iter().zip(expected.as_bytes()).position(|(got, want)| got != want);
    assert_eq!(differs, None, "the body differs at this byte");
}

#[test]
fn a_20_mb_body_read_slowly_arrives_whole_after_longer_than_any_connection_timeout() {
    let plaintext = large_plaintext(LARGE_BODY_BYTES);
    let deployment = Deployment::new("slow-reader", &artifact(&plaintext));
    let agent = start_large(&deployment, &[]);
    let started = Instant::now();
    let mut reader = SlowReader::get(deployment.port, "/v1/secrets", TOKEN);
    // About 1 MB/s: the agent writes for most of 20 s while the client sends nothing, twice
    // the idle and head timeouts (10 s) — and more than the old janitor allowed.
    reader.read(usize::MAX, Duration::from_millis(64)).expect("the agent stopped writing");
    let took = started.elapsed();
    let (status, body) = reader.answer();
    assert_whole_body(status, body, &plaintext);
    assert!(took > Duration::from_secs(12), "read too fast to prove anything: {took:?}");
    assert!(agent.is_running());
}

/// True when a new connection is refused, or closed without an answer to `GET /v1/health`.
fn new_connection_is_not_served(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return true };
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let request = format!("GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return true;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer.is_empty()
}

#[test]
fn sigterm_closes_the_listener_first_and_answers_the_request_in_flight_although_a_fetch_hangs() {
    let plaintext = large_plaintext(LARGE_BODY_BYTES);
    let source = HeldSource::start(artifact(&plaintext));
    let deployment = Deployment::new("sigterm-order", "{}");
    let agent = start_large(&deployment, &[("CLEF_AGENT_SOURCE", &source.url()), SLOW_POLLING]);
    // The poller's next fetch hangs.
    agent.signal(libc::SIGHUP);
    assert!(source.wait_for_fetches(2, STEP), "SIGHUP did not fetch");
    // A request in flight: its answer is still being written.
    let mut in_flight = SlowReader::get(deployment.port, "/v1/secrets", TOKEN);
    in_flight.read(256 * 1024, Duration::ZERO).expect("no answer began");

    agent.signal(libc::SIGTERM);
    let signalled = Instant::now();
    assert!(
        wait_until(Duration::from_secs(1), || new_connection_is_not_served(deployment.port)),
        "new connections were still served after SIGTERM"
    );
    in_flight.read(usize::MAX, Duration::ZERO).expect("the answer in flight stopped");
    let (status, body) = in_flight.answer();
    assert_whole_body(status, body, &plaintext);
    let status = agent.wait_exit(GRACE + POLLER_WAIT + SLACK).expect("the agent waited on the hung fetch");
    assert_eq!(status.code(), Some(0), "{}", agent.stderr());
    assert!(signalled.elapsed() < GRACE + POLLER_WAIT + SLACK, "shutdown took {:?}", signalled.elapsed());
    assert_eq!(source.fetches(), 2);
}

/// 200 SIGHUPs while the refresh of a first one hangs, then the fetch is let go: the burst
/// should add one refresh. Fetches are all answered from then on.
fn burst_of_sighups_during_a_held_refresh(source: &HeldSource, agent: &Agent) {
    agent.signal(libc::SIGHUP);
    assert!(source.wait_for_fetches(2, STEP), "SIGHUP did not fetch");
    for _ in 0..200 {
        agent.signal(libc::SIGHUP);
        // Apart enough that the agent takes each signal on its own.
        std::thread::sleep(Duration::from_millis(1));
    }
    source.release();
}

#[test]
fn a_burst_of_sighups_during_a_refresh_costs_one_more_fetch_not_one_each() {
    let source = HeldSource::start(artifact(crate::support::PLAINTEXT));
    let deployment = Deployment::new("sighup-burst", "{}");
    let agent = deployment.start(&[("CLEF_AGENT_SOURCE", &source.url()), SLOW_POLLING]);
    burst_of_sighups_during_a_held_refresh(&source, &agent);
    assert!(source.wait_for_fetches(3, STEP), "the burst asked for no refresh at all");
    // What more the burst had queued would follow at once.
    assert!(!source.wait_for_fetches(4, Duration::from_secs(2)), "{} fetches", source.fetches());
}

#[test]
fn in_lambda_a_burst_of_sighups_costs_one_more_fetch_and_shutdown_stays_quick() {
    let source = HeldSource::start(artifact(crate::support::PLAINTEXT));
    let deployment = Deployment::new("sighup-burst-lambda", "{}");
    let api = ExtensionsApi::start(deployment.port);
    let runtime_api = api.runtime_api();
    let agent = deployment.start(&[
        ("CLEF_AGENT_SOURCE", &source.url()),
        SLOW_POLLING,
        ("AWS_LAMBDA_RUNTIME_API", &runtime_api),
    ]);
    api.wait_for_next_request(1, &agent);
    burst_of_sighups_during_a_held_refresh(&source, &agent);
    api.release(SHUTDOWN);
    let released = Instant::now();
    let status = agent.wait_exit(STEP).expect("the agent did not exit after SHUTDOWN");
    assert_eq!(status.code(), Some(0), "{}", agent.stderr());
    assert!(released.elapsed() < Duration::from_secs(2), "SHUTDOWN took {:?}", released.elapsed());
    assert!(source.fetches() <= 3, "{} fetches", source.fetches());
}

/// A SIGHUP while the first artifact is still being fetched must not use up SIGHUP for good:
/// between start-up attempts it starts the next attempt at once, and once serving, the next
/// SIGHUP refreshes as always.
#[test]
fn a_sighup_during_start_up_retries_at_once_and_later_sighups_still_refresh() {
    let deployment = Deployment::new("in-flight-sighup-start", "");
    std::fs::remove_file(&deployment.artifact).unwrap();
    let agent = deployment.spawn(&[]);
    agent.wait_for_stderr("initial fetch failed (attempt 1 of 3)", Duration::from_secs(10));
    deployment.publish(&build_artifact(crate::support::PLAINTEXT, "rev-1", &ArtifactOptions::default()));
    let asked = Instant::now();
    agent.signal(libc::SIGHUP);
    agent.wait_for_stdout(READY_LINE, Duration::from_secs(10));
    let started_after = asked.elapsed();
    assert!(
        started_after < Duration::from_millis(1500),
        "the SIGHUP did not retry at once: ready after {started_after:?}"
    );

    deployment.publish(&build_artifact(crate::support::PLAINTEXT_ROTATED, "rev-2", &ArtifactOptions::default()));
    agent.signal(libc::SIGHUP);
    let refreshed = wait_until(Duration::from_secs(5), || {
        agent.get("/v1/secrets").body == crate::support::PLAINTEXT_ROTATED.as_bytes()
    });
    assert!(refreshed, "a SIGHUP after start-up did not refresh: {}", agent.stderr());
}
