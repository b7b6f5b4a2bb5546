//! Scraping a node's `/metrics` as Prometheus does, for the tests that
//! check what it shows.

use std::net::SocketAddr;
use std::time::Duration;

use openmetrics_parser::openmetrics::parse_openmetrics;
use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET `path` with a bare HTTP/1.1 request: (status, body).
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
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

pub type Scrape = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

/// Scrape `/metrics` and parse it as Prometheus does (OpenMetrics text).
pub async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    parse_openmetrics(&body).unwrap_or_else(|e| panic!("not OpenMetrics: {e:?}\n{body}"))
}

/// The value of the sample of `family` whose labels include `labels`.
pub fn value_of(
    scrape: &Scrape,
    family: &str,
    labels: &[(&str, &str)],
) -> Option<OpenMetricsValue> {
    let family = scrape.families.get(family)?;
    family
        .iter_samples()
        .find(|sample| {
            let set = sample.get_labelset().unwrap();
            labels
                .iter()
                .all(|(name, value)| set.get_label_value(name) == Some(*value))
        })
        .map(|sample| sample.value.clone())
}

/// Calls counted in the call histogram for `op` and `outcome` (0 if none).
pub fn calls(scrape: &Scrape, op: &str, outcome: &str) -> u64 {
    match value_of(
        scrape,
        "tessera_ticket_call_duration_seconds",
        &[("op", op), ("outcome", outcome)],
    ) {
        Some(OpenMetricsValue::Histogram(h)) => h.count.unwrap_or(0),
        None => 0,
        other => panic!("not a histogram: {other:?}"),
    }
}

pub fn gauge(scrape: &Scrape, family: &str, labels: &[(&str, &str)]) -> f64 {
    match value_of(scrape, family, labels) {
        Some(OpenMetricsValue::Gauge(n)) => n.as_f64(),
        other => panic!("{family} {labels:?}: not a gauge: {other:?}"),
    }
}

pub fn counter(scrape: &Scrape, family: &str, labels: &[(&str, &str)]) -> f64 {
    match value_of(scrape, family, labels) {
        Some(OpenMetricsValue::Counter(c)) => c.value.as_f64(),
        None => 0.0,
        other => panic!("{family} {labels:?}: not a counter: {other:?}"),
    }
}
