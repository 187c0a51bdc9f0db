//! The checked-in fixture corpus (`tests/fixtures/`), one file per case as rage does it: every
//! malformed artifact is refused by the library with its exact, designed message; every valid
//! one — packed by the age CLI, by the npm `age-encryption` package, sealed in a KMS envelope by
//! Node's crypto, signed with Ed25519 or ECDSA P-256 — opens to `plaintext.json`, and the agent
//! serves it byte for byte.

use std::path::{Path, PathBuf};

use clef_agent::artifact::signature::VerifyKey;
use clef_agent::decrypt::{AgeIdentity, DecryptionKeys, Plaintext};
use clef_agent::refresh::validate_and_open_once;

use base64::Engine as _;
use std::sync::Arc;

use clef_agent::cloud::aws::credentials::CredentialChain;
use clef_agent::cloud::Env;
use clef_agent::http::HttpClient;
use clef_agent::kms::Kms;

use crate::support::loopback::{Answer, Server};
use crate::support::{fixture, now_ms, read_fixture, sha256_hex, Deployment};

/// Case (file stem in `artifacts/invalid/`) → the exact error the library gives. Ciphertexts
/// are random on every regeneration, so `{claimed}` and `{actual}` stand for the file's
/// `ciphertextHash` and the SHA-256 of its `ciphertext`.
const INVALID: &[(&str, &str)] = &[
    ("not-json", "artifact rejected (json_parse): artifact is not a JSON object: the JSON ends early at line 6 column 0"),
    ("not-object", "artifact rejected (json_parse): artifact is not a JSON object: found an array"),
    ("version-2", "artifact rejected (unsupported_version): unsupported version 2: this agent reads version 1 artifacts"),
    ("version-string", "artifact rejected (invalid_shape): field 'version' must be the number 1, found a string"),
    ("version-missing", "artifact rejected (missing_fields): missing required field 'version'"),
    ("identity-number", "artifact rejected (invalid_shape): field 'identity' must be a string, found a number"),
    ("packed-at-number", "artifact rejected (invalid_shape): field 'packedAt' must be a string, found a number"),
    ("expires-at-number", "artifact rejected (invalid_shape): field 'expiresAt' must be a string, found a number"),
    ("signature-number", "artifact rejected (invalid_shape): field 'signature' must be a string, found a number"),
    ("revision-empty", "artifact rejected (missing_fields): required field 'revision' is empty"),
    ("ciphertext-empty", "artifact rejected (missing_fields): required field 'ciphertext' is empty"),
    ("ciphertext-missing", "artifact rejected (missing_fields): missing required field 'ciphertext'"),
    ("ciphertext-hash-missing", "artifact rejected (missing_fields): missing required field 'ciphertextHash'"),
    (
        "hash-mismatch",
        "artifact rejected (integrity): integrity check failed: ciphertextHash is {claimed} but the ciphertext hashes to {actual}",
    ),
    (
        "hash-uppercase",
        "artifact rejected (integrity): integrity check failed: ciphertextHash is {claimed} but the ciphertext hashes to {actual}",
    ),
    ("expires-at-past", "Artifact expired at 2020-01-01T00:00:00.000Z"),
    (
        "expires-at-not-a-date",
        "artifact rejected (invalid_shape): field 'expiresAt' must be an ISO-8601 timestamp, found a string that is not one",
    ),
    ("revoked", "Artifact revoked: api-gateway/production at 2026-11-20T10:00:00.000Z"),
    ("revoked-malformed", "Artifact revoked: api-gateway/production at 2026-11-20T10:00:00.000Z"),
    (
        "envelope-incomplete",
        "artifact rejected (incomplete_envelope): incomplete envelope: 'envelope.wrappedKey', 'envelope.algorithm', \
         'envelope.iv', 'envelope.authTag' must be non-empty strings",
    ),
    ("envelope-not-object", "artifact rejected (invalid_shape): field 'envelope' must be an object, found a string"),
    (
        "envelope-unknown-provider",
        "artifact rejected (kms_unwrap): KMS could not unwrap the data key: unknown envelope provider 'vault' \
         (expected aws, gcp or azure)",
    ),
    (
        "ciphertext-bad-base64",
        "artifact rejected (invalid_shape): field 'ciphertext' must be standard base64, found text that is not",
    ),
    ("age-truncated", "artifact rejected (decrypt): decryption failed: the age payload is truncated or was modified"),
    (
        "age-armored",
        "artifact rejected (decrypt): decryption failed: the ciphertext is an ASCII-armored age file; \
         artifacts carry the binary age format",
    ),
    (
        "age-wrong-recipient",
        "artifact rejected (decrypt): decryption failed: the configured age key is not a recipient of this artifact: \
         check CLEF_AGENT_AGE_KEY / CLEF_AGENT_AGE_KEY_FILE",
    ),
    (
        "plaintext-not-json",
        "artifact rejected (payload_parse): decrypted payload is invalid: the plaintext is not valid JSON (line 1, column 1)",
    ),
    (
        "plaintext-array",
        "artifact rejected (payload_parse): decrypted payload is invalid: \
         the plaintext must be a JSON object of namespaces, found an array",
    ),
    (
        "plaintext-number-value",
        "artifact rejected (payload_parse): decrypted payload is invalid: value of 'db.PORT' must be a string, found a number",
    ),
    (
        "plaintext-nested",
        "artifact rejected (payload_parse): decrypted payload is invalid: value of 'db.x' must be a string, found an object",
    ),
    (
        "plaintext-mixed",
        "artifact rejected (payload_parse): decrypted payload is invalid: top-level 'db' is an object but the first \
         top-level value is a string: a plaintext holds only string values (flat) or only objects of string values \
         (namespaces), not both",
    ),
    ("plaintext-not-utf8", "artifact rejected (payload_parse): decrypted payload is invalid: the plaintext is not UTF-8"),
    (
        "signature-invalid",
        "artifact rejected (signature_invalid): signature verification failed: \
         the artifact was not signed by CLEF_AGENT_VERIFY_KEY",
    ),
    (
        "envelope-wrong-tag",
        "artifact rejected (decrypt): decryption failed: AES-256-GCM authentication failed: \
         the data key, IV or tag does not match, or the ciphertext was modified",
    ),
    (
        "envelope-truncated",
        "artifact rejected (decrypt): decryption failed: AES-256-GCM authentication failed: \
         the data key, IV or tag does not match, or the ciphertext was modified",
    ),
    (
        "envelope-iv-length",
        "artifact rejected (invalid_shape): field 'envelope.iv' must be standard base64 of 12 bytes, found 16 bytes",
    ),
    (
        "envelope-wrong-wrapped-key",
        "artifact rejected (kms_unwrap): KMS could not unwrap the data key: Cloud KMS decrypt answered HTTP 400: \
         INVALID_ARGUMENT Decryption failed: the ciphertext is invalid.",
    ),
    (
        "signature-not-base64",
        "artifact rejected (signature_error): signature is unusable: 'signature' is not valid base64",
    ),
    (
        "signed-by-other-key",
        "artifact rejected (signature_invalid): signature verification failed: \
         the artifact was not signed by CLEF_AGENT_VERIFY_KEY",
    ),
];

/// The envelope fixtures' key at the fixture KMS, and its "wrapped" data key (what
/// tests/fixtures/gen/build.py writes).
const ENVELOPE_KEY_PATH: &str =
    "/v1/projects/clef-fixtures/locations/global/keyRings/fixtures/cryptoKeys/envelope:decrypt";
const ENVELOPE_WRAPPED_KEY: &str = "Zml4dHVyZS13cmFwcGVkLWRhdGEta2V5LXYx";

/// A Cloud KMS stand-in for the envelope fixtures: the metadata server's token endpoint and a
/// `decrypt` that unwraps the one fixture data key (`keys/envelope-data-key.txt`) and refuses
/// anything else as Cloud KMS does. The real protocol tests are in `kms::gcp`.
fn fixture_kms() -> Server {
    let data_key_hex: String = read_fixture("keys/envelope-data-key.txt")
        .lines()
        .filter(|line| !line.starts_with('#'))
        .collect::<String>()
        .trim()
        .to_string();
    let data_key: Vec<u8> = (0..data_key_hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&data_key_hex[at..at + 2], 16).unwrap())
        .collect();
    let plaintext = base64::engine::general_purpose::STANDARD.encode(data_key);
    Server::start(move |request| {
        if request.path.starts_with("/computeMetadata/") {
            return Answer::json(200, r#"{"access_token":"fixture-token","expires_in":3600,"token_type":"Bearer"}"#);
        }
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        if request.path == ENVELOPE_KEY_PATH && body["ciphertext"] == ENVELOPE_WRAPPED_KEY {
            Answer::json(200, &format!(r#"{{"plaintext":"{plaintext}"}}"#))
        } else {
            Answer::json(
                400,
                r#"{"error":{"code":400,"message":"Decryption failed: the ciphertext is invalid.","status":"INVALID_ARGUMENT"}}"#,
            )
        }
    })
}

/// The demo age identity, and KMS clients pointed at `kms` (a [`fixture_kms`]).
fn keys_with(kms: &Server) -> DecryptionKeys {
    let host = format!("127.0.0.1:{}", kms.port);
    let endpoint = kms.url("");
    let env = Env::from_pairs(&[("GCE_METADATA_HOST", &host), ("CLEF_AGENT_GCP_KMS_ENDPOINT", &endpoint)]);
    DecryptionKeys {
        age: Some(AgeIdentity::from_file_contents(&read_fixture("keys/demo.agekey")).expect("demo.agekey")),
        kms: Some(Kms::new(
            HttpClient::default(),
            env.clone(),
            Arc::new(CredentialChain::new(env, HttpClient::default())),
        )),
    }
}

fn keys() -> DecryptionKeys {
    DecryptionKeys {
        age: Some(AgeIdentity::from_file_contents(&read_fixture("keys/demo.agekey")).expect("demo.agekey")),
        kms: None,
    }
}

fn verify_key(spki_fixture: &str) -> VerifyKey {
    VerifyKey::from_base64_spki(read_fixture(spki_fixture).trim())
        .unwrap_or_else(|error| panic!("{spki_fixture} {error}"))
}

/// Signature cases are checked with the Ed25519 verify key; the others without one.
fn verify_key_for_invalid(case: &str) -> Option<VerifyKey> {
    (case.starts_with("signature") || case.starts_with("signed-by-other-key"))
        .then(|| verify_key("keys/ed25519.spki.b64"))
}

/// A valid fixture is verified with the key its name announces.
fn verify_key_for_valid(name: &str) -> Option<VerifyKey> {
    if name.contains("ecdsa") || name.contains("p256") {
        Some(verify_key("keys/p256.spki.b64"))
    } else if name.contains("ed25519") {
        Some(verify_key("keys/ed25519.spki.b64"))
    } else {
        None
    }
}

/// The `*.json` files of a fixture directory, sorted.
fn json_files(directory: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(directory)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", directory.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|extension| extension == "json"))
        .collect();
    files.sort();
    files
}

fn stem(path: &Path) -> &str {
    path.file_stem().and_then(|stem| stem.to_str()).expect("a UTF-8 file name")
}

/// Fills `{claimed}` and `{actual}` in with the artifact's `ciphertextHash` and the SHA-256 of
/// its `ciphertext`, computed here independently of the agent.
fn with_hashes(expected: &str, artifact: &[u8]) -> String {
    if !expected.contains('{') {
        return expected.to_string();
    }
    let artifact: serde_json::Value = serde_json::from_slice(artifact).expect("a hash case is JSON");
    let field = |name: &str| artifact[name].as_str().unwrap_or_else(|| panic!("no string {name}")).to_string();
    expected
        .replace("{claimed}", &field("ciphertextHash"))
        .replace("{actual}", &sha256_hex(field("ciphertext").as_bytes()))
}

/// The library's verdict on an artifact: its plaintext, or the error message.
fn verdict(bytes: &[u8], verify_key: Option<&VerifyKey>, keys: &DecryptionKeys) -> Result<Plaintext, String> {
    let (_, plaintext) =
        validate_and_open_once(bytes, now_ms(), verify_key, keys).map_err(|error| error.to_string())?;
    Ok(plaintext)
}

#[test]
fn every_invalid_fixture_is_refused_with_its_exact_error() {
    let kms = fixture_kms();
    let keys = keys_with(&kms);
    let files = json_files(&fixture("artifacts/invalid"));
    let mut mismatches = Vec::new();
    for path in &files {
        let case = stem(path);
        let bytes = std::fs::read(path).unwrap();
        let actual = match verdict(&bytes, verify_key_for_invalid(case).as_ref(), &keys) {
            Ok(_) => "<accepted>".to_string(),
            Err(message) => message,
        };
        match INVALID.iter().find(|(name, _)| *name == case).map(|(_, expected)| with_hashes(expected, &bytes)) {
            Some(expected) if expected == actual => {}
            Some(expected) => mismatches.push(format!("{case}:\n  expected {expected:?}\n  actual   {actual:?}")),
            None => mismatches.push(format!("{case}: no expected error in INVALID; actual {actual:?}")),
        }
    }
    for (case, _) in INVALID {
        if !files.iter().any(|path| stem(path) == *case) {
            mismatches.push(format!("{case}: in INVALID but there is no artifacts/invalid/{case}.json"));
        }
    }
    assert!(mismatches.is_empty(), "{} of {} cases differ:\n{}", mismatches.len(), files.len(), mismatches.join("\n"));
}

#[test]
fn every_valid_fixture_opens_to_the_plaintext() {
    let kms = fixture_kms();
    let keys = keys_with(&kms);
    let expected = Plaintext::parse(read_fixture("plaintext.json").as_bytes()).expect("plaintext.json is a plaintext");
    let files = json_files(&fixture("artifacts"));
    assert!(!files.is_empty(), "no valid fixtures in tests/fixtures/artifacts");
    for path in &files {
        let name = stem(path);
        let bytes = std::fs::read(path).unwrap();
        match verdict(&bytes, verify_key_for_valid(name).as_ref(), &keys) {
            Ok(plaintext) => assert!(plaintext == expected, "{name} opens to a different plaintext"),
            Err(message) => panic!("{name} was refused: {message}"),
        }
    }
}

/// Starts an agent on a copy of `artifacts/<name>` and asserts it serves `plaintext.json`.
fn assert_served_byte_for_byte(name: &str, extra: &[(&str, &str)]) {
    let deployment = Deployment::new(&format!("fixture-{name}"), &read_fixture(&format!("artifacts/{name}")));
    let agent = deployment.start(extra);
    let plaintext = read_fixture("plaintext.json");
    agent.get("/v1/secrets").assert(200, plaintext.trim_end());
}

#[test]
fn serves_an_artifact_packed_with_the_age_cli_byte_for_byte() {
    assert_served_byte_for_byte("age-cli.json", &[]);
}

#[test]
fn serves_an_artifact_packed_with_the_npm_age_package_byte_for_byte() {
    assert_served_byte_for_byte("age-npm.json", &[]);
}

#[test]
fn serves_a_kms_envelope_sealed_by_node_crypto_byte_for_byte_without_an_age_key() {
    let kms = fixture_kms();
    let (host, endpoint) = (format!("127.0.0.1:{}", kms.port), kms.url(""));
    assert_served_byte_for_byte(
        "envelope-gcp-node.json",
        &[("CLEF_AGENT_AGE_KEY_FILE", ""), ("GCE_METADATA_HOST", &host), ("CLEF_AGENT_GCP_KMS_ENDPOINT", &endpoint)],
    );
    assert_eq!(kms.requests_to("POST", ENVELOPE_KEY_PATH).len(), 1);
}

#[test]
fn reads_an_age_key_file_with_crlf_line_ends() {
    let crlf = fixture("keys/demo-crlf.agekey");
    assert!(read_fixture("keys/demo-crlf.agekey").contains("\r\n"), "demo-crlf.agekey has no CRLF line ends");
    assert_served_byte_for_byte("age-cli.json", &[("CLEF_AGENT_AGE_KEY_FILE", crlf.to_str().unwrap())]);
}

#[test]
fn serves_an_ecdsa_p256_signed_fixture_with_its_verify_key() {
    let key = read_fixture("keys/p256.spki.b64");
    assert_served_byte_for_byte("signed-ecdsa-p256.json", &[("CLEF_AGENT_VERIFY_KEY", key.trim())]);
}

#[test]
fn goes_by_the_verify_key_not_by_the_signature_label() {
    // An ECDSA signature labelled Ed25519: the P-256 key accepts it, the Ed25519 key refuses it.
    let key = read_fixture("keys/p256.spki.b64");
    assert_served_byte_for_byte("signed-ecdsa-label-lies.json", &[("CLEF_AGENT_VERIFY_KEY", key.trim())]);
    let artifact = read_fixture("artifacts/signed-ecdsa-label-lies.json");
    let ed25519 = verify_key("keys/ed25519.spki.b64");
    let refused = validate_and_open_once(artifact.as_bytes(), now_ms(), Some(&ed25519), &keys()).unwrap_err();
    assert_eq!(
        refused.to_string(),
        "artifact rejected (signature_invalid): signature verification failed: \
         the artifact was not signed by CLEF_AGENT_VERIFY_KEY"
    );
}

#[test]
fn refuses_every_signed_fixture_under_another_verify_key() {
    let other = verify_key("keys/other-ed25519.spki.b64");
    for path in json_files(&fixture("artifacts")).iter().filter(|path| stem(path).starts_with("signed-")) {
        let error = verdict(&std::fs::read(path).unwrap(), Some(&other), &keys()).err();
        assert!(
            error.as_deref().is_some_and(|error| error.starts_with("artifact rejected (signature_invalid): ")),
            "{}: {error:?}",
            stem(path)
        );
    }
}

#[test]
fn serves_an_ed25519_signed_fixture_with_its_verify_key() {
    let key = read_fixture("keys/ed25519.spki.b64");
    assert_served_byte_for_byte("signed-ed25519.json", &[("CLEF_AGENT_VERIFY_KEY", key.trim())]);
    assert_served_byte_for_byte("signed-npm-ed25519.json", &[("CLEF_AGENT_VERIFY_KEY", key.trim())]);
}

/// Starts an agent on `artifacts/flat/<name>` and checks every route against `plaintext`, a
/// flat `{KEY: value}` written by another implementation (Node, printf), whose keys are `keys`
/// in plaintext order.
fn assert_flat_fixture_served(name: &str, plaintext_fixture: &str, keys: &[&str], extra: &[(&str, &str)]) {
    let deployment = Deployment::new(&format!("flat-{name}"), &read_fixture(&format!("artifacts/flat/{name}")));
    let agent = deployment.start(extra);
    let plaintext = read_fixture(plaintext_fixture);
    agent.get("/v1/secrets").assert(200, &plaintext);
    let expected: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&plaintext).unwrap();
    assert_eq!(agent.get("/v1/keys").json(), serde_json::json!(keys), "{name}: /v1/keys in plaintext order");
    assert_eq!(expected.len(), keys.len());
    for (key, value) in &expected {
        let value = value.as_str().unwrap();
        let text = agent.get(&format!("/v1/secrets/{key}"));
        text.assert(200, value);
        assert_eq!(text.header("content-type"), Some("text/plain; charset=utf-8"));
        let bearer = format!("Bearer {}", crate::support::TOKEN);
        let json = agent.get_with(
            &format!("/v1/secrets/{key}"),
            &[("Authorization", &bearer), ("Accept", "text/plain;q=0.5, application/json")],
        );
        assert_eq!(json.header("content-type"), Some("application/json; charset=utf-8"), "{name} {key}");
        assert_eq!(json.json(), serde_json::json!({ "value": value }), "{name} {key}");
    }
}

#[test]
fn serves_a_broker_shaped_flat_kms_envelope_as_the_broker_encrypted_it() {
    let kms = fixture_kms();
    let (host, endpoint) = (format!("127.0.0.1:{}", kms.port), kms.url(""));
    assert_flat_fixture_served(
        "broker-envelope-node.json",
        "plaintext-flat-broker.json",
        &["DB_USER", "DB_PASSWORD", "DB_HOST"],
        &[("CLEF_AGENT_AGE_KEY_FILE", ""), ("GCE_METADATA_HOST", &host), ("CLEF_AGENT_GCP_KMS_ENDPOINT", &endpoint)],
    );
}

#[test]
fn serves_a_legacy_flat_artifact_by_its_namespace_double_underscore_keys() {
    let keys = ["zeta__Z_KEY", "database__DB_PASSWORD", "unicode__GREETING"];
    assert_flat_fixture_served("legacy-age-cli.json", "plaintext-flat-legacy.json", &keys, &[]);
}

#[test]
fn takes_verify_keys_as_pem_written_by_openssl() {
    let ed25519 = read_fixture("keys/ed25519.pub.pem");
    let p256 = read_fixture("keys/p256.pub.pem");
    assert!(ed25519.starts_with("-----BEGIN PUBLIC KEY-----\n") && p256.contains('\n'), "not PEM as openssl writes it");
    assert_served_byte_for_byte("signed-ed25519.json", &[("CLEF_AGENT_VERIFY_KEY", &ed25519)]);
    assert_served_byte_for_byte("signed-ecdsa-p256.json", &[("CLEF_AGENT_VERIFY_KEY", &p256)]);
    let refused = verdict(
        read_fixture("artifacts/signed-ecdsa-p256.json").as_bytes(),
        Some(&VerifyKey::parse(&ed25519).unwrap()),
        &keys(),
    );
    assert!(refused.is_err_and(|error| error.starts_with("artifact rejected (signature_invalid)")));
}

#[test]
fn a_verify_key_in_neither_form_stops_the_agent_naming_both_forms() {
    let deployment = Deployment::new("verify-key-garbage", &read_fixture("artifacts/signed-ed25519.json"));
    for key in ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA", &read_fixture("keys/ed25519.pem")] {
        let agent = deployment.spawn(&[("CLEF_AGENT_VERIFY_KEY", key)]);
        let status = agent.wait_exit(std::time::Duration::from_secs(10)).expect("the agent exits");
        assert_eq!(status.code(), Some(1));
        let stderr = agent.stderr();
        assert!(stderr.starts_with("[clef-agent] config error: CLEF_AGENT_VERIFY_KEY "), "{stderr}");
        assert!(stderr.contains("'-----BEGIN PUBLIC KEY-----'") && stderr.contains("base64 of its DER"), "{stderr}");
        assert!(!stderr.contains("AAAAC3NzaC1lZDI1NTE5") && !stderr.contains("MC4CAQ"), "the key is not echoed");
    }
}
