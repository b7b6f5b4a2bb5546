//! A three-node cluster started from the command line, one node per loopback
//! address (127.0.0.1, .2, .3) with static seeds, driven through the client.

#[allow(dead_code)] // not every helper is used here
mod processes;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tessera_client::{Client, ClientConfig, NewTicket};

use processes::{Fleet, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");
const SECRET: &str = "cli-cluster-test-secret-with-at-least-32-bytes";
const API_TOKEN: &str = "cli-cluster-test-api-token-with-32-bytes-or-more";
const GOSSIP_PORT: u16 = 17946;
const PEER_PORT: u16 = 17947;

fn start_fleet() -> Fleet {
    let ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    let seeds: Vec<String> = ips.iter().map(|ip| format!("{ip}:{GOSSIP_PORT}")).collect();
    let mut fleet = Fleet::default();
    for (n, ip) in ips.iter().enumerate() {
        let api = format!("{ip}:{}", free_port(ip));
        let child = Command::new(BIN)
            .env("TESSERA_DATA_DIR", "none")
            .args(["serve", "--node-id", &format!("cli-node-{n}")])
            .args(["--listen", &api])
            .args(["--gossip-listen", &format!("{ip}:{GOSSIP_PORT}")])
            .args(["--peer-listen", &format!("{ip}:{PEER_PORT}")])
            .args(["--seeds", &seeds.join(",")])
            .args(["--expected-size", "3"])
            .env("TESSERA_CLUSTER_SECRET", SECRET)
            .env("TESSERA_API_TOKEN", API_TOKEN)
            .env_remove("TESSERA_LISTEN")
            .env_remove("TESSERA_CLUSTER_SECRET_FILE")
            .env_remove("TESSERA_API_TOKEN_FILE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tessera serve");
        fleet.nodes.push(Some(child));
        fleet.api.push(format!("http://{api}"));
    }
    fleet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_from_the_command_line() {
    let mut fleet = start_fleet();
    let config = ClientConfig {
        token: Some(API_TOKEN.to_owned()),
        ..ClientConfig::default()
    };
    let mut clients = Vec::new();
    for api in &fleet.api {
        clients.push(
            Client::connect_with([api.clone()], config.clone())
                .await
                .unwrap(),
        );
    }

    // Bounded wait until every node lists three ready members.
    let start = Instant::now();
    let mut formed = false;
    while start.elapsed() < Duration::from_secs(30) && !formed {
        let mut all = true;
        for client in &clients {
            match client.members().await {
                Ok(members) => all &= members.len() == 3 && members.iter().all(|m| m.ready),
                Err(_) => all = false,
            }
        }
        formed = all;
        if !formed {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(formed, "the fleet did not form within 30 s");

    // A session on node 1, a service ticket validated on node 2, once.
    clients[0]
        .put(NewTicket::new("TGT-1-cli-cluster", Duration::from_secs(3600)).principal("alice"))
        .await
        .unwrap();
    for n in 0..50 {
        let id = format!("ST-{n}-cli-cluster");
        clients[n % 3]
            .put(
                NewTicket::new(&id, Duration::from_secs(10))
                    .parent("TGT-1-cli-cluster")
                    .max_uses(1),
            )
            .await
            .unwrap();
        clients[(n + 1) % 3].consume(&id).await.unwrap();
        assert!(
            clients[(n + 2) % 3].consume(&id).await.is_err(),
            "{id} used twice"
        );
    }
    assert_eq!(clients[2].sessions_for("ALICE").await.unwrap().len(), 1);

    // Kill -9 node 3: the others carry on with every ticket.
    let mut victim = fleet.nodes[2].take().expect("node 3");
    victim.kill().unwrap();
    victim.wait().unwrap();
    clients[1].get("TGT-1-cli-cluster").await.unwrap();
    assert_eq!(clients[0].delete("TGT-1-cli-cluster").await.unwrap(), 1);
    assert!(
        clients[1]
            .get("TGT-1-cli-cluster")
            .await
            .unwrap_err()
            .is_not_found()
    );

    // The CLI itself, against the two survivors with failover.
    let survivors = format!("{},{}", fleet.api[2], fleet.api[1]);
    let out = Command::new(BIN)
        .env("TESSERA_DATA_DIR", "none")
        .args(["count", "--json", "--addr", &survivors])
        .env("TESSERA_API_TOKEN", API_TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let count: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(count["total"], 0, "logged out everywhere");

    // Without the token the CLI is refused, exit 2, and tries no other node.
    let out = Command::new(BIN)
        .env("TESSERA_DATA_DIR", "none")
        .args(["count", "--addr", &survivors])
        .env_remove("TESSERA_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing or wrong API token"), "{stderr}");
    assert!(stderr.contains(&fleet.api[1]), "{stderr}");
}
