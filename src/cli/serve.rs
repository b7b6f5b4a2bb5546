//! `tessera serve`: configuration from defaults, TOML file, `TESSERA_*`
//! variables and flags (in rising precedence), then run until SIGTERM / Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

use super::Exit;
use crate::config::{ConfigError, NodeConfig, parse_duration};
use crate::server::{self, ServerError};

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
    /// Longest TTL accepted [default: 30d].
    #[arg(long, env = "TESSERA_MAX_TTL", value_parser = parse_duration)]
    pub max_ttl: Option<Duration>,
    /// Clock difference between nodes that must not change any decision;
    /// tombstones outlive their ticket's deadline by this much [default: 1s].
    #[arg(long, env = "TESSERA_MAX_CLOCK_SKEW", value_parser = parse_duration)]
    pub max_clock_skew: Option<Duration>,
    /// Lock shards of the store [default: 32].
    #[arg(long, env = "TESSERA_SHARDS")]
    pub shards: Option<usize>,
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
        config.validate()?;
        Ok(config)
    }
}

pub async fn run(args: ServeArgs) -> Exit {
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
        .init();
    let config = match args.node_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tessera: {e}");
            return Exit::InvalidInput;
        }
    };
    let node = match server::start(config).await {
        Ok(node) => node,
        Err(e) => {
            error!(error = %e, "cannot start");
            eprintln!("tessera: {e}");
            return match e {
                ServerError::Config(_) => Exit::InvalidInput,
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
