//! A client that asks for one answer and reads it at the pace a test sets, through a small
//! receive buffer, so that the agent is still writing the answer while the client reads: a
//! slow reader of a large body (a request in flight for as long as the test likes).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// The client's receive buffer: small, so that little of a large body waits in the kernel.
const RECEIVE_BUFFER_BYTES: libc::c_int = 128 * 1024;
/// What one read takes at most.
const CHUNK: usize = 64 * 1024;
/// A read that waits this long for a byte fails: the agent stopped writing.
const STALL: Duration = Duration::from_secs(15);

pub struct SlowReader {
    stream: TcpStream,
    /// Everything read so far, head included.
    pub received: Vec<u8>,
}

impl SlowReader {
    /// Connects to the agent on `port` and sends `GET path` with `Authorization: Bearer token`.
    pub fn get(port: u16, path: &str, token: &str) -> SlowReader {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|error| panic!("connect :{port}: {error}"));
        // SAFETY: setsockopt reads one c_int from the pointer we pass, on a socket we own.
        let set = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&RECEIVE_BUFFER_BYTES as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "SO_RCVBUF: {}", io::Error::last_os_error());
        stream.set_read_timeout(Some(STALL)).unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
        (&stream).write_all(request.as_bytes()).unwrap();
        SlowReader { stream, received: Vec::new() }
    }

    /// Reads until `total` bytes in all have arrived or the agent closed the connection,
    /// pausing `pause` after each read of at most 64 KiB (the pace is what a test is about).
    pub fn read(&mut self, total: usize, pause: Duration) -> io::Result<()> {
        let mut chunk = vec![0u8; CHUNK];
        while self.received.len() < total {
            let count = self.stream.read(&mut chunk)?;
            if count == 0 {
                return Ok(());
            }
            self.received.extend_from_slice(&chunk[..count]);
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        }
        Ok(())
    }

    /// The status code and the body of what was read (the body as far as it arrived).
    pub fn answer(&self) -> (u16, &[u8]) {
        let end = self.received.windows(4).position(|window| window == b"\r\n\r\n").expect("no end of the head");
        let head = String::from_utf8_lossy(&self.received[..end]);
        let status = head.get(9..12).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("bad head {head:?}"));
        (status, &self.received[end + 4..])
    }
}
