//! Holders for secret material: they zero their memory on drop and never print their content,
//! so a stray `{:?}` or a forgotten log line cannot leak a token, a key or a value.

use std::fmt;
use zeroize::Zeroizing;

/// A secret string (bearer token, age identity text, credential).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(Zeroizing::new(value))
    }

    /// The secret's text, for the one place that has to use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Bytes that zero themselves on drop (plaintext, rendered secret bodies).
pub type SecretBytes = Zeroizing<Vec<u8>>;

/// Compares two byte strings in time that depends only on their lengths, not on where they
/// first differ, so a client cannot find the token one byte at a time.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for (index, expected) in b.iter().enumerate() {
        let given = a.get(index).copied().unwrap_or(0);
        difference |= given ^ expected;
    }
    // A length mismatch above sets bits in most cases; this makes it certain.
    if a.len() != b.len() {
        difference |= 1;
    }
    std::hint::black_box(difference) == 0
}

/// Fills `bytes` from the operating system's random source.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the operating system's random number source failed".to_string())?;
    Ok(bytes)
}

/// Lowercase hexadecimal of `bytes`.
/// The lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let secret = Secret::new("hunter2".into());
        assert_eq!(format!("{secret:?}"), "[redacted]");
    }

    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(constant_time_eq(b"token", b"token"));
        assert!(!constant_time_eq(b"token", b"tokem"));
        assert!(!constant_time_eq(b"toke", b"token"));
        assert!(!constant_time_eq(b"token1", b"token"));
        assert!(!constant_time_eq(b"", b"token"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }
}
