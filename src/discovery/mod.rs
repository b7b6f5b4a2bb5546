//! Peer discovery: where the other nodes' gossip ports are.
//!
//! chitchat only knows the seeds it was started with. A [`Discovery`] provider
//! answers "which gossip addresses exist now" (static seeds, every A/AAAA record
//! of a DNS name, the RUNNING tasks of an ECS service), and the [`DiscoveryWorker`] asks it
//! periodically and gossips to every address that is not yet a live member, so
//! nodes that appear later (a new task, a seed whose name starts resolving) join.
//!
//! A node must never silently serve as a cluster of one because discovery
//! failed: the worker publishes a [`DiscoveryStatus`], from which the node reports
//! not-ready while discovery is failing.

#[cfg(feature = "ecs")]
pub mod ecs;
mod worker;

use std::net::SocketAddr;

use tokio::net::lookup_host;
use tracing::warn;

pub use worker::{DiscoveryStatus, DiscoveryWorker};

/// Why discovery found nothing usable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// A seed that is not `host:port`.
    #[error("invalid seed {seed:?}: expected host:port (e.g. tessera-1:7946)")]
    InvalidSeed { seed: String },
    /// A name did not resolve (or resolved to no address).
    #[error("cannot resolve {name}: {reason}")]
    Resolve { name: String, reason: String },
    /// None of several seeds resolved.
    #[error("no seed resolved: {}", .0.iter().map(|err| err.to_string()).collect::<Vec<_>>().join("; "))]
    NoSeedResolved(Vec<DiscoveryError>),
    /// A provider's own API failed (for providers that query a service).
    #[error("{provider} discovery failed: {reason}")]
    Provider { provider: String, reason: String },
}

/// Finds peer gossip addresses.
#[async_trait::async_trait]
pub trait Discovery: Send + Sync + 'static {
    /// All peer gossip addresses this provider knows now (may include our own;
    /// the caller filters it out). An empty list is not an error: it means
    /// "alone".
    async fn discover(&self) -> Result<Vec<SocketAddr>, DiscoveryError>;
    /// What is being asked, for logs and status (e.g. "dns tessera:7946").
    fn describe(&self) -> String;
}

/// A fixed list of `host:port` seeds, resolved again on every call, so a seed
/// whose name only starts resolving later (a container not up yet) is found.
///
/// Succeeds when at least one seed resolves (the others are logged once per
/// distinct failure); fails, naming every seed and why, when none does. No
/// seeds at all is a single-node cluster: `Ok(vec![])`.
pub struct StaticDiscovery {
    seeds: Vec<String>,
    /// Last partial failure logged, so a seed that keeps failing is logged once.
    last_partial_failure: std::sync::Mutex<Option<String>>,
}

impl StaticDiscovery {
    /// Checks the shape of every seed (`host:port`, port a number) up front;
    /// empty strings are ignored.
    pub fn new(seeds: impl IntoIterator<Item = impl Into<String>>) -> Result<Self, DiscoveryError> {
        let mut checked = Vec::new();
        for seed in seeds {
            let seed: String = seed.into();
            let seed = seed.trim().to_string();
            if seed.is_empty() {
                continue;
            }
            if split_host_port(&seed).is_none() {
                return Err(DiscoveryError::InvalidSeed { seed });
            }
            checked.push(seed);
        }
        Ok(StaticDiscovery {
            seeds: checked,
            last_partial_failure: std::sync::Mutex::new(None),
        })
    }

    pub fn seeds(&self) -> &[String] {
        &self.seeds
    }
}

/// `host:port` or `[v6]:port` -> (host, port).
fn split_host_port(seed: &str) -> Option<(&str, u16)> {
    let (host, port) = seed.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || (host.contains(':') && !seed.starts_with('[')) {
        return None;
    }
    Some((host, port))
}

#[async_trait::async_trait]
impl Discovery for StaticDiscovery {
    async fn discover(&self) -> Result<Vec<SocketAddr>, DiscoveryError> {
        let mut found = Vec::new();
        let mut failures = Vec::new();
        for seed in &self.seeds {
            match resolve(seed, lookup_host(seed.as_str()).await) {
                Ok(addrs) => found.extend(addrs),
                Err(err) => failures.push(err),
            }
        }
        let partial = if failures.is_empty() {
            None
        } else if found.is_empty() {
            return Err(match failures.len() {
                1 => failures.remove(0),
                _ => DiscoveryError::NoSeedResolved(failures),
            });
        } else {
            Some(DiscoveryError::NoSeedResolved(failures).to_string())
        };
        let mut logged = self
            .last_partial_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(message) = &partial
            && logged.as_ref() != Some(message)
        {
            warn!(
                found = found.len(),
                "some static seeds do not resolve ({message})"
            );
        }
        *logged = partial;
        Ok(dedup(found))
    }

    fn describe(&self) -> String {
        format!("static seeds {}", self.seeds.join(","))
    }
}

/// Every A/AAAA record of one name, with a fixed port: docker-compose service
/// names, Kubernetes headless services, AWS Cloud Map.
pub struct DnsDiscovery {
    name: String,
    port: u16,
}

impl DnsDiscovery {
    pub fn new(name: impl Into<String>, port: u16) -> DnsDiscovery {
        DnsDiscovery {
            name: name.into(),
            port,
        }
    }
}

#[async_trait::async_trait]
impl Discovery for DnsDiscovery {
    async fn discover(&self) -> Result<Vec<SocketAddr>, DiscoveryError> {
        let shown = format!("{}:{}", self.name, self.port);
        let found = resolve(&shown, lookup_host((self.name.as_str(), self.port)).await)?;
        Ok(dedup(found))
    }

    fn describe(&self) -> String {
        format!("dns {}:{}", self.name, self.port)
    }
}

fn resolve(
    name: &str,
    result: std::io::Result<impl Iterator<Item = SocketAddr>>,
) -> Result<Vec<SocketAddr>, DiscoveryError> {
    let addrs: Vec<SocketAddr> = result
        .map_err(|err| DiscoveryError::Resolve {
            name: name.to_string(),
            reason: err.to_string(),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(DiscoveryError::Resolve {
            name: name.to_string(),
            reason: "no address".to_string(),
        });
    }
    Ok(addrs)
}

fn dedup(mut addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    addrs.sort();
    addrs.dedup();
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_must_be_host_port() {
        for good in [
            "a:1",
            "127.0.0.1:7946",
            "[::1]:7946",
            "tessera-1.local:7946",
        ] {
            assert!(split_host_port(good).is_some(), "{good}");
        }
        for bad in ["a", "a:", ":7946", "a:port", "a:70000", "::1:7946", "[]:1"] {
            assert!(split_host_port(bad).is_none(), "{bad}");
        }
        let err = StaticDiscovery::new(["ok:1", "nope"]).err().unwrap();
        assert_eq!(
            err,
            DiscoveryError::InvalidSeed {
                seed: "nope".into()
            }
        );
        assert!(err.to_string().contains("\"nope\""), "{err}");
        assert!(StaticDiscovery::new(["", " "]).unwrap().seeds().is_empty());
    }

    #[tokio::test]
    async fn static_seeds_resolve_ips_and_names() {
        let discovery = StaticDiscovery::new(["127.0.0.1:7946", "localhost:7946"]).unwrap();
        let found = discovery.discover().await.unwrap();
        let v4: SocketAddr = "127.0.0.1:7946".parse().unwrap();
        assert!(found.contains(&v4), "{found:?}");
        assert!(
            found
                .iter()
                .all(|a| a.port() == 7946 && a.ip().is_loopback())
        );
        assert_eq!(
            discovery.describe(),
            "static seeds 127.0.0.1:7946,localhost:7946"
        );
        // No seeds: alone, not an error.
        let none = StaticDiscovery::new(Vec::<String>::new()).unwrap();
        assert_eq!(none.discover().await.unwrap(), Vec::<SocketAddr>::new());
    }

    #[tokio::test]
    async fn unresolvable_seeds_are_named() {
        let discovery = StaticDiscovery::new(["no-such-host.invalid:7946"]).unwrap();
        let err = discovery.discover().await.unwrap_err();
        assert!(
            matches!(&err, DiscoveryError::Resolve { name, .. } if name == "no-such-host.invalid:7946"),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("no-such-host.invalid:7946"),
            "{err}"
        );

        // One good seed is enough; all bad names every one.
        let mixed = StaticDiscovery::new(["no-such-host.invalid:7946", "127.0.0.1:7946"]).unwrap();
        assert_eq!(
            mixed.discover().await.unwrap(),
            vec!["127.0.0.1:7946".parse::<SocketAddr>().unwrap()]
        );
        let all_bad =
            StaticDiscovery::new(["no-such-host.invalid:1", "also-missing.invalid:2"]).unwrap();
        let message = all_bad.discover().await.unwrap_err().to_string();
        assert!(
            message.contains("no-such-host.invalid:1")
                && message.contains("also-missing.invalid:2"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn dns_returns_every_record_with_the_port() {
        let discovery = DnsDiscovery::new("localhost", 7946);
        let found = discovery.discover().await.unwrap();
        assert!(!found.is_empty());
        assert!(
            found
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 7946),
            "{found:?}"
        );
        assert_eq!(discovery.describe(), "dns localhost:7946");

        let missing = DnsDiscovery::new("no-such-host.invalid", 7946);
        let err = missing.discover().await.unwrap_err();
        assert!(
            err.to_string().contains("no-such-host.invalid:7946"),
            "{err}"
        );
    }
}
