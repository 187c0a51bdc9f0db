//! The memory-hygiene proof: the agent is not dumpable, and after a rotation and after a
//! revocation no copy of an old secret value is left in its memory or its files.
//!
//! The memory is read the way an attacker with root would: every readable and writable
//! mapping of `/proc/<pid>/maps`, through `/proc/<pid>/mem`, while the process is stopped.
//! Each value is looked for raw (as parsed, as the single-value routes serve it) and
//! JSON-escaped (as decrypted, as the rendered bodies carry it). Copies that may legitimately
//! remain are the current secrets, which the snapshot must hold — so every scan also has to
//! find something it knows is there, or a scan that reads nothing would pass.
//!
//! Every worker thread serves secrets before each change, and nothing is requested between the
//! change and the scan but the poll that sees it: an old copy must be gone because the agent
//! wiped it, not because later traffic happened to overwrite it. A connection that stays open
//! keeps no copy either: its read buffer is wiped as each request is parsed, and answers are
//! written without a buffer of their own.

use std::fs::File;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{
    age_key_line, build_artifact, executable_for_any_user, wait_until, Agent, ArtifactOptions, Deployment, PLAINTEXT,
    PLAINTEXT_ROTATED, READY_LINE, TOKEN,
};

/// SIGHUP takes milliseconds; this covers a loaded machine.
const SIGHUP_LIMIT: Duration = Duration::from_secs(5);
/// How long a stopped or started process may take to get there.
const STATE_LIMIT: Duration = Duration::from_secs(10);
/// Rounds of requests over every route, so that each worker thread has served secrets and
/// response buffers of every size have come and gone.
const ROUNDS: usize = 8;
/// `nobody`: a user that is not root, for the dumpability checks.
const NOBODY: u32 = 65534;
const REVOKED_AT: &str = "2026-11-25T08:00:00.000Z";

/// The scans read another process's memory and start the agent as another user: root only.
/// Never skipped: a proof that quietly does not run proves nothing.
fn require_root() {
    // SAFETY: geteuid() has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the hygiene tests read the agent's memory through /proc/<pid>/mem and run it as another user, \
         so they must run as root (euid is {euid}): sudo -E cargo test --test integration -- hygiene::"
    );
}

/// Something to look for in memory or on disk.
struct Needle {
    name: String,
    bytes: Vec<u8>,
}

impl Needle {
    fn new(name: impl Into<String>, text: &str) -> Needle {
        Needle { name: name.into(), bytes: text.as_bytes().to_vec() }
    }
}

/// Every value of a `{namespace: {key: value}}` plaintext, raw and (when different)
/// JSON-escaped exactly as the plaintext writes it; named `<revision> <namespace>/<key>`.
fn values_of(plaintext: &str, revision: &str) -> Vec<Needle> {
    let parsed: serde_json::Value = serde_json::from_str(plaintext).expect("the plaintext is JSON");
    let mut needles = Vec::new();
    for (namespace, keys) in parsed.as_object().expect("the plaintext is an object") {
        for (key, value) in keys.as_object().expect("a namespace is an object") {
            let raw = value.as_str().expect("a value is a string");
            assert!(raw.len() >= 8, "{raw:?} is too short to search memory for");
            let quoted = serde_json::to_string(raw).expect("a string serialises");
            let escaped = &quoted[1..quoted.len() - 1];
            assert!(plaintext.contains(escaped), "{escaped:?} is not how the plaintext writes {raw:?}");
            needles.push(Needle::new(format!("{revision} {namespace}/{key}"), raw));
            if escaped != raw {
                needles.push(Needle::new(format!("{revision} {namespace}/{key} (JSON-escaped)"), escaped));
            }
        }
    }
    needles
}

/// Percent-encodes a path segment (everything but RFC 3986 unreserved characters).
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(byte).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Every secret route of `plaintext` with the body it must answer: everything, the key list,
/// each namespace, and each value by `<namespace>/<key>` and by its flat name.
fn routes(plaintext: &str) -> Vec<(String, Option<String>)> {
    let parsed: serde_json::Value = serde_json::from_str(plaintext).expect("the plaintext is JSON");
    let mut routes = vec![("/v1/secrets".to_string(), Some(plaintext.to_string())), ("/v1/keys".to_string(), None)];
    for (namespace, keys) in parsed.as_object().expect("the plaintext is an object") {
        routes.push((format!("/v1/secrets/{}", encode(namespace)), None));
        for (key, value) in keys.as_object().expect("a namespace is an object") {
            let value = value.as_str().expect("a value is a string").to_string();
            routes.push((format!("/v1/secrets/{}/{}", encode(namespace), encode(key)), Some(value.clone())));
            routes.push((format!("/v1/secrets/{}__{}", encode(namespace), encode(key)), Some(value)));
        }
    }
    routes
}

/// Requests every route of `plaintext` [`ROUNDS`] times; each must answer `status` (and, when
/// it serves, the exact value).
fn request_everything(agent: &Agent, plaintext: &str, status: u16) {
    let routes = routes(plaintext);
    for _ in 0..ROUNDS {
        for (path, body) in &routes {
            let response = agent.get(path);
            assert_eq!(response.status, status, "{path}: {}", String::from_utf8_lossy(&response.body));
            if let (200, Some(body)) = (status, body) {
                response.assert(200, body);
            }
        }
    }
}

/// One `/proc/<pid>/maps` line.
struct Mapping {
    start: u64,
    end: u64,
    line: String,
}

/// The readable and writable mappings of `pid`: everything a buffer can live in (heap, thread
/// stacks, anonymous mappings, the executable's data).
fn writable_mappings(pid: i32) -> Vec<Mapping> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("cannot read /proc/<pid>/maps");
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, perms) = (fields.next()?, fields.next()?);
            if !perms.starts_with("rw") {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let address = |text: &str| u64::from_str_radix(text, 16).expect("a hex address in /proc/<pid>/maps");
            Some(Mapping { start: address(start), end: address(end), line: line.to_string() })
        })
        .collect()
}

/// Each thread of `pid` with its name and stack pointer, to name the stack a copy is on.
/// `/proc/<pid>/task/<tid>/syscall` ends with the stack pointer and the program counter.
fn thread_stack_pointers(pid: i32) -> Vec<(String, u64)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("cannot list /proc/<pid>/task").flatten() {
        let read = |file: &str| std::fs::read_to_string(task.path().join(file)).unwrap_or_default();
        let syscall = read("syscall");
        let fields: Vec<&str> = syscall.split_whitespace().collect();
        let Some(sp) = fields.len().checked_sub(2).and_then(|index| fields[index].strip_prefix("0x")) else { continue };
        let Ok(sp) = u64::from_str_radix(sp, 16) else { continue };
        let name = format!("thread {} {:?}", task.file_name().to_string_lossy(), read("comm").trim());
        threads.push((name, sp));
    }
    threads
}

/// Every offset of `needle` in `haystack`.
fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    let mut found = Vec::new();
    let mut from = 0;
    while from + needle.len() <= haystack.len() {
        let rest = &haystack[from..];
        // SAFETY: both pointers and lengths describe live slices; memmem only reads them and
        // returns null or a pointer into `rest`.
        let hit = unsafe {
            libc::memmem(rest.as_ptr().cast(), rest.len(), needle.as_ptr().cast(), needle.len()) as *const u8
        };
        if hit.is_null() {
            break;
        }
        let offset = from + (hit as usize - rest.as_ptr() as usize);
        found.push(offset);
        from = offset + 1;
    }
    found
}

/// A copy found in the agent's memory.
struct Finding {
    needle: String,
    address: u64,
    /// The `/proc/<pid>/maps` line, and whose stack it is when a thread's stack pointer is in it.
    mapping: String,
    context: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "  {} at {:#x} in {}\n    {}", self.needle, self.address, self.mapping, self.context)
    }
}

/// Stops the agent (SIGSTOP) until dropped, so that its memory holds still while it is read.
struct Stopped<'a> {
    agent: &'a Agent,
}

impl<'a> Stopped<'a> {
    fn new(agent: &'a Agent) -> Stopped<'a> {
        agent.signal(libc::SIGSTOP);
        let stopped = Stopped { agent };
        let pid = agent.pid();
        assert!(
            wait_until(STATE_LIMIT, || thread_states(pid).iter().all(|state| matches!(state, 'T' | 'Z' | 'X'))),
            "the agent's threads did not all stop: {:?}",
            thread_states(pid)
        );
        stopped
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.agent.signal(libc::SIGCONT);
    }
}

/// The state letter of each thread of `pid` (`T` once stopped; `Z`/`X` for one that is exiting).
fn thread_states(pid: i32) -> Vec<char> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("cannot list /proc/<pid>/task");
    tasks
        .flatten()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // `pid (comm) S …`: the name may hold anything, so the state follows the last ')'.
            stat[stat.rfind(')')? + 1..].trim_start().chars().next()
        })
        .collect()
}

/// Reads every writable mapping of the stopped agent and returns where each needle occurs.
fn scan_memory(agent: &Agent, needles: &[&Needle]) -> Vec<Finding> {
    let _stopped = Stopped::new(agent);
    let pid = agent.pid();
    let threads = thread_stack_pointers(pid);
    let mem = File::open(format!("/proc/{pid}/mem")).expect("cannot open /proc/<pid>/mem (as root?)");
    let mut findings = Vec::new();
    let mut scanned = 0;
    for mapping in writable_mappings(pid) {
        let mut bytes = vec![0u8; (mapping.end - mapping.start) as usize];
        mem.read_exact_at(&mut bytes, mapping.start)
            .unwrap_or_else(|error| panic!("cannot read the agent's mapping {}: {error}", mapping.line));
        scanned += bytes.len();
        let owner = threads
            .iter()
            .find(|(_, sp)| (mapping.start..mapping.end).contains(sp))
            .map(|(name, _)| format!(" — the stack of {name}"))
            .unwrap_or_default();
        for needle in needles {
            for offset in find_all(&bytes, &needle.bytes) {
                let around = &bytes[offset.saturating_sub(48)..(offset + needle.bytes.len() + 48).min(bytes.len())];
                findings.push(Finding {
                    needle: needle.name.clone(),
                    address: mapping.start + offset as u64,
                    mapping: format!("{}{owner}", mapping.line),
                    context: format!("{:?}", String::from_utf8_lossy(around)),
                });
            }
        }
    }
    assert!(scanned > 0, "no writable mapping was read");
    findings
}

/// Panics listing every copy of `absent` in `findings`.
fn assert_none_of(findings: &[Finding], absent: &[Needle], when: &str) {
    let survivors: Vec<String> = findings
        .iter()
        .filter(|finding| absent.iter().any(|needle| needle.name == finding.needle))
        .map(|f| f.to_string())
        .collect();
    assert!(
        survivors.is_empty(),
        "{when}, {} copies of old secret values are still in the agent's memory:\n{}",
        survivors.len(),
        survivors.join("\n")
    );
}

/// Panics unless every needle of `present` was found: the scan did see the memory it read.
fn assert_each_of(findings: &[Finding], present: &[Needle], what: &str) {
    for needle in present {
        assert!(
            findings.iter().any(|finding| finding.needle == needle.name),
            "the scan did not find {} ({what}), which the agent must hold: the scan is broken",
            needle.name
        );
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return files };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// No file under `dir` holds any of `needles`.
fn assert_no_plaintext_on_disk(dir: &Path, needles: &[&Needle], when: &str) {
    for file in files_under(dir) {
        let bytes = match std::fs::read(&file) {
            Ok(bytes) => bytes,
            // The agent may be removing it (a revocation purges the disk cache).
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => panic!("cannot read {}: {error}", file.display()),
        };
        for needle in needles {
            assert!(find_all(&bytes, &needle.bytes).is_empty(), "{when}, {} holds {}", file.display(), needle.name);
        }
    }
}

#[test]
fn no_copy_of_a_rotated_or_revoked_secret_survives_in_memory_or_on_disk() {
    require_root();
    let deployment =
        Deployment::new("hygiene-memory", &build_artifact(PLAINTEXT, "rev-1", &ArtifactOptions::default()));
    let root = deployment.artifact.parent().expect("the artifact is in the deployment directory").to_path_buf();
    let (cache, temp) = (root.join("cache"), root.join("tmp"));
    std::fs::create_dir_all(&temp).unwrap();
    let agent = deployment.start(&[
        ("CLEF_AGENT_CACHE_TTL", "300"),
        ("CLEF_AGENT_CACHE_PATH", cache.to_str().unwrap()),
        ("TMPDIR", temp.to_str().unwrap()),
    ]);
    let (old, rotated) = (values_of(PLAINTEXT, "rev-1"), values_of(PLAINTEXT_ROTATED, "rev-2"));
    let every_value: Vec<&Needle> = old.iter().chain(&rotated).collect();

    // Every route, many times: each worker thread has served secrets before the rotation.
    request_everything(&agent, PLAINTEXT, 200);
    assert!(!files_under(&cache).is_empty(), "the disk cache was not written: {}", agent.stderr());
    assert_no_plaintext_on_disk(&root, &every_value, "serving rev-1");

    // The rotation: every value changes.
    let rotated_artifact = build_artifact(PLAINTEXT_ROTATED, "rev-2", &ArtifactOptions::default());
    deployment.publish(&rotated_artifact);
    agent.signal(libc::SIGHUP);
    assert!(
        wait_until(SIGHUP_LIMIT, || agent.get("/v1/secrets").body == PLAINTEXT_ROTATED.as_bytes()),
        "the rotation was not served: {}",
        agent.stderr()
    );
    // No more requests before the scan: a copy must not depend on later traffic to be overwritten.
    let findings = scan_memory(&agent, &every_value);
    assert_each_of(&findings, &rotated, "a current value");
    assert_none_of(&findings, &old, "after the rotation to rev-2");
    assert_no_plaintext_on_disk(&root, &every_value, "after the rotation to rev-2");

    // The revocation: nothing may be served, and nothing may be left. First every worker thread
    // serves rev-2.
    request_everything(&agent, PLAINTEXT_ROTATED, 200);
    let mut revoked: serde_json::Value = serde_json::from_str(&rotated_artifact).unwrap();
    revoked["revokedAt"] = REVOKED_AT.into();
    deployment.publish(&revoked.to_string());
    agent.signal(libc::SIGHUP);
    assert!(
        wait_until(SIGHUP_LIMIT, || agent.get("/v1/secrets").status == 503),
        "the revocation was not applied: {}",
        agent.stderr()
    );
    let notice =
        Needle::new("the revocation notice", &format!("Artifact revoked: api-gateway/production at {REVOKED_AT}"));
    let findings = scan_memory(&agent, &[every_value.as_slice(), &[&notice]].concat());
    assert_each_of(&findings, std::slice::from_ref(&notice), "the wipe reason");
    assert_none_of(&findings, &old, "after the revocation");
    assert_none_of(&findings, &rotated, "after the revocation");
    assert_no_plaintext_on_disk(&root, &every_value, "after the revocation");
}

/// Sends one request on a connection that stays open, and reads its answer.
fn request_and_keep_open(connection: &mut BufReader<TcpStream>, request: &str) -> crate::pressure::Answer {
    connection.get_mut().write_all(request.as_bytes()).expect("cannot send on the kept connection");
    crate::pressure::read_answer(connection)
        .expect("no answer on the kept connection")
        .expect("the kept connection was closed")
}

#[test]
fn connections_left_open_keep_no_copy_of_a_token_or_an_answer() {
    require_root();
    let deployment =
        Deployment::new("hygiene-keep-alive", &build_artifact(PLAINTEXT, "rev-1", &ArtifactOptions::default()));
    let agent = deployment.start(&[]);
    let (old, rotated) = (values_of(PLAINTEXT, "rev-1"), values_of(PLAINTEXT_ROTATED, "rev-2"));
    let connect = || {
        let stream = TcpStream::connect(("127.0.0.1", agent.port())).expect("cannot connect");
        stream.set_read_timeout(Some(STATE_LIMIT)).unwrap();
        BufReader::new(stream)
    };
    // A token the agent refuses, so no copy of it has a reason to exist; and one value served
    // alone, which a write buffer would keep as the connection's last answer.
    let refused = Needle::new("the refused bearer token", "refused-token-5f0c9a27e1d84b63");
    let mut refused_connection = connect();
    let answer = request_and_keep_open(
        &mut refused_connection,
        "GET /v1/secrets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer refused-token-5f0c9a27e1d84b63\r\n\r\n",
    );
    assert_eq!(answer.status, 401, "{}", answer.text());
    let (namespace, key, value) = {
        let parsed: serde_json::Value = serde_json::from_str(PLAINTEXT).unwrap();
        let (namespace, keys) =
            parsed.as_object().and_then(|all| all.iter().next()).map(|(n, k)| (n.clone(), k.clone())).unwrap();
        let (key, value) =
            keys.as_object().and_then(|all| all.iter().next()).map(|(k, v)| (k.clone(), v.clone())).unwrap();
        (namespace, key, value.as_str().unwrap().to_string())
    };
    let mut value_connection = connect();
    let answer = request_and_keep_open(
        &mut value_connection,
        &format!(
            "GET /v1/secrets/{}/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n",
            encode(&namespace),
            encode(&key)
        ),
    );
    assert_eq!((answer.status, answer.text()), (200, value));

    // Rotate (on other connections), then scan while both connections are still open.
    deployment.publish(&build_artifact(PLAINTEXT_ROTATED, "rev-2", &ArtifactOptions::default()));
    agent.signal(libc::SIGHUP);
    assert!(
        wait_until(SIGHUP_LIMIT, || agent.get("/v1/secrets").body == PLAINTEXT_ROTATED.as_bytes()),
        "the rotation was not served: {}",
        agent.stderr()
    );
    let every: Vec<&Needle> = old.iter().chain(&rotated).chain([&refused]).collect();
    let findings = scan_memory(&agent, &every);
    assert_each_of(&findings, &rotated, "a current value");
    assert_none_of(&findings, std::slice::from_ref(&refused), "with the refused request's connection open");
    assert_none_of(&findings, &old, "after the rotation, with a connection that was served rev-1 open");
    // Both connections were open all along: each still answers.
    let health = "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    assert_eq!(request_and_keep_open(&mut refused_connection, health).status, 200);
    assert_eq!(request_and_keep_open(&mut value_connection, health).status, 200);
}

/// A process started as [`NOBODY`], killed when dropped.
struct Unprivileged {
    child: Child,
}

impl Unprivileged {
    fn spawn(command: &mut Command) -> Unprivileged {
        command.uid(NOBODY).gid(NOBODY).current_dir("/").stdin(Stdio::null());
        // SAFETY: the closure runs in the forked child before exec and calls only getrlimit and
        // setrlimit, which are async-signal-safe and allocate nothing.
        unsafe {
            command.pre_exec(|| {
                // The core size limit as high as it goes (soft = hard), so that "no core dump" is
                // the agent's doing, not an inherited limit of 0.
                let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                if libc::getrlimit(libc::RLIMIT_CORE, &mut limit) == 0 {
                    limit.rlim_cur = limit.rlim_max;
                    libc::setrlimit(libc::RLIMIT_CORE, &limit);
                }
                Ok(())
            });
        }
        Unprivileged { child: command.spawn().expect("cannot start a process as nobody") }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The owner of `/proc/<pid>/<file>` (of the directory itself for `""`).
    fn proc_owner(&self, file: &str) -> u32 {
        let path = format!("/proc/{}/{file}", self.pid());
        std::fs::metadata(&path).unwrap_or_else(|error| panic!("cannot stat {path}: {error}")).uid()
    }

    /// Whether another process of the same user can read this one's environment (which needs
    /// the same access as reading its memory or attaching a debugger).
    fn readable_by_its_own_user(&self) -> bool {
        let status = Command::new("cat")
            .arg(format!("/proc/{}/environ", self.pid()))
            .uid(NOBODY)
            .gid(NOBODY)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("cannot run cat as nobody");
        status.success()
    }
}

impl Drop for Unprivileged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `/proc/<pid>/status` or `/proc/<pid>/limits` line's fields after its label.
fn proc_line(pid: i32, file: &str, label: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).expect("cannot read /proc/<pid>");
    let line = text.lines().find(|line| line.starts_with(label)).unwrap_or_else(|| panic!("no {label} in {file}"));
    line[label.len()..].split_whitespace().map(str::to_string).collect()
}

#[test]
fn the_agent_is_not_dumpable_so_its_own_user_can_neither_read_its_memory_nor_get_a_core_dump() {
    require_root();
    // The kernel shows a non-dumpable process's /proc/<pid> files as owned by root instead of
    // its user (the /proc/<pid> directory keeps its user). /proc/<pid>/status has no
    // "Dumpable" line, and for a process running as root both owners are root, so the agent
    // runs as nobody here; `sleep` as nobody is the dumpable control.
    let control = Unprivileged::spawn(Command::new("sleep").arg("60"));
    assert!(wait_until(STATE_LIMIT, || control.proc_owner("") == NOBODY), "the control never ran as nobody");
    assert_eq!(control.proc_owner("status"), NOBODY, "the control shows that a dumpable process owns its files");
    assert!(control.readable_by_its_own_user(), "the control: a dumpable process is readable by its own user");

    let deployment =
        Deployment::new("hygiene-dumpable", &build_artifact(PLAINTEXT, "rev-1", &ArtifactOptions::default()));
    let root = deployment.artifact.parent().expect("the deployment directory").to_path_buf();
    let age_key = age_key_line("keys/demo.agekey");
    // The key inline: nobody cannot read the fixture key's directory on every checkout.
    let env = deployment.env(&[("CLEF_AGENT_AGE_KEY_FILE", ""), ("CLEF_AGENT_AGE_KEY", &age_key)]);
    let (stdout, stderr) = (root.join("stdout"), root.join("stderr"));
    // nobody may not reach target/ (a checkout in /root): it runs a copy in its scratch directory.
    let mut command = Command::new(executable_for_any_user(&deployment.dir));
    command.env_clear().envs(env.iter().map(|(name, value)| (name, value)));
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command.stdout(File::create(&stdout).unwrap()).stderr(File::create(&stderr).unwrap());
    let agent = Unprivileged::spawn(&mut command);
    let output = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        wait_until(STATE_LIMIT, || output(&stdout).contains(READY_LINE)),
        "the agent did not start as nobody\n--- stdout ---\n{}--- stderr ---\n{}",
        output(&stdout),
        output(&stderr)
    );

    let pid = agent.pid();
    assert_eq!(proc_line(pid, "status", "Uid:"), vec![NOBODY.to_string(); 4], "the agent runs as nobody");
    assert_eq!(proc_line(pid, "status", "CoreDumping:"), ["0"]);
    assert_eq!(agent.proc_owner(""), NOBODY, "the /proc/<pid> directory keeps the agent's user");
    for file in ["status", "mem", "environ", "maps"] {
        assert_eq!(agent.proc_owner(file), 0, "/proc/<pid>/{file} of a non-dumpable process is owned by root");
    }
    assert!(!agent.readable_by_its_own_user(), "the agent's own user can read its memory: it is dumpable");

    // A non-dumpable process dumps no core unless fs.suid_dumpable is 2 ("suidsafe"), where the
    // kernel dumps it anyway (root-owned). There, only a core size limit of 0 stops it.
    let suid_dumpable = std::fs::read_to_string("/proc/sys/fs/suid_dumpable").expect("no /proc/sys/fs/suid_dumpable");
    let core_limit = proc_line(pid, "limits", "Max core file size");
    if suid_dumpable.trim() == "2" {
        assert_eq!(
            core_limit[0], "0",
            "fs.suid_dumpable is 2, so the kernel would dump the non-dumpable agent's memory on a crash: \
             the agent must set RLIMIT_CORE to 0 (limits: {core_limit:?})"
        );
    }
}
