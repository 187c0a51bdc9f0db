//! Operations, run against the real executable the way they are used in production: the Lambda
//! extension against a loopback Extensions API, telemetry against a loopback OTLP collector,
//! systemd's notify protocol on a real datagram socket, the Unix socket and the token file on
//! disk, and the one-shot commands. Each peer records what the agent sent, so a test checks
//! the bytes on the wire, not the agent's opinion of them.

mod commands;
mod lambda;
mod lambda_fatal;
mod socket_and_token;
mod systemd;
mod telemetry;
mod telemetry_failures;

use crate::support::{build_artifact, ArtifactOptions};

/// An unsigned, non-expiring artifact for `plaintext` at `revision`.
fn artifact(plaintext: &str, revision: &str) -> String {
    build_artifact(plaintext, revision, &ArtifactOptions::default())
}

/// Every value of a `{namespace: {key: value}}` plaintext.
fn secret_values(plaintext: &str) -> Vec<String> {
    let parsed: serde_json::Value = serde_json::from_str(plaintext).expect("the plaintext is JSON");
    let namespaces = parsed.as_object().expect("the plaintext is an object");
    namespaces
        .values()
        .flat_map(|keys| keys.as_object().expect("a namespace is an object").values())
        .map(|value| value.as_str().expect("a value is a string").to_string())
        .collect()
}

/// Every `<namespace>__<key>` name of a plaintext (sorted: serde_json does not keep the order).
fn flat_names(plaintext: &str) -> Vec<String> {
    let mut names = Vec::new();
    let parsed: serde_json::Value = serde_json::from_str(plaintext).expect("the plaintext is JSON");
    for (namespace, keys) in parsed.as_object().expect("the plaintext is an object") {
        for key in keys.as_object().expect("a namespace is an object").keys() {
            names.push(format!("{namespace}__{key}"));
        }
    }
    names
}

/// Panics naming the first of `needles` that occurs in `text`.
fn assert_absent(text: &str, needles: &[String], what: &str) {
    for needle in needles {
        assert!(!text.contains(needle.as_str()), "{what} contains {needle:?}:\n{text}");
    }
}
