//! Artifact JSON parsing and validation with arbitrary bytes: `refresh::validate` (parse, shape
//! check, revocation, expiry, integrity), then `refresh::open` (decryption with the demo age
//! identity, plaintext parsing) the way the refresh pipeline runs them.
//!
//! Random bytes almost never carry the right `ciphertextHash`, so a parsed artifact that is not
//! expired is also checked and opened with its hash corrected: that lets mutated ciphertexts,
//! envelopes and signatures reach the decrypt and verify steps. No KMS client is configured, so envelope
//! artifacts stop at "no KMS client" (the decrypt target covers the envelope fields).
#![no_main]

use std::sync::OnceLock;

use clef_agent::artifact::signature::VerifyKey;
use clef_agent::artifact::{self, Parsed, Rejection};
use clef_agent::decrypt::{AgeIdentity, DecryptionKeys};
use clef_agent::refresh::{self, Policy, RefreshError, Validated};
use libfuzzer_sys::fuzz_target;

/// A fixed clock: 2027-01-15, after the fixtures' packedAt and before their expiries.
const NOW_MS: u64 = 1_800_000_000_000;

struct Fixture {
    keys: DecryptionKeys,
    verify_keys: [VerifyKey; 2],
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| Fixture {
        keys: DecryptionKeys {
            age: Some(
                AgeIdentity::from_file_contents(include_str!("../../tests/fixtures/keys/demo.agekey"))
                    .expect("demo.agekey"),
            ),
            kms: None,
        },
        verify_keys: [
            VerifyKey::from_base64_spki(include_str!("../../tests/fixtures/keys/ed25519.spki.b64")).expect("ed25519"),
            VerifyKey::from_base64_spki(include_str!("../../tests/fixtures/keys/p256.spki.b64")).expect("p256"),
        ],
    })
}

fn sha256_hex(text: &str) -> String {
    clef_agent::secret::hex(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

/// Everything a caller does with an error: its message, telemetry reason and start-up hint.
fn describe(error: &RefreshError) {
    assert!(!error.to_string().is_empty());
    let _ = error.hint();
    let _ = error.is_configuration_problem();
    if let RefreshError::Rejected { rejection, .. } = error {
        assert!(!rejection.reason().is_empty());
    }
}

fuzz_target!(|bytes: &[u8]| {
    let fixture = fixture();
    let validated = refresh::validate(bytes, NOW_MS, &Policy::default());
    let parsed = artifact::parse(bytes);
    let hash_matches = |artifact: &artifact::Artifact| artifact.ciphertext_hash == sha256_hex(&artifact.ciphertext);
    match validated {
        Ok(Validated::New { artifact, .. }) => {
            // What the shape and integrity checks promise about an accepted artifact.
            assert!(matches!(&parsed, Ok(Parsed::Artifact(parsed)) if **parsed == *artifact));
            assert_eq!(artifact.version, 1);
            assert!(
                !artifact.ciphertext.is_empty() && !artifact.revision.is_empty() && !artifact.ciphertext_hash.is_empty()
            );
            assert!(!artifact::is_expired(&artifact, NOW_MS));
            assert!(hash_matches(&artifact), "a wrong ciphertextHash got past the integrity check");
            if let Some(envelope) = &artifact.envelope {
                for field in [
                    &envelope.provider,
                    &envelope.key_id,
                    &envelope.wrapped_key,
                    &envelope.algorithm,
                    &envelope.iv,
                    &envelope.auth_tag,
                ] {
                    assert!(!field.is_empty());
                }
            }
            // As the pipeline runs it.
            match refresh::open(&artifact, &fixture.keys) {
                Ok(_) => assert!(artifact.envelope.is_none(), "opened without a KMS"),
                Err(error) => describe(&error.into()),
            }
        }
        Ok(Validated::SameRevision) => panic!("validate() saw a last revision where none was given"),
        Err(error) => {
            describe(&error);
            // validate() is parse(), the expiry check and the integrity check (no verify key):
            // the verdicts must agree.
            match (&error, &parsed) {
                (RefreshError::Rejected { rejection, .. }, Err(parse_error)) => assert_eq!(rejection, parse_error),
                (RefreshError::Revoked(revocation), Ok(Parsed::Revoked(parsed))) => assert_eq!(revocation, parsed),
                (RefreshError::Expired { expires_at }, Ok(Parsed::Artifact(parsed))) => {
                    assert!(artifact::is_expired(parsed, NOW_MS));
                    assert_eq!(Some(expires_at), parsed.expires_at.as_ref().map(|expiry| &expiry.text));
                }
                (
                    RefreshError::Rejected { rejection: Rejection::Integrity { .. }, .. },
                    Ok(Parsed::Artifact(parsed)),
                ) => {
                    assert!(!artifact::is_expired(parsed, NOW_MS));
                    assert!(!hash_matches(parsed), "integrity failed with the correct hash");
                }
                (error, parsed) => panic!("validate() said {error:?} but parse() said {parsed:?}"),
            }
        }
    }

    // With the hash made right, so the decrypt and verify steps see the fuzzed fields.
    let Ok(Parsed::Artifact(parsed)) = parsed else { return };
    if artifact::is_expired(&parsed, NOW_MS) {
        return;
    }
    let mut fixed = (*parsed).clone();
    fixed.ciphertext_hash = sha256_hex(&fixed.ciphertext);
    assert!(artifact::check_integrity(&fixed).is_ok(), "integrity failed with the correct hash");
    match refresh::open(&fixed, &fixture.keys) {
        Ok(plaintext) => {
            assert!(fixed.envelope.is_none(), "an envelope artifact opened without a KMS client");
            let _ = plaintext.key_count();
        }
        Err(error) => describe(&error.into()),
    }
    for key in &fixture.verify_keys {
        match key.verify(&fixed) {
            Ok(()) => assert!(fixed.signature.is_some()),
            Err(rejection) => describe(&rejection.into()),
        }
    }
});
