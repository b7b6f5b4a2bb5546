//! The fault-injection suite: each scenario runs its own docker-compose fleet
//! (three `tessera:dev` containers), drives a CAS-like load through
//! tessera-client, breaks the fleet on purpose, then checks the history
//! against what every node holds. Each prints one `SCENARIO` line with the
//! figures the README's table quotes. Needs the images `scripts/fleet image`
//! builds (`./scripts/test` does it first).
//!
//! Scenarios run one at a time (a nextest test group, and [`one_at_a_time`]
//! under `cargo test`); each removes its containers and network when it ends,
//! passed or not.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_client::{Client, NewTicket};
use tessera_fleet::Fleet;
use tessera_fleet::workload::{History, Load, Race, Report, User, logout_some};

/// Users of the load: enough to keep every node busy, few enough for 2 cores.
const USERS: usize = 9;

/// Runs a scenario alone (scenarios never share the machine with each other)
/// on its own runtime.
fn one_at_a_time(scenario: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    static FLEET: Mutex<()> = Mutex::new(());
    let _alone = FLEET.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(scenario)
}

fn print_scenario(name: &str, report: &Report, converge: Duration, extra: &str) {
    println!(
        "SCENARIO {name}: acknowledged={} lost={} double_consumed={} resurrected={} converge={:.1}s failed_calls={} {extra}",
        report.acknowledged,
        report.lost,
        report.double_consumed,
        report.resurrected,
        converge.as_secs_f64(),
        report.failures,
    );
}

fn assert_clean(name: &str, report: &Report, fleet: &Fleet) {
    assert!(report.clean(), "{name}: {report:?}\n{}", fleet.logs());
    assert!(
        report.acknowledged > 100,
        "{name}: the load did too little: {report:?}"
    );
}

/// The failed calls of `history` counted by operation and the start of the
/// error, most frequent first: which refusals a fault caused.
fn failures_by_cause(history: &History) -> String {
    let mut causes = std::collections::BTreeMap::<String, usize>::new();
    for failure in history.failures() {
        let cause: String = failure.error.chars().take(60).collect();
        *causes
            .entry(format!("{}: {cause}", failure.op))
            .or_default() += 1;
    }
    let mut causes: Vec<_> = causes.into_iter().collect();
    causes.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    causes
        .iter()
        .map(|(cause, n)| format!("{n} x {cause}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Until `observer` no longer lists `node` as alive; how long that took.
async fn wait_gone(observer: &Client, node: &str, since: Instant, limit: Duration) -> Duration {
    loop {
        let alive = observer.members().await.map_or(true, |members| {
            members
                .iter()
                .any(|m| m.node_id == node && m.state == "alive")
        });
        if !alive || since.elapsed() > limit {
            return since.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Scenario 1: kill -9 one node under load.
#[test]
fn kill_one_node_under_load() -> anyhow::Result<()> {
    one_at_a_time(kill_one_node_under_load_scenario())
}

async fn kill_one_node_under_load_scenario() -> anyhow::Result<()> {
    let fleet = Fleet::start("kill", 21, 17101)?;
    let history = Arc::new(History::default());
    let load = Load::start(&fleet, &User::spread(USERS, &[1, 2, 3]), "kill", history).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;

    let observer = fleet.client(&[1], Duration::from_secs(2)).await?;
    let killed_at = Instant::now();
    fleet.kill(&[3])?;
    let kill_done = Instant::now();
    let detected = wait_gone(&observer, "node3", killed_at, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let history = load.stop().await;

    let (converge, report) = history
        .converge(&fleet, &[1, 2], Duration::from_secs(30))
        .await?;
    let failures = history.failures();
    let late: Vec<_> = failures.iter().filter(|f| f.started > kill_done).collect();
    print_scenario(
        "kill",
        &report,
        converge,
        &format!(
            "detected={:.1}s failed_in_flight={} failed_after_kill={}",
            detected.as_secs_f64(),
            failures.len() - late.len(),
            late.len()
        ),
    );
    assert_clean("kill", &report, &fleet);
    assert!(
        detected <= Duration::from_secs(5),
        "node3's death seen by node1 after {detected:?}"
    );
    // Nothing started after the kill may fail. Before it returned, each of a
    // user's two clients (issuer, validator) can lose the one call it had in
    // flight to the dying node, and then starts its next call elsewhere.
    assert!(
        late.is_empty(),
        "calls started after the kill failed: {late:?}"
    );
    assert!(failures.len() <= 2 * USERS, "{failures:?}");
    Ok(())
}

/// Scenario 7: kill -9 of one node and its immediate restart (same node id,
/// empty memory), five times, under the CAS load while single-use tickets
/// are raced through all three nodes: no use spent twice, no acknowledged
/// write lost, nothing deleted or consumed comes back.
#[test]
fn kill_and_restart_one_node_five_times() -> anyhow::Result<()> {
    one_at_a_time(kill_and_restart_one_node_five_times_scenario())
}

async fn kill_and_restart_one_node_five_times_scenario() -> anyhow::Result<()> {
    let fleet = Fleet::start("crash", 27, 17161)?;
    let history = Arc::new(History::default());
    let load = Load::start(
        &fleet,
        &User::spread(USERS, &[1, 2, 3]),
        "crash",
        history.clone(),
    )
    .await?;
    let race = Race::start(&fleet, &[1, 2, 3], "crash", history.clone()).await?;
    let mut took = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let start = Instant::now();
        fleet.kill(&[2])?;
        fleet.start_again(&[2])?;
        fleet.wait_healthy(&[1, 2, 3], Duration::from_secs(60))?;
        took.push(format!("{:.1}", start.elapsed().as_secs_f64()));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let raced = race.stop().await;
    let history = load.stop().await;
    let (converge, report) = history
        .converge(&fleet, &[1, 2, 3], Duration::from_secs(30))
        .await?;
    print_scenario(
        "kill-restart-x5",
        &report,
        converge,
        &format!(
            "healthy_after={}s raced={} won_once={} won_never={} failures_by_cause=[{}]",
            took.join("/"),
            raced.raced,
            raced.won_once,
            raced.won_never,
            failures_by_cause(&history)
        ),
    );
    assert_clean("kill-restart-x5", &report, &fleet);
    assert!(raced.won_once > 50, "too few races decided: {raced:?}");
    Ok(())
}

/// Scenario 8: the whole fleet killed at once (`docker kill` of all three
/// under load: a bad deploy, a lost availability zone) and started again on
/// its data directories, with `--sync always`: every session acknowledged
/// before the stop is there, none comes back from a logout, and no
/// single-use ticket is consumed twice, before or after. Tickets of two uses,
/// used once before the stop, can be used once more after it and not twice:
/// the nodes remember their votes (with memory-only votes no node could vote
/// on them again).
#[test]
fn kill_the_whole_fleet_and_start_it_again() -> anyhow::Result<()> {
    one_at_a_time(kill_the_whole_fleet_and_start_it_again_scenario())
}

async fn kill_the_whole_fleet_and_start_it_again_scenario() -> anyhow::Result<()> {
    let always: Vec<(u8, &str, &str)> = (1..=3).map(|n| (n, "TESSERA_SYNC", "always")).collect();
    let fleet = Fleet::start_with_env("fullstop", 28, 17171, &always, &[1, 2, 3])?;
    let history = Arc::new(History::default());
    let load = Load::start(
        &fleet,
        &User::spread(USERS, &[1, 2, 3]),
        "fullstop",
        history.clone(),
    )
    .await?;
    let race = Race::start(&fleet, &[1, 2, 3], "fullstop", history.clone()).await?;
    let client = fleet.client(&[1, 2, 3], Duration::from_secs(3)).await?;
    let twice: Vec<String> = (0..30).map(|n| format!("PT-fullstop-{n}")).collect();
    for id in &twice {
        let ticket = NewTicket::new(id.clone(), Duration::from_secs(600))
            .kind("PT")
            .max_uses(2);
        client.put(ticket).await?;
        client.consume(id).await?;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let acknowledged_before = history.acknowledged();
    let start = Instant::now();
    fleet.kill(&[1, 2, 3])?;
    fleet.start_again(&[1, 2, 3])?;
    let healthy = fleet.wait_healthy(&[1, 2, 3], Duration::from_secs(90))?;
    let healthy_after = start.elapsed().max(healthy);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let raced = race.stop().await;
    let history = load.stop().await;
    let mut second_use_refused = Vec::new();
    for id in &twice {
        if let Err(e) = client.consume(id).await {
            second_use_refused.push(format!("{id}: {e}"));
        }
        assert!(
            client.consume(id).await.is_err(),
            "{id}: a ticket of two uses was used three times"
        );
    }
    let (converge, report) = history
        .converge(&fleet, &[1, 2, 3], Duration::from_secs(30))
        .await?;
    print_scenario(
        "full-stop",
        &report,
        converge,
        &format!(
            "acknowledged_before_kill={acknowledged_before} healthy_after={:.1}s second_uses_after={}/{} raced={} won_once={} won_never={} failures_by_cause=[{}]",
            healthy_after.as_secs_f64(),
            twice.len() - second_use_refused.len(),
            twice.len(),
            raced.raced,
            raced.won_once,
            raced.won_never,
            failures_by_cause(&history)
        ),
    );
    assert_clean("full-stop", &report, &fleet);
    assert!(
        acknowledged_before > 100,
        "too little was acknowledged before the kill: {acknowledged_before}"
    );
    assert!(raced.won_once > 20, "too few races decided: {raced:?}");
    assert!(
        second_use_refused.is_empty(),
        "uses refused after the restart: {second_use_refused:?}"
    );
    Ok(())
}

/// Scenario 3: Rolling restart of every node, one at a time, under load.
#[test]
fn rolling_restart_keeps_every_session() -> anyhow::Result<()> {
    one_at_a_time(rolling_restart_keeps_every_session_scenario())
}

async fn rolling_restart_keeps_every_session_scenario() -> anyhow::Result<()> {
    let fleet = Fleet::start("roll", 23, 17121)?;
    let history = Arc::new(History::default());
    let load = Load::start(&fleet, &User::spread(USERS, &[1, 2, 3]), "roll", history).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut took = Vec::new();
    for node in 1..=3 {
        let start = Instant::now();
        fleet.restart(node)?;
        fleet.wait_healthy(&[1, 2, 3], Duration::from_secs(60))?;
        took.push(format!("node{node}={:.1}s", start.elapsed().as_secs_f64()));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let history = load.stop().await;
    let (converge, report) = history
        .converge(&fleet, &[1, 2, 3], Duration::from_secs(30))
        .await?;
    print_scenario("rolling-restart", &report, converge, &took.join(" "));
    assert_clean("rolling-restart", &report, &fleet);
    Ok(())
}

/// Scenario 4: Scale up to four nodes under load: the new node catches up and serves
/// reads of old tickets.
#[test]
fn scale_up_to_four_nodes() -> anyhow::Result<()> {
    one_at_a_time(scale_up_to_four_nodes_scenario())
}

async fn scale_up_to_four_nodes_scenario() -> anyhow::Result<()> {
    let fleet = Fleet::start("scale", 24, 17131)?;
    let history = Arc::new(History::default());
    let load = Load::start(&fleet, &User::spread(USERS, &[1, 2, 3]), "scale", history).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let start = Instant::now();
    fleet.add_node4()?;
    let ready = fleet.wait_healthy(&[4], Duration::from_secs(60))?;
    let ready_after = start.elapsed().max(ready);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let history = load.stop().await;
    // Node 4 alone answers every question about tickets written before it existed.
    let (converge, report) = history
        .converge(&fleet, &[4, 1, 2, 3], Duration::from_secs(30))
        .await?;
    print_scenario(
        "scale-up",
        &report,
        converge,
        &format!("node4_ready={:.1}s", ready_after.as_secs_f64()),
    );
    assert_clean("scale-up", &report, &fleet);
    let members = fleet
        .client(&[4], Duration::from_secs(2))
        .await?
        .members()
        .await?;
    assert_eq!(
        members.iter().filter(|m| m.state == "alive").count(),
        4,
        "{members:?}"
    );
    Ok(())
}

/// Scenario 5: Garbage to every port of every node from a container without the
/// secret: nodes stay up, nothing changes, the counters show the rejects.
#[test]
fn garbage_to_every_port_changes_nothing() -> anyhow::Result<()> {
    one_at_a_time(garbage_to_every_port_changes_nothing_scenario())
}

async fn garbage_to_every_port_changes_nothing_scenario() -> anyhow::Result<()> {
    let fleet = Fleet::start("garbage", 25, 17141)?;
    let history = Arc::new(History::default());
    let load = Load::start(&fleet, &User::spread(USERS, &[1, 2, 3]), "garbage", history).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut before = Vec::new();
    for node in 1..=3 {
        before.push(
            fleet
                .client(&[node], Duration::from_secs(5))
                .await?
                .stats()
                .await?,
        );
    }
    let start = Instant::now();
    let sent = fleet.noise(&[1, 2, 3])?;
    let noise_took = start.elapsed();
    // A wrong token on the API, too.
    let wrong = tessera_client::ClientConfig {
        token: Some("x".repeat(48)),
        tls: fleet.client_tls(),
        ..Default::default()
    };
    let intruder = Client::connect_with([fleet.api_addr(1)], wrong).await?;
    assert!(matches!(
        intruder.get("TGT-anything").await,
        Err(tessera_client::Error::Unauthenticated(_))
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let history = load.stop().await;
    let (converge, report) = history
        .converge(&fleet, &[1, 2, 3], Duration::from_secs(30))
        .await?;
    let mut rejects = Vec::new();
    for node in 1..=3u8 {
        assert!(fleet.is_running(node), "node{node} died\n{}", fleet.logs());
        assert_eq!(fleet.health(node)?, "healthy");
        let after = fleet
            .client(&[node], Duration::from_secs(5))
            .await?
            .stats()
            .await?;
        let earlier = &before[usize::from(node) - 1];
        let handshakes = after.peer_handshakes_rejected - earlier.peer_handshakes_rejected;
        rejects.push(format!("node{node}_handshakes_rejected={handshakes}"));
        assert!(handshakes > 0, "node{node}: {after:?}");
        assert_eq!(after.bad_records, earlier.bad_records, "node{node}");
    }
    let api = fleet
        .client(&[1], Duration::from_secs(5))
        .await?
        .stats()
        .await?;
    assert!(api.api_rejections >= 1, "{api:?}");
    // Every node still counts the same tickets.
    let mut counts = Vec::new();
    for node in 1..=3 {
        counts.push(
            fleet
                .client(&[node], Duration::from_secs(5))
                .await?
                .count()
                .await?
                .total,
        );
    }
    assert!(counts.windows(2).all(|w| w[0] == w[1]), "{counts:?}");
    print_scenario(
        "garbage",
        &report,
        converge,
        &format!(
            "{} api_rejections={} noise={:.1}s [{}]",
            rejects.join(" "),
            api.api_rejections,
            noise_took.as_secs_f64(),
            sent.replace('\n', " | ")
        ),
    );
    assert_clean("garbage", &report, &fleet);
    Ok(())
}

/// Scenario 2: Partition one node away while both sides take writes and sessions are
/// logged out on the majority side; heal; everything converges.
#[test]
fn partition_and_heal() -> anyhow::Result<()> {
    one_at_a_time(partition_and_heal_scenario())
}

async fn partition_and_heal_scenario() -> anyhow::Result<()> {
    let fleet = Fleet::start("partition", 22, 17111)?;
    let history = Arc::new(History::default());
    let majority = Load::start(&fleet, &User::spread(6, &[1, 2]), "major", history.clone()).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let partitioned_at = Instant::now();
    fleet.disconnect(3)?;
    let observer = fleet.client(&[1], Duration::from_secs(2)).await?;
    let split = wait_gone(&observer, "node3", partitioned_at, Duration::from_secs(15)).await;
    // The minority side tries writes too (through its own API port), with a
    // history of its own: an isolated node of an expected three must refuse
    // every one (a put reaches no second copy, a consume no majority).
    let minority_users = vec![
        User {
            issuer: vec![3],
            validator: vec![3],
        };
        3
    ];
    let minority_history = Arc::new(History::default());
    let minority = Load::start(&fleet, &minority_users, "minor", minority_history.clone()).await?;
    // Logouts on the majority side of sessions both sides hold.
    let logged_out = logout_some(&history, &observer, 30).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let minority = minority.stop().await;
    let minority_refused = minority.writes_refused();
    let minority_acknowledged = minority.acknowledged();

    let healed_at = Instant::now();
    fleet.connect(3)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let history = majority.stop().await;
    fleet.wait_healthy(&[1, 2, 3], Duration::from_secs(60))?;
    let (_, report) = history
        .converge(&fleet, &[1, 2, 3], Duration::from_secs(60))
        .await?;
    // From the heal until every node agrees with the history.
    let converge = healed_at.elapsed();
    print_scenario(
        "partition",
        &report,
        converge,
        &format!(
            "split_seen={:.1}s logged_out_on_majority={logged_out} minority_writes_refused={minority_refused} minority_acknowledged={minority_acknowledged}",
            split.as_secs_f64()
        ),
    );
    assert_clean("partition", &report, &fleet);
    assert!(logged_out > 0);
    assert!(
        minority_refused > 0,
        "the minority never refused a write: {report:?}"
    );
    assert_eq!(
        minority_acknowledged, 0,
        "the isolated node acknowledged writes alone"
    );
    Ok(())
}

/// Scenario 6: One node's clock 30 s ahead of the others (the skew budget is 1 s): it
/// is reported, and no ticket expires early or late on the other nodes.
#[test]
fn skewed_clock_changes_no_expiry_decision() -> anyhow::Result<()> {
    one_at_a_time(skewed_clock_changes_no_expiry_decision_scenario())
}

async fn skewed_clock_changes_no_expiry_decision_scenario() -> anyhow::Result<()> {
    let fleet = Fleet::start_with_env(
        "skew",
        26,
        17151,
        &[(3, "TESSERA_CLOCK_OFFSET", "+30s")],
        &[1, 2],
    )?;
    let writer = fleet.client(&[1, 2], Duration::from_secs(5)).await?;
    let put = |id: String, ttl: u64, idle: Option<u64>| {
        let mut ticket = tessera_client::NewTicket::new(id, Duration::from_secs(ttl))
            .kind("TGT")
            .principal("skew");
        if let Some(idle) = idle {
            ticket = ticket.idle(Duration::from_secs(idle));
        }
        ticket
    };
    // Hard deadline in 20 s; idle 6 s kept alive by touches; idle 6 s left alone.
    let (hard, kept, idle) = (20, 300, 300);
    let start = Instant::now();
    for i in 0..50 {
        writer.put(put(format!("TGT-hard-{i}"), hard, None)).await?;
        writer
            .put(put(format!("TGT-kept-{i}"), kept, Some(6)))
            .await?;
        writer
            .put(put(format!("TGT-idle-{i}"), idle, Some(6)))
            .await?;
    }
    // Ask node1 and node2 directly, while touching the kept ones every 2 s.
    let readers = [
        fleet.client(&[1], Duration::from_secs(5)).await?,
        fleet.client(&[2], Duration::from_secs(5)).await?,
    ];
    let live = |client: &Client, prefix: &'static str| {
        let client = client.clone();
        async move {
            let mut live = 0;
            for i in 0..50 {
                if client.get(&format!("TGT-{prefix}-{i}")).await.is_ok() {
                    live += 1;
                }
            }
            live
        }
    };
    let mut early = 0;
    let mut late = 0;
    while start.elapsed() < Duration::from_secs(26) {
        for i in 0..50 {
            writer.touch(&format!("TGT-kept-{i}")).await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let at = start.elapsed();
        for reader in &readers {
            let (hard_live, kept_live, idle_live) = (
                live(reader, "hard").await,
                live(reader, "kept").await,
                live(reader, "idle").await,
            );
            // A second of slack on each side of every deadline for the
            // time the reads themselves take.
            if at < Duration::from_secs(19) {
                early += 50 - hard_live;
            } else if at > Duration::from_secs(22) {
                late += hard_live;
            }
            early += 50 - kept_live;
            if at > Duration::from_secs(9) {
                late += idle_live;
            } else if at < Duration::from_secs(5) {
                early += 50 - idle_live;
            }
        }
    }
    let mut reports = Vec::new();
    for node in [1u8, 2] {
        let stats = fleet
            .client(&[node], Duration::from_secs(5))
            .await?
            .stats()
            .await?;
        reports.push(stats.clock_skew_reports);
    }
    let skewed_health = fleet.health(3)?;
    let skewed = fleet
        .client(&[3], Duration::from_secs(5))
        .await?
        .stats()
        .await?;
    println!(
        "SCENARIO skew: early_expiries={early} late_expiries={late} clock_skew_reports={reports:?} node3_health={skewed_health} node3_fenced={}",
        skewed.clock_fenced
    );
    // The skewed node took itself out: not ready, refusing ticket calls.
    assert!(skewed.clock_fenced, "{skewed:?}");
    assert_ne!(skewed_health, "healthy");
    assert_eq!(
        early,
        0,
        "tickets expired early on node1/node2\n{}",
        fleet.logs()
    );
    assert_eq!(late, 0, "tickets outlived their deadline on node1/node2");
    assert!(
        reports.iter().all(|r| *r > 0),
        "skew not reported: {reports:?}"
    );
    Ok(())
}
