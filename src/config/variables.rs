//! Every `CLEF_AGENT_*` variable the agent reads, and a warning for each one it does not.
//!
//! A typo in a variable name is otherwise silent: `CLEF_AGENT_TOKN=…` starts an agent with a
//! random token, and every call gets 401 with nothing in the log to say why. The warning names
//! the variable and the closest real name, never its value (it may be the token that was meant).

/// Every `CLEF_AGENT_*` variable read anywhere in the agent. A unit test checks that each
/// `"CLEF_AGENT_…"` name written in `src/` is listed here.
pub const VARIABLES: &[&str] = &[
    "CLEF_AGENT_SOURCE",
    "CLEF_AGENT_VCS_PROVIDER",
    "CLEF_AGENT_VCS_REPO",
    "CLEF_AGENT_VCS_TOKEN",
    "CLEF_AGENT_VCS_IDENTITY",
    "CLEF_AGENT_VCS_ENVIRONMENT",
    "CLEF_AGENT_VCS_REF",
    "CLEF_AGENT_VCS_API_URL",
    "CLEF_AGENT_AGE_KEY",
    "CLEF_AGENT_AGE_KEY_FILE",
    "CLEF_AGENT_PORT",
    "CLEF_AGENT_TOKEN",
    "CLEF_AGENT_TOKEN_FILE",
    "CLEF_AGENT_TOKEN_FILE_MODE",
    "CLEF_AGENT_ID",
    "CLEF_AGENT_CACHE_TTL",
    "CLEF_AGENT_CACHE_PATH",
    "CLEF_AGENT_VERIFY_KEY",
    "CLEF_AGENT_TELEMETRY_URL",
    "CLEF_AGENT_SOCKET",
    "CLEF_AGENT_MAX_CONNECTIONS",
    "CLEF_AGENT_GCP_KMS_ENDPOINT",
    "CLEF_AGENT_AZURE_KEYVAULT_ENDPOINT",
    "CLEF_AGENT_AZURE_IMDS_ENDPOINT",
    "CLEF_AGENT_CREDENTIAL_SOCKET",
    "CLEF_AGENT_CREDENTIAL_UNITS",
    "CLEF_AGENT_RENDER_DIR",
    "CLEF_AGENT_RENDER_MODE",
    "CLEF_AGENT_RENDER_GROUP",
    "CLEF_AGENT_RENDER_ALLOW_DISK",
    "CLEF_AGENT_ON_CHANGE",
];

const PREFIX: &str = "CLEF_AGENT_";

/// One warning line for each name that starts with `CLEF_AGENT_` but is not in [`VARIABLES`],
/// suggesting the closest name that is. Takes names only, so no value can reach the message.
pub fn unknown_variables<I, S>(names: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    names
        .into_iter()
        .filter(|name| name.as_ref().starts_with(PREFIX) && !VARIABLES.contains(&name.as_ref()))
        .map(|name| {
            let name = name.as_ref();
            format!(
                "warning: {name} is not a variable clef-agent reads, so it is ignored: did you mean {}?",
                closest(name)
            )
        })
        .collect()
}

/// The listed name with the smallest edit distance to `name`; the first one on a tie.
fn closest(name: &str) -> &'static str {
    VARIABLES.iter().copied().min_by_key(|known| edit_distance(name, known)).unwrap_or(PREFIX)
}

/// Levenshtein distance over bytes (variable names are ASCII; anything else only costs more).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, &from) in a.iter().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, &to) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(from != to);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_token_variable_is_named_with_the_real_one() {
        assert_eq!(
            unknown_variables(["CLEF_AGENT_TOKN"]),
            ["warning: CLEF_AGENT_TOKN is not a variable clef-agent reads, so it is ignored: did you mean CLEF_AGENT_TOKEN?"]
        );
    }

    #[test]
    fn each_unknown_variable_gets_its_own_line_with_its_closest_name() {
        let warnings =
            unknown_variables(["CLEF_AGENT_SORCE", "CLEF_AGENT_AGE_KEYFILE", "CLEF_AGENT_CACHE_TTL_SECONDS"]);
        let suggestions: Vec<&str> = warnings.iter().map(|line| line.rsplit(' ').next().unwrap_or_default()).collect();
        assert_eq!(suggestions, ["CLEF_AGENT_SOURCE?", "CLEF_AGENT_AGE_KEY_FILE?", "CLEF_AGENT_CACHE_TTL?"]);
    }

    #[test]
    fn variables_the_agent_reads_and_other_variables_get_no_warning() {
        let names = VARIABLES.iter().copied().chain(["PATH", "AWS_REGION", "CLEF_TELEMETRY_TOKEN", "clef_agent_token"]);
        assert!(unknown_variables(names).is_empty());
    }

    #[test]
    fn edit_distance_counts_insertions_deletions_and_substitutions() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("PORT", "PORT"), 0);
        assert_eq!(edit_distance("TOKN", "TOKEN"), 1);
        assert_eq!(edit_distance("TOKEN", "TOKN"), 1);
        assert_eq!(edit_distance("PORT", "PART"), 1);
        assert_eq!(edit_distance("", "ABC"), 3);
    }

    /// The list cannot fall behind the code: every `"CLEF_AGENT_…"` literal in `src/` is in it.
    #[test]
    fn every_variable_named_in_the_source_is_listed() {
        let mut unlisted = Vec::new();
        let mut directories = vec![std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))];
        while let Some(directory) = directories.pop() {
            for entry in std::fs::read_dir(&directory).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    directories.push(path);
                    continue;
                }
                // This file's tests spell names wrong on purpose.
                if path.ends_with("config/variables.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                for piece in text.split("\"CLEF_AGENT_").skip(1) {
                    let rest: String = piece
                        .chars()
                        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    let name = format!("{PREFIX}{rest}");
                    if piece[rest.len()..].starts_with('"') && !VARIABLES.contains(&name.as_str()) {
                        unlisted.push(format!("{name} ({})", path.display()));
                    }
                }
            }
        }
        assert!(unlisted.is_empty(), "read in src/ but missing from VARIABLES: {unlisted:?}");
    }
}
