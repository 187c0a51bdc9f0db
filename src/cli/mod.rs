//! The command line (SPEC §7 "CLI"): a tiny two-stage parser — what the user wrote, then what
//! to run — and the one-shot commands `check`, `exec` and `healthcheck`.

pub mod check;
pub mod exec;
pub mod healthcheck;

use std::ffi::OsString;

use crate::agent::Agent;
use crate::artifact::Artifact;
use crate::config::Config;
use crate::decrypt::Plaintext;
use crate::error::Fatal;
use crate::refresh::{self, RefreshError};
use crate::source::Fetched;

pub const HELP: &str = "\
clef-agent - serves secrets from a clef packed artifact over a loopback HTTP API

Usage:
  clef-agent [run]               run the agent (the default)
  clef-agent check               fetch, verify and decrypt once; print what the artifact holds
                                 (key names, never values); exit 0 if it is usable
  clef-agent exec [--] CMD ARGS  fetch and decrypt once, then run CMD with every secret in its
                                 environment as <namespace>__<key>
  clef-agent healthcheck         exit 0 if the local agent is ready, else 1
  clef-agent --version           print the version
  clef-agent --help              print this help

Configuration is read from CLEF_AGENT_* environment variables; see the README.
";

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run,
    Check,
    Exec { program: OsString, arguments: Vec<OsString> },
    Healthcheck,
    Version,
    Help,
}

/// Reads the arguments after the program name.
pub fn parse(arguments: Vec<OsString>) -> Result<Command, String> {
    let mut arguments = arguments.into_iter();
    let Some(first) = arguments.next() else { return Ok(Command::Run) };
    let rest: Vec<OsString> = arguments.collect();
    let command = match first.to_str() {
        Some("run") => Command::Run,
        Some("check") => Command::Check,
        Some("healthcheck") => Command::Healthcheck,
        Some("--version" | "-V") => Command::Version,
        Some("--help" | "-h" | "help") => Command::Help,
        Some("exec") => {
            let mut rest = rest.into_iter().peekable();
            if rest.peek().is_some_and(|argument| argument == "--") {
                rest.next();
            }
            let program = rest.next().ok_or("exec needs a command to run: clef-agent exec [--] CMD [ARGS...]")?;
            return Ok(Command::Exec { program, arguments: rest.collect() });
        }
        _ => return Err(format!("unknown command '{}': run clef-agent --help", first.to_string_lossy())),
    };
    match rest.first() {
        None => Ok(command),
        Some(extra) => Err(format!("unexpected argument '{}': run clef-agent --help", extra.to_string_lossy())),
    }
}

/// One fetch and the full pipeline, for the one-shot commands: the artifact and its plaintext.
/// Assembling the agent hardens the process like the daemon's, before it holds a key or a
/// plaintext; there is no disk cache and no token.
pub fn load_once(config: &Config) -> Result<(Box<Artifact>, Plaintext), Fatal> {
    let Agent { keys, mut source, .. } = Agent::assemble(config)?;
    let failed = |error: RefreshError| Fatal::Load { source: config.source.describe(), error: Box::new(error) };
    let bytes = match source.fetch(None).map_err(|error| failed(error.into()))? {
        Fetched::Content { bytes, .. } => bytes,
        Fetched::Unchanged => return Err(Fatal::UnchangedOnFirstFetch),
    };
    refresh::validate_and_open_once(&bytes, crate::time::now_ms(), config.verify_key.as_ref(), &keys).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(arguments: &[&str]) -> Result<Command, String> {
        parse(arguments.iter().map(OsString::from).collect())
    }

    #[test]
    fn no_arguments_runs_the_daemon() {
        assert_eq!(parsed(&[]), Ok(Command::Run));
        assert_eq!(parsed(&["run"]), Ok(Command::Run));
    }

    #[test]
    fn exec_takes_everything_after_the_separator() {
        assert_eq!(
            parsed(&["exec", "--", "env", "--", "-x"]),
            Ok(Command::Exec { program: "env".into(), arguments: vec!["--".into(), "-x".into()] })
        );
        assert_eq!(
            parsed(&["exec", "ls", "-l"]),
            Ok(Command::Exec { program: "ls".into(), arguments: vec!["-l".into()] })
        );
        assert!(parsed(&["exec", "--"]).unwrap_err().starts_with("exec needs a command"));
    }

    #[test]
    fn refuses_unknown_commands_and_extra_arguments() {
        assert_eq!(parsed(&["serve"]), Err("unknown command 'serve': run clef-agent --help".into()));
        assert_eq!(parsed(&["check", "x"]), Err("unexpected argument 'x': run clef-agent --help".into()));
        assert_eq!(parsed(&["--version"]), Ok(Command::Version));
    }
}
