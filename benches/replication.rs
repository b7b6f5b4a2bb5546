//! Replication in a 3-node in-process cluster: how soon a put on one node is
//! held by the others (against the put call's own latency as the baseline), and
//! how fast a node that was stopped catches up on restart (against the rate the
//! writes it missed were made at).
//!
//! ```text
//! cargo bench --bench replication
//! cargo bench --bench replication -- --samples 2000 --rounds 3 --payload 1024 --tickets 100000 --writers 64 --catchup-rounds 3
//! cargo bench --bench replication -- --skip-catchup     # lag only
//! cargo bench --bench replication -- --anti-entropy-ms 2000   # the node default
//! ```
//!
//! The cluster is the one `tests/cluster.rs` builds: real nodes in this process
//! (`tessera::server::start_with`) on 127.0.0.1, the real gRPC API, Noise peer
//! connections and chitchat gossip, static seeds on pre-chosen UDP ports,
//! `anti_entropy_interval` 500 ms and `discovery_interval` 1 s, the cluster
//! secret and an API token (which the client sends); every other setting is
//! the default (write quorum 2, gossip every 500 ms). The nodes and the bench
//! share one Tokio runtime and the machine's cores, so besides wall-clock
//! times the report gives the process's CPU time per phase (`/proc/self/stat`)
//! and the machine's load average and CPU pressure (`/proc/pressure/cpu`):
//! other work on the machine slows wall-clock rates a lot on 2 cores.
//!
//! **Lag.** Tickets are put one at a time through `tessera_client::Client`
//! connected to node-0 only. For each, the clock starts just before the put
//! call; a dedicated OS thread polls the LOCAL stores of node-1 and node-2
//! (`Store::holds`, no read repair involved) every 50 µs (`std::thread::sleep`,
//! so the poller neither spins a core nor is quantized by Tokio's 1 ms timer)
//! and notes when each first holds the ticket, bounded at 2 s. The put call's
//! latency is the baseline: the call returns once 2 nodes hold the ticket
//! (node-0 and whichever peer acknowledged first), so the lag to one peer can be
//! below the put latency and the lag to the other above it.
//!
//! **Catch-up.** Each round starts a fresh cluster, stops node-2 gracefully,
//! writes `--tickets` tickets through node-0's replication layer in-process
//! (`Replicator::put` from `--writers` concurrent tasks), then starts node-2
//! again (same node id, same configuration, empty store) and times how long
//! until it sees its peers, holds every ticket (`count().total`) and reports
//! ready. The baseline is the rate of the writes themselves through node-0.
//! While the writes run, the bench samples how many of the 256 anti-entropy
//! buckets differ between node-0 and node-1 (in-flight writes): an
//! anti-entropy round between them exchanges those buckets whole.
//!
//! Every wait and loop is bounded in count and time; a bound that is hit is a
//! clear error (exit status 1), never a hang. No tracing subscriber is
//! installed, so the nodes log nothing.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera::config::{DiscoveryMode, NodeConfig};
use tessera::secret::{ApiToken, ClusterSecret};
use tessera::server::{self, NodeHandle, NodeOptions};
use tessera::store::{PutTicket, Store};
use tessera_client::{Client, ClientConfig, NewTicket};
use tokio::sync::oneshot;

/// TTL of every ticket the bench writes.
const TICKET_TTL: Duration = Duration::from_secs(600);
/// How long a put may stay unseen on a peer before the sample counts as missing.
const LAG_LIMIT: Duration = Duration::from_secs(2);
/// Pause between two polls of the peers' stores.
const POLL_PAUSE: Duration = Duration::from_micros(50);
/// Bound on one put call (the client's own per-attempt timeout is 5 s too).
const PUT_TIMEOUT: Duration = Duration::from_secs(5);
/// Untimed puts before the first lag round.
const WARMUP_PUTS: usize = 200;
/// Bound on the cluster forming (membership converged, every node ready).
const FORM_LIMIT: Duration = Duration::from_secs(30);
/// Bound on a graceful stop of one node.
const STOP_LIMIT: Duration = Duration::from_secs(20);
/// Bound on the survivors dropping a stopped node from their live sets.
const LEAVE_LIMIT: Duration = Duration::from_secs(15);
/// Bound on a restarted node holding everything and reporting ready.
const CATCHUP_LIMIT: Duration = Duration::from_secs(120);
/// Poll period while waiting for the restarted node.
const CATCHUP_POLL: Duration = Duration::from_millis(5);

#[derive(Clone, Debug)]
struct Options {
    samples: usize,
    rounds: usize,
    payload: usize,
    tickets: usize,
    writers: usize,
    catchup_rounds: usize,
    time_cap: Duration,
    anti_entropy: Duration,
    skip_lag: bool,
    skip_catchup: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            samples: 2_000,
            rounds: 3,
            payload: 1024,
            tickets: 100_000,
            writers: 64,
            catchup_rounds: 3,
            time_cap: Duration::from_secs(60),
            anti_entropy: Duration::from_millis(500),
            skip_lag: false,
            skip_catchup: false,
        }
    }
}

const USAGE: &str = "\
usage: cargo bench --bench replication -- [options]
  --samples N          lag samples (puts) per round (default 2000)
  --rounds N           lag rounds; the summary gives medians (default 3)
  --payload BYTES      ticket payload size (default 1024)
  --tickets N          tickets written while node-2 is away (default 100000)
  --writers N          concurrent writer tasks for those tickets (default 64)
  --catchup-rounds N   catch-up rounds, a fresh cluster each (default 3)
  --time-cap SECS      stop a lag round or a bulk write early after this long (default 60)
  --anti-entropy-ms N  anti-entropy interval of every node (default 500, as in
                       tests/cluster.rs; the node default is 2000)
  --skip-lag           only the catch-up part
  --skip-catchup       only the lag part
Unknown arguments (such as the --bench cargo passes) are ignored.";

impl Options {
    fn parse() -> Result<Options, String> {
        let mut options = Options::default();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                None => (arg.clone(), None),
            };
            match name.as_str() {
                "--help" | "-h" => return Err(USAGE.to_owned()),
                "--skip-lag" => {
                    options.skip_lag = true;
                    continue;
                }
                "--skip-catchup" => {
                    options.skip_catchup = true;
                    continue;
                }
                "--samples" | "--rounds" | "--payload" | "--tickets" | "--writers"
                | "--catchup-rounds" | "--time-cap" | "--anti-entropy-ms" => {}
                _ => continue,
            }
            let value = match inline {
                Some(value) => value,
                None => args
                    .next()
                    .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))?,
            };
            let number = value
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name}: expected a positive integer, got {value:?}"))?;
            match name.as_str() {
                "--samples" => options.samples = number,
                "--rounds" => options.rounds = number,
                "--payload" => options.payload = number,
                "--tickets" => options.tickets = number,
                "--writers" => options.writers = number,
                "--catchup-rounds" => options.catchup_rounds = number,
                "--anti-entropy-ms" => options.anti_entropy = Duration::from_millis(number as u64),
                _ => options.time_cap = Duration::from_secs(number as u64),
            }
        }
        if options.skip_lag && options.skip_catchup {
            return Err(format!(
                "nothing to do with both --skip-lag and --skip-catchup\n{USAGE}"
            ));
        }
        Ok(options)
    }

    /// The arguments that reproduce this run, for the report.
    fn command(&self) -> String {
        let mut command = format!(
            "cargo bench --bench replication -- --samples {} --rounds {} --payload {} --tickets {} --writers {} --catchup-rounds {}",
            self.samples,
            self.rounds,
            self.payload,
            self.tickets,
            self.writers,
            self.catchup_rounds
        );
        if self.anti_entropy != Options::default().anti_entropy {
            command.push_str(&format!(
                " --anti-entropy-ms {}",
                self.anti_entropy.as_millis()
            ));
        }
        if self.time_cap != Options::default().time_cap {
            command.push_str(&format!(" --time-cap {}", self.time_cap.as_secs()));
        }
        if self.skip_lag {
            command.push_str(" --skip-lag");
        }
        if self.skip_catchup {
            command.push_str(" --skip-catchup");
        }
        command
    }
}

// ---- the cluster (as tests/cluster.rs builds it) ----

/// The API token every node requires and the bench's client sends.
const API_TOKEN: &str = "an-example-api-token-of-32-bytes-or-more";

fn secret() -> Result<ClusterSecret, String> {
    ClusterSecret::new(b"an-example-cluster-secret-of-32-bytes-or-more")
        .map_err(|e| format!("cluster secret: {e}"))
}

/// A free UDP port on 127.0.0.1 for gossip (chosen up front so every node can
/// be given every other's address as a seed).
fn free_gossip_addr() -> Result<SocketAddr, String> {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map_err(|e| format!("no free UDP port on 127.0.0.1: {e}"))
}

struct Cluster {
    nodes: Vec<Option<NodeHandle>>,
    gossip: Vec<SocketAddr>,
    secret: ClusterSecret,
    api_token: ApiToken,
    anti_entropy: Duration,
}

impl Cluster {
    /// Start `size` nodes seeded with each other; wait (bounded) until every
    /// node sees every node live and reports ready.
    async fn start(size: usize, anti_entropy: Duration) -> Result<Cluster, String> {
        let gossip = (0..size)
            .map(|_| free_gossip_addr())
            .collect::<Result<Vec<_>, _>>()?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            gossip,
            secret: secret()?,
            api_token: ApiToken::new(API_TOKEN.as_bytes())
                .map_err(|e| format!("API token: {e}"))?,
            anti_entropy,
        };
        for n in 0..size {
            let node = cluster.start_node(n).await?;
            cluster.nodes.push(Some(node));
        }
        let expected: HashSet<String> = (0..size).map(|n| format!("node-{n}")).collect();
        let formed = wait_until(FORM_LIMIT, Duration::from_millis(20), || {
            cluster
                .running()
                .all(|node| node.is_ready() && live_ids(node) == expected)
        })
        .await;
        if formed.is_none() {
            return Err(format!(
                "the cluster did not form within {FORM_LIMIT:?}: {}",
                cluster.describe()
            ));
        }
        Ok(cluster)
    }

    fn config(&self, n: usize) -> NodeConfig {
        NodeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            node_id: format!("node-{n}"),
            discovery: Some(DiscoveryMode::Static),
            seeds: self.gossip.iter().map(|a| a.to_string()).collect(),
            gossip_listen: Some(self.gossip[n]),
            peer_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            anti_entropy_interval: self.anti_entropy,
            discovery_interval: Duration::from_secs(1),
            data_dir: None,
            ..NodeConfig::default()
        }
    }

    async fn start_node(&self, n: usize) -> Result<NodeHandle, String> {
        server::start_with(
            self.config(n),
            NodeOptions {
                secret: Some(self.secret.clone()),
                api_token: Some(self.api_token.clone()),
                ..NodeOptions::default()
            },
        )
        .await
        .map_err(|e| format!("node-{n} did not start: {e}"))
    }

    fn node(&self, n: usize) -> Result<&NodeHandle, String> {
        self.nodes
            .get(n)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("node-{n} is not running"))
    }

    fn running(&self) -> impl Iterator<Item = &NodeHandle> {
        self.nodes.iter().flatten()
    }

    /// Stop node `n` gracefully (bounded); returns how long the stop took.
    async fn stop_node(&mut self, n: usize) -> Result<Duration, String> {
        let node = self
            .nodes
            .get_mut(n)
            .and_then(Option::take)
            .ok_or_else(|| format!("node-{n} is not running"))?;
        let start = Instant::now();
        match tokio::time::timeout(STOP_LIMIT, node.stop()).await {
            Ok(Ok(())) => Ok(start.elapsed()),
            Ok(Err(e)) => Err(format!("node-{n} stopped with an error: {e}")),
            Err(_) => Err(format!("node-{n} did not stop within {STOP_LIMIT:?}")),
        }
    }

    fn describe(&self) -> String {
        self.running()
            .map(|n| {
                let mut live: Vec<String> = live_ids(n).into_iter().collect();
                live.sort();
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
    async fn stop_all(mut self) -> Result<(), String> {
        let stops = self
            .nodes
            .iter_mut()
            .filter_map(Option::take)
            .map(|node| tokio::time::timeout(STOP_LIMIT, node.stop()));
        for stopped in futures::future::join_all(stops).await {
            match stopped {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("a node stopped with an error: {e}")),
                Err(_) => return Err(format!("a node did not stop within {STOP_LIMIT:?}")),
            }
        }
        Ok(())
    }
}

fn live_ids(node: &NodeHandle) -> HashSet<String> {
    node.membership()
        .map(|m| {
            m.live_members()
                .iter()
                .map(|m| m.node_id.to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Poll `condition` every `pause` until it holds or `limit` passes; how long
/// it took, or `None` at the limit.
async fn wait_until(
    limit: Duration,
    pause: Duration,
    mut condition: impl FnMut() -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if condition() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(pause).await;
    }
}

// ---- statistics and formatting ----

/// Nearest-rank percentile of sorted values (`p` in 0..=1).
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn median_duration(values: &[Duration]) -> Duration {
    Duration::from_secs_f64(median(
        &values.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
    ))
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The system load average (Linux), to show how busy the machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unavailable".into())
}

/// CPU pressure (Linux PSI): the share of time some runnable task waited for
/// a core, averaged over 10 s and 60 s; shows contention the load average hides.
fn cpu_pressure() -> String {
    std::fs::read_to_string("/proc/pressure/cpu")
        .ok()
        .and_then(|text| {
            let some = text.lines().find(|l| l.starts_with("some"))?;
            let field = |name: &str| {
                some.split_whitespace()
                    .find_map(|f| f.strip_prefix(name))
                    .map(str::to_owned)
            };
            Some(format!(
                "{}% (10 s), {}% (60 s)",
                field("avg10=")?,
                field("avg60=")?
            ))
        })
        .unwrap_or_else(|| "unavailable".into())
}

/// CPU time (user + system) this process used so far, all threads: every
/// node and the bench. Rates per CPU-second hold up better than wall-clock
/// rates when other work shares the cores. Zero where /proc is unavailable.
fn process_cpu() -> Duration {
    // Fields 14 and 15 of /proc/self/stat, in clock ticks (USER_HZ, 100 on Linux).
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let user = fields.get(11)?.parse::<u64>().ok()?;
            let system = fields.get(12)?.parse::<u64>().ok()?;
            Some(user + system)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

// ---- lag ----

/// What the poller thread is asked: watch these stores for `id`, from `start`.
struct Probe {
    id: String,
    start: Instant,
    reply: oneshot::Sender<Sighting>,
}

/// When each watched store first held the ticket (`None`: not within the limit).
struct Sighting {
    seen: Vec<Option<Duration>>,
    polls: u64,
    polling: Duration,
}

/// A thread that polls the peers' local stores; it ends when the sender drops.
fn spawn_poller(stores: Vec<Arc<Store>>) -> Result<mpsc::Sender<Probe>, String> {
    let (probes, requests) = mpsc::channel::<Probe>();
    std::thread::Builder::new()
        .name("lag-poller".into())
        .spawn(move || {
            while let Ok(probe) = requests.recv() {
                let mut seen: Vec<Option<Duration>> = vec![None; stores.len()];
                let mut polls = 0u64;
                let began = Instant::now();
                loop {
                    polls += 1;
                    for (slot, store) in seen.iter_mut().zip(&stores) {
                        if slot.is_none() && store.holds(&probe.id) {
                            *slot = Some(probe.start.elapsed());
                        }
                    }
                    if seen.iter().all(Option::is_some) || probe.start.elapsed() >= LAG_LIMIT {
                        break;
                    }
                    std::thread::sleep(POLL_PAUSE);
                }
                let _ = probe.reply.send(Sighting {
                    seen,
                    polls,
                    polling: began.elapsed(),
                });
            }
        })
        .map_err(|e| format!("cannot start the poller thread: {e}"))?;
    Ok(probes)
}

/// Picks one series of durations out of a round.
type Pick = fn(&LagRound) -> &[Duration];

/// One round of lag samples.
#[derive(Default)]
struct LagRound {
    /// Sorted, successful puts only.
    put: Vec<Duration>,
    /// Per watched peer, sorted (samples seen within the limit).
    peer: Vec<Vec<Duration>>,
    /// The first peer to hold it, and both (sorted).
    first: Vec<Duration>,
    both: Vec<Duration>,
    /// Per peer: samples where the peer held it before the put returned.
    before_put: Vec<usize>,
    /// Per peer: samples where that peer alone held it first (same poll = a tie).
    first_alone: Vec<usize>,
    ties: usize,
    /// Per peer: samples where the peer did not hold it within the limit.
    missing: Vec<usize>,
    errors: usize,
    error_samples: Vec<String>,
    polls: u64,
    polling: Duration,
    elapsed: Duration,
    /// CPU time of this process during the round.
    cpu: Duration,
    capped: bool,
}

async fn put_and_watch(
    client: &Client,
    poller: &mpsc::Sender<Probe>,
    id: String,
    payload: &Bytes,
) -> Result<(Duration, Sighting), String> {
    let ticket = NewTicket::new(id.clone(), TICKET_TTL).payload(payload.clone());
    let (reply, sighting) = oneshot::channel();
    let start = Instant::now();
    poller
        .send(Probe { id, start, reply })
        .map_err(|_| "the poller thread is gone".to_owned())?;
    let put = tokio::time::timeout(PUT_TIMEOUT, client.put(ticket)).await;
    let put_latency = start.elapsed();
    // Always collect the sighting, so the poller is free for the next probe.
    let sighting = tokio::time::timeout(LAG_LIMIT + Duration::from_secs(1), sighting)
        .await
        .map_err(|_| "the poller did not answer in time".to_owned())?
        .map_err(|_| "the poller dropped a probe".to_owned())?;
    match put {
        Err(_) => Err(format!("put: no answer within {PUT_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("put: {e}")),
        Ok(Ok(_)) => Ok((put_latency, sighting)),
    }
}

async fn lag_round(
    client: &Client,
    poller: &mpsc::Sender<Probe>,
    round: usize,
    options: &Options,
    payload: &Bytes,
    peers: usize,
) -> LagRound {
    let mut out = LagRound {
        peer: vec![Vec::with_capacity(options.samples); peers],
        before_put: vec![0; peers],
        first_alone: vec![0; peers],
        missing: vec![0; peers],
        ..LagRound::default()
    };
    let cpu = process_cpu();
    let start = Instant::now();
    for n in 0..options.samples {
        if start.elapsed() >= options.time_cap {
            out.capped = true;
            break;
        }
        let id = format!("ST-{n}-lag{round}");
        match put_and_watch(client, poller, id, payload).await {
            Ok((put, sighting)) => {
                out.put.push(put);
                out.polls += sighting.polls;
                out.polling += sighting.polling;
                for (p, seen) in sighting.seen.iter().enumerate() {
                    match seen {
                        Some(lag) => {
                            out.peer[p].push(*lag);
                            if *lag <= put {
                                out.before_put[p] += 1;
                            }
                        }
                        None => out.missing[p] += 1,
                    }
                }
                if let Some(first) = sighting.seen.iter().flatten().min() {
                    out.first.push(*first);
                    let firsts: Vec<usize> = (0..sighting.seen.len())
                        .filter(|&p| sighting.seen[p] == Some(*first))
                        .collect();
                    match firsts.as_slice() {
                        [p] => out.first_alone[*p] += 1,
                        _ => out.ties += 1,
                    }
                }
                if sighting.seen.iter().all(Option::is_some)
                    && let Some(both) = sighting.seen.iter().flatten().max()
                {
                    out.both.push(*both);
                }
            }
            Err(e) => {
                out.errors += 1;
                if out.error_samples.len() < 5 && !out.error_samples.contains(&e) {
                    out.error_samples.push(e);
                }
            }
        }
    }
    out.elapsed = start.elapsed();
    out.cpu = process_cpu().saturating_sub(cpu);
    out.put.sort_unstable();
    out.first.sort_unstable();
    out.both.sort_unstable();
    for lags in &mut out.peer {
        lags.sort_unstable();
    }
    out
}

/// Runs the lag part; returns the report lines (Markdown) and the error count.
async fn lag_bench(options: &Options, payload: &Bytes) -> Result<(Vec<String>, usize), String> {
    let cluster = Cluster::start(3, options.anti_entropy).await?;
    let client = Client::connect_with(
        [cluster.node(0)?.api_addr().to_string()],
        ClientConfig {
            call_timeout: PUT_TIMEOUT,
            token: Some(API_TOKEN.to_owned()),
            ..ClientConfig::default()
        },
    )
    .await
    .map_err(|e| format!("client for node-0: {e}"))?;
    let watched = [1usize, 2];
    let stores = watched
        .iter()
        .map(|&n| cluster.node(n).map(|node| node.store().clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let poller = spawn_poller(stores)?;

    // Warm-up (untimed): the client's connection, the peer connections, the maps.
    for n in 0..WARMUP_PUTS {
        put_and_watch(&client, &poller, format!("ST-{n}-lagwarm"), payload)
            .await
            .map_err(|e| format!("warm-up failed: {e}"))?;
    }

    let mut rounds = Vec::new();
    for round in 1..=options.rounds {
        let r = lag_round(&client, &poller, round, options, payload, watched.len()).await;
        let line = |name: &str, lags: &[Duration]| {
            format!(
                "p50 {} p99 {} max {} ({name})",
                ms(percentile(lags, 0.50)),
                ms(percentile(lags, 0.99)),
                ms(lags.last().copied().unwrap_or_default()),
            )
        };
        println!(
            "lag round {round}: {} puts in {:.2} s (CPU {:.2} s), errors {}, not held within {LAG_LIMIT:?}: node-1 {} node-2 {}, mean poll period {:.0} µs{}",
            r.put.len(),
            r.elapsed.as_secs_f64(),
            r.cpu.as_secs_f64(),
            r.errors,
            r.missing[0],
            r.missing[1],
            r.polling.as_secs_f64() * 1e6 / r.polls.max(1) as f64,
            if r.capped { " (time cap hit)" } else { "" },
        );
        println!("    put    {}", line("put call, baseline", &r.put));
        for (p, n) in watched.iter().enumerate() {
            println!(
                "    lag    {}, held before the put returned in {:.1}%, first alone in {:.1}%",
                line(&format!("node-{n}"), &r.peer[p]),
                100.0 * r.before_put[p] as f64 / r.put.len().max(1) as f64,
                100.0 * r.first_alone[p] as f64 / r.put.len().max(1) as f64
            );
        }
        println!(
            "    lag    {}, both in the same poll in {:.1}%",
            line("first peer", &r.first),
            100.0 * r.ties as f64 / r.put.len().max(1) as f64
        );
        println!("    lag    {}", line("both peers", &r.both));
        for e in &r.error_samples {
            println!("    error: {e}");
        }
        rounds.push(r);
    }
    drop(poller);
    cluster.stop_all().await?;

    // Summary rows: median over rounds of the per-round p50 and p99, max over all.
    let summary = |pick: &dyn Fn(&LagRound) -> &[Duration]| {
        let p50 = median_duration(
            &rounds
                .iter()
                .map(|r| percentile(pick(r), 0.50))
                .collect::<Vec<_>>(),
        );
        let p99 = median_duration(
            &rounds
                .iter()
                .map(|r| percentile(pick(r), 0.99))
                .collect::<Vec<_>>(),
        );
        let max = rounds
            .iter()
            .filter_map(|r| pick(r).last().copied())
            .max()
            .unwrap_or_default();
        let per_round = rounds
            .iter()
            .map(|r| format!("{:.3}", percentile(pick(r), 0.50).as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(" / ");
        (p50, p99, max, per_round)
    };
    let (put_p50, put_p99, put_max, put_rounds) = summary(&|r| &r.put);
    let samples: usize = rounds.iter().map(|r| r.put.len()).sum();
    let mut lines = vec![
        format!(
            "### Replication lag: put through `tessera_client` on node-0, {} B payload, one put at a time, {} samples x {} rounds",
            options.payload, options.samples, options.rounds
        ),
        String::new(),
        "Lag: from just before the put call until the peer's local store holds the ticket (polled every 50 µs from a dedicated thread). Medians over the rounds of the per-round p50 and p99; max over all rounds.".into(),
        String::new(),
        "| measure | p50 | vs put p50 | p50 per round (ms) | p99 | max | held before put returned | held first | not held within 2 s |".into(),
        "|---|---:|---:|---|---:|---:|---:|---:|---:|".into(),
        format!(
            "| put call latency (baseline) | {} | 1.00x | {put_rounds} | {} | {} | | | |",
            ms(put_p50),
            ms(put_p99),
            ms(put_max)
        ),
    ];
    let ratio = |d: Duration| d.as_secs_f64() / put_p50.as_secs_f64().max(1e-9);
    for (p, n) in watched.iter().enumerate() {
        let (p50, p99, max, per_round) = summary(&|r| &r.peer[p]);
        let before: usize = rounds.iter().map(|r| r.before_put[p]).sum();
        let missing: usize = rounds.iter().map(|r| r.missing[p]).sum();
        let first: usize = rounds.iter().map(|r| r.first_alone[p]).sum();
        lines.push(format!(
            "| lag to node-{n} | {} | {:.2}x | {per_round} | {} | {} | {:.1}% | {:.1}% | {missing} |",
            ms(p50),
            ratio(p50),
            ms(p99),
            ms(max),
            100.0 * before as f64 / samples.max(1) as f64,
            100.0 * first as f64 / samples.max(1) as f64,
        ));
    }
    fn first(r: &LagRound) -> &[Duration] {
        &r.first
    }
    fn both(r: &LagRound) -> &[Duration] {
        &r.both
    }
    let picks: [(&str, Pick); 2] = [
        ("lag to the first peer (min of the two)", first),
        ("lag to both peers (max of the two)", both),
    ];
    let ties: usize = rounds.iter().map(|r| r.ties).sum();
    for (index, (name, pick)) in picks.into_iter().enumerate() {
        let (p50, p99, max, per_round) = summary(&pick);
        let first = if index == 0 {
            format!(
                "same poll: {:.1}%",
                100.0 * ties as f64 / samples.max(1) as f64
            )
        } else {
            String::new()
        };
        lines.push(format!(
            "| {name} | {} | {:.2}x | {per_round} | {} | {} | | {first} | |",
            ms(p50),
            ratio(p50),
            ms(p99),
            ms(max),
        ));
    }
    let errors = rounds
        .iter()
        .map(|r| r.errors + r.missing.iter().sum::<usize>())
        .sum();
    Ok((lines, errors))
}

// ---- catch-up ----

#[derive(Clone, Copy, Debug)]
struct CatchUpRound {
    writes: Duration,
    written: usize,
    stop: Duration,
    left: Duration,
    start_call: Duration,
    peers_live: Duration,
    all_held: Duration,
    ready: Duration,
    held_at_ready: u64,
    /// Buckets differing between node-0 and node-1 during the writes: median, max.
    differing: (usize, usize),
    /// CPU time of this process (all nodes and the bench) during the writes,
    /// and from the restart until node-2 held everything.
    write_cpu: Duration,
    catchup_cpu: Duration,
}

impl CatchUpRound {
    fn write_rate(&self) -> f64 {
        self.written as f64 / self.writes.as_secs_f64().max(1e-9)
    }

    fn catchup_rate(&self) -> f64 {
        self.written as f64 / self.all_held.as_secs_f64().max(1e-9)
    }
}

/// Write `options.tickets` tickets through node-0's replicator from
/// `options.writers` tasks; returns how many were written, how long it took,
/// and, sampled every 100 ms meanwhile, how many of the 256 anti-entropy
/// buckets differ between node-0 and `other` (the only peer, which acknowledged
/// every write): what an anti-entropy round at that instant would ship whole.
async fn bulk_write(
    node: &NodeHandle,
    other: &NodeHandle,
    options: &Options,
    payload: &Bytes,
) -> Result<(usize, Duration, Vec<usize>), String> {
    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (mine, theirs) = (node.store().clone(), other.store().clone());
        let done = done.clone();
        let limit = options.time_cap + Duration::from_secs(5);
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !done.load(Ordering::Acquire) && start.elapsed() < limit {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let (a, b) = (mine.digests(), theirs.digests());
                samples.push(a.iter().zip(&b).filter(|(x, y)| x != y).count());
            }
            samples
        })
    };
    let deadline = start + options.time_cap;
    let tasks: Vec<_> = (0..options.writers.min(options.tickets))
        .map(|task| {
            let writer = node.replicator().clone();
            let payload = payload.clone();
            let (tickets, writers) = (options.tickets, options.writers);
            tokio::spawn(async move {
                let mut written = 0usize;
                for n in (task..tickets).step_by(writers) {
                    if Instant::now() >= deadline {
                        return Err(format!(
                            "the writes did not finish within the time cap ({written} by task {task})"
                        ));
                    }
                    writer
                        .put(PutTicket {
                            id: format!("TGT-{n}-catchup"),
                            ttl_ms: TICKET_TTL.as_millis() as u64,
                            payload: payload.clone(),
                            ..PutTicket::default()
                        })
                        .await
                        .map_err(|e| format!("put TGT-{n}-catchup: {e}"))?;
                    written += 1;
                }
                Ok(written)
            })
        })
        .collect();
    let results = futures::future::join_all(tasks).await;
    let elapsed = start.elapsed();
    done.store(true, Ordering::Release);
    let mut differing = sampler
        .await
        .map_err(|e| format!("digest sampler task: {e}"))?;
    differing.sort_unstable();
    let mut written = 0;
    for result in results {
        written += result.map_err(|e| format!("writer task: {e}"))??;
    }
    Ok((written, elapsed, differing))
}

async fn catchup_round(
    round: usize,
    options: &Options,
    payload: &Bytes,
) -> Result<CatchUpRound, String> {
    let mut cluster = Cluster::start(3, options.anti_entropy).await?;
    let stop = cluster.stop_node(2).await?;
    // Write only once the survivors no longer count node-2 live, so the writes
    // measure the 2-node cluster, not pushes to a node that is going away.
    let survivors: HashSet<String> = ["node-0".to_owned(), "node-1".to_owned()].into();
    let left = wait_until(LEAVE_LIMIT, Duration::from_millis(10), || {
        cluster.running().all(|n| live_ids(n) == survivors)
            && cluster
                .node(0)
                .is_ok_and(|n| n.replicator().peers().len() == 1)
    })
    .await
    .ok_or_else(|| {
        format!(
            "round {round}: node-2 still counted live {LEAVE_LIMIT:?} after its stop: {}",
            cluster.describe()
        )
    })?;

    let cpu = process_cpu();
    let (written, writes, differing) =
        bulk_write(cluster.node(0)?, cluster.node(1)?, options, payload).await?;
    for n in [0, 1] {
        let held = cluster.node(n)?.store().count().total;
        if held < written as u64 {
            return Err(format!(
                "round {round}: node-{n} holds {held} of {written} acknowledged tickets"
            ));
        }
    }

    let write_cpu = process_cpu().saturating_sub(cpu);

    let cpu = process_cpu();
    let mut catchup_cpu = Duration::ZERO;
    let started = Instant::now();
    cluster.nodes[2] = Some(cluster.start_node(2).await?);
    let start_call = started.elapsed();
    let node = cluster.node(2)?;
    let (mut peers_live, mut all_held, mut ready) = (None, None, None);
    let mut held_at_ready = 0;
    while started.elapsed() < CATCHUP_LIMIT {
        let now = started.elapsed();
        if peers_live.is_none() && node.replicator().peers().len() == 2 {
            peers_live = Some(now);
        }
        if all_held.is_none() && node.store().count().total >= written as u64 {
            all_held = Some(now);
            catchup_cpu = process_cpu().saturating_sub(cpu);
        }
        if ready.is_none() && node.is_ready() {
            ready = Some(now);
            held_at_ready = node.store().count().total;
        }
        if peers_live.is_some() && all_held.is_some() && ready.is_some() {
            break;
        }
        tokio::time::sleep(CATCHUP_POLL).await;
    }
    let (Some(peers_live), Some(all_held), Some(ready)) = (peers_live, all_held, ready) else {
        return Err(format!(
            "round {round}: node-2 not caught up {CATCHUP_LIMIT:?} after its restart (peers live {peers_live:?}, all held {all_held:?}, ready {ready:?}): {}",
            cluster.describe()
        ));
    };
    cluster.stop_all().await?;
    Ok(CatchUpRound {
        writes,
        written,
        stop,
        left,
        start_call,
        peers_live,
        all_held,
        ready,
        held_at_ready,
        write_cpu,
        catchup_cpu,
        differing: (
            differing.get(differing.len() / 2).copied().unwrap_or(0),
            differing.last().copied().unwrap_or(0),
        ),
    })
}

async fn catchup_bench(options: &Options, payload: &Bytes) -> Result<Vec<String>, String> {
    let mut rounds = Vec::new();
    for round in 1..=options.catchup_rounds {
        let r = catchup_round(round, options, payload).await?;
        println!(
            "catch-up round {round}: node-2 stop {}, left the live sets after {}; {} writes through node-0 in {} = {} tickets/s, CPU {} \
             (buckets differing node-0/node-1 meanwhile: median {}, max {} of 256); restart: start_with returned {}, peers live {}, \
             all {} held {} ({} after peers live) = {} tickets/s, CPU {}, ready {} (holding {})",
            secs(r.stop),
            secs(r.left),
            r.written,
            secs(r.writes),
            thousands(r.write_rate()),
            secs(r.write_cpu),
            r.differing.0,
            r.differing.1,
            ms(r.start_call),
            secs(r.peers_live),
            r.written,
            secs(r.all_held),
            secs(r.all_held.saturating_sub(r.peers_live)),
            thousands(r.catchup_rate()),
            secs(r.catchup_cpu),
            secs(r.ready),
            r.held_at_ready,
        );
        rounds.push(r);
    }
    let med = |f: &dyn Fn(&CatchUpRound) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    let write_rate = med(&|r| r.write_rate());
    let catchup_rate = med(&|r| r.catchup_rate());
    let mib = options.tickets as f64 * options.payload as f64 / (1024.0 * 1024.0);
    let mut lines = vec![
        format!(
            "### Catch-up: node-2 stopped, {} tickets ({} B payload, TTL 10 min) written through node-0's replicator from {} tasks, node-2 restarted; {} rounds, a fresh cluster each",
            thousands(options.tickets as f64),
            options.payload,
            options.writers,
            options.catchup_rounds
        ),
        String::new(),
        "Times from the restart call (`server::start_with`) on; catch-up rate = tickets / time until node-2 holds them all. \
         CPU = user + system time of this process (all three nodes and the bench; 10 ms ticks), and in brackets the cores it kept busy on average; \
         per CPU-s rates are less sensitive than wall-clock rates to other work on the machine. Medians over the rounds.".into(),
        String::new(),
        "| round | writes through node-0 (baseline) | write rate | CPU during writes | writes per CPU-s | peers live | all held | ready | catch-up rate | CPU until all held | catch-up per CPU-s | catch-up vs write rate | per CPU-s vs writes |".into(),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|".into(),
    ];
    let cpu_cell = |cpu: Duration, wall: Duration| {
        format!(
            "{} ({:.2} cores)",
            secs(cpu),
            cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9)
        )
    };
    let per_cpu = |tickets: usize, cpu: Duration| tickets as f64 / cpu.as_secs_f64().max(1e-9);
    for (i, r) in rounds.iter().enumerate() {
        let (write_eff, catchup_eff) = (
            per_cpu(r.written, r.write_cpu),
            per_cpu(r.written, r.catchup_cpu),
        );
        lines.push(format!(
            "| {} | {} | {} /s | {} | {} | {} | {} | {} | {} /s | {} | {} | {:.2}x | {:.2}x |",
            i + 1,
            secs(r.writes),
            thousands(r.write_rate()),
            cpu_cell(r.write_cpu, r.writes),
            thousands(write_eff),
            secs(r.peers_live),
            secs(r.all_held),
            secs(r.ready),
            thousands(r.catchup_rate()),
            cpu_cell(r.catchup_cpu, r.all_held),
            thousands(catchup_eff),
            r.catchup_rate() / r.write_rate().max(1e-9),
            catchup_eff / write_eff.max(1e-9),
        ));
    }
    let dur = |f: &dyn Fn(&CatchUpRound) -> Duration| {
        median_duration(&rounds.iter().map(f).collect::<Vec<_>>())
    };
    let write_eff = med(&|r| per_cpu(r.written, r.write_cpu));
    let catchup_eff = med(&|r| per_cpu(r.written, r.catchup_cpu));
    lines.push(format!(
        "| **median** | {} | {} /s | {} | {} | {} | {} | {} | {} /s ({:.1} MiB/s of payload) | {} | {} | {:.2}x | {:.2}x |",
        secs(dur(&|r| r.writes)),
        thousands(write_rate),
        secs(dur(&|r| r.write_cpu)),
        thousands(write_eff),
        secs(dur(&|r| r.peers_live)),
        secs(dur(&|r| r.all_held)),
        secs(dur(&|r| r.ready)),
        thousands(catchup_rate),
        mib / dur(&|r| r.all_held).as_secs_f64().max(1e-9),
        secs(dur(&|r| r.catchup_cpu)),
        thousands(catchup_eff),
        catchup_rate / write_rate.max(1e-9),
        catchup_eff / write_eff.max(1e-9),
    ));
    Ok(lines)
}

async fn bench(options: Options) -> Result<bool, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load_before = load_average();
    let pressure_before = cpu_pressure();
    let header = format!(
        "replication: 3 in-process nodes on 127.0.0.1 (static seeds, anti_entropy_interval {} ms, discovery_interval 1 s, \
         other settings default: write quorum 2, gossip 500 ms), {cores} cores shared by the nodes and the bench",
        options.anti_entropy.as_millis()
    );
    println!("{header}");
    // A repeating, not-all-zero payload.
    let payload: Bytes = (0..options.payload)
        .map(|i| (i as u8).wrapping_mul(31))
        .collect();
    let started = Instant::now();

    let mut errors = 0;
    let mut lag_lines = Vec::new();
    if !options.skip_lag {
        let (lines, lag_errors) = lag_bench(&options, &payload).await?;
        lag_lines = lines;
        errors += lag_errors;
    }
    let mut catchup_lines = Vec::new();
    if !options.skip_catchup {
        catchup_lines = catchup_bench(&options, &payload).await?;
    }

    println!();
    println!("command: {}", options.command());
    println!(
        "cores: {cores}; load average (1, 5, 15 min) before: {load_before}, after: {}; \
         CPU pressure (some task waiting) before: {pressure_before}, after: {}; whole run {:.1} s",
        load_average(),
        cpu_pressure(),
        started.elapsed().as_secs_f64()
    );
    println!();
    println!("{header}.");
    for lines in [&lag_lines, &catchup_lines] {
        if !lines.is_empty() {
            println!();
            for line in lines {
                println!("{line}");
            }
        }
    }
    if errors > 0 {
        println!();
        println!(
            "FAILED: {errors} put errors or tickets not held within {LAG_LIMIT:?} (see above)"
        );
    }
    Ok(errors == 0)
}

fn main() {
    let options = match Options::parse() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the Tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let outcome = runtime.block_on(bench(options));
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(message) => {
            eprintln!("replication: {message}");
            std::process::exit(1);
        }
    }
}
