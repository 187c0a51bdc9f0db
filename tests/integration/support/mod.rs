//! What every integration test needs: scratch directories, free ports, a deadline-bounded
//! poll, the checked-in fixtures, and the three helpers in the submodules — a running agent,
//! a tiny HTTP client and an artifact builder.

mod agent;
mod artifact;
mod http;
pub mod loopback;
mod slow_reader;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use self::agent::{Agent, READY_LINE};
pub use self::artifact::{
    build_artifact, build_envelope_artifact, epoch_ms_to_iso8601, now_ms, sha256_hex, ArtifactOptions, EnvelopeKms,
};
pub use self::http::{get, get_unix, raw, request, request_without_host, Response};
pub use self::slow_reader::SlowReader;

/// The bearer token the tests configure. Distinctive, so a log line that leaked it would show.
pub const TOKEN: &str = "clef-it-token-6f1d0c9a2b7e4f5d";

/// The plaintext most tests serve: compact JSON as `JSON.stringify` writes it, with names that
/// need percent-encoding and values that need JSON escapes.
pub const PLAINTEXT: &str = concat!(
    r#"{"database":{"DB_URL":"postgres://app:db-pass-4a1f@db.internal:5432/app","DB_PASSWORD":"db-pass-4a1f"},"#,
    r#""payments":{"STRIPE KEY":"sk_live_9d8c7b6a","café":"crème-brûlée-7e3b","QUOTED":"say \"hi\"\\ now\n\u001f/ok"}}"#
);
/// A second revision of [`PLAINTEXT`] with every value rotated.
pub const PLAINTEXT_ROTATED: &str = concat!(
    r#"{"database":{"DB_URL":"postgres://app:db-pass-b702@db.internal:5432/app","DB_PASSWORD":"db-pass-b702"},"#,
    r#""payments":{"STRIPE KEY":"sk_live_1e2f3a4b","café":"crème-brûlée-c91d","QUOTED":"rotated \"quote\" 55d0"}}"#
);

/// How often [`wait_until`] looks again.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// `tests/fixtures/<relative>`.
pub fn fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(relative)
}

/// The `AGE-SECRET-KEY-1…` line of an identity file among the fixtures.
pub fn age_key_line(relative: &str) -> String {
    let contents = read_fixture(relative);
    let line = contents.lines().map(str::trim).find(|line| line.starts_with("AGE-SECRET-KEY-1"));
    line.unwrap_or_else(|| panic!("{relative} holds no AGE-SECRET-KEY-1 line")).to_string()
}

/// The text of a fixture file, with a message that says which one is missing.
pub fn read_fixture(relative: &str) -> String {
    let path = fixture(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("cannot read fixture {}: {error}", path.display()))
}

/// A port that was free a moment ago: bind port 0, read the port, let it go.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind an ephemeral port");
    listener.local_addr().expect("no local address").port()
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; true when it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// A scratch directory of one test, removed when the test passes (kept for a look when it fails).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(test: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let counter = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("clef-it-{test}-{}-{counter}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|error| panic!("cannot create {}: {error}", path.display()));
        TempDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A copy of the agent's executable in `dir` that any user may run, for the tests that start
/// it as another user (`nobody`): that user may not be able to reach the one under `target/`,
/// as when the checkout lies in `/root` (mode 0700, root's default home). `dir` is opened to
/// everyone (0755) on the way. `install` makes the copy in a process of its own, so no writable
/// descriptor of it is ever open in this one, where a concurrent test's fork could inherit it
/// and make the exec fail with "text file busy".
pub fn executable_for_any_user(dir: &TempDir) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|error| panic!("cannot open {} to every user: {error}", dir.path.display()));
    let copy = dir.join("clef-agent");
    let status = std::process::Command::new("install")
        .args(["-m", "0755", env!("CARGO_BIN_EXE_clef-agent")])
        .arg(&copy)
        .status()
        .expect("cannot run install (coreutils)");
    assert!(status.success(), "cannot copy the clef-agent executable to {}", copy.display());
    copy
}

/// Replaces `path` the way a deployment should: a temp file in the same directory, then a
/// rename, so the agent never reads half a file.
pub fn write_atomically(path: &Path, text: &str) {
    let name = path.file_name().and_then(|name| name.to_str()).expect("a file name");
    let temporary = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&temporary, text).unwrap_or_else(|error| panic!("cannot write {}: {error}", temporary.display()));
    std::fs::rename(&temporary, path).unwrap_or_else(|error| panic!("cannot rename onto {}: {error}", path.display()));
}

/// One agent deployment: a scratch directory holding the artifact file, a port and the standard
/// environment (file source, the demo age key file, the test token).
pub struct Deployment {
    pub dir: TempDir,
    pub artifact: PathBuf,
    pub port: u16,
}

impl Deployment {
    /// A deployment whose artifact file holds `artifact_json`.
    pub fn new(test: &str, artifact_json: &str) -> Deployment {
        let dir = TempDir::new(test);
        let artifact = dir.join("artifact.age.json");
        write_atomically(&artifact, artifact_json);
        Deployment { dir, artifact, port: free_port() }
    }

    /// The standard environment, with `extra` added; an entry of `extra` replaces a standard one
    /// of the same name, and an empty value unsets it (the agent treats empty as unset).
    pub fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("CLEF_AGENT_SOURCE".into(), self.artifact.display().to_string()),
            ("CLEF_AGENT_AGE_KEY_FILE".into(), fixture("keys/demo.agekey").display().to_string()),
            ("CLEF_AGENT_PORT".into(), self.port.to_string()),
            ("CLEF_AGENT_TOKEN".into(), TOKEN.into()),
        ];
        for (name, value) in extra {
            env.retain(|(existing, _)| existing != name);
            env.push((name.to_string(), value.to_string()));
        }
        env
    }

    /// Starts the agent and waits until it is ready.
    pub fn start(&self, extra: &[(&str, &str)]) -> Agent {
        let env = self.env(extra);
        let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        Agent::start_ready(&env)
    }

    /// Starts the agent without waiting for anything.
    pub fn spawn(&self, extra: &[(&str, &str)]) -> Agent {
        let env = self.env(extra);
        let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        Agent::start(&env)
    }

    /// Replaces the artifact file atomically.
    pub fn publish(&self, text: &str) {
        write_atomically(&self.artifact, text);
    }
}

/// `lastRefreshAt` of `/v1/health` (epoch ms): it moves on every successful refresh, including
/// one that found the artifact unchanged.
pub fn last_refresh_at(agent: &Agent) -> u64 {
    let health = get(agent.port(), "/v1/health", &[]).json();
    health["lastRefreshAt"].as_u64().unwrap_or_else(|| panic!("no lastRefreshAt in {health}"))
}

/// Sends SIGHUP and waits up to `limit` until the refresh it causes has completed
/// successfully (the health check's `lastRefreshAt` moved), whatever it found.
pub fn sighup_and_wait_for_refresh(agent: &Agent, limit: Duration) {
    let before = last_refresh_at(agent);
    // lastRefreshAt has millisecond resolution: make sure the next refresh cannot share it.
    assert!(wait_until(Duration::from_secs(1), || now_ms() > before + 1));
    agent.signal(libc::SIGHUP);
    assert!(
        wait_until(limit, || last_refresh_at(agent) > before),
        "no successful refresh after SIGHUP; stdout: {}\nstderr: {}",
        agent.stdout(),
        agent.stderr()
    );
}
