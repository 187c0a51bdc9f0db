//! Delivery beyond HTTP (SPEC §11, issue 13): secrets for programs that cannot call the API.
//!
//! The refresh core tells its observer what it serves now ([`Subscribers::observe`], installed
//! by the lifecycle with `Refresher::observe_with`); this module turns that into one
//! [`Delivery`] event per *change* (a new revision, a wipe) and hands it to each subscriber in
//! order: the render directory (files on tmpfs, inline: fast local I/O) and the change hook
//! (queued to its own thread, never waited for). The credential socket needs no event: it
//! reads the live snapshot on each connection, so a wipe reaches it at once.
//!
//! A lifecycle calls [`prepare`] (checks and binds, before any thread starts), then
//! [`Prepared::start`], and [`Subscribers::shutdown`] when it stops.

pub mod credentials;
pub mod hook;
pub mod render;

use std::io;
use std::sync::{Arc, Mutex};

use crate::config::{Config, ConfigError};
use crate::decrypt::DecryptionKeys;
use crate::snapshot::{LiveSnapshot, Served, Snapshot, Wipe};

/// What changed for the consumers outside HTTP.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A new revision is served; `snapshot` is `None` in JIT mode (nothing decrypted is kept).
    Served { revision: String, snapshot: Option<Arc<Snapshot>> },
    /// The secrets were wiped.
    Wiped(WipeReason),
    /// The agent is stopping.
    Shutdown,
}

/// Why the secrets were wiped, as the hook's `CLEF_EVENT` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WipeReason {
    Revoked,
    /// The artifact's `expiresAt` passed, or no refresh succeeded within the TTL.
    Expired,
}

impl WipeReason {
    pub fn event_name(self) -> &'static str {
        match self {
            WipeReason::Revoked => "revoked",
            WipeReason::Expired => "expired",
        }
    }
}

/// A consumer of [`Delivery`] events. `notify` runs on the refresh thread: it must return fast.
pub trait Subscriber: Send + Sync {
    fn notify(&self, event: &Delivery);
}

/// What was last delivered, so that only changes become events.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Nothing,
    Revision(String),
    Wiped,
}

/// The event `served` makes after `seen`, if any: a revision not delivered yet, or the first
/// wipe after secrets were delivered. A wipe after a wipe, or before any load, changes nothing.
fn transition(seen: &Seen, served: &Served) -> Option<(Seen, Delivery)> {
    let (revision, snapshot) = match served {
        Served::NotLoaded => return None,
        Served::Wiped(wipe) => {
            if *seen != Seen::Wiped && *seen != Seen::Nothing {
                let reason = match wipe {
                    Wipe::Revoked(_) => WipeReason::Revoked,
                    Wipe::ArtifactExpired(_) | Wipe::CacheExpired => WipeReason::Expired,
                };
                return Some((Seen::Wiped, Delivery::Wiped(reason)));
            }
            return None;
        }
        Served::Cached(snapshot) => (&snapshot.revision, Some(Arc::clone(snapshot))),
        Served::Jit(sealed) => (&sealed.artifact.revision, None),
    };
    if *seen == Seen::Revision(revision.clone()) {
        return None;
    }
    Some((Seen::Revision(revision.clone()), Delivery::Served { revision: revision.clone(), snapshot }))
}

/// The subscribers, in the order they are told: files first, so a hook finds them in place.
pub struct Subscribers {
    list: Vec<Box<dyn Subscriber>>,
    /// Held while the subscribers are told, so events reach them in the order they happened.
    seen: Mutex<Seen>,
}

impl Subscribers {
    pub fn new(list: Vec<Box<dyn Subscriber>>) -> Subscribers {
        Subscribers { list, seen: Mutex::new(Seen::Nothing) }
    }

    /// Tells every subscriber about `served` when it is a change.
    pub fn observe(&self, served: &Served) {
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((next, event)) = transition(&seen, served) {
            *seen = next;
            self.notify(&event);
        }
    }

    pub fn notify(&self, event: &Delivery) {
        for subscriber in &self.list {
            subscriber.notify(event);
        }
    }

    /// The agent is stopping: rendered files and the credential socket file are removed.
    pub fn shutdown(&self) {
        let _seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.notify(&Delivery::Shutdown);
    }
}

/// The delivery modes checked and bound before any network access: the render directory's
/// file system and ownership, the credential socket bound (with mode 0600 from the start).
pub struct Prepared {
    render: Option<render::RenderDir>,
    credentials: Option<credentials::Bound>,
    hook: Option<Vec<String>>,
}

/// Checks and binds what the configuration asks for; config errors name the variable.
pub fn prepare(config: &Config) -> Result<Prepared, ConfigError> {
    let render = config.render.as_ref().map(render::RenderDir::open).transpose()?;
    let credentials = config.credentials.as_ref().map(credentials::Bound::bind).transpose()?;
    Ok(Prepared { render, credentials, hook: config.on_change.clone() })
}

impl Prepared {
    /// Starts the credential listener and the hook thread: the subscribers, or `None` when no
    /// delivery mode is configured. The error names the thread that could not start.
    pub fn start(
        self,
        cell: Arc<LiveSnapshot>,
        keys: Arc<DecryptionKeys>,
    ) -> Result<Option<Arc<Subscribers>>, (&'static str, io::Error)> {
        let mut list: Vec<Box<dyn Subscriber>> = Vec::new();
        if let Some(bound) = self.credentials {
            list.push(Box::new(bound.serve(cell, keys).map_err(|error| ("credential socket", error))?));
        }
        if let Some(render) = self.render {
            list.push(Box::new(render));
        }
        if let Some(argv) = self.hook {
            list.push(Box::new(hook::Hook::start(argv).map_err(|error| ("CLEF_AGENT_ON_CHANGE", error))?));
        }
        Ok((!list.is_empty()).then(|| Arc::new(Subscribers::new(list))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::sample as artifact;
    use crate::decrypt::Plaintext;
    use crate::snapshot::Refusal;

    fn cached(revision: &str) -> Served {
        let mut artifact = artifact();
        artifact.revision = revision.into();
        let plaintext = Plaintext::parse(br#"{"n":{"k":"v"}}"#).unwrap();
        Served::Cached(Arc::new(Snapshot::build(&artifact, plaintext)))
    }

    fn revoked() -> Served {
        Served::Wiped(Wipe::Revoked(Refusal::new("Artifact revoked", "x")))
    }

    /// The event names of what a run of served states delivers.
    fn events(states: &[Served]) -> Vec<String> {
        let mut seen = Seen::Nothing;
        let mut names = Vec::new();
        for served in states {
            if let Some((next, event)) = transition(&seen, served) {
                seen = next;
                names.push(match event {
                    Delivery::Served { revision, .. } => format!("served {revision}"),
                    Delivery::Wiped(reason) => reason.event_name().to_string(),
                    Delivery::Shutdown => "shutdown".into(),
                });
            }
        }
        names
    }

    #[test]
    fn only_a_new_revision_or_the_first_wipe_after_a_load_is_an_event() {
        let states = [
            Served::NotLoaded,
            revoked(),
            cached("r1"),
            cached("r1"),
            cached("r2"),
            Served::Wiped(Wipe::CacheExpired),
            revoked(),
            cached("r2"),
            Served::Wiped(Wipe::ArtifactExpired(Refusal::new("Artifact expired", "x"))),
        ];
        assert_eq!(events(&states), ["served r1", "served r2", "expired", "served r2", "expired"]);
    }

    #[test]
    fn a_revocation_is_named_revoked() {
        assert_eq!(events(&[cached("r1"), revoked()]), ["served r1", "revoked"]);
    }
}
