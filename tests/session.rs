//! The `Session` RPC: batches on one stream, through a raw gRPC client (as
//! another language's client would send them) and through `tessera-client`.

#[allow(dead_code)] // not every helper is used here
mod common;

use std::time::Duration;

use tessera_client::NewTicket;
use tessera_proto::v1 as pb;
use tessera_proto::v1::batch_call::Call;
use tessera_proto::v1::ticket_store_client::TicketStoreClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const WAIT: Duration = Duration::from_secs(10);

async fn raw_client(node: &tessera::server::NodeHandle) -> TicketStoreClient<Channel> {
    TicketStoreClient::connect(format!("http://{}", node.api_addr()))
        .await
        .expect("raw client")
}

/// An open session: where batches go, and where answers come from.
struct RawSession {
    requests: mpsc::Sender<pb::SessionRequest>,
    answers: Streaming<pb::SessionResponse>,
}

async fn open(raw: &mut TicketStoreClient<Channel>) -> RawSession {
    let (requests, outgoing) = mpsc::channel(16);
    let answers = raw
        .session(ReceiverStream::new(outgoing))
        .await
        .expect("session opens")
        .into_inner();
    RawSession { requests, answers }
}

impl RawSession {
    async fn send(&self, id: u64, calls: Vec<Call>) {
        let request = pb::SessionRequest {
            id,
            timeout_ms: 5_000,
            calls: calls
                .into_iter()
                .map(|call| pb::BatchCall { call: Some(call) })
                .collect(),
        };
        self.requests.send(request).await.expect("session takes it");
    }

    async fn answer(&mut self) -> pb::SessionResponse {
        tokio::time::timeout(WAIT, self.answers.message())
            .await
            .expect("an answer in time")
            .expect("the session is up")
            .expect("the session has not ended")
    }
}

fn put(id: &str) -> Call {
    Call::Put(pb::PutRequest {
        id: id.into(),
        ttl_ms: 60_000,
        max_uses: 1,
        ..Default::default()
    })
}

fn consume(id: &str) -> Call {
    Call::Consume(pb::ConsumeRequest { id: id.into() })
}

#[tokio::test]
async fn each_batch_is_answered_once_under_its_id_with_each_calls_outcome() {
    let (node, client) = common::start().await;
    let mut raw = raw_client(&node).await;
    let mut session = open(&mut raw).await;

    session.send(7, vec![put("ST-1-s1"), put("ST-1-s2")]).await;
    let first = session.answer().await;
    assert_eq!(
        (first.id, common::outcome_codes(&first.outcomes)),
        (7, vec![0, 0])
    );
    assert!(first.refused.is_none());

    // Two consumes of a one-use ticket in one batch, and a consume of a
    // ticket that never was: one wins; a used-up ticket is not found, as
    // one that never was.
    session
        .send(
            8,
            vec![consume("ST-1-s1"), consume("ST-1-s1"), consume("ST-1-nope")],
        )
        .await;
    let second = session.answer().await;
    assert_eq!(second.id, 8);
    let mut won = common::outcome_codes(&second.outcomes[..2]);
    won.sort();
    assert_eq!(won, [0, Code::NotFound as i32], "{second:?}");
    assert_eq!(
        common::outcome_codes(&second.outcomes[2..]),
        [Code::NotFound as i32]
    );

    // Too many calls: refused whole, none acted on, and the session serves on.
    let too_many = (0..=tessera::api::MAX_BATCH_CALLS)
        .map(|n| put(&format!("ST-1-many{n}")))
        .collect();
    session.send(9, too_many).await;
    let refused = session.answer().await;
    assert_eq!(refused.id, 9);
    assert!(refused.outcomes.is_empty());
    let error = refused.refused.expect("refused whole");
    assert_eq!(
        error.code,
        Code::InvalidArgument as i32,
        "{}",
        error.message
    );
    // ST-1-s2 only (ST-1-s1 is used up).
    assert_eq!(
        client.count().await.unwrap().total,
        1,
        "nothing of it stored"
    );

    session.send(10, vec![consume("ST-1-s2")]).await;
    assert_eq!(session.answer().await.id, 10);

    // The client closes its side: the session ends cleanly.
    drop(session.requests);
    let end = tokio::time::timeout(WAIT, session.answers.message()).await;
    assert!(matches!(end, Ok(Ok(None))), "{end:?}");

    let stats = raw.stats(pb::StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.sessions, 1);
    common::stop(node).await;
}

#[tokio::test]
async fn a_leaving_node_ends_its_sessions_with_draining_and_stops_in_time() {
    let (node, _client) = common::start().await;
    let mut raw = raw_client(&node).await;
    let mut session = open(&mut raw).await;
    session.send(1, vec![put("ST-2-s1")]).await;
    assert_eq!(session.answer().await.id, 1);

    // The session stays open: stop must end it rather than wait for it.
    let stopping = tokio::spawn(common::stop(node));
    let end = tokio::time::timeout(WAIT, session.answers.message())
        .await
        .expect("the session ends in time");
    let status = end.expect_err("ended with a status");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().starts_with("draining"), "{status:?}");
    stopping.await.expect("the node stopped");
}

#[tokio::test]
async fn the_client_sends_concurrent_calls_as_batches_on_one_session() {
    const CALLS: usize = 200;
    let (node, client) = common::start().await;
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..CALLS {
        let client = client.clone();
        calls.spawn(async move {
            let id = format!("ST-3-c{n}");
            client
                .put(NewTicket::new(&id, Duration::from_secs(60)).max_uses(1))
                .await?;
            client.consume(&id).await
        });
    }
    while let Some(joined) = calls.join_next().await {
        let ticket = joined.expect("call task").expect("put then consume");
        assert_eq!(ticket.uses, 1);
    }
    let mut raw = raw_client(&node).await;
    let stats = raw.stats(pb::StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.sessions, 1, "one session carried every batch");
    assert_eq!(stats.batched_calls, 2 * CALLS as u64);
    assert!(stats.batches < 2 * CALLS as u64, "{stats:?}");
    common::stop(node).await;
}
