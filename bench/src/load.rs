//! The load loops: virtual clients running a workload against one target,
//! bounded by an operation count and by time, optionally at a fixed rate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;

use crate::machine::{self, CpuTimes, ProcessCpu};
use crate::stats::{OpMap, OpStats, OpSummary};
use crate::target::Conn;

/// Time to live of the tickets the single-operation workloads write.
const PLAIN_TTL: Duration = Duration::from_secs(600);
/// Extra time a round may take past its duration (a call in flight, a slow
/// prefill) before the clients are abandoned.
const GRACE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Login, ~5 service visits (put ST, touch TGT, consume ST elsewhere), logout.
    Cas,
    Put,
    Get,
    Touch,
    Consume,
    Delete,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Cas => "cas",
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Touch => "touch",
            Workload::Consume => "consume",
            Workload::Delete => "delete",
        }
    }

    /// Empty histograms for every operation a round of this workload records.
    /// Made before the round's clock starts: 64 clients' histograms are tens
    /// of MB, and zeroing them in each client's first calls stalled the first
    /// ~50 ms of every round (at a fixed rate that alone set the round's p99).
    fn fresh_stats(self) -> OpMap {
        self.ops()
            .iter()
            .map(|op| (*op, OpStats::default()))
            .collect()
    }

    fn ops(self) -> &'static [&'static str] {
        match self {
            Workload::Cas => &["put_tgt", "put_st", "touch_tgt", "consume_st", "delete_tgt"],
            Workload::Put => &["put"],
            Workload::Get => &["get"],
            Workload::Touch => &["touch"],
            Workload::Consume => &["consume"],
            Workload::Delete => &["delete"],
        }
    }
}

/// What a round runs.
#[derive(Clone, Debug, Serialize)]
pub struct Spec {
    pub workload: Workload,
    pub clients: usize,
    /// Time bound of the measured phase.
    pub duration: Duration,
    /// Operation bound of the measured phase (over all clients).
    pub ops: Option<u64>,
    /// Total operations per second over all clients; none = as fast as possible.
    pub rate: Option<f64>,
    pub tgt_payload: usize,
    pub st_payload: usize,
    /// Payload of the single-operation workloads.
    pub payload: usize,
    /// Service tickets per session (cas).
    pub services: u32,
    /// Fraction of sessions that end with a logout (cas); the others are left to expire.
    pub logout_ratio: f64,
    /// Tickets each client reads or touches (get, touch).
    pub keys_per_client: usize,
    /// Tickets written before a consume or delete round (over all clients).
    pub prefill: u64,
    /// Keep every operation's [`Sample`] (for `--latency-log`).
    #[serde(skip)]
    pub keep_samples: bool,
}

/// What one round measured on one target.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Round {
    pub elapsed_secs: f64,
    /// Fraction of the machine's cores busy during the round (server, load
    /// generator and anything else): how close to saturation a latency was taken.
    #[serde(default)]
    pub cpu_busy: Option<f64>,
    /// CPU the target's server process used over the round, when its PID was
    /// given: per operation (of "all") and in cores.
    #[serde(default)]
    pub server_cpu: Option<ProcessCpu>,
    /// Per operation, plus "all" for every operation together.
    pub ops: BTreeMap<String, OpSummary>,
    /// Every operation, when the spec keeps them (not in the JSON).
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

/// One measured operation: when it was due and how long it took, for finding
/// when in a round the slow ones happened (a stall hits every operation of a
/// few milliseconds; a slow operation kind hits only its own).
#[derive(Clone, Debug)]
pub struct Sample {
    pub op: &'static str,
    /// Microseconds from the round's start to the operation's scheduled start.
    pub due_micros: u64,
    pub latency_micros: u64,
}

/// Shared bounds of one phase.
struct Bounds {
    end: Instant,
    remaining: AtomicI64,
    /// Gap between two operations of one client at a fixed rate.
    interval: Option<Duration>,
}

/// One client's view of the bounds and its rate schedule.
struct Gate {
    bounds: Arc<Bounds>,
    next: Instant,
}

impl Gate {
    /// Waits for the next operation's slot; returns the time the operation
    /// should start (latency counts from then, so a stall is not hidden by the
    /// schedule) or `None` once the phase is over.
    async fn next(&mut self) -> Option<Instant> {
        if self.bounds.remaining.fetch_sub(1, Ordering::Relaxed) <= 0 {
            return None;
        }
        let start = match self.bounds.interval {
            Some(gap) => {
                let at = self.next;
                self.next += gap;
                if at > Instant::now() {
                    tokio::time::sleep_until(at).await;
                }
                at
            }
            None => Instant::now(),
        };
        if start >= self.bounds.end {
            return None;
        }
        Some(start)
    }
}

/// Ids unique to this process and round, shaped like CAS ids.
#[derive(Clone)]
pub struct Ids {
    prefix: String,
}

impl Ids {
    pub fn new(tag: &str) -> Ids {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ids {
            prefix: format!("{:x}{:x}{tag}", nanos as u64, std::process::id()),
        }
    }

    pub fn id(&self, kind: &str, client: usize, seq: u64) -> String {
        format!("{kind}-{seq}-{}c{client}-cas01", self.prefix)
    }
}

/// Small deterministic generator for picking keys.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// What one client measured in one round.
struct Recorder {
    stats: OpMap,
    round_start: Instant,
    /// Every successful operation, if the spec keeps them.
    samples: Option<Vec<Sample>>,
}

impl Recorder {
    fn new(stats: OpMap, round_start: Instant, keep_samples: bool) -> Recorder {
        Recorder {
            stats,
            round_start,
            samples: keep_samples.then(Vec::new),
        }
    }

    /// Records one operation due at `start`; returns whether it succeeded.
    fn record(&mut self, op: &'static str, start: Instant, result: Result<(), String>) -> bool {
        let entry = self.stats.entry(op).or_default();
        match result {
            Ok(()) => {
                let latency = start.elapsed();
                entry.record(latency);
                if let Some(samples) = &mut self.samples {
                    samples.push(Sample {
                        op,
                        due_micros: start
                            .saturating_duration_since(self.round_start)
                            .as_micros() as u64,
                        latency_micros: latency.as_micros() as u64,
                    });
                }
                true
            }
            Err(e) => {
                entry.error(e);
                false
            }
        }
    }
}

/// Tickets a client works on in a get / touch / consume / delete round.
struct Prepared {
    ids: Vec<String>,
}

async fn prepare(
    conn: &mut Conn,
    spec: &Spec,
    ids: &Ids,
    client: usize,
    per_client: usize,
) -> Result<Prepared, String> {
    let payload = Bytes::from(vec![b'p'; spec.payload]);
    let max_uses = if spec.workload == Workload::Consume {
        1
    } else {
        0
    };
    let mut out = Vec::with_capacity(per_client);
    for seq in 0..per_client as u64 {
        let id = ids.id("ST", client, seq);
        conn.put_plain(&id, &payload, PLAIN_TTL, max_uses).await?;
        out.push(id);
    }
    Ok(Prepared { ids: out })
}

async fn client_loop(
    mut conn: Conn,
    spec: Arc<Spec>,
    mut gate: Gate,
    ids: Ids,
    client: usize,
    prepared: Prepared,
    mut recorder: Recorder,
) -> Recorder {
    let mut rng = Rng::new(client as u64 + 1);
    let tgt_payload = Bytes::from(vec![b't'; spec.tgt_payload]);
    let st_payload = Bytes::from(vec![b's'; spec.st_payload]);
    let payload = Bytes::from(vec![b'p'; spec.payload]);
    let mut seq: u64 = 1 << 40; // apart from the prepared ids
    let mut next_id = |kind: &str| {
        seq += 1;
        ids.id(kind, client, seq)
    };
    match spec.workload {
        Workload::Cas => 'sessions: loop {
            let tgt = next_id("TGT");
            let principal = format!("user{}", rng.below(100_000));
            let Some(start) = gate.next().await else {
                break;
            };
            if !recorder.record(
                "put_tgt",
                start,
                conn.put_tgt(&tgt, &principal, &tgt_payload).await,
            ) {
                continue;
            }
            for _ in 0..spec.services {
                let st = next_id("ST");
                let Some(start) = gate.next().await else {
                    break 'sessions;
                };
                if !recorder.record("put_st", start, conn.put_st(&st, &tgt, &st_payload).await) {
                    continue;
                }
                let Some(start) = gate.next().await else {
                    break 'sessions;
                };
                recorder.record("touch_tgt", start, conn.touch(&tgt, &tgt_payload).await);
                let Some(start) = gate.next().await else {
                    break 'sessions;
                };
                recorder.record("consume_st", start, conn.consume(&st).await);
            }
            if rng.chance(spec.logout_ratio) {
                let Some(start) = gate.next().await else {
                    break;
                };
                recorder.record(
                    "delete_tgt",
                    start,
                    conn.delete_tree(&tgt, Some(&principal)).await,
                );
            }
        },
        Workload::Put => {
            while let Some(start) = gate.next().await {
                let id = next_id("ST");
                recorder.record(
                    "put",
                    start,
                    conn.put_plain(&id, &payload, PLAIN_TTL, 0).await,
                );
            }
        }
        Workload::Get | Workload::Touch => {
            while let Some(start) = gate.next().await {
                let id = &prepared.ids[rng.below(prepared.ids.len())];
                if spec.workload == Workload::Get {
                    recorder.record("get", start, conn.get(id).await);
                } else {
                    recorder.record("touch", start, conn.touch(id, &payload).await);
                }
            }
        }
        Workload::Consume | Workload::Delete => {
            for id in &prepared.ids {
                let Some(start) = gate.next().await else {
                    break;
                };
                if spec.workload == Workload::Consume {
                    recorder.record("consume", start, conn.consume(id).await);
                } else {
                    recorder.record("delete", start, conn.delete_tree(id, None).await);
                }
            }
        }
    }
    recorder
}

/// Runs one phase (warm-up or measured) of `spec` on the given connections.
/// With `server_pid`, reads that process's CPU time just before the clock
/// starts (after any prefill) and just after the last client is done.
pub async fn run_phase(
    conns: &[Conn],
    spec: &Spec,
    duration: Duration,
    ops: Option<u64>,
    tag: &str,
    server_pid: Option<u32>,
) -> anyhow::Result<Round> {
    let spec = Arc::new(spec.clone());
    let ids = Ids::new(tag);
    let clients = conns.len();
    // Tickets to work on, written before the clock starts.
    let per_client = match spec.workload {
        Workload::Get | Workload::Touch => spec.keys_per_client,
        Workload::Consume | Workload::Delete => {
            let total = ops.unwrap_or(spec.prefill);
            (total as usize).div_ceil(clients)
        }
        _ => 0,
    };
    let mut prepared = Vec::with_capacity(clients);
    {
        let mut tasks = Vec::new();
        for (i, conn) in conns.iter().enumerate() {
            let mut conn = conn.clone();
            let spec = Arc::clone(&spec);
            let ids = ids.clone();
            tasks.push(tokio::spawn(async move {
                prepare(&mut conn, &spec, &ids, i, per_client).await
            }));
        }
        for t in tasks {
            prepared.push(t.await?.map_err(|e| anyhow::anyhow!("prefill: {e}"))?);
        }
    }
    let interval = spec
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(clients as f64 / r));
    let stats: Vec<OpMap> = (0..clients).map(|_| spec.workload.fresh_stats()).collect();
    let cpu_at_start = CpuTimes::read();
    let server_cpu_at_start = server_pid.map(machine::cpu_secs).transpose()?;
    let start = Instant::now();
    let bounds = Arc::new(Bounds {
        end: start + duration,
        remaining: AtomicI64::new(
            ops.map(|o| o.min(i64::MAX as u64) as i64)
                .unwrap_or(i64::MAX),
        ),
        interval,
    });
    let mut tasks = Vec::new();
    for (i, ((conn, prepared), stats)) in conns.iter().zip(prepared).zip(stats).enumerate() {
        // Spread the clients' schedules over one interval so a fixed rate is smooth.
        let offset = interval
            .map(|gap| gap.mul_f64(i as f64 / clients as f64))
            .unwrap_or_default();
        let gate = Gate {
            bounds: Arc::clone(&bounds),
            next: start + offset,
        };
        tasks.push(tokio::spawn(client_loop(
            conn.clone(),
            Arc::clone(&spec),
            gate,
            ids.clone(),
            i,
            prepared,
            Recorder::new(stats, start, spec.keep_samples),
        )));
    }
    let mut total = OpMap::new();
    let mut samples = Vec::new();
    let hard_end = start + duration + GRACE;
    for t in tasks {
        match tokio::time::timeout_at(hard_end, t).await {
            Ok(Ok(recorder)) => {
                for (name, s) in recorder.stats.iter().filter(|(_, s)| !s.is_empty()) {
                    total.entry(name).or_default().merge(s);
                }
                samples.extend(recorder.samples.into_iter().flatten());
            }
            Ok(Err(e)) => anyhow::bail!("client task failed: {e}"),
            Err(_) => anyhow::bail!("clients still busy {GRACE:?} past the round's end"),
        }
    }
    let elapsed = start.elapsed();
    let server_cpu_at_end = server_pid.map(machine::cpu_secs).transpose()?;
    let cpu_busy = CpuTimes::read()
        .zip(cpu_at_start)
        .and_then(|(now, then)| now.busy_since(&then));
    let mut all = OpStats::default();
    let mut ops = BTreeMap::new();
    for (name, s) in &total {
        all.merge(s);
        ops.insert((*name).to_owned(), s.summary(elapsed));
    }
    let all = all.summary(elapsed);
    let server_cpu = server_cpu_at_start
        .zip(server_cpu_at_end)
        .and_then(|(before, after)| {
            ProcessCpu::between(before, after, all.count, elapsed.as_secs_f64())
        });
    ops.insert("all".to_owned(), all);
    Ok(Round {
        elapsed_secs: elapsed.as_secs_f64(),
        cpu_busy,
        server_cpu,
        ops,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_per_client_and_sequence() {
        let ids = Ids::new("r1");
        assert_ne!(ids.id("ST", 0, 1), ids.id("ST", 1, 1));
        assert_ne!(ids.id("ST", 0, 1), ids.id("ST", 0, 2));
        assert!(ids.id("TGT", 3, 9).starts_with("TGT-9-"));
    }

    #[test]
    fn rng_picks_within_bounds() {
        let mut r = Rng::new(7);
        for _ in 0..1000 {
            assert!(r.below(10) < 10);
        }
        let yes = (0..10_000).filter(|_| r.chance(0.25)).count();
        assert!((2000..3000).contains(&yes), "{yes}");
        assert!((0..100).all(|_| r.chance(1.0)));
    }

    #[tokio::test(start_paused = true)]
    async fn recorder_counts_every_call_and_keeps_samples_only_when_asked() {
        let round_start = Instant::now();
        let mut kept = Recorder::new(Workload::Cas.fresh_stats(), round_start, true);
        let mut plain = Recorder::new(Workload::Cas.fresh_stats(), round_start, false);
        tokio::time::advance(Duration::from_millis(5)).await;
        let due = Instant::now();
        tokio::time::advance(Duration::from_millis(2)).await;
        for r in [&mut kept, &mut plain] {
            assert!(r.record("put_st", due, Ok(())));
            assert!(!r.record("consume_st", due, Err("gone".into())));
            assert_eq!(r.stats["put_st"].hist.len(), 1);
            assert_eq!(r.stats["consume_st"].errors, 1);
            assert!(r.stats["delete_tgt"].is_empty(), "made up front, unused");
        }
        let samples = kept.samples.expect("kept");
        assert_eq!(samples.len(), 1, "errors have no latency");
        assert_eq!(samples[0].op, "put_st");
        assert_eq!(samples[0].due_micros, 5_000);
        assert_eq!(samples[0].latency_micros, 2_000);
        assert!(plain.samples.is_none());
    }

    #[tokio::test]
    async fn gate_stops_at_the_operation_bound() {
        let bounds = Arc::new(Bounds {
            end: Instant::now() + Duration::from_secs(60),
            remaining: AtomicI64::new(3),
            interval: None,
        });
        let mut gate = Gate {
            bounds,
            next: Instant::now(),
        };
        let mut n = 0;
        while gate.next().await.is_some() {
            n += 1;
        }
        assert_eq!(n, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn gate_paces_a_fixed_rate_and_stops_at_the_time_bound() {
        let start = Instant::now();
        let bounds = Arc::new(Bounds {
            end: start + Duration::from_millis(100),
            remaining: AtomicI64::new(i64::MAX),
            interval: Some(Duration::from_millis(10)),
        });
        let mut gate = Gate {
            bounds,
            next: start,
        };
        let mut n = 0;
        while gate.next().await.is_some() {
            n += 1;
        }
        assert_eq!(n, 10);
    }
}
