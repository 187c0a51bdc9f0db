//! `clef-agent exec [--] CMD [ARGS…]`: one fetch and decryption, then `execve` CMD with every
//! secret added to its environment as `<namespace>__<key>`, or as its key in a flat plaintext
//! (overriding inherited variables).
//! The agent's process becomes CMD, so CMD's exit status is the exit status; nothing is
//! written to disk. For cron jobs and scripts that read secrets from their environment.
//!
//! CMD gets the secrets of one artifact, not the agent's own credentials: the age identity
//! would still decrypt every later artifact after a rotation or a revocation, and the API and
//! VCS tokens are of no use to CMD. They are removed from its environment
//! ([`WITHHELD_FROM_COMMAND`]). Everything else is passed on: paths (`CLEF_AGENT_AGE_KEY_FILE`,
//! `CLEF_AGENT_TOKEN_FILE`) are not secrets, and cloud credentials (`AWS_*`, `GOOGLE_*`,
//! `AZURE_*`) may be what CMD needs for its own work.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;

use crate::config::Config;
use crate::decrypt::Plaintext;
use crate::error::Fatal;

/// The agent's secret inputs, which CMD never sees.
pub const WITHHELD_FROM_COMMAND: [&str; 3] = ["CLEF_AGENT_AGE_KEY", "CLEF_AGENT_TOKEN", "CLEF_AGENT_VCS_TOKEN"];

pub fn run(config: &Config, program: &OsString, arguments: &[OsString]) -> Result<(), Fatal> {
    let (_, plaintext) = super::load_once(config)?;
    let variables = environment(&plaintext).map_err(Fatal::NotAnEnvironmentVariable)?;
    let mut command = std::process::Command::new(program);
    command.args(arguments);
    for name in WITHHELD_FROM_COMMAND {
        command.env_remove(name);
    }
    command.envs(variables.iter().map(|(name, value)| (name.as_str(), value.as_str())));
    // `exec` only returns when the program could not be started.
    let error = command.exec();
    Err(Fatal::Exec { program: program.clone(), error })
}

/// The variables, named as `/v1/keys` names the secrets, or why one of them cannot be an
/// environment variable.
pub fn environment(plaintext: &Plaintext) -> Result<Vec<(String, zeroize::Zeroizing<String>)>, String> {
    let mut variables = Vec::with_capacity(plaintext.key_count());
    for (name, value) in plaintext.named_values() {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(format!(
                "the secret '{name}' cannot be an environment variable: its name is empty or contains '=' or NUL"
            ));
        }
        if value.contains('\0') {
            return Err(format!("the secret '{name}' cannot be an environment variable: its value contains NUL"));
        }
        variables.push((name.into_owned(), zeroize::Zeroizing::new(value.to_owned())));
    }
    Ok(variables)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_variables_namespace_double_underscore_key() {
        let plaintext = Plaintext::parse(br#"{"db":{"HOST":"h","PASS":"p"},"app":{"KEY":"k"}}"#).unwrap();
        let variables = environment(&plaintext).unwrap();
        let names: Vec<_> = variables.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        assert_eq!(names, [("db__HOST", "h"), ("db__PASS", "p"), ("app__KEY", "k")]);
    }

    #[test]
    fn names_variables_of_a_flat_plaintext_by_their_keys() {
        let plaintext = Plaintext::parse(br#"{"DB_URL":"postgres://x","app__KEY":"k"}"#).unwrap();
        let variables = environment(&plaintext).unwrap();
        let names: Vec<_> = variables.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        assert_eq!(names, [("DB_URL", "postgres://x"), ("app__KEY", "k")]);
        let empty_name = Plaintext::parse(br#"{"":"x"}"#).unwrap();
        assert!(environment(&empty_name).unwrap_err().contains("name is empty"));
    }

    #[test]
    fn refuses_names_and_values_the_environment_cannot_hold() {
        let plaintext = Plaintext::parse(br#"{"db":{"A=B":"x"}}"#).unwrap();
        assert!(environment(&plaintext).unwrap_err().contains("'db__A=B'"));
        let plaintext = Plaintext::parse(br#"{"db":{"K":"a\u0000b"}}"#).unwrap();
        assert!(environment(&plaintext).unwrap_err().contains("value contains NUL"));
    }
}
