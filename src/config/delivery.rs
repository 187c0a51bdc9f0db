//! The delivery variables (issue 13): credential socket, render directory, change hook. Kept
//! apart from the rest of `config.rs` so each rule sits next to its message.

use std::path::PathBuf;

use super::{error, ConfigError, Mode};

/// `CLEF_AGENT_RENDER_MODE`: the files' mode. Nobody writes them (the agent replaces them), and
/// others never read them; the group may (with `CLEF_AGENT_RENDER_GROUP`).
pub const DEFAULT_RENDER_MODE: u32 = 0o400;
pub const GROUP_READABLE_RENDER_MODE: u32 = 0o440;

/// `CLEF_AGENT_CREDENTIAL_SOCKET` and `CLEF_AGENT_CREDENTIAL_UNITS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialConfig {
    pub socket: PathBuf,
    /// Unit name patterns (`*` matches any run of characters); `None`: any unit.
    pub units: Option<Vec<String>>,
}

/// `CLEF_AGENT_RENDER_DIR` and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderConfig {
    pub dir: PathBuf,
    pub mode: u32,
    /// A group name or number, resolved when the agent starts.
    pub group: Option<String>,
    pub allow_disk: bool,
}

pub fn credentials(get: &impl Fn(&str) -> Option<String>) -> Result<Option<CredentialConfig>, ConfigError> {
    let units = get("CLEF_AGENT_CREDENTIAL_UNITS").map(|text| unit_patterns(&text)).transpose()?;
    let Some(socket) = get("CLEF_AGENT_CREDENTIAL_SOCKET") else {
        if units.is_some() {
            return error("CLEF_AGENT_CREDENTIAL_UNITS is set but CLEF_AGENT_CREDENTIAL_SOCKET is not: set the socket path (e.g. /run/clef-agent/credentials.sock), or remove the unit list");
        }
        return Ok(None);
    };
    let socket = PathBuf::from(socket);
    if !socket.is_absolute() {
        return error(format!(
            "CLEF_AGENT_CREDENTIAL_SOCKET must be an absolute path (systemd's LoadCredential= needs one), got '{}'",
            socket.display()
        ));
    }
    Ok(Some(CredentialConfig { socket, units }))
}

/// `a.service,app-*.service`: systemd unit names, `*` as a glob; nothing else is special.
fn unit_patterns(text: &str) -> Result<Vec<String>, ConfigError> {
    let patterns: Vec<String> = text.split(',').map(|item| item.trim().to_string()).collect();
    let valid = |pattern: &str| {
        !pattern.is_empty() && pattern.bytes().all(|byte| byte.is_ascii_alphanumeric() || b":-_.\\@*".contains(&byte))
    };
    if let Some(bad) = patterns.iter().find(|pattern| !valid(pattern)) {
        return error(format!(
            "CLEF_AGENT_CREDENTIAL_UNITS must be a comma-separated list of unit names, with * matching any characters (e.g. app.service,worker-*.service), got '{bad}'"
        ));
    }
    Ok(patterns)
}

pub fn render(get: &impl Fn(&str) -> Option<String>, mode: Mode) -> Result<Option<RenderConfig>, ConfigError> {
    let options = ["CLEF_AGENT_RENDER_MODE", "CLEF_AGENT_RENDER_GROUP", "CLEF_AGENT_RENDER_ALLOW_DISK"];
    let Some(dir) = get("CLEF_AGENT_RENDER_DIR") else {
        if let Some(option) = options.iter().find(|name| get(name).is_some()) {
            return error(format!(
                "{option} is set but CLEF_AGENT_RENDER_DIR is not: set the directory to render into, or remove {option}"
            ));
        }
        return Ok(None);
    };
    let dir = PathBuf::from(dir);
    if !dir.is_absolute() {
        return error(format!("CLEF_AGENT_RENDER_DIR must be an absolute path, got '{}'", dir.display()));
    }
    if mode == Mode::Jit {
        return error("CLEF_AGENT_RENDER_DIR needs cached mode: JIT mode (CLEF_AGENT_CACHE_TTL=0) keeps nothing decrypted, and rendered files would; unset CLEF_AGENT_CACHE_TTL or set it to 30 or more");
    }
    let file_mode = match get("CLEF_AGENT_RENDER_MODE").as_deref().map(str::trim) {
        None | Some("0400" | "400") => DEFAULT_RENDER_MODE,
        Some("0440" | "440") => GROUP_READABLE_RENDER_MODE,
        Some(other) => {
            return error(format!(
                "CLEF_AGENT_RENDER_MODE must be 0400 (the agent's user only, the default) or 0440 (its group may read the files too), got '{other}'"
            ))
        }
    };
    let group = get("CLEF_AGENT_RENDER_GROUP").map(|group| group.trim().to_string());
    let allow_disk = match get("CLEF_AGENT_RENDER_ALLOW_DISK").as_deref().map(str::trim) {
        None | Some("0" | "false") => false,
        Some("1" | "true") => true,
        Some(other) => {
            return error(format!(
                "CLEF_AGENT_RENDER_ALLOW_DISK must be 1 (render on a disk-backed file system too) or 0 (tmpfs or ramfs only, the default), got '{other}'"
            ))
        }
    };
    Ok(Some(RenderConfig { dir, mode: file_mode, group, allow_disk }))
}

/// `CLEF_AGENT_ON_CHANGE`: split on whitespace into argv; never given to a shell.
pub fn on_change(get: &impl Fn(&str) -> Option<String>) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(text) = get("CLEF_AGENT_ON_CHANGE") else { return Ok(None) };
    let argv: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    if argv.is_empty() {
        return error("CLEF_AGENT_ON_CHANGE must name a command (e.g. /usr/bin/systemctl try-restart app.service), got only spaces");
    }
    Ok(Some(argv))
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{config, message};

    const SOURCE: (&str, &str) = ("CLEF_AGENT_SOURCE", "a.json");

    #[test]
    fn the_credential_socket_takes_an_absolute_path_and_a_unit_list() {
        let config = config(&[
            SOURCE,
            ("CLEF_AGENT_CREDENTIAL_SOCKET", "/run/clef-agent/credentials.sock"),
            ("CLEF_AGENT_CREDENTIAL_UNITS", "app.service, worker-*.service"),
        ])
        .unwrap();
        let credentials = config.credentials.unwrap();
        assert_eq!(credentials.units.unwrap(), ["app.service", "worker-*.service"]);
        assert!(message(&[SOURCE, ("CLEF_AGENT_CREDENTIAL_SOCKET", "c.sock")]).contains("absolute path"));
        assert!(message(&[SOURCE, ("CLEF_AGENT_CREDENTIAL_UNITS", "a.service")])
            .starts_with("CLEF_AGENT_CREDENTIAL_UNITS is set but CLEF_AGENT_CREDENTIAL_SOCKET is not"));
        let bad =
            message(&[SOURCE, ("CLEF_AGENT_CREDENTIAL_SOCKET", "/c.sock"), ("CLEF_AGENT_CREDENTIAL_UNITS", "a,,b")]);
        assert!(bad.ends_with("got ''"), "{bad}");
    }

    #[test]
    fn the_render_directory_takes_a_mode_a_group_and_the_disk_switch() {
        let config = config(&[
            SOURCE,
            ("CLEF_AGENT_RENDER_DIR", "/run/secrets/app"),
            ("CLEF_AGENT_RENDER_MODE", "0440"),
            ("CLEF_AGENT_RENDER_GROUP", "app"),
            ("CLEF_AGENT_RENDER_ALLOW_DISK", "1"),
        ])
        .unwrap();
        let render = config.render.unwrap();
        assert_eq!((render.mode, render.group.as_deref(), render.allow_disk), (0o440, Some("app"), true));
        let defaults = crate::config::tests::config(&[SOURCE, ("CLEF_AGENT_RENDER_DIR", "/run/s")]).unwrap();
        assert_eq!(defaults.render.map(|render| (render.mode, render.allow_disk)), Some((0o400, false)));
    }

    #[test]
    fn render_options_are_refused_with_a_way_out() {
        let dir = ("CLEF_AGENT_RENDER_DIR", "/run/s");
        assert!(message(&[SOURCE, dir, ("CLEF_AGENT_RENDER_MODE", "0644")]).contains("got '0644'"));
        assert!(message(&[SOURCE, dir, ("CLEF_AGENT_RENDER_ALLOW_DISK", "yes")]).contains("got 'yes'"));
        assert!(message(&[SOURCE, ("CLEF_AGENT_RENDER_DIR", "run/s")]).contains("absolute path"));
        assert!(message(&[SOURCE, ("CLEF_AGENT_RENDER_GROUP", "app")])
            .starts_with("CLEF_AGENT_RENDER_GROUP is set but CLEF_AGENT_RENDER_DIR is not"));
        assert!(message(&[SOURCE, dir, ("CLEF_AGENT_CACHE_TTL", "0")])
            .starts_with("CLEF_AGENT_RENDER_DIR needs cached mode"));
    }

    #[test]
    fn the_change_hook_is_split_on_whitespace_and_never_empty() {
        let config =
            config(&[SOURCE, ("CLEF_AGENT_ON_CHANGE", " /usr/bin/systemctl  try-restart\tapp.service ")]).unwrap();
        assert_eq!(config.on_change.unwrap(), ["/usr/bin/systemctl", "try-restart", "app.service"]);
        assert!(
            message(&[SOURCE, ("CLEF_AGENT_ON_CHANGE", "   ")]).starts_with("CLEF_AGENT_ON_CHANGE must name a command")
        );
    }
}
