//! The presence checks of the conformance suite: joins and leaves heard
//! once each, in order, and pages that cover every member exactly once.

use super::*;

/// A member of `topic` for the presence checks.
pub fn member(sub: &str, session: &str) -> Member {
    Member {
        sub: sub.to_owned(),
        session: session.to_owned(),
        node: "n1".to_owned(),
        since: 1_767_222_000_000,
        info: None,
    }
}

pub(super) async fn presence_joins_and_leaves_once<B: Broker>(broker: &B, sink: &CollectingSink) {
    let topic = unique_topic("presence");
    subscribed(broker, &topic).await;
    let (a, b, c) = (
        member("alice", "s1"),
        member("bob", "s2"),
        member("carol", "s3"),
    );
    broker.join(&topic, a.clone()).await.expect("join");
    broker
        .join(&topic, a.clone())
        .await
        .expect("a repeated join");
    broker.join(&topic, b.clone()).await.expect("join");
    let page = broker.members(&topic, None, 10).await.expect("members");
    let mut members = page.members.clone();
    crate::broker::presence::sort(&mut members);
    assert_eq!(members, vec![a.clone(), b.clone()], "both, whole");
    assert_eq!((page.count, page.users, page.next_cursor), (2, 2, None));
    // A second session of alice: one more session, no more users.
    broker
        .join(&topic, member("alice", "s9"))
        .await
        .expect("join");
    let page = broker.members(&topic, None, 0).await.expect("counts");
    assert_eq!((page.count, page.users), (3, 2), "counts only");
    assert!(page.members.is_empty() && page.next_cursor.is_none());
    broker.leave(&topic, "s9");
    broker.leave(&topic, "s1");
    broker.leave(&topic, "s1");
    broker.leave(&topic, "nobody");
    // Neither awaited: the leave still follows the join.
    drop(broker.join(&topic, c));
    broker.leave(&topic, "s3");
    // An awaited join after them: every change before it was stored (and
    // announced) before it.
    broker
        .join(&topic, member("dan", "s4"))
        .await
        .expect("join");
    let join = |s: &str| (Change::Join, s.to_owned());
    let leave = |s: &str| (Change::Leave, s.to_owned());
    let heard = sink.wait_for_change(&topic, &join("s4")).await;
    assert_eq!(
        heard,
        vec![
            join("s1"),
            join("s2"),
            join("s9"),
            leave("s9"),
            leave("s1"),
            join("s3"),
            leave("s3"),
            join("s4")
        ],
        "each member joins once and leaves once, in order"
    );
    let (sessions, count, users) = every_member(broker, &topic, 10).await;
    assert_eq!(sessions, vec!["s2", "s4"]);
    assert_eq!((count, users), (2, 2));
    broker.leave(&topic, "s2");
    broker.leave(&topic, "s4");
    broker
        .join(&topic, member("eve", "s5"))
        .await
        .expect("join");
    sink.wait_for_change(&topic, &join("s5")).await;
    let (left, _, _) = every_member(broker, &topic, 10).await;
    assert_eq!(left, vec!["s5"]);
    broker.leave(&topic, "s5");
}

/// Every member of `topic`, walked in pages of `limit` (sessions sorted,
/// each once), and the counts of the first page.
async fn every_member<B: Broker>(
    broker: &B,
    topic: &Topic,
    limit: usize,
) -> (Vec<String>, u64, u64) {
    let mut sessions = Vec::new();
    let mut cursor: Option<String> = None;
    let mut counts = None;
    for _ in 0..1000 {
        let page = broker
            .members(topic, cursor.as_deref(), limit)
            .await
            .expect("members");
        assert!(
            page.members.len() <= limit,
            "a page holds at most its limit"
        );
        counts.get_or_insert((page.count, page.users));
        sessions.extend(page.members.into_iter().map(|m| m.session));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert!(cursor.is_none(), "the walk ends");
    sessions.sort();
    sessions.dedup();
    let (count, users) = counts.unwrap_or_default();
    (sessions, count, users)
}

pub(super) async fn presence_pages_cover_every_member<B: Broker>(broker: &B) {
    let topic = unique_topic("presence-pages");
    subscribed(broker, &topic).await;
    let mut want = Vec::new();
    for i in 0..45 {
        let session = format!("p{i:03}");
        let sub = format!("user{}", i % 9);
        broker
            .join(&topic, member(&sub, &session))
            .await
            .expect("join");
        want.push(session);
    }
    for limit in [1, 7, 100] {
        let (sessions, count, users) = every_member(broker, &topic, limit).await;
        assert_eq!(sessions, want, "pages of {limit} cover every member");
        assert_eq!((count, users), (45, 9));
    }
    for session in &want {
        broker.leave(&topic, session);
    }
    broker
        .join(&topic, member("last", "z"))
        .await
        .expect("join");
    let (sessions, count, users) = every_member(broker, &topic, 10).await;
    assert_eq!((sessions, count, users), (vec!["z".to_owned()], 1, 1));
    broker.leave(&topic, "z");
}
