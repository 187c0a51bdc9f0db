//! S3 sources end to end against a real AWS emulator: `moto_server` (installed into `.venv` by
//! `make deps`) on a free loopback port, its bucket, objects, IAM users and roles made through
//! its own API with boto3 (`tests/aws/moto_admin.py`). Once a test's setup is done, moto is
//! told to check every request's SigV4 signature and IAM policy, so a secret served here is an
//! object S3 (as moto plays it) let this agent read with the credentials it was given.
//!
//! Credentials come from each link of the chain: environment keys, web identity through STS
//! `AssumeRoleWithWebIdentity` (moto's, behind a recorder), container credentials and IMDSv2
//! (loopback servers answering the documented shapes with moto-issued temporary keys). Moto's
//! request log shows what the agent asked and what it was answered (the 304 of an unchanged
//! object, the three attempts of a failed start). No key, token or secret may reach the
//! agent's output.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::loopback::{Answer, Recorded, Server};
use crate::support::{
    build_artifact, free_port, get, sighup_and_wait_for_refresh, wait_until, Agent, ArtifactOptions, Deployment,
    TempDir, PLAINTEXT, PLAINTEXT_ROTATED,
};

const BUCKET: &str = "clef-artifacts";
/// A key that needs percent-encoding (spaces, UTF-8) in the URL and in the signature.
const KEY: &str = "packed/api gateway/production é.age.json";
const REGION: &str = "us-east-1";
/// Python starts, imports moto and binds: seconds on a loaded two-core machine.
const MOTO_READY_LIMIT: Duration = Duration::from_secs(60);
/// SIGHUP refreshes at once; this leaves slack for a loaded machine.
const SIGHUP_LIMIT: Duration = Duration::from_secs(5);
/// Three start-up attempts with 2 s and 4 s of backoff between them.
const FAILED_START_LIMIT: Duration = Duration::from_secs(30);
/// With a one-hour TTL the poller waits at least 324 s: no test ever sees a scheduled poll.
const SLOW_POLLING: (&str, &str) = ("CLEF_AGENT_CACHE_TTL", "3600");
/// Moto's log line of a request may follow the answer by a moment.
const LOG_LIMIT: Duration = Duration::from_secs(5);

const NOT_FOUND_HINT: &str =
    "The artifact was not found: has it been packed (clef pack) and deployed to this source yet?";
const ACCESS_HINT: &str = concat!(
    "Check that the agent has read access to the artifact ",
    "(IAM policy, bucket policy, token scope or file permissions)."
);

/// `<repository>/.venv/bin/<name>`; panics when `make deps` has not installed it.
pub fn venv_tool(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run make deps (it installs moto_server, boto3 and botocore from \
         tests/aws/requirements.txt into .venv)",
        path.display()
    );
    path
}

/// `tests/aws/<name>`.
pub fn aws_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aws").join(name)
}

/// An access key pair as IAM (`create-access-key`) hands it out.
#[derive(Clone)]
pub(crate) struct AccessKey {
    pub(crate) id: String,
    pub(crate) secret: String,
}

impl AccessKey {
    fn from_json(text: &str) -> AccessKey {
        let value: serde_json::Value =
            serde_json::from_str(text).unwrap_or_else(|error| panic!("not an access key ({error}): {text}"));
        let field = |name: &str| value[name].as_str().unwrap_or_else(|| panic!("no {name} in {text}")).to_string();
        AccessKey { id: field("AccessKeyId"), secret: field("SecretAccessKey") }
    }
}

/// One request in moto's log: what was asked and what moto answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Logged {
    pub(crate) method: String,
    /// Percent-decoded.
    pub(crate) path: String,
    pub(crate) status: u16,
}

type Buffer = Arc<Mutex<Vec<u8>>>;

/// A `moto_server` child process on a free loopback port, killed on drop, with an IAM admin
/// user (every action allowed) that `moto_admin.py` acts as, before and after IAM checks are on.
pub(crate) struct Moto {
    pub(crate) port: u16,
    child: Child,
    stdout: Buffer,
    stderr: Buffer,
    readers: Vec<JoinHandle<()>>,
    admin: Option<AccessKey>,
    scratch: TempDir,
}

impl Moto {
    /// Starts moto_server and waits until it answers HTTP. A port taken between
    /// [`free_port`] and moto's bind costs another try.
    pub(crate) fn start() -> Moto {
        let (moto_server, _) = (venv_tool("moto_server"), venv_tool("python"));
        for attempt in 1..=3 {
            let port = free_port();
            let mut command = Command::new(&moto_server);
            command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            command.env_clear().stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
            if let Some(path) = std::env::var_os("PATH") {
                command.env("PATH", path);
            }
            let mut child =
                command.spawn().unwrap_or_else(|error| panic!("cannot start {}: {error}", moto_server.display()));
            let (stdout, stderr): (Buffer, Buffer) = (Arc::default(), Arc::default());
            let readers = vec![
                collect(child.stdout.take().expect("piped stdout"), Arc::clone(&stdout)),
                collect(child.stderr.take().expect("piped stderr"), Arc::clone(&stderr)),
            ];
            let mut moto = Moto { port, child, stdout, stderr, readers, admin: None, scratch: TempDir::new("moto") };
            wait_until(MOTO_READY_LIMIT, || moto.answers_http() || moto.exited());
            if moto.answers_http() {
                let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#;
                let admin = moto.admin(&[&["create-user", "clef-it-admin", policy]]);
                moto.admin = Some(AccessKey::from_json(&admin[0]));
                return moto;
            }
            let output = moto.output();
            if !(moto.exited() && output.contains("Address already in use") && attempt < 3) {
                panic!("moto_server did not answer on 127.0.0.1:{port} within {MOTO_READY_LIMIT:?}:\n{output}");
            }
        }
        unreachable!("the last attempt panics")
    }

    /// `http://127.0.0.1:<port>`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// True when `GET /moto-api/` answers 200.
    fn answers_http(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let request = format!("GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n", self.port);
        let mut answer = Vec::new();
        if stream.write_all(request.as_bytes()).is_err() || stream.read_to_end(&mut answer).is_err() {
            return false;
        }
        answer.starts_with(b"HTTP/1.1 200 ") || answer.starts_with(b"HTTP/1.0 200 ")
    }

    fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// Both outputs, for failure messages.
    pub(crate) fn output(&self) -> String {
        wait_until(Duration::from_secs(1), || self.readers.iter().all(JoinHandle::is_finished));
        format!(
            "--- moto stdout ---\n{}--- moto stderr ---\n{}",
            String::from_utf8_lossy(&self.stdout.lock().unwrap()),
            String::from_utf8_lossy(&self.stderr.lock().unwrap())
        )
    }

    /// Runs `moto_admin.py` with `commands` chained, as the admin user once there is one;
    /// returns its output lines. Panics with its output when it fails.
    pub(crate) fn admin(&self, commands: &[&[&str]]) -> Vec<String> {
        let mut command = Command::new(venv_tool("python"));
        command.arg(aws_script("moto_admin.py")).args(["--endpoint", &self.endpoint()]);
        for (index, words) in commands.iter().enumerate() {
            if index > 0 {
                command.arg("+");
            }
            command.args(words.iter());
        }
        command.env_clear().stdin(Stdio::null());
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        // No configuration of this machine's may change what boto3 does.
        command.envs([
            ("AWS_CONFIG_FILE", "/dev/null"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]);
        if let Some(admin) = &self.admin {
            command.env("AWS_ACCESS_KEY_ID", &admin.id).env("AWS_SECRET_ACCESS_KEY", &admin.secret);
        }
        let output = command.output().expect("cannot run moto_admin.py");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "moto_admin.py {commands:?} failed ({}):\n{stdout}{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            self.output()
        );
        stdout.lines().map(str::to_string).collect()
    }

    /// Writes `text` to `bucket`/`key`; returns the ETag S3 gave it.
    fn put_object(&self, bucket: &str, key: &str, text: &str) -> String {
        let file = self.scratch.join("object");
        std::fs::write(&file, text).expect("cannot write the object file");
        let file = file.display().to_string();
        self.admin(&[&["put-object", bucket, key, &file]]).remove(0)
    }

    /// An IAM user whose only inline policy is `policy`, with an access key.
    pub(crate) fn create_user(&self, name: &str, policy: &str) -> AccessKey {
        AccessKey::from_json(&self.admin(&[&["create-user", name, policy]])[0])
    }

    /// From now on every request needs a valid signature of a known principal whose policies
    /// allow it, after `free_actions` unchecked ones.
    pub(crate) fn enforce_auth(&self, free_actions: u32) {
        self.admin(&[&["enforce-auth", &free_actions.to_string()]]);
    }

    /// Every request moto logged, in order.
    fn requests(&self) -> Vec<Logged> {
        let stderr = String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned();
        stderr.lines().filter_map(|line| parse_log_line(&strip_ansi(line))).collect()
    }

    /// The requests after the last [`Moto::enforce_auth`], in order.
    pub(crate) fn requests_since_enforced(&self) -> Vec<Logged> {
        let requests = self.requests();
        let last = requests.iter().rposition(|request| request.path == "/moto-api/reset-auth");
        requests[last.map_or(0, |index| index + 1)..].to_vec()
    }

    /// The GETs of `bucket`/`key`, in order.
    fn gets(&self, bucket: &str, key: &str) -> Vec<Logged> {
        let path = format!("/{bucket}/{key}");
        self.requests().into_iter().filter(|request| request.method == "GET" && request.path == path).collect()
    }

    /// Waits until moto logged `count` GETs of `bucket`/`key` and returns them all.
    fn wait_for_gets(&self, bucket: &str, key: &str, count: usize, agent: &Agent) -> Vec<Logged> {
        let arrived = wait_until(LOG_LIMIT, || self.gets(bucket, key).len() >= count);
        assert!(
            arrived,
            "moto logged {:?} for /{bucket}/{key}, expected {count} GETs\n\
             --- agent stdout ---\n{}--- agent stderr ---\n{}{}",
            self.gets(bucket, key),
            agent.stdout(),
            agent.stderr(),
            self.output()
        );
        self.gets(bucket, key)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// werkzeug colours the request line by status: `ESC [ … m` sequences removed.
fn strip_ansi(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// `127.0.0.1 - - [date] "GET /bucket/key HTTP/1.1" 200 -` → the request and its status.
fn parse_log_line(line: &str) -> Option<Logged> {
    let (_, rest) = line.split_once(" \"")?;
    let (request_line, rest) = rest.rsplit_once("\" ")?;
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next()?, parts.next()?);
    let status = rest.split_whitespace().next()?.parse().ok()?;
    let path = target.split('?').next().unwrap_or_default();
    Some(Logged { method: method.to_string(), path: percent_decode(path), status })
}

/// Decodes `%XX` escapes (lossy on bad UTF-8); `+` stays `+`.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escape = (bytes[index] == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match escape {
            Some(byte) => {
                decoded.push(byte);
                index += 3;
            }
            None => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// The fields of an `application/x-www-form-urlencoded` body, decoded.
fn form_fields(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(&name.replace('+', " ")), percent_decode(&value.replace('+', " ")))
        })
        .collect()
}

/// An IAM policy allowing `actions` on `resource`.
pub(crate) fn allow(actions: &[&str], resource: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": actions, "Resource": resource}],
    })
    .to_string()
}

/// Reading objects of [`BUCKET`], nothing else.
fn read_objects() -> String {
    allow(&["s3:GetObject"], &format!("arn:aws:s3:::{BUCKET}/*"))
}

fn artifact(plaintext: &str, revision: &str) -> String {
    build_artifact(plaintext, revision, &ArtifactOptions::default())
}

/// A bucket holding `key` (the rev-1 artifact of [`PLAINTEXT`]), made as the admin.
fn bucket_with(moto: &Moto, key: &str) -> String {
    moto.admin(&[&["create-bucket", BUCKET]]);
    moto.put_object(BUCKET, key, &artifact(PLAINTEXT, "rev-1"))
}

/// The agent's environment besides the deployment's: `source`, the region, moto as the S3
/// endpoint, no instance metadata, slow polling, and `extra` (which wins).
fn s3_env(moto: &Moto, source: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("CLEF_AGENT_SOURCE".into(), source.into()),
        ("AWS_REGION".into(), REGION.into()),
        ("AWS_ENDPOINT_URL_S3".into(), moto.endpoint()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        (SLOW_POLLING.0.into(), SLOW_POLLING.1.into()),
    ];
    for (name, value) in extra {
        env.retain(|(existing, _)| existing != name);
        env.push((name.to_string(), value.to_string()));
    }
    env
}

pub(crate) fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect()
}

pub(crate) fn keys_env(key: &AccessKey) -> [(&str, &str); 2] {
    [("AWS_ACCESS_KEY_ID", key.id.as_str()), ("AWS_SECRET_ACCESS_KEY", key.secret.as_str())]
}

/// Starts an agent on `source` and waits until it is ready.
fn start_agent(test: &str, moto: &Moto, source: &str, extra: &[(&str, &str)]) -> (Deployment, Agent) {
    let deployment = Deployment::new(test, &artifact(PLAINTEXT, "file-artifact-unused"));
    let env = s3_env(moto, source, extra);
    let agent = deployment.start(&pairs(&env));
    (deployment, agent)
}

/// Starts an agent that is expected to fail start-up.
fn spawn_agent(test: &str, moto: &Moto, source: &str, extra: &[(&str, &str)]) -> (Deployment, Agent) {
    let deployment = Deployment::new(test, &artifact(PLAINTEXT, "file-artifact-unused"));
    let env = s3_env(moto, source, extra);
    let agent = deployment.spawn(&pairs(&env));
    (deployment, agent)
}

/// Neither output carries any of `secrets`.
pub(crate) fn assert_never_logged(agent: &Agent, secrets: &[&str]) {
    let (stdout, stderr) = (agent.stdout(), agent.stderr());
    for secret in secrets {
        assert!(!secret.is_empty());
        assert!(!stdout.contains(secret), "a credential ({} chars) leaked to stdout:\n{stdout}", secret.len());
        assert!(!stderr.contains(secret), "a credential ({} chars) leaked to stderr:\n{stderr}", secret.len());
    }
}

pub(crate) fn revision(agent: &Agent) -> String {
    get(agent.port(), "/v1/health", &[]).json()["revision"].as_str().unwrap_or_default().to_string()
}

pub(crate) fn logged(method: &str, path: &str, status: u16) -> Logged {
    Logged { method: method.into(), path: path.into(), status }
}

/// Waits for the agent to exit and returns its `[clef-agent] fatal: ` line; asserts exit code 1.
pub(crate) fn fatal_line(agent: &Agent) -> String {
    let status = agent.wait_exit(FAILED_START_LIMIT);
    assert_eq!(status.and_then(|status| status.code()), Some(1), "stderr: {}", agent.stderr());
    let stderr = agent.stderr();
    stderr.lines().find(|line| line.starts_with("[clef-agent] fatal: ")).unwrap_or_default().to_string()
}

/// Sends `request` on to 127.0.0.1:`port` as it came (Host and all) and returns the answer,
/// or a 502 saying why it could not.
pub(crate) fn forward(port: u16, request: &Recorded) -> Answer {
    let exchange = || -> Result<Answer, String> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|error| error.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|error| error.to_string())?;
        let mut head = format!("{} {} HTTP/1.1\r\n", request.method, request.path);
        for (name, value) in &request.headers {
            if !matches!(name.as_str(), "connection" | "content-length" | "transfer-encoding" | "keep-alive") {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        head.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", request.body.len()));
        stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&request.body)).map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).map_err(|error| error.to_string())?;
        let split = answer.windows(4).position(|window| window == b"\r\n\r\n").ok_or("no header block")?;
        let head = String::from_utf8_lossy(&answer[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next().and_then(|line| line.split(' ').nth(1)).and_then(|code| code.parse().ok());
        let mut headers = Vec::new();
        let mut chunked = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { continue };
            let (name, value) = (name.trim(), value.trim());
            match name.to_ascii_lowercase().as_str() {
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "content-length" | "connection" | "keep-alive" => {}
                _ => headers.push((name.to_string(), value.to_string())),
            }
        }
        let mut body = answer[split + 4..].to_vec();
        if chunked {
            body = dechunk(&body).ok_or("a broken chunked body")?;
        }
        Ok(Answer { status: status.ok_or("no status")?, headers, body })
    };
    exchange().unwrap_or_else(|why| Answer::json(502, &serde_json::json!({ "forwarding": why }).to_string()))
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut plain = Vec::new();
    loop {
        let line_end = body.windows(2).position(|window| window == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(plain);
        }
        plain.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// Temporary credentials as `moto_admin.py assume-role` prints them: the container shape.
struct TemporaryCredentials {
    json: String,
    secret: String,
    token: String,
}

fn assume_role(moto: &Moto, role_arn: &str) -> TemporaryCredentials {
    let json = moto.admin(&[&["assume-role", role_arn, "clef-it-session"]]).remove(0);
    let value: serde_json::Value = serde_json::from_str(&json).expect("assume-role prints JSON");
    let field = |name: &str| value[name].as_str().unwrap_or_else(|| panic!("no {name} in {json}")).to_string();
    let (access_key_id, secret, token) = (field("AccessKeyId"), field("SecretAccessKey"), field("Token"));
    assert!(access_key_id.starts_with("ASIA"), "{access_key_id}");
    TemporaryCredentials { json, secret, token }
}

/// A role that may read the objects of [`BUCKET`]; returns its ARN.
fn reader_role(moto: &Moto, name: &str) -> String {
    moto.admin(&[&["create-role", name, &read_objects()]]).remove(0)
}

#[test]
fn serves_an_s3_url_object_through_a_signature_moto_checks() {
    let moto = Moto::start();
    bucket_with(&moto, KEY);
    let reader = moto.create_user("clef-reader", &read_objects());
    moto.enforce_auth(0);
    let source = format!("s3://{BUCKET}/{KEY}");
    let (_deployment, agent) = start_agent("s3-url", &moto, &source, &keys_env(&reader));

    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    agent.get("/v1/secrets/database/DB_PASSWORD").assert(200, "db-pass-4a1f");
    assert_eq!(revision(&agent), "rev-1");
    let path = format!("/{BUCKET}/{KEY}");
    assert_eq!(moto.wait_for_gets(BUCKET, KEY, 1, &agent), [logged("GET", &path, 200)]);
    assert_never_logged(&agent, &[&reader.secret]);
}

#[test]
fn serves_https_urls_of_both_styles_through_the_endpoint_overrides() {
    let moto = Moto::start();
    let virtual_key = "virtual/production é.age.json";
    let path_key = "path style/production.age.json";
    moto.admin(&[&["create-bucket", BUCKET]]);
    moto.put_object(BUCKET, virtual_key, &artifact(PLAINTEXT, "rev-virtual"));
    moto.put_object(BUCKET, path_key, &artifact(PLAINTEXT_ROTATED, "rev-path"));
    let reader = moto.create_user("clef-reader", &read_objects());
    moto.enforce_auth(0);

    // Virtual-hosted, region in the host (so the signature's scope says eu-west-1), sent to
    // moto path style because AWS_ENDPOINT_URL_S3 is set.
    let virtual_hosted = format!("https://{BUCKET}.s3.eu-west-1.amazonaws.com/virtual/production%20%C3%A9.age.json");
    let keys = keys_env(&reader);
    let (_first, agent) = start_agent("s3-https-virtual", &moto, &virtual_hosted, &keys);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    assert_eq!(revision(&agent), "rev-virtual");
    let logged_virtual = moto.wait_for_gets(BUCKET, virtual_key, 1, &agent);
    assert_eq!(logged_virtual, [logged("GET", &format!("/{BUCKET}/{virtual_key}"), 200)]);
    assert_never_logged(&agent, &[&reader.secret]);

    // Path style, region us-west-2, through the general AWS_ENDPOINT_URL (no _S3 override).
    let path_style = format!("https://s3.us-west-2.amazonaws.com/{BUCKET}/path%20style/production.age.json");
    let mut extra = keys.to_vec();
    let endpoint = moto.endpoint();
    extra.extend([("AWS_ENDPOINT_URL_S3", ""), ("AWS_ENDPOINT_URL", endpoint.as_str())]);
    let (_second, agent) = start_agent("s3-https-path", &moto, &path_style, &extra);
    agent.get("/v1/secrets").assert(200, PLAINTEXT_ROTATED);
    assert_eq!(revision(&agent), "rev-path");
    let logged_path = moto.wait_for_gets(BUCKET, path_key, 1, &agent);
    assert_eq!(logged_path, [logged("GET", &format!("/{BUCKET}/{path_key}"), 200)]);
    assert_never_logged(&agent, &[&reader.secret]);
}

#[test]
fn picks_up_a_rotated_object_by_its_etag_and_costs_a_304_when_unchanged() {
    let moto = Moto::start();
    let first_etag = bucket_with(&moto, KEY);
    let reader = moto.create_user("clef-reader", &read_objects());
    moto.enforce_auth(0);
    let (_deployment, agent) = start_agent("s3-rotation", &moto, &format!("s3://{BUCKET}/{KEY}"), &keys_env(&reader));
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    let path = format!("/{BUCKET}/{KEY}");
    assert_eq!(moto.wait_for_gets(BUCKET, KEY, 1, &agent), [logged("GET", &path, 200)]);

    // Unchanged: the one GET of the refresh carries If-None-Match and moto answers 304; the
    // agent says nothing and keeps serving.
    let (stdout_before, stderr_before) = (agent.stdout(), agent.stderr());
    sighup_and_wait_for_refresh(&agent, SIGHUP_LIMIT);
    let gets = moto.wait_for_gets(BUCKET, KEY, 2, &agent);
    assert_eq!(gets[1..], [logged("GET", &path, 304)], "one conditional GET per refresh");
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    assert_eq!((agent.stdout(), agent.stderr()), (stdout_before, stderr_before), "an unchanged object logs nothing");

    // Rotated: a new object, a new ETag, the new secrets on the next refresh.
    let second_etag = moto.put_object(BUCKET, KEY, &artifact(PLAINTEXT_ROTATED, "rev-2"));
    assert_ne!(first_etag, second_etag);
    sighup_and_wait_for_refresh(&agent, SIGHUP_LIMIT);
    agent.get("/v1/secrets").assert(200, PLAINTEXT_ROTATED);
    agent.wait_for_stdout("[clef-agent] refreshed: revision rev-2 (5 keys)\n", SIGHUP_LIMIT);
    assert_eq!(revision(&agent), "rev-2");
    let gets = moto.wait_for_gets(BUCKET, KEY, 3, &agent);
    assert_eq!(gets[2..], [logged("GET", &path, 200)]);

    // And the new ETag is the one asked about next.
    sighup_and_wait_for_refresh(&agent, SIGHUP_LIMIT);
    let gets = moto.wait_for_gets(BUCKET, KEY, 4, &agent);
    assert_eq!(gets[3..], [logged("GET", &path, 304)]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT_ROTATED);
    assert_never_logged(&agent, &[&reader.secret]);
}

#[test]
fn a_missing_object_fails_start_up_after_three_attempts_with_the_not_found_hint() {
    let moto = Moto::start();
    moto.admin(&[&["create-bucket", BUCKET]]);
    // With s3:ListBucket S3 answers a missing key 404 (without it, 403).
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": format!("arn:aws:s3:::{BUCKET}/*")},
            {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": format!("arn:aws:s3:::{BUCKET}")},
        ],
    });
    let reader = moto.create_user("clef-reader", &policy.to_string());
    moto.enforce_auth(0);
    let key = "packed/never deployed.age.json";
    let source = format!("s3://{BUCKET}/{key}");
    let started = Instant::now();
    let (_deployment, agent) = spawn_agent("s3-missing", &moto, &source, &keys_env(&reader));

    let fatal = fatal_line(&agent);
    let elapsed = started.elapsed();
    assert_eq!(
        fatal,
        format!(
            "[clef-agent] fatal: Failed to fetch artifact from {source} after 3 attempts: \
             {source} was not found (HTTP 404, NoSuchKey). {NOT_FOUND_HINT}"
        )
    );
    assert!(elapsed >= Duration::from_secs(6), "three attempts take 2 s + 4 s of backoff, took {elapsed:?}");
    let stderr = agent.stderr();
    for attempt in 1..=2 {
        let line = format!(
            "initial fetch failed (attempt {attempt} of 3): {source} was not found (HTTP 404, NoSuchKey); retrying in"
        );
        assert!(stderr.contains(&line), "{stderr}");
    }
    let path = format!("/{BUCKET}/{key}");
    assert_eq!(moto.wait_for_gets(BUCKET, key, 3, &agent), vec![logged("GET", &path, 404); 3]);
    assert_never_logged(&agent, &[&reader.secret]);
}

#[test]
fn refused_reads_fail_start_up_with_the_access_hint() {
    let moto = Moto::start();
    bucket_with(&moto, KEY);
    // A user whose policy does not cover GetObject, and the reader with a wrong secret.
    let lister = moto.create_user("clef-lister", &allow(&["s3:ListBucket"], &format!("arn:aws:s3:::{BUCKET}")));
    let reader = moto.create_user("clef-reader", &read_objects());
    let wrong_secret = "wJalrXUtnFEMI/K7MDENG/clefItWrongSecretKey0";
    moto.enforce_auth(0);
    let source = format!("s3://{BUCKET}/{KEY}");
    let (_first, denied) = spawn_agent("s3-denied", &moto, &source, &keys_env(&lister));
    let forged_keys = [("AWS_ACCESS_KEY_ID", reader.id.as_str()), ("AWS_SECRET_ACCESS_KEY", wrong_secret)];
    let (_second, forged) = spawn_agent("s3-forged", &moto, &source, &forged_keys);

    for (agent, code) in [(&denied, "AccessDenied"), (&forged, "SignatureDoesNotMatch")] {
        let fatal = fatal_line(agent);
        assert_eq!(
            fatal,
            format!(
                "[clef-agent] fatal: Failed to fetch artifact from {source} after 3 attempts: \
                 access to {source} was denied (HTTP 403, {code}). {ACCESS_HINT}"
            )
        );
    }
    let path = format!("/{BUCKET}/{KEY}");
    assert_eq!(moto.wait_for_gets(BUCKET, KEY, 6, &denied), vec![logged("GET", &path, 403); 6]);
    assert_never_logged(&denied, &[&lister.secret]);
    assert_never_logged(&forged, &[wrong_secret, &reader.secret]);
}

#[test]
fn web_identity_credentials_come_from_sts_assume_role_with_web_identity() {
    let moto = Moto::start();
    bucket_with(&moto, KEY);
    let role_arn = reader_role(&moto, "clef-irsa-reader");
    // AssumeRoleWithWebIdentity is unsigned: the one action moto lets through unchecked.
    moto.enforce_auth(1);
    // STS is moto's, behind a recorder that keeps the request and the answer.
    let answers: Arc<Mutex<Vec<String>>> = Arc::default();
    let (moto_port, kept) = (moto.port, Arc::clone(&answers));
    let sts = Server::start(move |request| {
        let answer = forward(moto_port, request);
        kept.lock().unwrap().push(String::from_utf8_lossy(&answer.body).into_owned());
        answer
    });
    let scratch = TempDir::new("s3-web-identity");
    // A JWT's shape, as the EKS token file holds it.
    let token = concat!(
        "eyJhbGciOiJSUzI1NiIsImtpZCI6ImNsZWYtaXQifQ",
        ".eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YXBwOmNsZWYtYWdlbnQifQ",
        ".clefItWebIdentitySignature7Kq2"
    );
    let token_file = scratch.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let token_file = token_file.display().to_string();
    let sts_url = sts.url("");
    let source = format!("s3://{BUCKET}/{KEY}");
    let (_deployment, agent) = start_agent(
        "s3-web-identity",
        &moto,
        &source,
        &[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file),
            ("AWS_ROLE_ARN", &role_arn),
            ("AWS_ROLE_SESSION_NAME", "clef-it-session"),
            ("AWS_ENDPOINT_URL_STS", &sts_url),
        ],
    );

    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    let requests = sts.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = &requests[0];
    assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/"));
    assert_eq!(request.header("Content-Type"), Some("application/x-www-form-urlencoded"));
    assert_eq!(request.header("Authorization"), None, "AssumeRoleWithWebIdentity is not signed");
    let expected: Vec<(String, String)> = [
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", role_arn.as_str()),
        ("RoleSessionName", "clef-it-session"),
        ("WebIdentityToken", token),
    ]
    .iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect();
    assert_eq!(form_fields(&request.body_text()), expected);
    // Moto issued the credentials; moto then checked the S3 request's signature with them.
    let answer = answers.lock().unwrap()[0].clone();
    let field =
        |name: &str| clef_agent::cloud::aws::xml_text(&answer, name).unwrap_or_else(|| panic!("no {name}: {answer}"));
    let (access_key_id, secret, session_token) =
        (field("AccessKeyId"), field("SecretAccessKey"), field("SessionToken"));
    assert!(access_key_id.starts_with("ASIA"), "{answer}");
    let path = format!("/{BUCKET}/{KEY}");
    assert_eq!(moto.requests_since_enforced(), [logged("POST", "/", 200), logged("GET", &path, 200)]);

    // The credentials are kept until shortly before they expire: a refresh asks STS nothing.
    sighup_and_wait_for_refresh(&agent, SIGHUP_LIMIT);
    assert_eq!(moto.wait_for_gets(BUCKET, KEY, 2, &agent)[1..], [logged("GET", &path, 304)]);
    assert_eq!(sts.requests().len(), 1);
    assert_never_logged(&agent, &[token, &secret, &session_token]);
}

#[test]
fn container_credentials_come_from_the_full_uri_with_its_authorization_token() {
    let moto = Moto::start();
    bucket_with(&moto, KEY);
    let role_arn = reader_role(&moto, "clef-task-reader");
    let credentials = assume_role(&moto, &role_arn);
    moto.enforce_auth(0);
    let inline_token = "clefItContainerToken-inline-5d8e2a";
    let file_token = "clefItContainerToken-file-91c3f7";
    // The ECS / EKS Pod Identity endpoint: the credentials for the right token, 401 otherwise.
    let answer = credentials.json.clone();
    let endpoint = Server::start(move |request| {
        let expected = match request.path.as_str() {
            "/v2/credentials/inline" => inline_token,
            "/v2/credentials/file" => file_token,
            _ => return Answer::json(404, r#"{"message":"not found"}"#),
        };
        match request.header("Authorization") {
            Some(token) if token == expected && request.method == "GET" => Answer::json(200, &answer),
            _ => Answer::json(401, r#"{"message":"unauthorized"}"#),
        }
    });
    let scratch = TempDir::new("s3-container");
    let token_file = scratch.join("token");
    std::fs::write(&token_file, format!("{file_token}\n")).unwrap();
    let token_file = token_file.display().to_string();
    let source = format!("s3://{BUCKET}/{KEY}");
    let (inline_url, file_url) = (endpoint.url("/v2/credentials/inline"), endpoint.url("/v2/credentials/file"));

    let inline = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", inline_url.as_str()),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", inline_token),
    ];
    let (_first, agent) = start_agent("s3-container-inline", &moto, &source, &inline);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    let requests = endpoint.requests_to("GET", "/v2/credentials/inline");
    assert_eq!(requests.len(), 1, "{:?}", endpoint.requests());
    assert_eq!(requests[0].header("Authorization"), Some(inline_token));
    assert_never_logged(&agent, &[inline_token, &credentials.secret, &credentials.token]);

    let from_file = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", file_url.as_str()),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token_file),
    ];
    let (_second, agent) = start_agent("s3-container-file", &moto, &source, &from_file);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    let requests = endpoint.requests_to("GET", "/v2/credentials/file");
    assert_eq!(requests.len(), 1, "{:?}", endpoint.requests());
    assert_eq!(requests[0].header("Authorization"), Some(file_token), "the file's content, trimmed");
    assert_never_logged(&agent, &[file_token, &credentials.secret, &credentials.token]);

    // Both agents' GETs were signed with the role's temporary key and its session token.
    let path = format!("/{BUCKET}/{KEY}");
    assert_eq!(moto.wait_for_gets(BUCKET, KEY, 2, &agent), vec![logged("GET", &path, 200); 2]);
}

#[test]
fn instance_metadata_credentials_come_through_an_imdsv2_session() {
    let moto = Moto::start();
    bucket_with(&moto, KEY);
    let role_arn = reader_role(&moto, "clef-instance-reader");
    let credentials = assume_role(&moto, &role_arn);
    moto.enforce_auth(0);
    let session = "AQAEAclefItImdsSessionToken-3f9c1b==";
    let value: serde_json::Value = serde_json::from_str(&credentials.json).unwrap();
    // The instance profile document as IMDS serves it.
    let document = serde_json::json!({
        "Code": "Success",
        "LastUpdated": "2026-11-30T00:00:00Z",
        "Type": "AWS-HMAC",
        "AccessKeyId": value["AccessKeyId"],
        "SecretAccessKey": value["SecretAccessKey"],
        "Token": value["Token"],
        "Expiration": value["Expiration"],
    })
    .to_string();
    let imds = Server::start(move |request| {
        let text = |status: u16, body: &str| Answer {
            status,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: body.as_bytes().to_vec(),
        };
        let with_session = request.header("X-aws-ec2-metadata-token") == Some(session);
        match (request.method.as_str(), request.path.as_str()) {
            ("PUT", "/latest/api/token") if request.header("X-aws-ec2-metadata-token-ttl-seconds").is_some() => {
                text(200, session)
            }
            ("GET", "/latest/meta-data/iam/security-credentials/") if with_session => text(200, "clef-instance-reader"),
            ("GET", "/latest/meta-data/iam/security-credentials/clef-instance-reader") if with_session => {
                text(200, &document)
            }
            (_, path) if path.starts_with("/latest/") => text(401, ""),
            _ => text(404, ""),
        }
    });
    let imds_url = imds.url("");
    let source = format!("s3://{BUCKET}/{KEY}");
    let (_deployment, agent) = start_agent(
        "s3-imds",
        &moto,
        &source,
        &[("AWS_EC2_METADATA_DISABLED", ""), ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds_url)],
    );

    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    let requests = imds.requests();
    let asked: Vec<(&str, &str)> =
        requests.iter().map(|request| (request.method.as_str(), request.path.as_str())).collect();
    assert_eq!(
        asked,
        [
            ("PUT", "/latest/api/token"),
            ("GET", "/latest/meta-data/iam/security-credentials/"),
            ("GET", "/latest/meta-data/iam/security-credentials/clef-instance-reader"),
        ]
    );
    assert_eq!(requests[0].header("X-aws-ec2-metadata-token-ttl-seconds"), Some("21600"));
    assert!(requests[1..].iter().all(|request| request.header("X-aws-ec2-metadata-token") == Some(session)));
    let path = format!("/{BUCKET}/{KEY}");
    assert_eq!(moto.wait_for_gets(BUCKET, KEY, 1, &agent), [logged("GET", &path, 200)]);
    assert_never_logged(&agent, &[session, &credentials.secret, &credentials.token]);
}

/// Writes `text` as a new version of `key` in the versioned [`BUCKET`]; returns its VersionId.
fn put_version(moto: &Moto, key: &str, text: &str) -> String {
    let file = moto.scratch.join("version");
    std::fs::write(&file, text).expect("cannot write the object file");
    moto.admin(&[&["put-version", BUCKET, key, &file.display().to_string()]]).remove(0)
}

#[test]
fn serves_the_object_version_pinned_by_version_id_not_the_latest() {
    let moto = Moto::start();
    moto.admin(&[&["create-bucket", BUCKET], &["enable-versioning", BUCKET]]);
    let pinned = put_version(&moto, KEY, &artifact(PLAINTEXT, "rev-pinned"));
    let latest = put_version(&moto, KEY, &artifact(PLAINTEXT_ROTATED, "rev-latest"));
    assert_ne!(pinned, latest);
    let policy = allow(&["s3:GetObject", "s3:GetObjectVersion"], &format!("arn:aws:s3:::{BUCKET}/*"));
    let reader = moto.create_user("clef-version-reader", &policy);
    moto.enforce_auth(0);

    // Moto checks the signature over the query it received: an unsigned versionId fails.
    let encoded_key = clef_agent::url::percent_encode_path(KEY);
    let version = clef_agent::url::percent_encode(&pinned, true);
    let source = format!("https://{BUCKET}.s3.amazonaws.com/{encoded_key}?versionId={version}");
    let (_deployment, agent) = start_agent("s3-version-id", &moto, &source, &keys_env(&reader));
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    assert_eq!(revision(&agent), "rev-pinned");
    sighup_and_wait_for_refresh(&agent, SIGHUP_LIMIT);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    let path = format!("/{BUCKET}/{KEY}");
    assert_eq!(moto.wait_for_gets(BUCKET, KEY, 2, &agent), [logged("GET", &path, 200), logged("GET", &path, 304)]);
    assert!(agent.stdout().contains(&format!("s3://{BUCKET}/{KEY}?versionId={pinned}")), "{}", agent.stdout());
    assert_never_logged(&agent, &[&reader.secret]);
}

#[test]
fn an_s3_url_with_another_query_parameter_is_a_config_error() {
    let deployment = Deployment::new("s3-query", &artifact(PLAINTEXT, "unused"));
    let source = format!("https://{BUCKET}.s3.amazonaws.com/k.json?versionId=v1&response-content-type=text%2Fplain");
    let agent = deployment.spawn(&[("CLEF_AGENT_SOURCE", source.as_str())]);
    let status = agent.wait_exit(Duration::from_secs(5)).expect("the agent did not exit on a configuration error");
    assert_eq!(status.code(), Some(1), "{}", agent.stderr());
    assert_eq!(
        agent.stderr(),
        "[clef-agent] config error: CLEF_AGENT_SOURCE: query parameter 'response-content-type' is not supported: \
         an S3 URL takes only ?versionId=<version> (the agent signs S3 requests with its own credentials); \
         a pre-signed URL (X-Amz-Signature=…) is fetched as given, as an https:// source\n"
    );
}

/// S3's answer to a request signed with an expired session token (the documented error shape).
fn expired_token_answer() -> Answer {
    let body = concat!(
        r#"<?xml version="1.0" encoding="UTF-8"?>"#,
        "<Error><Code>ExpiredToken</Code><Message>The provided token has expired.</Message>",
        "<RequestId>CLEFIT0EXPIRED</RequestId></Error>"
    );
    Answer {
        status: 400,
        headers: vec![("Content-Type".into(), "application/xml".into())],
        body: body.as_bytes().to_vec(),
    }
}

#[test]
fn recovers_without_a_restart_when_s3_says_the_session_token_expired() {
    let moto = Moto::start();
    bucket_with(&moto, KEY);
    let role_arn = reader_role(&moto, "clef-expiring-reader");
    let (first, second) = (assume_role(&moto, &role_arn), assume_role(&moto, &role_arn));
    moto.enforce_auth(0);
    let key_id = |credentials: &TemporaryCredentials| {
        let value: serde_json::Value = serde_json::from_str(&credentials.json).expect("JSON");
        value["AccessKeyId"].as_str().expect("AccessKeyId").to_string()
    };
    let expired_key = key_id(&first);
    assert_ne!(expired_key, key_id(&second));
    // The container endpoint hands out the first session, then the second. Both say they are
    // good for an hour, so only S3's ExpiredToken can make the agent ask again.
    let sessions = [first.json.clone(), second.json.clone()];
    let handed_out = Arc::new(Mutex::new(0usize));
    let counter = Arc::clone(&handed_out);
    let endpoint = Server::start(move |_| {
        let mut count = counter.lock().unwrap();
        *count += 1;
        Answer::json(200, &sessions[(*count - 1).min(1)])
    });
    // S3 in front of moto: once the first session has "expired", requests signed with it get
    // 400 ExpiredToken; everything else goes on to moto.
    let first_expired = Arc::new(AtomicBool::new(false));
    let (moto_port, expired) = (moto.port, Arc::clone(&first_expired));
    let credential = format!("Credential={expired_key}/");
    let s3 = Server::start(move |request| {
        let signed_with_first = request.header("Authorization").is_some_and(|value| value.contains(&credential));
        if signed_with_first && expired.load(Ordering::SeqCst) {
            return expired_token_answer();
        }
        forward(moto_port, request)
    });
    let (container_url, s3_url) = (endpoint.url("/v2/credentials/task"), s3.url(""));
    let extra = [("AWS_CONTAINER_CREDENTIALS_FULL_URI", container_url.as_str()), ("AWS_ENDPOINT_URL_S3", &s3_url)];
    let (_deployment, agent) = start_agent("s3-expired-token", &moto, &format!("s3://{BUCKET}/{KEY}"), &extra);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    assert_eq!(*handed_out.lock().unwrap(), 1);

    first_expired.store(true, Ordering::SeqCst);
    agent.signal(libc::SIGHUP);
    agent.wait_for_stderr("answered HTTP 400", SIGHUP_LIMIT);
    assert_eq!(*handed_out.lock().unwrap(), 1, "the failed refresh used the cached session");
    // The next refresh looks the credentials up again and succeeds with the second session.
    sighup_and_wait_for_refresh(&agent, SIGHUP_LIMIT);
    assert_eq!(*handed_out.lock().unwrap(), 2, "ExpiredToken made the agent forget the session");
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    let path = format!("/{BUCKET}/{KEY}");
    assert_eq!(moto.wait_for_gets(BUCKET, KEY, 2, &agent), [logged("GET", &path, 200), logged("GET", &path, 304)]);
    assert_never_logged(&agent, &[&first.secret, &first.token, &second.secret, &second.token]);
}
