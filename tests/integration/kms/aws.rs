//! AWS KMS envelopes against the real emulator: `moto_server` (the harness of
//! `sources/s3.rs`) holds the KMS keys, and the envelope artifacts are packed the way
//! `clef pack` packs them, independently of the agent, by `tests/aws/moto_admin.py
//! envelope-artifact`: a random data key wrapped by moto's KMS `Encrypt`, AES-256-GCM in Python's
//! `cryptography`. Once the setup is done moto checks every request's SigV4 signature and the
//! IAM policy of the user the agent signs as, so a secret served here is one whose data key
//! moto's KMS unwrapped for that user. Moto checks KMS actions against the resource `*`, so the
//! policies here name `*`; it picks the key's region from the signature's credential scope.
//!
//! Taking access away is replacing the user's policy with one that denies `kms:Decrypt`; giving
//! it back is the allowing one again. Moto's request log counts the agent's KMS calls (a
//! werkzeug line names no target, so only while no admin call runs); where a test needs to see
//! exactly what the agent sent (headers, body), the agent talks to a recorder that forwards to
//! moto.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::sources::s3::{
    allow, assert_never_logged, fatal_line, forward, keys_env, logged, pairs, revision, AccessKey, Logged, Moto,
};
use crate::support::loopback::{Recorded, Server};
use crate::support::{sha256_hex, wait_until, Agent, Deployment, TempDir, PLAINTEXT, PLAINTEXT_ROTATED, READY_LINE};

/// `AWS_REGION` of every agent here.
const REGION: &str = "us-east-1";
/// The IAM user the agent signs as.
const USER: &str = "clef-kms-user";
/// With a one-hour TTL the poller waits at least 324 s: no test ever sees a scheduled poll.
const SLOW_POLLING: (&str, &str) = ("CLEF_AGENT_CACHE_TTL", "3600");
/// SIGHUP refreshes at once; this leaves slack for a loaded machine.
const SIGHUP_LIMIT: Duration = Duration::from_secs(5);
/// Moto's log line of a request may follow the answer by a moment.
const LOG_LIMIT: Duration = Duration::from_secs(5);
/// GETs of `/v1/secrets` timed in JIT mode.
const JIT_SAMPLES: usize = 20;

/// How every KMS unwrap failure is reported.
const UNWRAP_FAILED: &str = "artifact rejected (kms_unwrap): KMS could not unwrap the data key: ";
const KMS_HINT: &str =
    "Check the envelope's KMS key and this agent's permission to use it (AWS kms:Decrypt, GCP cloudkms.cryptoKeyVersions.useToDecrypt, Azure Key Vault unwrapKey).";
/// Values of [`PLAINTEXT`] and [`PLAINTEXT_ROTATED`] that must never reach a log line.
const SECRET_VALUES: [&str; 6] =
    ["db-pass-4a1f", "sk_live_9d8c7b6a", "crème-brûlée-7e3b", "db-pass-b702", "sk_live_1e2f3a4b", "crème-brûlée-c91d"];

/// The user's policy: `kms:Decrypt` on `*` (what moto's IAM checks KMS actions against).
fn decrypt_allowed() -> String {
    allow(&["kms:Decrypt"], "*")
}

/// The user's policy with access taken away: an explicit deny.
fn decrypt_denied() -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Action": "kms:Decrypt", "Resource": "*"}],
    })
    .to_string()
}

/// A symmetric KMS key in `region`, made as the admin; its ARN.
fn create_key(moto: &Moto, region: &str) -> String {
    let arn = moto.admin(&[&["create-kms-key", region]]).remove(0);
    assert!(arn.starts_with(&format!("arn:aws:kms:{region}:")), "{arn}");
    arn
}

/// An envelope artifact as `moto_admin.py envelope-artifact` packed it, and its data key.
struct Envelope {
    json: String,
    wrapped_key: String,
    /// The data key as base64 and as hex: neither may ever be logged.
    data_key_forms: [String; 2],
}

impl Envelope {
    /// `plaintext` packed for `key_arn` (named in the envelope), its data key wrapped under
    /// `wrapping_key_arn` (default: the same key).
    fn pack(
        moto: &Moto,
        scratch: &TempDir,
        key_arn: &str,
        plaintext: &str,
        revision: &str,
        wrapping_key_arn: Option<&str>,
    ) -> Envelope {
        let file = scratch.join(&format!("plaintext-{revision}"));
        std::fs::write(&file, plaintext).expect("cannot write the plaintext file");
        let file = file.display().to_string();
        let mut command = vec!["envelope-artifact", key_arn, &file, revision];
        command.extend(wrapping_key_arn);
        let lines = moto.admin(&[&command]);
        let [json, data_key] = <[String; 2]>::try_from(lines).expect("envelope-artifact prints two lines");
        std::fs::remove_file(&file).expect("cannot remove the plaintext file");

        let value: serde_json::Value = serde_json::from_str(&json).expect("envelope-artifact prints JSON");
        let field = |pointer: &str| value.pointer(pointer).and_then(|field| field.as_str()).unwrap_or_default();
        // The packing follows SPEC §1: what the agent is about to check holds.
        assert_eq!(field("/ciphertextHash"), sha256_hex(field("/ciphertext").as_bytes()));
        assert_eq!(
            (field("/revision"), field("/envelope/provider"), field("/envelope/keyId")),
            (revision, "aws", key_arn)
        );
        let decode = |pointer: &str| base64::engine::general_purpose::STANDARD.decode(field(pointer)).unwrap();
        assert_eq!((decode("/envelope/iv").len(), decode("/envelope/authTag").len()), (12, 16));
        let key = base64::engine::general_purpose::STANDARD.decode(&data_key).expect("the data key is base64");
        assert_eq!(key.len(), 32);
        let hex: String = key.iter().map(|byte| format!("{byte:02x}")).collect();
        Envelope { wrapped_key: field("/envelope/wrappedKey").to_string(), json, data_key_forms: [data_key, hex] }
    }
}

/// The agent's environment: no age key, the region, `kms_endpoint` as AWS_ENDPOINT_URL_KMS,
/// the user's keys, no instance metadata, slow polling; `extra` wins.
fn kms_env(kms_endpoint: &str, user: &AccessKey, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("CLEF_AGENT_AGE_KEY_FILE".into(), String::new()),
        ("AWS_REGION".into(), REGION.into()),
        ("AWS_ENDPOINT_URL_KMS".into(), kms_endpoint.into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        (SLOW_POLLING.0.into(), SLOW_POLLING.1.into()),
    ];
    env.extend(keys_env(user).iter().map(|(name, value)| (name.to_string(), value.to_string())));
    for (name, value) in extra {
        env.retain(|(existing, _)| existing != name);
        env.push((name.to_string(), value.to_string()));
    }
    env
}

/// A deployment of `envelope`, started and ready.
fn start_agent(
    test: &str,
    envelope: &Envelope,
    kms_endpoint: &str,
    user: &AccessKey,
    extra: &[(&str, &str)],
) -> (Deployment, Agent) {
    let deployment = Deployment::new(test, &envelope.json);
    let agent = deployment.start(&pairs(&kms_env(kms_endpoint, user, extra)));
    (deployment, agent)
}

/// A deployment of `envelope`, started without waiting for anything.
fn spawn_agent(test: &str, envelope: &Envelope, kms_endpoint: &str, user: &AccessKey) -> (Deployment, Agent) {
    let deployment = Deployment::new(test, &envelope.json);
    let agent = deployment.spawn(&pairs(&kms_env(kms_endpoint, user, &[])));
    (deployment, agent)
}

/// Neither output carries the user's secret key, a data key or a secret value.
fn assert_nothing_secret_logged(agent: &Agent, user: &AccessKey, envelopes: &[&Envelope]) {
    let mut secrets: Vec<&str> = vec![&user.secret];
    secrets.extend(envelopes.iter().flat_map(|envelope| envelope.data_key_forms.iter().map(String::as_str)));
    secrets.extend(SECRET_VALUES);
    assert_never_logged(agent, &secrets);
}

/// Moto's logged `POST /` requests since IAM checks went on (KMS and IAM calls alike: the
/// log line names no target).
fn posts(moto: &Moto) -> Vec<Logged> {
    moto.requests_since_enforced()
        .into_iter()
        .filter(|request| request.method == "POST" && request.path == "/")
        .collect()
}

/// Waits until moto logged at least `count` `POST /` since IAM checks went on; returns them.
fn wait_for_posts(moto: &Moto, count: usize, agent: &Agent) -> Vec<Logged> {
    let arrived = wait_until(LOG_LIMIT, || posts(moto).len() >= count);
    assert!(
        arrived,
        "moto logged {:?}, expected {count} POST /\n--- agent stdout ---\n{}--- agent stderr ---\n{}{}",
        posts(moto),
        agent.stdout(),
        agent.stderr(),
        moto.output()
    );
    posts(moto)
}

/// One request the agent sent KMS through a [`Recorder`], and moto's status.
#[derive(Clone)]
struct Exchange {
    request: Recorded,
    status: u16,
}

/// Stands between the agent and moto: forwards every request and keeps it with the status of
/// moto's answer, so a test sees exactly the KMS calls the agent made.
struct Recorder {
    server: Server,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
}

impl Recorder {
    fn start(moto: &Moto) -> Recorder {
        let exchanges: Arc<Mutex<Vec<Exchange>>> = Arc::default();
        let (moto_port, kept) = (moto.port, Arc::clone(&exchanges));
        let server = Server::start(move |request| {
            let answer = forward(moto_port, request);
            kept.lock().unwrap().push(Exchange { request: request.clone(), status: answer.status });
            answer
        });
        Recorder { server, exchanges }
    }

    fn url(&self) -> String {
        self.server.url("")
    }

    fn statuses(&self) -> Vec<u16> {
        self.exchanges.lock().unwrap().iter().map(|exchange| exchange.status).collect()
    }

    /// Waits until `count` exchanges are done; returns the last one.
    fn wait_for(&self, count: usize, agent: &Agent) -> Exchange {
        let done = wait_until(LOG_LIMIT, || self.exchanges.lock().unwrap().len() >= count);
        assert!(done, "{} KMS calls, expected {count}; agent stderr:\n{}", self.statuses().len(), agent.stderr());
        self.exchanges.lock().unwrap()[count - 1].clone()
    }
}

/// Asserts that `request` is the KMS `Decrypt` of the contract for `wrapped_key` under
/// `key_arn`, signed by `user` for `region`.
fn assert_decrypt_request(request: &Recorded, user: &AccessKey, region: &str, key_arn: &str, wrapped_key: &str) {
    assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/"));
    assert_eq!(request.header("Content-Type"), Some("application/x-amz-json-1.1"));
    assert_eq!(request.header("X-Amz-Target"), Some("TrentService.Decrypt"));
    assert!(request.header("X-Amz-Date").is_some(), "{:?}", request.headers);
    let authorization = request.header("Authorization").unwrap_or_else(|| panic!("unsigned: {:?}", request.headers));
    let credential = authorization
        .strip_prefix("AWS4-HMAC-SHA256 Credential=")
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("not a SigV4 Authorization: {authorization}"));
    let scope: Vec<&str> = credential.split('/').collect();
    assert_eq!(scope.len(), 5, "{credential}");
    assert_eq!(scope[0], user.id);
    assert!(scope[1].len() == 8 && scope[1].bytes().all(|byte| byte.is_ascii_digit()), "{credential}");
    assert_eq!(scope[2..], [region, "kms", "aws4_request"], "{credential}");
    let signed_headers = authorization.split("SignedHeaders=").nth(1).and_then(|rest| rest.split(',').next());
    let signed_headers: Vec<&str> = signed_headers.unwrap_or_default().split(';').collect();
    for name in ["content-type", "host", "x-amz-date", "x-amz-target"] {
        assert!(signed_headers.contains(&name), "{name} is not signed: {authorization}");
    }
    let body: serde_json::Value = serde_json::from_slice(&request.body).expect("the Decrypt body is JSON");
    let expected = serde_json::json!({
        "CiphertextBlob": wrapped_key,
        "KeyId": key_arn,
        "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
    });
    assert_eq!(body, expected);
}

/// The `[clef-agent] ` lines of stderr that contain `needle`.
fn stderr_lines_with(agent: &Agent, needle: &str) -> Vec<String> {
    agent.stderr().lines().filter(|line| line.contains(needle)).map(str::to_string).collect()
}

#[test]
fn cached_mode_serves_an_envelope_whose_data_key_moto_kms_unwrapped() {
    let moto = Moto::start();
    let scratch = TempDir::new("kms-aws-cached");
    let key = create_key(&moto, REGION);
    let user = moto.create_user(USER, &decrypt_allowed());
    let envelope = Envelope::pack(&moto, &scratch, &key, PLAINTEXT, "rev-1", None);
    moto.enforce_auth(0);
    let (_deployment, agent) = start_agent("kms-aws-cached", &envelope, &moto.endpoint(), &user, &[]);

    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    agent.get("/v1/secrets/database/DB_PASSWORD").assert(200, "db-pass-4a1f");
    assert_eq!(revision(&agent), "rev-1");
    // One signed call that moto's IAM let through (werkzeug's log line names no target; the
    // Decrypt target and body are checked through the recorder in the region test). Serving
    // from the snapshot asks KMS nothing more.
    assert_eq!(wait_for_posts(&moto, 1, &agent), [logged("POST", "/", 200)]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    assert_eq!(posts(&moto), [logged("POST", "/", 200)]);
    assert_nothing_secret_logged(&agent, &user, &[&envelope]);
}

#[test]
fn jit_mode_unwraps_on_every_request_answers_503_while_access_is_denied_and_recovers_without_a_restart() {
    let moto = Moto::start();
    let scratch = TempDir::new("kms-aws-jit");
    let key = create_key(&moto, REGION);
    let user = moto.create_user(USER, &decrypt_allowed());
    let envelope = Envelope::pack(&moto, &scratch, &key, PLAINTEXT, "rev-1", None);
    moto.enforce_auth(0);
    let jit = [("CLEF_AGENT_CACHE_TTL", "0")];
    let (_deployment, agent) = start_agent("kms-aws-jit", &envelope, &moto.endpoint(), &user, &jit);

    // Start-up unwraps once, to know the artifact can be opened; then each GET unwraps.
    assert_eq!(wait_for_posts(&moto, 1, &agent), [logged("POST", "/", 200)]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    let before = 2;
    assert_eq!(wait_for_posts(&moto, before, &agent), vec![logged("POST", "/", 200); before]);
    // One KMS Decrypt per GET, each timed.
    let mut durations: Vec<Duration> = (0..JIT_SAMPLES)
        .map(|_| {
            let started = Instant::now();
            let response = agent.get("/v1/secrets");
            let elapsed = started.elapsed();
            response.assert(200, PLAINTEXT);
            elapsed
        })
        .collect();
    durations.sort();
    eprintln!(
        "[kms::aws] JIT GET /v1/secrets with a KMS Decrypt by moto_server: median {:.1} ms over {JIT_SAMPLES} \
         requests (min {:.1} ms, max {:.1} ms)",
        durations[JIT_SAMPLES / 2].as_secs_f64() * 1000.0,
        durations[0].as_secs_f64() * 1000.0,
        durations[JIT_SAMPLES - 1].as_secs_f64() * 1000.0
    );
    let calls = wait_for_posts(&moto, before + JIT_SAMPLES, &agent);
    assert_eq!(calls[before..], vec![logged("POST", "/", 200); JIT_SAMPLES], "one KMS call per request");
    assert_eq!(calls.len(), before + JIT_SAMPLES, "one KMS call per request");

    // Access taken away: the very next request fails, with no restart and no poll in between.
    moto.admin(&[&["put-user-policy", USER, &decrypt_denied()]]);
    let denied = agent.get("/v1/secrets");
    assert_eq!(denied.status, 503, "{}", denied.text());
    let body = denied.json();
    assert_eq!(body["error"], "Decryption failed", "{body}");
    assert!(body["detail"].as_str().is_some_and(|detail| !detail.is_empty()), "{body}");
    assert!(!SECRET_VALUES.iter().any(|value| denied.text().contains(value)), "{body}");
    let denials = wait_until(LOG_LIMIT, || posts(&moto).iter().any(|request| request.status == 403));
    assert!(denials, "moto never denied a Decrypt: {:?}", posts(&moto));
    let denied_again = agent.get("/v1/secrets/database/DB_PASSWORD");
    assert_eq!((denied_again.status, &denied_again.json()["error"]), (503, &"Decryption failed".into()));

    // Access given back: the next request is served again by the same process.
    moto.admin(&[&["put-user-policy", USER, &decrypt_allowed()]]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    agent.get("/v1/secrets/database/DB_PASSWORD").assert(200, "db-pass-4a1f");
    assert_eq!(agent.stdout().matches(READY_LINE).count(), 1, "{}", agent.stdout());
    assert_nothing_secret_logged(&agent, &user, &[&envelope]);
}

#[test]
fn cached_mode_keeps_serving_without_kms_access_and_rejects_a_new_revision_with_kms_unwrap() {
    let moto = Moto::start();
    let scratch = TempDir::new("kms-aws-cached-denied");
    let key = create_key(&moto, REGION);
    let user = moto.create_user(USER, &decrypt_allowed());
    let first = Envelope::pack(&moto, &scratch, &key, PLAINTEXT, "rev-1", None);
    let second = Envelope::pack(&moto, &scratch, &key, PLAINTEXT_ROTATED, "rev-2", None);
    moto.enforce_auth(0);
    let recorder = Recorder::start(&moto);
    let (deployment, agent) = start_agent("kms-aws-cached-denied", &first, &recorder.url(), &user, &[]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    assert_eq!(recorder.wait_for(1, &agent).status, 200);

    // Access taken away: the decrypted snapshot is still served, without asking KMS.
    moto.admin(&[&["put-user-policy", USER, &decrypt_denied()]]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    agent.get("/v1/secrets/payments/STRIPE%20KEY").assert(200, "sk_live_9d8c7b6a");
    assert_eq!(recorder.statuses(), [200]);

    // A new revision cannot be unwrapped: rejected, and the old secrets stay.
    deployment.publish(&second.json);
    agent.signal(libc::SIGHUP);
    agent.wait_for_stderr(&format!("[clef-agent] poll error: {UNWRAP_FAILED}"), SIGHUP_LIMIT);
    let rejected = recorder.wait_for(2, &agent);
    assert_eq!(rejected.status, 403, "moto's IAM denied the Decrypt");
    assert_decrypt_request(&rejected.request, &user, REGION, &key, &second.wrapped_key);
    let poll_errors = stderr_lines_with(&agent, "poll error");
    assert_eq!(poll_errors.len(), 1, "{poll_errors:?}");
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    assert_eq!(revision(&agent), "rev-1");

    // Access given back: the next refresh takes the new revision.
    moto.admin(&[&["put-user-policy", USER, &decrypt_allowed()]]);
    agent.signal(libc::SIGHUP);
    agent.wait_for_stdout("[clef-agent] refreshed: revision rev-2 (5 keys)\n", SIGHUP_LIMIT);
    agent.get("/v1/secrets").assert(200, PLAINTEXT_ROTATED);
    assert_eq!(recorder.statuses(), [200, 403, 200]);
    assert_nothing_secret_logged(&agent, &user, &[&first, &second]);
}

#[test]
fn signs_for_the_region_of_the_key_arn_whatever_aws_region_says() {
    let moto = Moto::start();
    let scratch = TempDir::new("kms-aws-region");
    // Moto keeps KMS keys per region and finds this one only when the credential scope says
    // eu-west-2 (a us-east-1 signature is answered NotFoundException).
    let key = create_key(&moto, "eu-west-2");
    let user = moto.create_user(USER, &decrypt_allowed());
    let envelope = Envelope::pack(&moto, &scratch, &key, PLAINTEXT, "rev-1", None);
    moto.enforce_auth(0);
    let recorder = Recorder::start(&moto);
    let (_first, agent) = start_agent("kms-aws-region", &envelope, &recorder.url(), &user, &[]);

    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    let exchange = recorder.wait_for(1, &agent);
    assert_eq!(exchange.status, 200, "moto checked the signature and found the key");
    assert_decrypt_request(&exchange.request, &user, "eu-west-2", &key, &envelope.wrapped_key);
    assert_nothing_secret_logged(&agent, &user, &[&envelope]);

    // The general AWS_ENDPOINT_URL serves when there is no KMS-specific one; the region is
    // still the key's, not AWS_DEFAULT_REGION's.
    let recorder_url = recorder.url();
    let general = [
        ("AWS_ENDPOINT_URL_KMS", ""),
        ("AWS_ENDPOINT_URL", recorder_url.as_str()),
        ("AWS_REGION", ""),
        ("AWS_DEFAULT_REGION", "ap-southeast-2"),
    ];
    let (_second, agent) = start_agent("kms-aws-region-general", &envelope, &moto.endpoint(), &user, &general);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    let exchange = recorder.wait_for(2, &agent);
    assert_eq!(exchange.status, 200);
    assert_decrypt_request(&exchange.request, &user, "eu-west-2", &key, &envelope.wrapped_key);
    assert_nothing_secret_logged(&agent, &user, &[&envelope]);
}

#[test]
fn a_kms_access_denied_answer_fails_start_up_after_three_attempts_with_the_kms_hint() {
    let moto = Moto::start();
    let scratch = TempDir::new("kms-aws-denied-start");
    // Moto's KMS answers AccessDeniedException when the KeyId of a Decrypt is not the key that
    // wrapped the ciphertext: the envelope names the second key, the first one wrapped it.
    let wrapping_key = create_key(&moto, REGION);
    let named_key = create_key(&moto, REGION);
    let user = moto.create_user(USER, &decrypt_allowed());
    let mismatched = Envelope::pack(&moto, &scratch, &named_key, PLAINTEXT, "rev-1", Some(&wrapping_key));
    // And a user whose IAM policy does not allow kms:Decrypt: moto's IAM refuses it (HTTP 403).
    let outsider = moto.create_user("clef-kms-outsider", &allow(&["s3:GetObject"], "*"));
    let envelope = Envelope::pack(&moto, &scratch, &wrapping_key, PLAINTEXT, "rev-1", None);
    moto.enforce_auth(0);
    let started = Instant::now();
    let (first, denied) = spawn_agent("kms-aws-denied-start", &mismatched, &moto.endpoint(), &user);
    let (second, refused) = spawn_agent("kms-aws-refused-start", &envelope, &moto.endpoint(), &outsider);

    let fatal = fatal_line(&denied);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(6), "three attempts take 2 s + 4 s of backoff, took {elapsed:?}");
    let prefix = format!(
        "[clef-agent] fatal: Failed to fetch artifact from {} after 3 attempts: {UNWRAP_FAILED}",
        first.artifact.display()
    );
    assert!(fatal.starts_with(&prefix), "{fatal}");
    assert!(fatal.contains("AccessDeniedException"), "{fatal}");
    assert!(fatal.ends_with(&format!(". {KMS_HINT}")), "{fatal}");
    let retries = stderr_lines_with(&denied, "initial fetch failed");
    assert_eq!(retries.len(), 2, "{}", denied.stderr());
    for (attempt, line) in (1..).zip(&retries) {
        let expected = format!("[clef-agent] initial fetch failed (attempt {attempt} of 3): {UNWRAP_FAILED}");
        assert!(line.starts_with(&expected) && line.contains("AccessDeniedException"), "{line}");
    }
    assert!(!denied.stdout().contains(READY_LINE), "{}", denied.stdout());
    assert_nothing_secret_logged(&denied, &user, &[&mismatched]);

    let fatal = fatal_line(&refused);
    let prefix = format!(
        "[clef-agent] fatal: Failed to fetch artifact from {} after 3 attempts: {UNWRAP_FAILED}",
        second.artifact.display()
    );
    assert!(fatal.starts_with(&prefix) && fatal.ends_with(&format!(". {KMS_HINT}")), "{fatal}");
    assert_eq!(stderr_lines_with(&refused, "initial fetch failed").len(), 2, "{}", refused.stderr());
    assert_nothing_secret_logged(&refused, &outsider, &[&envelope]);

    // Three Decrypts each, answered 400 (KMS's AccessDeniedException) and 403 (IAM's denial).
    let mut statuses: Vec<u16> = wait_for_posts(&moto, 6, &refused).iter().map(|request| request.status).collect();
    statuses.sort();
    assert_eq!(statuses, [400, 400, 400, 403, 403, 403], "{:?}", moto.requests_since_enforced());
}

const AWS_ACCEPTED: &str = "an AWS KMS key for provider aws: \
    arn:<aws|aws-cn|aws-us-gov|aws-iso|aws-iso-b|aws-iso-e|aws-iso-f|aws-eusc>:kms:<region>:<12-digit account>:key/<key id> \
    or ...:alias/<name>, or a bare key id or alias/<name> (region from AWS_REGION)";

/// The region of a key ARN picks the KMS host the signed request (access key id, session token)
/// goes to, and the artifact is not trusted: an ARN that is not strictly one fails start-up at
/// once. Every outgoing request would pass the proxy (no KMS endpoint is configured, the
/// credentials are static): it sees nothing.
#[test]
fn a_key_arn_with_a_hostile_region_or_account_is_refused_before_any_request() {
    let proxy = crate::support::loopback::ConnectionRecorder::start();
    let cases = [
        ("arn:aws:kms:evil.example/x:111122223333:key/k", "the region is not like eu-west-1"),
        ("arn:aws:kms:eu-west-1:1111:key/1234abcd-12ab-34cd-56ef-1234567890ab", "the account is not 12 digits"),
    ];
    for (index, (key_id, why)) in cases.iter().enumerate() {
        let kms = crate::support::EnvelopeKms {
            provider: "aws".into(),
            key_id: key_id.to_string(),
            wrapped_key: base64::engine::general_purpose::STANDARD.encode([7u8; 184]),
            algorithm: "SYMMETRIC_DEFAULT".into(),
        };
        let artifact = crate::support::build_envelope_artifact(PLAINTEXT, "rev-1", &[9u8; 32], &kms);
        let deployment = Deployment::new(&format!("aws-hostile-key-arn-{index}"), &artifact);
        let mut env = vec![
            ("CLEF_AGENT_AGE_KEY_FILE", String::new()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ACCESS_KEY_ID", "AKIACLEFITHOSTILE001".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "clefItHostileSecretKey/0123456789abcdefgh".to_string()),
            ("AWS_SESSION_TOKEN", "clefItHostileSessionToken".to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ];
        env.extend(proxy.proxy_env());
        let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (*name, value.as_str())).collect();
        let agent = deployment.spawn(&env);
        super::loopback_kms::assert_key_id_refused_at_once(
            &agent,
            &deployment.artifact,
            AWS_ACCEPTED,
            &format!("'{key_id}' ({why})"),
        );
        assert_eq!(proxy.connections(), Vec::<String>::new(), "{key_id}: a request left the agent");
    }
}
