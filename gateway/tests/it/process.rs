//! The `herald-gateway` binary as users run it: `token`, `check-config`,
//! start-up errors, `--dev`, and a real SIGTERM drain.

use std::process::Command;

use herald_testkit::{Proc, addr_after};
use serde_json::json;

use crate::common::*;

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald-gateway"));
    // Run where no herald.toml can be picked up by accident.
    cmd.current_dir(std::env::temp_dir());
    cmd.env_remove("HERALD_LOG_LEVEL");
    cmd
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = bin().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn token_command_output_is_accepted_by_serve() {
    let (code, stdout, stderr) = run(&[
        "token",
        "--sub",
        "alice",
        "--topics",
        "news,stocks.*",
        "--publish",
        "chat.>",
        "--ttl",
        "10m",
        "--jwt-hs256-secret",
        SECRET,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let token = stdout.trim();
    let gw = TestGateway::spawn().await;
    let mut c = Client::connect(&gw.ws_url(), token).await;
    c.subscribe(&["news", "stocks.AAPL"]).await;
    let reply = c
        .call(json!({"type": "publish", "topic": "chat.x", "data": 1}))
        .await;
    assert_eq!(reply["type"], "published");
    let reply = c
        .call(json!({"type": "subscribe", "topics": ["alerts"]}))
        .await;
    assert_eq!(reply["code"], "forbidden");
}

#[tokio::test]
async fn token_command_signs_with_a_private_key() {
    let key = fixture("ec_private.pem");
    let (code, stdout, stderr) = run(&[
        "token",
        "--sub",
        "alice",
        "--private-key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let gw = TestGateway::spawn_with(|c| {
        c.jwt.hs256_secret = None;
        c.jwt.public_key_file = Some(fixture("ec_public.pem"));
    })
    .await;
    Client::connect(&gw.ws_url(), stdout.trim())
        .await
        .assert_alive()
        .await;
}

#[test]
fn token_command_without_a_key_names_the_setting() {
    let (code, _, stderr) = run(&["token", "--sub", "alice"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("jwt.hs256_secret"), "{stderr}");
}

#[test]
fn check_config_prints_masked_values_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, format!("[jwt]\nhs256_secret = \"{SECRET}\"\n[admin]\napi_keys = [\"k\"]\n[limits]\nclient_rate = 5\n")).unwrap();
    let (code, stdout, stderr) = run(&["check-config", "--config", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("limits.client_rate = 5  # file"),
        "{stdout}"
    );
    assert!(stdout.contains("jwt.hs256_secret = \"****\""), "{stdout}");
    assert!(!stdout.contains(SECRET), "secret leaked: {stdout}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[limits]\nmax_conections = 5\n").unwrap();
    let (code, _, stderr) = run(&["check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("limits.max_conections"), "{stderr}");

    let (code, _, stderr) = run(&["check-config", "--heartbeat-interval", "soon"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("heartbeat.interval"), "{stderr}");
}

/// Contract §10.9: `--version` on both binaries, and the version in the
/// start-up line.
#[tokio::test]
async fn both_binaries_print_their_version() {
    let version = env!("CARGO_PKG_VERSION");
    let (code, stdout, _) = run(&["--version"]);
    assert_eq!(
        (code, stdout.trim()),
        (0, format!("herald-gateway {version}").as_str())
    );
    let out = herald_testkit::bin("herald-admin")
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("herald-admin {version}")
    );
    let mut p = start_node(&[]);
    let line = p.line_with("herald-gateway listening");
    assert!(line.contains(&format!("version={version}")), "{line}");
}

/// `herald-admin check-config` prints every key and checks what `serve`
/// requires, without connecting to Redis.
#[test]
fn herald_admin_checks_its_configuration() {
    let check = |args: &[&str]| {
        output_of(
            herald_testkit::bin("herald-admin")
                .arg("check-config")
                .args(args),
        )
    };
    let (code, text) = check(&[
        "--redis-url",
        "redis://127.0.0.1:1",
        "--admin-api-keys",
        "k",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("admin.api_keys = \"****\"  # flag --admin-api-keys"),
        "{text}"
    );
    assert!(text.contains("configuration OK"), "{text}");
    let (code, text) = check(&["--admin-api-keys", "k"]);
    assert_eq!(code, Some(1));
    assert!(text.contains("redis_url is not set"), "{text}");
    let (code, text) = check(&["--redis-url", "redis://127.0.0.1:1"]);
    assert_eq!(code, Some(1));
    assert!(text.contains("no admin API key"), "{text}");
    let (code, text) = check(&["--redis-url", "http://x", "--admin-api-keys", "k"]);
    assert_eq!(code, Some(1));
    assert!(text.contains("must start with redis://"), "{text}");
}

#[test]
fn serve_without_keys_names_the_setting() {
    let (code, _, stderr) = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("jwt.hs256_secret"), "{stderr}");
    let (code, _, stderr) = run(&[
        "--jwt-hs256-secret",
        SECRET,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("admin.api_keys"), "{stderr}");
    let (code, _, stderr) = run(&["--bogus"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--bogus"), "{stderr}");
}

/// A node with the test keys on ephemeral ports, and `extra` flags.
fn start_node(extra: &[&str]) -> Proc {
    let mut args = vec![
        "--jwt-hs256-secret",
        SECRET,
        "--admin-api-keys",
        ADMIN_KEY,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    start(&args)
}

fn start(args: &[&str]) -> Proc {
    let mut cmd = bin();
    cmd.args(args);
    Proc::start(cmd)
}

#[tokio::test]
async fn dev_mode_serves_demo_token_and_feed() {
    let mut p = start(&[
        "--dev",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let key_line = p.line_with("admin key");
    let key = key_line
        .split('=')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let public = addr_after(&p.line_with("demo page:"), "http://");
    let admin = addr_after(&p.line_with("try:"), "http://");

    let (status, page) = http(public, "GET", "/", None, None).await;
    assert_eq!(status, 200);
    let page = page.as_str().unwrap();
    assert!(page.contains("Herald demo"));
    // The curl example names this node's admin listener, and the page asks
    // for no favicon (a 404 in the browser's console otherwise).
    assert!(
        page.contains(&format!("http://{admin}/v1/publish")),
        "{page}"
    );
    assert!(!page.contains("{{ADMIN}}"));
    assert!(page.contains(r#"<link rel="icon" href="data:,">"#));
    let (status, body) = http(public, "GET", "/dev/token?sub=tester", None, None).await;
    assert_eq!(status, 200);
    let token = body["token"].as_str().unwrap();

    let mut c = Client::connect(&format!("ws://{public}/ws"), token).await;
    c.subscribe(&["news", "alerts", "stocks.AAPL"]).await;
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 3 {
        let m = c.recv().await;
        seen.insert(m["topic"].as_str().unwrap().to_owned());
    }
    let (status, reply) = http(
        admin,
        "POST",
        "/v1/publish",
        Some(&key),
        Some(json!({"topic": "news", "data": {"title": "hi"}}).to_string()),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
}

#[tokio::test]
async fn sigterm_drains_sessions_with_1012_and_exits_0() {
    let mut p = start_node(&["--drain-timeout", "3s"]);
    let line = p.line_with("herald-gateway listening");
    let public = addr_after(&line, "public=");
    let admin = addr_after(&line, "admin=");
    let mut c = Client::connect(&format!("ws://{public}/ws"), &token("alice", &[], &[])).await;
    c.assert_alive().await;
    p.signal("TERM");
    assert_eq!(c.expect_close().await, 1012);
    let code = p.wait_exit();
    assert_eq!(code, 0);
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(admin).await.is_err());
}

/// JSON logs at debug level, through refusals, publishes, a token refresh
/// and a revocation: every line is JSON, no token, key or secret appears,
/// and an admin action's audit line carries the route and the key's name.
#[tokio::test]
async fn json_logs_never_contain_secrets() {
    let mut p = start_node(&["--log-level", "debug", "--log-format", "json"]);
    let line = p.line_with("herald-gateway listening");
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    let public: std::net::SocketAddr = v["fields"]["public"].as_str().unwrap().parse().unwrap();
    let admin: std::net::SocketAddr = v["fields"]["admin"].as_str().unwrap().parse().unwrap();

    let good = token("alice", &["news"], &[]);
    let mut c = Client::connect(&format!("ws://{public}/ws"), &good).await;
    c.subscribe(&["news"]).await;
    let fresh = token("alice", &["news"], &[]);
    c.call(json!({"type": "auth", "token": fresh})).await;
    c.call(json!({"type": "auth", "token": "forged.token.value"}))
        .await;
    let _ =
        tokio_tungstenite::connect_async(format!("ws://{public}/ws?token=not-a-valid-token-xyz"))
            .await;
    http(
        admin,
        "POST",
        "/v1/publish",
        Some(ADMIN_KEY),
        Some(json!({"topic": "news", "data": 1}).to_string()),
    )
    .await;
    http(admin, "GET", "/v1/stats", Some("wrong-key-abcdef"), None).await;
    let (status, _) = http(
        admin,
        "POST",
        "/v1/revoke",
        Some(ADMIN_KEY),
        Some(json!({"jti": "audit-1"}).to_string()),
    )
    .await;
    assert_eq!(status, 200);
    let audit: serde_json::Value = serde_json::from_str(&p.line_with("tokens revoked")).unwrap();
    assert_eq!(audit["span"]["name"], "admin", "{audit}");
    assert_eq!(audit["span"]["route"], "/v1/revoke", "{audit}");
    assert_eq!(audit["span"]["key"], "api_keys#1", "{audit}");
    assert_eq!(audit["fields"]["jti"], "audit-1", "{audit}");
    c.recv().await;
    drop(c);
    p.signal("TERM");
    p.wait_exit();
    let lines = p.drain_lines();
    assert!(lines.len() > 3, "debug logging produced lines");
    for line in &lines {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
        for secret in [
            SECRET,
            ADMIN_KEY,
            good.as_str(),
            fresh.as_str(),
            "not-a-valid-token-xyz",
            "wrong-key-abcdef",
        ] {
            assert!(!line.contains(secret), "a secret was logged: {line}");
        }
    }
}
