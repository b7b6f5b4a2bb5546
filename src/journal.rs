//! The journal: what makes tickets survive a restart (`--data-dir`).
//!
//! Memory stays the store; the disk holds a log of what the node merged and
//! of the votes it cast, in versioned protobuf records (`JournalRecord`: the
//! `EntryRecord`s the peers exchange, and `SlotVotes`), so a newer version
//! reads an older directory. Entries are CRDT states, and a slot's votes only
//! grow (a promise only rises, an accepted ballot only rises), so replaying
//! records in any order, twice, or on top of a snapshot taken while writes
//! went on, ends in the same state: that is what lets snapshots be taken from
//! the live maps without stopping writes.
//!
//! Files in the data directory:
//! - `tessera-data.toml`: the directory's format, the cluster it belongs to
//!   (an id derived from the cluster secret) and from when its votes are all
//!   in the log. A directory of another cluster, or of a newer format, is
//!   refused.
//! - `LOCK`: held (an advisory file lock) by the one process using it.
//! - `log-<seq>.tlog`: segments, appended in order. A record is
//!   `[u32 length][u32 crc32 of the bytes][JournalRecord bytes]`, little endian.
//! - `snapshot-<seq>.tsnap`: every entry and vote, in the same framing,
//!   written after segment `<seq>` was opened: replay loads the newest
//!   snapshot, then the segments from `<seq>` on.
//!
//! A write is acknowledged only after its records are written: with
//! `everysec` and `no` by the call itself, one `write` into the OS (a killed
//! process loses nothing; a crashed machine up to about a second with
//! `everysec`, whose syncer thread syncs once a second); with `always` by the
//! syncer thread, which commits in groups: everything queued in one `write`
//! and one sync, then every waiter answered at once. Votes go through the
//! syncer whatever the policy: a vote is a promise, answered only once it
//! is on disk.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use tessera_proto::journal::{JournalRecord, SlotVotes, journal_record};
use tessera_proto::peer::EntryRecord;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::config::MAX_PAYLOAD_LIMIT;
use crate::entry::Entry;
use crate::replication::wire::{from_record, to_record};
use crate::replication::{Replicator, votes};
use crate::store::digest::BUCKETS;
use crate::worker::{Worker, WorkerState};

/// The largest record a reader accepts: a payload at the largest limit plus
/// room for its fields. A length above it is corruption, not a record.
const MAX_RECORD: usize = MAX_PAYLOAD_LIMIT + 64 * 1024;
/// Bytes of a record's header: length and checksum.
const HEADER: usize = 8;
/// How often `everysec` syncs.
const EVERYSEC: Duration = Duration::from_secs(1);
/// The file that says what the directory is.
const META: &str = "tessera-data.toml";
/// The format this version writes and the newest it reads.
const FORMAT: u32 = 1;
/// The file whose lock keeps a second process out.
const LOCK: &str = "LOCK";

/// When the log is synced to disk (Redis's `appendfsync`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// Before every acknowledgement (group-committed across concurrent calls).
    Always,
    /// Once a second: a crash of the machine loses up to about a second of
    /// acknowledged writes; a crash of the process loses none.
    #[default]
    Everysec,
    /// Left to the OS.
    No,
}

impl FromStr for SyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<SyncPolicy, String> {
        match s {
            "always" => Ok(SyncPolicy::Always),
            "everysec" => Ok(SyncPolicy::Everysec),
            "no" => Ok(SyncPolicy::No),
            other => Err(format!(
                "unknown sync policy {other:?} (always, everysec or no)"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("data directory {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(
        "data directory {path} can be read by other users (mode {mode:o}); it holds credentials: chmod 700 it"
    )]
    NotPrivate { path: String, mode: u32 },
    #[error(
        "{path}: corrupt record at offset {offset}: {why}; refusing to start rather than lose what follows"
    )]
    Corrupt {
        path: String,
        offset: u64,
        why: String,
    },
    #[error(
        "{path}: the data directory is of format {format}, newer than this Tessera reads ({FORMAT}); run a newer version, or move the directory away to start empty"
    )]
    NewerFormat { path: String, format: u32 },
    #[error(
        "{path}: the data directory belongs to another cluster (cluster id {found}, this node's is {expected}: a different cluster secret); refusing to merge its tickets"
    )]
    OtherCluster {
        path: String,
        found: String,
        expected: String,
    },
    #[error("{path}: unreadable: {why}")]
    BadMeta { path: String, why: String },
    #[error(
        "data directory {path} holds journal files but no {META}: not written by this Tessera; refusing to guess"
    )]
    NoMeta { path: String },
    #[error("data directory {path} is in use by another process (its LOCK is held)")]
    InUse { path: String },
    #[error("the journal's writer has stopped")]
    Stopped,
}

/// `tessera-data.toml`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Meta {
    format: u32,
    /// The cluster id derived from the cluster secret (`none` without one).
    cluster: String,
    /// From when every vote this node cast is in the log: the moment it
    /// first caught up with its cluster on this directory (rule R3 of
    /// `replication::votes`). Absent until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    votes_from_ms: Option<u64>,
}

/// A record to append: a ticket entry or one slot's votes.
#[derive(Clone, Copy)]
pub enum Record<'a> {
    Entry(&'a EntryRecord),
    Votes(&'a SlotVotes),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The segment being appended to.
struct Segment {
    file: File,
    seq: u64,
    /// Written since the last sync.
    dirty: bool,
}

/// How the syncer tells an `always` append that its group is synced.
type Synced = oneshot::Sender<Result<(), String>>;
/// An `always` append: its framed records, and who waits for their sync.
type Commit = (Vec<u8>, Synced);

/// The open journal of a data directory.
pub struct Journal {
    dir: PathBuf,
    policy: SyncPolicy,
    segment: Arc<Mutex<Segment>>,
    /// Framed records for the syncer thread, which commits them in groups
    /// (one write and one sync for everything queued): every record with
    /// `always`, votes with any policy.
    commits: mpsc::Sender<Commit>,
    meta: Mutex<Meta>,
    /// Held open for its lock, released when the process ends.
    _lock: File,
}

/// What [`Journal::open`] read back from the directory.
pub struct Replayed {
    /// Every entry read back, checked as a peer's would be, in order.
    pub entries: Vec<(Arc<str>, Entry)>,
    /// Every slot's votes read back, checked, in order.
    pub votes: Vec<votes::RestoredVotes>,
    /// A torn record cut off the end of the last segment (a crash mid-write).
    pub cut_bytes: u64,
}

/// The sync of records handed to the syncer thread, to wait for.
#[must_use = "a vote is answered only once it is on disk"]
pub struct Durable(Option<oneshot::Receiver<Result<(), String>>>);

impl Durable {
    /// Nothing to wait for (no journal).
    pub fn ready() -> Durable {
        Durable(None)
    }

    /// Wait until the records are on disk.
    pub async fn wait(self) -> Result<(), JournalError> {
        let Some(synced) = self.0 else {
            return Ok(());
        };
        match synced.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(JournalError::Io {
                path: "the journal".to_owned(),
                source: io::Error::other(why),
            }),
            Err(_) => Err(JournalError::Stopped),
        }
    }
}

impl Journal {
    /// Open (or create) `dir` for the cluster whose id is `cluster`, read
    /// back the newest snapshot and the segments after it, and start
    /// appending to a fresh segment.
    pub fn open(
        dir: &Path,
        policy: SyncPolicy,
        cluster: &str,
    ) -> Result<(Journal, Replayed), JournalError> {
        create_private_dir(dir)?;
        check_private(dir)?;
        let lock = lock_dir(dir)?;
        let (snapshots, segments) = list(dir)?;
        let meta = read_meta(dir, cluster, !snapshots.is_empty() || !segments.is_empty())?;
        let mut replayed = Replayed {
            entries: Vec::new(),
            votes: Vec::new(),
            cut_bytes: 0,
        };
        let from = snapshots.last().copied().unwrap_or(0);
        if let Some(seq) = snapshots.last() {
            let path = dir.join(snapshot_name(*seq));
            read_records(&path, false, &mut replayed)?;
        }
        let segments: Vec<u64> = segments.into_iter().filter(|seq| *seq >= from).collect();
        for (n, seq) in segments.iter().enumerate() {
            let last = n + 1 == segments.len();
            read_records(&dir.join(segment_name(*seq)), last, &mut replayed)?;
        }
        let next = segments.last().map_or(from, |seq| seq + 1).max(1);
        let segment = Arc::new(Mutex::new(Segment {
            file: create_segment(dir, next)?,
            seq: next,
            dirty: false,
        }));
        let (commits, queue) = mpsc::channel();
        let syncer = segment.clone();
        std::thread::Builder::new()
            .name("tessera-journal".into())
            .spawn(move || run_syncer(&syncer, policy, &queue))
            .map_err(io_error(dir))?;
        info!(
            dir = %dir.display(),
            entries = replayed.entries.len(),
            votes = replayed.votes.len(),
            segment = next,
            ?policy,
            "journal opened"
        );
        Ok((
            Journal {
                dir: dir.to_owned(),
                policy,
                segment,
                commits,
                meta: Mutex::new(meta),
                _lock: lock,
            },
            replayed,
        ))
    }

    /// From when every vote this node cast is in the log, if known.
    pub fn votes_from_ms(&self) -> Option<u64> {
        self.meta
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .votes_from_ms
    }

    /// Record that every vote from `ms` on is in the log (once, at the first
    /// catch-up on this directory).
    pub fn remember_votes_from(&self, ms: u64) -> Result<(), JournalError> {
        let mut meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
        if meta.votes_from_ms.is_some() {
            return Ok(());
        }
        let mut updated = meta.clone();
        updated.votes_from_ms = Some(ms);
        write_meta(&self.dir, &updated)?;
        *meta = updated;
        Ok(())
    }

    /// Hand `votes` to the syncer thread, whatever the policy, and return
    /// the sync to wait for before answering. Called under the vote book's
    /// lock, so the log holds a slot's records in the order the book changed
    /// (the order does not matter for replay, which keeps the highest, but
    /// every later answer waits behind this sync). No votes: a barrier that
    /// completes once everything handed over before it is on disk.
    pub fn commit_votes(&self, votes: &[SlotVotes]) -> Durable {
        let mut framed = Vec::new();
        for record in votes {
            frame(Record::Votes(record), &mut framed);
        }
        self.hand_to_syncer(framed)
    }

    /// Queue `framed` for the syncer thread's next group. If the syncer is
    /// gone, `done` is dropped with the message and the wait reports
    /// [`JournalError::Stopped`].
    fn hand_to_syncer(&self, framed: Vec<u8>) -> Durable {
        let (done, synced) = oneshot::channel();
        let _ = self.commits.send((framed, done));
        Durable(Some(synced))
    }

    /// Append `records`, as durably as the policy says before this returns:
    /// `everysec` and `no` write them here (one `write` into the OS, a few
    /// microseconds: no thread hand-off on every write), `always` hands them
    /// to the syncer thread and waits for its group's sync.
    pub async fn append(&self, records: &[EntryRecord]) -> Result<(), JournalError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut framed = Vec::with_capacity(
            records
                .iter()
                .map(|r| prost::encoding::message::encoded_len(1, r) + HEADER)
                .sum(),
        );
        for record in records {
            frame(Record::Entry(record), &mut framed);
        }
        if self.policy != SyncPolicy::Always {
            let mut segment = lock(&self.segment);
            segment
                .file
                .write_all(&framed)
                .map_err(io_error(&self.dir))?;
            segment.dirty = true;
            return Ok(());
        }
        self.hand_to_syncer(framed).wait().await
    }

    /// Open the next segment and return its sequence number: a snapshot
    /// taken after this holds every record of the older segments (each was
    /// merged into the store before it was appended). Blocking (it syncs
    /// the segment it closes): run it off the async threads.
    pub fn rotate(&self) -> Result<u64, JournalError> {
        let mut segment = lock(&self.segment);
        segment.file.sync_data().map_err(io_error(&self.dir))?;
        let seq = segment.seq + 1;
        segment.file = create_segment(&self.dir, seq)?;
        segment.seq = seq;
        segment.dirty = false;
        Ok(seq)
    }

    /// Write snapshot `seq` (from [`Journal::rotate`]) of every record
    /// `records` yields, then drop the segments and snapshots it replaces.
    /// Blocking: run it off the async threads.
    pub fn write_snapshot(
        &self,
        seq: u64,
        records: impl FnOnce(&mut dyn FnMut(Record)),
    ) -> Result<u64, JournalError> {
        let tmp = self.dir.join(format!("{}.tmp", snapshot_name(seq)));
        let path = self.dir.join(snapshot_name(seq));
        let mut out = io::BufWriter::new(create_private(&tmp)?);
        let mut buf = Vec::new();
        let mut failed = None;
        let mut count = 0u64;
        records(&mut |record| {
            if failed.is_some() {
                return;
            }
            buf.clear();
            frame(record, &mut buf);
            count += 1;
            if let Err(e) = out.write_all(&buf) {
                failed = Some(e);
            }
        });
        if let Some(e) = failed {
            return Err(io_error(&tmp)(e));
        }
        let file = out
            .into_inner()
            .map_err(|e| io_error(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io_error(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_error(&path))?;
        sync_dir(&self.dir)?;
        let (snapshots, segments) = list(&self.dir)?;
        for old in snapshots.into_iter().filter(|s| *s < seq) {
            let _ = fs::remove_file(self.dir.join(snapshot_name(old)));
        }
        for old in segments.into_iter().filter(|s| *s < seq) {
            let _ = fs::remove_file(self.dir.join(segment_name(old)));
        }
        info!(records = count, snapshot = seq, "journal snapshot written");
        Ok(count)
    }

    /// Bytes of the newest snapshot.
    pub fn snapshot_bytes(&self) -> u64 {
        list(&self.dir)
            .ok()
            .and_then(|(snapshots, _)| snapshots.last().copied())
            .and_then(|seq| fs::metadata(self.dir.join(snapshot_name(seq))).ok())
            .map_or(0, |meta| meta.len())
    }

    /// Bytes in the segments (what a snapshot would fold away).
    pub fn log_bytes(&self) -> u64 {
        list(&self.dir).map_or(0, |(_, segments)| {
            segments
                .iter()
                .filter_map(|seq| fs::metadata(self.dir.join(segment_name(*seq))).ok())
                .map(|meta| meta.len())
                .sum()
        })
    }
}

fn lock(segment: &Mutex<Segment>) -> std::sync::MutexGuard<'_, Segment> {
    segment.lock().unwrap_or_else(|e| e.into_inner())
}

/// The syncer thread. `always`: take every commit queued, write them with
/// one `write`, sync once, answer them all (group commit). `everysec`: sync
/// once a second when something was written. It stops when the journal is
/// dropped, syncing what is left.
fn run_syncer(segment: &Mutex<Segment>, policy: SyncPolicy, queue: &mpsc::Receiver<Commit>) {
    let mut last_sync = Instant::now();
    loop {
        let first = match queue.recv_timeout(EVERYSEC) {
            Ok(commit) => commit,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if policy == SyncPolicy::Everysec && last_sync.elapsed() >= EVERYSEC {
                    sync_if_dirty(segment);
                    last_sync = Instant::now();
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                sync_if_dirty(segment);
                return;
            }
        };
        let mut batch = Vec::new();
        let mut waiters: Vec<Synced> = Vec::new();
        let mut next = Some(first);
        while let Some((bytes, done)) = next.take() {
            batch.extend_from_slice(&bytes);
            waiters.push(done);
            next = queue.try_recv().ok();
        }
        // A group of barriers only (no bytes): everything before it was
        // synced with its own group.
        let outcome = if batch.is_empty() {
            Ok(())
        } else {
            let mut segment = lock(segment);
            let written = segment
                .file
                .write_all(&batch)
                .and_then(|()| segment.file.sync_data());
            segment.dirty = written.is_err();
            written.map_err(|e| e.to_string())
        };
        if let Err(e) = &outcome {
            warn!(error = %e, "journal write failed; the writes waiting for it fail");
        }
        for done in waiters {
            let _ = done.send(outcome.clone());
        }
    }
}

/// Sync the segment if anything was written since the last sync. The file is
/// synced through a second handle, so appends go on meanwhile.
fn sync_if_dirty(segment: &Mutex<Segment>) {
    let handle = {
        let mut segment = lock(segment);
        if !segment.dirty {
            return;
        }
        segment.dirty = false;
        segment.file.try_clone()
    };
    if let Err(e) = handle.and_then(|file| file.sync_data()) {
        warn!(error = %e, "journal sync failed");
    }
}

/// Frame `record` as a `JournalRecord` (encoded field by field, so the
/// entry is not copied into one).
fn frame(record: Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    match record {
        Record::Entry(entry) => prost::encoding::message::encode(1, entry, out),
        Record::Votes(votes) => prost::encoding::message::encode(2, votes, out),
    }
    let body = &out[start + HEADER..];
    let len = body.len() as u32;
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// Append the records of `path` to `out`, each entry checked as a peer's
/// would be. A torn record at the end of the last segment (a crash
/// mid-write) is cut off and counted; any other damage stops start-up,
/// naming the file and offset.
fn read_records(path: &Path, last: bool, out: &mut Replayed) -> Result<(), JournalError> {
    let file = File::open(path).map_err(io_error(path))?;
    let total = file.metadata().map_err(io_error(path))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut offset = 0u64;
    let corrupt = |offset: u64, why: String| JournalError::Corrupt {
        path: path.display().to_string(),
        offset,
        why,
    };
    let mut body = Vec::new();
    while offset < total {
        let left = total - offset;
        let mut header = [0u8; HEADER];
        if left < HEADER as u64 {
            out.cut_bytes += cut(path, last, offset, left, "a torn header")?;
            return Ok(());
        }
        reader.read_exact(&mut header).map_err(io_error(path))?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len > MAX_RECORD {
            return Err(corrupt(
                offset,
                format!("a record of {len} bytes exceeds {MAX_RECORD}"),
            ));
        }
        if left < (HEADER + len) as u64 {
            out.cut_bytes += cut(path, last, offset, left, "a torn record")?;
            return Ok(());
        }
        body.resize(len, 0);
        reader.read_exact(&mut body).map_err(io_error(path))?;
        if crc32fast::hash(&body) != crc {
            if last && offset + (HEADER + len) as u64 == total {
                out.cut_bytes += cut(
                    path,
                    last,
                    offset,
                    left,
                    "a last record with a bad checksum",
                )?;
                return Ok(());
            }
            return Err(corrupt(offset, "checksum mismatch".into()));
        }
        let record =
            JournalRecord::decode(&body[..]).map_err(|e| corrupt(offset, e.to_string()))?;
        match record.record {
            Some(journal_record::Record::Entry(record)) => {
                let (id, entry) =
                    from_record(record).map_err(|e| corrupt(offset, e.to_string()))?;
                out.entries.push((id.into(), entry));
            }
            Some(journal_record::Record::Votes(record)) => {
                let restored =
                    votes::from_record(record).map_err(|e| corrupt(offset, e.to_string()))?;
                out.votes.push(restored);
            }
            // A kind of record of a newer version, within this format: it
            // is one an older reader may skip (the format rule).
            None => {}
        }
        offset += (HEADER + len) as u64;
    }
    Ok(())
}

/// The end of the last segment is torn: cut it off (it was never
/// acknowledged: a write is acknowledged only after it is written whole).
fn cut(path: &Path, last: bool, offset: u64, left: u64, what: &str) -> Result<u64, JournalError> {
    if !last {
        return Err(JournalError::Corrupt {
            path: path.display().to_string(),
            offset,
            why: format!("{what} in a segment that is not the last"),
        });
    }
    warn!(file = %path.display(), offset, bytes = left, "cutting {what} off the journal (a crash mid-write)");
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error(path))?;
    file.set_len(offset).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))?;
    Ok(left)
}

fn segment_name(seq: u64) -> String {
    format!("log-{seq:020}.tlog")
}

fn snapshot_name(seq: u64) -> String {
    format!("snapshot-{seq:020}.tsnap")
}

/// Sequence numbers of the complete snapshots and of the segments, sorted.
fn list(dir: &Path) -> Result<(Vec<u64>, Vec<u64>), JournalError> {
    let mut snapshots = Vec::new();
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let name = entry.map_err(io_error(dir))?.file_name();
        let name = name.to_string_lossy();
        let seq_of = |prefix: &str, suffix: &str| {
            name.strip_prefix(prefix)?
                .strip_suffix(suffix)?
                .parse::<u64>()
                .ok()
        };
        if let Some(seq) = seq_of("snapshot-", ".tsnap") {
            snapshots.push(seq);
        } else if let Some(seq) = seq_of("log-", ".tlog") {
            segments.push(seq);
        }
    }
    snapshots.sort_unstable();
    segments.sort_unstable();
    Ok((snapshots, segments))
}

/// Read `tessera-data.toml` and check that this node may use the directory;
/// write it for a new directory (`has_files`: journal files are there).
fn read_meta(dir: &Path, cluster: &str, has_files: bool) -> Result<Meta, JournalError> {
    let path = dir.join(META);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !has_files => {
            let meta = Meta {
                format: FORMAT,
                cluster: cluster.to_owned(),
                votes_from_ms: None,
            };
            write_meta(dir, &meta)?;
            return Ok(meta);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(JournalError::NoMeta {
                path: dir.display().to_string(),
            });
        }
        Err(e) => return Err(io_error(&path)(e)),
    };
    let bad = |why: String| JournalError::BadMeta {
        path: path.display().to_string(),
        why,
    };
    // The format first: a newer one may have changed anything else.
    let format = toml::from_str::<toml::Table>(&text)
        .map_err(|e| bad(e.to_string()))?
        .get("format")
        .and_then(toml::Value::as_integer)
        .ok_or_else(|| bad("no format number".into()))?;
    if format > i64::from(FORMAT) {
        return Err(JournalError::NewerFormat {
            path: path.display().to_string(),
            format: u32::try_from(format).unwrap_or(u32::MAX),
        });
    }
    let meta: Meta = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if meta.cluster != cluster {
        return Err(JournalError::OtherCluster {
            path: path.display().to_string(),
            found: meta.cluster,
            expected: cluster.to_owned(),
        });
    }
    Ok(meta)
}

/// Replace `tessera-data.toml` whole (write aside, sync, rename, sync the
/// directory): a crash leaves the old file or the new one.
fn write_meta(dir: &Path, meta: &Meta) -> Result<(), JournalError> {
    let path = dir.join(META);
    let tmp = dir.join(format!("{META}.tmp"));
    let text = format!(
        "# Tessera data directory: written by Tessera, do not edit.\n{}",
        toml::to_string(meta).expect("the meta fields serialise")
    );
    let mut file = create_private(&tmp)?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_error(&path))?;
    sync_dir(dir)
}

/// Take the directory's lock, or fail if another process holds it (two
/// nodes on one directory would each believe they hold its votes alone).
fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join(LOCK);
    let file = private_file()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(JournalError::InUse {
            path: dir.display().to_string(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(io_error(&path)(e)),
    }
}

fn create_segment(dir: &Path, seq: u64) -> Result<File, JournalError> {
    let path = dir.join(segment_name(seq));
    let file = private_file()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_error(&path))?;
    sync_dir(dir)?;
    Ok(file)
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// Create (or empty) `path`, readable by its owner only.
fn create_private(path: &Path) -> Result<File, JournalError> {
    private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_error(path))
}

/// Options for a file of the data directory: readable by its owner only.
fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// Create `dir` (and its parents) if missing, the last one readable by its
/// owner only.
fn create_private_dir(dir: &Path) -> Result<(), JournalError> {
    if dir.exists() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_error(dir))
}

/// Refuse a directory other users can read or enter: payloads are credentials.
fn check_private(dir: &Path) -> Result<(), JournalError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir)
            .map_err(io_error(dir))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o007 != 0 {
            return Err(JournalError::NotPrivate {
                path: dir.display().to_string(),
                mode,
            });
        }
    }
    Ok(())
}

/// Shared handle, as the replicator and the compaction worker hold it.
pub type SharedJournal = Arc<Journal>;

/// The log is folded into a snapshot once it holds at least this much and
/// more than the last snapshot: disk use stays within about twice what the
/// store holds, plus this.
const COMPACT_AT_BYTES: u64 = 64 * 1024 * 1024;
/// How often the compaction worker looks at the log's size.
const COMPACTION_CHECK: Duration = Duration::from_secs(10);
/// Bytes of records read from the store under one shard lock.
const SNAPSHOT_PAGE: usize = 1 << 20;

/// Snapshot every entry and vote of `replicator` into `journal` (see
/// [`Journal::rotate`]): the votes copied at once (a few per ticket used
/// within its retention), the entries page by page, each shard lock held for
/// one page, all of it (the rotation's sync too) off the async threads. Writes go on meanwhile,
/// into the new segment.
pub async fn snapshot_store(
    journal: &SharedJournal,
    replicator: &Arc<Replicator>,
) -> Result<u64, JournalError> {
    let (journal, replicator) = (journal.clone(), replicator.clone());
    tokio::task::spawn_blocking(move || {
        let seq = journal.rotate()?;
        let votes = replicator.vote_records();
        let store = replicator.store();
        journal.write_snapshot(seq, |sink| {
            for slot in &votes {
                sink(Record::Votes(slot));
            }
            for bucket in 0..BUCKETS {
                let mut after = String::new();
                loop {
                    let (page, more) =
                        store.bucket_page(bucket, &after, SNAPSHOT_PAGE, to_record, |record| {
                            record.encoded_len()
                        });
                    if let Some(last) = page.last() {
                        after = last.id.clone();
                    }
                    for record in &page {
                        sink(Record::Entry(record));
                    }
                    if !more {
                        break;
                    }
                }
            }
        })
    })
    .await
    .map_err(|_| JournalError::Stopped)?
}

/// The background job that folds the log into snapshots.
pub struct Compaction {
    journal: SharedJournal,
    replicator: Arc<Replicator>,
}

impl Compaction {
    pub fn new(journal: SharedJournal, replicator: Arc<Replicator>) -> Compaction {
        Compaction {
            journal,
            replicator,
        }
    }
}

impl Worker for Compaction {
    fn name(&self) -> &'static str {
        "journal-compaction"
    }

    async fn work(&mut self) -> WorkerState {
        let log = self.journal.log_bytes();
        if log >= COMPACT_AT_BYTES
            && log > self.journal.snapshot_bytes()
            && let Err(e) = snapshot_store(&self.journal, &self.replicator).await
        {
            warn!(error = %e, "journal snapshot failed; the log keeps growing until one succeeds");
        }
        WorkerState::Idle
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(COMPACTION_CHECK).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, retain_until_ms: u64) -> EntryRecord {
        EntryRecord {
            id: id.to_owned(),
            retain_until_ms,
            state: Some(tessera_proto::peer::entry_record::State::Deleted(
                tessera_proto::peer::Deleted {},
            )),
        }
    }

    fn ids(replayed: &Replayed) -> Vec<String> {
        replayed
            .entries
            .iter()
            .map(|(id, _)| id.to_string())
            .collect()
    }

    const CLUSTER: &str = "tessera-test";

    fn private_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        (dir, data)
    }

    #[tokio::test]
    async fn records_come_back_in_order_across_restarts_and_snapshots() {
        let (_dir, data) = private_dir();
        {
            let (journal, replayed) = Journal::open(&data, SyncPolicy::Always, CLUSTER).unwrap();
            assert!(replayed.entries.is_empty());
            journal
                .append(&[record("a", 1), record("b", 2)])
                .await
                .unwrap();
        }
        let (journal, replayed) = Journal::open(&data, SyncPolicy::Everysec, CLUSTER).unwrap();
        assert_eq!(ids(&replayed), ["a", "b"]);
        let journal = Arc::new(journal);
        journal.append(&[record("c", 3)]).await.unwrap();
        let seq = journal.rotate().unwrap();
        journal.append(&[record("d", 4)]).await.unwrap();
        let written = journal
            .write_snapshot(seq, |sink| {
                for id in ["a", "b", "c"] {
                    sink(Record::Entry(&record(id, 9)));
                }
            })
            .unwrap();
        assert_eq!(written, 3);
        let (_, segments) = list(&data).unwrap();
        assert!(
            segments.iter().all(|s| *s >= seq),
            "folded segments are dropped: {segments:?}"
        );
        drop(journal);
        let (_, replayed) = Journal::open(&data, SyncPolicy::No, CLUSTER).unwrap();
        assert_eq!(
            ids(&replayed),
            ["a", "b", "c", "d"],
            "snapshot, then the newer segment"
        );
    }

    #[tokio::test]
    async fn a_torn_last_record_is_cut_off_and_a_corrupt_one_stops_start_up() {
        let (_dir, data) = private_dir();
        {
            let (journal, _) = Journal::open(&data, SyncPolicy::Always, CLUSTER).unwrap();
            journal
                .append(&[record("a", 1), record("b", 2)])
                .await
                .unwrap();
        }
        let (_, segments) = list(&data).unwrap();
        let path = data.join(segment_name(segments[0]));
        let whole = fs::read(&path).unwrap();
        // A crash in the middle of the second record's write.
        fs::write(&path, &whole[..whole.len() - 3]).unwrap();
        let (_, replayed) = Journal::open(&data, SyncPolicy::Always, CLUSTER).unwrap();
        assert_eq!(ids(&replayed), ["a"]);
        assert!(replayed.cut_bytes > 0);
        // A flipped byte in the first record, with a good one after it.
        let mut bad = whole.clone();
        bad[HEADER + 2] ^= 0xff;
        fs::write(&path, &bad).unwrap();
        match Journal::open(&data, SyncPolicy::Always, CLUSTER) {
            Err(JournalError::Corrupt {
                path: named,
                offset,
                ..
            }) => {
                assert!(named.ends_with(&segment_name(segments[0])));
                assert_eq!(offset, 0);
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("a corrupt record in the middle was accepted"),
        }
    }

    #[tokio::test]
    async fn a_snapshot_of_the_store_holds_every_entry() {
        use crate::clock::{Clock, HlcClock};
        use crate::store::{PutTicket, StoreConfig};
        let (_dir, data) = private_dir();
        let store = Arc::new(crate::store::Store::new(
            StoreConfig::default(),
            HlcClock::new(Clock::starting_at(1_700_000_000_000), "n".into()),
        ));
        let replicator = Replicator::new(store.clone(), Default::default());
        for n in 0..300 {
            store
                .put(PutTicket {
                    id: format!("TGT-{n}"),
                    ttl_ms: 60_000,
                    ..PutTicket::default()
                })
                .unwrap();
        }
        let (journal, _) = Journal::open(&data, SyncPolicy::Always, CLUSTER).unwrap();
        let journal = Arc::new(journal);
        assert_eq!(snapshot_store(&journal, &replicator).await.unwrap(), 300);
        drop(journal);
        let (_, replayed) = Journal::open(&data, SyncPolicy::Always, CLUSTER).unwrap();
        let mut got = ids(&replayed);
        got.sort();
        let mut want: Vec<String> = (0..300).map(|n| format!("TGT-{n}")).collect();
        want.sort();
        assert_eq!(got, want);
    }

    #[cfg(unix)]
    #[test]
    fn a_directory_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, data) = private_dir();
        fs::create_dir(&data).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            Journal::open(&data, SyncPolicy::Always, CLUSTER),
            Err(JournalError::NotPrivate { mode: 0o755, .. })
        ));
    }

    fn slot_votes(slot: &str, promised_round: u32) -> SlotVotes {
        let stamp = |ms| tessera_proto::peer::Stamp {
            hlc: Some(tessera_proto::peer::Hlc {
                wall_ms: ms,
                logical: 0,
            }),
            node: "n".to_owned(),
        };
        SlotVotes {
            id: "ST-1".to_owned(),
            incarnation: Some(stamp(1)),
            slot: slot.to_owned(),
            promised_round,
            promised_proposal: Some(stamp(2)),
            forget_at_ms: 99,
            ..SlotVotes::default()
        }
    }

    #[tokio::test]
    async fn votes_are_synced_and_come_back_beside_the_entries() {
        let (_dir, data) = private_dir();
        {
            let (journal, _) = Journal::open(&data, SyncPolicy::No, CLUSTER).unwrap();
            journal.append(&[record("a", 1)]).await.unwrap();
            journal
                .commit_votes(&[slot_votes("use:1", 0)])
                .wait()
                .await
                .unwrap();
            journal.commit_votes(&[]).wait().await.unwrap();
            journal
                .commit_votes(&[slot_votes("use:1", 2)])
                .wait()
                .await
                .unwrap();
        }
        let (_, replayed) = Journal::open(&data, SyncPolicy::No, CLUSTER).unwrap();
        assert_eq!(ids(&replayed), ["a"]);
        let decoded = |record| votes::from_record(record).unwrap();
        assert_eq!(
            replayed.votes,
            [
                decoded(slot_votes("use:1", 0)),
                decoded(slot_votes("use:1", 2))
            ]
        );
    }

    #[test]
    fn a_directory_of_another_cluster_or_a_newer_format_is_refused() {
        let (_dir, data) = private_dir();
        drop(Journal::open(&data, SyncPolicy::No, CLUSTER).unwrap());
        match Journal::open(&data, SyncPolicy::No, "tessera-other") {
            Err(e @ JournalError::OtherCluster { .. }) => {
                let message = e.to_string();
                assert!(message.contains("another cluster"), "{message}");
                assert!(message.contains(META), "{message}");
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("another cluster's directory was opened"),
        }
        let meta = data.join(META);
        let text = fs::read_to_string(&meta).unwrap();
        fs::write(&meta, text.replace("format = 1", "format = 7")).unwrap();
        match Journal::open(&data, SyncPolicy::No, CLUSTER) {
            Err(e @ JournalError::NewerFormat { format: 7, .. }) => {
                assert!(e.to_string().contains("newer than this Tessera reads (1)"));
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("a newer format was opened"),
        }
        fs::remove_file(&meta).unwrap();
        assert!(
            matches!(
                Journal::open(&data, SyncPolicy::No, CLUSTER),
                Err(JournalError::NoMeta { .. })
            ),
            "journal files without their meta file are not guessed at"
        );
    }

    #[test]
    fn a_directory_in_use_is_refused_and_votes_from_is_kept() {
        let (_dir, data) = private_dir();
        let (journal, _) = Journal::open(&data, SyncPolicy::No, CLUSTER).unwrap();
        assert!(matches!(
            Journal::open(&data, SyncPolicy::No, CLUSTER),
            Err(JournalError::InUse { .. })
        ));
        assert_eq!(journal.votes_from_ms(), None);
        journal.remember_votes_from(1_234).unwrap();
        journal.remember_votes_from(5_678).unwrap();
        drop(journal);
        let (journal, _) = Journal::open(&data, SyncPolicy::No, CLUSTER).unwrap();
        assert_eq!(journal.votes_from_ms(), Some(1_234), "the first one stays");
    }
}
