//! systemd's notify protocol against a real datagram socket bound where `NOTIFY_SOCKET` points:
//! `READY=1` once the agent serves, `WATCHDOG=1` every `WATCHDOG_USEC`/2 — only when the
//! watchdog is meant for the agent's own pid — and `STOPPING=1` on SIGTERM.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use super::artifact;
use crate::support::{Agent, Deployment, PLAINTEXT, READY_LINE};

/// `WATCHDOG_USEC` of these tests: 400 ms, so a ping is due every 200 ms.
const WATCHDOG_USEC: &str = "400000";

/// The notification socket systemd would own, and the datagrams it receives.
struct NotifySocket {
    socket: UnixDatagram,
    path: String,
}

impl NotifySocket {
    fn bind(deployment: &Deployment) -> NotifySocket {
        let path = deployment.dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap_or_else(|error| panic!("bind {}: {error}", path.display()));
        NotifySocket { socket, path: path.display().to_string() }
    }

    /// A socket in the abstract namespace, which `NOTIFY_SOCKET` names with a leading `@`.
    fn bind_abstract(test: &str) -> NotifySocket {
        let name = format!("clef-it-{test}-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).expect("an abstract socket name");
        let socket = UnixDatagram::bind_addr(&address).unwrap_or_else(|error| panic!("bind @{name}: {error}"));
        NotifySocket { socket, path: format!("@{name}") }
    }

    /// The next datagram within `timeout`, with its arrival time.
    fn next(&self, timeout: Duration) -> Option<(String, Instant)> {
        self.socket.set_read_timeout(Some(timeout.max(Duration::from_millis(1)))).unwrap();
        let mut buffer = [0u8; 512];
        let count = self.socket.recv(&mut buffer).ok()?;
        Some((String::from_utf8_lossy(&buffer[..count]).into_owned(), Instant::now()))
    }

    /// Every datagram that arrives within `window`.
    fn collect(&self, window: Duration) -> Vec<(String, Instant)> {
        let deadline = Instant::now() + window;
        let mut received = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left) {
                Some(datagram) => received.push(datagram),
                None => break,
            }
        }
        received
    }

    /// Waits up to `timeout` for `wanted`; returns what arrived before it.
    fn wait_for(&self, wanted: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut before = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left) {
                Some((message, _)) if message == wanted => return before,
                Some((message, _)) => before.push(message),
                None => break,
            }
        }
        panic!("no {wanted:?} within {timeout:?}; received {before:?}");
    }
}

fn messages(datagrams: &[(String, Instant)]) -> Vec<&str> {
    datagrams.iter().map(|(message, _)| message.as_str()).collect()
}

/// Starts an agent that notifies `notify` (without waiting for its ready line).
fn spawn(deployment: &Deployment, notify: &NotifySocket, extra: &[(&str, &str)]) -> Agent {
    let mut env = vec![("NOTIFY_SOCKET", notify.path.as_str())];
    env.extend_from_slice(extra);
    deployment.spawn(&env)
}

#[test]
fn notifies_ready_once_it_serves_and_has_printed_the_ready_line() {
    let deployment = Deployment::new("notify-ready", &artifact(PLAINTEXT, "rev-notify"));
    let notify = NotifySocket::bind(&deployment);
    let agent = spawn(&deployment, &notify, &[]);
    let (first, _) = notify.next(Duration::from_secs(10)).expect("no notification at all");
    assert_eq!(first, "READY=1");
    // READY=1 means "serving": nothing is retried here.
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    agent.get("/v1/ready").assert(200, r#"{"ready":true}"#);
    // The line was written before the datagram was sent; the reader thread may lag a little.
    agent.wait_for_stdout(READY_LINE, Duration::from_secs(1));
}

#[test]
fn pings_the_watchdog_every_half_of_watchdog_usec() {
    let deployment = Deployment::new("notify-watchdog", &artifact(PLAINTEXT, "rev-notify"));
    let notify = NotifySocket::bind(&deployment);
    let _agent = spawn(&deployment, &notify, &[("WATCHDOG_USEC", WATCHDOG_USEC)]);
    let before_ready = notify.wait_for("READY=1", Duration::from_secs(10));
    assert_eq!(before_ready, Vec::<String>::new(), "notifications before READY=1");
    let received = notify.collect(Duration::from_millis(1100));
    assert!(received.iter().all(|(message, _)| message == "WATCHDOG=1"), "{:?}", messages(&received));
    assert!(received.len() >= 3, "expected a WATCHDOG=1 every 200 ms, got {:?}", messages(&received));
    let gaps: Vec<Duration> = received.windows(2).map(|pair| pair[1].1 - pair[0].1).collect();
    // Not a busy loop, and never as late as the 400 ms after which systemd would kill it.
    assert!(gaps.iter().all(|gap| *gap >= Duration::from_millis(100) && *gap < Duration::from_millis(400)), "{gaps:?}");
}

#[test]
fn notifies_stopping_after_sigterm() {
    let deployment = Deployment::new("notify-stopping", &artifact(PLAINTEXT, "rev-notify"));
    let notify = NotifySocket::bind(&deployment);
    let agent = spawn(&deployment, &notify, &[("WATCHDOG_USEC", WATCHDOG_USEC)]);
    notify.wait_for("READY=1", Duration::from_secs(10));
    // Let a few pings through; none of them may be STOPPING=1.
    let running = notify.collect(Duration::from_millis(500));
    assert!(!messages(&running).contains(&"STOPPING=1"), "STOPPING=1 before any signal: {:?}", messages(&running));
    agent.signal(libc::SIGTERM);
    let before_stopping = notify.wait_for("STOPPING=1", Duration::from_secs(3));
    assert!(before_stopping.iter().all(|message| message == "WATCHDOG=1"), "{before_stopping:?}");
    assert_eq!(agent.wait_exit(Duration::from_secs(5)).and_then(|status| status.code()), Some(0));
    assert!(agent.stdout().contains("[clef-agent] Shutdown complete."), "{}", agent.stdout());
}

#[test]
fn does_not_ping_a_watchdog_meant_for_another_process() {
    let deployment = Deployment::new("notify-other-pid", &artifact(PLAINTEXT, "rev-notify"));
    let notify = NotifySocket::bind(&deployment);
    // Our own pid: certainly not the agent's.
    let other_pid = std::process::id().to_string();
    let _agent = spawn(&deployment, &notify, &[("WATCHDOG_USEC", WATCHDOG_USEC), ("WATCHDOG_PID", &other_pid)]);
    notify.wait_for("READY=1", Duration::from_secs(10));
    let received = notify.collect(Duration::from_secs(1));
    assert_eq!(messages(&received), Vec::<&str>::new(), "pinged a watchdog that is not the agent's");
}

#[test]
fn notifies_a_notify_socket_in_the_abstract_namespace() {
    let deployment = Deployment::new("notify-abstract", &artifact(PLAINTEXT, "rev-notify"));
    let notify = NotifySocket::bind_abstract("notify-abstract");
    let agent = spawn(&deployment, &notify, &[]);
    let (first, _) = notify.next(Duration::from_secs(10)).expect("no notification on the abstract socket");
    assert_eq!(first, "READY=1");
    agent.signal(libc::SIGTERM);
    notify.wait_for("STOPPING=1", Duration::from_secs(3));
}
