//! OAuth access tokens as the GCP and Azure credential chains get them: the token answer, and
//! keeping a token until shortly before it expires.

use super::expiring::Expiring;
use super::CloudError;
use crate::secret::Secret;

/// A token is renewed this long before its stated expiry.
const RENEW_BEFORE_MS: u64 = 60 * 1000;

/// A fetched token and how long it is valid.
pub struct Fetched {
    pub token: Secret,
    pub lifetime_seconds: u64,
}

/// The bearer tokens of one service's credential chain (GCP, Azure), held until a minute before
/// they expire.
pub trait TokenChain: Send + Sync {
    /// A token valid at `now_ms`, held or newly fetched.
    fn token(&self, now_ms: u64) -> Result<Secret, CloudError>;
    /// Drops the held token (the service refused it).
    fn forget(&self);
}

/// The token `cache` holds while it has more than a minute left, else a new one from `fetch`.
pub fn held_token(
    cache: &Expiring<Secret>,
    now_ms: u64,
    fetch: impl FnOnce() -> Result<Fetched, CloudError>,
) -> Result<Secret, CloudError> {
    cache.get(now_ms, || {
        let fetched = fetch()?;
        let expires_at_ms = now_ms.saturating_add(fetched.lifetime_seconds.saturating_mul(1000));
        Ok((fetched.token, Some(expires_at_ms.saturating_sub(RENEW_BEFORE_MS))))
    })
}

/// The lifetime of an OAuth token answer: `expires_in` (a number or, from some Azure
/// endpoints, a string) or `expires_on` (epoch seconds, as a string); an hour when neither.
pub fn lifetime_seconds(answer: &serde_json::Value, now_ms: u64) -> u64 {
    let number =
        |value: &serde_json::Value| value.as_u64().or_else(|| value.as_str().and_then(|text| text.parse().ok()));
    if let Some(seconds) = answer.get("expires_in").and_then(number) {
        return seconds;
    }
    if let Some(epoch) = answer.get("expires_on").and_then(number) {
        return epoch.saturating_sub(now_ms / 1000);
    }
    3600
}

/// The `access_token` of an OAuth answer with its lifetime, or the endpoint's explanation.
pub fn from_answer(status: u16, body: &[u8], now_ms: u64, what: &str) -> Result<Fetched, CloudError> {
    if status != 200 {
        let answer = serde_json::from_slice::<serde_json::Value>(body).ok();
        let text = |name: &str| {
            answer.as_ref().and_then(|value| value.get(name)).and_then(|field| field.as_str()).map(str::to_string)
        };
        let explanation = text("error_description").or_else(|| text("error")).or_else(|| text("message"));
        let explanation = explanation.map(|text| text.chars().take(300).collect::<String>()).unwrap_or_default();
        let code = text("error").unwrap_or_default();
        return Err(CloudError::status(what, status, &code, format!(" {explanation}").trim_end().to_string()));
    }
    let lifetime =
        serde_json::from_slice::<serde_json::Value>(body).map(|value| lifetime_seconds(&value, now_ms)).unwrap_or(3600);
    let token = super::take_secret_field(body, "access_token")
        .ok_or_else(|| CloudError::malformed(format!("{what} answered without an access_token")))?;
    Ok(Fetched { token: Secret::new(token.to_string()), lifetime_seconds: lifetime })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_a_token_until_a_minute_before_it_expires() {
        let cache = Expiring::default();
        let fetch = |name: &str| {
            let name = name.to_string();
            move || Ok(Fetched { token: Secret::new(name), lifetime_seconds: 120 })
        };
        assert_eq!(held_token(&cache, 0, fetch("a")).unwrap().expose(), "a");
        assert_eq!(held_token(&cache, 59_000, fetch("b")).unwrap().expose(), "a");
        assert_eq!(held_token(&cache, 60_000, fetch("c")).unwrap().expose(), "c");
        cache.forget();
        assert_eq!(held_token(&cache, 60_001, fetch("d")).unwrap().expose(), "d");
    }

    #[test]
    fn reads_lifetimes_and_errors_of_oauth_answers() {
        let now = 1_000_000_000_000;
        assert_eq!(lifetime_seconds(&serde_json::json!({"expires_in": 3599}), now), 3599);
        assert_eq!(lifetime_seconds(&serde_json::json!({"expires_in": "86399"}), now), 86399);
        assert_eq!(lifetime_seconds(&serde_json::json!({"expires_on": "1000000600"}), now), 600);
        let error = from_answer(
            400,
            br#"{"error":"invalid_grant","error_description":"Bad refresh"}"#,
            now,
            "the token endpoint",
        );
        assert_eq!(
            error.err().map(|error| error.to_string()).as_deref(),
            Some("the token endpoint answered HTTP 400 Bad refresh")
        );
        let fetched = from_answer(200, br#"{"access_token":"ya29.x","expires_in":3599}"#, now, "t").unwrap();
        assert_eq!((fetched.token.expose(), fetched.lifetime_seconds), ("ya29.x", 3599));
    }
}
