//! Single-node gRPC throughput: put / get / consume with 64 concurrent clients,
//! against an empty RPC (the standard health check) through the same stack as
//! the baseline.
//!
//! ```text
//! cargo bench --bench grpc_throughput
//! cargo bench --bench grpc_throughput -- --ops 20000 --clients 64 --rounds 5 --payload 1024
//! cargo bench --bench grpc_throughput -- --addr http://127.0.0.1:7070   # a running node
//! ```
//!
//! The node runs as a separate process (the `tessera` binary cargo built for
//! this bench, `tessera serve --listen 127.0.0.1:PORT --node-id bench`), so the
//! client and the server do not share one Tokio runtime; on one machine they do
//! share the cores. The clients are Tokio tasks; every `--tasks-per-conn` tasks
//! share one `tessera_client::Client`, which is one HTTP/2 connection (8 tasks
//! per connection by default: 64 clients = 8 connections). The baseline uses
//! as many plain tonic channels, one per 8 tasks as well.
//!
//! Each round runs every workload once, in turn (baseline, put, get, consume,
//! ST cycle), so slow phases of a noisy machine hit them alike; the summary
//! gives the median over the rounds and its ratio to the baseline's median.
//! Each workload is bounded by its operation count and by a time cap; errors
//! are counted and printed, and any error makes the bench exit with status 1.

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_client::{Client, NewTicket};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Service name the node registers with the health service.
const HEALTH_SERVICE: &str = "tessera.v1.TicketStore";
/// TTL of every ticket the bench writes.
const TICKET_TTL: Duration = Duration::from_secs(600);
/// Per-call bound on the baseline (the ticket calls have the client's own 5 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Readiness probe: attempts and the pause between them.
const READY_ATTEMPTS: u32 = 100;
const READY_PAUSE: Duration = Duration::from_millis(50);
/// Distinct error messages kept per workload (the count is always exact).
const ERROR_SAMPLES: usize = 5;
/// Operations of the untimed warm-up per workload.
const WARMUP_OPS: usize = 2_000;

#[derive(Clone, Debug)]
struct Options {
    ops: usize,
    clients: usize,
    tasks_per_conn: usize,
    rounds: usize,
    payload: usize,
    time_cap: Duration,
    addr: Option<String>,
    server_bin: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ops: 20_000,
            clients: 64,
            tasks_per_conn: 8,
            rounds: 5,
            payload: 1024,
            time_cap: Duration::from_secs(60),
            addr: None,
            server_bin: None,
        }
    }
}

const USAGE: &str = "\
usage: cargo bench --bench grpc_throughput -- [options]
  --ops N              operations per workload per round (default 20000)
  --clients N          concurrent client tasks (default 64)
  --tasks-per-conn N   tasks sharing one client / HTTP/2 connection (default 8)
  --rounds N           rounds; the summary gives medians (default 5)
  --payload BYTES      ticket payload size (default 1024)
  --time-cap SECS      stop a workload early after this long (default 60)
  --addr URL           bench a running node instead of starting one
                       (writes tickets ST-<n>-bench with a 10 min TTL)
  --server-bin PATH    tessera binary to start (default: the one cargo built)
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
            let known = [
                "--ops",
                "--clients",
                "--tasks-per-conn",
                "--rounds",
                "--payload",
                "--time-cap",
                "--addr",
                "--server-bin",
            ];
            if name == "--help" || name == "-h" {
                return Err(USAGE.to_owned());
            }
            if !known.contains(&name.as_str()) {
                continue;
            }
            let value = match inline {
                Some(value) => value,
                None => args
                    .next()
                    .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))?,
            };
            let number = || -> Result<usize, String> {
                value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{name}: expected a positive integer, got {value:?}"))
            };
            match name.as_str() {
                "--ops" => options.ops = number()?,
                "--clients" => options.clients = number()?,
                "--tasks-per-conn" => options.tasks_per_conn = number()?,
                "--rounds" => options.rounds = number()?,
                "--payload" => options.payload = number()?,
                "--time-cap" => options.time_cap = Duration::from_secs(number()? as u64),
                "--addr" if value.contains("://") => options.addr = Some(value),
                "--addr" => options.addr = Some(format!("http://{value}")),
                _ => options.server_bin = Some(value),
            }
        }
        Ok(options)
    }

    /// Connections (clients) for the tasks: one per `tasks_per_conn` tasks.
    fn connections(&self) -> usize {
        self.clients.div_ceil(self.tasks_per_conn)
    }

    /// The arguments that reproduce this run, for the report.
    fn command(&self) -> String {
        let mut command = format!(
            "cargo bench --bench grpc_throughput -- --ops {} --clients {} --rounds {} --payload {}",
            self.ops, self.clients, self.rounds, self.payload
        );
        let defaults = Options::default();
        if self.tasks_per_conn != defaults.tasks_per_conn {
            command.push_str(&format!(" --tasks-per-conn {}", self.tasks_per_conn));
        }
        if self.time_cap != defaults.time_cap {
            command.push_str(&format!(" --time-cap {}", self.time_cap.as_secs()));
        }
        if let Some(addr) = &self.addr {
            command.push_str(&format!(" --addr {addr}"));
        }
        command
    }
}

/// The node process; killed (and reaped) when dropped, also on panic.
struct ServerGuard {
    child: Child,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago (the listener is dropped on return).
fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

fn start_server(binary: &str) -> Result<(ServerGuard, String), String> {
    let port = free_port().map_err(|e| format!("no free port on 127.0.0.1: {e}"))?;
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(binary)
        .args(["serve", "--listen", &listen, "--node-id", "bench"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {binary}: {e}"))?;
    Ok((ServerGuard { child }, format!("http://{listen}")))
}

/// Wait until the node answers a ticket call (NotFound for an unknown id).
async fn wait_ready(client: &Client, server: Option<&mut ServerGuard>) -> Result<(), String> {
    let mut server = server;
    let mut last = String::new();
    for _ in 0..READY_ATTEMPTS {
        match client.get("ST-0-bench-ready-probe").await {
            Err(e) if e.is_not_found() => return Ok(()),
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        if let Some(guard) = server.as_deref_mut()
            && let Ok(Some(status)) = guard.child.try_wait()
        {
            return Err(format!("the node exited during start-up ({status})"));
        }
        tokio::time::sleep(READY_PAUSE).await;
    }
    Err(format!(
        "the node did not answer within {:?}: {last}",
        READY_PAUSE * READY_ATTEMPTS
    ))
}

/// The system load average (Linux), to show how busy the machine was.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// What one run of one workload measured.
#[derive(Debug, Default)]
struct Outcome {
    ops: usize,
    elapsed: Duration,
    /// Sorted.
    latencies: Vec<Duration>,
    errors: usize,
    error_samples: Vec<String>,
    capped: bool,
    /// Indices of the operations that succeeded, in no particular order.
    succeeded: Vec<usize>,
}

impl Outcome {
    fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Nearest-rank percentile (`p` in 0..=1).
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = (p * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    fn max(&self) -> Duration {
        self.latencies.last().copied().unwrap_or_default()
    }
}

/// Runs `ops` operations on `clients` concurrent tasks; task `t` does operations
/// `t, t + clients, t + 2 * clients, ...` and stops early at the time cap.
async fn run<F, Fut>(clients: usize, ops: usize, cap: Duration, op: F) -> Outcome
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let deadline = start + cap;
    let tasks: Vec<_> = (0..clients.min(ops))
        .map(|task| {
            let op = Arc::clone(&op);
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(ops / clients + 1);
                let mut succeeded = Vec::with_capacity(ops / clients + 1);
                let mut errors = Vec::new();
                let mut error_count = 0;
                let mut capped = false;
                for index in (task..ops).step_by(clients) {
                    if Instant::now() >= deadline {
                        capped = true;
                        break;
                    }
                    let begun = Instant::now();
                    let result = op(task, index).await;
                    latencies.push(begun.elapsed());
                    match result {
                        Ok(()) => succeeded.push(index),
                        Err(e) => {
                            error_count += 1;
                            if errors.len() < ERROR_SAMPLES {
                                errors.push(e);
                            }
                        }
                    }
                }
                (latencies, succeeded, error_count, errors, capped)
            })
        })
        .collect();
    let mut outcome = Outcome::default();
    for task in tasks {
        match task.await {
            Ok((latencies, succeeded, error_count, errors, capped)) => {
                outcome.latencies.extend(latencies);
                outcome.succeeded.extend(succeeded);
                outcome.errors += error_count;
                outcome.capped |= capped;
                for e in errors {
                    if outcome.error_samples.len() < ERROR_SAMPLES
                        && !outcome.error_samples.contains(&e)
                    {
                        outcome.error_samples.push(e);
                    }
                }
            }
            Err(e) => {
                outcome.errors += 1;
                outcome.error_samples.push(format!("task failed: {e}"));
            }
        }
    }
    outcome.elapsed = start.elapsed();
    outcome.ops = outcome.latencies.len();
    outcome.latencies.sort_unstable();
    outcome
}

/// A fixed permutation of `0..n` (xorshift-driven Fisher-Yates), so reads do not
/// follow the write order.
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// Everything the workloads share: the connections, the payload, the id counter.
struct Bench {
    options: Options,
    tickets: Arc<Vec<Client>>,
    health: Arc<Vec<HealthClient<Channel>>>,
    payload: Bytes,
    next_id: usize,
}

impl Bench {
    /// `count` fresh ticket ids, `ST-<n>-bench`.
    fn ids(&mut self, count: usize) -> Arc<Vec<String>> {
        let first = self.next_id;
        self.next_id += count;
        Arc::new(
            (first..first + count)
                .map(|n| format!("ST-{n}-bench"))
                .collect(),
        )
    }

    async fn baseline(&self, ops: usize) -> Outcome {
        let health = Arc::clone(&self.health);
        let per = self.options.tasks_per_conn;
        run(
            self.options.clients,
            ops,
            self.options.time_cap,
            move |task, _| {
                let mut health = health[task / per].clone();
                async move {
                    let request = HealthCheckRequest {
                        service: HEALTH_SERVICE.to_owned(),
                    };
                    match tokio::time::timeout(CALL_TIMEOUT, health.check(request)).await {
                        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
                        Ok(Err(status)) => {
                            Err(format!("{:?}: {}", status.code(), status.message()))
                        }
                        Ok(Ok(reply))
                            if reply.get_ref().status == ServingStatus::Serving as i32 =>
                        {
                            Ok(())
                        }
                        Ok(Ok(reply)) => Err(format!("health status {}", reply.get_ref().status)),
                    }
                }
            },
        )
        .await
    }

    /// Puts `ids` (all of them, each once); returns the outcome and the ids that
    /// were stored.
    async fn put(&self, ids: Arc<Vec<String>>, max_uses: u32) -> (Outcome, Vec<String>) {
        let tickets = Arc::clone(&self.tickets);
        let payload = self.payload.clone();
        let per = self.options.tasks_per_conn;
        let ops = ids.len();
        let outcome = run(self.options.clients, ops, self.options.time_cap, {
            let ids = Arc::clone(&ids);
            move |task, index| {
                let client = tickets[task / per].clone();
                let ticket = NewTicket::new(ids[index].clone(), TICKET_TTL)
                    .payload(payload.clone())
                    .max_uses(max_uses);
                async move {
                    client
                        .put(ticket)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                }
            }
        })
        .await;
        let stored = outcome.succeeded.iter().map(|&i| ids[i].clone()).collect();
        (outcome, stored)
    }

    /// `ops` gets, cycling through `ids` in a shuffled order.
    async fn get(&self, ids: &[String], ops: usize, seed: u64) -> Outcome {
        let order = shuffled(ids.len(), seed);
        let ids: Arc<Vec<String>> = Arc::new(order.into_iter().map(|i| ids[i].clone()).collect());
        let tickets = Arc::clone(&self.tickets);
        let per = self.options.tasks_per_conn;
        run(
            self.options.clients,
            ops,
            self.options.time_cap,
            move |task, index| {
                let client = tickets[task / per].clone();
                let ids = Arc::clone(&ids);
                async move {
                    let id = &ids[index % ids.len()];
                    client.get(id).await.map(drop).map_err(|e| e.to_string())
                }
            },
        )
        .await
    }

    /// Consumes each of `ids` once, in a shuffled order.
    async fn consume(&self, ids: &[String], seed: u64) -> Outcome {
        let order = shuffled(ids.len(), seed);
        let ids: Arc<Vec<String>> = Arc::new(order.into_iter().map(|i| ids[i].clone()).collect());
        let tickets = Arc::clone(&self.tickets);
        let per = self.options.tasks_per_conn;
        let ops = ids.len();
        run(
            self.options.clients,
            ops,
            self.options.time_cap,
            move |task, index| {
                let client = tickets[task / per].clone();
                let ids = Arc::clone(&ids);
                async move {
                    match client.consume(&ids[index]).await {
                        Ok(ticket) if ticket.uses == 1 => Ok(()),
                        Ok(ticket) => Err(format!("consume returned uses = {}", ticket.uses)),
                        Err(e) => Err(e.to_string()),
                    }
                }
            },
        )
        .await
    }

    /// What a CAS server does per service ticket: issue it (put, usable once),
    /// then validate it (consume). One operation = both calls.
    async fn service_ticket_cycle(&self, ids: Arc<Vec<String>>) -> Outcome {
        let tickets = Arc::clone(&self.tickets);
        let payload = self.payload.clone();
        let per = self.options.tasks_per_conn;
        let ops = ids.len();
        run(
            self.options.clients,
            ops,
            self.options.time_cap,
            move |task, index| {
                let client = tickets[task / per].clone();
                let id = ids[index].clone();
                let ticket = NewTicket::new(id.clone(), TICKET_TTL)
                    .payload(payload.clone())
                    .max_uses(1);
                async move {
                    client.put(ticket).await.map_err(|e| format!("put: {e}"))?;
                    match client.consume(&id).await {
                        Ok(ticket) if ticket.uses == 1 => Ok(()),
                        Ok(ticket) => Err(format!("consume returned uses = {}", ticket.uses)),
                        Err(e) => Err(format!("consume: {e}")),
                    }
                }
            },
        )
        .await
    }
}

const WORKLOADS: [&str; 5] = ["baseline", "put", "get", "consume", "st-cycle"];
const DESCRIPTIONS: [&str; 5] = [
    "baseline: gRPC health check (empty RPC)",
    "put (TTL 10 min)",
    "get (of put tickets, shuffled)",
    "consume (max_uses = 1, each once)",
    "ST cycle: put max_uses = 1, then consume (2 RPCs)",
];

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
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

fn report_line(round: usize, name: &str, outcome: &Outcome) {
    println!(
        "round {round} {name:<9} {ops:>7} ops in {secs:>6.2} s = {rate:>9} ops/s  p50 {p50:>9}  p99 {p99:>9}  max {max:>9}  errors {errors}{capped}",
        ops = outcome.ops,
        secs = outcome.elapsed.as_secs_f64(),
        rate = thousands(outcome.throughput()),
        p50 = ms(outcome.percentile(0.50)),
        p99 = ms(outcome.percentile(0.99)),
        max = ms(outcome.max()),
        errors = outcome.errors,
        capped = if outcome.capped {
            "  (time cap hit)"
        } else {
            ""
        },
    );
    for sample in &outcome.error_samples {
        println!("    error: {sample}");
    }
}

async fn bench(options: Options) -> Result<bool, String> {
    let mut server = None;
    let addr = match &options.addr {
        Some(addr) => addr.clone(),
        None => {
            let binary = options
                .server_bin
                .clone()
                .unwrap_or_else(|| env!("CARGO_BIN_EXE_tessera").to_owned());
            let (guard, addr) = start_server(&binary)?;
            for (name, value) in std::env::vars() {
                if name.starts_with("TESSERA_") {
                    println!("note: {name}={value} applies to the node");
                }
            }
            println!(
                "started {binary} serve --listen {listen} --node-id bench",
                listen = addr.trim_start_matches("http://")
            );
            server = Some(guard);
            addr
        }
    };

    let connections = options.connections();
    let mut tickets = Vec::with_capacity(connections);
    let mut health = Vec::with_capacity(connections);
    for _ in 0..connections {
        // Separate `Client`s, so separate HTTP/2 connections (clones would share one).
        tickets.push(
            Client::connect([addr.as_str()])
                .await
                .map_err(|e| e.to_string())?,
        );
        let channel = Endpoint::from_shared(addr.clone())
            .map_err(|e| format!("{addr}: {e}"))?
            .tcp_nodelay(true)
            .connect_lazy();
        health.push(HealthClient::new(channel));
    }
    wait_ready(&tickets[0], server.as_mut()).await?;
    let load_before = load_average();

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let header = format!(
        "single node, gRPC over 127.0.0.1, {clients} concurrent clients ({connections} HTTP/2 connections x {per} tasks), \
         {ops} ops per workload per round, {rounds} rounds interleaved, {payload}-byte payload, \
         {cores} cores{shared}",
        shared = if options.addr.is_none() {
            " shared by client and server"
        } else {
            " on the client, node already running"
        },
        clients = options.clients,
        per = options.tasks_per_conn,
        ops = options.ops,
        rounds = options.rounds,
        payload = options.payload,
    );
    println!("{header}");

    // A repeating, not-all-zero payload.
    let payload: Bytes = (0..options.payload)
        .map(|i| (i as u8).wrapping_mul(31))
        .collect();
    let mut bench = Bench {
        options: options.clone(),
        tickets: Arc::new(tickets),
        health: Arc::new(health),
        payload,
        next_id: 1,
    };

    // Warm-up (untimed): connections, allocators, the server's maps.
    let warm = WARMUP_OPS.min(options.ops);
    let warm_ids = bench.ids(warm);
    let mut warmup = vec![bench.baseline(warm).await];
    let (outcome, stored) = bench.put(warm_ids, 0).await;
    warmup.push(outcome);
    warmup.push(bench.get(&stored, warm, 7).await);
    for outcome in &warmup {
        if outcome.errors > 0 {
            return Err(format!(
                "warm-up failed: {} errors, e.g. {:?}",
                outcome.errors, outcome.error_samples
            ));
        }
    }

    let mut results: Vec<Vec<Outcome>> = WORKLOADS.iter().map(|_| Vec::new()).collect();
    for round in 1..=options.rounds {
        let outcome = bench.baseline(options.ops).await;
        report_line(round, WORKLOADS[0], &outcome);
        results[0].push(outcome);

        let ids = bench.ids(options.ops);
        let (outcome, stored) = bench.put(ids, 0).await;
        report_line(round, WORKLOADS[1], &outcome);
        results[1].push(outcome);

        let outcome = if stored.is_empty() {
            Outcome {
                errors: 1,
                error_samples: vec!["no ticket was put, nothing to get".into()],
                ..Outcome::default()
            }
        } else {
            bench.get(&stored, options.ops, round as u64).await
        };
        report_line(round, WORKLOADS[2], &outcome);
        results[2].push(outcome);

        // Untimed: the tickets to consume, usable once.
        let ids = bench.ids(options.ops);
        let (prepared, stored) = bench.put(ids, 1).await;
        if prepared.errors > 0 {
            println!(
                "round {round} consume preparation: {} put errors",
                prepared.errors
            );
        }
        let outcome = bench.consume(&stored, round as u64 + 1000).await;
        report_line(round, WORKLOADS[3], &outcome);
        results[3].push(outcome);

        let ids = bench.ids(options.ops);
        let outcome = bench.service_ticket_cycle(ids).await;
        report_line(round, WORKLOADS[4], &outcome);
        results[4].push(outcome);
    }
    let after = bench.tickets[0].count().await.map(|c| c.total);
    drop(bench);
    drop(server);

    let throughput: Vec<Vec<f64>> = results
        .iter()
        .map(|runs| runs.iter().map(Outcome::throughput).collect())
        .collect();
    let baseline = median(&throughput[0]);
    let errors: usize = results.iter().flatten().map(|o| o.errors).sum();
    let capped = results.iter().flatten().any(|o| o.capped);

    println!();
    if let Ok(total) = after {
        println!("tickets in the store at the end: {total}");
    }
    println!("command: {}", options.command());
    if let (Some(before), Some(after)) = (&load_before, load_average()) {
        println!("load average (1, 5, 15 min) before: {before}, after: {after}");
    }
    println!();
    println!("{header}.");
    println!(
        "Medians over the rounds; p50 / p99 are medians of the per-round percentiles, max is over all rounds."
    );
    println!();
    println!(
        "| workload | ops/s (median) | vs baseline | ops/s per round | p50 | p99 | max | errors |"
    );
    println!("|---|---:|---:|---|---:|---:|---:|---:|");
    for (index, runs) in results.iter().enumerate() {
        let rate = median(&throughput[index]);
        let per_round = throughput[index]
            .iter()
            .map(|r| thousands(*r))
            .collect::<Vec<_>>()
            .join(" / ");
        let p50 = median_duration(&runs.iter().map(|o| o.percentile(0.50)).collect::<Vec<_>>());
        let p99 = median_duration(&runs.iter().map(|o| o.percentile(0.99)).collect::<Vec<_>>());
        let max = runs.iter().map(Outcome::max).max().unwrap_or_default();
        let errors: usize = runs.iter().map(|o| o.errors).sum();
        println!(
            "| {} | {} | {:.2}x | {} | {} | {} | {} | {} |",
            DESCRIPTIONS[index],
            thousands(rate),
            rate / baseline.max(1e-9),
            per_round,
            ms(p50),
            ms(p99),
            ms(max),
            errors,
        );
    }
    if capped {
        println!();
        println!("warning: the time cap cut some workloads short (see the ops counts above)");
    }
    if errors > 0 {
        println!();
        println!("FAILED: {errors} errors (see above)");
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
    match runtime.block_on(bench(options)) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(message) => {
            eprintln!("grpc_throughput: {message}");
            std::process::exit(1);
        }
    }
}
