//! Decrypt + parse + render time for a 5 000-key age artifact (SPEC §9): the work one refresh
//! does between the fetched bytes and a swapped snapshot. Run by `make bench`
//! (`cargo bench --bench pipeline`); needs the `age` and `age-keygen` CLIs to build the input.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use clef_agent::decrypt::{AgeIdentity, DecryptionKeys};
use clef_agent::refresh::validate_and_open_once;
use clef_agent::snapshot::Snapshot;

const NAMESPACES: usize = 50;
const KEYS_PER_NAMESPACE: usize = 100;
const RUNS: usize = 30;

fn run(program: &str, arguments: &[&str], input: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(arguments)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("{program} is needed to build the benchmark input: {error}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.unwrap_or_default().to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().expect("the command ran");
    writer.join().expect("writer thread").expect("stdin written");
    assert!(output.status.success(), "{program} failed");
    output.stdout
}

fn main() {
    let identity_file = String::from_utf8(run("age-keygen", &[], None)).expect("age-keygen prints text");
    let recipient = String::from_utf8(run("age-keygen", &["-y"], Some(identity_file.as_bytes()))).expect("text");
    let mut plaintext = serde_json::Map::new();
    for namespace in 0..NAMESPACES {
        let keys: serde_json::Map<String, serde_json::Value> = (0..KEYS_PER_NAMESPACE)
            .map(|key| (format!("KEY_{key:04}"), format!("value-{namespace:02}-{key:04}-{}", "x".repeat(24)).into()))
            .collect();
        plaintext.insert(format!("namespace{namespace:02}"), keys.into());
    }
    let plaintext = serde_json::Value::Object(plaintext).to_string();
    let ciphertext = base64::engine::general_purpose::STANDARD.encode(run(
        "age",
        &["-r", recipient.trim()],
        Some(plaintext.as_bytes()),
    ));
    let hash = ring::digest::digest(&ring::digest::SHA256, ciphertext.as_bytes());
    let artifact = serde_json::json!({
        "version": 1, "identity": "bench", "environment": "bench", "packedAt": "2026-11-24T12:00:00.000Z",
        "revision": "bench-1", "ciphertextHash": clef_agent::secret::hex(hash.as_ref()), "ciphertext": ciphertext,
    })
    .to_string();
    let keys =
        DecryptionKeys { age: Some(AgeIdentity::from_file_contents(&identity_file).expect("an identity")), kms: None };

    let mut times: Vec<Duration> = Vec::with_capacity(RUNS);
    let mut rendered = 0;
    for _ in 0..RUNS {
        let started = Instant::now();
        let (artifact, opened) = validate_and_open_once(artifact.as_bytes(), clef_agent::time::now_ms(), None, &keys)
            .expect("the artifact validates and opens");
        let snapshot = Snapshot::build(&artifact, opened);
        times.push(started.elapsed());
        rendered = snapshot.body(clef_agent::snapshot::Part::Secrets).len();
    }
    times.sort();
    let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
    println!(
        "decrypt + parse + render, {} keys ({:.0} KiB artifact, {:.0} KiB body): median {:.2} ms, min {:.2} ms, max {:.2} ms ({RUNS} runs)",
        NAMESPACES * KEYS_PER_NAMESPACE,
        artifact.len() as f64 / 1024.0,
        rendered as f64 / 1024.0,
        ms(times[RUNS / 2]),
        ms(times[0]),
        ms(times[RUNS - 1])
    );
}
