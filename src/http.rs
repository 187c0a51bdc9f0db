//! The agent's outgoing HTTP, configured explicitly in one place (ureq 3 defaults every timeout
//! to none): connect and whole-request timeouts, redirects (see [`check_redirect`]), `User-Agent:
//! clef-agent/<version>`, proxies from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` — except that
//! loopback addresses (the Lambda API, a local collector) are always reached directly, and that
//! a source GET of a plain `http://` URL is sent to the proxy in absolute form (see
//! [`HttpClient::get`]) rather than through a `CONNECT` tunnel — and TLS
//! with the bundled web PKI roots, so it works in a scratch image, plus the certificates of
//! `SSL_CERT_FILE` when it is set (added to the bundled roots, not replacing them).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod forward;

use base64::Engine;
use ureq::config::Config;
use ureq::http::Uri;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
use ureq::typestate::WithoutBody;
use ureq::unversioned::resolver::DefaultResolver;
use ureq::{Agent, Proxy, ProxyProtocol, RequestBuilder};

use crate::url::HttpUrl;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Redirects a source GET follows (SPEC §4); every other call follows none.
pub const MAX_REDIRECTS: u32 = 5;

/// HTTP agents for the two kinds of destination. Cheap to clone (the agents share their
/// connection pools).
#[derive(Clone)]
pub struct HttpClient {
    direct: Agent,
    proxied: Agent,
    /// No whole-request timeout: for the Lambda API's `event/next`, which blocks until the
    /// next event.
    long_poll: Agent,
    /// The environment's proxy, which `proxied` uses.
    proxy: Option<Proxy>,
    /// For plain-http GETs through an HTTP proxy, in absolute form (see [`HttpClient::get`]).
    forwarding: Option<Agent>,
}

impl Default for HttpClient {
    /// The bundled web PKI roots only.
    fn default() -> Self {
        HttpClient::with_roots(RootCerts::WebPki)
    }
}

impl HttpClient {
    /// The client for this process: bundled roots, plus the PEM certificates in
    /// `ssl_cert_file` (the `SSL_CERT_FILE` variable) when given.
    pub fn new(ssl_cert_file: Option<&Path>) -> Result<HttpClient, CertFileError> {
        let Some(path) = ssl_cert_file else { return Ok(HttpClient::default()) };
        let pem = std::fs::read(path)
            .map_err(|error| CertFileError::Unreadable { path: path.to_path_buf(), cause: Arc::new(error) })?;
        let mut roots: Vec<Certificate<'static>> =
            webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().map(|der| Certificate::from_der(der).to_owned()).collect();
        let bundled = roots.len();
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(PemItem::Certificate(certificate)) => roots.push(certificate),
                Ok(_) => {}
                Err(error) => return Err(CertFileError::NotPem { path: path.to_path_buf(), cause: Arc::new(error) }),
            }
        }
        if roots.len() == bundled {
            return Err(CertFileError::NoCertificate { path: path.to_path_buf() });
        }
        Ok(HttpClient::with_roots(RootCerts::from(roots)))
    }

    fn with_roots(roots: RootCerts) -> HttpClient {
        let tls = TlsConfig::builder().root_certs(roots).build();
        let proxy = Proxy::try_from_env();
        let forwarding = proxy.clone().filter(|proxy| proxy.protocol() == ProxyProtocol::Http).map(|proxy| {
            let config = config(Some(proxy), Some(REQUEST_TIMEOUT), tls.clone());
            Agent::with_parts(config, forward::ForwardingConnector, DefaultResolver::default())
        });
        HttpClient {
            direct: config(None, Some(REQUEST_TIMEOUT), tls.clone()).into(),
            proxied: config(proxy.clone(), Some(REQUEST_TIMEOUT), tls.clone()).into(),
            long_poll: config(None, None, tls).into(),
            proxy,
            forwarding,
        }
    }

    /// A GET of `url` on the agent for its host (see [`HttpClient::for_host`]), except that a
    /// plain `http://` URL that goes through an `http://` proxy is sent to the proxy in
    /// absolute form, `GET http://host/path HTTP/1.1` (RFC 9112 §3.2.2), as curl does, with the
    /// proxy's credentials in `Proxy-Authorization`. ureq 3 alone would open a `CONNECT` tunnel
    /// for it, which proxies such as Squid refuse for any port but 443; only `https://` URLs
    /// (and any URL through an `https://` or SOCKS proxy) are tunnelled.
    pub fn get(&self, url: &HttpUrl) -> Result<RequestBuilder<WithoutBody>, InvalidUrl> {
        let target: Uri = url.full.parse().map_err(|_| InvalidUrl { redacted: url.redacted() })?;
        match (&self.forwarding, &self.proxy) {
            (Some(forwarding), Some(proxy))
                if url.scheme == "http" && !goes_direct(&url.host) && !proxy.is_no_proxy(&target) =>
            {
                let mut request = forwarding.get(target);
                if proxy.username().is_some() || proxy.password().is_some() {
                    let user = proxy.username().unwrap_or_default();
                    let credentials = basic(&format!("{user}:{}", proxy.password().unwrap_or_default()));
                    request = request.header("Proxy-Authorization", credentials.as_str());
                }
                Ok(request)
            }
            _ => Ok(self.for_host(&url.host).get(target)),
        }
    }

    /// The agent for `host`: direct for loopback and link-local addresses (the Lambda API, a
    /// local collector, the container and instance metadata endpoints) and the cloud metadata
    /// hosts, else through the environment's proxy if one is set.
    pub fn for_host(&self, host: &str) -> &Agent {
        if goes_direct(host) {
            &self.direct
        } else {
            &self.proxied
        }
    }

    /// The agent for the host of `url` (see [`HttpClient::for_host`]).
    pub fn for_url(&self, url: &str) -> &Agent {
        let host = HttpUrl::parse(url).map(|url| url.host).unwrap_or_default();
        self.for_host(&host)
    }

    /// The agent for a cloud metadata or identity endpoint (instance metadata, container
    /// credentials, managed identity), at whatever address the configuration gives it: always
    /// direct. Such endpoints are local to the machine or pod and answer with credentials over
    /// plain http, which a proxy would see (SPEC §11).
    pub fn metadata(&self) -> &Agent {
        &self.direct
    }

    /// A direct agent without a whole-request timeout.
    pub fn long_poll(&self) -> &Agent {
        &self.long_poll
    }
}

/// Loopback and link-local addresses and the cloud metadata hosts: never through a proxy.
fn goes_direct(host: &str) -> bool {
    is_loopback(host) || is_link_local(host) || is_metadata_host(host)
}

/// `Basic <base64>` of `user:password`, zeroed on drop.
fn basic(credentials: &str) -> zeroize::Zeroizing<String> {
    zeroize::Zeroizing::new(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials)))
}

fn config(proxy: Option<ureq::Proxy>, request_timeout: Option<Duration>, tls: TlsConfig) -> Config {
    Config::builder()
        .tls_config(tls)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(request_timeout)
        // ureq would follow a redirect to any origin, dropping only `Authorization` and
        // `Cookie`: our other credential headers (PRIVATE-TOKEN, X-Amz-Security-Token,
        // X-IDENTITY-HEADER, telemetry headers) would go along, https→http included. So no
        // agent follows redirects; a source GET follows them itself, after check_redirect.
        .max_redirects(0)
        .user_agent(format!("clef-agent/{}", crate::VERSION))
        .http_status_as_error(false)
        .proxy(proxy)
        .build()
}

/// Whether a request may follow a redirect from `from` to `to` (SPEC §11): never from https to
/// http, and a request that carries credentials (a token header, a signature, user-info) only
/// within its origin — same scheme, host and port — so a credential never reaches a server the
/// configuration did not name. Returns why not, naming the Location's origin.
pub fn check_redirect(from: &HttpUrl, to: &HttpUrl, credentialed: bool) -> Result<(), RedirectRefused> {
    if from.scheme == "https" && to.scheme == "http" {
        return Err(RedirectRefused::ToPlainHttp { to: to.origin() });
    }
    if credentialed && from.origin() != to.origin() {
        return Err(RedirectRefused::ToAnotherOrigin { to: to.origin(), from: from.origin() });
    }
    Ok(())
}

/// Why [`check_redirect`] refused a redirect; origins as `scheme://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedirectRefused {
    /// From https to plain http.
    ToPlainHttp { to: String },
    /// A credentialed request to an origin other than its own.
    ToAnotherOrigin { to: String, from: String },
}

impl fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedirectRefused::ToPlainHttp { to } => write!(f, "refused a redirect from https to plain http ({to})"),
            RedirectRefused::ToAnotherOrigin { to, from } => write!(
                f,
                "refused a redirect to another origin ({to}): the request carries credentials, which go only to {from}"
            ),
        }
    }
}

impl std::error::Error for RedirectRefused {}

/// A URL that parsed as [`HttpUrl`] but that the HTTP library does not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidUrl {
    /// The URL as it may be logged.
    pub redacted: String,
}

impl fmt::Display for InvalidUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not a valid URL", self.redacted)
    }
}

impl std::error::Error for InvalidUrl {}

/// Why `SSL_CERT_FILE` cannot be used.
#[derive(Debug, Clone)]
pub enum CertFileError {
    Unreadable { path: PathBuf, cause: Arc<std::io::Error> },
    NotPem { path: PathBuf, cause: Arc<ureq::Error> },
    NoCertificate { path: PathBuf },
}

impl fmt::Display for CertFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertFileError::Unreadable { path, cause } => write!(f, "SSL_CERT_FILE: cannot read {}: {cause}", path.display()),
            CertFileError::NotPem { path, cause } => {
                write!(f, "SSL_CERT_FILE: {} is not a valid PEM bundle: {cause}", path.display())
            }
            CertFileError::NoCertificate { path } => write!(
                f,
                "SSL_CERT_FILE: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----); unset it to use only the bundled roots",
                path.display()
            ),
        }
    }
}

impl std::error::Error for CertFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CertFileError::Unreadable { cause, .. } => Some(cause.as_ref()),
            CertFileError::NotPem { cause, .. } => Some(cause.as_ref()),
            CertFileError::NoCertificate { .. } => None,
        }
    }
}

/// Why a call got no answer: the connection, TLS or a timeout failed, or the body could not be
/// read. The cause is kept (shared, so that errors stay cheap to clone).
#[derive(Debug, Clone)]
pub enum TransportError {
    TimedOut,
    /// The server's certificate chain ends at no root the agent trusts (a private CA).
    UntrustedCertificate(Arc<ureq::Error>),
    Failed(Arc<ureq::Error>),
    Reading(Arc<std::io::Error>),
}

impl From<ureq::Error> for TransportError {
    fn from(error: ureq::Error) -> TransportError {
        match error {
            ureq::Error::Timeout(_) => TransportError::TimedOut,
            other if is_unknown_issuer(&other) => TransportError::UntrustedCertificate(Arc::new(other)),
            // ureq's messages name hosts and reasons, never a URL's credentials.
            other => TransportError::Failed(Arc::new(other)),
        }
    }
}

/// rustls's "unknown issuer", whether ureq hands it over directly or inside the I/O error of
/// the handshake.
fn is_unknown_issuer(error: &ureq::Error) -> bool {
    let rustls_error = match error {
        ureq::Error::Rustls(inner) => Some(inner),
        ureq::Error::Io(io) => io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    matches!(rustls_error, Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)))
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::TimedOut => f.write_str("timed out"),
            TransportError::UntrustedCertificate(cause) | TransportError::Failed(cause) => write!(f, "{cause}"),
            TransportError::Reading(cause) => write!(f, "reading the answer failed: {cause}"),
        }
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransportError::TimedOut => None,
            TransportError::UntrustedCertificate(cause) | TransportError::Failed(cause) => Some(cause.as_ref()),
            TransportError::Reading(cause) => Some(cause.as_ref()),
        }
    }
}

/// Equal when of the same kind and saying the same thing (the causes are not comparable).
impl PartialEq for TransportError {
    fn eq(&self, other: &TransportError) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other) && self.to_string() == other.to_string()
    }
}

impl Eq for TransportError {}

/// Headers that carry no credential; any other header a request sets is taken to be one.
const PLAIN_HEADERS: [&str; 4] = ["accept", "if-none-match", "x-github-api-version", "user-agent"];

/// Whether a request with these headers to `url` carries a credential.
pub fn is_credentialed(url: &HttpUrl, headers: &[(&str, &str)]) -> bool {
    url.has_userinfo || headers.iter().any(|(name, _)| !PLAIN_HEADERS.contains(&name.to_ascii_lowercase().as_str()))
}

/// An `application/x-www-form-urlencoded` body (RFC 3986 unreserved characters kept), zeroed
/// on drop: the token requests that use it carry credentials.
pub fn form(fields: &[(&str, &str)]) -> zeroize::Zeroizing<String> {
    zeroize::Zeroizing::new(
        fields
            .iter()
            .map(|(name, value)| format!("{name}={}", crate::url::percent_encode(value, true)))
            .collect::<Vec<_>>()
            .join("&"),
    )
}

/// Answers of credential, token and KMS endpoints are small; more than this is not one.
pub const SMALL_ANSWER_LIMIT: u64 = 64 * 1024;

/// The status and the body (at most [`SMALL_ANSWER_LIMIT`] bytes, in a buffer that is zeroed
/// when dropped, because such answers carry tokens and keys) of a call.
pub fn small_reply(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, zeroize::Zeroizing<Vec<u8>>), TransportError> {
    use std::io::Read;
    let response = result?;
    let status = response.status().as_u16();
    let mut body = zeroize::Zeroizing::new(Vec::new());
    response
        .into_body()
        .into_reader()
        .take(SMALL_ANSWER_LIMIT)
        .read_to_end(&mut body)
        .map_err(|error| TransportError::Reading(Arc::new(error)))?;
    Ok((status, body))
}

/// `localhost`, 127.0.0.0/8 and `::1` (IPv6 literals with or without brackets).
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|address| address.is_loopback())
}

/// The cloud metadata endpoints that are not link-local addresses: GCE's name, and the IPv6
/// addresses of EC2 instance metadata and EKS Pod Identity.
const METADATA_HOSTS: [&str; 3] = ["metadata.google.internal", "fd00:ec2::254", "fd00:ec2::23"];

/// One of [`METADATA_HOSTS`] (IPv6 literals with or without brackets, any case, a trailing
/// dot allowed).
pub fn is_metadata_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.');
    METADATA_HOSTS.iter().any(|known| known.eq_ignore_ascii_case(host))
        || host
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|address| METADATA_HOSTS.iter().any(|known| known.parse::<std::net::Ipv6Addr>() == Ok(address)))
}

/// 169.254.0.0/16 and fe80::/10, where cloud metadata endpoints live; a proxy cannot reach
/// them on the agent's behalf.
pub fn is_link_local(host: &str) -> bool {
    match host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(address)) => address.is_link_local(),
        Ok(std::net::IpAddr::V6(address)) => (address.segments()[0] & 0xffc0) == 0xfe80,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentialed_requests_follow_redirects_only_within_their_origin() {
        let url = |text: &str| HttpUrl::parse(text).unwrap();
        let api = url("https://gitlab.example/api/v4/x");
        assert_eq!(check_redirect(&api, &url("https://gitlab.example:443/api/v4/y"), true), Ok(()));
        assert_eq!(
            check_redirect(&api, &url("https://127.0.0.1:8080/y"), true).map_err(|refused| refused.to_string()),
            Err("refused a redirect to another origin (https://127.0.0.1:8080): the request carries credentials, \
                 which go only to https://gitlab.example:443"
                .into())
        );
        assert!(check_redirect(&api, &url("http://gitlab.example/y"), true).is_err());
        assert!(check_redirect(&api, &url("https://gitlab.example:8443/y"), true).is_err());
        assert_eq!(check_redirect(&api, &url("https://cdn.example/y"), false), Ok(()));
        assert_eq!(
            check_redirect(&api, &url("http://cdn.example/y"), false).map_err(|refused| refused.to_string()),
            Err("refused a redirect from https to plain http (http://cdn.example:80)".into())
        );
        assert_eq!(check_redirect(&url("http://a.example/"), &url("https://b.example/"), false), Ok(()));
    }

    #[test]
    fn only_known_plain_headers_make_a_request_uncredentialed() {
        let plain = HttpUrl::parse("https://a.example/x").unwrap();
        assert!(!is_credentialed(&plain, &[("If-None-Match", "\"e\""), ("Accept", "a")]));
        assert!(is_credentialed(&plain, &[("PRIVATE-TOKEN", "t")]));
        assert!(is_credentialed(&plain, &[("x-amz-security-token", "t")]));
        assert!(is_credentialed(&HttpUrl::parse("https://u:p@a.example/x").unwrap(), &[]));
    }

    #[test]
    fn recognises_loopback_hosts() {
        for host in ["localhost", "127.0.0.1", "127.9.9.9", "[::1]", "::1", "LOCALHOST"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["example.com", "10.0.0.1", "169.254.170.2", "localhost.example.com"] {
            assert!(!is_loopback(host), "{host}");
        }
        assert!(is_link_local("169.254.170.2") && is_link_local("[fe80::1]"));
        assert!(!is_link_local("10.0.0.1") && !is_link_local("example.com"));
    }

    #[test]
    fn cloud_metadata_hosts_are_recognised_in_every_spelling() {
        for host in ["metadata.google.internal", "METADATA.google.internal.", "[fd00:ec2::254]", "fd00:ec2:0::23"] {
            assert!(is_metadata_host(host), "{host}");
        }
        for host in ["metadata.google.internal.evil.example", "fd00:ec2::255", "example.com", "169.254.169.254"] {
            assert!(!is_metadata_host(host), "{host}");
        }
    }
}
