//! Cluster scenarios: several real nodes in one process on 127.0.0.1 (real gRPC
//! API, Noise peer connections, chitchat gossip), driven through
//! `tessera-client`; links are cut and healed, nodes killed and restarted.
//! Every wait is bounded.

#[allow(dead_code)] // not every helper is used here
mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera::clock::Clock;
use tessera::config::{DiscoveryMode, NodeConfig};
use tessera::secret::{ApiToken, ClusterSecret};
use tessera::server::{self, NodeHandle, NodeOptions};
use tessera::store::PutTicket;
use tessera_client::{Client, ClientConfig, Error, NewTicket};
use tonic_health::pb::health_check_response::ServingStatus;

const TEN_MIN: Duration = Duration::from_secs(600);

fn secret() -> ClusterSecret {
    ClusterSecret::new(b"an-example-cluster-secret-of-32-bytes-or-more").expect("secret")
}

/// The API token every test node requires and every test client sends.
const API_TOKEN: &str = "an-example-api-token-of-32-bytes-or-more";

fn api_token() -> ApiToken {
    ApiToken::new(API_TOKEN.as_bytes()).expect("token")
}

/// Client settings with the cluster's API token.
/// Clients carry the API token; a generous per-call timeout, because these
/// tests share 2 cores with each other (the protocol's own bounds are shorter).
fn client_config() -> ClientConfig {
    ClientConfig {
        token: Some(API_TOKEN.to_owned()),
        call_timeout: Duration::from_secs(15),
        ..ClientConfig::default()
    }
}

/// A free UDP port on 127.0.0.1 for gossip (chosen up front so every node
/// can be given every other's address as a seed).
fn free_gossip_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
}

/// A free TCP port on 127.0.0.1 (for `/metrics`).
fn free_tcp_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

struct Cluster {
    nodes: Vec<Option<NodeHandle>>,
    gossip: Vec<SocketAddr>,
    secret: ClusterSecret,
    /// Per node, how far its clock runs ahead of the system's (ms; absent: 0).
    clock_offsets_ms: Vec<i64>,
    /// Per node, where it serves `/metrics` (empty: nowhere).
    metrics: Vec<SocketAddr>,
}

impl Cluster {
    /// Start `size` nodes seeded with each other and wait until all are ready.
    async fn start(size: usize) -> Cluster {
        Cluster::start_with_metrics(size, Vec::new()).await
    }

    /// [`Cluster::start`], node `n` serving `/metrics` on `metrics[n]`.
    async fn start_with_metrics(size: usize, metrics: Vec<SocketAddr>) -> Cluster {
        let cluster = Cluster::launch(size, &[], metrics).await;
        cluster.wait_converged_membership().await;
        cluster
    }

    /// Start `size` nodes seeded with each other, node `n` on a clock shifted
    /// by `clock_offsets_ms[n]`, without waiting for anything.
    async fn launch(size: usize, clock_offsets_ms: &[i64], metrics: Vec<SocketAddr>) -> Cluster {
        let gossip: Vec<SocketAddr> = (0..size).map(|_| free_gossip_addr()).collect();
        let mut cluster = Cluster {
            nodes: Vec::new(),
            gossip,
            secret: secret(),
            clock_offsets_ms: clock_offsets_ms.to_vec(),
            metrics,
        };
        for n in 0..size {
            let node = cluster.start_node(n).await;
            cluster.nodes.push(Some(node));
        }
        cluster
    }

    /// Start one node per clock offset and wait until they see each other, the
    /// nodes on the true clock (offset 0) are ready, and every node has
    /// reported a peer's skew (frames have crossed both ways).
    async fn launch_with_skewed_clocks(clock_offsets_ms: &[i64]) -> Cluster {
        let size = clock_offsets_ms.len();
        let honest: Vec<usize> = (0..size).filter(|&n| clock_offsets_ms[n] == 0).collect();
        let cluster = Cluster::launch(size, clock_offsets_ms, Vec::new()).await;
        let formed = wait_until(Duration::from_secs(30), || {
            cluster.running().all(|n| live_ids(n).len() == size)
                && honest.iter().all(|&n| cluster.node(n).is_ready())
        })
        .await;
        assert!(formed, "cluster did not form: {}", cluster.describe());
        let compared = wait_until(Duration::from_secs(10), || {
            cluster.running().all(|node| skew_reports(node) > 0)
        })
        .await;
        assert!(compared, "no skew reported: {}", cluster.describe());
        cluster
    }

    fn config(&self, n: usize) -> NodeConfig {
        NodeConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            node_id: format!("node-{n}"),
            discovery: Some(DiscoveryMode::Static),
            seeds: self.gossip.iter().map(|a| a.to_string()).collect(),
            expected_size: Some(self.gossip.len()),
            gossip_listen: Some(self.gossip[n]),
            peer_listen: Some("127.0.0.1:0".parse().expect("addr")),
            anti_entropy_interval: Duration::from_millis(500),
            discovery_interval: Duration::from_secs(1),
            data_dir: None,
            metrics_listen: self.metrics.get(n).copied(),
            ..NodeConfig::default()
        }
    }

    async fn start_node(&self, n: usize) -> NodeHandle {
        server::start_with(
            self.config(n),
            NodeOptions {
                secret: Some(self.secret.clone()),
                api_token: Some(api_token()),
                clock: self
                    .clock_offsets_ms
                    .get(n)
                    .map(|&offset| Clock::system().with_offset(offset)),
                ..NodeOptions::default()
            },
        )
        .await
        .expect("node starts")
    }

    fn node(&self, n: usize) -> &NodeHandle {
        self.nodes[n].as_ref().expect("node running")
    }

    fn running(&self) -> impl Iterator<Item = &NodeHandle> {
        self.nodes.iter().flatten()
    }

    async fn client(&self, n: usize) -> Client {
        Client::connect_with([self.node(n).api_addr().to_string()], client_config())
            .await
            .expect("client")
    }

    /// A client given every running node's address, in order.
    async fn client_for_all(&self) -> Client {
        let addrs: Vec<String> = self.running().map(|n| n.api_addr().to_string()).collect();
        Client::connect_with(
            addrs,
            ClientConfig {
                call_timeout: Duration::from_secs(5),
                ..client_config()
            },
        )
        .await
        .expect("client")
    }

    /// Wait (bounded) until every running node sees every running node live
    /// and reports ready.
    async fn wait_converged_membership(&self) {
        let expected: HashSet<String> = self.running().map(|n| n.node_id().to_owned()).collect();
        let ok = wait_until(Duration::from_secs(30), || {
            self.running().all(|node| {
                let live: HashSet<String> = live_ids(node).into_iter().collect();
                node.is_ready() && live == expected
            })
        })
        .await;
        assert!(ok, "cluster did not form: {}", self.describe());
    }

    /// Wait (bounded) until every running node holds the same records.
    async fn wait_converged_data(&self) -> Duration {
        let start = Instant::now();
        let ok = wait_until(Duration::from_secs(60), || {
            let mut digests = self.running().map(|n| n.store().digests());
            let first = digests.next();
            digests.all(|d| Some(&d) == first.as_ref())
        })
        .await;
        assert!(ok, "data did not converge: {}", self.describe());
        start.elapsed()
    }

    /// Cut every link between `side` and the other running nodes, both ways.
    fn partition(&self, side: &[usize]) {
        for (a, node_a) in self.nodes.iter().enumerate() {
            for (b, node_b) in self.nodes.iter().enumerate() {
                if let (Some(node_a), Some(node_b)) = (node_a, node_b)
                    && side.contains(&a) != side.contains(&b)
                {
                    node_a.cut_from(node_b);
                }
            }
        }
    }

    fn heal(&self) {
        for node in self.running() {
            node.heal();
        }
    }

    fn describe(&self) -> String {
        self.running()
            .map(|n| {
                let live = live_ids(n);
                format!(
                    "{}: ready={} live={live:?} records={}",
                    n.node_id(),
                    n.is_ready(),
                    n.store().records()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Stop every running node gracefully, all at once (bounded).
    async fn stop_all(mut self) {
        let stops = self
            .nodes
            .iter_mut()
            .filter_map(Option::take)
            .map(|node| tokio::time::timeout(Duration::from_secs(20), node.stop()));
        for stopped in futures::future::join_all(stops).await {
            assert!(stopped.is_ok(), "a node did not stop within 20 s");
        }
    }
}

/// Ids of the members `node` sees live.
fn live_ids(node: &NodeHandle) -> Vec<String> {
    node.membership()
        .map(|m| {
            m.live_members()
                .iter()
                .map(|m| m.node_id.to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Poll `condition` every 50 ms until it holds or `limit` passes.
async fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    condition()
}

fn st(id: &str) -> NewTicket {
    NewTicket::new(id, Duration::from_secs(60)).max_uses(1)
}

/// `/metrics` of a cluster node: members by state, each peer's clock, the
/// replication pushes of the writes made and anti-entropy rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_nodes_metrics_show_its_peers_and_its_replication() {
    use common::scrape::{counter, gauge, scrape, value_of};
    let metrics = (0..3).map(|_| free_tcp_addr()).collect();
    let cluster = Cluster::start_with_metrics(3, metrics).await;
    let client = cluster.client(0).await;
    for n in 0..20 {
        client
            .put(NewTicket::new(
                format!("TGT-{n}-metrics"),
                Duration::from_secs(60),
            ))
            .await
            .unwrap();
    }
    let pushes = |scrape: &common::scrape::Scrape| match value_of(
        scrape,
        "tessera_replication_push_duration_seconds",
        &[],
    ) {
        Some(openmetrics_parser::OpenMetricsValue::Histogram(h)) => h.count.unwrap_or(0),
        other => panic!("no push histogram: {other:?}"),
    };
    // Each write is pushed to both peers; a push answered after the quorum
    // was met may still be on its way.
    let mut metrics = scrape(cluster.metrics[0]).await;
    for _ in 0..100 {
        if pushes(&metrics) >= 40 && counter(&metrics, "tessera_anti_entropy_rounds", &[]) > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        metrics = scrape(cluster.metrics[0]).await;
    }
    // At least the quorum's push of each write was acknowledged; at most
    // two per write were made.
    let pushed = pushes(&metrics);
    assert!((20..=40).contains(&pushed), "{pushed} pushes timed");
    assert!(counter(&metrics, "tessera_anti_entropy_rounds", &[]) > 0.0);
    assert_eq!(
        gauge(&metrics, "tessera_members", &[("state", "alive")]),
        3.0
    );
    assert_eq!(
        gauge(&metrics, "tessera_members", &[("state", "dead")]),
        0.0
    );
    for peer in ["node-1", "node-2"] {
        let skew = gauge(
            &metrics,
            "tessera_peer_clock_skew_seconds",
            &[("peer", peer)],
        );
        assert!(skew.abs() < 1.0, "{peer}: {skew} s on one machine");
    }
    let on_a_peer = scrape(cluster.metrics[1]).await;
    assert_eq!(
        gauge(&on_a_peer, "tessera_tickets", &[("kind", "TGT")]),
        20.0
    );
    assert_eq!(gauge(&on_a_peer, "tessera_ready", &[]), 1.0);
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_and_list_each_other() {
    let cluster = Cluster::start(3).await;
    for node in cluster.running() {
        assert_eq!(node.replicator().expected_size(), 3);
        assert_eq!(node.replicator().peers().len(), 2);
    }
    // Readiness travels by gossip: wait until node 0 sees everyone ready.
    let client = cluster.client(0).await;
    let mut members = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        members = client.members().await.unwrap();
        if members.iter().all(|m| m.ready) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: Vec<&str> = members.iter().map(|m| m.node_id.as_str()).collect();
    assert_eq!(ids, ["node-0", "node-1", "node-2"]);
    assert!(
        members.iter().all(|m| m.state == "alive" && m.ready),
        "{members:?}"
    );
    // Every node requires the API token.
    for node in cluster.running() {
        let stranger = Client::connect([node.api_addr().to_string()])
            .await
            .expect("client");
        assert!(matches!(
            stranger.members().await,
            Err(Error::Unauthenticated(_))
        ));
        assert_eq!(node.api_rejections(), 1);
    }
    cluster.stop_all().await;
}

/// Put on one node, consume on another at once: never a miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_on_one_node_then_consume_on_another_never_misses() {
    let cluster = Cluster::start(3).await;
    let clients = [
        cluster.client(0).await,
        cluster.client(1).await,
        cluster.client(2).await,
    ];
    let clients = Arc::new(clients);
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let clients = clients.clone();
        tasks.push(tokio::spawn(async move {
            let mut misses = Vec::new();
            for n in (worker..10_000).step_by(16) {
                let id = format!("ST-{n}-ryw");
                clients[n % 3].put(st(&id)).await.expect("put");
                if let Err(e) = clients[(n + 1) % 3].consume(&id).await {
                    misses.push(format!("{id}: {e}"));
                }
            }
            misses
        }));
    }
    let mut misses = Vec::new();
    for task in tasks {
        misses.extend(task.await.unwrap());
    }
    assert!(
        misses.is_empty(),
        "{} misses, e.g. {:?}",
        misses.len(),
        &misses[..misses.len().min(5)]
    );
    cluster.stop_all().await;
}

/// 1,000 single-use tickets, each consumed concurrently through 3 nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tickets_raced_through_three_nodes_are_each_consumed_once() {
    let cluster = Cluster::start(3).await;
    let clients = Arc::new([
        cluster.client(0).await,
        cluster.client(1).await,
        cluster.client(2).await,
    ]);
    for n in 0..1_000 {
        clients[n % 3]
            .put(st(&format!("ST-{n}-race")))
            .await
            .unwrap();
    }

    // Every ticket is raced by three concurrent consumes, one through each
    // node; tickets go in waves of 100 (300 calls in flight) so that 2 shared
    // cores in a debug build measure the protocol, not an overload.
    let mut tasks = Vec::new();
    let mut outcomes = Vec::new();
    for n in 0..1_000 {
        for node in 0..3 {
            let clients = clients.clone();
            tasks.push(tokio::spawn(async move {
                let outcome = clients[node].consume(&format!("ST-{n}-race")).await;
                (n, outcome)
            }));
        }
        if tasks.len() >= 300 {
            for task in tasks.drain(..) {
                outcomes.push(task.await.unwrap());
            }
        }
    }
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    let mut successes = vec![0u32; 1_000];
    let mut failures: Vec<Vec<String>> = vec![Vec::new(); 1_000];
    for (n, outcome) in outcomes {
        match outcome {
            Ok(ticket) => {
                assert_eq!(ticket.uses, 1);
                successes[n] += 1;
            }
            Err(e) => failures[n].push(e.to_string()),
        }
    }
    let wrong: Vec<String> = successes
        .iter()
        .enumerate()
        .filter(|(_, s)| **s != 1)
        .map(|(n, s)| format!("ST-{n}: {s} successes, failures {:?}", failures[n]))
        .collect();
    assert!(wrong.is_empty(), "not exactly one success: {wrong:?}");
    // Double spends are impossible by construction; a ticket with no success at
    // all would mean a lost decision. Every failure must be a clean refusal.
    for reasons in &failures {
        for reason in reasons {
            assert!(
                reason.contains("not found") || reason.contains("unavailable"),
                "unexpected failure: {reason}"
            );
        }
    }
    cluster.stop_all().await;
}

/// A logout on the majority side of a partition wins over touches and grants
/// on the minority side; the minority refuses consumes with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_during_a_partition_stays_logged_out_after_the_heal() {
    let cluster = Cluster::start(3).await;
    let majority = cluster.client(0).await;
    let minority = cluster.client(2).await;
    majority
        .put(NewTicket::new("TGT-1-part", TEN_MIN).principal("alice"))
        .await
        .unwrap();
    majority
        .put(st("ST-1-part").parent("TGT-1-part"))
        .await
        .unwrap();
    cluster.wait_converged_data().await;

    cluster.partition(&[2]);
    let err = minority.consume("ST-1-part").await.unwrap_err();
    assert!(
        matches!(&err, Error::Unavailable(m) if m.contains("majority")),
        "minority consume: {err}"
    );
    assert_eq!(majority.delete_for("alice").await.unwrap(), 2);
    // Once the minority node sees itself alone, it still counts its write
    // quorum against the cluster's size: it keeps what it is given but
    // acknowledges nothing it alone holds.
    let alone = wait_until(Duration::from_secs(10), || {
        cluster.node(2).membership().unwrap().live_members().len() == 1
    })
    .await;
    assert!(alone, "{}", cluster.describe());
    let touched = minority.touch("TGT-1-part").await;
    assert!(
        matches!(&touched, Err(Error::Unavailable(m)) if m.contains("write reached 1 of the 2")),
        "a touch on the lone minority node: {touched:?}"
    );
    // A grant on the minority side, concurrent with the logout.
    let _ = minority.put(st("ST-2-part").parent("TGT-1-part")).await;

    cluster.heal();
    let took = cluster.wait_converged_data().await;
    eprintln!("converged {took:?} after the heal");
    for n in 0..3 {
        let client = cluster.client(n).await;
        for id in ["TGT-1-part", "ST-1-part", "ST-2-part"] {
            assert!(
                client.get(id).await.unwrap_err().is_not_found(),
                "{id} is back on node-{n}"
            );
        }
        assert!(client.sessions_for("alice").await.unwrap().is_empty());
    }
    cluster.stop_all().await;
}

/// kill -9 of a node under a write load: every acknowledged ticket is still
/// readable on the survivors, and the dead node leaves the live sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_node_kill() {
    let mut cluster = Cluster::start(3).await;
    let writer = cluster.client_for_all().await;
    let writing = tokio::spawn(async move {
        let mut acked = Vec::new();
        let start = Instant::now();
        for n in 0..3_000 {
            if start.elapsed() > Duration::from_secs(30) {
                break;
            }
            let id = format!("TGT-{n}-kill");
            if writer.put(NewTicket::new(&id, TEN_MIN)).await.is_ok() {
                acked.push(id);
            }
        }
        acked
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let victim = cluster.nodes[0].take().expect("node 0");
    let victim_id = victim.node_id().to_owned();
    victim.kill().await;
    let killed_at = Instant::now();
    let gone = wait_until(Duration::from_secs(10), || {
        cluster.running().all(|n| {
            n.membership()
                .is_some_and(|m| m.live_members().iter().all(|m| *m.node_id != *victim_id))
        })
    })
    .await;
    assert!(gone, "killed node still live: {}", cluster.describe());
    let detected = killed_at.elapsed();
    eprintln!("killed node left every live set after {detected:?}");
    assert!(detected <= Duration::from_secs(5), "took {detected:?}");

    let acked = writing.await.unwrap();
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );
    for n in [1, 2] {
        let client = cluster.client(n).await;
        let mut lost = Vec::new();
        for id in &acked {
            if client.get(id).await.is_err() {
                lost.push(id.clone());
            }
        }
        assert!(
            lost.is_empty(),
            "node-{n} lost {} of {} acknowledged tickets, e.g. {:?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(5)]
        );
    }
    cluster.stop_all().await;
}

/// A node that joins late (or restarts empty) catches up in bulk before it
/// reports ready, and then serves reads of old tickets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_node_catches_up_before_it_reports_ready() {
    let mut cluster = Cluster::start(3).await;
    let late = cluster.nodes[2].take().expect("node 2");
    late.stop().await.unwrap();
    // 100,000 tickets written while node 2 is away (through the replication
    // layer in-process, to keep the test fast).
    let writer = cluster.node(0).replicator().clone();
    let mut puts = Vec::new();
    for chunk in 0..100 {
        let writer = writer.clone();
        puts.push(tokio::spawn(async move {
            for n in chunk * 1_000..(chunk + 1) * 1_000 {
                writer
                    .put(PutTicket {
                        id: format!("TGT-{n}-late"),
                        ttl_ms: 600_000,
                        payload: bytes::Bytes::from_static(b"session"),
                        ..PutTicket::default()
                    })
                    .await
                    .expect("put");
            }
        }));
    }
    for put in puts {
        put.await.unwrap();
    }
    let restarted_at = Instant::now();
    cluster.nodes[2] = Some(cluster.start_node(2).await);
    let ready = wait_until(Duration::from_secs(60), || cluster.node(2).is_ready()).await;
    assert!(ready, "late node never ready: {}", cluster.describe());
    let caught_up = restarted_at.elapsed();
    let held = cluster.node(2).store().count().total;
    eprintln!("late node ready after {caught_up:?} holding {held} tickets");
    assert!(held >= 100_000, "ready with only {held} tickets");
    let client = cluster.client(2).await;
    client.get("TGT-0-late").await.unwrap();
    client.get("TGT-99999-late").await.unwrap();
    cluster.stop_all().await;
}

/// A process without the secret can reach every port and still neither reads
/// nor writes a ticket nor joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_secret_never_joins_the_data_plane() {
    let cluster = Cluster::start(2).await;
    cluster
        .client(0)
        .await
        .put(NewTicket::new("TGT-1-secret", TEN_MIN))
        .await
        .unwrap();
    let mut config = cluster.config(0);
    config.node_id = "intruder".into();
    config.gossip_listen = Some(free_gossip_addr());
    let intruder = server::start_with(
        config,
        NodeOptions {
            secret: Some(
                ClusterSecret::new(b"a-different-secret-that-is-also-32-bytes-long").unwrap(),
            ),
            api_token: Some(api_token()),
            ..NodeOptions::default()
        },
    )
    .await
    .unwrap();
    // Nor does a client that reaches the API port without the API token.
    let stranger = Client::connect([cluster.node(0).api_addr().to_string()])
        .await
        .expect("client");
    assert!(matches!(
        stranger.get("TGT-1-secret").await,
        Err(Error::Unauthenticated(_))
    ));
    assert!(matches!(
        stranger.put(NewTicket::new("TGT-2-secret", TEN_MIN)).await,
        Err(Error::Unauthenticated(_))
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!intruder.is_ready(), "the intruder must not catch up");
    assert!(!intruder.store().holds("TGT-1-secret"));
    assert_eq!(intruder.store().records(), 0);
    assert!(
        cluster
            .running()
            .all(|n| !n.store().holds("TGT-2-secret") && n.store().records() == 1),
        "a put without the API token wrote something"
    );
    for node in cluster.running() {
        let live = node.membership().unwrap().live_members();
        assert!(
            live.iter().all(|m| &*m.node_id != "intruder"),
            "gossip mixed"
        );
    }
    let rejected: u64 = cluster
        .running()
        .map(|n| n.peer_net().unwrap().stats().handshakes_rejected)
        .sum();
    eprintln!("handshakes rejected: {rejected}");
    intruder.kill().await;
    cluster.stop_all().await;
}

/// Draining: a node stopping gracefully loses nothing, and clients given
/// every address move on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_loses_nothing() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client_for_all().await;
    for n in 0..200 {
        client
            .put(NewTicket::new(format!("TGT-{n}-leave"), TEN_MIN))
            .await
            .unwrap();
    }
    let leaving = cluster.nodes[0].take().unwrap();
    leaving.stop().await.unwrap();
    for n in 0..200 {
        client.get(&format!("TGT-{n}-leave")).await.unwrap();
    }
    cluster.stop_all().await;
}

/// A node whose discovery fails never reports ready: it must not pass for a
/// cluster of one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_discovery_fails_reports_not_ready() {
    let cluster = Cluster {
        nodes: Vec::new(),
        gossip: vec![free_gossip_addr()],
        secret: secret(),
        clock_offsets_ms: Vec::new(),
        metrics: Vec::new(),
    };
    let mut config = cluster.config(0);
    config.seeds = vec!["no-such-host.invalid:7946".into()];
    let node = server::start_with(
        config,
        NodeOptions {
            secret: Some(cluster.secret.clone()),
            api_token: Some(api_token()),
            ..NodeOptions::default()
        },
    )
    .await
    .expect("node starts");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!node.is_ready(), "discovery fails, yet the node says ready");
    assert_eq!(
        common::health(&node).await,
        ServingStatus::NotServing as i32
    );
    node.stop().await.unwrap();
}

/// Garbage datagrams on the gossip port change nothing: the cluster stays
/// formed and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_gossip_port_changes_nothing() {
    let cluster = Cluster::start(3).await;
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = cluster.gossip[0];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for n in 0..500 {
        let len = [0, 1, 7, 64, 1_200, 9_000, 60_000][n % 7];
        let datagram: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = socket.send_to(&datagram, target);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.wait_converged_membership().await;
    let client = cluster.client(1).await;
    client.put(st("ST-1-garbage")).await.unwrap();
    cluster
        .client(0)
        .await
        .consume("ST-1-garbage")
        .await
        .unwrap();
    cluster.stop_all().await;
}

/// A node whose clock runs 30 s ahead (budget 1 s) changes no expiry decision
/// of the others. Unfenced, its sweeper tombstones tickets it believes expired
/// (a 40 s ticket 10 s after the put, an idle session at once, as every touch
/// taken on the honest nodes looks 30 s old there) and anti-entropy carries the
/// tombstones to the honest nodes, where remove-wins kills live tickets. It must
/// fence itself instead: no expiry tombstones, not ready, every call refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_clock_runs_ahead_fences_itself_and_kills_no_ticket() {
    const AHEAD_MS: i64 = 30_000;
    let cluster = Cluster::launch_with_skewed_clocks(&[0, 0, AHEAD_MS]).await;
    // A moment more for the fast node's fence to follow.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let a = cluster.client(0).await;
    let b = cluster.client(1).await;
    let start = Instant::now();
    let short = "ST-1-skew";
    let long = "TGT-1-skew";
    let idle = "TGT-2-skew";
    a.put(NewTicket::new(short, Duration::from_secs(8)))
        .await
        .unwrap();
    a.put(NewTicket::new(long, Duration::from_secs(40)))
        .await
        .unwrap();
    a.put(NewTicket::new(idle, TEN_MIN).idle(Duration::from_secs(4)))
        .await
        .unwrap();
    // 13 s of a session in use through A: every ticket stays live on A and B
    // until its own deadline (the short one is checked with a second's margin).
    let mut last_touch = Instant::now();
    while start.elapsed() < Duration::from_secs(13) {
        if let Err(e) = a.touch(idle).await {
            panic!(
                "{idle} died early: touch on node-0, {:?} after the put: {e}",
                start.elapsed()
            );
        }
        last_touch = Instant::now();
        let mut expect_live = vec![long, idle];
        if start.elapsed() < Duration::from_secs(7) {
            expect_live.push(short);
        }
        for (name, client) in [("node-0", &a), ("node-1", &b)] {
            for id in &expect_live {
                if let Err(e) = client.get(id).await {
                    panic!(
                        "{id} died early on {name}, {:?} after the put: {e}",
                        start.elapsed()
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The short ticket expired on time, the idle one expires on time once the
    // touches stop, the long one lives on.
    for client in [&a, &b] {
        assert!(client.get(short).await.unwrap_err().is_not_found());
    }
    let idle_end = last_touch + Duration::from_secs(4);
    let mut idle_gone = false;
    while Instant::now() < idle_end + Duration::from_millis(1_500) {
        let a_gone = a.get(idle).await.is_err_and(|e| e.is_not_found());
        let b_gone = b.get(idle).await.is_err_and(|e| e.is_not_found());
        if Instant::now() + Duration::from_millis(200) < idle_end {
            assert!(!a_gone && !b_gone, "{idle} died before its idle timeout");
        } else if a_gone && b_gone {
            idle_gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(idle_gone, "{idle} outlived its idle timeout on A or B");
    for client in [&a, &b] {
        client.get(long).await.expect("the 40 s ticket lives on");
    }

    // The fast node fenced itself: not ready (health and members say so) and
    // refusing calls with a status clients fail over on.
    let fast = cluster.node(2);
    assert!(!fast.is_ready(), "{}", cluster.describe());
    assert_eq!(common::health(fast).await, ServingStatus::NotServing as i32);
    let shown_not_ready = async {
        for _ in 0..50 {
            let members = a.members().await.unwrap();
            if members.iter().any(|m| m.node_id == "node-2" && !m.ready) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(shown_not_ready.await, "members still show node-2 ready");
    let err = cluster.client(2).await.get(long).await.unwrap_err();
    assert!(
        matches!(&err, Error::Unavailable(m) if m.contains(": fenced: ")),
        "fast node answered: {err}"
    );
    let stats = cluster.client(0).await.stats().await.unwrap();
    assert!(
        !stats.clock_fenced && stats.clock_skew_reports > 0,
        "{stats:?}"
    );
    assert!(skew_reports(cluster.node(1)) > 0);
    assert!(!cluster.node(1).replicator().clock_fenced());
    assert!(fast.replicator().clock_fenced());
    assert_eq!(
        fast.replicator()
            .stats
            .clock_fences
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    cluster.stop_all().await;
}

/// Two nodes, one 30 s ahead: neither can tell whose clock is wrong, so neither
/// fences, but both hold expiry. Unheld, the fast node's sweeper tombstoned an
/// idle session at once (every touch taken on the honest node looks 30 s old
/// there) and anti-entropy carried the tombstone back, killing the session on
/// the honest node too. The same window was open on the skewed node of three
/// until it had heard from its second peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_of_two_a_clock_ahead_kills_no_ticket() {
    let cluster = Cluster::launch_with_skewed_clocks(&[0, 30_000]).await;

    let a = cluster.client(0).await;
    let session = "TGT-1-pair";
    // The fast node is in doubt of its clock: its copies do not count, so
    // with two nodes no write is acknowledged. Each is still kept and pushed.
    let unacknowledged = |outcome: &Result<_, Error>| matches!(outcome, Err(Error::Unavailable(m)) if m.contains("write reached 1 of the 2"));
    let put = a
        .put(NewTicket::new(session, TEN_MIN).idle(Duration::from_secs(4)))
        .await
        .map(|_| ());
    assert!(unacknowledged(&put), "{put:?}");
    // 6 s of use through the honest node, anti-entropy rounds every 500 ms.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        let touched = a.touch(session).await.map(|_| ());
        assert!(unacknowledged(&touched), "{touched:?}");
        if let Err(e) = a.get(session).await {
            panic!(
                "{session} died early, {:?} after the put: {e}",
                start.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for n in [0, 1] {
        let replicator = cluster.node(n).replicator();
        assert!(!replicator.clock_fenced(), "node-{n}: a pair only reports");
        assert!(replicator.expiry_held(), "node-{n} takes expiry decisions");
    }
    cluster.stop_all().await;
}

fn skew_reports(node: &NodeHandle) -> u64 {
    node.replicator()
        .stats
        .clock_skew_reports
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Review #11: two nodes that restart together, while the only node holding
/// the data is out of their reach, must not vouch for each other: each has
/// synced with an empty peer that is not ready itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_restarting_together_do_not_declare_each_other_caught_up() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client(0).await;
    for n in 0..50 {
        client
            .put(NewTicket::new(format!("TGT-{n}-together"), TEN_MIN))
            .await
            .unwrap();
    }
    cluster.wait_converged_data().await;
    // Node 0 stops hearing nodes 1 and 2 (their ids and gossip addresses
    // stay the same across the restart).
    for n in [1, 2] {
        cluster.node(0).cut_from(cluster.node(n));
    }
    for n in [1, 2] {
        cluster.nodes[n].take().expect("running").kill().await;
    }
    for n in [1, 2] {
        let node = cluster.start_node(n).await;
        cluster.nodes[n] = Some(node);
    }
    // They find each other and sync; give them the time to claim readiness.
    let met = wait_until(Duration::from_secs(15), || {
        [1, 2].iter().all(|&n| live_ids(cluster.node(n)).len() == 2)
    })
    .await;
    assert!(met, "the restarted nodes never met: {}", cluster.describe());
    tokio::time::sleep(Duration::from_secs(5)).await;
    for n in [1, 2] {
        let node = cluster.node(n);
        assert!(
            !node.is_ready(),
            "node-{n} ready holding {} of 50 tickets: {}",
            node.store().count().total,
            cluster.describe()
        );
    }
    // Healed, they catch up from node 0 and become ready with the data.
    cluster.heal();
    let ready = wait_until(Duration::from_secs(30), || {
        [1, 2].iter().all(|&n| cluster.node(n).is_ready())
    })
    .await;
    assert!(ready, "never ready after the heal: {}", cluster.describe());
    for n in [1, 2] {
        assert!(cluster.node(n).store().count().total >= 50, "node-{n}");
    }
    cluster.stop_all().await;
}

/// Watch every node of `cluster` for TGT expiries; each report lands in the
/// returned list as (ticket id, reporting node).
async fn watch_expiries(
    cluster: &Cluster,
    nodes: &[usize],
) -> Arc<std::sync::Mutex<Vec<(String, String)>>> {
    use tessera_client::{EventType, WatchFilter, WatchItem};
    let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
    for &n in nodes {
        let filter = WatchFilter {
            kinds: vec!["TGT".into()],
            events: vec![EventType::Expired],
            resume_after: None,
        };
        let mut stream = cluster.client(n).await.watch(filter).await.expect("watch");
        let reports = reports.clone();
        tokio::spawn(async move {
            while let Ok(Some(item)) = stream.message().await {
                if let WatchItem::Event(event) = item {
                    reports
                        .lock()
                        .unwrap()
                        .push((event.ticket.id, event.node_id));
                }
            }
        });
    }
    reports
}

/// Ids reported, with how often.
fn report_counts(
    reports: &std::sync::Mutex<Vec<(String, String)>>,
) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for (id, _) in reports.lock().unwrap().iter() {
        *counts.entry(id.clone()).or_insert(0) += 1;
    }
    counts
}

/// Single logout needs each expired TGT reported once across the fleet: in
/// a 3-node cluster whose every node is watched, every expiry (hard deadline
/// and idle timeout) is reported, and by one node only, also once the
/// handoff time has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_expiry_is_reported_by_exactly_one_node_of_the_cluster() {
    let cluster = Cluster::start(3).await;
    let reports = watch_expiries(&cluster, &[0, 1, 2]).await;
    let writer = cluster.client_for_all().await;
    let mut ids = Vec::new();
    for n in 0..60 {
        let id = format!("TGT-{n}-expiry");
        let ticket = if n % 2 == 0 {
            NewTicket::new(&id, Duration::from_millis(1_500))
        } else {
            NewTicket::new(&id, TEN_MIN).idle(Duration::from_millis(1_000))
        };
        writer
            .put(ticket.payload(b"services".to_vec()))
            .await
            .expect("put");
        ids.push(id);
    }
    let all_reported = wait_until(Duration::from_secs(30), || {
        report_counts(&reports).len() == ids.len()
    })
    .await;
    let counts = report_counts(&reports);
    assert!(
        all_reported,
        "{} of {} expiries reported: {}",
        counts.len(),
        ids.len(),
        cluster.describe()
    );
    // Past the handoff time: a second report would have come by now.
    tokio::time::sleep(tessera::replication::reports::EXPIRY_HANDOFF + Duration::from_secs(2))
        .await;
    let counts = report_counts(&reports);
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "reported more than once: {repeated:?}");
    let reporters: HashSet<String> = reports
        .lock()
        .unwrap()
        .iter()
        .map(|(_, node)| node.clone())
        .collect();
    assert!(
        reporters.len() > 1,
        "one node reported everything: {reporters:?}"
    );
    cluster.stop_all().await;
}

/// A node killed as its tickets expire cannot report them: the node that is
/// their arbiter once it is gone does, so no expiry goes unreported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiries_a_killed_node_was_to_report_are_reported_by_another() {
    let mut cluster = Cluster::start(3).await;
    let reports = watch_expiries(&cluster, &[0, 1, 2]).await;
    let writer = cluster.client_for_all().await;
    let mut ids = Vec::new();
    let written = Instant::now();
    for n in 0..90 {
        let id = format!("TGT-{n}-wave");
        writer
            .put(NewTicket::new(&id, Duration::from_millis(2_500)))
            .await
            .expect("put");
        ids.push(id);
    }
    // Killed just before the wave: node-0's share is expired on the others'
    // clocks while their view still names node-0 as its reporter.
    tokio::time::sleep(Duration::from_millis(2_300).saturating_sub(written.elapsed())).await;
    cluster.nodes[0].take().expect("node 0").kill().await;
    let all_reported = wait_until(Duration::from_secs(40), || {
        report_counts(&reports).len() == ids.len()
    })
    .await;
    let counts = report_counts(&reports);
    let missing: Vec<_> = ids.iter().filter(|id| !counts.contains_key(*id)).collect();
    assert!(
        all_reported,
        "{} expiries never reported, e.g. {:?}: {}",
        missing.len(),
        &missing[..missing.len().min(5)],
        cluster.describe()
    );
    let stand_ins: u64 = (1..3)
        .map(|n| {
            cluster
                .node(n)
                .replicator()
                .stats
                .watch_handoffs_reported
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    eprintln!("reported by a stand-in: {stand_ins} of {}", ids.len());
    cluster.stop_all().await;
}
