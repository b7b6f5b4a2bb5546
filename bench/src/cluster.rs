//! `tessera-bench cluster`: three `tessera serve` processes on 127.0.0.1-3,
//! started and stopped by this command: replication lag and the catch-up of a
//! node that rejoins after N tickets were written without it.
//!
//! Unlike `cargo bench --bench replication` (in-process nodes, lag read from the
//! other store's memory), this drives real processes through the API only: a
//! ticket is "visible" on node B once B's own counters (the `Count` call, which
//! never asks peers) include it, polled as fast as B answers, so the lag
//! figures include one Count round trip of resolution (~0.1-0.3 ms here).

use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tessera_client::{Client, ClientConfig, NewTicket};
use tokio::time::Instant;

use crate::load::Ids;
use crate::machine;
use crate::memory;
use crate::report::{self, ms, thousands};
use crate::stats::{OpStats, OpSummary, median};
use crate::target::{Sharing, Target};

const NODES: usize = 3;
/// Longest wait for the cluster to form, a node to leave, or a ticket to show.
const FORM_LIMIT: Duration = Duration::from_secs(60);
const LAG_LIMIT: Duration = Duration::from_secs(2);
const CATCHUP_LIMIT: Duration = Duration::from_secs(300);
const TTL: Duration = Duration::from_secs(3600);

#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// The `tessera` binary (default: next to this one).
    #[arg(long)]
    pub tessera_bin: Option<PathBuf>,
    /// Puts whose lag is measured, one at a time.
    #[arg(long, default_value_t = 2000)]
    pub samples: usize,
    /// Tickets written while one node is down.
    #[arg(long, default_value_t = 1_000_000)]
    pub catchup_tickets: u64,
    /// Times node C is stopped and restarted empty after the write, each
    /// catch-up timed on its own (the figures are the medians).
    #[arg(long, default_value_t = 1)]
    pub catchup_rounds: usize,
    #[arg(long, default_value_t = 1024)]
    pub payload: usize,
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

#[derive(Serialize, Default)]
pub struct ClusterFigures {
    pub put_latency: OpSummary,
    pub lag_to_b: OpSummary,
    pub lag_to_c: OpSummary,
    pub lag_timeouts: u64,
    pub catchup_tickets: u64,
    pub catchup_write_secs: f64,
    pub catchup_write_errors: u64,
    /// From the restart of node C until it holds every ticket (median of
    /// the rounds; `None` if any round did not get there in time).
    pub catchup_secs: Option<f64>,
    /// From the restart of node C until it reports ready (median).
    pub ready_secs: Option<f64>,
    /// Every round's times, in order.
    pub catchup_rounds: Vec<Round>,
}

/// One catch-up round: seconds until node C held every ticket, and until it
/// reported ready (`None`: not within [`CATCHUP_LIMIT`]).
type Round = (Option<f64>, Option<f64>);

/// The node processes and their files; killed and removed on drop.
struct Fleet {
    bin: PathBuf,
    dir: PathBuf,
    children: Vec<Option<Child>>,
    api: Vec<String>,
    gossip_port: u16,
    peer_port: u16,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ip(n: usize) -> String {
    format!("127.0.0.{}", n + 1)
}

/// A port free for TCP and UDP on all three addresses a moment ago.
fn free_port_everywhere() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let port = TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port();
        let ok = (0..NODES).all(|n| {
            TcpListener::bind((ip(n).as_str(), port)).is_ok()
                && UdpSocket::bind((ip(n).as_str(), port)).is_ok()
        });
        if ok {
            return Ok(port);
        }
    }
    anyhow::bail!("no port free on 127.0.0.1-3")
}

fn write_secret(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

fn random_hex(bytes: usize) -> String {
    let mut rng = crate::load::Rng::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ u64::from(std::process::id()),
    );
    (0..bytes)
        .map(|_| format!("{:02x}", rng.next() as u8))
        .collect()
}

impl Fleet {
    fn new(bin: PathBuf) -> anyhow::Result<Fleet> {
        let dir =
            std::env::temp_dir().join(format!("tessera-bench-cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        write_secret(&dir.join("secret"), &random_hex(32))?;
        write_secret(&dir.join("token"), &random_hex(32))?;
        let gossip_port = free_port_everywhere()?;
        let peer_port = free_port_everywhere()?;
        let api = (0..NODES)
            .map(|n| {
                Ok(format!(
                    "{}:{}",
                    ip(n),
                    TcpListener::bind((ip(n).as_str(), 0))?.local_addr()?.port()
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut fleet = Fleet {
            bin,
            dir,
            children: Vec::new(),
            api,
            gossip_port,
            peer_port,
        };
        for n in 0..NODES {
            let child = fleet.spawn(n)?;
            fleet.children.push(Some(child));
        }
        Ok(fleet)
    }

    fn spawn(&self, n: usize) -> anyhow::Result<Child> {
        let seeds: Vec<String> = (0..NODES)
            .map(|m| format!("{}:{}", ip(m), self.gossip_port))
            .collect();
        Command::new(&self.bin)
            .args([
                "serve",
                "--node-id",
                &format!("bench-{n}"),
                "--listen",
                &self.api[n],
            ])
            .args([
                "--gossip-listen",
                &format!("{}:{}", ip(n), self.gossip_port),
            ])
            .args(["--peer-listen", &format!("{}:{}", ip(n), self.peer_port)])
            .args([
                "--seeds",
                &seeds.join(","),
                "--expected-size",
                "3",
                "--log",
                "warn",
                // Memory only, as the single-node comparisons with Redis.
                "--data-dir",
                "none",
            ])
            .arg("--cluster-secret-file")
            .arg(self.dir.join("secret"))
            .arg("--api-token-file")
            .arg(self.dir.join("token"))
            .env_remove("TESSERA_API_TOKEN")
            .env_remove("TESSERA_CLUSTER_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", self.bin.display()))
    }

    /// User plus system CPU seconds of node `n` so far (0 if unknown).
    fn cpu_secs(&self, n: usize) -> f64 {
        self.children[n]
            .as_ref()
            .and_then(|child| machine::cpu_secs(child.id()).ok())
            .unwrap_or(0.0)
    }

    fn token(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.dir.join("token"))?)
    }
}

/// Waits until `client`'s node sees `want` ready members (and itself ready).
async fn wait_members(client: &Client, want: usize, limit: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if let Ok(members) = client.members().await
            && members
                .iter()
                .filter(|m| m.ready && m.state == "alive")
                .count()
                == want
        {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            anyhow::bail!("no {want} ready members after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `client`'s node until its count reaches `want`; the time from `since`.
/// Between polls it waits `pause`, or only yields when `None` (for lag figures,
/// where a sleep's timer granularity would be the measurement).
async fn wait_count(
    client: &Client,
    want: u64,
    since: Instant,
    limit: Duration,
    pause: Option<Duration>,
) -> Option<Duration> {
    loop {
        if let Ok(c) = client.count().await
            && c.total >= want
        {
            return Some(since.elapsed());
        }
        if since.elapsed() > limit {
            return None;
        }
        match pause {
            Some(pause) => tokio::time::sleep(pause).await,
            None => tokio::task::yield_now().await,
        }
    }
}

/// Restarts node C and times until it holds `want` tickets and until it
/// reports ready (seconds; `None`: not within [`CATCHUP_LIMIT`]).
async fn catch_up(fleet: &mut Fleet, client: &Client, want: u64) -> anyhow::Result<Round> {
    let cpu_before = [fleet.cpu_secs(0), fleet.cpu_secs(1)];
    let restarted = Instant::now();
    fleet.children[2] = Some(fleet.spawn(2)?);
    eprintln!("cluster: node C restarted; waiting for {want} tickets");
    let ready = async {
        loop {
            if let Ok(members) = client.members().await
                && members.iter().any(|m| m.node_id == "bench-2" && m.ready)
            {
                return Some(restarted.elapsed());
            }
            if restarted.elapsed() > CATCHUP_LIMIT {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let held = wait_count(
        client,
        want,
        restarted,
        CATCHUP_LIMIT,
        Some(Duration::from_millis(5)),
    );
    let (ready, held) = tokio::join!(ready, held);
    // CPU the three processes spent on it (C: since its start), which unlike
    // the wall-clock time does not depend on what else the machine runs.
    let cpu = [
        fleet.cpu_secs(0) - cpu_before[0],
        fleet.cpu_secs(1) - cpu_before[1],
        fleet.cpu_secs(2),
    ];
    eprintln!(
        "cluster: CPU during the catch-up: A {:.2} s, B {:.2} s, C {:.2} s, all {:.2} s",
        cpu[0],
        cpu[1],
        cpu[2],
        cpu.iter().sum::<f64>()
    );
    Ok((
        held.map(|d| d.as_secs_f64()),
        ready.map(|d| d.as_secs_f64()),
    ))
}

/// Median of the rounds' times; `None` if any round has none.
fn median_time(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let values: Vec<f64> = values.collect::<Option<_>>()?;
    (!values.is_empty()).then(|| median(&values))
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let bin = match args.tessera_bin.clone() {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("tessera"),
    };
    let mut fleet = Fleet::new(bin)?;
    let config = ClientConfig {
        token: Some(fleet.token()?),
        ..ClientConfig::default()
    };
    let mut clients = Vec::new();
    for api in &fleet.api {
        clients.push(Client::connect_with([api.as_str()], config.clone()).await?);
    }
    for c in &clients {
        wait_members(c, NODES, FORM_LIMIT).await?;
    }
    eprintln!("cluster: 3 nodes ready; lag of {} puts", args.samples);
    let payload = Bytes::from(vec![b'l'; args.payload]);
    let ids = Ids::new("lag");
    let mut put = OpStats::default();
    let mut lag_b = OpStats::default();
    let mut lag_c = OpStats::default();
    let mut timeouts = 0;
    let mut expect_b = clients[1].count().await?.total;
    let mut expect_c = clients[2].count().await?.total;
    for k in 0..args.samples as u64 + 100 {
        let start = Instant::now();
        clients[0]
            .put(NewTicket::new(ids.id("TGT", 0, k), TTL).payload(payload.clone()))
            .await?;
        let took = start.elapsed();
        expect_b += 1;
        expect_c += 1;
        let (b, c) = tokio::join!(
            wait_count(&clients[1], expect_b, start, LAG_LIMIT, None),
            wait_count(&clients[2], expect_c, start, LAG_LIMIT, None)
        );
        if k < 100 {
            continue; // warm-up
        }
        put.record(took);
        for (lag, stats) in [(b, &mut lag_b), (c, &mut lag_c)] {
            match lag {
                Some(d) => stats.record(d),
                None => timeouts += 1,
            }
        }
    }
    let mut figures = ClusterFigures {
        put_latency: put.summary(Duration::ZERO),
        lag_to_b: lag_b.summary(Duration::ZERO),
        lag_to_c: lag_c.summary(Duration::ZERO),
        lag_timeouts: timeouts,
        catchup_tickets: args.catchup_tickets,
        ..ClusterFigures::default()
    };

    // Catch-up: node C down, N tickets written through A, C back.
    if let Some(mut child) = fleet.children[2].take() {
        child.kill()?;
        child.wait()?;
    }
    wait_members(&clients[0], NODES - 1, FORM_LIMIT).await?;
    eprintln!(
        "cluster: node C stopped; writing {} tickets through A",
        args.catchup_tickets
    );
    let target = Target::Tessera(vec![format!("http://{}", fleet.api[0])]);
    let conns = target
        .connect(args.clients, Sharing::default(), config.token.as_deref())
        .await?;
    let (errors, took) = memory::load(&conns, args.catchup_tickets, args.payload, "cu", TTL).await;
    figures.catchup_write_secs = took.as_secs_f64();
    figures.catchup_write_errors = errors;
    let want = clients[0].count().await?.total;
    for round in 0..args.catchup_rounds.max(1) {
        if round > 0 {
            // Stop C again; it restarts empty.
            if let Some(mut child) = fleet.children[2].take() {
                child.kill()?;
                child.wait()?;
            }
            wait_members(&clients[0], NODES - 1, FORM_LIMIT).await?;
        }
        let (held, ready) = catch_up(&mut fleet, &clients[2], want).await?;
        eprintln!(
            "cluster: catch-up round {}: held all after {}, ready after {}",
            round + 1,
            held.map_or("-".to_owned(), |s| format!("{s:.2} s")),
            ready.map_or("-".to_owned(), |s| format!("{s:.2} s")),
        );
        figures.catchup_rounds.push((held, ready));
    }
    figures.catchup_secs = median_time(figures.catchup_rounds.iter().map(|r| r.0));
    figures.ready_secs = median_time(figures.catchup_rounds.iter().map(|r| r.1));
    drop(fleet);

    let lag_row =
        |name: &str, s: &OpSummary| vec![name.to_owned(), ms(s.p50_ms), ms(s.p99_ms), ms(s.max_ms)];
    let mut md = report::table(
        &["measure (ms)", "median", "p99", "max"],
        &[
            lag_row("put on A (call latency)", &figures.put_latency),
            lag_row("lag A -> B", &figures.lag_to_b),
            lag_row("lag A -> C", &figures.lag_to_c),
        ],
    );
    md.push_str(&format!(
        "\n{} puts of {} B one at a time on node A; lag = from just before the put until node B's (C's) own count includes it ({} not seen within {:?}).\n\n",
        args.samples, args.payload, figures.lag_timeouts, LAG_LIMIT
    ));
    let secs = |v: Option<f64>| {
        v.map(|s| format!("{s:.2} s"))
            .unwrap_or_else(|| format!("not within {CATCHUP_LIMIT:?}"))
    };
    // With several rounds: the median, then every round.
    let rounds = |pick: fn(&Round) -> Option<f64>| {
        if figures.catchup_rounds.len() < 2 {
            return String::new();
        }
        let each: Vec<String> = figures
            .catchup_rounds
            .iter()
            .map(|r| pick(r).map_or("-".to_owned(), |s| format!("{s:.2}")))
            .collect();
        format!(" (median; rounds {} s)", each.join(" / "))
    };
    md.push_str(&report::table(
        &["catch-up of node C", "time"],
        &[
            vec![
                format!(
                    "{} tickets written through A while C was down",
                    thousands(args.catchup_tickets as f64)
                ),
                format!(
                    "{:.2} s ({} /s, {} errors)",
                    figures.catchup_write_secs,
                    thousands(args.catchup_tickets as f64 / figures.catchup_write_secs.max(1e-9)),
                    errors
                ),
            ],
            vec![
                "restart of C until it holds them all".to_owned(),
                secs(figures.catchup_secs) + &rounds(|r| r.0),
            ],
            vec![
                "restart of C until it reports ready".to_owned(),
                secs(figures.ready_secs) + &rounds(|r| r.1),
            ],
        ],
    ));
    md.push_str("\nThree `tessera serve` processes on 127.0.0.1-3 (static seeds, default intervals: gossip 500 ms, anti-entropy 2 s), started by the bench.\n");
    report::write_section(
        args.json_out.as_deref(),
        "cluster",
        "Cluster: replication lag and catch-up",
        figures,
        md,
    )
}
