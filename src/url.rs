//! Just enough URL handling for sources: split an `http(s)://` URL into its parts, recognise
//! S3 URLs, and describe a URL for logs with its user-info and query string redacted, because
//! either may carry a credential (a pre-signed query, `user:password@host`).

/// An `http://` or `https://` URL split into the parts the agent uses.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// The URL as configured, credentials included: for requests only, never for logs.
    pub full: String,
    pub scheme: String,
    pub has_userinfo: bool,
    /// Host as written, lowercased; IPv6 literals keep their brackets.
    pub host: String,
    pub port: Option<u16>,
    /// Path starting with `/` (`/` when the URL has none).
    pub path: String,
    /// The query as written, without its `?` (it may carry a credential: never log it).
    pub query: Option<String>,
}

impl HttpUrl {
    /// Parses `text`; `None` when it is not an absolute http(s) URL with a host.
    pub fn parse(text: &str) -> Option<HttpUrl> {
        let (scheme, rest) = text.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return None;
        }
        let rest = rest.split('#').next().unwrap_or_default();
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_and_query) = rest.split_at(authority_end);
        let (has_userinfo, host_port) = match authority.rsplit_once('@') {
            Some((_, host_port)) => (true, host_port),
            None => (false, authority),
        };
        let (host, port) = split_host_port(host_port)?;
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return None;
        }
        let (path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_and_query, None),
        };
        Some(HttpUrl {
            full: text.to_string(),
            scheme,
            has_userinfo,
            host: host.to_ascii_lowercase(),
            port,
            path: if path.is_empty() { "/".into() } else { path.into() },
            query: query.map(str::to_string),
        })
    }

    /// The `Host` header of a request to this URL: the port only when it is not the scheme's
    /// default (as ureq sends it, and as SigV4 must sign it).
    pub fn host_header(&self) -> String {
        let default_port = if self.scheme == "https" { 443 } else { 80 };
        match self.port.filter(|&port| port != default_port) {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.clone(),
        }
    }

    /// `scheme://host:port` with the scheme's default port written out: two URLs with the same
    /// origin reach the same server over the same kind of connection. Never holds user-info.
    pub fn origin(&self) -> String {
        let default_port = if self.scheme == "https" { 443 } else { 80 };
        format!("{}://{}:{}", self.scheme, self.host, self.port.unwrap_or(default_port))
    }

    /// The URL a redirect's `Location` names, resolved against this one: absolute, scheme-
    /// relative (`//host/path`), absolute-path (`/path`) or relative to this URL's directory.
    /// `None` when it is not an http(s) URL.
    pub fn join(&self, location: &str) -> Option<HttpUrl> {
        let location = location.trim();
        let lower = location.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return HttpUrl::parse(location);
        }
        if location.split_once(':').is_some_and(|(scheme, _)| !scheme.contains(['/', '?', '#'])) {
            // Another scheme (`file:`, `ftp:`): nothing to follow.
            return None;
        }
        let base = format!("{}://{}", self.scheme, self.host_header());
        if let Some(rest) = location.strip_prefix("//") {
            return HttpUrl::parse(&format!("{}://{rest}", self.scheme));
        }
        if location.starts_with('/') {
            return HttpUrl::parse(&format!("{base}{location}"));
        }
        let directory = &self.path[..self.path.rfind('/').map_or(0, |slash| slash + 1)];
        HttpUrl::parse(&format!("{base}{directory}{location}"))
    }

    /// The URL as it may appear in a log line: user-info and query replaced by `[redacted]`.
    pub fn redacted(&self) -> String {
        let userinfo = if self.has_userinfo { "[redacted]@" } else { "" };
        let port = self.port.map(|port| format!(":{port}")).unwrap_or_default();
        let query = if self.query.is_some() { "?[redacted]" } else { "" };
        format!("{}://{userinfo}{}{port}{}{query}", self.scheme, self.host, self.path)
    }
}

impl std::fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn split_host_port(host_port: &str) -> Option<(&str, Option<u16>)> {
    if host_port.starts_with('[') {
        let close = host_port.find(']')?;
        let (host, rest) = host_port.split_at(close + 1);
        return match rest.strip_prefix(':') {
            Some(port) => Some((host, Some(port.parse().ok()?))),
            None if rest.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match host_port.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((host_port, None)),
    }
}

/// Where an S3 object lives, from `s3://bucket/key` or an S3 https URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    pub key: String,
    /// The region named in the URL's host; `None` for `s3://` URLs and region-less hosts.
    pub region_in_host: Option<String>,
    /// The object version a `?versionId=` pins, percent-decoded; `None`: the latest.
    pub version_id: Option<String>,
}

/// Query parameters that make an S3 URL pre-signed (SigV4, then SigV2): it carries its own
/// authorization, so it is sent as given instead of being signed again.
const PRESIGNED_PARAMETERS: [&str; 2] = ["X-Amz-Signature", "Signature"];

/// True when `query` holds a pre-signed URL's signature.
pub fn is_presigned_query(query: &str) -> bool {
    query.split('&').any(|pair| PRESIGNED_PARAMETERS.contains(&pair.split('=').next().unwrap_or_default()))
}

impl S3Location {
    /// Parses `s3://bucket/key`. A `?` ends the key, as in an https URL: what follows is a
    /// query for [`S3Location::with_query`] (a key containing `?` is written `%3F` in an S3
    /// https URL).
    pub fn parse_s3_scheme(text: &str) -> Option<S3Location> {
        let rest = text.strip_prefix("s3://")?;
        let rest = rest.split_once('?').map_or(rest, |(object, _)| object);
        let (bucket, key) = rest.split_once('/')?;
        (!bucket.is_empty() && !key.is_empty()).then(|| S3Location {
            bucket: bucket.into(),
            key: key.into(),
            region_in_host: None,
            version_id: None,
        })
    }

    /// Applies an S3 URL's query: `versionId=<id>` pins that version of the object; any other
    /// parameter is an error naming it, because the agent signs S3 requests itself and would
    /// silently drop it (or re-sign a pre-signed URL with its own credentials).
    pub fn with_query(mut self, query: Option<&str>) -> Result<S3Location, String> {
        for pair in query.unwrap_or_default().split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if name != "versionId" {
                // Only a plain name is quoted: the query may carry a credential.
                let plain = name.len() <= 40 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                let named = if plain { format!(" '{name}'") } else { String::new() };
                return Err(format!("query parameter{named} is not supported"));
            }
            if value.is_empty() || self.version_id.is_some() {
                return Err("versionId must appear once, with a value".into());
            }
            let version = percent_decode(value)
                .map_err(|_| "the versionId has an invalid percent-escape or is not UTF-8".to_string())?;
            self.version_id = Some(version);
        }
        Ok(self)
    }

    /// `s3://bucket/key`, with `?versionId=…` when one is pinned: for logs (neither is secret).
    pub fn describe(&self) -> String {
        match &self.version_id {
            Some(version) => format!("s3://{}/{}?versionId={version}", self.bucket, self.key),
            None => format!("s3://{}/{}", self.bucket, self.key),
        }
    }

    /// Recognises `https://<bucket>.s3[.-<region>].amazonaws.com/<key>` (virtual-hosted style)
    /// and `https://s3[.-<region>].amazonaws.com/<bucket>/<key>` (path style).
    pub fn from_https(url: &HttpUrl) -> Option<S3Location> {
        let host = url.host.strip_suffix(".amazonaws.com")?;
        let path = url.path.strip_prefix('/')?;
        let region_of = |service: &str| -> Option<Option<String>> {
            if service == "s3" {
                return Some(None);
            }
            let region = service.strip_prefix("s3.").or_else(|| service.strip_prefix("s3-"))?;
            (!region.is_empty() && !region.contains('.')).then(|| Some(region.to_string()))
        };
        if let Some(region) = region_of(host) {
            let (bucket, key) = path.split_once('/')?;
            return (!bucket.is_empty() && !key.is_empty()).then(|| S3Location {
                bucket: bucket.into(),
                key: percent_decode(key).unwrap_or_else(|_| key.into()),
                region_in_host: region,
                version_id: None,
            });
        }
        let (bucket, service) = host.split_once(".s3")?;
        let region = region_of(&format!("s3{service}"))?;
        (!bucket.is_empty() && !path.is_empty()).then(|| S3Location {
            bucket: bucket.into(),
            key: percent_decode(path).unwrap_or_else(|_| path.into()),
            region_in_host: region,
            version_id: None,
        })
    }
}

/// RFC 3986 percent-encoding of everything but `A–Z a–z 0–9 - . _ ~` (and `/` unless
/// `encode_slash`), upper-case hex: what SigV4 signs, and what query strings, form bodies and
/// provider API paths need.
pub fn percent_encode(text: &str, encode_slash: bool) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') || (byte == b'/' && !encode_slash)
        {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// A path as sent and signed: every byte but the unreserved characters and `/`
/// percent-encoded once (S3 does not double-encode).
pub fn percent_encode_path(path: &str) -> String {
    percent_encode(path, false)
}

/// Decodes `%XX` escapes; the result must be UTF-8.
pub fn percent_decode(segment: &str) -> Result<String, String> {
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = bytes.get(index + 1..index + 3).and_then(|pair| std::str::from_utf8(pair).ok());
            let byte = hex
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or("the path has an invalid percent-escape")?;
            decoded.push(byte);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| "the path is not UTF-8 after percent-decoding".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_sigv4() {
        assert_eq!(percent_encode_path("/a b/café+~x.json"), "/a%20b/caf%C3%A9%2B~x.json");
        assert_eq!(percent_encode("a/b=c", true), "a%2Fb%3Dc");
    }

    #[test]
    fn resolves_redirect_locations_and_compares_origins() {
        let base = HttpUrl::parse("https://api.example:8443/v4/projects/files?ref=HEAD").unwrap();
        let joined = |location: &str| base.join(location).map(|url| url.full);
        assert_eq!(joined("/other").as_deref(), Some("https://api.example:8443/other"));
        assert_eq!(joined("raw").as_deref(), Some("https://api.example:8443/v4/projects/raw"));
        assert_eq!(joined("//cdn.example/x").as_deref(), Some("https://cdn.example/x"));
        assert_eq!(joined("http://127.0.0.1:9/y").as_deref(), Some("http://127.0.0.1:9/y"));
        assert_eq!(joined("file:///etc/passwd"), None);
        assert_eq!(joined("/next?to=http://x").as_deref(), Some("https://api.example:8443/next?to=http://x"));
        assert_eq!(base.origin(), "https://api.example:8443");
        assert_eq!(HttpUrl::parse("https://u:p@Example.com/a").unwrap().origin(), "https://example.com:443");
        assert_eq!(HttpUrl::parse("http://example.com:80/").unwrap().origin(), "http://example.com:80");
    }

    #[test]
    fn redacts_userinfo_and_query() {
        let url = HttpUrl::parse("https://user:pass@example.com:8443/a/b.json?X-Amz-Signature=abc").unwrap();
        assert_eq!(url.redacted(), "https://[redacted]@example.com:8443/a/b.json?[redacted]");
        let plain = HttpUrl::parse("http://Example.com").unwrap();
        assert_eq!(plain.redacted(), "http://example.com/");
        assert_eq!(format!("{url:?}"), url.redacted(), "Debug must not show credentials");
    }

    #[test]
    fn rejects_non_http_urls() {
        assert_eq!(HttpUrl::parse("ftp://example.com/x"), None);
        assert_eq!(HttpUrl::parse("https:///x"), None);
        assert_eq!(HttpUrl::parse("https://host:notaport/x"), None);
        assert_eq!(HttpUrl::parse("/etc/artifact.json"), None);
    }

    #[test]
    fn host_headers_leave_out_default_ports() {
        let host = |text: &str| HttpUrl::parse(text).unwrap().host_header();
        assert_eq!(host("https://s3.example.com:443/b"), "s3.example.com");
        assert_eq!(host("http://127.0.0.1:80/b"), "127.0.0.1");
        assert_eq!(host("http://127.0.0.1:443/b"), "127.0.0.1:443");
        assert_eq!(host("https://[::1]:9000/b"), "[::1]:9000");
    }

    #[test]
    fn keeps_ipv6_literals() {
        let url = HttpUrl::parse("http://[::1]:8080/x").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("[::1]", Some(8080)));
    }

    #[test]
    fn recognises_every_s3_url_style() {
        let s3 = S3Location::parse_s3_scheme("s3://my-bucket/clef/app/prod.age.json").unwrap();
        assert_eq!((s3.bucket.as_str(), s3.key.as_str()), ("my-bucket", "clef/app/prod.age.json"));
        let virtual_hosted = |text: &str| S3Location::from_https(&HttpUrl::parse(text).unwrap());
        let location = virtual_hosted("https://my-bucket.s3.amazonaws.com/k/x.json").unwrap();
        assert_eq!(
            (location.bucket.as_str(), location.key.as_str(), location.region_in_host),
            ("my-bucket", "k/x.json", None)
        );
        let location = virtual_hosted("https://my-bucket.s3.eu-west-1.amazonaws.com/x.json").unwrap();
        assert_eq!(location.region_in_host.as_deref(), Some("eu-west-1"));
        let location = virtual_hosted("https://s3.us-west-2.amazonaws.com/my-bucket/x.json").unwrap();
        assert_eq!((location.bucket.as_str(), location.region_in_host.as_deref()), ("my-bucket", Some("us-west-2")));
        let location = virtual_hosted("https://s3-eu-central-1.amazonaws.com/b/x.json").unwrap();
        assert_eq!(location.region_in_host.as_deref(), Some("eu-central-1"));
        assert_eq!(virtual_hosted("https://example.com/b/x.json"), None);
        assert_eq!(virtual_hosted("https://sqs.us-east-1.amazonaws.com/b/x"), None);
        assert_eq!(S3Location::parse_s3_scheme("s3://bucket-only"), None);
    }

    #[test]
    fn an_s3_query_may_pin_a_version_and_nothing_else() {
        let location = |text: &str| S3Location::parse_s3_scheme(text).unwrap();
        let query = |text: &str| text.split_once('?').map(|(_, query)| query.to_string());
        let pinned = "s3://b/k.json?versionId=3%2FL4kq%2Brm";
        let pinned = location(pinned).with_query(query(pinned).as_deref()).unwrap();
        assert_eq!((pinned.key.as_str(), pinned.version_id.as_deref()), ("k.json", Some("3/L4kq+rm")));
        assert_eq!(location("s3://b/k.json").with_query(None).unwrap().version_id, None);
        let refused = |query: &str| location("s3://b/k").with_query(Some(query)).unwrap_err();
        assert_eq!(refused("response-content-type=x"), "query parameter 'response-content-type' is not supported");
        assert_eq!(refused("versionId=a&X-Amz-Signature=0f"), "query parameter 'X-Amz-Signature' is not supported");
        assert_eq!(refused("AKIA/secret+x"), "query parameter is not supported", "only plain names are quoted");
        assert_eq!(refused("versionId="), "versionId must appear once, with a value");
        assert_eq!(refused("versionId=a&versionId=b"), "versionId must appear once, with a value");
        assert!(is_presigned_query("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=0f"));
        assert!(is_presigned_query("AWSAccessKeyId=AKID&Expires=1&Signature=x"));
        assert!(!is_presigned_query("versionId=x"));
    }
}
