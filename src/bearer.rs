//! The bearer token: from `CLEF_AGENT_TOKEN`, from `CLEF_AGENT_TOKEN_FILE` (read it, or create
//! it once so an application on a shared volume can read it), or random. The log says where it
//! came from, never what it is.
//!
//! The token file often sits in a directory others can write to (a shared volume). So it is
//! opened without following a symbolic link, and the opened file itself must be a regular file
//! of the agent's user that nobody else can write: a file someone else planted or can rewrite
//! would let them choose the token. Nor may it be readable beyond `CLEF_AGENT_TOKEN_FILE_MODE`
//! (0600, or 0640 to share the token with the file's group): whoever reads it holds every
//! secret. The checks are made on the open descriptor, so the file cannot be swapped between
//! the check and the read. A file the agent creates gets exactly that mode, whatever the umask.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::config::{ConfigError, TokenSource};
use crate::files::{self, Links};
use crate::secret::{hex, random_bytes, Secret};

/// A token file holds one token; anything longer is not a token file.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// The token and the start-up log line that says where it came from.
pub fn resolve(source: &TokenSource) -> Result<(Secret, String), ConfigError> {
    match source {
        TokenSource::Given(token) => Ok((token.clone(), "token: [set]".into())),
        TokenSource::Generated => Ok((generate()?, "token: [generated]".into())),
        TokenSource::File { path, mode } => match read(path, *mode)? {
            Some(token) => Ok((token, format!("token: [read from {}]", path.display()))),
            None => {
                let token = create(path, *mode)?;
                Ok((token, format!("token: [generated, written to {}]", path.display())))
            }
        },
    }
}

fn generate() -> Result<Secret, ConfigError> {
    Ok(Secret::new(hex(&random_bytes::<32>().map_err(ConfigError::new)?)))
}

/// Reads the token file, whose permissions must stay within `mode`; `None` when it does not
/// exist.
fn read(path: &Path, mode: u32) -> Result<Option<Secret>, ConfigError> {
    let problem = |what: String| ConfigError::new(format!("CLEF_AGENT_TOKEN_FILE {}: {what}", path.display()));
    let mut file = match files::open(path, Links::Refuse) {
        Ok(file) => file,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(error) if files::is_symbolic_link(&error) => {
            return Err(problem(format!(
                "is a symbolic link, which is refused (whoever planted it would choose the token): remove it with rm {} and let the agent create the file, or point CLEF_AGENT_TOKEN_FILE at the real file",
                path.display()
            )))
        }
        Err(error) => return Err(problem(format!("cannot be read: {error}"))),
    };
    check_permissions(&file, path, mode).map_err(problem)?;
    let contents = files::read_at_most(&mut file, MAX_TOKEN_FILE_BYTES)
        .map_err(|error| problem(format!("cannot be read: {error}")))?
        .map(zeroize::Zeroizing::new)
        .ok_or_else(|| problem(format!("is larger than {MAX_TOKEN_FILE_BYTES} bytes: it must hold one token")))?;
    let text = std::str::from_utf8(&contents).map_err(|_| problem("is not text".into()))?.trim();
    if text.is_empty() {
        return Err(problem("is empty: delete it to have a token generated, or write one into it".into()));
    }
    if !text.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(problem("must hold one token of printable ASCII characters without spaces".into()));
    }
    Ok(Some(Secret::new(text.to_string())))
}

/// The opened token file must be a regular file owned by the agent's effective user that its
/// group and others cannot write, and that nobody reads beyond `mode`; else what is wrong and
/// the command that fixes it.
fn check_permissions(file: &File, path: &Path, mode: u32) -> Result<(), String> {
    let metadata = file.metadata().map_err(|error| format!("cannot be examined: {error}"))?;
    if !metadata.file_type().is_file() {
        return Err("is not a regular file: point CLEF_AGENT_TOKEN_FILE at a regular file, or remove what is there and let the agent create the file".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let agent_user = unsafe { libc::geteuid() };
    if metadata.uid() != agent_user {
        return Err(format!(
            "is owned by uid {}, not by the agent's user (uid {agent_user}): chown {agent_user} {} (or remove it and let the agent create it)",
            metadata.uid(),
            path.display()
        ));
    }
    if metadata.mode() & 0o022 != 0 {
        return Err(format!(
            "is writable by its group or by others (mode {:04o}): chmod go-w {}",
            metadata.mode() & 0o7777,
            path.display()
        ));
    }
    let permissions = metadata.mode() & 0o777;
    if permissions & !mode != 0 {
        let fix = if mode == crate::config::GROUP_READABLE_TOKEN_FILE_MODE {
            format!("chmod o-rwx {}", path.display())
        } else {
            format!(
                "chmod 0600 {}, or set CLEF_AGENT_TOKEN_FILE_MODE=0640 if its group is meant to read it",
                path.display()
            )
        };
        return Err(format!(
            "is readable beyond CLEF_AGENT_TOKEN_FILE_MODE {mode:04o} (mode {:04o}): {fix}",
            metadata.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Writes a new random token to `path` atomically with `mode`. If another process created the
/// file first, its token wins and is returned, so agents sharing a volume agree.
fn create(path: &Path, mode: u32) -> Result<Secret, ConfigError> {
    let problem = |what: String| ConfigError::new(format!("CLEF_AGENT_TOKEN_FILE {}: {what}", path.display()));
    let token = generate()?;
    let file_name = path.file_name().ok_or_else(|| problem("is not a file path".into()))?;
    let temporary = path.with_file_name(format!(".{}.{}.tmp", file_name.to_string_lossy(), std::process::id()));
    // create_new is O_CREAT|O_EXCL, which already refuses a symbolic link; O_NOFOLLOW says so.
    // Whatever is in the way was not made by us, so it is left alone.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temporary)
        .map_err(|error| problem(format!("cannot be created: {error}")))?;
    // The umask (systemd's UMask=0077) may have taken the group's read away; it was asked for.
    // The file is still empty and only ever narrower than `mode` before this.
    let written = file
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(token.expose().as_bytes()))
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all());
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(problem(format!("cannot be created: {error}")));
    }
    // A hard link, unlike a rename, fails when the file appeared meanwhile.
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(token),
        Err(error) if error.kind() == ErrorKind::AlreadyExists => {
            read(path, mode)?.ok_or_else(|| problem("disappeared while it was being created".into()))
        }
        Err(error) => Err(problem(format!("cannot be created: {error}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory(name: &str) -> std::path::PathBuf {
        let directory = std::env::temp_dir().join(format!("clef-token-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory).unwrap();
        directory
    }

    #[test]
    fn creates_a_token_file_with_mode_0600_and_reads_it_back() {
        let directory = directory("create");
        let path = directory.join("token");
        let (token, line) = resolve(&TokenSource::File { path: path.clone(), mode: 0o600 }).unwrap();
        assert_eq!(token.expose().len(), 64);
        assert_eq!(line, format!("token: [generated, written to {}]", path.display()));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (again, line) = resolve(&TokenSource::File { path: path.clone(), mode: 0o600 }).unwrap();
        assert_eq!(again, token);
        assert_eq!(line, format!("token: [read from {}]", path.display()));
        assert_eq!(std::fs::read_dir(&directory).unwrap().count(), 1, "no temporary file left behind");
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn an_existing_token_file_may_be_read_by_no_one_beyond_the_configured_mode() {
        let directory = directory("modes");
        let path = directory.join("token");
        std::fs::write(&path, "file-token\n").unwrap();
        let with_mode = |file_mode: u32, mode: u32| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file_mode)).unwrap();
            resolve(&TokenSource::File { path: path.clone(), mode }).map(|(token, _)| token.expose().to_string())
        };
        assert_eq!(with_mode(0o640, 0o640).unwrap(), "file-token");
        assert_eq!(with_mode(0o600, 0o640).unwrap(), "file-token", "narrower than asked is fine");
        assert_eq!(with_mode(0o400, 0o600).unwrap(), "file-token");
        let shown = path.display();
        assert_eq!(
            with_mode(0o640, 0o600).unwrap_err().to_string(),
            format!("CLEF_AGENT_TOKEN_FILE {shown}: is readable beyond CLEF_AGENT_TOKEN_FILE_MODE 0600 (mode 0640): chmod 0600 {shown}, or set CLEF_AGENT_TOKEN_FILE_MODE=0640 if its group is meant to read it")
        );
        assert_eq!(
            with_mode(0o644, 0o640).unwrap_err().to_string(),
            format!("CLEF_AGENT_TOKEN_FILE {shown}: is readable beyond CLEF_AGENT_TOKEN_FILE_MODE 0640 (mode 0644): chmod o-rwx {shown}")
        );
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn creates_a_group_readable_token_file_when_asked() {
        let directory = directory("create-0640");
        let path = directory.join("token");
        let (token, _) = resolve(&TokenSource::File { path: path.clone(), mode: 0o640 }).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o640);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{}\n", token.expose()));
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn refuses_a_token_file_larger_than_one_token_could_be() {
        let directory = directory("too-large");
        let path = directory.join("token");
        std::fs::write(&path, "t".repeat(4097)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let error = resolve(&TokenSource::File { path: path.clone(), mode: 0o600 }).unwrap_err().to_string();
        assert_eq!(
            error,
            format!("CLEF_AGENT_TOKEN_FILE {}: is larger than 4096 bytes: it must hold one token", path.display())
        );
        std::fs::write(&path, "t".repeat(4096)).unwrap();
        assert_eq!(resolve(&TokenSource::File { path: path.clone(), mode: 0o600 }).unwrap().0.expose().len(), 4096);
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn refuses_empty_or_malformed_token_files_without_echoing_them() {
        let directory = directory("bad");
        let path = directory.join("token");
        std::fs::write(&path, "\n").unwrap();
        // Not left to the umask, which another test (bind_unix's) may change meanwhile.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(resolve(&TokenSource::File { path: path.clone(), mode: 0o600 })
            .unwrap_err()
            .to_string()
            .contains("is empty"));
        std::fs::write(&path, "two words").unwrap();
        let error = resolve(&TokenSource::File { path: path.clone(), mode: 0o600 }).unwrap_err().to_string();
        assert!(error.contains("printable ASCII") && !error.contains("two words"), "{error}");
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn refuses_a_directory_or_a_fifo_in_place_of_the_token_file_without_hanging() {
        let directory = directory("not-regular");
        let fifo = directory.join("fifo");
        let fifo_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path, which outlives the call.
        assert_eq!(unsafe { libc::mkfifo(fifo_path.as_ptr(), 0o600) }, 0);
        for path in [directory.clone(), fifo] {
            let error = resolve(&TokenSource::File { path: path.clone(), mode: 0o600 }).unwrap_err().to_string();
            assert!(error.ends_with("is not a regular file: point CLEF_AGENT_TOKEN_FILE at a regular file, or remove what is there and let the agent create the file"), "{error}");
        }
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn a_missing_directory_is_a_clear_error() {
        let error = resolve(&TokenSource::File { path: "/nonexistent-clef-dir/token".into(), mode: 0o600 })
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("CLEF_AGENT_TOKEN_FILE /nonexistent-clef-dir/token: cannot be created"), "{error}");
    }
}
