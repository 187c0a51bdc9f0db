//! Environment lookups for the cloud clients.

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
}
