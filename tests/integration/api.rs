//! The HTTP API of SPEC §6 over a real socket: routes, guards in their order, headers, and a
//! server that stays available to everyone while one client stalls.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::{
    build_artifact, get, now_ms, raw, request, request_without_host, Agent, ArtifactOptions, Deployment, PLAINTEXT,
    TOKEN,
};

const JSON: &str = "application/json; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
/// Every path that needs the token, one per route.
const SECRET_PATHS: [&str; 5] = [
    "/v1/secrets",
    "/v1/keys",
    "/v1/secrets/database",
    "/v1/secrets/database/DB_PASSWORD",
    "/v1/secrets/database__DB_PASSWORD",
];

/// An agent serving [`PLAINTEXT`] as revision `rev-1`, in cached mode.
fn serving(test: &str) -> (Deployment, Agent) {
    let deployment = Deployment::new(test, &build_artifact(PLAINTEXT, "rev-1", &ArtifactOptions::default()));
    let agent = deployment.start(&[]);
    (deployment, agent)
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

#[test]
fn serves_the_plaintext_byte_for_byte() {
    let (_deployment, agent) = serving("plaintext");
    let response = agent.get("/v1/secrets");
    response.assert(200, PLAINTEXT);
    assert_eq!(response.header("content-type"), Some(JSON));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
}

#[test]
fn lists_flat_key_names_in_plaintext_order() {
    let (_deployment, agent) = serving("keys");
    let response = agent.get("/v1/keys");
    response.assert(
        200,
        r#"["database__DB_URL","database__DB_PASSWORD","payments__STRIPE KEY","payments__café","payments__QUOTED"]"#,
    );
    assert_eq!(response.header("content-type"), Some(JSON));
    assert_eq!(response.header("cache-control"), Some("no-store"));
}

#[test]
fn serves_one_namespace_as_a_json_object() {
    let (_deployment, agent) = serving("namespace");
    let response = agent.get("/v1/secrets/database");
    response
        .assert(200, r#"{"DB_URL":"postgres://app:db-pass-4a1f@db.internal:5432/app","DB_PASSWORD":"db-pass-4a1f"}"#);
    assert_eq!(response.header("content-type"), Some(JSON));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    agent.get("/v1/secrets/payments").assert(
        200,
        r#"{"STRIPE KEY":"sk_live_9d8c7b6a","café":"crème-brûlée-7e3b","QUOTED":"say \"hi\"\\ now\n\u001f/ok"}"#,
    );
}

#[test]
fn serves_one_value_as_plain_text() {
    let (_deployment, agent) = serving("value");
    let response = agent.get("/v1/secrets/database/DB_PASSWORD");
    response.assert(200, "db-pass-4a1f");
    assert_eq!(response.header("content-type"), Some(TEXT));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
    // The raw value, not its JSON form.
    agent.get("/v1/secrets/payments/QUOTED").assert(200, "say \"hi\"\\ now\n\u{1f}/ok");
}

#[test]
fn serves_a_value_by_its_flat_name_from_v1_keys() {
    let (_deployment, agent) = serving("flat-name");
    let response = agent.get("/v1/secrets/database__DB_PASSWORD");
    response.assert(200, "db-pass-4a1f");
    assert_eq!(response.header("content-type"), Some(TEXT));
    agent.get("/v1/secrets/payments__QUOTED").assert(200, "say \"hi\"\\ now\n\u{1f}/ok");
}

#[test]
fn percent_decodes_names_in_the_path() {
    let (_deployment, agent) = serving("percent");
    agent.get("/v1/secrets/payments/STRIPE%20KEY").assert(200, "sk_live_9d8c7b6a");
    agent.get("/v1/secrets/payments/caf%C3%A9").assert(200, "crème-brûlée-7e3b");
    agent.get("/v1/secrets/payments/caf%c3%a9").assert(200, "crème-brûlée-7e3b");
    agent.get("/v1/secrets/payments__STRIPE%20KEY").assert(200, "sk_live_9d8c7b6a");
    agent.get("/v1/secrets/%64atabase/DB%5FPASSWORD").assert(200, "db-pass-4a1f");
}

#[test]
fn tolerates_a_trailing_slash_and_ignores_the_query_string() {
    let (_deployment, agent) = serving("slash-query");
    agent.get("/v1/secrets/").assert(200, PLAINTEXT);
    agent.get("/v1/secrets?format=env").assert(200, PLAINTEXT);
    agent.get("/v1/secrets/?format=env&x=%zz").assert(200, PLAINTEXT);
    agent.get("/v1/secrets/database/DB_PASSWORD/").assert(200, "db-pass-4a1f");
    agent.get("/v1/secrets/database/DB_PASSWORD?version=2").assert(200, "db-pass-4a1f");
    assert_eq!(agent.get("/v1/keys/?a=b").json().as_array().map(Vec::len), Some(5));
    get(agent.port(), "/v1/ready/?probe=1", &[]).assert(200, r#"{"ready":true}"#);
}

#[test]
fn answers_404_for_a_secret_that_does_not_exist() {
    let (_deployment, agent) = serving("secret-404");
    for path in [
        "/v1/secrets/nowhere",
        "/v1/secrets/database/NOPE",
        "/v1/secrets/nowhere/DB_PASSWORD",
        "/v1/secrets/database__NOPE",
        "/v1/secrets/payments/caf%C3%A9%20",
    ] {
        let response = agent.get(path);
        response.assert(404, r#"{"error":"Secret not found"}"#);
        assert_eq!(response.header("content-type"), Some(JSON), "{path}");
        assert_eq!(response.header("cache-control"), Some("no-store"), "{path}");
    }
}

#[test]
fn answers_404_json_for_an_unknown_path() {
    let (_deployment, agent) = serving("path-404");
    for path in ["/", "/v1", "/v1/", "/v2/secrets", "/v1/secret", "/v1/healthz", "/v1/secrets/a/b/c", "/v1/keys/x"] {
        let response = agent.get(path);
        response.assert(404, r#"{"error":"Not found"}"#);
        assert_eq!(response.header("content-type"), Some(JSON), "{path}");
        assert_eq!(response.header("x-content-type-options"), Some("nosniff"), "{path}");
    }
}

#[test]
fn answers_400_for_a_bad_percent_escape() {
    let (_deployment, agent) = serving("bad-escape");
    for path in ["/v1/secrets/caf%E", "/v1/secrets/database/%zz", "/v1/secrets/database__DB%"] {
        let response = agent.get(path);
        response.assert(400, r#"{"error":"Bad request","detail":"the path has an invalid percent-escape"}"#);
        assert_eq!(response.header("cache-control"), Some("no-store"), "{path}");
    }
}

#[test]
fn health_reports_mode_revision_and_last_refresh_without_a_token() {
    let before = now_ms();
    let (_deployment, agent) = serving("health");
    let response = get(agent.port(), "/v1/health", &[]);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some(JSON));
    assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
    let health = response.json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["mode"], "cached");
    assert_eq!(health["revision"], "rev-1");
    assert_eq!(health["expired"], false);
    let last_refresh_at = health["lastRefreshAt"].as_u64().expect("lastRefreshAt is epoch milliseconds");
    assert!((before..=now_ms()).contains(&last_refresh_at), "lastRefreshAt {last_refresh_at} is not the start-up");
    let body = response.text();
    for never in ["db-pass-4a1f", "sk_live_9d8c7b6a", "DB_PASSWORD", "STRIPE KEY", "database"] {
        assert!(!body.contains(never), "health names {never:?}: {body}");
    }
}

#[test]
fn ready_answers_true_without_a_token_once_loaded() {
    let (_deployment, agent) = serving("ready");
    let response = get(agent.port(), "/v1/ready", &[]);
    response.assert(200, r#"{"ready":true}"#);
    assert_eq!(response.header("content-type"), Some(JSON));
}

#[test]
fn requires_the_bearer_token_on_every_secret_path() {
    let (_deployment, agent) = serving("token");
    let wrong_authorizations = [
        None,
        Some("Bearer wrong-token".to_string()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_string()),
        Some("Bearer ".to_string()),
    ];
    for path in SECRET_PATHS {
        for authorization in &wrong_authorizations {
            let headers: Vec<(&str, &str)> =
                authorization.iter().map(|value| ("Authorization", value.as_str())).collect();
            let response = get(agent.port(), path, &headers);
            response.assert(401, r#"{"error":"Unauthorized"}"#);
            assert_eq!(response.header("www-authenticate"), Some("Bearer"), "{path} {authorization:?}");
            assert_eq!(response.header("cache-control"), Some("no-store"), "{path} {authorization:?}");
            assert_eq!(response.header("content-type"), Some(JSON), "{path} {authorization:?}");
        }
        assert_eq!(agent.get(path).status, 200, "{path} with the right token");
    }
}

#[test]
fn accepts_the_bearer_scheme_in_any_case() {
    let (_deployment, agent) = serving("scheme-case");
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let authorization = format!("{scheme} {TOKEN}");
        agent.get_with("/v1/secrets", &[("Authorization", &authorization)]).assert(200, PLAINTEXT);
    }
}

#[test]
fn rejects_requests_with_a_foreign_host_header() {
    let (_deployment, agent) = serving("foreign-host");
    let port = agent.port();
    let foreign = [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        "127.0.0.1.evil.example".to_string(),
        format!("localhost.evil.example:{port}"),
        "10.0.0.1".to_string(),
        "0.0.0.0".to_string(),
        "127.0.0.2".to_string(),
        "[::2]".to_string(),
        "127.0.0.1:notaport".to_string(),
        String::new(),
    ];
    for host in &foreign {
        for path in ["/v1/health", "/v1/ready", "/v1/secrets"] {
            let bearer = bearer();
            let response = get(port, path, &[("Host", host), ("Authorization", &bearer)]);
            response.assert(403, r#"{"error":"Forbidden: invalid Host header"}"#);
            assert_eq!(response.header("content-type"), Some(JSON), "{host:?} {path}");
        }
    }
}

#[test]
fn rejects_requests_without_a_host_header() {
    let (_deployment, agent) = serving("no-host");
    let bearer = bearer();
    for path in ["/v1/health", "/v1/secrets"] {
        let response = request_without_host(agent.port(), "GET", path, &[("Authorization", &bearer)]);
        response.assert(403, r#"{"error":"Forbidden: invalid Host header"}"#);
    }
    // HTTP/1.0 has no Host header at all.
    let answer = raw(agent.port(), b"GET /v1/health HTTP/1.0\r\n\r\n");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.0 403 ") || answer.starts_with("HTTP/1.1 403 "), "{answer}");
    assert!(answer.ends_with(r#"{"error":"Forbidden: invalid Host header"}"#), "{answer}");
}

#[test]
fn rejects_a_request_with_two_host_headers() {
    let (_deployment, agent) = serving("two-hosts");
    let bearer = bearer();
    let response = request_without_host(
        agent.port(),
        "GET",
        "/v1/secrets",
        &[("Host", "127.0.0.1"), ("Host", "evil.example"), ("Authorization", &bearer)],
    );
    response.assert(403, r#"{"error":"Forbidden: invalid Host header"}"#);
}

#[test]
fn accepts_every_loopback_host_form() {
    let (_deployment, agent) = serving("loopback-hosts");
    let port = agent.port();
    let bearer = bearer();
    for host in [
        "127.0.0.1".to_string(),
        format!("127.0.0.1:{port}"),
        "localhost".to_string(),
        format!("localhost:{port}"),
        "LOCALHOST".to_string(),
        "[::1]".to_string(),
        format!("[::1]:{port}"),
    ] {
        assert_eq!(get(port, "/v1/health", &[("Host", &host)]).status, 200, "{host}");
        get(port, "/v1/secrets", &[("Host", &host), ("Authorization", &bearer)]).assert(200, PLAINTEXT);
    }
}

#[test]
fn rejects_methods_other_than_get_and_head() {
    let (_deployment, agent) = serving("methods");
    let bearer = bearer();
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"] {
        for path in ["/v1/health", "/v1/ready", "/v1/secrets", "/v1/secrets/database/DB_PASSWORD"] {
            let response = request(agent.port(), method, path, &[("Authorization", &bearer), ("Content-Length", "0")]);
            response.assert(405, r#"{"error":"Method not allowed"}"#);
            assert_eq!(response.header("allow"), Some("GET, HEAD"), "{method} {path}");
            assert_eq!(response.header("content-type"), Some(JSON), "{method} {path}");
        }
    }
    // A secret path refuses the method even before the token is checked.
    let response = request(agent.port(), "POST", "/v1/secrets", &[("Content-Length", "0")]);
    response.assert(405, r#"{"error":"Method not allowed"}"#);
    assert_eq!(response.header("cache-control"), Some("no-store"));
}

#[test]
fn checks_the_method_before_the_path() {
    // SPEC §6 orders the guards Host, method, token: a wrong method is 405 whatever the path.
    let (_deployment, agent) = serving("method-first");
    for path in ["/v1/nothing", "/v1/secrets/%zz", "/v1/secrets/a/b/c"] {
        let response = request(agent.port(), "POST", path, &[("Content-Length", "0")]);
        response.assert(405, r#"{"error":"Method not allowed"}"#);
        assert_eq!(response.header("allow"), Some("GET, HEAD"), "{path}");
    }
}

#[test]
fn head_answers_the_headers_of_get_without_a_body() {
    let (_deployment, agent) = serving("head");
    let bearer = bearer();
    let response = request(agent.port(), "HEAD", "/v1/secrets", &[("Authorization", &bearer)]);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-length"), Some(PLAINTEXT.len().to_string().as_str()));
    assert_eq!(response.header("content-type"), Some(JSON));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert_eq!(response.body, b"", "HEAD must not send a body");
    let health = request(agent.port(), "HEAD", "/v1/health", &[]);
    assert_eq!(health.status, 200);
    assert_ne!(health.header("content-length"), Some("0"));
    assert_eq!(health.body, b"");
    let unauthorized = request(agent.port(), "HEAD", "/v1/keys", &[]);
    assert_eq!(unauthorized.status, 401);
    assert_eq!(unauthorized.body, b"");
}

#[test]
fn refuses_proxied_requests_for_secrets() {
    let (_deployment, agent) = serving("proxied");
    let bearer = bearer();
    for proxy_header in [("X-Forwarded-For", "203.0.113.7"), ("Forwarded", "for=203.0.113.7;proto=https")] {
        for path in SECRET_PATHS {
            let response = get(agent.port(), path, &[("Authorization", &bearer), proxy_header]);
            response.assert(403, r#"{"error":"Forbidden: proxied requests are not accepted"}"#);
            assert_eq!(response.header("cache-control"), Some("no-store"), "{path}");
        }
        // Probes through a proxy are harmless: they carry no secrets.
        assert_eq!(get(agent.port(), "/v1/health", &[proxy_header]).status, 200);
    }
}

#[test]
fn every_answer_is_nosniff_and_every_secret_answer_is_no_store() {
    let (_deployment, agent) = serving("headers");
    let port = agent.port();
    let bearer = bearer();
    let authorized: &[(&str, &str)] = &[("Authorization", &bearer)];
    // (method, path, headers, expected status)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u16);
    let cases: Vec<Case> = vec![
        ("GET", "/v1/health", vec![], 200),
        ("GET", "/v1/ready", vec![], 200),
        ("GET", "/v1/nothing", vec![], 404),
        ("POST", "/v1/health", vec![("Content-Length", "0")], 405),
        ("GET", "/v1/health", vec![("Host", "evil.example")], 403),
        ("GET", "/v1/secrets", authorized.to_vec(), 200),
        ("GET", "/v1/keys", authorized.to_vec(), 200),
        ("GET", "/v1/secrets/database", authorized.to_vec(), 200),
        ("GET", "/v1/secrets/database/DB_URL", authorized.to_vec(), 200),
        ("GET", "/v1/secrets", vec![], 401),
        ("GET", "/v1/keys", vec![], 401),
        ("GET", "/v1/secrets", vec![("Host", "evil.example"), ("Authorization", &bearer)], 403),
        ("GET", "/v1/keys", vec![("Authorization", &bearer), ("X-Forwarded-For", "10.1.2.3")], 403),
        ("GET", "/v1/secrets/nowhere", authorized.to_vec(), 404),
        ("GET", "/v1/secrets/%zz", authorized.to_vec(), 400),
        ("DELETE", "/v1/secrets", authorized.to_vec(), 405),
    ];
    for (method, path, headers, status) in cases {
        let response = request(port, method, path, &headers);
        assert_eq!(response.status, status, "{method} {path} {headers:?}: {}", response.text());
        assert_eq!(response.header("x-content-type-options"), Some("nosniff"), "{method} {path} {headers:?}");
        if path.starts_with("/v1/secrets") || path.starts_with("/v1/keys") {
            assert_eq!(response.header("cache-control"), Some("no-store"), "{method} {path} {headers:?}");
        }
    }
}

#[test]
fn listens_on_the_ipv4_loopback_address_only() {
    let (_deployment, agent) = serving("loopback-only");
    // All of 127.0.0.0/8 reaches `lo`: an agent bound to 0.0.0.0 would answer on 127.0.0.2.
    assert!(TcpStream::connect(("127.0.0.2", agent.port())).is_err(), "the agent listens beyond 127.0.0.1");
    assert!(TcpStream::connect(("::1", agent.port())).is_err(), "the agent listens on [::1] too");
    assert!(TcpStream::connect(("127.0.0.1", agent.port())).is_ok());
}

#[test]
fn jit_mode_serves_the_secrets_and_says_so_in_health() {
    let deployment = Deployment::new("jit", &build_artifact(PLAINTEXT, "rev-jit", &ArtifactOptions::default()));
    let agent = deployment.start(&[("CLEF_AGENT_CACHE_TTL", "0")]);
    assert!(agent.stdout().contains("[clef-agent] mode: jit\n"), "{}", agent.stdout());
    let health = get(agent.port(), "/v1/health", &[]).json();
    assert_eq!(health["mode"], "jit");
    assert_eq!(health["revision"], "rev-jit");
    assert_eq!(health["expired"], false);
    agent.get("/v1/secrets").assert(200, PLAINTEXT);
    agent.get("/v1/secrets/payments/caf%C3%A9").assert(200, "crème-brûlée-7e3b");
    get(agent.port(), "/v1/ready", &[]).assert(200, r#"{"ready":true}"#);
}

#[test]
fn serves_an_artifact_of_a_thousand_keys() {
    let namespaces: Vec<String> = (0..10)
        .map(|namespace| {
            let entries: Vec<String> = (0..100)
                .map(|key| format!(r#""KEY_{key:03}":"value-{namespace}-{key}-{}""#, "x".repeat(key % 7 * 10)))
                .collect();
            format!(r#""service_{namespace}":{{{}}}"#, entries.join(","))
        })
        .collect();
    let plaintext = format!("{{{}}}", namespaces.join(","));
    let deployment = Deployment::new("thousand", &build_artifact(&plaintext, "rev-big", &ArtifactOptions::default()));
    let agent = deployment.start(&[]);
    let secrets = agent.get("/v1/secrets");
    secrets.assert(200, &plaintext);
    assert!(plaintext.len() > 32 * 1024, "the body must be larger than tiny_http's chunking threshold");
    let length = plaintext.len().to_string();
    assert_eq!(secrets.header("content-length"), Some(length.as_str()), "a large body is framed by Content-Length");
    assert_eq!(secrets.header("transfer-encoding"), None);
    let keys = agent.get("/v1/keys").json();
    let keys: Vec<&str> = keys.as_array().expect("an array").iter().map(|key| key.as_str().unwrap()).collect();
    let expected: Vec<String> =
        (0..10).flat_map(|namespace| (0..100).map(move |key| format!("service_{namespace}__KEY_{key:03}"))).collect();
    assert_eq!(keys.len(), 1000);
    assert_eq!(keys, expected);
    agent.get("/v1/secrets/service_9/KEY_099").assert(200, &format!("value-9-99-{}", "x".repeat(10)));
}

#[test]
fn closes_a_connection_that_sends_nothing_while_serving_others() {
    let (_deployment, agent) = serving("idle");
    let opened = Instant::now();
    let mut idle = TcpStream::connect(("127.0.0.1", agent.port())).unwrap();
    idle.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buffer = [0u8; 64];
    let closed_after = loop {
        match idle.read(&mut buffer) {
            Ok(0) => break opened.elapsed(),
            Ok(count) => panic!("the agent sent {count} bytes to a client that asked nothing"),
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break opened.elapsed(),
        }
        assert!(opened.elapsed() < Duration::from_secs(13), "an idle connection was still open after 13 s");
        // Meanwhile everyone else is served.
        let health = get(agent.port(), "/v1/health", &[]);
        assert_eq!(health.status, 200, "{}", health.text());
    };
    assert!(closed_after >= Duration::from_secs(9), "closed after {closed_after:?}, before the 10 s idle limit");
}

#[test]
fn a_slow_client_does_not_block_other_clients() {
    let (_deployment, agent) = serving("slowloris");
    let mut slow = TcpStream::connect(("127.0.0.1", agent.port())).unwrap();
    slow.write_all(b"GET /v1/sec").unwrap();
    assert_others_are_served(&agent);
    slow.write_all(b"rets HTTP/1.1\r\n").unwrap();
    assert_others_are_served(&agent);
    // The slow client is served too once its request is complete.
    let bearer = format!("Authorization: Bearer {TOKEN}\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    slow.write_all(bearer.as_bytes()).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    slow.read_to_end(&mut answer).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200 ") && answer.ends_with(PLAINTEXT.as_bytes()), "{answer:?}");
}

#[test]
fn a_burst_of_stalled_clients_does_not_block_other_clients() {
    let deployment = Deployment::new("stalled-burst", &build_artifact(PLAINTEXT, "rev-1", &ArtifactOptions::default()));
    // Whether a burst gets in the way depends on thread scheduling: give each of several
    // fresh agents one burst.
    for _ in 0..12 {
        let agent = deployment.start(&[]);
        // Freeze the agent while the clients connect, so that they reach it all at once, as a
        // burst does on a busy host: the kernel completes the connections in the listen backlog.
        agent.signal(libc::SIGSTOP);
        let stalled: Vec<TcpStream> = (0..16)
            .map(|index| {
                let mut stream = TcpStream::connect(("127.0.0.1", agent.port())).unwrap();
                let partial: &[u8] = if index % 2 == 0 {
                    b"GET /v1/sec"
                } else {
                    b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
                };
                stream.write_all(partial).unwrap();
                stream
            })
            .collect();
        agent.signal(libc::SIGCONT);
        assert_others_are_served(&agent);
        drop(stalled);
    }
}

/// Health and secrets answer at once, many times over.
fn assert_others_are_served(agent: &Agent) {
    let started = Instant::now();
    for _ in 0..10 {
        let health = get_within(agent.port(), "/v1/health", Duration::from_secs(3));
        let answered = health.is_some_and(|answer| answer.starts_with(b"HTTP/1.1 200 "));
        assert!(answered, "/v1/health got no answer within 3 s beside stalled clients");
        agent.get("/v1/secrets").assert(200, PLAINTEXT);
    }
    assert!(started.elapsed() < Duration::from_secs(3), "20 requests took {:?} beside slow clients", started.elapsed());
}

/// A GET whose answer is awaited at most `limit`; `None` when none came.
fn get_within(port: u16, path: &str, limit: Duration) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(limit)).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    Some(answer)
}

/// clef's end-to-end suite sends `Connection: close` through Node's keep-alive agent; unless the
/// answer says `Connection: close`, Node puts the socket back in its pool and the next request
/// fails with ECONNRESET. A real Node client, never skipped: `make test` installs `nodejs`.
#[test]
fn node_clients_sending_connection_close_through_a_keep_alive_agent_get_every_answer() {
    let (_deployment, agent) = serving("api-node-connection-close");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/node_keep_alive_close.js");
    let output = std::process::Command::new("node")
        .arg(&script)
        .arg(agent.port().to_string())
        .arg(TOKEN)
        .output()
        .unwrap_or_else(|error| panic!("cannot run node (make deps installs nodejs): {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "node: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    let answers: Vec<&str> = stdout.lines().collect();
    assert_eq!(answers.len(), 12, "{stdout}");
    for answer in answers {
        assert!(answer.contains(r#""status":200,"connection":"close""#), "{answer}");
    }
}
