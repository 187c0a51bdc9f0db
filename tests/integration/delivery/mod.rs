//! Delivery beyond HTTP (issue 13): systemd credentials over a Unix socket, files rendered on
//! tmpfs, and the change hook — each against the real executable.

mod credentials;
mod hook;
mod render;

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::TempDir;

/// A tmpfs mounted for one test (the tests run as root), unmounted when it is dropped.
pub struct Tmpfs {
    pub path: PathBuf,
    _dir: TempDir,
}

impl Tmpfs {
    pub fn mount(test: &str) -> Tmpfs {
        let dir = TempDir::new(test);
        let path = dir.join("tmpfs");
        std::fs::create_dir(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"])
            .arg(&path)
            .status()
            .expect("cannot run mount");
        assert!(status.success(), "cannot mount a tmpfs at {} (the tests run as root)", path.display());
        Tmpfs { path, _dir: dir }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// The names in `dir`, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
