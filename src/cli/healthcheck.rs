//! `clef-agent healthcheck`: `GET /v1/ready` on the local agent, exit 0 on 200 and 1 otherwise.
//! It is the HEALTHCHECK of a scratch image, where there is no curl.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);

/// Asks the agent on `port` whether it is ready; the error says why not.
pub fn check_ready(port: u16) -> Result<(), String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, TIMEOUT)
        .map_err(|error| format!("cannot connect to {address}: {error}"))?;
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let request = format!("GET /v1/ready HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|error| format!("cannot send the request: {error}"))?;
    let mut status_line = [0u8; 12];
    stream.read_exact(&mut status_line).map_err(|error| format!("no answer: {error}"))?;
    match &status_line {
        b"HTTP/1.1 200" | b"HTTP/1.0 200" => Ok(()),
        other => Err(format!("not ready: {}", String::from_utf8_lossy(other))),
    }
}
