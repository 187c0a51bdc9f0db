//! A source read that never returns (issue 16): an HTTP source that accepts and does not
//! answer for longer than the TTL, or at start-up, and a FIFO put in place of the artifact
//! file. Requests answer within seconds from what is there, the TTL wipes on time although the
//! fetch still hangs, and SIGTERM ends a start-up whose first fetch hangs.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::loopback::HeldSource;
use crate::support::{build_artifact, wait_until, ArtifactOptions, Deployment, PLAINTEXT};

/// What "answers at once" means here, with room for a loaded machine.
const QUICK: Duration = Duration::from_secs(2);
/// The agent's HTTP client gives up on a fetch after this long (`http::REQUEST_TIMEOUT`).
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// The shortest TTL the agent accepts: polls every 5 s then.
const TTL: Duration = Duration::from_secs(30);
const WIPED_LINE: &str = "cache expired: no successful refresh within CLEF_AGENT_CACHE_TTL; secrets wiped";

fn artifact() -> String {
    build_artifact(PLAINTEXT, "rev-1", &ArtifactOptions::default())
}

/// Runs `call`, failing when it took [`QUICK`] or longer.
fn quickly<T>(what: &str, call: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = call();
    assert!(started.elapsed() < QUICK, "{what} took {:?}", started.elapsed());
    result
}

/// The artifact and `.meta` files the disk cache holds.
fn cached_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    name.ends_with(".age.json") || name.ends_with(".meta")
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_fetch_that_hangs_past_the_ttl_neither_keeps_the_secrets_nor_holds_requests() {
    let source = HeldSource::start(artifact());
    let deployment = Deployment::new("hang-ttl", "{}");
    let cache_dir = deployment.dir.join("cache");
    let cache = cache_dir.display().to_string();
    let ttl = TTL.as_secs().to_string();
    let agent = deployment.start(&[
        ("CLEF_AGENT_SOURCE", &source.url()),
        ("CLEF_AGENT_CACHE_TTL", &ttl),
        ("CLEF_AGENT_CACHE_PATH", &cache),
    ]);
    let ready = Instant::now();
    assert_eq!(cached_files(&cache_dir), 2, "the disk cache holds the artifact");
    // The first poll, 5 s in, hangs until the agent's HTTP client gives up: past the TTL.
    assert!(source.wait_for_fetches(2, Duration::from_secs(10)), "no poll");
    let hung = Instant::now();
    quickly("/v1/secrets within the TTL", || agent.get("/v1/secrets")).assert(200, PLAINTEXT);

    agent.wait_for_stderr(WIPED_LINE, (TTL + Duration::from_secs(3)).saturating_sub(ready.elapsed()));
    assert_eq!(cached_files(&cache_dir), 0, "the disk cache was not purged with the wipe");
    let health = quickly("/v1/health after the TTL", || agent.get_with("/v1/health", &[])).json();
    assert_eq!((health["expired"].as_bool(), health["revision"].is_null()), (Some(true), true), "{health}");
    let secrets = quickly("/v1/secrets after the TTL", || agent.get("/v1/secrets"));
    assert_eq!(secrets.status, 503);
    let error = secrets.json();
    assert_eq!(error["error"], "Refresh failed", "{error}");
    assert!(error["detail"].as_str().is_some_and(|detail| detail.contains("has not finished within 5 s")), "{error}");
    // A SIGHUP now queues behind the hung fetch; requests still do not wait for it.
    agent.signal(libc::SIGHUP);
    assert_eq!(quickly("/v1/secrets after SIGHUP", || agent.get("/v1/secrets")).status, 503);
    quickly("/v1/health after SIGHUP", || agent.get_with("/v1/health", &[]));
    assert_eq!(source.fetches(), 2, "another fetch began: the hung one ended");
    assert!(hung.elapsed() < FETCH_TIMEOUT - Duration::from_millis(500), "the fetch may have ended: proves nothing");
}

#[test]
fn requests_after_the_ttl_wait_at_most_five_seconds_for_fetches_that_hang() {
    let source = HeldSource::failing(artifact());
    let deployment = Deployment::new("hang-request", "{}");
    let ttl = TTL.as_secs().to_string();
    let agent = deployment.start(&[("CLEF_AGENT_SOURCE", &source.url()), ("CLEF_AGENT_CACHE_TTL", &ttl)]);
    // Polls fail at once until the TTL wipes; from then on every fetch hangs.
    agent.wait_for_stderr(WIPED_LINE, TTL + Duration::from_secs(5));
    source.hold();
    let held_from = source.fetches();
    let mut details = Vec::new();
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        let asked = Instant::now();
        let secrets = agent.get("/v1/secrets");
        let took = asked.elapsed();
        assert!(took < Duration::from_secs(5) + QUICK, "a request waited {took:?} for a hung fetch");
        assert_eq!(secrets.status, 503);
        details.push(secrets.json()["detail"].as_str().unwrap_or_default().to_string());
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(source.fetches() > held_from, "no fetch was held: proves nothing");
    assert!(details.iter().any(|detail| detail.contains("has not finished within 5 s")), "{details:?}");
    quickly("/v1/health", || agent.get_with("/v1/health", &[]));
}

#[test]
fn sigterm_ends_a_start_up_whose_first_fetch_hangs_within_3_s() {
    // Connections complete in the backlog, and nothing ever answers them.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}/artifact.age.json", silent.local_addr().unwrap().port());
    let deployment = Deployment::new("hang-start", "{}");
    let agent = deployment.spawn(&[("CLEF_AGENT_SOURCE", &url)]);
    agent.wait_for_stdout("fetching initial artifact...", Duration::from_secs(10));
    // Well into the fetch.
    std::thread::sleep(Duration::from_millis(500));
    agent.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let status = agent.wait_exit(Duration::from_secs(3)).expect("SIGTERM did not end the hung start-up within 3 s");
    assert_eq!(status.code(), Some(0), "{}", agent.stderr());
    assert!(signalled.elapsed() < Duration::from_secs(3));
    assert!(agent.stdout().contains("Shutdown complete."), "{}", agent.stdout());
}

#[test]
fn a_fifo_in_place_of_the_artifact_after_start_fails_the_refresh_at_once() {
    let deployment = Deployment::new("fifo-after-start", &artifact());
    let agent = deployment.start(&[("CLEF_AGENT_CACHE_TTL", "300")]);
    std::fs::remove_file(&deployment.artifact).unwrap();
    let name = std::ffi::CString::new(deployment.artifact.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    agent.signal(libc::SIGHUP);
    assert!(
        wait_until(QUICK, || agent.stderr().contains("it is not a regular file")),
        "the refresh did not fail at once: {}",
        agent.stderr()
    );
    quickly("/v1/health", || agent.get_with("/v1/health", &[]));
    quickly("/v1/secrets", || agent.get("/v1/secrets")).assert(200, PLAINTEXT);
}
