//! The AWS plumbing S3 sources and KMS envelopes share: the environment they read, endpoint
//! overrides, SigV4 and the credential chain (SPEC §5).

pub mod credentials;
pub mod sigv4;

use std::sync::Arc;

type Lookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// The AWS variables, read when they are used (credentials may be rotated into the environment
/// of a long-lived process only by a restart, so reading them late changes nothing else).
#[derive(Clone)]
pub struct AwsEnv {
    lookup: Arc<Lookup>,
}

impl AwsEnv {
    /// The process environment.
    pub fn from_process() -> AwsEnv {
        AwsEnv { lookup: Arc::new(|name: &str| std::env::var(name).ok()) }
    }

    /// Fixed variables, for tests.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> AwsEnv {
        let pairs: Vec<(String, String)> =
            pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        AwsEnv {
            lookup: Arc::new(move |name: &str| {
                pairs.iter().find(|(found, _)| found == name).map(|(_, value)| value.clone())
            }),
        }
    }

    /// A variable; empty counts as unset.
    pub fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|value| !value.is_empty())
    }

    /// `AWS_REGION`, then `AWS_DEFAULT_REGION`.
    pub fn region(&self) -> Option<String> {
        self.get("AWS_REGION").or_else(|| self.get("AWS_DEFAULT_REGION"))
    }

    /// `AWS_ENDPOINT_URL_<SERVICE>`, then `AWS_ENDPOINT_URL`, without a trailing `/`.
    pub fn endpoint(&self, service: &str) -> Option<String> {
        self.get(&format!("AWS_ENDPOINT_URL_{service}"))
            .or_else(|| self.get("AWS_ENDPOINT_URL"))
            .map(|url| url.trim_end_matches('/').to_string())
    }
}

/// The text of the first `<tag>…</tag>` in an AWS XML answer, entities decoded. AWS answers
/// are flat enough that this is all the XML the agent needs.
pub fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(
        xml[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_xml_fields_and_endpoints() {
        let xml = "<Error><Code>AccessDenied</Code><Message>a &amp; b</Message></Error>";
        assert_eq!(xml_text(xml, "Code").as_deref(), Some("AccessDenied"));
        assert_eq!(xml_text(xml, "Message").as_deref(), Some("a & b"));
        assert_eq!(xml_text(xml, "RequestId"), None);
        let env =
            AwsEnv::from_pairs(&[("AWS_ENDPOINT_URL", "http://localhost:5000/"), ("AWS_DEFAULT_REGION", "eu-west-1")]);
        assert_eq!(env.endpoint("S3").as_deref(), Some("http://localhost:5000"));
        assert_eq!(env.region().as_deref(), Some("eu-west-1"));
    }
}
