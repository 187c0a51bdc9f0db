//! The Unix socket listener (`CLEF_AGENT_SOCKET`) and the token file (`CLEF_AGENT_TOKEN_FILE`),
//! the two ways an application on a shared volume reaches the agent without a TCP port or a
//! token in its environment. Checked on disk (modes, contents, clean-up), on the wire, and in
//! the logs, which must say where the token came from and never what it is.

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use super::artifact;
use crate::support::{get, get_unix, Agent, Deployment, PLAINTEXT, TOKEN};

const STOP: Duration = Duration::from_secs(5);

fn deployment(test: &str) -> Deployment {
    Deployment::new(test, &artifact(PLAINTEXT, "rev-socket"))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|error| panic!("stat {}: {error}", path.display())).permissions().mode()
        & 0o777
}

/// SIGTERM and exit status 0; the output is complete afterwards.
fn stop(agent: &Agent) {
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(STOP).expect("the agent did not exit after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", agent.stderr());
}

/// The TCP ports `pid` listens on, from its socket descriptors and `/proc/net/tcp{,6}`; `None`
/// when its descriptors cannot be read (the agent is not dumpable, so only root can).
fn tcp_listening_ports(pid: i32) -> Option<Vec<u16>> {
    let descriptors = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let inodes: HashSet<String> = descriptors
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9)) else {
                continue;
            };
            if *state == "0A" && inodes.contains(*inode) {
                let port = local.rsplit(':').next().and_then(|hex| u16::from_str_radix(hex, 16).ok());
                ports.extend(port);
            }
        }
    }
    Some(ports)
}

#[test]
fn serves_secrets_over_the_unix_socket_to_host_localhost_with_the_bearer_token() {
    let deployment = deployment("sock-serve");
    let socket = deployment.dir.join("agent.sock");
    let socket_text = socket.display().to_string();
    let _agent = deployment.start(&[("CLEF_AGENT_SOCKET", &socket_text), ("CLEF_AGENT_PORT", "")]);
    let authorized = [("Host", "localhost"), ("Authorization", &bearer(TOKEN))];
    get_unix(&socket, "/v1/secrets", &authorized).assert(200, PLAINTEXT);
    let unauthorized = get_unix(&socket, "/v1/secrets", &[("Host", "localhost")]);
    assert_eq!(unauthorized.status, 401, "{unauthorized:?}");
    let wrong_token = get_unix(&socket, "/v1/secrets", &[("Host", "localhost"), ("Authorization", "Bearer nope")]);
    assert_eq!(wrong_token.status, 401, "{wrong_token:?}");
}

#[test]
fn creates_the_socket_with_mode_0660() {
    let deployment = deployment("sock-mode");
    let socket = deployment.dir.join("agent.sock");
    let socket_text = socket.display().to_string();
    let _agent = deployment.start(&[("CLEF_AGENT_SOCKET", &socket_text), ("CLEF_AGENT_PORT", "")]);
    let metadata = std::fs::symlink_metadata(&socket).expect("no socket file");
    assert!(metadata.file_type().is_socket(), "{} is not a socket", socket.display());
    assert_eq!(mode(&socket), 0o660, "mode {:o}", mode(&socket));
}

#[test]
fn listens_only_on_the_socket_when_clef_agent_port_is_unset() {
    let deployment = deployment("sock-only");
    let socket = deployment.dir.join("agent.sock");
    let socket_text = socket.display().to_string();
    let agent = deployment.start(&[("CLEF_AGENT_SOCKET", &socket_text), ("CLEF_AGENT_PORT", "")]);
    let stdout = agent.stdout();
    let listening: Vec<&str> = stdout.lines().filter(|line| line.contains("Agent server listening at ")).collect();
    assert_eq!(listening, [format!("[clef-agent] Agent server listening at unix:{socket_text}")], "{stdout}");
    match tcp_listening_ports(agent.pid()) {
        Some(ports) => assert_eq!(ports, Vec::<u16>::new(), "the agent listens on TCP too"),
        None => eprintln!("cannot read /proc/{}/fd: relying on the log lines only", agent.pid()),
    }
}

#[test]
fn listens_on_the_socket_and_on_tcp_when_clef_agent_port_is_set_too() {
    let deployment = deployment("sock-both");
    let socket = deployment.dir.join("agent.sock");
    let socket_text = socket.display().to_string();
    let agent = deployment.start(&[("CLEF_AGENT_SOCKET", &socket_text)]);
    let stdout = agent.stdout();
    assert!(stdout.contains(&format!("[clef-agent] Agent server listening at unix:{socket_text}\n")), "{stdout}");
    let tcp_line = format!("[clef-agent] Agent server listening at http://127.0.0.1:{}\n", deployment.port);
    assert!(stdout.contains(&tcp_line), "{stdout}");
    get_unix(&socket, "/v1/secrets", &[("Authorization", &bearer(TOKEN))]).assert(200, PLAINTEXT);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
}

#[test]
fn replaces_a_stale_socket_file() {
    let deployment = deployment("sock-stale");
    let socket = deployment.dir.join("agent.sock");
    // A socket file whose listener is gone, as a crashed agent leaves it.
    drop(UnixListener::bind(&socket).expect("cannot bind the stale socket"));
    assert!(socket.exists());
    let socket_text = socket.display().to_string();
    let _agent = deployment.start(&[("CLEF_AGENT_SOCKET", &socket_text), ("CLEF_AGENT_PORT", "")]);
    get_unix(&socket, "/v1/secrets", &[("Authorization", &bearer(TOKEN))]).assert(200, PLAINTEXT);
}

#[test]
fn refuses_a_socket_another_process_is_listening_on() {
    let deployment = deployment("sock-live");
    let socket = deployment.dir.join("agent.sock");
    let _live = UnixListener::bind(&socket).expect("cannot bind the live socket");
    let socket_text = socket.display().to_string();
    let agent = deployment.spawn(&[("CLEF_AGENT_SOCKET", &socket_text), ("CLEF_AGENT_PORT", "")]);
    let status = agent.wait_exit(STOP).expect("the agent kept running");
    assert_eq!(status.code(), Some(1));
    let expected =
        format!("[clef-agent] fatal: cannot listen on unix:{socket_text}: another process is listening on it\n");
    assert_eq!(agent.stderr(), expected);
    assert!(socket.exists(), "the live socket was removed");
}

#[test]
fn removes_the_socket_file_at_shutdown() {
    let deployment = deployment("sock-cleanup");
    let socket = deployment.dir.join("agent.sock");
    let socket_text = socket.display().to_string();
    let agent = deployment.start(&[("CLEF_AGENT_SOCKET", &socket_text), ("CLEF_AGENT_PORT", "")]);
    assert!(socket.exists());
    stop(&agent);
    assert!(!socket.exists(), "the socket file outlived the agent");
}

#[test]
fn generates_a_token_file_with_mode_0600_when_none_exists_and_accepts_its_token() {
    let deployment = deployment("token-new");
    let token_file = deployment.dir.join("token");
    let token_file_text = token_file.display().to_string();
    let agent = deployment.start(&[("CLEF_AGENT_TOKEN", ""), ("CLEF_AGENT_TOKEN_FILE", &token_file_text)]);
    assert_eq!(mode(&token_file), 0o600, "mode {:o}", mode(&token_file));
    let contents = std::fs::read_to_string(&token_file).expect("cannot read the token file");
    let token = contents.strip_suffix('\n').unwrap_or_else(|| panic!("no final newline: {contents:?}"));
    assert!(token.len() == 64 && token.bytes().all(|byte| byte.is_ascii_hexdigit()), "not 64 hex digits: {token:?}");
    let line = format!("[clef-agent] token: [generated, written to {token_file_text}]\n");
    assert!(agent.stdout().contains(&line), "{}", agent.stdout());
    get(deployment.port, "/v1/secrets", &[("Authorization", &bearer(token))]).assert(200, PLAINTEXT);
    assert_eq!(get(deployment.port, "/v1/secrets", &[("Authorization", &bearer(TOKEN))]).status, 401);
    stop(&agent);
    assert!(!agent.stdout().contains(token) && !agent.stderr().contains(token), "the token was logged");
    let leftovers: Vec<_> =
        std::fs::read_dir(token_file.parent().unwrap()).unwrap().flatten().map(|entry| entry.file_name()).collect();
    assert!(
        leftovers.iter().all(|name| !name.to_string_lossy().ends_with(".tmp")),
        "a temporary file is left: {leftovers:?}"
    );
}

#[test]
fn uses_the_token_of_an_existing_token_file() {
    let deployment = deployment("token-existing");
    let token_file = deployment.dir.join("token");
    let token = "file-token-3c9e1a7f5b2d4e6a";
    std::fs::write(&token_file, format!("{token}\n")).expect("cannot write the token file");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let token_file_text = token_file.display().to_string();
    let agent = deployment.start(&[("CLEF_AGENT_TOKEN", ""), ("CLEF_AGENT_TOKEN_FILE", &token_file_text)]);
    let line = format!("[clef-agent] token: [read from {token_file_text}]\n");
    assert!(agent.stdout().contains(&line), "{}", agent.stdout());
    get(deployment.port, "/v1/secrets", &[("Authorization", &bearer(token))]).assert(200, PLAINTEXT);
    assert_eq!(get(deployment.port, "/v1/secrets", &[("Authorization", &bearer(TOKEN))]).status, 401);
    stop(&agent);
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), format!("{token}\n"), "the token file was rewritten");
    assert!(!agent.stdout().contains(token) && !agent.stderr().contains(token), "the token was logged");
}

#[test]
fn refuses_clef_agent_token_together_with_clef_agent_token_file() {
    let deployment = deployment("token-both");
    let token_file = deployment.dir.join("token");
    let token_file_text = token_file.display().to_string();
    let agent = deployment.spawn(&[("CLEF_AGENT_TOKEN_FILE", &token_file_text)]);
    let status = agent.wait_exit(STOP).expect("the agent kept running");
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        agent.stderr(),
        "[clef-agent] config error: CLEF_AGENT_TOKEN and CLEF_AGENT_TOKEN_FILE are both set: set only one of them\n"
    );
    assert!(!agent.stdout().contains(TOKEN), "the token was logged");
    assert!(!token_file.exists(), "a token file was created anyway");
}
