//! The GCP credential chain: an access token from `GOOGLE_APPLICATION_CREDENTIALS` — a
//! service-account key (an RS256-signed JWT exchanged at its `token_uri`) or an `authorized_user`
//! refresh token — else from the metadata server; held until a minute before it expires.

use base64::Engine as _;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use zeroize::Zeroizing;

use super::expiring::Expiring;
use super::oauth::{self, Fetched, TokenChain};
use super::{CloudError, Env};
use crate::http::{form, small_reply, HttpClient};
use crate::secret::Secret;

const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const JWT_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Lifetime asked of a service-account assertion (Google's maximum).
const ASSERTION_SECONDS: u64 = 3600;

pub struct GcpCredentials {
    http: HttpClient,
    env: Env,
    token: Expiring<Secret>,
}

impl TokenChain for GcpCredentials {
    fn token(&self, now_ms: u64) -> Result<Secret, CloudError> {
        oauth::held_token(&self.token, now_ms, || self.fetch_token())
    }

    fn forget(&self) {
        self.token.forget();
    }
}

impl GcpCredentials {
    pub fn new(http: HttpClient, env: Env) -> GcpCredentials {
        GcpCredentials { http, env, token: Expiring::default() }
    }

    fn fetch_token(&self) -> Result<Fetched, CloudError> {
        let Some(path) = self.env.get("GOOGLE_APPLICATION_CREDENTIALS") else { return self.metadata_token() };
        let text = Zeroizing::new(
            std::fs::read_to_string(&path)
                .map_err(|error| CloudError::unreadable("GOOGLE_APPLICATION_CREDENTIALS", &path, error))?,
        );
        let file: serde_json::Value =
            serde_json::from_str(&text).map_err(|_| malformed(format!("{path} is not a JSON credentials file")))?;
        let field = |name: &str| {
            file.get(name)
                .and_then(|value| value.as_str())
                .map(str::to_string)
                .ok_or_else(|| malformed(format!("{path} has no \"{name}\"")))
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
            other => {
                Err(malformed(format!("{path} is of type '{other}'; use a service_account or authorized_user file")))
            }
        }
    }

    fn token_request(&self, token_uri: &str, fields: &[(&str, &str)], now_ms: u64) -> Result<Fetched, CloudError> {
        let body = form(fields);
        let call =
            self.http.for_url(token_uri).post(token_uri).header("Content-Type", "application/x-www-form-urlencoded");
        let (status, answer) = small_reply(call.send(body.as_bytes()))
            .map_err(|why| CloudError::from(why).after_prefix(format_args!("the token endpoint {token_uri}")))?;
        oauth::from_answer(status, &answer, now_ms, &format!("the token endpoint {token_uri}"))
    }

    fn metadata_token(&self) -> Result<Fetched, CloudError> {
        let host = self.env.gce_metadata_host();
        let url = format!("http://{host}/computeMetadata/v1/instance/service-accounts/default/token");
        let call = self.http.metadata().get(&url).header("Metadata-Flavor", "Google");
        let (status, answer) = small_reply(call.call()).map_err(|why| {
            CloudError::from(why).within(
                format_args!(
                    "no GCP credentials: GOOGLE_APPLICATION_CREDENTIALS is not set and the metadata server {host} cannot be reached ("
                ),
                ")",
            )
        })?;
        oauth::from_answer(status, &answer, crate::time::now_ms(), &format!("the metadata server {host}"))
    }
}

/// A problem with the credentials file `GOOGLE_APPLICATION_CREDENTIALS` names.
fn malformed(what: String) -> CloudError {
    CloudError::malformed(what).after_prefix("GOOGLE_APPLICATION_CREDENTIALS")
}

/// A signed JWT-bearer assertion for a service account (RFC 7523, as Google documents it).
fn jwt(
    client_email: &str,
    key_id: Option<&str>,
    private_key_pem: &str,
    audience: &str,
    now: u64,
) -> Result<String, CloudError> {
    let der = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(private_key_pem.lines().filter(|line| !line.starts_with("-----")).collect::<String>().trim())
            .map_err(|_| CloudError::malformed("the service account's private_key is not a PEM key"))?,
    );
    let key = RsaKeyPair::from_pkcs8(&der)
        .map_err(|_| CloudError::malformed("the service account's private_key is not a PKCS#8 RSA key"))?;
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
        .map_err(|_| CloudError::malformed("signing the service account assertion failed"))?;
    Ok(format!("{signing_input}.{}", encode(&signature)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_keys_that_are_not_pkcs8_rsa() {
        let error = jwt("a@b", None, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", "x", 0);
        assert_eq!(
            error.err().map(|error| error.to_string()).as_deref(),
            Some("the service account's private_key is not a PKCS#8 RSA key")
        );
    }

    #[test]
    fn a_missing_metadata_server_is_named() {
        let chain =
            GcpCredentials::new(HttpClient::default(), Env::from_pairs(&[("GCE_METADATA_HOST", "127.0.0.1:1")]));
        let error = chain.fetch_token().err().map(|error| error.to_string()).unwrap_or_default();
        assert!(error.starts_with("no GCP credentials: GOOGLE_APPLICATION_CREDENTIALS is not set"), "{error}");
    }
}
