//! The AWS plumbing S3 sources and KMS envelopes share: SigV4, the credential chain (SPEC §5)
//! and the little XML AWS answers need. The environment and its endpoint overrides are
//! [`crate::cloud::Env`]'s.

pub mod credentials;
pub mod sigv4;

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
    use crate::cloud::Env;

    #[test]
    fn finds_xml_fields_and_endpoints() {
        let xml = "<Error><Code>AccessDenied</Code><Message>a &amp; b</Message></Error>";
        assert_eq!(xml_text(xml, "Code").as_deref(), Some("AccessDenied"));
        assert_eq!(xml_text(xml, "Message").as_deref(), Some("a & b"));
        assert_eq!(xml_text(xml, "RequestId"), None);
        let env =
            Env::from_pairs(&[("AWS_ENDPOINT_URL", "http://localhost:5000/"), ("AWS_DEFAULT_REGION", "eu-west-1")]);
        assert_eq!(env.aws_endpoint("S3").as_deref(), Some("http://localhost:5000"));
        assert_eq!(env.aws_region().as_deref(), Some("eu-west-1"));
    }
}
