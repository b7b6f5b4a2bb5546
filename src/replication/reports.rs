//! Which node reports a ticket event to `Watch` subscribers, so a fleet
//! that watches every node hears each event once (at least once when a node
//! dies at the wrong moment).
//!
//! - Events of a call (created, deleted, used up) are reported by the node
//!   that served the call: one call, one node.
//! - An expiry is seen by every node that holds the ticket (its sweeper, or
//!   a peer's tombstone of a ticket its own clock saw expire). It is
//!   reported by the ticket's arbiter ([`Replicator::arbiter`]) as it sees
//!   it; a node catching up, draining or fenced for its clock reports none
//!   (its peers do not count it as an arbiter). Every other node keeps the
//!   event as a *handoff* for [`EXPIRY_HANDOFF`]: if the arbiter it named
//!   has left its view by then (killed: it may have died before reporting),
//!   the arbiter among those left reports it instead. An arbiter that
//!   reported and then died is reported for again: a duplicate, not a loss.
//!
//! Not reported: events before a node's first watcher (nobody could ask for
//! them: see `EventLog::wanted`), expiries while the whole cluster is down
//! (nothing durable says which were reported), and descendants that die
//! with an expired ancestor (each has its own expiry or none). A node that
//! missed a touch can report an idle expiry of a ticket a delete elsewhere
//! removed (both events come).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::Millis;
use crate::entry::Incarnation;
use crate::peer::NodeId;
use crate::store::Observer;
use crate::ticket::TicketView;
use crate::watch::EventKind;
use crate::worker::{Worker, WorkerState};

use super::Replicator;

/// How long a node keeps an expiry another node is to report, before it
/// checks that node is still there. Longer than failure detection (about
/// 2-5 s), so a killed arbiter is out of the view by then.
pub const EXPIRY_HANDOFF: Duration = Duration::from_secs(10);

/// Handoffs a node keeps at most (the oldest go first; counted).
pub const MAX_HANDOFFS: usize = 200_000;

/// An expiry another node is to report.
pub(super) struct Handoff {
    check_at: Instant,
    reporter: NodeId,
    kind: EventKind,
    at_ms: Millis,
    ticket: TicketView,
}

impl Observer for Replicator {
    fn observed(&self, id: &Arc<str>, ticket: &Incarnation, what: EventKind, now: Millis) {
        if !self.events.wants(what, ticket.identity.kind.as_str()) {
            return;
        }
        let view = || TicketView::of(id, ticket);
        if !matches!(what, EventKind::Expired { .. }) {
            self.events.record(what, view(), now);
            return;
        }
        let clustered = self.network().is_some();
        if (clustered && !self.caught_up())
            || self.draining.load(Ordering::Acquire)
            || self.fenced.load(Ordering::Acquire)
        {
            // Catching up, leaving or fenced for its clock: its peers do not
            // count it as an arbiter, and one of them reports the expiry.
            return;
        }
        let reporter = self.arbiter(id);
        if reporter == self.me {
            self.events.record(what, view(), now);
            return;
        }
        let mut handoffs = self.handoffs.lock().unwrap_or_else(|e| e.into_inner());
        if handoffs.len() >= MAX_HANDOFFS {
            handoffs.pop_front();
            self.stats
                .watch_handoffs_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        handoffs.push_back(Handoff {
            check_at: Instant::now() + EXPIRY_HANDOFF,
            reporter,
            kind: what,
            at_ms: now,
            ticket: view(),
        });
    }
}

impl Replicator {
    /// Report the handoffs whose time came and whose named reporter has
    /// left this node's view, when this node is their arbiter now. Returns
    /// how many were reported.
    pub fn check_handoffs(&self) -> usize {
        let now = Instant::now();
        let due: Vec<Handoff> = {
            let mut handoffs = self.handoffs.lock().unwrap_or_else(|e| e.into_inner());
            let ready = handoffs.partition_point(|h| h.check_at <= now);
            handoffs.drain(..ready).collect()
        };
        let mut reported = 0;
        for handoff in due {
            let still_there = {
                let view = self.view.read().unwrap_or_else(|e| e.into_inner());
                view.peers.contains(&handoff.reporter)
            };
            if !still_there && self.arbiter(&handoff.ticket.id) == self.me {
                self.events
                    .record(handoff.kind, handoff.ticket, handoff.at_ms);
                reported += 1;
            }
        }
        if reported > 0 {
            self.stats
                .watch_handoffs_reported
                .fetch_add(reported as u64, Ordering::Relaxed);
        }
        reported
    }

    /// When the oldest handoff is due.
    fn next_handoff(&self) -> Option<Instant> {
        let handoffs = self.handoffs.lock().unwrap_or_else(|e| e.into_inner());
        handoffs.front().map(|h| h.check_at)
    }
}

/// The worker that checks handoffs as they come due.
pub struct ExpiryHandoffs {
    replicator: Arc<Replicator>,
}

impl ExpiryHandoffs {
    pub fn new(replicator: Arc<Replicator>) -> ExpiryHandoffs {
        ExpiryHandoffs { replicator }
    }
}

impl Worker for ExpiryHandoffs {
    fn name(&self) -> &'static str {
        "expiry-handoffs"
    }

    async fn work(&mut self) -> WorkerState {
        self.replicator.check_handoffs();
        WorkerState::Idle
    }

    async fn wait_for_work(&mut self) {
        let next = self
            .replicator
            .next_handoff()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::time::sleep_until(next.min(Instant::now() + Duration::from_secs(1))).await;
    }
}

/// The handoff queue (kept in check-time order: each is pushed with now + a
/// fixed delay).
pub(super) type Handoffs = std::sync::Mutex<VecDeque<Handoff>>;
