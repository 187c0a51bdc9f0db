//! Connection threads run on a small explicit stack (`config::CONNECTION_THREAD_STACK_BYTES`,
//! through the patched tiny_http's `Limits::thread_stack_bytes`). This serves every kind of
//! request — each route, each refusal, a JIT decryption, a handler that panics — through the
//! agent's own `server::answer` and `server::respond` on connection threads with a quarter of that
//! stack, in the test's unoptimized build, whose frames are larger than the release build's. A
//! stack overflow aborts this test process.
//!
//! To measure the deepest use, lower `STACK_BYTES` until this test aborts: on 2026-12-03 it
//! passed with 80 KiB and aborted with 72 KiB (debug build).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use clef_agent::config::CONNECTION_THREAD_STACK_BYTES;
use clef_agent::server::routes::Api;
use clef_agent::server::{answer, handle_safely, respond};

mod in_process;
use in_process::TOKEN;

const STACK_BYTES: usize = CONNECTION_THREAD_STACK_BYTES / 4;

/// The size of the calling thread's stack, as the C library gave it.
fn own_stack_bytes() -> usize {
    // SAFETY: `attributes` is initialized by `pthread_getattr_np` before it is read and
    // destroyed once; the out-pointers point at locals.
    unsafe {
        let mut attributes: libc::pthread_attr_t = std::mem::zeroed();
        assert_eq!(libc::pthread_getattr_np(libc::pthread_self(), &mut attributes), 0);
        let (mut bottom, mut size) = (std::ptr::null_mut(), 0);
        assert_eq!(libc::pthread_attr_getstack(&attributes, &mut bottom, &mut size), 0);
        libc::pthread_attr_destroy(&mut attributes);
        size
    }
}

/// Serves `api` as the agent does, on threads with a stack of [`STACK_BYTES`]; `/panic` runs a
/// handler that panics, as a bug in a route would, and `/stack` answers 200 when the thread's
/// stack is the size asked for (to a page or two), 500 when it is not.
fn serve(api: Arc<Api>) -> (tiny_http::Server, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let port = listener.local_addr().expect("a bound port").port();
    let limits = tiny_http::Limits { thread_stack_bytes: STACK_BYTES, ..clef_agent::server::limits(16) };
    let server = tiny_http::Server::from_listener_with_handler(listener, limits, move |request| {
        let reply = match request.url() {
            "/panic" => handle_safely(|| panic!("a handler bug")),
            "/stack" => handle_safely(|| {
                assert!(own_stack_bytes() <= STACK_BYTES + 16 * 1024, "a stack of {} bytes", own_stack_bytes());
                answer(&api, &request)
            }),
            _ => answer(&api, &request),
        };
        let _ = respond(request, &reply);
    })
    .expect("serving");
    (server, port)
}

/// Sends each request on its own connection (`Connection: close`); returns each status.
fn statuses(port: u16, requests: &[(&str, &str, &str)]) -> Vec<u16> {
    requests
        .iter()
        .map(|(method, target, headers)| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connected");
            stream.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
            let request =
                format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).expect("request sent");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).expect("an answer, not a crashed thread");
            answer.get(9..12).and_then(|status| status.parse().ok()).unwrap_or(0)
        })
        .collect()
}

#[test]
fn every_kind_of_request_fits_in_a_quarter_of_the_connection_stack() {
    // The agent's panic hook prints only where a panic happened; the test harness's own hook
    // would capture a backtrace, which the agent never does.
    std::panic::set_hook(Box::new(|info| eprintln!("panic at {:?}", info.location())));
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    let json = format!("{bearer}Accept: text/plain;q=0.5, application/json\r\n");
    let requests = [
        ("GET", "/v1/health", ""),
        ("GET", "/v1/ready", ""),
        ("GET", "/v1/secrets", bearer.as_str()),
        ("HEAD", "/v1/secrets", bearer.as_str()),
        ("GET", "/v1/keys", bearer.as_str()),
        ("GET", "/v1/secrets/database", bearer.as_str()),
        ("GET", "/v1/secrets/database/DB_PASSWORD", bearer.as_str()),
        ("GET", "/v1/secrets/unicode/GREETING", json.as_str()),
        ("GET", "/v1/secrets/database__DB_HOST", bearer.as_str()),
        ("GET", "/v1/secrets/database/NOPE", bearer.as_str()),
        ("GET", "/v1/secrets/%zz", bearer.as_str()),
        ("GET", "/v1/secrets", ""),
        ("POST", "/v1/secrets", bearer.as_str()),
        ("GET", "/nowhere", ""),
        ("GET", "/panic", ""),
        ("GET", "/stack", ""),
    ];
    let expected = [200, 200, 200, 200, 200, 200, 200, 200, 200, 404, 400, 401, 405, 404, 500, 404];
    for cache_ttl in [None, Some("0")] {
        let (_server, port) = serve(in_process::api(cache_ttl));
        assert_eq!(statuses(port, &requests), expected, "CLEF_AGENT_CACHE_TTL {cache_ttl:?}");
    }
    let _ = std::panic::take_hook();
}
