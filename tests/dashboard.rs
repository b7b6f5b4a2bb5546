//! The Grafana dashboard (`deploy/grafana/tessera-dashboard.json`) reads only
//! metrics a node really exposes: every `tessera_*` name in its queries is a
//! sample name of a real scrape (a counter's `_total`, a histogram's
//! `_bucket` / `_count` / `_sum`, as Prometheus stores them), taken from a
//! node of a two-node cluster after ticket calls, and from a node that
//! refuses calls (the refusal counter has no series before a refusal).

#[allow(dead_code)] // not every helper is used here
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera::config::{DiscoveryMode, NodeConfig};
use tessera::secret::{ApiToken, ClusterSecret};
use tessera::server::{self, NodeHandle, NodeOptions};
use tessera_client::{Client, ClientConfig, Error, NewTicket, TicketUpdate};

const SECRET: &[u8] = b"dashboard-test-cluster-secret-0123456789";
const TOKEN: &str = "dashboard-test-api-token-0123456789abcdef";

fn dashboard() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/tessera-dashboard.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// Every PromQL text of the dashboard: panel queries (`expr`) and the
/// templating variables' queries, with where each was found.
fn queries(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            let title = map.get("title").and_then(Value::as_str).unwrap_or("");
            let here = if title.is_empty() {
                at.to_owned()
            } else {
                format!("{at}/{title}")
            };
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("expr" | "definition", Value::String(text)) => {
                        out.push((here.clone(), text.clone()))
                    }
                    ("query", Value::String(text)) if map.contains_key("refId") => {
                        out.push((here.clone(), text.clone()))
                    }
                    _ => queries(inner, &here, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| queries(item, at, out)),
        _ => {}
    }
}

/// The `tessera_*` metric names in a PromQL text.
fn metric_names(promql: &str) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut rest = promql;
    while let Some(at) = rest.find("tessera_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail.find(|c: char| !ident(c)).unwrap_or(tail.len());
        // `job="tessera_x"` would be a label value, not a metric.
        if !before.is_some_and(|c| ident(c) || c == '"') {
            names.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// Sample names of an OpenMetrics text, each with its family's type (from
/// the `# TYPE` lines).
fn sample_names(text: &str) -> BTreeMap<String, String> {
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            if let (Some(family), Some(kind)) = (words.next(), words.next()) {
                types.insert(family.to_owned(), kind.to_owned());
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..end];
            let family = ["_bucket", "_count", "_sum", "_total"]
                .iter()
                .filter_map(|suffix| name.strip_suffix(suffix))
                .find(|family| types.contains_key(*family))
                .unwrap_or(name);
            let kind = types.get(family).cloned().unwrap_or_default();
            samples.insert(name.to_owned(), kind);
        }
    }
    samples
}

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap()
}

fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
}

fn options() -> NodeOptions {
    NodeOptions {
        secret: Some(ClusterSecret::new(SECRET).unwrap()),
        api_token: Some(ApiToken::new(TOKEN.as_bytes()).unwrap()),
        ..NodeOptions::default()
    }
}

async fn client(node: &NodeHandle) -> Client {
    Client::connect_with(
        [node.api_addr().to_string()],
        ClientConfig {
            token: Some(TOKEN.into()),
            call_timeout: Duration::from_secs(15),
            ..ClientConfig::default()
        },
    )
    .await
    .unwrap()
}

/// A cluster node after calls of every kind: its scrape shows the ticket,
/// call, replication, anti-entropy and peer clock families.
async fn cluster_scrape() -> String {
    let gossip = [free_udp(), free_udp()];
    let metrics = free_tcp();
    let mut nodes = Vec::new();
    for n in 0..2 {
        let config = NodeConfig {
            node_id: format!("dashboard-{n}"),
            discovery: Some(DiscoveryMode::Static),
            seeds: gossip.iter().map(ToString::to_string).collect(),
            expected_size: Some(2),
            gossip_listen: Some(gossip[n]),
            peer_listen: Some("127.0.0.1:0".parse().unwrap()),
            anti_entropy_interval: Duration::from_millis(500),
            discovery_interval: Duration::from_secs(1),
            metrics_listen: (n == 0).then_some(metrics),
            ..common::config()
        };
        nodes.push(server::start_with(config, options()).await.unwrap());
    }
    let started = Instant::now();
    while !nodes.iter().all(NodeHandle::is_ready) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the cluster did not form"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let client = client(&nodes[0]).await;
    let session = NewTicket::new("TGT-dashboard", Duration::from_secs(600))
        .principal("dashboard-user")
        .idle(Duration::from_secs(300));
    client.put(session).await.unwrap();
    client.get("TGT-dashboard").await.unwrap();
    client.touch("TGT-dashboard").await.unwrap();
    let update = TicketUpdate {
        payload: Some(b"payload".to_vec().into()),
        ..TicketUpdate::default()
    };
    client.update("TGT-dashboard", update).await.unwrap();
    client
        .put(
            NewTicket::new("ST-dashboard", Duration::from_secs(60))
                .parent("TGT-dashboard")
                .max_uses(1),
        )
        .await
        .unwrap();
    client.consume("ST-dashboard").await.unwrap();
    let again = client.consume("ST-dashboard").await;
    assert!(matches!(again, Err(Error::NotFound(_))), "{again:?}");
    client
        .put(NewTicket::new("TGT-dashboard-2", Duration::from_secs(600)).principal("other"))
        .await
        .unwrap();
    client.delete_for("other").await.unwrap();
    client
        .put(NewTicket::new("TGT-dashboard-3", Duration::from_secs(600)))
        .await
        .unwrap();
    client.delete("TGT-dashboard-3").await.unwrap();

    // Frames have crossed both ways and a round of anti-entropy has run.
    let started = Instant::now();
    let text = loop {
        let (status, text) = common::scrape::get(metrics, "/metrics").await;
        assert_eq!(status, 200, "{text}");
        let samples = sample_names(&text);
        let rounds = text
            .lines()
            .find_map(|l| l.strip_prefix("tessera_anti_entropy_rounds_total "))
            .is_some_and(|n| n.trim() != "0");
        if samples.contains_key("tessera_peer_clock_skew_seconds") && rounds {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no peer clock or anti-entropy round in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for node in nodes {
        common::stop(node).await;
    }
    text
}

/// A node whose peers are not there: not ready, so its calls are refused
/// and the refusal counter has a series.
async fn refusing_scrape() -> String {
    let metrics = free_tcp();
    let config = NodeConfig {
        metrics_listen: Some(metrics),
        discovery: Some(DiscoveryMode::Static),
        seeds: vec!["127.0.0.1:9".into()],
        expected_size: Some(3),
        gossip_listen: Some("127.0.0.1:0".parse().unwrap()),
        peer_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..common::config()
    };
    let node = server::start_with(config, options()).await.unwrap();
    let refused = client(&node).await.get("TGT-anything").await;
    assert!(matches!(refused, Err(Error::Unavailable(_))), "{refused:?}");
    let (status, text) = common::scrape::get(metrics, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    common::stop(node).await;
    text
}

#[test]
fn the_dashboard_is_importable_and_picks_its_data_source() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "tessera");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
        "no datasource variable"
    );
    let panels = dashboard["panels"].as_array().unwrap();
    let graphs: Vec<&Value> = panels.iter().filter(|p| p["type"] != "row").collect();
    assert!(graphs.len() >= 15, "{} panels", graphs.len());
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "panel ids repeat"
        );
    }
    for panel in graphs {
        let title = panel["title"].as_str().unwrap();
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_reads_is_in_a_real_scrape() {
    let mut found = Vec::new();
    queries(&dashboard(), "", &mut found);
    let used: BTreeMap<String, String> = found
        .iter()
        .flat_map(|(at, promql)| metric_names(promql).into_iter().map(|n| (n, at.clone())))
        .collect();
    assert!(
        used.len() >= 30,
        "only {} metric names: {used:?}",
        used.len()
    );

    let mut exposed = sample_names(&cluster_scrape().await);
    exposed.extend(sample_names(&refusing_scrape().await));

    let mut missing = Vec::new();
    for (name, at) in &used {
        match exposed.get(name) {
            None => missing.push(format!("{name} (in {at})")),
            // A `_bucket` read as a histogram, a `_total` as a counter.
            Some(kind) if name.ends_with("_bucket") => assert_eq!(kind, "histogram", "{name}"),
            Some(kind) if name.ends_with("_total") => assert_eq!(kind, "counter", "{name}"),
            Some(_) => {}
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard reads metrics no scrape shows: {missing:#?}\nexposed: {:#?}",
        exposed.keys().collect::<Vec<_>>()
    );
}
