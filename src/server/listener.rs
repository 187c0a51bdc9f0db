//! The listening socket (SPEC §6): we bind the loopback listener ourselves (so a port in use is
//! a clear fatal error) and raise the descriptor limit. The limits on each accepted connection
//! (idle and head timeouts, sizes, the connection cap) are set by the patched tiny_http on the
//! accepted sockets, never on the listener: a receive timeout on the *listening* socket would
//! make `accept()` fail, which ends tiny_http's accept loop for good.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

use crate::files::{bind_unix_socket, SocketError};

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

/// Binds a Unix socket at `path` with mode 0660 (set by the umask during `bind`, never wider
/// for an instant). A stale socket file left by a previous run is replaced; a live one
/// (something answers on it) or a file that is not a socket is an error. The agent binds
/// before it starts any thread (signals, telemetry, servers and the poller all come later),
/// so the process-wide umask is safe to change for that call.
pub fn bind_unix(path: &Path) -> Result<UnixListener, String> {
    bind_unix_socket(path, 0o117).map_err(|error| {
        let why = match error {
            SocketError::NotASocket => "the path exists and is not a socket".to_string(),
            SocketError::InUse => "another process is listening on it".to_string(),
            SocketError::RemoveStale(error) => format!("cannot remove the stale socket: {error}"),
            SocketError::Bind(error) => error.to_string(),
        };
        format!("cannot listen on unix:{}: {why}", path.display())
    })
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

#[cfg(test)]
mod tests {
    use super::*;
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
}
