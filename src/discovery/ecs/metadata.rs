//! The ECS task metadata endpoint v4: who this task is (cluster, task ARN,
//! family, availability zone) and its private IPv4, before any AWS API call.
//!
//! ECS gives every container `ECS_CONTAINER_METADATA_URI_V4`, a plain-HTTP URL
//! on a link-local address; `GET $ECS_CONTAINER_METADATA_URI_V4/task` answers
//! with the task's JSON. The body comes from the network, so it is read with a
//! size limit and the whole request with a timeout.

use std::net::Ipv4Addr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::discovery::DiscoveryError;

/// The variable ECS sets in every container of a task.
pub const METADATA_ENV: &str = "ECS_CONTAINER_METADATA_URI_V4";
/// A task's metadata is a few KB even with many containers: 1 MiB is far
/// beyond any real answer and still bounds what a broken endpoint can make us
/// buffer.
pub const MAX_METADATA_BYTES: usize = 1024 * 1024;
/// The endpoint is local to the host: it answers in milliseconds or not at all.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// What discovery needs to know about its own task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskMetadata {
    /// Cluster short name or ARN (ECS reports either; both work in API calls).
    pub cluster: String,
    pub task_arn: String,
    pub family: String,
    pub availability_zone: Option<String>,
    /// The task's private IPv4 (the awsvpc ENI's address on Fargate).
    pub ipv4: Ipv4Addr,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawTask {
    cluster: String,
    #[serde(rename = "TaskARN")]
    task_arn: String,
    family: String,
    availability_zone: Option<String>,
    #[serde(default)]
    containers: Vec<RawContainer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawContainer {
    #[serde(default)]
    networks: Vec<RawNetwork>,
}

#[derive(Deserialize)]
struct RawNetwork {
    #[serde(rename = "IPv4Addresses", default)]
    ipv4_addresses: Vec<String>,
}

fn error(reason: impl Into<String>) -> DiscoveryError {
    DiscoveryError::Provider {
        provider: "ecs task metadata".into(),
        reason: reason.into(),
    }
}

/// The task's metadata, from the endpoint named by [`METADATA_ENV`].
pub async fn from_env() -> Result<TaskMetadata, DiscoveryError> {
    let base = std::env::var(METADATA_ENV).map_err(|_| {
        error(format!(
            "{METADATA_ENV} is not set: ecs discovery only works inside an ECS task (agent 1.39 or newer, or Fargate)"
        ))
    })?;
    fetch(&base).await
}

/// `GET {base}/task`, bounded by [`METADATA_TIMEOUT`] and [`MAX_METADATA_BYTES`].
pub async fn fetch(base: &str) -> Result<TaskMetadata, DiscoveryError> {
    let url = format!("{}/task", base.trim_end_matches('/'));
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| error(format!("invalid URL {url}: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(error(format!(
            "{url}: the metadata endpoint is plain http on a link-local address"
        )));
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let body = tokio::time::timeout(METADATA_TIMEOUT, async {
        let response = client
            .get(uri)
            .await
            .map_err(|e| error(format!("GET {url}: {e}")))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_METADATA_BYTES)
            .collect()
            .await
            .map_err(|e| error(format!("GET {url}: reading the body: {e}")))?
            .to_bytes();
        if !status.is_success() {
            return Err(error(format!("GET {url}: HTTP {status}")));
        }
        Ok(body)
    })
    .await
    .map_err(|_| error(format!("GET {url}: no answer within {METADATA_TIMEOUT:?}")))??;
    parse(&body).map_err(|reason| error(format!("GET {url}: {reason}")))
}

/// The task JSON -> [`TaskMetadata`]. The address is the first IPv4 of the
/// first container that has one (in awsvpc mode every container shares the
/// task's ENI).
pub fn parse(body: &[u8]) -> Result<TaskMetadata, String> {
    let raw: RawTask =
        serde_json::from_slice(body).map_err(|e| format!("unexpected task metadata: {e}"))?;
    let ipv4 = raw
        .containers
        .iter()
        .flat_map(|c| &c.networks)
        .flat_map(|n| &n.ipv4_addresses)
        .find_map(|ip| ip.parse::<Ipv4Addr>().ok())
        .ok_or_else(|| {
            "the task has no IPv4 address (Containers[].Networks[].IPv4Addresses is empty; \
             ecs discovery needs awsvpc network mode)"
                .to_string()
        })?;
    for (field, value) in [
        ("Cluster", &raw.cluster),
        ("TaskARN", &raw.task_arn),
        ("Family", &raw.family),
    ] {
        if value.is_empty() {
            return Err(format!("{field} is empty"));
        }
    }
    Ok(TaskMetadata {
        cluster: raw.cluster,
        task_arn: raw.task_arn,
        family: raw.family,
        availability_zone: raw.availability_zone.filter(|az| !az.is_empty()),
        ipv4,
    })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::Router;
    use axum::routing::get;

    use super::*;

    /// What Fargate answers, trimmed to the fields that matter (a real answer
    /// has many more, which must be ignored).
    pub(crate) fn task_json(cluster: &str, arn: &str, ip: &str) -> String {
        serde_json::json!({
            "Cluster": cluster,
            "TaskARN": arn,
            "Family": "tessera",
            "Revision": "3",
            "DesiredStatus": "RUNNING",
            "KnownStatus": "RUNNING",
            "AvailabilityZone": "us-east-1a",
            "LaunchType": "FARGATE",
            "Containers": [{
                "Name": "tessera",
                "Networks": [{
                    "NetworkMode": "awsvpc",
                    "IPv4Addresses": [ip],
                    "AttachmentIndex": 0
                }]
            }]
        })
        .to_string()
    }

    async fn serve(router: Router) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }

    #[test]
    fn parses_fargate_task_metadata() {
        let arn = "arn:aws:ecs:us-east-1:123456789012:task/prod/0123";
        let meta = parse(
            task_json(
                "arn:aws:ecs:us-east-1:123456789012:cluster/prod",
                arn,
                "10.0.1.7",
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            meta,
            TaskMetadata {
                cluster: "arn:aws:ecs:us-east-1:123456789012:cluster/prod".into(),
                task_arn: arn.into(),
                family: "tessera".into(),
                availability_zone: Some("us-east-1a".into()),
                ipv4: Ipv4Addr::new(10, 0, 1, 7),
            }
        );
        // A short cluster name is kept as it is.
        assert_eq!(
            parse(task_json("prod", arn, "10.0.1.7").as_bytes())
                .unwrap()
                .cluster,
            "prod"
        );
    }

    #[test]
    fn refuses_metadata_without_what_discovery_needs() {
        let no_ip = r#"{"Cluster":"c","TaskARN":"t","Family":"f","Containers":[{"Networks":[]}]}"#;
        assert!(parse(no_ip.as_bytes()).unwrap_err().contains("awsvpc"));
        let no_arn = r#"{"Cluster":"c","TaskARN":"","Family":"f","Containers":[{"Networks":[{"IPv4Addresses":["10.0.0.1"]}]}]}"#;
        assert!(parse(no_arn.as_bytes()).unwrap_err().contains("TaskARN"));
        let err = parse(b"<html>").unwrap_err();
        assert!(err.contains("unexpected task metadata"), "{err}");
    }

    #[tokio::test]
    async fn fetches_task_from_the_endpoint() {
        let body = task_json("prod", "arn:aws:ecs:us-east-1:1:task/prod/abc", "10.0.0.9");
        let addr =
            serve(Router::new().route("/v4/abc/task", get(move || async move { body }))).await;
        let meta = fetch(&format!("http://{addr}/v4/abc")).await.unwrap();
        assert_eq!(meta.ipv4, Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(meta.task_arn, "arn:aws:ecs:us-east-1:1:task/prod/abc");
    }

    #[tokio::test]
    async fn endpoint_failures_are_named_and_bounded() {
        let huge = "x".repeat(MAX_METADATA_BYTES + 1);
        let addr = serve(
            Router::new()
                .route("/big/task", get(move || async move { huge }))
                .route(
                    "/slow/task",
                    get(|| async {
                        tokio::time::sleep(METADATA_TIMEOUT * 10).await;
                        "late"
                    }),
                ),
        )
        .await;
        let err = fetch(&format!("http://{addr}/big"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("length limit exceeded"), "{err}");
        let err = fetch(&format!("http://{addr}/missing"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("404"), "{err}");
        let err = fetch("https://169.254.170.2/v4/x")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("plain http"), "{err}");

        tokio::time::pause();
        let err = fetch(&format!("http://{addr}/slow"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no answer within"), "{err}");
    }
}
