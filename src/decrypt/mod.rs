//! Turning a validated artifact's ciphertext into the plaintext secrets. Age artifacts are
//! opened with the agent's age identity; KMS envelope artifacts name their provider.
//! Plaintext lives only in buffers that zero themselves on drop.

pub mod age;
pub mod envelope;
pub mod payload;

use std::fmt;

use base64::Engine as _;

use crate::artifact::{Artifact, Envelope, Rejection};
use crate::kms::Kms;
use crate::secret::SecretBytes;

pub use self::age::AgeIdentity;
pub use self::payload::{Namespace, Plaintext};

/// Why decryption failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecryptError {
    /// An age artifact arrived and no age key is configured.
    NoAgeKey,
    /// The configured age key is not one of the artifact's recipients.
    NoMatchingKey,
    /// `ciphertext` is not standard base64.
    NotBase64,
    /// The age file is malformed, truncated or tampered with.
    Age(String),
    /// `envelope.provider` is not one the agent knows.
    UnknownProvider(String),
    /// The KMS refused or failed to unwrap the data key (its explanation).
    Kms(String),
    /// `envelope.keyId` is not a key id of its provider; nothing was sent to any KMS.
    KeyId(crate::kms::key_id::KeyIdError),
    /// An envelope field decodes to the wrong thing (`iv` not 12 bytes, say).
    Envelope { field: &'static str, expected: &'static str, found: String },
    /// AES-256-GCM did not authenticate: wrong data key, tag or IV, or modified ciphertext.
    Aead,
}

impl DecryptError {
    /// Failures that retrying cannot fix: the start-up sequence gives up at once on these.
    pub fn is_configuration_problem(&self) -> bool {
        matches!(self, DecryptError::NoAgeKey | DecryptError::NoMatchingKey | DecryptError::KeyId(_))
    }
}

impl fmt::Display for DecryptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecryptError::NoAgeKey => f.write_str(
                "the artifact is age-encrypted and no age key is configured: set CLEF_AGENT_AGE_KEY or CLEF_AGENT_AGE_KEY_FILE",
            ),
            DecryptError::NoMatchingKey => f.write_str(
                "the configured age key is not a recipient of this artifact: check CLEF_AGENT_AGE_KEY / CLEF_AGENT_AGE_KEY_FILE",
            ),
            DecryptError::NotBase64 => f.write_str("'ciphertext' is not valid standard base64"),
            DecryptError::Age(detail) => write!(f, "{detail}"),
            DecryptError::UnknownProvider(provider) => {
                write!(f, "unknown envelope provider '{provider}' (expected aws, gcp or azure)")
            }
            DecryptError::Kms(detail) => write!(f, "{detail}"),
            DecryptError::KeyId(error) => write!(f, "{error}"),
            DecryptError::Envelope { field, expected, found } => {
                write!(f, "field '{field}' must be {expected}, found {found}")
            }
            DecryptError::Aead => f.write_str(
                "AES-256-GCM authentication failed: the data key, IV or tag does not match, or the ciphertext was modified",
            ),
        }
    }
}

/// No `source()`: its causes are texts already (age's and the KMS's explanations), and
/// `KeyIdError` (in `kms`) is not an error type of its own.
impl std::error::Error for DecryptError {}

impl From<DecryptError> for Rejection {
    fn from(error: DecryptError) -> Rejection {
        match error {
            DecryptError::UnknownProvider(_) | DecryptError::Kms(_) => Rejection::KmsUnwrap(error.to_string()),
            DecryptError::Envelope { field, expected, found } => Rejection::InvalidShape { field, expected, found },
            DecryptError::KeyId(error) => {
                Rejection::InvalidShape { field: "envelope.keyId", expected: error.expected, found: error.found }
            }
            DecryptError::NotBase64 => Rejection::InvalidShape {
                field: "ciphertext",
                expected: "standard base64",
                found: "text that is not".into(),
            },
            other => Rejection::Decrypt(other.to_string()),
        }
    }
}

/// The keys the agent decrypts with: its age identity, and the KMS clients that unwrap the
/// data keys of envelope artifacts.
#[derive(Default)]
pub struct DecryptionKeys {
    pub age: Option<AgeIdentity>,
    pub kms: Option<Kms>,
}

impl fmt::Debug for DecryptionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptionKeys").field("age", &self.age).field("kms", &self.kms.is_some()).finish()
    }
}

impl DecryptionKeys {
    /// Decrypts `artifact.ciphertext` into plaintext bytes.
    pub fn decrypt(&self, artifact: &Artifact) -> Result<SecretBytes, DecryptError> {
        self.decrypt_decoded(artifact.envelope.as_ref(), decode_ciphertext(&artifact.ciphertext)?)
    }

    /// Decrypts a ciphertext already decoded by [`decode_ciphertext`], so that a caller that no
    /// longer needs the base64 text can drop it before the plaintext exists.
    pub fn decrypt_decoded(
        &self,
        envelope: Option<&Envelope>,
        ciphertext: Vec<u8>,
    ) -> Result<SecretBytes, DecryptError> {
        if let Some(envelope) = envelope {
            return envelope::open(envelope, ciphertext, self.kms.as_ref());
        }
        self.age.as_ref().ok_or(DecryptError::NoAgeKey)?.decrypt(&ciphertext)
    }
}

/// The artifact's base64 ciphertext as bytes, in one buffer of the decoded size (base64's own
/// `decode` sizes it from the input length too, so it never grows).
pub fn decode_ciphertext(text: &str) -> Result<Vec<u8>, DecryptError> {
    base64::engine::general_purpose::STANDARD.decode(text).map_err(|_| DecryptError::NotBase64)
}
