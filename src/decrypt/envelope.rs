//! KMS envelope artifacts (SPEC §1): the data key is unwrapped by the KMS the envelope names,
//! then opens the AES-256-GCM ciphertext (12-byte IV, the 16-byte tag kept apart, no AAD).
//! The data key and every plaintext buffer are zeroed when dropped.

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use zeroize::Zeroizing;

use super::DecryptError;
use crate::artifact::Envelope;
use crate::kms::Kms;
use crate::secret::SecretBytes;

const IV_BYTES: usize = 12;
const TAG_BYTES: usize = 16;
const DATA_KEY_BYTES: usize = 32;

/// Opens `ciphertext` (already base64-decoded) under `envelope`.
pub fn open(envelope: &Envelope, ciphertext: Vec<u8>, kms: Option<&Kms>) -> Result<SecretBytes, DecryptError> {
    if !crate::kms::PROVIDERS.contains(&envelope.provider.as_str()) {
        return Err(DecryptError::UnknownProvider(envelope.provider.clone()));
    }
    let iv = decode_field("envelope.iv", &envelope.iv)?;
    let tag = decode_field("envelope.authTag", &envelope.auth_tag)?;
    let wrapped = decode_field("envelope.wrappedKey", &envelope.wrapped_key)?;
    let kms = kms.ok_or_else(|| DecryptError::Kms("no KMS client is configured in this process".into()))?;
    let data_key = kms.unwrap(&envelope.provider, &envelope.key_id, &envelope.algorithm, &wrapped).map_err(
        |error| match error {
            crate::kms::UnwrapError::KeyId(error) => DecryptError::KeyId(error),
            other => DecryptError::Kms(other.to_string()),
        },
    )?;
    open_with_data_key(&data_key, &iv, &tag, ciphertext)
}

/// AES-256-GCM decryption of `ciphertext` and its `tag` with the unwrapped `data_key` (the part
/// of [`open`] after the KMS call; public so the fuzz target can reach it without a KMS).
pub fn open_with_data_key(
    data_key: &[u8],
    iv: &[u8],
    tag: &[u8],
    ciphertext: Vec<u8>,
) -> Result<SecretBytes, DecryptError> {
    if data_key.len() != DATA_KEY_BYTES {
        return Err(DecryptError::Kms(format!(
            "the KMS returned a data key of {} bytes; AES-256-GCM needs {DATA_KEY_BYTES}",
            data_key.len()
        )));
    }
    let key = UnboundKey::new(&AES_256_GCM, data_key).map_err(|_| DecryptError::Aead)?;
    let nonce = Nonce::try_assume_unique_for_key(iv).map_err(|_| DecryptError::Aead)?;
    let mut sealed = Zeroizing::new(ciphertext);
    sealed.extend_from_slice(tag);
    let length =
        LessSafeKey::new(key).open_in_place(nonce, Aad::empty(), &mut sealed).map_err(|_| DecryptError::Aead)?.len();
    sealed.truncate(length);
    Ok(sealed)
}

fn decode_field(field: &'static str, text: &str) -> Result<Vec<u8>, DecryptError> {
    let expected = match field {
        "envelope.iv" => "standard base64 of 12 bytes",
        "envelope.authTag" => "standard base64 of 16 bytes",
        _ => "standard base64",
    };
    let invalid = |found: String| DecryptError::Envelope { field, expected, found };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| invalid("text that is not base64".into()))?;
    let length = match field {
        "envelope.iv" => Some(IV_BYTES),
        "envelope.authTag" => Some(TAG_BYTES),
        _ => None,
    };
    match length {
        Some(length) if bytes.len() != length => Err(invalid(format!("{} bytes", bytes.len()))),
        _ => Ok(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(provider: &str, iv: &str, tag: &str) -> Envelope {
        Envelope {
            provider: provider.into(),
            key_id: "k".into(),
            wrapped_key: "AAAA".into(),
            algorithm: "SYMMETRIC_DEFAULT".into(),
            iv: iv.into(),
            auth_tag: tag.into(),
        }
    }

    const IV: &str = "AAAAAAAAAAAAAAAA";
    const TAG: &str = "AAAAAAAAAAAAAAAAAAAAAA==";

    #[test]
    fn checks_the_envelope_fields_before_any_kms_call() {
        let error = open(&envelope("aws", "AAAA", TAG), vec![], None).unwrap_err();
        assert_eq!(error.to_string(), "field 'envelope.iv' must be standard base64 of 12 bytes, found 3 bytes");
        let error = open(&envelope("aws", IV, "AAAA"), vec![], None).unwrap_err();
        assert_eq!(error.to_string(), "field 'envelope.authTag' must be standard base64 of 16 bytes, found 3 bytes");
        let error = open(&envelope("aws", "%%%", TAG), vec![], None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "field 'envelope.iv' must be standard base64 of 12 bytes, found text that is not base64"
        );
    }

    #[test]
    fn an_unknown_provider_is_named() {
        let error = open(&envelope("vault9", IV, TAG), vec![], None).unwrap_err();
        assert_eq!(error, DecryptError::UnknownProvider("vault9".into()));
    }
}
