//! The disk cache (`CLEF_AGENT_CACHE_PATH`, SPEC §4): the last accepted artifact exactly as it
//! was fetched — still encrypted — and a small metadata file with the artifact's SHA-256, its
//! content hash and when it was last fetched, so an agent restarted during a source outage can
//! still serve. Nothing decrypted is ever written. Files are written to a temporary name and
//! renamed (a reader never sees half a file), mode 0600. With a verify key it also keeps the
//! rollback high-water mark (`<stem>.rollback-mark`), which no purge removes.
//!
//! Whoever can write the directory chooses what a restarted agent serves (within what the
//! keys accept) and can make it hang or exhaust memory on a planted file. So the directory must
//! be the agent's own: a real directory (not a symbolic link) owned by the agent's user that
//! its group and others cannot write — checked at start-up (a configuration error otherwise)
//! and before every use. A missing one is created with mode 0700; an existing one is never
//! chmod-ed (`CLEF_AGENT_CACHE_PATH=/tmp` must not change `/tmp`). Its files are opened without
//! following symbolic links and without blocking, must be regular files, and are read up to a
//! size limit. The artifact's SHA-256 in `.meta` catches a pair of files that do not belong
//! together (an exit between the two renames of [`DiskCache::store`]).

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::config::{ConfigError, SourceConfig};
use crate::files::{self, Links};
use crate::log;
use crate::source::MAX_ARTIFACT_BYTES;

/// The largest `.meta` or rollback mark read; both hold a few hundred bytes.
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// One cached artifact.
pub struct Entry {
    pub bytes: Vec<u8>,
    pub content_hash: Option<String>,
    /// The last time the source answered with this artifact (epoch ms).
    pub fetched_at_ms: u64,
}

/// Cloned only to purge from outside a refresh (the TTL wipe); the files are the same.
#[derive(Clone)]
pub struct DiskCache {
    root: PathBuf,
    /// The directory holding this source's files: `root`, or `root/<identity>` for VCS.
    dir: PathBuf,
    artifact: PathBuf,
    meta: PathBuf,
    /// The rollback high-water mark (`artifact/rollback.rs`); a purge leaves it in place.
    mark: PathBuf,
}

impl DiskCache {
    /// The cache files of `source` under `root`: `<identity>/<environment>.age.json` and
    /// `.meta` for VCS sources, else a name derived from a hash of the (redacted) source.
    /// Creates the directories when missing; refuses directories the agent cannot trust.
    pub fn open(root: &Path, source: &SourceConfig) -> Result<DiskCache, ConfigError> {
        let (dir, stem) = match source {
            SourceConfig::Vcs(vcs) => (root.join(&vcs.identity), vcs.environment.clone()),
            other => {
                let digest = crate::secret::sha256_hex(other.describe().as_bytes());
                (root.to_path_buf(), format!("source-{}", &digest[..16]))
            }
        };
        let cache = DiskCache {
            root: root.to_path_buf(),
            artifact: dir.join(format!("{stem}.age.json")),
            meta: dir.join(format!("{stem}.meta")),
            mark: dir.join(format!("{stem}.rollback-mark")),
            dir,
        };
        cache.make_dirs().map_err(|error| ConfigError::caused_by(error.to_string(), error))?;
        Ok(cache)
    }

    /// Where the encrypted artifact is kept, for log lines.
    pub fn artifact_path(&self) -> &Path {
        &self.artifact
    }

    /// Saves an artifact that passed validation.
    pub fn store(&self, bytes: &[u8], content_hash: Option<&str>, fetched_at_ms: u64) -> io::Result<()> {
        self.make_dirs()?;
        write_atomically(&self.artifact, bytes)?;
        self.write_meta(&crate::secret::sha256_hex(bytes), content_hash, fetched_at_ms)
    }

    /// Records that the source answered "unchanged" at `fetched_at_ms`.
    pub fn touch(&self, content_hash: Option<&str>, fetched_at_ms: u64) -> io::Result<()> {
        let Ok(Some(meta)) = self.read_meta() else { return Ok(()) };
        let Some(artifact_sha256) = meta.get("artifactSha256").and_then(Value::as_str) else { return Ok(()) };
        self.make_dirs()?;
        self.write_meta(artifact_sha256, content_hash, fetched_at_ms)
    }

    /// The cached artifact, if there is a complete entry whose artifact matches its `.meta`.
    /// Anything else is logged and not used.
    pub fn load(&self) -> Option<Entry> {
        match self.try_load() {
            Ok(entry) => entry,
            Err(problem) => {
                log::error(&format!("warning: the disk cache is not used: {problem}"));
                None
            }
        }
    }

    fn try_load(&self) -> Result<Option<Entry>, String> {
        match self.check_dirs() {
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
            checked => checked.map_err(|error| error.to_string())?,
        }
        let meta_path = self.meta.display();
        let meta = match self.read_meta() {
            Ok(Some(meta)) => meta,
            Ok(None) => return Ok(None),
            Err(error) => return Err(format!("{meta_path}: {error}")),
        };
        let damaged =
            |what: &str| format!("{meta_path} is damaged ({what}); it is rewritten after the next good fetch");
        let fetched_at_ms = meta.get("fetchedAt").and_then(Value::as_u64).ok_or_else(|| damaged("no fetchedAt"))?;
        let expected_sha256 =
            meta.get("artifactSha256").and_then(Value::as_str).ok_or_else(|| damaged("no artifactSha256"))?;
        let content_hash = meta.get("contentHash").and_then(Value::as_str).map(str::to_string);
        let bytes = read_private(&self.artifact, MAX_ARTIFACT_BYTES)
            .map_err(|error| format!("{}: {error}", self.artifact.display()))?;
        if crate::secret::sha256_hex(&bytes) != expected_sha256 {
            return Err(format!(
                "{} does not match the artifactSha256 in {meta_path} (a write was interrupted, or a file was changed)",
                self.artifact.display()
            ));
        }
        Ok(Some(Entry { bytes, content_hash, fetched_at_ms }))
    }

    /// `.meta` as JSON; `None` when there is none.
    fn read_meta(&self) -> io::Result<Option<Value>> {
        let bytes = match read_private(&self.meta, MAX_RECORD_BYTES) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let meta = serde_json::from_slice(&bytes).map_err(|_| io::Error::other("is not JSON"))?;
        Ok(Some(meta))
    }

    pub fn exists(&self) -> bool {
        let is_file = |path: &Path| fs::symlink_metadata(path).is_ok_and(|metadata| metadata.file_type().is_file());
        is_file(&self.meta) && is_file(&self.artifact)
    }

    /// Removes the entry (revocation, expiry, an entry older than the TTL).
    pub fn purge(&self) {
        let _ = fs::remove_file(&self.meta);
        let _ = fs::remove_file(&self.artifact);
    }

    /// Where the rollback mark is kept, for messages.
    pub fn mark_path(&self) -> &Path {
        &self.mark
    }

    /// The stored rollback mark; `None` when there is none yet. Any other failure is an error:
    /// ignoring an unreadable mark would re-open the rollback it guards against.
    pub fn read_mark(&self) -> io::Result<Option<Vec<u8>>> {
        match self.check_dirs() {
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
            checked => checked?,
        }
        match read_private(&self.mark, MAX_RECORD_BYTES) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Replaces the rollback mark. It holds no secret, only a timestamp, but is written like
    /// every cache file.
    pub fn store_mark(&self, bytes: &[u8]) -> io::Result<()> {
        self.make_dirs()?;
        write_atomically(&self.mark, bytes)
    }

    fn write_meta(&self, artifact_sha256: &str, content_hash: Option<&str>, fetched_at_ms: u64) -> io::Result<()> {
        let meta =
            json!({ "artifactSha256": artifact_sha256, "contentHash": content_hash, "fetchedAt": fetched_at_ms });
        write_atomically(&self.meta, meta.to_string().as_bytes())
    }

    /// Creates the missing directories (mode 0700) and checks them all.
    fn make_dirs(&self) -> io::Result<()> {
        for dir in [&self.root, &self.dir] {
            if fs::symlink_metadata(dir).is_err_and(|error| error.kind() == ErrorKind::NotFound) {
                DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|error| {
                    io::Error::other(format!("CLEF_AGENT_CACHE_PATH: cannot create {}: {error}", dir.display()))
                })?;
            }
        }
        self.check_dirs()
    }

    /// Both directories exist and [`check_private_dir`] accepts them. A missing directory is
    /// `NotFound`; any other problem names the directory and the fix.
    fn check_dirs(&self) -> io::Result<()> {
        for dir in [&self.root, &self.dir] {
            let problem = |what: String| {
                io::Error::other(format!("CLEF_AGENT_CACHE_PATH: the cache directory {} {what}", dir.display()))
            };
            let metadata = match fs::symlink_metadata(dir) {
                Err(error) if error.kind() == ErrorKind::NotFound => return Err(error),
                Err(error) => return Err(problem(format!("cannot be examined: {error}"))),
                Ok(metadata) => metadata,
            };
            check_private_dir(&metadata, agent_user()).map_err(problem)?;
        }
        Ok(())
    }
}

/// The effective user the agent runs as.
fn agent_user() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// What is wrong with a cache directory (its `lstat`), with the fix; `Ok` when it is a real
/// directory of `agent_user` that its group and others cannot write. Never "fixed" with chmod:
/// the path may be a directory shared with others, such as `/tmp`.
fn check_private_dir(metadata: &fs::Metadata, agent_user: u32) -> Result<(), String> {
    let own_directory = "point CLEF_AGENT_CACHE_PATH at a directory of the agent's own (a missing one is created \
                         with mode 0700)";
    if metadata.file_type().is_symlink() {
        return Err(format!(
            "is a symbolic link, which is refused (whoever can change the link chooses the directory): {own_directory}, not at a link"
        ));
    }
    if !metadata.is_dir() {
        return Err(format!("is not a directory: {own_directory}"));
    }
    if metadata.uid() != agent_user {
        return Err(format!(
            "is owned by uid {}, not by the agent's user (uid {agent_user}): {own_directory}",
            metadata.uid()
        ));
    }
    if metadata.mode() & 0o022 != 0 {
        return Err(format!(
            "is writable by its group or by others (mode {:04o}): {own_directory}, or remove that write permission (chmod go-w) if it is one already",
            metadata.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Reads a file of the cache directory: not through a symbolic link (`O_NOFOLLOW`), without
/// blocking on a FIFO (`O_NONBLOCK`), a regular file only (checked on the open descriptor, so
/// it cannot be swapped after the check), and never more than `limit` bytes.
fn read_private(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let mut file = match files::open(path, Links::Refuse) {
        Err(error) if files::is_symbolic_link(&error) => {
            return Err(io::Error::other("is a symbolic link, which the cache never follows"))
        }
        opened => opened?,
    };
    if !files::is_regular(&file)? {
        return Err(io::Error::other("is not a regular file"));
    }
    files::read_at_most(&mut file, limit)?.ok_or_else(|| io::Error::other(format!("is larger than {limit} bytes")))
}

/// Temp file (mode 0600) in the same directory, synced, then renamed over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path.file_name().and_then(|name| name.to_str()).unwrap_or("cache");
    let temporary = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&temporary);
    let written = (|| {
        // create_new (O_CREAT|O_EXCL) never follows a link; O_NOFOLLOW says so.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("clef-cache-unit-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn source() -> SourceConfig {
        SourceConfig::File("/srv/a.json".into())
    }

    #[test]
    fn stores_loads_and_purges_privately() {
        let root = scratch("roundtrip");
        let cache = DiskCache::open(&root, &source()).unwrap();
        assert_eq!(fs::metadata(&root).unwrap().mode() & 0o777, 0o700, "created 0700 at start-up");
        assert!(cache.load().is_none());
        cache.touch(Some("h0"), 1).unwrap();
        assert!(!cache.exists(), "touch alone creates nothing");
        cache.store(b"{\"encrypted\":1}", Some("\"etag\""), 42).unwrap();
        let entry = cache.load().unwrap();
        assert_eq!(
            (entry.bytes.as_slice(), entry.content_hash.as_deref(), entry.fetched_at_ms),
            (&b"{\"encrypted\":1}"[..], Some("\"etag\""), 42)
        );
        cache.touch(Some("\"etag\""), 99).unwrap();
        assert_eq!(cache.load().unwrap().fetched_at_ms, 99);
        assert_eq!(fs::metadata(cache.artifact_path()).unwrap().mode() & 0o777, 0o600);
        assert_eq!(cache.read_mark().unwrap(), None);
        cache.store_mark(b"mark").unwrap();
        cache.purge();
        assert!(cache.load().is_none());
        assert_eq!(cache.read_mark().unwrap().as_deref(), Some(&b"mark"[..]), "a purge keeps the rollback mark");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_artifact_that_does_not_match_its_meta_is_not_used() {
        let root = scratch("mismatch");
        let cache = DiskCache::open(&root, &source()).unwrap();
        cache.store(b"{\"revision\":\"r1\"}", None, 42).unwrap();
        // What an exit between the two renames of a later store leaves behind.
        fs::write(cache.artifact_path(), b"{\"revision\":\"r2\"}").unwrap();
        assert!(cache.load().is_none());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn refuses_a_shared_a_foreign_or_a_linked_directory_and_leaves_its_mode_alone() {
        let base = scratch("refused");
        fs::create_dir_all(&base).unwrap();
        let shared = base.join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        let error = DiskCache::open(&shared, &source()).err().unwrap().to_string();
        assert_eq!(
            error,
            format!(
                "CLEF_AGENT_CACHE_PATH: the cache directory {} is writable by its group or by others (mode 1777): \
                 point CLEF_AGENT_CACHE_PATH at a directory of the agent's own (a missing one is created with mode \
                 0700), or remove that write permission (chmod go-w) if it is one already",
                shared.display()
            )
        );
        assert_eq!(fs::metadata(&shared).unwrap().mode() & 0o7777, 0o1777, "never chmod-ed");

        let private = base.join("private");
        fs::create_dir(&private).unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
        let link = base.join("link");
        std::os::unix::fs::symlink(&private, &link).unwrap();
        let error = DiskCache::open(&link, &source()).err().unwrap().to_string();
        assert!(error.contains("is a symbolic link, which is refused"), "{error}");

        let other_user = agent_user().wrapping_add(1);
        let metadata = fs::symlink_metadata(&private).unwrap();
        let error = check_private_dir(&metadata, other_user).unwrap_err();
        assert!(error.starts_with(&format!("is owned by uid {}, not by the agent's user", metadata.uid())), "{error}");
        assert_eq!(check_private_dir(&metadata, agent_user()), Ok(()));
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_fifo_or_a_link_in_place_of_a_cache_file_is_refused_without_hanging() {
        let root = scratch("fifo");
        let cache = DiskCache::open(&root, &source()).unwrap();
        let fifo = std::ffi::CString::new(cache.meta.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(cache.load().is_none());
        let fifo_mark = std::ffi::CString::new(cache.mark.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo_mark.as_ptr(), 0o600) }, 0);
        assert_eq!(cache.read_mark().unwrap_err().to_string(), "is not a regular file");
        fs::remove_file(&cache.mark).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &cache.mark).unwrap();
        assert_eq!(cache.read_mark().unwrap_err().to_string(), "is a symbolic link, which the cache never follows");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn reads_stop_at_the_limit() {
        let root = scratch("limit");
        fs::create_dir_all(&root).unwrap();
        let path = root.join("big");
        fs::write(&path, vec![b'x'; 11]).unwrap();
        assert_eq!(read_private(&path, 10).unwrap_err().to_string(), "is larger than 10 bytes");
        assert_eq!(read_private(&path, 11).unwrap().len(), 11);
        fs::remove_dir_all(&root).unwrap();
    }
}
