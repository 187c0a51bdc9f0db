//! A local file source: the whole file is read on every poll, up to the artifact size limit.
//! Its content hash is the SHA-256 of the bytes, so an unchanged file costs no parsing.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::PathBuf;

use super::{FetchError, Fetched, Source, MAX_ARTIFACT_BYTES};

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
            ErrorKind::NotFound => FetchError::NotFound { source: source.clone() },
            ErrorKind::PermissionDenied => FetchError::Forbidden { source: source.clone(), detail: error.to_string() },
            _ => FetchError::Io { source: source.clone(), detail: error.to_string() },
        };
        let file = File::open(&self.path).map_err(io_error)?;
        let mut bytes = Vec::new();
        file.take(MAX_ARTIFACT_BYTES + 1).read_to_end(&mut bytes).map_err(io_error)?;
        if bytes.len() as u64 > MAX_ARTIFACT_BYTES {
            return Err(FetchError::TooLarge { source });
        }
        let content_hash = crate::secret::hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
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
}
