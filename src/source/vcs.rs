//! Artifacts committed to a repository, read through the provider's REST API:
//!
//! * GitHub contents API — `GET <api>/repos/<repo>/contents/<path>?ref=`; the JSON carries the
//!   file base64-encoded (with newlines) and its blob `sha`; files over 1 MB come back without
//!   content and are fetched again with `Accept: application/vnd.github.raw`.
//! * GitLab repository files API — `GET <api>/api/v4/projects/<repo>/repository/files/<path>?ref=`
//!   with both names URL-encoded, `ref` defaulting to `HEAD`; `blob_id` is the hash.
//! * Bitbucket src API — `GET <api>/2.0/repositories/<repo>/src/<ref>/<path>?format=meta` for the
//!   commit hash, then the raw file at that commit; `ref` defaults to `main`.
//!
//! The blob SHA or commit hash is the content hash, so an unchanged file is not decoded again.
//! GitHub polls are conditional: the `ETag` of the contents answer that carried the accepted
//! blob goes back as `If-None-Match`, and GitHub's `304` (no body, and by GitHub's REST
//! documentation not counted against the primary rate limit) means "unchanged". Neither
//! GitLab's repository files API nor Bitbucket's src API documents conditional requests, so
//! they keep their plain GETs (Bitbucket's `?format=meta` already costs only a small JSON).

use base64::Engine;
use serde_json::Value;

use super::http::{Answer, Get};
use super::{FetchError, Fetched, Source};
use crate::config::{VcsConfig, VcsProvider};
use crate::http::HttpClient;
use crate::secret::Secret;
use crate::url::{percent_encode, HttpUrl};

const GITHUB_API: &str = "https://api.github.com";
const GITLAB_API: &str = "https://gitlab.com";
const BITBUCKET_API: &str = "https://api.bitbucket.org";
const GITHUB_API_VERSION: &str = "2022-11-28";

pub struct VcsSource {
    http: HttpClient,
    provider: VcsProvider,
    /// Base URL without a trailing `/`; a path prefix (GitHub Enterprise `/api/v3`) is kept.
    api: String,
    repo: String,
    path: String,
    reference: Option<String>,
    token: Secret,
    description: String,
    /// GitHub's `ETag` for the contents answer that named this blob `sha`: `(etag, sha)`.
    github_etag: Option<(String, String)>,
}

impl VcsSource {
    pub fn new(http: HttpClient, config: &VcsConfig) -> VcsSource {
        let api = match &config.api_url {
            Some(url) => url.full.trim_end_matches('/').to_string(),
            None => match config.provider {
                VcsProvider::GitHub => GITHUB_API,
                VcsProvider::GitLab => GITLAB_API,
                VcsProvider::Bitbucket => BITBUCKET_API,
            }
            .to_string(),
        };
        VcsSource {
            http,
            provider: config.provider,
            api,
            repo: config.repo.clone(),
            path: config.path(),
            reference: config.reference.clone(),
            token: config.token.clone(),
            description: crate::config::SourceConfig::Vcs(config.clone()).describe(),
            github_etag: None,
        }
    }

    fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Answer, FetchError> {
        let url = HttpUrl::parse(url).ok_or_else(|| FetchError::Network {
            source: self.description.clone(),
            detail: "CLEF_AGENT_VCS_API_URL does not make a valid URL".into(),
        })?;
        let get = Get { http: &self.http, url: &url, source: &self.description, headers };
        get.send(|body| {
            // Providers explain refusals in a `message` (GitHub, GitLab) or `error.message`
            // (Bitbucket) field: "Bad credentials", "404 File Not Found", rate limits.
            let value: Value = serde_json::from_slice(body).ok()?;
            let message = value.get("message").or_else(|| value.get("error").and_then(|error| error.get("message")));
            message.and_then(Value::as_str).map(|text| text.chars().take(200).collect())
        })
    }

    fn github(&mut self, last: Option<&str>) -> Result<Fetched, FetchError> {
        let mut url = format!("{}/repos/{}/contents/{}", self.api, self.repo, percent_encode(&self.path, false));
        if let Some(reference) = &self.reference {
            url.push_str(&format!("?ref={}", percent_encode(reference, true)));
        }
        let bearer = format!("Bearer {}", self.token.expose());
        let headers = |accept| {
            [("Authorization", bearer.as_str()), ("Accept", accept), ("X-GitHub-Api-Version", GITHUB_API_VERSION)]
        };
        // Only the ETag that came with the accepted blob may be sent: a 304 to an ETag of a
        // blob that was fetched but refused would keep the refused one "unchanged" for ever.
        let condition = self.github_etag.as_ref().filter(|(_, sha)| last == Some(sha.as_str()));
        let mut json_headers = headers("application/vnd.github+json").to_vec();
        if let Some((etag, _)) = condition {
            json_headers.push(("If-None-Match", etag.as_str()));
        }
        let answer = self.get(&url, &json_headers)?;
        if answer.status == 304 {
            if condition.is_none() {
                return Err(self.unexpected("304 Not Modified to a request that was not conditional"));
            }
            return Ok(Fetched::Unchanged);
        }
        let meta = self.json(&answer.body)?;
        let sha = self.field(&meta, &["sha"])?;
        self.github_etag = answer.etag.map(|etag| (etag, sha.clone()));
        if last == Some(sha.as_str()) {
            return Ok(Fetched::Unchanged);
        }
        let encoding = meta.get("encoding").and_then(Value::as_str).unwrap_or_default();
        let bytes = match meta.get("content").and_then(Value::as_str) {
            Some(content) if encoding == "base64" && !content.is_empty() => self.base64(content)?,
            // Over 1 MB: no content in the JSON; the raw media type returns the file itself.
            _ => self.get(&url, &headers("application/vnd.github.raw"))?.body,
        };
        Ok(Fetched::Content { bytes, content_hash: Some(sha) })
    }

    fn gitlab(&self, last: Option<&str>) -> Result<Fetched, FetchError> {
        let reference = self.reference.as_deref().unwrap_or("HEAD");
        let url = format!(
            "{}/api/v4/projects/{}/repository/files/{}?ref={}",
            self.api,
            percent_encode(&self.repo, true),
            percent_encode(&self.path, true),
            percent_encode(reference, true)
        );
        let answer = self.get(&url, &[("PRIVATE-TOKEN", self.token.expose())])?;
        let meta = self.json(&answer.body)?;
        let blob_id = self.field(&meta, &["blob_id"])?;
        if last == Some(blob_id.as_str()) {
            return Ok(Fetched::Unchanged);
        }
        let bytes = self.base64(&self.field(&meta, &["content"])?)?;
        Ok(Fetched::Content { bytes, content_hash: Some(blob_id) })
    }

    fn bitbucket(&self, last: Option<&str>) -> Result<Fetched, FetchError> {
        let reference = self.reference.as_deref().unwrap_or("main");
        let bearer = format!("Bearer {}", self.token.expose());
        let headers = [("Authorization", bearer.as_str())];
        let src = |at: &str| {
            format!(
                "{}/2.0/repositories/{}/src/{}/{}",
                self.api,
                self.repo,
                percent_encode(at, true),
                percent_encode(&self.path, false)
            )
        };
        let meta = self.get(&format!("{}?format=meta", src(reference)), &headers)?;
        let hash = self.field(&self.json(&meta.body)?, &["commit", "hash"])?;
        if last == Some(hash.as_str()) {
            return Ok(Fetched::Unchanged);
        }
        // The file at the commit just resolved, not at the ref, which may have moved since.
        let bytes = self.get(&src(&hash), &headers)?.body;
        Ok(Fetched::Content { bytes, content_hash: Some(hash) })
    }

    fn json(&self, body: &[u8]) -> Result<Value, FetchError> {
        serde_json::from_slice(body).map_err(|_| self.unexpected("an answer that is not JSON"))
    }

    /// The string at `path` in `value`.
    fn field(&self, value: &Value, path: &[&str]) -> Result<String, FetchError> {
        let found = path.iter().try_fold(value, |value, name| value.get(name));
        found
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| self.unexpected(&format!("an answer without \"{}\"", path.join("."))))
    }

    /// Base64 as the APIs write it: standard alphabet, padded, wrapped with newlines.
    fn base64(&self, content: &str) -> Result<Vec<u8>, FetchError> {
        let compact: String = content.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|_| self.unexpected("file content that is not valid base64"))
    }

    fn unexpected(&self, what: &str) -> FetchError {
        FetchError::Network {
            source: self.description.clone(),
            detail: format!(
                "the {} API sent {what}; check CLEF_AGENT_VCS_API_URL",
                match self.provider {
                    VcsProvider::GitHub => "GitHub",
                    VcsProvider::GitLab => "GitLab",
                    VcsProvider::Bitbucket => "Bitbucket",
                }
            ),
        }
    }
}

impl Source for VcsSource {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn fetch(&mut self, last_content_hash: Option<&str>) -> Result<Fetched, FetchError> {
        match self.provider {
            VcsProvider::GitHub => self.github(last_content_hash),
            VcsProvider::GitLab => self.gitlab(last_content_hash),
            VcsProvider::Bitbucket => self.bitbucket(last_content_hash),
        }
    }
}
