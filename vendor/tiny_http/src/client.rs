
use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufRead, ErrorKind, Write};

use std::net::SocketAddr;
use std::time::Instant;

use crate::common::{HTTPVersion, Header, Method};
use crate::request::ResponseWriter;
use crate::util::recycle;
use crate::util::RefinedTcpStream;
use crate::util::WipingBufReader;
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::{Limits, Request};

/// The stream a connection reads requests from (clef-agent patch: a buffer that wipes what it
/// hands out, see `util/wiping_reader.rs`).
type Source = WipingBufReader<RefinedTcpStream>;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<Source>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1 (clef-agent patch: unbuffered — a response is written in one piece by
    //  `Response::raw_print`, and a `BufWriter` kept the last small response, a secret value,
    //  for the connection's life)
    sink: SequentialWriterBuilder<RefinedTcpStream>,

    // Reader to read the next header from
    next_header_source: SequentialReader<Source>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // clef-agent patch: the line being parsed, reused from line to line
    line: Vec<u8>,

    // clef-agent patch: sizes and times a request head must keep to
    limits: Limits,
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    ReadIoError(IoError),
    // clef-agent patch: the limits of `Limits`
    /// The client closed the connection, or sent nothing for the idle limit, between requests.
    Ended,
    /// The head was not complete within the head timeout of its first byte.
    HeadTimeout,
    /// A line longer than `max_line_bytes`, a head longer than `max_head_bytes`, or more than
    /// `max_header_fields` fields.
    HeadTooLarge,
    /// `Content-Length` above 0 or any `Transfer-Encoding`: the server takes no request bodies.
    BodyNotAccepted,
    /// A control character (a bare CR or LF, NUL, …) inside the request line or a header line.
    ControlCharacter,
}

/// A read that failed because the socket's receive timeout ran out.
fn is_timeout(error: &IoError) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// clef-agent patch: the answer to a request refused before it reaches the handler, and the
/// connection closes after it (the rest of what the client sent is never read).
fn refusal(status: u16, reason: &str, error: &str) -> Vec<u8> {
    let body = format!("{{\"error\":\"{error}\"}}");
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n\
         X-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        limits: Limits,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();

        let mut source = SequentialReaderBuilder::new(WipingBufReader::with_capacity(1024, read_socket));
        let first_header = source.next_reader();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(write_socket),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            line: Vec::new(),
            limits,
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// clef-agent patch: waits, at most the idle limit, for the first byte of the next request,
    /// and returns the time by which its head must be complete.
    fn wait_for_request(&mut self) -> Result<Instant, ReadError> {
        let idle_timeout = self.limits.idle_timeout;
        let reader = self.next_header_source.get_mut().map_err(ReadError::ReadIoError)?;
        reader.get_mut().set_read_timeout(idle_timeout).map_err(ReadError::ReadIoError)?;
        while reader.buffer().is_empty() {
            match reader.fill_buf() {
                Ok([]) => return Err(ReadError::Ended),
                Ok(_) => {}
                // A signal (SIGHUP, or SIGSTOP/SIGCONT) ends a receive that has a timeout with
                // EINTR even under SA_RESTART (signal(7)): wait on.
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) if is_timeout(&error) => return Err(ReadError::Ended),
                Err(error) => return Err(ReadError::ReadIoError(error)),
            }
        }
        Ok(Instant::now() + self.limits.head_timeout)
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    ///
    /// clef-agent patch: reads buffered runs up to each `\n` into a buffer kept for the
    /// connection, instead of one byte per call into a new `Vec` per line; a line still ends
    /// only at `\r\n`. The previous line (a bearer token, say) is wiped, not just forgotten.
    /// Nothing past `max_line_bytes` or past what is left of `head_budget` is taken from the
    /// stream, and every read from the socket waits at most until `deadline`.
    fn read_next_line(&mut self, deadline: Instant, head_budget: &mut usize) -> Result<&str, ReadError> {
        self.line.fill(0);
        self.line.clear();
        let max_line = self.limits.max_line_bytes + 2;
        loop {
            let reader = self.next_header_source.get_mut().map_err(ReadError::ReadIoError)?;
            if reader.buffer().is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                match reader.get_mut().set_read_timeout(left) {
                    Err(error) if is_timeout(&error) => return Err(ReadError::HeadTimeout),
                    other => other.map_err(ReadError::ReadIoError)?,
                }
            }
            let available = match reader.fill_buf() {
                Ok([]) => return Err(ReadError::ReadIoError(IoError::new(ErrorKind::ConnectionAborted, "Unexpected EOF"))),
                Ok(available) => available,
                // as in `wait_for_request`; the timeout is set anew from the deadline
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) if is_timeout(&error) => return Err(ReadError::HeadTimeout),
                Err(error) => return Err(ReadError::ReadIoError(error)),
            };
            let (take, ends_line) = match available.iter().position(|&byte| byte == b'\n') {
                Some(newline) => (newline + 1, true),
                None => (available.len(), false),
            };
            if self.line.len() + take > max_line || take > *head_budget {
                return Err(ReadError::HeadTooLarge);
            }
            *head_budget -= take;
            self.line.extend_from_slice(&available[..take]);
            reader.consume(take);
            if ends_line && self.line.ends_with(b"\r\n") {
                let line = &self.line[..self.line.len() - 2];
                // clef-agent patch: a CR, LF, NUL or other control character inside a line
                // (RFC 9112 §5.5 and §2.2) is refused, never kept in a value: a front end that
                // ends lines at a bare LF would otherwise see other requests than we do
                if line.iter().any(|&byte| (byte < 0x20 && byte != b'\t') || byte == 0x7f) {
                    return Err(ReadError::ControlCharacter);
                }
                return match std::str::from_utf8(line) {
                    Ok(line) if line.is_ascii() => Ok(line),
                    _ => Err(ReadError::ReadIoError(IoError::new(ErrorKind::InvalidInput, "Header is not in ASCII"))),
                };
            }
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        let deadline = self.wait_for_request()?;
        let mut head_budget = self.limits.max_head_bytes;
        let (method, path, version, headers) = {
            // reading the request line
            let (method, path, version) = {
                let line = self.read_next_line(deadline, &mut head_budget)?;

                let (method, target, version) = parse_request_line(line.trim())?;
                // clef-agent patch: into a string kept from the thread's previous request
                let mut path = recycle::path();
                path.push_str(target);
                (method, path, version)
            };

            // getting all headers
            let headers = {
                // clef-agent patch: a list and fields kept from the thread's previous request
                let mut headers = recycle::headers();
                loop {
                    let max_fields = self.limits.max_header_fields;
                    let line = self.read_next_line(deadline, &mut head_budget)?;

                    if line.is_empty() {
                        break;
                    };
                    if headers.len() == max_fields {
                        return Err(ReadError::HeadTooLarge);
                    }
                    let mut field = recycle::field();
                    if field.parse_into(line.trim()).is_err() {
                        return Err(ReadError::WrongHeader(version));
                    }
                    headers.push(field);
                }
                // a line buffer grown by a long header is not kept for the connection's life
                if self.line.capacity() > 1024 {
                    self.line.fill(0);
                    self.line = Vec::new();
                }

                headers
            };

            (method, path, version, headers)
        };

        // clef-agent patch: no request body is ever read, so one that announces a body ends the
        // connection here — before its length is trusted for anything, and before any byte after
        // the head could be taken for the next request.
        refuse_bodies(&headers, &version)?;

        // building the writer for the request
        let writer = self.sink.next_writer();

        // follow-up for next potential request (clef-agent patch: through the hand-over slot
        // of the request before, which is free again once that request was answered)
        let spent = self.next_header_source.take_spent_slot();
        let mut data_source = self.source.next_reader_reusing(spent);
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            // clef-agent patch: a peer that is gone already (peer_addr failed) has no address
            // instead of panicking the connection's thread
            self.remote_addr.as_ref().ok().copied().flatten(),
            data_source,
            ResponseWriter::Connection(writer),
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
            }
        })?;

        // return the request
        Ok(request)
    }

    /// clef-agent patch: answers a request refused before it reached the handler; the caller
    /// then ends the connection.
    fn refuse(&mut self, status: u16, reason: &str, error: &str) {
        let mut writer = self.sink.next_writer();
        writer.write_all(&refusal(status, reason, error)).ok();
    }
}

/// clef-agent patch: `Transfer-Encoding` of any kind, or a `Content-Length` above zero, is a
/// body; a `Content-Length` that is not a decimal number is a malformed header.
fn refuse_bodies(headers: &[Header], version: &HTTPVersion) -> Result<(), ReadError> {
    for header in headers {
        if header.field.equiv("Transfer-Encoding") {
            return Err(ReadError::BodyNotAccepted);
        }
        if header.field.equiv("Content-Length") {
            let value = header.value.as_str().trim();
            if value.is_empty() || !value.bytes().all(|byte| byte.is_ascii_digit()) {
                return Err(ReadError::WrongHeader(version.clone()));
            }
            if value.bytes().any(|digit| digit != b'0') {
                return Err(ReadError::BodyNotAccepted);
            }
        }
    }
    Ok(())
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        use crate::Response;

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        loop {
            let rq = match self.read() {
                Err(ReadError::WrongRequestLine)
                | Err(ReadError::WrongHeader(_))
                | Err(ReadError::ControlCharacter) => {
                    // we don't know where the next request would start, so we have to close
                    self.refuse(400, "Bad Request", "Bad request");
                    return None;
                }

                Err(ReadError::HeadTimeout) => {
                    self.refuse(408, "Request Timeout", "Request header not received in time");
                    return None;
                }

                Err(ReadError::HeadTooLarge) => {
                    self.refuse(431, "Request Header Fields Too Large", "Request header too large");
                    return None;
                }

                Err(ReadError::BodyNotAccepted) => {
                    self.refuse(400, "Bad Request", "Request bodies are not accepted");
                    return None;
                }

                Err(ReadError::ExpectationFailed(_)) => {
                    self.refuse(417, "Expectation Failed", "Expectation failed");
                    return None;
                }

                Err(ReadError::Ended) | Err(ReadError::ReadIoError(_)) => return None,

                Ok(rq) => rq,
            };

            // checking HTTP version
            if *rq.http_version() > (1, 1) {
                // clef-agent patch: the request's own writer, so its answer keeps its place
                // among pipelined answers (a new writer, as here before, waited on this one)
                let response = Response::from_string(
                    "This server only supports HTTP versions 1.0 and 1.1".to_owned(),
                )
                .with_status_code(505);
                rq.respond(response).ok();
                continue;
            }

            // updating the status of the connection
            let connection_header = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Connection"))
                .map(|h| h.value.as_str());

            // clef-agent patch: compared without a lowercase copy
            let has = |val: &str, word: &str| contains_ignoring_ascii_case(val, word);

            match connection_header {
                Some(val) if has(val, "close") => self.no_more_requests = true,
                Some(val) if has(val, "upgrade") => self.no_more_requests = true,
                Some(val)
                    if !has(val, "keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
                {
                    self.no_more_requests = true
                }
                None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
                // clef-agent patch: an HTTP/0.9 request line has no keep-alive either
                _ if *rq.http_version() < (1, 0) => self.no_more_requests = true,
                _ => (),
            };

            // clef-agent patch: the answer says what happens to the connection after it, so a
            // pooling client never reuses a socket the server is closing (RFC 9112 §9.6), and
            // an HTTP/1.0 client that asked for keep-alive knows it got it
            let mut rq = rq;
            if self.no_more_requests {
                rq.set_connection_header(Some("close"));
            } else if *rq.http_version() == HTTPVersion(1, 0) {
                rq.set_connection_header(Some("keep-alive"));
            }

            // returning the request
            return Some(rq);
        }
    }
}

/// clef-agent patch: `haystack.to_ascii_lowercase().contains(needle)` for a lowercase
/// `needle`, without the copy.
pub(crate) fn contains_ignoring_ascii_case(haystack: &str, needle: &str) -> bool {
    haystack.as_bytes().windows(needle.len()).any(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, &str, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next();
    let version = parts.next().and_then(|w| parse_http_version(w).ok());

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }
}
