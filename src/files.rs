//! Reading files that someone else may have put in place: the file source, the disk cache and
//! the token file. Each is opened without waiting on a FIFO (`O_NONBLOCK`; a regular file
//! ignores it), optionally without following a symbolic link (`O_NOFOLLOW`), checked on the
//! open descriptor (so it cannot be swapped after the check), and read up to a limit, so a
//! device such as `/dev/zero` cannot fill the memory. And binding a Unix socket in a directory
//! others may write in ([`bind_unix_socket`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Whether a symbolic link at the path itself is followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Links {
    /// Volume mounts (Kubernetes ConfigMaps and Secrets) are links: the file source follows.
    Follow,
    /// The open fails with `ELOOP` (see [`is_symbolic_link`]).
    Refuse,
}

/// Opens `path` for reading without blocking on a FIFO; the caller checks what it opened.
pub fn open(path: &Path, links: Links) -> io::Result<File> {
    let flags = match links {
        Links::Follow => libc::O_NONBLOCK,
        Links::Refuse => libc::O_NONBLOCK | libc::O_NOFOLLOW,
    };
    OpenOptions::new().read(true).custom_flags(flags).open(path)
}

/// The error of [`open`] with [`Links::Refuse`] on a symbolic link.
pub fn is_symbolic_link(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::ELOOP)
}

/// The opened descriptor is a regular file (not a FIFO, a device or a directory).
pub fn is_regular(file: &File) -> io::Result<bool> {
    Ok(file.metadata()?.file_type().is_file())
}

/// The whole file when it holds at most `limit` bytes; `None` when it holds more (reading
/// stops one byte past the limit).
pub fn read_at_most(file: &mut File, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// Why a Unix socket could not be bound.
#[derive(Debug)]
pub enum SocketError {
    /// Something that is not a socket is at the path.
    NotASocket,
    /// A live socket is there: something answers on it.
    InUse,
    /// The stale socket file of a previous run could not be removed.
    RemoveStale(io::Error),
    Bind(io::Error),
}

/// Binds a Unix socket at `path` with mode 0777 minus `umask`. A stale socket file left by a
/// previous run is replaced; a live one or a file that is not a socket is an error.
///
/// `bind` creates the socket file with mode 0777 minus the umask, so the mode is set by the
/// umask during `bind` rather than by a chmod afterwards, which would leave the file open to
/// anyone between the two calls. The umask is process-wide: callers bind before the agent
/// starts any thread that creates files — and a file created in that instant anyway would get
/// fewer permissions, never more.
pub fn bind_unix_socket(path: &Path, umask: libc::mode_t) -> Result<UnixListener, SocketError> {
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if !metadata.file_type().is_socket() {
            return Err(SocketError::NotASocket);
        }
        if UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse);
        }
        std::fs::remove_file(path).map_err(SocketError::RemoveStale)?;
    }
    // SAFETY: umask only swaps the process's file mode creation mask; the old one is restored.
    let previous = unsafe { libc::umask(umask) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(previous) };
    bound.map_err(SocketError::Bind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_up_to_the_limit_and_refuses_links_and_nothing_else_when_asked() {
        let dir = std::env::temp_dir().join(format!("clef-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (file, link) = (dir.join("file"), dir.join("link"));
        std::fs::write(&file, b"0123456789").unwrap();
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let mut opened = open(&file, Links::Refuse).unwrap();
        assert!(is_regular(&opened).unwrap());
        assert_eq!(read_at_most(&mut opened, 10).unwrap().as_deref(), Some(&b"0123456789"[..]));
        assert_eq!(read_at_most(&mut open(&file, Links::Follow).unwrap(), 9).unwrap(), None);
        assert!(is_symbolic_link(&open(&link, Links::Refuse).unwrap_err()));
        assert!(open(&link, Links::Follow).is_ok());
        assert!(!is_regular(&open(&dir, Links::Follow).unwrap()).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
