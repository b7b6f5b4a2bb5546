//! The discovery refresh job.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::{info, warn};

use super::Discovery;
use crate::membership::Membership;
use crate::worker::{Worker, WorkerState};

/// First retry delay after a failure; doubles up to the refresh interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// What discovery last found, for readiness and `tessera members`.
#[derive(Clone, Debug, PartialEq)]
pub enum DiscoveryStatus {
    /// Not asked yet.
    Starting,
    /// The last attempt worked. `peers` excludes this node; empty means the
    /// provider knows of no other node (a single-node cluster).
    Found { peers: Vec<SocketAddr> },
    /// Attempts fail since `since_ms` (ms since the Unix epoch); `last_peers` is
    /// the last good answer, still used meanwhile.
    Failing {
        error: String,
        since_ms: u64,
        last_peers: Vec<SocketAddr>,
    },
}

/// Re-runs discovery every `interval` (±20% jitter, so a fleet started together
/// does not ask in lockstep) and gossips to every discovered address that is
/// not a live member yet: new addresses at once, and again on later rounds
/// until they join (a SYN to a node not yet listening is lost). On failure it
/// keeps the last good list, retries after 1 s, 2 s, 4 s ... capped at
/// `interval`, and logs each distinct error once, not every retry.
pub struct DiscoveryWorker {
    discovery: Arc<dyn Discovery>,
    membership: Membership,
    own_gossip_addr: SocketAddr,
    interval: Duration,
    status: watch::Sender<DiscoveryStatus>,
    /// The last good answer, without our own address.
    last_peers: Vec<SocketAddr>,
    /// Consecutive failures.
    failures: u32,
    failing_since_ms: u64,
    /// The error last logged, so a repeated one is not logged again.
    logged_error: Option<String>,
    /// How many errors were logged (tests check "once per distinct error").
    errors_logged: u64,
    next_wait: Duration,
}

impl DiscoveryWorker {
    pub fn new(
        discovery: Arc<dyn Discovery>,
        membership: Membership,
        own_gossip_addr: SocketAddr,
        interval: Duration,
    ) -> (DiscoveryWorker, watch::Receiver<DiscoveryStatus>) {
        let (status, status_rx) = watch::channel(DiscoveryStatus::Starting);
        let worker = DiscoveryWorker {
            discovery,
            membership,
            own_gossip_addr,
            interval: interval.max(Duration::from_millis(1)),
            status,
            last_peers: Vec::new(),
            failures: 0,
            failing_since_ms: 0,
            logged_error: None,
            errors_logged: 0,
            next_wait: Duration::ZERO,
        };
        (worker, status_rx)
    }

    /// One discovery attempt: ask, publish the status, gossip to whoever is
    /// not a member yet, and choose the wait before the next attempt.
    async fn refresh(&mut self) {
        match self.discovery.discover().await {
            Ok(found) => {
                let mut peers: Vec<SocketAddr> = found
                    .into_iter()
                    .filter(|addr| *addr != self.own_gossip_addr)
                    .collect();
                peers.sort();
                peers.dedup();
                if self.failures > 0 {
                    info!(
                        discovery = %self.discovery.describe(),
                        failures = self.failures,
                        peers = peers.len(),
                        "discovery recovered"
                    );
                }
                self.failures = 0;
                self.logged_error = None;
                // Logged on every change, both ways, so an operator (and the
                // ECS end-to-end test) can see a stopped task leave the list.
                let added: Vec<SocketAddr> = peers
                    .iter()
                    .filter(|addr| !self.last_peers.contains(addr))
                    .copied()
                    .collect();
                let gone: Vec<SocketAddr> = self
                    .last_peers
                    .iter()
                    .filter(|addr| !peers.contains(addr))
                    .copied()
                    .collect();
                if !added.is_empty() || !gone.is_empty() {
                    info!(
                        discovery = %self.discovery.describe(),
                        added = ?added,
                        gone = ?gone,
                        peers = peers.len(),
                        "discovered peers changed"
                    );
                }
                self.last_peers = peers.clone();
                self.status.send_replace(DiscoveryStatus::Found { peers });
                self.next_wait = jittered(self.interval);
            }
            Err(err) => {
                let error = err.to_string();
                if self.failures == 0 {
                    self.failing_since_ms = now_ms();
                }
                self.failures = self.failures.saturating_add(1);
                if self.logged_error.as_deref() != Some(error.as_str()) {
                    warn!(
                        discovery = %self.discovery.describe(),
                        known_peers = self.last_peers.len(),
                        "discovery failing, keeping the last known peers and retrying: {error}"
                    );
                    self.logged_error = Some(error.clone());
                    self.errors_logged += 1;
                }
                self.status.send_replace(DiscoveryStatus::Failing {
                    error,
                    since_ms: self.failing_since_ms,
                    last_peers: self.last_peers.clone(),
                });
                self.next_wait = backoff(self.failures, self.interval);
            }
        }
        self.gossip_to_missing().await;
    }

    /// Errors logged so far (tests check "once per distinct error").
    #[cfg(test)]
    pub(crate) fn errors_logged(&self) -> u64 {
        self.errors_logged
    }

    /// The wait before the next attempt.
    #[cfg(test)]
    pub(crate) fn next_wait(&self) -> Duration {
        self.next_wait
    }

    /// Gossip to known addresses that are not live members.
    async fn gossip_to_missing(&self) {
        let members: HashSet<SocketAddr> = self
            .membership
            .live_members()
            .iter()
            .map(|member| member.gossip_addr)
            .collect();
        for addr in &self.last_peers {
            if !members.contains(addr) {
                self.membership.gossip_to(*addr).await;
            }
        }
    }
}

impl Worker for DiscoveryWorker {
    fn name(&self) -> &'static str {
        "discovery"
    }

    async fn work(&mut self) -> WorkerState {
        self.refresh().await;
        WorkerState::Idle
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.next_wait).await;
    }
}

/// 1 s, 2 s, 4 s ... after the 1st, 2nd, 3rd ... failure, never above `cap`.
fn backoff(failures: u32, cap: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    FIRST_RETRY.saturating_mul(1 << doublings).min(cap)
}

/// `interval` scaled by a random factor in [0.8, 1.2].
fn jittered(interval: Duration) -> Duration {
    let unit = getrandom::u32().map_or(0.5, |r| f64::from(r) / f64::from(u32::MAX));
    interval.mul_f64(0.8 + 0.4 * unit)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::discovery::DiscoveryError;
    use crate::membership::tests::{start_node, wait_until};

    /// Answers from a script, then repeats the last answer.
    struct Scripted {
        answers: Mutex<VecDeque<Result<Vec<SocketAddr>, DiscoveryError>>>,
    }

    impl Scripted {
        fn new(answers: Vec<Result<Vec<SocketAddr>, DiscoveryError>>) -> Arc<Scripted> {
            Arc::new(Scripted {
                answers: Mutex::new(answers.into()),
            })
        }
    }

    #[async_trait::async_trait]
    impl Discovery for Scripted {
        async fn discover(&self) -> Result<Vec<SocketAddr>, DiscoveryError> {
            let mut answers = self.answers.lock().unwrap();
            if answers.len() > 1 {
                answers.pop_front().unwrap()
            } else {
                answers.front().cloned().unwrap()
            }
        }

        fn describe(&self) -> String {
            "scripted".into()
        }
    }

    fn dns_down() -> DiscoveryError {
        DiscoveryError::Resolve {
            name: "tessera:7946".into(),
            reason: "temporary failure in name resolution".into(),
        }
    }

    #[test]
    fn backoff_doubles_from_one_second_up_to_the_interval() {
        let cap = Duration::from_secs(10);
        let waits: Vec<u64> = (1..=6).map(|n| backoff(n, cap).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff(u32::MAX, cap), cap);
        assert_eq!(
            backoff(3, Duration::from_millis(1500)),
            Duration::from_millis(1500)
        );
        for _ in 0..100 {
            let wait = jittered(Duration::from_secs(10));
            assert!(
                wait >= Duration::from_secs(8) && wait <= Duration::from_secs(12),
                "{wait:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_follows_answers_and_new_addresses_are_gossiped_to() {
        // Two nodes that know nothing of each other: only discovery joins them.
        let a = start_node("disc", "a", vec![]).await;
        let b = start_node("disc", "b", vec![]).await;
        let other: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let found = vec![a.gossip_addr(), b.gossip_addr()];
        let discovery = Scripted::new(vec![
            Ok(vec![a.gossip_addr()]),
            Err(dns_down()),
            Err(dns_down()),
            Err(DiscoveryError::Resolve {
                name: "tessera:7946".into(),
                reason: "no address".into(),
            }),
            Ok(vec![b.gossip_addr(), a.gossip_addr(), other]),
        ]);
        let interval = Duration::from_secs(30);
        let (mut worker, status) =
            DiscoveryWorker::new(discovery, a.clone(), a.gossip_addr(), interval);
        assert_eq!(*status.borrow(), DiscoveryStatus::Starting);

        // Only our own address: alone, not failing.
        worker.work().await;
        assert_eq!(*status.borrow(), DiscoveryStatus::Found { peers: vec![] });
        assert!(
            worker.next_wait() >= interval.mul_f64(0.8)
                && worker.next_wait() <= interval.mul_f64(1.2)
        );

        // Failing: the last good list is kept, the error logged once per distinct error.
        worker.work().await;
        let since = match status.borrow().clone() {
            DiscoveryStatus::Failing {
                error,
                since_ms,
                last_peers,
            } => {
                assert!(error.contains("tessera:7946"), "{error}");
                assert!(last_peers.is_empty());
                since_ms
            }
            other => panic!("expected Failing, got {other:?}"),
        };
        assert_eq!(worker.next_wait(), Duration::from_secs(1));
        worker.work().await;
        assert!(
            matches!(&*status.borrow(), DiscoveryStatus::Failing { since_ms, .. } if *since_ms == since)
        );
        assert_eq!(worker.next_wait(), Duration::from_secs(2));
        assert_eq!(worker.errors_logged(), 1, "the same error is logged once");
        worker.work().await;
        assert_eq!(worker.errors_logged(), 2, "a different error is logged");
        assert_eq!(worker.next_wait(), Duration::from_secs(4));

        // Recovered: b is new, so a gossips to it and they join.
        worker.work().await;
        let mut expected = vec![b.gossip_addr(), other];
        expected.sort();
        assert_eq!(
            *status.borrow(),
            DiscoveryStatus::Found {
                peers: expected.clone()
            }
        );
        wait_until("a and b see each other", Duration::from_secs(10), || {
            a.live_members().len() == 2 && b.live_members().len() == 2
        })
        .await;

        // Failing again keeps the recovered list.
        let discovery = Scripted::new(vec![Ok(found.clone()), Err(dns_down())]);
        let (mut worker, status) =
            DiscoveryWorker::new(discovery, a.clone(), a.gossip_addr(), interval);
        worker.work().await;
        worker.work().await;
        assert!(
            matches!(&*status.borrow(), DiscoveryStatus::Failing { last_peers, .. } if *last_peers == vec![b.gossip_addr()]),
            "{:?}",
            status.borrow()
        );
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spawned_worker_joins_a_node_and_stops() {
        let a = start_node("spawn", "a", vec![]).await;
        let b = start_node("spawn", "b", vec![]).await;
        let discovery = Arc::new(
            crate::discovery::StaticDiscovery::new([b.gossip_addr().to_string()]).unwrap(),
        );
        let (worker, mut status) = DiscoveryWorker::new(
            discovery,
            a.clone(),
            a.gossip_addr(),
            Duration::from_secs(30),
        );
        let shutdown = crate::worker::Shutdown::new();
        let job = crate::worker::spawn(worker, &shutdown);
        tokio::time::timeout(
            Duration::from_secs(10),
            status.wait_for(|s| matches!(s, DiscoveryStatus::Found { .. })),
        )
        .await
        .expect("discovery ran")
        .unwrap();
        wait_until("a and b see each other", Duration::from_secs(10), || {
            a.live_members().len() == 2 && b.live_members().len() == 2
        })
        .await;
        shutdown.stop();
        tokio::time::timeout(Duration::from_secs(5), job)
            .await
            .expect("worker stopped")
            .unwrap();
        a.shutdown().await;
        b.shutdown().await;
    }
}
