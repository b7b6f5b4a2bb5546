//! The expiry sweeper: a worker that sleeps until the next due time in the
//! store's deadline index (or until a write brings an earlier one) and then
//! handles due entries in small slices, resting between slices so requests
//! never wait behind it. Correctness does not depend on it: reads check
//! liveness themselves; the sweeper frees memory, keeps counts true and turns
//! dead tickets into tombstones that cascade to their children.
//!
//! While the node's clock is fenced or in doubt (see `Replicator::expiry_held`)
//! expiry is held: tombstones taken on a wrong clock would replicate and kill
//! tickets that are live elsewhere. An idle death becomes a tombstone only
//! once enough peers' copies show no later touch (`Replicator::sweep`). Due
//! keys left undone stay due, so instead of waking for them the sweeper
//! re-checks every [`HOLD_RECHECK`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

use crate::replication::Replicator;
use crate::store::{Expiry, Store, SweepReport};
use crate::worker::{Worker, WorkerState};

/// Entries handled per slice: few enough that a shard lock is held for well
/// under a millisecond (a slice of 512 held it for ~2 ms, which readers of
/// that shard waited out during an expiry storm).
pub const SWEEP_SLICE: usize = 64;

/// Longest sleep between checks, as a backstop against a missed wake-up.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// How often a sweeper holding expiry looks whether it may resume.
pub const HOLD_RECHECK: Duration = Duration::from_secs(1);

/// Where the sweeper's slices of work come from: the store alone (a single
/// node, whose own view of a ticket is the whole truth) or the replicator,
/// which holds expiry while the node's clock is in doubt and confirms idle
/// deaths with the peers first.
pub trait Sweep: Send + Sync + 'static {
    fn store(&self) -> &Store;
    /// Handle at most `budget` due entries.
    fn sweep(&self, budget: usize) -> impl Future<Output = SweepReport> + Send;
}

impl Sweep for Store {
    fn store(&self) -> &Store {
        self
    }

    async fn sweep(&self, budget: usize) -> SweepReport {
        let mut report = Store::sweep(self, budget, Expiry::Tombstone);
        let idle = std::mem::take(&mut report.idle_dead);
        report.expired += self.expire_idle(&idle);
        report
    }
}

impl Sweep for Replicator {
    fn store(&self) -> &Store {
        Replicator::store(self)
    }

    async fn sweep(&self, budget: usize) -> SweepReport {
        Replicator::sweep(self, budget).await
    }
}

pub struct Sweeper<S: Sweep> {
    source: Arc<S>,
    /// Whether the last slice left due work undone (expiry held, or idle
    /// deaths unconfirmed): then it looks again after [`HOLD_RECHECK`].
    holding: bool,
}

impl<S: Sweep> Sweeper<S> {
    pub fn new(source: Arc<S>) -> Sweeper<S> {
        Sweeper {
            source,
            holding: false,
        }
    }
}

impl<S: Sweep> Worker for Sweeper<S> {
    fn name(&self) -> &'static str {
        "sweeper"
    }

    async fn work(&mut self) -> WorkerState {
        let started = std::time::Instant::now();
        let report = self.source.sweep(SWEEP_SLICE).await;
        self.holding = report.held + report.unconfirmed > 0;
        if report.expired + report.purged + report.held + report.unconfirmed > 0 {
            debug!(
                expired = report.expired,
                purged = report.purged,
                held = report.held,
                unconfirmed = report.unconfirmed,
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
        let store = self.source.store();
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
