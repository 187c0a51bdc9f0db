//! The `clef-agent` executable: command line → configuration → lifecycle → exit code.

use std::process::ExitCode;

use clef_agent::config::Config;
use clef_agent::lifecycle::daemon::{self, Fatal};
use clef_agent::{log, VERSION};

const HELP: &str = "\
clef-agent - serves secrets from a clef packed artifact over a loopback HTTP API

Usage:
  clef-agent [run]     run the agent (the default)
  clef-agent --version print the version
  clef-agent --help    print this help

Configuration is read from CLEF_AGENT_* environment variables; see the README.
";

fn main() -> ExitCode {
    // A panic message may quote data; print only where it happened.
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|location| location.to_string()).unwrap_or_default();
        log::error(&format!("internal error (a bug) at {location}"));
    }));
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    match arguments.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] | ["run"] => run(),
        ["--version" | "-V"] => {
            println!("clef-agent {VERSION}");
            ExitCode::SUCCESS
        }
        ["--help" | "-h"] => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        [other, ..] => {
            log::error(&format!("unknown command or option '{other}': run clef-agent --help"));
            ExitCode::from(2)
        }
    }
}

fn run() -> ExitCode {
    let result = Config::from_env(|name| std::env::var(name).ok()).map_err(Fatal::Config).and_then(daemon::run);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal::Config(error)) => {
            log::error(&format!("config error: {error}"));
            ExitCode::FAILURE
        }
        Err(Fatal::Other(message)) => {
            log::error(&format!("fatal: {message}"));
            ExitCode::FAILURE
        }
    }
}
