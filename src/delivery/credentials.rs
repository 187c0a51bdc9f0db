//! `CLEF_AGENT_CREDENTIAL_SOCKET`: systemd's `LoadCredential=<id>:<socket>` (systemd.exec(5)).
//!
//! When a unit starts, systemd (as root) connects to this `AF_UNIX` stream socket from a
//! socket bound to the abstract name `\0<random>/unit/<unit>/<id>`, reads until end of file,
//! and puts what it read in `$CREDENTIALS_DIRECTORY/<id>` of that unit. The agent reads that
//! peer name, looks `<id>` up as `/v1/keys` names it (`<ns>__<key>`, or a flat key) in what it
//! serves now, writes the value and closes. An unknown id, a unit not allowed by
//! `CLEF_AGENT_CREDENTIAL_UNITS`, or no secrets to serve (not loaded, wiped, expired): closed
//! with nothing written, and a log line naming unit and id, never a value.
//!
//! Anyone who can connect may claim any unit (the peer chooses its own name), so the socket is
//! the agent's user's only: mode 0600, set by the umask at `bind` so it is never wider. A client
//! that connects and never reads costs one of [`MAX_CREDENTIAL_CONNECTIONS`] for at most
//! [`CREDENTIAL_WRITE_TIMEOUT`] in all; beyond that many, connections are closed at once.

use std::io::Write;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Delivery, Subscriber};
use crate::config::{ConfigError, CredentialConfig};
use crate::decrypt::DecryptionKeys;
use crate::files::{bind_unix_socket, SocketError};
use crate::log;
use crate::snapshot::{LiveSnapshot, Served, Snapshot};

/// Connections handled at once; one more is closed unanswered.
pub const MAX_CREDENTIAL_CONNECTIONS: usize = 16;
/// An answer not taken within this long (in all) is abandoned and the connection closed.
pub const CREDENTIAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The bound socket, not yet serving.
pub struct Bound {
    listener: UnixListener,
    path: PathBuf,
    units: Option<Vec<String>>,
}

impl Bound {
    /// Binds with mode 0600. Like `server::listener::bind_unix`, this runs before the agent
    /// starts any thread that creates files, so the process-wide umask is safe to change.
    pub fn bind(config: &CredentialConfig) -> Result<Bound, ConfigError> {
        let path = &config.socket;
        let fail = |why: String| ConfigError::new(format!("CLEF_AGENT_CREDENTIAL_SOCKET {}: {why}", path.display()));
        let listener = bind_unix_socket(path, 0o177).map_err(|error| {
            fail(match error {
                SocketError::NotASocket => {
                    "the path exists and is not a socket; remove it or choose another path".to_string()
                }
                SocketError::InUse => "another process is listening on it".to_string(),
                SocketError::RemoveStale(error) => format!("cannot remove the stale socket: {error}"),
                SocketError::Bind(error) => format!("cannot listen on it: {error}"),
            })
        })?;
        Ok(Bound { listener, path: path.clone(), units: config.units.clone() })
    }

    /// Serves on a thread of its own until the process exits; the socket file is removed at
    /// shutdown by the returned subscriber.
    pub fn serve(self, cell: Arc<LiveSnapshot>, keys: Arc<DecryptionKeys>) -> std::io::Result<SocketFile> {
        log::info(&format!("credential socket listening at unix:{}", self.path.display()));
        let units = Arc::new(self.units);
        let active = Arc::new(AtomicUsize::new(0));
        let (listener, path) = (self.listener, self.path);
        std::thread::Builder::new()
            .name("credentials".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    if active.fetch_add(1, Ordering::SeqCst) >= MAX_CREDENTIAL_CONNECTIONS {
                        active.fetch_sub(1, Ordering::SeqCst);
                        log::error(&format!(
                            "credential: {MAX_CREDENTIAL_CONNECTIONS} connections are open already; closing a new one unanswered"
                        ));
                        continue;
                    }
                    let (cell, keys, units, done) =
                        (Arc::clone(&cell), Arc::clone(&keys), Arc::clone(&units), Arc::clone(&active));
                    let spawned = std::thread::Builder::new().name("credential".into()).spawn(move || {
                        answer(stream, &cell, &keys, units.as_deref());
                        done.fetch_sub(1, Ordering::SeqCst);
                    });
                    if spawned.is_err() {
                        active.fetch_sub(1, Ordering::SeqCst);
                        log::error("credential: cannot start a thread; closing a connection unanswered");
                    }
                }
            })
?;
        Ok(SocketFile(path))
    }
}

/// Removes the socket file when the agent stops (its listener goes with the process).
pub struct SocketFile(PathBuf);

impl Subscriber for SocketFile {
    fn notify(&self, event: &Delivery) {
        if let Delivery::Shutdown = event {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// One connection: who asks for what, then the value or nothing.
fn answer(mut stream: UnixStream, cell: &LiveSnapshot, keys: &DecryptionKeys, units: Option<&[String]>) {
    let peer = stream.peer_addr().ok();
    let Some((unit, id)) = peer.as_ref().and_then(|peer| peer.as_abstract_name()).and_then(parse_peer_name) else {
        log::error("credential: refused a connection whose socket name is not systemd's \\0<random>/unit/<unit>/<id>");
        return;
    };
    let refuse = |why: &str| log::error(&format!("credential: refused {id} to {unit}: {why}"));
    if !units.is_none_or(|patterns| patterns.iter().any(|pattern| glob_matches(pattern, unit))) {
        return refuse("the unit is not in CLEF_AGENT_CREDENTIAL_UNITS");
    }
    let snapshot = match current_snapshot(cell, keys) {
        Ok(snapshot) => snapshot,
        Err(why) => return refuse(&why),
    };
    let Some(part) = snapshot.flat_value(id) else {
        return refuse("no such key (the id is a name of /v1/keys: <namespace>__<key>, or a flat key)");
    };
    match write_within(&mut stream, snapshot.body(part), CREDENTIAL_WRITE_TIMEOUT) {
        Ok(()) => log::info(&format!("credential: gave {id} to {unit}")),
        Err(error) => log::error(&format!("credential: could not give {id} to {unit}: {error}")),
    }
}

/// Writes all of `bytes` within `limit` in all (a socket timeout alone bounds each `write`,
/// and a reader that takes a little now and then would make each one progress).
fn write_within(stream: &mut UnixStream, mut bytes: &[u8], limit: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + limit;
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the peer did not read it in time"));
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => bytes = &bytes[written..],
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// `<random>/unit/<unit>/<id>` → (unit, id), as systemd names its end (systemd.exec(5)).
fn parse_peer_name(name: &[u8]) -> Option<(&str, &str)> {
    let name = std::str::from_utf8(name).ok()?;
    let mut parts = name.splitn(4, '/');
    let (_random, kind, unit, id) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (kind == "unit" && !unit.is_empty() && !id.is_empty() && !id.contains('/')).then_some((unit, id))
}

/// `*` matches any run of characters (none too); every other character itself.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else { return pattern == text };
    let Some(mut remaining) = text.strip_prefix(first) else { return false };
    let pieces: Vec<&str> = rest.split('*').collect();
    let (last, middle) = pieces.split_last().unwrap_or((&"", &[]));
    for piece in middle {
        match remaining.find(piece) {
            Some(at) => remaining = &remaining[at + piece.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

/// What is served now, decrypted (JIT mode decrypts for this one answer, as a request does).
fn current_snapshot(cell: &LiveSnapshot, keys: &DecryptionKeys) -> Result<Arc<Snapshot>, String> {
    let now_ms = crate::time::now_ms();
    if cell.is_expired(now_ms) {
        return Err("no successful refresh within CLEF_AGENT_CACHE_TTL".into());
    }
    let served = cell.current();
    if served.expires_at().is_some_and(|expiry| expiry.epoch_ms <= now_ms as i64) {
        return Err("the artifact has expired".into());
    }
    match &*served {
        Served::Cached(snapshot) => Ok(Arc::clone(snapshot)),
        // As a JIT request does: through the refresh pipeline's `open`.
        Served::Jit(sealed) => {
            crate::refresh::open_for_request(sealed, keys).map_err(|error| format!("decryption failed: {error}"))
        }
        Served::NotLoaded => Err("secrets not loaded yet".into()),
        Served::Wiped(_) => Err("the secrets were wiped (revoked, expired or past the TTL)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_unit_and_id_from_systemds_peer_name() {
        assert_eq!(parse_peer_name(b"f00dfeed/unit/app.service/db_password"), Some(("app.service", "db_password")));
        assert_eq!(parse_peer_name(b"x/unit/a@1.service/database__DB_URL"), Some(("a@1.service", "database__DB_URL")));
        for bad in
            [&b"x/unit/app.service"[..], b"x/user/app.service/id", b"x/unit//id", b"x/unit/a/b/c", b"\xff/unit/a/b"]
        {
            assert_eq!(parse_peer_name(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn unit_patterns_match_with_star_globs_only() {
        let cases = [
            ("app.service", "app.service", true),
            ("app.service", "app.services", false),
            ("worker-*.service", "worker-1.service", true),
            ("worker-*.service", "worker-.service", true),
            ("worker-*.service", "worker-1.socket", false),
            ("*", "anything.service", true),
            ("a*b*c", "a-b-b-c", true),
            ("a*b*c", "a-c", false),
            ("*.service", "x.service.d", false),
            ("ab*ba", "aba", false),
        ];
        for (pattern, unit, matches) in cases {
            assert_eq!(glob_matches(pattern, unit), matches, "{pattern} ~ {unit}");
        }
    }
}
