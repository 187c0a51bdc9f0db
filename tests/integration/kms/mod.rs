//! KMS envelope artifacts (SPEC §1, §5): AWS KMS against moto_server, GCP Cloud KMS and Azure
//! Key Vault against loopback servers that implement the documented token and unwrap endpoints
//! and really decrypt, and JIT mode with KMS access taken away and given back.

mod aws;
mod azure;
mod gcp;
mod loopback_kms;
