//! The Raft log, the vote and the last snapshot on disk, in one redb file.
//!
//! Entries are JSON rows keyed by log index. Every write is one redb
//! transaction, committed with fsync before openraft hears it is done; reads and
//! writes run on the blocking pool so an fsync never stalls the runtime.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{ClusterError, TypeConfig};

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
        let created =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Database::create(&file)));
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
        Ok(LogStore { db: Arc::new(db) })
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

    /// Reads one metadata value, blocking (start-up only).
    pub(super) fn get_meta_now<T: DeserializeOwned>(&self, key: &'static str) -> Result<Option<T>> {
        get_meta(&self.db, key)
    }
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
    let tx = db.begin_read().map_err(read_err)?;
    let table = tx.open_table(META).map_err(read_err)?;
    match table.get(key).map_err(read_err)? {
        Some(v) => serde_json::from_slice(v.value())
            .map(Some)
            .map_err(read_err),
        None => Ok(None),
    }
}

fn last_entry(db: &Database) -> Result<Option<LogId<u64>>> {
    let tx = db.begin_read().map_err(read_err)?;
    let table = tx.open_table(LOG).map_err(read_err)?;
    match table.last().map_err(read_err)? {
        Some((_, v)) => {
            let entry: Entry<TypeConfig> = serde_json::from_slice(v.value()).map_err(read_err)?;
            Ok(Some(entry.log_id))
        }
        None => Ok(None),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(read_err)?;
            let table = tx.open_table(LOG).map_err(read_err)?;
            let mut out = Vec::new();
            for row in table.range(bounds).map_err(read_err)? {
                let (_, v) = row.map_err(read_err)?;
                out.push(serde_json::from_slice(v.value()).map_err(read_err)?);
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        self.blocking(|db| {
            let purged: Option<LogId<u64>> = get_meta(db, PURGED)?;
            let last = last_entry(db)?.or(purged);
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
        self.put_meta(COMMITTED, &committed).await
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
        let rows = entries
            .into_iter()
            .map(|e| serde_json::to_vec(&e).map(|v| (e.log_id.index, v)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(write_err)?;
        let result = self
            .blocking(move |db| {
                let tx = db.begin_write().map_err(write_err)?;
                {
                    let mut table = tx.open_table(LOG).map_err(write_err)?;
                    for (index, bytes) in &rows {
                        table.insert(index, bytes.as_slice()).map_err(write_err)?;
                    }
                }
                tx.commit().map_err(write_err)
            })
            .await;
        callback.log_io_completed(
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        result
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<()> {
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(write_err)?;
            tx.open_table(LOG)
                .map_err(write_err)?
                .retain_in(log_id.index.., |_, _| false)
                .map_err(write_err)?;
            tx.commit().map_err(write_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<()> {
        let purged = serde_json::to_vec(&Some(log_id)).map_err(write_err)?;
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(write_err)?;
            tx.open_table(META)
                .map_err(write_err)?
                .insert(PURGED, purged.as_slice())
                .map_err(write_err)?;
            tx.open_table(LOG)
                .map_err(write_err)?
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(write_err)?;
            tx.commit().map_err(write_err)
        })
        .await
    }
}

#[cfg(test)]
mod damage_tests {
    use super::*;

    fn fresh_dir(name: &str) -> std::path::PathBuf {
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
        assert_eq!(reopened.get_meta_now::<u64>("probe").unwrap(), Some(42));
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
