//! Replication: every node holds every live ticket (full replication).
//!
//! - **Writes** are applied locally through the store's merge path, then pushed
//!   to every live peer at once; the client's call returns once `write_quorum`
//!   nodes hold the write.
//! - **Reads** that miss locally ask the peers first, so a put acknowledged on A
//!   is readable on B before the push reaches B (read your writes anywhere).
//! - **Conditional operations** (consume, compare-and-set update) go to the
//!   ticket's arbiter: the highest rendezvous hash of (node, ticket id) among
//!   live members. The arbiter serializes them per ticket and needs votes from a
//!   majority of the expected cluster size for each slot (see [`votes`]), so two
//!   arbiters that disagree on membership can never both spend the same use.
//! - **Anti-entropy** ([`anti_entropy`]) repairs what pushes missed.
//! - **Clock fencing.** Every peer frame carries the sender's clock. A node
//!   whose clock disagrees with most of its live peers by more than the skew
//!   budget is the odd one out: it fences itself ([`Replicator::clock_fenced`])
//!   so that its expiry decisions, wrong by its skew, never reach the others.

pub mod anti_entropy;
pub mod reports;
pub(crate) mod votes;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use prost::Message as _;
use tessera_proto::peer::peer_frame::Body;
use tessera_proto::peer::{
    BucketDigests, ConsumeOp, Decide, Decided, DeleteMatching, DeletedMatching, Entries,
    EntryRecord, ErrorReply, Fetch, Propose, Push, PushAck, UpdateOp, Vote, decide, entry_record,
};
use tonic::Code;
use tracing::{debug, error, info, warn};

use crate::api::metrics::Latency;
use crate::clock::Millis;
use crate::error::StoreError;
use crate::journal::{Durable, Replayed, SharedJournal};
use crate::peer::{ClockReading, NodeId, PeerError, PeerHandler, PeerNetwork};
use crate::redact::tag;
use crate::store::{Expiry, PutTicket, Store, SweepReport, UpdateTicket, Written};
use crate::ticket::{self, TicketView};
use crate::watch::EventLog;
use votes::{Ballot, BallotId, SlotKey, SlotVotes, VoteBook};
use wire::{
    NodeIds, from_record, from_record_with, hlc_from_wire, hlc_to_wire, stamp_from_wire,
    stamp_to_wire, to_record,
};

/// How many times a decision is tried again after a voter handed back a copy
/// that showed the slot taken (each try merges what it learned).
const DECIDE_ATTEMPTS: usize = 3;
/// Ballots a proposer runs to recover a slot before it gives up (see [`votes`]).
const RECOVERY_ROUNDS: usize = 4;
/// `caught_up_at_ms` and `votes_from_ms` before this node has caught up.
const NOT_CAUGHT_UP: Millis = Millis::MAX;
/// Entries per push message.
const PUSH_BATCH: usize = 512;
/// Per-ticket decision locks (striped).
const DECIDER_STRIPES: usize = 1024;
/// How long a peer seen beyond the skew budget counts as skewed when no later
/// frame has shown it back within: frames flow every anti-entropy round, so a
/// peer that went quiet (or left) stops counting soon, and a fence lifts.
const SKEW_MEMORY: Duration = Duration::from_secs(10);

/// How often an unchanged clock verdict about a peer is written down again
/// (a write lock on the view), well inside [`SKEW_MEMORY`].
const CLOCK_SIGHTING_REFRESH: Duration = Duration::from_secs(1);

/// How many nodes must hold a write before it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteQuorum {
    /// 2 when the expected cluster size is 2 or more, else 1.
    Default,
    Nodes(usize),
    All,
}

impl FromStr for WriteQuorum {
    type Err = String;

    fn from_str(text: &str) -> Result<WriteQuorum, String> {
        match text.trim() {
            "all" => Ok(WriteQuorum::All),
            "default" => Ok(WriteQuorum::Default),
            n => match n.parse::<usize>() {
                Ok(0) | Err(_) => Err(format!(
                    "'{text}' is not a write quorum: use a number of nodes (1 or more) or 'all'"
                )),
                Ok(n) => Ok(WriteQuorum::Nodes(n)),
            },
        }
    }
}

#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    pub write_quorum: WriteQuorum,
    /// The cluster size that majorities are counted against, at least.
    pub expected_size: usize,
    /// Bound on one peer round trip made for a client call.
    pub call_timeout: Duration,
    pub max_clock_skew: Duration,
    /// Encoded entries per page of a bucket sync (see `anti_entropy`).
    pub sync_page_bytes: usize,
    /// Bytes of ticket events kept for `Watch` (see [`EventLog`]).
    pub watch_buffer_bytes: usize,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            write_quorum: WriteQuorum::Default,
            expected_size: 1,
            call_timeout: Duration::from_secs(2),
            max_clock_skew: Duration::from_secs(1),
            sync_page_bytes: anti_entropy::SYNC_PAGE_BYTES,
            watch_buffer_bytes: crate::watch::MAX_BYTES,
        }
    }
}

/// Counters for logs and metrics.
#[derive(Debug, Default)]
pub struct ReplicationStats {
    pub pushes_failed: AtomicU64,
    pub read_repairs: AtomicU64,
    pub decisions_forwarded: AtomicU64,
    pub clock_skew_reports: AtomicU64,
    pub bad_records: AtomicU64,
    /// Times this node fenced itself because its clock disagreed with most of
    /// its peers (see [`Replicator::clock_fenced`]).
    pub clock_fences: AtomicU64,
    /// Idle deaths the sweeper could not confirm with enough peers (see
    /// [`Replicator::sweep`]); counted per try.
    pub idle_deaths_unconfirmed: AtomicU64,
    /// Live tickets the sweeper turned into tombstones (expired, idle, used up).
    pub swept_dead: AtomicU64,
    /// Records the sweeper forgot (past retention).
    pub swept_forgotten: AtomicU64,
    /// Anti-entropy rounds with a peer: completed, failed, and what they found.
    pub sync_rounds: AtomicU64,
    pub sync_rounds_failed: AtomicU64,
    pub sync_buckets_differing: AtomicU64,
    pub sync_records_sent: AtomicU64,
    pub sync_records_received: AtomicU64,
    /// How long each push of a write took to be acknowledged by a peer: the
    /// replication lag a reader on that peer could see at most.
    pub push_seconds: Latency,
    /// Expiries another node was to report that this node kept as handoffs
    /// (see [`reports`]): reported here because that node had gone, or
    /// dropped because too many were kept.
    pub watch_handoffs_reported: AtomicU64,
    pub watch_handoffs_dropped: AtomicU64,
}

impl ReplicationStats {
    fn note_sync(&self, report: &anti_entropy::SyncReport, completed: bool) {
        let add = |counter: &AtomicU64, n: usize| {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        };
        add(
            if completed {
                &self.sync_rounds
            } else {
                &self.sync_rounds_failed
            },
            1,
        );
        add(&self.sync_buckets_differing, report.buckets_differing);
        add(&self.sync_records_sent, report.entries_sent);
        add(&self.sync_records_received, report.entries_received);
    }
}

/// Who this node believes is in the cluster.
struct View {
    /// Live peers, this node excluded.
    peers: Vec<NodeId>,
    /// Live peers that are leaving: not arbiters any more.
    draining: HashSet<NodeId>,
    /// Every peer seen live and not draining since this node started, less
    /// those later seen draining: the expected size never shrinks with time
    /// or a partition (review #3); only a node that announced its leave (the
    /// old task of a rolling deploy, review #12) stops counting.
    seen: HashSet<NodeId>,
    /// Last time a skewed clock was logged, per peer (rate limit).
    skew_logged: Vec<(NodeId, Instant)>,
    /// Each live peer's latest clock reading: whether its frame showed a
    /// clock beyond the skew budget, and when (tokio's clock, so tests can
    /// move it).
    clocks: HashMap<NodeId, ClockSighting>,
    /// Live peers that report not ready (catching up, or fenced) without
    /// draining: they run their own anti-entropy rounds.
    not_ready: HashSet<NodeId>,
}

/// A peer's latest clock reading, as its frames showed it.
#[derive(Clone, Copy, Debug)]
struct ClockSighting {
    /// Its clock was beyond the skew budget from this node's.
    beyond: bool,
    /// Its physical clock less this node's, as read off the frame (one-way
    /// network delay included).
    skew_ms: i64,
    at: tokio::time::Instant,
}

impl View {
    /// `peer`'s latest reading within [`SKEW_MEMORY`]: `Some(true)` beyond the
    /// budget, `Some(false)` within it, `None` not heard from lately.
    fn clock_of(&self, peer: &NodeId, now: tokio::time::Instant) -> Option<bool> {
        self.clocks
            .get(peer)
            .filter(|sighting| now.duration_since(sighting.at) < SKEW_MEMORY)
            .map(|sighting| sighting.beyond)
    }

    /// Whether `peer` was seen beyond the skew budget within [`SKEW_MEMORY`].
    fn is_skewed(&self, peer: &NodeId, now: tokio::time::Instant) -> bool {
        self.clock_of(peer, now) == Some(true)
    }

    /// Live peers seen lately beyond the budget, and within it.
    fn clock_votes(&self, now: tokio::time::Instant) -> (usize, usize) {
        self.peers
            .iter()
            .filter_map(|peer| self.clock_of(peer, now))
            .fold((0, 0), |(beyond, within), skewed| {
                if skewed {
                    (beyond + 1, within)
                } else {
                    (beyond, within + 1)
                }
            })
    }

    /// The majority rule: with at least 2 live peers, more than half of them
    /// skewed means this node's clock is the wrong one. With a single peer
    /// nobody can tell which of the two clocks is wrong: report only.
    fn clock_suspect(&self, now: tokio::time::Instant) -> bool {
        let (skewed, _) = self.clock_votes(now);
        self.peers.len() >= 2 && skewed * 2 > self.peers.len()
    }

    /// Whether this node's clock may be the wrong one: at least as many
    /// clocks were seen lately beyond the budget as agree with it, its own
    /// counted among those that agree.
    ///
    /// Weaker than [`View::clock_suspect`], which needs a majority of all live
    /// peers skewed (and so implies this): a skewed node that has heard from
    /// one peer only (just started, or its clock just jumped), or one of two
    /// nodes whose clocks disagree, can not yet tell which clock is wrong. It
    /// still serves, but takes no expiry decision: a tombstone taken on a
    /// wrong clock would spread and kill tickets live on every other node, and
    /// cannot be taken back; expiry held a few seconds costs only memory
    /// (reads check liveness themselves).
    fn clock_in_doubt(&self, now: tokio::time::Instant) -> bool {
        let (skewed, agreeing) = self.clock_votes(now);
        // Itself on the agreeing side: skewed >= agreeing + 1.
        skewed > agreeing
    }
}

/// The replication layer of one node.
pub struct Replicator {
    store: Arc<Store>,
    me: NodeId,
    config: ReplicationConfig,
    network: OnceLock<Arc<dyn PeerNetwork>>,
    /// The data directory's journal (`--data-dir`): every merged write is in
    /// it before this node acknowledges it.
    journal: OnceLock<SharedJournal>,
    view: RwLock<View>,
    votes: Mutex<VoteBook>,
    /// When this run of the node caught up with its cluster;
    /// `NOT_CAUGHT_UP` until then.
    caught_up_at_ms: AtomicU64,
    /// From when this node remembers every vote it cast (rule R3 of
    /// [`votes`]): the moment this run caught up, or with a data directory
    /// the moment it first caught up on that directory (every vote since is
    /// in its log). `NOT_CAUGHT_UP` until this run caught up.
    votes_from_ms: AtomicU64,
    /// Peers a full sync succeeded with, until caught up.
    synced_with: Mutex<HashSet<NodeId>>,
    /// This node announced its leave: its peers stop counting it in the
    /// expected size, so it must not vote any more.
    draining: AtomicBool,
    /// The ECS service's desiredCount, when discovery follows one.
    service_size: OnceLock<Arc<AtomicUsize>>,
    deciders: Box<[tokio::sync::Mutex<()>]>,
    /// Picks an id's decider stripe: local only (no other node needs the same
    /// answer), so a fast seeded hasher, not the cluster-wide rendezvous hash.
    stripes: foldhash::fast::RandomState,
    /// The last [`Replicator::clock_fenced`] verdict, to log each change once.
    fenced: AtomicBool,
    /// The ticket events this node reports to `Watch` subscribers.
    events: Arc<EventLog>,
    /// Expiries another node is to report (see [`reports`]).
    handoffs: reports::Handoffs,
    pub stats: ReplicationStats,
}

impl Replicator {
    pub fn new(store: Arc<Store>, config: ReplicationConfig) -> Arc<Replicator> {
        let me = store.hlc().node().clone();
        let budget_ms = config.max_clock_skew.as_millis() as Millis;
        let events = Arc::new(EventLog::with_limits(
            crate::watch::MAX_EVENTS,
            config.watch_buffer_bytes,
        ));
        let replicator = Arc::new(Replicator {
            store,
            me,
            view: RwLock::new(View {
                peers: Vec::new(),
                draining: HashSet::new(),
                seen: HashSet::new(),
                skew_logged: Vec::new(),
                clocks: HashMap::new(),
                not_ready: HashSet::new(),
            }),
            config,
            network: OnceLock::new(),
            journal: OnceLock::new(),
            votes: Mutex::new(VoteBook::new(budget_ms)),
            caught_up_at_ms: AtomicU64::new(NOT_CAUGHT_UP),
            votes_from_ms: AtomicU64::new(NOT_CAUGHT_UP),
            synced_with: Mutex::new(HashSet::new()),
            draining: AtomicBool::new(false),
            service_size: OnceLock::new(),
            deciders: (0..DECIDER_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            stripes: foldhash::fast::RandomState::default(),
            fenced: AtomicBool::new(false),
            events,
            handoffs: Default::default(),
            stats: ReplicationStats::default(),
        });
        let weak = Arc::downgrade(&replicator);
        let observer: std::sync::Weak<dyn crate::store::Observer> = weak;
        let wanted = replicator.events.wanted().clone();
        replicator.store.observe_with(observer, wanted);
        replicator
    }

    /// The ticket events this node reports (`Watch`).
    pub fn events(&self) -> &Arc<EventLog> {
        &self.events
    }

    /// Connect to the peer network (once; the network needs `self` as its handler).
    pub fn attach(&self, network: Arc<dyn PeerNetwork>) {
        let _ = self.network.set(network);
    }

    /// Take back what `journal` held (`replayed`: entries merged as any
    /// records are, past-retention ones dropped on the way; votes into the
    /// book) and keep every write this node merges, and every vote it casts,
    /// in it before acknowledging it (see [`votes`]).
    pub fn attach_journal(&self, journal: SharedJournal, replayed: Replayed) {
        self.store.apply_many(replayed.entries);
        {
            let mut book = self.votes.lock().unwrap_or_else(|e| e.into_inner());
            for restored in replayed.votes {
                book.restore(restored);
            }
        }
        let _ = self.journal.set(journal);
    }

    /// Every slot's votes, for a snapshot of the journal.
    pub fn vote_records(&self) -> Vec<tessera_proto::journal::SlotVotes> {
        self.votes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .records()
    }

    /// Put `records` in the journal, if there is one, as durably as its sync
    /// policy says; a write that is not there is not acknowledged.
    async fn journal(&self, records: &[EntryRecord]) -> Result<(), StoreError> {
        match self.journal.get() {
            Some(journal) => journal.append(records).await.map_err(|e| {
                error!(error = %e, "a write could not be put in the journal");
                StoreError::Unavailable(format!("not stored on disk: {e}"))
            }),
            None => Ok(()),
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn node_id(&self) -> &NodeId {
        &self.me
    }

    /// Update the live membership (peers other than this node, with their
    /// draining flag).
    pub fn set_members(&self, peers: impl IntoIterator<Item = (NodeId, bool)>) {
        let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
        view.peers.clear();
        view.draining.clear();
        for (node, draining) in peers {
            if node == self.me {
                continue;
            }
            if draining {
                view.seen.remove(&node);
                view.draining.insert(node.clone());
            } else {
                view.seen.insert(node.clone());
            }
            view.peers.push(node);
        }
        view.peers.sort();
        view.peers.dedup();
        let View { peers, clocks, .. } = &mut *view;
        clocks.retain(|peer, _| peers.binary_search(peer).is_ok());
    }

    /// Record which live peers report not ready (from membership).
    pub fn set_not_ready(&self, peers: impl IntoIterator<Item = NodeId>) {
        let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
        view.not_ready = peers.into_iter().collect();
    }

    /// The peers this node's anti-entropy rounds go to. A node that has caught
    /// up leaves out peers that are not ready: one that is catching up pulls
    /// every bucket from a peer of its own choosing (both ways: it sends its
    /// own entries with each bucket), and full rounds from the others too
    /// only made it merge everything two or three times (seen at 1 M tickets:
    /// a peer's round sent it 957,165 entries while its own round was
    /// fetching the same). A node not caught up yet syncs with anyone, so
    /// nodes that start together still find each other.
    pub fn anti_entropy_peers(&self, caught_up: bool) -> Vec<NodeId> {
        let view = self.view.read().unwrap_or_else(|e| e.into_inner());
        view.peers
            .iter()
            .filter(|peer| !caught_up || !view.not_ready.contains(*peer))
            .cloned()
            .collect()
    }

    /// Live peers, this node excluded.
    pub fn peers(&self) -> Vec<NodeId> {
        self.view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .peers
            .clone()
    }

    /// Each live peer's clock less this node's, in ms, as its frames showed
    /// it lately (peers not heard from within [`SKEW_MEMORY`] are left out).
    pub fn peer_clock_skews(&self) -> Vec<(NodeId, i64)> {
        let now = tokio::time::Instant::now();
        let view = self.view.read().unwrap_or_else(|e| e.into_inner());
        view.peers
            .iter()
            .filter_map(|peer| {
                let sighting = view.clocks.get(peer)?;
                (now.duration_since(sighting.at) < SKEW_MEMORY)
                    .then(|| (peer.clone(), sighting.skew_ms))
            })
            .collect()
    }

    /// The cluster size majorities are counted against: the configured size
    /// or every node seen since start that has not announced its leave,
    /// itself included, whichever is larger. A node that vanished without
    /// draining (crashed, partitioned) keeps counting: the two sides of a
    /// partition can never both hold a majority, however long it lasts.
    ///
    /// Under ECS discovery of a service, the service's desiredCount read
    /// every discovery round is the operator's word instead (a scale-in
    /// lowers it), never below the nodes live and not draining now.
    pub fn expected_size(&self) -> usize {
        let view = self.view.read().unwrap_or_else(|e| e.into_inner());
        if let Some(desired) = self.service_size.get() {
            let live = view.peers.len() - view.draining.len() + 1;
            return desired.load(Ordering::Acquire).clamp(1, 1024).max(live);
        }
        self.config.expected_size.max(view.seen.len() + 1)
    }

    /// Count majorities against the ECS service's desiredCount, as discovery
    /// reads it every round (see [`Replicator::expected_size`]).
    pub fn follow_service_size(&self, desired: Arc<AtomicUsize>) {
        let _ = self.service_size.set(desired);
    }

    fn majority(&self) -> usize {
        self.expected_size() / 2 + 1
    }

    /// The ticket's arbiter: highest rendezvous hash among live, non-draining,
    /// ready members (this node included) whose clock agrees with this
    /// node's: an arbiter checks expiry on its own clock, and a node not ready
    /// refuses to decide.
    pub fn arbiter(&self, id: &str) -> NodeId {
        let view = self.view.read().unwrap_or_else(|e| e.into_inner());
        let now = tokio::time::Instant::now();
        let mut eligible = view
            .peers
            .iter()
            .filter(|p| {
                !view.draining.contains(*p)
                    && !view.not_ready.contains(*p)
                    && !view.is_skewed(p, now)
            })
            .peekable();
        // Alone: nothing to compare, so no hash (BLAKE3 of the id) to compute.
        if eligible.peek().is_none() {
            return self.me.clone();
        }
        std::iter::once(&self.me)
            .chain(eligible)
            .max_by_key(|node| rendezvous(node, id))
            .cloned()
            .unwrap_or_else(|| self.me.clone())
    }

    fn network(&self) -> Option<&Arc<dyn PeerNetwork>> {
        self.network.get()
    }

    fn skew_budget_ms(&self) -> Millis {
        self.config.max_clock_skew.as_millis() as Millis
    }

    /// Declare this node caught up, its vote memory covering every vote it
    /// cast since `since_ms` (rule R3 of [`votes`]): for a node known never to
    /// have voted before (the test harness's first start).
    pub fn remember_votes_since(&self, since_ms: Millis) {
        self.caught_up_at_ms.store(since_ms, Ordering::Release);
        self.votes_from_ms
            .store(self.remembered_votes_from(since_ms), Ordering::Release);
    }

    /// From when this node's votes are all remembered, having caught up at
    /// `now`: with a data directory, from its first catch-up there (kept in
    /// the directory the first time), else from `now`.
    fn remembered_votes_from(&self, now: Millis) -> Millis {
        let Some(journal) = self.journal.get() else {
            return now;
        };
        if let Some(from) = journal.votes_from_ms() {
            return from;
        }
        if let Err(e) = journal.remember_votes_from(now) {
            // Only costs the next start its votes on older tickets (R3).
            warn!(error = %e, "could not keep the vote horizon in the data directory");
        }
        now
    }

    /// This node is leaving (rolling deploy, scale-in): from now on it votes
    /// no more, as its peers stop counting it once they see it draining.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether this node has caught up with its cluster: a full sync with a
    /// peer that is itself ready, or with every other node of the expected
    /// size (nodes that start together), or alone by design
    /// ([`Replicator::mark_caught_up`]). Two nodes that restart together
    /// cannot vouch for each other while a third holds the data (review #11).
    pub fn caught_up(&self) -> bool {
        self.caught_up_at_ms.load(Ordering::Acquire) != NOT_CAUGHT_UP
    }

    /// This node holds what its cluster holds, from now on (once; later calls
    /// keep the first time).
    pub fn mark_caught_up(&self) {
        let now = self.store.hlc().clock().now_ms();
        if self
            .caught_up_at_ms
            .compare_exchange(NOT_CAUGHT_UP, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // Until this is stored, R3 refuses every incarnation: safe.
            let from = self.remembered_votes_from(now);
            self.votes_from_ms.store(from, Ordering::Release);
            info!(
                votes_remembered_for_ms = now.saturating_sub(from),
                "caught up with the cluster"
            );
        }
    }

    /// A full sync with `peer` succeeded: caught up if `peer` is ready, or
    /// once every other node of the expected size has been synced with.
    pub(crate) fn note_synced(&self, peer: &NodeId) {
        if self.caught_up() {
            return;
        }
        let peer_ready = {
            let view = self.view.read().unwrap_or_else(|e| e.into_inner());
            view.peers.contains(peer) && !view.not_ready.contains(peer)
        };
        let synced = {
            let mut synced = self.synced_with.lock().unwrap_or_else(|e| e.into_inner());
            synced.insert(peer.clone());
            synced.len()
        };
        if peer_ready || synced + 1 >= self.expected_size() {
            self.mark_caught_up();
        }
    }

    /// Incarnations created before this are not voted on here (rule R3).
    fn votes_cover_from_ms(&self) -> Millis {
        self.votes_from_ms
            .load(Ordering::Acquire)
            .saturating_add(2 * self.skew_budget_ms())
    }

    /// Whether this node votes on tickets created from now on, and takes
    /// decisions for its peers: twice the skew budget after this run caught
    /// up (2 s by default; its proposal stamps are then past every stamp of
    /// a previous run), or at once when alone by design. A node reports
    /// ready only then, so a fleet that starts together takes no ticket its
    /// nodes could not vote on.
    pub fn votes_trusted(&self) -> bool {
        let fresh_from = self
            .caught_up_at_ms
            .load(Ordering::Acquire)
            .saturating_add(2 * self.skew_budget_ms());
        self.expected_size() < 2
            || (self.caught_up() && self.store.hlc().clock().now_ms() >= fresh_from)
    }

    /// Whether this node's clock is suspect now: see [`View::clock_suspect`].
    pub fn clock_suspect(&self) -> bool {
        self.view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clock_suspect(tokio::time::Instant::now())
    }

    /// Whether this node is fenced for its clock: its clock is suspect, so every
    /// expiry decision it would take (sweeping, reads, touches, arbitration) is
    /// off by its skew, and tombstones or `last_used` stamps it wrote would
    /// spread that error to the honest nodes. While fenced the node tombstones
    /// nothing for expiry, reports not ready and refuses calls; it lifts the
    /// fence by itself once frames show its clock back within the budget.
    ///
    /// Evaluated on every call (the verdict also changes as [`SKEW_MEMORY`]
    /// passes); each change is logged once and fences are counted.
    pub fn clock_fenced(&self) -> bool {
        let fenced = self.clock_suspect();
        if self.fenced.swap(fenced, Ordering::AcqRel) != fenced {
            let budget_ms = self.config.max_clock_skew.as_millis() as u64;
            if fenced {
                self.stats.clock_fences.fetch_add(1, Ordering::Relaxed);
                error!(
                    budget_ms,
                    "this node's clock disagrees with most of its peers by more than the skew budget: fenced (no expiry tombstones, not ready, refusing calls) until it agrees again; fix NTP on this node"
                );
            } else {
                info!(budget_ms, "clock back within the skew budget: fence lifted");
            }
        }
        fenced
    }

    /// Whether expiry must be held now: this node's clock is in doubt (see
    /// [`View::clock_in_doubt`]), which a fence implies. The sweeper asks
    /// before every slice; it is the only place expiry turns tickets into
    /// tombstones.
    pub fn expiry_held(&self) -> bool {
        self.view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clock_in_doubt(tokio::time::Instant::now())
    }

    /// One slice of expiry work, as the sweeper runs it: at most `budget` due
    /// entries, expiry held while this node's clock is in doubt, and idle
    /// deaths confirmed with the peers before they become tombstones.
    pub async fn sweep(&self, budget: usize) -> SweepReport {
        let expiry = if self.expiry_held() {
            Expiry::Hold
        } else {
            Expiry::Tombstone
        };
        let mut report = self.store.sweep(budget, expiry);
        let idle = std::mem::take(&mut report.idle_dead);
        if !idle.is_empty() {
            if self.confirm_idle_deaths(&idle).await {
                report.expired += self.store.expire_idle(&idle);
            } else {
                report.unconfirmed = idle.len();
            }
        }
        let stats = &self.stats;
        stats
            .swept_dead
            .fetch_add(report.expired as u64, Ordering::Relaxed);
        stats
            .swept_forgotten
            .fetch_add(report.purged as u64, Ordering::Relaxed);
        report
    }

    /// Whether this node may take the idle deaths of `ids` for facts (review
    /// #9). Its own `last_used` may miss a touch the others acknowledged (a
    /// lost push, a partition), and a tombstone taken on it would win every
    /// merge and undo that touch. A touch is acknowledged once it is on a
    /// write quorum, so hearing the copies of [`Self::answers_to_rule_out`]
    /// peers (merged into this node's) reaches at least one node that took
    /// it. Until then the ticket stays a dead record here: never served,
    /// tombstoned later or forgotten at its retention.
    async fn confirm_idle_deaths(&self, ids: &[Arc<str>]) -> bool {
        let needed = self.answers_to_rule_out();
        if needed > 0 {
            for chunk in ids.chunks(PUSH_BATCH) {
                let chunk: Vec<String> = chunk.iter().map(|id| id.to_string()).collect();
                if self.fetch_from_peers(&chunk).await < needed {
                    self.stats
                        .idle_deaths_unconfirmed
                        .fetch_add(ids.len() as u64, Ordering::Relaxed);
                    return false;
                }
            }
        }
        // The round trip may have put the clock in doubt meanwhile.
        !self.expiry_held()
    }

    // ---- client operations ----

    /// Store a ticket. A `create_only` put on an id this node does not hold
    /// asks the peers first (review #14): a node that restarted, or that the
    /// push has not reached yet, must not take a live ticket held elsewhere
    /// for a free id; it fails UNAVAILABLE when too few peers answered to
    /// rule one out. Plain puts (upserts) skip that round trip.
    pub async fn put(&self, put: PutTicket) -> Result<TicketView, StoreError> {
        if let Some(parent) = &put.parent {
            self.read_repair(parent).await;
        }
        if put.create_only {
            ticket::validate_id("id", &put.id)?;
            let answered = self.read_repair(&put.id).await;
            if answered < self.answers_to_rule_out() && !self.store.holds(&put.id) {
                return Err(self.holders_unreachable(answered));
            }
        } else if self.store.holds_live(&put.id) {
            // A re-put replaces a live ticket: a delete taken elsewhere must
            // win (it merges in here and the put is refused), and a side
            // that cannot hear enough peers to see one writes nothing, since
            // a write refused but kept would outlive the tombstone (review #6).
            let answered = self.fetch_from_peers(std::slice::from_ref(&put.id)).await;
            if answered < self.answers_to_rule_out() {
                return Err(StoreError::Unavailable(format!(
                    "replacing a live ticket needs {} peers to rule out a delete elsewhere; {answered} answered; retry",
                    self.answers_to_rule_out()
                )));
            }
        }
        let written = self.store.put(put)?;
        self.replicate(written).await
    }

    pub async fn get(&self, id: &str) -> Result<TicketView, StoreError> {
        ticket::validate_id("id", id)?;
        self.repair_on_miss(id, || self.store.get(id)).await
    }

    /// Record a use. On a use-limited ticket a touch spends a use like a
    /// consume, so it is decided like one (review #10); on unlimited tickets
    /// it stays a local write.
    pub async fn touch(&self, id: &str) -> Result<TicketView, StoreError> {
        ticket::validate_id("id", id)?;
        let limit = self.repair_on_miss(id, || self.store.use_limit(id)).await?;
        if limit > 0 {
            return self.decide(id, decide::Op::Consume(ConsumeOp {})).await;
        }
        let written = self.store.touch(id)?;
        self.replicate(written).await
    }

    pub async fn delete(&self, id: &str) -> Result<u64, StoreError> {
        ticket::validate_id("id", id)?;
        let answered = self.read_repair(id).await;
        if answered < self.answers_to_rule_out() && !self.store.holds(id) {
            return Err(self.holders_unreachable(answered));
        }
        let written = self.store.delete(id)?;
        self.replicate(written).await
    }

    /// Delete every ticket, on every node (see [`Replicator::delete_for`]).
    pub async fn delete_all(&self) -> Result<u64, StoreError> {
        self.delete_everywhere(None).await
    }

    /// Logout everywhere: every ticket of `principal`, on every node, not
    /// only those this node holds (review #4): a session acknowledged by two
    /// other nodes may not have reached this one yet.
    pub async fn delete_for(&self, principal: &str) -> Result<u64, StoreError> {
        ticket::validate_principal(principal)?;
        self.delete_everywhere(Some(principal.to_owned())).await
    }

    /// Ask every live peer to delete what matches and replicate its
    /// tombstones, then delete here. Returns the most tickets any node
    /// deleted (each holds every ticket it has heard of). Fails, after
    /// deleting what it could, unless enough peers answered that no ticket
    /// acknowledged by the write quorum can have been missed.
    async fn delete_everywhere(&self, principal: Option<String>) -> Result<u64, StoreError> {
        let mut answered = 0;
        let mut most = 0;
        if let Some(network) = self.network().cloned() {
            let mut calls: FuturesUnordered<_> = self
                .peers()
                .into_iter()
                .map(|peer| {
                    let network = network.clone();
                    let body = Body::DeleteMatching(DeleteMatching {
                        principal: principal.clone(),
                    });
                    async move { network.call(&peer, body).await }
                })
                .collect();
            while let Some(reply) = calls.next().await {
                match reply {
                    Ok(Body::DeletedMatching(deleted)) => {
                        answered += 1;
                        most = most.max(deleted.deleted);
                    }
                    Ok(_) => {}
                    Err(e) => debug!(error = %e, "a peer did not take part in a delete"),
                }
            }
        }
        let here = self.delete_matching_here(principal).await?;
        if answered < self.answers_to_rule_out() {
            return Err(self.holders_unreachable(answered));
        }
        Ok(most.max(here))
    }

    /// Delete what matches among the tickets this node holds, and replicate.
    async fn delete_matching_here(&self, principal: Option<String>) -> Result<u64, StoreError> {
        let written = match principal {
            Some(principal) => self.store.delete_for(&principal)?,
            None => {
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || store.delete_all())
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("delete_all failed: {e}")))?
            }
        };
        self.replicate(written).await
    }

    /// Peers that must answer "not held" before this node may say a ticket
    /// it does not hold does not exist: an acknowledged write is on
    /// `write quorum` nodes, none of them this one, so hearing from all but
    /// `write quorum - 1` of the others reaches at least one of them.
    fn answers_to_rule_out(&self) -> usize {
        let expected = self.expected_size();
        expected.saturating_sub(self.write_quorum_nodes(expected))
    }

    fn holders_unreachable(&self, answered: usize) -> StoreError {
        StoreError::Unavailable(format!(
            "only {answered} of the {} peers needed to rule out a ticket held elsewhere answered; retry",
            self.answers_to_rule_out()
        ))
    }

    /// Record one use, decided by the ticket's arbiter.
    pub async fn consume(&self, id: &str) -> Result<TicketView, StoreError> {
        ticket::validate_id("id", id)?;
        self.decide(id, decide::Op::Consume(ConsumeOp {})).await
    }

    /// Update; with `if_version` it is a compare-and-set decided by the arbiter.
    pub async fn update(&self, id: &str, update: UpdateTicket) -> Result<TicketView, StoreError> {
        ticket::validate_id("id", id)?;
        match update.if_version.clone() {
            Some(if_version) => {
                let op = decide::Op::Update(UpdateOp {
                    payload: update.payload,
                    idle_ms: update.idle_ms,
                    if_version,
                });
                self.decide(id, op).await
            }
            None => {
                let update = || self.store.update(id, update.clone());
                let written = self.repair_on_miss(id, update).await?;
                self.replicate(written).await
            }
        }
    }

    // ---- replication of writes ----

    /// Nodes that must hold a write before it is acknowledged, in a cluster
    /// of `expected` nodes. Counted against the cluster this node belongs to,
    /// never its current view: an empty view is a node that has lost its
    /// peers (review #7), not a cluster of one.
    fn write_quorum_nodes(&self, expected: usize) -> usize {
        match self.config.write_quorum {
            WriteQuorum::Default if expected < 2 => 1,
            WriteQuorum::Default => 2,
            WriteQuorum::Nodes(n) => n,
            WriteQuorum::All => expected,
        }
    }

    /// Push a write's changes to every live peer; return once `write_quorum`
    /// nodes (this one included) hold them. Slow peers keep receiving in the
    /// background.
    async fn replicate<T>(&self, written: Written<T>) -> Result<T, StoreError> {
        let Written { value, changes } = written;
        if changes.is_empty() {
            return Ok(value);
        }
        let peers = self.peers();
        let quorum = match self.config.write_quorum {
            WriteQuorum::All => peers.len() + 1,
            _ => self.write_quorum_nodes(self.expected_size()),
        };
        let needed = quorum.saturating_sub(1);
        let records_of = || -> Vec<EntryRecord> {
            changes
                .iter()
                .map(|(id, entry)| to_record(id, entry))
                .collect()
        };
        let Some(network) = self.network().filter(|_| !peers.is_empty()).cloned() else {
            // Nobody to push to: only this node's copy counts (records are
            // built only for a journal: a single node's hot path).
            if self.journal.get().is_some() {
                self.journal(&records_of()).await?;
            }
            return if needed == 0 {
                Ok(value)
            } else {
                Err(quorum_error(1, quorum))
            };
        };
        // Boxed: see `fetch_from_peers`.
        Box::pin(self.push_to_peers(network, peers, records_of(), needed, quorum)).await?;
        Ok(value)
    }

    /// Push `records` to `peers` (and this node's journal); return once
    /// `needed` peers hold them.
    async fn push_to_peers(
        &self,
        network: Arc<dyn PeerNetwork>,
        peers: Vec<NodeId>,
        records: Vec<EntryRecord>,
        needed: usize,
        quorum: usize,
    ) -> Result<(), StoreError> {
        let (acks_tx, mut acks_rx) = tokio::sync::mpsc::channel(peers.len());
        for peer in peers {
            let network = network.clone();
            let records = records.clone();
            let acks = acks_tx.clone();
            let push_seconds = self.stats.push_seconds.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let ok = push_batches(network.as_ref(), &peer, records).await;
                if ok.is_ok() {
                    push_seconds.observe(started.elapsed());
                }
                if let Err(e) = &ok {
                    debug!(peer = %peer, error = %e, "push failed; anti-entropy will repair");
                }
                let _ = acks.send(ok.is_ok()).await;
            });
        }
        drop(acks_tx);
        // On this node's disk while the pushes travel.
        self.journal(&records).await?;
        let mut acked = 0;
        let deadline = tokio::time::sleep(self.config.call_timeout);
        tokio::pin!(deadline);
        while acked < needed {
            tokio::select! {
                ack = acks_rx.recv() => match ack {
                    Some(true) => acked += 1,
                    Some(false) => {
                        self.stats.pushes_failed.fetch_add(1, Ordering::Relaxed);
                    }
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
        if acked >= needed {
            Ok(())
        } else {
            Err(quorum_error(acked + 1, quorum))
        }
    }

    /// Run a local operation on `id`; when it finds nothing because this node
    /// holds no record of `id` at all (not even a tombstone), ask the peers
    /// ([`Replicator::read_repair`]) and run it once more. Trying locally
    /// first spares every call that finds its ticket a second lookup.
    async fn repair_on_miss<T>(
        &self,
        id: &str,
        op: impl Fn() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match op() {
            Err(StoreError::NotFound) if !self.store.holds(id) => {
                let answered = self.read_repair(id).await;
                match op() {
                    // Nobody that could hold it answered: "not found" would
                    // log a user out, or hide a live ticket (review #4).
                    Err(StoreError::NotFound)
                        if answered < self.answers_to_rule_out() && !self.store.holds(id) =>
                    {
                        Err(self.holders_unreachable(answered))
                    }
                    outcome => outcome,
                }
            }
            outcome => outcome,
        }
    }

    /// On a local miss, ask every live peer for the id and merge what they
    /// hold. Returns how many peers answered (`usize::MAX` when this node
    /// holds the id and asked nobody).
    async fn read_repair(&self, id: &str) -> usize {
        if self.store.holds(id) {
            return usize::MAX;
        }
        self.fetch_from_peers(&[id.to_owned()]).await
    }

    /// Ask every live peer for `ids` (at most [`PUSH_BATCH`]) and merge what
    /// they hold. Returns how many peers answered within the call timeout.
    ///
    /// Boxed, as every path to the peers: inline, its state would be part of
    /// every call's future, which the API's batches move around (a batch
    /// call's future was 6.2 KB with it, 2.8 KB with every peer path boxed).
    fn fetch_from_peers<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, usize> {
        Box::pin(self.fetch_from_peers_now(ids))
    }

    async fn fetch_from_peers_now(&self, ids: &[String]) -> usize {
        let Some(network) = self.network().cloned() else {
            return 0;
        };
        let peers = self.peers();
        if peers.is_empty() {
            return 0;
        }
        let mut answered = 0;
        let mut calls: FuturesUnordered<_> = peers
            .iter()
            .map(|peer| {
                let network = network.clone();
                let body = Body::Fetch(Fetch {
                    ids: ids[..ids.len().min(PUSH_BATCH)].to_vec(),
                });
                async move { network.call(peer, body).await }
            })
            .collect();
        let deadline = tokio::time::sleep(self.config.call_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                reply = calls.next() => match reply {
                    Some(Ok(Body::Entries(entries))) => {
                        answered += 1;
                        let found = !entries.entries.is_empty();
                        let _ = self.apply_records(entries.entries).await;
                        if found {
                            self.stats.read_repairs.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
        answered
    }

    /// Merge records received from a peer, in one bulk merge; returns how many
    /// were valid (a bad record is dropped, the others are merged).
    ///
    /// With a journal, the valid records are put in it after the merge; `Err`
    /// when that failed (merged in memory only: not to be acknowledged).
    async fn apply_records(
        &self,
        records: Vec<tessera_proto::peer::EntryRecord>,
    ) -> Result<usize, StoreError> {
        let journaled = self.journal.get().is_some();
        let mut valid = Vec::with_capacity(records.len());
        let mut kept = Vec::new();
        let mut nodes = NodeIds::default();
        for record in records {
            let copy = journaled.then(|| record.clone());
            match from_record_with(record, &mut nodes) {
                Ok((id, entry)) => {
                    valid.push((Arc::<str>::from(id), entry));
                    kept.extend(copy);
                }
                Err(e) => {
                    self.stats.bad_records.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, "dropped a bad record from a peer");
                }
            }
        }
        let applied = valid.len();
        self.store.apply_many(valid);
        self.journal(&kept).await?;
        Ok(applied)
    }

    // ---- conditional operations ----

    async fn decide(&self, id: &str, op: decide::Op) -> Result<TicketView, StoreError> {
        let arbiter = self.arbiter(id);
        if arbiter != self.me
            && let Some(network) = self.network().cloned()
        {
            self.stats
                .decisions_forwarded
                .fetch_add(1, Ordering::Relaxed);
            let request = Body::Decide(Decide {
                id: id.to_owned(),
                op: Some(op.clone()),
            });
            // Boxed: see `fetch_from_peers`.
            match Box::pin(network.call(&arbiter, request)).await {
                // Refused before any work (just restarted, fenced): as if
                // unreachable, decide here; the votes keep it safe.
                Ok(Body::Decided(decided)) if refused_unacted(&decided) => {
                    debug!(arbiter = %arbiter, reason = %decided.message, "arbiter refused; deciding locally");
                }
                Ok(Body::Decided(decided)) => return self.accept_decision(decided),
                // The request never left: decide here; the votes keep it safe.
                Err(PeerError::Unreachable(..)) => {
                    debug!(arbiter = %arbiter, "arbiter unreachable; deciding locally");
                }
                // The arbiter may have decided (or be deciding): deciding here
                // would find its use spent and call a ticket it just consumed
                // missing. The outcome is unknown; say so.
                Err(PeerError::Timeout(_)) => {
                    return Err(StoreError::Unavailable(
                        "the ticket's arbiter did not answer in time; retry".into(),
                    ));
                }
                Err(PeerError::Lost(..)) => {
                    return Err(StoreError::Unavailable(
                        "the connection to the ticket's arbiter broke before it answered; \
                         the outcome is unknown"
                            .into(),
                    ));
                }
                Err(PeerError::Remote { message, .. }) => {
                    return Err(StoreError::Unavailable(format!(
                        "the ticket's arbiter failed: {message}"
                    )));
                }
                Err(e @ PeerError::Protocol(..)) => {
                    return Err(StoreError::Unavailable(format!(
                        "the ticket's arbiter answered badly: {e}"
                    )));
                }
                Ok(_) => {
                    return Err(StoreError::Unavailable(
                        "the ticket's arbiter answered something other than a decision".into(),
                    ));
                }
            }
        }
        let (view, _) = self.decide_here(id, op, false).await?;
        Ok(view)
    }

    /// Take the arbiter's decision: merge its entry here and return the ticket.
    fn accept_decision(&self, decided: Decided) -> Result<TicketView, StoreError> {
        let (Some(record), Some(ticket)) = (decided.entry, decided.ticket) else {
            return Err(status_error(decided.code, decided.message));
        };
        let (id, entry) = from_record(record)
            .map_err(|e| StoreError::Unavailable(format!("arbiter answered badly: {e}")))?;
        self.store.apply(&id, entry);
        Ok(crate::api::ticket_view(ticket))
    }

    /// Decide a conditional operation on this node (as the arbiter, or because
    /// the arbiter is unreachable). Returns the ticket and, when `hand_back`
    /// (deciding for a peer), the entry as a record for the peer to merge.
    async fn decide_here(
        &self,
        id: &str,
        op: decide::Op,
        hand_back: bool,
    ) -> Result<(TicketView, Option<EntryRecord>), StoreError> {
        // A proposer in doubt of its clock would judge expiry, and stamp its
        // proposal, on a wrong clock.
        if self.expiry_held() {
            return Err(StoreError::Unavailable(CLOCK_IN_DOUBT.to_owned()));
        }
        let stripe = (self.stripes.hash_one(id) % DECIDER_STRIPES as u64) as usize;
        let _serialized = self.deciders[stripe].lock().await;
        for attempt in 1..=DECIDE_ATTEMPTS {
            let current = self
                .repair_on_miss(id, || self.store.decide_state(id))
                .await?;
            let slot = match &op {
                decide::Op::Consume(_) if current.max_uses == 0 => None,
                decide::Op::Consume(_) => Some(format!("use:{}", current.uses + 1)),
                decide::Op::Update(update) => {
                    let version = current.version.to_version();
                    if update.if_version != version {
                        return Err(StoreError::VersionMismatch { current: version });
                    }
                    Some(format!("version:{version}"))
                }
            };
            let Some(slot) = slot else { break };
            match self.win_slot(id, &current, &slot).await {
                Ok(()) => break,
                Err(SlotLoss::Stale(records)) if attempt < DECIDE_ATTEMPTS => {
                    debug!(ticket = %tag(id), slot, "a voter's copy is newer; deciding again");
                    let _ = self.apply_records(records).await;
                }
                Err(SlotLoss::Finished) if attempt < DECIDE_ATTEMPTS => {
                    // Its proposer's client may have been told it won.
                    debug!(ticket = %tag(id), slot, "finished another proposal's use");
                    let written = self.store.consume(id)?;
                    self.replicate(written).await?;
                }
                Err(SlotLoss::Stale(_) | SlotLoss::Finished) => {
                    return Err(StoreError::Unavailable(
                        "the ticket kept changing while this node decided; retry".into(),
                    ));
                }
                Err(SlotLoss::Failed(e)) => return Err(e),
            }
        }
        let written = match op {
            decide::Op::Consume(_) => self.store.consume(id)?,
            decide::Op::Update(update) => self.store.update(
                id,
                UpdateTicket {
                    payload: update.payload,
                    idle_ms: update.idle_ms,
                    if_version: Some(update.if_version),
                },
            )?,
        };
        let record = if hand_back {
            let changed = written
                .changes
                .iter()
                .find(|(changed, _)| &**changed == id)
                .map(|(_, entry)| to_record(id, entry));
            let record = changed.or_else(|| self.store.entry(id).map(|e| to_record(id, &e)));
            Some(record.ok_or(StoreError::NotFound)?)
        } else {
            None
        };
        let view = self.replicate(written).await?;
        Ok((view, record))
    }

    /// Gather votes for this node's proposal on `slot` of the incarnation in
    /// `current` from a majority of the expected cluster size. This node's
    /// own vote counts under the same rules as a peer's ([`votes`]).
    async fn win_slot(
        &self,
        id: &str,
        current: &crate::store::DecideState,
        slot: &str,
    ) -> Result<(), SlotLoss> {
        let proposal = self.store.hlc().stamp();
        let majority = self.majority();
        let mut granted = 0;
        let mut reason = None;
        let fast = Phase::Fast(proposal.clone());
        let mut calls = self.ask_voters(id, slot, current, &fast);
        let deadline = tokio::time::sleep(self.config.call_timeout);
        tokio::pin!(deadline);
        let mut refused = false;
        while granted < majority {
            tokio::select! {
                reply = calls.next() => match reply {
                    Some(Ok(Body::Vote(vote))) if vote.granted => granted += 1,
                    // The voter's copy shows the slot taken: whatever the
                    // others say, this proposal cannot win (a majority took
                    // the slot, or the ticket is gone).
                    Some(Ok(Body::Vote(Vote { entry: Some(entry), .. }))) => {
                        return Err(SlotLoss::Stale(vec![entry]));
                    }
                    Some(Ok(Body::Vote(vote))) if vote.voted_for.is_some() => refused = true,
                    Some(Ok(Body::Vote(vote))) => reason = Some(vote.refusal),
                    Some(_) => {}
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
        if granted >= majority {
            Ok(())
        } else if refused {
            // Votes split, or a proposer holds the slot that never finished.
            // Boxed: the rare ballot path would otherwise size every consume's future.
            Box::pin(self.recover_slot(id, current, slot, &proposal)).await
        } else {
            Err(SlotLoss::Failed(
                self.no_majority(granted, majority, reason),
            ))
        }
    }

    /// Win `slot` with ballots after its fast path failed because another
    /// proposal holds votes on it (see [`votes`]: rounds 1, 2, ..., the value
    /// chosen from a majority's reports). `Ok` when this node's `proposal`
    /// won; [`SlotLoss::Finished`] when another's did and must be counted.
    async fn recover_slot(
        &self,
        id: &str,
        current: &crate::store::DecideState,
        slot: &str,
        proposal: &crate::clock::Stamp,
    ) -> Result<(), SlotLoss> {
        let held = || {
            SlotLoss::Failed(StoreError::Unavailable(format!(
                "another consume or update of this ticket holds {slot}"
            )))
        };
        // A `version:` slot cannot be finished without the lost update.
        if !slot.starts_with("use:") {
            return Err(held());
        }
        let majority = self.majority();
        let mut round = 1;
        for attempt in 0..RECOVERY_ROUNDS {
            if attempt > 0 {
                // Two proposers outbidding each other: one waits longer.
                let jitter = self.stripes.hash_one((proposal, attempt)) % 20;
                tokio::time::sleep(Duration::from_millis(5 + jitter)).await;
            }
            let ballot = BallotId {
                round,
                proposal: proposal.clone(),
            };
            let promises = self
                .run_phase(id, current, slot, &Phase::Prepare(ballot.clone()))
                .await;
            if let Some(entry) = promises.taken {
                return Err(SlotLoss::Stale(vec![entry]));
            }
            if promises.older_voter {
                return Err(held());
            }
            if promises.granted < majority {
                round = self.outbid(promises, round, majority)?;
                continue;
            }
            let Some(value) = choose_value(
                &promises.accepted,
                promises.granted,
                self.expected_size(),
                majority,
                proposal,
            ) else {
                return Err(SlotLoss::Failed(StoreError::Unavailable(format!(
                    "two proposals may each have won {slot} and too few voters answered to tell; retry"
                ))));
            };
            let accepts = self
                .run_phase(id, current, slot, &Phase::Accept(ballot, value.clone()))
                .await;
            if let Some(entry) = accepts.taken {
                return Err(SlotLoss::Stale(vec![entry]));
            }
            if accepts.granted >= majority {
                debug!(ticket = %tag(id), slot, round, "slot won with a ballot");
                return if value == *proposal {
                    Ok(())
                } else {
                    Err(SlotLoss::Finished)
                };
            }
            round = self.outbid(accepts, round, majority)?;
        }
        Err(held())
    }

    /// A phase of ballot `round` short of a majority: the round to try next
    /// when a voter has promised one as high or higher, else the failure.
    fn outbid(&self, answers: PhaseAnswers, round: u32, majority: usize) -> Result<u32, SlotLoss> {
        if answers.highest_promise >= round {
            return Ok(answers.highest_promise + 1);
        }
        Err(SlotLoss::Failed(self.no_majority(
            answers.granted,
            majority,
            answers.refusal,
        )))
    }

    /// Run one phase of a ballot on this node and every live peer, and wait
    /// for every answer (up to the call timeout): the more voters report,
    /// the fewer round-0 votes are unknown.
    async fn run_phase(
        &self,
        id: &str,
        current: &crate::store::DecideState,
        slot: &str,
        phase: &Phase,
    ) -> PhaseAnswers {
        let mut answers = PhaseAnswers::default();
        let mut calls = self.ask_voters(id, slot, current, phase);
        let deadline = tokio::time::sleep(self.config.call_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                reply = calls.next() => match reply {
                    Some(Ok(Body::Vote(vote))) => {
                        if !vote.ballots {
                            answers.older_voter = true;
                        } else if let Some(entry) = vote.entry {
                            answers.taken = Some(entry);
                            return answers;
                        } else if vote.granted {
                            answers.granted += 1;
                            if let (Some(ballot), Some(value)) = (vote.accepted_ballot, vote.accepted_value)
                                && let (Ok(ballot), Ok(value)) = (
                                    stamp_from_wire(Some(ballot), "accepted_ballot"),
                                    stamp_from_wire(Some(value), "accepted_value"),
                                )
                            {
                                let ballot = BallotId { round: vote.accepted_round, proposal: ballot };
                                answers.accepted.push((ballot, value));
                            }
                        } else {
                            answers.highest_promise = answers.highest_promise.max(vote.promised_round);
                            if vote.voted_for.is_none() {
                                answers.refusal = Some(vote.refusal);
                            }
                        }
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
        answers
    }

    /// Ask this node and every live peer to vote on `phase` of a proposal on
    /// `slot` of the incarnation in `current`. This node's answer comes back
    /// as a peer's would and counts the same; it is asked directly, under the
    /// same rules, without building and parsing the `Propose` the peers get.
    fn ask_voters<'a>(
        &'a self,
        id: &'a str,
        slot: &'a str,
        current: &'a crate::store::DecideState,
        phase: &'a Phase,
    ) -> FuturesUnordered<BoxFuture<'a, PeerReply>> {
        let calls: FuturesUnordered<BoxFuture<'a, PeerReply>> = FuturesUnordered::new();
        if let Some(network) = self.network() {
            let peers = self.peers();
            if !peers.is_empty() {
                let propose = phase.to_propose(id, slot, current);
                for peer in peers {
                    let network = network.clone();
                    let body = Body::Propose(propose.clone());
                    calls.push(Box::pin(async move { network.call(&peer, body).await }));
                }
            }
        }
        calls.push(Box::pin(async move {
            let incarnation = Some(current.created.clone());
            let vote = self
                .vote(id, incarnation, slot, phase, current.retain_until_ms)
                .await;
            Ok(Body::Vote(vote))
        }));
        calls
    }

    /// This node's vote on a `Propose` from a peer.
    async fn vote_on(&self, propose: &Propose) -> Body {
        let Ok(proposal) = stamp_from_wire(propose.proposal.clone(), "proposal") else {
            return error_reply(Code::InvalidArgument, "proposal without a stamp");
        };
        let incarnation = match propose.incarnation.clone() {
            Some(stamp) => match stamp_from_wire(Some(stamp), "incarnation") {
                Ok(stamp) => Some(stamp),
                Err(_) => return error_reply(Code::InvalidArgument, "bad incarnation"),
            },
            None => None,
        };
        let phase = match Phase::from_wire(propose, proposal) {
            Ok(phase) => phase,
            Err(e) => return error_reply(Code::InvalidArgument, &e),
        };
        let vote = self
            .vote(
                &propose.id,
                incarnation,
                &propose.slot,
                &phase,
                propose.retain_until_ms,
            )
            .await;
        Body::Vote(vote)
    }

    /// This node's vote on `phase` of a proposal on `slot` of `id`'s
    /// incarnation created at `incarnation`, asked by a peer or by itself.
    async fn vote(
        &self,
        id: &str,
        incarnation: Option<crate::clock::Stamp>,
        slot: &str,
        phase: &Phase,
        retain_until_ms: Millis,
    ) -> Vote {
        let refused = |refusal: String| Vote {
            granted: false,
            refusal,
            ballots: true,
            ..Vote::default()
        };
        let answer = self
            .accept(id, incarnation, slot, phase, retain_until_ms)
            .await;
        match answer {
            Ok(accepted) => {
                let (accepted_round, accepted_ballot, accepted_value) = match accepted {
                    Some((ballot, value)) => (
                        ballot.round,
                        Some(stamp_to_wire(&ballot.proposal)),
                        Some(stamp_to_wire(&value)),
                    ),
                    None => (0, None, None),
                };
                Vote {
                    granted: true,
                    accepted_round,
                    accepted_ballot,
                    accepted_value,
                    ..refused(String::new())
                }
            }
            Err(Refusal::Voted(votes)) => Vote {
                voted_for: Some(stamp_to_wire(votes.holder())),
                promised_round: votes.promised.round,
                ..refused("voted for another proposal".to_owned())
            },
            Err(Refusal::Taken(entry)) => Vote {
                entry: Some(to_record(id, &entry)),
                ..refused("the slot is taken in the voter's copy".to_owned())
            },
            Err(Refusal::Cannot(why)) => refused(why),
        }
    }

    /// The acceptor: whether this node grants `phase` of a proposal on `slot`
    /// of the incarnation created at `incarnation` (rules R1 to R7 of
    /// [`votes`]). A promise (phase 1) returns what was accepted before.
    /// In a cluster with a data directory, every answer of the book waits
    /// until the votes it reports are on disk: a vote is a promise that must
    /// outlive a crash.
    async fn accept(
        &self,
        id: &str,
        incarnation: Option<crate::clock::Stamp>,
        slot: &str,
        phase: &Phase,
        retain_until_ms: Millis,
    ) -> Result<Option<(BallotId, crate::clock::Stamp)>, Refusal> {
        let proposal = phase.proposal();
        let now = self.store.hlc().clock().now_ms();
        let clustered = self.expected_size() >= 2;
        // R1
        if self.draining.load(Ordering::Acquire) {
            return Err(Refusal::Cannot("the voter is draining".to_owned()));
        }
        if self.expiry_held() {
            return Err(Refusal::Cannot(CLOCK_IN_DOUBT.to_owned()));
        }
        if clustered && !self.caught_up() {
            return Err(Refusal::Cannot(
                "the voter has not caught up with its cluster yet".to_owned(),
            ));
        }
        // R2
        if proposal.hlc.wall_ms > now.saturating_add(self.skew_budget_ms()) {
            return Err(Refusal::Cannot(
                "the proposal is stamped ahead of the voter's clock by more than the skew budget"
                    .to_owned(),
            ));
        }
        // A proposer that names no incarnation (an older peer): the one held here.
        let Some(incarnation) = incarnation.or_else(|| self.store.incarnation_of(id)) else {
            return Err(Refusal::Cannot(
                "the voter holds no live copy of the ticket".to_owned(),
            ));
        };
        // R3
        if clustered && incarnation.hlc.wall_ms < self.votes_cover_from_ms() {
            return Err(Refusal::Cannot(
                "the voter started after the ticket was created and keeps no votes from before"
                    .to_owned(),
            ));
        }
        // R4
        if let Some(entry) = self
            .store
            .shows_taken(id, &incarnation, |inc| slot_taken(inc, slot))
        {
            return Err(Refusal::Taken(entry));
        }
        // R5 to R7
        let key: SlotKey = Arc::new((id.to_owned(), Some(incarnation), slot.to_owned()));
        let (answer, durable) = {
            let mut book = self.votes.lock().unwrap_or_else(|e| e.into_inner());
            let answer = match phase {
                Phase::Fast(proposal) => book.vote(&key, proposal, retain_until_ms, now),
                Phase::Prepare(ballot) => book.prepare(&key, ballot, retain_until_ms, now),
                Phase::Accept(ballot, value) => {
                    book.accept(&key, ballot, value, retain_until_ms, now)
                }
            };
            // Handed to the journal under the book's lock: an answer that
            // reports a vote (even a refusal, or a retry's) waits behind
            // the sync of the record that cast it.
            let durable = match self.journal.get() {
                Some(journal) if clustered => {
                    let changed = match answer {
                        Ballot::Refused(_) => None,
                        _ => book.record(&key),
                    };
                    journal.commit_votes(changed.as_slice())
                }
                _ => Durable::ready(),
            };
            (answer, durable)
        };
        if let Err(e) = durable.wait().await {
            error!(error = %e, "a vote could not be put in the journal");
            return Err(Refusal::Cannot(format!(
                "the voter could not store its vote on disk: {e}"
            )));
        }
        match answer {
            Ballot::Granted => Ok(None),
            Ballot::Promised(accepted) => Ok(accepted),
            Ballot::Refused(votes) => Err(Refusal::Voted(votes)),
        }
    }

    fn no_majority(&self, granted: usize, majority: usize, refusal: Option<String>) -> StoreError {
        let refusal = refusal
            .map(|why| format!(" (a voter refused: {why})"))
            .unwrap_or_default();
        StoreError::Unavailable(format!(
            "cannot decide safely: {granted} of the {majority} votes needed (a majority of the expected cluster size {}) were reached{refusal}; this side of a partition may not spend uses",
            self.expected_size()
        ))
    }

    // ---- requests from peers ----

    async fn handle_request(&self, from: &NodeId, body: Body) -> Body {
        match body {
            Body::Push(push) => {
                let pushed: Vec<(String, bool)> = push
                    .entries
                    .iter()
                    .map(|r| {
                        (
                            r.id.clone(),
                            matches!(r.state, Some(entry_record::State::Live(_))),
                        )
                    })
                    .collect();
                let applied = self.apply_records(push.entries).await.ok();
                // Held after the merge: a record dropped as bad or past its
                // retention is no copy (review #8), nor a live one a
                // tombstone here killed (review #14), nor one this node's
                // journal failed to keep. A node whose clock is in doubt
                // may have dropped it on a wrong clock: no copy.
                let stored = if self.expiry_held() || applied.is_none() {
                    0
                } else {
                    pushed
                        .iter()
                        .filter(|(id, live)| self.store.holds_pushed(id, *live))
                        .count()
                };
                Body::PushAck(PushAck {
                    applied: applied.unwrap_or(0) as u32,
                    stored: Some(stored as u32),
                })
            }
            Body::Fetch(fetch) => {
                let entries = fetch
                    .ids
                    .iter()
                    .take(1_000)
                    .filter_map(|id| self.store.entry(id).map(|e| to_record(id, &e)))
                    .collect();
                Body::Entries(Entries {
                    entries,
                    more: false,
                })
            }
            Body::Propose(propose) => self.vote_on(&propose).await,
            Body::Decide(decide) => {
                let Some(op) = decide.op else {
                    return error_reply(Code::InvalidArgument, "decide without an operation");
                };
                // Not acted upon: the caller's client may fail over.
                let refusal = if self.clock_fenced() {
                    Some(FENCED)
                } else if !self.votes_trusted() {
                    // A restarted node's HLC starts from zero, and its previous
                    // run's stamps may have run up to the skew budget ahead of
                    // physical time; until then a proposal stamp taken here
                    // could repeat one of them, which voters take for a retry
                    // (review #14). Readiness waits for the same.
                    Some(STAMPS_NOT_FRESH)
                } else {
                    None
                };
                if let Some(message) = refusal {
                    return Body::Decided(Decided {
                        entry: None,
                        ticket: None,
                        code: Code::Unavailable as u32,
                        message: message.to_owned(),
                    });
                }
                debug!(ticket = %tag(&decide.id), from = %from, "deciding for a peer");
                Body::Decided(match self.decide_here(&decide.id, op, true).await {
                    Ok((view, record)) => Decided {
                        entry: record,
                        ticket: Some(crate::api::ticket(view)),
                        code: 0,
                        message: String::new(),
                    },
                    Err(e) => {
                        let status = crate::api::to_status(e);
                        Decided {
                            entry: None,
                            ticket: None,
                            code: status.code() as u32,
                            message: status.message().to_owned(),
                        }
                    }
                })
            }
            Body::Digests(_) => Body::DigestsReply(BucketDigests {
                digests: self.store.digests(),
                entries: self.store.records() as u64,
            }),
            Body::BucketSync(sync) => {
                let _ = self.apply_records(sync.entries).await;
                let mut buckets = sync
                    .buckets
                    .iter()
                    .map(|b| *b as usize)
                    .filter(|b| *b < crate::store::digest::BUCKETS)
                    .take(16);
                let (entries, more) = match &sync.after {
                    // A sender that pages: one page of its first bucket.
                    Some(after) => match buckets.next() {
                        Some(bucket) => self.store.bucket_page(
                            bucket,
                            after,
                            self.config.sync_page_bytes,
                            to_record,
                            |record| record.encoded_len(),
                        ),
                        None => (Vec::new(), false),
                    },
                    // An older sender: all of every bucket at once.
                    None => (
                        buckets
                            .flat_map(|b| self.store.bucket_entries(b, to_record))
                            .collect(),
                        false,
                    ),
                };
                Body::Entries(Entries { entries, more })
            }
            Body::DeleteMatching(matching) => {
                if let Some(principal) = &matching.principal
                    && let Err(e) = ticket::validate_principal(principal)
                {
                    return error_reply(Code::InvalidArgument, &e.to_string());
                }
                match self.delete_matching_here(matching.principal).await {
                    Ok(deleted) => Body::DeletedMatching(DeletedMatching { deleted }),
                    Err(e) => error_reply(Code::Unavailable, &e.to_string()),
                }
            }
            _ => error_reply(Code::Unimplemented, "not a request"),
        }
    }

    /// Remember whether `from`'s latest frame showed its clock beyond the
    /// budget, and let a fence follow at once. Frames arrive with every push,
    /// so an unchanged verdict is written at most once a second.
    fn note_clock(&self, from: &NodeId, skew_ms: i64, beyond: bool) {
        let now = tokio::time::Instant::now();
        let fresh = {
            let view = self.view.read().unwrap_or_else(|e| e.into_inner());
            view.clocks.get(from).is_some_and(|sighting| {
                sighting.beyond == beyond
                    && now.duration_since(sighting.at) < CLOCK_SIGHTING_REFRESH
            })
        };
        if !fresh {
            let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
            let sighting = ClockSighting {
                beyond,
                skew_ms,
                at: now,
            };
            view.clocks.insert(from.clone(), sighting);
        }
        self.clock_fenced();
    }

    fn report_skew(&self, from: &NodeId, skew_ms: i64) {
        self.stats
            .clock_skew_reports
            .fetch_add(1, Ordering::Relaxed);
        let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
        let recently = view
            .skew_logged
            .iter()
            .any(|(peer, at)| peer == from && at.elapsed() < Duration::from_secs(10));
        if !recently {
            view.skew_logged.retain(|(peer, _)| peer != from);
            view.skew_logged.push((from.clone(), Instant::now()));
            warn!(
                peer = %from,
                skew_ms,
                budget_ms = self.config.max_clock_skew.as_millis() as u64,
                "peer clock is outside the skew budget; fix NTP on the slower or faster node"
            );
        }
    }
}

/// Handles the peer network's inbound requests.
#[async_trait::async_trait]
impl PeerHandler for Replicator {
    async fn handle(&self, from: NodeId, body: Body) -> Body {
        self.handle_request(&from, body).await
    }

    fn clock_reading(&self) -> ClockReading {
        let hlc = self.store.hlc();
        ClockReading {
            hlc: hlc_to_wire(hlc.stamp().hlc),
            physical_ms: Some(hlc.clock().now_ms()),
        }
    }

    /// Judges the peer's skew on its physical reading (review #13: HLCs all
    /// follow the fastest clock within the budget, so a slow but honest node
    /// saw every peer beyond it), then lets the HLC follow, unless the peer
    /// is far ahead.
    fn observe_clock(&self, from: &NodeId, reading: ClockReading) {
        let remote = hlc_from_wire(reading.hlc);
        let physical_ms = reading.physical_ms.unwrap_or(remote.wall_ms);
        let now = self.store.hlc().clock().now_ms();
        let skew_ms = physical_ms as i64 - now as i64;
        let budget = self.config.max_clock_skew.as_millis() as i64;
        let beyond = skew_ms.abs() > budget;
        self.note_clock(from, skew_ms, beyond);
        if beyond {
            self.report_skew(from, skew_ms);
        }
        // A clock far ahead must not drag this node's stamps with it, whether
        // the peer's own clock is fast or its HLC followed one that is.
        if skew_ms > budget || remote.wall_ms as i64 - now as i64 > budget {
            return;
        }
        self.store.hlc().observe(remote);
    }
}

/// Push records to one peer in batches.
async fn push_batches(
    network: &dyn PeerNetwork,
    peer: &NodeId,
    records: Vec<tessera_proto::peer::EntryRecord>,
) -> Result<(), PeerError> {
    for batch in records.chunks(PUSH_BATCH) {
        let body = Body::Push(Push {
            entries: batch.to_vec(),
        });
        let sent = batch.len();
        match network.call(peer, body).await? {
            // An older peer reports only what it merged.
            Body::PushAck(PushAck { stored: None, .. }) => {}
            Body::PushAck(PushAck {
                stored: Some(stored),
                ..
            }) if stored as usize == sent => {}
            Body::PushAck(PushAck {
                stored: Some(stored),
                ..
            }) => {
                return Err(PeerError::Protocol(
                    peer.to_string(),
                    format!("the peer holds {stored} of the {sent} records pushed"),
                ));
            }
            _ => {
                return Err(PeerError::Protocol(
                    peer.to_string(),
                    "push answered without an ack".into(),
                ));
            }
        }
    }
    Ok(())
}

/// Rendezvous (highest random weight) score of a node for a ticket.
fn rendezvous(node: &NodeId, id: &str) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(node.as_bytes());
    hasher.update(&[0xff]);
    hasher.update(id.as_bytes());
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// Why a proposal did not win a slot.
enum SlotLoss {
    /// A voter's copy showed the slot taken: merge these and decide again.
    Stale(Vec<EntryRecord>),
    /// Another proposal won the slot, finished by this node's ballot: count
    /// its use and decide again on the next slot.
    Finished,
    Failed(StoreError),
}

/// What one phase of a ballot heard (see [`Replicator::run_phase`]).
#[derive(Default)]
struct PhaseAnswers {
    granted: usize,
    /// Phase 1: what the voters that promised had accepted.
    accepted: Vec<(BallotId, crate::clock::Stamp)>,
    /// The highest round a refusing voter had promised.
    highest_promise: u32,
    /// A voter's copy showed the slot taken.
    taken: Option<EntryRecord>,
    /// A voter that predates ballots answered: its refusal says nothing of
    /// the values it holds, so this slot cannot be recovered with it.
    older_voter: bool,
    refusal: Option<String>,
}

/// A voter's answer to a proposal, as the peer network delivers it.
type PeerReply = Result<Body, PeerError>;

/// Why this node refuses a proposal (see [`votes`]).
enum Refusal {
    /// R1 to R3: it cannot vote on this now.
    Cannot(String),
    /// R4: its copy shows the slot taken; handed back to the proposer.
    Taken(crate::entry::Entry),
    /// R5 to R7: the slot's votes here hold another proposal or a higher
    /// ballot.
    Voted(SlotVotes),
}

/// What a proposal asks of a voter (see [`votes`]).
#[derive(Clone, Debug)]
enum Phase {
    /// Round 0: a vote for this proposal (R5).
    Fast(crate::clock::Stamp),
    /// Phase 1 of a ballot (R6).
    Prepare(BallotId),
    /// Phase 2: accept the value, a proposal stamp (R7).
    Accept(BallotId, crate::clock::Stamp),
}

impl Phase {
    /// The stamp of the proposal that runs this phase.
    fn proposal(&self) -> &crate::clock::Stamp {
        match self {
            Phase::Fast(proposal) => proposal,
            Phase::Prepare(ballot) | Phase::Accept(ballot, _) => &ballot.proposal,
        }
    }

    /// The `Propose` that asks a peer for this phase on `slot` of the
    /// incarnation in `current` (round 0: what every peer that predates
    /// ballots reads as its one vote).
    fn to_propose(&self, id: &str, slot: &str, current: &crate::store::DecideState) -> Propose {
        let (round, prepare, value) = match self {
            Phase::Fast(_) => (0, false, None),
            Phase::Prepare(ballot) => (ballot.round, true, None),
            Phase::Accept(ballot, value) => (ballot.round, false, Some(stamp_to_wire(value))),
        };
        Propose {
            id: id.to_owned(),
            slot: slot.to_owned(),
            proposal: Some(stamp_to_wire(self.proposal())),
            retain_until_ms: current.retain_until_ms,
            incarnation: Some(stamp_to_wire(&current.created)),
            round,
            prepare,
            value,
        }
    }

    fn from_wire(propose: &Propose, proposal: crate::clock::Stamp) -> Result<Phase, String> {
        if propose.round == 0 {
            return Ok(Phase::Fast(proposal));
        }
        let ballot = BallotId {
            round: propose.round,
            proposal,
        };
        if propose.prepare {
            return Ok(Phase::Prepare(ballot));
        }
        let value = stamp_from_wire(propose.value.clone(), "value").map_err(|e| e.to_string())?;
        Ok(Phase::Accept(ballot, value))
    }
}

/// Paxos's choice of the value for a slot's phase 2 (see [`votes`]):
/// `reports` are what the `promised` voters (of `expected`, `majority`
/// needed) had accepted. `None`: two proposals could each have won round 0.
fn choose_value(
    reports: &[(BallotId, crate::clock::Stamp)],
    promised: usize,
    expected: usize,
    majority: usize,
    own: &crate::clock::Stamp,
) -> Option<crate::clock::Stamp> {
    if let Some((_, value)) = reports
        .iter()
        .filter(|(ballot, _)| ballot.round >= 1)
        .max_by(|a, b| a.0.cmp(&b.0))
    {
        return Some(value.clone());
    }
    let unheard = expected.saturating_sub(promised);
    let mut counts: HashMap<&crate::clock::Stamp, usize> = HashMap::new();
    for (_, value) in reports {
        *counts.entry(value).or_default() += 1;
    }
    let mut could_have_won = counts
        .into_iter()
        .filter(|(_, votes)| votes + unheard >= majority)
        .map(|(value, _)| value);
    match (could_have_won.next(), could_have_won.next()) {
        (None, _) => Some(own.clone()),
        (Some(value), None) => Some(value.clone()),
        _ => None,
    }
}

/// Whether incarnation `inc` shows `slot` taken: the use already counted, or
/// the payload replaced by a newer version than the slot's.
fn slot_taken(inc: &crate::entry::Incarnation, slot: &str) -> bool {
    if let Some(n) = slot
        .strip_prefix("use:")
        .and_then(|n| n.parse::<u64>().ok())
    {
        return inc.total_uses() >= n;
    }
    slot.strip_prefix("version:")
        .and_then(crate::clock::Stamp::from_version)
        .is_some_and(|version| inc.payload.marker > version)
}

/// How a node whose clock is in doubt refuses, before any work: the `not
/// ready:` prefix tells clients the call was not acted upon.
pub const CLOCK_IN_DOUBT: &str = "not ready: this node's clock disagrees with its peers' by more than the skew budget; use another node";

/// How a node refuses a peer's decision before its votes are trusted (just
/// started or restarted): not acted upon, like every `not ready:` refusal.
pub const STAMPS_NOT_FRESH: &str = "not ready: this node has just started and takes no decision until it has caught up and waited out the skew budget; use another node";

/// How a fenced node refuses. The `fenced:` prefix tells clients the call was
/// not acted upon, so even a consume may be retried on another node.
pub const FENCED: &str = "fenced: this node's clock disagrees with most of its peers by more than the skew budget; use another node";

/// Whether an arbiter refused a decision before acting on it: the refusals
/// clients too may retry elsewhere (`not ready:`, `fenced:`).
fn refused_unacted(decided: &Decided) -> bool {
    decided.entry.is_none()
        && decided.code == Code::Unavailable as u32
        && (decided.message.starts_with("not ready:") || decided.message.starts_with("fenced:"))
}

fn quorum_error(reached: usize, quorum: usize) -> StoreError {
    StoreError::Unavailable(format!(
        "write reached {reached} of the {quorum} nodes write_quorum requires; it is kept and will spread when peers return"
    ))
}

fn error_reply(code: Code, message: &str) -> Body {
    Body::Error(ErrorReply {
        code: code as u32,
        message: message.to_owned(),
    })
}

/// A peer's gRPC-coded failure as a store error.
fn status_error(code: u32, message: String) -> StoreError {
    match Code::from_i32(code as i32) {
        Code::NotFound => StoreError::NotFound,
        Code::Aborted => StoreError::VersionMismatch {
            current: message.rsplit(' ').next().unwrap_or_default().to_owned(),
        },
        Code::InvalidArgument => StoreError::invalid("request", message),
        Code::AlreadyExists => StoreError::AlreadyExists(message),
        Code::FailedPrecondition => StoreError::FailedPrecondition(message),
        _ => StoreError::Unavailable(message),
    }
}

#[cfg(test)]
mod tests;
