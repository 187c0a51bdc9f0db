//! A request that counts once until it is taken. SIGHUP asks for a refresh: however many
//! signals arrive before that refresh starts, they ask for one, so a burst of them queues at
//! most one refresh behind the one running instead of one each (in Lambda a queue of refreshes
//! would hold SHUTDOWN up past its 2 s budget).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Shared by whoever asks and whoever serves the request; clones share the flag.
#[derive(Clone, Default)]
pub struct Pending(Arc<AtomicBool>);

impl Pending {
    /// Asks; true when nothing was pending, so the caller must wake whoever serves the request
    /// (false: a wake-up is already on its way).
    pub fn ask(&self) -> bool {
        !self.0.swap(true, Ordering::SeqCst)
    }

    /// Takes the request just before serving it, so that an ask from now on asks for another.
    pub fn take(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Step {
        Ask,
        Take,
    }
    use Step::{Ask, Take};

    /// Runs `steps`; how many of them woke the server.
    fn wake_ups(steps: &[Step]) -> usize {
        let pending = Pending::default();
        steps
            .iter()
            .filter(|step| match step {
                Ask => pending.ask(),
                Take => {
                    pending.take();
                    false
                }
            })
            .count()
    }

    #[test]
    fn asks_before_the_request_is_taken_wake_the_server_once() {
        let cases: &[(&[Step], usize)] = &[
            (&[], 0),
            (&[Ask], 1),
            (&[Ask, Ask, Ask], 1),
            // a burst while a refresh runs: one more refresh, not one per signal
            (&[Ask, Take, Ask, Ask, Ask], 2),
            (&[Ask, Take, Ask, Take, Ask], 3),
            (&[Take, Take, Ask], 1),
        ];
        for (steps, expected) in cases {
            assert_eq!(wake_ups(steps), *expected);
        }
    }

    #[test]
    fn clones_share_the_request() {
        let asker = Pending::default();
        let server = asker.clone();
        assert!(asker.ask());
        assert!(!asker.ask());
        server.take();
        assert!(asker.ask());
    }
}
