//! clef-agent: fetches an encrypted secrets artifact made by `clef pack`, verifies and decrypts
//! it in memory, and serves the secrets to the application beside it over a loopback HTTP API.
//!
//! Data flows source → artifact → decrypt → snapshot → server; `refresh` is the only writer of
//! the snapshot, `config` the only reader of the environment.

pub mod alloc;
pub mod artifact;
pub mod aws;
pub mod bearer;
pub mod cli;
pub mod config;
pub mod decrypt;
pub mod delivery;
pub mod disk_cache;
pub mod env;
pub mod files;
pub mod http;
pub mod kms;
pub mod lifecycle;
pub mod log;
pub mod pending;
pub mod refresh;
pub mod retry;
pub mod secret;
pub mod server;
pub mod snapshot;
pub mod source;
pub mod telemetry;
pub mod text;
pub mod time;
pub mod url;

/// The crate version, as `--version` prints it and the User-Agent carries it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
