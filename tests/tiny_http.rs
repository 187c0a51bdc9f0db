//! What our patched tiny_http (vendor/tiny_http, PATCHES.md) promises, tested on its own in the
//! mode the agent uses it (`Server::from_listener_with_handler`: each request answered on the
//! thread that read it): HTTP/1.1 keep-alive, pipelining in order, `Connection: close`, HTTP/1.0,
//! HEAD, small and large bodies, Unix sockets, `unblock`, and every limit of `Limits` with small
//! values, so that each is crossed in milliseconds. The agent's own tests cross the real
//! defaults (tests/integration/pressure/limits.rs).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tiny_http::{Limits, Request, Response, Server};

const BIG: usize = 1024 * 1024;

/// Small limits, crossed quickly; generous enough that an ordinary request never meets them.
fn small_limits() -> Limits {
    Limits {
        max_line_bytes: 256,
        max_head_bytes: 1024,
        max_header_fields: 8,
        head_timeout: Duration::from_millis(600),
        idle_timeout: Duration::from_millis(600),
        write_timeout: Duration::from_millis(600),
        max_connections: 4,
        ..Limits::default()
    }
}

/// `/big` is a 1 MiB body of `x`; any other path is `hello <path>`. Under `/bytes` the same
/// answers are sent with `Request::respond_with_bytes` from memory that outlives the request.
fn answer(request: Request) {
    static BIG_BODY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    if let Some(path) = request.url().strip_prefix("/bytes") {
        let hello = format!("hello {path}");
        let body = if path == "/big" { BIG_BODY.get_or_init(|| vec![b'x'; BIG]) } else { hello.as_bytes() };
        let _ = request.respond_with_bytes(200, &[("Content-Type", "text/plain")], body);
        return;
    }
    let response = if request.url() == "/big" {
        Response::from_data(vec![b'x'; BIG]).with_chunked_threshold(usize::MAX)
    } else {
        Response::from_string(format!("hello {}", request.url()))
    };
    let _ = request.respond(response);
}

fn tcp_server(limits: Limits) -> (Server, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (Server::from_listener_with_handler(listener, limits, answer).unwrap(), port)
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

/// Sends `request` and reads until the server closes the connection.
fn exchange(mut stream: impl Read + Write, request: &str) -> String {
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap_or_else(|error| panic!("no close after {request:?}: {error}"));
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status codes and bodies of the answers in `text`, in order (bodies framed by
/// `Content-Length`, which is all this server sends).
fn answers(text: &str) -> Vec<(u16, String)> {
    let mut rest = text;
    let mut found = Vec::new();
    while !rest.is_empty() {
        let (head, after) = rest.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of head in {rest:?}"));
        let status = head[9..12].parse().unwrap_or_else(|_| panic!("bad status line in {head:?}"));
        let length = head
            .lines()
            .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
            .map_or(0, |length| length.trim().parse().unwrap());
        found.push((status, after[..length].to_string()));
        rest = &after[length..];
    }
    found
}

#[test]
fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (_server, port) = tcp_server(Limits::default());
    let text = exchange(
        connect(port),
        "GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /big HTTP/1.1\r\nHost: a\r\n\r\nGET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    let found = answers(&text);
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(found[0], (200, "hello /one".into()));
    assert_eq!((found[1].0, found[1].1.len()), (200, BIG));
    assert_eq!(found[2], (200, "hello /three".into()));
}

#[test]
fn answers_sent_from_memory_keep_their_order_length_and_connection_header() {
    let (_server, port) = tcp_server(Limits::default());
    let text = exchange(
        connect(port),
        "GET /bytes/one HTTP/1.1\r\nHost: a\r\n\r\nGET /bytes/big HTTP/1.1\r\nHost: a\r\n\r\n\
         GET /two HTTP/1.1\r\nHost: a\r\n\r\nGET /bytes/three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(text.ends_with("\r\nConnection: close\r\n\r\nhello /three"), "no Connection: close");
    let found = answers(&text);
    assert_eq!(found.len(), 4, "{found:?}");
    assert_eq!(found[0], (200, "hello /one".into()));
    assert_eq!((found[1].0, found[1].1.len(), found[1].1.bytes().all(|byte| byte == b'x')), (200, BIG, true));
    assert_eq!(found[2..], [(200, "hello /two".into()), (200, "hello /three".into())]);
    let head = exchange(connect(port), "HEAD /bytes/big HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert!(head.ends_with(&format!("\r\nContent-Length: {BIG}\r\nConnection: close\r\n\r\n")), "{head:?}");
}

#[test]
fn keep_alive_serves_request_after_request_until_connection_close() {
    let (_server, port) = tcp_server(Limits::default());
    let mut stream = connect(port);
    for index in 0..3 {
        stream.write_all(format!("GET /{index} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).unwrap();
        let expected = format!("hello /{index}");
        let mut buffer = vec![0; 4096];
        let mut received = String::new();
        while !received.ends_with(&expected) {
            let count = stream.read(&mut buffer).unwrap();
            assert!(count > 0, "closed after {index} answers: {received:?}");
            received.push_str(&String::from_utf8_lossy(&buffer[..count]));
        }
        assert!(received.starts_with("HTTP/1.1 200 OK\r\n"), "{received:?}");
    }
    let last = exchange(stream, "GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert_eq!(answers(&last), [(200, "hello /last".to_string())]);
}

#[test]
fn http_1_0_closes_after_one_answer_unless_keep_alive_is_asked_for() {
    let (_server, port) = tcp_server(Limits::default());
    let text = exchange(connect(port), "GET /old HTTP/1.0\r\n\r\nGET /never HTTP/1.0\r\n\r\n");
    assert_eq!(answers(&text), [(200, "hello /old".to_string())], "{text:?}");
    let text = exchange(connect(port), "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n");
    assert_eq!(answers(&text), [(200, "hello /a".to_string()), (200, "hello /b".to_string())]);
}

#[test]
fn head_gets_the_headers_of_get_and_no_body() {
    let (_server, port) = tcp_server(Limits::default());
    let text = exchange(connect(port), "HEAD /big HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
    assert!(text.contains(&format!("\r\nContent-Length: {BIG}\r\n")), "{text:?}");
    assert!(text.ends_with("\r\n\r\n"), "HEAD got a body: {} bytes", text.len());
}

#[test]
fn a_request_that_arrives_in_small_pieces_is_put_together() {
    let (_server, port) = tcp_server(Limits::default());
    let mut stream = connect(port);
    for piece in ["G", "ET /sl", "ow HTTP/1.", "1\r\nHo", "st: a\r\nConnec", "tion: close\r", "\n\r", "\n"] {
        stream.write_all(piece.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = exchange(stream, "");
    assert_eq!(answers(&text), [(200, "hello /slow".to_string())]);
}

#[test]
fn an_http_2_request_line_gets_505_and_the_connection_goes_on() {
    let (_server, port) = tcp_server(Limits::default());
    let text = exchange(
        connect(port),
        "GET /two HTTP/2.0\r\nHost: a\r\n\r\nGET /one HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    let found = answers(&text);
    assert_eq!(found.len(), 2, "{text:?}");
    assert_eq!(found[0].0, 505);
    assert_eq!(found[1], (200, "hello /one".to_string()));
}

#[test]
fn unix_socket_connections_are_served_alike() {
    let directory = std::env::temp_dir().join(format!("clef-tiny-http-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let path = directory.join("server.sock");
    let _ = std::fs::remove_file(&path);
    let _server =
        Server::from_listener_with_handler(UnixListener::bind(&path).unwrap(), small_limits(), answer).unwrap();
    let stream = UnixStream::connect(&path).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let text =
        exchange(stream, "GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert_eq!(answers(&text), [(200, "hello /a".to_string()), (200, "hello /b".to_string())]);
    // The idle limit holds on a Unix socket too.
    let mut idle = UnixStream::connect(&path).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    assert_eq!(idle.read(&mut [0u8; 16]).unwrap(), 0, "an idle Unix connection was answered");
    assert!(started.elapsed() < Duration::from_secs(5), "closed after {:?}", started.elapsed());
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn unblock_ends_recv_in_handler_mode() {
    let (server, _port) = tcp_server(Limits::default());
    let server = Arc::new(server);
    let waiting = Arc::clone(&server);
    // Either order works: an unblock is queued for the next recv().
    let receiver = std::thread::spawn(move || waiting.recv().is_err());
    server.unblock();
    assert!(receiver.join().unwrap(), "recv() returned a request after unblock");
}

#[test]
fn a_body_is_refused_with_400_and_nothing_after_it_is_read() {
    let (_server, port) = tcp_server(small_limits());
    let text = exchange(
        connect(port),
        "GET /a HTTP/1.1\r\nHost: a\r\nContent-Length: 28\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    );
    assert_eq!(answers(&text), [(400, r#"{"error":"Request bodies are not accepted"}"#.to_string())]);
    assert!(text.contains("\r\nConnection: close\r\n"), "{text:?}");
    let text = exchange(
        connect(port),
        "GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
    );
    assert_eq!(answers(&text)[..], [(400, r#"{"error":"Request bodies are not accepted"}"#.to_string())]);
    let text = exchange(connect(port), "GET /zero HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(answers(&text), [(200, "hello /zero".to_string())]);
}

#[test]
fn lines_heads_and_field_counts_over_their_limits_get_431() {
    let (_server, port) = tcp_server(small_limits());
    let too_large = r#"{"error":"Request header too large"}"#.to_string();
    let line = |length: usize| format!("X: {}\r\n", "a".repeat(length - 3));
    let ok = exchange(connect(port), &format!("GET /ok HTTP/1.1\r\n{}Connection: close\r\n\r\n", line(256)));
    assert_eq!(answers(&ok), [(200, "hello /ok".to_string())]);
    let long_line = exchange(connect(port), &format!("GET /a HTTP/1.1\r\n{}\r\n", line(257)));
    assert_eq!(answers(&long_line), [(431, too_large.clone())]);
    let long_head = exchange(connect(port), &format!("GET /a HTTP/1.1\r\n{}\r\n", line(250).repeat(5)));
    assert_eq!(answers(&long_head), [(431, too_large.clone())]);
    let fields = exchange(connect(port), &format!("GET /a HTTP/1.1\r\n{}\r\n", "X: 1\r\n".repeat(9)));
    assert_eq!(answers(&fields), [(431, too_large)]);
    let eight =
        exchange(connect(port), &format!("GET /eight HTTP/1.1\r\n{}Connection: close\r\n\r\n", "X: 1\r\n".repeat(7)));
    assert_eq!(answers(&eight), [(200, "hello /eight".to_string())]);
}

#[test]
fn a_head_must_be_complete_within_its_timeout_and_an_idle_connection_is_closed() {
    let (_server, port) = tcp_server(small_limits());
    let mut slow = connect(port);
    let started = Instant::now();
    slow.write_all(b"GET /a HTTP/1.1\r\n").unwrap();
    let mut writer = slow.try_clone().unwrap();
    let trickler = std::thread::spawn(move || {
        for index in 0..20 {
            std::thread::sleep(Duration::from_millis(100));
            if writer.write_all(format!("X-{index}: 1\r\n").as_bytes()).is_err() {
                break;
            }
        }
    });
    let text = exchange(&mut slow, "");
    let cut_after = started.elapsed();
    trickler.join().unwrap();
    assert_eq!(answers(&text), [(408, r#"{"error":"Request header not received in time"}"#.to_string())]);
    assert!(
        cut_after >= Duration::from_millis(550) && cut_after < Duration::from_millis(1500),
        "cut after {cut_after:?}"
    );

    // Idle: after an answer, the keep-alive connection is closed without a word.
    let mut idle = connect(port);
    idle.write_all(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let started = Instant::now();
    let text = exchange(&mut idle, "");
    assert_eq!(answers(&text), [(200, "hello /a".to_string())]);
    assert!(started.elapsed() >= Duration::from_millis(550), "closed after {:?}", started.elapsed());
}

#[test]
fn connections_over_the_cap_get_503_and_freed_slots_are_reused() {
    let (_server, port) = tcp_server(small_limits());
    let held: Vec<TcpStream> = (0..4).map(|_| connect(port)).collect();
    let text = exchange(connect(port), "");
    assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{text:?}");
    assert!(text.ends_with(r#"{"error":"Too many connections"}"#), "{text:?}");
    for stream in &held {
        stream.shutdown(Shutdown::Both).unwrap();
    }
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = exchange(connect(port), "GET /again HTTP/1.1\r\nConnection: close\r\n\r\n");
        if answers(&text) == [(200, "hello /again".to_string())] {
            break;
        }
        assert!(Instant::now() < deadline, "slots never freed: {text:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_that_stops_reading_is_dropped_once_a_write_stalls_for_the_write_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (results, outcomes) = std::sync::mpsc::channel();
    let results = std::sync::Mutex::new(results);
    let _server = Server::from_listener_with_handler(listener, small_limits(), move |request: Request| {
        let outcome = request.respond(Response::from_data(vec![b'x'; BIG]).with_chunked_threshold(usize::MAX));
        let _ = results.lock().unwrap().send(outcome.map_err(|error| error.kind()));
    })
    .unwrap();
    let mut stalled = connect(port);
    // Sixteen 1 MiB answers asked for and none read: the socket buffers fill, the writes stall.
    stalled.write_all("GET /big HTTP/1.1\r\nHost: a\r\n\r\n".repeat(16).as_bytes()).unwrap();
    let failed = loop {
        match outcomes.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => continue,
            Ok(Err(kind)) => break kind,
            Err(_) => panic!("no answer failed although nothing was read"),
        }
    };
    assert!(matches!(failed, std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{failed:?}");
    // The connection ends with that answer: the client reads what was sent, then EOF, and never
    // the other answers.
    let mut received = Vec::new();
    stalled.read_to_end(&mut received).expect("the stalled connection was not closed");
    assert!(received.len() < 8 * BIG, "{} bytes reached the stalled client", received.len());
}

#[test]
fn after_stop_accepting_a_new_connection_is_not_served_while_a_request_in_flight_is_answered() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (entered, handling) = std::sync::mpsc::channel::<()>();
    let (held, entered) = (std::sync::Mutex::new(held), std::sync::Mutex::new(entered));
    let server = Server::from_listener_with_handler(listener, Limits::default(), move |request: Request| {
        if request.url() == "/held" {
            let _ = entered.lock().unwrap().send(());
            let _ = held.lock().unwrap().recv_timeout(Duration::from_secs(10));
        }
        let _ = request.respond(Response::from_string("answered"));
    })
    .unwrap();
    let in_flight = std::thread::spawn(move || {
        exchange(connect(port), "GET /held HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    });
    handling.recv_timeout(Duration::from_secs(10)).expect("the request never reached the handler");
    server.stop_accepting();
    let refused = match TcpStream::connect(("127.0.0.1", port)) {
        Err(_) => true,
        Ok(mut stream) => {
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = stream.write_all(b"GET /new HTTP/1.1\r\nHost: a\r\n\r\n");
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            answer.is_empty()
        }
    };
    assert!(refused, "a connection made after stop_accepting was served");
    release.send(()).unwrap();
    assert_eq!(answers(&in_flight.join().unwrap()), [(200, "answered".to_string())]);
}

#[test]
fn an_answer_after_which_the_connection_closes_says_connection_close() {
    let (_server, port) = tcp_server(Limits::default());
    let connection_header = |text: &str| {
        text.split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.to_ascii_lowercase().strip_prefix("connection: ").map(str::to_owned))
    };
    let closed = exchange(connect(port), "GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert_eq!(connection_header(&closed).as_deref(), Some("close"), "{closed:?}");
    let old = exchange(connect(port), "GET /a HTTP/1.0\r\n\r\n");
    assert!(old.starts_with("HTTP/1.0 200 OK\r\n"), "{old:?}");
    assert_eq!(connection_header(&old).as_deref(), Some("close"), "{old:?}");
    // Kept open: HTTP/1.0 is told it got its keep-alive, HTTP/1.1 needs no header.
    let mut kept = connect(port);
    kept.write_all(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut received = String::new();
    let mut buffer = [0u8; 4096];
    while !received.ends_with("hello /b") {
        let count = kept.read(&mut buffer).unwrap();
        assert!(count > 0, "closed early: {received:?}");
        received.push_str(&String::from_utf8_lossy(&buffer[..count]));
    }
    let (first, second) = received.split_once("hello /a").unwrap();
    assert_eq!(connection_header(first).as_deref(), Some("keep-alive"), "{first:?}");
    assert_eq!(connection_header(second), None, "{second:?}");
}

#[test]
fn a_control_character_inside_a_head_line_is_a_bad_request_and_ends_the_connection() {
    let (_server, port) = tcp_server(Limits::default());
    let bad = (400, r#"{"error":"Bad request"}"#.to_string());
    // A front end that ends lines at a bare LF would see a second field and a 7-byte body here.
    let bare_lf =
        exchange(connect(port), "GET /a HTTP/1.1\r\nHost: a\nContent-Length: 7\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
    assert_eq!(answers(&bare_lf), std::slice::from_ref(&bad), "{bare_lf:?}");
    for line in ["X: a\0b", "X: a\rb", "X: \x7f", "X: \x1b[0m"] {
        let text = exchange(connect(port), &format!("GET /a HTTP/1.1\r\n{line}\r\n\r\n"));
        assert_eq!(answers(&text), std::slice::from_ref(&bad), "{line:?}");
    }
    let in_target = exchange(connect(port), "GET /a\0b HTTP/1.1\r\n\r\n");
    assert_eq!(answers(&in_target), [bad]);
    // A tab is allowed whitespace.
    let tab = exchange(connect(port), "GET /tab HTTP/1.1\r\nX:\tvalue\r\nConnection: close\r\n\r\n");
    assert_eq!(answers(&tab), [(200, "hello /tab".to_string())]);
}
