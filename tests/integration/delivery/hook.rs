//! `CLEF_AGENT_ON_CHANGE`: run once per change, with `CLEF_EVENT` and `CLEF_REVISION`, no
//! secret in its environment, and killed when it outlives its 30 s.

use std::time::{Duration, Instant};

use crate::support::{
    build_artifact, sighup_and_wait_for_refresh, wait_until, ArtifactOptions, Deployment, PLAINTEXT, PLAINTEXT_ROTATED,
    TOKEN,
};

const LIMIT: Duration = Duration::from_secs(5);

fn artifact(plaintext: &str, revision: &str) -> String {
    build_artifact(plaintext, revision, &ArtifactOptions::default())
}

/// An executable script in `dir` with `body`.
fn script(path: &std::path::Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn the_hook_runs_once_per_change_with_event_and_revision_and_no_secret() {
    let deployment = Deployment::new("hook-runs", &artifact(PLAINTEXT, "rev-1"));
    let (hook, runs) = (deployment.dir.join("hook.sh"), deployment.dir.join("runs"));
    script(&hook, &format!("{{ echo \"run $CLEF_EVENT $CLEF_REVISION\"; env; }} >> {}", runs.display()));
    let agent = deployment.start(&[
        ("CLEF_AGENT_ON_CHANGE", &format!("{} --flag", hook.display())),
        ("CLEF_AGENT_CACHE_TTL", "300"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-do-not-pass"),
    ]);
    let run_lines = || {
        let text = std::fs::read_to_string(&runs).unwrap_or_default();
        text.lines().filter(|line| line.starts_with("run ")).map(str::to_string).collect::<Vec<_>>()
    };
    assert!(wait_until(LIMIT, || run_lines().len() == 1), "{:?}", run_lines());
    sighup_and_wait_for_refresh(&agent, LIMIT); // unchanged: no run
    deployment.publish(&artifact(PLAINTEXT_ROTATED, "rev-2"));
    sighup_and_wait_for_refresh(&agent, LIMIT);
    let mut revoked: serde_json::Value = serde_json::from_str(&artifact(PLAINTEXT_ROTATED, "rev-2")).unwrap();
    revoked["revokedAt"] = "2026-11-25T08:00:00.000Z".into();
    deployment.publish(&revoked.to_string());
    agent.signal(libc::SIGHUP);
    assert!(wait_until(LIMIT, || run_lines().len() == 3), "{:?}", run_lines());
    assert_eq!(run_lines(), ["run refreshed rev-1", "run refreshed rev-2", "run revoked rev-2"]);

    let seen = std::fs::read_to_string(&runs).unwrap();
    for secret in [TOKEN, "AGE-SECRET-KEY", "aws-secret-do-not-pass", "db-pass-4a1f", "db-pass-b702", "CLEF_AGENT_"] {
        assert!(!seen.contains(secret), "the hook saw {secret}:\n{seen}");
    }
    agent.wait_for_stdout(
        &format!("on-change: {} (event revoked, revision rev-2) exited with status 0", hook.display()),
        LIMIT,
    );
}

#[test]
fn a_hook_that_outlives_30_seconds_is_killed() {
    let deployment = Deployment::new("hook-timeout", &artifact(PLAINTEXT, "rev-1"));
    let hook = deployment.dir.join("hook.sh");
    script(&hook, "exec sleep 600");
    let started = Instant::now();
    let agent = deployment.start(&[("CLEF_AGENT_ON_CHANGE", hook.to_str().unwrap())]);
    agent.wait_for_stderr(
        "(event refreshed, revision rev-1) timed out after 30s and was killed",
        Duration::from_secs(45),
    );
    assert!(started.elapsed() >= Duration::from_secs(29), "killed before its time");
    assert!(agent.is_running());
}
