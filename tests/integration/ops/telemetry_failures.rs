//! Telemetry of failures, against a loopback OTLP/HTTP collector: failed fetches (with and
//! without a disk cache to fall back on), rejected, expired and revoked artifacts, and a
//! start-up that fails.

use std::time::Duration;

use serde_json::json;

use super::telemetry::{attribute, log_records, record_of};
use crate::support::loopback::{collector, Answer, Server};
use crate::support::{build_artifact, ArtifactOptions, Deployment};

const PLAINTEXT: &str = r#"{"obs":{"CLEF_TELEMETRY_TOKEN":"telemetry-token-77f1"},"app":{"API_KEY":"api-value-5c2e"}}"#;

fn start(test: &str, plaintext: &str, collector: &Server) -> (Deployment, crate::support::Agent) {
    let deployment = Deployment::new(test, &build_artifact(plaintext, "rev-telemetry-1", &ArtifactOptions::default()));
    let url = format!("http://127.0.0.1:{}/v1/logs", collector.port);
    let agent = deployment.start(&[("CLEF_AGENT_TELEMETRY_URL", &url), ("CLEF_AGENT_ID", "agent-test-1")]);
    (deployment, agent)
}

fn stop(agent: &crate::support::Agent) {
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(6)).and_then(|status| status.code()), Some(0));
}

#[test]
fn reports_failed_fetches_and_rejected_and_revoked_artifacts() {
    let collector = collector();
    let (deployment, agent) = start("telemetry-events", PLAINTEXT, &collector);
    std::fs::remove_file(&deployment.artifact).unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait_for_stderr("poll error: ", Duration::from_secs(5));
    deployment.publish("{ not json");
    agent.signal(libc::SIGHUP);
    agent.wait_for_stderr("poll error: artifact rejected (json_parse)", Duration::from_secs(5));
    let expired = ArtifactOptions { expires_at: Some("2020-01-01T00:00:00.000Z".into()), ..ArtifactOptions::default() };
    deployment.publish(&build_artifact(PLAINTEXT, "rev-telemetry-2", &expired));
    agent.signal(libc::SIGHUP);
    agent.wait_for_stderr("poll error: Artifact expired at 2020-01-01T00:00:00.000Z", Duration::from_secs(5));
    deployment
        .publish(r#"{"identity":"api-gateway","environment":"production","revokedAt":"2026-11-20T10:00:00.000Z"}"#);
    agent.signal(libc::SIGHUP);
    agent.wait_for_stderr("poll error: Artifact revoked", Duration::from_secs(5));
    stop(&agent);
    let records = log_records(&collector);
    let failed = record_of(&records, "fetch.failed");
    assert_eq!((failed["severityNumber"].as_u64(), failed["severityText"].as_str()), (Some(13), Some("WARN")));
    assert!(attribute(&failed["attributes"], "clef.error")["stringValue"]
        .as_str()
        .is_some_and(|error| error.ends_with("was not found")));
    assert_eq!(attribute(&failed["attributes"], "clef.diskCacheAvailable"), &json!({"boolValue": false}));
    let invalid = record_of(&records, "artifact.invalid");
    assert_eq!((invalid["severityNumber"].as_u64(), invalid["severityText"].as_str()), (Some(17), Some("ERROR")));
    assert_eq!(attribute(&invalid["attributes"], "clef.reason"), &json!({"stringValue": "json_parse"}));
    let expired = record_of(&records, "artifact.expired");
    assert_eq!((expired["severityNumber"].as_u64(), expired["severityText"].as_str()), (Some(13), Some("WARN")));
    assert_eq!(
        attribute(&expired["attributes"], "clef.expiresAt"),
        &json!({"stringValue": "2020-01-01T00:00:00.000Z"})
    );
    let revoked = record_of(&records, "artifact.revoked");
    assert_eq!((revoked["severityNumber"].as_u64(), revoked["severityText"].as_str()), (Some(13), Some("WARN")));
    assert_eq!(
        attribute(&revoked["attributes"], "clef.revokedAt"),
        &json!({"stringValue": "2026-11-20T10:00:00.000Z"})
    );
}

#[test]
fn a_failed_start_up_still_reports_why() {
    let collector = collector();
    let deployment = Deployment::new(
        "telemetry-failed-start",
        &build_artifact(PLAINTEXT, "rev-telemetry-1", &ArtifactOptions::default()),
    );
    let url = format!("http://127.0.0.1:{}/v1/logs", collector.port);
    let wrong_key = crate::support::fixture("keys/other.agekey").display().to_string();
    let agent = deployment.spawn(&[("CLEF_AGENT_TELEMETRY_URL", &url), ("CLEF_AGENT_AGE_KEY_FILE", &wrong_key)]);
    assert_eq!(agent.wait_exit(Duration::from_secs(5)).and_then(|status| status.code()), Some(1));
    let records = log_records(&collector);
    let invalid = record_of(&records, "artifact.invalid");
    assert_eq!(attribute(&invalid["attributes"], "clef.reason"), &json!({"stringValue": "decrypt"}));
    let stopped = record_of(&records, "agent.stopped");
    assert_eq!(attribute(&stopped["attributes"], "clef.reason"), &json!({"stringValue": "error"}));
}

#[test]
fn serving_from_the_disk_cache_reports_the_failed_fetch_with_the_cache_available() {
    let artifact = build_artifact(PLAINTEXT, "rev-telemetry-1", &ArtifactOptions::default());
    let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let serving = std::sync::Arc::clone(&up);
    let source = Server::start(move |_| {
        if serving.load(std::sync::atomic::Ordering::SeqCst) {
            Answer::json(200, &artifact)
        } else {
            Answer::json(503, "{}")
        }
    });
    let deployment = Deployment::new("telemetry-disk-cache", "{}");
    let cache = deployment.dir.join("cache").display().to_string();
    let url = source.url("/a.json");
    let env = [("CLEF_AGENT_SOURCE", url.as_str()), ("CLEF_AGENT_CACHE_PATH", cache.as_str())];
    stop(&deployment.start(&env));

    up.store(false, std::sync::atomic::Ordering::SeqCst);
    let collector = collector();
    let telemetry = format!("http://127.0.0.1:{}/v1/logs", collector.port);
    let agent = deployment.start(&[env[0], env[1], ("CLEF_AGENT_TELEMETRY_URL", &telemetry)]);
    stop(&agent);
    let records = log_records(&collector);
    let failed = record_of(&records, "fetch.failed");
    assert_eq!(attribute(&failed["attributes"], "clef.diskCacheAvailable"), &json!({"boolValue": true}));
    assert!(attribute(&failed["attributes"], "clef.error")["stringValue"]
        .as_str()
        .is_some_and(|error| error.ends_with("answered HTTP 503")));
    record_of(&records, "artifact.refreshed");
}
