//! The command line as scripts use it: a real `tessera serve` process, driven by
//! the `tessera` client subcommands; output shapes and exit codes.

use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// A `tessera serve` child process, killed on drop.
struct ServeProcess {
    child: Child,
    addr: String,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn serve(extra: &[&str], envs: &[(&str, &str)]) -> ServeProcess {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--node-id", "cli-test"])
        .args(extra)
        .env_remove("TESSERA_LISTEN")
        .env_remove("TESSERA_ADDR")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if !extra.contains(&"--listen") && !envs.iter().any(|(k, _)| *k == "TESSERA_LISTEN") {
        command.args(["--listen", &listen]);
    }
    for (key, value) in envs {
        command.env(key, value);
    }
    let child = command.spawn().expect("spawn tessera serve");
    let addr = envs
        .iter()
        .find(|(k, _)| *k == "TESSERA_LISTEN")
        .map(|(_, v)| v.to_string())
        .unwrap_or(listen);
    let process = ServeProcess {
        child,
        addr: format!("http://{addr}"),
    };
    wait_until_serving(&process.addr);
    process
}

/// Poll `count` until the node answers (bounded: 10 s).
fn wait_until_serving(addr: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if tessera(addr, &["count"]).status.success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("node at {addr} did not start");
}

fn tessera(addr: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--addr", addr, "--timeout", "2s"])
        .env_remove("TESSERA_ADDR")
        .output()
        .expect("run tessera")
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exit code")
}

fn json_lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

#[test]
fn put_get_consume_delete_with_json_and_exit_codes() {
    let node = serve(&[], &[]);
    let addr = node.addr.as_str();
    let put = tessera(
        addr,
        &[
            "--json",
            "put",
            "TGT-1-abc-cas01",
            "--principal",
            "Alice",
            "--ttl",
            "8h",
            "--idle",
            "2h",
            "--payload",
            "hello",
        ],
    );
    assert_eq!(code(&put), 0, "{put:?}");
    let ticket = &json_lines(&put)[0];
    let keys: Vec<&str> = ticket
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "created_at",
            "deadline",
            "id",
            "idle",
            "kind",
            "last_used",
            "max_uses",
            "parent",
            "payload",
            "principal",
            "uses",
            "version"
        ]
    );
    assert_eq!(ticket["kind"], "TGT");
    assert_eq!(ticket["payload"], "aGVsbG8=", "base64 of hello");
    assert_eq!(ticket["idle"], "2h");
    assert!(
        ticket["deadline"].as_str().unwrap().ends_with('Z'),
        "RFC 3339"
    );

    // Global flags are accepted after the subcommand as well as before.
    let st = tessera(
        addr,
        &[
            "put",
            "ST-1-xyz-cas01",
            "--parent",
            "TGT-1-abc-cas01",
            "--max-uses",
            "1",
            "--ttl",
            "10s",
            "--json",
        ],
    );
    assert_eq!(code(&st), 0, "{st:?}");
    let consumed = tessera(addr, &["consume", "ST-1-xyz-cas01", "--json"]);
    assert_eq!(code(&consumed), 0);
    assert_eq!(json_lines(&consumed)[0]["uses"], 1);
    let again = tessera(addr, &["consume", "ST-1-xyz-cas01"]);
    assert_eq!(code(&again), 1, "used up: not there");
    assert!(String::from_utf8_lossy(&again.stderr).contains("not found"));

    let count = tessera(addr, &["count", "--json"]);
    assert_eq!(
        json_lines(&count)[0],
        serde_json::json!({"total": 1, "by_kind": {"TGT": 1}})
    );
    let sessions = tessera(addr, &["sessions", "ALICE", "--json"]);
    assert_eq!(json_lines(&sessions).len(), 1);

    let stale = tessera(
        addr,
        &[
            "update",
            "TGT-1-abc-cas01",
            "--payload",
            "x",
            "--if-version",
            "stale",
        ],
    );
    assert_eq!(code(&stale), 1, "lost compare-and-set");

    let deleted = tessera(addr, &["delete", "TGT-1-abc-cas01", "--json"]);
    assert_eq!(code(&deleted), 0);
    assert_eq!(json_lines(&deleted)[0], serde_json::json!({"deleted": 1}));
    let missing = tessera(addr, &["get", "TGT-1-abc-cas01"]);
    assert_eq!(code(&missing), 1);
    let gone = tessera(addr, &["delete", "TGT-1-abc-cas01", "--json"]);
    assert_eq!(json_lines(&gone)[0], serde_json::json!({"deleted": 0}));
    assert_eq!(code(&gone), 1);
}

#[test]
fn invalid_input_exits_2_and_unreachable_exits_3() {
    let node = serve(&[], &[]);
    let bad_id = tessera(&node.addr, &["put", "bad id", "--ttl", "1m"]);
    assert_eq!(code(&bad_id), 2);
    assert!(String::from_utf8_lossy(&bad_id.stderr).contains("invalid id"));
    let bad_ttl = tessera(&node.addr, &["put", "ST-1", "--ttl", "soon"]);
    assert_eq!(code(&bad_ttl), 2, "flag parse errors are invalid input");
    let nothing = tessera(&node.addr, &["update", "ST-1"]);
    assert_eq!(code(&nothing), 2);

    let closed = format!("http://127.0.0.1:{}", free_port());
    let unreachable = tessera(&closed, &["get", "ST-1"]);
    assert_eq!(code(&unreachable), 3);
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("127.0.0.1"));
}

#[test]
fn list_members_and_payload_files() {
    let node = serve(&[], &[]);
    let addr = node.addr.as_str();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&[0u8, 159, 146, 150]).unwrap();
    let path = file.path().to_str().unwrap();
    for n in 0..5 {
        let id = format!("ST-{n}-list");
        let out = tessera(addr, &["put", &id, "--payload-file", path, "--ttl", "1m"]);
        assert_eq!(code(&out), 0, "{out:?}");
    }
    let listed = tessera(addr, &["list", "--kind", "ST", "--json"]);
    let tickets = json_lines(&listed);
    assert_eq!(tickets.len(), 5);
    assert_eq!(tickets[0]["payload"], "AJ+Slg==", "binary payload, base64");
    let limited = tessera(addr, &["list", "--limit", "2"]);
    assert_eq!(String::from_utf8_lossy(&limited.stdout).lines().count(), 2);

    let members = tessera(addr, &["members", "--json"]);
    let members = json_lines(&members);
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["node_id"], "cli-test");
    assert_eq!(members[0]["state"], "alive");
    assert_eq!(members[0]["ready"], true);
    assert_eq!(members[0]["tickets"], 5);
}

#[test]
fn serve_takes_settings_from_toml_env_and_flags() {
    let mut config = tempfile::NamedTempFile::new().unwrap();
    writeln!(config, "max_ttl = \"1h\"\nnode_id = \"from-toml\"").unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let node = serve(
        &["--config", config.path().to_str().unwrap()],
        &[("TESSERA_LISTEN", &listen)],
    );
    let too_long = tessera(&node.addr, &["put", "TGT-1", "--ttl", "2h"]);
    assert_eq!(code(&too_long), 2);
    assert!(String::from_utf8_lossy(&too_long.stderr).contains("max_ttl"));
    let members = tessera(&node.addr, &["members", "--json"]);
    assert_eq!(
        json_lines(&members)[0]["node_id"],
        "cli-test",
        "the --node-id flag wins over the file"
    );
}

#[test]
fn serve_refuses_bad_settings_with_exit_2() {
    let out = Command::new(BIN)
        .args(["serve", "--shards", "0", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("shards"));
    let mut config = tempfile::NamedTempFile::new().unwrap();
    writeln!(config, "listn = \"127.0.0.1:1\"").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config", config.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("listn"));
}

#[test]
fn sigterm_stops_the_node_gracefully() {
    let mut node = serve(&[], &[]);
    let pid = node.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let start = Instant::now();
    let exit = loop {
        if let Some(exit) = node.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "node did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(0));
}
