//! Unwrapping the data key of a KMS envelope artifact (SPEC §1, §5) with the KMS its
//! `envelope.provider` names: AWS KMS `Decrypt`, GCP Cloud KMS `decrypt`, Azure Key Vault
//! `unwrapkey`. Every client is synchronous, reads its cloud's variables when it is first
//! used, caches access tokens until shortly before they expire, and returns the data key in a
//! buffer that is zeroed when dropped. Error messages carry the provider's explanation, never a
//! token, a secret or key material.

pub mod aws;
pub mod azure;
pub mod gcp;
pub mod key_id;

use std::fmt;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::cloud::aws::credentials::CredentialChain;
use crate::cloud::oauth::TokenChain;
use crate::cloud::{CloudError, Env};
use crate::http::HttpClient;

/// The `envelope.provider` values the agent knows.
pub const PROVIDERS: [&str; 3] = ["aws", "gcp", "azure"];

/// The three KMS clients; cheap to share between the refresh thread and request workers.
pub struct Kms {
    aws: aws::AwsKms,
    gcp: gcp::GcpKms,
    azure: azure::AzureKms,
}

impl Kms {
    /// `credentials`: the AWS credential chain, shared with an S3 source so that temporary
    /// credentials are looked up once.
    pub fn new(http: HttpClient, env: Env, credentials: Arc<CredentialChain>) -> Kms {
        Kms {
            aws: aws::AwsKms::new(http.clone(), env.clone(), credentials),
            gcp: gcp::GcpKms::new(http.clone(), env.clone()),
            azure: azure::AzureKms::new(http, env),
        }
    }

    /// The data key wrapped as `wrapped` under `key_id` at `provider` (one of [`PROVIDERS`]).
    /// The key id is checked (see [`key_id`]) before anything is sent anywhere.
    pub fn unwrap(
        &self,
        provider: &str,
        key_id: &str,
        algorithm: &str,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, UnwrapError> {
        match provider {
            "aws" => Ok(self.aws.decrypt(key_id, key_id::aws(key_id)?, algorithm, wrapped)?),
            "gcp" => {
                key_id::gcp(key_id)?;
                Ok(self.gcp.decrypt(key_id, wrapped)?)
            }
            "azure" => Ok(self.azure.unwrap_key(&key_id::azure(key_id)?, algorithm, wrapped)?),
            other => Err(UnwrapError::UnknownProvider(other.to_string())),
        }
    }
}

/// Why no data key came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnwrapError {
    /// `envelope.keyId` is not a key id of the provider: nothing was sent.
    KeyId(key_id::KeyIdError),
    /// The KMS or its credentials failed (their explanation).
    Kms(CloudError),
    /// `envelope.provider` is none of [`PROVIDERS`]: nothing was sent.
    UnknownProvider(String),
}

impl fmt::Display for UnwrapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnwrapError::KeyId(error) => write!(f, "{error}"),
            UnwrapError::Kms(error) => write!(f, "{error}"),
            UnwrapError::UnknownProvider(provider) => write!(f, "unknown envelope provider '{provider}'"),
        }
    }
}

impl std::error::Error for UnwrapError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UnwrapError::KeyId(error) => Some(error),
            UnwrapError::Kms(error) => Some(error),
            UnwrapError::UnknownProvider(_) => None,
        }
    }
}

impl From<key_id::KeyIdError> for UnwrapError {
    fn from(error: key_id::KeyIdError) -> UnwrapError {
        UnwrapError::KeyId(error)
    }
}

impl From<CloudError> for UnwrapError {
    fn from(error: CloudError) -> UnwrapError {
        UnwrapError::Kms(error)
    }
}

/// POSTs the JSON `body` to `url` with a bearer token from `tokens`. A 401 means the service no longer accepts the token: it is dropped and the
/// call made once more with a new one, so a rotated token costs no failed request. Returns
/// the last answer's status and body; `what` names the service in transport errors.
pub(crate) fn post_with_token(
    http: &HttpClient,
    tokens: &dyn TokenChain,
    url: &str,
    body: &str,
    what: &str,
) -> Result<(u16, Zeroizing<Vec<u8>>), CloudError> {
    let mut attempts_left = 2;
    loop {
        attempts_left -= 1;
        let token = tokens.token(crate::time::now_ms())?;
        let bearer = Zeroizing::new(format!("Bearer {}", token.expose()));
        let call = http
            .for_url(url)
            .post(url)
            .header("Authorization", bearer.as_str())
            .header("Content-Type", "application/json");
        let (status, answer) = crate::http::small_reply(call.send(body.as_bytes()))
            .map_err(|why| CloudError::from(why).after_prefix(what))?;
        if status != 401 {
            return Ok((status, answer));
        }
        tokens.forget();
        if attempts_left == 0 {
            return Ok((status, answer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn unwrap_errors_say_what_they_said_as_text_and_keep_the_kms_error_as_their_source() {
        let unknown = UnwrapError::UnknownProvider("vault".into());
        assert_eq!(unknown.to_string(), "unknown envelope provider 'vault'");
        let refused =
            CloudError::status("AWS KMS Decrypt", 400, "AccessDeniedException", " AccessDeniedException: no".into());
        let error = UnwrapError::from(refused);
        assert_eq!(error.to_string(), "AWS KMS Decrypt answered HTTP 400 AccessDeniedException: no");
        assert_eq!(error.source().map(|source| source.to_string()), Some(error.to_string()));
    }
}
