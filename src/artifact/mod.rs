//! The packed artifact's wire format (SPEC §1): parsing with a shape check that names the bad
//! field, the revocation kill signal, the integrity hash, and every reason an artifact can be
//! rejected. Everything here is pure: bytes in, a verdict out.

pub mod rollback;
pub mod signature;

use std::fmt;

use serde_json::{Map, Value};

use crate::text::{fits, quoted};
use crate::time::parse_iso8601_ms;

/// What a refused over-long field should have been ([`crate::text::MAX_QUOTED_CHARS`]).
const TOO_LONG_EXPECTED: &str = "at most 200 characters";
const _: () = assert!(crate::text::MAX_QUOTED_CHARS == 200, "TOO_LONG_EXPECTED names the limit");

/// A parsed artifact whose fields have the right types and whose required fields are present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    pub version: u64,
    pub identity: String,
    pub environment: String,
    pub packed_at: String,
    pub revision: String,
    pub ciphertext_hash: String,
    pub ciphertext: String,
    pub envelope: Option<Envelope>,
    /// `expiresAt` as written, and as epoch milliseconds.
    pub expires_at: Option<Expiry>,
    pub signature: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expiry {
    pub text: String,
    pub epoch_ms: i64,
}

/// The KMS envelope of SPEC §1: every field a non-empty string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub provider: String,
    pub key_id: String,
    pub wrapped_key: String,
    pub algorithm: String,
    pub iv: String,
    pub auth_tag: String,
}

/// What a fetched document turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Any JSON object with a `revokedAt` field: the kill signal, honoured even when the rest is
    /// malformed or unsigned.
    Revoked(Revocation),
    Artifact(Box<Artifact>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    pub identity: String,
    pub environment: String,
    pub revoked_at: String,
}

impl fmt::Display for Revocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Artifact revoked: {}/{} at {}", self.identity, self.environment, self.revoked_at)
    }
}

/// Why an artifact was refused. Each variant maps to the `reason` code telemetry reports for
/// `artifact.invalid` (SPEC §2). No message ever contains a secret value.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// The bytes are not JSON, or not a JSON object.
    JsonParse(String),
    /// `version` is a number other than 1.
    UnsupportedVersion(String),
    /// A required field is absent or empty.
    MissingField { field: &'static str, empty: bool },
    /// `envelope` lacks fields or has empty ones.
    IncompleteEnvelope(Vec<&'static str>),
    /// A known field has the wrong JSON type or an unreadable value.
    InvalidShape { field: &'static str, expected: &'static str, found: String },
    /// `ciphertextHash` does not match the ciphertext.
    Integrity { expected: String, actual: String },
    /// A verify key is configured and the artifact carries no signature.
    SignatureMissing,
    /// The signature does not verify with the configured key.
    SignatureInvalid,
    /// The signature field cannot be used at all (e.g. not base64).
    SignatureError(String),
    /// The KMS refused or failed to unwrap the data key.
    KmsUnwrap(String),
    /// The ciphertext could not be decrypted.
    Decrypt(String),
    /// The decrypted plaintext is not `{namespace: {key: "value"}}`.
    PayloadParse(String),
    /// With a verify key: a signed artifact older than the newest one accepted, or than a
    /// signed revocation notice (`rollback.rs`).
    Rollback(rollback::Rollback),
}

impl Rejection {
    /// The telemetry reason code of SPEC §2.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::JsonParse(_) => "json_parse",
            Rejection::UnsupportedVersion(_) => "unsupported_version",
            Rejection::MissingField { .. } => "missing_fields",
            Rejection::IncompleteEnvelope(_) => "incomplete_envelope",
            Rejection::InvalidShape { .. } => "invalid_shape",
            Rejection::Integrity { .. } => "integrity",
            Rejection::SignatureMissing => "signature_missing",
            Rejection::SignatureInvalid => "signature_invalid",
            Rejection::SignatureError(_) => "signature_error",
            Rejection::KmsUnwrap(_) => "kms_unwrap",
            Rejection::Decrypt(_) => "decrypt",
            Rejection::PayloadParse(_) => "payload_parse",
            Rejection::Rollback(_) => "rollback",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::JsonParse(detail) => write!(f, "artifact is not a JSON object: {detail}"),
            Rejection::UnsupportedVersion(found) => {
                write!(f, "unsupported version {found}: this agent reads version 1 artifacts")
            }
            Rejection::MissingField { field, empty: false } => write!(f, "missing required field '{field}'"),
            Rejection::MissingField { field, empty: true } => write!(f, "required field '{field}' is empty"),
            Rejection::IncompleteEnvelope(fields) => write!(
                f,
                "incomplete envelope: {} must be non-empty strings",
                fields.iter().map(|field| format!("'envelope.{field}'")).collect::<Vec<_>>().join(", ")
            ),
            Rejection::InvalidShape { field, expected, found } => {
                write!(f, "field '{field}' must be {expected}, found {found}")
            }
            Rejection::Integrity { expected, actual } => {
                write!(f, "integrity check failed: ciphertextHash is {expected} but the ciphertext hashes to {actual}")
            }
            Rejection::SignatureMissing => {
                f.write_str("artifact is unsigned but CLEF_AGENT_VERIFY_KEY requires a signature")
            }
            Rejection::SignatureInvalid => {
                f.write_str("signature verification failed: the artifact was not signed by CLEF_AGENT_VERIFY_KEY")
            }
            Rejection::SignatureError(detail) => write!(f, "signature is unusable: {detail}"),
            Rejection::KmsUnwrap(detail) => write!(f, "KMS could not unwrap the data key: {detail}"),
            Rejection::Decrypt(detail) => write!(f, "decryption failed: {detail}"),
            Rejection::PayloadParse(detail) => write!(f, "decrypted payload is invalid: {detail}"),
            Rejection::Rollback(rollback) => write!(f, "{rollback}"),
        }
    }
}

impl std::error::Error for Rejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Rejection::Rollback(rollback) => Some(rollback),
            _ => None,
        }
    }
}

/// Parses fetched bytes: revocation first (it needs nothing else to be valid), then the shape
/// check of SPEC §2 step 4.
pub fn parse(bytes: &[u8]) -> Result<Parsed, Rejection> {
    let value: Value = serde_json::from_slice(bytes).map_err(|error| {
        let what = if error.is_eof() { "the JSON ends early" } else { "invalid JSON" };
        Rejection::JsonParse(format!("{what} at line {} column {}", error.line(), error.column()))
    })?;
    let Value::Object(object) = value else {
        return Err(Rejection::JsonParse(format!("found {}", json_type(&value))));
    };
    if let Some(revoked_at) = object.get("revokedAt") {
        return Ok(Parsed::Revoked(revocation(&object, revoked_at)));
    }
    shape_check(object).map(|artifact| Parsed::Artifact(Box::new(artifact)))
}

/// The artifact a revocation notice was made from, when the notice still has an artifact's
/// shape (`clef` adds `revokedAt` to the artifact it revokes): its signature, if it verifies,
/// proves the notice's `packedAt` for rollback protection. `None` for a bare notice.
pub fn revoked_artifact(bytes: &[u8]) -> Option<Artifact> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(object)) => shape_check(object).ok(),
        _ => None,
    }
}

/// A notice is honoured whatever else it holds, so its fields are cut to quotable length here
/// rather than refused: the message is logged on every poll and answered to every request.
fn revocation(object: &Map<String, Value>, revoked_at: &Value) -> Revocation {
    let text = |field: &str| match object.get(field) {
        Some(Value::String(text)) => quoted(text).into_owned(),
        _ => "unknown".to_string(),
    };
    Revocation {
        identity: text("identity"),
        environment: text("environment"),
        revoked_at: match revoked_at {
            Value::String(text) => quoted(text).into_owned(),
            // Numbers are bounded by serde_json's own types; arrays and objects are not.
            other => quoted(&other.to_string()).into_owned(),
        },
    }
}

/// Takes the object by value so that the ciphertext (nearly all of an artifact) is moved out of
/// it rather than copied: a copy would hold the base64 text twice, on top of the fetched body.
fn shape_check(mut object: Map<String, Value>) -> Result<Artifact, Rejection> {
    let object = &mut object;
    let version = match object.get("version") {
        None | Some(Value::Null) => return Err(Rejection::MissingField { field: "version", empty: false }),
        Some(Value::Number(number)) if number.as_u64() == Some(1) => 1,
        Some(Value::Number(number)) => return Err(Rejection::UnsupportedVersion(number.to_string())),
        Some(other) => return Err(invalid_shape("version", "the number 1", other)),
    };
    // Type errors come before emptiness: a wrong type names the field and what it should be.
    let identity = required_string(object, "identity")?;
    let environment = required_string(object, "environment")?;
    let packed_at = required_string(object, "packedAt")?;
    let revision = required_string(object, "revision")?;
    let ciphertext_hash = required_string(object, "ciphertextHash")?;
    let ciphertext = match object.get_mut("ciphertext") {
        Some(Value::String(text)) => std::mem::take(text),
        _ => required_string(object, "ciphertext")?,
    };
    let expires_at = optional_string(object, "expiresAt")?;
    let signature = optional_string(object, "signature")?;
    optional_string(object, "signatureAlgorithm")?;
    let envelope = match object.get("envelope") {
        None | Some(Value::Null) => None,
        Some(Value::Object(envelope)) => Some(envelope),
        Some(other) => return Err(invalid_shape("envelope", "an object", other)),
    };
    for (field, value) in [("ciphertext", &ciphertext), ("revision", &revision), ("ciphertextHash", &ciphertext_hash)] {
        if value.is_empty() {
            return Err(Rejection::MissingField { field, empty: true });
        }
    }
    let envelope = envelope.map(envelope_check).transpose()?;
    // The fields that log lines, replies and telemetry quote. Real ones are names, timestamps
    // and a hash; a longer one is refused rather than cut, since each is also signed or
    // compared, and a cut value would be a different one.
    let quotable = [
        ("identity", Some(&identity)),
        ("environment", Some(&environment)),
        ("packedAt", Some(&packed_at)),
        ("revision", Some(&revision)),
        ("ciphertextHash", Some(&ciphertext_hash)),
        ("expiresAt", expires_at.as_ref()),
        ("envelope.provider", envelope.as_ref().map(|envelope| &envelope.provider)),
    ];
    for (field, value) in quotable {
        if let Some(value) = value.filter(|value| !fits(value)) {
            return Err(Rejection::InvalidShape {
                field,
                expected: TOO_LONG_EXPECTED,
                found: format!("{} bytes", value.len()),
            });
        }
    }
    let expires_at = expires_at
        .map(|text| match parse_iso8601_ms(&text) {
            Some(epoch_ms) => Ok(Expiry { text, epoch_ms }),
            None => Err(Rejection::InvalidShape {
                field: "expiresAt",
                expected: "an ISO-8601 timestamp",
                found: "a string that is not one".into(),
            }),
        })
        .transpose()?;
    Ok(Artifact {
        version,
        identity,
        environment,
        packed_at,
        revision,
        ciphertext_hash,
        ciphertext,
        envelope,
        expires_at,
        signature,
    })
}

fn envelope_check(envelope: &Map<String, Value>) -> Result<Envelope, Rejection> {
    const FIELDS: [&str; 6] = ["provider", "keyId", "wrappedKey", "algorithm", "iv", "authTag"];
    let mut values = Vec::with_capacity(FIELDS.len());
    let mut incomplete = Vec::new();
    for field in FIELDS {
        match envelope.get(field) {
            Some(Value::String(text)) if !text.is_empty() => values.push(text.clone()),
            _ => incomplete.push(field),
        }
    }
    if !incomplete.is_empty() {
        return Err(Rejection::IncompleteEnvelope(incomplete));
    }
    let [provider, key_id, wrapped_key, algorithm, iv, auth_tag] =
        <[String; 6]>::try_from(values).map_err(|_| Rejection::IncompleteEnvelope(FIELDS.to_vec()))?;
    Ok(Envelope { provider, key_id, wrapped_key, algorithm, iv, auth_tag })
}

fn required_string(object: &Map<String, Value>, field: &'static str) -> Result<String, Rejection> {
    optional_string(object, field)?.ok_or(Rejection::MissingField { field, empty: false })
}

/// A field that may be absent (or `null`, which JavaScript producers write for "absent").
fn optional_string(object: &Map<String, Value>, field: &'static str) -> Result<Option<String>, Rejection> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(invalid_shape(field, "a string", other)),
    }
}

fn invalid_shape(field: &'static str, expected: &'static str, found: &Value) -> Rejection {
    Rejection::InvalidShape { field, expected, found: json_type(found).to_string() }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// SPEC §2 step 7: the lowercase hex SHA-256 of the UTF-8 bytes of the base64 text.
pub fn check_integrity(artifact: &Artifact) -> Result<(), Rejection> {
    let actual = crate::secret::sha256_hex(artifact.ciphertext.as_bytes());
    if actual == artifact.ciphertext_hash {
        Ok(())
    } else {
        Err(Rejection::Integrity { expected: artifact.ciphertext_hash.clone(), actual })
    }
}

/// A small valid artifact for unit tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn sample() -> Artifact {
    Artifact {
        version: 1,
        identity: "api".into(),
        environment: "prod".into(),
        packed_at: "2026-11-24T12:00:00.000Z".into(),
        revision: "r1".into(),
        ciphertext_hash: "abc".into(),
        ciphertext: "YWdl".into(),
        envelope: None,
        expires_at: None,
        signature: None,
    }
}

/// `expiresAt` has passed at `now_ms`.
pub fn is_expired(artifact: &Artifact, now_ms: u64) -> bool {
    artifact.expires_at.as_ref().is_some_and(|expiry| expiry.epoch_ms <= now_ms as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        let ciphertext = "YWdl";
        serde_json::json!({
            "version": 1, "identity": "api", "environment": "prod",
            "packedAt": "2026-11-24T12:00:00.000Z", "revision": "r1",
            "ciphertextHash": crate::secret::sha256_hex(ciphertext.as_bytes()),
            "ciphertext": ciphertext,
        })
    }

    fn parse_value(value: &serde_json::Value) -> Result<Parsed, Rejection> {
        parse(value.to_string().as_bytes())
    }

    #[test]
    fn accepts_a_minimal_artifact_and_ignores_unknown_fields() {
        let mut value = minimal();
        value["futureField"] = serde_json::json!({"anything": [1, 2]});
        value["signatureAlgorithm"] = "Ed25519".into();
        let Ok(Parsed::Artifact(artifact)) = parse_value(&value) else { panic!("not accepted") };
        assert_eq!(artifact.revision, "r1");
        assert!(check_integrity(&artifact).is_ok());
    }

    #[test]
    fn revocation_wins_over_a_malformed_body() {
        let parsed = parse(br#"{"revokedAt":"2026-11-20T10:00:00Z","identity":"api","version":"x"}"#).unwrap();
        let Parsed::Revoked(revocation) = parsed else { panic!("not a revocation") };
        assert_eq!(revocation.to_string(), "Artifact revoked: api/unknown at 2026-11-20T10:00:00Z");
    }

    #[test]
    fn null_optional_fields_count_as_absent() {
        let mut value = minimal();
        value["expiresAt"] = serde_json::Value::Null;
        value["envelope"] = serde_json::Value::Null;
        assert!(matches!(parse_value(&value), Ok(Parsed::Artifact(_))));
    }

    #[test]
    fn expiry_is_compared_with_the_clock() {
        let mut value = minimal();
        value["expiresAt"] = "2026-11-24T12:00:00.000Z".into();
        let Ok(Parsed::Artifact(artifact)) = parse_value(&value) else { panic!() };
        let at = crate::time::parse_iso8601_ms("2026-11-24T12:00:00.000Z").unwrap() as u64;
        assert!(!is_expired(&artifact, at - 1));
        assert!(is_expired(&artifact, at));
    }

    #[test]
    fn a_huge_revocation_notice_is_honoured_with_a_short_message() {
        let notice = serde_json::json!({
            "revokedAt": "9".repeat(20 * 1024 * 1024), "identity": "api", "environment": "e".repeat(1_000_000),
        });
        let Ok(Parsed::Revoked(revocation)) = parse_value(&notice) else { panic!("not a revocation") };
        let environment = format!("{}…(truncated, 1000000 bytes)", "e".repeat(200));
        let revoked_at = format!("{}…(truncated, 20971520 bytes)", "9".repeat(200));
        assert_eq!(revocation.to_string(), format!("Artifact revoked: api/{environment} at {revoked_at}"));
        let notice = serde_json::json!({"revokedAt": vec![serde_json::Value::Null; 100_000]});
        let Ok(Parsed::Revoked(revocation)) = parse_value(&notice) else { panic!("not a revocation") };
        assert!(revocation.revoked_at.ends_with("…(truncated, 500001 bytes)"), "{}", revocation.revoked_at);
    }

    #[test]
    fn a_huge_ciphertext_hash_or_expiry_is_refused_with_a_short_message() {
        let mut huge_hash = minimal();
        huge_hash["ciphertextHash"] = "a".repeat(20 * 1024 * 1024).into();
        let mut endless_fraction = minimal();
        endless_fraction["expiresAt"] = format!("2099-01-01T00:00:00.{}Z", "1".repeat(1_000_000)).into();
        let mut long_provider = minimal();
        long_provider["envelope"] = serde_json::json!({
            "provider": "p".repeat(201), "keyId": "k".repeat(5000), "wrappedKey": "w".repeat(5000),
            "algorithm": "a", "iv": "i", "authTag": "t",
        });
        for (value, expected) in [
            (huge_hash, "field 'ciphertextHash' must be at most 200 characters, found 20971520 bytes"),
            (endless_fraction, "field 'expiresAt' must be at most 200 characters, found 1000021 bytes"),
            (long_provider, "field 'envelope.provider' must be at most 200 characters, found 201 bytes"),
        ] {
            assert_eq!(parse_value(&value).unwrap_err().to_string(), expected);
        }
    }

    #[test]
    fn long_key_ids_wrapped_keys_ciphertexts_and_signatures_are_kept_whole() {
        let mut value = minimal();
        value["signature"] = "s".repeat(10_000).into();
        value["envelope"] = serde_json::json!({
            "provider": "gcp", "keyId": "k".repeat(300), "wrappedKey": "w".repeat(5000),
            "algorithm": "a", "iv": "i", "authTag": "t",
        });
        let Ok(Parsed::Artifact(artifact)) = parse_value(&value) else { panic!("not accepted") };
        assert_eq!(artifact.signature.map(|signature| signature.len()), Some(10_000));
        let envelope = artifact.envelope.unwrap();
        assert_eq!((envelope.key_id.len(), envelope.wrapped_key.len()), (300, 5000));
    }

    #[test]
    fn every_rejection_has_its_reason_code() {
        assert_eq!(Rejection::IncompleteEnvelope(vec!["iv"]).reason(), "incomplete_envelope");
        assert_eq!(Rejection::SignatureMissing.reason(), "signature_missing");
        assert_eq!(Rejection::PayloadParse(String::new()).reason(), "payload_parse");
    }
}
