//! Ticket events from [`Client::watch`](crate::Client::watch): what single
//! logout needs to hear (a TGT that expired or was deleted, with its payload).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use tessera_proto::v1 as pb;
use tokio_stream::Stream;
use tonic::Streaming;

use crate::convert::time_from_ms;
use crate::{Error, Ticket};

/// Which events [`Client::watch`](crate::Client::watch) streams; the default
/// is every event from now on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchFilter {
    /// Only tickets of these kinds (empty: every kind).
    pub kinds: Vec<String>,
    /// Only these events (empty: every event).
    pub events: Vec<EventType>,
    /// Resume after this position (the last [`TicketEvent::position`] or
    /// [`WatchItem::Gap`] position received from the same node).
    pub resume_after: Option<String>,
}

/// What happened to a ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// A put created it (or replaced a live ticket).
    Created,
    /// A call deleted it (see [`EventCause`]).
    Deleted,
    /// Its hard deadline or idle timeout passed.
    Expired,
    /// The use that reached its `max_uses` was taken.
    UsedUp,
}

/// Why a ticket was deleted or expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventCause {
    /// Deleted by a `delete` of this ticket.
    Delete,
    /// Deleted because it descended from a ticket a call deleted (logout).
    Cascade,
    /// Deleted by `delete_for` of its principal.
    DeleteFor,
    /// Deleted by `delete_all`.
    DeleteAll,
    /// Expired at its hard deadline.
    Deadline,
    /// Expired by its idle timeout.
    Idle,
}

/// One event, as the node that reported it saw it.
#[derive(Clone, PartialEq, Eq)]
pub struct TicketEvent {
    /// Resume after this event with [`WatchFilter::resume_after`].
    pub position: String,
    /// What happened.
    pub event: EventType,
    /// Why, for deletes and expiries.
    pub cause: Option<EventCause>,
    /// When the reporting node saw it.
    pub at: SystemTime,
    /// The ticket as it was: for a death, its last live state.
    pub ticket: Ticket,
    /// The node that reported it.
    pub node_id: String,
}

impl fmt::Debug for TicketEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketEvent")
            .field("position", &self.position)
            .field("event", &self.event)
            .field("cause", &self.cause)
            .field("at", &self.at)
            .field("ticket", &self.ticket)
            .field("node_id", &self.node_id)
            .finish()
    }
}

/// What a watch stream yields. (Nearly every item is an event; boxing it
/// would cost an allocation per event to shrink the rare gap.)
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum WatchItem {
    /// An event of a ticket.
    Event(TicketEvent),
    /// Events may be missing here: `missed` of them (`None`: unknown, e.g.
    /// the resume position was of another node or of an earlier run).
    Gap {
        /// Resume after this position.
        position: String,
        /// How many events may be missing, if known.
        missed: Option<u64>,
        /// Why, in words.
        reason: String,
    },
}

impl WatchItem {
    /// The position to resume after this item.
    pub fn position(&self) -> &str {
        match self {
            WatchItem::Event(event) => &event.position,
            WatchItem::Gap { position, .. } => position,
        }
    }
}

pub(crate) fn event_type_to_pb(event: EventType) -> i32 {
    (match event {
        EventType::Created => pb::EventType::Created,
        EventType::Deleted => pb::EventType::Deleted,
        EventType::Expired => pb::EventType::Expired,
        EventType::UsedUp => pb::EventType::UsedUp,
    }) as i32
}

fn item(message: pb::WatchEvent) -> Result<WatchItem, Error> {
    let malformed = |what: &str| {
        Error::Other(tonic::Status::internal(format!(
            "malformed watch event: {what}"
        )))
    };
    match message.event {
        Some(pb::watch_event::Event::Ticket(event)) => {
            let kind = match pb::EventType::try_from(event.r#type) {
                Ok(pb::EventType::Created) => EventType::Created,
                Ok(pb::EventType::Deleted) => EventType::Deleted,
                Ok(pb::EventType::Expired) => EventType::Expired,
                Ok(pb::EventType::UsedUp) => EventType::UsedUp,
                _ => return Err(malformed("unknown event type")),
            };
            let cause = match pb::EventCause::try_from(event.cause) {
                Ok(pb::EventCause::Delete) => Some(EventCause::Delete),
                Ok(pb::EventCause::Cascade) => Some(EventCause::Cascade),
                Ok(pb::EventCause::DeleteFor) => Some(EventCause::DeleteFor),
                Ok(pb::EventCause::DeleteAll) => Some(EventCause::DeleteAll),
                Ok(pb::EventCause::Deadline) => Some(EventCause::Deadline),
                Ok(pb::EventCause::Idle) => Some(EventCause::Idle),
                _ => None,
            };
            let ticket = event.ticket.ok_or_else(|| malformed("no ticket"))?;
            Ok(WatchItem::Event(TicketEvent {
                position: message.position,
                event: kind,
                cause,
                at: time_from_ms(event.at_ms),
                ticket: ticket.into(),
                node_id: event.node_id,
            }))
        }
        Some(pb::watch_event::Event::Gap(gap)) => Ok(WatchItem::Gap {
            position: message.position,
            missed: (gap.missed > 0).then_some(gap.missed),
            reason: gap.reason,
        }),
        None => Err(malformed("empty")),
    }
}

/// Events streamed by [`Client::watch`](crate::Client::watch), in the order
/// the node recorded them. It does not end by itself: it yields an error
/// when the node stops, drops a watcher too slow to keep up (both
/// [`Error::Unavailable`]), or the connection breaks; watch again with the
/// last position received as [`WatchFilter::resume_after`] to get what was
/// missed.
pub struct EventStream {
    inner: Option<Streaming<pb::WatchEvent>>,
}

impl EventStream {
    pub(crate) fn new(inner: Streaming<pb::WatchEvent>) -> Self {
        EventStream { inner: Some(inner) }
    }

    /// The next item; `Ok(None)` only if the node ended the stream cleanly.
    pub async fn message(&mut self) -> Result<Option<WatchItem>, Error> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx))
            .await
            .transpose()
    }
}

impl Stream for EventStream {
    type Item = Result<WatchItem, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(message))) => Poll::Ready(Some(item(message))),
            Poll::Ready(Some(Err(status))) => {
                self.inner = None;
                // A watch ended for being too slow is to be resumed, not a
                // bad request: the one place RESOURCE_EXHAUSTED means "retry".
                let error = if status.code() == tonic::Code::ResourceExhausted {
                    Error::Unavailable(crate::error::describe(&status))
                } else {
                    Error::from(status)
                };
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => {
                self.inner = None;
                Poll::Ready(None)
            }
        }
    }
}
