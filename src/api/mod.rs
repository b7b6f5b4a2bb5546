//! The client API: the `tessera.v1.TicketStore` gRPC service.
//!
//! Handlers only translate: wire types in, a call to replication (writes and
//! reads that may need peers) or to the local store (counts, listings), wire
//! types out. A draining node refuses new calls with UNAVAILABLE "draining",
//! and a node fenced for its clock refuses every ticket call with UNAVAILABLE
//! "fenced" (its expiry decisions would be wrong); clients fail over on both.
//! Who may call at all is decided before any handler runs, in [`auth`].

pub mod auth;
mod convert;
pub mod metrics;
mod session;
mod status;
pub mod tls;
mod watch;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use futures::future::join_all;
use tessera_proto::v1::batch_call::Call;
use tessera_proto::v1::batch_outcome::Outcome;
use tessera_proto::v1::ticket_store_server::TicketStore;
use tessera_proto::v1::{
    BatchCall, BatchOutcome, BatchRequest, BatchResponse, ConsumeRequest, CountRequest,
    CountResponse, DeleteAllRequest, DeleteForRequest, DeleteRequest, DeleteResponse, GetRequest,
    ListRequest, Member, MembersRequest, MembersResponse, NodeStats, PutRequest, SessionRequest,
    SessionsForRequest, SessionsForResponse, StatsRequest, Ticket, TouchRequest, UpdateRequest,
    WatchRequest,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::membership::Membership;
use crate::peer::net::PeerNet;
use crate::replication::{FENCED, Replicator};
use crate::store::{ListCursor, ListFilter, Store};
pub use auth::{ApiAuth, AuthStats};
use convert::{put_ticket, update_ticket};
pub use convert::{ticket, ticket_view};
use metrics::{CallMetrics, Op};
pub use status::to_status;

/// Tickets per store page while listing; the stream buffers at most one page
/// beyond what the client has read, whatever the store holds.
const LIST_PAGE: usize = 256;

/// Most calls one [`TicketStore::batch`] may carry (the proto's documented limit),
/// so one message can not hold a node's cores for long.
pub const MAX_BATCH_CALLS: usize = 1024;

/// What the API needs to know about its node.
pub struct NodeInfo {
    pub node_id: String,
    pub api_addr: String,
    pub replicator: Arc<Replicator>,
    /// Cluster membership (absent on a single node).
    pub membership: Option<Membership>,
    /// Set when the node starts leaving: new calls are refused.
    pub draining: AtomicBool,
    /// Whether the node has joined and caught up.
    pub ready: AtomicBool,
    /// The peer network, for its counters (absent on a single node).
    pub peer_net: Option<Arc<PeerNet>>,
    /// Refusals of the API token check, for [`TicketStore::stats`].
    pub auth_stats: Arc<AuthStats>,
    /// Batches answered (`Batch` RPCs and session batches) and their calls.
    pub batches: AtomicU64,
    pub batched_calls: AtomicU64,
    /// `Session` streams opened.
    pub sessions: AtomicU64,
    /// Ticket calls by operation and outcome, with latencies (`/metrics`).
    pub calls: CallMetrics,
    /// Set to true when the node leaves: open sessions stop reading and end.
    pub leaving: tokio::sync::watch::Sender<bool>,
}

impl NodeInfo {
    /// The node's counters and state, as `tessera stats` and `/metrics` show them.
    pub fn stats(&self) -> NodeStats {
        let replication = &self.replicator.stats;
        let peer = self
            .peer_net
            .as_deref()
            .map(PeerNet::stats)
            .unwrap_or_default();
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        NodeStats {
            node_id: self.node_id.clone(),
            ready: self.ready.load(Ordering::Acquire),
            draining: self.draining.load(Ordering::Acquire),
            clock_fenced: self.replicator.clock_fenced(),
            clock_fences: load(&replication.clock_fences),
            tickets: self.replicator.store().count().total,
            api_rejections: self.auth_stats.rejections(),
            peer_handshakes_ok: peer.handshakes_ok,
            peer_handshakes_rejected: peer.handshakes_rejected,
            peer_frames_rejected: peer.frames_rejected,
            peer_connections_open: peer.connections_open,
            peer_calls_failed: peer.calls_failed,
            pushes_failed: load(&replication.pushes_failed),
            read_repairs: load(&replication.read_repairs),
            decisions_forwarded: load(&replication.decisions_forwarded),
            clock_skew_reports: load(&replication.clock_skew_reports),
            bad_records: load(&replication.bad_records),
            batches: load(&self.batches),
            batched_calls: load(&self.batched_calls),
            sessions: load(&self.sessions),
            idle_deaths_unconfirmed: load(&replication.idle_deaths_unconfirmed),
        }
    }
}

/// The gRPC service; cheap to clone (a session owns a clone).
#[derive(Clone)]
pub struct TicketApi {
    node: Arc<NodeInfo>,
    store: Arc<Store>,
}

impl TicketApi {
    pub fn new(node: Arc<NodeInfo>) -> TicketApi {
        let store = node.replicator.store().clone();
        TicketApi { node, store }
    }

    /// The replicator, for a call that may change or read tickets through
    /// peers; refused while draining or fenced, before any ticket is touched.
    fn serving(&self) -> Result<&Replicator, Status> {
        if self.node.draining.load(Ordering::Acquire) {
            return Err(Status::unavailable(
                "draining: this node is shutting down; use another node",
            ));
        }
        self.clock_trusted()?;
        // Not found its cluster yet: acting alone could miss a delete, a use
        // or an acknowledged write the others hold (review #4, #7, #11).
        if !self.node.ready.load(Ordering::Acquire) {
            return Err(Status::unavailable(NOT_READY));
        }
        Ok(&self.node.replicator)
    }

    /// Refuse while fenced for the clock: every answer about tickets depends on
    /// which ones are expired, which this node's clock cannot tell.
    fn clock_trusted(&self) -> Result<(), Status> {
        if self.node.replicator.clock_fenced() {
            Err(Status::unavailable(FENCED))
        } else {
            Ok(())
        }
    }
}

/// How a node that is not ready refuses, before any work: the `not ready:`
/// prefix tells clients the call was not acted upon.
pub const NOT_READY: &str = "not ready: this node has not caught up with its cluster yet (discovery, catch-up, or its clock); use another node";

/// The ticket calls, each answered the same whether it came as its own RPC or
/// inside a [`TicketStore::batch`].
impl TicketApi {
    /// Run one ticket call, counted in [`NodeInfo::calls`] with its outcome
    /// and latency.
    async fn observed<T, Fut>(&self, op: Op, call: impl FnOnce() -> Fut) -> Result<T, Status>
    where
        Fut: Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        // Made here rather than passed in: a future passed to an async fn is
        // kept twice in its state (as the argument and as what is awaited),
        // and every call's future is moved by the batch path.
        let outcome = call().await;
        self.node.calls.observe(op, &outcome, started.elapsed());
        outcome
    }

    async fn put_call(&self, request: PutRequest) -> Result<Ticket, Status> {
        self.observed(Op::Put, move || async move {
            let view = self.serving()?.put(put_ticket(request)).await;
            Ok(ticket(view.map_err(to_status)?))
        })
        .await
    }

    async fn get_call(&self, request: GetRequest) -> Result<Ticket, Status> {
        self.observed(Op::Get, move || async move {
            let view = self.serving()?.get(&request.id).await;
            Ok(ticket(view.map_err(to_status)?))
        })
        .await
    }

    async fn touch_call(&self, request: TouchRequest) -> Result<Ticket, Status> {
        self.observed(Op::Touch, move || async move {
            let view = self.serving()?.touch(&request.id).await;
            Ok(ticket(view.map_err(to_status)?))
        })
        .await
    }

    async fn consume_call(&self, request: ConsumeRequest) -> Result<Ticket, Status> {
        self.observed(Op::Consume, move || async move {
            let view = self.serving()?.consume(&request.id).await;
            Ok(ticket(view.map_err(to_status)?))
        })
        .await
    }

    async fn update_call(&self, request: UpdateRequest) -> Result<Ticket, Status> {
        self.observed(Op::Update, move || async move {
            let id = request.id.clone();
            let view = self.serving()?.update(&id, update_ticket(request)).await;
            Ok(ticket(view.map_err(to_status)?))
        })
        .await
    }

    async fn delete_call(&self, request: DeleteRequest) -> Result<DeleteResponse, Status> {
        self.observed(Op::Delete, move || async move {
            let deleted = self.serving()?.delete(&request.id).await;
            Ok(DeleteResponse {
                deleted: deleted.map_err(to_status)?,
            })
        })
        .await
    }

    /// One call of a batch; a failure becomes that call's outcome, not the batch's.
    async fn batch_call(&self, call: Option<Call>) -> Outcome {
        let answer = match call {
            Some(Call::Put(r)) => self.put_call(r).await.map(Outcome::Ticket),
            Some(Call::Get(r)) => self.get_call(r).await.map(Outcome::Ticket),
            Some(Call::Touch(r)) => self.touch_call(r).await.map(Outcome::Ticket),
            Some(Call::Consume(r)) => self.consume_call(r).await.map(Outcome::Ticket),
            Some(Call::Update(r)) => self.update_call(r).await.map(Outcome::Ticket),
            Some(Call::Delete(r)) => self.delete_call(r).await.map(Outcome::Deleted),
            // A call this version does not know, from a newer client.
            None => Err(Status::unimplemented("unknown call in batch")),
        };
        answer.unwrap_or_else(|status| Outcome::Error(session::call_error(&status)))
    }

    /// The calls of one `Batch` RPC or session batch, run concurrently, each
    /// with its own outcome; refused whole (none looked at) when too many.
    async fn run_batch(&self, calls: Vec<BatchCall>) -> Result<Vec<BatchOutcome>, Status> {
        if calls.len() > MAX_BATCH_CALLS {
            return Err(Status::invalid_argument(format!(
                "batch of {} calls: at most {MAX_BATCH_CALLS}",
                calls.len()
            )));
        }
        self.node.batches.fetch_add(1, Ordering::Relaxed);
        self.node
            .batched_calls
            .fetch_add(calls.len() as u64, Ordering::Relaxed);
        let outcomes = join_all(calls.into_iter().map(|c| self.batch_call(c.call))).await;
        Ok(outcomes
            .into_iter()
            .map(|outcome| BatchOutcome {
                outcome: Some(outcome),
            })
            .collect())
    }
}

type TicketStream = Pin<Box<dyn Stream<Item = Result<Ticket, Status>> + Send>>;

#[tonic::async_trait]
impl TicketStore for TicketApi {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<Ticket>, Status> {
        Ok(Response::new(self.put_call(request.into_inner()).await?))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<Ticket>, Status> {
        Ok(Response::new(self.get_call(request.into_inner()).await?))
    }

    async fn touch(&self, request: Request<TouchRequest>) -> Result<Response<Ticket>, Status> {
        Ok(Response::new(self.touch_call(request.into_inner()).await?))
    }

    async fn consume(&self, request: Request<ConsumeRequest>) -> Result<Response<Ticket>, Status> {
        Ok(Response::new(
            self.consume_call(request.into_inner()).await?,
        ))
    }

    async fn update(&self, request: Request<UpdateRequest>) -> Result<Response<Ticket>, Status> {
        Ok(Response::new(self.update_call(request.into_inner()).await?))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        Ok(Response::new(self.delete_call(request.into_inner()).await?))
    }

    async fn batch(
        &self,
        request: Request<BatchRequest>,
    ) -> Result<Response<BatchResponse>, Status> {
        let outcomes = self.run_batch(request.into_inner().calls).await?;
        Ok(Response::new(BatchResponse { outcomes }))
    }

    type SessionStream = session::SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        if self.node.draining.load(Ordering::Acquire) {
            return Err(Status::unavailable(session::SESSION_DRAINING));
        }
        let leaving = self.node.leaving.subscribe();
        self.node.sessions.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(session::session(
            self.clone(),
            request.into_inner(),
            leaving,
        )))
    }

    async fn delete_all(
        &self,
        _request: Request<DeleteAllRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let deleted = self
            .observed(Op::DeleteAll, move || async move {
                self.serving()?.delete_all().await.map_err(to_status)
            })
            .await?;
        Ok(Response::new(DeleteResponse { deleted }))
    }

    async fn delete_for(
        &self,
        request: Request<DeleteForRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let principal = request.into_inner().principal;
        let deleted = self
            .observed(Op::DeleteFor, move || async move {
                self.serving()?
                    .delete_for(&principal)
                    .await
                    .map_err(to_status)
            })
            .await?;
        Ok(Response::new(DeleteResponse { deleted }))
    }

    async fn count(
        &self,
        _request: Request<CountRequest>,
    ) -> Result<Response<CountResponse>, Status> {
        self.clock_trusted()?;
        let counts = self.store.count();
        Ok(Response::new(CountResponse {
            total: counts.total,
            by_kind: counts.by_kind.into_iter().collect(),
        }))
    }

    async fn sessions_for(
        &self,
        request: Request<SessionsForRequest>,
    ) -> Result<Response<SessionsForResponse>, Status> {
        self.clock_trusted()?;
        let sessions = self
            .store
            .sessions_for(&request.into_inner().principal)
            .map_err(to_status)?;
        Ok(Response::new(SessionsForResponse {
            tickets: sessions.into_iter().map(ticket).collect(),
        }))
    }

    type ListStream = TicketStream;
    type WatchStream = watch::WatchStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        if self.node.draining.load(Ordering::Acquire) {
            return Err(Status::unavailable(
                "draining: this node is shutting down; watch another node",
            ));
        }
        let events = self.node.replicator.events();
        let stream = watch::watch(events, &self.node.node_id, request.into_inner())?;
        Ok(Response::new(stream))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<TicketStream>, Status> {
        self.clock_trusted()?;
        let request = request.into_inner();
        if let Some(kind) = &request.kind {
            crate::ticket::validate_kind(kind).map_err(to_status)?;
        }
        let filter = ListFilter {
            kind: request.kind,
            principal: request.principal,
        };
        let limit = if request.limit == 0 {
            u64::MAX
        } else {
            request.limit
        };
        let (tx, rx) = mpsc::channel(LIST_PAGE);
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut cursor = Some(ListCursor::default());
            let mut sent = 0u64;
            while let Some(at) = cursor.take() {
                let want = LIST_PAGE.min(usize::try_from(limit - sent).unwrap_or(LIST_PAGE));
                let (page, next) = store.list_page(&filter, at, want);
                for view in page {
                    if tx.send(Ok(ticket(view))).await.is_err() {
                        return; // the client went away
                    }
                    sent += 1;
                }
                if sent >= limit {
                    return;
                }
                cursor = next;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn members(
        &self,
        _request: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let Some(membership) = &self.node.membership else {
            let me = Member {
                node_id: self.node.node_id.clone(),
                api_addr: self.node.api_addr.clone(),
                state: if self.node.draining.load(Ordering::Acquire) {
                    "draining".into()
                } else {
                    "alive".into()
                },
                ready: self.node.ready.load(Ordering::Acquire),
                version: env!("CARGO_PKG_VERSION").into(),
                tickets: self.store.count().total,
            };
            return Ok(Response::new(MembersResponse { members: vec![me] }));
        };
        let mut members: Vec<Member> = membership
            .all_members()
            .into_iter()
            .map(|m| Member {
                tickets: if *m.node_id == *self.node.node_id {
                    self.store.count().total
                } else {
                    m.tickets
                },
                node_id: m.node_id.to_string(),
                api_addr: m.api_addr,
                state: m.state.as_str().into(),
                ready: m.ready,
                version: m.version,
            })
            .collect();
        members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(Response::new(MembersResponse { members }))
    }

    async fn stats(&self, _request: Request<StatsRequest>) -> Result<Response<NodeStats>, Status> {
        Ok(Response::new(self.node.stats()))
    }
}
