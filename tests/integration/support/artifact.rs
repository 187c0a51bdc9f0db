//! Packed artifacts built at run time, the way `clef pack` builds them, with tools independent
//! of the agent: the `age` CLI encrypts, `ring` hashes and signs.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ring::signature::Ed25519KeyPair;

use super::read_fixture;

/// What to add to a built artifact besides the required fields.
#[derive(Debug, Default, Clone)]
pub struct ArtifactOptions {
    /// `expiresAt`, verbatim.
    pub expires_at: Option<String>,
    /// Sign with `tests/fixtures/keys/ed25519.pem` over the `clef-sig-v3` payload.
    pub signed: bool,
    /// `packedAt`, verbatim; [`DEFAULT_PACKED_AT`] when unset.
    pub packed_at: Option<String>,
}

/// The `packedAt` of a built artifact unless the options say otherwise.
const DEFAULT_PACKED_AT: &str = "2026-11-24T12:00:00.000Z";

/// A version 1 age artifact for `api-gateway`/`production` holding `plaintext`.
pub fn build_artifact(plaintext: &str, revision: &str, options: &ArtifactOptions) -> String {
    let ciphertext = base64::engine::general_purpose::STANDARD.encode(age_encrypt(plaintext.as_bytes()));
    let ciphertext_hash = sha256_hex(ciphertext.as_bytes());
    let packed_at = options.packed_at.as_deref().unwrap_or(DEFAULT_PACKED_AT);
    let mut artifact = serde_json::json!({
        "version": 1,
        "identity": "api-gateway",
        "environment": "production",
        "packedAt": packed_at,
        "revision": revision,
        "ciphertextHash": ciphertext_hash,
        "ciphertext": ciphertext,
    });
    if let Some(expires_at) = &options.expires_at {
        artifact["expiresAt"] = expires_at.as_str().into();
    }
    if options.signed {
        let payload = [
            "clef-sig-v3",
            "1",
            "api-gateway",
            "production",
            revision,
            packed_at,
            &ciphertext_hash,
            options.expires_at.as_deref().unwrap_or_default(),
            // No KMS envelope: its six lines are empty.
            "",
            "",
            "",
            "",
            "",
            "",
        ]
        .join("\n");
        let signature = ed25519_signing_key().sign(payload.as_bytes());
        artifact["signature"] = base64::engine::general_purpose::STANDARD.encode(signature.as_ref()).into();
        artifact["signatureAlgorithm"] = "Ed25519".into();
    }
    serde_json::to_string_pretty(&artifact).expect("an artifact always serialises")
}

/// The KMS side of an envelope artifact: who wraps the data key, and the wrapped key.
#[derive(Debug, Clone)]
pub struct EnvelopeKms {
    /// `aws`, `gcp` or `azure` (anything else, to test the refusal).
    pub provider: String,
    pub key_id: String,
    /// Base64 of the data key as the KMS wrapped it.
    pub wrapped_key: String,
    pub algorithm: String,
}

/// A version 1 KMS envelope artifact for `api-gateway`/`production`: `plaintext` sealed with
/// AES-256-GCM under `data_key` (random 12-byte IV, the 16-byte tag apart, no AAD), as
/// `clef pack` does.
pub fn build_envelope_artifact(plaintext: &str, revision: &str, data_key: &[u8; 32], kms: &EnvelopeKms) -> String {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let mut iv = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut iv).expect("randomness");
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, data_key).expect("a 32-byte key"));
    let mut sealed = plaintext.as_bytes().to_vec();
    let tag = key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut sealed)
        .expect("AES-GCM seals");
    let base64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let ciphertext = base64(&sealed);
    let artifact = serde_json::json!({
        "version": 1,
        "identity": "api-gateway",
        "environment": "production",
        "packedAt": "2026-11-24T12:00:00.000Z",
        "revision": revision,
        "ciphertextHash": sha256_hex(ciphertext.as_bytes()),
        "ciphertext": ciphertext,
        "envelope": {
            "provider": kms.provider,
            "keyId": kms.key_id,
            "wrappedKey": kms.wrapped_key,
            "algorithm": kms.algorithm,
            "iv": base64(&iv),
            "authTag": base64(tag.as_ref()),
        },
    });
    serde_json::to_string_pretty(&artifact).expect("an artifact always serialises")
}

/// `age -r <demo recipient>`, binary output.
fn age_encrypt(plaintext: &[u8]) -> Vec<u8> {
    let recipient = read_fixture("keys/demo.agekey.pub");
    let mut child = match Command::new("age")
        .args(["-r", recipient.trim()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            panic!("the age CLI is required (apt-get install age)")
        }
        Err(error) => panic!("cannot run the age CLI: {error}"),
    };
    let mut stdin = child.stdin.take().expect("piped stdin");
    // Write from another thread: age may fill its stdout pipe before it has read all of stdin.
    let plaintext = plaintext.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&plaintext));
    let output = child.wait_with_output().expect("the age CLI did not finish");
    writer.join().expect("the writer thread panicked").expect("cannot feed the age CLI");
    assert!(output.status.success(), "age failed: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// The Ed25519 key of `tests/fixtures/keys/ed25519.pem` (PKCS#8 PEM).
fn ed25519_signing_key() -> Ed25519KeyPair {
    let pem = read_fixture("keys/ed25519.pem");
    let body: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body.trim()).expect("ed25519.pem is not base64 PEM");
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).expect("ed25519.pem is not a PKCS#8 Ed25519 key")
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|byte| format!("{byte:02x}")).collect()
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is before 1970").as_millis() as u64
}

/// `2026-11-24T12:00:00.000Z` for an epoch-milliseconds instant (proleptic Gregorian, UTC).
pub fn epoch_ms_to_iso8601(epoch_ms: u64) -> String {
    let days = (epoch_ms / 86_400_000) as i64;
    let millis_of_day = epoch_ms % 86_400_000;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        millis_of_day / 3_600_000,
        millis_of_day / 60_000 % 60,
        millis_of_day / 1000 % 60,
        millis_of_day % 1000
    )
}

#[test]
fn formats_instants_as_iso8601() {
    assert_eq!(epoch_ms_to_iso8601(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(epoch_ms_to_iso8601(1_795_521_600_123), "2026-11-24T12:00:00.123Z");
    assert_eq!(epoch_ms_to_iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
}
