//! How the agent runs: start-up shared by every lifecycle, and the daemon lifecycle.

pub mod daemon;
