//! Rollback protection (SPEC §11): with a verify key, a signed artifact older than the newest
//! one accepted — or than a revocation — is refused, in cached and JIT mode, and across a
//! restart when `CLEF_AGENT_CACHE_PATH` keeps the mark. Without a verify key nothing changes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::loopback::collector;
use crate::support::{
    build_artifact, read_fixture, wait_until, Agent, ArtifactOptions, Deployment, PLAINTEXT, PLAINTEXT_ROTATED,
};

const OLDER: &str = "2026-11-24T12:00:00.000Z";
const NEWER: &str = "2026-11-25T12:00:00.000Z";
const NEWEST: &str = "2026-11-26T12:00:00.000Z";
/// SIGHUP acts at once; the JIT poller within 5 s.
const SIGHUP_LIMIT: Duration = Duration::from_secs(2);
const POLL_LIMIT: Duration = Duration::from_secs(10);
/// Three start-up attempts with 2 s and 4 s between them.
const STARTUP_FAILURE_LIMIT: Duration = Duration::from_secs(20);
const SLOW_POLLING: (&str, &str) = ("CLEF_AGENT_CACHE_TTL", "300");

fn signed_at(plaintext: &str, revision: &str, packed_at: &str) -> String {
    let options = ArtifactOptions { signed: true, packed_at: Some(packed_at.into()), ..ArtifactOptions::default() };
    build_artifact(plaintext, revision, &options)
}

fn verify_key() -> String {
    read_fixture("keys/ed25519.spki.b64").trim().to_string()
}

fn rollback_line(packed_at: &str, in_service: &str) -> String {
    format!(
        "[clef-agent] poll error: artifact rejected (rollback): the artifact was packed at {packed_at}, \
         older than the one in service (packed at {in_service}): an older artifact was published again"
    )
}

/// Publishes `artifact`, sends SIGHUP and returns the poll error line it causes.
fn publish_refused(deployment: &Deployment, agent: &Agent, artifact: &str) -> String {
    let errors_before = agent.stderr().matches("poll error: ").count();
    deployment.publish(artifact);
    agent.signal(libc::SIGHUP);
    assert!(
        wait_until(SIGHUP_LIMIT, || agent.stderr().matches("poll error: ").count() > errors_before),
        "no poll error after SIGHUP; stdout: {}\nstderr: {}",
        agent.stdout(),
        agent.stderr()
    );
    agent.stderr().lines().rev().find(|line| line.contains("poll error: ")).unwrap_or_default().to_string()
}

/// Publishes `artifact`, sends SIGHUP and waits until `/v1/secrets` serves `plaintext`.
fn publish_served(deployment: &Deployment, agent: &Agent, artifact: &str, plaintext: &str) {
    deployment.publish(artifact);
    agent.signal(libc::SIGHUP);
    let served = wait_until(SIGHUP_LIMIT, || {
        let response = agent.get("/v1/secrets");
        response.status == 200 && response.body == plaintext.as_bytes()
    });
    assert!(served, "not served after SIGHUP; stderr: {}", agent.stderr());
}

fn rollback_marks(dir: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir).map(|entries| entries.flatten().map(|entry| entry.path()).collect());
    let files: Vec<PathBuf> = entries.unwrap_or_default();
    files.into_iter().filter(|path| path.to_string_lossy().ends_with(".rollback-mark")).collect()
}

#[test]
fn refuses_an_older_signed_artifact_and_keeps_serving_the_newer_one() {
    let deployment = Deployment::new("rollback-older", &signed_at(PLAINTEXT_ROTATED, "rev-2", NEWER));
    let agent = deployment.start(&[("CLEF_AGENT_VERIFY_KEY", &verify_key()), SLOW_POLLING]);
    let line = publish_refused(&deployment, &agent, &signed_at(PLAINTEXT, "rev-1", OLDER));
    assert_eq!(line, rollback_line(OLDER, NEWER));
    agent.get("/v1/secrets").assert(200, PLAINTEXT_ROTATED);
    assert_eq!(agent.get("/v1/health").json()["revision"], "rev-2");

    // The same packedAt as the artifact in service is no rollback.
    publish_served(&deployment, &agent, &signed_at(PLAINTEXT, "rev-3", NEWER), PLAINTEXT);
}

#[test]
fn jit_mode_refuses_an_older_signed_artifact_on_the_poll_and_reports_rollback_to_telemetry() {
    let collector = collector();
    let telemetry = collector.url("/v1/logs");
    let deployment = Deployment::new("rollback-jit", &signed_at(PLAINTEXT_ROTATED, "rev-2", NEWER));
    let agent = deployment.start(&[
        ("CLEF_AGENT_VERIFY_KEY", &verify_key()),
        ("CLEF_AGENT_CACHE_TTL", "0"),
        ("CLEF_AGENT_TELEMETRY_URL", &telemetry),
    ]);
    deployment.publish(&signed_at(PLAINTEXT, "rev-1", OLDER));
    agent.wait_for_stderr(&rollback_line(OLDER, NEWER), POLL_LIMIT);
    agent.get("/v1/secrets").assert(200, PLAINTEXT_ROTATED);

    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(6)).and_then(|status| status.code()), Some(0));
    let bodies: Vec<String> =
        collector.requests().iter().map(|request| String::from_utf8_lossy(&request.body).into_owned()).collect();
    let reported = bodies.iter().any(|body| {
        body.contains(r#""body":{"stringValue":"artifact.invalid"}"#)
            && body.contains(r#"{"key":"clef.reason","value":{"stringValue":"rollback"}}"#)
            && body.contains(&format!("packed at {OLDER}, older than the one in service (packed at {NEWER})"))
    });
    assert!(reported, "no artifact.invalid{{reason: rollback}}: {bodies:?}");
}

#[test]
fn a_revoked_artifact_stays_revoked_when_it_or_an_older_one_is_published_again() {
    let newer = signed_at(PLAINTEXT_ROTATED, "rev-2", NEWER);
    let deployment = Deployment::new("rollback-revoked", &newer);
    let agent = deployment.start(&[("CLEF_AGENT_VERIFY_KEY", &verify_key()), SLOW_POLLING]);
    // A notice made from the signed artifact: its fields still verify, its revokedAt is signed by
    // nobody — and lies far in the future, which must lock nothing out.
    let mut notice: serde_json::Value = serde_json::from_str(&newer).unwrap();
    notice["revokedAt"] = "2099-01-01T00:00:00.000Z".into();
    let line = publish_refused(&deployment, &agent, &notice.to_string());
    assert_eq!(line, "[clef-agent] poll error: Artifact revoked: api-gateway/production at 2099-01-01T00:00:00.000Z");
    let revoked = agent.get("/v1/secrets");
    assert_eq!(revoked.status, 503);

    let line = publish_refused(&deployment, &agent, &signed_at(PLAINTEXT, "rev-1", OLDER));
    assert!(line.starts_with("[clef-agent] poll error: artifact rejected (rollback): "), "{line}");
    agent.get("/v1/secrets").assert(503, &revoked.text());
    let line = publish_refused(&deployment, &agent, &newer);
    assert_eq!(
        line,
        format!(
            "[clef-agent] poll error: artifact rejected (rollback): the artifact was packed at {NEWER}, \
             not after the revoked artifact (packed at {NEWER}): a revoked or older artifact was published again"
        )
    );
    agent.get("/v1/secrets").assert(503, &revoked.text());

    // A new pack recovers, long before the unsigned revokedAt.
    publish_served(&deployment, &agent, &signed_at(PLAINTEXT, "rev-3", NEWEST), PLAINTEXT);
}

#[test]
fn a_restart_with_a_disk_cache_cannot_be_rolled_back() {
    let deployment = Deployment::new("rollback-restart", &signed_at(PLAINTEXT_ROTATED, "rev-2", NEWER));
    let cache = deployment.dir.join("cache");
    let cache_path = cache.display().to_string();
    let env = [("CLEF_AGENT_VERIFY_KEY", verify_key()), ("CLEF_AGENT_CACHE_PATH", cache_path)];
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (*name, value.as_str())).collect();
    drop(deployment.start(&env));
    assert_eq!(rollback_marks(&cache).len(), 1, "no rollback mark in {}", cache.display());
    // A restart on the same artifact is no rollback.
    let agent = deployment.start(&env);
    agent.get("/v1/secrets").assert(200, PLAINTEXT_ROTATED);
    drop(agent);

    deployment.publish(&signed_at(PLAINTEXT, "rev-1", OLDER));
    let agent = deployment.spawn(&env);
    assert_eq!(agent.wait_exit(STARTUP_FAILURE_LIMIT).and_then(|status| status.code()), Some(1));
    let stderr = agent.stderr();
    assert!(
        stderr.contains(&format!(
            "artifact rejected (rollback): the artifact was packed at {OLDER}, older than the one in service \
             (packed at {NEWER})"
        )),
        "{stderr}"
    );
    assert!(!agent.stdout().contains("Agent server listening"), "{}", agent.stdout());
}

#[test]
fn a_damaged_rollback_mark_stops_the_start_with_a_config_error() {
    let deployment = Deployment::new("rollback-damaged", &signed_at(PLAINTEXT, "rev-1", OLDER));
    let cache = deployment.dir.join("cache");
    let cache_path = cache.display().to_string();
    let env = [("CLEF_AGENT_VERIFY_KEY", verify_key()), ("CLEF_AGENT_CACHE_PATH", cache_path)];
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (*name, value.as_str())).collect();
    drop(deployment.start(&env));
    let [mark] = rollback_marks(&cache).try_into().expect("one rollback mark");
    std::fs::write(&mark, "garbage").unwrap();

    let agent = deployment.spawn(&env);
    assert_eq!(agent.wait_exit(STARTUP_FAILURE_LIMIT).and_then(|status| status.code()), Some(1));
    let stderr = agent.stderr();
    let expected =
        format!("[clef-agent] config error: the rollback mark {} is damaged: it is not JSON", mark.display());
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert!(stderr.contains("delete it if you are sure the source serves the newest artifact"), "{stderr}");
}

#[test]
fn without_a_verify_key_an_older_artifact_is_accepted_as_before() {
    let deployment = Deployment::new("rollback-no-key", &signed_at(PLAINTEXT_ROTATED, "rev-2", NEWER));
    let cache = deployment.dir.join("cache");
    let cache_path = cache.display().to_string();
    let agent = deployment.start(&[("CLEF_AGENT_CACHE_PATH", &cache_path), SLOW_POLLING]);
    publish_served(&deployment, &agent, &signed_at(PLAINTEXT, "rev-1", OLDER), PLAINTEXT);
    assert!(rollback_marks(&cache).is_empty(), "{:?}", rollback_marks(&cache));
}
