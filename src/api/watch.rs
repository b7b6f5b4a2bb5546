//! The `Watch` RPC: a node's ticket events ([`crate::watch`]) as a server
//! stream, filtered by kind and event type, resumable by position.
//!
//! Each watcher is one task reading the node's event ring through its own
//! cursor into a small channel: a watcher costs a position and at most
//! [`WATCH_BUFFER`] events in flight, whatever it reads. One that reads
//! nothing for [`SLOW_WATCHER`], or that the ring moved past, is ended with
//! RESOURCE_EXHAUSTED saying how to resume; the node never waits for it.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tessera_proto::v1::{
    EventCause, EventType, TicketEvent, WatchEvent, WatchGap, WatchRequest, watch_event,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::ticket;
use crate::watch::{DeleteCause, Delivery, Ended, Event, EventKind, EventLog, Interest};

/// Events in flight to one watcher.
pub const WATCH_BUFFER: usize = 16;

/// How long a watcher may leave its buffer full before it is ended.
pub const SLOW_WATCHER: Duration = Duration::from_secs(30);

/// Kinds and event types one watcher may filter on, at most.
const MAX_FILTERS: usize = 64;

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

/// What a watcher asked to see.
struct Filter {
    kinds: HashSet<String>,
    types: HashSet<i32>,
}

impl Filter {
    fn from_request(request: &WatchRequest) -> Result<Filter, Status> {
        if request.kinds.len() > MAX_FILTERS || request.types.len() > MAX_FILTERS {
            return Err(Status::invalid_argument(format!(
                "watch: at most {MAX_FILTERS} kinds and {MAX_FILTERS} event types"
            )));
        }
        for kind in &request.kinds {
            crate::ticket::validate_kind(kind).map_err(super::to_status)?;
        }
        for &value in &request.types {
            match EventType::try_from(value) {
                Ok(EventType::Unspecified) | Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "watch: unknown event type {value}"
                    )));
                }
                Ok(_) => {}
            }
        }
        Ok(Filter {
            kinds: request.kinds.iter().cloned().collect(),
            types: request.types.iter().copied().collect(),
        })
    }

    /// What the node must record for this watcher.
    fn interest(&self) -> Interest {
        let types = if self.types.is_empty() {
            Interest::all().types
        } else {
            [
                EventKind::Created,
                EventKind::Deleted(DeleteCause::Delete),
                EventKind::Expired { idle: false },
                EventKind::UsedUp,
            ]
            .into_iter()
            .filter(|kind| self.types.contains(&(event_type(*kind) as i32)))
            .map(EventKind::bit)
            .fold(0, |bits, bit| bits | bit)
        };
        Interest {
            types,
            kinds: (!self.kinds.is_empty()).then(|| self.kinds.clone()),
        }
    }

    fn admits(&self, event: &Event) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&event.ticket.kind))
            && (self.types.is_empty() || self.types.contains(&(event_type(event.kind) as i32)))
    }
}

fn event_type(kind: EventKind) -> EventType {
    match kind {
        EventKind::Created => EventType::Created,
        EventKind::Deleted(_) => EventType::Deleted,
        EventKind::Expired { .. } => EventType::Expired,
        EventKind::UsedUp => EventType::UsedUp,
    }
}

fn event_cause(kind: EventKind) -> EventCause {
    match kind {
        EventKind::Deleted(DeleteCause::Delete) => EventCause::Delete,
        EventKind::Deleted(DeleteCause::Cascade) => EventCause::Cascade,
        EventKind::Deleted(DeleteCause::DeleteFor) => EventCause::DeleteFor,
        EventKind::Deleted(DeleteCause::DeleteAll) => EventCause::DeleteAll,
        EventKind::Expired { idle: false } => EventCause::Deadline,
        EventKind::Expired { idle: true } => EventCause::Idle,
        EventKind::Created | EventKind::UsedUp => EventCause::Unspecified,
    }
}

fn message(log: &EventLog, node_id: &str, delivery: Delivery) -> WatchEvent {
    match delivery {
        Delivery::Event(event) => WatchEvent {
            position: log.position(event.seq),
            event: Some(watch_event::Event::Ticket(TicketEvent {
                r#type: event_type(event.kind) as i32,
                cause: event_cause(event.kind) as i32,
                at_ms: event.at_ms,
                ticket: Some(ticket(event.ticket.clone())),
                node_id: node_id.to_owned(),
            })),
        },
        Delivery::Gap {
            missed,
            resume_after,
        } => WatchEvent {
            position: log.position(resume_after),
            event: Some(watch_event::Event::Gap(WatchGap {
                missed: missed.unwrap_or(0),
                reason: match missed {
                    Some(n) => format!(
                        "{n} events passed out of this node's event buffer before the resume position was reached"
                    ),
                    None => "the resume position is of another node or of an earlier run of this one: every event this node still holds follows, some may have been missed".to_owned(),
                },
            })),
        },
    }
}

/// Start a watcher on `log` for `request`.
pub fn watch(
    log: &Arc<EventLog>,
    node_id: &str,
    request: WatchRequest,
) -> Result<WatchStream, Status> {
    let filter = Filter::from_request(&request)?;
    let slot = log.admit_watcher().ok_or_else(|| {
        Status::resource_exhausted(format!(
            "this node serves {} watchers already; watch another node",
            crate::watch::MAX_WATCHERS
        ))
    })?;
    let mut subscription = log
        .subscribe(request.resume_after.as_deref(), &filter.interest())
        .map_err(|e| Status::invalid_argument(format!("resume_after: {e}")))?;
    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    let (end_tx, end_rx) = oneshot::channel::<Status>();
    let log = log.clone();
    let node_id = node_id.to_owned();
    tokio::spawn(async move {
        let _slot = slot;
        let end = loop {
            let delivery = tokio::select! {
                delivery = subscription.next() => delivery,
                () = tx.closed() => return, // the watcher went away
            };
            let delivery = match delivery {
                Ok(Delivery::Event(event)) if !filter.admits(&event) => continue,
                Ok(delivery) => delivery,
                Err(Ended::FellBehind { missed }) => {
                    break Status::resource_exhausted(format!(
                        "watcher too slow: {missed} events passed out of this node's buffer before it read them; watch again with resume_after set to the last position received (a gap event then says how many were missed)"
                    ));
                }
                Err(Ended::Closed) => {
                    break Status::unavailable(
                        "draining: this node is shutting down; watch again (on another node) with resume_after set to the last position received",
                    );
                }
            };
            match tx
                .send_timeout(Ok(message(&log, &node_id, delivery)), SLOW_WATCHER)
                .await
            {
                Ok(()) => {}
                Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                    break Status::resource_exhausted(format!(
                        "watcher too slow: it read nothing for {} s; watch again with resume_after set to the last position received",
                        SLOW_WATCHER.as_secs()
                    ));
                }
                Err(mpsc::error::SendTimeoutError::Closed(_)) => return,
            }
        };
        let _ = end_tx.send(end);
    });
    let end = futures::stream::once(end_rx).filter_map(|end| async move { end.ok().map(Err) });
    Ok(Box::pin(ReceiverStream::new(rx).chain(end)))
}
