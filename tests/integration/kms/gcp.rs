//! GCP Cloud KMS envelopes end to end. Two loopback servers play Google: Cloud KMS
//! (`POST /v1/<keyId>:decrypt`, really unwrapping with an AES-256-GCM key-encryption key only it
//! holds) and the identity side — the OAuth 2.0 token endpoint (JWT bearer grant with the RS256
//! signature verified against `tests/fixtures/kms/gcp-service-account.pem`'s public half, and
//! the refresh-token grant) and the metadata server. Every request is checked against Google's
//! documented shape; answers and errors have Google's shapes. Then the envelope's own failures:
//! a wrong tag, a truncated ciphertext, an unknown provider, a wrong IV, a missing field.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use serde_json::{json, Value};

use super::loopback_kms::{
    assert_nothing_leaked, assert_one_line_per_entry, base64url, bearer, data_key, data_key_encodings, ensure,
    ensure_pairs, form_body, json_body, now_secs, only_fields, random_bytes, split_target, standard,
    wait_for_poll_error, TokenCheck, Tokens, Violations, FAILED_START_LIMIT, JIT, NO_AGE_KEY, REFRESH_LIMIT,
    SLOW_POLLING,
};
use crate::support::loopback::{Answer, Recorded, Server};
use crate::support::{
    build_envelope_artifact, read_fixture, sha256_hex, wait_until, Agent, Deployment, EnvelopeKms, PLAINTEXT,
    PLAINTEXT_ROTATED,
};

const KEY_ID: &str = "projects/clef-it/locations/global/keyRings/clef/cryptoKeys/artifacts";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TOKEN_PATH: &str = "/token";
const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// The service account of the key file.
const CLIENT_EMAIL: &str = "clef-agent@clef-it.iam.gserviceaccount.com";
const PRIVATE_KEY_ID: &str = "5f1c9a0e7d3b2a4c6e8f0a1b3c5d7e9f1a2b3c4d";
/// The user of the `authorized_user` file; distinctive, so a leak shows.
const USER_CLIENT_ID: &str = "764086051850-clefit6qr9rn0ra.apps.googleusercontent.com";
const USER_CLIENT_SECRET: &str = "d-FL95Q19q7MQmFpd7hHD0Ty-clef-it";
const REFRESH_TOKEN: &str = "1//0clef-it-refresh-token-Lk9Xw2Qp7Rz4Vb8Nm3";
/// What Cloud KMS answers a caller without `cloudkms.cryptoKeyVersions.useToDecrypt`.
const DENIED_MESSAGE: &str = "Permission 'cloudkms.cryptoKeyVersions.useToDecrypt' denied on resource \
    'projects/clef-it/locations/global/keyRings/clef/cryptoKeys/artifacts' (or it may not exist).";
const UNAUTHENTICATED_MESSAGE: &str = "Request had invalid authentication credentials. Expected OAuth 2 access \
    token, login cookie or other valid authentication credential. \
    See https://developers.google.com/identity/sign-in/web/devconsole-project.";

fn decrypt_path() -> String {
    format!("/v1/{KEY_ID}:decrypt")
}

/// Google's error body: `{"error":{"code","message","status"}}`.
fn google_error(code: u16, status: &str, message: &str) -> Answer {
    Answer::json(code, &json!({"error": {"code": code, "message": message, "status": status}}).to_string())
}

/// An AES-256-GCM key-encryption key: wrapped = IV ‖ ciphertext ‖ tag, Cloud KMS's opaque
/// ciphertext as far as the agent knows.
struct Kek(LessSafeKey);

impl Kek {
    fn new() -> Kek {
        Kek(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &random_bytes::<32>()).expect("a 32-byte key")))
    }

    fn wrap(&self, data_key: &[u8]) -> Vec<u8> {
        let iv = random_bytes::<12>();
        let mut sealed = data_key.to_vec();
        self.0.seal_in_place_append_tag(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut sealed).expect("seals");
        [iv.as_slice(), &sealed].concat()
    }

    /// Standard base64 of the wrapped key, with a `+` and a `/` in it, so that an agent that
    /// re-encoded it would be caught.
    fn wrap_to_base64(&self, data_key: &[u8]) -> String {
        loop {
            let wrapped = standard(&self.wrap(data_key));
            if wrapped.contains('+') && wrapped.contains('/') {
                return wrapped;
            }
        }
    }

    fn unwrap(&self, wrapped: &[u8]) -> Option<Vec<u8>> {
        let (iv, sealed) = (wrapped.get(..12)?, wrapped.get(12..)?);
        let nonce = Nonce::try_assume_unique_for_key(iv).ok()?;
        let mut opened = sealed.to_vec();
        Some(self.0.open_in_place(nonce, Aad::empty(), &mut opened).ok()?.to_vec())
    }
}

/// What the Google side knows and can be told to do.
struct State {
    kek: Kek,
    tokens: Tokens,
    violations: Violations,
    /// Cloud KMS answers 403 PERMISSION_DENIED.
    denied: AtomicBool,
    /// While true, Cloud KMS holds every call until it is set back to false.
    holding: Mutex<bool>,
    released: Condvar,
    /// `expires_in` of the tokens handed out.
    expires_in: AtomicU64,
    /// The token endpoint's own URL: the `aud` of the JWTs and the `token_uri` of the key files.
    token_uri: OnceLock<String>,
    /// The JWTs received, for the leak check.
    assertions: Mutex<Vec<String>>,
}

/// How the agent gets its token.
#[derive(Clone, Copy)]
enum Credentials {
    /// `GOOGLE_APPLICATION_CREDENTIALS` = a `service_account` key file.
    ServiceAccount,
    /// `GOOGLE_APPLICATION_CREDENTIALS` = an `authorized_user` file with a `token_uri`.
    AuthorizedUser,
    /// No key file: the metadata server at `GCE_METADATA_HOST`.
    MetadataServer,
}

/// Cloud KMS and Google's identity endpoints on loopback, with one data key wrapped by the KMS.
struct Gcp {
    kms: Server,
    identity: Server,
    state: Arc<State>,
    data_key: [u8; 32],
    wrapped_key: String,
}

impl Gcp {
    /// Makes Cloud KMS hold its calls (`true`) or answer them, the held ones included (`false`).
    fn hold(&self, holding: bool) {
        *self.state.holding.lock().unwrap() = holding;
        self.state.released.notify_all();
    }

    fn start() -> Gcp {
        let state = Arc::new(State {
            kek: Kek::new(),
            tokens: Tokens::new("ya29.c.clef-it-gcp-access-token-"),
            violations: Violations::default(),
            denied: AtomicBool::new(false),
            holding: Mutex::new(false),
            released: Condvar::new(),
            expires_in: AtomicU64::new(3599),
            token_uri: OnceLock::new(),
            assertions: Mutex::default(),
        });
        let kms = {
            let state = Arc::clone(&state);
            Server::start(move |request| kms_answer(&state, request))
        };
        let identity = {
            let state = Arc::clone(&state);
            Server::start(move |request| identity_answer(&state, request))
        };
        state.token_uri.set(identity.url(TOKEN_PATH)).expect("set once");
        let data_key = data_key();
        let wrapped_key = state.kek.wrap_to_base64(&data_key);
        Gcp { kms, identity, state, data_key, wrapped_key }
    }

    fn kms_envelope(&self, wrapped_key: &str) -> EnvelopeKms {
        EnvelopeKms {
            provider: "gcp".into(),
            key_id: KEY_ID.into(),
            wrapped_key: wrapped_key.into(),
            algorithm: "GOOGLE_SYMMETRIC_ENCRYPTION".into(),
        }
    }

    /// An envelope artifact whose data key this KMS wrapped.
    fn artifact(&self, plaintext: &str, revision: &str) -> String {
        build_envelope_artifact(plaintext, revision, &self.data_key, &self.kms_envelope(&self.wrapped_key))
    }

    /// The agent's environment: no age key, the loopback KMS, the metadata server always
    /// reachable (so that using it when a key file is given would show), and the credentials.
    fn env(&self, deployment: &Deployment, credentials: Credentials) -> Vec<(String, String)> {
        let mut env = vec![
            (NO_AGE_KEY.0.to_string(), NO_AGE_KEY.1.to_string()),
            ("CLEF_AGENT_GCP_KMS_ENDPOINT".into(), self.kms.url("")),
            ("GCE_METADATA_HOST".into(), format!("127.0.0.1:{}", self.identity.port)),
        ];
        let token_uri = self.state.token_uri.get().expect("set at start").clone();
        let file = match credentials {
            Credentials::MetadataServer => return env,
            // As `gcloud iam service-accounts keys create` writes it.
            Credentials::ServiceAccount => json!({
                "type": "service_account",
                "project_id": "clef-it",
                "private_key_id": PRIVATE_KEY_ID,
                "private_key": read_fixture("kms/gcp-service-account.pem"),
                "client_email": CLIENT_EMAIL,
                "client_id": "104729381650184729365",
                "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                "token_uri": token_uri,
                "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
                "client_x509_cert_url":
                    "https://www.googleapis.com/robot/v1/metadata/x509/clef-agent%40clef-it.iam.gserviceaccount.com",
                "universe_domain": "googleapis.com",
            }),
            // As `gcloud auth application-default login` writes it, plus a `token_uri`.
            Credentials::AuthorizedUser => json!({
                "account": "",
                "client_id": USER_CLIENT_ID,
                "client_secret": USER_CLIENT_SECRET,
                "quota_project_id": "clef-it",
                "refresh_token": REFRESH_TOKEN,
                "type": "authorized_user",
                "universe_domain": "googleapis.com",
                "token_uri": token_uri,
            }),
        };
        let path = deployment.dir.join("gcp-credentials.json");
        std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).expect("cannot write the key file");
        env.push(("GOOGLE_APPLICATION_CREDENTIALS".into(), path.display().to_string()));
        env
    }

    fn start_agent(&self, deployment: &Deployment, credentials: Credentials, extra: &[(&str, &str)]) -> Agent {
        let env = self.env(deployment, credentials);
        let mut all: Vec<(&str, &str)> = env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        all.extend_from_slice(extra);
        deployment.start(&all)
    }

    fn spawn_agent(&self, deployment: &Deployment, credentials: Credentials) -> Agent {
        let env = self.env(deployment, credentials);
        let all: Vec<(&str, &str)> = env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        deployment.spawn(&all)
    }

    fn kms_calls(&self) -> Vec<Recorded> {
        self.kms.requests_to("POST", &decrypt_path())
    }

    fn token_requests(&self) -> Vec<Recorded> {
        self.identity.requests_to("POST", TOKEN_PATH)
    }

    fn metadata_requests(&self) -> Vec<Recorded> {
        self.identity.requests_to("GET", METADATA_TOKEN_PATH)
    }

    /// The `index`th access token the identity side issued.
    fn token(&self, index: usize) -> String {
        self.state.tokens.nth(index)
    }

    /// Everything secret the agent has seen or been given.
    fn credentials(&self) -> Vec<String> {
        let mut secrets = self.state.tokens.issued();
        secrets.extend(self.state.assertions.lock().unwrap().iter().cloned());
        secrets.extend([USER_CLIENT_SECRET.to_string(), REFRESH_TOKEN.to_string()]);
        // A line from the middle of the private key.
        let pem = read_fixture("kms/gcp-service-account.pem");
        secrets.push(pem.lines().nth(5).expect("a PEM body").to_string());
        secrets.extend(data_key_encodings(&self.data_key));
        secrets
    }

    /// The servers saw nothing undocumented and the agent's output holds nothing secret.
    fn assert_clean(&self, agent: &Agent) {
        self.state.violations.assert_none();
        assert_one_line_per_entry(agent);
        assert_nothing_leaked(agent, &self.credentials());
    }
}

/// Cloud KMS `cryptoKeys.decrypt`: authentication, then permission, then the request body.
fn kms_answer(state: &State, request: &Recorded) -> Answer {
    let holding = state.holding.lock().unwrap();
    drop(state.released.wait_while(holding, |holding| *holding).unwrap());
    let problem = match kms_decrypt(state, request) {
        Ok(answer) => return answer,
        Err(problem) => problem,
    };
    state.violations.note("Cloud KMS", request, &problem);
    google_error(400, "INVALID_ARGUMENT", &problem)
}

fn kms_decrypt(state: &State, request: &Recorded) -> Result<Answer, String> {
    ensure(request.method == "POST" && request.path == decrypt_path(), || format!("expected POST {}", decrypt_path()))?;
    match state.tokens.check(bearer(request)) {
        TokenCheck::Current => {}
        TokenCheck::Stale => {
            return Ok(google_error(401, "UNAUTHENTICATED", UNAUTHENTICATED_MESSAGE).with_header(
                "WWW-Authenticate",
                r#"Bearer realm="https://accounts.google.com/", error="invalid_token""#,
            ))
        }
        TokenCheck::Unknown => {
            let authorization = request.header("Authorization").unwrap_or("(none)");
            return Err(format!("Authorization is {authorization:?}, not one Bearer token the token endpoint issued"));
        }
    }
    if state.denied.load(Ordering::SeqCst) {
        return Ok(google_error(403, "PERMISSION_DENIED", DENIED_MESSAGE));
    }
    let body = json_body(request)?;
    let ciphertext = only_fields(&body, &["ciphertext"])?[0];
    let wrapped = base64::engine::general_purpose::STANDARD
        .decode(ciphertext)
        .map_err(|_| format!("'ciphertext' is not standard base64: {ciphertext:?}"))?;
    Ok(match state.kek.unwrap(&wrapped) {
        Some(data_key) => Answer::json(
            200,
            &json!({
                "name": format!("{KEY_ID}/cryptoKeyVersions/1"),
                "plaintext": standard(&data_key),
                "usedPrimary": true,
                "protectionLevel": "SOFTWARE",
            })
            .to_string(),
        ),
        None => google_error(400, "INVALID_ARGUMENT", "Decryption failed: the ciphertext is invalid."),
    })
}

/// The OAuth 2.0 token endpoint and the metadata server.
fn identity_answer(state: &State, request: &Recorded) -> Answer {
    let target = split_target(&request.path);
    let (path, query) = match &target {
        Ok((path, query)) => (*path, query),
        Err(problem) => {
            state.violations.note("identity", request, problem);
            return Answer::json(400, r#"{"error":"invalid_request"}"#);
        }
    };
    if path == METADATA_TOKEN_PATH {
        return match metadata_token(state, request, query.is_empty()) {
            Ok(answer) => answer,
            Err(problem) => {
                state.violations.note("metadata server", request, &problem);
                // What the metadata server answers a request without the header.
                Answer { status: 403, headers: vec![("Metadata-Flavor".into(), "Google".into())], body: problem.into() }
            }
        };
    }
    let result = if path == TOKEN_PATH && query.is_empty() {
        token_endpoint(state, request)
    } else {
        Err("no such endpoint".to_string())
    };
    result.unwrap_or_else(|problem| {
        state.violations.note("token endpoint", request, &problem);
        Answer::json(400, &json!({"error": "invalid_grant", "error_description": problem}).to_string())
    })
}

fn token_endpoint(state: &State, request: &Recorded) -> Result<Answer, String> {
    let form = form_body(request)?;
    let mut answer =
        json!({"access_token": "", "expires_in": state.expires_in.load(Ordering::SeqCst), "token_type": "Bearer"});
    match form.get("grant_type").map(String::as_str) {
        Some(JWT_BEARER) => {
            let assertion = form.get("assertion").cloned().unwrap_or_default();
            state.assertions.lock().unwrap().push(assertion.clone());
            ensure_pairs("the JWT bearer form", &form, &[("grant_type", JWT_BEARER), ("assertion", &assertion)])?;
            check_jwt(&assertion, state.token_uri.get().expect("set at start"))?;
        }
        Some("refresh_token") => {
            ensure_pairs(
                "the refresh form",
                &form,
                &[
                    ("grant_type", "refresh_token"),
                    ("client_id", USER_CLIENT_ID),
                    ("client_secret", USER_CLIENT_SECRET),
                    ("refresh_token", REFRESH_TOKEN),
                ],
            )?;
            answer["scope"] = SCOPE.into();
        }
        other => return Err(format!("unsupported grant_type {other:?}")),
    }
    answer["access_token"] = state.tokens.issue().into();
    Ok(Answer::json(200, &answer.to_string()))
}

/// A service account's JWT as Google's token endpoint checks it: RS256 over
/// `base64url(header).base64url(claims)`, no padding anywhere, `kid` the key file's
/// `private_key_id`, the claims exactly iss/scope/aud/iat/exp with a lifetime of an hour.
fn check_jwt(assertion: &str, token_uri: &str) -> Result<(), String> {
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err(format!("the assertion has {} parts, not 3", parts.len()));
    };
    let decode = |what: &str, part: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| format!("the JWT {what} is not base64url without padding: {part:?}"))
    };
    let public_key = base64::engine::general_purpose::STANDARD
        .decode(read_fixture("kms/gcp-service-account.rsapub.b64").trim())
        .expect("gcp-service-account.rsapub.b64 is base64");
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &public_key)
        .verify(format!("{header}.{claims}").as_bytes(), &decode("signature", signature)?)
        .map_err(|_| "Invalid JWT Signature.".to_string())?;
    let json = |what: &str, part: &str| -> Result<Value, String> {
        serde_json::from_slice(&decode(what, part)?).map_err(|_| format!("the JWT {what} is not JSON"))
    };
    let header = json("header", header)?;
    let expected_header = json!({"alg": "RS256", "typ": "JWT", "kid": PRIVATE_KEY_ID});
    ensure(header == expected_header, || format!("the JWT header is {header}, expected {expected_header}"))?;
    let claims = json("claims", claims)?;
    let iat = claims["iat"].as_u64().unwrap_or_default();
    let expected_claims = json!({"iss": CLIENT_EMAIL, "scope": SCOPE, "aud": token_uri, "iat": iat, "exp": iat + 3600});
    ensure(claims == expected_claims, || format!("the JWT claims are {claims}, expected {expected_claims}"))?;
    let now = now_secs();
    ensure(iat.abs_diff(now) <= 300, || format!("iat {iat} is not now ({now})"))
}

/// `GET /computeMetadata/v1/instance/service-accounts/default/token` with `Metadata-Flavor: Google`.
fn metadata_token(state: &State, request: &Recorded, no_query: bool) -> Result<Answer, String> {
    ensure(request.method == "GET", || format!("the metadata token is a GET, not {}", request.method))?;
    ensure(no_query, || "the metadata token request has a query".to_string())?;
    ensure(
        request.header_count("Metadata-Flavor") == 1 && request.header("Metadata-Flavor") == Some("Google"),
        || format!("Missing required header: Metadata-Flavor (got {:?})", request.header("Metadata-Flavor")),
    )?;
    let answer = json!({
        "access_token": state.tokens.issue(),
        "expires_in": state.expires_in.load(Ordering::SeqCst),
        "token_type": "Bearer",
    });
    Ok(Answer::json(200, &answer.to_string()).with_header("Metadata-Flavor", "Google"))
}

/// The KMS call was `POST /v1/<keyId>:decrypt` with `token` and exactly `{"ciphertext": wrappedKey}`.
fn assert_kms_call(call: &Recorded, token: &str, wrapped_key: &str) {
    assert_eq!(call.header("Authorization"), Some(format!("Bearer {token}").as_str()), "{call:?}");
    assert!(call.header("Content-Type").is_some_and(|value| value.starts_with("application/json")), "{call:?}");
    let body: Value = serde_json::from_slice(&call.body).expect("a JSON body");
    assert_eq!(body, json!({"ciphertext": wrapped_key}));
}

fn wait_for_secrets(agent: &Agent, plaintext: &str) {
    let served = wait_until(REFRESH_LIMIT, || agent.get("/v1/secrets").body == plaintext.as_bytes());
    assert!(served, "the agent never served the new secrets\n--- stderr ---\n{}", agent.stderr());
}

#[test]
fn a_service_account_key_signs_a_jwt_the_token_endpoint_verifies_and_its_token_decrypts() {
    let gcp = Gcp::start();
    let deployment = Deployment::new("gcp-service-account", &gcp.artifact(PLAINTEXT, "rev-1"));
    let agent = gcp.start_agent(&deployment, Credentials::ServiceAccount, &[SLOW_POLLING]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);

    let token_requests = gcp.token_requests();
    assert_eq!(token_requests.len(), 1, "{token_requests:?}");
    let form = form_body(&token_requests[0]).expect("a form");
    assert_eq!(form.keys().collect::<Vec<_>>(), ["assertion", "grant_type"]);
    assert_eq!(form["grant_type"], JWT_BEARER);
    // The token endpoint verified the assertion's signature, header and claims (no violation).
    assert_eq!(gcp.state.assertions.lock().unwrap().len(), 1);
    assert!(gcp.metadata_requests().is_empty(), "the key file comes before the metadata server");
    let calls = gcp.kms_calls();
    assert_eq!(calls.len(), 1);
    assert_kms_call(&calls[0], &gcp.token(0), &gcp.wrapped_key);

    // A new revision is a new KMS call with the cached token.
    deployment.publish(&gcp.artifact(PLAINTEXT_ROTATED, "rev-2"));
    agent.signal(libc::SIGHUP);
    wait_for_secrets(&agent, PLAINTEXT_ROTATED);
    let calls = gcp.kms_calls();
    assert_eq!(calls.len(), 2);
    assert_kms_call(&calls[1], &gcp.token(0), &gcp.wrapped_key);
    assert_eq!(gcp.token_requests().len(), 1, "the token is good for an hour");
    gcp.assert_clean(&agent);
}

/// With a `token_uri` in the file. Without one — what `gcloud auth application-default login`
/// writes — the agent goes to https://oauth2.googleapis.com/token, which a loopback test cannot
/// stand in for, so that case is not tested here.
#[test]
fn an_authorized_user_file_trades_its_refresh_token_at_its_token_uri() {
    let gcp = Gcp::start();
    let deployment = Deployment::new("gcp-authorized-user", &gcp.artifact(PLAINTEXT, "rev-1"));
    let agent = gcp.start_agent(&deployment, Credentials::AuthorizedUser, &[SLOW_POLLING]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);

    let token_requests = gcp.token_requests();
    assert_eq!(token_requests.len(), 1, "{token_requests:?}");
    let form = form_body(&token_requests[0]).expect("a form");
    ensure_pairs(
        "the refresh form",
        &form,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", USER_CLIENT_ID),
            ("client_secret", USER_CLIENT_SECRET),
            ("refresh_token", REFRESH_TOKEN),
        ],
    )
    .unwrap();
    assert!(gcp.metadata_requests().is_empty(), "the credentials file comes before the metadata server");
    let calls = gcp.kms_calls();
    assert_eq!(calls.len(), 1);
    assert_kms_call(&calls[0], &gcp.token(0), &gcp.wrapped_key);
    gcp.assert_clean(&agent);
}

#[test]
fn without_a_key_file_the_metadata_server_gives_the_token_to_a_metadata_flavor_google_request() {
    let gcp = Gcp::start();
    let deployment = Deployment::new("gcp-metadata", &gcp.artifact(PLAINTEXT, "rev-1"));
    let agent = gcp.start_agent(&deployment, Credentials::MetadataServer, &[SLOW_POLLING]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);

    let metadata = gcp.metadata_requests();
    assert_eq!(metadata.len(), 1, "{:?}", gcp.identity.requests());
    assert_eq!(metadata[0].header("Metadata-Flavor"), Some("Google"));
    assert!(metadata[0].body.is_empty());
    assert!(gcp.token_requests().is_empty());
    assert_eq!(gcp.identity.requests().len(), 1, "only the token was asked for");
    let calls = gcp.kms_calls();
    assert_eq!(calls.len(), 1);
    assert_kms_call(&calls[0], &gcp.token(0), &gcp.wrapped_key);
    gcp.assert_clean(&agent);
}

#[test]
fn a_token_is_fetched_again_once_it_is_within_60_seconds_of_expiring() {
    let gcp = Gcp::start();
    // Cached until 60 s before it runs out: for one second.
    gcp.state.expires_in.store(61, Ordering::SeqCst);
    let deployment = Deployment::new("gcp-token-expiry", &gcp.artifact(PLAINTEXT, "rev-1"));
    let agent = gcp.start_agent(&deployment, Credentials::ServiceAccount, &[JIT]);
    assert_eq!(gcp.token_requests().len(), 1);

    // Each request is one KMS call; within a few seconds one of them needs a new token.
    let renewed = wait_until(REFRESH_LIMIT, || {
        agent.get("/v1/secrets").assert(200, PLAINTEXT);
        gcp.token_requests().len() >= 2
    });
    assert!(renewed, "the agent kept its expiring token: {} token requests", gcp.token_requests().len());
    let calls = gcp.kms_calls();
    let tokens = gcp.state.tokens.issued();
    assert!(
        tokens.len() <= calls.len(),
        "at most one token per KMS call: {} tokens, {} calls",
        tokens.len(),
        calls.len()
    );
    assert_kms_call(calls.last().unwrap(), tokens.last().unwrap(), &gcp.wrapped_key);
    // Every token came from a freshly signed JWT.
    assert_eq!(gcp.state.assertions.lock().unwrap().len(), tokens.len());
    gcp.assert_clean(&agent);
}

#[test]
fn a_401_from_kms_drops_the_cached_token_and_retries_the_call_with_a_new_one() {
    let gcp = Gcp::start();
    let deployment = Deployment::new("gcp-401", &gcp.artifact(PLAINTEXT, "rev-1"));
    let agent = gcp.start_agent(&deployment, Credentials::ServiceAccount, &[JIT]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    assert_eq!(gcp.kms_calls().len(), 3, "start-up and one call per request");
    assert_eq!(gcp.token_requests().len(), 1, "one cached token for all of them");

    // Google takes the token back: the next KMS call is a 401.
    gcp.state.tokens.revoke_all();
    // The refused call is made once more with a new token: the request never sees the 401.
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    assert_eq!(gcp.token_requests().len(), 2, "one new token after the 401");
    let calls = gcp.kms_calls();
    assert_eq!(calls[3].header("Authorization"), Some(format!("Bearer {}", gcp.token(0)).as_str()));
    assert_kms_call(calls.last().unwrap(), &gcp.token(1), &gcp.wrapped_key);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    assert_eq!(gcp.token_requests().len(), 2, "the new token is cached");
    gcp.assert_clean(&agent);
}

#[test]
fn permission_denied_at_start_up_exits_1_with_kms_unwrap_and_the_permission_hint() {
    let gcp = Gcp::start();
    gcp.state.denied.store(true, Ordering::SeqCst);
    let deployment = Deployment::new("gcp-denied", &gcp.artifact(PLAINTEXT, "rev-1"));
    let agent = gcp.spawn_agent(&deployment, Credentials::ServiceAccount);
    let status = agent.wait_exit(FAILED_START_LIMIT).expect("the agent gives up");
    assert_eq!(status.code(), Some(1), "stderr: {}", agent.stderr());
    let stderr = agent.stderr();
    let fatal = stderr.lines().find(|line| line.starts_with("[clef-agent] fatal: ")).unwrap_or_default();
    assert!(fatal.contains("Failed to fetch artifact from") && fatal.contains("after 3 attempts"), "{stderr}");
    assert!(fatal.contains("artifact rejected (kms_unwrap): KMS could not unwrap the data key: "), "{stderr}");
    assert!(
        fatal.contains("PERMISSION_DENIED") || fatal.contains("cloudkms.cryptoKeyVersions.useToDecrypt"),
        "{stderr}"
    );
    assert!(fatal.contains("cloudkms.cryptoKeyVersions.useToDecrypt"), "the hint is about KMS permission: {stderr}");
    assert_eq!(gcp.kms_calls().len(), 3, "one KMS call per attempt");
    assert_eq!(gcp.token_requests().len(), 1, "the token is cached across attempts");
    gcp.assert_clean(&agent);
}

#[test]
fn jit_mode_answers_503_while_kms_access_is_revoked_and_recovers_without_a_restart() {
    let gcp = Gcp::start();
    let deployment = Deployment::new("gcp-jit-revoke", &gcp.artifact(PLAINTEXT, "rev-1"));
    let agent = gcp.start_agent(&deployment, Credentials::MetadataServer, &[JIT]);
    let pid = agent.pid();
    assert_eq!(gcp.kms_calls().len(), 1, "start-up decrypts once");
    for calls in 2..=4 {
        agent.get("/v1/secrets").assert(200, PLAINTEXT);
        assert_eq!(gcp.kms_calls().len(), calls, "one KMS call per request");
    }

    gcp.state.denied.store(true, Ordering::SeqCst);
    for calls in 5..=6 {
        let response = agent.get("/v1/secrets");
        assert_eq!(response.status, 503, "{}", String::from_utf8_lossy(&response.body));
        let body = response.json();
        assert_eq!(body["error"], "Decryption failed", "{body}");
        let detail = body["detail"].as_str().expect("a detail");
        assert!(detail.to_lowercase().contains("denied"), "the detail names the refusal: {detail}");
        assert_eq!(gcp.kms_calls().len(), calls, "one KMS call per request");
    }

    gcp.state.denied.store(false, Ordering::SeqCst);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    assert_eq!(gcp.kms_calls().len(), 7);
    assert_eq!(agent.pid(), pid);
    assert_eq!(gcp.metadata_requests().len(), 1, "a 403 is no reason for a new token");
    gcp.assert_clean(&agent);
}

#[test]
fn a_request_in_flight_at_sigterm_is_answered_before_the_agent_exits() {
    let gcp = Gcp::start();
    let deployment = Deployment::new("gcp-jit-in-flight", &gcp.artifact(PLAINTEXT, "rev-1"));
    let agent = gcp.start_agent(&deployment, Credentials::MetadataServer, &[JIT]);
    gcp.hold(true);
    std::thread::scope(|scope| {
        let in_flight = scope.spawn(|| agent.get("/v1/secrets"));
        assert!(
            gcp.kms.wait_for_requests("POST", &decrypt_path(), 2, REFRESH_LIMIT),
            "the request never reached Cloud KMS"
        );
        agent.signal(libc::SIGTERM);
        // SPEC §7: in-flight requests get up to 3 s; the agent must not exit under this one.
        assert!(agent.wait_exit(Duration::from_millis(500)).is_none(), "the agent exited with a request in flight");
        gcp.hold(false);
        in_flight.join().expect("the client thread panicked").assert(200, PLAINTEXT);
    });
    let status = agent.wait_exit(REFRESH_LIMIT).expect("the agent did not exit after the request");
    assert_eq!(status.code(), Some(0), "{}", agent.stderr());
}

#[test]
fn a_data_key_wrapped_under_another_kms_key_is_refused_by_kms_and_the_last_secrets_stay() {
    let gcp = Gcp::start();
    let deployment = Deployment::new("gcp-other-kek", &gcp.artifact(PLAINTEXT, "rev-1"));
    let agent = gcp.start_agent(&deployment, Credentials::MetadataServer, &[SLOW_POLLING]);
    let foreign = Kek::new().wrap_to_base64(&gcp.data_key);
    deployment.publish(&build_envelope_artifact(
        PLAINTEXT_ROTATED,
        "rev-2",
        &gcp.data_key,
        &gcp.kms_envelope(&foreign),
    ));
    agent.signal(libc::SIGHUP);
    let line = wait_for_poll_error(&agent, "artifact rejected (kms_unwrap): KMS could not unwrap the data key: ");
    assert!(line.contains("INVALID_ARGUMENT") || line.contains("ciphertext is invalid"), "{line}");
    assert_eq!(gcp.kms_calls().len(), 2);
    assert_kms_call(&gcp.kms_calls()[1], &gcp.token(0), &foreign);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    gcp.assert_clean(&agent);
}

/// The GCP envelope artifact `artifact` with `change` made to it and its `ciphertextHash`
/// recomputed, so that only the change is wrong.
fn tampered(artifact: &str, change: impl FnOnce(&mut Value)) -> String {
    let mut value: Value = serde_json::from_str(artifact).expect("an artifact is JSON");
    change(&mut value);
    let hash = sha256_hex(value["ciphertext"].as_str().expect("a ciphertext").as_bytes());
    value["ciphertextHash"] = hash.into();
    serde_json::to_string_pretty(&value).unwrap()
}

fn decoded(value: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(value.as_str().expect("a string")).expect("base64")
}

/// A good rev-1 served, then rev-2 with `change` published and SIGHUP: the refresh fails with a
/// poll error line holding `needle`, which is returned, and rev-1 is still served.
fn a_refresh_refuses(test: &str, change: impl FnOnce(&mut Value), needle: &str) -> (Gcp, Deployment, Agent, String) {
    let gcp = Gcp::start();
    let deployment = Deployment::new(test, &gcp.artifact(PLAINTEXT, "rev-1"));
    let agent = gcp.start_agent(&deployment, Credentials::MetadataServer, &[SLOW_POLLING]);
    deployment.publish(&tampered(&gcp.artifact(PLAINTEXT_ROTATED, "rev-2"), change));
    agent.signal(libc::SIGHUP);
    let line = wait_for_poll_error(&agent, needle);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    gcp.assert_clean(&agent);
    (gcp, deployment, agent, line)
}

#[test]
fn a_wrong_auth_tag_is_a_decrypt_rejection_after_the_kms_unwrap() {
    let (gcp, _deployment, _agent, _line) = a_refresh_refuses(
        "gcp-wrong-tag",
        |artifact| {
            let mut tag = decoded(&artifact["envelope"]["authTag"]);
            tag[0] ^= 0x01;
            artifact["envelope"]["authTag"] = standard(&tag).into();
        },
        "artifact rejected (decrypt): decryption failed",
    );
    assert_eq!(gcp.kms_calls().len(), 2, "the data key was unwrapped before the tag was checked");
}

#[test]
fn a_truncated_ciphertext_is_a_decrypt_rejection() {
    let (gcp, _deployment, _agent, _line) = a_refresh_refuses(
        "gcp-truncated",
        |artifact| {
            let ciphertext = decoded(&artifact["ciphertext"]);
            artifact["ciphertext"] = standard(&ciphertext[..ciphertext.len() - 7]).into();
        },
        "artifact rejected (decrypt): decryption failed",
    );
    assert_eq!(gcp.kms_calls().len(), 2);
}

#[test]
fn an_unknown_provider_is_refused_by_name_without_a_kms_call() {
    let (gcp, _deployment, _agent, line) =
        a_refresh_refuses("gcp-vault9", |artifact| artifact["envelope"]["provider"] = "vault9".into(), "vault9");
    assert!(line.contains("artifact rejected ("), "{line}");
    assert_eq!(gcp.kms_calls().len(), 1, "only start-up called KMS");
}

#[test]
fn a_16_byte_iv_is_refused_with_a_clear_error() {
    let (gcp, _deployment, _agent, line) = a_refresh_refuses(
        "gcp-iv-length",
        |artifact| artifact["envelope"]["iv"] = standard(&random_bytes::<16>()).into(),
        "poll error: artifact rejected (",
    );
    let names_the_iv = ["envelope.iv", "'iv'", "IV", "nonce"].iter().any(|name| line.contains(name));
    assert!(names_the_iv && line.contains("12"), "the error names the IV and its required 12 bytes: {line}");
    assert_eq!(gcp.kms_calls().len(), 1, "a malformed envelope is refused before a KMS call");
}

#[test]
fn an_envelope_without_auth_tag_is_incomplete() {
    let (gcp, _deployment, _agent, _line) = a_refresh_refuses(
        "gcp-incomplete",
        |artifact| {
            artifact["envelope"].as_object_mut().unwrap().remove("authTag");
        },
        "artifact rejected (incomplete_envelope): incomplete envelope: 'envelope.authTag'",
    );
    assert_eq!(gcp.kms_calls().len(), 1, "an incomplete envelope never reaches KMS");
}

#[test]
fn the_kms_really_unwraps() {
    // The loopback KMS is only a test if it can refuse: another key's wrapping does not open.
    let (kek, data_key) = (Kek::new(), data_key());
    let wrapped = kek.wrap(&data_key);
    assert_eq!(kek.unwrap(&wrapped).as_deref(), Some(data_key.as_slice()));
    assert_eq!(Kek::new().unwrap(&wrapped), None);
    let mut flipped = wrapped.clone();
    flipped[20] ^= 0x80;
    assert_eq!(kek.unwrap(&flipped), None);
    assert_ne!(base64url(&data_key), standard(&data_key), "the data key tells the alphabets apart");
}

#[test]
fn the_token_endpoint_really_verifies_the_jwt() {
    // The verifier is only a test if it can refuse: sign with the fixture key as Google's client
    // libraries do, then change one thing at a time.
    let pem = read_fixture("kms/gcp-service-account.pem");
    let body: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
    let key = ring::signature::RsaKeyPair::from_pkcs8(&der).expect("a PKCS#8 RSA key");
    let sign = |header: &Value, claims: &Value| {
        let input =
            format!("{}.{}", base64url(header.to_string().as_bytes()), base64url(claims.to_string().as_bytes()));
        let mut signature = vec![0u8; key.public().modulus_len()];
        let rng = ring::rand::SystemRandom::new();
        key.sign(&ring::signature::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut signature).unwrap();
        format!("{input}.{}", base64url(&signature))
    };
    let uri = "http://127.0.0.1:1/token";
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": PRIVATE_KEY_ID});
    let now = now_secs();
    let claims = json!({"iss": CLIENT_EMAIL, "scope": SCOPE, "aud": uri, "iat": now, "exp": now + 3600});
    assert_eq!(check_jwt(&sign(&header, &claims), uri), Ok(()));

    let good = sign(&header, &claims);
    let (signed, _) = good.rsplit_once('.').unwrap();
    let other_claims = base64url(json!({"iss": "mallory@example.com"}).to_string().as_bytes());
    let forged = format!("{}.{other_claims}.{}", signed.split('.').next().unwrap(), good.rsplit('.').next().unwrap());
    assert_eq!(check_jwt(&forged, uri), Err("Invalid JWT Signature.".to_string()));
    assert!(check_jwt(&format!("{good}="), uri).is_err(), "padding is refused");
    assert!(check_jwt(&good, "http://127.0.0.1:2/token").is_err(), "aud must be the token_uri");
    let mut stale = claims.clone();
    stale["iat"] = (now - 7200).into();
    stale["exp"] = (now - 3600).into();
    assert!(check_jwt(&sign(&header, &stale), uri).is_err(), "iat must be now");
    let mut long = claims.clone();
    long["exp"] = (now + 7200).into();
    assert!(check_jwt(&sign(&header, &long), uri).is_err(), "an hour at most");
    assert!(check_jwt(&sign(&json!({"alg": "RS256", "typ": "JWT"}), &claims), uri).is_err(), "kid is required");
}

const GCP_ACCEPTED: &str = "a Cloud KMS key name for provider gcp, \
    projects/<project>/locations/<location>/keyRings/<ring>/cryptoKeys/<key>[/cryptoKeyVersions/<version>]";

/// `envelope.keyId` becomes the path of the Cloud KMS call that carries the access token, and
/// the artifact is not trusted: a name with `..` segments or extra segments fails start-up at
/// once, before the token is even asked for.
#[test]
fn a_key_name_with_dot_dot_or_extra_segments_is_refused_before_any_request() {
    let gcp = Gcp::start();
    let why = "not a key name of that shape with names of letters, digits, '-', '_', '.', ':'";
    let cases = [
        format!("{KEY_ID}/../../../../../../../../other/resource"),
        "projects/clef-it/locations/global/keyRings/../cryptoKeys/artifacts".to_string(),
        format!("{KEY_ID}/cryptoKeyVersions/1/extra"),
        format!("{KEY_ID}?alt=media"),
    ];
    for (index, key_id) in cases.iter().enumerate() {
        let kms = EnvelopeKms { key_id: key_id.clone(), ..gcp.kms_envelope(&gcp.wrapped_key) };
        let artifact = build_envelope_artifact(PLAINTEXT, "rev-1", &gcp.data_key, &kms);
        let deployment = Deployment::new(&format!("gcp-hostile-key-name-{index}"), &artifact);
        let agent = gcp.spawn_agent(&deployment, Credentials::ServiceAccount);
        super::loopback_kms::assert_key_id_refused_at_once(
            &agent,
            &deployment.artifact,
            GCP_ACCEPTED,
            &format!("'{key_id}' ({why})"),
        );
        assert_eq!(gcp.kms.requests().len(), 0, "{key_id}: Cloud KMS was called");
        assert_eq!(gcp.identity.requests().len(), 0, "{key_id}: a token was asked for");
    }
}

/// The metadata server answers tokens over plain http: a proxy in between would see them. The
/// address here is the loopback one written as an IPv4-mapped IPv6 literal, which is no
/// loopback name the agent knows: only its rule "metadata endpoints are reached directly" keeps
/// the request away from the proxy every other host goes through.
#[test]
fn the_metadata_server_is_reached_directly_even_with_a_proxy_configured() {
    let gcp = Gcp::start();
    let proxy = crate::support::loopback::ConnectionRecorder::start();
    let deployment = Deployment::new("gcp-metadata-no-proxy", &gcp.artifact(PLAINTEXT, "rev-1"));
    let metadata_host = format!("[::ffff:127.0.0.1]:{}", gcp.identity.port);
    let mut extra: Vec<(&str, String)> = proxy.proxy_env();
    extra.extend([("GCE_METADATA_HOST", metadata_host), (SLOW_POLLING.0, SLOW_POLLING.1.to_string())]);
    let extra: Vec<(&str, &str)> = extra.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let agent = gcp.start_agent(&deployment, Credentials::MetadataServer, &extra);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);

    assert_eq!(gcp.metadata_requests().len(), 1, "{:?}", gcp.identity.requests());
    assert_eq!(proxy.connections(), Vec::<String>::new(), "the proxy saw a request");
    gcp.assert_clean(&agent);
}
