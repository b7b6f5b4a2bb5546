//! The local ticket store: a sharded map `id -> Entry` with derived indexes.
//!
//! Every change goes through one merge path ([`Store::apply`] and its locked
//! core): local writes build an entry and merge it exactly as a peer's copy will
//! be merged, then two local rules run, the same on every node:
//! - a live entry that is used up, or whose parent is deleted, becomes a tombstone;
//! - a tombstone cascades to every child (children are found through the index
//!   kept in the *parent's* shard, so a concurrent child put cannot be missed).
//!
//! Mutating calls return the entries they changed ([`Written::changes`]): what
//! replication pushes to peers.

pub mod digest;
mod shard;

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use bytes::Bytes;
use tokio::sync::Notify;
use tracing::debug;

use crate::clock::{HlcClock, Millis, Stamp};
use crate::entry::{Entry, Identity, Liveness, Payload, merge_at, owned_bytes};
use crate::error::StoreError;
use crate::redact::tag;
use crate::ticket::{self, Limits, MAX_PARENT_DEPTH, TicketView};
use crate::watch::{DeleteCause, EventKind};
use shard::Shard;

/// Entries per shard lock taken by bulk operations before yielding the lock.
const PAGE: usize = 256;

/// How the store is set up (from the node configuration).
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub shards: usize,
    /// Largest clock difference between nodes that must not change a decision.
    pub skew_budget_ms: Millis,
    pub limits: Limits,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            // One anti-entropy bucket per shard: a peer's bucket request is
            // then answered from its shard alone, instead of scanning (and
            // hashing every id of) a shard shared by 8 buckets, under its lock.
            shards: digest::BUCKETS,
            skew_budget_ms: 1_000,
            limits: Limits::default(),
        }
    }
}

/// An entry that a write changed: what replication sends to peers.
pub type Change = (Arc<str>, Entry);

/// The result of a write, with the entries it changed.
#[derive(Debug)]
pub struct Written<T> {
    pub value: T,
    pub changes: Vec<Change>,
}

/// A put, before validation.
#[derive(Clone, Debug, Default)]
pub struct PutTicket {
    pub id: String,
    pub kind: Option<String>,
    pub principal: Option<String>,
    pub parent: Option<String>,
    pub payload: Bytes,
    pub ttl_ms: Millis,
    pub idle_ms: Option<Millis>,
    pub max_uses: u32,
    pub create_only: bool,
}

/// An update, before validation.
#[derive(Clone, Debug, Default)]
pub struct UpdateTicket {
    pub payload: Option<Bytes>,
    /// `Some(0)` removes the idle timeout.
    pub idle_ms: Option<Millis>,
    pub if_version: Option<String>,
}

/// Filters of `list`.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub kind: Option<String>,
    pub principal: Option<String>,
}

/// Where a paged listing resumes.
#[derive(Clone, Debug, Default)]
pub struct ListCursor {
    shard: usize,
    after: Option<Arc<str>>,
}

/// Ticket counts from the per-shard counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u64,
    pub by_kind: BTreeMap<String, u64>,
}

/// What one sweep slice did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Live tickets that died (expired, idle or used up) and became tombstones.
    pub expired: usize,
    /// Tickets whose idle time ran out on this node's view, handed back for
    /// the caller to confirm (this node may have missed a touch) and then
    /// [`Store::expire_idle`]; until then they stay dead records, never served.
    pub idle_dead: Vec<Arc<str>>,
    /// Idle deaths that could not be confirmed (too few peers answered).
    pub unconfirmed: usize,
    /// Records forgotten (past hard deadline plus skew budget).
    pub purged: usize,
    /// Tickets this node's clock says expired, left as they are because expiry
    /// is on hold ([`Expiry::Hold`]).
    pub held: usize,
    /// More entries are already due: call again.
    pub more_due: bool,
}

/// What a sweep does with tickets that this node's clock says have expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Turn them into tombstones (which replicate, and win everywhere).
    Tombstone,
    /// Leave them: this node's clock is not trusted (fenced or in doubt), and a
    /// tombstone taken on it would kill tickets still live on the honest nodes.
    /// Reads check liveness themselves, so nothing expired is served meanwhile;
    /// forgetting records past retention goes on (it does not replicate).
    Hold,
}

/// What a delete is removing: the tombstones written (to replicate) and which
/// of the ids were live (to count).
#[derive(Default)]
struct Removal {
    changes: Vec<Change>,
    live: HashSet<Arc<str>>,
    /// `changes` before this index have cascaded already.
    cascaded: usize,
}

impl Removal {
    /// Cascade what is left and report how many live tickets went.
    fn finish(mut self, store: &Store, now: Millis) -> Written<u64> {
        let children = Source::Delete(DeleteCause::Cascade);
        store.cascade(
            &mut self.changes,
            &mut self.cascaded,
            &mut self.live,
            now,
            children,
        );
        Written {
            value: self.live.len() as u64,
            changes: self.changes,
        }
    }
}

/// Who hears of what the store did to tickets: the node's `Watch` events.
///
/// Called under the ticket's shard lock, as the change is stored, so events
/// come in the order the changes were made; keep it short and never call
/// back into the store. `ticket` is the incarnation as it was: for a death,
/// its last live state (payload included), for a creation, the new one.
///
/// What is reported (the same rules on every node): `Created` and `UsedUp`
/// for this node's own writes, `Deleted` for this node's own deletes of
/// live tickets (with descendants as `Cascade`), and `Expired` for every
/// death of a ticket this node's clock had already seen expire, whatever
/// brought the tombstone (its sweeper, a peer's copy, a delete): which node
/// reports such an expiry to subscribers is the observer's business.
pub trait Observer: Send + Sync {
    fn observed(
        &self,
        id: &Arc<str>,
        ticket: &crate::entry::Incarnation,
        what: EventKind,
        now: Millis,
    );
}

/// What made a change, for [`Observer`] (and which changes are recorded).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A put, touch, consume or update this node serves.
    Write,
    /// A delete this node serves.
    Delete(DeleteCause),
    /// This node's sweeper.
    Sweep,
    /// A peer's copy (push, anti-entropy, read repair) or the node's own
    /// journal at start, or what cascades from one.
    Peer(Record),
}

impl Source {
    fn record(self) -> Record {
        match self {
            Source::Peer(record) => record,
            _ => Record::Every,
        }
    }
}

/// The node's ticket store.
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    hlc: HlcClock,
    config: StoreConfig,
    /// The due time the sweeper sleeps towards; a write with an earlier one wakes it.
    sweep_target_ms: AtomicU64,
    sweep_wake: Notify,
    /// Who hears of ticket events, and whether it wants them now.
    observer: OnceLock<(Weak<dyn Observer>, Arc<AtomicBool>)>,
}

/// What [`Store::decide_state`] reads: enough to pick a consume's or an
/// update's slot.
#[derive(Debug)]
pub struct DecideState {
    /// Uses recorded so far, on every node.
    pub uses: u64,
    /// 0 = unlimited.
    pub max_uses: u32,
    /// The stamp of the current payload (its version is `version.to_version()`).
    pub version: Stamp,
    pub retain_until_ms: Millis,
    /// The created stamp of the live incarnation: votes are kept per
    /// incarnation.
    pub created: Stamp,
}

impl Store {
    pub fn new(config: StoreConfig, hlc: HlcClock) -> Store {
        let shards = (0..config.shards.max(1))
            .map(|_| Mutex::new(Shard::default()))
            .collect();
        Store {
            shards,
            hlc,
            config,
            sweep_target_ms: AtomicU64::new(Millis::MAX),
            sweep_wake: Notify::new(),
            observer: OnceLock::new(),
        }
    }

    /// Tell `observer` of every ticket event from now on, while `wanted`
    /// is set (once; see [`Observer`]).
    pub fn observe_with(&self, observer: Weak<dyn Observer>, wanted: Arc<AtomicBool>) {
        let _ = self.observer.set((observer, wanted));
    }

    /// Whether anyone wants ticket events now: checked before any is built.
    fn observing(&self) -> bool {
        self.observer
            .get()
            .is_some_and(|(_, wanted)| wanted.load(Ordering::Relaxed))
    }

    fn observe(
        &self,
        id: &Arc<str>,
        ticket: &crate::entry::Incarnation,
        what: EventKind,
        now: Millis,
    ) {
        if !self.observing() {
            return;
        }
        if let Some(observer) = self.observer.get().and_then(|(o, _)| o.upgrade()) {
            observer.observed(id, ticket, what, now);
        }
    }

    pub fn hlc(&self) -> &HlcClock {
        &self.hlc
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn now(&self) -> Millis {
        self.hlc.clock().now_ms()
    }

    /// A bucket's entries all live in one shard, so syncing a bucket scans
    /// one shard only.
    fn shard_index(&self, id: &str) -> usize {
        self.shard_of_bucket(digest::bucket_of(id))
    }

    fn shard_of_bucket(&self, bucket: usize) -> usize {
        bucket % self.shards.len()
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard lock leaves indexes consistent (every
        // change is one `replace`), so a poisoned lock is still usable.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    // ---- reads ----

    /// A live ticket, or `NotFound`. Records nothing.
    pub fn get(&self, id: &str) -> Result<TicketView, StoreError> {
        self.read_live(id, |_, inc| TicketView::of(id, inc))
    }

    /// Read what `read` takes of a live ticket (its own state and every
    /// ancestor this node holds live), or `NotFound`.
    fn read_live<T>(
        &self,
        id: &str,
        read: impl FnOnce(&Entry, &crate::entry::Incarnation) -> T,
    ) -> Result<T, StoreError> {
        ticket::validate_id("id", id)?;
        let now = self.now();
        let (value, parent) = {
            let shard = self.lock(self.shard_index(id));
            let entry = shard.entries.get(id).ok_or(StoreError::NotFound)?;
            let inc = live_at(entry, now)?;
            (read(entry, inc), inc.identity.parent.clone())
        };
        self.require_ancestors_live(parent, now)?;
        Ok(value)
    }

    /// What deciding a consume or an update reads of a ticket: its uses, its
    /// version and its retention, under the same liveness rules as
    /// [`Store::get`], without building the whole view (a payload copy and half
    /// a dozen strings) to read three fields.
    pub fn decide_state(&self, id: &str) -> Result<DecideState, StoreError> {
        self.read_live(id, |entry, inc| DecideState {
            uses: inc.total_uses(),
            max_uses: inc.identity.max_uses,
            version: inc.payload.marker.clone(),
            retain_until_ms: entry.retain_until_ms,
            created: inc.created.clone(),
        })
    }

    /// The ticket's use limit (0 = unlimited), under the liveness rules of
    /// [`Store::get`]: whether a touch must be decided like a consume.
    pub fn use_limit(&self, id: &str) -> Result<u32, StoreError> {
        self.read_live(id, |_, inc| inc.identity.max_uses)
    }

    /// This node's copy of `id` when it shows a slot of incarnation `created`
    /// taken (rule R4 of the votes, `replication::votes`): a tombstone, a newer
    /// incarnation, or the same one where `taken` says so. Liveness by clock is
    /// not asked: expiry is the proposer's to judge, the slot's fate is not.
    pub fn shows_taken(
        &self,
        id: &str,
        created: &Stamp,
        taken: impl FnOnce(&crate::entry::Incarnation) -> bool,
    ) -> Option<Entry> {
        let shard = self.lock(self.shard_index(id));
        let entry = shard.entries.get(id)?;
        let shows = match entry.live() {
            None => true,
            Some(inc) if inc.created > *created => true,
            Some(inc) => inc.created == *created && taken(inc),
        };
        shows.then(|| entry.clone())
    }

    /// The created stamp of the incarnation this node holds of `id`, if live
    /// in its copy (for proposals from peers that do not name one).
    pub fn incarnation_of(&self, id: &str) -> Option<Stamp> {
        let shard = self.lock(self.shard_index(id));
        shard.entries.get(id)?.live().map(|inc| inc.created.clone())
    }

    /// True unless some ancestor this node holds is dead. An ancestor it does not
    /// hold is either forgotten (then the child's own deadline has passed too) or
    /// not replicated here yet.
    fn ancestors_live(&self, mut parent: Option<Arc<str>>, now: Millis) -> bool {
        for _ in 0..MAX_PARENT_DEPTH {
            let Some(id) = parent else { return true };
            let shard = self.lock(self.shard_index(&id));
            match shard.entries.get(&id) {
                None => return true,
                Some(entry) => match entry.live() {
                    Some(inc) if entry.liveness(now) == Liveness::Live => {
                        parent = inc.identity.parent.clone();
                    }
                    _ => return false,
                },
            }
        }
        true
    }

    fn require_ancestors_live(
        &self,
        parent: Option<Arc<str>>,
        now: Millis,
    ) -> Result<(), StoreError> {
        if self.ancestors_live(parent, now) {
            Ok(())
        } else {
            Err(StoreError::NotFound)
        }
    }

    /// Whether `id` is stored, and if so whether it is live: its own state and
    /// every ancestor's. The one notion of "live" that reads, list, put and the
    /// delete counts share.
    fn effective_liveness(&self, id: &str, now: Millis) -> Option<bool> {
        let (own_live, parent) = {
            let shard = self.lock(self.shard_index(id));
            let entry = shard.entries.get(id)?;
            let own_live = entry.liveness(now) == Liveness::Live;
            (
                own_live,
                entry.live().and_then(|inc| inc.identity.parent.clone()),
            )
        };
        Some(own_live && self.ancestors_live(parent, now))
    }

    /// Counts of tickets not yet deleted or swept, from per-shard counters.
    pub fn count(&self) -> Counts {
        let mut counts = Counts::default();
        for index in 0..self.shards.len() {
            let shard = self.lock(index);
            for (kind, n) in &shard.kinds {
                *counts.by_kind.entry(kind.to_string()).or_default() += n;
                counts.total += n;
            }
        }
        counts
    }

    /// Live TGTs of a principal (case-insensitive), oldest first.
    pub fn sessions_for(&self, principal: &str) -> Result<Vec<TicketView>, StoreError> {
        ticket::validate_principal(principal)?;
        let key = principal.to_lowercase();
        let now = self.now();
        let mut sessions = Vec::new();
        for index in 0..self.shards.len() {
            let shard = self.lock(index);
            let Some(ids) = shard.by_principal.get(&key) else {
                continue;
            };
            for id in ids {
                if let Some(entry) = shard.entries.get(id)
                    && let Ok(inc) = live_at(entry, now)
                    && inc.identity.kind == "TGT"
                {
                    sessions.push((TicketView::of(id, inc), inc.identity.parent.clone()));
                }
            }
        }
        let mut live: Vec<TicketView> = sessions
            .into_iter()
            .filter(|(_, parent)| self.ancestors_live(parent.clone(), now))
            .map(|(view, _)| view)
            .collect();
        live.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(live)
    }

    /// One page of live tickets matching `filter`, at most `max` of them, and
    /// where to resume (`None`: done). Holds one shard lock per page.
    pub fn list_page(
        &self,
        filter: &ListFilter,
        cursor: ListCursor,
        max: usize,
    ) -> (Vec<TicketView>, Option<ListCursor>) {
        let now = self.now();
        let principal = filter.principal.as_deref().map(str::to_lowercase);
        let mut page = Vec::new();
        let mut found = Vec::new();
        let mut cursor = cursor;
        while cursor.shard < self.shards.len() && page.len() < max {
            let shard = self.lock(cursor.shard);
            let lower = match &cursor.after {
                Some(after) => Bound::Excluded(after.clone()),
                None => Bound::Unbounded,
            };
            let range = (lower, Bound::Unbounded);
            let ids: Box<dyn Iterator<Item = &Arc<str>>> = match &principal {
                Some(p) => match shard.by_principal.get(p) {
                    Some(ids) => Box::new(ids.range::<Arc<str>, _>(range)),
                    None => Box::new(std::iter::empty()),
                },
                None => Box::new(shard.entries.range::<Arc<str>, _>(range).map(|(id, _)| id)),
            };
            // Scan at most a few pages per lock, even when few entries match.
            let mut scanned = 0;
            let mut stopped_at = None;
            for id in ids {
                scanned += 1;
                if let Some(entry) = shard.entries.get(id)
                    && let Ok(inc) = live_at(entry, now)
                    && filter
                        .kind
                        .as_ref()
                        .is_none_or(|k| inc.identity.kind == **k)
                {
                    found.push((TicketView::of(id, inc), inc.identity.parent.clone()));
                }
                if page.len() + found.len() >= max || scanned >= PAGE * 4 {
                    stopped_at = Some(id.clone());
                    break;
                }
            }
            drop(shard);
            // Ancestors live in other shards: check them without this lock held.
            page.extend(
                found
                    .drain(..)
                    .filter(|(_, parent)| self.ancestors_live(parent.clone(), now))
                    .map(|(view, _)| view),
            );
            cursor = match stopped_at {
                Some(id) => ListCursor {
                    shard: cursor.shard,
                    after: Some(id),
                },
                None => ListCursor {
                    shard: cursor.shard + 1,
                    after: None,
                },
            };
        }
        let done = cursor.shard >= self.shards.len();
        (page, (!done).then_some(cursor))
    }

    // ---- writes ----

    /// Create a ticket, or replace a live one whole (a new incarnation).
    pub fn put(&self, put: PutTicket) -> Result<Written<TicketView>, StoreError> {
        let limits = &self.config.limits;
        ticket::validate_id("id", &put.id)?;
        let kind = match put.kind {
            Some(kind) => {
                ticket::validate_kind(&kind)?;
                kind.into()
            }
            None => ticket::default_kind(&put.id)?,
        };
        if let Some(principal) = &put.principal {
            ticket::validate_principal(principal)?;
        }
        if let Some(parent) = &put.parent {
            ticket::validate_id("parent", parent)?;
            if *parent == put.id {
                return Err(StoreError::invalid(
                    "parent",
                    "a ticket cannot be its own parent",
                ));
            }
        }
        limits.validate_payload(&put.payload)?;
        limits.validate_ttl(put.ttl_ms)?;
        if let Some(idle) = put.idle_ms {
            ticket::validate_idle(idle, put.ttl_ms)?;
        }
        let now = self.now();
        if let Some(parent) = &put.parent {
            self.check_parent_chain(&put.id, parent, now)?;
        }
        // A ticket that died with an ancestor is dead even if its own state is not.
        let reuses_dead_id = self.effective_liveness(&put.id, now) == Some(false);

        let id: Arc<str> = put.id.as_str().into();
        let own = self.shard_index(&id);
        let parent_index = put.parent.as_deref().map(|p| self.shard_index(p));
        let mut changes = Vec::new();
        let view = self.with_pair(own, parent_index, |shard, parent_shard| {
            if let Some(existing) = shard.entries.get(&id) {
                match existing.liveness(now) {
                    Liveness::Live if reuses_dead_id => {
                        return Err(StoreError::AlreadyExists(
                            "this id belonged to a ticket that is no longer live; ids are never reused"
                                .into(),
                        ));
                    }
                    Liveness::Live if put.create_only => {
                        return Err(StoreError::AlreadyExists(
                            "a live ticket with this id exists (create_only)".into(),
                        ));
                    }
                    Liveness::Live => {}
                    _ => {
                        return Err(StoreError::AlreadyExists(
                            "this id belonged to a ticket that is no longer live; ids are never reused"
                                .into(),
                        ));
                    }
                }
            }
            let mut deadline_ms = now.saturating_add(put.ttl_ms);
            // The child names its parent with the parent's own id allocation (the
            // map key), not a copy: one id allocation fewer per child ticket.
            let mut parent_id: Option<Arc<str>> = None;
            if let Some(parent) = &put.parent {
                let (key, parent_inc) = parent_shard
                    .as_deref()
                    .unwrap_or(&*shard)
                    .entries
                    .get_key_value(parent.as_str())
                    .filter(|(_, e)| e.liveness(now) == Liveness::Live)
                    .and_then(|(key, e)| Some((key, e.live()?)))
                    .ok_or_else(|| {
                        StoreError::FailedPrecondition(
                            "parent ticket is missing, expired, used up or deleted".into(),
                        )
                    })?;
                deadline_ms = deadline_ms.min(parent_inc.identity.deadline_ms);
                parent_id = Some(key.clone());
            }
            let identity = Identity {
                kind,
                principal: put.principal.map(Into::into),
                parent: parent_id,
                created_at_ms: now,
                deadline_ms,
                max_uses: put.max_uses,
            };
            let payload = Payload {
                bytes: owned_bytes(&put.payload),
                idle_ms: put.idle_ms,
            };
            let entry = Entry::create(self.hlc.stamp(), identity, payload, self.config.skew_budget_ms);
            let parent_shard = parent_index.zip(parent_shard);
            self.apply_locked(shard, parent_shard, &id, entry, now, &mut changes, Source::Write);
            shard
                .entries
                .get(&id)
                .and_then(|e| e.live().map(|inc| TicketView::of(&id, inc)))
                .ok_or(StoreError::FailedPrecondition(
                    "parent ticket was deleted".into(),
                ))
        })?;
        debug!(ticket = %tag(&id), kind = %view.kind, "put");
        Ok(Written {
            value: view,
            changes,
        })
    }

    /// Refuse parent chains that are dead, too deep, or that loop back to `id`.
    fn check_parent_chain(&self, id: &str, parent: &str, now: Millis) -> Result<(), StoreError> {
        let mut next: Option<Arc<str>> = Some(parent.into());
        for _ in 0..MAX_PARENT_DEPTH {
            let Some(current) = next else { return Ok(()) };
            if *current == *id {
                return Err(StoreError::invalid(
                    "parent",
                    "the ticket would become its own ancestor",
                ));
            }
            let shard = self.lock(self.shard_index(&current));
            next = match shard.entries.get(&current) {
                Some(entry) if entry.liveness(now) == Liveness::Live => {
                    entry.live().and_then(|inc| inc.identity.parent.clone())
                }
                _ => {
                    return Err(StoreError::FailedPrecondition(
                        "parent ticket (or one of its ancestors) is missing, expired, used up or deleted"
                            .into(),
                    ));
                }
            };
        }
        Err(StoreError::invalid(
            "parent",
            format!("the parent chain is deeper than {MAX_PARENT_DEPTH}"),
        ))
    }

    /// Record one use and return the ticket after it.
    pub fn touch(&self, id: &str) -> Result<Written<TicketView>, StoreError> {
        self.record_use(id)
    }

    /// Check and record one use atomically (service and proxy tickets). On one
    /// node the shard lock is the single decider; in a cluster the consume
    /// protocol decides first and then records the use through this same path.
    pub fn consume(&self, id: &str) -> Result<Written<TicketView>, StoreError> {
        self.record_use(id)
    }

    fn record_use(&self, id: &str) -> Result<Written<TicketView>, StoreError> {
        self.modify_live(id, |store, inc, now| {
            inc.uses.record(store.hlc.node().clone());
            inc.last_used.0 = inc.last_used.0.max(now);
            Ok(())
        })
    }

    /// Replace payload and/or idle timeout, optionally only at a given version.
    pub fn update(
        &self,
        id: &str,
        update: UpdateTicket,
    ) -> Result<Written<TicketView>, StoreError> {
        if update.payload.is_none() && update.idle_ms.is_none() {
            return Err(StoreError::invalid(
                "update",
                "nothing to change: give a payload, an idle timeout or both",
            ));
        }
        if let Some(payload) = &update.payload {
            self.config.limits.validate_payload(payload)?;
        }
        self.modify_live(id, |store, inc, _now| {
            let current = inc.payload.marker.to_version();
            if let Some(expected) = &update.if_version
                && *expected != current
            {
                return Err(StoreError::VersionMismatch { current });
            }
            let mut payload = inc.payload.val.clone();
            if let Some(bytes) = &update.payload {
                payload.bytes = owned_bytes(bytes);
            }
            if let Some(idle) = update.idle_ms {
                payload.idle_ms = if idle == 0 {
                    None
                } else {
                    let ttl = inc.identity.deadline_ms - inc.identity.created_at_ms;
                    ticket::validate_idle(idle, ttl)?;
                    Some(idle)
                };
            }
            inc.payload.update(payload, store.hlc.stamp());
            Ok(())
        })
    }

    /// Apply `change` to a copy of a live ticket under its shard lock and merge
    /// the copy back (the same merge a peer's copy goes through). A ticket
    /// with a parent has its ancestors checked first, outside its lock (they
    /// may be in other shards), and is looked up again; one without is
    /// changed under the lock and the lookup it was found with.
    fn modify_live(
        &self,
        id: &str,
        change: impl FnOnce(&Store, &mut crate::entry::Incarnation, Millis) -> Result<(), StoreError>,
    ) -> Result<Written<TicketView>, StoreError> {
        ticket::validate_id("id", id)?;
        let now = self.now();
        let index = self.shard_index(id);
        let id: Arc<str> = id.into();
        let mut changes = Vec::new();
        let view = {
            let mut shard = self.lock(index);
            let entry = shard.entries.get(&id).ok_or(StoreError::NotFound)?;
            let mut copy = match live_at(entry, now)?.identity.parent.clone() {
                None => entry.clone(),
                Some(parent) => {
                    drop(shard);
                    self.require_ancestors_live(Some(parent), now)?;
                    shard = self.lock(index);
                    let entry = shard.entries.get(&id).ok_or(StoreError::NotFound)?;
                    live_at(entry, now)?;
                    entry.clone()
                }
            };
            let inc = copy.live_mut().ok_or(StoreError::NotFound)?;
            change(self, inc, now)?;
            let view = TicketView::of(&id, inc);
            self.apply_locked(
                &mut shard,
                None,
                &id,
                copy,
                now,
                &mut changes,
                Source::Write,
            );
            view
        };
        let children = Source::Delete(DeleteCause::Cascade);
        self.cascade(&mut changes, &mut 0, &mut HashSet::new(), now, children);
        Ok(Written {
            value: view,
            changes,
        })
    }

    /// Delete a ticket and all its descendants. Returns how many were live.
    pub fn delete(&self, id: &str) -> Result<Written<u64>, StoreError> {
        ticket::validate_id("id", id)?;
        let now = self.now();
        let mut removal = Removal::default();
        self.delete_root(&id.into(), now, &mut removal, DeleteCause::Delete);
        let written = removal.finish(self, now);
        debug!(ticket = %tag(id), removed = written.value, "delete");
        Ok(written)
    }

    /// Delete every ticket that exists when the call starts.
    pub fn delete_all(&self) -> Written<u64> {
        let now = self.now();
        let mut removal = Removal::default();
        for index in 0..self.shards.len() {
            let mut after: Option<Arc<str>> = None;
            loop {
                let ids: Vec<Arc<str>> = {
                    let shard = self.lock(index);
                    let lower = match &after {
                        Some(a) => Bound::Excluded(a.clone()),
                        None => Bound::Unbounded,
                    };
                    shard
                        .entries
                        .range::<Arc<str>, _>((lower, Bound::Unbounded))
                        .take(PAGE)
                        .map(|(id, _)| id.clone())
                        .collect()
                };
                let Some(last) = ids.last().cloned() else {
                    break;
                };
                for id in &ids {
                    self.delete_root(id, now, &mut removal, DeleteCause::DeleteAll);
                }
                after = Some(last);
            }
        }
        let written = removal.finish(self, now);
        debug!(removed = written.value, "delete_all");
        written
    }

    /// Delete every ticket of a principal (case-insensitive), with descendants.
    pub fn delete_for(&self, principal: &str) -> Result<Written<u64>, StoreError> {
        ticket::validate_principal(principal)?;
        let key = principal.to_lowercase();
        let now = self.now();
        let mut removal = Removal::default();
        for index in 0..self.shards.len() {
            let ids: Vec<Arc<str>> = {
                let shard = self.lock(index);
                shard
                    .by_principal
                    .get(&key)
                    .map(|ids| ids.iter().cloned().collect())
                    .unwrap_or_default()
            };
            for id in &ids {
                self.delete_root(id, now, &mut removal, DeleteCause::DeleteFor);
            }
        }
        let written = removal.finish(self, now);
        debug!(removed = written.value, "delete_for");
        Ok(written)
    }

    /// Tombstone `id` as the root of a delete; it counts as removed if it was
    /// live, itself and its ancestors.
    fn delete_root(&self, id: &Arc<str>, now: Millis, removal: &mut Removal, cause: DeleteCause) {
        let Some(live) = self.effective_liveness(id, now) else {
            return;
        };
        let was_live = self.delete_one(id, None, now, &mut removal.changes, Source::Delete(cause));
        if live && was_live {
            removal.live.insert(id.clone());
        }
        // Cascade at once, so a descendant met later as a root of its own (same
        // principal, next page) is already accounted for.
        self.cascade(
            &mut removal.changes,
            &mut removal.cascaded,
            &mut removal.live,
            now,
            Source::Delete(DeleteCause::Cascade),
        );
    }

    /// Tombstone one stored id (when `expected_parent` is given, only if it is
    /// still a child of it). Returns whether its own state was live.
    fn delete_one(
        &self,
        id: &Arc<str>,
        expected_parent: Option<&str>,
        now: Millis,
        changes: &mut Vec<Change>,
        source: Source,
    ) -> bool {
        let mut shard = self.lock(self.shard_index(id));
        let Some(entry) = shard.entries.get(id) else {
            return false;
        };
        if let Some(parent) = expected_parent
            && entry
                .live()
                .is_some_and(|inc| inc.identity.parent.as_deref() != Some(parent))
        {
            // Re-put under another parent since it was indexed here.
            return false;
        }
        let was_live = entry.liveness(now) == Liveness::Live;
        self.tombstone_locked(&mut shard, id, now, changes, source);
        was_live
    }

    /// Merge an entry received from a peer (or anti-entropy). Returns what
    /// changed here, cascades included. Its payload is already an allocation of
    /// its own: decoding a peer record copies it out of the frame.
    pub fn apply(&self, id: &str, incoming: Entry) -> Vec<Change> {
        let now = self.now();
        let id: Arc<str> = id.into();
        let own = self.shard_index(&id);
        let parent_index = incoming
            .live()
            .and_then(|inc| inc.identity.parent.as_deref())
            .map(|p| self.shard_index(p));
        let mut changes = Vec::new();
        self.with_pair(own, parent_index, |shard, parent_shard| {
            self.apply_locked(
                shard,
                parent_index.zip(parent_shard),
                &id,
                incoming,
                now,
                &mut changes,
                Source::Peer(Record::Every),
            );
        });
        let children = Source::Peer(Record::Every);
        self.cascade(&mut changes, &mut 0, &mut HashSet::new(), now, children);
        changes
    }

    /// Merge entries received from a peer (a push, a bucket of anti-entropy),
    /// in their order, with the same result as [`Store::apply`] on each in
    /// turn. Consecutive entries stored in one shard, whose parents (if any)
    /// are stored there too, share one lock, at most [`PAGE`] of them so that
    /// readers of the shard are not held up; the same locked merge runs for
    /// each, and the group's tombstones cascade once the lock is released (a
    /// cascade only adds tombstones, so the store ends the same as when each
    /// cascade runs at once). An entry whose parent is in another shard takes
    /// both locks, alone, as `apply` does. Nothing is returned: unlike local
    /// writes, merged entries are not pushed on.
    pub fn apply_many(&self, entries: impl IntoIterator<Item = (Arc<str>, Entry)>) {
        let mut entries = entries.into_iter().peekable();
        let mut tombstones = Vec::new();
        while let Some((id, incoming)) = entries.next() {
            let Some(own) = self.single_shard(&id, &incoming) else {
                self.apply(&id, incoming);
                continue;
            };
            let now = self.now();
            {
                let mut shard = self.lock(own);
                let mut next = Some((id, incoming));
                let mut taken = 0;
                while let Some((id, incoming)) = next.take() {
                    self.apply_locked(
                        &mut shard,
                        None,
                        &id,
                        incoming,
                        now,
                        &mut tombstones,
                        Source::Peer(Record::Tombstones),
                    );
                    taken += 1;
                    if taken < PAGE {
                        next = entries
                            .next_if(|(id, entry)| self.single_shard(id, entry) == Some(own));
                    }
                }
            }
            let children = Source::Peer(Record::Every);
            self.cascade(&mut tombstones, &mut 0, &mut HashSet::new(), now, children);
            tombstones.clear();
        }
    }

    /// The shard an incoming entry needs locked, when that is one shard only
    /// (it has no parent, or its parent is stored in the same shard).
    fn single_shard(&self, id: &str, entry: &Entry) -> Option<usize> {
        let own = self.shard_index(id);
        let parent = entry
            .live()
            .and_then(|inc| inc.identity.parent.as_deref())
            .map(|p| self.shard_index(p));
        parent.is_none_or(|p| p == own).then_some(own)
    }

    /// The merge path, under the entry's shard lock (and, as `parent_shard`,
    /// its parent's shard lock with that shard's index, when the parent is
    /// stored in another shard). Records the change in `changes` as `record`
    /// says.
    ///
    /// When the merge stores an incarnation this node did not hold, its
    /// parent is checked (a deleted parent kills it) and the child indexed
    /// under it; an incarnation already held was checked and indexed when it
    /// came (review #14: the held winner's parent was looked up in the shard
    /// locked for the incoming one's). That parent is always the incoming
    /// entry's, so callers lock the incoming entry's parent shard.
    #[allow(clippy::too_many_arguments)]
    fn apply_locked(
        &self,
        shard: &mut Shard,
        mut parent_shard: Option<(usize, &mut Shard)>,
        id: &Arc<str>,
        incoming: Entry,
        now: Millis,
        changes: &mut Vec<Change>,
        source: Source,
    ) {
        let before = shard.entries.get(id);
        let new_parent = new_incarnation_parent(before, &incoming).cloned();
        // Whether that parent is stored in `parent_shard` (else in `shard`).
        let in_parent_shard = new_parent.as_deref().is_some_and(|parent| {
            let needed = self.shard_index(parent);
            let locked = parent_shard
                .as_ref()
                .is_some_and(|(locked, _)| *locked == needed);
            debug_assert!(
                locked || needed == self.shard_index(id),
                "the parent's shard must be locked"
            );
            locked
        });
        let mut merged = merge_at(before, incoming, now);
        let mut parent_key = None;
        if let Some(entry) = merged.as_mut()
            && let Some(inc) = entry.live()
        {
            let used_up = inc.is_used_up();
            let parent_deleted = new_parent.as_deref().is_some_and(|p| {
                let holder: &Shard = match &parent_shard {
                    Some((_, other)) if in_parent_shard => other,
                    _ => shard,
                };
                holder.entries.get(p).is_some_and(Entry::is_deleted)
            });
            if used_up || parent_deleted {
                if used_up && source == Source::Write {
                    self.observe(id, inc, EventKind::UsedUp, now);
                }
                entry.delete();
            } else {
                parent_key = new_parent;
            }
        }
        if merged.as_ref() == before {
            return;
        }
        self.observe_change(id, before, merged.as_ref(), source, now);
        // A child is indexed under its parent so a later delete of the parent finds it.
        if let Some(parent) = parent_key {
            let holder: &mut Shard = match parent_shard.as_mut() {
                Some((_, other)) if in_parent_shard => other,
                _ => shard,
            };
            holder
                .children
                .entry(parent)
                .or_default()
                .insert(id.clone());
        }
        if let Some(entry) = &merged
            && (source.record() == Record::Every || entry.is_deleted())
        {
            changes.push((id.clone(), entry.clone()));
        }
        let due = shard.replace(id, merged, self.config.skew_budget_ms);
        if let Some(due) = due {
            self.wake_sweeper_for(due);
        }
    }

    /// Turn `id` into a tombstone under its shard lock (its retention kept),
    /// recording the change to replicate; children cascade afterwards.
    fn tombstone_locked(
        &self,
        shard: &mut Shard,
        id: &Arc<str>,
        now: Millis,
        changes: &mut Vec<Change>,
        source: Source,
    ) {
        self.apply_locked(shard, None, id, Entry::tombstone(0), now, changes, source);
    }

    /// Tell the observer what a change did (see [`Observer`]); used-up
    /// tickets were told of as they were used up.
    fn observe_change(
        &self,
        id: &Arc<str>,
        before: Option<&Entry>,
        after: Option<&Entry>,
        source: Source,
        now: Millis,
    ) {
        if !self.observing() {
            return;
        }
        let held = before.and_then(|entry| entry.live().map(|inc| (entry, inc)));
        match (held, after.and_then(Entry::live)) {
            (held, Some(inc)) => {
                let new = held.is_none_or(|(_, old)| old.created != inc.created);
                if new && source == Source::Write {
                    self.observe(id, inc, EventKind::Created, now);
                }
            }
            (Some((entry, inc)), None) => match (entry.liveness(now), source) {
                (Liveness::Expired, _) => {
                    let idle = now < inc.identity.deadline_ms;
                    self.observe(id, inc, EventKind::Expired { idle }, now);
                }
                (Liveness::Live, Source::Delete(cause)) => {
                    self.observe(id, inc, EventKind::Deleted(cause), now);
                }
                _ => {}
            },
            (None, None) => {}
        }
    }

    /// Tombstone every child of every tombstone in `changes`, recursively
    /// (children's tombstones are appended and cascade in turn). A child joins
    /// `live` when it was live and its parent is in `live`.
    fn cascade(
        &self,
        changes: &mut Vec<Change>,
        next: &mut usize,
        live: &mut HashSet<Arc<str>>,
        now: Millis,
        source: Source,
    ) {
        while *next < changes.len() {
            let (parent, entry) = &changes[*next];
            *next += 1;
            if !entry.is_deleted() {
                continue;
            }
            let parent = parent.clone();
            let children = {
                let mut shard = self.lock(self.shard_index(&parent));
                shard.children.remove(&parent).unwrap_or_default()
            };
            for child in children {
                let was_live = self.delete_one(&child, Some(&parent), now, changes, source);
                if was_live && live.contains(&parent) {
                    live.insert(child);
                }
            }
        }
    }

    /// Lock the entry's shard and, if different, its parent's, in index order
    /// (the one lock order that cannot deadlock).
    fn with_pair<R>(
        &self,
        own: usize,
        parent: Option<usize>,
        f: impl FnOnce(&mut Shard, Option<&mut Shard>) -> R,
    ) -> R {
        match parent {
            Some(parent) if parent != own => {
                let (mut first, mut second) = if own < parent {
                    let a = self.lock(own);
                    let b = self.lock(parent);
                    (a, b)
                } else {
                    let b = self.lock(parent);
                    let a = self.lock(own);
                    (a, b)
                };
                f(&mut first, Some(&mut second))
            }
            _ => {
                let mut shard = self.lock(own);
                f(&mut shard, None)
            }
        }
    }

    // ---- replication support ----

    /// Whether this node holds any record (live or not) for `id`: a miss is
    /// what makes a read ask the peers.
    pub fn holds(&self, id: &str) -> bool {
        self.lock(self.shard_index(id)).entries.contains_key(id)
    }

    /// Whether this node holds the write a peer pushed for `id` after the
    /// merge: any record for a pushed tombstone; for a pushed live record, a
    /// record not deleted (a tombstone here won the merge and killed it).
    pub fn holds_pushed(&self, id: &str, pushed_live: bool) -> bool {
        let shard = self.lock(self.shard_index(id));
        shard
            .entries
            .get(id)
            .is_some_and(|entry| !pushed_live || !entry.is_deleted())
    }

    /// Whether `id` is live here: its own state and every ancestor's.
    pub fn holds_live(&self, id: &str) -> bool {
        self.effective_liveness(id, self.now()) == Some(true)
    }

    /// The stored entry for `id`, as a peer would receive it.
    pub fn entry(&self, id: &str) -> Option<Entry> {
        self.lock(self.shard_index(id)).entries.get(id).cloned()
    }

    /// Every bucket's digest, in bucket order.
    pub fn digests(&self) -> Vec<u64> {
        let mut digests = vec![0; digest::BUCKETS];
        for index in 0..self.shards.len().min(digest::BUCKETS) {
            let shard = self.lock(index);
            // The buckets of shard `index`: `index`, `index + shards`, ...
            for bucket in (index..digest::BUCKETS).step_by(self.shards.len()) {
                digests[bucket] = shard.digests[bucket];
            }
        }
        digests
    }

    /// Every entry of one bucket, as `f` maps it (see [`Store::bucket_page`]).
    pub fn bucket_entries<T>(&self, bucket: usize, f: impl FnMut(&str, &Entry) -> T) -> Vec<T> {
        self.bucket_page(bucket, "", usize::MAX, f, |_| 0).0
    }

    /// The entries of one bucket with ids after `after` ("" = from the first),
    /// in id order, as `f` maps them, until their `size`s reach `budget` (at
    /// least one entry, however large); and whether more follow. A shard lock
    /// is held for one page: mapping straight to what is sent saves a copy of
    /// every entry. With a shard per bucket (the default) the shard's entries
    /// are the bucket's; with fewer shards each holds several buckets, and the
    /// scan hashes every id to keep the bucket's.
    pub fn bucket_page<T>(
        &self,
        bucket: usize,
        after: &str,
        budget: usize,
        mut f: impl FnMut(&str, &Entry) -> T,
        mut size: impl FnMut(&T) -> usize,
    ) -> (Vec<T>, bool) {
        let shard = self.lock(self.shard_of_bucket(bucket));
        let whole_shard = self.shards.len() >= digest::BUCKETS;
        let mut in_bucket = shard
            .entries
            .range::<str, _>((Bound::Excluded(after), Bound::Unbounded))
            .filter(|(id, _)| whole_shard || digest::bucket_of(id) == bucket);
        let mut page = Vec::new();
        let mut used = 0usize;
        while page.is_empty() || used < budget {
            let Some((id, entry)) = in_bucket.next() else {
                return (page, false);
            };
            let item = f(id, entry);
            used = used.saturating_add(size(&item));
            page.push(item);
        }
        let more = in_bucket.next().is_some();
        (page, more)
    }

    /// Records held (live, dying or tombstones).
    pub fn records(&self) -> usize {
        (0..self.shards.len())
            .map(|index| self.lock(index).entries.len())
            .sum()
    }

    // ---- expiry ----

    /// Earliest time at which the sweeper has work.
    pub fn next_due(&self) -> Option<Millis> {
        (0..self.shards.len())
            .filter_map(|index| self.lock(index).next_due())
            .min()
    }

    fn wake_sweeper_for(&self, due: Millis) {
        if due < self.sweep_target_ms.load(Ordering::Relaxed) {
            self.sweep_wake.notify_one();
        }
    }

    /// Set what the sweeper waits for; returns the wake-up signal.
    pub(crate) fn sweeper_waits_until(&self, due: Millis) -> &Notify {
        self.sweep_target_ms.store(due, Ordering::Relaxed);
        &self.sweep_wake
    }

    /// Handle at most `budget` due entries: live tickets that died become
    /// tombstones (cascading to their children) unless `expiry` holds them,
    /// except idle deaths, which go back in the report (`idle_dead`) to be
    /// confirmed; tombstones and dead records past retention are forgotten.
    /// Each shard lock is held for one slice only.
    pub fn sweep(&self, budget: usize, expiry: Expiry) -> SweepReport {
        let now = self.now();
        let mut report = SweepReport::default();
        let mut changes = Vec::new();
        let mut forgotten_children = Vec::new();
        let mut left = budget;
        for index in 0..self.shards.len() {
            if left == 0 {
                break;
            }
            let mut shard = self.lock(index);
            // Held keys stay in the index: step past them, not onto them again.
            let mut after: Option<(Millis, Arc<str>)> = None;
            while left > 0 {
                let next = match &after {
                    None => shard.due.first(),
                    Some(held) => shard
                        .due
                        .range((Bound::Excluded(held), Bound::Unbounded))
                        .next(),
                };
                let Some((due, id)) = next.cloned() else {
                    break;
                };
                if due > now {
                    break;
                }
                left -= 1;
                let Some(entry) = shard.entries.get(&id) else {
                    shard.due.remove(&(due, id));
                    continue;
                };
                if now >= entry.retain_until_ms {
                    if let Some(parent) = entry.live().and_then(|inc| inc.identity.parent.clone()) {
                        forgotten_children.push((parent, id.clone()));
                    }
                    if let Some(inc) = entry.live()
                        && entry.liveness(now) == Liveness::Expired
                    {
                        // Expiry held until retention ran out: still an expiry.
                        let idle = now < inc.identity.deadline_ms;
                        self.observe(&id, inc, EventKind::Expired { idle }, now);
                    }
                    shard.replace(&id, None, self.config.skew_budget_ms);
                    report.purged += 1;
                } else if entry.is_deleted() || entry.liveness(now) == Liveness::Live {
                    // Not due yet (cannot happen while `replace` keeps the index
                    // exact); drop the stray key rather than spin on it.
                    tracing::warn!(ticket = %tag(&id), "sweeper found a stale index key");
                    shard.due.remove(&(due, id));
                } else if expiry == Expiry::Hold && entry.liveness(now) == Liveness::Expired {
                    report.held += 1;
                    after = Some((due, id));
                } else if dead_by_idle_only(entry, now, self.config.skew_budget_ms) {
                    report.idle_dead.push(id.clone());
                    after = Some((due, id));
                } else {
                    report.expired += 1;
                    self.tombstone_locked(&mut shard, &id, now, &mut changes, Source::Sweep);
                }
            }
        }
        report.more_due = left == 0 && self.next_due().is_some_and(|due| due <= now);
        self.finish_expiry(changes, forgotten_children, now);
        report
    }

    /// Turn the idle deaths `ids` (from [`SweepReport::idle_dead`], once
    /// confirmed) into tombstones, cascading to their children; an id that
    /// came back to life meanwhile (a merged touch) is left. Returns how many.
    pub fn expire_idle(&self, ids: &[Arc<str>]) -> usize {
        let now = self.now();
        let mut changes = Vec::new();
        let mut expired = 0;
        for id in ids {
            let mut shard = self.lock(self.shard_index(id));
            let dead = shard.entries.get(id).is_some_and(|entry| {
                matches!(entry.liveness(now), Liveness::Expired | Liveness::UsedUp)
                    && now < entry.retain_until_ms
            });
            if dead {
                expired += 1;
                self.tombstone_locked(&mut shard, id, now, &mut changes, Source::Sweep);
            }
        }
        self.finish_expiry(changes, Vec::new(), now);
        expired
    }

    /// After expiry tombstones: cascade them to children, and drop forgotten
    /// children from their parents' child index.
    fn finish_expiry(
        &self,
        mut changes: Vec<Change>,
        forgotten_children: Vec<(Arc<str>, Arc<str>)>,
        now: Millis,
    ) {
        self.cascade(
            &mut changes,
            &mut 0,
            &mut HashSet::new(),
            now,
            Source::Sweep,
        );
        for (parent, child) in forgotten_children {
            let mut shard = self.lock(self.shard_index(&parent));
            if let Some(children) = shard.children.get_mut(&parent) {
                children.remove(&child);
                if children.is_empty() {
                    shard.children.remove(&parent);
                }
            }
        }
    }
}

/// The parent named by the incarnation that merging `incoming` into `held`
/// stores when this node did not hold it before; `None` when the merge keeps
/// the incarnation held (its parent was checked and indexed when it came),
/// ends in a tombstone, or the winner has no parent. Mirrors `Entry::merge`.
fn new_incarnation_parent<'a>(held: Option<&Entry>, incoming: &'a Entry) -> Option<&'a Arc<str>> {
    let incoming_inc = incoming.live()?;
    match held.map(|entry| entry.live()) {
        None => {}
        Some(None) => return None,
        Some(Some(held_inc)) if incoming_inc.created <= held_inc.created => return None,
        Some(Some(_)) => {}
    }
    incoming_inc.identity.parent.as_ref()
}

/// Whether `entry` died by its idle timeout alone: its hard deadline (with
/// the skew slack) has not passed and no use limit ran out.
fn dead_by_idle_only(entry: &Entry, now: Millis, skew_budget_ms: Millis) -> bool {
    entry.liveness(now) == Liveness::Expired
        && entry
            .live()
            .is_some_and(|inc| now < inc.identity.deadline_ms.saturating_add(skew_budget_ms))
}

/// Which changes the merge path records.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Record {
    /// Every changed entry: what a local write replicates.
    Every,
    /// Tombstones only: what must cascade after a merge from a peer.
    Tombstones,
}

/// The incarnation if the entry itself is live at `now` (ancestors aside).
fn live_at(entry: &Entry, now: Millis) -> Result<&crate::entry::Incarnation, StoreError> {
    match entry.liveness(now) {
        Liveness::Live => entry.live().ok_or(StoreError::NotFound),
        _ => Err(StoreError::NotFound),
    }
}

#[cfg(test)]
mod tests;
