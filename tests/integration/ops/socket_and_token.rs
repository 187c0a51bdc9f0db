//! The Unix socket listener (`CLEF_AGENT_SOCKET`) and the token file (`CLEF_AGENT_TOKEN_FILE`),
//! the two ways an application on a shared volume reaches the agent without a TCP port or a
//! token in its environment. Checked on disk (modes, contents, clean-up), on the wire, and in
//! the logs, which must say where the token came from and never what it is.

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use super::artifact;
use crate::support::{get, get_unix, Agent, Deployment, PLAINTEXT, READY_LINE, TOKEN};

const STOP: Duration = Duration::from_secs(5);

fn deployment(test: &str) -> Deployment {
    Deployment::new(test, &artifact(PLAINTEXT, "rev-socket"))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|error| panic!("stat {}: {error}", path.display())).permissions().mode()
        & 0o777
}

/// SIGTERM and exit status 0; the output is complete afterwards.
fn stop(agent: &Agent) {
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(STOP).expect("the agent did not exit after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", agent.stderr());
}

/// The TCP ports `pid` listens on, from its socket descriptors and `/proc/net/tcp{,6}`; `None`
/// when its descriptors cannot be read (the agent is not dumpable, so only root can).
fn tcp_listening_ports(pid: i32) -> Option<Vec<u16>> {
    let descriptors = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let inodes: HashSet<String> = descriptors
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9)) else {
                continue;
            };
            if *state == "0A" && inodes.contains(*inode) {
                let port = local.rsplit(':').next().and_then(|hex| u16::from_str_radix(hex, 16).ok());
                ports.extend(port);
            }
        }
    }
    Some(ports)
}

#[test]
fn serves_secrets_over_the_unix_socket_to_host_localhost_with_the_bearer_token() {
    let deployment = deployment("sock-serve");
    let socket = deployment.dir.join("agent.sock");
    let socket_text = socket.display().to_string();
    let _agent = deployment.start(&[("CLEF_AGENT_SOCKET", &socket_text), ("CLEF_AGENT_PORT", "")]);
    let authorized = [("Host", "localhost"), ("Authorization", &bearer(TOKEN))];
    get_unix(&socket, "/v1/secrets", &authorized).assert(200, PLAINTEXT);
    let unauthorized = get_unix(&socket, "/v1/secrets", &[("Host", "localhost")]);
    assert_eq!(unauthorized.status, 401, "{unauthorized:?}");
    let wrong_token = get_unix(&socket, "/v1/secrets", &[("Host", "localhost"), ("Authorization", "Bearer nope")]);
    assert_eq!(wrong_token.status, 401, "{wrong_token:?}");
}

#[test]
fn creates_the_socket_with_mode_0660() {
    let deployment = deployment("sock-mode");
    let socket = deployment.dir.join("agent.sock");
    let socket_text = socket.display().to_string();
    let _agent = deployment.start(&[("CLEF_AGENT_SOCKET", &socket_text), ("CLEF_AGENT_PORT", "")]);
    let metadata = std::fs::symlink_metadata(&socket).expect("no socket file");
    assert!(metadata.file_type().is_socket(), "{} is not a socket", socket.display());
    assert_eq!(mode(&socket), 0o660, "mode {:o}", mode(&socket));
}

#[test]
fn listens_only_on_the_socket_when_clef_agent_port_is_unset() {
    let deployment = deployment("sock-only");
    let socket = deployment.dir.join("agent.sock");
    let socket_text = socket.display().to_string();
    let agent = deployment.start(&[("CLEF_AGENT_SOCKET", &socket_text), ("CLEF_AGENT_PORT", "")]);
    let stdout = agent.stdout();
    let listening: Vec<&str> = stdout.lines().filter(|line| line.contains("Agent server listening at ")).collect();
    assert_eq!(listening, [format!("[clef-agent] Agent server listening at unix:{socket_text}")], "{stdout}");
    match tcp_listening_ports(agent.pid()) {
        Some(ports) => assert_eq!(ports, Vec::<u16>::new(), "the agent listens on TCP too"),
        None => eprintln!("cannot read /proc/{}/fd: relying on the log lines only", agent.pid()),
    }
}

#[test]
fn listens_on_the_socket_and_on_tcp_when_clef_agent_port_is_set_too() {
    let deployment = deployment("sock-both");
    let socket = deployment.dir.join("agent.sock");
    let socket_text = socket.display().to_string();
    let agent = deployment.start(&[("CLEF_AGENT_SOCKET", &socket_text)]);
    let stdout = agent.stdout();
    assert!(stdout.contains(&format!("[clef-agent] Agent server listening at unix:{socket_text}\n")), "{stdout}");
    let tcp_line = format!("[clef-agent] Agent server listening at http://127.0.0.1:{}\n", deployment.port);
    assert!(stdout.contains(&tcp_line), "{stdout}");
    get_unix(&socket, "/v1/secrets", &[("Authorization", &bearer(TOKEN))]).assert(200, PLAINTEXT);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
}

#[test]
fn replaces_a_stale_socket_file() {
    let deployment = deployment("sock-stale");
    let socket = deployment.dir.join("agent.sock");
    // A socket file whose listener is gone, as a crashed agent leaves it.
    drop(UnixListener::bind(&socket).expect("cannot bind the stale socket"));
    assert!(socket.exists());
    let socket_text = socket.display().to_string();
    let _agent = deployment.start(&[("CLEF_AGENT_SOCKET", &socket_text), ("CLEF_AGENT_PORT", "")]);
    get_unix(&socket, "/v1/secrets", &[("Authorization", &bearer(TOKEN))]).assert(200, PLAINTEXT);
}

#[test]
fn refuses_a_socket_another_process_is_listening_on() {
    let deployment = deployment("sock-live");
    let socket = deployment.dir.join("agent.sock");
    let _live = UnixListener::bind(&socket).expect("cannot bind the live socket");
    let socket_text = socket.display().to_string();
    let agent = deployment.spawn(&[("CLEF_AGENT_SOCKET", &socket_text), ("CLEF_AGENT_PORT", "")]);
    let status = agent.wait_exit(STOP).expect("the agent kept running");
    assert_eq!(status.code(), Some(1));
    let expected =
        format!("[clef-agent] fatal: cannot listen on unix:{socket_text}: another process is listening on it\n");
    assert_eq!(agent.stderr(), expected);
    assert!(socket.exists(), "the live socket was removed");
}

#[test]
fn removes_the_socket_file_at_shutdown() {
    let deployment = deployment("sock-cleanup");
    let socket = deployment.dir.join("agent.sock");
    let socket_text = socket.display().to_string();
    let agent = deployment.start(&[("CLEF_AGENT_SOCKET", &socket_text), ("CLEF_AGENT_PORT", "")]);
    assert!(socket.exists());
    stop(&agent);
    assert!(!socket.exists(), "the socket file outlived the agent");
}

#[test]
fn generates_a_token_file_with_mode_0600_when_none_exists_and_accepts_its_token() {
    let deployment = deployment("token-new");
    let token_file = deployment.dir.join("token");
    let token_file_text = token_file.display().to_string();
    let agent = deployment.start(&[("CLEF_AGENT_TOKEN", ""), ("CLEF_AGENT_TOKEN_FILE", &token_file_text)]);
    assert_eq!(mode(&token_file), 0o600, "mode {:o}", mode(&token_file));
    let contents = std::fs::read_to_string(&token_file).expect("cannot read the token file");
    let token = contents.strip_suffix('\n').unwrap_or_else(|| panic!("no final newline: {contents:?}"));
    assert!(token.len() == 64 && token.bytes().all(|byte| byte.is_ascii_hexdigit()), "not 64 hex digits: {token:?}");
    let line = format!("[clef-agent] token: [generated, written to {token_file_text}]\n");
    assert!(agent.stdout().contains(&line), "{}", agent.stdout());
    get(deployment.port, "/v1/secrets", &[("Authorization", &bearer(token))]).assert(200, PLAINTEXT);
    assert_eq!(get(deployment.port, "/v1/secrets", &[("Authorization", &bearer(TOKEN))]).status, 401);
    stop(&agent);
    assert!(!agent.stdout().contains(token) && !agent.stderr().contains(token), "the token was logged");
    let leftovers: Vec<_> =
        std::fs::read_dir(token_file.parent().unwrap()).unwrap().flatten().map(|entry| entry.file_name()).collect();
    assert!(
        leftovers.iter().all(|name| !name.to_string_lossy().ends_with(".tmp")),
        "a temporary file is left: {leftovers:?}"
    );
}

#[test]
fn uses_the_token_of_an_existing_token_file() {
    let deployment = deployment("token-existing");
    let token_file = deployment.dir.join("token");
    let token = "file-token-3c9e1a7f5b2d4e6a";
    std::fs::write(&token_file, format!("{token}\n")).expect("cannot write the token file");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let token_file_text = token_file.display().to_string();
    let agent = deployment.start(&[("CLEF_AGENT_TOKEN", ""), ("CLEF_AGENT_TOKEN_FILE", &token_file_text)]);
    let line = format!("[clef-agent] token: [read from {token_file_text}]\n");
    assert!(agent.stdout().contains(&line), "{}", agent.stdout());
    get(deployment.port, "/v1/secrets", &[("Authorization", &bearer(token))]).assert(200, PLAINTEXT);
    assert_eq!(get(deployment.port, "/v1/secrets", &[("Authorization", &bearer(TOKEN))]).status, 401);
    stop(&agent);
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), format!("{token}\n"), "the token file was rewritten");
    assert!(!agent.stdout().contains(token) && !agent.stderr().contains(token), "the token was logged");
}

#[test]
fn refuses_clef_agent_token_together_with_clef_agent_token_file() {
    let deployment = deployment("token-both");
    let token_file = deployment.dir.join("token");
    let token_file_text = token_file.display().to_string();
    let agent = deployment.spawn(&[("CLEF_AGENT_TOKEN_FILE", &token_file_text)]);
    let status = agent.wait_exit(STOP).expect("the agent kept running");
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        agent.stderr(),
        "[clef-agent] config error: CLEF_AGENT_TOKEN and CLEF_AGENT_TOKEN_FILE are both set: set only one of them\n"
    );
    assert!(!agent.stdout().contains(TOKEN), "the token was logged");
    assert!(!token_file.exists(), "a token file was created anyway");
}

/// The `IN_CREATE` and `IN_ATTRIB` events queued on `inotify` so far, with their file names, in order.
fn inotify_events(inotify: &std::fs::File) -> Vec<(&'static str, String)> {
    use std::io::Read;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut events = Vec::new();
    let mut reader = inotify;
    let count = match reader.read(&mut buffer) {
        Ok(count) => count,
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(error) => panic!("cannot read the inotify descriptor: {error}"),
    };
    let header = std::mem::size_of::<libc::inotify_event>();
    let mut offset = 0;
    while offset + header <= count {
        let field = |at: usize| u32::from_ne_bytes(buffer[offset + at..offset + at + 4].try_into().unwrap());
        let (mask, length) = (field(4), field(12) as usize);
        let name = &buffer[offset + header..offset + header + length];
        let name = String::from_utf8_lossy(name).trim_end_matches('\0').to_string();
        let kind = if mask & libc::IN_CREATE != 0 { "create" } else { "attrib" };
        events.push((kind, name));
        offset += header + length;
    }
    events
}

#[test]
fn creates_the_socket_with_mode_0660_under_a_umask_of_0_and_never_changes_its_mode_afterwards() {
    let deployment = deployment("sock-umask");
    let socket = deployment.dir.join("agent.sock");
    let socket_text = socket.display().to_string();
    // Every mode change (chmod) shows as an IN_ATTRIB event: with none after IN_CREATE, the
    // socket had its final mode from the moment it existed.
    // SAFETY: inotify_init1 returns a new descriptor, owned by the File below from then on.
    let descriptor = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    assert!(descriptor >= 0, "inotify_init1: {}", std::io::Error::last_os_error());
    // SAFETY: the descriptor is valid and nothing else owns it.
    let inotify = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(descriptor) };
    let directory = std::ffi::CString::new(socket.parent().unwrap().as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: the path is a NUL-terminated string that outlives the call.
    let watch = unsafe { libc::inotify_add_watch(descriptor, directory.as_ptr(), libc::IN_CREATE | libc::IN_ATTRIB) };
    assert!(watch >= 0, "inotify_add_watch: {}", std::io::Error::last_os_error());

    let env = deployment.env(&[("CLEF_AGENT_SOCKET", &socket_text), ("CLEF_AGENT_PORT", "")]);
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    let agent = Agent::start_with_umask(&env, 0);
    agent.wait_for_stdout(READY_LINE, Duration::from_secs(10));

    assert_eq!(mode(&socket), 0o660, "mode {:o}", mode(&socket));
    let socket_events: Vec<&str> =
        inotify_events(&inotify).iter().filter(|(_, name)| name == "agent.sock").map(|(kind, _)| *kind).collect();
    assert_eq!(socket_events, ["create"], "the socket's mode was changed after it was created");
}

/// Starts the agent with `CLEF_AGENT_TOKEN_FILE=<token_file>` and returns its exit status and
/// stderr; it must refuse to start.
fn refused_token_file(deployment: &Deployment, token_file: &Path) -> String {
    let token_file_text = token_file.display().to_string();
    let agent = deployment.spawn(&[("CLEF_AGENT_TOKEN", ""), ("CLEF_AGENT_TOKEN_FILE", &token_file_text)]);
    let status = agent.wait_exit(STOP).expect("the agent kept running");
    assert_eq!(status.code(), Some(1), "{}", agent.stderr());
    agent.stderr()
}

#[test]
fn refuses_a_token_file_that_is_a_symbolic_link_and_leaves_its_target_untouched() {
    let deployment = deployment("token-symlink");
    // Whoever can write the shared directory plants a link to a file whose contents they know.
    let target = deployment.dir.join("known-token");
    std::fs::write(&target, "attacker-chosen-token\n").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    let token_file = deployment.dir.join("token");
    std::os::unix::fs::symlink(&target, &token_file).unwrap();
    let path = token_file.display();
    assert_eq!(
        refused_token_file(&deployment, &token_file),
        format!("[clef-agent] config error: CLEF_AGENT_TOKEN_FILE {path}: is a symbolic link, which is refused (whoever planted it would choose the token): remove it with rm {path} and let the agent create the file, or point CLEF_AGENT_TOKEN_FILE at the real file\n")
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "attacker-chosen-token\n", "the target was changed");
    assert_eq!(mode(&target), 0o600);
    assert!(std::fs::symlink_metadata(&token_file).unwrap().file_type().is_symlink(), "the link was replaced");
}

#[test]
fn refuses_a_dangling_token_file_symbolic_link_instead_of_creating_its_target() {
    let deployment = deployment("token-dangling");
    let target = deployment.dir.join("not-yet");
    let token_file = deployment.dir.join("token");
    std::os::unix::fs::symlink(&target, &token_file).unwrap();
    let stderr = refused_token_file(&deployment, &token_file);
    assert!(stderr.contains(": is a symbolic link, which is refused"), "{stderr}");
    assert!(!target.exists(), "the agent wrote a token through the link");
}

#[test]
fn refuses_a_token_file_others_can_write_or_its_group_read_unless_asked_saying_how_to_fix_it() {
    let deployment = deployment("token-writable");
    let token_file = deployment.dir.join("token");
    std::fs::write(&token_file, "file-token-3c9e1a7f5b2d4e6a\n").unwrap();
    for (writable, shown) in [(0o620, "0620"), (0o602, "0602"), (0o666, "0666")] {
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(writable)).unwrap();
        let path = token_file.display();
        assert_eq!(
            refused_token_file(&deployment, &token_file),
            format!("[clef-agent] config error: CLEF_AGENT_TOKEN_FILE {path}: is writable by its group or by others (mode {shown}): chmod go-w {path}\n")
        );
    }
    // Group-readable only when asked: that is how an application in the file's group reads it.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let path = token_file.display();
    assert_eq!(
        refused_token_file(&deployment, &token_file),
        format!("[clef-agent] config error: CLEF_AGENT_TOKEN_FILE {path}: is readable beyond CLEF_AGENT_TOKEN_FILE_MODE 0600 (mode 0640): chmod 0600 {path}, or set CLEF_AGENT_TOKEN_FILE_MODE=0640 if its group is meant to read it\n")
    );
    let token_file_text = token_file.display().to_string();
    let _agent = deployment.start(&[
        ("CLEF_AGENT_TOKEN", ""),
        ("CLEF_AGENT_TOKEN_FILE", &token_file_text),
        ("CLEF_AGENT_TOKEN_FILE_MODE", "0640"),
    ]);
    get(deployment.port, "/v1/secrets", &[("Authorization", &bearer("file-token-3c9e1a7f5b2d4e6a"))])
        .assert(200, PLAINTEXT);
}

#[test]
fn refuses_a_token_file_owned_by_another_user_saying_how_to_fix_it() {
    // SAFETY: geteuid has no preconditions.
    let agent_user = unsafe { libc::geteuid() };
    if agent_user != 0 {
        eprintln!("not root: cannot give the token file to another user, so this test checks nothing");
        return;
    }
    let deployment = deployment("token-owner");
    let token_file = deployment.dir.join("token");
    std::fs::write(&token_file, "file-token-3c9e1a7f5b2d4e6a\n").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&token_file, Some(65534), None).unwrap();
    let path = token_file.display();
    assert_eq!(
        refused_token_file(&deployment, &token_file),
        format!("[clef-agent] config error: CLEF_AGENT_TOKEN_FILE {path}: is owned by uid 65534, not by the agent's user (uid 0): chown 0 {path} (or remove it and let the agent create it)\n")
    );
}

/// An application's group, made up for the test: a gid needs no entry in /etc/group.
const APP_GROUP: u32 = 64_123;
/// `nobody`: a user other than the agent's.
const OTHER_USER: u32 = 65_534;

/// Runs `cat path` as [`OTHER_USER`] with `group` as its only group; its output and status.
fn cat_as_other_user(path: &Path, group: u32) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new("cat");
    command.arg(path);
    // SAFETY: setgroups, setgid and setuid are async-signal-safe and change only the child.
    unsafe {
        command.pre_exec(move || {
            let groups = [group as libc::gid_t];
            if libc::setgroups(1, groups.as_ptr()) != 0 || libc::setgid(group) != 0 || libc::setuid(OTHER_USER) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.output().expect("cannot run cat")
}

#[test]
fn a_token_file_created_0640_under_umask_0077_is_read_by_another_user_of_its_group_and_nobody_else() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot run a reader as another user, so this test checks nothing");
        return;
    }
    let deployment = deployment("token-group");
    let scratch = deployment.artifact.parent().unwrap().to_path_buf();
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The shared directory belongs to the application's group and is set-group-ID, so the file
    // created in it gets that group: what Kubernetes' fsGroup does to a volume, and what
    // systemd's Group= does to the RuntimeDirectory it creates.
    let shared = scratch.join("run");
    std::fs::create_dir(&shared).unwrap();
    std::os::unix::fs::chown(&shared, None, Some(APP_GROUP)).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o2755)).unwrap();
    let token_file = shared.join("token");
    let token_file_text = token_file.display().to_string();
    let env = deployment.env(&[
        ("CLEF_AGENT_TOKEN", ""),
        ("CLEF_AGENT_TOKEN_FILE", &token_file_text),
        ("CLEF_AGENT_TOKEN_FILE_MODE", "0640"),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    // systemd's UMask=0077 in the example unit: it must not take the group's read away.
    let agent = Agent::start_with_umask(&env, 0o077);
    agent.wait_for_stdout(READY_LINE, Duration::from_secs(10));
    let metadata = std::fs::metadata(&token_file).unwrap();
    assert_eq!(metadata.permissions().mode() & 0o7777, 0o640, "mode {:o}", metadata.permissions().mode());
    assert_eq!((metadata.uid(), metadata.gid()), (0, APP_GROUP));

    let member = cat_as_other_user(&token_file, APP_GROUP);
    assert!(
        member.status.success(),
        "a member of the group cannot read it: {}",
        String::from_utf8_lossy(&member.stderr)
    );
    let token = String::from_utf8(member.stdout).unwrap();
    get(deployment.port, "/v1/secrets", &[("Authorization", &bearer(token.trim_end()))]).assert(200, PLAINTEXT);

    let outsider = cat_as_other_user(&token_file, OTHER_USER);
    assert!(!outsider.status.success(), "a user outside the group read the token");
    assert!(String::from_utf8_lossy(&outsider.stderr).contains("Permission denied"), "{outsider:?}");
    stop(&agent);
}
