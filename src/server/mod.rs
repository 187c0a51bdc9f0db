//! The HTTP server: tiny_http on a listener we bound, answering each request on the thread that
//! read it (a patched tiny_http, see vendor/tiny_http/PATCHES.md), and the rules that keep a bad
//! request from costing more than its own answer — limits on heads, bodies, time and
//! connections enforced before a request reaches the routes, a panicking handler costs one 500,
//! a dead accept loop ends the process.

mod accept;
pub mod listener;
pub mod routes;

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use self::routes::{Api, Body, Reply, Request};
use crate::config;

/// A listener bound by [`listener::bind_loopback`] or [`listener::bind_unix`].
pub enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener),
}

pub struct Server {
    http: Arc<tiny_http::Server>,
    /// Waits on `recv()`, which in this mode returns only when the accept loop fails or stops.
    watcher: JoinHandle<()>,
    stopping: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
}

impl Server {
    /// Starts serving `api` on `listener`. A receive error (the accept loop died) is reported
    /// to `on_failure`, because an agent that is alive but deaf must exit for its supervisor.
    pub fn start(
        listener: Bound,
        api: Arc<Api>,
        max_connections: usize,
        on_failure: impl Fn(String) + Send + 'static,
    ) -> Result<Server, String> {
        let stopping = Arc::new(AtomicBool::new(false));
        let listener: tiny_http::Listener = match listener {
            Bound::Tcp(listener) => listener.into(),
            Bound::Unix(listener) => listener.into(),
        };
        let in_flight = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&in_flight);
        let serve = move |request: tiny_http::Request| {
            let _in_flight = InFlight::enter(&counter);
            let reply = answer(&api, &request);
            let _ = request.respond(into_response(reply));
        };
        let http = tiny_http::Server::from_listener_with_handler(listener, limits(max_connections), serve)
            .map_err(|error| error.to_string())?;
        let http = Arc::new(http);
        let (watched, flag) = (Arc::clone(&http), Arc::clone(&stopping));
        let watcher = std::thread::Builder::new()
            .name("http-accept-watch".into())
            .spawn(move || {
                let error = watched.recv().err();
                if !flag.load(Ordering::SeqCst) {
                    let error = error.map_or_else(|| "no error given".to_string(), |error| error.to_string());
                    on_failure(format!("the HTTP server stopped accepting connections: {error}"));
                }
            })
            .map_err(|error| error.to_string())?;
        Ok(Server { http, watcher, stopping, in_flight })
    }

    /// The accept loop is still running (the watchdog's self-check).
    pub fn is_healthy(&self) -> bool {
        !self.watcher.is_finished()
    }

    /// Closes the listener: a new connection is refused, while the connections already open
    /// go on, so a request in flight is answered. The first step of shutdown.
    pub fn stop_accepting(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.http.stop_accepting();
        self.http.unblock();
    }

    /// Waits until `deadline` at most for the requests in flight (after [`Server::stop_accepting`]).
    pub fn finish_requests(self, deadline: Instant) {
        while self.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// What tiny_http (patched, vendor/tiny_http/PATCHES.md) enforces on every connection before a
/// request reaches [`answer`]: the limits of SPEC §11, named in `config`.
pub fn limits(max_connections: usize) -> tiny_http::Limits {
    tiny_http::Limits {
        max_line_bytes: config::MAX_REQUEST_LINE_BYTES,
        max_head_bytes: config::MAX_REQUEST_HEAD_BYTES,
        max_header_fields: config::MAX_REQUEST_HEADER_FIELDS,
        head_timeout: config::REQUEST_HEAD_TIMEOUT,
        idle_timeout: config::IDLE_CONNECTION_TIMEOUT,
        write_timeout: config::RESPONSE_WRITE_STALL_TIMEOUT,
        max_connections,
    }
}

/// Counts a request as in flight until it is dropped, however its handling ends.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> InFlight<'a> {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs the routes for one request; a panic becomes a 500 and the connection's thread lives on.
/// Public for the `http` fuzz target, which serves through the real tiny_http with it.
pub fn answer(api: &Api, request: &tiny_http::Request) -> Reply {
    let method = request.method().as_str();
    let header = |name: &'static str| request.headers().iter().filter(move |header| header.field.equiv(name));
    let view = Request {
        method,
        target: request.url(),
        hosts: header("Host").map(|header| header.value.as_str()).collect(),
        authorization: header("Authorization").map(|header| header.value.as_str()).next(),
        forwarded: header("X-Forwarded-For").next().is_some() || header("Forwarded").next().is_some(),
        accept: header("Accept").map(|header| header.value.as_str()).collect(),
    };
    handle_safely(|| api.handle(&view, crate::time::now_ms()))
}

/// Calls `handler`, turning a panic into [`Reply::internal_error`].
pub fn handle_safely(handler: impl FnOnce() -> Reply) -> Reply {
    panic::catch_unwind(AssertUnwindSafe(handler)).unwrap_or_else(|_| Reply::internal_error())
}

/// The reply as tiny_http sends it (public for the `http` fuzz target).
pub fn into_response(reply: Reply) -> tiny_http::Response<BodyReader> {
    let mut headers = Vec::with_capacity(3 + reply.headers.len());
    headers.extend([("Content-Type", reply.content_type), ("X-Content-Type-Options", "nosniff")]);
    if reply.no_store {
        headers.push(("Cache-Control", "no-store"));
    }
    headers.extend(reply.headers.iter().copied());
    let length = reply.body.bytes().len();
    tiny_http::Response::new(
        tiny_http::StatusCode(reply.status),
        Vec::new(),
        BodyReader { body: reply.body, position: 0 },
        Some(length),
        None,
    )
    .with_static_headers(headers)
    // Always `Content-Length`: tiny_http would switch bodies over 32 KiB to chunked encoding,
    // which costs a write per 8 KiB and makes clients reassemble the body.
    .with_chunked_threshold(usize::MAX)
}

/// Streams a reply body straight from where it lives (a shared snapshot included), so serving
/// makes no copy of the secrets.
pub struct BodyReader {
    body: Body,
    position: usize,
}

impl Read for BodyReader {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let rest = self.body.bytes().get(self.position..).unwrap_or_default();
        let count = rest.len().min(buffer.len());
        buffer[..count].copy_from_slice(&rest[..count]);
        self.position += count;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_handler_becomes_a_500() {
        let reply = handle_safely(|| panic!("a handler bug"));
        assert_eq!(reply.status, 500);
        assert_eq!(reply.body.bytes(), br#"{"error":"Internal server error"}"#);
    }

    /// The patched tiny_http's other mode, which the agent does not use, must keep working.
    #[test]
    fn the_patched_tiny_http_still_queues_requests_for_recv() {
        use std::io::Write;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tiny_http::Server::from_listener(listener, None).unwrap();
        let client = std::thread::spawn(move || {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream.write_all(b"GET /queued HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        });
        let request = server.recv_timeout(Duration::from_secs(10)).unwrap().expect("no request reached recv()");
        assert_eq!(request.url(), "/queued");
        request.respond(tiny_http::Response::from_string("answered")).unwrap();
        let answer = client.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("\r\n\r\nanswered"), "{answer}");
    }

    #[test]
    fn body_reader_streams_the_whole_body_in_pieces() {
        let mut reader = BodyReader { body: Body::Static("abcdefgh"), position: 0 };
        let mut buffer = [0u8; 3];
        let mut collected = Vec::new();
        loop {
            let count = reader.read(&mut buffer).unwrap();
            if count == 0 {
                break;
            }
            collected.extend_from_slice(&buffer[..count]);
        }
        assert_eq!(collected, b"abcdefgh");
    }
}
