//! S3 objects: a SigV4-signed GET (`UNSIGNED-PAYLOAD`), the ETag as content hash and
//! `If-None-Match` so an unchanged object costs a 304. Virtual-hosted addressing on AWS
//! (path style for bucket names with dots, which a wildcard certificate cannot cover), path
//! style on a custom endpoint (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`).

use std::sync::Arc;

use super::http::{if_none_match, Get};
use super::{FetchError, Fetched, Source};
use crate::cloud::aws::credentials::CredentialChain;
use crate::cloud::aws::sigv4::{self, UNSIGNED_PAYLOAD};
use crate::cloud::aws::xml_text;
use crate::cloud::{CloudError, Env};
use crate::http::HttpClient;
use crate::url::{percent_encode, percent_encode_path, HttpUrl, S3Location};

pub struct S3Source {
    http: HttpClient,
    credentials: Arc<CredentialChain>,
    region: String,
    url: HttpUrl,
    /// `versionId` when the URL pins a version: sent in the URL and signed in the canonical query.
    version_id: Option<String>,
    description: String,
}

impl S3Source {
    pub fn new(
        http: HttpClient,
        credentials: Arc<CredentialChain>,
        env: &Env,
        location: &S3Location,
        region: String,
    ) -> Result<S3Source, CloudError> {
        let key = percent_encode_path(&location.key);
        let bucket = &location.bucket;
        let mut url = match env.aws_endpoint("S3") {
            Some(endpoint) => format!("{endpoint}/{bucket}/{key}"),
            None if bucket.contains('.') => format!("https://s3.{region}.amazonaws.com/{bucket}/{key}"),
            None => format!("https://{bucket}.s3.{region}.amazonaws.com/{key}"),
        };
        if let Some(version) = &location.version_id {
            // Encoded exactly as SigV4 encodes it in the canonical query, so what is sent is
            // what is signed.
            url = format!("{url}?versionId={}", percent_encode(version, true));
        }
        let url = HttpUrl::parse(&url).ok_or_else(|| {
            let message =
                format!("AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL: {url} is not an http:// or https:// URL with a host");
            CloudError::invalid_variable("AWS_ENDPOINT_URL_S3", message)
        })?;
        let description = location.describe();
        Ok(S3Source { http, credentials, region, url, version_id: location.version_id.clone(), description })
    }
}

impl Source for S3Source {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn fetch(&mut self, last_content_hash: Option<&str>) -> Result<Fetched, FetchError> {
        let credentials = self
            .credentials
            .credentials(crate::time::now_ms())
            .map_err(|cause| FetchError::Credentials { source: self.description.clone(), cause })?;
        let host = self.url.host_header();
        let mut headers = vec![("x-amz-content-sha256", UNSIGNED_PAYLOAD)];
        if let Some(etag) = if_none_match(last_content_hash) {
            headers.push(("If-None-Match", etag));
        }
        let version_query: Vec<(&str, &str)> =
            self.version_id.iter().map(|version| ("versionId", version.as_str())).collect();
        let request = sigv4::Request {
            method: "GET",
            host: &host,
            path: &self.url.path,
            query: &version_query,
            headers: &headers,
            payload_hash: UNSIGNED_PAYLOAD,
            service: "s3",
            region: &self.region,
        };
        let signed = sigv4::sign(&request, &credentials, &crate::time::amz_date(crate::time::now_ms() / 1000));
        let mut all: Vec<(&str, &str)> = headers.clone();
        all.extend(signed.headers.iter().map(|(name, value)| (*name, value.as_str())));
        let get = Get { http: &self.http, url: &self.url, source: &self.description, headers: &all };
        let error_code = std::cell::RefCell::new(None);
        let answer = get
            .send(|body| {
                let code = xml_text(&String::from_utf8_lossy(body), "Code");
                error_code.replace(code.clone());
                code
            })
            .inspect_err(|error| {
                // Credentials S3 refuses, or says are stale (a 400 `ExpiredToken`), are looked
                // up again on the next fetch instead of being reused until the agent restarts.
                let stale =
                    error_code.borrow().as_deref().is_some_and(|code| self.credentials.forget_if_stale_for_s3(code));
                if !stale && matches!(error, FetchError::Forbidden { .. }) {
                    self.credentials.forget();
                }
            })?;
        if answer.status == 304 {
            return Ok(Fetched::Unchanged);
        }
        let content_hash = super::http::content_hash(answer.etag, &answer.body);
        if last_content_hash == Some(content_hash.as_str()) {
            return Ok(Fetched::Unchanged);
        }
        Ok(Fetched::Content { bytes: answer.body, content_hash: Some(content_hash) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source_for(env: &[(&str, &str)], bucket: &str, key: &str, version_id: Option<&str>) -> S3Source {
        let env = Env::from_pairs(env);
        let chain = Arc::new(CredentialChain::new(env.clone(), HttpClient::default()));
        let version_id = version_id.map(str::to_string);
        let location = S3Location { bucket: bucket.into(), key: key.into(), region_in_host: None, version_id };
        S3Source::new(HttpClient::default(), chain, &env, &location, "eu-west-1".into()).unwrap()
    }

    fn url_for(env: &[(&str, &str)], bucket: &str, key: &str) -> String {
        source_for(env, bucket, key, None).url.full
    }

    #[test]
    fn a_pinned_version_is_sent_encoded_as_sigv4_signs_it() {
        let source = source_for(&[], "b", "k.json", Some("3/L4kq+rm=x"));
        assert_eq!(source.url.full, "https://b.s3.eu-west-1.amazonaws.com/k.json?versionId=3%2FL4kq%2Brm%3Dx");
        assert_eq!(source.url.path, "/k.json");
        assert_eq!(source.describe(), "s3://b/k.json?versionId=3/L4kq+rm=x");
    }

    #[test]
    fn addresses_aws_and_custom_endpoints() {
        assert_eq!(url_for(&[], "b", "k/a b.json"), "https://b.s3.eu-west-1.amazonaws.com/k/a%20b.json");
        assert_eq!(url_for(&[], "b.example", "k.json"), "https://s3.eu-west-1.amazonaws.com/b.example/k.json");
        assert_eq!(
            url_for(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:5000/")], "b", "k.json"),
            "http://127.0.0.1:5000/b/k.json"
        );
        assert_eq!(
            url_for(&[("AWS_ENDPOINT_URL", "http://x:1"), ("AWS_ENDPOINT_URL_S3", "http://y:2")], "b", "k"),
            "http://y:2/b/k"
        );
    }
}
