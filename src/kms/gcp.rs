//! GCP Cloud KMS `decrypt` (`POST <endpoint>/v1/<keyId>:decrypt`). The access token comes from
//! `GOOGLE_APPLICATION_CREDENTIALS` — a service-account key (an RS256-signed JWT exchanged at
//! its `token_uri`) or an `authorized_user` refresh token — else from the metadata server.

use base64::Engine as _;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use zeroize::Zeroizing;

use super::post_with_token;
use super::token::{self, Fetched, TokenCache};
use crate::env::Env;
use crate::http::{form, small_reply, HttpClient};

const DEFAULT_ENDPOINT: &str = "https://cloudkms.googleapis.com";
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const METADATA_HOST: &str = "metadata.google.internal";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const JWT_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Lifetime asked of a service-account assertion (Google's maximum).
const ASSERTION_SECONDS: u64 = 3600;

pub struct GcpKms {
    http: HttpClient,
    env: Env,
    token: TokenCache,
}

impl GcpKms {
    pub fn new(http: HttpClient, env: Env) -> GcpKms {
        GcpKms { http, env, token: TokenCache::default() }
    }

    /// Cloud KMS `decrypt`. A token the service no longer accepts (401) is dropped and the call
    /// made once more with a new one, so a revoked or rotated token costs no failed request.
    pub fn decrypt(&self, key_id: &str, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
        let endpoint = self.env.get("CLEF_AGENT_GCP_KMS_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        let url = format!("{}/v1/{key_id}:decrypt", endpoint.trim_end_matches('/'));
        let body = serde_json::json!({ "ciphertext": base64::engine::general_purpose::STANDARD.encode(wrapped) });
        let fetch = || self.fetch_token();
        let what = format!("Cloud KMS at {endpoint}");
        let (status, answer) = post_with_token(&self.http, &self.token, fetch, &url, &body.to_string(), &what)?;
        if status != 200 {
            return Err(format!("Cloud KMS decrypt answered HTTP {status}: {}", google_error(&answer)));
        }
        let plaintext =
            super::take_secret_field(&answer, "plaintext").ok_or("Cloud KMS decrypt answered without a plaintext")?;
        base64::engine::general_purpose::STANDARD
            .decode(plaintext.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| "Cloud KMS decrypt answered a plaintext that is not base64".to_string())
    }

    fn fetch_token(&self) -> Result<Fetched, String> {
        let Some(path) = self.env.get("GOOGLE_APPLICATION_CREDENTIALS") else { return self.metadata_token() };
        let text = Zeroizing::new(
            std::fs::read_to_string(&path)
                .map_err(|error| format!("GOOGLE_APPLICATION_CREDENTIALS: cannot read {path}: {error}"))?,
        );
        let file: serde_json::Value = serde_json::from_str(&text)
            .map_err(|_| format!("GOOGLE_APPLICATION_CREDENTIALS: {path} is not a JSON credentials file"))?;
        let field = |name: &str| {
            file.get(name)
                .and_then(|value| value.as_str())
                .map(str::to_string)
                .ok_or_else(|| format!("GOOGLE_APPLICATION_CREDENTIALS: {path} has no \"{name}\""))
        };
        let now_ms = crate::time::now_ms();
        match field("type")?.as_str() {
            "service_account" => {
                let token_uri = field("token_uri").unwrap_or_else(|_| DEFAULT_TOKEN_URI.into());
                let private_key = Zeroizing::new(field("private_key")?);
                let assertion = Zeroizing::new(jwt(
                    &field("client_email")?,
                    file.get("private_key_id").and_then(|value| value.as_str()),
                    &private_key,
                    &token_uri,
                    now_ms / 1000,
                )?);
                self.token_request(&token_uri, &[("grant_type", JWT_GRANT), ("assertion", &assertion)], now_ms)
            }
            "authorized_user" => {
                let token_uri = field("token_uri").unwrap_or_else(|_| DEFAULT_TOKEN_URI.into());
                let (client_secret, refresh_token) =
                    (Zeroizing::new(field("client_secret")?), Zeroizing::new(field("refresh_token")?));
                let fields = [
                    ("grant_type", "refresh_token"),
                    ("client_id", &field("client_id")?),
                    ("client_secret", &client_secret),
                    ("refresh_token", &refresh_token),
                ];
                self.token_request(&token_uri, &fields, now_ms)
            }
            other => Err(format!(
                "GOOGLE_APPLICATION_CREDENTIALS: {path} is of type '{other}'; use a service_account or authorized_user file"
            )),
        }
    }

    fn token_request(&self, token_uri: &str, fields: &[(&str, &str)], now_ms: u64) -> Result<Fetched, String> {
        let body = form(fields);
        let call =
            self.http.for_url(token_uri).post(token_uri).header("Content-Type", "application/x-www-form-urlencoded");
        let (status, answer) =
            small_reply(call.send(body.as_bytes())).map_err(|why| format!("the token endpoint {token_uri}: {why}"))?;
        token::from_answer(status, &answer, now_ms, &format!("the token endpoint {token_uri}"))
    }

    fn metadata_token(&self) -> Result<Fetched, String> {
        let host = self.env.get("GCE_METADATA_HOST").unwrap_or_else(|| METADATA_HOST.into());
        let url = format!("http://{host}/computeMetadata/v1/instance/service-accounts/default/token");
        let call = self.http.metadata().get(&url).header("Metadata-Flavor", "Google");
        let (status, answer) = small_reply(call.call()).map_err(|why| {
            format!(
                "no GCP credentials: GOOGLE_APPLICATION_CREDENTIALS is not set and the metadata server {host} cannot be reached ({why})"
            )
        })?;
        token::from_answer(status, &answer, crate::time::now_ms(), &format!("the metadata server {host}"))
    }
}

/// A signed JWT-bearer assertion for a service account (RFC 7523, as Google documents it).
fn jwt(
    client_email: &str,
    key_id: Option<&str>,
    private_key_pem: &str,
    audience: &str,
    now: u64,
) -> Result<String, String> {
    let der = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(private_key_pem.lines().filter(|line| !line.starts_with("-----")).collect::<String>().trim())
            .map_err(|_| "the service account's private_key is not a PEM key".to_string())?,
    );
    let key = RsaKeyPair::from_pkcs8(&der)
        .map_err(|_| "the service account's private_key is not a PKCS#8 RSA key".to_string())?;
    let mut header = serde_json::json!({ "alg": "RS256", "typ": "JWT" });
    if let Some(key_id) = key_id {
        header["kid"] = key_id.into();
    }
    let claims = serde_json::json!({
        "iss": client_email,
        "scope": SCOPE,
        "aud": audience,
        "iat": now,
        "exp": now + ASSERTION_SECONDS,
    });
    let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let signing_input = format!("{}.{}", encode(header.to_string().as_bytes()), encode(claims.to_string().as_bytes()));
    let mut signature = vec![0u8; key.public().modulus_len()];
    key.sign(&RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), signing_input.as_bytes(), &mut signature)
        .map_err(|_| "signing the service account assertion failed".to_string())?;
    Ok(format!("{signing_input}.{}", encode(&signature)))
}

/// `error.status: error.message` of a Google API error answer.
fn google_error(answer: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(answer).unwrap_or_default();
    let error = &value["error"];
    let status = error["status"].as_str().unwrap_or_default();
    let message: String = error["message"].as_str().unwrap_or_default().chars().take(300).collect();
    format!("{status} {message}").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_google_errors() {
        let answer = br#"{"error":{"code":403,"message":"Permission denied","status":"PERMISSION_DENIED"}}"#;
        assert_eq!(google_error(answer), "PERMISSION_DENIED Permission denied");
    }

    #[test]
    fn refuses_keys_that_are_not_pkcs8_rsa() {
        let error = jwt("a@b", None, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", "x", 0);
        assert_eq!(error.err().as_deref(), Some("the service account's private_key is not a PKCS#8 RSA key"));
    }

    #[test]
    fn a_missing_metadata_server_is_named() {
        let kms = GcpKms::new(HttpClient::default(), Env::from_pairs(&[("GCE_METADATA_HOST", "127.0.0.1:1")]));
        let error = kms.fetch_token().err().unwrap_or_default();
        assert!(error.starts_with("no GCP credentials: GOOGLE_APPLICATION_CREDENTIALS is not set"), "{error}");
    }
}
