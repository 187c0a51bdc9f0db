//! Telemetry against a loopback OTLP/HTTP collector: the JSON envelope, the records and their
//! severities, the headers taken from the secrets, batching (nothing is sent per event; the
//! buffer goes out at 50 events or at shutdown), and a collector that is down or hangs, which
//! must never touch serving. Secret values, keys and tokens must never reach a telemetry body.

use std::net::TcpListener;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{artifact, assert_absent, secret_values};
use crate::support::loopback::{collector, Server};
use crate::support::{age_key_line, free_port, wait_until, Agent, Deployment, TOKEN};

/// A plaintext whose telemetry token sits in its second namespace.
const PLAINTEXT: &str = concat!(
    r#"{"app":{"API_KEY":"api-value-5c2e","DB_PASSWORD":"db-value-913a"},"#,
    r#""observability":{"CLEF_TELEMETRY_TOKEN":"telemetry-token-77f1"}}"#
);
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// SPEC §7: the shutdown flush is bounded by 2 s.
const FLUSH_BUDGET: Duration = Duration::from_secs(2);
const LOGS: &str = "/v1/logs";

/// Every log record the collector received, in order.
pub(super) fn log_records(collector: &Server) -> Vec<Value> {
    collector
        .requests_to("POST", LOGS)
        .iter()
        .flat_map(|request| {
            let body = json_body(request.body_text());
            body["resourceLogs"][0]["scopeLogs"][0]["logRecords"].as_array().cloned().unwrap_or_default()
        })
        .collect()
}

/// The only record whose body is `kind`.
pub(super) fn record_of<'a>(records: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = records.iter().filter(|record| record["body"]["stringValue"] == kind).collect();
    match found.as_slice() {
        [record] => record,
        _ => panic!("expected one {kind} record, found {}: {records:#?}", found.len()),
    }
}

/// The value of the attribute called `key` in an OTLP attribute list.
pub(super) fn attribute<'a>(attributes: &'a Value, key: &str) -> &'a Value {
    let list = attributes.as_array().unwrap_or_else(|| panic!("not an attribute list: {attributes}"));
    let found = list.iter().find(|attribute| attribute["key"] == key);
    &found.unwrap_or_else(|| panic!("no attribute {key} in {attributes}"))["value"]
}

fn json_body(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("a telemetry body is not JSON ({error}): {text}"))
}

/// An attribute list as a map key → value, for comparisons that ignore the order.
fn attribute_map(attributes: &Value) -> serde_json::Map<String, Value> {
    let list = attributes.as_array().unwrap_or_else(|| panic!("not an attribute list: {attributes}"));
    let map: serde_json::Map<String, Value> = list
        .iter()
        .map(|attribute| (attribute["key"].as_str().expect("a key").to_string(), attribute["value"].clone()))
        .collect();
    assert_eq!(map.len(), list.len(), "an attribute appears twice: {attributes}");
    map
}

fn severity(record: &Value) -> (Option<u64>, Option<&str>) {
    (record["severityNumber"].as_u64(), record["severityText"].as_str())
}

fn now_unix_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is before 1970").as_nanos()
}

/// A deployment serving `plaintext`, and its agent reporting to `collector` as `agent-test-1`.
fn start(test: &str, plaintext: &str, collector: &Server) -> (Deployment, Agent) {
    let deployment = Deployment::new(test, &artifact(plaintext, "rev-telemetry-1"));
    let url = collector.url(LOGS);
    let agent = deployment.start(&[("CLEF_AGENT_TELEMETRY_URL", &url), ("CLEF_AGENT_ID", "agent-test-1")]);
    (deployment, agent)
}

/// SIGTERM, then waits until `collector` has the `agent.stopped` record, which must come
/// within the flush budget, and for exit status 0.
fn stop_and_collect(agent: &Agent, collector: &Server) -> Vec<Value> {
    agent.signal(libc::SIGTERM);
    let flushed = wait_until(FLUSH_BUDGET, || {
        log_records(collector).iter().any(|record| record["body"]["stringValue"] == "agent.stopped")
    });
    assert!(flushed, "no agent.stopped within {FLUSH_BUDGET:?} of SIGTERM; got {:#?}", log_records(collector));
    let status = agent.wait_exit(Duration::from_secs(5)).expect("the agent did not exit after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", agent.stderr());
    log_records(collector)
}

/// SIGHUP, then waits for the poll error it causes (the `count`th one).
fn refresh_and_expect_poll_error(agent: &Agent, count: usize) {
    agent.signal(libc::SIGHUP);
    let logged = wait_until(Duration::from_secs(5), || agent.stderr().matches("poll error: ").count() >= count);
    assert!(logged, "no poll error {count} after SIGHUP\n--- stderr ---\n{}", agent.stderr());
}

#[test]
fn flushes_one_otlp_json_batch_with_resource_and_scope_within_two_seconds_of_sigterm() {
    let collector = collector();
    let (_deployment, agent) = start("telemetry-envelope", PLAINTEXT, &collector);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    stop_and_collect(&agent, &collector);
    let requests = collector.requests();
    assert_eq!(requests.len(), 1, "expected the buffered events in one batch: {requests:#?}");
    let request = &requests[0];
    assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", LOGS));
    assert_eq!(request.header("Content-Type"), Some("application/json"));
    let body = json_body(request.body_text());
    let resource_logs = body["resourceLogs"].as_array().expect("resourceLogs is an array");
    assert_eq!(resource_logs.len(), 1, "{body:#}");
    assert_eq!(
        resource_logs[0]["resource"]["attributes"],
        json!([
            {"key": "service.name", "value": {"stringValue": "clef-agent"}},
            {"key": "service.version", "value": {"stringValue": VERSION}},
            {"key": "clef.agent.id", "value": {"stringValue": "agent-test-1"}},
            {"key": "clef.identity", "value": {"stringValue": "api-gateway"}},
            {"key": "clef.environment", "value": {"stringValue": "production"}},
            {"key": "clef.source.type", "value": {"stringValue": "file"}},
        ])
    );
    let scope_logs = resource_logs[0]["scopeLogs"].as_array().expect("scopeLogs is an array");
    assert_eq!(scope_logs.len(), 1, "{body:#}");
    assert_eq!(scope_logs[0]["scope"], json!({"name": "clef.runtime", "version": VERSION}));
    let mut kinds: Vec<&str> = scope_logs[0]["logRecords"]
        .as_array()
        .expect("logRecords is an array")
        .iter()
        .map(|record| record["body"]["stringValue"].as_str().expect("a record body"))
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["agent.started", "agent.stopped", "artifact.refreshed"]);
}

#[test]
fn records_carry_time_severity_body_and_their_fields_as_clef_attributes() {
    let collector = collector();
    let before = now_unix_nanos();
    let (_deployment, agent) = start("telemetry-records", PLAINTEXT, &collector);
    let records = stop_and_collect(&agent, &collector);
    let after = now_unix_nanos();
    for record in &records {
        let time = record["timeUnixNano"].as_str().unwrap_or_else(|| panic!("timeUnixNano is not a string: {record}"));
        assert!(time.bytes().all(|byte| byte.is_ascii_digit()), "{record}");
        let time: u128 = time.parse().expect("a number of nanoseconds");
        assert!((before..=after).contains(&time), "timeUnixNano {time} is not between {before} and {after}");
    }

    let started = record_of(&records, "agent.started");
    assert_eq!(severity(started), (Some(9), Some("INFO")));
    assert_eq!(started["body"], json!({"stringValue": "agent.started"}));
    assert_eq!(
        Value::Object(attribute_map(&started["attributes"])),
        json!({"event.name": {"stringValue": "clef.agent.started"}, "clef.version": {"stringValue": VERSION}})
    );

    let refreshed = record_of(&records, "artifact.refreshed");
    assert_eq!(severity(refreshed), (Some(9), Some("INFO")));
    assert_eq!(
        Value::Object(attribute_map(&refreshed["attributes"])),
        json!({
            "event.name": {"stringValue": "clef.artifact.refreshed"},
            "clef.revision": {"stringValue": "rev-telemetry-1"},
            "clef.keyCount": {"intValue": "3"},
            "clef.kmsEnvelope": {"boolValue": false},
        })
    );

    let stopped = record_of(&records, "agent.stopped");
    assert_eq!(severity(stopped), (Some(9), Some("INFO")));
    let attributes = attribute_map(&stopped["attributes"]);
    assert_eq!(attributes.len(), 3, "{attributes:?}");
    assert_eq!(attributes["event.name"], json!({"stringValue": "clef.agent.stopped"}));
    assert_eq!(attributes["clef.reason"], json!({"stringValue": "signal"}));
    let uptime = attributes["clef.uptimeSeconds"]["intValue"].as_str().expect("uptimeSeconds is an intValue string");
    assert!(uptime.parse::<u64>().is_ok_and(|seconds| seconds < 60), "uptimeSeconds {uptime:?}");
}

#[test]
fn sends_clef_telemetry_token_from_any_namespace_as_a_bearer_token() {
    let collector = collector();
    let (_deployment, agent) = start("telemetry-token", PLAINTEXT, &collector);
    stop_and_collect(&agent, &collector);
    for request in collector.requests() {
        assert_eq!(request.header_count("Authorization"), 1);
        assert_eq!(request.header("Authorization"), Some("Bearer telemetry-token-77f1"));
    }
}

#[test]
fn jit_mode_still_reads_the_telemetry_token_from_the_secrets() {
    let collector = collector();
    let deployment = Deployment::new("telemetry-jit", &artifact(PLAINTEXT, "rev-telemetry-1"));
    let url = collector.url(LOGS);
    let agent = deployment.start(&[("CLEF_AGENT_TELEMETRY_URL", &url), ("CLEF_AGENT_CACHE_TTL", "0")]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    let records = stop_and_collect(&agent, &collector);
    record_of(&records, "artifact.refreshed");
    for request in collector.requests() {
        assert_eq!(request.header("Authorization"), Some("Bearer telemetry-token-77f1"));
    }
}

#[test]
fn sends_the_headers_listed_in_clef_telemetry_headers() {
    let collector = collector();
    let plaintext = r#"{"app":{"API_KEY":"api-value-5c2e"},"obs":{"CLEF_TELEMETRY_HEADERS":"x-api-key=k1,x-team=t"}}"#;
    let (_deployment, agent) = start("telemetry-headers", plaintext, &collector);
    stop_and_collect(&agent, &collector);
    for request in collector.requests() {
        assert_eq!((request.header("x-api-key"), request.header("x-team")), (Some("k1"), Some("t")));
        assert_eq!(request.header("Authorization"), None);
    }
}

#[test]
fn clef_telemetry_headers_take_precedence_over_clef_telemetry_token() {
    let collector = collector();
    let plaintext =
        r#"{"obs":{"CLEF_TELEMETRY_TOKEN":"telemetry-token-77f1","CLEF_TELEMETRY_HEADERS":"x-api-key=k1"}}"#;
    let (_deployment, agent) = start("telemetry-precedence", plaintext, &collector);
    stop_and_collect(&agent, &collector);
    for request in collector.requests() {
        assert_eq!(request.header("x-api-key"), Some("k1"));
        assert_eq!(request.header("Authorization"), None);
    }
}

#[test]
fn reports_a_rejected_artifact_as_artifact_invalid_at_error_severity() {
    let collector = collector();
    let (deployment, agent) = start("telemetry-invalid", PLAINTEXT, &collector);
    deployment.publish("{ this is not json");
    refresh_and_expect_poll_error(&agent, 1);
    // The last good artifact is still served.
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    let records = stop_and_collect(&agent, &collector);
    let invalid = record_of(&records, "artifact.invalid");
    assert_eq!(severity(invalid), (Some(17), Some("ERROR")));
    assert_eq!(invalid["body"], json!({"stringValue": "artifact.invalid"}));
    let attributes = &invalid["attributes"];
    assert_eq!(attribute(attributes, "event.name"), &json!({"stringValue": "clef.artifact.invalid"}));
    assert_eq!(attribute(attributes, "clef.reason"), &json!({"stringValue": "json_parse"}));
    assert!(attribute(attributes, "clef.error")["stringValue"].as_str().is_some_and(|error| !error.is_empty()));
}

#[test]
fn reports_a_revocation_as_artifact_revoked_at_warn_severity() {
    let collector = collector();
    let (deployment, agent) = start("telemetry-revoked", PLAINTEXT, &collector);
    deployment
        .publish(r#"{"identity":"api-gateway","environment":"production","revokedAt":"2026-11-20T10:00:00.000Z"}"#);
    refresh_and_expect_poll_error(&agent, 1);
    let records = stop_and_collect(&agent, &collector);
    let revoked = record_of(&records, "artifact.revoked");
    assert_eq!(severity(revoked), (Some(13), Some("WARN")));
    assert_eq!(
        Value::Object(attribute_map(&revoked["attributes"])),
        json!({
            "event.name": {"stringValue": "clef.artifact.revoked"},
            "clef.revokedAt": {"stringValue": "2026-11-20T10:00:00.000Z"},
        })
    );
}

#[test]
fn a_revocation_stops_sending_the_telemetry_token_from_the_revoked_secrets() {
    let collector = collector();
    let (deployment, agent) = start("telemetry-revoked-token", PLAINTEXT, &collector);
    deployment
        .publish(r#"{"identity":"api-gateway","environment":"production","revokedAt":"2026-11-20T10:00:00.000Z"}"#);
    refresh_and_expect_poll_error(&agent, 1);
    assert!(collector.requests().is_empty(), "sent before the revocation: {:#?}", collector.requests());
    let records = stop_and_collect(&agent, &collector);
    record_of(&records, "artifact.revoked");
    for request in collector.requests() {
        assert_eq!(request.header("Authorization"), None, "a revoked secret authenticated an export");
    }
}

#[test]
fn flushes_as_soon_as_fifty_events_are_buffered() {
    let collector = collector();
    let started = Instant::now();
    let (deployment, agent) = start("telemetry-batch", PLAINTEXT, &collector);
    // agent.started and artifact.refreshed are buffered; each refresh of a missing file adds a
    // fetch.failed.
    std::fs::remove_file(&deployment.artifact).expect("cannot remove the artifact");
    for failures in 1..=47 {
        refresh_and_expect_poll_error(&agent, failures);
    }
    assert!(collector.requests().is_empty(), "sent before 50 events were buffered: {:#?}", collector.requests());
    refresh_and_expect_poll_error(&agent, 48);
    let sent = wait_until(Duration::from_secs(3), || !collector.requests().is_empty());
    assert!(sent, "50 buffered events were not flushed");
    assert!(started.elapsed() < Duration::from_secs(9), "too slow to tell a 50-event flush from the 10 s one");
    let first_batch = json_body(collector.requests()[0].body_text());
    let records = first_batch["resourceLogs"][0]["scopeLogs"][0]["logRecords"].as_array().expect("logRecords").len();
    assert!(records >= 50, "the first batch holds {records} records");
    // Serving never noticed.
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
}

#[test]
fn a_collector_that_is_down_does_not_affect_serving_or_shutdown() {
    let deployment = Deployment::new("telemetry-down", &artifact(PLAINTEXT, "rev-telemetry-1"));
    let url = format!("http://127.0.0.1:{}{LOGS}", free_port());
    let agent = deployment.start(&[("CLEF_AGENT_TELEMETRY_URL", &url)]);
    for _ in 0..5 {
        agent.get("/v1/secrets").assert(200, PLAINTEXT);
    }
    let stopping = Instant::now();
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(3)).expect("shutdown waited on a collector that is down");
    assert_eq!(status.code(), Some(0), "{}", agent.stderr());
    assert!(stopping.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_collector_that_never_answers_delays_shutdown_by_at_most_the_flush_budget() {
    // Accepts connections (the kernel does, from the backlog) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
    let url = format!("http://127.0.0.1:{}{LOGS}", silent.local_addr().expect("no local address").port());
    let deployment = Deployment::new("telemetry-silent", &artifact(PLAINTEXT, "rev-telemetry-1"));
    let agent = deployment.start(&[("CLEF_AGENT_TELEMETRY_URL", &url)]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    let stopping = Instant::now();
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(4)).expect("shutdown hung on a silent collector");
    assert_eq!(status.code(), Some(0), "{}", agent.stderr());
    let took = stopping.elapsed();
    assert!(took < FLUSH_BUDGET + Duration::from_millis(700), "shutdown took {took:?}");
}

#[test]
fn never_sends_secret_values_keys_or_tokens_to_the_collector() {
    let collector = collector();
    let (deployment, agent) = start("telemetry-secrecy", PLAINTEXT, &collector);
    let rotated = PLAINTEXT.replace("api-value-5c2e", "api-value-rotated-0b6d");
    deployment.publish(&artifact(&rotated, "rev-telemetry-2"));
    agent.signal(libc::SIGHUP);
    agent.wait_for_stdout("refreshed: revision rev-telemetry-2", Duration::from_secs(5));
    deployment.publish("{ this is not json");
    refresh_and_expect_poll_error(&agent, 1);
    stop_and_collect(&agent, &collector);

    let mut forbidden = secret_values(PLAINTEXT);
    forbidden.extend(secret_values(&rotated));
    forbidden.push(age_key_line("keys/demo.agekey"));
    forbidden.push("AGE-SECRET-KEY-".into());
    forbidden.push(TOKEN.into());
    let requests = collector.requests();
    assert!(!requests.is_empty());
    for request in &requests {
        assert_absent(&request.body_text(), &forbidden, "a telemetry body");
        // Only the Authorization header may carry the telemetry token, and nothing else secret.
        let headers: String = request
            .headers
            .iter()
            .filter(|(name, _)| name != "authorization")
            .map(|(name, value)| format!("{name}: {value}\n"))
            .collect();
        assert_absent(&headers, &forbidden, "the telemetry headers");
        assert_absent(request.header("Authorization").unwrap_or_default(), &[TOKEN.to_string()], "Authorization");
    }
}
