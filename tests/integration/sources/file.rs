//! The file source: a symbolic link to the artifact is followed (Kubernetes ConfigMap and
//! Secret volumes are links), but what it names must be a regular file.

use std::path::Path;
use std::time::Duration;

use crate::support::{build_artifact, ArtifactOptions, Deployment, PLAINTEXT};

/// Start-up retries three times (2 s and 4 s apart) before it gives up.
const STARTUP_FAILURE_LIMIT: Duration = Duration::from_secs(20);

fn make_fifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

#[test]
fn a_fifo_at_the_source_path_fails_start_up_with_a_clear_message_instead_of_hanging() {
    let deployment = Deployment::new("file-fifo", "{}");
    make_fifo(&deployment.artifact);
    let agent = deployment.spawn(&[]);
    assert_eq!(agent.wait_exit(STARTUP_FAILURE_LIMIT).and_then(|status| status.code()), Some(1));
    let stderr = agent.stderr();
    assert!(
        stderr.contains(&format!(
            "fatal: Failed to fetch artifact from {path} after 3 attempts: cannot read {path}: it is not a regular \
             file (a FIFO, a device or a directory): point CLEF_AGENT_SOURCE at the artifact file",
            path = deployment.artifact.display()
        )),
        "{stderr}"
    );
}

#[test]
fn a_source_path_that_is_a_symbolic_link_to_the_artifact_is_followed() {
    let deployment = Deployment::new("file-link", &build_artifact(PLAINTEXT, "rev-1", &ArtifactOptions::default()));
    // The layout of a Kubernetes volume: the name is a link into a timestamped directory.
    let link = deployment.dir.join("mounted.age.json");
    std::os::unix::fs::symlink(&deployment.artifact, &link).unwrap();
    let agent = deployment.start(&[("CLEF_AGENT_SOURCE", &link.display().to_string())]);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
}
