//! The agent under pressure (SPEC §6, §8): snapshots rotating under a load of keep-alive
//! clients, and hostile clients — stalled connections, malformed requests, an enormous header.
//!
//! Not repeated here: running out of file descriptors (`resilience.rs`) and an endless
//! artifact body cut at 32 MiB with bounded memory (`sources/http.rs`).
//!
//! Helpers: `/proc/<pid>/status` figures, and a small HTTP/1.1 reader that takes one answer at
//! a time off a connection, so that keep-alive and pipelined answers can be told apart (the
//! support client reads to EOF, one request per connection).

mod backoff;
mod hostile;
mod limits;
mod oversized_text;
mod rotation;

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// No answer from a loopback agent takes this long unless something is broken.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A figure of `/proc/<pid>/status` (`VmRSS`, `VmHWM` in KiB; `Threads`). Readable although the
/// agent makes itself non-dumpable, which hides its `/proc/<pid>/fd`.
pub fn proc_status(pid: i32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("cannot read {path}: {error}"));
    let prefix = format!("{field}:");
    let line = status.lines().find(|line| line.starts_with(&prefix)).unwrap_or_else(|| panic!("no {field} in {path}"));
    let value = line.split_whitespace().nth(1).unwrap_or_default();
    value.parse().unwrap_or_else(|_| panic!("bad {field} line {line:?}"))
}

/// One answer read off a connection.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Header names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(found, _)| *found == name).map(|(_, value)| value.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads the next answer (HTTP/1.0 or 1.1), its body framed by `Content-Length`, chunked, or
/// running to EOF; `None` when the connection ends before its first byte.
pub fn read_answer(reader: &mut impl BufRead) -> io::Result<Option<Answer>> {
    let Some(status_line) = read_line(reader)? else { return Ok(None) };
    let status = ["HTTP/1.1 ", "HTTP/1.0 "]
        .iter()
        .find_map(|version| status_line.strip_prefix(version))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?.ok_or_else(|| invalid("the connection ended inside the header block".into()))?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut answer = Answer { status, headers, body: Vec::new() };
    if answer.header("transfer-encoding").is_some_and(|coding| coding.eq_ignore_ascii_case("chunked")) {
        answer.body = read_chunked(reader)?;
    } else if let Some(length) = answer.header("content-length") {
        let length: usize = length.parse().map_err(|_| invalid(format!("bad Content-Length {length:?}")))?;
        answer.body = vec![0; length];
        reader.read_exact(&mut answer.body)?;
    } else {
        reader.read_to_end(&mut answer.body)?;
    }
    Ok(Some(answer))
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(reader)?.ok_or_else(|| invalid("the connection ended inside a chunked body".into()))?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            while read_line(reader)?.is_some_and(|trailer| !trailer.is_empty()) {}
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        read_line(reader)?;
    }
}

/// A line without its CRLF; `None` at EOF.
fn read_line(reader: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    if reader.read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    let line = String::from_utf8(line).map_err(|_| invalid("a line of the answer is not UTF-8".into()))?;
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// A keep-alive HTTP/1.1 connection: one request written, one answer read, again and again.
pub struct KeepAlive {
    port: u16,
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    pub fn connect(port: u16) -> io::Result<KeepAlive> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(KeepAlive { port, reader: BufReader::new(stream.try_clone()?), writer: stream })
    }

    /// `GET path` with `headers` and `Host: 127.0.0.1:<port>`; an error when the agent closed
    /// the connection instead of answering.
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> io::Result<Answer> {
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n", self.port);
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        self.writer.write_all(request.as_bytes())?;
        read_answer(&mut self.reader)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "the agent closed a keep-alive connection"))
    }
}
