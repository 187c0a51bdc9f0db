//! Text taken from an artifact is bounded (`src/text.rs`): a revocation notice needs no
//! signature, and a 20 MB field in one was a 20 MB log line per poll and a 20 MB body per
//! request (64 concurrent requests took the agent to 2.4 GB). Over-long fields of an artifact
//! are refused with a short message.

use std::time::Duration;

use crate::pressure::proc_status;
use crate::support::{build_artifact, ArtifactOptions, Deployment, PLAINTEXT};

/// Reading and parsing 20 MB in a debug build, on a loaded machine.
const POLL_LIMIT: Duration = Duration::from_secs(20);
const SLOW_POLLING: (&str, &str) = ("CLEF_AGENT_CACHE_TTL", "300");
const TWENTY_MB: usize = 20 * 1024 * 1024;

/// Publishes `document`, sends SIGHUP and waits for the stderr line containing `expected`.
fn publish_and_wait(deployment: &Deployment, agent: &crate::support::Agent, document: &str, expected: &str) {
    deployment.publish(document);
    agent.signal(libc::SIGHUP);
    agent.wait_for_stderr(expected, POLL_LIMIT);
}

#[test]
fn a_twenty_megabyte_revocation_costs_neither_memory_nor_log_volume() {
    let deployment =
        Deployment::new("huge-revocation", &build_artifact(PLAINTEXT, "rev-1", &ArtifactOptions::default()));
    let agent = deployment.start(&[SLOW_POLLING]);
    let notice = |letter: &str| {
        serde_json::json!({"identity": "api-gateway", "environment": "production", "revokedAt": letter.repeat(TWENTY_MB)})
            .to_string()
    };
    let line = |letter: &str| {
        format!("Artifact revoked: api-gateway/production at {}…(truncated, {TWENTY_MB} bytes)", letter.repeat(200))
    };
    let logged = |letter: &str| format!("api-gateway/production at {}", letter.repeat(20));
    publish_and_wait(&deployment, &agent, &notice("A"), &logged("A"));

    // The poll that read 20 MB is in the high-water mark already; the requests add nothing.
    let before_kib = proc_status(agent.pid(), "VmHWM");
    let answers: Vec<_> = std::thread::scope(|scope| {
        let requests: Vec<_> = (0..64).map(|_| scope.spawn(|| agent.get("/v1/secrets"))).collect();
        requests.into_iter().map(|request| request.join().expect("a request thread panicked")).collect()
    });
    let growth_kib = proc_status(agent.pid(), "VmHWM").saturating_sub(before_kib);
    for answer in &answers {
        assert_eq!(answer.status, 503);
        assert!(answer.body.len() < 1024, "a 503 body of {} bytes", answer.body.len());
    }
    assert_eq!(answers[0].json()["detail"], line("A"));
    assert!(growth_kib < 16 * 1024, "64 requests grew the peak RSS by {growth_kib} KiB");

    // Three polls, each a different notice, each logged at once.
    publish_and_wait(&deployment, &agent, &notice("B"), &logged("B"));
    publish_and_wait(&deployment, &agent, &notice("C"), &logged("C"));
    let stderr = agent.stderr();
    assert!(stderr.len() < 64 * 1024, "three polls logged {} bytes", stderr.len());
    assert!(stderr.contains(&line("C")), "{stderr}");
}

#[test]
fn a_huge_ciphertext_hash_or_expiry_is_refused_with_a_short_message() {
    let good = build_artifact(PLAINTEXT, "rev-1", &ArtifactOptions::default());
    let deployment = Deployment::new("huge-fields", &good);
    let agent = deployment.start(&[SLOW_POLLING]);
    let with = |field: &str, value: String| {
        let mut artifact: serde_json::Value = serde_json::from_str(&good).unwrap();
        artifact["revision"] = "rev-2".into();
        artifact[field] = value.into();
        artifact.to_string()
    };

    publish_and_wait(&deployment, &agent, &with("ciphertextHash", "a".repeat(TWENTY_MB)), "poll error: ");
    let stderr = agent.stderr();
    assert!(stderr.len() < 64 * 1024, "the refusal logged {} bytes", stderr.len());
    let refused = "poll error: artifact rejected (invalid_shape): field 'ciphertextHash' must be at most 200 \
                   characters, found 20971520 bytes";
    assert!(stderr.contains(refused), "{stderr}");

    // Long past, so that without the bound it would wipe and quote all of it.
    let expiry = with("expiresAt", format!("2020-01-01T00:00:00.{}Z", "1".repeat(1_000_000)));
    publish_and_wait(&deployment, &agent, &expiry, "expiresAt");
    let stderr = agent.stderr();
    assert!(stderr.len() < 64 * 1024, "two refusals logged {} bytes", stderr.len());
    let refused = "poll error: artifact rejected (invalid_shape): field 'expiresAt' must be at most 200 \
                   characters, found 1000021 bytes";
    assert!(stderr.contains(refused), "{stderr}");
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
}
