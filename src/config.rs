//! Node configuration: built-in defaults, then an optional TOML file, then
//! `TESSERA_*` environment variables and flags (the CLI applies those last two).

use crate::journal::SyncPolicy;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::replication::{ReplicationConfig, WriteQuorum};
use crate::store::StoreConfig;
use crate::ticket::Limits;

/// Largest payload limit a node accepts: gRPC messages must stay reasonable.
pub const MAX_PAYLOAD_LIMIT: usize = 64 * 1024 * 1024;

/// Bounds of `watch_buffer_bytes`.
pub const MIN_WATCH_BUFFER: usize = 64 * 1024;
pub const MAX_WATCH_BUFFER: usize = 16 * 1024 * 1024 * 1024;
/// Most worker threads a node may be given.
pub const MAX_WORKER_THREADS: usize = 1024;

/// Everything one node needs to start.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Client API (gRPC) address.
    pub listen: SocketAddr,
    /// This node's name in logs and membership.
    pub node_id: String,
    /// Largest payload accepted, in bytes.
    pub max_payload_bytes: usize,
    /// Bytes of recent ticket events each node keeps for `Watch`
    /// subscribers to resume from (at most 100,000 events).
    pub watch_buffer_bytes: usize,
    /// Longest TTL accepted.
    #[serde(deserialize_with = "duration")]
    pub max_ttl: Duration,
    /// Clock difference between nodes that must not change any decision;
    /// tombstones are kept this long past their ticket's hard deadline.
    #[serde(deserialize_with = "duration")]
    pub max_clock_skew: Duration,
    /// Lock shards of the store.
    pub shards: usize,
    /// Threads that run the node's tasks [default: one per core the process
    /// may use]. Fewer when the node shares its cores with other busy
    /// processes: a worker that is preempted holds up the tasks queued on it.
    pub worker_threads: Option<usize>,

    // ---- durability ----
    /// Where tickets and votes are kept across restarts (a journal and
    /// snapshots; see `journal`) [default: `tessera-data`, in the working
    /// directory]. `"none"` (`None`): memory only.
    #[serde(deserialize_with = "data_dir")]
    pub data_dir: Option<PathBuf>,
    /// When the journal is synced: `always`, `everysec` or `no`.
    pub sync: SyncPolicy,

    // ---- cluster ----
    /// How peers are found: `none` (a single node), `static`, `dns` or `ecs`.
    /// Unset: `static` when seeds are given, `dns` when a DNS name is, else `none`.
    pub discovery: Option<DiscoveryMode>,
    /// Gossip addresses of other nodes (`host:port`), for static discovery.
    pub seeds: Vec<String>,
    /// A name whose A/AAAA records are all the nodes (port: the gossip port).
    pub dns_name: Option<String>,
    /// UDP gossip address [default: the listen host, port 7946].
    pub gossip_listen: Option<SocketAddr>,
    /// TCP peer (data plane) address [default: the listen host, port 7947].
    pub peer_listen: Option<SocketAddr>,
    /// ECS discovery: peers are the tasks of this service [default: the
    /// service of this node's own task, else its family].
    pub ecs_service: Option<String>,
    /// ECS discovery: peers are the tasks of this task definition family.
    pub ecs_family: Option<String>,
    /// ECS discovery: the gossip port of every peer task.
    pub ecs_gossip_port: u16,
    /// Host or IP peers and clients should use for this node
    /// [default: the listen host, or the task's IPv4 with ECS discovery;
    /// required when listen is 0.0.0.0 otherwise].
    pub advertise: Option<String>,
    /// Cluster size that majorities are counted against: required with static
    /// or DNS discovery; with ECS discovery the service's desiredCount. Every
    /// node seen since start that has not announced its leave counts too.
    pub expected_size: Option<usize>,
    /// Nodes that must hold a write before it is acknowledged: a number or `all`
    /// [default: 2 when the expected cluster size is 2 or more, else 1].
    #[serde(deserialize_with = "write_quorum")]
    pub write_quorum: WriteQuorum,
    /// File holding the cluster secret (at least 32 bytes, not world-readable).
    pub cluster_secret_file: Option<PathBuf>,
    /// File holding the API token clients must present (at least 32 bytes, not
    /// world-readable). Required as soon as the node has peers; without it a
    /// single node's API is open.
    pub api_token_file: Option<PathBuf>,
    /// PEM certificate chain the client API is served with over TLS (with
    /// `tls_key_file`); re-read when it changes. Unset: plaintext HTTP/2.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA whose signature every client certificate must carry (mTLS).
    pub tls_client_ca_file: Option<PathBuf>,
    /// HTTP address of `/metrics` (Prometheus), `/healthz` and `/readyz`.
    /// Unset: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// Gossip round interval; the failure detector follows it.
    #[serde(deserialize_with = "duration")]
    pub gossip_interval: Duration,
    /// Anti-entropy round interval.
    #[serde(deserialize_with = "duration")]
    pub anti_entropy_interval: Duration,
    /// Discovery refresh interval.
    #[serde(deserialize_with = "duration")]
    pub discovery_interval: Duration,
}

/// How a node finds its peers.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryMode {
    None,
    Static,
    Dns,
    /// The RUNNING tasks of this task's ECS service or family.
    Ecs,
}

/// Where a node keeps its tickets unless told otherwise (relative to the
/// working directory).
pub const DEFAULT_DATA_DIR: &str = "tessera-data";

/// A data directory setting: a path, or `none` for memory only.
pub fn parse_data_dir(text: &str) -> Option<PathBuf> {
    (text != "none").then(|| PathBuf::from(text))
}

fn data_dir<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    Ok(parse_data_dir(&text))
}

/// Default gossip port.
pub const DEFAULT_GOSSIP_PORT: u16 = 7946;
/// Default peer (data plane) port.
pub const DEFAULT_PEER_PORT: u16 = 7947;

impl Default for NodeConfig {
    fn default() -> Self {
        let store = StoreConfig::default();
        NodeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            node_id: default_node_id(),
            max_payload_bytes: store.limits.max_payload_bytes,
            watch_buffer_bytes: crate::watch::MAX_BYTES,
            max_ttl: store.limits.max_ttl,
            max_clock_skew: Duration::from_millis(store.skew_budget_ms),
            shards: store.shards,
            worker_threads: None,
            data_dir: Some(PathBuf::from(DEFAULT_DATA_DIR)),
            sync: SyncPolicy::default(),
            discovery: None,
            seeds: Vec::new(),
            dns_name: None,
            gossip_listen: None,
            peer_listen: None,
            ecs_service: None,
            ecs_family: None,
            ecs_gossip_port: DEFAULT_GOSSIP_PORT,
            advertise: None,
            expected_size: None,
            write_quorum: WriteQuorum::Default,
            cluster_secret_file: None,
            api_token_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            metrics_listen: None,
            gossip_interval: Duration::from_millis(500),
            anti_entropy_interval: Duration::from_secs(2),
            discovery_interval: Duration::from_secs(10),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("invalid setting {setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
}

impl NodeConfig {
    /// Defaults overlaid with a TOML file.
    pub fn from_file(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source: Box::new(source),
        })
    }

    /// Refuse settings that make no sense, naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: String| Err(ConfigError::Invalid { setting, reason });
        if self.node_id.is_empty()
            || self.node_id.len() > 128
            || !self.node_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return invalid(
                "node_id",
                "must be 1 to 128 printable ASCII characters without spaces".into(),
            );
        }
        if self.max_payload_bytes == 0 || self.max_payload_bytes > MAX_PAYLOAD_LIMIT {
            return invalid(
                "max_payload_bytes",
                format!("must be between 1 and {MAX_PAYLOAD_LIMIT}"),
            );
        }
        if !(MIN_WATCH_BUFFER..=MAX_WATCH_BUFFER).contains(&self.watch_buffer_bytes) {
            return invalid(
                "watch_buffer_bytes",
                format!("must be between {MIN_WATCH_BUFFER} and {MAX_WATCH_BUFFER}"),
            );
        }
        if self.max_ttl.is_zero() || self.max_ttl > Duration::from_secs(366 * 24 * 3600) {
            return invalid("max_ttl", "must be more than 0 and at most 366 days".into());
        }
        if self.max_clock_skew > Duration::from_secs(600) {
            return invalid("max_clock_skew", "must be at most 10 minutes".into());
        }
        if self.shards == 0 || self.shards > 4096 {
            return invalid("shards", "must be between 1 and 4096".into());
        }
        if let Some(threads) = self.worker_threads
            && !(1..=MAX_WORKER_THREADS).contains(&threads)
        {
            return invalid(
                "worker_threads",
                format!("must be between 1 and {MAX_WORKER_THREADS}"),
            );
        }
        if let Some(size) = self.expected_size
            && (size == 0 || size > 1024)
        {
            return invalid("expected_size", "must be between 1 and 1024".into());
        }
        if let WriteQuorum::Nodes(n) = self.write_quorum
            && n > 1024
        {
            return invalid("write_quorum", "must be at most 1024 or 'all'".into());
        }
        for (setting, interval) in [
            ("gossip_interval", self.gossip_interval),
            ("anti_entropy_interval", self.anti_entropy_interval),
            ("discovery_interval", self.discovery_interval),
        ] {
            if interval < Duration::from_millis(10) || interval > Duration::from_secs(3600) {
                return invalid(setting, "must be between 10ms and 1h".into());
            }
        }
        if self.ecs_gossip_port == 0 {
            return invalid(
                "ecs_gossip_port",
                "must be a port between 1 and 65535".into(),
            );
        }
        if self.discovery_mode() != DiscoveryMode::Ecs {
            for (setting, value) in [
                ("ecs_service", &self.ecs_service),
                ("ecs_family", &self.ecs_family),
            ] {
                if value.is_some() {
                    return invalid(setting, "only used with discovery = ecs".into());
                }
            }
        }
        match self.discovery_mode() {
            DiscoveryMode::Ecs if !cfg!(feature = "ecs") => {
                return invalid(
                    "discovery",
                    "this tessera was built without the `ecs` cargo feature".into(),
                );
            }
            DiscoveryMode::Ecs if self.ecs_service.is_some() && self.ecs_family.is_some() => {
                return invalid(
                    "ecs_family",
                    "give ecs_service or ecs_family, not both".into(),
                );
            }
            DiscoveryMode::Ecs => {
                for (setting, value) in [
                    ("ecs_service", &self.ecs_service),
                    ("ecs_family", &self.ecs_family),
                ] {
                    if value.as_deref().is_some_and(str::is_empty) {
                        return invalid(setting, "must not be empty".into());
                    }
                }
            }
            DiscoveryMode::Static if self.seeds.is_empty() => {
                return invalid("seeds", "static discovery needs at least one seed".into());
            }
            DiscoveryMode::Dns if self.dns_name.as_deref().is_none_or(str::is_empty) => {
                return invalid("dns_name", "dns discovery needs a name".into());
            }
            DiscoveryMode::None => {}
            _ => {
                if self.listen.ip().is_unspecified() && self.advertise.is_none() {
                    return invalid(
                        "advertise",
                        "required when listen is 0.0.0.0 or [::] and the node has peers".into(),
                    );
                }
            }
        }
        // A clustered node counts majorities against this size: left at 1,
        // each side of a partition would decide alone, and a use could be
        // spent on both (review #3). ECS reads it from the service instead.
        if matches!(
            self.discovery_mode(),
            DiscoveryMode::Static | DiscoveryMode::Dns
        ) && self.expected_size.is_none()
        {
            return invalid(
                "expected_size",
                "a node with static or DNS discovery must be told how many nodes its cluster has (--expected-size N, TESSERA_EXPECTED_SIZE, or expected_size in the config file): majorities are counted against it, so that the two sides of a partition can never both spend a ticket's use; give 1 only for a node that is really alone".into(),
            );
        }
        Ok(())
    }

    /// The discovery mode in effect (see [`NodeConfig::discovery`]).
    pub fn discovery_mode(&self) -> DiscoveryMode {
        match self.discovery {
            Some(mode) => mode,
            None if !self.seeds.is_empty() => DiscoveryMode::Static,
            None if self.dns_name.is_some() => DiscoveryMode::Dns,
            None => DiscoveryMode::None,
        }
    }

    /// Whether this node runs as part of a cluster (gossip, peers, replication).
    pub fn is_clustered(&self) -> bool {
        self.discovery_mode() != DiscoveryMode::None
    }

    pub fn gossip_listen(&self) -> SocketAddr {
        self.gossip_listen
            .unwrap_or_else(|| SocketAddr::new(self.listen.ip(), DEFAULT_GOSSIP_PORT))
    }

    pub fn peer_listen(&self) -> SocketAddr {
        self.peer_listen
            .unwrap_or_else(|| SocketAddr::new(self.listen.ip(), DEFAULT_PEER_PORT))
    }

    /// The expected cluster size in effect (1 unless set or learned).
    pub fn expected_size(&self) -> usize {
        self.expected_size.unwrap_or(1)
    }

    pub fn replication_config(&self) -> ReplicationConfig {
        ReplicationConfig {
            write_quorum: self.write_quorum,
            expected_size: self.expected_size(),
            max_clock_skew: self.max_clock_skew,
            watch_buffer_bytes: self.watch_buffer_bytes,
            ..ReplicationConfig::default()
        }
    }

    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            shards: self.shards,
            skew_budget_ms: self.max_clock_skew.as_millis() as u64,
            limits: Limits {
                max_payload_bytes: self.max_payload_bytes,
                max_ttl: self.max_ttl,
            },
        }
    }
}

/// The host name, or `tessera` if it cannot be read.
fn default_node_id() -> String {
    gethostname::gethostname()
        .into_string()
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "tessera".into())
}

/// Durations as people write them: `10s`, `5m`, `8h`, `14d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("{e} (examples: 10s, 5m, 8h, 14d)"))
}

fn write_quorum<'de, D: Deserializer<'de>>(deserializer: D) -> Result<WriteQuorum, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(usize),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Number(n) => n.to_string().parse(),
        Raw::Text(text) => text.parse(),
    }
    .map_err(serde::de::Error::custom)
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let config: NodeConfig =
            toml::from_str("listen = \"0.0.0.0:9000\"\nmax_ttl = \"14d\"\n").unwrap();
        assert_eq!(config.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(config.max_ttl, Duration::from_secs(14 * 24 * 3600));
        assert_eq!(config.max_payload_bytes, 1024 * 1024);
        assert!(toml::from_str::<NodeConfig>("lisen = \"x\"").is_err());
        let config: NodeConfig =
            toml::from_str("api_token_file = \"/run/secrets/tessera-api-token\"").unwrap();
        assert_eq!(
            config.api_token_file.as_deref(),
            Some(Path::new("/run/secrets/tessera-api-token"))
        );
    }

    #[test]
    fn the_data_dir_defaults_to_tessera_data_and_none_means_memory_only() {
        let config: NodeConfig = toml::from_str("").unwrap();
        assert_eq!(config.data_dir.as_deref(), Some(Path::new("tessera-data")));
        let config: NodeConfig = toml::from_str("data_dir = \"none\"").unwrap();
        assert_eq!(config.data_dir, None);
        let config: NodeConfig = toml::from_str("data_dir = \"/var/lib/tessera\"").unwrap();
        assert_eq!(
            config.data_dir.as_deref(),
            Some(Path::new("/var/lib/tessera"))
        );
    }

    #[test]
    fn cluster_settings_from_toml() {
        let config: NodeConfig = toml::from_str(
            "seeds = [\"a:7946\", \"b:7946\"]\nwrite_quorum = \"all\"\nexpected_size = 3\n",
        )
        .unwrap();
        assert_eq!(config.discovery_mode(), DiscoveryMode::Static);
        assert_eq!(config.write_quorum, WriteQuorum::All);
        let config: NodeConfig = toml::from_str("write_quorum = 2\ndiscovery = \"dns\"").unwrap();
        assert_eq!(config.write_quorum, WriteQuorum::Nodes(2));
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("dns_name"), "{err}");
        assert!(toml::from_str::<NodeConfig>("write_quorum = 0").is_err());
        assert_eq!(
            NodeConfig::default().gossip_listen().port(),
            DEFAULT_GOSSIP_PORT
        );
    }

    /// Review #3: a clustered node left at expected size 1 would let each side
    /// of a partition decide alone.
    #[test]
    fn static_and_dns_clusters_must_give_their_size() {
        for toml_text in ["seeds = [\"a:7946\"]", "dns_name = \"tessera.local\""] {
            let config: NodeConfig = toml::from_str(toml_text).unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("expected_size"), "{toml_text}: {err}");
            let sized = NodeConfig {
                expected_size: Some(3),
                ..config
            };
            assert!(sized.validate().is_ok(), "{toml_text}");
        }
    }

    #[test]
    fn ecs_settings_are_checked() {
        let config: NodeConfig =
            toml::from_str("discovery = \"ecs\"\necs_service = \"tessera\"\n").unwrap();
        assert_eq!(config.discovery_mode(), DiscoveryMode::Ecs);
        assert_eq!(config.ecs_gossip_port, DEFAULT_GOSSIP_PORT);
        assert_eq!(config.expected_size(), 1);
        // The task's IPv4 is advertised: no --advertise needed with 0.0.0.0.
        let anywhere = NodeConfig {
            listen: "0.0.0.0:7070".parse().unwrap(),
            ..config.clone()
        };
        assert!(anywhere.validate().is_ok());
        for (bad, setting) in [
            (
                NodeConfig {
                    ecs_family: Some("tessera".into()),
                    ..config.clone()
                },
                "ecs_family",
            ),
            (
                NodeConfig {
                    ecs_gossip_port: 0,
                    ..config.clone()
                },
                "ecs_gossip_port",
            ),
            (
                NodeConfig {
                    ecs_service: Some(String::new()),
                    ..config.clone()
                },
                "ecs_service",
            ),
            (
                NodeConfig {
                    discovery: Some(DiscoveryMode::Dns),
                    dns_name: Some("tessera".into()),
                    ..config.clone()
                },
                "ecs_service",
            ),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(setting), "{err}");
        }
    }

    #[test]
    fn validation_names_the_setting() {
        let config = NodeConfig {
            shards: 0,
            ..NodeConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("shards"), "{err}");
        let config: NodeConfig = toml::from_str("worker_threads = 0").unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("worker_threads"), "{err}");
        let config: NodeConfig = toml::from_str("worker_threads = 1").unwrap();
        assert_eq!(config.worker_threads, Some(1));
        assert!(config.validate().is_ok());
        assert!(NodeConfig::default().validate().is_ok());
        assert_eq!(parse_duration("8h").unwrap(), Duration::from_secs(28_800));
        assert!(parse_duration("eight hours").is_err());
    }
}
