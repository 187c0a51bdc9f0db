//! Azure Key Vault `unwrapkey` (`POST <keyId>/unwrapkey?api-version=7.4`, values base64url),
//! with a token from the Azure credential chain ([`crate::cloud::azure`]).

use base64::Engine as _;
use zeroize::Zeroizing;

use super::key_id::AzureKey;
use super::post_with_token;
use crate::cloud::azure::AzureCredentials;
use crate::cloud::{CloudError, Env};
use crate::http::HttpClient;

const API_VERSION: &str = "7.4";
/// Sends Key Vault calls to another address (a private endpoint, a test double), keeping the
/// key's path.
const ENDPOINT_VARIABLE: &str = "CLEF_AGENT_AZURE_KEYVAULT_ENDPOINT";

pub struct AzureKms {
    http: HttpClient,
    env: Env,
    credentials: AzureCredentials,
}

impl AzureKms {
    pub fn new(http: HttpClient, env: Env) -> AzureKms {
        AzureKms { credentials: AzureCredentials::new(http.clone(), env.clone()), http, env }
    }

    /// Key Vault `unwrapkey` for a key that passed [`super::key_id::azure`]: at the key's vault,
    /// or at `CLEF_AGENT_AZURE_KEYVAULT_ENDPOINT` (a private endpoint) with the key's path. A
    /// token the vault no longer accepts (401) is dropped and the call made once more with a new
    /// one.
    pub fn unwrap_key(
        &self,
        key: &AzureKey,
        algorithm: &str,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CloudError> {
        let vault = match self.env.get(ENDPOINT_VARIABLE) {
            Some(endpoint) => endpoint_base(&endpoint)?,
            None => key.vault.clone(),
        };
        let url = format!("{vault}{}/unwrapkey?api-version={API_VERSION}", key.path);
        let key_id = format!("{}{}", key.vault, key.path);
        let body = serde_json::json!({
            "alg": algorithm,
            "value": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(wrapped),
        });
        let what = format!("Key Vault {}", crate::text::quoted(&key_id));
        let (status, answer) = post_with_token(&self.http, &self.credentials, &url, &body.to_string(), &what)?;
        if status != 200 {
            let (code, explanation) = azure_error(&answer);
            return Err(CloudError::status("Key Vault unwrapkey", status, &code, format!(": {explanation}")));
        }
        let value = crate::cloud::take_secret_field(&answer, "value")
            .ok_or_else(|| CloudError::malformed("Key Vault unwrapkey answered without a value"))?;
        // base64url as Key Vault writes it, unpadded; a padded value is accepted as well.
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value.trim_end_matches('='))
            .map(Zeroizing::new)
            .map_err(|_| CloudError::malformed("Key Vault unwrapkey answered a value that is not base64url"))
    }
}

/// `CLEF_AGENT_AZURE_KEYVAULT_ENDPOINT` as a base URL without a trailing `/`.
fn endpoint_base(endpoint: &str) -> Result<String, CloudError> {
    match crate::url::HttpUrl::parse(endpoint) {
        Some(url) if !url.has_userinfo && url.query.is_none() && !endpoint.contains('#') => {
            Ok(endpoint.trim_end_matches('/').to_string())
        }
        _ => Err(CloudError::invalid_variable(
            ENDPOINT_VARIABLE,
            format!(
                "{ENDPOINT_VARIABLE} must be an http:// or https:// base URL without user-info, query or fragment, got '{endpoint}'"
            ),
        )),
    }
}

/// `error.code` of a Key Vault error answer, and `error.code error.message` as shown.
fn azure_error(answer: &[u8]) -> (String, String) {
    let value: serde_json::Value = serde_json::from_slice(answer).unwrap_or_default();
    let error = &value["error"];
    let code = error["code"].as_str().unwrap_or_default();
    let message: String = error["message"].as_str().unwrap_or_default().chars().take(300).collect();
    (code.to_string(), format!("{code} {message}").trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_variable_is_a_plain_base_url() {
        assert_eq!(endpoint_base("http://127.0.0.1:8080/").ok().as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(endpoint_base("https://kv.internal/prefix").ok().as_deref(), Some("https://kv.internal/prefix"));
        for bad in ["kv.internal", "https://u:p@kv.internal", "https://kv.internal/?x=1", "https://kv.internal/#f"] {
            assert!(
                endpoint_base(bad).unwrap_err().to_string().starts_with("CLEF_AGENT_AZURE_KEYVAULT_ENDPOINT must be"),
                "{bad}"
            );
        }
    }

    #[test]
    fn reads_key_vault_errors() {
        let answer = br#"{"error":{"code":"Forbidden","message":"The user does not have unwrapKey permission"}}"#;
        assert_eq!(azure_error(answer).1, "Forbidden The user does not have unwrapKey permission");
    }
}
