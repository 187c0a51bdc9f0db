//! The listening socket and the limits tiny_http does not set (SPEC §6): we bind the loopback
//! listener ourselves (so a port in use is a clear fatal error), raise the descriptor limit,
//! and run a janitor that closes connections idle for too long.
//!
//! Why a janitor: tiny_http sets no socket timeouts and offers no hook on accepted sockets, and
//! a receive timeout on the *listening* socket would make `accept()` fail, which ends
//! tiny_http's accept thread for good. So once a second we walk our own descriptors, pick the
//! TCP connections on our port, read `TCP_INFO`, and `shutdown()` those that have received
//! nothing for the limit; the tiny_http thread blocked reading one then ends.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A connection that has received nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
const JANITOR_PERIOD: Duration = Duration::from_secs(1);

/// Binds `127.0.0.1:<port>`; never a wildcard address.
pub fn bind_loopback(port: u16) -> Result<TcpListener, String> {
    let address = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let listener = TcpListener::bind(address).map_err(|error| format!("cannot listen on {address}: {error}"))?;
    disable_nagle(listener.as_raw_fd());
    Ok(listener)
}

/// Sets `TCP_NODELAY`, which Linux copies from a listening socket to the connections it
/// accepts. tiny_http writes a response's head and body separately; with Nagle's algorithm the
/// body would wait for the client's delayed ACK of the head, 40 ms per keep-alive request.
fn disable_nagle(fd: RawFd) {
    let enabled: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `enabled`.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&enabled as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Binds a Unix socket at `path` with mode 0660. A stale socket file left by a previous run is
/// replaced; a live one (something answers on it) or a file that is not a socket is an error.
///
/// `bind` creates the socket file with mode 0777 minus the umask, so the mode is set by the
/// umask during `bind` rather than by a chmod afterwards, which would leave the file open to
/// anyone between the two calls. The umask is process-wide; changing it for this one call is
/// safe because the agent binds before it starts any thread (signals, telemetry, servers and
/// the poller all come later), so nothing else creates a file meanwhile — and a file created
/// in that instant anyway would get fewer permissions, never more.
pub fn bind_unix(path: &Path) -> Result<UnixListener, String> {
    let cannot = |why: String| format!("cannot listen on unix:{}: {why}", path.display());
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if !metadata.file_type().is_socket() {
            return Err(cannot("the path exists and is not a socket".into()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(cannot("another process is listening on it".into()));
        }
        std::fs::remove_file(path).map_err(|error| cannot(format!("cannot remove the stale socket: {error}")))?;
    }
    // SAFETY: umask only swaps the process's file mode creation mask; the old one is restored.
    let previous = unsafe { libc::umask(0o117) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(previous) };
    bound.map_err(|error| cannot(error.to_string()))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, so many clients do not make `accept()`
/// fail (which would stop tiny_http's accept thread).
pub fn raise_file_descriptor_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Starts the idle-connection janitor for connections whose local port is `port`.
pub fn spawn_idle_janitor(port: u16, idle_limit: Duration, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new().name("idle-janitor".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(JANITOR_PERIOD);
            close_idle_connections(port, idle_limit);
        }
    })?;
    Ok(())
}

/// One sweep: shuts down every accepted TCP connection on `port` idle longer than `idle_limit`.
pub fn close_idle_connections(port: u16, idle_limit: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else { return 0 };
    let mut closed = 0;
    for entry in entries.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|name| name.parse::<RawFd>().ok()) else { continue };
        let is_socket =
            std::fs::read_link(entry.path()).is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if is_socket && is_idle_connection(fd, port, idle_limit) {
            // SAFETY: shutdown on a descriptor we own; it only changes the socket's state. The
            // checks just above ran on this same descriptor, so a descriptor reused since the
            // directory listing is a fresh connection that fails the idle check.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            closed += 1;
        }
    }
    closed
}

fn is_idle_connection(fd: RawFd, port: u16, idle_limit: Duration) -> bool {
    local_tcp_port(fd) == Some(port)
        && !is_listening(fd)
        && milliseconds_since_last_receive(fd).is_some_and(|ms| u128::from(ms) > idle_limit.as_millis())
}

fn local_tcp_port(fd: RawFd) -> Option<u16> {
    // SAFETY: sockaddr_storage is plain data; getsockname writes at most `length` bytes.
    unsafe {
        let mut address: libc::sockaddr_storage = std::mem::zeroed();
        let mut length = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getsockname(fd, (&mut address as *mut libc::sockaddr_storage).cast(), &mut length) != 0 {
            return None;
        }
        match i32::from(address.ss_family) {
            libc::AF_INET => {
                let v4 = &*(&address as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                Some(u16::from_be(v4.sin_port))
            }
            libc::AF_INET6 => {
                let v6 = &*(&address as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                Some(u16::from_be(v6.sin6_port))
            }
            _ => None,
        }
    }
}

fn is_listening(fd: RawFd) -> bool {
    let mut accepting: libc::c_int = 0;
    let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `length` bytes into `accepting`.
    let result = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut accepting as *mut libc::c_int).cast(),
            &mut length,
        )
    };
    result != 0 || accepting != 0
}

/// `tcpi_last_data_recv` from `TCP_INFO`: milliseconds since the peer last sent data (since
/// the connection was set up, for one that never sent any).
fn milliseconds_since_last_receive(fd: RawFd) -> Option<u32> {
    // struct tcp_info: 8 one-byte fields, then u32 fields; tcpi_last_data_recv is the 14th u32.
    const LAST_DATA_RECV_OFFSET: usize = 8 + 4 * 11;
    let mut info = [0u8; 104];
    let mut length = info.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `length` bytes into `info`.
    let result =
        unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut length) };
    if result != 0 || (length as usize) < LAST_DATA_RECV_OFFSET + 4 {
        return None;
    }
    let bytes: [u8; 4] = info[LAST_DATA_RECV_OFFSET..LAST_DATA_RECV_OFFSET + 4].try_into().ok()?;
    Some(u32::from_ne_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn raises_the_descriptor_limit_to_the_hard_limit() {
        raise_file_descriptor_limit();
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes only the struct we pass.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        assert_eq!(limit.rlim_cur, limit.rlim_max);
    }

    #[test]
    fn accepted_connections_inherit_no_delay() {
        let listener = bind_loopback(0).unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap(), "responses would wait for delayed ACKs");
    }

    #[test]
    fn port_in_use_is_an_error_naming_the_address() {
        let first = bind_loopback(0).unwrap();
        let port = first.local_addr().unwrap().port();
        let error = bind_loopback(port).unwrap_err();
        assert!(error.starts_with(&format!("cannot listen on 127.0.0.1:{port}: ")), "{error}");
    }

    #[test]
    fn unix_socket_has_mode_0660_and_replaces_only_stale_sockets() {
        let directory = std::env::temp_dir().join(format!("clef-socket-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("agent.sock");
        let _ = std::fs::remove_file(&path);
        // SAFETY: umask only swaps the process's mask, and the old one is put back at once.
        let process_umask = || unsafe {
            let mask = libc::umask(0o022);
            libc::umask(mask);
            mask
        };
        let umask_before = process_umask();
        let live = bind_unix(&path).unwrap();
        assert_eq!(process_umask(), umask_before, "bind_unix left its umask in place");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o660);
        assert!(bind_unix(&path).unwrap_err().ends_with("another process is listening on it"));
        drop(live);
        assert!(bind_unix(&path).is_ok(), "a stale socket file is replaced");
        let regular = directory.join("not-a-socket");
        std::fs::write(&regular, "x").unwrap();
        assert!(bind_unix(&regular).unwrap_err().ends_with("the path exists and is not a socket"));
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn janitor_closes_only_idle_connections() {
        let listener = bind_loopback(0).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut idle_client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_idle_server_side, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut active_client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_active_server_side, _) = listener.accept().unwrap();
        active_client.write_all(b"x").unwrap();
        // With a 200 ms limit, only the connection that has been quiet for 300 ms goes.
        assert_eq!(close_idle_connections(port, Duration::from_millis(200)), 1);
        let mut buffer = [0u8; 1];
        idle_client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(idle_client.read(&mut buffer).unwrap(), 0, "the idle connection was not closed");
        assert_eq!(close_idle_connections(port, Duration::from_secs(60)), 0);
    }
}
