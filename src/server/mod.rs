//! The HTTP server: tiny_http on a listener we bound, answering each request on the thread that
//! read it (a patched tiny_http, see vendor/tiny_http/PATCHES.md), and the rules that keep a bad
//! request from costing more than its own answer — limits on heads, bodies, time and
//! connections enforced before a request reaches the routes, a panicking handler costs one 500,
//! a dead accept loop ends the process.

mod accept;
pub mod listener;
pub mod routes;

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use self::routes::{Api, Reply, Request};
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
            let _ = respond(request, &reply);
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
        thread_stack_bytes: config::CONNECTION_THREAD_STACK_BYTES,
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
///
/// Allocates nothing: the headers the routes look at are borrowed from the request into arrays
/// on this stack (a request has at most `MAX_REQUEST_HEADER_FIELDS` fields).
pub fn answer(api: &Api, request: &tiny_http::Request) -> Reply {
    let mut hosts = [""; 2];
    let mut host_count = 0;
    let mut accept = [""; config::MAX_REQUEST_HEADER_FIELDS];
    let mut accept_count = 0;
    let (mut authorization, mut forwarded) = (None, false);
    for header in request.headers() {
        let (field, value) = (&header.field, header.value.as_str());
        if field.equiv("Host") {
            // two are as wrong as more: only "exactly one" matters
            if let Some(slot) = hosts.get_mut(host_count) {
                *slot = value;
                host_count += 1;
            }
        } else if field.equiv("Authorization") {
            authorization = authorization.or(Some(value));
        } else if field.equiv("X-Forwarded-For") || field.equiv("Forwarded") {
            forwarded = true;
        } else if field.equiv("Accept") {
            if let Some(slot) = accept.get_mut(accept_count) {
                *slot = value;
                accept_count += 1;
            }
        }
    }
    let view = Request {
        method: request.method().as_str(),
        target: request.url(),
        hosts: &hosts[..host_count],
        authorization,
        forwarded,
        accept: &accept[..accept_count],
    };
    handle_safely(|| api.handle(&view, crate::time::now_ms()))
}

/// Calls `handler`, turning a panic into [`Reply::internal_error`].
pub fn handle_safely(handler: impl FnOnce() -> Reply) -> Reply {
    panic::catch_unwind(AssertUnwindSafe(handler)).unwrap_or_else(|_| Reply::internal_error())
}

/// Sends `reply` (public for the `http` fuzz target). The body goes to the socket from where it
/// lives — the shared snapshot, a constant, the reply's own buffer — in the same `writev` as the
/// head (the patched tiny_http's `respond_with_bytes`): no copy of a secret is made for sending,
/// so none is left in our memory; the kernel's socket buffer is not the process's memory.
pub fn respond(request: tiny_http::Request, reply: &Reply) -> std::io::Result<()> {
    let always =
        [("Content-Type", reply.content_type), ("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store")];
    let always = &always[..if reply.no_store { 3 } else { 2 }];
    let body = reply.body.bytes();
    if reply.headers.is_empty() {
        request.respond_with_bytes(reply.status, always, body)
    } else {
        let headers: Vec<_> = always.iter().chain(&reply.headers).copied().collect();
        request.respond_with_bytes(reply.status, &headers, body)
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
        use std::io::{Read, Write};
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
}
