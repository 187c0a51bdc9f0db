//! The HTTP server end to end: arbitrary bytes written to a Unix socket served by the real
//! patched tiny_http (`Server::from_listener_with_handler` with the agent's `server::limits`)
//! whose handler is the agent's own `server::answer` and `server::into_response`, for three
//! APIs: secrets cached, JIT (decrypted per request) and not loaded. Each input is one
//! connection per server: the bytes, then end of input (`shutdown(Write)`), then everything the
//! server sends until it closes.
//!
//! Checked beyond "no panic" (a panic on a server thread aborts the process too):
//! - in the handler, on the request tiny_http built: it announces no body, and the reply keeps
//!   the README's rules (`check`: Host guard, method, token, proxies, no-store, JSON, values);
//! - on the bytes the client got: a sequence of well-framed responses, one per request the
//!   handler answered (same status, same HTTP version, `Content-Length` of the reply's body, no
//!   body to HEAD, chunked only when the request sent `TE`), `505` for HTTP/2.0 and 3.0 request
//!   lines, and at most one refusal by the HTTP layer (400 malformed or with a body, 417, 431),
//!   which is the last thing sent and says `Connection: close`;
//! - no request at or after the first head that announces a body is answered (read from the
//!   input independently of tiny_http);
//! - without the bearer token in the input, no fixture secret value is in the output;
//! - cached and JIT answer with the same statuses.
//!
//! Path segments also go through `url::percent_decode` directly.
#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use clef_agent::config::Mode;
use clef_agent::decrypt::{AgeIdentity, DecryptionKeys};
use clef_agent::refresh::{Pipeline, Refresher};
use clef_agent::secret::Secret;
use clef_agent::server::routes::{Api, Reply, Request, JSON, TEXT};
use clef_agent::snapshot::LiveSnapshot;
use clef_agent::source::{FetchError, Fetched, Source};
use libfuzzer_sys::fuzz_target;

const TOKEN: &str = "fuzz-token-0123456789";
const ARTIFACT: &[u8] = include_bytes!("../../tests/fixtures/artifacts/age-cli.json");
const PLAINTEXT: &str = include_str!("../../tests/fixtures/plaintext.json");
/// Larger inputs are skipped: a head is at most 64 KiB, and this keeps each run short.
const MAX_INPUT: usize = 128 * 1024;
/// The client sends everything and then end of input, so the server never waits for bytes and
/// none of its 10 s timeouts can start; a server still sending after this is stuck. Below
/// libFuzzer's `-timeout=10`, so the message says which server.
const READ_TIMEOUT: Duration = Duration::from_secs(8);

/// Answers the fixture artifact, or (for the never-loaded API) a fetch error.
struct FixedSource(Option<&'static [u8]>);

impl Source for FixedSource {
    fn describe(&self) -> String {
        "fuzz fixture".into()
    }

    fn fetch(&mut self, _: Option<&str>) -> Result<Fetched, FetchError> {
        match self.0 {
            Some(bytes) => Ok(Fetched::Content { bytes: bytes.to_vec(), content_hash: None }),
            None => Err(FetchError::NotFound { source: "fuzz fixture".into(), status: None }),
        }
    }
}

/// `server::answer` reads the clock, so the snapshot is loaded now and cached for a day: no
/// request of a fuzzing run refreshes it.
fn api(mode: Mode, artifact: Option<&'static [u8]>) -> Api {
    let identity =
        AgeIdentity::from_file_contents(include_str!("../../tests/fixtures/keys/demo.agekey")).expect("demo.agekey");
    let keys = Arc::new(DecryptionKeys { age: Some(identity), kms: None });
    let cell = Arc::new(LiveSnapshot::new(mode));
    let pipeline = Pipeline::new(Box::new(FixedSource(artifact)), Arc::clone(&keys), None, None);
    let refresher = Arc::new(Refresher::new(Arc::clone(&cell), pipeline, Default::default()));
    if artifact.is_some() {
        refresher.refresh(clef_agent::time::now_ms()).expect("the fixture artifact loads");
    }
    Api { cell, refresher, keys, token: Secret::new(TOKEN.into()) }
}

/// What the handler saw of one request and answered, in the order it answered.
#[derive(Debug)]
struct Answered {
    head: bool,
    version: (u8, u8),
    te: bool,
    status: u16,
    body_len: usize,
}

/// One API behind a real tiny_http server on a Unix socket.
struct Backend {
    name: &'static str,
    path: PathBuf,
    answered: Arc<Mutex<Vec<Answered>>>,
    _server: tiny_http::Server,
}

struct Fixture {
    backends: [Backend; 3],
    values: &'static [String],
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // A server's write to a client that went away must be an error, not the end of the
        // process: libFuzzer's main, unlike Rust's, leaves SIGPIPE at its default.
        // SAFETY: setting a signal's disposition to "ignore" before any socket is used.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let plaintext: serde_json::Value = serde_json::from_str(PLAINTEXT).expect("plaintext.json");
        let values: Vec<String> = plaintext
            .as_object()
            .into_iter()
            .flat_map(|namespaces| namespaces.values())
            .filter_map(|namespace| namespace.as_object())
            .flat_map(|entries| entries.values())
            .filter_map(|value| value.as_str().map(str::to_owned))
            .collect();
        let values: &'static [String] = Vec::leak(values);
        let directory = std::env::temp_dir().join(format!("clef-agent-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&directory).expect("a directory for the fuzz sockets");
        extern "C" fn remove_sockets() {
            let directory = std::env::temp_dir().join(format!("clef-agent-fuzz-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(directory);
        }
        // SAFETY: registers a plain function to run at exit (libFuzzer exits with `exit`).
        unsafe { libc::atexit(remove_sockets) };
        let cached = Mode::Cached { ttl: Duration::from_secs(24 * 3600) };
        let backend = |name: &'static str, api: Api| {
            let api: &'static Api = Box::leak(Box::new(api));
            let path = directory.join(name);
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path).expect("bind the fuzz socket");
            let answered = Arc::new(Mutex::new(Vec::new()));
            let log = Arc::clone(&answered);
            let handler = move |request: tiny_http::Request| serve(api, values, &log, request);
            let server =
                tiny_http::Server::from_listener_with_handler(listener, clef_agent::server::limits(64), handler)
                    .expect("start tiny_http");
            Backend { name, path, answered, _server: server }
        };
        Fixture {
            backends: [
                backend("cached", api(cached, Some(ARTIFACT))),
                backend("jit", api(Mode::Jit, Some(ARTIFACT))),
                backend("not-loaded", api(cached, None)),
            ],
            values,
        }
    })
}

/// The handler: the agent's own `answer` and `respond`, with the oracle in between.
fn serve(api: &Api, values: &[String], log: &Mutex<Vec<Answered>>, request: tiny_http::Request) {
    let reply = clef_agent::server::answer(api, &request);
    let headers = request.headers();
    for header in headers {
        let value = header.value.as_str().trim();
        assert!(!header.field.equiv("Transfer-Encoding"), "a request with Transfer-Encoding reached the handler");
        assert!(
            !header.field.equiv("Content-Length") || value.bytes().all(|byte| byte == b'0'),
            "a request with Content-Length {value:?} reached the handler"
        );
    }
    let named = |name: &'static str| {
        headers.iter().filter(move |header| header.field.equiv(name)).map(|header| header.value.as_str())
    };
    let view = Request {
        method: request.method().as_str(),
        target: request.url(),
        hosts: &named("Host").collect::<Vec<_>>(),
        authorization: named("Authorization").next(),
        forwarded: named("X-Forwarded-For").next().is_some() || named("Forwarded").next().is_some(),
        accept: &named("Accept").collect::<Vec<_>>(),
    };
    check(&view, &reply, values);
    let version = request.http_version();
    log.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(Answered {
        head: matches!(request.method(), tiny_http::Method::Head),
        version: (version.0, version.1),
        te: named("TE").next().is_some(),
        status: reply.status,
        body_len: reply.body.bytes().len(),
    });
    let _ = clef_agent::server::respond(request, &reply);
}

/// The README's Host rule, written separately: exactly one Host that is a loopback name with
/// or without a port. `Some(true)`/`Some(false)` where the rule is clear, `None` for oddities
/// (a port like `+80`) left to the agent's judgement.
fn host_rule(hosts: &[&str]) -> Option<bool> {
    let [host] = hosts else { return Some(false) };
    let host = host.trim().to_ascii_lowercase();
    for name in ["127.0.0.1", "localhost", "[::1]"] {
        if let Some(rest) = host.strip_prefix(name) {
            let Some(port) = rest.strip_prefix(':') else { return Some(rest.is_empty()) };
            if !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()) {
                return Some(port.parse::<u32>().is_ok_and(|port| port <= 65535));
            }
            return None;
        }
    }
    Some(false)
}

/// `Authorization: Bearer <token>` with the right token (scheme case-insensitive).
fn token_given(authorization: Option<&str>) -> bool {
    authorization
        .and_then(|value| value.trim().split_once(' '))
        .is_some_and(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && token.trim() == TOKEN)
}

fn path_of(target: &str) -> &str {
    target.split(['?', '#']).next().unwrap_or_default()
}

fn has_header(reply: &Reply, name: &str, value: &str) -> bool {
    reply.headers.iter().any(|(n, v)| n.eq_ignore_ascii_case(name) && *v == value)
}

fn check(request: &Request<'_>, reply: &Reply, values: &[String]) {
    let body = reply.body.bytes();
    let path = path_of(request.target);
    let secret_path = path.starts_with("/v1/secrets") || path.starts_with("/v1/keys");
    assert!(
        matches!(reply.status, 200 | 400 | 401 | 403 | 404 | 405 | 503),
        "unexpected status {} for {request:?}",
        reply.status
    );
    assert!(!secret_path || reply.no_store, "a secrets path answered without no-store: {request:?}");
    // Guards in the README's order.
    match host_rule(&request.hosts) {
        Some(false) => {
            assert_eq!(reply.status, 403, "a bad Host got past the Host guard: {request:?}");
            assert_eq!(body, br#"{"error":"Forbidden: invalid Host header"}"#);
            return;
        }
        Some(true) => assert!(
            reply.status != 403 || body != br#"{"error":"Forbidden: invalid Host header"}"#,
            "a loopback Host was refused: {request:?}"
        ),
        None => {}
    }
    if reply.status == 403 && body == br#"{"error":"Forbidden: invalid Host header"}"# {
        return;
    }
    let method_allowed = request.method == "GET" || request.method == "HEAD";
    assert_eq!(reply.status == 405, !method_allowed, "method guard: {request:?}");
    if reply.status == 405 {
        assert!(has_header(reply, "Allow", "GET, HEAD"));
        return;
    }
    if reply.status == 401 {
        assert!(has_header(reply, "WWW-Authenticate", "Bearer"));
        assert!(!token_given(request.authorization), "the right token was refused: {request:?}");
    }
    if reply.content_type == JSON {
        assert!(
            serde_json::from_slice::<serde_json::Value>(body).is_ok(),
            "a JSON answer is not JSON: {:?}",
            String::from_utf8_lossy(body)
        );
    }
    if reply.status == 200 {
        let public = body.starts_with(br#"{"status":"ok""#) || body == br#"{"ready":true}"#;
        if !public {
            assert!(secret_path, "secrets served on a path that is not a secrets path: {request:?}");
            assert!(token_given(request.authorization), "secrets served without the token: {request:?}");
            assert!(!request.forwarded, "secrets served to a proxied request: {request:?}");
        }
        if reply.content_type == TEXT {
            let value = std::str::from_utf8(body).expect("values are UTF-8");
            assert!(values.iter().any(|known| known == value), "served a value the artifact does not hold");
        }
        // A single value asked for as JSON (`Accept` ranks application/json above text/plain)
        // is `{"value": <one of the fixture's values>}`.
        if reply.content_type == JSON && !public {
            if let Ok(serde_json::Value::Object(object)) = serde_json::from_slice::<serde_json::Value>(body) {
                if let (1, Some(serde_json::Value::String(value))) = (object.len(), object.get("value")) {
                    assert!(values.iter().any(|known| known == value), "served a value the artifact does not hold");
                }
            }
        }
    }
}

/// Opens a connection to `backend` and sends `input` and the end of input. Nothing is read
/// yet: the input fits in the socket's send buffer (`MAX_INPUT`, 208 KiB by default on Linux),
/// so this never waits for the server, and the three servers work at once.
fn send(backend: &Backend, input: &[u8]) -> UnixStream {
    let mut stream = UnixStream::connect(&backend.path).expect("connect to the fuzz socket");
    stream.set_read_timeout(Some(READ_TIMEOUT)).expect("set a read timeout");
    stream.set_write_timeout(Some(READ_TIMEOUT)).expect("set a write timeout");
    match stream.write_all(input) {
        Ok(()) => {}
        // The server closed the connection after a refusal: the rest is never read.
        Err(error) if matches!(error.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {}
        Err(error) => panic!("{}: the input was not sent: {error}", backend.name),
    }
    let _ = stream.shutdown(Shutdown::Write);
    stream
}

/// Everything the server sends until it closes the connection.
fn receive(backend: &Backend, mut stream: UnixStream) -> Vec<u8> {
    let mut output = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return output,
            Ok(count) => output.extend_from_slice(&buffer[..count]),
            // A Unix socket closed with unread input reports a reset after the data.
            Err(error) if error.kind() == ErrorKind::ConnectionReset => return output,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => panic!("{}: no end of the answer within {READ_TIMEOUT:?}: {error}", backend.name),
        }
    }
}

/// How many requests at most can be answered: the heads before the first one that announces a
/// body (tiny_http refuses that one and reads nothing after it). A head ends at the first empty
/// line, and a line only at CRLF — a bare LF is part of its line, even in a header value — so
/// heads are split at `\r\n\r\n` and lines at `\r\n` (a head that starts with an empty line
/// is a bad request line, the end too). Any `Transfer-Encoding`, or a `Content-Length` of
/// digits that are not all zero, announces a body.
fn answerable(input: &[u8]) -> usize {
    let mut count = 0;
    let mut rest = input;
    while !rest.starts_with(b"\r\n") {
        let Some(end) = rest.windows(4).position(|window| window == b"\r\n\r\n") else { break };
        let announces_body = crlf_lines(&rest[..end]).any(|line| {
            let line = line.trim_ascii();
            let value = |name: &[u8]| {
                (line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name))
                    .then(|| line[name.len()..].trim_ascii())
            };
            value(b"transfer-encoding:").is_some()
                || value(b"content-length:").is_some_and(|value| {
                    value.iter().all(u8::is_ascii_digit) && value.iter().any(|&digit| digit != b'0')
                })
        });
        if announces_body {
            break;
        }
        count += 1;
        rest = &rest[end + 4..];
    }
    count
}

/// The lines of a head without its final CRLF, split where tiny_http splits them: at CRLF only.
fn crlf_lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(head);
    std::iter::from_fn(move || {
        let text = rest?;
        match text.windows(2).position(|window| window == b"\r\n") {
            Some(end) => {
                rest = Some(&text[end + 2..]);
                Some(&text[..end])
            }
            None => rest.take(),
        }
    })
}

/// One response: status line, headers, body.
struct Response<'a> {
    version: &'a [u8],
    status: u16,
    headers: Vec<(&'a str, &'a str)>,
    body: Vec<u8>,
}

impl Response<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(field, _)| field.eq_ignore_ascii_case(name)).map(|(_, value)| *value)
    }
}

/// Reads a response head from `output`: returns it (without a body) and the rest.
fn response_head(output: &[u8]) -> (Response<'_>, &[u8]) {
    let end = output
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("a response head without its end: {:?}", String::from_utf8_lossy(output)));
    let head = std::str::from_utf8(&output[..end]).expect("a response head is UTF-8");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let (version, rest) = status_line.split_once(' ').expect("a status line has a version");
    assert!(
        version.len() == 8 && version.starts_with("HTTP/") && version.as_bytes()[6] == b'.',
        "bad status line {status_line:?}"
    );
    let (code, reason) = rest.split_once(' ').expect("a status line has a status code");
    assert!(code.len() == 3 && !reason.is_empty(), "bad status line {status_line:?}");
    let status = code.parse().expect("a status code is a number");
    let headers = lines
        .map(|line| {
            let (field, value) = line.split_once(": ").unwrap_or_else(|| panic!("bad header line {line:?}"));
            (field, value)
        })
        .collect();
    (Response { version: version.as_bytes(), status, headers, body: Vec::new() }, &output[end + 4..])
}

/// Reads the body of `response` from `rest`, framed by its `Content-Length` or chunked.
fn response_body<'a>(response: &mut Response<'_>, rest: &'a [u8]) -> &'a [u8] {
    if response.header("Transfer-Encoding") == Some("chunked") {
        let mut rest = rest;
        loop {
            let end = rest.windows(2).position(|window| window == b"\r\n").expect("a chunk size line");
            let size = std::str::from_utf8(&rest[..end]).ok().and_then(|size| usize::from_str_radix(size, 16).ok());
            let size = size.unwrap_or_else(|| panic!("bad chunk size {:?}", String::from_utf8_lossy(&rest[..end])));
            rest = &rest[end + 2..];
            assert!(rest.len() >= size + 2 && &rest[size..size + 2] == b"\r\n", "a chunk cut short");
            response.body.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
            if size == 0 {
                return rest;
            }
        }
    }
    let length: usize = response
        .header("Content-Length")
        .and_then(|length| length.parse().ok())
        .unwrap_or_else(|| panic!("a response without framing: {:?}", response.headers));
    assert!(rest.len() >= length, "a body shorter than its Content-Length {length}");
    response.body.extend_from_slice(&rest[..length]);
    &rest[length..]
}

/// The refusals of the HTTP layer (vendor/tiny_http/src/client.rs), each the last thing sent
/// on its connection. 408 is not among them: the client ends its input at once, so a head
/// timeout here would be a bug (or a machine stalled for 10 s).
const REFUSALS: [(u16, &str); 4] = [
    (400, r#"{"error":"Bad request"}"#),
    (400, r#"{"error":"Request bodies are not accepted"}"#),
    (417, r#"{"error":"Expectation failed"}"#),
    (431, r#"{"error":"Request header too large"}"#),
];

/// Checks what one server sent against what its handler answered; returns the statuses.
fn check_output(backend: &Backend, output: &[u8], answered: &[Answered]) -> Vec<u16> {
    let mut statuses = Vec::new();
    let mut handled = answered.iter();
    let mut rest = output;
    while !rest.is_empty() {
        let (mut response, after_head) = response_head(rest);
        statuses.push(response.status);
        if response.status == 505 {
            // An HTTP/2.0 or 3.0 request line, answered by tiny_http without the handler; the
            // body is left out for HEAD, and never starts like the next response.
            assert!(matches!(response.version, b"HTTP/2.0" | b"HTTP/3.0"), "505 to {:?}", response.version);
            rest = if after_head.is_empty() || after_head.starts_with(b"HTTP/") {
                after_head
            } else {
                response_body(&mut response, after_head)
            };
            continue;
        }
        if let Some(request) = handled.next() {
            let (name, status) = (backend.name, response.status);
            assert_eq!(status, request.status, "{name}: the handler answered {request:?}, the client got {status}");
            let version = format!("HTTP/{}.{}", request.version.0, request.version.1);
            assert_eq!(response.version, version.as_bytes(), "{name}: {request:?}");
            assert!(
                response.header("Transfer-Encoding").is_none() || request.te,
                "{name}: a chunked answer to a request without TE: {request:?}"
            );
            if response.header("Transfer-Encoding").is_none() {
                let length = request.body_len.to_string();
                assert_eq!(response.header("Content-Length"), Some(length.as_str()), "{name}: {request:?}");
            }
            rest = if request.head { after_head } else { response_body(&mut response, after_head) };
            if !request.head {
                assert_eq!(response.body.len(), request.body_len, "{name}: {request:?}");
            }
            continue;
        }
        rest = response_body(&mut response, after_head);
        let body = std::str::from_utf8(&response.body).unwrap_or_default();
        assert!(
            REFUSALS.contains(&(response.status, body)),
            "{}: an answer nobody asked for: {} {body:?}",
            backend.name,
            response.status
        );
        assert_eq!(response.version, b"HTTP/1.1");
        assert_eq!(
            response.header("Connection"),
            Some("close"),
            "{}: a refusal that keeps the connection",
            backend.name
        );
        assert!(rest.is_empty(), "{}: {} bytes sent after a refusal", backend.name, rest.len());
    }
    assert!(handled.next().is_none(), "{}: an answer the handler gave never reached the client", backend.name);
    statuses
}

fuzz_target!(|bytes: &[u8]| {
    if bytes.len() > MAX_INPUT {
        return;
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        // The decoder behind path segments, directly.
        for segment in text.split(['/', ' ', '?', '\n']) {
            match clef_agent::url::percent_decode(segment) {
                Ok(decoded) => {
                    assert!(decoded.len() <= segment.len());
                    if !segment.contains('%') {
                        assert_eq!(decoded, segment);
                    }
                }
                Err(error) => assert!(segment.contains('%') || error.contains("UTF-8"), "{error}"),
            }
        }
    }
    let fixture = fixture();
    let streams: Vec<UnixStream> = fixture.backends.iter().map(|backend| send(backend, bytes)).collect();
    let outputs: Vec<Vec<u8>> =
        fixture.backends.iter().zip(streams).map(|(backend, stream)| receive(backend, stream)).collect();
    let contains = |haystack: &[u8], needle: &[u8]| haystack.windows(needle.len()).any(|window| window == needle);
    let limit = answerable(bytes);
    let mut statuses = Vec::with_capacity(3);
    for (backend, output) in fixture.backends.iter().zip(&outputs) {
        // Every handler call for this connection came before the server closed it.
        let answered = std::mem::take(&mut *backend.answered.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        let seen = check_output(backend, output, &answered);
        let answers = seen.iter().filter(|&&status| status == 505).count() + answered.len();
        assert!(answers <= limit, "{}: {answers} answers, but only {limit} requests before a body", backend.name);
        if !contains(bytes, TOKEN.as_bytes()) {
            for value in fixture.values {
                let escaped = serde_json::to_string(value).expect("a string serializes");
                let escaped = &escaped[1..escaped.len() - 1];
                for form in [value.as_str(), escaped] {
                    assert!(
                        contains(bytes, form.as_bytes()) || !contains(output, form.as_bytes()),
                        "{}: a secret value served without the token",
                        backend.name
                    );
                }
            }
        }
        statuses.push(seen);
    }
    // The loaded APIs answer alike: cached and JIT serve the same secrets.
    assert_eq!(statuses[0], statuses[1], "cached and JIT disagree");
});
