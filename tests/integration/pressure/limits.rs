//! The HTTP limits of SPEC §11, crossed by a local process that has no token: request bodies
//! (declared, trickled, chunked, smuggled), heads that are too long, too many fields or too slow,
//! idle connections on the Unix socket, and more connections than the cap. Each is refused before
//! it costs the agent more than a small, fixed amount, and the agent goes on serving.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::hostile::{exchange, serving};
use super::{proc_status, read_answer, Answer};
use crate::support::{build_artifact, get, wait_until, ArtifactOptions, Deployment, PLAINTEXT, TOKEN};

const BODIES_REFUSED: &str = r#"{"error":"Request bodies are not accepted"}"#;
const HEAD_TOO_LARGE: &str = r#"{"error":"Request header too large"}"#;
const HEAD_TOO_SLOW: &str = r#"{"error":"Request header not received in time"}"#;

fn statuses(answers: &[Answer]) -> Vec<u16> {
    answers.iter().map(|answer| answer.status).collect()
}

/// The one answer a refused request gets: its status, the JSON error, and `Connection: close`.
fn assert_refused(answers: &[Answer], status: u16, error: &str, what: &str) {
    assert_eq!(statuses(answers), [status], "{what}: {:?}", answers.iter().map(Answer::text).collect::<Vec<_>>());
    assert_eq!(answers[0].text(), error, "{what}");
    assert_eq!(answers[0].header("connection"), Some("close"), "{what}");
    assert_eq!(answers[0].header("content-type"), Some("application/json; charset=utf-8"), "{what}");
}

/// User plus system CPU time the process has used, from `/proc/<pid>/stat`.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default().split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

fn assert_still_serving(port: u16) {
    let health = get(port, "/v1/health", &[]);
    assert_eq!(health.status, 200, "{}", health.text());
}

#[test]
fn a_huge_content_length_without_a_body_is_refused_and_nothing_is_allocated_for_it() {
    let (_deployment, agent) = serving("limits-huge-length");
    let rss_before = proc_status(agent.pid(), "VmRSS");
    // No token and a foreign Host: the first thing the agent does with it must be refuse the body.
    let answers =
        exchange(agent.port(), b"GET /x HTTP/1.1\r\nHost: evil\r\nContent-Length: 4611686018427387904\r\n\r\n");
    assert_refused(&answers, 400, BODIES_REFUSED, "Content-Length 2^62");
    assert_still_serving(agent.port());
    let rss_after = proc_status(agent.pid(), "VmRSS");
    assert!(rss_after < rss_before + 1024, "VmRSS {rss_before} KiB before, {rss_after} KiB after");
    assert!(agent.is_running(), "{}", agent.stderr());
}

#[test]
fn a_trickled_body_is_never_read_the_connection_closes_at_once() {
    const DECLARED: u64 = 200_000_000;
    let (_deployment, agent) = serving("limits-trickled-body");
    let (cpu_before, rss_before) = (cpu_time(agent.pid()), proc_status(agent.pid(), "VmRSS"));
    let mut stream = TcpStream::connect(("127.0.0.1", agent.port())).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!("GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {DECLARED}\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let stop = AtomicBool::new(false);
    let sent = AtomicUsize::new(0);
    let started = Instant::now();
    let (answers, closed_after) = std::thread::scope(|scope| {
        let mut writer = stream.try_clone().unwrap();
        let (stop, sent) = (&stop, &sent);
        scope.spawn(move || {
            // 4 KiB every millisecond for at most 6 s, until the agent closes the connection.
            let piece = [b'x'; 4096];
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(6) {
                if writer.write_all(&piece).is_err() {
                    return;
                }
                sent.fetch_add(piece.len(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let mut reader = BufReader::new(stream);
        let mut answers = Vec::new();
        while let Ok(Some(answer)) = read_answer(&mut reader) {
            answers.push(answer);
        }
        let closed_after = started.elapsed();
        stop.store(true, Ordering::SeqCst);
        (answers, closed_after)
    });
    assert_refused(&answers, 400, BODIES_REFUSED, "a trickled 200 MB body");
    assert!(closed_after < Duration::from_secs(2), "the connection stayed open {closed_after:?} while the body came");
    let (cpu_after, rss_after) = (cpu_time(agent.pid()), proc_status(agent.pid(), "VmRSS"));
    eprintln!(
        "trickled body: closed after {closed_after:?}, {} bytes sent; agent CPU {:?}, VmRSS {rss_before} -> {rss_after} KiB",
        sent.load(Ordering::SeqCst),
        cpu_after - cpu_before
    );
    assert!(cpu_after - cpu_before < Duration::from_millis(500), "the agent spent {:?} of CPU", cpu_after - cpu_before);
    assert!(rss_after < rss_before + 2048, "VmRSS {rss_before} KiB before, {rss_after} KiB after");
    assert_still_serving(agent.port());
}

#[test]
fn a_body_ends_the_connection_and_what_follows_it_is_never_taken_for_a_request() {
    let (_deployment, agent) = serving("limits-smuggled");
    let port = agent.port();
    // The body is itself a request with the token: were the body read as the next request, its
    // 200 would follow the first answer.
    let smuggled = format!("GET /v1/secrets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    let with_length =
        format!("GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{smuggled}", smuggled.len());
    assert_refused(&exchange(port, with_length.as_bytes()), 400, BODIES_REFUSED, "Content-Length body");
    let chunked = format!(
        "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n\
         GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        smuggled.len()
    );
    assert_refused(&exchange(port, chunked.as_bytes()), 400, BODIES_REFUSED, "chunked body");
    // Any Transfer-Encoding is a body, with or without a Content-Length beside it.
    let both = format!(
        "POST /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nTransfer-Encoding: gzip, chunked\r\n\r\n{smuggled}"
    );
    assert_refused(&exchange(port, both.as_bytes()), 400, BODIES_REFUSED, "Transfer-Encoding beside Content-Length 0");
    // A length that is not a decimal number is a malformed request, not a zero.
    for length in ["+5", "5, 5", "0x10", ""] {
        let request =
            format!("GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n\r\n{smuggled}");
        assert_refused(&exchange(port, request.as_bytes()), 400, r#"{"error":"Bad request"}"#, length);
    }
    // `Content-Length: 0` is an ordinary request, and the connection goes on.
    let empty = "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n\
                 GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 00\r\nConnection: close\r\n\r\n";
    assert_eq!(statuses(&exchange(port, empty.as_bytes())), [200, 200], "Content-Length: 0");
}

/// A request with one header line of `line_bytes` (without its CRLF) and `fields` fields in all.
fn request_with(line_bytes: usize, fields: usize) -> String {
    let mut request = String::from("GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    let padding = "a".repeat(line_bytes - "X-Long: ".len());
    request.push_str(&format!("X-Long: {padding}\r\n"));
    for index in 3..fields {
        request.push_str(&format!("X-Field-{index}: {index}\r\n"));
    }
    request + "\r\n"
}

#[test]
fn lines_over_8_kib_heads_over_64_kib_and_more_than_100_fields_get_431() {
    let (_deployment, agent) = serving("limits-head-size");
    let port = agent.port();
    assert_eq!(statuses(&exchange(port, request_with(8192, 100).as_bytes())), [200], "8 KiB line, 100 fields");
    assert_refused(&exchange(port, request_with(8193, 3).as_bytes()), 431, HEAD_TOO_LARGE, "a line of 8 KiB + 1");
    assert_refused(&exchange(port, request_with(100, 101).as_bytes()), 431, HEAD_TOO_LARGE, "101 fields");
    let long_target = format!("GET /v1/health?{} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "q".repeat(8192));
    assert_refused(&exchange(port, long_target.as_bytes()), 431, HEAD_TOO_LARGE, "a request line over 8 KiB");
    // Nine lines of 8 000 bytes: each is allowed, together they pass 64 KiB.
    let mut big_head = String::from("GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for index in 0..9 {
        big_head.push_str(&format!("X-Part-{index}: {}\r\n", "b".repeat(8000 - "X-Part-0: ".len())));
    }
    big_head.push_str("\r\n");
    assert_refused(&exchange(port, big_head.as_bytes()), 431, HEAD_TOO_LARGE, "a head over 64 KiB");
    assert_still_serving(port);
}

/// Sends an endless header line until the agent closes the connection (or 64 MiB went out);
/// returns the answers and how many bytes the agent let in.
fn endless_head(port: u16) -> (Vec<Answer>, usize) {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut sent = 0;
        let head =
            format!("GET /v1/secrets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nX-Endless: ");
        if writer.write_all(head.as_bytes()).is_err() {
            return sent;
        }
        let piece = [b'a'; 16 * 1024];
        while sent < 64 * 1024 * 1024 && writer.write_all(&piece).is_ok() {
            sent += piece.len();
        }
        sent
    });
    let mut reader = BufReader::new(stream);
    let mut answers = Vec::new();
    loop {
        match read_answer(&mut reader) {
            Ok(Some(answer)) => answers.push(answer),
            Ok(None) => break,
            Err(error) if error.kind() == ErrorKind::ConnectionReset => break,
            Err(error) => panic!("after {} answers, neither an answer nor a close: {error}", answers.len()),
        }
    }
    (answers, sender.join().expect("the sender panicked"))
}

#[test]
fn an_endless_head_gets_431_and_costs_no_more_than_its_cap() {
    const AT_ONCE: usize = 16;
    let (_deployment, agent) = serving("limits-endless-head");
    for _ in 0..20 {
        assert_still_serving(agent.port());
    }
    let hwm_before = proc_status(agent.pid(), "VmHWM");
    let outcomes: Vec<(Vec<Answer>, usize)> = std::thread::scope(|scope| {
        let senders: Vec<_> = (0..AT_ONCE).map(|_| scope.spawn(|| endless_head(agent.port()))).collect();
        senders.into_iter().map(|sender| sender.join().expect("a client panicked")).collect()
    });
    let hwm_after = proc_status(agent.pid(), "VmHWM");
    let most_sent = outcomes.iter().map(|(_, sent)| *sent).max().unwrap_or_default();
    eprintln!("endless head: {AT_ONCE} at once; VmHWM {hwm_before} -> {hwm_after} KiB; at most {most_sent} bytes sent");
    for (answers, _) in &outcomes {
        assert_refused(answers, 431, HEAD_TOO_LARGE, "an endless header line");
    }
    // Stock tiny_http buffered each line whole: 16 clients would have cost 16 × 64 MiB.
    assert!(most_sent < 16 * 1024 * 1024, "a client could send {most_sent} bytes before the agent closed");
    assert!(hwm_after < hwm_before + 6 * 1024, "VmHWM {hwm_before} KiB before, {hwm_after} KiB after");
    assert_still_serving(agent.port());
}

/// Sends the lines of a head one a second, never its end; returns the answers, the time from
/// the first byte to the close, and the lines sent.
fn trickle_head(mut stream: impl Read + Write + Send + 'static, mut reader: impl Read) -> (String, Duration, usize) {
    let started = Instant::now();
    let writer = std::thread::spawn(move || {
        let mut lines = 0;
        let mut line = b"GET /v1/health HTTP/1.1\r\n".to_vec();
        while started.elapsed() < Duration::from_secs(20) && stream.write_all(&line).is_ok() {
            lines += 1;
            line = format!("X-Line-{lines}: {lines}\r\n").into_bytes();
            std::thread::sleep(Duration::from_secs(1));
        }
        lines
    });
    let mut received = Vec::new();
    let _ = reader.read_to_end(&mut received);
    let closed_after = started.elapsed();
    let lines = writer.join().expect("the writer panicked");
    (String::from_utf8_lossy(&received).into_owned(), closed_after, lines)
}

fn assert_cut_at_the_head_deadline(answer: &str, closed_after: Duration, lines: usize, what: &str) {
    eprintln!("{what}: closed {closed_after:?} after the first byte, {lines} lines sent");
    assert!(answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{what}: {answer:?}");
    assert!(answer.ends_with(HEAD_TOO_SLOW), "{what}: {answer:?}");
    assert!(
        closed_after >= Duration::from_millis(9500) && closed_after < Duration::from_secs(12),
        "{what}: cut {closed_after:?} after its first byte, not at 10 s"
    );
}

#[test]
fn a_head_trickled_a_line_a_second_is_cut_ten_seconds_after_its_first_byte() {
    let (_deployment, agent) = serving("limits-trickled-head");
    let stream = TcpStream::connect(("127.0.0.1", agent.port())).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let reader = stream.try_clone().unwrap();
    let (answer, closed_after, lines) = trickle_head(stream, reader);
    assert_cut_at_the_head_deadline(&answer, closed_after, lines, "trickled head over TCP");
    assert_still_serving(agent.port());
}

#[test]
fn unix_socket_connections_keep_the_same_idle_and_head_time_limits() {
    let deployment = Deployment::new("limits-unix", &build_artifact(PLAINTEXT, "rev-1", &ArtifactOptions::default()));
    let socket = deployment.dir.join("agent.sock");
    let socket_text = socket.display().to_string();
    let _agent = deployment.start(&[("CLEF_AGENT_SOCKET", &socket_text), ("CLEF_AGENT_PORT", "")]);
    let mut idle = UnixStream::connect(&socket).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let idle_since = Instant::now();
    let idle_client = std::thread::spawn(move || {
        let mut received = Vec::new();
        let _ = idle.read_to_end(&mut received);
        (idle_since.elapsed(), received)
    });
    let stream = UnixStream::connect(&socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let reader = stream.try_clone().unwrap();
    let (answer, closed_after, lines) = trickle_head(stream, reader);
    let (idle_closed_after, idle_received) = idle_client.join().expect("the idle client panicked");
    eprintln!("idle unix connection: closed after {idle_closed_after:?}");
    assert!(idle_received.is_empty(), "an idle connection was sent {:?}", String::from_utf8_lossy(&idle_received));
    assert!(
        idle_closed_after >= Duration::from_millis(9500) && idle_closed_after < Duration::from_secs(12),
        "an idle Unix-socket connection was closed after {idle_closed_after:?}, not at 10 s"
    );
    assert_cut_at_the_head_deadline(&answer, closed_after, lines, "trickled head over the Unix socket");
}

#[test]
fn past_512_connections_each_new_one_gets_503_and_the_agent_keeps_serving() {
    const CONNECTIONS: usize = 600;
    let (_deployment, agent) = serving("limits-connections");
    let port = agent.port();
    let mut held = Vec::with_capacity(CONNECTIONS);
    for index in 0..CONNECTIONS {
        let stream =
            TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|error| panic!("connection {index}: {error}"));
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        held.push(stream);
    }
    // The agent takes connections in order: the first 512 stay open and silent, the rest get
    // the 503 and a close, with nothing sent by the client.
    let mut refused = Vec::new();
    for (index, stream) in held.iter_mut().enumerate().skip(512) {
        let mut received = Vec::new();
        stream.read_to_end(&mut received).unwrap_or_else(|error| panic!("connection {}: {error}", index + 1));
        let text = String::from_utf8_lossy(&received).into_owned();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n")
                && text.contains("\r\nConnection: close\r\n")
                && text.ends_with(r#"{"error":"Too many connections"}"#),
            "connection {}: {text:?}",
            index + 1
        );
        refused.push(index + 1);
    }
    assert_eq!(refused.first(), Some(&513));
    for (index, stream) in held.iter_mut().enumerate().take(512) {
        stream.set_nonblocking(true).unwrap();
        let mut buffer = [0u8; 64];
        match stream.read(&mut buffer) {
            Err(error) if error.kind() == ErrorKind::WouldBlock => {}
            other => panic!("connection {} under the cap was answered or closed: {other:?}", index + 1),
        }
    }
    held.truncate(100);
    // The freed slots take new connections again.
    let served = wait_until(Duration::from_secs(5), || get(port, "/v1/health", &[]).status == 200);
    assert!(served, "after 500 connections closed, /v1/health is still refused");
    drop(held);
    assert!(agent.is_running(), "{}", agent.stderr());
}
