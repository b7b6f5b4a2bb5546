//! Anti-entropy: repairs what pushes missed (a peer was down, partitioned, or
//! restarted empty). Every few seconds a node compares its 256 bucket digests
//! with one live peer's and exchanges the entries of the buckets that differ,
//! both ways. A node that joins or returns runs the same sync in bulk before it
//! reports ready.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream;
use prost::Message as _;
use tessera_proto::peer::peer_frame::Body;
use tessera_proto::peer::{BucketDigests, BucketSync};
use tracing::{debug, info};

use super::Replicator;
use super::wire::to_record;
use crate::peer::{NodeId, PeerError, PeerNetwork};
use crate::worker::{Worker, WorkerState};

/// Buckets synced concurrently with one peer. Two keep the pipe busy (one
/// bucket travels while the other is merged); more only queue on the one
/// connection, where a call waits behind every bucket ahead of it: with 8 of
/// ~4.7 MB (1 M tickets of 1 KB) calls outlived the call timeout and whole
/// rounds were lost.
const SYNC_CONCURRENCY: usize = 2;

/// Encoded entries per page of a bucket sync, each way. A bucket of 1 M
/// tickets of 1 KB is ~4.5 MB, and sent whole it passed the peer frame limit
/// (8 MiB by default) near 1.9 M tickets: that bucket then never synced and a
/// restarted node never caught up. A page is at most this plus one record,
/// well inside the limit (at least 4 MiB plus 4 times the largest payload).
pub const SYNC_PAGE_BYTES: usize = 1024 * 1024;

/// What one sync with a peer found and moved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub buckets_differing: usize,
    pub entries_sent: usize,
    pub entries_received: usize,
    /// Bucket sync round trips.
    pub pages: usize,
}

impl Replicator {
    /// Compare digests with `peer` and exchange the entries of differing buckets.
    pub async fn sync_with(&self, peer: &NodeId) -> Result<SyncReport, PeerError> {
        let network = self
            .network()
            .cloned()
            .ok_or_else(|| PeerError::Unreachable(peer.to_string(), "no network".into()))?;
        let mine = self.store().digests();
        let reply = network
            .call(
                peer,
                Body::Digests(BucketDigests {
                    digests: mine.clone(),
                    entries: self.store().records() as u64,
                }),
            )
            .await?;
        let Body::DigestsReply(theirs) = reply else {
            return Err(PeerError::Protocol(
                peer.to_string(),
                "digests answered with something else".into(),
            ));
        };
        if theirs.digests.len() != mine.len() {
            return Err(PeerError::Protocol(
                peer.to_string(),
                format!(
                    "{} bucket digests, expected {}",
                    theirs.digests.len(),
                    mine.len()
                ),
            ));
        }
        let differing: Vec<usize> = (0..mine.len())
            .filter(|&b| mine[b] != theirs.digests[b])
            .collect();
        let mut report = SyncReport {
            buckets_differing: differing.len(),
            ..SyncReport::default()
        };
        let mut results = stream::iter(differing)
            .map(|bucket| self.sync_bucket(&network, peer, bucket))
            .buffer_unordered(SYNC_CONCURRENCY);
        // A bucket that failed does not stop the others: what they bring is
        // merged, and the round still fails (the next one retries the rest).
        let mut failed = None;
        while let Some(result) = results.next().await {
            match result {
                Ok(moved) => {
                    report.entries_sent += moved.entries_sent;
                    report.entries_received += moved.entries_received;
                    report.pages += moved.pages;
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        self.stats.note_sync(&report, failed.is_none());
        match failed {
            Some(e) => Err(e),
            None => {
                self.note_synced(peer);
                Ok(report)
            }
        }
    }

    /// Exchange one bucket with `peer`, a page at a time each way: each
    /// request carries the next page of ours and asks for the next page of
    /// theirs, until neither side has more. An older peer ignores the cursor
    /// and answers its whole bucket every time (merging it again is harmless).
    async fn sync_bucket(
        &self,
        network: &Arc<dyn PeerNetwork>,
        peer: &NodeId,
        bucket: usize,
    ) -> Result<SyncReport, PeerError> {
        let page_bytes = self.config.sync_page_bytes;
        let mut moved = SyncReport::default();
        let (mut ours_after, mut ours_more) = (String::new(), true);
        let (mut theirs_after, mut theirs_more) = (String::new(), true);
        while ours_more || theirs_more {
            let (entries, more) = if ours_more {
                self.store()
                    .bucket_page(bucket, &ours_after, page_bytes, to_record, |record| {
                        record.encoded_len()
                    })
            } else {
                (Vec::new(), false)
            };
            if let Some(last) = entries.last() {
                ours_after.clone_from(&last.id);
            }
            ours_more = more;
            moved.entries_sent += entries.len();
            moved.pages += 1;
            let reply = network
                .call(
                    peer,
                    Body::BucketSync(BucketSync {
                        buckets: vec![bucket as u32],
                        entries,
                        after: Some(theirs_after.clone()),
                    }),
                )
                .await?;
            let Body::Entries(page) = reply else {
                return Err(PeerError::Protocol(
                    peer.to_string(),
                    "bucket sync answered with something else".into(),
                ));
            };
            match page.entries.last() {
                // An empty page with `more` would ask for the same page forever.
                Some(last) => {
                    theirs_after.clone_from(&last.id);
                    theirs_more = page.more;
                }
                None => theirs_more = false,
            }
            moved.entries_received += self.apply_records(page.entries).await.unwrap_or(0);
        }
        Ok(moved)
    }
}

/// The anti-entropy worker of one node.
pub struct AntiEntropy {
    replicator: Arc<Replicator>,
    interval: Duration,
    /// Round-robin position over the live peers.
    next_peer: usize,
}

impl AntiEntropy {
    pub fn new(replicator: Arc<Replicator>, interval: Duration) -> AntiEntropy {
        AntiEntropy {
            replicator,
            interval,
            next_peer: 0,
        }
    }
}

impl Worker for AntiEntropy {
    fn name(&self) -> &'static str {
        "anti-entropy"
    }

    async fn work(&mut self) -> WorkerState {
        let caught_up = self.replicator.caught_up();
        let peers = self.replicator.anti_entropy_peers(caught_up);
        if peers.is_empty() {
            return WorkerState::Idle;
        }
        let peer = peers[self.next_peer % peers.len()].clone();
        self.next_peer = self.next_peer.wrapping_add(1);
        match self.replicator.sync_with(&peer).await {
            Ok(report) => {
                if report.buckets_differing > 0 {
                    info!(
                        peer = %peer,
                        buckets = report.buckets_differing,
                        sent = report.entries_sent,
                        received = report.entries_received,
                        "anti-entropy repaired differences"
                    );
                }
            }
            Err(e) => debug!(peer = %peer, error = %e, "anti-entropy round failed"),
        }
        WorkerState::Idle
    }

    async fn wait_for_work(&mut self) {
        // ±25% jitter so a fleet does not sync in lockstep.
        let jitter = (rand_fraction() - 0.5) * 0.5;
        let wait = self.interval.mul_f64(1.0 + jitter);
        if self.replicator.caught_up() {
            tokio::time::sleep(wait).await;
        } else {
            // Not caught up yet: retry soon.
            tokio::time::sleep(wait.min(Duration::from_millis(200))).await;
        }
    }
}

/// A number in [0, 1) from the OS's randomness (0.5 if unavailable).
fn rand_fraction() -> f64 {
    let mut bytes = [0u8; 4];
    match getrandom::fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}
