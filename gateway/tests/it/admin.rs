//! Contract §7–§9 through the gateway's admin listener: auth, publish,
//! batch, history, stats, disconnect, OpenAPI, health and metrics.

use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn every_route_needs_the_key() {
    let gw = TestGateway::spawn().await;
    for r in herald_admin_api::ROUTES {
        let (method, path) = (r.method, r.path);
        if r.scope.is_none() {
            continue;
        }
        let path = path.replace("{topic}", "news");
        let method = method.to_uppercase();
        let body = (method == "POST").then(|| "{}".to_owned());
        let (status, reply) = http(gw.admin, &method, &path, None, body.clone()).await;
        assert_eq!(
            (status, reply["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{method} {path}"
        );
        let (status, _) = http(gw.admin, &method, &path, Some("wrong-key"), body).await;
        assert_eq!(status, 401, "{method} {path} with a wrong key");
    }
    let (status, _, _) = http_raw(gw.admin, "GET", "/v1/stats", None, None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn openapi_document_is_public_and_complete() {
    let gw = TestGateway::spawn_with(|c| {
        c.presence.topics = herald_protocol::Permissions::parse(["chat.>"]).unwrap();
    })
    .await;
    let (status, doc) = http(gw.admin, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for r in herald_admin_api::ROUTES {
        let (method, path) = (r.method, r.path);
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from {doc}"
        );
    }
}

#[tokio::test]
async fn publish_validation() {
    let gw = TestGateway::spawn_with(|c| c.limits.max_message_size = 1024).await;
    let cases: Vec<(Option<String>, u16, &str)> = vec![
        (Some("not json".into()), 400, "bad_request"),
        // A struct's fields as an array: serde would take it; the document does not.
        (Some(json!(["news", 1]).to_string()), 400, "bad_request"),
        (Some(json!({"data": 1}).to_string()), 400, "bad_request"),
        (
            Some(json!({"topic": "news"}).to_string()),
            400,
            "bad_request",
        ),
        (
            Some(json!({"topic": "news", "topics": ["a"], "data": 1}).to_string()),
            400,
            "bad_request",
        ),
        (
            Some(json!({"topics": [], "data": 1}).to_string()),
            400,
            "bad_request",
        ),
        (
            Some(json!({"topic": "news", "data": 1, "extra": true}).to_string()),
            400,
            "bad_request",
        ),
        (
            Some(json!({"topic": "news", "data": 1, "event": ""}).to_string()),
            400,
            "bad_request",
        ),
        (
            Some(json!({"topic": "bad..topic", "data": 1}).to_string()),
            400,
            "invalid_topic",
        ),
        (
            Some(json!({"topics": ["ok", "bad topic"], "data": 1}).to_string()),
            400,
            "invalid_topic",
        ),
        (
            Some(json!({"topic": "news", "data": "x".repeat(2000)}).to_string()),
            413,
            "too_large",
        ),
        (
            Some(format!(
                "{{\"topic\":\"news\",\"data\":\"{}\"}}",
                "x".repeat(400 * 1024)
            )),
            413,
            "too_large",
        ),
    ];
    for (body, status, code) in cases {
        let (got, reply) = http(
            gw.admin,
            "POST",
            "/v1/publish",
            Some(ADMIN_KEY),
            body.clone(),
        )
        .await;
        assert_eq!(
            (got, reply["error"]["code"].as_str()),
            (status, Some(code)),
            "{body:?}: {reply}"
        );
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // `ok` must not have been published by the refused multi-topic call.
    let (_, history) = gw.admin("GET", "/v1/topics/ok/history", None).await;
    assert_eq!(history["messages"], json!([]));
    // null data is data.
    let (status, _) = gw
        .admin(
            "POST",
            "/v1/publish",
            Some(json!({"topic": "news", "data": null})),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn publish_to_many_topics() {
    let gw = TestGateway::spawn().await;
    let mut c = gw.client("alice", &[">"], &[]).await;
    c.subscribe(&["a", "b"]).await;
    let (status, body) = gw
        .admin(
            "POST",
            "/v1/publish",
            Some(json!({"topics": ["a", "b"], "data": {"x": 1}, "event": "e"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(
        (results[0]["topic"].as_str(), results[1]["topic"].as_str()),
        (Some("a"), Some("b"))
    );
    let got: Vec<Value> = vec![c.recv().await, c.recv().await];
    assert_eq!(got[0]["topic"], "a");
    assert_eq!(got[1]["topic"], "b");
    assert_eq!(got[0]["id"], results[0]["id"]);
}

#[tokio::test]
async fn batch_is_ordered_and_all_or_nothing() {
    let gw = TestGateway::spawn().await;
    let (status, reply) = gw
        .admin("POST", "/v1/publish/batch", Some(json!({"messages": []})))
        .await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"topic": "t", "data": i}))
        .collect();
    let (status, _) = gw
        .admin(
            "POST",
            "/v1/publish/batch",
            Some(json!({"messages": too_many})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = gw.admin("POST", "/v1/publish/batch", Some(json!({}))).await;
    assert_eq!(status, 400);

    let mixed = json!({"messages": [
        {"topic": "t", "data": 1},
        {"topic": "t..bad", "data": 2},
    ]});
    let (status, reply) = gw.admin("POST", "/v1/publish/batch", Some(mixed)).await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (400, Some("invalid_topic")),
        "{reply}"
    );
    let (_, history) = gw.admin("GET", "/v1/topics/t/history", None).await;
    assert_eq!(
        history["messages"],
        json!([]),
        "nothing of a refused batch is published"
    );

    let batch: Vec<Value> = (0..1000)
        .map(|i| json!({"topic": if i % 2 == 0 { "even" } else { "odd" }, "data": i}))
        .collect();
    let (status, reply) = gw
        .admin(
            "POST",
            "/v1/publish/batch",
            Some(json!({"messages": batch})),
        )
        .await;
    assert_eq!(status, 200);
    let results = reply["results"].as_array().unwrap();
    assert_eq!(results.len(), 1000);
    assert_eq!(results[0]["topic"], "even");
    assert_eq!(results[1]["topic"], "odd");
    let (_, history) = gw
        .admin("GET", "/v1/topics/odd/history?limit=1000", None)
        .await;
    let data: Vec<i64> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].as_i64().unwrap())
        .collect();
    assert_eq!(data, (0..1000).filter(|i| i % 2 == 1).collect::<Vec<_>>());
}

#[tokio::test]
async fn history_pages_forward() {
    let gw = TestGateway::spawn_with(|c| c.history.size = 50).await;
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(gw.publish("h", json!(i)).await);
    }
    let (status, page) = gw.admin("GET", "/v1/topics/h/history?limit=5", None).await;
    assert_eq!(status, 200);
    assert_eq!(page["recovered"], true);
    let data = |page: &Value| {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["data"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        data(&page),
        vec![10, 11, 12, 13, 14],
        "from the oldest kept"
    );
    assert_eq!(page["messages"][0]["type"], "message");
    assert_eq!(page["messages"][0]["topic"], "h");

    let last = page["messages"][4]["id"].as_str().unwrap();
    let (_, next) = gw
        .admin(
            "GET",
            &format!("/v1/topics/h/history?since={last}&limit=3"),
            None,
        )
        .await;
    assert_eq!(
        (data(&next), next["recovered"].clone()),
        (vec![15, 16, 17], json!(true))
    );

    let (_, stale) = gw
        .admin(
            "GET",
            &format!("/v1/topics/h/history?since={}&limit=2", ids[0]),
            None,
        )
        .await;
    assert_eq!(
        (data(&stale), stale["recovered"].clone()),
        (vec![10, 11], json!(false))
    );
    let (_, garbage) = gw
        .admin("GET", "/v1/topics/h/history?since=garbage&limit=2", None)
        .await;
    assert_eq!(garbage["recovered"], false);
    let (_, default) = gw.admin("GET", "/v1/topics/h/history", None).await;
    assert_eq!(default["messages"].as_array().unwrap().len(), 50);

    for bad in ["0", "1001", "abc", "-1"] {
        let (status, reply) = gw
            .admin("GET", &format!("/v1/topics/h/history?limit={bad}"), None)
            .await;
        assert_eq!(
            (status, reply["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "limit={bad}"
        );
    }
    let (status, reply) = gw.admin("GET", "/v1/topics/bad..topic/history", None).await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (400, Some("invalid_topic"))
    );
    let (status, empty) = gw.admin("GET", "/v1/topics/never/history", None).await;
    assert_eq!((status, empty["messages"].clone()), (200, json!([])));
}

#[tokio::test]
async fn stats_count_connections_subscriptions_and_topics() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("alice", &[">"], &[]).await;
    let mut b = gw.client("bob", &[">"], &[]).await;
    a.subscribe(&["x", "y"]).await;
    b.subscribe(&["y"]).await;
    let (status, stats) = gw.admin("GET", "/v1/stats", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        stats,
        json!({"nodes": [{"node": "test-node", "connections": 2, "subscriptions": 3, "topics": 2}], "connections": 2})
    );
    drop(b);
    eventually("bob's session to end", async || {
        gw.admin("GET", "/v1/stats", None).await.1["nodes"][0]["subscriptions"] == 2
    })
    .await;
    let (_, stats) = gw.admin("GET", "/v1/stats", None).await;
    assert_eq!(stats["nodes"][0]["topics"], 2);
    assert_eq!(stats["connections"], 1);
}

#[tokio::test]
async fn disconnect_closes_every_session_of_the_user_with_4003() {
    let gw = TestGateway::spawn().await;
    let mut a1 = gw.client("alice", &[], &[]).await;
    let mut a2 = gw.client("alice", &[], &[]).await;
    let mut bob = gw.client("bob", &[], &[]).await;
    let (status, reply) = gw
        .admin("POST", "/v1/disconnect", Some(json!({"sub": "alice"})))
        .await;
    assert_eq!((status, reply), (200, json!({"disconnected": 2})));
    assert_eq!(a1.expect_close().await, 4003);
    assert_eq!(a2.expect_close().await, 4003);
    bob.assert_alive().await;
    let (status, reply) = gw
        .admin("POST", "/v1/disconnect", Some(json!({"sub": "nobody"})))
        .await;
    assert_eq!((status, reply), (200, json!({"disconnected": 0})));
    let (status, reply) = gw.admin("POST", "/v1/disconnect", Some(json!({}))).await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
}

#[tokio::test]
async fn health_metrics_and_unknown_routes() {
    let gw = TestGateway::spawn().await;
    for addr in [gw.public, gw.admin] {
        assert_eq!(http(addr, "GET", "/healthz", None, None).await.0, 200);
        assert_eq!(http(addr, "GET", "/readyz", None, None).await.0, 200);
        let (status, body) = http(addr, "GET", "/nope", None, None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found"))
        );
    }
    let mut c = gw.client("alice", &["m"], &[]).await;
    c.subscribe(&["m"]).await;
    gw.publish("m", json!(1)).await;
    c.recv().await;
    let (status, headers, body) = http_raw(gw.admin, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(body).unwrap();
    for line in [
        "herald_connections 1",
        "herald_subscriptions 1",
        "herald_topics 1",
        "herald_messages_published_total 1",
        "herald_broker_up 1",
        "herald_publish_to_deliver_seconds_count 1",
        // Contract §10.9 and issue 26: the version, admin request durations
        // and the process itself.
        concat!(
            "herald_build_info{version=\"",
            env!("CARGO_PKG_VERSION"),
            "\"} 1"
        ),
        "herald_admin_request_seconds_count{route=\"/v1/publish\",status=\"200\"} 1",
        "herald_admin_request_seconds_bucket{route=\"/v1/publish\",status=\"200\",le=\"10\"} 1",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_max_fds ",
        "process_cpu_seconds_total ",
        "process_threads ",
    ] {
        assert!(text.contains(line), "missing '{line}' in\n{text}");
    }
    eventually("delivery to be counted", async || {
        let (_, body) = http(gw.admin, "GET", "/metrics", None, None).await;
        body.as_str()
            .unwrap()
            .contains("herald_messages_delivered_total 1")
    })
    .await;
}

#[tokio::test]
async fn drain_closes_sessions_with_1012_and_refuses_new_ones() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("alice", &[], &[]).await;
    let mut b = gw.client("bob", &[], &[]).await;
    let node = gw.node.clone();
    let public = gw.public;
    let drain = tokio::spawn(gw.shutdown());
    assert_eq!(a.expect_close().await, 1012);
    assert_eq!(b.expect_close().await, 1012);
    assert!(node.is_draining());
    tokio::time::timeout(WAIT, drain)
        .await
        .expect("drain finished in time")
        .unwrap();
    assert_eq!(node.open_connections(), 0);
    assert!(
        tokio::net::TcpStream::connect(public).await.is_err(),
        "listener closed after the drain"
    );
}

#[tokio::test]
async fn metrics_pass_promtool() {
    let gw = TestGateway::spawn().await;
    let mut c = gw.client("alice", &["m"], &[]).await;
    c.subscribe(&["m"]).await;
    gw.publish("m", json!(1)).await;
    c.recv().await;
    let (_, _, body) = http_raw(gw.admin, "GET", "/metrics", None, None).await;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/deps.sh installs Debian's prometheus package)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&body).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}"
    );
}

/// A method a route does not serve: 405 `method_not_allowed` with `Allow`
/// naming the methods it does, key or no key; the node serves on.
#[tokio::test]
async fn wrong_methods_get_405_with_allow() {
    let gw = TestGateway::spawn().await;
    let mut routes: Vec<(String, &str)> = herald_admin_api::ROUTES
        .iter()
        .map(|r| (r.path.replace("{topic}", "news"), r.method))
        .collect();
    routes.extend(["/healthz", "/readyz", "/metrics"].map(|p| (p.to_owned(), "get")));
    for (path, served) in &routes {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if method.eq_ignore_ascii_case(served) {
                continue;
            }
            for key in [None, Some(ADMIN_KEY)] {
                let (status, headers, body) = http_raw(gw.admin, method, path, key, None).await;
                assert_eq!(status, 405, "{method} {path}");
                let allow = headers
                    .get("allow")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                assert!(
                    allow
                        .to_ascii_lowercase()
                        .split(',')
                        .any(|m| m.trim() == *served),
                    "{method} {path}: Allow {allow:?}"
                );
                let body: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(
                    body["error"]["code"], "method_not_allowed",
                    "{method} {path}"
                );
            }
        }
    }
    let (status, _) = gw.admin("GET", "/v1/stats", None).await;
    assert_eq!(status, 200);
}

/// `docs/openapi.json` is the document a node serves (with presence on
/// every topic, so the presence route is in it), so clients in other
/// languages can be generated from the repository. After a change to the
/// admin API, write it again with
/// `HERALD_WRITE_OPENAPI=1 cargo nextest run -E 'test(committed_openapi)'`.
#[tokio::test]
async fn the_committed_openapi_document_is_the_served_one() {
    let gw = TestGateway::spawn_with(|c| {
        c.presence.topics = herald_protocol::Permissions::parse([">"]).unwrap();
    })
    .await;
    let (status, served) = http(gw.admin, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, 200);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    if std::env::var_os("HERALD_WRITE_OPENAPI").is_some() {
        let text = serde_json::to_string_pretty(&served).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
    }
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("docs/openapi.json"))
            .expect("docs/openapi.json is JSON");
    assert!(
        committed == served,
        "docs/openapi.json differs from the served document: write it again with \
         HERALD_WRITE_OPENAPI=1 cargo nextest run -E 'test(committed_openapi)'"
    );
}
