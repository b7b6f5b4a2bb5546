//! `Watch` on one node through the client crate: each call's events, expiry
//! by deadline and idle timeout with the ticket's last payload, filters,
//! resuming after a position, and watchers ended on drain.

#[allow(dead_code)] // not every helper is used here
mod common;

use std::time::Duration;

use tessera_client::{
    Client, EventCause, EventStream, EventType, NewTicket, TicketEvent, WatchFilter, WatchItem,
};

async fn next_event(stream: &mut EventStream) -> TicketEvent {
    match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
        Ok(Ok(Some(WatchItem::Event(event)))) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn watch(client: &Client, filter: WatchFilter) -> EventStream {
    client.watch(filter).await.expect("watch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_reports_its_events_with_the_tickets_last_state() {
    let (node, client) = common::start().await;
    let mut events = watch(&client, WatchFilter::default()).await;
    let hour = Duration::from_secs(3600);
    client
        .put(
            NewTicket::new("TGT-1-w", hour)
                .principal("alice")
                .payload(b"services: a, b".to_vec()),
        )
        .await
        .unwrap();
    client
        .put(
            NewTicket::new("ST-1-w", Duration::from_secs(10))
                .parent("TGT-1-w")
                .max_uses(1),
        )
        .await
        .unwrap();
    client.consume("ST-1-w").await.unwrap();
    client
        .put(NewTicket::new("ST-2-w", Duration::from_secs(10)).parent("TGT-1-w"))
        .await
        .unwrap();
    assert_eq!(client.delete("TGT-1-w").await.unwrap(), 2);
    client
        .put(NewTicket::new("TGT-2-w", hour).principal("bob"))
        .await
        .unwrap();
    client.delete_for("bob").await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..8 {
        let event = next_event(&mut events).await;
        seen.push((event.ticket.id.clone(), event.event, event.cause));
        if event.ticket.id == "TGT-1-w" && event.event == EventType::Deleted {
            assert_eq!(
                &event.ticket.payload[..],
                b"services: a, b",
                "a death carries the last payload"
            );
            assert_eq!(event.ticket.principal.as_deref(), Some("alice"));
            assert_eq!(event.node_id, common::NODE_ID);
        }
    }
    let expected = [
        ("TGT-1-w", EventType::Created, None),
        ("ST-1-w", EventType::Created, None),
        ("ST-1-w", EventType::UsedUp, None),
        ("ST-2-w", EventType::Created, None),
        ("TGT-1-w", EventType::Deleted, Some(EventCause::Delete)),
        ("ST-2-w", EventType::Deleted, Some(EventCause::Cascade)),
        ("TGT-2-w", EventType::Created, None),
        ("TGT-2-w", EventType::Deleted, Some(EventCause::DeleteFor)),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(id, e, c)| (id.to_string(), *e, *c))
        .collect();
    assert_eq!(seen, expected);
    common::stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiries_by_deadline_and_by_idle_timeout_are_reported_once_with_the_payload() {
    let (node, client) = common::start().await;
    let filter = WatchFilter {
        kinds: vec!["TGT".into()],
        events: vec![EventType::Expired],
        resume_after: None,
    };
    let mut events = watch(&client, filter).await;
    client
        .put(NewTicket::new("TGT-hard", Duration::from_millis(400)).payload(b"hard".to_vec()))
        .await
        .unwrap();
    client
        .put(
            NewTicket::new("TGT-idle", Duration::from_secs(3600))
                .idle(Duration::from_millis(400))
                .payload(b"idle".to_vec()),
        )
        .await
        .unwrap();
    // Filtered out: another kind, and events that are not expiries.
    client
        .put(NewTicket::new("ST-short", Duration::from_millis(300)))
        .await
        .unwrap();
    client
        .put(NewTicket::new("TGT-kept", Duration::from_secs(3600)))
        .await
        .unwrap();

    let mut got = Vec::new();
    for _ in 0..2 {
        let event = next_event(&mut events).await;
        assert_eq!(event.event, EventType::Expired);
        got.push((
            event.ticket.id.clone(),
            event.cause,
            event.ticket.payload.to_vec(),
        ));
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            (
                "TGT-hard".to_string(),
                Some(EventCause::Deadline),
                b"hard".to_vec()
            ),
            (
                "TGT-idle".to_string(),
                Some(EventCause::Idle),
                b"idle".to_vec()
            ),
        ]
    );
    // Nothing else comes: no second report of either, nothing filtered out.
    let more = tokio::time::timeout(Duration::from_secs(2), events.message()).await;
    assert!(more.is_err(), "unexpected item: {more:?}");
    common::stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_resumes_after_its_last_position_gets_what_it_missed() {
    let (node, client) = common::start().await;
    let mut first = watch(&client, WatchFilter::default()).await;
    let ten = Duration::from_secs(600);
    client.put(NewTicket::new("TGT-a", ten)).await.unwrap();
    let last = next_event(&mut first).await;
    assert_eq!(last.ticket.id, "TGT-a");
    drop(first);
    // Missed while away.
    client.put(NewTicket::new("TGT-b", ten)).await.unwrap();
    client.put(NewTicket::new("TGT-c", ten)).await.unwrap();
    let mut resumed = watch(
        &client,
        WatchFilter {
            resume_after: Some(last.position.clone()),
            ..WatchFilter::default()
        },
    )
    .await;
    assert_eq!(next_event(&mut resumed).await.ticket.id, "TGT-b");
    assert_eq!(next_event(&mut resumed).await.ticket.id, "TGT-c");

    // A position of another run: a gap of unknown size, then what is held.
    let foreign = format!("{:016x}-1", 12345u64);
    let mut other = watch(
        &client,
        WatchFilter {
            resume_after: Some(foreign),
            ..WatchFilter::default()
        },
    )
    .await;
    match other.message().await {
        Ok(Some(WatchItem::Gap { missed: None, .. })) => {}
        item => panic!("expected a gap, got {item:?}"),
    }
    assert_eq!(next_event(&mut other).await.ticket.id, "TGT-a");

    // A malformed position is refused with a clear message.
    let refused = client
        .watch(WatchFilter {
            resume_after: Some("not-a-position".into()),
            ..WatchFilter::default()
        })
        .await
        .err()
        .expect("refused");
    assert!(refused.to_string().contains("resume_after"), "{refused}");
    common::stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_ends_its_watchers_with_unavailable() {
    let (node, client) = common::start().await;
    let mut events = watch(&client, WatchFilter::default()).await;
    let stopping = tokio::spawn(common::stop(node));
    let ended = tokio::time::timeout(Duration::from_secs(20), events.message())
        .await
        .expect("the stream ends");
    match ended {
        Err(error) => assert!(error.to_string().contains("draining"), "{error}"),
        other => panic!("expected an error, got {other:?}"),
    }
    stopping.await.unwrap();
}

/// A watcher that reads nothing while the node's event buffer turns over is
/// ended with a message saying how to resume, the node keeps serving, and
/// resuming after the last position starts with a gap that counts what was
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_too_slow_for_the_buffer_is_ended_and_resumes_after_a_counted_gap() {
    let config = tessera::config::NodeConfig {
        watch_buffer_bytes: tessera::config::MIN_WATCH_BUFFER,
        ..common::config()
    };
    let (node, client) = common::start_with(config).await;
    let mut stalled = watch(&client, WatchFilter::default()).await;
    // One event read, so the watcher has a position to resume from even if
    // the node drops it before it reads another.
    client
        .put(NewTicket::new("TGT-first-slow", Duration::from_secs(600)))
        .await
        .unwrap();
    let first = next_event(&mut stalled).await;
    let payload = vec![b'x'; 2048];
    for wave in 0..40 {
        let puts = (0..100).map(|n| {
            let ticket = NewTicket::new(format!("TGT-{wave}-{n}-slow"), Duration::from_secs(600))
                .payload(payload.clone());
            let client = client.clone();
            async move { client.put(ticket).await }
        });
        for put in futures::future::join_all(puts).await {
            put.expect("the node keeps serving writes while a watcher stalls");
        }
    }
    // Now read: what was in flight (perhaps nothing), then the end.
    let mut last = Some(first.position.clone());
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), stalled.message()).await {
            Ok(Ok(Some(item))) => last = Some(item.position().to_owned()),
            Ok(Ok(None)) => panic!("the stream ended without saying why"),
            Ok(Err(error)) => break error,
            Err(_) => panic!("the stalled watcher was never ended"),
        }
    };
    assert!(
        matches!(&ended, tessera_client::Error::Unavailable(m) if m.contains("watcher too slow")),
        "{ended:?}"
    );
    let last = last.expect("some events were in flight");
    let mut resumed = watch(
        &client,
        WatchFilter {
            resume_after: Some(last),
            ..WatchFilter::default()
        },
    )
    .await;
    match resumed.message().await {
        Ok(Some(WatchItem::Gap {
            missed: Some(missed),
            ..
        })) => assert!(missed > 100, "only {missed} missed"),
        other => panic!("expected a counted gap, got {other:?}"),
    }
    assert_eq!(next_event(&mut resumed).await.event, EventType::Created);
    common::stop(node).await;
}
