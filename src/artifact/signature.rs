//! Artifact signatures (SPEC §1): the `clef-sig-v3` payload and its verification with the key
//! from `CLEF_AGENT_VERIFY_KEY`. The algorithm comes from the key (an Ed25519 or an EC P-256
//! SubjectPublicKeyInfo), never from the artifact's `signatureAlgorithm` label, so an attacker
//! cannot pick a weaker check.

use base64::Engine as _;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ED25519};

use super::{Artifact, Rejection};

/// A parsed verify key.
#[derive(Clone, PartialEq, Eq)]
pub enum VerifyKey {
    /// The raw 32-byte public key.
    Ed25519(Vec<u8>),
    /// The uncompressed SEC1 point (65 bytes); signatures are ASN.1 DER over SHA-256.
    EcdsaP256(Vec<u8>),
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.algorithm())
    }
}

const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// What `CLEF_AGENT_VERIFY_KEY` takes, for every error about it.
pub const ACCEPTED_FORMS: &str = "a PEM public key ('-----BEGIN PUBLIC KEY-----', as `openssl pkey -pubout` \
     writes it) or base64 of its DER SubjectPublicKeyInfo, Ed25519 or ECDSA P-256";

const PEM_BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
const PEM_END: &str = "-----END PUBLIC KEY-----";

impl VerifyKey {
    /// Parses the text of `CLEF_AGENT_VERIFY_KEY`: PEM (what clef's agent guide and `clef
    /// envelope verify` take) or base64 DER (what the TypeScript agent took).
    pub fn parse(text: &str) -> Result<VerifyKey, String> {
        let text = text.trim();
        if text.starts_with("-----BEGIN ") {
            Self::from_pem(text)
        } else {
            Self::from_base64_spki(text)
        }
    }

    /// One `PUBLIC KEY` PEM block and nothing else. Line breaks written as `\n` (as env files
    /// that cannot hold a newline carry them) count as whitespace; base64 has no `\`.
    fn from_pem(text: &str) -> Result<VerifyKey, String> {
        if text.contains("PRIVATE KEY-----") {
            return Err("is a private key: give the public key (`openssl pkey -in key.pem -pubout`)".into());
        }
        let text = text.replace("\\n", "\n");
        let body = text
            .trim()
            .strip_prefix(PEM_BEGIN)
            .ok_or("is a PEM block that is not a PUBLIC KEY (SubjectPublicKeyInfo)")?
            .strip_suffix(PEM_END)
            .ok_or("is a PEM public key without its '-----END PUBLIC KEY-----' line (or with text after it)")?;
        let base64: String = body.split_whitespace().collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(base64)
            .map_err(|_| "is a PEM public key whose body is not valid base64".to_string())?;
        Self::from_spki_der(&der)
    }

    /// Parses base64 of a DER SubjectPublicKeyInfo. The error says what is wrong, for the
    /// `CLEF_AGENT_VERIFY_KEY` configuration error.
    pub fn from_base64_spki(text: &str) -> Result<VerifyKey, String> {
        let der = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| "is neither PEM nor valid base64".to_string())?;
        Self::from_spki_der(&der)
    }

    fn from_spki_der(der: &[u8]) -> Result<VerifyKey, String> {
        let not_spki = || "is not a DER SubjectPublicKeyInfo".to_string();
        let (spki, rest) = der_element(der, 0x30).ok_or_else(not_spki)?;
        if !rest.is_empty() {
            return Err(not_spki());
        }
        let (algorithm, after_algorithm) = der_element(spki, 0x30).ok_or_else(not_spki)?;
        let (bit_string, trailing) = der_element(after_algorithm, 0x03).ok_or_else(not_spki)?;
        let (oid, parameters) = der_element(algorithm, 0x06).ok_or_else(not_spki)?;
        if !trailing.is_empty() {
            return Err(not_spki());
        }
        // A BIT STRING starts with the count of unused bits, which must be 0 for a key.
        let key = match bit_string.split_first() {
            Some((0, key)) => key,
            _ => return Err(not_spki()),
        };
        match oid {
            OID_ED25519 if parameters.is_empty() && key.len() == 32 => Ok(VerifyKey::Ed25519(key.to_vec())),
            OID_ED25519 => Err("is an Ed25519 key of the wrong size".into()),
            OID_EC_PUBLIC_KEY => {
                let curve = der_element(parameters, 0x06).map(|(curve, _)| curve);
                if curve != Some(OID_P256) {
                    return Err(
                        "is an EC key on a curve other than P-256 (only Ed25519 and ECDSA P-256 are supported)".into(),
                    );
                }
                if key.len() != 65 || key[0] != 0x04 {
                    return Err("is a P-256 key that is not in uncompressed form".into());
                }
                Ok(VerifyKey::EcdsaP256(key.to_vec()))
            }
            _ => Err("is neither an Ed25519 nor an EC P-256 public key (only those two are supported)".into()),
        }
    }

    pub fn algorithm(&self) -> &'static str {
        match self {
            VerifyKey::Ed25519(_) => "Ed25519",
            VerifyKey::EcdsaP256(_) => "ECDSA P-256",
        }
    }

    /// Verifies `artifact.signature` over its payload (SPEC §2 step 8).
    pub fn verify(&self, artifact: &Artifact) -> Result<(), Rejection> {
        let signature = artifact.signature.as_deref().ok_or(Rejection::SignatureMissing)?;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .map_err(|_| Rejection::SignatureError("'signature' is not valid base64".into()))?;
        let payload = signing_payload(artifact);
        let result = match self {
            VerifyKey::Ed25519(key) => UnparsedPublicKey::new(&ED25519, key).verify(payload.as_bytes(), &signature),
            VerifyKey::EcdsaP256(key) => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key).verify(payload.as_bytes(), &signature)
            }
        };
        result.map_err(|_| Rejection::SignatureInvalid)
    }
}

/// The `clef-sig-v3` payload: the signed fields joined by `\n`, no trailing newline.
pub fn signing_payload(artifact: &Artifact) -> String {
    let envelope = artifact.envelope.as_ref();
    let envelope_field = |pick: fn(&super::Envelope) -> &str| envelope.map(pick).unwrap_or_default();
    let version = artifact.version.to_string();
    [
        "clef-sig-v3",
        &version,
        &artifact.identity,
        &artifact.environment,
        &artifact.revision,
        &artifact.packed_at,
        &artifact.ciphertext_hash,
        artifact.expires_at.as_ref().map(|expiry| expiry.text.as_str()).unwrap_or_default(),
        envelope_field(|e| &e.provider),
        envelope_field(|e| &e.key_id),
        envelope_field(|e| &e.wrapped_key),
        envelope_field(|e| &e.algorithm),
        envelope_field(|e| &e.iv),
        envelope_field(|e| &e.auth_tag),
    ]
    .join("\n")
}

/// Reads one DER element with the expected tag; returns its contents and what follows it.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found_tag, rest) = input.split_first()?;
    if found_tag != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let length = rest[..count].iter().fold(0usize, |length, &byte| (length << 8) | usize::from(byte));
        (length, &rest[count..])
    };
    (rest.len() >= length).then(|| rest.split_at(length))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair;

    use crate::artifact::sample as artifact;

    fn spki_ed25519(public: &[u8]) -> String {
        let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
        der.extend_from_slice(public);
        base64::engine::general_purpose::STANDARD.encode(der)
    }

    #[test]
    fn payload_has_fourteen_lines_and_no_trailing_newline() {
        let mut artifact = artifact();
        artifact.expires_at = Some(super::super::Expiry { text: "2027-01-01T00:00:00.000Z".into(), epoch_ms: 0 });
        assert_eq!(
            signing_payload(&artifact),
            "clef-sig-v3\n1\napi\nprod\nr1\n2026-11-24T12:00:00.000Z\nabc\n2027-01-01T00:00:00.000Z\n\n\n\n\n\n"
        );
        artifact.envelope = Some(super::super::Envelope {
            provider: "aws".into(),
            key_id: "k".into(),
            wrapped_key: "w".into(),
            algorithm: "a".into(),
            iv: "i".into(),
            auth_tag: "t".into(),
        });
        assert!(signing_payload(&artifact).ends_with("\naws\nk\nw\na\ni\nt"));
    }

    #[test]
    fn verifies_ed25519_and_rejects_a_changed_payload() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let key = VerifyKey::from_base64_spki(&spki_ed25519(pair.public_key().as_ref())).unwrap();
        let mut artifact = artifact();
        assert_eq!(key.verify(&artifact), Err(Rejection::SignatureMissing));
        let signature = pair.sign(signing_payload(&artifact).as_bytes());
        artifact.signature = Some(base64::engine::general_purpose::STANDARD.encode(signature.as_ref()));
        assert_eq!(key.verify(&artifact), Ok(()));
        artifact.revision = "r2".into();
        assert_eq!(key.verify(&artifact), Err(Rejection::SignatureInvalid));
        artifact.signature = Some("%%%".into());
        assert!(matches!(key.verify(&artifact), Err(Rejection::SignatureError(_))));
    }

    /// Made with `openssl genpkey -algorithm ed25519 | openssl pkey -pubout` (and `-outform DER |
    /// base64` for the second form).
    const OPENSSL_ED25519_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAatz0XCGXRDTgH46iWcBF+VoZgVCoQ3kJY0eKUPtVTM0=\n-----END PUBLIC KEY-----\n";
    const OPENSSL_ED25519_B64: &str = "MCowBQYDK2VwAyEAatz0XCGXRDTgH46iWcBF+VoZgVCoQ3kJY0eKUPtVTM0=";

    #[test]
    fn reads_pem_and_base64_der_as_the_same_key() {
        let from_der = VerifyKey::parse(OPENSSL_ED25519_B64).unwrap();
        assert_eq!(VerifyKey::parse(OPENSSL_ED25519_PEM).unwrap(), from_der);
        let crlf = OPENSSL_ED25519_PEM.replace('\n', "\r\n");
        let escaped = OPENSSL_ED25519_PEM.replace('\n', "\\n");
        for text in [crlf.as_str(), escaped.as_str(), &format!("  {OPENSSL_ED25519_PEM}\n")] {
            assert_eq!(VerifyKey::parse(text).as_ref(), Ok(&from_der), "{text:?}");
        }
    }

    #[test]
    fn refuses_pem_that_is_not_one_public_key() {
        let private = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----";
        assert!(VerifyKey::parse(private).unwrap_err().contains("is a private key"));
        let certificate = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
        assert!(VerifyKey::parse(certificate).unwrap_err().contains("not a PUBLIC KEY"));
        let unterminated = OPENSSL_ED25519_PEM.replace(PEM_END, "");
        assert!(VerifyKey::parse(&unterminated).unwrap_err().contains("without its '-----END PUBLIC KEY-----'"));
        let two = format!("{OPENSSL_ED25519_PEM}{OPENSSL_ED25519_PEM}");
        assert!(VerifyKey::parse(&two).is_err());
        let bad_body = OPENSSL_ED25519_PEM.replace("MCow", "MC*w");
        assert!(VerifyKey::parse(&bad_body).unwrap_err().contains("not valid base64"));
    }

    #[test]
    fn refuses_keys_that_are_not_spki() {
        assert!(VerifyKey::from_base64_spki("not base64!").unwrap_err().contains("base64"));
        assert!(VerifyKey::from_base64_spki("AAAA").unwrap_err().contains("SubjectPublicKeyInfo"));
        let mut truncated = spki_ed25519(&[7u8; 32]);
        truncated.truncate(20);
        assert!(VerifyKey::from_base64_spki(&truncated).is_err());
    }
}
