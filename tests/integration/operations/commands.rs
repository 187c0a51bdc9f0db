//! `--version`, `--help`, `check`, `exec` and `healthcheck`, run as a user would.

use std::process::{Command, Output};

use crate::support::{build_artifact, fixture, ArtifactOptions, Deployment, PLAINTEXT};

fn run(env: &[(String, String)], arguments: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clef-agent"));
    command.env_clear().args(arguments);
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command.envs(env.iter().map(|(name, value)| (name.as_str(), value.as_str())));
    command.output().expect("run clef-agent")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn deployment(test: &str) -> Deployment {
    Deployment::new(test, &build_artifact(PLAINTEXT, "rev-commands", &ArtifactOptions::default()))
}

#[test]
fn version_help_and_unknown_commands() {
    let version = run(&[], &["--version"]);
    assert_eq!(
        (version.status.code(), text(&version.stdout)),
        (Some(0), format!("clef-agent {}\n", env!("CARGO_PKG_VERSION")))
    );
    let help = text(&run(&[], &["--help"]).stdout);
    for command in ["check", "exec", "healthcheck"] {
        assert!(help.contains(command), "--help does not mention {command}: {help}");
    }
    let unknown = run(&[], &["serve"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown.stderr).contains("unknown command 'serve'"), "{}", text(&unknown.stderr));
}

#[test]
fn check_reports_the_artifact_and_key_names_but_never_values() {
    let deployment = deployment("check-ok");
    let output = run(&deployment.env(&[]), &["check"]);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}{}", text(&output.stderr));
    for line in [
        "identity:    api-gateway",
        "environment: production",
        "revision:    rev-commands",
        "expiresAt:   never",
        "keys:        5",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert!(stdout.contains("  database__DB_PASSWORD\n") && stdout.contains("  payments__café\n"), "{stdout}");
    assert!(!stdout.contains("db-pass-4a1f") && !stdout.contains("sk_live_9d8c7b6a"), "a value leaked:\n{stdout}");
}

#[test]
fn check_fails_with_a_clear_message_for_a_wrong_key() {
    let deployment = deployment("check-wrong-key");
    let wrong_key = fixture("keys/other.agekey").display().to_string();
    let output = run(&deployment.env(&[("CLEF_AGENT_AGE_KEY_FILE", &wrong_key)]), &["check"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.starts_with("[clef-agent] fatal: cannot load the artifact from "), "{stderr}");
    assert!(stderr.contains("the configured age key is not a recipient of this artifact"), "{stderr}");
}

#[test]
fn exec_runs_the_command_with_the_secrets_in_its_environment() {
    let deployment = deployment("exec");
    let mut env = deployment.env(&[]);
    env.push(("database__DB_PASSWORD".into(), "inherited-value".into()));
    let output = run(&env, &["exec", "--", "sh", "-c", r#"printf '%s' "$database__DB_PASSWORD""#]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    // The secret replaced the inherited variable of the same name.
    assert_eq!(text(&output.stdout), "db-pass-4a1f");
    // Names a shell cannot spell still reach the program's environment.
    let env_listing = run(&deployment.env(&[]), &["exec", "env"]);
    assert!(text(&env_listing.stdout).lines().any(|line| line == "payments__STRIPE KEY=sk_live_9d8c7b6a"));
}

#[test]
fn exec_passes_on_the_exit_status_and_needs_a_command() {
    let deployment = deployment("exec-status");
    assert_eq!(run(&deployment.env(&[]), &["exec", "--", "sh", "-c", "exit 7"]).status.code(), Some(7));
    let missing = run(&deployment.env(&[]), &["exec", "--"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("exec needs a command"));
    let not_found = run(&deployment.env(&[]), &["exec", "/nonexistent/program"]);
    assert_eq!(not_found.status.code(), Some(1));
    assert!(text(&not_found.stderr).contains("cannot run /nonexistent/program"));
}

#[test]
fn healthcheck_reports_whether_the_local_agent_is_ready() {
    let deployment = deployment("healthcheck");
    let agent = deployment.start(&[]);
    assert_eq!(run(&deployment.env(&[]), &["healthcheck"]).status.code(), Some(0));
    let nobody = crate::support::free_port().to_string();
    let down = run(&[("CLEF_AGENT_PORT".into(), nobody)], &["healthcheck"]);
    assert_eq!(down.status.code(), Some(1));
    assert!(text(&down.stderr).contains("cannot connect to 127.0.0.1:"), "{}", text(&down.stderr));
    drop(agent);
}

#[test]
fn healthcheck_works_over_the_unix_socket() {
    let deployment = deployment("healthcheck-socket");
    let socket = deployment.dir.join("agent.sock").display().to_string();
    let _agent = deployment.start(&[("CLEF_AGENT_SOCKET", &socket), ("CLEF_AGENT_PORT", "")]);
    assert_eq!(run(&[("CLEF_AGENT_SOCKET".into(), socket)], &["healthcheck"]).status.code(), Some(0));
}
