//! The AWS Lambda extension lifecycle (SPEC §7), chosen when `AWS_LAMBDA_RUNTIME_API` is set:
//! after the shared start-up, register with the Extensions API and loop on `event/next`.
//! INVOKE refreshes when the TTL has passed since the last refresh (JIT: every time) before
//! asking for the next event, because Lambda freezes the sandbox once every extension has asked;
//! SHUTDOWN stops within Lambda's 2 s budget. The API is always reached directly, never through
//! a proxy.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use super::{Event, ShutdownBudget};
use crate::config::{Config, Mode};
use crate::error::Fatal;
use crate::http::HttpClient;
use crate::log;
use crate::refresh::Refresher;
use crate::telemetry::{self, StopReason};

pub const EXTENSION_NAME: &str = "clef-agent";

/// Lambda allows an external extension 2 s after SHUTDOWN (less with internal extensions);
/// stay well inside it. There is no poller (refreshes run on this lifecycle's threads).
const LAMBDA_SHUTDOWN: ShutdownBudget = ShutdownBudget {
    requests: Duration::from_millis(500),
    poller: Duration::ZERO,
    telemetry: Duration::from_millis(1000),
};

/// Runs as a Lambda extension against the Extensions API at `runtime_api` (`host:port`).
pub fn run(config: Config, runtime_api: &str) -> Result<(), Fatal> {
    let Some(running) = super::start(config, "lambda-extension")? else { return Ok(()) };
    let base = format!("http://{runtime_api}/2020-01-01/extension");
    let http = running.http.clone();
    let identifier = match register(&http, &base) {
        Ok(identifier) => identifier,
        Err(message) => {
            return running.stop(StopReason::Error, Err(Fatal::LambdaApi(message)), LAMBDA_SHUTDOWN, |_| {})
        }
    };
    log::info("Agent ready. Polling for updates.");
    running.telemetry.emit(telemetry::Event::AgentStarted);
    let refresher = Arc::clone(&running.refresher);
    let events = running.events.clone();
    let spawned = std::thread::Builder::new()
        .name("lambda-events".into())
        .spawn(move || next_event_loop(&http, &base, &identifier, &refresher, &events));
    if let Err(error) = spawned {
        let failure = Err(Fatal::Thread { purpose: "Lambda event", error });
        return running.stop(StopReason::Error, failure, LAMBDA_SHUTDOWN, |_| {});
    }
    let (reason, outcome) = loop {
        match running.inbox.recv() {
            Ok(Event::Refresh) => {
                running.refresh_asked.take();
                running.refresher.refresh_on_signal(crate::time::now_ms())
            }
            Ok(Event::LambdaShutdown) => break (StopReason::LambdaShutdown, Ok(())),
            Ok(Event::Shutdown) | Err(_) => break (StopReason::Signal, Ok(())),
            Ok(Event::Failed(fatal)) => break (StopReason::Error, Err(fatal)),
            Ok(Event::InitialFetched(_)) => {}
        }
    };
    running.stop(reason, outcome, LAMBDA_SHUTDOWN, |_| {})
}

/// `POST …/register`; answers the `Lambda-Extension-Identifier`.
fn register(http: &HttpClient, base: &str) -> Result<String, String> {
    let failed = |why: String| format!("cannot register the Lambda extension: {why}");
    let response = http
        .for_host("127.0.0.1")
        .post(&format!("{base}/register"))
        .header("Lambda-Extension-Name", EXTENSION_NAME)
        .header("Content-Type", "application/json")
        .send(r#"{"events":["INVOKE","SHUTDOWN"]}"#.as_bytes())
        .map_err(|error| failed(error.to_string()))?;
    if response.status().as_u16() != 200 {
        return Err(failed(format!("the Extensions API answered HTTP {}", response.status().as_u16())));
    }
    response
        .headers()
        .get("Lambda-Extension-Identifier")
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.is_empty())
        .map(str::to_string)
        .ok_or_else(|| failed("the answer has no Lambda-Extension-Identifier header".into()))
}

/// Waits for events until SHUTDOWN (or the API fails), refreshing on INVOKE.
fn next_event_loop(http: &HttpClient, base: &str, identifier: &str, refresher: &Refresher, events: &Sender<Event>) {
    loop {
        let event = match next_event(http, base, identifier) {
            Ok(event) => event,
            Err(message) => {
                let _ = events.send(Event::Failed(Fatal::LambdaApi(message)));
                return;
            }
        };
        match event.as_str() {
            "SHUTDOWN" => {
                let _ = events.send(Event::LambdaShutdown);
                return;
            }
            "INVOKE" => refresh_if_due(refresher),
            _ => {}
        }
    }
}

fn next_event(http: &HttpClient, base: &str, identifier: &str) -> Result<String, String> {
    let failed = |why: String| format!("the Lambda Extensions API failed: {why}");
    let mut response = http
        .long_poll()
        .get(&format!("{base}/event/next"))
        .header("Lambda-Extension-Identifier", identifier)
        .call()
        .map_err(|error| failed(error.to_string()))?;
    if response.status().as_u16() != 200 {
        return Err(failed(format!("event/next answered HTTP {}", response.status().as_u16())));
    }
    let body = response
        .body_mut()
        .with_config()
        .limit(1024 * 1024)
        .read_to_vec()
        .map_err(|error| failed(error.to_string()))?;
    let event: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| failed("event/next answered something that is not JSON".into()))?;
    event["eventType"].as_str().map(str::to_string).ok_or_else(|| failed("the event has no eventType".into()))
}

/// On INVOKE: refreshes when [`refresh_due`]. Failures are logged, never fatal.
fn refresh_if_due(refresher: &Refresher) {
    let now = crate::time::now_ms();
    if refresh_due(refresher.cell.mode, refresher.cell.age_ms(now)) {
        refresher.refresh_and_log(now);
    }
}

/// JIT re-validates every time; cached mode once the last refresh is at least TTL old (`age_ms`,
/// measured on both clocks by the cell, so a wall clock set back cannot stop refreshes) or
/// there was none.
fn refresh_due(mode: Mode, age_ms: Option<u64>) -> bool {
    match mode {
        Mode::Jit => true,
        Mode::Cached { ttl } => age_ms.is_none_or(|age| u128::from(age) >= ttl.as_millis()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_invoke_refreshes_when_the_ttl_has_passed_or_in_jit_mode() {
        let cached = Mode::Cached { ttl: Duration::from_secs(30) };
        // (mode, age of the last refresh, due)
        let cases = [
            (cached, None, true),
            (cached, Some(29_999), false),
            (cached, Some(30_000), true),
            (Mode::Jit, Some(0), true),
        ];
        for (mode, age_ms, due) in cases {
            assert_eq!(refresh_due(mode, age_ms), due, "{} mode, age {age_ms:?}", mode.name());
        }
    }
}
