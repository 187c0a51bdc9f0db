//! A local file source: the whole file is read on every poll, up to the artifact size limit.
//! Its content hash is the SHA-256 of the bytes, so an unchanged file costs no parsing.
//!
//! The path may be a symbolic link — Kubernetes mounts ConfigMaps and Secrets as links that
//! are swapped on update — so links are followed (unlike the disk cache's files). What it
//! finally names must be a regular file: it is opened `O_NONBLOCK` and checked on the open
//! descriptor, so a FIFO or a device (`/dev/zero`) there cannot block the refresh or fill the
//! memory.

use std::io::ErrorKind;
use std::path::PathBuf;

use super::{FetchError, Fetched, Source, MAX_ARTIFACT_BYTES};
use crate::files::{self, Links};

pub struct FileSource {
    path: PathBuf,
}

impl FileSource {
    pub fn new(path: PathBuf) -> FileSource {
        FileSource { path }
    }
}

impl Source for FileSource {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn fetch(&mut self, last_content_hash: Option<&str>) -> Result<Fetched, FetchError> {
        let source = self.describe();
        let io_error = |error: std::io::Error| match error.kind() {
            ErrorKind::NotFound => FetchError::NotFound { source: source.clone(), status: None },
            ErrorKind::PermissionDenied => FetchError::Forbidden { source: source.clone(), detail: error.to_string() },
            _ => FetchError::Io { source: source.clone(), detail: error.to_string() },
        };
        let mut file = files::open(&self.path, Links::Follow).map_err(io_error)?;
        if !files::is_regular(&file).map_err(io_error)? {
            return Err(FetchError::Io {
                source,
                detail: "it is not a regular file (a FIFO, a device or a directory): point CLEF_AGENT_SOURCE at the artifact file".into(),
            });
        }
        let Some(bytes) = files::read_at_most(&mut file, MAX_ARTIFACT_BYTES).map_err(io_error)? else {
            return Err(FetchError::TooLarge { source });
        };
        let content_hash = crate::secret::sha256_hex(&bytes);
        if last_content_hash == Some(content_hash.as_str()) {
            return Ok(Fetched::Unchanged);
        }
        Ok(Fetched::Content { bytes, content_hash: Some(content_hash) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_file_and_reports_it_unchanged_by_hash() {
        let dir = std::env::temp_dir().join(format!("clef-file-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("artifact.json");
        std::fs::write(&path, b"{}").unwrap();
        let mut source = FileSource::new(path.clone());
        let Fetched::Content { content_hash: Some(hash), bytes } = source.fetch(None).unwrap() else { panic!() };
        assert_eq!(bytes, b"{}");
        assert_eq!(source.fetch(Some(&hash)).unwrap(), Fetched::Unchanged);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(source.fetch(Some(&hash)), Err(FetchError::NotFound { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn follows_a_link_to_a_file_but_refuses_a_fifo_or_a_device_without_blocking() {
        let dir = std::env::temp_dir().join(format!("clef-file-source-kinds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("artifact.json"), b"{}").unwrap();
        std::os::unix::fs::symlink(dir.join("artifact.json"), dir.join("link")).unwrap();
        assert!(matches!(FileSource::new(dir.join("link")).fetch(None), Ok(Fetched::Content { .. })));
        let fifo = std::ffi::CString::new(dir.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        for path in [dir.join("fifo"), "/dev/zero".into()] {
            let error = FileSource::new(path.clone()).fetch(None).unwrap_err().to_string();
            assert!(error.ends_with("it is not a regular file (a FIFO, a device or a directory): point CLEF_AGENT_SOURCE at the artifact file"), "{error}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
