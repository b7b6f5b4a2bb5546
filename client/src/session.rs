//! The session: the batcher's batches on one long-lived `Session` stream.
//!
//! A `Batch` RPC costs both sides an HTTP/2 stream with its headers and
//! trailers; on a session each batch is one message each way, tagged with an
//! id, and the node answers batches as they finish. What a caller sees does
//! not change: the same per-call outcomes, and a failure of the stream (a
//! broken connection) reaches every call it left unanswered as that call's
//! own failure, so the failover rules apply unchanged. When the node leaves it
//! answers every batch it read and ends the stream with UNAVAILABLE
//! "draining": the calls left unanswered then were never read, and fail over
//! like any call a draining node refused.
//!
//! A session opens on the first batch and again after it ended. A node that
//! does not know `Session` (an older version during a rolling deploy) answers
//! UNIMPLEMENTED before acting on anything; the batcher then uses `Batch` RPCs
//! for [`BATCH_FALLBACK`] and asks again.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_proto::v1 as pb;
use tessera_proto::v1::ticket_store_client::TicketStoreClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::batch::{Fallback, Waiting, outcome_reply, reply_all};

/// How long a node that answered `Session` with UNIMPLEMENTED gets `Batch` RPCs.
const BATCH_FALLBACK: Duration = Duration::from_secs(60);
/// Batches queued for the stream beyond those HTTP/2 has taken; the batcher
/// has at most two in flight, so this never holds one back.
const QUEUE: usize = 4;

/// The open session to one node, if any, and whether the node has one.
#[derive(Default)]
pub(crate) struct Sessions {
    current: tokio::sync::Mutex<Option<Arc<Session>>>,
    /// While set, the node gets `Batch` RPCs instead.
    batch_only: Fallback,
}

/// One open stream: where batches go, and who waits for which answer.
struct Session {
    requests: mpsc::Sender<pb::SessionRequest>,
    waiting: Arc<Mutex<Waiters>>,
}

/// The callers of every batch sent and not yet answered.
#[derive(Default)]
struct Waiters {
    next_id: u64,
    by_id: HashMap<u64, Vec<Waiting>>,
    /// Set when the stream ended: nothing more will be answered on it.
    ended: bool,
}

/// Why a batch did not go on a session.
pub(crate) enum NotSent {
    /// The node has no `Session` (an older version): send it as a `Batch` RPC.
    Unsupported(Vec<pb::BatchCall>, Vec<Waiting>),
    /// Opening the stream failed; the callers have their status.
    Failed,
}

impl Sessions {
    /// Sends one batch on the node's session, opening one if needed; its
    /// callers get their replies from the session's reader.
    pub(crate) async fn send(
        &self,
        grpc: &TicketStoreClient<Channel>,
        request: impl Fn(
            ReceiverStream<pb::SessionRequest>,
        ) -> tonic::Request<ReceiverStream<pb::SessionRequest>>,
        mut calls: Vec<pb::BatchCall>,
        mut replies: Vec<Waiting>,
        timeout: Duration,
    ) -> Result<(), NotSent> {
        // A second try only when the stream ended between opening and sending,
        // with the batch still in hand (never sent).
        for _ in 0..2 {
            let session = match self.open(grpc, &request).await {
                Ok(session) => session,
                Err(Opened::Unsupported) => return Err(NotSent::Unsupported(calls, replies)),
                Err(Opened::Failed(status)) => {
                    reply_all(replies, &status);
                    return Err(NotSent::Failed);
                }
            };
            let id = {
                let mut waiters = session.waiting.lock().expect("session lock");
                if waiters.ended {
                    None
                } else {
                    let id = waiters.next_id;
                    waiters.next_id += 1;
                    waiters.by_id.insert(id, replies);
                    replies = Vec::new();
                    Some(id)
                }
            };
            let Some(id) = id else { continue };
            let message = pb::SessionRequest {
                id,
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                calls,
            };
            let Err(unsent) = session.requests.send(message).await else {
                return Ok(());
            };
            // The stream is gone and the batch never left: take its callers
            // back, unless the reader already failed them.
            calls = unsent.0.calls;
            match session
                .waiting
                .lock()
                .expect("session lock")
                .by_id
                .remove(&id)
            {
                Some(back) => replies = back,
                None => return Ok(()),
            }
        }
        let status = Status::unavailable(
            "tessera-client: the session kept ending before a batch could be sent",
        );
        reply_all(replies, &status);
        Err(NotSent::Failed)
    }

    /// The open session, or a new one.
    async fn open(
        &self,
        grpc: &TicketStoreClient<Channel>,
        request: &impl Fn(
            ReceiverStream<pb::SessionRequest>,
        ) -> tonic::Request<ReceiverStream<pb::SessionRequest>>,
    ) -> Result<Arc<Session>, Opened> {
        let mut current = self.current.lock().await;
        if let Some(session) = current.as_ref()
            && !session.waiting.lock().expect("session lock").ended
        {
            return Ok(Arc::clone(session));
        }
        *current = None;
        if self.batch_only.active() {
            return Err(Opened::Unsupported);
        }
        let (requests, outgoing) = mpsc::channel(QUEUE);
        match grpc
            .clone()
            .session(request(ReceiverStream::new(outgoing)))
            .await
        {
            Ok(response) => {
                let waiting = Arc::new(Mutex::new(Waiters::default()));
                // The reader holds the waiters only: when the client drops the
                // session's sender, the stream ends and so does the reader.
                tokio::spawn(read(response.into_inner(), Arc::clone(&waiting)));
                let session = Arc::new(Session { requests, waiting });
                *current = Some(Arc::clone(&session));
                Ok(session)
            }
            Err(status) if status.code() == Code::Unimplemented && status.source().is_none() => {
                self.batch_only.start(BATCH_FALLBACK);
                Err(Opened::Unsupported)
            }
            Err(status) => Err(Opened::Failed(status)),
        }
    }
}

enum Opened {
    Unsupported,
    Failed(Status),
}

/// Hands each answer to its callers; when the stream ends, fails every batch
/// it left unanswered with the status it ended with.
async fn read(mut answers: Streaming<pb::SessionResponse>, waiting: Arc<Mutex<Waiters>>) {
    let end = loop {
        match answers.message().await {
            Ok(Some(answer)) => {
                let replies = waiting
                    .lock()
                    .expect("session lock")
                    .by_id
                    .remove(&answer.id);
                if let Some(replies) = replies {
                    answer_batch(replies, answer);
                }
            }
            Ok(None) => {
                break Status::unknown(
                    "tessera-client: the node ended the session without answering",
                );
            }
            Err(status) => break status,
        }
    };
    let unanswered = {
        let mut waiters = waiting.lock().expect("session lock");
        waiters.ended = true;
        std::mem::take(&mut waiters.by_id)
    };
    for replies in unanswered.into_values() {
        reply_all(replies, &end);
    }
}

/// Each caller of one batch gets its call's outcome.
fn answer_batch(replies: Vec<Waiting>, answer: pb::SessionResponse) {
    if let Some(refused) = answer.refused {
        let status = Status::new(Code::from(refused.code), refused.message);
        return reply_all(replies, &status);
    }
    if answer.outcomes.len() != replies.len() {
        let status = Status::internal(format!(
            "the node answered a batch of {} calls with {} outcomes",
            replies.len(),
            answer.outcomes.len()
        ));
        return reply_all(replies, &status);
    }
    for (waiting, outcome) in replies.into_iter().zip(answer.outcomes) {
        let _ = waiting.reply.send(outcome_reply(outcome));
    }
}
