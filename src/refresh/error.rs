//! Why a refresh did not load a new artifact, and what to do about it. The hint of each
//! failure is chosen by its variant, so the start-up message names the fix.

use std::fmt;

use crate::artifact::{Rejection, Revocation};
use crate::decrypt::DecryptError;
use crate::source::FetchError;

/// Why a refresh did not load a new artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshError {
    Fetch(FetchError),
    /// The artifact was refused; `configuration` marks failures retrying cannot fix.
    Rejected {
        rejection: Rejection,
        configuration: bool,
    },
    /// A revocation was published; the secrets were wiped.
    Revoked(Revocation),
    /// The artifact's `expiresAt` (as written) passed; the secrets were wiped.
    Expired {
        expires_at: String,
    },
    /// The source failed and the disk cache's entry was older than the TTL, so it was purged.
    DiskCacheExpired(FetchError),
}

impl RefreshError {
    /// Start-up gives up at once on these instead of retrying.
    pub fn is_configuration_problem(&self) -> bool {
        matches!(self, RefreshError::Rejected { configuration: true, .. })
    }

    /// What to do about it, for the start-up failure message.
    pub fn hint(&self) -> &'static str {
        match self {
            RefreshError::Fetch(FetchError::NotFound { .. }) => {
                "The artifact was not found: has it been packed (clef pack) and deployed to this source yet?"
            }
            RefreshError::Fetch(FetchError::Forbidden { .. }) => {
                "Check that the agent has read access to the artifact (IAM policy, bucket policy, token scope or file permissions)."
            }
            RefreshError::Fetch(FetchError::Credentials { .. }) => {
                "Give the agent AWS credentials: environment keys, a web identity (IRSA), container credentials or an instance role."
            }
            RefreshError::Fetch(FetchError::TooLarge { .. }) => "Check that CLEF_AGENT_SOURCE points to a packed artifact.",
            RefreshError::Fetch(FetchError::UntrustedCertificate { .. }) => {
                "The server's certificate is not signed by a CA the agent trusts: for a private CA, set SSL_CERT_FILE to a PEM file holding its certificate."
            }
            RefreshError::Fetch(_) | RefreshError::DiskCacheExpired(_) => {
                "Check the source URL or path and network connectivity."
            }
            RefreshError::Rejected { rejection, configuration } => match rejection {
                Rejection::SignatureMissing | Rejection::SignatureInvalid | Rejection::SignatureError(_) => {
                    "Check that CLEF_AGENT_VERIFY_KEY is the public key of the key that signs this artifact."
                }
                Rejection::Decrypt(_) if *configuration => {
                    "Check the age key (CLEF_AGENT_AGE_KEY / CLEF_AGENT_AGE_KEY_FILE): it must be the identity the artifact was packed for."
                }
                Rejection::Rollback(_) => {
                    "An older signed artifact was published again: publish the newest artifact, or pack and deploy a new one."
                }
                Rejection::InvalidShape { field: "envelope.keyId", .. } => {
                    "The artifact names a KMS key this agent does not send credentials to: pack it again with a key of a supported KMS."
                }
                Rejection::KmsUnwrap(_) => {
                    "Check the envelope's KMS key and this agent's permission to use it (AWS kms:Decrypt, GCP cloudkms.cryptoKeyVersions.useToDecrypt, Azure Key Vault unwrapKey)."
                }
                _ => "The artifact is malformed or was modified: pack it again with clef pack and redeploy it.",
            },
            RefreshError::Revoked(_) => "The artifact was revoked: pack and deploy a new one.",
            RefreshError::Expired { .. } => "Pack and deploy a new artifact with a later expiry.",
        }
    }
}

impl fmt::Display for RefreshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefreshError::Fetch(error) => write!(f, "{error}"),
            RefreshError::DiskCacheExpired(error) => {
                write!(f, "Secrets cache expired: no successful refresh within TTL ({error})")
            }
            RefreshError::Rejected { rejection, .. } => {
                write!(f, "artifact rejected ({}): {rejection}", rejection.reason())
            }
            RefreshError::Revoked(revocation) => write!(f, "{revocation}"),
            RefreshError::Expired { expires_at } => write!(f, "Artifact expired at {expires_at}"),
        }
    }
}

impl std::error::Error for RefreshError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RefreshError::Fetch(error) | RefreshError::DiskCacheExpired(error) => Some(error),
            RefreshError::Rejected { rejection, .. } => Some(rejection),
            RefreshError::Revoked(_) | RefreshError::Expired { .. } => None,
        }
    }
}

impl From<FetchError> for RefreshError {
    fn from(error: FetchError) -> Self {
        RefreshError::Fetch(error)
    }
}

impl From<Rejection> for RefreshError {
    fn from(rejection: Rejection) -> Self {
        RefreshError::Rejected { rejection, configuration: false }
    }
}

impl From<DecryptError> for RefreshError {
    fn from(error: DecryptError) -> Self {
        let configuration = error.is_configuration_problem();
        RefreshError::Rejected { rejection: error.into(), configuration }
    }
}

/// Why a validated artifact could not be opened (SPEC §2 step 9). Its text is the cause's
/// own: JIT mode answers a request with it as it is, a refresh wraps it as a rejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    Decrypt(DecryptError),
    /// The plaintext is not `{namespace: {key: "value"}}` (or flat).
    Payload(String),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Decrypt(error) => write!(f, "{error}"),
            OpenError::Payload(detail) => f.write_str(detail),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::Decrypt(error) => Some(error),
            OpenError::Payload(_) => None,
        }
    }
}

impl From<DecryptError> for OpenError {
    fn from(error: DecryptError) -> Self {
        OpenError::Decrypt(error)
    }
}

impl From<OpenError> for RefreshError {
    fn from(error: OpenError) -> Self {
        match error {
            OpenError::Decrypt(error) => error.into(),
            OpenError::Payload(detail) => Rejection::PayloadParse(detail).into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_refresh_error_names_its_cause_as_its_source() {
        let fetch = FetchError::Network { source: "memory".into(), detail: "down".into() };
        let error = RefreshError::DiskCacheExpired(fetch.clone());
        assert_eq!(error.source().map(ToString::to_string), Some(fetch.to_string()));
        let rejected = RefreshError::from(DecryptError::NoMatchingKey);
        assert!(rejected.is_configuration_problem());
        assert_eq!(
            rejected.source().map(ToString::to_string),
            Some(format!("decryption failed: {}", DecryptError::NoMatchingKey))
        );
        assert!(RefreshError::Expired { expires_at: "2027-01-01T00:00:00Z".into() }.source().is_none());
    }

    #[test]
    fn an_open_error_reads_as_its_cause_alone_and_becomes_the_matching_rejection() {
        let payload = OpenError::Payload("not an object".into());
        assert_eq!(payload.to_string(), "not an object");
        assert_eq!(
            RefreshError::from(payload).to_string(),
            "artifact rejected (payload_parse): decrypted payload is invalid: not an object"
        );
        let decrypt = OpenError::from(DecryptError::Aead);
        assert_eq!(decrypt.to_string(), DecryptError::Aead.to_string());
        assert_eq!(RefreshError::from(decrypt), RefreshError::from(DecryptError::Aead));
    }
}
