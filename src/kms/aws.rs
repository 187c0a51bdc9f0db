//! AWS KMS `Decrypt` (JSON 1.1 protocol, `TrentService.Decrypt`) signed with SigV4. The region
//! comes from the key ARN (`arn:aws:kms:<region>:…`), else `AWS_REGION`/`AWS_DEFAULT_REGION`;
//! the endpoint from `AWS_ENDPOINT_URL_KMS`/`AWS_ENDPOINT_URL`, else the regional one.

use std::sync::Arc;

use base64::Engine as _;
use zeroize::Zeroizing;

use super::key_id::AwsRegion;
use crate::cloud::aws::credentials::CredentialChain;
use crate::cloud::aws::sigv4;
use crate::cloud::{CloudError, Env};
use crate::http::{small_reply, HttpClient};
use crate::secret::sha256_hex;
use crate::url::HttpUrl;

/// The `EncryptionAlgorithm` values KMS accepts; an envelope naming another algorithm (the
/// data encryption's, say) is sent with the symmetric default.
const KMS_ALGORITHMS: [&str; 4] = ["SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "SM2PKE"];

pub struct AwsKms {
    http: HttpClient,
    env: Env,
    credentials: Arc<CredentialChain>,
}

impl AwsKms {
    pub fn new(http: HttpClient, env: Env, credentials: Arc<CredentialChain>) -> AwsKms {
        AwsKms { http, env, credentials }
    }

    /// KMS `Decrypt`. `arn_region`: what [`super::key_id::aws`] found in the key's ARN, the
    /// only way the artifact has a say in the host the signed request goes to.
    pub fn decrypt(
        &self,
        key_id: &str,
        arn_region: Option<AwsRegion>,
        algorithm: &str,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CloudError> {
        let AwsRegion { region, dns_suffix } = match arn_region {
            Some(found) => found,
            None => AwsRegion {
                region: self.env.aws_region().ok_or_else(|| {
                    let key_id = crate::text::quoted(key_id);
                    let message = format!(
                        "the key id '{key_id}' is not an ARN with a region: set AWS_REGION or AWS_DEFAULT_REGION"
                    );
                    CloudError::missing_variable("AWS_REGION", message)
                })?,
                dns_suffix: "amazonaws.com",
            },
        };
        let endpoint = self.env.aws_endpoint("KMS").unwrap_or_else(|| format!("https://kms.{region}.{dns_suffix}"));
        let url = HttpUrl::parse(&format!("{endpoint}/")).ok_or_else(|| {
            let message = format!("AWS_ENDPOINT_URL_KMS / AWS_ENDPOINT_URL: '{endpoint}' is not an http(s) URL");
            CloudError::invalid_variable("AWS_ENDPOINT_URL_KMS", message)
        })?;
        let algorithm = if KMS_ALGORITHMS.contains(&algorithm) { algorithm } else { "SYMMETRIC_DEFAULT" };
        let body = serde_json::json!({
            "CiphertextBlob": base64::engine::general_purpose::STANDARD.encode(wrapped),
            "KeyId": key_id,
            "EncryptionAlgorithm": algorithm,
        })
        .to_string();
        let credentials = self.credentials.credentials(crate::time::now_ms())?;
        let host = url.host_header();
        let headers = [("Content-Type", "application/x-amz-json-1.1"), ("X-Amz-Target", "TrentService.Decrypt")];
        let payload_hash = sha256_hex(body.as_bytes());
        let request = sigv4::Request {
            method: "POST",
            host: &host,
            path: &url.path,
            query: &[],
            headers: &headers,
            payload_hash: &payload_hash,
            service: "kms",
            region: &region,
        };
        let signed = sigv4::sign(&request, &credentials, &crate::time::amz_date(crate::time::now_ms() / 1000));
        let mut call = self.http.for_host(&url.host).post(&url.full);
        for (name, value) in headers {
            call = call.header(name, value);
        }
        for (name, value) in &signed.headers {
            call = call.header(*name, value.as_str());
        }
        let (status, answer) = small_reply(call.send(body.as_bytes()))
            .map_err(|why| CloudError::from(why).after_prefix(format_args!("AWS KMS at {endpoint}")))?;
        if status != 200 {
            let (kind, message) = error_of(&answer);
            if matches!(
                kind.as_str(),
                "ExpiredTokenException" | "UnrecognizedClientException" | "InvalidSignatureException"
            ) {
                self.credentials.forget();
            }
            let explanation = [kind.as_str(), message.as_str()]
                .iter()
                .filter(|part| !part.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(": ");
            let message = format!(" {explanation}").trim_end().to_string();
            return Err(CloudError::status("AWS KMS Decrypt", status, &kind, message));
        }
        let plaintext = crate::cloud::take_secret_field(&answer, "Plaintext")
            .ok_or_else(|| CloudError::malformed("AWS KMS Decrypt answered without a Plaintext"))?;
        base64::engine::general_purpose::STANDARD
            .decode(plaintext.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| CloudError::malformed("AWS KMS Decrypt answered a Plaintext that is not base64"))
    }
}

/// The short error type (`AccessDeniedException` of `com.amazon…#AccessDeniedException`) and
/// message of a KMS error answer: JSON from KMS itself, XML (`<Code>`, `<Message>`) from what
/// may stand in front of it (an IAM layer, a proxy, an emulator).
fn error_of(answer: &[u8]) -> (String, String) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(answer) else {
        let text = String::from_utf8_lossy(answer);
        let field = |tag: &str| crate::cloud::aws::xml_text(&text, tag).unwrap_or_default().chars().take(300).collect();
        return (field("Code"), field("Message"));
    };
    let text = |name: &str| value.get(name).and_then(|field| field.as_str()).unwrap_or_default().to_string();
    let kind = text("__type");
    let kind = kind.rsplit('#').next().unwrap_or_default().to_string();
    let message = if text("message").is_empty() { text("Message") } else { text("message") };
    (kind, message.chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kms_error_answers() {
        let answer = br#"{"__type":"com.amazonaws.kms#AccessDeniedException","message":"not allowed"}"#;
        assert_eq!(error_of(answer), ("AccessDeniedException".into(), "not allowed".into()));
        assert_eq!(error_of(b"<html>"), (String::new(), String::new()));
        let xml = b"<ErrorResponse><Error><Code>AccessDenied</Code><Message>no</Message></Error></ErrorResponse>";
        assert_eq!(error_of(xml), ("AccessDenied".into(), "no".into()));
    }
}
