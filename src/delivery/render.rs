//! `CLEF_AGENT_RENDER_DIR`: the secrets as files, for programs that read files.
//!
//! Layout, as the kubelet writes secret volumes: each revision is written in full into a new
//! directory `..rev-<n>`, then the symbolic link `..data` is pointed at it by one `rename`; the
//! names a program opens (`<ns>__<key>` or the flat key, `secrets.env`, `secrets.json`) are
//! links through `..data`. So a reader that opens one file, or resolves `..data` once and reads
//! several from there, never sees two revisions mixed. The old revision is removed
//! [`OLD_REVISION_GRACE`] after the swap, so a reader that resolved `..data` just before it can
//! finish; a wipe or a shutdown removes everything at once.
//!
//! Hostile local processes: the directory must be owned by the agent's user and writable by
//! nobody else (checked on an open descriptor, without following a link), so nobody else can
//! plant a link in it; every entry is then made relative to that descriptor with `O_EXCL` /
//! `O_NOFOLLOW` / `mkdirat`, which never follow a link either. It must be on tmpfs or ramfs
//! (`fstatfs`) unless `CLEF_AGENT_RENDER_ALLOW_DISK=1`: nothing decrypted goes to a disk.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zeroize::Zeroizing;

use super::{Delivery, Subscriber};
use crate::config::{ConfigError, RenderConfig};
use crate::log;
use crate::snapshot::{Part, Snapshot};

/// How long a replaced revision's directory stays for readers that resolved `..data` before
/// the swap.
pub const OLD_REVISION_GRACE: Duration = Duration::from_secs(2);
/// `statfs` magic numbers of the memory-backed file systems (linux/magic.h).
const TMPFS_MAGIC: u64 = 0x0102_1994;
const RAMFS_MAGIC: u64 = 0x8584_58f6;

const DATA_LINK: &str = "..data";
const REVISION_PREFIX: &str = "..rev-";
const NEW_LINK: &str = "..new-link";
const ENV_FILE: &str = "secrets.env";
const JSON_FILE: &str = "secrets.json";

/// A file of a revision: its name and its content (zeroed when dropped).
type RenderedFile = (String, Zeroizing<Vec<u8>>);

pub struct RenderDir {
    state: Arc<Mutex<State>>,
}

struct State {
    path: PathBuf,
    dir: OwnedFd,
    file_mode: u32,
    /// Revision directories: group and search bits follow the file mode.
    dir_mode: u32,
    gid: Option<libc::gid_t>,
    /// The revision directory `..data` points to, and the names linked at the top.
    current: Option<String>,
    links: BTreeSet<String>,
    next_revision: u64,
}

impl RenderDir {
    /// Opens (creating it when missing) and checks the directory; removes what a previous run
    /// left in it.
    pub fn open(config: &RenderConfig) -> Result<RenderDir, ConfigError> {
        let path = &config.dir;
        let fail = |why: String| ConfigError::new(format!("CLEF_AGENT_RENDER_DIR {}: {why}", path.display()));
        let gid = config.group.as_deref().map(resolve_group).transpose().map_err(fail)?;
        let created = match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => true,
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(error) => return Err(fail(format!("cannot create it: {error}"))),
        };
        let dir = open_at(libc::AT_FDCWD, path.as_os_str().as_bytes(), libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(|error| fail(format!("cannot open it as a directory (a symbolic link is refused): {error}")))?;
        check_owner_and_mode(&dir).map_err(fail)?;
        if !config.allow_disk {
            check_memory_backed(&dir).map_err(fail)?;
        }
        let dir_mode = if config.mode & 0o040 != 0 { 0o750 } else { 0o700 };
        if created {
            // A directory we made lets the group in when the files do; one given is left as is.
            set_owner_and_mode(dir.as_raw_fd(), gid, dir_mode).map_err(|error| fail(error.to_string()))?;
        }
        let mut state = State {
            path: path.clone(),
            dir,
            file_mode: config.mode,
            dir_mode,
            gid,
            current: None,
            links: BTreeSet::new(),
            next_revision: 0,
        };
        state.remove_leftovers();
        Ok(RenderDir { state: Arc::new(Mutex::new(state)) })
    }

    fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
        state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Subscriber for RenderDir {
    fn notify(&self, event: &Delivery) {
        let mut state = RenderDir::lock(&self.state);
        match event {
            Delivery::Served { revision, snapshot: Some(snapshot) } => match state.render(snapshot) {
                Ok(Some(old)) => {
                    log::info(&format!("render: revision {revision} in {}", state.path.display()));
                    let shared = Arc::clone(&self.state);
                    let removed_later = old.clone();
                    let removal = std::thread::Builder::new().name("render-cleanup".into()).spawn(move || {
                        std::thread::sleep(OLD_REVISION_GRACE);
                        RenderDir::lock(&shared).remove_revision(&removed_later);
                    });
                    if removal.is_err() {
                        state.remove_revision(&old);
                    }
                }
                Ok(None) => log::info(&format!("render: revision {revision} in {}", state.path.display())),
                Err(error) => {
                    log::error(&format!("render: cannot write revision {revision} to {}: {error}; removing the files rather than leaving an old revision", state.path.display()));
                    state.remove_all();
                }
            },
            Delivery::Served { snapshot: None, .. } => {}
            Delivery::Wiped(reason) => {
                state.remove_all();
                log::info(&format!("render: files removed from {} ({})", state.path.display(), reason.event_name()));
            }
            Delivery::Shutdown => state.remove_all(),
        }
    }
}

impl State {
    /// Writes `snapshot` as a new revision and swaps it in; the revision directory it replaced.
    fn render(&mut self, snapshot: &Snapshot) -> Result<Option<String>, String> {
        let files = files_of(snapshot)?;
        self.next_revision += 1;
        let name = format!("{REVISION_PREFIX}{}-{}", std::process::id(), self.next_revision);
        if let Err(error) = self.write_revision(&name, &files) {
            self.remove_revision(&name);
            return Err(error);
        }
        let _ = unlink_at(self.dir.as_raw_fd(), NEW_LINK, 0);
        symlink_at(&name, self.dir.as_raw_fd(), NEW_LINK)
            .map_err(|error| format!("cannot link {NEW_LINK}: {error}"))?;
        rename_at(self.dir.as_raw_fd(), NEW_LINK, DATA_LINK)
            .map_err(|error| format!("cannot swap {DATA_LINK}: {error}"))?;
        let names: BTreeSet<String> = files.iter().map(|(name, _)| name.clone()).collect();
        for added in names.difference(&self.links) {
            let target = format!("{DATA_LINK}/{added}");
            let _ = unlink_at(self.dir.as_raw_fd(), NEW_LINK, 0);
            symlink_at(&target, self.dir.as_raw_fd(), NEW_LINK)
                .and_then(|()| rename_at(self.dir.as_raw_fd(), NEW_LINK, added))
                .map_err(|error| format!("cannot link {added}: {error}"))?;
        }
        for removed in self.links.difference(&names) {
            let _ = unlink_at(self.dir.as_raw_fd(), removed, 0);
        }
        self.links = names;
        Ok(self.current.replace(name))
    }

    fn write_revision(&self, name: &str, files: &[RenderedFile]) -> Result<(), String> {
        let c_name = c_string(name)?;
        // SAFETY: mkdirat reads the NUL-terminated name; it never follows a link at the name.
        if unsafe { libc::mkdirat(self.dir.as_raw_fd(), c_name.as_ptr(), 0o700) } != 0 {
            return Err(format!("cannot create {name}: {}", std::io::Error::last_os_error()));
        }
        let revision = open_at(self.dir.as_raw_fd(), name.as_bytes(), libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(|error| format!("cannot open {name}: {error}"))?;
        set_owner_and_mode(revision.as_raw_fd(), self.gid, self.dir_mode)
            .map_err(|error| format!("{name}: {error}"))?;
        for (file, content) in files {
            let fd = open_at(revision.as_raw_fd(), file.as_bytes(), libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)
                .map_err(|error| format!("cannot create {file}: {error}"))?;
            // Owner and mode before the content: no moment with a secret under a wider mode.
            set_owner_and_mode(fd.as_raw_fd(), self.gid, self.file_mode).map_err(|error| format!("{file}: {error}"))?;
            File::from(fd).write_all(content).map_err(|error| format!("cannot write {file}: {error}"))?;
        }
        Ok(())
    }

    /// Removes a revision directory and its files (never the one served, unless wiping).
    fn remove_revision(&mut self, name: &str) {
        if self.current.as_deref() == Some(name) {
            return;
        }
        remove_tree(self.dir.as_raw_fd(), name);
    }

    /// `..data` first (a reader then finds nothing rather than something stale), then the
    /// top links and every revision directory.
    fn remove_all(&mut self) {
        let dir = self.dir.as_raw_fd();
        let _ = unlink_at(dir, DATA_LINK, 0);
        for link in std::mem::take(&mut self.links) {
            let _ = unlink_at(dir, &link, 0);
        }
        self.current = None;
        self.remove_leftovers();
    }

    /// Everything a run of the agent may have put here: `..`-names (revisions, `..data`), and
    /// links into `..data`. Anything else is not ours and stays.
    fn remove_leftovers(&mut self) {
        // Listed through the descriptor, never the path: the path could be made to lead elsewhere.
        let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", self.dir.as_raw_fd())) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(REVISION_PREFIX) {
                remove_tree(self.dir.as_raw_fd(), name);
            } else if name == DATA_LINK
                || name == NEW_LINK
                || std::fs::read_link(entry.path()).is_ok_and(|target| target.starts_with(DATA_LINK))
            {
                let _ = unlink_at(self.dir.as_raw_fd(), name, 0);
            }
        }
    }
}

/// The files of a revision: one per value (by its `/v1/keys` name), `secrets.env`,
/// `secrets.json`. Names that cannot be a file name are left out, with a log line.
fn files_of(snapshot: &Snapshot) -> Result<Vec<RenderedFile>, String> {
    let names: Vec<String> = serde_json::from_slice(snapshot.body(Part::Keys))
        .map_err(|error| format!("the key list does not parse: {error}"))?;
    let mut files = Vec::with_capacity(names.len() + 2);
    let mut env = Zeroizing::new(Vec::new());
    let mut seen = std::collections::HashSet::with_capacity(names.len());
    for name in names {
        // `a`/`b__c` and `a__b`/`c` share a name: the first one is served (as by the API).
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(part) = snapshot.flat_value(&name) else { continue };
        let value = snapshot.body(part);
        if is_env_name(&name) {
            push_env_line(&mut env, &name, value);
        } else {
            log::error(&format!("render: {name} is not a shell variable name; it is left out of {ENV_FILE}"));
        }
        if is_file_name(&name) {
            files.push((name, Zeroizing::new(value.to_vec())));
        } else {
            log::error(&format!("render: {name} cannot be a file name here; only {ENV_FILE} and {JSON_FILE} hold it"));
        }
    }
    files.push((ENV_FILE.to_string(), env));
    files.push((JSON_FILE.to_string(), Zeroizing::new(snapshot.body(Part::Secrets).to_vec())));
    Ok(files)
}

/// A name that is a plain file name, and not one of ours (`..`-names, the two set files).
fn is_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && !name.starts_with("..")
        && !name.contains(['/', '\0'])
        && name != ENV_FILE
        && name != JSON_FILE
}

/// `[A-Za-z_][A-Za-z0-9_]*`: what `sh` takes as a variable name.
fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|first| first.is_ascii_alphabetic() || first == b'_')
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
}

/// `NAME=value` when every byte of the value means itself to `sh` (then docker `--env-file`,
/// which takes the rest of the line verbatim, reads the same value); else `NAME='value'` with
/// each `'` as `'\''`, which `sh` reads back exactly whatever the value holds (newlines too).
/// docker `--env-file` does no unquoting at all, so no line carries such a value to both.
fn push_env_line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    let plain = value.iter().all(|byte| byte.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(byte));
    out.extend_from_slice(name.as_bytes());
    out.push(b'=');
    if plain {
        out.extend_from_slice(value);
    } else {
        out.push(b'\'');
        for &byte in value {
            if byte == b'\'' {
                out.extend_from_slice(b"'\\''");
            } else {
                out.push(byte);
            }
        }
        out.push(b'\'');
    }
    out.push(b'\n');
}

fn resolve_group(group: &str) -> Result<libc::gid_t, String> {
    if let Ok(gid) = group.parse::<libc::gid_t>() {
        return Ok(gid);
    }
    let name = c_string(group)?;
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes only into `entry` and `buffer`, whose sizes we pass.
    let status = unsafe { libc::getgrnam_r(name.as_ptr(), &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut found) };
    if status != 0 || found.is_null() {
        return Err(format!(
            "CLEF_AGENT_RENDER_GROUP: no group named '{group}' (give a group that exists in /etc/group, or its number)"
        ));
    }
    Ok(entry.gr_gid)
}

fn check_owner_and_mode(dir: &OwnedFd) -> Result<(), String> {
    let metadata = File::from(dir.try_clone().map_err(|error| error.to_string())?)
        .metadata()
        .map_err(|error| error.to_string())?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if metadata.uid() != euid {
        return Err(format!(
            "it is owned by user {}, not by the agent's user ({euid}); chown it to the agent's user (systemd: RuntimeDirectory=)",
            metadata.uid()
        ));
    }
    if metadata.mode() & 0o022 != 0 {
        return Err(format!(
            "its mode {:04o} lets others write in it (and plant links); chmod go-w it",
            metadata.mode() & 0o7777
        ));
    }
    Ok(())
}

fn check_memory_backed(dir: &OwnedFd) -> Result<(), String> {
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes only the struct we pass.
    if unsafe { libc::fstatfs(dir.as_raw_fd(), &mut stat) } != 0 {
        return Err(format!("cannot tell its file system: {}", std::io::Error::last_os_error()));
    }
    let kind = stat.f_type as u64;
    if kind != TMPFS_MAGIC && kind != RAMFS_MAGIC {
        return Err(format!(
            "it is not on tmpfs or ramfs (file system type {kind:#x}), so decrypted secrets would reach a disk; \
             mount a tmpfs there (systemd: RuntimeDirectory= under /run; Kubernetes: emptyDir with medium: Memory), \
             or set CLEF_AGENT_RENDER_ALLOW_DISK=1 to accept that"
        ));
    }
    Ok(())
}

fn set_owner_and_mode(fd: RawFd, gid: Option<libc::gid_t>, mode: u32) -> std::io::Result<()> {
    // SAFETY: fstat/fchown/fchmod act on a descriptor we own; -1 keeps the owner.
    unsafe {
        if let Some(gid) = gid {
            // Only when the group differs: what the agent creates has its primary group already,
            // and the shipped unit forbids chown (SystemCallFilter=~@privileged) — there the
            // group comes from Group=, and no chown is needed.
            let mut stat: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut stat) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if stat.st_gid != gid && libc::fchown(fd, u32::MAX, gid) != 0 {
                let error = std::io::Error::last_os_error();
                return Err(std::io::Error::new(
                    error.kind(),
                    format!(
                        "cannot give it to CLEF_AGENT_RENDER_GROUP (gid {gid}): {error}; the agent's user must be in \
                         that group, and under a systemd unit with SystemCallFilter=~@privileged or PrivateUsers=yes \
                         (as the shipped one) run the service with Group= that group instead"
                    ),
                ));
            }
        }
        if libc::fchmod(fd, mode as libc::mode_t) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn c_string(text: &str) -> Result<CString, String> {
    CString::new(text).map_err(|_| format!("'{}' holds a NUL byte", text.escape_debug()))
}

/// `openat` with `O_NOFOLLOW | O_CLOEXEC` added, mode 0600 when it creates.
fn open_at(dir: RawFd, name: &[u8], flags: libc::c_int) -> std::io::Result<OwnedFd> {
    let name = CString::new(name).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: openat reads the NUL-terminated name; the descriptor returned is ours to own.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn unlink_at(dir: RawFd, name: &str, flags: libc::c_int) -> std::io::Result<()> {
    let name = CString::new(name).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: unlinkat reads the NUL-terminated name; it removes a link itself, never its target.
    if unsafe { libc::unlinkat(dir, name.as_ptr(), flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn symlink_at(target: &str, dir: RawFd, name: &str) -> std::io::Result<()> {
    let (target, name) = (CString::new(target)?, CString::new(name)?);
    // SAFETY: symlinkat reads two NUL-terminated strings.
    if unsafe { libc::symlinkat(target.as_ptr(), dir, name.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn rename_at(dir: RawFd, from: &str, to: &str) -> std::io::Result<()> {
    let (from, to) = (CString::new(from)?, CString::new(to)?);
    // SAFETY: renameat reads two NUL-terminated names in the same directory.
    if unsafe { libc::renameat(dir, from.as_ptr(), dir, to.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Removes the directory `name` in `dir` and the files in it (revision directories hold no
/// subdirectories); a link at `name` is not followed.
fn remove_tree(dir: RawFd, name: &str) {
    if let Ok(revision) = open_at(dir, name.as_bytes(), libc::O_RDONLY | libc::O_DIRECTORY) {
        let listing = format!("/proc/self/fd/{}", revision.as_raw_fd());
        if let Ok(entries) = std::fs::read_dir(listing) {
            for entry in entries.flatten() {
                if let Some(file) = entry.file_name().to_str() {
                    let _ = unlink_at(revision.as_raw_fd(), file, 0);
                }
            }
        }
    }
    let _ = unlink_at(dir, name, libc::AT_REMOVEDIR);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sources `lines` with a real `sh` (`set -a; . file`) and returns `NAME`'s value exactly.
    fn sourced(lines: &[u8], name: &str) -> Vec<u8> {
        let file = std::env::temp_dir().join(format!("clef-env-{}-{name}", std::process::id()));
        std::fs::write(&file, lines).unwrap();
        let output = std::process::Command::new("sh")
            .args(["-c", &format!("set -a; . \"$1\"; printf %s \"${name}\""), "sh"])
            .arg(&file)
            .output()
            .unwrap();
        std::fs::remove_file(&file).unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        output.stdout
    }

    #[test]
    fn sh_reads_every_value_of_secrets_env_back_exactly() {
        let values: [&[u8]; 8] = [
            b"plain-value_1.2:3,4@5%6+7=8/9",
            b"",
            b"it's \"quoted\" $HOME `id` \\ back\\slash",
            b"line one\nline two\n",
            b"  spaces  \t",
            b"'",
            b"#not a comment; rm -rf / & echo *",
            "caf\u{e9} \u{1f}".as_bytes(),
        ];
        for value in values {
            let mut lines = Vec::new();
            push_env_line(&mut lines, "V", value);
            assert_eq!(sourced(&lines, "V"), value, "{}", String::from_utf8_lossy(&lines));
        }
    }

    #[test]
    fn a_value_made_of_plain_characters_is_written_as_docker_env_file_reads_it() {
        let mut lines = Vec::new();
        push_env_line(&mut lines, "DB_URL", b"postgres://db.internal:5432/app");
        push_env_line(&mut lines, "PASSWORD", b"two words");
        assert_eq!(lines, b"DB_URL=postgres://db.internal:5432/app\nPASSWORD='two words'\n");
    }

    #[test]
    fn a_name_two_values_share_is_written_once_with_the_value_the_api_serves() {
        let plaintext = crate::decrypt::Plaintext::parse(br#"{"a":{"b__c":"first"},"a__b":{"c":"second"}}"#).unwrap();
        let snapshot = Snapshot::build(&crate::artifact::sample(), plaintext);
        let files = files_of(&snapshot).unwrap();
        let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["a__b__c", "secrets.env", "secrets.json"]);
        assert_eq!(&files[0].1[..], b"first");
        assert_eq!(&files[1].1[..], b"a__b__c=first\n");
    }

    #[test]
    fn names_that_could_escape_the_directory_are_never_file_names() {
        for name in ["", ".", "..", "..data", "..rev-1", "a/b", "../x", "a\0b", "secrets.env", "secrets.json"] {
            assert!(!is_file_name(name), "{name:?}");
        }
        for name in ["database__DB_PASSWORD", "payments__STRIPE KEY", "café", ".env"] {
            assert!(is_file_name(name), "{name:?}");
        }
        assert!(is_env_name("database__DB_PASSWORD") && is_env_name("_x1"));
        assert!(!is_env_name("payments__STRIPE KEY") && !is_env_name("1x") && !is_env_name("café"));
    }
}
