//! Plain-http requests through an HTTP proxy in absolute form (RFC 9112 §3.2.2): the connection
//! goes to the proxy and the request line names the whole URL, `GET http://host/path HTTP/1.1`,
//! as curl and every proxy-aware client send it. ureq 3 opens a `CONNECT` tunnel for every
//! proxied request, http or https, and proxies such as Squid refuse `CONNECT` for any port but
//! 443 by default; it has no setting for absolute form, and its request line is always written
//! in origin form (`GET /path`). So this connector dials the proxy instead of the target, and
//! its transport turns the origin-form request line into the absolute form — the one byte
//! string it changes; headers (`Host` is the target's) and bodies pass through untouched.

use std::fmt;

use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, NextTimeout, TcpConnector, Transport,
};
use ureq::Error;

/// Dials the agent's proxy (the `Config`'s) for every connection; the agent that uses it only
/// ever requests `http://` URLs.
#[derive(Debug, Default)]
pub struct ForwardingConnector;

impl Connector for ForwardingConnector {
    type Out = AbsoluteForm;

    fn connect(&self, details: &ConnectionDetails, _: Option<()>) -> Result<Option<AbsoluteForm>, Error> {
        let Some(proxy) = details.config.proxy() else { return Ok(None) };
        let Some(host) = details.uri.host() else { return Ok(None) };
        let proxy_uri = proxy.uri();
        let addrs = details.resolver.resolve(proxy_uri, details.config, details.timeout)?;
        let to_proxy = ConnectionDetails {
            uri: proxy_uri,
            addrs,
            config: details.config,
            request_level: details.request_level,
            resolver: details.resolver,
            now: details.now,
            timeout: details.timeout,
            current_time: details.current_time.clone(),
            run_connector: details.run_connector.clone(),
            register_shutdown: details.register_shutdown.clone(),
        };
        let tcp = Connector::<()>::connect(&TcpConnector::default(), &to_proxy, None)?;
        let Some(Either::B(inner)) = tcp else { return Ok(None) };
        // User-info never goes into the request line; `Authorization` carries it.
        let target = match details.uri.port_u16() {
            Some(port) => format!("http://{host}:{port}"),
            None => format!("http://{host}"),
        };
        Ok(Some(AbsoluteForm { inner: Box::new(inner), target, request_starts: true }))
    }
}

/// A connection to the proxy whose request lines are rewritten to absolute form.
pub struct AbsoluteForm {
    inner: Box<dyn Transport>,
    /// `http://host[:port]` of the target, put before the origin-form path.
    target: String,
    /// The next bytes sent begin a request: set on the connection's start and whenever ureq
    /// turns to reading an answer (the agent sends only GETs, whose head is sent at once).
    request_starts: bool,
}

impl fmt::Debug for AbsoluteForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AbsoluteForm").field("target", &self.target).finish()
    }
}

/// `GET /path HTTP/1.1…` with `target` put before the path; `None` when `head` does not begin
/// with an origin-form request line.
pub fn absolute_form(head: &[u8], target: &str) -> Option<Vec<u8>> {
    let space = head.iter().position(|&byte| byte == b' ')?;
    if head.get(space + 1) != Some(&b'/') || !head[..space].iter().all(u8::is_ascii_uppercase) {
        return None;
    }
    let mut rewritten = Vec::with_capacity(head.len() + target.len());
    rewritten.extend_from_slice(&head[..=space]);
    rewritten.extend_from_slice(target.as_bytes());
    rewritten.extend_from_slice(&head[space + 1..]);
    Some(rewritten)
}

impl Transport for AbsoluteForm {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        if !std::mem::take(&mut self.request_starts) {
            return self.inner.transmit_output(amount, timeout);
        }
        let Some(rewritten) = absolute_form(&self.inner.buffers().output()[..amount], &self.target) else {
            return self.inner.transmit_output(amount, timeout);
        };
        // The head grew by the target's length: send it in pieces the output buffer holds.
        let room = self.inner.buffers().output().len();
        for piece in rewritten.chunks(room) {
            self.inner.buffers().output()[..piece.len()].copy_from_slice(piece);
            self.inner.transmit_output(piece.len(), timeout)?;
        }
        Ok(())
    }

    fn maybe_await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        self.request_starts = true;
        self.inner.maybe_await_input(timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        self.request_starts = true;
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_form_request_lines_become_absolute_and_nothing_else_changes() {
        let head = b"GET /app.age.json?v=1 HTTP/1.1\r\nhost: a.example:8080\r\n\r\n";
        let rewritten = absolute_form(head, "http://a.example:8080").unwrap();
        assert_eq!(
            String::from_utf8(rewritten).unwrap(),
            "GET http://a.example:8080/app.age.json?v=1 HTTP/1.1\r\nhost: a.example:8080\r\n\r\n"
        );
        assert_eq!(absolute_form(b"GET http://a/ HTTP/1.1\r\n", "http://a"), None);
        assert_eq!(absolute_form(b"body bytes /x", "http://a"), None);
        assert_eq!(absolute_form(b"", "http://a"), None);
    }
}
