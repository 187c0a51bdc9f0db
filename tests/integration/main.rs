//! Integration tests: the real `clef-agent` executable, started with a cleared environment and
//! spoken to over HTTP, plus the fixture corpus run through the library. One crate, one module
//! per capability, helpers in `support`.

mod api;
mod delivery;
mod fixtures;
mod hung_source;
mod hygiene;
mod in_flight;
mod kms;
mod lifecycle;
mod ops;
mod pressure;
mod readme_recipe;
mod refresh;
mod refresh_endpoint;
mod resilience;
mod rollback;
mod secrecy;
mod sources;
mod support;
mod watch;
