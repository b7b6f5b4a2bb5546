//! Node configuration: built-in defaults, then an optional TOML file, then
//! `TESSERA_*` environment variables and flags (the CLI applies those last two).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::store::StoreConfig;
use crate::ticket::Limits;

/// Largest payload limit a node accepts: gRPC messages must stay reasonable.
pub const MAX_PAYLOAD_LIMIT: usize = 64 * 1024 * 1024;

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
    /// Longest TTL accepted.
    #[serde(deserialize_with = "duration")]
    pub max_ttl: Duration,
    /// Clock difference between nodes that must not change any decision;
    /// tombstones are kept this long past their ticket's hard deadline.
    #[serde(deserialize_with = "duration")]
    pub max_clock_skew: Duration,
    /// Lock shards of the store.
    pub shards: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        let store = StoreConfig::default();
        NodeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            node_id: default_node_id(),
            max_payload_bytes: store.limits.max_payload_bytes,
            max_ttl: store.limits.max_ttl,
            max_clock_skew: Duration::from_millis(store.skew_budget_ms),
            shards: store.shards,
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
        if self.max_ttl.is_zero() || self.max_ttl > Duration::from_secs(366 * 24 * 3600) {
            return invalid("max_ttl", "must be more than 0 and at most 366 days".into());
        }
        if self.max_clock_skew > Duration::from_secs(600) {
            return invalid("max_clock_skew", "must be at most 10 minutes".into());
        }
        if self.shards == 0 || self.shards > 4096 {
            return invalid("shards", "must be between 1 and 4096".into());
        }
        Ok(())
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
    }

    #[test]
    fn validation_names_the_setting() {
        let config = NodeConfig {
            shards: 0,
            ..NodeConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("shards"), "{err}");
        assert!(NodeConfig::default().validate().is_ok());
        assert_eq!(parse_duration("8h").unwrap(), Duration::from_secs(28_800));
        assert!(parse_duration("eight hours").is_err());
    }
}
