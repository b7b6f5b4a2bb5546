//! The HTTP endpoint (`metrics_listen`): Prometheus metrics read from the
//! node's counters at each scrape, and the health checks for HTTP-only
//! load balancers.

#[allow(dead_code)] // not every helper is used here
mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::scrape::{calls, counter, gauge, get, scrape, value_of};
use openmetrics_parser::{MetricNumber, OpenMetricsValue};
use tessera::config::NodeConfig;
use tessera_client::{Error, NewTicket};

#[tokio::test]
async fn metrics_follow_the_node_and_health_answers_over_http() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let (node, client) = common::start_with(NodeConfig {
        metrics_listen: Some(addr),
        ..common::config()
    })
    .await;
    client
        .put(NewTicket::new("TGT-metrics", Duration::from_secs(60)))
        .await
        .unwrap();
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    for line in [
        "tessera_tickets{kind=\"TGT\"} 1",
        "tessera_ready 1",
        "tessera_draining 0",
    ] {
        assert!(body.lines().any(|l| l == line), "no {line:?} in:\n{body}");
    }
    assert!(
        body.lines()
            .any(|l| l.starts_with("tessera_batches_total ")),
        "{body}"
    );
    assert!(
        body.contains("# TYPE tessera_api_rejections counter"),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/readyz").await.0, 200);
    assert_eq!(get(addr, "/tickets").await.0, 404, "no ticket over HTTP");
    // A second put shows at the next scrape.
    client
        .put(NewTicket::new("TGT-metrics-2", Duration::from_secs(60)))
        .await
        .unwrap();
    let (_, body) = get(addr, "/metrics").await;
    assert!(
        body.lines().any(|l| l == "tessera_tickets{kind=\"TGT\"} 2"),
        "{body}"
    );
    common::stop(node).await;
}

/// The scrape is valid OpenMetrics (as a Prometheus server parses it), and
/// its counters and gauges move with the calls made.
#[tokio::test]
async fn metrics_parse_as_openmetrics_and_move_with_calls() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let (node, client) = common::start_with(NodeConfig {
        metrics_listen: Some(addr),
        ..common::config()
    })
    .await;
    let before = scrape(addr).await;
    assert_eq!(calls(&before, "put", "ok"), 0);
    assert_eq!(
        gauge(&before, "tessera_members", &[("state", "alive")]),
        1.0
    );
    assert!(gauge(&before, "tessera_process_resident_memory_bytes", &[]) > 1e6);
    let watcher = client
        .watch(tessera_client::WatchFilter::default())
        .await
        .unwrap();

    for n in 0..3 {
        let id = format!("TGT-scrape-{n}");
        client
            .put(NewTicket::new(&id, Duration::from_secs(60)))
            .await
            .unwrap();
        client.get(&id).await.unwrap();
    }
    client
        .put(NewTicket::new("ST-scrape", Duration::from_secs(60)).kind("ST"))
        .await
        .unwrap();
    let missing = client.consume("ST-never-put").await;
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");

    let after = scrape(addr).await;
    assert_eq!(calls(&after, "put", "ok"), 4);
    assert_eq!(calls(&after, "get", "ok"), 3);
    assert_eq!(calls(&after, "consume", "not_found"), 1);
    assert_eq!(calls(&after, "consume", "ok"), 0);
    assert_eq!(gauge(&after, "tessera_tickets", &[("kind", "TGT")]), 3.0);
    assert_eq!(gauge(&after, "tessera_tickets", &[("kind", "ST")]), 1.0);
    // Four puts, four `created` events, for the one watcher.
    assert_eq!(gauge(&after, "tessera_watch_watchers", &[]), 1.0);
    assert_eq!(counter(&after, "tessera_watch_events", &[]), 4.0);
    assert_eq!(gauge(&after, "tessera_watch_events_held", &[]), 4.0);
    drop(watcher);
    // Every call took some time, and less than the histogram's top bucket.
    let Some(OpenMetricsValue::Histogram(puts)) = value_of(
        &after,
        "tessera_ticket_call_duration_seconds",
        &[("op", "put"), ("outcome", "ok")],
    ) else {
        panic!("no put histogram");
    };
    let sum = match puts.sum {
        Some(MetricNumber::Float(f)) => f,
        Some(MetricNumber::Int(i)) => i as f64,
        None => 0.0,
    };
    assert!(sum > 0.0 && sum < 13.0, "{sum}");
    // No label value anywhere is a ticket id.
    let (_, text) = get(addr, "/metrics").await;
    assert!(!text.contains("scrape-"), "{text}");
    common::stop(node).await;
}

/// A node configured for peers that are not there has not caught up: its
/// `/readyz` says 503 while `/healthz` says the process answers.
#[tokio::test]
async fn readyz_is_503_until_the_node_is_ready() {
    use tessera::config::DiscoveryMode;
    use tessera::secret::{ApiToken, ClusterSecret};
    use tessera::server::{self, NodeOptions};
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let config = NodeConfig {
        metrics_listen: Some(addr),
        discovery: Some(DiscoveryMode::Static),
        seeds: vec!["127.0.0.1:9".into()],
        expected_size: Some(3),
        gossip_listen: Some("127.0.0.1:0".parse().unwrap()),
        peer_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..common::config()
    };
    let node = server::start_with(
        config,
        NodeOptions {
            secret: Some(ClusterSecret::new(b"metrics-test-cluster-secret-0123456789").unwrap()),
            api_token: Some(ApiToken::new(b"metrics-test-api-token-0123456789abcdef").unwrap()),
            ..NodeOptions::default()
        },
    )
    .await
    .unwrap();
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(get(addr, "/healthz").await.0, 200);
    let (_, metrics) = get(addr, "/metrics").await;
    assert!(metrics.lines().any(|l| l == "tessera_ready 0"), "{metrics}");
    // Its ticket calls are refused, and counted with the reason.
    let client = common::client_with(
        &node,
        tessera_client::ClientConfig {
            token: Some("metrics-test-api-token-0123456789abcdef".into()),
            ..tessera_client::ClientConfig::default()
        },
    )
    .await;
    let refused = client.get("TGT-anything").await;
    assert!(matches!(refused, Err(Error::Unavailable(_))), "{refused:?}");
    let metrics = scrape(addr).await;
    let not_ready = [("op", "get"), ("reason", "not_ready")];
    assert_eq!(
        counter(&metrics, "tessera_ticket_calls_refused", &not_ready),
        1.0
    );
    assert_eq!(calls(&metrics, "get", "unavailable"), 1);
    common::stop(node).await;
}
