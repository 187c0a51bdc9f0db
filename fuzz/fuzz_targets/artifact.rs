//! Artifact JSON parsing and validation with arbitrary bytes: `refresh::screen` (parse, shape
//! check, revocation, expiry), then `refresh::open` (integrity, signature, decryption with the
//! demo age identity, plaintext parsing) the way the refresh pipeline runs them.
//!
//! Random bytes almost never carry the right `ciphertextHash`, so an accepted artifact is also
//! opened a second time with its hash corrected: that lets mutated ciphertexts, envelopes and
//! signatures reach the decrypt and verify steps. No KMS client is configured, so envelope
//! artifacts stop at "no KMS client" (the decrypt target covers the envelope fields).
#![no_main]

use std::sync::OnceLock;

use clef_agent::artifact::signature::VerifyKey;
use clef_agent::artifact::{self, Parsed, Rejection};
use clef_agent::decrypt::{AgeIdentity, DecryptionKeys};
use clef_agent::refresh::{self, RefreshError};
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
    let screened = refresh::screen(bytes, NOW_MS);
    let parsed = artifact::parse(bytes);
    let artifact = match screened {
        Ok(artifact) => artifact,
        Err(error) => {
            describe(&error);
            // screen() is parse() plus the expiry check: the verdicts must agree.
            match (&error, &parsed) {
                (RefreshError::Rejected { rejection, .. }, Err(parse_error)) => assert_eq!(rejection, parse_error),
                (RefreshError::Revoked(revocation), Ok(Parsed::Revoked(parsed))) => assert_eq!(revocation, parsed),
                (RefreshError::Expired { expires_at }, Ok(Parsed::Artifact(parsed))) => {
                    assert!(artifact::is_expired(parsed, NOW_MS));
                    assert_eq!(Some(expires_at), parsed.expires_at.as_ref().map(|expiry| &expiry.text));
                }
                (error, parsed) => panic!("screen() said {error:?} but parse() said {parsed:?}"),
            }
            return;
        }
    };

    // What the shape check promises about an accepted artifact.
    assert!(matches!(&parsed, Ok(Parsed::Artifact(parsed)) if **parsed == *artifact));
    assert_eq!(artifact.version, 1);
    assert!(!artifact.ciphertext.is_empty() && !artifact.revision.is_empty() && !artifact.ciphertext_hash.is_empty());
    assert!(!artifact::is_expired(&artifact, NOW_MS));
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

    // As the pipeline runs it: the hash as written.
    let hash_matches = artifact.ciphertext_hash == sha256_hex(&artifact.ciphertext);
    let opened = refresh::open(&artifact, None, &fixture.keys);
    match &opened {
        Err(RefreshError::Rejected { rejection: Rejection::Integrity { .. }, .. }) => assert!(!hash_matches),
        Err(error) => {
            assert!(hash_matches, "a wrong ciphertextHash got past the integrity check: {error}");
            describe(error);
        }
        Ok(_) => {}
    }
    if opened.is_ok() {
        assert!(hash_matches && artifact.envelope.is_none(), "opened without integrity or without a KMS");
    }

    // With the hash made right, so the decrypt and verify steps see the fuzzed fields.
    let mut fixed = (*artifact).clone();
    fixed.ciphertext_hash = sha256_hex(&fixed.ciphertext);
    match refresh::open(&fixed, None, &fixture.keys) {
        Ok(plaintext) => {
            assert!(fixed.envelope.is_none(), "an envelope artifact opened without a KMS client");
            let _ = plaintext.key_count();
        }
        Err(error) => {
            assert!(
                !matches!(&error, RefreshError::Rejected { rejection: Rejection::Integrity { .. }, .. }),
                "integrity failed with the correct hash: {error}"
            );
            describe(&error);
        }
    }
    for key in &fixture.verify_keys {
        match key.verify(&fixed) {
            Ok(()) => assert!(fixed.signature.is_some()),
            Err(rejection) => assert!(!rejection.reason().is_empty()),
        }
        if let Err(error) = refresh::open(&fixed, Some(key), &fixture.keys) {
            describe(&error);
        }
    }
});
