//! Snapshot swaps under load (SPEC §6: a request clones an `Arc` of a snapshot rendered at swap
//! time): keep-alive clients hammer `/v1/secrets` while the artifact rotates five times a second.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{proc_status, KeepAlive};
use crate::support::{build_artifact, ArtifactOptions, Deployment, PLAINTEXT, PLAINTEXT_ROTATED, TOKEN};

const CLIENTS: usize = 16;
const ROTATE_EVERY: Duration = Duration::from_millis(200);
const ROTATING_FOR: Duration = Duration::from_secs(20);
/// Threads, connections and allocator arenas are all in place by then.
const WARM_UP: Duration = Duration::from_secs(5);
/// How far RSS may rise between the end of the warm-up and the end of the run.
const RSS_GROWTH_LIMIT_KIB: u64 = 4 * 1024;
/// Failures shown in full in an assertion message; the rest are only counted.
const SHOWN_FAILURES: usize = 10;

/// The revisions served in turn: the two standard ones, one of several KiB and a tiny one, so
/// that a body mixing two snapshots, or framed by another snapshot's length, cannot pass.
fn plaintexts() -> Vec<String> {
    let long_value = "0123456789abcdef".repeat(256);
    vec![
        PLAINTEXT.to_string(),
        PLAINTEXT_ROTATED.to_string(),
        format!(
            r#"{{"database":{{"DB_URL":"postgres://app:long@db.internal:5432/app","DB_PASSWORD":"{long_value}"}}}}"#
        ),
        r#"{"solo":{"ONLY":"v4"}}"#.to_string(),
    ]
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    served: u64,
    /// Answers per plaintext, by index in [`plaintexts`].
    seen: Vec<u64>,
    /// Answers other than 200.
    not_ok: u64,
    /// 200 answers whose body is none of the plaintexts (torn or mixed snapshots).
    torn: u64,
    /// Connections that failed or ended instead of answering.
    errors: u64,
    /// The first few of all of the above, described.
    failures: Vec<String>,
}

impl Tally {
    fn note(&mut self, failure: String) {
        if self.failures.len() < SHOWN_FAILURES {
            self.failures.push(failure);
        }
    }
}

/// GETs `/v1/secrets` over one keep-alive connection until `stop`, reconnecting after an error.
fn hammer(port: u16, plaintexts: Arc<Vec<String>>, stop: Arc<AtomicBool>) -> Tally {
    let bearer = format!("Bearer {TOKEN}");
    let mut tally = Tally { seen: vec![0; plaintexts.len()], ..Tally::default() };
    let mut connection = None;
    while !stop.load(Ordering::Relaxed) {
        let client = match &mut connection {
            Some(client) => client,
            None => match KeepAlive::connect(port) {
                Ok(client) => connection.insert(client),
                Err(error) => {
                    tally.errors += 1;
                    tally.note(format!("connect: {error}"));
                    continue;
                }
            },
        };
        let answer = match client.get("/v1/secrets", &[("Authorization", &bearer)]) {
            Ok(answer) => answer,
            Err(error) => {
                tally.errors += 1;
                tally.note(format!("request {}: {error}", tally.served + 1));
                connection = None;
                continue;
            }
        };
        tally.served += 1;
        if answer.status != 200 {
            tally.not_ok += 1;
            tally.note(format!("status {}: {}", answer.status, answer.text()));
        } else if let Some(index) = plaintexts.iter().position(|plaintext| plaintext.as_bytes() == answer.body) {
            tally.seen[index] += 1;
        } else {
            tally.torn += 1;
            tally.note(format!("a body matching no plaintext ({} bytes): {:?}", answer.body.len(), answer.text()));
        }
    }
    tally
}

/// Stops the clients when dropped, so that a failing test does not leave them spinning.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn sixteen_keep_alive_clients_get_only_whole_snapshots_while_the_artifact_rotates_and_rss_stays_flat() {
    let plaintexts = plaintexts();
    let artifacts: Vec<String> = plaintexts
        .iter()
        .enumerate()
        .map(|(index, plaintext)| build_artifact(plaintext, &format!("rot-{index}"), &ArtifactOptions::default()))
        .collect();
    let deployment = Deployment::new("pressure-rotation", &artifacts[0]);
    // The poll floor is 5 s: SIGHUP after each publish makes the agent load it at once.
    let agent = deployment.start(&[("CLEF_AGENT_CACHE_TTL", "30")]);
    let plaintexts = Arc::new(plaintexts);
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_clients = StopOnDrop(Arc::clone(&stop));
    let clients: Vec<JoinHandle<Tally>> = (0..CLIENTS)
        .map(|_| {
            let (plaintexts, stop, port) = (Arc::clone(&plaintexts), Arc::clone(&stop), agent.port());
            std::thread::spawn(move || hammer(port, plaintexts, stop))
        })
        .collect();

    let started = Instant::now();
    let mut rss_after_warm_up = None;
    let mut rss_samples = Vec::new();
    let mut publishes: u32 = 0;
    while started.elapsed() < ROTATING_FOR {
        publishes += 1;
        deployment.publish(&artifacts[publishes as usize % artifacts.len()]);
        agent.signal(libc::SIGHUP);
        if publishes % 5 == 0 {
            rss_samples.push(proc_status(agent.pid(), "VmRSS"));
        }
        if rss_after_warm_up.is_none() && started.elapsed() >= WARM_UP {
            rss_after_warm_up = Some(proc_status(agent.pid(), "VmRSS"));
        }
        // A fixed cadence: the next publish is due at a multiple of ROTATE_EVERY.
        let due = started + ROTATE_EVERY * publishes;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    // Still under load, like the warm-up figure.
    let rss_at_end = proc_status(agent.pid(), "VmRSS");
    stop.store(true, Ordering::Relaxed);
    let tallies: Vec<Tally> =
        clients.into_iter().map(|client| client.join().expect("a client thread panicked")).collect();

    let served: u64 = tallies.iter().map(|tally| tally.served).sum();
    let total = |count: fn(&Tally) -> u64| tallies.iter().map(count).sum::<u64>();
    let (not_ok, torn, errors) = (total(|tally| tally.not_ok), total(|tally| tally.torn), total(|tally| tally.errors));
    let failures: Vec<&String> = tallies.iter().flat_map(|tally| &tally.failures).take(SHOWN_FAILURES).collect();
    let seen: Vec<u64> =
        (0..plaintexts.len()).map(|index| tallies.iter().map(|tally| tally.seen[index]).sum()).collect();
    let refreshes = agent.stdout().matches("refreshed: revision rot-").count();
    let rss_after_warm_up = rss_after_warm_up.expect("the run is longer than the warm-up");
    eprintln!(
        "rotation under load: {served} requests served by {CLIENTS} keep-alive clients in {:?}; {publishes} \
         publishes, {refreshes} refreshes logged; answers per plaintext {seen:?}; VmRSS after warm-up \
         {rss_after_warm_up} KiB, at end {rss_at_end} KiB, every second {rss_samples:?} KiB; VmHWM {} KiB",
        started.elapsed(),
        proc_status(agent.pid(), "VmHWM"),
    );

    assert_eq!(errors, 0, "{errors} requests got no answer; first failures: {failures:#?}");
    assert_eq!(not_ok, 0, "{not_ok} of {served} answers were not 200; first failures: {failures:#?}");
    assert_eq!(torn, 0, "{torn} of {served} bodies matched no published plaintext; first failures: {failures:#?}");
    assert!(
        seen.iter().all(|&count| count > 0),
        "not every published plaintext was served ({seen:?}): rotation did not happen under load\nstdout: {}\nstderr: {}",
        agent.stdout(),
        agent.stderr()
    );
    assert!(
        rss_at_end <= rss_after_warm_up + RSS_GROWTH_LIMIT_KIB,
        "VmRSS grew from {rss_after_warm_up} KiB after the warm-up to {rss_at_end} KiB (samples {rss_samples:?})"
    );
}
