//! Remote sources against real peers: HTTP(S) and VCS APIs played by loopback servers that
//! follow the providers' documented requests and answers, S3 and STS by moto_server.

mod cache;
mod http;
mod vcs;
