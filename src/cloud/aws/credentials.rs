//! The AWS credential chain of SPEC §5, first that applies: environment keys, web identity
//! (STS `AssumeRoleWithWebIdentity`), container credentials, EC2 instance metadata (IMDSv2).
//! Temporary credentials are cached until five minutes before they expire, and for five minutes
//! when their expiry is missing or unreadable; the S3 source forgets them when S3 says they are
//! no longer good. Error messages name the provider and what to fix, never a key, token or secret.

use std::fmt;

use super::xml_text;
use crate::cloud::expiring::Expiring;
use crate::cloud::{CloudError, Env};
use crate::http::{small_reply, HttpClient};
use crate::secret::Secret;

/// Temporary credentials are renewed this long before they expire.
const RENEW_BEFORE_MS: u64 = 5 * 60 * 1000;
/// Temporary credentials whose `Expiration` is missing or unreadable are looked up again this
/// long after they were fetched: kept for good, they would outlive their real expiry.
const UNKNOWN_EXPIRY_LIFE_MS: u64 = 5 * 60 * 1000;
/// S3 error codes (HTTP 400 or 403) that say the request's credentials, not the request, are
/// stale: the session token expired or is unknown, or the signature's time is too far from S3's.
/// Looking the credentials up again is what fixes them (SDKs retry these after a refresh too).
pub const S3_STALE_CREDENTIAL_CODES: [&str; 4] =
    ["ExpiredToken", "InvalidToken", "TokenRefreshRequired", "RequestTimeTooSkewed"];
/// The container credentials host of `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`.
const CONTAINER_HOST: &str = "http://169.254.170.2";

#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    /// When temporary credentials expire (epoch ms); `None` for long-term keys, and for
    /// temporary ones whose provider sent no readable expiry.
    pub expires_at_ms: Option<u64>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials([redacted])")
    }
}

/// Finds credentials on demand and keeps temporary ones until shortly before they expire.
pub struct CredentialChain {
    env: Env,
    http: HttpClient,
    /// Renewed at [`renew_at_ms`]; long-term keys never.
    cached: Expiring<Credentials>,
}

impl CredentialChain {
    pub fn new(env: Env, http: HttpClient) -> CredentialChain {
        CredentialChain { env, http, cached: Expiring::default() }
    }

    /// Credentials valid at `now_ms`, from the cache or the first provider that applies.
    pub fn credentials(&self, now_ms: u64) -> Result<Credentials, CloudError> {
        self.cached.get(now_ms, || {
            let (credentials, long_term) = self.resolve(now_ms)?;
            let renew_at = (!long_term).then(|| renew_at_ms(credentials.expires_at_ms, now_ms));
            Ok((credentials, renew_at))
        })
    }

    /// Forgets cached credentials (after the service refused them).
    pub fn forget(&self) {
        self.cached.forget();
    }

    /// Forgets cached credentials when an S3 error `code` says they are stale
    /// ([`S3_STALE_CREDENTIAL_CODES`]), so the next request looks them up again; true if so.
    pub fn forget_if_stale_for_s3(&self, code: &str) -> bool {
        let stale = S3_STALE_CREDENTIAL_CODES.contains(&code);
        if stale {
            self.forget();
        }
        stale
    }

    /// The first provider's credentials, and whether they are long-term keys (never renewed).
    fn resolve(&self, now_ms: u64) -> Result<(Credentials, bool), CloudError> {
        let env = &self.env;
        match (env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key_id), Some(secret)) => {
                let credentials = Credentials {
                    access_key_id,
                    secret_access_key: Secret::new(secret),
                    session_token: env.get("AWS_SESSION_TOKEN").map(Secret::new),
                    expires_at_ms: None,
                };
                return Ok((credentials, true));
            }
            (Some(_), None) => {
                let message = "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not: set both";
                return Err(CloudError::missing_variable("AWS_SECRET_ACCESS_KEY", message));
            }
            (None, Some(_)) => {
                let message = "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not: set both";
                return Err(CloudError::missing_variable("AWS_ACCESS_KEY_ID", message));
            }
            (None, None) => {}
        }
        if let Some(token_file) = env.get("AWS_WEB_IDENTITY_TOKEN_FILE") {
            let Some(role_arn) = env.get("AWS_ROLE_ARN") else {
                let message = "AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not: set the role to assume";
                return Err(CloudError::missing_variable("AWS_ROLE_ARN", message));
            };
            return self.web_identity(&token_file, &role_arn, now_ms).map(|credentials| (credentials, false));
        }
        let container_url =
            match (env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"), env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")) {
                (Some(relative), _) => Some(format!("{CONTAINER_HOST}{relative}")),
                (None, Some(full)) => Some(full),
                (None, None) => None,
            };
        if let Some(url) = container_url {
            return self.container(&url).map(|credentials| (credentials, false));
        }
        if env.get("AWS_EC2_METADATA_DISABLED").is_some_and(|value| value.eq_ignore_ascii_case("true")) {
            let message = NO_CREDENTIALS.to_string() + " (instance metadata is off: AWS_EC2_METADATA_DISABLED=true)";
            return Err(CloudError::missing_variable("AWS_ACCESS_KEY_ID", message));
        }
        let endpoint = env.aws_imds_endpoint();
        self.instance_metadata(endpoint.trim_end_matches('/'))
            .map(|credentials| (credentials, false))
            .map_err(|why| why.within(format_args!("{NO_CREDENTIALS} (instance metadata at {endpoint}: "), ")"))
    }

    /// STS `AssumeRoleWithWebIdentity` with the token in the file (EKS IRSA).
    fn web_identity(&self, token_file: &str, role_arn: &str, now_ms: u64) -> Result<Credentials, CloudError> {
        let token = std::fs::read_to_string(token_file)
            .map_err(|error| CloudError::unreadable("AWS_WEB_IDENTITY_TOKEN_FILE", token_file, error))?;
        let token = Secret::new(token.trim().to_string());
        let session = self.env.get("AWS_ROLE_SESSION_NAME").unwrap_or_else(|| format!("clef-agent-{}", now_ms / 1000));
        let endpoint = self.env.aws_endpoint("STS").unwrap_or_else(|| match self.env.aws_region() {
            Some(region) => format!("https://sts.{region}.amazonaws.com"),
            None => "https://sts.amazonaws.com".into(),
        });
        let form = [
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", role_arn),
            ("RoleSessionName", session.as_str()),
            ("WebIdentityToken", token.expose()),
        ];
        let body = crate::http::form(&form);
        let url = format!("{}/", endpoint.trim_end_matches('/'));
        let context = |why: CloudError| {
            why.after_prefix(format_args!("STS AssumeRoleWithWebIdentity at {endpoint} for {role_arn} failed"))
        };
        let response = self
            .http
            .for_url(&url)
            .post(&url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(body.as_bytes());
        let (status, answer) = small_reply(response).map_err(|why| context(why.into()))?;
        let text = String::from_utf8_lossy(&answer);
        if status != 200 {
            let code = xml_text(&text, "Code").unwrap_or_default();
            let message = xml_text(&text, "Message").unwrap_or_default();
            return Err(context(CloudError::status("", status, &code, format!(" {code}: {message}"))));
        }
        let field = |name: &str| {
            xml_text(&text, name).ok_or_else(|| context(CloudError::malformed(format!("the answer has no {name}"))))
        };
        Ok(Credentials {
            access_key_id: field("AccessKeyId")?,
            secret_access_key: Secret::new(field("SecretAccessKey")?),
            session_token: Some(Secret::new(field("SessionToken")?)),
            expires_at_ms: expiry(&field("Expiration")?),
        })
    }

    /// ECS / Fargate / EKS Pod Identity credentials endpoint.
    fn container(&self, url: &str) -> Result<Credentials, CloudError> {
        let described = crate::url::HttpUrl::parse(url).map(|url| url.redacted()).unwrap_or_else(|| url.to_string());
        let context = |why: CloudError| why.after_prefix(format_args!("container credentials at {described}"));
        let authorization = match (
            self.env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
            self.env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
        ) {
            (Some(path), _) => Some(Secret::new(
                std::fs::read_to_string(&path)
                    .map_err(|error| CloudError::unreadable("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &path, error))?
                    .trim()
                    .to_string(),
            )),
            (None, token) => token.map(Secret::new),
        };
        let mut request = self.http.metadata().get(url);
        if let Some(token) = &authorization {
            request = request.header("Authorization", token.expose());
        }
        let (status, answer) = small_reply(request.call()).map_err(|why| context(why.into()))?;
        if status != 200 {
            return Err(context(CloudError::status("", status, "", String::new())));
        }
        credentials_from_json(&answer).map_err(context)
    }

    /// IMDSv2: a session token by PUT, then the role's credentials.
    fn instance_metadata(&self, endpoint: &str) -> Result<Credentials, CloudError> {
        let token_url = format!("{endpoint}/latest/api/token");
        let response =
            self.http.metadata().put(&token_url).header("X-aws-ec2-metadata-token-ttl-seconds", "21600").send_empty();
        let (status, token) = small_reply(response)?;
        if status != 200 {
            return Err(CloudError::status("the token request", status, "", String::new()));
        }
        let token = Secret::new(String::from_utf8_lossy(&token).trim().to_string());
        let get = |url: &str| -> Result<zeroize::Zeroizing<Vec<u8>>, CloudError> {
            let response = self.http.metadata().get(url).header("X-aws-ec2-metadata-token", token.expose()).call();
            match small_reply(response)? {
                (200, body) => Ok(body),
                (404, _) => Err(CloudError::malformed(NO_ROLE)),
                (status, _) => Err(CloudError::status("", status, "", String::new())),
            }
        };
        let roles_url = format!("{endpoint}/latest/meta-data/iam/security-credentials/");
        let roles = get(&roles_url)?;
        let role = String::from_utf8_lossy(&roles).lines().next().unwrap_or_default().trim().to_string();
        if role.is_empty() {
            return Err(CloudError::malformed(NO_ROLE));
        }
        credentials_from_json(&get(&format!("{roles_url}{role}"))?)
    }
}

const NO_CREDENTIALS: &str = "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
     or AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, or run where container credentials \
     (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI / _FULL_URI) or an EC2 instance role are available";
const NO_ROLE: &str = "no IAM role is attached to this instance";

/// The JSON shape container endpoints and IMDS share.
fn credentials_from_json(body: &[u8]) -> Result<Credentials, CloudError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| CloudError::malformed("the answer is not the expected JSON"))?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(|field| field.as_str())
            .map(str::to_string)
            .ok_or_else(|| CloudError::malformed(format!("the answer has no {name}")))
    };
    Ok(Credentials {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: Secret::new(field("SecretAccessKey")?),
        session_token: field("Token").ok().map(Secret::new),
        expires_at_ms: match field("Expiration") {
            Ok(text) => expiry(&text),
            Err(_) => None,
        },
    })
}

fn expiry(text: &str) -> Option<u64> {
    crate::time::parse_iso8601_ms(text).map(|ms| ms.max(0) as u64)
}

/// When temporary credentials fetched at `fetched_at_ms` are looked up again: five minutes
/// before they expire, or after [`UNKNOWN_EXPIRY_LIFE_MS`] when their expiry is unknown.
fn renew_at_ms(expires_at_ms: Option<u64>, fetched_at_ms: u64) -> u64 {
    match expires_at_ms {
        Some(expiry) => expiry.saturating_sub(RENEW_BEFORE_MS),
        None => fetched_at_ms.saturating_add(UNKNOWN_EXPIRY_LIFE_MS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(vars: &[(&str, &str)]) -> CredentialChain {
        CredentialChain::new(Env::from_pairs(vars), HttpClient::default())
    }

    #[test]
    fn environment_keys_come_first() {
        let credentials = chain(&[
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_SESSION_TOKEN", "session"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/nonexistent"),
        ])
        .credentials(0)
        .unwrap();
        assert_eq!(credentials.access_key_id, "AKIDEXAMPLE");
        assert_eq!(credentials.session_token.map(|token| token.expose().to_string()).as_deref(), Some("session"));
        assert_eq!(format!("{:?}", chain(&[]).cached), "Mutex { data: None, poisoned: false, .. }");
    }

    #[test]
    fn half_configured_providers_say_what_is_missing() {
        let error = chain(&[("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")]).credentials(0).unwrap_err().to_string();
        assert!(error.contains("AWS_SECRET_ACCESS_KEY"), "{error}");
        let error = chain(&[("AWS_WEB_IDENTITY_TOKEN_FILE", "/x")]).credentials(0).unwrap_err().to_string();
        assert!(error.contains("AWS_ROLE_ARN"), "{error}");
        let error = chain(&[("AWS_EC2_METADATA_DISABLED", "true")]).credentials(0).unwrap_err().to_string();
        assert!(error.starts_with("no AWS credentials found"), "{error}");
    }

    /// Request lines and lowercased headers, as a test server received them.
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<String>)>>>;

    /// A loopback HTTP server: each request (request line and lowercased headers, recorded) is
    /// answered 200 with what `answer` returns, and the connection closed.
    fn scripted_server(answer: impl Fn(&str, usize) -> String + Send + 'static) -> (String, Seen) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen: Seen = std::sync::Arc::default();
        let recorded = std::sync::Arc::clone(&seen);
        std::thread::spawn(move || {
            for (index, stream) in listener.incoming().enumerate() {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let mut headers = Vec::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line.trim().is_empty() {
                        break;
                    }
                    headers.push(line.trim().to_ascii_lowercase());
                }
                let request_line = request_line.trim().to_string();
                let body = answer(&request_line, index);
                recorded.lock().unwrap().push((request_line, headers));
                let reply =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                stream.write_all(reply.as_bytes()).unwrap();
            }
        });
        (base, seen)
    }

    fn credentials_json(expiration: &str) -> String {
        format!(
            r#"{{"Code":"Success","AccessKeyId":"ASIAEXAMPLE","SecretAccessKey":"s","Token":"t","Expiration":"{expiration}"}}"#
        )
    }

    #[test]
    fn temporary_credentials_are_reused_until_five_minutes_before_they_expire() {
        let now = crate::time::parse_iso8601_ms("2026-11-30T12:00:00Z").unwrap() as u64;
        let expirations = ["2026-11-30T12:10:00Z", "2026-11-30T13:00:00Z"];
        let (base, seen) = scripted_server(move |_, index| credentials_json(expirations[index.min(1)]));
        let url = format!("{base}/v2/credentials/abc");
        let chain =
            chain(&[("AWS_CONTAINER_CREDENTIALS_FULL_URI", &url), ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "tok-1")]);
        let first = chain.credentials(now).unwrap();
        assert_eq!(first.expires_at_ms, crate::time::parse_iso8601_ms("2026-11-30T12:10:00Z").map(|ms| ms as u64));
        chain.credentials(now + 4 * 60 * 1000).unwrap();
        assert_eq!(seen.lock().unwrap().len(), 1, "reused while more than 5 minutes are left");
        let renewed = chain.credentials(now + 5 * 60 * 1000 + 1).unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "renewed inside the last 5 minutes");
        for (request_line, headers) in &seen {
            assert_eq!(request_line, "GET /v2/credentials/abc HTTP/1.1");
            assert!(headers.contains(&"authorization: tok-1".to_string()), "{headers:?}");
        }
        assert_eq!(renewed.expires_at_ms, crate::time::parse_iso8601_ms("2026-11-30T13:00:00Z").map(|ms| ms as u64));
    }

    #[test]
    fn credentials_without_a_readable_expiry_are_renewed_after_a_short_life() {
        let fetched = 1_000_000;
        let expiry = crate::time::parse_iso8601_ms("2026-11-30T13:00:00Z").unwrap() as u64;
        assert_eq!(renew_at_ms(Some(expiry), fetched), expiry - RENEW_BEFORE_MS);
        assert_eq!(renew_at_ms(None, fetched), fetched + UNKNOWN_EXPIRY_LIFE_MS);
        assert_eq!(renew_at_ms(Some(60_000), fetched), 0, "an expiry in the past renews at once");
    }

    #[test]
    fn temporary_credentials_with_an_unparseable_expiry_are_fetched_again_after_five_minutes() {
        let now = crate::time::parse_iso8601_ms("2026-11-30T12:00:00Z").unwrap() as u64;
        let (base, seen) = scripted_server(|_, _| credentials_json("in an hour or so"));
        let url = format!("{base}/v2/credentials/abc");
        let chain = chain(&[("AWS_CONTAINER_CREDENTIALS_FULL_URI", &url)]);
        assert_eq!(chain.credentials(now).unwrap().expires_at_ms, None);
        chain.credentials(now + UNKNOWN_EXPIRY_LIFE_MS - 1).unwrap();
        assert_eq!(seen.lock().unwrap().len(), 1, "reused within their short life");
        chain.credentials(now + UNKNOWN_EXPIRY_LIFE_MS).unwrap();
        assert_eq!(seen.lock().unwrap().len(), 2, "fetched again once it is over, not kept for good");
    }

    #[test]
    fn environment_keys_are_kept_and_only_stale_credential_codes_forget_them() {
        let chain = chain(&[("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"), ("AWS_SECRET_ACCESS_KEY", "secret")]);
        chain.credentials(0).unwrap();
        assert!(chain.credentials(u64::MAX).is_ok());
        for code in ["AccessDenied", "NoSuchKey", "SlowDown", ""] {
            assert!(!chain.forget_if_stale_for_s3(code), "{code}");
            assert!(chain.cached.is_held(), "{code} keeps the credentials");
        }
        for code in S3_STALE_CREDENTIAL_CODES {
            chain.credentials(0).unwrap();
            assert!(chain.forget_if_stale_for_s3(code), "{code}");
            assert!(!chain.cached.is_held(), "{code} forgets the credentials");
        }
    }

    #[test]
    fn instance_metadata_is_imdsv2_a_token_then_the_role() {
        let (base, seen) = scripted_server(|request_line, _| match request_line {
            "PUT /latest/api/token HTTP/1.1" => "imds-session-token".into(),
            "GET /latest/meta-data/iam/security-credentials/ HTTP/1.1" => "app-role\n".into(),
            _ => credentials_json("2026-11-30T13:00:00Z"),
        });
        let chain = chain(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &base)]);
        let credentials = chain.credentials(0).unwrap();
        assert_eq!(credentials.access_key_id, "ASIAEXAMPLE");
        let seen = seen.lock().unwrap().clone();
        let lines: Vec<&str> = seen.iter().map(|(line, _)| line.as_str()).collect();
        assert_eq!(
            lines,
            [
                "PUT /latest/api/token HTTP/1.1",
                "GET /latest/meta-data/iam/security-credentials/ HTTP/1.1",
                "GET /latest/meta-data/iam/security-credentials/app-role HTTP/1.1"
            ]
        );
        assert!(seen[0].1.contains(&"x-aws-ec2-metadata-token-ttl-seconds: 21600".to_string()), "{:?}", seen[0].1);
        for (_, headers) in &seen[1..] {
            assert!(headers.contains(&"x-aws-ec2-metadata-token: imds-session-token".to_string()), "{headers:?}");
        }
    }

    #[test]
    fn reads_the_container_json_shape() {
        let body = br#"{"AccessKeyId":"ASIA1","SecretAccessKey":"s","Token":"t","Expiration":"2026-11-30T12:00:00Z"}"#;
        let credentials = credentials_from_json(body).unwrap();
        assert_eq!(
            credentials.expires_at_ms,
            crate::time::parse_iso8601_ms("2026-11-30T12:00:00Z").map(|ms| ms as u64)
        );
        assert!(!format!("{credentials:?}").contains("ASIA1"));
    }
}
