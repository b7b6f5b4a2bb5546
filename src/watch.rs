//! Ticket events for single logout: what `Watch` subscribers receive.
//!
//! Every node keeps the events it reports in one bounded ring ([`EventLog`]),
//! numbered from 1 in the order they were recorded. A subscriber reads the
//! ring through its own cursor, so it costs the node one position and never
//! a queue of its own; one that falls off the ring's end (it read slower than
//! events came) is told it fell behind and dropped, and reconnects from its
//! last position. Positions name the run of the node that issued them
//! ([`EventLog::epoch`]): a position from another node or an earlier run
//! resumes with a [`Delivery::Gap`] and the whole ring, so a subscriber that
//! reconnects gets what it missed at least once, or is told it may have
//! missed some.
//!
//! Which node reports which event is decided elsewhere
//! ([`crate::replication`]): a call's events on the node that served it,
//! an expiry on the ticket's arbiter, so a fleet that watches every node
//! hears each event once.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use crate::clock::Millis;
use crate::ticket::TicketView;

/// Events the ring keeps at most, whatever their size.
pub const MAX_EVENTS: usize = 100_000;

/// Bytes of events (ids, payloads, principals) the ring keeps at most.
pub const MAX_BYTES: usize = 64 << 20;

/// Subscribers one node serves at once (each is a task and a small buffer).
pub const MAX_WATCHERS: usize = 256;

/// Which events some watcher asked for: the ring records only those, so a
/// fleet that watches TGT expiries pays nothing per service-ticket call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interest {
    /// [`EventKind::bit`]s.
    pub types: u8,
    /// Ticket kinds; `None`: every kind.
    pub kinds: Option<HashSet<String>>,
}

impl Interest {
    /// Nothing (before the first watcher).
    pub fn none() -> Interest {
        Interest {
            types: 0,
            kinds: Some(HashSet::new()),
        }
    }

    /// Every event of every kind.
    pub fn all() -> Interest {
        Interest {
            types: EventKind::ALL_BITS,
            kinds: None,
        }
    }

    pub fn admits(&self, kind: EventKind, ticket_kind: &str) -> bool {
        self.types & kind.bit() != 0
            && self
                .kinds
                .as_ref()
                .is_none_or(|kinds| kinds.contains(ticket_kind))
    }

    /// Whether everything `other` admits, this admits.
    fn covers(&self, other: &Interest) -> bool {
        other.types & !self.types == 0
            && match (&self.kinds, &other.kinds) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(mine), Some(theirs)) => theirs.is_subset(mine),
            }
    }

    fn widen(&mut self, other: &Interest) {
        self.types |= other.types;
        self.kinds = match (self.kinds.take(), &other.kinds) {
            (Some(mut mine), Some(theirs)) if mine.len() + theirs.len() <= MAX_KINDS => {
                mine.extend(theirs.iter().cloned());
                Some(mine)
            }
            _ => None,
        };
    }
}

/// Kinds an [`Interest`] names one by one; past that it takes every kind.
const MAX_KINDS: usize = 64;

/// What happened to a ticket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A put created it (or replaced a live ticket with a new incarnation).
    Created,
    /// Removed by a call.
    Deleted(DeleteCause),
    /// Its hard deadline (`idle: false`) or idle timeout (`idle: true`) passed.
    Expired { idle: bool },
    /// The use that reached its `max_uses` was taken.
    UsedUp,
}

impl EventKind {
    const ALL_BITS: u8 = 0b1111;

    /// This kind's bit in [`Interest::types`].
    pub fn bit(self) -> u8 {
        match self {
            EventKind::Created => 1,
            EventKind::Deleted(_) => 2,
            EventKind::Expired { .. } => 4,
            EventKind::UsedUp => 8,
        }
    }
}

/// Which call removed a deleted ticket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteCause {
    /// `Delete` of this very ticket.
    Delete,
    /// It descended from a ticket a call removed (a logout's cascade).
    Cascade,
    /// `DeleteFor` of its principal (logout everywhere).
    DeleteFor,
    /// `DeleteAll`.
    DeleteAll,
}

/// One recorded event. `ticket` is the ticket as it was when it happened
/// (for a death, its last live state: CAS needs the TGT's payload, its
/// services, to send single logout).
#[derive(Clone, Debug)]
pub struct Event {
    pub seq: u64,
    pub at_ms: Millis,
    pub kind: EventKind,
    pub ticket: TicketView,
}

impl Event {
    /// What the event holds in memory, for the ring's byte budget.
    fn size(&self) -> usize {
        let ticket = &self.ticket;
        128 + ticket.id.len()
            + ticket.kind.len()
            + ticket.payload.len()
            + ticket.principal.as_ref().map_or(0, String::len)
            + ticket.parent.as_ref().map_or(0, String::len)
    }
}

/// What a subscriber reads next.
#[derive(Clone, Debug)]
pub enum Delivery {
    Event(Arc<Event>),
    /// Events may be missing before the next one: `missed` of them, or an
    /// unknown number (`None`: a position of another node or of an earlier
    /// run of this one). `resume_after` is the position to resume from.
    Gap {
        missed: Option<u64>,
        resume_after: u64,
    },
}

/// Why a subscription ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The subscriber read slower than events came and the ring moved past
    /// its cursor: this many events were dropped before it could read them.
    FellBehind { missed: u64 },
    /// The node is stopping.
    Closed,
}

/// A position a subscriber could not resume from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("not a watch position (expected EPOCH-SEQUENCE, as events carry it)")]
    Malformed,
    #[error("position {0} is ahead of this node's last event")]
    Ahead(u64),
}

/// The node's ring of recent events.
pub struct EventLog {
    epoch: u64,
    ring: Mutex<Ring>,
    /// The sequence number of the newest event, for subscribers to wait on.
    newest: watch::Sender<u64>,
    max_events: usize,
    max_bytes: usize,
    watchers: AtomicUsize,
    closed: AtomicBool,
    /// Set by the first subscriber: until then nobody can ask for an event,
    /// so none is recorded and the write path pays nothing for them.
    wanted: Arc<AtomicBool>,
    /// What the watchers of this run asked for (it only grows).
    interest: RwLock<Interest>,
}

struct Ring {
    events: VecDeque<Arc<Event>>,
    /// Sequence number of `events[0]` (or of the next event when empty).
    first: u64,
    bytes: usize,
}

impl Ring {
    fn next_seq(&self) -> u64 {
        self.first + self.events.len() as u64
    }
}

impl EventLog {
    pub fn new() -> EventLog {
        EventLog::with_limits(MAX_EVENTS, MAX_BYTES)
    }

    pub fn with_limits(max_events: usize, max_bytes: usize) -> EventLog {
        let mut epoch = [0u8; 8];
        // A clock-derived epoch is fine if the OS has no entropy to give.
        if getrandom::fill(&mut epoch).is_err() {
            epoch = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                .to_le_bytes();
        }
        EventLog {
            epoch: u64::from_le_bytes(epoch) | 1,
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                first: 1,
                bytes: 0,
            }),
            newest: watch::channel(0).0,
            max_events: max_events.max(1),
            max_bytes,
            watchers: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            wanted: Arc::new(AtomicBool::new(false)),
            interest: RwLock::new(Interest::none()),
        }
    }

    /// This run of the node: part of every position it hands out.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The text form of the position of event `seq`.
    pub fn position(&self, seq: u64) -> String {
        format!("{:016x}-{seq}", self.epoch)
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether events are recorded: since the first subscriber of this run
    /// (a watcher that resumes from an earlier run gets a gap anyway). Shared
    /// so the store can skip building events nobody wants.
    pub fn wanted(&self) -> &Arc<AtomicBool> {
        &self.wanted
    }

    /// Whether some watcher of this run asked for this event: only those
    /// are recorded (checked before an event is built).
    pub fn wants(&self, kind: EventKind, ticket_kind: &str) -> bool {
        self.wanted.load(Ordering::Acquire)
            && self
                .interest
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .admits(kind, ticket_kind)
    }

    /// Record an event; the oldest ones go once the ring is over its limits.
    /// Only events some watcher asked for are recorded ([`EventLog::wants`]).
    pub fn record(&self, kind: EventKind, ticket: TicketView, at_ms: Millis) {
        if !self.wants(kind, &ticket.kind) {
            return;
        }
        let seq = {
            let mut ring = self.ring();
            let seq = ring.next_seq();
            let event = Arc::new(Event {
                seq,
                at_ms,
                kind,
                ticket,
            });
            ring.bytes += event.size();
            ring.events.push_back(event);
            while ring.events.len() > self.max_events
                || (ring.bytes > self.max_bytes && ring.events.len() > 1)
            {
                if let Some(old) = ring.events.pop_front() {
                    ring.bytes -= old.size();
                    ring.first += 1;
                }
            }
            seq
        };
        self.newest.send_replace(seq);
    }

    /// The newest event's sequence number (0 before the first).
    pub fn newest(&self) -> u64 {
        *self.newest.borrow()
    }

    /// Start reading events `interest` admits: at the next event (`after:
    /// None`), or after a position a subscriber got earlier. A subscriber
    /// that asks for more than this run's watchers did before, and resumes,
    /// may have missed events nobody asked for: it starts with a gap.
    pub fn subscribe(
        self: &Arc<Self>,
        after: Option<&str>,
        interest: &Interest,
    ) -> Result<Subscription, PositionError> {
        let widened = {
            let mut current = self.interest.write().unwrap_or_else(|e| e.into_inner());
            let widened = !current.covers(interest);
            current.widen(interest);
            widened
        };
        self.wanted.store(true, Ordering::Release);
        let ring = self.ring();
        let (next, gap) = match after {
            None => (ring.next_seq(), None),
            Some(text) => {
                let (epoch, seq) = parse_position(text)?;
                if epoch != self.epoch {
                    // Another node's or an earlier run's: everything kept here
                    // may be news, and something may be lost.
                    (ring.first, Some(None))
                } else if seq >= ring.next_seq() {
                    return Err(PositionError::Ahead(seq));
                } else if seq + 1 < ring.first {
                    (ring.first, Some(Some(ring.first - seq - 1)))
                } else if widened {
                    // Events it wants may not have been recorded.
                    (seq + 1, Some(None))
                } else {
                    (seq + 1, None)
                }
            }
        };
        drop(ring);
        Ok(Subscription {
            log: self.clone(),
            next,
            gap,
            newest: self.newest.subscribe(),
        })
    }

    /// Count a watcher in, unless [`MAX_WATCHERS`] are already served.
    pub fn admit_watcher(self: &Arc<Self>) -> Option<WatcherSlot> {
        let admitted = self
            .watchers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_WATCHERS).then_some(n + 1)
            })
            .is_ok();
        admitted.then(|| WatcherSlot(self.clone()))
    }

    /// Subscribers served now.
    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Acquire)
    }

    /// Events held now, and their bytes.
    pub fn held(&self) -> (usize, usize) {
        let ring = self.ring();
        (ring.events.len(), ring.bytes)
    }

    /// Wake every subscriber so it sees the log closed (the node stops).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.newest.send_modify(|_| {});
    }
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::new()
    }
}

/// A counted watcher; dropping it frees its place.
pub struct WatcherSlot(Arc<EventLog>);

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::AcqRel);
    }
}

fn parse_position(text: &str) -> Result<(u64, u64), PositionError> {
    let (epoch, seq) = text.split_once('-').ok_or(PositionError::Malformed)?;
    if epoch.len() != 16 {
        return Err(PositionError::Malformed);
    }
    let epoch = u64::from_str_radix(epoch, 16).map_err(|_| PositionError::Malformed)?;
    let seq = seq.parse().map_err(|_| PositionError::Malformed)?;
    Ok((epoch, seq))
}

/// One subscriber's cursor in the ring.
pub struct Subscription {
    log: Arc<EventLog>,
    next: u64,
    /// A gap to deliver before anything else (`Some(None)`: of unknown size).
    gap: Option<Option<u64>>,
    newest: watch::Receiver<u64>,
}

impl Subscription {
    /// The next delivery, waiting for one if there is none yet.
    pub async fn next(&mut self) -> Result<Delivery, Ended> {
        if let Some(missed) = self.gap.take() {
            return Ok(Delivery::Gap {
                missed,
                resume_after: self.next - 1,
            });
        }
        loop {
            {
                let ring = self.log.ring();
                if self.next < ring.first {
                    return Err(Ended::FellBehind {
                        missed: ring.first - self.next,
                    });
                }
                let index = (self.next - ring.first) as usize;
                if let Some(event) = ring.events.get(index) {
                    self.next += 1;
                    return Ok(Delivery::Event(event.clone()));
                }
                // Seen everything up to here: wait for news from now on.
                self.newest.mark_unchanged();
            }
            if self.log.closed.load(Ordering::Acquire) || self.newest.changed().await.is_err() {
                return Err(Ended::Closed);
            }
        }
    }
}

#[cfg(test)]
mod tests;
