//! Artifact sources behind one small trait: fetch with the content hash of the last accepted
//! artifact, answer new bytes with their hash, or "unchanged".

pub mod file;
pub mod http;
pub mod s3;
pub mod vcs;

use std::fmt;
use std::sync::Arc;

use crate::cloud::aws::credentials::CredentialChain;
use crate::cloud::{CloudError, Env};
use crate::config::SourceConfig;
use crate::http::{HttpClient, TransportError};

/// Artifacts larger than this are refused without reading further (SPEC §4).
pub const MAX_ARTIFACT_BYTES: u64 = 32 * 1024 * 1024;

/// What a fetch found.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// The source says the content is the one last accepted (hash match, HTTP 304).
    Unchanged,
    Content {
        bytes: Vec<u8>,
        /// The source's own content marker (ETag, blob SHA, hash of a file's bytes).
        content_hash: Option<String>,
    },
}

/// Why a fetch failed. Messages name the (redacted) source and never carry credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetchError {
    /// The artifact does not exist there (HTTP 404, missing file). `status` names the HTTP
    /// answer (`HTTP 404`, with S3's or the provider's explanation), `None` for a file.
    NotFound { source: String, status: Option<String> },
    /// The agent may not read it (HTTP 401/403, file permissions).
    Forbidden { source: String, detail: String },
    /// Any other HTTP status of 400 or more: `status` is `HTTP <code>` and its explanation.
    Status { source: String, status: String },
    /// The source could not be reached or the transfer broke.
    Network { source: String, detail: String },
    /// The server's TLS certificate is not signed by a CA the agent trusts.
    UntrustedCertificate { source: String, cause: TransportError },
    /// A local read failed for another reason.
    Io { source: String, detail: String },
    /// No usable cloud credentials (the message says which provider failed and why).
    Credentials { source: String, cause: CloudError },
    /// The artifact is larger than [`MAX_ARTIFACT_BYTES`].
    TooLarge { source: String },
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::NotFound { source, status: None } => write!(f, "{source} was not found"),
            FetchError::NotFound { source, status: Some(status) } => write!(f, "{source} was not found ({status})"),
            FetchError::Forbidden { source, detail } => write!(f, "access to {source} was denied ({detail})"),
            FetchError::Status { source, status } => write!(f, "{source} answered {status}"),
            FetchError::Network { source, detail } => write!(f, "cannot reach {source}: {detail}"),
            FetchError::UntrustedCertificate { source, cause } => write!(f, "cannot reach {source}: {cause}"),
            FetchError::Io { source, detail } => write!(f, "cannot read {source}: {detail}"),
            FetchError::Credentials { source, cause } => write!(f, "cannot sign the request for {source}: {cause}"),
            FetchError::TooLarge { source } => {
                write!(f, "{source} is larger than the {} MiB artifact limit", MAX_ARTIFACT_BYTES / (1024 * 1024))
            }
        }
    }
}

impl std::error::Error for FetchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FetchError::Credentials { cause, .. } => Some(cause),
            FetchError::UntrustedCertificate { cause, .. } => Some(cause),
            _ => None,
        }
    }
}

pub trait Source: Send {
    /// The source for log lines, with credentials redacted.
    fn describe(&self) -> String;

    /// Fetches the artifact. `last_content_hash` is the marker of the last accepted artifact,
    /// so a source that can tell "unchanged" cheaply (ETag, blob SHA) answers `Unchanged`.
    fn fetch(&mut self, last_content_hash: Option<&str>) -> Result<Fetched, FetchError>;
}

/// Builds the configured source. `http` is the process's HTTP client; `env` and `credentials`
/// the AWS environment and credential chain (shared with the KMS client).
pub fn from_config(
    config: &SourceConfig,
    http: &HttpClient,
    env: &Env,
    credentials: &Arc<CredentialChain>,
) -> Result<Box<dyn Source>, String> {
    Ok(match config {
        SourceConfig::File(path) => Box::new(file::FileSource::new(path.clone())),
        SourceConfig::Http(url) => Box::new(http::HttpSource::new(http.clone(), url.clone())),
        SourceConfig::S3 { location, region } => {
            let source = s3::S3Source::new(http.clone(), Arc::clone(credentials), env, location, region.clone());
            Box::new(source.map_err(|error| error.to_string())?)
        }
        SourceConfig::Vcs(vcs) => Box::new(vcs::VcsSource::new(http.clone(), vcs)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_class_failures_name_the_http_status_and_files_do_not() {
        let source = || "https://a.example/x.json".to_string();
        let not_found = FetchError::NotFound { source: source(), status: Some("HTTP 404, NoSuchKey".into()) };
        assert_eq!(not_found.to_string(), "https://a.example/x.json was not found (HTTP 404, NoSuchKey)");
        let status = FetchError::Status { source: source(), status: "HTTP 500".into() };
        assert_eq!(status.to_string(), "https://a.example/x.json answered HTTP 500");
        let file = FetchError::NotFound { source: "/srv/a.json".into(), status: None };
        assert_eq!(file.to_string(), "/srv/a.json was not found");
    }

    #[test]
    fn a_credentials_failure_keeps_the_cloud_error_as_its_source() {
        use std::error::Error as _;
        let cause = CloudError::missing_variable("AWS_ROLE_ARN", "set AWS_ROLE_ARN");
        let error = FetchError::Credentials { source: "s3://b/k".into(), cause: cause.clone() };
        assert_eq!(error.to_string(), "cannot sign the request for s3://b/k: set AWS_ROLE_ARN");
        assert_eq!(error.source().map(|source| source.to_string()), Some(cause.to_string()));
    }
}
