//! `clef-agent check`: one fetch, full validation and decryption with the daemon's
//! configuration, then a report of what the artifact holds — key names, never values.

use std::fmt::Write as _;

use crate::artifact::Artifact;
use crate::config::Config;
use crate::decrypt::Plaintext;
use crate::error::Fatal;

pub fn run(config: &Config) -> Result<(), Fatal> {
    let (artifact, plaintext) = super::load_once(config)?;
    print!("{}", report(&artifact, &plaintext));
    Ok(())
}

/// The report `check` prints.
pub fn report(artifact: &Artifact, plaintext: &Plaintext) -> String {
    let mut out = String::new();
    let expires_at = artifact.expires_at.as_ref().map_or("never", |expiry| expiry.text.as_str());
    let _ = writeln!(out, "identity:    {}", artifact.identity);
    let _ = writeln!(out, "environment: {}", artifact.environment);
    let _ = writeln!(out, "revision:    {}", artifact.revision);
    let _ = writeln!(out, "packedAt:    {}", artifact.packed_at);
    let _ = writeln!(out, "expiresAt:   {expires_at}");
    let _ = writeln!(out, "signed:      {}", if artifact.signature.is_some() { "yes" } else { "no" });
    let _ = writeln!(out, "keys:        {}", plaintext.key_count());
    for (name, _) in plaintext.named_values() {
        let _ = writeln!(out, "  {name}");
    }
    out
}
