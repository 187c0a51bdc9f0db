//! Environment lookups for the cloud clients, and the endpoint overrides each cloud documents
//! (or the agent adds, for private endpoints and test doubles), with their defaults.

use std::sync::Arc;

type Lookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// The process environment as the cloud clients read it (SPEC §5: the AWS, GCP and Azure
/// variables are read where those clouds are used), or fixed variables in tests.
#[derive(Clone)]
pub struct Env {
    lookup: Arc<Lookup>,
}

impl Env {
    /// The process environment.
    pub fn from_process() -> Env {
        Env { lookup: Arc::new(|name: &str| std::env::var(name).ok()) }
    }

    /// Fixed variables, for tests.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Env {
        let pairs: Vec<(String, String)> =
            pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        Env {
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
    pub fn aws_region(&self) -> Option<String> {
        self.get("AWS_REGION").or_else(|| self.get("AWS_DEFAULT_REGION"))
    }

    /// `AWS_ENDPOINT_URL_<SERVICE>`, then `AWS_ENDPOINT_URL`, without a trailing `/`.
    pub fn aws_endpoint(&self, service: &str) -> Option<String> {
        self.get(&format!("AWS_ENDPOINT_URL_{service}"))
            .or_else(|| self.get("AWS_ENDPOINT_URL"))
            .map(|url| url.trim_end_matches('/').to_string())
    }

    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else the IPv4 instance metadata address.
    pub fn aws_imds_endpoint(&self) -> String {
        self.get("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or_else(|| "http://169.254.169.254".into())
    }

    /// `CLEF_AGENT_GCP_KMS_ENDPOINT`, else Cloud KMS.
    pub fn gcp_kms_endpoint(&self) -> String {
        self.get("CLEF_AGENT_GCP_KMS_ENDPOINT").unwrap_or_else(|| "https://cloudkms.googleapis.com".into())
    }

    /// `GCE_METADATA_HOST` (`host[:port]`), else the GCE metadata server.
    pub fn gce_metadata_host(&self) -> String {
        self.get("GCE_METADATA_HOST").unwrap_or_else(|| "metadata.google.internal".into())
    }

    /// `AZURE_AUTHORITY_HOST`, else Microsoft Entra ID's public cloud.
    pub fn azure_authority_host(&self) -> String {
        self.get("AZURE_AUTHORITY_HOST").unwrap_or_else(|| "https://login.microsoftonline.com".into())
    }

    /// `CLEF_AGENT_AZURE_IMDS_ENDPOINT`, else the IPv4 instance metadata address.
    pub fn azure_imds_endpoint(&self) -> String {
        self.get("CLEF_AGENT_AZURE_IMDS_ENDPOINT").unwrap_or_else(|| "http://169.254.169.254".into())
    }
}
