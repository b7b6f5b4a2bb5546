//! One node, wired together: the store and its sweeper, replication, and (in a
//! cluster) the peer network, gossip membership, discovery and anti-entropy;
//! then the gRPC server (ticket API behind its token check, standard health
//! service, reflection).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tessera_proto::v1::ticket_store_server::TicketStoreServer;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

use crate::api::auth::AuthStats;
use crate::api::tls::{ApiTls, CertSource, TlsError, TlsSettings};
use crate::api::{ApiAuth, NodeInfo, TicketApi};
use crate::clock::{Clock, ClockSync, HlcClock};
use crate::config::{ConfigError, DiscoveryMode, NodeConfig};
use crate::discovery::{
    Discovery, DiscoveryError, DiscoveryStatus, DiscoveryWorker, DnsDiscovery, StaticDiscovery,
};
use crate::journal::{Compaction, Journal, JournalError, SharedJournal, SyncPolicy};
use crate::membership::{GossipFaults, INSECURE_CLUSTER_ID, Membership, MembershipConfig};
use crate::peer::NodeId;
use crate::peer::net::{PeerNet, PeerNetConfig};
use crate::replication::Replicator;
use crate::replication::anti_entropy::AntiEntropy;
use crate::replication::reports::ExpiryHandoffs;
use crate::secret::{ApiToken, ClusterSecret, SecretError};
use crate::store::Store;
use crate::sweeper::Sweeper;
use crate::worker::{self, Shutdown};

/// Room for the protobuf framing around the largest payload.
const MESSAGE_OVERHEAD: usize = 64 * 1024;

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(
        "invalid setting cluster_secret_file: a node with peers needs the cluster secret (--cluster-secret-file or TESSERA_CLUSTER_SECRET)"
    )]
    SecretMissing,
    #[error(
        "invalid setting api_token_file: a node with peers needs an API token for its client API (--api-token-file, TESSERA_API_TOKEN_FILE or TESSERA_API_TOKEN)"
    )]
    ApiTokenMissing,
    #[error(
        "invalid setting api_token_file: the API token must differ from the cluster secret (the token may cross the network in cleartext)"
    )]
    ApiTokenIsClusterSecret,
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start gossip: {0}")]
    Membership(String),
    #[error("cannot open the data directory: {0}")]
    Journal(#[from] JournalError),
    #[error("invalid TLS setting: {0}")]
    Tls(#[from] TlsError),
    #[error("invalid discovery setting: {0}")]
    Discovery(#[from] DiscoveryError),
    /// Discovery could not learn what it needs at start (ECS: the node's own task).
    #[error("cannot start discovery: {0}")]
    DiscoveryStart(DiscoveryError),
    #[error("gRPC reflection setup failed: {0}")]
    Reflection(String),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("gRPC server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What a node is started with besides its configuration.
#[derive(Clone, Default)]
pub struct NodeOptions {
    /// Wall clock (tests pass a paused or shifted one). Default: the system's.
    pub clock: Option<Clock>,
    /// The cluster secret, when not read from `cluster_secret_file`.
    pub secret: Option<ClusterSecret>,
    /// The API token, when not read from `api_token_file`.
    pub api_token: Option<ApiToken>,
    /// Drop gossip to and from chosen addresses (in-process partition tests).
    pub gossip_faults: Option<GossipFaults>,
    /// The TLS certificate chain and key as PEM text (`TESSERA_TLS_CERT`,
    /// `TESSERA_TLS_KEY`), instead of `tls_cert_file` / `tls_key_file`.
    pub tls_pem: Option<(Vec<u8>, Vec<u8>)>,
}

/// The cluster side of a running node.
struct ClusterParts {
    membership: Membership,
    peer_net: Arc<PeerNet>,
    gossip_faults: GossipFaults,
}

/// A running node. Dropping it without [`NodeHandle::stop`] stops it abruptly.
pub struct NodeHandle {
    api_addr: SocketAddr,
    node: Arc<NodeInfo>,
    /// Refused ticket API calls (wrong or missing API token).
    auth: Arc<AuthStats>,
    cluster: Option<ClusterParts>,
    gossip_interval: Duration,
    workers: Shutdown,
    worker_tasks: Vec<JoinHandle<()>>,
    /// Loops that follow membership; aborted on stop.
    followers: Vec<JoinHandle<()>>,
    stop_server: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl NodeHandle {
    /// The address the client API listens on (the real port when 0 was asked).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    pub fn store(&self) -> &Arc<Store> {
        self.node.replicator.store()
    }

    pub fn replicator(&self) -> &Arc<Replicator> {
        &self.node.replicator
    }

    pub fn node_id(&self) -> &str {
        &self.node.node_id
    }

    /// Ticket API calls refused for a missing or wrong API token since start.
    pub fn api_rejections(&self) -> u64 {
        self.auth.rejections()
    }

    /// Whether the node has joined and caught up (what health reports).
    pub fn is_ready(&self) -> bool {
        self.node.ready.load(Ordering::Acquire)
    }

    pub fn membership(&self) -> Option<&Membership> {
        self.cluster.as_ref().map(|c| &c.membership)
    }

    pub fn peer_net(&self) -> Option<&Arc<PeerNet>> {
        self.cluster.as_ref().map(|c| &c.peer_net)
    }

    /// The gossip address (cluster mode).
    pub fn gossip_addr(&self) -> Option<SocketAddr> {
        self.membership().map(Membership::gossip_addr)
    }

    /// Test hook: cut this node off from `other` (data plane and gossip, this
    /// side only; cut both sides for a symmetric partition).
    pub fn cut_from(&self, other: &NodeHandle) {
        if let (Some(mine), Some(theirs)) = (&self.cluster, &other.cluster) {
            mine.peer_net.block(other.node.node_id.as_str().into());
            mine.gossip_faults.block(theirs.membership.gossip_addr());
        }
    }

    /// Test hook: heal every cut made on this side.
    pub fn heal(&self) {
        if let Some(mine) = &self.cluster {
            mine.gossip_faults.unblock_all();
            for member in mine.membership.all_members() {
                mine.peer_net.unblock(&member.node_id);
            }
        }
    }

    /// Leave gracefully: announce draining, refuse new calls, let in-flight
    /// calls finish, then stop gossip, peers and workers. Every ticket already
    /// lives on the other nodes, so nothing is lost.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        self.node.draining.store(true, Ordering::Release);
        self.node.replicator.start_draining();
        self.node.ready.store(false, Ordering::Release);
        if let Some(cluster) = &self.cluster {
            cluster.membership.set_draining().await;
            cluster.membership.set_ready(false).await;
            // Let peers see it and stop routing decisions here.
            tokio::time::sleep(self.gossip_interval * 2).await;
        }
        // Watch streams never end by themselves: end them, so the server
        // can finish its calls (watchers resume on another node).
        self.node.replicator.events().close();
        // Sessions too: each answers the batches it read, then ends.
        self.node.leaving.send_replace(true);
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        let served = (&mut self.server).await;
        for follower in self.followers.drain(..) {
            follower.abort();
        }
        if let Some(cluster) = self.cluster.take() {
            cluster.membership.shutdown().await;
            cluster.peer_net.shutdown().await;
        }
        self.workers.stop();
        for task in self.worker_tasks.drain(..) {
            let _ = task.await;
        }
        info!("node stopped");
        Ok(served??)
    }

    /// Stop at once, as a crash would: no draining, no goodbye.
    pub async fn kill(mut self) {
        self.server.abort();
        for follower in self.followers.drain(..) {
            follower.abort();
        }
        if let Some(cluster) = self.cluster.take() {
            cluster.membership.crash().await;
            cluster.peer_net.shutdown().await;
        }
        self.workers.stop();
        for task in self.worker_tasks.drain(..) {
            task.abort();
        }
    }

    /// Wait until the server stops by itself (it only does on error).
    pub async fn wait(&mut self) -> Result<(), ServerError> {
        Ok((&mut self.server).await??)
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.workers.stop();
        for follower in &self.followers {
            follower.abort();
        }
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
    }
}

/// Start a node with the system clock, its secret from the configuration.
pub async fn start(config: NodeConfig) -> Result<NodeHandle, ServerError> {
    start_with(config, NodeOptions::default()).await
}

/// Start a node on a given clock (tests pass a paused or shifted one).
pub async fn start_with_clock(config: NodeConfig, clock: Clock) -> Result<NodeHandle, ServerError> {
    start_with(
        config,
        NodeOptions {
            clock: Some(clock),
            ..NodeOptions::default()
        },
    )
    .await
}

pub async fn start_with(
    mut config: NodeConfig,
    options: NodeOptions,
) -> Result<NodeHandle, ServerError> {
    config.validate()?;
    let secret = match (&options.secret, &config.cluster_secret_file) {
        (Some(secret), _) => Some(secret.clone()),
        (None, Some(path)) => Some(ClusterSecret::from_file(path)?),
        (None, None) => None,
    };
    if config.is_clustered() && secret.is_none() {
        return Err(ServerError::SecretMissing);
    }
    let api_token = match (&options.api_token, &config.api_token_file) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(path)) => Some(ApiToken::from_file(path)?),
        (None, None) => None,
    };
    if config.is_clustered() && api_token.is_none() {
        return Err(ServerError::ApiTokenMissing);
    }
    if let (Some(token), Some(secret)) = (&api_token, &secret)
        && token.is_cluster_secret(secret)
    {
        return Err(ServerError::ApiTokenIsClusterSecret);
    }
    if let Some(secret) = &secret {
        crate::redact::set_key(secret.log_tag_key());
    }
    // Before anything binds or counts majorities: ECS discovery may fill in
    // the advertised address and the expected size.
    let (discovery, service_size) = match config.is_clustered() {
        true => {
            let (discovery, service_size) = discovery_for(&mut config).await?;
            (Some(discovery), service_size)
        }
        false => (None, None),
    };
    let incoming = TcpIncoming::bind(config.listen)
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let api_addr = incoming.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;
    let advertise_ip = advertise_ip(&config, api_addr.ip()).await?;
    if api_token.is_none() && !api_addr.ip().is_loopback() {
        warn!(
            api = %api_addr,
            "the client API is open to anyone who can reach {api_addr}: no API token is set (api_token_file or TESSERA_API_TOKEN)"
        );
    }
    let tls = api_tls(&config, options.tls_pem.clone())?;
    if tls.is_none() && api_token.is_some() && !api_addr.ip().is_loopback() {
        warn!(
            api = %api_addr,
            "the API token and every ticket cross the network to {api_addr} in cleartext: serve TLS (tls_cert_file and tls_key_file)"
        );
    }

    let clock = options.clock.clone().unwrap_or_else(Clock::system);
    let hlc = HlcClock::new(clock.clone(), config.node_id.as_str().into());
    let store = Arc::new(Store::new(config.store_config(), hlc));
    let replicator = Replicator::new(store.clone(), config.replication_config());
    if let Some(size) = service_size {
        replicator.follow_service_size(size);
    }
    let workers = Shutdown::new();
    if config.data_dir.is_none() {
        warn!(
            "tickets live in memory only (data_dir none): a restart of this node keeps only what its peers hold"
        );
    }
    let journal = match &config.data_dir {
        Some(dir) => Some(open_journal(
            dir,
            config.sync,
            &data_cluster_id(secret.as_ref()),
            &replicator,
        )?),
        None => None,
    };
    let sweeper = Sweeper::new(replicator.clone());
    let mut worker_tasks = vec![
        worker::spawn(sweeper, &workers),
        worker::spawn(ExpiryHandoffs::new(replicator.clone()), &workers),
        worker::spawn(ClockSync::new(clock), &workers),
    ];
    if let Some(tls) = &tls {
        worker_tasks.push(worker::spawn(tls.reloader(), &workers));
    }
    if let Some(journal) = journal {
        worker_tasks.push(worker::spawn(
            Compaction::new(journal, replicator.clone()),
            &workers,
        ));
    }
    let mut followers = Vec::new();
    let advertised_api = SocketAddr::new(advertise_ip, api_addr.port());

    let cluster = match (config.is_clustered(), &secret) {
        (true, Some(secret)) => Some(
            start_cluster(
                &config,
                secret,
                &options,
                &replicator,
                advertise_ip,
                advertised_api,
            )
            .await?,
        ),
        _ => None,
    };

    let auth = ApiAuth::new(api_token.as_ref());
    let auth_stats = auth.stats();
    let node = Arc::new(NodeInfo {
        node_id: config.node_id.clone(),
        api_addr: advertised_api.to_string(),
        replicator: replicator.clone(),
        membership: cluster.as_ref().map(|c| c.membership.clone()),
        draining: AtomicBool::new(false),
        ready: AtomicBool::new(cluster.is_none()),
        peer_net: cluster.as_ref().map(|c| c.peer_net.clone()),
        auth_stats: auth_stats.clone(),
        batches: AtomicU64::new(0),
        batched_calls: AtomicU64::new(0),
        sessions: AtomicU64::new(0),
        calls: crate::api::metrics::CallMetrics::default(),
        leaving: tokio::sync::watch::Sender::new(false),
    });
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        info!(metrics = %addr, "metrics and health over HTTP: /metrics, /healthz, /readyz");
        followers.push(crate::api::metrics::serve(listener, node.clone()));
    }

    let max_message = config.max_payload_bytes + MESSAGE_OVERHEAD;
    // The token check wraps the ticket service alone: health and reflection stay open.
    let api = InterceptedService::new(
        TicketStoreServer::new(TicketApi::new(node.clone())).max_decoding_message_size(max_message),
        auth,
    );
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, node.ready.load(Ordering::Acquire)).await;

    if let (Some(parts), Some(discovery)) = (&cluster, discovery) {
        let (discovery_worker, discovery_status) = DiscoveryWorker::new(
            discovery,
            parts.membership.clone(),
            parts.membership.gossip_addr(),
            config.discovery_interval,
        );
        worker_tasks.push(worker::spawn(discovery_worker, &workers));
        let anti_entropy = AntiEntropy::new(replicator.clone(), config.anti_entropy_interval);
        worker_tasks.push(worker::spawn(anti_entropy, &workers));
        followers.push(tokio::spawn(follow_membership(
            parts.membership.clone(),
            parts.peer_net.clone(),
            replicator.clone(),
        )));
        followers.push(tokio::spawn(report_readiness(
            node.clone(),
            parts.membership.clone(),
            discovery_status,
            health.clone(),
            config.expected_size(),
        )));
    }

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tessera_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;

    let (stop_server, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
            // Load balancers see NOT_SERVING while in-flight calls finish.
            set_health(&health, false).await;
            info!("shutting down: finishing in-flight calls");
        };
        let router = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(api);
        match tls {
            Some(tls) => {
                router
                    .serve_with_incoming_shutdown(tls.incoming(incoming), shutdown)
                    .await
            }
            None => {
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
            }
        }
        .inspect_err(|e| warn!(error = %e, "gRPC server stopped"))
    });
    info!(
        node_id = %config.node_id,
        api = %api_addr,
        cluster = cluster.is_some(),
        api_token = api_token.is_some(),
        "node serving"
    );
    Ok(NodeHandle {
        api_addr,
        node,
        auth: auth_stats,
        cluster,
        gossip_interval: config.gossip_interval,
        workers,
        worker_tasks,
        followers,
        stop_server: Some(stop_server),
        server,
    })
}

/// The address peers and clients should use for this node.
async fn advertise_ip(config: &NodeConfig, listen_ip: IpAddr) -> Result<IpAddr, ServerError> {
    let Some(host) = &config.advertise else {
        return Ok(listen_ip);
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let resolved = tokio::net::lookup_host((host.as_str(), 0))
        .await
        .ok()
        .and_then(|mut addrs| addrs.next());
    resolved.map(|a| a.ip()).ok_or_else(|| {
        ServerError::Config(ConfigError::Invalid {
            setting: "advertise",
            reason: format!("'{host}' does not resolve to an address"),
        })
    })
}

async fn start_cluster(
    config: &NodeConfig,
    secret: &ClusterSecret,
    options: &NodeOptions,
    replicator: &Arc<Replicator>,
    advertise_ip: IpAddr,
    advertised_api: SocketAddr,
) -> Result<ClusterParts, ServerError> {
    let generation = crate::membership::new_generation();
    let peer_listen = config.peer_listen();
    let peer_net = PeerNet::start(
        PeerNetConfig::new(
            config.node_id.as_str().into(),
            generation,
            peer_listen,
            secret.peer_psk(),
            // A push of a batch of large tickets, or a bucket during catch-up.
            config.max_payload_bytes * 4 + 4 * 1024 * 1024,
        ),
        replicator.clone(),
    )
    .await
    .map_err(|source| ServerError::Bind {
        addr: peer_listen,
        source,
    })?;
    replicator.attach(peer_net.clone());
    let peer_addr = SocketAddr::new(advertise_ip, peer_net.local_addr().port());

    let gossip_listen = config.gossip_listen();
    let seeds = match config.discovery_mode() {
        DiscoveryMode::Static => config.seeds.clone(),
        _ => Vec::new(),
    };
    let mut membership_config = MembershipConfig::new(
        config.node_id.as_str(),
        secret.gossip_cluster_id(),
        gossip_listen,
        advertised_api.to_string(),
        peer_addr,
    );
    membership_config.generation = generation;
    membership_config.gossip_advertise = SocketAddr::new(advertise_ip, gossip_listen.port());
    membership_config.seeds = seeds;
    membership_config.gossip_interval = config.gossip_interval;
    membership_config.failure_detector_initial_interval = config.gossip_interval;
    if membership_config.cluster_id == INSECURE_CLUSTER_ID {
        warn!("gossip runs without a cluster id derived from a secret");
    }
    let gossip_faults = options.gossip_faults.clone().unwrap_or_default();
    let membership = Membership::start_with_faults(membership_config, gossip_faults.clone())
        .await
        .map_err(|e| ServerError::Membership(e.to_string()))?;
    Ok(ClusterParts {
        membership,
        peer_net,
        gossip_faults,
    })
}

/// The discovery provider of a clustered node. ECS discovery first reads the
/// node's own task, which also supplies the advertised address (the task's
/// IPv4) and the expected size (the service's desiredCount) when neither is
/// set; that desiredCount is then read again every discovery round (the
/// returned handle), so majorities follow the service's size.
async fn discovery_for(
    config: &mut NodeConfig,
) -> Result<(Arc<dyn Discovery>, Option<Arc<AtomicUsize>>), ServerError> {
    Ok(match config.discovery_mode() {
        DiscoveryMode::Dns => (
            Arc::new(DnsDiscovery::new(
                config.dns_name.clone().unwrap_or_default(),
                config.gossip_listen().port(),
            )),
            None,
        ),
        #[cfg(feature = "ecs")]
        DiscoveryMode::Ecs => {
            use crate::discovery::ecs::{EcsDiscovery, EcsSettings};
            let settings = EcsSettings {
                service: config.ecs_service.clone(),
                family: config.ecs_family.clone(),
                gossip_port: config.ecs_gossip_port,
            };
            let start = EcsDiscovery::start(&settings, config.expected_size.is_none())
                .await
                .map_err(ServerError::DiscoveryStart)?;
            if config.advertise.is_none() {
                config.advertise = Some(start.task.ipv4.to_string());
            }
            if let Some(count) = start.desired_count {
                info!(
                    desired_count = count,
                    "expected cluster size from the ECS service"
                );
                config.expected_size = Some(count.clamp(1, 1024));
            }
            let service_size = start.discovery.desired_count_handle();
            (Arc::new(start.discovery), service_size)
        }
        _ => (Arc::new(StaticDiscovery::new(config.seeds.clone())?), None),
    })
}

/// Keep the peer network's addresses and replication's view in step with
/// membership.
async fn follow_membership(
    membership: Membership,
    peer_net: Arc<PeerNet>,
    replicator: Arc<Replicator>,
) {
    let me: NodeId = membership.node_id().clone();
    let mut changes = membership.subscribe();
    let mut known: HashMap<NodeId, SocketAddr> = HashMap::new();
    loop {
        let live = changes.borrow_and_update().clone();
        let mut current = HashMap::new();
        for member in &live {
            if member.node_id == me {
                continue;
            }
            if let Some(addr) = member.peer_addr {
                current.insert(member.node_id.clone(), addr);
            }
        }
        for (node, addr) in &current {
            if known.get(node) != Some(addr) {
                peer_net.set_peer_addr(node.clone(), *addr);
            }
        }
        for node in known.keys() {
            if !current.contains_key(node) {
                peer_net.remove_peer(node);
            }
        }
        known = current;
        replicator.set_members(
            live.iter()
                .filter(|m| known.contains_key(&m.node_id))
                .map(|m| (m.node_id.clone(), m.draining)),
        );
        replicator.set_not_ready(
            live.iter()
                .filter(|m| !m.ready && !m.draining)
                .map(|m| m.node_id.clone()),
        );
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Ready means: not draining, not fenced for its clock, discovery answered,
/// votes trusted (twice the skew budget after start in a cluster: see
/// `replication::votes`, rule R3), and caught up with a peer, or alone by design (nothing discovered and an
/// expected size of 1). Never a silent cluster of one because discovery failed;
/// never a node whose clock most peers disagree with (load balancers move its
/// clients away while it refuses calls).
async fn report_readiness(
    node: Arc<NodeInfo>,
    membership: Membership,
    discovery: watch::Receiver<DiscoveryStatus>,
    health: HealthReporter,
    expected_size: usize,
) {
    let mut last = None;
    let mut ticks = 0u64;
    loop {
        let alone_by_design = expected_size <= 1
            && matches!(&*discovery.borrow(), DiscoveryStatus::Found { peers } if peers.is_empty())
            && membership.live_members().len() <= 1;
        let discovered = !matches!(&*discovery.borrow(), DiscoveryStatus::Starting);
        if alone_by_design {
            node.replicator.mark_caught_up();
        }
        let ready = !node.draining.load(Ordering::Acquire)
            && !node.replicator.clock_fenced()
            && discovered
            && node.replicator.caught_up()
            && node.replicator.votes_trusted();
        node.ready.store(ready, Ordering::Release);
        if last != Some(ready) {
            membership.set_ready(ready).await;
            set_health(&health, ready).await;
            info!(ready, "readiness changed");
            last = Some(ready);
        }
        if ticks.is_multiple_of(25) {
            membership
                .set_tickets(node.replicator.store().count().total)
                .await;
        }
        ticks += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Open the data directory, merge what it holds into the store (records past
/// retention are dropped on the way, as on any merge), and keep every write
/// in it from now on.
fn open_journal(
    dir: &std::path::Path,
    sync: SyncPolicy,
    cluster: &str,
    replicator: &Arc<Replicator>,
) -> Result<SharedJournal, ServerError> {
    let started = std::time::Instant::now();
    let (journal, replayed) = Journal::open(dir, sync, cluster)?;
    let read = replayed.entries.len();
    let votes = replayed.votes.len();
    let cut_bytes = replayed.cut_bytes;
    let journal = Arc::new(journal);
    replicator.attach_journal(journal.clone(), replayed);
    info!(
        dir = %std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned()).display(),
        records = read,
        held = replicator.store().records(),
        votes,
        cut_bytes,
        took_ms = started.elapsed().as_millis() as u64,
        "tickets read back from the data directory"
    );
    Ok(journal)
}

/// The cluster a data directory belongs to: the id derived from the cluster
/// secret (the gossip cluster id, which reveals nothing of the secret), or
/// `none` for a node without one.
fn data_cluster_id(secret: Option<&ClusterSecret>) -> String {
    secret.map_or_else(|| "none".to_owned(), ClusterSecret::gossip_cluster_id)
}

/// The client API's TLS, when its files are configured.
fn api_tls(
    config: &NodeConfig,
    pem: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<Option<ApiTls>, ServerError> {
    let serve = |cert| {
        ApiTls::load(TlsSettings {
            cert,
            client_ca: config.tls_client_ca_file.clone(),
        })
        .map(Some)
        .map_err(ServerError::from)
    };
    match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(_), Some(_)) if pem.is_some() => Err(TlsError::Setting(
            "give the TLS certificate either as files (tls_cert_file, tls_key_file) or in TESSERA_TLS_CERT and TESSERA_TLS_KEY, not both",
        )
        .into()),
        (None, None) if pem.is_some() => {
            let (cert, key) = pem.unwrap_or_default();
            serve(CertSource::Pem { cert, key })
        }
        (Some(cert), Some(key)) => serve(CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        }),
        (None, None) if config.tls_client_ca_file.is_some() => {
            Err(TlsError::Setting("tls_client_ca_file needs tls_cert_file and tls_key_file").into())
        }
        (None, None) => Ok(None),
        _ => Err(TlsError::Setting("tls_cert_file and tls_key_file go together").into()),
    }
}

/// Report readiness for the ticket service and for the server as a whole
/// (service name ""), which is what most load balancers ask about.
async fn set_health(health: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
    if serving {
        health.set_serving::<TicketStoreServer<TicketApi>>().await;
    } else {
        health
            .set_not_serving::<TicketStoreServer<TicketApi>>()
            .await;
    }
}
