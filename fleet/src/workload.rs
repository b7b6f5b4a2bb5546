//! A CAS-like load and its history. Each virtual user logs in (a TGT with a
//! principal), visits services (an ST per visit, child of the TGT, validated
//! once through a *different* node than the one that issued it, and a touch of
//! the TGT) and sometimes logs out (delete of the TGT, cascading). Every
//! acknowledged operation is recorded; [`History::check`] then asks each node
//! directly what it holds.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use tessera_client::{Client, Error, NewTicket};
use tokio::task::JoinHandle;

use crate::Fleet;

/// Visits per session, then a logout every [`LOGOUT_EVERY`] sessions.
const VISITS: usize = 3;
const LOGOUT_EVERY: usize = 3;
/// Pause between a user's operations: a steady load (about 300 ops/s with 9
/// users) that leaves the 2-core machine, which runs three nodes, Docker and
/// the driver at once, some headroom. At 5 ms the cores were saturated and
/// every timer ran late, failure detection included: that measures the
/// machine, not the cluster.
const THINK: Duration = Duration::from_millis(20);
/// Lookups in flight while checking.
const CHECK_CONCURRENCY: usize = 32;

/// Which nodes a user talks to, in failover order.
#[derive(Clone, Debug)]
pub struct User {
    /// Where tickets are created, touched and deleted.
    pub issuer: Vec<u8>,
    /// Where service tickets are validated.
    pub validator: Vec<u8>,
}

impl User {
    /// `count` users spread over `nodes`: user i issues through node i and
    /// validates through the next one, failing over to the rest.
    pub fn spread(count: usize, nodes: &[u8]) -> Vec<User> {
        let rotated = |start: usize| -> Vec<u8> {
            (0..nodes.len())
                .map(|k| nodes[(start + k) % nodes.len()])
                .collect()
        };
        (0..count)
            .map(|i| User {
                issuer: rotated(i),
                validator: rotated(i + 1),
            })
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TgtState {
    /// Put acknowledged, no delete attempted.
    Live,
    /// Delete acknowledged.
    Deleted,
    /// A put or delete failed: the outcome is unknown, so it is not checked.
    Unknown,
}

/// An operation that returned an error.
#[derive(Clone, Debug)]
pub struct FailedOp {
    pub op: &'static str,
    pub started: Instant,
    pub error: String,
}

#[derive(Default)]
struct Record {
    acknowledged: u64,
    tgts: HashMap<String, TgtState>,
    /// Successful consumes per service ticket.
    consumed: HashMap<String, u32>,
    failures: Vec<FailedOp>,
    /// Writes (puts, consumes, touches, deletes) refused with UNAVAILABLE: a
    /// minority refusing to acknowledge or decide.
    writes_refused: u64,
}

/// Everything the load saw, shared by its users.
#[derive(Default)]
pub struct History {
    record: Mutex<Record>,
}

/// What a check found on the nodes it asked.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub acknowledged: u64,
    /// Live TGTs (acknowledged put, no delete) missing on some node.
    pub lost: u64,
    /// Deleted TGTs, or consumed single-use STs, found live on some node.
    pub resurrected: u64,
    /// Single-use STs whose consume succeeded more than once.
    pub double_consumed: u64,
    pub failures: u64,
    pub writes_refused: u64,
    /// A few examples of what went wrong, for the failure message.
    pub examples: Vec<String>,
}

impl Report {
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.resurrected == 0 && self.double_consumed == 0
    }
}

impl History {
    fn with<R>(&self, f: impl FnOnce(&mut Record) -> R) -> R {
        f(&mut self.record.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Runs one call and records how it ended: acknowledged, or failed with
    /// the time it started (the future does nothing before it is awaited here).
    async fn record<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, Error>>,
    ) -> Option<T> {
        let started = Instant::now();
        match call.await {
            Ok(answer) => {
                self.with(|r| r.acknowledged += 1);
                Some(answer)
            }
            Err(error) => {
                self.with(|r| {
                    if matches!(error, Error::Unavailable(_)) {
                        r.writes_refused += 1;
                    }
                    r.failures.push(FailedOp {
                        op,
                        started,
                        error: error.to_string(),
                    });
                });
                None
            }
        }
    }

    /// Deletes a TGT through `client` and records its fate: deleted if the
    /// delete was acknowledged, unknown otherwise.
    async fn logout(&self, client: &Client, tgt: &str) -> bool {
        let done = self.record("delete", client.delete(tgt)).await.is_some();
        let state = if done {
            TgtState::Deleted
        } else {
            TgtState::Unknown
        };
        self.with(|r| r.tgts.insert(tgt.to_owned(), state));
        done
    }

    pub fn failures(&self) -> Vec<FailedOp> {
        self.with(|r| r.failures.clone())
    }

    pub fn acknowledged(&self) -> u64 {
        self.with(|r| r.acknowledged)
    }

    pub fn writes_refused(&self) -> u64 {
        self.with(|r| r.writes_refused)
    }

    /// Asks every node in `nodes` directly (no failover) about every ticket
    /// the history knows the fate of.
    pub async fn check(&self, fleet: &Fleet, nodes: &[u8]) -> anyhow::Result<Report> {
        let (tgts, consumed, mut report) = self.with(|r| {
            (
                r.tgts.clone(),
                r.consumed.clone(),
                Report {
                    acknowledged: r.acknowledged,
                    failures: r.failures.len() as u64,
                    writes_refused: r.writes_refused,
                    ..Report::default()
                },
            )
        });
        report.double_consumed = consumed.values().filter(|n| **n > 1).count() as u64;
        // (id, must be live) for every ticket whose fate is known.
        let mut expectations: Vec<(String, bool)> = tgts
            .iter()
            .filter_map(|(id, state)| match state {
                TgtState::Live => Some((id.clone(), true)),
                TgtState::Deleted => Some((id.clone(), false)),
                TgtState::Unknown => None,
            })
            .collect();
        expectations.extend(consumed.keys().map(|id| (id.clone(), false)));
        for node in nodes {
            let client = fleet.client(&[*node], Duration::from_secs(10)).await?;
            let answers: Vec<(String, bool, Result<bool, Error>)> =
                stream::iter(expectations.iter().cloned())
                    .map(|(id, live)| {
                        let client = client.clone();
                        async move {
                            let found = match client.get(&id).await {
                                Ok(_) => Ok(true),
                                Err(e) if e.is_not_found() => Ok(false),
                                Err(e) => Err(e),
                            };
                            (id, live, found)
                        }
                    })
                    .buffer_unordered(CHECK_CONCURRENCY)
                    .collect()
                    .await;
            for (id, should_live, found) in answers {
                let found = found.map_err(|e| anyhow::anyhow!("node{node}: get {id}: {e}"))?;
                if should_live && !found {
                    report.lost += 1;
                } else if !should_live && found {
                    report.resurrected += 1;
                } else {
                    continue;
                }
                if report.examples.len() < 5 {
                    let what = if should_live { "lost" } else { "resurrected" };
                    report.examples.push(format!("node{node}: {id} {what}"));
                }
            }
        }
        Ok(report)
    }

    /// Checks until the nodes agree with the history (or `limit` passes);
    /// returns how long that took and the last report.
    pub async fn converge(
        &self,
        fleet: &Fleet,
        nodes: &[u8],
        limit: Duration,
    ) -> anyhow::Result<(Duration, Report)> {
        let start = Instant::now();
        loop {
            let report = self.check(fleet, nodes).await?;
            if report.clean() || start.elapsed() > limit {
                return Ok((start.elapsed(), report));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// A running load: users loop until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    users: Vec<JoinHandle<()>>,
    pub history: Arc<History>,
}

impl Load {
    /// Starts one task per user. `tag` keeps ticket ids of scenarios apart;
    /// `history` may be shared by several loads (e.g. both sides of a
    /// partition).
    pub async fn start(
        fleet: &Fleet,
        users: &[User],
        tag: &str,
        history: Arc<History>,
    ) -> anyhow::Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (index, user) in users.iter().enumerate() {
            // Short timeouts: a call to a node that vanished fails (or fails
            // over) quickly instead of stalling the user.
            let issuer = fleet.client(&user.issuer, Duration::from_secs(3)).await?;
            let validator = fleet
                .client(&user.validator, Duration::from_secs(3))
                .await?;
            let session = Session {
                issuer,
                validator,
                history: history.clone(),
                principal: format!("{tag}-user{index}"),
            };
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    session.run(n, &stop).await;
                    n += 1;
                }
            }));
        }
        Ok(Load {
            stop,
            users: tasks,
            history,
        })
    }

    /// Stops every user after its current operation and waits for them.
    pub async fn stop(self) -> Arc<History> {
        self.stop.store(true, Ordering::Relaxed);
        for user in self.users {
            let _ = user.await;
        }
        self.history
    }
}

struct Session {
    issuer: Client,
    validator: Client,
    history: Arc<History>,
    principal: String,
}

impl Session {
    async fn run(&self, n: usize, stop: &AtomicBool) {
        let tgt = format!("TGT-{}-{n}", self.principal);
        let put = NewTicket::new(tgt.clone(), Duration::from_secs(3600))
            .kind("TGT")
            .principal(self.principal.clone())
            .payload(vec![b't'; 512]);
        let state = match self.history.record("put", self.issuer.put(put)).await {
            Some(_) => TgtState::Live,
            None => TgtState::Unknown,
        };
        self.history.with(|r| r.tgts.insert(tgt.clone(), state));
        if state != TgtState::Live {
            return;
        }
        for visit in 0..VISITS {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            tokio::time::sleep(THINK).await;
            let st = format!("ST-{}-{n}-{visit}", self.principal);
            let put = NewTicket::new(st.clone(), Duration::from_secs(600))
                .kind("ST")
                .parent(tgt.clone())
                .max_uses(1)
                .payload(vec![b's'; 200]);
            if self
                .history
                .record("put", self.issuer.put(put))
                .await
                .is_none()
            {
                continue;
            }
            let consumed = self.validator.consume(&st);
            if self.history.record("consume", consumed).await.is_some() {
                self.history
                    .with(|r| *r.consumed.entry(st.clone()).or_default() += 1);
            }
            self.history.record("touch", self.issuer.touch(&tgt)).await;
        }
        if n % LOGOUT_EVERY == LOGOUT_EVERY - 1 {
            self.history.logout(&self.issuer, &tgt).await;
        }
    }
}

/// Most single-use tickets one [`Race`] puts (it is also stopped by time).
const MAX_RACES: u64 = 20_000;

/// Single-use tickets raced through every node at once: each is put once,
/// then consumed at the same moment through one client per node (no
/// failover). More than one success is a double consume, which the history's
/// check counts; every ticket consumed must be dead on every node after.
pub struct Race {
    stop: Arc<AtomicBool>,
    task: JoinHandle<RaceReport>,
}

/// What a race saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct RaceReport {
    /// Tickets put and raced.
    pub raced: u64,
    /// Tickets exactly one racer consumed.
    pub won_once: u64,
    /// Tickets no racer consumed (every racer refused, e.g. during a restart).
    pub won_never: u64,
}

impl Race {
    pub async fn start(
        fleet: &Fleet,
        nodes: &[u8],
        tag: &str,
        history: Arc<History>,
    ) -> anyhow::Result<Race> {
        let writer = fleet.client(nodes, Duration::from_secs(3)).await?;
        let mut racers = Vec::new();
        for node in nodes {
            racers.push(fleet.client(&[*node], Duration::from_secs(3)).await?);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let tag = tag.to_owned();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut report = RaceReport::default();
                while !stop.load(Ordering::Relaxed) && report.raced < MAX_RACES {
                    tokio::time::sleep(THINK).await;
                    let st = format!("ST-race-{tag}-{}", report.raced);
                    report.raced += 1;
                    let put = NewTicket::new(st.clone(), Duration::from_secs(600))
                        .kind("ST")
                        .max_uses(1)
                        .payload(vec![b's'; 200]);
                    if history.record("put", writer.put(put)).await.is_none() {
                        continue;
                    }
                    let outcomes =
                        futures::future::join_all(racers.iter().map(|c| c.consume(&st))).await;
                    let won = outcomes.iter().filter(|o| o.is_ok()).count() as u32;
                    match won {
                        0 => report.won_never += 1,
                        1 => report.won_once += 1,
                        _ => {}
                    }
                    if won > 0 {
                        history.with(|r| {
                            r.acknowledged += u64::from(won);
                            r.consumed.insert(st, won);
                        });
                    }
                }
                report
            }
        });
        Ok(Race { stop, task })
    }

    pub async fn stop(self) -> RaceReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// Logs out sessions through `client` (the majority side of a partition):
/// deletes up to `count` live TGTs of the history and records them.
pub async fn logout_some(history: &History, client: &Client, count: usize) -> usize {
    let live: Vec<String> = history.with(|r| {
        r.tgts
            .iter()
            .filter(|(_, s)| **s == TgtState::Live)
            .map(|(id, _)| id.clone())
            .take(count)
            .collect()
    });
    let mut done = 0;
    for tgt in live {
        done += usize::from(history.logout(client, &tgt).await);
    }
    done
}
