//! `envelope.keyId` comes from the artifact, which is not signed unless a verify key is set and
//! may have been written by anyone who can write the source. The key id decides where the
//! agent sends its cloud credentials (the Key Vault URL, the AWS region in the KMS host name, the
//! Cloud KMS URL path), so each provider's key id is checked here, before any call, against the
//! shape that provider documents; nothing else reaches a KMS client. A key id that does not pass
//! is refused as a configuration-class failure: retrying the same artifact cannot fix it.

use std::fmt;

/// A key id refused before any call: what the provider accepts, and what was found (quoted,
/// shortened, with the reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIdError {
    pub expected: &'static str,
    pub found: String,
}

impl fmt::Display for KeyIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field 'envelope.keyId' must be {}, found {}", self.expected, self.found)
    }
}

impl std::error::Error for KeyIdError {}

pub const AZURE_EXPECTED: &str = "an https:// Key Vault or Managed HSM key URL for provider azure, \
    https://<name>.<vault.azure.net|managedhsm.azure.net|vault.azure.cn|managedhsm.azure.cn|vault.usgovcloudapi.net|\
    managedhsm.usgovcloudapi.net|vault.microsoftazure.de>/keys/<key>[/<version>]";
pub const AWS_EXPECTED: &str = "an AWS KMS key for provider aws: \
    arn:<aws|aws-cn|aws-us-gov|aws-iso|aws-iso-b|aws-iso-e|aws-iso-f|aws-eusc>:kms:<region>:<12-digit account>:key/<key id> \
    or ...:alias/<name>, or a bare key id or alias/<name> (region from AWS_REGION)";
pub const GCP_EXPECTED: &str = "a Cloud KMS key name for provider gcp, \
    projects/<project>/locations/<location>/keyRings/<ring>/cryptoKeys/<key>[/cryptoKeyVersions/<version>]";

/// The Key Vault and Managed HSM DNS suffixes of Azure's public and sovereign clouds.
const AZURE_KEY_HOST_SUFFIXES: [&str; 7] = [
    "vault.azure.net",
    "managedhsm.azure.net",
    "vault.azure.cn",
    "managedhsm.azure.cn",
    "vault.usgovcloudapi.net",
    "managedhsm.usgovcloudapi.net",
    "vault.microsoftazure.de",
];

/// The AWS partitions with a KMS, and the DNS suffix of their regional endpoints.
const AWS_PARTITIONS: [(&str, &str); 8] = [
    ("aws", "amazonaws.com"),
    ("aws-cn", "amazonaws.com.cn"),
    ("aws-us-gov", "amazonaws.com"),
    ("aws-iso", "c2s.ic.gov"),
    ("aws-iso-b", "sc2s.sgov.gov"),
    ("aws-iso-e", "cloud.adc-e.uk"),
    ("aws-iso-f", "csp.hci.ic.gov"),
    ("aws-eusc", "amazonaws.eu"),
];

/// Longest key id shown in an error; a hostile one may be megabytes long.
const SHOWN_CHARS: usize = 160;

/// A Key Vault key that passed [`azure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureKey {
    /// `https://<name>.<suffix>`, lowercased.
    pub vault: String,
    /// `/keys/<name>[/<version>]`.
    pub path: String,
}

/// Where an AWS key id says its key lives: `None` for a bare key id or alias name, whose
/// region comes from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsRegion {
    pub region: String,
    /// The partition's DNS suffix (`amazonaws.com`, `amazonaws.com.cn`, ...).
    pub dns_suffix: &'static str,
}

/// Checks an Azure key id: `https://<one DNS label>.<Key Vault or Managed HSM suffix>[:443]/keys/<name>[/<version>]`.
pub fn azure(key_id: &str) -> Result<AzureKey, KeyIdError> {
    let refuse = |why: &str| refused(AZURE_EXPECTED, key_id, why);
    let rest = key_id.strip_prefix("https://").ok_or_else(|| refuse("not an https:// URL"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.strip_suffix(":443").unwrap_or(authority).to_ascii_lowercase();
    let (name, suffix) = host.split_once('.').ok_or_else(|| refuse("not a Key Vault or Managed HSM host"))?;
    if !is_dns_label(name) || !AZURE_KEY_HOST_SUFFIXES.contains(&suffix) {
        return Err(refuse("not a Key Vault or Managed HSM host"));
    }
    let segments: Vec<&str> = path.split('/').collect();
    let well_formed = matches!(segments.as_slice(), ["", "keys", _] | ["", "keys", _, _])
        && segments[2..].iter().all(|segment| is_azure_name(segment));
    if !well_formed {
        return Err(refuse("the path is not /keys/<name>[/<version>]"));
    }
    Ok(AzureKey { vault: format!("https://{host}"), path: path.to_string() })
}

/// Checks an AWS key id: a key or alias ARN, parsed strictly, or a bare key id or alias name.
pub fn aws(key_id: &str) -> Result<Option<AwsRegion>, KeyIdError> {
    let refuse = |why: &str| refused(AWS_EXPECTED, key_id, why);
    if !key_id.starts_with("arn:") {
        return if is_aws_resource(key_id) { Ok(None) } else { Err(refuse("not a key ARN, key id or alias name")) };
    }
    let parts: Vec<&str> = key_id.splitn(6, ':').collect();
    let [_, partition, service, region, account, resource] = parts.as_slice() else {
        return Err(refuse("an ARN has six ':'-separated parts"));
    };
    let dns_suffix = AWS_PARTITIONS
        .iter()
        .find(|(name, _)| name == partition)
        .map(|(_, suffix)| *suffix)
        .ok_or_else(|| refuse("unknown partition"))?;
    if *service != "kms" {
        return Err(refuse("not a KMS ARN"));
    }
    if !is_aws_region(region) {
        return Err(refuse("the region is not like eu-west-1"));
    }
    if account.len() != 12 || !account.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(refuse("the account is not 12 digits"));
    }
    if !(resource.starts_with("key/") || resource.starts_with("alias/")) || !is_aws_resource(resource) {
        return Err(refuse("the resource is not key/<key id> or alias/<name>"));
    }
    Ok(Some(AwsRegion { region: region.to_string(), dns_suffix }))
}

/// Checks a Cloud KMS key name: `projects/*/locations/*/keyRings/*/cryptoKeys/*[/cryptoKeyVersions/*]`.
pub fn gcp(key_id: &str) -> Result<(), KeyIdError> {
    let segments: Vec<&str> = key_id.split('/').collect();
    let shaped = matches!(
        segments.as_slice(),
        ["projects", _, "locations", _, "keyRings", _, "cryptoKeys", _]
            | ["projects", _, "locations", _, "keyRings", _, "cryptoKeys", _, "cryptoKeyVersions", _]
    );
    let names_safe = segments.iter().skip(1).step_by(2).all(|segment| is_gcp_name(segment));
    if shaped && names_safe {
        Ok(())
    } else {
        Err(refused(
            GCP_EXPECTED,
            key_id,
            "not a key name of that shape with names of letters, digits, '-', '_', '.', ':'",
        ))
    }
}

fn refused(expected: &'static str, key_id: &str, why: &str) -> KeyIdError {
    let mut shown: String = key_id.chars().take(SHOWN_CHARS).collect::<String>().escape_debug().collect();
    if key_id.chars().count() > SHOWN_CHARS {
        shown.push_str("...");
    }
    KeyIdError { expected, found: format!("'{shown}' ({why})") }
}

/// One DNS label: 1 to 63 letters, digits and inner dashes.
fn is_dns_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// Key Vault object names and versions: letters, digits and dashes (1 to 127).
fn is_azure_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
}

/// `^[a-z]{2,4}(-[a-z]+)+-[0-9]+$`: `eu-west-1`, `us-gov-west-1`, `eusc-de-east-1`.
fn is_aws_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    let lower = |part: &&str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_lowercase());
    match parts.as_slice() {
        [first, middle @ .., last] if !middle.is_empty() => {
            (2..=4).contains(&first.len())
                && lower(first)
                && middle.iter().all(lower)
                && !last.is_empty()
                && last.bytes().all(|byte| byte.is_ascii_digit())
        }
        _ => false,
    }
}

/// A key id (`1234abcd-...`, `mrk-...`), `key/<id>`, or an alias name `alias/<name>` as KMS
/// allows it: letters, digits, `/`, `_`, `-`, at most 256 characters, no empty or dot segment.
fn is_aws_resource(resource: &str) -> bool {
    (1..=256).contains(&resource.len())
        && resource.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'/' | b'_' | b'-'))
        && resource.split('/').all(|segment| !segment.is_empty())
}

/// A Cloud KMS resource id: letters, digits, `-`, `_`, `.`, `:` (domain-scoped projects are
/// `example.com:project`); never empty, `.` or `..`.
fn is_gcp_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name != "."
        && name != ".."
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_accepts_key_vault_and_managed_hsm_keys_of_every_azure_cloud() {
        let cases = [
            ("https://clef.vault.azure.net/keys/artifacts", "https://clef.vault.azure.net", "/keys/artifacts"),
            (
                "https://Clef-1.vault.azure.net:443/keys/a-b/0123abcd",
                "https://clef-1.vault.azure.net",
                "/keys/a-b/0123abcd",
            ),
            ("https://hsm.managedhsm.azure.net/keys/k", "https://hsm.managedhsm.azure.net", "/keys/k"),
            ("https://v.vault.azure.cn/keys/k", "https://v.vault.azure.cn", "/keys/k"),
            ("https://h.managedhsm.azure.cn/keys/k", "https://h.managedhsm.azure.cn", "/keys/k"),
            ("https://v.vault.usgovcloudapi.net/keys/k/1", "https://v.vault.usgovcloudapi.net", "/keys/k/1"),
            ("https://h.managedhsm.usgovcloudapi.net/keys/k", "https://h.managedhsm.usgovcloudapi.net", "/keys/k"),
            ("https://v.vault.microsoftazure.de/keys/k", "https://v.vault.microsoftazure.de", "/keys/k"),
        ];
        for (key_id, vault, path) in cases {
            assert_eq!(azure(key_id), Ok(AzureKey { vault: vault.into(), path: path.into() }), "{key_id}");
        }
    }

    #[test]
    fn azure_refuses_key_ids_that_would_send_the_token_elsewhere() {
        let cases = [
            ("http://clef.vault.azure.net/keys/k", "not an https:// URL"),
            ("HTTPS://clef.vault.azure.net/keys/k", "not an https:// URL"),
            ("https://127.0.0.1:8443/keys/k", "not a Key Vault or Managed HSM host"),
            ("https://vault.azure.net.evil.example/keys/k", "not a Key Vault or Managed HSM host"),
            ("https://a.b.vault.azure.net/keys/k", "not a Key Vault or Managed HSM host"),
            ("https://vault.azure.net/keys/k", "not a Key Vault or Managed HSM host"),
            ("https://evil.example@clef.vault.azure.net/keys/k", "not a Key Vault or Managed HSM host"),
            ("https://clef.vault.azure.net@evil.example/keys/k", "not a Key Vault or Managed HSM host"),
            ("https://clef.vault.azure.net:8443/keys/k", "not a Key Vault or Managed HSM host"),
            ("https://-x.vault.azure.net/keys/k", "not a Key Vault or Managed HSM host"),
            ("https://clef.vault.azure.net", "the path is not /keys/<name>[/<version>]"),
            ("https://clef.vault.azure.net/keys/", "the path is not /keys/<name>[/<version>]"),
            ("https://clef.vault.azure.net/keys/k/", "the path is not /keys/<name>[/<version>]"),
            ("https://clef.vault.azure.net/keys/../secrets/s", "the path is not /keys/<name>[/<version>]"),
            ("https://clef.vault.azure.net/keys/./k", "the path is not /keys/<name>[/<version>]"),
            ("https://clef.vault.azure.net/secrets/k", "the path is not /keys/<name>[/<version>]"),
            ("https://clef.vault.azure.net/keys/k/v/x", "the path is not /keys/<name>[/<version>]"),
            ("https://clef.vault.azure.net/keys/k?x=1", "the path is not /keys/<name>[/<version>]"),
            ("https://clef.vault.azure.net/keys/k#f", "the path is not /keys/<name>[/<version>]"),
            ("https://clef.vault.azure.net/keys/k%2f..", "the path is not /keys/<name>[/<version>]"),
        ];
        for (key_id, why) in cases {
            let error = azure(key_id).unwrap_err();
            assert_eq!(error.found, format!("'{key_id}' ({why})"), "{key_id}");
            assert_eq!(error.expected, AZURE_EXPECTED);
        }
    }

    #[test]
    fn aws_accepts_key_and_alias_arns_of_every_partition_and_bare_ids() {
        let region = |region: &str, dns_suffix| Some(AwsRegion { region: region.into(), dns_suffix });
        let cases = [
            (
                "arn:aws:kms:eu-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                region("eu-west-2", "amazonaws.com"),
            ),
            (
                "arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab",
                region("us-east-1", "amazonaws.com"),
            ),
            ("arn:aws-cn:kms:cn-north-1:111122223333:alias/app", region("cn-north-1", "amazonaws.com.cn")),
            (
                "arn:aws-us-gov:kms:us-gov-west-1:111122223333:alias/team/app_1",
                region("us-gov-west-1", "amazonaws.com"),
            ),
            ("arn:aws-iso-b:kms:us-isob-east-1:111122223333:key/k", region("us-isob-east-1", "sc2s.sgov.gov")),
            ("arn:aws-eusc:kms:eusc-de-east-1:111122223333:key/k", region("eusc-de-east-1", "amazonaws.eu")),
            ("1234abcd-12ab-34cd-56ef-1234567890ab", None),
            ("alias/app", None),
        ];
        for (key_id, expected) in cases {
            assert_eq!(aws(key_id), Ok(expected), "{key_id}");
        }
    }

    #[test]
    fn aws_refuses_arns_that_would_steer_the_kms_host() {
        let cases = [
            ("arn:aws:kms:evil.example/x:111122223333:key/k", "the region is not like eu-west-1"),
            ("arn:aws:kms:evil.example#:111122223333:key/k", "the region is not like eu-west-1"),
            ("arn:aws:kms:eu-west-1.evil.example:111122223333:key/k", "the region is not like eu-west-1"),
            ("arn:aws:kms:EU-WEST-1:111122223333:key/k", "the region is not like eu-west-1"),
            ("arn:aws:kms:eu-1:111122223333:key/k", "the region is not like eu-west-1"),
            ("arn:aws:kms::111122223333:key/k", "the region is not like eu-west-1"),
            ("arn:aws:kms:eu-west-1:1111:key/k", "the account is not 12 digits"),
            ("arn:aws:kms:eu-west-1:11112222333x:key/k", "the account is not 12 digits"),
            ("arn:evil:kms:eu-west-1:111122223333:key/k", "unknown partition"),
            ("arn:aws:s3:eu-west-1:111122223333:key/k", "not a KMS ARN"),
            ("arn:aws:kms:eu-west-1:111122223333:grant/k", "the resource is not key/<key id> or alias/<name>"),
            ("arn:aws:kms:eu-west-1:111122223333:key/", "the resource is not key/<key id> or alias/<name>"),
            ("arn:aws:kms:eu-west-1:111122223333:key/a:b", "the resource is not key/<key id> or alias/<name>"),
            ("arn:aws:kms:eu-west-1", "an ARN has six ':'-separated parts"),
            ("http://evil.example/", "not a key ARN, key id or alias name"),
            ("alias/../x", "not a key ARN, key id or alias name"),
            ("", "not a key ARN, key id or alias name"),
        ];
        for (key_id, why) in cases {
            let error = aws(key_id).unwrap_err();
            assert_eq!(error.found, format!("'{key_id}' ({why})"), "{key_id}");
        }
    }

    #[test]
    fn gcp_accepts_key_and_key_version_names() {
        for key_id in [
            "projects/clef-it/locations/global/keyRings/clef/cryptoKeys/artifacts",
            "projects/example.com:p-1/locations/europe-west1/keyRings/r_1/cryptoKeys/k-1/cryptoKeyVersions/3",
        ] {
            assert_eq!(gcp(key_id), Ok(()), "{key_id}");
        }
    }

    #[test]
    fn gcp_refuses_names_that_would_change_the_url() {
        for key_id in [
            "projects/p/locations/global/keyRings/r/cryptoKeys/../../../../../../v1/other",
            "projects/p/locations/global/keyRings/r/cryptoKeys/..",
            "projects/p/locations/global/keyRings/./cryptoKeys/k",
            "projects/p/locations/global/keyRings//cryptoKeys/k",
            "projects/p/locations/global/keyRings/r/cryptoKeys/k/extra",
            "projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1/x",
            "projects/p/locations/global/keyRings/r/cryptoKeys/k?alt=x",
            "projects/p/locations/global/keyRings/r/cryptoKeys/k#x",
            "projects/p/locations/global/keyRings/r/cryptoKeys/k%2F",
            "projects/p/locations/global/keyRings/r/cryptoKeys/k x",
            "/projects/p/locations/global/keyRings/r/cryptoKeys/k",
            "https://evil.example/projects/p/locations/global/keyRings/r/cryptoKeys/k",
            "projects/p/locations/global/keyRings/r/cryptoKeys",
        ] {
            let error = gcp(key_id).unwrap_err();
            assert!(error.found.starts_with('\''), "{key_id}");
            assert_eq!(error.expected, GCP_EXPECTED);
        }
    }

    #[test]
    fn a_refused_key_id_is_shown_short_and_escaped() {
        let error = gcp(&format!("projects/\n{}", "a".repeat(1000))).unwrap_err();
        assert!(error.found.starts_with("'projects/\\naaa"), "{}", error.found);
        assert!(error.found.len() < 300 && error.found.contains("...' ("), "{}", error.found);
        assert!(error.to_string().starts_with("field 'envelope.keyId' must be a Cloud KMS key name for provider gcp"));
    }
}
