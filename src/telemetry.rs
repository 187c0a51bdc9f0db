//! Telemetry (SPEC §7): lifecycle and pipeline events as OTLP/HTTP JSON log records, posted to
//! `CLEF_AGENT_TELEMETRY_URL` in batches (every 10 s or 50 events) by one background thread,
//! from a bounded buffer, and flushed at shutdown within 2 s. Delivery failures are dropped:
//! telemetry never touches serving. Request headers come from the secrets themselves
//! (`CLEF_TELEMETRY_HEADERS`, else `CLEF_TELEMETRY_TOKEN`), so they are held as secrets.

use std::fmt::Write as _;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::decrypt::Plaintext;
use crate::http::HttpClient;
use crate::secret::Secret;
use crate::text::json_string;
use crate::url::HttpUrl;

const FLUSH_INTERVAL: Duration = Duration::from_secs(10);
const BATCH_SIZE: usize = 50;
/// Events beyond this many undelivered ones push out the oldest.
const BUFFER_LIMIT: usize = 1000;
/// Undelivered events take at most this many bytes of field text (plus [`RECORD_OVERHEAD`]
/// each): an event that would go past it is dropped and counted. Fields quote artifacts and
/// peers, so a count alone does not bound the memory a collector that is down can cost.
const BUFFER_BYTES: usize = 256 * 1024;
/// What one record costs beside its fields: its timestamp, severity and OTLP framing.
const RECORD_OVERHEAD: usize = 128;
/// The shutdown flush, and each delivery, take at most this long.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the agent stopped, for `agent.stopped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Signal,
    Error,
    LambdaShutdown,
}

/// The events of SPEC §7 with their fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    AgentStarted,
    AgentStopped { reason: StopReason, uptime_seconds: u64 },
    ArtifactRefreshed { revision: String, key_count: Option<usize>, kms_envelope: bool },
    ArtifactRevoked { revoked_at: String },
    ArtifactExpired { expires_at: String },
    FetchFailed { error: String, disk_cache_available: bool },
    CacheExpired { cache_ttl_seconds: u64, disk_cache_purged: bool },
    ArtifactInvalid { reason: &'static str, error: String },
}

enum Field {
    Text(String),
    Number(u64),
    Flag(bool),
}

impl Event {
    fn kind(&self) -> &'static str {
        match self {
            Event::AgentStarted => "agent.started",
            Event::AgentStopped { .. } => "agent.stopped",
            Event::ArtifactRefreshed { .. } => "artifact.refreshed",
            Event::ArtifactRevoked { .. } => "artifact.revoked",
            Event::ArtifactExpired { .. } => "artifact.expired",
            Event::FetchFailed { .. } => "fetch.failed",
            Event::CacheExpired { .. } => "cache.expired",
            Event::ArtifactInvalid { .. } => "artifact.invalid",
        }
    }

    fn severity(&self) -> (u8, &'static str) {
        match self {
            Event::AgentStarted | Event::AgentStopped { .. } | Event::ArtifactRefreshed { .. } => (9, "INFO"),
            Event::ArtifactRevoked { .. } | Event::ArtifactExpired { .. } | Event::FetchFailed { .. } => (13, "WARN"),
            Event::CacheExpired { .. } | Event::ArtifactInvalid { .. } => (17, "ERROR"),
        }
    }

    fn fields(&self) -> Vec<(&'static str, Field)> {
        match self {
            Event::AgentStarted => vec![("version", Field::Text(crate::VERSION.into()))],
            Event::AgentStopped { reason, uptime_seconds } => {
                let reason = match reason {
                    StopReason::Signal => "signal",
                    StopReason::Error => "error",
                    StopReason::LambdaShutdown => "lambda_shutdown",
                };
                vec![("reason", Field::Text(reason.into())), ("uptimeSeconds", Field::Number(*uptime_seconds))]
            }
            Event::ArtifactRefreshed { revision, key_count, kms_envelope } => {
                let mut fields = vec![("revision", Field::Text(revision.clone()))];
                if let Some(count) = key_count {
                    fields.push(("keyCount", Field::Number(*count as u64)));
                }
                fields.push(("kmsEnvelope", Field::Flag(*kms_envelope)));
                fields
            }
            Event::ArtifactRevoked { revoked_at } => vec![("revokedAt", Field::Text(revoked_at.clone()))],
            Event::ArtifactExpired { expires_at } => vec![("expiresAt", Field::Text(expires_at.clone()))],
            Event::FetchFailed { error, disk_cache_available } => {
                vec![("error", Field::Text(error.clone())), ("diskCacheAvailable", Field::Flag(*disk_cache_available))]
            }
            Event::CacheExpired { cache_ttl_seconds, disk_cache_purged } => vec![
                ("cacheTtlSeconds", Field::Number(*cache_ttl_seconds)),
                ("diskCachePurged", Field::Flag(*disk_cache_purged)),
            ],
            Event::ArtifactInvalid { reason, error } => {
                vec![("reason", Field::Text((*reason).into())), ("error", Field::Text(error.clone()))]
            }
        }
    }
}

/// The resource attributes of every batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resource {
    pub agent_id: String,
    pub source_type: &'static str,
    pub identity: Option<String>,
    pub environment: Option<String>,
    /// `identity` and `environment` were configured (`CLEF_AGENT_VCS_IDENTITY`/`_ENVIRONMENT`
    /// name the artifact a VCS source reads): they are what the operator set and what
    /// dashboards filter on, so an artifact does not replace them (the TypeScript agent's rule).
    pub configured_names: bool,
}

impl Resource {
    /// Takes the names a newly loaded artifact gives, unless the configuration gave them.
    pub fn artifact_loaded(&mut self, identity: &str, environment: &str) {
        if !self.configured_names {
            self.identity = Some(identity.to_string());
            self.environment = Some(environment.to_string());
        }
    }
}

struct Record {
    time_unix_nano: u128,
    event: Event,
}

impl Record {
    /// The bytes this record is charged in the buffer.
    fn size(&self) -> usize {
        let field =
            |(key, value): &(&str, Field)| key.len() + if let Field::Text(text) = value { text.len() } else { 20 };
        RECORD_OVERHEAD + self.event.fields().iter().map(field).sum::<usize>()
    }
}

/// The undelivered records, bounded by [`BUFFER_LIMIT`] and [`BUFFER_BYTES`].
#[derive(Default)]
struct Buffer {
    records: Vec<Record>,
    bytes: usize,
    /// Events dropped since the last delivery.
    dropped: u64,
}

impl Buffer {
    fn push(&mut self, record: Record) {
        let size = record.size();
        if self.bytes + size > BUFFER_BYTES {
            self.dropped += 1;
            return;
        }
        if self.records.len() >= BUFFER_LIMIT {
            let oldest = self.records.remove(0);
            self.bytes -= oldest.size();
            self.dropped += 1;
        }
        self.bytes += size;
        self.records.push(record);
    }

    /// Everything buffered and the count of events dropped meanwhile; empties the buffer.
    fn take(&mut self) -> (Vec<Record>, u64) {
        let taken = (std::mem::take(&mut self.records), self.dropped);
        (self.bytes, self.dropped) = (0, 0);
        taken
    }
}

/// Renders one OTLP/HTTP JSON logs request.
fn render(resource: &Resource, records: &[Record]) -> String {
    let mut body = String::from(r#"{"resourceLogs":[{"resource":{"attributes":["#);
    let mut attributes = vec![
        ("service.name", Field::Text("clef-agent".into())),
        ("service.version", Field::Text(crate::VERSION.into())),
        ("clef.agent.id", Field::Text(resource.agent_id.clone())),
    ];
    if let Some(identity) = &resource.identity {
        attributes.push(("clef.identity", Field::Text(identity.clone())));
    }
    if let Some(environment) = &resource.environment {
        attributes.push(("clef.environment", Field::Text(environment.clone())));
    }
    attributes.push(("clef.source.type", Field::Text(resource.source_type.into())));
    push_attributes(&mut body, attributes.iter().map(|(key, value)| (key.to_string(), value)));
    let _ = write!(
        body,
        r#"]}},"scopeLogs":[{{"scope":{{"name":"clef.runtime","version":{}}},"logRecords":["#,
        json_string(crate::VERSION)
    );
    for (index, record) in records.iter().enumerate() {
        if index > 0 {
            body.push(',');
        }
        let (number, text) = record.event.severity();
        let kind = record.event.kind();
        let _ = write!(
            body,
            r#"{{"timeUnixNano":"{}","severityNumber":{number},"severityText":"{text}","body":{{"stringValue":"{kind}"}},"attributes":["#,
            record.time_unix_nano
        );
        let name = Field::Text(format!("clef.{kind}"));
        let fields = record.event.fields();
        let attributes = std::iter::once(("event.name".to_string(), &name))
            .chain(fields.iter().map(|(key, value)| (format!("clef.{key}"), value)));
        push_attributes(&mut body, attributes);
        body.push_str("]}");
    }
    body.push_str("]}]}]}");
    body
}

fn push_attributes<'a>(body: &mut String, attributes: impl Iterator<Item = (String, &'a Field)>) {
    for (index, (key, value)) in attributes.enumerate() {
        if index > 0 {
            body.push(',');
        }
        let value = match value {
            Field::Text(text) => format!(r#"{{"stringValue":{}}}"#, json_string(text)),
            Field::Number(number) => format!(r#"{{"intValue":"{number}"}}"#),
            Field::Flag(flag) => format!(r#"{{"boolValue":{flag}}}"#),
        };
        let _ = write!(body, r#"{{"key":{},"value":{value}}}"#, json_string(&key));
    }
}

/// The telemetry request headers named by the secrets: `CLEF_TELEMETRY_HEADERS` (`k=v,k2=v2`),
/// else `CLEF_TELEMETRY_TOKEN` as a bearer token; the first match in any namespace, or among a flat plaintext's keys.
pub fn headers_from(plaintext: &Plaintext) -> Vec<(String, Secret)> {
    let find = |wanted: &str| plaintext.entries().find(|(key, _)| *key == wanted).map(|(_, value)| value);
    if let Some(list) = find("CLEF_TELEMETRY_HEADERS") {
        return list
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(name, value)| (name.trim().to_string(), Secret::new(value.trim().to_string())))
            .filter(|(name, _)| !name.is_empty())
            .collect();
    }
    find("CLEF_TELEMETRY_TOKEN")
        .map(|token| vec![("Authorization".to_string(), Secret::new(format!("Bearer {token}")))])
        .unwrap_or_default()
}

struct Shared {
    buffer: Buffer,
    resource: Resource,
    headers: Vec<(String, Secret)>,
    stopping: bool,
}

struct Inner {
    url: String,
    host: String,
    http: HttpClient,
    shared: Mutex<Shared>,
    wake: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A handle to telemetry; cheap to clone. Without a URL every call does nothing.
#[derive(Clone, Default)]
pub struct Telemetry {
    inner: Option<Arc<Inner>>,
    sender: Option<Arc<Mutex<Option<JoinHandle<()>>>>>,
}

impl Telemetry {
    /// Starts the sender thread for `url`.
    pub fn start(url: &HttpUrl, resource: Resource, http: HttpClient) -> Telemetry {
        let inner = Arc::new(Inner {
            url: url.full.clone(),
            host: url.host.clone(),
            http,
            shared: Mutex::new(Shared { buffer: Buffer::default(), resource, headers: Vec::new(), stopping: false }),
            wake: Condvar::new(),
        });
        let worker = Arc::clone(&inner);
        let sender = std::thread::Builder::new().name("telemetry".into()).spawn(move || send_loop(&worker)).ok();
        Telemetry { inner: Some(inner), sender: Some(Arc::new(Mutex::new(sender))) }
    }

    /// Queues an event.
    pub fn emit(&self, event: Event) {
        let Some(inner) = &self.inner else { return };
        let time_unix_nano = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_nanos());
        let mut shared = inner.lock();
        shared.buffer.push(Record { time_unix_nano, event });
        if shared.buffer.records.len() >= BATCH_SIZE {
            inner.wake.notify_one();
        }
    }

    /// Records what a newly loaded artifact says about itself and its telemetry headers.
    pub fn artifact_loaded(&self, identity: &str, environment: &str, headers: Vec<(String, Secret)>) {
        let Some(inner) = &self.inner else { return };
        let mut shared = inner.lock();
        shared.resource.artifact_loaded(identity, environment);
        shared.headers = headers;
    }

    /// Forgets the headers the secrets gave: called on every wipe (revocation, expiry, TTL), so
    /// a revoked or expired secret never authenticates another export.
    pub fn secrets_wiped(&self) {
        let Some(inner) = &self.inner else { return };
        inner.lock().headers.clear();
    }

    /// Sends what is buffered and stops the sender, waiting at most `timeout`.
    pub fn shutdown(&self, timeout: Duration) {
        let (Some(inner), Some(sender)) = (&self.inner, &self.sender) else { return };
        inner.lock().stopping = true;
        inner.wake.notify_one();
        let deadline = Instant::now() + timeout;
        let handle = sender.lock().ok().and_then(|mut sender| sender.take());
        if let Some(handle) = handle {
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

fn send_loop(inner: &Inner) {
    loop {
        let mut shared = inner.lock();
        let deadline = Instant::now() + FLUSH_INTERVAL;
        while !shared.stopping && shared.buffer.records.len() < BATCH_SIZE {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
            shared = inner
                .wake
                .wait_timeout(shared, left)
                .map_or_else(|poisoned| poisoned.into_inner().0, |(guard, _)| guard);
        }
        let stopping = shared.stopping;
        let (batch, dropped) = shared.buffer.take();
        let resource = shared.resource.clone();
        let headers = shared.headers.clone();
        drop(shared);
        if dropped > 0 {
            crate::log::error(&format!(
                "telemetry: dropped {dropped} events: more than {BUFFER_LIMIT} events or {} KiB waited for \
                 delivery (is CLEF_AGENT_TELEMETRY_URL reachable?)",
                BUFFER_BYTES / 1024
            ));
        }
        if !batch.is_empty() {
            deliver(inner, &resource, &headers, &batch);
        }
        if stopping {
            return;
        }
    }
}

/// One POST; any failure is dropped.
fn deliver(inner: &Inner, resource: &Resource, headers: &[(String, Secret)], batch: &[Record]) {
    let mut request = inner
        .http
        .for_host(&inner.host)
        .post(&inner.url)
        .config()
        .timeout_global(Some(FLUSH_TIMEOUT))
        .build()
        .header("Content-Type", "application/json");
    for (name, value) in headers {
        request = request.header(name.as_str(), value.expose());
    }
    let _ = request.send(render(resource, batch).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_names_outlive_every_artifact_and_others_follow_it() {
        let mut configured = Resource {
            identity: Some("payments".into()),
            environment: Some("production".into()),
            configured_names: true,
            ..Resource::default()
        };
        configured.artifact_loaded("api", "staging");
        assert_eq!(
            (configured.identity.as_deref(), configured.environment.as_deref()),
            (Some("payments"), Some("production"))
        );
        let mut from_artifact = Resource::default();
        from_artifact.artifact_loaded("api", "staging");
        from_artifact.artifact_loaded("api", "prod");
        assert_eq!(
            (from_artifact.identity.as_deref(), from_artifact.environment.as_deref()),
            (Some("api"), Some("prod"))
        );
    }

    #[test]
    fn renders_the_otlp_json_shape() {
        let resource = Resource {
            agent_id: "agent-1".into(),
            source_type: "file",
            identity: Some("api".into()),
            environment: Some("prod".into()),
            configured_names: false,
        };
        let records = [
            Record { time_unix_nano: 17, event: Event::AgentStarted },
            Record {
                time_unix_nano: 18,
                event: Event::ArtifactRefreshed { revision: "r1".into(), key_count: Some(3), kms_envelope: false },
            },
        ];
        let body: serde_json::Value = serde_json::from_str(&render(&resource, &records)).unwrap();
        let resource_logs = &body["resourceLogs"][0];
        assert_eq!(
            resource_logs["resource"]["attributes"][0],
            serde_json::json!({"key":"service.name","value":{"stringValue":"clef-agent"}})
        );
        assert_eq!(
            resource_logs["resource"]["attributes"][5],
            serde_json::json!({"key":"clef.source.type","value":{"stringValue":"file"}})
        );
        let scope = &resource_logs["scopeLogs"][0];
        assert_eq!(scope["scope"]["name"], "clef.runtime");
        let refreshed = &scope["logRecords"][1];
        assert_eq!(refreshed["timeUnixNano"], "18");
        assert_eq!((refreshed["severityNumber"].as_u64(), refreshed["severityText"].as_str()), (Some(9), Some("INFO")));
        assert_eq!(refreshed["body"]["stringValue"], "artifact.refreshed");
        assert_eq!(
            refreshed["attributes"],
            serde_json::json!([
                {"key":"event.name","value":{"stringValue":"clef.artifact.refreshed"}},
                {"key":"clef.revision","value":{"stringValue":"r1"}},
                {"key":"clef.keyCount","value":{"intValue":"3"}},
                {"key":"clef.kmsEnvelope","value":{"boolValue":false}},
            ])
        );
    }

    #[test]
    fn the_buffer_is_bounded_in_bytes_and_counts_what_it_drops() {
        let mut buffer = Buffer::default();
        let failed = |error: String| Record {
            time_unix_nano: 1,
            event: Event::FetchFailed { error, disk_cache_available: false },
        };
        for _ in 0..200 {
            buffer.push(failed("e".repeat(4096)));
        }
        assert!(buffer.bytes <= BUFFER_BYTES, "{} bytes", buffer.bytes);
        let kept = buffer.records.len();
        assert_eq!(kept, BUFFER_BYTES / failed("e".repeat(4096)).size());
        assert_eq!(buffer.dropped, 200 - kept as u64);
        buffer.push(Record { time_unix_nano: 2, event: Event::AgentStarted });
        assert_eq!(buffer.records.len(), kept + 1, "a small event still fits");
        let (taken, dropped) = buffer.take();
        assert_eq!((taken.len(), dropped), (kept + 1, 200 - kept as u64));
        assert_eq!((buffer.bytes, buffer.dropped), (0, 0));
    }

    #[test]
    fn the_buffer_pushes_out_the_oldest_beyond_its_event_limit() {
        let mut buffer = Buffer::default();
        for time_unix_nano in 0..BUFFER_LIMIT as u128 + 5 {
            buffer.push(Record { time_unix_nano, event: Event::AgentStarted });
        }
        assert_eq!((buffer.records.len(), buffer.dropped), (BUFFER_LIMIT, 5));
        assert_eq!(buffer.records[0].time_unix_nano, 5);
    }

    #[test]
    fn severities_follow_the_spec() {
        assert_eq!(Event::ArtifactExpired { expires_at: String::new() }.severity(), (13, "WARN"));
        assert_eq!(Event::CacheExpired { cache_ttl_seconds: 1, disk_cache_purged: false }.severity(), (17, "ERROR"));
        assert_eq!(Event::ArtifactInvalid { reason: "integrity", error: String::new() }.severity(), (17, "ERROR"));
    }

    #[test]
    fn a_wipe_forgets_the_headers_the_secrets_gave() {
        let url = HttpUrl::parse("http://127.0.0.1:9/v1/logs").unwrap();
        let telemetry = Telemetry::start(&url, Resource::default(), HttpClient::default());
        let token = vec![("Authorization".to_string(), Secret::new("Bearer revoked".into()))];
        telemetry.artifact_loaded("api", "prod", token);
        let headers = || telemetry.inner.as_ref().unwrap().lock().headers.len();
        assert_eq!(headers(), 1);
        telemetry.secrets_wiped();
        assert_eq!(headers(), 0);
        telemetry.shutdown(Duration::ZERO);
    }

    #[test]
    fn headers_come_from_the_secrets() {
        let plaintext =
            Plaintext::parse(br#"{"a":{"X":"1"},"obs":{"CLEF_TELEMETRY_HEADERS":"x-api-key=k1, x-team = t"}}"#)
                .unwrap();
        let headers = headers_from(&plaintext);
        let headers: Vec<_> = headers.iter().map(|(name, value)| (name.as_str(), value.expose())).collect();
        assert_eq!(headers, [("x-api-key", "k1"), ("x-team", "t")]);
        let plaintext = Plaintext::parse(br#"{"obs":{"CLEF_TELEMETRY_TOKEN":"tok"}}"#).unwrap();
        assert_eq!(headers_from(&plaintext)[0].1.expose(), "Bearer tok");
        assert!(headers_from(&Plaintext::parse(b"{}").unwrap()).is_empty());
    }
}
