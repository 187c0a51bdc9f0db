//! Heap allocations per request on a keep-alive connection, counted by a global allocator that
//! counts every allocation of this test process (issue 15: a thread preempted inside musl's
//! `malloc` holds the allocator lock every other connection thread then waits for).
//!
//! The agent's own server code (`server::Server::start` over the patched tiny_http, the real
//! routes and a snapshot refreshed from a fixture artifact) serves on a loopback socket in this
//! process; the client side writes fixed request bytes and reads into a buffer it allocated up
//! front, so it allocates nothing while counting. No other thread of the process works then
//! (the accept loop waits in `accept`, nothing polls), so the count is the server's.
//!
//! `cargo test --test allocations -- --nocapture` prints the count per route.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clef_agent::server::{Bound, Server};

mod in_process;
use in_process::TOKEN;

/// [`System`], counting every block it hands out (`realloc` included: it allocates).
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to `System` unchanged; the counter is an atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the caller's guarantees, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: as for `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most heap allocations one steady-state request of each route may cost. Raise a figure
/// only with a reason: each allocation takes the allocator's lock on a hot path.
const ROUTES: [(&str, &str, usize); 7] = [
    ("/v1/health", "", 0),
    ("/v1/ready", "", 0),
    ("/v1/secrets", "", 0),
    ("/v1/keys", "", 0),
    ("/v1/secrets/database/DB_PASSWORD", "", 0),
    ("/v1/secrets/database", "", 0),
    // `{"value":…}` is rendered for the request alone, into a block wiped when it is freed.
    ("/v1/secrets/database/DB_PASSWORD", "Accept: application/json\r\n", 1),
];

/// Requests counted per route, after a few that fill the per-connection buffers.
const COUNTED: usize = 200;
const WARM_UP: usize = 5;

/// Sends `request` and reads its whole answer into `answer` (which never grows: it was
/// allocated big enough); returns the status.
fn exchange(stream: &mut TcpStream, request: &[u8], answer: &mut [u8]) -> u16 {
    stream.write_all(request).expect("request sent");
    let mut filled = 0;
    loop {
        let read = stream.read(&mut answer[filled..]).expect("answer read");
        assert!(read > 0, "the server closed the connection");
        filled += read;
        let Some(head_end) = answer[..filled].windows(4).position(|window| window == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&answer[..head_end]).expect("an ASCII head");
        let length: usize = head
            .split("\r\n")
            .find_map(|line| line.strip_prefix("Content-Length: "))
            .and_then(|value| value.parse().ok())
            .expect("every answer has a Content-Length");
        if filled >= head_end + 4 + length {
            assert_eq!(filled, head_end + 4 + length, "one answer per request");
            return head[9..12].parse().expect("a status code");
        }
    }
}

#[test]
fn steady_state_requests_on_a_keep_alive_connection_allocate_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let port = listener.local_addr().expect("a bound port").port();
    let api = in_process::api(None);
    let _server = Server::start(Bound::Tcp(listener), api, 16, |message| panic!("{message}")).expect("serving");
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connected");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
    let mut answer = vec![0u8; 64 * 1024];
    let mut too_many = Vec::new();
    for (path, accept, most) in ROUTES {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n{accept}\r\n")
                .into_bytes();
        for _ in 0..WARM_UP {
            assert_eq!(exchange(&mut stream, &request, &mut answer), 200, "{path}");
        }
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        for _ in 0..COUNTED {
            exchange(&mut stream, &request, &mut answer);
        }
        let per_request = (ALLOCATIONS.load(Ordering::SeqCst) - before) as f64 / COUNTED as f64;
        println!("{path:<40} {per_request:>6.2} allocations per request (at most {most})");
        if per_request > most as f64 {
            too_many.push(format!("{path}: {per_request:.2} > {most}"));
        }
    }
    assert!(too_many.is_empty(), "more allocations per request than allowed: {too_many:?}");
}
