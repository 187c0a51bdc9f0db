//! How the agent runs: the daemon lifecycle, and the error every lifecycle and command ends
//! with when it cannot go on.

pub mod daemon;
pub mod systemd;

use crate::config::ConfigError;

/// How a lifecycle or command ended badly; `main` prints it and exits with status 1.
#[derive(Debug)]
pub enum Fatal {
    /// Printed as `[clef-agent] config error: …`.
    Config(ConfigError),
    /// Printed as `[clef-agent] fatal: …`.
    Other(String),
}

impl From<ConfigError> for Fatal {
    fn from(error: ConfigError) -> Self {
        Fatal::Config(error)
    }
}
