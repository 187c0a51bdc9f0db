//! The agent's API assembled in this test process, as `lifecycle::start` assembles it, over the
//! fixture artifact (a file source): for tests that serve through the real server code without
//! starting the executable.

use std::sync::Arc;

use clef_agent::config::Config;
use clef_agent::refresh::Refresher;
use clef_agent::server::routes::Api;
use clef_agent::snapshot::LiveSnapshot;

pub const TOKEN: &str = "in-process-test-token-0123456789";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The API over `tests/fixtures/artifacts/age-cli.json`, loaded once, in cached mode, or in JIT
/// mode with `CLEF_AGENT_CACHE_TTL` `Some("0")`.
pub fn api(cache_ttl: Option<&str>) -> Arc<Api> {
    let source = format!("{FIXTURES}/artifacts/age-cli.json");
    let key_file = format!("{FIXTURES}/keys/demo.agekey");
    let lookup = |name: &str| match name {
        "CLEF_AGENT_SOURCE" => Some(source.clone()),
        "CLEF_AGENT_AGE_KEY_FILE" => Some(key_file.clone()),
        "CLEF_AGENT_TOKEN" => Some(TOKEN.to_string()),
        "CLEF_AGENT_CACHE_TTL" => cache_ttl.map(str::to_string),
        _ => None,
    };
    let config = Config::from_env(lookup).expect("the test configuration is valid");
    let agent = clef_agent::agent::Agent::assemble(&config).expect("the fixture key loads");
    let pipeline = clef_agent::agent::pipeline(&config, agent.source, Arc::clone(&agent.keys)).expect("no cache");
    let (token, _) = clef_agent::bearer::resolve(&config.token).expect("the token is given");
    let cell = Arc::new(LiveSnapshot::new(config.mode));
    let refresher = Arc::new(Refresher::new(Arc::clone(&cell), pipeline, Default::default()));
    refresher.refresh(clef_agent::time::now_ms()).expect("the fixture artifact decrypts");
    Arc::new(Api { cell, refresher, keys: agent.keys, token })
}
