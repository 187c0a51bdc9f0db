//! Telemetry against a loopback OTLP/HTTP collector: the JSON shape, severities, attributes and
//! headers of the events, the flush at shutdown, and a collector that is down.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::loopback::{Answer, Recorded, Server};
use crate::support::{build_artifact, free_port, wait_until, ArtifactOptions, Deployment, TOKEN};

const PLAINTEXT: &str = r#"{"obs":{"CLEF_TELEMETRY_TOKEN":"telemetry-token-77f1"},"app":{"API_KEY":"api-value-5c2e"}}"#;

fn collector() -> Server {
    Server::start(|_| Answer::json(200, "{}"))
}

/// Every log record the collector received, with the resource attributes of its batch.
fn records(requests: &[Recorded]) -> Vec<(Value, Value)> {
    let mut all = Vec::new();
    for request in requests {
        let body: Value = serde_json::from_slice(&request.body).expect("the body is JSON");
        let resource_logs = &body["resourceLogs"][0];
        let scope = &resource_logs["scopeLogs"][0];
        assert_eq!(scope["scope"]["name"], "clef.runtime");
        assert_eq!(scope["scope"]["version"], env!("CARGO_PKG_VERSION"));
        for record in scope["logRecords"].as_array().expect("logRecords") {
            all.push((resource_logs["resource"]["attributes"].clone(), record.clone()));
        }
    }
    all
}

fn record_of<'a>(records: &'a [(Value, Value)], kind: &str) -> &'a Value {
    &records
        .iter()
        .find(|(_, record)| record["body"]["stringValue"] == kind)
        .unwrap_or_else(|| panic!("no {kind} record"))
        .1
}

fn attribute<'a>(attributes: &'a Value, key: &str) -> &'a Value {
    let found = attributes.as_array().and_then(|list| list.iter().find(|attribute| attribute["key"] == key));
    &found.unwrap_or_else(|| panic!("no attribute {key} in {attributes}"))["value"]
}

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
fn sends_lifecycle_events_as_otlp_json_and_flushes_them_at_shutdown() {
    let collector = collector();
    let (_deployment, agent) = start("telemetry-shape", PLAINTEXT, &collector);
    stop(&agent);
    let requests = collector.requests();
    assert!(!requests.is_empty(), "nothing was flushed at shutdown");
    for request in &requests {
        assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/v1/logs"));
        assert_eq!(request.header("Content-Type"), Some("application/json"));
        assert_eq!(request.header("Authorization"), Some("Bearer telemetry-token-77f1"));
    }
    let records = records(&requests);
    let (resource, _) = &records[0];
    assert_eq!(attribute(resource, "service.name"), &json!({"stringValue": "clef-agent"}));
    assert_eq!(attribute(resource, "service.version"), &json!({"stringValue": env!("CARGO_PKG_VERSION")}));
    assert_eq!(attribute(resource, "clef.agent.id"), &json!({"stringValue": "agent-test-1"}));
    assert_eq!(attribute(resource, "clef.identity"), &json!({"stringValue": "api-gateway"}));
    assert_eq!(attribute(resource, "clef.environment"), &json!({"stringValue": "production"}));
    assert_eq!(attribute(resource, "clef.source.type"), &json!({"stringValue": "file"}));

    let refreshed = record_of(&records, "artifact.refreshed");
    assert!(refreshed["timeUnixNano"]
        .as_str()
        .is_some_and(|time| time.len() > 15 && time.bytes().all(|b| b.is_ascii_digit())));
    assert_eq!((refreshed["severityNumber"].as_u64(), refreshed["severityText"].as_str()), (Some(9), Some("INFO")));
    let attributes = &refreshed["attributes"];
    assert_eq!(attribute(attributes, "event.name"), &json!({"stringValue": "clef.artifact.refreshed"}));
    assert_eq!(attribute(attributes, "clef.revision"), &json!({"stringValue": "rev-telemetry-1"}));
    assert_eq!(attribute(attributes, "clef.keyCount"), &json!({"intValue": "2"}));
    assert_eq!(attribute(attributes, "clef.kmsEnvelope"), &json!({"boolValue": false}));

    let started = record_of(&records, "agent.started");
    assert_eq!(attribute(&started["attributes"], "clef.version"), &json!({"stringValue": env!("CARGO_PKG_VERSION")}));
    let stopped = record_of(&records, "agent.stopped");
    assert_eq!(stopped["severityText"], "INFO");
    assert_eq!(attribute(&stopped["attributes"], "clef.reason"), &json!({"stringValue": "signal"}));
    assert!(attribute(&stopped["attributes"], "clef.uptimeSeconds")["intValue"].is_string());

    for request in &requests {
        let body = String::from_utf8_lossy(&request.body);
        for secret in ["api-value-5c2e", "telemetry-token-77f1", TOKEN, "AGE-SECRET-KEY"] {
            assert!(!body.contains(secret), "telemetry carried a secret: {secret}");
        }
    }
}

#[test]
fn headers_come_from_clef_telemetry_headers() {
    let collector = collector();
    let plaintext = r#"{"obs":{"CLEF_TELEMETRY_HEADERS":"x-api-key=k1,x-team=platform"}}"#;
    let (_deployment, agent) = start("telemetry-headers", plaintext, &collector);
    stop(&agent);
    let request = &collector.requests()[0];
    assert_eq!((request.header("x-api-key"), request.header("x-team")), (Some("k1"), Some("platform")));
    assert_eq!(request.header("Authorization"), None);
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
    let records = records(&collector.requests());
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
fn a_collector_that_is_down_never_affects_serving() {
    let deployment =
        Deployment::new("telemetry-down", &build_artifact(PLAINTEXT, "rev-telemetry-1", &ArtifactOptions::default()));
    let url = format!("http://127.0.0.1:{}/v1/logs", free_port());
    let agent = deployment.start(&[("CLEF_AGENT_TELEMETRY_URL", &url)]);
    assert!(wait_until(Duration::from_secs(2), || agent.get("/v1/secrets").status == 200));
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(4)).expect("shutdown waited on the collector");
    assert_eq!(status.code(), Some(0));
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
    let records = records(&collector.requests());
    let invalid = record_of(&records, "artifact.invalid");
    assert_eq!(attribute(&invalid["attributes"], "clef.reason"), &json!({"stringValue": "decrypt"}));
    let stopped = record_of(&records, "agent.stopped");
    assert_eq!(attribute(&stopped["attributes"], "clef.reason"), &json!({"stringValue": "error"}));
}
