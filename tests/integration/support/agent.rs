//! The real `clef-agent` executable as a child process: a cleared environment, its output
//! collected by reader threads, signals, and a kill when the test is done with it.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::http::{self, Response};
use super::wait_until;

/// The last start-up line: from here on the agent serves and polls.
pub const READY_LINE: &str = "Agent ready. Polling for updates.";
/// Start-up with a file source takes milliseconds; this covers a loaded CI machine.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

type Buffer = Arc<Mutex<Vec<u8>>>;

pub struct Agent {
    child: Mutex<Child>,
    stdout: Buffer,
    stderr: Buffer,
    readers: Vec<JoinHandle<()>>,
    /// `CLEF_AGENT_PORT` and `CLEF_AGENT_TOKEN` as given, for the request helpers.
    port: Option<u16>,
    token: Option<String>,
}

impl Agent {
    /// Spawns the agent with only `PATH` and `env` in its environment.
    pub fn start(env: &[(&str, &str)]) -> Agent {
        Agent::start_command(Command::new(env!("CARGO_BIN_EXE_clef-agent")), env)
    }

    /// Spawns the agent like [`Agent::start`] with the file mode creation mask `umask`, set in
    /// the child only (the umask is process-wide, and other tests run in this process).
    pub fn start_with_umask(env: &[(&str, &str)], umask: libc::mode_t) -> Agent {
        let mut command = Command::new(env!("CARGO_BIN_EXE_clef-agent"));
        // SAFETY: umask is async-signal-safe and touches nothing but the child's own mask.
        unsafe {
            command.pre_exec(move || {
                libc::umask(umask);
                Ok(())
            });
        }
        Agent::start_command(command, env)
    }

    /// Spawns `command` (the agent with arguments, or a wrapper around it) like [`Agent::start`].
    pub fn start_command(mut command: Command, env: &[(&str, &str)]) -> Agent {
        command.env_clear().stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("cannot start the clef-agent executable");
        let stdout: Buffer = Arc::default();
        let stderr: Buffer = Arc::default();
        let readers = vec![
            collect(child.stdout.take().expect("piped stdout"), Arc::clone(&stdout)),
            collect(child.stderr.take().expect("piped stderr"), Arc::clone(&stderr)),
        ];
        // An empty value is unset, for the agent and here.
        let lookup = |name: &str| {
            env.iter()
                .rev()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
                .filter(|value| !value.is_empty())
        };
        Agent {
            child: Mutex::new(child),
            stdout,
            stderr,
            readers,
            port: lookup("CLEF_AGENT_PORT").and_then(|port| port.parse().ok()),
            token: lookup("CLEF_AGENT_TOKEN"),
        }
    }

    /// Spawns the agent and waits for [`READY_LINE`].
    pub fn start_ready(env: &[(&str, &str)]) -> Agent {
        let agent = Agent::start(env);
        agent.wait_for_stdout(READY_LINE, READY_TIMEOUT);
        agent
    }

    /// Waits until stdout contains `needle`; panics with both outputs if it never does or the
    /// agent exits first.
    pub fn wait_for_stdout(&self, needle: &str, timeout: Duration) {
        self.wait_for(needle, timeout, Agent::stdout, "stdout");
    }

    /// Waits until stderr contains `needle`, like [`Agent::wait_for_stdout`].
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) {
        self.wait_for(needle, timeout, Agent::stderr, "stderr");
    }

    fn wait_for(&self, needle: &str, timeout: Duration, output: fn(&Agent) -> String, name: &str) {
        wait_until(timeout, || output(self).contains(needle) || self.try_wait().is_some());
        // An exited agent may have written the line just before it went: drain the pipes first.
        if !self.output_after_exit(output).contains(needle) {
            panic!(
                "{name} never contained {needle:?} (exit status: {:?})\n--- stdout ---\n{}--- stderr ---\n{}",
                self.try_wait(),
                self.stdout(),
                self.stderr()
            );
        }
    }

    /// The output once the readers have drained the pipes of an exited process.
    fn output_after_exit(&self, output: fn(&Agent) -> String) -> String {
        if self.try_wait().is_some() {
            wait_until(Duration::from_secs(2), || self.readers.iter().all(JoinHandle::is_finished));
        }
        output(self)
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub fn pid(&self) -> i32 {
        self.child.lock().unwrap().id() as i32
    }

    pub fn port(&self) -> u16 {
        self.port.expect("the agent was started without CLEF_AGENT_PORT")
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill() only sends a signal, to our own child, which is not reaped yet
        // (Drop reaps it), so the pid cannot belong to another process.
        let result = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(result, 0, "kill({}, {signal}) failed: {}", self.pid(), std::io::Error::last_os_error());
    }

    fn try_wait(&self) -> Option<ExitStatus> {
        self.child.lock().unwrap().try_wait().expect("cannot query the child process")
    }

    /// The process has not exited.
    pub fn is_running(&self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits up to `timeout` for the agent to exit; its output is complete afterwards.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.try_wait();
            status.is_some()
        });
        if status.is_some() {
            wait_until(Duration::from_secs(2), || self.readers.iter().all(JoinHandle::is_finished));
        }
        status
    }

    /// GET `path` with the bearer token the agent was started with.
    pub fn get(&self, path: &str) -> Response {
        let bearer = format!("Bearer {}", self.token.as_deref().expect("the agent was started without a token"));
        http::get(self.port(), path, &[("Authorization", &bearer)])
    }

    /// GET `path` with exactly the headers given (plus the default Host).
    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        http::get(self.port(), path, headers)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn collect(mut pipe: impl Read + Send + 'static, buffer: Buffer) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(count @ 1..) = pipe.read(&mut chunk) {
            buffer.lock().unwrap().extend_from_slice(&chunk[..count]);
        }
    })
}
