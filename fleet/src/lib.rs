//! The fault-injection suite's tools: [`Fleet`] runs the repository's
//! `docker-compose.yml` as a private compose project (its own network, ports
//! and secrets) and breaks it on purpose; [`workload`] drives a CAS-like load
//! through `tessera-client` and records every acknowledged operation;
//! [`workload::History::check`] then says what was lost, resurrected or
//! consumed twice.
//!
//! Needs a Docker engine with Compose and the images `scripts/fleet image`
//! builds (`tessera:dev`, `tessera-noise:dev`).

pub mod workload;

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tessera_client::{Client, ClientConfig, ClientTls};

/// Image of a node, built by `scripts/fleet image`.
pub const NODE_IMAGE: &str = "tessera:dev";
/// Image of the garbage sender, built by `scripts/fleet image`.
pub const NOISE_IMAGE: &str = "tessera-noise:dev";
/// The unprivileged user the node containers run as; secret files are given
/// to it so they can stay unreadable to everyone else.
const NODE_UID: u32 = 65534;

/// One fleet: a compose project named after its scenario.
pub struct Fleet {
    project: String,
    /// First three octets of the fleet's private /24.
    subnet: String,
    /// Host port of node1's API; node N is on `first_port + N - 1`.
    first_port: u16,
    secrets: PathBuf,
    /// `node<N>` below it is node N's data directory (bind-mounted at /data).
    data: PathBuf,
    /// Extra compose files (e.g. one node's environment for a scenario).
    overrides: Vec<PathBuf>,
    token: String,
    /// PEM of the CA that signed the nodes' API certificate.
    ca_pem: String,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the fleet crate sits in the repository")
        .to_path_buf()
}

/// `docker compose` (v2) when the plugin exists, else `docker-compose` (v1).
/// Asked once per process: every compose call would otherwise spawn the probe.
fn compose_command() -> Command {
    static V2: OnceLock<bool> = OnceLock::new();
    let v2 = *V2.get_or_init(|| {
        Command::new("docker")
            .args(["compose", "version"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if v2 {
        let mut command = Command::new("docker");
        command.arg("compose");
        command
    } else {
        Command::new("docker-compose")
    }
}

fn run(mut command: Command) -> anyhow::Result<Output> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !output.status.success() {
        bail!(
            "{shown} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

fn docker(args: &[&str]) -> anyhow::Result<String> {
    let mut command = Command::new("docker");
    command.args(args);
    Ok(String::from_utf8_lossy(&run(command)?.stdout)
        .trim()
        .to_owned())
}

/// Fails with what to run when an image is missing, rather than letting
/// compose try (and fail) to pull it from a registry.
pub fn require_images() -> anyhow::Result<()> {
    for image in [NODE_IMAGE, NOISE_IMAGE] {
        if docker(&["image", "inspect", "--format", "{{.Id}}", image]).is_err() {
            bail!("docker image {image} is missing: run scripts/fleet image (./scripts/test does)");
        }
    }
    Ok(())
}

/// A secret of 48 random bytes, base64 (printable, so it also serves as an
/// API token).
/// The API certificate of a scenario's fleet (one for every node: its names
/// and addresses, and 127.0.0.1 for the host's published ports and the
/// containers' own health checks), signed by a CA made for the scenario.
struct FleetTls {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl FleetTls {
    fn new(subnet_octet: u8) -> anyhow::Result<FleetTls> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca, ca_key);
        let mut names = vec![
            "localhost".to_owned(),
            "tessera".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        for node in 1..=4u8 {
            names.push(format!("node{node}"));
            names.push(format!("10.213.{subnet_octet}.{}", 10 + node));
        }
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(names)?.signed_by(&key, &issuer)?;
        Ok(FleetTls {
            ca_pem,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn random_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 48];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

impl Fleet {
    /// Writes the secrets and starts node1..node3; returns once all three are
    /// healthy (joined and caught up). `subnet_octet` and `first_port` keep
    /// scenarios apart from each other and from a developer's own fleet.
    pub fn start(scenario: &str, subnet_octet: u8, first_port: u16) -> anyhow::Result<Fleet> {
        Fleet::start_with_env(scenario, subnet_octet, first_port, &[], &[1, 2, 3])
    }

    /// Same, with extra environment variables per node (`(node, name,
    /// value)`), returning once the nodes in `healthy` are.
    pub fn start_with_env(
        scenario: &str,
        subnet_octet: u8,
        first_port: u16,
        node_env: &[(u8, &str, &str)],
        healthy: &[u8],
    ) -> anyhow::Result<Fleet> {
        require_images()?;
        let project = format!("tessera-fault-{scenario}");
        let dir = repo_root().join("target/fleet").join(&project);
        let secrets = dir.join("secrets");
        std::fs::create_dir_all(&secrets)?;
        let token = random_secret();
        let tls = FleetTls::new(subnet_octet)?;
        for (name, value) in [
            ("cluster_secret", random_secret()),
            ("api_token", token.clone()),
            ("tls_cert", tls.cert_pem),
            ("tls_key", tls.key_pem),
            ("tls_ca", tls.ca_pem.clone()),
        ] {
            let path = secrets.join(name);
            let _ = std::fs::remove_file(&path);
            std::fs::write(&path, &value)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            // As root (CI), hand the file to the container's user; otherwise the
            // containers run as the caller (see `compose`).
            if is_root() {
                chown(&path, Some(NODE_UID), Some(NODE_UID))?;
            }
        }
        // Each node's data directory, empty and private for every run.
        let data = dir.join("data");
        let _ = std::fs::remove_dir_all(&data);
        for node in 1..=4 {
            let path = data.join(format!("node{node}"));
            std::fs::create_dir_all(&path)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
            if is_root() {
                chown(&path, Some(NODE_UID), Some(NODE_UID))?;
            }
        }
        let mut overrides = Vec::new();
        if !node_env.is_empty() {
            let mut yaml = String::from("services:\n");
            for (node, key, value) in node_env {
                yaml.push_str(&format!(
                    "  node{node}:\n    environment:\n      {key}: \"{value}\"\n"
                ));
            }
            let path = dir.join("override.yml");
            std::fs::write(&path, yaml)?;
            overrides.push(path);
        }
        let fleet = Fleet {
            project,
            subnet: format!("10.213.{subnet_octet}"),
            first_port,
            secrets,
            data,
            overrides,
            token,
            ca_pem: tls.ca_pem,
        };
        // Leftovers of an earlier run that was killed before it cleaned up.
        let _ = fleet.compose(&["down", "--volumes", "--remove-orphans", "--timeout", "1"]);
        fleet.compose(&["up", "--detach", "--no-build", "node1", "node2", "node3"])?;
        fleet.wait_healthy(healthy, Duration::from_secs(90))?;
        Ok(fleet)
    }

    /// Runs compose on this fleet's project.
    pub fn compose(&self, args: &[&str]) -> anyhow::Result<Output> {
        let root = repo_root();
        let mut command = compose_command();
        command
            .current_dir(&root)
            .args(["--project-name", &self.project])
            .args(["--file", "docker-compose.yml"]);
        for file in &self.overrides {
            command.arg("--file").arg(file);
        }
        let (uid, gid) = if is_root() {
            (NODE_UID, NODE_UID)
        } else {
            caller_ids()
        };
        command
            .args(args)
            .env("TESSERA_SUBNET", &self.subnet)
            .env("TESSERA_SECRETS_DIR", &self.secrets)
            .env("TESSERA_DATA_ROOT", &self.data)
            .env("TESSERA_UID", uid.to_string())
            .env("TESSERA_GID", gid.to_string())
            .env("TESSERA_IMAGE", NODE_IMAGE);
        for node in 1..=4u8 {
            command.env(format!("TESSERA_PORT_{node}"), self.port(node).to_string());
        }
        run(command)
    }

    fn port(&self, node: u8) -> u16 {
        self.first_port + u16::from(node) - 1
    }

    /// The API address of a node as the host reaches it.
    pub fn api_addr(&self, node: u8) -> String {
        format!("https://127.0.0.1:{}", self.port(node))
    }

    /// The node's address on the fleet network.
    pub fn ip(&self, node: u8) -> String {
        format!("{}.{}", self.subnet, 10 + node)
    }

    pub fn network(&self) -> String {
        format!("{}_fleet", self.project)
    }

    /// How a client trusts the nodes' API certificate.
    pub fn client_tls(&self) -> ClientTls {
        ClientTls {
            ca_pem: Some(self.ca_pem.clone().into_bytes()),
            identity_pem: None,
        }
    }

    /// A client over these nodes, in this order (it fails over in order).
    pub async fn client(&self, nodes: &[u8], call_timeout: Duration) -> anyhow::Result<Client> {
        let config = ClientConfig {
            call_timeout,
            connect_timeout: Duration::from_secs(1),
            token: Some(self.token.clone()),
            tls: self.client_tls(),
        };
        let addrs: Vec<String> = nodes.iter().map(|n| self.api_addr(*n)).collect();
        Ok(Client::connect_with(&addrs, config).await?)
    }

    pub fn container(&self, node: u8) -> anyhow::Result<String> {
        let out = self.compose(&["ps", "--quiet", &format!("node{node}")])?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if id.is_empty() {
            bail!("node{node} has no container");
        }
        Ok(id)
    }

    /// `kill -9` of the nodes' processes, in one `docker kill`: no drain,
    /// no goodbye.
    pub fn kill(&self, nodes: &[u8]) -> anyhow::Result<()> {
        self.docker_on(&["kill", "--signal", "KILL"], nodes)
    }

    /// Start killed nodes' containers again, in one `docker start`: same
    /// node ids, empty memory, the same data directories (tasks restarted on
    /// their volumes, but at once).
    pub fn start_again(&self, nodes: &[u8]) -> anyhow::Result<()> {
        self.docker_on(&["start"], nodes)
    }

    fn docker_on(&self, command: &[&str], nodes: &[u8]) -> anyhow::Result<()> {
        let containers = nodes
            .iter()
            .map(|node| self.container(*node))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut args = command.to_vec();
        args.extend(containers.iter().map(String::as_str));
        docker(&args).map(drop)
    }

    /// SIGTERM (graceful leave), then start again, as a rolling deploy does.
    pub fn restart(&self, node: u8) -> anyhow::Result<()> {
        self.compose(&["restart", "--timeout", "20", &format!("node{node}")])
            .map(drop)
    }

    /// Cut the node off the fleet network (its API port stays reachable from
    /// the host only if Docker keeps the mapping; see the scenario).
    pub fn disconnect(&self, node: u8) -> anyhow::Result<()> {
        docker(&[
            "network",
            "disconnect",
            &self.network(),
            &self.container(node)?,
        ])
        .map(drop)
    }

    /// Reattach the node with its address and DNS aliases.
    pub fn connect(&self, node: u8) -> anyhow::Result<()> {
        docker(&[
            "network",
            "connect",
            "--ip",
            &self.ip(node),
            "--alias",
            "tessera",
            "--alias",
            &format!("node{node}"),
            &self.network(),
            &self.container(node)?,
        ])
        .map(drop)
    }

    /// Start node4 (the `scale` profile) and return at once.
    pub fn add_node4(&self) -> anyhow::Result<()> {
        self.compose(&[
            "--profile",
            "scale",
            "up",
            "--detach",
            "--no-build",
            "node4",
        ])
        .map(drop)
    }

    /// The node's health as Docker reports it (`healthy`, `starting`, ...).
    pub fn health(&self, node: u8) -> anyhow::Result<String> {
        docker(&[
            "inspect",
            "--format",
            "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}",
            &self.container(node)?,
        ])
    }

    pub fn is_running(&self, node: u8) -> bool {
        self.container(node)
            .and_then(|id| docker(&["inspect", "--format", "{{.State.Running}}", &id]))
            .is_ok_and(|running| running == "true")
    }

    /// Waits until every node is healthy; fails with their states otherwise.
    pub fn wait_healthy(&self, nodes: &[u8], limit: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            let states: Vec<String> = nodes
                .iter()
                .map(|n| self.health(*n).unwrap_or_else(|e| e.to_string()))
                .collect();
            if states.iter().all(|s| s == "healthy") {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                bail!(
                    "nodes {nodes:?} not healthy after {limit:?}: {states:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Runs the garbage sender on the fleet network against these nodes.
    pub fn noise(&self, nodes: &[u8]) -> anyhow::Result<String> {
        let mut args = vec![
            "run".to_owned(),
            "--rm".to_owned(),
            "--network".to_owned(),
            self.network(),
            NOISE_IMAGE.to_owned(),
        ];
        args.extend(nodes.iter().map(|n| self.ip(*n)));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&args)
    }

    /// The last lines each node logged (for failure messages).
    pub fn logs(&self) -> String {
        self.compose(&["logs", "--no-color", "--tail", "30"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("(no logs: {e})"))
    }
}

impl Drop for Fleet {
    /// Containers, network, secrets and data go, whether the scenario passed
    /// or not.
    fn drop(&mut self) {
        if let Err(e) = self.compose(&["down", "--volumes", "--remove-orphans", "--timeout", "1"]) {
            eprintln!("cleanup of {} failed: {e:#}", self.project);
        }
        let _ = std::fs::remove_dir_all(&self.secrets);
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

fn is_root() -> bool {
    caller_ids().0 == 0
}

/// The caller's uid and gid (the owner of its /proc entry).
fn caller_ids() -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or((NODE_UID, NODE_UID), |m| (m.uid(), m.gid()))
}
