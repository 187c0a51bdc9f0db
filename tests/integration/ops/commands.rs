//! The one-shot commands run as a user or a container runtime runs them: `--version`,
//! `--help`, `check`, `exec` and `healthcheck`, with their exit statuses, and no secret value
//! in anything `check` prints.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use super::{artifact, assert_absent, flat_names, secret_values};
use crate::support::loopback::{Answer, Server};
use crate::support::{age_key_line, executable_for_any_user, fixture, free_port, Deployment, TempDir, PLAINTEXT};

const REVISION: &str = "rev-commands";

/// Runs `clef-agent <arguments>` with only `PATH` and `env` in its environment.
fn run(env: &[(String, String)], arguments: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clef-agent"));
    command.env_clear().args(arguments);
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command.envs(env.iter().map(|(name, value)| (name, value)));
    command.output().expect("cannot run the clef-agent executable")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn deployment(test: &str) -> Deployment {
    Deployment::new(test, &artifact(PLAINTEXT, REVISION))
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
}

#[test]
fn version_prints_the_crate_version() {
    let output = run(&[], &["--version"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), format!("clef-agent {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn help_mentions_check_exec_and_healthcheck() {
    let output = run(&[], &["--help"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let help = stdout(&output);
    for command in ["check", "exec", "healthcheck"] {
        assert!(help.contains(command), "--help does not mention {command}:\n{help}");
    }
}

#[test]
fn an_unknown_command_exits_2() {
    let output = run(&[], &["frobnicate"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("unknown command"), "{}", stderr(&output));
    assert!(stdout(&output).is_empty(), "{}", stdout(&output));
}

#[test]
fn check_prints_the_artifact_summary_and_every_key_name_but_no_value() {
    let deployment = deployment("check-ok");
    let output = run(&deployment.env(&[]), &["check"]);
    let printed = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{printed}{}", stderr(&output));
    let lines: Vec<&str> = printed.lines().map(str::trim).collect();
    for (label, value) in [
        ("identity:", "api-gateway"),
        ("environment:", "production"),
        ("revision:", REVISION),
        ("packedAt:", "2026-11-24T12:00:00.000Z"),
        ("expiresAt:", "never"),
        ("keys:", "5"),
    ] {
        let found = lines.iter().find_map(|line| line.strip_prefix(label)).map(str::trim);
        assert_eq!(found, Some(value), "{label} in:\n{printed}");
    }
    for name in flat_names(PLAINTEXT) {
        assert!(lines.contains(&name.as_str()), "no line {name:?} in:\n{printed}");
    }
    assert_absent(&printed, &secret_values(PLAINTEXT), "check's stdout");
    assert_absent(&stderr(&output), &secret_values(PLAINTEXT), "check's stderr");
}

#[test]
fn check_with_a_wrong_key_exits_1_naming_the_source() {
    let deployment = deployment("check-wrong-key");
    let wrong_key = fixture("keys/other.agekey").display().to_string();
    let output = run(&deployment.env(&[("CLEF_AGENT_AGE_KEY_FILE", &wrong_key)]), &["check"]);
    assert_eq!(output.status.code(), Some(1));
    let expected = format!("[clef-agent] fatal: cannot load the artifact from {}", deployment.artifact.display());
    assert!(stderr(&output).starts_with(&expected), "{}", stderr(&output));
    assert!(stdout(&output).is_empty(), "{}", stdout(&output));
}

/// A typo leaves the token unset, so the agent makes one up and every call gets 401: the
/// start-up warning names the typo and the real name, and never the value.
#[test]
fn a_misspelt_variable_is_warned_about_once_without_its_value_by_the_agent_check_and_exec() {
    const VALUE: &str = "typo-value-5c2e9f7a1b";
    const WARNING: &str = "[clef-agent] warning: CLEF_AGENT_TOKN is not a variable clef-agent reads, so it is ignored: did you mean CLEF_AGENT_TOKEN?\n";
    let deployment = deployment("typo-warning");
    let env = deployment.env(&[("CLEF_AGENT_TOKEN", ""), ("CLEF_AGENT_TOKN", VALUE)]);

    let pairs: Vec<(&str, &str)> = env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    let agent = crate::support::Agent::start_ready(&pairs);
    assert_eq!(agent.stderr().matches(WARNING).count(), 1, "{}", agent.stderr());
    assert_eq!(crate::support::get(deployment.port, "/v1/health", &[]).status, 200);
    assert!(!agent.stderr().contains(VALUE) && !agent.stdout().contains(VALUE));
    drop(agent);

    for arguments in [&["check"][..], &["exec", "--", "true"][..]] {
        let output = run(&env, arguments);
        assert_eq!(output.status.code(), Some(0), "{arguments:?}: {}", stderr(&output));
        assert_eq!(stderr(&output).matches(WARNING).count(), 1, "{arguments:?}: {}", stderr(&output));
        assert!(!stderr(&output).contains(VALUE) && !stdout(&output).contains(VALUE));
    }
}

#[test]
fn exec_gives_the_command_every_secret_in_its_environment() {
    let deployment = deployment("exec-env");
    let output = run(&deployment.env(&[]), &["exec", "--", "sh", "-c", r#"printf %s "$database__DB_PASSWORD""#]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "db-pass-4a1f");
}

#[test]
fn exec_gives_the_command_a_flat_plaintext_as_key_equals_value() {
    let flat = crate::support::read_fixture("artifacts/flat/legacy-age-cli.json");
    let deployment = Deployment::new("exec-flat", &flat);
    let script = r#"printf '%s|%s' "$database__DB_PASSWORD" "$zeta__Z_KEY""#;
    let output = run(&deployment.env(&[]), &["exec", "--", "sh", "-c", script]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "s3cr3t-fixture-password-4d2e|zeta-value-7f3a");
}

#[test]
fn exec_overrides_an_inherited_variable_of_the_same_name() {
    let deployment = deployment("exec-override");
    let mut env = deployment.env(&[]);
    env.push(("database__DB_PASSWORD".into(), "inherited-value".into()));
    env.push(("UNRELATED_VARIABLE".into(), "kept".into()));
    let script = r#"printf '%s|%s' "$database__DB_PASSWORD" "$UNRELATED_VARIABLE""#;
    let output = run(&env, &["exec", "--", "sh", "-c", script]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "db-pass-4a1f|kept");
}

#[test]
fn exec_exits_with_the_status_of_the_command() {
    let deployment = deployment("exec-status");
    for status in [0, 7, 42] {
        let output = run(&deployment.env(&[]), &["exec", "--", "sh", "-c", &format!("exit {status}")]);
        assert_eq!(output.status.code(), Some(status), "{}", stderr(&output));
    }
}

#[test]
fn exec_without_a_command_exits_2() {
    let deployment = deployment("exec-nothing");
    for arguments in [&["exec"][..], &["exec", "--"][..]] {
        let output = run(&deployment.env(&[]), arguments);
        assert_eq!(output.status.code(), Some(2), "{arguments:?}: {}", stderr(&output));
        assert!(stderr(&output).contains("exec needs a command"), "{}", stderr(&output));
    }
}

#[test]
fn healthcheck_exits_0_against_a_running_agent_on_the_same_port() {
    let deployment = deployment("health-tcp");
    let _agent = deployment.start(&[]);
    let output = run(&env(&[("CLEF_AGENT_PORT", &deployment.port.to_string())]), &["healthcheck"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn healthcheck_exits_1_when_nothing_listens_on_the_port() {
    let output = run(&env(&[("CLEF_AGENT_PORT", &free_port().to_string())]), &["healthcheck"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).starts_with("[clef-agent] fatal: "), "{}", stderr(&output));
}

#[test]
fn healthcheck_exits_1_when_the_agent_answers_but_is_not_ready() {
    let deployment = deployment("health-revoked");
    let agent = deployment.start(&[]);
    deployment
        .publish(r#"{"identity":"api-gateway","environment":"production","revokedAt":"2026-11-20T10:00:00.000Z"}"#);
    agent.signal(libc::SIGHUP);
    agent.wait_for_stderr("poll error: Artifact revoked", Duration::from_secs(5));
    assert_eq!(agent.get("/v1/ready").status, 503);
    let output = run(&env(&[("CLEF_AGENT_PORT", &deployment.port.to_string())]), &["healthcheck"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
}

#[test]
fn healthcheck_exits_0_against_the_agent_s_unix_socket() {
    let deployment = deployment("health-sock");
    let socket = deployment.dir.join("agent.sock").display().to_string();
    let _agent = deployment.start(&[("CLEF_AGENT_SOCKET", &socket), ("CLEF_AGENT_PORT", "")]);
    let output = run(&env(&[("CLEF_AGENT_SOCKET", &socket)]), &["healthcheck"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

/// Runs `clef-agent <arguments>` on an HTTP source that holds its answer, and while the command
/// waits for it — before any plaintext, so from then on — checks from outside that the process
/// is hardened like the daemon: not dumpable and with a core-file limit of 0.
///
/// A non-dumpable process's `/proc/<pid>` files belong to root. So the command runs as
/// `nobody` when the tests run as root (as any other user, its files would be its own), and it
/// starts with the highest core-file limit allowed, which the hardening must lower to 0.
fn assert_hardened_while_fetching(arguments: &[&str]) {
    let served = artifact(PLAINTEXT, REVISION);
    let (release, held) = mpsc::channel::<()>();
    let held = Mutex::new(held);
    let server = Server::start(move |_| {
        let _ = held.lock().unwrap().recv_timeout(Duration::from_secs(30));
        Answer { status: 200, headers: Vec::new(), body: served.clone().into_bytes() }
    });
    // nobody may not reach target/ (a checkout in /root): it runs a copy in a scratch directory.
    let scratch = TempDir::new("hardened-command");
    let mut command = Command::new(executable_for_any_user(&scratch));
    command.env_clear().args(arguments).stdout(Stdio::null()).stderr(Stdio::piped());
    command.env("CLEF_AGENT_SOURCE", server.url("/artifact.json"));
    command.env("CLEF_AGENT_AGE_KEY", age_key_line("keys/demo.agekey"));
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        command.uid(65534).gid(65534);
    }
    // SAFETY: getrlimit/setrlimit are async-signal-safe and change only the child's limit.
    unsafe {
        command.pre_exec(|| {
            let mut core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::getrlimit(libc::RLIMIT_CORE, &mut core);
            core.rlim_cur = core.rlim_max;
            libc::setrlimit(libc::RLIMIT_CORE, &core);
            Ok(())
        });
    }
    let child = command.spawn().expect("cannot run the clef-agent executable");
    let fetching = server.wait_for_requests("GET", "/artifact.json", 1, Duration::from_secs(10));
    let pid = child.id();
    let owner = std::fs::metadata(format!("/proc/{pid}/status")).map(|metadata| metadata.uid());
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let _ = release.send(());
    let output = child.wait_with_output().expect("cannot wait for the command");
    assert!(fetching, "{arguments:?} never fetched the artifact");
    assert_eq!(owner.ok(), Some(0), "{arguments:?} is dumpable while it works");
    let core_limit = limits.lines().find(|line| line.starts_with("Max core file size")).unwrap_or_default();
    assert_eq!(core_limit.split_whitespace().nth(4), Some("0"), "{arguments:?} may write a core file: {core_limit}");
    assert_eq!(output.status.code(), Some(0), "{arguments:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn check_is_not_dumpable_and_writes_no_core_file_while_it_works() {
    assert_hardened_while_fetching(&["check"]);
}

#[test]
fn exec_is_not_dumpable_and_writes_no_core_file_while_it_works() {
    assert_hardened_while_fetching(&["exec", "--", "true"]);
}
