//! The journal: what makes tickets survive a restart (`--data-dir`).
//!
//! Memory stays the store; the disk holds a log of the entries the node
//! merged, in the versioned protobuf records the peers exchange
//! (`EntryRecord`), so a newer version reads an older directory. Entries are
//! CRDT states, so replaying them in any order, twice, or on top of a
//! snapshot taken while writes went on, ends in the same store: that is what
//! lets snapshots be taken from the live map without stopping writes.
//!
//! Files in the data directory:
//! - `log-<seq>.tlog`: segments, appended in order. A record is
//!   `[u32 length][u32 crc32 of the bytes][EntryRecord bytes]`, little endian.
//! - `snapshot-<seq>.tsnap`: every entry of the store, in the same framing,
//!   written after segment `<seq>` was opened: replay loads the newest
//!   snapshot, then the segments from `<seq>` on.
//!
//! A write is acknowledged only after its records are written: with
//! `everysec` and `no` by the call itself, one `write` into the OS (a killed
//! process loses nothing; a crashed machine up to about a second with
//! `everysec`, whose syncer thread syncs once a second); with `always` by the
//! syncer thread, which commits in groups: everything queued in one `write`
//! and one sync, then every waiter answered at once.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use tessera_proto::peer::EntryRecord;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::config::MAX_PAYLOAD_LIMIT;
use crate::entry::Entry;
use crate::replication::wire::{from_record, to_record};
use crate::store::Store;
use crate::store::digest::BUCKETS;
use crate::worker::{Worker, WorkerState};

/// The largest record a reader accepts: a payload at the largest limit plus
/// room for its fields. A length above it is corruption, not a record.
const MAX_RECORD: usize = MAX_PAYLOAD_LIMIT + 64 * 1024;
/// Bytes of a record's header: length and checksum.
const HEADER: usize = 8;
/// How often `everysec` syncs.
const EVERYSEC: Duration = Duration::from_secs(1);

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
    #[error("the journal's writer has stopped")]
    Stopped,
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
    /// `always`: framed records for the syncer thread, which commits them in
    /// groups (one write and one sync for everything queued).
    commits: mpsc::Sender<Commit>,
}

/// What [`Journal::open`] read back from the directory.
pub struct Replayed {
    /// Every record read back, checked as a peer's would be, in order.
    pub entries: Vec<(Arc<str>, Entry)>,
    /// A torn record cut off the end of the last segment (a crash mid-write).
    pub cut_bytes: u64,
}

impl Journal {
    /// Open (or create) `dir`, read back the newest snapshot and the segments
    /// after it, and start appending to a fresh segment.
    pub fn open(dir: &Path, policy: SyncPolicy) -> Result<(Journal, Replayed), JournalError> {
        create_private_dir(dir)?;
        check_private(dir)?;
        let (snapshots, segments) = list(dir)?;
        let mut records = Vec::new();
        let mut cut_bytes = 0;
        let from = snapshots.last().copied().unwrap_or(0);
        if let Some(seq) = snapshots.last() {
            let path = dir.join(snapshot_name(*seq));
            cut_bytes += read_records(&path, false, &mut records)?;
        }
        let replayed: Vec<u64> = segments.into_iter().filter(|seq| *seq >= from).collect();
        for (n, seq) in replayed.iter().enumerate() {
            let last = n + 1 == replayed.len();
            cut_bytes += read_records(&dir.join(segment_name(*seq)), last, &mut records)?;
        }
        let next = replayed.last().map_or(from, |seq| seq + 1).max(1);
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
        info!(dir = %dir.display(), records = records.len(), segment = next, ?policy, "journal opened");
        Ok((
            Journal {
                dir: dir.to_owned(),
                policy,
                segment,
                commits,
            },
            Replayed {
                entries: records,
                cut_bytes,
            },
        ))
    }

    /// Append `records`, as durably as the policy says before this returns:
    /// `everysec` and `no` write them here (one `write` into the OS, a few
    /// microseconds: no thread hand-off on every write), `always` hands them
    /// to the syncer thread and waits for its group's sync.
    pub async fn append(&self, records: &[EntryRecord]) -> Result<(), JournalError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut framed = Vec::with_capacity(records.iter().map(|r| r.encoded_len() + HEADER).sum());
        for record in records {
            frame(record, &mut framed);
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
        let (done, synced) = oneshot::channel();
        self.commits
            .send((framed, done))
            .map_err(|_| JournalError::Stopped)?;
        match synced.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(JournalError::Io {
                path: self.dir.display().to_string(),
                source: io::Error::other(why),
            }),
            Err(_) => Err(JournalError::Stopped),
        }
    }

    /// Open the next segment and return its sequence number: a snapshot
    /// taken after this holds every record of the older segments (each was
    /// merged into the store before it was appended).
    pub async fn rotate(&self) -> Result<u64, JournalError> {
        let mut segment = lock(&self.segment);
        segment.file.sync_data().map_err(io_error(&self.dir))?;
        let seq = segment.seq + 1;
        segment.file = create_segment(&self.dir, seq)?;
        segment.seq = seq;
        segment.dirty = false;
        Ok(seq)
    }

    /// Write snapshot `seq` (from [`Journal::rotate`]) of every record
    /// `entries` yields, then drop the segments and snapshots it replaces.
    /// Blocking: run it off the async threads.
    pub fn write_snapshot(
        &self,
        seq: u64,
        entries: impl FnOnce(&mut dyn FnMut(EntryRecord)),
    ) -> Result<u64, JournalError> {
        let tmp = self.dir.join(format!("{}.tmp", snapshot_name(seq)));
        let path = self.dir.join(snapshot_name(seq));
        let file = private_file()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_error(&tmp))?;
        let mut out = io::BufWriter::new(file);
        let mut buf = Vec::new();
        let mut failed = None;
        let mut count = 0u64;
        entries(&mut |record| {
            if failed.is_some() {
                return;
            }
            buf.clear();
            frame(&record, &mut buf);
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
        info!(entries = count, snapshot = seq, "journal snapshot written");
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
        let outcome = {
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

fn frame(record: &EntryRecord, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    record.encode(out).expect("a Vec grows to hold any record");
    let body = &out[start + HEADER..];
    let len = body.len() as u32;
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// Append the entries of `path` to `out`, each record checked as a peer's
/// would be. A torn record at the end of the
/// last segment (a crash mid-write) is cut off and its size returned; any
/// other damage stops start-up, naming the file and offset.
fn read_records(
    path: &Path,
    last: bool,
    out: &mut Vec<(Arc<str>, Entry)>,
) -> Result<u64, JournalError> {
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
            return cut(path, last, offset, left, "a torn header");
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
            return cut(path, last, offset, left, "a torn record");
        }
        body.resize(len, 0);
        reader.read_exact(&mut body).map_err(io_error(path))?;
        if crc32fast::hash(&body) != crc {
            if last && offset + (HEADER + len) as u64 == total {
                return cut(
                    path,
                    last,
                    offset,
                    left,
                    "a last record with a bad checksum",
                );
            }
            return Err(corrupt(offset, "checksum mismatch".into()));
        }
        let record = EntryRecord::decode(&body[..]).map_err(|e| corrupt(offset, e.to_string()))?;
        let (id, entry) = from_record(record).map_err(|e| corrupt(offset, e.to_string()))?;
        out.push((id.into(), entry));
        offset += (HEADER + len) as u64;
    }
    Ok(0)
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

/// Snapshot every entry of `store` into `journal` (see [`Journal::rotate`]):
/// page by page, each shard lock held for one page, the file written off the
/// async threads. Writes go on meanwhile, into the new segment.
pub async fn snapshot_store(
    journal: &SharedJournal,
    store: &Arc<Store>,
) -> Result<u64, JournalError> {
    let seq = journal.rotate().await?;
    let (journal, store) = (journal.clone(), store.clone());
    tokio::task::spawn_blocking(move || {
        journal.write_snapshot(seq, |sink| {
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
                    for record in page {
                        sink(record);
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
    store: Arc<Store>,
}

impl Compaction {
    pub fn new(journal: SharedJournal, store: Arc<Store>) -> Compaction {
        Compaction { journal, store }
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
            && let Err(e) = snapshot_store(&self.journal, &self.store).await
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

    fn private_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        (dir, data)
    }

    #[tokio::test]
    async fn records_come_back_in_order_across_restarts_and_snapshots() {
        let (_dir, data) = private_dir();
        {
            let (journal, replayed) = Journal::open(&data, SyncPolicy::Always).unwrap();
            assert!(replayed.entries.is_empty());
            journal
                .append(&[record("a", 1), record("b", 2)])
                .await
                .unwrap();
        }
        let (journal, replayed) = Journal::open(&data, SyncPolicy::Everysec).unwrap();
        assert_eq!(ids(&replayed), ["a", "b"]);
        let journal = Arc::new(journal);
        journal.append(&[record("c", 3)]).await.unwrap();
        let seq = journal.rotate().await.unwrap();
        journal.append(&[record("d", 4)]).await.unwrap();
        let written = journal
            .write_snapshot(seq, |sink| {
                for id in ["a", "b", "c"] {
                    sink(record(id, 9));
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
        let (_, replayed) = Journal::open(&data, SyncPolicy::No).unwrap();
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
            let (journal, _) = Journal::open(&data, SyncPolicy::Always).unwrap();
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
        let (_, replayed) = Journal::open(&data, SyncPolicy::Always).unwrap();
        assert_eq!(ids(&replayed), ["a"]);
        assert!(replayed.cut_bytes > 0);
        // A flipped byte in the first record, with a good one after it.
        let mut bad = whole.clone();
        bad[HEADER + 2] ^= 0xff;
        fs::write(&path, &bad).unwrap();
        match Journal::open(&data, SyncPolicy::Always) {
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
        let store = Arc::new(Store::new(
            StoreConfig::default(),
            HlcClock::new(Clock::starting_at(1_700_000_000_000), "n".into()),
        ));
        for n in 0..300 {
            store
                .put(PutTicket {
                    id: format!("TGT-{n}"),
                    ttl_ms: 60_000,
                    ..PutTicket::default()
                })
                .unwrap();
        }
        let (journal, _) = Journal::open(&data, SyncPolicy::Always).unwrap();
        let journal = Arc::new(journal);
        assert_eq!(snapshot_store(&journal, &store).await.unwrap(), 300);
        drop(journal);
        let (_, replayed) = Journal::open(&data, SyncPolicy::Always).unwrap();
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
            Journal::open(&data, SyncPolicy::Always),
            Err(JournalError::NotPrivate { mode: 0o755, .. })
        ));
    }
}
