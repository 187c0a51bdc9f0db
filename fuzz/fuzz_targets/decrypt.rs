//! The decrypt path with arbitrary bytes, three ways per input:
//!
//! 1. the bytes as a binary age file, opened with the demo identity (`AgeIdentity::decrypt`),
//!    and whatever decrypts parsed as the plaintext;
//! 2. the bytes as a decrypted plaintext (`Plaintext::parse`), checking that no error message
//!    ever repeats a secret value;
//! 3. the bytes as a KMS envelope (`decrypt::envelope::open` without a KMS client): the first
//!    six lines are provider, keyId, wrappedKey, algorithm, iv and authTag, the rest is the
//!    ciphertext. The verdict is checked against an independent reading of the fields;
//! 4. the AES-256-GCM step behind the KMS (`decrypt::envelope::open_with_data_key`): the bytes
//!    sealed by ring with a fixed data key must open to themselves and fail with one bit flipped
//!    anywhere in IV, ciphertext or tag; read as key length, key, IV, tag and ciphertext they
//!    must fail with the error their key length calls for.
#![no_main]

use std::cell::RefCell;
use std::fmt;
use std::sync::OnceLock;

use base64::Engine as _;
use clef_agent::artifact::Envelope;
use clef_agent::decrypt::{envelope, AgeIdentity, DecryptError, Plaintext};
use libfuzzer_sys::fuzz_target;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

fn identity() -> &'static AgeIdentity {
    static IDENTITY: OnceLock<AgeIdentity> = OnceLock::new();
    IDENTITY.get_or_init(|| {
        AgeIdentity::from_file_contents(include_str!("../../tests/fixtures/keys/demo.agekey")).expect("demo.agekey")
    })
}

fuzz_target!(|bytes: &[u8]| {
    age_file(bytes);
    plaintext(bytes);
    envelope_fields(bytes);
    sealed_with_a_data_key(bytes);
    opened_with_a_fuzzed_data_key(bytes);
});

fn age_file(bytes: &[u8]) {
    match identity().decrypt(bytes) {
        Ok(decrypted) => {
            assert!(decrypted.len() <= bytes.len(), "the plaintext is longer than the age file");
            plaintext(&decrypted);
        }
        Err(error @ (DecryptError::Age(_) | DecryptError::NoMatchingKey)) => assert!(!error.to_string().is_empty()),
        Err(other) => panic!("age decryption failed with a non-age error: {other:?}"),
    }
}

/// Every message `Plaintext::parse` can give, with the names and numbers left out.
const MESSAGE_TEXT: &str = "the plaintext must be a JSON object of namespaces, found an array a string an object \
    a boolean a number null namespace '' must be an object of string values, found value of '.' must be a string \
    key appears twice the plaintext is not valid JSON (line , column ) the plaintext is not UTF-8 \
    the plaintext has trailing data after the JSON object 0123456789 \
    top-level is but the first top-level value is: a plaintext holds only string values (flat) or only \
    objects of string values (namespaces), not both …(truncated, bytes)";

fn plaintext(bytes: &[u8]) {
    let Err(error) = Plaintext::parse(bytes) else { return };
    // Secrecy: a message is made of its fixed text and the namespace and key names, so every
    // character in it must come from one of those. Anything else was copied from a value.
    let names = object_keys(bytes);
    for character in error.chars() {
        assert!(
            MESSAGE_TEXT.contains(character) || names.iter().any(|name| name.contains(character)),
            "the plaintext error {error:?} holds {character:?}, which is in no name: it repeats a value"
        );
    }
}

/// Every object key in `bytes`, at any depth, as far as the JSON parses.
fn object_keys(bytes: &[u8]) -> Vec<String> {
    let keys = RefCell::new(Vec::new());
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let _ = KeyCollector(&keys).deserialize(&mut deserializer);
    keys.into_inner()
}

#[derive(Clone, Copy)]
struct KeyCollector<'k>(&'k RefCell<Vec<String>>);

impl<'de> DeserializeSeed<'de> for KeyCollector<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyCollector<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            self.0.borrow_mut().push(key);
            map.next_value_seed(self)?;
        }
        Ok(())
    }
}

fn envelope_fields(bytes: &[u8]) {
    let mut parts = bytes.splitn(7, |&byte| byte == b'\n');
    let mut field = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let envelope = Envelope {
        provider: field(),
        key_id: field(),
        wrapped_key: field(),
        algorithm: field(),
        iv: field(),
        auth_tag: field(),
    };
    let ciphertext = parts.next().unwrap_or_default().to_vec();
    let error = match envelope::open(&envelope, ciphertext, None) {
        Ok(_) => panic!("an envelope opened without a KMS client"),
        Err(error) => error,
    };
    assert!(!error.to_string().is_empty());
    // The same checks, independently, in the order the spec gives them.
    let decode = |text: &str| base64::engine::general_purpose::STANDARD.decode(text).ok();
    let expected_field = if !["aws", "gcp", "azure"].contains(&envelope.provider.as_str()) {
        assert_eq!(error, DecryptError::UnknownProvider(envelope.provider.clone()));
        return;
    } else if decode(&envelope.iv).is_none_or(|iv| iv.len() != 12) {
        "envelope.iv"
    } else if decode(&envelope.auth_tag).is_none_or(|tag| tag.len() != 16) {
        "envelope.authTag"
    } else if decode(&envelope.wrapped_key).is_none() {
        "envelope.wrappedKey"
    } else {
        assert_eq!(error, DecryptError::Kms("no KMS client is configured in this process".into()));
        return;
    };
    assert!(
        matches!(&error, DecryptError::Envelope { field, .. } if *field == expected_field),
        "expected a complaint about {expected_field}, got {error:?}"
    );
}

const DATA_KEY: [u8; 32] = [0x5a; 32];

fn sealed_with_a_data_key(bytes: &[u8]) {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let iv: [u8; 12] = std::array::from_fn(|index| bytes.get(index).copied().unwrap_or(0));
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &DATA_KEY).expect("a 32-byte key"));
    let mut sealed = bytes.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut sealed).expect("sealed");
    let (ciphertext, tag) = sealed.split_at(bytes.len());
    let opened = envelope::open_with_data_key(&DATA_KEY, &iv, tag, ciphertext.to_vec()).expect("a sealed input opens");
    assert_eq!(opened.as_slice(), bytes, "the opened plaintext differs from the sealed one");

    // One bit flipped, at a position the input picks, across IV ‖ ciphertext ‖ tag.
    let mut all = [iv.as_slice(), ciphertext, tag].concat();
    let position = bytes.iter().map(|&byte| usize::from(byte)).sum::<usize>() % all.len();
    all[position] ^= 1 << (bytes.len() % 8);
    let (iv, rest) = all.split_at(12);
    let (ciphertext, tag) = rest.split_at(bytes.len());
    let tampered = envelope::open_with_data_key(&DATA_KEY, iv, tag, ciphertext.to_vec());
    assert_eq!(tampered.err(), Some(DecryptError::Aead), "a flipped bit at {position} went unnoticed");
}

fn opened_with_a_fuzzed_data_key(bytes: &[u8]) {
    let Some((&key_length, rest)) = bytes.split_first() else { return };
    let key_length = usize::from(key_length % 40);
    if rest.len() < key_length + 12 + 16 {
        return;
    }
    let (key, rest) = rest.split_at(key_length);
    let (iv, rest) = rest.split_at(12);
    let (tag, ciphertext) = rest.split_at(16);
    let error = envelope::open_with_data_key(key, iv, tag, ciphertext.to_vec()).err();
    if key_length == 32 {
        assert_eq!(error, Some(DecryptError::Aead), "random bytes passed AES-GCM authentication");
    } else {
        let expected = format!("the KMS returned a data key of {key_length} bytes; AES-256-GCM needs 32");
        assert_eq!(error, Some(DecryptError::Kms(expected)));
    }
}
