//! After a failed refresh, requests share the failure for a few seconds (`src/retry.rs`): once
//! the TTL had wiped the secrets, 500 requests against a failing source were 500 fetches and
//! 500 log lines.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::loopback::{Answer, Server};
use crate::support::{build_artifact, wait_until, ArtifactOptions, Deployment, PLAINTEXT};

#[test]
fn two_hundred_requests_after_a_ttl_wipe_against_a_failing_source_cost_a_handful_of_fetches() {
    let artifact = build_artifact(PLAINTEXT, "rev-1", &ArtifactOptions::default());
    let failing = Arc::new(AtomicBool::new(false));
    let server = {
        let failing = Arc::clone(&failing);
        Server::start(move |_| match failing.load(Ordering::SeqCst) {
            true => Answer::json(500, r#"{"error":"nope"}"#),
            false => Answer::json(200, &artifact),
        })
    };
    let deployment = Deployment::new("backoff", "{}");
    let agent = deployment.start(&[("CLEF_AGENT_SOURCE", &server.url("/a.json")), ("CLEF_AGENT_CACHE_TTL", "30")]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    failing.store(true, Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(45), || agent.get("/v1/secrets").status == 503),
        "never wiped; stderr: {}",
        agent.stderr()
    );

    let fetches_before = server.requests().len();
    let errors_before = agent.stderr().matches("poll error: ").count();
    for _ in 0..200 {
        let refused = agent.get("/v1/secrets");
        assert_eq!(refused.status, 503);
        assert_eq!(refused.json()["error"], "Refresh failed");
    }
    let fetches = server.requests().len() - fetches_before;
    let errors = agent.stderr().matches("poll error: ").count() - errors_before;
    assert!(fetches <= 5, "200 requests made {fetches} fetches");
    assert!(errors <= 5, "200 requests logged {errors} poll errors:\n{}", agent.stderr());
}
