//! The peers the agent calls, played on loopback so a test sees every byte it sends: a small
//! HTTP/1.1 server that records each request and answers with what the test's handler returns
//! (a handler may hold a request open as long as it likes); on it, the Lambda Extensions API
//! and an OTLP collector; and a "proxy" that only records who connects to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::{wait_until, Agent};

/// A keep-alive connection the agent leaves quiet this long is given up.
const IDLE_CONNECTION: Duration = Duration::from_secs(60);

/// One request as the server read it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The request target as sent, query string included.
    pub path: String,
    /// Header names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body, framed by Content-Length (or de-chunked).
    pub body: Vec<u8>,
}

impl Recorded {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(found, _)| *found == name).map(|(_, value)| value.as_str())
    }

    /// How many headers are called `name` (any case).
    pub fn header_count(&self, name: &str) -> usize {
        let name = name.to_ascii_lowercase();
        self.headers.iter().filter(|(found, _)| *found == name).count()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What the handler answers.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// `status` with a JSON body.
    pub fn json(status: u16, body: &str) -> Answer {
        Answer {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Handler = dyn Fn(&Recorded) -> Answer + Send + Sync;

/// An HTTP/1.1 server on a free loopback port, one thread per connection, keep-alive.
pub struct Server {
    pub port: u16,
    requests: Arc<Mutex<Vec<Recorded>>>,
    stopped: Arc<AtomicBool>,
}

impl Server {
    /// Serves until dropped. A request is recorded before the handler runs, so a test sees a
    /// request that the handler is still holding.
    pub fn start(handler: impl Fn(&Recorded) -> Answer + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
        let port = listener.local_addr().expect("no local address").port();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let stopped = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (recorded, stop) = (Arc::clone(&requests), Arc::clone(&stopped));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (recorded, handler) = (Arc::clone(&recorded), Arc::clone(&handler));
                std::thread::spawn(move || serve_connection(stream, &recorded, &*handler));
            }
        });
        Server { port, requests, stopped }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// The requests for `method` `path`, in arrival order.
    pub fn requests_to(&self, method: &str, path: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|request| request.method == method && request.path == path).collect()
    }

    /// Waits until at least `count` requests for `method` `path` arrived; true when they did.
    pub fn wait_for_requests(&self, method: &str, path: &str, count: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.requests_to(method, path).len() >= count)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag and ends.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_connection(stream: TcpStream, recorded: &Mutex<Vec<Recorded>>, handler: &Handler) {
    let _ = stream.set_read_timeout(Some(IDLE_CONNECTION));
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader) {
        let close = request.header("Connection").is_some_and(|value| value.eq_ignore_ascii_case("close"));
        recorded.lock().unwrap().push(request.clone());
        let answer = handler(&request);
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Length: {}\r\n",
            answer.status,
            reason(answer.status),
            answer.body.len()
        );
        for (name, value) in &answer.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        if writer.write_all(head.as_bytes()).and_then(|()| writer.write_all(&answer.body)).is_err() || close {
            return;
        }
    }
}

/// One request, or `None` when the peer closed the connection or sent something unreadable.
fn read_request(reader: &mut impl BufRead) -> Option<Recorded> {
    let request_line = read_line(reader)?;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut request = Recorded { method, path, headers, body: Vec::new() };
    if request.header("Transfer-Encoding").is_some_and(|coding| coding.eq_ignore_ascii_case("chunked")) {
        request.body = read_chunked(reader)?;
    } else if let Some(length) = request.header("Content-Length") {
        let mut body = vec![0u8; length.parse().ok()?];
        reader.read_exact(&mut body).ok()?;
        request.body = body;
    }
    Some(request)
}

fn read_chunked(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let size_line = read_line(reader)?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            // Trailers, if any, end with an empty line.
            while !read_line(reader)?.is_empty() {}
            return Some(body);
        }
        let mut chunk = vec![0u8; size];
        reader.read_exact(&mut chunk).ok()?;
        body.extend_from_slice(&chunk);
        read_line(reader)?;
    }
}

/// A line without its CRLF; `None` at end of stream.
fn read_line(reader: &mut impl BufRead) -> Option<String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end_matches(['\r', '\n']).to_string()),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        403 => "Forbidden",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

/// The Extensions API's paths, and the identifier it hands out at registration.
pub const REGISTER: &str = "/2020-01-01/extension/register";
pub const NEXT: &str = "/2020-01-01/extension/event/next";
pub const IDENTIFIER: &str = "4d3a0c6f-0e2b-4b8e-9d3c-7a1b2c3d4e5f";
/// The INVOKE event as AWS documents it.
pub const INVOKE: &str = r#"{"eventType":"INVOKE","deadlineMs":1795554936600,"requestId":"3da1f2dc-3222-475e-9205-e2e6c6318895","invokedFunctionArn":"arn:aws:lambda:us-east-1:123456789012:function:ExtensionTest","tracing":{"type":"X-Amzn-Trace-Id","value":"Root=1-5f35ae12-0c0fec141ab77a00bc047aa2;Parent=2be948a625588e32;Sampled=1"}}"#;
/// The SHUTDOWN event as AWS documents it.
pub const SHUTDOWN: &str = r#"{"eventType":"SHUTDOWN","shutdownReason":"spindown","deadlineMs":1795554938600}"#;
/// How long the API waits for the agent: each step takes it milliseconds.
const STEP: Duration = Duration::from_secs(5);

/// The Lambda Extensions API as AWS documents it: `register` answers at once, `event/next` is
/// held until [`ExtensionsApi::release`]; each arrival notes the agent's `/v1/health`.
pub struct ExtensionsApi {
    pub server: Server,
    release: Sender<&'static str>,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
}

/// A request to the Extensions API, and the agent's `/v1/health` at the moment it arrived.
struct Arrival {
    path: String,
    health: Option<Value>,
}

impl ExtensionsApi {
    /// An API for the agent that will serve on `agent_port`.
    pub fn start(agent_port: u16) -> ExtensionsApi {
        let (release, scripted) = mpsc::channel::<&'static str>();
        let scripted = Mutex::new(scripted);
        let arrivals: Arc<Mutex<Vec<Arrival>>> = Arc::default();
        let observed = Arc::clone(&arrivals);
        let server = Server::start(move |request| {
            observed.lock().unwrap().push(Arrival { path: request.path.clone(), health: agent_health(agent_port) });
            let identified = request.header("Lambda-Extension-Identifier") == Some(IDENTIFIER);
            match (request.method.as_str(), request.path.as_str()) {
                ("POST", REGISTER) if request.header("Lambda-Extension-Name").is_some() => Answer::json(
                    200,
                    r#"{"functionName":"ExtensionTest","functionVersion":"$LATEST","handler":"index.handler"}"#,
                )
                .with_header("Lambda-Extension-Identifier", IDENTIFIER),
                ("GET", NEXT) if identified => match scripted.lock().unwrap().recv() {
                    Ok(event) => Answer::json(200, event)
                        .with_header("Lambda-Extension-Event-Identifier", "8f1b3c0e-4f7a-4a55-9d1e-2b6c7d8e9f00"),
                    // The test is over.
                    Err(_) => Answer::json(500, r#"{"errorMessage":"test over","errorType":"Extension.Unknown"}"#),
                },
                _ => Answer::json(403, r#"{"errorMessage":"Forbidden","errorType":"Extension.ForbiddenException"}"#),
            }
        });
        ExtensionsApi { server, release, arrivals }
    }

    /// `AWS_LAMBDA_RUNTIME_API`.
    pub fn runtime_api(&self) -> String {
        format!("127.0.0.1:{}", self.server.port)
    }

    /// Answers the `event/next` being held (or the next one) with `event`.
    pub fn release(&self, event: &'static str) {
        self.release.send(event).expect("the API is gone");
    }

    pub fn next_requests(&self) -> Vec<Recorded> {
        self.server.requests_to("GET", NEXT)
    }

    /// Waits until the agent has asked for its `count`th event.
    pub fn wait_for_next_request(&self, count: usize, agent: &Agent) {
        assert!(
            self.server.wait_for_requests("GET", NEXT, count, STEP),
            "the agent did not ask for event {count}; requests: {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.server.requests(),
            agent.stdout(),
            agent.stderr()
        );
    }

    /// The agent's `/v1/health` at the moment the `index`th request to `path` (from 0) arrived.
    pub fn health_when(&self, path: &str, index: usize) -> Value {
        let arrivals = self.arrivals.lock().unwrap();
        let arrival = arrivals.iter().filter(|arrival| arrival.path == path).nth(index);
        let arrival = arrival.unwrap_or_else(|| panic!("no request {index} to {path}"));
        arrival
            .health
            .clone()
            .unwrap_or_else(|| panic!("the agent did not answer /v1/health when request {index} to {path} arrived"))
    }
}

/// The agent's `/v1/health` body, or `None` when it does not answer 200 (yet). Never panics:
/// it runs on the API's connection thread.
fn agent_health(port: u16) -> Option<Value> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(STEP)).ok()?;
    write!(stream, "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let answer = String::from_utf8(answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200 ") {
        return None;
    }
    serde_json::from_str(body).ok()
}

/// An OTLP/HTTP collector that accepts every batch.
pub fn collector() -> Server {
    Server::start(|_| Answer::json(200, r#"{"partialSuccess":{}}"#))
}

/// Stands in for an HTTP proxy the agent must not use: records the first bytes of every
/// connection it gets, then hangs up.
pub struct ConnectionRecorder {
    pub port: u16,
    connections: Arc<Mutex<Vec<String>>>,
    stopped: Arc<AtomicBool>,
}

impl ConnectionRecorder {
    pub fn start() -> ConnectionRecorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
        let port = listener.local_addr().expect("no local address").port();
        let connections: Arc<Mutex<Vec<String>>> = Arc::default();
        let stopped = Arc::new(AtomicBool::new(false));
        let (recorded, stop) = (Arc::clone(&connections), Arc::clone(&stopped));
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                let mut first_bytes = [0u8; 512];
                let count = stream.read(&mut first_bytes).unwrap_or(0);
                recorded.lock().unwrap().push(String::from_utf8_lossy(&first_bytes[..count]).into_owned());
            }
        });
        ConnectionRecorder { port, connections, stopped }
    }

    /// `http://127.0.0.1:<port>`, the value for `HTTP_PROXY` and friends.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What each connection sent first (empty for a connection that sent nothing).
    pub fn connections(&self) -> Vec<String> {
        self.connections.lock().unwrap().clone()
    }

    /// Every proxy variable a client library might read, pointing here.
    pub fn proxy_env(&self) -> Vec<(&'static str, String)> {
        ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
            .into_iter()
            .map(|name| (name, self.url()))
            .collect()
    }
}

impl Drop for ConnectionRecorder {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// The longest a [`HeldSource`] holds a fetch, so its threads end after a failed test too.
const LONGEST_HOLD: Duration = Duration::from_secs(60);

/// An HTTP artifact source that answers its first fetch (start-up) at once and holds every
/// later one — a fetch that hangs — until [`HeldSource::release`] (or until it is dropped).
pub struct HeldSource {
    pub server: Server,
    released: Arc<(Mutex<bool>, Condvar)>,
    /// Later fetches are held; until then ([`HeldSource::failing`]) they fail at once.
    holding: Arc<AtomicBool>,
}

impl HeldSource {
    pub const PATH: &'static str = "/held/artifact.age.json";

    pub fn start(artifact: String) -> HeldSource {
        Self::with_later_fetches(artifact, true)
    }

    /// Like [`HeldSource::start`], but later fetches fail at once (HTTP 500) until
    /// [`HeldSource::hold`].
    pub fn failing(artifact: String) -> HeldSource {
        Self::with_later_fetches(artifact, false)
    }

    fn with_later_fetches(artifact: String, held: bool) -> HeldSource {
        let released: Arc<(Mutex<bool>, Condvar)> = Arc::default();
        let holding = Arc::new(AtomicBool::new(held));
        let (gate, hold) = (Arc::clone(&released), Arc::clone(&holding));
        let first = AtomicBool::new(true);
        let server = Server::start(move |_| {
            if !first.swap(false, Ordering::SeqCst) {
                if !hold.load(Ordering::SeqCst) {
                    return Answer::json(500, r#"{"error":"down"}"#);
                }
                let (open, changed) = &*gate;
                let open = open.lock().unwrap();
                let _ = changed.wait_timeout_while(open, LONGEST_HOLD, |open| !*open).unwrap();
            }
            Answer::json(200, &artifact)
        });
        HeldSource { server, released, holding }
    }

    /// From now on, later fetches are held.
    pub fn hold(&self) {
        self.holding.store(true, Ordering::SeqCst);
    }

    /// `CLEF_AGENT_SOURCE`.
    pub fn url(&self) -> String {
        self.server.url(Self::PATH)
    }

    /// How many fetches arrived (held ones included).
    pub fn fetches(&self) -> usize {
        self.server.requests_to("GET", Self::PATH).len()
    }

    /// Waits until at least `count` fetches arrived; true when they did.
    pub fn wait_for_fetches(&self, count: usize, timeout: Duration) -> bool {
        self.server.wait_for_requests("GET", Self::PATH, count, timeout)
    }

    /// Answers the fetches held and every later one at once.
    pub fn release(&self) {
        let (open, changed) = &*self.released;
        *open.lock().unwrap() = true;
        changed.notify_all();
    }
}

impl Drop for HeldSource {
    fn drop(&mut self) {
        self.release();
    }
}
