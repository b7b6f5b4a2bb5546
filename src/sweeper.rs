//! The expiry sweeper: a worker that sleeps until the next due time in the
//! store's deadline index (or until a write brings an earlier one) and then
//! handles due entries in bounded slices, yielding between slices so requests
//! never wait behind it. Correctness does not depend on it: reads check
//! liveness themselves; the sweeper frees memory, keeps counts true and turns
//! dead tickets into tombstones that cascade to their children.

use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

use crate::store::Store;
use crate::worker::{Worker, WorkerState};

/// Entries handled per slice.
pub const SWEEP_SLICE: usize = 512;

/// Longest sleep between checks, as a backstop against a missed wake-up.
const MAX_SLEEP: Duration = Duration::from_secs(60);

pub struct Sweeper {
    store: Arc<Store>,
}

impl Sweeper {
    pub fn new(store: Arc<Store>) -> Sweeper {
        Sweeper { store }
    }
}

impl Worker for Sweeper {
    fn name(&self) -> &'static str {
        "sweeper"
    }

    async fn work(&mut self) -> WorkerState {
        let report = self.store.sweep(SWEEP_SLICE);
        if report.expired + report.purged > 0 {
            debug!(expired = report.expired, purged = report.purged, "swept");
        }
        if report.more_due {
            WorkerState::Busy
        } else {
            WorkerState::Idle
        }
    }

    async fn wait_for_work(&mut self) {
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
