//! The `Session` RPC: batches of ticket calls on one long-lived stream.
//!
//! A `Batch` RPC costs its own HTTP/2 stream, headers, trailers and server
//! task; on a session each batch is one message each way, tagged with the
//! client's id. Each batch runs exactly as [`TicketApi::run_batch`] runs a
//! `Batch` RPC, and up to [`SESSION_BATCHES`] run at once; beyond that the node
//! stops reading, and HTTP/2 flow control holds the client back.
//!
//! The response stream itself drives the work (no spawned task), so a session
//! lives exactly as long as its connection: a killed node or a vanished client
//! leaves nothing running. When the node leaves it stops reading, answers every
//! batch it read, and ends the stream with UNAVAILABLE "draining": a batch the
//! client got no answer for was never read, so none of its calls was acted on.

use std::pin::Pin;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tessera_proto::v1::batch_outcome::Outcome;
use tessera_proto::v1::{BatchOutcome, CallError, SessionRequest, SessionResponse};
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Status, Streaming};

use super::TicketApi;

/// Batches of one session running at once: a client keeps a couple in flight
/// (tessera-client two), so this bounds only a misbehaving one.
pub const SESSION_BATCHES: usize = 16;

/// How a node that leaves ends its sessions; the `draining` prefix tells the
/// client that the batches it got no answer for were not acted upon.
pub const SESSION_DRAINING: &str = "draining: this node is shutting down; batches not answered were not acted upon, use another node";

pub type SessionStream = Pin<Box<dyn Stream<Item = Result<SessionResponse, Status>> + Send>>;

/// One open session: what it reads, what runs, and how it will end.
struct Session {
    api: TicketApi,
    /// `None` once nothing more will be read (the client closed its side, the
    /// node is leaving, or a message was refused).
    inbound: Option<Streaming<SessionRequest>>,
    running: FuturesUnordered<BoxFuture<'static, SessionResponse>>,
    leaving: watch::Receiver<bool>,
    /// The status to end with once every batch read has been answered.
    closing: Option<Status>,
    ended: bool,
}

/// The response stream of a session opened with `inbound`.
pub fn session(
    api: TicketApi,
    inbound: Streaming<SessionRequest>,
    leaving: watch::Receiver<bool>,
) -> SessionStream {
    let session = Session {
        api,
        inbound: Some(inbound),
        running: FuturesUnordered::new(),
        leaving,
        closing: None,
        ended: false,
    };
    Box::pin(futures::stream::unfold(session, Session::next))
}

impl Session {
    /// The next answer (or the final status), driving reads and batches until
    /// there is one.
    async fn next(mut self) -> Option<(Result<SessionResponse, Status>, Session)> {
        loop {
            if self.ended {
                return None;
            }
            if self.inbound.is_none() && self.running.is_empty() {
                self.ended = true;
                return self.closing.take().map(|status| (Err(status), self));
            }
            let reading = self.running.len() < SESSION_BATCHES;
            let event = tokio::select! {
                biased;
                Some(answer) = self.running.next(), if !self.running.is_empty() => Event::Answered(answer),
                _ = self.leaving.wait_for(|leaving| *leaving), if self.inbound.is_some() => Event::Leaving,
                message = next_message(&mut self.inbound), if reading => Event::Read(message),
            };
            match event {
                Event::Answered(answer) => return Some((Ok(answer), self)),
                Event::Leaving => self.stop_reading(Status::unavailable(SESSION_DRAINING)),
                Event::Read(Ok(Some(request))) => {
                    let api = self.api.clone();
                    self.running
                        .push(Box::pin(async move { api.session_batch(request).await }));
                }
                // The client closed its side: answer what runs, then end.
                Event::Read(Ok(None)) => self.inbound = None,
                Event::Read(Err(status)) => self.stop_reading(status),
            }
        }
    }

    fn stop_reading(&mut self, status: Status) {
        self.inbound = None;
        self.closing.get_or_insert(status);
    }
}

/// What woke a session up.
enum Event {
    Answered(SessionResponse),
    Leaving,
    Read(Result<Option<SessionRequest>, Status>),
}

async fn next_message(
    inbound: &mut Option<Streaming<SessionRequest>>,
) -> Result<Option<SessionRequest>, Status> {
    match inbound {
        Some(stream) => stream.message().await,
        None => std::future::pending().await,
    }
}

impl TicketApi {
    /// One batch of a session, answered under its id.
    async fn session_batch(&self, request: SessionRequest) -> SessionResponse {
        let id = request.id;
        let calls = request.calls.len();
        let batch = self.run_batch(request.calls);
        let answered = match request.timeout_ms {
            0 => batch.await,
            ms => match tokio::time::timeout(Duration::from_millis(ms), batch).await {
                Ok(answered) => answered,
                // As a `Batch` RPC past its grpc-timeout: each call may or may
                // not have been acted upon, and its caller has given up.
                Err(_) => {
                    let late = Status::deadline_exceeded("the batch's deadline passed on the node");
                    Ok((0..calls).map(|_| error_outcome(&late)).collect())
                }
            },
        };
        match answered {
            Ok(outcomes) => SessionResponse {
                id,
                outcomes,
                refused: None,
            },
            Err(status) => SessionResponse {
                id,
                outcomes: Vec::new(),
                refused: Some(call_error(&status)),
            },
        }
    }
}

/// A call's failure as it travels in a batch's answer.
pub(super) fn call_error(status: &Status) -> CallError {
    CallError {
        code: status.code() as i32,
        message: status.message().to_owned(),
    }
}

pub(super) fn error_outcome(status: &Status) -> BatchOutcome {
    BatchOutcome {
        outcome: Some(Outcome::Error(call_error(status))),
    }
}
