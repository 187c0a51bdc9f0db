//! AWS Signature Version 4 for the few requests the agent makes (S3 `GetObject`, KMS
//! `Decrypt`): the canonical request, the string to sign and the `Authorization` header, as
//! <https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html> describes.
//! The tests compare every step with botocore's signer byte for byte.

use ring::hmac;

use super::credentials::Credentials;
use crate::secret::{hex, sha256_hex};
use crate::url::percent_encode;

/// The payload hash S3 accepts instead of hashing the body.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// A request to sign. Header names may be in any case; `host` is added by [`sign`].
pub struct Request<'a> {
    pub method: &'a str,
    /// `host` or `host:port`, exactly as the request's `Host` header will carry it.
    pub host: &'a str,
    /// The path as sent on the wire, already percent-encoded ([`crate::url::percent_encode_path`]).
    pub path: &'a str,
    /// Query parameters, not encoded.
    pub query: &'a [(&'a str, &'a str)],
    pub headers: &'a [(&'a str, &'a str)],
    /// Hex SHA-256 of the body, or [`UNSIGNED_PAYLOAD`].
    pub payload_hash: &'a str,
    pub service: &'a str,
    pub region: &'a str,
}

/// The signature and what went into it.
pub struct Signed {
    pub canonical_request: String,
    pub string_to_sign: String,
    pub signature: String,
    /// Headers to add to the request: `Authorization`, `X-Amz-Date`, and
    /// `X-Amz-Security-Token` with temporary credentials.
    pub headers: Vec<(&'static str, String)>,
}

/// Signs `request` at `amz_date` (`YYYYMMDDTHHMMSSZ`, [`crate::time::amz_date`]).
pub fn sign(request: &Request<'_>, credentials: &Credentials, amz_date: &str) -> Signed {
    let mut headers: Vec<(String, String)> = vec![("host".into(), request.host.into())];
    headers.push(("x-amz-date".into(), amz_date.into()));
    if let Some(token) = &credentials.session_token {
        headers.push(("x-amz-security-token".into(), token.expose().into()));
    }
    for (name, value) in request.headers {
        headers.push((name.to_ascii_lowercase(), normalize_spaces(value)));
    }
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(name, value)| format!("{name}:{value}\n")).collect();
    let signed_headers = headers.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>().join(";");

    let mut query: Vec<(String, String)> =
        request.query.iter().map(|(name, value)| (percent_encode(name, true), percent_encode(value, true))).collect();
    query.sort();
    let canonical_query = query.iter().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>().join("&");

    let canonical_request = format!(
        "{}\n{}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{}",
        request.method, request.path, request.payload_hash
    );
    let date = &amz_date[..amz_date.len().min(8)];
    let scope = format!("{date}/{}/{}/aws4_request", request.region, request.service);
    let string_to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", sha256_hex(canonical_request.as_bytes()));

    let secret = zeroize::Zeroizing::new(format!("AWS4{}", credentials.secret_access_key.expose()));
    let mut key = hmac_sha256(secret.as_bytes(), date.as_bytes());
    for part in [request.region, request.service, "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));

    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        credentials.access_key_id
    );
    let mut extra = vec![("Authorization", authorization), ("X-Amz-Date", amz_date.to_string())];
    if let Some(token) = &credentials.session_token {
        extra.push(("X-Amz-Security-Token", token.expose().to_string()));
    }
    Signed { canonical_request, string_to_sign, signature, headers: extra }
}

/// Header values are trimmed and their inner runs of spaces collapsed to one.
fn normalize_spaces(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), message).as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    /// The example of AWS's SigV4 documentation ("GET object" in the S3 signing examples):
    /// `examplebucket/test.txt`, with the documented signature.
    #[test]
    fn matches_the_documented_s3_example() {
        let credentials = Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into()),
            session_token: None,
            expires_at_ms: None,
        };
        let empty_hash = sha256_hex(b"");
        let request = Request {
            method: "GET",
            host: "examplebucket.s3.amazonaws.com",
            path: "/test.txt",
            query: &[],
            headers: &[("Range", "bytes=0-9"), ("x-amz-content-sha256", &empty_hash)],
            payload_hash: &empty_hash,
            service: "s3",
            region: "us-east-1",
        };
        let signed = sign(&request, &credentials, "20130524T000000Z");
        assert_eq!(signed.signature, "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
    }

    #[test]
    fn header_values_have_their_spaces_normalised() {
        assert_eq!(normalize_spaces("  a   b  "), "a b");
    }
}
