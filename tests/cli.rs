//! The command line as scripts use it: a real `tessera serve` process, driven by
//! the `tessera` client subcommands; output shapes and exit codes.

use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
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
        .env("TESSERA_DATA_DIR", "none")
        .args(["serve", "--node-id", "cli-test"])
        .args(extra)
        .env_remove("TESSERA_LISTEN")
        .env_remove("TESSERA_ADDR")
        .env_remove("TESSERA_API_TOKEN")
        .env_remove("TESSERA_API_TOKEN_FILE")
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

/// Poll `count` until the node answers (bounded: 10 s). A node with an API
/// token answers a client without one too: with a refusal, exit 2.
fn wait_until_serving(addr: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if matches!(tessera(addr, &["count"]).status.code(), Some(0 | 2)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("node at {addr} did not start");
}

fn tessera(addr: &str, args: &[&str]) -> Output {
    tessera_with(addr, args, &[])
}

/// A client subcommand with these environment variables (and no inherited token).
fn tessera_with(addr: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command
        .env("TESSERA_DATA_DIR", "none")
        .args(args)
        .args(["--addr", addr, "--timeout", "2s"])
        .env_remove("TESSERA_ADDR")
        .env_remove("TESSERA_API_TOKEN");
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().expect("run tessera")
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
        .env("TESSERA_DATA_DIR", "none")
        .args(["serve", "--shards", "0", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("shards"));
    let mut config = tempfile::NamedTempFile::new().unwrap();
    writeln!(config, "listn = \"127.0.0.1:1\"").unwrap();
    let out = Command::new(BIN)
        .env("TESSERA_DATA_DIR", "none")
        .args(["serve", "--config", config.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("listn"));
}

#[test]
fn serve_refuses_an_ecs_gossip_port_that_is_not_a_port() {
    // Flag and variable: refused before anything starts, naming the flag.
    for bad in ["0", "-5701", "70000", "x"] {
        let out = Command::new(BIN)
            .env("TESSERA_DATA_DIR", "none")
            .args(["serve", "--discovery", "ecs", "--ecs-gossip-port", bad])
            .output()
            .unwrap();
        assert_eq!(code(&out), 2, "{bad}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--ecs-gossip-port"), "{bad}: {stderr}");
        let out = Command::new(BIN)
            .env("TESSERA_DATA_DIR", "none")
            .args(["serve", "--discovery", "ecs"])
            .env("TESSERA_ECS_GOSSIP_PORT", bad)
            .output()
            .unwrap();
        assert_eq!(code(&out), 2, "{bad}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--ecs-gossip-port"));
    }
    // The TOML file: the key is named too.
    for bad in ["0", "-5701", "70000"] {
        let mut config = tempfile::NamedTempFile::new().unwrap();
        writeln!(config, "discovery = \"ecs\"\necs_gossip_port = {bad}").unwrap();
        let out = Command::new(BIN)
            .env("TESSERA_DATA_DIR", "none")
            .args(["serve", "--config", config.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(code(&out), 2, "{bad}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("ecs_gossip_port"), "{bad}: {stderr}");
    }
    // ECS settings without ECS discovery are not silently ignored.
    let out = Command::new(BIN)
        .env("TESSERA_DATA_DIR", "none")
        .args(["serve", "--ecs-service", "tessera"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ecs_service"));
}

#[cfg(feature = "ecs")]
#[test]
fn ecs_discovery_outside_ecs_says_why() {
    let out = Command::new(BIN)
        .env("TESSERA_DATA_DIR", "none")
        .args(["serve", "--discovery", "ecs", "--listen", "127.0.0.1:0"])
        .env(
            "TESSERA_CLUSTER_SECRET",
            "cli-test-cluster-secret-0123456789abcdef",
        )
        .env("TESSERA_API_TOKEN", API_TOKEN)
        .env_remove("ECS_CONTAINER_METADATA_URI_V4")
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ECS_CONTAINER_METADATA_URI_V4 is not set"),
        "{stderr}"
    );
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

const API_TOKEN: &str = "cli-test-api-token-0123456789abcdef";

/// A token file with the given mode.
#[cfg(unix)]
fn token_file(mode: u32) -> tempfile::NamedTempFile {
    use std::os::unix::fs::PermissionsExt;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{API_TOKEN}\n")).unwrap();
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    file
}

#[test]
fn client_subcommands_send_the_api_token_and_exit_2_without_it() {
    let node = serve(&[], &[("TESSERA_API_TOKEN", API_TOKEN)]);
    let addr = node.addr.as_str();
    let with_token = [("TESSERA_API_TOKEN", API_TOKEN)];
    let put = tessera_with(addr, &["put", "TGT-1-token", "--ttl", "1h"], &with_token);
    assert_eq!(code(&put), 0, "{put:?}");

    for args in [
        &["get", "TGT-1-token"][..],
        &["put", "TGT-2-token", "--ttl", "1h"],
        &["consume", "TGT-1-token"],
        &["delete-all"],
        &["list"],
        &["count"],
    ] {
        let refused = tessera(addr, args);
        assert_eq!(code(&refused), 2, "{args:?}: {refused:?}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("missing or wrong API token"), "{stderr}");
        assert!(refused.stdout.is_empty());
        let wrong = tessera_with(
            addr,
            args,
            &[(
                "TESSERA_API_TOKEN",
                "a-wrong-token-of-at-least-32-bytes-long",
            )],
        );
        assert_eq!(code(&wrong), 2, "{args:?}: {wrong:?}");
        assert!(!String::from_utf8_lossy(&wrong.stderr).contains("a-wrong-token"));
    }
    let short = tessera_with(addr, &["count"], &[("TESSERA_API_TOKEN", "short")]);
    assert_eq!(code(&short), 2);
    assert!(String::from_utf8_lossy(&short.stderr).contains("TESSERA_API_TOKEN"));

    let count = tessera_with(addr, &["count", "--json"], &with_token);
    assert_eq!(
        json_lines(&count)[0],
        serde_json::json!({"total": 1, "by_kind": {"TGT": 1}}),
        "nothing written or deleted without the token"
    );

    #[cfg(unix)]
    {
        let private = token_file(0o600);
        let path = private.path().to_str().unwrap();
        let got = tessera(addr, &["get", "TGT-1-token", "--token-file", path]);
        assert_eq!(code(&got), 0, "{got:?}");
        let readable = token_file(0o644);
        let path = readable.path().to_str().unwrap();
        let refused = tessera(addr, &["--token-file", path, "get", "TGT-1-token"]);
        assert_eq!(code(&refused), 2);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("readable by other users"), "{stderr}");
    }
}

#[test]
fn serve_with_peers_refuses_to_start_without_an_api_token() {
    let out = Command::new(BIN)
        .env("TESSERA_DATA_DIR", "none")
        .args(["serve", "--listen", "127.0.0.1:0", "--seeds", "127.0.0.1:9"])
        .args([
            "--expected-size",
            "3",
            "--gossip-listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
        ])
        .env(
            "TESSERA_CLUSTER_SECRET",
            "cli-test-cluster-secret-0123456789abcdef",
        )
        .env_remove("TESSERA_API_TOKEN")
        .env_remove("TESSERA_API_TOKEN_FILE")
        .env_remove("TESSERA_CONFIG")
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("api_token_file"), "{stderr}");

    // --token-file is the client's flag: serve refuses it rather than ignore it.
    let out = Command::new(BIN)
        .env("TESSERA_DATA_DIR", "none")
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--api-token-file"));
}

#[cfg(unix)]
#[test]
fn serve_refuses_a_world_readable_api_token_file() {
    let readable = token_file(0o644);
    let out = Command::new(BIN)
        .env("TESSERA_DATA_DIR", "none")
        .args(["serve", "--listen", "127.0.0.1:0", "--api-token-file"])
        .arg(readable.path())
        .env_remove("TESSERA_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("API token file"), "{stderr}");
    assert!(stderr.contains("readable by other users"), "{stderr}");

    // Private, it works: the token in the file is required.
    let private = token_file(0o600);
    let node = serve(&["--api-token-file", private.path().to_str().unwrap()], &[]);
    let refused = tessera(&node.addr, &["count"]);
    assert_eq!(code(&refused), 2, "{refused:?}");
    let path = private.path().to_str().unwrap();
    let counted = tessera(&node.addr, &["count", "--token-file", path]);
    assert_eq!(code(&counted), 0, "{counted:?}");
}

/// Review #3: a node given peers must be told its cluster's size, or each side
/// of a partition could decide alone.
#[test]
fn serve_with_peers_refuses_to_start_without_an_expected_size() {
    let out = Command::new(BIN)
        .env("TESSERA_DATA_DIR", "none")
        .args(["serve", "--listen", "127.0.0.1:0", "--seeds", "127.0.0.1:9"])
        .env_remove("TESSERA_EXPECTED_SIZE")
        .env_remove("TESSERA_CONFIG")
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("expected_size"), "{stderr}");
    assert!(stderr.contains("--expected-size"), "{stderr}");
}

/// Durability is the default: `tessera serve` with no data-dir setting keeps
/// its tickets in a private `tessera-data` in the working directory, and
/// `--data-dir none` keeps them in memory only.
#[test]
fn a_node_keeps_its_tickets_in_tessera_data_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let start = |extra: &[&str]| {
        let child = Command::new(BIN)
            .current_dir(dir.path())
            .env_remove("TESSERA_DATA_DIR")
            .env_remove("TESSERA_CONFIG")
            .env_remove("TESSERA_API_TOKEN")
            .env_remove("TESSERA_API_TOKEN_FILE")
            .args(["serve", "--node-id", "cli-test", "--listen", &listen])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tessera serve");
        let node = ServeProcess {
            child,
            addr: format!("http://{listen}"),
        };
        wait_until_serving(&node.addr);
        node
    };
    let node = start(&[]);
    let out = tessera(&node.addr, &["put", "TGT-default", "--ttl", "8h"]);
    assert_eq!(code(&out), 0, "{out:?}");
    drop(node); // SIGKILL
    let data = dir.path().join("tessera-data");
    assert!(
        data.join("tessera-data.toml").is_file(),
        "no default data dir"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "the default data dir is private");
    }
    let node = start(&[]);
    let out = tessera(&node.addr, &["get", "TGT-default"]);
    assert_eq!(
        code(&out),
        0,
        "lost in a restart on the default dir: {out:?}"
    );
    drop(node);
    let node = start(&["--data-dir", "none"]);
    let out = tessera(&node.addr, &["get", "TGT-default"]);
    assert_eq!(code(&out), 1, "--data-dir none read the directory: {out:?}");
}

/// Durability: a node with a data directory, killed with SIGKILL (no
/// shutdown code runs) and started again on that directory, serves every
/// ticket it acknowledged with the same deadline, idle end, uses and version;
/// deleted and used-up tickets stay dead, and one whose deadline passed while
/// the node was down is gone. A directory others can read is
/// refused with exit 2.
#[test]
fn a_node_killed_and_restarted_on_its_data_dir_keeps_its_tickets() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let args = ["--data-dir", data, "--sync", "always"];
    let env = [("TESSERA_LISTEN", listen.as_str())];
    let node = serve(&args, &env);
    let addr = node.addr.clone();
    let ok = |args: &[&str]| {
        let out = tessera(&addr, args);
        assert_eq!(code(&out), 0, "{args:?}: {out:?}");
        out
    };
    ok(&[
        "put",
        "TGT-d-1",
        "--principal",
        "alice",
        "--ttl",
        "8h",
        "--idle",
        "2h",
    ]);
    ok(&["touch", "TGT-d-1"]);
    for st in ["ST-d-1", "ST-d-2"] {
        ok(&[
            "put",
            st,
            "--parent",
            "TGT-d-1",
            "--max-uses",
            "1",
            "--ttl",
            "5m",
        ]);
    }
    ok(&["consume", "ST-d-2"]);
    ok(&["put", "PT-d-1", "--max-uses", "2", "--ttl", "5m"]);
    ok(&["consume", "PT-d-1"]);
    ok(&["put", "TGT-d-gone", "--ttl", "8h"]);
    ok(&["delete", "TGT-d-gone"]);
    // Dies while the node is down: after its deadline and the skew budget.
    ok(&["put", "ST-d-expires", "--ttl", "1s"]);
    let before: Vec<Value> = ["TGT-d-1", "ST-d-1", "PT-d-1"]
        .iter()
        .map(|id| json_lines(&ok(&["--json", "get", id])).remove(0))
        .collect();
    drop(node); // SIGKILL
    std::thread::sleep(Duration::from_millis(2_200));

    let node = serve(&args, &env);
    let addr = node.addr.clone();
    for (id, was) in ["TGT-d-1", "ST-d-1", "PT-d-1"].iter().zip(&before) {
        let out = tessera(&addr, &["--json", "get", id]);
        assert_eq!(code(&out), 0, "{id} lost in the restart: {out:?}");
        let now = json_lines(&out).remove(0);
        for field in [
            "deadline",
            "idle",
            "last_used",
            "uses",
            "max_uses",
            "version",
            "parent",
            "principal",
        ] {
            assert_eq!(now.get(field), was.get(field), "{id}: {field} changed");
        }
    }
    for id in ["ST-d-2", "TGT-d-gone", "ST-d-expires"] {
        let out = tessera(&addr, &["get", id]);
        assert_eq!(code(&out), 1, "{id} came back after the restart: {out:?}");
    }
    drop(node);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = Command::new(BIN)
            .env("TESSERA_DATA_DIR", "none")
            .args([
                "serve",
                "--node-id",
                "cli-test",
                "--data-dir",
                data,
                "--listen",
                &listen,
            ])
            .output()
            .unwrap();
        assert_eq!(code(&out), 2, "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("other users"),
            "{out:?}"
        );
    }
}

/// Durability under load: a node is killed with SIGKILL at a moment that
/// differs by round while 16 writers put tickets as fast as they can; started
/// again on its directory, it holds every put that was acknowledged before
/// any of the kills. With `always` and with `everysec` alike (a killed process
/// loses nothing; only a crashed machine can lose `everysec`'s last second).
/// Bounded: 3 rounds, each writer at most 5 s or 20,000 puts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_kills_under_load() {
    for sync in ["always", "everysec"] {
        acknowledged_writes_survive_kills(sync).await;
    }
}

async fn acknowledged_writes_survive_kills(sync: &'static str) {
    use std::sync::{Arc, Mutex};
    use tessera_client::{Client, NewTicket};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").to_str().unwrap().to_owned();
    let listen = format!("127.0.0.1:{}", free_port());
    let start = {
        let (data, listen) = (data.clone(), listen.clone());
        move || {
            let (data, listen) = (data.clone(), listen.clone());
            async move {
                tokio::task::spawn_blocking(move || {
                    serve(
                        &["--data-dir", &data, "--sync", sync],
                        &[("TESSERA_LISTEN", &listen)],
                    )
                })
                .await
                .unwrap()
            }
        }
    };
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    for round in 0..3u64 {
        let node = start().await;
        let client = Client::connect([format!("http://{listen}")]).await.unwrap();
        let writers: Vec<_> = (0..16)
            .map(|writer| {
                let (client, acked) = (client.clone(), acked.clone());
                tokio::spawn(async move {
                    let began = std::time::Instant::now();
                    for n in 0..20_000 {
                        if began.elapsed() > Duration::from_secs(5) {
                            break;
                        }
                        let id = format!("TGT-crash-{round}-{writer}-{n}");
                        let put = NewTicket::new(id.clone(), Duration::from_secs(3600));
                        match client.put(put).await {
                            Ok(_) => acked.lock().unwrap().push(id),
                            Err(_) => break,
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300 + 250 * round)).await;
        drop(node); // SIGKILL, writes in flight
        for writer in writers {
            writer.await.unwrap();
        }
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "the load did too little: {}",
        acked.len()
    );
    let _node = start().await;
    let client = Client::connect([format!("http://{listen}")]).await.unwrap();
    let lost: Vec<String> = futures::stream::iter(acked.iter().cloned())
        .map(|id| {
            let client = client.clone();
            async move { client.get(&id).await.err().map(|e| format!("{id}: {e}")) }
        })
        .buffer_unordered(32)
        .filter_map(|lost| async move { lost })
        .collect()
        .await;
    eprintln!(
        "--sync {sync}: {} puts acknowledged across 3 kills; {} lost",
        acked.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged puts lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(3)]
    );
}

/// `tessera watch --json` follows a node's events, one JSON object per line,
/// and refuses what it cannot do with exit 2.
#[test]
fn watch_prints_events_as_json_lines() {
    use std::io::BufRead;
    let node = serve(&[], &[]);
    let mut watcher = Command::new(BIN)
        .args(["watch", "--json", "--kind", "TGT", "--addr", &node.addr])
        .env_remove("TESSERA_ADDR")
        .env_remove("TESSERA_API_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tessera watch");
    let stdout = watcher.stdout.take().expect("stdout");
    let (lines, received) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines
                .send(serde_json::from_str(&line).expect("one JSON object per line"))
                .is_err()
            {
                break;
            }
        }
    });
    // The watcher hears events from the moment it subscribed: put probes
    // until one shows up, then the events under test.
    let start = Instant::now();
    let mut probes = 0;
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the watcher printed nothing"
        );
        assert_eq!(
            code(&tessera(
                &node.addr,
                &["put", &format!("TGT-probe-{probes}"), "--ttl", "1h"]
            )),
            0
        );
        probes += 1;
        if received.recv_timeout(Duration::from_millis(300)).is_ok() {
            break;
        }
    }
    assert_eq!(
        code(&tessera(&node.addr, &["put", "ST-ignored", "--ttl", "1m"])),
        0
    );
    assert_eq!(
        code(&tessera(
            &node.addr,
            &[
                "put",
                "TGT-w",
                "--ttl",
                "1h",
                "--principal",
                "alice",
                "--payload",
                "services"
            ]
        )),
        0
    );
    assert_eq!(code(&tessera(&node.addr, &["delete", "TGT-w"])), 0);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = received
            .recv_timeout(Duration::from_secs(10))
            .expect("an event line");
        if event["ticket"]["id"] == "TGT-w" {
            seen.push(event);
        } else {
            assert!(
                event["ticket"]["id"]
                    .as_str()
                    .unwrap()
                    .starts_with("TGT-probe"),
                "{event}"
            );
        }
    }
    assert_eq!(seen[0]["event"], "created");
    assert_eq!(seen[1]["event"], "deleted");
    assert_eq!(seen[1]["cause"], "delete");
    assert_eq!(seen[1]["node_id"], "cli-test");
    assert_eq!(seen[1]["ticket"]["principal"], "alice");
    assert!(
        seen[1]["position"]
            .as_str()
            .is_some_and(|p| p.contains('-'))
    );
    let _ = watcher.kill();
    let _ = watcher.wait();

    let refused = tessera(&node.addr, &["watch", "--resume-after", "nonsense"]);
    assert_eq!(
        code(&refused),
        2,
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("resume_after"));
}
