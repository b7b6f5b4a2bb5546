//! Natural batching: the ticket calls of concurrent callers share batches.
//!
//! Every node has one batcher task. A caller queues its call and waits for its
//! own outcome; the task sends whatever is queued as one batch as soon as one
//! of [`MAX_IN_FLIGHT`] slots is free: on the node's `Session` stream (see
//! `session`), or as a `Batch` RPC to a node without one. At low load each call therefore
//! goes out alone at once (no added wait), and under load the calls that
//! arrive while earlier batches are on the wire go out together, paying one
//! HTTP/2 stream, one server task and one wake-up for all of them: per call,
//! that overhead was most of the cost on both sides.
//!
//! What a caller sees does not change: each call gets the outcome its own RPC
//! would have had, and a failure of the whole batch (a broken connection, a
//! timeout, a refused token) reaches every call in it as its own failure, so
//! the failover rules (see `failover`) apply to each call unchanged. A node
//! that knows neither `Session` nor `Batch` (an older version during a rolling
//! deploy) is sent each call as its own RPC for [`UNARY_FALLBACK`], then
//! asked again.

use std::error::Error as _;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_proto::v1 as pb;
use tessera_proto::v1::batch_call::Call;
use tessera_proto::v1::batch_outcome::Outcome;
use tessera_proto::v1::ticket_store_client::TicketStoreClient;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::client::authorized;
use crate::session::{NotSent, Sessions};

/// Batches on the wire to one node at once: two keep the node busy (one is
/// served while the next fills); more only make batches smaller, and each
/// batch costs the node a stream, a decode and an encode. On the bench's
/// `cas` workload (one node, 64 callers) 2 gave 1.26x the throughput of 4 at
/// less CPU; 1 was slower than both (docs/benchmarks.md).
const MAX_IN_FLIGHT: usize = 2;
/// Most calls in one batch (the server takes up to 1024).
const MAX_CALLS: usize = 256;
/// Most encoded call bytes in one batch; a larger call goes alone. Below the
/// 64 KiB a node accepts beyond its largest payload, so a batch is refused for
/// its size only when its one call would be.
const MAX_BYTES: usize = 48 * 1024;
/// How long a node that answered `Batch` with UNIMPLEMENTED gets single RPCs.
const UNARY_FALLBACK: Duration = Duration::from_secs(60);

/// What one call resolves to: its outcome, or the status its RPC failed with.
type Reply = Result<Outcome, Status>;

/// A call waiting for a batch.
struct Queued {
    call: Call,
    timeout: Duration,
    reply: oneshot::Sender<Reply>,
}

/// The queue of one node's batcher task; the task ends when the last handle is
/// dropped.
#[derive(Clone)]
pub(crate) struct Batcher {
    queue: mpsc::UnboundedSender<Queued>,
}

/// What every batch to one node needs.
struct Link {
    grpc: TicketStoreClient<Channel>,
    authorization: Option<AsciiMetadataValue>,
    /// While set, the node gets single RPCs instead of batches.
    unary: Fallback,
    /// Whether the node behind the current connection has answered a batch.
    knows_batch: AtomicBool,
    /// The node's `Session` stream, the transport of choice.
    sessions: Sessions,
}

/// A node that lacks a newer RPC is sent the older one for a while (then the
/// newer is tried again: the node may have been upgraded in place).
#[derive(Default)]
pub(crate) struct Fallback {
    until: Mutex<Option<Instant>>,
}

impl Fallback {
    /// Use the older RPC for the next `period`.
    pub(crate) fn start(&self, period: Duration) {
        *self.until.lock().expect("fallback lock") = Some(Instant::now() + period);
    }

    /// Whether the older RPC is in use now.
    pub(crate) fn active(&self) -> bool {
        let mut until = self.until.lock().expect("fallback lock");
        match *until {
            Some(at) if Instant::now() < at => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }
}

impl Batcher {
    /// Starts the batcher task of one node (on the current Tokio runtime).
    pub(crate) fn start(
        grpc: TicketStoreClient<Channel>,
        authorization: Option<AsciiMetadataValue>,
    ) -> Batcher {
        let (queue, calls) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            grpc,
            authorization,
            unary: Fallback::default(),
            knows_batch: AtomicBool::new(false),
            sessions: Sessions::default(),
        });
        tokio::spawn(run(link, calls));
        Batcher { queue }
    }

    /// Queues `call` for the next batch now; the future waits for its outcome.
    /// A call-level error comes back as the `Status` its own RPC would have
    /// returned.
    pub(crate) fn call(
        &self,
        call: Call,
        timeout: Duration,
    ) -> impl Future<Output = Result<Outcome, Status>> + use<> {
        let (reply, outcome) = oneshot::channel();
        let queued = Queued {
            call,
            timeout,
            reply,
        };
        let sent = self.queue.send(queued).is_ok();
        async move {
            if !sent {
                return Err(stopped());
            }
            outcome.await.unwrap_or_else(|_| Err(stopped()))
        }
    }
}

/// The batcher task stopped (its runtime is shutting down): whether the call
/// was sent is unknown, so this status never fails over a call that is not
/// idempotent.
fn stopped() -> Status {
    Status::unknown("tessera-client: the batcher task stopped")
}

/// The batcher task: wait for a free slot, then for a first call, then take
/// what else is queued, up to the limits, and send it all as one batch.
async fn run(link: Arc<Link>, mut calls: mpsc::UnboundedReceiver<Queued>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // A call that would have taken a batch over MAX_BYTES: it opens the next
    // one, so one oversized call (which the node refuses whole) fails alone.
    let mut carried: Option<Queued> = None;
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(call) => call,
            None => match calls.recv().await {
                Some(call) => call,
                None => return,
            },
        };
        let mut bytes = first.call.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_CALLS {
            let Ok(next) = calls.try_recv() else { break };
            let size = next.call.encoded_len();
            if bytes + size > MAX_BYTES {
                carried = Some(next);
                break;
            }
            bytes += size;
            batch.push(next);
        }
        // Whoever gave up waiting (a timeout) needs no answer: never send their
        // call, which for a consume is also the safe side.
        batch.retain(|q| !q.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let link = Arc::clone(&link);
        tokio::spawn(async move {
            link.send(batch).await;
            drop(slot);
        });
    }
}

impl Link {
    /// Sends one batch and hands every caller its reply: on the node's
    /// session, or as a `Batch` RPC to a node without sessions.
    async fn send(&self, batch: Vec<Queued>) {
        if self.unary.active() {
            return send_unary(self, batch).await;
        }
        let timeout = batch.iter().map(|q| q.timeout).max().unwrap_or_default();
        let (calls, replies): (Vec<pb::BatchCall>, Vec<Waiting>) = batch
            .into_iter()
            .map(|q| {
                let waiting = Waiting {
                    reply: q.reply,
                    timeout: q.timeout,
                };
                (pb::BatchCall { call: Some(q.call) }, waiting)
            })
            .unzip();
        let open = |requests| authorized(requests, self.authorization.as_ref());
        let sent = self
            .sessions
            .send(&self.grpc, open, calls, replies, timeout);
        if let Err(NotSent::Unsupported(calls, replies)) = sent.await {
            self.send_batch(calls, replies, timeout).await;
        }
    }

    /// One `Batch` RPC.
    async fn send_batch(
        &self,
        calls: Vec<pb::BatchCall>,
        replies: Vec<Waiting>,
        timeout: Duration,
    ) {
        // Until this node has answered a batch, keep the calls: an older node
        // answers UNIMPLEMENTED without acting on any, and they go again alone.
        let kept = (!self.knows_batch.load(Ordering::Relaxed)).then(|| calls.clone());
        let request = self.request(pb::BatchRequest { calls }, timeout);
        match self.grpc.clone().batch(request).await {
            Ok(response) => {
                self.knows_batch.store(true, Ordering::Relaxed);
                let outcomes = response.into_inner().outcomes;
                if outcomes.len() != replies.len() {
                    let status = Status::internal(format!(
                        "the node answered a batch of {} calls with {} outcomes",
                        replies.len(),
                        outcomes.len()
                    ));
                    return reply_all(replies, &status);
                }
                for (waiting, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = waiting.reply.send(outcome_reply(outcome));
                }
            }
            Err(status) if status.code() == Code::Unimplemented && status.source().is_none() => {
                // An older node, which acted on none of the calls.
                self.unary.start(UNARY_FALLBACK);
                match kept {
                    Some(calls) => {
                        let again = calls
                            .into_iter()
                            .zip(replies)
                            .filter_map(|(call, w)| {
                                Some(Queued {
                                    call: call.call?,
                                    timeout: w.timeout,
                                    reply: w.reply,
                                })
                            })
                            .collect();
                        send_unary(self, again).await;
                    }
                    // Swapped for an older version since its last batch; the
                    // calls are gone, so they fail this once.
                    None => {
                        self.knows_batch.store(false, Ordering::Relaxed);
                        reply_all(replies, &status);
                    }
                }
            }
            Err(status) => {
                if status.source().is_some() {
                    // The connection broke: what answers next may be another
                    // process (another version) on the same address.
                    self.knows_batch.store(false, Ordering::Relaxed);
                }
                reply_all(replies, &status);
            }
        }
    }

    /// A request with the token and the `grpc-timeout` of its longest-waiting call.
    fn request<M>(&self, msg: M, timeout: Duration) -> Request<M> {
        let mut request = authorized(msg, self.authorization.as_ref());
        // The server stops working on it once every caller has given up.
        request.set_timeout(timeout);
        request
    }

    /// One call as its own RPC, for a node that does not know `Batch`.
    async fn unary(&self, call: Call, timeout: Duration) -> Reply {
        let mut grpc = self.grpc.clone();
        let ticket = |r: tonic::Response<pb::Ticket>| Outcome::Ticket(r.into_inner());
        match call {
            Call::Put(m) => grpc.put(self.request(m, timeout)).await.map(ticket),
            Call::Get(m) => grpc.get(self.request(m, timeout)).await.map(ticket),
            Call::Touch(m) => grpc.touch(self.request(m, timeout)).await.map(ticket),
            Call::Consume(m) => grpc.consume(self.request(m, timeout)).await.map(ticket),
            Call::Update(m) => grpc.update(self.request(m, timeout)).await.map(ticket),
            Call::Delete(m) => grpc
                .delete(self.request(m, timeout))
                .await
                .map(|r| Outcome::Deleted(r.into_inner())),
        }
    }
}

/// A caller waiting for the reply to a call that is on the wire.
pub(crate) struct Waiting {
    pub(crate) reply: oneshot::Sender<Reply>,
    timeout: Duration,
}

/// Each call of a batch as its own RPC, all at once.
async fn send_unary(link: &Link, batch: Vec<Queued>) {
    let each = batch.into_iter().map(|q| async move {
        let reply = link.unary(q.call, q.timeout).await;
        let _ = q.reply.send(reply);
    });
    futures_util::future::join_all(each).await;
}

/// The same failure for every call of a batch.
pub(crate) fn reply_all(replies: Vec<Waiting>, status: &Status) {
    for waiting in replies {
        let _ = waiting.reply.send(Err(status.clone()));
    }
}

/// A call's outcome, with its error as the status its own RPC would have had.
pub(crate) fn outcome_reply(outcome: pb::BatchOutcome) -> Reply {
    match outcome.outcome {
        Some(Outcome::Error(error)) => Err(Status::new(Code::from(error.code), error.message)),
        Some(outcome) => Ok(outcome),
        None => Err(Status::internal(
            "the node answered a call with an empty outcome",
        )),
    }
}
