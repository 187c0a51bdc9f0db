//! The agent's outgoing HTTP, configured explicitly in one place (ureq 3 defaults every timeout
//! to none): connect and whole-request timeouts, at most 5 redirects, `User-Agent:
//! clef-agent/<version>`, proxies from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` — except that
//! loopback addresses (the Lambda API, a local collector) are always reached directly — and TLS
//! with the bundled web PKI roots, so it works in a scratch image.

use std::time::Duration;

use ureq::config::Config;
use ureq::Agent;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_REDIRECTS: u32 = 5;

/// HTTP agents for the two kinds of destination.
pub struct HttpClient {
    direct: Agent,
    proxied: Agent,
    /// No whole-request timeout: for the Lambda API's `event/next`, which blocks until the
    /// next event.
    long_poll: Agent,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient {
            direct: agent(None, Some(REQUEST_TIMEOUT)),
            proxied: agent(ureq::Proxy::try_from_env(), Some(REQUEST_TIMEOUT)),
            long_poll: agent(None, None),
        }
    }
}

impl HttpClient {
    /// The agent for `host`: direct for loopback names and addresses, else through the
    /// environment's proxy if one is set.
    pub fn for_host(&self, host: &str) -> &Agent {
        if is_loopback(host) {
            &self.direct
        } else {
            &self.proxied
        }
    }

    /// A direct agent without a whole-request timeout.
    pub fn long_poll(&self) -> &Agent {
        &self.long_poll
    }
}

fn agent(proxy: Option<ureq::Proxy>, request_timeout: Option<Duration>) -> Agent {
    Config::builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(request_timeout)
        .max_redirects(MAX_REDIRECTS)
        .user_agent(format!("clef-agent/{}", crate::VERSION))
        .http_status_as_error(false)
        .proxy(proxy)
        .build()
        .into()
}

/// `localhost`, 127.0.0.0/8 and `::1` (IPv6 literals with or without brackets).
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|address| address.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_loopback_hosts() {
        for host in ["localhost", "127.0.0.1", "127.9.9.9", "[::1]", "::1", "LOCALHOST"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["example.com", "10.0.0.1", "169.254.170.2", "localhost.example.com"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
