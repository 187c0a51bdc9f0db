//! Refresh after start-up (SPEC §2, §4): rotation on the poll schedule and on SIGHUP,
//! revocation and expiry as kill signals with recovery, and rejected artifacts that leave the
//! last good secrets in place — signatures included.

use std::time::Duration;

use base64::Engine as _;

use crate::support::loopback::{Answer, Server};
use crate::support::{
    build_artifact, epoch_ms_to_iso8601, get, now_ms, read_fixture, sha256_hex, wait_until, Agent, ArtifactOptions,
    Deployment, PLAINTEXT, PLAINTEXT_ROTATED,
};

/// SIGHUP must act well within this; the poller would take ~30 s with a 300 s TTL.
const SIGHUP_LIMIT: Duration = Duration::from_secs(2);
/// A 30 s TTL polls every 5 s (the floor); this leaves slack for a loaded machine.
const POLL_LIMIT: Duration = Duration::from_secs(10);
/// Long enough that the poller never runs during a test that relies on SIGHUP.
const SLOW_POLLING: (&str, &str) = ("CLEF_AGENT_CACHE_TTL", "300");

fn unsigned() -> ArtifactOptions {
    ArtifactOptions::default()
}

fn signed() -> ArtifactOptions {
    ArtifactOptions { signed: true, ..ArtifactOptions::default() }
}

fn verify_key() -> String {
    read_fixture("keys/ed25519.spki.b64").trim().to_string()
}

/// Polls `/v1/secrets` until it answers `status` with `body`.
fn wait_for_secrets(agent: &Agent, status: u16, body: &str, limit: Duration) -> bool {
    wait_until(limit, || {
        let response = agent.get("/v1/secrets");
        response.status == status && response.body == body.as_bytes()
    })
}

/// Publishes `artifact`, sends SIGHUP and waits for the poll error it must cause.
fn publish_rejected(deployment: &Deployment, agent: &Agent, artifact: &str, error: &str) {
    let errors_before = agent.stderr().matches("poll error: ").count();
    deployment.publish(artifact);
    agent.signal(libc::SIGHUP);
    assert!(
        wait_until(SIGHUP_LIMIT, || agent.stderr().matches("poll error: ").count() > errors_before),
        "no poll error after SIGHUP; stderr: {}",
        agent.stderr()
    );
    let line = agent.stderr().lines().rev().find(|line| line.contains("poll error: ")).unwrap_or_default().to_string();
    assert!(line.starts_with(&format!("[clef-agent] poll error: {error}")), "{line}");
}

#[test]
fn picks_up_a_rotated_artifact_on_the_next_poll() {
    let deployment = Deployment::new("poll-rotation", &build_artifact(PLAINTEXT, "rev-1", &unsigned()));
    let agent = deployment.start(&[("CLEF_AGENT_CACHE_TTL", "30")]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    deployment.publish(&build_artifact(PLAINTEXT_ROTATED, "rev-2", &unsigned()));
    assert!(
        wait_for_secrets(&agent, 200, PLAINTEXT_ROTATED, POLL_LIMIT),
        "the rotated artifact was not served within {POLL_LIMIT:?}; stdout: {}\nstderr: {}",
        agent.stdout(),
        agent.stderr()
    );
    agent.wait_for_stdout("[clef-agent] refreshed: revision rev-2 (5 keys)\n", Duration::from_secs(1));
    assert_eq!(get(agent.port(), "/v1/health", &[]).json()["revision"], "rev-2");
    agent.get("/v1/secrets/database/DB_PASSWORD").assert(200, "db-pass-b702");
}

#[test]
fn refreshes_at_once_on_sighup() {
    let deployment = Deployment::new("sighup", &build_artifact(PLAINTEXT, "rev-1", &unsigned()));
    let agent = deployment.start(&[SLOW_POLLING]);
    deployment.publish(&build_artifact(PLAINTEXT_ROTATED, "rev-2", &unsigned()));
    agent.signal(libc::SIGHUP);
    assert!(
        wait_for_secrets(&agent, 200, PLAINTEXT_ROTATED, SIGHUP_LIMIT),
        "SIGHUP did not load the new artifact; stderr: {}",
        agent.stderr()
    );
    agent.wait_for_stdout("[clef-agent] refreshed: revision rev-2 (5 keys)\n", Duration::from_secs(1));
    agent.get("/v1/keys").assert(
        200,
        r#"["database__DB_URL","database__DB_PASSWORD","payments__STRIPE KEY","payments__café","payments__QUOTED"]"#,
    );
}

#[test]
fn serves_nothing_after_a_revocation_and_recovers_with_a_new_artifact() {
    let original = build_artifact(PLAINTEXT, "rev-1", &unsigned());
    let deployment = Deployment::new("revocation", &original);
    let agent = deployment.start(&[SLOW_POLLING]);
    let mut revoked: serde_json::Value = serde_json::from_str(&original).unwrap();
    revoked["revokedAt"] = "2026-11-25T08:00:00.000Z".into();
    publish_rejected(
        &deployment,
        &agent,
        &revoked.to_string(),
        "Artifact revoked: api-gateway/production at 2026-11-25T08:00:00.000Z",
    );
    let revoked_body = r#"{"error":"Artifact revoked","detail":"Artifact revoked: api-gateway/production at 2026-11-25T08:00:00.000Z"}"#;
    for path in ["/v1/secrets", "/v1/keys", "/v1/secrets/database", "/v1/secrets/database/DB_PASSWORD"] {
        let response = agent.get(path);
        response.assert(503, revoked_body);
        assert_eq!(response.header("cache-control"), Some("no-store"), "{path}");
        assert_eq!(response.header("content-type"), Some("application/json; charset=utf-8"), "{path}");
    }
    get(agent.port(), "/v1/ready", &[]).assert(503, r#"{"ready":false,"reason":"revoked"}"#);
    assert_eq!(get(agent.port(), "/v1/health", &[]).json()["status"], "ok");

    deployment.publish(&build_artifact(PLAINTEXT_ROTATED, "rev-2", &unsigned()));
    agent.signal(libc::SIGHUP);
    assert!(wait_for_secrets(&agent, 200, PLAINTEXT_ROTATED, SIGHUP_LIMIT), "no recovery: {}", agent.stderr());
    get(agent.port(), "/v1/ready", &[]).assert(200, r#"{"ready":true}"#);
}

#[test]
fn a_bare_revocation_notice_is_enough_and_the_same_artifact_loads_again_after_it() {
    let original = build_artifact(PLAINTEXT, "rev-1", &unsigned());
    let deployment = Deployment::new("bare-revocation", &original);
    let agent = deployment.start(&[SLOW_POLLING]);
    publish_rejected(
        &deployment,
        &agent,
        r#"{"identity":"api-gateway","environment":"production","revokedAt":"2026-11-26T00:00:00Z"}"#,
        "Artifact revoked: api-gateway/production at 2026-11-26T00:00:00Z",
    );
    agent.get("/v1/secrets").assert(
        503,
        r#"{"error":"Artifact revoked","detail":"Artifact revoked: api-gateway/production at 2026-11-26T00:00:00Z"}"#,
    );
    get(agent.port(), "/v1/ready", &[]).assert(503, r#"{"ready":false,"reason":"revoked"}"#);

    // The wipe forgot revision rev-1, so republishing the very same bytes serves again.
    deployment.publish(&original);
    agent.signal(libc::SIGHUP);
    assert!(
        wait_for_secrets(&agent, 200, PLAINTEXT, SIGHUP_LIMIT),
        "the same artifact was not reloaded: {}",
        agent.stderr()
    );
    get(agent.port(), "/v1/ready", &[]).assert(200, r#"{"ready":true}"#);
}

#[test]
fn stops_serving_when_the_artifact_expires() {
    let expires_at = epoch_ms_to_iso8601(now_ms() + 3_000);
    let options = ArtifactOptions { expires_at: Some(expires_at.clone()), ..unsigned() };
    let deployment = Deployment::new("expiry", &build_artifact(PLAINTEXT, "rev-1", &options));
    let agent = deployment.start(&[SLOW_POLLING]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    get(agent.port(), "/v1/ready", &[]).assert(200, r#"{"ready":true}"#);
    let expired_body = format!(r#"{{"error":"Artifact expired","detail":"Artifact expired at {expires_at}"}}"#);
    assert!(
        wait_for_secrets(&agent, 503, &expired_body, Duration::from_secs(10)),
        "still served after {expires_at}: {}",
        agent.get("/v1/secrets").text()
    );
    let response = agent.get("/v1/keys");
    response.assert(503, &expired_body);
    assert_eq!(response.header("cache-control"), Some("no-store"));
    get(agent.port(), "/v1/ready", &[]).assert(503, r#"{"ready":false,"reason":"artifact_expired"}"#);
}

#[test]
fn keeps_serving_the_last_good_secrets_when_a_corrupt_artifact_is_published() {
    let deployment = Deployment::new("corrupt", &build_artifact(PLAINTEXT, "rev-1", &unsigned()));
    let agent = deployment.start(&[SLOW_POLLING]);

    let mut wrong_hash: serde_json::Value =
        serde_json::from_str(&build_artifact(PLAINTEXT_ROTATED, "rev-2", &unsigned())).unwrap();
    let actual_hash = wrong_hash["ciphertextHash"].as_str().unwrap().to_string();
    let claimed_hash = sha256_hex(b"something else");
    wrong_hash["ciphertextHash"] = claimed_hash.as_str().into();
    publish_rejected(&deployment, &agent, &wrong_hash.to_string(), "artifact rejected (integrity): ");
    let line = agent.stderr().lines().last().unwrap_or_default().to_string();
    assert_eq!(
        line,
        format!(
            "[clef-agent] poll error: artifact rejected (integrity): integrity check failed: \
             ciphertextHash is {claimed_hash} but the ciphertext hashes to {actual_hash}"
        )
    );
    agent.get("/v1/secrets").assert(200, PLAINTEXT);

    publish_rejected(&deployment, &agent, "\u{0}\u{1}garbage, not JSON", "artifact rejected (json_parse): ");
    agent.get("/v1/secrets").assert(200, PLAINTEXT);

    // A truncated age file whose hash was recomputed: it passes integrity and fails decryption.
    let mut truncated: serde_json::Value =
        serde_json::from_str(&build_artifact(PLAINTEXT_ROTATED, "rev-3", &unsigned())).unwrap();
    let ciphertext = truncated["ciphertext"].as_str().unwrap();
    let bytes = base64::engine::general_purpose::STANDARD.decode(ciphertext).unwrap();
    let ciphertext = base64::engine::general_purpose::STANDARD.encode(&bytes[..bytes.len() - 20]);
    truncated["ciphertextHash"] = sha256_hex(ciphertext.as_bytes()).into();
    truncated["ciphertext"] = ciphertext.into();
    publish_rejected(&deployment, &agent, &truncated.to_string(), "artifact rejected (decrypt): decryption failed: ");
    agent.get("/v1/secrets").assert(200, PLAINTEXT);

    get(agent.port(), "/v1/ready", &[]).assert(200, r#"{"ready":true}"#);
    assert_eq!(get(agent.port(), "/v1/health", &[]).json()["revision"], "rev-1");
    assert!(!agent.stdout().contains("refreshed:"), "{}", agent.stdout());
}

#[test]
fn serves_a_signed_artifact_when_a_verify_key_is_set() {
    let deployment = Deployment::new("signed", &build_artifact(PLAINTEXT, "rev-1", &signed()));
    let agent = deployment.start(&[("CLEF_AGENT_VERIFY_KEY", &verify_key())]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
}

#[test]
fn keeps_the_signed_secrets_when_an_unsigned_artifact_is_published() {
    let deployment = Deployment::new("unsigned-rotation", &build_artifact(PLAINTEXT, "rev-1", &signed()));
    let agent = deployment.start(&[("CLEF_AGENT_VERIFY_KEY", &verify_key()), SLOW_POLLING]);
    publish_rejected(
        &deployment,
        &agent,
        &build_artifact(PLAINTEXT_ROTATED, "rev-2", &unsigned()),
        "artifact rejected (signature_missing): ",
    );
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
}

#[test]
fn rejects_a_signed_artifact_whose_signed_fields_were_changed() {
    let deployment = Deployment::new("tampered-signature", &build_artifact(PLAINTEXT, "rev-1", &signed()));
    let agent = deployment.start(&[("CLEF_AGENT_VERIFY_KEY", &verify_key()), SLOW_POLLING]);
    let mut tampered: serde_json::Value =
        serde_json::from_str(&build_artifact(PLAINTEXT_ROTATED, "rev-2", &signed())).unwrap();
    tampered["revision"] = "rev-3".into();
    publish_rejected(&deployment, &agent, &tampered.to_string(), "artifact rejected (signature_invalid): ");
    agent.get("/v1/secrets").assert(200, PLAINTEXT);

    // The same artifact untouched is accepted: the rejection was about the change.
    deployment.publish(&build_artifact(PLAINTEXT_ROTATED, "rev-2", &signed()));
    agent.signal(libc::SIGHUP);
    assert!(wait_for_secrets(&agent, 200, PLAINTEXT_ROTATED, SIGHUP_LIMIT), "{}", agent.stderr());
}

#[test]
fn jit_mode_serves_a_rotated_artifact_after_sighup() {
    let deployment = Deployment::new("jit-rotation", &build_artifact(PLAINTEXT, "rev-1", &unsigned()));
    let agent = deployment.start(&[("CLEF_AGENT_CACHE_TTL", "0")]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    deployment.publish(&build_artifact(PLAINTEXT_ROTATED, "rev-2", &unsigned()));
    agent.signal(libc::SIGHUP);
    assert!(wait_for_secrets(&agent, 200, PLAINTEXT_ROTATED, SIGHUP_LIMIT), "{}", agent.stderr());
    assert_eq!(get(agent.port(), "/v1/health", &[]).json()["revision"], "rev-2");
}

#[test]
fn serves_stale_secrets_until_the_ttl_then_refuses_and_recovers_on_the_next_request() {
    let deployment = Deployment::new("cache-ttl", &build_artifact(PLAINTEXT, "rev-1", &unsigned()));
    let collector = Server::start(|_| Answer::json(200, "{}"));
    let telemetry = format!("http://127.0.0.1:{}/v1/logs", collector.port);
    let agent = deployment.start(&[("CLEF_AGENT_CACHE_TTL", "30"), ("CLEF_AGENT_TELEMETRY_URL", &telemetry)]);
    let loaded_at = std::time::Instant::now();
    std::fs::remove_file(&deployment.artifact).unwrap();

    // Stale-on-error: the polls fail, the last good secrets are still served.
    agent.wait_for_stderr(&format!("poll error: {} was not found", deployment.artifact.display()), POLL_LIMIT);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    get(agent.port(), "/v1/ready", &[]).assert(200, r#"{"ready":true}"#);

    // Once no refresh has succeeded for the TTL, nothing is served.
    assert!(
        wait_until(Duration::from_secs(40), || agent.get("/v1/secrets").status == 503),
        "still serving {:?} after the TTL",
        loaded_at.elapsed()
    );
    assert!(loaded_at.elapsed() > Duration::from_secs(29), "refused after only {:?}", loaded_at.elapsed());
    let refused = agent.get("/v1/secrets").json();
    assert_eq!(refused["error"], "Refresh failed", "{refused}");
    assert!(refused["detail"].as_str().is_some_and(|detail| detail.contains("was not found")), "{refused}");
    get(agent.port(), "/v1/ready", &[]).assert(503, r#"{"ready":false,"reason":"cache_expired"}"#);
    assert_eq!(get(agent.port(), "/v1/health", &[]).json()["expired"], true);

    // The artifact is back: a request refreshes and is served, no signal needed — the first
    // one at most 5 s (the pause after a failure) after the last failed refresh.
    deployment.publish(&build_artifact(PLAINTEXT, "rev-1", &unsigned()));
    assert!(wait_for_secrets(&agent, 200, PLAINTEXT, Duration::from_secs(7)), "{}", agent.stderr());
    get(agent.port(), "/v1/ready", &[]).assert(200, r#"{"ready":true}"#);
    assert_eq!(get(agent.port(), "/v1/health", &[]).json()["expired"], false);

    // The wipe was reported to telemetry (flushed at shutdown).
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(6)).and_then(|status| status.code()), Some(0));
    let bodies: Vec<String> =
        collector.requests().iter().map(|request| String::from_utf8_lossy(&request.body).into_owned()).collect();
    let cache_expired = bodies.iter().any(|body| {
        body.contains(r#""body":{"stringValue":"cache.expired"}"#)
            && body.contains(r#"{"key":"clef.cacheTtlSeconds","value":{"intValue":"30"}}"#)
            && body.contains(r#""severityNumber":17,"severityText":"ERROR""#)
    });
    assert!(cache_expired, "no cache.expired event: {bodies:?}");
}
