//! The ticket entry: a small state-based CRDT (a join semilattice).
//!
//! Every write, local or (later) from a peer, is a merge of an [`Entry`] into the
//! store: one path, so the single node and the cluster decide alike.
//!
//! # Shape
//! An entry is either [`State::Deleted`] (a tombstone) or one *incarnation* of a
//! live ticket: identity fixed at creation, the payload as a last-writer-wins
//! register keyed by [`Stamp`] (hybrid logical clock + node id), `last_used` as a
//! max register and `uses` as a per-node grow-only counter (a `VClock`). Beside the
//! state, `retain_until_ms` (a max register) says when the record may be forgotten:
//! the latest hard deadline it ever carried plus the clock-skew budget.
//!
//! # Laws (proven by the property tests below)
//! `merge` is commutative, associative and idempotent, so replicas that have seen
//! the same writes hold the same entry whatever the order or repetition.
//! 1. **Remove wins.** `Deleted ⊔ x = Deleted`: a tombstone absorbs any concurrent
//!    touch, update or re-put (unlike the add-wins `crdts::Map` / `Orswot`).
//! 2. **Newest incarnation wins whole.** A put that replaces a ticket starts a new
//!    incarnation with a fresh stamp; between incarnations the greater stamp wins
//!    entirely, within one incarnation the fields merge pointwise.
//! 3. **Forgetting is monotone.** `retain_until_ms` only grows, so an entry that is
//!    past retention after a merge was past it in every input: dropping such
//!    entries ([`merge_at`]) commutes with merging.

use std::fmt;
use std::sync::Arc;

use crdts::{CmRDT, CvRDT, Dot, LWWReg, VClock};

use crate::clock::{Millis, Stamp};
use crate::ticket::Kind;

/// Fields fixed when an incarnation is created.
///
/// Strings are shared (`Arc<str>`), not owned: entries are cloned on every write
/// (the copy replication sends), and a shared string is 8 B smaller in place.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    pub kind: Kind,
    pub principal: Option<Arc<str>>,
    pub parent: Option<Arc<str>>,
    pub created_at_ms: Millis,
    /// Effective hard deadline: created + ttl, capped at the parent's deadline.
    pub deadline_ms: Millis,
    /// 0 = unlimited.
    pub max_uses: u32,
}

/// The part of a ticket that `update` replaces.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload {
    /// In an allocation of exactly its length ([`owned_bytes`]).
    pub bytes: Box<[u8]>,
    pub idle_ms: Option<Millis>,
}

/// A payload in an allocation of its own, of exactly its length.
///
/// Payloads decoded from a gRPC request or a peer frame are slices of the
/// connection's receive buffer (prost decodes `bytes` fields zero-copy), so a
/// stored 1 KB payload would otherwise keep that whole buffer alive (seen: ~6 KB
/// of resident memory per 1 KB ticket). Entries outlive requests: copy on entry.
///
/// Not shared (`Arc<[u8]>` or `Bytes`) although entries are cloned on every
/// write: reference counts in front of the bytes make a 1,024 B payload need
/// 1,040 B, which the node's allocator (jemalloc, size classes) rounds up to
/// 1,280; counts in an allocation of their own cost 32 B a ticket, about 2%.
/// Copying 1 KB on a clone costs far less than the rest of a request.
pub fn owned_bytes(bytes: &[u8]) -> Box<[u8]> {
    Box::from(bytes)
}

impl fmt::Debug for Payload {
    /// Lengths only: payloads are bearer credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payload")
            .field("len", &self.bytes.len())
            .field("idle_ms", &self.idle_ms)
            .finish()
    }
}

/// One incarnation of a live ticket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incarnation {
    /// Stamp of the put that created this incarnation.
    pub created: Stamp,
    pub identity: Identity,
    pub payload: LWWReg<Payload, Stamp>,
    pub last_used: MaxReg,
    /// Uses recorded by each node; the total is the sum.
    pub uses: Uses,
    /// Not part of the ticket's state: see [`StoredDigest`].
    pub stored_digest: StoredDigest,
}

/// The anti-entropy digest of the entry this incarnation is stored in, kept so
/// a write hashes only the new entry, not the old one again (BLAKE3, ~2,000
/// instructions: it was 12% of a node under the `cas` bench).
///
/// Written only by `Shard::replace`, as the entry goes into the map, and read
/// only from entries the map holds, which nothing changes in place (the same
/// rule keeps the shard's indexes true). A copy taken out and changed carries a
/// stale value, never read: the shard computes the digest again on insert. It
/// is no part of the entry's value, so equality ignores it, and it costs no
/// memory: the incarnation fills jemalloc's 192 B size class exactly.
#[derive(Clone, Copy, Default)]
pub struct StoredDigest(pub u64);

impl PartialEq for StoredDigest {
    fn eq(&self, _: &StoredDigest) -> bool {
        true
    }
}

impl Eq for StoredDigest {}

impl fmt::Debug for StoredDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoredDigest")
    }
}

impl Incarnation {
    pub fn total_uses(&self) -> u64 {
        self.uses.iter().map(|(_, n)| n).sum()
    }

    /// When the ticket stops being live, ignoring use limits.
    pub fn expires_at_ms(&self) -> Millis {
        let idle_end = self
            .payload
            .val
            .idle_ms
            .map(|idle| self.last_used.0.saturating_add(idle));
        idle_end.map_or(self.identity.deadline_ms, |end| {
            end.min(self.identity.deadline_ms)
        })
    }

    pub fn is_used_up(&self) -> bool {
        self.identity.max_uses > 0 && self.total_uses() >= u64::from(self.identity.max_uses)
    }
}

/// A ticket's replicated state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Live(Box<Incarnation>),
    Deleted,
}

/// What one node holds for one ticket id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub state: State,
    /// The record may be forgotten at this time: latest hard deadline it
    /// carried plus the skew budget. Nothing older than this can come back.
    pub retain_until_ms: Millis,
}

/// Why a ticket is not returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Live,
    Expired,
    UsedUp,
    Deleted,
}

impl Entry {
    /// A fresh incarnation, as a put creates it.
    pub fn create(
        stamp: Stamp,
        identity: Identity,
        payload: Payload,
        skew_budget_ms: Millis,
    ) -> Entry {
        let retain_until_ms = identity.deadline_ms.saturating_add(skew_budget_ms);
        let last_used = MaxReg(identity.created_at_ms);
        Entry {
            state: State::Live(Box::new(Incarnation {
                created: stamp.clone(),
                identity,
                payload: LWWReg {
                    val: payload,
                    marker: stamp,
                },
                last_used,
                uses: Uses::default(),
                stored_digest: StoredDigest::default(),
            })),
            retain_until_ms,
        }
    }

    /// A tombstone that must be remembered until `retain_until_ms`.
    pub fn tombstone(retain_until_ms: Millis) -> Entry {
        Entry {
            state: State::Deleted,
            retain_until_ms,
        }
    }

    pub fn live(&self) -> Option<&Incarnation> {
        match &self.state {
            State::Live(incarnation) => Some(incarnation),
            State::Deleted => None,
        }
    }

    pub fn live_mut(&mut self) -> Option<&mut Incarnation> {
        match &mut self.state {
            State::Live(incarnation) => Some(incarnation),
            State::Deleted => None,
        }
    }

    pub fn is_deleted(&self) -> bool {
        matches!(self.state, State::Deleted)
    }

    /// The entry's own liveness at `now_ms` (ancestors are the store's concern).
    pub fn liveness(&self, now_ms: Millis) -> Liveness {
        match &self.state {
            State::Deleted => Liveness::Deleted,
            State::Live(inc) if inc.is_used_up() => Liveness::UsedUp,
            State::Live(inc) if now_ms >= inc.expires_at_ms() => Liveness::Expired,
            State::Live(_) => Liveness::Live,
        }
    }

    /// Turn into a tombstone, keeping the retention time.
    pub fn delete(&mut self) {
        self.state = State::Deleted;
    }
}

impl CvRDT for Entry {
    type Validation = std::convert::Infallible;

    fn validate_merge(&self, _other: &Self) -> Result<(), Self::Validation> {
        Ok(())
    }

    fn merge(&mut self, other: Entry) {
        self.merge_from(&other);
    }
}

impl Entry {
    /// The merge (`self ⊔ other`), reading `other` in place: only the parts of
    /// `other` that win are cloned. The store merges what it holds into the
    /// incoming entry this way, and an incoming local write or newer peer copy
    /// wins whole, so the stored entry (payload and all) is not copied just to
    /// be merged and dropped.
    fn merge_from(&mut self, other: &Entry) {
        self.retain_until_ms = self.retain_until_ms.max(other.retain_until_ms);
        match (&mut self.state, &other.state) {
            (State::Deleted, _) => {}
            (_, State::Deleted) => self.state = State::Deleted,
            (State::Live(mine), State::Live(theirs)) => {
                if theirs.created > mine.created {
                    mine.clone_from(theirs);
                } else if mine.created == theirs.created {
                    mine.merge_same_incarnation(theirs);
                }
            }
        }
    }
}

impl Incarnation {
    fn merge_same_incarnation(&mut self, other: &Incarnation) {
        // Same stamp means same put, so identities agree; the max keeps the merge
        // deterministic even if a corrupted peer disagrees.
        if other.identity > self.identity {
            self.identity.clone_from(&other.identity);
        }
        // The payload register's merge (`LWWReg::update`): the greater stamp wins.
        if self.payload.marker < other.payload.marker {
            self.payload.clone_from(&other.payload);
        }
        self.last_used.merge(other.last_used);
        self.uses.merge_from(&other.uses);
    }
}

/// Merge what the store holds (`existing`) into `incoming` as of `now_ms`
/// (merging commutes, so this is `existing ⊔ incoming`).
///
/// Returns `None` when the result is past retention: the store then forgets the
/// id, and a stale copy arriving later is ignored the same way.
pub fn merge_at(existing: Option<&Entry>, mut incoming: Entry, now_ms: Millis) -> Option<Entry> {
    if let Some(existing) = existing {
        incoming.merge_from(existing);
    }
    (now_ms < incoming.retain_until_ms).then_some(incoming)
}

/// Uses recorded by each node: a grow-only counter per node (a `VClock`).
///
/// Boxed, and absent until the first use: most tickets die unused or after one
/// use, and an empty `VClock` still takes 24 B in every incarnation (8 B boxed),
/// which keeps an incarnation within a 192 B malloc chunk instead of 208 B.
/// Absent and empty are one state (never `Some` of an empty clock), so
/// equality is the clock's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Uses(Option<Box<VClock<Arc<str>>>>);

impl Uses {
    /// Each node's count, in node order.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, u64)> {
        self.0
            .iter()
            .flat_map(|clock| clock.dots.iter().map(|(node, n)| (node, *n)))
    }

    /// Record one use by `node`.
    pub fn record(&mut self, node: Arc<str>) {
        let clock = self.0.get_or_insert_with(Default::default);
        clock.apply(clock.inc(node));
    }
}

impl From<VClock<Arc<str>>> for Uses {
    fn from(clock: VClock<Arc<str>>) -> Uses {
        Uses((!clock.dots.is_empty()).then(|| Box::new(clock)))
    }
}

impl CvRDT for Uses {
    type Validation = std::convert::Infallible;

    fn validate_merge(&self, _other: &Self) -> Result<(), Self::Validation> {
        Ok(())
    }

    fn merge(&mut self, other: Uses) {
        self.merge_from(&other);
    }
}

impl Uses {
    /// The merge, reading `other` in place (each node's count: the greater).
    fn merge_from(&mut self, other: &Uses) {
        match (&mut self.0, &other.0) {
            (_, None) => {}
            (None, Some(theirs)) => self.0 = Some(theirs.clone()),
            (Some(mine), Some(theirs)) => {
                for (node, &count) in &theirs.dots {
                    mine.apply(Dot::new(node.clone(), count));
                }
            }
        }
    }
}

/// A max register over milliseconds (`crdts` 7 has none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct MaxReg(pub Millis);

impl CvRDT for MaxReg {
    type Validation = std::convert::Infallible;

    fn validate_merge(&self, _other: &Self) -> Result<(), Self::Validation> {
        Ok(())
    }

    fn merge(&mut self, other: MaxReg) {
        self.0 = self.0.max(other.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Hlc;
    use bytes::Bytes;
    use crdts::CmRDT;
    use proptest::prelude::*;

    const NODES: [&str; 3] = ["a", "b", "c"];

    #[test]
    fn owned_bytes_does_not_pin_the_buffer_it_came_from() {
        let buffer = Bytes::from(vec![7u8; 64 * 1024]);
        let slice = buffer.slice(1000..2024);
        let owned = owned_bytes(&slice);
        assert_eq!(&owned[..], &slice[..]);
        let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        assert!(!range.contains(&(owned.as_ptr() as usize)));
        assert!(owned_bytes(&[]).is_empty());
    }

    fn stamp(wall_ms: Millis, logical: u32, node: usize) -> Stamp {
        Stamp {
            hlc: Hlc { wall_ms, logical },
            node: NODES[node].into(),
        }
    }

    /// Payload bytes are a function of the stamp: one write, one value, as in
    /// the real system where every stamp is unique.
    fn payload_for(stamp: &Stamp, idle_ms: Option<Millis>) -> Payload {
        Payload {
            bytes: owned_bytes(
                format!("{}:{}", stamp.to_version(), idle_ms.unwrap_or(0)).as_bytes(),
            ),
            idle_ms,
        }
    }

    /// Identity is a function of the incarnation stamp, for the same reason.
    fn identity_for(created: &Stamp) -> Identity {
        Identity {
            kind: "TGT".into(),
            principal: Some("alice".into()),
            parent: None,
            created_at_ms: created.hlc.wall_ms,
            deadline_ms: created.hlc.wall_ms + 1_000 + Millis::from(created.hlc.logical),
            max_uses: 0,
        }
    }

    prop_compose! {
        fn arb_stamp()(wall in 0u64..4, logical in 0u32..3, node in 0usize..3) -> Stamp {
            stamp(wall, logical, node)
        }
    }

    prop_compose! {
        fn arb_incarnation()(
            created in arb_stamp(),
            payload_offset in 0u64..3,
            payload_logical in 0u32..3,
            payload_node in 0usize..3,
            last_used in 0u64..20,
            uses in proptest::collection::vec((0usize..3, 0u64..4), 0..3),
        ) -> Incarnation {
            // A payload write happens at or after its incarnation's creation.
            let payload_stamp = if payload_offset == 0 {
                created.clone()
            } else {
                stamp(created.hlc.wall_ms + payload_offset, payload_logical, payload_node)
            };
            // Like the bytes, the idle timeout is a function of the write's stamp.
            let idle = (payload_stamp != created)
                .then(|| 1 + payload_stamp.hlc.wall_ms + u64::from(payload_stamp.hlc.logical));
            let mut clock = VClock::new();
            for (node, count) in uses {
                clock.apply(crdts::Dot::new(Arc::<str>::from(NODES[node]), count));
            }
            Incarnation {
                identity: identity_for(&created),
                payload: LWWReg { val: payload_for(&payload_stamp, idle), marker: payload_stamp },
                last_used: MaxReg(created.hlc.wall_ms + last_used),
                uses: clock.into(),
                created,
                stored_digest: StoredDigest::default(),
            }
        }
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        let live = (arb_incarnation(), 0u64..40).prop_map(|(inc, extra)| Entry {
            retain_until_ms: inc.identity.deadline_ms + extra,
            state: State::Live(Box::new(inc)),
        });
        let deleted = (0u64..2_000).prop_map(Entry::tombstone);
        prop_oneof![4 => live, 1 => deleted]
    }

    fn merged(mut a: Entry, b: Entry) -> Entry {
        a.merge(b);
        a
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_entry(), b in arb_entry()) {
            prop_assert_eq!(merged(a.clone(), b.clone()), merged(b, a));
        }

        #[test]
        fn merge_is_associative(a in arb_entry(), b in arb_entry(), c in arb_entry()) {
            prop_assert_eq!(
                merged(merged(a.clone(), b.clone()), c.clone()),
                merged(a, merged(b, c))
            );
        }

        #[test]
        fn merge_is_idempotent(a in arb_entry()) {
            prop_assert_eq!(merged(a.clone(), a.clone()), a);
        }

        /// A tombstone beats any set of concurrent touches, updates and re-puts,
        /// whatever order they are merged in.
        #[test]
        fn tombstone_wins_in_every_order(
            tomb in 0u64..2_000,
            others in proptest::collection::vec(arb_entry(), 1..5),
            position in 0usize..5,
        ) {
            let mut ops = others;
            let position = position.min(ops.len());
            ops.insert(position, Entry::tombstone(tomb));
            let result = ops.into_iter().reduce(merged).expect("non-empty");
            prop_assert_eq!(result.state, State::Deleted);
            prop_assert!(result.retain_until_ms >= tomb);
        }

        /// Merging never lowers what a reader sees grow: uses, last use, retention.
        #[test]
        fn merge_is_an_inflation(a in arb_entry(), b in arb_entry()) {
            let m = merged(a.clone(), b.clone());
            prop_assert!(m.retain_until_ms >= a.retain_until_ms.max(b.retain_until_ms));
            if let (Some(ma), Some(mm)) = (a.live(), m.live())
                && ma.created == mm.created
            {
                prop_assert!(mm.total_uses() >= ma.total_uses());
                prop_assert!(mm.last_used >= ma.last_used);
                prop_assert!(mm.payload.marker >= ma.payload.marker);
            }
        }

        /// An entry past its retention (hard deadline + skew budget) is dropped on
        /// merge, and dropping gives the same answer in either order.
        #[test]
        fn expired_past_retention_is_dropped(a in arb_entry(), b in arb_entry(), now in 0u64..2_100) {
            let ab = merge_at(Some(&a), b.clone(), now);
            let ba = merge_at(Some(&b), a.clone(), now);
            prop_assert_eq!(&ab, &ba);
            let retain = a.retain_until_ms.max(b.retain_until_ms);
            prop_assert_eq!(ab.is_none(), now >= retain);
            // An incoming entry alone past retention never enters the store.
            prop_assert_eq!(merge_at(None, b.clone(), now).is_none(), now >= b.retain_until_ms);
        }
    }

    /// Every live ticket holds one incarnation: 192 B is the most that fits
    /// jemalloc's 192 B size class (the node's allocator; issue 6's memory goal
    /// is met by ~20 B a ticket).
    #[test]
    fn an_incarnation_fits_jemallocs_192_byte_class() {
        assert!(std::mem::size_of::<Incarnation>() <= 192);
        assert_eq!(std::mem::size_of::<Kind>(), 16);
    }

    #[test]
    fn liveness_follows_deadline_idle_and_uses() {
        let created = stamp(1_000, 0, 0);
        let identity = Identity {
            max_uses: 2,
            ..identity_for(&created)
        };
        let deadline = identity.deadline_ms;
        let mut entry = Entry::create(
            created.clone(),
            identity,
            Payload {
                bytes: owned_bytes(b"x"),
                idle_ms: Some(300),
            },
            1_000,
        );
        assert_eq!(entry.liveness(1_299), Liveness::Live);
        assert_eq!(entry.liveness(1_300), Liveness::Expired, "idle timeout");
        let inc = entry.live_mut().expect("live");
        inc.last_used = MaxReg(1_500);
        assert_eq!(entry.liveness(1_700), Liveness::Live, "touch slides idle");
        let inc = entry.live_mut().expect("live");
        inc.last_used = MaxReg(deadline);
        assert_eq!(
            entry.liveness(deadline),
            Liveness::Expired,
            "never past hard deadline"
        );
        let inc = entry.live_mut().expect("live");
        inc.uses.record("a".into());
        inc.uses.record("b".into());
        assert_eq!(entry.liveness(1_000), Liveness::UsedUp);
        entry.delete();
        assert_eq!(entry.liveness(1_000), Liveness::Deleted);
        assert_eq!(entry.retain_until_ms, deadline + 1_000);
    }
}
