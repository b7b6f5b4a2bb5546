//! The `tessera.v1.TicketStore` API end to end: a real node (gRPC server, store,
//! sweeper) on 127.0.0.1 and the real `tessera-client`, as an SSO server uses it.
//! The store's own guarantees are unit-tested in `src/store/tests.rs`; these tests
//! check that they survive the wire (codes, messages, fields, streaming, limits).

#[allow(dead_code)] // not every helper is used here
mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use tessera::clock::Clock;
use tessera::config::NodeConfig;
use tessera_client::{Client, ClientConfig, Error, ListFilter, NewTicket, Ticket, TicketUpdate};
use tokio::task::JoinSet;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Fails with the outcome unless it is `Error::NotFound`.
fn assert_not_found<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) {
    match result {
        Err(Error::NotFound(_)) => {}
        other => panic!("{what}: expected NotFound, got {other:?}"),
    }
}

/// The message of an `Error::InvalidArgument`, or a panic naming the outcome.
fn invalid_argument<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) -> String {
    match result {
        Err(Error::InvalidArgument(message)) => message,
        other => panic!("{what}: expected InvalidArgument, got {other:?}"),
    }
}

fn ids(tickets: &[Ticket]) -> Vec<&str> {
    tickets.iter().map(|t| t.id.as_str()).collect()
}

// ---- 1. put / get ----

#[tokio::test]
async fn put_then_get_round_trips_every_field() {
    let (node, client) = common::start().await;
    let parent = client
        .put(NewTicket::new("TGT-1-roundtrip", HOUR).principal("casuser"))
        .await
        .unwrap();
    let payload = Bytes::from_static(b"\x00\x01serialized\xff\xfe ticket\x00");
    let ttl = Duration::from_millis(90_500);
    let put = client
        .put(
            NewTicket::new("ST-1-roundtrip", ttl)
                .principal("casuser")
                .parent("TGT-1-roundtrip")
                .payload(payload.clone())
                .idle(Duration::from_secs(30))
                .max_uses(3),
        )
        .await
        .unwrap();

    assert_eq!(put.id, "ST-1-roundtrip");
    assert_eq!(put.kind, "ST", "kind defaults to the id's prefix");
    assert_eq!(put.principal.as_deref(), Some("casuser"));
    assert_eq!(put.parent.as_deref(), Some("TGT-1-roundtrip"));
    assert_eq!(put.payload, payload);
    assert_eq!(put.deadline.duration_since(put.created_at).unwrap(), ttl);
    assert!(
        put.deadline < parent.deadline,
        "not capped: shorter than parent"
    );
    assert_eq!(put.idle, Some(Duration::from_secs(30)));
    assert_eq!(put.last_used, put.created_at, "never used yet");
    assert_eq!(put.uses, 0);
    assert_eq!(put.max_uses, 3);
    assert!(!put.version.is_empty());

    let got = client.get("ST-1-roundtrip").await.unwrap();
    assert_eq!(got, put, "get returns exactly what put stored");
    assert_eq!(got.uses, 0, "get records no use");

    // Absent optional fields stay absent; an explicit kind wins over the prefix.
    let bare = client
        .put(NewTicket::new("X9-bare", MINUTE).kind("CUSTOM_1"))
        .await
        .unwrap();
    assert_eq!(bare.kind, "CUSTOM_1");
    assert_eq!((bare.principal, bare.parent, bare.idle), (None, None, None));
    assert!(bare.payload.is_empty());
    assert_eq!(bare.max_uses, 0);
    assert_eq!(client.get("X9-bare").await.unwrap().kind, "CUSTOM_1");

    assert_not_found(client.get("ST-1-never-written").await, "missing id");
    common::stop(node).await;
}

// ---- 2. create_only / upsert / id reuse ----

#[tokio::test]
async fn create_only_refuses_a_live_id_upsert_replaces_and_deleted_ids_are_never_reused() {
    let (node, client) = common::start().await;
    let first = client
        .put(
            NewTicket::new("TGT-2-upsert", HOUR)
                .principal("alice")
                .payload(&b"first"[..])
                .create_only(true),
        )
        .await
        .unwrap();

    match client
        .put(
            NewTicket::new("TGT-2-upsert", HOUR)
                .payload(&b"second"[..])
                .create_only(true),
        )
        .await
    {
        Err(Error::AlreadyExists(_)) => {}
        other => panic!("create_only on a live id: {other:?}"),
    }
    let unchanged = client.get("TGT-2-upsert").await.unwrap();
    assert_eq!(unchanged, first, "a refused create_only changed the ticket");

    let touched = client.touch("TGT-2-upsert").await.unwrap();
    assert_eq!(touched.uses, 1);

    // A plain put replaces the live ticket whole: new incarnation, uses reset.
    let replaced = client
        .put(NewTicket::new("TGT-2-upsert", MINUTE).payload(&b"second"[..]))
        .await
        .unwrap();
    assert_ne!(replaced.version, first.version);
    assert_eq!(replaced.uses, 0, "uses reset by the new incarnation");
    assert_eq!(&replaced.payload[..], b"second");
    assert_eq!(replaced.principal, None, "replaced whole, not merged");
    assert_eq!(client.get("TGT-2-upsert").await.unwrap(), replaced);

    assert_eq!(client.delete("TGT-2-upsert").await.unwrap(), 1);
    for create_only in [false, true] {
        match client
            .put(NewTicket::new("TGT-2-upsert", MINUTE).create_only(create_only))
            .await
        {
            Err(Error::AlreadyExists(_)) => {}
            other => panic!("reuse of a deleted id (create_only = {create_only}): {other:?}"),
        }
    }
    assert_not_found(client.get("TGT-2-upsert").await, "deleted ticket");
    assert_eq!(client.count().await.unwrap().total, 0);
    common::stop(node).await;
}

// ---- 3. validation ----

#[tokio::test]
async fn bad_input_is_refused_naming_field_and_limit_and_writes_nothing() {
    let config = NodeConfig {
        max_ttl: HOUR,
        max_payload_bytes: 1024,
        ..common::config()
    };
    let (node, client) = common::start_with(config).await;
    let canary = client
        .put(NewTicket::new("TGT-3-canary", MINUTE))
        .await
        .unwrap();

    let long_id = format!("ST-{}", "x".repeat(254));
    assert_eq!(long_id.len(), 257);
    let cases: Vec<(&str, NewTicket, &[&str])> = vec![
        ("empty id", NewTicket::new("", MINUTE), &["id", "empty"]),
        (
            "id with a space",
            NewTicket::new("ST-3 space", MINUTE),
            &["id", "printable"],
        ),
        (
            "257-byte id",
            NewTicket::new(long_id, MINUTE),
            &["id", "257", "256"],
        ),
        (
            "lower-case kind",
            NewTicket::new("ST-3-kind", MINUTE).kind("st"),
            &["kind", "upper-case", "32"],
        ),
        (
            "lower-case id prefix and no kind",
            NewTicket::new("st-3-prefix", MINUTE),
            &["kind", "upper-case"],
        ),
        (
            "ttl 0",
            NewTicket::new("ST-3-ttl0", Duration::ZERO),
            &["ttl", "more than 0"],
        ),
        (
            "ttl over max_ttl",
            NewTicket::new("ST-3-ttlmax", HOUR + Duration::from_millis(1)),
            &["ttl", "max_ttl", "3600000"],
        ),
        (
            "payload over max_payload_bytes",
            NewTicket::new("ST-3-payload", MINUTE).payload(vec![7u8; 1025]),
            &["payload", "1025", "max_payload_bytes", "1024"],
        ),
        (
            "idle over ttl",
            NewTicket::new("ST-3-idle", MINUTE).idle(MINUTE + Duration::from_millis(1)),
            &["idle", "60001", "60000"],
        ),
        (
            "idle 0",
            NewTicket::new("ST-3-idle0", MINUTE).idle(Duration::ZERO),
            &["idle", "more than 0"],
        ),
        (
            "257-byte principal",
            NewTicket::new("ST-3-principal", MINUTE).principal("p".repeat(257)),
            &["principal", "257", "256"],
        ),
        (
            "empty principal",
            NewTicket::new("ST-3-principal0", MINUTE).principal(""),
            &["principal", "empty"],
        ),
        (
            "own parent",
            NewTicket::new("ST-3-self", MINUTE).parent("ST-3-self"),
            &["parent"],
        ),
    ];
    for (what, ticket, expected) in cases {
        let id = ticket.id.clone();
        let message = invalid_argument(client.put(ticket).await, what);
        for part in expected {
            assert!(message.contains(part), "{what}: {message:?} lacks {part:?}");
        }
        assert_eq!(client.count().await.unwrap().total, 1, "{what} wrote");
        if !id.is_empty() && !id.contains(' ') && id.len() <= 256 {
            assert_not_found(client.get(&id).await, what);
        }
        // The node keeps serving.
        assert_eq!(client.get("TGT-3-canary").await.unwrap(), canary, "{what}");
    }

    // Reads validate ids too.
    let message = invalid_argument(client.get("bad id").await, "get with a space");
    assert!(message.contains("id"), "{message}");
    invalid_argument(client.touch("").await, "touch of an empty id");
    invalid_argument(client.sessions_for("").await, "sessions_for empty");
    assert_eq!(client.count().await.unwrap().total, 1);
    common::stop(node).await;
}

#[tokio::test]
async fn a_message_far_over_the_grpc_limit_is_refused_and_the_node_keeps_serving() {
    let config = NodeConfig {
        max_payload_bytes: 1024,
        ..common::config()
    };
    let (node, client) = common::start_with(config).await;
    client
        .put(NewTicket::new("TGT-3-before", MINUTE))
        .await
        .unwrap();

    let huge = NewTicket::new("ST-3-huge", MINUTE).payload(vec![0xAB; 4 * 1024 * 1024]);
    match client.put(huge).await {
        Err(Error::InvalidArgument(_)) => {}
        other => panic!("4 MiB payload with max_payload_bytes = 1024: {other:?}"),
    }

    // Same connection, then a fresh one: both still served.
    assert_eq!(client.count().await.unwrap().total, 1);
    assert_not_found(client.get("ST-3-huge").await, "refused ticket");
    client.get("TGT-3-before").await.unwrap();
    let fresh = common::client_for(&node).await;
    fresh.get("TGT-3-before").await.unwrap();
    // Just over the payload limit is still the store's own message.
    let message = invalid_argument(
        client
            .put(NewTicket::new("ST-3-over", MINUTE).payload(vec![1u8; 1025]))
            .await,
        "1025 bytes",
    );
    assert!(message.contains("max_payload_bytes"), "{message}");
    common::stop(node).await;
}

// ---- 4. parents ----

#[tokio::test]
async fn children_need_a_live_parent_and_never_outlive_it() {
    let (node, client) = common::start().await;
    match client
        .put(NewTicket::new("ST-4-orphan", MINUTE).parent("TGT-4-missing"))
        .await
    {
        Err(Error::FailedPrecondition(message)) => {
            assert!(message.contains("parent"), "{message}")
        }
        other => panic!("child of a missing parent: {other:?}"),
    }
    assert_not_found(client.get("ST-4-orphan").await, "orphan");

    let parent = client
        .put(NewTicket::new("TGT-4-parent", MINUTE))
        .await
        .unwrap();
    let long_child = client
        .put(NewTicket::new("PGT-4-long", 10 * MINUTE).parent("TGT-4-parent"))
        .await
        .unwrap();
    assert_eq!(
        long_child.deadline, parent.deadline,
        "child deadline capped at the parent's"
    );
    let grandchild = client
        .put(NewTicket::new("PT-4-long", HOUR).parent("PGT-4-long"))
        .await
        .unwrap();
    assert_eq!(
        grandchild.deadline, parent.deadline,
        "capped down the chain"
    );
    let short_child = client
        .put(NewTicket::new("ST-4-short", Duration::from_secs(10)).parent("TGT-4-parent"))
        .await
        .unwrap();
    assert_eq!(
        short_child
            .deadline
            .duration_since(short_child.created_at)
            .unwrap(),
        Duration::from_secs(10),
        "a shorter ttl is kept"
    );
    assert_eq!(client.get("PGT-4-long").await.unwrap(), long_child);

    // A deleted parent grants nothing any more.
    assert_eq!(client.delete("TGT-4-parent").await.unwrap(), 4);
    match client
        .put(NewTicket::new("ST-4-late", MINUTE).parent("TGT-4-parent"))
        .await
    {
        Err(Error::FailedPrecondition(_)) => {}
        other => panic!("child of a deleted parent: {other:?}"),
    }
    assert_eq!(client.count().await.unwrap().total, 0);
    common::stop(node).await;
}

// ---- 5. touch ----

#[tokio::test]
async fn touch_records_uses_and_the_last_allowed_use_is_the_last() {
    let (node, client) = common::start().await;
    let put = client
        .put(NewTicket::new("TGT-5-touch", HOUR))
        .await
        .unwrap();
    // Let the server's millisecond clock move on (tokio's clock, not a timing
    // assertion: the node reads the same clock).
    tokio::time::sleep(Duration::from_millis(5)).await;
    let first = client.touch("TGT-5-touch").await.unwrap();
    assert_eq!(first.uses, 1);
    assert!(first.last_used > put.last_used, "last_used moved forward");
    assert_eq!(
        first.version, put.version,
        "touch does not change the version"
    );
    assert_eq!(
        first.deadline, put.deadline,
        "touch never extends the deadline"
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = client.touch("TGT-5-touch").await.unwrap();
    assert_eq!(second.uses, 2);
    assert!(second.last_used > first.last_used);
    assert_eq!(client.get("TGT-5-touch").await.unwrap(), second);

    client
        .put(NewTicket::new("ST-5-twice", MINUTE).max_uses(2))
        .await
        .unwrap();
    assert_eq!(client.touch("ST-5-twice").await.unwrap().uses, 1);
    let last = client.touch("ST-5-twice").await.unwrap();
    assert_eq!((last.uses, last.max_uses), (2, 2), "second use succeeds");
    assert_not_found(client.touch("ST-5-twice").await, "third use");
    assert_not_found(client.get("ST-5-twice").await, "used-up ticket");
    assert_not_found(client.consume("ST-5-twice").await, "consume after use-up");
    assert_not_found(client.touch("ST-5-never").await, "touch of a missing id");
    assert_eq!(client.count().await.unwrap().total, 1, "used up is gone");
    common::stop(node).await;
}

// ---- 6. concurrency ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_consumes_of_single_use_tickets_succeed_exactly_once() {
    const TICKETS: usize = 200;
    const CALLS: usize = 8;
    let (node, client) = common::start().await;
    // Separate connections, each shared by clones.
    let mut clients = vec![client.clone()];
    for _ in 0..3 {
        clients.push(common::client_for(&node).await);
    }

    let mut puts = JoinSet::new();
    for n in 0..TICKETS {
        let client = clients[n % clients.len()].clone();
        puts.spawn(async move {
            client
                .put(NewTicket::new(format!("ST-6-{n}"), MINUTE).max_uses(1))
                .await
        });
    }
    while let Some(put) = puts.join_next().await {
        put.unwrap().unwrap();
    }
    assert_eq!(client.count().await.unwrap().total, TICKETS as u64);

    let mut consumes = JoinSet::new();
    for call in 0..CALLS {
        for n in 0..TICKETS {
            let client = clients[(n + call) % clients.len()].clone();
            consumes.spawn(async move { (n, client.consume(&format!("ST-6-{n}")).await) });
        }
    }
    let mut successes = vec![0usize; TICKETS];
    let mut not_found = vec![0usize; TICKETS];
    while let Some(joined) = consumes.join_next().await {
        let (n, result) = joined.unwrap();
        match result {
            Ok(ticket) => {
                assert_eq!(ticket.uses, 1, "ST-6-{n}");
                successes[n] += 1;
            }
            Err(Error::NotFound(_)) => not_found[n] += 1,
            Err(other) => panic!("ST-6-{n}: unexpected {other:?}"),
        }
    }
    for n in 0..TICKETS {
        assert_eq!(successes[n], 1, "ST-6-{n} consumed {} times", successes[n]);
        assert_eq!(not_found[n], CALLS - 1, "ST-6-{n}");
    }
    assert_eq!(client.count().await.unwrap().total, 0, "all used up");
    common::stop(node).await;
}

/// A raw gRPC client, for the `Batch` RPC as other languages' clients send it.
async fn raw_client(
    node: &tessera::server::NodeHandle,
) -> tessera_proto::v1::ticket_store_client::TicketStoreClient<tonic::transport::Channel> {
    tessera_proto::v1::ticket_store_client::TicketStoreClient::connect(format!(
        "http://{}",
        node.api_addr()
    ))
    .await
    .unwrap()
}

#[tokio::test]
async fn a_batch_answers_each_call_as_its_own_rpc_would_in_order() {
    use tessera_proto::v1 as pb;
    use tessera_proto::v1::batch_call::Call;
    use tessera_proto::v1::batch_outcome::Outcome;

    let (node, client) = common::start().await;
    let mut raw = raw_client(&node).await;
    let put = |id: &str, ttl_ms: u64| {
        Call::Put(pb::PutRequest {
            id: id.into(),
            ttl_ms,
            max_uses: 1,
            ..Default::default()
        })
    };
    let batch = |calls: Vec<Option<Call>>| pb::BatchRequest {
        calls: calls
            .into_iter()
            .map(|call| pb::BatchCall { call })
            .collect(),
    };
    let codes = common::outcome_codes;

    let first = raw
        .batch(batch(vec![
            Some(put("ST-6-b1", 60_000)),
            Some(put("ST-6-b2", 0)), // ttl 0: refused alone
            Some(put("TGT-6-b3", 60_000)),
            None, // a call from a newer client
        ]))
        .await
        .unwrap()
        .into_inner()
        .outcomes;
    use tonic::Code;
    assert_eq!(
        codes(&first),
        [
            0,
            Code::InvalidArgument as i32,
            0,
            Code::Unimplemented as i32
        ]
    );
    match &first[0].outcome {
        Some(Outcome::Ticket(t)) => assert_eq!((t.id.as_str(), t.max_uses), ("ST-6-b1", 1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(client.count().await.unwrap().total, 2);

    // Two consumes of a single-use ticket in one batch: exactly one wins.
    let consume = || {
        Call::Consume(pb::ConsumeRequest {
            id: "ST-6-b1".into(),
        })
    };
    let second = raw
        .batch(batch(vec![
            Some(consume()),
            Some(Call::Get(pb::GetRequest {
                id: "ST-6-b2".into(),
            })),
            Some(consume()),
            Some(Call::Delete(pb::DeleteRequest {
                id: "TGT-6-b3".into(),
            })),
        ]))
        .await
        .unwrap()
        .into_inner()
        .outcomes;
    let codes = codes(&second);
    assert_eq!(codes[1], Code::NotFound as i32, "never stored");
    let mut consumes = [codes[0], codes[2]];
    consumes.sort();
    assert_eq!(
        consumes,
        [0, Code::NotFound as i32],
        "one use of one allowed"
    );
    match &second[3].outcome {
        Some(Outcome::Deleted(d)) => assert_eq!(d.deleted, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(client.count().await.unwrap().total, 0);
    let stats = client.stats().await.unwrap();
    assert_eq!((stats.batches, stats.batched_calls), (2, 8));
    common::stop(node).await;
}

#[tokio::test]
async fn a_batch_over_the_call_limit_is_refused_whole_and_acts_on_none() {
    use tessera_proto::v1 as pb;
    use tessera_proto::v1::batch_call::Call;

    let (node, client) = common::start().await;
    let mut raw = raw_client(&node).await;
    let puts = |count: usize| pb::BatchRequest {
        calls: (0..count)
            .map(|n| pb::BatchCall {
                call: Some(Call::Put(pb::PutRequest {
                    id: format!("ST-6-limit-{n}"),
                    ttl_ms: 60_000,
                    ..Default::default()
                })),
            })
            .collect(),
    };
    let status = raw
        .batch(puts(tessera::api::MAX_BATCH_CALLS + 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("at most 1024"), "{status:?}");
    assert_eq!(client.count().await.unwrap().total, 0);
    // Still serving, a full batch included.
    let outcomes = raw
        .batch(puts(tessera::api::MAX_BATCH_CALLS))
        .await
        .unwrap()
        .into_inner()
        .outcomes;
    assert_eq!(outcomes.len(), tessera::api::MAX_BATCH_CALLS);
    assert_eq!(client.count().await.unwrap().total, 1024);
    common::stop(node).await;
}

// ---- 7. update ----

#[tokio::test]
async fn update_compares_and_sets_on_version_and_can_change_idle_alone() {
    let config = NodeConfig {
        max_payload_bytes: 1024,
        ..common::config()
    };
    let (node, client) = common::start_with(config).await;
    let v1 = client
        .put(NewTicket::new("TGT-7-update", HOUR).payload(&b"one"[..]))
        .await
        .unwrap();

    let v2 = client
        .update(
            "TGT-7-update",
            TicketUpdate {
                payload: Some(Bytes::from_static(b"two")),
                if_version: Some(v1.version.clone()),
                ..TicketUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_ne!(v2.version, v1.version, "an update makes a new version");
    assert!(!v2.version.is_empty());
    assert_eq!(&v2.payload[..], b"two");
    assert_eq!((v2.created_at, v2.deadline), (v1.created_at, v1.deadline));

    match client
        .update(
            "TGT-7-update",
            TicketUpdate {
                payload: Some(Bytes::from_static(b"stale")),
                if_version: Some(v1.version.clone()),
                ..TicketUpdate::default()
            },
        )
        .await
    {
        Err(Error::VersionMismatch(message)) => {
            assert!(
                message.contains(&v2.version),
                "names the current: {message}"
            )
        }
        other => panic!("stale if_version: {other:?}"),
    }
    assert_eq!(client.get("TGT-7-update").await.unwrap(), v2, "stale lost");

    // Idle only: payload kept, new version.
    let v3 = client
        .update(
            "TGT-7-update",
            TicketUpdate {
                idle: Some(Duration::from_secs(120)),
                ..TicketUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(v3.idle, Some(Duration::from_secs(120)));
    assert_eq!(&v3.payload[..], b"two");
    assert_ne!(v3.version, v2.version);
    assert_eq!(client.get("TGT-7-update").await.unwrap(), v3);
    let v4 = client
        .update(
            "TGT-7-update",
            TicketUpdate {
                idle: Some(Duration::ZERO),
                if_version: Some(v3.version.clone()),
                ..TicketUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(v4.idle, None, "idle 0 removes the idle timeout");

    // Refused updates change nothing.
    let message = invalid_argument(
        client.update("TGT-7-update", TicketUpdate::default()).await,
        "empty update",
    );
    assert!(message.contains("update"), "{message}");
    let message = invalid_argument(
        client
            .update(
                "TGT-7-update",
                TicketUpdate {
                    idle: Some(HOUR + Duration::from_secs(1)),
                    ..TicketUpdate::default()
                },
            )
            .await,
        "idle over ttl",
    );
    assert!(message.contains("idle"), "{message}");
    let message = invalid_argument(
        client
            .update(
                "TGT-7-update",
                TicketUpdate {
                    payload: Some(Bytes::from(vec![0u8; 1025])),
                    ..TicketUpdate::default()
                },
            )
            .await,
        "payload over max",
    );
    assert!(message.contains("max_payload_bytes"), "{message}");
    assert_eq!(client.get("TGT-7-update").await.unwrap(), v4);

    assert_not_found(
        client
            .update(
                "TGT-7-missing",
                TicketUpdate {
                    idle: Some(MINUTE),
                    ..TicketUpdate::default()
                },
            )
            .await,
        "update of a missing id",
    );
    common::stop(node).await;
}

// ---- 8. delete ----

#[tokio::test]
async fn delete_cascades_to_every_descendant() {
    let (node, client) = common::start().await;
    client
        .put(NewTicket::new("TGT-8-root", HOUR))
        .await
        .unwrap();
    for (id, parent) in [
        ("ST-8-child", "TGT-8-root"),
        ("PGT-8-child", "TGT-8-root"),
        ("PT-8-grandchild", "PGT-8-child"),
    ] {
        client
            .put(NewTicket::new(id, MINUTE).parent(parent))
            .await
            .unwrap();
    }
    client
        .put(NewTicket::new("TGT-8-other", HOUR))
        .await
        .unwrap();
    client
        .put(NewTicket::new("ST-8-other", MINUTE).parent("TGT-8-other"))
        .await
        .unwrap();

    assert_eq!(client.delete("TGT-8-root").await.unwrap(), 4);
    for id in ["TGT-8-root", "ST-8-child", "PGT-8-child", "PT-8-grandchild"] {
        assert_not_found(client.get(id).await, id);
    }
    client.get("TGT-8-other").await.unwrap();
    client.get("ST-8-other").await.unwrap();
    assert_eq!(client.count().await.unwrap().total, 2);

    assert_eq!(client.delete("TGT-8-root").await.unwrap(), 0, "twice");
    assert_eq!(client.delete("TGT-8-missing").await.unwrap(), 0, "missing");
    // Deleting a leaf removes just it.
    assert_eq!(client.delete("ST-8-other").await.unwrap(), 1);
    client.get("TGT-8-other").await.unwrap();
    common::stop(node).await;
}

// ---- 9. count, sessions, logout ----

#[tokio::test]
async fn count_sessions_for_delete_for_and_delete_all() {
    let (node, client) = common::start().await;
    let empty = client.count().await.unwrap();
    assert_eq!((empty.total, empty.by_kind.len()), (0, 0));

    for (id, principal) in [
        ("TGT-9-a1", "Alice"),
        ("TGT-9-a2", "alice"),
        ("TGT-9-b1", "bob"),
    ] {
        client
            .put(NewTicket::new(id, HOUR).principal(principal))
            .await
            .unwrap();
    }
    client
        .put(
            NewTicket::new("ST-9-a1", MINUTE)
                .principal("ALICE")
                .parent("TGT-9-a1"),
        )
        .await
        .unwrap();
    // No principal of its own: found only as a descendant.
    client
        .put(NewTicket::new("PGT-9-a2", MINUTE).parent("TGT-9-a2"))
        .await
        .unwrap();
    client
        .put(NewTicket::new("ST-9-b1", MINUTE).parent("TGT-9-b1"))
        .await
        .unwrap();

    let counts = client.count().await.unwrap();
    assert_eq!(counts.total, 6);
    let expected: BTreeMap<String, u64> = [("PGT", 1), ("ST", 2), ("TGT", 3)]
        .map(|(k, n)| (k.to_owned(), n))
        .into();
    assert_eq!(counts.by_kind, expected);

    let sessions = client.sessions_for("aLiCe").await.unwrap();
    assert_eq!(ids(&sessions), ["TGT-9-a1", "TGT-9-a2"], "TGTs only");
    assert!(sessions.iter().all(|t| t.kind == "TGT"));
    assert_eq!(
        ids(&client.sessions_for("BOB").await.unwrap()),
        ["TGT-9-b1"]
    );
    assert!(client.sessions_for("nobody").await.unwrap().is_empty());

    assert_eq!(
        client.delete_for("ALICE").await.unwrap(),
        4,
        "two TGTs, their ST and PGT"
    );
    for id in ["TGT-9-a1", "TGT-9-a2", "ST-9-a1", "PGT-9-a2"] {
        assert_not_found(client.get(id).await, id);
    }
    assert!(client.sessions_for("alice").await.unwrap().is_empty());
    assert_eq!(client.delete_for("alice").await.unwrap(), 0, "twice");
    let counts = client.count().await.unwrap();
    assert_eq!(counts.total, 2);
    assert_eq!(
        counts.by_kind,
        [("ST".to_owned(), 1), ("TGT".to_owned(), 1)].into()
    );

    assert_eq!(client.delete_all().await.unwrap(), 2);
    let counts = client.count().await.unwrap();
    assert_eq!((counts.total, counts.by_kind.len()), (0, 0));
    assert_not_found(client.get("TGT-9-b1").await, "after delete_all");
    assert_eq!(client.delete_all().await.unwrap(), 0, "twice");
    common::stop(node).await;
}

// ---- 10. list ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_streams_everything_once_with_filters_and_limit() {
    const TOTAL: usize = 3_000;
    const WRITERS: usize = 8;
    let (node, client) = common::start().await;
    let mut writers = JoinSet::new();
    for writer in 0..WRITERS {
        let client = client.clone();
        writers.spawn(async move {
            for n in (writer..TOTAL).step_by(WRITERS) {
                let kind = if n % 3 == 0 { "TGT" } else { "ST" };
                client
                    .put(
                        NewTicket::new(format!("{kind}-10-{n}"), HOUR)
                            .principal(format!("user{}", n % 10)),
                    )
                    .await?;
            }
            Ok::<_, Error>(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap().unwrap();
    }
    assert_eq!(client.count().await.unwrap().total, TOTAL as u64);

    let list = |filter: ListFilter| {
        let client = client.clone();
        async move {
            let tickets = client
                .list(filter)
                .await
                .unwrap()
                .collect_all()
                .await
                .unwrap();
            let ids: Vec<String> = tickets.iter().map(|t| t.id.clone()).collect();
            let unique: HashSet<&String> = ids.iter().collect();
            assert_eq!(unique.len(), ids.len(), "a ticket was streamed twice");
            tickets
        }
    };

    let everything = list(ListFilter::default()).await;
    assert_eq!(everything.len(), TOTAL, "more than several pages of 256");
    let tgts = list(ListFilter {
        kind: Some("TGT".into()),
        ..ListFilter::default()
    })
    .await;
    assert_eq!(tgts.len(), TOTAL / 3);
    assert!(
        tgts.iter()
            .all(|t| t.kind == "TGT" && t.id.starts_with("TGT-"))
    );
    let user3 = list(ListFilter {
        principal: Some("USER3".into()),
        ..ListFilter::default()
    })
    .await;
    assert_eq!(user3.len(), TOTAL / 10, "case-insensitive, over a page");
    assert!(
        user3
            .iter()
            .all(|t| t.principal.as_deref() == Some("user3"))
    );
    let both = list(ListFilter {
        kind: Some("TGT".into()),
        principal: Some("user3".into()),
        limit: 0,
    })
    .await;
    assert_eq!(both.len(), TOTAL / 30);
    for limit in [1, 10, 256, 257, 300] {
        let limited = list(ListFilter {
            limit,
            ..ListFilter::default()
        })
        .await;
        assert_eq!(limited.len() as u64, limit, "limit {limit}");
    }
    let limited = list(ListFilter {
        principal: Some("user3".into()),
        limit: 299,
        ..ListFilter::default()
    })
    .await;
    assert_eq!(limited.len(), 299);
    assert!(
        list(ListFilter {
            kind: Some("NOPE".into()),
            ..ListFilter::default()
        })
        .await
        .is_empty()
    );
    let message = match client
        .list(ListFilter {
            kind: Some("st".into()),
            ..ListFilter::default()
        })
        .await
    {
        Err(Error::InvalidArgument(message)) => message,
        other => panic!("lower-case kind filter: {other:?}"),
    };
    assert!(message.contains("kind"), "{message}");
    common::stop(node).await;
}

// ---- 11. members ----

#[tokio::test]
async fn members_reports_this_node() {
    let (node, client) = common::start().await;
    client
        .put(NewTicket::new("TGT-11-one", MINUTE))
        .await
        .unwrap();
    let members = client.members().await.unwrap();
    assert_eq!(members.len(), 1, "{members:?}");
    let me = &members[0];
    assert_eq!(me.node_id, common::NODE_ID);
    assert_eq!(me.api_addr, node.api_addr().to_string());
    assert_eq!(me.state, "alive");
    assert!(me.ready);
    assert_eq!(me.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(me.tickets, 1);
    common::stop(node).await;
}

// ---- 12. health and reflection ----

#[tokio::test]
async fn standard_health_service_reports_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let (node, _client) = common::start().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.api_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "tessera.v1.TicketStore"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("health of {service:?}: {e}"))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    drop(health);
    common::stop(node).await;
}

#[tokio::test]
async fn reflection_lists_the_ticket_store_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let (node, _client) = common::start().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.api_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("tessera.v1.TicketStore".into()),
    ]
    .map(|request| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    });
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();

    let listed = responses.message().await.unwrap().expect("a response");
    let services: Vec<String> = match listed.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("list services: {other:?}"),
    };
    for expected in ["tessera.v1.TicketStore", "grpc.health.v1.Health"] {
        assert!(
            services.iter().any(|s| s == expected),
            "{expected} not in {services:?}"
        );
    }
    let file = responses.message().await.unwrap().expect("a response");
    match file.message_response {
        Some(MessageResponse::FileDescriptorResponse(files)) => {
            assert!(!files.file_descriptor_proto.is_empty())
        }
        other => panic!("file containing tessera.v1.TicketStore: {other:?}"),
    }
    drop(responses);
    drop(reflection);
    common::stop(node).await;
}

// ---- 13. expiry, on tokio's paused clock ----

/// Where the paused test clocks start (2023-11-14T22:13:20Z).
const EPOCH_MS: u64 = 1_700_000_000_000;

#[tokio::test(start_paused = true)]
async fn expiry_a_ticket_is_not_found_from_its_deadline_and_then_swept() {
    let (node, client) =
        common::start_with_clock(common::config(), Clock::starting_at(EPOCH_MS)).await;
    let put = client
        .put(NewTicket::new("ST-13-ttl", Duration::from_secs(1)))
        .await
        .unwrap();
    let created_ms = put.created_at.duration_since(UNIX_EPOCH).unwrap();
    assert_eq!(
        created_ms,
        Duration::from_millis(EPOCH_MS),
        "the node runs on the paused clock"
    );
    assert_eq!(put.deadline, put.created_at + Duration::from_secs(1));

    tokio::time::sleep(Duration::from_millis(999)).await;
    assert_eq!(
        client.get("ST-13-ttl").await.unwrap(),
        put,
        "live at 999 ms"
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_not_found(client.get("ST-13-ttl").await, "at the deadline");
    assert_not_found(client.touch("ST-13-ttl").await, "touch after deadline");

    // Held as a dead record until the deadline plus the skew budget, the id
    // refused meanwhile; then forgotten (every copy is past its retention).
    tokio::time::sleep(Duration::from_millis(100)).await;
    match client
        .put(NewTicket::new("ST-13-ttl", Duration::from_secs(1)))
        .await
    {
        Err(Error::AlreadyExists(_)) => {}
        other => panic!("reuse of an expired id: {other:?}"),
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(client.count().await.unwrap().total, 0, "swept");
    node.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn expiry_idle_timeout_slides_on_touch_but_not_on_get() {
    let (node, client) =
        common::start_with_clock(common::config(), Clock::starting_at(EPOCH_MS)).await;
    let idle = Duration::from_secs(10);
    client
        .put(NewTicket::new("TGT-13-idle", HOUR).idle(idle))
        .await
        .unwrap();
    client
        .put(NewTicket::new("ST-13-child", HOUR).parent("TGT-13-idle"))
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_secs(8)).await;
    client.get("TGT-13-idle").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let touched = client.touch("TGT-13-idle").await.unwrap();
    assert_eq!(
        touched.last_used,
        UNIX_EPOCH + Duration::from_millis(EPOCH_MS + 9_000)
    );
    tokio::time::sleep(Duration::from_secs(9)).await;
    client.get("TGT-13-idle").await.unwrap();
    client.get("ST-13-child").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_not_found(client.get("TGT-13-idle").await, "idle since 10 s");
    assert_not_found(client.get("ST-13-child").await, "child of an idle parent");
    node.stop().await.unwrap();
}

// ---- 14. graceful stop ----

#[tokio::test]
async fn after_a_graceful_stop_calls_fail_fast_with_unavailable() {
    let (node, client) = common::start().await;
    let client = client.with_timeout(Duration::from_secs(2));
    client
        .put(NewTicket::new("TGT-14-stop", MINUTE))
        .await
        .unwrap();
    let addr = node.api_addr();
    common::stop(node).await;

    // The client's existing connection, then a brand new client.
    let fresh = Client::connect_with(
        [addr.to_string()],
        ClientConfig {
            call_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            ..ClientConfig::default()
        },
    )
    .await
    .unwrap();
    for (what, client) in [("existing client", &client), ("new client", &fresh)] {
        // A hang would show up as Error::Timeout (the client's 2 s); the outer
        // guard only turns a client bug into a failure instead of a stall.
        let result = tokio::time::timeout(Duration::from_secs(20), client.get("TGT-14-stop"))
            .await
            .expect("the client's own timeout fires");
        match result {
            Err(Error::Unavailable(message)) => {
                assert!(message.contains(&addr.to_string()), "{what}: {message}")
            }
            other => panic!("{what}: after stop expected Unavailable, got {other:?}"),
        }
    }
}

// ---- known bugs: a child whose parent died by idle timeout, before the sweep ----
//
// A parent that idles out is tombstoned by the sweeper only `max_clock_skew`
// after its idle end (so a late touch from a peer can still revive it). In that
// window `get`, `touch`, `consume` and `sessions_for` treat its descendants as
// dead (NotFound), but the calls below only look at each ticket's own liveness.

/// A parent that idled out 5 s ago with a child of its own, on a node whose
/// skew budget (30 s) keeps the parent unswept for the whole test.
async fn child_of_an_idled_out_parent() -> (tessera::server::NodeHandle, Client) {
    let config = NodeConfig {
        max_clock_skew: Duration::from_secs(30),
        ..common::config()
    };
    let (node, client) = common::start_with_clock(config, Clock::starting_at(EPOCH_MS)).await;
    client
        .put(NewTicket::new("TGT-15-idle", HOUR).idle(Duration::from_secs(10)))
        .await
        .unwrap();
    client
        .put(NewTicket::new("ST-15-child", HOUR).parent("TGT-15-idle"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_not_found(client.get("TGT-15-idle").await, "idled-out parent");
    assert_not_found(client.get("ST-15-child").await, "child of a dead parent");
    (node, client)
}

#[tokio::test(start_paused = true)]
async fn list_hides_a_child_of_an_idled_out_parent_like_get_does() {
    let (node, client) = child_of_an_idled_out_parent().await;
    let listed = client
        .list(ListFilter::default())
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(ids(&listed), Vec::<&str>::new(), "listed a dead ticket");
    node.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_id_of_a_child_of_an_idled_out_parent_is_not_reused() {
    let (node, client) = child_of_an_idled_out_parent().await;
    match client.put(NewTicket::new("ST-15-child", HOUR)).await {
        Err(Error::AlreadyExists(_)) => {}
        other => panic!("re-put of a dead child's id: {other:?}"),
    }
    assert_not_found(client.get("ST-15-child").await, "resurrected");
    node.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn delete_counts_only_tickets_that_were_live() {
    let (node, client) = child_of_an_idled_out_parent().await;
    assert_eq!(
        client.delete("TGT-15-idle").await.unwrap(),
        0,
        "neither the parent nor its child was live"
    );
    node.stop().await.unwrap();
}
