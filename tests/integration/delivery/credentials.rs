//! `CLEF_AGENT_CREDENTIAL_SOCKET`: a client that does exactly what systemd does for
//! `LoadCredential=<id>:<socket>` — bind its end to the abstract name
//! `\0<random>/unit/<unit>/<id>`, connect, read to end of file.

use std::io::Read;
use std::os::fd::FromRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::support::{build_artifact, ArtifactOptions, Deployment, PLAINTEXT};

/// Connects to `socket` from the abstract name systemd uses for `unit` asking for `id`, and
/// reads what the agent writes until it closes.
fn load_credential(socket: &Path, unit: &str, id: &str) -> Vec<u8> {
    let name = format!("\0{:016x}/unit/{unit}/{id}", rand_u64());
    let stream = connect_from(socket, Some(name.as_bytes()));
    read_all(stream)
}

fn read_all(mut stream: UnixStream) -> Vec<u8> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut value = Vec::new();
    stream.read_to_end(&mut value).expect("the agent neither answered nor closed");
    value
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}

/// A stream socket bound to `abstract_name` (leading NUL included), when given, connected to
/// `socket`.
fn connect_from(socket: &Path, abstract_name: Option<&[u8]>) -> UnixStream {
    // SAFETY: plain socket calls on a descriptor this function owns; the address structs are
    // sized as the kernel expects.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = UnixStream::from_raw_fd(fd);
        if let Some(name) = abstract_name {
            let (address, length) = sockaddr(name);
            let bound = libc::bind(fd, (&address as *const libc::sockaddr_un).cast(), length);
            assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
        }
        let path = socket.to_str().unwrap().as_bytes();
        let (address, length) = sockaddr(path);
        let connected = libc::connect(fd, (&address as *const libc::sockaddr_un).cast(), length);
        assert_eq!(connected, 0, "connect: {}", std::io::Error::last_os_error());
        stream
    }
}

fn sockaddr(path: &[u8]) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (slot, byte) in address.sun_path.iter_mut().zip(path) {
        *slot = *byte as libc::c_char;
    }
    // An abstract name's length counts exactly its bytes; a path gets its terminating NUL.
    let extra = if path.first() == Some(&0) { 0 } else { 1 };
    let length = std::mem::size_of::<libc::sa_family_t>() + path.len() + extra;
    (address, length as libc::socklen_t)
}

#[test]
fn a_unit_loads_its_credential_from_the_socket_as_systemd_does() {
    let deployment =
        Deployment::new("credential-load", &build_artifact(PLAINTEXT, "rev-1", &ArtifactOptions::default()));
    let socket = deployment.dir.join("credentials.sock");
    let agent = deployment.start(&[("CLEF_AGENT_CREDENTIAL_SOCKET", socket.to_str().unwrap())]);
    let metadata = std::fs::symlink_metadata(&socket).unwrap();
    assert!(metadata.file_type().is_socket());
    assert_eq!(metadata.permissions().mode() & 0o777, 0o600, "anyone who connects may claim any unit");

    assert_eq!(load_credential(&socket, "app.service", "database__DB_PASSWORD"), b"db-pass-4a1f");
    assert_eq!(load_credential(&socket, "app.service", "payments__QUOTED"), b"say \"hi\"\\ now\n\x1f/ok");
    agent.wait_for_stdout("credential: gave database__DB_PASSWORD to app.service\n", Duration::from_secs(2));
    assert!(!agent.stdout().contains("db-pass-4a1f") && !agent.stderr().contains("db-pass-4a1f"));

    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(10)).expect("the agent did not stop");
    assert!(!socket.exists(), "the socket file outlived the agent");
}

#[test]
fn an_unknown_id_a_unit_not_allowed_and_a_nameless_client_get_nothing() {
    let deployment =
        Deployment::new("credential-refuse", &build_artifact(PLAINTEXT, "rev-1", &ArtifactOptions::default()));
    let socket = deployment.dir.join("credentials.sock");
    let agent = deployment.start(&[
        ("CLEF_AGENT_CREDENTIAL_SOCKET", socket.to_str().unwrap()),
        ("CLEF_AGENT_CREDENTIAL_UNITS", "app.service,worker-*.service"),
    ]);
    assert_eq!(load_credential(&socket, "worker-7.service", "database__DB_PASSWORD"), b"db-pass-4a1f");
    assert_eq!(load_credential(&socket, "other.service", "database__DB_PASSWORD"), b"");
    agent.wait_for_stderr(
        "credential: refused database__DB_PASSWORD to other.service: the unit is not in CLEF_AGENT_CREDENTIAL_UNITS\n",
        Duration::from_secs(2),
    );
    assert_eq!(load_credential(&socket, "app.service", "database__NOPE"), b"");
    agent.wait_for_stderr("credential: refused database__NOPE to app.service: no such key", Duration::from_secs(2));
    assert_eq!(read_all(connect_from(&socket, None)), b"", "a client without systemd's name got an answer");
    agent
        .wait_for_stderr("credential: refused a connection whose socket name is not systemd's", Duration::from_secs(2));
    assert!(!agent.stderr().contains("db-pass-4a1f"));
}

/// A local client that asks for a large value and never reads holds one of 16 connections
/// for at most 5 s: the 17th is closed unanswered, and the socket serves again after that.
#[test]
fn clients_that_never_read_hold_a_bounded_number_of_connections_for_a_bounded_time() {
    let big = "x".repeat(1 << 20); // more than a Unix socket's send buffer
    let plaintext = format!(r#"{{"big":{{"BLOB":"{big}"}},"db":{{"P":"small-value"}}}}"#);
    let deployment =
        Deployment::new("credential-hold", &build_artifact(&plaintext, "rev-1", &ArtifactOptions::default()));
    let socket = deployment.dir.join("credentials.sock");
    let agent = deployment.start(&[("CLEF_AGENT_CREDENTIAL_SOCKET", socket.to_str().unwrap())]);
    let holders: Vec<UnixStream> = (0..16)
        .map(|n| {
            let name = format!("\0{n:016x}/unit/hold.service/big__BLOB");
            connect_from(&socket, Some(name.as_bytes()))
        })
        .collect();
    assert_eq!(load_credential(&socket, "app.service", "db__P"), b"", "a 17th connection was served");
    agent.wait_for_stderr("credential: 16 connections are open already", Duration::from_secs(2));
    assert!(
        crate::support::wait_until(Duration::from_secs(10), || {
            agent.stderr().matches("credential: could not give big__BLOB to hold.service").count() == 16
        }),
        "stalled writes were not abandoned: {}",
        agent.stderr()
    );
    assert_eq!(load_credential(&socket, "app.service", "db__P"), b"small-value");
    drop(holders);
}
