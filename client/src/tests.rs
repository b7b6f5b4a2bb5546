//! End-to-end tests of the client against tiny in-process gRPC servers: failover,
//! timeouts, streaming, message sizes.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tessera_proto::v1 as pb;
use tessera_proto::v1::batch_call::Call;
use tessera_proto::v1::batch_outcome::Outcome;
use tessera_proto::v1::ticket_store_server::{TicketStore, TicketStoreServer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status};

use crate::{Client, ClientConfig, Error, ListFilter, NewTicket};

/// How a fake node answers every implemented call.
#[derive(Clone, Copy)]
enum Mode {
    /// Answer normally.
    Serve,
    /// Answer with this status.
    Fail(Code, &'static str),
    /// Accept the call and never answer.
    Hang,
    /// Answer `get` with a payload bigger than tonic's 4 MiB default limit.
    Big,
    /// `list`: send one ticket, then nothing.
    StallAfterFirst,
    /// Serve only calls carrying `authorization: Bearer <this>`; refuse the
    /// others with UNAUTHENTICATED, as a node with an API token does.
    RequireToken(&'static str),
    /// Answer normally after this long.
    Slow(Duration),
}

#[derive(Default)]
struct Stats {
    /// Ticket calls answered, whether alone or in a batch.
    calls: AtomicUsize,
    /// Calls of each `Batch` RPC received, refused ones included.
    batches: Mutex<Vec<usize>>,
    /// `Session` streams asked for (all refused as UNIMPLEMENTED).
    session_opens: AtomicUsize,
    grpc_timeouts: Mutex<Vec<Option<String>>>,
    authorizations: Mutex<Vec<Option<String>>>,
}

impl Stats {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn batches(&self) -> Vec<usize> {
        self.batches.lock().expect("stats lock").clone()
    }
}

struct Fake {
    name: &'static str,
    mode: Mode,
    stats: Arc<Stats>,
    /// False for a node of a version without the `Batch` RPC.
    knows_batch: bool,
}

const BIG: usize = 5 * 1024 * 1024;

impl Fake {
    fn ticket(&self, id: &str) -> pb::Ticket {
        pb::Ticket {
            id: id.to_owned(),
            kind: id.split('-').next().unwrap_or_default().to_owned(),
            payload: Bytes::from_static(b"payload"),
            created_at_ms: 1_700_000_000_000,
            deadline_ms: 1_700_000_010_000,
            last_used_ms: 1_700_000_000_000,
            uses: 1,
            max_uses: 1,
            // Tells the test which node answered.
            version: self.name.to_owned(),
            ..Default::default()
        }
    }

    fn record<T>(&self, req: &Request<T>) {
        self.stats.calls.fetch_add(1, Ordering::SeqCst);
        let timeout = req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.stats
            .grpc_timeouts
            .lock()
            .expect("stats lock")
            .push(timeout);
        let authorization = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.stats
            .authorizations
            .lock()
            .expect("stats lock")
            .push(authorization);
    }

    /// UNAUTHENTICATED unless the mode's token came with the request.
    fn check_token<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Mode::RequireToken(token) = self.mode else {
            return Ok(());
        };
        let sent = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if sent == Some(&format!("Bearer {token}")) {
            Ok(())
        } else {
            Err(Status::unauthenticated("missing or wrong API token"))
        }
    }

    /// The answer to a call on ticket `id`; ids starting with "missing" are
    /// not found.
    async fn answer<T>(&self, req: &Request<T>, id: &str) -> Result<Response<pb::Ticket>, Status> {
        self.record(req);
        self.check_token(req)?;
        if id.starts_with("missing") {
            return Err(Status::not_found("no such ticket"));
        }
        match self.mode {
            Mode::Serve | Mode::StallAfterFirst | Mode::RequireToken(_) => {
                Ok(Response::new(self.ticket(id)))
            }
            Mode::Slow(wait) => {
                tokio::time::sleep(wait).await;
                Ok(Response::new(self.ticket(id)))
            }
            Mode::Fail(code, message) => Err(Status::new(code, message)),
            Mode::Hang => std::future::pending().await,
            Mode::Big => Ok(Response::new(pb::Ticket {
                payload: Bytes::from(vec![7u8; BIG]),
                ..self.ticket(id)
            })),
        }
    }
}

type TicketStreamBox = Pin<Box<dyn Stream<Item = Result<pb::Ticket, Status>> + Send>>;

#[tonic::async_trait]
impl TicketStore for Fake {
    async fn put(&self, r: Request<pb::PutRequest>) -> Result<Response<pb::Ticket>, Status> {
        let id = r.get_ref().id.clone();
        self.answer(&r, &id).await
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> Result<Response<pb::Ticket>, Status> {
        let id = r.get_ref().id.clone();
        self.answer(&r, &id).await
    }
    async fn touch(&self, r: Request<pb::TouchRequest>) -> Result<Response<pb::Ticket>, Status> {
        let id = r.get_ref().id.clone();
        self.answer(&r, &id).await
    }
    async fn consume(
        &self,
        r: Request<pb::ConsumeRequest>,
    ) -> Result<Response<pb::Ticket>, Status> {
        let id = r.get_ref().id.clone();
        self.answer(&r, &id).await
    }
    async fn update(&self, r: Request<pb::UpdateRequest>) -> Result<Response<pb::Ticket>, Status> {
        let id = r.get_ref().id.clone();
        self.answer(&r, &id).await
    }
    async fn delete(
        &self,
        _: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        Err(Status::unimplemented("delete"))
    }
    async fn delete_all(
        &self,
        _: Request<pb::DeleteAllRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        Err(Status::unimplemented("delete_all"))
    }
    async fn delete_for(
        &self,
        _: Request<pb::DeleteForRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        Err(Status::unimplemented("delete_for"))
    }
    async fn count(
        &self,
        _: Request<pb::CountRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        Err(Status::unimplemented("count"))
    }
    async fn sessions_for(
        &self,
        _: Request<pb::SessionsForRequest>,
    ) -> Result<Response<pb::SessionsForResponse>, Status> {
        Err(Status::unimplemented("sessions_for"))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

    /// A node that fails refuses the call; one that serves sends an expiry
    /// and a gap, then ends the stream as a draining node does.
    async fn watch(
        &self,
        r: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.record(&r);
        self.check_token(&r)?;
        if let Mode::Fail(code, message) = self.mode {
            return Err(Status::new(code, message));
        }
        let expired = pb::WatchEvent {
            position: "00000000000000ff-7".into(),
            event: Some(pb::watch_event::Event::Ticket(pb::TicketEvent {
                r#type: pb::EventType::Expired as i32,
                cause: pb::EventCause::Idle as i32,
                at_ms: 1_000,
                ticket: Some(self.ticket("TGT-1")),
                node_id: self.name.to_owned(),
            })),
        };
        let gap = pb::WatchEvent {
            position: "00000000000000ff-9".into(),
            event: Some(pb::watch_event::Event::Gap(pb::WatchGap {
                missed: 1,
                reason: "buffer".into(),
            })),
        };
        let end = Status::unavailable("draining");
        Ok(Response::new(Box::pin(tokio_stream::iter([
            Ok(expired),
            Ok(gap),
            Err(end),
        ]))))
    }

    type ListStream = TicketStreamBox;

    async fn list(
        &self,
        r: Request<pb::ListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        self.record(&r);
        self.check_token(&r)?;
        let tickets: Vec<Result<pb::Ticket, Status>> = ["ST-1", "ST-2", "ST-3"]
            .map(|id| Ok(self.ticket(id)))
            .into();
        let stream: TicketStreamBox = match self.mode {
            // Fail as the first message of the stream, after the response headers.
            Mode::Fail(code, message) => {
                Box::pin(tokio_stream::iter([Err(Status::new(code, message))]))
            }
            Mode::Hang => Box::pin(tokio_stream::pending()),
            Mode::StallAfterFirst => Box::pin(
                tokio_stream::iter(tickets.into_iter().take(1)).chain(tokio_stream::pending()),
            ),
            Mode::Serve | Mode::Big | Mode::RequireToken(_) | Mode::Slow(_) => {
                Box::pin(tokio_stream::iter(tickets))
            }
        };
        Ok(Response::new(stream))
    }

    async fn members(
        &self,
        _: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        Err(Status::unimplemented("members"))
    }
    async fn stats(&self, _: Request<pb::StatsRequest>) -> Result<Response<pb::NodeStats>, Status> {
        Err(Status::unimplemented("stats"))
    }

    /// Each call answered as its own RPC would be, one after the other.
    async fn batch(
        &self,
        r: Request<pb::BatchRequest>,
    ) -> Result<Response<pb::BatchResponse>, Status> {
        self.stats
            .batches
            .lock()
            .expect("stats lock")
            .push(r.get_ref().calls.len());
        if !self.knows_batch {
            // What tonic answers for a method the service does not have.
            return Err(Status::unimplemented(""));
        }
        let mut outcomes = Vec::new();
        for call in &r.get_ref().calls {
            let id = match &call.call {
                Some(Call::Put(m)) => &m.id,
                Some(Call::Get(m)) => &m.id,
                Some(Call::Touch(m)) => &m.id,
                Some(Call::Consume(m)) => &m.id,
                Some(Call::Update(m)) => &m.id,
                Some(Call::Delete(_)) | None => panic!("the fake answers no such call"),
            };
            let outcome = match self.answer(&r, id).await {
                Ok(ticket) => Outcome::Ticket(ticket.into_inner()),
                Err(status) => Outcome::Error(pb::CallError {
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                }),
            };
            outcomes.push(pb::BatchOutcome {
                outcome: Some(outcome),
            });
        }
        Ok(Response::new(pb::BatchResponse { outcomes }))
    }

    type SessionStream = futures_util::stream::Empty<Result<pb::SessionResponse, Status>>;

    /// Every fake is of the version before `Session`: the client's batches
    /// reach it as `Batch` RPCs (sessions are tested against real nodes).
    async fn session(
        &self,
        _: Request<tonic::Streaming<pb::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        self.stats.session_opens.fetch_add(1, Ordering::SeqCst);
        Err(Status::unimplemented(""))
    }
}

/// Starts a fake node on 127.0.0.1; returns its address and call statistics.
async fn spawn(name: &'static str, mode: Mode) -> (String, Arc<Stats>) {
    spawn_fake(name, mode, true).await
}

/// Starts a fake node of a version without the `Batch` RPC.
async fn spawn_old(name: &'static str, mode: Mode) -> (String, Arc<Stats>) {
    spawn_fake(name, mode, false).await
}

async fn spawn_fake(name: &'static str, mode: Mode, knows_batch: bool) -> (String, Arc<Stats>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let stats = Arc::new(Stats::default());
    let fake = Fake {
        name,
        mode,
        stats: Arc::clone(&stats),
        knows_batch,
    };
    let service = TicketStoreServer::new(fake).max_encoding_message_size(64 * 1024 * 1024);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), stats)
}

/// An address on which nothing listens: connections are refused.
fn refused() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    addr.to_string()
}

async fn client(addrs: &[&str], call_timeout: Duration) -> Client {
    let config = ClientConfig {
        call_timeout,
        ..ClientConfig::default()
    };
    Client::connect_with(addrs, config)
        .await
        .expect("connect is lazy and the addresses are valid")
}

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn client_is_send_sync_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Client>();
    fn check_stream<T: Send + Sync + Unpin + 'static>() {}
    check_stream::<crate::TicketStream>();
    fn check_error<T: std::error::Error + Send + Sync + 'static>() {}
    check_error::<Error>();
}

#[tokio::test]
async fn connect_validates_addresses_but_not_reachability() {
    let none: [&str; 0] = [];
    assert!(matches!(
        Client::connect(none).await,
        Err(Error::InvalidAddress(_))
    ));
    assert!(matches!(
        Client::connect(["127.0.0.1:7070", "not an address"]).await,
        Err(Error::InvalidAddress(_))
    ));
    let client = Client::connect([refused(), refused()])
        .await
        .expect("down nodes are not a connect error");
    assert_eq!(client.addresses().len(), 2);
    assert!(client.addresses()[0].starts_with("http://127.0.0.1:"));
}

#[tokio::test]
async fn get_fails_over_from_a_refused_address_and_remembers_the_live_one() {
    let (live, stats) = spawn("live", Mode::Serve).await;
    let dead = refused();
    let client = client(&[&dead, &live], SECOND).await;

    let ticket = client
        .get("ST-1-abc")
        .await
        .expect("served by the second node");
    assert_eq!(ticket.id, "ST-1-abc");
    assert_eq!(ticket.kind, "ST");
    assert_eq!(ticket.version, "live");
    assert_eq!(client.preferred(), 1);

    // Clones (and re-timed handles) share the preference: straight to the live node.
    client
        .with_timeout(2 * SECOND)
        .clone()
        .get("ST-1-abc")
        .await
        .expect("served");
    assert_eq!(stats.calls(), 2);
}

#[tokio::test]
async fn each_attempt_sends_its_deadline_as_grpc_timeout() {
    let (live, stats) = spawn("live", Mode::Serve).await;
    let client = client(&[&live], Duration::from_millis(1500)).await;
    client.get("TGT-1").await.expect("served");
    let seen = stats.grpc_timeouts.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    let header = seen[0].clone().expect("grpc-timeout header sent");
    assert!(header.ends_with('m') || header.ends_with('u'), "{header}");
}

#[tokio::test]
async fn consume_fails_over_when_the_connection_is_refused() {
    let (live, stats) = spawn("live", Mode::Serve).await;
    let dead = refused();
    let client = client(&[&dead, &live], SECOND).await;
    let ticket = client
        .consume("ST-1")
        .await
        .expect("never reached the first node");
    assert_eq!(ticket.version, "live");
    assert_eq!(stats.calls(), 1);
}

/// Draining and fenced nodes refuse before acting: even a consume moves on.
#[tokio::test]
async fn consume_fails_over_from_a_draining_or_fenced_node() {
    for refusal in [
        "draining: node is shutting down",
        "fenced: this node's clock disagrees with most of its peers",
    ] {
        let (refusing, refused) = spawn("refusing", Mode::Fail(Code::Unavailable, refusal)).await;
        let (live, stats) = spawn("live", Mode::Serve).await;
        let client = client(&[&refusing, &live], SECOND).await;
        let ticket = client.consume("ST-1").await.expect(refusal);
        assert_eq!(ticket.version, "live");
        assert_eq!((refused.calls(), stats.calls()), (1, 1));
    }
}

#[tokio::test]
async fn consume_is_not_repeated_after_an_ambiguous_unavailable() {
    let (busy, _) = spawn("busy", Mode::Fail(Code::Unavailable, "arbiter timed out")).await;
    let (live, stats) = spawn("live", Mode::Serve).await;

    let client_a = client(&[&busy, &live], SECOND).await;
    match client_a.consume("ST-1").await {
        Err(Error::Unavailable(m)) => {
            assert!(m.contains("arbiter timed out"), "{m}");
            assert!(m.contains(&busy), "names the node: {m}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(stats.calls(), 0, "a consume must not be sent twice");

    // The same failure is fine to fail over for a read.
    let client_b = client(&[&busy, &live], SECOND).await;
    let ticket = client_b.get("ST-1").await.expect("read fails over");
    assert_eq!(ticket.version, "live");
    assert_eq!(stats.calls(), 1);
}

#[tokio::test]
async fn a_hanging_node_times_out_reads_fail_over_consumes_do_not() {
    let (hung, _) = spawn("hung", Mode::Hang).await;
    let (live, stats) = spawn("live", Mode::Serve).await;
    let timeout = Duration::from_millis(300);

    let reader = client(&[&hung, &live], timeout).await;
    let ticket = reader.get("TGT-1").await.expect("read fails over");
    assert_eq!(ticket.version, "live");
    assert_eq!(stats.calls(), 1);

    let consumer = client(&[&hung, &live], timeout).await;
    let started = tokio::time::Instant::now();
    match consumer.consume("ST-1").await {
        Err(e @ Error::Timeout(_)) => {
            assert_eq!(e.code(), Some(Code::DeadlineExceeded));
            assert!(e.to_string().contains(&hung), "{e}");
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(
        started.elapsed() < 5 * timeout,
        "bounded by the call timeout"
    );
    assert_eq!(
        stats.calls(),
        1,
        "the consume was not repeated on the live node"
    );
}

#[tokio::test]
async fn create_only_put_and_cas_update_do_not_fail_over_on_unavailable() {
    let (busy, _) = spawn("busy", Mode::Fail(Code::Unavailable, "overloaded")).await;
    let (live, stats) = spawn("live", Mode::Serve).await;
    let new = || NewTicket::new("TGT-1", Duration::from_secs(60));

    // A fresh client each time: a failed call moves the preference on.
    let c = client(&[&busy, &live], SECOND).await;
    assert!(matches!(
        c.put(new().create_only(true)).await,
        Err(Error::Unavailable(_))
    ));
    assert_eq!(c.preferred(), 1, "the next call starts on the other node");
    let cas = crate::TicketUpdate {
        if_version: Some("v1".into()),
        ..Default::default()
    };
    let c = client(&[&busy, &live], SECOND).await;
    assert!(matches!(
        c.update("TGT-1", cas).await,
        Err(Error::Unavailable(_))
    ));
    let c = client(&[&busy, &live], SECOND).await;
    assert!(matches!(c.touch("TGT-1").await, Err(Error::Unavailable(_))));
    assert_eq!(stats.calls(), 0);

    // Plain put and update are idempotent and fail over.
    let c = client(&[&busy, &live], SECOND).await;
    c.put(new()).await.expect("plain put fails over");
    let c = client(&[&busy, &live], SECOND).await;
    c.update("TGT-1", crate::TicketUpdate::default())
        .await
        .expect("plain update fails over");
    assert_eq!(stats.calls(), 2);
}

#[tokio::test]
async fn answers_are_not_failures() {
    let (first, _) = spawn("first", Mode::Fail(Code::NotFound, "ticket not found")).await;
    let (second, stats) = spawn("second", Mode::Serve).await;
    let client = client(&[&first, &second], SECOND).await;
    match client.get("ST-1").await {
        Err(Error::NotFound(m)) => assert_eq!(m, "ticket not found"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(stats.calls(), 0);
    assert_eq!(client.preferred(), 0);
}

#[tokio::test]
async fn server_messages_reach_the_caller() {
    let (node, _) = spawn(
        "node",
        Mode::Fail(
            Code::InvalidArgument,
            "payload is 2 MiB, the limit is 1 MiB",
        ),
    )
    .await;
    let client = client(&[&node], SECOND).await;
    match client.put(NewTicket::new("TGT-1", SECOND)).await {
        Err(Error::InvalidArgument(m)) => assert_eq!(m, "payload is 2 MiB, the limit is 1 MiB"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[tokio::test]
async fn no_reachable_node_is_unavailable_naming_every_address() {
    let (a, b) = (refused(), refused());
    let client = client(&[&a, &b], SECOND).await;
    match client.get("TGT-1").await {
        Err(Error::Unavailable(m)) => {
            assert!(m.contains(&a) && m.contains(&b), "{m}");
            assert!(m.to_lowercase().contains("refused"), "{m}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // The same for a consume: a refused connection never reached anyone.
    assert!(matches!(
        client.consume("ST-1").await,
        Err(Error::Unavailable(_))
    ));
}

#[tokio::test]
async fn list_fails_over_before_the_first_ticket() {
    let (failing, _) = spawn("failing", Mode::Fail(Code::Unavailable, "not ready")).await;
    let (live, _) = spawn("live", Mode::Serve).await;
    let client = client(&[&failing, &live], SECOND).await;
    let tickets = client
        .list(ListFilter::default())
        .await
        .expect("list fails over")
        .collect_all()
        .await
        .expect("whole listing");
    let ids: Vec<_> = tickets.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["ST-1", "ST-2", "ST-3"]);
    assert!(tickets.iter().all(|t| t.version == "live"));
}

#[tokio::test]
async fn list_works_as_a_stream() {
    let (live, _) = spawn("live", Mode::Serve).await;
    let client = client(&[&live], SECOND).await;
    let mut stream = client.list(ListFilter::default()).await.expect("list");
    let mut n = 0;
    while let Some(ticket) = stream.next().await {
        ticket.expect("ticket");
        n += 1;
    }
    assert_eq!(n, 3);
    assert!(stream.next().await.is_none(), "stays ended");
}

#[tokio::test]
async fn a_stalled_listing_ends_with_a_timeout() {
    let (stalling, _) = spawn("stalling", Mode::StallAfterFirst).await;
    let client = client(&[&stalling], Duration::from_millis(300)).await;
    let mut stream = client.list(ListFilter::default()).await.expect("list");
    let first = stream.message().await.expect("first ticket");
    assert_eq!(first.map(|t| t.id), Some("ST-1".to_owned()));
    assert!(matches!(stream.message().await, Err(Error::Timeout(_))));
    assert!(
        matches!(stream.message().await, Ok(None)),
        "ended after the error"
    );
}

#[tokio::test]
async fn a_list_that_never_starts_times_out() {
    let (hung, _) = spawn("hung", Mode::Hang).await;
    let client = client(&[&hung], Duration::from_millis(300)).await;
    assert!(matches!(
        client.list(ListFilter::default()).await,
        Err(Error::Timeout(_))
    ));
}

#[tokio::test]
async fn payloads_above_tonics_default_limit_are_received() {
    let (node, _) = spawn("big", Mode::Big).await;
    let client = client(&[&node], 5 * SECOND).await;
    let ticket = client.get("TGT-1").await.expect("5 MiB payload accepted");
    assert_eq!(ticket.payload.len(), BIG);
}

const TOKEN: &str = "client-test-api-token-0123456789abcdef";

async fn client_with_token(addrs: &[&str], token: Option<&str>) -> Result<Client, Error> {
    let config = ClientConfig {
        call_timeout: SECOND,
        token: token.map(str::to_owned),
        ..ClientConfig::default()
    };
    Client::connect_with(addrs, config).await
}

#[tokio::test]
async fn the_token_goes_with_every_call_as_a_bearer_header() {
    let (node, stats) = spawn("node", Mode::RequireToken(TOKEN)).await;
    // Surrounding whitespace (a token read from a file) is not sent.
    let client = client_with_token(&[&node], Some(&format!("{TOKEN}\n")))
        .await
        .expect("valid token");
    client.get("TGT-1").await.expect("get with the token");
    client
        .consume("ST-1")
        .await
        .expect("consume with the token");
    client
        .with_timeout(2 * SECOND)
        .put(NewTicket::new("TGT-2", SECOND))
        .await
        .expect("re-timed handles keep the token");
    let listed = client
        .list(ListFilter::default())
        .await
        .expect("list with the token")
        .collect_all()
        .await
        .expect("whole listing");
    assert_eq!(listed.len(), 3);
    let sent = stats.authorizations.lock().expect("lock").clone();
    assert_eq!(sent.len(), 4);
    assert!(
        sent.iter()
            .all(|s| s.as_deref() == Some(&format!("Bearer {TOKEN}"))),
        "{sent:?}"
    );
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_unauthenticated_and_never_fails_over() {
    let (guarded, _) = spawn("guarded", Mode::RequireToken(TOKEN)).await;
    let (open, open_stats) = spawn("open", Mode::Serve).await;
    for token in [None, Some("a-wrong-token-that-is-long-enough-to-look-real")] {
        let client = client_with_token(&[&guarded, &open], token)
            .await
            .expect("connect");
        match client.get("TGT-1").await {
            Err(e @ Error::Unauthenticated(_)) => {
                assert_eq!(e.code(), Some(Code::Unauthenticated));
                let m = e.to_string();
                assert!(m.contains("missing or wrong API token"), "{m}");
                assert!(m.contains(&guarded), "names the node: {m}");
            }
            other => panic!("expected Unauthenticated, got {other:?}"),
        }
        assert!(matches!(
            client.consume("ST-1").await,
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            client.list(ListFilter::default()).await,
            Err(Error::Unauthenticated(_))
        ));
    }
    assert_eq!(open_stats.calls(), 0, "no call moved on to the next node");
}

#[tokio::test]
async fn tokens_that_cannot_be_a_header_are_refused_and_never_shown() {
    for bad in ["", "  \n", "has a space inside it", "caf\u{e9}-token"] {
        match client_with_token(&["127.0.0.1:7070"], Some(bad)).await {
            Err(Error::InvalidArgument(m)) => {
                assert!(m.contains("API token"), "{m}");
                assert!(bad.trim().is_empty() || !m.contains(bad.trim()), "{m}");
            }
            other => panic!("{bad:?}: expected InvalidArgument, got {other:?}"),
        }
    }
    let config = ClientConfig {
        token: Some(TOKEN.to_owned()),
        ..ClientConfig::default()
    };
    let shown = format!("{config:?}");
    assert!(!shown.contains(TOKEN), "{shown}");
    assert!(shown.contains("redacted"), "{shown}");
    let client = Client::connect_with(["127.0.0.1:7070"], config)
        .await
        .expect("connect");
    let shown = format!("{client:?}");
    assert!(!shown.contains(TOKEN), "{shown}");
}

// ---- batching ----

#[tokio::test]
async fn concurrent_calls_share_batches_and_each_gets_its_own_answer() {
    const CALLS: usize = 200;
    let (slow, stats) = spawn("slow", Mode::Slow(Duration::from_millis(20))).await;
    let client = client(&[&slow], 10 * SECOND).await;
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..CALLS {
        let client = client.clone();
        let id = if n % 2 == 0 {
            format!("ST-{n}")
        } else {
            format!("missing-{n}")
        };
        calls.spawn(async move { (id.clone(), client.get(&id).await) });
    }
    while let Some(joined) = calls.join_next().await {
        let (id, answer) = joined.expect("call task");
        match answer {
            Ok(ticket) => assert_eq!(ticket.id, id, "another call's answer"),
            Err(Error::NotFound(_)) => assert!(id.starts_with("missing"), "{id}"),
            Err(other) => panic!("{id}: {other:?}"),
        }
    }
    assert_eq!(stats.calls(), CALLS, "every call answered exactly once");
    // A node without `Session` is asked once; its refusal holds for a while.
    assert_eq!(stats.session_opens.load(Ordering::SeqCst), 1);
    let batches = stats.batches();
    assert_eq!(batches.iter().sum::<usize>(), CALLS);
    // At most MAX_IN_FLIGHT batches wait on the slow node at once; the calls queued
    // meanwhile go together in the next ones.
    assert!(
        batches.len() <= 12,
        "{} batches for {CALLS} concurrent calls: {batches:?}",
        batches.len()
    );
}

#[tokio::test]
async fn a_call_alone_is_sent_at_once_in_a_batch_of_one() {
    let (live, stats) = spawn("live", Mode::Serve).await;
    let client = client(&[&live], SECOND).await;
    for n in 0..3 {
        client.get(&format!("ST-{n}")).await.expect("served");
    }
    assert_eq!(stats.batches(), vec![1, 1, 1]);
}

#[tokio::test]
async fn a_node_without_batch_gets_each_call_alone_and_nothing_twice() {
    let (old, stats) = spawn_old("old", Mode::Serve).await;
    let client = client(&[&old], SECOND).await;
    let ticket = client
        .consume("ST-1")
        .await
        .expect("served as a single RPC");
    assert_eq!(
        (ticket.id.as_str(), ticket.version.as_str()),
        ("ST-1", "old")
    );
    assert_eq!(stats.calls(), 1, "the refused batch acted on nothing");
    client.get("ST-2").await.expect("served");
    client
        .put(NewTicket::new("TGT-3", SECOND))
        .await
        .expect("served");
    assert_eq!(stats.calls(), 3);
    assert_eq!(
        stats.batches(),
        vec![1],
        "after one refusal the node is not asked again for a while"
    );
}

#[tokio::test]
async fn a_call_too_big_for_a_batch_goes_alone() {
    let (slow, stats) = spawn("slow", Mode::Slow(Duration::from_millis(20))).await;
    let client = client(&[&slow], 10 * SECOND).await;
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..40 {
        let client = client.clone();
        // Every 10th put is 100 KiB, more than one batch may carry.
        let size = if n % 10 == 0 { 100 * 1024 } else { 2 * 1024 };
        calls.spawn(async move {
            let ticket = NewTicket::new(format!("ST-{n}"), SECOND).payload(vec![1u8; size]);
            client.put(ticket).await
        });
    }
    while let Some(joined) = calls.join_next().await {
        joined.expect("call task").expect("served");
    }
    assert_eq!(stats.calls(), 40);
    let batches = stats.batches();
    assert_eq!(batches.iter().sum::<usize>(), 40);
    // 48 KiB hold at most 23 of the 2 KiB puts; a 100 KiB one goes alone.
    assert!(batches.iter().all(|&n| n <= 23), "{batches:?}");
    assert!(
        batches.iter().filter(|&&n| n == 1).count() >= 4,
        "{batches:?}"
    );
}

#[tokio::test]
async fn watch_fails_over_to_a_node_that_answers_and_yields_events_gaps_and_the_end() {
    use crate::{EventCause, EventType, WatchFilter, WatchItem};
    let (failing, _) = spawn("failing", Mode::Fail(Code::Unavailable, "not ready")).await;
    let (live, _) = spawn("live", Mode::Serve).await;
    let client = client(&[&failing, &live], SECOND).await;
    let mut events = client
        .watch(WatchFilter::default())
        .await
        .expect("watch fails over");
    match events.message().await {
        Ok(Some(WatchItem::Event(event))) => {
            assert_eq!(event.event, EventType::Expired);
            assert_eq!(event.cause, Some(EventCause::Idle));
            assert_eq!(event.ticket.id, "TGT-1");
            assert_eq!(event.node_id, "live");
            assert_eq!(event.position, "00000000000000ff-7");
        }
        other => panic!("expected an event, got {other:?}"),
    }
    match events.message().await {
        Ok(Some(WatchItem::Gap {
            missed, position, ..
        })) => {
            assert_eq!((missed, position.as_str()), (Some(1), "00000000000000ff-9"));
        }
        other => panic!("expected a gap, got {other:?}"),
    }
    assert!(matches!(events.message().await, Err(Error::Unavailable(_))));
    // Ended for good: the caller watches again with the last position.
    assert!(matches!(events.message().await, Ok(None)));
}
