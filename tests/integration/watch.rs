//! `exec --watch`, the supervisor: CMD is a small shell script that appends what it sees (its
//! pid, a secret, whether the agent's token reached it, the signals it got) to files in the
//! test's directory, so each test reads what happened to CMD from outside.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{
    build_artifact, wait_until, Agent, ArtifactOptions, Deployment, PLAINTEXT, PLAINTEXT_ROTATED, TOKEN,
};

/// A 30 s TTL polls every 5 s (the floor), and a change may wait up to 5 s for the debounce.
const CHANGE_LIMIT: Duration = Duration::from_secs(20);
const QUICK: Duration = Duration::from_secs(10);

/// Appends a line per start: pid, a secret, and whether the agent's token leaked to CMD; then
/// becomes a long sleep (so SIGTERM ends it).
const RECORD_STARTS: &str =
    r#"echo "$$ $database__DB_PASSWORD ${CLEF_AGENT_TOKEN:-withheld}" >> "$WATCH_DIR/starts"; exec sleep 600"#;

fn deployment(test: &str) -> Deployment {
    Deployment::new(test, &build_artifact(PLAINTEXT, "r1", &ArtifactOptions::default()))
}

fn rotated() -> String {
    build_artifact(PLAINTEXT_ROTATED, "r2", &ArtifactOptions::default())
}

const REVOKED: &str = r#"{"identity":"api-gateway","environment":"production","revokedAt":"2026-11-26T00:00:00Z"}"#;

/// The agent as `exec --watch OPTIONS -- sh -c SCRIPT` (behind `wrapper` when given), with a
/// 30 s TTL and `WATCH_DIR` for the script.
fn watch(deployment: &Deployment, wrapper: &[&str], options: &[&str], script: &str) -> Agent {
    let binary = env!("CARGO_BIN_EXE_clef-agent");
    let mut command = match wrapper.split_first() {
        Some((program, arguments)) => {
            let mut command = Command::new(program);
            command.args(arguments).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    command.args(["exec", "--watch"]).args(options).args(["--", "sh", "-c", script]);
    let dir = deployment.dir.join("");
    let env = deployment.env(&[("CLEF_AGENT_CACHE_TTL", "30"), ("WATCH_DIR", dir.to_str().unwrap())]);
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    Agent::start_command(command, &env)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

fn wait_for_lines(agent: &Agent, path: &Path, count: usize, limit: Duration) -> Vec<String> {
    let found = wait_until(limit, || lines(path).len() >= count);
    assert!(
        found,
        "{} has {:?}, expected {count} lines\n--- stdout ---\n{}--- stderr ---\n{}",
        path.display(),
        lines(path),
        agent.stdout(),
        agent.stderr()
    );
    lines(path)
}

/// The process exists (a zombie does too: so this also says whether it was reaped).
fn exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// The process exists and is not a zombie (one whose parent is gone may wait for another reaper).
fn runs(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    state.is_some_and(|state| state != "Z")
}

fn pid_of(start_line: &str) -> i32 {
    start_line.split(' ').next().and_then(|pid| pid.parse().ok()).expect("a pid first")
}

#[test]
fn a_new_revision_restarts_the_command_with_the_new_environment() {
    let deployment = deployment("watch-restart");
    let starts = deployment.dir.join("starts");
    let agent = watch(&deployment, &[], &[], RECORD_STARTS);
    let first = wait_for_lines(&agent, &starts, 1, QUICK);
    assert!(first[0].ends_with(" db-pass-4a1f withheld"), "{first:?}");

    deployment.publish(&rotated());
    let both = wait_for_lines(&agent, &starts, 2, CHANGE_LIMIT);
    assert!(both[1].ends_with(" db-pass-b702 withheld"), "{both:?}");
    assert!(wait_until(QUICK, || !exists(pid_of(&both[0]))), "the first CMD still exists");
    assert!(exists(pid_of(&both[1])) && agent.is_running());
    let stdout = agent.stdout();
    assert!(stdout.contains("exec: revision r2 is served: restarting CMD (SIGTERM, SIGKILL after 10 s)"), "{stdout}");
    assert!(!stdout.contains("db-pass") && !stdout.contains(TOKEN), "{stdout}");
}

#[test]
fn a_command_that_ignores_sigterm_is_killed_after_the_grace_and_started_again() {
    let deployment = deployment("watch-grace");
    let starts = deployment.dir.join("starts");
    let script =
        r#"trap '' TERM; echo "$$ $database__DB_PASSWORD" >> "$WATCH_DIR/starts"; while :; do sleep 0.1; done"#;
    let agent = watch(&deployment, &[], &["--grace", "1"], script);
    wait_for_lines(&agent, &starts, 1, QUICK);

    deployment.publish(&rotated());
    let both = wait_for_lines(&agent, &starts, 2, CHANGE_LIMIT);
    assert!(both[1].ends_with(" db-pass-b702"), "{both:?}");
    assert!(!exists(pid_of(&both[0])), "the first CMD still exists");
    let stdout = agent.stdout();
    assert!(stdout.contains("exec: CMD did not exit within 1 s of SIGTERM: sending SIGKILL"), "{stdout}");
}

#[test]
fn signal_mode_sends_the_signal_and_keeps_the_command() {
    let deployment = deployment("watch-signal");
    let (starts, hups) = (deployment.dir.join("starts"), deployment.dir.join("hups"));
    let script =
        r#"trap 'echo hup >> "$WATCH_DIR/hups"' HUP; echo "$$" >> "$WATCH_DIR/starts"; while :; do sleep 0.1; done"#;
    let agent = watch(&deployment, &[], &["--on-change", "signal:HUP"], script);
    wait_for_lines(&agent, &starts, 1, QUICK);

    deployment.publish(&rotated());
    wait_for_lines(&agent, &hups, 1, CHANGE_LIMIT);
    assert_eq!(lines(&starts).len(), 1, "CMD was started again");
    assert!(exists(pid_of(&lines(&starts)[0])));
    assert!(agent.stdout().contains("exec: revision r2 is served: sending SIGHUP to CMD"), "{}", agent.stdout());
}

#[test]
fn revocation_stops_the_command_until_a_valid_artifact_is_served() {
    let deployment = deployment("watch-revoke");
    let starts = deployment.dir.join("starts");
    let agent = watch(&deployment, &[], &["--grace", "2"], RECORD_STARTS);
    let first = wait_for_lines(&agent, &starts, 1, QUICK);

    deployment.publish(REVOKED);
    assert!(
        wait_until(CHANGE_LIMIT, || !exists(pid_of(&first[0]))),
        "CMD was not stopped (or not reaped) after the revocation\n{}",
        agent.stdout()
    );
    assert!(agent.stdout().contains("exec: artifact revoked: stopping CMD until a valid artifact is served"));
    assert!(agent.is_running(), "the supervisor must wait, not exit");
    assert_eq!(lines(&starts).len(), 1);

    deployment.publish(&rotated());
    let both = wait_for_lines(&agent, &starts, 2, CHANGE_LIMIT);
    assert!(both[1].ends_with(" db-pass-b702 withheld"), "{both:?}");
}

#[test]
fn forwards_signals_and_exits_with_the_status_the_command_chose() {
    let deployment = deployment("watch-signals");
    let (starts, signals) = (deployment.dir.join("starts"), deployment.dir.join("signals"));
    let script = r#"for name in HUP USR1 USR2 INT; do trap "echo $name >> \"\$WATCH_DIR/signals\"" $name; done
        trap 'echo TERM >> "$WATCH_DIR/signals"; exit 7' TERM
        echo "$$" >> "$WATCH_DIR/starts"; while :; do sleep 0.1; done"#;
    let agent = watch(&deployment, &[], &[], script);
    wait_for_lines(&agent, &starts, 1, QUICK);
    for (count, signal) in [libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2, libc::SIGINT].into_iter().enumerate() {
        agent.signal(signal);
        wait_for_lines(&agent, &signals, count + 1, QUICK);
    }
    assert_eq!(lines(&signals), ["HUP", "USR1", "USR2", "INT"]);
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(QUICK).expect("the supervisor did not exit after SIGTERM");
    assert_eq!(status.code(), Some(7), "{}", agent.stdout());
    assert_eq!(lines(&signals).last().map(String::as_str), Some("TERM"));
}

#[test]
fn the_command_dies_with_a_killed_supervisor() {
    let deployment = deployment("watch-killed");
    let starts = deployment.dir.join("starts");
    let agent = watch(&deployment, &[], &[], RECORD_STARTS);
    let command = pid_of(&wait_for_lines(&agent, &starts, 1, QUICK)[0]);
    assert!(runs(command));
    agent.signal(libc::SIGKILL);
    assert!(wait_until(QUICK, || !runs(command)), "CMD runs on without its supervisor");
}

#[test]
fn exits_with_the_status_of_a_command_that_exits_by_itself() {
    let deployment = deployment("watch-status");
    for (script, status) in [("exit 0", 0), ("exit 3", 3), ("kill -9 $$", 137)] {
        let agent = watch(&deployment, &[], &[], script);
        let exited = agent.wait_exit(QUICK).unwrap_or_else(|| panic!("{script}: still running"));
        assert_eq!(exited.code(), Some(status), "{script}: {}", agent.stdout());
        assert!(agent.stdout().contains(&format!("exec: CMD exited with status {status}: exiting with it")));
    }
}

#[test]
fn as_pid_1_it_reaps_orphans_and_passes_sigterm_on() {
    let deployment = deployment("watch-pid1");
    let (starts, orphan) = (deployment.dir.join("starts"), deployment.dir.join("orphan-done"));
    // The subshell exits at once, so its background child is orphaned to PID 1: the supervisor.
    let script =
        r#"(sh -c 'sleep 0.3; touch "$WATCH_DIR/orphan-done"' &); echo "$$" >> "$WATCH_DIR/starts"; exec sleep 600"#;
    let agent = watch(&deployment, &["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"], &[], script);
    wait_for_lines(&agent, &starts, 1, QUICK);
    let supervisor = children_of(agent.pid()).into_iter().next().expect("unshare has no child");
    let status = std::fs::read_to_string(format!("/proc/{supervisor}/status")).unwrap_or_default();
    let namespace_pid = status.lines().find_map(|line| line.strip_prefix("NSpid:")).unwrap_or_default();
    assert!(
        namespace_pid.trim_end().ends_with("\t1"),
        "the supervisor is not PID 1 of its namespace: {namespace_pid:?}"
    );
    assert!(wait_until(QUICK, || orphan.exists()), "the orphan never ran");
    assert!(
        wait_until(QUICK, || zombie_children_of(supervisor).is_empty()),
        "zombies left under PID 1: {:?}",
        zombie_children_of(supervisor)
    );

    // SAFETY: signal to the supervisor, a child of our child `unshare`, which is still running.
    assert_eq!(unsafe { libc::kill(supervisor, libc::SIGTERM) }, 0);
    let status = agent.wait_exit(QUICK).expect("the supervisor did not exit after SIGTERM");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{}", agent.stdout());
}

/// (pid, state) of every process whose parent is `parent`, from `/proc/<pid>/stat`.
fn processes_under(parent: i32) -> Vec<(i32, char)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses: split after the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        let pid = head.split(' ').next().and_then(|pid| pid.parse().ok());
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|state| state.chars().next());
        let ppid: Option<i32> = fields.next().and_then(|ppid| ppid.parse().ok());
        if let (Some(pid), Some(state), Some(ppid)) = (pid, state, ppid) {
            if ppid == parent {
                found.push((pid, state));
            }
        }
    }
    found
}

fn children_of(parent: i32) -> Vec<i32> {
    processes_under(parent).into_iter().map(|(pid, _)| pid).collect()
}

fn zombie_children_of(parent: i32) -> Vec<i32> {
    processes_under(parent).into_iter().filter(|(_, state)| *state == 'Z').map(|(pid, _)| pid).collect()
}
