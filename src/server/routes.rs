//! The HTTP API of SPEC §6 as a function from a request's method, target and headers to a
//! reply value. Guards run in the order the spec gives: Host, method, bearer token, proxy
//! headers. No sockets here, so nearly all of the API is tested without a server.

use std::borrow::Cow;
use std::io::Write as _;
use std::sync::Arc;

use super::accept::prefers_json;
use crate::decrypt::DecryptionKeys;
use crate::refresh::{self, Change, Refresher};
use crate::secret::{constant_time_eq, Secret, SecretBytes};
use crate::snapshot::{error_body, LiveSnapshot, Part, Refusal, SealedArtifact, Served, Snapshot, Wipe};
use crate::text::json_string;
use crate::url::percent_decode;

/// The parts of an HTTP request the API looks at.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The request target as sent (`/v1/secrets?x=1`).
    pub target: &'a str,
    /// Every `Host` header (a request must carry exactly one).
    pub hosts: &'a [&'a str],
    pub authorization: Option<&'a str>,
    /// The request carries `X-Forwarded-For` or `Forwarded`.
    pub forwarded: bool,
    /// Every `Accept` header (one comma-separated list, RFC 9110 §5.3).
    pub accept: &'a [&'a str],
}

/// What a response carries.
pub enum Body {
    Json(String),
    /// A body rendered into the thread's own buffer (`/v1/health`).
    Reused(Reused),
    Static(&'static str),
    /// A body rendered once and shared by every request that gets it ([`Refusal`]).
    Shared(Arc<str>),
    /// A part of a snapshot, served from the shared snapshot without copying it.
    Snapshot(Arc<Snapshot>, Part),
    /// Secret bytes rendered for this request alone (`{"value":…}`); zeroed when dropped.
    Rendered(SecretBytes),
}

impl Body {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Body::Json(text) => text.as_bytes(),
            Body::Reused(reused) => &reused.0,
            Body::Static(text) => text.as_bytes(),
            Body::Shared(text) => text.as_bytes(),
            Body::Snapshot(snapshot, part) => snapshot.body(*part),
            Body::Rendered(bytes) => bytes,
        }
    }
}

/// A body rendered into a buffer the thread keeps from one reply to the next, so that rendering
/// it allocates nothing once the thread has rendered one. For bodies with nothing secret in them
/// (`/v1/health`): the buffer is not wiped.
pub struct Reused(Vec<u8>);

thread_local! {
    static REUSED: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Reused {
    fn render(render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> Reused {
        let mut buffer = REUSED.take();
        buffer.clear();
        // writing into a `Vec` fails only when memory runs out, which aborts first
        let _ = render(&mut buffer);
        Reused(buffer)
    }
}

impl Drop for Reused {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.0);
        // a buffer grown by an unusually long revision is not kept
        if buffer.capacity() <= 1024 {
            let _ = REUSED.try_with(|kept| kept.set(buffer));
        }
    }
}

pub const JSON: &str = "application/json; charset=utf-8";
pub const TEXT: &str = "text/plain; charset=utf-8";

/// A response value: status, body and the headers that vary by route.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Body,
    /// `Cache-Control: no-store` (every `/v1/secrets…` and `/v1/keys` answer).
    pub no_store: bool,
    /// Route-specific headers such as `Allow` or `WWW-Authenticate`.
    pub headers: Vec<(&'static str, &'static str)>,
}

impl Reply {
    fn json(status: u16, body: Body) -> Reply {
        Reply { status, content_type: JSON, body, no_store: false, headers: Vec::new() }
    }

    fn error(status: u16, error: &str, detail: Option<&str>) -> Reply {
        Reply::json(status, Body::Json(error_body(error, detail)))
    }

    fn refused(refusal: &Refusal) -> Reply {
        Reply::json(503, Body::Shared(refusal.body()))
    }

    /// The answer when a handler panicked.
    pub fn internal_error() -> Reply {
        Reply { no_store: true, ..Reply::json(500, Body::Static(r#"{"error":"Internal server error"}"#)) }
    }

    fn with_header(mut self, name: &'static str, value: &'static str) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// Everything a request needs: the served state, the refresher for expired caches, the keys
/// for JIT decryption and the bearer token.
pub struct Api {
    pub cell: Arc<LiveSnapshot>,
    pub refresher: Arc<Refresher>,
    pub keys: Arc<DecryptionKeys>,
    pub token: Secret,
}

/// A route, with names borrowed from the request target unless they had to be decoded.
enum Route<'a> {
    Health,
    Ready,
    Secrets,
    Keys,
    Namespace(Cow<'a, str>),
    Value(Cow<'a, str>, Cow<'a, str>),
    /// `POST /v1/refresh`: refresh now (the only route that is not GET or HEAD).
    Refresh,
}

impl Api {
    /// Answers one request at `now_ms`.
    pub fn handle(&self, request: &Request<'_>, now_ms: u64) -> Reply {
        let reply = self.route(request, now_ms);
        let secret_path =
            matches!(path_of(request.target), p if p.starts_with("/v1/secrets") || p.starts_with("/v1/keys"));
        Reply { no_store: reply.no_store || secret_path, ..reply }
    }

    fn route(&self, request: &Request<'_>, now_ms: u64) -> Reply {
        if !host_is_loopback(request.hosts) {
            return Reply::error(403, "Forbidden: invalid Host header", None);
        }
        let route = parse_route(path_of(request.target));
        let (allowed, allow) = match route {
            Ok(Some(Route::Refresh)) => (request.method == "POST", "POST"),
            _ => (request.method == "GET" || request.method == "HEAD", "GET, HEAD"),
        };
        if !allowed {
            return Reply::error(405, "Method not allowed", None).with_header("Allow", allow);
        }
        let route = match route {
            Ok(Some(route)) => route,
            Ok(None) => return Reply::error(404, "Not found", None),
            Err(detail) => return Reply::error(400, "Bad request", Some(&detail)),
        };
        match route {
            Route::Health => return self.health(now_ms),
            Route::Ready => return self.ready(now_ms),
            _ => {}
        }
        if !self.authorized(request.authorization) {
            return Reply::error(401, "Unauthorized", None).with_header("WWW-Authenticate", "Bearer");
        }
        if request.forwarded {
            return Reply::error(403, "Forbidden: proxied requests are not accepted", None);
        }
        if let Route::Refresh = route {
            return self.refresh_now(now_ms);
        }
        let snapshot = match self.snapshot_for_request(now_ms) {
            Ok(snapshot) => snapshot,
            Err(reply) => return reply,
        };
        let part = match &route {
            Route::Secrets => Some(Part::Secrets),
            Route::Keys => Some(Part::Keys),
            Route::Namespace(name) => snapshot.namespace(name).or_else(|| snapshot.flat_value(name)),
            Route::Value(namespace, key) => snapshot.value(namespace, key),
            Route::Health | Route::Ready | Route::Refresh => None,
        };
        match part {
            Some(part @ (Part::Value(..) | Part::Flat(_))) => value_reply(snapshot, part, request.accept),
            Some(part) => Reply::json(200, Body::Snapshot(snapshot, part)),
            None => Reply::error(404, "Secret not found", None),
        }
    }

    fn authorized(&self, authorization: Option<&str>) -> bool {
        let Some((scheme, token)) = authorization.and_then(|value| value.trim().split_once(' ')) else {
            return false;
        };
        scheme.eq_ignore_ascii_case("bearer")
            && constant_time_eq(token.trim().as_bytes(), self.token.expose().as_bytes())
    }

    /// `POST /v1/refresh`: the refresh's outcome — the revision served after it and whether it
    /// loaded a new artifact — or its failure as other routes answer one (503, JSON).
    fn refresh_now(&self, now_ms: u64) -> Reply {
        match self.refresher.refresh_on_demand(now_ms) {
            Ok(change) => {
                let revision = self.cell.current().revision().map_or("null".to_string(), json_string);
                let changed = matches!(change, Change::Loaded { .. });
                let body = format!(r#"{{"revision":{revision},"changed":{changed}}}"#);
                Reply { no_store: true, ..Reply::json(200, Body::Json(body)) }
            }
            Err(refusal) => Reply { no_store: true, ..Reply::refused(&refusal) },
        }
    }

    fn health(&self, now_ms: u64) -> Reply {
        // A TTL that passed wipes here at the latest, so `expired` and what is served agree.
        self.refresher.wipe_if_expired(now_ms);
        let served = self.cell.current();
        let (mode, expired) = (self.cell.mode.name(), self.cell.is_expired(now_ms));
        let last_refresh_at = self.cell.last_refresh_at_ms();
        let body = Reused::render(|out| {
            write!(out, r#"{{"status":"ok","mode":"{mode}","revision":"#)?;
            match served.revision() {
                Some(revision) => serde_json::to_writer(&mut *out, revision)?,
                None => out.write_all(b"null")?,
            }
            match last_refresh_at {
                Some(ms) => write!(out, r#","lastRefreshAt":{ms}"#)?,
                None => out.write_all(br#","lastRefreshAt":null"#)?,
            }
            write!(out, r#","expired":{expired}}}"#)
        });
        Reply::json(200, Body::Reused(body))
    }

    fn ready(&self, now_ms: u64) -> Reply {
        let served = self.cell.current();
        let reason = match &*served {
            Served::NotLoaded => Some("not_loaded"),
            Served::Wiped(Wipe::CacheExpired) => Some("cache_expired"),
            Served::Wiped(Wipe::Revoked(_)) => Some("revoked"),
            Served::Wiped(Wipe::ArtifactExpired(_)) => Some("artifact_expired"),
            _ if artifact_expired(&served, now_ms).is_some() => Some("artifact_expired"),
            _ if self.cell.is_expired(now_ms) => Some("cache_expired"),
            _ => None,
        };
        match reason {
            None => Reply::json(200, Body::Static(r#"{"ready":true}"#)),
            Some(reason) => Reply::json(503, Body::Json(format!(r#"{{"ready":false,"reason":"{reason}"}}"#))),
        }
    }

    /// The snapshot to answer from: refreshed first when the cache expired (SPEC §4), decrypted
    /// now in JIT mode.
    fn snapshot_for_request(&self, now_ms: u64) -> Result<Arc<Snapshot>, Reply> {
        let mut served = self.cell.current();
        // Only a cache that aged out is refreshed here; a revoked or expired artifact is
        // answered as such until the poller finds a new one.
        let aged_out = matches!(*served, Served::Cached(_) | Served::Wiped(Wipe::CacheExpired));
        if aged_out && self.cell.is_expired(now_ms) {
            if let Err(refusal) = self.refresher.refresh_for_request(now_ms) {
                return Err(Reply::refused(&refusal));
            }
            served = self.cell.current();
        }
        if let Some(message) = artifact_expired(&served, now_ms) {
            return Err(Reply::error(503, "Artifact expired", Some(&message)));
        }
        match &*served {
            Served::Cached(snapshot) => Ok(Arc::clone(snapshot)),
            Served::Jit(sealed) => self.decrypt_now(sealed),
            Served::NotLoaded => Err(Reply::error(503, "Secrets not yet loaded", None)),
            Served::Wiped(Wipe::CacheExpired) => {
                Err(Reply::error(503, "Refresh failed", Some("no successful refresh within CLEF_AGENT_CACHE_TTL")))
            }
            Served::Wiped(Wipe::Revoked(refusal) | Wipe::ArtifactExpired(refusal)) => Err(Reply::refused(refusal)),
        }
    }

    /// JIT mode: the sealed artifact opened for this request by the refresh pipeline.
    fn decrypt_now(&self, sealed: &SealedArtifact) -> Result<Arc<Snapshot>, Reply> {
        refresh::open_for_request(sealed, &self.keys)
            .map_err(|error| Reply::error(503, "Decryption failed", Some(&error.to_string())))
    }
}

/// One value: its bytes as `text/plain`, or `{"value":"…"}` when `Accept` prefers JSON (what
/// clef's agent guide shows). The JSON is rendered per request, as only some clients ask for
/// it; the text is served from the snapshot without a copy.
fn value_reply(snapshot: Arc<Snapshot>, part: Part, accept: &[&str]) -> Reply {
    if prefers_json(accept) {
        if let Some(body) = snapshot.value_json(part) {
            return Reply::json(200, Body::Rendered(body));
        }
    }
    Reply { content_type: TEXT, ..Reply::json(200, Body::Snapshot(snapshot, part)) }
}

/// The message of an artifact whose `expiresAt` has passed, even before the poller wiped it.
fn artifact_expired(served: &Served, now_ms: u64) -> Option<String> {
    served
        .expires_at()
        .filter(|expiry| expiry.epoch_ms <= now_ms as i64)
        .map(|expiry| format!("Artifact expired at {}", expiry.text))
}

/// Exactly one `Host` header naming a loopback name, with or without a port.
fn host_is_loopback(hosts: &[&str]) -> bool {
    let [host] = hosts else { return false };
    let host = host.trim();
    let (name, port) = match host.strip_prefix("[::1]") {
        Some(rest) => ("[::1]", rest),
        None => host.find(':').map_or((host, ""), |colon| host.split_at(colon)),
    };
    (port.is_empty() || port_suffix_is_valid(port))
        && ["127.0.0.1", "localhost", "[::1]"].iter().any(|loopback| name.eq_ignore_ascii_case(loopback))
}

/// `:` and a port of decimal digits (RFC 3986 allows it empty); `u16::from_str` alone would
/// also take a sign (`:+80`).
fn port_suffix_is_valid(suffix: &str) -> bool {
    suffix.strip_prefix(':').is_some_and(|port| {
        port.is_empty() || (port.bytes().all(|byte| byte.is_ascii_digit()) && port.parse::<u16>().is_ok())
    })
}

/// The path of a request target, without its query string.
fn path_of(target: &str) -> &str {
    target.split(['?', '#']).next().unwrap_or_default()
}

/// Maps a path to a route: `Ok(None)` for unknown paths, `Err` for undecodable ones.
fn parse_route(path: &str) -> Result<Option<Route<'_>>, String> {
    let path = path.strip_suffix('/').filter(|trimmed| !trimmed.is_empty()).unwrap_or(path);
    let Some(rest) = path.strip_prefix("/v1/") else { return Ok(None) };
    let mut segments = rest.split('/');
    let segments = [segments.next(), segments.next(), segments.next(), segments.next()];
    Ok(match segments {
        [Some("health"), None, ..] => Some(Route::Health),
        [Some("ready"), None, ..] => Some(Route::Ready),
        [Some("secrets"), None, ..] => Some(Route::Secrets),
        [Some("keys"), None, ..] => Some(Route::Keys),
        [Some("refresh"), None, ..] => Some(Route::Refresh),
        [Some("secrets"), Some(name), None, _] if !name.is_empty() => Some(Route::Namespace(decode(name)?)),
        [Some("secrets"), Some(namespace), Some(key), None] if !namespace.is_empty() && !key.is_empty() => {
            Some(Route::Value(decode(namespace)?, decode(key)?))
        }
        _ => None,
    })
}

/// A path segment, percent-decoded; borrowed when it has no escape (the common case).
fn decode(segment: &str) -> Result<Cow<'_, str>, String> {
    match segment.contains('%') {
        false => Ok(Cow::Borrowed(segment)),
        true => percent_decode(segment).map(Cow::Owned),
    }
}

#[cfg(test)]
mod tests;
