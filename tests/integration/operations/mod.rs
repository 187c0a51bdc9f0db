//! Operations: the commands, systemd notify, the Lambda extension and telemetry, each against
//! a real peer on loopback (a datagram socket, an Extensions API, an OTLP collector).

mod lambda;
pub mod loopback;
mod telemetry;
