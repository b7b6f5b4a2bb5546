//! The stream of tickets returned by [`Client::list`](crate::Client::list).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tessera_proto::v1 as pb;
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;
use tonic::Streaming;

use crate::{Error, Ticket};

/// Tickets streamed by [`Client::list`](crate::Client::list), in the server's order.
///
/// Implements [`Stream`] (use `tokio_stream::StreamExt::next` or
/// `futures::StreamExt::next`), or call [`TicketStream::message`] without any
/// extension trait.
///
/// A listing can legitimately take longer than the call timeout, so the timeout
/// applies to each wait for the next ticket rather than to the whole stream: if
/// the server sends nothing for that long, the stream yields
/// [`Error::Timeout`] and ends. Any error ends the stream; it is not resumed on
/// another node (that could repeat or skip tickets).
pub struct TicketStream {
    /// The first ticket, read while the call could still fail over.
    first: Option<pb::Ticket>,
    /// `None` once the stream has ended or failed.
    inner: Option<Streaming<pb::Ticket>>,
    idle_timeout: Duration,
    timer: Pin<Box<Sleep>>,
    /// Whether `timer` is armed for the current wait.
    waiting: bool,
}

impl TicketStream {
    pub(crate) fn new(
        inner: Streaming<pb::Ticket>,
        first: Option<pb::Ticket>,
        idle_timeout: Duration,
    ) -> Self {
        // An empty listing has ended already.
        let inner = first.is_some().then_some(inner);
        TicketStream {
            first,
            inner,
            idle_timeout,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            waiting: false,
        }
    }

    /// The next ticket, `Ok(None)` at the end of the listing.
    pub async fn message(&mut self) -> Result<Option<Ticket>, Error> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx))
            .await
            .transpose()
    }

    /// Reads the rest of the listing into a vector.
    pub async fn collect_all(mut self) -> Result<Vec<Ticket>, Error> {
        let mut tickets = Vec::new();
        while let Some(ticket) = self.message().await? {
            tickets.push(ticket);
        }
        Ok(tickets)
    }
}

impl Stream for TicketStream {
    type Item = Result<Ticket, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(first.into())));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if !this.waiting {
            // Arm the timer when the caller starts waiting, not when the last
            // ticket arrived: a slow consumer is not a slow server.
            let deadline = Instant::now()
                .checked_add(this.idle_timeout)
                .unwrap_or_else(far_future);
            this.timer.as_mut().reset(deadline);
            this.waiting = true;
        }
        match Pin::new(inner).poll_next(cx) {
            Poll::Ready(Some(Ok(ticket))) => {
                this.waiting = false;
                Poll::Ready(Some(Ok(ticket.into())))
            }
            Poll::Ready(Some(Err(status))) => {
                this.inner = None;
                Poll::Ready(Some(Err(Error::from(status))))
            }
            Poll::Ready(None) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.inner = None;
                    Poll::Ready(Some(Err(Error::Timeout(format!(
                        "no ticket from the listing within {:?}",
                        this.idle_timeout
                    )))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

fn far_future() -> Instant {
    // About 30 years, as tokio does for its own "never".
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

impl fmt::Debug for TicketStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketStream")
            .field("ended", &(self.first.is_none() && self.inner.is_none()))
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}
