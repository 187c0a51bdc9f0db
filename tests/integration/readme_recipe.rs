//! README's "Make, sign and serve one by hand" recipe, run as written: the two shell blocks are
//! taken from README.md by their markers, so the documentation and this test cannot drift. The
//! first makes and signs an artifact with the `age` and `openssl` CLIs; the second starts the
//! agent on it with `CLEF_AGENT_VERIFY_KEY`, and `/v1/secrets` must answer what was encrypted.

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{free_port, get, wait_until, TempDir};

/// The token the serve block sets and the body the README shows for its `curl`.
const TOKEN: &str = "change-this-token";
const SECRETS: &str = r#"{"database":{"DB_USER":"app","DB_PASSWORD":"change-me"}}"#;
const READY_LIMIT: Duration = Duration::from_secs(10);

/// The fenced block that follows `<!-- recipe: <name> -->` in README.md.
fn recipe_block(name: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let marker = format!("<!-- recipe: {name} -->\n```sh\n");
    let start = readme.find(&marker).unwrap_or_else(|| panic!("README.md has no block marked {name}")) + marker.len();
    let length = readme[start..].find("\n```").unwrap_or_else(|| panic!("the {name} block is not closed"));
    readme[start..start + length + 1].to_string()
}

/// The serve block's shell and the agent it starts, in a process group of their own, stopped on drop.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        // SAFETY: signals the process group this test created, nothing else.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

#[test]
fn the_readme_recipe_makes_a_signed_artifact_that_the_agent_verifies_and_serves() {
    let dir = TempDir::new("readme-recipe");
    let work = dir.join("");
    let make = Command::new("bash")
        .args(["-eu", "-o", "pipefail", "-c", &recipe_block("make-artifact")])
        .current_dir(&work)
        .output()
        .expect("bash is needed to run the README recipe");
    assert!(make.status.success(), "the make-artifact block failed: {}", String::from_utf8_lossy(&make.stderr));

    let serve = recipe_block("serve-artifact");
    assert!(serve.contains("CLEF_AGENT_VERIFY_KEY"), "the recipe serves a signed artifact");
    let agent_dir = std::path::Path::new(env!("CARGO_BIN_EXE_clef-agent")).parent().unwrap();
    let path = format!("{}:{}", agent_dir.display(), std::env::var("PATH").unwrap_or_default());
    let port = free_port();
    let served = Served(
        Command::new("bash")
            .args(["-eu", "-c", &serve])
            .current_dir(&work)
            .env_clear()
            .env("PATH", path)
            // The block leaves the port to the environment; 7779 may be taken here.
            .env("CLEF_AGENT_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let bearer = format!("Bearer {TOKEN}");
    let answered = wait_until(READY_LIMIT, || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
            && get(port, "/v1/secrets", &[("Authorization", &bearer)]).status == 200
    });
    assert!(answered, "the agent started by the serve block never served /v1/secrets");
    let response = get(port, "/v1/secrets", &[("Authorization", &bearer)]);
    assert_eq!(String::from_utf8_lossy(&response.body), SECRETS);
    drop(served);
}
