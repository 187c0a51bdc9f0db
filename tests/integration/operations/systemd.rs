//! systemd's notify protocol against a real datagram socket: READY=1 once serving, WATCHDOG=1
//! at half of WATCHDOG_USEC, STOPPING=1 at shutdown; no pings for another process's watchdog.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::support::{build_artifact, ArtifactOptions, Deployment, PLAINTEXT, READY_LINE};

/// Collects the datagrams that arrive within `window`.
fn datagrams(socket: &UnixDatagram, window: Duration) -> Vec<String> {
    let deadline = Instant::now() + window;
    let mut received = Vec::new();
    let mut buffer = [0u8; 256];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        socket.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        match socket.recv(&mut buffer) {
            Ok(count) => received.push(String::from_utf8_lossy(&buffer[..count]).into_owned()),
            Err(_) => break,
        }
    }
    received
}

fn listener(deployment: &Deployment) -> (UnixDatagram, String) {
    let path = deployment.dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    (socket, path.display().to_string())
}

#[test]
fn notifies_ready_pings_the_watchdog_and_notifies_stopping() {
    let deployment = Deployment::new("notify", &build_artifact(PLAINTEXT, "rev-notify", &ArtifactOptions::default()));
    let (socket, path) = listener(&deployment);
    let agent = deployment.start(&[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "400000")]);
    assert!(agent.stdout().contains(READY_LINE));
    let received = datagrams(&socket, Duration::from_millis(1100));
    assert_eq!(received.first().map(String::as_str), Some("READY=1"), "{received:?}");
    let pings = received.iter().filter(|message| *message == "WATCHDOG=1").count();
    assert!(pings >= 3, "expected a WATCHDOG=1 every 200 ms, got {received:?}");
    agent.signal(libc::SIGTERM);
    let after = datagrams(&socket, Duration::from_secs(3));
    assert!(after.iter().any(|message| message == "STOPPING=1"), "{after:?}");
    assert_eq!(agent.wait_exit(Duration::from_secs(5)).and_then(|status| status.code()), Some(0));
}

#[test]
fn does_not_feed_a_watchdog_meant_for_another_process() {
    let deployment =
        Deployment::new("notify-pid", &build_artifact(PLAINTEXT, "rev-notify", &ArtifactOptions::default()));
    let (socket, path) = listener(&deployment);
    let _agent = deployment.start(&[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", "1")]);
    let received = datagrams(&socket, Duration::from_secs(1));
    assert_eq!(received, ["READY=1"]);
}
