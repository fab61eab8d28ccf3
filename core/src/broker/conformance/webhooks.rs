//! The webhook checks of the conformance suite (contract §10.6): a
//! session's events queued once each, in the order they happened, until
//! removed; one lease holder at a time. The broker under test is built
//! with [`SETTINGS`].

use super::*;
use crate::webhooks::{Events, Kind, Queued, SessionOpen, WebhookSettings, disconnected_data};

/// The webhook settings the suite expects the broker under test to be
/// built with: every type.
pub const SETTINGS: WebhookSettings = WebhookSettings {
    events: Events::ALL,
    max_queue: 100_000,
    vacated_delay: Duration::from_millis(200),
};

/// The queued events about `session`, once at least `n` are there.
async fn queued_for<B: Broker>(broker: &B, session: &str, n: usize) -> Vec<Queued> {
    queued_where(broker, n, |e| e.session.as_deref() == Some(session)).await
}

/// The queued events `mine` picks, once at least `n` are there.
async fn queued_where<B: Broker>(
    broker: &B,
    n: usize,
    mine: impl Fn(&Queued) -> bool,
) -> Vec<Queued> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (all, _) = broker.webhooks_read(100_000).await.expect("read the queue");
        let mine: Vec<Queued> = all.into_iter().filter(|e| mine(e)).collect();
        if mine.len() >= n || tokio::time::Instant::now() > deadline {
            return mine;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(super) async fn webhooks_pair_and_keep_order<B: Broker>(broker: &B) {
    let topic = unique_topic("webhooks");
    let session = format!("wh-{}", crate::random_hex(4));
    let bye = || {
        Some(disconnected_data(
            "ann",
            &session,
            "n1",
            1000,
            "normal closure",
        ))
    };
    broker.session_opened(SessionOpen::new(Events::ALL, "ann", &session, "n1", None));
    broker
        .join(&topic, member("ann", &session))
        .await
        .expect("join");
    broker
        .join(&topic, member("ann", &session))
        .await
        .expect("a repeated join");
    broker.leave(&topic, &session);
    broker.session_closed(&session, bye());
    broker.session_closed(&session, bye());
    let queued = queued_for(broker, &session, 4).await;
    let kinds: Vec<Kind> = queued.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [Kind::Connected, Kind::Join, Kind::Leave, Kind::Disconnected],
        "once each, in order"
    );
    for e in &queued {
        let body: serde_json::Value = serde_json::from_str(&e.body()).expect("a JSON body");
        assert_eq!(body["id"], e.id.as_str());
        assert_eq!(body["type"], e.kind.name());
        assert!(e.ts > 0);
    }
    assert_eq!(queued[1].topic.as_deref(), Some(topic.as_str()));
    let ids: Vec<String> = queued.iter().map(|e| e.id.clone()).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), 4, "unique ids");
    // A session closed without being opened queues nothing.
    broker.session_closed(&format!("{session}-never"), bye());

    // Removed once done; the rest stays.
    broker.webhooks_done(&ids[..2]).await.expect("done");
    let left = queued_for(broker, &session, 2).await;
    assert_eq!(
        left.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        [ids[2].as_str(), ids[3].as_str()]
    );
    broker.webhooks_done(&ids).await.expect("done");
    assert!(queued_for(broker, &session, 1).await.is_empty());

    // A topic held by no node any more is vacated after the delay, unless
    // it is held again in time (then neither event).
    let room = unique_topic("occupancy");
    let about = |e: &Queued| e.topic.as_deref() == Some(room.as_str()) && e.session.is_none();
    subscribed(broker, &room).await;
    let queued = queued_where(broker, 1, about).await;
    assert_eq!(
        queued.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [Kind::Occupied]
    );
    broker.unsubscribe(&room);
    subscribed(broker, &room).await;
    broker.unsubscribe(&room);
    tokio::time::sleep(SETTINGS.vacated_delay * 2).await;
    let queued = queued_where(broker, 2, about).await;
    assert_eq!(
        queued.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [Kind::Occupied, Kind::Vacated],
        "a topic back within the delay is neither vacated nor occupied again"
    );
    let ids: Vec<String> = queued.iter().map(|e| e.id.clone()).collect();
    broker.webhooks_done(&ids).await.expect("done");

    // One holder at a time.
    let (a, b) = (crate::random_hex(4), crate::random_hex(4));
    let ttl = Duration::from_secs(5);
    assert!(broker.webhooks_lease(&a, ttl).await.expect("lease"));
    assert!(!broker.webhooks_lease(&b, ttl).await.expect("lease"));
    assert!(broker.webhooks_lease(&a, ttl).await.expect("renewed"));
    assert!(
        broker
            .webhooks_lease(&a, Duration::from_millis(1))
            .await
            .expect("renewed")
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(broker.webhooks_lease(&b, ttl).await.expect("taken over"));
}
