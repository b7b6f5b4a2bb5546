use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;

fn ticket(id: &str, payload: usize) -> TicketView {
    TicketView {
        id: id.to_owned(),
        kind: "TGT".to_owned(),
        principal: Some("alice".to_owned()),
        parent: None,
        payload: Bytes::from(vec![7u8; payload]),
        created_at_ms: 1,
        deadline_ms: 2,
        idle_ms: None,
        last_used_ms: 1,
        uses: 0,
        max_uses: 0,
        version: "v".to_owned(),
    }
}

/// A log that records everything from the start, as after a first
/// subscriber that asked for every event.
fn wanted(log: EventLog) -> Arc<EventLog> {
    let log = Arc::new(log);
    drop(log.subscribe(None, &Interest::all()).unwrap());
    log
}

async fn event(sub: &mut Subscription) -> Arc<Event> {
    match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
        Ok(Ok(Delivery::Event(event))) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test]
async fn a_subscriber_reads_the_events_recorded_after_it_subscribed_in_order() {
    let log = wanted(EventLog::new());
    log.record(EventKind::Created, ticket("TGT-0", 0), 1);
    let mut sub = log.subscribe(None, &Interest::all()).unwrap();
    let waiting = tokio::spawn(async move {
        let first = event(&mut sub).await;
        let second = event(&mut sub).await;
        (first, second)
    });
    tokio::task::yield_now().await;
    log.record(EventKind::Expired { idle: true }, ticket("TGT-1", 0), 2);
    log.record(EventKind::UsedUp, ticket("ST-2", 0), 3);
    let (first, second) = waiting.await.unwrap();
    assert_eq!((first.seq, first.ticket.id.as_str()), (2, "TGT-1"));
    assert_eq!(first.kind, EventKind::Expired { idle: true });
    assert_eq!((second.seq, second.ticket.id.as_str()), (3, "ST-2"));
}

#[tokio::test]
async fn a_subscriber_resumes_after_its_last_position_without_loss_or_repeat() {
    let log = wanted(EventLog::new());
    for n in 0..5 {
        log.record(EventKind::Created, ticket(&format!("TGT-{n}"), 0), n);
    }
    let last_seen = log.position(2);
    let mut sub = log.subscribe(Some(&last_seen), &Interest::all()).unwrap();
    assert_eq!(event(&mut sub).await.seq, 3);
    assert_eq!(event(&mut sub).await.seq, 4);
    assert_eq!(event(&mut sub).await.seq, 5);
}

#[tokio::test]
async fn a_position_older_than_the_ring_resumes_with_a_gap_of_the_missed_count() {
    let log = wanted(EventLog::with_limits(3, usize::MAX));
    for n in 0..10 {
        log.record(EventKind::Created, ticket(&format!("TGT-{n}"), 0), n);
    }
    // Kept: 8, 9, 10. Resuming after 4 misses 5, 6, 7.
    let mut sub = log
        .subscribe(Some(&log.position(4)), &Interest::all())
        .unwrap();
    match sub.next().await {
        Ok(Delivery::Gap {
            missed,
            resume_after,
        }) => assert_eq!((missed, resume_after), (Some(3), 7)),
        other => panic!("expected a gap, got {other:?}"),
    }
    assert_eq!(event(&mut sub).await.seq, 8);
}

#[tokio::test]
async fn a_position_of_another_run_replays_the_ring_after_a_gap_of_unknown_size() {
    let earlier = wanted(EventLog::new());
    earlier.record(EventKind::Created, ticket("TGT-0", 0), 0);
    let log = wanted(EventLog::new());
    assert_ne!(earlier.epoch(), log.epoch());
    log.record(EventKind::Created, ticket("TGT-1", 0), 1);
    let mut sub = log
        .subscribe(Some(&earlier.position(1)), &Interest::all())
        .unwrap();
    assert!(matches!(
        sub.next().await,
        Ok(Delivery::Gap { missed: None, .. })
    ));
    assert_eq!(event(&mut sub).await.ticket.id, "TGT-1");
}

#[tokio::test]
async fn bad_and_future_positions_are_refused() {
    let log = wanted(EventLog::new());
    log.record(EventKind::Created, ticket("TGT-0", 0), 0);
    for bad in ["", "12", "xyz-1", "0000000000000001-", "00000000000000zz-1"] {
        assert_eq!(
            log.subscribe(Some(bad), &Interest::all()).err(),
            Some(PositionError::Malformed),
            "{bad:?}"
        );
    }
    assert_eq!(
        log.subscribe(Some(&log.position(5)), &Interest::all())
            .err(),
        Some(PositionError::Ahead(5))
    );
}

#[tokio::test]
async fn a_subscriber_the_ring_moved_past_is_told_how_many_it_missed() {
    let log = wanted(EventLog::with_limits(4, usize::MAX));
    let mut sub = log.subscribe(None, &Interest::all()).unwrap();
    for n in 0..10 {
        log.record(EventKind::Created, ticket(&format!("TGT-{n}"), 0), n);
    }
    // Next was 1; the ring keeps 7..=10.
    assert_eq!(
        sub.next().await.err(),
        Some(Ended::FellBehind { missed: 6 })
    );
}

#[tokio::test]
async fn the_ring_keeps_within_its_byte_budget() {
    let log = wanted(EventLog::with_limits(usize::MAX, 10_000));
    for n in 0..100 {
        log.record(EventKind::Created, ticket(&format!("TGT-{n}"), 1_000), n);
    }
    let (events, bytes) = log.held();
    assert!(bytes <= 10_000, "{bytes} bytes held");
    assert!((5..=10).contains(&events), "{events} events held");
}

#[tokio::test]
async fn closing_the_log_ends_waiting_subscribers() {
    let log = wanted(EventLog::new());
    let mut sub = log.subscribe(None, &Interest::all()).unwrap();
    let waiting = tokio::spawn(async move { sub.next().await });
    tokio::task::yield_now().await;
    log.close();
    let ended = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.err(), Some(Ended::Closed));
}

#[test]
fn watchers_beyond_the_limit_are_refused_until_one_leaves() {
    let log = wanted(EventLog::new());
    let slots: Vec<_> = (0..MAX_WATCHERS)
        .map(|_| log.admit_watcher().expect("admitted"))
        .collect();
    assert!(log.admit_watcher().is_none());
    drop(slots);
    assert_eq!(log.watchers(), 0);
    assert!(log.admit_watcher().is_some());
}

#[tokio::test]
async fn nothing_is_recorded_before_the_first_subscriber() {
    let log = Arc::new(EventLog::new());
    log.record(EventKind::Created, ticket("TGT-0", 0), 0);
    assert_eq!(log.held().0, 0);
    let mut sub = log.subscribe(None, &Interest::all()).unwrap();
    log.record(EventKind::Created, ticket("TGT-1", 0), 1);
    assert_eq!(log.held().0, 1);
    assert_eq!(event(&mut sub).await.ticket.id, "TGT-1");
}

#[tokio::test]
async fn only_events_some_watcher_asked_for_are_recorded() {
    let log = Arc::new(EventLog::new());
    let expiries = Interest {
        types: EventKind::Expired { idle: false }.bit(),
        kinds: Some(["TGT".to_owned()].into()),
    };
    let mut sub = log.subscribe(None, &expiries).unwrap();
    log.record(EventKind::Created, ticket("TGT-0", 0), 0);
    let mut st = ticket("ST-1", 0);
    st.kind = "ST".into();
    log.record(EventKind::Expired { idle: false }, st, 1);
    log.record(EventKind::Expired { idle: true }, ticket("TGT-2", 0), 2);
    assert_eq!(log.held().0, 1, "only the TGT expiry is kept");
    assert_eq!(event(&mut sub).await.ticket.id, "TGT-2");
}

#[tokio::test]
async fn a_watcher_asking_for_more_than_was_recorded_resumes_with_a_gap() {
    let log = Arc::new(EventLog::new());
    let expiries = Interest {
        types: EventKind::Expired { idle: false }.bit(),
        kinds: None,
    };
    drop(log.subscribe(None, &expiries).unwrap());
    log.record(EventKind::Expired { idle: false }, ticket("TGT-0", 0), 0);
    log.record(EventKind::Created, ticket("TGT-1", 0), 1);
    let after = log.position(1);
    // The same interest resumes without a gap...
    let mut same = log.subscribe(Some(&after), &expiries).unwrap();
    log.record(EventKind::Expired { idle: true }, ticket("TGT-2", 0), 2);
    assert_eq!(event(&mut same).await.ticket.id, "TGT-2");
    // ...a wider one may have missed the created event nobody asked for.
    let mut wider = log.subscribe(Some(&after), &Interest::all()).unwrap();
    assert!(matches!(
        wider.next().await,
        Ok(Delivery::Gap { missed: None, .. })
    ));
    assert_eq!(event(&mut wider).await.ticket.id, "TGT-2");
}
