//! Cluster membership: who is in the cluster, where to reach each node, and
//! whether it is alive, ready or draining.
//!
//! Built on chitchat (UDP gossip with Scuttlebutt reconciliation and a
//! phi-accrual failure detector). Every node publishes a few small string keys
//! about itself ([`KEY_API`], [`KEY_PEER`], [`KEY_VERSION`], [`KEY_READY`],
//! [`KEY_DRAINING`], [`KEY_TICKETS`], [`KEY_LEAVING`]). Gossip never carries
//! ticket data: chitchat cannot encrypt its packets, a value above ~65 KB never
//! replicates, and bulk state moves at ~130 KB/s. The authenticated peer protocol
//! is what admits a node to the data; membership only says where peers are.
//!
//! Identity: chitchat's id is (node id, generation, gossip address). Every start
//! takes a fresh generation ([`new_generation`]), so a restarted node is a new
//! chitchat node; the old generation lingers in chitchat's state as dead. This
//! module folds generations together: per node id only the newest live
//! generation is shown (or, when none is live, the newest dead one).
//!
//! Failure detection: chitchat's phi is (time since the last heartbeat seen) /
//! (mean interval between heartbeats seen, smoothed toward
//! `failure_detector_initial_interval`), and a node is dead once phi exceeds
//! [`PHI_THRESHOLD`]; liveness is re-evaluated once per gossip round. A peer's
//! heartbeat is seen to advance about twice per gossip round, so with the
//! defaults (500 ms rounds, 250 ms prior, threshold 6) a killed node leaves
//! every live set well inside the 5 s requirement (see [`PHI_THRESHOLD`] and
//! the fleet's kill scenario for measurements).
//! A node that stops through [`Membership::shutdown`] announces it
//! ([`KEY_LEAVING`]) and leaves the others' live sets within one round trip.

mod faults;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::transport::{Socket, UdpSocket};
use chitchat::{
    Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState,
    ProtocolVersion, spawn_chitchat,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

pub use faults::GossipFaults;

use crate::peer::NodeId;

/// Where clients reach the node (the gRPC API address, as clients should dial it).
pub const KEY_API: &str = "api";
/// Where peers reach the node's data plane (`ip:port`).
pub const KEY_PEER: &str = "peer";
/// The Tessera version the node runs.
pub const KEY_VERSION: &str = "version";
/// `"true"` once the node has synced and serves; `"false"` before.
pub const KEY_READY: &str = "ready";
/// `"true"` while the node is being drained before a stop.
pub const KEY_DRAINING: &str = "draining";
/// How many tickets the node holds (a small summary, refreshed by the caller).
pub const KEY_TICKETS: &str = "tickets";
/// `"true"` once the node has announced that it stops: peers drop it at once
/// instead of waiting for the failure detector.
pub const KEY_LEAVING: &str = "leaving";

/// Gossip round period used unless configured otherwise.
pub const DEFAULT_GOSSIP_INTERVAL: Duration = Duration::from_millis(500);
/// The failure detector's prior for the interval between a peer's heartbeats:
/// half the gossip interval, because a node sees a peer's heartbeat advance
/// about twice per round (the peer's SYN to us and its reply to ours). With the
/// whole gossip interval as prior, a freshly joined peer that dies is noticed
/// only after 3.5-4.6 s (measured, 3 nodes); with half, 2-3 s.
pub const DEFAULT_FAILURE_DETECTOR_INITIAL_INTERVAL: Duration = Duration::from_millis(250);
/// How long a dead member stays listed (and in chitchat's state) before it is
/// forgotten.
pub const DEFAULT_DEAD_NODE_GRACE_PERIOD: Duration = Duration::from_secs(60 * 60);
/// A peer is dead after about this many mean heartbeat intervals of silence.
/// chitchat's default is 8; in containers under load (heartbeats seen every
/// ~400 ms) that took 3.9-5.2 s to notice a killed node, against the 5 s
/// requirement. At 6 a peer must still be silent for well over a second
/// (several gossip rounds) before it is declared dead.
pub const PHI_THRESHOLD: f64 = 6.0;
/// Longest wait, on shutdown, for the leave announcement to reach peers.
const LEAVE_ANNOUNCE_WAIT: Duration = Duration::from_millis(500);
/// How long tombstoned keys are kept (Tessera never deletes keys; chitchat
/// needs a value).
const DELETED_KEY_GRACE_PERIOD: Duration = Duration::from_secs(60 * 60);
/// Used when the cluster has no secret (development only).
pub const INSECURE_CLUSTER_ID: &str = "tessera-insecure-dev";

/// A fresh generation: nanoseconds since the Unix epoch. Take one at every start.
pub fn new_generation() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// How this node takes part in gossip.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    pub node_id: NodeId,
    /// Nanoseconds since the epoch at start ([`new_generation`]); a restart is a
    /// new generation.
    pub generation: u64,
    /// From `ClusterSecret::gossip_cluster_id()`, or [`INSECURE_CLUSTER_ID`]:
    /// nodes with different ids ignore each other's gossip.
    pub cluster_id: String,
    /// UDP address to bind. Port 0 picks a free port, which is then advertised
    /// in place of an advertise port of 0.
    pub gossip_listen: SocketAddr,
    /// The address peers gossip to; its IP must be a real one (not 0.0.0.0).
    pub gossip_advertise: SocketAddr,
    /// `host:port` seeds chitchat gossips to at start (host names re-resolved by
    /// chitchat every 60 s). Peers found later: [`Membership::gossip_to`].
    pub seeds: Vec<String>,
    pub gossip_interval: Duration,
    /// The failure detector's prior for the interval between a peer's
    /// heartbeats: about half `gossip_interval`
    /// ([`DEFAULT_FAILURE_DETECTOR_INITIAL_INTERVAL`]); chitchat's own 5 s
    /// default detects deaths in ~7-8 s.
    pub failure_detector_initial_interval: Duration,
    /// The failure detector's threshold: a peer is dead after about this many
    /// mean heartbeat intervals without news of it ([`PHI_THRESHOLD`]).
    pub phi_threshold: f64,
    /// How long dead members stay listed by [`Membership::all_members`].
    pub dead_node_grace_period: Duration,
    /// Published: where clients reach this node.
    pub api_addr: String,
    /// Published: where peers reach this node's data plane.
    pub peer_addr: SocketAddr,
}

impl MembershipConfig {
    /// A configuration with the defaults: a fresh generation, advertise =
    /// listen, no seeds, 500 ms gossip, 250 ms detector prior, phi threshold 8,
    /// 1 h dead listing.
    pub fn new(
        node_id: impl Into<NodeId>,
        cluster_id: impl Into<String>,
        gossip_listen: SocketAddr,
        api_addr: impl Into<String>,
        peer_addr: SocketAddr,
    ) -> MembershipConfig {
        MembershipConfig {
            node_id: node_id.into(),
            generation: new_generation(),
            cluster_id: cluster_id.into(),
            gossip_listen,
            gossip_advertise: gossip_listen,
            seeds: Vec::new(),
            gossip_interval: DEFAULT_GOSSIP_INTERVAL,
            failure_detector_initial_interval: DEFAULT_FAILURE_DETECTOR_INITIAL_INTERVAL,
            phi_threshold: PHI_THRESHOLD,
            dead_node_grace_period: DEFAULT_DEAD_NODE_GRACE_PERIOD,
            api_addr: api_addr.into(),
            peer_addr,
        }
    }
}

/// Why membership could not start.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("invalid membership setting: {0}")]
    Config(String),
    #[error("cannot bind gossip address {addr}/udp: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("cannot start gossip: {0}")]
    Start(String),
}

/// What a member looks like to this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    Alive,
    /// Alive, but being drained before a stop: send it no new work.
    Draining,
    /// Declared dead by the failure detector, or announced its leave.
    Dead,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Draining => "draining",
            MemberState::Dead => "dead",
        }
    }
}

/// One node of the cluster, as gossip describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub node_id: NodeId,
    pub generation: u64,
    pub api_addr: String,
    /// `None` if the node published no parsable peer address.
    pub peer_addr: Option<SocketAddr>,
    pub gossip_addr: SocketAddr,
    pub version: String,
    pub ready: bool,
    pub draining: bool,
    pub tickets: u64,
    pub state: MemberState,
}

impl Member {
    /// `None` for a node whose keys have not arrived yet (chitchat creates a
    /// node's state from a digest before the first delta fills it).
    fn from_state(id: &ChitchatId, state: &NodeState, live: bool) -> Option<Member> {
        let api_addr = state.get(KEY_API)?.to_string();
        let flag = |key| state.get(key) == Some("true");
        let draining = flag(KEY_DRAINING);
        let member_state = if !live || flag(KEY_LEAVING) {
            MemberState::Dead
        } else if draining {
            MemberState::Draining
        } else {
            MemberState::Alive
        };
        Some(Member {
            node_id: id.node_id.clone(),
            generation: id.generation_id,
            api_addr,
            peer_addr: state.get(KEY_PEER).and_then(|peer| peer.parse().ok()),
            gossip_addr: id.gossip_advertise_addr,
            version: state.get(KEY_VERSION).unwrap_or_default().to_string(),
            ready: flag(KEY_READY),
            draining,
            tickets: state
                .get(KEY_TICKETS)
                .and_then(|tickets| tickets.parse().ok())
                .unwrap_or(0),
            state: member_state,
        })
    }

    pub fn is_live(&self) -> bool {
        self.state != MemberState::Dead
    }
}

/// This node's membership of the cluster: a cheap, cloneable handle on one
/// chitchat instance. Clones share it; [`Membership::shutdown`] on any clone
/// stops gossip for all of them, and gossip stops when the last clone is dropped.
#[derive(Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

/// Chitchat's task and what tells when its socket is gone.
struct Running {
    handle: ChitchatHandle,
    socket_closed: faults::SocketClosed,
}

struct Inner {
    node_id: NodeId,
    chitchat_id: ChitchatId,
    gossip_interval: Duration,
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    /// `None` once stopped. A std mutex: only held to send a command or take it.
    running: Mutex<Option<Running>>,
    view: Arc<View>,
    /// Keeps the view up to date; aborted when the last clone goes.
    _refresher: AbortOnDrop,
}

impl Membership {
    /// Bind the gossip socket and start gossiping.
    pub async fn start(config: MembershipConfig) -> Result<Membership, MembershipError> {
        Membership::start_with_faults(config, GossipFaults::default()).await
    }

    /// Same, over a transport that drops packets to and from the addresses
    /// `faults` blocks (tests).
    pub async fn start_with_faults(
        config: MembershipConfig,
        faults: GossipFaults,
    ) -> Result<Membership, MembershipError> {
        validate(&config)?;
        // Bind first: chitchat advertises the address in its id before it binds,
        // so with port 0 the real port must be known up front.
        let socket =
            UdpSocket::open(config.gossip_listen)
                .await
                .map_err(|err| MembershipError::Bind {
                    addr: config.gossip_listen,
                    reason: format!("{err:#}"),
                })?;
        let bound = socket.local_addr().map_err(|err| MembershipError::Bind {
            addr: config.gossip_listen,
            reason: format!("{err:#}"),
        })?;
        let mut advertise = config.gossip_advertise;
        if advertise.port() == 0 {
            advertise.set_port(bound.port());
        }
        let chitchat_id = ChitchatId::new(config.node_id.clone(), config.generation, advertise);
        let chitchat_config = ChitchatConfig {
            chitchat_id: chitchat_id.clone(),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: bound,
            seed_nodes: config.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: config.phi_threshold,
                initial_interval: config.failure_detector_initial_interval,
                dead_node_grace_period: config.dead_node_grace_period,
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: DELETED_KEY_GRACE_PERIOD,
            catchup_callback: None,
            extra_liveness_predicate: None,
            // V1 compresses digests; V0 is what every chitchat 0.13 node reads
            // and metadata digests are small.
            protocol_version: ProtocolVersion::V0,
        };
        let initial_keys = vec![
            (KEY_API.to_string(), config.api_addr.clone()),
            (KEY_PEER.to_string(), config.peer_addr.to_string()),
            (
                KEY_VERSION.to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
            (KEY_READY.to_string(), "false".to_string()),
            (KEY_DRAINING.to_string(), "false".to_string()),
            (KEY_TICKETS.to_string(), "0".to_string()),
        ];
        let socket: Box<dyn Socket> = Box::new(socket);
        let (transport, socket_closed) = faults::PreparedTransport::new(socket, faults);
        let handle = spawn_chitchat(chitchat_config, initial_keys, &transport)
            .await
            .map_err(|err| MembershipError::Start(format!("{err:#}")))?;
        let chitchat = handle.chitchat();

        let view = {
            let guard = chitchat.lock().await;
            Arc::new(View::new(&guard))
        };
        let refresher = tokio::spawn(refresh_loop(
            chitchat.clone(),
            view.clone(),
            config.gossip_interval,
            handle.termination_watcher(),
        ));
        info!(
            node = %config.node_id,
            generation = config.generation,
            gossip = %advertise,
            seeds = ?config.seeds,
            "gossip started"
        );
        Ok(Membership {
            inner: Arc::new(Inner {
                node_id: config.node_id,
                chitchat_id,
                gossip_interval: config.gossip_interval,
                chitchat,
                running: Mutex::new(Some(Running {
                    handle,
                    socket_closed,
                })),
                view,
                _refresher: AbortOnDrop(refresher),
            }),
        })
    }

    pub fn node_id(&self) -> &NodeId {
        &self.inner.node_id
    }

    pub fn generation(&self) -> u64 {
        self.inner.chitchat_id.generation_id
    }

    /// The address peers gossip to (the real port when started on port 0).
    pub fn gossip_addr(&self) -> SocketAddr {
        self.inner.chitchat_id.gossip_advertise_addr
    }

    /// Live members, including this node, one per node id (the newest
    /// generation), sorted by node id.
    pub fn live_members(&self) -> Vec<Member> {
        self.inner.view.live.borrow().clone()
    }

    /// Live and recently dead members (dead ones stay for
    /// `dead_node_grace_period`), one per node id: a live generation wins over a
    /// dead one, then the newest. Sorted by node id.
    pub fn all_members(&self) -> Vec<Member> {
        self.inner
            .view
            .all
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The live list ([`Membership::live_members`]), notified whenever a member
    /// joins, leaves or changes any published key.
    pub fn subscribe(&self) -> watch::Receiver<Vec<Member>> {
        self.inner.view.live.subscribe()
    }

    pub async fn set_ready(&self, ready: bool) {
        self.set_key(KEY_READY, if ready { "true" } else { "false" })
            .await;
    }

    /// Tell peers this node is being drained (it stays live until it stops).
    pub async fn set_draining(&self) {
        self.set_key(KEY_DRAINING, "true").await;
    }

    /// Publish the ticket count (call every few seconds at most: each change is
    /// gossiped to every node).
    pub async fn set_tickets(&self, tickets: u64) {
        self.set_key(KEY_TICKETS, &tickets.to_string()).await;
    }

    async fn set_key(&self, key: &str, value: &str) {
        let mut chitchat = self.inner.chitchat.lock().await;
        chitchat.self_node_state().set(key, value);
        self.inner.view.publish(&chitchat, false);
    }

    /// Gossip to an address found at run time (chitchat's seed list is fixed at
    /// start): one SYN, after which chitchat keeps gossiping with whatever it
    /// learns. A no-op once stopped.
    pub async fn gossip_to(&self, addr: SocketAddr) {
        if addr == self.gossip_addr() {
            return;
        }
        let guard = self
            .inner
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(running) = guard.as_ref()
            && let Err(err) = running.handle.gossip(addr)
        {
            debug!(%addr, error = %err, "gossip already stopped");
        }
    }

    /// Leave: announce it to live peers (they drop this node at once), give the
    /// announcement one gossip round to spread, then stop gossiping. Stops every
    /// clone.
    pub async fn shutdown(self) {
        let Some(Running { handle, .. }) = self.take_running() else {
            return;
        };
        let peers: Vec<SocketAddr> = {
            let mut chitchat = self.inner.chitchat.lock().await;
            chitchat.self_node_state().set(KEY_LEAVING, "true");
            let own = chitchat.self_chitchat_id().clone();
            chitchat
                .live_nodes()
                .filter(|id| **id != own)
                .map(|id| id.gossip_advertise_addr)
                .collect()
        };
        // SYN now; the peer's SYN-ACK then pulls our new key in our ACK.
        for addr in &peers {
            let _ = handle.gossip(*addr);
        }
        if !peers.is_empty() {
            tokio::time::sleep(self.inner.gossip_interval.min(LEAVE_ANNOUNCE_WAIT)).await;
        }
        if let Err(err) = handle.shutdown().await {
            warn!(error = %err, "gossip did not stop cleanly");
        }
        self.stopped().await;
        info!(node = %self.inner.node_id, "left the cluster");
    }

    /// Stop at once without telling anyone: what a `kill -9` looks like to
    /// peers, who notice through the failure detector. For fault-injection
    /// tests. Stops every clone.
    pub async fn crash(self) {
        if let Some(running) = self.take_running() {
            running.handle.abort();
            running.socket_closed.wait().await;
            self.stopped().await;
        }
    }

    fn take_running(&self) -> Option<Running> {
        self.inner
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Once stopped, this node knows nothing current about anyone else.
    async fn stopped(&self) {
        self.inner._refresher.0.abort();
        let chitchat = self.inner.chitchat.lock().await;
        self.inner.view.publish(&chitchat, true);
    }
}

fn validate(config: &MembershipConfig) -> Result<(), MembershipError> {
    let fail = |message: String| Err(MembershipError::Config(message));
    if config.node_id.is_empty() {
        return fail("node id is empty".into());
    }
    if config.cluster_id.is_empty() {
        return fail("gossip cluster id is empty".into());
    }
    if config.gossip_advertise.ip().is_unspecified() {
        return fail(format!(
            "gossip advertise address {} is unspecified: peers need a reachable IP",
            config.gossip_advertise
        ));
    }
    if config.gossip_interval.is_zero() {
        return fail("gossip interval is zero".into());
    }
    if !(config.phi_threshold.is_finite() && config.phi_threshold > 0.0) {
        return fail(format!(
            "phi threshold {} must be a positive number",
            config.phi_threshold
        ));
    }
    if config.failure_detector_initial_interval.is_zero() {
        return fail("failure detector initial interval is zero".into());
    }
    if config.gossip_listen.port() == 0
        && config.gossip_advertise.port() != 0
        && config.gossip_advertise.ip() == config.gossip_listen.ip()
    {
        return fail(format!(
            "gossip listen port is 0 (any) but advertise address {} names a port",
            config.gossip_advertise
        ));
    }
    Ok(())
}

/// The member lists as last computed from chitchat's state.
struct View {
    live: watch::Sender<Vec<Member>>,
    all: Mutex<Vec<Member>>,
}

impl View {
    fn new(chitchat: &Chitchat) -> View {
        let all = members_of(chitchat, false);
        let live = all.iter().filter(|m| m.is_live()).cloned().collect();
        View {
            live: watch::Sender::new(live),
            all: Mutex::new(all),
        }
    }

    /// Recompute from `chitchat` (whose lock the caller holds, so publishers
    /// never interleave). `stopped`: every other node is shown dead.
    fn publish(&self, chitchat: &Chitchat, stopped: bool) {
        let all = members_of(chitchat, stopped);
        let live: Vec<Member> = all.iter().filter(|m| m.is_live()).cloned().collect();
        *self.all.lock().unwrap_or_else(PoisonError::into_inner) = all;
        self.live.send_if_modified(|current| {
            if *current == live {
                false
            } else {
                *current = live;
                true
            }
        });
    }
}

/// Members one per node id: live before dead, then newest generation.
fn members_of(chitchat: &Chitchat, only_self_live: bool) -> Vec<Member> {
    let own = chitchat.self_chitchat_id();
    let live: HashSet<&ChitchatId> = if only_self_live {
        HashSet::from([own])
    } else {
        chitchat.live_nodes().collect()
    };
    let mut by_node: BTreeMap<NodeId, Member> = BTreeMap::new();
    for (id, state) in chitchat.node_states() {
        let Some(member) = Member::from_state(id, state, live.contains(id)) else {
            continue;
        };
        let rank = |m: &Member| (m.is_live(), m.generation);
        match by_node.get(&member.node_id) {
            Some(kept) if rank(kept) >= rank(&member) => {}
            _ => {
                by_node.insert(member.node_id.clone(), member);
            }
        }
    }
    by_node.into_values().collect()
}

/// Recompute the view on every change chitchat reports (join, leave, key
/// change) and once per gossip round (dead members ageing out); stop when
/// chitchat's server does.
async fn refresh_loop(
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    view: Arc<View>,
    period: Duration,
    termination: impl Future<Output = anyhow::Result<()>>,
) {
    let mut changes = chitchat.lock().await.live_nodes_watcher();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut termination = std::pin::pin!(termination);
    loop {
        let stopped = tokio::select! {
            changed = changes.changed() => changed.is_err(),
            _ = tick.tick() => false,
            result = &mut termination => {
                if let Err(err) = result {
                    error!(error = %err, "gossip stopped: every other member now shows as dead");
                }
                true
            }
        };
        let guard = chitchat.lock().await;
        view.publish(&guard, stopped);
        if stopped {
            return;
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
