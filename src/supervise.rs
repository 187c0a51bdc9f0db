//! The decisions of `exec --watch`, the supervisor that keeps CMD running on the secrets the
//! agent serves. Pure: [`step`] takes the state, one event (what the agent serves, CMD's exit,
//! a signal) and the time, and returns the next state and the actions to take — start CMD,
//! signal it, kill it, exit, log. `cli/watch.rs` does the I/O (the refresher, `fork`/`exec`,
//! `kill`, `waitpid`) and nothing else, so every rule is tested here as a table.
//!
//! The rules:
//! - a *different* revision served → restart CMD (SIGTERM, SIGKILL after the grace, start
//!   again) or send it the chosen signal; at most one such change per [`CHANGE_DEBOUNCE`], the
//!   latest revision winning;
//! - the artifact revoked or expired → stop CMD the same way and start it again once a valid
//!   artifact is served; a rejected artifact, a failed fetch or the TTL running out (the source
//!   is unreachable, which says nothing about the secrets CMD holds) change nothing;
//! - SIGTERM/SIGINT are forwarded and the supervisor exits with CMD's status once CMD is gone;
//!   SIGHUP/SIGUSR1/SIGUSR2 are forwarded;
//! - CMD exiting by itself ends the supervisor with CMD's status.

use std::time::Duration;

/// At most one restart (or change signal) per this interval.
pub const CHANGE_DEBOUNCE: Duration = Duration::from_secs(5);
/// How long a stopping CMD gets between SIGTERM and SIGKILL unless `--grace` says otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// A signal by number and by the name logs show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    pub number: i32,
    pub name: &'static str,
}

/// The signals `--on-change signal:<NAME>` accepts, as `HUP` or `SIGHUP` in any case.
pub const CHANGE_SIGNALS: [Signal; 8] = [
    Signal { number: libc::SIGHUP, name: "SIGHUP" },
    Signal { number: libc::SIGINT, name: "SIGINT" },
    Signal { number: libc::SIGQUIT, name: "SIGQUIT" },
    Signal { number: libc::SIGTERM, name: "SIGTERM" },
    Signal { number: libc::SIGUSR1, name: "SIGUSR1" },
    Signal { number: libc::SIGUSR2, name: "SIGUSR2" },
    Signal { number: libc::SIGALRM, name: "SIGALRM" },
    Signal { number: libc::SIGWINCH, name: "SIGWINCH" },
];

/// The signals the supervisor forwards to CMD.
pub const FORWARDED: [i32; 5] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2];

pub const SIGTERM: Signal = Signal { number: libc::SIGTERM, name: "SIGTERM" };

impl Signal {
    /// `HUP`, `SIGHUP`, `usr1`…: one of [`CHANGE_SIGNALS`].
    pub fn parse(name: &str) -> Option<Signal> {
        let upper = name.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        CHANGE_SIGNALS.iter().copied().find(|signal| &signal.name[3..] == bare)
    }

    /// A signal the supervisor received, by number (only [`FORWARDED`] ones are delivered).
    pub fn from_number(number: i32) -> Signal {
        CHANGE_SIGNALS
            .iter()
            .copied()
            .find(|signal| signal.number == number)
            .unwrap_or(Signal { number, name: "a signal" })
    }
}

/// What to do when a different revision is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChange {
    /// Stop CMD (SIGTERM, SIGKILL after the grace) and start it with the new environment.
    Restart,
    /// Send CMD this signal; its environment keeps the old values (it re-reads files or the API).
    Signal(Signal),
}

/// `--on-change` and `--grace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub on_change: OnChange,
    pub grace: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy { on_change: OnChange::Restart, grace: DEFAULT_GRACE }
    }
}

/// What the agent serves, as far as CMD is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    Revision(String),
    /// The artifact was revoked or expired (the text says which, for the log).
    Withdrawn(String),
    /// Nothing decided yet, or the TTL ran out: leave CMD as it is.
    Nothing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// What the agent serves now; looked at on every tick, so the grace and the debounce are
    /// checked then too.
    Looked(Served),
    /// CMD ended, with this status (128 + the signal when a signal killed it, as shells say).
    Exited(i32),
    /// The supervisor received one of [`FORWARDED`].
    Signalled(Signal),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start CMD with the environment of the revision served (the one named).
    Start {
        revision: String,
    },
    Send(Signal),
    Kill,
    /// Exit with this status.
    Exit(i32),
    Log(String),
}

/// CMD, as the supervisor knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Not running: before the first start, or stopped until a valid artifact is served.
    Down,
    /// Running with the environment (or, after a change signal, the files) of `revision`.
    Running { revision: String },
    /// SIGTERM sent at `since_ms`; `killed` once SIGKILL followed.
    Stopping { since_ms: u64, killed: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub policy: Policy,
    pub command: Command,
    /// What the agent served when last looked at.
    pub served: Served,
    /// When CMD was last started, restarted or sent the change signal (the debounce).
    pub last_change_ms: Option<u64>,
    /// A revision whose change waits for the debounce, once logged.
    pub deferred: Option<String>,
    /// SIGTERM or SIGINT arrived: exit once CMD is gone, start nothing more.
    pub stopping_for_good: bool,
}

impl State {
    pub fn new(policy: Policy) -> State {
        State {
            policy,
            command: Command::Down,
            served: Served::Nothing,
            last_change_ms: None,
            deferred: None,
            stopping_for_good: false,
        }
    }
}

/// One event at `now_ms`: the next state and what to do, in order.
pub fn step(mut state: State, event: &Event, now_ms: u64) -> (State, Vec<Action>) {
    let mut actions = Vec::new();
    match event {
        Event::Looked(served) => {
            state.served = served.clone();
            looked(&mut state, now_ms, &mut actions);
        }
        Event::Exited(status) => exited(&mut state, *status, now_ms, &mut actions),
        Event::Signalled(signal) => signalled(&mut state, *signal, &mut actions),
    }
    (state, actions)
}

fn looked(state: &mut State, now_ms: u64, actions: &mut Vec<Action>) {
    if state.stopping_for_good {
        return;
    }
    match (&state.command, &state.served) {
        (Command::Stopping { since_ms, killed: false }, _) if now_ms >= since_ms + millis(state.policy.grace) => {
            actions.push(Action::Log(format!(
                "exec: CMD did not exit within {} s of SIGTERM: sending SIGKILL",
                state.policy.grace.as_secs()
            )));
            actions.push(Action::Kill);
            state.command = Command::Stopping { since_ms: *since_ms, killed: true };
        }
        (Command::Down, Served::Revision(revision)) => start(state, revision.clone(), now_ms, "starting CMD", actions),
        (Command::Running { .. }, Served::Withdrawn(why)) => {
            actions.push(Action::Log(format!("exec: {why}: stopping CMD until a valid artifact is served")));
            stop(state, now_ms, actions);
        }
        (Command::Running { revision: running }, Served::Revision(revision)) if running != revision => {
            let revision = revision.clone();
            changed(state, revision, now_ms, actions);
        }
        (Command::Running { .. }, Served::Revision(_)) => state.deferred = None,
        _ => {}
    }
}

/// A different revision is served while CMD runs.
fn changed(state: &mut State, revision: String, now_ms: u64, actions: &mut Vec<Action>) {
    let next_allowed = state.last_change_ms.map_or(0, |at| at + millis(CHANGE_DEBOUNCE));
    if now_ms < next_allowed {
        if state.deferred.as_ref() != Some(&revision) {
            actions.push(Action::Log(format!(
                "exec: revision {revision} is served: acting on it in {} ms (at most one change per {} s)",
                next_allowed - now_ms,
                CHANGE_DEBOUNCE.as_secs()
            )));
            state.deferred = Some(revision);
        }
        return;
    }
    state.deferred = None;
    state.last_change_ms = Some(now_ms);
    match state.policy.on_change {
        OnChange::Restart => {
            actions.push(Action::Log(format!(
                "exec: revision {revision} is served: restarting CMD (SIGTERM, SIGKILL after {} s)",
                state.policy.grace.as_secs()
            )));
            stop(state, now_ms, actions);
        }
        OnChange::Signal(signal) => {
            actions.push(Action::Log(format!("exec: revision {revision} is served: sending {} to CMD", signal.name)));
            actions.push(Action::Send(signal));
            state.command = Command::Running { revision };
        }
    }
}

fn exited(state: &mut State, status: i32, now_ms: u64, actions: &mut Vec<Action>) {
    match &state.command {
        Command::Down => {}
        Command::Running { .. } if !state.stopping_for_good => {
            actions.push(Action::Log(format!("exec: CMD exited with status {status}: exiting with it")));
            actions.push(Action::Exit(status));
        }
        _ if state.stopping_for_good => {
            actions.push(Action::Log(format!("exec: CMD exited with status {status} after a stop signal: exiting")));
            actions.push(Action::Exit(status));
        }
        Command::Running { .. } | Command::Stopping { .. } => {
            state.command = Command::Down;
            match state.served.clone() {
                Served::Revision(revision) => start(state, revision, now_ms, "CMD stopped: starting it again", actions),
                Served::Withdrawn(_) | Served::Nothing => {
                    actions.push(Action::Log("exec: CMD stopped: waiting for a valid artifact".into()));
                }
            }
        }
    }
}

fn signalled(state: &mut State, signal: Signal, actions: &mut Vec<Action>) {
    let stops = signal.number == libc::SIGTERM || signal.number == libc::SIGINT;
    match (&state.command, stops) {
        (Command::Down, true) => {
            actions.push(Action::Log(format!("exec: {} received while CMD is stopped: exiting", signal.name)));
            actions.push(Action::Exit(128 + signal.number));
        }
        (Command::Down, false) => {
            actions
                .push(Action::Log(format!("exec: {} received while CMD is stopped: nothing to forward", signal.name)));
        }
        (_, true) => {
            actions.push(Action::Log(format!(
                "exec: {} received: forwarding it to CMD, exiting when CMD does",
                signal.name
            )));
            actions.push(Action::Send(signal));
        }
        (_, false) => {
            actions.push(Action::Log(format!("exec: {} received: forwarding it to CMD", signal.name)));
            actions.push(Action::Send(signal));
        }
    }
    state.stopping_for_good |= stops;
}

fn start(state: &mut State, revision: String, now_ms: u64, why: &str, actions: &mut Vec<Action>) {
    actions.push(Action::Log(format!("exec: {why} with revision {revision}")));
    actions.push(Action::Start { revision: revision.clone() });
    state.command = Command::Running { revision };
    state.deferred = None;
    state.last_change_ms = Some(now_ms);
}

fn stop(state: &mut State, now_ms: u64, actions: &mut Vec<Action>) {
    actions.push(Action::Send(SIGTERM));
    state.command = Command::Stopping { since_ms: now_ms, killed: false };
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().try_into().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_000_000;
    const HUP: Signal = Signal { number: libc::SIGHUP, name: "SIGHUP" };
    const USR1: Signal = Signal { number: libc::SIGUSR1, name: "SIGUSR1" };
    const INT: Signal = Signal { number: libc::SIGINT, name: "SIGINT" };

    fn revision(name: &str) -> Event {
        Event::Looked(Served::Revision(name.into()))
    }

    fn revoked() -> Event {
        Event::Looked(Served::Withdrawn("artifact revoked".into()))
    }

    fn start(name: &str) -> Action {
        Action::Start { revision: name.into() }
    }

    fn running(name: &str) -> Command {
        Command::Running { revision: name.into() }
    }

    fn stopping(since_ms: u64, killed: bool) -> Command {
        Command::Stopping { since_ms, killed }
    }

    /// Runs `events` (at their times) from a fresh state; the actions without the log lines,
    /// and the state at the end.
    fn run(policy: Policy, events: &[(u64, Event)]) -> (Vec<Vec<Action>>, State) {
        let mut state = State::new(policy);
        let mut all = Vec::new();
        for (now, event) in events {
            let (next, actions) = step(state, event, *now);
            state = next;
            all.push(actions.into_iter().filter(|action| !matches!(action, Action::Log(_))).collect());
        }
        (all, state)
    }

    fn signal_mode(signal: Signal) -> Policy {
        Policy { on_change: OnChange::Signal(signal), ..Policy::default() }
    }

    #[test]
    fn each_event_starts_restarts_signals_stops_or_exits_as_the_rules_say() {
        let restart = Policy::default();
        // (case, policy, events at their times, the actions of each event, the command at the end)
        #[allow(clippy::type_complexity)]
        let rows: Vec<(&str, Policy, Vec<(u64, Event)>, Vec<Vec<Action>>, Command)> = vec![
            (
                "the first artifact starts CMD",
                restart,
                vec![(T, revision("r1"))],
                vec![vec![start("r1")]],
                running("r1"),
            ),
            (
                "nothing served yet starts nothing",
                restart,
                vec![(T, Event::Looked(Served::Nothing))],
                vec![vec![]],
                Command::Down,
            ),
            (
                "the same revision changes nothing",
                restart,
                vec![(T, revision("r1")), (T + 60_000, revision("r1"))],
                vec![vec![start("r1")], vec![]],
                running("r1"),
            ),
            (
                "a new revision restarts CMD: SIGTERM, then a start once it exited",
                restart,
                vec![(T, revision("r1")), (T + 6_000, revision("r2")), (T + 6_100, Event::Exited(143))],
                vec![vec![start("r1")], vec![Action::Send(SIGTERM)], vec![start("r2")]],
                running("r2"),
            ),
            (
                "a CMD that ignores SIGTERM gets SIGKILL after the grace, once",
                restart,
                vec![
                    (T, revision("r1")),
                    (T + 6_000, revision("r2")),
                    (T + 15_999, revision("r2")),
                    (T + 16_000, revision("r2")),
                    (T + 16_200, revision("r2")),
                    (T + 16_300, Event::Exited(137)),
                ],
                vec![
                    vec![start("r1")],
                    vec![Action::Send(SIGTERM)],
                    vec![],
                    vec![Action::Kill],
                    vec![],
                    vec![start("r2")],
                ],
                running("r2"),
            ),
            (
                "a new revision within 5 s of the start waits, then the latest one counts",
                restart,
                vec![
                    (T, revision("r1")),
                    (T + 1_000, revision("r2")),
                    (T + 3_000, revision("r3")),
                    (T + 5_000, revision("r3")),
                    (T + 5_100, Event::Exited(0)),
                ],
                vec![vec![start("r1")], vec![], vec![], vec![Action::Send(SIGTERM)], vec![start("r3")]],
                running("r3"),
            ),
            (
                "a revision that comes back before the debounce ends changes nothing",
                restart,
                vec![
                    (T, revision("r1")),
                    (T + 1_000, revision("r2")),
                    (T + 2_000, revision("r1")),
                    (T + 9_000, revision("r1")),
                ],
                vec![vec![start("r1")], vec![], vec![], vec![]],
                running("r1"),
            ),
            (
                "signal mode sends the signal and keeps CMD",
                signal_mode(HUP),
                vec![(T, revision("r1")), (T + 5_000, revision("r2")), (T + 6_000, revision("r2"))],
                vec![vec![start("r1")], vec![Action::Send(HUP)], vec![]],
                running("r2"),
            ),
            (
                "signal mode is debounced too",
                signal_mode(USR1),
                vec![
                    (T, revision("r1")),
                    (T + 5_000, revision("r2")),
                    (T + 6_000, revision("r3")),
                    (T + 10_000, revision("r3")),
                ],
                vec![vec![start("r1")], vec![Action::Send(USR1)], vec![], vec![Action::Send(USR1)]],
                running("r3"),
            ),
            (
                "revocation stops CMD until a valid artifact is served, then starts it at once",
                signal_mode(HUP),
                vec![
                    (T, revision("r1")),
                    (T + 1_000, revoked()),
                    (T + 1_100, Event::Exited(143)),
                    (T + 2_000, revoked()),
                    (T + 3_000, revision("r2")),
                ],
                vec![vec![start("r1")], vec![Action::Send(SIGTERM)], vec![], vec![], vec![start("r2")]],
                running("r2"),
            ),
            (
                "a revocation during a restart leaves CMD stopped",
                restart,
                vec![
                    (T, revision("r1")),
                    (T + 6_000, revision("r2")),
                    (T + 6_050, revoked()),
                    (T + 6_100, Event::Exited(143)),
                ],
                vec![vec![start("r1")], vec![Action::Send(SIGTERM)], vec![], vec![]],
                Command::Down,
            ),
            (
                "the TTL running out or a rejected artifact leaves CMD running",
                restart,
                vec![(T, revision("r1")), (T + 400_000, Event::Looked(Served::Nothing))],
                vec![vec![start("r1")], vec![]],
                running("r1"),
            ),
            (
                "CMD exiting by itself ends the supervisor with its status",
                restart,
                vec![(T, revision("r1")), (T + 1, Event::Exited(3))],
                vec![vec![start("r1")], vec![Action::Exit(3)]],
                running("r1"),
            ),
            (
                "SIGHUP and SIGUSR1 are forwarded",
                restart,
                vec![(T, revision("r1")), (T + 1, Event::Signalled(HUP)), (T + 2, Event::Signalled(USR1))],
                vec![vec![start("r1")], vec![Action::Send(HUP)], vec![Action::Send(USR1)]],
                running("r1"),
            ),
            (
                "SIGTERM is forwarded, nothing restarts after it, CMD's status is the exit status",
                restart,
                vec![
                    (T, revision("r1")),
                    (T + 1, Event::Signalled(SIGTERM)),
                    (T + 6_000, revision("r2")),
                    (T + 30_000, revision("r2")),
                    (T + 30_001, Event::Exited(7)),
                ],
                vec![vec![start("r1")], vec![Action::Send(SIGTERM)], vec![], vec![], vec![Action::Exit(7)]],
                running("r1"),
            ),
            (
                "SIGINT during a restart exits instead of starting again",
                restart,
                vec![
                    (T, revision("r1")),
                    (T + 6_000, revision("r2")),
                    (T + 6_001, Event::Signalled(INT)),
                    (T + 6_002, Event::Exited(130)),
                ],
                vec![vec![start("r1")], vec![Action::Send(SIGTERM)], vec![Action::Send(INT)], vec![Action::Exit(130)]],
                stopping(T + 6_000, false),
            ),
            (
                "SIGTERM while CMD is stopped exits with 128 + 15; SIGHUP then has nobody to go to",
                restart,
                vec![(T, revoked()), (T + 1, Event::Signalled(HUP)), (T + 2, Event::Signalled(SIGTERM))],
                vec![vec![], vec![], vec![Action::Exit(143)]],
                Command::Down,
            ),
        ];
        for (case, policy, events, expected, command) in rows {
            let (actions, state) = run(policy, &events);
            assert_eq!(actions, expected, "{case}");
            assert_eq!(state.command, command, "{case}");
        }
    }

    #[test]
    fn every_action_is_logged_with_its_reason_and_no_value() {
        let events = [(T, revision("r1")), (T + 1_000, revision("r2")), (T + 5_000, revision("r2"))];
        let mut state = State::new(Policy::default());
        let mut lines = Vec::new();
        for (now, event) in events {
            let (next, actions) = step(state, &event, now);
            state = next;
            lines.extend(actions.into_iter().filter_map(|action| match action {
                Action::Log(line) => Some(line),
                _ => None,
            }));
        }
        assert_eq!(
            lines,
            [
                "exec: starting CMD with revision r1",
                "exec: revision r2 is served: acting on it in 4000 ms (at most one change per 5 s)",
                "exec: revision r2 is served: restarting CMD (SIGTERM, SIGKILL after 10 s)",
            ]
        );
    }

    #[test]
    fn signal_names_are_read_with_or_without_sig_in_any_case() {
        assert_eq!(Signal::parse("HUP"), Some(HUP));
        assert_eq!(Signal::parse("SIGHUP"), Some(HUP));
        assert_eq!(Signal::parse("sigusr1"), Some(USR1));
        assert_eq!(Signal::parse("KILL"), None);
        assert_eq!(Signal::parse("SIG"), None);
        assert_eq!(Signal::parse(""), None);
    }
}
