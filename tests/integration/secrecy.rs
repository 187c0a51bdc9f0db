//! SPEC §8: the token, the age key and secret values never reach a log line — not on the happy
//! path, not in a rotation, not in the error of a rejected artifact or a refused configuration.

use std::time::Duration;

use crate::support::{
    age_key_line, build_artifact, get, sha256_hex, wait_until, ArtifactOptions, Deployment, PLAINTEXT,
    PLAINTEXT_ROTATED, TOKEN,
};

/// Plaintexts that the agent must refuse, with secret-looking text inside.
const BROKEN_PLAINTEXT: &str = r#"{"database":{"DB_PASSWORD":"leak-me-if-you-can-91c3""#;
const NESTED_PLAINTEXT: &str = r#"{"database":{"DB_PASSWORD":{"nested":"leak-me-nested-4d2e"}}}"#;
const NUMBER_PLAINTEXT: &str = r#"{"database":{"DB_PORT":918273645}}"#;

/// Every string value of a `{namespace: {key: value}}` plaintext.
fn values_of(plaintext: &str) -> Vec<String> {
    let parsed: serde_json::Value = serde_json::from_str(plaintext).expect("the plaintext is JSON");
    let mut values = Vec::new();
    for namespace in parsed.as_object().expect("an object").values() {
        for value in namespace.as_object().expect("a namespace object").values() {
            values.push(value.as_str().expect("a string value").to_string());
        }
    }
    values
}

/// Asserts that `output` contains none of `secrets`, ignoring case (a key printed in lowercase
/// bech32 is still the key).
fn assert_contains_none(output: &str, secrets: &[String]) {
    let output = output.to_lowercase();
    for secret in secrets {
        assert!(secret.len() >= 8, "{secret:?} is too short to search for reliably");
        assert!(!output.contains(&secret.to_lowercase()), "the output contains the secret {secret:?}:\n{output}");
    }
}

#[test]
fn never_logs_the_token_the_age_key_or_a_secret_value() {
    let age_key = age_key_line("keys/demo.agekey");
    let deployment = Deployment::new("secrecy", &build_artifact(PLAINTEXT, "rev-1", &ArtifactOptions::default()));
    let agent = deployment.start(&[
        ("CLEF_AGENT_AGE_KEY_FILE", ""),
        ("CLEF_AGENT_AGE_KEY", &age_key),
        ("CLEF_AGENT_CACHE_TTL", "300"),
    ]);
    let port = agent.port();

    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    agent.get("/v1/secrets/database/DB_PASSWORD").assert(200, "db-pass-4a1f");
    assert_eq!(agent.get("/v1/keys").status, 200);
    get(port, "/v1/secrets", &[("Authorization", "Bearer not-the-token-at-all")])
        .assert(401, r#"{"error":"Unauthorized"}"#);
    let in_the_path = format!("/v1/secrets/{TOKEN}?token={TOKEN}");
    assert_eq!(agent.get(&in_the_path).status, 404);

    // A rotation…
    deployment.publish(&build_artifact(PLAINTEXT_ROTATED, "rev-2", &ArtifactOptions::default()));
    agent.signal(libc::SIGHUP);
    agent.wait_for_stdout("refreshed: revision rev-2", Duration::from_secs(2));
    agent.get("/v1/secrets").assert(200, PLAINTEXT_ROTATED);

    // …then artifacts that are rejected, some with secret-looking text in their plaintext.
    let mut wrong_hash: serde_json::Value =
        serde_json::from_str(&build_artifact(PLAINTEXT, "rev-3", &ArtifactOptions::default())).unwrap();
    wrong_hash["ciphertextHash"] = sha256_hex(b"tampered").into();
    let rejected = [
        wrong_hash.to_string(),
        build_artifact(BROKEN_PLAINTEXT, "rev-4", &ArtifactOptions::default()),
        build_artifact(NESTED_PLAINTEXT, "rev-5", &ArtifactOptions::default()),
        build_artifact(NUMBER_PLAINTEXT, "rev-6", &ArtifactOptions::default()),
    ];
    for (index, artifact) in rejected.iter().enumerate() {
        deployment.publish(artifact);
        agent.signal(libc::SIGHUP);
        assert!(
            wait_until(Duration::from_secs(2), || agent.stderr().matches("poll error: ").count() > index),
            "rejected artifact {index} caused no poll error: {}",
            agent.stderr()
        );
    }
    assert_eq!(
        agent.stderr().matches("poll error: artifact rejected (payload_parse)").count(),
        3,
        "{}",
        agent.stderr()
    );
    agent.get("/v1/secrets").assert(200, PLAINTEXT_ROTATED);

    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(5)).and_then(|status| status.code()), Some(0));

    let mut secrets = vec![TOKEN.to_string(), age_key.clone(), age_key["AGE-SECRET-KEY-1".len()..].to_string()];
    secrets.extend(values_of(PLAINTEXT));
    secrets.extend(values_of(PLAINTEXT_ROTATED));
    secrets.extend(["leak-me-if-you-can-91c3", "leak-me-nested-4d2e", "918273645"].map(String::from));
    let (stdout, stderr) = (agent.stdout(), agent.stderr());
    assert!(stdout.contains("Shutdown complete."), "the scenario did not run to its end: {stdout}");
    assert_contains_none(&stdout, &secrets);
    assert_contains_none(&stderr, &secrets);
}

#[test]
fn configuration_errors_never_repeat_a_secret() {
    let deployment =
        Deployment::new("secrecy-config", &build_artifact(PLAINTEXT, "rev-1", &ArtifactOptions::default()));
    let age_key = age_key_line("keys/demo.agekey");
    let mistyped_key = format!("{}Q", &age_key[..age_key.len() - 1]);
    let bad_token = "token with spaces-7f2c9e";
    for (extra, secret) in [
        (vec![("CLEF_AGENT_AGE_KEY_FILE", ""), ("CLEF_AGENT_AGE_KEY", mistyped_key.as_str())], mistyped_key.clone()),
        (vec![("CLEF_AGENT_TOKEN", bad_token)], bad_token.to_string()),
    ] {
        let agent = deployment.spawn(&extra);
        let status = agent.wait_exit(Duration::from_secs(5)).expect("a bad configuration did not stop the agent");
        assert_eq!(status.code(), Some(1));
        let stderr = agent.stderr();
        assert!(stderr.starts_with("[clef-agent] config error: "), "{stderr}");
        let searchable = vec![secret.clone(), secret[secret.len() / 2..].to_string()];
        assert_contains_none(&stderr, &searchable);
        assert_contains_none(&agent.stdout(), &searchable);
    }
}
