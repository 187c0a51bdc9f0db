//! The daemon's life (SPEC §3, §4, §7): configuration errors before anything else, the start-up
//! lines deployments wait on, start-up failures with the right number of attempts, and a
//! graceful exit on SIGTERM/SIGINT.

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::support::{
    age_key_line, build_artifact, fixture, get, get_unix, read_fixture, ArtifactOptions, Deployment, PLAINTEXT,
    READY_LINE, TOKEN,
};

/// SPEC §7 gives in-flight requests 3 s; the rest is slack for a loaded machine.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);
/// A process that fails on its configuration does so at once.
const QUICK_EXIT: Duration = Duration::from_secs(5);
/// The start-up message's hint for an age key that cannot open the artifact.
const AGE_KEY_HINT: &str =
    "Check the age key (CLEF_AGENT_AGE_KEY / CLEF_AGENT_AGE_KEY_FILE): it must be the identity the artifact was packed for.";

/// Runs the agent with a configuration it must refuse; returns its exit status and stderr.
fn refused_configuration(deployment: &Deployment, extra: &[(&str, &str)]) -> (ExitStatus, String) {
    let agent = deployment.spawn(extra);
    let status = agent.wait_exit(QUICK_EXIT).expect("the agent did not exit on a configuration error");
    assert!(!agent.stdout().contains("listening"), "it claimed to listen: {}", agent.stdout());
    assert!(TcpStream::connect(("127.0.0.1", deployment.port)).is_err(), "something listens on the port");
    (status, agent.stderr())
}

/// Asserts the exact `config error` line and exit status 1.
fn assert_config_error(deployment: &Deployment, extra: &[(&str, &str)], message: &str) {
    let (status, stderr) = refused_configuration(deployment, extra);
    assert_eq!(status.code(), Some(1), "{extra:?}: {stderr}");
    assert_eq!(stderr, format!("[clef-agent] config error: {message}\n"), "{extra:?}");
}

fn deployment(test: &str) -> Deployment {
    Deployment::new(test, &build_artifact(PLAINTEXT, "rev-1", &ArtifactOptions::default()))
}

/// A credential endpoint configured with plain http to a remote host gets one warning line at
/// start-up, naming the variable and the endpoint; loopback endpoints get none.
#[test]
fn warns_once_about_a_credential_endpoint_over_plain_http_to_a_remote_host() {
    let deployment = deployment("cleartext-credential-warning");
    let agent = deployment.start(&[
        ("CLEF_AGENT_GCP_KMS_ENDPOINT", "http://kms.clef-it.example:8080"),
        ("CLEF_AGENT_AZURE_KEYVAULT_ENDPOINT", "http://127.0.0.1:9"),
    ]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    assert_eq!(
        agent.stderr(),
        "[clef-agent] warning: CLEF_AGENT_GCP_KMS_ENDPOINT is plain http to a host that is not loopback \
         (http://kms.clef-it.example:8080/): the GCP access token would cross the network unencrypted; use https://\n"
    );
}

#[test]
fn prints_the_start_up_lines_in_order() {
    let deployment = deployment("startup-lines");
    let agent = deployment.start(&[]);
    let expected = [
        format!("[clef-agent] source: {}", deployment.artifact.display()),
        "[clef-agent] fetching initial artifact...".into(),
        "[clef-agent] mode: cached".into(),
        "[clef-agent] token: [set]".into(),
        "[clef-agent] lifecycle: daemon".into(),
        format!("[clef-agent] Agent server listening at http://127.0.0.1:{}", deployment.port),
        format!("[clef-agent] {READY_LINE}"),
    ];
    let stdout = agent.stdout();
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected, "{stdout}");
    assert_eq!(agent.stderr(), "");
}

#[test]
fn generates_a_token_when_none_is_set_and_never_prints_it() {
    let deployment = deployment("generated-token");
    let agent = deployment.start(&[("CLEF_AGENT_TOKEN", "")]);
    let stdout = agent.stdout();
    assert!(stdout.lines().any(|line| line == "[clef-agent] token: [generated]"), "{stdout}");
    // Exactly the seven start-up lines: the generated token is not among them.
    assert_eq!(stdout.lines().count(), 7, "{stdout}");
    assert_eq!(agent.stderr(), "");
    let test_token = format!("Bearer {TOKEN}");
    get(deployment.port, "/v1/secrets", &[]).assert(401, r#"{"error":"Unauthorized"}"#);
    get(deployment.port, "/v1/secrets", &[("Authorization", &test_token)]).assert(401, r#"{"error":"Unauthorized"}"#);
}

fn assert_graceful_exit(signal: libc::c_int) {
    let deployment = deployment(&format!("signal-{signal}"));
    let agent = deployment.start(&[]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    let signalled = Instant::now();
    agent.signal(signal);
    let status = agent.wait_exit(SHUTDOWN_LIMIT).expect("the agent did not exit after the signal");
    assert_eq!(status.code(), Some(0), "exit status after signal {signal}: {status:?}\n{}", agent.stderr());
    assert!(signalled.elapsed() < Duration::from_secs(4), "shutdown took {:?}", signalled.elapsed());
    let stdout = agent.stdout();
    assert!(
        stdout.ends_with("[clef-agent] Shutting down...\n[clef-agent] Shutdown complete.\n"),
        "stdout does not end with the shutdown lines: {stdout}"
    );
    assert!(TcpStream::connect(("127.0.0.1", deployment.port)).is_err(), "the port is still open after exit");
}

#[test]
fn shuts_down_gracefully_on_sigterm() {
    assert_graceful_exit(libc::SIGTERM);
}

#[test]
fn shuts_down_gracefully_on_sigint() {
    assert_graceful_exit(libc::SIGINT);
}

#[test]
fn a_stalled_client_does_not_hold_up_shutdown() {
    let deployment = deployment("shutdown-stalled");
    let agent = deployment.start(&[]);
    let mut stalled = TcpStream::connect(("127.0.0.1", deployment.port)).unwrap();
    stalled.write_all(b"GET /v1/secrets HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
    let _idle = TcpStream::connect(("127.0.0.1", deployment.port)).unwrap();
    // Let the server take both connections in before the signal.
    assert_eq!(get(deployment.port, "/v1/health", &[]).status, 200);
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(SHUTDOWN_LIMIT).expect("a stalled client kept the agent from exiting");
    assert_eq!(status.code(), Some(0), "{}", agent.stderr());
    assert!(agent.stdout().ends_with("[clef-agent] Shutdown complete.\n"), "{}", agent.stdout());
}

#[test]
fn rejects_a_port_outside_1_to_65535() {
    let deployment = deployment("bad-port");
    for port in ["0", "65536", "http", "-1"] {
        assert_config_error(
            &deployment,
            &[("CLEF_AGENT_PORT", port)],
            &format!("CLEF_AGENT_PORT must be a port number from 1 to 65535, got '{port}'"),
        );
    }
}

#[test]
fn rejects_a_cache_ttl_below_thirty_seconds() {
    let deployment = deployment("bad-ttl");
    for ttl in ["10", "29", "-5", "5m"] {
        assert_config_error(
            &deployment,
            &[("CLEF_AGENT_CACHE_TTL", ttl)],
            &format!(
                "CLEF_AGENT_CACHE_TTL must be 0 (JIT mode) or a whole number of seconds of at least 30, got '{ttl}'"
            ),
        );
    }
}

#[test]
fn requires_an_artifact_source() {
    let deployment = deployment("no-source");
    let (status, stderr) = refused_configuration(&deployment, &[("CLEF_AGENT_SOURCE", "")]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.starts_with("[clef-agent] config error: no artifact source: set CLEF_AGENT_SOURCE"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn rejects_a_verify_key_that_is_neither_ed25519_nor_p256() {
    let deployment = deployment("rsa-verify-key");
    for key in ["keys/rsa.spki.b64", "keys/x25519.spki.b64"] {
        let (status, stderr) =
            refused_configuration(&deployment, &[("CLEF_AGENT_VERIFY_KEY", read_fixture(key).trim())]);
        assert_eq!(status.code(), Some(1), "{key}");
        assert!(
            stderr.starts_with(
                "[clef-agent] config error: CLEF_AGENT_VERIFY_KEY is neither an Ed25519 nor an EC P-256 public key"
            ),
            "{key}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{key}: {stderr}");
    }
}

#[test]
fn rejects_a_verify_key_that_is_not_base64_spki() {
    let deployment = deployment("garbage-verify-key");
    let (status, stderr) = refused_configuration(&deployment, &[("CLEF_AGENT_VERIFY_KEY", "not-a-key!")]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.starts_with("[clef-agent] config error: CLEF_AGENT_VERIFY_KEY "), "{stderr}");
}

#[test]
fn creates_a_token_file_with_mode_0600_and_accepts_its_token() {
    let deployment = deployment("token-file-created");
    let token_file = deployment.dir.join("token");
    let agent = deployment.start(&[("CLEF_AGENT_TOKEN", ""), ("CLEF_AGENT_TOKEN_FILE", token_file.to_str().unwrap())]);
    let token = std::fs::read_to_string(&token_file).expect("the token file was created");
    let token = token.trim();
    assert!(token.len() >= 32, "a short generated token: {} characters", token.len());
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "token file mode {mode:o}");
    assert!(!agent.stdout().contains(token), "the token was printed");
    let bearer = format!("Bearer {token}");
    get(deployment.port, "/v1/secrets", &[("Authorization", &bearer)]).assert(200, PLAINTEXT);
}

#[test]
fn reads_the_token_from_an_existing_token_file() {
    let deployment = deployment("token-file-read");
    let token_file = deployment.dir.join("token");
    std::fs::write(&token_file, "file-token-5c1e77d0a9\n").unwrap();
    // Readable by the agent's user only: a wider file is refused (the token opens every secret).
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let agent = deployment.start(&[("CLEF_AGENT_TOKEN", ""), ("CLEF_AGENT_TOKEN_FILE", token_file.to_str().unwrap())]);
    assert!(!agent.stdout().contains("file-token-5c1e77d0a9"), "{}", agent.stdout());
    get(deployment.port, "/v1/secrets", &[("Authorization", "Bearer file-token-5c1e77d0a9")]).assert(200, PLAINTEXT);
    let test_token = format!("Bearer {TOKEN}");
    get(deployment.port, "/v1/secrets", &[("Authorization", &test_token)]).assert(401, r#"{"error":"Unauthorized"}"#);
}

#[test]
fn serves_on_a_unix_socket_instead_of_tcp() {
    let deployment = deployment("unix-socket");
    let socket = deployment.dir.join("agent.sock");
    let agent = deployment.start(&[("CLEF_AGENT_SOCKET", socket.to_str().unwrap()), ("CLEF_AGENT_PORT", "")]);
    let stdout = agent.stdout();
    assert!(
        stdout.contains(&format!("[clef-agent] Agent server listening at unix:{}\n", socket.display())),
        "{stdout}"
    );
    assert!(!stdout.contains("http://127.0.0.1"), "TCP without an explicit CLEF_AGENT_PORT: {stdout}");
    let mode = std::fs::metadata(&socket).expect("the socket file exists").permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode {mode:o}");
    let bearer = format!("Bearer {TOKEN}");
    get_unix(&socket, "/v1/secrets", &[("Authorization", &bearer)]).assert(200, PLAINTEXT);
    get_unix(&socket, "/v1/secrets", &[]).assert(401, r#"{"error":"Unauthorized"}"#);
    get_unix(&socket, "/v1/ready", &[]).assert(200, r#"{"ready":true}"#);
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(SHUTDOWN_LIMIT).and_then(|status| status.code()), Some(0), "{}", agent.stderr());
    assert!(!socket.exists(), "the socket file was left behind");
}

#[test]
fn serves_on_tcp_too_when_the_port_is_set_explicitly() {
    let deployment = deployment("unix-socket-and-tcp");
    let socket = deployment.dir.join("agent.sock");
    let agent = deployment.start(&[("CLEF_AGENT_SOCKET", socket.to_str().unwrap())]);
    let bearer = format!("Bearer {TOKEN}");
    get_unix(&socket, "/v1/secrets", &[("Authorization", &bearer)]).assert(200, PLAINTEXT);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
}

#[test]
fn refuses_both_an_inline_age_key_and_a_key_file() {
    let deployment = deployment("two-age-keys");
    assert_config_error(
        &deployment,
        &[("CLEF_AGENT_AGE_KEY", &age_key_line("keys/demo.agekey"))],
        "CLEF_AGENT_AGE_KEY and CLEF_AGENT_AGE_KEY_FILE are both set: set only one of them",
    );
}

#[test]
fn reports_an_unreadable_age_key_file_as_a_configuration_error() {
    let deployment = deployment("missing-key-file");
    let missing = deployment.dir.join("no-such.agekey");
    assert_config_error(
        &deployment,
        &[("CLEF_AGENT_AGE_KEY_FILE", missing.to_str().unwrap())],
        &format!("CLEF_AGENT_AGE_KEY_FILE: cannot read {}: No such file or directory (os error 2)", missing.display()),
    );
}

/// Runs a start-up that must fail; returns how long it took and stderr's last line.
fn failed_start(deployment: &Deployment, extra: &[(&str, &str)], limit: Duration) -> (Duration, String) {
    let started = Instant::now();
    let agent = deployment.spawn(extra);
    let status = agent.wait_exit(limit).expect("the agent did not give up on its start-up");
    let took = started.elapsed();
    assert_eq!(status.code(), Some(1), "{}", agent.stderr());
    let stdout = agent.stdout();
    assert!(stdout.contains("[clef-agent] fetching initial artifact...\n"), "{stdout}");
    assert!(!stdout.contains("listening") && !stdout.contains("ready"), "{stdout}");
    let stderr = agent.stderr();
    assert!(stderr.ends_with('\n'), "{stderr}");
    (took, stderr.lines().last().unwrap_or_default().to_string())
}

#[test]
fn gives_up_after_three_attempts_when_the_artifact_is_missing() {
    let deployment = deployment("missing-artifact");
    let missing = deployment.dir.join("not-packed-yet.age.json");
    let missing = missing.to_str().unwrap();
    let (took, last_line) = failed_start(&deployment, &[("CLEF_AGENT_SOURCE", missing)], Duration::from_secs(20));
    assert_eq!(
        last_line,
        format!(
            "[clef-agent] fatal: Failed to fetch artifact from {missing} after 3 attempts: {missing} was not found. \
             The artifact was not found: has it been packed (clef pack) and deployed to this source yet?"
        )
    );
    // Back-offs of 2 s and 4 s between the three attempts.
    assert!(took >= Duration::from_millis(5_900), "gave up after {took:?}, without the 2 s + 4 s back-off");
    assert!(took < Duration::from_secs(10), "gave up only after {took:?}");
}

#[test]
fn fails_at_once_when_the_age_key_is_not_a_recipient() {
    let deployment = deployment("foreign-key");
    let (took, last_line) = failed_start(
        &deployment,
        &[("CLEF_AGENT_AGE_KEY_FILE", fixture("keys/other.agekey").to_str().unwrap())],
        QUICK_EXIT,
    );
    assert_eq!(
        last_line,
        format!(
            "[clef-agent] fatal: Failed to fetch artifact from {} after 1 attempt: artifact rejected (decrypt): \
             decryption failed: the configured age key is not a recipient of this artifact: \
             check CLEF_AGENT_AGE_KEY / CLEF_AGENT_AGE_KEY_FILE. {AGE_KEY_HINT}",
            deployment.artifact.display()
        )
    );
    assert!(took < Duration::from_secs(2), "a configuration problem was retried ({took:?})");
}

#[test]
fn fails_at_once_when_no_age_key_is_configured() {
    let deployment = deployment("no-age-key");
    let (took, last_line) = failed_start(&deployment, &[("CLEF_AGENT_AGE_KEY_FILE", "")], QUICK_EXIT);
    assert_eq!(
        last_line,
        format!(
            "[clef-agent] fatal: Failed to fetch artifact from {} after 1 attempt: artifact rejected (decrypt): \
             decryption failed: the artifact is age-encrypted and no age key is configured: \
             set CLEF_AGENT_AGE_KEY or CLEF_AGENT_AGE_KEY_FILE. {AGE_KEY_HINT}",
            deployment.artifact.display()
        )
    );
    assert!(took < Duration::from_secs(2), "a configuration problem was retried ({took:?})");
}

#[test]
fn exits_when_the_port_is_already_in_use() {
    let deployment = deployment("port-in-use");
    let occupant = std::net::TcpListener::bind(("127.0.0.1", deployment.port)).expect("cannot occupy the port");
    let agent = deployment.spawn(&[]);
    let status = agent.wait_exit(QUICK_EXIT).expect("the agent kept running on a port it cannot have");
    assert_eq!(status.code(), Some(1));
    let stderr = agent.stderr();
    let prefix = format!("[clef-agent] fatal: cannot listen on 127.0.0.1:{}: ", deployment.port);
    assert!(stderr.starts_with(&prefix) && stderr.lines().count() == 1, "{stderr}");
    assert!(!agent.stdout().contains("listening"), "{}", agent.stdout());
    drop(occupant);
}

#[test]
fn reads_the_age_key_from_the_environment_too() {
    let deployment = deployment("inline-key");
    let key = format!("  {}\n", age_key_line("keys/demo.agekey"));
    let agent = deployment.start(&[("CLEF_AGENT_AGE_KEY_FILE", ""), ("CLEF_AGENT_AGE_KEY", &key)]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
}
