//! The HTTP endpoint (`metrics_listen`): Prometheus metrics read from the
//! node's counters at each scrape, and the health checks for HTTP-only
//! load balancers.

#[allow(dead_code)] // not every helper is used here
mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use tessera::config::NodeConfig;
use tessera_client::NewTicket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET `path` with a bare HTTP/1.1 request: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: tessera\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

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
    for line in ["tessera_tickets 1", "tessera_ready 1", "tessera_draining 0"] {
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
    assert!(body.lines().any(|l| l == "tessera_tickets 2"), "{body}");
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
    common::stop(node).await;
}
