//! clef-agent: fetches an encrypted secrets artifact made by `clef pack`, verifies and decrypts
//! it in memory, and serves the secrets to the application beside it over a loopback HTTP API.
//!
//! Data flows source → artifact → decrypt → snapshot → server; `refresh` is the only writer of
//! the snapshot. Two modules read the environment: `config` reads and checks the agent's
//! settings up front (`CLEF_AGENT_*`, and the systemd, Lambda and TLS variables it acts on),
//! and `cloud::env` gives the cloud clients their providers' variables (`AWS_*`, `GOOGLE_*`,
//! `AZURE_*`, the endpoint overrides), read when those clouds are used. `main` only lists
//! variable names, to warn about misspelt ones.

pub mod agent;
pub mod alloc;
pub mod artifact;
pub mod bearer;
pub mod cli;
pub mod cloud;
pub mod config;
pub mod decrypt;
pub mod delivery;
pub mod disk_cache;
pub mod error;
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
pub mod supervise;
pub mod telemetry;
pub mod text;
pub mod time;
pub mod url;

/// The crate version, as `--version` prints it and the User-Agent carries it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
