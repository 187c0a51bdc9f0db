//! The command line (SPEC §7 "CLI"): a tiny two-stage parser — what the user wrote, then what
//! to run — and the one-shot commands `check`, `exec` and `healthcheck`.

pub mod check;
pub mod exec;
pub mod healthcheck;
pub mod watch;

use std::ffi::OsString;

use crate::agent::Agent;
use crate::artifact::Artifact;
use crate::config::Config;
use crate::decrypt::Plaintext;
use crate::error::Fatal;
use crate::refresh::{self, RefreshError};
use crate::source::Fetched;
use crate::supervise::Policy;

pub const HELP: &str = "\
clef-agent - serves secrets from a clef packed artifact over a loopback HTTP API

Usage:
  clef-agent [run]               run the agent (the default)
  clef-agent check               fetch, verify and decrypt once; print what the artifact holds
                                 (key names, never values); exit 0 if it is usable
  clef-agent exec [--] CMD ARGS  fetch and decrypt once, then run CMD with every secret in its
                                 environment as <namespace>__<key>
  clef-agent exec --watch [--on-change restart|signal:<NAME>] [--grace <seconds>] [--] CMD ARGS
                                 run CMD as exec does and keep it on the newest secrets:
                                 restart it (default) or send it <NAME> (HUP, USR1, ...) when a
                                 new revision is served, stop it while the artifact is revoked
                                 or expired; forwards signals, reaps zombies (works as PID 1)
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
    Exec {
        program: OsString,
        arguments: Vec<OsString>,
    },
    /// `exec --watch`: supervise CMD (`cli/watch.rs`).
    ExecWatch {
        program: OsString,
        arguments: Vec<OsString>,
        policy: Policy,
    },
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
        Some("exec") => return parse_exec(rest),
        _ => return Err(format!("unknown command '{}': run clef-agent --help", first.to_string_lossy())),
    };
    match rest.first() {
        None => Ok(command),
        Some(extra) => Err(format!("unexpected argument '{}': run clef-agent --help", extra.to_string_lossy())),
    }
}

/// `exec [--watch [--on-change …] [--grace …]] [--] CMD [ARGS…]`. Only these options are read
/// before CMD (anything else is CMD, as before `--watch` existed); `--` ends them.
fn parse_exec(rest: Vec<OsString>) -> Result<Command, String> {
    let mut rest = rest.into_iter().peekable();
    let (mut watch, mut on_change, mut grace) = (false, None, None);
    while let Some(option) = rest.peek().and_then(|argument| argument.to_str()).map(str::to_owned) {
        let (name, inline) = match option.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (option.clone(), None),
        };
        match name.as_str() {
            "--watch" if inline.is_none() => watch = true,
            "--on-change" | "--grace" => {
                rest.next();
                let value = match inline {
                    Some(value) => value,
                    None => rest.next().and_then(|value| value.into_string().ok()).unwrap_or_default(),
                };
                if name == "--on-change" {
                    on_change = Some(watch::parse_on_change(&value)?);
                } else {
                    grace = Some(watch::parse_grace(&value)?);
                }
                continue;
            }
            _ => break,
        }
        rest.next();
    }
    if rest.peek().is_some_and(|argument| argument == "--") {
        rest.next();
    }
    let usage = if watch { "exec --watch [OPTIONS] [--] CMD [ARGS...]" } else { "exec [--] CMD [ARGS...]" };
    let program = rest.next().ok_or(format!("exec needs a command to run: clef-agent {usage}"))?;
    let arguments = rest.collect();
    if !watch {
        if on_change.is_some() || grace.is_some() {
            return Err("--on-change and --grace are options of exec --watch: add --watch".into());
        }
        return Ok(Command::Exec { program, arguments });
    }
    let defaults = Policy::default();
    let policy = Policy { on_change: on_change.unwrap_or(defaults.on_change), grace: grace.unwrap_or(defaults.grace) };
    Ok(Command::ExecWatch { program, arguments, policy })
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
    fn exec_watch_reads_its_options_before_the_command() {
        use crate::supervise::{OnChange, Signal};
        use std::time::Duration;
        let watched = |arguments: &[&str]| match parsed(arguments) {
            Ok(Command::ExecWatch { program, arguments, policy }) => (program, arguments, policy),
            other => panic!("{arguments:?}: {other:?}"),
        };
        let (program, arguments, policy) = watched(&["exec", "--watch", "--", "app", "--grace", "1"]);
        assert_eq!((program, arguments, policy), ("app".into(), vec!["--grace".into(), "1".into()], Policy::default()));
        let (_, _, policy) = watched(&["exec", "--watch", "--on-change", "signal:HUP", "--grace=3", "app"]);
        let hup = Signal::parse("HUP").unwrap();
        assert_eq!(policy, Policy { on_change: OnChange::Signal(hup), grace: Duration::from_secs(3) });
        let (_, _, policy) = watched(&["exec", "--on-change=signal:SIGUSR2", "--watch", "app"]);
        assert_eq!(policy.on_change, OnChange::Signal(Signal::parse("USR2").unwrap()));
        assert_eq!(watched(&["exec", "--watch", "--on-change", "restart", "app"]).2, Policy::default());
    }

    #[test]
    fn exec_watch_option_errors_name_the_option_and_what_it_accepts() {
        assert_eq!(
            parsed(&["exec", "--watch", "--on-change", "reload", "app"]),
            Err("--on-change takes 'restart' or 'signal:<NAME>' (HUP, INT, QUIT, TERM, USR1, USR2, ALRM, WINCH, with or without SIG), got 'reload'".into())
        );
        assert!(parsed(&["exec", "--watch", "--on-change", "signal:KILL", "app"])
            .unwrap_err()
            .contains("got 'signal:KILL'"));
        assert_eq!(
            parsed(&["exec", "--watch", "--grace", "ten", "app"]),
            Err("--grace takes a whole number of seconds (0 to 3600), got 'ten'".into())
        );
        assert!(parsed(&["exec", "--watch", "--grace"]).unwrap_err().starts_with("--grace takes a whole number"));
        assert_eq!(
            parsed(&["exec", "--grace", "3", "app"]),
            Err("--on-change and --grace are options of exec --watch: add --watch".into())
        );
        assert_eq!(
            parsed(&["exec", "--watch"]),
            Err("exec needs a command to run: clef-agent exec --watch [OPTIONS] [--] CMD [ARGS...]".into())
        );
    }

    #[test]
    fn refuses_unknown_commands_and_extra_arguments() {
        assert_eq!(parsed(&["serve"]), Err("unknown command 'serve': run clef-agent --help".into()));
        assert_eq!(parsed(&["check", "x"]), Err("unexpected argument 'x': run clef-agent --help".into()));
        assert_eq!(parsed(&["--version"]), Ok(Command::Version));
    }
}
