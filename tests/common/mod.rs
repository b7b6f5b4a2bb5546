//! Shared set-up for the API integration tests: a real node (gRPC server, store,
//! sweeper) on an OS-chosen port of 127.0.0.1 and a real `tessera-client` to it.

pub mod scrape;

use std::time::Duration;

use tessera::clock::Clock;
use tessera::config::NodeConfig;
use tessera::server::{self, NodeHandle};
use tessera_client::{Client, ClientConfig};

/// The node id every test node is started with.
pub const NODE_ID: &str = "api-test-node";

/// Default configuration on a free loopback port, with a fixed node id.
pub fn config() -> NodeConfig {
    NodeConfig {
        listen: "127.0.0.1:0".parse().expect("loopback address"),
        node_id: NODE_ID.into(),
        // Memory only: a test node writes nothing into the checkout.
        data_dir: None,
        ..NodeConfig::default()
    }
}

/// A client for one node, with the default timeouts.
pub async fn client_for(node: &NodeHandle) -> Client {
    client_with(node, ClientConfig::default()).await
}

/// A client for one node, with the given timeouts.
pub async fn client_with(node: &NodeHandle, timeouts: ClientConfig) -> Client {
    Client::connect_with([node.api_addr().to_string()], timeouts)
        .await
        .expect("client for a loopback node")
}

/// A node with the default test configuration, and a client to it.
pub async fn start() -> (NodeHandle, Client) {
    start_with(config()).await
}

/// A node with this configuration (system clock), and a client to it.
pub async fn start_with(config: NodeConfig) -> (NodeHandle, Client) {
    let node = server::start(config).await.expect("node starts");
    let client = client_for(&node).await;
    (node, client)
}

/// A node on a given clock (tests pass a paused one), and a client to it.
pub async fn start_with_clock(config: NodeConfig, clock: Clock) -> (NodeHandle, Client) {
    let node = server::start_with_clock(config, clock)
        .await
        .expect("node starts");
    let client = client_for(&node).await;
    (node, client)
}

/// Stop a node gracefully; a hang fails the test instead of stalling the run.
pub async fn stop(node: NodeHandle) {
    tokio::time::timeout(Duration::from_secs(20), node.stop())
        .await
        .expect("node stops without hanging")
        .expect("node stops cleanly");
}

/// `grpc.health.v1.Health/Check` for the whole server, sent with no token
/// (health stays open on every node): the raw serving status.
pub async fn health(node: &NodeHandle) -> i32 {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.api_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers without a token")
        .into_inner()
        .status
}

/// Each batch outcome as a number to compare: 0 for a ticket or deletion, the
/// status code for an error, -1 for no outcome.
pub fn outcome_codes(outcomes: &[tessera_proto::v1::BatchOutcome]) -> Vec<i32> {
    use tessera_proto::v1::batch_outcome::Outcome;
    outcomes
        .iter()
        .map(|o| match &o.outcome {
            Some(Outcome::Error(e)) => e.code,
            Some(_) => 0,
            None => -1,
        })
        .collect()
}
