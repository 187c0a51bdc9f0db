//! Hostile clients (SPEC §6, §8): connections that never finish their request, and requests
//! tiny_http or the routes must refuse. The agent answers others at once and never panics. The
//! limits of SPEC §11 (bodies, head sizes and times, the connection cap) are in `limits.rs`.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::{proc_status, read_answer, Answer};
use crate::support::{build_artifact, get, wait_until, Agent, ArtifactOptions, Deployment, PLAINTEXT, TOKEN};

/// An agent serving [`PLAINTEXT`] as revision `rev-1`.
pub(super) fn serving(test: &str) -> (Deployment, Agent) {
    let deployment = Deployment::new(test, &build_artifact(PLAINTEXT, "rev-1", &ArtifactOptions::default()));
    let agent = deployment.start(&[]);
    (deployment, agent)
}

/// What a connection brought: the answers read off it, then EOF or a reset.
pub(super) fn exchange(port: u16, request: &[u8]) -> Vec<Answer> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|error| panic!("connect :{port}: {error}"));
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(request).unwrap_or_else(|error| panic!("cannot send {:?}: {error}", shown(request)));
    let mut reader = BufReader::new(stream);
    let mut answers = Vec::new();
    loop {
        match read_answer(&mut reader) {
            Ok(Some(answer)) => answers.push(answer),
            Ok(None) => return answers,
            Err(error) if error.kind() == ErrorKind::ConnectionReset => return answers,
            Err(error) => panic!(
                "after {} answers to {:?}, neither another answer nor a closed connection: {error}",
                answers.len(),
                shown(request)
            ),
        }
    }
}

fn shown(request: &[u8]) -> String {
    let text = String::from_utf8_lossy(request);
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], request.len()),
        None => text.into_owned(),
    }
}

/// `GET /v1/health` on a fresh connection: the time until the whole answer was read.
fn timed_health(port: u16) -> Duration {
    let started = Instant::now();
    let answers = exchange(port, b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let elapsed = started.elapsed();
    assert!(
        answers.len() == 1 && answers[0].status == 200,
        "/v1/health: {:?}",
        answers.iter().map(|answer| (answer.status, answer.text())).collect::<Vec<_>>()
    );
    elapsed
}

/// A connection that sent part of a request (or nothing) and nothing since.
struct Stalled {
    stream: TcpStream,
    partial: &'static [u8],
    sent_at: Instant,
    closed_after: Option<Duration>,
}

impl Stalled {
    /// Looks without waiting: notes when the agent closed (EOF) or reset the connection, or
    /// answered the unfinished head with its 408 (then closes it).
    fn check(&mut self) {
        if self.closed_after.is_some() {
            return;
        }
        let mut buffer = [0u8; 512];
        match self.stream.read(&mut buffer) {
            Ok(0) => self.closed_after = Some(self.sent_at.elapsed()),
            Ok(count)
                if !self.partial.is_empty() && buffer[..count].starts_with(b"HTTP/1.1 408 Request Timeout\r\n") =>
            {
                self.closed_after = Some(self.sent_at.elapsed())
            }
            Ok(count) => {
                panic!("the agent sent {:?} to a client that never finished its request", shown(&buffer[..count]))
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => {}
            Err(_) => self.closed_after = Some(self.sent_at.elapsed()),
        }
    }
}

#[test]
fn health_answers_within_a_second_beside_200_stalled_connections_which_go_after_the_idle_timeout() {
    const STALLED: usize = 200;
    const HEALTH_LIMIT: Duration = Duration::from_secs(1);
    let (_deployment, agent) = serving("pressure-stalled");
    let threads_before = proc_status(agent.pid(), "Threads");
    let bearer_line = format!("GET /v1/secrets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n");
    let bearer_line: &'static [u8] = bearer_line.leak().as_bytes();
    let partials: [&'static [u8]; 4] =
        [b"", b"GET /v1/sec", b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ", bearer_line];
    let mut stalled: Vec<Stalled> = (0..STALLED)
        .map(|index| {
            let mut stream = TcpStream::connect(("127.0.0.1", agent.port()))
                .unwrap_or_else(|error| panic!("stalled connection {index}: {error}"));
            let partial = partials[index % partials.len()];
            stream.write_all(partial).unwrap();
            stream.set_nonblocking(true).unwrap();
            Stalled { stream, partial, sent_at: Instant::now(), closed_after: None }
        })
        .collect();

    // Connections are accepted in order: once one of these is answered, all 200 were taken in.
    let latencies: Vec<Duration> = (0..20).map(|_| timed_health(agent.port())).collect();
    let slowest = latencies.iter().max().copied().unwrap_or_default();
    for connection in &mut stalled {
        connection.check();
    }
    let closed_early = stalled.iter().filter(|connection| connection.closed_after.is_some()).count();
    let threads_with_stalled = proc_status(agent.pid(), "Threads");
    eprintln!(
        "stalled: /v1/health beside {STALLED} stalled connections took {:?} at most, {:?} at least \
         (latencies {latencies:?}); agent threads {threads_before} before, {threads_with_stalled} with them open",
        slowest,
        latencies.iter().min().copied().unwrap_or_default(),
    );
    assert_eq!(closed_early, 0, "stalled connections were closed while /v1/health was measured");
    assert!(slowest < HEALTH_LIMIT, "/v1/health took {slowest:?} beside {STALLED} stalled connections: {latencies:?}");

    // A connection that sent nothing is closed 10 s after it was opened (the idle limit); one
    // that began a request gets 408 and a close 10 s after its first byte (the head limit).
    let all_closed = wait_until(Duration::from_secs(16), || {
        stalled.iter_mut().for_each(Stalled::check);
        stalled.iter().all(|connection| connection.closed_after.is_some())
    });
    let closed: Vec<Duration> = stalled.iter().filter_map(|connection| connection.closed_after).collect();
    let (first, last) = (closed.iter().min().copied(), closed.iter().max().copied());
    eprintln!(
        "stalled: {} of {STALLED} closed by the agent, {first:?} to {last:?} after their last byte",
        closed.len()
    );
    assert!(all_closed, "{} of {STALLED} stalled connections were still open after 16 s", STALLED - closed.len());
    assert!(first >= Some(Duration::from_secs(9)), "a stalled connection went after {first:?}, before the 10 s limit");
    assert!(last <= Some(Duration::from_secs(15)), "a stalled connection stayed {last:?} after its last byte");
}

#[test]
fn malformed_requests_get_a_clean_4xx_or_a_closed_connection_and_never_a_panic() {
    let (_deployment, agent) = serving("pressure-malformed");
    let port = agent.port();
    let statuses = |answers: &[Answer]| answers.iter().map(|answer| answer.status).collect::<Vec<u16>>();
    let json_error = |answer: &Answer, expected: &str| {
        assert_eq!(answer.text(), expected, "status {}", answer.status);
        assert_eq!(answer.header("content-type"), Some("application/json; charset=utf-8"));
    };
    let secrets_request = |target: &str| {
        format!(
            "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        )
    };

    // Pipelined garbage after a good request: tiny_http answers the request, then 400 for the
    // request line it cannot parse, and closes (it cannot tell where a next request would start).
    let answers = exchange(
        port,
        b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n}{ not http at all\r\n\r\nGET /v1/health HTTP/1.1\r\n\r\n",
    );
    assert_eq!(statuses(&answers), [200, 400], "pipelined ASCII garbage");
    // The start of a TLS handshake holds control bytes: 400, and the connection ends.
    let mut tls_after_request = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec();
    tls_after_request.extend_from_slice(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n");
    assert_eq!(statuses(&exchange(port, &tls_after_request)), [200, 400], "pipelined binary garbage");

    // Raw bytes that are not UTF-8 in the path: tiny_http takes only ASCII request lines.
    let mut raw_bytes = b"GET /v1/secrets/\xff\xfe".to_vec();
    raw_bytes.extend_from_slice(&secrets_request("/x").as_bytes()[b"GET /x".len()..]);
    assert_eq!(statuses(&exchange(port, &raw_bytes)), [] as [u16; 0], "invalid UTF-8 bytes in the path");
    // The same bytes percent-encoded reach the routes, which refuse them (SPEC §6: segments are
    // percent-decoded).
    let answers = exchange(port, secrets_request("/v1/secrets/%FF%FE").as_bytes());
    assert_eq!(statuses(&answers), [400], "percent-encoded invalid UTF-8");
    json_error(&answers[0], r#"{"error":"Bad request","detail":"the path is not UTF-8 after percent-decoding"}"#);

    // Absolute form: the target is not a path under /v1/, so nothing is served through it.
    for path in ["/v1/health", "/v1/secrets"] {
        let answers = exchange(port, secrets_request(&format!("http://127.0.0.1:{port}{path}")).as_bytes());
        assert_eq!(statuses(&answers), [404], "absolute-form {path}");
        json_error(&answers[0], r#"{"error":"Not found"}"#);
    }

    // HTTP/1.0 without Host: the Host guard refuses it (SPEC §6: missing Host ⇒ 403), and the
    // connection ends, as HTTP/1.0 without keep-alive does.
    let answers = exchange(port, b"GET /v1/health HTTP/1.0\r\n\r\n");
    assert_eq!(statuses(&answers), [403], "HTTP/1.0 without Host");
    json_error(&answers[0], r#"{"error":"Forbidden: invalid Host header"}"#);

    // No version (an HTTP/0.9-style request line): tiny_http's 400, then the connection ends.
    assert_eq!(statuses(&exchange(port, b"GET /v1/health\r\n\r\n")), [400], "a request line without a version");

    // A NUL byte or a bare LF inside a header line: the whole request is refused (400) and the
    // connection closed, so no field is read with a control character in it.
    let bad_request = r#"{"error":"Bad request"}"#;
    let answers = exchange(port, b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\0\r\nConnection: close\r\n\r\n");
    assert_eq!(statuses(&answers), [400], "NUL in Host");
    json_error(&answers[0], bad_request);
    let nul_token = format!(
        "GET /v1/secrets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\0\r\nConnection: close\r\n\r\n"
    );
    let answers = exchange(port, nul_token.as_bytes());
    assert_eq!(statuses(&answers), [400], "NUL after the token");
    json_error(&answers[0], bad_request);
    let bare_lf =
        b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\nContent-Length: 0\r\n\r\nGET /v1/health HTTP/1.1\r\n\r\n";
    let answers = exchange(port, bare_lf);
    assert_eq!(statuses(&answers), [400], "a bare LF inside a header line");
    json_error(&answers[0], bad_request);

    let health = get(port, "/v1/health", &[]);
    assert_eq!(health.status, 200, "{}", health.text());
    let stderr = agent.stderr();
    // The agent's panic hook prints "internal error (a bug) at <location>", not "panicked".
    assert!(!stderr.contains("panicked") && !stderr.contains("internal error"), "a panic: {stderr}");
}
