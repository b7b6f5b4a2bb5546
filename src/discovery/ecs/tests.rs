//! ECS discovery against a small fake of the ECS JSON API (awsJson1_1: `POST /`
//! with `X-Amz-Target: AmazonEC2ContainerServiceV20141113.<Operation>`), driven
//! through the real SDK client: what the emulator in the end-to-end test cannot
//! show (paging past 100 tasks, DescribeTasks chunking, throttling, tasks
//! without an address, MISSING failures, the container-interface fallback).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ecs::config::retry::RetryConfig;
use aws_sdk_ecs::config::{BehaviorVersion, Credentials, Region};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::*;
use crate::discovery::{DiscoveryStatus, DiscoveryWorker};
use crate::membership::tests::start_node;
use crate::worker::Worker;

const CLUSTER: &str = "arn:aws:ecs:us-east-1:123456789012:cluster/prod";
const OWN_ARN: &str = "arn:aws:ecs:us-east-1:123456789012:task/prod/own";
/// ECS's own page size for ListTasks.
const PAGE: usize = 100;

#[derive(Clone)]
struct FakeTask {
    arn: String,
    service: String,
    family: String,
    last_status: &'static str,
    /// The ENI attachment's `privateIPv4Address`.
    eni_ip: Option<String>,
    /// `containers[].networkInterfaces[].privateIpv4Address`.
    container_ip: Option<String>,
}

impl FakeTask {
    fn running(n: usize, ip: Ipv4Addr) -> FakeTask {
        FakeTask {
            arn: format!("arn:aws:ecs:us-east-1:123456789012:task/prod/t{n:04}"),
            service: "tessera".into(),
            family: "tessera".into(),
            last_status: "RUNNING",
            eni_ip: Some(ip.to_string()),
            container_ip: None,
        }
    }

    fn json(&self) -> Value {
        let mut attachments = vec![];
        if let Some(ip) = &self.eni_ip {
            attachments.push(json!({
                "type": "ElasticNetworkInterface",
                "status": "ATTACHED",
                "details": [
                    {"name": "subnetId", "value": "subnet-1"},
                    {"name": "privateIPv4Address", "value": ip}
                ]
            }));
        }
        let interfaces: Vec<Value> = self
            .container_ip
            .iter()
            .map(|ip| json!({"attachmentId": "a", "privateIpv4Address": ip}))
            .collect();
        json!({
            "taskArn": self.arn,
            "clusterArn": CLUSTER,
            "group": format!("service:{}", self.service),
            "lastStatus": self.last_status,
            "desiredStatus": "RUNNING",
            "launchType": "FARGATE",
            "attachments": attachments,
            "containers": [{"name": "tessera", "networkInterfaces": interfaces}]
        })
    }
}

#[derive(Default)]
struct FakeState {
    tasks: Vec<FakeTask>,
    /// Listed by ListTasks, but gone by the time DescribeTasks asks.
    vanished: Vec<String>,
    /// DescribeTasks answers these with a failure other than MISSING.
    denied: Vec<String>,
    desired_count: i32,
    /// Answer every call with ThrottlingException.
    throttle: bool,
    /// Every call: (operation, request body).
    calls: Vec<(String, Value)>,
}

#[derive(Clone, Default)]
struct FakeEcs(Arc<Mutex<FakeState>>);

impl FakeEcs {
    fn with(&self, f: impl FnOnce(&mut FakeState)) {
        f(&mut self.0.lock().unwrap());
    }

    fn calls(&self, operation: &str) -> Vec<Value> {
        let state = self.0.lock().unwrap();
        state
            .calls
            .iter()
            .filter(|(op, _)| op == operation)
            .map(|(_, body)| body.clone())
            .collect()
    }

    fn clear_calls(&self) {
        self.0.lock().unwrap().calls.clear();
    }

    async fn serve(&self) -> SocketAddr {
        let router = Router::new()
            .route("/", post(handle))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        "content-type",
        "application/x-amz-json-1.1".parse().unwrap(),
    );
    response
}

fn client_error(kind: &str, message: &str) -> Response {
    let mut response = reply(
        StatusCode::BAD_REQUEST,
        json!({"__type": kind, "message": message}),
    );
    response
        .headers_mut()
        .insert("x-amzn-errortype", kind.parse().unwrap());
    response
}

async fn handle(State(fake): State<FakeEcs>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(operation) = target.strip_prefix("AmazonEC2ContainerServiceV20141113.") else {
        return client_error("UnknownOperationException", target);
    };
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut state = fake.0.lock().unwrap();
    state.calls.push((operation.to_string(), request.clone()));
    if state.throttle {
        return client_error("ThrottlingException", "Rate exceeded");
    }
    match operation {
        "ListTasks" => {
            assert_eq!(request["desiredStatus"], "RUNNING", "{request}");
            let matching: Vec<&FakeTask> = state
                .tasks
                .iter()
                .filter(
                    |t| match (request["serviceName"].as_str(), request["family"].as_str()) {
                        (Some(service), _) => t.service == service,
                        (None, Some(family)) => t.family == family,
                        (None, None) => true,
                    },
                )
                .collect();
            let start: usize = request["nextToken"]
                .as_str()
                .map_or(0, |token| token.parse().unwrap());
            let end = (start + PAGE).min(matching.len());
            let arns: Vec<&str> = matching[start..end]
                .iter()
                .map(|t| t.arn.as_str())
                .collect();
            let mut answer = json!({"taskArns": arns});
            if end < matching.len() {
                answer["nextToken"] = json!(end.to_string());
            }
            reply(StatusCode::OK, answer)
        }
        "DescribeTasks" => {
            let asked: Vec<String> = request["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            if asked.len() > PAGE {
                return client_error(
                    "InvalidParameterException",
                    "Tasks cannot be longer than 100.",
                );
            }
            let mut tasks = vec![];
            let mut failures = vec![];
            for arn in &asked {
                match state.tasks.iter().find(|t| t.arn == *arn) {
                    Some(_) if state.vanished.contains(arn) => {
                        failures.push(json!({"arn": arn, "reason": "MISSING"}));
                    }
                    Some(_) if state.denied.contains(arn) => {
                        failures
                            .push(json!({"arn": arn, "reason": "ACCESS_DENIED", "detail": "test"}));
                    }
                    Some(task) => tasks.push(task.json()),
                    None => failures.push(json!({"arn": arn, "reason": "MISSING"})),
                }
            }
            reply(
                StatusCode::OK,
                json!({"tasks": tasks, "failures": failures}),
            )
        }
        "DescribeServices" => {
            let name = request["services"][0].as_str().unwrap_or_default();
            reply(
                StatusCode::OK,
                json!({
                    "services": [{"serviceName": name, "desiredCount": state.desired_count}],
                    "failures": []
                }),
            )
        }
        other => client_error("UnknownOperationException", other),
    }
}

/// The real SDK client, pointed at the fake; retries keep the SDK's three
/// attempts but start from 1 ms so a throttling test takes milliseconds.
fn client(addr: SocketAddr) -> Client {
    let config = aws_sdk_ecs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(format!("http://{addr}"))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(1))
                .with_max_backoff(Duration::from_millis(5)),
        )
        .build();
    Client::from_conf(config)
}

fn own_task() -> TaskMetadata {
    TaskMetadata {
        cluster: CLUSTER.into(),
        task_arn: OWN_ARN.into(),
        family: "tessera".into(),
        availability_zone: Some("us-east-1a".into()),
        ipv4: Ipv4Addr::new(10, 0, 0, 1),
    }
}

fn ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, (n / 250) as u8 + 1, (n % 250) as u8 + 1)
}

fn settings() -> EcsSettings {
    EcsSettings {
        gossip_port: 7946,
        ..EcsSettings::default()
    }
}

async fn provider(fake: &FakeEcs, settings: &EcsSettings) -> EcsDiscovery {
    let addr = fake.serve().await;
    EcsDiscovery::with_client(client(addr), own_task(), settings, false)
        .await
        .unwrap()
        .discovery
}

#[tokio::test]
async fn a_large_fleet_is_read_page_by_page_and_described_in_chunks() {
    let fake = FakeEcs::default();
    let mut expected = BTreeSet::new();
    fake.with(|state| {
        // 250 tasks of the service, one of them ours.
        let mut own = FakeTask::running(0, Ipv4Addr::new(10, 0, 0, 1));
        own.arn = OWN_ARN.into();
        state.tasks.push(own);
        for n in 1..250 {
            let mut task = FakeTask::running(n, ip(n));
            match n {
                // Still starting: no address yet, not RUNNING.
                10 | 11 => {
                    task.last_status = "PROVISIONING";
                    task.eni_ip = None;
                }
                // RUNNING but no address at all: skipped, not an error.
                12 => task.eni_ip = None,
                // Stopped between ListTasks and DescribeTasks.
                20 | 150 => state.vanished.push(task.arn.clone()),
                // No ENI detail: the container's interface is used.
                30 => {
                    task.eni_ip = None;
                    task.container_ip = Some(ip(n).to_string());
                    expected.insert(SocketAddr::from((ip(n), 7946)));
                }
                // Both: the ENI detail wins.
                31 => {
                    task.container_ip = Some("192.0.2.1".into());
                    expected.insert(SocketAddr::from((ip(n), 7946)));
                }
                _ => {
                    expected.insert(SocketAddr::from((ip(n), 7946)));
                }
            }
            state.tasks.push(task);
        }
        // Another service's tasks in the same cluster are not peers.
        for n in 300..310 {
            let mut task = FakeTask::running(n, ip(n));
            task.service = "cas".into();
            task.family = "cas".into();
            state.tasks.push(task);
        }
    });
    let discovery = provider(
        &fake,
        &EcsSettings {
            service: Some("tessera".into()),
            ..settings()
        },
    )
    .await;
    let found: BTreeSet<SocketAddr> = discovery.discover().await.unwrap().into_iter().collect();
    assert_eq!(
        found.len(),
        250 - 1 - 3 - 2,
        "own, 3 without IP, 2 vanished"
    );
    assert_eq!(found, expected);
    assert!(!found.contains(&SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 7946))));

    // Three pages, each following the previous page's token.
    let lists = fake.calls("ListTasks");
    let tokens: Vec<Value> = lists.iter().map(|r| r["nextToken"].clone()).collect();
    assert_eq!(tokens, [Value::Null, json!("100"), json!("200")]);
    assert!(
        lists
            .iter()
            .all(|r| r["serviceName"] == "tessera" && r["cluster"] == CLUSTER)
    );
    // 249 ARNs (all but our own) in chunks of at most 100.
    let sizes: Vec<usize> = fake
        .calls("DescribeTasks")
        .iter()
        .map(|r| r["tasks"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), 249, "{sizes:?}");
    assert!(sizes.iter().all(|n| *n <= DESCRIBE_TASKS_MAX), "{sizes:?}");
    assert_eq!(sizes.len(), 3, "{sizes:?}");
}

/// A fake ECS whose only task is this node's own, in `service` with
/// `desired_count`.
fn own_task_in_service(service: &str, desired_count: i32) -> FakeEcs {
    let fake = FakeEcs::default();
    fake.with(|state| {
        let mut own = FakeTask::running(0, Ipv4Addr::new(10, 0, 0, 1));
        own.arn = OWN_ARN.into();
        own.service = service.into();
        state.tasks.push(own);
        state.desired_count = desired_count;
    });
    fake
}

#[tokio::test]
async fn peers_default_to_the_own_service_then_the_family() {
    let fake = own_task_in_service("tessera-blue", 5);
    let addr = fake.serve().await;

    // No setting: our own task's group names the service, whose desiredCount
    // is the expected size.
    let start = EcsDiscovery::with_client(client(addr), own_task(), &settings(), true)
        .await
        .unwrap();
    assert_eq!(
        start.discovery.peers(),
        &Peers::Service("tessera-blue".into())
    );
    assert_eq!(start.desired_count, Some(5));
    assert_eq!(
        start.discovery.describe(),
        format!("ecs service tessera-blue in {CLUSTER}")
    );
    assert_eq!(fake.calls("DescribeTasks")[0]["tasks"], json!([OWN_ARN]));
    assert_eq!(
        fake.calls("DescribeServices")[0]["services"],
        json!(["tessera-blue"])
    );

    // Settings win, and nothing is asked that is not needed.
    fake.clear_calls();
    let family = EcsSettings {
        family: Some("tessera-green".into()),
        ..settings()
    };
    let start = EcsDiscovery::with_client(client(addr), own_task(), &family, true)
        .await
        .unwrap();
    assert_eq!(
        start.discovery.peers(),
        &Peers::Family("tessera-green".into())
    );
    assert_eq!(start.desired_count, None);
    assert!(fake.calls("DescribeTasks").is_empty() && fake.calls("DescribeServices").is_empty());
    start.discovery.discover().await.unwrap();
    assert_eq!(fake.calls("ListTasks")[0]["family"], "tessera-green");

    // A task not started by a service (group "family:..."): its family.
    fake.with(|state| state.tasks[0].service = String::new());
    let start = EcsDiscovery::with_client(client(addr), own_task(), &settings(), true)
        .await
        .unwrap();
    assert_eq!(start.discovery.peers(), &Peers::Family("tessera".into()));
    assert_eq!(start.desired_count, None);
}

#[tokio::test]
async fn failures_other_than_missing_fail_the_refresh() {
    let fake = FakeEcs::default();
    fake.with(|state| {
        for n in 1..=2 {
            state.tasks.push(FakeTask::running(n, ip(n)));
        }
    });
    let discovery = provider(
        &fake,
        &EcsSettings {
            family: Some("tessera".into()),
            ..settings()
        },
    )
    .await;
    assert_eq!(discovery.discover().await.unwrap().len(), 2);
    let denied = FakeTask::running(2, ip(2)).arn;
    fake.with(|state| state.denied.push(denied.clone()));
    let err = discovery.discover().await.unwrap_err().to_string();
    assert!(
        err.contains("ACCESS_DENIED") && err.contains(&denied),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_keeps_the_last_good_peers_and_is_logged_once() {
    let fake = FakeEcs::default();
    fake.with(|state| {
        for n in 1..=3 {
            state.tasks.push(FakeTask::running(n, ip(n)));
        }
    });
    let discovery = Arc::new(
        provider(
            &fake,
            &EcsSettings {
                service: Some("tessera".into()),
                ..settings()
            },
        )
        .await,
    );
    let node = start_node("ecs-throttle", "a", vec![]).await;
    let interval = Duration::from_secs(10);
    let (mut worker, status) =
        DiscoveryWorker::new(discovery, node.clone(), node.gossip_addr(), interval);
    worker.work().await;
    let good: Vec<SocketAddr> = (1..=3).map(|n| SocketAddr::from((ip(n), 7946))).collect();
    assert_eq!(
        *status.borrow(),
        DiscoveryStatus::Found {
            peers: good.clone()
        }
    );

    // Throttled: the SDK retries (3 attempts), then the refresh fails; the
    // last good list stays in use and the error is logged once.
    fake.with(|state| state.throttle = true);
    fake.clear_calls();
    worker.work().await;
    assert_eq!(fake.calls("ListTasks").len(), 3, "the SDK's own retries");
    match status.borrow().clone() {
        DiscoveryStatus::Failing {
            error, last_peers, ..
        } => {
            // Nothing that changes between repetitions (the raw response's
            // Date header was in it once), so the worker logs it once.
            assert_eq!(
                error,
                "ecs discovery failed: ListTasks: ThrottlingException: Rate exceeded"
            );
            assert_eq!(last_peers, good);
        }
        other => panic!("expected Failing, got {other:?}"),
    }
    assert_eq!(worker.next_wait(), Duration::from_secs(1));
    worker.work().await;
    assert_eq!(
        worker.next_wait(),
        Duration::from_secs(2),
        "backoff doubles"
    );
    assert_eq!(worker.errors_logged(), 1, "the same error is logged once");

    // Recovered, with a task gone.
    fake.with(|state| {
        state.throttle = false;
        state.tasks.remove(0);
    });
    worker.work().await;
    assert_eq!(
        *status.borrow(),
        DiscoveryStatus::Found {
            peers: good[1..].to_vec()
        }
    );
    assert!(worker.next_wait() >= interval.mul_f64(0.8));
    node.shutdown().await;
}

#[test]
fn region_comes_from_the_arn() {
    assert_eq!(arn_region(OWN_ARN), Some("us-east-1"));
    assert_eq!(arn_region("arn:aws:ecs::1:task/x"), None);
    assert_eq!(arn_region("prod"), None);
}

/// Review #3: the service's desiredCount is read again every round, so a
/// scale-out raises the majority on the nodes that started before it.
#[tokio::test]
async fn the_desired_count_is_read_again_every_round() {
    let fake = own_task_in_service("tessera-blue", 3);
    let addr = fake.serve().await;
    let start = EcsDiscovery::with_client(client(addr), own_task(), &settings(), true)
        .await
        .unwrap();
    let followed = start.discovery.desired_count_handle().expect("followed");
    assert_eq!(followed.load(Ordering::Acquire), 3);
    fake.with(|state| state.desired_count = 5);
    start.discovery.discover().await.unwrap();
    assert_eq!(followed.load(Ordering::Acquire), 5);
}
