//! `clef-agent exec --watch [--on-change restart|signal:<NAME>] [--grace <seconds>] [--] CMD…`:
//! a supervisor that runs CMD as `exec` does and keeps it on the newest secrets. The decisions
//! are `supervise::step`'s; this file is the I/O around it: the refresher polling on the
//! cached-mode schedule (`refresh/schedule.rs`), starting CMD, sending signals, reaping.
//!
//! CMD gets what `exec` gives it — every secret in its environment, without the agent's own
//! credentials ([`super::exec::WITHHELD_FROM_COMMAND`]) — and the supervisor stays
//! non-dumpable ([`crate::agent::Agent::assemble`]), as it holds the key and the plaintext for
//! the next start. It reaps every child that ends, not only CMD, so that as PID 1 (a container's
//! init, `unshare -pf`) the orphans CMD leaves behind do not pile up as zombies. It exits with
//! CMD's status when CMD exits by itself, 128 + the signal's number when a signal killed it.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use super::exec::{environment, WITHHELD_FROM_COMMAND};
use crate::agent::{self, Agent};
use crate::config::{Config, ConfigError, Mode};
use crate::error::Fatal;
use crate::log;
use crate::refresh::{Poller, Refresher};
use crate::snapshot::{LiveSnapshot, Served, Wipe};
use crate::supervise::{self, Action, Event, OnChange, Policy, Signal, State, CHANGE_SIGNALS, FORWARDED};
use crate::telemetry::Telemetry;

/// How often the supervisor looks at what the agent serves: a new revision reaches CMD at
/// most this long after the refresh that loaded it.
const TICK: Duration = Duration::from_millis(200);
/// `--grace` is at most an hour: a longer wait is a typo, and a stuck CMD would block changes.
const MAX_GRACE_SECONDS: u64 = 3600;

/// `--on-change`: `restart`, or `signal:<NAME>` with a name of [`CHANGE_SIGNALS`].
pub fn parse_on_change(text: &str) -> Result<OnChange, String> {
    if text == "restart" {
        return Ok(OnChange::Restart);
    }
    if let Some(signal) = text.strip_prefix("signal:").and_then(Signal::parse) {
        return Ok(OnChange::Signal(signal));
    }
    let names: Vec<&str> = CHANGE_SIGNALS.iter().map(|signal| &signal.name[3..]).collect();
    Err(format!(
        "--on-change takes 'restart' or 'signal:<NAME>' ({}, with or without SIG), got '{text}'",
        names.join(", ")
    ))
}

/// `--grace`: whole seconds, 0 to [`MAX_GRACE_SECONDS`].
pub fn parse_grace(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(seconds) if seconds <= MAX_GRACE_SECONDS && text.bytes().all(|byte| byte.is_ascii_digit()) => {
            Ok(Duration::from_secs(seconds))
        }
        _ => Err(format!("--grace takes a whole number of seconds (0 to {MAX_GRACE_SECONDS}), got '{text}'")),
    }
}

/// Runs CMD under supervision until it exits by itself or a stop signal ends it; its status.
pub fn run(config: &Config, program: &OsString, arguments: &[OsString], policy: Policy) -> Result<u8, Fatal> {
    if matches!(config.mode, Mode::Jit) {
        return Err(ConfigError::new(
            "exec --watch keeps the secrets to start CMD again with, which JIT mode does not: set \
             CLEF_AGENT_CACHE_TTL to 30 or more (or leave it unset) for exec --watch",
        )
        .into());
    }
    let Agent { keys, source, .. } = Agent::assemble(config)?;
    let pipeline = agent::pipeline(config, source, keys)?;
    let cell = Arc::new(LiveSnapshot::new(config.mode));
    let refresher = Arc::new(Refresher::new(Arc::clone(&cell), pipeline, Telemetry::default()));
    // Before CMD exists, so that no SIGCHLD and no stop signal goes unseen.
    let (signals, inbox) = mpsc::channel();
    // Held here, so the channel never disconnects and a wait on it is only ever a timeout.
    watch_signals(signals.clone())?;
    log::info(&format!("source: {}", refresher.describe_source()));
    let source = refresher.describe_source();
    refresher.refresh(crate::time::now_ms()).map_err(|error| Fatal::Load { source, error: Box::new(error) })?;
    let _poller = Poller::spawn(Arc::clone(&refresher)).map_err(|error| Fatal::Thread { purpose: "refresh", error })?;
    let on_change = match policy.on_change {
        OnChange::Restart => "restart".to_string(),
        OnChange::Signal(signal) => signal.name.to_string(),
    };
    log::info(&format!(
        "exec: watching for new revisions (on change: {on_change}; grace {} s)",
        policy.grace.as_secs()
    ));

    let mut supervisor =
        Supervisor { state: State::new(policy), program, arguments, command_pid: None, seen: cell.current() };
    loop {
        let signalled = match inbox.recv_timeout(TICK) {
            Ok(number) if number == libc::SIGCHLD => None,
            Ok(number) => Some(Signal::from_number(number)),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        };
        if let Some(signal) = signalled {
            if let Some(status) = supervisor.handle(&Event::Signalled(signal))? {
                return Ok(status);
            }
        }
        if let Some(status) = supervisor.reap() {
            if let Some(status) = supervisor.handle(&Event::Exited(status))? {
                return Ok(status);
            }
        }
        supervisor.seen = cell.current();
        let served = observe(&supervisor.seen, crate::time::now_ms());
        if let Some(status) = supervisor.handle(&Event::Looked(served))? {
            return Ok(status);
        }
    }
}

/// What the agent serves, as the supervisor's rules see it.
fn observe(served: &Served, now_ms: u64) -> supervise::Served {
    match served {
        Served::Cached(snapshot) => match &snapshot.expires_at {
            // Expired before the poller noticed: CMD stops now, not at the next poll.
            Some(expiry) if expiry.epoch_ms <= now_ms as i64 => {
                supervise::Served::Withdrawn(format!("artifact expired at {}", expiry.text))
            }
            _ => supervise::Served::Revision(snapshot.revision.clone()),
        },
        Served::Wiped(Wipe::Revoked(_)) => supervise::Served::Withdrawn("artifact revoked".into()),
        Served::Wiped(Wipe::ArtifactExpired(_)) => supervise::Served::Withdrawn("artifact expired".into()),
        Served::NotLoaded | Served::Wiped(Wipe::CacheExpired) | Served::Jit(_) => supervise::Served::Nothing,
    }
}

struct Supervisor<'a> {
    state: State,
    program: &'a OsString,
    arguments: &'a [OsString],
    /// CMD's process id while it runs (until it is reaped, so a signal never reaches a reused id).
    command_pid: Option<libc::pid_t>,
    /// What the agent served when last looked at: CMD starts with this snapshot's secrets.
    seen: Arc<Served>,
}

impl Supervisor<'_> {
    /// Runs one event through the rules and performs the actions; `Some(status)` to exit with.
    fn handle(&mut self, event: &Event) -> Result<Option<u8>, Fatal> {
        let state = std::mem::replace(&mut self.state, State::new(Policy::default()));
        let (state, actions) = supervise::step(state, event, crate::time::now_ms());
        self.state = state;
        for action in actions {
            match action {
                Action::Log(line) => log::info(&line),
                Action::Start { .. } => self.start()?,
                Action::Send(signal) => self.send(signal.number),
                Action::Kill => self.send(libc::SIGKILL),
                Action::Exit(status) => return Ok(Some(status.clamp(0, 255) as u8)),
            }
        }
        Ok(None)
    }

    fn start(&mut self) -> Result<(), Fatal> {
        let Served::Cached(snapshot) = &*self.seen else { return Ok(()) };
        let variables = environment(snapshot.plaintext()).map_err(Fatal::NotAnEnvironmentVariable)?;
        let mut command = std::process::Command::new(self.program);
        command.args(self.arguments);
        for name in WITHHELD_FROM_COMMAND {
            command.env_remove(name);
        }
        command.envs(variables.iter().map(|(name, value)| (name.as_str(), value.as_str())));
        // CMD dies with the supervisor: killed (SIGKILL, the OOM killer), it could no longer stop
        // CMD on a revocation, so CMD must not run on unsupervised. The signal fires when the
        // forking thread ends — this one, the supervisor's main thread, which ends only with it.
        let supervisor = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe and touch only the child.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The supervisor died before prctl took effect: do not start CMD at all.
                // (An OS error: nothing may allocate between fork and exec.)
                if libc::getppid() != supervisor {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        // The `Child` is dropped without waiting: `reap` collects CMD with every other child.
        let child = command.spawn().map_err(|error| Fatal::Exec { program: self.program.clone(), error })?;
        let pid = child.id() as libc::pid_t;
        self.command_pid = Some(pid);
        log::info(&format!("exec: CMD started (pid {pid})"));
        Ok(())
    }

    fn send(&self, signal: libc::c_int) {
        if let Some(pid) = self.command_pid {
            // SAFETY: kill() only sends a signal; `pid` is our child, not reaped yet.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// Reaps every child that has ended (orphans too, as PID 1); CMD's status if it was one.
    fn reap(&mut self) -> Option<i32> {
        let mut command_status = None;
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes only the status we pass; WNOHANG never blocks.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return command_status;
            }
            if Some(pid) == self.command_pid {
                self.command_pid = None;
                command_status = Some(exit_status(status));
            }
        }
    }
}

/// A wait status as a shell reports it: the exit code, or 128 + the signal that killed it.
fn exit_status(status: libc::c_int) -> i32 {
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

/// The forwarded signals and SIGCHLD, delivered to the supervisor's loop. Handlers installed
/// explicitly, so they work as PID 1, where the kernel gives none by default.
fn watch_signals(signals: Sender<i32>) -> Result<(), Fatal> {
    let mut wanted = FORWARDED.to_vec();
    wanted.push(libc::SIGCHLD);
    let mut incoming = signal_hook::iterator::Signals::new(wanted).map_err(Fatal::Signals)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in incoming.forever() {
                if signals.send(signal).is_err() {
                    return;
                }
            }
        })
        .map_err(|error| Fatal::Thread { purpose: "signal", error })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_status_reads_as_a_shell_reports_it() {
        // Linux's encoding: exit code in bits 8..16, a terminating signal in the low 7 bits.
        assert_eq!(exit_status(3 << 8), 3);
        assert_eq!(exit_status(0), 0);
        assert_eq!(exit_status(libc::SIGKILL), 137);
        assert_eq!(exit_status(libc::SIGTERM), 143);
    }

    #[test]
    fn grace_is_whole_seconds_up_to_an_hour() {
        assert_eq!(parse_grace("0"), Ok(Duration::ZERO));
        assert_eq!(parse_grace("3600"), Ok(Duration::from_secs(3600)));
        for bad in ["3601", "-1", "+5", "1.5", "", "10s"] {
            assert!(parse_grace(bad).is_err(), "{bad}");
        }
    }
}
