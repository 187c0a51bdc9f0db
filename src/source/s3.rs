//! S3 objects: a SigV4-signed GET (`UNSIGNED-PAYLOAD`), the ETag as content hash and
//! `If-None-Match` so an unchanged object costs a 304. Virtual-hosted addressing on AWS
//! (path style for bucket names with dots, which a wildcard certificate cannot cover), path
//! style on a custom endpoint (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`).

use std::sync::Arc;

use super::http::{if_none_match, Get};
use super::{FetchError, Fetched, Source};
use crate::aws::credentials::CredentialChain;
use crate::aws::sigv4::{self, UNSIGNED_PAYLOAD};
use crate::aws::{xml_text, Env};
use crate::http::HttpClient;
use crate::url::{HttpUrl, S3Location};

pub struct S3Source {
    http: HttpClient,
    credentials: Arc<CredentialChain>,
    region: String,
    url: HttpUrl,
    description: String,
}

impl S3Source {
    pub fn new(
        http: HttpClient,
        credentials: Arc<CredentialChain>,
        env: &Env,
        location: &S3Location,
        region: String,
    ) -> Result<S3Source, String> {
        let key = sigv4::encode_path(&location.key);
        let bucket = &location.bucket;
        let url = match env.aws_endpoint("S3") {
            Some(endpoint) => format!("{endpoint}/{bucket}/{key}"),
            None if bucket.contains('.') => format!("https://s3.{region}.amazonaws.com/{bucket}/{key}"),
            None => format!("https://{bucket}.s3.{region}.amazonaws.com/{key}"),
        };
        let url = HttpUrl::parse(&url).ok_or_else(|| {
            format!("AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL: {url} is not an http:// or https:// URL with a host")
        })?;
        let description = format!("s3://{bucket}/{}", location.key);
        Ok(S3Source { http, credentials, region, url, description })
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
            .map_err(|detail| FetchError::Credentials { source: self.description.clone(), detail })?;
        let host = self.url.host_header();
        let mut headers = vec![("x-amz-content-sha256", UNSIGNED_PAYLOAD)];
        if let Some(etag) = if_none_match(last_content_hash) {
            headers.push(("If-None-Match", etag));
        }
        let request = sigv4::Request {
            method: "GET",
            host: &host,
            path: &self.url.path,
            query: &[],
            headers: &headers,
            payload_hash: UNSIGNED_PAYLOAD,
            service: "s3",
            region: &self.region,
        };
        let signed = sigv4::sign(&request, &credentials, &crate::time::amz_date(crate::time::now_ms() / 1000));
        let mut all: Vec<(&str, &str)> = headers.clone();
        all.extend(signed.headers.iter().map(|(name, value)| (*name, value.as_str())));
        let get = Get { http: &self.http, url: &self.url, source: &self.description, headers: &all };
        let answer = get.send(|body| xml_text(&String::from_utf8_lossy(body), "Code")).inspect_err(|error| {
            // Credentials the service refuses are looked up again on the next poll.
            if matches!(error, FetchError::Forbidden { .. }) {
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

    fn url_for(env: &[(&str, &str)], bucket: &str, key: &str) -> String {
        let env = Env::from_pairs(env);
        let chain = Arc::new(CredentialChain::new(env.clone(), HttpClient::default()));
        let location = S3Location { bucket: bucket.into(), key: key.into(), region_in_host: None };
        S3Source::new(HttpClient::default(), chain, &env, &location, "eu-west-1".into()).unwrap().url.full
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
