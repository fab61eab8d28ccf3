//! Presence (contract §5 presence frames, §8 presence route): on one node
//! with the memory broker, across three Redis-backed node processes, after
//! a node is killed, and after a node is paused past `presence.timeout`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cluster::GatewayProc;
use crate::common::*;

fn presence_token(sub: &str, topics: &[&str], presence: &[&str]) -> String {
    let mut c = claims(sub, topics, &[]);
    c["presence"] = json!(presence);
    token_with(c)
}

async fn connect(url: &str, sub: &str, topics: &[&str], presence: &[&str]) -> Client {
    Client::connect(url, &presence_token(sub, topics, presence)).await
}

fn session(c: &Client) -> String {
    c.welcome["session"].as_str().unwrap().to_owned()
}

/// The next join or leave on `c`, as (type, session).
async fn change(c: &mut Client) -> (String, String) {
    let f = c.recv().await;
    let kind = f["type"].as_str().unwrap_or_default().to_owned();
    assert!(
        kind == "join" || kind == "leave",
        "expected join or leave, got {f}"
    );
    (kind, f["session"].as_str().unwrap().to_owned())
}

fn join(s: &str) -> (String, String) {
    ("join".to_owned(), s.to_owned())
}

fn leave(s: &str) -> (String, String) {
    ("leave".to_owned(), s.to_owned())
}

fn sessions(members: &Value) -> Vec<String> {
    let mut s: Vec<String> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["session"].as_str().unwrap().to_owned())
        .collect();
    s.sort();
    s
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn members_join_and_leave_on_one_node() {
    let gw = TestGateway::spawn_with(|c| {
        c.presence.topics = herald_protocol::Permissions::parse(["chat.>"]).unwrap();
    })
    .await;
    let url = gw.ws_url();
    let room = "chat.room-1";
    let mut alice = connect(&url, "alice", &["chat.>", "news"], &["chat.>"]).await;
    alice.subscribe(&[room]).await;
    assert_eq!(
        change(&mut alice).await,
        join(&session(&alice)),
        "its own join, after subscribed"
    );

    let mut bob = connect(&url, "bob", &["chat.>"], &["chat.>"]).await;
    bob.subscribe(&[room]).await;
    assert_eq!(change(&mut bob).await, join(&session(&bob)));
    assert_eq!(change(&mut alice).await, join(&session(&bob)));

    // A member without the presence claim: counted, but told nothing.
    let mut carol = connect(&url, "carol", &["chat.>"], &[]).await;
    carol.subscribe(&[room]).await;
    assert_eq!(change(&mut alice).await, join(&session(&carol)));
    assert_eq!(change(&mut bob).await, join(&session(&carol)));

    let reply = alice.call(json!({"type": "presence", "topic": room})).await;
    assert_eq!(reply["type"], "presence", "{reply}");
    assert_eq!(reply["topic"], room);
    let want = sorted(vec![session(&alice), session(&bob), session(&carol)]);
    assert_eq!(sessions(&reply["members"]), want);
    for m in reply["members"].as_array().unwrap() {
        assert!(m["since"].as_u64().unwrap() > 1_700_000_000_000, "{m}");
        assert!(m.get("node").is_none(), "clients are not told nodes: {m}");
        let sub = m["sub"].as_str().unwrap();
        assert!(["alice", "bob", "carol"].contains(&sub), "{m}");
    }
    // The admin route agrees, with nodes.
    let (status, body) = gw
        .admin("GET", &format!("/v1/topics/{room}/presence"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 3);
    assert_eq!(sessions(&body["members"]), want);
    assert!(
        body["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["node"] == "test-node")
    );
    carol.expect_silence(Duration::from_millis(200)).await;

    // Unsubscribe, disconnect and a token refresh that loses the topic each
    // make one leave.
    bob.call(json!({"type": "unsubscribe", "topics": [room]}))
        .await;
    assert_eq!(change(&mut alice).await, leave(&session(&bob)));
    let carol_session = session(&carol);
    drop(carol);
    assert_eq!(change(&mut alice).await, leave(&carol_session));
    let mut dave = connect(&url, "dave", &["chat.>"], &["chat.>"]).await;
    dave.subscribe(&[room]).await;
    assert_eq!(change(&mut dave).await, join(&session(&dave)));
    assert_eq!(change(&mut alice).await, join(&session(&dave)));
    let fresh = presence_token("dave", &["news"], &["chat.>"]);
    let authed = dave.call(json!({"type": "auth", "token": fresh})).await;
    assert_eq!(authed["type"], "authed", "{authed}");
    let notice = dave.recv().await;
    assert_eq!(notice["type"], "unsubscribed", "{notice}");
    assert_eq!(change(&mut alice).await, leave(&session(&dave)));

    // Exactly once: nothing else for alice, and only alice is left.
    alice.expect_silence(Duration::from_millis(300)).await;
    let reply = alice.call(json!({"type": "presence", "topic": room})).await;
    assert_eq!(sessions(&reply["members"]), vec![session(&alice)]);
    let metric = |s: &str| gw.node.metrics.value(s).unwrap_or(-1.0);
    assert_eq!(metric("herald_presence_members"), 1.0);
    assert_eq!(metric("herald_presence_joins_total"), 4.0);
    assert_eq!(
        metric("herald_presence_leaves_total{cause=\"unsubscribe\"}"),
        2.0
    );
    assert_eq!(
        metric("herald_presence_leaves_total{cause=\"disconnect\"}"),
        1.0
    );
}

#[tokio::test]
async fn presence_requests_are_checked() {
    let gw = TestGateway::spawn_with(|c| {
        c.presence.topics = herald_protocol::Permissions::parse(["chat.>"]).unwrap();
    })
    .await;
    let url = gw.ws_url();
    let mut watcher = connect(&url, "w", &["chat.>", "news"], &["chat.>", "news"]).await;
    let mut plain = connect(&url, "p", &["chat.>"], &[]).await;
    let cases = [
        (
            true,
            json!({"type": "presence", "topic": "news"}),
            "bad_request",
        ),
        (
            true,
            json!({"type": "presence", "topic": "chat..x"}),
            "invalid_topic",
        ),
        (
            true,
            json!({"type": "presence", "topic": ""}),
            "invalid_topic",
        ),
        (true, json!({"type": "presence"}), "bad_request"),
        (true, json!({"type": "presence", "topic": 7}), "bad_request"),
        (
            false,
            json!({"type": "presence", "topic": "chat.a"}),
            "forbidden",
        ),
    ];
    for (by_watcher, frame, code) in cases {
        let client = if by_watcher { &mut watcher } else { &mut plain };
        let reply = client.call(frame.clone()).await;
        assert_eq!(reply["type"], "error", "{frame} → {reply}");
        assert_eq!(reply["code"], code, "{frame} → {reply}");
    }
    // An untracked topic is bad_request even for a token without the claim.
    let reply = plain
        .call(json!({"type": "presence", "topic": "news"}))
        .await;
    assert_eq!(reply["code"], "bad_request", "{reply}");
    for (path, status, code) in [
        ("/v1/topics/news/presence", 400, "bad_request"),
        ("/v1/topics/chat..x/presence", 400, "invalid_topic"),
    ] {
        let (s, body) = gw.admin("GET", path, None).await;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
    }
    let (s, _) = http(gw.admin, "GET", "/v1/topics/chat.a/presence", None, None).await;
    assert_eq!(s, 401);
    // Still serving: a well-formed request works after the refusals.
    watcher.assert_alive().await;
    let reply = watcher
        .call(json!({"type": "presence", "topic": "chat.a"}))
        .await;
    assert_eq!(reply["members"], json!([]), "{reply}");
    let (s, body) = gw.admin("GET", "/v1/topics/chat.a/presence", None).await;
    assert_eq!((s, body["count"].as_u64()), (200, Some(0)), "{body}");
}

/// The presence timeout the process tests run with.
const TIMEOUT: Duration = Duration::from_secs(2);

async fn presence_node(url: &str, id: &str) -> GatewayProc {
    let env = [
        ("HERALD_PRESENCE__TOPICS", "room.>"),
        ("HERALD_PRESENCE__TIMEOUT", "2s"),
    ];
    GatewayProc::start_env(url, false, id, &env).await
}

fn ws(node: &GatewayProc) -> String {
    format!("ws://{}/ws", node.public)
}

/// Reads joins and leaves on `c` until `done` says it has seen enough;
/// returns them all.
async fn changes_until(
    c: &mut Client,
    seen: &mut Vec<(String, String)>,
    done: impl Fn(&[(String, String)]) -> bool,
) {
    while !done(seen) {
        seen.push(change(c).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_killed_node_leave_within_the_timeout() {
    let redis = herald_testkit::TestRedis::start();
    let url = redis.url();
    let mut nodes = Vec::new();
    for id in ["n1", "n2", "n3"] {
        nodes.push(presence_node(&url, id).await);
    }
    let room = "room.lobby";
    // A watcher and two plain members on each node.
    let mut watchers = Vec::new();
    let mut members: Vec<Vec<Client>> = Vec::new();
    for node in &nodes {
        let mut w = connect(&ws(node), "watcher", &["room.>"], &["room.>"]).await;
        w.subscribe(&[room]).await;
        watchers.push(w);
        let mut on_node = Vec::new();
        for m in 0..2 {
            let mut c = connect(&ws(node), &format!("m{m}"), &["room.>"], &[]).await;
            c.subscribe(&[room]).await;
            on_node.push(c);
        }
        members.push(on_node);
    }
    let all: Vec<String> = watchers
        .iter()
        .chain(members.iter().flatten())
        .map(session)
        .collect();
    // Every watcher sees every join after its own subscription, once each;
    // the first watcher sees all nine.
    let mut heard: Vec<Vec<(String, String)>> = vec![Vec::new(); 3];
    let expect_all = all.iter().map(|s| join(s)).collect::<Vec<_>>();
    changes_until(&mut watchers[0], &mut heard[0], |h| h.len() >= 9).await;
    assert_eq!(
        sorted_pairs(&heard[0]),
        sorted_pairs(&expect_all),
        "watcher 0: every join once"
    );
    let (status, body) = http(
        nodes[0].admin,
        "GET",
        &format!("/v1/topics/{room}/presence"),
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sessions(&body["members"]), sorted(all.clone()));

    // n3 dies without a word.
    let gone: Vec<String> = std::iter::once(session(&watchers[2]))
        .chain(members[2].iter().map(session))
        .collect();
    let killed = tokio::time::Instant::now();
    nodes[2].proc.signal("KILL");
    for w in 0..2 {
        let want_leaves = gone.len();
        changes_until(&mut watchers[w], &mut heard[w], |h| {
            h.iter().filter(|(k, _)| k == "leave").count() >= want_leaves
        })
        .await;
        let leaves: Vec<(String, String)> = heard[w]
            .iter()
            .filter(|(k, _)| k == "leave")
            .cloned()
            .collect();
        let want: Vec<(String, String)> = gone.iter().map(|s| leave(s)).collect();
        assert_eq!(
            sorted_pairs(&leaves),
            sorted_pairs(&want),
            "watcher {w}: one leave per member of n3"
        );
    }
    let took = killed.elapsed();
    eprintln!("members of the killed node left after {took:?} (presence.timeout {TIMEOUT:?})");
    assert!(
        took < TIMEOUT + Duration::from_millis(500),
        "left after {took:?}, beyond presence.timeout {TIMEOUT:?}"
    );
    // Nothing more: no second leave, and the survivors are intact.
    for w in watchers.iter_mut().take(2) {
        w.expect_silence(TIMEOUT).await;
    }
    let reply = watchers[0]
        .call(json!({"type": "presence", "topic": room}))
        .await;
    let survivors: Vec<String> = all.iter().filter(|s| !gone.contains(s)).cloned().collect();
    assert_eq!(sessions(&reply["members"]), sorted(survivors));
}

fn sorted_pairs(v: &[(String, String)]) -> Vec<(String, String)> {
    let mut v = v.to_vec();
    v.sort();
    v
}

/// Per session, joins and leaves must alternate, starting with a join.
fn alternating(heard: &[(String, String)]) -> BTreeMap<String, Vec<String>> {
    let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (kind, s) in heard {
        by.entry(s.clone()).or_default().push(kind.clone());
    }
    for (s, kinds) in &by {
        for (i, k) in kinds.iter().enumerate() {
            let want = if i % 2 == 0 { "join" } else { "leave" };
            assert_eq!(
                k, want,
                "session {s}: {kinds:?} does not alternate join/leave"
            );
        }
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_comes_back_without_resurrecting_anyone() {
    let redis = herald_testkit::TestRedis::start();
    let url = redis.url();
    let n1 = presence_node(&url, "n1").await;
    let n2 = presence_node(&url, "n2").await;
    let room = "room.pause";
    let mut watcher = connect(&ws(&n1), "watcher", &["room.>"], &["room.>"]).await;
    watcher.subscribe(&[room]).await;
    let mut stays = connect(&ws(&n2), "stays", &["room.>"], &[]).await;
    stays.subscribe(&[room]).await;
    let mut goes = connect(&ws(&n2), "goes", &["room.>"], &[]).await;
    goes.subscribe(&[room]).await;
    let (me, s_stays, s_goes) = (session(&watcher), session(&stays), session(&goes));
    let mut heard = Vec::new();
    changes_until(&mut watcher, &mut heard, |h| h.len() >= 3).await;

    // n2 stops past the timeout: its members leave.
    n2.proc.signal("STOP");
    changes_until(&mut watcher, &mut heard, |h| {
        h.contains(&leave(&s_stays)) && h.contains(&leave(&s_goes))
    })
    .await;
    // Meanwhile one of its clients gives up; the other stays connected.
    drop(goes);
    n2.proc.signal("CONT");
    // The open session joins again; the closed one stays gone.
    changes_until(&mut watcher, &mut heard, |h| {
        h.iter().filter(|c| **c == join(&s_stays)).count() >= 2
    })
    .await;
    eventually("only the open sessions to be present", async || {
        let reply = watcher
            .call(json!({"type": "presence", "topic": room}))
            .await;
        sessions(&reply["members"]) == sorted(vec![me.clone(), s_stays.clone()])
    })
    .await;
    // Whatever n2 did with the closed session on waking (it may have seen
    // it close before or after registering again), no session joined
    // without leaving first, and the closed one ends gone.
    watcher.expect_silence(TIMEOUT).await;
    let by = alternating(&heard);
    assert_eq!(
        by[&s_goes].last().map(String::as_str),
        Some("leave"),
        "{by:?}"
    );
    assert_eq!(
        by[&s_stays].last().map(String::as_str),
        Some("join"),
        "{by:?}"
    );
    assert_eq!(by[&me], vec!["join"], "{by:?}");
    stays.assert_alive().await;
}
