//! clef-agent patch: the limits a server puts on each connection. Stock tiny_http had none: a
//! head could grow without bound, a body of any declared length was read (or its remainder
//! allocated), a client could hold a thread forever by sending one byte now and then, and every
//! connection got a thread. These are checked in `client.rs` (head, body, time) and in the
//! accept loop in `lib.rs` (connections, write stalls).

use std::time::Duration;

/// Per-connection limits, checked before anything of a request reaches the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line or header line, without its CRLF; beyond it `431` and close.
    pub max_line_bytes: usize,
    /// Longest request head (request line, header lines and the empty line); beyond it `431`.
    pub max_head_bytes: usize,
    /// Most header fields in one request; beyond it `431` and close.
    pub max_header_fields: usize,
    /// A head must be complete this long after its first byte arrived; else `408` and close.
    pub head_timeout: Duration,
    /// A connection with no request in progress is closed after this long without a byte.
    pub idle_timeout: Duration,
    /// A response write that makes no progress for this long (a client that stopped reading)
    /// fails, and the connection is closed.
    pub write_timeout: Duration,
    /// Connections open at once; the next one gets `503` and is closed at once.
    pub max_connections: usize,
    /// The stack of each connection's thread (`std::thread::Builder::stack_size`), instead of
    /// Rust's 2 MiB default: reading heads and writing answers needs little, the handler's
    /// needs decide.
    pub thread_stack_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_line_bytes: 8 * 1024,
            max_head_bytes: 64 * 1024,
            max_header_fields: 100,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_connections: 512,
            thread_stack_bytes: 256 * 1024,
        }
    }
}
