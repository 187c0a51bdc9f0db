//! VCS sources end to end: the real agent reads its artifact from loopback servers that play
//! the GitHub contents API, the GitLab repository files API and the Bitbucket src API as their
//! documentation describes them — the request the agent sends is checked to the byte (method,
//! target, headers), the answers have the providers' shapes, and the secrets must come out the
//! other end. The provider token must never show in the agent's output.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;

use crate::support::loopback::{Answer, Recorded, Server};
use crate::support::{
    age_key_line, build_artifact, free_port, get, sha256_hex, sighup_and_wait_for_refresh, wait_until, Agent,
    ArtifactOptions, PLAINTEXT, PLAINTEXT_ROTATED, TOKEN,
};

const REPO: &str = "acme/platform-secrets";
/// `build_artifact` packs for `api-gateway`/`production`; the agent is pointed at the same.
const IDENTITY: &str = "api-gateway";
const ENVIRONMENT: &str = "production";
const ARTIFACT_PATH: &str = ".clef/packed/api-gateway/production.age.json";
/// Distinctive provider tokens, shaped like the real ones, so a leak into a log line shows.
const GITHUB_TOKEN: &str = "ghp_clefVcsItGh7Qm2Wz9Xb5Nc8Rt3Lp6Yd1Sf0";
const GITLAB_TOKEN: &str = "glpat-clefVcsItGl-Zr8Kw3Pm6Vn1Qx4";
const BITBUCKET_TOKEN: &str = "ATCTT3xFfGN0clefVcsItBb5Hs2Jt9Mw4Ek7";
const USER_AGENT: &str = concat!("clef-agent/", env!("CARGO_PKG_VERSION"));
/// SIGHUP refreshes at once; this leaves slack for a loaded machine.
const SIGHUP_LIMIT: Duration = Duration::from_secs(5);
/// Three start-up attempts with 2 s and 4 s of backoff between them.
const FAILED_START_LIMIT: Duration = Duration::from_secs(30);
/// With a one-hour TTL the poller waits at least 324 s: no test ever sees a scheduled poll.
const SLOW_POLLING: (&str, &str) = ("CLEF_AGENT_CACHE_TTL", "3600");

/// What the repository holds at the moment: the artifact's bytes and their blob/commit hash.
#[derive(Clone)]
struct Published {
    bytes: Vec<u8>,
    hash: String,
}

impl Published {
    fn new(plaintext: &str, revision: &str) -> Published {
        let bytes = build_artifact(plaintext, revision, &ArtifactOptions::default()).into_bytes();
        let hash = git_blob_sha(&bytes);
        Published { bytes, hash }
    }
}

/// The agent's environment for a VCS source: the demo age key inline, the test's API token,
/// slow polling, repository `acme/platform-secrets` and `api-gateway`/`production`, plus `vcs`.
fn vcs_env(port: u16, vcs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("CLEF_AGENT_AGE_KEY".into(), age_key_line("keys/demo.agekey")),
        ("CLEF_AGENT_PORT".into(), port.to_string()),
        ("CLEF_AGENT_TOKEN".into(), TOKEN.into()),
        (SLOW_POLLING.0.into(), SLOW_POLLING.1.into()),
        ("CLEF_AGENT_VCS_REPO".into(), REPO.into()),
        ("CLEF_AGENT_VCS_IDENTITY".into(), IDENTITY.into()),
        ("CLEF_AGENT_VCS_ENVIRONMENT".into(), ENVIRONMENT.into()),
    ];
    env.extend(vcs.iter().map(|(name, value)| (name.to_string(), value.to_string())));
    env
}

/// Starts the agent on a VCS source and waits until it is ready.
fn start_ready(vcs: &[(&str, &str)]) -> Agent {
    let env = vcs_env(free_port(), vcs);
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    Agent::start_ready(&env)
}

/// Starts the agent on a VCS source without waiting for anything.
fn spawn(vcs: &[(&str, &str)]) -> Agent {
    let env = vcs_env(free_port(), vcs);
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    Agent::start(&env)
}

/// Starts an agent against the VCS API `server`, which must make it give up after its three
/// start-up attempts; returns the agent and its `fatal:` line.
fn failed_start(server: &Server, provider: &str, token: &str) -> (Agent, String) {
    let api_url = server.url("");
    let agent = spawn(&[
        ("CLEF_AGENT_VCS_PROVIDER", provider),
        ("CLEF_AGENT_VCS_TOKEN", token),
        ("CLEF_AGENT_VCS_API_URL", &api_url),
    ]);
    let status = agent.wait_exit(FAILED_START_LIMIT);
    assert_eq!(status.and_then(|status| status.code()), Some(1), "stderr: {}", agent.stderr());
    let stderr = agent.stderr();
    let fatal = stderr.lines().find(|line| line.starts_with("[clef-agent] fatal: ")).unwrap_or_default().to_string();
    let expected = format!(
        "[clef-agent] fatal: Failed to fetch artifact from {provider} {REPO}:{ARTIFACT_PATH}@default branch after 3 attempts"
    );
    assert!(fatal.starts_with(&expected), "{stderr}");
    (agent, fatal)
}

/// The provider token is in neither of the agent's outputs.
fn assert_token_absent(agent: &Agent, token: &str) {
    let (stdout, stderr) = (agent.stdout(), agent.stderr());
    assert!(!stdout.contains(token), "the provider token leaked to stdout:\n{stdout}");
    assert!(!stderr.contains(token), "the provider token leaked to stderr:\n{stderr}");
}

/// Waits for `/v1/secrets` to answer 200 with `body`.
fn wait_for_secrets(agent: &Agent, body: &str, limit: Duration) -> bool {
    wait_until(limit, || {
        let response = agent.get("/v1/secrets");
        response.status == 200 && response.body == body.as_bytes()
    })
}

/// The SHA-1 git names a blob with: `sha1("blob <len>\0" + bytes)`, lowercase hex.
fn git_blob_sha(bytes: &[u8]) -> String {
    let mut blob = format!("blob {}\0", bytes.len()).into_bytes();
    blob.extend_from_slice(bytes);
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &blob);
    digest.as_ref().iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A 40-hex commit hash derived from `seed`.
fn commit_hash(seed: &str) -> String {
    git_blob_sha(format!("commit {seed}").as_bytes())
}

/// Base64 as the GitHub contents API writes it: standard alphabet, a `\n` after every 60
/// characters and at the end.
fn github_base64(bytes: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    encoded.as_bytes().chunks(60).map(|line| format!("{}\n", String::from_utf8_lossy(line))).collect()
}

/// Percent-decodes `text` (`%2F` → `/`); `+` is left alone, as in a URI.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = text.get(index + 1..index + 3).and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[index], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                index += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(decoded).expect("a percent-encoded query that is not UTF-8")
}

/// The path of a request target and its query parameters, decoded, in order.
fn split_target(target: &str) -> (&str, Vec<(String, String)>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let pairs = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect();
    (path, pairs)
}

/// A 200 answer with a raw body.
fn raw_answer(content_type: &str, bytes: &[u8]) -> Answer {
    Answer { status: 200, headers: vec![("Content-Type".into(), content_type.into())], body: bytes.to_vec() }
}

// ---------------------------------------------------------------------------------------------
// GitHub

const GITHUB_JSON: &str = "application/vnd.github+json";
const GITHUB_RAW: &str = "application/vnd.github.raw";

/// The contents API's answer for a file; `inline` false gives the answer for a file over 1 MB
/// (`"content": ""`, `"encoding": "none"`).
fn github_contents(published: &Published, reference: &str, inline: bool) -> String {
    let api = format!("https://api.github.com/repos/{REPO}/contents/{ARTIFACT_PATH}?ref={reference}");
    let git = format!("https://api.github.com/repos/{REPO}/git/blobs/{}", published.hash);
    let html = format!("https://github.com/{REPO}/blob/{reference}/{ARTIFACT_PATH}");
    let (content, encoding) =
        if inline { (github_base64(&published.bytes), "base64") } else { (String::new(), "none") };
    json!({
        "type": "file",
        "encoding": encoding,
        "size": published.bytes.len(),
        "name": format!("{ENVIRONMENT}.age.json"),
        "path": ARTIFACT_PATH,
        "content": content,
        "sha": published.hash,
        "url": api,
        "git_url": git,
        "html_url": html,
        "download_url": format!("https://raw.githubusercontent.com/{REPO}/{reference}/{ARTIFACT_PATH}?token=AAAAclefredacted"),
        "_links": { "self": api, "git": git, "html": html },
    })
    .to_string()
}

/// GitHub's 404, for any request off the documented contract.
fn github_not_found() -> Answer {
    Answer::json(
        404,
        r#"{"message":"Not Found","documentation_url":"https://docs.github.com/rest/repos/contents#get-repository-content","status":"404"}"#,
    )
}

/// Whether `request` carries the headers the GitHub REST API documents, with `accept`.
fn github_headers_ok(request: &Recorded, accept: &str) -> bool {
    request.header("Authorization") == Some(format!("Bearer {GITHUB_TOKEN}").as_str())
        && request.header("Accept") == Some(accept)
        && request.header("X-GitHub-Api-Version") == Some("2022-11-28")
}

/// Asserts one request the agent sent to the contents API, to the byte.
fn assert_github_request(request: &Recorded, path: &str, reference: Option<&str>, accept: &str) {
    assert_eq!(request.method, "GET", "{request:?}");
    let (target_path, query) = split_target(&request.path);
    assert_eq!(target_path, path, "{request:?}");
    let expected_query: Vec<(String, String)> =
        reference.map(|reference| ("ref".to_string(), reference.to_string())).into_iter().collect();
    assert_eq!(query, expected_query, "query of {}", request.path);
    assert_eq!(request.header("Authorization"), Some(format!("Bearer {GITHUB_TOKEN}").as_str()), "{request:?}");
    assert_eq!(request.header_count("Authorization"), 1, "{request:?}");
    assert_eq!(request.header("Accept"), Some(accept), "{request:?}");
    assert_eq!(request.header_count("Accept"), 1, "{request:?}");
    assert_eq!(request.header("X-GitHub-Api-Version"), Some("2022-11-28"), "{request:?}");
    let user_agent = request.header("User-Agent").unwrap_or_default();
    assert!(user_agent.starts_with("clef-agent/"), "{request:?}");
    assert_eq!(user_agent, USER_AGENT, "{request:?}");
    assert_eq!(request.header("PRIVATE-TOKEN"), None, "{request:?}");
    assert!(request.body.is_empty(), "a GET with a body: {request:?}");
}

/// A GitHub contents API at `prefix` (`""` for api.github.com, `/api/v3` for Enterprise)
/// serving `published` at `reference`; the answers are counted per Accept.
fn github_server(prefix: &str, reference: Option<&str>, published: Arc<Mutex<Published>>, inline: bool) -> Server {
    let expected_target = format!(
        "{prefix}/repos/{REPO}/contents/{ARTIFACT_PATH}{}",
        reference.map(|reference| format!("?ref={reference}")).unwrap_or_default()
    );
    let reference = reference.unwrap_or("main").to_string();
    Server::start(move |request| {
        let (path, query) = split_target(&request.path);
        let (expected_path, expected_query) = split_target(&expected_target);
        if request.method != "GET" || path != expected_path || query != expected_query {
            return github_not_found();
        }
        let published = published.lock().unwrap().clone();
        if github_headers_ok(request, GITHUB_JSON) {
            let inline = inline && published.bytes.len() <= 1024 * 1024;
            Answer::json(200, &github_contents(&published, &reference, inline))
                .with_header("X-GitHub-Media-Type", "github.v3; format=json")
                .with_header("ETag", &format!("W/\"{}\"", published.hash))
        } else if github_headers_ok(request, GITHUB_RAW) {
            raw_answer(GITHUB_RAW, &published.bytes).with_header("X-GitHub-Media-Type", "github.v3; param=raw")
        } else {
            Answer::json(
                401,
                r#"{"message":"Requires authentication","documentation_url":"https://docs.github.com/rest","status":"401"}"#,
            )
        }
    })
}

#[test]
fn github_serves_secrets_through_the_contents_api_with_the_documented_request() {
    let published = Arc::new(Mutex::new(Published::new(PLAINTEXT, "rev-1")));
    let server = github_server("", Some("release/2026-11"), Arc::clone(&published), true);
    let api_url = server.url("");
    let agent = start_ready(&[
        ("CLEF_AGENT_VCS_PROVIDER", "github"),
        ("CLEF_AGENT_VCS_TOKEN", GITHUB_TOKEN),
        ("CLEF_AGENT_VCS_REF", "release/2026-11"),
        ("CLEF_AGENT_VCS_API_URL", &api_url),
    ]);

    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    agent.get("/v1/secrets/payments/STRIPE%20KEY").assert(200, "sk_live_9d8c7b6a");
    assert_eq!(get(agent.port(), "/v1/health", &[]).json()["revision"], "rev-1");
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "one GET for the initial load: {requests:#?}");
    let path = format!("/repos/{REPO}/contents/{ARTIFACT_PATH}");
    assert_github_request(&requests[0], &path, Some("release/2026-11"), GITHUB_JSON);
    assert_token_absent(&agent, GITHUB_TOKEN);
}

#[test]
fn github_enterprise_keeps_the_api_path_prefix_and_no_ref_reads_the_default_branch() {
    let published = Arc::new(Mutex::new(Published::new(PLAINTEXT, "rev-ghe")));
    let server = github_server("/api/v3", None, Arc::clone(&published), true);
    let api_url = server.url("/api/v3");
    let agent = start_ready(&[
        ("CLEF_AGENT_VCS_PROVIDER", "github"),
        ("CLEF_AGENT_VCS_TOKEN", GITHUB_TOKEN),
        ("CLEF_AGENT_VCS_API_URL", &api_url),
    ]);

    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    // The exact target: the prefix kept, nothing doubled, and no `?ref` at all.
    assert_eq!(requests[0].path, format!("/api/v3/repos/{REPO}/contents/{ARTIFACT_PATH}"));
    assert_github_request(&requests[0], &format!("/api/v3/repos/{REPO}/contents/{ARTIFACT_PATH}"), None, GITHUB_JSON);
    assert_token_absent(&agent, GITHUB_TOKEN);
}

/// A plaintext with one 1.2 MB value, so that its artifact is well over GitHub's 1 MB limit
/// for inline content. The value is varied so nothing along the way can shrink it.
fn big_plaintext() -> (String, String) {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let value: String = (0..1_200_000)
        .map(|_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ALPHABET[(state >> 58) as usize] as char
        })
        .collect();
    (json!({ "blob": { "BIG": value } }).to_string(), value)
}

#[test]
fn github_fetches_an_artifact_over_one_megabyte_again_with_the_raw_media_type() {
    let (plaintext, value) = big_plaintext();
    let big = Published::new(&plaintext, "rev-big");
    assert!(big.bytes.len() > 1024 * 1024, "the artifact is only {} bytes", big.bytes.len());
    let published = Arc::new(Mutex::new(big));
    let server = github_server("", Some("main"), Arc::clone(&published), true);
    let api_url = server.url("");
    let agent = start_ready(&[
        ("CLEF_AGENT_VCS_PROVIDER", "github"),
        ("CLEF_AGENT_VCS_TOKEN", GITHUB_TOKEN),
        ("CLEF_AGENT_VCS_REF", "main"),
        ("CLEF_AGENT_VCS_API_URL", &api_url),
    ]);

    let response = agent.get("/v1/secrets/blob/BIG");
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body[..response.body.len().min(300)]));
    assert!(response.body == value.as_bytes(), "the 1.2 MB value came back altered ({} bytes)", response.body.len());
    assert_eq!(get(agent.port(), "/v1/health", &[]).json()["revision"], "rev-big");
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "the JSON answer without content, then the raw file: {requests:#?}");
    let path = format!("/repos/{REPO}/contents/{ARTIFACT_PATH}");
    assert_github_request(&requests[0], &path, Some("main"), GITHUB_JSON);
    assert_github_request(&requests[1], &path, Some("main"), GITHUB_RAW);
    assert_eq!(requests[0].path, requests[1].path, "the raw file must be asked at the same URL");
    assert_token_absent(&agent, GITHUB_TOKEN);
}

#[test]
fn github_rotates_on_a_new_sha_and_needs_no_content_while_the_sha_is_unchanged() {
    let first = Published::new(PLAINTEXT, "rev-1");
    let second = Published::new(PLAINTEXT_ROTATED, "rev-2");
    // JSON answers in order: the file; the same sha with no content at all (so an agent that
    // wanted the bytes would have to come back for them); the rotated file from then on.
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&answered);
    assert_ne!(first.hash, second.hash);
    let server = Server::start(move |request| {
        let expected = format!("/repos/{REPO}/contents/{ARTIFACT_PATH}?ref=main");
        if request.method != "GET" || request.path != expected || !github_headers_ok(request, GITHUB_JSON) {
            // Including any raw request: the test fails on it below.
            return github_not_found();
        }
        match counter.fetch_add(1, Ordering::SeqCst) {
            0 => Answer::json(200, &github_contents(&first, "main", true)),
            1 => Answer::json(200, &github_contents(&first, "main", false)),
            _ => Answer::json(200, &github_contents(&second, "main", true)),
        }
    });
    let api_url = server.url("");
    let agent = start_ready(&[
        ("CLEF_AGENT_VCS_PROVIDER", "github"),
        ("CLEF_AGENT_VCS_TOKEN", GITHUB_TOKEN),
        ("CLEF_AGENT_VCS_REF", "main"),
        ("CLEF_AGENT_VCS_API_URL", &api_url),
    ]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);

    // Same sha: one GET, nothing else, the secrets stay.
    sighup_and_wait_for_refresh(&agent, SIGHUP_LIMIT);
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "an unchanged sha must cost one GET per poll: {requests:#?}");
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    assert!(!agent.stdout().contains("refreshed:"), "{}", agent.stdout());
    assert!(!agent.stderr().contains("poll error"), "{}", agent.stderr());

    // New sha: the new secrets.
    agent.signal(libc::SIGHUP);
    assert!(
        wait_for_secrets(&agent, PLAINTEXT_ROTATED, SIGHUP_LIMIT),
        "the rotated artifact was not served; stderr: {}",
        agent.stderr()
    );
    agent.wait_for_stdout("[clef-agent] refreshed: revision rev-2 (5 keys)\n", Duration::from_secs(1));
    agent.get("/v1/secrets/database/DB_PASSWORD").assert(200, "db-pass-b702");
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    let path = format!("/repos/{REPO}/contents/{ARTIFACT_PATH}");
    for request in &requests {
        assert_github_request(request, &path, Some("main"), GITHUB_JSON);
    }
    assert_eq!(answered.load(Ordering::SeqCst), 3);
    assert!(!agent.stderr().contains("poll error"), "{}", agent.stderr());
    assert_token_absent(&agent, GITHUB_TOKEN);
}

/// A contents API that answers conditional requests as GitHub documents them: a strong `ETag`
/// on every JSON answer, and `304 Not Modified` with the ETag and no body when `If-None-Match`
/// names the current one. Every answer's body size is added to `body_bytes`.
fn conditional_github_server(published: Arc<Mutex<Published>>, body_bytes: Arc<AtomicUsize>) -> Server {
    Server::start(move |request| {
        let expected = format!("/repos/{REPO}/contents/{ARTIFACT_PATH}?ref=main");
        if request.method != "GET" || request.path != expected || !github_headers_ok(request, GITHUB_JSON) {
            return github_not_found();
        }
        let published = published.lock().unwrap().clone();
        let etag = format!("\"{}\"", sha256_hex(published.hash.as_bytes()));
        let answer = if request.header("If-None-Match") == Some(etag.as_str()) {
            Answer { status: 304, headers: vec![("ETag".into(), etag)], body: Vec::new() }
        } else {
            Answer::json(200, &github_contents(&published, "main", true)).with_header("ETag", &etag)
        };
        body_bytes.fetch_add(answer.body.len(), Ordering::SeqCst);
        answer
    })
}

#[test]
fn github_polls_are_conditional_and_four_unchanged_polls_cost_four_bodiless_304s() {
    let published = Arc::new(Mutex::new(Published::new(PLAINTEXT, "rev-1")));
    let body_bytes = Arc::new(AtomicUsize::new(0));
    let server = conditional_github_server(Arc::clone(&published), Arc::clone(&body_bytes));
    let api_url = server.url("");
    let agent = start_ready(&[
        ("CLEF_AGENT_VCS_PROVIDER", "github"),
        ("CLEF_AGENT_VCS_TOKEN", GITHUB_TOKEN),
        ("CLEF_AGENT_VCS_REF", "main"),
        ("CLEF_AGENT_VCS_API_URL", &api_url),
    ]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    let first_load = body_bytes.load(Ordering::SeqCst);
    let first = &server.requests()[0];
    assert_eq!(first.header("If-None-Match"), None, "the first fetch has nothing to compare: {first:?}");
    let etag = format!("\"{}\"", sha256_hex(published.lock().unwrap().hash.as_bytes()));

    for _ in 0..4 {
        sighup_and_wait_for_refresh(&agent, SIGHUP_LIMIT);
    }
    let polls = server.requests()[1..].to_vec();
    let poll_bytes = body_bytes.load(Ordering::SeqCst) - first_load;
    eprintln!("four unchanged polls: {} requests, {poll_bytes} body bytes (the first load: {first_load})", polls.len());
    assert_eq!(polls.len(), 4, "one request per poll: {polls:#?}");
    let path = format!("/repos/{REPO}/contents/{ARTIFACT_PATH}");
    for poll in &polls {
        assert_github_request(poll, &path, Some("main"), GITHUB_JSON);
        assert_eq!(poll.header("If-None-Match"), Some(etag.as_str()), "{poll:?}");
        assert_eq!(poll.header_count("If-None-Match"), 1, "{poll:?}");
    }
    assert_eq!(poll_bytes, 0, "unchanged polls must be answered 304 without a body");
    assert!(first_load > 1000, "the full contents answer is {first_load} bytes");
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    assert!(!agent.stderr().contains("poll error"), "{}", agent.stderr());

    // A new commit changes the ETag: the condition fails, the new file comes in one 200.
    *published.lock().unwrap() = Published::new(PLAINTEXT_ROTATED, "rev-2");
    agent.signal(libc::SIGHUP);
    assert!(
        wait_for_secrets(&agent, PLAINTEXT_ROTATED, SIGHUP_LIMIT),
        "the rotated artifact was not served; stderr: {}",
        agent.stderr()
    );
    assert_eq!(server.requests().len(), 6, "{:#?}", server.requests());
    assert_token_absent(&agent, GITHUB_TOKEN);
}

#[test]
fn github_never_asks_a_refused_blob_to_be_unchanged() {
    let published = Arc::new(Mutex::new(Published::new(PLAINTEXT, "rev-1")));
    let server = conditional_github_server(Arc::clone(&published), Arc::new(AtomicUsize::new(0)));
    let api_url = server.url("");
    let agent = start_ready(&[
        ("CLEF_AGENT_VCS_PROVIDER", "github"),
        ("CLEF_AGENT_VCS_TOKEN", GITHUB_TOKEN),
        ("CLEF_AGENT_VCS_REF", "main"),
        ("CLEF_AGENT_VCS_API_URL", &api_url),
    ]);
    let bytes = b"{\"not\": \"an artifact\"}".to_vec();
    *published.lock().unwrap() = Published { hash: git_blob_sha(&bytes), bytes };
    let path = format!("/repos/{REPO}/contents/{ARTIFACT_PATH}");

    // The refused blob came with its own ETag; answering 304 to it would pass the refused
    // blob off as the accepted one. Each poll must fetch it again and fail again.
    for polls in 2..=3 {
        agent.signal(libc::SIGHUP);
        assert!(server.wait_for_requests("GET", &format!("{path}?ref=main"), polls, SIGHUP_LIMIT));
        assert!(
            wait_until(SIGHUP_LIMIT, || agent.stderr().matches("poll error").count() == polls - 1),
            "{}",
            agent.stderr()
        );
    }
    let requests = server.requests();
    assert_eq!(requests[2].header("If-None-Match"), None, "{:?}", requests[2]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
}

#[test]
fn github_bad_credentials_fail_start_up_naming_the_refusal_but_not_the_token() {
    let server = Server::start(|_| {
        Answer::json(
            401,
            r#"{"message":"Bad credentials","documentation_url":"https://docs.github.com/rest","status":"401"}"#,
        )
    });
    let (agent, fatal) = failed_start(&server, "github", GITHUB_TOKEN);
    let stderr = agent.stderr();
    assert!(fatal.contains("HTTP 401") && fatal.contains("Bad credentials"), "{stderr}");
    assert!(!agent.stdout().contains(crate::support::READY_LINE), "{}", agent.stdout());
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "three start-up attempts: {requests:#?}");
    for request in &requests {
        assert_github_request(request, &format!("/repos/{REPO}/contents/{ARTIFACT_PATH}"), None, GITHUB_JSON);
    }
    assert_token_absent(&agent, GITHUB_TOKEN);
}

// ---------------------------------------------------------------------------------------------
// GitLab

/// The repository files API's answer for the artifact at `reference`.
fn gitlab_file(published: &Published, reference: &str, content: &str) -> String {
    json!({
        "file_name": format!("{ENVIRONMENT}.age.json"),
        "file_path": ARTIFACT_PATH,
        "size": published.bytes.len(),
        "encoding": "base64",
        "content_sha256": sha256_hex(&published.bytes),
        "ref": reference,
        "blob_id": published.hash,
        "commit_id": commit_hash(&published.hash),
        "last_commit_id": commit_hash(&format!("last {}", published.hash)),
        "execute_filemode": false,
        "content": content,
    })
    .to_string()
}

/// The target GitLab documents: project and file path URL-encoded, `/` as `%2F`.
fn gitlab_path(prefix: &str) -> String {
    format!(
        "{prefix}/api/v4/projects/acme%2Fplatform-secrets/repository/files/.clef%2Fpacked%2Fapi-gateway%2Fproduction.age.json"
    )
}

fn assert_gitlab_request(request: &Recorded, prefix: &str, reference: &str) {
    assert_eq!(request.method, "GET", "{request:?}");
    // The raw target: the %2F-encoded forms, not a path with more segments.
    let (path, query) = split_target(&request.path);
    assert_eq!(path, gitlab_path(prefix), "raw target {}", request.path);
    assert_eq!(query, vec![("ref".to_string(), reference.to_string())], "query of {}", request.path);
    assert_eq!(request.header("PRIVATE-TOKEN"), Some(GITLAB_TOKEN), "{request:?}");
    assert_eq!(request.header_count("PRIVATE-TOKEN"), 1, "{request:?}");
    assert_eq!(request.header("Authorization"), None, "{request:?}");
    assert_eq!(request.header("User-Agent"), Some(USER_AGENT), "{request:?}");
    assert!(request.body.is_empty(), "{request:?}");
}

/// A GitLab answer to anything off the contract.
fn gitlab_refusal(request: &Recorded, prefix: &str) -> Option<Answer> {
    if request.header("PRIVATE-TOKEN") != Some(GITLAB_TOKEN) {
        return Some(Answer::json(401, r#"{"message":"401 Unauthorized"}"#));
    }
    let (path, _) = split_target(&request.path);
    (request.method != "GET" || path != gitlab_path(prefix))
        .then(|| Answer::json(404, r#"{"message":"404 File Not Found"}"#))
}

#[test]
fn gitlab_serves_secrets_through_the_repository_files_api_with_ref_head_by_default() {
    let published = Published::new(PLAINTEXT, "rev-gl-1");
    let server = Server::start(move |request| {
        if let Some(refusal) = gitlab_refusal(request, "") {
            return refusal;
        }
        let (_, query) = split_target(&request.path);
        if query != vec![("ref".to_string(), "HEAD".to_string())] {
            return Answer::json(404, r#"{"message":"404 Commit Not Found"}"#);
        }
        // GitLab's base64 has no line breaks.
        let content = base64::engine::general_purpose::STANDARD.encode(&published.bytes);
        Answer::json(200, &gitlab_file(&published, "HEAD", &content))
            .with_header("X-Gitlab-Blob-Id", &published.hash)
            .with_header("X-Gitlab-Content-Sha256", &sha256_hex(&published.bytes))
    });
    let api_url = server.url("");
    let agent = start_ready(&[
        ("CLEF_AGENT_VCS_PROVIDER", "gitlab"),
        ("CLEF_AGENT_VCS_TOKEN", GITLAB_TOKEN),
        ("CLEF_AGENT_VCS_API_URL", &api_url),
    ]);

    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    agent.get("/v1/secrets/database/DB_PASSWORD").assert(200, "db-pass-4a1f");
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(requests[0].path, format!("{}?ref=HEAD", gitlab_path("")));
    assert_gitlab_request(&requests[0], "", "HEAD");
    assert_token_absent(&agent, GITLAB_TOKEN);
}

#[test]
fn gitlab_with_a_ref_and_a_path_prefix_rotates_on_a_new_blob_id_and_skips_an_unchanged_one() {
    let first = Published::new(PLAINTEXT, "rev-gl-1");
    let second = Published::new(PLAINTEXT_ROTATED, "rev-gl-2");
    // Answers in order: the file; the same blob_id with content that is not base64 (an agent
    // that decoded it would fail the poll); the rotated file from then on.
    let counter = AtomicUsize::new(0);
    let server = Server::start(move |request| {
        if let Some(refusal) = gitlab_refusal(request, "/gitlab") {
            return refusal;
        }
        let (_, query) = split_target(&request.path);
        if query != vec![("ref".to_string(), "release/2026-11".to_string())] {
            return Answer::json(404, r#"{"message":"404 Commit Not Found"}"#);
        }
        let encode = |published: &Published| base64::engine::general_purpose::STANDARD.encode(&published.bytes);
        let body = match counter.fetch_add(1, Ordering::SeqCst) {
            0 => gitlab_file(&first, "release/2026-11", &encode(&first)),
            1 => gitlab_file(&first, "release/2026-11", "%%% not base64, must not be decoded %%%"),
            _ => gitlab_file(&second, "release/2026-11", &encode(&second)),
        };
        Answer::json(200, &body)
    });
    let api_url = server.url("/gitlab");
    let agent = start_ready(&[
        ("CLEF_AGENT_VCS_PROVIDER", "gitlab"),
        ("CLEF_AGENT_VCS_TOKEN", GITLAB_TOKEN),
        ("CLEF_AGENT_VCS_REF", "release/2026-11"),
        ("CLEF_AGENT_VCS_API_URL", &api_url),
    ]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);

    sighup_and_wait_for_refresh(&agent, SIGHUP_LIMIT);
    assert_eq!(server.requests().len(), 2, "{:#?}", server.requests());
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    assert!(!agent.stderr().contains("poll error"), "the unchanged blob was decoded: {}", agent.stderr());

    agent.signal(libc::SIGHUP);
    assert!(
        wait_for_secrets(&agent, PLAINTEXT_ROTATED, SIGHUP_LIMIT),
        "the rotated artifact was not served; stderr: {}",
        agent.stderr()
    );
    agent.wait_for_stdout("[clef-agent] refreshed: revision rev-gl-2 (5 keys)\n", Duration::from_secs(1));
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    for request in &requests {
        assert_gitlab_request(request, "/gitlab", "release/2026-11");
    }
    assert_token_absent(&agent, GITLAB_TOKEN);
}

#[test]
fn gitlab_file_not_found_fails_start_up_naming_the_status_and_the_hint() {
    let server = Server::start(|_| Answer::json(404, r#"{"message":"404 File Not Found"}"#));
    let (agent, fatal) = failed_start(&server, "gitlab", GITLAB_TOKEN);
    let source = format!("gitlab {REPO}:{ARTIFACT_PATH}@default branch");
    assert_eq!(
        fatal,
        format!(
            "[clef-agent] fatal: Failed to fetch artifact from {source} after 3 attempts: {source} was not found \
             (HTTP 404, 404 File Not Found). The artifact was not found: has it been packed (clef pack) and \
             deployed to this source yet?"
        )
    );
    let attempt =
        format!("initial fetch failed (attempt 1 of 3): {source} was not found (HTTP 404, 404 File Not Found);");
    assert!(agent.stderr().contains(&attempt), "{}", agent.stderr());
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "three start-up attempts: {requests:#?}");
    for request in &requests {
        assert_gitlab_request(request, "", "HEAD");
    }
    assert_token_absent(&agent, GITLAB_TOKEN);
}

/// A GitLab API that answers 302 to a server on another port: the PRIVATE-TOKEN must not go
/// there (ureq alone would drop only `Authorization`). The poll fails naming the Location's
/// origin and the last secrets stay.
#[test]
fn gitlab_redirecting_to_another_origin_never_sends_it_the_token() {
    let published = Published::new(PLAINTEXT, "rev-gl-1");
    let content = base64::engine::general_purpose::STANDARD.encode(&published.bytes);
    let file = gitlab_file(&published, "HEAD", &content);
    let elsewhere = {
        let file = file.clone();
        Server::start(move |_| Answer::json(200, &file))
    };
    let redirect = Arc::new(AtomicUsize::new(0));
    let location = elsewhere.url(&format!("{}?ref=HEAD", gitlab_path("")));
    let server = {
        let redirect = Arc::clone(&redirect);
        Server::start(move |request| {
            if let Some(refusal) = gitlab_refusal(request, "") {
                return refusal;
            }
            match redirect.load(Ordering::SeqCst) {
                0 => Answer::json(200, &file),
                _ => Answer::json(302, "").with_header("Location", &location),
            }
        })
    };
    let api_url = server.url("");
    let agent = start_ready(&[
        ("CLEF_AGENT_VCS_PROVIDER", "gitlab"),
        ("CLEF_AGENT_VCS_TOKEN", GITLAB_TOKEN),
        ("CLEF_AGENT_VCS_API_URL", &api_url),
    ]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);

    redirect.store(1, Ordering::SeqCst);
    agent.signal(libc::SIGHUP);
    let refused = format!(
        "refused a redirect to another origin (http://127.0.0.1:{}): the request carries credentials, \
         which go only to http://127.0.0.1:{}",
        elsewhere.port, server.port
    );
    agent.wait_for_stderr(&refused, SIGHUP_LIMIT);
    assert_eq!(elsewhere.requests().len(), 0, "the other origin was asked: {:#?}", elsewhere.requests());
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    assert_token_absent(&agent, GITLAB_TOKEN);
}

/// A redirect within the API's origin (a renamed project) keeps the token: it is the server the
/// configuration named.
#[test]
fn gitlab_redirecting_within_its_origin_keeps_the_token() {
    let published = Published::new(PLAINTEXT, "rev-gl-1");
    let content = base64::engine::general_purpose::STANDARD.encode(&published.bytes);
    let file = gitlab_file(&published, "HEAD", &content);
    let server = Server::start(move |request| {
        if request.path.starts_with("/old") {
            let moved = request.path.trim_start_matches("/old");
            return Answer::json(301, "").with_header("Location", moved);
        }
        gitlab_refusal(request, "").unwrap_or_else(|| Answer::json(200, &file))
    });
    let api_url = server.url("/old");
    let agent = start_ready(&[
        ("CLEF_AGENT_VCS_PROVIDER", "gitlab"),
        ("CLEF_AGENT_VCS_TOKEN", GITLAB_TOKEN),
        ("CLEF_AGENT_VCS_API_URL", &api_url),
    ]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(requests[0].header("PRIVATE-TOKEN"), Some(GITLAB_TOKEN));
    assert_gitlab_request(&requests[1], "", "HEAD");
    assert_token_absent(&agent, GITLAB_TOKEN);
}

// ---------------------------------------------------------------------------------------------
// Bitbucket

/// `/2.0/repositories/<repo>/src/<at>/<path>`.
fn bitbucket_path(at: &str) -> String {
    format!("/2.0/repositories/{REPO}/src/{at}/{ARTIFACT_PATH}")
}

/// The src API's `?format=meta` answer for the artifact at commit `hash`.
fn bitbucket_meta(hash: &str, size: usize) -> String {
    let api = format!("https://api.bitbucket.org/2.0/repositories/{REPO}");
    json!({
        "path": ARTIFACT_PATH,
        "commit": {
            "type": "commit",
            "hash": hash,
            "links": {
                "self": { "href": format!("{api}/commit/{hash}") },
                "html": { "href": format!("https://bitbucket.org/{REPO}/commits/{hash}") },
            },
        },
        "type": "commit_file",
        "attributes": [],
        "size": size,
        "mimetype": null,
        "escaped_path": ARTIFACT_PATH,
        "links": {
            "self": { "href": format!("{api}/src/{hash}/{ARTIFACT_PATH}") },
            "meta": { "href": format!("{api}/src/{hash}/{ARTIFACT_PATH}?format=meta") },
            "history": { "href": format!("{api}/filehistory/{hash}/{ARTIFACT_PATH}") },
        },
    })
    .to_string()
}

fn bitbucket_error(status: u16, message: &str) -> Answer {
    Answer::json(status, &json!({ "type": "error", "error": { "message": message } }).to_string())
}

/// A Bitbucket src API: the ref resolves to the commit `resolve(n)` gives for the `n`th meta
/// request; the raw file is served for the commits in `files`.
fn bitbucket_server(
    reference: &'static str,
    resolve: impl Fn(usize) -> String + Send + Sync + 'static,
    files: Vec<(String, Published)>,
) -> Server {
    let metas = AtomicUsize::new(0);
    Server::start(move |request| {
        if request.header("Authorization") != Some(format!("Bearer {BITBUCKET_TOKEN}").as_str()) {
            return bitbucket_error(401, "Access token expired or invalid");
        }
        if request.method != "GET" {
            return bitbucket_error(405, "Method not allowed");
        }
        if request.path == format!("{}?format=meta", bitbucket_path(reference)) {
            let hash = resolve(metas.fetch_add(1, Ordering::SeqCst));
            let size = files.iter().find(|(at, _)| *at == hash).map_or(0, |(_, published)| published.bytes.len());
            return Answer::json(200, &bitbucket_meta(&hash, size));
        }
        match files.iter().find(|(at, _)| request.path == bitbucket_path(at)) {
            Some((_, published)) => raw_answer("application/json", &published.bytes),
            None => bitbucket_error(404, &format!("No such file or directory: {ARTIFACT_PATH}")),
        }
    })
}

fn assert_bitbucket_request(request: &Recorded, target: &str) {
    assert_eq!(request.method, "GET", "{request:?}");
    assert_eq!(request.path, target, "{request:?}");
    assert_eq!(request.header("Authorization"), Some(format!("Bearer {BITBUCKET_TOKEN}").as_str()), "{request:?}");
    assert_eq!(request.header_count("Authorization"), 1, "{request:?}");
    assert_eq!(request.header("User-Agent"), Some(USER_AGENT), "{request:?}");
    assert!(request.body.is_empty(), "{request:?}");
}

#[test]
fn bitbucket_resolves_main_to_a_commit_then_reads_the_file_at_that_commit() {
    let published = Published::new(PLAINTEXT, "rev-bb-1");
    let commit = commit_hash("bitbucket-main");
    let resolved = commit.clone();
    let server = bitbucket_server("main", move |_| resolved.clone(), vec![(commit.clone(), published)]);
    let api_url = server.url("");
    let agent = start_ready(&[
        ("CLEF_AGENT_VCS_PROVIDER", "bitbucket"),
        ("CLEF_AGENT_VCS_TOKEN", BITBUCKET_TOKEN),
        ("CLEF_AGENT_VCS_API_URL", &api_url),
    ]);

    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    agent.get("/v1/secrets/payments/caf%C3%A9").assert(200, "crème-brûlée-7e3b");
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "meta, then the file at the commit: {requests:#?}");
    assert_bitbucket_request(&requests[0], &format!("{}?format=meta", bitbucket_path("main")));
    assert_bitbucket_request(&requests[1], &bitbucket_path(&commit));
    assert_token_absent(&agent, BITBUCKET_TOKEN);
}

#[test]
fn bitbucket_with_a_ref_reads_only_the_meta_while_the_commit_is_unchanged_and_rotates_on_a_new_one() {
    let (commit_1, commit_2) = (commit_hash("bitbucket-stable-1"), commit_hash("bitbucket-stable-2"));
    let files = vec![
        (commit_1.clone(), Published::new(PLAINTEXT, "rev-bb-1")),
        (commit_2.clone(), Published::new(PLAINTEXT_ROTATED, "rev-bb-2")),
    ];
    let (first, second) = (commit_1.clone(), commit_2.clone());
    // Meta answers: the first commit twice (start-up, the unchanged poll), then the second.
    let resolve = move |n: usize| if n < 2 { first.clone() } else { second.clone() };
    let server = bitbucket_server("stable", resolve, files);
    let api_url = server.url("");
    let agent = start_ready(&[
        ("CLEF_AGENT_VCS_PROVIDER", "bitbucket"),
        ("CLEF_AGENT_VCS_TOKEN", BITBUCKET_TOKEN),
        ("CLEF_AGENT_VCS_REF", "stable"),
        ("CLEF_AGENT_VCS_API_URL", &api_url),
    ]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);

    sighup_and_wait_for_refresh(&agent, SIGHUP_LIMIT);
    assert_eq!(server.requests().len(), 3, "an unchanged commit costs only the meta request: {:#?}", server.requests());
    agent.get("/v1/secrets").assert(200, PLAINTEXT);

    agent.signal(libc::SIGHUP);
    assert!(
        wait_for_secrets(&agent, PLAINTEXT_ROTATED, SIGHUP_LIMIT),
        "the rotated artifact was not served; stderr: {}",
        agent.stderr()
    );
    agent.wait_for_stdout("[clef-agent] refreshed: revision rev-bb-2 (5 keys)\n", Duration::from_secs(1));
    let meta = format!("{}?format=meta", bitbucket_path("stable"));
    let expected = [meta.clone(), bitbucket_path(&commit_1), meta.clone(), meta, bitbucket_path(&commit_2)];
    let requests = server.requests();
    assert_eq!(requests.len(), expected.len(), "{requests:#?}");
    for (request, target) in requests.iter().zip(&expected) {
        assert_bitbucket_request(request, target);
    }
    assert!(!agent.stderr().contains("poll error"), "{}", agent.stderr());
    assert_token_absent(&agent, BITBUCKET_TOKEN);
}

#[test]
fn exec_gives_its_command_the_secrets_but_not_the_age_key_the_api_token_or_the_vcs_token() {
    let published = Arc::new(Mutex::new(Published::new(PLAINTEXT, "rev-exec")));
    let server = github_server("", None, Arc::clone(&published), true);
    let api_url = server.url("");
    let age_key = age_key_line("keys/demo.agekey");
    let mut env = vcs_env(free_port(), &[]);
    env.extend([
        ("CLEF_AGENT_VCS_PROVIDER".to_string(), "github".to_string()),
        ("CLEF_AGENT_VCS_TOKEN".to_string(), GITHUB_TOKEN.to_string()),
        ("CLEF_AGENT_VCS_API_URL".to_string(), api_url),
    ]);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_clef-agent"));
    command.env_clear().args(["exec", "--", "env"]).envs(env.iter().map(|(name, value)| (name, value)));
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    let output = command.output().expect("cannot run the clef-agent executable");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let names: Vec<&str> = printed.lines().filter_map(|line| line.split_once('=')).map(|(name, _)| name).collect();
    assert!(names.contains(&"database__DB_PASSWORD"), "the secrets are missing:\n{printed}");
    assert!(names.contains(&"CLEF_AGENT_VCS_REPO"), "a variable that is not a credential was dropped:\n{printed}");
    for withheld in ["CLEF_AGENT_AGE_KEY", "CLEF_AGENT_TOKEN", "CLEF_AGENT_VCS_TOKEN"] {
        assert!(!names.contains(&withheld), "the command was given {withheld}:\n{printed}");
    }
    for credential in [age_key.as_str(), TOKEN, GITHUB_TOKEN] {
        assert!(!printed.contains(credential), "a credential reached the command:\n{printed}");
    }
}
