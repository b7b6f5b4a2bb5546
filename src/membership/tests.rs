//! Membership over real UDP on 127.0.0.1. Every test uses its own cluster id,
//! so a port freed by one test and reused by another never mixes their gossip.
//! Every wait polls every 100 ms up to a bound, and fails naming what it waited
//! for.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;

const LOOPBACK_ANY_PORT: &str = "127.0.0.1:0";
/// Upper bound of every wait for something that takes a second or two.
const PATIENCE: Duration = Duration::from_secs(15);
/// The requirement: a killed node leaves every live set within this, on the
/// default settings.
const DEATH_REQUIREMENT: Duration = Duration::from_secs(5);

pub(crate) fn test_config(cluster: &str, name: &str, seeds: Vec<String>) -> MembershipConfig {
    let mut config = MembershipConfig::new(
        name,
        format!("tessera-test-{cluster}"),
        LOOPBACK_ANY_PORT.parse().unwrap(),
        format!("http://{name}.example:4000"),
        "127.0.0.1:7000".parse().unwrap(),
    );
    config.seeds = seeds;
    config
}

/// A node of cluster `cluster`, on a free port, with the default timings.
pub(crate) async fn start_node(cluster: &str, name: &str, seeds: Vec<String>) -> Membership {
    Membership::start(test_config(cluster, name, seeds))
        .await
        .unwrap()
}

/// Poll `done` every 100 ms; panic after `limit`. Returns how long it took.
pub(crate) async fn wait_until(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if done() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn live_ids(node: &Membership) -> Vec<String> {
    node.live_members()
        .iter()
        .map(|m| m.node_id.to_string())
        .collect()
}

fn sees(node: &Membership, ids: &[&str]) -> bool {
    live_ids(node) == ids
}

fn member(node: &Membership, id: &str) -> Option<Member> {
    node.live_members().into_iter().find(|m| &*m.node_id == id)
}

fn seed(node: &Membership) -> Vec<String> {
    vec![node.gossip_addr().to_string()]
}

/// a (no seeds), then b and c seeded with a; waits until all see all three.
async fn three_nodes(cluster: &str) -> (Membership, Membership, Membership) {
    let a = start_node(cluster, "a", vec![]).await;
    let b = start_node(cluster, "b", seed(&a)).await;
    let c = start_node(cluster, "c", seed(&a)).await;
    wait_until("all three see a, b, c", PATIENCE, || {
        [&a, &b, &c].iter().all(|n| sees(n, &["a", "b", "c"]))
    })
    .await;
    (a, b, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_see_each_other_with_their_metadata() {
    let (a, b, c) = three_nodes("meta").await;
    let mut changes = a.subscribe();
    changes.borrow_and_update();

    for node in [&a, &b, &c] {
        for m in node.live_members() {
            assert_eq!(m.api_addr, format!("http://{}.example:4000", m.node_id));
            assert_eq!(m.peer_addr, Some("127.0.0.1:7000".parse().unwrap()));
            assert_eq!(m.version, env!("CARGO_PKG_VERSION"));
            assert!(!m.ready && !m.draining);
            assert_eq!(m.state, MemberState::Alive);
            assert_eq!(m.state.as_str(), "alive");
        }
    }
    let on_a = member(&a, "b").unwrap();
    assert_eq!(on_a.gossip_addr, b.gossip_addr());
    assert_eq!(on_a.generation, b.generation());
    assert_ne!(
        b.gossip_addr().port(),
        0,
        "port 0 is replaced by the bound port"
    );

    b.set_ready(true).await;
    c.set_tickets(42).await;
    // Our own view changes at once; others' after gossip.
    assert!(member(&b, "b").unwrap().ready);
    wait_until("a sees b ready and c's ticket count", PATIENCE, || {
        member(&a, "b").is_some_and(|m| m.ready) && member(&a, "c").is_some_and(|m| m.tickets == 42)
    })
    .await;
    assert!(
        changes.has_changed().unwrap(),
        "subscribers are notified of key changes"
    );
    wait_until("c sees b ready", PATIENCE, || {
        member(&c, "b").is_some_and(|m| m.ready)
    })
    .await;
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_within_five_seconds_and_rejoins_once_restarted() {
    let (a, b, c) = three_nodes("kill").await;
    let c_addr = c.gossip_addr();
    let c_generation = c.generation();

    c.crash().await;
    let took = wait_until("a and b drop the killed c", Duration::from_secs(10), || {
        sees(&a, &["a", "b"]) && sees(&b, &["a", "b"])
    })
    .await;
    println!("killed node left both live sets after {took:?} (requirement {DEATH_REQUIREMENT:?})");
    assert!(took <= DEATH_REQUIREMENT, "took {took:?}");
    let dead: Vec<Member> = a
        .all_members()
        .into_iter()
        .filter(|m| &*m.node_id == "c")
        .collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].state, MemberState::Dead);

    // Restart: same node id and address, new generation.
    let mut config = test_config("kill", "c", seed(&a));
    config.gossip_listen = c_addr;
    config.gossip_advertise = c_addr;
    config.generation = new_generation();
    let c = Membership::start(config)
        .await
        .expect("restarts on its address");
    assert!(c.generation() > c_generation);
    wait_until("the restarted c is live everywhere", PATIENCE, || {
        [&a, &b, &c].iter().all(|n| sees(n, &["a", "b", "c"]))
    })
    .await;
    for node in [&a, &b] {
        let listed: Vec<Member> = node
            .all_members()
            .into_iter()
            .filter(|m| &*m.node_id == "c")
            .collect();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].generation, c.generation());
        assert_eq!(listed[0].state, MemberState::Alive);
    }
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

/// A crash returns only once the gossip port is free: a node restarted on the
/// same address right after (a test's kill and restart, a supervisor's) binds
/// it. Aborting chitchat's task only schedules its drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_has_released_its_gossip_port() {
    for round in 0..200 {
        let node = start_node("release", "a", vec![]).await;
        let addr = node.gossip_addr();
        node.crash().await;
        if let Err(err) = std::net::UdpSocket::bind(addr) {
            panic!("round {round}: {addr} still bound after the crash: {err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_restart_is_never_listed_twice() {
    let (a, b, c) = three_nodes("quick").await;
    let old_generation = c.generation();
    c.crash().await;
    // Restarted elsewhere before anyone noticed the death: for a moment both
    // generations are live in chitchat.
    let c = start_node("quick", "c", seed(&a)).await;
    wait_until("a and b list only the new c", PATIENCE, || {
        for node in [&a, &b] {
            let ids = live_ids(node);
            assert!(ids.iter().filter(|id| *id == "c").count() <= 1, "{ids:?}");
            let all = node.all_members();
            assert!(
                all.iter().filter(|m| &*m.node_id == "c").count() <= 1,
                "{all:?}"
            );
        }
        [&a, &b].iter().all(|n| {
            member(n, "c")
                .is_some_and(|m| m.generation == c.generation() && m.generation != old_generation)
        })
    })
    .await;
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_shuts_down_leaves_at_once() {
    let a = start_node("leave", "a", vec![]).await;
    let b = start_node("leave", "b", seed(&a)).await;
    wait_until("a and b see each other", PATIENCE, || {
        sees(&a, &["a", "b"]) && sees(&b, &["a", "b"])
    })
    .await;
    b.shutdown().await;
    let took = wait_until("a drops b", DEATH_REQUIREMENT, || sees(&a, &["a"])).await;
    println!("a node that shut down left the live set {took:?} after shutdown returned");
    let b_listed = a.all_members().into_iter().find(|m| &*m.node_id == "b");
    assert_eq!(b_listed.map(|m| m.state), Some(MemberState::Dead));
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_shows_to_others() {
    let a = start_node("drain", "a", vec![]).await;
    let b = start_node("drain", "b", seed(&a)).await;
    wait_until("a and b see each other", PATIENCE, || {
        sees(&a, &["a", "b"]) && sees(&b, &["a", "b"])
    })
    .await;
    b.set_draining().await;
    assert_eq!(member(&b, "b").unwrap().state, MemberState::Draining);
    wait_until("a sees b draining", PATIENCE, || {
        member(&a, "b").is_some_and(|m| m.state == MemberState::Draining && m.draining)
    })
    .await;
    assert_eq!(MemberState::Draining.as_str(), "draining");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_gossip_partitions_and_unblocking_heals() {
    let cluster = "faults";
    let faults: Vec<GossipFaults> = (0..3).map(|_| GossipFaults::new()).collect();
    let a = Membership::start_with_faults(test_config(cluster, "a", vec![]), faults[0].clone())
        .await
        .unwrap();
    let b = Membership::start_with_faults(test_config(cluster, "b", seed(&a)), faults[1].clone())
        .await
        .unwrap();
    let c = Membership::start_with_faults(test_config(cluster, "c", seed(&a)), faults[2].clone())
        .await
        .unwrap();
    wait_until("all three see a, b, c", PATIENCE, || {
        [&a, &b, &c].iter().all(|n| sees(n, &["a", "b", "c"]))
    })
    .await;

    faults[0].block(c.gossip_addr());
    faults[1].block(c.gossip_addr());
    faults[2].block(a.gossip_addr());
    faults[2].block(b.gossip_addr());
    wait_until("c is dead for a and b, and they for c", PATIENCE, || {
        sees(&a, &["a", "b"]) && sees(&b, &["a", "b"]) && sees(&c, &["c"])
    })
    .await;
    let on_c = c.all_members();
    assert!(
        on_c.iter()
            .filter(|m| &*m.node_id != "c")
            .all(|m| m.state == MemberState::Dead),
        "{on_c:?}"
    );

    for f in &faults {
        f.unblock_all();
    }
    wait_until("the partition heals", PATIENCE, || {
        [&a, &b, &c].iter().all(|n| sees(n, &["a", "b", "c"]))
    })
    .await;
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_seeds_join_through_gossip_to() {
    let a = start_node("gossipto", "a", vec![]).await;
    let b = start_node("gossipto", "b", vec![]).await;
    let c = start_node("gossipto", "c", vec![]).await;
    assert!(sees(&a, &["a"]) && sees(&b, &["b"]) && sees(&c, &["c"]));

    // Someone else gossips to the seedless b.
    a.gossip_to(b.gossip_addr()).await;
    wait_until("a and b see each other", PATIENCE, || {
        sees(&a, &["a", "b"]) && sees(&b, &["a", "b"])
    })
    .await;
    // The seedless c gossips to someone.
    c.gossip_to(a.gossip_addr()).await;
    wait_until("all three see a, b, c", PATIENCE, || {
        [&a, &b, &c].iter().all(|n| sees(n, &["a", "b", "c"]))
    })
    .await;
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn bad_settings_are_refused_with_the_reason() {
    let mut config = test_config("bad", "a", vec![]);
    config.gossip_advertise = "0.0.0.0:7946".parse().unwrap();
    let err = Membership::start(config).await.err().unwrap();
    assert!(
        matches!(err, MembershipError::Config(_)) && err.to_string().contains("0.0.0.0:7946"),
        "{err}"
    );

    let mut config = test_config("bad", "a", vec![]);
    config.cluster_id.clear();
    assert!(matches!(
        Membership::start(config).await,
        Err(MembershipError::Config(_))
    ));

    let taken = std::net::UdpSocket::bind(LOOPBACK_ANY_PORT).unwrap();
    let addr: SocketAddr = taken.local_addr().unwrap();
    let mut config = test_config("bad", "a", vec![]);
    config.gossip_listen = addr;
    config.gossip_advertise = addr;
    let err = Membership::start(config).await.err().unwrap();
    assert!(
        matches!(&err, MembershipError::Bind { addr: a, .. } if *a == addr),
        "{err}"
    );
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
