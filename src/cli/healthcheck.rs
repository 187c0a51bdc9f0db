//! `clef-agent healthcheck`: `GET /v1/ready` on the local agent — over `CLEF_AGENT_SOCKET` when
//! set, else on `127.0.0.1:CLEF_AGENT_PORT` — exit 0 on 200 and 1 otherwise. It is the
//! HEALTHCHECK of a scratch image, where there is no curl.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{port_from_env, ConfigError};

const TIMEOUT: Duration = Duration::from_secs(3);

/// Where the local agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Port(u16),
    Socket(PathBuf),
}

impl Target {
    /// The same variables the daemon reads.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Target, ConfigError> {
        match lookup("CLEF_AGENT_SOCKET").filter(|path| !path.is_empty()) {
            Some(path) => Ok(Target::Socket(path.into())),
            None => port_from_env(lookup).map(Target::Port),
        }
    }
}

/// Asks the agent whether it is ready; the error says why not.
pub fn check_ready(target: &Target) -> Result<(), String> {
    let request = "GET /v1/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let status_line = match target {
        Target::Port(port) => {
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, *port));
            let stream = TcpStream::connect_timeout(&address, TIMEOUT)
                .map_err(|error| format!("cannot connect to {address}: {error}"))?;
            let _ = stream.set_read_timeout(Some(TIMEOUT));
            let _ = stream.set_write_timeout(Some(TIMEOUT));
            exchange(stream, request)?
        }
        Target::Socket(path) => {
            let stream = UnixStream::connect(path)
                .map_err(|error| format!("cannot connect to unix:{}: {error}", path.display()))?;
            let _ = stream.set_read_timeout(Some(TIMEOUT));
            let _ = stream.set_write_timeout(Some(TIMEOUT));
            exchange(stream, request)?
        }
    };
    match &status_line {
        b"HTTP/1.1 200" | b"HTTP/1.0 200" => Ok(()),
        other => Err(format!("the agent is not ready: {}", String::from_utf8_lossy(other))),
    }
}

/// Sends `request` and reads the status line's first 12 bytes (`HTTP/1.1 200`).
fn exchange(mut stream: impl Read + Write, request: &str) -> Result<[u8; 12], String> {
    stream.write_all(request.as_bytes()).map_err(|error| format!("cannot send the request: {error}"))?;
    let mut status_line = [0u8; 12];
    stream.read_exact(&mut status_line).map_err(|error| format!("no answer from the agent: {error}"))?;
    Ok(status_line)
}
