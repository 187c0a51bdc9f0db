//! HTTP(S) sources, and the one GET every remote source (S3, VCS) makes: status mapping, ETag,
//! and the artifact size limit enforced while the body streams in, so an endless response
//! costs at most [`MAX_ARTIFACT_BYTES`] of memory.

use std::io::Read;

use super::{FetchError, Fetched, Source, MAX_ARTIFACT_BYTES};
use crate::http::{HttpClient, TransportError};
use crate::url::HttpUrl;

/// How much of an error answer is read to explain it.
const ERROR_BODY_BYTES: u64 = 16 * 1024;

/// A response worth reading: status 2xx or 304, body read up to the limit.
pub struct Answer {
    pub status: u16,
    pub etag: Option<String>,
    pub body: Vec<u8>,
}

/// What a GET is about, for its request and its error messages.
pub struct Get<'a> {
    pub http: &'a HttpClient,
    pub url: &'a HttpUrl,
    /// The source as it may be logged.
    pub source: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
}

impl Get<'_> {
    /// Sends the GET. Status 401/403 and 404 become [`FetchError::Forbidden`] and
    /// [`FetchError::NotFound`], any other status of 400 or more [`FetchError::Status`];
    /// `detail` turns an error body into a short, credential-free explanation (S3's `<Code>`).
    pub fn send(&self, detail: impl Fn(&[u8]) -> Option<String>) -> Result<Answer, FetchError> {
        let credentialed = crate::http::is_credentialed(self.url, self.headers);
        let mut url = self.url.clone();
        let mut redirects = 0;
        let response = loop {
            let mut request = self.http.get(&url).map_err(|why| self.failed(why.to_string()))?;
            for (name, value) in self.headers {
                request = request.header(*name, *value);
            }
            let response = request.call().map_err(|error| self.network(error))?;
            if !matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
                break response;
            }
            // Redirects are followed here, not by ureq, so that a credential stays in its origin.
            let status = response.status().as_u16();
            redirects += 1;
            if redirects > crate::http::MAX_REDIRECTS {
                let limit = crate::http::MAX_REDIRECTS;
                return Err(self.failed(format!("HTTP {status}: more than {limit} redirects")));
            }
            let location = response.headers().get("location").and_then(|value| value.to_str().ok());
            let next = location
                .and_then(|location| url.join(location))
                .ok_or_else(|| self.failed(format!("HTTP {status} without a usable Location")))?;
            crate::http::check_redirect(&url, &next, credentialed)
                .map_err(|why| self.failed(format!("HTTP {status}: {why}")))?;
            url = next;
        };
        let status = response.status().as_u16();
        let etag = response.headers().get("etag").and_then(|value| value.to_str().ok()).map(str::to_string);
        let length = response.body().content_length();
        let mut reader = response.into_body().into_reader();
        if status >= 400 {
            // An error body is read only for its explanation, and only its start.
            let mut body = Vec::new();
            let _ = (&mut reader).take(ERROR_BODY_BYTES).read_to_end(&mut body);
            // Every status-class failure names the status: people grep their logs for it.
            let detail = detail(&body).map_or_else(|| format!("HTTP {status}"), |why| format!("HTTP {status}, {why}"));
            let source = self.source.to_string();
            return Err(match status {
                401 | 403 => FetchError::Forbidden { source, detail },
                404 => FetchError::NotFound { source, status: Some(detail) },
                _ => FetchError::Status { source, status: detail },
            });
        }
        if !(200..300).contains(&status) && status != 304 {
            return Err(FetchError::Status { source: self.source.into(), status: format!("HTTP {status}") });
        }
        // A declared length over the limit is refused before a byte of the body is read.
        if length.is_some_and(|length| length > MAX_ARTIFACT_BYTES) {
            return Err(FetchError::TooLarge { source: self.source.into() });
        }
        let body = read_capped(&mut reader, length, MAX_ARTIFACT_BYTES)
            .map_err(|error| FetchError::Network { source: self.source.into(), detail: error.to_string() })?
            .ok_or_else(|| FetchError::TooLarge { source: self.source.into() })?;
        Ok(Answer { status, etag, body })
    }

    fn network(&self, error: ureq::Error) -> FetchError {
        match TransportError::from(error) {
            cause @ TransportError::UntrustedCertificate(_) => {
                FetchError::UntrustedCertificate { source: self.source.into(), cause }
            }
            cause => self.failed(cause.to_string()),
        }
    }

    fn failed(&self, detail: String) -> FetchError {
        FetchError::Network { source: self.source.into(), detail }
    }
}

/// A body without a declared length is gathered in pieces of this size.
const PIECE_BYTES: usize = 1024 * 1024;

/// Reads `reader` to its end, `None` as soon as it holds more than `limit` bytes. No buffer
/// grows by doubling: with the zeroing allocator every growth is a copy, so a doubling `Vec`
/// briefly holds one and a half times the body, and to see one byte past the limit it doubles to
/// twice the limit. A declared `length` (within the limit; ureq ends the body there) is read
/// into one buffer of that size. Without one the body is read in pieces of [`PIECE_BYTES`], at
/// most `limit` + 1 bytes in all, and joined once at the end, each piece freed once copied.
fn read_capped(reader: &mut impl Read, length: Option<u64>, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    if let Some(length) = length.filter(|&length| length <= limit) {
        let mut body = vec![0u8; usize::try_from(length).unwrap_or(usize::MAX)];
        let filled = fill(reader, &mut body)?;
        body.truncate(filled);
        // Reading on to the end lets ureq see the body is done and keep the connection alive.
        if fill(reader, &mut [0u8; 1])? > 0 {
            return Ok(None);
        }
        return Ok(Some(body));
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    let mut total = 0usize;
    loop {
        // One byte past the limit is enough to know that the body is too long.
        let size = PIECE_BYTES.min(limit - total + 1);
        let mut piece = vec![0u8; size];
        let filled = fill(reader, &mut piece)?;
        total += filled;
        if total > limit {
            return Ok(None);
        }
        piece.truncate(filled);
        pieces.push(piece);
        if filled < size {
            break;
        }
    }
    if pieces.len() == 1 {
        return Ok(pieces.pop());
    }
    let mut body = Vec::with_capacity(total);
    for piece in pieces {
        body.extend_from_slice(&piece);
    }
    Ok(Some(body))
}

/// Reads until `buffer` is full or the reader ends; how many bytes were read.
fn fill(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// Content hashes of HTTP sources: the ETag when the server sends one (so the next poll can
/// ask `If-None-Match`), else the SHA-256 of the body. ETags are quoted, so the two never mix.
pub fn content_hash(etag: Option<String>, body: &[u8]) -> String {
    etag.unwrap_or_else(|| format!("sha256:{}", crate::secret::sha256_hex(body)))
}

/// The `If-None-Match` to send: only a real ETag.
pub fn if_none_match(last_content_hash: Option<&str>) -> Option<&str> {
    last_content_hash.filter(|hash| !hash.starts_with("sha256:"))
}

/// A plain HTTP(S) URL.
pub struct HttpSource {
    http: HttpClient,
    url: HttpUrl,
    description: String,
}

impl HttpSource {
    pub fn new(http: HttpClient, url: HttpUrl) -> HttpSource {
        let description = url.redacted();
        HttpSource { http, url, description }
    }
}

impl Source for HttpSource {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn fetch(&mut self, last_content_hash: Option<&str>) -> Result<Fetched, FetchError> {
        let mut headers = Vec::new();
        if let Some(etag) = if_none_match(last_content_hash) {
            headers.push(("If-None-Match", etag));
        }
        let get = Get { http: &self.http, url: &self.url, source: &self.description, headers: &headers };
        let answer = get.send(|_| None)?;
        if answer.status == 304 {
            return Ok(Fetched::Unchanged);
        }
        let content_hash = content_hash(answer.etag, &answer.body);
        if last_content_hash == Some(content_hash.as_str()) {
            return Ok(Fetched::Unchanged);
        }
        Ok(Fetched::Content { bytes: answer.body, content_hash: Some(content_hash) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_up_to_the_limit_are_read_whole_and_longer_ones_are_refused() {
        let body: Vec<u8> = (0..=255u8).cycle().take(2 * PIECE_BYTES + 7).collect();
        let limit = body.len() as u64;
        assert_eq!(read_capped(&mut body.as_slice(), None, limit).unwrap(), Some(body.clone()));
        assert_eq!(read_capped(&mut body.as_slice(), Some(limit), limit).unwrap(), Some(body.clone()));
        assert_eq!(read_capped(&mut body.as_slice(), None, limit - 1).unwrap(), None);
        assert_eq!(read_capped(&mut &b""[..], None, limit).unwrap(), Some(Vec::new()));
        assert_eq!(read_capped(&mut &b"abc"[..], Some(3), 3).unwrap(), Some(b"abc".to_vec()));
    }

    #[test]
    fn a_body_without_a_length_is_read_no_further_than_one_byte_past_the_limit() {
        let mut endless = std::io::repeat(b'x');
        let mut counted = (&mut endless).take(10 * PIECE_BYTES as u64);
        assert_eq!(read_capped(&mut counted, None, 3 * PIECE_BYTES as u64 + 5).unwrap(), None);
        assert_eq!(counted.limit(), 10 * PIECE_BYTES as u64 - (3 * PIECE_BYTES as u64 + 6));
    }

    #[test]
    fn only_real_etags_are_sent_back() {
        assert_eq!(content_hash(Some("\"abc\"".into()), b"x"), "\"abc\"");
        let hashed = content_hash(None, b"x");
        assert!(hashed.starts_with("sha256:2d711642"), "{hashed}");
        assert_eq!(if_none_match(Some(&hashed)), None);
        assert_eq!(if_none_match(Some("W/\"abc\"")), Some("W/\"abc\""));
        assert_eq!(if_none_match(None), None);
    }
}
