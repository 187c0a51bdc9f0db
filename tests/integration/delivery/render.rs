//! `CLEF_AGENT_RENDER_DIR`: files on tmpfs, swapped as a set, with the mode and group asked
//! for, gone on revocation and shutdown; a disk-backed directory is refused.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{names_in, Tmpfs};
use crate::support::loopback::HeldSource;
use crate::support::{build_artifact, sighup_and_wait_for_refresh, Agent, ArtifactOptions, Deployment, PLAINTEXT};

const SLOW_POLLING: (&str, &str) = ("CLEF_AGENT_CACHE_TTL", "300");
const LIMIT: Duration = Duration::from_secs(5);

fn artifact(plaintext: &str, revision: &str) -> String {
    build_artifact(plaintext, revision, &ArtifactOptions::default())
}

/// Revision `n`: both values carry `n`.
fn numbered(n: usize) -> String {
    format!(r#"{{"db":{{"USER":"user-{n}","PASSWORD":"pass {n}'s"}}}}"#)
}

fn start(deployment: &Deployment, dir: &Path, extra: &[(&str, &str)]) -> Agent {
    let mut env = vec![("CLEF_AGENT_RENDER_DIR", dir.to_str().unwrap()), SLOW_POLLING];
    env.extend_from_slice(extra);
    deployment.start(&env)
}

/// The number in `text` after `prefix`.
fn number_after(text: &str, prefix: &str) -> Option<usize> {
    let start = text.find(prefix)? + prefix.len();
    text[start..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
}

/// What a careful reader does: resolve `..data` once, then read the set from there (after
/// `pause`: a slow reader). Returns the revision number each file shows.
fn read_set(dir: &Path, pause: Duration) -> Result<[Option<usize>; 3], String> {
    let target = std::fs::read_link(dir.join("..data")).map_err(|error| format!("..data: {error}"))?;
    std::thread::sleep(pause);
    let read =
        |name: &str| std::fs::read_to_string(dir.join(&target).join(name)).map_err(|error| format!("{name}: {error}"));
    let json: serde_json::Value = serde_json::from_str(&read("secrets.json")?).map_err(|error| error.to_string())?;
    let (user, password) = (json["db"]["USER"].as_str().unwrap_or(""), json["db"]["PASSWORD"].as_str().unwrap_or(""));
    if number_after(user, "user-") != number_after(password, "pass ") {
        return Err(format!("secrets.json mixes revisions: {json}"));
    }
    Ok([
        number_after(user, "user-"),
        number_after(&read("db__PASSWORD")?, "pass "),
        number_after(&read("secrets.env")?, "db__USER=user-"),
    ])
}

#[test]
fn a_reader_never_sees_a_mixed_set_or_a_missing_file_through_50_rotations() {
    let tmpfs = Tmpfs::mount("render-rotations");
    let dir = tmpfs.join("app");
    let deployment = Deployment::new("render-rotations", &artifact(&numbered(0), "rev-0"));
    let agent = start(&deployment, &dir, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    // A fast reader, and a slow one that reads a set a few rotations after it resolved
    // `..data` (the old revision's directory must stay for it, within its grace).
    let readers: Vec<_> = [Duration::ZERO, Duration::from_millis(200)]
        .into_iter()
        .map(|pause| {
            let (dir, stop, reads) = (dir.clone(), Arc::clone(&stop), Arc::clone(&reads));
            std::thread::spawn(move || -> Result<(), String> {
                while !stop.load(Ordering::SeqCst) {
                    let [json, file, env] = read_set(&dir, pause)?;
                    if json != file || file != env || json.is_none() {
                        return Err(format!(
                            "a mixed set: secrets.json {json:?}, db__PASSWORD {file:?}, secrets.env {env:?}"
                        ));
                    }
                    for name in ["db__USER", "db__PASSWORD", "secrets.env", "secrets.json"] {
                        std::fs::read(dir.join(name)).map_err(|error| format!("{name} went missing: {error}"))?;
                    }
                    reads.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            })
        })
        .collect();
    for n in 1..=50 {
        deployment.publish(&artifact(&numbered(n), &format!("rev-{n}")));
        sighup_and_wait_for_refresh(&agent, LIMIT);
        agent.wait_for_stdout(&format!("render: revision rev-{n} in "), LIMIT);
    }
    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.join().unwrap().unwrap_or_else(|error| panic!("after {} reads: {error}", reads.load(Ordering::SeqCst)));
    }
    assert!(reads.load(Ordering::SeqCst) > 50, "the reader hardly ran");
    assert_eq!(std::fs::read_to_string(dir.join("db__PASSWORD")).unwrap(), "pass 50's");
    // Old revisions go after their grace: in the end only the one served is left.
    assert!(crate::support::wait_until(LIMIT, || names_in(&dir)
        .iter()
        .filter(|name| name.starts_with("..rev-"))
        .count()
        == 1));
}

#[test]
fn files_have_the_mode_and_group_asked_for_and_secrets_env_reads_back_exactly() {
    let tmpfs = Tmpfs::mount("render-modes");
    let dir = tmpfs.join("app");
    let deployment = Deployment::new("render-modes", &artifact(PLAINTEXT, "rev-1"));
    let _agent = start(&deployment, &dir, &[("CLEF_AGENT_RENDER_MODE", "0440"), ("CLEF_AGENT_RENDER_GROUP", "4321")]);
    assert_eq!(
        names_in(&dir).into_iter().filter(|name| !name.starts_with("..rev-")).collect::<Vec<_>>(),
        [
            "..data",
            "database__DB_PASSWORD",
            "database__DB_URL",
            "payments__QUOTED",
            "payments__STRIPE KEY",
            "payments__café",
            "secrets.env",
            "secrets.json"
        ]
    );
    for name in ["database__DB_PASSWORD", "payments__STRIPE KEY", "secrets.env", "secrets.json"] {
        let metadata = std::fs::metadata(dir.join(name)).unwrap();
        assert_eq!((metadata.permissions().mode() & 0o7777, metadata.gid()), (0o440, 4321), "{name}");
    }
    for directory in [dir.join("..data"), dir.clone()] {
        let metadata = std::fs::metadata(&directory).unwrap();
        assert_eq!((metadata.permissions().mode() & 0o7777, metadata.gid()), (0o750, 4321), "{}", directory.display());
    }
    assert_eq!(std::fs::read_to_string(dir.join("payments__café")).unwrap(), "crème-brûlée-7e3b");
    let secrets: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("secrets.json")).unwrap()).unwrap();
    assert_eq!(secrets, serde_json::from_str::<serde_json::Value>(PLAINTEXT).unwrap());

    // `set -a; . secrets.env` with a real sh gives back every value that has a variable name.
    let output = std::process::Command::new("sh")
        .args(["-c", "set -a; . ./secrets.env; printf '%s\\0%s\\0' \"$database__DB_URL\" \"$payments__QUOTED\""])
        .current_dir(&dir)
        .env_clear()
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.stdout, b"postgres://app:db-pass-4a1f@db.internal:5432/app\0say \"hi\"\\ now\n\x1f/ok\0");
}

#[test]
fn files_are_removed_on_revocation_and_on_shutdown() {
    let tmpfs = Tmpfs::mount("render-removal");
    let dir = tmpfs.join("app");
    let original = artifact(PLAINTEXT, "rev-1");
    let deployment = Deployment::new("render-removal", &original);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("not-ours"), "x").unwrap();
    let agent = start(&deployment, &dir, &[]);
    assert!(dir.join("database__DB_PASSWORD").exists());
    assert_eq!(std::fs::metadata(dir.join("secrets.json")).unwrap().permissions().mode() & 0o7777, 0o400);

    let mut revoked: serde_json::Value = serde_json::from_str(&original).unwrap();
    revoked["revokedAt"] = "2026-11-25T08:00:00.000Z".into();
    deployment.publish(&revoked.to_string());
    agent.signal(libc::SIGHUP);
    assert!(
        crate::support::wait_until(LIMIT, || names_in(&dir) == ["not-ours"]),
        "left after revocation: {:?}",
        names_in(&dir)
    );

    deployment.publish(&artifact(PLAINTEXT, "rev-2"));
    agent.signal(libc::SIGHUP);
    agent.wait_for_stdout("render: revision rev-2 in ", LIMIT);
    assert!(dir.join("database__DB_PASSWORD").exists());
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(10)).expect("the agent did not stop");
    assert_eq!(names_in(&dir), ["not-ours"], "left after shutdown");
}

#[test]
fn a_disk_backed_or_shared_directory_is_refused_and_tmpfs_is_accepted() {
    let deployment = Deployment::new("render-disk", &artifact(PLAINTEXT, "rev-1"));
    let on_disk = deployment.dir.join("rendered");
    let agent = deployment.spawn(&[("CLEF_AGENT_RENDER_DIR", on_disk.to_str().unwrap())]);
    let status = agent.wait_exit(Duration::from_secs(10)).expect("the agent did not exit");
    assert_eq!(status.code(), Some(1));
    assert!(agent.stderr().contains("is not on tmpfs or ramfs"), "{}", agent.stderr());
    assert!(agent.stderr().contains("CLEF_AGENT_RENDER_ALLOW_DISK=1"), "{}", agent.stderr());

    std::fs::set_permissions(&on_disk, std::fs::Permissions::from_mode(0o777)).unwrap();
    let agent = deployment
        .spawn(&[("CLEF_AGENT_RENDER_DIR", on_disk.to_str().unwrap()), ("CLEF_AGENT_RENDER_ALLOW_DISK", "1")]);
    agent.wait_exit(Duration::from_secs(10)).expect("the agent did not exit");
    assert!(agent.stderr().contains("lets others write in it (and plant links)"), "{}", agent.stderr());

    let tmpfs = Tmpfs::mount("render-disk");
    let _agent = start(&deployment, &tmpfs.join("app"), &[]);
    assert!(tmpfs.join("app/secrets.json").exists());
}

/// The TTL wipe comes from its own timer while a fetch hangs (the source holds every fetch
/// after the first past the TTL): the files go with it, not when the fetch gives up.
#[test]
fn files_are_removed_at_the_ttl_while_a_fetch_hangs() {
    let tmpfs = Tmpfs::mount("render-ttl");
    let dir = tmpfs.join("app");
    let source = HeldSource::start(artifact(PLAINTEXT, "rev-1"));
    let deployment = Deployment::new("render-ttl", "{}");
    let agent = deployment.start(&[
        ("CLEF_AGENT_SOURCE", &source.url()),
        ("CLEF_AGENT_RENDER_DIR", dir.to_str().unwrap()),
        ("CLEF_AGENT_CACHE_TTL", "30"),
    ]);
    let ready = Instant::now();
    assert!(dir.join("secrets.json").exists());
    assert!(source.wait_for_fetches(2, Duration::from_secs(10)), "no poll");
    agent.wait_for_stderr("cache expired: no successful refresh within CLEF_AGENT_CACHE_TTL", Duration::from_secs(40));
    assert!(
        crate::support::wait_until(LIMIT, || names_in(&dir).is_empty()),
        "left after the TTL: {:?}",
        names_in(&dir)
    );
    assert_eq!(source.fetches(), 2, "the hung fetch ended first: proves nothing");
    assert!(ready.elapsed() < Duration::from_secs(34), "the hung fetch may have ended: proves nothing");
}
