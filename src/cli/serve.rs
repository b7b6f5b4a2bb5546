//! `tessera serve`: configuration from defaults, TOML file, `TESSERA_*`
//! variables and flags (in rising precedence), then run until SIGTERM / Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use super::Exit;
use crate::clock::Clock;
use crate::config::{ConfigError, DiscoveryMode, NodeConfig, parse_data_dir, parse_duration};
use crate::journal::SyncPolicy;
use crate::replication::WriteQuorum;
use crate::secret::{ApiToken, ClusterSecret};
use crate::server::{self, NodeOptions, ServerError};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (flags and variables win).
    #[arg(long, env = "TESSERA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Client API (gRPC) address [default: 127.0.0.1:7070].
    #[arg(long, env = "TESSERA_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// This node's name [default: the host name].
    #[arg(long, env = "TESSERA_NODE_ID")]
    pub node_id: Option<String>,
    /// Largest payload accepted, in bytes [default: 1048576].
    #[arg(long, env = "TESSERA_MAX_PAYLOAD_BYTES")]
    pub max_payload_bytes: Option<usize>,
    /// Bytes of recent ticket events kept for `watch` subscribers to resume
    /// from (64 KiB to 16 GiB; at most 100,000 events) [default: 67108864].
    #[arg(long, env = "TESSERA_WATCH_BUFFER_BYTES")]
    pub watch_buffer_bytes: Option<usize>,
    /// Longest TTL accepted [default: 30d].
    #[arg(long, env = "TESSERA_MAX_TTL", value_parser = parse_duration)]
    pub max_ttl: Option<Duration>,
    /// Clock difference between nodes that must not change any decision;
    /// tombstones outlive their ticket's deadline by this much [default: 1s].
    #[arg(long, env = "TESSERA_MAX_CLOCK_SKEW", value_parser = parse_duration)]
    pub max_clock_skew: Option<Duration>,
    /// Lock shards of the store [default: 256, one per anti-entropy bucket].
    #[arg(long, env = "TESSERA_SHARDS")]
    pub shards: Option<usize>,
    /// Threads that run the node's tasks [default: one per core].
    #[arg(long, env = "TESSERA_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Keep tickets and votes across restarts in this directory (created
    /// private; a journal and snapshots), or `none` for memory only
    /// [default: tessera-data, in the working directory].
    #[arg(long, env = "TESSERA_DATA_DIR")]
    pub data_dir: Option<String>,
    /// When the journal is synced: always (before every acknowledgement,
    /// group-committed), everysec (a machine crash loses up to ~1 s) or no
    /// [default: everysec].
    #[arg(long, env = "TESSERA_SYNC")]
    pub sync: Option<SyncPolicy>,
    /// How peers are found: none (single node), static, dns or ecs
    /// [default: static with --seeds, dns with --dns-name, else none].
    #[arg(long, env = "TESSERA_DISCOVERY", value_enum)]
    pub discovery: Option<DiscoveryMode>,
    /// Gossip addresses of other nodes, comma-separated host:port (static discovery).
    #[arg(long, env = "TESSERA_SEEDS", value_delimiter = ',')]
    pub seeds: Vec<String>,
    /// Name whose A/AAAA records are all the nodes (dns discovery; gossip port).
    #[arg(long, env = "TESSERA_DNS_NAME")]
    pub dns_name: Option<String>,
    /// ECS discovery: peers are the RUNNING tasks of this service [default:
    /// the service of this node's own task, else its task definition family].
    #[arg(long, env = "TESSERA_ECS_SERVICE")]
    pub ecs_service: Option<String>,
    /// ECS discovery: peers are the RUNNING tasks of this task definition family.
    #[arg(long, env = "TESSERA_ECS_FAMILY")]
    pub ecs_family: Option<String>,
    /// ECS discovery: the gossip port of every peer task [default: 7946].
    #[arg(long, env = "TESSERA_ECS_GOSSIP_PORT", allow_negative_numbers = true, value_parser = parse_port)]
    pub ecs_gossip_port: Option<u16>,
    /// UDP gossip address [default: the listen host, port 7946].
    #[arg(long, env = "TESSERA_GOSSIP_LISTEN")]
    pub gossip_listen: Option<SocketAddr>,
    /// TCP peer (data plane) address [default: the listen host, port 7947].
    #[arg(long, env = "TESSERA_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,
    /// Host or IP other nodes and clients use for this node [default: the
    /// listen host, or the task's IPv4 with ECS discovery].
    #[arg(long, env = "TESSERA_ADVERTISE")]
    pub advertise: Option<String>,
    /// Cluster size majorities are counted against: required with static or
    /// DNS discovery (1 only for a node really alone); with ECS discovery the
    /// service's desiredCount. Every node seen since start that has not
    /// announced its leave counts too, so the figure never drops below them.
    #[arg(long, env = "TESSERA_EXPECTED_SIZE")]
    pub expected_size: Option<usize>,
    /// Nodes that must hold a write before it is acknowledged: N or all
    /// [default: 2 when the expected cluster size is 2 or more, else 1].
    #[arg(long, env = "TESSERA_WRITE_QUORUM")]
    pub write_quorum: Option<WriteQuorum>,
    /// File holding the cluster secret (32+ bytes, not world-readable); or set
    /// TESSERA_CLUSTER_SECRET. Required as soon as the node has peers.
    #[arg(long, env = "TESSERA_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// File holding the API token clients must send as `authorization: Bearer
    /// <token>` (32+ printable bytes, not world-readable); or set
    /// TESSERA_API_TOKEN. Required as soon as the node has peers; without one a
    /// single node's API is open to whoever reaches --listen.
    #[arg(long, env = "TESSERA_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Serve the client API over TLS with this PEM certificate chain (and
    /// --tls-key-file); re-read within 10 s when the file changes. Or give
    /// the chain and key as PEM text in TESSERA_TLS_CERT and TESSERA_TLS_KEY
    /// (as ECS injects secrets; read at start only).
    #[arg(long, env = "TESSERA_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file (not world-readable).
    #[arg(long, env = "TESSERA_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Require client certificates signed by this PEM CA (mTLS).
    #[arg(long, env = "TESSERA_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// Serve /metrics (Prometheus), /healthz and /readyz over HTTP here, e.g.
    /// 0.0.0.0:9100 [default: not served].
    #[arg(long, env = "TESSERA_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Gossip interval; the failure detector follows it [default: 500ms].
    #[arg(long, env = "TESSERA_GOSSIP_INTERVAL", value_parser = parse_duration)]
    pub gossip_interval: Option<Duration>,
    /// Anti-entropy round interval [default: 2s].
    #[arg(long, env = "TESSERA_ANTI_ENTROPY_INTERVAL", value_parser = parse_duration)]
    pub anti_entropy_interval: Option<Duration>,
    /// Discovery refresh interval [default: 10s].
    #[arg(long, env = "TESSERA_DISCOVERY_INTERVAL", value_parser = parse_duration)]
    pub discovery_interval: Option<Duration>,
    /// FOR FAULT-INJECTION TESTS ONLY: run this node's clock this far ahead
    /// (+30s) or behind (-30s) of the system clock, to show what a skewed
    /// node does to the others. Never set it in production.
    #[arg(long, env = "TESSERA_CLOCK_OFFSET", hide = true, value_parser = parse_clock_offset, allow_hyphen_values = true)]
    pub clock_offset: Option<i64>,
    /// Log filter (tracing EnvFilter syntax), e.g. info or tessera=debug.
    #[arg(long, env = "TESSERA_LOG", default_value = "info")]
    pub log: String,
}

impl ServeArgs {
    /// Defaults, overlaid by the TOML file, overlaid by flags / variables.
    pub fn node_config(&self) -> Result<NodeConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => NodeConfig::from_file(path)?,
            None => NodeConfig::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(node_id) = &self.node_id {
            config.node_id = node_id.clone();
        }
        if let Some(bytes) = self.watch_buffer_bytes {
            config.watch_buffer_bytes = bytes;
        }
        if let Some(bytes) = self.max_payload_bytes {
            config.max_payload_bytes = bytes;
        }
        if let Some(ttl) = self.max_ttl {
            config.max_ttl = ttl;
        }
        if let Some(skew) = self.max_clock_skew {
            config.max_clock_skew = skew;
        }
        if let Some(shards) = self.shards {
            config.shards = shards;
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = parse_data_dir(dir);
        }
        if let Some(sync) = self.sync {
            config.sync = sync;
        }
        if self.worker_threads.is_some() {
            config.worker_threads = self.worker_threads;
        }
        if self.discovery.is_some() {
            config.discovery = self.discovery;
        }
        if !self.seeds.is_empty() {
            config.seeds = self.seeds.clone();
        }
        if self.dns_name.is_some() {
            config.dns_name = self.dns_name.clone();
        }
        if self.ecs_service.is_some() {
            config.ecs_service = self.ecs_service.clone();
        }
        if self.ecs_family.is_some() {
            config.ecs_family = self.ecs_family.clone();
        }
        if let Some(port) = self.ecs_gossip_port {
            config.ecs_gossip_port = port;
        }
        if self.gossip_listen.is_some() {
            config.gossip_listen = self.gossip_listen;
        }
        if self.peer_listen.is_some() {
            config.peer_listen = self.peer_listen;
        }
        if self.advertise.is_some() {
            config.advertise = self.advertise.clone();
        }
        if self.expected_size.is_some() {
            config.expected_size = self.expected_size;
        }
        if let Some(quorum) = self.write_quorum {
            config.write_quorum = quorum;
        }
        if self.cluster_secret_file.is_some() {
            config.cluster_secret_file = self.cluster_secret_file.clone();
        }
        if self.api_token_file.is_some() {
            config.api_token_file = self.api_token_file.clone();
        }
        if self.tls_cert_file.is_some() {
            config.tls_cert_file = self.tls_cert_file.clone();
            config.tls_key_file = self.tls_key_file.clone();
        }
        if self.tls_client_ca_file.is_some() {
            config.tls_client_ca_file = self.tls_client_ca_file.clone();
        }
        if self.metrics_listen.is_some() {
            config.metrics_listen = self.metrics_listen;
        }
        if let Some(interval) = self.gossip_interval {
            config.gossip_interval = interval;
        }
        if let Some(interval) = self.anti_entropy_interval {
            config.anti_entropy_interval = interval;
        }
        if let Some(interval) = self.discovery_interval {
            config.discovery_interval = interval;
        }
        config.validate()?;
        Ok(config)
    }
}

/// A port number: 1 to 65535, nothing else (a port like `-5701` or `70000` is
/// refused here, naming the flag, not silently changed).
fn parse_port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<i64>() {
        Ok(port) if (1..=65535).contains(&port) => Ok(port as u16),
        _ => Err(format!(
            "{text:?} is not a port: must be between 1 and 65535"
        )),
    }
}

/// Run a node with `config`, as [`ServeArgs::node_config`] resolved it.
pub async fn run(args: ServeArgs, config: Result<NodeConfig, ConfigError>) -> Exit {
    let filter = match EnvFilter::try_new(&args.log) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("tessera: invalid setting log: {e}");
            return Exit::InvalidInput;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in container logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tessera: {e}");
            return Exit::InvalidInput;
        }
    };
    // The secret and the token themselves may come from the environment (never
    // from a flag: argv is visible to every user of the machine).
    let secret = match std::env::var_os("TESSERA_CLUSTER_SECRET") {
        Some(value) => match ClusterSecret::new(value.as_encoded_bytes()) {
            Ok(secret) => Some(secret),
            Err(e) => {
                eprintln!("tessera: invalid setting TESSERA_CLUSTER_SECRET: {e}");
                return Exit::InvalidInput;
            }
        },
        None => None,
    };
    let api_token = match std::env::var_os("TESSERA_API_TOKEN") {
        Some(value) => match ApiToken::new(value.as_encoded_bytes()) {
            Ok(token) => Some(token),
            Err(e) => {
                eprintln!("tessera: invalid setting TESSERA_API_TOKEN: {e}");
                return Exit::InvalidInput;
            }
        },
        None => None,
    };
    // The TLS pair as PEM text: how ECS hands over a certificate kept in
    // Secrets Manager (it injects secrets as variables only).
    let tls_pem = match (
        std::env::var_os("TESSERA_TLS_CERT"),
        std::env::var_os("TESSERA_TLS_KEY"),
    ) {
        (Some(cert), Some(key)) => Some((
            cert.as_encoded_bytes().to_vec(),
            key.as_encoded_bytes().to_vec(),
        )),
        (None, None) => None,
        _ => {
            eprintln!(
                "tessera: invalid setting TESSERA_TLS_CERT: TESSERA_TLS_CERT and TESSERA_TLS_KEY go together"
            );
            return Exit::InvalidInput;
        }
    };
    let clock = args.clock_offset.map(|offset_ms| {
        warn!(
            offset_ms,
            "this node's clock is deliberately offset (--clock-offset, for fault-injection tests only)"
        );
        Clock::system().with_offset(offset_ms)
    });
    let options = NodeOptions {
        secret,
        api_token,
        tls_pem,
        clock,
        ..NodeOptions::default()
    };
    let node = match server::start_with(config, options).await {
        Ok(node) => node,
        Err(e) => {
            error!(error = %e, "cannot start");
            eprintln!("tessera: {e}");
            return match e {
                ServerError::Config(_)
                | ServerError::Secret(_)
                | ServerError::SecretMissing
                | ServerError::ApiTokenMissing
                | ServerError::ApiTokenIsClusterSecret
                | ServerError::Discovery(_)
                | ServerError::Journal(_)
                | ServerError::Tls(_) => Exit::InvalidInput,
                _ => Exit::Failed,
            };
        }
    };
    let mut node = node;
    let outcome = tokio::select! {
        signal = shutdown_signal() => Ok(signal),
        failed = node.wait() => Err(failed),
    };
    let outcome = match outcome {
        Ok(signal) => {
            info!(signal, "stopping");
            node.stop().await
        }
        Err(failed) => failed,
    };
    match outcome {
        Ok(()) => Exit::Ok,
        Err(e) => {
            error!(error = %e, "node failed");
            Exit::Failed
        }
    }
}

/// A signed duration in milliseconds: `+30s`, `-2m`, `500ms`.
fn parse_clock_offset(value: &str) -> Result<i64, String> {
    let (sign, magnitude) = match value.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, value.strip_prefix('+').unwrap_or(value)),
    };
    let millis = i64::try_from(parse_duration(magnitude)?.as_millis())
        .map_err(|_| format!("clock offset {value:?} is too large"))?;
    Ok(sign * millis)
}

/// Resolves on SIGTERM (what ECS and docker send) or Ctrl-C.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

#[cfg(test)]
mod tests {
    use super::parse_clock_offset;

    #[test]
    fn clock_offsets_are_signed_durations() {
        assert_eq!(parse_clock_offset("+30s"), Ok(30_000));
        assert_eq!(parse_clock_offset("30s"), Ok(30_000));
        assert_eq!(parse_clock_offset("-2m"), Ok(-120_000));
        assert_eq!(parse_clock_offset("-500ms"), Ok(-500));
        assert!(parse_clock_offset("-").is_err());
        assert!(parse_clock_offset("soon").is_err());
    }
}
