//! The Lambda extension lifecycle against a loopback Extensions API that answers as AWS
//! documents it: register, then `event/next` held open until the test releases an event.

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::loopback::{Answer, Server};
use crate::support::{build_artifact, wait_until, ArtifactOptions, Deployment, PLAINTEXT, PLAINTEXT_ROTATED};

const IDENTIFIER: &str = "4d3a0c6f-0e2b-4b8e-9d3c-7a1b2c3d4e5f";
const INVOKE: &str = r#"{"eventType":"INVOKE","deadlineMs":1795554936600,"requestId":"3da1f2dc-3222-475e-9205-e2e6c6318895","invokedFunctionArn":"arn:aws:lambda:us-east-1:123456789012:function:ExtensionTest","tracing":{"type":"X-Amzn-Trace-Id","value":"Root=1-5f35ae12-0c0fec141ab77a00bc047aa2;Parent=2be948a625588e32;Sampled=1"}}"#;
const SHUTDOWN: &str = r#"{"eventType":"SHUTDOWN","shutdownReason":"spindown","deadlineMs":1795554938600}"#;

/// The Extensions API: registration answers at once, `event/next` waits for [`Api::release`].
struct Api {
    server: Server,
    events: Sender<String>,
}

impl Api {
    fn start() -> Api {
        let (events, inbox) = mpsc::channel::<String>();
        let inbox = Mutex::new(inbox);
        let server = Server::start(move |request| {
            match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/2020-01-01/extension/register") => Answer {
                status: 200,
                headers: vec![
                    ("Content-Type".into(), "application/json".into()),
                    ("Lambda-Extension-Identifier".into(), IDENTIFIER.into()),
                ],
                body: br#"{"functionName":"helloWorld","functionVersion":"$LATEST","handler":"lambda_function.lambda_handler"}"#.to_vec(),
            },
            ("GET", "/2020-01-01/extension/event/next") if request.header("Lambda-Extension-Identifier") == Some(IDENTIFIER) => {
                let event = inbox.lock().unwrap().recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| SHUTDOWN.into());
                Answer::json(200, &event)
            }
            _ => Answer::json(403, r#"{"errorMessage":"unexpected request","errorType":"Extension.Forbidden"}"#),
        }
        });
        Api { server, events }
    }

    fn release(&self, event: &str) {
        self.events.send(event.to_string()).unwrap();
    }

    fn next_requests(&self) -> usize {
        self.server.requests().iter().filter(|request| request.path.ends_with("/event/next")).count()
    }
}

/// A "proxy" that only counts connections: the Extensions API must never be reached through one.
fn proxy_that_counts() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connections);
    std::thread::spawn(move || {
        for _ in listener.incoming() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, connections)
}

#[test]
fn registers_refreshes_on_every_invoke_in_jit_mode_and_exits_on_shutdown() {
    let api = Api::start();
    let (proxy_port, proxy_connections) = proxy_that_counts();
    let deployment =
        Deployment::new("lambda-jit", &build_artifact(PLAINTEXT, "rev-lambda-1", &ArtifactOptions::default()));
    let runtime_api = format!("127.0.0.1:{}", api.server.port);
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let agent = deployment.start(&[
        ("AWS_LAMBDA_RUNTIME_API", &runtime_api),
        ("CLEF_AGENT_CACHE_TTL", "0"),
        ("HTTP_PROXY", &proxy),
        ("http_proxy", &proxy),
    ]);
    assert!(agent.stdout().contains("[clef-agent] lifecycle: lambda-extension\n"), "{}", agent.stdout());

    let register = &api.server.requests()[0];
    assert_eq!((register.method.as_str(), register.path.as_str()), ("POST", "/2020-01-01/extension/register"));
    assert_eq!(register.header("Lambda-Extension-Name"), Some("clef-agent"));
    let body: serde_json::Value = serde_json::from_slice(&register.body).unwrap();
    assert_eq!(body, serde_json::json!({"events": ["INVOKE", "SHUTDOWN"]}));

    assert!(wait_until(Duration::from_secs(5), || api.next_requests() == 1), "no event/next after registering");
    agent.get("/v1/secrets").assert(200, PLAINTEXT);

    deployment.publish(&build_artifact(PLAINTEXT_ROTATED, "rev-lambda-2", &ArtifactOptions::default()));
    api.release(INVOKE);
    assert!(wait_until(Duration::from_secs(5), || api.next_requests() == 2), "no event/next after the INVOKE");
    // The refresh happens before the agent asks for the next event (Lambda freezes the sandbox
    // then), so the new revision is served by now.
    agent.get("/v1/secrets").assert(200, PLAINTEXT_ROTATED);
    assert!(agent.stdout().contains("refreshed: revision rev-lambda-2"), "{}", agent.stdout());

    api.release(SHUTDOWN);
    let status = agent.wait_exit(Duration::from_secs(3)).expect("the agent did not exit within Lambda's budget");
    assert_eq!(status.code(), Some(0));
    assert!(
        agent.stdout().ends_with("[clef-agent] Shutting down...\n[clef-agent] Shutdown complete.\n"),
        "{}",
        agent.stdout()
    );
    assert_eq!(proxy_connections.load(Ordering::SeqCst), 0, "the Extensions API was reached through the proxy");
}

#[test]
fn an_invoke_within_the_ttl_does_not_refresh_in_cached_mode() {
    let api = Api::start();
    let deployment =
        Deployment::new("lambda-cached", &build_artifact(PLAINTEXT, "rev-lambda-1", &ArtifactOptions::default()));
    let runtime_api = format!("127.0.0.1:{}", api.server.port);
    let agent = deployment.start(&[("AWS_LAMBDA_RUNTIME_API", &runtime_api), ("CLEF_AGENT_CACHE_TTL", "30")]);
    assert!(wait_until(Duration::from_secs(5), || api.next_requests() == 1));
    deployment.publish(&build_artifact(PLAINTEXT_ROTATED, "rev-lambda-2", &ArtifactOptions::default()));
    api.release(INVOKE);
    assert!(wait_until(Duration::from_secs(5), || api.next_requests() == 2));
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    assert!(!agent.stdout().contains("refreshed:"), "{}", agent.stdout());
    api.release(SHUTDOWN);
    assert_eq!(agent.wait_exit(Duration::from_secs(3)).and_then(|status| status.code()), Some(0));
}

#[test]
fn a_failed_registration_is_fatal() {
    let server = Server::start(|_| Answer::json(500, r#"{"errorMessage":"boom","errorType":"Extension.Unknown"}"#));
    let deployment =
        Deployment::new("lambda-register", &build_artifact(PLAINTEXT, "rev-lambda-1", &ArtifactOptions::default()));
    let runtime_api = format!("127.0.0.1:{}", server.port);
    let agent = deployment.spawn(&[("AWS_LAMBDA_RUNTIME_API", &runtime_api)]);
    let status = agent.wait_exit(Duration::from_secs(10)).expect("the agent kept running");
    assert_eq!(status.code(), Some(1));
    assert!(
        agent
            .stderr()
            .contains("[clef-agent] fatal: cannot register the Lambda extension: the Extensions API answered HTTP 500"),
        "{}",
        agent.stderr()
    );
}
