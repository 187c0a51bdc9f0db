//! Environment → `Config` (SPEC §3). Every variable is read and checked here, up front, before
//! any network access; every default and limit is a named constant next to its check. A
//! configuration error names the variable and what it accepts, and never repeats a secret.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::artifact::signature::{VerifyKey, ACCEPTED_FORMS};
use crate::decrypt::AgeIdentity;
use crate::secret::Secret;
use crate::url::{HttpUrl, S3Location};

pub mod delivery;
pub mod variables;

pub use delivery::{CredentialConfig, RenderConfig};

pub const DEFAULT_PORT: u16 = 7779;
pub const DEFAULT_CACHE_TTL_SECONDS: u64 = 300;
/// The shortest TTL of cached mode: below it the 5 s poll floor would poll at every chance.
pub const MIN_CACHE_TTL_SECONDS: u64 = 30;

/// Connections served at once on each listener (`CLEF_AGENT_MAX_CONNECTIONS`); one more gets
/// `503` and is closed. Each connection has a thread: keep systemd's `TasksMax` above it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// The most `CLEF_AGENT_MAX_CONNECTIONS` accepts: a thread each, so more would only trade a
/// clear `503` for running out of threads or memory.
pub const MAX_MAX_CONNECTIONS: usize = 16_384;

/// Request-head limits of the HTTP API (SPEC §11): a longer line, head or more fields is `431`.
pub const MAX_REQUEST_LINE_BYTES: usize = 8 * 1024;
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;
pub const MAX_REQUEST_HEADER_FIELDS: usize = 100;
/// A request head must be complete this long after its first byte; else `408` and close.
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection between requests (keep-alive) is closed after this long without a byte.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// A response write that makes no progress this long (a client that stopped reading) ends the
/// connection; a slow reader that keeps reading is never cut.
pub const RESPONSE_WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The stack of each connection's thread, instead of Rust's 2 MiB. Every kind of request (a JIT
/// decryption and a panicking handler included) fits in 80 KiB in an unoptimized build;
/// `tests/connection_stack.rs` serves them all on a quarter of this. The rest is margin for what
/// the test cannot reach in-process, such as a JIT unwrap through a cloud KMS over TLS (a rustls
/// handshake on the connection thread): an overflow would end the process, and untouched stack
/// pages cost no memory, so the margin is generous.
pub const CONNECTION_THREAD_STACK_BYTES: usize = 512 * 1024;

/// `CLEF_AGENT_TOKEN_FILE_MODE`: the token file is the agent's user's only (the default), or its
/// group may read it too (an application in that group). Nothing wider: others never read the
/// token, and nobody but the agent's user ever writes it.
pub const DEFAULT_TOKEN_FILE_MODE: u32 = 0o600;
pub const GROUP_READABLE_TOKEN_FILE_MODE: u32 = 0o640;

/// A configuration problem, printed as `[clef-agent] config error: <message>`.
///
/// A message and, when an I/O error caused it, that error. No caller acts on the kind of
/// problem — each is reported and the agent stops — so the message names the variable and the
/// fix, and there are no variants to match on.
#[derive(Debug)]
pub struct ConfigError {
    message: String,
    cause: Option<std::io::Error>,
}

impl ConfigError {
    pub fn new(message: impl Into<String>) -> ConfigError {
        ConfigError { message: message.into(), cause: None }
    }

    /// `message` already quotes `cause` (it is what the user reads); [`source`] hands the
    /// cause on to code that inspects it.
    ///
    /// [`source`]: std::error::Error::source
    pub fn caused_by(message: impl Into<String>, cause: std::io::Error) -> ConfigError {
        ConfigError { message: message.into(), cause: Some(cause) }
    }
}

/// Equal when they say the same (I/O errors themselves cannot be compared).
impl PartialEq for ConfigError {
    fn eq(&self, other: &ConfigError) -> bool {
        self.message == other.message
    }
}

impl Eq for ConfigError {}

impl From<String> for ConfigError {
    fn from(message: String) -> ConfigError {
        ConfigError::new(message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_ref().map(|cause| cause as &(dyn std::error::Error + 'static))
    }
}

fn error<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::new(message))
}

/// Where the artifact comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceConfig {
    File(PathBuf),
    Http(HttpUrl),
    S3 { location: S3Location, region: String },
    Vcs(VcsConfig),
}

impl SourceConfig {
    /// The source as it may be logged: URLs lose user-info and query strings.
    pub fn describe(&self) -> String {
        match self {
            SourceConfig::File(path) => path.display().to_string(),
            SourceConfig::Http(url) => url.redacted(),
            SourceConfig::S3 { location, .. } => location.describe(),
            SourceConfig::Vcs(vcs) => format!(
                "{} {}:{}@{}",
                vcs.provider.name(),
                vcs.repo,
                vcs.path(),
                vcs.reference.as_deref().unwrap_or("default branch")
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcsProvider {
    GitHub,
    GitLab,
    Bitbucket,
}

impl VcsProvider {
    pub fn name(self) -> &'static str {
        match self {
            VcsProvider::GitHub => "github",
            VcsProvider::GitLab => "gitlab",
            VcsProvider::Bitbucket => "bitbucket",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcsConfig {
    pub provider: VcsProvider,
    pub repo: String,
    pub token: Secret,
    pub identity: String,
    pub environment: String,
    pub reference: Option<String>,
    pub api_url: Option<HttpUrl>,
}

impl VcsConfig {
    /// The artifact's path inside the repository.
    pub fn path(&self) -> String {
        format!(".clef/packed/{}/{}.age.json", self.identity, self.environment)
    }
}

/// Where the age identity comes from; the file is read by [`Config::load_age_identity`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgeKeySource {
    Inline(Secret),
    File(PathBuf),
}

/// Where the bearer token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Given(Secret),
    /// `mode` is [`DEFAULT_TOKEN_FILE_MODE`] or [`GROUP_READABLE_TOKEN_FILE_MODE`].
    File {
        path: PathBuf,
        mode: u32,
    },
    Generated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Decrypt on refresh and serve the snapshot for at most `ttl` without a good refresh.
    Cached { ttl: Duration },
    /// Keep only the encrypted artifact and decrypt on every request (`CLEF_AGENT_CACHE_TTL=0`).
    Jit,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Cached { .. } => "cached",
            Mode::Jit => "jit",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub source: SourceConfig,
    pub age_key: Option<AgeKeySource>,
    pub port: u16,
    /// `CLEF_AGENT_PORT` was set (with a socket, TCP is served only then).
    pub port_explicit: bool,
    pub token: TokenSource,
    pub agent_id: Option<String>,
    pub mode: Mode,
    pub cache_path: Option<PathBuf>,
    pub verify_key: Option<VerifyKey>,
    pub telemetry_url: Option<HttpUrl>,
    pub socket: Option<PathBuf>,
    /// `NOTIFY_SOCKET`: systemd's notification socket.
    pub notify_socket: Option<String>,
    /// Half of `WATCHDOG_USEC`, when systemd's watchdog is meant for this process.
    pub watchdog_interval: Option<Duration>,
    /// `AWS_LAMBDA_RUNTIME_API` (`host:port`): run as a Lambda extension.
    pub lambda_runtime_api: Option<String>,
    /// `SSL_CERT_FILE`: PEM CA certificates trusted in addition to the bundled roots.
    pub ssl_cert_file: Option<PathBuf>,
    /// `CLEF_AGENT_MAX_CONNECTIONS`: connections served at once on each listener.
    pub max_connections: usize,
    /// Delivery beyond HTTP (`config/delivery.rs`): systemd credentials, files, change hook.
    pub credentials: Option<CredentialConfig>,
    pub render: Option<RenderConfig>,
    pub on_change: Option<Vec<String>>,
}

const VCS_REQUIRED: [&str; 5] = [
    "CLEF_AGENT_VCS_PROVIDER",
    "CLEF_AGENT_VCS_REPO",
    "CLEF_AGENT_VCS_TOKEN",
    "CLEF_AGENT_VCS_IDENTITY",
    "CLEF_AGENT_VCS_ENVIRONMENT",
];

impl Config {
    /// Reads the configuration through `lookup` (the process environment in production, a map
    /// in tests). Empty values count as unset.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &str| lookup(name).filter(|value| !value.is_empty());
        let source = source(&get)?;
        let age_key = match (get("CLEF_AGENT_AGE_KEY"), get("CLEF_AGENT_AGE_KEY_FILE")) {
            (Some(_), Some(_)) => {
                return error("CLEF_AGENT_AGE_KEY and CLEF_AGENT_AGE_KEY_FILE are both set: set only one of them")
            }
            (Some(inline), None) => {
                AgeIdentity::parse(&inline).map_err(|why| ConfigError::new(format!("CLEF_AGENT_AGE_KEY {why}")))?;
                Some(AgeKeySource::Inline(Secret::new(inline.trim().to_string())))
            }
            (None, Some(path)) => Some(AgeKeySource::File(path.into())),
            (None, None) => None,
        };
        let port = port_from_env(&lookup)?;
        let token = match (get("CLEF_AGENT_TOKEN"), get("CLEF_AGENT_TOKEN_FILE")) {
            (Some(_), Some(_)) => {
                return error("CLEF_AGENT_TOKEN and CLEF_AGENT_TOKEN_FILE are both set: set only one of them")
            }
            (Some(token), None) => {
                if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
                    return error("CLEF_AGENT_TOKEN must contain only printable ASCII characters without spaces");
                }
                TokenSource::Given(Secret::new(token))
            }
            (None, Some(path)) => TokenSource::File { path: path.into(), mode: token_file_mode(&get)? },
            (None, None) => TokenSource::Generated,
        };
        if get("CLEF_AGENT_TOKEN_FILE_MODE").is_some() && !matches!(token, TokenSource::File { .. }) {
            return error("CLEF_AGENT_TOKEN_FILE_MODE is set but CLEF_AGENT_TOKEN_FILE is not: set the file it applies to, or remove the mode");
        }
        let mode = match get("CLEF_AGENT_CACHE_TTL") {
            None => Mode::Cached { ttl: Duration::from_secs(DEFAULT_CACHE_TTL_SECONDS) },
            Some(text) => match text.trim().parse::<u64>() {
                Ok(0) => Mode::Jit,
                Ok(seconds) if seconds >= MIN_CACHE_TTL_SECONDS => Mode::Cached { ttl: Duration::from_secs(seconds) },
                _ => {
                    return error(format!(
                        "CLEF_AGENT_CACHE_TTL must be 0 (JIT mode) or a whole number of seconds of at least {MIN_CACHE_TTL_SECONDS}, got '{text}'"
                    ))
                }
            },
        };
        let verify_key = get("CLEF_AGENT_VERIFY_KEY")
            .map(|text| VerifyKey::parse(&text))
            .transpose()
            .map_err(|why| ConfigError::new(format!("CLEF_AGENT_VERIFY_KEY {why}; it takes {ACCEPTED_FORMS}")))?;
        let telemetry_url = get("CLEF_AGENT_TELEMETRY_URL")
            .map(|text| {
                HttpUrl::parse(&text).ok_or_else(|| {
                    ConfigError::new(
                        "CLEF_AGENT_TELEMETRY_URL must be an http:// or https:// URL of an OTLP/HTTP logs endpoint",
                    )
                })
            })
            .transpose()?;
        let max_connections = match get("CLEF_AGENT_MAX_CONNECTIONS") {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(text) => match text.trim().parse::<usize>() {
                Ok(count) if (1..=MAX_MAX_CONNECTIONS).contains(&count) => count,
                _ => {
                    return error(format!(
                    "CLEF_AGENT_MAX_CONNECTIONS must be a whole number from 1 to {MAX_MAX_CONNECTIONS}, got '{text}'"
                ))
                }
            },
        };
        Ok(Config {
            source,
            age_key,
            port,
            port_explicit: get("CLEF_AGENT_PORT").is_some(),
            token,
            agent_id: get("CLEF_AGENT_ID"),
            mode,
            cache_path: get("CLEF_AGENT_CACHE_PATH").map(PathBuf::from),
            verify_key,
            telemetry_url,
            socket: get("CLEF_AGENT_SOCKET").map(PathBuf::from),
            notify_socket: get("NOTIFY_SOCKET"),
            lambda_runtime_api: get("AWS_LAMBDA_RUNTIME_API"),
            ssl_cert_file: get("SSL_CERT_FILE").map(PathBuf::from),
            max_connections,
            credentials: delivery::credentials(&get)?,
            render: delivery::render(&get, mode)?,
            on_change: delivery::on_change(&get)?,
            watchdog_interval: watchdog_interval(get, std::process::id()),
        })
    }

    /// Reads the age identity: inline, or from `CLEF_AGENT_AGE_KEY_FILE`.
    pub fn load_age_identity(&self) -> Result<Option<AgeIdentity>, ConfigError> {
        match &self.age_key {
            None => Ok(None),
            Some(AgeKeySource::Inline(key)) => AgeIdentity::parse(key.expose())
                .map(Some)
                .map_err(|why| ConfigError::new(format!("CLEF_AGENT_AGE_KEY {why}"))),
            Some(AgeKeySource::File(path)) => {
                let contents = std::fs::read(path).map_err(|error| {
                    ConfigError::caused_by(
                        format!("CLEF_AGENT_AGE_KEY_FILE: cannot read {}: {error}", path.display()),
                        error,
                    )
                })?;
                let contents = zeroize::Zeroizing::new(contents);
                let text = std::str::from_utf8(&contents).map_err(|_| {
                    ConfigError::new(format!("CLEF_AGENT_AGE_KEY_FILE: {} is not a text file", path.display()))
                })?;
                AgeIdentity::from_file_contents(text)
                    .map(Some)
                    .map_err(|why| ConfigError::new(format!("CLEF_AGENT_AGE_KEY_FILE: {} {why}", path.display())))
            }
        }
    }
}

/// systemd's watchdog ping interval: half of `WATCHDOG_USEC`, when the watchdog is meant for
/// this process (`WATCHDOG_PID` unset or `own_pid`). The daemon's main loop sends the pings
/// (`lifecycle/systemd.rs`).
fn watchdog_interval(lookup: impl Fn(&str) -> Option<String>, own_pid: u32) -> Option<Duration> {
    let microseconds: u64 = lookup("WATCHDOG_USEC")?.trim().parse().ok().filter(|&usec| usec > 0)?;
    if let Some(pid) = lookup("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    Some(Duration::from_micros(microseconds) / 2)
}

/// Variables naming endpoints that receive a credential, with the credential they receive;
/// the metadata endpoints (link-local or local, plain http by design) are not among them.
const CREDENTIAL_ENDPOINTS: [(&str, &str); 6] = [
    ("AWS_ENDPOINT_URL_KMS", "signed AWS requests with the session token"),
    ("AWS_ENDPOINT_URL_STS", "the web identity token"),
    ("AWS_ENDPOINT_URL", "signed AWS requests with the session token"),
    ("CLEF_AGENT_GCP_KMS_ENDPOINT", "the GCP access token"),
    ("CLEF_AGENT_AZURE_KEYVAULT_ENDPOINT", "the Azure access token"),
    ("AZURE_AUTHORITY_HOST", "the Azure client secret or federated token"),
];

/// One warning per configured endpoint that would receive a credential over plain `http://`
/// on a host that is not loopback (SPEC §11): it names the variable, the endpoint (redacted)
/// and what would cross the network in clear, never the credential.
pub fn cleartext_credential_warnings(config: &Config, lookup: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let get = |name: &str| lookup(name).filter(|value| !value.is_empty());
    let mut endpoints: Vec<(&str, HttpUrl, &str)> = Vec::new();
    match &config.source {
        SourceConfig::Http(url) if url.has_userinfo => {
            endpoints.push(("CLEF_AGENT_SOURCE", url.clone(), "the user-info credentials"))
        }
        SourceConfig::Vcs(VcsConfig { api_url: Some(url), .. }) => {
            endpoints.push(("CLEF_AGENT_VCS_API_URL", url.clone(), "the VCS token"))
        }
        SourceConfig::S3 { .. } => {
            if let Some(url) = get("AWS_ENDPOINT_URL_S3").and_then(|text| HttpUrl::parse(&text)) {
                endpoints.push(("AWS_ENDPOINT_URL_S3", url, "signed AWS requests with the session token"));
            }
        }
        _ => {}
    }
    for (name, what) in CREDENTIAL_ENDPOINTS {
        if let Some(url) = get(name).and_then(|text| HttpUrl::parse(&text)) {
            endpoints.push((name, url, what));
        }
    }
    if let Some(url) = &config.telemetry_url {
        endpoints.push(("CLEF_AGENT_TELEMETRY_URL", url.clone(), "the telemetry headers named by the secrets"));
    }
    endpoints
        .into_iter()
        .filter(|(_, url, _)| url.scheme == "http" && !crate::http::is_loopback(&url.host))
        .filter(|(_, url, _)| !crate::http::is_link_local(&url.host) && !crate::http::is_metadata_host(&url.host))
        .map(|(name, url, what)| {
            format!(
                "{name} is plain http to a host that is not loopback ({}): {what} would cross the network unencrypted; use https://",
                url.redacted()
            )
        })
        .collect()
}

/// `CLEF_AGENT_PORT`, or the default; also what `healthcheck` reads.
pub fn port_from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<u16, ConfigError> {
    match lookup("CLEF_AGENT_PORT").filter(|value| !value.is_empty()) {
        None => Ok(DEFAULT_PORT),
        Some(text) => match text.trim().parse::<u16>() {
            Ok(port) if port >= 1 => Ok(port),
            _ => error(format!("CLEF_AGENT_PORT must be a port number from 1 to 65535, got '{text}'")),
        },
    }
}

/// `CLEF_AGENT_TOKEN_FILE_MODE`, written the way chmod takes it, with or without the leading 0.
fn token_file_mode(get: &impl Fn(&str) -> Option<String>) -> Result<u32, ConfigError> {
    match get("CLEF_AGENT_TOKEN_FILE_MODE").as_deref().map(str::trim) {
        None | Some("0600" | "600") => Ok(DEFAULT_TOKEN_FILE_MODE),
        Some("0640" | "640") => Ok(GROUP_READABLE_TOKEN_FILE_MODE),
        Some(other) => error(format!(
            "CLEF_AGENT_TOKEN_FILE_MODE must be 0600 (the agent's user only, the default) or 0640 (its group may read the token too), got '{other}'"
        )),
    }
}

fn source(get: &impl Fn(&str) -> Option<String>) -> Result<SourceConfig, ConfigError> {
    let vcs_set: Vec<&str> = VCS_REQUIRED.iter().copied().filter(|name| get(name).is_some()).collect();
    let vcs_optional_set: Vec<&str> =
        ["CLEF_AGENT_VCS_REF", "CLEF_AGENT_VCS_API_URL"].into_iter().filter(|name| get(name).is_some()).collect();
    match get("CLEF_AGENT_SOURCE") {
        Some(_) if !vcs_set.is_empty() || !vcs_optional_set.is_empty() => error(format!(
            "CLEF_AGENT_SOURCE and {} are both set: use either CLEF_AGENT_SOURCE or the CLEF_AGENT_VCS_* variables",
            vcs_set.iter().chain(&vcs_optional_set).copied().collect::<Vec<_>>().join(", ")
        )),
        Some(text) => source_from_text(&text, get),
        None if vcs_set.is_empty() && vcs_optional_set.is_empty() => error(
            "no artifact source: set CLEF_AGENT_SOURCE (an https:// URL, s3://bucket/key or a file path) or all of CLEF_AGENT_VCS_PROVIDER, CLEF_AGENT_VCS_REPO, CLEF_AGENT_VCS_TOKEN, CLEF_AGENT_VCS_IDENTITY and CLEF_AGENT_VCS_ENVIRONMENT",
        ),
        None if vcs_set.len() < VCS_REQUIRED.len() => {
            let missing: Vec<&str> = VCS_REQUIRED.iter().copied().filter(|name| !vcs_set.contains(name)).collect();
            error(format!(
                "a VCS source needs all five of {}: missing {}",
                VCS_REQUIRED.join(", "),
                missing.join(", ")
            ))
        }
        None => vcs(get).map(SourceConfig::Vcs),
    }
}

fn source_from_text(text: &str, get: &impl Fn(&str) -> Option<String>) -> Result<SourceConfig, ConfigError> {
    let region_from_env = || get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION"));
    if text.starts_with("s3://") {
        let Some(location) = S3Location::parse_s3_scheme(text) else {
            return error("CLEF_AGENT_SOURCE: an S3 source must look like s3://bucket/key");
        };
        let location = s3_query(location, text.split_once('?').map(|(_, query)| query))?;
        let Some(region) = region_from_env() else {
            return error(
                "CLEF_AGENT_SOURCE is an s3:// URL but no region is set: set AWS_REGION (or AWS_DEFAULT_REGION)",
            );
        };
        return Ok(SourceConfig::S3 { location, region });
    }
    let lowercase = text.to_ascii_lowercase();
    if lowercase.starts_with("http://") || lowercase.starts_with("https://") {
        let Some(url) = HttpUrl::parse(text) else {
            return error("CLEF_AGENT_SOURCE is not a valid http(s) URL (expected https://host[:port]/path)");
        };
        // A pre-signed S3 URL carries its own authorization: it is an HTTP(S) source, sent as given.
        let presigned = url.query.as_deref().is_some_and(crate::url::is_presigned_query);
        if let Some(location) = S3Location::from_https(&url).filter(|_| !presigned) {
            let location = s3_query(location, url.query.as_deref())?;
            let region = location.region_in_host.clone().unwrap_or_else(|| "us-east-1".into());
            return Ok(SourceConfig::S3 { location, region });
        }
        return Ok(SourceConfig::Http(url));
    }
    if text.contains("://") {
        return error("CLEF_AGENT_SOURCE must be an http(s):// URL, an s3:// URL or a file path");
    }
    Ok(SourceConfig::File(text.into()))
}

/// An S3 URL's query: `versionId` only, since the agent signs S3 requests itself.
fn s3_query(location: S3Location, query: Option<&str>) -> Result<S3Location, ConfigError> {
    location.with_query(query).or_else(|why| {
        error(format!(
            "CLEF_AGENT_SOURCE: {why}: an S3 URL takes only ?versionId=<version> (the agent signs \
             S3 requests with its own credentials); a pre-signed URL (X-Amz-Signature=…) is fetched \
             as given, as an https:// source"
        ))
    })
}

fn vcs(get: &impl Fn(&str) -> Option<String>) -> Result<VcsConfig, ConfigError> {
    let required = |name: &str| get(name).unwrap_or_default();
    let provider = match required("CLEF_AGENT_VCS_PROVIDER").as_str() {
        "github" => VcsProvider::GitHub,
        "gitlab" => VcsProvider::GitLab,
        "bitbucket" => VcsProvider::Bitbucket,
        other => return error(format!("CLEF_AGENT_VCS_PROVIDER must be github, gitlab or bitbucket, got '{other}'")),
    };
    let repo = required("CLEF_AGENT_VCS_REPO");
    if repo.split('/').count() < 2 || repo.split('/').any(str::is_empty) {
        return error(format!("CLEF_AGENT_VCS_REPO must look like org/repo, got '{repo}'"));
    }
    let identity = required("CLEF_AGENT_VCS_IDENTITY");
    let environment = required("CLEF_AGENT_VCS_ENVIRONMENT");
    for (name, value) in [("CLEF_AGENT_VCS_IDENTITY", &identity), ("CLEF_AGENT_VCS_ENVIRONMENT", &environment)] {
        if value.contains('/') || value == "." || value == ".." {
            return error(format!("{name} must be a single path segment (no '/'), got '{value}'"));
        }
    }
    let api_url = get("CLEF_AGENT_VCS_API_URL")
        .map(|text| {
            HttpUrl::parse(&text)
                .ok_or_else(|| ConfigError::new("CLEF_AGENT_VCS_API_URL must be an http:// or https:// URL"))
        })
        .transpose()?;
    Ok(VcsConfig {
        provider,
        repo,
        token: Secret::new(required("CLEF_AGENT_VCS_TOKEN")),
        identity,
        environment,
        reference: get("CLEF_AGENT_VCS_REF"),
        api_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    pub(crate) const AGE_KEY: &str = "AGE-SECRET-KEY-1AUKVPCSM6LMRNMMKEAWTUH9LZPY5QA9ZD952WJGKCYLD5M4VEEKQKALAZ3";

    pub(super) fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_env(|name| map.get(name).cloned())
    }

    pub(super) fn message(pairs: &[(&str, &str)]) -> String {
        config(pairs).unwrap_err().to_string()
    }

    fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| pairs.iter().find(|(key, _)| *key == name).map(|(_, value)| value.to_string())
    }

    #[test]
    fn watchdog_pings_at_half_the_timeout_for_our_pid_only() {
        assert_eq!(watchdog_interval(lookup(&[("WATCHDOG_USEC", "10000000")]), 7), Some(Duration::from_secs(5)));
        assert_eq!(
            watchdog_interval(lookup(&[("WATCHDOG_USEC", "10000000"), ("WATCHDOG_PID", "7")]), 7),
            Some(Duration::from_secs(5))
        );
        assert_eq!(watchdog_interval(lookup(&[("WATCHDOG_USEC", "10000000"), ("WATCHDOG_PID", "8")]), 7), None);
        assert_eq!(watchdog_interval(lookup(&[("WATCHDOG_USEC", "0")]), 7), None);
        assert_eq!(watchdog_interval(lookup(&[]), 7), None);
    }

    #[test]
    fn an_unreadable_age_key_file_is_a_config_error_that_keeps_the_io_error_as_its_source() {
        let path = "/nonexistent-clef-dir/age.key";
        let config = config(&[("CLEF_AGENT_SOURCE", "/a.json"), ("CLEF_AGENT_AGE_KEY_FILE", path)]).unwrap();
        let error = config.load_age_identity().unwrap_err();
        assert!(error.to_string().starts_with("CLEF_AGENT_AGE_KEY_FILE: cannot read /nonexistent-clef-dir/age.key: "));
        let source = std::error::Error::source(&error).and_then(|source| source.downcast_ref::<std::io::Error>());
        assert_eq!(source.map(std::io::Error::kind), Some(std::io::ErrorKind::NotFound));
    }

    #[test]
    fn credentials_over_plain_http_to_a_remote_host_are_warned_about_once_each() {
        let warnings = |pairs: &[(&str, &str)]| {
            let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            cleartext_credential_warnings(&config(pairs).unwrap(), |name| map.get(name).cloned())
        };
        let vcs = [
            ("CLEF_AGENT_VCS_PROVIDER", "gitlab"),
            ("CLEF_AGENT_VCS_REPO", "acme/secrets"),
            ("CLEF_AGENT_VCS_TOKEN", "glpat-secret"),
            ("CLEF_AGENT_VCS_IDENTITY", "api"),
            ("CLEF_AGENT_VCS_ENVIRONMENT", "production"),
        ];
        let mut remote = vcs.to_vec();
        remote.extend([
            ("CLEF_AGENT_VCS_API_URL", "http://gitlab.internal:8080"),
            ("CLEF_AGENT_GCP_KMS_ENDPOINT", "http://kms.internal/"),
            ("AWS_ENDPOINT_URL_KMS", "https://kms.internal"),
            ("CLEF_AGENT_AZURE_KEYVAULT_ENDPOINT", "http://127.0.0.1:9000"),
            ("AWS_ENDPOINT_URL", "http://169.254.169.254"),
        ]);
        assert_eq!(
            warnings(&remote),
            [
                "CLEF_AGENT_VCS_API_URL is plain http to a host that is not loopback (http://gitlab.internal:8080/): \
                 the VCS token would cross the network unencrypted; use https://",
                "CLEF_AGENT_GCP_KMS_ENDPOINT is plain http to a host that is not loopback (http://kms.internal/): \
                 the GCP access token would cross the network unencrypted; use https://",
            ]
        );
        let source = [("CLEF_AGENT_SOURCE", "http://user:pw@files.internal/a.json?sig=s")];
        let warning = warnings(&source).join("\n");
        assert!(warning.contains("(http://[redacted]@files.internal/a.json?[redacted])"), "{warning}");
        assert!(!warning.contains("pw") && !warning.contains("sig=s"), "{warning}");
        assert!(warnings(&[("CLEF_AGENT_SOURCE", "http://files.internal/a.json")]).is_empty());
        assert!(warnings(&vcs).is_empty());
    }

    #[test]
    fn defaults_apply_to_a_file_source() {
        let config = config(&[("CLEF_AGENT_SOURCE", "/srv/artifact.json")]).unwrap();
        assert_eq!(config.source, SourceConfig::File("/srv/artifact.json".into()));
        assert_eq!(config.port, 7779);
        assert!(!config.port_explicit);
        assert_eq!(config.mode, Mode::Cached { ttl: Duration::from_secs(300) });
        assert_eq!(config.token, TokenSource::Generated);
        assert_eq!(config.age_key, None);
    }

    #[test]
    fn empty_values_count_as_unset() {
        let config =
            config(&[("CLEF_AGENT_SOURCE", "a.json"), ("CLEF_AGENT_PORT", ""), ("CLEF_AGENT_TOKEN", "")]).unwrap();
        assert_eq!((config.port, config.token), (7779, TokenSource::Generated));
    }

    #[test]
    fn a_source_is_required() {
        assert!(message(&[]).starts_with("no artifact source: set CLEF_AGENT_SOURCE"));
    }

    #[test]
    fn port_must_be_in_range() {
        for bad in ["0", "65536", "http", "-1"] {
            assert_eq!(
                message(&[("CLEF_AGENT_SOURCE", "a.json"), ("CLEF_AGENT_PORT", bad)]),
                format!("CLEF_AGENT_PORT must be a port number from 1 to 65535, got '{bad}'")
            );
        }
        let config = config(&[("CLEF_AGENT_SOURCE", "a.json"), ("CLEF_AGENT_PORT", "65535")]).unwrap();
        assert_eq!((config.port, config.port_explicit), (65535, true));
    }

    #[test]
    fn ttl_is_zero_or_at_least_thirty() {
        let mode = |ttl| config(&[("CLEF_AGENT_SOURCE", "a.json"), ("CLEF_AGENT_CACHE_TTL", ttl)]).map(|c| c.mode);
        assert_eq!(mode("0"), Ok(Mode::Jit));
        assert_eq!(mode("30"), Ok(Mode::Cached { ttl: Duration::from_secs(30) }));
        for bad in ["29", "1", "-5", "5m", "1.5"] {
            assert_eq!(
                mode(bad).unwrap_err().to_string(),
                format!("CLEF_AGENT_CACHE_TTL must be 0 (JIT mode) or a whole number of seconds of at least 30, got '{bad}'")
            );
        }
    }

    #[test]
    fn max_connections_defaults_to_512_and_is_bounded() {
        let max = |value| {
            config(&[("CLEF_AGENT_SOURCE", "a.json"), ("CLEF_AGENT_MAX_CONNECTIONS", value)]).map(|c| c.max_connections)
        };
        assert_eq!(max(""), Ok(512));
        assert_eq!(max("1"), Ok(1));
        assert_eq!(max("16384"), Ok(16_384));
        for bad in ["0", "16385", "-1", "many", "1e3"] {
            assert_eq!(
                max(bad).unwrap_err().to_string(),
                format!("CLEF_AGENT_MAX_CONNECTIONS must be a whole number from 1 to 16384, got '{bad}'")
            );
        }
    }

    #[test]
    fn vcs_needs_all_five_variables() {
        assert_eq!(
            message(&[("CLEF_AGENT_VCS_PROVIDER", "github"), ("CLEF_AGENT_VCS_REPO", "org/repo")]),
            "a VCS source needs all five of CLEF_AGENT_VCS_PROVIDER, CLEF_AGENT_VCS_REPO, CLEF_AGENT_VCS_TOKEN, CLEF_AGENT_VCS_IDENTITY, CLEF_AGENT_VCS_ENVIRONMENT: missing CLEF_AGENT_VCS_TOKEN, CLEF_AGENT_VCS_IDENTITY, CLEF_AGENT_VCS_ENVIRONMENT"
        );
    }

    fn vcs_vars(provider: &'static str) -> Vec<(&'static str, &'static str)> {
        vec![
            ("CLEF_AGENT_VCS_PROVIDER", provider),
            ("CLEF_AGENT_VCS_REPO", "org/repo"),
            ("CLEF_AGENT_VCS_TOKEN", "ghp_secret_token"),
            ("CLEF_AGENT_VCS_IDENTITY", "api"),
            ("CLEF_AGENT_VCS_ENVIRONMENT", "prod"),
        ]
    }

    #[test]
    fn vcs_source_is_parsed_and_described_without_its_token() {
        let config = config(&vcs_vars("gitlab")).unwrap();
        let SourceConfig::Vcs(vcs) = &config.source else { panic!() };
        assert_eq!(vcs.path(), ".clef/packed/api/prod.age.json");
        assert_eq!(config.source.describe(), "gitlab org/repo:.clef/packed/api/prod.age.json@default branch");
        assert!(!format!("{config:?}").contains("ghp_secret_token"));
        assert_eq!(message(&vcs_vars("svn")), "CLEF_AGENT_VCS_PROVIDER must be github, gitlab or bitbucket, got 'svn'");
    }

    #[test]
    fn source_and_vcs_are_exclusive() {
        let mut vars = vcs_vars("github");
        vars.push(("CLEF_AGENT_SOURCE", "a.json"));
        assert!(message(&vars).starts_with("CLEF_AGENT_SOURCE and CLEF_AGENT_VCS_PROVIDER"));
        assert!(message(&[("CLEF_AGENT_SOURCE", "a.json"), ("CLEF_AGENT_VCS_REF", "main")])
            .starts_with("CLEF_AGENT_SOURCE and CLEF_AGENT_VCS_REF are both set"));
    }

    #[test]
    fn classifies_urls() {
        let source = |text| config(&[("CLEF_AGENT_SOURCE", text), ("AWS_REGION", "eu-west-1")]).map(|c| c.source);
        assert!(matches!(source("https://example.com/a.json"), Ok(SourceConfig::Http(_))));
        assert!(matches!(source("s3://b/k.json"), Ok(SourceConfig::S3 { region, .. }) if region == "eu-west-1"));
        assert!(
            matches!(source("https://b.s3.amazonaws.com/k.json"), Ok(SourceConfig::S3 { region, .. }) if region == "us-east-1")
        );
        assert_eq!(
            source("ftp://x/y").unwrap_err().to_string(),
            "CLEF_AGENT_SOURCE must be an http(s):// URL, an s3:// URL or a file path"
        );
        assert_eq!(
            message(&[("CLEF_AGENT_SOURCE", "s3://b/k")]),
            "CLEF_AGENT_SOURCE is an s3:// URL but no region is set: set AWS_REGION (or AWS_DEFAULT_REGION)"
        );
        let described =
            config(&[("CLEF_AGENT_SOURCE", "https://u:p@h.example/a.json?sig=x")]).unwrap().source.describe();
        assert_eq!(described, "https://[redacted]@h.example/a.json?[redacted]");
    }

    #[test]
    fn s3_urls_keep_a_version_pin_and_refuse_other_query_parameters() {
        let source = |text| config(&[("CLEF_AGENT_SOURCE", text), ("AWS_REGION", "eu-west-1")]).map(|c| c.source);
        for text in ["https://b.s3.amazonaws.com/k.json?versionId=v%2B1", "s3://b/k.json?versionId=v%2B1"] {
            let Ok(SourceConfig::S3 { location, .. }) = source(text) else { panic!("{text} is not an S3 source") };
            assert_eq!((location.key.as_str(), location.version_id.as_deref()), ("k.json", Some("v+1")), "{text}");
        }
        let expected = "CLEF_AGENT_SOURCE: query parameter 'response-content-type' is not supported: an S3 URL \
             takes only ?versionId=<version> (the agent signs S3 requests with its own credentials); a \
             pre-signed URL (X-Amz-Signature=…) is fetched as given, as an https:// source";
        for text in
            ["https://b.s3.amazonaws.com/k.json?response-content-type=x", "s3://b/k.json?response-content-type=x"]
        {
            assert_eq!(source(text).unwrap_err().to_string(), expected, "{text}");
        }
        // A pre-signed URL is an HTTP(S) source: sent as given, never signed again.
        let presigned = "https://b.s3.amazonaws.com/k.json?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=0f";
        assert!(matches!(source(presigned), Ok(SourceConfig::Http(url)) if url.full == presigned));
        let described = source("s3://b/k.json?versionId=v1").unwrap().describe();
        assert_eq!(described, "s3://b/k.json?versionId=v1");
    }

    #[test]
    fn tokens_and_keys_are_validated_without_being_echoed() {
        let bad_key = "AGE-SECRET-KEY-1NOTREALLYAKEY";
        let error = message(&[("CLEF_AGENT_SOURCE", "a.json"), ("CLEF_AGENT_AGE_KEY", bad_key)]);
        assert!(error.starts_with("CLEF_AGENT_AGE_KEY "), "{error}");
        assert!(!error.contains("NOTREALLY"), "{error}");
        let error = message(&[("CLEF_AGENT_SOURCE", "a.json"), ("CLEF_AGENT_TOKEN", "has space")]);
        assert_eq!(error, "CLEF_AGENT_TOKEN must contain only printable ASCII characters without spaces");
        assert_eq!(
            message(&[("CLEF_AGENT_SOURCE", "a.json"), ("CLEF_AGENT_TOKEN", "t"), ("CLEF_AGENT_TOKEN_FILE", "/t")]),
            "CLEF_AGENT_TOKEN and CLEF_AGENT_TOKEN_FILE are both set: set only one of them"
        );
        assert_eq!(
            message(&[
                ("CLEF_AGENT_SOURCE", "a.json"),
                ("CLEF_AGENT_AGE_KEY", AGE_KEY),
                ("CLEF_AGENT_AGE_KEY_FILE", "/k")
            ]),
            "CLEF_AGENT_AGE_KEY and CLEF_AGENT_AGE_KEY_FILE are both set: set only one of them"
        );
    }

    #[test]
    fn verify_key_and_telemetry_url_are_checked() {
        let error = message(&[("CLEF_AGENT_SOURCE", "a.json"), ("CLEF_AGENT_VERIFY_KEY", "***")]);
        assert_eq!(
            error,
            "CLEF_AGENT_VERIFY_KEY is neither PEM nor valid base64; it takes a \
             PEM public key ('-----BEGIN PUBLIC KEY-----', as `openssl pkey -pubout` writes it) or base64 of its DER \
             SubjectPublicKeyInfo, Ed25519 or ECDSA P-256"
        );
        let error = message(&[("CLEF_AGENT_SOURCE", "a.json"), ("CLEF_AGENT_TELEMETRY_URL", "collector:4318")]);
        assert!(error.starts_with("CLEF_AGENT_TELEMETRY_URL must be an http"), "{error}");
    }

    #[test]
    fn the_token_file_mode_is_0600_or_0640_and_nothing_wider() {
        let file = ("CLEF_AGENT_TOKEN_FILE", "/run/clef/token");
        for (given, mode) in [("0600", 0o600), ("600", 0o600), ("0640", 0o640), (" 640 ", 0o640)] {
            let config = config(&[("CLEF_AGENT_SOURCE", "a.json"), file, ("CLEF_AGENT_TOKEN_FILE_MODE", given)]);
            assert_eq!(config.unwrap().token, TokenSource::File { path: "/run/clef/token".into(), mode });
        }
        for wider in ["0644", "0660", "0604", "0666", "0700", "rw-r-----", "0o640"] {
            let error = message(&[("CLEF_AGENT_SOURCE", "a.json"), file, ("CLEF_AGENT_TOKEN_FILE_MODE", wider)]);
            assert_eq!(error, format!("CLEF_AGENT_TOKEN_FILE_MODE must be 0600 (the agent's user only, the default) or 0640 (its group may read the token too), got '{wider}'"));
        }
        let error = message(&[("CLEF_AGENT_SOURCE", "a.json"), ("CLEF_AGENT_TOKEN_FILE_MODE", "0640")]);
        assert_eq!(error, "CLEF_AGENT_TOKEN_FILE_MODE is set but CLEF_AGENT_TOKEN_FILE is not: set the file it applies to, or remove the mode");
    }

    #[test]
    fn later_features_are_accepted_for_use_later() {
        let config = config(&[
            ("CLEF_AGENT_SOURCE", "a.json"),
            ("CLEF_AGENT_SOCKET", "/run/clef/agent.sock"),
            ("CLEF_AGENT_TOKEN_FILE", "/run/clef/token"),
            ("CLEF_AGENT_CACHE_PATH", "/var/cache/clef"),
            ("CLEF_AGENT_ID", "agent-7"),
        ])
        .unwrap();
        assert_eq!(config.socket, Some("/run/clef/agent.sock".into()));
        assert_eq!(config.token, TokenSource::File { path: "/run/clef/token".into(), mode: 0o600 });
        assert_eq!(config.agent_id.as_deref(), Some("agent-7"));
    }
}
