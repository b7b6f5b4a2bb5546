//! Replication scenarios over the in-memory network: several nodes in one
//! process, links cut and healed at will.

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::clock::{Clock, HlcClock};
use crate::peer::ClockReading;
use crate::peer::mem::MemHub;
use crate::store::{PutTicket, StoreConfig};
use tessera_proto::peer::BucketSync;

const EPOCH: Millis = 1_700_000_000_000;

struct TestCluster {
    hub: Arc<MemHub>,
    nodes: Vec<Arc<Replicator>>,
    config: ReplicationConfig,
    offsets_ms: Vec<i64>,
    /// When the cluster's clocks read `EPOCH`: a restarted node's clock
    /// goes on from the same time.
    started: tokio::time::Instant,
    /// Each node's data directory (`data/node-<n>`), when it has one.
    data: Option<tempfile::TempDir>,
}

/// Node `n` of a test cluster: store, replicator and a place on the hub;
/// its clock reads `now_ms` plus its offset.
fn start_node(
    hub: &Arc<MemHub>,
    n: usize,
    config: &ReplicationConfig,
    now_ms: Millis,
    clock_offset_ms: i64,
) -> Arc<Replicator> {
    let node: NodeId = format!("node-{n}").into();
    let clock = Clock::starting_at(now_ms).with_offset(clock_offset_ms);
    let store = Arc::new(Store::new(
        StoreConfig::default(),
        HlcClock::new(clock, node.clone()),
    ));
    let replicator = Replicator::new(store, config.clone());
    let network = hub.join(node, replicator.clone());
    replicator.attach(Arc::new(network));
    replicator
}

impl TestCluster {
    fn new(size: usize, config: ReplicationConfig) -> TestCluster {
        TestCluster::with_clocks(config, &vec![0; size])
    }

    /// A cluster whose node `n` runs its clock `offsets_ms[n]` ahead.
    fn with_clocks(config: ReplicationConfig, offsets_ms: &[i64]) -> TestCluster {
        let hub = MemHub::new();
        let nodes = offsets_ms
            .iter()
            .enumerate()
            .map(|(n, &offset)| {
                let node = start_node(&hub, n, &config, EPOCH, offset);
                // A first start: this node has never voted before.
                node.remember_votes_since(0);
                node
            })
            .collect();
        let cluster = TestCluster {
            hub,
            nodes,
            config,
            offsets_ms: offsets_ms.to_vec(),
            started: tokio::time::Instant::now(),
            data: None,
        };
        cluster.set_views(&(0..offsets_ms.len()).collect::<Vec<_>>());
        cluster
    }

    /// A cluster whose nodes keep their tickets and votes in a data
    /// directory each (sync `always`), as `--data-dir` does.
    fn with_data_dirs(size: usize, config: ReplicationConfig) -> TestCluster {
        let mut cluster = TestCluster::new(size, config);
        cluster.data = Some(tempfile::tempdir().unwrap());
        for n in 0..size {
            cluster.open_data_dir(n).unwrap();
            // A first start, as in `with_clocks`, now kept in the directory.
            cluster.nodes[n].remember_votes_since(0);
        }
        cluster
    }

    /// Open node `n`'s data directory, if the cluster keeps them, and take
    /// back what it holds, as `tessera serve` does at start.
    fn open_data_dir(&self, n: usize) -> Result<(), crate::journal::JournalError> {
        let Some(root) = &self.data else {
            return Ok(());
        };
        let dir = root.path().join(format!("node-{n}"));
        let (journal, replayed) = crate::journal::Journal::open(
            &dir,
            crate::journal::SyncPolicy::Always,
            "tessera-test",
        )?;
        self.nodes[n].attach_journal(Arc::new(journal), replayed);
        Ok(())
    }

    /// Node `n` dies (kill -9: everything in memory is gone) and starts again
    /// with the same id, on its data directory if it has one, else with an
    /// empty store. Its view is empty until set.
    async fn restart(&mut self, n: usize) {
        self.hub.leave(&self.id(n));
        let now = EPOCH + self.started.elapsed().as_millis() as Millis;
        self.nodes[n] = start_node(&self.hub, n, &self.config, now, self.offsets_ms[n]);
        // A task of the previous run (a background push) may still hold its
        // journal, and so the directory's lock, for a moment: the process
        // has not quite exited yet.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match self.open_data_dir(n) {
                Err(crate::journal::JournalError::InUse { .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                opened => break opened.unwrap(),
            }
        }
    }

    fn id(&self, n: usize) -> NodeId {
        self.nodes[n].node_id().clone()
    }

    /// Make each listed node see exactly the listed nodes as live.
    fn set_views(&self, members: &[usize]) {
        for &n in members {
            self.nodes[n].set_members(members.iter().map(|&m| (self.id(m), false)));
        }
    }

    /// Partition: `side` cannot reach anyone else, and views follow.
    fn isolate(&self, side: &[usize]) {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        let rest: Vec<usize> = all.iter().copied().filter(|n| !side.contains(n)).collect();
        for &a in side {
            for &b in &rest {
                self.hub.cut(&self.id(a), &self.id(b));
            }
        }
        self.set_views(side);
        self.set_views(&rest);
    }

    fn heal(&self) {
        self.hub.heal_all();
        self.set_views(&(0..self.nodes.len()).collect::<Vec<_>>());
    }

    /// Anti-entropy rounds between every pair until nothing differs.
    async fn converge(&self) {
        for _ in 0..3 {
            for a in &self.nodes {
                for b in &self.nodes {
                    if a.node_id() != b.node_id() {
                        let _ = a.sync_with(b.node_id()).await;
                    }
                }
            }
        }
    }
}

fn put(id: &str, ttl_ms: Millis) -> PutTicket {
    PutTicket {
        id: id.into(),
        payload: Bytes::from_static(b"payload"),
        ttl_ms,
        ..PutTicket::default()
    }
}

fn single_use(id: &str) -> PutTicket {
    PutTicket {
        max_uses: 1,
        ..put(id, 10_000)
    }
}

#[tokio::test]
async fn a_put_on_one_node_is_readable_on_another_even_before_the_push() {
    let cluster = TestCluster::new(3, ReplicationConfig::default());
    // The push from node 0 to node 2 is lost; node 1 gets it (quorum 2).
    cluster.hub.cut(&cluster.id(0), &cluster.id(2));
    for n in 0..200 {
        let id = format!("ST-{n}");
        cluster.nodes[0].put(single_use(&id)).await.unwrap();
        let got = cluster.nodes[2].consume(&id).await.unwrap();
        assert_eq!(got.uses, 1, "{id}");
    }
}

#[tokio::test]
async fn a_get_or_touch_on_a_node_the_push_missed_asks_the_peers() {
    let cluster = TestCluster::new(3, ReplicationConfig::default());
    cluster.hub.cut(&cluster.id(0), &cluster.id(2));
    for n in 0..100 {
        let id = format!("TGT-{n}");
        cluster.nodes[0].put(put(&id, 60_000)).await.unwrap();
        let got = if n % 2 == 0 {
            cluster.nodes[2].get(&id).await
        } else {
            cluster.nodes[2].touch(&id).await
        };
        assert_eq!(got.unwrap().id, id);
    }
    assert!(cluster.nodes[2].stats.read_repairs.load(Ordering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_consumes_through_three_nodes_succeed_exactly_once() {
    let cluster = Arc::new(TestCluster::new(3, ReplicationConfig::default()));
    for n in 0..1_000 {
        cluster.nodes[n % 3]
            .put(single_use(&format!("ST-{n}")))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for n in 0..1_000 {
        for node in 0..3 {
            let cluster = cluster.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("ST-{n}");
                (n, cluster.nodes[node].consume(&id).await.is_ok())
            }));
        }
    }
    let mut successes = vec![0; 1_000];
    for task in tasks {
        let (n, ok) = task.await.unwrap();
        successes[n] += usize::from(ok);
    }
    let wrong: Vec<_> = successes
        .iter()
        .enumerate()
        .filter(|(_, s)| **s != 1)
        .collect();
    assert!(
        wrong.is_empty(),
        "tickets without exactly one success: {wrong:?}"
    );
}

#[tokio::test]
async fn the_minority_side_refuses_consumes_and_the_majority_decides() {
    let cluster = TestCluster::new(3, ReplicationConfig::default());
    for n in 0..20 {
        cluster.nodes[0]
            .put(single_use(&format!("ST-{n}")))
            .await
            .unwrap();
    }
    cluster.converge().await;
    cluster.isolate(&[2]);
    for n in 0..10 {
        let err = cluster.nodes[2]
            .consume(&format!("ST-{n}"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Unavailable(m) if m.contains("majority")),
            "{err}"
        );
    }
    for n in 0..20 {
        cluster.nodes[n % 2]
            .consume(&format!("ST-{n}"))
            .await
            .unwrap();
    }
    cluster.heal();
    cluster.converge().await;
    for n in 0..20 {
        for node in &cluster.nodes {
            assert!(
                node.get(&format!("ST-{n}")).await.is_err(),
                "used once, dead everywhere"
            );
        }
    }
}

#[tokio::test]
async fn a_logout_during_a_partition_wins_over_touches_on_the_other_side() {
    let cluster = TestCluster::new(3, ReplicationConfig::default());
    cluster.nodes[0]
        .put(PutTicket {
            principal: Some("alice".into()),
            ..put("TGT-1", 60_000)
        })
        .await
        .unwrap();
    cluster.nodes[0]
        .put(PutTicket {
            parent: Some("TGT-1".into()),
            ..put("PGT-1", 60_000)
        })
        .await
        .unwrap();
    cluster.converge().await;
    cluster.isolate(&[2]);
    assert_eq!(cluster.nodes[0].delete("TGT-1").await.unwrap(), 2);
    // The other side keeps using the session and even grants from it. Alone
    // it reaches no write quorum (review #7): its calls fail, but what they
    // wrote is kept and spreads at the heal.
    let _ = cluster.nodes[2].touch("TGT-1").await;
    let _ = cluster.nodes[2]
        .update(
            "TGT-1",
            UpdateTicket {
                payload: Some(Bytes::from_static(b"new")),
                ..UpdateTicket::default()
            },
        )
        .await;
    let _ = cluster.nodes[2]
        .put(PutTicket {
            parent: Some("TGT-1".into()),
            ..put("ST-9", 10_000)
        })
        .await;
    cluster.heal();
    cluster.converge().await;
    for node in &cluster.nodes {
        for id in ["TGT-1", "PGT-1", "ST-9"] {
            assert_eq!(
                node.get(id).await.unwrap_err(),
                StoreError::NotFound,
                "{id}"
            );
        }
        assert_eq!(node.store().count().total, 0);
    }
}

#[tokio::test]
async fn a_node_that_missed_a_delete_never_brings_the_ticket_back() {
    let cluster = TestCluster::new(3, ReplicationConfig::default());
    cluster.nodes[0].put(put("TGT-1", 60_000)).await.unwrap();
    cluster.converge().await;
    cluster.hub.leave(&cluster.id(2)); // node 2 is down
    cluster.set_views(&[0, 1]);
    cluster.nodes[0].delete("TGT-1").await.unwrap();
    // Node 2 comes back with its stale copy.
    cluster.hub.join(cluster.id(2), cluster.nodes[2].clone());
    cluster.heal();
    cluster.converge().await;
    for node in &cluster.nodes {
        assert!(node.get("TGT-1").await.is_err());
    }
    assert_eq!(
        cluster.nodes[0].store().digests(),
        cluster.nodes[2].store().digests()
    );
}

#[tokio::test]
async fn anti_entropy_catches_up_a_new_node_in_bulk() {
    let cluster = TestCluster::new(3, ReplicationConfig::default());
    // Node 2 is away while 2,000 tickets are written.
    cluster.isolate(&[2]);
    for n in 0..2_000 {
        cluster.nodes[n % 2]
            .put(put(&format!("ST-{n}"), 60_000))
            .await
            .unwrap();
    }
    cluster.heal();
    let report = cluster.nodes[2].sync_with(&cluster.id(0)).await.unwrap();
    assert!(report.entries_received >= 2_000, "{report:?}");
    assert_eq!(cluster.nodes[2].store().count().total, 2_000);
    assert_eq!(
        cluster.nodes[0].store().digests(),
        cluster.nodes[2].store().digests()
    );
    let again = cluster.nodes[2].sync_with(&cluster.id(0)).await.unwrap();
    assert_eq!(again.buckets_differing, 0, "nothing left to repair");
}

/// Bucket sync pages of ~300 B: every differing bucket takes several round trips.
fn small_pages() -> ReplicationConfig {
    ReplicationConfig {
        sync_page_bytes: 300,
        ..ReplicationConfig::default()
    }
}

#[tokio::test]
async fn anti_entropy_pages_buckets_both_ways() {
    let cluster = TestCluster::new(3, small_pages());
    cluster.isolate(&[2]);
    for n in 0..2_000 {
        cluster.nodes[n % 2]
            .put(put(&format!("ST-{n}"), 60_000))
            .await
            .unwrap();
    }
    // Node 2 has tickets of its own that only it can send (written alone,
    // so not acknowledged: no write quorum on its side).
    for n in 0..500 {
        let _ = cluster.nodes[2].put(put(&format!("TGT-{n}"), 60_000)).await;
    }
    cluster.heal();
    let report = cluster.nodes[2].sync_with(&cluster.id(0)).await.unwrap();
    assert!(
        report.pages >= 2 * report.buckets_differing,
        "several pages per bucket: {report:?}"
    );
    assert_eq!(report.entries_sent, 500, "{report:?}");
    assert!(report.entries_received >= 2_000, "{report:?}");
    assert_eq!(cluster.nodes[2].store().count().total, 2_500);
    assert_eq!(cluster.nodes[0].store().count().total, 2_500);
    assert_eq!(
        cluster.nodes[0].store().digests(),
        cluster.nodes[2].store().digests()
    );
}

#[tokio::test]
async fn a_bucket_sync_without_a_cursor_gets_the_whole_bucket() {
    // What a node of an older version sends: no `after`, so no pages.
    let cluster = TestCluster::new(1, small_pages());
    for n in 0..2_000 {
        cluster.nodes[0]
            .put(put(&format!("ST-{n}"), 60_000))
            .await
            .unwrap();
    }
    let bucket = crate::store::digest::bucket_of("ST-0");
    let held = cluster.nodes[0]
        .store()
        .bucket_entries(bucket, |id, _| id.to_owned());
    let ask = |after: Option<String>| BucketSync {
        buckets: vec![bucket as u32],
        entries: Vec::new(),
        after,
    };
    let from: NodeId = "old-node".into();
    let Body::Entries(whole) = cluster.nodes[0]
        .handle_request(&from, Body::BucketSync(ask(None)))
        .await
    else {
        panic!("not entries");
    };
    assert_eq!(whole.entries.len(), held.len());
    assert!(!whole.more);
    let Body::Entries(first) = cluster.nodes[0]
        .handle_request(&from, Body::BucketSync(ask(Some(String::new()))))
        .await
    else {
        panic!("not entries");
    };
    assert!(first.more && first.entries.len() < held.len(), "a page");
}

#[tokio::test]
async fn write_quorum_all_fails_loudly_when_a_peer_is_unreachable() {
    let config = ReplicationConfig {
        write_quorum: WriteQuorum::All,
        call_timeout: Duration::from_millis(200),
        ..ReplicationConfig::default()
    };
    let cluster = TestCluster::new(3, config);
    cluster.nodes[0].put(put("ST-1", 10_000)).await.unwrap();
    cluster.hub.cut(&cluster.id(0), &cluster.id(2));
    let err = cluster.nodes[0].put(put("ST-2", 10_000)).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains("2 of the 3")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_updates_have_one_winner_per_version() {
    let cluster = Arc::new(TestCluster::new(3, ReplicationConfig::default()));
    for n in 0..100 {
        cluster.nodes[0]
            .put(put(&format!("TGT-{n}"), 60_000))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for n in 0..100 {
        let version = cluster.nodes[0]
            .get(&format!("TGT-{n}"))
            .await
            .unwrap()
            .version;
        for node in 0..3 {
            let cluster = cluster.clone();
            let version = version.clone();
            tasks.push(tokio::spawn(async move {
                let update = UpdateTicket {
                    payload: Some(Bytes::from(format!("from {node}"))),
                    if_version: Some(version),
                    ..UpdateTicket::default()
                };
                (
                    n,
                    cluster.nodes[node]
                        .update(&format!("TGT-{n}"), update)
                        .await
                        .is_ok(),
                )
            }));
        }
    }
    let mut wins = vec![0; 100];
    for task in tasks {
        let (n, ok) = task.await.unwrap();
        wins[n] += usize::from(ok);
    }
    assert!(wins.iter().all(|w| *w == 1), "{wins:?}");
}

#[test]
fn write_quorum_parses() {
    assert_eq!("all".parse(), Ok(WriteQuorum::All));
    assert_eq!("2".parse(), Ok(WriteQuorum::Nodes(2)));
    assert!("0".parse::<WriteQuorum>().is_err());
    assert!("most".parse::<WriteQuorum>().is_err());
}

#[tokio::test]
async fn a_peer_clock_outside_the_skew_budget_is_reported_and_not_followed() {
    let hub = MemHub::new();
    let make = |name: &str, offset_ms: i64| {
        let node: NodeId = name.into();
        let store = Arc::new(Store::new(
            StoreConfig::default(),
            HlcClock::new(
                Clock::starting_at(EPOCH).with_offset(offset_ms),
                node.clone(),
            ),
        ));
        let replicator = Replicator::new(store, ReplicationConfig::default());
        replicator.attach(Arc::new(hub.join(node, replicator.clone())));
        replicator
    };
    let honest = make("honest", 0);
    let fast = make("fast", 5_000);
    honest.set_members([(fast.node_id().clone(), false)]);
    fast.set_members([(honest.node_id().clone(), false)]);
    // Not acknowledged: the honest node, seeing one clock beyond the budget
    // and none within, is in doubt, and its copy does not count (review #8).
    let _ = fast.put(put("ST-1", 60_000)).await;
    assert!(honest.stats.clock_skew_reports.load(Ordering::Relaxed) >= 1);
    let stamp = honest.store().hlc().stamp();
    assert!(
        stamp.hlc.wall_ms < EPOCH + 5_000,
        "a clock 5 s ahead must not drag this node's stamps along"
    );
    // Within the budget, clocks are followed and nothing is reported.
    let near = make("near", 500);
    let reports = honest.stats.clock_skew_reports.load(Ordering::Relaxed);
    honest.set_members([(near.node_id().clone(), false)]);
    near.set_members([(honest.node_id().clone(), false)]);
    near.put(put("ST-2", 60_000)).await.unwrap();
    assert_eq!(
        honest.stats.clock_skew_reports.load(Ordering::Relaxed),
        reports
    );
}

// ---- clock fencing (the majority rule) ----

/// Feed `node` one frame from each of `peers`, their clocks `ahead_ms` off.
fn frames_from(node: &Replicator, peers: &[&str], ahead_ms: i64) {
    let now = node.store().hlc().clock().now_ms();
    for peer in peers {
        let wall_ms = now.saturating_add_signed(ahead_ms);
        let reading = ClockReading {
            hlc: hlc_to_wire(crate::clock::Hlc {
                wall_ms,
                logical: 0,
            }),
            physical_ms: Some(wall_ms),
        };
        node.observe_clock(&NodeId::from(*peer), reading);
    }
}

/// A node that sees `peers` live (the default 1 s budget).
fn node_seeing(peers: &[&str]) -> Arc<Replicator> {
    let store = Arc::new(Store::new(
        StoreConfig::default(),
        HlcClock::new(Clock::starting_at(EPOCH), "me".into()),
    ));
    let node = Replicator::new(store, ReplicationConfig::default());
    node.set_members(peers.iter().map(|p| (NodeId::from(*p), false)));
    node
}

#[tokio::test(start_paused = true)]
async fn two_nodes_report_skew_but_never_fence() {
    let node = node_seeing(&["b"]);
    frames_from(&node, &["b"], -30_000);
    assert!(!node.clock_fenced(), "one peer cannot tell who is wrong");
    assert_eq!(node.stats.clock_skew_reports.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_clock_most_peers_disagree_with_is_fenced_until_it_agrees() {
    let node = node_seeing(&["b", "c"]);
    frames_from(&node, &["b"], -30_000);
    assert!(!node.clock_fenced(), "one of two is not more than half");
    frames_from(&node, &["c"], -30_000);
    assert!(node.clock_fenced());
    assert!(node.clock_fenced(), "still, and counted once");
    assert_eq!(node.stats.clock_fences.load(Ordering::Relaxed), 1);
    // Within the budget (1 s) is agreement.
    frames_from(&node, &["b"], 900);
    assert!(
        !node.clock_fenced(),
        "a frame within budget clears the peer"
    );
    frames_from(&node, &["b"], -30_000);
    assert!(node.clock_fenced());
    assert_eq!(node.stats.clock_fences.load(Ordering::Relaxed), 2);
}

#[tokio::test(start_paused = true)]
async fn a_fence_lifts_when_skewed_peers_go_quiet_or_leave() {
    let node = node_seeing(&["b", "c", "d"]);
    frames_from(&node, &["b", "c"], 30_000);
    assert!(node.clock_fenced(), "2 of 3 peers, ahead or behind alike");
    tokio::time::sleep(SKEW_MEMORY).await;
    assert!(!node.clock_fenced(), "old sightings expire");
    frames_from(&node, &["b", "c"], 30_000);
    assert!(node.clock_fenced());
    node.set_members([("b".into(), false)]);
    assert!(!node.clock_fenced(), "a single live peer: report only");
}

#[tokio::test(start_paused = true)]
async fn a_clock_one_peer_disagrees_with_holds_expiry_before_any_fence() {
    // The skewed node of three, just started: it has heard one peer so far.
    let node = node_seeing(&["b", "c"]);
    assert!(!node.expiry_held(), "nothing seen, nothing in doubt");
    frames_from(&node, &["b"], -30_000);
    assert!(!node.clock_fenced(), "one of two is not more than half");
    assert!(node.expiry_held(), "yet one clock against its own is doubt");
    frames_from(&node, &["c"], -30_000);
    assert!(node.clock_fenced());
    assert!(node.expiry_held());
}

#[tokio::test(start_paused = true)]
async fn an_honest_node_expires_once_a_peer_agrees_with_its_clock() {
    let node = node_seeing(&["b", "c"]);
    frames_from(&node, &["c"], 30_000);
    assert!(node.expiry_held(), "c alone could be the right one");
    frames_from(&node, &["b"], 200);
    assert!(!node.expiry_held(), "b and this node against c");
    tokio::time::sleep(SKEW_MEMORY).await;
    assert!(!node.expiry_held(), "old sightings expire, both alike");
    frames_from(&node, &["c"], 30_000);
    assert!(node.expiry_held(), "b not heard from lately");
}

#[tokio::test(start_paused = true)]
async fn two_nodes_whose_clocks_disagree_both_hold_expiry() {
    let node = node_seeing(&["b"]);
    frames_from(&node, &["b"], 30_000);
    assert!(!node.clock_fenced(), "report only");
    assert!(node.expiry_held(), "no tombstone on either clock");
    node.set_members([]);
    assert!(!node.expiry_held(), "alone, its own clock decides");
}

#[tokio::test(start_paused = true)]
async fn skewed_peers_are_never_arbiters() {
    let node = node_seeing(&["b", "c"]);
    frames_from(&node, &["b"], 30_000);
    for n in 0..200 {
        assert_ne!(&*node.arbiter(&format!("ST-{n}")), "b");
    }
}

#[tokio::test(start_paused = true)]
async fn a_fenced_node_refuses_to_decide_for_peers() {
    let node = node_seeing(&["b", "c"]);
    frames_from(&node, &["b", "c"], -30_000);
    let reply = node
        .handle_request(
            &NodeId::from("b"),
            Body::Decide(Decide {
                id: "ST-1".into(),
                op: Some(decide::Op::Consume(ConsumeOp {})),
            }),
        )
        .await;
    let Body::Decided(decided) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(decided.code, Code::Unavailable as u32);
    assert!(
        decided.message.starts_with("fenced:"),
        "{}",
        decided.message
    );
}

#[tokio::test(start_paused = true)]
async fn caught_up_nodes_leave_peers_that_are_catching_up_to_their_own_rounds() {
    let node = node_seeing(&["b", "c", "d"]);
    node.set_not_ready(["c".into()]);
    let ids = |peers: Vec<NodeId>| peers.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    assert_eq!(ids(node.anti_entropy_peers(true)), ["b", "d"]);
    assert_eq!(
        ids(node.anti_entropy_peers(false)),
        ["b", "c", "d"],
        "a node still catching up syncs with anyone"
    );
    node.set_not_ready([]);
    assert_eq!(ids(node.anti_entropy_peers(true)), ["b", "c", "d"]);
}

// ---- the guarantees under faults (review of 119c1d7) ----

/// The first id (of `prefix-0`, `prefix-1`, ...) whose arbiter, as `node`
/// sees the cluster, is `arbiter`.
fn id_ruled_by(cluster: &TestCluster, node: usize, arbiter: usize, prefix: &str) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|id| cluster.nodes[node].arbiter(id) == cluster.id(arbiter))
        .unwrap()
}

/// Review #1: a voter that restarts has forgotten its votes, and the stale
/// side of a healed partition proposes the same use again.
#[tokio::test]
async fn a_restarted_voter_never_helps_spend_a_use_twice() {
    let mut cluster = TestCluster::new(3, ReplicationConfig::default());
    let id = id_ruled_by(&cluster, 0, 2, "ST-restart");
    cluster.nodes[0].put(single_use(&id)).await.unwrap();
    cluster.converge().await;
    cluster.isolate(&[2]);
    cluster.nodes[0].consume(&id).await.unwrap();
    // Node 1 voted for that use; it is killed and starts again, catching up
    // from node 0 (which holds the tombstone).
    cluster.restart(1).await;
    cluster.set_views(&[0, 1]);
    cluster.nodes[1].sync_with(&cluster.id(0)).await.unwrap();
    cluster.heal();
    // Before node 2's next anti-entropy round, a replay reaches node 2, the
    // arbiter, which still holds the ticket with no use.
    let again = cluster.nodes[2].consume(&id).await;
    assert!(again.is_err(), "a single-use ticket was consumed twice");
}

/// Review #1, the proposer restarts: it catches up from a stale peer and
/// proposes a use already spent, from a stale base of its own counter.
#[tokio::test]
async fn a_restarted_proposer_with_a_stale_copy_never_spends_a_use_twice() {
    let mut cluster = TestCluster::new(3, ReplicationConfig::default());
    let id = id_ruled_by(&cluster, 0, 0, "PT-stale");
    cluster.nodes[0]
        .put(PutTicket {
            max_uses: 2,
            ..put(&id, 60_000)
        })
        .await
        .unwrap();
    cluster.converge().await;
    cluster.isolate(&[2]);
    cluster.nodes[0].consume(&id).await.unwrap();
    cluster.nodes[0].consume(&id).await.unwrap();
    // Node 0 restarts and catches up from node 2, which missed both uses.
    cluster.restart(0).await;
    cluster.hub.heal_all();
    cluster.hub.cut(&cluster.id(0), &cluster.id(1));
    cluster.set_views(&[0, 2]);
    cluster.nodes[0].sync_with(&cluster.id(2)).await.unwrap();
    cluster.heal();
    let third = cluster.nodes[0].consume(&id).await;
    assert!(third.is_err(), "a two-use ticket was used three times");
}

/// Review #2: a node whose clock runs 30 s ahead forgets each vote at once
/// and keeps voting.
#[tokio::test]
async fn a_clock_fast_voter_never_helps_spend_a_use_twice() {
    let cluster = TestCluster::with_clocks(ReplicationConfig::default(), &[0, 0, 30_000]);
    let id = id_ruled_by(&cluster, 0, 0, "ST-fast");
    cluster.nodes[0].put(single_use(&id)).await.unwrap();
    cluster.nodes[1].get(&id).await.unwrap();
    // The data link between the two honest nodes fails; gossip still shows
    // everyone live.
    cluster.hub.cut(&cluster.id(0), &cluster.id(1));
    let first = cluster.nodes[0].consume(&id).await;
    let second = cluster.nodes[1].consume(&id).await;
    assert!(
        first.is_err() || second.is_err(),
        "both honest nodes spent the one use, each with the fast node's vote"
    );
}

/// Review #14 (first bullet): votes were kept per (id, slot) across
/// incarnations, so a ticket replaced after a use could not be consumed
/// until the old vote's retention passed.
#[tokio::test]
async fn a_ticket_put_again_after_a_use_can_be_consumed_again() {
    let cluster = TestCluster::new(3, ReplicationConfig::default());
    let twice = PutTicket {
        max_uses: 2,
        ..put("PT-again", 60_000)
    };
    cluster.nodes[0].put(twice.clone()).await.unwrap();
    cluster.nodes[1].consume("PT-again").await.unwrap();
    // Replaced while live: a new incarnation, no use spent.
    cluster.nodes[2].put(twice).await.unwrap();
    let again = cluster.nodes[0].consume("PT-again").await;
    assert_eq!(again.map(|t| t.uses).ok(), Some(1));
}

/// Guarantee 1: the arbiter consumed the ticket but its reply was lost with
/// the connection. Deciding here again would find the use spent and answer
/// "not found" for a consume that succeeded; the outcome is unknown, so the
/// caller must hear that instead.
#[tokio::test]
async fn a_consume_whose_reply_was_lost_is_not_reported_missing() {
    let cluster = TestCluster::new(3, ReplicationConfig::default());
    let id = id_ruled_by(&cluster, 1, 2, "ST-lost");
    cluster.nodes[0].put(single_use(&id)).await.unwrap();
    cluster.hub.lose_next_reply(&cluster.id(1), &cluster.id(2));
    let first = cluster.nodes[1].consume(&id).await;
    assert!(
        !matches!(first, Err(StoreError::NotFound)),
        "a consume the arbiter carried out was reported as a miss"
    );
    // The arbiter did spend the use: exactly once.
    let again = cluster.nodes[1].consume(&id).await;
    assert!(matches!(again, Err(StoreError::NotFound)), "{again:?}");
}

/// Review #7: with the default quorum and a cluster of three, a node whose
/// view is empty (just started, gossip false positive) must not acknowledge
/// a write that only it holds.
#[tokio::test]
async fn a_node_that_sees_no_peer_does_not_acknowledge_a_write_alone() {
    let config = ReplicationConfig {
        expected_size: 3,
        ..ReplicationConfig::default()
    };
    let cluster = TestCluster::new(3, config);
    cluster.nodes[0].set_members([]);
    let put = cluster.nodes[0].put(put("TGT-alone", 60_000)).await;
    assert!(matches!(put, Err(StoreError::Unavailable(_))), "{put:?}");
}

/// Review #8: a node 30 s ahead drops every pushed 10 s ticket as past its
/// retention; its acknowledgement must not count as a copy.
#[tokio::test]
async fn an_ack_from_a_node_that_dropped_the_write_does_not_count() {
    let cluster = TestCluster::with_clocks(ReplicationConfig::default(), &[0, 0, 30_000]);
    cluster.hub.cut(&cluster.id(0), &cluster.id(1));
    let put = cluster.nodes[0].put(single_use("ST-dropped")).await;
    let held = cluster.nodes[2].store().holds("ST-dropped");
    assert!(
        put.is_err() || held,
        "acknowledged with one copy: node 2 acked and holds nothing ({put:?})"
    );
}

/// Review #10: a touch counts a use, so on a use-limited ticket it must be
/// decided like a consume, never on a minority side alone.
#[tokio::test]
async fn a_touch_on_the_minority_never_spends_a_use_the_majority_spends() {
    let cluster = TestCluster::new(3, ReplicationConfig::default());
    cluster.nodes[0]
        .put(single_use("ST-touched"))
        .await
        .unwrap();
    cluster.converge().await;
    cluster.isolate(&[2]);
    let touched = cluster.nodes[2].touch("ST-touched").await;
    let consumed = cluster.nodes[0].consume("ST-touched").await;
    assert!(
        !(touched.is_ok() && consumed.is_ok()),
        "one use spent twice: by a touch on the minority and a consume on the majority"
    );
}

/// Review #4 (first bullet): a node that reaches none of its peers must not
/// answer "no such ticket" (or delete nothing) for a ticket they hold.
#[tokio::test]
async fn a_node_that_reaches_no_peer_does_not_call_a_held_ticket_missing() {
    let cluster = TestCluster::new(3, ReplicationConfig::default());
    // Node 2 misses the push and reaches nobody, though gossip still shows
    // everyone live.
    cluster.hub.cut(&cluster.id(2), &cluster.id(0));
    cluster.hub.cut(&cluster.id(2), &cluster.id(1));
    cluster.nodes[0]
        .put(put("TGT-unseen", 60_000))
        .await
        .unwrap();
    assert!(!cluster.nodes[2].store().holds("TGT-unseen"));
    let got = cluster.nodes[2].get("TGT-unseen").await;
    assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
    let deleted = cluster.nodes[2].delete("TGT-unseen").await;
    assert!(
        matches!(deleted, Err(StoreError::Unavailable(_))),
        "{deleted:?}"
    );
}

/// Review #4 (second bullet): a logout everywhere on a node that never
/// received the session's push still ends the session.
#[tokio::test]
async fn a_logout_everywhere_reaches_sessions_this_node_never_received() {
    let cluster = TestCluster::new(3, ReplicationConfig::default());
    cluster.hub.cut(&cluster.id(0), &cluster.id(2));
    cluster.nodes[0]
        .put(PutTicket {
            principal: Some("alice".into()),
            ..put("TGT-alice", 60_000)
        })
        .await
        .unwrap();
    assert!(!cluster.nodes[2].store().holds("TGT-alice"));
    let ended = cluster.nodes[2].delete_for("alice").await.unwrap();
    assert_eq!(ended, 1, "the session held by nodes 0 and 1");
    cluster.hub.heal_all();
    cluster.converge().await;
    for node in &cluster.nodes {
        assert_eq!(node.get("TGT-alice").await, Err(StoreError::NotFound));
    }
}

/// Review #4 (second bullet), for delete_all.
#[tokio::test]
async fn delete_all_reaches_tickets_this_node_never_received() {
    let cluster = TestCluster::new(3, ReplicationConfig::default());
    cluster.hub.cut(&cluster.id(0), &cluster.id(2));
    for n in 0..10 {
        cluster.nodes[0]
            .put(put(&format!("TGT-all-{n}"), 60_000))
            .await
            .unwrap();
    }
    assert_eq!(cluster.nodes[2].delete_all().await.unwrap(), 10);
    cluster.hub.heal_all();
    cluster.converge().await;
    for node in &cluster.nodes {
        assert_eq!(node.store().count().total, 0, "{}", node.node_id());
    }
}

/// Review #12: the extra task of a rolling deploy (four live, then the old
/// one drains and leaves) must not leave the cluster needing three votes:
/// after the deploy, losing one node keeps consumes available.
#[tokio::test]
async fn after_a_rolling_deploy_one_lost_node_keeps_consumes_available() {
    let cluster = TestCluster::new(4, ReplicationConfig::default());
    // Node 3 is the old task: it drains, then it is gone.
    for n in 0..3 {
        cluster.nodes[n].set_members((0..4).map(|m| (cluster.id(m), m == 3)));
    }
    cluster.hub.leave(&cluster.id(3));
    cluster.set_views(&[0, 1, 2]);
    // Later, node 2 is lost.
    cluster.hub.leave(&cluster.id(2));
    cluster.set_views(&[0, 1]);
    cluster.nodes[0]
        .put(single_use("ST-after-deploy"))
        .await
        .unwrap();
    let consumed = cluster.nodes[0].consume("ST-after-deploy").await;
    assert!(consumed.is_ok(), "{consumed:?}");
}

/// Review #3: the expected size never shrinks with time: after ten minutes
/// of a 2 | 1 split, the lone node still counts a majority of three.
#[tokio::test(start_paused = true)]
async fn a_long_partition_never_shrinks_the_majority() {
    let cluster = TestCluster::new(3, ReplicationConfig::default());
    cluster.isolate(&[2]);
    tokio::time::advance(Duration::from_secs(601)).await;
    // Membership keeps reporting the same views.
    cluster.isolate(&[2]);
    assert_eq!(cluster.nodes[2].expected_size(), 3);
    cluster.nodes[2]
        .store()
        .put(single_use("ST-lone"))
        .expect("kept locally");
    let consumed = cluster.nodes[2].consume("ST-lone").await;
    assert!(
        matches!(&consumed, Err(StoreError::Unavailable(m)) if m.contains("votes")),
        "{consumed:?}"
    );
}

/// Review #13: skew was judged on HLC readings, and within the budget an HLC
/// follows the fastest clock, so with clocks at +600 / 0 / -500 ms (budget
/// 1 s) the slow node saw both peers 1.1 s ahead and fenced itself, though
/// every clock is within the budget of true time.
#[tokio::test(start_paused = true)]
async fn clocks_within_the_budget_of_true_time_fence_nobody() {
    let cluster = TestCluster::with_clocks(ReplicationConfig::default(), &[600, 0, -500]);
    for round in 0..3 {
        for (n, node) in cluster.nodes.iter().enumerate() {
            let _ = node.put(put(&format!("TGT-{round}-{n}"), 60_000)).await;
        }
        cluster.converge().await;
    }
    for (n, node) in cluster.nodes.iter().enumerate() {
        assert!(!node.clock_suspect(), "node {n} doubts its clock");
    }
}

// ---- idle expiry (review #9) ----

/// Three nodes that all hold `TGT-idle`: idle timeout 10 s, deadline 60 s.
async fn cluster_with_idle_session() -> TestCluster {
    let cluster = TestCluster::new(3, ReplicationConfig::default());
    let session = PutTicket {
        idle_ms: Some(10_000),
        ..put("TGT-idle", 60_000)
    };
    cluster.nodes[0].put(session).await.unwrap();
    cluster.converge().await;
    cluster
}

/// Review #9: the sweeper turned an idle ticket into a tombstone on its own
/// view of the last use, so a node the touch's push missed killed a session
/// the others had touched and acknowledged.
#[tokio::test(start_paused = true)]
async fn a_touch_whose_push_was_lost_survives_that_nodes_sweeper() {
    let cluster = cluster_with_idle_session().await;
    cluster.hub.cut(&cluster.id(0), &cluster.id(2));
    tokio::time::advance(Duration::from_secs(9)).await;
    cluster.nodes[0].touch("TGT-idle").await.unwrap();
    // Idle ended at 10 s on node 2's view; 11.5 s is past it and the slack.
    tokio::time::advance(Duration::from_millis(2_500)).await;
    cluster.nodes[2].sweep(1_000).await;
    cluster.hub.heal_all();
    cluster.converge().await;
    for (n, node) in cluster.nodes.iter().enumerate() {
        assert!(
            node.get("TGT-idle").await.is_ok(),
            "node {n}: a session touched at 9 s died at 11.5 s"
        );
    }
}

/// Review #9 (hard deadlines): a node whose clock runs ahead within the
/// budget tombstoned a ticket at its own reading of the deadline, and
/// anti-entropy carried that tombstone to honest nodes before the deadline.
#[tokio::test(start_paused = true)]
async fn a_clock_ahead_within_the_budget_kills_no_ticket_early() {
    let cluster = TestCluster::with_clocks(ReplicationConfig::default(), &[0, 0, 800]);
    cluster.nodes[0].put(put("ST-short", 10_000)).await.unwrap();
    cluster.converge().await;
    // True time 9.5 s: node 2 reads 10.3 s, past the deadline.
    tokio::time::advance(Duration::from_millis(9_500)).await;
    cluster.nodes[2].sweep(1_000).await;
    cluster.converge().await;
    assert!(
        cluster.nodes[0].get("ST-short").await.is_ok(),
        "dead 500 ms before its deadline"
    );
}

/// Review #9, the partition: a minority node cannot learn of a touch the
/// majority acknowledged, so it must not take the idle death for a fact.
#[tokio::test(start_paused = true)]
async fn a_touch_acknowledged_by_the_majority_survives_the_minoritys_sweeper() {
    let cluster = cluster_with_idle_session().await;
    cluster.isolate(&[2]);
    tokio::time::advance(Duration::from_secs(9)).await;
    cluster.nodes[0].touch("TGT-idle").await.unwrap();
    tokio::time::advance(Duration::from_millis(2_500)).await;
    cluster.nodes[2].sweep(1_000).await;
    assert!(
        cluster.nodes[2].store().get("TGT-idle").is_err(),
        "idle on the minority's view, so not served there"
    );
    cluster.heal();
    cluster.converge().await;
    assert!(
        cluster.nodes[2].get("TGT-idle").await.is_ok(),
        "the touch counts after the heal"
    );
    // Idle for real from 9 s: dead at 19 s, tombstoned once confirmed.
    tokio::time::advance(Duration::from_secs(9)).await;
    for node in &cluster.nodes {
        node.sweep(1_000).await;
    }
    for (n, node) in cluster.nodes.iter().enumerate() {
        assert_eq!(
            node.store().entry("TGT-idle").map(|e| e.is_deleted()),
            Some(true),
            "node {n}: an idle session is a tombstone once the peers agree"
        );
    }
}

// ---- deleted stays deleted across re-puts (review #6, #14) ----

/// Review #6: a re-put of a live id on a partition's minority was refused
/// (no write quorum) but kept there; the majority deleted the id and, once
/// the old deadline passed, forgot the tombstone; at the heal the minority's
/// incarnation spread and the logged-out session was back.
#[tokio::test(start_paused = true)]
async fn a_reput_on_the_minority_never_outlives_the_delete() {
    let cluster = TestCluster::new(3, ReplicationConfig::default());
    cluster.nodes[0]
        .put(put("TGT-reput", 10_000))
        .await
        .unwrap();
    cluster.converge().await;
    cluster.isolate(&[2]);
    cluster.nodes[0].delete("TGT-reput").await.unwrap();
    let reput = cluster.nodes[2].put(put("TGT-reput", 600_000)).await;
    assert!(reput.is_err(), "a minority acknowledged a put: {reput:?}");
    // Past the old deadline and the skew budget: the majority forgets.
    tokio::time::advance(Duration::from_secs(12)).await;
    for node in &cluster.nodes[..2] {
        node.sweep(1_000).await;
        assert!(!node.store().holds("TGT-reput"));
    }
    cluster.heal();
    cluster.converge().await;
    for (n, node) in cluster.nodes.iter().enumerate() {
        assert!(
            node.store().get("TGT-reput").is_err(),
            "node {n}: the deleted session came back after the heal"
        );
    }
}

/// Review #5, with the CAS flow in mind: for up to one push after a delete
/// returns, a node the push has not reached still serves the TGT (the window
/// docs/guarantees.md states), but a service ticket issued under it there is never
/// acknowledged: the peers' tombstones kill it in the merge, so a deleted TGT
/// never validates a new ST.
#[tokio::test]
async fn a_service_ticket_under_a_deleted_tgt_is_never_acknowledged() {
    let cluster = TestCluster::new(3, ReplicationConfig::default());
    cluster.nodes[0].put(put("TGT-gone", 60_000)).await.unwrap();
    cluster.converge().await;
    cluster.hub.cut(&cluster.id(0), &cluster.id(2));
    cluster.nodes[0].delete("TGT-gone").await.unwrap();
    assert!(
        cluster.nodes[2].get("TGT-gone").await.is_ok(),
        "the stated window: node 2 has not heard of the delete"
    );
    let st = PutTicket {
        parent: Some("TGT-gone".into()),
        max_uses: 1,
        ..put("ST-late", 10_000)
    };
    let issued = cluster.nodes[2].put(st).await;
    assert!(
        issued.is_err(),
        "acknowledged under a deleted TGT: {issued:?}"
    );
    cluster.hub.heal_all();
    cluster.converge().await;
    for (n, node) in cluster.nodes.iter().enumerate() {
        assert!(
            node.store().get("ST-late").is_err(),
            "node {n} serves the ST"
        );
    }
}

/// Review #14 (third bullet, second half): a plain put of a deleted id on a
/// node that no longer held the tombstone (restarted) was acknowledged by
/// peers whose tombstone won the merge: an acknowledged write, dead at once.
#[tokio::test]
async fn a_put_the_peers_tombstone_kills_is_not_acknowledged() {
    let mut cluster = TestCluster::new(3, ReplicationConfig::default());
    cluster.nodes[0].put(put("TGT-dead", 60_000)).await.unwrap();
    cluster.nodes[0].delete("TGT-dead").await.unwrap();
    cluster.converge().await;
    cluster.restart(2).await;
    cluster.set_views(&[0, 1, 2]);
    let again = cluster.nodes[2].put(put("TGT-dead", 60_000)).await;
    cluster.converge().await;
    let alive = cluster.nodes[2].store().get("TGT-dead").is_ok();
    assert!(
        again.is_err() || alive,
        "acknowledged ({again:?}), yet dead on every node"
    );
}

/// Review #14 (fourth bullet): a node restarted by kill -9 starts its HLC
/// from zero, so a proposal stamp it takes at once can equal one its previous
/// run took (stamps run ahead of physical time while following a faster
/// peer), and voters take an equal stamp for a retry. A restarted node takes
/// no proposal stamp until its votes are trusted (caught up, then twice the
/// skew budget: past every stamp of its previous run), and peers do not pick
/// a node that reports not ready as an arbiter.
#[tokio::test(start_paused = true)]
async fn a_restarted_node_decides_nothing_before_its_stamps_are_fresh() {
    let mut cluster = TestCluster::new(3, ReplicationConfig::default());
    let id = id_ruled_by(&cluster, 1, 0, "ST-fresh");
    cluster.nodes[1].put(single_use(&id)).await.unwrap();
    cluster.converge().await;
    cluster.restart(0).await;
    cluster.set_views(&[0, 1, 2]);
    // Node 1 still takes node 0 for the arbiter: node 0 refuses before any
    // work, and node 1 decides itself, as for an unreachable arbiter.
    cluster.nodes[1].consume(&id).await.unwrap();
    let holders = cluster.nodes[2].votes.lock().unwrap().holders();
    assert_eq!(holders, [cluster.id(1)], "the restarted node proposed");
    // Once node 1 hears that node 0 is not ready, it arbitrates elsewhere.
    cluster.nodes[1].set_not_ready([cluster.id(0)]);
    assert_ne!(cluster.nodes[1].arbiter(&id), cluster.id(0));
}

// ---- votes in the data directory (issue 15) ----

/// A skew budget short enough to wait out in real time: the journal syncs on
/// a thread of its own, which a paused clock would not wait for.
const SHORT_BUDGET: Duration = Duration::from_millis(50);

fn short_budget() -> ReplicationConfig {
    ReplicationConfig {
        max_clock_skew: SHORT_BUDGET,
        ..ReplicationConfig::default()
    }
}

/// Issue 15: with memory-only votes a restarted node voted only on tickets
/// created after it caught up again (R3), so once every node of a cluster
/// had restarted (a full restart, a completed rolling restart), no ticket
/// created before could be consumed or compared-and-set any more. Votes in
/// the data directory lift that for nodes restarted on their directory.
#[tokio::test]
async fn a_cluster_restarted_on_its_data_dirs_still_decides_older_tickets() {
    let mut cluster = TestCluster::with_data_dirs(3, short_budget());
    let id = "PT-restarted";
    cluster.nodes[0]
        .put(PutTicket {
            max_uses: 3,
            ..put(id, 600_000)
        })
        .await
        .unwrap();
    cluster.converge().await;
    cluster.nodes[0].consume(id).await.unwrap();
    for n in 0..3 {
        cluster.restart(n).await;
    }
    cluster.set_views(&[0, 1, 2]);
    cluster.converge().await;
    // Caught up with each other; stamps fresh after twice the budget.
    tokio::time::sleep(3 * SHORT_BUDGET).await;
    assert!(cluster.nodes.iter().all(|node| node.votes_trusted()));
    let second = cluster.nodes[1].consume(id).await.unwrap();
    assert_eq!(second.uses, 2, "the use before the restart still counts");
}

/// Issue 15: a node restarted on its data directory votes on older tickets
/// again, so it must remember what it voted for before: a different
/// proposal on the same slot is refused with the vote it cast, across a
/// restart and across a snapshot of the log.
#[tokio::test]
async fn a_vote_outlives_a_restart_on_the_data_dir() {
    let mut cluster = TestCluster::with_data_dirs(3, short_budget());
    let id = "ST-voted";
    cluster.nodes[0].put(single_use(id)).await.unwrap();
    cluster.converge().await;
    let incarnation = cluster.nodes[1].store().incarnation_of(id);
    let retain = cluster.nodes[1].store().entry(id).unwrap().retain_until_ms;
    let first = cluster.nodes[0].store().hlc().stamp();
    let vote = cluster.nodes[1]
        .accept(
            id,
            incarnation.clone(),
            "use:1",
            &Phase::Fast(first.clone()),
            retain,
        )
        .await;
    assert!(vote.is_ok(), "node 1 did not vote");
    for snapshot_first in [false, true] {
        if snapshot_first {
            let journal = cluster.nodes[1].journal.get().unwrap().clone();
            crate::journal::snapshot_store(&journal, &cluster.nodes[1])
                .await
                .unwrap();
        }
        cluster.restart(1).await;
        cluster.set_views(&[0, 1, 2]);
        cluster.converge().await;
        tokio::time::sleep(3 * SHORT_BUDGET).await;
        let other = cluster.nodes[2].store().hlc().stamp();
        let again = cluster.nodes[1]
            .accept(
                id,
                incarnation.clone(),
                "use:1",
                &Phase::Fast(other),
                retain,
            )
            .await;
        match again {
            Err(Refusal::Voted(votes)) => assert_eq!(*votes.holder(), first),
            Err(Refusal::Cannot(why)) => panic!("refused without its vote: {why}"),
            Err(Refusal::Taken(_)) => panic!("refused on its copy, not its vote"),
            Ok(_) => panic!("voted for a second proposal on the slot"),
        }
    }
}

// ---- ballots: a slot is never lost (review #14, second bullet) ----

/// Review #14 (second bullet): without ballots, two proposers that split the
/// votes of a slot (4 nodes, 2 votes each, 3 needed) burnt it: every later
/// consume of the ticket failed, so "exactly one succeeds" became "none".
#[tokio::test]
async fn a_slot_split_between_two_proposers_is_won_later() {
    let cluster = TestCluster::new(4, ReplicationConfig::default());
    let id = "ST-split";
    cluster.nodes[0].put(single_use(id)).await.unwrap();
    cluster.converge().await;
    // Node 0 reaches only node 2, node 1 only node 3.
    for (a, b) in [(0, 1), (0, 3), (1, 2)] {
        cluster.hub.cut(&cluster.id(a), &cluster.id(b));
    }
    for proposer in [0, 1] {
        let split = cluster.nodes[proposer]
            .decide_here(id, decide::Op::Consume(ConsumeOp {}), false)
            .await;
        assert!(
            split.is_err(),
            "node {proposer} won with 2 of 4 votes: {split:?}"
        );
    }
    cluster.hub.heal_all();
    let once = cluster.nodes[2].consume(id).await;
    assert!(once.is_ok(), "the split slot was lost: {once:?}");
    let twice = cluster.nodes[3].consume(id).await;
    assert!(
        twice.is_err(),
        "a single-use ticket was consumed twice: {twice:?}"
    );
}

/// Review #14 (second bullet): an arbiter that won the votes of a slot and
/// died before its use spread left the slot held for a proposal nobody
/// could finish; the ticket's remaining uses were lost. The next proposer
/// must finish that proposal (its client may have been told it won) and
/// take the next use.
#[tokio::test]
async fn a_slot_won_by_a_dead_arbiter_is_finished_by_the_next() {
    let cluster = TestCluster::new(3, ReplicationConfig::default());
    let id = "PT-orphan";
    cluster.nodes[0]
        .put(PutTicket {
            max_uses: 2,
            ..put(id, 60_000)
        })
        .await
        .unwrap();
    cluster.converge().await;
    // Node 0 wins use 1 with the votes of nodes 1 and 2, and dies at once.
    let proposal = cluster.nodes[0].store().hlc().stamp();
    let incarnation = cluster.nodes[1].store().incarnation_of(id);
    let retain = cluster.nodes[1].store().entry(id).unwrap().retain_until_ms;
    for voter in [1, 2] {
        let fast = Phase::Fast(proposal.clone());
        let vote = cluster.nodes[voter]
            .accept(id, incarnation.clone(), "use:1", &fast, retain)
            .await;
        assert!(vote.is_ok(), "node {voter} did not vote");
    }
    cluster.hub.leave(&cluster.id(0));
    cluster.set_views(&[1, 2]);
    let next = cluster.nodes[1].consume(id).await;
    let view = next.unwrap_or_else(|e| panic!("the orphaned slot blocks the ticket: {e:?}"));
    assert_eq!(
        view.uses, 2,
        "use 1 is the dead arbiter's, finished; this is use 2"
    );
    let third = cluster.nodes[2].consume(id).await;
    assert!(third.is_err(), "a third use of a two-use ticket: {third:?}");
}

/// Review #13 (second half): the wall clock was anchored at start, so a node
/// fenced for a clock 30 s ahead stayed fenced after its system clock was
/// corrected, until it restarted.
#[tokio::test(start_paused = true)]
async fn a_fence_lifts_once_the_system_clock_is_corrected() {
    let cluster = TestCluster::with_clocks(ReplicationConfig::default(), &[0, 0, 30_000]);
    let exchange_frames = |round: &'static str| {
        let cluster = &cluster;
        async move {
            for (n, node) in cluster.nodes.iter().enumerate() {
                let _ = node.put(put(&format!("TGT-{round}-{n}"), 60_000)).await;
            }
            cluster.converge().await;
        }
    };
    exchange_frames("before").await;
    assert!(cluster.nodes[2].clock_fenced(), "30 s ahead of two peers");

    let fast = cluster.nodes[2].store().hlc().clock().clone();
    let true_ms = cluster.nodes[0].store().hlc().clock().now_ms();
    let read_before = fast.now_ms();
    fast.resync_to(true_ms);
    assert!(
        fast.now_ms() >= read_before,
        "a correction never steps the clock backwards"
    );
    // The corrected clock stands still until true time passes what it read.
    tokio::time::sleep(Duration::from_secs(31)).await;
    exchange_frames("after").await;
    let skew = fast.now_ms() as i64 - cluster.nodes[0].store().hlc().clock().now_ms() as i64;
    assert!(
        skew.abs() < 1_000,
        "still {skew} ms off after the correction"
    );
    assert!(
        !cluster.nodes[2].clock_fenced(),
        "the fence outlived the clock's correction"
    );
}

/// Review #14 (third bullet): a node that lacks an id (restarted, the push not
/// in yet) took `create_only` as a new ticket and replaced the live one held
/// everywhere else.
#[tokio::test]
async fn create_only_on_a_node_lacking_the_id_replaces_nothing() {
    let cluster = TestCluster::new(3, ReplicationConfig::default());
    cluster.hub.cut(&cluster.id(0), &cluster.id(2));
    let first = cluster.nodes[0].put(put("TGT-held", 60_000)).await.unwrap();
    assert!(!cluster.nodes[2].store().holds("TGT-held"));
    let again = PutTicket {
        create_only: true,
        payload: Bytes::from_static(b"other"),
        ..put("TGT-held", 60_000)
    };
    let second = cluster.nodes[2].put(again).await;
    assert!(
        matches!(second, Err(StoreError::AlreadyExists(_))),
        "{second:?}"
    );
    let kept = cluster.nodes[1].get("TGT-held").await.unwrap();
    assert_eq!(kept.version, first.version, "the live ticket was replaced");
}

/// The value rule of a ballot's phase 2 (see `votes`), case by case.
#[test]
fn a_ballot_adopts_what_could_have_won_and_only_that() {
    let stamp = |n: u64, node: &str| crate::clock::Stamp {
        hlc: crate::clock::Hlc {
            wall_ms: n,
            logical: 0,
        },
        node: node.into(),
    };
    let (x, y, own) = (stamp(1, "x"), stamp(2, "y"), stamp(3, "me"));
    let fast = |value: &crate::clock::Stamp| {
        (
            BallotId {
                round: 0,
                proposal: value.clone(),
            },
            value.clone(),
        )
    };
    // 3 nodes, majority 2. Two voters report x: it may have won.
    assert_eq!(
        choose_value(&[fast(&x), fast(&x)], 2, 3, 2, &own),
        Some(x.clone())
    );
    // All four of 4 heard, 2 and 2: neither won round 0.
    let split = [fast(&x), fast(&x), fast(&y), fast(&y)];
    assert_eq!(choose_value(&split, 4, 4, 3, &own), Some(own.clone()));
    // x and y once each, one voter unheard: either may have won.
    assert_eq!(choose_value(&[fast(&x), fast(&y)], 2, 3, 2, &own), None);
    // A value accepted in round 1 or more outranks every round-0 vote.
    let round_one = (
        BallotId {
            round: 1,
            proposal: stamp(9, "z"),
        },
        y.clone(),
    );
    assert_eq!(
        choose_value(&[fast(&x), fast(&x), round_one], 3, 3, 2, &own),
        Some(y)
    );
    assert_eq!(choose_value(&[], 2, 3, 2, &own), Some(own));
}
