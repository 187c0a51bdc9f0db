//! The Lambda extension lifecycle against the loopback Extensions API of `loopback`, which
//! holds each `event/next` until the test releases the next scripted event and notes what the
//! agent served when each request arrived — so "loaded before registering" and "refreshed
//! before asking for the next event" are observed, not assumed.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::artifact;
use crate::support::loopback::{
    collector, ConnectionRecorder, ExtensionsApi, IDENTIFIER, INVOKE, NEXT, REGISTER, SHUTDOWN,
};
use crate::support::{Agent, Deployment, PLAINTEXT, PLAINTEXT_ROTATED};

/// Generous: the agent answers each step in milliseconds.
const STEP: Duration = Duration::from_secs(5);

/// A deployment at `rev-lambda-1` serving [`PLAINTEXT`], its Extensions API, and a recording
/// proxy that every proxy variable of the agent points at.
struct Lambda {
    deployment: Deployment,
    api: ExtensionsApi,
    proxy: ConnectionRecorder,
}

impl Lambda {
    fn new(test: &str) -> Lambda {
        let deployment = Deployment::new(test, &artifact(PLAINTEXT, "rev-lambda-1"));
        let api = ExtensionsApi::start(deployment.port);
        Lambda { deployment, api, proxy: ConnectionRecorder::start() }
    }

    /// Starts the agent as an extension with `extra` settings; returns once it is ready.
    fn start(&self, extra: &[(&str, &str)]) -> Agent {
        let runtime_api = self.api.runtime_api();
        let proxy_env = self.proxy.proxy_env();
        let mut env: Vec<(&str, &str)> = vec![("AWS_LAMBDA_RUNTIME_API", runtime_api.as_str())];
        env.extend(proxy_env.iter().map(|(name, value)| (*name, value.as_str())));
        env.extend_from_slice(extra);
        self.deployment.start(&env)
    }
}

fn revision(health: &Value) -> &str {
    health["revision"].as_str().unwrap_or_else(|| panic!("no revision in {health}"))
}

#[test]
fn registers_for_invoke_and_shutdown_with_its_name_once_the_artifact_is_loaded_and_served() {
    let lambda = Lambda::new("lambda-register");
    let _agent = lambda.start(&[]);
    let registrations = lambda.api.server.requests_to("POST", REGISTER);
    assert_eq!(registrations.len(), 1, "{:?}", lambda.api.server.requests());
    let register = &registrations[0];
    assert_eq!(register.header("Host"), Some(lambda.api.runtime_api().as_str()));
    assert_eq!(register.header_count("Lambda-Extension-Name"), 1);
    assert_eq!(register.header("Lambda-Extension-Name"), Some("clef-agent"));
    assert_eq!(register.header("Lambda-Extension-Identifier"), None);
    let body: Value = serde_json::from_slice(&register.body)
        .unwrap_or_else(|error| panic!("the register body is not JSON ({error}): {}", register.body_text()));
    assert_eq!(body, json!({"events": ["INVOKE", "SHUTDOWN"]}));
    // The artifact was loaded and the HTTP server up before the agent registered.
    let health = lambda.api.health_when(REGISTER, 0);
    assert_eq!(revision(&health), "rev-lambda-1", "{health}");
}

#[test]
fn logs_the_lambda_extension_lifecycle() {
    let lambda = Lambda::new("lambda-log");
    let agent = lambda.start(&[]);
    let stdout = agent.stdout();
    assert!(stdout.lines().any(|line| line == "[clef-agent] lifecycle: lambda-extension"), "{stdout}");
    assert!(!stdout.contains("lifecycle: daemon"), "{stdout}");
}

#[test]
fn asks_for_each_next_event_with_the_identifier_it_was_given() {
    let lambda = Lambda::new("lambda-next");
    let agent = lambda.start(&[]);
    lambda.api.wait_for_next_request(1, &agent);
    lambda.api.release(INVOKE);
    lambda.api.wait_for_next_request(2, &agent);
    for next in lambda.api.next_requests() {
        assert_eq!((next.method.as_str(), next.path.as_str()), ("GET", NEXT));
        assert_eq!(next.header_count("Lambda-Extension-Identifier"), 1);
        assert_eq!(next.header("Lambda-Extension-Identifier"), Some(IDENTIFIER));
        assert!(next.body.is_empty(), "event/next carried a body: {}", next.body_text());
    }
    let rejected: Vec<_> =
        lambda.api.server.requests().into_iter().filter(|r| r.path != REGISTER && r.path != NEXT).collect();
    assert!(rejected.is_empty(), "unexpected requests: {rejected:?}");
}

#[test]
fn serves_secrets_while_waiting_for_the_next_event() {
    let lambda = Lambda::new("lambda-serves");
    let agent = lambda.start(&[]);
    lambda.api.wait_for_next_request(1, &agent);
    // event/next is being held: the agent is parked in it, and still serves.
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    agent.get("/v1/ready").assert(200, r#"{"ready":true}"#);
    assert_eq!(lambda.api.next_requests().len(), 1);
}

#[test]
fn jit_mode_refetches_on_every_invoke_before_asking_for_the_next_event() {
    let lambda = Lambda::new("lambda-jit");
    let agent = lambda.start(&[("CLEF_AGENT_CACHE_TTL", "0")]);
    lambda.api.wait_for_next_request(1, &agent);
    let rotations = [("rev-lambda-2", PLAINTEXT_ROTATED), ("rev-lambda-3", PLAINTEXT)];
    for (index, (new_revision, plaintext)) in rotations.into_iter().enumerate() {
        lambda.deployment.publish(&artifact(plaintext, new_revision));
        lambda.api.release(INVOKE);
        lambda.api.wait_for_next_request(index + 2, &agent);
        // When the agent asked for the next event, the new revision was already in place.
        let health = lambda.api.health_when(NEXT, index + 1);
        assert_eq!(revision(&health), new_revision, "the refresh did not finish before event/next: {health}");
        agent.wait_for_stdout(&format!("[clef-agent] refreshed: revision {new_revision} "), STEP);
        agent.get("/v1/secrets").assert(200, plaintext);
    }
}

#[test]
fn cached_mode_does_not_refresh_on_an_invoke_within_the_ttl() {
    let lambda = Lambda::new("lambda-cached");
    let agent = lambda.start(&[("CLEF_AGENT_CACHE_TTL", "30")]);
    lambda.api.wait_for_next_request(1, &agent);
    lambda.deployment.publish(&artifact(PLAINTEXT_ROTATED, "rev-lambda-2"));
    lambda.api.release(INVOKE);
    lambda.api.wait_for_next_request(2, &agent);
    assert_eq!(revision(&lambda.api.health_when(NEXT, 1)), "rev-lambda-1");
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    lambda.api.release(SHUTDOWN);
    assert_eq!(agent.wait_exit(STEP).and_then(|status| status.code()), Some(0), "{}", agent.stderr());
    // The pipes are drained now: a refresh would have logged before the second event/next.
    assert!(!agent.stdout().contains("refreshed:"), "{}", agent.stdout());
}

#[test]
fn an_invoke_whose_refresh_fails_is_logged_and_not_fatal() {
    let lambda = Lambda::new("lambda-bad-refresh");
    let agent = lambda.start(&[("CLEF_AGENT_CACHE_TTL", "0")]);
    lambda.api.wait_for_next_request(1, &agent);
    lambda.deployment.publish("{ this is not an artifact");
    lambda.api.release(INVOKE);
    lambda.api.wait_for_next_request(2, &agent);
    agent.wait_for_stderr("[clef-agent] poll error: ", STEP);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
}

#[test]
fn exits_0_within_two_seconds_of_a_shutdown_event() {
    let lambda = Lambda::new("lambda-shutdown");
    let agent = lambda.start(&[]);
    lambda.api.wait_for_next_request(1, &agent);
    let released = Instant::now();
    lambda.api.release(SHUTDOWN);
    let status = agent.wait_exit(Duration::from_secs(2));
    let took = released.elapsed();
    assert_eq!(status.and_then(|status| status.code()), Some(0), "after {took:?}; stderr: {}", agent.stderr());
    let stdout = agent.stdout();
    assert!(
        stdout.ends_with("[clef-agent] Shutting down...\n[clef-agent] Shutdown complete.\n"),
        "the shutdown lines are missing or out of order:\n{stdout}"
    );
    assert_eq!(lambda.api.next_requests().len(), 1, "the agent asked for more events after SHUTDOWN");
}

#[test]
fn never_reaches_the_extensions_api_or_a_loopback_collector_through_a_proxy() {
    let lambda = Lambda::new("lambda-proxy");
    let collector = collector();
    let url = collector.url("/v1/logs");
    let agent = lambda.start(&[("CLEF_AGENT_CACHE_TTL", "0"), ("CLEF_AGENT_TELEMETRY_URL", &url)]);
    lambda.api.wait_for_next_request(1, &agent);
    lambda.deployment.publish(&artifact(PLAINTEXT_ROTATED, "rev-lambda-2"));
    lambda.api.release(INVOKE);
    lambda.api.wait_for_next_request(2, &agent);
    lambda.api.release(SHUTDOWN);
    assert_eq!(agent.wait_exit(STEP).and_then(|status| status.code()), Some(0), "{}", agent.stderr());
    // The whole flow worked: registered, refreshed, shut down, flushed telemetry…
    assert!(agent.stdout().contains("refreshed: revision rev-lambda-2"), "{}", agent.stdout());
    assert_eq!(collector.requests_to("POST", "/v1/logs").len(), 1, "telemetry was not delivered directly");
    // …and the proxy saw none of it.
    assert_eq!(lambda.proxy.connections(), Vec::<String>::new(), "traffic went through the proxy");
}

#[test]
fn reports_agent_stopped_for_a_lambda_shutdown_to_telemetry() {
    let lambda = Lambda::new("lambda-telemetry");
    let collector = collector();
    let url = collector.url("/v1/logs");
    let agent = lambda.start(&[("CLEF_AGENT_TELEMETRY_URL", &url)]);
    lambda.api.wait_for_next_request(1, &agent);
    lambda.api.release(SHUTDOWN);
    assert_eq!(agent.wait_exit(Duration::from_secs(2)).and_then(|status| status.code()), Some(0));
    let records = super::telemetry::log_records(&collector);
    let stopped = super::telemetry::record_of(&records, "agent.stopped");
    let reason = super::telemetry::attribute(&stopped["attributes"], "clef.reason");
    assert_eq!(reason, &json!({"stringValue": "lambda_shutdown"}));
}

#[test]
fn a_collector_that_never_answers_does_not_push_a_shutdown_past_two_seconds() {
    let lambda = Lambda::new("lambda-silent-collector");
    // Accepts connections (the kernel does, from the backlog) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
    let url = format!("http://127.0.0.1:{}/v1/logs", silent.local_addr().expect("no local address").port());
    let agent = lambda.start(&[("CLEF_AGENT_TELEMETRY_URL", &url)]);
    lambda.api.wait_for_next_request(1, &agent);
    let released = Instant::now();
    lambda.api.release(SHUTDOWN);
    let status = agent.wait_exit(Duration::from_secs(2));
    let took = released.elapsed();
    assert_eq!(status.and_then(|status| status.code()), Some(0), "after {took:?}; stderr: {}", agent.stderr());
}
