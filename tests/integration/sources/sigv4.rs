//! The Rust SigV4 signer against botocore's, byte for byte: for each fixed request (S3 GETs of
//! keys with spaces, UTF-8 and reserved characters, virtual-hosted and path style, with and
//! without a session token, across regions; KMS `Decrypt` POSTs with a JSON body; header values
//! with runs of spaces and tabs), `clef_agent::cloud::aws::sigv4::sign` and `tests/aws/botocore_sign.py`
//! (botocore's `S3SigV4Auth` / `SigV4Auth.add_auth`, its clock stopped at the same instant)
//! must produce the same encoded path, canonical request, string to sign, signature,
//! `Authorization` header and `X-Amz-*` headers.

use std::io::Write;
use std::process::{Command, Stdio};

use clef_agent::cloud::aws::credentials::Credentials;
use clef_agent::cloud::aws::sigv4::{sign, Request, Signed, UNSIGNED_PAYLOAD};
use clef_agent::secret::sha256_hex;
use clef_agent::secret::Secret;
use clef_agent::url::percent_encode_path;
use serde_json::{json, Value};

use super::s3::{aws_script, venv_tool};

/// AWS's documentation example keys (not secrets).
const DOC_ACCESS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const DOC_SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
/// A session token shaped like STS's: base64 with `/`, `+` and `=`.
const SESSION_TOKEN: &str =
    "FQoGZXIvYXdzEBYaDclefItSessionToken/+Zm9vYmFyYmF6cXV4+c2lnbmVk/dG9rZW4gZm9yIHRlc3Rz/xyz0123456789==";

/// What is signed, as the S3 source builds it or as a JSON-protocol service is called.
enum Target {
    /// An S3 object: the path is `prefix` then the key encoded by [`percent_encode_path`] (Rust) and by
    /// botocore's S3 serializer (Python).
    S3 { prefix: &'static str, key: &'static str },
    /// Any other service: the path as sent, SigV4Auth (not S3SigV4Auth).
    Service { path: &'static str },
}

struct Case {
    name: &'static str,
    target: Target,
    method: &'static str,
    scheme: &'static str,
    host: &'static str,
    query: Vec<(&'static str, &'static str)>,
    headers: Vec<(&'static str, String)>,
    body: &'static str,
    payload_hash: String,
    service: &'static str,
    region: &'static str,
    access_key_id: &'static str,
    secret_access_key: &'static str,
    session_token: Option<&'static str>,
    amz_date: &'static str,
}

impl Case {
    /// An S3 GET as `S3Source` signs it: `x-amz-content-sha256: UNSIGNED-PAYLOAD`, `extra`
    /// headers after it.
    fn s3_get(name: &'static str, host: &'static str, prefix: &'static str, key: &'static str) -> Case {
        Case {
            name,
            target: Target::S3 { prefix, key },
            method: "GET",
            scheme: "https",
            host,
            query: Vec::new(),
            headers: vec![("x-amz-content-sha256", UNSIGNED_PAYLOAD.to_string())],
            body: "",
            payload_hash: UNSIGNED_PAYLOAD.to_string(),
            service: "s3",
            region: "us-east-1",
            access_key_id: "AKIDCLEFITEXAMPLE001",
            secret_access_key: "clefItSecretAccessKey/+Example0123456789ab",
            session_token: None,
            amz_date: "20261130T012719Z",
        }
    }

    /// A KMS `Decrypt` call: a JSON body, its SHA-256 as the payload hash.
    fn kms_decrypt(name: &'static str, region: &'static str, body: &'static str) -> Case {
        let host = match region {
            "eu-central-1" => "kms.eu-central-1.amazonaws.com",
            "us-west-2" => "kms.us-west-2.amazonaws.com",
            other => panic!("no KMS host written down for {other}"),
        };
        Case {
            name,
            target: Target::Service { path: "/" },
            method: "POST",
            scheme: "https",
            host,
            query: Vec::new(),
            headers: vec![
                ("Content-Type", "application/x-amz-json-1.1".to_string()),
                ("X-Amz-Target", "TrentService.Decrypt".to_string()),
            ],
            body,
            payload_hash: sha256_hex(body.as_bytes()),
            service: "kms",
            region,
            access_key_id: "AKIDCLEFITEXAMPLE002",
            secret_access_key: "clefItKmsSecretAccessKey/Example+0123456789",
            session_token: None,
            amz_date: "20240229T235959Z",
        }
    }

    fn with_token(mut self) -> Case {
        self.session_token = Some(SESSION_TOKEN);
        self
    }

    fn in_region(mut self, region: &'static str) -> Case {
        self.region = region;
        self
    }

    fn with_query(mut self, query: &[(&'static str, &'static str)]) -> Case {
        self.query = query.to_vec();
        self
    }

    fn with_header(mut self, name: &'static str, value: &str) -> Case {
        self.headers.push((name, value.to_string()));
        self
    }

    /// The encoded path the Rust side sends and signs.
    fn path(&self) -> String {
        match self.target {
            Target::S3 { prefix, key } => format!("{prefix}{}", percent_encode_path(key)),
            Target::Service { path } => path.to_string(),
        }
    }

    fn credentials(&self) -> Credentials {
        Credentials {
            access_key_id: self.access_key_id.to_string(),
            secret_access_key: Secret::new(self.secret_access_key.to_string()),
            session_token: self.session_token.map(|token| Secret::new(token.to_string())),
            expires_at_ms: None,
        }
    }

    fn sign(&self) -> Signed {
        let path = self.path();
        let headers: Vec<(&str, &str)> = self.headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
        let request = Request {
            method: self.method,
            host: self.host,
            path: &path,
            query: &self.query,
            headers: &headers,
            payload_hash: &self.payload_hash,
            service: self.service,
            region: self.region,
        };
        sign(&request, &self.credentials(), self.amz_date)
    }

    /// The case as `botocore_sign.py` reads it.
    fn to_json(&self) -> Value {
        let mut case = json!({
            "name": self.name,
            "method": self.method,
            "scheme": self.scheme,
            "host": self.host,
            "query": self.query,
            "headers": self.headers,
            "body": self.body,
            "payload_hash": self.payload_hash,
            "service": self.service,
            "region": self.region,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "session_token": self.session_token,
            "amz_date": self.amz_date,
        });
        match self.target {
            Target::S3 { prefix, key } => {
                case["signer"] = json!("s3");
                case["path_prefix"] = json!(prefix);
                case["key"] = json!(key);
            }
            Target::Service { path } => {
                case["signer"] = json!("sigv4");
                case["path"] = json!(path);
            }
        }
        case
    }
}

fn cases() -> Vec<Case> {
    let quoted_etag = "\"5d41402abc4b2a76b9719d911017c592\"";
    let mut documented =
        Case::s3_get("AWS documentation: GET object", "examplebucket.s3.amazonaws.com", "/", "test.txt");
    let empty = sha256_hex(b"");
    documented.headers = vec![("Range", "bytes=0-9".to_string()), ("x-amz-content-sha256", empty.clone())];
    documented.payload_hash = empty;
    documented.access_key_id = DOC_ACCESS_KEY_ID;
    documented.secret_access_key = DOC_SECRET_ACCESS_KEY;
    documented.amz_date = "20130524T000000Z";
    let mut moto_like = Case::s3_get(
        "path style on a custom endpoint with a port",
        "127.0.0.1:5000",
        "/clef-artifacts/",
        "dir/my file é.json",
    );
    moto_like.scheme = "http";
    vec![
        documented,
        Case::s3_get(
            "virtual-hosted, key with spaces and UTF-8",
            "clef-artifacts.s3.eu-west-1.amazonaws.com",
            "/",
            "dir/my file é.json",
        )
        .in_region("eu-west-1"),
        Case::s3_get(
            "virtual-hosted, session token, If-None-Match",
            "clef-artifacts.s3.us-east-1.amazonaws.com",
            "/",
            "dir/my file é.json",
        )
        .with_token()
        .with_header("If-None-Match", quoted_etag),
        Case::s3_get(
            "path style (bucket with dots), reserved characters",
            "s3.ap-southeast-2.amazonaws.com",
            "/clef.artifacts.example/",
            "a+b=c&d/(1)!*'~ @#$,;:[]{}.json",
        )
        .in_region("ap-southeast-2")
        .with_token(),
        Case::s3_get(
            "CJK key, a literal percent sign, no path normalisation",
            "clef-artifacts.s3.cn-north-1.amazonaws.com.cn",
            "/",
            "日本語/キー 100%/./a//b/../c.age.json",
        )
        .in_region("cn-north-1"),
        moto_like.with_token(),
        Case::s3_get(
            "header values with runs of spaces and tabs",
            "clef-artifacts.s3.amazonaws.com",
            "/",
            "prod.age.json",
        )
        .with_header("X-Amz-Meta-Comment", "  several   spaces\tand\t\ttabs   inside  ")
        .with_header("Range", " bytes=0-1023 ")
        .with_header("If-None-Match", &format!("  {quoted_etag}  ")),
        Case::s3_get(
            "query parameters that need encoding, sorted",
            "clef-artifacts.s3.us-west-2.amazonaws.com",
            "/",
            "prod.age.json",
        )
        .in_region("us-west-2")
        .with_query(&[
            ("versionId", "3/L4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY+MTRCxf3vjVBH40Nr8X8gdRQBpUMLUo"),
            ("response-content-type", "application/json; charset=utf-8"),
            ("response-cache-control", "no-cache"),
        ]),
        Case::kms_decrypt(
            "KMS Decrypt, JSON body",
            "eu-central-1",
            concat!(
                r#"{"CiphertextBlob":"AQICAHh7clefItCiphertext+/Blob==","EncryptionAlgorithm":"SYMMETRIC_DEFAULT","#,
                r#""KeyId":"arn:aws:kms:eu-central-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"}"#
            ),
        ),
        Case::kms_decrypt(
            "KMS Decrypt, session token, UTF-8 in the body",
            "us-west-2",
            r#"{"CiphertextBlob":"AQICAHh7clefItCiphertextBlob2==","EncryptionContext":{"app":"café payments"}}"#,
        )
        .with_token(),
    ]
}

/// Runs `botocore_sign.py` on every case; one result per case, in order.
fn botocore_results(cases: &[Case]) -> Vec<Value> {
    let input = Value::Array(cases.iter().map(Case::to_json).collect()).to_string();
    let mut child = Command::new(venv_tool("python"))
        .arg(aws_script("botocore_sign.py"))
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run botocore_sign.py");
    child.stdin.take().expect("piped stdin").write_all(input.as_bytes()).expect("cannot write the cases");
    let output = child.wait_with_output().expect("botocore_sign.py did not finish");
    assert!(
        output.status.success(),
        "botocore_sign.py failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&output.stdout).expect("botocore_sign.py prints a JSON array");
    assert_eq!(results.len(), cases.len());
    results
}

fn text<'a>(result: &'a Value, field: &str) -> &'a str {
    result[field].as_str().unwrap_or_else(|| panic!("no {field} in {result}"))
}

fn header<'a>(signed: &'a Signed, name: &str) -> Option<&'a str> {
    signed.headers.iter().find(|(found, _)| *found == name).map(|(_, value)| value.as_str())
}

#[test]
fn signs_like_botocore_byte_for_byte() {
    let cases = cases();
    let references = botocore_results(&cases);
    for (case, reference) in cases.iter().zip(&references) {
        let name = case.name;
        let signed = case.sign();
        assert_eq!(case.path(), text(reference, "path"), "{name}: the encoded path");
        assert_eq!(signed.canonical_request, text(reference, "canonical_request"), "{name}: the canonical request");
        assert_eq!(signed.string_to_sign, text(reference, "string_to_sign"), "{name}: the string to sign");
        assert_eq!(signed.signature, text(reference, "signature"), "{name}: the signature");
        assert_eq!(header(&signed, "Authorization"), Some(text(reference, "authorization")), "{name}: Authorization");
        let added = &reference["headers"];
        assert_eq!(header(&signed, "X-Amz-Date"), added["X-Amz-Date"].as_str(), "{name}: X-Amz-Date");
        assert_eq!(
            header(&signed, "X-Amz-Security-Token"),
            added["X-Amz-Security-Token"].as_str(),
            "{name}: X-Amz-Security-Token"
        );
        assert_eq!(signed.headers.len(), 2 + usize::from(case.session_token.is_some()), "{name}: {:?}", signed.headers);
        if let Target::Service { .. } = case.target {
            let payload_hash = signed.canonical_request.lines().last().unwrap_or_default();
            assert_eq!(payload_hash, sha256_hex(case.body.as_bytes()), "{name}: the payload hash");
        }
        // botocore's S3 signer sets X-Amz-Content-SHA256 itself; the S3 source sends it.
        let content_sha256 = case.headers.iter().find(|(name, _)| name.eq_ignore_ascii_case("x-amz-content-sha256"));
        assert_eq!(
            content_sha256.map(|(_, value)| value.as_str()),
            added["X-Amz-Content-SHA256"].as_str(),
            "{name}: X-Amz-Content-SHA256"
        );
    }
    // The comparison is with a signer that gets AWS's own example right.
    assert_eq!(text(&references[0], "signature"), "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
    // Every case signs something different.
    let mut signatures: Vec<&str> = references.iter().map(|reference| text(reference, "signature")).collect();
    signatures.sort_unstable();
    signatures.dedup();
    assert_eq!(signatures.len(), cases.len());
}
