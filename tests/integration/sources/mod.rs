//! Remote sources against real peers: HTTP(S) and VCS APIs played by loopback servers that
//! follow the providers' documented requests and answers, S3 and STS by moto_server, and SigV4
//! compared with botocore's signer.

mod cache;
mod file;
mod http;
pub(crate) mod s3;
mod sigv4;
mod vcs;
