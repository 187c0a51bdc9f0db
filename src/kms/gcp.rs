//! GCP Cloud KMS `decrypt` (`POST <endpoint>/v1/<keyId>:decrypt`), with a token from the GCP
//! credential chain ([`crate::cloud::gcp`]).

use base64::Engine as _;
use zeroize::Zeroizing;

use super::post_with_token;
use crate::cloud::gcp::GcpCredentials;
use crate::cloud::{CloudError, Env};
use crate::http::HttpClient;

pub struct GcpKms {
    http: HttpClient,
    env: Env,
    credentials: GcpCredentials,
}

impl GcpKms {
    pub fn new(http: HttpClient, env: Env) -> GcpKms {
        GcpKms { credentials: GcpCredentials::new(http.clone(), env.clone()), http, env }
    }

    /// Cloud KMS `decrypt`. A token the service no longer accepts (401) is dropped and the call
    /// made once more with a new one, so a revoked or rotated token costs no failed request.
    pub fn decrypt(&self, key_id: &str, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, CloudError> {
        let endpoint = self.env.gcp_kms_endpoint();
        let url = format!("{}/v1/{key_id}:decrypt", endpoint.trim_end_matches('/'));
        let body = serde_json::json!({ "ciphertext": base64::engine::general_purpose::STANDARD.encode(wrapped) });
        let what = format!("Cloud KMS at {endpoint}");
        let (status, answer) = post_with_token(&self.http, &self.credentials, &url, &body.to_string(), &what)?;
        if status != 200 {
            let (code, explanation) = google_error(&answer);
            return Err(CloudError::status("Cloud KMS decrypt", status, &code, format!(": {explanation}")));
        }
        let plaintext = crate::cloud::take_secret_field(&answer, "plaintext")
            .ok_or_else(|| CloudError::malformed("Cloud KMS decrypt answered without a plaintext"))?;
        base64::engine::general_purpose::STANDARD
            .decode(plaintext.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| CloudError::malformed("Cloud KMS decrypt answered a plaintext that is not base64"))
    }
}

/// `error.status` of a Google API error answer, and `error.status error.message` as shown.
fn google_error(answer: &[u8]) -> (String, String) {
    let value: serde_json::Value = serde_json::from_slice(answer).unwrap_or_default();
    let error = &value["error"];
    let status = error["status"].as_str().unwrap_or_default();
    let message: String = error["message"].as_str().unwrap_or_default().chars().take(300).collect();
    (status.to_string(), format!("{status} {message}").trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_google_errors() {
        let answer = br#"{"error":{"code":403,"message":"Permission denied","status":"PERMISSION_DENIED"}}"#;
        assert_eq!(google_error(answer).1, "PERMISSION_DENIED Permission denied");
    }
}
