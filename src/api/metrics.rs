//! The HTTP endpoint beside the gRPC API (`metrics_listen`): Prometheus
//! metrics at `/metrics` (OpenMetrics text, from the same counters as
//! `tessera stats`, read at each scrape), and `/healthz` (the process
//! answers) and `/readyz` (joined and caught up, not draining or fenced:
//! 200, else 503) for load balancers and orchestrators that speak HTTP only.
//! It serves no ticket and takes no token.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::warn;

use super::NodeInfo;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serve the endpoint on `listener` until the task is aborted.
pub fn serve(listener: TcpListener, node: Arc<NodeInfo>) -> JoinHandle<()> {
    let mut registry = Registry::with_prefix("tessera");
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
        let gauges: [(&str, &str, i64); 6] = [
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
            ("tickets", "records the node holds", gauge(stats.tickets)),
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
        ];
        for (name, help, value) in gauges {
            let metric = ConstGauge::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        let counters: [(&str, &str, u64); 13] = [
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
                "clock_skew_reports",
                "peer frames whose clock was beyond the skew budget",
                stats.clock_skew_reports,
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
            ("batches", "Batch RPCs answered", stats.batches),
            (
                "batched_calls",
                "ticket calls carried by Batch RPCs",
                stats.batched_calls,
            ),
        ];
        for (name, help, value) in counters {
            let metric = ConstCounter::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        Ok(())
    }
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
