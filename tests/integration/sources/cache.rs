//! The disk cache (`CLEF_AGENT_CACHE_PATH`, SPEC §4) with an HTTP source that fails on demand:
//! written after a good fetch with private modes and no plaintext, used by an agent restarted
//! during an outage, purged when older than the TTL and when the artifact is revoked.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::loopback::{Answer, Server};
use crate::support::{build_artifact, now_ms, wait_until, ArtifactOptions, Deployment, PLAINTEXT};

const SIGHUP_LIMIT: Duration = Duration::from_secs(5);
const STARTUP_FAILURE_LIMIT: Duration = Duration::from_secs(20);

/// An artifact server that answers 503 while `down`.
struct Source {
    server: Server,
    body: Arc<Mutex<Option<String>>>,
}

impl Source {
    fn serving(body: String) -> Source {
        let published: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(Some(body)));
        let answer = Arc::clone(&published);
        let server = Server::start(move |_| match answer.lock().unwrap().clone() {
            Some(body) => Answer::json(200, &body),
            None => Answer::json(503, r#"{"message":"down for maintenance"}"#),
        });
        Source { server, body: published }
    }

    fn publish(&self, body: Option<String>) {
        *self.body.lock().unwrap() = body;
    }
}

/// The files the cache holds: `<dir>/source-<hash>.age.json` and `.meta`.
fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|entries| entries.flatten().map(|entry| entry.path()).collect()).unwrap_or_default();
    files.sort();
    files
}

fn secret_values() -> Vec<String> {
    let parsed: serde_json::Value = serde_json::from_str(PLAINTEXT).unwrap();
    let mut values = Vec::new();
    for keys in parsed.as_object().unwrap().values() {
        for value in keys.as_object().unwrap().values() {
            values.push(value.as_str().unwrap().to_string());
        }
    }
    values
}

fn setup(test: &str) -> (Deployment, Source, PathBuf, String) {
    let deployment = Deployment::new(test, "{}");
    let source = Source::serving(build_artifact(PLAINTEXT, "rev-1", &ArtifactOptions::default()));
    let cache_dir = deployment.dir.join("cache");
    let url = source.server.url("/app.age.json");
    (deployment, source, cache_dir, url)
}

#[test]
fn the_cache_holds_only_the_encrypted_artifact_with_private_modes() {
    let (deployment, _source, cache_dir, url) = setup("cache-modes");
    let cache = cache_dir.display().to_string();
    let agent = deployment.start(&[("CLEF_AGENT_SOURCE", &url), ("CLEF_AGENT_CACHE_PATH", &cache)]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    let files = cache_files(&cache_dir);
    let names: Vec<String> =
        files.iter().map(|file| file.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].ends_with(".age.json") && names[1].ends_with(".meta"), "{names:?}");
    assert_eq!(std::fs::metadata(&cache_dir).unwrap().mode() & 0o777, 0o700);
    for file in &files {
        assert_eq!(std::fs::metadata(file).unwrap().mode() & 0o777, 0o600, "{}", file.display());
        let bytes = std::fs::read(file).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for value in secret_values() {
            assert!(!text.contains(&value), "{} holds the plaintext value {value:?}", file.display());
        }
    }
    let cached: serde_json::Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(cached["revision"], "rev-1", "the cache holds the artifact as fetched");
}

#[test]
fn an_outage_after_start_keeps_serving_and_a_restart_during_it_serves_from_the_cache() {
    let (deployment, source, cache_dir, url) = setup("cache-restart");
    let cache = cache_dir.display().to_string();
    let env = [("CLEF_AGENT_SOURCE", url.as_str()), ("CLEF_AGENT_CACHE_PATH", cache.as_str())];
    let agent = deployment.start(&env);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);

    source.publish(None);
    agent.signal(libc::SIGHUP);
    agent.wait_for_stderr("answered HTTP 503", SIGHUP_LIMIT);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    drop(agent);

    let restarted = deployment.start(&env);
    restarted.get("/v1/secrets").assert(200, PLAINTEXT);
    assert!(restarted.stderr().contains("serving the artifact from the disk cache"), "{}", restarted.stderr());
    assert_eq!(restarted.get("/v1/ready").status, 200);

    source.publish(Some(build_artifact(PLAINTEXT, "rev-1", &ArtifactOptions::default())));
    restarted.signal(libc::SIGHUP);
    assert!(wait_until(SIGHUP_LIMIT, || source.server.requests().len() >= 4));
    restarted.get("/v1/secrets").assert(200, PLAINTEXT);
}

#[test]
fn an_entry_older_than_the_ttl_is_purged_instead_of_served() {
    let (deployment, source, cache_dir, url) = setup("cache-ttl");
    let cache = cache_dir.display().to_string();
    let env = [
        ("CLEF_AGENT_SOURCE", url.as_str()),
        ("CLEF_AGENT_CACHE_PATH", cache.as_str()),
        ("CLEF_AGENT_CACHE_TTL", "30"),
    ];
    drop(deployment.start(&env));
    source.publish(None);
    // Age the entry past the 30 s TTL, as if the agent had been down for a minute.
    let meta =
        cache_files(&cache_dir).into_iter().find(|file| file.extension().is_some_and(|ext| ext == "meta")).unwrap();
    let mut value: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    value["fetchedAt"] = (now_ms() - 60_000).into();
    std::fs::write(&meta, value.to_string()).unwrap();

    let agent = deployment.spawn(&env);
    assert_eq!(agent.wait_exit(STARTUP_FAILURE_LIMIT).and_then(|status| status.code()), Some(1));
    let stderr = agent.stderr();
    assert!(stderr.contains("Secrets cache expired: no successful refresh within TTL"), "{stderr}");
    assert!(cache_files(&cache_dir).is_empty(), "the expired entry was purged");
}

#[test]
fn a_revocation_purges_the_cache_so_a_restart_cannot_resurrect_the_secrets() {
    let (deployment, source, cache_dir, url) = setup("cache-revoked");
    let cache = cache_dir.display().to_string();
    let env = [("CLEF_AGENT_SOURCE", url.as_str()), ("CLEF_AGENT_CACHE_PATH", cache.as_str())];
    let agent = deployment.start(&env);
    assert_eq!(cache_files(&cache_dir).len(), 2);
    let mut revoked: serde_json::Value =
        serde_json::from_str(&build_artifact(PLAINTEXT, "rev-1", &ArtifactOptions::default())).unwrap();
    revoked["revokedAt"] = "2026-11-25T08:00:00.000Z".into();
    source.publish(Some(revoked.to_string()));
    agent.signal(libc::SIGHUP);
    assert!(wait_until(SIGHUP_LIMIT, || agent.get("/v1/secrets").status == 503));
    assert!(cache_files(&cache_dir).is_empty(), "{:?}", cache_files(&cache_dir));
    drop(agent);

    source.publish(None);
    let restarted = deployment.spawn(&env);
    assert_eq!(restarted.wait_exit(STARTUP_FAILURE_LIMIT).and_then(|status| status.code()), Some(1));
    assert!(restarted.stderr().contains("answered HTTP 503"), "{}", restarted.stderr());
}

/// Writes `.meta` back with `change` applied.
fn edit_meta(cache_dir: &Path, change: impl FnOnce(&mut serde_json::Value)) {
    let meta =
        cache_files(cache_dir).into_iter().find(|file| file.extension().is_some_and(|ext| ext == "meta")).unwrap();
    let mut value: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    change(&mut value);
    std::fs::write(&meta, value.to_string()).unwrap();
}

fn make_fifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

#[test]
fn an_entry_stamped_in_the_future_is_expired_instead_of_served() {
    let (deployment, source, cache_dir, url) = setup("cache-future");
    let cache = cache_dir.display().to_string();
    let env = [
        ("CLEF_AGENT_SOURCE", url.as_str()),
        ("CLEF_AGENT_CACHE_PATH", cache.as_str()),
        ("CLEF_AGENT_CACHE_TTL", "30"),
    ];
    drop(deployment.start(&env));
    source.publish(None);
    // A clock 40 s ahead when the entry was written (or a planted file): counted from its stamp,
    // the entry would be served for 70 s with a 30 s TTL.
    edit_meta(&cache_dir, |meta| meta["fetchedAt"] = (now_ms() + 40_000).into());

    let agent = deployment.spawn(&env);
    assert_eq!(agent.wait_exit(STARTUP_FAILURE_LIMIT).and_then(|status| status.code()), Some(1));
    let stderr = agent.stderr();
    assert!(stderr.contains("after now") && stderr.contains("treated as expired"), "{stderr}");
    assert!(stderr.contains("Secrets cache expired: no successful refresh within TTL"), "{stderr}");
    assert!(cache_files(&cache_dir).is_empty(), "the entry was purged");
}

#[test]
fn an_artifact_that_does_not_match_the_hash_in_its_meta_is_not_served() {
    let (deployment, source, cache_dir, url) = setup("cache-mismatch");
    let cache = cache_dir.display().to_string();
    let env = [("CLEF_AGENT_SOURCE", url.as_str()), ("CLEF_AGENT_CACHE_PATH", cache.as_str())];
    drop(deployment.start(&env));
    source.publish(None);
    // What an exit between the two renames of a store leaves: another artifact beside the old
    // `.meta` (here one the key accepts, so only the hash can tell).
    let artifact =
        cache_files(&cache_dir).into_iter().find(|file| file.to_string_lossy().ends_with(".age.json")).unwrap();
    std::fs::write(&artifact, build_artifact(PLAINTEXT, "rev-2", &ArtifactOptions::default())).unwrap();

    let agent = deployment.spawn(&env);
    assert_eq!(agent.wait_exit(STARTUP_FAILURE_LIMIT).and_then(|status| status.code()), Some(1));
    let stderr = agent.stderr();
    assert!(
        stderr.contains(&format!(
            "warning: the disk cache is not used: {} does not match the artifactSha256 in",
            artifact.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("serving the artifact from the disk cache"), "{stderr}");
}

#[test]
fn a_fifo_in_place_of_a_cache_file_does_not_hang_start_up() {
    let (deployment, source, cache_dir, url) = setup("cache-fifo");
    let cache = cache_dir.display().to_string();
    let env = [("CLEF_AGENT_SOURCE", url.as_str()), ("CLEF_AGENT_CACHE_PATH", cache.as_str())];
    drop(deployment.start(&env));
    source.publish(None);
    let meta =
        cache_files(&cache_dir).into_iter().find(|file| file.extension().is_some_and(|ext| ext == "meta")).unwrap();
    make_fifo(&meta);

    let agent = deployment.spawn(&env);
    assert_eq!(agent.wait_exit(STARTUP_FAILURE_LIMIT).and_then(|status| status.code()), Some(1));
    let stderr = agent.stderr();
    assert!(
        stderr.contains(&format!("warning: the disk cache is not used: {}: is not a regular file", meta.display())),
        "{stderr}"
    );
}

/// Starts the agent with `cache_path` and returns its config error (it must exit at once).
fn refused_cache_path(deployment: &Deployment, cache_path: &Path) -> String {
    let agent = deployment.spawn(&[("CLEF_AGENT_CACHE_PATH", &cache_path.display().to_string())]);
    assert_eq!(agent.wait_exit(STARTUP_FAILURE_LIMIT).and_then(|status| status.code()), Some(1));
    agent.stderr()
}

#[test]
fn a_cache_directory_others_can_write_is_refused_and_its_mode_left_alone() {
    use std::os::unix::fs::PermissionsExt;
    let deployment =
        Deployment::new("cache-shared-dir", &build_artifact(PLAINTEXT, "rev-1", &ArtifactOptions::default()));
    // What CLEF_AGENT_CACHE_PATH=/tmp is: a directory every user can write (sticky).
    let shared = deployment.dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let stderr = refused_cache_path(&deployment, &shared);
    assert!(
        stderr.ends_with(&format!(
            "config error: CLEF_AGENT_CACHE_PATH: the cache directory {} is writable by its group or by others \
             (mode 1777): point CLEF_AGENT_CACHE_PATH at a directory of the agent's own (a missing one is created \
             with mode 0700), or remove that write permission (chmod go-w) if it is one already\n",
            shared.display()
        )),
        "{stderr}"
    );
    assert_eq!(std::fs::metadata(&shared).unwrap().mode() & 0o7777, 0o1777, "the mode is untouched");
    assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 0, "nothing was written there");
}

#[test]
fn a_cache_directory_that_is_a_symbolic_link_is_refused_and_its_target_left_alone() {
    use std::os::unix::fs::PermissionsExt;
    let deployment =
        Deployment::new("cache-linked-dir", &build_artifact(PLAINTEXT, "rev-1", &ArtifactOptions::default()));
    let target = deployment.dir.join("target");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
    let link = deployment.dir.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let stderr = refused_cache_path(&deployment, &link);
    assert!(
        stderr.ends_with(&format!(
            "config error: CLEF_AGENT_CACHE_PATH: the cache directory {} is a symbolic link, which is refused \
             (whoever can change the link chooses the directory): point CLEF_AGENT_CACHE_PATH at a directory of the \
             agent's own (a missing one is created with mode 0700), not at a link\n",
            link.display()
        )),
        "{stderr}"
    );
    assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o7777, 0o755, "the mode is untouched");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0, "nothing was written there");
}
