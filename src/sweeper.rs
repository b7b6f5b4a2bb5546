//! The expiry sweeper: a worker that sleeps until the next due time in the
//! store's deadline index (or until a write brings an earlier one) and then
//! handles due entries in small slices, resting between slices so requests
//! never wait behind it. Correctness does not depend on it: reads check
//! liveness themselves; the sweeper frees memory, keeps counts true and turns
//! dead tickets into tombstones that cascade to their children.
//!
//! While the node's clock is fenced or in doubt (see `Replicator::expiry_held`)
//! expiry is held: tombstones taken on a wrong clock would replicate and kill
//! tickets that are live elsewhere. Due keys then stay due, so instead of
//! waking for them the sweeper re-checks every [`HOLD_RECHECK`].

use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

use crate::store::{Expiry, Store};
use crate::worker::{Worker, WorkerState};

/// Entries handled per slice: few enough that a shard lock is held for well
/// under a millisecond (a slice of 512 held it for ~2 ms, which readers of
/// that shard waited out during an expiry storm).
pub const SWEEP_SLICE: usize = 64;

/// Longest sleep between checks, as a backstop against a missed wake-up.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// How often a sweeper holding expiry looks whether it may resume.
pub const HOLD_RECHECK: Duration = Duration::from_secs(1);

/// Whether expiry must be held now.
type HoldExpiry = Box<dyn Fn() -> bool + Send>;

pub struct Sweeper {
    store: Arc<Store>,
    hold_expiry: HoldExpiry,
    /// Whether the last slice held expiry.
    holding: bool,
}

impl Sweeper {
    pub fn new(store: Arc<Store>) -> Sweeper {
        Sweeper {
            store,
            hold_expiry: Box::new(|| false),
            holding: false,
        }
    }

    /// Hold expiry whenever `hold` says so (the node's clock is not trusted).
    pub fn holding_expiry_while(mut self, hold: impl Fn() -> bool + Send + 'static) -> Sweeper {
        self.hold_expiry = Box::new(hold);
        self
    }
}

impl Worker for Sweeper {
    fn name(&self) -> &'static str {
        "sweeper"
    }

    async fn work(&mut self) -> WorkerState {
        self.holding = (self.hold_expiry)();
        let expiry = if self.holding {
            Expiry::Hold
        } else {
            Expiry::Tombstone
        };
        let started = std::time::Instant::now();
        let report = self.store.sweep(SWEEP_SLICE, expiry);
        if report.expired + report.purged + report.held > 0 {
            debug!(
                expired = report.expired,
                purged = report.purged,
                held = report.held,
                "swept"
            );
        }
        if report.more_due && !self.holding {
            // A storm: rest at least as long as the slice took, so sweeping
            // takes at most about half a core and requests keep the rest.
            // Reads never need the sweeper (they check liveness themselves);
            // it only frees memory and keeps counts, a little later.
            tokio::time::sleep(started.elapsed()).await;
            WorkerState::Busy
        } else {
            WorkerState::Idle
        }
    }

    async fn wait_for_work(&mut self) {
        if self.holding {
            tokio::time::sleep(HOLD_RECHECK).await;
            return;
        }
        let store = &self.store;
        let clock = store.hlc().clock().clone();
        let next = store.next_due().unwrap_or(u64::MAX);
        let wake = store.sweeper_waits_until(next);
        let notified = wake.notified();
        // A write may have slipped in an earlier deadline before we registered.
        if store.next_due().is_some_and(|due| due < next) {
            return;
        }
        let until = clock
            .instant_at(next)
            .min(tokio::time::Instant::now() + MAX_SLEEP);
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = notified => {}
        }
    }
}
