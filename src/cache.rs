//! The disk cache (`CLEF_AGENT_CACHE_PATH`, SPEC §4): the last accepted artifact exactly as it
//! was fetched — still encrypted — and a small metadata file with its content hash and when it
//! was last fetched, so an agent restarted during a source outage can still serve. Nothing
//! decrypted is ever written. Files are written to a temporary name and renamed (a reader never
//! sees half a file), mode 0600 in directories of mode 0700. With a verify key it also keeps the
//! rollback high-water mark (`<stem>.rollback-mark`), which no purge removes.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::config::SourceConfig;

/// One cached artifact.
pub struct Entry {
    pub bytes: Vec<u8>,
    pub content_hash: Option<String>,
    /// The last time the source answered with this artifact (epoch ms).
    pub fetched_at_ms: u64,
}

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
    pub fn new(root: &Path, source: &SourceConfig) -> DiskCache {
        let (dir, stem) = match source {
            SourceConfig::Vcs(vcs) => (root.join(&vcs.identity), vcs.environment.clone()),
            other => {
                let digest = ring::digest::digest(&ring::digest::SHA256, other.describe().as_bytes());
                (root.to_path_buf(), format!("source-{}", &crate::secret::hex(digest.as_ref())[..16]))
            }
        };
        DiskCache {
            root: root.to_path_buf(),
            artifact: dir.join(format!("{stem}.age.json")),
            meta: dir.join(format!("{stem}.meta")),
            mark: dir.join(format!("{stem}.rollback-mark")),
            dir,
        }
    }

    /// Where the encrypted artifact is kept, for log lines.
    pub fn artifact_path(&self) -> &Path {
        &self.artifact
    }

    /// Saves an artifact that passed validation.
    pub fn store(&self, bytes: &[u8], content_hash: Option<&str>, fetched_at_ms: u64) -> io::Result<()> {
        self.make_dirs()?;
        write_atomically(&self.artifact, bytes)?;
        self.write_meta(content_hash, fetched_at_ms)
    }

    /// Records that the source answered "unchanged" at `fetched_at_ms`.
    pub fn touch(&self, content_hash: Option<&str>, fetched_at_ms: u64) -> io::Result<()> {
        if !self.artifact.exists() {
            return Ok(());
        }
        self.write_meta(content_hash, fetched_at_ms)
    }

    /// The cached artifact, if there is a complete, readable entry.
    pub fn load(&self) -> Option<Entry> {
        let meta: Value = serde_json::from_slice(&fs::read(&self.meta).ok()?).ok()?;
        let fetched_at_ms = meta.get("fetchedAt")?.as_u64()?;
        let content_hash = meta.get("contentHash").and_then(Value::as_str).map(str::to_string);
        let bytes = fs::read(&self.artifact).ok()?;
        Some(Entry { bytes, content_hash, fetched_at_ms })
    }

    pub fn exists(&self) -> bool {
        self.meta.exists() && self.artifact.exists()
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
        match fs::read(&self.mark) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Replaces the rollback mark. It holds no secret, only a timestamp, but is written like
    /// every cache file.
    pub fn store_mark(&self, bytes: &[u8]) -> io::Result<()> {
        self.make_dirs()?;
        write_atomically(&self.mark, bytes)
    }

    fn write_meta(&self, content_hash: Option<&str>, fetched_at_ms: u64) -> io::Result<()> {
        let meta = json!({ "contentHash": content_hash, "fetchedAt": fetched_at_ms });
        write_atomically(&self.meta, meta.to_string().as_bytes())
    }

    fn make_dirs(&self) -> io::Result<()> {
        for dir in [&self.root, &self.dir] {
            DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            // An existing directory keeps its mode otherwise; the cache's must be private.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }
}

/// Temp file (mode 0600) in the same directory, synced, then renamed over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path.file_name().and_then(|name| name.to_str()).unwrap_or("cache");
    let temporary = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&temporary);
    let written = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
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
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn stores_loads_and_purges_privately() {
        let root = std::env::temp_dir().join(format!("clef-cache-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let cache = DiskCache::new(&root, &SourceConfig::File("/srv/a.json".into()));
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
        assert_eq!(fs::metadata(&root).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(cache.artifact_path()).unwrap().mode() & 0o777, 0o600);
        assert_eq!(cache.read_mark().unwrap(), None);
        cache.store_mark(b"mark").unwrap();
        cache.purge();
        assert!(cache.load().is_none());
        assert_eq!(cache.read_mark().unwrap().as_deref(), Some(&b"mark"[..]), "a purge keeps the rollback mark");
        fs::remove_dir_all(&root).unwrap();
    }
}
