//! A deliberately tiny HTTP/1.1 client over `TcpStream`: one request per connection
//! (`Connection: close`), the answer read to EOF, so a test sees exactly the bytes the agent
//! sent — including a body that should not be there.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// No answer from a loopback agent takes this long unless something is broken.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body: everything after the header block until the agent closed the connection,
    /// de-chunked when the agent used chunked transfer encoding (only when a client asks with `TE`).
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(found, _)| *found == name).map(|(_, value)| value.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("the body is not UTF-8")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| panic!("body is not JSON ({error}): {}", self.text()))
    }

    /// Asserts the status and the exact body, showing both (shortened) on failure.
    pub fn assert(&self, status: u16, body: &str) {
        if self.status != status || self.body != body.as_bytes() {
            panic!(
                "expected {status} {}\n     got {} {}\nheaders: {:?}",
                shorten(body.as_bytes()),
                self.status,
                shorten(&self.body),
                self.headers
            );
        }
    }
}

/// `GET path` with `headers`, plus `Host: 127.0.0.1:<port>` unless `headers` has a Host.
pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    request(port, "GET", path, headers)
}

/// Any method, with the default Host unless `headers` has one.
pub fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let default_host = format!("127.0.0.1:{port}");
    let text = request_text(method, path, &with_default_host(headers, &default_host));
    parse_checked(method, &raw(port, text.as_bytes()))
}

/// A request that carries no Host header at all.
pub fn request_without_host(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    parse_checked(method, &raw(port, request_text(method, path, headers).as_bytes()))
}

/// `GET path` over a Unix socket, with `Host: localhost` unless `headers` has a Host.
pub fn get_unix(socket: &Path, path: &str, headers: &[(&str, &str)]) -> Response {
    let text = request_text("GET", path, &with_default_host(headers, "localhost"));
    let stream = UnixStream::connect(socket).unwrap_or_else(|error| panic!("connect {}: {error}", socket.display()));
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    parse_checked("GET", &exchange(stream, text.as_bytes()))
}

/// Sends `bytes` as they are and returns everything the agent answers until it closes.
pub fn raw(port: u16, bytes: &[u8]) -> Vec<u8> {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|error| panic!("connect :{port}: {error}"));
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    exchange(stream, bytes)
}

fn exchange(mut stream: impl Read + Write, bytes: &[u8]) -> Vec<u8> {
    stream.write_all(bytes).expect("cannot send the request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap_or_else(|error| panic!("reading the answer failed: {error}"));
    answer
}

fn with_default_host<'a>(headers: &[(&'a str, &'a str)], host: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut all = Vec::with_capacity(headers.len() + 1);
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        all.push(("Host", host));
    }
    all.extend_from_slice(headers);
    all
}

fn request_text(method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut text = format!("{method} {path} HTTP/1.1\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("Connection: close\r\n\r\n");
    text
}

/// Parses an answer and checks that Content-Length frames its body (HEAD answers have none).
fn parse_checked(method: &str, answer: &[u8]) -> Response {
    let response = parse(answer);
    if method != "HEAD" {
        if let Some(length) = response.header("content-length") {
            assert_eq!(
                length.parse::<usize>().ok(),
                Some(response.body.len()),
                "Content-Length does not frame the body"
            );
        }
    }
    response
}

fn parse(answer: &[u8]) -> Response {
    let shown = || String::from_utf8_lossy(answer).into_owned();
    let end = answer
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header block in {:?}", shown()));
    let head = std::str::from_utf8(&answer[..end]).expect("the header block is not UTF-8");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap_or_else(|| panic!("bad header line {line:?}"));
            (name.trim().to_ascii_lowercase(), value.trim().to_string())
        })
        .collect();
    let mut response = Response { status, headers, body: answer[end + 4..].to_vec() };
    if response.header("transfer-encoding").is_some_and(|coding| coding.eq_ignore_ascii_case("chunked")) {
        response.body = dechunk(&response.body);
    }
    response
}

/// Decodes a chunked body; panics on bad framing, which is a bug in the agent's answer.
fn dechunk(mut chunked: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = chunked.windows(2).position(|pair| pair == b"\r\n").expect("a chunk size line");
        let size_text = std::str::from_utf8(&chunked[..line_end]).expect("an ASCII chunk size");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or_default().trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
        chunked = &chunked[line_end + 2..];
        if size == 0 {
            assert_eq!(chunked, b"\r\n", "trailers or data after the last chunk");
            return body;
        }
        assert!(chunked.len() >= size + 2 && &chunked[size..size + 2] == b"\r\n", "a truncated chunk");
        body.extend_from_slice(&chunked[..size]);
        chunked = &chunked[size + 2..];
    }
}

/// A body for a failure message: long ones are cut.
fn shorten(body: &[u8]) -> String {
    const SHOWN: usize = 600;
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}… ({} bytes in all)", &text[..cut], body.len()),
        None => format!("{text:?}"),
    }
}
