//! ECS discovery end to end: `tessera serve --discovery ecs` processes on
//! 127.0.0.2-5 find each other through a local AWS emulator (moto, from
//! `tests/ecs/moto_server.py`) with no seed list, each with its own fake task
//! metadata endpoint, as on Fargate.
//!
//! Needs the emulator's virtual environment: `scripts/setup-moto` (which
//! `scripts/test` runs first). Without it this test fails, saying so: CI must
//! never pass by skipping it.

#![cfg(feature = "ecs")]

#[allow(dead_code)] // not every helper is used here
mod processes;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use tessera_client::{Client, ClientConfig, NewTicket};

use processes::{Fleet, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");
const SECRET: &str = "ecs-cluster-test-secret-with-at-least-32-bytes";
const API_TOKEN: &str = "ecs-cluster-test-api-token-with-32-bytes-or-more";
/// Other than the ports tests/cli_cluster.rs uses on 127.0.0.2-3, so both can
/// run at once.
const GOSSIP_PORT: u16 = 18946;
const PEER_PORT: u16 = 18947;
/// Generous bound for anything the cluster must do (typically a few seconds).
const BOUND: Duration = Duration::from_secs(60);

fn venv_python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/moto-venv/bin/python")
}

/// A task as the emulator reports it.
#[derive(Clone, Debug)]
struct Task {
    arn: String,
    ip: String,
}

impl Task {
    fn from_json(value: &Value) -> Task {
        Task {
            arn: value["arn"].as_str().expect("task arn").to_string(),
            ip: value["ip"].as_str().expect("task ip").to_string(),
        }
    }
}

/// The moto helper process; killed on drop.
struct Moto {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    endpoint: String,
    cluster: String,
    tasks: Vec<Task>,
}

impl Moto {
    fn start(log: &Path) -> Moto {
        let python = venv_python();
        assert!(
            python.exists(),
            "{} is missing: run scripts/setup-moto first (it installs moto[server] and boto3 into \
             target/moto-venv; scripts/test does it before the tests)",
            python.display()
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ecs/moto_server.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg("3")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("moto log"))
            .spawn()
            .expect("start tests/ecs/moto_server.py");
        let stdin = child.stdin.take().expect("moto stdin");
        let stdout = child.stdout.take().expect("moto stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut moto = Moto {
            child,
            stdin,
            lines,
            endpoint: String::new(),
            cluster: String::new(),
            tasks: Vec::new(),
        };
        let ready = moto.read_reply(log);
        moto.endpoint = ready["endpoint"].as_str().expect("endpoint").to_string();
        moto.cluster = ready["cluster"].as_str().expect("cluster").to_string();
        moto.tasks = ready["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .map(Task::from_json)
            .collect();
        moto
    }

    fn read_reply(&self, log: &Path) -> Value {
        let line = self.lines.recv_timeout(BOUND).unwrap_or_else(|_| {
            panic!(
                "no answer from the moto helper; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        });
        let reply: Value = serde_json::from_str(&line).expect("moto helper speaks JSON");
        assert!(reply.get("error").is_none(), "moto helper: {reply}");
        reply
    }

    fn command(&mut self, command: &str, log: &Path) -> Value {
        writeln!(self.stdin, "{command}").expect("moto helper stdin");
        self.stdin.flush().unwrap();
        self.read_reply(log)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Task metadata endpoint v4 for every node: `GET /{node}/task`.
type Metadata = Arc<Mutex<HashMap<String, Value>>>;

async fn serve_metadata(metadata: Metadata) -> String {
    let router = Router::new()
        .route(
            "/{node}/task",
            get(
                |State(metadata): State<Metadata>, UrlPath(node): UrlPath<String>| async move {
                    match metadata.lock().unwrap().get(&node) {
                        Some(task) => (StatusCode::OK, task.to_string()),
                        None => (StatusCode::NOT_FOUND, String::new()),
                    }
                },
            ),
        )
        .with_state(metadata);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

/// Start one node as the task `task` would run it.
fn start_node(
    fleet: &mut Fleet,
    moto: &Moto,
    metadata: &Metadata,
    base: &str,
    task: &Task,
    dir: &Path,
) {
    let n = fleet.nodes.len();
    let node = format!("node{n}");
    metadata.lock().unwrap().insert(
        node.clone(),
        json!({
            "Cluster": moto.cluster,
            "TaskARN": task.arn,
            "Family": "tessera",
            "KnownStatus": "RUNNING",
            "AvailabilityZone": "us-east-1a",
            "LaunchType": "FARGATE",
            "Containers": [{"Name": "tessera", "Networks": [{"NetworkMode": "awsvpc", "IPv4Addresses": [task.ip]}]}]
        }),
    );
    let ip = task.ip.as_str();
    let api = format!("{ip}:{}", free_port(ip));
    let log = dir.join(format!("{node}.log"));
    let child = Command::new(BIN)
        .env("TESSERA_DATA_DIR", "none")
        .args(["serve", "--node-id", &format!("ecs-{node}")])
        .args(["--listen", &api])
        .args(["--gossip-listen", &format!("{ip}:{GOSSIP_PORT}")])
        .args(["--peer-listen", &format!("{ip}:{PEER_PORT}")])
        .args(["--discovery", "ecs"])
        .args(["--ecs-gossip-port", &GOSSIP_PORT.to_string()])
        .args(["--discovery-interval", "1s"])
        .env("ECS_CONTAINER_METADATA_URI_V4", format!("{base}/{node}"))
        .env("AWS_ENDPOINT_URL_ECS", &moto.endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("TESSERA_CLUSTER_SECRET", SECRET)
        .env("TESSERA_API_TOKEN", API_TOKEN)
        .env("NO_COLOR", "1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("TESSERA_CONFIG")
        .env_remove("TESSERA_LISTEN")
        .env_remove("TESSERA_ADVERTISE")
        .env_remove("TESSERA_EXPECTED_SIZE")
        .env_remove("TESSERA_SEEDS")
        .env_remove("TESSERA_CLUSTER_SECRET_FILE")
        .env_remove("TESSERA_API_TOKEN_FILE")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("node log"))
        .spawn()
        .expect("spawn tessera serve");
    fleet.nodes.push(Some(child));
    fleet.api.push(format!("http://{api}"));
    fleet.logs.push(log);
}

async fn client(api: &str) -> Client {
    let config = ClientConfig {
        token: Some(API_TOKEN.to_owned()),
        ..ClientConfig::default()
    };
    Client::connect_with([api.to_string()], config)
        .await
        .expect("client")
}

/// Node ids that `api` lists as alive and ready.
async fn ready_members(api: &str) -> Vec<String> {
    match client(api).await.members().await {
        Ok(members) => {
            let mut ids: Vec<String> = members
                .into_iter()
                .filter(|m| m.state == "alive" && m.ready)
                .map(|m| m.node_id)
                .collect();
            ids.sort();
            ids
        }
        Err(_) => Vec::new(),
    }
}

/// Wait (bounded) until every node in `nodes` lists exactly `expected` as
/// alive and ready; on timeout, fail with what each node said and its log.
async fn wait_for_members(fleet: &Fleet, nodes: &[usize], expected: &[&str]) {
    let start = Instant::now();
    loop {
        let mut seen = Vec::new();
        for &n in nodes {
            seen.push(ready_members(&fleet.api[n]).await);
        }
        if seen.iter().all(|ids| ids == expected) {
            return;
        }
        if start.elapsed() > BOUND {
            let logs: Vec<String> = nodes.iter().map(|&n| fleet.log(n)).collect();
            panic!(
                "nodes {nodes:?} did not all list {expected:?} within {BOUND:?}: {seen:?}\n{}",
                logs.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether node `n`'s log says discovery dropped `addr` from its peer list.
fn logged_gone(fleet: &Fleet, n: usize, addr: &str) -> bool {
    fleet.log(n).lines().any(|line| {
        line.contains("discovered peers changed")
            && line.split_once("gone=").is_some_and(|(_, gone)| {
                gone.split_whitespace().next().unwrap_or("").contains(addr)
            })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_find_each_other_through_the_ecs_api() {
    let dir = tempfile::tempdir().unwrap();
    let moto_log = dir.path().join("moto.log");
    let mut moto = Moto::start(&moto_log);
    assert_eq!(moto.tasks.len(), 3);
    let metadata: Metadata = Arc::default();
    let base = serve_metadata(metadata.clone()).await;
    let mut fleet = Fleet::default();
    for task in moto.tasks.clone() {
        start_node(&mut fleet, &moto, &metadata, &base, &task, dir.path());
    }

    // One cluster, from nothing but the ECS API: no seeds anywhere.
    wait_for_members(&fleet, &[0, 1, 2], &["ecs-node0", "ecs-node1", "ecs-node2"]).await;
    let out = Command::new(BIN)
        .env("TESSERA_DATA_DIR", "none")
        .args(["members", "--json", "--addr", &fleet.api[0]])
        .env("TESSERA_API_TOKEN", API_TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let alive = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("members --json"))
        .filter(|m| m["state"] == "alive")
        .count();
    assert_eq!(alive, 3, "{out:?}");
    // The service's desiredCount (3) became the expected size, and each node
    // advertises the address its task metadata gave.
    for n in 0..3 {
        let log = fleet.log(n);
        assert!(
            log.contains("expected cluster size from the ECS service")
                && log.contains("desired_count=3"),
            "{log}"
        );
    }
    let members = client(&fleet.api[1]).await.members().await.unwrap();
    let node2 = members.iter().find(|m| m.node_id == "ecs-node2").unwrap();
    assert!(node2.api_addr.starts_with(&moto.tasks[2].ip), "{node2:?}");

    // A ticket put on one node is read on another.
    client(&fleet.api[0])
        .await
        .put(NewTicket::new("TGT-1-ecs-e2e", Duration::from_secs(600)).principal("alice"))
        .await
        .unwrap();
    let ticket = client(&fleet.api[1])
        .await
        .get("TGT-1-ecs-e2e")
        .await
        .unwrap();
    assert_eq!(ticket.principal.as_deref(), Some("alice"));

    // The emulator stops node 2's task (and the process goes, as ECS would
    // stop it): it leaves the others' discovered peers on their next refresh.
    let stopped = moto.tasks[2].clone();
    moto.command(&format!("stop {}", stopped.arn), &moto_log);
    let mut victim = fleet.nodes[2].take().unwrap();
    victim.kill().unwrap();
    victim.wait().unwrap();
    let gone = format!("{}:{GOSSIP_PORT}", stopped.ip);
    let start = Instant::now();
    while !(logged_gone(&fleet, 0, &gone) && logged_gone(&fleet, 1, &gone)) {
        assert!(
            start.elapsed() < BOUND,
            "the stopped task did not leave the discovered peers:\n{}\n----\n{}",
            fleet.log(0),
            fleet.log(1)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_for_members(&fleet, &[0, 1], &["ecs-node0", "ecs-node1"]).await;

    // A task started later (127.0.0.5) joins without restarting anyone, and
    // catches up with the ticket.
    let late = Task::from_json(&moto.command("run", &moto_log));
    assert_eq!(late.ip, "127.0.0.5");
    start_node(&mut fleet, &moto, &metadata, &base, &late, dir.path());
    wait_for_members(&fleet, &[0, 1, 3], &["ecs-node0", "ecs-node1", "ecs-node3"]).await;
    let ticket = client(&fleet.api[3])
        .await
        .get("TGT-1-ecs-e2e")
        .await
        .unwrap();
    assert_eq!(ticket.principal.as_deref(), Some("alice"));
    // The newcomer never had the stopped task among its peers.
    let newcomer = fleet.log(3);
    assert!(
        !newcomer
            .lines()
            .any(|l| l.contains("discovered peers changed") && l.contains(&gone)),
        "{newcomer}"
    );
}
