//! The HTTP endpoint beside the gRPC API (`metrics_listen`): Prometheus
//! metrics at `/metrics` (OpenMetrics text: the counters `tessera stats`
//! shows and the node's state, read at each scrape, plus latency histograms
//! of ticket calls and pushes), and `/healthz` (the process answers) and
//! `/readyz` (joined and caught up, not draining or fenced: 200, else 503)
//! for load balancers and orchestrators that speak HTTP only. It serves no
//! ticket and takes no token; no label value is ever a ticket id.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::{Code, Status};
use tracing::warn;

use super::NodeInfo;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serve the endpoint on `listener` until the task is aborted.
pub fn serve(listener: TcpListener, node: Arc<NodeInfo>) -> JoinHandle<()> {
    let mut registry = Registry::with_prefix("tessera");
    node.calls.register(&mut registry);
    registry.register(
        "replication_push_duration_seconds",
        "time from sending a write's push to a peer to its acknowledgement (pushes that failed are in pushes_failed)",
        node.replicator.stats.push_seconds.0.clone(),
    );
    registry.register_collector(Box::new(NodeCollector(node.clone())));
    let state = Arc::new((node, registry));
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "the metrics endpoint stopped");
        }
    })
}

type Shared = Arc<(Arc<NodeInfo>, Registry)>;

async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &state.1) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, OPENMETRICS)], text),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            "metrics could not be encoded\n".to_owned(),
        ),
    }
}

async fn ready(State(state): State<Shared>) -> impl IntoResponse {
    let node = &state.0;
    if node.ready.load(Ordering::Acquire) && !node.draining.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// The node's counters and state, read at each scrape.
struct NodeCollector(Arc<NodeInfo>);

/// `Collector` asks for `Debug`; the node is named by its id.
impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("NodeCollector")
            .field(&self.0.node_id)
            .finish()
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.stats();
        let events = self.0.replicator.events();
        let (events_held, events_held_bytes) = events.held();
        let gauges: [(&str, &str, i64); 8] = [
            (
                "ready",
                "1 once the node has joined and caught up",
                stats.ready.into(),
            ),
            (
                "draining",
                "1 while the node is leaving",
                stats.draining.into(),
            ),
            (
                "clock_fenced",
                "1 while the node's clock disagrees with most peers by more than the skew budget",
                stats.clock_fenced.into(),
            ),
            (
                "peer_connections_open",
                "open peer (data plane) connections",
                gauge(stats.peer_connections_open),
            ),
            (
                "idle_deaths_unconfirmed",
                "idle deaths the sweeper could not confirm with enough peers (dead, never served, not yet tombstones)",
                gauge(stats.idle_deaths_unconfirmed),
            ),
            (
                "watch_watchers",
                "Watch subscribers served now",
                gauge(events.watchers() as u64),
            ),
            (
                "watch_events_held",
                "ticket events kept for watchers to resume from",
                gauge(events_held as u64),
            ),
            (
                "watch_events_held_bytes",
                "bytes of the ticket events kept (bounded by watch_buffer_bytes)",
                gauge(events_held_bytes as u64),
            ),
        ];
        for (name, help, value) in gauges {
            let metric = ConstGauge::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        let replication = &self.0.replicator.stats;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counters: [(&str, &str, u64); 24] = [
            (
                "api_rejections",
                "ticket calls refused for a missing or wrong API token",
                stats.api_rejections,
            ),
            (
                "peer_handshakes_ok",
                "peer connections opened",
                stats.peer_handshakes_ok,
            ),
            (
                "peer_handshakes_rejected",
                "peer connections refused while opening (wrong secret, garbage, timeout)",
                stats.peer_handshakes_rejected,
            ),
            (
                "peer_frames_rejected",
                "frames refused on open peer connections",
                stats.peer_frames_rejected,
            ),
            (
                "peer_calls_failed",
                "calls to peers that failed",
                stats.peer_calls_failed,
            ),
            (
                "pushes_failed",
                "replication pushes that failed",
                stats.pushes_failed,
            ),
            (
                "read_repairs",
                "reads answered from peers after a local miss",
                stats.read_repairs,
            ),
            (
                "decisions_forwarded",
                "consumes and updates sent to the ticket's arbiter",
                stats.decisions_forwarded,
            ),
            (
                "bad_records",
                "records from peers refused by validation",
                stats.bad_records,
            ),
            (
                "clock_fences",
                "times the node fenced itself for its clock",
                stats.clock_fences,
            ),
            (
                "batches",
                "batches answered (Batch RPCs and session batches)",
                stats.batches,
            ),
            (
                "batched_calls",
                "ticket calls carried by batches",
                stats.batched_calls,
            ),
            ("sessions", "Session streams opened", stats.sessions),
            (
                "sweeper_tombstones",
                "live tickets the sweeper turned into tombstones (expired, idle, used up)",
                load(&replication.swept_dead),
            ),
            (
                "sweeper_forgotten",
                "records the sweeper forgot, past their retention",
                load(&replication.swept_forgotten),
            ),
            (
                "anti_entropy_rounds",
                "anti-entropy rounds completed with a peer",
                load(&replication.sync_rounds),
            ),
            (
                "anti_entropy_rounds_failed",
                "anti-entropy rounds that failed (the next round retries)",
                load(&replication.sync_rounds_failed),
            ),
            (
                "anti_entropy_buckets_differing",
                "buckets whose digests differed from the peer's",
                load(&replication.sync_buckets_differing),
            ),
            (
                "anti_entropy_records_sent",
                "records sent to peers by anti-entropy",
                load(&replication.sync_records_sent),
            ),
            (
                "anti_entropy_records_received",
                "records received from peers by anti-entropy",
                load(&replication.sync_records_received),
            ),
            (
                "clock_skew_reports",
                "peer frames whose clock was beyond the skew budget",
                stats.clock_skew_reports,
            ),
            (
                "watch_events",
                "ticket events this node reported to watchers (recorded from its first watcher on)",
                events.newest(),
            ),
            (
                "watch_handoffs_reported",
                "expiries another node was to report, reported here because it had gone",
                load(&replication.watch_handoffs_reported),
            ),
            (
                "watch_handoffs_dropped",
                "expiries kept for another node dropped because too many were kept",
                load(&replication.watch_handoffs_dropped),
            ),
        ];
        for (name, help, value) in counters {
            let metric = ConstCounter::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        self.0.calls.encode_refusals(&mut encoder)?;
        self.encode_state(&mut encoder)
    }
}

/// Most ticket kinds shown by name; the rest are summed as `other` (kinds
/// are the callers' to choose: a bound on the series they can make).
const MAX_KINDS_SHOWN: usize = 32;

impl NodeCollector {
    /// Labelled gauges: tickets by kind, members by state, peers' clocks,
    /// and the process's memory.
    fn encode_state(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = &self.0;
        let counts = node.replicator.store().count();
        let mut by_kind: Vec<(String, u64)> = counts.by_kind.into_iter().collect();
        by_kind.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        if by_kind.len() > MAX_KINDS_SHOWN {
            let other = by_kind.split_off(MAX_KINDS_SHOWN - 1);
            by_kind.push(("other".into(), other.iter().map(|(_, n)| n).sum()));
        }
        // Families without samples are left out: they are valid OpenMetrics,
        // but some parsers refuse them.
        if !by_kind.is_empty() {
            let mut family = encoder.encode_descriptor(
                "tickets",
                "tickets the node holds, by kind",
                None,
                MetricType::Gauge,
            )?;
            for (kind, n) in &by_kind {
                let labels = [("kind", kind.as_str())];
                ConstGauge::new(gauge(*n)).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut members: BTreeMap<&str, i64> = ["alive", "draining", "dead"]
            .into_iter()
            .map(|state| (state, 0))
            .collect();
        match &node.membership {
            Some(membership) => {
                for member in membership.all_members() {
                    *members.entry(member.state.as_str()).or_default() += 1;
                }
            }
            None if node.draining.load(Ordering::Acquire) => {
                *members.entry("draining").or_default() += 1
            }
            None => *members.entry("alive").or_default() += 1,
        }
        let mut family = encoder.encode_descriptor(
            "members",
            "cluster members as gossip shows them to this node (itself included), by state",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in members {
            ConstGauge::new(n).encode(family.encode_family(&[("state", state)])?)?;
        }

        let skews = node.replicator.peer_clock_skews();
        if !skews.is_empty() {
            let mut family = encoder.encode_descriptor(
                "peer_clock_skew",
                "each live peer's clock less this node's, read off its latest frames (one-way network delay included)",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            for (peer, skew_ms) in skews {
                let seconds = skew_ms as f64 / 1000.0;
                ConstGauge::new(seconds).encode(family.encode_family(&[("peer", &*peer)])?)?;
            }
        }

        if let Some(bytes) = resident_memory_bytes() {
            let metric = ConstGauge::new(gauge(bytes));
            metric.encode(encoder.encode_descriptor(
                "process_resident_memory",
                "resident set size of the node's process",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The process's resident set size, from `/proc/self/status` (Linux; `None`
/// elsewhere).
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A latency histogram in seconds: 18 doubling buckets from 100 µs to 13 s.
/// Histograms carry their unit in the name only, without a `# UNIT` line:
/// some OpenMetrics parsers refuse units on histograms.
#[derive(Clone, Debug)]
pub struct Latency(pub Histogram);

impl Default for Latency {
    fn default() -> Latency {
        Latency(latency_histogram())
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl Latency {
    pub fn observe(&self, elapsed: Duration) {
        self.0.observe(elapsed.as_secs_f64());
    }
}

/// The ticket calls of the client API, as metrics label them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    Touch,
    Consume,
    Update,
    Delete,
    DeleteFor,
    DeleteAll,
}

impl Op {
    const COUNT: usize = 8;
    const ALL: [Op; Op::COUNT] = [
        Op::Put,
        Op::Get,
        Op::Touch,
        Op::Consume,
        Op::Update,
        Op::Delete,
        Op::DeleteFor,
        Op::DeleteAll,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Touch => "touch",
            Op::Consume => "consume",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::DeleteFor => "delete_for",
            Op::DeleteAll => "delete_all",
        }
    }
}

/// gRPC status codes, 0 to 16.
const CODES: usize = 17;

/// `op` and `outcome`.
type CallLabels = [(&'static str, &'static str); 2];

/// Ticket calls by operation and outcome (`_count` of the histogram), with
/// their latency; and the UNAVAILABLE refusals by reason. A call inside a
/// `Batch` counts as its own operation.
pub struct CallMetrics {
    durations: Family<CallLabels, Histogram, fn() -> Histogram>,
    /// Each (operation, code)'s histogram, looked up once: a call then takes
    /// no lock on the family's map.
    resolved: [[OnceLock<Histogram>; CODES]; Op::COUNT],
    /// Refusals by operation and [`REFUSALS`] reason.
    refused: [[AtomicU64; REFUSALS.len()]; Op::COUNT],
}

impl Default for CallMetrics {
    fn default() -> CallMetrics {
        let metrics = CallMetrics {
            durations: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            resolved: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            refused: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        };
        // Every operation's successes are shown from the start (at zero), so
        // rates and dashboards have a series before the first call.
        for op in Op::ALL {
            metrics.histogram(op, Code::Ok);
        }
        metrics
    }
}

impl CallMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "ticket_call_duration_seconds",
            "ticket calls by operation and outcome (gRPC code), with their latency in the node",
            self.durations.clone(),
        );
    }

    fn histogram(&self, op: Op, code: Code) -> &Histogram {
        self.resolved[op as usize][code as usize].get_or_init(|| {
            self.durations
                .get_or_create(&[("op", op.as_str()), ("outcome", code_name(code))])
                .clone()
        })
    }

    /// Count one call that took `elapsed` and ended with `outcome`.
    pub fn observe<T>(&self, op: Op, outcome: &Result<T, Status>, elapsed: Duration) {
        let code = outcome.as_ref().map_or_else(Status::code, |_| Code::Ok);
        self.histogram(op, code).observe(elapsed.as_secs_f64());
        if let Err(status) = outcome
            && code == Code::Unavailable
        {
            let reason = refusal_reason(status.message());
            self.refused[op as usize][reason].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The refusals seen so far (none: no family at all).
    fn encode_refusals(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut seen = Vec::new();
        for op in Op::ALL {
            for (reason, (_, name)) in REFUSALS.iter().enumerate() {
                let n = self.refused[op as usize][reason].load(Ordering::Relaxed);
                if n > 0 {
                    seen.push(([("op", op.as_str()), ("reason", *name)], n));
                }
            }
        }
        if seen.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "ticket_calls_refused",
            "ticket calls answered UNAVAILABLE, by operation and reason",
            None,
            MetricType::Counter,
        )?;
        for (labels, n) in &seen {
            ConstCounter::new(*n).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// A gRPC code as a label value.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Refusal reasons, by how the UNAVAILABLE message starts (the prefixes
/// clients read too: `draining:`, `fenced:`, `not ready:`); the last is
/// the catch-all.
const REFUSALS: [(&str, &str); 14] = [
    ("draining", "draining"),
    ("fenced", "fenced"),
    ("not ready", "not_ready"),
    ("cannot decide safely", "majority"),
    ("write reached", "write_quorum"),
    ("the ticket's arbiter", "arbiter"),
    ("the connection to the ticket's arbiter", "arbiter"),
    ("only ", "peers"),
    ("replacing a live ticket needs", "peers"),
    ("another consume or update", "contention"),
    ("the ticket kept changing", "contention"),
    ("two proposals", "contention"),
    ("not stored on disk", "disk"),
    ("", "other"),
];

/// The [`REFUSALS`] entry of an UNAVAILABLE message.
fn refusal_reason(message: &str) -> usize {
    REFUSALS
        .iter()
        .position(|(prefix, _)| message.starts_with(prefix))
        .unwrap_or(REFUSALS.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::{CLOCK_IN_DOUBT, FENCED};

    #[test]
    fn refusals_are_told_apart_by_their_messages() {
        let cases = [
            (FENCED, "fenced"),
            (super::super::NOT_READY, "not_ready"),
            (CLOCK_IN_DOUBT, "not_ready"),
            (
                "draining: this node is shutting down; use another node",
                "draining",
            ),
            ("cannot decide safely: 1 of the 2 votes needed", "majority"),
            (
                "write reached 1 of the 2 nodes write_quorum requires",
                "write_quorum",
            ),
            (
                "the ticket's arbiter did not answer in time; retry",
                "arbiter",
            ),
            (
                "the connection to the ticket's arbiter broke before it answered",
                "arbiter",
            ),
            ("only 0 of the 1 peers needed to rule out a ticket", "peers"),
            (
                "another consume or update of this ticket holds use:1",
                "contention",
            ),
            ("something new", "other"),
        ];
        for (message, reason) in cases {
            assert_eq!(REFUSALS[refusal_reason(message)].1, reason, "{message}");
        }
    }
}
