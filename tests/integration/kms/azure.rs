//! Azure Key Vault envelopes end to end. Two loopback servers play Azure: Key Vault
//! (`POST <keyId>/unwrapkey?api-version=7.4`, really unwrapping with RSA-OAEP or RSA-OAEP-256
//! under `tests/fixtures/kms/azure-key-vault.pem`, base64url without padding both ways) and the
//! identity side — Microsoft Entra ID's v2.0 token endpoint (client secret and workload identity
//! federation), the App Service identity endpoint and IMDS. Each request is checked against
//! Microsoft's documented shape; answers and errors have Microsoft's shapes.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{json, Value};

use super::loopback_kms::{
    assert_key_id_refused_at_once, assert_nothing_leaked, assert_one_line_per_entry, base64url, bearer, data_key,
    data_key_encodings, ensure, ensure_pairs, form_body, json_body, now_secs, only_fields, split_target, standard,
    wait_for_poll_error, TokenCheck, Tokens, Violations, FAILED_START_LIMIT, JIT, NO_AGE_KEY, REFRESH_LIMIT,
    SLOW_POLLING,
};
use crate::support::loopback::{Answer, Recorded, Server};
use crate::support::{
    build_envelope_artifact, fixture, wait_until, Agent, Deployment, EnvelopeKms, PLAINTEXT, PLAINTEXT_ROTATED,
};

const TENANT: &str = "4d3c2b1a-0f9e-4d8c-9b7a-6f5e4d3c2b1a";
const CLIENT_ID: &str = "0c3e5f7a-1b2d-4c6e-8f0a-9b1c2d3e4f5a";
/// Distinctive credentials, shaped like the real ones, so that a leak into a log line shows.
const CLIENT_SECRET: &str = "Qm8~clefItAzureSecret.K7vR2pX9wL4_nT6yB1";
const FEDERATED_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImNsZWYtaXQifQ.\
    eyJpc3MiOiJodHRwczovL29pZGMuY2xlZi1pdCIsInN1YiI6InN5c3RlbTpzZXJ2aWNlYWNjb3VudDpjbGVmOmFnZW50In0.\
    clef-it-federated-signature-9Xk2";
const IDENTITY_HEADER: &str = "clef-it-identity-header-3f9a71c2-8e4d";
const RESOURCE: &str = "https://vault.azure.net";
const SCOPE: &str = "https://vault.azure.net/.default";
const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// A real-looking key id: the agent reaches the loopback vault through
/// `CLEF_AGENT_AZURE_KEYVAULT_ENDPOINT`, as it would a private endpoint.
const KEY_ID: &str = "https://clef-it.vault.azure.net/keys/clef/v1";
const UNWRAP_PATH: &str = "/keys/clef/v1/unwrapkey";
const APP_SERVICE_PATH: &str = "/msi/token";
const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
/// What Key Vault answers a caller without the unwrap permission (RBAC).
const FORBIDDEN_MESSAGE: &str = "Caller is not authorized to perform action on resource.\r\n\
    If role assignments, deny assignments or role definitions were changed recently, \
    please observe propagation time.\r\n\
    Caller: appid=0c3e5f7a-1b2d-4c6e-8f0a-9b1c2d3e4f5a\r\n\
    Action: 'Microsoft.KeyVault/vaults/keys/unwrap/action'";

fn token_path() -> String {
    format!("/{TENANT}/oauth2/v2.0/token")
}

/// Key Vault's error body: `{"error":{"code","message"}}`.
fn vault_error(status: u16, code: &str, message: &str) -> Answer {
    Answer::json(status, &json!({"error": {"code": code, "message": message}}).to_string())
}

/// Microsoft Entra ID's error body, with the `\r\n`-separated trace lines its
/// `error_description` carries.
fn entra_error(status: u16, error: &str, code: u32, description: &str) -> Answer {
    let trace = "Trace ID: 0000aaaa-11bb-cccc-dd22-eeeeee333333\r\n\
        Correlation ID: aaaa0000-bb11-2222-33cc-444444dddddd\r\nTimestamp: 2026-11-24 12:00:00Z";
    let answer = json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {description}\r\n{trace}"),
        "error_codes": [code],
        "timestamp": "2026-11-24 12:00:00Z",
        "trace_id": "0000aaaa-11bb-cccc-dd22-eeeeee333333",
        "correlation_id": "aaaa0000-bb11-2222-33cc-444444dddddd",
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    Answer::json(status, &answer.to_string())
}

/// RSA-OAEP (`RSA-OAEP`: SHA-1, `RSA-OAEP-256`: SHA-256 for the hash and MGF1) with the vault's
/// key, by `openssl pkeyutl`: `operation` is `-encrypt` or `-decrypt`.
fn rsa_oaep(operation: &str, algorithm: &str, input: &[u8]) -> Result<Vec<u8>, String> {
    let digest = match algorithm {
        "RSA-OAEP-256" => "sha256",
        "RSA-OAEP" => "sha1",
        other => return Err(format!("The algorithm '{other}' is not supported by this key.")),
    };
    let mut child = Command::new("openssl")
        .args(["pkeyutl", operation, "-inkey"])
        .arg(fixture("kms/azure-key-vault.pem"))
        .args(["-pkeyopt", "rsa_padding_mode:oaep"])
        .args(["-pkeyopt", &format!("rsa_oaep_md:{digest}"), "-pkeyopt", &format!("rsa_mgf1_md:{digest}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot run openssl (needed by the Key Vault stand-in): {error}"))?;
    // At most 256 bytes: they fit in the pipe before openssl reads them.
    child.stdin.take().expect("piped stdin").write_all(input).map_err(|error| error.to_string())?;
    let output = child.wait_with_output().map_err(|error| error.to_string())?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(format!("openssl pkeyutl {operation} failed: {}", String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// `data_key` wrapped with `algorithm`, as standard base64 with a `+` and a `/` in it, so that
/// an agent that forwarded it without turning it into base64url would be caught.
fn wrap(algorithm: &str, data_key: &[u8; 32]) -> String {
    loop {
        let wrapped = standard(&rsa_oaep("-encrypt", algorithm, data_key).expect("openssl wraps the data key"));
        if wrapped.contains('+') && wrapped.contains('/') {
            return wrapped;
        }
    }
}

/// What the Azure side knows and can be told to do.
struct State {
    tokens: Tokens,
    violations: Violations,
    /// Key Vault answers 403 Forbidden.
    forbidden: AtomicBool,
}

/// How the agent gets its token.
#[derive(Clone, Copy)]
enum Credentials {
    /// `AZURE_CLIENT_ID` + `AZURE_TENANT_ID` + `AZURE_CLIENT_SECRET`.
    ClientSecret,
    /// `AZURE_FEDERATED_TOKEN_FILE` + `AZURE_CLIENT_ID` + `AZURE_TENANT_ID`, as the AKS workload
    /// identity webhook injects them (`AZURE_AUTHORITY_HOST` with its trailing slash).
    WorkloadIdentity,
    /// `IDENTITY_ENDPOINT` + `IDENTITY_HEADER`.
    AppService,
    /// Nothing of the above: IMDS, for a user-assigned identity when `AZURE_CLIENT_ID` is set.
    Imds { user_assigned: bool },
}

/// Key Vault and the identity endpoints on loopback, with one data key the vault can unwrap.
struct Azure {
    vault: Server,
    identity: Server,
    state: Arc<State>,
    data_key: [u8; 32],
}

impl Azure {
    fn start() -> Azure {
        let state = Arc::new(State {
            tokens: Tokens::new("eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.clef-it-azure-access-token-"),
            violations: Violations::default(),
            forbidden: AtomicBool::new(false),
        });
        let vault = {
            let state = Arc::clone(&state);
            Server::start(move |request| vault_answer(&state, request))
        };
        let identity = {
            let state = Arc::clone(&state);
            Server::start(move |request| identity_answer(&state, request))
        };
        Azure { vault, identity, state, data_key: data_key() }
    }

    fn kms(&self, algorithm: &str, wrapped_key: &str) -> EnvelopeKms {
        EnvelopeKms {
            provider: "azure".into(),
            key_id: KEY_ID.into(),
            wrapped_key: wrapped_key.into(),
            algorithm: algorithm.into(),
        }
    }

    /// An envelope artifact whose data key is wrapped with `algorithm` and standard base64 (as
    /// `wrappedKey` always is); also returns that `wrappedKey`.
    fn artifact_with(&self, algorithm: &str, plaintext: &str, revision: &str) -> (String, String) {
        let wrapped_key = wrap(algorithm, &self.data_key);
        let artifact = build_envelope_artifact(plaintext, revision, &self.data_key, &self.kms(algorithm, &wrapped_key));
        (artifact, wrapped_key)
    }

    fn artifact(&self, plaintext: &str, revision: &str) -> (String, String) {
        self.artifact_with("RSA-OAEP-256", plaintext, revision)
    }

    /// The agent's environment: no age key, IMDS always reachable (so that using it when other
    /// credentials apply would show), and the credentials.
    fn env(&self, deployment: &Deployment, credentials: Credentials) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            (NO_AGE_KEY.0.into(), NO_AGE_KEY.1.into()),
            ("CLEF_AGENT_AZURE_IMDS_ENDPOINT".into(), self.identity.url("")),
            ("CLEF_AGENT_AZURE_KEYVAULT_ENDPOINT".into(), self.vault.url("")),
        ];
        let mut add = |name: &str, value: String| env.push((name.into(), value));
        match credentials {
            Credentials::ClientSecret => {
                add("AZURE_CLIENT_ID", CLIENT_ID.into());
                add("AZURE_TENANT_ID", TENANT.into());
                add("AZURE_CLIENT_SECRET", CLIENT_SECRET.into());
                add("AZURE_AUTHORITY_HOST", self.identity.url(""));
            }
            Credentials::WorkloadIdentity => {
                let file = deployment.dir.join("azure-identity-token");
                // A projected service-account token file ends with a newline.
                std::fs::write(&file, format!("{FEDERATED_TOKEN}\n")).expect("cannot write the token file");
                add("AZURE_CLIENT_ID", CLIENT_ID.into());
                add("AZURE_TENANT_ID", TENANT.into());
                add("AZURE_FEDERATED_TOKEN_FILE", file.display().to_string());
                add("AZURE_AUTHORITY_HOST", self.identity.url("/"));
            }
            Credentials::AppService => {
                add("IDENTITY_ENDPOINT", self.identity.url(APP_SERVICE_PATH));
                add("IDENTITY_HEADER", IDENTITY_HEADER.into());
            }
            Credentials::Imds { user_assigned } => {
                if user_assigned {
                    add("AZURE_CLIENT_ID", CLIENT_ID.into());
                }
            }
        }
        env
    }

    fn start_agent(&self, deployment: &Deployment, credentials: Credentials, extra: &[(&str, &str)]) -> Agent {
        let env = self.env(deployment, credentials);
        let mut all: Vec<(&str, &str)> = env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        all.extend_from_slice(extra);
        deployment.start(&all)
    }

    fn spawn_agent(&self, deployment: &Deployment, credentials: Credentials, extra: &[(&str, &str)]) -> Agent {
        let env = self.env(deployment, credentials);
        let mut all: Vec<(&str, &str)> = env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        all.extend_from_slice(extra);
        deployment.spawn(&all)
    }

    fn unwrap_calls(&self) -> Vec<Recorded> {
        self.vault.requests_to("POST", &format!("{UNWRAP_PATH}?api-version=7.4"))
    }

    fn token(&self, index: usize) -> String {
        self.state.tokens.nth(index)
    }

    /// The servers saw nothing undocumented and the agent's output holds nothing secret.
    fn assert_clean(&self, agent: &Agent) {
        self.state.violations.assert_none();
        assert_one_line_per_entry(agent);
        let mut secrets = self.state.tokens.issued();
        secrets.extend([CLIENT_SECRET, FEDERATED_TOKEN, IDENTITY_HEADER].map(String::from));
        secrets.extend(data_key_encodings(&self.data_key));
        assert_nothing_leaked(agent, &secrets);
    }
}

/// Key Vault `unwrapkey`: authentication, then permission, then the body.
fn vault_answer(state: &State, request: &Recorded) -> Answer {
    match unwrap_key(state, request) {
        Ok(answer) => answer,
        Err(problem) => {
            state.violations.note("Key Vault", request, &problem);
            vault_error(400, "BadParameter", &problem)
        }
    }
}

fn unwrap_key(state: &State, request: &Recorded) -> Result<Answer, String> {
    let (path, query) = split_target(&request.path)?;
    ensure(request.method == "POST" && path == UNWRAP_PATH, || format!("expected POST {UNWRAP_PATH}"))?;
    ensure_pairs("the query", &query, &[("api-version", "7.4")])?;
    let challenge =
        format!(r#"Bearer authorization="https://login.microsoftonline.com/{TENANT}", resource="{RESOURCE}""#);
    match state.tokens.check(bearer(request)) {
        TokenCheck::Current => {}
        TokenCheck::Stale => {
            let answer = vault_error(401, "Unauthorized", "[TokenExpired] Error validating token: 'S2S12086'.");
            return Ok(answer.with_header("WWW-Authenticate", &challenge));
        }
        TokenCheck::Unknown => {
            let authorization = request.header("Authorization").unwrap_or("(none)");
            return Err(format!("Authorization is {authorization:?}, not one Bearer token the identity side issued"));
        }
    }
    if state.forbidden.load(Ordering::SeqCst) {
        let answer = json!({
            "error": {"code": "Forbidden", "message": FORBIDDEN_MESSAGE, "innererror": {"code": "ForbiddenByRbac"}},
        });
        return Ok(Answer::json(403, &answer.to_string()));
    }
    let body = json_body(request)?;
    let fields = only_fields(&body, &["alg", "value"])?;
    let (algorithm, value) = (fields[0], fields[1]);
    let wrapped = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| format!("'value' is not base64url without padding: {value:?}"))?;
    Ok(match rsa_oaep("-decrypt", algorithm, &wrapped) {
        Ok(data_key) => Answer::json(200, &json!({"kid": KEY_ID, "value": base64url(&data_key)}).to_string()),
        Err(_) => vault_error(400, "BadParameter", "Decryption failed: the ciphertext or the algorithm is wrong."),
    })
}

/// Entra ID's token endpoint, the App Service identity endpoint and IMDS.
fn identity_answer(state: &State, request: &Recorded) -> Answer {
    let result = split_target(&request.path).and_then(|(path, query)| match path {
        path if path == token_path() => entra_token(state, request, query.is_empty()),
        APP_SERVICE_PATH => app_service_token(state, request, &query),
        IMDS_PATH => imds_token(state, request, &query),
        _ => Err("no such endpoint".to_string()),
    });
    result.unwrap_or_else(|problem| {
        state.violations.note("identity", request, &problem);
        entra_error(400, "invalid_request", 900_144, &problem)
    })
}

fn entra_token(state: &State, request: &Recorded, no_query: bool) -> Result<Answer, String> {
    ensure(no_query, || "the token request has a query".to_string())?;
    let form = form_body(request)?;
    if form.contains_key("client_assertion") {
        ensure_pairs(
            "the workload identity form",
            &form,
            &[
                ("client_id", CLIENT_ID),
                ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                ("client_assertion", FEDERATED_TOKEN),
                ("grant_type", "client_credentials"),
                ("scope", SCOPE),
            ],
        )?;
    } else {
        let names: Vec<&str> = form.keys().map(String::as_str).collect();
        let expected = ["client_id", "client_secret", "grant_type", "scope"];
        ensure(names == expected, || format!("the client secret form has {names:?}, expected {expected:?}"))?;
        if form["client_secret"] != CLIENT_SECRET {
            let description = format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret \
                 value, not the client secret ID, for a secret added to app '{CLIENT_ID}'."
            );
            return Ok(entra_error(401, "invalid_client", 7_000_215, &description));
        }
        ensure_pairs(
            "the client secret form",
            &form,
            &[
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
                ("grant_type", "client_credentials"),
                ("scope", SCOPE),
            ],
        )?;
    }
    let answer = json!({
        "token_type": "Bearer",
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": state.tokens.issue(),
    });
    Ok(Answer::json(200, &answer.to_string()))
}

fn app_service_token(
    state: &State,
    request: &Recorded,
    query: &std::collections::BTreeMap<String, String>,
) -> Result<Answer, String> {
    ensure(request.method == "GET", || format!("the App Service token is a GET, not {}", request.method))?;
    ensure_pairs("the query", query, &[("resource", RESOURCE), ("api-version", "2019-08-01")])?;
    ensure(
        request.header_count("X-IDENTITY-HEADER") == 1 && request.header("X-IDENTITY-HEADER") == Some(IDENTITY_HEADER),
        || format!("X-IDENTITY-HEADER is {:?}", request.header("X-IDENTITY-HEADER")),
    )?;
    let answer = json!({
        "access_token": state.tokens.issue(),
        "expires_on": (now_secs() + 86_399).to_string(),
        "resource": RESOURCE,
        "token_type": "Bearer",
        "client_id": CLIENT_ID,
    });
    Ok(Answer::json(200, &answer.to_string()))
}

fn imds_token(
    state: &State,
    request: &Recorded,
    query: &std::collections::BTreeMap<String, String>,
) -> Result<Answer, String> {
    ensure(request.method == "GET", || format!("the IMDS token is a GET, not {}", request.method))?;
    let mut expected = vec![("api-version", "2018-02-01"), ("resource", RESOURCE)];
    if query.contains_key("client_id") {
        expected.push(("client_id", CLIENT_ID));
    }
    ensure_pairs("the query", query, &expected)?;
    ensure(request.header_count("Metadata") == 1 && request.header("Metadata") == Some("true"), || {
        "Required metadata header not specified".to_string()
    })?;
    let now = now_secs();
    let answer = json!({
        "access_token": state.tokens.issue(),
        "refresh_token": "",
        "expires_in": "86399",
        "expires_on": (now + 86_399).to_string(),
        "ext_expires_in": "86399",
        "not_before": now.to_string(),
        "resource": RESOURCE,
        "token_type": "Bearer",
        "client_id": CLIENT_ID,
    });
    Ok(Answer::json(200, &answer.to_string()))
}

/// The unwrap call carried `token` and exactly `{"alg": algorithm, "value": base64url(wrapped)}`.
fn assert_unwrap_call(call: &Recorded, token: &str, algorithm: &str, wrapped_key: &str) {
    assert_eq!(call.header("Authorization"), Some(format!("Bearer {token}").as_str()), "{call:?}");
    assert!(call.header("Content-Type").is_some_and(|value| value.starts_with("application/json")), "{call:?}");
    let wrapped = base64::engine::general_purpose::STANDARD.decode(wrapped_key).unwrap();
    let body: Value = serde_json::from_slice(&call.body).expect("a JSON body");
    assert_eq!(body, json!({"alg": algorithm, "value": base64url(&wrapped)}));
}

fn wait_for_secrets(agent: &Agent, plaintext: &str) {
    let served = wait_until(REFRESH_LIMIT, || agent.get("/v1/secrets").body == plaintext.as_bytes());
    assert!(served, "the agent never served the new secrets\n--- stderr ---\n{}", agent.stderr());
}

#[test]
fn a_client_secret_token_unwraps_in_base64url_and_is_cached_across_refreshes() {
    let azure = Azure::start();
    let (artifact, wrapped_key) = azure.artifact(PLAINTEXT, "rev-1");
    let deployment = Deployment::new("azure-client-secret", &artifact);
    let agent = azure.start_agent(&deployment, Credentials::ClientSecret, &[SLOW_POLLING]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);

    let identity = azure.identity.requests();
    assert_eq!(identity.len(), 1, "one token request, nothing else: {identity:?}");
    assert_eq!((identity[0].method.as_str(), identity[0].path.as_str()), ("POST", token_path().as_str()));
    let form = form_body(&identity[0]).unwrap();
    assert_eq!(form["client_secret"], CLIENT_SECRET);
    assert_eq!(form["scope"], SCOPE);
    let calls = azure.unwrap_calls();
    assert_eq!(calls.len(), 1, "{:?}", azure.vault.requests());
    assert_unwrap_call(&calls[0], &azure.token(0), "RSA-OAEP-256", &wrapped_key);

    // Two refreshes of a changed artifact: two more unwraps, no new token.
    let (rotated, rotated_key) = azure.artifact(PLAINTEXT_ROTATED, "rev-2");
    deployment.publish(&rotated);
    agent.signal(libc::SIGHUP);
    wait_for_secrets(&agent, PLAINTEXT_ROTATED);
    let (third, third_key) = azure.artifact(PLAINTEXT, "rev-3");
    deployment.publish(&third);
    agent.signal(libc::SIGHUP);
    wait_for_secrets(&agent, PLAINTEXT);
    let calls = azure.unwrap_calls();
    assert_eq!(calls.len(), 3);
    assert_unwrap_call(&calls[1], &azure.token(0), "RSA-OAEP-256", &rotated_key);
    assert_unwrap_call(&calls[2], &azure.token(0), "RSA-OAEP-256", &third_key);
    assert_eq!(azure.identity.requests().len(), 1, "the token is cached");
    azure.assert_clean(&agent);
}

/// `AZURE_AUTHORITY_HOST` is given as the AKS webhook gives it, `https://login.microsoftonline.com/`
/// with a trailing slash: the token URL must still be `<host>/<tenant>/oauth2/v2.0/token`.
#[test]
fn workload_identity_sends_the_trimmed_federated_token_as_client_assertion() {
    let azure = Azure::start();
    let (artifact, wrapped_key) = azure.artifact(PLAINTEXT, "rev-1");
    let deployment = Deployment::new("azure-workload-identity", &artifact);
    let agent = azure.start_agent(&deployment, Credentials::WorkloadIdentity, &[SLOW_POLLING]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);

    let identity = azure.identity.requests();
    assert_eq!(identity.len(), 1, "{identity:?}");
    assert_eq!(identity[0].path, token_path());
    let form = form_body(&identity[0]).unwrap();
    assert_eq!(form["client_assertion"], FEDERATED_TOKEN, "the file's content without its newline");
    assert_eq!(form["client_assertion_type"], CLIENT_ASSERTION_TYPE);
    assert!(!form.contains_key("client_secret"));
    let calls = azure.unwrap_calls();
    assert_eq!(calls.len(), 1);
    assert_unwrap_call(&calls[0], &azure.token(0), "RSA-OAEP-256", &wrapped_key);
    azure.assert_clean(&agent);
}

#[test]
fn app_service_asks_the_identity_endpoint_with_x_identity_header() {
    let azure = Azure::start();
    let (artifact, wrapped_key) = azure.artifact(PLAINTEXT, "rev-1");
    let deployment = Deployment::new("azure-app-service", &artifact);
    let agent = azure.start_agent(&deployment, Credentials::AppService, &[SLOW_POLLING]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);

    let identity = azure.identity.requests();
    assert_eq!(identity.len(), 1, "{identity:?}");
    assert_eq!(identity[0].method, "GET");
    let (path, query) = split_target(&identity[0].path).unwrap();
    assert_eq!(path, APP_SERVICE_PATH, "the App Service endpoint, not IMDS");
    ensure_pairs("the query", &query, &[("resource", RESOURCE), ("api-version", "2019-08-01")]).unwrap();
    assert_eq!(identity[0].header("X-IDENTITY-HEADER"), Some(IDENTITY_HEADER));
    let calls = azure.unwrap_calls();
    assert_eq!(calls.len(), 1);
    assert_unwrap_call(&calls[0], &azure.token(0), "RSA-OAEP-256", &wrapped_key);
    azure.assert_clean(&agent);
}

#[test]
fn imds_is_asked_with_metadata_true_and_the_client_id_of_a_user_assigned_identity() {
    let azure = Azure::start();
    let (artifact, wrapped_key) = azure.artifact(PLAINTEXT, "rev-1");
    let deployment = Deployment::new("azure-imds", &artifact);
    let agent = azure.start_agent(&deployment, Credentials::Imds { user_assigned: true }, &[SLOW_POLLING]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);

    let identity = azure.identity.requests();
    assert_eq!(identity.len(), 1, "{identity:?}");
    assert_eq!(identity[0].method, "GET");
    let (path, query) = split_target(&identity[0].path).unwrap();
    assert_eq!(path, IMDS_PATH);
    ensure_pairs(
        "the query",
        &query,
        &[("api-version", "2018-02-01"), ("resource", RESOURCE), ("client_id", CLIENT_ID)],
    )
    .unwrap();
    assert_eq!(identity[0].header("Metadata"), Some("true"));
    let calls = azure.unwrap_calls();
    assert_eq!(calls.len(), 1);
    assert_unwrap_call(&calls[0], &azure.token(0), "RSA-OAEP-256", &wrapped_key);
    azure.assert_clean(&agent);
}

#[test]
fn the_envelope_algorithm_goes_to_unwrapkey_as_it_is() {
    let azure = Azure::start();
    // RSA-OAEP with SHA-1: an agent that always sent RSA-OAEP-256 could not unwrap this.
    let (artifact, wrapped_key) = azure.artifact_with("RSA-OAEP", PLAINTEXT, "rev-1");
    let deployment = Deployment::new("azure-alg", &artifact);
    let agent = azure.start_agent(&deployment, Credentials::Imds { user_assigned: false }, &[SLOW_POLLING]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);

    let (_, query) = split_target(&azure.identity.requests()[0].path).unwrap();
    assert!(!query.contains_key("client_id"), "no client_id without AZURE_CLIENT_ID: {query:?}");
    let calls = azure.unwrap_calls();
    assert_eq!(calls.len(), 1);
    assert_unwrap_call(&calls[0], &azure.token(0), "RSA-OAEP", &wrapped_key);
    azure.assert_clean(&agent);
}

#[test]
fn a_forbidden_unwrap_is_a_kms_unwrap_rejection_and_the_last_secrets_stay() {
    let azure = Azure::start();
    let (artifact, _) = azure.artifact(PLAINTEXT, "rev-1");
    let deployment = Deployment::new("azure-forbidden", &artifact);
    let agent = azure.start_agent(&deployment, Credentials::ClientSecret, &[SLOW_POLLING]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);

    azure.state.forbidden.store(true, Ordering::SeqCst);
    deployment.publish(&azure.artifact(PLAINTEXT_ROTATED, "rev-2").0);
    agent.signal(libc::SIGHUP);
    let line = wait_for_poll_error(&agent, "artifact rejected (kms_unwrap): KMS could not unwrap the data key: ");
    assert!(line.contains("Forbidden"), "the detail names Key Vault's error code: {line}");
    assert_eq!(azure.unwrap_calls().len(), 2);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    assert_eq!(azure.identity.requests().len(), 1, "a 403 is no reason for a new token");
    azure.assert_clean(&agent);
}

#[test]
fn a_refused_client_secret_fails_start_up_with_entra_ids_explanation() {
    const WRONG_SECRET: &str = "Xy7~clefItWrongSecret.P3qS8dF1gH6_jK0";
    let azure = Azure::start();
    let (artifact, _) = azure.artifact(PLAINTEXT, "rev-1");
    let deployment = Deployment::new("azure-wrong-secret", &artifact);
    let agent = azure.spawn_agent(&deployment, Credentials::ClientSecret, &[("AZURE_CLIENT_SECRET", WRONG_SECRET)]);
    let status = agent.wait_exit(FAILED_START_LIMIT).expect("the agent gives up");
    assert_eq!(status.code(), Some(1), "stderr: {}", agent.stderr());
    let stderr = agent.stderr();
    let fatal = stderr.lines().find(|line| line.starts_with("[clef-agent] fatal: ")).unwrap_or_default();
    assert!(fatal.contains("Failed to fetch artifact from") && fatal.contains("after 3 attempts"), "{stderr}");
    assert!(fatal.contains("artifact rejected (kms_unwrap)"), "{stderr}");
    assert!(fatal.contains("AADSTS7000215") || fatal.contains("Invalid client secret provided"), "{stderr}");
    assert_eq!(azure.identity.requests().len(), 3, "a refused token is not cached: one request per attempt");
    assert!(azure.unwrap_calls().is_empty(), "no token, no unwrap");
    assert_nothing_leaked(&agent, &[WRONG_SECRET.to_string()]);
    azure.assert_clean(&agent);
}

#[test]
fn one_token_serves_every_jit_unwrap_until_key_vault_answers_401() {
    let azure = Azure::start();
    let (artifact, wrapped_key) = azure.artifact(PLAINTEXT, "rev-1");
    let deployment = Deployment::new("azure-jit-token", &artifact);
    let agent = azure.start_agent(&deployment, Credentials::ClientSecret, &[JIT]);
    for calls in 2..=4 {
        agent.get("/v1/secrets").assert(200, PLAINTEXT);
        assert_eq!(azure.unwrap_calls().len(), calls, "one unwrap per request");
    }
    assert_eq!(azure.identity.requests().len(), 1, "one token for all of them");

    // Entra ID's token is no longer accepted: Key Vault answers 401.
    azure.state.tokens.revoke_all();
    // The refused call is made once more with a new token: the request never sees the 401.
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    assert_eq!(azure.identity.requests().len(), 2, "one new token after the 401");
    let calls = azure.unwrap_calls();
    assert_eq!(calls[4].header("Authorization"), Some(format!("Bearer {}", azure.token(0)).as_str()));
    assert_unwrap_call(calls.last().unwrap(), &azure.token(1), "RSA-OAEP-256", &wrapped_key);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    assert_eq!(azure.identity.requests().len(), 2, "the new token is cached");
    azure.assert_clean(&agent);
}

#[test]
fn the_vault_really_unwraps() {
    // The loopback vault is only a test if it can refuse: the other OAEP digest does not open.
    let key = data_key();
    let wrapped = rsa_oaep("-encrypt", "RSA-OAEP-256", &key).unwrap();
    assert_eq!(rsa_oaep("-decrypt", "RSA-OAEP-256", &wrapped).unwrap(), key);
    assert!(rsa_oaep("-decrypt", "RSA-OAEP", &wrapped).is_err());
}

const AZURE_ACCEPTED: &str = "an https:// Key Vault or Managed HSM key URL for provider azure, \
    https://<name>.<vault.azure.net|managedhsm.azure.net|vault.azure.cn|managedhsm.azure.cn|vault.usgovcloudapi.net|\
    managedhsm.usgovcloudapi.net|vault.microsoftazure.de>/keys/<key>[/<version>]";

/// `envelope.keyId` decides where the Key Vault token goes, and the artifact is not trusted: a
/// key id that is not an https:// Key Vault key fails start-up at once, and neither the vault
/// (reachable through CLEF_AGENT_AZURE_KEYVAULT_ENDPOINT or named by the key id itself) nor the
/// identity side hears of it.
#[test]
fn a_key_id_that_is_not_an_https_key_vault_key_is_refused_before_any_request() {
    let azure = Azure::start();
    let vault = azure.vault.url("");
    let vault_host = vault.trim_start_matches("http://");
    let cases = [
        (format!("{vault}/keys/clef/v1"), "not an https:// URL"),
        (format!("https://{vault_host}/keys/clef/v1"), "not a Key Vault or Managed HSM host"),
        ("https://clef-it.vault.azure.net.evil.example/keys/clef/v1".into(), "not a Key Vault or Managed HSM host"),
        ("https://clef-it.vault.azure.net/keys/../secrets/clef".into(), "the path is not /keys/<name>[/<version>]"),
        ("https://clef-it.vault.azure.net/secrets/clef".into(), "the path is not /keys/<name>[/<version>]"),
    ];
    for (index, (key_id, why)) in cases.iter().enumerate() {
        let wrapped_key = wrap("RSA-OAEP-256", &azure.data_key);
        let kms = EnvelopeKms { key_id: key_id.clone(), ..azure.kms("RSA-OAEP-256", &wrapped_key) };
        let artifact = build_envelope_artifact(PLAINTEXT, "rev-1", &azure.data_key, &kms);
        let deployment = Deployment::new(&format!("azure-hostile-key-id-{index}"), &artifact);
        let agent = azure.spawn_agent(&deployment, Credentials::ClientSecret, &[]);
        assert_key_id_refused_at_once(&agent, &deployment.artifact, AZURE_ACCEPTED, &format!("'{key_id}' ({why})"));
        assert_eq!(azure.vault.requests().len(), 0, "{key_id}: the vault was called");
        assert_eq!(azure.identity.requests().len(), 0, "{key_id}: a token was asked for");
    }
}
