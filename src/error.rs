//! `Fatal`: how the agent or a one-shot command ends badly. `main` prints it — a configuration
//! problem as `[clef-agent] config error: …`, anything else as `[clef-agent] fatal: …` — and
//! exits with status 1. One variant per thing that can go wrong, so the wording lives here
//! and nowhere else; errors that come from a lower module as text (the listener, the server,
//! the Lambda API, the healthcheck) are carried as that text.

use std::ffi::OsString;
use std::fmt;
use std::io;

use crate::config::ConfigError;
use crate::refresh::RefreshError;

#[derive(Debug)]
#[non_exhaustive]
pub enum Fatal {
    /// The configuration cannot work: a variable, the age key file, the token file, the disk
    /// cache directory, the rollback mark, `SSL_CERT_FILE`, the source's settings.
    Config(ConfigError),
    /// A listener could not be bound; the listener's message names the address.
    Listen(String),
    /// The operating system would not start a thread the agent needs.
    Thread { purpose: &'static str, error: io::Error },
    /// The signal handlers could not be installed.
    Signals(io::Error),
    /// No random bytes for the agent id.
    Randomness(String),
    /// Start-up gave up on the first artifact.
    InitialLoad { source: String, attempts: u32, error: Box<RefreshError> },
    /// The HTTP server could not start, or stopped accepting connections.
    Serve(String),
    /// The Lambda Extensions API failed (registration or `event/next`).
    LambdaApi(String),
    /// `check` or `exec` could not load the artifact.
    Load { source: String, error: Box<RefreshError> },
    /// `check` or `exec`: the source answered "unchanged" to a fetch that named no version.
    UnchangedOnFirstFetch,
    /// `exec`: a secret's name or value cannot be an environment variable.
    NotAnEnvironmentVariable(String),
    /// `exec`: the command could not be started.
    Exec { program: OsString, error: io::Error },
    /// `healthcheck`: the agent is not reachable or not ready.
    NotReady(String),
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fatal::Config(error) => write!(f, "{error}"),
            Fatal::Listen(message)
            | Fatal::Randomness(message)
            | Fatal::Serve(message)
            | Fatal::LambdaApi(message)
            | Fatal::NotAnEnvironmentVariable(message)
            | Fatal::NotReady(message) => f.write_str(message),
            Fatal::Thread { purpose, error } => write!(f, "cannot start the {purpose} thread: {error}"),
            Fatal::Signals(error) => write!(f, "cannot install signal handlers: {error}"),
            Fatal::InitialLoad { source, attempts, error } => {
                let attempts = if *attempts == 1 { "1 attempt".to_string() } else { format!("{attempts} attempts") };
                write!(f, "Failed to fetch artifact from {source} after {attempts}: {error}. {}", error.hint())
            }
            Fatal::Load { source, error } => {
                write!(f, "cannot load the artifact from {source}: {error}. {}", error.hint())
            }
            Fatal::UnchangedOnFirstFetch => f.write_str("the source answered 'unchanged' to a first fetch"),
            Fatal::Exec { program, error } => write!(f, "cannot run {}: {error}", program.to_string_lossy()),
        }
    }
}

/// The message already quotes the cause (that is what the user reads); `source` hands it on to
/// code that inspects it.
impl std::error::Error for Fatal {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Fatal::Config(error) => Some(error),
            Fatal::Thread { error, .. } | Fatal::Signals(error) | Fatal::Exec { error, .. } => Some(error),
            Fatal::InitialLoad { error, .. } | Fatal::Load { error, .. } => Some(error.as_ref()),
            Fatal::Listen(_)
            | Fatal::Randomness(_)
            | Fatal::Serve(_)
            | Fatal::LambdaApi(_)
            | Fatal::UnchangedOnFirstFetch
            | Fatal::NotAnEnvironmentVariable(_)
            | Fatal::NotReady(_) => None,
        }
    }
}

impl From<ConfigError> for Fatal {
    fn from(error: ConfigError) -> Self {
        Fatal::Config(error)
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn start_up_names_the_source_the_attempts_the_error_and_its_hint() {
        let error = RefreshError::Expired { expires_at: "2026-01-01T00:00:00Z".into() };
        let hint = error.hint();
        let once = Fatal::InitialLoad { source: "file /a.json".into(), attempts: 1, error: Box::new(error.clone()) };
        assert_eq!(
            once.to_string(),
            format!("Failed to fetch artifact from file /a.json after 1 attempt: {error}. {hint}")
        );
        let thrice = Fatal::InitialLoad { source: "file /a.json".into(), attempts: 3, error: Box::new(error.clone()) };
        assert!(thrice.to_string().contains(" after 3 attempts: "), "{thrice}");
        assert_eq!(thrice.source().map(ToString::to_string), Some(error.to_string()));
    }

    #[test]
    fn thread_and_exec_failures_keep_the_io_error_as_their_source() {
        let thread = Fatal::Thread { purpose: "TTL timer", error: io::Error::other("no threads left") };
        assert_eq!(thread.to_string(), "cannot start the TTL timer thread: no threads left");
        assert!(thread.source().is_some_and(|source| source.is::<io::Error>()));
        let exec = Fatal::Exec { program: "/bin/app".into(), error: io::ErrorKind::NotFound.into() };
        assert_eq!(exec.to_string(), "cannot run /bin/app: entity not found");
        assert!(exec.source().is_some_and(|source| source.is::<io::Error>()));
    }
}
