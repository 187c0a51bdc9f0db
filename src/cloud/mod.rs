//! What the AWS, GCP and Azure clients share: the environment they read and its endpoint
//! overrides ([`env`]), one cache for credentials and tokens that renews them before they expire
//! ([`expiring`]), the credential chains of each cloud ([`aws`], [`gcp`], [`azure`], with the
//! OAuth answers of the last two in [`oauth`]), and [`CloudError`]. Everything here sits on
//! [`crate::http`] and below; the KMS clients and the S3 source build on it.

pub mod aws;
pub mod azure;
pub mod env;
pub mod expiring;
pub mod gcp;
pub mod oauth;

use std::fmt;
use std::sync::Arc;

use zeroize::Zeroizing;

pub use env::Env;

use crate::http::TransportError;

/// Why a call to a cloud service, or finding the credentials for one, failed. Messages carry the
/// service's explanation and what to fix, never a token, a secret or key material. `context` is
/// the text the callers an error passed through put around it (which service, which provider of
/// a chain), so that every message reads as one sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudError {
    /// No answer: connecting, TLS, a timeout or reading the body failed. The cause is kept.
    Transport { context: Context, cause: TransportError },
    /// The service answered an error status. `service` names it as the message does (empty
    /// when the context names it); `code` is its error code when it sent one (`ExpiredToken`,
    /// `AccessDeniedException`, `PERMISSION_DENIED`); `message` its explanation as shown after
    /// the status, separator included.
    Status { context: Context, service: String, status: u16, code: String, message: String },
    /// A variable the provider needs is unset, or set without its partner; `message` says what
    /// to set.
    MissingVariable { context: Context, name: &'static str, message: String },
    /// A variable is set to something that cannot be used; `message` says what it must be.
    InvalidVariable { context: Context, name: &'static str, message: String },
    /// A file a variable names cannot be read.
    Unreadable { context: Context, variable: &'static str, path: String, cause: Arc<IoCause> },
    /// An answer or a credentials file does not hold what the agent needs (a field, JSON,
    /// base64, a usable key, an IAM role on the instance).
    Malformed { context: Context, what: String },
}

/// Text put before and after an error's own message: `{before}{message}{after}`. Boxed, and
/// absent until a caller adds some, to keep errors small.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context(Option<Box<(String, String)>>);

/// An I/O error, compared by what it says (for [`CloudError`]'s `PartialEq`).
#[derive(Debug)]
pub struct IoCause(pub std::io::Error);

impl PartialEq for IoCause {
    fn eq(&self, other: &IoCause) -> bool {
        self.0.kind() == other.0.kind() && self.0.to_string() == other.0.to_string()
    }
}

impl Eq for IoCause {}

impl CloudError {
    /// A transport failure, without context yet.
    pub fn transport(cause: TransportError) -> CloudError {
        CloudError::Transport { context: Context::default(), cause }
    }

    /// An error status of `service` (see [`CloudError::Status`]).
    pub fn status(service: &str, status: u16, code: &str, message: String) -> CloudError {
        CloudError::Status { context: Context::default(), service: service.into(), status, code: code.into(), message }
    }

    pub fn missing_variable(name: &'static str, message: impl Into<String>) -> CloudError {
        CloudError::MissingVariable { context: Context::default(), name, message: message.into() }
    }

    pub fn invalid_variable(name: &'static str, message: impl Into<String>) -> CloudError {
        CloudError::InvalidVariable { context: Context::default(), name, message: message.into() }
    }

    /// `variable` names `path`, which cannot be read.
    pub fn unreadable(variable: &'static str, path: &str, cause: std::io::Error) -> CloudError {
        CloudError::Unreadable {
            context: Context::default(),
            variable,
            path: path.into(),
            cause: Arc::new(IoCause(cause)),
        }
    }

    pub fn malformed(what: impl Into<String>) -> CloudError {
        CloudError::Malformed { context: Context::default(), what: what.into() }
    }

    /// The same error, with `before` and `after` put around its message.
    pub fn within(mut self, before: impl fmt::Display, after: &str) -> CloudError {
        let context = match &mut self {
            CloudError::Transport { context, .. }
            | CloudError::Status { context, .. }
            | CloudError::MissingVariable { context, .. }
            | CloudError::InvalidVariable { context, .. }
            | CloudError::Unreadable { context, .. }
            | CloudError::Malformed { context, .. } => context,
        };
        let (text_before, text_after) = &mut **context.0.get_or_insert_with(Box::default);
        text_before.insert_str(0, &before.to_string());
        text_after.push_str(after);
        self
    }

    /// The same error, its message preceded by `prefix: `.
    pub fn after_prefix(self, prefix: impl fmt::Display) -> CloudError {
        self.within(format_args!("{prefix}: "), "")
    }

    /// The service's error code of a [`CloudError::Status`].
    pub fn code(&self) -> Option<&str> {
        match self {
            CloudError::Status { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl fmt::Display for CloudError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let context = match self {
            CloudError::Transport { context, .. }
            | CloudError::Status { context, .. }
            | CloudError::MissingVariable { context, .. }
            | CloudError::InvalidVariable { context, .. }
            | CloudError::Unreadable { context, .. }
            | CloudError::Malformed { context, .. } => context,
        };
        let (before, after) = context.0.as_deref().map_or(("", ""), |(before, after)| (before, after));
        f.write_str(before)?;
        match self {
            CloudError::Transport { cause, .. } => write!(f, "{cause}")?,
            CloudError::Status { service, status, message, .. } => {
                if !service.is_empty() {
                    write!(f, "{service} answered ")?;
                }
                write!(f, "HTTP {status}{message}")?;
            }
            CloudError::MissingVariable { message, .. } | CloudError::InvalidVariable { message, .. } => {
                f.write_str(message)?
            }
            CloudError::Unreadable { variable, path, cause, .. } => {
                write!(f, "{variable}: cannot read {path}: {}", cause.0)?
            }
            CloudError::Malformed { what, .. } => f.write_str(what)?,
        }
        f.write_str(after)
    }
}

impl std::error::Error for CloudError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CloudError::Transport { cause, .. } => Some(cause),
            CloudError::Unreadable { cause, .. } => Some(&cause.0),
            _ => None,
        }
    }
}

impl From<TransportError> for CloudError {
    fn from(cause: TransportError) -> CloudError {
        CloudError::transport(cause)
    }
}

/// Takes the string field `name` out of a JSON object answer, into a buffer zeroed on drop
/// (the field holds key material or a token).
pub fn take_secret_field(body: &[u8], name: &str) -> Option<Zeroizing<String>> {
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    match value.get_mut(name)?.take() {
        serde_json::Value::String(text) => Some(Zeroizing::new(text)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn context_goes_around_the_message_and_the_cause_is_kept() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let error = CloudError::unreadable("AWS_WEB_IDENTITY_TOKEN_FILE", "/t", io).within("no credentials (", ")");
        assert_eq!(error.to_string(), "no credentials (AWS_WEB_IDENTITY_TOKEN_FILE: cannot read /t: gone)");
        assert_eq!(error.source().map(|cause| cause.to_string()).as_deref(), Some("gone"));
        let timed_out =
            CloudError::transport(TransportError::TimedOut).after_prefix("AWS KMS at http://k").within("a ", "");
        assert_eq!(timed_out.to_string(), "a AWS KMS at http://k: timed out");
        assert!(timed_out.source().is_some(), "a transport error keeps its cause");
    }

    #[test]
    fn statuses_name_the_service_when_it_is_not_in_the_context() {
        let status = CloudError::status("Cloud KMS decrypt", 403, "PERMISSION_DENIED", ": PERMISSION_DENIED no".into());
        assert_eq!(status.to_string(), "Cloud KMS decrypt answered HTTP 403: PERMISSION_DENIED no");
        assert_eq!(status.code(), Some("PERMISSION_DENIED"));
        let bare = CloudError::status("", 500, "", String::new()).after_prefix("container credentials at x");
        assert_eq!(bare.to_string(), "container credentials at x: HTTP 500");
    }
}
