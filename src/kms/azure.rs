//! Azure Key Vault `unwrapkey` (`POST <keyId>/unwrapkey?api-version=7.4`, values base64url).
//! The token for `https://vault.azure.net` comes from a client secret, workload identity (a
//! federated token file), the App Service identity endpoint, else the IMDS managed identity.

use base64::Engine as _;
use zeroize::Zeroizing;

use super::key_id::AzureKey;
use super::post_with_token;
use super::token::{self, Fetched, TokenCache};
use crate::env::Env;
use crate::http::{form, small_reply, HttpClient};

const API_VERSION: &str = "7.4";
/// Sends Key Vault calls to another address (a private endpoint, a test double), keeping the
/// key's path.
const ENDPOINT_VARIABLE: &str = "CLEF_AGENT_AZURE_KEYVAULT_ENDPOINT";
const RESOURCE: &str = "https://vault.azure.net";
const SCOPE: &str = "https://vault.azure.net/.default";
const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
const DEFAULT_IMDS: &str = "http://169.254.169.254";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

pub struct AzureKms {
    http: HttpClient,
    env: Env,
    token: TokenCache,
}

impl AzureKms {
    pub fn new(http: HttpClient, env: Env) -> AzureKms {
        AzureKms { http, env, token: TokenCache::default() }
    }

    /// Key Vault `unwrapkey` for a key that passed [`super::key_id::azure`]: at the key's vault,
    /// or at `CLEF_AGENT_AZURE_KEYVAULT_ENDPOINT` (a private endpoint) with the key's path. A
    /// token the vault no longer accepts (401) is dropped and the call made once more with a new
    /// one.
    pub fn unwrap_key(&self, key: &AzureKey, algorithm: &str, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
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
        let fetch = || self.fetch_token();
        let what = format!("Key Vault {}", crate::text::quoted(&key_id));
        let (status, answer) = post_with_token(&self.http, &self.token, fetch, &url, &body.to_string(), &what)?;
        if status != 200 {
            return Err(format!("Key Vault unwrapkey answered HTTP {status}: {}", azure_error(&answer)));
        }
        let value = super::take_secret_field(&answer, "value").ok_or("Key Vault unwrapkey answered without a value")?;
        // base64url as Key Vault writes it, unpadded; a padded value is accepted as well.
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value.trim_end_matches('='))
            .map(Zeroizing::new)
            .map_err(|_| "Key Vault unwrapkey answered a value that is not base64url".to_string())
    }

    fn fetch_token(&self) -> Result<Fetched, String> {
        let env = &self.env;
        let now_ms = crate::time::now_ms();
        let client_id = env.get("AZURE_CLIENT_ID");
        if let (Some(client_id), Some(tenant)) = (&client_id, env.get("AZURE_TENANT_ID")) {
            if let Some(secret) = env.get("AZURE_CLIENT_SECRET").map(Zeroizing::new) {
                let fields = [
                    ("client_id", client_id.as_str()),
                    ("client_secret", secret.as_str()),
                    ("grant_type", "client_credentials"),
                    ("scope", SCOPE),
                ];
                return self.entra_token(&tenant, &fields, now_ms);
            }
            if let Some(path) = env.get("AZURE_FEDERATED_TOKEN_FILE") {
                let assertion = Zeroizing::new(
                    std::fs::read_to_string(&path)
                        .map_err(|error| format!("AZURE_FEDERATED_TOKEN_FILE: cannot read {path}: {error}"))?,
                );
                let fields = [
                    ("client_id", client_id.as_str()),
                    ("client_assertion_type", ASSERTION_TYPE),
                    ("client_assertion", assertion.trim()),
                    ("grant_type", "client_credentials"),
                    ("scope", SCOPE),
                ];
                return self.entra_token(&tenant, &fields, now_ms);
            }
        }
        let client_query = client_id.as_deref().map(|id| format!("&client_id={}", crate::aws::sigv4::encode(id, true)));
        let resource = crate::aws::sigv4::encode(RESOURCE, true);
        if let (Some(endpoint), Some(header)) = (env.get("IDENTITY_ENDPOINT"), env.get("IDENTITY_HEADER")) {
            let header = Zeroizing::new(header);
            let url =
                format!("{endpoint}?resource={resource}&api-version=2019-08-01{}", client_query.unwrap_or_default());
            let call = self.http.metadata().get(&url).header("X-IDENTITY-HEADER", header.as_str());
            let (status, answer) =
                small_reply(call.call()).map_err(|why| format!("the App Service identity endpoint: {why}"))?;
            return token::from_answer(status, &answer, now_ms, "the App Service identity endpoint");
        }
        let imds = env.get("CLEF_AGENT_AZURE_IMDS_ENDPOINT").unwrap_or_else(|| DEFAULT_IMDS.into());
        let url = format!(
            "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource}{}",
            imds.trim_end_matches('/'),
            client_query.unwrap_or_default()
        );
        let call = self.http.metadata().get(&url).header("Metadata", "true");
        let (status, answer) = small_reply(call.call()).map_err(|why| {
            format!(
                "no Azure credentials: set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET or AZURE_FEDERATED_TOKEN_FILE, \
                 or run with a managed identity (IMDS at {imds}: {why})"
            )
        })?;
        token::from_answer(status, &answer, now_ms, &format!("the managed identity endpoint {imds}"))
    }

    /// A token from Microsoft Entra ID's v2.0 token endpoint for `tenant`.
    fn entra_token(&self, tenant: &str, fields: &[(&str, &str)], now_ms: u64) -> Result<Fetched, String> {
        let authority = self.env.get("AZURE_AUTHORITY_HOST").unwrap_or_else(|| DEFAULT_AUTHORITY.into());
        let url = format!("{}/{tenant}/oauth2/v2.0/token", authority.trim_end_matches('/'));
        let body = form(fields);
        let call = self.http.for_url(&url).post(&url).header("Content-Type", "application/x-www-form-urlencoded");
        let (status, answer) =
            small_reply(call.send(body.as_bytes())).map_err(|why| format!("the token endpoint {url}: {why}"))?;
        token::from_answer(status, &answer, now_ms, &format!("the token endpoint {url}"))
    }
}

/// `CLEF_AGENT_AZURE_KEYVAULT_ENDPOINT` as a base URL without a trailing `/`.
fn endpoint_base(endpoint: &str) -> Result<String, String> {
    match crate::url::HttpUrl::parse(endpoint) {
        Some(url) if !url.has_userinfo && url.query.is_none() && !endpoint.contains('#') => {
            Ok(endpoint.trim_end_matches('/').to_string())
        }
        _ => Err(format!(
            "{ENDPOINT_VARIABLE} must be an http:// or https:// base URL without user-info, query or fragment, got '{endpoint}'"
        )),
    }
}

/// `error.code: error.message` of a Key Vault error answer.
fn azure_error(answer: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(answer).unwrap_or_default();
    let error = &value["error"];
    let code = error["code"].as_str().unwrap_or_default();
    let message: String = error["message"].as_str().unwrap_or_default().chars().take(300).collect();
    format!("{code} {message}").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_variable_is_a_plain_base_url() {
        assert_eq!(endpoint_base("http://127.0.0.1:8080/").as_deref(), Ok("http://127.0.0.1:8080"));
        assert_eq!(endpoint_base("https://kv.internal/prefix").as_deref(), Ok("https://kv.internal/prefix"));
        for bad in ["kv.internal", "https://u:p@kv.internal", "https://kv.internal/?x=1", "https://kv.internal/#f"] {
            assert!(endpoint_base(bad).unwrap_err().starts_with("CLEF_AGENT_AZURE_KEYVAULT_ENDPOINT must be"), "{bad}");
        }
    }

    #[test]
    fn reads_key_vault_errors() {
        let answer = br#"{"error":{"code":"Forbidden","message":"The user does not have unwrapKey permission"}}"#;
        assert_eq!(azure_error(answer), "Forbidden The user does not have unwrapKey permission");
    }
}
