//! The Azure credential chain: a token for Key Vault (`https://vault.azure.net`) from a client
//! secret, workload identity (a federated token file), the App Service identity endpoint, else
//! the IMDS managed identity; held until a minute before it expires.

use zeroize::Zeroizing;

use super::expiring::Expiring;
use super::oauth::{self, Fetched, TokenChain};
use super::{CloudError, Env};
use crate::http::{form, small_reply, HttpClient};
use crate::secret::Secret;
use crate::url::percent_encode;

const RESOURCE: &str = "https://vault.azure.net";
const SCOPE: &str = "https://vault.azure.net/.default";
const APP_SERVICE: &str = "the App Service identity endpoint";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

pub struct AzureCredentials {
    http: HttpClient,
    env: Env,
    token: Expiring<Secret>,
}

impl TokenChain for AzureCredentials {
    fn token(&self, now_ms: u64) -> Result<Secret, CloudError> {
        oauth::held_token(&self.token, now_ms, || self.fetch_token())
    }

    fn forget(&self) {
        self.token.forget();
    }
}

impl AzureCredentials {
    pub fn new(http: HttpClient, env: Env) -> AzureCredentials {
        AzureCredentials { http, env, token: Expiring::default() }
    }

    fn fetch_token(&self) -> Result<Fetched, CloudError> {
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
                        .map_err(|error| CloudError::unreadable("AZURE_FEDERATED_TOKEN_FILE", &path, error))?,
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
        let client_query = client_id.as_deref().map(|id| format!("&client_id={}", percent_encode(id, true)));
        let resource = percent_encode(RESOURCE, true);
        if let (Some(endpoint), Some(header)) = (env.get("IDENTITY_ENDPOINT"), env.get("IDENTITY_HEADER")) {
            let header = Zeroizing::new(header);
            let url =
                format!("{endpoint}?resource={resource}&api-version=2019-08-01{}", client_query.unwrap_or_default());
            let call = self.http.metadata().get(&url).header("X-IDENTITY-HEADER", header.as_str());
            let (status, answer) =
                small_reply(call.call()).map_err(|why| CloudError::from(why).after_prefix(APP_SERVICE))?;
            return oauth::from_answer(status, &answer, now_ms, APP_SERVICE);
        }
        let imds = env.azure_imds_endpoint();
        let url = format!(
            "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource}{}",
            imds.trim_end_matches('/'),
            client_query.unwrap_or_default()
        );
        let call = self.http.metadata().get(&url).header("Metadata", "true");
        let (status, answer) = small_reply(call.call()).map_err(|why| {
            CloudError::from(why).within(
                format_args!(
                    "no Azure credentials: set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET or AZURE_FEDERATED_TOKEN_FILE, \
                     or run with a managed identity (IMDS at {imds}: "
                ),
                ")",
            )
        })?;
        oauth::from_answer(status, &answer, now_ms, &format!("the managed identity endpoint {imds}"))
    }

    /// A token from Microsoft Entra ID's v2.0 token endpoint for `tenant`.
    fn entra_token(&self, tenant: &str, fields: &[(&str, &str)], now_ms: u64) -> Result<Fetched, CloudError> {
        let authority = self.env.azure_authority_host();
        let url = format!("{}/{tenant}/oauth2/v2.0/token", authority.trim_end_matches('/'));
        let body = form(fields);
        let call = self.http.for_url(&url).post(&url).header("Content-Type", "application/x-www-form-urlencoded");
        let (status, answer) = small_reply(call.send(body.as_bytes()))
            .map_err(|why| CloudError::from(why).after_prefix(format_args!("the token endpoint {url}")))?;
        oauth::from_answer(status, &answer, now_ms, &format!("the token endpoint {url}"))
    }
}
