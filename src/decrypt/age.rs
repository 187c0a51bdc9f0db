//! Age decryption of artifact ciphertexts: binary (not armored) age files encrypted to an
//! X25519 recipient, opened with the identity from `CLEF_AGENT_AGE_KEY` or
//! `CLEF_AGENT_AGE_KEY_FILE`.

use std::io::Read;
use std::str::FromStr;

use zeroize::Zeroizing;

use super::DecryptError;
use crate::secret::SecretBytes;

/// An age X25519 identity (`AGE-SECRET-KEY-1…`). The `age` crate zeroes it on drop.
pub struct AgeIdentity(age::x25519::Identity);

impl std::fmt::Debug for AgeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgeIdentity([redacted])")
    }
}

impl AgeIdentity {
    /// Parses an inline identity; surrounding whitespace is ignored. The error never repeats
    /// the key.
    pub fn parse(text: &str) -> Result<AgeIdentity, String> {
        let text = text.trim();
        if !text.starts_with("AGE-SECRET-KEY-1") {
            return Err("is not an age identity: it must start with AGE-SECRET-KEY-1".into());
        }
        age::x25519::Identity::from_str(text).map(AgeIdentity).map_err(|_| {
            "starts like an age identity but is not a valid one (check for a truncated or mistyped key)".into()
        })
    }

    /// Reads an identity file: `#` comments and blank lines are skipped, CRLF line ends are
    /// accepted, and the first `AGE-SECRET-KEY-` line is used.
    pub fn from_file_contents(contents: &str) -> Result<AgeIdentity, String> {
        let line = contents
            .lines()
            .map(str::trim)
            .find(|line| line.starts_with("AGE-SECRET-KEY-"))
            .ok_or("contains no AGE-SECRET-KEY- line")?;
        Self::parse(line)
    }

    /// Decrypts a binary age file.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<SecretBytes, DecryptError> {
        if ciphertext.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----") {
            return Err(DecryptError::Age(
                "the ciphertext is an ASCII-armored age file; artifacts carry the binary age format".into(),
            ));
        }
        let decryptor = age::Decryptor::new_buffered(ciphertext).map_err(describe)?;
        let mut reader = decryptor.decrypt(std::iter::once(&self.0 as &dyn age::Identity)).map_err(describe)?;
        // The plaintext is never longer than the ciphertext: reserving it up front means the
        // buffer never reallocates and leaves no unzeroed copy behind.
        let mut plaintext = Zeroizing::new(Vec::with_capacity(ciphertext.len()));
        reader
            .read_to_end(&mut plaintext)
            .map_err(|_| DecryptError::Age("the age payload is truncated or was modified".into()))?;
        Ok(plaintext)
    }
}

fn describe(error: age::DecryptError) -> DecryptError {
    match error {
        age::DecryptError::NoMatchingKeys => DecryptError::NoMatchingKey,
        age::DecryptError::InvalidHeader | age::DecryptError::UnknownFormat => {
            DecryptError::Age("the ciphertext is not a binary age file (bad or unknown header)".into())
        }
        age::DecryptError::InvalidMac => DecryptError::Age("the age header was modified (MAC mismatch)".into()),
        age::DecryptError::Io(_) => DecryptError::Age("the age file is truncated".into()),
        _ => DecryptError::Age("the age file could not be decrypted".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AGE-SECRET-KEY-1AUKVPCSM6LMRNMMKEAWTUH9LZPY5QA9ZD952WJGKCYLD5M4VEEKQKALAZ3";

    #[test]
    fn parses_inline_keys_with_whitespace() {
        assert!(AgeIdentity::parse(&format!("  {KEY}\n")).is_ok());
    }

    #[test]
    fn key_file_may_hold_comments_blank_lines_and_crlf() {
        let contents = format!("# created: 2026-11-24\r\n\r\n# public key: age1...\r\n{KEY}\r\n");
        assert!(AgeIdentity::from_file_contents(&contents).is_ok());
        assert_eq!(
            AgeIdentity::from_file_contents("# only a comment\n").unwrap_err(),
            "contains no AGE-SECRET-KEY- line"
        );
    }

    #[test]
    fn errors_never_repeat_the_key() {
        let broken = format!("{}X", &KEY[..KEY.len() - 1]);
        let error = AgeIdentity::parse(&broken).unwrap_err();
        assert!(!error.contains(&broken[16..]), "{error}");
        assert!(AgeIdentity::parse("age1abc").unwrap_err().contains("AGE-SECRET-KEY-1"));
    }

    #[test]
    fn refuses_armor_and_garbage() {
        let identity = AgeIdentity::parse(KEY).unwrap();
        let armored = identity.decrypt(b"-----BEGIN AGE ENCRYPTED FILE-----\nabc\n");
        assert!(matches!(armored, Err(DecryptError::Age(message)) if message.contains("ASCII-armored")));
        assert!(matches!(identity.decrypt(b"garbage"), Err(DecryptError::Age(_))));
        assert!(matches!(identity.decrypt(b""), Err(DecryptError::Age(_))));
    }
}
