//! The history checks of the conformance suite: pages read forwards, a
//! `since` the history cannot serve, an empty topic, and positions of
//! topics nobody published to.

use super::*;

pub(super) async fn quiet_topics_have_positions<B: Broker>(broker: &B, sink: &CollectingSink) {
    let topic = unique_topic("position");
    subscribed(broker, &topic).await;
    let start = broker.position(&topic).await.expect("position");
    assert_eq!(start.seq, 0, "no event yet: {start}");
    assert_eq!(broker.position(&topic).await.expect("position"), start);
    let ids = broker
        .publish((1..=3).map(|n| publication(&topic, n)).collect())
        .await
        .expect("publish");
    assert_eq!(
        ids[0],
        Position {
            epoch: start.epoch,
            seq: 1
        },
        "the epoch goes on"
    );
    sink.wait_for(&topic, 3).await;
    let page = broker
        .history(&topic, Some(&start.to_string()), 10)
        .await
        .expect("history");
    assert!(page.recovered, "a position is a valid since");
    assert_eq!(
        page.events.iter().map(n_of).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(broker.position(&topic).await.expect("position"), ids[2]);
}

pub(super) async fn history_pages_forward<B: Broker>(broker: &B, sink: &CollectingSink) {
    let topic = unique_topic("history");
    subscribed(broker, &topic).await;
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.extend(
            broker
                .publish(vec![publication(&topic, n)])
                .await
                .expect("publish"),
        );
    }
    sink.wait_for(&topic, 8).await;

    let all = broker.history(&topic, None, 100).await.expect("history");
    assert!(all.recovered);
    assert_eq!(
        all.events.iter().map(n_of).collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>()
    );

    let page = broker
        .history(&topic, Some(&ids[2].to_string()), 3)
        .await
        .expect("history");
    assert!(page.recovered);
    assert_eq!(
        page.events.iter().map(n_of).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );

    let tail = broker
        .history(&topic, Some(&ids[7].to_string()), 10)
        .await
        .expect("history");
    assert!(
        tail.recovered && tail.events.is_empty(),
        "since = latest recovers nothing"
    );
    let head = broker.history(&topic, None, 0).await.expect("history");
    assert!(head.events.is_empty(), "limit 0 reads no events");
    assert_eq!(head.head, Some(ids[7]), "but still reports the head");
    let from_start = Position {
        epoch: ids[0].epoch,
        seq: 0,
    };
    let all = broker
        .history(&topic, Some(&from_start.to_string()), 100)
        .await
        .expect("history");
    assert!(
        all.recovered,
        "seq 0 of the current epoch means from the start"
    );
    assert_eq!(all.events.len(), 8);

    let first = broker.history(&topic, None, 2).await.expect("history");
    assert_eq!(
        first.events.iter().map(n_of).collect::<Vec<_>>(),
        vec![0, 1]
    );
}

pub(super) async fn unrecoverable_since<B: Broker>(broker: &B, sink: &CollectingSink) {
    let topic = unique_topic("window");
    subscribed(broker, &topic).await;
    let total = HISTORY_SIZE as u64 + 5;
    let mut ids = Vec::new();
    for n in 0..total {
        ids.extend(
            broker
                .publish(vec![publication(&topic, n)])
                .await
                .expect("publish"),
        );
    }
    sink.wait_for(&topic, total as usize).await;

    let too_old = broker
        .history(&topic, Some(&ids[0].to_string()), 100)
        .await
        .expect("history");
    assert!(
        !too_old.recovered,
        "an id older than the window is not recoverable"
    );
    assert_eq!(
        too_old.events.len(),
        HISTORY_SIZE,
        "events start at the oldest kept"
    );
    assert_eq!(n_of(&too_old.events[0]), total - HISTORY_SIZE as u64);

    let edge = ids[total as usize - HISTORY_SIZE - 1];
    let page = broker
        .history(&topic, Some(&edge.to_string()), 100)
        .await
        .expect("history");
    assert!(
        page.recovered,
        "the id just before the oldest kept is recoverable"
    );
    assert_eq!(page.events.len(), HISTORY_SIZE);

    let other_epoch = Position {
        epoch: ids[0].epoch.wrapping_add(1).max(1),
        seq: ids[20].seq,
    };
    for since in [
        other_epoch.to_string(),
        "garbage".to_owned(),
        format!("{:08x}-999999", ids[0].epoch),
    ] {
        let page = broker
            .history(&topic, Some(&since), 5)
            .await
            .expect("history");
        assert!(!page.recovered, "{since} must not be recoverable");
        assert_eq!(page.events.len(), 5);
    }
}

pub(super) async fn empty_topic_history<B: Broker>(broker: &B) {
    let topic = unique_topic("empty");
    let page = broker.history(&topic, None, 10).await.expect("history");
    assert!(page.events.is_empty());
    let page = broker
        .history(&topic, Some("00000001-1"), 10)
        .await
        .expect("history");
    assert!(page.events.is_empty() && !page.recovered);
    assert_eq!(page.head, None);
}
