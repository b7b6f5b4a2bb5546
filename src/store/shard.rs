//! One shard of the store: entries plus the indexes derived from them.
//!
//! Indexes are never written directly: [`Shard::replace`] derives them from the
//! entry before and after every change, so they cannot drift from the entries.

use std::collections::{BTreeMap, BTreeSet, HashMap, btree_map};
use std::sync::Arc;

use super::digest::{BUCKETS, bucket_of, entry_digest};
use crate::clock::Millis;
use crate::entry::{Entry, State, StoredDigest};
use crate::ticket::Kind;

/// The hasher of the shard's hash maps: fast on short keys and seeded at
/// random per process (foldhash's minimal resistance to chosen collisions is
/// enough: ids and principals come from the SSO server, not from its users).
/// The std default, SipHash, cost ~1% of a node's instructions here.
type Hasher = foldhash::fast::RandomState;

/// Entries of one shard and their indexes.
pub(super) struct Shard {
    /// Ordered so `list` and `delete_all` can resume from a cursor.
    pub entries: BTreeMap<Arc<str>, Entry>,
    /// `(due, id)`: when the sweeper must next look at an entry (death of a live
    /// ticket, or forgetting a tombstone). Ordered, so sweeping never scans.
    pub due: BTreeSet<(Millis, Arc<str>)>,
    /// Parent id (stored in *this* shard) -> ids of its children, wherever they
    /// are stored. Kept with the parent so a child put and a parent delete meet
    /// under one lock: a delete can never miss a child created concurrently.
    pub children: HashMap<Arc<str>, BTreeSet<Arc<str>>, Hasher>,
    /// Lower-cased principal -> ids in this shard that are not deleted.
    pub by_principal: HashMap<String, BTreeSet<Arc<str>>, Hasher>,
    /// Non-deleted entries of this shard per kind (`count` sums these).
    pub kinds: HashMap<Kind, u64, Hasher>,
    /// Digest of every bucket (XOR of entry digests); only the buckets that map
    /// to this shard are ever non-zero.
    pub digests: Vec<u64>,
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            entries: BTreeMap::new(),
            due: BTreeSet::new(),
            children: HashMap::default(),
            by_principal: HashMap::default(),
            kinds: HashMap::default(),
            digests: vec![0; BUCKETS],
        }
    }
}

/// What the indexes record about one entry.
#[derive(PartialEq, Eq)]
struct IndexKeys {
    due_ms: Millis,
    /// Kind and lower-cased principal of a not-yet-deleted entry (a
    /// well-known kind is copied without an allocation).
    counted: Option<(Kind, Option<String>)>,
}

/// When the sweeper must next look at an entry: the death of a live ticket
/// (at once when used up; at its idle end or hard deadline only after the
/// skew budget, so that no node whose clock runs ahead within the budget
/// takes a death early, and a touch taken on a peer just before can still
/// arrive), or forgetting a tombstone.
fn due_of(entry: &Entry, skew_budget_ms: Millis) -> Millis {
    match &entry.state {
        State::Deleted => entry.retain_until_ms,
        State::Live(inc) => {
            let idle_end = inc
                .payload
                .val
                .idle_ms
                .map(|idle| inc.last_used.0.saturating_add(idle) + skew_budget_ms);
            if inc.is_used_up() {
                0
            } else {
                let hard_end = inc.identity.deadline_ms.saturating_add(skew_budget_ms);
                idle_end.map_or(hard_end, |end| end.min(hard_end))
            }
        }
    }
}

/// The digest of an entry the map holds: the one stored with a live
/// incarnation, computed for a tombstone (it has nowhere to keep one, and its
/// few fields hash quickly).
fn held_digest(id: &str, entry: &Entry) -> u64 {
    match &entry.state {
        State::Live(inc) => inc.stored_digest.0,
        State::Deleted => entry_digest(id, entry),
    }
}

/// Whether two entries of one id are counted alike (both deleted, or both live
/// with the same kind and principal), decided without allocating: then only
/// the due time can differ (a touch, a use, a merge within one incarnation).
/// `false` may still mean equal keys (principals differing only in case); the
/// caller then compares the full [`IndexKeys`].
fn counted_alike(a: &Entry, b: &Entry) -> bool {
    match (&a.state, &b.state) {
        (State::Deleted, State::Deleted) => true,
        (State::Live(x), State::Live(y)) => {
            x.identity.kind == y.identity.kind && x.identity.principal == y.identity.principal
        }
        _ => false,
    }
}

/// How the indexes change when an id's entry is replaced.
enum IndexChange {
    /// Counted alike before and after: at most the due time moves.
    Due { before: Millis, after: Millis },
    /// Everything is derived again (`None`: no entry on that side).
    Keys {
        before: Option<IndexKeys>,
        after: Option<IndexKeys>,
    },
}

impl IndexKeys {
    fn of(entry: &Entry, skew_budget_ms: Millis) -> IndexKeys {
        let due_ms = due_of(entry, skew_budget_ms);
        match &entry.state {
            State::Deleted => IndexKeys {
                due_ms,
                counted: None,
            },
            State::Live(inc) => IndexKeys {
                due_ms,
                counted: Some((
                    inc.identity.kind.clone(),
                    inc.identity.principal.as_deref().map(str::to_lowercase),
                )),
            },
        }
    }
}

impl Shard {
    /// Store `new` for `id` (or forget `id` when `None`), keeping every index in
    /// step. Returns the due time of the new entry, for waking the sweeper.
    pub fn replace(
        &mut self,
        id: &Arc<str>,
        mut new: Option<Entry>,
        skew_budget_ms: Millis,
    ) -> Option<Millis> {
        let due = new.as_ref().map(|entry| due_of(entry, skew_budget_ms));
        let bucket = bucket_of(id);
        if let Some(entry) = &mut new {
            let digest = entry_digest(id, entry);
            if let Some(inc) = entry.live_mut() {
                inc.stored_digest = StoredDigest(digest);
            }
            self.digests[bucket] ^= digest;
        }
        // One search of the map: the old entry comes back from the swap. The
        // index change is worked out before the new entry moves in.
        let (old, change) = match new {
            Some(entry) => match self.entries.entry(id.clone()) {
                btree_map::Entry::Occupied(mut slot) => {
                    let change = if counted_alike(slot.get(), &entry) {
                        IndexChange::Due {
                            before: due_of(slot.get(), skew_budget_ms),
                            after: due_of(&entry, skew_budget_ms),
                        }
                    } else {
                        IndexChange::Keys {
                            before: Some(IndexKeys::of(slot.get(), skew_budget_ms)),
                            after: Some(IndexKeys::of(&entry, skew_budget_ms)),
                        }
                    };
                    (Some(slot.insert(entry)), change)
                }
                btree_map::Entry::Vacant(slot) => {
                    let after = Some(IndexKeys::of(&entry, skew_budget_ms));
                    slot.insert(entry);
                    (
                        None,
                        IndexChange::Keys {
                            before: None,
                            after,
                        },
                    )
                }
            },
            None => {
                self.children.remove(id);
                let old = self.entries.remove(id);
                let before = old.as_ref().map(|e| IndexKeys::of(e, skew_budget_ms));
                (
                    old,
                    IndexChange::Keys {
                        before,
                        after: None,
                    },
                )
            }
        };
        if let Some(old) = &old {
            self.digests[bucket] ^= held_digest(id, old);
        }
        match change {
            IndexChange::Due { before, after } => {
                if before != after {
                    self.due.remove(&(before, id.clone()));
                    self.due.insert((after, id.clone()));
                }
            }
            IndexChange::Keys { before, after } => {
                if before != after {
                    self.reindex(id, before, after);
                }
            }
        }
        due
    }

    /// Move `id` from the index entries of `before` to those of `after`.
    fn reindex(&mut self, id: &Arc<str>, before: Option<IndexKeys>, after: Option<IndexKeys>) {
        if let Some(keys) = before {
            self.due.remove(&(keys.due_ms, id.clone()));
            if let Some((kind, principal)) = keys.counted {
                self.uncount(id, kind, principal);
            }
        }
        if let Some(keys) = after {
            self.due.insert((keys.due_ms, id.clone()));
            if let Some((kind, principal)) = keys.counted {
                *self.kinds.entry(kind).or_default() += 1;
                if let Some(principal) = principal {
                    self.by_principal
                        .entry(principal)
                        .or_default()
                        .insert(id.clone());
                }
            }
        }
    }

    fn uncount(&mut self, id: &Arc<str>, kind: Kind, principal: Option<String>) {
        if let Some(count) = self.kinds.get_mut(&kind) {
            *count -= 1;
            if *count == 0 {
                self.kinds.remove(&kind);
            }
        }
        if let Some(principal) = principal
            && let Some(ids) = self.by_principal.get_mut(&principal)
        {
            ids.remove(id);
            if ids.is_empty() {
                self.by_principal.remove(&principal);
            }
        }
    }

    /// Earliest due time in this shard.
    pub fn next_due(&self) -> Option<Millis> {
        self.due.first().map(|(due, _)| *due)
    }
}
