//! The Raft log, the vote and the last snapshot on disk, in one redb file.
//!
//! Entries are rows keyed by log index, in the binary format of `codec.rs`
//! (a format byte first); rows written by earlier versions are JSON and still
//! load (they start with `{`, which no binary row does).
//!
//! Appends do not wait for the disk: openraft hands entries over, they are
//! readable at once from memory, and one writer thread makes them durable,
//! every append queued meanwhile in the same redb transaction (one fsync for
//! all), before it tells openraft they are flushed. So a leader replicates an
//! entry while its own fsync runs, and writes that arrive during an fsync
//! share the next one. Truncation and purging go through the same queue, in
//! order, and are waited for; the commit point is written without an fsync of
//! its own (it rides on the next durable transaction: losing it only means
//! replaying more on restart). Other reads and writes run on the blocking
//! pool, so an fsync never stalls the runtime.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{ClusterError, TypeConfig, codec};

const LOG: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("raft_meta");

/// Keys of the metadata table.
pub(super) const VOTE: &str = "vote";
pub(super) const COMMITTED: &str = "committed";
pub(super) const PURGED: &str = "last_purged";
pub(super) const SNAPSHOT: &str = "snapshot";
pub(super) const NODE_ID: &str = "node_id";

/// The file that holds a node's log, in its data directory.
pub const RAFT_FILE: &str = "raft.redb";

type Result<T> = std::result::Result<T, StorageError<u64>>;

fn read_err(e: impl ToString) -> StorageError<u64> {
    StorageIOError::read(AnyError::error(e.to_string())).into()
}

fn write_err(e: impl ToString) -> StorageError<u64> {
    StorageIOError::write(AnyError::error(e.to_string())).into()
}

/// A node's durable Raft state: log entries, vote, commit point, snapshot.
#[derive(Clone, Debug)]
pub struct LogStore {
    db: Arc<Database>,
    io: Arc<Io>,
}

/// Entries appended but not yet durable, by index: always the newest part of
/// the log, without holes (the writer persists in order, truncation cuts the
/// end, purging the start). Each entry is held with the length of its row.
type Pending = Arc<Mutex<BTreeMap<u64, (Entry<TypeConfig>, usize)>>>;

/// Most row bytes one append to a follower carries (one entry always goes,
/// whatever its size). openraft gives an append one heartbeat to be answered
/// and sends the same range again when it is not: a follower catching up on
/// entries of large batches (a thousand registrations each) that could not
/// decode and store an append within that time was sent it again forever.
/// With this bound an append is a few milliseconds of work for the follower.
pub(crate) const APPEND_BUDGET: usize = 256 << 10;

/// The writer thread and what it shares with the store.
#[derive(Debug)]
struct Io {
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    pending: Pending,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Io {
    fn drop(&mut self) {
        // The thread ends when the queue closes; waiting for it releases the
        // database file before a reopen.
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Done = tokio::sync::oneshot::Sender<std::result::Result<(), String>>;

/// Work for the writer thread, done in queue order.
enum Job {
    /// Entries (index, log id, row) to make durable, then tell openraft.
    Append {
        rows: Vec<(LogId<u64>, Vec<u8>)>,
        done: LogFlushed<TypeConfig>,
    },
    /// Remove entries from this index on.
    Truncate { from: u64, done: Done },
    /// Remove entries up to this index, recording the purge point.
    Purge {
        upto: u64,
        purged: Vec<u8>,
        done: Done,
    },
    /// The commit point (encoded), needing no fsync of its own.
    Committed(Vec<u8>),
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Append { rows, .. } => write!(f, "Append({} entries)", rows.len()),
            Job::Truncate { from, .. } => write!(f, "Truncate({from}..)"),
            Job::Purge { upto, .. } => write!(f, "Purge(..={upto})"),
            Job::Committed(_) => f.write_str("Committed"),
        }
    }
}

/// Most jobs in one transaction.
const MAX_GROUP: usize = 512;

/// The writer thread: takes every job queued, writes them in one transaction
/// (durable unless only the commit point moved), then reports each.
fn run_writer(db: Arc<Database>, jobs: std::sync::mpsc::Receiver<Job>, pending: Pending) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let result = write_group(&db, &group).map_err(|e| e.to_string());
        for job in group {
            match job {
                Job::Append { rows, done } => {
                    if result.is_ok() {
                        let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                        for (log_id, _) in &rows {
                            // A truncation may have replaced it meanwhile.
                            if p.get(&log_id.index)
                                .is_some_and(|(e, _)| e.log_id == *log_id)
                            {
                                p.remove(&log_id.index);
                            }
                        }
                    }
                    done.log_io_completed(result.clone().map_err(std::io::Error::other));
                }
                Job::Truncate { done, .. } | Job::Purge { done, .. } => {
                    let _ = done.send(result.clone());
                }
                Job::Committed(_) => {}
            }
        }
    }
}

fn write_group(db: &Database, group: &[Job]) -> Result<()> {
    let mut tx = db.begin_write().map_err(write_err)?;
    if group.iter().all(|j| matches!(j, Job::Committed(_))) {
        tx.set_durability(Durability::None).map_err(write_err)?;
    }
    {
        let mut log = tx.open_table(LOG).map_err(write_err)?;
        let mut meta = tx.open_table(META).map_err(write_err)?;
        for job in group {
            match job {
                Job::Append { rows, .. } => {
                    for (log_id, bytes) in rows {
                        log.insert(log_id.index, bytes.as_slice())
                            .map_err(write_err)?;
                    }
                }
                Job::Truncate { from, .. } => {
                    log.retain_in(*from.., |_, _| false).map_err(write_err)?;
                }
                Job::Purge { upto, purged, .. } => {
                    meta.insert(PURGED, purged.as_slice()).map_err(write_err)?;
                    log.retain_in(..=*upto, |_, _| false).map_err(write_err)?;
                }
                Job::Committed(bytes) => {
                    meta.insert(COMMITTED, bytes.as_slice())
                        .map_err(write_err)?;
                }
            }
        }
    }
    tx.commit().map_err(write_err)
}

impl LogStore {
    /// Opens (or creates) the log file in `dir`.
    pub fn open(dir: &Path) -> std::result::Result<LogStore, ClusterError> {
        std::fs::create_dir_all(dir).map_err(|source| ClusterError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let file = dir.join(RAFT_FILE);
        match std::fs::metadata(&file) {
            // redb would initialize an empty file as a new log: the node would
            // come back with no vote, no log and a new identity, and could
            // vote twice in one term. Roster never leaves an empty log file
            // behind (see `create_log_file`), so one is damage.
            Ok(meta) if meta.len() == 0 => {
                return Err(ClusterError::LogFileDamaged {
                    path: file,
                    reason: "the file is empty (0 bytes) and holds no Raft log; restore it from \
                             a backup, or remove the node from the cluster and start it with an \
                             empty data directory to join again",
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_log_file(dir, &file)?,
            Err(source) => return Err(ClusterError::Io { path: file, source }),
        }
        // redb asserts on some damaged files (a truncated one) instead of
        // returning an error: those are damage too.
        let created = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::store::open_redb(&file)
        }));
        let db = match created {
            Ok(opened) => opened.map_err(|source| ClusterError::LogFile {
                path: file.clone(),
                source,
            })?,
            Err(_) => {
                return Err(ClusterError::LogFileDamaged {
                    path: file,
                    reason: "the file is damaged (truncated, or not a Raft log); restore it from \
                             a backup, or remove the node from the cluster and start it with an \
                             empty data directory to join again",
                });
            }
        };
        let tx = db.begin_write().map_err(redb::Error::from)?;
        tx.open_table(LOG).map_err(redb::Error::from)?;
        tx.open_table(META).map_err(redb::Error::from)?;
        tx.commit().map_err(redb::Error::from)?;
        let db = Arc::new(db);
        let pending = Pending::default();
        let (jobs, queue) = std::sync::mpsc::channel();
        let thread = {
            let (db, pending) = (db.clone(), pending.clone());
            std::thread::Builder::new()
                .name("raft-log-writer".into())
                .spawn(move || run_writer(db, queue, pending))
                .map_err(|source| ClusterError::Io {
                    path: file.clone(),
                    source,
                })?
        };
        Ok(LogStore {
            db,
            io: Arc::new(Io {
                jobs: Some(jobs),
                pending,
                thread: Some(thread),
            }),
        })
    }

    /// Queues a job for the writer thread.
    fn queue(&self, job: Job) -> Result<()> {
        match &self.io.jobs {
            Some(jobs) => jobs
                .send(job)
                .map_err(|_| write_err("the Raft log writer stopped")),
            None => Err(write_err("the Raft log writer stopped")),
        }
    }

    /// Queues a job and waits until it is durable.
    async fn queue_and_wait(&self, job: impl FnOnce(Done) -> Job) -> Result<()> {
        let (done, rx) = tokio::sync::oneshot::channel();
        self.queue(job(done))?;
        match rx.await {
            Ok(result) => result.map_err(write_err),
            Err(_) => Err(write_err("the Raft log writer stopped")),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, (Entry<TypeConfig>, usize)>> {
        self.io.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn path_of(dir: &Path) -> std::path::PathBuf {
        dir.join(RAFT_FILE)
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(write_err)?
    }

    /// Reads one metadata value.
    pub(super) async fn get_meta<T: DeserializeOwned + Send + 'static>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>> {
        self.blocking(move |db| get_meta(db, key)).await
    }

    /// Writes one metadata value durably.
    pub(super) async fn put_meta<T: Serialize>(&self, key: &'static str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(write_err)?;
        self.put_meta_raw(key, bytes).await
    }

    /// Reads one metadata row's bytes as they are stored.
    pub(super) async fn get_meta_raw(&self, key: &'static str) -> Result<Option<Vec<u8>>> {
        self.blocking(move |db| get_meta_raw(db, key)).await
    }

    /// Reads one metadata row's bytes, blocking (start-up only).
    pub(super) fn get_meta_raw_now(&self, key: &'static str) -> Result<Option<Vec<u8>>> {
        get_meta_raw(&self.db, key)
    }

    /// Writes one metadata row's bytes as they are, durably.
    pub(super) async fn put_meta_raw(&self, key: &'static str, bytes: Vec<u8>) -> Result<()> {
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(write_err)?;
            tx.open_table(META)
                .map_err(write_err)?
                .insert(key, bytes.as_slice())
                .map_err(write_err)?;
            tx.commit().map_err(write_err)
        })
        .await
    }
}

fn get_meta_raw(db: &Database, key: &str) -> Result<Option<Vec<u8>>> {
    let tx = db.begin_read().map_err(read_err)?;
    let table = tx.open_table(META).map_err(read_err)?;
    Ok(table
        .get(key)
        .map_err(read_err)?
        .map(|v| v.value().to_vec()))
}

/// Creates a new, empty log file at `file` whole: initialized under a
/// temporary name, synced, then renamed into place, so a crash never leaves a
/// partial (or empty) log file that a later start would have to refuse.
fn create_log_file(dir: &Path, file: &Path) -> std::result::Result<(), ClusterError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ClusterError::Io { path, source }
    };
    let tmp = dir.join(format!("{RAFT_FILE}.new"));
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&tmp)(e)),
    }
    drop(
        Database::create(&tmp).map_err(|source| ClusterError::LogFile {
            path: tmp.clone(),
            source,
        })?,
    );
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, file).map_err(io(file))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

fn get_meta<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>> {
    get_meta_raw(db, key)?
        .map(|bytes| serde_json::from_slice(&bytes).map_err(read_err))
        .transpose()
}

/// A log row back to its entry: binary (`codec.rs`) or, from before that
/// format, JSON. Damage is a read error naming the row, never a panic.
fn decode_row(index: u64, bytes: &[u8]) -> Result<Entry<TypeConfig>> {
    let decoded = if bytes.first() == Some(&b'{') {
        serde_json::from_slice(bytes).map_err(|e| format!("JSON row: {e}"))
    } else {
        codec::decode_entry(bytes).map_err(|e| e.to_string())
    };
    let entry: Entry<TypeConfig> =
        decoded.map_err(|why| read_err(format!("Raft log entry {index}: {why}")))?;
    if entry.log_id.index != index {
        return Err(read_err(format!(
            "Raft log entry {index}: the row holds entry {}",
            entry.log_id.index
        )));
    }
    Ok(entry)
}

/// Whether a range holds no index (`BTreeMap::range` refuses some of those).
fn is_empty(bounds: &(Bound<u64>, Bound<u64>)) -> bool {
    let start = match bounds.0 {
        Bound::Included(s) => Some(s),
        Bound::Excluded(s) => s.checked_add(1),
        Bound::Unbounded => Some(0),
    };
    let Some(start) = start else { return true };
    match bounds.1 {
        Bound::Included(e) => start > e,
        Bound::Excluded(e) => start >= e,
        Bound::Unbounded => false,
    }
}

fn last_entry(db: &Database) -> Result<Option<LogId<u64>>> {
    let tx = db.begin_read().map_err(read_err)?;
    let table = tx.open_table(LOG).map_err(read_err)?;
    match table.last().map_err(read_err)? {
        Some((k, v)) => Ok(Some(decode_row(k.value(), v.value())?.log_id)),
        None => Ok(None),
    }
}

impl LogStore {
    /// The entries of `bounds`, in order, stopping after the one that takes
    /// the rows read past `budget` bytes (so at least one when any exists).
    async fn read(
        &self,
        bounds: (Bound<u64>, Bound<u64>),
        budget: usize,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        if is_empty(&bounds) {
            return Ok(Vec::new());
        }
        // Pending first: an entry that leaves it meanwhile is on disk before
        // the read below begins.
        let (fresh, first_pending) = {
            let p = self.pending();
            let mut used = 0;
            let mut fresh: Vec<(Entry<TypeConfig>, usize)> = Vec::new();
            for (e, bytes) in p.range(bounds).map(|(_, held)| held) {
                if used >= budget {
                    break;
                }
                used += bytes;
                fresh.push((e.clone(), *bytes));
            }
            (fresh, p.keys().next().copied())
        };
        let all_pending = match (bounds.0, first_pending) {
            (Bound::Included(from), Some(first)) => from >= first,
            (Bound::Excluded(from), Some(first)) => from >= first,
            _ => false,
        };
        if all_pending {
            return Ok(fresh.into_iter().map(|(e, _)| e).collect());
        }
        let (mut out, used) = self
            .blocking(move |db| {
                let tx = db.begin_read().map_err(read_err)?;
                let table = tx.open_table(LOG).map_err(read_err)?;
                let mut out = Vec::new();
                let mut used = 0;
                for row in table.range(bounds).map_err(read_err)? {
                    if used >= budget {
                        break;
                    }
                    let (k, v) = row.map_err(read_err)?;
                    used += v.value().len();
                    out.push(decode_row(k.value(), v.value())?);
                }
                Ok((out, used))
            })
            .await?;
        if let Some(first) = fresh.first().map(|(e, _)| e.log_id.index) {
            out.retain(|e| e.log_id.index < first);
            // The pending entries follow the durable ones read: they go on
            // only when those left room, and never after a gap.
            let next = out
                .last()
                .map_or(Some(first), |e| e.log_id.index.checked_add(1));
            if used < budget && next == Some(first) {
                let mut used = used;
                for (e, bytes) in fresh {
                    if used >= budget {
                        break;
                    }
                    used += bytes;
                    out.push(e);
                }
            }
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        self.read(bounds, usize::MAX).await
    }

    /// What replication sends: at most `APPEND_BUDGET` (256 KiB) of rows.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        self.read(
            (Bound::Included(start), Bound::Excluded(end)),
            APPEND_BUDGET,
        )
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let newest = self.pending().values().next_back().map(|(e, _)| e.log_id);
        self.blocking(move |db| {
            let purged: Option<LogId<u64>> = get_meta(db, PURGED)?;
            let last = newest.or(last_entry(db)?).or(purged);
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: last,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<()> {
        self.put_meta(VOTE, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>> {
        self.get_meta(VOTE).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<()> {
        let bytes = serde_json::to_vec(&committed).map_err(write_err)?;
        self.queue(Job::Committed(bytes))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>> {
        Ok(self
            .get_meta::<Option<LogId<u64>>>(COMMITTED)
            .await?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let rows: Vec<(LogId<u64>, Vec<u8>)> = entries
            .iter()
            .map(|e| (e.log_id, codec::encode_entry(e)))
            .collect();
        {
            let mut p = self.pending();
            for (e, (_, row)) in entries.into_iter().zip(&rows) {
                p.insert(e.log_id.index, (e, row.len()));
            }
        }
        self.queue(Job::Append {
            rows,
            done: callback,
        })
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<()> {
        let _ = self.pending().split_off(&log_id.index);
        self.queue_and_wait(|done| Job::Truncate {
            from: log_id.index,
            done,
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<()> {
        let purged = serde_json::to_vec(&Some(log_id)).map_err(write_err)?;
        {
            let mut p = self.pending();
            let keep = p.split_off(&log_id.index.saturating_add(1));
            *p = keep;
        }
        self.queue_and_wait(|done| Job::Purge {
            upto: log_id.index,
            purged,
            done,
        })
        .await
    }
}

#[cfg(test)]
mod damage_tests {
    use super::*;

    /// An empty directory of this test process, named `name` (unique
    /// across this file's test modules).
    pub(super) fn fresh_dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("roster-raftlog-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn an_empty_or_truncated_log_file_is_refused_and_a_new_one_is_made_whole() {
        // A new directory: the file is made, nothing temporary left behind,
        // and what is written survives a reopen.
        let dir = fresh_dir("new");
        let log = LogStore::open(&dir).unwrap();
        log.put_meta("probe", &42u64).await.unwrap();
        drop(log);
        assert!(!dir.join(format!("{RAFT_FILE}.new")).exists());
        let reopened = LogStore::open(&dir).unwrap();
        let probe = reopened.get_meta_raw_now("probe").unwrap().unwrap();
        assert_eq!(serde_json::from_slice::<u64>(&probe).unwrap(), 42);
        drop(reopened);
        let whole = std::fs::read(LogStore::path_of(&dir)).unwrap();

        // Emptied: refused, and left as it was (not turned into a new log).
        std::fs::write(LogStore::path_of(&dir), b"").unwrap();
        let err = LogStore::open(&dir).unwrap_err();
        assert!(matches!(err, ClusterError::LogFileDamaged { .. }), "{err}");
        assert!(err.to_string().contains("empty"), "{err}");
        assert_eq!(std::fs::metadata(LogStore::path_of(&dir)).unwrap().len(), 0);

        // Truncated: refused with an error, not a panic.
        std::fs::write(LogStore::path_of(&dir), &whole[..whole.len().min(300)]).unwrap();
        let err = LogStore::open(&dir).unwrap_err();
        assert!(
            matches!(
                err,
                ClusterError::LogFileDamaged { .. } | ClusterError::LogFile { .. }
            ),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod format_tests {
    use std::time::Duration;

    use openraft::{BasicNode, CommittedLeaderId, EntryPayload, Membership, ServerState};

    use super::super::ops::{Batch, Op};
    use super::super::{Peers, StateMachine};
    use super::damage_tests::fresh_dir;
    use super::*;
    use crate::catalog::CatalogLimits;
    use crate::metrics::Metrics;
    use crate::registry::Registry;

    fn golden(name: &str) -> String {
        let file = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        std::fs::read_to_string(file).expect("golden file")
    }

    fn register(service: &str, id: &str) -> Op {
        let mut row: crate::rows::InstanceRow =
            serde_json::from_str(&golden("store_row_minimal.json")).expect("row");
        row.service = service.into();
        row.id = id.into();
        Op::Register { instance: row }
    }

    /// Writes `entries` as the previous version did: JSON rows.
    fn write_json_rows(log: &LogStore, entries: &[Entry<TypeConfig>]) {
        let tx = log.db.begin_write().unwrap();
        {
            let mut table = tx.open_table(LOG).unwrap();
            for e in entries {
                let row = serde_json::to_vec(e).unwrap();
                assert_eq!(row[0], b'{');
                table.insert(e.log_id.index, row.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }

    fn raw_rows(log: &LogStore) -> Vec<(u64, Vec<u8>)> {
        let tx = log.db.begin_read().unwrap();
        let table = tx.open_table(LOG).unwrap();
        table
            .iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.value(), v.value().to_vec())
            })
            .collect()
    }

    /// The row the previous version wrote for the golden entry (every op
    /// kind) reads back through the log store, beside binary rows.
    #[tokio::test]
    async fn json_rows_of_the_previous_version_read_beside_binary_ones() {
        let dir = fresh_dir("mixed");
        let mut log = LogStore::open(&dir).unwrap();
        let old: Entry<TypeConfig> =
            serde_json::from_str(&golden("raft_entry.json")).expect("golden entry");
        write_json_rows(&log, std::slice::from_ref(&old));
        let next = Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(3, 1), old.log_id.index + 1),
            payload: EntryPayload::Blank,
        };
        // Written the way `append` writes (its callback is openraft's own).
        let rows = vec![(next.log_id.index, codec::encode_entry(&next))];
        log.blocking(move |db| {
            let tx = db.begin_write().map_err(write_err)?;
            {
                let mut t = tx.open_table(LOG).map_err(write_err)?;
                for (i, b) in &rows {
                    t.insert(i, b.as_slice()).map_err(write_err)?;
                }
            }
            tx.commit().map_err(write_err)
        })
        .await
        .unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(next.log_id));
        let got = log.try_get_log_entries(..).await.unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].log_id, old.log_id);
        assert_eq!(got[0].payload, old.payload);
        assert_eq!(got[1].payload, EntryPayload::Blank);
        let kinds: Vec<u8> = raw_rows(&log).iter().map(|(_, b)| b[0]).collect();
        assert_eq!(kinds, vec![b'{', codec::FORMAT_V1]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Replication reads at most `APPEND_BUDGET` bytes of rows per append
    /// (one entry always), across the durable rows and the pending ones, in
    /// order and without gaps; a plain read still gets the whole range.
    #[tokio::test]
    async fn an_append_carries_a_bounded_number_of_bytes() {
        let dir = fresh_dir("budget");
        let mut log = LogStore::open(&dir).unwrap();
        let entry = |index: u64, ops: usize| Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Batch {
                ops: (0..ops)
                    .map(|k| register("web", &format!("web-{index}-{k}")))
                    .collect(),
            }),
        };
        // 1..=40 durable, 41..=60 still pending, 61 alone over the budget.
        let durable: Vec<(u64, Vec<u8>)> = (1..=40)
            .map(|i| (i, codec::encode_entry(&entry(i, 300))))
            .collect();
        let row_len = durable[0].1.len();
        assert!(row_len * 60 > 2 * APPEND_BUDGET, "rows of {row_len} bytes");
        log.blocking(move |db| {
            let tx = db.begin_write().map_err(write_err)?;
            {
                let mut t = tx.open_table(LOG).map_err(write_err)?;
                for (i, b) in &durable {
                    t.insert(i, b.as_slice()).map_err(write_err)?;
                }
            }
            tx.commit().map_err(write_err)
        })
        .await
        .unwrap();
        let big = entry(61, APPEND_BUDGET / 30);
        let big_len = codec::encode_entry(&big).len();
        assert!(big_len > APPEND_BUDGET);
        {
            let mut p = log.pending();
            for i in 41..=60 {
                let e = entry(i, 300);
                let len = codec::encode_entry(&e).len();
                p.insert(i, (e, len));
            }
            p.insert(61, (big, big_len));
        }

        let mut next = 1;
        let mut calls = 0;
        while next <= 60 {
            let got = log.limited_get_log_entries(next, 61).await.unwrap();
            calls += 1;
            assert!(!got.is_empty(), "an append from {next} carries an entry");
            let indexes: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
            let want: Vec<u64> = (next..next + got.len() as u64).collect();
            assert_eq!(indexes, want, "in order, from {next}, no gap");
            let bytes: usize = got.iter().map(|e| codec::encode_entry(e).len()).sum();
            let last = codec::encode_entry(got.last().unwrap()).len();
            assert!(
                bytes - last < APPEND_BUDGET,
                "{bytes} bytes from {next}: only the last entry may pass the budget"
            );
            next += got.len() as u64;
        }
        assert_eq!(next, 61);
        assert!(
            calls >= 3,
            "60 entries of {row_len} bytes took {calls} appends"
        );
        let alone = log.limited_get_log_entries(61, 62).await.unwrap();
        assert_eq!(alone.len(), 1, "an entry over the budget still goes");
        let all = log.try_get_log_entries(1..62).await.unwrap();
        assert_eq!(all.len(), 61, "a plain read is not bounded");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A damaged row is a read error that names the entry, never a panic.
    #[tokio::test]
    async fn a_damaged_row_is_a_storage_error_naming_the_entry() {
        let dir = fresh_dir("damaged");
        let mut log = LogStore::open(&dir).unwrap();
        for (index, bytes) in [
            (5u64, vec![codec::FORMAT_V1, 1, 1]),
            (6, b"{\"log_id\":".to_vec()),
            (7, vec![0xee]),
        ] {
            let tx = log.db.begin_write().unwrap();
            {
                let mut t = tx.open_table(LOG).unwrap();
                t.retain(|_, _| false).unwrap();
                t.insert(index, bytes.as_slice()).unwrap();
            }
            tx.commit().unwrap();
            let err = log.try_get_log_entries(..).await.unwrap_err();
            assert!(
                err.to_string().contains(&format!("Raft log entry {index}")),
                "{err}"
            );
            let err = log.get_log_state().await.unwrap_err();
            assert!(
                err.to_string().contains(&format!("Raft log entry {index}")),
                "{err}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A node whose log the previous version wrote (JSON rows, committed)
    /// starts on it, replays it into its catalog, and goes on writing
    /// binary rows after it.
    #[tokio::test]
    async fn a_json_row_log_opens_and_replays() {
        let dir = fresh_dir("replay");
        let log = LogStore::open(&dir).unwrap();
        let at = |index| LogId::new(CommittedLeaderId::new(1, 1), index);
        let members = Membership::new(
            vec![std::collections::BTreeSet::from([1])],
            std::collections::BTreeMap::from([(
                1,
                BasicNode {
                    addr: "127.0.0.1:9".into(),
                },
            )]),
        );
        write_json_rows(
            &log,
            &[
                Entry {
                    log_id: at(0),
                    payload: EntryPayload::Membership(members),
                },
                Entry {
                    log_id: at(1),
                    payload: EntryPayload::Blank,
                },
                Entry {
                    log_id: at(2),
                    payload: EntryPayload::Normal(Batch {
                        ops: vec![register("web", "web-1"), register("web", "web-2")],
                    }),
                },
            ],
        );
        log.put_meta(VOTE, &Vote::new_committed(1, 1))
            .await
            .unwrap();
        log.put_meta(COMMITTED, &Some(at(2))).await.unwrap();
        drop(log);

        let log = LogStore::open(&dir).unwrap();
        let registry = Arc::new(Registry::new(
            CatalogLimits::default(),
            Arc::new(Metrics::new()),
        ));
        registry.set_replicated();
        let sm = StateMachine::open(registry.clone(), log.clone(), Duration::from_secs(1)).unwrap();
        let config = openraft::Config {
            heartbeat_interval: 50,
            election_timeout_min: 150,
            election_timeout_max: 300,
            ..openraft::Config::default()
        }
        .validate()
        .unwrap();
        let peers = Peers::new(1, "t".repeat(16), Duration::from_secs(1), None).unwrap();
        let raft = openraft::Raft::<TypeConfig>::new(1, Arc::new(config), peers, log.clone(), sm)
            .await
            .unwrap();
        // Replayed at start: the committed writes are in the catalog.
        let snap = registry.snapshot();
        assert!(snap.instance("web", "web-1").is_some());
        assert!(snap.instance("web", "web-2").is_some());

        // It leads its one-node cluster and appends binary rows after the JSON ones.
        raft.wait(Some(Duration::from_secs(30)))
            .state(ServerState::Leader, "leads")
            .await
            .unwrap();
        raft.client_write(Batch {
            ops: vec![register("db", "db-1")],
        })
        .await
        .unwrap();
        assert!(registry.snapshot().instance("db", "db-1").is_some());
        raft.shutdown().await.unwrap();
        let rows = raw_rows(&log);
        assert_eq!(
            &rows[..3].iter().map(|(_, b)| b[0]).collect::<Vec<_>>(),
            &[b'{'; 3]
        );
        assert!(
            rows[3..].iter().all(|(_, b)| b[0] == codec::FORMAT_V1),
            "{rows:?}"
        );
        assert!(rows.len() >= 4, "the new write is in the log");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
