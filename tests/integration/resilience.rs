//! The agent under resource exhaustion: it must never stay alive while serving nothing.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{build_artifact, ArtifactOptions, Deployment, PLAINTEXT};

#[test]
fn running_out_of_file_descriptors_ends_the_agent_instead_of_deafening_it() {
    let deployment =
        Deployment::new("fd-exhaustion", &build_artifact(PLAINTEXT, "rev-fd", &ArtifactOptions::default()));
    // A hard limit of 32 descriptors: the agent can raise its soft limit no further.
    let mut command = Command::new("sh");
    command
        .args(["-c", "ulimit -n 32 && exec \"$0\"", env!("CARGO_BIN_EXE_clef-agent")])
        .env_clear()
        .envs(deployment.env(&[]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start the agent under sh");
    let ready = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", deployment.port)).is_err() {
        assert!(Instant::now() < ready, "the agent never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut connections = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("query the agent") {
            break status;
        }
        assert!(Instant::now() < deadline, "the agent is still running with {} connections open", connections.len());
        if let Ok(connection) = TcpStream::connect(("127.0.0.1", deployment.port)) {
            connections.push(connection);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let output = child.wait_with_output().expect("collect the agent's output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("[clef-agent] fatal: the HTTP server stopped accepting connections"), "{stderr}");
    assert!(!stderr.contains("internal error"), "a panic, not a clean exit: {stderr}");
}
