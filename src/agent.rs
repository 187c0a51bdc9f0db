//! What every mode of the agent is built from, assembled in one place from the configuration:
//! the HTTP client, the cloud credentials, the decryption keys (age identity and KMS) and the
//! source. The daemon and the Lambda extension (`lifecycle/`) put the source behind the disk
//! cache and the rollback mark ([`pipeline`]); `check` and `exec` (`cli/`) fetch once.
//!
//! It sits between `refresh` and `server`: it builds the pipeline, and both the lifecycles and
//! the one-shot commands build on it. Nothing here starts a thread, so the listeners can still
//! be bound afterwards under a temporary umask (`server/listener.rs`).

use std::sync::Arc;

use crate::cloud::aws::credentials::CredentialChain;
use crate::cloud::Env;
use crate::config::{Config, ConfigError};
use crate::decrypt::DecryptionKeys;
use crate::disk_cache::DiskCache;
use crate::error::Fatal;
use crate::http::HttpClient;
use crate::kms::Kms;
use crate::refresh::Pipeline;
use crate::source::Source;

/// The parts every mode needs.
pub struct Agent {
    /// The process's HTTP client (bundled roots plus `SSL_CERT_FILE`).
    pub http: HttpClient,
    /// The cloud providers' variables, as their clients read them.
    pub env: Env,
    pub keys: Arc<DecryptionKeys>,
    pub source: Box<dyn Source>,
}

impl Agent {
    /// Forbids core dumps and ptrace first — whoever assembles an agent is about to hold a key
    /// and plaintext — then builds the parts. Reads the age key file; makes no network call.
    pub fn assemble(config: &Config) -> Result<Agent, Fatal> {
        forbid_core_dumps_and_ptrace();
        let http =
            HttpClient::new(config.ssl_cert_file.as_deref()).map_err(|error| ConfigError::new(error.to_string()))?;
        let env = Env::from_process();
        let credentials = Arc::new(CredentialChain::new(env.clone(), http.clone()));
        let kms = Kms::new(http.clone(), env.clone(), Arc::clone(&credentials));
        let keys = Arc::new(DecryptionKeys { age: config.load_age_identity()?, kms: Some(kms) });
        let source = crate::source::from_config(&config.source, &http, &env, &credentials).map_err(ConfigError::new)?;
        Ok(Agent { http, env, keys, source })
    }
}

/// The serving agent's pipeline: `source` behind the disk cache (`CLEF_AGENT_CACHE_PATH`),
/// with the rollback mark a previous run left. The one-shot commands never touch the cache.
pub fn pipeline(config: &Config, source: Box<dyn Source>, keys: Arc<DecryptionKeys>) -> Result<Pipeline, Fatal> {
    let cache = config.cache_path.as_deref().map(|root| DiskCache::open(root, &config.source)).transpose()?;
    let mut pipeline = Pipeline::new(source, keys, config.verify_key.clone(), cache);
    pipeline.restore_rollback_mark().map_err(ConfigError::new)?;
    Ok(pipeline)
}

/// No core dumps and no same-user ptrace (or `/proc/<pid>/mem` reads): whoever calls this is
/// about to hold plaintext secrets — the daemon, `check` and `exec` alike. After `execve` the
/// kernel makes the new program dumpable again; that is `exec`'s child, which is meant to have
/// the secrets.
pub fn forbid_core_dumps_and_ptrace() {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) changes only this process's dumpable flag.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    // No core files either: with fs.suid_dumpable=2 the kernel dumps non-dumpable processes
    // too. Only lowered when it is not 0 already (a sandbox may forbid setrlimit).
    let mut core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_CORE, &mut core) == 0 && core.rlim_cur != 0 {
            core.rlim_cur = 0;
            libc::setrlimit(libc::RLIMIT_CORE, &core);
        }
    }
}
